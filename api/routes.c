/* api/routes.c — the routes of the HTTP API (see api.h): jobs, results, events, generate, tasks, objects. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "api/api_int.h"
#include "common/log.h"
#include "queue/envelope.h"
#include "scheduler/scheduler.h"
#include "worker/worker.h"

/* ---- job state ---- */

static const char *job_state(const nq_job_counts_t *c) {
  if (c->total < 0 || c->ok + c->dead == 0) return c->total == 0 ? "done" : "queued";
  if (c->ok + c->dead < c->total) return "running";
  return c->dead ? "failed" : "done";
}

static json_t *counts_json(const nq_job_counts_t *c) {
  long long pending = c->total < 0 ? 0 : c->total - c->ok - c->dead;
  if (pending < 0) pending = 0;
  return json_pack("{s:I,s:I,s:I,s:I}", "ok", (json_int_t)c->ok, "failed", (json_int_t)c->failed, "dead",
                   (json_int_t)c->dead, "pending", (json_int_t)pending);
}

/* meta (owned, may be NULL) from job_get; 404 when the job is unknown. */
static int job_load(nq_api_t *api, const char *id, json_t **meta, nq_job_counts_t *c, nq_err_t *err) {
  *meta = NULL;
  int rc = nq_id_check(id, 128, "job id", err);
  if (rc) return rc;
  char *ms = NULL;
  if ((rc = nq_queue_job_get(api->cfg.queue, id, &ms, err))) return rc;
  if (!ms) return nq_err_set(err, NQ_ENOENT, NQ_ERR_FATAL, "job '%s' not found", id);
  *meta = json_loads(ms, 0, NULL);
  free(ms);
  if (!*meta) *meta = json_object();
  if ((rc = nq_queue_job_counts(api->cfg.queue, id, c, err))) {
    json_decref(*meta);
    *meta = NULL;
  }
  return rc;
}

static json_t *job_view(const char *id, json_t *meta, const nq_job_counts_t *c) {
  json_t *v = json_pack("{s:s,s:s,s:o,s:I}", "id", id, "state", job_state(c), "counts", counts_json(c), "total",
                        (json_int_t)c->total);
  const char *keep[] = {"name", "stage", "next", "output", "created"};
  for (size_t i = 0; i < sizeof keep / sizeof *keep; i++)
    if (json_object_get(meta, keep[i])) json_object_set(v, keep[i], json_object_get(meta, keep[i]));
  return v;
}

static enum MHD_Result send_nq_error(nq_api_t *api, struct MHD_Connection *c, nq_api__req_t *r, const nq_err_t *e) {
  unsigned st = nq_api__status_of(e->code);
  return nq_api__send_error(api, c, r, st, NULL, "%s", e->msg[0] ? e->msg : nq_strerror(e->code));
}

/* Output URIs under the store root get "url": "/v1/objects/<key>". */
static void add_urls(nq_api_t *api, json_t *outputs) {
  if (!api->cfg.store_root || !json_is_array(outputs)) return;
  char pre[PATH_MAX + 16];
  snprintf(pre, sizeof pre, "file://%s/", api->cfg.store_root);
  size_t pl = strlen(pre), i;
  json_t *o;
  json_array_foreach(outputs, i, o) {
    const char *u = json_string_value(json_object_get(o, "uri"));
    if (u && strncmp(u, pre, pl) == 0 && nq_store_key_check(u + pl, NULL) == 0) {
      size_t n = strlen(u + pl) + 16;
      char *url = malloc(n);
      if (!url) continue;
      snprintf(url, n, "/v1/objects/%s", u + pl);
      json_object_set_new(o, "url", json_string(url));
      free(url);
    }
  }
}

/* Latest terminal result of `task` in job's results (NULL when none yet). cursor (may be NULL) is advanced. */
static int latest_result(nq_api_t *api, const char *job, const char *task, json_t **out, nq_err_t *err) {
  *out = NULL;
  char cursor[128] = "";
  for (;;) {
    nq_result_entry_t *e = NULL;
    int n = 0;
    int rc = nq_queue_read_results(api->cfg.queue, job, cursor, 500, 0, &e, &n, err);
    if (rc) {
      json_decref(*out);
      *out = NULL;
      return rc;
    }
    for (int i = 0; i < n; i++) {
      json_t *r = json_loads(e[i].body, 0, NULL);
      const char *t = json_string_value(json_object_get(r, "task"));
      if (t && strcmp(t, task) == 0) {
        json_decref(*out);
        *out = r;
      } else {
        json_decref(r);
      }
    }
    if (n > 0) snprintf(cursor, sizeof cursor, "%s", e[n - 1].id);
    nq_result_entries_free(e, n);
    if (n < 500) return 0;
  }
}

static json_t *task_view(nq_api_t *api, const char *id, const char *job, const char *task, json_t *result) {
  const char *status = json_string_value(json_object_get(result, "status"));
  const char *state = !result ? "queued" : status && strcmp(status, "ok") == 0 ? "done" : "failed";
  json_t *v = json_pack("{s:s,s:s,s:s,s:s}", "id", id, "job", job, "task", task, "state", state);
  if (result) {
    json_t *r = json_deep_copy(result);
    add_urls(api, json_object_get(r, "outputs"));
    json_object_set_new(v, "result", r);
  }
  return v;
}

/* ---- POST /v1/jobs ---- */

static enum MHD_Result post_job(nq_api_t *api, struct MHD_Connection *c, nq_api__req_t *r) {
  const char *ct = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
  if (ct && !strstr(ct, "yaml") && !strstr(ct, "json") && !strstr(ct, "text/plain"))
    return nq_api__send_error(api, c, r, 415, NULL, "Content-Type %s: send application/yaml or application/json", ct);
  if (r->len == 0) return nq_api__send_error(api, c, r, 400, NULL, "empty request body: send the job YAML or JSON");
  nq_job_spec_t spec;
  nq_err_t err = {0};
  /* JSON is YAML (flow style), so one loader serves both, with line:column in its errors */
  if (nq_job_spec_load_string(r->body, r->len, "request", api->cfg.jobs_dir, &spec, &err) != 0)
    return nq_api__send_error(api, c, r, 400, "invalid_job", "%s", err.msg);
  char id[256];
  int rc = nq_sched_submit(api->cfg.queue, api->cfg.store, &spec, id, sizeof id, NULL, NULL, &err);
  if (!rc) nq_metric_add(api->m_submitted, 1, spec.stage);
  nq_job_spec_deinit(&spec);
  if (rc) return send_nq_error(api, c, r, &err);
  NQ_INFO("api", "job %s submitted", id);
  char loc[300];
  snprintf(loc, sizeof loc, "/v1/jobs/%s", id);
  json_t *body = json_pack("{s:s,s:s}", "id", id, "status_url", loc);
  return nq_api__send_json(api, c, r, 201, body);
}

/* ---- GET /v1/jobs/{id}/results ---- */

typedef struct raw_stream {
  nq_api_t *api;
  char job[160];
  char cursor[128];
  char *buf;
  size_t len, off;
  int done;
} raw_stream_t;

static ssize_t raw_read(void *cls, uint64_t pos, char *out, size_t max) {
  raw_stream_t *s = cls;
  while (s->off >= s->len) {
    free(s->buf);
    s->buf = NULL;
    s->len = s->off = 0;
    if (s->done) return MHD_CONTENT_READER_END_OF_STREAM;
    nq_result_entry_t *e = NULL;
    int n = 0;
    nq_err_t err = {0};
    if (nq_queue_read_results(s->api->cfg.queue, s->job, s->cursor, 500, 0, &e, &n, &err) != 0)
      return MHD_CONTENT_READER_END_WITH_ERROR;
    size_t total = 0;
    for (int i = 0; i < n; i++) total += strlen(e[i].body) + 1;
    s->buf = malloc(total + 1);
    if (!s->buf) {
      nq_result_entries_free(e, n);
      return MHD_CONTENT_READER_END_WITH_ERROR;
    }
    for (int i = 0; i < n; i++) {
      size_t l = strlen(e[i].body);
      memcpy(s->buf + s->len, e[i].body, l);
      s->len += l;
      s->buf[s->len++] = '\n';
    }
    if (n > 0) snprintf(s->cursor, sizeof s->cursor, "%s", e[n - 1].id);
    if (n < 500) s->done = 1;
    nq_result_entries_free(e, n);
  }
  size_t k = s->len - s->off < max ? s->len - s->off : max;
  memcpy(out, s->buf + s->off, k);
  s->off += k;
  return (ssize_t)k;
}

static void raw_free(void *cls) {
  raw_stream_t *s = cls;
  free(s->buf);
  free(s);
}

static enum MHD_Result get_results(nq_api_t *api, struct MHD_Connection *c, nq_api__req_t *r, const char *id) {
  json_t *meta;
  nq_job_counts_t cnt;
  nq_err_t err = {0};
  if (job_load(api, id, &meta, &cnt, &err) != 0) return send_nq_error(api, c, r, &err);
  json_decref(meta);
  const char *raw = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "raw");
  if (raw && strcmp(raw, "0") != 0) {
    raw_stream_t *s = calloc(1, sizeof *s);
    if (!s) return MHD_NO;
    s->api = api;
    snprintf(s->job, sizeof s->job, "%s", id);
    struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 64 * 1024, raw_read, s, raw_free);
    if (!resp) {
      raw_free(s);
      return MHD_NO;
    }
    return nq_api__send_response(api, c, r, 200, resp, "application/x-ndjson");
  }
  /* latest terminal result per task, in order of first appearance (like `nextq results`) */
  json_t *latest = json_object(), *order = json_array();
  char cursor[128] = "";
  int rc = 0;
  for (;;) {
    nq_result_entry_t *e = NULL;
    int n = 0;
    if ((rc = nq_queue_read_results(api->cfg.queue, id, cursor, 1000, 0, &e, &n, &err))) break;
    for (int i = 0; i < n; i++) {
      json_t *o = json_loads(e[i].body, 0, NULL);
      const char *t = json_string_value(json_object_get(o, "task"));
      if (t) {
        if (!json_object_get(latest, t)) json_array_append_new(order, json_string(t));
        json_object_set_new(latest, t, json_string(e[i].body));
      }
      json_decref(o);
    }
    if (n > 0) snprintf(cursor, sizeof cursor, "%s", e[n - 1].id);
    nq_result_entries_free(e, n);
    if (n < 1000) break;
  }
  if (rc) {
    json_decref(latest);
    json_decref(order);
    return send_nq_error(api, c, r, &err);
  }
  size_t total = 0, i;
  json_t *t;
  json_array_foreach(order, i, t) total += strlen(json_string_value(json_object_get(latest, json_string_value(t)))) + 1;
  char *buf = malloc(total + 1), *p = buf;
  if (buf) {
    json_array_foreach(order, i, t) {
      const char *b = json_string_value(json_object_get(latest, json_string_value(t)));
      size_t l = strlen(b);
      memcpy(p, b, l);
      p += l;
      *p++ = '\n';
    }
  }
  json_decref(latest);
  json_decref(order);
  if (!buf) return MHD_NO;
  struct MHD_Response *resp = MHD_create_response_from_buffer(total, buf, MHD_RESPMEM_MUST_FREE);
  if (!resp) free(buf);
  return nq_api__send_response(api, c, r, 200, resp, "application/x-ndjson");
}

/* ---- GET /v1/jobs/{id}/events (Server-Sent Events) ---- */

typedef struct sse {
  nq_api_t *api;
  char job[160];
  char cursor[128];
  nq_job_counts_t last;
  int started, done;
  double deadline, last_send;
  char *buf; /* owned */
  size_t len, cap, off;
} sse_t;

static void sse_put(sse_t *s, const char *event, const char *id, const char *data) {
  size_t need = strlen(event) + strlen(data) + (id ? strlen(id) : 0) + 32;
  if (s->len + need > s->cap) {
    size_t nc = s->cap ? s->cap * 2 : 4096;
    while (nc < s->len + need) nc *= 2;
    char *nb = realloc(s->buf, nc);
    if (!nb) return;
    s->buf = nb;
    s->cap = nc;
  }
  int n = id ? snprintf(s->buf + s->len, s->cap - s->len, "id: %s\nevent: %s\ndata: %s\n\n", id, event, data)
             : snprintf(s->buf + s->len, s->cap - s->len, "event: %s\ndata: %s\n\n", event, data);
  if (n > 0) s->len += (size_t)n;
}

static void sse_progress(sse_t *s, const nq_job_counts_t *c, const char *event) {
  json_t *v = json_pack("{s:s,s:s,s:o,s:I}", "id", s->job, "state", job_state(c), "counts", counts_json(c), "total",
                        (json_int_t)c->total);
  char *d = json_dumps(v, JSON_COMPACT);
  json_decref(v);
  if (d) sse_put(s, event, NULL, d);
  free(d);
}

static void sse_fill(sse_t *s) {
  nq_err_t err = {0};
  nq_job_counts_t c;
  if (!s->started) {
    s->started = 1;
    sse_put(s, "open", NULL, "{}");
    if (nq_queue_job_counts(s->api->cfg.queue, s->job, &c, &err) != 0) goto fail;
    s->last = c;
    sse_progress(s, &c, "progress");
    return;
  }
  if (__atomic_load_n(&s->api->stopping, __ATOMIC_SEQ_CST)) { /* server shutting down: the client reconnects */
    sse_put(s, "shutdown", NULL, "{}");
    s->done = 1;
    return;
  }
  if (nq_api__now() > s->deadline) {
    sse_put(s, "timeout", NULL, "{}");
    s->done = 1;
    return;
  }
  nq_result_entry_t *e = NULL;
  int n = 0;
  if (nq_queue_read_results(s->api->cfg.queue, s->job, s->cursor, 64, 1000, &e, &n, &err) != 0) goto fail;
  for (int i = 0; i < n; i++) sse_put(s, "result", e[i].id, e[i].body);
  if (n > 0) snprintf(s->cursor, sizeof s->cursor, "%s", e[n - 1].id);
  nq_result_entries_free(e, n);
  if (nq_queue_job_counts(s->api->cfg.queue, s->job, &c, &err) != 0) goto fail;
  if (n > 0 || memcmp(&c, &s->last, sizeof c) != 0) sse_progress(s, &c, "progress");
  s->last = c;
  if (nq_job_counts_complete(&c) || c.total == 0) {
    /* results of the last tasks may land after the counts: drain what is there, then finish */
    e = NULL;
    n = 0;
    if (nq_queue_read_results(s->api->cfg.queue, s->job, s->cursor, 1000, 0, &e, &n, &err) == 0) {
      for (int i = 0; i < n; i++) sse_put(s, "result", e[i].id, e[i].body);
      if (n > 0) snprintf(s->cursor, sizeof s->cursor, "%s", e[n - 1].id);
      nq_result_entries_free(e, n);
    }
    sse_progress(s, &c, "done");
    s->done = 1;
    return;
  }
  if (s->len == 0 && nq_api__now() - s->last_send > 15) {
    static const char ping[] = ": ping\n\n";
    if (s->cap < sizeof ping) {
      char *nb = realloc(s->buf, 64);
      if (!nb) return;
      s->buf = nb;
      s->cap = 64;
    }
    memcpy(s->buf, ping, sizeof ping - 1);
    s->len = sizeof ping - 1;
  }
  return;
fail:;
  json_t *v = json_pack("{s:{s:s,s:s}}", "error", "code", "unavailable", "message", err.msg);
  char *d = json_dumps(v, JSON_COMPACT);
  json_decref(v);
  if (d) sse_put(s, "error", NULL, d);
  free(d);
  s->done = 1;
}

static ssize_t sse_read(void *cls, uint64_t pos, char *out, size_t max) {
  sse_t *s = cls;
  while (s->off >= s->len) {
    s->len = s->off = 0;
    if (s->done) return MHD_CONTENT_READER_END_OF_STREAM;
    sse_fill(s); /* blocks up to ~1 s; returns with data or a ping at least every 15 s */
  }
  size_t k = s->len - s->off < max ? s->len - s->off : max;
  memcpy(out, s->buf + s->off, k);
  s->off += k;
  s->last_send = nq_api__now();
  return (ssize_t)k;
}

static void sse_free(void *cls) {
  sse_t *s = cls;
  free(s->buf);
  free(s);
}

static enum MHD_Result get_events(nq_api_t *api, struct MHD_Connection *c, nq_api__req_t *r, const char *id) {
  json_t *meta;
  nq_job_counts_t cnt;
  nq_err_t err = {0};
  if (job_load(api, id, &meta, &cnt, &err) != 0) return send_nq_error(api, c, r, &err);
  json_decref(meta);
  sse_t *s = calloc(1, sizeof *s);
  if (!s) return MHD_NO;
  s->api = api;
  snprintf(s->job, sizeof s->job, "%s", id);
  s->deadline = nq_api__now() + api->cfg.sse_max_s;
  s->last_send = nq_api__now();
  /* a reconnecting EventSource resumes after the last result it saw */
  const char *last = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Last-Event-ID");
  if (last && strlen(last) < sizeof s->cursor) snprintf(s->cursor, sizeof s->cursor, "%s", last);
  struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024, sse_read, s, sse_free);
  if (!resp) {
    sse_free(s);
    return MHD_NO;
  }
  MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
  MHD_add_response_header(resp, "X-Accel-Buffering", "no");
  return nq_api__send_response(api, c, r, 200, resp, "text/event-stream");
}

/* ---- POST /v1/generate ---- */

static void make_gen_id(char *out, size_t cap) {
  time_t now = time(NULL);
  struct tm tm;
  gmtime_r(&now, &tm);
  unsigned long long rnd = 0;
  if (getrandom(&rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd) rnd = (unsigned long long)clock() ^ (unsigned long long)getpid();
  snprintf(out, cap, "gen-%04d%02d%02dT%02d%02d%02d-%016llx", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
           tm.tm_min, tm.tm_sec, rnd);
}

/* Base64 (optionally a data: URL) -> bytes. */
static int b64_decode(const char *s, size_t n, unsigned char **out, size_t *olen) {
  if (n > 5 && strncmp(s, "data:", 5) == 0) {
    const char *comma = memchr(s, ',', n);
    if (!comma) return -1;
    n -= (size_t)(comma + 1 - s);
    s = comma + 1;
  }
  while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == '\r' || s[n - 1] == ' ')) n--;
  if (n % 4 != 0 || n > (size_t)INT_MAX) return -1;
  unsigned char *b = malloc(n / 4 * 3 + 1);
  if (!b) return -1;
  int k = EVP_DecodeBlock(b, (const unsigned char *)s, (int)n);
  if (k < 0) {
    free(b);
    return -1;
  }
  size_t pad = (n >= 1 && s[n - 1] == '=') + (n >= 2 && s[n - 2] == '=');
  *out = b;
  *olen = (size_t)k - pad;
  return 0;
}

/* Uploaded media -> stored objects; appends {"kind","uri"} to media. */
static int store_media(nq_api_t *api, const char *job, json_t *items, json_t *media, nq_err_t *err) {
  if (!json_is_array(items)) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "'media' must be an array");
  size_t i;
  json_t *it;
  json_array_foreach(items, i, it) {
    const char *name = json_string_value(json_object_get(it, "name"));
    json_t *data = json_object_get(it, "data");
    if (!name || !json_is_string(data)) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "media[%zu]: needs 'name' and 'data' (base64)", i);
    char safe[120];
    size_t k = 0;
    for (const char *p = name; *p && k < sizeof safe - 1; p++) {
      char ch = *p;
      int ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '.' || ch == '-' || ch == '_';
      safe[k++] = ok ? ch : '_';
    }
    safe[k] = 0;
    while (safe[0] == '.') safe[0] = '_';
    if (!safe[0]) snprintf(safe, sizeof safe, "upload");
    const char *type = nq_store_type_guess(safe);
    const char *kind = strncmp(type, "image/", 6) == 0 ? "image" : strncmp(type, "audio/", 6) == 0 ? "audio"
                       : strncmp(type, "video/", 6) == 0 ? "video" : NULL;
    if (!kind)
      return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "media[%zu] '%.80s': not an image, audio or video file name (type %s)", i,
                        name, type);
    unsigned char *bytes = NULL;
    size_t blen = 0;
    if (b64_decode(json_string_value(data), json_string_length(data), &bytes, &blen) != 0)
      return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "media[%zu]: 'data' is not valid base64", i);
    char uri[NQ_STORE_URI_MAX + 1];
    snprintf(uri, sizeof uri, "%s/%s/inputs/%zu-%s", api->output_base, job, i, safe);
    nq_store_obj_t obj;
    int rc = nq_store_put(api->cfg.store, uri, bytes, blen, &obj, err);
    free(bytes);
    if (rc) return nq_err_prefix(err, "media[%zu]", i);
    json_array_append_new(media, json_pack("{s:s,s:s}", "kind", kind, "uri", obj.uri));
  }
  return 0;
}

static enum MHD_Result wait_and_reply(nq_api_t *api, struct MHD_Connection *c, nq_api__req_t *r, const char *job,
                                      const char *task, double wait_s) {
  double deadline = nq_api__now() + wait_s;
  char cursor[128] = "";
  json_t *found = NULL;
  nq_err_t err = {0};
  while (!found && !__atomic_load_n(&api->stopping, __ATOMIC_SEQ_CST)) {
    double left = deadline - nq_api__now();
    if (left <= 0) break;
    nq_result_entry_t *e = NULL;
    int n = 0;
    int ms = (int)(left * 1000);
    if (ms < 1) ms = 1;
    if (ms > 5000) ms = 5000;
    if (nq_queue_read_results(api->cfg.queue, job, cursor, 16, ms, &e, &n, &err) != 0) return send_nq_error(api, c, r, &err);
    for (int i = 0; i < n; i++) {
      json_t *o = json_loads(e[i].body, 0, NULL);
      const char *t = json_string_value(json_object_get(o, "task"));
      if (t && strcmp(t, task) == 0) {
        json_decref(found);
        found = o;
      } else {
        json_decref(o);
      }
    }
    if (n > 0) snprintf(cursor, sizeof cursor, "%s", e[n - 1].id);
    nq_result_entries_free(e, n);
  }
  json_t *v = task_view(api, job, job, task, found);
  json_decref(found);
  return nq_api__send_json(api, c, r, found ? 200 : 202, v);
}

static enum MHD_Result post_generate(nq_api_t *api, struct MHD_Connection *c, nq_api__req_t *r) {
  json_error_t je;
  json_t *req = json_loadb(r->body, r->len, JSON_REJECT_DUPLICATES, &je);
  if (!req || !json_is_object(req)) {
    json_decref(req);
    return nq_api__send_error(api, c, r, 400, NULL, "request: line %d, column %d: %s", je.line, je.column,
                              req ? "expected a JSON object" : je.text);
  }
  nq_err_t err = {0};
  int rc = 0;
  json_t *pj = json_object_get(req, "prompt");
  const char *stage = json_string_value(json_object_get(req, "stage"));
  const char *device = json_string_value(json_object_get(req, "device"));
  json_t *params = json_object_get(req, "params"), *next = json_object_get(req, "next");
  if (!stage) stage = api->cfg.default_stage;
  if (!device) device = api->cfg.device;
  if (pj && !json_is_string(pj)) rc = nq_err_set(&err, NQ_EINVAL, NQ_ERR_FATAL, "'prompt' must be a string");
  else if (!pj && !json_object_get(req, "media")) rc = nq_err_set(&err, NQ_EINVAL, NQ_ERR_FATAL, "'prompt' is required");
  else if (params && !json_is_object(params)) rc = nq_err_set(&err, NQ_EINVAL, NQ_ERR_FATAL, "'params' must be an object");
  else if (next && !json_is_array(next)) rc = nq_err_set(&err, NQ_EINVAL, NQ_ERR_FATAL, "'next' must be an array of stage names");
  else if (strcmp(device, "cpu") && strcmp(device, "cuda") && strcmp(device, "any"))
    rc = nq_err_set(&err, NQ_EINVAL, NQ_ERR_FATAL, "'device' must be cpu, cuda or any");
  else if (nq_id_check(stage, 64, "stage", &err) == 0 && !nq_stage_find(stage))
    rc = nq_err_set(&err, NQ_EINVAL, NQ_ERR_FATAL, "unknown stage '%s' (known: %s)", stage, nq_stage_names());
  else rc = err.code;
  for (size_t i = 0; !rc && i < json_array_size(next); i++) {
    const char *ns = json_string_value(json_array_get(next, i));
    if (!ns || !nq_stage_find(ns)) rc = nq_err_set(&err, NQ_EINVAL, NQ_ERR_FATAL, "next[%zu]: unknown stage", i);
  }
  if (rc) {
    json_decref(req);
    return nq_api__send_error(api, c, r, 400, NULL, "%s", err.msg);
  }
  char job[96], task[128], out[1300];
  make_gen_id(job, sizeof job);
  snprintf(task, sizeof task, "%s/000000", job);
  snprintf(out, sizeof out, "%s/%s/000000/", api->output_base, job);
  json_t *media = json_array();
  json_t *input = json_pack("{s:s,s:O,s:{}}", "key", "000000", "media", media, "meta");
  if (pj) {
    json_object_set(input, "text", pj);
    json_object_set(json_object_get(input, "meta"), "prompt", pj);
  }
  if (json_object_get(req, "media")) rc = store_media(api, job, json_object_get(req, "media"), media, &err);
  json_decref(media);
  nq_envelope_t env = {0};
  if (!rc) {
    json_t *meta = json_pack("{s:s,s:s,s:s,s:s,s:O*,s:I,s:I}", "id", job, "name", "generate", "stage", stage, "output",
                             out, "next", next, "created", (json_int_t)time(NULL), "max_attempts",
                             (json_int_t)api->cfg.max_attempts);
    char *ms = json_dumps(meta, JSON_COMPACT);
    json_decref(meta);
    rc = ms ? nq_queue_job_put(api->cfg.queue, job, ms, &err) : nq_err_set(&err, NQ_ENOMEM, 0, "oom");
    free(ms);
  }
  if (!rc) {
    json_t *p = params ? json_incref(params) : json_object();
    json_t *nx = next ? json_incref(next) : json_array();
    rc = nq_envelope_make(&env, job, task, stage, device, api->cfg.max_attempts, input, p, out, nx, job, &err);
    json_decref(p);
    json_decref(nx);
  }
  json_decref(input);
  if (!rc) {
    char *body = nq_envelope_dump(&env);
    char topic[160];
    nq_queue_topic(topic, sizeof topic, stage, device);
    rc = body ? nq_queue_publish(api->cfg.queue, topic, body, strlen(body), &err) : nq_err_set(&err, NQ_ENOMEM, 0, "oom");
    free(body);
  }
  nq_envelope_deinit(&env);
  /* the total goes last, as in the scheduler: until it is set no one declares the job complete */
  if (!rc) rc = nq_queue_job_set_total(api->cfg.queue, job, 1, &err);
  if (!rc) nq_metric_add(api->m_submitted, 1, stage);
  json_decref(req);
  if (rc) return send_nq_error(api, c, r, &err);
  const char *w = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "wait");
  if (w) {
    char *end;
    double ws = strtod(w, &end);
    if (*end || !(ws >= 0)) return nq_api__send_error(api, c, r, 400, NULL, "wait=%.40s: want seconds", w);
    if (ws > api->cfg.max_wait_s) ws = api->cfg.max_wait_s;
    if (ws > 0) return wait_and_reply(api, c, r, job, task, ws);
  }
  char self[200], events[220];
  snprintf(self, sizeof self, "/v1/tasks/%s", job);
  snprintf(events, sizeof events, "/v1/jobs/%s/events", job);
  json_t *resp = json_pack("{s:s,s:s,s:s,s:s,s:{s:s,s:s}}", "id", job, "job", job, "task", task, "state", "queued", "links",
                           "self", self, "events", events);
  return nq_api__send_json(api, c, r, 202, resp);
}

/* ---- GET /v1/tasks/{id} ---- */

static enum MHD_Result get_task(nq_api_t *api, struct MHD_Connection *c, nq_api__req_t *r, const char *id) {
  char job[200], task[300];
  const char *sl = strrchr(id, '/');
  if (!sl) { /* a generate task: its job has the one task 000000 */
    snprintf(job, sizeof job, "%s", id);
    snprintf(task, sizeof task, "%s/000000", id);
  } else {
    if ((size_t)(sl - id) >= sizeof job) return nq_api__send_error(api, c, r, 400, NULL, "task id too long");
    memcpy(job, id, (size_t)(sl - id));
    job[sl - id] = 0;
    snprintf(task, sizeof task, "%s", id);
  }
  json_t *meta;
  nq_job_counts_t cnt;
  nq_err_t err = {0};
  if (job_load(api, job, &meta, &cnt, &err) != 0) return send_nq_error(api, c, r, &err);
  json_decref(meta);
  json_t *res = NULL;
  if (latest_result(api, job, task, &res, &err) != 0) return send_nq_error(api, c, r, &err);
  json_t *v = task_view(api, id, job, task, res);
  json_decref(res);
  return nq_api__send_json(api, c, r, 200, v);
}

/* ---- GET /v1/objects/{key} ---- */

static enum MHD_Result get_object(nq_api_t *api, struct MHD_Connection *c, nq_api__req_t *r, const char *key) {
  nq_err_t err = {0};
  if (!api->cfg.store_root) return nq_api__send_error(api, c, r, 404, NULL, "no object store root is configured");
  if (nq_store_key_check(key, &err) != 0) return nq_api__send_error(api, c, r, 400, "invalid_key", "%s", err.msg);
  char uri[PATH_MAX + 8], path[PATH_MAX];
  snprintf(uri, sizeof uri, "%s/%s", api->cfg.store_root, key);
  /* resolve checks the path stays inside the root, symlinks included */
  if (nq_store_resolve(api->cfg.store, uri, path, sizeof path, &err) != 0)
    return nq_api__send_error(api, c, r, 404, NULL, "object '%.200s' not found", key);
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    if (fd >= 0) close(fd);
    return nq_api__send_error(api, c, r, 404, NULL, "object '%.200s' not found", key);
  }
  struct MHD_Response *resp = MHD_create_response_from_fd64((uint64_t)st.st_size, fd);
  if (!resp) {
    close(fd);
    return MHD_NO;
  }
  /* outputs are data, never active content in the API's origin */
  MHD_add_response_header(resp, "Content-Security-Policy", "sandbox; default-src 'none'");
  return nq_api__send_response(api, c, r, 200, resp, nq_store_type_guess(key));
}

/* ---- dispatch ---- */

static enum MHD_Result send_static(nq_api_t *api, struct MHD_Connection *c, nq_api__req_t *r, const char *s,
                                   const char *type) {
  struct MHD_Response *resp = MHD_create_response_from_buffer(strlen(s), (void *)s, MHD_RESPMEM_PERSISTENT);
  if (resp && strncmp(type, "text/html", 9) == 0)
    MHD_add_response_header(resp, "Content-Security-Policy",
                            "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                            "img-src 'self' blob: data:; media-src 'self' blob:; connect-src 'self'");
  return nq_api__send_response(api, c, r, 200, resp, type);
}

static int is(const char *method, const char *m) { return strcmp(method, m) == 0 || (strcmp(m, "GET") == 0 && strcmp(method, "HEAD") == 0); }

enum MHD_Result nq_api__route(nq_api_t *api, struct MHD_Connection *c, nq_api__req_t *r, const char *method,
                              const char *url) {
  const char *want = NULL; /* method the path exists for, when it doesn't match */
  if (strcmp(url, "/") == 0 || strcmp(url, "/index.html") == 0) {
    r->route = "/";
    if (is(method, "GET")) return send_static(api, c, r, nq_api_page_html, "text/html; charset=utf-8");
    want = "GET";
  } else if (strcmp(url, "/healthz") == 0) {
    r->route = "/healthz";
    if (is(method, "GET")) return nq_api__send_json(api, c, r, 200, json_pack("{s:b}", "ok", 1));
    want = "GET";
  } else if (strcmp(url, "/readyz") == 0) {
    r->route = "/readyz";
    if (is(method, "GET")) {
      char *ms = NULL;
      nq_err_t err = {0};
      if (nq_queue_job_get(api->cfg.queue, "readyz-probe", &ms, &err) != 0)
        return nq_api__send_error(api, c, r, 503, NULL, "queue: %s", err.msg);
      free(ms);
      return nq_api__send_json(api, c, r, 200, json_pack("{s:b}", "ok", 1));
    }
    want = "GET";
  } else if (strcmp(url, "/v1/openapi.json") == 0) {
    r->route = "/v1/openapi.json";
    if (is(method, "GET")) return send_static(api, c, r, nq_api_openapi_json, "application/json");
    want = "GET";
  } else if (strcmp(url, "/v1/jobs") == 0) {
    r->route = "/v1/jobs";
    if (is(method, "POST")) return post_job(api, c, r);
    want = "POST";
  } else if (strncmp(url, "/v1/jobs/", 9) == 0) {
    const char *rest = url + 9;
    const char *sl = strchr(rest, '/');
    char id[200];
    size_t il = sl ? (size_t)(sl - rest) : strlen(rest);
    if (il == 0 || il >= sizeof id) {
      r->route = "/v1/jobs/{id}";
      return nq_api__send_error(api, c, r, 404, NULL, "no such job");
    }
    memcpy(id, rest, il);
    id[il] = 0;
    if (!sl) r->route = "/v1/jobs/{id}";
    else if (strcmp(sl, "/results") == 0) r->route = "/v1/jobs/{id}/results";
    else if (strcmp(sl, "/events") == 0) r->route = "/v1/jobs/{id}/events";
    else {
      r->route = "other";
      return nq_api__send_error(api, c, r, 404, NULL, "no route %s", url);
    }
    if (!is(method, "GET")) want = "GET";
    else if (!sl) {
      json_t *meta;
      nq_job_counts_t cnt;
      nq_err_t err = {0};
      if (job_load(api, id, &meta, &cnt, &err) != 0) return send_nq_error(api, c, r, &err);
      json_t *v = job_view(id, meta, &cnt);
      json_decref(meta);
      return nq_api__send_json(api, c, r, 200, v);
    } else if (sl[1] == 'r') {
      return get_results(api, c, r, id);
    } else {
      return get_events(api, c, r, id);
    }
  } else if (strcmp(url, "/v1/generate") == 0) {
    r->route = "/v1/generate";
    if (is(method, "POST")) return post_generate(api, c, r);
    want = "POST";
  } else if (strncmp(url, "/v1/tasks/", 10) == 0) {
    r->route = "/v1/tasks/{id}";
    if (is(method, "GET")) return get_task(api, c, r, url + 10);
    want = "GET";
  } else if (strncmp(url, "/v1/objects/", 12) == 0) {
    r->route = "/v1/objects/{key}";
    if (is(method, "GET")) return get_object(api, c, r, url + 12);
    want = "GET";
  }
  if (want) {
    struct MHD_Response *resp = NULL;
    json_t *e = json_pack("{s:{s:s,s:s}}", "error", "code", "method_not_allowed", "message", "method not allowed here");
    char *s = json_dumps(e, JSON_COMPACT);
    json_decref(e);
    if (s && (resp = MHD_create_response_from_buffer(strlen(s), s, MHD_RESPMEM_MUST_FREE))) MHD_add_response_header(resp, "Allow", want);
    else free(s);
    return nq_api__send_response(api, c, r, 405, resp, "application/json");
  }
  r->route = "other";
  return nq_api__send_error(api, c, r, 404, NULL, "no route %s %.200s", method, url);
}

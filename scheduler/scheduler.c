/* scheduler/scheduler.c — see scheduler.h. */
#include "scheduler/scheduler.h"

#include <libgen.h>
#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "datasets/datasets.h"
#include "queue/envelope.h"
#include "scheduler/caption_metrics.h"

#define O(f) offsetof(nq_job_spec_t, f)
const nq_prop_t nq_job_props[] = {
    {"job", NQ_PROP_STRING, O(job), 0, 0, NULL, NULL, NQ_PROP_REQUIRED, "job name; the job id is NAME-<time>-<random>"},
    {"id", NQ_PROP_STRING, O(id), 0, 0, NULL, NULL, 0, "explicit job id (resubmitting the same id re-runs idempotently)"},
    {"stage", NQ_PROP_STRING, O(stage), 0, 0, NULL, NULL, NQ_PROP_REQUIRED, "first stage (noop, encode, llm, generate-image, ...)"},
    {"next", NQ_PROP_STRLIST, O(next), 0, 0, NULL, NULL, 0, "follow-up stages, run in order on success"},
    {"dataset.format", NQ_PROP_ENUM, O(ds_format), 0, 0, "jsonl", "jsonl|nextgpt-json|webdataset|dir", 0, "record reader"},
    {"dataset.path", NQ_PROP_STRING, O(ds_path), 0, 0, NULL, NULL, NQ_PROP_REQUIRED, "file, brace-list of shards or directory"},
    {"dataset.media_root", NQ_PROP_STRING, O(ds_media_root), 0, 0, NULL, NULL, 0, "root for media names in the records"},
    {"output", NQ_PROP_STRING, O(output), 0, 0, NULL, NULL, NQ_PROP_REQUIRED, "output directory or file:// / s3:// URI"},
    {"batch_size", NQ_PROP_INT, O(batch_size), 1, 100000, "1", NULL, 0, "records per task"},
    {"max_attempts", NQ_PROP_INT, O(max_attempts), 1, 100, "3", NULL, 0, "attempts before a task is dead-lettered"},
    {"device", NQ_PROP_ENUM, O(device), 0, 0, "cpu", "cpu|cuda|any", 0, "device class the tasks are routed to"},
    {"params", NQ_PROP_JSON, O(params), 0, 0, NULL, NULL, 0, "stage parameters (object)"},
    {"limit", NQ_PROP_INT, O(limit), 0, 1e15, "0", NULL, 0, "stop after this many records (0 = all)"},
    {0},
};
#undef O

static int finish_spec(nq_job_spec_t *s, const char *name, nq_err_t *err) {
  int rc;
  if ((rc = nq_id_check(s->job, 64, "job", err)) || (rc = nq_id_check(s->stage, 64, "stage", err))) return nq_err_prefix(err, "%s", name);
  if (s->id && (rc = nq_id_check(s->id, 128, "id", err))) return nq_err_prefix(err, "%s", name);
  if (strchr(s->job, '/') || (s->id && strchr(s->id, '/')))
    return nq_err_set(err, NQ_ECONFIG, NQ_ERR_FATAL, "%s: job name and id may not contain '/'", name);
  if (!s->params) s->params = json_object();
  if (!json_is_object(s->params)) return nq_err_set(err, NQ_ECONFIG, NQ_ERR_FATAL, "%s: params must be a mapping", name);
  size_t i;
  json_t *v;
  json_array_foreach(s->next, i, v) if ((rc = nq_id_check(json_string_value(v), 64, "next", err))) return nq_err_prefix(err, "%s", name);
  return 0;
}

/* params values that name files resolve against the job file's directory, as dataset.path does: the keys model,
 * tokenizer, nextgpt, taesd, config_dir and every key ending in _model, _path or _dir. A relative value is resolved
 * when it starts with "./" or "../" or when the resolved path exists; anything else (a model name, a path meant for
 * the worker's own directory) is left as it is. Absolute paths and URIs (scheme://) are never touched. */
static bool param_names_file(const char *k) {
  static const char *const keys[] = {"model", "tokenizer", "nextgpt", "taesd", "config_dir"};
  static const char *const sfx[] = {"_model", "_path", "_dir"};
  for (size_t i = 0; i < sizeof keys / sizeof *keys; i++)
    if (!strcmp(k, keys[i])) return true;
  size_t kl = strlen(k);
  for (size_t i = 0; i < sizeof sfx / sizeof *sfx; i++) {
    size_t sl = strlen(sfx[i]);
    if (kl > sl && !strcmp(k + kl - sl, sfx[i])) return true;
  }
  return false;
}

static void normalize_path(char *p);

static int resolve_params(nq_job_spec_t *s, nq_err_t *err) {
  const char *k;
  json_t *v;
  json_object_foreach(s->params, k, v) {
    const char *p = json_string_value(v);
    if (!p || !*p || p[0] == '/' || strstr(p, "://") || !param_names_file(k)) continue;
    char abs[PATH_MAX];
    if ((size_t)snprintf(abs, sizeof abs, "%s/%s", s->base_dir, p) >= sizeof abs) continue;
    if (strncmp(p, "./", 2) && strncmp(p, "../", 3) && access(abs, F_OK) != 0) continue;
    normalize_path(abs);
    json_t *nv = json_string(abs);
    if (!nv || json_object_set_new(s->params, k, nv))
      return nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "params.%s: out of memory", k);
  }
  return 0;
}

int nq_job_spec_load_string(const char *yaml, size_t len, const char *name, const char *base_dir, nq_job_spec_t *spec,
                            nq_err_t *err) {
  memset(spec, 0, sizeof *spec);
  int rc = nq_config_load_string(yaml, len, name, nq_job_props, spec, NULL, err);
  if (!rc) rc = finish_spec(spec, name, err);
  if (!rc && !(spec->base_dir = strdup(base_dir ? base_dir : "."))) rc = nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "oom");
  if (!rc) rc = resolve_params(spec, err);
  if (rc) nq_job_spec_deinit(spec);
  return rc;
}

int nq_job_spec_load(const char *path, nq_job_spec_t *spec, nq_err_t *err) {
  memset(spec, 0, sizeof *spec);
  int rc = nq_config_load_file(path, nq_job_props, spec, NULL, err);
  if (!rc) rc = finish_spec(spec, path, err);
  if (!rc) {
    char buf[PATH_MAX], abs[PATH_MAX];
    snprintf(buf, sizeof buf, "%s", path);
    const char *d = dirname(buf);
    spec->base_dir = strdup(realpath(d, abs) ? abs : d);
    if (!spec->base_dir) rc = nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "oom");
  }
  if (!rc) rc = resolve_params(spec, err);
  if (rc) nq_job_spec_deinit(spec);
  return rc;
}

void nq_job_spec_deinit(nq_job_spec_t *spec) {
  nq_config_deinit(nq_job_props, spec);
  free(spec->base_dir);
  spec->base_dir = NULL;
}

int nq_job_counts_complete(const nq_job_counts_t *c) { return c->total >= 0 && c->ok + c->dead >= c->total; }

/* Relative paths in the job file resolve against the job file's directory (like docker-compose). */
/* Lexical normalisation of an absolute path in place: "//" and "/./" collapse, "x/.." is removed (the store refuses
 * ".." segments; the directories need not exist yet, so realpath cannot be used). */
static void normalize_path(char *p) {
  if (p[0] != '/') return;
  char *out = p, *r = p;
  size_t n = 0; /* bytes written after the leading '/' */
  while (*r) {
    while (*r == '/') r++;
    if (!*r) break;
    const char *seg = r;
    while (*r && *r != '/') r++;
    size_t len = (size_t)(r - seg);
    if (len == 1 && seg[0] == '.') continue;
    if (len == 2 && seg[0] == '.' && seg[1] == '.') {
      while (n > 0 && out[n - 1] != '/') n--; /* drop the last "/segment" (at the root, ".." stays the root) */
      if (n > 0) n--;
      continue;
    }
    out[n++] = '/';
    memmove(out + n, seg, len);
    n += len;
  }
  if (n == 0) n = 1;
  out[0] = '/';
  out[n] = 0;
}

static void resolve_path(const char *base, const char *p, char *out, size_t cap) {
  if (!p) {
    out[0] = 0;
    return;
  }
  if (p[0] == '/' || strstr(p, "://")) snprintf(out, cap, "%s", p);
  else {
    snprintf(out, cap, "%s/%s", base, p);
    normalize_path(out);
  }
}

static void make_job_id(const nq_job_spec_t *spec, char *out, size_t cap) {
  if (spec->id) {
    snprintf(out, cap, "%s", spec->id);
    return;
  }
  time_t now = time(NULL);
  struct tm tm;
  gmtime_r(&now, &tm);
  unsigned r = 0;
  if (getrandom(&r, sizeof r, 0) != sizeof r) r = (unsigned)clock() ^ (unsigned)getpid();
  snprintf(out, cap, "%s-%04d%02d%02dT%02d%02d%02d-%06x", spec->job, tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
           tm.tm_min, tm.tm_sec, r & 0xffffffu);
}

typedef struct submit_state {
  nq_queue_t *q;
  const nq_job_spec_t *spec;
  const char *job_id;
  char topic[160];
  char job_out[2048];   /* output URI of the job, ends with '/' */
  long long ntasks, bad;
  json_t *batch;        /* owned: pending records of the current task */
  char *bodies[256];    /* owned: envelopes not yet published (sent with one publish_batch) */
  size_t lens[256];
  int npend;
} submit_state_t;

static int flush_pending(submit_state_t *s, nq_err_t *err) {
  int rc = s->npend ? nq_queue_publish_batch(s->q, s->topic, (const char *const *)s->bodies, s->lens, s->npend, err) : 0;
  for (int i = 0; i < s->npend; i++) free(s->bodies[i]);
  s->npend = 0;
  return rc;
}

static int publish_task(submit_state_t *s, nq_err_t *err) {
  if (json_array_size(s->batch) == 0) return 0;
  char key[32], task[256], out[2300];
  snprintf(key, sizeof key, "%06lld", s->ntasks);
  snprintf(task, sizeof task, "%s/%s", s->job_id, key);
  snprintf(out, sizeof out, "%s%s/", s->job_out, key);
  json_t *input;
  if (s->spec->batch_size == 1) input = json_incref(json_array_get(s->batch, 0));
  else input = json_pack("{s:O}", "records", s->batch);
  nq_envelope_t env;
  int rc = nq_envelope_make(&env, s->job_id, task, s->spec->stage, s->spec->device, (int)s->spec->max_attempts, input,
                            s->spec->params, out, s->spec->next, NULL, err);
  json_decref(input);
  if (rc) return rc;
  char *body = nq_envelope_dump(&env);
  nq_envelope_deinit(&env);
  if (!body) return nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "out of memory");
  s->bodies[s->npend] = body;
  s->lens[s->npend++] = strlen(body);
  if (s->npend == (int)(sizeof s->bodies / sizeof *s->bodies) && (rc = flush_pending(s, err))) return rc;
  s->ntasks++;
  json_array_clear(s->batch);
  return 0;
}

/* A record the dataset could not read becomes a dead task with the reason, so the manifest accounts for it. */
static int record_bad(submit_state_t *s, const nq_err_t *rerr, nq_err_t *err) {
  char key[32], task[256];
  snprintf(key, sizeof key, "%06lld", s->ntasks);
  snprintf(task, sizeof task, "%s/%s", s->job_id, key);
  json_t *res = json_pack("{s:i,s:s,s:s,s:s,s:s,s:i,s:[],s:{s:s,s:s}}", "v", 1, "job", s->job_id, "task", task, "stage",
                          s->spec->stage, "status", "dead", "attempts", 0, "outputs", "error", "code",
                          nq_err_name(rerr->code), "message", rerr->msg);
  char *body = json_dumps(res, JSON_COMPACT);
  json_decref(res);
  int rc = body ? nq_queue_publish_result(s->q, s->job_id, body, err) : NQ_ENOMEM;
  free(body);
  if (!rc) rc = nq_queue_job_mark(s->q, s->job_id, task, "dead", NULL, NULL, err);
  s->ntasks++;
  s->bad++;
  return rc;
}

int nq_sched_submit(nq_queue_t *q, nq_store_t *st, const nq_job_spec_t *spec, char *job_id, size_t cap,
                    nq_sched_progress_cb cb, void *ud, nq_err_t *err) {
  (void)st;
  make_job_id(spec, job_id, cap);
  submit_state_t s = {.q = q, .spec = spec, .job_id = job_id};
  nq_queue_topic(s.topic, sizeof s.topic, spec->stage, spec->device);
  char outbase[PATH_MAX];
  resolve_path(spec->base_dir, spec->output, outbase, sizeof outbase);
  size_t ol = strlen(outbase);
  while (ol > 1 && outbase[ol - 1] == '/') outbase[--ol] = 0;
  if (!strstr(outbase, "://")) snprintf(s.job_out, sizeof s.job_out, "file://%s/%s/", outbase, job_id);
  else snprintf(s.job_out, sizeof s.job_out, "%s/%s/", outbase, job_id);

  char dspath[PATH_MAX], mroot[PATH_MAX];
  resolve_path(spec->base_dir, spec->ds_path, dspath, sizeof dspath);
  resolve_path(spec->base_dir, spec->ds_media_root, mroot, sizeof mroot);
  nq_ds_spec_t dss = {.path = dspath, .media_root = spec->ds_media_root ? mroot : NULL};
  int rc = nq_ds_format_parse(spec->ds_format, &dss.format);
  if (rc) return nq_err_set(err, NQ_ECONFIG, NQ_ERR_FATAL, "dataset.format: unknown '%s'", spec->ds_format);

  json_t *meta = json_pack("{s:s,s:s,s:s,s:s,s:O,s:I,s:I}", "id", job_id, "name", spec->job, "stage", spec->stage,
                           "output", s.job_out, "next", spec->next, "created", (json_int_t)time(NULL),
                           "max_attempts", (json_int_t)spec->max_attempts);
  char *ms = json_dumps(meta, JSON_COMPACT);
  json_decref(meta);
  rc = ms ? nq_queue_job_put(q, job_id, ms, err) : NQ_ENOMEM;
  free(ms);
  if (rc) return rc;

  nq_dataset_t *ds = NULL;
  if ((rc = nq_ds_open(&dss, &ds, err))) return nq_err_prefix(err, "job %s: dataset", job_id);
  s.batch = json_array();
  long long nrec = 0;
  for (;;) {
    if (spec->limit && nrec >= spec->limit) break;
    json_t *rec = NULL;
    nq_err_t rerr = {0};
    int r = nq_ds_next(ds, &rec, &rerr);
    if (r == 0) break;
    if (r < 0) {
      NQ_WARN("scheduler", "job %s: bad record: %s", job_id, rerr.msg);
      if ((rc = publish_task(&s, err)) || (rc = record_bad(&s, &rerr, err))) break;
      nrec++;
      continue;
    }
    json_array_append_new(s.batch, rec);
    nrec++;
    if ((long long)json_array_size(s.batch) >= spec->batch_size && (rc = publish_task(&s, err))) break;
    if (cb && s.ntasks % 1000 == 0) cb(ud, s.ntasks, s.bad);
  }
  if (!rc) rc = publish_task(&s, err);
  if (!rc) rc = flush_pending(&s, err);
  for (int i = 0; i < s.npend; i++) free(s.bodies[i]);
  nq_ds_free(ds);
  json_decref(s.batch);
  if (rc) return rc;
  if (cb) cb(ud, s.ntasks, s.bad);
  /* The total goes last: until it is set, no worker can declare the job complete. */
  if ((rc = nq_queue_job_set_total(q, job_id, s.ntasks, err))) return rc;
  int complete = 0;
  return nq_sched_finalize(q, st, job_id, &complete, err);
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The `eval` job kind: results carrying {"hyp", "refs"} (the llm stage with params.eval) are scored together and
 * <job>/_eval.json written before the manifest (so _SUCCESS implies it). No such result: nothing is written. */
static int eval_summary_write(nq_store_t *st, const char *out, json_t *latest, const char **keys, size_t nt,
                              nq_err_t *err) {
  nq_capmetrics_t *m = NULL;
  long long skipped = 0;
  int rc = 0;
  for (size_t i = 0; i < nt && !rc; i++) {
    json_t *r = json_object_get(latest, keys[i]), *ev = json_object_get(r, "eval");
    if (!ev) continue;
    if (!m && !(m = nq_capmetrics_new())) return nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "eval: out of memory");
    const char *hyp = json_string_value(json_object_get(ev, "hyp"));
    json_t *refs = json_object_get(ev, "refs");
    const char *rv[NQ_CAPMETRICS_MAX_REFS];
    int n = 0;
    for (size_t j = 0; j < json_array_size(refs) && n < NQ_CAPMETRICS_MAX_REFS; j++)
      if (json_is_string(json_array_get(refs, j))) rv[n++] = json_string_value(json_array_get(refs, j));
    nq_err_t e2 = {0};
    if (!hyp || n == 0 || nq_capmetrics_add(m, hyp, rv, n, &e2)) skipped++; /* no reference: not scored */
  }
  if (!m) return 0;
  nq_capmetrics_scores_t sc;
  rc = nq_capmetrics_compute(m, &sc, err);
  nq_capmetrics_free(m);
  if (rc) return rc;
  json_t *j = json_pack("{s:s,s:I,s:I,s:f,s:f,s:f,s:f,s:f,s:s}", "metric_impl", "pycocoevalcap bleu(closest)+cider-d",
                        "items", (json_int_t)sc.n_items, "skipped", (json_int_t)skipped, "bleu_1", sc.bleu[0], "bleu_2",
                        sc.bleu[1], "bleu_3", sc.bleu[2], "bleu_4", sc.bleu[3], "cider_d", sc.cider_d, "tokenizer",
                        "lowercase, COCO punctuation removed, whitespace split");
  char *body = j ? json_dumps(j, JSON_INDENT(2)) : NULL;
  json_decref(j);
  char uri[NQ_STORE_URI_MAX + 1];
  nq_store_obj_t obj;
  rc = body ? nq_store_join(out, "_eval.json", uri, sizeof uri, err) : nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "oom");
  if (!rc) rc = nq_store_put(st, uri, body, strlen(body), &obj, err);
  free(body);
  return rc;
}

int nq_sched_finalize(nq_queue_t *q, nq_store_t *st, const char *job_id, int *complete, nq_err_t *err) {
  if (complete) *complete = 0;
  nq_job_counts_t c;
  int rc = nq_queue_job_counts(q, job_id, &c, err);
  if (rc) return rc;
  if (!nq_job_counts_complete(&c)) return 0;
  char *ms = NULL;
  if ((rc = nq_queue_job_get(q, job_id, &ms, err))) return rc;
  if (!ms) return nq_err_set(err, NQ_ENOENT, NQ_ERR_FATAL, "job %s: unknown", job_id);
  json_t *meta = json_loads(ms, 0, NULL);
  free(ms);
  const char *out = json_string_value(json_object_get(meta, "output"));
  if (!out) {
    json_decref(meta);
    return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "job %s: metadata has no output", job_id);
  }
  /* Latest terminal result per task, in stream order. */
  json_t *latest = json_object();
  char cursor[128] = "";
  for (;;) {
    nq_result_entry_t *ents = NULL;
    int n = 0;
    if ((rc = nq_queue_read_results(q, job_id, cursor, 1000, 0, &ents, &n, err))) break;
    for (int i = 0; i < n; i++) {
      json_t *r = json_loads(ents[i].body, 0, NULL);
      const char *task = json_string_value(json_object_get(r, "task"));
      const char *status = json_string_value(json_object_get(r, "status"));
      if (task && status && (strcmp(status, "ok") == 0 || strcmp(status, "dead") == 0)) json_object_set(latest, task, r);
      json_decref(r);
    }
    if (n > 0) snprintf(cursor, sizeof cursor, "%s", ents[n - 1].id);
    nq_result_entries_free(ents, n);
    if (n < 1000) break;
  }
  size_t nt = json_object_size(latest), i = 0;
  const char **keys = calloc(nt ? nt : 1, sizeof *keys);
  char **lines = calloc(nt ? nt : 1, sizeof *lines);
  const char *k;
  json_t *v;
  json_object_foreach(latest, k, v) keys[i++] = k;
  qsort(keys, nt, sizeof *keys, cmp_str);
  long long nok = 0;
  for (i = 0; !rc && i < nt; i++) {
    json_t *r = json_object_get(latest, keys[i]);
    const char *status = json_string_value(json_object_get(r, "status"));
    nok += strcmp(status, "ok") == 0;
    json_t *row = json_pack("{s:s,s:s,s:O*,s:O*,s:O*}", "task", keys[i], "status", status, "attempts",
                            json_object_get(r, "attempts"), "outputs", json_object_get(r, "outputs"), "stage",
                            json_object_get(r, "stage"));
    if (json_object_get(r, "error")) json_object_set(row, "error", json_object_get(r, "error"));
    if (json_object_get(r, "text")) json_object_set(row, "text", json_object_get(r, "text"));
    if (json_object_get(r, "eval")) json_object_set(row, "eval", json_object_get(r, "eval"));
    lines[i] = json_dumps(row, JSON_COMPACT);
    json_decref(row);
  }
  if (!rc && (long long)nt < c.total)
    NQ_WARN("scheduler", "job %s: %lld tasks counted but %zu results found", job_id, c.total, nt);
  if (!rc) rc = eval_summary_write(st, out, latest, keys, nt, err);
  if (!rc) rc = nq_store_manifest_write(st, out, (const char *const *)lines, nt, err);
  if (!rc) {
    if (nok == c.total && (long long)nt == c.total) rc = nq_store_success_write(st, out, err);
    else rc = nq_store_success_remove(st, out, err);
  }
  for (i = 0; i < nt; i++) free(lines[i]);
  free(lines);
  free(keys);
  json_decref(latest);
  json_decref(meta);
  if (!rc && complete) *complete = 1;
  return rc;
}

/* queue/queue.c — URL dispatch, the thin vtable wrappers, topic naming, backoff and the free helpers.
 * Backends live in local.c (in-process) and redis.c (Redis Streams). */
#include "queue/queue.h"

#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---------------------------------------------------------------- free helpers */

void nq_delivery_free_array(nq_delivery_t *d, int n) {
  if (!d) return;
  for (int i = 0; i < n; i++) {
    free(d[i].id);
    free(d[i].topic);
    free(d[i].body);
  }
  free(d);
}

void nq_dlq_entries_free(nq_dlq_entry_t *e, int n) {
  if (!e) return;
  for (int i = 0; i < n; i++) {
    free(e[i].id);
    free(e[i].topic);
    free(e[i].reason);
    free(e[i].body);
  }
  free(e);
}

void nq_result_entries_free(nq_result_entry_t *e, int n) {
  if (!e) return;
  for (int i = 0; i < n; i++) {
    free(e[i].id);
    free(e[i].body);
  }
  free(e);
}

/* ---------------------------------------------------------------- open / close */

/* Parses "HOST[:PORT][/DB]" (the part after "redis://"). Defaults 127.0.0.1:6379/0. */
static int parse_hostport(const char *s, char *host, size_t hcap, int *port, int *db, nq_err_t *err) {
  *port = 6379;
  *db = 0;
  const char *slash = strchr(s, '/');
  const char *colon = strchr(s, ':');
  if (colon && slash && colon > slash) colon = NULL;
  size_t hlen = colon ? (size_t)(colon - s) : slash ? (size_t)(slash - s) : strlen(s);
  if (hlen == 0) {
    snprintf(host, hcap, "127.0.0.1");
  } else {
    if (hlen >= hcap) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "queue url: host too long in '%s'", s);
    memcpy(host, s, hlen);
    host[hlen] = 0;
  }
  if (colon) {
    char *end;
    long p = strtol(colon + 1, &end, 10);
    if (end == colon + 1 || p <= 0 || p > 65535 || (*end && *end != '/'))
      return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "queue url: bad port in '%s'", s);
    *port = (int)p;
  }
  if (slash && slash[1]) {
    char *end;
    long d = strtol(slash + 1, &end, 10);
    if (*end || d < 0 || d > 1024)
      return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "queue url: bad db number in '%s'", s);
    *db = (int)d;
  }
  return 0;
}

char *nq_url_redact(const char *url, char *out, size_t cap) {
  if (!out || cap == 0) return out;
  if (!url) {
    out[0] = 0;
    return out;
  }
  const char *sep = strstr(url, "://");
  const char *auth = sep ? sep + 3 : url;
  size_t alen = strcspn(auth, "/?#");
  const char *at = NULL;
  for (const char *c = auth; c < auth + alen; c++)
    if (*c == '@') at = c; /* the last '@' of the authority ends the userinfo */
  const char *colon = at ? memchr(auth, ':', (size_t)(at - auth)) : NULL;
  if (!colon) {
    snprintf(out, cap, "%s", url);
  } else {
    snprintf(out, cap, "%.*s***%s", (int)(colon + 1 - url), url, at);
  }
  return out;
}

/* Percent-decodes s[0..n) into out (cap bytes incl. NUL). -1 on a bad escape, an encoded NUL or overflow. */
static int url_unescape(const char *s, size_t n, char *out, size_t cap) {
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    int c = (unsigned char)s[i];
    if (c == '%') {
      if (i + 2 >= n) return -1;
      char hex[3] = {s[i + 1], s[i + 2], 0};
      char *end;
      long v = strtol(hex, &end, 16);
      if (end != hex + 2 || v == 0) return -1;
      c = (int)v;
      i += 2;
    }
    if (o + 1 >= cap) return -1;
    out[o++] = (char)c;
  }
  out[o] = 0;
  return 0;
}

int nq_queue_open(const char *url, const nq_queue_opts_t *opts, nq_queue_t **out, nq_err_t *err) {
  if (!url || !out) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "nq_queue_open: NULL argument");
  *out = NULL;
  if (strlen(url) >= sizeof(((nq_queue_t *)0)->url))
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "queue url too long (%zu bytes)", strlen(url));
  char safe[sizeof(((nq_queue_t *)0)->url) + 8];
  nq_url_redact(url, safe, sizeof safe);
  int rc;
  if (strncmp(url, "local://", 8) == 0) {
    rc = nq_queue_local_open(url + 8, opts, out, err);
  } else if (strncmp(url, "redis://", 8) == 0) {
    char host[256], user[256] = "", pass[256] = "";
    int port, db;
    const char *hp = url + 8;
    size_t alen = strcspn(hp, "/?#");
    const char *at = NULL;
    for (const char *c = hp; c < hp + alen; c++)
      if (*c == '@') at = c;
    if (at) {
      const char *colon = memchr(hp, ':', (size_t)(at - hp));
      if (!colon)
        return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL,
                          "queue url '%s': userinfo without a password (want redis://[USER]:PASS@HOST:PORT[/DB])", safe);
      if (url_unescape(hp, (size_t)(colon - hp), user, sizeof user) ||
          url_unescape(colon + 1, (size_t)(at - colon - 1), pass, sizeof pass))
        return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "queue url '%s': bad user or password (percent-encoding, length)",
                          safe);
      hp = at + 1;
    }
    rc = parse_hostport(hp, host, sizeof host, &port, &db, err);
    if (rc == 0) rc = nq_queue_redis_open_auth(host, port, db, user, at ? pass : NULL, opts, out, err);
    explicit_bzero(pass, sizeof pass);
  } else if (strncmp(url, "kafka://", 8) == 0) {
    rc = nq_queue_kafka_open(url + 8, opts, out, err);
  } else {
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL,
                      "queue url '%s': unknown scheme (want local://NAME, redis://[[USER]:PASS@]HOST:PORT[/DB], kafka://BROKERS)",
                      safe);
  }
  if (rc == 0 && *out && (*out)->url[0] == 0) snprintf((*out)->url, sizeof (*out)->url, "%s", safe);
  return rc;
}

void nq_queue_close(nq_queue_t *q) {
  if (q && q->vt && q->vt->free) q->vt->free(q);
}

/* ---------------------------------------------------------------- wrappers */

#define NQ__CALL(q, member, ...)                                                                          \
  do {                                                                                                    \
    if (!(q)) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "queue: NULL handle in " #member);         \
    if (!(q)->vt->member)                                                                                 \
      return nq_err_set(err, NQ_EUNSUPPORTED, NQ_ERR_FATAL, "queue backend %s: " #member " unsupported", \
                        (q)->vt->name);                                                                   \
    return (q)->vt->member((q), __VA_ARGS__);                                                             \
  } while (0)

/* A message no worker would accept (the envelope parser refuses more than NQ_QUEUE_MAX_MESSAGE_BYTES) is refused at
 * publish, so it never occupies the queue or a worker. */
static int check_msg_size(const char *what, const char *topic, size_t len, nq_err_t *err) {
  if (len <= NQ_QUEUE_MAX_MESSAGE_BYTES) return 0;
  return nq_err_set(err, NQ_ELIMIT, NQ_ERR_FATAL, "queue %s to %s: message of %zu bytes exceeds the limit of %u bytes",
                    what, topic ? topic : "(null)", len, NQ_QUEUE_MAX_MESSAGE_BYTES);
}

int nq_queue_publish(nq_queue_t *q, const char *topic, const char *body, size_t len, nq_err_t *err) {
  if (check_msg_size("publish", topic, len, err)) return NQ_ELIMIT;
  NQ__CALL(q, publish, topic, body, len, err);
}
int nq_queue_fetch(nq_queue_t *q, const char *const *topics, int ntopics, const char *group, const char *consumer,
                   int max_n, int block_ms, nq_delivery_t **out, int *n_out, nq_err_t *err) {
  NQ__CALL(q, fetch, topics, ntopics, group, consumer, max_n, block_ms, out, n_out, err);
}
int nq_queue_ack(nq_queue_t *q, const char *group, const nq_delivery_t *d, nq_err_t *err) {
  NQ__CALL(q, ack, group, d, err);
}
int nq_queue_nack(nq_queue_t *q, const char *group, const nq_delivery_t *d, int retry_after_ms, const char *new_body,
                  nq_err_t *err) {
  NQ__CALL(q, nack, group, d, retry_after_ms, new_body, err);
}
int nq_queue_extend_lease(nq_queue_t *q, const char *group, const char *consumer, const nq_delivery_t *d,
                          nq_err_t *err) {
  NQ__CALL(q, extend_lease, group, consumer, d, err);
}
int nq_queue_dead_letter(nq_queue_t *q, const char *group, const nq_delivery_t *d, const char *reason,
                         nq_err_t *err) {
  NQ__CALL(q, dead_letter, group, d, reason, err);
}
int nq_queue_stats(nq_queue_t *q, const char *topic, const char *group, nq_queue_stats_t *st, nq_err_t *err) {
  NQ__CALL(q, stats, topic, group, st, err);
}
int nq_queue_publish_result(nq_queue_t *q, const char *job, const char *body, nq_err_t *err) {
  NQ__CALL(q, publish_result, job, body, err);
}
int nq_queue_read_results(nq_queue_t *q, const char *job, const char *after, int max_n, int block_ms,
                          nq_result_entry_t **out, int *n_out, nq_err_t *err) {
  NQ__CALL(q, read_results, job, after, max_n, block_ms, out, n_out, err);
}
int nq_queue_job_put(nq_queue_t *q, const char *job, const char *meta_json, nq_err_t *err) {
  NQ__CALL(q, job_put, job, meta_json, err);
}
int nq_queue_job_get(nq_queue_t *q, const char *job, char **meta_json, nq_err_t *err) {
  NQ__CALL(q, job_get, job, meta_json, err);
}
int nq_queue_job_set_total(nq_queue_t *q, const char *job, long long total, nq_err_t *err) {
  NQ__CALL(q, job_set_total, job, total, err);
}
int nq_queue_job_mark(nq_queue_t *q, const char *job, const char *task, const char *status, nq_job_counts_t *after,
                      int *changed, nq_err_t *err) {
  NQ__CALL(q, job_mark, job, task, status, after, changed, err);
}
int nq_queue_job_counts(nq_queue_t *q, const char *job, nq_job_counts_t *c, nq_err_t *err) {
  NQ__CALL(q, job_counts, job, c, err);
}
int nq_queue_tasks_ok(nq_queue_t *q, const char *job, const char *const *tasks, int n, unsigned char *ok,
                      nq_err_t *err) {
  NQ__CALL(q, tasks_ok, job, tasks, n, ok, err);
}
int nq_queue_dlq_list(nq_queue_t *q, int max_n, nq_dlq_entry_t **out, int *n_out, nq_err_t *err) {
  NQ__CALL(q, dlq_list, max_n, out, n_out, err);
}
int nq_queue_dlq_requeue(nq_queue_t *q, const char *id, int *n, nq_err_t *err) {
  NQ__CALL(q, dlq_requeue, id, n, err);
}
int nq_queue_dlq_purge(nq_queue_t *q, int *n, nq_err_t *err) { NQ__CALL(q, dlq_purge, n, err); }

/* Batched forms: the backend's member, or a loop over the single forms. */
int nq_queue_publish_batch(nq_queue_t *q, const char *topic, const char *const *bodies, const size_t *lens, int n,
                           nq_err_t *err) {
  if (!q) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "queue: NULL handle in publish_batch");
  if (n < 0 || (n > 0 && (!bodies || !lens)))
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "queue publish_batch to %s: bad arguments (n %d)",
                      topic ? topic : "(null)", n);
  if (n == 0) return 0;
  for (int i = 0; i < n; i++)
    if (check_msg_size("publish_batch", topic, lens[i], err)) return nq_err_prefix(err, "item %d of %d", i, n);
  if (q->vt->publish_batch) return q->vt->publish_batch(q, topic, bodies, lens, n, err);
  if (!q->vt->publish)
    return nq_err_set(err, NQ_EUNSUPPORTED, NQ_ERR_FATAL, "queue backend %s: publish unsupported", q->vt->name);
  for (int i = 0; i < n; i++) {
    int rc = q->vt->publish(q, topic, bodies[i], lens[i], err);
    if (rc) return nq_err_prefix(err, "publish_batch item %d of %d", i, n);
  }
  return 0;
}

/* Fallback: publish_result, job_mark, ack per item, in that order. Not atomic per item: a crash between the
 * steps leaves a result (and mark) without the ack, so the task is redelivered and its result published twice
 * (at-least-once, never a lost result); and a delivery that is no longer pending is not detected. */
int nq_queue_complete_batch(nq_queue_t *q, const char *group, const nq_completion_t *items, int n,
                            nq_job_counts_t *counts, int *changed, nq_err_t *err) {
  if (!q) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "queue: NULL handle in complete_batch");
  if (n < 0 || (n > 0 && !items))
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "queue complete_batch: bad arguments (n %d)", n);
  if (n == 0) return 0;
  if (q->vt->complete_batch) return q->vt->complete_batch(q, group, items, n, counts, changed, err);
  if (!q->vt->publish_result || !q->vt->job_mark || !q->vt->ack)
    return nq_err_set(err, NQ_EUNSUPPORTED, NQ_ERR_FATAL, "queue backend %s: complete_batch unsupported",
                      q->vt->name);
  for (int i = 0; i < n; i++) {
    const nq_completion_t *it = &items[i];
    if (!it->job || !it->task || !it->status || !it->result)
      return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "queue complete_batch: item %d of %d has a NULL field", i, n);
    int rc = q->vt->publish_result(q, it->job, it->result, err);
    if (!rc) rc = q->vt->job_mark(q, it->job, it->task, it->status, counts ? &counts[i] : NULL,
                                  changed ? &changed[i] : NULL, err);
    if (!rc && it->d) rc = q->vt->ack(q, group, it->d, err);
    if (rc) return nq_err_prefix(err, "complete_batch item %d of %d (task %s)", i, n, it->task);
  }
  return 0;
}

/* ---------------------------------------------------------------- naming */

static int name_ok(const char *s) {
  if (!s || !*s) return 0;
  for (const char *p = s; *p; p++)
    if ((unsigned char)*p <= ' ' || *p == 0x7f) return 0;
  return 1;
}

int nq_queue_topic(char *out, size_t cap, const char *stage, const char *device) {
  if (!out || cap == 0 || !name_ok(stage) || !name_ok(device)) return NQ_EINVAL;
  int n = snprintf(out, cap, "tasks:%s:%s", stage, device);
  if (n < 0 || (size_t)n >= cap) {
    out[0] = 0;
    return NQ_ELIMIT;
  }
  return 0;
}

int nq_queue_group(char *out, size_t cap, const char *stage) {
  if (!out || cap == 0 || !name_ok(stage)) return NQ_EINVAL;
  int n = snprintf(out, cap, "stage:%s", stage);
  if (n < 0 || (size_t)n >= cap) {
    out[0] = 0;
    return NQ_ELIMIT;
  }
  return 0;
}

/* ---------------------------------------------------------------- backoff */

/* splitmix64 over a thread-local state seeded from the clock and the thread: no shared RNG state. */
static uint64_t backoff_rand(void) {
  static _Thread_local uint64_t s;
  if (s == 0) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    s = ((uint64_t)ts.tv_sec * 1000000007ull) ^ (uint64_t)ts.tv_nsec ^ ((uint64_t)(uintptr_t)&s << 16) ^
        (uint64_t)pthread_self();
    if (s == 0) s = 1;
  }
  uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

int nq_queue_backoff_ms(int attempt, int base_ms, int max_ms) {
  if (base_ms <= 0) base_ms = 1;
  if (max_ms < base_ms) max_ms = base_ms;
  if (attempt < 1) attempt = 1;
  long long cap = base_ms;
  for (int i = 1; i < attempt && cap < max_ms; i++) cap *= 2;
  if (cap > max_ms) cap = max_ms;
  long long lo = cap / 2, span = cap - lo; /* uniform in [cap/2, cap] */
  return (int)(lo + (long long)(backoff_rand() % (uint64_t)(span + 1)));
}

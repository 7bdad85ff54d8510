/* queue/queue.h — the queue contract every backend (local, redis, kafka) implements.
 *
 * Semantics (copied from Redis Streams consumer groups and disque):
 *   - At-least-once delivery with explicit ack. A fetched message is *leased* to the consumer for
 *     `lease_ms`; if it is neither acked, nacked nor dead-lettered and its lease is not extended
 *     (heartbeat), a later fetch by any consumer of the group reclaims it and its delivery_count
 *     grows. A worker killed with SIGKILL therefore loses nothing.
 *   - nack(retry_after_ms): the message comes back after the delay (delayed retry), optionally with a
 *     new body (the worker bumps the envelope's attempt). The original delivery is acked atomically
 *     with scheduling the retry, so the retry cannot be lost or doubled by a crash in between
 *     (backends that cannot make it atomic make it at-least-once: a duplicate, never a loss).
 *   - dead_letter(reason): the message moves to the dead-letter queue with the reason and leaves the
 *     pending list.
 *   - Outputs are idempotent, so a redelivery is harmless; job progress counts each task once
 *     (nq_queue_job_mark records a task's latest terminal status by task id).
 *
 * Topics are strings like "tasks:llm:cpu"; the backend maps them (redis: "nq:tasks:llm:cpu").
 * Threads: a nq_queue_t may be shared by several threads; backends serialise internally
 * (redis: one connection per calling thread, or a lock around one connection).
 */
#ifndef NQ_QUEUE_QUEUE_H
#define NQ_QUEUE_QUEUE_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

typedef struct nq_queue nq_queue_t;

typedef struct nq_delivery {
  char *id;                /* owned: backend message id (redis entry id "1700000000000-0", local seq) */
  char *topic;             /* owned: the topic it was fetched from */
  char *body;              /* owned: message bytes, NUL-terminated */
  size_t len;              /* body length without the NUL */
  unsigned delivery_count; /* 1 on first delivery; +1 per reclaim after a lease expiry */
  int64_t backend_tag;     /* backend private (kafka partition/offset packing; unused elsewhere) */
} nq_delivery_t;

void nq_delivery_free_array(nq_delivery_t *d, int n); /* frees the members and the array */

typedef struct nq_queue_stats {
  long long depth;     /* messages waiting (not yet delivered) */
  long long in_flight; /* delivered, not acked (pending list) */
  long long delayed;   /* scheduled retries not yet due */
  long long dead;      /* entries in the dead-letter queue (all topics) */
  long long lag;       /* backend notion of lag (kafka: offsets behind); = depth elsewhere */
} nq_queue_stats_t;

typedef struct nq_job_counts {
  long long total;     /* -1 until the scheduler has enumerated the job */
  long long ok, failed, dead;
} nq_job_counts_t;

typedef struct nq_dlq_entry {
  char *id;     /* owned: DLQ entry id */
  char *topic;  /* owned: topic the message came from */
  char *reason; /* owned */
  char *body;   /* owned: the message as it was */
} nq_dlq_entry_t;
void nq_dlq_entries_free(nq_dlq_entry_t *e, int n);

typedef struct nq_result_entry {
  char *id;   /* owned: cursor to pass as `after` to continue */
  char *body; /* owned: result JSON */
} nq_result_entry_t;
void nq_result_entries_free(nq_result_entry_t *e, int n);

struct nq_completion;

/* The vtable. Members tagged optional may be NULL; callers get NQ_EUNSUPPORTED. */
typedef struct nq_queue_i {
  const char *name; /* "local", "redis", "kafka" */
  /* 1 when a delivery_count of 1 may be a redelivery: Kafka derives counts from the last offset commit that landed,
   * and a commit refused during a rebalance (or lost with a killed member) leaves them low. The worker then asks
   * tasks_ok for every delivery, not only for counts > 1. */
  int counts_lower_bound;
  int (*publish)(nq_queue_t *q, const char *topic, const char *body, size_t len, nq_err_t *err);
  /* Fetch up to max_n messages from any of topics[0..ntopics) for consumer `consumer` of `group`.
   * First reclaims expired leases, then moves due delayed retries, then reads new messages;
   * blocks up to block_ms when nothing is there. *out is a malloc'ed array (nq_delivery_free_array). */
  int (*fetch)(nq_queue_t *q, const char *const *topics, int ntopics, const char *group, const char *consumer,
               int max_n, int block_ms, nq_delivery_t **out, int *n_out, nq_err_t *err);
  int (*ack)(nq_queue_t *q, const char *group, const nq_delivery_t *d, nq_err_t *err);
  int (*nack)(nq_queue_t *q, const char *group, const nq_delivery_t *d, int retry_after_ms,
              const char *new_body /* NULL: keep the body */, nq_err_t *err);
  int (*extend_lease)(nq_queue_t *q, const char *group, const char *consumer, const nq_delivery_t *d, nq_err_t *err);
  int (*dead_letter)(nq_queue_t *q, const char *group, const nq_delivery_t *d, const char *reason, nq_err_t *err);
  int (*stats)(nq_queue_t *q, const char *topic, const char *group, nq_queue_stats_t *st, nq_err_t *err);

  /* Results and job state. */
  int (*publish_result)(nq_queue_t *q, const char *job, const char *body, nq_err_t *err);
  /* Results after cursor `after` (NULL or "" = from the start), up to max_n, blocking up to block_ms. */
  int (*read_results)(nq_queue_t *q, const char *job, const char *after, int max_n, int block_ms,
                      nq_result_entry_t **out, int *n_out, nq_err_t *err);
  /* Job metadata: a JSON object (spec, output URI, name...) stored once by the scheduler. */
  int (*job_put)(nq_queue_t *q, const char *job, const char *meta_json, nq_err_t *err);
  int (*job_get)(nq_queue_t *q, const char *job, char **meta_json /* OUT owned, NULL if unknown */, nq_err_t *err);
  int (*job_set_total)(nq_queue_t *q, const char *job, long long total, nq_err_t *err);
  /* Record task's terminal status ("ok", "failed", "dead"); counts move atomically so each task is
   * counted once with its latest status. *changed (may be NULL) = 1 if the status changed. */
  int (*job_mark)(nq_queue_t *q, const char *job, const char *task, const char *status, nq_job_counts_t *after,
                  int *changed, nq_err_t *err);
  int (*job_counts)(nq_queue_t *q, const char *job, nq_job_counts_t *c, nq_err_t *err);
  /* Optional: ok[i] = 1 when task tasks[i] of job is recorded with terminal status "ok" (job_mark), else 0. The
   * worker asks before it runs a redelivered task: one whose result is recorded is acked without running again. */
  int (*tasks_ok)(nq_queue_t *q, const char *job, const char *const *tasks, int n, unsigned char *ok /* OUT [n] */,
                  nq_err_t *err);

  /* Dead-letter queue administration. */
  int (*dlq_list)(nq_queue_t *q, int max_n, nq_dlq_entry_t **out, int *n_out, nq_err_t *err);
  /* Re-publish entry `id` (NULL = all) to its topic and remove it from the DLQ. *n = count requeued. */
  int (*dlq_requeue)(nq_queue_t *q, const char *id, int *n, nq_err_t *err);
  int (*dlq_purge)(nq_queue_t *q, int *n, nq_err_t *err);

  /* Batched forms (optional: the wrappers fall back to loops over the single forms). One network round trip
   * per call on backends that can pipeline. */
  int (*publish_batch)(nq_queue_t *q, const char *topic, const char *const *bodies, const size_t *lens, int n,
                       nq_err_t *err);
  /* Finish n tasks at once; for each item atomically: append the result to the job's results, record the task's
   * terminal status (job_mark) and ack the delivery (or, with d == NULL, only result + mark). counts[i] (may be
   * NULL) receives the job counts after item i and changed[i] whether its status changed. */
  int (*complete_batch)(nq_queue_t *q, const char *group, const struct nq_completion *items, int n,
                        nq_job_counts_t *counts /* OUT [n], may be NULL */, int *changed /* OUT [n], may be NULL */,
                        nq_err_t *err);

  void (*free)(nq_queue_t *q);
} nq_queue_i;

/* One finished task for complete_batch. */
typedef struct nq_completion {
  const nq_delivery_t *d; /* borrowed: the delivery to ack; NULL = nothing to ack */
  const char *job;        /* borrowed */
  const char *task;       /* borrowed */
  const char *status;     /* borrowed: "ok" | "dead" */
  const char *result;     /* borrowed: result JSON appended to the job's results */
} nq_completion_t;

/* Largest message body nq_queue_publish / _publish_batch accept; equal to NQ_ENVELOPE_MAX_BYTES (the worker's parser
 * refuses anything larger, so it could never run). Larger ones are NQ_ELIMIT, fatal. */
#define NQ_QUEUE_MAX_MESSAGE_BYTES (16u << 20)

typedef struct nq_queue_opts {
  int lease_ms;   /* visibility timeout; default 30000 */
  const char *const *kv; /* borrowed: backend properties as key,value pairs (kafka: librdkafka props) */
  int nkv;
} nq_queue_opts_t;

/* Common header of every backend object: backends embed it first. */
struct nq_queue {
  const nq_queue_i *vt;  /* borrowed: static vtable */
  int lease_ms;
  char url[256];
};

/* Open by URL: "local://NAME" (in-process; the same NAME in one process = the same queue),
 * "redis://[[USER]:PASS@]HOST:PORT[/DB]", "kafka://BROKER[,BROKER]". opts may be NULL. Redis credentials
 * (percent-encoded where they hold '@', ':', '/' or '%') are sent as AUTH USER PASS (ACL user) or AUTH PASS
 * (requirepass) on every connection; q->url and every error message show the password as "***". */
int nq_queue_open(const char *url, const nq_queue_opts_t *opts, nq_queue_t **out, nq_err_t *err);
void nq_queue_close(nq_queue_t *q);
/* Copy of url with the password of a "scheme://user:pass@host..." userinfo replaced by "***" (a URL without one
 * is copied as is). For every place a queue / store / broker URL is printed or logged. Returns out. */
char *nq_url_redact(const char *url, char *out /* OUT */, size_t cap);

/* Backend constructors (called by nq_queue_open). */
int nq_queue_local_open(const char *name, const nq_queue_opts_t *opts, nq_queue_t **out, nq_err_t *err);
int nq_queue_redis_open(const char *host, int port, int db, const nq_queue_opts_t *opts, nq_queue_t **out,
                        nq_err_t *err);
/* Same with credentials sent as AUTH [user] pass right after every connect and reconnect (user NULL or "": the
 * legacy requirepass form). Both are copied; the password never appears in q->url, logs or error messages. */
int nq_queue_redis_open_auth(const char *host, int port, int db, const char *user, const char *pass,
                             const nq_queue_opts_t *opts, nq_queue_t **out, nq_err_t *err);
int nq_queue_kafka_open(const char *brokers, const nq_queue_opts_t *opts, nq_queue_t **out, nq_err_t *err);

/* Thin wrappers: q->vt->x(q, ...), or NQ_EUNSUPPORTED for a NULL optional member. */
int nq_queue_publish(nq_queue_t *q, const char *topic, const char *body, size_t len, nq_err_t *err);
int nq_queue_fetch(nq_queue_t *q, const char *const *topics, int ntopics, const char *group, const char *consumer,
                   int max_n, int block_ms, nq_delivery_t **out, int *n_out, nq_err_t *err);
int nq_queue_ack(nq_queue_t *q, const char *group, const nq_delivery_t *d, nq_err_t *err);
int nq_queue_nack(nq_queue_t *q, const char *group, const nq_delivery_t *d, int retry_after_ms, const char *new_body,
                  nq_err_t *err);
int nq_queue_extend_lease(nq_queue_t *q, const char *group, const char *consumer, const nq_delivery_t *d, nq_err_t *err);
int nq_queue_dead_letter(nq_queue_t *q, const char *group, const nq_delivery_t *d, const char *reason, nq_err_t *err);
int nq_queue_stats(nq_queue_t *q, const char *topic, const char *group, nq_queue_stats_t *st, nq_err_t *err);
int nq_queue_publish_result(nq_queue_t *q, const char *job, const char *body, nq_err_t *err);
int nq_queue_read_results(nq_queue_t *q, const char *job, const char *after, int max_n, int block_ms,
                          nq_result_entry_t **out, int *n_out, nq_err_t *err);
int nq_queue_job_put(nq_queue_t *q, const char *job, const char *meta_json, nq_err_t *err);
int nq_queue_job_get(nq_queue_t *q, const char *job, char **meta_json, nq_err_t *err);
int nq_queue_job_set_total(nq_queue_t *q, const char *job, long long total, nq_err_t *err);
int nq_queue_job_mark(nq_queue_t *q, const char *job, const char *task, const char *status, nq_job_counts_t *after,
                      int *changed, nq_err_t *err);
int nq_queue_job_counts(nq_queue_t *q, const char *job, nq_job_counts_t *c, nq_err_t *err);
int nq_queue_tasks_ok(nq_queue_t *q, const char *job, const char *const *tasks, int n, unsigned char *ok,
                      nq_err_t *err);
int nq_queue_dlq_list(nq_queue_t *q, int max_n, nq_dlq_entry_t **out, int *n_out, nq_err_t *err);
int nq_queue_dlq_requeue(nq_queue_t *q, const char *id, int *n, nq_err_t *err);
int nq_queue_dlq_purge(nq_queue_t *q, int *n, nq_err_t *err);
int nq_queue_publish_batch(nq_queue_t *q, const char *topic, const char *const *bodies, const size_t *lens, int n,
                           nq_err_t *err);
int nq_queue_complete_batch(nq_queue_t *q, const char *group, const nq_completion_t *items, int n,
                            nq_job_counts_t *counts, int *changed, nq_err_t *err);

/* Topic naming shared by scheduler and worker: "tasks:<stage>:<device>" (device cpu|cuda|any). */
int nq_queue_topic(char *out, size_t cap, const char *stage, const char *device);
/* Consumer group of a stage: "stage:<stage>". */
int nq_queue_group(char *out, size_t cap, const char *stage);

/* Exponential backoff with full jitter: base_ms * 2^(attempt-1), capped, then uniform in [cap/2, cap]. */
int nq_queue_backoff_ms(int attempt, int base_ms, int max_ms);

#endif

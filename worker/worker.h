/* worker/worker.h — the worker: fetch batch -> stage handler -> write outputs -> publish result -> ack.
 *
 * The worker is the one place where tasks, data and models meet. Stage handlers (noop, llm,
 * encode, generate-*) register in a table; a worker serves a list of stages with N task threads
 * and one heartbeat thread that extends the lease of every task in flight.
 *
 * Per delivery:
 *   parse envelope  -- bad --> dead-letter with the parse error (+ a dead result when ids are readable)
 *   attempt = envelope.attempt + delivery_count - 1 (a task that keeps killing workers still dies)
 *   attempt > max_attempts --> dead-letter
 *   run the stage (a batch of envelopes of one stage at a time)
 *     ok:  outputs are already in the store (atomic); next stage? publish the follow-up task :
 *          publish the result, mark the task ok, finalize the job if complete; then ack
 *     retriable error and attempts left: nack with exponential backoff (attempt+1)
 *     fatal error or no attempts left: dead-letter with the reason, dead result, mark dead; ack
 */
#ifndef NQ_WORKER_WORKER_H
#define NQ_WORKER_WORKER_H

#include <jansson.h>
#include <signal.h>

#include "common/err.h"
#include "queue/envelope.h"
#include "queue/queue.h"
#include "store/store.h"

typedef struct nq_task_ctx {
  const nq_envelope_t *env;  /* borrowed: the task */
  nq_store_t *store;         /* borrowed */
  nq_store_batch_t *batch;   /* borrowed: puts are staged here and committed (group commit) before the task is
                                reported; NULL = each put is durable on its own */
  json_t *outputs;           /* owned by the worker: array the stage appends to via nq_task_put */
  json_t *result;            /* owned by the worker: object; stages may set "text", "metrics", other fields */
  nq_err_t err;              /* OUT: set by the stage when rc != 0 */
  int rc;                    /* OUT: 0 ok, else a negative NQ_E* */
} nq_task_ctx_t;

typedef struct nq_stage {
  const char *name;
  int max_batch; /* tasks handed to run_batch at once (>= 1) */
  /* optional: per-worker state (load models once). config: the worker's stage config (may be NULL). */
  int (*init)(void **state /* OUT owned */, const json_t *config, nq_err_t *err);
  /* Run n tasks; set t[i].rc / t[i].err per task. Thread: one of the worker's task threads; the same
   * state may be used by several threads at once unless the stage serialises internally. */
  void (*run_batch)(void *state, nq_task_ctx_t *t, int n);
  void (*fini)(void *state); /* optional */
} nq_stage_t;

/* Stage registry (static table in worker/stages.c). NULL if unknown. */
const nq_stage_t *nq_stage_find(const char *name);
/* Comma-separated names of every registered stage (static string). */
const char *nq_stage_names(void);

/* Write an output object `name` under the task's output prefix and record it in t->outputs. */
int nq_task_put(nq_task_ctx_t *t, const char *name, const void *data, size_t len, nq_err_t *err);
/* Record an error on the task (returns code). */
int nq_task_fail(nq_task_ctx_t *t, int code, unsigned flags, const char *fmt, ...) __attribute__((format(printf, 4, 5)));

typedef struct nq_worker_opts {
  nq_queue_t *queue;        /* borrowed */
  nq_store_t *store;        /* borrowed */
  const char *const *stages;/* borrowed: names of the stages to serve */
  int nstages;
  const char *device;       /* cpu|cuda */
  int threads;              /* task threads (default 1) */
  int batch;                /* max deliveries per fetch (default 1; stages may take fewer at once) */
  int block_ms;             /* fetch block time (default 1000) */
  int backoff_base_ms;      /* retry backoff base (default 1000) */
  int backoff_max_ms;       /* retry backoff cap (default 60000) */
  int grace_ms;             /* drain grace period after stop (default 30000) */
  const char *consumer;     /* consumer name prefix (default host-pid) */
  const json_t *stage_config; /* borrowed, may be NULL: {"llm": {...}, ...} passed to stage init */
  volatile sig_atomic_t *stop; /* borrowed: set to 1 to drain and return */
  int exit_when_idle;       /* return once `idle_ms` pass with nothing fetched (tests, embedded run) */
  int idle_ms;
} nq_worker_opts_t;

typedef struct nq_worker_stats {
  long long ok, retried, dead, malformed, acks, fetched;
  long long skipped; /* redeliveries of tasks already recorded ok: acked without running (nq_queue_tasks_ok) */
  int released; /* task threads still inside a stage when the grace period ended: exit the process now */
} nq_worker_stats_t;

/* Serve until *opts->stop becomes non-zero (then drain: stop fetching, finish in-flight tasks within
 * grace_ms, release the rest back to the queue) or, with exit_when_idle, until idle. */
int nq_worker_run(const nq_worker_opts_t *opts, nq_worker_stats_t *stats /* OUT, may be NULL */, nq_err_t *err);

#endif

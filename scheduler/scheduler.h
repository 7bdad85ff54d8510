/* scheduler/scheduler.h — job YAML -> tasks on the stage's queue, progress, and the manifest.
 *
 * A job is a dataset run through a stage (and optionally a chain of follow-up stages). The
 * scheduler enumerates the dataset, groups `batch_size` records per task, publishes one envelope
 * per task on "tasks:<stage>:<device>", stores the job's metadata and finally its task total.
 * Workers report each task's terminal status; when ok+dead reaches the total, the manifest
 * (`<output>/<job>/_manifest.jsonl`, one line per task) and `_SUCCESS` (all ok) are written from
 * the results stream (nq_sched_finalize — idempotent, any process may call it). */
#ifndef NQ_SCHEDULER_SCHEDULER_H
#define NQ_SCHEDULER_SCHEDULER_H

#include <jansson.h>

#include "common/config.h"
#include "common/err.h"
#include "queue/queue.h"
#include "store/store.h"

typedef struct nq_job_spec {
  char *job;            /* owned: job name (becomes the prefix of the job id) */
  char *stage;          /* owned: first stage */
  json_t *next;         /* owned: array of follow-up stage names */
  char *ds_format;      /* owned: jsonl|nextgpt-json|webdataset|dir */
  char *ds_path;        /* owned */
  char *ds_media_root;  /* owned, may be NULL */
  char *output;         /* owned: output dir or URI */
  long long batch_size;
  long long max_attempts;
  char *device;         /* owned: cpu|cuda|any */
  json_t *params;       /* owned: stage parameters (object) */
  long long limit;      /* 0 = all records */
  char *id;             /* owned, may be NULL: explicit job id (idempotent resubmission) */
  char *base_dir;       /* owned: directory of the YAML file (relative paths resolve against it) */
} nq_job_spec_t;

extern const nq_prop_t nq_job_props[];

/* Load and validate a job YAML (unknown key or bad value -> error with file:line:col). */
int nq_job_spec_load(const char *path, nq_job_spec_t *spec /* OUT, deinit with nq_job_spec_deinit */, nq_err_t *err);
int nq_job_spec_load_string(const char *yaml, size_t len, const char *name, const char *base_dir, nq_job_spec_t *spec,
                            nq_err_t *err);
void nq_job_spec_deinit(nq_job_spec_t *spec);

/* Progress callback during submission (may be NULL). */
typedef void (*nq_sched_progress_cb)(void *ud, long long published, long long bad);

/* Enumerate and publish. job_id receives the id. Bad records become dead tasks in the manifest with their error. */
int nq_sched_submit(nq_queue_t *q, nq_store_t *st, const nq_job_spec_t *spec, char *job_id /* OUT */, size_t cap,
                    nq_sched_progress_cb cb, void *ud, nq_err_t *err);

/* Write `_manifest.jsonl` (+ `_SUCCESS` when every task is ok) if the job is complete. *complete (may be NULL)
 * says whether it was. Idempotent. */
int nq_sched_finalize(nq_queue_t *q, nq_store_t *st, const char *job_id, int *complete, nq_err_t *err);

/* Convenience: is the job complete (total known and ok+dead == total)? */
int nq_job_counts_complete(const nq_job_counts_t *c);

#endif

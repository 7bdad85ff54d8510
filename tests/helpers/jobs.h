/* tests/helpers/jobs.h — submit a small noop-style job from a test: rows of {"id","prompt"} JSONL in dir/in.jsonl,
 * the job YAML given as a string (its dataset path relative to dir), a file store rooted at dir. Criterion-free. */
#ifndef NQ_TESTS_JOBS_H
#define NQ_TESTS_JOBS_H

#include <stddef.h>

#include "common/err.h"
#include "queue/queue.h"
#include "store/store.h"

/* Writes n rows (ids r00, r01, ...), opens the store (*st, caller frees with nq_store_free) and submits; the job id
 * goes to job. 0 or a negative NQ_E* with err set. */
int nq_test_submit_rows(nq_queue_t *q, const char *dir, int n, const char *yaml, nq_store_t **st /* OUT */,
                        char *job /* OUT */, size_t cap, nq_err_t *err);

#endif

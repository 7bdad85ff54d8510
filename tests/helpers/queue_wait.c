/* tests/helpers/queue_wait.c — see queue_wait.h. */
#include "tests/helpers/queue_wait.h"

#include <stdlib.h>
#include <time.h>

/* A fetch inside nq_queue_wait_fetch blocks at most this long, so the deadline is kept within a slice. */
#define NQ_QUEUE_WAIT__SLICE_MS 200

long long nq_queue_wait_mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void nq_queue_wait_sleep_ms(int ms) {
  if (ms <= 0) return;
  struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0) {
  }
}

int nq_queue_wait_fetch(nq_queue_t *q, const char *const *topics, int ntopics, const char *group, const char *consumer,
                        int want, int timeout_ms, nq_delivery_t **out, int *n_out, nq_err_t *err) {
  *out = NULL;
  *n_out = 0;
  if (want < 1) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "queue wait: want %d", want);
  nq_delivery_t *all = calloc((size_t)want, sizeof *all); /* owned until handed to *out */
  if (!all) return nq_err_set(err, NQ_ENOMEM, NQ_ERR_FATAL, "queue wait: out of memory");
  int n = 0, rc = 0;
  long long t0 = nq_queue_wait_mono_ms();
  for (;;) {
    long long left = timeout_ms - (nq_queue_wait_mono_ms() - t0);
    if (n >= want || left <= 0) break;
    nq_delivery_t *d = NULL; /* owned: this fetch's array; its members move into all[] */
    int k = -1;
    rc = nq_queue_fetch(q, topics, ntopics, group, consumer, want - n, left < NQ_QUEUE_WAIT__SLICE_MS ? (int)left
                                                                                               : NQ_QUEUE_WAIT__SLICE_MS,
                        &d, &k, err);
    if (!rc && (k < 0 || k > want - n || (k == 0) != (d == NULL))) {
      if (d && k > 0) nq_delivery_free_array(d, k);
      else free(d);
      rc = nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "queue wait: fetch of max %d returned %d (array %s)", want - n,
                      k, d ? "set" : "NULL");
    }
    if (rc) break;
    for (int i = 0; i < k; i++) all[n++] = d[i];
    free(d);
  }
  if (rc || n == 0) {
    nq_delivery_free_array(all, n);
    return rc;
  }
  *out = all;
  *n_out = n;
  return 0;
}

/* tests/helpers/queue_wait.h — "wait until N delivered" for the queue conformance tests (tests/unit/test_queue*.c).
 *
 * Backends deliver at different paces: local and redis hand out everything waiting in one fetch; Kafka hands out
 * nothing until its consumer group has assigned the consumer partitions (the mock broker's first join of a group
 * takes 3 s, a rebalance up to session.timeout.ms) and then what each fetch response holds. Scenarios that run on
 * every backend therefore wait for a count within a deadline instead of assuming one fetch returns everything.
 * Criterion-free: bench binaries link the helpers too.
 */
#ifndef NQ_TESTS_QUEUE_WAIT_H
#define NQ_TESTS_QUEUE_WAIT_H

#include "queue/queue.h"

/* CLOCK_MONOTONIC in milliseconds. */
long long nq_queue_wait_mono_ms(void);
/* Sleeps ms milliseconds (ms <= 0: returns at once). */
void nq_queue_wait_sleep_ms(int ms);

/* Fetches from topics[0..ntopics) as `consumer` of `group` until `want` (>= 1) deliveries arrived or timeout_ms
 * passed; no single fetch asks for more than is still wanted, so the result never exceeds `want`. *out receives a
 * malloc'ed array of *n_out deliveries in arrival order (NULL when none; free with nq_delivery_free_array).
 * Returns 0, or the first fetch error (or NQ_EINVAL when a fetch broke its contract: n outside [0, max_n], or a
 * non-NULL array with n == 0), with *out NULL, *n_out 0 and what had arrived freed. err may be NULL. */
int nq_queue_wait_fetch(nq_queue_t *q, const char *const *topics, int ntopics, const char *group, const char *consumer,
                        int want, int timeout_ms, nq_delivery_t **out, int *n_out, nq_err_t *err);

#endif

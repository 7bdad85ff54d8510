/* tests/unit/test_queue.c — the queue conformance suite.
 *
 * Every QTEST body runs three times: suite "local" (in-process backend), suite "redis" (a fresh redis-server per
 * test, started by tests/helpers/redis_harness.c on a free loopback port; skipped when redis-server is missing) and
 * suite "kafka" (a fresh librdkafka mock cluster per test, tests/helpers/kafka_broker.c: real TCP, real consumer
 * groups). The bodies are backend-neutral; where the contract legitimately differs they read a capability flag of
 * the backend (qbackend_t below) instead of being written twice:
 *   - per_message_lease: local and redis lease each delivery (lease expiry -> reclaim by any consumer); Kafka's lease
 *     is the consumer's group membership: a delivery moves to the partition's next owner when its consumer closes,
 *     hangs (stops polling for the lease) or dies (tests/unit/test_queue_kafka.c kills one with SIGKILL);
 *   - Kafka hands out messages only once the group has assigned partitions (the mock's first join takes 3 s) and
 *     then per fetch response, and orders them per partition: bodies wait for counts within a deadline
 *     (tests/helpers/queue_wait.c) and FIFO scenarios ask for one-partition topics (qtopic);
 *   - Kafka's stats count in flight from the committed offset and its lag is depth + in_flight; its complete_batch
 *     is the wrapper's loop (not atomic per item).
 * Kafka keeps its timings: a lease is at least 6 s (the session timeout) and 10 s stands for "longer than the test"
 * (the mock holds every rebalance for session.timeout.ms - 1 s, so longer leases slow each join).
 * Backend-specific tests follow the shared ones (redis restart, deleted entries, trimming; local registry; naming,
 * backoff, URL parsing); Kafka-specific ones (broker faults, consumer death, topic names, open errors, a worker end
 * to end) are in tests/unit/test_queue_kafka.c.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "queue/kafka_int.h"
#include "queue/envelope.h"
#include "queue/queue.h"
#include "scheduler/scheduler.h"
#include "store/store.h"
#include "tests/helpers/jobs.h"
#include "tests/helpers/kafka_broker.h"
#include "tests/helpers/queue_wait.h"
#include "tests/helpers/redis_harness.h"
#include "worker/worker.h"

/* ---------------------------------------------------------------- backends */

/* What a scenario may assume of a backend, and its timings. */
typedef struct qbackend {
  const char *name;
  /* 1: a delivery neither acked nor extended within the lease is reclaimed by the next fetch of any consumer, and
   * nobody else gets it before. 0 (kafka): it goes to the partition's next owner once its consumer leaves the
   * group (close, no poll for the lease, death); a rebalance may hand acked-but-uncommitted messages out again. */
  int per_message_lease;
  /* 1: one fetch returns min(max_n, waiting) at once. 0: a fetch may return fewer (per fetch response). */
  int full_batches;
  /* 1 (kafka): stats.in_flight spans the committed offset to the newest delivery (an ack behind an undone delivery
   * frees nothing yet) and stats.lag = depth + in_flight. 0: in_flight counts undone deliveries, lag = depth. */
  int offset_commits;
  /* 1: complete_batch applies each item atomically (a repeated or stale item appends no result; a bad item fails the
   * call before anything happens). 0 (kafka): the wrapper's loop over publish_result, job_mark, ack. */
  int atomic_complete_batch;
  /* 1 (kafka): stats.delayed counts the scheduled retries of every topic, not only the one asked about. */
  int delayed_all_topics;
  int lease_ms;      /* lease of the lease scenarios (kafka: the session timeout, at least 6 s) */
  int long_lease_ms; /* a lease that never runs out during a test */
  int settle_ms;     /* deadline for "wait until N delivered" */
  int quiet_ms;      /* block of a fetch that must come back empty */
  int retry_ms;      /* delay of the delayed-retry scenario (kafka: the retry mover's first join may take 3 s) */
} qbackend_t;

static const qbackend_t BE_LOCAL = {.name = "local", .per_message_lease = 1, .full_batches = 1,
                                    .atomic_complete_batch = 1, .lease_ms = 300, .long_lease_ms = 30000,
                                    .settle_ms = 5000, .quiet_ms = 0, .retry_ms = 600};
static const qbackend_t BE_REDIS = {.name = "redis", .per_message_lease = 1, .full_batches = 1,
                                    .atomic_complete_batch = 1, .lease_ms = 300, .long_lease_ms = 30000,
                                    .settle_ms = 5000, .quiet_ms = 0, .retry_ms = 600};
static const qbackend_t BE_KAFKA = {.name = "kafka", .offset_commits = 1, .delayed_all_topics = 1, .lease_ms = 6000,
                                    .long_lease_ms = 10000, .settle_ms = 20000, .quiet_ms = 500, .retry_ms = 3000};

/* ---------------------------------------------------------------- fixture */

static struct {
  const qbackend_t *be; /* borrowed: one of BE_* */
  int skip;
  nq_redis_harness_t h;
  nq_kafka_broker_t b;
  nq_queue_t *open[8]; /* owned: handles to close in fini (NULL once closed by the test) */
  int nopen;
} T;

#define B (T.be)

static void init_local(void) {
  memset(&T, 0, sizeof T);
  T.be = &BE_LOCAL;
}

static void init_redis(void) {
  memset(&T, 0, sizeof T);
  T.be = &BE_REDIS;
  if (!nq_redis_harness_available() || nq_redis_harness_start(&T.h, 0) != 0) T.skip = 1;
}

static void init_kafka(void) {
  if (getenv("NQ_KAFKA_DEBUG")) nq_log_setup(NQ_LOG_DEBUG, NQ_LOG_HUMAN);
  memset(&T, 0, sizeof T);
  T.be = &BE_KAFKA;
  cr_assert_eq(nq_kafka_broker_start(&T.b, 1), 0, "mock cluster");
  /* the retry topic exists from the start (as in a deployment that creates its topics): the retry mover gets its
   * assignment with its group's first join instead of after a metadata refresh that finds an auto-created topic */
  cr_assert_eq(nq_kafka_broker_topic(&T.b, "nq.retry", 1), 0);
}

static void fini_all(void) {
  for (int i = T.nopen - 1; i >= 0; i--)
    if (T.open[i]) nq_queue_close(T.open[i]);
  T.nopen = 0;
  if (B == &BE_REDIS) nq_redis_harness_cleanup(&T.h);
  if (B == &BE_KAFKA) nq_kafka_broker_stop(&T.b);
}

/* A handle on this test's queue; a second call gives another handle on the same queue (another "process"; local:
 * the same object, reference-counted). kv: librdkafka properties (NULL-terminated key,value list), Kafka only. */
static nq_queue_t *qopen_kv(int lease_ms, const char *const *kv) {
  if (T.skip) cr_skip_test("redis-server not available");
  char url[600];
  nq_queue_opts_t o = {.lease_ms = lease_ms};
  if (B == &BE_REDIS) {
    snprintf(url, sizeof url, "%s", T.h.url);
  } else if (B == &BE_KAFKA) {
    snprintf(url, sizeof url, "%s", T.b.url);
    while (kv && kv[2 * o.nkv]) o.nkv++;
    o.kv = kv;
  } else {
    snprintf(url, sizeof url, "local://test-%d", (int)getpid());
  }
  nq_queue_t *q = NULL;
  nq_err_t e = {0};
  int rc = nq_queue_open(url, &o, &q, &e);
  cr_assert_eq(rc, 0, "open %s: %s", url, e.msg);
  cr_assert_str_eq(q->vt->name, B->name);
  cr_assert(T.nopen < 8);
  T.open[T.nopen++] = q;
  return q;
}

static nq_queue_t *qopen(int lease_ms) { return qopen_kv(lease_ms, NULL); }

/* Closes one handle before the end of the test (a consumer that goes away). */
static void qclose(nq_queue_t *q) {
  for (int i = T.nopen - 1; i >= 0; i--)
    if (T.open[i] == q) {
      T.open[i] = NULL;
      break;
    }
  nq_queue_close(q);
}

/* Kafka: creates the topic with that many partitions (order is per partition, so FIFO scenarios ask for one; without
 * this the mock creates topics with 4). Other backends: nothing to do. */
static void qtopic(const char *topic, int partitions) {
  if (B != &BE_KAFKA) return;
  char kt[300];
  cr_assert_eq(nq_kafka__topic_name(topic, kt, sizeof kt, NULL), 0);
  cr_assert_eq(nq_kafka_broker_topic(&T.b, kt, partitions), 0, "create %s", kt);
}

#define QTEST(name)                                                                                   \
  static void body_##name(void);                                                                      \
  Test(local, name, .init = init_local, .fini = fini_all, .timeout = 60) { body_##name(); }           \
  Test(redis, name, .init = init_redis, .fini = fini_all, .timeout = 60) { body_##name(); }           \
  Test(kafka, name, .init = init_kafka, .fini = fini_all, .timeout = 120) { body_##name(); }          \
  static void body_##name(void)

#define mono_ms nq_queue_wait_mono_ms
#define sleep_ms nq_queue_wait_sleep_ms

static void pub(nq_queue_t *q, const char *topic, const char *body) {
  nq_err_t e = {0};
  int rc = nq_queue_publish(q, topic, body, strlen(body), &e);
  cr_assert_eq(rc, 0, "publish: %s", e.msg);
}

static void pub_batch(nq_queue_t *q, const char *topic, int n, const char *fmt) {
  char **b = calloc((size_t)n, sizeof *b);
  size_t *l = calloc((size_t)n, sizeof *l);
  cr_assert(b && l);
  for (int i = 0; i < n; i++) {
    cr_assert(asprintf(&b[i], fmt, i) > 0);
    l[i] = strlen(b[i]);
  }
  nq_err_t e = {0};
  cr_assert_eq(nq_queue_publish_batch(q, topic, (const char *const *)b, l, n, &e), 0, "publish_batch: %s", e.msg);
  for (int i = 0; i < n; i++) free(b[i]);
  free(b);
  free(l);
}

/* One fetch from one topic; returns n and the deliveries in *d. */
static int fetch1(nq_queue_t *q, const char *topic, const char *group, const char *consumer, int max_n, int block_ms,
                  nq_delivery_t **d) {
  nq_err_t e = {0};
  int n = -1;
  const char *topics[] = {topic};
  int rc = nq_queue_fetch(q, topics, 1, group, consumer, max_n, block_ms, d, &n, &e);
  cr_assert_eq(rc, 0, "fetch: %s", e.msg);
  cr_assert(n >= 0 && n <= max_n);
  cr_assert((n == 0) == (*d == NULL));
  return n;
}

/* Fetches until `want` deliveries arrived or timeout_ms passed; returns how many (at most want), all in *d. */
static int fetch_within(nq_queue_t *q, const char *topic, const char *group, const char *consumer, int want,
                        int timeout_ms, nq_delivery_t **d) {
  nq_err_t e = {0};
  int n = 0;
  const char *topics[] = {topic};
  cr_assert_eq(nq_queue_wait_fetch(q, topics, 1, group, consumer, want, timeout_ms, d, &n, &e), 0, "fetch: %s",
               e.msg);
  return n;
}

/* Same within the backend's settle time. */
static int fetch_n(nq_queue_t *q, const char *topic, const char *group, const char *consumer, int want,
                   nq_delivery_t **d) {
  return fetch_within(q, topic, group, consumer, want, B->settle_ms, d);
}

/* A fetch that must find nothing (blocking the backend's quiet time). */
static void expect_none(nq_queue_t *q, const char *topic, const char *group, const char *consumer, const char *why) {
  nq_delivery_t *d;
  int n = fetch1(q, topic, group, consumer, 10, B->quiet_ms, &d);
  cr_assert_eq(n, 0, "%s: got %d, the first '%s'", why, n, n ? d[0].body : "");
}

static void ack(nq_queue_t *q, const char *group, const nq_delivery_t *d) {
  nq_err_t e = {0};
  cr_assert_eq(nq_queue_ack(q, group, d, &e), 0, "ack: %s", e.msg);
}

static nq_queue_stats_t stats(nq_queue_t *q, const char *topic, const char *group) {
  nq_queue_stats_t st;
  nq_err_t e = {0};
  cr_assert_eq(nq_queue_stats(q, topic, group, &st, &e), 0, "stats: %s", e.msg);
  return st;
}

/* Makes `consumer` of `group` a settled member before a timed step: publishes a marker, waits for it and acks it
 * (Kafka: joins the group, gets its assignment and starts the retry mover; immediate elsewhere). */
static void warm(nq_queue_t *q, const char *topic, const char *group, const char *consumer) {
  pub(q, topic, "warm-up");
  nq_delivery_t *d;
  cr_assert_eq(fetch_n(q, topic, group, consumer, 1, &d), 1, "no delivery for %s/%s", group, consumer);
  cr_assert_str_eq(d[0].body, "warm-up");
  ack(q, group, &d[0]);
  nq_delivery_free_array(d, 1);
}

/* ---------------------------------------------------------------- conformance */

/* At-least-once with explicit ack: everything published is delivered once, in order, until acked. */
QTEST(publish_fetch_ack) {
  qtopic("tasks:noop:cpu", 1);
  nq_queue_t *q = qopen(B->long_lease_ms);
  pub(q, "tasks:noop:cpu", "m1");
  pub(q, "tasks:noop:cpu", "m2");
  pub(q, "tasks:noop:cpu", "{\"x\":\"three\"}");
  nq_delivery_t *d;
  int n = fetch_n(q, "tasks:noop:cpu", "stage:noop", "c1", 3, &d);
  cr_assert_eq(n, 3);
  cr_assert_str_eq(d[0].body, "m1");
  cr_assert_str_eq(d[1].body, "m2");
  cr_assert_str_eq(d[2].body, "{\"x\":\"three\"}");
  cr_assert_eq(d[2].len, strlen("{\"x\":\"three\"}"));
  for (int i = 0; i < 3; i++) {
    cr_assert_eq(d[i].delivery_count, 1);
    cr_assert_str_eq(d[i].topic, "tasks:noop:cpu");
    cr_assert(d[i].id && d[i].id[0]);
    for (int j = 0; j < i; j++) cr_assert_str_neq(d[i].id, d[j].id);
  }
  nq_queue_stats_t st = stats(q, "tasks:noop:cpu", "stage:noop");
  cr_assert_eq(st.in_flight, 3);
  cr_assert_eq(st.depth, 0);
  cr_assert_eq(st.lag, B->offset_commits ? 3 : 0);
  /* acks out of order; with offset commits the commit point stays at the oldest undone delivery */
  ack(q, "stage:noop", &d[1]);
  st = stats(q, "tasks:noop:cpu", "stage:noop");
  cr_assert_eq(st.in_flight, B->offset_commits ? 3 : 2);
  ack(q, "stage:noop", &d[0]);
  ack(q, "stage:noop", &d[2]);
  ack(q, "stage:noop", &d[0]); /* a second ack is a no-op */
  nq_delivery_free_array(d, n);
  expect_none(q, "tasks:noop:cpu", "stage:noop", "c1", "all acked");
  st = stats(q, "tasks:noop:cpu", "stage:noop");
  cr_assert_eq(st.in_flight, 0);
  cr_assert_eq(st.depth, 0);
  cr_assert_eq(st.lag, 0);
}

QTEST(binary_safe_body) {
  nq_queue_t *q = qopen(B->long_lease_ms);
  const char body[] = "line1\nline2\ttab";
  cr_assert_eq(nq_queue_publish(q, "t", body, sizeof body - 1, NULL), 0);
  nq_delivery_t *d;
  cr_assert_eq(fetch_n(q, "t", "g", "c", 1, &d), 1);
  cr_assert_eq(d[0].len, sizeof body - 1);
  cr_assert_eq(memcmp(d[0].body, body, sizeof body - 1), 0);
  /* nack keeps a body with newlines intact through the delayed set (kafka: nq.retry and the mover) */
  cr_assert_eq(nq_queue_nack(q, "g", &d[0], 50, NULL, NULL), 0);
  nq_delivery_free_array(d, 1);
  cr_assert_eq(fetch_n(q, "t", "g", "c", 1, &d), 1);
  cr_assert_str_eq(d[0].body, body);
  ack(q, "g", &d[0]);
  nq_delivery_free_array(d, 1);
}

/* A consumer goes away with deliveries neither acked nor nacked: nothing is lost. A lease backend reclaims them for
 * the next fetch once the lease runs out (nobody gets them before); Kafka hands them to the partition's next owner
 * as soon as the closing consumer has left the group (drain: close commits what is done). Either way they come back
 * with the same ids and delivery_count 2, and what was acked never comes back. */
QTEST(unacked_redelivered_after_consumer_goes) {
  qtopic("t", 1);
  nq_queue_t *q1 = qopen(B->lease_ms);
  nq_queue_t *q2 = qopen(B->lease_ms);
  for (int i = 0; i < 4; i++) pub(q1, "t", i < 2 ? "done" : "released");
  nq_delivery_t *d, *r;
  cr_assert_eq(fetch_n(q1, "t", "g", "c1", 4, &d), 4);
  long long t0 = mono_ms();
  for (int i = 0; i < 4; i++) cr_assert_eq(d[i].delivery_count, 1);
  ack(q1, "g", &d[0]);
  ack(q1, "g", &d[1]);
  if (B->per_message_lease) /* leased to c1: nobody else gets them */
    cr_assert_eq(fetch1(q2, "t", "g", "c2", 5, 0, &r), 0);
  qclose(q1);
  cr_assert_eq(fetch_within(q2, "t", "g", "c2", 2, B->lease_ms + B->settle_ms, &r), 2);
  long long dt = mono_ms() - t0;
  if (B->per_message_lease) cr_assert(dt >= B->lease_ms - 50, "reclaimed %lld ms into a %d ms lease", dt, B->lease_ms);
  for (int i = 0; i < 2; i++) {
    cr_assert_str_eq(r[i].body, "released");
    cr_assert_str_eq(r[i].id, d[2 + i].id);
    cr_assert_eq(r[i].delivery_count, 2);
    ack(q2, "g", &r[i]);
  }
  nq_delivery_free_array(r, 2);
  nq_delivery_free_array(d, 4);
  if (B->per_message_lease) sleep_ms(B->lease_ms + 150);
  expect_none(q2, "t", "g", "c2", "acked: never again");
}

/* Heartbeats (extend_lease) keep a long task's delivery; once they stop, the lease runs out and another consumer
 * gets it (Kafka: the silent consumer stops polling, leaves the group after the lease and its partition moves). */
QTEST(extend_lease_then_silence) {
  qtopic("t", 1);
  nq_queue_t *q = qopen(B->lease_ms);
  nq_queue_t *q2 = qopen(B->lease_ms);
  pub(q, "t", "long-task");
  nq_delivery_t *d, *d2;
  cr_assert_eq(fetch_n(q, "t", "g", "c1", 1, &d), 1);
  cr_assert_eq(d[0].delivery_count, 1);
  nq_err_t e = {0};
  /* heartbeats for well past the lease while c2 polls (kafka: c2 joins and c1 serves the rebalance) */
  int beat_ms = B->lease_ms / 3 < 200 ? B->lease_ms / 3 : 200;
  long long t0 = mono_ms(), last = t0;
  int hold_ms = B->lease_ms + (B->lease_ms / 6 > 500 ? B->lease_ms / 6 : 500);
  for (int i = 0; mono_ms() - t0 < hold_ms; i++) {
    sleep_ms(beat_ms);
    cr_assert_eq(nq_queue_extend_lease(q, "g", "c1", &d[0], &e), 0, "%s", e.msg);
    last = mono_ms();
    cr_assert_eq(fetch1(q2, "t", "g", "c2", 1, B->quiet_ms, &d2), 0, "redelivered despite heartbeats (beat %d)", i);
  }
  /* heartbeats stop: after the lease c2 gets it */
  cr_assert_eq(fetch_within(q2, "t", "g", "c2", 1, B->lease_ms + B->settle_ms, &d2), 1);
  long long dt = mono_ms() - last;
  cr_assert(dt >= B->lease_ms - 50, "reclaimed %lld ms after the last heartbeat (lease %d)", dt, B->lease_ms);
  cr_assert_str_eq(d2[0].body, "long-task");
  cr_assert_str_eq(d2[0].id, d[0].id);
  cr_assert_eq(d2[0].delivery_count, 2);
  ack(q2, "g", &d2[0]);
  nq_delivery_free_array(d2, 1);
  /* c1 comes back (kafka: learns it lost the partition): nothing for it, its old delivery is no longer in flight */
  cr_assert_eq(fetch1(q, "t", "g", "c1", 1, 2 * B->quiet_ms, &d2), 0);
  cr_assert_eq(nq_queue_extend_lease(q, "g", "c1", &d[0], &e), NQ_ENOENT);
  cr_assert_eq(nq_queue_ack(q, "g", &d[0], &e), 0, "a stale ack is a no-op: %s", e.msg);
  nq_delivery_free_array(d, 1);
  expect_none(q2, "t", "g", "c2", "acked: never again");
}

/* Retry with backoff: a nacked delivery comes back after its delay, with the new body. */
QTEST(nack_delay_new_body) {
  nq_queue_t *q = qopen(B->long_lease_ms);
  warm(q, "t", "g", "c");
  pub(q, "t", "attempt-1");
  nq_delivery_t *d;
  cr_assert_eq(fetch_n(q, "t", "g", "c", 1, &d), 1);
  nq_err_t e = {0};
  long long t0 = mono_ms(); /* the delay runs from the call (kafka: the nack's produce may take a while) */
  cr_assert_eq(nq_queue_nack(q, "g", &d[0], B->retry_ms, "attempt-2", &e), 0, "%s", e.msg);
  nq_queue_stats_t st = stats(q, "t", "g");
  cr_assert_eq(st.delayed, 1);
  cr_assert_eq(st.in_flight, 0);
  /* a second nack of the same delivery does not double the retry */
  cr_assert_eq(nq_queue_nack(q, "g", &d[0], B->retry_ms, "attempt-2", &e), 0, "%s", e.msg);
  cr_assert_eq(stats(q, "t", "g").delayed, 1);
  nq_delivery_free_array(d, 1);
  cr_assert_eq(fetch1(q, "t", "g", "c", 1, B->retry_ms / 4, &d), 0); /* not visible before the delay */
  /* a blocking fetch wakes when the retry is due, not at the end of its block */
  cr_assert_eq(fetch1(q, "t", "g", "c", 1, B->retry_ms + 6000, &d), 1);
  long long dt = mono_ms() - t0;
  cr_assert(dt >= B->retry_ms - 200 && dt < B->retry_ms + 3000, "woke after %lld ms (delay %d) with '%s' (count %u)",
            dt, B->retry_ms, d[0].body, d[0].delivery_count);
  cr_assert_str_eq(d[0].body, "attempt-2");
  cr_assert_eq(stats(q, "t", "g").delayed, 0);
  /* nack with no delay and the body kept */
  cr_assert_eq(nq_queue_nack(q, "g", &d[0], 0, NULL, &e), 0, "%s", e.msg);
  nq_delivery_free_array(d, 1);
  cr_assert_eq(fetch_n(q, "t", "g", "c", 1, &d), 1);
  cr_assert_str_eq(d[0].body, "attempt-2");
  ack(q, "g", &d[0]);
  nq_delivery_free_array(d, 1);
}

/* DLQ with reason: list, requeue (all / by id), purge; another handle (process) sees the same DLQ. */
QTEST(dead_letter_requeue_purge) {
  qtopic("tasks:a:cpu", 1);
  nq_queue_t *q = qopen(B->long_lease_ms);
  pub(q, "tasks:a:cpu", "bad-1");
  pub(q, "tasks:a:cpu", "bad-2");
  pub(q, "tasks:a:cpu", "bad-3");
  nq_delivery_t *d;
  cr_assert_eq(fetch_n(q, "tasks:a:cpu", "g", "c", 3, &d), 3);
  cr_assert_str_eq(d[0].body, "bad-1");
  nq_err_t e = {0};
  cr_assert_eq(nq_queue_dead_letter(q, "g", &d[0], "envelope: bad JSON at byte 3", &e), 0, "%s", e.msg);
  nq_queue_stats_t st = stats(q, "tasks:a:cpu", "g");
  cr_assert_eq(st.dead, 1);
  cr_assert_eq(st.in_flight, 2);
  nq_dlq_entry_t *x;
  int n;
  cr_assert_eq(nq_queue_dlq_list(q, 10, &x, &n, &e), 0, "%s", e.msg);
  cr_assert_eq(n, 1);
  cr_assert_str_eq(x[0].topic, "tasks:a:cpu");
  cr_assert_str_eq(x[0].reason, "envelope: bad JSON at byte 3");
  cr_assert_str_eq(x[0].body, "bad-1");
  nq_dlq_entries_free(x, n);
  nq_queue_t *q2 = qopen(B->long_lease_ms);
  cr_assert_eq(nq_queue_dlq_list(q2, 10, &x, &n, &e), 0, "%s", e.msg);
  cr_assert_eq(n, 1);
  nq_dlq_entries_free(x, n);
  /* requeue all: back on its topic, out of the DLQ */
  cr_assert_eq(nq_queue_dlq_requeue(q, NULL, &n, &e), 0, "%s", e.msg);
  cr_assert_eq(n, 1);
  cr_assert_eq(nq_queue_dlq_list(q2, 10, &x, &n, &e), 0);
  cr_assert_eq(n, 0);
  nq_delivery_t *r;
  cr_assert_eq(fetch_n(q, "tasks:a:cpu", "g", "c", 1, &r), 1);
  cr_assert_str_eq(r[0].body, "bad-1");
  cr_assert_eq(nq_queue_dead_letter(q, "g", &r[0], "again", &e), 0);
  cr_assert_eq(nq_queue_dead_letter(q, "g", &d[1], "r2", &e), 0);
  cr_assert_eq(nq_queue_dead_letter(q, "g", &d[2], "r3", &e), 0);
  nq_delivery_free_array(r, 1);
  /* requeue one by id */
  cr_assert_eq(nq_queue_dlq_list(q, 10, &x, &n, &e), 0);
  cr_assert_eq(n, 3);
  nq_dlq_entries_free(x, n);
  cr_assert_eq(nq_queue_dlq_list(q, 2, &x, &n, &e), 0); /* max_n honoured */
  cr_assert_eq(n, 2);
  char id[128], body1[32];
  snprintf(id, sizeof id, "%s", x[1].id);
  snprintf(body1, sizeof body1, "%s", x[1].body);
  nq_dlq_entries_free(x, n);
  cr_assert_eq(nq_queue_dlq_requeue(q2, id, &n, &e), 0, "%s", e.msg);
  cr_assert_eq(n, 1);
  cr_assert_eq(fetch_n(q, "tasks:a:cpu", "g", "c", 1, &r), 1);
  cr_assert_str_eq(r[0].body, body1);
  ack(q, "g", &r[0]);
  nq_delivery_free_array(r, 1);
  cr_assert_neq(nq_queue_dlq_requeue(q, id, &n, &e), 0); /* gone */
  cr_assert_eq(nq_queue_dlq_purge(q, &n, &e), 0, "%s", e.msg);
  cr_assert_eq(n, 2);
  cr_assert_eq(nq_queue_dlq_list(q2, 10, &x, &n, &e), 0);
  cr_assert_eq(n, 0);
  st = stats(q, "tasks:a:cpu", "g");
  cr_assert_eq(st.dead, 0);
  cr_assert_eq(st.in_flight, 0);
  cr_assert_eq(st.depth, 0);
  nq_delivery_free_array(d, 3);
}

QTEST(batch_fetch_count) {
  qtopic("t", 1);
  nq_queue_t *q = qopen(B->long_lease_ms);
  pub_batch(q, "t", 250, "m%03d");
  cr_assert_eq(stats(q, "t", "g").depth, 250);
  char b[32];
  int seen = 0;
  const int sizes[] = {100, 100, 50};
  long long t0 = mono_ms();
  for (int round = 0; seen < 250 && mono_ms() - t0 < B->settle_ms; round++) {
    nq_delivery_t *d;
    int n = fetch1(q, "t", "g", "c", 100, B->full_batches ? 0 : 500, &d);
    if (B->full_batches) cr_assert_eq(n, sizes[round], "round %d got %d", round, n);
    for (int i = 0; i < n; i++) {
      snprintf(b, sizeof b, "m%03d", seen++);
      cr_assert_str_eq(d[i].body, b); /* FIFO (kafka: within a partition) */
      ack(q, "g", &d[i]);
    }
    nq_delivery_free_array(d, n);
  }
  cr_assert_eq(seen, 250);
  expect_none(q, "t", "g", "c", "all 250 acked");
  nq_queue_stats_t st = stats(q, "t", "g");
  cr_assert_eq(st.depth, 0);
  cr_assert_eq(st.in_flight, 0);
}

typedef struct {
  nq_queue_t *q; /* borrowed */
  int delay_ms;
  const char *topic; /* borrowed, may be NULL */
  const char *job;   /* borrowed, may be NULL */
} pub_arg_t;

static void *pub_later(void *p) {
  pub_arg_t *a = p;
  sleep_ms(a->delay_ms);
  if (a->topic) nq_queue_publish(a->q, a->topic, "wake", 4, NULL);
  if (a->job) nq_queue_publish_result(a->q, a->job, "{\"late\":1}", NULL);
  return NULL;
}

QTEST(blocking_fetch_wakes_on_publish) {
  nq_queue_t *q = qopen(B->long_lease_ms);
  warm(q, "t", "g", "c");
  nq_delivery_t *d;
  long long t0 = mono_ms();
  cr_assert_eq(fetch1(q, "t", "g", "c", 1, 300, &d), 0); /* nothing: waits about block_ms */
  long long dt = mono_ms() - t0;
  cr_assert(dt >= 250 && dt < 2000, "empty block took %lld ms", dt);
  pthread_t th;
  pub_arg_t a = {.q = q, .delay_ms = 300, .topic = "t"};
  cr_assert_eq(pthread_create(&th, NULL, pub_later, &a), 0);
  t0 = mono_ms();
  cr_assert_eq(fetch1(q, "t", "g", "c", 5, 5000, &d), 1);
  dt = mono_ms() - t0;
  pthread_join(th, NULL);
  cr_assert(dt >= 200 && dt < 3000, "woke after %lld ms", dt);
  cr_assert_str_eq(d[0].body, "wake");
  ack(q, "g", &d[0]);
  nq_delivery_free_array(d, 1);
}

QTEST(multi_topic_and_groups) {
  nq_queue_t *q = qopen(B->long_lease_ms);
  nq_delivery_t *d;
  /* g2 exists before anything is published (a group created after another group consumed a message may or
   * may not see it, depending on trimming/compaction) */
  cr_assert_eq(fetch1(q, "tasks:x:cpu", "g2", "c", 10, 0, &d), 0);
  pub(q, "tasks:x:cpu", "x1");
  pub(q, "tasks:x:any", "y1"); /* published before any group of this topic exists: still seen */
  const char *topics[] = {"tasks:x:cpu", "tasks:x:any"};
  int n = 0;
  nq_err_t e = {0};
  cr_assert_eq(nq_queue_wait_fetch(q, topics, 2, "g1", "c", 2, B->settle_ms, &d, &n, &e), 0, "%s", e.msg);
  cr_assert_eq(n, 2);
  int sx = 0, sy = 0;
  for (int i = 0; i < n; i++) {
    if (strcmp(d[i].body, "x1") == 0) {
      sx++;
      cr_assert_str_eq(d[i].topic, "tasks:x:cpu");
    }
    if (strcmp(d[i].body, "y1") == 0) {
      sy++;
      cr_assert_str_eq(d[i].topic, "tasks:x:any");
    }
    ack(q, "g1", &d[i]);
  }
  cr_assert(sx == 1 && sy == 1);
  nq_delivery_free_array(d, n);
  /* another group on the same topic gets its own copy */
  cr_assert_eq(fetch_n(q, "tasks:x:cpu", "g2", "c", 1, &d), 1);
  cr_assert_str_eq(d[0].body, "x1");
  ack(q, "g2", &d[0]);
  nq_delivery_free_array(d, 1);
}

QTEST(results_cursor) {
  nq_queue_t *q = qopen(B->long_lease_ms);
  char b[64];
  for (int i = 0; i < 5; i++) {
    snprintf(b, sizeof b, "{\"i\":%d}", i);
    cr_assert_eq(nq_queue_publish_result(q, "J1", b, NULL), 0);
  }
  cr_assert_eq(nq_queue_publish_result(q, "J2", "{\"other\":1}", NULL), 0);
  char cur[128] = "";
  int seen = 0, sizes[] = {2, 2, 1, 0};
  for (int round = 0; round < 4; round++) {
    nq_result_entry_t *r;
    int n = -1;
    nq_err_t e = {0};
    cr_assert_eq(nq_queue_read_results(q, "J1", round ? cur : NULL, 2, 0, &r, &n, &e), 0, "%s", e.msg);
    cr_assert_eq(n, sizes[round]);
    for (int i = 0; i < n; i++) {
      snprintf(b, sizeof b, "{\"i\":%d}", seen++);
      cr_assert_str_eq(r[i].body, b);
    }
    if (n) snprintf(cur, sizeof cur, "%s", r[n - 1].id);
    nq_result_entries_free(r, n);
  }
  /* blocking read returns when a result arrives */
  pthread_t th;
  pub_arg_t a = {.q = q, .delay_ms = 300, .job = "J1"};
  cr_assert_eq(pthread_create(&th, NULL, pub_later, &a), 0);
  nq_result_entry_t *r;
  int n = -1;
  long long t0 = mono_ms();
  cr_assert_eq(nq_queue_read_results(q, "J1", cur, 10, 5000, &r, &n, NULL), 0);
  long long dt = mono_ms() - t0;
  pthread_join(th, NULL);
  cr_assert_eq(n, 1);
  cr_assert_str_eq(r[0].body, "{\"late\":1}");
  cr_assert(dt >= 200 && dt < 3000, "woke after %lld ms", dt);
  nq_result_entries_free(r, n);
  cr_assert_eq(nq_queue_read_results(q, "nojob", NULL, 10, 0, &r, &n, NULL), 0);
  cr_assert_eq(n, 0);
  /* a malformed cursor is an error (local, kafka: NQ_EINVAL; redis: whatever the server says of the stream id) */
  nq_err_t e = {0};
  int rc = nq_queue_read_results(q, "J1", "12abc", 10, 0, &r, &n, &e);
  cr_assert(rc == NQ_EINVAL || (B == &BE_REDIS && rc != 0), "cursor 12abc: rc %d %s", rc, e.msg);
}

/* Job state: each task counted once with its latest status, whichever handle (process) marks it. */
QTEST(job_state_counts_each_task_once) {
  nq_queue_t *q = qopen(B->long_lease_ms);
  nq_queue_t *q2 = qopen(B->long_lease_ms); /* a second worker process */
  nq_err_t e = {0};
  char *meta = (char *)1;
  cr_assert_eq(nq_queue_job_get(q, "J", &meta, &e), 0, "%s", e.msg);
  cr_assert_null(meta);
  nq_job_counts_t c;
  cr_assert_eq(nq_queue_job_counts(q, "J", &c, &e), 0);
  cr_assert(c.total == -1 && c.ok == 0 && c.failed == 0 && c.dead == 0);
  cr_assert_eq(nq_queue_job_put(q, "J", "{\"name\":\"cap\",\"output\":\"file:///o\"}", &e), 0, "%s", e.msg);
  cr_assert_eq(nq_queue_job_get(q2, "J", &meta, &e), 0);
  cr_assert_str_eq(meta, "{\"name\":\"cap\",\"output\":\"file:///o\"}");
  free(meta);
  cr_assert_eq(nq_queue_job_set_total(q, "J", 3, &e), 0);
  int ch = -1;
  cr_assert_eq(nq_queue_job_mark(q, "J", "J/000001", "ok", &c, &ch, &e), 0, "%s", e.msg);
  cr_assert(ch == 1 && c.total == 3 && c.ok == 1 && c.failed == 0 && c.dead == 0);
  cr_assert_eq(nq_queue_job_mark(q2, "J", "J/000001", "ok", &c, &ch, &e), 0); /* redelivered elsewhere: once */
  cr_assert(ch == 0 && c.ok == 1, "ch %d ok %lld", ch, c.ok);
  cr_assert_eq(nq_queue_job_mark(q, "J", "J/000002", "dead", &c, &ch, &e), 0);
  cr_assert(ch == 1 && c.ok == 1 && c.dead == 1);
  cr_assert_eq(nq_queue_job_mark(q2, "J", "J/000002", "ok", &c, &ch, &e), 0); /* requeued from DLQ, then ok */
  cr_assert(ch == 1 && c.ok == 2 && c.dead == 0, "ok %lld dead %lld", c.ok, c.dead);
  cr_assert_eq(nq_queue_job_mark(q, "J", "J/000003", "failed", NULL, NULL, &e), 0);
  cr_assert_eq(nq_queue_job_counts(q2, "J", &c, &e), 0);
  cr_assert(c.total == 3 && c.ok == 2 && c.failed == 1 && c.dead == 0);
  cr_assert_eq(nq_queue_job_mark(q, "J", "J/000003", "weird", &c, &ch, &e), NQ_EINVAL);
  cr_assert_eq(nq_queue_job_counts(q, "J", &c, &e), 0);
  cr_assert_eq(c.failed, 1);
  /* a fresh handle (kafka: folds the log from the start) agrees */
  nq_queue_t *q3 = qopen(B->long_lease_ms);
  cr_assert_eq(nq_queue_job_counts(q3, "J", &c, &e), 0);
  cr_assert(c.total == 3 && c.ok == 2 && c.failed == 1 && c.dead == 0);
  /* tasks_ok: exactly the tasks whose latest status is ok, from any handle; unknown tasks and jobs are not */
  const char *tasks[] = {"J/000001", "J/000002", "J/000003", "J/000004"};
  unsigned char ok[4] = {9, 9, 9, 9};
  cr_assert_eq(nq_queue_tasks_ok(q3, "J", tasks, 4, ok, &e), 0, "%s", e.msg);
  cr_assert(ok[0] == 1 && ok[1] == 1 && ok[2] == 0 && ok[3] == 0, "%d %d %d %d", ok[0], ok[1], ok[2], ok[3]);
  cr_assert_eq(nq_queue_job_mark(q2, "J", "J/000001", "dead", NULL, NULL, &e), 0); /* a later status wins */
  cr_assert_eq(nq_queue_tasks_ok(q, "J", tasks, 4, ok, &e), 0, "%s", e.msg);
  cr_assert(ok[0] == 0 && ok[1] == 1, "%d %d", ok[0], ok[1]);
  memset(ok, 9, sizeof ok);
  cr_assert_eq(nq_queue_tasks_ok(q, "NOJOB", tasks, 4, ok, &e), 0, "%s", e.msg);
  cr_assert(!ok[0] && !ok[1] && !ok[2] && !ok[3]);
}

QTEST(stats_depth_inflight_delayed_dead) {
  qtopic("t", 2);
  nq_queue_t *q = qopen(B->long_lease_ms);
  for (int i = 0; i < 5; i++) pub(q, "t", "m");
  nq_queue_stats_t st = stats(q, "t", "g"); /* group not created yet: everything waits */
  cr_assert_eq(st.depth, 5);
  cr_assert_eq(st.in_flight, 0);
  cr_assert_eq(st.lag, 5);
  nq_delivery_t *d;
  cr_assert_eq(fetch_n(q, "t", "g", "c", 2, &d), 2);
  st = stats(q, "t", "g");
  cr_assert_eq(st.depth, 3);
  cr_assert_eq(st.in_flight, 2);
  cr_assert_eq(st.lag, B->offset_commits ? 5 : 3);
  cr_assert_eq(nq_queue_nack(q, "g", &d[0], 60000, NULL, NULL), 0);
  cr_assert_eq(nq_queue_dead_letter(q, "g", &d[1], "x", NULL), 0);
  st = stats(q, "t", "g");
  cr_assert_eq(st.in_flight, 0);
  cr_assert_eq(st.delayed, 1);
  cr_assert_eq(st.dead, 1);
  cr_assert_eq(st.depth, 3);
  cr_assert_eq(st.lag, 3);
  nq_delivery_free_array(d, 2);
  st = stats(q, "nothing-here", "g");
  cr_assert(st.depth == 0 && st.in_flight == 0);
  cr_assert_eq(st.delayed, B->delayed_all_topics ? 1 : 0);
}

typedef struct {
  nq_queue_t *q; /* borrowed */
  int id;
  int work_ms;         /* "work" per message */
  int *seen;           /* borrowed: deliveries per message index, guarded by mu */
  pthread_mutex_t *mu; /* borrowed */
  int *total, *uniq, *mine; /* borrowed, guarded by mu */
} worker_arg_t;

static void ack_all(nq_queue_t *q, nq_delivery_t *d, int n) {
  for (int i = 0; i < n; i++) nq_queue_ack(q, "g", &d[i], NULL);
  nq_delivery_free_array(d, n);
}

/* A consumer that works work_ms per message and acks a batch only after it has fetched the next one: whenever a
 * rebalance is served (kafka, inside a fetch) it holds deliveries in flight, so revocations are deferred until their
 * tasks are done -- the path where a partition must hand out nothing more while it waits. Every consumer keeps
 * polling until all messages are in: a Kafka member that stopped early would keep its partitions (a member that
 * does not poll) until max.poll.interval.ms. */
static void *worker(void *p) {
  worker_arg_t *a = p;
  char cons[32];
  snprintf(cons, sizeof cons, "w%d", a->id);
  const char *topics[] = {"t"};
  long long t0 = mono_ms();
  nq_delivery_t *prev = NULL;
  int nprev = 0;
  for (;;) {
    pthread_mutex_lock(a->mu);
    int all = *a->uniq >= 1000;
    pthread_mutex_unlock(a->mu);
    if (all || mono_ms() - t0 > 60000) break;
    nq_delivery_t *d = NULL;
    int n = 0;
    if (nq_queue_fetch(a->q, topics, 1, "g", cons, 7, 100, &d, &n, NULL) != 0) break;
    for (int i = 0; i < n; i++) {
      int k = atoi(d[i].body);
      pthread_mutex_lock(a->mu);
      if (k >= 0 && k < 1000 && a->seen[k]++ == 0) (*a->uniq)++;
      (*a->total)++;
      (*a->mine)++;
      pthread_mutex_unlock(a->mu);
    }
    if (n) sleep_ms(a->work_ms * n);
    ack_all(a->q, prev, nprev);
    prev = d;
    nprev = n;
  }
  ack_all(a->q, prev, nprev);
  return NULL;
}

/* At-least-once under concurrency: four consumers of one group (four threads on one handle) join one after another
 * while messages flow. Nothing is lost. Lease backends deliver each message exactly once. On Kafka each join is a
 * cooperative rebalance; a clean revocation commits what is done and waits for the deliveries in flight, so it
 * duplicates nothing, but a member can lose its assignment without a commit and its acked-but-uncommitted messages
 * run again -- when it misses its session or poll deadline (a loaded machine), or when an offset commit was queued
 * behind its JoinGroup on the coordinator connection (the mock holds a JoinGroup ~session.timeout.ms - 1 s; the
 * commit then meets the new generation, ILLEGAL_GENERATION, and librdkafka 2.0 declares the whole assignment lost).
 * That can rerun a few hundred messages, so duplicates are bounded per message, not in total. */
QTEST(threads_no_loss) {
  qtopic("t", 4);
  /* kafka: the mock holds every rebalance for session.timeout.ms - 1 s (it cannot tell that all members have
   * rejoined), and a cooperative hand-over takes two: a 4 s session (above the mock's 3 s initial join delay) keeps
   * that short; frequent heartbeats tell members of a rebalance sooner. */
  const char *kv[] = {"session.timeout.ms", "4000", "heartbeat.interval.ms", "300", NULL};
  nq_queue_t *q = qopen_kv(B->per_message_lease ? B->long_lease_ms : B->lease_ms, kv);
  int work_ms = B->per_message_lease ? 1 : 10;
  pub_batch(q, "t", 1000, "%d");
  static int seen[1000];
  memset(seen, 0, sizeof seen);
  int total = 0, uniq = 0, mine[4] = {0};
  pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
  pthread_t th[4];
  worker_arg_t a[4];
  /* the next consumer joins once the group has made progress: every join lands mid-stream, however slow the machine */
  static const int join_at[4] = {0, 20, 100, 250};
  long long t0 = mono_ms();
  for (int i = 0; i < 4; i++) {
    for (;;) {
      pthread_mutex_lock(&mu);
      int u = uniq;
      pthread_mutex_unlock(&mu);
      if (u >= join_at[i] || mono_ms() - t0 > 60000) break;
      sleep_ms(10);
    }
    a[i] = (worker_arg_t){.q = q, .id = i, .work_ms = work_ms, .seen = seen, .mu = &mu, .total = &total,
                          .uniq = &uniq, .mine = &mine[i]};
    cr_assert_eq(pthread_create(&th[i], NULL, worker, &a[i]), 0);
  }
  for (int i = 0; i < 4; i++) pthread_join(th[i], NULL);
  /* Drain: after a lost assignment (kafka), acked-but-uncommitted messages come again (depth > 0 until they do);
   * fetch them through every member until a quiet spell brings nothing. */
  const char *topics[] = {"t"};
  nq_err_t e = {0};
  long long quiet = mono_ms();
  do {
    for (int c = 0; c < 4; c++) {
      char cons[8];
      snprintf(cons, sizeof cons, "w%d", c);
      nq_delivery_t *d = NULL;
      int n = 0;
      cr_assert_eq(nq_queue_fetch(q, topics, 1, "g", cons, 50, B->quiet_ms / 10, &d, &n, &e), 0, "%s", e.msg);
      for (int i = 0; i < n; i++) {
        int k = atoi(d[i].body);
        if (k >= 0 && k < 1000) seen[k]++;
        total++;
      }
      if (n) quiet = mono_ms();
      ack_all(q, d, n);
    }
  } while (mono_ms() - quiet < 2 * B->quiet_ms && mono_ms() - t0 < 90000);
  int dup = 0;
  for (int i = 0; i < 1000; i++) {
    cr_assert(seen[i] >= 1, "message %d lost (%d of 1000 seen)", i, uniq);
    if (B->per_message_lease) cr_assert_eq(seen[i], 1, "message %d delivered %d times", i, seen[i]);
    else cr_assert(seen[i] <= 3, "message %d delivered %d times", i, seen[i]);
    dup += seen[i] - 1;
  }
  cr_assert_eq(total, 1000 + dup);
  /* the scenario exercised what it is about: the work was shared, or (kafka) the first consumer's assignment moved
   * and came back with redeliveries (mine[0] alone may then pass 1000) */
  cr_assert(mine[0] > 0 && (mine[1] + mine[2] + mine[3] > 0 || dup > 0),
            "consumers got %d %d %d %d: no other consumer got work and nothing was redelivered", mine[0], mine[1],
            mine[2], mine[3]);
  if (!B->per_message_lease && mine[1] + mine[2] + mine[3] == 0)
    fprintf(stderr, "%s threads_no_loss: the later consumers got no partition in %lld ms\n", B->name, mono_ms() - t0);
  if (dup) fprintf(stderr, "%s threads_no_loss: per consumer %d %d %d %d, %d duplicates, %lld ms\n", B->name, mine[0],
                   mine[1], mine[2], mine[3], dup, mono_ms() - t0);
  nq_queue_stats_t st = stats(q, "t", "g");
  cr_assert_eq(st.in_flight, 0);
  cr_assert_eq(st.depth, 0);
}

/* ---------------------------------------------------------------- batched forms */

/* All results of a job, in order; returns the count, bodies in out[0..cap). */
static int all_results(nq_queue_t *q, const char *job, char **out, int cap) {
  char cur[128] = "";
  int total = 0;
  for (;;) {
    nq_result_entry_t *r;
    int n = -1;
    nq_err_t e = {0};
    cr_assert_eq(nq_queue_read_results(q, job, cur[0] ? cur : NULL, 100, 0, &r, &n, &e), 0, "%s", e.msg);
    if (n == 0) break;
    for (int i = 0; i < n; i++) {
      if (total < cap) out[total] = strdup(r[i].body);
      total++;
    }
    snprintf(cur, sizeof cur, "%s", r[n - 1].id);
    nq_result_entries_free(r, n);
  }
  return total;
}

static void free_strs(char **s, int n) {
  for (int i = 0; i < n; i++) free(s[i]);
}

#define COUNTS_EQ(c, t, o, f, dd)                                                                               \
  cr_assert((c).total == (t) && (c).ok == (o) && (c).failed == (f) && (c).dead == (dd),                       \
            "counts total %lld ok %lld failed %lld dead %lld, want %d %d %d %d", (c).total, (c).ok, (c).failed, \
            (c).dead, (t), (o), (f), (dd))

QTEST(publish_batch_order_and_bodies) {
  qtopic("t", 1);
  nq_queue_t *q = qopen(B->long_lease_ms);
  const char *bodies[] = {"first", "", "line\nbreak\ttab", "{\"k\":4}"};
  size_t lens[] = {5, 0, 14, 7};
  nq_err_t e = {0};
  cr_assert_eq(nq_queue_publish_batch(q, "t", bodies, lens, 4, &e), 0, "%s", e.msg);
  cr_assert_eq(nq_queue_publish_batch(q, "t", bodies, lens, 0, &e), 0); /* nothing to do */
  cr_assert_eq(nq_queue_publish_batch(q, "t", bodies, lens, -1, &e), NQ_EINVAL);
  pub_batch(q, "t", 1500, "m%04d"); /* more than one pipeline chunk on redis */
  nq_delivery_t *d;
  int n = fetch_n(q, "t", "g", "c", 4, &d);
  cr_assert_eq(n, 4);
  for (int i = 0; i < 4; i++) {
    cr_assert_eq(d[i].len, lens[i]);
    cr_assert_eq(memcmp(d[i].body, bodies[i], lens[i]), 0);
    cr_assert_eq(d[i].body[lens[i]], 0);
    ack(q, "g", &d[i]);
  }
  nq_delivery_free_array(d, n);
  char want[16];
  int seen = 0;
  for (long long t0 = mono_ms(); seen < 1500 && mono_ms() - t0 < B->settle_ms;) {
    n = fetch1(q, "t", "g", "c", 400, B->quiet_ms, &d);
    for (int i = 0; i < n; i++) {
      snprintf(want, sizeof want, "m%04d", seen++);
      cr_assert_str_eq(d[i].body, want); /* FIFO across chunks */
      ack(q, "g", &d[i]);
    }
    nq_delivery_free_array(d, n);
  }
  cr_assert_eq(seen, 1500);
  expect_none(q, "t", "g", "c", "all 1504 acked");
}

/* A batch with a bad item is refused as a whole: nothing of it is published (Kafka once produced the items before
 * a NULL body). */
QTEST(publish_batch_rejected_publishes_nothing) {
  qtopic("t", 1);
  nq_queue_t *q = qopen(B->long_lease_ms);
  const char *bad[] = {"x", NULL};
  size_t badl[] = {1, 3};
  nq_err_t e = {0};
  cr_assert_eq(nq_queue_publish_batch(q, "t", bad, badl, 2, &e), NQ_EINVAL);
  nq_queue_stats_t st = stats(q, "t", "g");
  cr_assert_eq(st.depth, 0, "the rejected batch left %lld message(s) on the topic", st.depth);
  pub(q, "t", "after");
  nq_delivery_t *d;
  cr_assert_eq(fetch_n(q, "t", "g", "c", 1, &d), 1);
  cr_assert_str_eq(d[0].body, "after");
  ack(q, "g", &d[0]);
  nq_delivery_free_array(d, 1);
}

QTEST(complete_batch_counts_changed_results) {
  if (!B->atomic_complete_batch || !B->per_message_lease)
    cr_skip_test("%s: complete_batch is not atomic per item and a lease is not per message", B->name);
  nq_queue_t *q = qopen(B->lease_ms);
  nq_err_t e = {0};
  cr_assert_eq(nq_queue_job_set_total(q, "J", 5, &e), 0);
  pub_batch(q, "t", 5, "task-%d");
  nq_delivery_t *d;
  cr_assert_eq(fetch1(q, "t", "g", "c1", 5, 0, &d), 5);
  /* d[4] is dead-lettered by someone else before the batch completes: its item must be a no-op */
  cr_assert_eq(nq_queue_dead_letter(q, "g", &d[4], "gone", &e), 0, "%s", e.msg);
  nq_completion_t it[] = {
      {.d = &d[0], .job = "J", .task = "J/0", .status = "ok", .result = "{\"r\":0}"},
      {.d = &d[1], .job = "J", .task = "J/1", .status = "ok", .result = "{\"r\":1}"},
      {.d = &d[2], .job = "J", .task = "J/2", .status = "dead", .result = "{\"r\":2}"},
      {.d = &d[0], .job = "J", .task = "J/0", .status = "ok", .result = "{\"r\":\"dup\"}"}, /* repeated item */
      {.d = &d[4], .job = "J", .task = "J/4", .status = "ok", .result = "{\"r\":4}"},
  };
  nq_job_counts_t c[5];
  int ch[5] = {-1, -1, -1, -1, -1};
  cr_assert_eq(nq_queue_complete_batch(q, "g", it, 5, c, ch, &e), 0, "%s", e.msg);
  COUNTS_EQ(c[0], 5, 1, 0, 0);
  COUNTS_EQ(c[1], 5, 2, 0, 0);
  COUNTS_EQ(c[2], 5, 2, 0, 1);
  COUNTS_EQ(c[3], 5, 2, 0, 1);
  COUNTS_EQ(c[4], 5, 2, 0, 1);
  cr_assert(ch[0] == 1 && ch[1] == 1 && ch[2] == 1 && ch[3] == 0 && ch[4] == 0, "changed %d %d %d %d %d", ch[0],
            ch[1], ch[2], ch[3], ch[4]);
  nq_job_counts_t jc;
  cr_assert_eq(nq_queue_job_counts(q, "J", &jc, &e), 0);
  COUNTS_EQ(jc, 5, 2, 0, 1);
  /* results: one per applied item, in item order */
  char *res[8];
  int nr = all_results(q, "J", res, 8);
  cr_assert_eq(nr, 3);
  cr_assert_str_eq(res[0], "{\"r\":0}");
  cr_assert_str_eq(res[1], "{\"r\":1}");
  cr_assert_str_eq(res[2], "{\"r\":2}");
  free_strs(res, nr);
  /* acked by the batch: only d[3] is still in flight, and only it comes back after the lease */
  cr_assert_eq(stats(q, "t", "g").in_flight, 1);
  sleep_ms(B->lease_ms + 150);
  nq_delivery_t *r;
  cr_assert_eq(fetch1(q, "t", "g", "c2", 10, 0, &r), 1);
  cr_assert_str_eq(r[0].id, d[3].id);
  cr_assert_eq(r[0].delivery_count, 2);
  /* the reclaimed delivery completes; the stale first delivery of the same message then is a no-op */
  nq_completion_t late[] = {{.d = &r[0], .job = "J", .task = "J/3", .status = "ok", .result = "{\"r\":3}"},
                            {.d = &d[3], .job = "J", .task = "J/3", .status = "ok", .result = "{\"r\":\"stale\"}"}};
  cr_assert_eq(nq_queue_complete_batch(q, "g", late, 2, c, ch, &e), 0, "%s", e.msg);
  cr_assert(ch[0] == 1 && ch[1] == 0);
  COUNTS_EQ(c[0], 5, 3, 0, 1);
  COUNTS_EQ(c[1], 5, 3, 0, 1);
  cr_assert_eq(all_results(q, "J", res, 0), 4);
  nq_delivery_free_array(r, 1);
  sleep_ms(B->lease_ms + 150);
  cr_assert_eq(fetch1(q, "t", "g", "c2", 10, 0, &r), 0); /* everything acked: nothing redelivered */
  cr_assert_eq(stats(q, "t", "g").in_flight, 0);
  nq_delivery_free_array(d, 5);
}

/* A repeated call (a retry after a lost reply) changes no status and no count. Atomic backends append no second
 * result; Kafka (no transactions) appends one per item every time (results are at-least-once there). */
QTEST(complete_batch_repeat_is_idempotent) {
  nq_queue_t *q = qopen(B->long_lease_ms);
  nq_err_t e = {0};
  cr_assert_eq(nq_queue_job_set_total(q, "J", 3, &e), 0);
  pub_batch(q, "t", 3, "%d");
  nq_delivery_t *d;
  cr_assert_eq(fetch_n(q, "t", "g", "c", 3, &d), 3);
  nq_completion_t it[3];
  char task[3][16];
  for (int i = 0; i < 3; i++) {
    snprintf(task[i], sizeof task[i], "J/%d", i);
    it[i] = (nq_completion_t){.d = &d[i], .job = "J", .task = task[i], .status = "ok", .result = "{}"};
  }
  nq_job_counts_t c[3];
  int ch[3];
  cr_assert_eq(nq_queue_complete_batch(q, "g", it, 3, c, ch, &e), 0, "%s", e.msg);
  for (int i = 0; i < 3; i++) cr_assert_eq(ch[i], 1);
  COUNTS_EQ(c[2], 3, 3, 0, 0);
  int per_repeat = B->atomic_complete_batch ? 0 : 3;
  cr_assert_eq(nq_queue_complete_batch(q, "g", it, 3, c, ch, &e), 0, "%s", e.msg);
  for (int i = 0; i < 3; i++) {
    cr_assert_eq(ch[i], 0, "item %d changed on repeat", i);
    COUNTS_EQ(c[i], 3, 3, 0, 0);
  }
  cr_assert_eq(all_results(q, "J", NULL, 0), 3 + per_repeat);
  /* NULL outputs are allowed */
  cr_assert_eq(nq_queue_complete_batch(q, "g", it, 3, NULL, NULL, &e), 0, "%s", e.msg);
  cr_assert_eq(all_results(q, "J", NULL, 0), 3 + 2 * per_repeat);
  cr_assert_eq(stats(q, "t", "g").in_flight, 0);
  nq_delivery_free_array(d, 3);
}

QTEST(complete_batch_without_delivery) {
  nq_queue_t *q = qopen(B->long_lease_ms);
  nq_err_t e = {0};
  /* no total yet: counts say -1; items of two jobs in one call */
  nq_completion_t it[] = {
      {.job = "A", .task = "A/1", .status = "dead", .result = "{\"a\":1}"},
      {.job = "B", .task = "B/1", .status = "failed", .result = "{\"b\":1}"},
      {.job = "A", .task = "A/1", .status = "ok", .result = "{\"a\":2}"}, /* requeued from the DLQ, then ok */
      {.job = "A", .task = "A/2", .status = "ok", .result = "{\"a\":3}"},
  };
  nq_job_counts_t c[4];
  int ch[4];
  cr_assert_eq(nq_queue_complete_batch(q, "g", it, 4, c, ch, &e), 0, "%s", e.msg);
  COUNTS_EQ(c[0], -1, 0, 0, 1);
  COUNTS_EQ(c[1], -1, 0, 1, 0);
  COUNTS_EQ(c[2], -1, 1, 0, 0);
  COUNTS_EQ(c[3], -1, 2, 0, 0);
  cr_assert(ch[0] == 1 && ch[1] == 1 && ch[2] == 1 && ch[3] == 1);
  /* the same status again: counted once (changed 0); without a delivery the result is still appended */
  cr_assert_eq(nq_queue_complete_batch(q, NULL, &it[3], 1, c, ch, &e), 0, "%s", e.msg);
  cr_assert_eq(ch[0], 0);
  COUNTS_EQ(c[0], -1, 2, 0, 0);
  char *res[8];
  int nr = all_results(q, "A", res, 8);
  cr_assert_eq(nr, 4);
  cr_assert_str_eq(res[0], "{\"a\":1}");
  cr_assert_str_eq(res[1], "{\"a\":2}");
  cr_assert_str_eq(res[2], "{\"a\":3}");
  cr_assert_str_eq(res[3], "{\"a\":3}");
  free_strs(res, nr);
  nq_job_counts_t jc;
  cr_assert_eq(nq_queue_job_counts(q, "B", &jc, &e), 0);
  COUNTS_EQ(jc, -1, 0, 1, 0);
  /* the batch form and job_mark agree on the state */
  int one = -1;
  cr_assert_eq(nq_queue_job_mark(q, "A", "A/1", "ok", &jc, &one, &e), 0);
  cr_assert_eq(one, 0);
  COUNTS_EQ(jc, -1, 2, 0, 0);
}

QTEST(complete_batch_bad_item_changes_nothing) {
  nq_queue_t *q = qopen(B->long_lease_ms);
  nq_err_t e = {0};
  cr_assert_eq(nq_queue_complete_batch(q, "g", NULL, -1, NULL, NULL, &e), NQ_EINVAL);
  cr_assert_eq(nq_queue_complete_batch(q, "g", NULL, 0, NULL, NULL, &e), 0);
  pub(q, "t", "m");
  nq_delivery_t *d;
  cr_assert_eq(fetch_n(q, "t", "g", "c", 1, &d), 1);
  nq_completion_t it[] = {
      {.d = &d[0], .job = "J", .task = "J/1", .status = "ok", .result = "{}"},
      {.job = "J", .task = "J/2", .status = "weird", .result = "{}"},
  };
  cr_assert_eq(nq_queue_complete_batch(q, "g", it, 2, NULL, NULL, &e), NQ_EINVAL);
  cr_assert(strstr(e.msg, "weird"), "%s", e.msg);
  it[1].status = "ok";
  it[1].result = NULL;
  cr_assert_eq(nq_queue_complete_batch(q, "g", it, 2, NULL, NULL, &e), NQ_EINVAL);
  it[1].result = "{}";
  it[1].task = "";
  cr_assert_eq(nq_queue_complete_batch(q, "g", it, 2, NULL, NULL, &e), NQ_EINVAL);
  cr_assert_eq(nq_queue_complete_batch(q, "g", it, -1, NULL, NULL, &e), NQ_EINVAL);
  /* nothing of item 0 happened */
  cr_assert_eq(stats(q, "t", "g").in_flight, 1);
  cr_assert_eq(all_results(q, "J", NULL, 0), 0);
  nq_job_counts_t jc;
  cr_assert_eq(nq_queue_job_counts(q, "J", &jc, &e), 0);
  COUNTS_EQ(jc, -1, 0, 0, 0);
  nq_delivery_free_array(d, 1);
}

/* The wrappers' fallback loops (a backend without the batch members; kafka has no complete_batch of its own). */
QTEST(batch_wrappers_fall_back_to_single_forms) {
  qtopic("t", 1);
  nq_queue_t *q = qopen(B->long_lease_ms);
  static nq_queue_i vt_single;
  const nq_queue_i *orig = q->vt;
  vt_single = *orig;
  vt_single.publish_batch = NULL;
  vt_single.complete_batch = NULL;
  q->vt = &vt_single;
  pub_batch(q, "t", 3, "f%d");
  nq_delivery_t *d;
  cr_assert_eq(fetch_n(q, "t", "g", "c", 3, &d), 3);
  cr_assert_str_eq(d[2].body, "f2");
  nq_completion_t it[] = {
      {.d = &d[0], .job = "J", .task = "J/0", .status = "ok", .result = "{\"f\":0}"},
      {.d = &d[1], .job = "J", .task = "J/1", .status = "dead", .result = "{\"f\":1}"},
      {.d = &d[2], .job = "J", .task = "J/0", .status = "ok", .result = "{\"f\":2}"},
  };
  nq_job_counts_t c[3];
  int ch[3];
  nq_err_t e = {0};
  cr_assert_eq(nq_queue_complete_batch(q, "g", it, 3, c, ch, &e), 0, "%s", e.msg);
  COUNTS_EQ(c[0], -1, 1, 0, 0);
  COUNTS_EQ(c[1], -1, 1, 0, 1);
  COUNTS_EQ(c[2], -1, 1, 0, 1);
  cr_assert(ch[0] == 1 && ch[1] == 1 && ch[2] == 0);
  cr_assert_eq(stats(q, "t", "g").in_flight, 0);
  cr_assert_eq(all_results(q, "J", NULL, 0), 3);
  q->vt = orig;
  nq_delivery_free_array(d, 3);
}

/* More items than one server-side chunk; results keep item order across chunks (Kafka: one produce round trip for the
 * results, one for the job records, one fold). */
QTEST(complete_batch_large) {
  nq_queue_t *q = qopen(B->long_lease_ms);
  nq_err_t e = {0};
  enum { NMAX = 700 };
  const int N = NMAX;
  cr_assert_eq(nq_queue_job_set_total(q, "L", N, &e), 0);
  pub_batch(q, "t", N, "%d");
  nq_delivery_t *d;
  cr_assert_eq(fetch_n(q, "t", "g", "c", N, &d), N);
  static nq_completion_t it[NMAX];
  static char task[NMAX][16], res[NMAX][32];
  static nq_job_counts_t c[NMAX];
  static int ch[NMAX];
  for (int i = 0; i < N; i++) {
    snprintf(task[i], sizeof task[i], "L/%d", atoi(d[i].body));
    snprintf(res[i], sizeof res[i], "{\"i\":%d}", i);
    it[i] = (nq_completion_t){.d = &d[i], .job = "L", .task = task[i], .status = i % 7 ? "ok" : "dead",
                              .result = res[i]};
  }
  cr_assert_eq(nq_queue_complete_batch(q, "g", it, N, c, ch, &e), 0, "%s", e.msg);
  int dead = (N + 6) / 7;
  COUNTS_EQ(c[N - 1], N, N - dead, 0, dead);
  for (int i = 0; i < N; i++) cr_assert_eq(ch[i], 1);
  for (int i = 1; i < N; i++) cr_assert_eq(c[i].ok + c[i].dead, i + 1, "counts after item %d", i);
  static char *got[NMAX + 1];
  int nr = all_results(q, "L", got, N + 1);
  cr_assert_eq(nr, N);
  for (int i = 0; i < N; i++) cr_assert_str_eq(got[i], res[i]);
  free_strs(got, nr);
  nq_queue_stats_t st = stats(q, "t", "g");
  cr_assert_eq(st.in_flight, 0);
  cr_assert_eq(st.depth, 0);
  nq_delivery_free_array(d, N);
}

/* Results written by complete_batch (redis: several per stream entry) page like single results: any max_n, a
 * cursor from the middle of a batch, then a blocking read that wakes on the next result. */
QTEST(results_paging_across_batches) {
  nq_queue_t *q = qopen(B->long_lease_ms);
  nq_err_t e = {0};
  char task[12][16], res[12][32];
  nq_completion_t it[12];
  for (int i = 0; i < 12; i++) {
    snprintf(task[i], sizeof task[i], "P/%d", i);
    snprintf(res[i], sizeof res[i], "{\"p\":%d}", i);
    it[i] = (nq_completion_t){.job = "P", .task = task[i], .status = "ok", .result = res[i]};
  }
  cr_assert_eq(nq_queue_complete_batch(q, NULL, it, 5, NULL, NULL, &e), 0, "%s", e.msg);
  cr_assert_eq(nq_queue_publish_result(q, "P", res[5], &e), 0);
  cr_assert_eq(nq_queue_complete_batch(q, NULL, it + 6, 6, NULL, NULL, &e), 0, "%s", e.msg);
  for (int page = 1; page <= 5; page++) {
    char cur[128] = "";
    int seen = 0;
    for (;;) {
      nq_result_entry_t *r;
      int n = -1;
      cr_assert_eq(nq_queue_read_results(q, "P", cur[0] ? cur : NULL, page, 0, &r, &n, &e), 0, "%s", e.msg);
      cr_assert(n >= 0 && n <= page);
      if (n == 0) break;
      for (int i = 0; i < n; i++) {
        cr_assert(seen < 12);
        cr_assert_str_eq(r[i].body, res[seen], "page %d: result %d is %s", page, seen, r[i].body);
        seen++;
      }
      cr_assert(n == page || seen == 12, "short page %d of %d before the end", n, page);
      snprintf(cur, sizeof cur, "%s", r[n - 1].id);
      nq_result_entries_free(r, n);
    }
    cr_assert_eq(seen, 12, "page size %d saw %d", page, seen);
  }
  /* a cursor in the middle of a batch continues inside it */
  nq_result_entry_t *r;
  int n = -1;
  cr_assert_eq(nq_queue_read_results(q, "P", NULL, 8, 0, &r, &n, &e), 0);
  cr_assert_eq(n, 8);
  char mid[128];
  snprintf(mid, sizeof mid, "%s", r[7].id);
  nq_result_entries_free(r, n);
  cr_assert_eq(nq_queue_read_results(q, "P", mid, 100, 0, &r, &n, &e), 0, "%s", e.msg);
  cr_assert_eq(n, 4);
  cr_assert_str_eq(r[0].body, res[8]);
  char end[128];
  snprintf(end, sizeof end, "%s", r[3].id);
  nq_result_entries_free(r, n);
  /* blocking read at the end wakes when a result arrives */
  pthread_t th;
  pub_arg_t a = {.q = q, .delay_ms = 300, .job = "P"};
  cr_assert_eq(pthread_create(&th, NULL, pub_later, &a), 0);
  long long t0 = mono_ms();
  cr_assert_eq(nq_queue_read_results(q, "P", end, 10, 5000, &r, &n, &e), 0, "%s", e.msg);
  long long dt = mono_ms() - t0;
  pthread_join(th, NULL);
  cr_assert_eq(n, 1);
  cr_assert_str_eq(r[0].body, "{\"late\":1}");
  cr_assert(dt >= 200 && dt < 3000, "woke after %lld ms", dt);
  nq_result_entries_free(r, n);
  /* a malformed cursor is an error, not a crash */
  cr_assert_eq(nq_queue_read_results(q, "P", "1-0/x", 10, 0, &r, &n, &e), NQ_EINVAL);
}

/* ---------------------------------------------------------------- redis only */

Test(redis_only, restart_reconnects, .init = init_redis, .fini = fini_all, .timeout = 60) {
  if (T.skip) cr_skip_test("redis-server not available");
  nq_queue_t *q = qopen(30000);
  pub(q, "t", "before-restart-1");
  pub(q, "t", "before-restart-2");
  cr_assert_eq(nq_redis_harness_restart(&T.h), 0, "restart with AOF failed");
  nq_delivery_t *d;
  cr_assert_eq(fetch1(q, "t", "g", "c", 10, 0, &d), 2); /* same handle: reconnects transparently */
  cr_assert_str_eq(d[0].body, "before-restart-1");
  ack(q, "g", &d[0]);
  ack(q, "g", &d[1]);
  nq_delivery_free_array(d, 2);
  /* server down: a retriable queue error, then recovery once it is back */
  cr_assert_eq(nq_redis_harness_kill(&T.h), 0);
  nq_err_t e = {0};
  cr_assert_eq(nq_queue_publish(q, "t", "x", 1, &e), NQ_EQUEUE);
  cr_assert(e.flags & NQ_ERR_RETRIABLE, "flags %u: %s", e.flags, e.msg);
  cr_assert_eq(nq_redis_harness_resume(&T.h, 1), 0);
  pub(q, "t", "after");
  cr_assert_eq(fetch1(q, "t", "g", "c", 10, 0, &d), 1);
  cr_assert_str_eq(d[0].body, "after");
  nq_delivery_free_array(d, 1);
}

Test(redis_only, deleted_and_foreign_entries, .init = init_redis, .fini = fini_all, .timeout = 60) {
  if (T.skip) cr_skip_test("redis-server not available");
  nq_queue_t *q = qopen(200);
  pub(q, "t", "doomed");
  nq_delivery_t *d;
  cr_assert_eq(fetch1(q, "t", "g", "c", 1, 0, &d), 1);
  cr_assert_eq(nq_redis_harness_cmd(&T.h, "XDEL nq:t %s", d[0].id), 0);
  nq_delivery_free_array(d, 1);
  sleep_ms(300);
  cr_assert_eq(fetch1(q, "t", "g", "c", 5, 0, &d), 0); /* deleted while pending: skipped, no crash */
  /* an entry pushed by hand without a "body" field arrives with an empty body */
  cr_assert_eq(nq_redis_harness_cmd(&T.h, "XADD nq:t * junk 1"), 0);
  cr_assert_eq(fetch1(q, "t", "g", "c", 5, 0, &d), 1);
  cr_assert_eq(d[0].len, 0);
  cr_assert_str_eq(d[0].body, "");
  ack(q, "g", &d[0]);
  nq_delivery_free_array(d, 1);
  /* the group vanishes (FLUSHALL): fetch creates it again */
  cr_assert_eq(nq_redis_harness_cmd(&T.h, "FLUSHALL"), 0);
  pub(q, "t", "fresh");
  cr_assert_eq(fetch1(q, "t", "g", "c", 5, 0, &d), 1);
  cr_assert_str_eq(d[0].body, "fresh");
  nq_delivery_free_array(d, 1);
}

Test(redis_only, trim_never_passes_pending, .init = init_redis, .fini = fini_all, .timeout = 60) {
  if (T.skip) cr_skip_test("redis-server not available");
  nq_queue_t *q = qopen(300);
  char b[16];
  for (int i = 0; i < 400; i++) {
    snprintf(b, sizeof b, "%d", i);
    pub(q, "t", b);
  }
  nq_delivery_t *d;
  int n = fetch1(q, "t", "g", "c", 400, 0, &d);
  cr_assert_eq(n, 400);
  /* ack every message except 50..99: the periodic trim must keep 50 onwards */
  for (int i = 0; i < 400; i++)
    if (i < 50 || i >= 100) ack(q, "g", &d[i]);
  nq_delivery_free_array(d, n);
  nq_queue_stats_t st = stats(q, "t", "g");
  cr_assert_eq(st.in_flight, 50);
  sleep_ms(400);
  n = fetch1(q, "t", "g", "c2", 400, 0, &d);
  cr_assert_eq(n, 50, "reclaimed %d of the 50 pending", n);
  for (int i = 0; i < n; i++) {
    cr_assert_eq(atoi(d[i].body), 50 + i);
    cr_assert_eq(d[i].delivery_count, 2);
    ack(q, "g", &d[i]);
  }
  nq_delivery_free_array(d, n);
}

Test(redis_only, trim_shrinks_stream, .init = init_redis, .fini = fini_all, .timeout = 60) {
  if (T.skip) cr_skip_test("redis-server not available");
  nq_queue_t *q = qopen(30000);
  for (int i = 0; i < 300; i++) pub(q, "t", "m");
  nq_delivery_t *d;
  int n = fetch1(q, "t", "g", "c", 300, 0, &d);
  cr_assert_eq(n, 300);
  for (int i = 0; i < n; i++) ack(q, "g", &d[i]);
  nq_delivery_free_array(d, n);
  nq_queue_stats_t st = stats(q, "t", "g");
  cr_assert_eq(st.depth, 0);
  long long xlen = nq_redis_harness_int(&T.h, "XLEN nq:t");
  cr_assert(xlen >= 0 && xlen <= 300 - 128, "stream not trimmed after 300 acks: XLEN %lld", xlen);
  cr_assert_eq(st.in_flight, 0);
}

Test(redis_only, batch_scripts_survive_script_flush, .init = init_redis, .fini = fini_all, .timeout = 60) {
  if (T.skip) cr_skip_test("redis-server not available");
  nq_queue_t *q = qopen(30000);
  pub_batch(q, "t", 3, "s%d");
  cr_assert_eq(nq_redis_harness_cmd(&T.h, "SCRIPT FLUSH"), 0);
  nq_delivery_t *d;
  cr_assert_eq(fetch1(q, "t", "g", "c", 100, 0, &d), 3); /* FETCH script re-sent as EVAL */
  cr_assert_eq(nq_redis_harness_cmd(&T.h, "SCRIPT FLUSH"), 0);
  nq_completion_t it[3];
  for (int i = 0; i < 3; i++)
    it[i] = (nq_completion_t){.d = &d[i], .job = "J", .task = d[i].body, .status = "ok", .result = "{}"};
  int ch[3];
  nq_err_t e = {0};
  cr_assert_eq(nq_queue_complete_batch(q, "g", it, 3, NULL, ch, &e), 0, "%s", e.msg);
  cr_assert(ch[0] == 1 && ch[1] == 1 && ch[2] == 1);
  cr_assert_eq(stats(q, "t", "g").in_flight, 0);
  nq_delivery_free_array(d, 3);
}

Test(redis_only, complete_batch_wrong_type_writes_nothing, .init = init_redis, .fini = fini_all, .timeout = 60) {
  if (T.skip) cr_skip_test("redis-server not available");
  nq_queue_t *q = qopen(30000);
  pub(q, "t", "m");
  nq_delivery_t *d;
  cr_assert_eq(fetch1(q, "t", "g", "c", 1, 0, &d), 1);
  cr_assert_eq(nq_redis_harness_cmd(&T.h, "SET nq:results:J oops"), 0); /* tampered: not a stream */
  nq_completion_t it = {.d = &d[0], .job = "J", .task = "J/1", .status = "ok", .result = "{}"};
  nq_err_t e = {0};
  cr_assert_eq(nq_queue_complete_batch(q, "g", &it, 1, NULL, NULL, &e), NQ_EQUEUE);
  cr_assert(strstr(e.msg, "WRONGTYPE"), "%s", e.msg);
  /* no ack without its result: still pending, nothing counted */
  cr_assert_eq(stats(q, "t", "g").in_flight, 1);
  cr_assert_eq(nq_redis_harness_int(&T.h, "HLEN nq:job:J:tasks"), 0);
  nq_delivery_free_array(d, 1);
}

Test(redis_only, complete_batch_trims_stream, .init = init_redis, .fini = fini_all, .timeout = 60) {
  if (T.skip) cr_skip_test("redis-server not available");
  nq_queue_t *q = qopen(30000);
  pub_batch(q, "t", 300, "%d");
  nq_err_t e = {0};
  for (int round = 0; round < 3; round++) {
    nq_delivery_t *d;
    int n = fetch1(q, "t", "g", "c", 100, 0, &d);
    cr_assert_eq(n, 100);
    nq_completion_t it[100];
    for (int i = 0; i < n; i++)
      it[i] = (nq_completion_t){.d = &d[i], .job = "J", .task = d[i].body, .status = "ok", .result = "{}"};
    cr_assert_eq(nq_queue_complete_batch(q, "g", it, n, NULL, NULL, &e), 0, "%s", e.msg);
    nq_delivery_free_array(d, n);
  }
  long long xlen = nq_redis_harness_int(&T.h, "XLEN nq:t");
  cr_assert(xlen >= 0 && xlen <= 300 - 128, "stream not trimmed after 300 completions: XLEN %lld", xlen);
  nq_job_counts_t c;
  cr_assert_eq(nq_queue_job_counts(q, "J", &c, &e), 0);
  cr_assert_eq(c.ok, 300);
}

/* ---------------------------------------------------------------- worker over local and redis */

/* A worker that died after recording two of its three tasks ok but before acking them: the next worker gets all three
 * again (delivery count 2), acks the two recorded ones without running them (nq_queue_tasks_ok) and runs the third.
 * Kafka reaches the same code when a dead member's offset commit never landed (its redeliveries need a consumer
 * death: covered by the chaos run's duplicated-execution count). */
static void body_worker_skips_recorded(void) {
  char dir[] = "/tmp/nq_skip_XXXXXX", path[300], job[160], yaml[600];
  cr_assert(mkdtemp(dir));
  snprintf(yaml, sizeof yaml, "job: skip\nstage: noop\ndataset: {format: jsonl, path: in.jsonl}\noutput: out\n"
           "max_attempts: 5\nparams: {exec_log: %s/exec.log}\n", dir);
  nq_err_t e = {0};
  nq_store_t *st = NULL;
  nq_queue_t *q = qopen(300);
  cr_assert_eq(nq_test_submit_rows(q, dir, 3, yaml, &st, job, sizeof job, &e), 0, "%s", e.msg);
  FILE *f;
  char t1[160], t2[160], group[128];
  nq_queue_topic(t1, sizeof t1, "noop", "cpu");
  nq_queue_topic(t2, sizeof t2, "noop", "any");
  nq_queue_group(group, sizeof group, "noop");
  const char *topics[] = {t1, t2};
  nq_delivery_t *d = NULL;
  int n = 0;
  cr_assert_eq(nq_queue_fetch(q, topics, 2, group, "dead", 3, 2000, &d, &n, &e), 0, "%s", e.msg);
  cr_assert_eq(n, 3);
  char unrecorded[128] = "";
  for (int i = 0; i < n; i++) {
    nq_envelope_t env;
    cr_assert_eq(nq_envelope_parse(d[i].body, d[i].len, &env, &e), 0, "%s", e.msg);
    if (i < 2) cr_assert_eq(nq_queue_job_mark(q, job, env.task, "ok", NULL, NULL, &e), 0, "%s", e.msg);
    else snprintf(unrecorded, sizeof unrecorded, "%s", env.task);
    nq_envelope_deinit(&env);
  }
  nq_delivery_free_array(d, n);
  sleep_ms(600); /* the dead consumer's leases expire */
  const char *stages[] = {"noop"};
  nq_worker_opts_t wo = {.queue = q, .store = st, .stages = stages, .nstages = 1, .device = "cpu", .threads = 1,
                         .batch = 8, .block_ms = 200, .exit_when_idle = 1, .idle_ms = 1500};
  nq_worker_stats_t ws = {0};
  cr_assert_eq(nq_worker_run(&wo, &ws, &e), 0, "%s", e.msg);
  cr_assert_eq(ws.skipped, 2, "skipped %lld ok %lld", ws.skipped, ws.ok);
  cr_assert_eq(ws.ok, 1);
  snprintf(path, sizeof path, "%s/exec.log", dir);
  f = fopen(path, "r");
  cr_assert(f, "the unrecorded task never ran");
  char line[256];
  int lines = 0;
  while (fgets(line, sizeof line, f)) {
    line[strcspn(line, "\n")] = 0;
    cr_assert_str_eq(line, unrecorded);
    lines++;
  }
  fclose(f);
  cr_assert_eq(lines, 1);
  nq_job_counts_t c;
  cr_assert_eq(nq_queue_job_counts(q, job, &c, &e), 0);
  cr_assert(c.total == 3 && c.ok == 3, "total %lld ok %lld", c.total, c.ok);
  nq_queue_stats_t qs = stats(q, t1, group);
  cr_assert(qs.depth == 0 && qs.in_flight == 0, "depth %lld in flight %lld", qs.depth, qs.in_flight);
  nq_store_free(st);
  snprintf(path, sizeof path, "rm -rf %s", dir);
  cr_assert_eq(system(path), 0);
}
Test(local, worker_skips_recorded_redelivery, .init = init_local, .fini = fini_all, .timeout = 60) {
  body_worker_skips_recorded();
}
Test(redis, worker_skips_recorded_redelivery, .init = init_redis, .fini = fini_all, .timeout = 60) {
  body_worker_skips_recorded();
}

/* ---------------------------------------------------------------- local only, helpers */

Test(local_only, same_name_same_queue) {
  nq_queue_t *a = NULL, *b = NULL, *c = NULL;
  cr_assert_eq(nq_queue_open("local://shared-x", NULL, &a, NULL), 0);
  cr_assert_eq(nq_queue_open("local://shared-x", NULL, &b, NULL), 0);
  cr_assert_eq(nq_queue_open("local://other-y", NULL, &c, NULL), 0);
  cr_assert_eq(a, b);
  cr_assert_neq(a, c);
  cr_assert_eq(a->lease_ms, 30000);
  cr_assert_str_eq(a->vt->name, "local");
  pub(a, "t", "hello");
  nq_queue_close(a);
  nq_delivery_t *d;
  cr_assert_eq(fetch1(c, "t", "g", "c", 1, 0, &d), 0);
  cr_assert_eq(fetch1(b, "t", "g", "c", 1, 0, &d), 1); /* still alive through b */
  cr_assert_str_eq(d[0].body, "hello");
  nq_delivery_free_array(d, 1);
  nq_queue_close(b);
  nq_queue_close(c);
  cr_assert_eq(nq_queue_open("local://shared-x", NULL, &a, NULL), 0); /* last close freed it: a new, empty one */
  cr_assert_eq(fetch1(a, "t", "g", "c", 1, 0, &d), 0);
  nq_queue_close(a);
}

Test(queue_misc, url_errors) {
  nq_queue_t *q = NULL;
  nq_err_t e = {0};
  cr_assert_eq(nq_queue_open("bogus://x", NULL, &q, &e), NQ_EINVAL);
  cr_assert_null(q);
  cr_assert_eq(nq_queue_open("redis://127.0.0.1:notaport", NULL, &q, &e), NQ_EINVAL);
  cr_assert_eq(nq_queue_open("redis://127.0.0.1:70000", NULL, &q, &e), NQ_EINVAL);
  cr_assert_eq(nq_queue_open("redis://127.0.0.1:6379/x", NULL, &q, &e), NQ_EINVAL);
  /* nothing listens on port 1: a retriable connect error naming the address */
  cr_assert_eq(nq_queue_open("redis://127.0.0.1:1", NULL, &q, &e), NQ_EQUEUE);
  cr_assert(e.flags & NQ_ERR_RETRIABLE);
  cr_assert(strstr(e.msg, "127.0.0.1:1"), "%s", e.msg);
}

Test(queue_misc, topic_and_group_names) {
  char b[64];
  cr_assert_eq(nq_queue_topic(b, sizeof b, "llm", "cpu"), 0);
  cr_assert_str_eq(b, "tasks:llm:cpu");
  cr_assert_eq(nq_queue_group(b, sizeof b, "llm"), 0);
  cr_assert_str_eq(b, "stage:llm");
  cr_assert_eq(nq_queue_topic(b, 8, "generate", "cuda"), NQ_ELIMIT);
  cr_assert_eq(nq_queue_topic(b, sizeof b, "", "cpu"), NQ_EINVAL);
  cr_assert_eq(nq_queue_topic(b, sizeof b, "a b", "cpu"), NQ_EINVAL);
  cr_assert_eq(nq_queue_group(b, sizeof b, NULL), NQ_EINVAL);
}

Test(queue_misc, backoff_bounds_and_jitter) {
  for (int i = 0; i < 200; i++) {
    int a1 = nq_queue_backoff_ms(1, 100, 10000);
    cr_assert(a1 >= 50 && a1 <= 100, "attempt 1: %d", a1);
    int a5 = nq_queue_backoff_ms(5, 100, 10000);
    cr_assert(a5 >= 800 && a5 <= 1600, "attempt 5: %d", a5);
    int a40 = nq_queue_backoff_ms(40, 100, 10000); /* capped, no overflow */
    cr_assert(a40 >= 5000 && a40 <= 10000, "attempt 40: %d", a40);
    int z = nq_queue_backoff_ms(0, 0, 0);
    cr_assert(z >= 0 && z <= 1);
  }
  int distinct = 0, prev = -1;
  for (int i = 0; i < 50; i++) {
    int v = nq_queue_backoff_ms(8, 100, 100000);
    if (v != prev) distinct++;
    prev = v;
  }
  cr_assert(distinct > 10, "no jitter: %d distinct", distinct);
}

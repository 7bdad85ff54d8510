/* tests/unit/test_queue.c — the queue conformance suite.
 *
 * Every QTEST body runs twice: suite "local" (in-process backend) and suite "redis" (a fresh redis-server per
 * test, started by tests/helpers/redis_harness.c on a free loopback port; skipped when redis-server is missing).
 * A few tests at the end are backend-specific (redis restart, deleted entries, trimming; local registry; naming,
 * backoff, URL parsing).
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "queue/queue.h"
#include "tests/helpers/redis_harness.h"

/* ---------------------------------------------------------------- fixture */

static struct {
  int redis;
  int skip;
  nq_redis_harness_t h;
  nq_queue_t *open[8]; /* handles to close in fini */
  int nopen;
} T;

static void init_local(void) {
  memset(&T, 0, sizeof T);
}

static void init_redis(void) {
  memset(&T, 0, sizeof T);
  T.redis = 1;
  if (!nq_redis_harness_available() || nq_redis_harness_start(&T.h, 0) != 0) T.skip = 1;
}

static void fini_all(void) {
  for (int i = T.nopen - 1; i >= 0; i--) nq_queue_close(T.open[i]);
  T.nopen = 0;
  if (T.redis) nq_redis_harness_cleanup(&T.h);
}

/* A handle on this test's queue; a second call gives another handle on the same queue (another "process"). */
static nq_queue_t *qopen(int lease_ms) {
  if (T.skip) cr_skip_test("redis-server not available");
  char url[128];
  if (T.redis) snprintf(url, sizeof url, "%s", T.h.url);
  else snprintf(url, sizeof url, "local://test-%d", (int)getpid());
  nq_queue_opts_t o = {.lease_ms = lease_ms};
  nq_queue_t *q = NULL;
  nq_err_t e = {0};
  int rc = nq_queue_open(url, &o, &q, &e);
  cr_assert_eq(rc, 0, "open %s: %s", url, e.msg);
  cr_assert(T.nopen < 8);
  T.open[T.nopen++] = q;
  return q;
}

#define QTEST(name)                                                                       \
  static void body_##name(void);                                                          \
  Test(local, name, .init = init_local, .fini = fini_all, .timeout = 60) { body_##name(); } \
  Test(redis, name, .init = init_redis, .fini = fini_all, .timeout = 60) { body_##name(); } \
  static void body_##name(void)

static long long mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms) {
  struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static void pub(nq_queue_t *q, const char *topic, const char *body) {
  nq_err_t e = {0};
  int rc = nq_queue_publish(q, topic, body, strlen(body), &e);
  cr_assert_eq(rc, 0, "publish: %s", e.msg);
}

/* fetch from one topic; returns n and the deliveries in *d */
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

/* ---------------------------------------------------------------- conformance */

QTEST(publish_fetch_ack) {
  nq_queue_t *q = qopen(30000);
  pub(q, "tasks:noop:cpu", "m1");
  pub(q, "tasks:noop:cpu", "m2");
  pub(q, "tasks:noop:cpu", "{\"x\":\"three\"}");
  nq_delivery_t *d;
  int n = fetch1(q, "tasks:noop:cpu", "stage:noop", "c1", 10, 0, &d);
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
  for (int i = 0; i < 3; i++) ack(q, "stage:noop", &d[i]);
  ack(q, "stage:noop", &d[0]); /* a second ack is a no-op */
  nq_delivery_free_array(d, n);
  cr_assert_eq(fetch1(q, "tasks:noop:cpu", "stage:noop", "c1", 10, 0, &d), 0);
  st = stats(q, "tasks:noop:cpu", "stage:noop");
  cr_assert_eq(st.in_flight, 0);
  cr_assert_eq(st.depth, 0);
}

QTEST(binary_safe_body) {
  nq_queue_t *q = qopen(30000);
  const char body[] = "line1\nline2\ttab";
  cr_assert_eq(nq_queue_publish(q, "t", body, sizeof body - 1, NULL), 0);
  nq_delivery_t *d;
  cr_assert_eq(fetch1(q, "t", "g", "c", 1, 0, &d), 1);
  cr_assert_eq(d[0].len, sizeof body - 1);
  cr_assert_eq(memcmp(d[0].body, body, sizeof body - 1), 0);
  /* nack keeps a body with newlines intact through the delayed set */
  cr_assert_eq(nq_queue_nack(q, "g", &d[0], 50, NULL, NULL), 0);
  nq_delivery_free_array(d, 1);
  cr_assert_eq(fetch1(q, "t", "g", "c", 1, 2000, &d), 1);
  cr_assert_str_eq(d[0].body, body);
  nq_delivery_free_array(d, 1);
}

QTEST(lease_expiry_reclaims) {
  nq_queue_t *q = qopen(300);
  nq_queue_t *q2 = qopen(300);
  pub(q, "t", "job-1");
  nq_delivery_t *d, *d2;
  cr_assert_eq(fetch1(q, "t", "g", "c1", 5, 0, &d), 1);
  cr_assert_eq(d[0].delivery_count, 1);
  /* leased to c1: nobody else gets it */
  cr_assert_eq(fetch1(q2, "t", "g", "c2", 5, 0, &d2), 0);
  sleep_ms(450);
  cr_assert_eq(fetch1(q2, "t", "g", "c2", 5, 0, &d2), 1);
  cr_assert_str_eq(d2[0].id, d[0].id);
  cr_assert_str_eq(d2[0].body, "job-1");
  cr_assert_eq(d2[0].delivery_count, 2);
  ack(q2, "g", &d2[0]);
  sleep_ms(450);
  nq_delivery_t *d3;
  cr_assert_eq(fetch1(q, "t", "g", "c1", 5, 0, &d3), 0); /* acked: never again */
  nq_delivery_free_array(d, 1);
  nq_delivery_free_array(d2, 1);
}

QTEST(nack_delay_new_body) {
  nq_queue_t *q = qopen(30000);
  pub(q, "t", "attempt-1");
  nq_delivery_t *d;
  cr_assert_eq(fetch1(q, "t", "g", "c", 1, 0, &d), 1);
  nq_err_t e = {0};
  cr_assert_eq(nq_queue_nack(q, "g", &d[0], 600, "attempt-2", &e), 0, "%s", e.msg);
  nq_queue_stats_t st = stats(q, "t", "g");
  cr_assert_eq(st.delayed, 1);
  cr_assert_eq(st.in_flight, 0);
  /* a second nack of the same delivery does not double the retry */
  cr_assert_eq(nq_queue_nack(q, "g", &d[0], 600, "attempt-2", &e), 0, "%s", e.msg);
  cr_assert_eq(stats(q, "t", "g").delayed, 1);
  nq_delivery_free_array(d, 1);
  cr_assert_eq(fetch1(q, "t", "g", "c", 1, 0, &d), 0); /* not visible before the delay */
  long long t0 = mono_ms();
  /* a blocking fetch wakes when the retry is due, not at the end of its block */
  cr_assert_eq(fetch1(q, "t", "g", "c", 1, 5000, &d), 1);
  long long dt = mono_ms() - t0;
  cr_assert(dt >= 400 && dt < 3000, "woke after %lld ms", dt);
  cr_assert_str_eq(d[0].body, "attempt-2");
  cr_assert_eq(stats(q, "t", "g").delayed, 0);
  /* nack with no delay and the body kept */
  cr_assert_eq(nq_queue_nack(q, "g", &d[0], 0, NULL, &e), 0, "%s", e.msg);
  nq_delivery_free_array(d, 1);
  cr_assert_eq(fetch1(q, "t", "g", "c", 1, 1000, &d), 1);
  cr_assert_str_eq(d[0].body, "attempt-2");
  ack(q, "g", &d[0]);
  nq_delivery_free_array(d, 1);
}

QTEST(dead_letter_requeue_purge) {
  nq_queue_t *q = qopen(30000);
  pub(q, "tasks:a:cpu", "bad-1");
  pub(q, "tasks:a:cpu", "bad-2");
  pub(q, "tasks:a:cpu", "bad-3");
  nq_delivery_t *d;
  cr_assert_eq(fetch1(q, "tasks:a:cpu", "g", "c", 3, 0, &d), 3);
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
  /* requeue all: back on its topic, out of the DLQ */
  cr_assert_eq(nq_queue_dlq_requeue(q, NULL, &n, &e), 0, "%s", e.msg);
  cr_assert_eq(n, 1);
  cr_assert_eq(nq_queue_dlq_list(q, 10, &x, &n, &e), 0);
  cr_assert_eq(n, 0);
  nq_delivery_t *r;
  cr_assert_eq(fetch1(q, "tasks:a:cpu", "g", "c", 3, 0, &r), 1);
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
  char id[128];
  snprintf(id, sizeof id, "%s", x[1].id);
  char body1[32];
  snprintf(body1, sizeof body1, "%s", x[1].body);
  nq_dlq_entries_free(x, n);
  cr_assert_eq(nq_queue_dlq_requeue(q, id, &n, &e), 0, "%s", e.msg);
  cr_assert_eq(n, 1);
  cr_assert_eq(fetch1(q, "tasks:a:cpu", "g", "c", 3, 0, &r), 1);
  cr_assert_str_eq(r[0].body, body1);
  ack(q, "g", &r[0]);
  nq_delivery_free_array(r, 1);
  cr_assert_neq(nq_queue_dlq_requeue(q, id, &n, &e), 0); /* gone */
  cr_assert_eq(nq_queue_dlq_purge(q, &n, &e), 0, "%s", e.msg);
  cr_assert_eq(n, 2);
  cr_assert_eq(nq_queue_dlq_list(q, 10, &x, &n, &e), 0);
  cr_assert_eq(n, 0);
  cr_assert_eq(stats(q, "tasks:a:cpu", "g").dead, 0);
  cr_assert_eq(stats(q, "tasks:a:cpu", "g").in_flight, 0);
  nq_delivery_free_array(d, 3);
}

QTEST(extend_lease_prevents_reclaim) {
  nq_queue_t *q = qopen(300);
  nq_queue_t *q2 = qopen(300);
  pub(q, "t", "long-task");
  nq_delivery_t *d, *d2;
  cr_assert_eq(fetch1(q, "t", "g", "c1", 1, 0, &d), 1);
  nq_err_t e = {0};
  for (int i = 0; i < 8; i++) { /* 800 ms, well past the 300 ms lease */
    sleep_ms(100);
    cr_assert_eq(nq_queue_extend_lease(q, "g", "c1", &d[0], &e), 0, "%s", e.msg);
    cr_assert_eq(fetch1(q2, "t", "g", "c2", 1, 0, &d2), 0, "reclaimed despite heartbeat at %d", i);
  }
  sleep_ms(450); /* heartbeat stopped: reclaimable */
  cr_assert_eq(fetch1(q2, "t", "g", "c2", 1, 0, &d2), 1);
  cr_assert_eq(d2[0].delivery_count, 2);
  ack(q2, "g", &d2[0]);
  /* extending an acked message says so */
  cr_assert_eq(nq_queue_extend_lease(q, "g", "c1", &d[0], &e), NQ_ENOENT);
  nq_delivery_free_array(d, 1);
  nq_delivery_free_array(d2, 1);
}

QTEST(batch_fetch_count) {
  nq_queue_t *q = qopen(30000);
  char b[32];
  for (int i = 0; i < 250; i++) {
    snprintf(b, sizeof b, "m%03d", i);
    pub(q, "t", b);
  }
  cr_assert_eq(stats(q, "t", "g").depth, 250);
  int seen = 0;
  int sizes[] = {100, 100, 50, 0};
  for (int round = 0; round < 4; round++) {
    nq_delivery_t *d;
    int n = fetch1(q, "t", "g", "c", 100, 0, &d);
    cr_assert_eq(n, sizes[round], "round %d got %d", round, n);
    for (int i = 0; i < n; i++) {
      snprintf(b, sizeof b, "m%03d", seen++);
      cr_assert_str_eq(d[i].body, b); /* FIFO */
      ack(q, "g", &d[i]);
    }
    nq_delivery_free_array(d, n);
  }
  nq_queue_stats_t st = stats(q, "t", "g");
  cr_assert_eq(st.depth, 0);
  cr_assert_eq(st.in_flight, 0);
}

typedef struct {
  nq_queue_t *q;
  int delay_ms;
  const char *topic;
  const char *job;
} pub_arg_t;

static void *pub_later(void *p) {
  pub_arg_t *a = p;
  sleep_ms(a->delay_ms);
  if (a->topic) nq_queue_publish(a->q, a->topic, "wake", 4, NULL);
  if (a->job) nq_queue_publish_result(a->q, a->job, "{\"late\":1}", NULL);
  return NULL;
}

QTEST(blocking_fetch_wakes_on_publish) {
  nq_queue_t *q = qopen(30000);
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
  nq_queue_t *q = qopen(30000);
  nq_delivery_t *d;
  /* g2 exists before anything is published (a group created after another group consumed a message may or
   * may not see it, depending on trimming/compaction) */
  cr_assert_eq(fetch1(q, "tasks:x:cpu", "g2", "c", 10, 0, &d), 0);
  pub(q, "tasks:x:cpu", "x1");
  pub(q, "tasks:x:any", "y1"); /* published before any group of this topic exists: still seen */
  const char *topics[] = {"tasks:x:cpu", "tasks:x:any"};
  int n = 0;
  cr_assert_eq(nq_queue_fetch(q, topics, 2, "g1", "c", 10, 0, &d, &n, NULL), 0);
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
  cr_assert_eq(fetch1(q, "tasks:x:cpu", "g2", "c", 10, 0, &d), 1);
  cr_assert_str_eq(d[0].body, "x1");
  ack(q, "g2", &d[0]);
  nq_delivery_free_array(d, 1);
}

QTEST(results_cursor) {
  nq_queue_t *q = qopen(30000);
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
}

QTEST(job_state_counts_each_task_once) {
  nq_queue_t *q = qopen(30000);
  nq_err_t e = {0};
  char *meta = (char *)1;
  cr_assert_eq(nq_queue_job_get(q, "J", &meta, &e), 0);
  cr_assert_null(meta);
  nq_job_counts_t c;
  cr_assert_eq(nq_queue_job_counts(q, "J", &c, &e), 0);
  cr_assert(c.total == -1 && c.ok == 0 && c.failed == 0 && c.dead == 0);
  cr_assert_eq(nq_queue_job_put(q, "J", "{\"name\":\"cap\",\"output\":\"file:///o\"}", &e), 0, "%s", e.msg);
  cr_assert_eq(nq_queue_job_get(q, "J", &meta, &e), 0);
  cr_assert_str_eq(meta, "{\"name\":\"cap\",\"output\":\"file:///o\"}");
  free(meta);
  cr_assert_eq(nq_queue_job_set_total(q, "J", 3, &e), 0);
  int ch = -1;
  cr_assert_eq(nq_queue_job_mark(q, "J", "J/000001", "ok", &c, &ch, &e), 0, "%s", e.msg);
  cr_assert(ch == 1 && c.total == 3 && c.ok == 1 && c.failed == 0 && c.dead == 0);
  cr_assert_eq(nq_queue_job_mark(q, "J", "J/000001", "ok", &c, &ch, &e), 0); /* redelivery: counted once */
  cr_assert(ch == 0 && c.ok == 1);
  cr_assert_eq(nq_queue_job_mark(q, "J", "J/000002", "dead", &c, &ch, &e), 0);
  cr_assert(ch == 1 && c.ok == 1 && c.dead == 1);
  cr_assert_eq(nq_queue_job_mark(q, "J", "J/000002", "ok", &c, &ch, &e), 0); /* requeued from DLQ, then ok */
  cr_assert(ch == 1 && c.ok == 2 && c.dead == 0, "ok %lld dead %lld", c.ok, c.dead);
  cr_assert_eq(nq_queue_job_mark(q, "J", "J/000003", "failed", NULL, NULL, &e), 0);
  cr_assert_eq(nq_queue_job_counts(q, "J", &c, &e), 0);
  cr_assert(c.total == 3 && c.ok == 2 && c.failed == 1 && c.dead == 0);
  cr_assert_eq(nq_queue_job_mark(q, "J", "J/000003", "weird", &c, &ch, &e), NQ_EINVAL);
  cr_assert_eq(nq_queue_job_counts(q, "J", &c, &e), 0);
  cr_assert_eq(c.failed, 1);
}

QTEST(stats_depth_inflight_delayed_dead) {
  nq_queue_t *q = qopen(30000);
  for (int i = 0; i < 5; i++) pub(q, "t", "m");
  nq_queue_stats_t st = stats(q, "t", "g"); /* group not created yet: everything waits */
  cr_assert_eq(st.depth, 5);
  cr_assert_eq(st.in_flight, 0);
  nq_delivery_t *d;
  cr_assert_eq(fetch1(q, "t", "g", "c", 2, 0, &d), 2);
  st = stats(q, "t", "g");
  cr_assert_eq(st.depth, 3);
  cr_assert_eq(st.lag, 3);
  cr_assert_eq(st.in_flight, 2);
  cr_assert_eq(nq_queue_nack(q, "g", &d[0], 60000, NULL, NULL), 0);
  cr_assert_eq(nq_queue_dead_letter(q, "g", &d[1], "x", NULL), 0);
  st = stats(q, "t", "g");
  cr_assert_eq(st.in_flight, 0);
  cr_assert_eq(st.delayed, 1);
  cr_assert_eq(st.dead, 1);
  cr_assert_eq(st.depth, 3);
  nq_delivery_free_array(d, 2);
  st = stats(q, "nothing-here", "g");
  cr_assert(st.depth == 0 && st.in_flight == 0 && st.delayed == 0);
}

typedef struct {
  nq_queue_t *q;
  int id;
  int *seen; /* per message index, guarded by mu */
  pthread_mutex_t *mu;
  int *total;
} worker_arg_t;

static void *worker(void *p) {
  worker_arg_t *a = p;
  char cons[32];
  snprintf(cons, sizeof cons, "w%d", a->id);
  const char *topics[] = {"t"};
  int idle = 0;
  while (idle < 5) {
    nq_delivery_t *d = NULL;
    int n = 0;
    if (nq_queue_fetch(a->q, topics, 1, "g", cons, 7, 100, &d, &n, NULL) != 0) break;
    if (n == 0) idle++;
    for (int i = 0; i < n; i++) {
      int k = atoi(d[i].body);
      pthread_mutex_lock(a->mu);
      if (k >= 0 && k < 1000) a->seen[k]++;
      (*a->total)++;
      pthread_mutex_unlock(a->mu);
      nq_queue_ack(a->q, "g", &d[i], NULL);
    }
    nq_delivery_free_array(d, n);
  }
  return NULL;
}

QTEST(threads_each_message_once) {
  nq_queue_t *q = qopen(60000);
  char b[16];
  for (int i = 0; i < 1000; i++) {
    snprintf(b, sizeof b, "%d", i);
    pub(q, "t", b);
  }
  static int seen[1000];
  int total = 0;
  pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
  pthread_t th[4];
  worker_arg_t a[4];
  for (int i = 0; i < 4; i++) {
    a[i] = (worker_arg_t){.q = q, .id = i, .seen = seen, .mu = &mu, .total = &total};
    cr_assert_eq(pthread_create(&th[i], NULL, worker, &a[i]), 0);
  }
  for (int i = 0; i < 4; i++) pthread_join(th[i], NULL);
  cr_assert_eq(total, 1000);
  for (int i = 0; i < 1000; i++) cr_assert_eq(seen[i], 1, "message %d seen %d times", i, seen[i]);
  nq_queue_stats_t st = stats(q, "t", "g");
  cr_assert_eq(st.in_flight, 0);
  cr_assert_eq(st.depth, 0);
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
  cr_assert_eq(nq_queue_open("kafka://b1:9092", NULL, &q, &e), NQ_EUNSUPPORTED);
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

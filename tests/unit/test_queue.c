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

/* ---------------------------------------------------------------- batched forms */

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
  nq_queue_t *q = qopen(30000);
  const char *bodies[] = {"first", "", "line\nbreak\ttab", "{\"k\":4}"};
  size_t lens[] = {5, 0, 14, 7};
  nq_err_t e = {0};
  cr_assert_eq(nq_queue_publish_batch(q, "t", bodies, lens, 4, &e), 0, "%s", e.msg);
  cr_assert_eq(nq_queue_publish_batch(q, "t", bodies, lens, 0, &e), 0); /* nothing to do */
  const char *bad[] = {"x", NULL};
  size_t badl[] = {1, 3};
  cr_assert_eq(nq_queue_publish_batch(q, "t", bad, badl, 2, &e), NQ_EINVAL);
  cr_assert_eq(nq_queue_publish_batch(q, "t", bodies, lens, -1, &e), NQ_EINVAL);
  pub_batch(q, "t", 1500, "m%04d"); /* more than one pipeline chunk on redis */
  nq_delivery_t *d;
  int n = fetch1(q, "t", "g", "c", 4, 0, &d);
  cr_assert_eq(n, 4); /* the rejected batch published nothing */
  for (int i = 0; i < 4; i++) {
    cr_assert_eq(d[i].len, lens[i]);
    cr_assert_eq(memcmp(d[i].body, bodies[i], lens[i]), 0);
    cr_assert_eq(d[i].body[lens[i]], 0);
    ack(q, "g", &d[i]);
  }
  nq_delivery_free_array(d, n);
  char want[16];
  int seen = 0;
  while ((n = fetch1(q, "t", "g", "c", 400, 0, &d)) > 0) {
    for (int i = 0; i < n; i++) {
      snprintf(want, sizeof want, "m%04d", seen++);
      cr_assert_str_eq(d[i].body, want); /* FIFO across chunks */
      ack(q, "g", &d[i]);
    }
    nq_delivery_free_array(d, n);
  }
  cr_assert_eq(seen, 1500);
}

QTEST(complete_batch_counts_changed_results) {
  nq_queue_t *q = qopen(300);
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
  sleep_ms(450);
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
  sleep_ms(450);
  cr_assert_eq(fetch1(q, "t", "g", "c2", 10, 0, &r), 0); /* everything acked: nothing redelivered */
  cr_assert_eq(stats(q, "t", "g").in_flight, 0);
  nq_delivery_free_array(d, 5);
}

QTEST(complete_batch_repeat_is_idempotent) {
  nq_queue_t *q = qopen(30000);
  nq_err_t e = {0};
  cr_assert_eq(nq_queue_job_set_total(q, "J", 3, &e), 0);
  pub_batch(q, "t", 3, "%d");
  nq_delivery_t *d;
  cr_assert_eq(fetch1(q, "t", "g", "c", 3, 0, &d), 3);
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
  /* the same call again (a retry after a lost reply): no change, no second result */
  cr_assert_eq(nq_queue_complete_batch(q, "g", it, 3, c, ch, &e), 0, "%s", e.msg);
  for (int i = 0; i < 3; i++) {
    cr_assert_eq(ch[i], 0, "item %d changed on repeat", i);
    COUNTS_EQ(c[i], 3, 3, 0, 0);
  }
  cr_assert_eq(all_results(q, "J", NULL, 0), 3);
  /* NULL outputs are allowed */
  cr_assert_eq(nq_queue_complete_batch(q, "g", it, 3, NULL, NULL, &e), 0, "%s", e.msg);
  cr_assert_eq(all_results(q, "J", NULL, 0), 3);
  nq_delivery_free_array(d, 3);
}

QTEST(complete_batch_without_delivery) {
  nq_queue_t *q = qopen(30000);
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
  nq_queue_t *q = qopen(30000);
  nq_err_t e = {0};
  pub(q, "t", "m");
  nq_delivery_t *d;
  cr_assert_eq(fetch1(q, "t", "g", "c", 1, 0, &d), 1);
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
  cr_assert_eq(nq_queue_complete_batch(q, "g", NULL, 0, NULL, NULL, &e), 0);
  /* nothing of item 0 happened */
  cr_assert_eq(stats(q, "t", "g").in_flight, 1);
  cr_assert_eq(all_results(q, "J", NULL, 0), 0);
  nq_job_counts_t jc;
  cr_assert_eq(nq_queue_job_counts(q, "J", &jc, &e), 0);
  COUNTS_EQ(jc, -1, 0, 0, 0);
  nq_delivery_free_array(d, 1);
}

/* The wrappers' fallback loops (a backend without the batch members), on the same queue. */
QTEST(batch_wrappers_fall_back_to_single_forms) {
  nq_queue_t *q = qopen(30000);
  static nq_queue_i vt_single;
  const nq_queue_i *orig = q->vt;
  vt_single = *orig;
  vt_single.publish_batch = NULL;
  vt_single.complete_batch = NULL;
  q->vt = &vt_single;
  pub_batch(q, "t", 3, "f%d");
  nq_delivery_t *d;
  cr_assert_eq(fetch1(q, "t", "g", "c", 5, 0, &d), 3);
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

/* More items than one server-side chunk; results keep item order across chunks. */
QTEST(complete_batch_large) {
  nq_queue_t *q = qopen(30000);
  nq_err_t e = {0};
  enum { N = 700 };
  cr_assert_eq(nq_queue_job_set_total(q, "L", N, &e), 0);
  pub_batch(q, "t", N, "%d");
  nq_delivery_t *d;
  cr_assert_eq(fetch1(q, "t", "g", "c", N, 0, &d), N);
  static nq_completion_t it[N];
  static char task[N][16], res[N][32];
  static nq_job_counts_t c[N];
  static int ch[N];
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
  static char *got[N + 1];
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
  nq_queue_t *q = qopen(30000);
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

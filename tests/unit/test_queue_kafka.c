/* tests/unit/test_queue_kafka.c — the queue conformance scenarios against the Kafka backend.
 *
 * Each test starts a fresh librdkafka mock cluster in-process (tests/helpers/kafka_broker.c): real TCP, real
 * consumer groups, and fault injection (broker down/up, request errors). The scenarios are those of
 * tests/unit/test_queue.c, adapted where Kafka's model differs:
 *   - a consumer gets messages only once its group has assigned it partitions: the mock's first join of a group
 *     waits 3 s, so tests fetch with fetch_until() (poll until the expected count or a deadline) instead of
 *     "block 0 returns it at once";
 *   - order is per partition: FIFO scenarios use topics created with one partition;
 *   - a lease is the consumer's group membership: a consumer that stops polling for lease_ms (hung) or dies
 *     (no heartbeats for session.timeout.ms = lease_ms) loses its partitions and the next owner redelivers its
 *     uncommitted messages with delivery_count 2; extend_lease is the poll that keeps it a member;
 *   - stats.lag is Kafka's consumer lag (high watermark - committed = depth + in_flight).
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "queue/kafka_int.h"
#include "queue/queue.h"
#include "scheduler/scheduler.h"
#include "store/store.h"
#include "tests/helpers/kafka_broker.h"
#include "worker/worker.h"

/* ---------------------------------------------------------------- fixture */

static struct {
  nq_kafka_broker_t b;
  nq_queue_t *open[8];
  int nopen;
} T;

static void init_kafka(void) {
  if (getenv("NQ_KAFKA_DEBUG")) nq_log_setup(NQ_LOG_DEBUG, NQ_LOG_HUMAN);
  memset(&T, 0, sizeof T);
  cr_assert_eq(nq_kafka_broker_start(&T.b, 1), 0, "mock cluster");
}

static void fini_kafka(void) {
  for (int i = T.nopen - 1; i >= 0; i--)
    if (T.open[i]) nq_queue_close(T.open[i]);
  T.nopen = 0;
  nq_kafka_broker_stop(&T.b);
}

/* A handle on the test's cluster (another "process" each time). kv: extra librdkafka properties, NULL-terminated
 * key,value list. */
static nq_queue_t *qopen_kv(int lease_ms, const char *const *kv) {
  int nkv = 0;
  while (kv && kv[2 * nkv]) nkv++;
  nq_queue_opts_t o = {.lease_ms = lease_ms, .kv = kv, .nkv = nkv};
  nq_queue_t *q = NULL;
  nq_err_t e = {0};
  int rc = nq_queue_open(T.b.url, &o, &q, &e);
  cr_assert_eq(rc, 0, "open %s: %s", T.b.url, e.msg);
  cr_assert_str_eq(q->vt->name, "kafka");
  cr_assert(T.nopen < 8);
  T.open[T.nopen++] = q;
  return q;
}

static nq_queue_t *qopen(int lease_ms) { return qopen_kv(lease_ms, NULL); }

static void qclose(nq_queue_t *q) {
  for (int i = 0; i < T.nopen; i++)
    if (T.open[i] == q) T.open[i] = NULL;
  nq_queue_close(q);
}

static void topic(const char *ktopic, int partitions) {
  cr_assert_eq(nq_kafka_broker_topic(&T.b, ktopic, partitions), 0);
}

static long long mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms) {
  struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static void pub(nq_queue_t *q, const char *t, const char *body) {
  nq_err_t e = {0};
  int rc = nq_queue_publish(q, t, body, strlen(body), &e);
  cr_assert_eq(rc, 0, "publish: %s", e.msg);
}

static int fetch1(nq_queue_t *q, const char *t, const char *group, const char *consumer, int max_n, int block_ms,
                  nq_delivery_t **d) {
  nq_err_t e = {0};
  int n = -1;
  const char *topics[] = {t};
  int rc = nq_queue_fetch(q, topics, 1, group, consumer, max_n, block_ms, d, &n, &e);
  cr_assert_eq(rc, 0, "fetch: %s", e.msg);
  cr_assert(n >= 0 && n <= max_n);
  cr_assert((n == 0) == (*d == NULL));
  return n;
}

/* Fetches until `want` deliveries arrived (or timeout_ms passed); returns how many, all in *out (caller frees). */
static int fetch_until(nq_queue_t *q, const char *t, const char *group, const char *consumer, int want, int timeout_ms,
                       nq_delivery_t **out) {
  nq_delivery_t *all = calloc((size_t)want + 1, sizeof *all);
  int n = 0;
  long long t0 = mono_ms();
  while (n < want && mono_ms() - t0 < timeout_ms) {
    nq_delivery_t *d;
    int k = fetch1(q, t, group, consumer, want - n, 200, &d);
    for (int i = 0; i < k; i++) all[n++] = d[i];
    free(d);
  }
  if (n == 0) {
    free(all);
    all = NULL;
  }
  *out = all;
  return n;
}

static void ack(nq_queue_t *q, const char *group, const nq_delivery_t *d) {
  nq_err_t e = {0};
  cr_assert_eq(nq_queue_ack(q, group, d, &e), 0, "ack: %s", e.msg);
}

static nq_queue_stats_t stats(nq_queue_t *q, const char *t, const char *group) {
  nq_queue_stats_t st;
  nq_err_t e = {0};
  cr_assert_eq(nq_queue_stats(q, t, group, &st, &e), 0, "stats: %s", e.msg);
  return st;
}

#define KTEST(name, secs) Test(kafka, name, .init = init_kafka, .fini = fini_kafka, .timeout = secs)

/* ---------------------------------------------------------------- helpers without a broker */

Test(kafka_names, topic_mapping) {
  char b[300];
  nq_err_t e = {0};
  cr_assert_eq(nq_kafka__topic_name("tasks:llm:cpu", b, sizeof b, &e), 0);
  cr_assert_str_eq(b, "nq.tasks.llm.cpu");
  cr_assert_eq(nq_kafka__topic_name("a b/c\xff-d_e.f", b, sizeof b, &e), 0);
  cr_assert_str_eq(b, "nq.a_b_c_-d_e.f");
  cr_assert_eq(nq_kafka__topic_name("", b, sizeof b, &e), NQ_EINVAL);
  cr_assert_eq(nq_kafka__topic_name("retry", b, sizeof b, &e), NQ_EINVAL); /* would be our own nq.retry */
  cr_assert(strstr(e.msg, "reserved"), "%s", e.msg);
  char lon[260];
  memset(lon, 'x', sizeof lon - 1);
  lon[sizeof lon - 1] = 0;
  cr_assert_eq(nq_kafka__topic_name(lon, b, sizeof b, &e), NQ_EINVAL);
}

Test(kafka_names, commit_metadata_and_delivery_count) {
  int64_t f;
  unsigned n;
  cr_assert_eq(nq_kafka__meta_parse("nq1;17;3", 8, &f, &n), 0);
  cr_assert(f == 17 && n == 3);
  cr_assert_eq(nq_kafka__meta_parse("nq1;17;3x", 9, &f, &n), -1);
  cr_assert_eq(f, -1);
  cr_assert_eq(nq_kafka__meta_parse("", 0, &f, &n), -1);
  cr_assert_eq(nq_kafka__meta_parse(NULL, 0, &f, &n), -1);
  cr_assert_eq(nq_kafka__meta_parse("nq1;-5;1", 8, &f, &n), -1);
  /* committed 10 with F 13: offset 10 (the head) was delivered n0 times, 11..12 once, 13+ never */
  cr_assert_eq(nq_kafka__delivery_count(10, 10, 13, 2), 3);
  cr_assert_eq(nq_kafka__delivery_count(12, 10, 13, 2), 2);
  cr_assert_eq(nq_kafka__delivery_count(13, 10, 13, 2), 1);
  cr_assert_eq(nq_kafka__delivery_count(10, 10, -1, 0), 1); /* no metadata: first delivery */
  int32_t p = nq_kafka__key_partition("job-1", 4);
  cr_assert(p >= 0 && p < 4);
  cr_assert_eq(p, nq_kafka__key_partition("job-1", 4));
  int distinct[4] = {0};
  char k[32];
  for (int i = 0; i < 64; i++) {
    snprintf(k, sizeof k, "job-%d", i);
    distinct[nq_kafka__key_partition(k, 4)] = 1;
  }
  cr_assert_eq(distinct[0] + distinct[1] + distinct[2] + distinct[3], 4);
}

/* ---------------------------------------------------------------- conformance */

KTEST(publish_fetch_ack, 60) {
  topic("nq.tasks.noop.cpu", 1);
  nq_queue_t *q = qopen(10000);
  pub(q, "tasks:noop:cpu", "m1");
  pub(q, "tasks:noop:cpu", "m2");
  pub(q, "tasks:noop:cpu", "{\"x\":\"three\"}");
  nq_delivery_t *d;
  int n = fetch_until(q, "tasks:noop:cpu", "stage:noop", "c1", 3, 15000, &d);
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
  cr_assert_eq(st.lag, 3);
  /* acks out of order: the commit point stays at the oldest undone delivery */
  ack(q, "stage:noop", &d[1]);
  st = stats(q, "tasks:noop:cpu", "stage:noop");
  cr_assert_eq(st.in_flight, 3, "m1 is not done: the commit cannot pass it");
  ack(q, "stage:noop", &d[0]);
  ack(q, "stage:noop", &d[2]);
  ack(q, "stage:noop", &d[0]); /* a second ack is a no-op */
  nq_delivery_free_array(d, n);
  cr_assert_eq(fetch1(q, "tasks:noop:cpu", "stage:noop", "c1", 10, 300, &d), 0);
  st = stats(q, "tasks:noop:cpu", "stage:noop");
  cr_assert_eq(st.in_flight, 0);
  cr_assert_eq(st.depth, 0);
  cr_assert_eq(st.lag, 0);
}

/* Joins the group and waits for its assignment (the mock's first join of a group takes 3 s): publishes a marker,
 * fetches it and acks it. Later fetches of the same (group, consumer) are then immediate. */
static void warm(nq_queue_t *q, const char *t, const char *group, const char *consumer) {
  pub(q, t, "warm-up");
  nq_delivery_t *d;
  cr_assert_eq(fetch_until(q, t, group, consumer, 1, 20000, &d), 1, "no assignment for %s/%s", group, consumer);
  cr_assert_str_eq(d[0].body, "warm-up");
  ack(q, group, &d[0]);
  nq_delivery_free_array(d, 1);
}

KTEST(binary_safe_body_and_nack, 60) {
  topic("nq.t", 1);
  nq_queue_t *q = qopen(10000);
  warm(q, "t", "g", "c");
  const char body[] = "line1\nline2\ttab";
  cr_assert_eq(nq_queue_publish(q, "t", body, sizeof body - 1, NULL), 0);
  nq_delivery_t *d;
  cr_assert_eq(fetch_until(q, "t", "g", "c", 1, 5000, &d), 1);
  cr_assert_eq(d[0].len, sizeof body - 1);
  cr_assert_eq(memcmp(d[0].body, body, sizeof body - 1), 0);
  cr_assert_eq(nq_queue_nack(q, "g", &d[0], 50, NULL, NULL), 0); /* through nq.retry and the mover */
  nq_delivery_free_array(d, 1);
  cr_assert_eq(fetch_until(q, "t", "g", "c", 1, 15000, &d), 1);
  cr_assert_str_eq(d[0].body, body);
  ack(q, "g", &d[0]);
  nq_delivery_free_array(d, 1);
}

KTEST(nack_delay_new_body, 60) {
  topic("nq.t", 1);
  topic("nq.retry", 1);
  nq_queue_t *q = qopen(10000);
  warm(q, "t", "g", "c");
  pub(q, "t", "attempt-1");
  nq_delivery_t *d;
  cr_assert_eq(fetch_until(q, "t", "g", "c", 1, 5000, &d), 1);
  nq_err_t e = {0};
  cr_assert_eq(nq_queue_nack(q, "g", &d[0], 4000, "attempt-2", &e), 0, "%s", e.msg);
  nq_queue_stats_t st = stats(q, "t", "g");
  cr_assert_eq(st.delayed, 1);
  cr_assert_eq(st.in_flight, 0);
  /* a second nack of the same delivery does not double the retry */
  cr_assert_eq(nq_queue_nack(q, "g", &d[0], 4000, "attempt-2", &e), 0, "%s", e.msg);
  cr_assert_eq(stats(q, "t", "g").delayed, 1);
  nq_delivery_free_array(d, 1);
  long long t0 = mono_ms();
  cr_assert_eq(fetch1(q, "t", "g", "c", 1, 1000, &d), 0); /* not visible before the delay */
  /* a blocking fetch wakes when the retry is due (the mover's first join may eat up to 3 s of the 4) */
  cr_assert_eq(fetch1(q, "t", "g", "c", 1, 10000, &d), 1);
  long long dt = mono_ms() - t0;
  cr_assert(dt >= 3500 && dt < 7000, "woke after %lld ms", dt);
  cr_assert_str_eq(d[0].body, "attempt-2");
  st = stats(q, "t", "g");
  cr_assert_eq(st.delayed, 0);
  /* nack with no delay and the body kept: straight back onto the topic */
  cr_assert_eq(nq_queue_nack(q, "g", &d[0], 0, NULL, &e), 0, "%s", e.msg);
  nq_delivery_free_array(d, 1);
  cr_assert_eq(fetch_until(q, "t", "g", "c", 1, 3000, &d), 1);
  cr_assert_str_eq(d[0].body, "attempt-2");
  ack(q, "g", &d[0]);
  nq_delivery_free_array(d, 1);
}

KTEST(dead_letter_requeue_purge, 60) {
  topic("nq.tasks.a.cpu", 1);
  nq_queue_t *q = qopen(10000);
  pub(q, "tasks:a:cpu", "bad-1");
  pub(q, "tasks:a:cpu", "bad-2");
  pub(q, "tasks:a:cpu", "bad-3");
  nq_delivery_t *d;
  cr_assert_eq(fetch_until(q, "tasks:a:cpu", "g", "c", 3, 15000, &d), 3);
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
  /* another handle (process) sees the same DLQ: it is in the log, not in memory */
  nq_queue_t *q2 = qopen(10000);
  cr_assert_eq(nq_queue_dlq_list(q2, 10, &x, &n, &e), 0, "%s", e.msg);
  cr_assert_eq(n, 1);
  nq_dlq_entries_free(x, n);
  cr_assert_eq(nq_queue_dlq_requeue(q, NULL, &n, &e), 0, "%s", e.msg);
  cr_assert_eq(n, 1);
  cr_assert_eq(nq_queue_dlq_list(q2, 10, &x, &n, &e), 0);
  cr_assert_eq(n, 0);
  nq_delivery_t *r;
  cr_assert_eq(fetch_until(q, "tasks:a:cpu", "g", "c", 1, 5000, &r), 1);
  cr_assert_str_eq(r[0].body, "bad-1");
  cr_assert_eq(nq_queue_dead_letter(q, "g", &r[0], "again", &e), 0);
  cr_assert_eq(nq_queue_dead_letter(q, "g", &d[1], "r2", &e), 0);
  cr_assert_eq(nq_queue_dead_letter(q, "g", &d[2], "r3", &e), 0);
  nq_delivery_free_array(r, 1);
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
  cr_assert_eq(fetch_until(q, "tasks:a:cpu", "g", "c", 1, 5000, &r), 1);
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

/* Heartbeats keep the partition; a hung consumer (no poll for the lease, 6 s at least on Kafka) loses it and the
 * message is redelivered. */
KTEST(extend_lease_then_hung_consumer_loses_partition, 120) {
  topic("nq.t", 1);
  nq_queue_t *q = qopen(6000);
  nq_queue_t *q2 = qopen(6000);
  pub(q, "t", "long-task");
  nq_delivery_t *d, *d2;
  cr_assert_eq(fetch_until(q, "t", "g", "c1", 1, 15000, &d), 1);
  cr_assert_eq(d[0].delivery_count, 1);
  nq_err_t e = {0};
  int got = 0;
  for (int i = 0; i < 10 && !got; i++) { /* 10 s of heartbeats, well past the lease, while c2 joins and polls */
    for (int k = 0; k < 4; k++) {
      sleep_ms(200);
      cr_assert_eq(nq_queue_extend_lease(q, "g", "c1", &d[0], &e), 0, "%s", e.msg);
    }
    got = fetch1(q2, "t", "g", "c2", 1, 200, &d2);
  }
  cr_assert_eq(got, 0, "redelivered despite heartbeats");
  /* heartbeat stops: after the lease c1 is out of the group and c2 owns the partition */
  cr_assert_eq(fetch_until(q2, "t", "g", "c2", 1, 30000, &d2), 1);
  cr_assert_str_eq(d2[0].body, "long-task");
  cr_assert_eq(d2[0].delivery_count, 2);
  ack(q2, "g", &d2[0]);
  nq_delivery_free_array(d2, 1);
  /* c1 polls again: it learns it lost the partition; its old delivery is no longer in flight */
  cr_assert_eq(fetch1(q, "t", "g", "c1", 1, 1000, &d2), 0);
  cr_assert_eq(nq_queue_extend_lease(q, "g", "c1", &d[0], &e), NQ_ENOENT);
  cr_assert_eq(nq_queue_ack(q, "g", &d[0], &e), 0); /* a no-op */
  nq_delivery_free_array(d, 1);
  cr_assert_eq(fetch1(q2, "t", "g", "c2", 5, 500, &d2), 0); /* acked: never again */
}

/* At-least-once across a consumer death: a child process fetches (and commits the delivery metadata), then is
 * killed with SIGKILL; after the session timeout the parent's consumer gets the message, delivery_count 2. */
KTEST(consumer_death_redelivers, 90) {
  int pfd[2], cfd[2];
  cr_assert_eq(pipe(pfd), 0);
  cr_assert_eq(pipe(cfd), 0);
  nq_kafka_broker_stop(&T.b); /* fork before any librdkafka thread exists here */
  pid_t pid = fork();
  cr_assert(pid >= 0);
  if (pid == 0) {
    char url[600] = {0};
    if (read(pfd[0], url, sizeof url - 1) <= 0) _exit(2);
    nq_queue_opts_t o = {.lease_ms = 6000};
    nq_queue_t *q = NULL;
    if (nq_queue_open(url, &o, &q, NULL)) _exit(3);
    const char *topics[] = {"t"};
    for (int i = 0; i < 100; i++) {
      nq_delivery_t *d = NULL;
      int n = 0;
      if (nq_queue_fetch(q, topics, 1, "g", "child", 1, 200, &d, &n, NULL)) _exit(4);
      if (n == 1) {
        if (write(cfd[1], d[0].body, d[0].len) < 0) _exit(5);
        for (;;) pause(); /* "working" until killed */
      }
    }
    _exit(6);
  }
  cr_assert_eq(nq_kafka_broker_start(&T.b, 1), 0);
  topic("nq.t", 1);
  nq_queue_t *q = qopen(6000);
  pub(q, "t", "survivor");
  cr_assert_eq(write(pfd[1], T.b.url, strlen(T.b.url)), (ssize_t)strlen(T.b.url));
  char got[64] = {0};
  cr_assert(read(cfd[0], got, sizeof got - 1) > 0, "child fetched nothing");
  cr_assert_str_eq(got, "survivor");
  sleep_ms(1000); /* the child is "working"; its delivery record (an async offset commit) lands within ms */
  kill(pid, SIGKILL);
  waitpid(pid, NULL, 0);
  nq_delivery_t *d;
  cr_assert_eq(fetch_until(q, "t", "g", "parent", 1, 30000, &d), 1);
  cr_assert_str_eq(d[0].body, "survivor");
  cr_assert_eq(d[0].delivery_count, 2, "the child's delivery was recorded in the commit metadata");
  ack(q, "g", &d[0]);
  nq_delivery_free_array(d, 1);
}

KTEST(batch_fetch_count_fifo, 60) {
  topic("nq.t", 1);
  nq_queue_t *q = qopen(10000);
  char b[32];
  const char *bodies[250];
  size_t lens[250];
  char store[250][8];
  for (int i = 0; i < 250; i++) {
    snprintf(store[i], sizeof store[i], "m%03d", i);
    bodies[i] = store[i];
    lens[i] = strlen(store[i]);
  }
  nq_err_t e = {0};
  cr_assert_eq(nq_queue_publish_batch(q, "t", bodies, lens, 250, &e), 0, "%s", e.msg);
  cr_assert_eq(stats(q, "t", "g").depth, 250);
  int seen = 0;
  long long t0 = mono_ms();
  while (seen < 250 && mono_ms() - t0 < 20000) {
    nq_delivery_t *d;
    int n = fetch1(q, "t", "g", "c", 100, 500, &d);
    cr_assert(n <= 100);
    for (int i = 0; i < n; i++) {
      snprintf(b, sizeof b, "m%03d", seen++);
      cr_assert_str_eq(d[i].body, b); /* FIFO within a partition */
      ack(q, "g", &d[i]);
    }
    nq_delivery_free_array(d, n);
  }
  cr_assert_eq(seen, 250);
  nq_queue_stats_t st = stats(q, "t", "g");
  cr_assert_eq(st.depth, 0);
  cr_assert_eq(st.in_flight, 0);
}

KTEST(multi_topic_and_groups, 60) {
  nq_queue_t *q = qopen(10000);
  pub(q, "tasks:x:cpu", "x1");
  pub(q, "tasks:x:any", "y1"); /* published before any group exists: still seen (auto.offset.reset earliest) */
  const char *topics[] = {"tasks:x:cpu", "tasks:x:any"};
  int n = 0, sx = 0, sy = 0;
  long long t0 = mono_ms();
  while (sx + sy < 2 && mono_ms() - t0 < 15000) {
    nq_delivery_t *d;
    cr_assert_eq(nq_queue_fetch(q, topics, 2, "g1", "c", 10, 200, &d, &n, NULL), 0);
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
    nq_delivery_free_array(d, n);
  }
  cr_assert(sx == 1 && sy == 1);
  /* another group on the same topic gets its own copy */
  nq_delivery_t *d;
  cr_assert_eq(fetch_until(q, "tasks:x:cpu", "g2", "c", 1, 15000, &d), 1);
  cr_assert_str_eq(d[0].body, "x1");
  ack(q, "g2", &d[0]);
  nq_delivery_free_array(d, 1);
}

typedef struct {
  nq_queue_t *q;
  int delay_ms;
  const char *job;
} pub_arg_t;

static void *pub_later(void *p) {
  pub_arg_t *a = p;
  sleep_ms(a->delay_ms);
  nq_queue_publish_result(a->q, a->job, "{\"late\":1}", NULL);
  return NULL;
}

KTEST(results_cursor, 60) {
  nq_queue_t *q = qopen(10000);
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
  nq_err_t e = {0};
  cr_assert_eq(nq_queue_read_results(q, "J1", "12abc", 10, 0, &r, &n, &e), NQ_EINVAL);
}

KTEST(job_state_counts_each_task_once, 60) {
  nq_queue_t *q = qopen(10000);
  nq_queue_t *q2 = qopen(10000); /* a second worker process */
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
  cr_assert_eq(nq_queue_job_mark(q2, "J", "J/000001", "ok", &c, &ch, &e), 0); /* redelivered elsewhere */
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
  /* a fresh process folds the log from the start and agrees */
  nq_queue_t *q3 = qopen(10000);
  cr_assert_eq(nq_queue_job_counts(q3, "J", &c, &e), 0);
  cr_assert(c.total == 3 && c.ok == 2 && c.failed == 1 && c.dead == 0);
}

KTEST(stats_depth_inflight_delayed_dead, 60) {
  topic("nq.t", 2);
  nq_queue_t *q = qopen(10000);
  for (int i = 0; i < 5; i++) pub(q, "t", "m");
  nq_queue_stats_t st = stats(q, "t", "g"); /* no group yet: everything waits */
  cr_assert_eq(st.depth, 5);
  cr_assert_eq(st.in_flight, 0);
  cr_assert_eq(st.lag, 5);
  nq_delivery_t *d;
  cr_assert_eq(fetch_until(q, "t", "g", "c", 2, 15000, &d), 2);
  st = stats(q, "t", "g");
  cr_assert_eq(st.depth, 3);
  cr_assert_eq(st.in_flight, 2);
  cr_assert_eq(st.lag, 5); /* Kafka's lag: high watermark - committed */
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
}

typedef struct {
  nq_queue_t *q;
  int id;
  int *seen;
  pthread_mutex_t *mu;
  int *total, *uniq, *mine;
} worker_arg_t;

static void ack_all(nq_queue_t *q, nq_delivery_t *d, int n) {
  for (int i = 0; i < n; i++) nq_queue_ack(q, "g", &d[i], NULL);
  nq_delivery_free_array(d, n);
}

/* A consumer that works 10 ms per message and acks a batch only after it has fetched the next one: whenever a
 * rebalance is served (inside a fetch) it holds deliveries in flight, so revocations are deferred until their
 * tasks are done -- the path where a partition must hand out nothing more while it waits. */
static void *worker(void *p) {
  worker_arg_t *a = p;
  char cons[32];
  snprintf(cons, sizeof cons, "w%d", a->id);
  const char *topics[] = {"t"};
  long long t0 = mono_ms();
  nq_delivery_t *prev = NULL;
  int nprev = 0;
  /* every consumer keeps polling until all messages are in: one that stopped early would keep its partitions
   * (a member that does not poll) until max.poll.interval.ms */
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
    if (n) sleep_ms(10 * n);
    ack_all(a->q, prev, nprev);
    prev = d;
    nprev = n;
  }
  ack_all(a->q, prev, nprev);
  return NULL;
}

/* Four consumers of one group join one after another while messages flow (each join is a cooperative rebalance
 * that moves partitions away from busy members). Nothing is lost. A clean revocation commits what is done and
 * waits for the deliveries in flight, so it duplicates nothing; but a member can lose its assignment without a
 * commit, and its acked-but-uncommitted messages run again -- Kafka's at-least-once: when it misses its session or
 * poll deadline (a loaded machine), or when an offset commit was queued behind its JoinGroup on the coordinator
 * connection (the mock holds a JoinGroup ~session.timeout.ms - 1 s; the commit then meets the new generation,
 * ILLEGAL_GENERATION, and librdkafka 2.0 declares the whole assignment lost). The second can rerun a few hundred
 * messages, so duplicates are bounded per message, not in total. */
KTEST(threads_no_loss_across_rebalances, 120) {
  topic("nq.t", 4);
  /* The mock holds every rebalance for session.timeout.ms - 1 s (it cannot tell that all members have rejoined), and
   * a cooperative hand-over takes two: a 4 s session (above the mock's 3 s initial join delay) keeps that short;
   * frequent heartbeats tell members of a rebalance sooner. */
  const char *kv[] = {"session.timeout.ms", "4000", "heartbeat.interval.ms", "300", NULL};
  nq_queue_t *q = qopen_kv(6000, kv);
  const char *bodies[1000];
  size_t lens[1000];
  static char b[1000][8];
  for (int i = 0; i < 1000; i++) {
    lens[i] = (size_t)snprintf(b[i], sizeof b[i], "%d", i);
    bodies[i] = b[i];
  }
  nq_err_t e = {0};
  cr_assert_eq(nq_queue_publish_batch(q, "t", bodies, lens, 1000, &e), 0, "publish: %s", e.msg);
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
    a[i] = (worker_arg_t){.q = q, .id = i, .seen = seen, .mu = &mu, .total = &total, .uniq = &uniq, .mine = &mine[i]};
    cr_assert_eq(pthread_create(&th[i], NULL, worker, &a[i]), 0);
  }
  for (int i = 0; i < 4; i++) pthread_join(th[i], NULL);
  /* Drain: after a lost assignment, acked-but-uncommitted messages come again (depth > 0 until they do); fetch them
   * through every member until a full second brings nothing. */
  const char *topics[] = {"t"};
  for (long long quiet = mono_ms(); mono_ms() - quiet < 1000 && mono_ms() - t0 < 90000;) {
    for (int c = 0; c < 4; c++) {
      char cons[8];
      snprintf(cons, sizeof cons, "w%d", c);
      nq_delivery_t *d = NULL;
      int n = 0;
      cr_assert_eq(nq_queue_fetch(q, topics, 1, "g", cons, 50, 50, &d, &n, &e), 0, "%s", e.msg);
      for (int i = 0; i < n; i++) {
        int k = atoi(d[i].body);
        if (k >= 0 && k < 1000) seen[k]++;
        total++;
      }
      if (n) quiet = mono_ms();
      ack_all(q, d, n);
    }
  }
  int dup = 0;
  for (int i = 0; i < 1000; i++) {
    cr_assert(seen[i] >= 1, "message %d lost (%d of 1000 seen)", i, uniq);
    cr_assert(seen[i] <= 3, "message %d delivered %d times", i, seen[i]);
    dup += seen[i] - 1;
  }
  cr_assert_eq(total, 1000 + dup);
  cr_assert(mine[0] > 0 && mine[0] < 1000, "consumers got %d %d %d %d: no rebalance happened", mine[0], mine[1],
            mine[2], mine[3]);
  fprintf(stderr, "threads_no_loss_across_rebalances: per consumer %d %d %d %d, %d duplicates, %lld ms\n", mine[0],
          mine[1], mine[2], mine[3], dup, mono_ms() - t0);
  nq_queue_stats_t st = stats(q, "t", "g");
  cr_assert_eq(st.in_flight, 0);
  cr_assert_eq(st.depth, 0);
}

/* Drain: closing a handle commits what is done and leaves the group at once; what it had not acked goes to the
 * next consumer (no lease to wait for). */
KTEST(close_releases_unacked, 60) {
  topic("nq.t", 1);
  nq_queue_t *q = qopen(10000);
  for (int i = 0; i < 4; i++) pub(q, "t", i < 2 ? "done" : "released");
  nq_delivery_t *d;
  cr_assert_eq(fetch_until(q, "t", "g", "c1", 4, 15000, &d), 4);
  ack(q, "g", &d[0]);
  ack(q, "g", &d[1]);
  nq_delivery_free_array(d, 4);
  qclose(q);
  nq_queue_t *q2 = qopen(10000);
  cr_assert_eq(fetch_until(q2, "t", "g", "c2", 2, 15000, &d), 2);
  cr_assert_str_eq(d[0].body, "released");
  cr_assert_str_eq(d[1].body, "released");
  cr_assert_eq(d[0].delivery_count, 2);
  ack(q2, "g", &d[0]);
  ack(q2, "g", &d[1]);
  nq_delivery_free_array(d, 2);
  cr_assert_eq(fetch1(q2, "t", "g", "c2", 5, 500, &d), 0);
}

/* Faults: broker down -> publish fails with a retriable error within message.timeout.ms; back up -> it works;
 * transient request errors are retried inside librdkafka; a failed offset commit is retried by a later call. */
KTEST(broker_faults, 90) {
  topic("nq.t", 1);
  const char *kv[] = {"message.timeout.ms", "1500", NULL};
  nq_queue_t *q = qopen_kv(10000, kv);
  warm(q, "t", "g", "c");
  cr_assert_eq(nq_kafka_broker_down(&T.b, 1), 0);
  nq_err_t e = {0};
  long long t0 = mono_ms();
  cr_assert_eq(nq_queue_publish(q, "t", "lost?", 5, &e), NQ_EQUEUE);
  cr_assert(e.flags & NQ_ERR_RETRIABLE, "flags %u: %s", e.flags, e.msg);
  cr_assert(mono_ms() - t0 < 6000);
  cr_assert_eq(nq_kafka_broker_up(&T.b, 1), 0);
  /* the client reconnects with backoff: a caller retries retriable errors (the worker does) */
  int ok = 0;
  for (t0 = mono_ms(); !ok && mono_ms() - t0 < 30000;) ok = nq_queue_publish(q, "t", "after-up", 8, &e) == 0;
  cr_assert(ok, "publish after the broker came back: %s", e.msg);
  nq_kafka_broker_fail_requests(&T.b, NQ_KAFKA_API_PRODUCE, 2, RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS);
  pub(q, "t", "after-errors");
  nq_delivery_t *d;
  /* the warm-up's commit may not have reached the broker before it went down: at-least-once then delivers it again
   * first. Such a redelivery is acked and skipped; anything else must be the two new messages, in order. */
  for (long long t1 = mono_ms();;) {
    cr_assert_lt(mono_ms() - t1, 20000, "no delivery after the broker came back");
    cr_assert_eq(fetch_until(q, "t", "g", "c", 1, 20000, &d), 1);
    if (strcmp(d[0].body, "warm-up") != 0) break;
    ack(q, "g", &d[0]);
    nq_delivery_free_array(d, 1);
  }
  nq_delivery_t *d2;
  cr_assert_eq(fetch_until(q, "t", "g", "c", 1, 20000, &d2), 1);
  d = realloc(d, 2 * sizeof *d);
  d[1] = d2[0];
  free(d2);
  cr_assert_str_eq(d[0].body, "after-up");
  cr_assert_str_eq(d[1].body, "after-errors");
  nq_kafka_broker_fail_requests(&T.b, NQ_KAFKA_API_OFFSET_COMMIT, 1, RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT);
  ack(q, "g", &d[0]); /* its commit fails: the state stays dirty */
  ack(q, "g", &d[1]); /* this commit covers both */
  nq_delivery_free_array(d, 2);
  nq_queue_stats_t st = stats(q, "t", "g");
  cr_assert_eq(st.in_flight, 0);
  cr_assert_eq(st.lag, 0);
  /* slow broker: still correct */
  cr_assert_eq(nq_kafka_broker_rtt(&T.b, 1, 100), 0);
  pub(q, "t", "slow");
  cr_assert_eq(fetch_until(q, "t", "g", "c", 1, 30000, &d), 1);
  ack(q, "g", &d[0]);
  nq_delivery_free_array(d, 1);
}

KTEST(open_errors, 30) {
  nq_queue_t *q = NULL;
  nq_err_t e = {0};
  const char *bad[] = {"no.such.property", "1", NULL};
  nq_queue_opts_t o = {.kv = bad, .nkv = 1};
  cr_assert_eq(nq_queue_open(T.b.url, &o, &q, &e), NQ_ECONFIG);
  cr_assert(strstr(e.msg, "no.such.property"), "%s", e.msg);
  cr_assert_null(q);
  char url[600];
  snprintf(url, sizeof url, "%s?bogus", T.b.url);
  cr_assert_eq(nq_queue_open(url, NULL, &q, &e), NQ_EINVAL);
  cr_assert_eq(nq_queue_open("kafka://", NULL, &q, &e), NQ_EINVAL);
  /* properties in the URL reach librdkafka; the stored URL drops them (they may be secrets) */
  snprintf(url, sizeof url, "%s?client.id=nq-test&socket.timeout.ms=5000", T.b.url);
  cr_assert_eq(nq_queue_open(url, NULL, &q, &e), 0, "%s", e.msg);
  cr_assert_str_eq(q->url, T.b.url);
  nq_queue_close(q);
  /* nothing listens on port 1: a retriable error naming the address */
  cr_assert_eq(nq_queue_open("kafka://127.0.0.1:1", NULL, &q, &e), NQ_EQUEUE);
  cr_assert(e.flags & NQ_ERR_RETRIABLE);
  cr_assert(strstr(e.msg, "127.0.0.1:1"), "%s", e.msg);
}

/* End to end: the scheduler submits a noop job over Kafka, two worker threads run it (every task fails once with a
 * retriable error, so each goes through nq.retry with backoff), the job completes with a manifest and _SUCCESS. */
KTEST(worker_runs_noop_job_end_to_end, 150) {
  char dir[] = "/tmp/nq_kafka_e2e_XXXXXX";
  cr_assert(mkdtemp(dir));
  char path[300];
  snprintf(path, sizeof path, "%s/in.jsonl", dir);
  FILE *f = fopen(path, "w");
  cr_assert(f);
  for (int i = 0; i < 12; i++) fprintf(f, "{\"id\":\"r%02d\",\"prompt\":\"p %d\"}\n", i, i);
  fclose(f);
  const char *yaml = "job: kjob\nstage: noop\ndataset: {format: jsonl, path: in.jsonl}\noutput: out\nbatch_size: 1\n"
                     "max_attempts: 3\nparams: {fail_attempts: 1}\n";
  nq_job_spec_t spec;
  nq_err_t e = {0};
  cr_assert_eq(nq_job_spec_load_string(yaml, strlen(yaml), "job.yaml", dir, &spec, &e), 0, "%s", e.msg);
  nq_store_cfg_t sc = {.file_root = dir};
  nq_store_t *st = NULL;
  cr_assert_eq(nq_store_new(&sc, &st, &e), 0, "%s", e.msg);
  nq_queue_t *q = qopen(10000);
  char job[160];
  cr_assert_eq(nq_sched_submit(q, st, &spec, job, sizeof job, NULL, NULL, &e), 0, "%s", e.msg);
  nq_job_counts_t c;
  cr_assert_eq(nq_queue_job_counts(q, job, &c, &e), 0, "%s", e.msg);
  cr_assert_eq(c.total, 12);
  nq_queue_t *wq = qopen(10000); /* the worker process */
  const char *stages[] = {"noop"};
  nq_worker_opts_t wo = {.queue = wq, .store = st, .stages = stages, .nstages = 1, .device = "cpu", .threads = 2,
                         .batch = 4, .block_ms = 300, .backoff_base_ms = 200, .backoff_max_ms = 1000,
                         .exit_when_idle = 1, .idle_ms = 12000};
  nq_worker_stats_t ws = {0};
  cr_assert_eq(nq_worker_run(&wo, &ws, &e), 0, "%s", e.msg);
  cr_assert_eq(ws.ok, 12, "ok %lld retried %lld dead %lld", ws.ok, ws.retried, ws.dead);
  cr_assert_eq(ws.retried, 12);
  cr_assert_eq(ws.dead, 0);
  cr_assert_eq(nq_queue_job_counts(q, job, &c, &e), 0);
  cr_assert(c.total == 12 && c.ok == 12 && c.dead == 0, "total %lld ok %lld dead %lld", c.total, c.ok, c.dead);
  int complete = 0;
  cr_assert_eq(nq_sched_finalize(q, st, job, &complete, &e), 0, "%s", e.msg);
  cr_assert(complete);
  snprintf(path, sizeof path, "%s/out/%s/_SUCCESS", dir, job);
  cr_assert_eq(access(path, F_OK), 0, "no %s", path);
  snprintf(path, sizeof path, "%s/out/%s/_manifest.jsonl", dir, job);
  f = fopen(path, "r");
  cr_assert(f, "no manifest");
  int rows = 0;
  char line[8192];
  while (fgets(line, sizeof line, f)) rows += strstr(line, "\"status\":\"ok\"") != NULL;
  fclose(f);
  cr_assert_eq(rows, 12);
  nq_queue_stats_t qs = stats(q, "tasks:noop:cpu", "stage:noop");
  cr_assert(qs.depth == 0 && qs.in_flight == 0 && qs.delayed == 0, "depth %lld in_flight %lld delayed %lld", qs.depth,
            qs.in_flight, qs.delayed);
  nq_store_free(st);
  nq_job_spec_deinit(&spec);
  char cmd[400];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  cr_assert_eq(system(cmd), 0);
}

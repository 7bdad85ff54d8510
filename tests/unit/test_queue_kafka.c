/* tests/unit/test_queue_kafka.c — Kafka-only queue tests.
 *
 * The queue conformance scenarios (at-least-once, retry with backoff, DLQ with reason, lease / membership loss and
 * redelivery, drain on close, stats, results, job state, batches) run against Kafka in tests/unit/test_queue.c,
 * suite "kafka". What stays here is specific to the Kafka backend: its topic-name mapping and commit metadata, a
 * consumer killed with SIGKILL (its partition is reassigned after the session timeout), broker faults (down/up,
 * request errors, latency), open errors, and a worker running a job end to end over Kafka.
 *
 * Each test starts a fresh librdkafka mock cluster in-process (tests/helpers/kafka_broker.c): real TCP, real
 * consumer groups, fault injection. A consumer gets messages only once its group has assigned it partitions (the
 * mock's first join of a group waits 3 s), so tests wait for counts within a deadline (tests/helpers/queue_wait.c).
 */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/log.h"
#include "queue/kafka_int.h"
#include "queue/queue.h"
#include "scheduler/scheduler.h"
#include "store/store.h"
#include "tests/helpers/jobs.h"
#include "tests/helpers/kafka_broker.h"
#include "tests/helpers/queue_wait.h"
#include "worker/worker.h"

/* ---------------------------------------------------------------- fixture */

static struct {
  nq_kafka_broker_t b;
  nq_queue_t *open[8]; /* owned: handles to close in fini */
  int nopen;
} T;

static void init_kafka(void) {
  if (getenv("NQ_KAFKA_DEBUG")) nq_log_setup(NQ_LOG_DEBUG, NQ_LOG_HUMAN);
  memset(&T, 0, sizeof T);
  cr_assert_eq(nq_kafka_broker_start(&T.b, 1), 0, "mock cluster");
}

static void fini_kafka(void) {
  for (int i = T.nopen - 1; i >= 0; i--) nq_queue_close(T.open[i]);
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

static void topic(const char *ktopic, int partitions) {
  cr_assert_eq(nq_kafka_broker_topic(&T.b, ktopic, partitions), 0);
}

#define mono_ms nq_queue_wait_mono_ms
#define sleep_ms nq_queue_wait_sleep_ms

static void pub(nq_queue_t *q, const char *t, const char *body) {
  nq_err_t e = {0};
  int rc = nq_queue_publish(q, t, body, strlen(body), &e);
  cr_assert_eq(rc, 0, "publish: %s", e.msg);
}

/* Fetches until `want` deliveries arrived (or timeout_ms passed); returns how many, all in *out (caller frees). */
static int fetch_until(nq_queue_t *q, const char *t, const char *group, const char *consumer, int want, int timeout_ms,
                       nq_delivery_t **out) {
  nq_err_t e = {0};
  int n = 0;
  const char *topics[] = {t};
  cr_assert_eq(nq_queue_wait_fetch(q, topics, 1, group, consumer, want, timeout_ms, out, &n, &e), 0, "fetch: %s",
               e.msg);
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

/* ---------------------------------------------------------------- consumer death, faults, open, end to end */

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
  const char *yaml = "job: kjob\nstage: noop\ndataset: {format: jsonl, path: in.jsonl}\noutput: out\nbatch_size: 1\n"
                     "max_attempts: 3\nparams: {fail_attempts: 1}\n";
  nq_err_t e = {0};
  nq_store_t *st = NULL;
  nq_queue_t *q = qopen(10000);
  char job[160];
  cr_assert_eq(nq_test_submit_rows(q, dir, 12, yaml, &st, job, sizeof job, &e), 0, "%s", e.msg);
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
  FILE *f = fopen(path, "r");
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
  char cmd[400];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  cr_assert_eq(system(cmd), 0);
}

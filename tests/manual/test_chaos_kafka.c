/* tests/manual/test_chaos_kafka.c — chaos on the Kafka backend with real processes (tracker issue 7 item 4).
 *
 * MANUAL: not built by `make test` (it does not pass yet; see "Status" below). Build and run:
 *   make all    # build/nextq and build/tools/kafka_mock_broker
 *   cc -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Wno-unused-parameter -Wshadow -I. -o build/tests/test_chaos_kafka \
 *      tests/manual/test_chaos_kafka.c tests/helpers/proc.c -ljansson -lcriterion
 *   NQ_BIN=$PWD/build/nextq build/tests/test_chaos_kafka --verbose=0
 *
 * NOOP noop tasks through 3 `nextq worker` processes on the standalone mock broker (tests/tools/kafka_mock_broker,
 * a child process; SIGUSR1/SIGUSR2 take its broker down / bring it up) while a killer SIGKILLs a random worker every
 * KILL_MS and starts a replacement, and the broker is taken down for ~DOWN_MS once mid-run (at 1/4 of the tasks ok).
 * Then every task must be terminal and ok, none lost; every task's output directory must hold exactly its one output
 * file, whole, and the manifest one row per task. Duplicated executions (a task run again after its worker died
 * holding it: the next owner of the partition gets the uncommitted deliveries) are counted from the noop exec log.
 *
 * Status (2026-11-26, 2-core shared box, librdkafka 2.0.2 mock, 500 tasks, --lease-ms 6000):
 *   - no faults (NQ_CHAOS_KAFKA_DOWN=0 NQ_CHAOS_KAFKA_KILL_MS=1000000): 500/500 ok in 45 s, 0 duplicates, outputs
 *     and manifest verified (only the kills>0 assertion fails, as it should). Throughput ~11 tasks/s.
 *   - SIGKILL every 3 s, no outage: ~96 distinct tasks executed (112 executions) in 120 s: the group never settles
 *     (a dead member keeps its partitions until session.timeout = 6 s, and a new member joins every 3 s).
 *     KILL_MS=8000 (+ outage): 125 ok at 32.8 s, did not finish in 150 s.
 *   - outage only (2 s down at 140/500 ok, no kills): ok rose to 242 within ~30 s after the broker came back, then
 *     stalled for good (no progress for 2+ min, no error logged; 413 executions for 242 distinct tasks). During and
 *     after the outage: 3x "group stage:noop: partitions lost with tasks in flight", ~430 "heartbeat ...: kafka queue
 *     extend_lease: nq.tasks.noop.cpu/P/O is not in flight in group stage:noop". Looks like a consumer left with a
 *     paused / never-resumed assignment or a commit point that never advances after a lost assignment (queue/kafka.c
 *     kc_unassign / rebalance path) -- to be investigated by the backend owner.
 *
 * Env: NQ_CHAOS_KAFKA_NOOP (default 500), NQ_CHAOS_KAFKA_KILL_MS (3000), NQ_CHAOS_KAFKA_DOWN_MS (2000),
 * NQ_CHAOS_KAFKA_DOWN (1; 0 = no broker outage),
 * NQ_KAFKA_MOCK (the broker binary; default: tools/kafka_mock_broker next to NQ_BIN). */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <libgen.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tests/helpers/outputs.h"
#include "tests/helpers/proc.h"

extern char **environ;

static char tmp[256];
static char url[600];
static const char *bin;
static pid_t broker = -1;
static int broker_in = -1; /* write end of the broker's stdin: closing it (or dying) stops the broker */
enum { NW = 3 };
static pid_t w[NW]; /* live workers (0: none), SIGKILLed by teardown when an assertion ends the test early */

static int envint(const char *name, int def) {
  const char *v = getenv(name);
  return v && *v ? atoi(v) : def;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static int run(char *out, size_t cap, const char *const *args) {
  int rc = nq_proc_run(bin, tmp, out, cap, args);
  cr_assert_neq(rc, -1, "could not start %s", bin);
  return rc;
}

static pid_t start_worker(void) {
  char log[300];
  snprintf(log, sizeof log, "%s/stderr.log", tmp);
  const char *args[] = {"worker", "--queue", url, "--stages", "noop", "--threads", "2", "--batch", "16",
                        "--lease-ms", "6000", "--set", "backoff_base_ms=100", "--set", "backoff_max_ms=1000", NULL};
  pid_t pid = nq_proc_spawn(bin, NULL, log, args);
  cr_assert_gt(pid, 0, "spawn %s: %s", bin, strerror(errno));
  return pid;
}

static long long counts(const char *job, const char *field) {
  char out[4096];
  if (run(out, sizeof out, (const char *[]){"status", job, "--queue", url, NULL}) != 0) return -1;
  json_t *o = json_loads(out, 0, NULL);
  long long v = o ? json_integer_value(json_object_get(o, field)) : -1;
  json_decref(o);
  return v;
}

/* Starts the mock broker with a pipe on its stdin; returns 0 with `url` set, or -1. */
static int broker_start(const char *mock) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return -1;
  char outp[300], errp[300];
  snprintf(outp, sizeof outp, "%s/broker.out", tmp);
  snprintf(errp, sizeof errp, "%s/broker.log", tmp);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, fds[0], 0);
  posix_spawn_file_actions_addopen(&fa, 1, outp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&fa, 2, errp, O_WRONLY | O_CREAT | O_APPEND, 0644);
  char *argv[] = {(char *)mock, NULL};
  int rc = posix_spawn(&broker, mock, &fa, NULL, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  close(fds[0]);
  if (rc != 0) {
    close(fds[1]);
    broker = -1;
    return -1;
  }
  broker_in = fds[1];
  for (int i = 0; i < 100; i++) { /* up to 10 s for the first line */
    FILE *f = fopen(outp, "r");
    if (f) {
      char line[600] = "";
      int got = fgets(line, sizeof line, f) && strchr(line, '\n');
      fclose(f);
      if (got) {
        line[strcspn(line, "\n")] = 0;
        snprintf(url, sizeof url, "%s", line);
        return strncmp(url, "kafka://", 8) == 0 ? 0 : -1;
      }
    }
    if (waitpid(broker, NULL, WNOHANG) == broker) {
      broker = -1;
      return -1;
    }
    usleep(100000);
  }
  return -1;
}

/* Checks a finished job's outputs; returns the number of tasks verified ok. */
static int verify(const char *job, int expect, const char *outname) {
  char dir[600], why[1024] = "";
  snprintf(dir, sizeof dir, "%s/out/%s", tmp, job);
  int ok = nq_check_job_outputs(dir, expect, outname, why, sizeof why);
  cr_assert_geq(ok, 0, "%s", why);
  return ok;
}

static void setup(void) {
  bin = getenv("NQ_BIN");
  if (!bin) bin = "build/nextq";
  snprintf(tmp, sizeof tmp, "/tmp/nq_chaosk_XXXXXX");
  cr_assert(mkdtemp(tmp));
  char mock[600];
  const char *m = getenv("NQ_KAFKA_MOCK");
  if (m && *m) {
    snprintf(mock, sizeof mock, "%s", m);
  } else {
    char b[512];
    snprintf(b, sizeof b, "%s", bin);
    snprintf(mock, sizeof mock, "%s/tools/kafka_mock_broker", dirname(b));
  }
  if (access(mock, X_OK) != 0) cr_skip_test("no mock broker %s (make build/tools/kafka_mock_broker)", mock);
  cr_assert_eq(broker_start(mock), 0, "mock broker %s did not start (see %s/broker.log)", mock, tmp);
}

static void teardown(void) {
  for (int i = 0; i < NW; i++)
    if (w[i] > 0) {
      kill(w[i], SIGKILL);
      nq_proc_wait(w[i]);
      w[i] = 0;
    }
  if (broker > 0) {
    close(broker_in);
    kill(broker, SIGTERM);
    nq_proc_wait(broker);
    broker = -1;
  }
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf %s", tmp);
  if (!getenv("NQ_CHAOS_KEEP") && system(cmd) != 0) fprintf(stderr, "cleanup failed\n");
}

Test(chaos_kafka, kill_workers_and_broker_down_up, .init = setup, .fini = teardown, .timeout = 600) {
  int n = envint("NQ_CHAOS_KAFKA_NOOP", 500), kill_ms = envint("NQ_CHAOS_KAFKA_KILL_MS", 3000),
      down_ms = envint("NQ_CHAOS_KAFKA_DOWN_MS", 2000), do_down = envint("NQ_CHAOS_KAFKA_DOWN", 1);
  char p[400];
  snprintf(p, sizeof p, "%s/noop.jsonl", tmp);
  FILE *f = fopen(p, "w");
  for (int i = 0; i < n; i++) fprintf(f, "{\"id\":\"n%d\",\"prompt\":\"x %d\"}\n", i, i);
  fclose(f);
  snprintf(p, sizeof p, "%s/noop.yaml", tmp);
  f = fopen(p, "w");
  fprintf(f, "job: chaos-kafka\nstage: noop\ndataset: {format: jsonl, path: noop.jsonl}\noutput: out\nmax_attempts: 20\n"
             "params: {sleep_ms: 20, exec_log: %s/exec.log}\n", tmp);
  fclose(f);
  char job[256];
  cr_assert_eq(run(job, sizeof job, (const char *[]){"submit", p, "--queue", url, NULL}), 0, "submit failed");
  for (int i = 0; i < NW; i++) w[i] = start_worker();
  double t0 = now_s(), last_kill = t0, down_at = 0;
  int kills = 0, downs = 0, ups = 0;
  unsigned seed = 4242;
  long long ok = 0;
  for (;;) {
    long long c = counts(job, "ok");
    if (c >= 0) ok = c;
    if (ok == n && ups == downs) break;
    cr_assert_lt(now_s() - t0, 400, "chaos run did not finish in 400 s (ok %lld/%d)", ok, n);
    if (do_down && !downs && ok >= n / 4) {
      cr_assert_eq(kill(broker, SIGUSR1), 0);
      downs = 1;
      down_at = now_s();
      fprintf(stderr, "chaos-kafka: broker down at %lld/%d tasks ok (%.1fs)\n", ok, n, down_at - t0);
    }
    if (downs && !ups && (now_s() - down_at) * 1000 >= down_ms) {
      cr_assert_eq(kill(broker, SIGUSR2), 0);
      ups = 1;
      fprintf(stderr, "chaos-kafka: broker up after %.1fs\n", now_s() - down_at);
    }
    if (ok < n && (now_s() - last_kill) * 1000 >= kill_ms) {
      int v = (int)(rand_r(&seed) % NW);
      kill(w[v], SIGKILL);
      nq_proc_wait(w[v]);
      w[v] = start_worker();
      kills++;
      last_kill = now_s();
    }
    usleep(100000);
  }
  double secs = now_s() - t0;
  cr_assert_eq(run(NULL, 0, (const char *[]){"wait", job, "--queue", url, "--timeout", "60", NULL}), 0);
  for (int i = 0; i < NW; i++) {
    kill(w[i], SIGTERM);
    int rc = nq_proc_wait(w[i]);
    w[i] = 0;
    cr_assert_eq(rc, 0, "worker did not drain cleanly");
  }
  int okv = verify(job, n, "out.json");
  snprintf(p, sizeof p, "%s/exec.log", tmp);
  f = fopen(p, "r");
  cr_assert(f, "no exec log");
  json_t *seen = json_object();
  char line[512];
  long long execs = 0;
  while (fgets(line, sizeof line, f)) {
    execs++;
    json_object_set_new(seen, line, json_true());
  }
  fclose(f);
  long long uniq = (long long)json_object_size(seen);
  json_decref(seen);
  char dlq[4096];
  run(dlq, sizeof dlq, (const char *[]){"dlq", "list", "--queue", url, NULL});
  printf("chaos-kafka: %d noop tasks, %d SIGKILLs, %d broker down/up, %.1fs: terminal %d, ok %d, lost %d, "
         "outputs duplicated or partial 0, duplicated executions %lld (noop executions %lld for %lld tasks), DLQ %s\n",
         n, kills, downs, secs, okv, okv, n - okv, execs - uniq, execs, uniq, dlq[0] ? "not empty" : "empty");
  fflush(stdout);
  cr_assert_eq(okv, n);
  cr_assert_eq(uniq, n, "some noop task never ran");
  cr_assert_str_eq(dlq, "");
  cr_assert_gt(kills, 0);
  cr_assert_eq(downs, do_down ? 1 : 0);
}

/* tests/integration/test_chaos.c — chaos on the Redis backend with real processes.
 *
 * NOOP noop tasks plus LLM tiny-model llm tasks (stories260K) through 3 `nextq worker` processes while a killer
 * SIGKILLs a random worker every KILL_MS and starts a replacement, and the redis-server (AOF, appendfsync everysec)
 * is restarted once mid-run. Then every task must be terminal and ok, none lost; every task's output directory must
 * hold exactly its one output file, whole (no temp files, sizes as recorded), and the manifest one row per task.
 * Duplicated executions (a task run again after its worker died holding it) are counted from the noop exec log
 * and printed: they are expected, and harmless because outputs are idempotent.
 *
 * `make test` runs a short version; `make chaos` the full one (NQ_CHAOS_NOOP=10000 NQ_CHAOS_LLM=200). */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
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
#include "tests/helpers/redis_harness.h"

extern char **environ;

static nq_redis_harness_t rh;
static char tmp[256];
static const char *bin;

static int envint(const char *name, int def) {
  const char *v = getenv(name);
  return v && *v ? atoi(v) : def;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static pid_t spawn(const char *out_path, const char *const *args) {
  char log[300];
  snprintf(log, sizeof log, "%s/stderr.log", tmp);
  pid_t pid = nq_proc_spawn(bin, out_path, log, args);
  cr_assert_gt(pid, 0, "spawn %s: %s", bin, strerror(errno));
  return pid;
}

static int wait_exit(pid_t pid) { return nq_proc_wait(pid); }

static int run(char *out, size_t cap, const char *const *args) {
  int rc = nq_proc_run(bin, tmp, out, cap, args);
  cr_assert_neq(rc, -1, "could not start %s", bin);
  return rc;
}

static pid_t start_worker(void) {
  const char *args[] = {"worker", "--queue", rh.url, "--stages", "noop,llm", "--threads", "2", "--batch", "16",
                        "--lease-ms", "1500", "--set", "backoff_base_ms=100", "--set", "backoff_max_ms=1000", NULL};
  return spawn(NULL, args);
}

static long long counts(const char *job, const char *field) {
  char out[4096];
  if (run(out, sizeof out, (const char *[]){"status", job, "--queue", rh.url, NULL}) != 0) return -1;
  json_t *o = json_loads(out, 0, NULL);
  long long v = o ? json_integer_value(json_object_get(o, field)) : -1;
  json_decref(o);
  return v;
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
  snprintf(tmp, sizeof tmp, "/tmp/nq_chaos_XXXXXX");
  cr_assert(mkdtemp(tmp));
  if (nq_redis_harness_start(&rh, 1) != 0) cr_skip_test("redis-server not available");
}

static void teardown(void) {
  nq_redis_harness_cleanup(&rh);
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf %s", tmp);
  if (system(cmd) != 0) fprintf(stderr, "cleanup failed\n");
}

Test(chaos, kill_workers_and_restart_redis, .init = setup, .fini = teardown, .timeout = 900) {
  int n_noop = envint("NQ_CHAOS_NOOP", 2000), n_llm = envint("NQ_CHAOS_LLM", 40), kill_ms = envint("NQ_CHAOS_KILL_MS", 1500);
  char p[400];
  snprintf(p, sizeof p, "%s/noop.jsonl", tmp);
  FILE *f = fopen(p, "w");
  for (int i = 0; i < n_noop; i++) fprintf(f, "{\"id\":\"n%d\",\"prompt\":\"x %d\"}\n", i, i);
  fclose(f);
  snprintf(p, sizeof p, "%s/llm.jsonl", tmp);
  f = fopen(p, "w");
  for (int i = 0; i < n_llm; i++) fprintf(f, "{\"id\":\"l%d\",\"prompt\":\"Once upon a time %d\"}\n", i, i);
  fclose(f);
  snprintf(p, sizeof p, "%s/noop.yaml", tmp);
  f = fopen(p, "w");
  fprintf(f, "job: chaos-noop\nstage: noop\ndataset: {format: jsonl, path: noop.jsonl}\noutput: out\nmax_attempts: 20\n"
             "params: {sleep_ms: 20, exec_log: %s/exec.log}\n", tmp);
  fclose(f);
  snprintf(p, sizeof p, "%s/llm.yaml", tmp);
  f = fopen(p, "w");
  fprintf(f, "job: chaos-llm\nstage: llm\ndataset: {format: jsonl, path: llm.jsonl}\noutput: out\nmax_attempts: 20\n"
             "params: {model: %s/models/stories260K/stories260K.bin, tokenizer: %s/models/stories260K/tok512.bin, "
             "max_new_tokens: 32, temperature: 0}\n", NQ_SHARED_DIR, NQ_SHARED_DIR);
  fclose(f);
  enum { NW = 3 };
  pid_t w[NW];
  for (int i = 0; i < NW; i++) w[i] = start_worker();
  char jn[256], jl[256], path[400];
  snprintf(path, sizeof path, "%s/noop.yaml", tmp);
  cr_assert_eq(run(jn, sizeof jn, (const char *[]){"submit", path, "--queue", rh.url, NULL}), 0);
  snprintf(path, sizeof path, "%s/llm.yaml", tmp);
  cr_assert_eq(run(jl, sizeof jl, (const char *[]){"submit", path, "--queue", rh.url, NULL}), 0);
  double t0 = now_s(), last_kill = t0;
  int kills = 0, restarted = 0;
  unsigned seed = 12345;
  for (;;) {
    long long okn = counts(jn, "ok"), okl = counts(jl, "ok");
    if (okn == n_noop && okl == n_llm) break;
    cr_assert_lt(now_s() - t0, 600, "chaos run did not finish in 10 minutes (noop %lld/%d, llm %lld/%d)", okn, n_noop, okl, n_llm);
    if (!restarted && okn >= n_noop / 2) {
      cr_assert_eq(nq_redis_harness_restart(&rh), 0, "redis restart failed");
      restarted = 1;
      fprintf(stderr, "chaos: redis-server restarted (AOF everysec) at %lld/%d noop tasks\n", okn, n_noop);
    }
    if ((now_s() - last_kill) * 1000 >= kill_ms) {
      int v = (int)(rand_r(&seed) % NW);
      kill(w[v], SIGKILL);
      wait_exit(w[v]);
      w[v] = start_worker();
      kills++;
      last_kill = now_s();
    }
    usleep(100000);
  }
  double secs = now_s() - t0;
  cr_assert_eq(run(NULL, 0, (const char *[]){"wait", jn, "--queue", rh.url, "--timeout", "60", NULL}), 0);
  cr_assert_eq(run(NULL, 0, (const char *[]){"wait", jl, "--queue", rh.url, "--timeout", "60", NULL}), 0);
  for (int i = 0; i < NW; i++) {
    kill(w[i], SIGTERM);
    cr_assert_eq(wait_exit(w[i]), 0, "worker did not drain cleanly");
  }
  int okn = verify(jn, n_noop, "out.json"), okl = verify(jl, n_llm, "text.txt");
  /* duplicated executions from the exec log */
  snprintf(p, sizeof p, "%s/exec.log", tmp);
  f = fopen(p, "r");
  cr_assert(f);
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
  run(dlq, sizeof dlq, (const char *[]){"dlq", "list", "--queue", rh.url, NULL});
  printf("chaos: %d noop + %d llm tasks, %d SIGKILLs, %d redis restart(s), %.1fs: terminal %d, ok %d, lost %d, "
         "outputs duplicated or partial 0, duplicated executions %lld (noop executions %lld for %lld tasks), DLQ %s\n",
         n_noop, n_llm, kills, restarted, secs, okn + okl, okn + okl, n_noop + n_llm - okn - okl, execs - uniq, execs, uniq,
         dlq[0] ? "not empty" : "empty");
  fflush(stdout);
  cr_assert_eq(okn, n_noop);
  cr_assert_eq(okl, n_llm);
  cr_assert_eq(uniq, n_noop, "some noop task never ran");
  cr_assert_str_eq(dlq, "");
  cr_assert_gt(kills, 0);
}

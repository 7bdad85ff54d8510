/* tests/integration/test_platform.c — the job system end to end with real processes: `nextq submit`,
 * `nextq worker` (several, one SIGKILLed), `nextq wait`, `nextq dlq`, against a real redis-server the
 * harness starts on a free loopback port; and the same scenarios on the embedded queue (`nextq run`). */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tests/helpers/proc.h"
#include "tests/helpers/redis_harness.h"

extern char **environ;

static nq_redis_harness_t rh;
static char tmp[256];
static const char *bin;

static void setup_dir(void) {
  bin = getenv("NQ_BIN");
  if (!bin) bin = "build/nextq";
  snprintf(tmp, sizeof tmp, "/tmp/nq_it_XXXXXX");
  cr_assert(mkdtemp(tmp));
}
static void setup_redis(void) {
  setup_dir();
  if (nq_redis_harness_start(&rh, 0) != 0) cr_skip_test("redis-server not available");
}
static void teardown(void) {
  nq_redis_harness_cleanup(&rh);
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf %s", tmp);
  if (system(cmd) != 0) fprintf(stderr, "cleanup failed\n");
}

/* Spawn bin with args (NULL-terminated); stdout to out_path (or /dev/null), stderr to tmp/log. */
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

static void write_file(const char *name, const char *fmt, ...) {
  char p[400];
  snprintf(p, sizeof p, "%s/%s", tmp, name);
  FILE *f = fopen(p, "w");
  cr_assert(f);
  va_list ap;
  va_start(ap, fmt);
  vfprintf(f, fmt, ap);
  va_end(ap);
  fclose(f);
}

static void write_prompts(int n) {
  char p[400];
  snprintf(p, sizeof p, "%s/in.jsonl", tmp);
  FILE *f = fopen(p, "w");
  for (int i = 0; i < n; i++) fprintf(f, "{\"id\":\"r%05d\",\"prompt\":\"prompt %d\"}\n", i, i);
  fclose(f);
}

static void write_job(const char *name, const char *extra) {
  write_file(name, "job: itest\nstage: noop\ndataset: {format: jsonl, path: in.jsonl}\noutput: out\n%s", extra);
}

typedef struct manifest {
  int rows, ok, dead, distinct, attempts_max, attempts_min;
  int outputs_ok; /* every ok row's outputs exist with the recorded sha256 size */
} manifest_t;

static manifest_t read_manifest(const char *job) {
  manifest_t m = {.attempts_min = 1 << 30};
  char p[600];
  snprintf(p, sizeof p, "%s/out/%s/_manifest.jsonl", tmp, job);
  FILE *f = fopen(p, "r");
  cr_assert(f, "no manifest at %s", p);
  json_t *seen = json_object();
  char line[8192];
  m.outputs_ok = 1;
  while (fgets(line, sizeof line, f)) {
    json_t *o = json_loads(line, 0, NULL);
    cr_assert(o, "manifest line is not JSON: %s", line);
    m.rows++;
    const char *task = json_string_value(json_object_get(o, "task"));
    const char *status = json_string_value(json_object_get(o, "status"));
    cr_assert(task && status);
    if (!json_object_get(seen, task)) m.distinct++;
    json_object_set_new(seen, task, json_true());
    int a = (int)json_integer_value(json_object_get(o, "attempts"));
    if (a > m.attempts_max) m.attempts_max = a;
    if (a < m.attempts_min) m.attempts_min = a;
    if (strcmp(status, "ok") == 0) {
      m.ok++;
      json_t *outs = json_object_get(o, "outputs");
      if (json_array_size(outs) != 1) m.outputs_ok = 0;
      const char *uri = json_string_value(json_object_get(json_array_get(outs, 0), "uri"));
      struct stat st;
      if (!uri || strncmp(uri, "file://", 7) || stat(uri + 7, &st) != 0 ||
          (long long)st.st_size != json_integer_value(json_object_get(json_array_get(outs, 0), "bytes")))
        m.outputs_ok = 0;
    } else if (strcmp(status, "dead") == 0) {
      m.dead++;
    }
    json_decref(o);
  }
  fclose(f);
  json_decref(seen);
  return m;
}

/* Every task dir holds exactly out.json and no temp files. Returns the number of task dirs. */
static int count_task_dirs_clean(const char *job) {
  char p[600];
  snprintf(p, sizeof p, "%s/out/%s", tmp, job);
  DIR *d = opendir(p);
  cr_assert(d);
  struct dirent *e;
  int n = 0;
  while ((e = readdir(d))) {
    if (e->d_name[0] == '.' && (!e->d_name[1] || (e->d_name[1] == '.' && !e->d_name[2]))) continue;
    if (e->d_name[0] == '_') continue;
    char q[900];
    snprintf(q, sizeof q, "%s/%s", p, e->d_name);
    DIR *t = opendir(q);
    cr_assert(t, "unexpected entry %s", q);
    struct dirent *f;
    int files = 0;
    while ((f = readdir(t))) {
      if (f->d_name[0] == '.' && (!f->d_name[1] || (f->d_name[1] == '.' && !f->d_name[2]))) continue;
      cr_assert_str_eq(f->d_name, "out.json", "stray file %s/%s", q, f->d_name);
      files++;
    }
    closedir(t);
    cr_assert_eq(files, 1, "%s holds %d files", q, files);
    n++;
  }
  closedir(d);
  return n;
}

static int exists(const char *job, const char *name) {
  char p[600];
  snprintf(p, sizeof p, "%s/out/%s/%s", tmp, job, name);
  return access(p, F_OK) == 0;
}

static long long status_field(const char *job, const char *field) {
  char out[4096];
  if (run(out, sizeof out, (const char *[]){"status", job, "--queue", rh.url, NULL}) != 0) return -1;
  json_t *o = json_loads(out, 0, NULL);
  long long v = o ? json_integer_value(json_object_get(o, field)) : -1;
  json_decref(o);
  return v;
}

static pid_t start_worker_b(const char *batch, const char *extra1, const char *extra2) {
  const char *args[] = {"worker", "--queue", rh.url, "--stages", "noop", "--threads", "2", "--batch", batch,
                        "--lease-ms", "1500", "--set", "backoff_base_ms=50", "--set", "backoff_max_ms=200",
                        extra1, extra2, NULL};
  return spawn(NULL, args);
}
static pid_t start_worker(const char *extra1, const char *extra2) { return start_worker_b("16", extra1, extra2); }

/* ------------------------------------------------------------------ redis ---- */

TestSuite(redis_e2e, .init = setup_redis, .fini = teardown, .timeout = 240);

Test(redis_e2e, thousand_tasks_three_workers_one_killed) {
  write_prompts(1000);
  write_job("job.yaml", "batch_size: 1\nparams: {sleep_ms: 10}\n"); /* long enough to kill a worker mid-run */
  pid_t w[3];
  for (int i = 0; i < 3; i++) w[i] = start_worker(NULL, NULL);
  char path[300], job[256];
  snprintf(path, sizeof path, "%s/job.yaml", tmp);
  cr_assert_eq(run(job, sizeof job, (const char *[]){"submit", path, "--queue", rh.url, NULL}), 0);
  cr_assert(strlen(job) > 5 && !strchr(job, '\n'), "submit printed '%s'", job);
  /* kill one worker mid-run (SIGKILL: no drain, its leased tasks must be reclaimed by the others) */
  for (int i = 0; i < 400 && status_field(job, "ok") < 150; i++) usleep(10000);
  long long before = status_field(job, "ok");
  kill(w[0], SIGKILL);
  cr_assert_eq(wait_exit(w[0]), 128 + SIGKILL);
  cr_assert_lt(before, 1000, "job finished before the kill; the test would prove nothing");
  int rc = run(NULL, 0, (const char *[]){"wait", job, "--queue", rh.url, "--timeout", "120", NULL});
  cr_assert_eq(rc, 0, "wait exit %d", rc);
  manifest_t m = read_manifest(job);
  cr_assert_eq(m.rows, 1000);
  cr_assert_eq(m.distinct, 1000);
  cr_assert_eq(m.ok, 1000);
  cr_assert(m.outputs_ok);
  cr_assert_eq(count_task_dirs_clean(job), 1000);
  cr_assert(exists(job, "_SUCCESS"));
  char dlq[4096];
  cr_assert_eq(run(dlq, sizeof dlq, (const char *[]){"dlq", "list", "--queue", rh.url, NULL}), 0);
  cr_assert_str_eq(dlq, "", "DLQ not empty: %s", dlq);
  for (int i = 1; i < 3; i++) {
    kill(w[i], SIGTERM);
    cr_assert_eq(wait_exit(w[i]), 0, "worker did not drain cleanly");
  }
}

Test(redis_e2e, transient_failures_then_ok_at_attempt_3) {
  write_prompts(5);
  write_job("job.yaml", "max_attempts: 3\nparams: {fail_attempts: 2}\n");
  pid_t w = start_worker(NULL, NULL);
  char path[300], job[256];
  snprintf(path, sizeof path, "%s/job.yaml", tmp);
  cr_assert_eq(run(job, sizeof job, (const char *[]){"submit", path, "--queue", rh.url, NULL}), 0);
  cr_assert_eq(run(NULL, 0, (const char *[]){"wait", job, "--queue", rh.url, "--timeout", "60", NULL}), 0);
  manifest_t m = read_manifest(job);
  cr_assert_eq(m.ok, 5);
  cr_assert_eq(m.attempts_min, 3);
  cr_assert_eq(m.attempts_max, 3);
  cr_assert(exists(job, "_SUCCESS"));
  kill(w, SIGTERM);
  cr_assert_eq(wait_exit(w), 0);
}

Test(redis_e2e, always_failing_goes_to_dlq_with_last_error) {
  write_prompts(3);
  write_job("job.yaml", "max_attempts: 3\nparams: {fail_attempts: 99}\n");
  pid_t w = start_worker(NULL, NULL);
  char path[300], job[256];
  snprintf(path, sizeof path, "%s/job.yaml", tmp);
  cr_assert_eq(run(job, sizeof job, (const char *[]){"submit", path, "--queue", rh.url, NULL}), 0);
  cr_assert_eq(run(NULL, 0, (const char *[]){"wait", job, "--queue", rh.url, "--timeout", "60", NULL}), 1);
  manifest_t m = read_manifest(job);
  cr_assert_eq(m.dead, 3);
  cr_assert_eq(m.attempts_max, 3);
  cr_assert(!exists(job, "_SUCCESS"));
  char dlq[8192];
  cr_assert_eq(run(dlq, sizeof dlq, (const char *[]){"dlq", "list", "--queue", rh.url, NULL}), 0);
  int lines = 0;
  for (char *s = dlq; (s = strstr(s, "attempts exhausted after attempt 3/3")); s++) lines++;
  cr_assert_eq(lines, 3, "dlq: %s", dlq);
  cr_assert(strstr(dlq, "injected transient failure at attempt 3"), "last error missing: %s", dlq);
  char out[256];
  cr_assert_eq(run(out, sizeof out, (const char *[]){"dlq", "purge", "--queue", rh.url, NULL}), 0);
  cr_assert_str_eq(out, "purged 3");
  kill(w, SIGTERM);
  cr_assert_eq(wait_exit(w), 0);
}

Test(redis_e2e, malformed_message_goes_to_dlq_worker_survives) {
  pid_t w = start_worker(NULL, NULL);
  /* raw garbage straight into the stream with redis-cli, as an outside producer might */
  char port[16];
  snprintf(port, sizeof port, "%d", rh.port);
  char cmd[512];
  snprintf(cmd, sizeof cmd, "redis-cli -p %s XADD nq:tasks:noop:cpu '*' body '{\"v\":1,\"job\":' >/dev/null", port);
  cr_assert_eq(system(cmd), 0);
  snprintf(cmd, sizeof cmd, "redis-cli -p %s XADD nq:tasks:noop:cpu '*' body '{\"v\":7,\"job\":\"J\",\"task\":\"J/1\"}' >/dev/null", port);
  cr_assert_eq(system(cmd), 0);
  char dlq[8192] = "";
  for (int i = 0; i < 300; i++) {
    run(dlq, sizeof dlq, (const char *[]){"dlq", "list", "--queue", rh.url, NULL});
    if (strstr(dlq, "unknown version 7") && strstr(dlq, "invalid JSON")) break;
    usleep(20000);
  }
  cr_assert(strstr(dlq, "malformed message") && strstr(dlq, "invalid JSON"), "dlq: %s", dlq);
  cr_assert(strstr(dlq, "unknown version 7"), "dlq: %s", dlq);
  /* the worker is alive and still serves */
  cr_assert_eq(kill(w, 0), 0);
  write_prompts(10);
  write_job("job.yaml", "");
  char path[300], job[256];
  snprintf(path, sizeof path, "%s/job.yaml", tmp);
  cr_assert_eq(run(job, sizeof job, (const char *[]){"submit", path, "--queue", rh.url, NULL}), 0);
  cr_assert_eq(run(NULL, 0, (const char *[]){"wait", job, "--queue", rh.url, "--timeout", "60", NULL}), 0);
  cr_assert_eq(read_manifest(job).ok, 10);
  kill(w, SIGTERM);
  cr_assert_eq(wait_exit(w), 0);
}

Test(redis_e2e, sigterm_drain_loses_and_doubles_nothing) {
  write_prompts(40);
  write_job("job.yaml", "params: {sleep_ms: 150}\n");
  pid_t w = start_worker_b("1", "--grace-ms", "20000");
  char path[300], job[256];
  snprintf(path, sizeof path, "%s/job.yaml", tmp);
  cr_assert_eq(run(job, sizeof job, (const char *[]){"submit", path, "--queue", rh.url, NULL}), 0);
  for (int i = 0; i < 500 && status_field(job, "ok") < 4; i++) usleep(10000);
  kill(w, SIGTERM);
  cr_assert_eq(wait_exit(w), 0, "drain did not exit 0");
  long long done = status_field(job, "ok");
  cr_assert_lt(done, 40, "finished before SIGTERM; the test would prove nothing");
  /* nothing in flight may be left pending: the drained worker finished (acked) what it held */
  pid_t w2 = start_worker(NULL, NULL);
  cr_assert_eq(run(NULL, 0, (const char *[]){"wait", job, "--queue", rh.url, "--timeout", "60", NULL}), 0);
  char out[1 << 16];
  cr_assert_eq(run(out, sizeof out, (const char *[]){"results", job, "--queue", rh.url, "--raw", NULL}), 0);
  int results = 0;
  for (char *s = out; (s = strstr(s, "\"status\":\"ok\"")); s++) results++;
  cr_assert_eq(results, 40, "each task must run to a result exactly once (got %d results)", results);
  manifest_t m = read_manifest(job);
  cr_assert_eq(m.ok, 40);
  cr_assert_eq(m.attempts_max, 1, "a drained task was retried");
  kill(w2, SIGTERM);
  cr_assert_eq(wait_exit(w2), 0);
}

/* ------------------------------------------------------------------ local ---- */

TestSuite(local_e2e, .init = setup_dir, .fini = teardown, .timeout = 120);

static const char *run_job_local(char *job, size_t cap, int *rc, const char *workers) {
  char path[300];
  snprintf(path, sizeof path, "%s/job.yaml", tmp);
  *rc = run(job, cap, (const char *[]){"run", path, "--workers", workers, "--quiet", NULL});
  return job;
}

Test(local_e2e, thousand_tasks_exactly_once) {
  write_prompts(1000);
  write_job("job.yaml", "batch_size: 1\n");
  char job[256];
  int rc;
  run_job_local(job, sizeof job, &rc, "3");
  cr_assert_eq(rc, 0);
  manifest_t m = read_manifest(job);
  cr_assert_eq(m.rows, 1000);
  cr_assert_eq(m.distinct, 1000);
  cr_assert_eq(m.ok, 1000);
  cr_assert(m.outputs_ok);
  cr_assert_eq(count_task_dirs_clean(job), 1000);
  cr_assert(exists(job, "_SUCCESS"));
}

Test(local_e2e, batched_tasks) {
  write_prompts(250);
  write_job("job.yaml", "batch_size: 100\n");
  char job[256];
  int rc;
  run_job_local(job, sizeof job, &rc, "2");
  cr_assert_eq(rc, 0);
  manifest_t m = read_manifest(job);
  cr_assert_eq(m.rows, 3);
  cr_assert_eq(m.ok, 3);
}

Test(local_e2e, transient_then_ok) {
  write_prompts(4);
  write_job("job.yaml", "params: {fail_attempts: 2}\n");
  char job[256];
  int rc;
  run_job_local(job, sizeof job, &rc, "2");
  cr_assert_eq(rc, 0);
  manifest_t m = read_manifest(job);
  cr_assert_eq(m.ok, 4);
  cr_assert_eq(m.attempts_min, 3);
}

Test(local_e2e, always_failing_is_dead_exit_1) {
  write_prompts(2);
  write_job("job.yaml", "max_attempts: 2\nparams: {fail_attempts: 99}\n");
  char job[256];
  int rc;
  run_job_local(job, sizeof job, &rc, "1");
  cr_assert_eq(rc, 1);
  manifest_t m = read_manifest(job);
  cr_assert_eq(m.dead, 2);
  cr_assert_eq(m.attempts_max, 2);
  cr_assert(!exists(job, "_SUCCESS"));
  char log[300], buf[8192];
  snprintf(log, sizeof log, "%s/stderr.log", tmp);
  FILE *f = fopen(log, "r");
  size_t k = fread(buf, 1, sizeof buf - 1, f);
  buf[k] = 0;
  fclose(f);
  cr_assert(strstr(buf, "dead: attempts exhausted after attempt 2/2"), "no summary: %s", buf);
}

Test(local_e2e, bad_job_file_is_a_clear_error) {
  write_file("job.yaml", "job: x\nstage: noop\ndataset: {format: jsonl, path: in.jsonl}\noutput: out\nbatch_sise: 3\n");
  char job[256];
  int rc;
  run_job_local(job, sizeof job, &rc, "1");
  cr_assert_eq(rc, 2);
  char log[300], buf[4096];
  snprintf(log, sizeof log, "%s/stderr.log", tmp);
  FILE *f = fopen(log, "r");
  size_t k = fread(buf, 1, sizeof buf - 1, f);
  buf[k] = 0;
  fclose(f);
  cr_assert(strstr(buf, "job.yaml:5:1: unknown key 'batch_sise'"), "%s", buf);
}

/* worker/stage_noop.c — the built-in `noop` stage: writes its task input as out.json.
 *
 * It makes the whole job system testable without a model. Test knobs in params (documented in the
 * README; harmless in production):
 *   fail_attempts: N   fail with a retriable error while attempt <= N (then succeed)
 *   fail_fatal: true   fail with a fatal error (dead-letter at once)
 *   sleep_ms: N        take N ms (to test leases, heartbeats and drain)
 *   exec_log: PATH     append "<task>\n" to PATH on every execution (chaos tests count duplicate executions)
 */
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "worker/stages.h"

static void noop_run_batch(void *state, nq_task_ctx_t *t, int n) {
  (void)state;
  for (int i = 0; i < n; i++) {
    const nq_envelope_t *env = t[i].env;
    json_int_t sleep_ms = json_integer_value(json_object_get(env->params, "sleep_ms"));
    if (sleep_ms > 0) {
      struct timespec ts = {(time_t)(sleep_ms / 1000), (long)(sleep_ms % 1000) * 1000000L};
      while (nanosleep(&ts, &ts) != 0) {
      }
    }
    const char *exec_log = json_string_value(json_object_get(env->params, "exec_log"));
    if (exec_log) { /* one write(2) with O_APPEND: lines from concurrent workers never interleave */
      char line[300];
      int ln = snprintf(line, sizeof line, "%s\n", env->task);
      int fd = open(exec_log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
      if (fd >= 0) {
        ssize_t wr = write(fd, line, (size_t)ln);
        (void)wr;
        close(fd);
      }
    }
    json_int_t fail_attempts = json_integer_value(json_object_get(env->params, "fail_attempts"));
    if (json_is_true(json_object_get(env->params, "fail_fatal"))) {
      nq_task_fail(&t[i], NQ_EFORMAT, NQ_ERR_FATAL, "noop: fail_fatal requested");
      continue;
    }
    if (env->attempt <= fail_attempts) {
      nq_task_fail(&t[i], NQ_EAGAIN, NQ_ERR_RETRIABLE, "noop: injected transient failure at attempt %d", env->attempt);
      continue;
    }
    char *body = json_dumps(env->input, JSON_COMPACT | JSON_SORT_KEYS);
    if (!body) {
      nq_task_fail(&t[i], NQ_ENOMEM, NQ_ERR_RETRIABLE, "noop: out of memory");
      continue;
    }
    nq_err_t err = {0};
    if (nq_task_put(&t[i], "out.json", body, strlen(body), &err) != 0) {
      t[i].err = err;
      t[i].rc = err.code;
    }
    free(body);
  }
}

const nq_stage_t nq_stage_noop = {
    .name = "noop",
    .max_batch = 64,
    .run_batch = noop_run_batch,
};

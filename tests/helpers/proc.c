#include "tests/helpers/proc.h"

#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>

extern char **environ;

pid_t nq_proc_spawn(const char *bin, const char *out_path, const char *err_path, const char *const *args) {
  const char *argv[128];
  int n = 0;
  argv[n++] = bin;
  for (int i = 0; args[i] && n < 127; i++) argv[n++] = args[i];
  argv[n] = NULL;
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, out_path ? out_path : "/dev/null", O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&fa, 2, err_path ? err_path : "/dev/null", O_WRONLY | O_CREAT | O_APPEND, 0644);
  pid_t pid;
  int rc = posix_spawn(&pid, bin, &fa, NULL, (char *const *)argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) {
    errno = rc;
    return -1;
  }
  return pid;
}

int nq_proc_wait(pid_t pid) {
  int st;
  while (waitpid(pid, &st, 0) < 0)
    if (errno != EINTR) return -1;
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

int nq_proc_run(const char *bin, const char *dir, char *out, size_t cap, const char *const *args) {
  char path[1024], log[1024];
  snprintf(path, sizeof path, "%s/stdout.txt", dir);
  snprintf(log, sizeof log, "%s/stderr.log", dir);
  pid_t pid = nq_proc_spawn(bin, path, log, args);
  if (pid < 0) return -1;
  int rc = nq_proc_wait(pid);
  if (out && cap) {
    FILE *f = fopen(path, "r");
    size_t k = f ? fread(out, 1, cap - 1, f) : 0;
    out[k] = 0;
    if (f) fclose(f);
    while (k && out[k - 1] == '\n') out[--k] = 0;
  }
  return rc;
}

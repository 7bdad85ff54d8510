#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli_util.h"

const char *nq_cli_queue_url(const char *flag) {
  if (flag && *flag) return flag;
  const char *e = getenv("NQ_QUEUE");
  return e && *e ? e : "redis://127.0.0.1:6379";
}

nq_queue_t *nq_cli_open_queue(const char *url, int lease_ms) {
  nq_queue_opts_t o = {.lease_ms = lease_ms};
  nq_queue_t *q = NULL;
  nq_err_t err = {0};
  if (nq_queue_open(url, &o, &q, &err) != 0) {
    char safe[512];
    fprintf(stderr, "nextq: queue %s: %s\n", nq_url_redact(url, safe, sizeof safe), err.msg); /* no password */
    return NULL;
  }
  return q;
}

nq_store_t *nq_cli_open_store(const char *file_root, const char *s3_root) {
  nq_store_cfg_t cfg = {.file_root = file_root ? file_root : getenv("NQ_STORE_ROOT"),
                        .s3_root = s3_root ? s3_root : getenv("NQ_S3_ROOT")};
  if (cfg.file_root && !*cfg.file_root) cfg.file_root = NULL;
  if (cfg.s3_root && !*cfg.s3_root) cfg.s3_root = NULL;
  nq_store_t *st = NULL;
  nq_err_t err = {0};
  if (nq_store_new(&cfg, &st, &err) != 0) {
    fprintf(stderr, "nextq: store: %s\n", err.msg);
    return NULL;
  }
  return st;
}

static volatile sig_atomic_t *g_flag;
static void on_signal(int sig) {
  (void)sig;
  if (g_flag) *g_flag = 1;
}

void nq_cli_on_signals(volatile sig_atomic_t *flag) {
  g_flag = flag;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  signal(SIGPIPE, SIG_IGN);
}

int nq_cli_wants_help(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--") == 0) return 0;
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) return 1;
  }
  return 0;
}

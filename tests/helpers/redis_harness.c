/* tests/helpers/redis_harness.c — see redis_harness.h. */
#include "tests/helpers/redis_harness.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void sleep_ms(int ms) {
  struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

static long long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int nq_redis_harness_available(void) {
  const char *path = getenv("PATH");
  if (!path) path = "/usr/bin:/bin";
  char buf[4096];
  snprintf(buf, sizeof buf, "%s", path);
  for (char *save = NULL, *d = strtok_r(buf, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
    char p[4352];
    snprintf(p, sizeof p, "%s/redis-server", d);
    if (access(p, X_OK) == 0) return 1;
  }
  return 0;
}

static int free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  int port = -1;
  if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 && getsockname(fd, (struct sockaddr *)&a, &len) == 0)
    port = ntohs(a.sin_port);
  close(fd);
  return port;
}

static redisContext *connect_h(const nq_redis_harness_t *h) {
  struct timeval tv = {.tv_sec = 1, .tv_usec = 0};
  redisContext *c = redisConnectWithTimeout("127.0.0.1", h->port, tv);
  if (c && c->err) {
    redisFree(c);
    return NULL;
  }
  if (c) {
    struct timeval t2 = {.tv_sec = 30, .tv_usec = 0};
    redisSetTimeout(c, t2);
  }
  if (c && h->auth_pass) {
    redisReply *r = h->auth_user ? redisCommand(c, "AUTH %s %s", h->auth_user, h->auth_pass)
                                 : redisCommand(c, "AUTH %s", h->auth_pass);
    int ok = r && r->type != REDIS_REPLY_ERROR;
    if (r) freeReplyObject(r);
    if (!ok) {
      redisFree(c);
      return NULL;
    }
  }
  return c;
}

/* Child: exec redis-server. Dies with the parent (PDEATHSIG) so a crashed test leaves no server behind. */
static pid_t spawn(const nq_redis_harness_t *h, int aof) {
  char port[16], log[300];
  snprintf(port, sizeof port, "%d", h->port);
  snprintf(log, sizeof log, "%s/redis.log", h->dir);
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    int nul = open("/dev/null", O_RDWR);
    if (nul >= 0) {
      dup2(nul, 0), dup2(nul, 1), dup2(nul, 2);
      if (nul > 2) close(nul);
    }
    const char *argv[64] = {"redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly",
                            aof ? "yes" : "no", "--dir", h->dir, "--logfile", log, "--daemonize", "no"};
    int n = 15;
    if (aof) argv[n++] = "--appendfsync", argv[n++] = "everysec";
    for (int i = 0; h->extra_args && h->extra_args[i] && n < 63; i++) argv[n++] = h->extra_args[i];
    argv[n] = NULL;
    execvp("redis-server", (char *const *)argv);
    _exit(127);
  }
  return pid;
}

/* Waits until PING answers PONG (not LOADING). 0, or -1 if the child died or 10 s passed. */
static int wait_ready(nq_redis_harness_t *h) {
  long long end = now_ms() + 10000;
  while (now_ms() < end) {
    int st;
    if (waitpid(h->pid, &st, WNOHANG) == h->pid) {
      h->pid = 0;
      return -1;
    }
    redisContext *c = connect_h(h);
    if (c) {
      redisReply *r = redisCommand(c, "PING");
      int ok = r && r->type == REDIS_REPLY_STATUS && strcmp(r->str, "PONG") == 0;
      if (r) freeReplyObject(r);
      redisFree(c);
      if (ok) return 0;
    }
    sleep_ms(10);
  }
  return -1;
}

static int wait_exit(nq_redis_harness_t *h, int ms) {
  long long end = now_ms() + ms;
  while (h->pid > 0) {
    int st;
    pid_t r = waitpid(h->pid, &st, WNOHANG);
    if (r == h->pid || (r < 0 && errno == ECHILD)) {
      h->pid = 0;
      return 0;
    }
    if (now_ms() >= end) return -1;
    sleep_ms(5);
  }
  return 0;
}

int nq_redis_harness_start(nq_redis_harness_t *h, int aof) { return nq_redis_harness_start_ex(h, aof, NULL, NULL, NULL); }

int nq_redis_harness_start_ex(nq_redis_harness_t *h, int aof, const char *const *extra_args, const char *auth_user,
                              const char *auth_pass) {
  memset(h, 0, sizeof *h);
  h->extra_args = extra_args;
  h->auth_user = auth_user;
  h->auth_pass = auth_pass;
  snprintf(h->dir, sizeof h->dir, "%s/nq-redis-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
  if (!mkdtemp(h->dir)) {
    fprintf(stderr, "redis harness: mkdtemp %s: %s\n", h->dir, strerror(errno));
    h->dir[0] = 0;
    return -1;
  }
  for (int attempt = 0; attempt < 5; attempt++) {
    h->port = free_port();
    if (h->port <= 0) continue;
    if (nq_redis_harness_resume(h, aof) == 0) return 0;
  }
  fprintf(stderr, "redis harness: could not start redis-server (log: %s/redis.log)\n", h->dir);
  return -1;
}

int nq_redis_harness_resume(nq_redis_harness_t *h, int aof) {
  if (h->pid > 0) return 0;
  h->aof = aof != 0;
  snprintf(h->url, sizeof h->url, "redis://127.0.0.1:%d", h->port);
  h->pid = spawn(h, h->aof);
  if (h->pid <= 0) {
    h->pid = 0;
    return -1;
  }
  if (wait_ready(h) != 0) {
    if (h->pid > 0) {
      kill(h->pid, SIGKILL);
      wait_exit(h, 5000);
    }
    return -1;
  }
  return 0;
}

int nq_redis_harness_stop(nq_redis_harness_t *h) {
  if (h->pid <= 0) return 0;
  kill(h->pid, SIGTERM);
  if (wait_exit(h, 10000) == 0) return 0;
  kill(h->pid, SIGKILL);
  wait_exit(h, 5000);
  return -1;
}

int nq_redis_harness_kill(nq_redis_harness_t *h) {
  if (h->pid <= 0) return 0;
  kill(h->pid, SIGKILL);
  return wait_exit(h, 5000);
}

int nq_redis_harness_cmd(const nq_redis_harness_t *h, const char *fmt, ...) {
  redisContext *c = connect_h(h);
  if (!c) return -1;
  va_list ap;
  va_start(ap, fmt);
  redisReply *r = redisvCommand(c, fmt, ap);
  va_end(ap);
  int ok = r && r->type != REDIS_REPLY_ERROR;
  if (r) freeReplyObject(r);
  redisFree(c);
  return ok ? 0 : -1;
}

long long nq_redis_harness_int(const nq_redis_harness_t *h, const char *fmt, ...) {
  redisContext *c = connect_h(h);
  if (!c) return -1;
  va_list ap;
  va_start(ap, fmt);
  redisReply *r = redisvCommand(c, fmt, ap);
  va_end(ap);
  long long v = r && r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
  if (r) freeReplyObject(r);
  redisFree(c);
  return v;
}

/* INFO persistence says no AOF rewrite is running or scheduled. */
static int aof_rewrite_done(const nq_redis_harness_t *h) {
  redisContext *c = connect_h(h);
  if (!c) return 0;
  redisReply *r = redisCommand(c, "INFO persistence");
  int done = r && r->type == REDIS_REPLY_STRING && strstr(r->str, "aof_rewrite_in_progress:0") &&
             strstr(r->str, "aof_rewrite_scheduled:0") && strstr(r->str, "aof_enabled:1");
  if (r) freeReplyObject(r);
  redisFree(c);
  return done;
}

int nq_redis_harness_restart(nq_redis_harness_t *h) {
  if (h->pid <= 0) return nq_redis_harness_resume(h, 1);
  if (!h->aof) {
    /* a server started without AOF has its data only in memory: have it write an AOF first */
    if (nq_redis_harness_cmd(h, "CONFIG SET appendfsync everysec") || nq_redis_harness_cmd(h, "CONFIG SET appendonly yes"))
      return -1;
    long long end = now_ms() + 20000;
    while (!aof_rewrite_done(h)) {
      if (now_ms() > end) return -1;
      sleep_ms(10);
    }
  }
  if (nq_redis_harness_stop(h) != 0) return -1;
  return nq_redis_harness_resume(h, 1);
}

static int rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
  (void)sb, (void)flag, (void)ftw;
  remove(p);
  return 0;
}

void nq_redis_harness_cleanup(nq_redis_harness_t *h) {
  if (!h) return;
  nq_redis_harness_stop(h);
  if (h->dir[0]) nftw(h->dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
  h->dir[0] = 0;
}

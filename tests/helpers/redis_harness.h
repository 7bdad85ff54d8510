/* tests/helpers/redis_harness.h — a real redis-server for tests and benchmarks.
 *
 * Starts `redis-server` on a free loopback port in a fresh temp dir (no RDB saves; AOF only when asked), waits
 * until it answers PING, and stops it again. For chaos tests: kill it (SIGKILL) and restart it on the same port
 * and dir, or restart it gracefully switching to AOF (appendfsync everysec) while keeping the data.
 *
 *   nq_redis_harness_t h;
 *   if (nq_redis_harness_start(&h, 0) != 0) cr_skip_test("no redis-server");
 *   ... nq_queue_open(h.url, ...) ...
 *   nq_redis_harness_cleanup(&h);
 */
#ifndef NQ_TESTS_REDIS_HARNESS_H
#define NQ_TESTS_REDIS_HARNESS_H

#include <sys/types.h>

typedef struct nq_redis_harness {
  int port;
  pid_t pid;     /* 0 when not running */
  int aof;       /* the running server has appendonly yes (appendfsync everysec) */
  char dir[256]; /* owned temp dir (data + log); removed by _cleanup */
  char url[64];  /* "redis://127.0.0.1:PORT" */
  const char *const *extra_args; /* borrowed, NULL-terminated, may be NULL: more redis-server arguments (kept for
                                    _resume), e.g. {"--requirepass", "pw", NULL} */
  const char *auth_user;         /* borrowed, may be NULL: the harness's own connections send AUTH [user] pass */
  const char *auth_pass;         /* borrowed, may be NULL */
} nq_redis_harness_t;

/* 1 if a redis-server binary is on PATH. */
int nq_redis_harness_available(void);
/* Starts a server on a free port (retrying on a port race). aof != 0: appendonly yes, appendfsync everysec.
 * 0 or -1 (message on stderr). */
int nq_redis_harness_start(nq_redis_harness_t *h, int aof);
/* Same with extra redis-server arguments and the credentials the harness itself authenticates with (for
 * --requirepass / ACL tests). The arrays and strings are borrowed and must outlive the harness. */
int nq_redis_harness_start_ex(nq_redis_harness_t *h, int aof, const char *const *extra_args, const char *auth_user,
                              const char *auth_pass);
/* Graceful stop (SIGTERM, waits): AOF is fsynced; the dir and port are kept for a restart. */
int nq_redis_harness_stop(nq_redis_harness_t *h);
/* SIGKILL, no shutdown work (chaos: what an OOM kill or power cut looks like). Dir and port are kept. */
int nq_redis_harness_kill(nq_redis_harness_t *h);
/* Starts again on the same port and dir (after _stop or _kill). aof as in _start. */
int nq_redis_harness_resume(nq_redis_harness_t *h, int aof);
/* Restart keeping the data: if the server runs without AOF, first turns AOF on (CONFIG SET appendonly yes and
 * waits for the rewrite), then stops it gracefully and starts it again with AOF (appendfsync everysec). */
int nq_redis_harness_restart(nq_redis_harness_t *h);
/* Runs one command (redisCommand format) and returns 0 unless the reply is an error / no reply. */
int nq_redis_harness_cmd(const nq_redis_harness_t *h, const char *fmt, ...);
/* Runs one command and returns its integer reply, or -1 (error, no reply, not an integer). */
long long nq_redis_harness_int(const nq_redis_harness_t *h, const char *fmt, ...);
/* Stops (SIGTERM, then SIGKILL after 5 s) and removes the dir. Safe on a zeroed or stopped harness. */
void nq_redis_harness_cleanup(nq_redis_harness_t *h);

#endif

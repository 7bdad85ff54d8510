/* bench/bench_queue_raw.c — the raw Redis Streams baseline for `make bench`.
 *
 * A plain hiredis loop with no nextq code on the path: per chunk of 100 messages, 100 pipelined XADDs, one
 * XREADGROUP COUNT 100, one XACK of the 100 ids. Prints the median msgs/s over several runs; `make bench`
 * divides the end-to-end noop throughput by this figure.
 *
 *   build/bench/bench_queue_raw [PORT [N [RUNS]]]      defaults: 0 (start a private redis-server), 20000, 5
 * With PORT 0, or when nothing answers on PORT, it starts its own redis-server through the test harness.
 * Output (last line, machine-readable): "bench_queue_raw msgs_per_s=<median> n=<N> runs=<RUNS> port=<PORT>".
 */
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tests/helpers/redis_harness.h"

#define CHUNK 100

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static int check(redisContext *c, redisReply *r, const char *what) {
  if (!r) {
    fprintf(stderr, "bench_queue_raw: %s: %s\n", what, c->errstr);
    return -1;
  }
  if (r->type == REDIS_REPLY_ERROR) {
    fprintf(stderr, "bench_queue_raw: %s: %s\n", what, r->str);
    freeReplyObject(r);
    return -1;
  }
  return 0;
}

/* One run over a fresh stream; returns msgs/s or -1. */
static double run_once(redisContext *c, int run, int n) {
  char key[64];
  snprintf(key, sizeof key, "nq:bench:raw:%d", run);
  redisReply *r = redisCommand(c, "DEL %s", key);
  if (check(c, r, "DEL")) return -1;
  freeReplyObject(r);
  r = redisCommand(c, "XGROUP CREATE %s g 0 MKSTREAM", key);
  if (check(c, r, "XGROUP CREATE")) return -1;
  freeReplyObject(r);
  const char *body = "{\"v\":1,\"job\":\"bench\",\"task\":\"bench/000000\",\"stage\":\"noop\",\"device\":\"cpu\","
                     "\"attempt\":1,\"max_attempts\":3,\"input\":{\"prompt\":\"x\"},\"params\":{}}";
  const char *argv[3 + CHUNK];
  size_t argl[3 + CHUNK];
  double t0 = now_s();
  int done = 0;
  while (done < n) {
    int k = n - done < CHUNK ? n - done : CHUNK;
    for (int i = 0; i < k; i++) redisAppendCommand(c, "XADD %s * body %s", key, body);
    for (int i = 0; i < k; i++) {
      void *x = NULL;
      if (redisGetReply(c, &x) != REDIS_OK || check(c, x, "XADD")) return -1;
      freeReplyObject(x);
    }
    int got = 0;
    while (got < k) {
      r = redisCommand(c, "XREADGROUP GROUP g c COUNT %d STREAMS %s >", CHUNK, key);
      if (check(c, r, "XREADGROUP")) return -1;
      if (r->type != REDIS_REPLY_ARRAY || r->elements < 1) {
        freeReplyObject(r);
        fprintf(stderr, "bench_queue_raw: XREADGROUP returned nothing\n");
        return -1;
      }
      redisReply *ents = r->element[0]->element[1];
      int m = 0;
      argv[m] = "XACK", argl[m++] = 4;
      argv[m] = key, argl[m++] = strlen(key);
      argv[m] = "g", argl[m++] = 1;
      for (size_t i = 0; i < ents->elements && m < 3 + CHUNK; i++) {
        argv[m] = ents->element[i]->element[0]->str;
        argl[m++] = ents->element[i]->element[0]->len;
      }
      got += m - 3;
      redisReply *a = redisCommandArgv(c, m, argv, argl);
      freeReplyObject(r);
      if (check(c, a, "XACK")) return -1;
      freeReplyObject(a);
    }
    done += k;
  }
  double dt = now_s() - t0;
  r = redisCommand(c, "DEL %s", key);
  if (r) freeReplyObject(r);
  return n / dt;
}

int main(int argc, char **argv) {
  int port = argc > 1 ? atoi(argv[1]) : 0;
  int n = argc > 2 ? atoi(argv[2]) : 20000;
  int runs = argc > 3 ? atoi(argv[3]) : 5;
  if (n <= 0) n = 20000;
  if (runs <= 0 || runs > 100) runs = 5;
  nq_redis_harness_t h = {0};
  int own = 0;
  redisContext *c = NULL;
  if (port > 0) {
    struct timeval tv = {.tv_sec = 2, .tv_usec = 0};
    c = redisConnectWithTimeout("127.0.0.1", port, tv);
    if (c && c->err) {
      redisFree(c);
      c = NULL;
    }
  }
  if (!c) {
    if (nq_redis_harness_start(&h, 0) != 0) {
      fprintf(stderr, "bench_queue_raw: no redis on port %d and could not start redis-server\n", port);
      return 1;
    }
    own = 1;
    port = h.port;
    struct timeval tv = {.tv_sec = 2, .tv_usec = 0};
    c = redisConnectWithTimeout("127.0.0.1", port, tv);
    if (!c || c->err) {
      fprintf(stderr, "bench_queue_raw: connect to own redis on %d failed\n", port);
      nq_redis_harness_cleanup(&h);
      return 1;
    }
  }
  double *v = calloc((size_t)runs, sizeof *v);
  int rc = 0;
  run_once(c, -1, n < 2000 ? n : 2000); /* warm-up */
  for (int i = 0; i < runs && v; i++) {
    v[i] = run_once(c, i, n);
    if (v[i] < 0) {
      rc = 1;
      break;
    }
    printf("run %d: %.0f msgs/s\n", i, v[i]);
  }
  if (rc == 0 && v) {
    qsort(v, (size_t)runs, sizeof *v, cmp_d);
    printf("bench_queue_raw msgs_per_s=%.0f n=%d runs=%d port=%d\n", v[runs / 2], n, runs, port);
  }
  free(v);
  redisFree(c);
  if (own) nq_redis_harness_cleanup(&h);
  return rc;
}

/* bench/bench_queue_e2e.c — nextq's queue path through Redis, measured the way the worker uses it, beside the raw
 * hiredis loop of bench_queue_raw on the same server in the same run.
 *
 * One e2e run: job_set_total; publish_batch N envelope-sized bodies (~300 bytes, in chunks of 1000 as the
 * scheduler does); then, until every task is done: fetch(COUNT=batch, no block) -> complete_batch(all fetched:
 * result ~250 bytes + job_mark + ack per task). msgs/s = N / wall time of publish + consume. Body and result
 * formatting is client work the scheduler and worker do too, and is inside the timing; JSON parsing is not (the
 * task id is cut out of the body with strstr). For reference, the unbatched path (per task: publish_result,
 * job_mark, ack) is measured at batch 100 as well.
 * The raw baseline is bench_queue_raw's run_once (per chunk of 100: 100 pipelined XADDs, XREADGROUP COUNT 100,
 * one XACK of the 100 ids), compiled in from bench/bench_queue_raw.c so both use the same loop.
 * Runs are interleaved (raw, batch 1, batch 100, unbatched per run) so machine noise hits all alike; medians. The
 * ratios are the medians of the per-run ratios (each from one run's own raw figure: robust when another process
 * slows the machine for part of the run); the ratio of the medians is printed beside them.
 *
 *   build/bench/bench_queue_e2e [PORT [N [RUNS]]]   defaults: 0 (start a private redis-server), 20000, 5
 * Batch 1 and the unbatched path use N/4 messages (they are slower; the rate does not depend on N).
 * Last line (machine-readable): "bench_queue_e2e raw_msgs_per_s=R b1_msgs_per_s=A b100_msgs_per_s=B
 *   ratio_b1=X ratio_b100=Y percall_b100_msgs_per_s=C n=N runs=RUNS port=PORT" (medians; X, Y: medians of the
 *   per-run ratios).
 */
#define main nq_bench_queue_raw_main /* reuse the raw loop; its main is not ours */
#include "bench/bench_queue_raw.c"
#undef main

#include <stdint.h>

#include "queue/queue.h"

#define PUB_CHUNK 1000

enum { MODE_BATCH, MODE_PERCALL };

/* Cuts the "task" value out of an envelope body into out; 0 or -1. */
static int task_of(const char *body, char *out, size_t cap) {
  const char *p = strstr(body, "\"task\":\"");
  if (!p) return -1;
  p += 8;
  const char *e = strchr(p, '"');
  if (!e || (size_t)(e - p) >= cap) return -1;
  memcpy(out, p, (size_t)(e - p));
  out[e - p] = 0;
  return 0;
}

static void drop_keys(redisContext *c, const char *topic, const char *job) {
  redisReply *r = redisCommand(c, "DEL nq:%s nq:results:%s nq:job:%s nq:job:%s:tasks", topic, job, job, job);
  if (r) freeReplyObject(r);
}

/* One e2e run; returns msgs/s or -1. */
static double e2e_once(nq_queue_t *q, redisContext *c, const char *tag, int batch, int mode, int n) {
  char topic[64], job[64], group[] = "stage:noop";
  snprintf(topic, sizeof topic, "tasks:bench%s:cpu", tag);
  snprintf(job, sizeof job, "bench-e2e%s", tag);
  drop_keys(c, topic, job);
  nq_err_t e = {0};
  char **bodies = calloc((size_t)n, sizeof *bodies);
  size_t *lens = calloc((size_t)n, sizeof *lens);
  nq_completion_t *it = calloc((size_t)batch, sizeof *it);
  char(*tasks)[96] = calloc((size_t)batch, sizeof *tasks);
  char(*res)[512] = calloc((size_t)batch, sizeof *res);
  nq_job_counts_t *counts = calloc((size_t)batch, sizeof *counts);
  int *changed = calloc((size_t)batch, sizeof *changed);
  double rate = -1;
  if (!bodies || !lens || !it || !tasks || !res || !counts || !changed) goto out;
  for (int i = 0; i < n; i++) {
    int len = asprintf(&bodies[i],
                       "{\"v\":1,\"job\":\"%s\",\"task\":\"%s/%06d\",\"stage\":\"noop\",\"device\":\"cpu\","
                       "\"attempt\":1,\"max_attempts\":3,\"input\":{\"prompt\":\"a photo of a cat sitting on a red "
                       "sofa, record %d\"},\"params\":{\"max_new_tokens\":64,\"temperature\":0.0},\"output\":"
                       "\"file:///data/out/bench/%s/%06d/\",\"next\":[],\"trace\":\"bench\"}",
                       job, job, i, i, job, i);
    if (len < 0) goto out;
    lens[i] = (size_t)len;
  }
  if (nq_queue_job_set_total(q, job, n, &e)) goto fail;
  double t0 = now_s();
  for (int off = 0; off < n; off += PUB_CHUNK) {
    int k = n - off < PUB_CHUNK ? n - off : PUB_CHUNK;
    if (nq_queue_publish_batch(q, topic, (const char *const *)bodies + off, lens + off, k, &e)) goto fail;
  }
  const char *topics[] = {topic};
  int done = 0, empty = 0;
  while (done < n) {
    nq_delivery_t *d = NULL;
    int got = 0;
    if (nq_queue_fetch(q, topics, 1, group, "bench-consumer", batch, 0, &d, &got, &e)) goto fail;
    if (got == 0) {
      if (++empty > 100) {
        fprintf(stderr, "bench_queue_e2e: queue ran dry at %d of %d\n", done, n);
        goto out;
      }
      continue;
    }
    for (int i = 0; i < got; i++) {
      if (task_of(d[i].body, tasks[i], sizeof tasks[i])) {
        fprintf(stderr, "bench_queue_e2e: no task id in %s\n", d[i].id);
        nq_delivery_free_array(d, got);
        goto out;
      }
      snprintf(res[i], sizeof res[i],
               "{\"v\":1,\"job\":\"%s\",\"task\":\"%s\",\"stage\":\"noop\",\"status\":\"ok\",\"attempts\":1,"
               "\"outputs\":[{\"uri\":\"file:///data/out/bench/%s/out.json\",\"sha256\":"
               "\"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\",\"bytes\":%zu}]}",
               job, tasks[i], tasks[i], d[i].len);
      it[i] = (nq_completion_t){.d = &d[i], .job = job, .task = tasks[i], .status = "ok", .result = res[i]};
    }
    int rc = 0;
    if (mode == MODE_BATCH) {
      rc = nq_queue_complete_batch(q, group, it, got, counts, changed, &e);
      for (int i = 0; rc == 0 && i < got; i++)
        if (!changed[i]) {
          fprintf(stderr, "bench_queue_e2e: task %s completed twice\n", tasks[i]);
          rc = -1;
        }
    } else {
      for (int i = 0; rc == 0 && i < got; i++) {
        int ch = 0;
        rc = nq_queue_publish_result(q, job, res[i], &e);
        if (!rc) rc = nq_queue_job_mark(q, job, tasks[i], "ok", NULL, &ch, &e);
        if (!rc) rc = nq_queue_ack(q, group, &d[i], &e);
      }
    }
    nq_delivery_free_array(d, got);
    if (rc) goto fail;
    done += got;
  }
  double dt = now_s() - t0;
  nq_job_counts_t jc;
  if (nq_queue_job_counts(q, job, &jc, &e)) goto fail;
  if (jc.ok != n || jc.total != n) {
    fprintf(stderr, "bench_queue_e2e: job %s ended with ok %lld of %d\n", job, jc.ok, n);
    goto out;
  }
  nq_queue_stats_t st;
  if (nq_queue_stats(q, topic, group, &st, &e)) goto fail;
  if (st.in_flight != 0 || st.depth != 0) {
    fprintf(stderr, "bench_queue_e2e: %lld in flight, %lld waiting after the run\n", st.in_flight, st.depth);
    goto out;
  }
  rate = n / dt;
  goto out;
fail:
  fprintf(stderr, "bench_queue_e2e: %s\n", e.msg);
out:
  drop_keys(c, topic, job);
  for (int i = 0; bodies && i < n; i++) free(bodies[i]);
  free(bodies);
  free(lens);
  free(it);
  free(tasks);
  free(res);
  free(counts);
  free(changed);
  return rate;
}

static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, cmp_d);
  return v[n / 2];
}

int main(int argc, char **argv) {
  int port = argc > 1 ? atoi(argv[1]) : 0;
  int n = argc > 2 ? atoi(argv[2]) : 20000;
  int runs = argc > 3 ? atoi(argv[3]) : 5;
  if (n < 400) n = 20000;
  if (runs <= 0 || runs > 100) runs = 5;
  int n_small = n / 4;
  nq_redis_harness_t h = {0};
  int own = 0;
  redisContext *c = NULL;
  struct timeval tv = {.tv_sec = 2, .tv_usec = 0};
  if (port > 0) {
    c = redisConnectWithTimeout("127.0.0.1", port, tv);
    if (c && c->err) {
      redisFree(c);
      c = NULL;
    }
  }
  if (!c) {
    if (nq_redis_harness_start(&h, 0) != 0) {
      fprintf(stderr, "bench_queue_e2e: no redis on port %d and could not start redis-server\n", port);
      return 1;
    }
    own = 1;
    port = h.port;
    c = redisConnectWithTimeout("127.0.0.1", port, tv);
    if (!c || c->err) {
      fprintf(stderr, "bench_queue_e2e: connect to own redis on %d failed\n", port);
      nq_redis_harness_cleanup(&h);
      return 1;
    }
  }
  char url[64];
  snprintf(url, sizeof url, "redis://127.0.0.1:%d", port);
  nq_queue_t *q = NULL;
  nq_err_t e = {0};
  if (nq_queue_open(url, NULL, &q, &e)) {
    fprintf(stderr, "bench_queue_e2e: open %s: %s\n", url, e.msg);
    redisFree(c);
    if (own) nq_redis_harness_cleanup(&h);
    return 1;
  }
  double *raw = calloc((size_t)runs, sizeof *raw), *b1 = calloc((size_t)runs, sizeof *b1),
         *b100 = calloc((size_t)runs, sizeof *b100), *pc = calloc((size_t)runs, sizeof *pc);
  int rc = raw && b1 && b100 && pc ? 0 : 1;
  /* warm-up: connections, scripts, allocator */
  if (rc == 0 && (run_once(c, -1, 2000) < 0 || e2e_once(q, c, ":warm", 100, MODE_BATCH, 2000) < 0)) rc = 1;
  for (int r = 0; rc == 0 && r < runs; r++) {
    char tag[32];
    raw[r] = run_once(c, r, n);
    snprintf(tag, sizeof tag, ":%d:b1", r);
    b1[r] = e2e_once(q, c, tag, 1, MODE_BATCH, n_small);
    snprintf(tag, sizeof tag, ":%d:b100", r);
    b100[r] = e2e_once(q, c, tag, 100, MODE_BATCH, n);
    snprintf(tag, sizeof tag, ":%d:pc100", r);
    pc[r] = e2e_once(q, c, tag, 100, MODE_PERCALL, n_small);
    if (raw[r] < 0 || b1[r] < 0 || b100[r] < 0 || pc[r] < 0) {
      rc = 1;
      break;
    }
    printf("run %d: raw %.0f msgs/s | e2e batch 1 %.0f (%.3f) | e2e batch 100 %.0f (%.3f) | unbatched batch 100 "
           "%.0f (%.3f)\n",
           r, raw[r], b1[r], b1[r] / raw[r], b100[r], b100[r] / raw[r], pc[r], pc[r] / raw[r]);
    fflush(stdout);
  }
  if (rc == 0) {
    double *r1 = calloc((size_t)runs, sizeof *r1), *r100 = calloc((size_t)runs, sizeof *r100),
           *rpc = calloc((size_t)runs, sizeof *rpc);
    if (!r1 || !r100 || !rpc) {
      rc = 1;
    } else {
      for (int r = 0; r < runs; r++) r1[r] = b1[r] / raw[r], r100[r] = b100[r] / raw[r], rpc[r] = pc[r] / raw[r];
      double q1 = median(r1, runs), q100 = median(r100, runs), qpc = median(rpc, runs);
      double mr = median(raw, runs), m1 = median(b1, runs), m100 = median(b100, runs), mpc = median(pc, runs);
      printf("median of %d: raw %.0f msgs/s; e2e batch 1 %.0f msgs/s (ratio %.3f); e2e batch 100 %.0f msgs/s (ratio "
             "%.3f, goal >= 0.5); unbatched batch 100 %.0f msgs/s (ratio %.3f)  [ratios of the medians: %.3f %.3f "
             "%.3f]\n",
             runs, mr, m1, q1, m100, q100, mpc, qpc, m1 / mr, m100 / mr, mpc / mr);
      printf("bench_queue_e2e raw_msgs_per_s=%.0f b1_msgs_per_s=%.0f b100_msgs_per_s=%.0f ratio_b1=%.3f "
             "ratio_b100=%.3f percall_b100_msgs_per_s=%.0f n=%d runs=%d port=%d\n",
             mr, m1, m100, q1, q100, mpc, n, runs, port);
    }
    free(r1);
    free(r100);
    free(rpc);
  }
  free(raw);
  free(b1);
  free(b100);
  free(pc);
  nq_queue_close(q);
  redisFree(c);
  if (own) nq_redis_harness_cleanup(&h);
  return rc;
}

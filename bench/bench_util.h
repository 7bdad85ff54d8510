/* bench/bench_util.h — helpers shared by the compute benchmarks (header only; benches are single-file programs):
 * a monotonic clock, a median, the GEMM peak of one backend measured in the running process, and the PyTorch
 * comparison runner (Debian's python3-torch; it is NOT in deploy/install-deps.sh: it is ~1 GB). */
#ifndef NQ_BENCH_UTIL_H
#define NQ_BENCH_UTIL_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "compute/core/ops.h"

static inline double nqb_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static inline int nqb__cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}
static inline double nqb_median(double *v, int n) {
  if (n <= 0) return 0;
  qsort(v, (size_t)n, sizeof *v, nqb__cmp);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* y[M,N] = x[M,K] W[N,K]^T on one backend ("onednn", "openblas", "cpu"); the best GFLOP/s of `reps` timed runs after
 * one warm-up (0 if that backend does not take the dtype). */
static inline double nqb_gemm_peak(const char *backend, nq_dtype_t dt, int M, int N, int K, int reps) {
  nq_err_t err = {0};
  nq_exec_t *ex = nq_exec_new(backend, NULL, &err);
  if (!ex) return 0;
  nq_tensor_t x, wt, y;
  nq_tensor_init(&x, NQ_DT_F32, 2, NQ_SHAPE(M, K), &err);
  nq_tensor_init(&wt, dt, 2, NQ_SHAPE(N, K), &err);
  nq_tensor_init(&y, NQ_DT_F32, 2, NQ_SHAPE(M, N), &err);
  for (int64_t i = 0; i < (int64_t)M * K; i++) ((float *)x.data)[i] = (float)((i % 13) - 6) * 0.01f;
  for (int64_t i = 0; i < (int64_t)N * K; i++) nq_tensor_set(&wt, i, (float)((i % 7) - 3) * 0.01f);
  nq_linear_t lin;
  nq_linear_init(&lin, &wt, NULL);
  nq_op_desc_t d = {.op = NQ_OP_LINEAR, .src = {&x}, .dst = &y, .lin = &lin};
  double best = 0;
  if (ex->be[0]->iface->supports_op(ex->be[0], &d) && nq_exec_linear_prepare(ex, &lin, &err) == 0) {
    for (int r = 0; r <= reps; r++) {
      double t = nqb_now();
      if (ex->be[0]->iface->compute(ex->be[0], &d, &err) < 0) break;
      double g = 2.0 * M * N * K / (nqb_now() - t) / 1e9;
      if (r > 0 && g > best) best = g;
    }
  }
  nq_linear_deinit(&lin);
  nq_tensor_deinit(&x), nq_tensor_deinit(&y);
  nq_exec_free(ex);
  return best;
}

/* The reference peak of a run: oneDNN bf16 (when native or not: printed as measured), oneDNN f32, OpenBLAS sgemm.
 * Prints all three; returns the best and names it in *which. */
static inline double nqb_gemm_peaks(int M, int N, int K, const char **which) {
  double bf = nqb_gemm_peak("onednn", NQ_DT_BF16, M, N, K, 3);
  double df = nqb_gemm_peak("onednn", NQ_DT_F32, M, N, K, 3);
  double ob = nqb_gemm_peak("openblas", NQ_DT_F32, M, N, K, 3);
  double best = bf;
  *which = "oneDNN bf16";
  if (df > best) best = df, *which = "oneDNN f32";
  if (ob > best) best = ob, *which = "OpenBLAS sgemm f32";
  char bfs[64];
  if (bf > 0) snprintf(bfs, sizeof bfs, "%.1f", bf);
  else snprintf(bfs, sizeof bfs, "n/a (no native bf16 kernels on this CPU)");
  printf("  GEMM peak M=%d N=%d K=%d (this run): oneDNN bf16 %s, oneDNN f32 %.1f, OpenBLAS sgemm %.1f GFLOP/s "
         "-> reference = %s\n",
         M, N, K, bfs, df, ob, *which);
  return best;
}

/* Runs `PYTHON SCRIPT ARGS` with the first interpreter that can `import torch` ($NQ_PYTHON, python3 on PATH, then
 * Debian's /usr/bin/python3: a pyenv python3 first on PATH does not see Debian's python3-torch). Copies its output
 * lines prefixed; returns the value of the last "seconds=" it printed (or -1) and the first one in *first. */
static inline double nqb_run_torch(const char *script, const char *args, double *first /* OUT, may be NULL */) {
  const char *cands[3] = {getenv("NQ_PYTHON"), "python3", "/usr/bin/python3"}, *py = NULL;
  char cmd[1024];
  for (int i = 0; i < 3 && !py; i++) {
    if (!cands[i] || strchr(cands[i], '\'') || strlen(cands[i]) > 256) continue;
    snprintf(cmd, sizeof cmd, "'%s' -c 'import torch' >/dev/null 2>&1", cands[i]);
    if (system(cmd) == 0) py = cands[i];
  }
  if (!py) {
    printf("  torch: not installed (apt-get install python3-torch)\n");
    return -1;
  }
  char path[512];
  const char *dir = getenv("NQ_BENCH_DIR");
  snprintf(path, sizeof path, "%s/%s", dir ? dir : "bench", script);
  if (access(path, R_OK) != 0) {
    printf("  torch: %s not found (run from the repo root or set NQ_BENCH_DIR)\n", path);
    return -1;
  }
  snprintf(cmd, sizeof cmd, "'%s' %s %s 2>&1", py, path, args);
  fflush(stdout);
  FILE *p = popen(cmd, "r");
  if (!p) return -1;
  char line[512];
  double secs = -1;
  if (first) *first = -1;
  while (fgets(line, sizeof line, p)) {
    printf("  torch| %s", line);
    const char *s = strstr(line, "seconds=");
    if (s) secs = atof(s + 8);
    if (s && first && *first < 0) *first = secs;
  }
  if (pclose(p) != 0) return -1;
  return secs;
}

#endif

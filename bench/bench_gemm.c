/* bench/bench_gemm.c — nq_gemm (compute/backends/gemm.h) beside OpenBLAS sgemm on the shapes that matter here.
 *
 *   LLaMA-7B prefill linears, M = 128 tokens: y[M,N] = x[M,K] . W[N,K]^T for (N,K) = 4096x4096, 11008x4096,
 *   4096x11008:
 *     nq_gemm bf16     BF16 weights read directly (B = W^T view, converted while packing)
 *     nq_gemm f32      F32 weights
 *     sgemm f32        cblas_sgemm on F32 weights (the ceiling we compare against)
 *     blas bf16        the openblas backend's linear with BF16 weights (widen blocks to F32 on the pool, then sgemm)
 *   SD UNet conv, Co = 320, 64x64 positions (N = 4096), K = 320*3*3 = 2880, gemm only: nq_gemm (BF16 weights,
 *     F32 columns) vs cblas_sgemm (F32 weights, same columns);
 *   whole conv2d ops of the SD 1.5 UNet (BF16 weights): the cpu backend (nq_gemm, implicit im2col) vs the openblas
 *     backend (im2col + sgemm).
 *
 * GFLOP/s medians of --reps runs (default 5) after a warm-up, contenders one after the other (see race()). --threads N (default 2), --quick (fewer reps, LLaMA 4096x4096 and the conv only).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench/bench_util.h"
#include "compute/backends/gemm.h"
#include "compute/core/pool.h"

#ifdef NQ_WITH_OPENBLAS
#include <cblas.h>
#endif

#define NQB_MAXC 4

typedef struct {
  const char *name;
  int (*run)(void *ctx);
  void *ctx;
} contender_t;

/* Runs each contender reps+1 times (first = warm-up), one contender after the other with a 0.3 s pause between them:
 * OpenBLAS's idle threads spin (sched_yield) for a while after each call and would steal the cores from the next
 * contender if the runs alternated. Prints median GFLOP/s per contender; out (optional) receives them. */
static void race(const char *label, double flops, contender_t *c, int nc, int reps, double *out) {
  double t[NQB_MAXC][64];
  for (int i = 0; i < nc; i++) {
    usleep(300000);
    for (int r = 0; r <= reps; r++) {
      double t0 = nqb_now();
      if (c[i].run(c[i].ctx) < 0) {
        fprintf(stderr, "bench_gemm: %s failed\n", c[i].name);
        exit(1);
      }
      if (r > 0) t[i][r - 1] = nqb_now() - t0;
    }
  }
  printf("  %-34s", label);
  for (int i = 0; i < nc; i++) {
    double g = flops / nqb_median(t[i], reps) / 1e9;
    if (out) out[i] = g;
    printf("  %s %6.1f", c[i].name, g);
  }
  printf("  GFLOP/s\n");
}

typedef struct {
  nq_gemm_args_t g;
  nq_pool_t *pool;
} gemm_ctx_t;

static int run_gemm(void *ctx) {
  gemm_ctx_t *c = ctx;
  nq_err_t err = {0};
  return nq_gemm(c->pool, &c->g, &err);
}

#ifdef NQ_WITH_OPENBLAS
typedef struct {
  int M, N, K, lda, ldb, ldc, transb;
  const float *a, *b;
  float *c;
} sgemm_ctx_t;

static int run_sgemm(void *ctx) {
  sgemm_ctx_t *s = ctx;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, s->transb ? CblasTrans : CblasNoTrans, s->M, s->N, s->K, 1.0f, s->a,
              s->lda, s->b, s->ldb, 0.0f, s->c, s->ldc);
  return 0;
}
#endif

typedef struct {
  nq_backend_t *be;
  nq_op_desc_t *op;
} op_ctx_t;

static int run_op(void *ctx) {
  op_ctx_t *o = ctx;
  nq_err_t err = {0};
  return o->be->iface->compute(o->be, o->op, &err);
}

static float *frand_buf(int64_t n) {
  float *p = aligned_alloc(64, (size_t)((n * 4 + 63) & ~63));
  if (!p) exit(1);
  uint64_t s = 88172645463325252ull;
  for (int64_t i = 0; i < n; i++) {
    s ^= s << 13, s ^= s >> 7, s ^= s << 17;
    p[i] = (float)((s >> 40) * (1.0 / 16777216.0)) - 0.5f;
  }
  return p;
}

static void bench_linear(nq_pool_t *pool, int M, int N, int K, int reps) {
  float *x = frand_buf((int64_t)M * K), *wf = frand_buf((int64_t)N * K), *y = frand_buf((int64_t)M * N);
  uint16_t *wb = malloc(sizeof(uint16_t) * (size_t)N * K);
  for (int64_t i = 0; i < (int64_t)N * K; i++) wb[i] = nq_f32_to_bf16(wf[i]), wf[i] = nq_bf16_to_f32(wb[i]);
  gemm_ctx_t gb = {.pool = pool,
                   .g = {.M = M, .N = N, .K = K, .a = {x, NQ_DT_F32, K, 1}, .b = {wb, NQ_DT_BF16, 1, K}, .c = y,
                         .ldc = N}};
  gemm_ctx_t gf = gb;
  gf.g.b = (nq_gemm_mat_t){wf, NQ_DT_F32, 1, K};
  contender_t c[NQB_MAXC] = {{"nq_gemm bf16", run_gemm, &gb}, {"nq_gemm f32", run_gemm, &gf}};
  int nc = 2;
#ifdef NQ_WITH_OPENBLAS
  sgemm_ctx_t sg = {M, N, K, K, K, N, 1, x, wf, y};
  c[nc++] = (contender_t){"sgemm f32", run_sgemm, &sg};
  nq_err_t err = {0};
  nq_backend_t *blas = nq_backend_openblas_new(pool, &err);
  nq_tensor_t tx, tw, ty;
  nq_tensor_init_borrowed(&tx, NQ_DT_F32, 2, NQ_SHAPE(M, K), x);
  nq_tensor_init_borrowed(&tw, NQ_DT_BF16, 2, NQ_SHAPE(N, K), wb);
  nq_tensor_init_borrowed(&ty, NQ_DT_F32, 2, NQ_SHAPE(M, N), y);
  nq_linear_t lin;
  nq_linear_init(&lin, &tw, NULL);
  nq_op_desc_t op = {.op = NQ_OP_LINEAR, .src = {&tx}, .dst = &ty, .lin = &lin};
  op_ctx_t oc = {blas, &op};
  if (blas) c[nc++] = (contender_t){"blas bf16", run_op, &oc};
#endif
  char label[64];
  snprintf(label, sizeof label, "linear M=%d N=%d K=%d", M, N, K);
  double g[NQB_MAXC] = {0};
  race(label, 2.0 * M * N * K, c, nc, reps, g);
  if (nc > 2) printf("  %-34s  nq_gemm bf16 = %.0f%% of sgemm f32\n", "", 100.0 * g[0] / g[2]);
#ifdef NQ_WITH_OPENBLAS
  nq_backend_free(blas);
#endif
  free(x), free(wf), free(y), free(wb);
}

static void bench_conv(nq_pool_t *pool, int reps) {
  const int Ci = 320, Co = 320, H = 64, W = 64, K = Ci * 9, P = H * W;
  /* gemm only: columns prepared once */
  float *col = frand_buf((int64_t)K * P), *wf = frand_buf((int64_t)Co * K), *y = frand_buf((int64_t)Co * P);
  uint16_t *wb = malloc(sizeof(uint16_t) * (size_t)Co * K);
  for (int64_t i = 0; i < (int64_t)Co * K; i++) wb[i] = nq_f32_to_bf16(wf[i]), wf[i] = nq_bf16_to_f32(wb[i]);
  gemm_ctx_t gb = {.pool = pool,
                   .g = {.M = Co, .N = P, .K = K, .a = {wb, NQ_DT_BF16, K, 1}, .b = {col, NQ_DT_F32, P, 1}, .c = y,
                         .ldc = P}};
  contender_t c[NQB_MAXC] = {{"nq_gemm bf16", run_gemm, &gb}};
  int nc = 1;
#ifdef NQ_WITH_OPENBLAS
  sgemm_ctx_t sg = {Co, P, K, K, P, P, 0, wf, col, y};
  c[nc++] = (contender_t){"sgemm f32", run_sgemm, &sg};
#endif
  race("conv gemm M=320 N=4096 K=2880", 2.0 * Co * P * K, c, nc, reps, NULL);
  free(col), free(wf), free(y), free(wb);
}

/* One whole conv2d op (BF16 weights, bias, batch 1): the cpu backend (nq_gemm, implicit im2col) vs the openblas
 * backend (im2col + sgemm on widened weights). */
static void bench_conv_op(nq_pool_t *pool, int Ci, int Co, int H, int W, int k, int reps) {
  nq_err_t err = {0};
  nq_tensor_t x, w, b, y;
  nq_tensor_init(&x, NQ_DT_F32, 4, NQ_SHAPE(1, Ci, H, W), &err);
  nq_tensor_init(&w, NQ_DT_BF16, 4, NQ_SHAPE(Co, Ci, k, k), &err);
  nq_tensor_init(&b, NQ_DT_F32, 1, NQ_SHAPE(Co), &err);
  nq_tensor_init(&y, NQ_DT_F32, 4, NQ_SHAPE(1, Co, H, W), &err);
  float *xf = frand_buf((int64_t)Ci * H * W), *wf = frand_buf((int64_t)Co * Ci * k * k);
  memcpy(x.data, xf, sizeof(float) * (size_t)Ci * H * W);
  for (int64_t i = 0; i < (int64_t)Co * Ci * k * k; i++) ((uint16_t *)w.data)[i] = nq_f32_to_bf16(wf[i] * 0.1f);
  free(xf), free(wf);
  nq_op_desc_t op = {.op = NQ_OP_CONV2D, .src = {&x, &w, &b}, .dst = &y, .i = {1, 1, k / 2, k / 2, 1, 1, 1}};
  nq_backend_t *cpu = nq_backend_cpu_new(pool, &err);
  op_ctx_t oc = {cpu, &op};
  contender_t c[NQB_MAXC] = {{"cpu", run_op, &oc}};
  int nc = 1;
#ifdef NQ_WITH_OPENBLAS
  nq_backend_t *blas = nq_backend_openblas_new(pool, &err);
  op_ctx_t ob = {blas, &op};
  if (blas) c[nc++] = (contender_t){"openblas", run_op, &ob};
#endif
  char label[64];
  snprintf(label, sizeof label, "conv2d %d->%d %dx%d %dx%d bf16", Ci, Co, k, k, H, W);
  race(label, 2.0 * Co * H * W * Ci * k * k, c, nc, reps, NULL);
  nq_backend_free(cpu);
#ifdef NQ_WITH_OPENBLAS
  nq_backend_free(blas);
#endif
  nq_tensor_deinit(&x), nq_tensor_deinit(&w), nq_tensor_deinit(&b), nq_tensor_deinit(&y);
}

int main(int argc, char **argv) {
  int threads = 2, reps = 5, quick = 0, m = 128;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--m") && i + 1 < argc) m = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--quick")) quick = 1, reps = 3;
    else {
      fprintf(stderr, "usage: bench_gemm [--threads N] [--reps R] [--m M] [--quick]\n");
      return 2;
    }
  }
  if (reps < 1) reps = 1;
  if (reps > 64) reps = 64;
  nq_compute_set_threads(threads);
  nq_pool_t *pool = nq_pool_default();
  printf("bench_gemm: %s micro-kernel, %d threads, medians of %d runs\n", nq_gemm_kernel_name(), threads, reps);
  bench_linear(pool, m, 4096, 4096, reps);
  if (!quick) {
    bench_linear(pool, m, 11008, 4096, reps);
    bench_linear(pool, m, 4096, 11008, reps);
  }
  bench_conv(pool, reps);
  /* SD 1.5 UNet convs at 512x512 (latent 64x64 and the lower levels), the in/out convs, a 1x1 shortcut */
  bench_conv_op(pool, 320, 320, 64, 64, 3, reps);
  if (!quick) {
    bench_conv_op(pool, 640, 640, 32, 32, 3, reps);
    bench_conv_op(pool, 1280, 1280, 16, 16, 3, reps);
    bench_conv_op(pool, 1280, 1280, 8, 8, 3, reps);
    bench_conv_op(pool, 4, 320, 64, 64, 3, reps);
    bench_conv_op(pool, 320, 4, 64, 64, 3, reps);
    bench_conv_op(pool, 640, 320, 64, 64, 1, reps);
  }
  return 0;
}

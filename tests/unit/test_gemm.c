/* nq_gemm (compute/backends/gemm.h) against a double-precision reference loop:
 *  - random shapes (M, N, K in 1..300), every A/B dtype pair (F32/BF16/F16), row-major / transposed / strided views,
 *    accumulate, column and row biases, with and without a thread pool;
 *  - shapes crossing every blocking boundary (K > KC, M > MC and MC_ONE, N > NC), K = 0, ldc > N (padding left
 *    untouched);
 *  - B produced by a pack callback;
 *  - conv2d on the cpu backend (implicit im2col through nq_gemm) against the ref backend's direct loops;
 *  - linear on the cpu backend at row counts that take nq_gemm, against the ref backend. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compute/backends/gemm.h"
#include "compute/core/ops.h"

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void) {
  g_rng ^= g_rng << 13, g_rng ^= g_rng >> 7, g_rng ^= g_rng << 17;
  return g_rng;
}
static float frand(void) { return (float)((rnd() >> 40) * (1.0 / 16777216.0)) * 2.0f - 1.0f; } /* [-1, 1) */
static int64_t irand(int64_t lo, int64_t hi) { return lo + (int64_t)(rnd() % (uint64_t)(hi - lo + 1)); }

/* A test matrix: rows x cols of dtype dt stored with the given layout; vals holds the exact values as double. */
typedef struct {
  nq_gemm_mat_t v;
  void *store;  /* owned */
  double *vals; /* owned, row-major rows x cols */
  int64_t rows, cols;
} tmat_t;

enum { L_ROW, L_COL, L_ROW_PAD, L_COL_PAD, L_STRIDED, L_COUNT };

static tmat_t tmat_new(nq_dtype_t dt, int64_t rows, int64_t cols, int layout) {
  tmat_t m = {.rows = rows, .cols = cols};
  int64_t rs, cs, n;
  switch (layout) {
    case L_ROW: rs = cols, cs = 1, n = rows * cols; break;
    case L_COL: rs = 1, cs = rows, n = rows * cols; break;
    case L_ROW_PAD: rs = cols + 5, cs = 1, n = rows * (cols + 5); break;   /* per-head slice of wider rows */
    case L_COL_PAD: rs = 1, cs = rows + 3, n = cols * (rows + 3); break;   /* W^T of a padded weight */
    default: rs = 2 * cols + 1, cs = 2, n = rows * (2 * cols + 1); break; /* every other element */
  }
  size_t es = nq_dtype_size(dt);
  m.store = malloc(es * (size_t)n + 64);
  m.vals = malloc(sizeof(double) * (size_t)(rows * cols));
  cr_assert(m.store && m.vals);
  for (int64_t i = 0; i < n; i++) { /* poison the gaps */
    if (dt == NQ_DT_F32) ((float *)m.store)[i] = 1e30f;
    else ((uint16_t *)m.store)[i] = dt == NQ_DT_BF16 ? nq_f32_to_bf16(1e30f) : 0x7bff;
  }
  for (int64_t i = 0; i < rows; i++)
    for (int64_t j = 0; j < cols; j++) {
      float f = frand();
      int64_t o = i * rs + j * cs;
      double v;
      if (dt == NQ_DT_F32) ((float *)m.store)[o] = f, v = f;
      else if (dt == NQ_DT_BF16) ((uint16_t *)m.store)[o] = nq_f32_to_bf16(f), v = nq_bf16_to_f32(nq_f32_to_bf16(f));
      else ((uint16_t *)m.store)[o] = nq_f32_to_f16(f), v = nq_f16_to_f32(nq_f32_to_f16(f));
      m.vals[i * cols + j] = v;
    }
  m.v = (nq_gemm_mat_t){.data = m.store, .dtype = dt, .rs = rs, .cs = cs};
  return m;
}

static void tmat_free(tmat_t *m) { free(m->store), free(m->vals); }

/* Runs one case and checks every element against sum_k a*b in double, with a bound scaled by sum_k |a*b|. */
static void run_case(nq_pool_t *pool, int64_t M, int64_t N, int64_t K, nq_dtype_t da, nq_dtype_t db, int la, int lb,
                     bool acc, int bias_kind, int64_t pad) {
  tmat_t A = tmat_new(da, M, K, la), B = tmat_new(db, K, N, lb);
  const int64_t ldc = N + pad;
  float *C = malloc(sizeof(float) * (size_t)(M * ldc)), *bias = malloc(sizeof(float) * (size_t)N),
        *bias_m = malloc(sizeof(float) * (size_t)M);
  double *C0 = malloc(sizeof(double) * (size_t)(M * ldc));
  cr_assert(C && bias && bias_m && C0);
  for (int64_t i = 0; i < M * ldc; i++) C[i] = frand(), C0[i] = C[i];
  for (int64_t j = 0; j < N; j++) bias[j] = frand();
  for (int64_t i = 0; i < M; i++) bias_m[i] = frand();
  nq_gemm_args_t g = {.M = M, .N = N, .K = K, .a = A.v, .b = B.v, .c = C, .ldc = ldc, .accumulate = acc,
                      .bias = (bias_kind & 1) ? bias : NULL, .bias_m = (bias_kind & 2) ? bias_m : NULL};
  nq_err_t err = {0};
  cr_assert_eq(nq_gemm(pool, &g, &err), 0, "%s", err.msg);
  for (int64_t i = 0; i < M; i++)
    for (int64_t j = 0; j < ldc; j++) {
      double got = C[i * ldc + j];
      if (j >= N) {
        cr_assert_eq(got, C0[i * ldc + j], "padding column %lld of row %lld was written", (long long)j, (long long)i);
        continue;
      }
      double s = 0, mag = 0;
      for (int64_t k = 0; k < K; k++) {
        double p = A.vals[i * K + k] * B.vals[k * N + j];
        s += p, mag += fabs(p);
      }
      if (acc) s += C0[i * ldc + j], mag += fabs(C0[i * ldc + j]);
      if (g.bias) s += bias[j], mag += fabs(bias[j]);
      if (g.bias_m) s += bias_m[i], mag += fabs(bias_m[i]);
      cr_assert(fabs(got - s) <= 1e-5 * mag + 1e-6 * sqrt((double)K + 1) + 1e-30,
                "M=%lld N=%lld K=%lld A %s/%d B %s/%d acc %d bias %d: C[%lld,%lld] = %.8g, want %.8g (|terms| %.3g)",
                (long long)M, (long long)N, (long long)K, nq_dtype_name(da), la, nq_dtype_name(db), lb, acc,
                bias_kind, (long long)i, (long long)j, got, s, mag);
    }
  free(C), free(bias), free(bias_m), free(C0);
  tmat_free(&A), tmat_free(&B);
}

static const nq_dtype_t k_dts[3] = {NQ_DT_F32, NQ_DT_BF16, NQ_DT_F16};

static void random_cases(int n) {
  nq_pool_t *pool = nq_pool_new(2);
  cr_assert(pool);
  for (int it = 0; it < n; it++) {
    int64_t M = irand(1, 300), N = irand(1, 300), K = irand(1, 300);
    if (it % 3 == 0) M = irand(1, 20); /* small / edge sizes often */
    if (it % 5 == 1) N = irand(1, 40);
    if (it % 7 == 2) K = irand(1, 9);
    run_case(it % 2 ? pool : NULL, M, N, K, k_dts[it % 3], k_dts[(it / 3) % 3], (int)(rnd() % L_COUNT),
             (int)(rnd() % L_COUNT), rnd() % 2, (int)(rnd() % 4), rnd() % 2 ? 0 : 7);
  }
  nq_pool_free(pool);
}

static void boundary_cases(void) {
  nq_pool_t *pool = nq_pool_new(2);
  /* K > KC (256) with a tail, M > MC (144), a thread's rows > MC_ONE (384: the panel path), N > NC (3072) */
  run_case(pool, 800, 300, 300, NQ_DT_BF16, NQ_DT_F32, L_ROW, L_ROW, true, 3, 1);
  run_case(pool, 150, 160, 777, NQ_DT_F32, NQ_DT_BF16, L_ROW, L_COL, false, 1, 0);
  run_case(pool, 301, 50, 530, NQ_DT_BF16, NQ_DT_F32, L_ROW, L_ROW, true, 2, 4);
  run_case(pool, 7, 3100, 40, NQ_DT_F32, NQ_DT_F16, L_ROW, L_COL, false, 3, 0);
  run_case(pool, 128, 512, 512, NQ_DT_F32, NQ_DT_BF16, L_ROW, L_COL, false, 1, 0); /* a linear layer's shape */
  run_case(NULL, 1, 1, 1, NQ_DT_F32, NQ_DT_F32, L_ROW, L_ROW, false, 0, 0);
  run_case(pool, 1, 700, 300, NQ_DT_F32, NQ_DT_BF16, L_ROW, L_COL, true, 1, 0);
  run_case(pool, 700, 1, 300, NQ_DT_BF16, NQ_DT_F32, L_ROW, L_ROW, false, 2, 2);
  nq_pool_free(pool);
}

Test(gemm, random_shapes_dtypes_layouts) { random_cases(90); }

Test(gemm, every_dtype_pair_and_layout) {
  nq_pool_t *pool = nq_pool_new(2);
  for (int da = 0; da < 3; da++)
    for (int db = 0; db < 3; db++)
      for (int la = 0; la < L_COUNT; la++)
        for (int lb = 0; lb < L_COUNT; lb++) run_case(pool, 13 + la, 35 + lb, 21 + da + db, k_dts[da], k_dts[db], la,
                                                      lb, (la + lb) % 2, (la + db) % 4, lb % 2 ? 3 : 0);
  nq_pool_free(pool);
}

Test(gemm, blocking_boundaries) { boundary_cases(); }

/* The same with tiny blocks, so that small shapes cross every loop of the driver many times (K tails, several A
 * blocks and B panels per thread, both the one-A-block and the panel paths). */
Test(gemm, tiny_blocking) {
  nq_gemm_set_blocking(40, 18, 30, 64);
  random_cases(60);
  boundary_cases();
  nq_gemm_set_blocking(0, 0, 0, 0);
}

Test(gemm, k_zero_and_errors) {
  float C[6] = {1, 2, 3, 4, 5, 6}, bias[3] = {10, 20, 30}, bm[2] = {100, 200}, dummy = 0;
  nq_gemm_mat_t z = {.data = &dummy, .dtype = NQ_DT_F32, .rs = 0, .cs = 0};
  nq_gemm_args_t g = {.M = 2, .N = 3, .K = 0, .a = z, .b = z, .c = C, .ldc = 3, .bias = bias, .bias_m = bm};
  nq_err_t err = {0};
  cr_assert_eq(nq_gemm(NULL, &g, &err), 0);
  float want[6] = {110, 120, 130, 210, 220, 230};
  for (int i = 0; i < 6; i++) cr_assert_eq(C[i], want[i]);
  g.accumulate = true;
  cr_assert_eq(nq_gemm(NULL, &g, &err), 0);
  for (int i = 0; i < 6; i++) cr_assert_eq(C[i], 2 * want[i]);
  g.K = 1, g.a.dtype = NQ_DT_I32;
  cr_assert_eq(nq_gemm(NULL, &g, &err), NQ_EINVAL);
  g.a.dtype = NQ_DT_F32, g.ldc = 2;
  cr_assert_eq(nq_gemm(NULL, &g, &err), NQ_EINVAL);
}

/* ---- B through a pack callback (packs from a row-major F32 matrix, the documented layout) ---- */

typedef struct {
  const float *b;
  int64_t N;
} pack_ctx_t;

static void pack_rows(void *ctx, int64_t k0, int64_t kc, int64_t n0, int64_t nc, float *dst) {
  const pack_ctx_t *p = ctx;
  for (int64_t s = 0; s * NQ_GEMM_NR < nc; s++)
    for (int64_t k = 0; k < kc; k++)
      for (int64_t j = 0; j < NQ_GEMM_NR; j++) {
        int64_t col = s * NQ_GEMM_NR + j;
        dst[(s * kc + k) * NQ_GEMM_NR + j] = col < nc ? p->b[(k0 + k) * p->N + n0 + col] : 0.0f;
      }
}

Test(gemm, pack_b_callback) {
  nq_pool_t *pool = nq_pool_new(2);
  const int64_t shapes[][3] = {{37, 301, 290}, {150, 45, 600}, {5, 3, 2}};
  for (int s = 0; s < 3; s++) {
    int64_t M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
    tmat_t A = tmat_new(NQ_DT_BF16, M, K, L_ROW), B = tmat_new(NQ_DT_F32, K, N, L_ROW);
    float *C = malloc(sizeof(float) * (size_t)(M * N));
    pack_ctx_t pc = {B.store, N};
    nq_gemm_args_t g = {.M = M, .N = N, .K = K, .a = A.v, .pack_b = pack_rows, .pack_b_ctx = &pc, .c = C, .ldc = N};
    nq_err_t err = {0};
    cr_assert_eq(nq_gemm(pool, &g, &err), 0, "%s", err.msg);
    for (int64_t i = 0; i < M; i++)
      for (int64_t j = 0; j < N; j++) {
        double r = 0, mag = 0;
        for (int64_t k = 0; k < K; k++) r += A.vals[i * K + k] * B.vals[k * N + j], mag += fabs(A.vals[i * K + k]);
        cr_assert(fabs(C[i * N + j] - r) <= 1e-5 * mag + 1e-6, "C[%lld,%lld] = %g want %g", (long long)i,
                  (long long)j, C[i * N + j], r);
      }
    free(C);
    tmat_free(&A), tmat_free(&B);
  }
  nq_pool_free(pool);
}

/* ---- conv2d on the cpu backend (nq_gemm, implicit im2col) vs the ref backend's direct loops ---- */

static double conv_case(nq_backend_t *cpu, nq_backend_t *ref, int64_t N, int64_t Ci, int64_t H, int64_t W, int64_t Co,
                        int64_t kh, int64_t kw, int64_t s, int64_t p, int64_t d, int64_t g, nq_dtype_t wdt, int bias) {
  nq_err_t err = {0};
  int64_t Ho = (H + 2 * p - d * (kh - 1) - 1) / s + 1, Wo = (W + 2 * p - d * (kw - 1) - 1) / s + 1;
  nq_tensor_t x, w, b, y1, y2;
  cr_assert_eq(nq_tensor_init(&x, NQ_DT_F32, 4, NQ_SHAPE(N, Ci, H, W), &err), 0);
  cr_assert_eq(nq_tensor_init(&w, wdt, 4, NQ_SHAPE(Co, Ci / g, kh, kw), &err), 0);
  cr_assert_eq(nq_tensor_init(&b, NQ_DT_F32, 1, NQ_SHAPE(Co), &err), 0);
  cr_assert_eq(nq_tensor_init(&y1, NQ_DT_F32, 4, NQ_SHAPE(N, Co, Ho, Wo), &err), 0);
  cr_assert_eq(nq_tensor_init(&y2, NQ_DT_F32, 4, NQ_SHAPE(N, Co, Ho, Wo), &err), 0);
  for (int64_t i = 0; i < nq_tensor_numel(&x); i++) nq_tensor_set(&x, i, frand());
  for (int64_t i = 0; i < nq_tensor_numel(&w); i++) nq_tensor_set(&w, i, frand());
  for (int64_t i = 0; i < Co; i++) nq_tensor_set(&b, i, frand());
  for (int64_t i = 0; i < nq_tensor_numel(&y1); i++) nq_tensor_set(&y1, i, 1e3); /* must be overwritten */
  nq_op_desc_t op = {.op = NQ_OP_CONV2D, .src = {&x, &w, bias ? &b : NULL}, .dst = &y1,
                     .i = {s, s, p, p, d, d, g}};
  cr_assert_eq(nq_op_check(&op, &err), 0, "%s", err.msg);
  cr_assert_eq(cpu->iface->compute(cpu, &op, &err), 0, "%s", err.msg);
  op.dst = &y2;
  cr_assert_eq(ref->iface->compute(ref, &op, &err), 0, "%s", err.msg);
  double num = 0, den = 0;
  for (int64_t i = 0; i < nq_tensor_numel(&y1); i++) {
    double a = nq_tensor_get(&y1, i), r = nq_tensor_get(&y2, i);
    num += (a - r) * (a - r), den += r * r;
  }
  nq_tensor_deinit(&x), nq_tensor_deinit(&w), nq_tensor_deinit(&b), nq_tensor_deinit(&y1), nq_tensor_deinit(&y2);
  return sqrt(num / fmax(den, 1e-30));
}

Test(gemm, conv2d_cpu_backend_vs_ref) {
  nq_err_t err = {0};
  nq_pool_t *pool = nq_pool_new(2);
  nq_backend_t *cpu = nq_backend_cpu_new(pool, &err), *ref = nq_backend_ref_new(&err);
  cr_assert(cpu && ref, "%s", err.msg);
  /* N, Ci, H, W, Co, kh, kw, stride, pad, dilation, groups */
  const int64_t cases[][11] = {
      {1, 4, 9, 11, 5, 3, 3, 1, 1, 1, 1},   {2, 6, 17, 13, 8, 3, 3, 2, 1, 1, 2}, {1, 3, 20, 23, 7, 1, 1, 1, 0, 1, 1},
      {1, 5, 8, 40, 9, 3, 3, 1, 2, 2, 1},   {1, 8, 12, 12, 16, 1, 1, 2, 0, 1, 4}, {2, 3, 7, 5, 2, 5, 3, 1, 2, 1, 1},
      {1, 32, 18, 18, 40, 3, 3, 1, 1, 1, 1}, {1, 2, 4, 4, 3, 4, 4, 1, 0, 1, 1},   {1, 16, 33, 17, 20, 3, 3, 2, 1, 1, 1},
  };
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
    const int64_t *q = cases[c];
    double e = conv_case(cpu, ref, q[0], q[1], q[2], q[3], q[4], q[5], q[6], q[7], q[8], q[9], q[10], k_dts[c % 3],
                         (int)(c % 2));
    cr_assert(e < 1e-5, "conv case %zu (%s weights): rel l2 %g", c, nq_dtype_name(k_dts[c % 3]), e);
  }
  nq_backend_free(cpu), nq_backend_free(ref);
  nq_pool_free(pool);
}

/* ---- linear on the cpu backend from the row count where it switches to nq_gemm, vs the ref backend ---- */

Test(gemm, linear_cpu_backend_vs_ref) {
  nq_err_t err = {0};
  nq_pool_t *pool = nq_pool_new(2);
  nq_backend_t *cpu = nq_backend_cpu_new(pool, &err), *ref = nq_backend_ref_new(&err);
  cr_assert(cpu && ref, "%s", err.msg);
  const int64_t shapes[][3] = {{40, 33, 70}, {70, 100, 257}, {128, 48, 300}, {200, 17, 5}}; /* M, N, K */
  for (int s = 0; s < 4; s++)
    for (int d = 0; d < 3; d++) {
      const int64_t M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
      /* x rows are a slice of wider rows (row stride K + 3), as a per-head view would be */
      nq_tensor_t xw, x, w, b, y1, y2;
      cr_assert_eq(nq_tensor_init(&xw, NQ_DT_F32, 2, NQ_SHAPE(M, K + 3), &err), 0);
      cr_assert_eq(nq_tensor_view_slice(&xw, 1, 2, K, &x, &err), 0, "%s", err.msg);
      cr_assert_eq(nq_tensor_init(&w, k_dts[d], 2, NQ_SHAPE(N, K), &err), 0);
      cr_assert_eq(nq_tensor_init(&b, NQ_DT_F32, 1, NQ_SHAPE(N), &err), 0);
      cr_assert_eq(nq_tensor_init(&y1, NQ_DT_F32, 2, NQ_SHAPE(M, N), &err), 0);
      cr_assert_eq(nq_tensor_init(&y2, NQ_DT_F32, 2, NQ_SHAPE(M, N), &err), 0);
      for (int64_t i = 0; i < nq_tensor_numel(&xw); i++) nq_tensor_set(&xw, i, frand());
      for (int64_t i = 0; i < nq_tensor_numel(&w); i++) nq_tensor_set(&w, i, frand());
      for (int64_t i = 0; i < N; i++) nq_tensor_set(&b, i, frand());
      nq_linear_t lin;
      nq_linear_init(&lin, &w, s % 2 ? &b : NULL);
      nq_op_desc_t op = {.op = NQ_OP_LINEAR, .src = {&x}, .dst = &y1, .lin = &lin};
      cr_assert_eq(nq_op_check(&op, &err), 0, "%s", err.msg);
      cr_assert_eq(cpu->iface->compute(cpu, &op, &err), 0, "%s", err.msg);
      op.dst = &y2;
      cr_assert_eq(ref->iface->compute(ref, &op, &err), 0, "%s", err.msg);
      for (int64_t i = 0; i < M * N; i++) {
        double a = ((float *)y1.data)[i], r = ((float *)y2.data)[i];
        cr_assert(fabs(a - r) <= 1e-4 * (1.0 + fabs(r)), "M=%lld N=%lld K=%lld %s: y[%lld] = %g, ref %g",
                  (long long)M, (long long)N, (long long)K, nq_dtype_name(k_dts[d]), (long long)i, a, r);
      }
      nq_linear_deinit(&lin); /* frees w (and b when given): ownership moved to lin */
      if (!(s % 2)) nq_tensor_deinit(&b);
      nq_tensor_deinit(&xw), nq_tensor_deinit(&y1), nq_tensor_deinit(&y2);
    }
  nq_backend_free(cpu), nq_backend_free(ref);
  nq_pool_free(pool);
}

/* The cpu backend: every op on the thread pool. Linear reads F32, BF16 or F16 weights directly (no conversion
 * pass): below NQ_CPU_GEMM_MIN_M rows with AVX2/FMA GEMV-style kernels, so a decode step streams each weight byte
 * once (the memory-bandwidth-bound path); from NQ_CPU_GEMM_MIN_M rows (prefill) through the packed, cache-blocked
 * nq_gemm. Conv2d runs through nq_gemm too: one GEMM per (image, group) with the im2col columns packed straight from
 * the NCHW input (implicit im2col, no column buffer); 1x1 stride-1 unpadded convs read the input as B directly. */
#include <stdlib.h>
#include <string.h>

#include "compute/backends/backends_int.h"
#include "compute/backends/gemm.h"

/* Rows from which nq_gemm beats the GEMV kernel (measured, BF16 N=K=4096, 2 threads: GEMV 118 vs gemm 108 GFLOP/s
 * at M=32, 122 vs 135 at M=48). */
#define NQ_CPU_GEMM_MIN_M 40

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define NQ_CPU_SIMD 1
#endif

typedef struct {
  const nq_op_desc_t *op;
  nq_core__rows_t x, y;
} nq_cpu__lin_t;

#ifdef NQ_CPU_SIMD
static inline __attribute__((always_inline)) __m256 nq_cpu__ld8(const void *w, int64_t k, nq_dtype_t dt) {
  if (dt == NQ_DT_F32) return _mm256_loadu_ps((const float *)w + k);
  __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)w + k));
  if (dt == NQ_DT_F16) return _mm256_cvtph_ps(h);
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

static inline float nq_cpu__hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

static inline float nq_cpu__w1(const void *w, int64_t k, nq_dtype_t dt) {
  if (dt == NQ_DT_F32) return ((const float *)w)[k];
  if (dt == NQ_DT_F16) return nq_f16_to_f32(((const uint16_t *)w)[k]);
  return nq_bf16_to_f32(((const uint16_t *)w)[k]);
}

/* rows [n0, n1) of W against every x row; 4 weight rows x 2 x rows per inner block. */
static inline __attribute__((always_inline)) void nq_cpu__lin_block(const nq_cpu__lin_t *j, int64_t n0, int64_t n1,
                                                                   nq_dtype_t dt) {
  const nq_tensor_t *W = &j->op->lin->w;
  const int64_t K = W->ne[1], K8 = K & ~(int64_t)7, M = j->x.n;
  const size_t es = nq_dtype_size(dt);
  const float *X = j->op->src[0]->data, *bias = j->op->lin->b.data;
  float *Y = j->op->dst->data;
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4) {
    const char *w0 = (const char *)W->data + (size_t)n * K * es, *w1 = w0 + K * es, *w2 = w1 + K * es,
               *w3 = w2 + K * es;
    int64_t m = 0;
    for (; m + 2 <= M; m += 2) {
      const float *xa = X + m * j->x.stride, *xb = xa + j->x.stride;
      __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
      for (int64_t k = 0; k < K8; k += 8) {
        __m256 va = _mm256_loadu_ps(xa + k), vb = _mm256_loadu_ps(xb + k);
        __m256 v0 = nq_cpu__ld8(w0, k, dt), v1 = nq_cpu__ld8(w1, k, dt), v2 = nq_cpu__ld8(w2, k, dt),
               v3 = nq_cpu__ld8(w3, k, dt);
        a0 = _mm256_fmadd_ps(v0, va, a0), a1 = _mm256_fmadd_ps(v1, va, a1);
        a2 = _mm256_fmadd_ps(v2, va, a2), a3 = _mm256_fmadd_ps(v3, va, a3);
        b0 = _mm256_fmadd_ps(v0, vb, b0), b1 = _mm256_fmadd_ps(v1, vb, b1);
        b2 = _mm256_fmadd_ps(v2, vb, b2), b3 = _mm256_fmadd_ps(v3, vb, b3);
      }
      float ra[4] = {nq_cpu__hsum(a0), nq_cpu__hsum(a1), nq_cpu__hsum(a2), nq_cpu__hsum(a3)};
      float rb[4] = {nq_cpu__hsum(b0), nq_cpu__hsum(b1), nq_cpu__hsum(b2), nq_cpu__hsum(b3)};
      const char *ws[4] = {w0, w1, w2, w3};
      for (int r = 0; r < 4; r++) {
        for (int64_t k = K8; k < K; k++) {
          float wv = nq_cpu__w1(ws[r], k, dt);
          ra[r] += wv * xa[k], rb[r] += wv * xb[k];
        }
        float bb = bias ? bias[n + r] : 0.0f;
        Y[m * j->y.stride + n + r] = ra[r] + bb;
        Y[(m + 1) * j->y.stride + n + r] = rb[r] + bb;
      }
    }
    for (; m < M; m++) {
      const float *xa = X + m * j->x.stride;
      __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
      for (int64_t k = 0; k < K8; k += 8) {
        __m256 va = _mm256_loadu_ps(xa + k);
        a0 = _mm256_fmadd_ps(nq_cpu__ld8(w0, k, dt), va, a0);
        a1 = _mm256_fmadd_ps(nq_cpu__ld8(w1, k, dt), va, a1);
        a2 = _mm256_fmadd_ps(nq_cpu__ld8(w2, k, dt), va, a2);
        a3 = _mm256_fmadd_ps(nq_cpu__ld8(w3, k, dt), va, a3);
      }
      float ra[4] = {nq_cpu__hsum(a0), nq_cpu__hsum(a1), nq_cpu__hsum(a2), nq_cpu__hsum(a3)};
      const char *ws[4] = {w0, w1, w2, w3};
      for (int r = 0; r < 4; r++) {
        for (int64_t k = K8; k < K; k++) ra[r] += nq_cpu__w1(ws[r], k, dt) * xa[k];
        Y[m * j->y.stride + n + r] = ra[r] + (bias ? bias[n + r] : 0.0f);
      }
    }
  }
  for (; n < n1; n++) {
    const char *w0 = (const char *)W->data + (size_t)n * K * es;
    for (int64_t m = 0; m < M; m++) {
      const float *xa = X + m * j->x.stride;
      __m256 a0 = _mm256_setzero_ps();
      for (int64_t k = 0; k < K8; k += 8) a0 = _mm256_fmadd_ps(nq_cpu__ld8(w0, k, dt), _mm256_loadu_ps(xa + k), a0);
      float r = nq_cpu__hsum(a0);
      for (int64_t k = K8; k < K; k++) r += nq_cpu__w1(w0, k, dt) * xa[k];
      Y[m * j->y.stride + n] = r + (bias ? bias[n] : 0.0f);
    }
  }
}

static void nq_cpu__lin_cb(void *ctx, int64_t n0, int64_t n1, int tid) {
  const nq_cpu__lin_t *j = ctx;
  switch (j->op->lin->w.dtype) {
    case NQ_DT_F32: nq_cpu__lin_block(j, n0, n1, NQ_DT_F32); break;
    case NQ_DT_F16: nq_cpu__lin_block(j, n0, n1, NQ_DT_F16); break;
    default: nq_cpu__lin_block(j, n0, n1, NQ_DT_BF16); break;
  }
}
#else
static void nq_cpu__lin_cb(void *ctx, int64_t n0, int64_t n1, int tid) {
  const nq_cpu__lin_t *j = ctx;
  const nq_tensor_t *W = &j->op->lin->w;
  int64_t K = W->ne[1];
  float *wrow = malloc(sizeof(float) * (size_t)K);
  NQ_ASSERT(wrow);
  for (int64_t n = n0; n < n1; n++) {
    nq_core__row_to_f32(wrow, W->data, W->dtype, n, K);
    for (int64_t m = 0; m < j->x.n; m++) {
      const float *xm = (const float *)j->op->src[0]->data + m * j->x.stride;
      float s = 0.0f;
      for (int64_t k = 0; k < K; k++) s += xm[k] * wrow[k];
      const float *b = j->op->lin->b.data;
      ((float *)j->op->dst->data)[m * j->y.stride + n] = s + (b ? b[n] : 0.0f);
    }
  }
  free(wrow);
}
#endif

static bool nq_cpu__supports(const nq_backend_t *be, const nq_op_desc_t *op) { return nq_backends__is_host_op(op); }

/* ---- linear through nq_gemm: C = X . W^T, W^T read as a transposed view of the [N,K] weight ---- */

static int nq_cpu__linear_gemm(nq_backend_t *be, const nq_op_desc_t *op, const nq_core__rows_t *x,
                               const nq_core__rows_t *y, nq_err_t *err) {
  const nq_tensor_t *W = &op->lin->w;
  const int64_t N = W->ne[0], K = W->ne[1];
  nq_gemm_args_t g = {.M = x->n, .N = N, .K = K,
                      .a = {op->src[0]->data, NQ_DT_F32, x->stride, 1},
                      .b = {W->data, W->dtype, 1, K},
                      .c = op->dst->data, .ldc = y->stride,
                      .bias = op->lin->b.data};
  return nq_gemm(be->pool, &g, err);
}

/* ---- conv2d through nq_gemm: per (image, group) C[cog, Ho*Wo] = W_g[cog, cig*kh*kw] . cols[cig*kh*kw, Ho*Wo] ---- */

typedef struct {
  const nq_core__conv_t *c;
  const float *x; /* [cig, H, W] of this (image, group); borrowed */
} nq_cpu__im2col_t;

/* Packs im2col columns [n0, n0+nc) (output positions) x rows [k0, k0+kc) (ci, ky, kx) into NR-wide slivers: for each
 * sliver the positions are cut into runs within one output row; a run copies a clipped span of an input row. */
static void nq_cpu__pack_im2col(void *ctx, int64_t k0, int64_t kc, int64_t n0, int64_t nc, float *dst) {
  const nq_cpu__im2col_t *j = ctx;
  const nq_core__conv_t *c = j->c;
  const int64_t HW = c->H * c->W, khw = c->kh * c->kw;
  for (int64_t s = 0; s * NQ_GEMM_NR < nc; s++) {
    float *d = dst + s * kc * NQ_GEMM_NR;
    const int64_t p0 = n0 + s * NQ_GEMM_NR, w = nc - s * NQ_GEMM_NR < NQ_GEMM_NR ? nc - s * NQ_GEMM_NR : NQ_GEMM_NR;
    int64_t run_j[NQ_GEMM_NR], run_len[NQ_GEMM_NR], run_iy[NQ_GEMM_NR], run_ix[NQ_GEMM_NR];
    int nrun = 0;
    for (int64_t jj = 0; jj < w;) {
      int64_t p = p0 + jj, oy = p / c->Wo, ox = p % c->Wo, len = c->Wo - ox < w - jj ? c->Wo - ox : w - jj;
      run_j[nrun] = jj, run_len[nrun] = len, run_iy[nrun] = oy * c->sh - c->ph, run_ix[nrun] = ox * c->sw - c->pw;
      nrun++, jj += len;
    }
    int64_t ci = k0 / khw, ky = (k0 / c->kw) % c->kh, kx = k0 % c->kw;
    for (int64_t k = 0; k < kc; k++) {
      float *dk = d + k * NQ_GEMM_NR;
      const float *xc = j->x + ci * HW;
      for (int r = 0; r < nrun; r++) {
        float *dr = dk + run_j[r];
        const int64_t len = run_len[r], iy = run_iy[r] + ky * c->dh, ix0 = run_ix[r] + kx * c->dw;
        if (iy < 0 || iy >= c->H) {
          memset(dr, 0, sizeof(float) * (size_t)len);
          continue;
        }
        const float *xr = xc + iy * c->W;
        if (c->sw == 1) {
          int64_t a = ix0 < 0 ? -ix0 : 0, b = c->W - ix0 < len ? c->W - ix0 : len;
          if (b < a) b = a;
          for (int64_t t = 0; t < a; t++) dr[t] = 0.0f;
          memcpy(dr + a, xr + ix0 + a, sizeof(float) * (size_t)(b - a));
          for (int64_t t = b; t < len; t++) dr[t] = 0.0f;
        } else {
          for (int64_t t = 0; t < len; t++) {
            int64_t ix = ix0 + t * c->sw;
            dr[t] = ix >= 0 && ix < c->W ? xr[ix] : 0.0f;
          }
        }
      }
      for (int64_t t = w; t < NQ_GEMM_NR; t++) dk[t] = 0.0f;
      if (++kx == c->kw) {
        kx = 0;
        if (++ky == c->kh) ky = 0, ci++;
      }
    }
  }
}

static int nq_cpu__conv2d(nq_backend_t *be, const nq_op_desc_t *op, nq_err_t *err) {
  const nq_core__conv_t c = nq_core__conv_of(op);
  const nq_tensor_t *w = op->src[1];
  const float *X = op->src[0]->data, *bias = op->src[2] ? op->src[2]->data : NULL;
  float *Y = op->dst->data;
  const int64_t K = c.cig * c.kh * c.kw, HoWo = c.Ho * c.Wo, HW = c.H * c.W;
  const size_t es = nq_dtype_size(w->dtype);
  const bool direct = c.kh == 1 && c.kw == 1 && c.sh == 1 && c.sw == 1 && c.ph == 0 && c.pw == 0;
  for (int64_t n = 0; n < c.N; n++)
    for (int64_t g = 0; g < c.g; g++) {
      const float *xg = X + (n * c.Ci + g * c.cig) * HW;
      nq_cpu__im2col_t ic = {&c, xg};
      nq_gemm_args_t ga = {.M = c.cog, .N = HoWo, .K = K,
                           .a = {(const char *)w->data + (size_t)(g * c.cog * K) * es, w->dtype, K, 1},
                           .c = Y + (n * c.Co + g * c.cog) * HoWo, .ldc = HoWo,
                           .bias_m = bias ? bias + g * c.cog : NULL};
      if (direct)
        ga.b = (nq_gemm_mat_t){xg, NQ_DT_F32, HW, 1};
      else
        ga.pack_b = nq_cpu__pack_im2col, ga.pack_b_ctx = &ic;
      int rc = nq_gemm(be->pool, &ga, err);
      if (rc < 0) return rc;
    }
  return 0;
}

static int nq_cpu__compute(nq_backend_t *be, const nq_op_desc_t *op, nq_err_t *err) {
  if (op->op == NQ_OP_LINEAR) {
    nq_cpu__lin_t j = {.op = op, .x = nq_core__rows_of(op->src[0]), .y = nq_core__rows_of(op->dst)};
    if (j.x.n >= NQ_CPU_GEMM_MIN_M) return nq_cpu__linear_gemm(be, op, &j.x, &j.y, err);
    /* chunks of 16 rows: whole cache lines of output, 4-row kernel blocks */
    nq_pool_for(be->pool, op->lin->w.ne[0], 16, nq_cpu__lin_cb, &j);
    return 0;
  }
  if (op->op == NQ_OP_CONV2D) return nq_cpu__conv2d(be, op, err);
  return nq_backends__host_run(op, be->pool, err);
}

static const nq_backend_i nq_cpu__iface = {
    .name = "cpu",
    .kind = NQ_BK_CPU,
    .supports_op = nq_cpu__supports,
    .compute = nq_cpu__compute,
};

nq_backend_t *nq_backend_cpu_new(nq_pool_t *pool, nq_err_t *err) {
  return nq_backends__alloc(&nq_cpu__iface, NULL, pool ? pool : nq_pool_default(), err);
}

/* The OpenBLAS backend: linear and convolutions. F32 weights: sgemv for M = 1 (sgemm with M = 1 is ~3.5x
 * slower), sgemm otherwise. BF16/F16 weights: blocks of weight rows are widened to F32 into a scratch buffer on
 * the pool, then sgemm. It does not prefer BF16/F16 linears nor conv2d: the cpu backend's nq_gemm reads BF16/F16
 * operands directly and packs conv2d columns straight from the input (measured with bench/bench_gemm, 2 threads:
 * 7B prefill linears M=128 BF16 159-168 GFLOP/s vs 98-141 here; conv 320->320 3x3 64x64 BF16 174 vs 142), and
 * leaving OpenBLAS idle keeps its threads from spinning (sched_yield) while the pool runs. */
#include <stdlib.h>
#include <string.h>

#include "compute/backends/backends_int.h"

#ifdef NQ_WITH_OPENBLAS
#include <cblas.h>

#define NQ_BLAS_MIN_BATCH 16

static bool nq_blas__supports(const nq_backend_t *be, const nq_op_desc_t *op) {
  return (op->op == NQ_OP_LINEAR || op->op == NQ_OP_CONV2D || op->op == NQ_OP_CONV_TRANSPOSE1D) &&
         nq_backends__is_host_op(op);
}

static bool nq_blas__prefers(const nq_backend_t *be, const nq_op_desc_t *op) {
  if (op->op == NQ_OP_CONV2D) return false;
  if (op->op != NQ_OP_LINEAR) return true;
  int64_t M, len, st;
  if (!nq_tensor_rows(op->src[0], &M, &len, &st)) return false;
  if (op->lin->w.dtype == NQ_DT_F32) return M == 1 || M >= NQ_BLAS_MIN_BATCH;
  return false;
}

typedef struct {
  const nq_tensor_t *w;
  float *dst;
  int64_t n0;
} nq_blas__cvt_t;

static void nq_blas__cvt_cb(void *ctx, int64_t r0, int64_t r1, int tid) {
  nq_blas__cvt_t *c = ctx;
  int64_t K = c->w->ne[1];
  for (int64_t r = r0; r < r1; r++) nq_core__row_to_f32(c->dst + r * K, c->w->data, c->w->dtype, c->n0 + r, K);
}

/* ---- convolutions: im2col + sgemm (conv2d), sgemm + col2im (conv_transpose1d) ----
 * The column buffer is bounded (NQ_BLAS_COL_FLOATS) by splitting the output rows (conv2d) or the input positions
 * (conv_transpose1d) into chunks, so a 512x512 VAE layer needs 16 MiB of scratch, not gigabytes. */
#ifndef NQ_BLAS_COL_FLOATS /* tests build with a tiny value to exercise the chunking */
#define NQ_BLAS_COL_FLOATS ((int64_t)4 << 20)
#endif

typedef struct {
  const nq_core__conv_t *c;
  const float *x; /* [cig, H, W] of this (n, group) */
  float *col;     /* [K, rows*Wo] */
  int64_t oy0, rows;
} nq_blas__im2col_t;

static void nq_blas__im2col_cb(void *ctx, int64_t k0, int64_t k1, int tid) {
  const nq_blas__im2col_t *j = ctx;
  const nq_core__conv_t *c = j->c;
  const int64_t P = j->rows * c->Wo;
  for (int64_t kk = k0; kk < k1; kk++) {
    int64_t kx = kk % c->kw, ky = (kk / c->kw) % c->kh, ci = kk / (c->kw * c->kh);
    const float *xp = j->x + ci * c->H * c->W;
    float *dst = j->col + kk * P;
    for (int64_t r = 0; r < j->rows; r++) {
      int64_t iy = (j->oy0 + r) * c->sh - c->ph + ky * c->dh;
      float *d = dst + r * c->Wo;
      if (iy < 0 || iy >= c->H) {
        memset(d, 0, sizeof(float) * (size_t)c->Wo);
        continue;
      }
      const float *xr = xp + iy * c->W;
      for (int64_t ox = 0; ox < c->Wo; ox++) {
        int64_t ix = ox * c->sw - c->pw + kx * c->dw;
        d[ox] = (ix >= 0 && ix < c->W) ? xr[ix] : 0.0f;
      }
    }
  }
}

/* Weights as f32: the tensor itself when F32, else a converted copy in *tmp (caller frees). */
static const float *nq_blas__wf32(const nq_tensor_t *w, float **tmp, nq_err_t *err) {
  *tmp = NULL;
  if (w->dtype == NQ_DT_F32) return w->data;
  size_t n = (size_t)nq_tensor_numel(w);
  *tmp = malloc(sizeof(float) * n);
  if (!*tmp) {
    nq_err_set(err, NQ_ENOMEM, 0, "openblas conv: %zu weight floats", n);
    return NULL;
  }
  nq_dtype_to_f32(w->dtype, w->data, *tmp, n);
  return *tmp;
}

static void nq_blas__add_bias(float *Y, const float *bias, int64_t N, int64_t C, int64_t S) {
  if (!bias) return;
  for (int64_t n = 0; n < N; n++)
    for (int64_t c = 0; c < C; c++) {
      float *y = Y + (n * C + c) * S, b = bias[c];
      for (int64_t i = 0; i < S; i++) y[i] += b;
    }
}

static int nq_blas__conv2d(nq_backend_t *be, const nq_op_desc_t *op, nq_err_t *err) {
  const nq_core__conv_t c = nq_core__conv_of(op);
  float *wtmp;
  const float *W = nq_blas__wf32(op->src[1], &wtmp, err);
  if (!W) return err ? err->code : NQ_ENOMEM;
  const float *X = op->src[0]->data;
  float *Y = op->dst->data;
  const int64_t K = c.cig * c.kh * c.kw, HoWo = c.Ho * c.Wo, HW = c.H * c.W;
  const bool direct = c.kh == 1 && c.kw == 1 && c.sh == 1 && c.sw == 1 && c.ph == 0 && c.pw == 0;
  int64_t rows = direct ? c.Ho : NQ_BLAS_COL_FLOATS / (K * c.Wo);
  if (rows < 1) rows = 1;
  if (rows > c.Ho) rows = c.Ho;
  float *col = direct ? NULL : malloc(sizeof(float) * (size_t)(K * rows * c.Wo));
  if (!direct && !col) {
    free(wtmp);
    return nq_err_set(err, NQ_ENOMEM, 0, "openblas conv2d: column buffer %lldx%lld", (long long)K,
                      (long long)(rows * c.Wo));
  }
  for (int64_t n = 0; n < c.N; n++)
    for (int64_t g = 0; g < c.g; g++) {
      const float *xg = X + (n * c.Ci + g * c.cig) * HW, *wg = W + g * c.cog * K;
      float *yg = Y + (n * c.Co + g * c.cog) * HoWo;
      if (direct) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)c.cog, (int)HW, (int)K, 1.0f, wg, (int)K, xg,
                    (int)HW, 0.0f, yg, (int)HoWo);
        continue;
      }
      for (int64_t oy0 = 0; oy0 < c.Ho; oy0 += rows) {
        int64_t r = c.Ho - oy0 < rows ? c.Ho - oy0 : rows, P = r * c.Wo;
        nq_blas__im2col_t j = {&c, xg, col, oy0, r};
        nq_pool_for(be->pool, K, 1, nq_blas__im2col_cb, &j);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)c.cog, (int)P, (int)K, 1.0f, wg, (int)K, col,
                    (int)P, 0.0f, yg + oy0 * c.Wo, (int)HoWo);
      }
    }
  nq_blas__add_bias(Y, op->src[2] ? op->src[2]->data : NULL, c.N, c.Co, HoWo);
  free(col);
  free(wtmp);
  return 0;
}

typedef struct {
  const nq_core__conv_t *c;
  const float *cols; /* [cog*K, cnt] */
  float *y;          /* [cog, Lo] of this (n, group) */
  int64_t i0, cnt;
} nq_blas__col2im_t;

static void nq_blas__col2im_cb(void *ctx, int64_t c0, int64_t c1, int tid) {
  const nq_blas__col2im_t *j = ctx;
  const nq_core__conv_t *c = j->c;
  for (int64_t co = c0; co < c1; co++) {
    float *yr = j->y + co * c->Wo;
    for (int64_t k = 0; k < c->kw; k++) {
      const float *cr = j->cols + (co * c->kw + k) * j->cnt;
      int64_t off = k * c->dw - c->pw;
      for (int64_t t = 0; t < j->cnt; t++) {
        int64_t o = (j->i0 + t) * c->sw + off;
        if (o >= 0 && o < c->Wo) yr[o] += cr[t];
      }
    }
  }
}

static int nq_blas__convt1d(nq_backend_t *be, const nq_op_desc_t *op, nq_err_t *err) {
  const nq_core__conv_t c = nq_core__conv_of(op);
  float *wtmp;
  const float *W = nq_blas__wf32(op->src[1], &wtmp, err);
  if (!W) return err ? err->code : NQ_ENOMEM;
  const float *X = op->src[0]->data, *bias = op->src[2] ? op->src[2]->data : NULL;
  float *Y = op->dst->data;
  const int64_t L = c.W, Lo = c.Wo, MK = c.cog * c.kw;
  int64_t chunk = NQ_BLAS_COL_FLOATS / MK;
  if (chunk < 1) chunk = 1;
  if (chunk > L) chunk = L;
  float *cols = malloc(sizeof(float) * (size_t)(MK * chunk));
  if (!cols) {
    free(wtmp);
    return nq_err_set(err, NQ_ENOMEM, 0, "openblas conv_transpose1d: column buffer %lldx%lld", (long long)MK,
                      (long long)chunk);
  }
  for (int64_t n = 0; n < c.N; n++)
    for (int64_t co = 0; co < c.Co; co++) {
      float *yr = Y + (n * c.Co + co) * Lo, b = bias ? bias[co] : 0.0f;
      for (int64_t o = 0; o < Lo; o++) yr[o] = b;
    }
  for (int64_t n = 0; n < c.N; n++)
    for (int64_t g = 0; g < c.g; g++) {
      const float *xg = X + (n * c.Ci + g * c.cig) * L, *wg = W + g * c.cig * MK;
      for (int64_t i0 = 0; i0 < L; i0 += chunk) {
        int64_t cnt = L - i0 < chunk ? L - i0 : chunk;
        /* cols[cog*K, cnt] = Wg^T [cog*K, cig] . x[cig, i0:i0+cnt] */
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)MK, (int)cnt, (int)c.cig, 1.0f, wg, (int)MK,
                    xg + i0, (int)L, 0.0f, cols, (int)cnt);
        nq_blas__col2im_t j = {&c, cols, Y + (n * c.Co + g * c.cog) * Lo, i0, cnt};
        nq_pool_for(be->pool, c.cog, 1, nq_blas__col2im_cb, &j);
      }
    }
  free(cols);
  free(wtmp);
  return 0;
}

static int nq_blas__compute(nq_backend_t *be, const nq_op_desc_t *op, nq_err_t *err) {
  if (op->op == NQ_OP_CONV2D) return nq_blas__conv2d(be, op, err);
  if (op->op == NQ_OP_CONV_TRANSPOSE1D) return nq_blas__convt1d(be, op, err);
  nq_core__rows_t x = nq_core__rows_of(op->src[0]), y = nq_core__rows_of(op->dst);
  const nq_tensor_t *w = &op->lin->w;
  const int N = (int)w->ne[0], K = (int)w->ne[1], M = (int)x.n;
  const float *X = op->src[0]->data, *bias = op->lin->b.data;
  float *Y = op->dst->data;
  if (w->dtype == NQ_DT_F32) {
    if (M == 1)
      cblas_sgemv(CblasRowMajor, CblasNoTrans, N, K, 1.0f, w->data, K, X, 1, 0.0f, Y, 1);
    else
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, X, (int)x.stride, w->data, K, 0.0f, Y,
                  (int)y.stride);
  } else {
    int64_t nb = (4 << 20) / ((int64_t)K * 4); /* ~4 MiB of f32 weights per block */
    if (nb < 16) nb = 16;
    if (nb > N) nb = N;
    float *tmp = malloc(sizeof(float) * (size_t)(nb * K));
    if (!tmp) return nq_err_set(err, NQ_ENOMEM, 0, "openblas linear: scratch %lldx%d", (long long)nb, K);
    for (int64_t n0 = 0; n0 < N; n0 += nb) {
      int64_t cnt = N - n0 < nb ? N - n0 : nb;
      nq_blas__cvt_t c = {w, tmp, n0};
      nq_pool_for(be->pool, cnt, 8, nq_blas__cvt_cb, &c);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, (int)cnt, K, 1.0f, X, (int)x.stride, tmp, K, 0.0f,
                  Y + n0, (int)y.stride);
    }
    free(tmp);
  }
  if (bias)
    for (int m = 0; m < M; m++)
      for (int n = 0; n < N; n++) Y[m * y.stride + n] += bias[n];
  return 0;
}

static const nq_backend_i nq_blas__iface = {
    .name = "openblas",
    .kind = NQ_BK_OPENBLAS,
    .supports_op = nq_blas__supports,
    .prefers_op = nq_blas__prefers,
    .compute = nq_blas__compute,
};

nq_backend_t *nq_backend_openblas_new(nq_pool_t *pool, nq_err_t *err) {
  return nq_backends__alloc(&nq_blas__iface, NULL, pool ? pool : nq_pool_default(), err);
}
#else
nq_backend_t *nq_backend_openblas_new(nq_pool_t *pool, nq_err_t *err) {
  nq_err_set(err, NQ_EUNSUPPORTED, 0, "backend openblas: not built (WITH_OPENBLAS=0)");
  return NULL;
}
#endif

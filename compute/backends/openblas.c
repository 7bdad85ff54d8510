/* The OpenBLAS backend: linear only. F32 weights: sgemv for M = 1 (sgemm with M = 1 is ~3.5x
 * slower), sgemm otherwise. BF16/F16 weights (prefill): blocks of weight rows are widened to F32
 * into a scratch buffer on the pool, then sgemm — the O(N K) conversion is amortised over M rows,
 * so it only prefers those for M >= NQ_BLAS_MIN_BATCH_CVT. */
#include <stdlib.h>
#include <string.h>

#include "compute/backends/backends_int.h"

#ifdef NQ_WITH_OPENBLAS
#include <cblas.h>

#define NQ_BLAS_MIN_BATCH 16
/* widened BF16/F16 weights cost an extra pass over 2x the bytes: only worth it for big M */
#define NQ_BLAS_MIN_BATCH_CVT 64

static bool nq_blas__supports(const nq_backend_t *be, const nq_op_desc_t *op) {
  return op->op == NQ_OP_LINEAR && nq_backends__is_host_op(op);
}

static bool nq_blas__prefers(const nq_backend_t *be, const nq_op_desc_t *op) {
  int64_t M, len, st;
  if (!nq_tensor_rows(op->src[0], &M, &len, &st)) return false;
  if (op->lin->w.dtype == NQ_DT_F32) return M == 1 || M >= NQ_BLAS_MIN_BATCH;
  return M >= NQ_BLAS_MIN_BATCH_CVT;
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

static int nq_blas__compute(nq_backend_t *be, const nq_op_desc_t *op, nq_err_t *err) {
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

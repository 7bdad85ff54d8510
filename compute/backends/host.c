/* Host execution of the row-wise ops, attention and embedding (shared by ref and cpu). */
#include <stdlib.h>
#include <string.h>

#include "compute/backends/backends_int.h"
#include "compute/backends/gemm.h"

nq_backend_t *nq_backends__alloc(const nq_backend_i *iface, void *ctx, nq_pool_t *pool, nq_err_t *err) {
  nq_backend_t *be = calloc(1, sizeof(*be));
  if (!be) {
    nq_err_set(err, NQ_ENOMEM, 0, "backend %s: out of memory", iface->name);
    return NULL;
  }
  be->iface = iface;
  be->ctx = ctx;
  be->pool = pool;
  return be;
}

bool nq_backends__is_host_op(const nq_op_desc_t *op) {
  for (int i = 0; i < 3; i++)
    if (op->src[i] && op->src[i]->device) return false;
  return !op->dst || !op->dst->device;
}

typedef struct {
  const nq_op_desc_t *op;
  nq_core__rows_t x, y, b;
  float *scratch; /* attention: per thread */
  int64_t scratch_per;
  bool fast;      /* the cpu backend (a pool): vectorised softmax / attention kernels; ref keeps the scalar ones */
} nq_host__job_t;

static void nq_host__rows_cb(void *ctx, int64_t r0, int64_t r1, int tid) {
  nq_host__job_t *j = ctx;
  const nq_op_desc_t *op = j->op;
  const float *xd = op->src[0] ? op->src[0]->data : NULL;
  float *yd = op->dst->data;
  for (int64_t r = r0; r < r1; r++) {
    const float *x = xd + r * j->x.stride;
    float *y = yd + r * j->y.stride;
    switch (op->op) {
      case NQ_OP_RMSNORM:
        nq_core__rmsnorm_row(y, x, op->src[1] ? op->src[1]->data : NULL, j->x.len, op->f[0]);
        break;
      case NQ_OP_LAYERNORM:
        nq_core__layernorm_row(y, x, op->src[1] ? op->src[1]->data : NULL, op->src[2] ? op->src[2]->data : NULL,
                               j->x.len, op->f[0]);
        break;
      case NQ_OP_SOFTMAX:
        if (j->fast) nq_core__softmax_row_fast(y, x, j->x.len, op->f[0]);
        else nq_core__softmax_row(y, x, j->x.len, op->f[0]);
        break;
      case NQ_OP_ROPE: {
        float cs[1024];
        int64_t pos = ((const int32_t *)op->src[1]->data)[r];
        nq_core__rope_table(cs, pos, (int)op->i[0], (int)op->i[2], op->f[0]);
        nq_core__rope_row(y, x, j->x.len, (int)op->i[0], (int)op->i[2], (nq_rope_mode_t)op->i[1], cs);
        break;
      }
      case NQ_OP_ADD:
      case NQ_OP_MUL:
      case NQ_OP_SWIGLU: {
        const float *b = (const float *)op->src[1]->data + (j->b.n == 1 ? 0 : r * j->b.stride);
        nq_core__binary_row(op->op, y, x, b, j->x.len);
        break;
      }
      default: nq_core__unary_row(op->op, y, x, j->x.len); break;
    }
  }
}

static void nq_host__embed_cb(void *ctx, int64_t r0, int64_t r1, int tid) {
  nq_host__job_t *j = ctx;
  const nq_tensor_t *tab = j->op->src[0];
  const int32_t *ids = j->op->src[1]->data;
  for (int64_t r = r0; r < r1; r++)
    nq_core__row_to_f32((float *)j->op->dst->data + r * j->y.stride, tab->data, tab->dtype, ids[r], tab->ne[1]);
}

static void nq_host__attn_cb(void *ctx, int64_t i0, int64_t i1, int tid) {
  nq_host__job_t *j = ctx;
  const nq_op_desc_t *op = j->op;
  int64_t H = op->i[0], KV = op->i[1], pos0 = op->i[2];
  int causal = (int)op->i[3];
  int64_t hd = j->x.len / H, group = H / KV;
  nq_core__rows_t k = nq_core__rows_of(op->src[1]);
  float *scores = j->scratch + (int64_t)tid * j->scratch_per;
  for (int64_t it = i0; it < i1; it++) {
    int64_t t = it / H, h = it % H, kvh = h / group;
    int64_t n_keys = causal ? pos0 + t + 1 : k.n;
    const float *q = (const float *)op->src[0]->data + t * j->x.stride + h * hd;
    const float *kc = (const float *)op->src[1]->data + kvh * hd;
    const float *vc = (const float *)op->src[2]->data + kvh * hd;
    float *out = (float *)op->dst->data + t * j->y.stride + h * hd;
    if (j->fast) nq_core__attn_head_fast(out, q, kc, vc, k.stride, n_keys, (int)hd, op->f[0], scores);
    else nq_core__attn_head(out, q, kc, vc, k.stride, n_keys, (int)hd, op->f[0], scores);
  }
}

/* ---- attention over many query rows: per head, scores = Q K^T and out = P V as two packed GEMMs on strided views of
 * q / the caches (no copies), in query chunks whose score block stays in L3; the row softmax (causal limits
 * applied, masked keys exactly 0) runs over the pool in between. The per-(row, head) loop above streams every key
 * once per query row; here each K/V panel is packed once per chunk of rows. */
#define NQ_HOST_ATTN_GEMM_MIN_ROWS 32
#define NQ_HOST_ATTN_SCORES ((int64_t)1 << 20) /* floats (4 MiB, L3): 256 rows of 4096 keys; best measured of 64K..4M */

typedef struct {
  float *sc;
  int64_t ldsc, n_keys, pos0, t0;
  int causal;
  float scale;
} nq_host__attn_sm_t;

static void nq_host__attn_sm_cb(void *ctx, int64_t r0, int64_t r1, int tid) {
  const nq_host__attn_sm_t *a = ctx;
  for (int64_t r = r0; r < r1; r++) {
    float *row = a->sc + r * a->ldsc;
    int64_t n = a->causal ? a->pos0 + a->t0 + r + 1 : a->n_keys;
    if (n > a->n_keys) n = a->n_keys;
    nq_core__softmax_row_fast(row, row, n, a->scale);
    for (int64_t j = n; j < a->n_keys; j++) row[j] = 0.0f;
  }
}

static int nq_host__attn_gemm(const nq_op_desc_t *op, nq_pool_t *pool, nq_err_t *err) {
  const nq_core__rows_t x = nq_core__rows_of(op->src[0]), y = nq_core__rows_of(op->dst);
  const nq_core__rows_t k = nq_core__rows_of(op->src[1]), v = nq_core__rows_of(op->src[2]);
  const int64_t H = op->i[0], KV = op->i[1], pos0 = op->i[2], hd = x.len / H, group = H / KV, T = x.n;
  const int causal = (int)op->i[3];
  int64_t Tc = NQ_HOST_ATTN_SCORES / (k.n > 0 ? k.n : 1);
  if (Tc < NQ_HOST_ATTN_GEMM_MIN_ROWS) Tc = NQ_HOST_ATTN_GEMM_MIN_ROWS;
  if (Tc > T) Tc = T;
  float *sc = malloc(sizeof(float) * (size_t)(Tc * (k.n > 0 ? k.n : 1)));
  if (!sc) return nq_err_set(err, NQ_ENOMEM, 0, "attention: %lld x %lld score block", (long long)Tc, (long long)k.n);
  const float *Q = op->src[0]->data, *Kc = op->src[1]->data, *Vc = op->src[2]->data;
  float *O = op->dst->data;
  int rc = 0;
  for (int64_t h = 0; h < H && !rc; h++) {
    const int64_t kvh = h / group;
    for (int64_t t0 = 0; t0 < T && !rc; t0 += Tc) {
      const int64_t tn = T - t0 < Tc ? T - t0 : Tc;
      int64_t nk = causal ? pos0 + t0 + tn : k.n; /* keys any row of the chunk sees */
      if (nk > k.n) nk = k.n;
      nq_gemm_args_t qk = {.M = tn, .N = nk, .K = hd,
                           .a = {Q + t0 * x.stride + h * hd, NQ_DT_F32, x.stride, 1},
                           .b = {Kc + kvh * hd, NQ_DT_F32, 1, k.stride},
                           .c = sc, .ldc = nk};
      if ((rc = nq_gemm(pool, &qk, err))) break;
      nq_host__attn_sm_t sm = {sc, nk, nk, pos0, t0, causal, op->f[0]};
      nq_pool_for(pool, tn, 1, nq_host__attn_sm_cb, &sm);
      nq_gemm_args_t pv = {.M = tn, .N = hd, .K = nk,
                           .a = {sc, NQ_DT_F32, nk, 1},
                           .b = {Vc + kvh * hd, NQ_DT_F32, v.stride, 1},
                           .c = O + t0 * y.stride + h * hd, .ldc = y.stride};
      rc = nq_gemm(pool, &pv, err);
    }
  }
  free(sc);
  return rc;
}

typedef struct {
  const nq_op_desc_t *op;
  nq_core__conv_t c;
  float *wbuf; /* per thread: wper floats */
  int64_t wper;
} nq_host__conv_job_t;

static void nq_host__conv_cb(void *ctx, int64_t p0, int64_t p1, int tid) {
  nq_host__conv_job_t *j = ctx;
  float *wb = j->wbuf + (int64_t)tid * j->wper;
  if (j->op->op == NQ_OP_CONV2D)
    nq_core__conv2d_planes(j->op, &j->c, p0, p1, wb);
  else
    nq_core__convt1d_rows(j->op, &j->c, p0, p1, wb);
}

static void nq_host__gn_cb(void *ctx, int64_t i0, int64_t i1, int tid) { nq_core__groupnorm_items(ctx, i0, i1); }
static void nq_host__up_cb(void *ctx, int64_t r0, int64_t r1, int tid) { nq_core__upsample_rows(ctx, r0, r1); }

static int nq_host__vision(const nq_op_desc_t *op, nq_pool_t *pool, nq_err_t *err) {
  const nq_tensor_t *x = op->src[0];
  switch (op->op) {
    case NQ_OP_CONV2D:
    case NQ_OP_CONV_TRANSPOSE1D: {
      nq_host__conv_job_t j = {.op = op, .c = nq_core__conv_of(op)};
      j.wper = (j.c.cig * j.c.kh * j.c.kw + 15) & ~(int64_t)15;
      int nt = nq_pool_size(pool);
      j.wbuf = malloc(sizeof(float) * (size_t)(j.wper * nt));
      if (!j.wbuf) return nq_err_set(err, NQ_ENOMEM, 0, "%s: weight scratch", nq_op_name(op->op));
      nq_pool_for(pool, j.c.N * j.c.Co, 1, nq_host__conv_cb, &j);
      free(j.wbuf);
      return 0;
    }
    case NQ_OP_GROUPNORM: nq_pool_for(pool, x->ne[0] * op->i[0], 1, nq_host__gn_cb, (void *)op); return 0;
    default: {
      int64_t rows = x->ne[0] * x->ne[1] * x->ne[2] * op->i[0];
      nq_pool_for(pool, rows, 16, nq_host__up_cb, (void *)op);
      return 0;
    }
  }
}

int nq_backends__host_run(const nq_op_desc_t *op, nq_pool_t *pool, nq_err_t *err) {
  nq_host__job_t j = {.op = op, .fast = pool != NULL};
  if (op->op >= NQ_OP_CONV2D) return nq_host__vision(op, pool, err);
  j.y = nq_core__rows_of(op->dst);
  if (op->op == NQ_OP_EMBED) {
    nq_pool_for(pool, j.y.n, 1, nq_host__embed_cb, &j);
    return 0;
  }
  j.x = nq_core__rows_of(op->src[0]);
  if (op->op == NQ_OP_ATTENTION) {
    nq_core__rows_t k = nq_core__rows_of(op->src[1]);
    if (j.fast && j.x.n >= NQ_HOST_ATTN_GEMM_MIN_ROWS && k.n >= NQ_HOST_ATTN_GEMM_MIN_ROWS)
      return nq_host__attn_gemm(op, pool, err);
    int nt = nq_pool_size(pool);
    j.scratch_per = (k.n + 15) & ~(int64_t)15;
    j.scratch = malloc(sizeof(float) * (size_t)(j.scratch_per * nt));
    if (!j.scratch) return nq_err_set(err, NQ_ENOMEM, 0, "attention: scratch for %lld keys", (long long)k.n);
    nq_pool_for(pool, j.x.n * op->i[0], 1, nq_host__attn_cb, &j);
    free(j.scratch);
    return 0;
  }
  if (op->op == NQ_OP_ADD || op->op == NQ_OP_MUL || op->op == NQ_OP_SWIGLU) j.b = nq_core__rows_of(op->src[1]);
  /* small rows: give each thread enough work to be worth a wake-up */
  int64_t grain = j.x.len >= 4096 ? 1 : (4096 + j.x.len - 1) / (j.x.len ? j.x.len : 1);
  nq_pool_for(pool, j.x.n, grain, nq_host__rows_cb, &j);
  return 0;
}

void nq_backends__linear_ref(const nq_op_desc_t *op) {
  nq_core__rows_t x = nq_core__rows_of(op->src[0]), y = nq_core__rows_of(op->dst);
  const nq_tensor_t *w = &op->lin->w;
  int64_t N = w->ne[0], K = w->ne[1];
  const float *bias = op->lin->b.data;
  float *wrow = malloc(sizeof(float) * (size_t)K);
  NQ_ASSERT(wrow);
  for (int64_t n = 0; n < N; n++) {
    nq_core__row_to_f32(wrow, w->data, w->dtype, n, K);
    for (int64_t m = 0; m < x.n; m++) {
      const float *xm = (const float *)op->src[0]->data + m * x.stride;
      float s = 0.0f;
      for (int64_t k = 0; k < K; k++) s += xm[k] * wrow[k];
      ((float *)op->dst->data)[m * y.stride + n] = s + (bias ? bias[n] : 0.0f);
    }
  }
  free(wrow);
}

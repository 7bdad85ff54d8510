/* compute/core/core_int.h — private row kernels shared by the host backends (ref runs them
 * sequentially, cpu runs them over the pool). Not part of the public API. */
#ifndef NQ_COMPUTE_CORE_INT_H
#define NQ_COMPUTE_CORE_INT_H

#include "compute/core/backend.h"

void nq_core__rmsnorm_row(float *y, const float *x, const float *w, int64_t n, float eps);
void nq_core__layernorm_row(float *y, const float *x, const float *g, const float *b, int64_t n, float eps);
void nq_core__softmax_row(float *y, const float *x, int64_t n, float scale);
void nq_core__unary_row(nq_op_t op, float *y, const float *x, int64_t n);
void nq_core__binary_row(nq_op_t op, float *y, const float *a, const float *b, int64_t n);
/* cs: cos/sin table of rot/2 pairs for this position (nq_core__rope_table). */
void nq_core__rope_table(float *cs /* [rot] : cos,sin interleaved */, int64_t pos, int head_dim, int rot, float theta);
void nq_core__rope_row(float *y, const float *x, int64_t n, int head_dim, int rot, nq_rope_mode_t mode,
                       const float *cs);
/* Row `id` of a F32/BF16/F16 table into f32. */
void nq_core__row_to_f32(float *y, const void *table, nq_dtype_t dt, int64_t id, int64_t n);
/* One (query row, head) of attention. scores: scratch of >= n_keys floats. */
void nq_core__attn_head(float *out, const float *q, const float *k, const float *v, int64_t kv_stride,
                        int64_t n_keys, int head_dim, float scale, float *scores);
/* AVX2 versions (kernels_fast.c) the cpu backend runs: same results to ~1e-6 relative (vector exp, 8-lane sums). */
void nq_core__softmax_row_fast(float *y, const float *x, int64_t n, float scale);
void nq_core__attn_head_fast(float *out, const float *q, const float *k, const float *v, int64_t kv_stride,
                             int64_t n_keys, int head_dim, float scale, float *scores);

/* ---- vision ops (compute/core/conv.c) ---- */
typedef struct nq_core__conv {
  int64_t N, Ci, H, W, Co, kh, kw, Ho, Wo; /* conv2d; conv_transpose1d uses H = Ho = kh = 1, W = L, Wo = Lo */
  int64_t sh, sw, ph, pw, dh, dw, g, opad;
  int64_t cig, cog;                        /* channels per group (in, out) */
} nq_core__conv_t;
nq_core__conv_t nq_core__conv_of(const nq_op_desc_t *op); /* CONV2D or CONV_TRANSPOSE1D, after nq_op_check */
/* Weights of output channel co (CONV2D: [Ci/g * kh * kw]) as f32. */
void nq_core__conv_wrow(float *dst, const nq_tensor_t *w, int64_t co, int64_t len);
/* Output planes p in [p0, p1) (p = n * Co + co), direct loops; wbuf: scratch of Ci/g*kh*kw floats. */
void nq_core__conv2d_planes(const nq_op_desc_t *op, const nq_core__conv_t *c, int64_t p0, int64_t p1, float *wbuf);
/* ConvTranspose1d output rows p in [p0, p1) (p = n * Co + co), gather form; wbuf: Ci/g*k floats. */
void nq_core__convt1d_rows(const nq_op_desc_t *op, const nq_core__conv_t *c, int64_t p0, int64_t p1, float *wbuf);
/* GroupNorm of (n, group) items [i0, i1). */
void nq_core__groupnorm_items(const nq_op_desc_t *op, int64_t i0, int64_t i1);
/* Nearest upsampling of output rows [r0, r1) (row = (n*C + c)*Ho + oy). */
void nq_core__upsample_rows(const nq_op_desc_t *op, int64_t r0, int64_t r1);

/* Descriptor accessors. */
typedef struct nq_core__rows {
  int64_t n, len, stride;
} nq_core__rows_t;
nq_core__rows_t nq_core__rows_of(const nq_tensor_t *t); /* asserts rows-compatible (checked by nq_op_check) */

#endif

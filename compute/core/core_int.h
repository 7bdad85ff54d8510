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

/* Descriptor accessors. */
typedef struct nq_core__rows {
  int64_t n, len, stride;
} nq_core__rows_t;
nq_core__rows_t nq_core__rows_of(const nq_tensor_t *t); /* asserts rows-compatible (checked by nq_op_check) */

#endif

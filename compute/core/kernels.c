/* Scalar row kernels (the reference numerics). Written so the compiler can vectorise. */
#include <math.h>

#include "compute/core/core_int.h"

nq_core__rows_t nq_core__rows_of(const nq_tensor_t *t) {
  nq_core__rows_t r;
  bool ok = nq_tensor_rows(t, &r.n, &r.len, &r.stride);
  NQ_ASSERT(ok);
  return r;
}

void nq_core__rmsnorm_row(float *y, const float *x, const float *w, int64_t n, float eps) {
  float ss = 0.0f;
  for (int64_t i = 0; i < n; i++) ss += x[i] * x[i];
  float s = 1.0f / sqrtf(ss / (float)n + eps);
  if (w)
    for (int64_t i = 0; i < n; i++) y[i] = w[i] * (s * x[i]);
  else
    for (int64_t i = 0; i < n; i++) y[i] = s * x[i];
}

void nq_core__layernorm_row(float *y, const float *x, const float *g, const float *b, int64_t n, float eps) {
  double mean = 0, var = 0;
  for (int64_t i = 0; i < n; i++) mean += x[i];
  mean /= (double)n;
  for (int64_t i = 0; i < n; i++) var += ((double)x[i] - mean) * ((double)x[i] - mean);
  var /= (double)n;
  float s = (float)(1.0 / sqrt(var + eps)), m = (float)mean;
  for (int64_t i = 0; i < n; i++) {
    float v = (x[i] - m) * s;
    if (g) v *= g[i];
    if (b) v += b[i];
    y[i] = v;
  }
}

void nq_core__softmax_row(float *y, const float *x, int64_t n, float scale) {
  float mx = -INFINITY;
  for (int64_t i = 0; i < n; i++) mx = fmaxf(mx, x[i] * scale);
  float sum = 0.0f;
  for (int64_t i = 0; i < n; i++) {
    y[i] = expf(x[i] * scale - mx);
    sum += y[i];
  }
  float inv = 1.0f / sum;
  for (int64_t i = 0; i < n; i++) y[i] *= inv;
}

void nq_core__unary_row(nq_op_t op, float *y, const float *x, int64_t n) {
  switch (op) {
    case NQ_OP_SILU:
      for (int64_t i = 0; i < n; i++) y[i] = x[i] / (1.0f + expf(-x[i]));
      break;
    case NQ_OP_GELU:
      for (int64_t i = 0; i < n; i++) y[i] = 0.5f * x[i] * (1.0f + erff(x[i] * 0.70710678118654752f));
      break;
    case NQ_OP_GELU_TANH:
      for (int64_t i = 0; i < n; i++) {
        float v = x[i];
        y[i] = 0.5f * v * (1.0f + tanhf(0.79788456080286536f * (v + 0.044715f * v * v * v)));
      }
      break;
    case NQ_OP_QUICK_GELU:
      for (int64_t i = 0; i < n; i++) y[i] = x[i] / (1.0f + expf(-1.702f * x[i]));
      break;
    default: NQ_ASSERT(!"not a unary op");
  }
}

void nq_core__binary_row(nq_op_t op, float *y, const float *a, const float *b, int64_t n) {
  switch (op) {
    case NQ_OP_ADD:
      for (int64_t i = 0; i < n; i++) y[i] = a[i] + b[i];
      break;
    case NQ_OP_MUL:
      for (int64_t i = 0; i < n; i++) y[i] = a[i] * b[i];
      break;
    case NQ_OP_SWIGLU:
      for (int64_t i = 0; i < n; i++) y[i] = a[i] / (1.0f + expf(-a[i])) * b[i];
      break;
    default: NQ_ASSERT(!"not a binary op");
  }
}

void nq_core__rope_table(float *cs, int64_t pos, int head_dim, int rot, float theta) {
  /* llama2.c: freq = 1 / powf(theta, i / head_dim) for even i, angle = pos * freq (float math). */
  for (int i = 0; i < rot; i += 2) {
    float freq = 1.0f / powf(theta, (float)i / (float)head_dim);
    float a = (float)pos * freq;
    cs[i] = cosf(a);
    cs[i + 1] = sinf(a);
  }
}

void nq_core__rope_row(float *y, const float *x, int64_t n, int head_dim, int rot, nq_rope_mode_t mode,
                       const float *cs) {
  for (int64_t h = 0; h < n; h += head_dim) {
    const float *xh = x + h;
    float *yh = y + h;
    if (mode == NQ_ROPE_INTERLEAVED) {
      for (int i = 0; i < rot; i += 2) {
        float c = cs[i], s = cs[i + 1], a = xh[i], b = xh[i + 1];
        yh[i] = a * c - b * s;
        yh[i + 1] = a * s + b * c;
      }
    } else {
      int half = rot / 2;
      for (int i = 0; i < half; i++) {
        float c = cs[2 * i], s = cs[2 * i + 1], a = xh[i], b = xh[i + half];
        yh[i] = a * c - b * s;
        yh[i + half] = b * c + a * s;
      }
    }
    if (yh != xh)
      for (int i = rot; i < head_dim; i++) yh[i] = xh[i];
  }
}

void nq_core__row_to_f32(float *y, const void *table, nq_dtype_t dt, int64_t id, int64_t n) {
  if (dt == NQ_DT_F32) {
    const float *s = (const float *)table + id * n;
    for (int64_t i = 0; i < n; i++) y[i] = s[i];
  } else if (dt == NQ_DT_BF16) {
    const uint16_t *s = (const uint16_t *)table + id * n;
    for (int64_t i = 0; i < n; i++) y[i] = nq_bf16_to_f32(s[i]);
  } else {
    const uint16_t *s = (const uint16_t *)table + id * n;
    for (int64_t i = 0; i < n; i++) y[i] = nq_f16_to_f32(s[i]);
  }
}

void nq_core__attn_head(float *out, const float *q, const float *k, const float *v, int64_t kv_stride,
                        int64_t n_keys, int head_dim, float scale, float *scores) {
  float mx = -INFINITY;
  for (int64_t j = 0; j < n_keys; j++) {
    const float *kj = k + j * kv_stride;
    float s = 0.0f;
    for (int d = 0; d < head_dim; d++) s += q[d] * kj[d];
    s *= scale;
    scores[j] = s;
    mx = fmaxf(mx, s);
  }
  float sum = 0.0f;
  for (int64_t j = 0; j < n_keys; j++) {
    scores[j] = expf(scores[j] - mx);
    sum += scores[j];
  }
  float inv = 1.0f / sum;
  for (int d = 0; d < head_dim; d++) out[d] = 0.0f;
  for (int64_t j = 0; j < n_keys; j++) {
    const float *vj = v + j * kv_stride;
    float p = scores[j] * inv;
    for (int d = 0; d < head_dim; d++) out[d] += p * vj[d];
  }
}

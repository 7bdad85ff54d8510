/* Vectorised row kernels for the cpu backend (AVX2/FMA; the reference kernels in kernels.c stay the numerics they
 * are tested against). Without -ffast-math the compiler keeps the scalar kernels' float reductions and expf calls in
 * order, so softmax and attention ran one lane at a time (a perf profile of the SD-1.5 UNet step: 17% in softmax,
 * expf, fmaxf and the attention head loop). Here:
 *   - exp is a Cody-Waite range reduction + degree-6 minimax polynomial (max rel. error ~2 ulp on [-87, 88]; lanes
 *     below -87.3 flush to 0, which softmax's x - max <= 0 inputs make the only out-of-range case);
 *   - reductions run in 8 lanes x 4 accumulators (a different summation order than the reference: results agree to
 *     ~1e-6 relative, the op tests' f32 tolerance).
 * Falls back to the reference kernels when the build has no AVX2. */
#include <math.h>

#include "compute/core/core_int.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

static inline __m256 nq_fast__exp8(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-87.33654f), hi = _mm256_set1_ps(88.37626f);
  __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
  x = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
  /* x = n ln2 + r, |r| <= ln2/2; ln2 split in a high part exact in float and a low correction */
  __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  /* e^r = 1 + r + r^2 (c2 + r (c3 + r (c4 + r (c5 + r c6)))) */
  __m256 p = _mm256_set1_ps(1.3981999507e-3f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  __m256 r2 = _mm256_mul_ps(r, r);
  p = _mm256_fmadd_ps(p, r2, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  /* scale by 2^n through the exponent bits (n in [-126, 128]: 2^128 would overflow, so split as 2^(n-1) * 2) */
  __m256i ni = _mm256_cvtps_epi32(n);
  __m256i e = _mm256_slli_epi32(_mm256_add_epi32(ni, _mm256_set1_epi32(126)), 23);
  __m256 y = _mm256_mul_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e)), _mm256_set1_ps(2.0f));
  return _mm256_andnot_ps(under, y);
}

static inline float nq_fast__hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

static inline float nq_fast__hmax(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

static inline float nq_fast__exp1(float x) {
  float b[8] = {x};
  _mm256_storeu_ps(b, nq_fast__exp8(_mm256_loadu_ps(b)));
  return b[0];
}

/* y = exp(x * scale - max) / sum, in place allowed. */
void nq_core__softmax_row_fast(float *y, const float *x, int64_t n, float scale) {
  const __m256 vs = _mm256_set1_ps(scale);
  __m256 m0 = _mm256_set1_ps(-INFINITY), m1 = m0;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    m0 = _mm256_max_ps(m0, _mm256_mul_ps(_mm256_loadu_ps(x + i), vs));
    m1 = _mm256_max_ps(m1, _mm256_mul_ps(_mm256_loadu_ps(x + i + 8), vs));
  }
  float mx = nq_fast__hmax(_mm256_max_ps(m0, m1));
  for (; i < n; i++) mx = x[i] * scale > mx ? x[i] * scale : mx;
  const __m256 vm = _mm256_set1_ps(mx);
  __m256 s0 = _mm256_setzero_ps(), s1 = s0;
  for (i = 0; i + 16 <= n; i += 16) {
    __m256 e0 = nq_fast__exp8(_mm256_fmsub_ps(_mm256_loadu_ps(x + i), vs, vm));
    __m256 e1 = nq_fast__exp8(_mm256_fmsub_ps(_mm256_loadu_ps(x + i + 8), vs, vm));
    _mm256_storeu_ps(y + i, e0), _mm256_storeu_ps(y + i + 8, e1);
    s0 = _mm256_add_ps(s0, e0), s1 = _mm256_add_ps(s1, e1);
  }
  float sum = nq_fast__hsum(_mm256_add_ps(s0, s1));
  for (; i < n; i++) sum += (y[i] = nq_fast__exp1(x[i] * scale - mx));
  const __m256 inv = _mm256_set1_ps(1.0f / sum);
  for (i = 0; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_loadu_ps(y + i), inv));
  for (; i < n; i++) y[i] *= 1.0f / sum;
}

static inline float nq_fast__dot(const float *a, const float *b, int n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  int d = 0;
  for (; d + 32 <= n; d += 32) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + d), _mm256_loadu_ps(b + d), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + d + 8), _mm256_loadu_ps(b + d + 8), s1);
    s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + d + 16), _mm256_loadu_ps(b + d + 16), s2);
    s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + d + 24), _mm256_loadu_ps(b + d + 24), s3);
  }
  for (; d + 8 <= n; d += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + d), _mm256_loadu_ps(b + d), s0);
  float s = nq_fast__hsum(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
  for (; d < n; d++) s += a[d] * b[d];
  return s;
}

/* out[d] += p * v[d] */
static inline void nq_fast__axpy(float *out, float p, const float *v, int n) {
  const __m256 vp = _mm256_set1_ps(p);
  int d = 0;
  for (; d + 8 <= n; d += 8) _mm256_storeu_ps(out + d, _mm256_fmadd_ps(vp, _mm256_loadu_ps(v + d), _mm256_loadu_ps(out + d)));
  for (; d < n; d++) out[d] += p * v[d];
}

void nq_core__attn_head_fast(float *out, const float *q, const float *k, const float *v, int64_t kv_stride,
                             int64_t n_keys, int head_dim, float scale, float *scores) {
  for (int64_t j = 0; j < n_keys; j++) scores[j] = nq_fast__dot(q, k + j * kv_stride, head_dim);
  nq_core__softmax_row_fast(scores, scores, n_keys, scale);
  for (int d = 0; d < head_dim; d++) out[d] = 0.0f;
  for (int64_t j = 0; j < n_keys; j++) nq_fast__axpy(out, scores[j], v + j * kv_stride, head_dim);
}

#else

void nq_core__softmax_row_fast(float *y, const float *x, int64_t n, float scale) { nq_core__softmax_row(y, x, n, scale); }

void nq_core__attn_head_fast(float *out, const float *q, const float *k, const float *v, int64_t kv_stride,
                             int64_t n_keys, int head_dim, float scale, float *scores) {
  nq_core__attn_head(out, q, k, v, kv_stride, n_keys, head_dim, scale, scores);
}

#endif

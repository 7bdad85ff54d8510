// compute/backends/cuda_kernels.cu — the few kernels the cuda backend needs around cuBLAS: weight widening, bias,
// im2col and the attention softmax. Launchers are extern "C" (cuda_kernels.h); each returns cudaGetLastError().
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "compute/backends/cuda_kernels.h"

namespace {

constexpr int kThreads = 256;

unsigned blocks_for(int64_t n) {
  int64_t b = (n + kThreads - 1) / kThreads;
  if (b > 65535 * 8) b = 65535 * 8;  // grid-stride loops cover the rest
  return (unsigned)(b < 1 ? 1 : b);
}

__global__ void widen_k(float *dst, const uint16_t *src, int64_t n, int kind) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    uint16_t v = src[i];
    if (kind == 1) dst[i] = __uint_as_float((uint32_t)v << 16);
    else dst[i] = __half2float(__ushort_as_half(v));
  }
}

__global__ void to_bf16_k(uint16_t *dst, const float *src, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    dst[i] = __bfloat16_as_ushort(__float2bfloat16_rn(src[i]));
}

__global__ void bias_rows_k(float *y, const float *b, int64_t M, int64_t N, int64_t ldy) {
  int64_t total = M * N;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    int64_t m = i / N, n = i - m * N;
    y[m * ldy + n] += b[n];
  }
}

__global__ void bias_planes_k(float *y, const float *b, int64_t NC, int64_t C, int64_t S) {
  int64_t total = NC * S;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x)
    y[i] += b[(i / S) % C];
}

struct Im2col {
  int64_t cig, H, W, kh, kw, sh, sw, ph, pw, dh, dw, Wo, oy0, rows;
};

__global__ void im2col_k(float *col, const float *x, Im2col a) {
  const int64_t P = a.rows * a.Wo, total = a.cig * a.kh * a.kw * P;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    int64_t kk = i / P, p = i - kk * P;
    int64_t kx = kk % a.kw, ky = (kk / a.kw) % a.kh, ci = kk / (a.kw * a.kh);
    int64_t r = p / a.Wo, ox = p - r * a.Wo;
    int64_t iy = (a.oy0 + r) * a.sh - a.ph + ky * a.dh, ix = ox * a.sw - a.pw + kx * a.dw;
    col[i] = (iy >= 0 && iy < a.H && ix >= 0 && ix < a.W) ? x[(ci * a.H + iy) * a.W + ix] : 0.0f;
  }
}

__device__ float block_reduce(float v, bool is_max, float *sh) {
  for (int o = 16; o > 0; o >>= 1) {
    float u = __shfl_xor_sync(0xffffffffu, v, o);
    v = is_max ? fmaxf(v, u) : v + u;
  }
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  int nw = (blockDim.x + 31) >> 5;
  v = threadIdx.x < nw ? sh[threadIdx.x] : (is_max ? -INFINITY : 0.0f);
  if (warp == 0)
    for (int o = 16; o > 0; o >>= 1) {
      float u = __shfl_xor_sync(0xffffffffu, v, o);
      v = is_max ? fmaxf(v, u) : v + u;
    }
  if (threadIdx.x == 0) sh[0] = v;
  __syncthreads();
  v = sh[0];
  __syncthreads();
  return v;
}

__global__ void attn_softmax_k(float *scores, int64_t T, int64_t ld, int64_t S, float scale, int causal, int64_t pos0,
                               int64_t t0) {
  __shared__ float sh[32];
  int64_t r = blockIdx.x;
  float *row = scores + r * ld;
  int64_t n = S;
  if (causal) {
    int64_t lim = pos0 + t0 + r % T + 1;
    n = lim < S ? lim : S;
  }
  float m = -INFINITY;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) m = fmaxf(m, row[j] * scale);
  m = block_reduce(m, true, sh);
  float s = 0.0f;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    float e = expf(row[j] * scale - m); /* not __expf: results match the host's to ~1e-7 */
    row[j] = e;
    s += e;
  }
  s = block_reduce(s, false, sh);
  float inv = 1.0f / s;
  for (int64_t j = threadIdx.x; j < S; j += blockDim.x) row[j] = j < n ? row[j] * inv : 0.0f;
}

}  // namespace

extern "C" int nq_cuk_widen(void *stream, float *dst, const uint16_t *src, int64_t n, int kind) {
  if (n > 0) widen_k<<<blocks_for(n), kThreads, 0, (cudaStream_t)stream>>>(dst, src, n, kind);
  return (int)cudaGetLastError();
}

extern "C" int nq_cuk_to_bf16(void *stream, uint16_t *dst, const float *src, int64_t n) {
  if (n > 0) to_bf16_k<<<blocks_for(n), kThreads, 0, (cudaStream_t)stream>>>(dst, src, n);
  return (int)cudaGetLastError();
}

extern "C" int nq_cuk_bias_rows(void *stream, float *y, const float *b, int64_t M, int64_t N, int64_t ldy) {
  if (M > 0 && N > 0) bias_rows_k<<<blocks_for(M * N), kThreads, 0, (cudaStream_t)stream>>>(y, b, M, N, ldy);
  return (int)cudaGetLastError();
}

extern "C" int nq_cuk_bias_planes(void *stream, float *y, const float *b, int64_t N, int64_t C, int64_t S) {
  if (N * C * S > 0) bias_planes_k<<<blocks_for(N * C * S), kThreads, 0, (cudaStream_t)stream>>>(y, b, N * C, C, S);
  return (int)cudaGetLastError();
}

extern "C" int nq_cuk_im2col(void *stream, float *col, const float *x, int64_t cig, int64_t H, int64_t W, int64_t kh,
                             int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw,
                             int64_t Wo, int64_t oy0, int64_t rows) {
  Im2col a = {cig, H, W, kh, kw, sh, sw, ph, pw, dh, dw, Wo, oy0, rows};
  int64_t total = cig * kh * kw * rows * Wo;
  if (total > 0) im2col_k<<<blocks_for(total), kThreads, 0, (cudaStream_t)stream>>>(col, x, a);
  return (int)cudaGetLastError();
}

extern "C" int nq_cuk_attn_softmax(void *stream, float *scores, int64_t rows, int64_t T, int64_t ld, int64_t S,
                                   float scale, int causal, int64_t pos0, int64_t t0) {
  if (rows > 0 && rows <= 0x7fffffff)
    attn_softmax_k<<<(unsigned)rows, kThreads, 0, (cudaStream_t)stream>>>(scores, T, ld, S, scale, causal, pos0, t0);
  return (int)cudaGetLastError();
}

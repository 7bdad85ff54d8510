/* compute/backends/cuda_kernels.h — the CUDA kernels of the cuda backend (cuda_kernels.cu, built by nvcc), called
 * from C. Every launcher enqueues on `stream` (a cudaStream_t) and returns the launch's cudaError_t as an int
 * (0 = launched). Pointers are device memory; sizes in elements. Private to compute/backends. */
#ifndef NQ_COMPUTE_BACKENDS_CUDA_KERNELS_H
#define NQ_COMPUTE_BACKENDS_CUDA_KERNELS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* dst[i] = float(src[i]) for n BF16 (kind 1) or F16 (kind 2) values. */
int nq_cuk_widen(void *stream, float *dst, const uint16_t *src, int64_t n, int kind);
/* dst[i] = bf16(src[i]) (round to nearest even) for n values. */
int nq_cuk_to_bf16(void *stream, uint16_t *dst, const float *src, int64_t n);
/* y[m * ldy + n] += b[n] for m < M, n < N. */
int nq_cuk_bias_rows(void *stream, float *y, const float *b, int64_t M, int64_t N, int64_t ldy);
/* y[(n * C + c) * S + s] += b[c]. */
int nq_cuk_bias_planes(void *stream, float *y, const float *b, int64_t N, int64_t C, int64_t S);
/* col[K = cig*kh*kw, P = rows*Wo] of the input planes x [cig, H, W] for output rows oy0 .. oy0+rows-1. */
int nq_cuk_im2col(void *stream, float *col, const float *x, int64_t cig, int64_t H, int64_t W, int64_t kh, int64_t kw,
                  int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, int64_t Wo, int64_t oy0,
                  int64_t rows);
/* Row softmax of scores [rows, ld] in place over the first n_keys(r) columns, the rest set to 0:
 * n_keys(r) = causal ? min(pos0 + (t0 + r % T) + 1, S) : S, where r % T is the query row inside the head block
 * (rows = heads * T). Values are multiplied by scale first. */
int nq_cuk_attn_softmax(void *stream, float *scores, int64_t rows, int64_t T, int64_t ld, int64_t S, float scale,
                        int causal, int64_t pos0, int64_t t0);

#ifdef __cplusplus
}
#endif

#endif

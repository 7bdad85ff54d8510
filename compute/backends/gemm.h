/* compute/backends/gemm.h — packed, cache-blocked GEMM of the host backends (internal API).
 *
 *   C[M,N] (F32, row stride ldc) = A[M,K] . B[K,N]  (+ C if accumulate)  (+ bias[N] per column | bias_m[M] per row)
 *
 * A and B are strided views of F32, BF16 or F16 data: element (i, j) of a view sits at data + i*rs + j*cs
 * (elements of its dtype), so transposed operands (W^T of a row-major [N,K] weight: rs = 1, cs = K) and per-head
 * slices need no copies. Both are converted to F32 while being packed (BLIS style: KC x NC panels of B, MC x KC
 * blocks of A, in the layouts of an AVX2/FMA NQ_GEMM_MR x NQ_GEMM_NR register-blocked micro-kernel); accumulation
 * is F32. Work is split over the compute pool by output blocks; each thread packs what it needs into its own
 * scratch, which is kept per thread between calls (freed at thread exit).
 *
 * B can instead be produced by a callback that writes packed panels directly (conv2d packs im2col columns straight
 * from the NCHW input: no column buffer).
 *
 * Without AVX2/FMA/F16C at compile time a portable C micro-kernel runs the same blocking.
 */
#ifndef NQ_COMPUTE_BACKENDS_GEMM_H
#define NQ_COMPUTE_BACKENDS_GEMM_H

#include <stdbool.h>
#include <stdint.h>

#include "common/err.h"
#include "compute/core/dtype.h"
#include "compute/core/pool.h"

#define NQ_GEMM_MR 6
#define NQ_GEMM_NR 16

/* A strided matrix view; data is borrowed. Element (i, j) at (dtype *)data + i * rs + j * cs. */
typedef struct nq_gemm_mat {
  const void *data; /* borrowed */
  nq_dtype_t dtype; /* NQ_DT_F32, NQ_DT_BF16 or NQ_DT_F16 */
  int64_t rs, cs;   /* row / column stride in elements (may be any non-negative values) */
} nq_gemm_mat_t;

/* Writes the packed B panel for rows [k0, k0+kc) and columns [n0, n0+nc) of B into dst (F32, 64-byte aligned):
 * ceil(nc / NQ_GEMM_NR) slivers one after the other, sliver s holding, for each k in order, the NQ_GEMM_NR values
 * B[k][n0 + s*NR + 0 .. NR-1]; columns past nc must be written as 0. Called concurrently from several threads (for
 * different panels). */
typedef void (*nq_gemm_pack_b_fn)(void *ctx, int64_t k0, int64_t kc, int64_t n0, int64_t nc, float *dst);

typedef struct nq_gemm_args {
  int64_t M, N, K;
  nq_gemm_mat_t a;            /* [M,K] */
  nq_gemm_mat_t b;            /* [K,N]; ignored when pack_b is set */
  nq_gemm_pack_b_fn pack_b;   /* optional: produces B's packed panels instead of b */
  void *pack_b_ctx;           /* borrowed, passed to pack_b */
  float *c;                   /* [M,N] F32 output, borrowed */
  int64_t ldc;                /* row stride of c in elements (>= N) */
  bool accumulate;            /* C += A.B (else C = A.B) */
  const float *bias;          /* optional [N], added to every row; borrowed */
  const float *bias_m;        /* optional [M], added to every column; borrowed */
} nq_gemm_args_t;

/* Runs the GEMM on pool (NULL = calling thread only). K == 0 gives C = bias (or C unchanged when accumulating).
 * Returns 0, or NQ_EINVAL (bad dtype / shape) or NQ_ENOMEM (scratch) with err set. */
int nq_gemm(nq_pool_t *pool /* borrowed, may be NULL */, const nq_gemm_args_t *args, nq_err_t *err);

/* Tests only: cache blocking (depth kc, A block rows mc, rows up to which one A block is used, B panel columns nc);
 * 0 restores a default. Not safe while a GEMM runs. */
void nq_gemm_set_blocking(int64_t kc, int64_t mc, int64_t mc_one, int64_t nc);

/* Name of the micro-kernel compiled in ("avx2-fma 6x16" or "portable 6x16"). */
const char *nq_gemm_kernel_name(void);

#endif

/* compute/core/ops.h — the ops transformers need, dispatched over backends.
 *
 *   nq_exec_t *ex = nq_exec_new("auto", 0, &err);     // onednn, openblas, cpu, ref
 *   nq_linear_init(&lin, &w_tensor, NULL); nq_exec_linear_prepare(ex, &lin, &err);
 *   nq_op_rmsnorm(ex, &h, &x, &gamma, 1e-5f, &err);
 *   nq_op_linear(ex, &q, &h, &lin, &err);
 *
 * All activations are F32 row-major (last dim contiguous, see nq_tensor_rows); weights of
 * linear/embedding may be F32, BF16 or F16. dst may alias src0 for row-wise/elementwise ops.
 * Every op returns 0 or a negative NQ_E* (shape mismatches are NQ_ESHAPE with a message).
 */
#ifndef NQ_COMPUTE_CORE_OPS_H
#define NQ_COMPUTE_CORE_OPS_H

#include "compute/core/backend.h"

#define NQ_EXEC_MAX_BACKENDS 6

typedef struct nq_exec {
  nq_backend_t *be[NQ_EXEC_MAX_BACKENDS]; /* owned; priority order, ref last */
  int n_be;
  nq_pool_t *pool;                        /* borrowed (default pool unless given) */
  int trace;                              /* NQ_EXEC_TRACE env: print backend choices to stderr */
  int profile;                            /* NQ_EXEC_PROFILE env: time per (op, backend), printed by nq_exec_free */
  double prof_s[NQ_OP_COUNT][NQ_EXEC_MAX_BACKENDS];
  long long prof_n[NQ_OP_COUNT][NQ_EXEC_MAX_BACKENDS];
  double prof_t0;                         /* monotonic seconds at nq_exec_new */
} nq_exec_t;

/* spec: "auto" (every built backend: openblas,onednn,cpu,ref; OpenBLAS sgemm measured 2x oneDNN f32 on AVX2) or a comma list ("cpu", "openblas,ref");
 * "ref" is appended if absent. pool NULL = nq_pool_default(). */
nq_exec_t *nq_exec_new(const char *spec, nq_pool_t *pool /* borrowed */, nq_err_t *err);
/* What "auto" means for executors made afterwards (process-wide; call before threads start): spec as above, NULL or
 * "" = back to the environment's NQ_BACKENDS, else "openblas?,onednn?,cpu". A worker with --device cuda sets
 * "cuda,openblas?,onednn?,cpu". nq_exec_auto_spec() is the list "auto" stands for now (static storage). */
int nq_exec_set_auto(const char *spec, nq_err_t *err);
const char *nq_exec_auto_spec(void);
void nq_exec_free(nq_exec_t *ex);
/* Which backend would run this op (for tests/tracing). NULL if none. */
nq_backend_t *nq_exec_pick(nq_exec_t *ex, const nq_op_desc_t *op);
int nq_exec_run(nq_exec_t *ex, const nq_op_desc_t *op, nq_err_t *err);

/* Linear weights. w is copied by value (its data stays borrowed unless w->owns_data, in which case
 * ownership moves to lin). bias may be NULL. */
void nq_linear_init(nq_linear_t *lin /* OUT */, const nq_tensor_t *w, const nq_tensor_t *bias);
/* Let every backend of ex prepack (oneDNN reorders, ...). Safe to call again. */
int nq_exec_linear_prepare(nq_exec_t *ex, nq_linear_t *lin, nq_err_t *err);
void nq_linear_deinit(nq_linear_t *lin);

int nq_op_linear(nq_exec_t *ex, nq_tensor_t *y, const nq_tensor_t *x, nq_linear_t *lin, nq_err_t *err);
int nq_op_rmsnorm(nq_exec_t *ex, nq_tensor_t *y, const nq_tensor_t *x, const nq_tensor_t *w, float eps, nq_err_t *err);
int nq_op_layernorm(nq_exec_t *ex, nq_tensor_t *y, const nq_tensor_t *x, const nq_tensor_t *gamma,
                    const nq_tensor_t *beta, float eps, nq_err_t *err);
/* x: [T, n_heads*head_dim] (any number of heads); pos: I32 [T]. */
int nq_op_rope(nq_exec_t *ex, nq_tensor_t *y, const nq_tensor_t *x, const nq_tensor_t *pos, int head_dim,
               int rot_dims, nq_rope_mode_t mode, float theta, nq_err_t *err);
int nq_op_softmax(nq_exec_t *ex, nq_tensor_t *y, const nq_tensor_t *x, float scale, nq_err_t *err);
int nq_op_unary(nq_exec_t *ex, nq_op_t op /* SILU, GELU, GELU_TANH, QUICK_GELU */, nq_tensor_t *y,
                const nq_tensor_t *x, nq_err_t *err);
int nq_op_binary(nq_exec_t *ex, nq_op_t op /* ADD, MUL, SWIGLU */, nq_tensor_t *y, const nq_tensor_t *a,
                 const nq_tensor_t *b, nq_err_t *err);
int nq_op_embed(nq_exec_t *ex, nq_tensor_t *y, const nq_tensor_t *table, const nq_tensor_t *ids, nq_err_t *err);
int nq_op_attention(nq_exec_t *ex, nq_tensor_t *out, const nq_tensor_t *q, const nq_tensor_t *k_cache,
                    const nq_tensor_t *v_cache, int n_heads, int n_kv_heads, int64_t pos0, int causal,
                    float scale, nq_err_t *err);

/* ---- vision / diffusion ops (NCHW, F32 activations; weights F32/BF16/F16) -------------------------------------
 * Implemented by compute/core + backends (reference always; oneDNN for conv). Declared here first so model files
 * (unet2d, vae, taesd, imagebind, hifigan) can be written against them. */

/* 2-d convolution: x [N,Cin,H,W], w [Cout,Cin/groups,kh,kw], bias [Cout] or NULL -> y [N,Cout,Ho,Wo],
 * Ho = (H + 2*pad_h - dil_h*(kh-1) - 1)/stride_h + 1 (same for W). */
int nq_op_conv2d(nq_exec_t *ex, nq_tensor_t *y, const nq_tensor_t *x, const nq_tensor_t *w, const nq_tensor_t *bias,
                 int stride_h, int stride_w, int pad_h, int pad_w, int dil_h, int dil_w, int groups, nq_err_t *err);
/* 1-d convolution: x [N,Cin,L], w [Cout,Cin/groups,k] -> y [N,Cout,Lo]. */
int nq_op_conv1d(nq_exec_t *ex, nq_tensor_t *y, const nq_tensor_t *x, const nq_tensor_t *w, const nq_tensor_t *bias,
                 int stride, int pad, int dil, int groups, nq_err_t *err);
/* 1-d transposed convolution (PyTorch ConvTranspose1d): x [N,Cin,L], w [Cin,Cout/groups,k] -> y [N,Cout,Lo],
 * Lo = (L-1)*stride - 2*pad + dil*(k-1) + output_padding + 1. */
int nq_op_conv_transpose1d(nq_exec_t *ex, nq_tensor_t *y, const nq_tensor_t *x, const nq_tensor_t *w,
                           const nq_tensor_t *bias, int stride, int pad, int output_padding, int dil, int groups,
                           nq_err_t *err);
/* GroupNorm over x [N,C,*] (any trailing dims): groups divides C; gamma/beta [C] or NULL. */
int nq_op_groupnorm(nq_exec_t *ex, nq_tensor_t *y, const nq_tensor_t *x, const nq_tensor_t *gamma,
                    const nq_tensor_t *beta, int groups, float eps, nq_err_t *err);
/* Nearest-neighbour upsampling by an integer factor: x [N,C,H,W] -> y [N,C,H*f,W*f]. */
int nq_op_upsample_nearest(nq_exec_t *ex, nq_tensor_t *y, const nq_tensor_t *x, int factor, nq_err_t *err);

/* Shape validation shared by backends (returns 0 or NQ_ESHAPE with a message). */
int nq_op_check(const nq_op_desc_t *op, nq_err_t *err);

#endif

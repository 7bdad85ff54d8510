/* compute/core/backend.h — the backend vtable and the op descriptor.
 *
 * An op is a plain descriptor (nq_op_desc_t): what to compute, source tensors, destination,
 * scalar parameters. A backend says which descriptors it can run (`supports_op`, capability
 * only, like ggml's) and optionally which it *wants* (`prefers_op`, a speed heuristic such as
 * "BLAS only from M >= 32"). nq_exec_t (ops.h) sends each op to the first backend in its list
 * that supports and prefers it, else the first that supports it; the reference backend is
 * always last and supports everything.
 *
 * Growth points: a CUDA backend fills the buffer members tagged optional and keeps its weights in
 * nq_linear_t.packed[NQ_BK_CUDA]; backward passes add NQ_OP_*_BACK entries to nq_op_t and are
 * declared through the same supports_op.
 */
#ifndef NQ_COMPUTE_CORE_BACKEND_H
#define NQ_COMPUTE_CORE_BACKEND_H

#include <stdbool.h>

#include "common/err.h"
#include "compute/core/pool.h"
#include "compute/core/tensor.h"

typedef enum nq_op {
  NQ_OP_LINEAR,     /* dst[M,N] = src[0][M,K] . W[N,K]^T (+ bias[N]); W = desc->lin (prepacked) */
  NQ_OP_RMSNORM,    /* dst = src0 * rsqrt(mean(src0^2) + eps) * src1[K] (src1 may be NULL); f[0] = eps */
  NQ_OP_LAYERNORM,  /* dst = (src0 - mean) * rsqrt(var + eps) * src1 + src2 (src1/src2 may be NULL); f[0] = eps */
  NQ_OP_ROPE,       /* dst = rope(src0) per head; src1 = positions I32 [rows]; i[0] = head_dim, i[1] = nq_rope_mode_t,
                       i[2] = rotary dims (<= head_dim, even); f[0] = theta */
  NQ_OP_SOFTMAX,    /* row softmax of src0 * f[0] (scale) */
  NQ_OP_SILU,
  NQ_OP_GELU,       /* exact (erf) */
  NQ_OP_GELU_TANH,
  NQ_OP_QUICK_GELU, /* x * sigmoid(1.702 x) */
  NQ_OP_ADD,        /* dst = src0 + src1 (src1 same shape, or one row broadcast over rows) */
  NQ_OP_MUL,        /* dst = src0 * src1 (same broadcasting) */
  NQ_OP_SWIGLU,     /* dst = silu(src0) * src1 */
  NQ_OP_EMBED,      /* dst[T,D] = src0(table [V,D], f32/bf16/f16)[src1 (ids I32 [T])] */
  NQ_OP_ATTENTION,  /* dst[T,H*hd] = softmax(q k^T * f[0]) v per head; src0 = q [T,H*hd], src1 = K cache [S,KV*hd],
                       src2 = V cache [S,KV*hd] (f32); i[0] = H, i[1] = KV heads (GQA: H % KV == 0), i[2] = pos0
                       (position of query row 0), i[3] = causal (query t sees keys 0..pos0+t) */
  /* vision / diffusion (NCHW, contiguous F32 activations; weights F32/BF16/F16 contiguous; dst never aliases) */
  NQ_OP_CONV2D,     /* dst[N,Co,Ho,Wo] = conv(src0 [N,Ci,H,W], src1 = w [Co,Ci/g,kh,kw]) + src2 (bias [Co] or NULL);
                       i[0..1] = stride h,w; i[2..3] = pad h,w; i[4..5] = dilation h,w; i[6] = groups.
                       nq_op_conv1d runs as this op on [N,C,1,L] views. */
  NQ_OP_CONV_TRANSPOSE1D, /* dst[N,Co,Lo] = conv_transpose(src0 [N,Ci,L], src1 = w [Ci,Co/g,k]) + src2 (bias or NULL);
                       i[0] = stride, i[1] = pad, i[2] = output_padding, i[3] = dilation, i[4] = groups */
  NQ_OP_GROUPNORM,  /* dst = groupnorm(src0 [N,C,*]) * src1 [C] + src2 [C] (either may be NULL); i[0] = groups,
                       f[0] = eps; may alias src0 */
  NQ_OP_UPSAMPLE_NEAREST, /* dst[N,C,H*f,W*f] = src0[N,C,H,W] repeated; i[0] = f */
  NQ_OP_COUNT
} nq_op_t;

typedef enum nq_rope_mode {
  NQ_ROPE_INTERLEAVED = 0, /* llama2.c / Meta: rotate pairs (2i, 2i+1) */
  NQ_ROPE_HALF = 1         /* HF rotate_half: rotate pairs (i, i + d/2) */
} nq_rope_mode_t;

/* Backend slots (index into nq_linear_t.packed). */
typedef enum nq_backend_kind { NQ_BK_REF = 0, NQ_BK_CPU, NQ_BK_OPENBLAS, NQ_BK_ONEDNN, NQ_BK_CUDA, NQ_BK_COUNT } nq_backend_kind_t;

/* A linear layer's weights, prepared once per backend (prepacked layouts live in packed[]). */
typedef struct nq_linear {
  nq_tensor_t w;                /* [N,K] F32/BF16/F16, contiguous; data borrowed (mmap) or owned */
  nq_tensor_t b;                /* [N] F32, or data == NULL for no bias */
  void *packed[NQ_BK_COUNT];    /* owned by the backend of that slot; freed by nq_linear_deinit */
  void (*packed_free[NQ_BK_COUNT])(void *packed);
} nq_linear_t;

typedef struct nq_op_desc {
  nq_op_t op;
  const nq_tensor_t *src[3];
  nq_tensor_t *dst;             /* may alias src[0] for row-wise ops */
  nq_linear_t *lin;             /* NQ_OP_LINEAR */
  float f[2];
  int64_t i[8];
} nq_op_desc_t;

typedef struct nq_backend nq_backend_t;

typedef struct nq_backend_i {
  const char *name;
  nq_backend_kind_t kind;
  bool (*supports_op)(const nq_backend_t *be, const nq_op_desc_t *op);
  bool (*prefers_op)(const nq_backend_t *be, const nq_op_desc_t *op);        /* optional: default true */
  int (*compute)(nq_backend_t *be, const nq_op_desc_t *op, nq_err_t *err);
  int (*linear_pack)(nq_backend_t *be, nq_linear_t *lin, nq_err_t *err);     /* optional: fill lin->packed[kind] */
  void *(*buffer_alloc)(nq_backend_t *be, size_t bytes);                     /* optional: device memory */
  void (*buffer_free)(nq_backend_t *be, void *buf);                          /* optional */
  int (*copy)(nq_backend_t *be, nq_tensor_t *dst, const nq_tensor_t *src);   /* optional: host<->device */
  void (*free)(nq_backend_t *be);                                            /* optional */
} nq_backend_i;

struct nq_backend {
  const nq_backend_i *iface; /* borrowed (static) */
  void *ctx;                 /* owned by the backend */
  nq_pool_t *pool;           /* borrowed */
};

/* Constructors; NULL with err set when the backend is not built or cannot start. */
nq_backend_t *nq_backend_ref_new(nq_err_t *err);
nq_backend_t *nq_backend_cpu_new(nq_pool_t *pool /* borrowed */, nq_err_t *err);
nq_backend_t *nq_backend_openblas_new(nq_pool_t *pool, nq_err_t *err);
nq_backend_t *nq_backend_onednn_new(nq_pool_t *pool, nq_err_t *err);
/* NVIDIA GPU (WITH_CUDA=1): linear, conv2d, attention via cuBLAS; NULL when not built or no GPU (compute/backends/cuda.c) */
nq_backend_t *nq_backend_cuda_new(nq_pool_t *pool, nq_err_t *err);
/* By name: "ref", "cpu", "openblas", "onednn", "cuda". */
nq_backend_t *nq_backend_new_by_name(const char *name, nq_pool_t *pool, nq_err_t *err);
void nq_backend_free(nq_backend_t *be);
/* oneDNN implementation names chosen for f32 / bf16 matmul ("none" if unavailable). */
const char *nq_backend_onednn_impl(const nq_backend_t *be, int bf16);

const char *nq_op_name(nq_op_t op);

#endif

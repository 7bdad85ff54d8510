/* compute/models/vae_int.h — private: the small NCHW layer kit shared by the TAESD (taesd.c) and AutoencoderKL
 * (vae.c) ports: convolutions, GroupNorms and linears loaded by state_dict name from a safetensors file, with every
 * shape checked at load, and in-place elementwise helpers.
 *
 * Loaded tensors are owned copies: conv/linear weights in the compute weight dtype (F32, BF16 or F16; converted at
 * load, exactly when the file already has that precision), biases and norm parameters F32. Activations are
 * contiguous F32 NCHW tensors allocated per layer (nq_tensor_init) and freed by the caller. */
#ifndef NQ_COMPUTE_MODELS_VAE_INT_H
#define NQ_COMPUTE_MODELS_VAE_INT_H

#include "compute/core/ops.h"
#include "compute/io/safetensors.h"

typedef struct nq_vae__conv {
  nq_tensor_t w;      /* [Co, Ci, k, k] owned, weight dtype */
  nq_tensor_t b;      /* [Co] owned F32, or data == NULL (no bias) */
  int stride, pad;
} nq_vae__conv_t;

typedef struct nq_vae__norm {
  nq_tensor_t g, b;   /* [C] owned F32 */
  int groups;
  float eps;
} nq_vae__norm_t;

/* Any float tensor `name` of exactly ndim/shape, converted to dtype `dt` (F32/BF16/F16) into *out (owned). */
int nq_vae__tensor_load(const nq_st_file_t *f, const char *name, int ndim, const int64_t *shape, nq_dtype_t dt,
                        nq_tensor_t *out /* OUT owned */, nq_err_t *err);
/* `<pfx>.weight` [co, ci, k, k] (+ `<pfx>.bias` [co] when bias). */
int nq_vae__conv_load(const nq_st_file_t *f, const char *pfx, int64_t co, int64_t ci, int k, bool bias, int stride,
                      int pad, nq_dtype_t wdt, nq_vae__conv_t *c /* OUT */, nq_err_t *err);
/* `<pfx>.weight`, `<pfx>.bias` [c]. */
int nq_vae__norm_load(const nq_st_file_t *f, const char *pfx, int64_t c, int groups, float eps,
                      nq_vae__norm_t *n /* OUT */, nq_err_t *err);
/* A linear [n, k] (+ bias [n]) stored as `<pfx>.weight` [n,k] or [n,k,1,1] (1x1-conv form of old checkpoints). */
int nq_vae__linear_load(const nq_st_file_t *f, const char *pfx, int64_t n, int64_t k, bool bias, nq_dtype_t wdt,
                        nq_linear_t *lin /* OUT */, nq_err_t *err);
void nq_vae__conv_deinit(nq_vae__conv_t *c);
void nq_vae__norm_deinit(nq_vae__norm_t *n);

/* y = conv(x), y allocated here. */
int nq_vae__conv_fwd(nq_exec_t *ex, const nq_vae__conv_t *c, const nq_tensor_t *x, nq_tensor_t *y /* OUT owned */,
                     nq_err_t *err);
/* x = groupnorm(x) in place; then SiLU when silu. */
int nq_vae__norm_fwd(nq_exec_t *ex, const nq_vae__norm_t *n, nq_tensor_t *x, bool silu, nq_err_t *err);
/* Fresh F32 tensor like x but with a different channel count and spatial size. */
int nq_vae__alloc4(nq_tensor_t *t /* OUT owned */, int64_t n, int64_t c, int64_t h, int64_t w, nq_err_t *err);
/* In-place elementwise helpers over contiguous F32 tensors. */
void nq_vae__relu(nq_tensor_t *x);
void nq_vae__add(nq_tensor_t *x, const nq_tensor_t *y); /* x += y (same numel) */
/* Replace *dst by *src (deinit the old, move src). */
void nq_vae__move(nq_tensor_t *dst, nq_tensor_t *src);

#endif

/* compute/models/vae.h — diffusers AutoencoderKL (the Stable Diffusion / AudioLDM / ModelScope VAE), built from its
 * config.json and diffusion_pytorch_model.safetensors.
 *
 *   nq_vae_t *v; nq_vae_open("sd15/vae", NQ_DT_F32, NULL, &v, &err);   // or a pipeline dir holding vae/
 *   nq_vae_decode(v, &z, &sample, &err);        // z [N,latent,h,w] -> sample [N,out,8h,8w] (about [-1,1])
 *   nq_vae_encode_mean(v, &image, &mean, &err); // image [N,in,H,W] in [-1,1] -> latent_dist.mean [N,latent,H/8,W/8]
 *
 * Exactly diffusers 0.21's AutoencoderKL.decode / encode(...).latent_dist.mean:
 *   decode: post_quant_conv -> decoder (conv_in, mid block, up blocks of lpb+1 resnets with nearest x2 + conv on all
 *           but the last, GroupNorm, SiLU, conv_out). No 1/scaling_factor inside: callers scale latents themselves
 *           (config.scaling_factor).
 *   encode: encoder (conv_in, down blocks of lpb resnets, Downsample = pad (0,1,0,1) then 3x3 stride-2 conv, mid
 *           block, GroupNorm, SiLU, conv_out to 2*latent) -> quant_conv; mean = the first `latent` channels. No
 *           sampling.
 * ResnetBlock2D: GroupNorm(groups, eps 1e-6) + SiLU + conv3x3, twice, 1x1 conv_shortcut when channels change. The
 * mid-block attention is single-head over the H*W positions (head dim = C), GroupNorm first, residual after; its
 * weights go by the 0.21 names (to_q, to_k, to_v, to_out.0) or the older ones (query, key, value, proj_attn).
 * Either half may be absent from the weights file (its conv_in missing); the matching call then fails.
 * Weight dtype: wdtype applies to the resnet/sampler convs and the attention linears; conv_in, conv_out and
 * (post_)quant_conv stay F32 (tiny, and at the edges: with BF16 there the golden decode drifts from 9e-3 to 1.1e-2
 * rel_l2). */
#ifndef NQ_COMPUTE_MODELS_VAE_H
#define NQ_COMPUTE_MODELS_VAE_H

#include "compute/core/ops.h"

#define NQ_VAE_MAX_LEVELS 8

typedef struct nq_vae_config {
  int in_channels, out_channels, latent_channels;
  int n_levels;
  int boc[NQ_VAE_MAX_LEVELS];  /* block_out_channels */
  int layers_per_block;
  int norm_groups;
  float scaling_factor;        /* informational: latents = mean * scaling_factor for the UNet */
  bool mid_attention;          /* mid_block_add_attention (default true) */
} nq_vae_config_t;

typedef struct nq_vae nq_vae_t;

/* dir: holds config.json + diffusion_pytorch_model.safetensors, or a pipeline dir with them under vae/.
 * wdtype: conv/linear weight dtype for compute (F32, BF16, F16). backends: nq_exec_new spec (NULL = "auto"). */
int nq_vae_open(const char *dir, nq_dtype_t wdtype, const char *backends, nq_vae_t **out /* OUT owned */,
                nq_err_t *err);
void nq_vae_free(nq_vae_t *v);
const nq_vae_config_t *nq_vae_config(const nq_vae_t *v);
bool nq_vae_has_encoder(const nq_vae_t *v);
bool nq_vae_has_decoder(const nq_vae_t *v);

/* z [N, latent, h, w] F32 -> *sample (allocated here, [N, out, h*2^(L-1), w*2^(L-1)]). */
int nq_vae_decode(nq_vae_t *v, const nq_tensor_t *z, nq_tensor_t *sample /* OUT owned */, nq_err_t *err);
/* image [N, in, H, W] F32 (H, W multiples of 2^(L-1)) -> *mean (allocated here, [N, latent, H/2^(L-1), W/2^(L-1)]).
 * logvar: NULL, or receives the second half of the moments (allocated here). */
int nq_vae_encode_mean(nq_vae_t *v, const nq_tensor_t *image, nq_tensor_t *mean /* OUT owned */,
                       nq_tensor_t *logvar /* OUT owned, may be NULL */, nq_err_t *err);

#endif

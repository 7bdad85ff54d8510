/* compute/models/unet3d.h — diffusers UNet3DConditionModel (ModelScope text-to-video-ms-1.7b, ZeroScope).
 *
 *   nq_unet3d_t *u;
 *   nq_unet3d_load("zeroscope/unet", NULL, &u, &err);
 *   nq_unet3d_forward(u, &latents, t, &prompt_embeds, &eps, &err);   // latents [B, C, F, H, W]
 *
 * Frames are folded into the batch for every 2D layer (row b*F + f). After conv_in comes transformer_in (a
 * TransformerTemporalModel with 8 heads of attention_head_dim and GroupNorm(32)); every down/mid/up layer is
 * resnet -> TemporalConvLayer (4 x [GroupNorm(32), SiLU, Conv3d (3,1,1)] + identity) -> Transformer2D ->
 * TransformerTemporal (attn1 and attn2 both self-attention over the frames). The in-block transformers are
 * diffusers' Transformer2DModel(C // value, value): head_dim = the config's attention_head_dim.
 */
#ifndef NQ_COMPUTE_MODELS_UNET3D_H
#define NQ_COMPUTE_MODELS_UNET3D_H

#include "compute/models/unet2d.h"

typedef nq_unet2d_opts_t nq_unet3d_opts_t; /* same fields: backends, wdtype, config */
typedef struct nq_unet3d nq_unet3d_t;

/* path: a pipeline dir with unet/config.json, a unet dir, or a single .safetensors with diffusers names. */
int nq_unet3d_load(const char *path, const nq_unet3d_opts_t *opts, nq_unet3d_t **out /* OUT owned */, nq_err_t *err);
void nq_unet3d_free(nq_unet3d_t *u);
/* in/out channels, cross_attention_dim (needs_ehs is always 1), downscale. */
void nq_unet3d_get_info(const nq_unet3d_t *u, nq_unet2d_info_t *info /* OUT */);

/* sample [B, Cin, F, H, W] F32; timesteps: B floats; ehs [B, L, D] F32. out: allocated here, [B, Cout, F, H, W]. */
int nq_unet3d_forward(nq_unet3d_t *u, const nq_tensor_t *sample, const float *timesteps, const nq_tensor_t *ehs,
                      nq_tensor_t *out /* OUT owned */, nq_err_t *err);

/* The denoise-loop model function for video latents (see nq_unet2d_eps; ud = nq_unet_cond_t with unet3d and ehs):
 * latents_in [M, C, F, H, W]; out [M, Cout, F, H, W] allocated by the caller. */
int nq_unet3d_eps(void *ud /* nq_unet_cond_t */, const nq_tensor_t *latents_in, float t, nq_tensor_t *out,
                  nq_err_t *err);

void nq_unet3d_set_attn_path(nq_unet3d_t *u, int path); /* see nq_unet2d_set_attn_path */

#endif

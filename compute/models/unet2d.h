/* compute/models/unet2d.h — diffusers UNet2DConditionModel (SD-1.x, SD-2.x, AudioLDM) driven by its config.json.
 *
 *   nq_unet2d_t *u;
 *   nq_unet2d_load("sd15/unet", NULL, &u, &err);     // dir with config.json + diffusion_pytorch_model.safetensors
 *   nq_tensor_t eps;                                  // allocated by forward, caller deinits
 *   nq_unet2d_forward(u, &latents, t, &prompt_embeds, NULL, &eps, &err);
 *   nq_unet2d_free(u);
 *
 * Supported: positional time embedding (flip_sin_to_cos, freq_shift), class_embed_type simple_projection with or
 * without class_embeddings_concat, (CrossAttn)Down/UpBlock2D, UNetMidBlock2DCrossAttn (or none), conv or linear
 * proj_in/out, attention_head_dim / num_attention_heads as int or per-block list (diffusers: the value is the head
 * count), transformer_layers_per_block, conv_in/out kernels, center_input_sample. Anything else in the config
 * (addition embeddings, scale-shift resnets, ...) is an NQ_EUNSUPPORTED error naming the key.
 *
 * Weights: diffusers state_dict names, or the original LDM single file (`model.diffusion_model.*`, e.g.
 * v1-5-pruned-emaonly.safetensors; names mapped by names_ldm_unet.c) — detected from the tensor names. Every
 * tensor's shape is checked; a missing or mis-shaped tensor is an error naming it.
 *
 * Batched: B samples at once (B = 2 for classifier-free guidance: [uncond, cond]). Without encoder_hidden_states
 * (AudioLDM) every cross-attention attends to its own hidden states, as diffusers does.
 */
#ifndef NQ_COMPUTE_MODELS_UNET2D_H
#define NQ_COMPUTE_MODELS_UNET2D_H

#include "compute/core/ops.h"

typedef struct nq_unet2d_opts {
  const char *backends; /* nq_exec_new spec; NULL = "auto" */
  int wdtype;           /* -1: keep the file's dtype; NQ_DT_F32/BF16/F16: convert the linear weights at load */
  int conv_wdtype;      /* the same for the conv weights (the conv kernels widen them to F32 anyway, so BF16 only
                           saves memory; `module run --dtype bf16` converts the linears only, as the LLM does) */
  const char *config;   /* config.json for a single-file checkpoint; NULL = next to the weights */
} nq_unet2d_opts_t;

void nq_unet2d_opts_init(nq_unet2d_opts_t *o /* OUT */);

typedef struct nq_unet2d nq_unet2d_t;

/* What a caller needs to feed the model. */
typedef struct nq_unet2d_info {
  int in_channels, out_channels;
  int cross_attention_dim;  /* D of encoder_hidden_states [B, L, D] */
  int needs_ehs;            /* 1: cross-attention needs encoder_hidden_states; 0: optional (AudioLDM) */
  int class_in_dim;         /* E of class_labels [B, E]; 0 when the model takes none */
  int downscale;            /* H and W must be multiples of this */
} nq_unet2d_info_t;

/* path: a directory holding unet/config.json (a pipeline dir), or config.json itself, with
 * diffusion_pytorch_model.safetensors (or its .index.json); or a single .safetensors file (needs opts->config
 * unless a config.json sits beside it). */
int nq_unet2d_load(const char *path, const nq_unet2d_opts_t *opts, nq_unet2d_t **out /* OUT owned */, nq_err_t *err);
void nq_unet2d_free(nq_unet2d_t *u);
void nq_unet2d_get_info(const nq_unet2d_t *u, nq_unet2d_info_t *info /* OUT */);

/* sample [B, Cin, H, W] F32; timesteps: B floats (integers or fractional Euler timesteps);
 * ehs [B, L, D] F32 or NULL; class_labels [B, E] F32 or NULL. out: allocated here, [B, Cout, H, W]. */
int nq_unet2d_forward(nq_unet2d_t *u, const nq_tensor_t *sample, const float *timesteps, const nq_tensor_t *ehs,
                      const nq_tensor_t *class_labels, nq_tensor_t *out /* OUT owned */, nq_err_t *err);

/* The model function of the denoise loop (nq_denoise_eps_fn in compute/models/samplers/scheduler.h): bind the
 * UNet and its conditioning in an nq_unet_cond_t and pass nq_unet2d_eps with it as ud.
 *   nq_unet_cond_t c = {.unet2d = u, .ehs = &embeds};   // [2B, L, D] = [negative; positive] under guidance
 *   nq_denoise_run(sched, nq_unet2d_eps, &c, &latents, &dopts, &err);
 * The conditioning tensors must have as many rows as the latents the loop passes (2B under guidance, else B). */
typedef struct nq_unet_cond {
  struct nq_unet2d *unet2d;         /* borrowed: for nq_unet2d_eps */
  struct nq_unet3d *unet3d;         /* borrowed: for nq_unet3d_eps */
  const nq_tensor_t *ehs;           /* borrowed: [M, L, D] or NULL */
  const nq_tensor_t *class_labels;  /* borrowed: [M, E] or NULL (unet2d only) */
} nq_unet_cond_t;

/* latents_in [M, C, H, W]; out [M, Cout, H, W] allocated by the caller (the loop). */
int nq_unet2d_eps(void *ud /* nq_unet_cond_t */, const nq_tensor_t *latents_in, float t, nq_tensor_t *out,
                  nq_err_t *err);

/* Attention implementation (tests and benchmarks): 0 auto, 1 per-sequence attention op, 2 GEMM, 3 batched small. */
void nq_unet2d_set_attn_path(nq_unet2d_t *u, int path);

#endif

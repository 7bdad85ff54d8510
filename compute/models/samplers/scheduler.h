/* compute/models/samplers/scheduler.h — diffusion schedulers (diffusers 0.21 DDIM, PNDM/PLMS, Euler discrete) and
 * the classifier-free-guidance denoise loop.
 *
 *   nq_sched_config_t c;
 *   nq_sched_config_load("sd15/scheduler/scheduler_config.json", NULL, &c, &err); // _class_name picks the kind
 *   nq_sched_t *s; nq_sched_new(&c, 25, &s, &err);
 *   // latents = noise * nq_sched_init_noise_sigma(s)
 *   nq_denoise_run(s, my_unet_eps, my_unet, &latents, 7.5f, &err);
 *
 * Numerics follow diffusers: betas and alphas_cumprod are float32 (torch.linspace in float32, cumprod accumulated
 * in double and rounded per entry, as torch's CPU kernel does); per-step coefficients are float32 like diffusers'
 * 0-d tensors; latents are updated in float32 with double intermediates.
 *
 * The loop (StableDiffusionPipeline 0.21): for each model call i
 *     x_in = [x, x] (uncond first; just x when guidance_scale <= 1)
 *     x_in = scale_model_input(x_in, i)            (Euler: x / sqrt(sigma_i^2 + 1); others: identity)
 *     e    = eps_fn(ud, x_in, timestep(i))         ([2B,C,H,W] in, same shape out)
 *     e    = e_u + g * (e_c - e_u)
 *     x    = step(e, i, x)
 * PNDM with skip_prk_steps makes steps + 1 model calls (the second timestep is evaluated twice); use
 * nq_sched_n_evals(). */
#ifndef NQ_COMPUTE_MODELS_SAMPLERS_SCHEDULER_H
#define NQ_COMPUTE_MODELS_SAMPLERS_SCHEDULER_H

#include "compute/core/tensor.h"

typedef enum nq_sched_kind { NQ_SCHED_DDIM = 0, NQ_SCHED_PNDM, NQ_SCHED_EULER } nq_sched_kind_t;
typedef enum nq_sched_pred { NQ_PRED_EPSILON = 0, NQ_PRED_V } nq_sched_pred_t;
typedef enum nq_sched_spacing { NQ_SPACING_LEADING = 0, NQ_SPACING_TRAILING, NQ_SPACING_LINSPACE } nq_sched_spacing_t;
typedef enum nq_sched_betas { NQ_BETAS_SCALED_LINEAR = 0, NQ_BETAS_LINEAR } nq_sched_betas_t;

typedef struct nq_sched_config {
  nq_sched_kind_t kind;
  int num_train_timesteps;      /* 1000 */
  double beta_start, beta_end;  /* 0.00085, 0.012 (SD) */
  nq_sched_betas_t beta_schedule;
  int steps_offset;             /* leading spacing adds it (SD: 1) */
  bool set_alpha_to_one;        /* DDIM/PNDM: alpha_cumprod "before" t = 0 is 1 (else alphas_cumprod[0]) */
  bool skip_prk_steps;          /* PNDM: only PLMS steps (the only PNDM mode implemented) */
  nq_sched_pred_t prediction_type;
  nq_sched_spacing_t timestep_spacing; /* default: leading for DDIM/PNDM, linspace for Euler */
  bool clip_sample;             /* DDIM: clamp x0 to +-clip_sample_range */
  double clip_sample_range;
  double eta;                   /* DDIM: only 0 is implemented (deterministic) */
} nq_sched_config_t;

/* diffusers defaults for kind. */
void nq_sched_config_init(nq_sched_config_t *c /* OUT */, nq_sched_kind_t kind);
/* Reads a scheduler_config.json. kind: "ddim", "pndm", "euler" to override its _class_name (diffusers'
 * <Scheduler>.from_config), or NULL. Unknown keys are ignored; options this port does not implement (karras sigmas,
 * thresholding, trained_betas, PRK steps, eta != 0, ...) are NQ_EUNSUPPORTED errors naming the key. */
int nq_sched_config_load(const char *path, const char *kind, nq_sched_config_t *c /* OUT */, nq_err_t *err);
/* "ddim"/"pndm"/"euler" (also the diffusers class names) -> kind; -1 when unknown. */
int nq_sched_kind_parse(const char *s);

typedef struct nq_sched nq_sched_t;

/* A scheduler set up for `steps` inference steps (1..num_train_timesteps). */
int nq_sched_new(const nq_sched_config_t *c, int steps, nq_sched_t **out /* OUT owned */, nq_err_t *err);
void nq_sched_free(nq_sched_t *s);
/* Model calls of a full run (steps, or steps + 1 for PLMS). */
int nq_sched_n_evals(const nq_sched_t *s);
/* Timestep passed to the model at call i (fractional for Euler linspace). */
float nq_sched_timestep(const nq_sched_t *s, int i);
/* Multiply the initial N(0,1) noise by this (1 for DDIM/PNDM, the largest sigma for Euler). */
float nq_sched_init_noise_sigma(const nq_sched_t *s);
/* Euler: sigma_i (sigma of call i; i == n_evals gives the final 0). Others: NaN. */
float nq_sched_sigma(const nq_sched_t *s, int i);
/* x[n] <- scale_model_input(x, call i), in place. */
void nq_sched_scale_model_input(const nq_sched_t *s, int i, float *x, int64_t n);
/* x[n] <- scheduler.step(model_output, timestep(i), x). Calls must come in order i = 0, 1, ... (PLMS keeps a
 * history); nq_sched_reset starts over. */
int nq_sched_step(nq_sched_t *s, int i, const float *model_output, float *x, int64_t n, nq_err_t *err);
void nq_sched_reset(nq_sched_t *s);

/* The model function of the loop (e.g. a UNet with its text conditioning bound in ud).
 *   latents_in: [M, C, H, W] F32 with M = 2B under guidance (rows 0..B-1 take the unconditional embedding, rows
 *               B..2B-1 the conditional one), M = B without; already scaled by scale_model_input.
 *   t:          the timestep of this call (float: Euler timesteps are fractional).
 *   out:        [M, C, H, W] F32, allocated by the loop; fill it with the model's prediction (epsilon, or v for
 *               prediction_type v_prediction).
 * Returns 0 or a negative NQ_E* with err set; the loop stops at the first error. */
typedef int (*nq_denoise_eps_fn)(void *ud, const nq_tensor_t *latents_in, float t, nq_tensor_t *out, nq_err_t *err);

/* Per-call progress hook (optional): return non-zero to cancel (the loop then returns NQ_ECANCELED). */
typedef int (*nq_denoise_progress_cb)(void *ud, int call, int n_calls, float t);

typedef struct nq_denoise_opts {
  float guidance_scale;             /* <= 1: no classifier-free guidance (model sees B rows) */
  nq_denoise_progress_cb progress;  /* optional */
  void *progress_ud;                /* borrowed */
} nq_denoise_opts_t;

/* Runs every call of s (from its first) on latents [B,C,H,W] F32 contiguous, in place. */
int nq_denoise_run(nq_sched_t *s, nq_denoise_eps_fn eps_fn, void *ud /* borrowed */, nq_tensor_t *latents,
                   const nq_denoise_opts_t *opts, nq_err_t *err);

#endif

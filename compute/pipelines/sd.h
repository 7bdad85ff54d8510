/* compute/pipelines/sd.h — the Stable Diffusion text-to-image pipeline (SD-1.x / SD-2.x), as diffusers 0.21's
 * StableDiffusionPipeline runs it, and NExT-GPT's image hand-off (spec §8).
 *
 *   nq_sd_opts_t o;  nq_sd_opts_init(&o);  o.taesd = "/models/taesd";          // optional fast preview decoder
 *   nq_sd_t *sd;     nq_sd_open("/models/stable-diffusion-v1-5", &o, &sd, &err);  // diffusers dir or LDM file
 *   nq_sd_request_t r;  nq_sd_request_init(&r);
 *   r.prompt = "a photo of an astronaut riding a horse on mars";               // or r.prompt_embeds (NExT-GPT)
 *   r.seed = 42;  r.steps = 25;  r.guidance_scale = 7.5f;
 *   nq_sd_result_t res;  nq_sd_generate(sd, &r, &res, &err);                   // res.rgb: height*width*3 uint8
 *   nq_sd_result_deinit(&res);  nq_sd_free(sd);
 *
 * Loading (nq_sd_open):
 *   - a diffusers pipeline directory: model_index.json (optional), unet/, vae/, text_encoder/, tokenizer/,
 *     scheduler/scheduler_config.json. A missing text_encoder/ (or tokenizer/) is allowed: the pipeline then only
 *     takes prompt_embeds and needs negative_embeds under guidance (or guidance <= 1).
 *   - a single-file LDM checkpoint (v1-5-pruned-emaonly.safetensors: `model.diffusion_model.*`,
 *     `first_stage_model.*`, `cond_stage_model.transformer.text_model.*`). The configs come from opts.config_dir
 *     (a diffusers-shaped directory of JSON configs + tokenizer, e.g. ../shared/models/configs/
 *     runwayml-stable-diffusion-v1-5), else from such files beside the checkpoint, else built-in SD-1.5 defaults
 *     (unet, vae, PNDM scheduler; the tokenizer must then be given as opts.tokenizer for text prompts). The VAE
 *     names go through compute/models/names_ldm_vae.h.
 *   A missing or mis-shaped tensor is an error naming it (the component loaders check every shape).
 *
 * Generation (nq_sd_generate), diffusers semantics:
 *   cond    = CLIP(prompt) last_hidden_state [1,77,D] (tokens: start, text, end, padded with the model's pad id:
 *             SD-1.x 49407, SD-2 0 — read from tokenizer/tokenizer_config.json's pad_token), or prompt_embeds.
 *   uncond  = negative_embeds, else CLIP(negative_prompt or "") — also on the prompt_embeds path (spec §8:
 *             NExT-GPT's patched pipeline encodes "" with the pipeline's own text encoder). Only under guidance > 1.
 *   latents = N(0,1) noise [1,4,H/8,W/8] from nq_sd_randn(seed) (or req.latents) * init_noise_sigma;
 *             the loop of compute/models/samplers/scheduler.h with CFG batch [uncond, cond];
 *   image   = VAE.decode(latents / scaling_factor) (0.18215 for SD-1.5), (x/2 + 0.5) clamped to [0,1],
 *             round(x*255) -> uint8 RGB, rows top to bottom.
 *   No safety checker.
 *
 * Noise: nq_sd_randn fills n floats from `seed` with a documented generator (not torch's): a xoshiro256** stream
 * seeded by splitmix64(seed), each pair of 53-bit uniforms u1, u2 in [0,1) giving r = sqrt(-2 ln(1 - u1)),
 * z[2i] = r cos(2 pi u2), z[2i+1] = r sin(2 pi u2) (Box-Muller, computed in double, stored as float). The same
 * seed gives the same image on every machine with the same backends/dtypes. To reproduce a torch run exactly, pass
 * torch's noise as req.latents.
 *
 * Progress: req.progress is called after every model evaluation (PNDM makes steps + 1) with the step counts and,
 * every req.preview_every evaluations (and never on the last), a TAESD preview of the current latents (needs
 * opts.taesd; NULL otherwise). Return non-zero from it to cancel: nq_sd_generate then returns NQ_ECANCELED.
 *
 * Threads: a pipeline runs one generate/encode at a time (internal mutex); several threads may share it.
 */
#ifndef NQ_COMPUTE_PIPELINES_SD_H
#define NQ_COMPUTE_PIPELINES_SD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

#define NQ_SD_MAX_TOKENS 77       /* CLIP context: prompt_embeds rows */
#define NQ_SD_MAX_SIDE 2048       /* height/width limit (pixels) */
#define NQ_SD_MAX_STEPS 1000

typedef struct nq_sd nq_sd_t;

typedef struct nq_sd_opts {
  const char *backends;    /* nq_exec_new spec for every component; NULL = "auto" */
  int wdtype;              /* UNet + CLIP linear weights: -1 keep the file's dtype, or NQ_DT_F32/BF16/F16 */
  int conv_wdtype;         /* UNet conv weights: -1 keep, or NQ_DT_F32/BF16/F16 (memory only; kernels widen) */
  int vae_wdtype;          /* VAE / TAESD conv weights: NQ_DT_F32 (default), NQ_DT_BF16 or NQ_DT_F16 */
  const char *config_dir;  /* single-file checkpoints: a diffusers-shaped config directory; NULL = see above */
  const char *tokenizer;   /* tokenizer override (anything nq_clip_tok_open takes); NULL = <model>/tokenizer */
  const char *taesd;       /* optional TAESD dir/file (taesd_decoder.safetensors) for previews; NULL = none */
  const char *scheduler;   /* default scheduler override: "ddim" | "pndm" | "euler"; NULL = scheduler_config's */
  bool no_text_encoder;    /* do not load the text encoder (embeds-only worker) */
} nq_sd_opts_t;

void nq_sd_opts_init(nq_sd_opts_t *o /* OUT */);

/* path: a diffusers directory or a single-file LDM .safetensors (see above). *out owned by the caller. */
int nq_sd_open(const char *path, const nq_sd_opts_t *opts /* borrowed, may be NULL */, nq_sd_t **out /* OUT owned */,
               nq_err_t *err);
void nq_sd_free(nq_sd_t *sd);

typedef struct nq_sd_info {
  int cross_attention_dim; /* D of prompt_embeds [77, D]: 768 SD-1.x, 1024 SD-2 */
  int latent_channels;     /* 4 */
  int vae_scale;           /* pixels per latent (8) */
  int default_height, default_width; /* unet sample_size * vae_scale (512 for SD-1.5) */
  float scaling_factor;    /* VAE scaling_factor */
  int pad_id;              /* tokenizer pad id (-1 when no tokenizer) */
  bool has_text_encoder, has_taesd;
  char scheduler[16];      /* default scheduler kind: "ddim" | "pndm" | "euler" */
} nq_sd_info_t;

void nq_sd_get_info(const nq_sd_t *sd, nq_sd_info_t *info /* OUT */);

/* One progress report (borrowed pointers, valid during the callback only). */
typedef struct nq_sd_progress {
  int step;                 /* model evaluations done (1..n_steps) */
  int n_steps;              /* evaluations in the run (nq_sched_n_evals) */
  float timestep;           /* timestep of the evaluation just done */
  const uint8_t *preview;   /* TAESD RGB8 [preview_h * preview_w * 3] or NULL */
  int preview_w, preview_h;
} nq_sd_progress_t;

/* Return non-zero to cancel. */
typedef int (*nq_sd_progress_cb)(void *ud, const nq_sd_progress_t *p);

typedef struct nq_sd_request {
  const char *prompt;           /* borrowed UTF-8, or NULL when prompt_embeds is given */
  const char *negative_prompt;  /* borrowed; NULL = "" (what NExT-GPT uses) */
  const float *prompt_embeds;   /* borrowed [embeds_tokens, embeds_dim] row-major (NExT-GPT cond [77, 768]) */
  int embeds_tokens, embeds_dim;/* embeds_dim must equal info.cross_attention_dim; tokens 1..77 */
  const float *negative_embeds; /* borrowed, optional: the unconditional embeddings, same shape as prompt_embeds */
  uint64_t seed;                /* noise seed (nq_sd_randn) */
  const float *latents;         /* borrowed, optional: initial N(0,1) noise [4, height/8, width/8] instead of seed */
  int steps;                    /* inference steps (default 50) */
  float guidance_scale;         /* default 7.5; <= 1 disables classifier-free guidance */
  int height, width;            /* pixels, multiples of 8 (default: info.default_height/width) */
  const char *scheduler;        /* "ddim" | "pndm" | "euler" | NULL (the pipeline's default) */
  int preview_every;            /* TAESD preview every k evaluations (0 = none) */
  nq_sd_progress_cb progress;   /* optional */
  void *progress_ud;            /* borrowed */
} nq_sd_request_t;

void nq_sd_request_init(nq_sd_request_t *r /* OUT */);

typedef struct nq_sd_result {
  uint8_t *rgb;                 /* owned [height * width * 3] */
  int width, height;
  float *latents;               /* owned [latent_channels, height/8, width/8]: final latents (before 1/scaling) */
  int latent_channels;
  int n_evals;                  /* model evaluations made */
  double t_text, t_denoise, t_decode; /* seconds per phase */
} nq_sd_result_t;

/* Runs one request (batch 1; the UNet sees batch 2 under guidance). out is zeroed first; on error nothing is left
 * allocated in it. Bad requests are NQ_EINVAL | NQ_ERR_FATAL naming the field. */
int nq_sd_generate(nq_sd_t *sd, const nq_sd_request_t *req /* borrowed */, nq_sd_result_t *out /* OUT */,
                   nq_err_t *err);
void nq_sd_result_deinit(nq_sd_result_t *r);

/* CLIP text embeddings of n prompts -> out [n, 77, D] (last_hidden_state, the model's pad id): what the pipeline
 * feeds the UNet, and what NExT-GPT's process_embeddings.py stores for images. Needs the text encoder. */
int nq_sd_encode_text(nq_sd_t *sd, const char *const *texts /* borrowed [n] */, int n, float *out /* OUT */,
                      nq_err_t *err);

/* VAE-decode latents [C, h, w] (already divided by nothing: the pipeline divides by scaling_factor) to RGB8
 * [8h * 8w * 3] (*rgb owned by the caller). taesd: use TAESD instead of the VAE (needs opts.taesd). */
int nq_sd_decode_latents(nq_sd_t *sd, const float *latents /* borrowed */, int h, int w, bool taesd,
                         uint8_t **rgb /* OUT owned */, nq_err_t *err);

/* ---- the text encoder alone (precompute-embeddings; what NExT-GPT's process_embeddings.py runs) ---- */

typedef struct nq_sd_text nq_sd_text_t;

/* path: a diffusers pipeline dir (text_encoder/ + tokenizer/: SD-1.x, SD-2, ZeroScope), an HF CLIPTextModel dir
 * (config.json + weights; tokenizer files beside it or opts.tokenizer), or a single weight file / LDM checkpoint
 * (opts.tokenizer or opts.config_dir/tokenizer; opts.config_dir/text_encoder/config.json for the head count).
 * Used from opts: backends, wdtype, config_dir, tokenizer. Without any tokenizer only "" can be encoded. */
int nq_sd_text_open(const char *path, const nq_sd_opts_t *opts /* borrowed, may be NULL */,
                    nq_sd_text_t **out /* OUT owned */, nq_err_t *err);
void nq_sd_text_free(nq_sd_text_t *t);
int nq_sd_text_dim(const nq_sd_text_t *t);    /* D: 768 for CLIP-L (SD-1.x), 1024 for OpenCLIP-H (SD-2, ZeroScope) */
int nq_sd_text_pad_id(const nq_sd_text_t *t); /* 49407 SD-1.x, 0 SD-2 / ZeroScope */
/* n texts -> out [n, 77, D] last_hidden_state, one forward of batch n (thread-safe: one forward at a time). */
int nq_sd_text_encode(nq_sd_text_t *t, const char *const *texts /* borrowed [n] */, int n, float *out /* OUT */,
                      nq_err_t *err);

/* The pipeline's noise generator (see above): n standard normal floats. */
void nq_sd_randn(uint64_t seed, float *out /* OUT [n] */, size_t n);

#endif

/* compute/pipelines/audioldm.h — AudioLDM text-to-audio (diffusers 0.21 AudioLDMPipeline; NExT-GPT's audio decoder).
 *
 *   nq_audioldm_t *p;  nq_audioldm_open("models/audioldm-s-full-v2", NULL, &p, &err);
 *   nq_audioldm_req_t r; nq_audioldm_req_init(&r);
 *   r.text = "a dog barking";                 // or r.embeds = cond (the NExT-GPT hand-off, [512], not normalised)
 *   nq_audioldm_out_t o; nq_audioldm_generate(p, &r, &o, &err);   // o.samples [o.n_samples] float @ 16 kHz
 *   nq_audioldm_out_deinit(&o); nq_audioldm_free(p);
 *
 * Directory: the diffusers pipeline layout — unet/ (UNet2DConditionModel, class_embed_type simple_projection,
 * class_embeddings_concat, no cross-attention), vae/ (AutoencoderKL, 1 output channel), vocoder/ (SpeechT5HifiGan),
 * scheduler/scheduler_config.json (DDIM), and optionally text_encoder/ (ClapTextModelWithProjection) + tokenizer/
 * (RoBERTa vocab.json + merges.txt). Without a text encoder only requests with `embeds` and guidance <= 1 work
 * (the unconditional vector is CLAP("")); a request needing it fails with NQ_EUNSUPPORTED.
 *
 * Steps (AudioLDMPipeline.__call__):
 *   1. conditioning c [512]: embeds as given (NExT-GPT: projector output, NOT normalised, spec §8), or
 *      F.normalize(CLAP(text).text_embeds) (tokenized to 512 ids, padding="max_length").
 *      Under guidance (guidance_scale > 1) the unconditional row is F.normalize(CLAP("").text_embeds) and the
 *      UNet sees class_labels [uncond; cond].
 *   2. frames T = ceil(audio_length_s / (prod(upsample_rates) / sampling_rate)) rounded up to a multiple of the
 *      VAE scale factor 2^(levels-1) — and here also to a multiple of the UNet's downscale x VAE scale (our UNet
 *      needs latent sizes divisible by its downscale; diffusers would interpolate instead). Latents
 *      [1, C, T/vs, mels/vs] ~ N(0,1) from `seed` (our own RNG: bit-exactness with torch's generator is not a goal).
 *   3. DDIM (scheduler_config.json; eta 0), `steps` calls, CFG e = e_u + g (e_c - e_u).
 *   4. mel = vae.decode(latents / scaling_factor) [1,1,T,mels] -> squeeze -> vocoder -> waveform [160T+32];
 *      cut to floor(audio_length_s * sampling_rate) samples (spec §8).
 *
 * Thread safety: one generate at a time per pipeline (serialised internally by a mutex).
 */
#ifndef NQ_COMPUTE_PIPELINES_AUDIOLDM_H
#define NQ_COMPUTE_PIPELINES_AUDIOLDM_H

#include <stdbool.h>
#include <stdint.h>

#include "common/err.h"
#include "compute/core/tensor.h"

#define NQ_AUDIOLDM_SAMPLE_RATE 16000
#define NQ_AUDIOLDM_EMBED_DIM 512 /* CLAP text_embeds / class_labels of the real model */

typedef struct nq_audioldm_opts {
  const char *backends; /* nq_exec_new spec; NULL = "auto" */
  int wdtype;           /* -1 = keep the file's dtype; NQ_DT_F32 / NQ_DT_BF16 / NQ_DT_F16 for UNet/VAE/CLAP linears */
  bool no_text_encoder; /* skip text_encoder/ + tokenizer/ even when present (embeds-only, guidance <= 1) */
} nq_audioldm_opts_t;

void nq_audioldm_opts_init(nq_audioldm_opts_t *o /* OUT */);

typedef struct nq_audioldm nq_audioldm_t;

/* Per-step progress: called after each denoise call i (0-based) of n; return non-zero to cancel (the generate call
 * then returns NQ_ECANCELED). */
typedef int (*nq_gen_progress_cb)(void *ud, int step, int n_steps);

typedef struct nq_audioldm_req {
  const char *text;        /* borrowed: prompt (CLAP-encoded), or NULL when embeds is given */
  const float *embeds;     /* borrowed [n_embeds]: the conditioning vector as the UNet takes it (wins over text) */
  int n_embeds;            /* must equal the UNet's class input dim (512) */
  uint64_t seed;           /* default 13 (NExT-GPT demo) */
  int steps;               /* default 50 */
  float guidance_scale;    /* default 7.5; <= 1 disables CFG */
  double audio_length_s;   /* default 5.0 (NExT-GPT function default; the demo uses 9); double like Python's float, so
                              int(len * 16000) agrees with diffusers (0.01f would give 159 samples) */
  nq_gen_progress_cb progress; /* optional */
  void *progress_ud;           /* borrowed */
} nq_audioldm_req_t;

void nq_audioldm_req_init(nq_audioldm_req_t *r /* OUT */);

typedef struct nq_audioldm_out {
  float *samples;    /* owned [n_samples], mono, in [-1, 1] (vocoder tanh) */
  int64_t n_samples; /* floor(audio_length_s * sample_rate) */
  int sample_rate;   /* vocoder sampling_rate (16000) */
  int mel_frames;    /* T fed to the vocoder */
} nq_audioldm_out_t;

int nq_audioldm_open(const char *dir, const nq_audioldm_opts_t *opts /* may be NULL */,
                     nq_audioldm_t **out /* OUT owned */, nq_err_t *err);
void nq_audioldm_free(nq_audioldm_t *p);
/* The UNet class input dim (512 for the real model), the vocoder rate and whether a text encoder is loaded. */
int nq_audioldm_embed_dim(const nq_audioldm_t *p);
int nq_audioldm_sample_rate(const nq_audioldm_t *p);
bool nq_audioldm_has_text_encoder(const nq_audioldm_t *p);

/* The normalised CLAP text embedding of `text` (what the pipeline uses as conditioning); out [embed_dim]. */
int nq_audioldm_encode_text(nq_audioldm_t *p, const char *text, float *out /* OUT [embed_dim] */, nq_err_t *err);

int nq_audioldm_generate(nq_audioldm_t *p, const nq_audioldm_req_t *req, nq_audioldm_out_t *out /* OUT */,
                         nq_err_t *err);
void nq_audioldm_out_deinit(nq_audioldm_out_t *o);

#endif

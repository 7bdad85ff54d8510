/* compute/pipelines/zeroscope.h — ZeroScope / ModelScope text-to-video (diffusers 0.21 TextToVideoSDPipeline;
 * NExT-GPT's video decoder).
 *
 *   nq_zeroscope_t *p;  nq_zeroscope_open("models/zeroscope_v2_576w", NULL, &p, &err);
 *   nq_zeroscope_req_t r; nq_zeroscope_req_init(&r);
 *   r.text = "a cat playing piano";     // or r.embeds = cond, r.n_tokens = 77 (the NExT-GPT hand-off [77,1024])
 *   nq_zeroscope_out_t o; nq_zeroscope_generate(p, &r, &o, &err);   // o.frames [F,H,W,3] uint8
 *   nq_zeroscope_out_deinit(&o); nq_zeroscope_free(p);
 *
 * Directory: unet/ (UNet3DConditionModel), vae/ (AutoencoderKL), scheduler/scheduler_config.json (DDIM), and
 * optionally text_encoder/ (CLIPTextModel, OpenCLIP-H sized: hidden 1024, gelu) + tokenizer/ (CLIP BPE, padded
 * with id 0 as open_clip does). Without a text encoder only `embeds` requests with guidance <= 1 work.
 *
 * Steps (TextToVideoSDPipeline.__call__):
 *   1. prompt_embeds [1,77,D]: embeds as given, or CLIP(text).last_hidden_state; uncond = CLIP("") under guidance.
 *   2. latents [1, 4, F, H/vs, W/vs] ~ N(0,1) from `seed` (our RNG); height/width rounded up to multiples of
 *      vs x UNet downscale (8 x 8 = 64 for the real model: 320x576 stays).
 *   3. DDIM, `steps` calls, CFG.
 *   4. per frame: vae.decode(latents / scaling_factor) -> [3,H,W] in ~[-1,1]; uint8 = round(clamp((x+1)/2,0,1)*255)
 *      (diffusers tensor2vid: (x * 0.5 + 0.5).clamp(0,1) * 255, then .astype(uint8) truncates: we truncate too).
 */
#ifndef NQ_COMPUTE_PIPELINES_ZEROSCOPE_H
#define NQ_COMPUTE_PIPELINES_ZEROSCOPE_H

#include <stdbool.h>
#include <stdint.h>

#include "common/err.h"
#include "compute/pipelines/audioldm.h" /* nq_gen_progress_cb */

#define NQ_ZEROSCOPE_FPS 8 /* NExT-GPT saves videos at 8 fps */

typedef struct nq_zeroscope_opts {
  const char *backends; /* nq_exec_new spec; NULL = "auto" */
  int wdtype;           /* -1 keep; NQ_DT_F32 / NQ_DT_BF16 / NQ_DT_F16 */
  bool no_text_encoder; /* skip text_encoder/ + tokenizer/ */
} nq_zeroscope_opts_t;

void nq_zeroscope_opts_init(nq_zeroscope_opts_t *o /* OUT */);

typedef struct nq_zeroscope nq_zeroscope_t;

typedef struct nq_zeroscope_req {
  const char *text;        /* borrowed: prompt, or NULL when embeds is given */
  const float *embeds;     /* borrowed [n_tokens, D] row-major (D = the UNet's cross_attention_dim; wins over text) */
  int n_tokens;            /* 77 */
  uint64_t seed;           /* default 13 */
  int steps;               /* default 50 */
  float guidance_scale;    /* default 7.5 */
  int height, width;       /* default 320 x 576 */
  int num_frames;          /* default 24 (NExT-GPT demo) */
  nq_gen_progress_cb progress; /* optional */
  void *progress_ud;           /* borrowed */
} nq_zeroscope_req_t;

void nq_zeroscope_req_init(nq_zeroscope_req_t *r /* OUT */);

typedef struct nq_zeroscope_out {
  uint8_t *frames;   /* owned [n_frames, height, width, 3] RGB */
  int n_frames, height, width;
  int fps;           /* NQ_ZEROSCOPE_FPS */
} nq_zeroscope_out_t;

int nq_zeroscope_open(const char *dir, const nq_zeroscope_opts_t *opts /* may be NULL */,
                      nq_zeroscope_t **out /* OUT owned */, nq_err_t *err);
void nq_zeroscope_free(nq_zeroscope_t *p);
/* cross_attention_dim of the UNet (1024 for the real model), whether a text encoder is loaded. */
int nq_zeroscope_embed_dim(const nq_zeroscope_t *p);
bool nq_zeroscope_has_text_encoder(const nq_zeroscope_t *p);

int nq_zeroscope_generate(nq_zeroscope_t *p, const nq_zeroscope_req_t *req, nq_zeroscope_out_t *out /* OUT */,
                          nq_err_t *err);
void nq_zeroscope_out_deinit(nq_zeroscope_out_t *o);

#endif

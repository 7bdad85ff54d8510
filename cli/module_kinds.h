/* cli/module_kinds.h — private: every `nextq module run` kind function, registered in cli/module_kinds.c. */
#ifndef NQ_CLI_MODULE_KINDS_H
#define NQ_CLI_MODULE_KINDS_H

#include "cli/module.h"

int nq_module_image_preprocess(const nq_module_ctx_t *ctx, nq_err_t *err);
int nq_module_audio_preprocess(const nq_module_ctx_t *ctx, nq_err_t *err);
int nq_module_video_preprocess(const nq_module_ctx_t *ctx, nq_err_t *err);
int nq_module_clip_tokenize(const nq_module_ctx_t *ctx, nq_err_t *err);
int nq_module_roberta_tokenize(const nq_module_ctx_t *ctx, nq_err_t *err);
int nq_module_llm_logits(const nq_module_ctx_t *ctx, nq_err_t *err);
int nq_module_llm_greedy(const nq_module_ctx_t *ctx, nq_err_t *err);
int nq_module_llama_tokenize(const nq_module_ctx_t *ctx, nq_err_t *err);

/* cli/module_nextgpt.c */
int nq_module_out_proj(const nq_module_ctx_t *ctx, nq_err_t *err);
int nq_module_nextgpt_prompt(const nq_module_ctx_t *ctx, nq_err_t *err);
int nq_module_nextgpt_signal(const nq_module_ctx_t *ctx, nq_err_t *err);

/* cli/module_encode.c */
int nq_module_imagebind_vision(const nq_module_ctx_t *ctx, nq_err_t *err);
int nq_module_imagebind_audio(const nq_module_ctx_t *ctx, nq_err_t *err);
int nq_module_clip_text(const nq_module_ctx_t *ctx, nq_err_t *err);

/* cli/module_unet.c */
int nq_module_unet2d(const nq_module_ctx_t *ctx, nq_err_t *err);
int nq_module_unet3d(const nq_module_ctx_t *ctx, nq_err_t *err);

/* cli/module_diffusion.c */
int nq_module_taesd_decode(const nq_module_ctx_t *ctx, nq_err_t *err);
int nq_module_vae_decode(const nq_module_ctx_t *ctx, nq_err_t *err);
int nq_module_vae_encode(const nq_module_ctx_t *ctx, nq_err_t *err);
int nq_module_denoise(const nq_module_ctx_t *ctx, nq_err_t *err);

/* cli/module_audio.c */
int nq_module_hifigan(const nq_module_ctx_t *ctx, nq_err_t *err);
int nq_module_clap_text(const nq_module_ctx_t *ctx, nq_err_t *err);

#endif

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

#endif

/* compute/models/clap_text.h — CLAP text encoder (transformers ClapTextModelWithProjection), AudioLDM's text side.
 *
 *   nq_clap_text_t *m;  nq_clap_text_load("audioldm/text_encoder", NULL, &m, &err);
 *   nq_clap_text_forward(m, ids, mask, B, L, text_embeds, last_hidden, &err);
 *   nq_clap_text_free(m);
 *
 * Network (../shared/golden/audio/README.md §2): RoBERTa embeddings — position_ids = cumsum(ids != pad) *
 * (ids != pad) + pad (so real tokens get 2, 3, ... and pads 1), word + token_type[0] + position, LayerNorm(eps);
 * post-LN BERT layers (additive key mask from attention_mask, exact-erf GELU); pooler tanh(dense(h[:,0]));
 * text_embeds = linear2(relu(linear1(pooled))) (before the pipeline's L2 normalisation).
 * Weights: `text_model.*` + `text_projection.*` names (the I64 position_ids / token_type_ids buffers are ignored);
 * a bare ClapTextModel prefix-less layout (`embeddings.*`) is accepted too when no projection is needed.
 */
#ifndef NQ_COMPUTE_MODELS_CLAP_TEXT_H
#define NQ_COMPUTE_MODELS_CLAP_TEXT_H

#include "compute/core/ops.h"

typedef struct nq_clap_text_config {
  int vocab_size, hidden, intermediate, n_layers, n_heads, max_pos, type_vocab_size;
  int pad_token_id;   /* 1 (also the position padding_idx) */
  int projection_dim; /* 512 */
  float eps;          /* layer_norm_eps (1e-12) */
  nq_op_t act;        /* hidden_act: NQ_OP_GELU (exact), NQ_OP_GELU_TANH ("gelu_new"), NQ_OP_SILU, ... */
} nq_clap_text_config_t;

typedef struct nq_clap_text_opts {
  const char *backends; /* nq_exec_new spec; NULL = "auto" */
  int wdtype;           /* -1 keep; NQ_DT_F32 / NQ_DT_BF16 / NQ_DT_F16: convert the linear weights */
} nq_clap_text_opts_t;

void nq_clap_text_opts_init(nq_clap_text_opts_t *o /* OUT */);

typedef struct nq_clap_text nq_clap_text_t;

/* path: a dir with config.json + model.safetensors (or pytorch_model.bin), or a pipeline dir holding text_encoder/. */
int nq_clap_text_load(const char *path, const nq_clap_text_opts_t *opts /* may be NULL */,
                      nq_clap_text_t **out /* OUT owned */, nq_err_t *err);
void nq_clap_text_free(nq_clap_text_t *m);
const nq_clap_text_config_t *nq_clap_text_config(const nq_clap_text_t *m);

/* ids, mask [B, L] (L <= max_pos - pad - 1; mask may be NULL = all ones) ->
 * text_embeds [B, projection_dim] and last_hidden [B, L, hidden] (either may be NULL). An id outside the vocabulary
 * is an NQ_EINVAL | NQ_ERR_FATAL error naming its position. */
int nq_clap_text_forward(nq_clap_text_t *m, const int64_t *ids /* borrowed [B*L] */,
                         const int64_t *mask /* borrowed [B*L] or NULL */, int64_t B, int64_t L,
                         float *text_embeds /* OUT [B*P], may be NULL */, float *last_hidden /* OUT [B*L*H], may be NULL */,
                         nq_err_t *err);

#endif

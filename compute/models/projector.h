/* compute/models/projector.h — NExT-GPT's output projector (TextFcLayer, mode 'transformer'; spec §7).
 *
 *   out[1,K,D] = model( Transformer( src = fc(x + e), tgt = query_embs ) )
 *
 *   x: [N, H] final-norm LLM hidden states at the signal positions, e: [N, H] the signal tokens' input embeddings.
 *   fc: Linear(H -> d_model); Transformer: torch nn.Transformer with norm_first=True, batch_first, ReLU FFN,
 *   dropout 0, LayerNorm eps 1e-5, the final encoder and decoder LayerNorms, no masks; query_embs: learned [1,K,d];
 *   model: Linear(d_model -> D).
 *
 * Weights are named as in NExT-GPT's state_dict under a prefix: "gen_text_hidden_fcs.0." (image, 77x768),
 * "gen_text_hidden_fcs_video.0." (77x1024), "gen_text_hidden_fcs_audio.0." (1x512), e.g.
 *   <prefix>fc.weight, <prefix>tfm.encoder.layers.{i}.self_attn.in_proj_weight, <prefix>tfm.encoder.norm.weight,
 *   <prefix>tfm.decoder.layers.{i}.multihead_attn.out_proj.bias, <prefix>query_embs, <prefix>model.weight.
 * Layer counts, d_model, ffn width, K, H and D are read from the tensor shapes; only nhead (4 in NExT-GPT, not
 * visible in the weights) and the LayerNorm eps come from the options.
 *
 * Linear weights stay borrowed from the checkpoint (F32/BF16/F16) unless opts.wdtype asks for a conversion;
 * biases, norms and query_embs are converted to owned F32. The checkpoint must outlive the projector.
 */
#ifndef NQ_COMPUTE_MODELS_PROJECTOR_H
#define NQ_COMPUTE_MODELS_PROJECTOR_H

#include "compute/core/ops.h"
#include "compute/io/pickle.h"

#define NQ_PROJ_MAX_LAYERS 64

typedef struct nq_proj_mha {
  nq_linear_t q, k, v;   /* row slices of in_proj_weight [3d, d] / in_proj_bias [3d] */
  nq_linear_t out;       /* out_proj [d, d] + bias */
} nq_proj_mha_t;

typedef struct nq_proj_layer {
  nq_proj_mha_t self_attn;
  nq_proj_mha_t cross_attn;          /* decoder layers only ("multihead_attn") */
  nq_linear_t linear1, linear2;      /* [F, d], [d, F] */
  nq_tensor_t norm_w[3], norm_b[3];  /* [d] F32 owned; norm3 in decoder layers only */
} nq_proj_layer_t;

typedef struct nq_projector {
  int in_dim;        /* H: LLM hidden size (4096) */
  int d_model;       /* 512 */
  int nhead;         /* 4 */
  int ffn;           /* 2048 */
  int n_enc, n_dec;  /* 4, 4 */
  int n_queries;     /* K: 77 (image, video) or 1 (audio) */
  int out_dim;       /* D: 768, 1024, 512 */
  float eps;         /* 1e-5 */
  nq_linear_t fc, head;                    /* fc [d, H], head = "model" [D, d] */
  nq_proj_layer_t enc[NQ_PROJ_MAX_LAYERS]; /* [n_enc] */
  nq_proj_layer_t dec[NQ_PROJ_MAX_LAYERS]; /* [n_dec] */
  nq_tensor_t enc_norm_w, enc_norm_b, dec_norm_w, dec_norm_b; /* [d] F32 owned */
  nq_tensor_t query;                       /* [K, d] F32 owned */
  nq_exec_t *ex;                           /* owned iff own_ex */
  bool own_ex;
} nq_projector_t;

typedef struct nq_projector_opts {
  int nhead;             /* default 4 (NExT-GPT hard-codes it) */
  float eps;             /* default 1e-5 */
  int wdtype;            /* -1 keep the file's dtype; NQ_DT_F32 / NQ_DT_BF16 / NQ_DT_F16: convert linear weights */
  nq_exec_t *ex;         /* borrowed; NULL: the projector makes its own ("auto") */
} nq_projector_opts_t;

void nq_projector_opts_init(nq_projector_opts_t *o /* OUT */);
/* Loads the projector whose tensors are named `prefix`* in ck (borrowed; must outlive the projector). */
int nq_projector_load(const nq_ckpt_t *ck, const char *prefix, const nq_projector_opts_t *opts,
                      nq_projector_t **out /* OUT owned */, nq_err_t *err);
void nq_projector_free(nq_projector_t *p);
/* hidden, embeds: [n, in_dim] (n >= 1; NExT-GPT gives 4 / 24 / 8 rows); out: [n_queries, out_dim] (= [1,K,D]). */
int nq_projector_forward(nq_projector_t *p, const float *hidden, const float *embeds, int n, float *out /* OUT */,
                         nq_err_t *err);

#endif

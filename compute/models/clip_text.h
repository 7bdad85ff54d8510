/* compute/models/clip_text.h — CLIP text encoder (HF CLIPTextModel semantics), batched.
 *
 *   nq_clip_text_t *te;
 *   nq_clip_text_load("sd15/text_encoder", NULL, &te, &err);   // HF dir, or v1-5-pruned-emaonly.safetensors
 *   nq_clip_text_forward(te, ids, B, 77, last_hidden, pooled, &err);
 *
 * Network: x = token_embedding[ids] + position_embedding[0..T); per layer: x += out_proj(MHA_causal(LN1(x)))
 * (q scaled by head_dim^-0.5, causal mask only, no padding mask); x += fc2(act(fc1(LN2(x)))) with act from
 * config.json hidden_act (quick_gelu for CLIP-L / SD-1.x, gelu = exact erf for OpenCLIP-H / SD-2); final LayerNorm
 * -> last_hidden_state. pooled = the final-normed row at argmax(input_ids) (the first end token; first of ties).
 *
 * Loading: tensors are looked up by their HF names (`text_model.embeddings.token_embedding.weight`, ...) under a
 * layout prefix from the name-map table in clip_text_names.c: "hf" (transformers / diffusers text_encoder/) or
 * "ldm-sd1" (`cond_stage_model.transformer.text_model.*` of the single-file SD-1.x checkpoint). The layout is
 * detected from the names. The `position_ids` buffer some checkpoints carry is ignored. Without config.json the
 * dimensions come from the shapes (heads = hidden/64, quick_gelu, eps 1e-5: CLIP-L). Any file nq_ckpt_open reads
 * works (safetensors, torch .bin/.ckpt). Linear weights stay in the file's dtype unless opts.wdtype converts them.
 */
#ifndef NQ_COMPUTE_MODELS_CLIP_TEXT_H
#define NQ_COMPUTE_MODELS_CLIP_TEXT_H

#include "compute/core/ops.h"
#include "compute/io/pickle.h"

typedef struct nq_clip_text_config {
  int vocab_size, hidden, intermediate, n_layers, n_heads, max_pos;
  float eps;   /* layer_norm_eps */
  nq_op_t act; /* NQ_OP_QUICK_GELU, NQ_OP_GELU or NQ_OP_GELU_TANH */
} nq_clip_text_config_t;

/* One checkpoint layout: where HF's `text_model.*` names live (clip_text_names.c). */
typedef struct nq_clip_text_layout {
  const char *name;   /* "hf", "ldm-sd1" */
  const char *prefix; /* prepended to the HF name */
  const char *doc;
} nq_clip_text_layout_t;
extern const nq_clip_text_layout_t nq_clip_text_layouts[]; /* terminated by a {NULL} row */
/* The file name of HF tensor `hf_name` in `layout` (buf holds the result). */
const char *nq_clip_text_name(const nq_clip_text_layout_t *layout, const char *hf_name, char *buf, size_t n);
/* The first layout whose token embedding is in ck, or NULL. */
const nq_clip_text_layout_t *nq_clip_text_detect(const nq_ckpt_t *ck);

typedef struct nq_clip_text_layer {
  nq_tensor_t ln1_w, ln1_b, ln2_w, ln2_b; /* [D] F32 (borrowed or owned copies) */
  nq_linear_t q, k, v, o;                 /* [D, D] + bias */
  nq_linear_t fc1, fc2;                   /* [I, D] + bias, [D, I] + bias */
} nq_clip_text_layer_t;

typedef struct nq_clip_text {
  nq_clip_text_config_t cfg;
  const nq_clip_text_layout_t *layout; /* borrowed (static table) */
  nq_tensor_t tok_emb;                 /* [V, D] F32/BF16/F16, borrowed from the ckpt */
  nq_tensor_t pos_emb;                 /* [max_pos, D] F32 */
  nq_clip_text_layer_t *layers;        /* owned [n_layers] */
  nq_tensor_t final_w, final_b;        /* [D] F32 */
  nq_exec_t *ex;                       /* owned */
  nq_ckpt_t *ck;                       /* owned */
  char path[4096];
} nq_clip_text_t;

typedef struct nq_clip_text_load_opts {
  const char *backends; /* nq_exec_new spec; NULL = "auto" */
  int wdtype;           /* -1 keep; NQ_DT_F32 / NQ_DT_BF16 / NQ_DT_F16: convert linear weights */
  const char *hidden_act; /* override config.json / the default ("quick_gelu", "gelu"); NULL = keep */
  int n_heads;            /* override config.json / the default (hidden/64); 0 = keep */
} nq_clip_text_load_opts_t;

void nq_clip_text_load_opts_init(nq_clip_text_load_opts_t *o /* OUT */);
/* path: an HF directory (config.json + model.safetensors / pytorch_model.bin) or a weight file (HF names or an LDM
 * single-file checkpoint). A missing or mis-shaped tensor is an error naming it (in the file's own naming). */
int nq_clip_text_load(const char *path, const nq_clip_text_load_opts_t *opts, nq_clip_text_t **out /* OUT owned */,
                      nq_err_t *err);
void nq_clip_text_free(nq_clip_text_t *m);

/* ids [B, T] (T <= max_pos) -> last_hidden [B, T, D] and pooled [B, D] (either may be NULL). An id outside the
 * vocabulary is an NQ_EINVAL | NQ_ERR_FATAL error naming its position. */
int nq_clip_text_forward(nq_clip_text_t *m, const int64_t *ids /* borrowed [B*T] */, int64_t B, int64_t T,
                         float *last_hidden /* OUT, may be NULL */, float *pooled /* OUT, may be NULL */, nq_err_t *err);

#endif

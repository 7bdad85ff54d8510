/* compute/models/llama.h — LLaMA forward with a KV cache, batched over sequences.
 *
 *   nq_llama_model_t *m; nq_llama_load("stories260K.bin", NULL, &m, &err);   // or an HF directory
 *   nq_llama_kv_t *kv = nq_llama_kv_new(m, n_slots, max_ctx, &err);
 *   nq_llama_batch_t b = {...};  // per sequence: its slot and its new tokens
 *   nq_llama_forward(m, kv, &b, &err);
 *
 * One forward runs every sequence of the batch together: the token rows of all sequences go
 * through each linear layer as one matrix (so weights are streamed once per step, whatever the
 * batch), and attention runs per sequence against its own slot of the cache. A sequence may
 * bring one token (decode) or many (prefill) in the same forward, which is what continuous
 * batching needs: a finished sequence's slot is reset and refilled while others keep decoding.
 *
 * Weights stay where the file put them (mmap; F32, BF16 or F16) unless opts->wdtype asks for a
 * conversion at load. Activations and the KV cache are F32.
 */
#ifndef NQ_COMPUTE_MODELS_LLAMA_H
#define NQ_COMPUTE_MODELS_LLAMA_H

#include "compute/core/ops.h"
#include "compute/io/hf_llama.h"
#include "compute/io/llama2c.h"

typedef struct nq_llama_config {
  int dim, hidden_dim, n_layers, n_heads, n_kv_heads, head_dim, vocab_size, max_ctx;
  float norm_eps, rope_theta;
  nq_rope_mode_t rope_mode; /* INTERLEAVED for llama2.c files, HALF for HF */
  int bos_id, eos_id;
} nq_llama_config_t;

typedef struct nq_llama_lora {
  nq_linear_t a, b; /* A [r, in], B [out, r] (F32, owned) */
  float scale;      /* alpha / r */
  bool present;
} nq_llama_lora_t;

typedef struct nq_llama_layer {
  nq_tensor_t attn_norm, ffn_norm;       /* [dim] F32 (borrowed or owned) */
  nq_linear_t wq, wk, wv, wo;            /* [H*hd, dim] [KV*hd, dim] [KV*hd, dim] [dim, H*hd] */
  nq_linear_t w1, w2, w3;                /* gate [F, dim], down [dim, F], up [F, dim] */
  nq_llama_lora_t lora[4];               /* unmerged adapters on q, k, v, o */
} nq_llama_layer_t;

typedef struct nq_llama_model {
  nq_llama_config_t cfg;
  char format[16];                       /* "llama2c" or "hf-llama" */
  nq_tensor_t tok_emb;                   /* [vocab, dim] */
  nq_llama_layer_t *layers;              /* owned [n_layers] */
  nq_tensor_t final_norm;                /* [dim] F32 */
  nq_linear_t lm_head;                   /* [vocab, dim]; borrows tok_emb's data when tied */
  nq_exec_t *ex;                         /* owned */
  nq_llama2c_file_t l2c;                 /* owned mapping (llama2c) */
  nq_hf_llama_t hf;                      /* owned safetensors (hf-llama) */
  char path[4096];
} nq_llama_model_t;

typedef struct nq_llama_load_opts {
  const char *backends;   /* nq_exec_new spec; NULL = "auto" */
  int wdtype;             /* -1: keep the file's dtype; NQ_DT_F32 / NQ_DT_BF16: convert linear weights at load */
  const char *lora_dir;   /* peft adapter dir (adapter_config.json + adapter_model.safetensors), or NULL */
  bool lora_merge;        /* merge W += scale * B A at load instead of applying unmerged */
} nq_llama_load_opts_t;

void nq_llama_load_opts_init(nq_llama_load_opts_t *o);
/* path: a llama2.c .bin or an HF LLaMA directory. */
int nq_llama_load(const char *path, const nq_llama_load_opts_t *opts, nq_llama_model_t **out /* OUT owned */,
                  nq_err_t *err);
void nq_llama_free(nq_llama_model_t *m);
/* A model of the given shape with seeded random weights in memory (benchmarks, tests, init-tiny):
 * linear weights and embeddings uniform in [-scale, scale) with scale = 1/sqrt(fan_in), norms 1. */
int nq_llama_new_random(const nq_llama_config_t *cfg, nq_dtype_t wdtype, uint64_t seed, const char *backends,
                        nq_llama_model_t **out /* OUT owned */, nq_err_t *err);
/* Load a peft LoRA adapter onto a loaded HF model (q,k,v,o targets). */
int nq_llama_lora_load(nq_llama_model_t *m, const char *dir, bool merge, nq_err_t *err);

/* KV cache: n_slots independent sequences of up to max_ctx positions. */
typedef struct nq_llama_kv {
  int n_slots, max_ctx, n_layers, kv_dim;
  int *pos;     /* owned [n_slots]: tokens cached per slot */
  float *k, *v; /* owned [n_slots][n_layers][max_ctx][kv_dim] */
} nq_llama_kv_t;

nq_llama_kv_t *nq_llama_kv_new(const nq_llama_model_t *m, int n_slots, int max_ctx, nq_err_t *err);
void nq_llama_kv_reset(nq_llama_kv_t *kv, int slot);
void nq_llama_kv_free(nq_llama_kv_t *kv);

typedef struct nq_llama_batch {
  int n_seq;
  const int *slot;        /* borrowed [n_seq]: KV slot of each sequence */
  const int *n_tokens;    /* borrowed [n_seq]: new tokens of each sequence (>= 1) */
  const int32_t *tokens;  /* borrowed [sum n_tokens], sequence after sequence; NULL when embeds given */
  const float *embeds;    /* borrowed [sum n_tokens, dim] input embeddings instead of tokens, or NULL */
  bool logits_all;        /* false: one output row per sequence (its last token); true: every token */
  float *logits;          /* OUT [rows, vocab], or NULL */
  float *hidden;          /* OUT [rows, dim] final-norm hidden states, or NULL */
} nq_llama_batch_t;

int nq_llama_forward(nq_llama_model_t *m, nq_llama_kv_t *kv, const nq_llama_batch_t *b, nq_err_t *err);

/* Bytes of weights one decode step reads (all linear weights + the classifier). */
size_t nq_llama_weight_bytes(const nq_llama_model_t *m);

#endif

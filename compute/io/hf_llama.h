/* compute/io/hf_llama.h — HF LLaMA directories: config.json + model.safetensors (or the sharded
 * model.safetensors.index.json) + tokenizer.model. Tensor names are HF's
 * (model.layers.N.self_attn.q_proj.weight ...); q/k rows are in rotate_half order, so models
 * loaded from here use NQ_ROPE_HALF (no permutation needed). */
#ifndef NQ_COMPUTE_IO_HF_LLAMA_H
#define NQ_COMPUTE_IO_HF_LLAMA_H

#include <stdbool.h>

#include "common/err.h"
#include "compute/io/safetensors.h"

typedef struct nq_hf_llama {
  int dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, max_pos;
  float rms_eps, rope_theta;
  bool tie_embeddings;
  int bos_id, eos_id;
  nq_st_file_t *st;  /* owned */
  char dir[4096];
} nq_hf_llama_t;

int nq_hf_llama_open(const char *dir, nq_hf_llama_t *out /* OUT */, nq_err_t *err);
void nq_hf_llama_close(nq_hf_llama_t *h);
/* Tensor `printf(fmt, layer)` with an expected shape (dims of -1 match anything); NULL + err if absent/wrong. */
const nq_st_tensor_t *nq_hf_llama_tensor(const nq_hf_llama_t *h, int layer, const char *fmt, int ndim,
                                         const int64_t *shape, nq_err_t *err);

#endif

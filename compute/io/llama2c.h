/* compute/io/llama2c.h — llama2.c checkpoints (.bin): legacy (7 x int32 header, weights, freq_cis)
 * and export version 1 ("ak42" magic, 256-byte header). The file is mmapped; every weight pointer
 * borrows from the mapping and the whole layout is checked against the file size first. */
#ifndef NQ_COMPUTE_IO_LLAMA2C_H
#define NQ_COMPUTE_IO_LLAMA2C_H

#include <stdbool.h>
#include <stddef.h>

#include "common/err.h"

typedef struct nq_llama2c_file {
  int dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
  bool shared_classifier;
  int version;              /* 0 legacy, 1 */
  /* borrowed from the mapping (float32) */
  const float *tok_emb;     /* [vocab, dim] */
  const float *rms_att;     /* [layers, dim] */
  const float *wq;          /* [layers, n_heads*hd, dim] */
  const float *wk, *wv;     /* [layers, n_kv*hd, dim] */
  const float *wo;          /* [layers, dim, n_heads*hd] */
  const float *rms_ffn;     /* [layers, dim] */
  const float *w1, *w3;     /* [layers, hidden, dim] */
  const float *w2;          /* [layers, dim, hidden] */
  const float *rms_final;   /* [dim] */
  const float *wcls;        /* [vocab, dim] (== tok_emb when shared) */
  void *map;                /* owned mapping */
  size_t map_len;
} nq_llama2c_file_t;

int nq_llama2c_open(const char *path, nq_llama2c_file_t *out /* OUT */, nq_err_t *err);
void nq_llama2c_close(nq_llama2c_file_t *f);

#endif

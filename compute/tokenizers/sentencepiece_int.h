/* compute/tokenizers/sentencepiece_int.h — private state of the SentencePiece/llama2.c vocabulary. */
#ifndef NQ_COMPUTE_TOKENIZERS_SP_INT_H
#define NQ_COMPUTE_TOKENIZERS_SP_INT_H

#include "compute/tokenizers/sentencepiece.h"

struct nq_sp_tokenizer {
  int n, cap;          /* pieces (base + added) */
  int n_base;          /* pieces from the model file */
  int n_added;
  char **piece;        /* owned, NUL-terminated */
  uint32_t *len;       /* owned */
  float *score;        /* owned */
  uint8_t *type;       /* owned, nq_sp_type_t */
  int32_t *hash;       /* owned open-addressing table: piece -> id */
  size_t hash_cap;
  int unk, bos, eos;
  int byte_id[256];    /* id of <0xXX>, -1 if none */
  bool add_dummy_prefix, remove_extra_ws;
  bool raw_space;      /* llama2.c vocab: spaces stored as ' ' (not U+2581) */
};

nq_sp_tokenizer_t *nq_sp__new(void);
int nq_sp__push(nq_sp_tokenizer_t *t, const char *piece, size_t len, float score, int type, nq_err_t *err);
int nq_sp__build_index(nq_sp_tokenizer_t *t, nq_err_t *err);

#endif

/* compute/tokenizers/sentencepiece.h — SentencePiece BPE (LLaMA/Vicuna) and llama2.c tokenizers.
 *
 * One vocabulary type serves both files: `tokenizer.model` (SentencePiece ModelProto, read by a
 * small bounds-checked protobuf reader) and llama2.c `tokenizer.bin` (scores + pieces; ids 0/1/2
 * unk/bos/eos, `<0xXX>` byte pieces). Encoding is SentencePiece BPE: normalise (spaces -> U+2581,
 * dummy-prefix space), split into characters, repeatedly merge the adjacent pair whose
 * concatenation is a normal piece with the highest score (leftmost on ties), then map pieces to
 * ids with byte fallback (`<0xXX>`) for anything not in the vocabulary.
 *
 * Added tokens (HF `added_tokens.json`, NExT-GPT's 38 signal tokens) get ids after the base
 * vocabulary; when encoding they are matched literally in the text first (longest first), the
 * whitespace on both sides of each is stripped (transformers' slow tokenizer), and every text
 * chunk between them is encoded on its own (with its own dummy prefix).
 */
#ifndef NQ_COMPUTE_TOKENIZERS_SENTENCEPIECE_H
#define NQ_COMPUTE_TOKENIZERS_SENTENCEPIECE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

typedef enum nq_sp_type {
  NQ_SP_NORMAL = 1,
  NQ_SP_UNKNOWN = 2,
  NQ_SP_CONTROL = 3,
  NQ_SP_USER_DEFINED = 4,
  NQ_SP_UNUSED = 5,
  NQ_SP_BYTE = 6,
  NQ_SP_ADDED = 100 /* HF added token (not in the SentencePiece model) */
} nq_sp_type_t;

typedef struct nq_sp_tokenizer nq_sp_tokenizer_t;

/* tokenizer.model (SentencePiece protobuf, BPE). */
int nq_sp_load_model(const char *path, nq_sp_tokenizer_t **out /* OUT, owned */, nq_err_t *err);
/* llama2.c tokenizer.bin; vocab_size from the model header (<= 0: every entry up to EOF). */
int nq_sp_load_llama2c(const char *path, int vocab_size, nq_sp_tokenizer_t **out /* OUT, owned */, nq_err_t *err);
/* Auto: a directory (its tokenizer.model, plus added_tokens.json if present), a .model file, or a
 * llama2.c tokenizer.bin (vocab_size as for nq_sp_load_llama2c; ignored otherwise). */
int nq_sp_load(const char *path, int vocab_size, nq_sp_tokenizer_t **out /* OUT, owned */, nq_err_t *err);
void nq_sp_free(nq_sp_tokenizer_t *t);

/* Append HF added tokens in order (ids vocab_size, vocab_size+1, ...). */
int nq_sp_add_tokens(nq_sp_tokenizer_t *t, const char *const *tokens, int n, nq_err_t *err);
/* added_tokens.json ({"<Img>": 32000, ...}); ids must continue the vocabulary contiguously. */
int nq_sp_add_tokens_json(nq_sp_tokenizer_t *t, const char *path, nq_err_t *err);

int nq_sp_vocab_size(const nq_sp_tokenizer_t *t); /* including added tokens */
const char *nq_sp_piece(const nq_sp_tokenizer_t *t, int id); /* borrowed; NULL when out of range */
nq_sp_type_t nq_sp_type(const nq_sp_tokenizer_t *t, int id);
int nq_sp_bos(const nq_sp_tokenizer_t *t);
int nq_sp_eos(const nq_sp_tokenizer_t *t);
int nq_sp_piece_to_id(const nq_sp_tokenizer_t *t, const char *piece); /* -1 if absent */

typedef struct nq_sp_encode_opts {
  bool add_bos;
  bool add_eos;
  int add_dummy_prefix; /* -1: the model's setting (true for LLaMA), 0/1 force */
  bool no_added_tokens; /* ignore added tokens when splitting */
} nq_sp_encode_opts_t;

/* ids: malloc'ed array owned by the caller. Never fails on content (byte fallback). */
int nq_sp_encode(const nq_sp_tokenizer_t *t, const char *text, size_t len, const nq_sp_encode_opts_t *opts,
                 int32_t **ids /* OUT, owned */, int *n_ids /* OUT */, nq_err_t *err);

/* Text of ids (SentencePiece decode): U+2581 -> space, byte pieces -> bytes, control/unknown pieces
 * dropped, and the first piece's leading space removed when strip_leading_space. malloc'ed. */
char *nq_sp_decode(const nq_sp_tokenizer_t *t, const int32_t *ids, int n, bool strip_leading_space);
/* llama2.c run.c piece rule: piece text of `id` after `prev`; a leading space is dropped after BOS;
 * `<0xXX>` gives that byte. Writes at most cap-1 bytes + NUL; returns the length. */
size_t nq_sp_decode_piece(const nq_sp_tokenizer_t *t, int prev, int id, char *buf, size_t cap);

#endif

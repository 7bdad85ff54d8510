/* compute/tokenizers/roberta_bpe.h — the RoBERTa / GPT-2 byte-level BPE tokenizer (HF RobertaTokenizer and
 * RobertaTokenizerFast semantics; AudioLDM's CLAP text encoder uses it).
 *
 * Files: `vocab.json` + `merges.txt` ("#version" header line, then one merge per line, all used); optional
 * `special_tokens_map.json` (bos/eos/unk/pad/mask strings, plain or {"content", "lstrip", "rstrip"}) and
 * `tokenizer_config.json` (add_prefix_space, model_max_length). Defaults: <s> </s> <unk> <pad> <mask>.
 *
 * Encoding (tokenizer(text, padding="max_length", max_length=L, truncation=True)):
 *   1. no normalisation, no lowercasing; a space is prepended only with add_prefix_space;
 *   2. the special-token strings found in the text become their ids (leftmost, longest first); a token
 *      with lstrip (RoBERTa's <mask>) swallows the white space on its left, one with rstrip on its right;
 *   3. each remaining segment is split with GPT-2's regex
 *      `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+` (case-sensitive; PCRE2
 *      UTF + UCP, \s = Unicode White_Space as in the `regex` module and Oniguruma);
 *   4. byte-level BPE (no end-of-word suffix), unknown symbols -> <unk>;
 *   5. content cut to L - 2 ids, then <s> + content + </s>, padded with the pad id to L; the attention mask
 *      is 1 on the L_real = content + 2 first positions, 0 on the padding.
 *
 * A loaded tokenizer is immutable apart from an internal mutex-guarded cache: encode/decode may run from
 * several threads at once.
 */
#ifndef NQ_TOKENIZERS_ROBERTA_BPE_H
#define NQ_TOKENIZERS_ROBERTA_BPE_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "compute/tokenizers/bpe.h"

#define NQ_ROBERTA_TOK_MAX_LEN 512 /* AudioLDM pads/truncates to model_max_length = 512 */

typedef struct nq_roberta_tok nq_roberta_tok_t;

/* Open a RoBERTa tokenizer from a directory holding vocab.json + merges.txt (or a tokenizer/ subdirectory
 * with them: a diffusers model directory), or from the path of either file (the other one, and the
 * optional JSON configs, are taken from the same directory). Errors name the file and the offending
 * line/token/key. On success *out is owned by the caller. */
int nq_roberta_tok_open(const char *path, nq_roberta_tok_t **out /* OUT owned */, nq_err_t *err);
void nq_roberta_tok_free(nq_roberta_tok_t *tok);

/* Encode `len` bytes of UTF-8 text into exactly max_len ids (max_len >= 2) plus the attention mask.
 * pad_id < 0 selects <pad> (id 1). mask may be NULL. *n_real (may be NULL) receives the number of
 * positions with mask 1. Invalid UTF-8 is an NQ_EFORMAT error. */
int nq_roberta_tok_encode(const nq_roberta_tok_t *tok, const char *text /* borrowed */, size_t len, int max_len,
                          int pad_id, int32_t *ids /* OUT [max_len] */, int32_t *mask /* OUT [max_len], may be NULL */,
                          int *n_real /* OUT, may be NULL */, nq_err_t *err);

/* The content ids only (no <s>/</s>; no truncation when limit is 0, otherwise tokenizing stops once at
 * least `limit` ids are out, leaving the first `limit` unchanged). Appended to *out. */
int nq_roberta_tok_encode_raw(const nq_roberta_tok_t *tok, const char *text /* borrowed */, size_t len, size_t limit,
                              nq_bpe_ids_t *out /* OUT appended */, nq_err_t *err);

/* Decode ids to text (byte-level characters back to bytes, invalid UTF-8 -> U+FFFD). skip_special drops
 * <s>, </s>, <pad>, <unk> and <mask>. *out is NUL-terminated and owned by the caller. */
int nq_roberta_tok_decode(const nq_roberta_tok_t *tok, const int32_t *ids /* borrowed */, size_t n, int skip_special,
                          char **out /* OUT owned */, nq_err_t *err);

int32_t nq_roberta_tok_bos(const nq_roberta_tok_t *tok); /* <s> (0) */
int32_t nq_roberta_tok_eos(const nq_roberta_tok_t *tok); /* </s> (2) */
int32_t nq_roberta_tok_pad(const nq_roberta_tok_t *tok); /* <pad> (1) */
int32_t nq_roberta_tok_unk(const nq_roberta_tok_t *tok); /* <unk> (3) */
int32_t nq_roberta_tok_vocab_size(const nq_roberta_tok_t *tok);
/* tokenizer_config.json model_max_length (0 when absent or not a sane integer). */
int nq_roberta_tok_model_max_length(const nq_roberta_tok_t *tok);

#endif

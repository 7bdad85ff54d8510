/* compute/tokenizers/clip_bpe.h — the CLIP BPE tokenizer (OpenAI simple_tokenizer.py semantics, as used by
 * Stable Diffusion 1.5/2.x, ZeroScope and every CLIPTokenizer).
 *
 * Files: either OpenAI's `bpe_simple_vocab_16e6.txt.gz` (merges only: the vocabulary is built from them as
 * simple_tokenizer.py does, 49408 ids) or HF `vocab.json` + `merges.txt` (same merges, "#version" header).
 * Only the first 48894 merges are used (lines[1 : 49152-256-2+1]), in both cases.
 *
 * Encoding (simple_tokenizer.encode, ftfy treated as the identity):
 *   1. html.unescape twice (numeric references with Python's replacement rules; named references from
 *      the HTML 4 set — Latin-1, quotes, dashes, arrows... — unknown names stay as they are);
 *   2. strip (Python str.isspace), collapse each run of Unicode White_Space to one space, strip;
 *   3. lowercase (Python str.lower: full Unicode case mapping, via ICU);
 *   4. pre-tokenise with `<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|
 *      [^\s\p{L}\p{N}]+` (case-insensitive; PCRE2 with UTF + UCP, \s = White_Space as in the `regex` module);
 *   5. byte-level BPE with "</w>" on each piece's last symbol; the literal special tokens map to their ids.
 * Then ids = [<|startoftext|>] + content + [<|endoftext|>], cut to max_len - 1 and closed with the end token
 * when longer (77: the first 75 content ids survive), padded with pad_id: SD-1.5 pads with the end token
 * 49407, SD-2 and ZeroScope (open_clip) with 0.
 *
 * A loaded tokenizer is immutable apart from an internal mutex-guarded cache: encode/decode may run from
 * several threads at once.
 */
#ifndef NQ_TOKENIZERS_CLIP_BPE_H
#define NQ_TOKENIZERS_CLIP_BPE_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "compute/tokenizers/bpe.h"

#define NQ_CLIP_TOK_MAX_LEN 77       /* the CLIP context length */
#define NQ_CLIP_TOK_N_MERGES 48894   /* 49152 - 256 - 2 */
#define NQ_CLIP_TOK_PAD_SD15 49407   /* SD-1.5: pad with <|endoftext|> */
#define NQ_CLIP_TOK_PAD_SD2 0        /* SD-2 / ZeroScope: pad with id 0 ("!") */

typedef struct nq_clip_tok nq_clip_tok_t;

/* Open a CLIP tokenizer. path is one of:
 *   - a `.gz` file (bpe_simple_vocab_16e6.txt.gz);
 *   - a `vocab.json` or `merges.txt` file (the other one is taken from the same directory);
 *   - a directory holding vocab.json + merges.txt, or bpe_simple_vocab_16e6.txt.gz, or a tokenizer/
 *     subdirectory with either (a diffusers/HF model directory). vocab.json + merges.txt win over the .gz.
 * Errors name the file and the offending line/token. On success *out is owned by the caller. */
int nq_clip_tok_open(const char *path, nq_clip_tok_t **out /* OUT owned */, nq_err_t *err);
void nq_clip_tok_free(nq_clip_tok_t *tok);

/* Encode `len` bytes of UTF-8 text into exactly max_len ids (max_len >= 2): start token, content, end token,
 * truncation and padding as above. pad_id < 0 selects the end token. *n_real (may be NULL) receives the
 * number of ids before the padding (start and end included). Invalid UTF-8 is an NQ_EFORMAT error. */
int nq_clip_tok_encode(const nq_clip_tok_t *tok, const char *text /* borrowed */, size_t len, int max_len, int pad_id,
                       int32_t *ids /* OUT [max_len] */, int *n_real /* OUT, may be NULL */, nq_err_t *err);

/* The content ids only (no start/end tokens, no truncation when limit is 0; otherwise tokenizing stops
 * once at least `limit` ids are out, which leaves the first `limit` ids unchanged). Appended to *out. */
int nq_clip_tok_encode_raw(const nq_clip_tok_t *tok, const char *text /* borrowed */, size_t len, size_t limit,
                           nq_bpe_ids_t *out /* OUT appended */, nq_err_t *err);

/* Decode ids to text as simple_tokenizer.decode: "</w>" becomes a space (so the text usually ends with one),
 * bytes that do not form UTF-8 become U+FFFD. skip_special drops the start and end tokens (it does not
 * drop pad id 0, which is the ordinary token "!"). *out is NUL-terminated and owned by the caller. */
int nq_clip_tok_decode(const nq_clip_tok_t *tok, const int32_t *ids /* borrowed */, size_t n, int skip_special,
                       char **out /* OUT owned */, nq_err_t *err);

int32_t nq_clip_tok_bos(const nq_clip_tok_t *tok);        /* <|startoftext|> (49406) */
int32_t nq_clip_tok_eos(const nq_clip_tok_t *tok);        /* <|endoftext|> (49407) */
int32_t nq_clip_tok_vocab_size(const nq_clip_tok_t *tok); /* 49408 */

/* Steps 1-3 alone (html unescape x2, whitespace clean, lowercase). *out NUL-terminated, owned by the caller. */
int nq_clip_tok_clean(const char *text /* borrowed */, size_t len, char **out /* OUT owned */, size_t *out_len /* OUT */,
                      nq_err_t *err);
/* Python html.unescape of UTF-8 text (one pass; see step 1 for the named-reference subset). */
int nq_clip_tok_html_unescape(const char *text /* borrowed */, size_t len, char **out /* OUT owned */,
                              size_t *out_len /* OUT */, nq_err_t *err);

#endif

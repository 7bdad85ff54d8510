/* compute/tokenizers/bpe.h — the byte-level BPE engine shared by the CLIP (clip_bpe.h) and RoBERTa
 * (roberta_bpe.h) tokenizers, plus the Unicode/regex/file helpers both front-ends need.
 *
 * Model. A tokenizer is a vocabulary (token string -> id) and a ranked list of merges (pair of symbol
 * strings -> rank = position in merges.txt). A pre-tokenised piece (raw UTF-8 bytes) is mapped byte by
 * byte through GPT-2's `bytes_to_unicode` table (printable Latin-1 bytes map to themselves, the other 68
 * bytes to U+0100...), giving one initial symbol per byte; with an end-of-word suffix (CLIP's "</w>") the
 * last symbol carries it. Then, exactly as the Python references do it, the adjacent pair with the lowest
 * rank is found and *all* its non-overlapping occurrences are merged left to right; repeat until no
 * adjacent pair has a rank. Each final symbol is looked up in the vocabulary (unknown -> unk id).
 *
 * Internally symbols are interned strings, so a merge is a (sym, sym) -> (rank, merged sym) lookup and the
 * merge loop runs on a linked list with a heap of candidate pairs: O(n log n) per piece, even for a
 * pathological 1 MB piece without spaces. Results are memoised per piece (bounded cache, mutex-protected).
 *
 * Thread safety: after loading, nq_bpe_encode_piece and every read-only call may run concurrently.
 *
 * Unicode: character classes, case mapping and whitespace come from PCRE2 (UTF + UCP) and ICU — no
 * hand-made Unicode tables.
 */
#ifndef NQ_TOKENIZERS_BPE_H
#define NQ_TOKENIZERS_BPE_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "common/err.h"

/* Limits that keep hostile files from allocating absurd sizes. */
#define NQ_BPE_MAX_FILE_BYTES ((size_t)256 << 20) /* vocab.json, merges.txt, decompressed .gz */
#define NQ_BPE_MAX_ID ((int32_t)1 << 24)          /* vocabulary ids must lie in [0, NQ_BPE_MAX_ID) */
#define NQ_BPE_MAX_TOKEN_BYTES 1024               /* one vocabulary token / merge part */

/* ---------------------------------------------------------------------------------------------- */
/* Growable id vector. */
typedef struct nq_bpe_ids {
  int32_t *v;  /* owned */
  size_t n, cap;
} nq_bpe_ids_t;

int nq_bpe_ids_push(nq_bpe_ids_t *ids, int32_t id, nq_err_t *err);
void nq_bpe_ids_free(nq_bpe_ids_t *ids);

/* ---------------------------------------------------------------------------------------------- */
/* The engine. */
typedef struct nq_bpe nq_bpe_t;

/* Empty engine. eow_suffix: appended to the last symbol of every piece ("</w>" for CLIP), or NULL. */
int nq_bpe_new(const char *eow_suffix /* borrowed, copied */, nq_bpe_t **out /* OUT owned */, nq_err_t *err);
void nq_bpe_free(nq_bpe_t *b);

/* Add one vocabulary entry. A token or an id given twice is an error; `where` names the source in messages. */
int nq_bpe_vocab_add(nq_bpe_t *b, const char *tok /* borrowed */, size_t len, int32_t id, const char *where,
                     nq_err_t *err);
/* Load a HF vocab.json (an object token -> integer id). Errors name the path and the offending token. */
int nq_bpe_vocab_load_json(nq_bpe_t *b, const char *path, nq_err_t *err);
/* Add the merges in `text` (one "left right" pair per line). The first line is skipped when
 * skip_first_line (the "#version" header of merges.txt, the file name line of CLIP's .gz); at most
 * max_merges lines after it are used (0 = all). Rank = line index after the header; blank lines keep their
 * index but add nothing; a pair given twice keeps the later rank (as Python's dict(zip(...)) does). A line
 * that is not exactly two space-separated symbols is an error naming `what` and the line number.
 * *n_used (may be NULL) receives the number of merge lines consumed. */
int nq_bpe_merges_parse(nq_bpe_t *b, const char *text /* borrowed */, size_t len, int skip_first_line,
                        size_t max_merges, const char *what, size_t *n_used /* OUT */, nq_err_t *err);
/* Call once after the vocabulary and merges are in: sets the id used for symbols missing from the
 * vocabulary (-1: such a symbol is an error at encode time). */
int nq_bpe_finalize(nq_bpe_t *b, int32_t unk_id, nq_err_t *err);

/* Id of a vocabulary token, or -1. */
int32_t nq_bpe_token_id(const nq_bpe_t *b, const char *tok /* borrowed */, size_t len);
/* Token string of an id (not NUL-terminated: *len receives its length), or NULL. Borrowed. */
const char *nq_bpe_id_token(const nq_bpe_t *b, int32_t id, size_t *len /* OUT */);
/* 1 + the largest id in the vocabulary. */
int32_t nq_bpe_vocab_size(const nq_bpe_t *b);
size_t nq_bpe_merge_count(const nq_bpe_t *b);

/* BPE-encode one pre-tokenised piece (raw UTF-8 bytes, n >= 1) and append its ids to *out. */
int nq_bpe_encode_piece(nq_bpe_t *b, const char *piece /* borrowed */, size_t n, nq_bpe_ids_t *out, nq_err_t *err);

/* Decode ids to text: concatenates the token strings, maps the byte-level characters back to bytes (a
 * character outside the byte table is kept as its UTF-8), then repairs invalid UTF-8 with U+FFFD (Python's
 * errors="replace"). When eow_as_space, every eow suffix becomes one space. Ids for which skip(id) is
 * true are left out. An id not in the vocabulary is an error naming it. *out is NUL-terminated. */
typedef int (*nq_bpe_skip_fn)(const void *ud, int32_t id);
int nq_bpe_decode(const nq_bpe_t *b, const int32_t *ids /* borrowed */, size_t n, int eow_as_space,
                  nq_bpe_skip_fn skip, const void *skip_ud, char **out /* OUT owned */, size_t *out_len /* OUT, may be NULL */,
                  nq_err_t *err);

/* GPT-2 bytes_to_unicode: the code point standing for each byte. */
void nq_bpe_byte_to_unicode(uint32_t table[256] /* OUT */);

/* ---------------------------------------------------------------------------------------------- */
/* Pre-tokenising regex (PCRE2, UTF + UCP). */
typedef struct nq_bpe_re nq_bpe_re_t;

#define NQ_BPE_RE_CASELESS 0x1u

int nq_bpe_re_new(const char *pattern /* borrowed */, unsigned flags, nq_bpe_re_t **out /* OUT owned */, nq_err_t *err);
void nq_bpe_re_free(nq_bpe_re_t *re);
/* Called for each match in order. Return 0 to go on, 1 to stop early, or a negative NQ_E* to fail. */
typedef int (*nq_bpe_piece_fn)(void *ud, const char *piece /* borrowed */, size_t n, nq_err_t *err);
/* re.findall: every non-overlapping match, left to right. `text` must be valid UTF-8 (see nq_bpe_utf8_check). */
int nq_bpe_re_foreach(const nq_bpe_re_t *re, const char *text /* borrowed */, size_t len, nq_bpe_piece_fn fn, void *ud,
                      nq_err_t *err);

/* ---------------------------------------------------------------------------------------------- */
/* Text helpers. */

/* 0 when text is well-formed UTF-8; else NQ_EFORMAT naming `what` and the byte offset. */
int nq_bpe_utf8_check(const char *text, size_t len, const char *what, nq_err_t *err);
/* Python's str.isspace for one code point: general category Zs, or bidi class WS, B or S (ICU). */
int nq_bpe_py_isspace(uint32_t cp);
/* The Unicode White_Space property (what the `regex` module's \s matches) (ICU). */
int nq_bpe_white_space(uint32_t cp);
/* Python str.lower() of UTF-8 text (ICU full case mapping, root locale, final sigma). *out NUL-terminated. */
int nq_bpe_lower_utf8(const char *text, size_t len, char **out /* OUT owned */, size_t *out_len /* OUT */, nq_err_t *err);

/* Whole file into memory (+ a NUL), at most NQ_BPE_MAX_FILE_BYTES. A path ending in ".gz" is decompressed
 * (zlib). Errors name the path. */
int nq_bpe_read_file(const char *path, char **out /* OUT owned */, size_t *len /* OUT */, nq_err_t *err);

/* ---------------------------------------------------------------------------------------------- */
/* CLI entry (implemented in bpe_cli.c): `nextq tokenize --tokenizer PATH --max-length N --pad-id ID -- TEXT`.
 * Detects CLIP (bpe_simple_vocab_16e6.txt.gz, or a vocab.json holding "<|startoftext|>") or RoBERTa (a
 * vocab.json holding "<s>"); PATH is a file or a directory (also a diffusers/HF model directory with a
 * tokenizer/ subdirectory). Prints the ids space-separated on one line, with the model's start/end tokens,
 * truncated and padded to max_len (max_len <= 0: no truncation or padding). pad_id < 0 picks the model's
 * default (CLIP: the end token 49407, as SD-1.5; RoBERTa: <pad>). */
int nq_tok_cli_encode_bpe(const char *tokenizer_path, const char *text, int max_len, int pad_id, FILE *out,
                          nq_err_t *err);

#endif

/* compute/tokenizers/bpe_cli.c — `nextq tokenize` for the byte-level BPE tokenizers: detects CLIP or
 * RoBERTa files and prints the ids. See nq_tok_cli_encode_bpe in bpe.h. */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "compute/tokenizers/bpe.h"
#include "compute/tokenizers/clip_bpe.h"
#include "compute/tokenizers/roberta_bpe.h"

enum { KIND_CLIP = 1, KIND_ROBERTA = 2 };

static int is_file(const char *p) {
  struct stat st;
  return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}
static int is_dir(const char *p) {
  struct stat st;
  return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}
static int ends_with(const char *s, const char *suf) {
  size_t n = strlen(s), m = strlen(suf);
  return n >= m && strcmp(s + n - m, suf) == 0;
}

/* Which tokenizer the files at `path` belong to: a .gz is CLIP's; otherwise the vocab.json decides
 * ("<|startoftext|>" -> CLIP, "<s>" -> RoBERTa). */
static int detect(const char *path, int *kind, nq_err_t *err) {
  size_t pl = strlen(path);
  char *vocab = malloc(pl + 64);
  int rc = 0;
  if (!vocab) return nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "tokenize: out of memory");
  vocab[0] = 0;
  *kind = 0;
  if (is_file(path)) {
    if (ends_with(path, ".gz")) *kind = KIND_CLIP;
    else if (ends_with(path, "vocab.json") || ends_with(path, "merges.txt")) {
      const char *slash = strrchr(path, '/');
      sprintf(vocab, "%.*svocab.json", slash ? (int)(slash - path + 1) : 0, path);
    }
  } else if (is_dir(path)) {
    static const char *const sub[] = {"", "/tokenizer"};
    for (int i = 0; i < 2 && !*kind && !vocab[0]; i++) {
      sprintf(vocab, "%s%s/vocab.json", path, sub[i]);
      if (is_file(vocab)) break;
      vocab[0] = 0;
      sprintf(vocab, "%s%s/bpe_simple_vocab_16e6.txt.gz", path, sub[i]);
      if (is_file(vocab)) *kind = KIND_CLIP;
      vocab[0] = 0;
    }
  } else {
    rc = nq_err_set(err, NQ_ENOENT, NQ_ERR_FATAL, "%s: no such file or directory", path);
  }
  if (!rc && !*kind && vocab[0]) {
    char *text = NULL;
    size_t len = 0;
    if (!(rc = nq_bpe_read_file(vocab, &text, &len, err))) {
      if (memmem(text, len, "\"<|startoftext|>\"", 17)) *kind = KIND_CLIP;
      else if (memmem(text, len, "\"<s>\"", 5)) *kind = KIND_ROBERTA;
      free(text);
    }
  }
  if (!rc && !*kind)
    rc = nq_err_set(err, NQ_EUNSUPPORTED, NQ_ERR_FATAL,
                    "%s: not a CLIP (bpe_simple_vocab_16e6.txt.gz, or vocab.json with <|startoftext|>) or RoBERTa "
                    "(vocab.json with <s>) BPE tokenizer",
                    path);
  free(vocab);
  return rc;
}

int nq_tok_cli_encode_bpe(const char *tokenizer_path, const char *text, int max_len, int pad_id, FILE *out,
                          nq_err_t *err) {
  int kind = 0, rc = detect(tokenizer_path, &kind, err);
  if (rc) return rc;
  if (max_len == 1) return nq_err_set(err, NQ_EINVAL, 0, "tokenize: --max-length 1 leaves no room for the start and end tokens");
  size_t len = strlen(text);
  nq_clip_tok_t *clip = NULL;
  nq_roberta_tok_t *rob = NULL;
  int32_t *ids = NULL;
  int n = 0;
  if (kind == KIND_CLIP) rc = nq_clip_tok_open(tokenizer_path, &clip, err);
  else rc = nq_roberta_tok_open(tokenizer_path, &rob, err);
  if (rc) goto done;
  if (max_len > 1) {
    ids = malloc((size_t)max_len * sizeof *ids);
    if (!ids) {
      rc = nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "tokenize: out of memory");
      goto done;
    }
    rc = clip ? nq_clip_tok_encode(clip, text, len, max_len, pad_id, ids, NULL, err)
              : nq_roberta_tok_encode(rob, text, len, max_len, pad_id, ids, NULL, NULL, err);
    n = max_len;
  } else {
    /* No length: start + every content id + end, nothing cut, no padding. */
    nq_bpe_ids_t v = {0};
    rc = nq_bpe_ids_push(&v, clip ? nq_clip_tok_bos(clip) : nq_roberta_tok_bos(rob), err);
    if (!rc) rc = clip ? nq_clip_tok_encode_raw(clip, text, len, 0, &v, err) : nq_roberta_tok_encode_raw(rob, text, len, 0, &v, err);
    if (!rc) rc = nq_bpe_ids_push(&v, clip ? nq_clip_tok_eos(clip) : nq_roberta_tok_eos(rob), err);
    ids = v.v;
    n = (int)v.n;
  }
  if (rc) goto done;
  for (int i = 0; i < n; i++) fprintf(out, i ? " %d" : "%d", ids[i]);
  fputc('\n', out);
  if (ferror(out)) rc = nq_err_set(err, NQ_EIO, 0, "tokenize: write error");
done:
  free(ids);
  nq_clip_tok_free(clip);
  nq_roberta_tok_free(rob);
  return rc;
}

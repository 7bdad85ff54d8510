/* llama2.c tokenizer.bin: int32 max_token_length, then per token: float score, int32 len, bytes. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compute/tokenizers/sentencepiece_int.h"

int nq_sp_load_llama2c(const char *path, int vocab_size, nq_sp_tokenizer_t **out, nq_err_t *err) {
  *out = NULL;
  if (vocab_size > 1000000)
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "%s: vocab size %d too large", path, vocab_size);
  bool until_eof = vocab_size <= 0; /* no model at hand: read every entry */
  if (until_eof) vocab_size = 1000000;
  FILE *f = fopen(path, "rb");
  if (!f) return nq_err_set(err, NQ_ENOENT, NQ_ERR_FATAL, "%s: cannot open", path);
  nq_sp_tokenizer_t *t = nq_sp__new();
  int rc = t ? 0 : nq_err_set(err, NQ_ENOMEM, 0, "out of memory");
  int32_t maxlen = 0;
  if (rc == 0 && (fread(&maxlen, 4, 1, f) != 1 || maxlen <= 0 || maxlen > 4096))
    rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: bad max_token_length", path);
  char *buf = rc == 0 ? malloc((size_t)maxlen + 1) : NULL;
  if (rc == 0 && !buf) rc = nq_err_set(err, NQ_ENOMEM, 0, "out of memory");
  t->raw_space = true;
  for (int i = 0; rc == 0 && i < vocab_size; i++) {
    float score;
    int32_t len;
    long off = ftell(f);
    if (until_eof && i > 0) {
      int c = fgetc(f);
      if (c == EOF) break;
      ungetc(c, f);
    }
    if (fread(&score, 4, 1, f) != 1 || fread(&len, 4, 1, f) != 1 || len < 0 || len > maxlen ||
        fread(buf, 1, (size_t)len, f) != (size_t)len) {
      rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: token %d truncated or too long at byte %ld", path, i, off);
      break;
    }
    int type = NQ_SP_NORMAL;
    if (i == 0) type = NQ_SP_UNKNOWN;
    else if (i == 1 || i == 2) type = NQ_SP_CONTROL;
    else if (len == 6 && !memcmp(buf, "<0x", 3) && buf[5] == '>') type = NQ_SP_BYTE;
    int id = nq_sp__push(t, buf, (size_t)len, score, type, err);
    if (id < 0) rc = id;
  }
  free(buf);
  fclose(f);
  if (rc == 0 && (rc = nq_sp__build_index(t, err)) < 0) nq_err_prefix(err, "%s", path);
  if (rc < 0) {
    nq_sp_free(t);
    return rc;
  }
  t->n_base = t->n;
  *out = t;
  return 0;
}

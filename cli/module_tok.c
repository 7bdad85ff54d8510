/* cli/module_tok.c — `nextq module run` kinds for the byte-level BPE tokenizers (../shared/golden/README.md):
 *   clip-tokenize     --model DIR (vocab.json + merges.txt, or bpe_simple_vocab_16e6.txt.gz)
 *                     --in text_NNN U8 ...  -> input_ids I64[N, max_length]
 *                     params: max_length (77), pad_id (49407 = the end token; 0 for SD-2/ZeroScope)
 *   roberta-tokenize  --model DIR (vocab.json + merges.txt [+ tokenizer_config.json, special_tokens_map.json])
 *                     --in text_NNN U8 ...  -> input_ids, attention_mask I64[N, max_length]
 *                     params: max_length (tokenizer_config model_max_length, else 512), pad_id (<pad> = 1),
 *                     padding ("max_length", or "longest": pad to the longest row instead)
 * Truncation is always on (start + content cut to max_length - 2 + end). Registered in cli/module_kinds.c. */
#include <stdlib.h>
#include <string.h>

#include "cli/module_kinds.h"
#include "compute/tokenizers/clip_bpe.h"
#include "compute/tokenizers/roberta_bpe.h"


#define MAX_TEXTS 100000

/* The text_000, text_001, ... inputs, in order; every text_* tensor must belong to that run. */
static int collect_texts(const nq_module_ctx_t *ctx, const nq_st_tensor_t ***out, int *n_out, nq_err_t *err) {
  const char *kind = ctx->kind ? ctx->kind : "tokenize";
  *out = NULL;
  *n_out = 0;
  if (!ctx->in) return nq_err_set(err, NQ_EINVAL, 0, "%s: needs --in with text_NNN U8 tensors", kind);
  size_t total = 0;
  for (size_t i = 0; i < nq_st_count(ctx->in); i++)
    if (strncmp(nq_st_get(ctx->in, i)->name, "text_", 5) == 0) total++;
  if (total == 0) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "%s: the input has no text_NNN tensors", kind);
  if (total > MAX_TEXTS)
    return nq_err_set(err, NQ_ELIMIT, NQ_ERR_FATAL, "%s: %zu texts (at most %d)", kind, total, MAX_TEXTS);
  const nq_st_tensor_t **v = calloc(total, sizeof *v);
  if (!v) return nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "%s: out of memory", kind);
  for (size_t i = 0; i < total; i++) {
    char name[32];
    snprintf(name, sizeof name, "text_%03zu", i);
    const nq_st_tensor_t *t = nq_st_find(ctx->in, name);
    if (!t) {
      free(v);
      return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "%s: %zu text_* tensors but no %s (names must run text_000, text_001, ...)",
                        kind, total, name);
    }
    if (t->dtype != NQ_DT_U8 || t->ndim != 1) {
      free(v);
      return nq_err_set(err, NQ_ESHAPE, NQ_ERR_FATAL, "%s: %s must be a 1-D U8 tensor of UTF-8 bytes (is %s, %d dims)", kind,
                        name, nq_dtype_name(t->dtype), t->ndim);
    }
    v[i] = t;
  }
  *out = v;
  *n_out = (int)total;
  return 0;
}

static int get_int(const nq_module_ctx_t *ctx, const char *key, long long def, long long lo, long long hi, int *out,
                   nq_err_t *err) {
  long long v;
  int rc = nq_module_param_int(ctx, key, def, &v, err);
  if (rc) return rc;
  if (v < lo || v > hi)
    return nq_err_set(err, NQ_EINVAL, 0, "%s: --param %s=%lld outside [%lld, %lld]", ctx->kind ? ctx->kind : "tokenize",
                      key, v, lo, hi);
  *out = (int)v;
  return 0;
}

static int64_t *to_i64(const int32_t *v, size_t n) {
  int64_t *o = malloc((n ? n : 1) * sizeof *o);
  if (o)
    for (size_t i = 0; i < n; i++) o[i] = v[i];
  return o;
}

int nq_module_clip_tokenize(const nq_module_ctx_t *ctx, nq_err_t *err) {
  if (!ctx->model_dir) return nq_err_set(err, NQ_EINVAL, 0, "clip-tokenize: needs --model (tokenizer files)");
  int max_len, pad;
  int rc = get_int(ctx, "max_length", NQ_CLIP_TOK_MAX_LEN, 2, 1 << 16, &max_len, err);
  if (!rc) rc = get_int(ctx, "pad_id", -1, -1, NQ_BPE_MAX_ID, &pad, err);
  if (rc) return rc;
  const nq_st_tensor_t **texts = NULL;
  int n = 0;
  if ((rc = collect_texts(ctx, &texts, &n, err))) return rc;
  nq_clip_tok_t *tok = NULL;
  int32_t *ids = NULL;
  int64_t *ids64 = NULL;
  if ((rc = nq_clip_tok_open(ctx->model_dir, &tok, err))) goto done;
  ids = malloc((size_t)n * (size_t)max_len * sizeof *ids);
  if (!ids) {
    rc = nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "clip-tokenize: out of memory");
    goto done;
  }
  for (int i = 0; i < n && !rc; i++) {
    rc = nq_clip_tok_encode(tok, texts[i]->nbytes ? texts[i]->data : "", texts[i]->nbytes, max_len, pad,
                            ids + (size_t)i * max_len, NULL, err);
    if (rc) nq_err_prefix(err, "clip-tokenize: %s", texts[i]->name);
  }
  if (rc) goto done;
  ids64 = to_i64(ids, (size_t)n * max_len);
  if (!ids64) {
    rc = nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "clip-tokenize: out of memory");
    goto done;
  }
  int64_t shape[2] = {n, max_len};
  rc = nq_st_writer_add(ctx->out, "input_ids", NQ_DT_I64, 2, shape, ids64, err);
done:
  free(ids64);
  free(ids);
  free(texts);
  nq_clip_tok_free(tok);
  return rc;
}

int nq_module_roberta_tokenize(const nq_module_ctx_t *ctx, nq_err_t *err) {
  if (!ctx->model_dir) return nq_err_set(err, NQ_EINVAL, 0, "roberta-tokenize: needs --model (tokenizer files)");
  const nq_st_tensor_t **texts = NULL;
  int n = 0, max_len, pad, rc;
  nq_roberta_tok_t *tok = NULL;
  int32_t *ids = NULL, *mask = NULL, *nreal = NULL;
  int64_t *ids64 = NULL, *mask64 = NULL;
  if ((rc = nq_roberta_tok_open(ctx->model_dir, &tok, err))) return rc;
  int def_len = nq_roberta_tok_model_max_length(tok) ? nq_roberta_tok_model_max_length(tok) : NQ_ROBERTA_TOK_MAX_LEN;
  rc = get_int(ctx, "max_length", def_len, 2, 1 << 16, &max_len, err);
  if (!rc) rc = get_int(ctx, "pad_id", -1, -1, NQ_BPE_MAX_ID, &pad, err);
  const char *padding = nq_module_param(ctx, "padding");
  int longest = padding && strcmp(padding, "longest") == 0;
  if (!rc && padding && !longest && strcmp(padding, "max_length") != 0)
    rc = nq_err_set(err, NQ_EUNSUPPORTED, 0, "roberta-tokenize: --param padding=%s (max_length or longest)", padding);
  if (!rc) rc = collect_texts(ctx, &texts, &n, err);
  if (rc) goto done;
  ids = malloc((size_t)n * (size_t)max_len * sizeof *ids);
  mask = malloc((size_t)n * (size_t)max_len * sizeof *mask);
  nreal = malloc((size_t)n * sizeof *nreal);
  if (!ids || !mask || !nreal) {
    rc = nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "roberta-tokenize: out of memory");
    goto done;
  }
  int width = 0;
  for (int i = 0; i < n && !rc; i++) {
    rc = nq_roberta_tok_encode(tok, texts[i]->nbytes ? texts[i]->data : "", texts[i]->nbytes, max_len, pad,
                               ids + (size_t)i * max_len, mask + (size_t)i * max_len, &nreal[i], err);
    if (rc) nq_err_prefix(err, "roberta-tokenize: %s", texts[i]->name);
    else if (nreal[i] > width) width = nreal[i];
  }
  if (rc) goto done;
  if (!longest) width = max_len;
  ids64 = malloc((size_t)n * (size_t)width * sizeof *ids64);
  mask64 = malloc((size_t)n * (size_t)width * sizeof *mask64);
  if (!ids64 || !mask64) {
    rc = nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "roberta-tokenize: out of memory");
    goto done;
  }
  for (int i = 0; i < n; i++)
    for (int k = 0; k < width; k++) {
      ids64[(size_t)i * width + k] = ids[(size_t)i * max_len + k];
      mask64[(size_t)i * width + k] = mask[(size_t)i * max_len + k];
    }
  int64_t shape[2] = {n, width};
  rc = nq_st_writer_add(ctx->out, "input_ids", NQ_DT_I64, 2, shape, ids64, err);
  if (!rc) rc = nq_st_writer_add(ctx->out, "attention_mask", NQ_DT_I64, 2, shape, mask64, err);
done:
  free(ids64), free(mask64), free(ids), free(mask), free(nreal), free(texts);
  nq_roberta_tok_free(tok);
  return rc;
}

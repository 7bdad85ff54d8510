/* compute/tokenizers/roberta_bpe.c — RoBERTa byte-level BPE tokenizer. See roberta_bpe.h. */
#include "compute/tokenizers/roberta_bpe.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unicode/utf8.h>

static const char ROBERTA_PATTERN[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\p{White_Space}\\p{L}\\p{N}]+"
    "|\\p{White_Space}+(?!\\P{White_Space})|\\p{White_Space}+";

/* The special-token roles, in special_tokens_map.json's key names. */
enum { SP_BOS, SP_EOS, SP_UNK, SP_SEP, SP_PAD, SP_CLS, SP_MASK, SP_COUNT };
static const char *const SP_KEY[SP_COUNT] = {"bos_token", "eos_token", "unk_token", "sep_token",
                                             "pad_token", "cls_token", "mask_token"};
static const char *const SP_DEFAULT[SP_COUNT] = {"<s>", "</s>", "<unk>", "</s>", "<pad>", "<s>", "<mask>"};

typedef struct special {
  char *str;  /* owned */
  size_t len;
  int32_t id; /* -1 when not in the vocabulary */
  int lstrip, rstrip;
} special_t;

struct nq_roberta_tok {
  nq_bpe_t *bpe;   /* owned */
  nq_bpe_re_t *re; /* owned */
  special_t sp[SP_COUNT];
  int add_prefix_space;
  int model_max_length;
};

/* ---------------------------------------------------------------------------------------------- */
/* Loading */

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

/* A special-token entry: "<s>" or {"content": "<mask>", "lstrip": true, ...}. NULL value = keep default. */
static int special_from_json(special_t *sp, const json_t *v, const char *path, const char *key, nq_err_t *err) {
  const char *s = NULL;
  int lstrip = 0, rstrip = 0;
  if (!v || json_is_null(v)) return 0;
  if (json_is_string(v)) {
    s = json_string_value(v);
  } else if (json_is_object(v)) {
    const json_t *c = json_object_get(v, "content");
    if (!json_is_string(c))
      return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: %s.content is not a string", path, key);
    s = json_string_value(c);
    lstrip = json_is_true(json_object_get(v, "lstrip"));
    rstrip = json_is_true(json_object_get(v, "rstrip"));
  } else {
    return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: %s is neither a string nor an object", path, key);
  }
  if (!s[0] || strlen(s) > NQ_BPE_MAX_TOKEN_BYTES)
    return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: %s has a bad length", path, key);
  char *d = strdup(s);
  if (!d) return nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "%s: out of memory", path);
  free(sp->str);
  sp->str = d;
  sp->len = strlen(d);
  sp->lstrip = lstrip;
  sp->rstrip = rstrip;
  return 0;
}

static int load_json_opt(const char *path, json_t **out, nq_err_t *err) {
  *out = NULL;
  if (!is_file(path)) return 0;
  char *text = NULL;
  size_t len = 0;
  int rc = nq_bpe_read_file(path, &text, &len, err);
  if (rc) return rc;
  json_error_t je;
  json_t *j = json_loadb(text, len, 0, &je);
  free(text);
  if (!j || !json_is_object(j)) {
    json_decref(j);
    return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: not a JSON object (line %d: %s)", path, j ? 0 : je.line,
                      j ? "" : je.text);
  }
  *out = j;
  return 0;
}

static int load_configs(nq_roberta_tok_t *t, const char *dir, size_t dl, nq_err_t *err) {
  char *p = malloc(dl + 64);
  if (!p) return nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "roberta tokenizer: out of memory");
  json_t *cfg = NULL, *map = NULL;
  sprintf(p, "%.*stokenizer_config.json", (int)dl, dir);
  int rc = load_json_opt(p, &cfg, err);
  if (!rc && cfg) {
    t->add_prefix_space = json_is_true(json_object_get(cfg, "add_prefix_space"));
    const json_t *ml = json_object_get(cfg, "model_max_length");
    if (json_is_integer(ml) && json_integer_value(ml) > 0 && json_integer_value(ml) <= 1 << 20)
      t->model_max_length = (int)json_integer_value(ml);
    /* tokenizer_config.json may carry the special tokens too; special_tokens_map.json wins below. */
    for (int i = 0; i < SP_COUNT && !rc; i++) rc = special_from_json(&t->sp[i], json_object_get(cfg, SP_KEY[i]), p, SP_KEY[i], err);
  }
  if (!rc) {
    sprintf(p, "%.*sspecial_tokens_map.json", (int)dl, dir);
    rc = load_json_opt(p, &map, err);
    for (int i = 0; i < SP_COUNT && !rc && map; i++)
      rc = special_from_json(&t->sp[i], json_object_get(map, SP_KEY[i]), p, SP_KEY[i], err);
  }
  json_decref(cfg);
  json_decref(map);
  free(p);
  return rc;
}

int nq_roberta_tok_open(const char *path, nq_roberta_tok_t **out, nq_err_t *err) {
  *out = NULL;
  if (!path || !*path) return nq_err_set(err, NQ_EINVAL, 0, "roberta tokenizer: no path given");
  size_t pl = strlen(path);
  char *dir = malloc(pl + 64), *vocab = malloc(pl + 64), *merges = malloc(pl + 64);
  nq_roberta_tok_t *t = calloc(1, sizeof *t);
  char *text = NULL;
  int rc = 0;
  if (!dir || !vocab || !merges || !t) {
    rc = nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "roberta tokenizer: out of memory");
    goto fail;
  }
  for (int i = 0; i < SP_COUNT; i++) {
    t->sp[i].str = strdup(SP_DEFAULT[i]);
    if (!t->sp[i].str) {
      rc = nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "roberta tokenizer: out of memory");
      goto fail;
    }
    t->sp[i].len = strlen(SP_DEFAULT[i]);
    t->sp[i].lstrip = i == SP_MASK; /* RoBERTa's <mask> is AddedToken(lstrip=True) */
  }
  dir[0] = 0;
  if (is_file(path)) {
    if (!ends_with(path, "vocab.json") && !ends_with(path, "merges.txt")) {
      rc = nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "%s: not a RoBERTa tokenizer file (expected vocab.json or merges.txt)",
                      path);
      goto fail;
    }
    const char *slash = strrchr(path, '/');
    int dl = slash ? (int)(slash - path + 1) : 0;
    sprintf(dir, "%.*s", dl, path);
  } else if (is_dir(path)) {
    static const char *const sub[] = {"/", "/tokenizer/"};
    for (int i = 0; i < 2; i++) {
      sprintf(dir, "%s%s", path, sub[i]);
      sprintf(vocab, "%svocab.json", dir);
      sprintf(merges, "%smerges.txt", dir);
      if (is_file(vocab) && is_file(merges)) break;
      dir[0] = 0;
    }
    if (!dir[0]) {
      rc = nq_err_set(err, NQ_ENOENT, NQ_ERR_FATAL, "%s: no vocab.json + merges.txt (also looked in tokenizer/)", path);
      goto fail;
    }
  } else {
    rc = nq_err_set(err, NQ_ENOENT, NQ_ERR_FATAL, "%s: no such file or directory", path);
    goto fail;
  }
  sprintf(vocab, "%svocab.json", dir);
  sprintf(merges, "%smerges.txt", dir);
  if ((rc = load_configs(t, dir, strlen(dir), err))) goto fail;
  if ((rc = nq_bpe_new(NULL, &t->bpe, err))) goto fail;
  if ((rc = nq_bpe_vocab_load_json(t->bpe, vocab, err))) goto fail;
  size_t len = 0, used = 0;
  if ((rc = nq_bpe_read_file(merges, &text, &len, err))) goto fail;
  if ((rc = nq_bpe_merges_parse(t->bpe, text, len, 1, 0, merges, &used, err))) goto fail;
  if (used == 0) {
    rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: no merges", merges);
    goto fail;
  }
  for (int i = 0; i < SP_COUNT; i++) {
    t->sp[i].id = nq_bpe_token_id(t->bpe, t->sp[i].str, t->sp[i].len);
    if (t->sp[i].id < 0 && (i == SP_BOS || i == SP_EOS || i == SP_PAD)) {
      rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: %s '%s' is not in the vocabulary", vocab, SP_KEY[i], t->sp[i].str);
      goto fail;
    }
  }
  if ((rc = nq_bpe_finalize(t->bpe, t->sp[SP_UNK].id, err))) goto fail;
  if ((rc = nq_bpe_re_new(ROBERTA_PATTERN, 0, &t->re, err))) goto fail;
  free(text), free(dir), free(vocab), free(merges);
  *out = t;
  return 0;
fail:
  free(text), free(dir), free(vocab), free(merges);
  nq_roberta_tok_free(t);
  return rc;
}

void nq_roberta_tok_free(nq_roberta_tok_t *tok) {
  if (!tok) return;
  nq_bpe_free(tok->bpe);
  nq_bpe_re_free(tok->re);
  for (int i = 0; i < SP_COUNT; i++) free(tok->sp[i].str);
  free(tok);
}

int32_t nq_roberta_tok_bos(const nq_roberta_tok_t *tok) { return tok->sp[SP_BOS].id; }
int32_t nq_roberta_tok_eos(const nq_roberta_tok_t *tok) { return tok->sp[SP_EOS].id; }
int32_t nq_roberta_tok_pad(const nq_roberta_tok_t *tok) { return tok->sp[SP_PAD].id; }
int32_t nq_roberta_tok_unk(const nq_roberta_tok_t *tok) { return tok->sp[SP_UNK].id; }
int32_t nq_roberta_tok_vocab_size(const nq_roberta_tok_t *tok) { return nq_bpe_vocab_size(tok->bpe); }
int nq_roberta_tok_model_max_length(const nq_roberta_tok_t *tok) { return tok->model_max_length; }

/* ---------------------------------------------------------------------------------------------- */
/* Encode / decode */

typedef struct enc_ctx {
  const nq_roberta_tok_t *tok;
  nq_bpe_ids_t *out;
  size_t start, limit;
} enc_ctx_t;

static int full(const enc_ctx_t *c) { return c->limit && c->out->n - c->start >= c->limit; }

static int on_piece(void *ud, const char *p, size_t n, nq_err_t *err) {
  enc_ctx_t *c = ud;
  int rc = nq_bpe_encode_piece(c->tok->bpe, p, n, c->out, err);
  return rc ? rc : full(c);
}

/* Length of the White_Space run ending at `e` (going left, not before s) / starting at s. */
static size_t ws_suffix(const char *t, size_t s, size_t e) {
  int32_t k = (int32_t)e;
  while (k > (int32_t)s) {
    int32_t j = k;
    UChar32 c;
    U8_PREV(t, (int32_t)s, j, c);
    if (c < 0 || !nq_bpe_white_space((uint32_t)c)) break;
    k = j;
  }
  return e - (size_t)k;
}
static size_t ws_prefix(const char *t, size_t s, size_t e) {
  int32_t k = (int32_t)s;
  while (k < (int32_t)e) {
    int32_t j = k;
    UChar32 c;
    U8_NEXT(t, j, (int32_t)e, c);
    if (c < 0 || !nq_bpe_white_space((uint32_t)c)) break;
    k = j;
  }
  return (size_t)k - s;
}

static int encode_segment(enc_ctx_t *c, const char *t, size_t s, size_t e, nq_err_t *err) {
  if (e <= s || full(c)) return 0;
  return nq_bpe_re_foreach(c->tok->re, t + s, e - s, on_piece, c, err);
}

int nq_roberta_tok_encode_raw(const nq_roberta_tok_t *tok, const char *text, size_t len, size_t limit,
                              nq_bpe_ids_t *out, nq_err_t *err) {
  int rc = nq_bpe_utf8_check(text, len, "roberta tokenizer input", err);
  if (rc) return rc;
  char *buf = NULL;
  const char *t = text;
  if (tok->add_prefix_space && len > 0) {
    int32_t k = 0;
    UChar32 c0;
    U8_NEXT(text, k, (int32_t)len, c0);
    if (!nq_bpe_py_isspace((uint32_t)c0)) {
      buf = malloc(len + 1);
      if (!buf) return nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "roberta tokenizer: out of memory");
      buf[0] = ' ';
      memcpy(buf + 1, text, len);
      t = buf;
      len++;
    }
  }
  enc_ctx_t c = {tok, out, out->n, limit};
  size_t seg = 0; /* start of the text not yet tokenized */
  for (size_t i = 0; i < len && !rc && !full(&c);) {
    /* the longest special token starting here */
    int best = -1;
    for (int k = 0; k < SP_COUNT; k++) {
      const special_t *sp = &tok->sp[k];
      if (sp->id < 0 || sp->len > len - i || memcmp(t + i, sp->str, sp->len) != 0) continue;
      if (best < 0 || sp->len > tok->sp[best].len) best = k;
    }
    if (best < 0) {
      i++;
      continue;
    }
    const special_t *sp = &tok->sp[best];
    size_t e = i;
    if (sp->lstrip) e -= ws_suffix(t, seg, e);
    rc = encode_segment(&c, t, seg, e, err);
    if (!rc && !full(&c)) rc = nq_bpe_ids_push(out, sp->id, err);
    i += sp->len;
    if (sp->rstrip) i += ws_prefix(t, i, len);
    seg = i;
  }
  if (!rc) rc = encode_segment(&c, t, seg, len, err);
  free(buf);
  return rc;
}

int nq_roberta_tok_encode(const nq_roberta_tok_t *tok, const char *text, size_t len, int max_len, int pad_id,
                          int32_t *ids, int32_t *mask, int *n_real, nq_err_t *err) {
  if (max_len < 2) return nq_err_set(err, NQ_EINVAL, 0, "roberta tokenizer: max_len %d (must be >= 2)", max_len);
  if (pad_id < 0) pad_id = tok->sp[SP_PAD].id;
  if (pad_id >= nq_bpe_vocab_size(tok->bpe))
    return nq_err_set(err, NQ_EINVAL, 0, "roberta tokenizer: pad id %d outside the vocabulary (%d)", pad_id,
                      nq_bpe_vocab_size(tok->bpe));
  nq_bpe_ids_t c = {0};
  size_t room = (size_t)max_len - 2;
  int rc = room ? nq_roberta_tok_encode_raw(tok, text, len, room, &c, err) : 0;
  if (rc) {
    nq_bpe_ids_free(&c);
    return rc;
  }
  size_t nc = c.n < room ? c.n : room;
  ids[0] = tok->sp[SP_BOS].id;
  if (nc) memcpy(ids + 1, c.v, nc * sizeof *ids);
  ids[nc + 1] = tok->sp[SP_EOS].id;
  for (size_t i = nc + 2; i < (size_t)max_len; i++) ids[i] = pad_id;
  if (mask)
    for (size_t i = 0; i < (size_t)max_len; i++) mask[i] = i < nc + 2;
  if (n_real) *n_real = (int)nc + 2;
  nq_bpe_ids_free(&c);
  return 0;
}

static int skip_special(const void *ud, int32_t id) {
  const nq_roberta_tok_t *t = ud;
  for (int i = 0; i < SP_COUNT; i++)
    if (t->sp[i].id >= 0 && t->sp[i].id == id) return 1;
  return 0;
}

int nq_roberta_tok_decode(const nq_roberta_tok_t *tok, const int32_t *ids, size_t n, int skip, char **out,
                          nq_err_t *err) {
  return nq_bpe_decode(tok->bpe, ids, n, 0, skip ? skip_special : NULL, tok, out, NULL, err);
}

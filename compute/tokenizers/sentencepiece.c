/* SentencePiece BPE vocabulary, protobuf reader, encode/decode. See sentencepiece.h. */
#include "compute/tokenizers/sentencepiece.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "compute/tokenizers/sentencepiece_int.h"

#define NQ_SP_MAX_FILE (64u << 20)
#define NQ_SP_MAX_PIECES 1000000

static const char k_ws[] = "\xe2\x96\x81"; /* U+2581 */

/* ---- vocabulary ---- */

static uint64_t nq_sp__hash(const char *s, size_t n) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 1099511628211ull;
  return h;
}

nq_sp_tokenizer_t *nq_sp__new(void) {
  nq_sp_tokenizer_t *t = calloc(1, sizeof(*t));
  if (!t) return NULL;
  t->unk = 0, t->bos = 1, t->eos = 2;
  t->add_dummy_prefix = true;
  memset(t->byte_id, -1, sizeof t->byte_id);
  return t;
}

int nq_sp__push(nq_sp_tokenizer_t *t, const char *piece, size_t len, float score, int type, nq_err_t *err) {
  if (t->n >= NQ_SP_MAX_PIECES) return nq_err_set(err, NQ_ELIMIT, NQ_ERR_FATAL, "tokenizer: more than %d pieces", NQ_SP_MAX_PIECES);
  if (t->n == t->cap) {
    int nc = t->cap ? t->cap * 2 : 1024;
    char **p = realloc(t->piece, sizeof(char *) * (size_t)nc);
    if (p) t->piece = p;
    uint32_t *l = p ? realloc(t->len, sizeof(uint32_t) * (size_t)nc) : NULL;
    if (l) t->len = l;
    float *s = l ? realloc(t->score, sizeof(float) * (size_t)nc) : NULL;
    if (s) t->score = s;
    uint8_t *ty = s ? realloc(t->type, (size_t)nc) : NULL;
    if (!ty) return nq_err_set(err, NQ_ENOMEM, 0, "tokenizer: out of memory");
    t->type = ty;
    t->cap = nc;
  }
  char *c = malloc(len + 1);
  if (!c) return nq_err_set(err, NQ_ENOMEM, 0, "tokenizer: out of memory");
  memcpy(c, piece, len);
  c[len] = 0;
  int id = t->n++;
  t->piece[id] = c, t->len[id] = (uint32_t)len, t->score[id] = score, t->type[id] = (uint8_t)type;
  if (type == NQ_SP_BYTE && len == 6 && !strncmp(c, "<0x", 3) && c[5] == '>') {
    unsigned v;
    if (sscanf(c + 3, "%2x", &v) == 1) t->byte_id[v & 255] = id;
  }
  return id;
}

int nq_sp__build_index(nq_sp_tokenizer_t *t, nq_err_t *err) {
  /* special ids come from the file (trainer_spec) or defaults (0/1/2): they must name pieces, or encode would emit
   * ids outside the vocabulary (an out-of-bounds embedding row downstream). bos/eos may be -1 (disabled). */
  if (t->unk < 0 || t->unk >= t->n || t->bos < -1 || t->bos >= t->n || t->eos < -1 || t->eos >= t->n)
    return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL,
                      "tokenizer: special ids unk %d / bos %d / eos %d outside the vocabulary of %d pieces", t->unk,
                      t->bos, t->eos, t->n);
  free(t->hash);
  t->hash_cap = 1;
  while (t->hash_cap < (size_t)t->n * 2 + 16) t->hash_cap <<= 1;
  t->hash = malloc(sizeof(int32_t) * t->hash_cap);
  if (!t->hash) return nq_err_set(err, NQ_ENOMEM, 0, "tokenizer: out of memory");
  memset(t->hash, -1, sizeof(int32_t) * t->hash_cap);
  for (int id = 0; id < t->n; id++) {
    size_t h = nq_sp__hash(t->piece[id], t->len[id]) & (t->hash_cap - 1);
    while (t->hash[h] >= 0) {
      int o = t->hash[h];
      if (t->len[o] == t->len[id] && !memcmp(t->piece[o], t->piece[id], t->len[id])) break; /* keep first */
      h = (h + 1) & (t->hash_cap - 1);
    }
    if (t->hash[h] < 0) t->hash[h] = id;
  }
  return 0;
}

static int nq_sp__lookup(const nq_sp_tokenizer_t *t, const char *s, size_t n) {
  if (!t->hash) return -1;
  size_t h = nq_sp__hash(s, n) & (t->hash_cap - 1);
  while (t->hash[h] >= 0) {
    int id = t->hash[h];
    if (t->len[id] == n && !memcmp(t->piece[id], s, n)) return id;
    h = (h + 1) & (t->hash_cap - 1);
  }
  return -1;
}

/* Pieces BPE may produce: normal and user-defined (not control, byte, unused, unknown, added). */
static int nq_sp__lookup_mergeable(const nq_sp_tokenizer_t *t, const char *s, size_t n) {
  int id = nq_sp__lookup(t, s, n);
  if (id < 0) return -1;
  return (t->type[id] == NQ_SP_NORMAL || t->type[id] == NQ_SP_USER_DEFINED) ? id : -1;
}

void nq_sp_free(nq_sp_tokenizer_t *t) {
  if (!t) return;
  for (int i = 0; i < t->n; i++) free(t->piece[i]);
  free(t->piece), free(t->len), free(t->score), free(t->type), free(t->hash);
  free(t);
}

int nq_sp_vocab_size(const nq_sp_tokenizer_t *t) { return t->n; }
const char *nq_sp_piece(const nq_sp_tokenizer_t *t, int id) { return (id >= 0 && id < t->n) ? t->piece[id] : NULL; }
nq_sp_type_t nq_sp_type(const nq_sp_tokenizer_t *t, int id) {
  return (id >= 0 && id < t->n) ? (nq_sp_type_t)t->type[id] : NQ_SP_UNKNOWN;
}
int nq_sp_bos(const nq_sp_tokenizer_t *t) { return t->bos; }
int nq_sp_eos(const nq_sp_tokenizer_t *t) { return t->eos; }
int nq_sp_piece_to_id(const nq_sp_tokenizer_t *t, const char *piece) { return nq_sp__lookup(t, piece, strlen(piece)); }

int nq_sp_add_tokens(nq_sp_tokenizer_t *t, const char *const *tokens, int n, nq_err_t *err) {
  for (int i = 0; i < n; i++) {
    size_t l = strlen(tokens[i]);
    if (l == 0 || l > 256) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "tokenizer: added token %d empty or too long", i);
    int rc = nq_sp__push(t, tokens[i], l, 0.0f, NQ_SP_ADDED, err);
    if (rc < 0) return rc;
    t->n_added++;
  }
  return nq_sp__build_index(t, err);
}

int nq_sp_add_tokens_json(nq_sp_tokenizer_t *t, const char *path, nq_err_t *err) {
  json_error_t je;
  json_t *root = json_load_file(path, 0, &je);
  if (!root || !json_is_object(root)) {
    json_decref(root);
    return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: not a JSON object (line %d: %s)", path, je.line, je.text);
  }
  size_t n = json_object_size(root);
  const char **names = calloc(n ? n : 1, sizeof(char *));
  int rc = 0;
  if (!names) rc = nq_err_set(err, NQ_ENOMEM, 0, "out of memory");
  const char *key;
  json_t *val;
  json_object_foreach(root, key, val) {
    if (rc < 0) break;
    json_int_t id = json_is_integer(val) ? json_integer_value(val) : -1;
    if (id < t->n || id >= t->n + (json_int_t)n) {
      rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: token \"%s\" id %lld does not continue the vocabulary of %d",
                      path, key, (long long)id, t->n);
      break;
    }
    if (names[id - t->n]) {
      rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: id %lld used twice", path, (long long)id);
      break;
    }
    names[id - t->n] = key;
  }
  if (rc == 0) rc = nq_sp_add_tokens(t, names, (int)n, err);
  free(names);
  json_decref(root);
  return rc;
}

/* ---- protobuf (ModelProto) ---- */

typedef struct {
  const uint8_t *p, *end;
} nq_pb_t;

static int nq_pb__varint(nq_pb_t *b, uint64_t *v) {
  uint64_t r = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (b->p >= b->end) return -1;
    uint8_t c = *b->p++;
    r |= (uint64_t)(c & 0x7f) << shift;
    if (!(c & 0x80)) {
      *v = r;
      return 0;
    }
  }
  return -1;
}

/* Reads a field header; for wire type 2 sets *sub to the payload. Skips nothing. */
static int nq_pb__field(nq_pb_t *b, uint32_t *field, int *wt, nq_pb_t *sub, uint64_t *val) {
  uint64_t key;
  if (nq_pb__varint(b, &key) < 0) return -1;
  *field = (uint32_t)(key >> 3);
  *wt = (int)(key & 7);
  switch (*wt) {
    case 0: return nq_pb__varint(b, val);
    case 1:
      if (b->end - b->p < 8) return -1;
      memcpy(val, b->p, 8);
      b->p += 8;
      return 0;
    case 5: {
      if (b->end - b->p < 4) return -1;
      uint32_t v32;
      memcpy(&v32, b->p, 4);
      *val = v32;
      b->p += 4;
      return 0;
    }
    case 2: {
      uint64_t l;
      if (nq_pb__varint(b, &l) < 0 || l > (uint64_t)(b->end - b->p)) return -1;
      sub->p = b->p, sub->end = b->p + l;
      b->p += l;
      return 0;
    }
    default: return -1;
  }
}

static int nq_sp__parse_piece(nq_sp_tokenizer_t *t, nq_pb_t m, const char *path, size_t off, nq_err_t *err) {
  const char *s = NULL;
  size_t sl = 0;
  float score = 0;
  int type = NQ_SP_NORMAL;
  while (m.p < m.end) {
    uint32_t f;
    int wt;
    nq_pb_t sub = {0};
    uint64_t v = 0;
    if (nq_pb__field(&m, &f, &wt, &sub, &v) < 0)
      return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: bad SentencePiece entry near byte %zu", path, off);
    if (f == 1 && wt == 2) s = (const char *)sub.p, sl = (size_t)(sub.end - sub.p);
    else if (f == 2 && wt == 5) {
      uint32_t u = (uint32_t)v;
      memcpy(&score, &u, 4);
    } else if (f == 3 && wt == 0) type = (int)v;
  }
  if (!s) return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: piece without text near byte %zu", path, off);
  if (type < 1 || type > 6) type = NQ_SP_NORMAL;
  int id = nq_sp__push(t, s, sl, score, type, err);
  return id < 0 ? id : 0;
}

int nq_sp_load_model(const char *path, nq_sp_tokenizer_t **out, nq_err_t *err) {
  *out = NULL;
  FILE *f = fopen(path, "rb");
  if (!f) return nq_err_set(err, NQ_ENOENT, NQ_ERR_FATAL, "%s: cannot open", path);
  struct stat st;
  if (fstat(fileno(f), &st) < 0 || st.st_size <= 0 || (uint64_t)st.st_size > NQ_SP_MAX_FILE) {
    fclose(f);
    return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: empty or larger than %u bytes", path, NQ_SP_MAX_FILE);
  }
  size_t n = (size_t)st.st_size;
  uint8_t *buf = malloc(n);
  if (!buf || fread(buf, 1, n, f) != n) {
    free(buf);
    fclose(f);
    return nq_err_set(err, NQ_EIO, 0, "%s: read failed", path);
  }
  fclose(f);
  nq_sp_tokenizer_t *t = nq_sp__new();
  int rc = t ? 0 : nq_err_set(err, NQ_ENOMEM, 0, "out of memory");
  int model_type = 1; /* proto default: UNIGRAM */
  nq_pb_t b = {buf, buf + n};
  while (rc == 0 && b.p < b.end) {
    size_t off = (size_t)(b.p - buf);
    uint32_t fld;
    int wt;
    nq_pb_t sub = {0};
    uint64_t v = 0;
    if (nq_pb__field(&b, &fld, &wt, &sub, &v) < 0) {
      rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: malformed protobuf at byte %zu", path, off);
      break;
    }
    if (wt != 2) continue;
    if (fld == 1) {
      rc = nq_sp__parse_piece(t, sub, path, off, err);
    } else if (fld == 2 || fld == 3) { /* trainer_spec, normalizer_spec */
      while (sub.p < sub.end) {
        uint32_t f2;
        int w2;
        nq_pb_t s2;
        uint64_t v2 = 0;
        if (nq_pb__field(&sub, &f2, &w2, &s2, &v2) < 0) {
          rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: malformed %s spec near byte %zu", path,
                          fld == 2 ? "trainer" : "normalizer", off);
          break;
        }
        if (w2 != 0) continue;
        if (fld == 2) {
          if (f2 == 3) model_type = (int)v2;
          else if (f2 == 40) t->unk = (int)(int32_t)v2;
          else if (f2 == 41) t->bos = (int)(int32_t)v2;
          else if (f2 == 42) t->eos = (int)(int32_t)v2;
        } else {
          if (f2 == 3) t->add_dummy_prefix = v2 != 0;
          else if (f2 == 4) t->remove_extra_ws = v2 != 0;
        }
      }
    }
  }
  free(buf);
  if (rc == 0 && t->n == 0) rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: no pieces", path);
  if (rc == 0 && model_type != 2)
    rc = nq_err_set(err, NQ_EUNSUPPORTED, NQ_ERR_FATAL, "%s: SentencePiece model type %d (only BPE = 2)", path, model_type);
  if (rc == 0 && (rc = nq_sp__build_index(t, err)) < 0) nq_err_prefix(err, "%s", path);
  if (rc < 0) {
    nq_sp_free(t);
    return rc;
  }
  t->n_base = t->n;
  *out = t;
  return 0;
}

int nq_sp_load(const char *path, int vocab_size, nq_sp_tokenizer_t **out, nq_err_t *err) {
  struct stat st;
  if (stat(path, &st) < 0) return nq_err_set(err, NQ_ENOENT, NQ_ERR_FATAL, "%s: not found", path);
  if (S_ISDIR(st.st_mode)) {
    char p[4096];
    snprintf(p, sizeof p, "%s/tokenizer.model", path);
    int rc = nq_sp_load_model(p, out, err);
    if (rc < 0) return rc;
    snprintf(p, sizeof p, "%s/added_tokens.json", path);
    if (stat(p, &st) == 0 && (rc = nq_sp_add_tokens_json(*out, p, err)) < 0) {
      nq_sp_free(*out);
      *out = NULL;
    }
    return rc;
  }
  /* protobuf ModelProto starts with field 1 (pieces), wire type 2: byte 0x0a */
  FILE *f = fopen(path, "rb");
  if (!f) return nq_err_set(err, NQ_ENOENT, NQ_ERR_FATAL, "%s: cannot open", path);
  int c = fgetc(f);
  fclose(f);
  if (c == 0x0a) return nq_sp_load_model(path, out, err);
  return nq_sp_load_llama2c(path, vocab_size, out, err);
}

/* ---- encode ---- */

typedef struct {
  int start, len; /* byte range in the normalised text */
  int prev, next;
  int id;         /* mergeable id of this symbol, or -1 */
} nq_sp__sym_t;

static int nq_sp__utf8_len(uint8_t c) {
  if (c < 0x80) return 1;
  if ((c & 0xe0) == 0xc0) return 2;
  if ((c & 0xf0) == 0xe0) return 3;
  if ((c & 0xf8) == 0xf0) return 4;
  return 1;
}

typedef struct {
  int32_t *v;
  int n, cap;
} nq_sp__ids_t;

static int nq_sp__ids_push(nq_sp__ids_t *a, int32_t id) {
  if (a->n == a->cap) {
    int nc = a->cap ? a->cap * 2 : 64;
    int32_t *p = realloc(a->v, sizeof(int32_t) * (size_t)nc);
    if (!p) return NQ_ENOMEM;
    a->v = p, a->cap = nc;
  }
  a->v[a->n++] = id;
  return 0;
}

/* BPE over one chunk of raw text. */
static int nq_sp__encode_chunk(const nq_sp_tokenizer_t *t, const char *text, size_t len, bool dummy,
                               nq_sp__ids_t *out) {
  if (len == 0) return 0;
  const char *sp = t->raw_space ? " " : k_ws;
  size_t spl = strlen(sp);
  /* normalise */
  char *norm = malloc(len * spl + spl + 1);
  if (!norm) return NQ_ENOMEM;
  size_t n = 0;
  const char *s = text, *e = text + len;
  if (t->remove_extra_ws) {
    while (s < e && *s == ' ') s++;
    while (e > s && e[-1] == ' ') e--;
    if (s == e) {
      free(norm);
      return 0;
    }
  }
  if (dummy) memcpy(norm + n, sp, spl), n += spl;
  for (const char *p = s; p < e; p++) {
    if (*p == ' ') {
      if (t->remove_extra_ws && p > s && p[-1] == ' ') continue;
      memcpy(norm + n, sp, spl), n += spl;
    } else {
      norm[n++] = *p;
    }
  }
  /* symbols */
  nq_sp__sym_t *sym = malloc(sizeof(*sym) * (n + 1));
  float *pair = malloc(sizeof(float) * (n + 1));
  int32_t *pair_id = malloc(sizeof(int32_t) * (n + 1));
  if (!sym || !pair || !pair_id) {
    free(norm), free(sym), free(pair), free(pair_id);
    return NQ_ENOMEM;
  }
  int ns = 0;
  for (size_t i = 0; i < n;) {
    int l = nq_sp__utf8_len((uint8_t)norm[i]);
    if (i + (size_t)l > n) l = (int)(n - i);
    sym[ns] = (nq_sp__sym_t){(int)i, l, ns - 1, ns + 1, nq_sp__lookup_mergeable(t, norm + i, (size_t)l)};
    ns++;
    i += (size_t)l;
  }
  sym[ns - 1].next = -1;
  /* pair[i] = score of merging sym i with its next (or -inf) */
  for (int i = 0; i < ns; i++) {
    pair_id[i] = -1;
    if (sym[i].next >= 0) {
      int j = sym[i].next;
      pair_id[i] = nq_sp__lookup_mergeable(t, norm + sym[i].start, (size_t)(sym[i].len + sym[j].len));
    }
    pair[i] = pair_id[i] >= 0 ? t->score[pair_id[i]] : 0;
  }
  for (;;) {
    int best = -1;
    for (int i = 0; i >= 0 && i < ns; i = sym[i].next)
      if (pair_id[i] >= 0 && (best < 0 || pair[i] > pair[best])) best = i;
    if (best < 0) break;
    int j = sym[best].next;
    sym[best].len += sym[j].len;
    sym[best].id = pair_id[best];
    sym[best].next = sym[j].next;
    if (sym[j].next >= 0) sym[sym[j].next].prev = best;
    /* refresh the pairs touching best */
    int nb[2] = {sym[best].prev, best};
    for (int k = 0; k < 2; k++) {
      int a = nb[k];
      if (a < 0) continue;
      pair_id[a] = -1;
      if (sym[a].next >= 0) {
        int b = sym[a].next;
        pair_id[a] = nq_sp__lookup_mergeable(t, norm + sym[a].start, (size_t)(sym[a].len + sym[b].len));
      }
      pair[a] = pair_id[a] >= 0 ? t->score[pair_id[a]] : 0;
    }
  }
  int rc = 0;
  for (int i = 0; i >= 0 && i < ns && rc == 0; i = sym[i].next) {
    if (sym[i].id >= 0) {
      rc = nq_sp__ids_push(out, sym[i].id);
      continue;
    }
    for (int k = 0; k < sym[i].len && rc == 0; k++) {
      int b = t->byte_id[(uint8_t)norm[sym[i].start + k]];
      rc = nq_sp__ids_push(out, b >= 0 ? b : t->unk);
      if (b < 0) break; /* no byte fallback: one unk per symbol */
    }
  }
  free(norm), free(sym), free(pair), free(pair_id);
  return rc;
}

static bool nq_sp__isspace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

int nq_sp_encode(const nq_sp_tokenizer_t *t, const char *text, size_t len, const nq_sp_encode_opts_t *opts,
                 int32_t **ids, int *n_ids, nq_err_t *err) {
  nq_sp_encode_opts_t o = {.add_dummy_prefix = -1};
  if (opts) o = *opts;
  bool dummy = o.add_dummy_prefix < 0 ? t->add_dummy_prefix : o.add_dummy_prefix != 0;
  nq_sp__ids_t a = {0};
  int rc = 0;
  if (o.add_bos && t->bos >= 0) rc = nq_sp__ids_push(&a, t->bos);
  size_t pos = 0;
  bool strip_left = false;
  while (rc == 0 && pos <= len) {
    /* next added token occurrence (earliest, longest) */
    size_t best_at = len, best_len = 0;
    int best_id = -1;
    if (t->n_added && !o.no_added_tokens) {
      for (size_t i = pos; i < len && best_id < 0; i++)
        for (int id = t->n_base; id < t->n; id++)
          if (t->len[id] <= len - i && !memcmp(text + i, t->piece[id], t->len[id]) && t->len[id] > best_len)
            best_at = i, best_len = t->len[id], best_id = id;
    }
    size_t cs = pos, ce = best_at;
    if (strip_left)
      while (cs < ce && nq_sp__isspace(text[cs])) cs++;
    if (best_id >= 0)
      while (ce > cs && nq_sp__isspace(text[ce - 1])) ce--;
    rc = nq_sp__encode_chunk(t, text + cs, ce - cs, dummy, &a);
    if (rc < 0 || best_id < 0) break;
    rc = nq_sp__ids_push(&a, best_id);
    pos = best_at + best_len;
    strip_left = true;
  }
  if (rc == 0 && o.add_eos && t->eos >= 0) rc = nq_sp__ids_push(&a, t->eos);
  if (rc < 0) {
    free(a.v);
    return nq_err_set(err, NQ_ENOMEM, 0, "tokenizer: out of memory encoding %zu bytes", len);
  }
  if (!a.v) a.v = malloc(sizeof(int32_t)); /* never hand out NULL for an empty result */
  *ids = a.v;
  *n_ids = a.n;
  return 0;
}

/* ---- decode ---- */

size_t nq_sp_decode_piece(const nq_sp_tokenizer_t *t, int prev, int id, char *buf, size_t cap) {
  if (cap == 0) return 0;
  buf[0] = 0;
  if (id < 0 || id >= t->n) return 0;
  const char *p = t->piece[id];
  size_t n = 0;
  if (t->type[id] == NQ_SP_BYTE) {
    unsigned v;
    if (sscanf(p, "<0x%2x>", &v) == 1 && cap > 1) buf[n++] = (char)v;
    buf[n] = 0;
    return n;
  }
  if (t->type[id] == NQ_SP_CONTROL || t->type[id] == NQ_SP_UNKNOWN) {
    if (!t->raw_space) return 0; /* llama2.c prints them verbatim; SentencePiece drops them */
  }
  bool first = true;
  for (const char *s = p; *s && n + 1 < cap;) {
    if (!strncmp(s, k_ws, 3)) {
      if (!(first && prev == t->bos)) buf[n++] = ' ';
      s += 3;
    } else if (*s == ' ' && first && prev == t->bos) {
      s++;
    } else {
      buf[n++] = *s++;
    }
    first = false;
  }
  buf[n] = 0;
  return n;
}

char *nq_sp_decode(const nq_sp_tokenizer_t *t, const int32_t *ids, int n, bool strip_leading_space) {
  size_t cap = 16, len = 0;
  for (int i = 0; i < n; i++) cap += (ids[i] >= 0 && ids[i] < t->n) ? t->len[ids[i]] + 1 : 0;
  char *out = malloc(cap);
  if (!out) return NULL;
  bool at_start = true;
  for (int i = 0; i < n; i++) {
    int id = ids[i];
    if (id < 0 || id >= t->n) continue;
    if (t->type[id] == NQ_SP_CONTROL || t->type[id] == NQ_SP_UNKNOWN) continue;
    /* prev = bos makes decode_piece drop a leading space: only for the first emitted piece */
    size_t k = nq_sp_decode_piece(t, (at_start && strip_leading_space) ? t->bos : -1, id, out + len, cap - len);
    len += k;
    at_start = false;
  }
  out[len] = 0;
  return out;
}

/* compute/tokenizers/bpe.c — byte-level BPE engine, PCRE2 pre-tokenising, ICU text helpers. See bpe.h. */
#include "compute/tokenizers/bpe.h"

#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <unicode/uchar.h>
#include <unicode/ustring.h>
#include <unicode/utf8.h>

/* ---------------------------------------------------------------------------------------------- */
/* Id vector */

int nq_bpe_ids_push(nq_bpe_ids_t *ids, int32_t id, nq_err_t *err) {
  if (ids->n == ids->cap) {
    size_t nc = ids->cap ? ids->cap * 2 : 64;
    int32_t *nv = realloc(ids->v, nc * sizeof *nv);
    if (!nv) return nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "bpe: out of memory growing an id list to %zu", nc);
    ids->v = nv;
    ids->cap = nc;
  }
  ids->v[ids->n++] = id;
  return 0;
}

void nq_bpe_ids_free(nq_bpe_ids_t *ids) {
  if (!ids) return;
  free(ids->v);
  ids->v = NULL;
  ids->n = ids->cap = 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* Engine state */

/* One memoised piece: its bytes live in cache_keys, its ids in cache_ids. */
typedef struct cache_ent {
  size_t key_off, key_len;
  size_t ids_off, ids_n;
} cache_ent_t;

/* Cache bounds: when either is exceeded the cache is emptied (a worker runs for days). */
#define CACHE_MAX_ENTRIES 65536
#define CACHE_MAX_BYTES ((size_t)8 << 20)

struct nq_bpe {
  /* Interned symbol strings: vocabulary tokens, merge parts and merge results. */
  char *sb;            /* owned: symbol bytes arena */
  size_t sb_n, sb_cap;
  size_t *sym_off;     /* owned: [nsym] offset into sb */
  uint32_t *sym_len;   /* owned: [nsym] */
  int32_t *sym_vid;    /* owned: [nsym] vocabulary id, -1 when the symbol is not in the vocabulary */
  size_t nsym, sym_cap;
  int32_t *sym_slots;  /* owned: open-addressing table of symbol indices (-1 empty), size slot_cap (2^k) */
  size_t slot_cap;

  /* Vocabulary id -> symbol (-1 for an id not used). */
  int32_t *id2sym;     /* owned: [id_cap] */
  int32_t id_cap, vocab_size, n_vocab;

  /* Merges: key (a << 32 | b) -> rank and merged symbol. */
  uint64_t *pm_keys;   /* owned: [pm_cap], UINT64_MAX = empty */
  int32_t *pm_rank;    /* owned: [pm_cap] */
  int32_t *pm_sym;     /* owned: [pm_cap] */
  size_t pm_n, pm_cap;

  char *eow;           /* owned: end-of-word suffix or NULL */
  size_t eow_len;
  int32_t byte_sym[256];     /* symbol of each byte's character */
  int32_t byte_sym_eow[256]; /* ... with the eow suffix (== byte_sym without a suffix) */
  int32_t unk_id;
  int finalized;

  /* Memo of encoded pieces (guarded by mu). */
  pthread_mutex_t mu;
  char *cache_keys;       /* owned */
  size_t ck_n, ck_cap;
  int32_t *cache_ids;     /* owned */
  size_t ci_n, ci_cap;
  cache_ent_t *cache_ent; /* owned */
  size_t ce_n, ce_cap;
  int32_t *cache_slots;   /* owned: [cs_cap] entry index or -1 */
  size_t cs_cap;
};

static uint64_t hash_bytes(const char *p, size_t n) {
  uint64_t h = 1469598103934665603ull; /* FNV-1a */
  for (size_t i = 0; i < n; i++) {
    h ^= (unsigned char)p[i];
    h *= 1099511628211ull;
  }
  return h ^ (h >> 29);
}

static uint64_t hash_u64(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  x ^= x >> 33;
  return x;
}

static int oom(nq_err_t *err, const char *what) {
  return nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "bpe: out of memory (%s)", what);
}

/* Grow *p (elements of size es) to hold at least need elements. */
static int grow(void **p, size_t *cap, size_t need, size_t es) {
  if (need <= *cap) return 0;
  size_t nc = *cap ? *cap : 16;
  while (nc < need) nc *= 2;
  void *np = realloc(*p, nc * es);
  if (!np) return -1;
  *p = np;
  *cap = nc;
  return 0;
}

int nq_bpe_new(const char *eow_suffix, nq_bpe_t **out, nq_err_t *err) {
  *out = NULL;
  nq_bpe_t *b = calloc(1, sizeof *b);
  if (!b) return oom(err, "engine");
  pthread_mutex_init(&b->mu, NULL);
  b->unk_id = -1;
  if (eow_suffix && eow_suffix[0]) {
    b->eow = strdup(eow_suffix);
    if (!b->eow) {
      nq_bpe_free(b);
      return oom(err, "eow suffix");
    }
    b->eow_len = strlen(eow_suffix);
  }
  b->slot_cap = 1024;
  b->sym_slots = malloc(b->slot_cap * sizeof *b->sym_slots);
  b->pm_cap = 1024;
  b->pm_keys = malloc(b->pm_cap * sizeof *b->pm_keys);
  b->pm_rank = malloc(b->pm_cap * sizeof *b->pm_rank);
  b->pm_sym = malloc(b->pm_cap * sizeof *b->pm_sym);
  if (!b->sym_slots || !b->pm_keys || !b->pm_rank || !b->pm_sym) {
    nq_bpe_free(b);
    return oom(err, "tables");
  }
  memset(b->sym_slots, 0xff, b->slot_cap * sizeof *b->sym_slots);
  memset(b->pm_keys, 0xff, b->pm_cap * sizeof *b->pm_keys);
  *out = b;
  return 0;
}

void nq_bpe_free(nq_bpe_t *b) {
  if (!b) return;
  pthread_mutex_destroy(&b->mu);
  free(b->sb);
  free(b->sym_off);
  free(b->sym_len);
  free(b->sym_vid);
  free(b->sym_slots);
  free(b->id2sym);
  free(b->pm_keys);
  free(b->pm_rank);
  free(b->pm_sym);
  free(b->eow);
  free(b->cache_keys);
  free(b->cache_ids);
  free(b->cache_ent);
  free(b->cache_slots);
  free(b);
}

/* ---------------------------------------------------------------------------------------------- */
/* Symbols */

static int32_t sym_find(const nq_bpe_t *b, const char *s, size_t n) {
  size_t mask = b->slot_cap - 1;
  for (size_t i = hash_bytes(s, n) & mask;; i = (i + 1) & mask) {
    int32_t k = b->sym_slots[i];
    if (k < 0) return -1;
    if (b->sym_len[k] == n && memcmp(b->sb + b->sym_off[k], s, n) == 0) return k;
  }
}

static int sym_rehash(nq_bpe_t *b, size_t ncap) {
  int32_t *ns = malloc(ncap * sizeof *ns);
  if (!ns) return -1;
  memset(ns, 0xff, ncap * sizeof *ns);
  for (size_t k = 0; k < b->nsym; k++) {
    size_t i = hash_bytes(b->sb + b->sym_off[k], b->sym_len[k]) & (ncap - 1);
    while (ns[i] >= 0) i = (i + 1) & (ncap - 1);
    ns[i] = (int32_t)k;
  }
  free(b->sym_slots);
  b->sym_slots = ns;
  b->slot_cap = ncap;
  return 0;
}

/* Symbol index of s, interning it when new. Returns -1 on OOM. */
static int32_t sym_intern(nq_bpe_t *b, const char *s, size_t n) {
  int32_t k = sym_find(b, s, n);
  if (k >= 0) return k;
  if (b->nsym >= (size_t)INT32_MAX / 2) return -1;
  if ((b->nsym + 1) * 2 > b->slot_cap && sym_rehash(b, b->slot_cap * 2)) return -1;
  if (grow((void **)&b->sb, &b->sb_cap, b->sb_n + n + 1, 1)) return -1;
  size_t cap = b->sym_cap;
  if (grow((void **)&b->sym_off, &cap, b->nsym + 1, sizeof *b->sym_off)) return -1;
  cap = b->sym_cap;
  if (grow((void **)&b->sym_len, &cap, b->nsym + 1, sizeof *b->sym_len)) return -1;
  cap = b->sym_cap;
  if (grow((void **)&b->sym_vid, &cap, b->nsym + 1, sizeof *b->sym_vid)) return -1;
  b->sym_cap = cap;
  memcpy(b->sb + b->sb_n, s, n);
  b->sb[b->sb_n + n] = 0;
  k = (int32_t)b->nsym++;
  b->sym_off[k] = b->sb_n;
  b->sym_len[k] = (uint32_t)n;
  b->sym_vid[k] = -1;
  b->sb_n += n + 1;
  size_t i = hash_bytes(s, n) & (b->slot_cap - 1);
  while (b->sym_slots[i] >= 0) i = (i + 1) & (b->slot_cap - 1);
  b->sym_slots[i] = k;
  return k;
}

/* Printable form of a token for messages (truncated, control bytes escaped). */
static const char *show(const char *s, size_t n, char *buf, size_t cap) {
  size_t o = 0;
  for (size_t i = 0; i < n && o + 5 < cap; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c < 0x20 || c == 0x7f) o += (size_t)snprintf(buf + o, cap - o, "\\x%02x", c);
    else buf[o++] = (char)c;
  }
  buf[o] = 0;
  return buf;
}

int nq_bpe_vocab_add(nq_bpe_t *b, const char *tok, size_t len, int32_t id, const char *where, nq_err_t *err) {
  char sh[96];
  if (len == 0 || len > NQ_BPE_MAX_TOKEN_BYTES)
    return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: token of %zu bytes (must be 1..%d)", where, len,
                      NQ_BPE_MAX_TOKEN_BYTES);
  if (id < 0 || id >= NQ_BPE_MAX_ID)
    return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: token '%s' has id %d outside [0, %d)", where,
                      show(tok, len, sh, sizeof sh), id, NQ_BPE_MAX_ID);
  int32_t s = sym_intern(b, tok, len);
  if (s < 0) return oom(err, "vocabulary");
  if (b->sym_vid[s] >= 0)
    return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: token '%s' given twice (ids %d and %d)", where,
                      show(tok, len, sh, sizeof sh), b->sym_vid[s], id);
  if (id >= b->id_cap) {
    int32_t nc = b->id_cap ? b->id_cap : 1024;
    while (nc <= id) nc *= 2;
    int32_t *n2 = realloc(b->id2sym, (size_t)nc * sizeof *n2);
    if (!n2) return oom(err, "vocabulary ids");
    memset(n2 + b->id_cap, 0xff, (size_t)(nc - b->id_cap) * sizeof *n2);
    b->id2sym = n2;
    b->id_cap = nc;
  }
  if (b->id2sym[id] >= 0) {
    char sh2[96];
    int32_t o = b->id2sym[id];
    return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: id %d used by both '%s' and '%s'", where, id,
                      show(b->sb + b->sym_off[o], b->sym_len[o], sh2, sizeof sh2), show(tok, len, sh, sizeof sh));
  }
  b->id2sym[id] = s;
  b->sym_vid[s] = id;
  if (id + 1 > b->vocab_size) b->vocab_size = id + 1;
  b->n_vocab++;
  return 0;
}

int nq_bpe_vocab_load_json(nq_bpe_t *b, const char *path, nq_err_t *err) {
  char *text = NULL;
  size_t len = 0;
  int rc = nq_bpe_read_file(path, &text, &len, err);
  if (rc) return rc;
  json_error_t je;
  json_t *root = json_loadb(text, len, JSON_ALLOW_NUL, &je);
  free(text);
  if (!root)
    return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: invalid JSON at line %d column %d: %s", path, je.line,
                      je.column, je.text);
  if (!json_is_object(root)) {
    json_decref(root);
    return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: expected a JSON object token -> id", path);
  }
  if (json_object_size(root) == 0) {
    json_decref(root);
    return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: empty vocabulary", path);
  }
  const char *key;
  json_t *val;
  char sh[96];
  json_object_foreach(root, key, val) {
    size_t klen = strlen(key);
    if (!json_is_integer(val)) {
      rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: the id of token '%s' is not an integer", path,
                      show(key, klen, sh, sizeof sh));
      break;
    }
    json_int_t id = json_integer_value(val);
    if (id < 0 || id >= NQ_BPE_MAX_ID) {
      rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: token '%s' has id %lld outside [0, %d)", path,
                      show(key, klen, sh, sizeof sh), (long long)id, NQ_BPE_MAX_ID);
      break;
    }
    if ((rc = nq_bpe_vocab_add(b, key, klen, (int32_t)id, path, err))) break;
  }
  json_decref(root);
  return rc;
}

/* ---------------------------------------------------------------------------------------------- */
/* Merges */

static size_t pm_find(const nq_bpe_t *b, uint64_t key) {
  size_t mask = b->pm_cap - 1;
  size_t i = hash_u64(key) & mask;
  while (b->pm_keys[i] != UINT64_MAX && b->pm_keys[i] != key) i = (i + 1) & mask;
  return i;
}

static int pm_rehash(nq_bpe_t *b, size_t ncap) {
  uint64_t *k = malloc(ncap * sizeof *k);
  int32_t *r = malloc(ncap * sizeof *r);
  int32_t *s = malloc(ncap * sizeof *s);
  if (!k || !r || !s) {
    free(k), free(r), free(s);
    return -1;
  }
  memset(k, 0xff, ncap * sizeof *k);
  for (size_t i = 0; i < b->pm_cap; i++) {
    if (b->pm_keys[i] == UINT64_MAX) continue;
    size_t j = hash_u64(b->pm_keys[i]) & (ncap - 1);
    while (k[j] != UINT64_MAX) j = (j + 1) & (ncap - 1);
    k[j] = b->pm_keys[i];
    r[j] = b->pm_rank[i];
    s[j] = b->pm_sym[i];
  }
  free(b->pm_keys), free(b->pm_rank), free(b->pm_sym);
  b->pm_keys = k, b->pm_rank = r, b->pm_sym = s;
  b->pm_cap = ncap;
  return 0;
}

static int merge_add(nq_bpe_t *b, const char *l, size_t ln, const char *r, size_t rn, int32_t rank) {
  char buf[2 * NQ_BPE_MAX_TOKEN_BYTES];
  int32_t a = sym_intern(b, l, ln);
  int32_t c = sym_intern(b, r, rn);
  memcpy(buf, l, ln);
  memcpy(buf + ln, r, rn);
  int32_t m = sym_intern(b, buf, ln + rn);
  if (a < 0 || c < 0 || m < 0) return -1;
  if ((b->pm_n + 1) * 2 > b->pm_cap && pm_rehash(b, b->pm_cap * 2)) return -1;
  uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)c;
  size_t i = pm_find(b, key);
  if (b->pm_keys[i] == UINT64_MAX) {
    b->pm_keys[i] = key;
    b->pm_n++;
  }
  b->pm_rank[i] = rank; /* a repeated pair keeps the later rank */
  b->pm_sym[i] = m;
  return 0;
}

static int is_sp(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\f' || c == '\v'; }

int nq_bpe_merges_parse(nq_bpe_t *b, const char *text, size_t len, int skip_first_line, size_t max_merges,
                        const char *what, size_t *n_used, nq_err_t *err) {
  size_t pos = 0, line = 0, used = 0;
  if (n_used) *n_used = 0;
  if (skip_first_line) {
    const char *nl = memchr(text, '\n', len);
    pos = nl ? (size_t)(nl - text) + 1 : len;
    line = 1;
  }
  while (pos < len && (max_merges == 0 || used < max_merges)) {
    const char *s = text + pos;
    const char *nl = memchr(s, '\n', len - pos);
    size_t ll = nl ? (size_t)(nl - s) : len - pos;
    pos += ll + (nl ? 1 : 0);
    line++;
    /* Python's str.split(): up to two fields separated by runs of whitespace. */
    const char *f[3];
    size_t fl[3];
    int nf = 0;
    for (size_t i = 0; i < ll;) {
      while (i < ll && is_sp(s[i])) i++;
      if (i >= ll) break;
      size_t st = i;
      while (i < ll && !is_sp(s[i])) i++;
      if (nf < 3) {
        f[nf] = s + st;
        fl[nf] = i - st;
      }
      nf++;
    }
    int32_t rank = (int32_t)used++;
    if (nf == 0) {
      if (!nl && pos >= len) used--; /* the text after the final newline is not a merge */
      continue;
    }
    if (nf != 2)
      return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s line %zu: expected two space-separated symbols, found %d",
                        what, line, nf);
    if (fl[0] > NQ_BPE_MAX_TOKEN_BYTES || fl[1] > NQ_BPE_MAX_TOKEN_BYTES)
      return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s line %zu: symbol longer than %d bytes", what, line,
                        NQ_BPE_MAX_TOKEN_BYTES);
    if (used > (size_t)INT32_MAX / 2)
      return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: too many merges", what);
    if (merge_add(b, f[0], fl[0], f[1], fl[1], rank)) return oom(err, "merges");
  }
  if (n_used) *n_used = used;
  return 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* Byte table, finalize, lookups */

void nq_bpe_byte_to_unicode(uint32_t table[256]) {
  /* GPT-2: bytes '!'..'~', U+00A1..U+00AC and U+00AE..U+00FF stand for themselves; the remaining 68 bytes
   * get U+0100, U+0101, ... in increasing byte order. */
  uint32_t n = 0;
  for (uint32_t c = 0; c < 256; c++) {
    int keep = (c >= '!' && c <= '~') || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE && c <= 0xFF);
    table[c] = keep ? c : 256 + n++;
  }
}

static size_t put_utf8(char *o, uint32_t cp) {
  if (cp < 0x80) {
    o[0] = (char)cp;
    return 1;
  }
  if (cp < 0x800) {
    o[0] = (char)(0xC0 | (cp >> 6));
    o[1] = (char)(0x80 | (cp & 0x3F));
    return 2;
  }
  if (cp < 0x10000) {
    o[0] = (char)(0xE0 | (cp >> 12));
    o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
    o[2] = (char)(0x80 | (cp & 0x3F));
    return 3;
  }
  o[0] = (char)(0xF0 | (cp >> 18));
  o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
  o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
  o[3] = (char)(0x80 | (cp & 0x3F));
  return 4;
}

int nq_bpe_finalize(nq_bpe_t *b, int32_t unk_id, nq_err_t *err) {
  uint32_t tab[256];
  nq_bpe_byte_to_unicode(tab);
  for (int c = 0; c < 256; c++) {
    char buf[8 + NQ_BPE_MAX_TOKEN_BYTES];
    size_t n = put_utf8(buf, tab[c]);
    b->byte_sym[c] = sym_intern(b, buf, n);
    if (b->eow) {
      memcpy(buf + n, b->eow, b->eow_len);
      b->byte_sym_eow[c] = sym_intern(b, buf, n + b->eow_len);
    } else {
      b->byte_sym_eow[c] = b->byte_sym[c];
    }
    if (b->byte_sym[c] < 0 || b->byte_sym_eow[c] < 0) return oom(err, "byte symbols");
  }
  if (unk_id >= 0 && (unk_id >= b->id_cap || b->id2sym[unk_id] < 0))
    return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "bpe: unknown-token id %d is not in the vocabulary", unk_id);
  b->unk_id = unk_id;
  b->finalized = 1;
  return 0;
}

int32_t nq_bpe_token_id(const nq_bpe_t *b, const char *tok, size_t len) {
  int32_t s = sym_find(b, tok, len);
  return s < 0 ? -1 : b->sym_vid[s];
}

const char *nq_bpe_id_token(const nq_bpe_t *b, int32_t id, size_t *len) {
  if (id < 0 || id >= b->id_cap || b->id2sym[id] < 0) return NULL;
  int32_t s = b->id2sym[id];
  if (len) *len = b->sym_len[s];
  return b->sb + b->sym_off[s];
}

int32_t nq_bpe_vocab_size(const nq_bpe_t *b) { return b->vocab_size; }
size_t nq_bpe_merge_count(const nq_bpe_t *b) { return b->pm_n; }

/* ---------------------------------------------------------------------------------------------- */
/* Piece cache */

static int cache_get(nq_bpe_t *b, const char *p, size_t n, nq_bpe_ids_t *out, int *hit, nq_err_t *err) {
  *hit = 0;
  int rc = 0;
  pthread_mutex_lock(&b->mu);
  if (b->cs_cap) {
    size_t mask = b->cs_cap - 1;
    for (size_t i = hash_bytes(p, n) & mask;; i = (i + 1) & mask) {
      int32_t e = b->cache_slots[i];
      if (e < 0) break;
      const cache_ent_t *ce = &b->cache_ent[e];
      if (ce->key_len == n && memcmp(b->cache_keys + ce->key_off, p, n) == 0) {
        for (size_t k = 0; k < ce->ids_n && !rc; k++) rc = nq_bpe_ids_push(out, b->cache_ids[ce->ids_off + k], err);
        *hit = 1;
        break;
      }
    }
  }
  pthread_mutex_unlock(&b->mu);
  return rc;
}

static void cache_clear(nq_bpe_t *b) {
  b->ck_n = b->ci_n = b->ce_n = 0;
  if (b->cache_slots) memset(b->cache_slots, 0xff, b->cs_cap * sizeof *b->cache_slots);
}

/* Best effort: a failed allocation only means the piece is not memoised. */
static void cache_put(nq_bpe_t *b, const char *p, size_t n, const int32_t *ids, size_t nids) {
  if (n > 4096) return;
  pthread_mutex_lock(&b->mu);
  if (b->ce_n >= CACHE_MAX_ENTRIES || b->ck_n + n > CACHE_MAX_BYTES || b->ci_n + nids > CACHE_MAX_BYTES / 4)
    cache_clear(b);
  if (!b->cs_cap) {
    b->cache_slots = malloc(4096 * sizeof *b->cache_slots);
    if (!b->cache_slots) goto out;
    b->cs_cap = 4096;
    memset(b->cache_slots, 0xff, b->cs_cap * sizeof *b->cache_slots);
  }
  if ((b->ce_n + 1) * 2 > b->cs_cap) {
    size_t nc = b->cs_cap * 2;
    int32_t *ns = malloc(nc * sizeof *ns);
    if (!ns) goto out;
    memset(ns, 0xff, nc * sizeof *ns);
    for (size_t e = 0; e < b->ce_n; e++) {
      size_t i = hash_bytes(b->cache_keys + b->cache_ent[e].key_off, b->cache_ent[e].key_len) & (nc - 1);
      while (ns[i] >= 0) i = (i + 1) & (nc - 1);
      ns[i] = (int32_t)e;
    }
    free(b->cache_slots);
    b->cache_slots = ns;
    b->cs_cap = nc;
  }
  if (grow((void **)&b->cache_keys, &b->ck_cap, b->ck_n + n, 1)) goto out;
  if (grow((void **)&b->cache_ids, &b->ci_cap, b->ci_n + nids, sizeof *b->cache_ids)) goto out;
  if (grow((void **)&b->cache_ent, &b->ce_cap, b->ce_n + 1, sizeof *b->cache_ent)) goto out;
  cache_ent_t *ce = &b->cache_ent[b->ce_n];
  ce->key_off = b->ck_n;
  ce->key_len = n;
  ce->ids_off = b->ci_n;
  ce->ids_n = nids;
  memcpy(b->cache_keys + b->ck_n, p, n);
  if (nids) memcpy(b->cache_ids + b->ci_n, ids, nids * sizeof *ids);
  b->ck_n += n;
  b->ci_n += nids;
  size_t i = hash_bytes(p, n) & (b->cs_cap - 1);
  while (b->cache_slots[i] >= 0) i = (i + 1) & (b->cs_cap - 1);
  b->cache_slots[i] = (int32_t)b->ce_n++;
out:
  pthread_mutex_unlock(&b->mu);
}

/* ---------------------------------------------------------------------------------------------- */
/* The merge loop */

typedef struct cand {
  int32_t rank, pos; /* heap order: (rank, pos) */
  int32_t a, b;      /* the pair as pushed; a stale entry no longer matches the nodes */
} cand_t;

typedef struct heap {
  cand_t *v;
  size_t n, cap;
} heap_t;

static int cand_lt(const cand_t *x, const cand_t *y) {
  return x->rank < y->rank || (x->rank == y->rank && x->pos < y->pos);
}

static int heap_push(heap_t *h, cand_t c) {
  if (grow((void **)&h->v, &h->cap, h->n + 1, sizeof *h->v)) return -1;
  size_t i = h->n++;
  while (i > 0) {
    size_t p = (i - 1) / 2;
    if (!cand_lt(&c, &h->v[p])) break;
    h->v[i] = h->v[p];
    i = p;
  }
  h->v[i] = c;
  return 0;
}

static cand_t heap_pop(heap_t *h) {
  cand_t top = h->v[0];
  cand_t last = h->v[--h->n];
  size_t i = 0;
  for (;;) {
    size_t l = 2 * i + 1, r = l + 1, m = i;
    const cand_t *mv = &last;
    if (l < h->n && cand_lt(&h->v[l], mv)) m = l, mv = &h->v[l];
    if (r < h->n && cand_lt(&h->v[r], mv)) m = r;
    if (m == i) break;
    h->v[i] = h->v[m];
    i = m;
  }
  if (h->n) h->v[i] = last;
  return top;
}

/* Push the candidate pair starting at node p (if p has a right neighbour and the pair has a rank). */
static int push_pair(const nq_bpe_t *b, heap_t *h, const int32_t *sym, const int32_t *next, int32_t p) {
  if (p < 0 || next[p] < 0) return 0;
  int32_t a = sym[p], c = sym[next[p]];
  uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)c;
  size_t i = pm_find(b, key);
  if (b->pm_keys[i] == UINT64_MAX) return 0;
  cand_t cd = {b->pm_rank[i], p, a, c};
  return heap_push(h, cd);
}

int nq_bpe_encode_piece(nq_bpe_t *b, const char *piece, size_t n, nq_bpe_ids_t *out, nq_err_t *err) {
  NQ_ASSERT(b->finalized);
  if (n == 0) return 0;
  if (n > (size_t)INT32_MAX / 4) return nq_err_set(err, NQ_ELIMIT, NQ_ERR_FATAL, "bpe: piece of %zu bytes", n);
  int hit, rc = cache_get(b, piece, n, out, &hit, err);
  if (rc || hit) return rc;

  int32_t *sym = malloc(n * sizeof *sym), *next = malloc(n * sizeof *next), *prev = malloc(n * sizeof *prev);
  int32_t *touched = malloc(n * sizeof *touched);
  heap_t h = {0};
  size_t start = out->n;
  if (!sym || !next || !prev || !touched) {
    rc = oom(err, "piece");
    goto done;
  }
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)piece[i];
    sym[i] = i + 1 == n ? b->byte_sym_eow[c] : b->byte_sym[c];
    next[i] = i + 1 < n ? (int32_t)i + 1 : -1;
    prev[i] = (int32_t)i - 1;
  }
  for (size_t i = 0; i + 1 < n; i++)
    if (push_pair(b, &h, sym, next, (int32_t)i)) {
      rc = oom(err, "merge heap");
      goto done;
    }
  /* One pass per rank: merge every current occurrence of the lowest-ranked pair, left to right (the heap
   * yields them in position order); pairs created by the pass join the heap only after it, as in Python. */
  while (h.n) {
    int32_t rank = h.v[0].rank;
    size_t nt = 0;
    while (h.n && h.v[0].rank == rank) {
      cand_t cd = heap_pop(&h);
      int32_t p = cd.pos, q = next[p];
      if (sym[p] != cd.a || q < 0 || sym[q] != cd.b || sym[p] < 0) continue; /* stale */
      uint64_t key = (uint64_t)(uint32_t)cd.a << 32 | (uint32_t)cd.b;
      sym[p] = b->pm_sym[pm_find(b, key)];
      sym[q] = -1; /* dead */
      next[p] = next[q];
      if (next[q] >= 0) prev[next[q]] = p;
      touched[nt++] = p;
    }
    for (size_t t = 0; t < nt; t++) {
      int32_t p = touched[t];
      if (push_pair(b, &h, sym, next, prev[p]) || push_pair(b, &h, sym, next, p)) {
        rc = oom(err, "merge heap");
        goto done;
      }
    }
  }
  for (int32_t p = 0; p >= 0; p = next[p]) {
    int32_t id = b->sym_vid[sym[p]];
    if (id < 0) id = b->unk_id;
    if (id < 0) {
      char sh[96];
      rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "bpe: symbol '%s' is not in the vocabulary and there is no unknown token",
                      show(b->sb + b->sym_off[sym[p]], b->sym_len[sym[p]], sh, sizeof sh));
      goto done;
    }
    if ((rc = nq_bpe_ids_push(out, id, err))) goto done;
  }
  cache_put(b, piece, n, out->v + start, out->n - start);
done:
  if (rc) out->n = start;
  free(sym), free(next), free(prev), free(touched), free(h.v);
  return rc;
}

/* ---------------------------------------------------------------------------------------------- */
/* Decode */

/* UTF-8 with ill-formed sequences replaced by U+FFFD (maximal subparts, as Python's errors="replace"). */
static int utf8_repair(const char *in, size_t n, char **out, size_t *out_len, nq_err_t *err) {
  UErrorCode st = U_ZERO_ERROR;
  int32_t n16 = 0;
  if (n > (size_t)INT32_MAX / 4) return nq_err_set(err, NQ_ELIMIT, NQ_ERR_FATAL, "bpe: text of %zu bytes", n);
  u_strFromUTF8WithSub(NULL, 0, &n16, in, (int32_t)n, 0xFFFD, NULL, &st);
  if (st != U_BUFFER_OVERFLOW_ERROR && U_FAILURE(st))
    return nq_err_set(err, NQ_EINTERNAL, 0, "bpe: ICU u_strFromUTF8WithSub: %s", u_errorName(st));
  UChar *u = malloc(((size_t)n16 + 1) * sizeof *u);
  if (!u) return oom(err, "decode");
  st = U_ZERO_ERROR;
  u_strFromUTF8WithSub(u, n16 + 1, NULL, in, (int32_t)n, 0xFFFD, NULL, &st);
  int32_t n8 = 0;
  UErrorCode st2 = U_ZERO_ERROR;
  if (U_SUCCESS(st)) u_strToUTF8(NULL, 0, &n8, u, n16, &st2);
  char *o = U_SUCCESS(st) ? malloc((size_t)n8 + 1) : NULL;
  if (o) {
    st2 = U_ZERO_ERROR;
    u_strToUTF8(o, n8 + 1, NULL, u, n16, &st2);
  }
  free(u);
  if (!o || U_FAILURE(st2)) {
    free(o);
    if (U_FAILURE(st)) return nq_err_set(err, NQ_EINTERNAL, 0, "bpe: ICU: %s", u_errorName(st));
    if (U_FAILURE(st2)) return nq_err_set(err, NQ_EINTERNAL, 0, "bpe: ICU u_strToUTF8: %s", u_errorName(st2));
    return oom(err, "decode");
  }
  o[n8] = 0;
  *out = o;
  if (out_len) *out_len = (size_t)n8;
  return 0;
}

int nq_bpe_decode(const nq_bpe_t *b, const int32_t *ids, size_t n, int eow_as_space, nq_bpe_skip_fn skip,
                  const void *skip_ud, char **out, size_t *out_len, nq_err_t *err) {
  *out = NULL;
  uint32_t tab[256];
  int32_t inv[512]; /* code point (< 512) -> byte, -1 when not a byte character */
  nq_bpe_byte_to_unicode(tab);
  for (int i = 0; i < 512; i++) inv[i] = -1;
  for (int c = 0; c < 256; c++) inv[tab[c]] = c;
  char *raw = NULL;
  size_t rn = 0, rcap = 0;
  int rc = 0;
  for (size_t i = 0; i < n && !rc; i++) {
    if (skip && skip(skip_ud, ids[i])) continue;
    size_t tl;
    const char *t = nq_bpe_id_token(b, ids[i], &tl);
    if (!t) {
      rc = nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "bpe decode: id %d (position %zu) is not in the vocabulary", ids[i], i);
      break;
    }
    if (grow((void **)&raw, &rcap, rn + tl + 1, 1)) {
      rc = oom(err, "decode");
      break;
    }
    /* Walk the token's code points; byte characters become their byte, anything else stays UTF-8. */
    for (int32_t k = 0; k < (int32_t)tl;) {
      int32_t st = k;
      UChar32 c;
      U8_NEXT(t, k, (int32_t)tl, c);
      if (c >= 0 && c < 512 && inv[c] >= 0) raw[rn++] = (char)inv[c];
      else {
        memcpy(raw + rn, t + st, (size_t)(k - st));
        rn += (size_t)(k - st);
      }
    }
  }
  if (rc) {
    free(raw);
    return rc;
  }
  char *txt = NULL;
  size_t tn = 0;
  rc = utf8_repair(raw ? raw : "", rn, &txt, &tn, err);
  free(raw);
  if (rc) return rc;
  if (eow_as_space && b->eow) {
    size_t o = 0;
    for (size_t i = 0; i < tn;) {
      if (i + b->eow_len <= tn && memcmp(txt + i, b->eow, b->eow_len) == 0) {
        txt[o++] = ' ';
        i += b->eow_len;
      } else {
        txt[o++] = txt[i++];
      }
    }
    txt[o] = 0;
    tn = o;
  }
  *out = txt;
  if (out_len) *out_len = tn;
  return 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* Regex */

struct nq_bpe_re {
  pcre2_code *code; /* owned */
};

int nq_bpe_re_new(const char *pattern, unsigned flags, nq_bpe_re_t **out, nq_err_t *err) {
  *out = NULL;
  int ec;
  PCRE2_SIZE eo;
  uint32_t opt = PCRE2_UTF | PCRE2_UCP | ((flags & NQ_BPE_RE_CASELESS) ? PCRE2_CASELESS : 0);
  pcre2_code *code = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, opt, &ec, &eo, NULL);
  if (!code) {
    PCRE2_UCHAR msg[160];
    pcre2_get_error_message(ec, msg, sizeof msg);
    return nq_err_set(err, NQ_EINTERNAL, 0, "bpe: regex does not compile at offset %zu: %s", (size_t)eo, (char *)msg);
  }
  (void)pcre2_jit_compile(code, PCRE2_JIT_COMPLETE); /* optional speed-up; the interpreter is the fallback */
  nq_bpe_re_t *re = calloc(1, sizeof *re);
  if (!re) {
    pcre2_code_free(code);
    return oom(err, "regex");
  }
  re->code = code;
  *out = re;
  return 0;
}

void nq_bpe_re_free(nq_bpe_re_t *re) {
  if (!re) return;
  pcre2_code_free(re->code);
  free(re);
}

int nq_bpe_re_foreach(const nq_bpe_re_t *re, const char *text, size_t len, nq_bpe_piece_fn fn, void *ud, nq_err_t *err) {
  pcre2_match_data *md = pcre2_match_data_create_from_pattern(re->code, NULL);
  if (!md) return oom(err, "regex match data");
  int rc = 0;
  size_t off = 0;
  uint32_t opt = 0; /* PCRE2 validates the UTF-8 on the first call only: each check scans the whole subject */
  while (off < len) {
    int m = pcre2_match(re->code, (PCRE2_SPTR)text, len, off, opt, md, NULL);
    opt = PCRE2_NO_UTF_CHECK;
    if (m == PCRE2_ERROR_NOMATCH) break;
    if (m < 0) {
      PCRE2_UCHAR msg[160];
      pcre2_get_error_message(m, msg, sizeof msg);
      rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "bpe: regex match failed at byte %zu: %s", off, (char *)msg);
      break;
    }
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
    size_t s = ov[0], e = ov[1];
    if (e > s) {
      rc = fn(ud, text + s, e - s, err);
      if (rc) break;
      off = e;
    } else {
      /* An empty match (not produced by our patterns): step over one character. */
      off = e + 1;
      while (off < len && ((unsigned char)text[off] & 0xC0) == 0x80) off++;
    }
  }
  pcre2_match_data_free(md);
  return rc > 0 ? 0 : rc;
}

/* ---------------------------------------------------------------------------------------------- */
/* Text helpers */

int nq_bpe_utf8_check(const char *text, size_t len, const char *what, nq_err_t *err) {
  if (len > (size_t)INT32_MAX) return nq_err_set(err, NQ_ELIMIT, NQ_ERR_FATAL, "%s: %zu bytes is too long", what, len);
  for (int32_t i = 0; i < (int32_t)len;) {
    int32_t st = i;
    UChar32 c;
    U8_NEXT(text, i, (int32_t)len, c);
    if (c < 0) return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: invalid UTF-8 at byte %d", what, st);
  }
  return 0;
}

int nq_bpe_py_isspace(uint32_t cp) {
  if (cp > 0x10FFFF) return 0;
  if (u_charType((UChar32)cp) == U_SPACE_SEPARATOR) return 1;
  UCharDirection d = u_charDirection((UChar32)cp);
  return d == U_WHITE_SPACE_NEUTRAL || d == U_BLOCK_SEPARATOR || d == U_SEGMENT_SEPARATOR;
}

int nq_bpe_white_space(uint32_t cp) {
  return cp <= 0x10FFFF && u_hasBinaryProperty((UChar32)cp, UCHAR_WHITE_SPACE);
}

int nq_bpe_lower_utf8(const char *text, size_t len, char **out, size_t *out_len, nq_err_t *err) {
  *out = NULL;
  if (len > (size_t)INT32_MAX / 8) return nq_err_set(err, NQ_ELIMIT, NQ_ERR_FATAL, "lowercase: text of %zu bytes", len);
  UErrorCode st = U_ZERO_ERROR;
  int32_t n16 = 0;
  u_strFromUTF8(NULL, 0, &n16, text, (int32_t)len, &st);
  if (st != U_BUFFER_OVERFLOW_ERROR && U_FAILURE(st))
    return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "lowercase: invalid UTF-8 (%s)", u_errorName(st));
  UChar *u = malloc(((size_t)n16 + 1) * sizeof *u);
  UChar *l = NULL;
  char *o = NULL;
  int rc = 0;
  if (!u) return oom(err, "lowercase");
  st = U_ZERO_ERROR;
  u_strFromUTF8(u, n16 + 1, NULL, text, (int32_t)len, &st);
  if (U_FAILURE(st)) {
    rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "lowercase: invalid UTF-8 (%s)", u_errorName(st));
    goto done;
  }
  /* Full case mapping can lengthen the text (e.g. U+0130 -> i + U+0307): preflight, then map. */
  st = U_ZERO_ERROR;
  int32_t nl = u_strToLower(NULL, 0, u, n16, "", &st);
  if (st != U_BUFFER_OVERFLOW_ERROR && U_FAILURE(st)) {
    rc = nq_err_set(err, NQ_EINTERNAL, 0, "lowercase: ICU u_strToLower: %s", u_errorName(st));
    goto done;
  }
  l = malloc(((size_t)nl + 1) * sizeof *l);
  if (!l) {
    rc = oom(err, "lowercase");
    goto done;
  }
  st = U_ZERO_ERROR;
  u_strToLower(l, nl + 1, u, n16, "", &st);
  int32_t n8 = 0;
  if (U_SUCCESS(st)) u_strToUTF8(NULL, 0, &n8, l, nl, &st);
  if (st == U_BUFFER_OVERFLOW_ERROR) st = U_ZERO_ERROR;
  if (U_FAILURE(st)) {
    rc = nq_err_set(err, NQ_EINTERNAL, 0, "lowercase: ICU: %s", u_errorName(st));
    goto done;
  }
  o = malloc((size_t)n8 + 1);
  if (!o) {
    rc = oom(err, "lowercase");
    goto done;
  }
  u_strToUTF8(o, n8 + 1, NULL, l, nl, &st);
  if (U_FAILURE(st)) {
    rc = nq_err_set(err, NQ_EINTERNAL, 0, "lowercase: ICU u_strToUTF8: %s", u_errorName(st));
    free(o);
    o = NULL;
    goto done;
  }
  o[n8] = 0;
  *out = o;
  if (out_len) *out_len = (size_t)n8;
done:
  free(u);
  free(l);
  return rc;
}

/* ---------------------------------------------------------------------------------------------- */
/* Files */

static int ends_with(const char *s, const char *suf) {
  size_t n = strlen(s), m = strlen(suf);
  return n >= m && strcmp(s + n - m, suf) == 0;
}

int nq_bpe_read_file(const char *path, char **out, size_t *len, nq_err_t *err) {
  *out = NULL;
  *len = 0;
  char *buf = NULL;
  size_t n = 0, cap = 0;
  if (ends_with(path, ".gz")) {
    gzFile gz = gzopen(path, "rb");
    if (!gz) return nq_err_set(err, NQ_ENOENT, NQ_ERR_FATAL, "%s: cannot open: %s", path, strerror(errno));
    for (;;) {
      if (grow((void **)&buf, &cap, n + 65536 + 1, 1)) {
        gzclose(gz);
        free(buf);
        return oom(err, path);
      }
      int r = gzread(gz, buf + n, 65536);
      if (r < 0) break;
      n += (size_t)r;
      if (r == 0) break;
      if (n > NQ_BPE_MAX_FILE_BYTES) {
        gzclose(gz);
        free(buf);
        return nq_err_set(err, NQ_ELIMIT, NQ_ERR_FATAL, "%s: decompresses to more than %zu bytes", path,
                          NQ_BPE_MAX_FILE_BYTES);
      }
    }
    int zerr = Z_OK;
    const char *zmsg = gzerror(gz, &zerr);
    if (zerr != Z_OK && zerr != Z_STREAM_END) {
      int rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: corrupt gzip data after %zu bytes: %s", path, n,
                          zmsg ? zmsg : "?");
      gzclose(gz);
      free(buf);
      return rc;
    }
    gzclose(gz);
  } else {
    FILE *f = fopen(path, "rb");
    if (!f) return nq_err_set(err, NQ_ENOENT, NQ_ERR_FATAL, "%s: cannot open: %s", path, strerror(errno));
    for (;;) {
      if (grow((void **)&buf, &cap, n + 65536 + 1, 1)) {
        fclose(f);
        free(buf);
        return oom(err, path);
      }
      size_t r = fread(buf + n, 1, 65536, f);
      n += r;
      if (r == 0) break;
      if (n > NQ_BPE_MAX_FILE_BYTES) {
        fclose(f);
        free(buf);
        return nq_err_set(err, NQ_ELIMIT, NQ_ERR_FATAL, "%s: larger than %zu bytes", path, NQ_BPE_MAX_FILE_BYTES);
      }
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
      free(buf);
      return nq_err_set(err, NQ_EIO, NQ_ERR_RETRIABLE, "%s: read error", path);
    }
  }
  buf[n] = 0;
  *out = buf;
  *len = n;
  return 0;
}

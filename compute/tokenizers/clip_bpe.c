/* compute/tokenizers/clip_bpe.c — CLIP BPE tokenizer. See clip_bpe.h. */
#include "compute/tokenizers/clip_bpe.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unicode/utf8.h>

struct nq_clip_tok {
  nq_bpe_t *bpe;   /* owned */
  nq_bpe_re_t *re; /* owned */
  int32_t bos, eos;
};

static const char CLIP_PATTERN[] =
    "<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|"
    "[^\\p{White_Space}\\p{L}\\p{N}]+";

#define SOT "<|startoftext|>"
#define EOT "<|endoftext|>"

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

/* Build the vocabulary from the merges exactly as simple_tokenizer.py does: the 256 byte characters in
 * bytes_to_unicode order, the same with "</w>", one token per merge, then the two special tokens. */
static int load_gz(nq_bpe_t *b, const char *path, nq_err_t *err) {
  char *text = NULL;
  size_t len = 0;
  int rc = nq_bpe_read_file(path, &text, &len, err);
  if (rc) return rc;
  uint32_t tab[256];
  nq_bpe_byte_to_unicode(tab);
  int32_t id = 0;
  char tok[16];
  for (int pass = 0; pass < 2 && !rc; pass++) {
    /* bs order: the bytes that stand for themselves first, then the others. */
    for (int keep = 1; keep >= 0 && !rc; keep--)
      for (int c = 0; c < 256 && !rc; c++) {
        if ((tab[c] == (uint32_t)c) != keep) continue;
        int32_t n = 0;
        U8_APPEND_UNSAFE(tok, n, tab[c]);
        if (pass) {
          memcpy(tok + n, "</w>", 4);
          n += 4;
        }
        rc = nq_bpe_vocab_add(b, tok, (size_t)n, id++, path, err);
      }
  }
  /* One vocabulary token per merge line (lines 1..48894). */
  size_t pos = 0, line = 0;
  const char *nl = memchr(text, '\n', len);
  pos = nl ? (size_t)(nl - text) + 1 : len;
  while (!rc && line < NQ_CLIP_TOK_N_MERGES) {
    if (pos >= len) {
      rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: only %zu merges, expected at least %d", path, line,
                      NQ_CLIP_TOK_N_MERGES);
      break;
    }
    const char *s = text + pos;
    nl = memchr(s, '\n', len - pos);
    size_t ll = nl ? (size_t)(nl - s) : len - pos;
    pos += ll + (nl ? 1 : 0);
    line++;
    const char *sp = memchr(s, ' ', ll);
    if (!sp || sp == s || sp + 1 == s + ll || memchr(sp + 1, ' ', (size_t)(s + ll - sp - 1))) {
      rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s line %zu: expected two space-separated symbols", path,
                      line + 1);
      break;
    }
    size_t a = (size_t)(sp - s), c = ll - a - 1;
    if (a + c > NQ_BPE_MAX_TOKEN_BYTES) {
      rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s line %zu: symbols too long", path, line + 1);
      break;
    }
    char cat[NQ_BPE_MAX_TOKEN_BYTES];
    memcpy(cat, s, a);
    memcpy(cat + a, sp + 1, c);
    rc = nq_bpe_vocab_add(b, cat, a + c, id++, path, err);
  }
  if (!rc) rc = nq_bpe_vocab_add(b, SOT, strlen(SOT), id++, path, err);
  if (!rc) rc = nq_bpe_vocab_add(b, EOT, strlen(EOT), id++, path, err);
  if (!rc) rc = nq_bpe_merges_parse(b, text, len, 1, NQ_CLIP_TOK_N_MERGES, path, NULL, err);
  free(text);
  return rc;
}

static int load_hf(nq_bpe_t *b, const char *vocab, const char *merges, nq_err_t *err) {
  int rc = nq_bpe_vocab_load_json(b, vocab, err);
  if (rc) return rc;
  char *text = NULL;
  size_t len = 0;
  if ((rc = nq_bpe_read_file(merges, &text, &len, err))) return rc;
  size_t used = 0;
  rc = nq_bpe_merges_parse(b, text, len, 1, NQ_CLIP_TOK_N_MERGES, merges, &used, err);
  free(text);
  if (!rc && used == 0) rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: no merges", merges);
  return rc;
}

int nq_clip_tok_open(const char *path, nq_clip_tok_t **out, nq_err_t *err) {
  *out = NULL;
  if (!path || !*path) return nq_err_set(err, NQ_EINVAL, 0, "clip tokenizer: no path given");
  size_t pl = strlen(path);
  char *vocab = malloc(pl + 64), *merges = malloc(pl + 64), *gz = malloc(pl + 64);
  nq_clip_tok_t *t = calloc(1, sizeof *t);
  int rc = 0;
  if (!vocab || !merges || !gz || !t) {
    rc = nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "clip tokenizer: out of memory");
    goto fail;
  }
  vocab[0] = merges[0] = gz[0] = 0;
  if (is_file(path)) {
    if (ends_with(path, ".gz")) {
      strcpy(gz, path);
    } else {
      const char *slash = strrchr(path, '/');
      int dl = slash ? (int)(slash - path + 1) : 0;
      if (ends_with(path, "vocab.json") || ends_with(path, "merges.txt")) {
        sprintf(vocab, "%.*svocab.json", dl, path);
        sprintf(merges, "%.*smerges.txt", dl, path);
      } else {
        rc = nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL,
                        "%s: not a CLIP tokenizer file (expected *.gz, vocab.json or merges.txt)", path);
        goto fail;
      }
    }
  } else if (is_dir(path)) {
    static const char *const sub[] = {"", "/tokenizer"};
    for (int i = 0; i < 2 && !vocab[0] && !gz[0]; i++) {
      sprintf(vocab, "%s%s/vocab.json", path, sub[i]);
      sprintf(merges, "%s%s/merges.txt", path, sub[i]);
      if (is_file(vocab) && is_file(merges)) break;
      vocab[0] = merges[0] = 0;
      sprintf(gz, "%s%s/bpe_simple_vocab_16e6.txt.gz", path, sub[i]);
      if (!is_file(gz)) gz[0] = 0;
    }
    if (!vocab[0] && !gz[0]) {
      rc = nq_err_set(err, NQ_ENOENT, NQ_ERR_FATAL,
                      "%s: no vocab.json + merges.txt or bpe_simple_vocab_16e6.txt.gz (also looked in tokenizer/)", path);
      goto fail;
    }
  } else {
    rc = nq_err_set(err, NQ_ENOENT, NQ_ERR_FATAL, "%s: no such file or directory", path);
    goto fail;
  }
  if ((rc = nq_bpe_new("</w>", &t->bpe, err))) goto fail;
  rc = gz[0] ? load_gz(t->bpe, gz, err) : load_hf(t->bpe, vocab, merges, err);
  if (rc) goto fail;
  const char *src = gz[0] ? gz : vocab;
  t->bos = nq_bpe_token_id(t->bpe, SOT, strlen(SOT));
  t->eos = nq_bpe_token_id(t->bpe, EOT, strlen(EOT));
  if (t->bos < 0 || t->eos < 0) {
    rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: the vocabulary lacks %s", src, t->bos < 0 ? SOT : EOT);
    goto fail;
  }
  /* HF CLIPTokenizer's unk_token is <|endoftext|> (byte-level symbols are never unknown in practice). */
  if ((rc = nq_bpe_finalize(t->bpe, t->eos, err))) goto fail;
  if ((rc = nq_bpe_re_new(CLIP_PATTERN, NQ_BPE_RE_CASELESS, &t->re, err))) goto fail;
  free(vocab), free(merges), free(gz);
  *out = t;
  return 0;
fail:
  free(vocab), free(merges), free(gz);
  nq_clip_tok_free(t);
  return rc;
}

void nq_clip_tok_free(nq_clip_tok_t *tok) {
  if (!tok) return;
  nq_bpe_free(tok->bpe);
  nq_bpe_re_free(tok->re);
  free(tok);
}

int32_t nq_clip_tok_bos(const nq_clip_tok_t *tok) { return tok->bos; }
int32_t nq_clip_tok_eos(const nq_clip_tok_t *tok) { return tok->eos; }
int32_t nq_clip_tok_vocab_size(const nq_clip_tok_t *tok) { return nq_bpe_vocab_size(tok->bpe); }

/* ---------------------------------------------------------------------------------------------- */
/* html.unescape */

/* Named references: the HTML 4 set without the Greek letters and math symbols. The `legacy` ones (the
 * Latin-1 block and amp/lt/gt/quot) are also recognised without the trailing ';', as HTML5 says. */
typedef struct entity {
  const char *name;
  uint32_t cp;
  int legacy;
} entity_t;

static const entity_t ENTITIES[] = {
    {"amp", '&', 1}, {"AMP", '&', 1}, {"lt", '<', 1}, {"LT", '<', 1}, {"gt", '>', 1}, {"GT", '>', 1},
    {"quot", '"', 1}, {"QUOT", '"', 1}, {"COPY", 0xA9, 1}, {"REG", 0xAE, 1}, {"apos", '\'', 0},
    /* U+00A0..U+00FF in order */
    {"nbsp", 0xA0, 1}, {"iexcl", 0xA1, 1}, {"cent", 0xA2, 1}, {"pound", 0xA3, 1}, {"curren", 0xA4, 1},
    {"yen", 0xA5, 1}, {"brvbar", 0xA6, 1}, {"sect", 0xA7, 1}, {"uml", 0xA8, 1}, {"copy", 0xA9, 1},
    {"ordf", 0xAA, 1}, {"laquo", 0xAB, 1}, {"not", 0xAC, 1}, {"shy", 0xAD, 1}, {"reg", 0xAE, 1},
    {"macr", 0xAF, 1}, {"deg", 0xB0, 1}, {"plusmn", 0xB1, 1}, {"sup2", 0xB2, 1}, {"sup3", 0xB3, 1},
    {"acute", 0xB4, 1}, {"micro", 0xB5, 1}, {"para", 0xB6, 1}, {"middot", 0xB7, 1}, {"cedil", 0xB8, 1},
    {"sup1", 0xB9, 1}, {"ordm", 0xBA, 1}, {"raquo", 0xBB, 1}, {"frac14", 0xBC, 1}, {"frac12", 0xBD, 1},
    {"frac34", 0xBE, 1}, {"iquest", 0xBF, 1}, {"Agrave", 0xC0, 1}, {"Aacute", 0xC1, 1}, {"Acirc", 0xC2, 1},
    {"Atilde", 0xC3, 1}, {"Auml", 0xC4, 1}, {"Aring", 0xC5, 1}, {"AElig", 0xC6, 1}, {"Ccedil", 0xC7, 1},
    {"Egrave", 0xC8, 1}, {"Eacute", 0xC9, 1}, {"Ecirc", 0xCA, 1}, {"Euml", 0xCB, 1}, {"Igrave", 0xCC, 1},
    {"Iacute", 0xCD, 1}, {"Icirc", 0xCE, 1}, {"Iuml", 0xCF, 1}, {"ETH", 0xD0, 1}, {"Ntilde", 0xD1, 1},
    {"Ograve", 0xD2, 1}, {"Oacute", 0xD3, 1}, {"Ocirc", 0xD4, 1}, {"Otilde", 0xD5, 1}, {"Ouml", 0xD6, 1},
    {"times", 0xD7, 1}, {"Oslash", 0xD8, 1}, {"Ugrave", 0xD9, 1}, {"Uacute", 0xDA, 1}, {"Ucirc", 0xDB, 1},
    {"Uuml", 0xDC, 1}, {"Yacute", 0xDD, 1}, {"THORN", 0xDE, 1}, {"szlig", 0xDF, 1}, {"agrave", 0xE0, 1},
    {"aacute", 0xE1, 1}, {"acirc", 0xE2, 1}, {"atilde", 0xE3, 1}, {"auml", 0xE4, 1}, {"aring", 0xE5, 1},
    {"aelig", 0xE6, 1}, {"ccedil", 0xE7, 1}, {"egrave", 0xE8, 1}, {"eacute", 0xE9, 1}, {"ecirc", 0xEA, 1},
    {"euml", 0xEB, 1}, {"igrave", 0xEC, 1}, {"iacute", 0xED, 1}, {"icirc", 0xEE, 1}, {"iuml", 0xEF, 1},
    {"eth", 0xF0, 1}, {"ntilde", 0xF1, 1}, {"ograve", 0xF2, 1}, {"oacute", 0xF3, 1}, {"ocirc", 0xF4, 1},
    {"otilde", 0xF5, 1}, {"ouml", 0xF6, 1}, {"divide", 0xF7, 1}, {"oslash", 0xF8, 1}, {"ugrave", 0xF9, 1},
    {"uacute", 0xFA, 1}, {"ucirc", 0xFB, 1}, {"uuml", 0xFC, 1}, {"yacute", 0xFD, 1}, {"thorn", 0xFE, 1},
    {"yuml", 0xFF, 1},
    /* HTML 4 special and punctuation entities (';' required) */
    {"OElig", 0x152, 0}, {"oelig", 0x153, 0}, {"Scaron", 0x160, 0}, {"scaron", 0x161, 0}, {"Yuml", 0x178, 0},
    {"fnof", 0x192, 0}, {"circ", 0x2C6, 0}, {"tilde", 0x2DC, 0}, {"ensp", 0x2002, 0}, {"emsp", 0x2003, 0},
    {"thinsp", 0x2009, 0}, {"zwnj", 0x200C, 0}, {"zwj", 0x200D, 0}, {"lrm", 0x200E, 0}, {"rlm", 0x200F, 0},
    {"ndash", 0x2013, 0}, {"mdash", 0x2014, 0}, {"lsquo", 0x2018, 0}, {"rsquo", 0x2019, 0},
    {"sbquo", 0x201A, 0}, {"ldquo", 0x201C, 0}, {"rdquo", 0x201D, 0}, {"bdquo", 0x201E, 0},
    {"dagger", 0x2020, 0}, {"Dagger", 0x2021, 0}, {"bull", 0x2022, 0}, {"hellip", 0x2026, 0},
    {"permil", 0x2030, 0}, {"prime", 0x2032, 0}, {"Prime", 0x2033, 0}, {"lsaquo", 0x2039, 0},
    {"rsaquo", 0x203A, 0}, {"oline", 0x203E, 0}, {"frasl", 0x2044, 0}, {"euro", 0x20AC, 0},
    {"trade", 0x2122, 0}, {"larr", 0x2190, 0}, {"uarr", 0x2191, 0}, {"rarr", 0x2192, 0}, {"darr", 0x2193, 0},
    {"harr", 0x2194, 0}, {"spades", 0x2660, 0}, {"clubs", 0x2663, 0}, {"hearts", 0x2665, 0},
    {"diams", 0x2666, 0},
};

/* name (exact bytes) -> entity, requiring `legacy` when the reference had no ';'. */
static const entity_t *entity_find(const char *s, size_t n, int with_semicolon) {
  for (size_t i = 0; i < sizeof ENTITIES / sizeof ENTITIES[0]; i++) {
    const entity_t *e = &ENTITIES[i];
    if (strlen(e->name) == n && memcmp(e->name, s, n) == 0 && (with_semicolon || e->legacy)) return e;
  }
  return NULL;
}

/* Python html._invalid_charrefs: what the HTML5 spec substitutes for these numeric references. */
static uint32_t charref_fixup(uint32_t num, int *hit) {
  static const uint16_t w1252[32] = {0x20AC, 0x0081, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021,
                                     0x02C6, 0x2030, 0x0160, 0x2039, 0x0152, 0x008D, 0x017D, 0x008F,
                                     0x0090, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022, 0x2013, 0x2014,
                                     0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0x009D, 0x017E, 0x0178};
  *hit = 1;
  if (num == 0) return 0xFFFD;
  if (num == 0x0D) return 0x0D;
  if (num >= 0x80 && num <= 0x9F) return w1252[num - 0x80];
  *hit = 0;
  return 0;
}

/* Python html._invalid_codepoints: references to these expand to nothing. */
static int invalid_codepoint(uint32_t c) {
  return (c >= 0x1 && c <= 0x8) || c == 0xB || (c >= 0xE && c <= 0x1F) || (c >= 0x7F && c <= 0x9F) ||
         (c >= 0xFDD0 && c <= 0xFDEF) || ((c & 0xFFFE) == 0xFFFE && c <= 0x10FFFF);
}

static int is_digit(char c) { return c >= '0' && c <= '9'; }
static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

int nq_clip_tok_html_unescape(const char *text, size_t len, char **out, size_t *out_len, nq_err_t *err) {
  *out = NULL;
  /* Every reference is at least as long as its replacement (max 4 bytes for >= 3 input bytes, 3 bytes of
   * U+FFFD for "&#0" / "&#x0" ...), so len + 1 bytes always suffice. */
  char *o = malloc(len + 4);
  if (!o) return nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "html unescape: out of memory (%zu bytes)", len);
  size_t n = 0;
  for (size_t i = 0; i < len;) {
    if (text[i] != '&') {
      o[n++] = text[i++];
      continue;
    }
    size_t j = i + 1;
    if (j < len && text[j] == '#') {
      /* &#[0-9]+;?  |  &#[xX][0-9a-fA-F]+;? */
      int hex = j + 1 < len && (text[j + 1] == 'x' || text[j + 1] == 'X');
      size_t k = j + 1 + (hex ? 1 : 0), st = k;
      uint64_t num = 0;
      while (k < len && (hex ? hexval(text[k]) >= 0 : is_digit(text[k]))) {
        if (num <= 0x10FFFF) num = num * (hex ? 16 : 10) + (uint64_t)(hex ? hexval(text[k]) : text[k] - '0');
        k++;
      }
      if (k == st) { /* no digits: not a reference ('#' cannot start a name either) */
        o[n++] = text[i++];
        continue;
      }
      if (k < len && text[k] == ';') k++;
      int hit;
      uint32_t cp = charref_fixup((uint32_t)(num > 0x10FFFF ? 0x110000 : num), &hit);
      if (!hit) {
        if ((num >= 0xD800 && num <= 0xDFFF) || num > 0x10FFFF) cp = 0xFFFD;
        else if (invalid_codepoint((uint32_t)num)) cp = 0; /* dropped */
        else cp = (uint32_t)num;
      }
      if (cp) {
        int32_t w = 0;
        U8_APPEND_UNSAFE(o + n, w, cp);
        n += (size_t)w;
      }
      i = k;
      continue;
    }
    /* &[^\t\n\f <&#;]{1,32};? — up to 32 code points */
    size_t k = j;
    int chars = 0;
    while (k < len && chars < 32) {
      char c = text[k];
      if (c == '\t' || c == '\n' || c == '\f' || c == ' ' || c == '<' || c == '&' || c == '#' || c == ';') break;
      k++;
      while (k < len && ((unsigned char)text[k] & 0xC0) == 0x80) k++;
      chars++;
    }
    if (chars == 0) {
      o[n++] = text[i++];
      continue;
    }
    int semi = k < len && text[k] == ';';
    size_t name_end = k, end = k + (semi ? 1 : 0);
    const entity_t *e = entity_find(text + j, name_end - j, semi);
    size_t used = name_end - j; /* bytes of the name consumed by the entity */
    if (!e) {
      /* Longest prefix (>= 2 characters) that is a legacy name; names are ASCII, so bytes = characters. */
      size_t maxp = semi ? name_end - j : name_end - j - 1;
      for (size_t p = maxp; p >= 2 && !e; p--) {
        e = entity_find(text + j, p, 0);
        if (e) used = p;
      }
    }
    if (!e) { /* not a reference: copied as it is */
      memcpy(o + n, text + i, end - i);
      n += end - i;
      i = end;
      continue;
    }
    int32_t w = 0;
    U8_APPEND_UNSAFE(o + n, w, e->cp);
    n += (size_t)w;
    if (used == name_end - j) {
      i = end; /* the whole name (and its ';') */
    } else {
      i = j + used; /* the rest of the name and the ';' stay as text */
    }
  }
  o[n] = 0;
  *out = o;
  if (out_len) *out_len = n;
  return 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* Cleaning */

/* strip (str.isspace) + collapse runs of White_Space to ' ' + strip, on valid UTF-8. In place-safe: the
 * output is never longer than the input. */
static size_t whitespace_clean(const char *in, size_t n, char *o) {
  /* basic_clean's strip() */
  int32_t s = 0, e = (int32_t)n;
  while (s < e) {
    int32_t k = s;
    UChar32 c;
    U8_NEXT(in, k, e, c);
    if (c < 0 || !nq_bpe_py_isspace((uint32_t)c)) break;
    s = k;
  }
  while (e > s) {
    int32_t k = e;
    UChar32 c;
    U8_PREV(in, s, k, c);
    if (c < 0 || !nq_bpe_py_isspace((uint32_t)c)) break;
    e = k;
  }
  /* re.sub(r'\s+', ' ', text) with the regex module's \s (White_Space) */
  size_t m = 0;
  int in_ws = 0;
  for (int32_t i = s; i < e;) {
    int32_t st = i;
    UChar32 c;
    U8_NEXT(in, i, e, c);
    if (c >= 0 && nq_bpe_white_space((uint32_t)c)) {
      if (!in_ws) o[m++] = ' ';
      in_ws = 1;
    } else {
      memmove(o + m, in + st, (size_t)(i - st));
      m += (size_t)(i - st);
      in_ws = 0;
    }
  }
  /* the final strip() */
  int32_t a = 0, z = (int32_t)m;
  while (a < z) {
    int32_t k = a;
    UChar32 c;
    U8_NEXT(o, k, z, c);
    if (c < 0 || !nq_bpe_py_isspace((uint32_t)c)) break;
    a = k;
  }
  while (z > a) {
    int32_t k = z;
    UChar32 c;
    U8_PREV(o, a, k, c);
    if (c < 0 || !nq_bpe_py_isspace((uint32_t)c)) break;
    z = k;
  }
  memmove(o, o + a, (size_t)(z - a));
  o[z - a] = 0;
  return (size_t)(z - a);
}

int nq_clip_tok_clean(const char *text, size_t len, char **out, size_t *out_len, nq_err_t *err) {
  *out = NULL;
  int rc = nq_bpe_utf8_check(text, len, "clip tokenizer input", err);
  if (rc) return rc;
  char *u1 = NULL, *u2 = NULL;
  size_t n1 = 0, n2 = 0;
  if ((rc = nq_clip_tok_html_unescape(text, len, &u1, &n1, err))) return rc;
  rc = nq_clip_tok_html_unescape(u1, n1, &u2, &n2, err);
  free(u1);
  if (rc) return rc;
  n2 = whitespace_clean(u2, n2, u2);
  rc = nq_bpe_lower_utf8(u2, n2, out, out_len, err);
  free(u2);
  return rc;
}

/* ---------------------------------------------------------------------------------------------- */
/* Encode / decode */

typedef struct enc_ctx {
  const nq_clip_tok_t *tok;
  nq_bpe_ids_t *out;
  size_t start, limit;
} enc_ctx_t;

static int on_piece(void *ud, const char *p, size_t n, nq_err_t *err) {
  enc_ctx_t *c = ud;
  int rc;
  if (n == strlen(SOT) && memcmp(p, SOT, n) == 0) rc = nq_bpe_ids_push(c->out, c->tok->bos, err);
  else if (n == strlen(EOT) && memcmp(p, EOT, n) == 0) rc = nq_bpe_ids_push(c->out, c->tok->eos, err);
  else rc = nq_bpe_encode_piece(c->tok->bpe, p, n, c->out, err);
  if (rc) return rc;
  return c->limit && c->out->n - c->start >= c->limit ? 1 : 0;
}

int nq_clip_tok_encode_raw(const nq_clip_tok_t *tok, const char *text, size_t len, size_t limit, nq_bpe_ids_t *out,
                           nq_err_t *err) {
  char *clean = NULL;
  size_t cn = 0;
  int rc = nq_clip_tok_clean(text, len, &clean, &cn, err);
  if (rc) return rc;
  enc_ctx_t c = {tok, out, out->n, limit};
  rc = nq_bpe_re_foreach(tok->re, clean, cn, on_piece, &c, err);
  free(clean);
  return rc;
}

int nq_clip_tok_encode(const nq_clip_tok_t *tok, const char *text, size_t len, int max_len, int pad_id, int32_t *ids,
                       int *n_real, nq_err_t *err) {
  if (max_len < 2) return nq_err_set(err, NQ_EINVAL, 0, "clip tokenizer: max_len %d (must be >= 2)", max_len);
  if (pad_id < 0) pad_id = tok->eos;
  if (pad_id >= nq_bpe_vocab_size(tok->bpe))
    return nq_err_set(err, NQ_EINVAL, 0, "clip tokenizer: pad id %d outside the vocabulary (%d)", pad_id,
                      nq_bpe_vocab_size(tok->bpe));
  nq_bpe_ids_t c = {0};
  size_t room = (size_t)max_len - 2;
  int rc = room ? nq_clip_tok_encode_raw(tok, text, len, room, &c, err) : 0;
  if (rc) {
    nq_bpe_ids_free(&c);
    return rc;
  }
  size_t nc = c.n < room ? c.n : room;
  ids[0] = tok->bos;
  if (nc) memcpy(ids + 1, c.v, nc * sizeof *ids);
  ids[nc + 1] = tok->eos;
  for (size_t i = nc + 2; i < (size_t)max_len; i++) ids[i] = pad_id;
  if (n_real) *n_real = (int)nc + 2;
  nq_bpe_ids_free(&c);
  return 0;
}

static int skip_special(const void *ud, int32_t id) {
  const nq_clip_tok_t *t = ud;
  return id == t->bos || id == t->eos;
}

int nq_clip_tok_decode(const nq_clip_tok_t *tok, const int32_t *ids, size_t n, int skip, char **out, nq_err_t *err) {
  return nq_bpe_decode(tok->bpe, ids, n, 1, skip ? skip_special : NULL, tok, out, NULL, err);
}

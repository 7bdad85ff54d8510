/* tests/unit/test_tokenizer_bpe.c — CLIP and RoBERTa byte-level BPE tokenizers against the golden cases
 * (../shared/golden/text/clip-tokenize, ../shared/golden/audio/roberta-tokenize) and OpenAI CLIP's reference
 * ids (../shared/models/clip/clip_tokenizer_reference.json). */
#include <criterion/criterion.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include "compute/io/safetensors.h"
#include "compute/tokenizers/bpe.h"
#include "compute/tokenizers/clip_bpe.h"
#include "compute/tokenizers/roberta_bpe.h"

#define CLIP_CASE NQ_SHARED_DIR "/golden/text/clip-tokenize"
#define ROBERTA_CASE NQ_SHARED_DIR "/golden/audio/roberta-tokenize"
#define CLIP_GZ NQ_SHARED_DIR "/models/clip/bpe_simple_vocab_16e6.txt.gz"
#define CLIP_REF NQ_SHARED_DIR "/models/clip/clip_tokenizer_reference.json"

/* ---------------------------------------------------------------------------------------------- */
/* Helpers */

typedef struct golden {
  nq_st_file_t *in, *exp;
  json_t *params;         /* case.json params */
  int n;                  /* number of text_NNN */
  const int64_t *ids;     /* [n, L] */
  const int64_t *mask;    /* [n, L] or NULL */
  int L;
} golden_t;

static void golden_open(golden_t *g, const char *dir, int with_mask) {
  char p[512];
  nq_err_t err = {0};
  memset(g, 0, sizeof *g);
  snprintf(p, sizeof p, "%s/inputs.safetensors", dir);
  cr_assert_eq(nq_st_open(p, &g->in, &err), 0, "%s", err.msg);
  snprintf(p, sizeof p, "%s/expected.safetensors", dir);
  cr_assert_eq(nq_st_open(p, &g->exp, &err), 0, "%s", err.msg);
  snprintf(p, sizeof p, "%s/case.json", dir);
  json_error_t je;
  json_t *c = json_load_file(p, 0, &je);
  cr_assert_not_null(c, "%s: %s", p, je.text);
  g->params = json_incref(json_object_get(c, "params"));
  json_decref(c);
  for (;; g->n++) {
    snprintf(p, sizeof p, "text_%03d", g->n);
    if (!nq_st_find(g->in, p)) break;
  }
  cr_assert_gt(g->n, 0);
  const nq_st_tensor_t *t = nq_st_find(g->exp, "input_ids");
  cr_assert_not_null(t);
  cr_assert_eq(t->dtype, NQ_DT_I64);
  cr_assert_eq(t->ndim, 2);
  cr_assert_eq(t->shape[0], g->n);
  g->L = (int)t->shape[1];
  g->ids = t->data;
  if (with_mask) {
    const nq_st_tensor_t *m = nq_st_find(g->exp, "attention_mask");
    cr_assert_not_null(m);
    cr_assert_eq(m->dtype, NQ_DT_I64);
    cr_assert_eq(m->shape[0], g->n);
    cr_assert_eq(m->shape[1], g->L);
    g->mask = m->data;
  }
}

static void golden_close(golden_t *g) {
  nq_st_close(g->in);
  nq_st_close(g->exp);
  json_decref(g->params);
}

static const char *golden_text(const golden_t *g, int i, size_t *len) {
  char name[32];
  snprintf(name, sizeof name, "text_%03d", i);
  const nq_st_tensor_t *t = nq_st_find(g->in, name);
  cr_assert_not_null(t);
  cr_assert_eq(t->dtype, NQ_DT_U8);
  *len = t->nbytes;
  return t->nbytes ? t->data : "";
}

static long long param_int(const golden_t *g, const char *key) {
  const json_t *v = json_object_get(g->params, key);
  cr_assert(json_is_integer(v), "case.json params.%s", key);
  return json_integer_value(v);
}

static char *mkdtmp(void) {
  char *d = strdup("/tmp/nq_tokbpe_XXXXXX");
  cr_assert_not_null(mkdtemp(d));
  return d;
}

static void write_file(const char *dir, const char *name, const void *data, size_t n) {
  char p[512];
  snprintf(p, sizeof p, "%s/%s", dir, name);
  FILE *f = fopen(p, "wb");
  cr_assert_not_null(f, "%s", p);
  cr_assert_eq(fwrite(data, 1, n, f), n);
  fclose(f);
}

static void copy_file(const char *src, const char *dir, const char *name, size_t max_bytes) {
  FILE *f = fopen(src, "rb");
  cr_assert_not_null(f, "%s", src);
  size_t cap = 4 << 20, n;
  char *buf = malloc(cap);
  n = fread(buf, 1, cap, f);
  fclose(f);
  write_file(dir, name, buf, n < max_bytes ? n : max_bytes);
  free(buf);
}

static void rm_rf(char *dir) {
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  cr_assert_eq(system(cmd), 0);
  free(dir);
}

/* ---------------------------------------------------------------------------------------------- */
/* CLIP against the golden case */

static void check_clip_golden(const char *tok_path) {
  golden_t g;
  golden_open(&g, CLIP_CASE, 0);
  int max_len = (int)param_int(&g, "max_length"), pad = (int)param_int(&g, "pad_id");
  cr_assert_eq(max_len, g.L);
  nq_err_t err = {0};
  nq_clip_tok_t *tok = NULL;
  cr_assert_eq(nq_clip_tok_open(tok_path, &tok, &err), 0, "%s", err.msg);
  cr_assert_eq(nq_clip_tok_bos(tok), param_int(&g, "bos_id"));
  cr_assert_eq(nq_clip_tok_eos(tok), param_int(&g, "eos_id"));
  cr_assert_eq(nq_clip_tok_vocab_size(tok), 49408);
  int32_t *ids = malloc((size_t)max_len * sizeof *ids);
  for (int i = 0; i < g.n; i++) {
    size_t len;
    const char *text = golden_text(&g, i, &len);
    int n_real = -1;
    cr_assert_eq(nq_clip_tok_encode(tok, text, len, max_len, pad, ids, &n_real, &err), 0, "text_%03d: %s", i, err.msg);
    for (int k = 0; k < max_len; k++)
      cr_assert_eq(ids[k], g.ids[(size_t)i * max_len + k], "%s text_%03d '%.*s' position %d: got %d, expected %lld",
                   tok_path, i, (int)len, text, k, ids[k], (long long)g.ids[(size_t)i * max_len + k]);
    cr_assert(n_real >= 2 && n_real <= max_len);
    cr_assert_eq(ids[n_real - 1], nq_clip_tok_eos(tok));
  }
  free(ids);
  nq_clip_tok_free(tok);
  golden_close(&g);
}

Test(clip_bpe, golden_hf_vocab_merges) { check_clip_golden(CLIP_CASE "/model"); }
Test(clip_bpe, golden_hf_vocab_json_path) { check_clip_golden(CLIP_CASE "/model/vocab.json"); }
Test(clip_bpe, golden_openai_gz) { check_clip_golden(CLIP_GZ); }

/* SD-2 / ZeroScope: the same ids, padded with 0 after the first end token. */
Test(clip_bpe, golden_pad_zero) {
  golden_t g;
  golden_open(&g, CLIP_CASE, 0);
  nq_err_t err = {0};
  nq_clip_tok_t *tok = NULL;
  cr_assert_eq(nq_clip_tok_open(CLIP_CASE "/model", &tok, &err), 0, "%s", err.msg);
  int32_t ids[77];
  int saw_pad = 0;
  for (int i = 0; i < g.n; i++) {
    size_t len;
    const char *text = golden_text(&g, i, &len);
    int n_real;
    cr_assert_eq(nq_clip_tok_encode(tok, text, len, 77, NQ_CLIP_TOK_PAD_SD2, ids, &n_real, &err), 0, "%s", err.msg);
    const int64_t *e = g.ids + (size_t)i * 77;
    int first_eos = 0;
    while (e[first_eos] != 49407) first_eos++;
    cr_assert_eq(n_real, first_eos + 1, "text_%03d", i);
    for (int k = 0; k < 77; k++) cr_assert_eq(ids[k], k <= first_eos ? e[k] : 0, "text_%03d position %d", i, k);
    saw_pad |= first_eos < 76;
  }
  cr_assert(saw_pad);
  nq_clip_tok_free(tok);
  golden_close(&g);
}

/* The golden case's long prompts are cut at 77; a shorter max_len cuts the same ids earlier. */
Test(clip_bpe, truncation_short_max_len) {
  golden_t g;
  golden_open(&g, CLIP_CASE, 0);
  nq_err_t err = {0};
  nq_clip_tok_t *tok = NULL;
  cr_assert_eq(nq_clip_tok_open(CLIP_CASE "/model", &tok, &err), 0, "%s", err.msg);
  int truncated = 0;
  for (int i = 0; i < g.n; i++) {
    const int64_t *e = g.ids + (size_t)i * 77;
    if (e[76] != 49407 || e[75] == 49407) continue; /* rows that fill all 77 positions */
    truncated++;
    size_t len;
    const char *text = golden_text(&g, i, &len);
    for (int ml = 2; ml <= 77; ml += 5) {
      int32_t ids[77];
      int n_real;
      cr_assert_eq(nq_clip_tok_encode(tok, text, len, ml, -1, ids, &n_real, &err), 0, "%s", err.msg);
      cr_assert_eq(n_real, ml);
      cr_assert_eq(ids[0], 49406);
      for (int k = 1; k < ml - 1; k++) cr_assert_eq(ids[k], e[k], "text_%03d max_len %d position %d", i, ml, k);
      cr_assert_eq(ids[ml - 1], 49407);
    }
  }
  cr_assert_geq(truncated, 1, "the golden case has a prompt over 75 tokens");
  nq_clip_tok_free(tok);
  golden_close(&g);
}

/* OpenAI CLIP's reference ids (unpadded [start, ..., end]), through both file formats. */
Test(clip_bpe, reference_json) {
  json_error_t je;
  json_t *ref = json_load_file(CLIP_REF, 0, &je);
  cr_assert_not_null(ref, "%s", je.text);
  const char *paths[] = {CLIP_GZ, CLIP_CASE "/model"};
  for (int p = 0; p < 2; p++) {
    nq_err_t err = {0};
    nq_clip_tok_t *tok = NULL;
    cr_assert_eq(nq_clip_tok_open(paths[p], &tok, &err), 0, "%s", err.msg);
    const char *text;
    json_t *arr;
    int count = 0;
    json_object_foreach(ref, text, arr) {
      int32_t ids[77];
      int n_real;
      cr_assert_eq(nq_clip_tok_encode(tok, text, strlen(text), 77, 49407, ids, &n_real, &err), 0, "%s", err.msg);
      cr_assert_eq((size_t)n_real, json_array_size(arr), "'%s': %d ids, reference %zu", text, n_real, json_array_size(arr));
      for (int k = 0; k < n_real; k++)
        cr_assert_eq(ids[k], json_integer_value(json_array_get(arr, (size_t)k)), "'%s' position %d", text, k);
      for (int k = n_real; k < 77; k++) cr_assert_eq(ids[k], 49407);
      /* and without padding: encode_raw gives the content between the start and end tokens */
      nq_bpe_ids_t raw = {0};
      cr_assert_eq(nq_clip_tok_encode_raw(tok, text, strlen(text), 0, &raw, &err), 0, "%s", err.msg);
      cr_assert_eq(raw.n, (size_t)n_real - 2);
      for (size_t k = 0; k < raw.n; k++) cr_assert_eq(raw.v[k], ids[k + 1]);
      nq_bpe_ids_free(&raw);
      count++;
    }
    cr_assert_geq(count, 9);
    nq_clip_tok_free(tok);
  }
  json_decref(ref);
}

/* simple_tokenizer.decode: "</w>" -> " ", lowercased text. */
Test(clip_bpe, decode) {
  nq_err_t err = {0};
  nq_clip_tok_t *tok = NULL;
  cr_assert_eq(nq_clip_tok_open(CLIP_GZ, &tok, &err), 0, "%s", err.msg);
  /* reference ids of "A photo of an astronaut riding a horse on mars." */
  const int32_t ids[] = {49406, 320, 1125, 539, 550, 18376, 6765, 320, 4558, 525, 7496, 269, 49407};
  char *s = NULL;
  cr_assert_eq(nq_clip_tok_decode(tok, ids, 13, 1, &s, &err), 0, "%s", err.msg);
  cr_assert_str_eq(s, "a photo of an astronaut riding a horse on mars . ");
  free(s);
  cr_assert_eq(nq_clip_tok_decode(tok, ids, 13, 0, &s, &err), 0, "%s", err.msg);
  cr_assert_str_eq(s, "<|startoftext|>a photo of an astronaut riding a horse on mars . <|endoftext|>");
  free(s);
  /* "café naïve résumé" reference ids: multi-byte characters come back whole */
  const int32_t ids2[] = {15304, 1097, 35689, 563, 29106, 7054, 4166};
  cr_assert_eq(nq_clip_tok_decode(tok, ids2, 7, 1, &s, &err), 0, "%s", err.msg);
  cr_assert_str_eq(s, "café naïve résumé ");
  free(s);
  /* an id outside the vocabulary is an error naming it */
  const int32_t bad[] = {320, 49408};
  cr_assert_eq(nq_clip_tok_decode(tok, bad, 2, 1, &s, &err), NQ_EINVAL);
  cr_assert(strstr(err.msg, "49408"), "%s", err.msg);
  nq_clip_tok_free(tok);
}

/* Python's html.unescape (outputs recorded from CPython 3.11 html.unescape on these strings). */
Test(clip_bpe, html_unescape_python) {
  static const struct {
    const char *in, *out;
  } cases[] = {
      {"&amp;lt;b&gt; &copy;2020 &notit; &#128; &#x1F600;", "&lt;b> \xc2\xa9" "2020 \xc2\xacit; \xe2\x82\xac \xf0\x9f\x98\x80"},
      {"a &amp b &ampx; &#0; &#1; &#xD800; &#99999999999; &unknown; &#; &#x; &",
       "a & b &x; \xef\xbf\xbd  \xef\xbf\xbd \xef\xbf\xbd &unknown; &#; &#x; &"},
      {"x&nbsp;y&Eacute;&hellip;&hellip", "x\xc2\xa0y\xc3\x89\xe2\x80\xa6&hellip"},
      {"no entities here", "no entities here"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char *o = NULL;
    size_t n;
    nq_err_t err = {0};
    cr_assert_eq(nq_clip_tok_html_unescape(cases[i].in, strlen(cases[i].in), &o, &n, &err), 0);
    cr_assert_eq(n, strlen(o));
    cr_assert_str_eq(o, cases[i].out, "case %zu: '%s'", i, o);
    free(o);
  }
}

/* The cleaning chain: unescape twice, whitespace, Python str.lower (CPython 3.11 outputs). */
Test(clip_bpe, clean_unicode_lower) {
  char *o = NULL;
  size_t n;
  nq_err_t err = {0};
  const char *in = " \t\xc3\x89" "COLE  \xc4\xb0STANBUL\n\xce\xa3\xce\x8a\xce\xa3\xce\xa5\xce\xa6\xce\x9f\xce\xa3 \xce\x9f\xce\x94\xce\x9f\xce\xa3. &amp;amp; ";
  cr_assert_eq(nq_clip_tok_clean(in, strlen(in), &o, &n, &err), 0, "%s", err.msg);
  /* 'école i̇stanbul σίσυφος οδος. &' */
  cr_assert_str_eq(o, "\xc3\xa9" "cole i\xcc\x87stanbul \xcf\x83\xce\xaf\xcf\x83\xcf\x85\xcf\x86\xce\xbf\xcf\x82 "
                      "\xce\xbf\xce\xb4\xce\xbf\xcf\x82. &");
  free(o);
  /* invalid UTF-8 is refused with the byte offset */
  cr_assert_eq(nq_clip_tok_clean("ab\xff", 3, &o, &n, &err), NQ_EFORMAT);
  cr_assert(strstr(err.msg, "byte 2"), "%s", err.msg);
}

/* A single 200 kB piece must not take quadratic time. */
Test(clip_bpe, long_piece_is_fast, .timeout = 20) {
  nq_err_t err = {0};
  nq_clip_tok_t *tok = NULL;
  cr_assert_eq(nq_clip_tok_open(CLIP_GZ, &tok, &err), 0, "%s", err.msg);
  size_t n = 200000;
  char *s = malloc(n);
  for (size_t i = 0; i < n; i++) s[i] = "abcdefghij"[i % 10];
  nq_bpe_ids_t raw = {0};
  clock_t t0 = clock();
  cr_assert_eq(nq_clip_tok_encode_raw(tok, s, n, 0, &raw, &err), 0, "%s", err.msg);
  double secs = (double)(clock() - t0) / CLOCKS_PER_SEC;
  cr_assert_gt(raw.n, 1000);
  cr_assert_lt(secs, 5.0, "%.2f s", secs);
  /* the same ids come back through decode */
  char *d = NULL;
  cr_assert_eq(nq_clip_tok_decode(tok, raw.v, raw.n, 1, &d, &err), 0, "%s", err.msg);
  cr_assert_eq(strlen(d), n + 1); /* the trailing "</w>" becomes a space */
  cr_assert_eq(memcmp(d, s, n), 0);
  free(d);
  nq_bpe_ids_free(&raw);
  free(s);
  nq_clip_tok_free(tok);
}

/* One tokenizer shared by several threads (the piece cache is shared): every result still matches. */
typedef struct thr_arg {
  const nq_clip_tok_t *tok;
  const golden_t *g;
  int bad;
} thr_arg_t;

static void *thr_main(void *p) {
  thr_arg_t *a = p;
  for (int rep = 0; rep < 20; rep++)
    for (int i = 0; i < a->g->n; i++) {
      char name[32];
      snprintf(name, sizeof name, "text_%03d", i);
      const nq_st_tensor_t *t = nq_st_find(a->g->in, name);
      int32_t ids[77];
      nq_err_t err = {0};
      if (nq_clip_tok_encode(a->tok, t->nbytes ? t->data : "", t->nbytes, 77, 49407, ids, NULL, &err)) a->bad++;
      for (int k = 0; k < 77; k++) a->bad += ids[k] != a->g->ids[(size_t)i * 77 + k];
    }
  return NULL;
}

Test(clip_bpe, threads_share_a_tokenizer) {
  golden_t g;
  golden_open(&g, CLIP_CASE, 0);
  nq_err_t err = {0};
  nq_clip_tok_t *tok = NULL;
  cr_assert_eq(nq_clip_tok_open(CLIP_GZ, &tok, &err), 0, "%s", err.msg);
  pthread_t th[4];
  thr_arg_t args[4];
  for (int i = 0; i < 4; i++) {
    args[i] = (thr_arg_t){tok, &g, 0};
    cr_assert_eq(pthread_create(&th[i], NULL, thr_main, &args[i]), 0);
  }
  for (int i = 0; i < 4; i++) {
    pthread_join(th[i], NULL);
    cr_assert_eq(args[i].bad, 0, "thread %d: %d wrong ids", i, args[i].bad);
  }
  nq_clip_tok_free(tok);
  golden_close(&g);
}

Test(clip_bpe, bad_arguments) {
  nq_err_t err = {0};
  nq_clip_tok_t *tok = NULL;
  cr_assert_eq(nq_clip_tok_open(CLIP_GZ, &tok, &err), 0, "%s", err.msg);
  int32_t ids[4];
  cr_assert_eq(nq_clip_tok_encode(tok, "a", 1, 1, -1, ids, NULL, &err), NQ_EINVAL);
  cr_assert_eq(nq_clip_tok_encode(tok, "a", 1, 4, 49408, ids, NULL, &err), NQ_EINVAL);
  cr_assert_eq(nq_clip_tok_encode(tok, "a\xc3", 2, 4, -1, ids, NULL, &err), NQ_EFORMAT);
  nq_clip_tok_free(tok);
  cr_assert_eq(nq_clip_tok_open("/nonexistent/tok", &tok, &err), NQ_ENOENT);
  cr_assert(strstr(err.msg, "/nonexistent/tok"), "%s", err.msg);
}

/* ---------------------------------------------------------------------------------------------- */
/* Malformed files */

static int open_clip_dir(const char *dir, nq_err_t *err) {
  nq_clip_tok_t *tok = NULL;
  int rc = nq_clip_tok_open(dir, &tok, err);
  nq_clip_tok_free(tok);
  return rc;
}

Test(clip_bpe, malformed_files) {
  nq_err_t err = {0};
  char *d = mkdtmp();
  const char *merges_ok = "#version: 0.2\ni n\nt h\n";
  /* vocab.json is not JSON */
  write_file(d, "vocab.json", "{\"a\": 1,", 8);
  write_file(d, "merges.txt", merges_ok, strlen(merges_ok));
  cr_assert_eq(open_clip_dir(d, &err), NQ_EFORMAT);
  cr_assert(strstr(err.msg, "vocab.json") && strstr(err.msg, "invalid JSON"), "%s", err.msg);
  /* an id that is not an integer */
  write_file(d, "vocab.json", "{\"a\": \"x\"}", 10);
  cr_assert_eq(open_clip_dir(d, &err), NQ_EFORMAT);
  cr_assert(strstr(err.msg, "'a'") && strstr(err.msg, "not an integer"), "%s", err.msg);
  /* a negative id, and an id given twice */
  write_file(d, "vocab.json", "{\"a\": -4}", 9);
  cr_assert_eq(open_clip_dir(d, &err), NQ_EFORMAT);
  cr_assert(strstr(err.msg, "-4"), "%s", err.msg);
  write_file(d, "vocab.json", "{\"a\": 3, \"b\": 3}", 16);
  cr_assert_eq(open_clip_dir(d, &err), NQ_EFORMAT);
  cr_assert(strstr(err.msg, "id 3"), "%s", err.msg);
  /* a merge line with three symbols */
  const char *vocab = "{\"i\": 0, \"n\": 1, \"<|startoftext|>\": 2, \"<|endoftext|>\": 3}";
  write_file(d, "vocab.json", vocab, strlen(vocab));
  const char *merges_bad = "#version: 0.2\ni n\nt h e\n";
  write_file(d, "merges.txt", merges_bad, strlen(merges_bad));
  cr_assert_eq(open_clip_dir(d, &err), NQ_EFORMAT);
  cr_assert(strstr(err.msg, "merges.txt line 3"), "%s", err.msg);
  /* a vocabulary without the special tokens */
  write_file(d, "vocab.json", "{\"i\": 0}", 8);
  write_file(d, "merges.txt", merges_ok, strlen(merges_ok));
  cr_assert_eq(open_clip_dir(d, &err), NQ_EFORMAT);
  cr_assert(strstr(err.msg, "<|startoftext|>"), "%s", err.msg);
  /* merges.txt missing: the directory has no usable files */
  char p[512];
  snprintf(p, sizeof p, "%s/merges.txt", d);
  unlink(p);
  cr_assert_eq(open_clip_dir(d, &err), NQ_ENOENT);
  /* ... but naming vocab.json directly reports the missing merges.txt */
  snprintf(p, sizeof p, "%s/vocab.json", d);
  nq_clip_tok_t *tok = NULL;
  cr_assert_eq(nq_clip_tok_open(p, &tok, &err), NQ_ENOENT);
  cr_assert(strstr(err.msg, "merges.txt"), "%s", err.msg);
  /* a truncated .gz */
  copy_file(CLIP_GZ, d, "bpe_simple_vocab_16e6.txt.gz", 100000);
  snprintf(p, sizeof p, "%s/bpe_simple_vocab_16e6.txt.gz", d);
  cr_assert_neq(nq_clip_tok_open(p, &tok, &err), 0);
  cr_assert(strstr(err.msg, "bpe_simple_vocab_16e6.txt.gz"), "%s", err.msg);
  /* a well-formed .gz with too few merges */
  gzFile gz = gzopen(p, "wb");
  gzputs(gz, "\"bpe_simple_vocab_16e6.txt#version: 0.2\ni n\nt h\n");
  gzclose(gz);
  cr_assert_eq(nq_clip_tok_open(p, &tok, &err), NQ_EFORMAT);
  cr_assert(strstr(err.msg, "only 2 merges"), "%s", err.msg);
  /* a .gz that is not gzip at all (zlib reads it as plain text): still too few merges, no crash */
  write_file(d, "bpe_simple_vocab_16e6.txt.gz", "garbage", 7);
  cr_assert_neq(nq_clip_tok_open(p, &tok, &err), 0);
  rm_rf(d);
}

/* ---------------------------------------------------------------------------------------------- */
/* RoBERTa against the golden case */

Test(roberta_bpe, golden) {
  golden_t g;
  golden_open(&g, ROBERTA_CASE, 1);
  int max_len = (int)param_int(&g, "max_length");
  cr_assert_eq(max_len, g.L);
  const json_t *lengths = json_object_get(g.params, "lengths");
  cr_assert_eq(json_array_size(lengths), (size_t)g.n);
  nq_err_t err = {0};
  nq_roberta_tok_t *tok = NULL;
  cr_assert_eq(nq_roberta_tok_open(ROBERTA_CASE "/model", &tok, &err), 0, "%s", err.msg);
  cr_assert_eq(nq_roberta_tok_bos(tok), 0);
  cr_assert_eq(nq_roberta_tok_pad(tok), 1);
  cr_assert_eq(nq_roberta_tok_eos(tok), 2);
  cr_assert_eq(nq_roberta_tok_unk(tok), 3);
  cr_assert_eq(nq_roberta_tok_vocab_size(tok), 50265);
  cr_assert_eq(nq_roberta_tok_model_max_length(tok), 512);
  int32_t *ids = malloc((size_t)max_len * sizeof *ids), *mask = malloc((size_t)max_len * sizeof *mask);
  int truncated = 0;
  for (int i = 0; i < g.n; i++) {
    size_t len;
    const char *text = golden_text(&g, i, &len);
    int n_real = -1;
    cr_assert_eq(nq_roberta_tok_encode(tok, text, len, max_len, -1, ids, mask, &n_real, &err), 0, "text_%03d: %s", i,
                 err.msg);
    cr_assert_eq(n_real, json_integer_value(json_array_get(lengths, (size_t)i)), "text_%03d length", i);
    for (int k = 0; k < max_len; k++) {
      size_t at = (size_t)i * max_len + k;
      cr_assert_eq(ids[k], g.ids[at], "text_%03d '%.40s' position %d: got %d, expected %lld", i, text, k, ids[k],
                   (long long)g.ids[at]);
      cr_assert_eq(mask[k], g.mask[at], "text_%03d mask position %d", i, k);
    }
    truncated |= n_real == max_len;
  }
  cr_assert(truncated, "the golden case has a prompt over 510 tokens");
  free(ids);
  free(mask);
  nq_roberta_tok_free(tok);
  golden_close(&g);
}

/* A shorter max_len cuts the golden ids earlier; encode_raw gives the unpadded content. */
Test(roberta_bpe, truncation_and_raw) {
  golden_t g;
  golden_open(&g, ROBERTA_CASE, 1);
  nq_err_t err = {0};
  nq_roberta_tok_t *tok = NULL;
  cr_assert_eq(nq_roberta_tok_open(ROBERTA_CASE "/model/merges.txt", &tok, &err), 0, "%s", err.msg);
  for (int i = 0; i < g.n; i++) {
    size_t len;
    const char *text = golden_text(&g, i, &len);
    const int64_t *e = g.ids + (size_t)i * g.L;
    int n_exp = (int)json_integer_value(json_array_get(json_object_get(g.params, "lengths"), (size_t)i));
    int32_t ids[16], mask[16];
    int n_real;
    cr_assert_eq(nq_roberta_tok_encode(tok, text, len, 16, 7, ids, mask, &n_real, &err), 0, "%s", err.msg);
    int want = n_exp < 16 ? n_exp : 16;
    cr_assert_eq(n_real, want);
    for (int k = 0; k < 16; k++) {
      int64_t exp = k < want - 1 ? e[k] : k == want - 1 ? 2 : 7;
      cr_assert_eq(ids[k], exp, "text_%03d position %d", i, k);
      cr_assert_eq(mask[k], k < want);
    }
    if (n_exp < g.L) {
      nq_bpe_ids_t raw = {0};
      cr_assert_eq(nq_roberta_tok_encode_raw(tok, text, len, 0, &raw, &err), 0, "%s", err.msg);
      cr_assert_eq(raw.n, (size_t)n_exp - 2);
      for (size_t k = 0; k < raw.n; k++) cr_assert_eq(raw.v[k], e[k + 1]);
      /* decode gives the original text back (byte-level BPE is lossless) */
      char *d = NULL;
      cr_assert_eq(nq_roberta_tok_decode(tok, raw.v, raw.n, 1, &d, &err), 0, "%s", err.msg);
      cr_assert_eq(strlen(d), len);
      cr_assert_eq(memcmp(d, text, len), 0, "text_%03d decodes to '%s'", i, d);
      free(d);
      nq_bpe_ids_free(&raw);
    }
  }
  nq_roberta_tok_free(tok);
  golden_close(&g);
}

/* Special-token strings in the text become their ids; <mask> (lstrip) swallows the space before it. The
 * ids of "Hello"/" world" come from the golden vocab.json (checked there by lookup, not by our encoder). */
Test(roberta_bpe, special_tokens_in_text) {
  nq_err_t err = {0};
  nq_roberta_tok_t *tok = NULL;
  cr_assert_eq(nq_roberta_tok_open(ROBERTA_CASE "/model", &tok, &err), 0, "%s", err.msg);
  nq_bpe_ids_t a = {0}, b = {0};
  cr_assert_eq(nq_roberta_tok_encode_raw(tok, "Hello world", 11, 0, &a, &err), 0);
  cr_assert_eq(a.n, 2);
  const char *t = "Hello <mask> world</s>";
  cr_assert_eq(nq_roberta_tok_encode_raw(tok, t, strlen(t), 0, &b, &err), 0);
  cr_assert_eq(b.n, 4);
  cr_assert_eq(b.v[0], a.v[0]);
  cr_assert_eq(b.v[1], 50264); /* <mask> in vocab.json */
  cr_assert_eq(b.v[2], a.v[1]); /* " world" */
  cr_assert_eq(b.v[3], 2);
  nq_bpe_ids_free(&a);
  nq_bpe_ids_free(&b);
  nq_roberta_tok_free(tok);
}

static int open_roberta_dir(const char *dir, nq_err_t *err) {
  nq_roberta_tok_t *tok = NULL;
  int rc = nq_roberta_tok_open(dir, &tok, err);
  nq_roberta_tok_free(tok);
  return rc;
}

Test(roberta_bpe, malformed_files) {
  nq_err_t err = {0};
  char *d = mkdtmp();
  const char *vocab = "{\"<s>\": 0, \"<pad>\": 1, \"</s>\": 2, \"<unk>\": 3, \"a\": 4, \"b\": 5, \"ab\": 6}";
  const char *merges = "#version: 0.2\na b\n";
  write_file(d, "vocab.json", vocab, strlen(vocab));
  write_file(d, "merges.txt", merges, strlen(merges));
  /* the minimal files work: "abab" -> ab ab */
  nq_roberta_tok_t *tok = NULL;
  cr_assert_eq(nq_roberta_tok_open(d, &tok, &err), 0, "%s", err.msg);
  int32_t ids[6], mask[6];
  cr_assert_eq(nq_roberta_tok_encode(tok, "abab", 4, 6, -1, ids, mask, NULL, &err), 0, "%s", err.msg);
  const int32_t want[6] = {0, 6, 6, 2, 1, 1};
  for (int k = 0; k < 6; k++) cr_assert_eq(ids[k], want[k]);
  /* a symbol missing from the vocabulary becomes <unk> */
  cr_assert_eq(nq_roberta_tok_encode(tok, "ac", 2, 6, -1, ids, mask, NULL, &err), 0, "%s", err.msg);
  cr_assert_eq(ids[1], 4);
  cr_assert_eq(ids[2], 3);
  nq_roberta_tok_free(tok);
  /* a merge line with one symbol */
  write_file(d, "merges.txt", "#version: 0.2\na b\nab\n", 20);
  cr_assert_eq(open_roberta_dir(d, &err), NQ_EFORMAT);
  cr_assert(strstr(err.msg, "merges.txt line 3"), "%s", err.msg);
  /* no merges at all */
  write_file(d, "merges.txt", "#version: 0.2\n", 14);
  cr_assert_eq(open_roberta_dir(d, &err), NQ_EFORMAT);
  cr_assert(strstr(err.msg, "no merges"), "%s", err.msg);
  write_file(d, "merges.txt", merges, strlen(merges));
  /* <s> missing from the vocabulary */
  const char *v2 = "{\"<pad>\": 1, \"</s>\": 2, \"a\": 4}";
  write_file(d, "vocab.json", v2, strlen(v2));
  cr_assert_eq(open_roberta_dir(d, &err), NQ_EFORMAT);
  cr_assert(strstr(err.msg, "bos_token") && strstr(err.msg, "<s>"), "%s", err.msg);
  /* vocab.json is an array */
  write_file(d, "vocab.json", "[1, 2]", 6);
  cr_assert_eq(open_roberta_dir(d, &err), NQ_EFORMAT);
  cr_assert(strstr(err.msg, "JSON object"), "%s", err.msg);
  /* special_tokens_map.json with a bad entry */
  write_file(d, "vocab.json", vocab, strlen(vocab));
  write_file(d, "special_tokens_map.json", "{\"bos_token\": 5}", 16);
  cr_assert_eq(open_roberta_dir(d, &err), NQ_EFORMAT);
  cr_assert(strstr(err.msg, "special_tokens_map.json") && strstr(err.msg, "bos_token"), "%s", err.msg);
  rm_rf(d);
}

/* ---------------------------------------------------------------------------------------------- */
/* `nextq tokenize` */

static char *cli_run(const char *path, const char *text, int max_len, int pad, int want_rc) {
  FILE *f = tmpfile();
  cr_assert_not_null(f);
  nq_err_t err = {0};
  int rc = nq_tok_cli_encode_bpe(path, text, max_len, pad, f, &err);
  cr_assert_eq(rc, want_rc, "%s: %s", path, err.msg);
  size_t n = (size_t)ftell(f);
  rewind(f);
  char *s = calloc(1, n + 1);
  cr_assert_eq(fread(s, 1, n, f), n);
  fclose(f);
  return s;
}

static char *ids_line(const int64_t *ids, int n) {
  char *s = calloc(1, (size_t)n * 8 + 2);
  size_t o = 0;
  for (int i = 0; i < n; i++) o += (size_t)sprintf(s + o, i ? " %lld" : "%lld", (long long)ids[i]);
  s[o] = '\n';
  return s;
}

Test(tokenize_cli, detects_and_prints) {
  golden_t g;
  golden_open(&g, CLIP_CASE, 0);
  size_t len;
  const char *t = golden_text(&g, 1, &len);
  char *text = strndup(t, len);
  char *want = ids_line(g.ids + 77, 77);
  char *got = cli_run(CLIP_CASE "/model", text, 77, 49407, 0);
  cr_assert_str_eq(got, want);
  free(got);
  got = cli_run(CLIP_GZ, text, 77, -1, 0);
  cr_assert_str_eq(got, want);
  free(got), free(want), free(text);
  golden_close(&g);

  golden_open(&g, ROBERTA_CASE, 1);
  t = golden_text(&g, 3, &len);
  text = strndup(t, len);
  want = ids_line(g.ids + 3 * 512, 512);
  got = cli_run(ROBERTA_CASE "/model", text, 512, -1, 0);
  cr_assert_str_eq(got, want);
  free(got), free(want);
  /* no max length: start + content + end, unpadded */
  int n_real = (int)json_integer_value(json_array_get(json_object_get(g.params, "lengths"), 3));
  want = ids_line(g.ids + 3 * 512, n_real);
  got = cli_run(ROBERTA_CASE "/model/vocab.json", text, 0, -1, 0);
  cr_assert_str_eq(got, want);
  free(got), free(want), free(text);
  golden_close(&g);

  got = cli_run("/nonexistent", "x", 77, 0, NQ_ENOENT);
  free(got);
  got = cli_run(NQ_SHARED_DIR "/golden", "x", 77, 0, NQ_EUNSUPPORTED);
  free(got);
}

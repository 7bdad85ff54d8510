/* scheduler/caption_metrics.c — BLEU-4 and CIDEr-D (see caption_metrics.h for the formulas followed).
 * N-gram tables are jansson objects (key: the words joined by one space; value: integer count or real weight). */
#include "scheduler/caption_metrics.h"

#include <ctype.h>
#include <jansson.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define CM_N 4
#define CM_SIGMA 6.0

typedef struct cm_item {
  int len;            /* hypothesis words */
  json_t *counts;     /* owned: hypothesis n-gram counts */
  int n_refs;
  int *ref_len;       /* owned [n_refs] */
  json_t **ref_counts;/* owned [n_refs] */
} cm_item_t;

struct nq_capmetrics {
  cm_item_t *items;   /* owned [n] */
  size_t n, cap;
};

nq_capmetrics_t *nq_capmetrics_new(void) { return calloc(1, sizeof(nq_capmetrics_t)); }

static void cm_item_deinit(cm_item_t *it) {
  json_decref(it->counts);
  for (int r = 0; r < it->n_refs; r++) json_decref(it->ref_counts ? it->ref_counts[r] : NULL);
  free(it->ref_counts);
  free(it->ref_len);
}

void nq_capmetrics_free(nq_capmetrics_t *m) {
  if (!m) return;
  for (size_t i = 0; i < m->n; i++) cm_item_deinit(&m->items[i]);
  free(m->items);
  free(m);
}

/* The COCO tokenizer's removed punctuation, byte-wise. */
static int cm_is_punct(unsigned char c) { return c && strchr("'`\"(){}[].?!,:-;", c) != NULL; }

/* Normalised words of s: *buf holds them NUL-separated, starts[k] the offsets. */
static int cm_words(const char *s, char **buf, int **starts, int *n, nq_err_t *err) {
  size_t L = strlen(s);
  char *b = malloc(L + 1);
  int *st = malloc(sizeof(int) * (L / 2 + 2));
  if (!b || !st) {
    free(b), free(st);
    return nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "caption metrics: out of memory");
  }
  int k = 0;
  bool in = false;
  for (size_t i = 0; i < L; i++) {
    unsigned char c = (unsigned char)s[i];
    if (isspace(c) || cm_is_punct(c)) {
      b[i] = 0;
      in = false;
      continue;
    }
    b[i] = (char)tolower(c);
    if (!in) {
      if (k >= NQ_CAPMETRICS_MAX_WORDS) {
        free(b), free(st);
        return nq_err_set(err, NQ_ELIMIT, NQ_ERR_FATAL, "caption metrics: sentence of more than %d words",
                          NQ_CAPMETRICS_MAX_WORDS);
      }
      st[k++] = (int)i;
      in = true;
    }
  }
  b[L] = 0;
  *buf = b, *starts = st, *n = k;
  return 0;
}

/* n-gram counts (n = 1..4) of s; *len = its word count. */
static int cm_counts(const char *s, json_t **out, int *len, nq_err_t *err) {
  char *b = NULL;
  int *st = NULL, n = 0;
  int rc = cm_words(s, &b, &st, &n, err);
  if (rc) return rc;
  json_t *c = json_object();
  size_t cap = 64;
  char *key = malloc(cap);
  for (int k = 1; c && key && k <= CM_N && !rc; k++)
    for (int i = 0; i + k <= n && !rc; i++) {
      size_t need = 1;
      for (int j = 0; j < k; j++) need += strlen(b + st[i + j]) + 1;
      if (need > cap) {
        char *nk = realloc(key, need);
        if (!nk) {
          rc = NQ_ENOMEM;
          break;
        }
        key = nk, cap = need;
      }
      size_t o = 0;
      for (int j = 0; j < k; j++) {
        size_t wl = strlen(b + st[i + j]);
        if (j) key[o++] = ' ';
        memcpy(key + o, b + st[i + j], wl);
        o += wl;
      }
      key[o] = 0;
      json_t *v = json_object_get(c, key);
      if (json_object_set_new(c, key, json_integer(v ? json_integer_value(v) + 1 : 1))) rc = NQ_ENOMEM;
    }
  free(b), free(st), free(key);
  if (!c || !key || rc) {
    json_decref(c);
    return nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "caption metrics: out of memory");
  }
  *out = c, *len = n;
  return 0;
}

static int cm_order(const char *key) {
  int n = 1;
  for (; *key; key++) n += *key == ' ';
  return n;
}

int nq_capmetrics_add(nq_capmetrics_t *m, const char *hyp, const char *const *refs, int n_refs, nq_err_t *err) {
  if (!hyp || !refs || n_refs < 1 || n_refs > NQ_CAPMETRICS_MAX_REFS)
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "caption metrics: an item needs a hypothesis and 1..%d references",
                      NQ_CAPMETRICS_MAX_REFS);
  for (int r = 0; r < n_refs; r++)
    if (!refs[r]) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "caption metrics: reference %d is NULL", r);
  if (m->n == m->cap) {
    size_t nc = m->cap ? m->cap * 2 : 16;
    cm_item_t *ni = realloc(m->items, nc * sizeof *ni);
    if (!ni) return nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "caption metrics: out of memory");
    m->items = ni, m->cap = nc;
  }
  cm_item_t it = {0};
  it.ref_len = calloc((size_t)n_refs, sizeof(int));
  it.ref_counts = calloc((size_t)n_refs, sizeof(json_t *));
  int rc = it.ref_len && it.ref_counts ? 0 : nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "caption metrics: out of memory");
  if (!rc) it.n_refs = n_refs;
  if (!rc) rc = cm_counts(hyp, &it.counts, &it.len, err);
  for (int r = 0; r < n_refs && !rc; r++) rc = cm_counts(refs[r], &it.ref_counts[r], &it.ref_len[r], err);
  if (rc) {
    cm_item_deinit(&it);
    return rc;
  }
  m->items[m->n++] = it;
  return 0;
}

/* ---- CIDEr-D ---- */

typedef struct cm_vec {
  json_t *w[CM_N]; /* owned: n-gram -> weight, per order */
  double norm[CM_N];
  double length;   /* bigram count (cider_scorer.py's `length`) */
} cm_vec_t;

static int cm_vec_make(const json_t *counts, const json_t *df, double ref_len, cm_vec_t *v) {
  memset(v, 0, sizeof *v);
  for (int k = 0; k < CM_N; k++)
    if (!(v->w[k] = json_object())) return NQ_ENOMEM;
  const char *key;
  json_t *val;
  json_object_foreach((json_t *)counts, key, val) {
    int n = cm_order(key) - 1;
    double tf = (double)json_integer_value(val);
    json_t *d = json_object_get(df, key);
    double dfv = d ? (double)json_integer_value(d) : 0.0;
    double w = tf * (ref_len - log(dfv > 1.0 ? dfv : 1.0));
    if (json_object_set_new(v->w[n], key, json_real(w))) return NQ_ENOMEM;
    v->norm[n] += w * w;
    if (n == 1) v->length += tf;
  }
  for (int k = 0; k < CM_N; k++) v->norm[k] = sqrt(v->norm[k]);
  return 0;
}

static void cm_vec_deinit(cm_vec_t *v) {
  for (int k = 0; k < CM_N; k++) json_decref(v->w[k]);
}

/* Mean over n of the clipped, length-penalised similarity. */
static double cm_sim(const cm_vec_t *h, const cm_vec_t *r) {
  double delta = h->length - r->length, sum = 0;
  for (int n = 0; n < CM_N; n++) {
    double val = 0;
    const char *key;
    json_t *hv;
    json_object_foreach(h->w[n], key, hv) {
      json_t *rv = json_object_get(r->w[n], key);
      double a = json_real_value(hv), b = rv ? json_real_value(rv) : 0.0;
      val += (a < b ? a : b) * b;
    }
    if (h->norm[n] != 0 && r->norm[n] != 0) val /= h->norm[n] * r->norm[n];
    val *= exp(-(delta * delta) / (2 * CM_SIGMA * CM_SIGMA));
    sum += val;
  }
  return sum / CM_N;
}

int nq_capmetrics_cider_items(const nq_capmetrics_t *m, double *out, nq_err_t *err) {
  if (m->n == 0) return 0;
  json_t *df = json_object();
  json_t *seen = json_object();
  int rc = df && seen ? 0 : NQ_ENOMEM;
  for (size_t i = 0; i < m->n && !rc; i++) {
    json_object_clear(seen);
    const cm_item_t *it = &m->items[i];
    for (int r = 0; r < it->n_refs && !rc; r++) {
      const char *key;
      json_t *v;
      json_object_foreach(it->ref_counts[r], key, v) {
        if (json_object_get(seen, key)) continue;
        json_t *d = json_object_get(df, key);
        if (json_object_set_new(seen, key, json_true()) ||
            json_object_set_new(df, key, json_integer(d ? json_integer_value(d) + 1 : 1))) {
          rc = NQ_ENOMEM;
          break;
        }
      }
    }
  }
  const double ref_len = log((double)m->n);
  for (size_t i = 0; i < m->n && !rc; i++) {
    const cm_item_t *it = &m->items[i];
    cm_vec_t h;
    rc = cm_vec_make(it->counts, df, ref_len, &h);
    double score = 0;
    for (int r = 0; r < it->n_refs && !rc; r++) {
      cm_vec_t rv;
      rc = cm_vec_make(it->ref_counts[r], df, ref_len, &rv);
      if (!rc) score += cm_sim(&h, &rv);
      cm_vec_deinit(&rv);
    }
    cm_vec_deinit(&h);
    out[i] = score / it->n_refs * 10.0;
  }
  json_decref(df);
  json_decref(seen);
  return rc ? nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "caption metrics: out of memory") : 0;
}

/* ---- BLEU ---- */

int nq_capmetrics_compute(const nq_capmetrics_t *m, nq_capmetrics_scores_t *out, nq_err_t *err) {
  memset(out, 0, sizeof *out);
  if (m->n == 0) return 0;
  double correct[CM_N] = {0}, guess[CM_N] = {0};
  long long testlen = 0, reflen = 0;
  for (size_t i = 0; i < m->n; i++) {
    const cm_item_t *it = &m->items[i];
    /* closest reference length; ties -> the shorter (python's min over (|l - testlen|, l)) */
    int best = it->ref_len[0];
    for (int r = 1; r < it->n_refs; r++) {
      int l = it->ref_len[r], db = abs(best - it->len), dl = abs(l - it->len);
      if (dl < db || (dl == db && l < best)) best = l;
    }
    testlen += it->len, reflen += best;
    for (int k = 0; k < CM_N; k++) guess[k] += it->len - k > 0 ? it->len - k : 0;
    const char *key;
    json_t *v;
    json_object_foreach(it->counts, key, v) {
      long long c = json_integer_value(v), mx = 0;
      for (int r = 0; r < it->n_refs; r++) {
        json_t *rv = json_object_get(it->ref_counts[r], key);
        if (rv && json_integer_value(rv) > mx) mx = json_integer_value(rv);
      }
      correct[cm_order(key) - 1] += (double)(c < mx ? c : mx);
    }
  }
  const double tiny = 1e-15, small = 1e-9;
  double prod = 1.0;
  for (int k = 0; k < CM_N; k++) {
    prod *= (correct[k] + tiny) / (guess[k] + small);
    out->bleu[k] = pow(prod, 1.0 / (k + 1));
  }
  double ratio = ((double)testlen + tiny) / ((double)reflen + small);
  if (ratio < 1)
    for (int k = 0; k < CM_N; k++) out->bleu[k] *= exp(1 - 1 / ratio);
  out->testlen = testlen, out->reflen = reflen;
  out->n_items = (long long)m->n;
  double *items = malloc(sizeof(double) * m->n);
  if (!items) return nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "caption metrics: out of memory");
  int rc = nq_capmetrics_cider_items(m, items, err);
  if (!rc) {
    double s = 0;
    for (size_t i = 0; i < m->n; i++) s += items[i];
    out->cider_d = s / (double)m->n;
  }
  free(items);
  return rc;
}

/* NExT-GPT output projector (TextFcLayer 'transformer'): loading by state_dict name and the forward. */
#include "compute/models/projector.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void nq_projector_opts_init(nq_projector_opts_t *o) {
  memset(o, 0, sizeof(*o));
  o->nhead = 4;
  o->eps = 1e-5f;
  o->wdtype = -1;
}

/* ---- loading ---- */

typedef struct {
  const nq_ckpt_t *ck;
  const char *prefix;
  int wdtype;
} nq_proj__ld_t;

static const nq_ckpt_tensor_t *nq_proj__find(const nq_proj__ld_t *ld, const char *name, int ndim,
                                             const int64_t *shape, nq_err_t *err) {
  char full[512];
  snprintf(full, sizeof full, "%s%s", ld->prefix, name);
  const nq_ckpt_tensor_t *t = nq_ckpt_find(ld->ck, full);
  if (!t) {
    nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "projector: tensor %s missing", full);
    return NULL;
  }
  if (nq_ckpt_expect(ld->ck, full, t->dtype, ndim, shape, &t, err) < 0) return NULL;
  if (t->dtype != NQ_DT_F32 && t->dtype != NQ_DT_BF16 && t->dtype != NQ_DT_F16) {
    nq_err_set(err, NQ_EUNSUPPORTED, NQ_ERR_FATAL, "projector: tensor %s has dtype %s", full, nq_dtype_name(t->dtype));
    return NULL;
  }
  return t;
}

/* Owned F32 copy of `n` elements of t starting at element `off`, shaped [n]. */
static int nq_proj__f32(const nq_ckpt_tensor_t *t, int64_t off, int64_t n, nq_tensor_t *out, nq_err_t *err) {
  int rc = nq_tensor_init(out, NQ_DT_F32, 1, &n, err);
  if (rc < 0) return rc;
  size_t es = nq_dtype_size(t->dtype);
  nq_dtype_to_f32(t->dtype, (const char *)t->data + (size_t)off * es, out->data, (size_t)n);
  return 0;
}

/* A vector parameter <name> of n elements as owned F32. */
static int nq_proj__vec(const nq_proj__ld_t *ld, const char *name, int64_t n, nq_tensor_t *out, nq_err_t *err) {
  const nq_ckpt_tensor_t *t = nq_proj__find(ld, name, 1, &n, err);
  if (!t) return err ? err->code : NQ_EFORMAT;
  return nq_proj__f32(t, 0, n, out, err);
}

/* Linear from rows [r0, r0+rows) of weight <wname> [*, k] and the same slice of bias <bname>. */
static int nq_proj__lin_rows(const nq_proj__ld_t *ld, nq_linear_t *lin, const char *wname, const char *bname,
                             int64_t total_rows, int64_t r0, int64_t rows, int64_t k, nq_err_t *err) {
  const nq_ckpt_tensor_t *w = nq_proj__find(ld, wname, 2, NQ_SHAPE(total_rows, k), err);
  if (!w) return err ? err->code : NQ_EFORMAT;
  const nq_ckpt_tensor_t *b = nq_proj__find(ld, bname, 1, NQ_SHAPE(total_rows), err);
  if (!b) return err ? err->code : NQ_EFORMAT;
  nq_tensor_t wt, bt;
  nq_tensor_init_borrowed(&wt, w->dtype, 2, NQ_SHAPE(rows, k),
                          (char *)w->data + (size_t)(r0 * k) * nq_dtype_size(w->dtype));
  int rc = 0;
  if (ld->wdtype >= 0 && wt.dtype != (nq_dtype_t)ld->wdtype) {
    nq_tensor_t c;
    if ((rc = nq_tensor_init(&c, (nq_dtype_t)ld->wdtype, 2, wt.ne, err)) < 0) return rc;
    if ((rc = nq_tensor_copy(&c, &wt, err)) < 0) {
      nq_tensor_deinit(&c);
      return rc;
    }
    wt = c; /* owned: moves into the linear */
  }
  if ((rc = nq_proj__f32(b, r0, rows, &bt, err)) < 0) {
    nq_tensor_deinit(&wt);
    return rc;
  }
  nq_linear_init(lin, &wt, &bt);
  return 0;
}

static int nq_proj__lin(const nq_proj__ld_t *ld, nq_linear_t *lin, const char *base, int64_t n, int64_t k,
                        nq_err_t *err) {
  char wn[256], bn[256];
  snprintf(wn, sizeof wn, "%s.weight", base);
  snprintf(bn, sizeof bn, "%s.bias", base);
  return nq_proj__lin_rows(ld, lin, wn, bn, n, 0, n, k, err);
}

static int nq_proj__mha(const nq_proj__ld_t *ld, nq_proj_mha_t *a, const char *base, int64_t d, nq_err_t *err) {
  char wn[256], bn[256], on[256];
  snprintf(wn, sizeof wn, "%s.in_proj_weight", base);
  snprintf(bn, sizeof bn, "%s.in_proj_bias", base);
  snprintf(on, sizeof on, "%s.out_proj", base);
  int rc = nq_proj__lin_rows(ld, &a->q, wn, bn, 3 * d, 0, d, d, err);
  if (!rc) rc = nq_proj__lin_rows(ld, &a->k, wn, bn, 3 * d, d, d, d, err);
  if (!rc) rc = nq_proj__lin_rows(ld, &a->v, wn, bn, 3 * d, 2 * d, d, d, err);
  if (!rc) rc = nq_proj__lin(ld, &a->out, on, d, d, err);
  return rc;
}

static void nq_proj__mha_free(nq_proj_mha_t *a) {
  nq_linear_deinit(&a->q), nq_linear_deinit(&a->k), nq_linear_deinit(&a->v), nq_linear_deinit(&a->out);
}

static int nq_proj__layer(const nq_proj__ld_t *ld, nq_proj_layer_t *L, const char *base, bool dec, int64_t d,
                          int64_t F, nq_err_t *err) {
  char n[256];
  snprintf(n, sizeof n, "%s.self_attn", base);
  int rc = nq_proj__mha(ld, &L->self_attn, n, d, err);
  if (!rc && dec) {
    snprintf(n, sizeof n, "%s.multihead_attn", base);
    rc = nq_proj__mha(ld, &L->cross_attn, n, d, err);
  }
  snprintf(n, sizeof n, "%s.linear1", base);
  if (!rc) rc = nq_proj__lin(ld, &L->linear1, n, F, d, err);
  snprintf(n, sizeof n, "%s.linear2", base);
  if (!rc) rc = nq_proj__lin(ld, &L->linear2, n, d, F, err);
  for (int i = 0; i < (dec ? 3 : 2) && !rc; i++) {
    snprintf(n, sizeof n, "%s.norm%d.weight", base, i + 1);
    rc = nq_proj__vec(ld, n, d, &L->norm_w[i], err);
    snprintf(n, sizeof n, "%s.norm%d.bias", base, i + 1);
    if (!rc) rc = nq_proj__vec(ld, n, d, &L->norm_b[i], err);
  }
  return rc;
}

static void nq_proj__layer_free(nq_proj_layer_t *L) {
  nq_proj__mha_free(&L->self_attn), nq_proj__mha_free(&L->cross_attn);
  nq_linear_deinit(&L->linear1), nq_linear_deinit(&L->linear2);
  for (int i = 0; i < 3; i++) nq_tensor_deinit(&L->norm_w[i]), nq_tensor_deinit(&L->norm_b[i]);
}

static int nq_proj__count_layers(const nq_proj__ld_t *ld, const char *part) {
  int n = 0;
  for (; n < NQ_PROJ_MAX_LAYERS + 1; n++) {
    char name[512];
    snprintf(name, sizeof name, "%stfm.%s.layers.%d.linear1.weight", ld->prefix, part, n);
    if (!nq_ckpt_find(ld->ck, name)) break;
  }
  return n;
}

int nq_projector_load(const nq_ckpt_t *ck, const char *prefix, const nq_projector_opts_t *opts, nq_projector_t **out,
                      nq_err_t *err) {
  *out = NULL;
  nq_projector_opts_t o;
  if (opts) o = *opts;
  else nq_projector_opts_init(&o);
  nq_proj__ld_t ld = {ck, prefix ? prefix : "", o.wdtype};
  if (o.wdtype >= 0 && o.wdtype != NQ_DT_F32 && o.wdtype != NQ_DT_BF16 && o.wdtype != NQ_DT_F16)
    return nq_err_set(err, NQ_EINVAL, 0, "projector %s: weight dtype %d not supported", ld.prefix, o.wdtype);
  const nq_ckpt_tensor_t *fc = nq_proj__find(&ld, "fc.weight", 2, NQ_SHAPE(-1, -1), err);
  const nq_ckpt_tensor_t *hd = fc ? nq_proj__find(&ld, "model.weight", 2, NQ_SHAPE(-1, fc->shape[0]), err) : NULL;
  const nq_ckpt_tensor_t *qe = hd ? nq_proj__find(&ld, "query_embs", 3, NQ_SHAPE(1, -1, fc->shape[0]), err) : NULL;
  const nq_ckpt_tensor_t *l1 = NULL;
  if (!qe) return err ? err->code : NQ_EFORMAT;
  int n_enc = nq_proj__count_layers(&ld, "encoder"), n_dec = nq_proj__count_layers(&ld, "decoder");
  int64_t d = fc->shape[0];
  if (n_enc < 1 || n_dec < 1 || n_enc > NQ_PROJ_MAX_LAYERS || n_dec > NQ_PROJ_MAX_LAYERS)
    return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "projector %s: %d encoder / %d decoder layers (1..%d each)",
                      ld.prefix, n_enc, n_dec, NQ_PROJ_MAX_LAYERS);
  if (!(l1 = nq_proj__find(&ld, "tfm.encoder.layers.0.linear1.weight", 2, NQ_SHAPE(-1, d), err)))
    return err ? err->code : NQ_EFORMAT;
  if (o.nhead < 1 || d % o.nhead)
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "projector %s: d_model %lld not divisible by nhead %d", ld.prefix,
                      (long long)d, o.nhead);
  nq_projector_t *p = calloc(1, sizeof(*p));
  if (!p) return nq_err_set(err, NQ_ENOMEM, 0, "projector: out of memory");
  p->in_dim = (int)fc->shape[1], p->d_model = (int)d, p->nhead = o.nhead, p->ffn = (int)l1->shape[0];
  p->n_enc = n_enc, p->n_dec = n_dec, p->n_queries = (int)qe->shape[1], p->out_dim = (int)hd->shape[0];
  p->eps = o.eps;
  int rc = nq_proj__lin(&ld, &p->fc, "fc", d, p->in_dim, err);
  if (!rc) rc = nq_proj__lin(&ld, &p->head, "model", p->out_dim, d, err);
  if (!rc) rc = nq_proj__f32(qe, 0, (int64_t)p->n_queries * d, &p->query, err);
  if (!rc) { /* [K*d] -> [K, d] */
    p->query.ndim = 2, p->query.ne[0] = p->n_queries, p->query.ne[1] = d, p->query.nb[0] = d, p->query.nb[1] = 1;
  }
  for (int i = 0; i < n_enc && !rc; i++) {
    char b[256];
    snprintf(b, sizeof b, "tfm.encoder.layers.%d", i);
    rc = nq_proj__layer(&ld, &p->enc[i], b, false, d, p->ffn, err);
  }
  for (int i = 0; i < n_dec && !rc; i++) {
    char b[256];
    snprintf(b, sizeof b, "tfm.decoder.layers.%d", i);
    rc = nq_proj__layer(&ld, &p->dec[i], b, true, d, p->ffn, err);
  }
  if (!rc) rc = nq_proj__vec(&ld, "tfm.encoder.norm.weight", d, &p->enc_norm_w, err);
  if (!rc) rc = nq_proj__vec(&ld, "tfm.encoder.norm.bias", d, &p->enc_norm_b, err);
  if (!rc) rc = nq_proj__vec(&ld, "tfm.decoder.norm.weight", d, &p->dec_norm_w, err);
  if (!rc) rc = nq_proj__vec(&ld, "tfm.decoder.norm.bias", d, &p->dec_norm_b, err);
  if (!rc) {
    if (o.ex) p->ex = o.ex;
    else if ((p->ex = nq_exec_new("auto", NULL, err))) p->own_ex = true;
    else rc = err ? err->code : NQ_EINTERNAL;
  }
  if (rc) {
    nq_projector_free(p);
    return rc;
  }
  *out = p;
  return 0;
}

void nq_projector_free(nq_projector_t *p) {
  if (!p) return;
  nq_linear_deinit(&p->fc), nq_linear_deinit(&p->head);
  for (int i = 0; i < NQ_PROJ_MAX_LAYERS; i++) nq_proj__layer_free(&p->enc[i]), nq_proj__layer_free(&p->dec[i]);
  nq_tensor_deinit(&p->enc_norm_w), nq_tensor_deinit(&p->enc_norm_b);
  nq_tensor_deinit(&p->dec_norm_w), nq_tensor_deinit(&p->dec_norm_b);
  nq_tensor_deinit(&p->query);
  if (p->own_ex) nq_exec_free(p->ex);
  free(p);
}

/* ---- forward ---- */

#define T2(t, rows, cols, ptr) nq_tensor_init_borrowed(&(t), NQ_DT_F32, 2, NQ_SHAPE((rows), (cols)), (ptr))

typedef struct {
  float *xn, *q, *k, *v, *att, *tmp, *ffh; /* scratch, each sized for max(N, K) rows */
} nq_proj__scratch_t;

/* y[n,d] (+)= MHA(xq[n,d], mem[m,d]); the residual add into y. */
static int nq_proj__mha_fwd(nq_projector_t *p, nq_proj_mha_t *a, float *y, const float *xq, int64_t n,
                            const float *mem, int64_t m, nq_proj__scratch_t *s, nq_err_t *err) {
  const int64_t d = p->d_model;
  nq_tensor_t tx, tm, tq, tk, tv, ta, tt, ty;
  T2(tx, n, d, (float *)xq), T2(tm, m, d, (float *)mem), T2(tq, n, d, s->q), T2(tk, m, d, s->k), T2(tv, m, d, s->v);
  T2(ta, n, d, s->att), T2(tt, n, d, s->tmp), T2(ty, n, d, y);
  int rc = nq_op_linear(p->ex, &tq, &tx, &a->q, err);
  if (!rc) rc = nq_op_linear(p->ex, &tk, &tm, &a->k, err);
  if (!rc) rc = nq_op_linear(p->ex, &tv, &tm, &a->v, err);
  if (!rc)
    rc = nq_op_attention(p->ex, &ta, &tq, &tk, &tv, p->nhead, p->nhead, 0, 0,
                         1.0f / sqrtf((float)(d / p->nhead)), err);
  if (!rc) rc = nq_op_linear(p->ex, &tt, &ta, &a->out, err);
  if (!rc) rc = nq_op_binary(p->ex, NQ_OP_ADD, &ty, &ty, &tt, err);
  return rc;
}

static int nq_proj__ln(nq_projector_t *p, float *y, const float *x, int64_t n, const nq_tensor_t *w,
                       const nq_tensor_t *b, nq_err_t *err) {
  nq_tensor_t tx, ty;
  T2(tx, n, p->d_model, (float *)x), T2(ty, n, p->d_model, y);
  return nq_op_layernorm(p->ex, &ty, &tx, w, b, p->eps, err);
}

/* y += linear2(relu(linear1(LN(y)))) with LN = norm (w, b). */
static int nq_proj__ffn(nq_projector_t *p, nq_proj_layer_t *L, float *y, int64_t n, int ni, nq_proj__scratch_t *s,
                        nq_err_t *err) {
  const int64_t d = p->d_model, F = p->ffn;
  int rc = nq_proj__ln(p, s->xn, y, n, &L->norm_w[ni], &L->norm_b[ni], err);
  nq_tensor_t tx, th, tt, ty;
  T2(tx, n, d, s->xn), T2(th, n, F, s->ffh), T2(tt, n, d, s->tmp), T2(ty, n, d, y);
  if (!rc) rc = nq_op_linear(p->ex, &th, &tx, &L->linear1, err);
  if (!rc) /* ReLU: compute/core has no ReLU op; elementwise here */
    for (int64_t i = 0; i < n * F; i++) s->ffh[i] = s->ffh[i] > 0.0f ? s->ffh[i] : 0.0f;
  if (!rc) rc = nq_op_linear(p->ex, &tt, &th, &L->linear2, err);
  if (!rc) rc = nq_op_binary(p->ex, NQ_OP_ADD, &ty, &ty, &tt, err);
  return rc;
}

int nq_projector_forward(nq_projector_t *p, const float *hidden, const float *embeds, int n, float *out,
                         nq_err_t *err) {
  if (n < 1 || n > 65536) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "projector: %d input tokens", n);
  const int64_t H = p->in_dim, d = p->d_model, K = p->n_queries, R = n > K ? n : K;
  size_t nfl = (size_t)n * (size_t)H + (size_t)(n + K) * (size_t)d + (size_t)R * (size_t)(6 * d + p->ffn);
  float *buf = malloc(nfl * sizeof(float));
  if (!buf) return nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "projector: scratch for %d tokens", n);
  float *xe = buf, *mem = xe + (size_t)n * H, *tgt = mem + (size_t)n * d, *sp = tgt + (size_t)K * d;
  nq_proj__scratch_t s;
  s.xn = sp, s.q = s.xn + R * d, s.k = s.q + R * d, s.v = s.k + R * d, s.att = s.v + R * d, s.tmp = s.att + R * d;
  s.ffh = s.tmp + R * d;
  for (int64_t i = 0; i < (int64_t)n * H; i++) xe[i] = hidden[i] + embeds[i];
  nq_tensor_t tx, tm;
  T2(tx, n, H, xe), T2(tm, n, d, mem);
  int rc = nq_op_linear(p->ex, &tm, &tx, &p->fc, err);
  /* encoder: x = x + SA(LN1 x); x = x + FF(LN2 x); then the final encoder norm */
  for (int l = 0; l < p->n_enc && !rc; l++) {
    nq_proj_layer_t *L = &p->enc[l];
    rc = nq_proj__ln(p, s.xn, mem, n, &L->norm_w[0], &L->norm_b[0], err);
    if (!rc) rc = nq_proj__mha_fwd(p, &L->self_attn, mem, s.xn, n, s.xn, n, &s, err);
    if (!rc) rc = nq_proj__ffn(p, L, mem, n, 1, &s, err);
  }
  if (!rc) rc = nq_proj__ln(p, mem, mem, n, &p->enc_norm_w, &p->enc_norm_b, err);
  /* decoder on the learned queries: SA(LN1), cross-attn(LN2, memory), FF(LN3); then the final decoder norm */
  if (!rc) memcpy(tgt, p->query.data, sizeof(float) * (size_t)(K * d));
  for (int l = 0; l < p->n_dec && !rc; l++) {
    nq_proj_layer_t *L = &p->dec[l];
    rc = nq_proj__ln(p, s.xn, tgt, K, &L->norm_w[0], &L->norm_b[0], err);
    if (!rc) rc = nq_proj__mha_fwd(p, &L->self_attn, tgt, s.xn, K, s.xn, K, &s, err);
    if (!rc) rc = nq_proj__ln(p, s.xn, tgt, K, &L->norm_w[1], &L->norm_b[1], err);
    if (!rc) rc = nq_proj__mha_fwd(p, &L->cross_attn, tgt, s.xn, K, mem, n, &s, err);
    if (!rc) rc = nq_proj__ffn(p, L, tgt, K, 2, &s, err);
  }
  if (!rc) rc = nq_proj__ln(p, tgt, tgt, K, &p->dec_norm_w, &p->dec_norm_b, err);
  if (!rc) {
    nq_tensor_t tt, to;
    T2(tt, K, d, tgt), T2(to, K, p->out_dim, out);
    rc = nq_op_linear(p->ex, &to, &tt, &p->head, err);
  }
  free(buf);
  return rc;
}

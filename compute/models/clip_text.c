/* CLIP text encoder: loading (HF / LDM names via clip_text_names.c) and the batched causal forward. */
#include "compute/models/clip_text.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

void nq_clip_text_load_opts_init(nq_clip_text_load_opts_t *o) {
  memset(o, 0, sizeof *o);
  o->wdtype = -1;
}

typedef struct {
  nq_clip_text_t *m;
  nq_err_t *err;
} ct_ld_t;

/* HF name (printf format) -> tensor in the file's layout, with a float dtype and the given shape (-1 = any). */
static const nq_ckpt_tensor_t *ct__get(ct_ld_t *L, int ndim, const int64_t *shape, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static const nq_ckpt_tensor_t *ct__get(ct_ld_t *L, int ndim, const int64_t *shape, const char *fmt, ...) {
  char hf[200], name[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(hf, sizeof hf, fmt, ap);
  va_end(ap);
  nq_clip_text_name(L->m->layout, hf, name, sizeof name);
  const nq_ckpt_tensor_t *t = nq_ckpt_find(L->m->ck, name);
  if (!t) {
    nq_err_set(L->err, NQ_EFORMAT, NQ_ERR_FATAL, "tensor '%s' is missing", name);
    return NULL;
  }
  int ok = (t->dtype == NQ_DT_F32 || t->dtype == NQ_DT_BF16 || t->dtype == NQ_DT_F16) && t->ndim == ndim;
  for (int i = 0; ok && i < ndim; i++) ok = shape[i] < 0 || shape[i] == t->shape[i];
  if (!ok) {
    char have[96] = "", want[96] = "";
    size_t a = 0, b = 0;
    for (int i = 0; i < t->ndim && a < sizeof have; i++)
      a += (size_t)snprintf(have + a, sizeof have - a, "%s%lld", i ? "," : "", (long long)t->shape[i]);
    for (int i = 0; i < ndim && b < sizeof want; i++)
      b += (size_t)snprintf(want + b, sizeof want - b, "%s%lld", i ? "," : "", (long long)shape[i]);
    nq_err_set(L->err, NQ_ESHAPE, NQ_ERR_FATAL, "tensor '%s' is %s [%s], want a float tensor [%s]", name,
               nq_dtype_name(t->dtype), have, want);
    return NULL;
  }
  return t;
}

static int ct__f32(ct_ld_t *L, nq_tensor_t *out, const nq_ckpt_tensor_t *t, int nd, const int64_t *shape) {
  nq_tensor_t w;
  nq_tensor_init_borrowed(&w, t->dtype, nd, shape, (void *)t->data);
  if (t->dtype == NQ_DT_F32) {
    *out = w;
    return 0;
  }
  int rc = nq_tensor_init(out, NQ_DT_F32, nd, shape, L->err);
  if (!rc) rc = nq_tensor_copy(out, &w, L->err);
  return rc;
}

static int ct__vec(ct_ld_t *L, nq_tensor_t *out, int64_t n, const char *hf) {
  const nq_ckpt_tensor_t *t = ct__get(L, 1, &n, "%s", hf);
  return t ? ct__f32(L, out, t, 1, &n) : L->err->code;
}

static int ct__lin(ct_ld_t *L, nq_linear_t *lin, const char *pre, const char *what, int64_t n, int64_t k, int wdtype) {
  const nq_ckpt_tensor_t *t = ct__get(L, 2, NQ_SHAPE(n, k), "%s%s.weight", pre, what);
  if (!t) return L->err->code;
  nq_tensor_t w, b;
  nq_tensor_init_borrowed(&w, t->dtype, 2, NQ_SHAPE(n, k), (void *)t->data);
  int rc = 0;
  if (wdtype >= 0 && w.dtype != (nq_dtype_t)wdtype) {
    nq_tensor_t c;
    if ((rc = nq_tensor_init(&c, (nq_dtype_t)wdtype, 2, w.ne, L->err))) return rc;
    if ((rc = nq_tensor_copy(&c, &w, L->err))) {
      nq_tensor_deinit(&c);
      return rc;
    }
    w = c;
  }
  char bn[256];
  snprintf(bn, sizeof bn, "%s%s.bias", pre, what);
  if ((rc = ct__vec(L, &b, n, bn))) {
    nq_tensor_deinit(&w);
    return rc;
  }
  nq_linear_init(lin, &w, &b);
  return 0;
}

static int ct__act(const char *s, nq_op_t *out) {
  if (!strcmp(s, "quick_gelu")) *out = NQ_OP_QUICK_GELU;
  else if (!strcmp(s, "gelu")) *out = NQ_OP_GELU;
  else if (!strcmp(s, "gelu_new") || !strcmp(s, "gelu_pytorch_tanh") || !strcmp(s, "gelu_fast")) *out = NQ_OP_GELU_TANH;
  else return -1;
  return 0;
}

static int ct__load(nq_clip_text_t *m, const char *path, const nq_clip_text_load_opts_t *o, nq_err_t *err) {
  struct stat st;
  if (stat(path, &st) != 0) return nq_err_set(err, NQ_ENOENT, NQ_ERR_FATAL, "%s: not found", path);
  json_t *cfg = NULL;
  if (S_ISDIR(st.st_mode)) {
    char p[4200];
    snprintf(p, sizeof p, "%s/config.json", path);
    if (stat(p, &st) == 0) {
      json_error_t je;
      cfg = json_load_file(p, 0, &je);
      if (!json_is_object(cfg)) {
        json_decref(cfg);
        return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: cannot parse (line %d: %s)", p, je.line, je.text);
      }
    }
  }
  int rc = nq_ckpt_open(path, &m->ck, err);
  ct_ld_t L = {m, err};
  nq_clip_text_config_t *c = &m->cfg;
  const nq_ckpt_tensor_t *t;
  if (rc) goto out;
  if (!(m->layout = nq_clip_text_detect(m->ck))) {
    rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL,
                    "no CLIP text encoder: neither 'text_model.embeddings.token_embedding.weight' nor "
                    "'cond_stage_model.transformer.text_model.embeddings.token_embedding.weight' is present");
    goto out;
  }
  if (!(t = ct__get(&L, 2, NQ_SHAPE(-1, -1), "text_model.embeddings.token_embedding.weight"))) goto fail;
  c->vocab_size = (int)t->shape[0], c->hidden = (int)t->shape[1];
  const int64_t D = c->hidden, V = c->vocab_size;
  nq_tensor_init_borrowed(&m->tok_emb, t->dtype, 2, NQ_SHAPE(V, D), (void *)t->data);
  if (!(t = ct__get(&L, 2, NQ_SHAPE(-1, D), "text_model.embeddings.position_embedding.weight"))) goto fail;
  c->max_pos = (int)t->shape[0];
  if ((rc = ct__f32(&L, &m->pos_emb, t, 2, NQ_SHAPE(c->max_pos, D)))) goto out;
  char nm[256];
  int nl = 0;
  for (; nl < 1024; nl++) {
    char hf[128];
    snprintf(hf, sizeof hf, "text_model.encoder.layers.%d.self_attn.q_proj.weight", nl);
    if (!nq_ckpt_find(m->ck, nq_clip_text_name(m->layout, hf, nm, sizeof nm))) break;
  }
  c->n_layers = nl;
  if (!(t = ct__get(&L, 2, NQ_SHAPE(-1, D), "text_model.encoder.layers.0.mlp.fc1.weight"))) goto fail;
  c->intermediate = (int)t->shape[0];
  c->n_heads = (int)(D % 64 == 0 ? D / 64 : 1);
  c->eps = 1e-5f;
  c->act = NQ_OP_QUICK_GELU;
  if (cfg) {
    json_t *v;
#define CT_CHECK(key, field)                                                                                      \
  if ((v = json_object_get(cfg, key)) && json_is_integer(v) && json_integer_value(v) != c->field) {               \
    rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "config.json %s = %lld but the weights say %d", key,           \
                    (long long)json_integer_value(v), c->field);                                                  \
    goto out;                                                                                                     \
  }
    CT_CHECK("hidden_size", hidden)
    CT_CHECK("num_hidden_layers", n_layers)
    CT_CHECK("intermediate_size", intermediate)
    CT_CHECK("vocab_size", vocab_size)
#undef CT_CHECK
    if ((v = json_object_get(cfg, "num_attention_heads")) && json_is_integer(v)) c->n_heads = (int)json_integer_value(v);
    if ((v = json_object_get(cfg, "layer_norm_eps")) && json_is_number(v)) c->eps = (float)json_number_value(v);
    const char *act = json_string_value(json_object_get(cfg, "hidden_act"));
    if (act && ct__act(act, &c->act) < 0) {
      rc = nq_err_set(err, NQ_EUNSUPPORTED, NQ_ERR_FATAL, "config.json hidden_act '%s' not supported", act);
      goto out;
    }
  }
  if (o->hidden_act && ct__act(o->hidden_act, &c->act) < 0) {
    rc = nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "hidden_act '%s' not supported", o->hidden_act);
    goto out;
  }
  if (o->n_heads > 0) c->n_heads = o->n_heads;
  if (nl < 1 || c->n_heads < 1 || D % c->n_heads) {
    rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "CLIP text: %d layers, %d heads for width %lld", nl, c->n_heads,
                    (long long)D);
    goto out;
  }
  m->layers = calloc((size_t)nl, sizeof *m->layers);
  if (!m->layers) {
    rc = nq_err_set(err, NQ_ENOMEM, 0, "clip text: out of memory");
    goto out;
  }
  const int64_t I = c->intermediate;
  for (int l = 0; l < nl && !rc; l++) {
    nq_clip_text_layer_t *Y = &m->layers[l];
    char pre[96], hf[160];
    snprintf(pre, sizeof pre, "text_model.encoder.layers.%d.", l);
    struct { nq_tensor_t *t; const char *n; } vs[] = {{&Y->ln1_w, "layer_norm1.weight"}, {&Y->ln1_b, "layer_norm1.bias"},
                                                     {&Y->ln2_w, "layer_norm2.weight"}, {&Y->ln2_b, "layer_norm2.bias"}};
    for (int i = 0; i < 4 && !rc; i++) {
      snprintf(hf, sizeof hf, "%s%s", pre, vs[i].n);
      rc = ct__vec(&L, vs[i].t, D, hf);
    }
    if (!rc) rc = ct__lin(&L, &Y->q, pre, "self_attn.q_proj", D, D, o->wdtype);
    if (!rc) rc = ct__lin(&L, &Y->k, pre, "self_attn.k_proj", D, D, o->wdtype);
    if (!rc) rc = ct__lin(&L, &Y->v, pre, "self_attn.v_proj", D, D, o->wdtype);
    if (!rc) rc = ct__lin(&L, &Y->o, pre, "self_attn.out_proj", D, D, o->wdtype);
    if (!rc) rc = ct__lin(&L, &Y->fc1, pre, "mlp.fc1", I, D, o->wdtype);
    if (!rc) rc = ct__lin(&L, &Y->fc2, pre, "mlp.fc2", D, I, o->wdtype);
  }
  if (!rc) rc = ct__vec(&L, &m->final_w, D, "text_model.final_layer_norm.weight");
  if (!rc) rc = ct__vec(&L, &m->final_b, D, "text_model.final_layer_norm.bias");
  goto out;
fail:
  rc = err && err->code ? err->code : NQ_EFORMAT;
out:
  json_decref(cfg);
  return rc;
}

int nq_clip_text_load(const char *path, const nq_clip_text_load_opts_t *opts, nq_clip_text_t **out, nq_err_t *err) {
  *out = NULL;
  nq_clip_text_load_opts_t o;
  if (opts) o = *opts;
  else nq_clip_text_load_opts_init(&o);
  if (o.wdtype >= 0 && o.wdtype != NQ_DT_F32 && o.wdtype != NQ_DT_BF16 && o.wdtype != NQ_DT_F16)
    return nq_err_set(err, NQ_EINVAL, 0, "clip text: weight dtype %s not supported", nq_dtype_name((nq_dtype_t)o.wdtype));
  nq_clip_text_t *m = calloc(1, sizeof *m);
  if (!m) return nq_err_set(err, NQ_ENOMEM, 0, "clip text: out of memory");
  snprintf(m->path, sizeof m->path, "%s", path);
  int rc = ct__load(m, path, &o, err);
  if (!rc && !(m->ex = nq_exec_new(o.backends ? o.backends : "auto", NULL, err))) rc = err ? err->code : NQ_EINTERNAL;
  for (int l = 0; !rc && l < m->cfg.n_layers; l++) {
    nq_clip_text_layer_t *Y = &m->layers[l];
    nq_linear_t *ls[] = {&Y->q, &Y->k, &Y->v, &Y->o, &Y->fc1, &Y->fc2};
    for (int i = 0; i < 6 && !rc; i++) rc = nq_exec_linear_prepare(m->ex, ls[i], err);
  }
  if (rc) {
    nq_err_prefix(err, "clip text %s", path);
    nq_clip_text_free(m);
    return rc;
  }
  *out = m;
  return 0;
}

void nq_clip_text_free(nq_clip_text_t *m) {
  if (!m) return;
  if (m->layers)
    for (int l = 0; l < m->cfg.n_layers; l++) {
      nq_clip_text_layer_t *Y = &m->layers[l];
      nq_tensor_deinit(&Y->ln1_w), nq_tensor_deinit(&Y->ln1_b), nq_tensor_deinit(&Y->ln2_w), nq_tensor_deinit(&Y->ln2_b);
      nq_linear_t *ls[] = {&Y->q, &Y->k, &Y->v, &Y->o, &Y->fc1, &Y->fc2};
      for (int i = 0; i < 6; i++) nq_linear_deinit(ls[i]);
    }
  free(m->layers);
  nq_tensor_deinit(&m->tok_emb), nq_tensor_deinit(&m->pos_emb);
  nq_tensor_deinit(&m->final_w), nq_tensor_deinit(&m->final_b);
  nq_exec_free(m->ex);
  nq_ckpt_close(m->ck);
  free(m);
}

#define CT2(p, rows, cols) ct__v2((p), (rows), (cols))
static nq_tensor_t ct__v2(float *p, int64_t rows, int64_t cols) {
  nq_tensor_t t;
  nq_tensor_init_borrowed(&t, NQ_DT_F32, 2, NQ_SHAPE(rows, cols), p);
  return t;
}

int nq_clip_text_forward(nq_clip_text_t *m, const int64_t *ids, int64_t B, int64_t T, float *last_hidden, float *pooled,
                         nq_err_t *err) {
  const nq_clip_text_config_t *c = &m->cfg;
  if (B < 1 || T < 1 || T > c->max_pos)
    return nq_err_set(err, NQ_ESHAPE, NQ_ERR_FATAL, "clip text: input_ids [%lld,%lld] (at most %d positions)",
                      (long long)B, (long long)T, c->max_pos);
  const int64_t R = B * T, D = c->hidden, I = c->intermediate, H = c->n_heads;
  for (int64_t i = 0; i < R; i++)
    if (ids[i] < 0 || ids[i] >= c->vocab_size)
      return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "clip text: input_ids[%lld][%lld] = %lld outside vocab %d",
                        (long long)(i / T), (long long)(i % T), (long long)ids[i], c->vocab_size);
  size_t nfl = (size_t)(R * (6 * D + I));
  float *buf = malloc(nfl * sizeof(float));
  int32_t *id32 = malloc(sizeof(int32_t) * (size_t)R);
  if (!buf || !id32) {
    free(buf), free(id32);
    return nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "clip text: scratch for %lld tokens", (long long)R);
  }
  float *px = buf, *ph = px + R * D, *pq = ph + R * D, *pk = pq + R * D, *pv = pk + R * D, *pa = pv + R * D,
        *pm = pa + R * D;
  nq_tensor_t x = CT2(px, R, D), h = CT2(ph, R, D), q = CT2(pq, R, D), k = CT2(pk, R, D), v = CT2(pv, R, D),
              a = CT2(pa, R, D), mm = CT2(pm, R, I);
  for (int64_t i = 0; i < R; i++) id32[i] = (int32_t)ids[i];
  nq_tensor_t tid;
  nq_tensor_init_borrowed(&tid, NQ_DT_I32, 1, &R, id32);
  nq_exec_t *ex = m->ex;
  int rc = nq_op_embed(ex, &x, &m->tok_emb, &tid, err);
  for (int64_t b = 0; b < B && !rc; b++) {
    nq_tensor_t xb = CT2(px + b * T * D, T, D), pe = CT2(m->pos_emb.data, T, D);
    rc = nq_op_binary(ex, NQ_OP_ADD, &xb, &xb, &pe, err);
  }
  const float scale = 1.0f / sqrtf((float)(D / H));
  for (int l = 0; l < c->n_layers && !rc; l++) {
    nq_clip_text_layer_t *Y = &m->layers[l];
    if ((rc = nq_op_layernorm(ex, &h, &x, &Y->ln1_w, &Y->ln1_b, c->eps, err))) break;
    if ((rc = nq_op_linear(ex, &q, &h, &Y->q, err))) break;
    if ((rc = nq_op_linear(ex, &k, &h, &Y->k, err))) break;
    if ((rc = nq_op_linear(ex, &v, &h, &Y->v, err))) break;
    for (int64_t b = 0; b < B && !rc; b++) {
      nq_tensor_t qb = CT2(pq + b * T * D, T, D), kb = CT2(pk + b * T * D, T, D), vb = CT2(pv + b * T * D, T, D),
                  ob = CT2(pa + b * T * D, T, D);
      rc = nq_op_attention(ex, &ob, &qb, &kb, &vb, (int)H, (int)H, 0, 1, scale, err);
    }
    if (rc) break;
    if ((rc = nq_op_linear(ex, &h, &a, &Y->o, err))) break;
    if ((rc = nq_op_binary(ex, NQ_OP_ADD, &x, &x, &h, err))) break;
    if ((rc = nq_op_layernorm(ex, &h, &x, &Y->ln2_w, &Y->ln2_b, c->eps, err))) break;
    if ((rc = nq_op_linear(ex, &mm, &h, &Y->fc1, err))) break;
    if ((rc = nq_op_unary(ex, c->act, &mm, &mm, err))) break;
    if ((rc = nq_op_linear(ex, &h, &mm, &Y->fc2, err))) break;
    if ((rc = nq_op_binary(ex, NQ_OP_ADD, &x, &x, &h, err))) break;
  }
  if (!rc) {
    nq_tensor_t out = last_hidden ? CT2(last_hidden, R, D) : h;
    rc = nq_op_layernorm(ex, &out, &x, &m->final_w, &m->final_b, c->eps, err);
    if (!rc && pooled)
      for (int64_t b = 0; b < B; b++) {
        int64_t am = 0;
        for (int64_t t = 1; t < T; t++)
          if (ids[b * T + t] > ids[b * T + am]) am = t;
        memcpy(pooled + b * D, (float *)out.data + (b * T + am) * D, sizeof(float) * (size_t)D);
      }
  }
  free(buf);
  free(id32);
  return rc;
}

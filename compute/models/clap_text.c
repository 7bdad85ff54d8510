/* compute/models/clap_text.c — CLAP text encoder (RoBERTa + projection), see clap_text.h. */
#include "compute/models/clap_text.h"

#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "compute/io/pickle.h"

typedef struct nq_clap__layer {
  nq_linear_t q, k, v, o;                 /* [H,H] + bias */
  nq_tensor_t ln1_w, ln1_b;               /* attention.output.LayerNorm [H] F32 */
  nq_linear_t fc1, fc2;                   /* intermediate.dense [F,H], output.dense [H,F] */
  nq_tensor_t ln2_w, ln2_b;               /* output.LayerNorm [H] F32 */
} nq_clap__layer_t;

struct nq_clap_text {
  nq_clap_text_config_t cfg;
  char prefix[32];            /* "text_model." or "" */
  nq_tensor_t word;           /* [V,H] borrowed from ck (F32/BF16/F16) */
  nq_tensor_t pos;            /* [max_pos,H] F32 (borrowed or owned) */
  nq_tensor_t tt0;            /* [H] F32: token_type_embeddings row 0 */
  nq_tensor_t eln_w, eln_b;   /* embeddings.LayerNorm [H] F32 */
  nq_clap__layer_t *layers;   /* owned [n_layers] */
  nq_linear_t pooler;         /* [H,H] */
  bool has_proj;
  nq_linear_t proj1, proj2;   /* text_projection.linear1 [P,H], linear2 [P,P] */
  nq_exec_t *ex;              /* owned */
  nq_ckpt_t *ck;              /* owned: borrowed weights point into it */
};

void nq_clap_text_opts_init(nq_clap_text_opts_t *o) {
  memset(o, 0, sizeof *o);
  o->wdtype = -1;
}

const nq_clap_text_config_t *nq_clap_text_config(const nq_clap_text_t *m) { return &m->cfg; }

typedef struct {
  nq_clap_text_t *m;
  nq_err_t *err;
  int wdtype;
} nq_clap__ld_t;

static const nq_ckpt_tensor_t *nq_clap__get(nq_clap__ld_t *L, int ndim, const int64_t *shape, bool prefixed,
                                            const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static const nq_ckpt_tensor_t *nq_clap__get(nq_clap__ld_t *L, int ndim, const int64_t *shape, bool prefixed,
                                            const char *fmt, ...) {
  char rel[200], name[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(rel, sizeof rel, fmt, ap);
  va_end(ap);
  snprintf(name, sizeof name, "%s%s", prefixed ? L->m->prefix : "", rel);
  const nq_ckpt_tensor_t *t = nq_ckpt_find(L->m->ck, name);
  if (!t) {
    nq_err_set(L->err, NQ_EFORMAT, NQ_ERR_FATAL, "clap text: tensor '%s' is missing", name);
    return NULL;
  }
  int ok = (t->dtype == NQ_DT_F32 || t->dtype == NQ_DT_BF16 || t->dtype == NQ_DT_F16) && t->ndim == ndim;
  for (int i = 0; ok && i < ndim; i++) ok = shape[i] < 0 || shape[i] == t->shape[i];
  if (!ok) {
    char have[96] = "", want[96] = "";
    size_t a = 0, b = 0;
    for (int i = 0; i < t->ndim && i < NQ_ST_MAX_DIMS && a < sizeof have; i++)
      a += (size_t)snprintf(have + a, sizeof have - a, "%s%lld", i ? "," : "", (long long)t->shape[i]);
    for (int i = 0; i < ndim && b < sizeof want; i++)
      b += (size_t)snprintf(want + b, sizeof want - b, "%s%lld", i ? "," : "", (long long)shape[i]);
    nq_err_set(L->err, NQ_ESHAPE, NQ_ERR_FATAL, "clap text: tensor '%s' is %s [%s], want a float tensor [%s]", name,
               nq_dtype_name(t->dtype), have, want);
    return NULL;
  }
  return t;
}

/* F32 view of t (borrowed when already F32, else an owned converted copy); `nd`/shape as given. */
static int nq_clap__f32(nq_clap__ld_t *L, nq_tensor_t *out, const void *data, nq_dtype_t dt, int nd,
                        const int64_t *shape) {
  nq_tensor_t w;
  nq_tensor_init_borrowed(&w, dt, nd, shape, (void *)data);
  if (dt == NQ_DT_F32) {
    *out = w;
    return 0;
  }
  int rc = nq_tensor_init(out, NQ_DT_F32, nd, shape, L->err);
  if (!rc) rc = nq_tensor_copy(out, &w, L->err);
  return rc;
}

static int nq_clap__vec(nq_clap__ld_t *L, nq_tensor_t *out, int64_t n, bool prefixed, const char *name) {
  const nq_ckpt_tensor_t *t = nq_clap__get(L, 1, &n, prefixed, "%s", name);
  return t ? nq_clap__f32(L, out, t->data, t->dtype, 1, &n) : L->err->code;
}

static int nq_clap__lin(nq_clap__ld_t *L, nq_linear_t *lin, bool prefixed, const char *pfx, int64_t n, int64_t k) {
  const nq_ckpt_tensor_t *t = nq_clap__get(L, 2, NQ_SHAPE(n, k), prefixed, "%s.weight", pfx);
  if (!t) return L->err->code;
  nq_tensor_t w, b;
  nq_tensor_init_borrowed(&w, t->dtype, 2, NQ_SHAPE(n, k), (void *)t->data);
  int rc;
  if (L->wdtype >= 0 && w.dtype != (nq_dtype_t)L->wdtype) {
    nq_tensor_t c;
    if ((rc = nq_tensor_init(&c, (nq_dtype_t)L->wdtype, 2, w.ne, L->err))) return rc;
    if ((rc = nq_tensor_copy(&c, &w, L->err))) {
      nq_tensor_deinit(&c);
      return rc;
    }
    w = c;
  }
  char bn[256];
  snprintf(bn, sizeof bn, "%s.bias", pfx);
  if ((rc = nq_clap__vec(L, &b, n, prefixed, bn))) {
    nq_tensor_deinit(&w);
    return rc;
  }
  nq_linear_init(lin, &w, &b);
  return nq_exec_linear_prepare(L->m->ex, lin, L->err);
}

static int nq_clap__cfg_int(json_t *cfg, const char *key, int def, int lo, int hi, int *out, const char *path,
                            nq_err_t *err) {
  json_t *v = cfg ? json_object_get(cfg, key) : NULL;
  if (!v || json_is_null(v)) {
    *out = def;
    return 0;
  }
  if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi)
    return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: \"%s\" must be an integer in %d..%d", path, key, lo, hi);
  *out = (int)json_integer_value(v);
  return 0;
}

static int nq_clap__act(const char *s, nq_op_t *out) {
  if (!strcmp(s, "gelu")) *out = NQ_OP_GELU;
  else if (!strcmp(s, "gelu_new") || !strcmp(s, "gelu_pytorch_tanh") || !strcmp(s, "gelu_fast")) *out = NQ_OP_GELU_TANH;
  else if (!strcmp(s, "quick_gelu")) *out = NQ_OP_QUICK_GELU;
  else if (!strcmp(s, "silu") || !strcmp(s, "swish")) *out = NQ_OP_SILU;
  else return -1;
  return 0;
}

static int nq_clap__load(nq_clap_text_t *m, const char *path, const nq_clap_text_opts_t *o, nq_err_t *err) {
  struct stat st;
  char dir[4096], cp[4200];
  if (stat(path, &st) != 0) return nq_err_set(err, NQ_ENOENT, NQ_ERR_FATAL, "clap text: %s: not found", path);
  snprintf(dir, sizeof dir, "%s", path);
  json_t *cfg = NULL;
  int rc = 0;
  if (S_ISDIR(st.st_mode)) {
    snprintf(cp, sizeof cp, "%s/text_encoder/config.json", path);
    if (stat(cp, &st) == 0) snprintf(dir, sizeof dir, "%s/text_encoder", path);
    snprintf(cp, sizeof cp, "%s/config.json", dir);
    if (stat(cp, &st) == 0) {
      json_error_t je;
      cfg = json_load_file(cp, 0, &je);
      if (!json_is_object(cfg)) {
        json_decref(cfg);
        return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: cannot parse (line %d: %s)", cp, je.line, je.text);
      }
      /* a full ClapConfig nests the text side under text_config */
      json_t *tc = json_object_get(cfg, "text_config");
      if (json_is_object(tc)) {
        json_t *pd = json_object_get(cfg, "projection_dim");
        json_incref(tc);
        if (pd && !json_object_get(tc, "projection_dim")) json_object_set(tc, "projection_dim", pd);
        json_decref(cfg);
        cfg = tc;
      }
    }
  }
  nq_clap_text_config_t *c = &m->cfg;
  nq_clap__ld_t L = {m, err, o->wdtype};
  const nq_ckpt_tensor_t *t;
  if ((rc = nq_ckpt_open(dir, &m->ck, err))) goto out;
  if (nq_ckpt_find(m->ck, "text_model.embeddings.word_embeddings.weight")) snprintf(m->prefix, sizeof m->prefix, "text_model.");
  else if (!nq_ckpt_find(m->ck, "embeddings.word_embeddings.weight")) {
    rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL,
                    "clap text: %s: no 'text_model.embeddings.word_embeddings.weight' (nor the unprefixed name)", dir);
    goto out;
  }
  if (!(t = nq_clap__get(&L, 2, NQ_SHAPE(-1, -1), true, "embeddings.word_embeddings.weight"))) goto fail;
  c->vocab_size = (int)t->shape[0], c->hidden = (int)t->shape[1];
  const int64_t H = c->hidden;
  nq_tensor_init_borrowed(&m->word, t->dtype, 2, NQ_SHAPE(c->vocab_size, H), (void *)t->data);
  if (!(t = nq_clap__get(&L, 2, NQ_SHAPE(-1, H), true, "embeddings.position_embeddings.weight"))) goto fail;
  c->max_pos = (int)t->shape[0];
  if ((rc = nq_clap__f32(&L, &m->pos, t->data, t->dtype, 2, NQ_SHAPE(c->max_pos, H)))) goto out;
  if (!(t = nq_clap__get(&L, 2, NQ_SHAPE(-1, H), true, "embeddings.token_type_embeddings.weight"))) goto fail;
  c->type_vocab_size = (int)t->shape[0];
  if ((rc = nq_clap__f32(&L, &m->tt0, t->data, t->dtype, 1, NQ_SHAPE(H)))) goto out; /* row 0 */
  if ((rc = nq_clap__vec(&L, &m->eln_w, H, true, "embeddings.LayerNorm.weight")) ||
      (rc = nq_clap__vec(&L, &m->eln_b, H, true, "embeddings.LayerNorm.bias")))
    goto out;
  int nl = 0;
  char nm[256];
  for (; nl < 1024; nl++) {
    snprintf(nm, sizeof nm, "%sencoder.layer.%d.attention.self.query.weight", m->prefix, nl);
    if (!nq_ckpt_find(m->ck, nm)) break;
  }
  if (!(t = nq_clap__get(&L, 2, NQ_SHAPE(-1, H), true, "encoder.layer.0.intermediate.dense.weight"))) goto fail;
  c->intermediate = (int)t->shape[0];
  c->n_layers = nl;
  if ((rc = nq_clap__cfg_int(cfg, "num_attention_heads", (int)(H / 64 > 0 ? H / 64 : 1), 1, 4096, &c->n_heads, cp,
                             err)) ||
      (rc = nq_clap__cfg_int(cfg, "pad_token_id", 1, 0, c->vocab_size - 1, &c->pad_token_id, cp, err)) ||
      (rc = nq_clap__cfg_int(cfg, "num_hidden_layers", nl, nl, nl, &nl, cp, err)))
    goto out;
  if (H % c->n_heads) {
    rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "clap text: hidden %lld is not a multiple of %d heads", (long long)H,
                    c->n_heads);
    goto out;
  }
  json_t *e = cfg ? json_object_get(cfg, "layer_norm_eps") : NULL;
  c->eps = json_is_number(e) ? (float)json_number_value(e) : 1e-12f;
  const char *act = cfg ? json_string_value(json_object_get(cfg, "hidden_act")) : NULL;
  c->act = NQ_OP_GELU;
  if (act && nq_clap__act(act, &c->act) < 0) {
    rc = nq_err_set(err, NQ_EUNSUPPORTED, NQ_ERR_FATAL, "%s: hidden_act \"%s\" not supported", cp, act);
    goto out;
  }
  const char *pet = cfg ? json_string_value(json_object_get(cfg, "position_embedding_type")) : NULL;
  if (pet && strcmp(pet, "absolute")) {
    rc = nq_err_set(err, NQ_EUNSUPPORTED, NQ_ERR_FATAL, "%s: position_embedding_type \"%s\" not supported", cp, pet);
    goto out;
  }
  const char *pact = cfg ? json_string_value(json_object_get(cfg, "projection_hidden_act")) : NULL;
  if (pact && strcmp(pact, "relu")) {
    rc = nq_err_set(err, NQ_EUNSUPPORTED, NQ_ERR_FATAL, "%s: projection_hidden_act \"%s\" not supported", cp, pact);
    goto out;
  }
  if (!(m->ex = nq_exec_new(o->backends ? o->backends : "auto", NULL, err))) {
    rc = err ? err->code : NQ_EINTERNAL;
    goto out;
  }
  if (!(m->layers = calloc((size_t)nl, sizeof *m->layers))) {
    rc = nq_err_set(err, NQ_ENOMEM, 0, "clap text: out of memory");
    goto out;
  }
  const int64_t F = c->intermediate;
  for (int l = 0; l < nl && !rc; l++) {
    nq_clap__layer_t *Y = &m->layers[l];
    char p[160];
#define NQ_CLAP_LIN(field, sub, n, k) \
  (snprintf(p, sizeof p, "encoder.layer.%d.%s", l, sub), nq_clap__lin(&L, &Y->field, true, p, n, k))
#define NQ_CLAP_VEC(field, sub) \
  (snprintf(p, sizeof p, "encoder.layer.%d.%s", l, sub), nq_clap__vec(&L, &Y->field, H, true, p))
    if ((rc = NQ_CLAP_LIN(q, "attention.self.query", H, H)) || (rc = NQ_CLAP_LIN(k, "attention.self.key", H, H)) ||
        (rc = NQ_CLAP_LIN(v, "attention.self.value", H, H)) || (rc = NQ_CLAP_LIN(o, "attention.output.dense", H, H)) ||
        (rc = NQ_CLAP_VEC(ln1_w, "attention.output.LayerNorm.weight")) ||
        (rc = NQ_CLAP_VEC(ln1_b, "attention.output.LayerNorm.bias")) ||
        (rc = NQ_CLAP_LIN(fc1, "intermediate.dense", F, H)) || (rc = NQ_CLAP_LIN(fc2, "output.dense", H, F)) ||
        (rc = NQ_CLAP_VEC(ln2_w, "output.LayerNorm.weight")) || (rc = NQ_CLAP_VEC(ln2_b, "output.LayerNorm.bias")))
      goto out;
#undef NQ_CLAP_LIN
#undef NQ_CLAP_VEC
  }
  if ((rc = nq_clap__lin(&L, &m->pooler, true, "pooler.dense", H, H))) goto out;
  if (nq_ckpt_find(m->ck, "text_projection.linear1.weight")) {
    if (!(t = nq_clap__get(&L, 2, NQ_SHAPE(-1, H), false, "text_projection.linear1.weight"))) goto fail;
    c->projection_dim = (int)t->shape[0];
    const int64_t P = c->projection_dim;
    if ((rc = nq_clap__lin(&L, &m->proj1, false, "text_projection.linear1", P, H)) ||
        (rc = nq_clap__lin(&L, &m->proj2, false, "text_projection.linear2", P, P)))
      goto out;
    m->has_proj = true;
  }
  goto out;
fail:
  rc = err && err->code ? err->code : NQ_EFORMAT;
out:
  json_decref(cfg);
  return rc;
}

int nq_clap_text_load(const char *path, const nq_clap_text_opts_t *opts, nq_clap_text_t **out, nq_err_t *err) {
  nq_clap_text_opts_t dflt;
  if (!opts) nq_clap_text_opts_init(&dflt), opts = &dflt;
  *out = NULL;
  if (opts->wdtype >= 0 && opts->wdtype != NQ_DT_F32 && opts->wdtype != NQ_DT_BF16 && opts->wdtype != NQ_DT_F16)
    return nq_err_set(err, NQ_EINVAL, 0, "clap text: weight dtype %s not supported",
                      nq_dtype_name((nq_dtype_t)opts->wdtype));
  nq_clap_text_t *m = calloc(1, sizeof *m);
  if (!m) return nq_err_set(err, NQ_ENOMEM, 0, "clap text: out of memory");
  int rc = nq_clap__load(m, path, opts, err);
  if (rc) {
    nq_clap_text_free(m);
    return rc;
  }
  *out = m;
  return 0;
}

void nq_clap_text_free(nq_clap_text_t *m) {
  if (!m) return;
  for (int l = 0; m->layers && l < m->cfg.n_layers; l++) {
    nq_clap__layer_t *Y = &m->layers[l];
    nq_linear_t *ls[] = {&Y->q, &Y->k, &Y->v, &Y->o, &Y->fc1, &Y->fc2};
    for (int i = 0; i < 6; i++) nq_linear_deinit(ls[i]);
    nq_tensor_deinit(&Y->ln1_w), nq_tensor_deinit(&Y->ln1_b), nq_tensor_deinit(&Y->ln2_w), nq_tensor_deinit(&Y->ln2_b);
  }
  free(m->layers);
  nq_linear_deinit(&m->pooler), nq_linear_deinit(&m->proj1), nq_linear_deinit(&m->proj2);
  nq_tensor_deinit(&m->pos), nq_tensor_deinit(&m->tt0), nq_tensor_deinit(&m->eln_w), nq_tensor_deinit(&m->eln_b);
  if (m->ex) nq_exec_free(m->ex);
  if (m->ck) nq_ckpt_close(m->ck);
  free(m);
}

int nq_clap_text_forward(nq_clap_text_t *m, const int64_t *ids, const int64_t *mask, int64_t B, int64_t L,
                         float *text_embeds, float *last_hidden, nq_err_t *err) {
  const nq_clap_text_config_t *c = &m->cfg;
  const int64_t H = c->hidden, F = c->intermediate, NH = c->n_heads, P = c->projection_dim, M = B * L;
  const int pad = c->pad_token_id;
  if (B < 1 || L < 1 || L > c->max_pos - pad - 1)
    return nq_err_set(err, NQ_ESHAPE, NQ_ERR_FATAL, "clap text: batch %lld x length %lld (length must be 1..%d)",
                      (long long)B, (long long)L, c->max_pos - pad - 1);
  if (text_embeds && !m->has_proj)
    return nq_err_set(err, NQ_EUNSUPPORTED, NQ_ERR_FATAL, "clap text: the checkpoint has no text_projection");
  for (int64_t i = 0; i < M; i++)
    if (ids[i] < 0 || ids[i] >= c->vocab_size)
      return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "clap text: input id %lld at [%lld,%lld] is outside the vocabulary (%d)",
                        (long long)ids[i], (long long)(i / L), (long long)(i % L), c->vocab_size);
  nq_exec_t *ex = m->ex;
  nq_tensor_t x = {0}, h = {0}, q = {0}, k = {0}, v = {0}, a = {0}, mm = {0}, kc = {0}, vc = {0}, tid = {0};
  int rc;
  if ((rc = nq_tensor_init(&x, NQ_DT_F32, 2, NQ_SHAPE(M, H), err)) || (rc = nq_tensor_init(&h, NQ_DT_F32, 2, NQ_SHAPE(M, H), err)) ||
      (rc = nq_tensor_init(&q, NQ_DT_F32, 2, NQ_SHAPE(M, H), err)) || (rc = nq_tensor_init(&k, NQ_DT_F32, 2, NQ_SHAPE(M, H), err)) ||
      (rc = nq_tensor_init(&v, NQ_DT_F32, 2, NQ_SHAPE(M, H), err)) || (rc = nq_tensor_init(&a, NQ_DT_F32, 2, NQ_SHAPE(M, H), err)) ||
      (rc = nq_tensor_init(&mm, NQ_DT_F32, 2, NQ_SHAPE(M, F), err)) ||
      (rc = nq_tensor_init(&kc, NQ_DT_F32, 2, NQ_SHAPE(L, H), err)) ||
      (rc = nq_tensor_init(&vc, NQ_DT_F32, 2, NQ_SHAPE(L, H), err)) ||
      (rc = nq_tensor_init(&tid, NQ_DT_I32, 1, NQ_SHAPE(M), err)))
    goto out;
  /* embeddings: word[ids] + token_type[0] + position[cumsum(ids != pad) * (ids != pad) + pad] */
  int32_t *ti = tid.data;
  for (int64_t i = 0; i < M; i++) ti[i] = (int32_t)ids[i];
  if ((rc = nq_op_embed(ex, &x, &m->word, &tid, err))) goto out;
  {
    float *xd = x.data;
    const float *pe = m->pos.data, *tt = m->tt0.data;
    for (int64_t b = 0; b < B; b++) {
      int64_t cum = 0;
      for (int64_t t = 0; t < L; t++) {
        int ne = ids[b * L + t] != pad;
        cum += ne;
        int64_t p = cum * ne + pad;
        float *row = xd + (b * L + t) * H;
        for (int64_t j = 0; j < H; j++) row[j] += tt[j] + pe[p * H + j];
      }
    }
  }
  if ((rc = nq_op_layernorm(ex, &x, &x, &m->eln_w, &m->eln_b, c->eps, err))) goto out;
  const float scale = 1.0f / sqrtf((float)(H / NH));
  for (int l = 0; l < c->n_layers; l++) {
    nq_clap__layer_t *Y = &m->layers[l];
    if ((rc = nq_op_linear(ex, &q, &x, &Y->q, err)) || (rc = nq_op_linear(ex, &k, &x, &Y->k, err)) ||
        (rc = nq_op_linear(ex, &v, &x, &Y->v, err)))
      goto out;
    for (int64_t b = 0; b < B; b++) {
      /* keys with mask 1 only (softmax over the kept keys = HF's additive finfo.min mask) */
      int64_t S = 0;
      const float *kd = (const float *)k.data + b * L * H, *vd = (const float *)v.data + b * L * H;
      for (int64_t t = 0; t < L; t++)
        if (!mask || mask[b * L + t]) {
          memcpy((float *)kc.data + S * H, kd + t * H, (size_t)H * sizeof(float));
          memcpy((float *)vc.data + S * H, vd + t * H, (size_t)H * sizeof(float));
          S++;
        }
      if (S == 0) { /* all masked: HF's scores all sit at finfo.min -> uniform weights over every key */
        memset(kc.data, 0, (size_t)(L * H) * sizeof(float));
        memcpy(vc.data, vd, (size_t)(L * H) * sizeof(float));
        S = L;
      }
      nq_tensor_t qb, ob, kb, vb;
      if ((rc = nq_tensor_view_slice(&q, 0, b * L, L, &qb, err)) || (rc = nq_tensor_view_slice(&a, 0, b * L, L, &ob, err)) ||
          (rc = nq_tensor_view_slice(&kc, 0, 0, S, &kb, err)) || (rc = nq_tensor_view_slice(&vc, 0, 0, S, &vb, err)))
        goto out;
      if ((rc = nq_op_attention(ex, &ob, &qb, &kb, &vb, (int)NH, (int)NH, 0, 0, scale, err))) goto out;
    }
    if ((rc = nq_op_linear(ex, &h, &a, &Y->o, err)) || (rc = nq_op_binary(ex, NQ_OP_ADD, &x, &x, &h, err)) ||
        (rc = nq_op_layernorm(ex, &x, &x, &Y->ln1_w, &Y->ln1_b, c->eps, err)) ||
        (rc = nq_op_linear(ex, &mm, &x, &Y->fc1, err)) || (rc = nq_op_unary(ex, c->act, &mm, &mm, err)) ||
        (rc = nq_op_linear(ex, &h, &mm, &Y->fc2, err)) || (rc = nq_op_binary(ex, NQ_OP_ADD, &x, &x, &h, err)) ||
        (rc = nq_op_layernorm(ex, &x, &x, &Y->ln2_w, &Y->ln2_b, c->eps, err)))
      goto out;
  }
  if (last_hidden) memcpy(last_hidden, x.data, (size_t)(M * H) * sizeof(float));
  if (text_embeds) {
    nq_tensor_t cls = {0}, pooled = {0}, p1 = {0}, p2 = {0};
    if ((rc = nq_tensor_init(&cls, NQ_DT_F32, 2, NQ_SHAPE(B, H), err)) ||
        (rc = nq_tensor_init(&pooled, NQ_DT_F32, 2, NQ_SHAPE(B, H), err)) ||
        (rc = nq_tensor_init(&p1, NQ_DT_F32, 2, NQ_SHAPE(B, P), err)))
      goto pout;
    for (int64_t b = 0; b < B; b++)
      memcpy((float *)cls.data + b * H, (const float *)x.data + b * L * H, (size_t)H * sizeof(float));
    if ((rc = nq_op_linear(ex, &pooled, &cls, &m->pooler, err))) goto pout;
    for (int64_t i = 0; i < B * H; i++) ((float *)pooled.data)[i] = tanhf(((float *)pooled.data)[i]);
    if ((rc = nq_op_linear(ex, &p1, &pooled, &m->proj1, err))) goto pout;
    for (int64_t i = 0; i < B * P; i++) ((float *)p1.data)[i] = fmaxf(((float *)p1.data)[i], 0.f);
    nq_tensor_init_borrowed(&p2, NQ_DT_F32, 2, NQ_SHAPE(B, P), text_embeds);
    rc = nq_op_linear(ex, &p2, &p1, &m->proj2, err);
  pout:
    nq_tensor_deinit(&cls), nq_tensor_deinit(&pooled), nq_tensor_deinit(&p1);
  }
out:
  nq_tensor_deinit(&x), nq_tensor_deinit(&h), nq_tensor_deinit(&q), nq_tensor_deinit(&k), nq_tensor_deinit(&v);
  nq_tensor_deinit(&a), nq_tensor_deinit(&mm), nq_tensor_deinit(&kc), nq_tensor_deinit(&vc), nq_tensor_deinit(&tid);
  return rc;
}

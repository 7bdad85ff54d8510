/* LLaMA: loading (llama2.c .bin, HF directory), LoRA, KV cache and the batched forward. */
#include "compute/models/llama.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

void nq_llama_load_opts_init(nq_llama_load_opts_t *o) {
  memset(o, 0, sizeof(*o));
  o->wdtype = -1;
}

/* ---- loading helpers ---- */

static void nq_llama__wrap(nq_tensor_t *t, nq_dtype_t dt, int ndim, const int64_t *shape, const void *data) {
  nq_tensor_init_borrowed(t, dt, ndim, shape, (void *)data); /* weights are never written through */
}

/* Converts t in place to dtype dt (owned copy) unless it already is. */
static int nq_llama__convert(nq_tensor_t *t, nq_dtype_t dt, nq_err_t *err) {
  if (t->dtype == dt) return 0;
  nq_tensor_t c;
  int rc = nq_tensor_init(&c, dt, t->ndim, t->ne, err);
  if (rc < 0) return rc;
  if ((rc = nq_tensor_copy(&c, t, err)) < 0) {
    nq_tensor_deinit(&c);
    return rc;
  }
  nq_tensor_deinit(t);
  *t = c;
  return 0;
}

static void nq_llama__lin(nq_linear_t *lin, nq_dtype_t dt, int64_t n, int64_t k, const void *data) {
  nq_tensor_t w;
  nq_llama__wrap(&w, dt, 2, NQ_SHAPE(n, k), data);
  nq_linear_init(lin, &w, NULL);
}

static int nq_llama__load_llama2c(nq_llama_model_t *m, nq_err_t *err) {
  nq_llama2c_file_t *f = &m->l2c;
  int rc = nq_llama2c_open(m->path, f, err);
  if (rc < 0) return rc;
  nq_llama_config_t *c = &m->cfg;
  c->dim = f->dim, c->hidden_dim = f->hidden_dim, c->n_layers = f->n_layers, c->n_heads = f->n_heads;
  c->n_kv_heads = f->n_kv_heads, c->head_dim = f->dim / f->n_heads, c->vocab_size = f->vocab_size;
  c->max_ctx = f->seq_len, c->norm_eps = 1e-5f, c->rope_theta = 10000.0f, c->rope_mode = NQ_ROPE_INTERLEAVED;
  c->bos_id = 1, c->eos_id = 2;
  snprintf(m->format, sizeof m->format, "llama2c");
  int64_t D = c->dim, F = c->hidden_dim, Q = (int64_t)c->n_heads * c->head_dim, KV = (int64_t)c->n_kv_heads * c->head_dim;
  m->layers = calloc((size_t)c->n_layers, sizeof(nq_llama_layer_t));
  if (!m->layers) return nq_err_set(err, NQ_ENOMEM, 0, "llama: out of memory");
  nq_llama__wrap(&m->tok_emb, NQ_DT_F32, 2, NQ_SHAPE(c->vocab_size, D), f->tok_emb);
  for (int l = 0; l < c->n_layers; l++) {
    nq_llama_layer_t *L = &m->layers[l];
    nq_llama__wrap(&L->attn_norm, NQ_DT_F32, 1, &D, f->rms_att + l * D);
    nq_llama__wrap(&L->ffn_norm, NQ_DT_F32, 1, &D, f->rms_ffn + l * D);
    nq_llama__lin(&L->wq, NQ_DT_F32, Q, D, f->wq + l * Q * D);
    nq_llama__lin(&L->wk, NQ_DT_F32, KV, D, f->wk + l * KV * D);
    nq_llama__lin(&L->wv, NQ_DT_F32, KV, D, f->wv + l * KV * D);
    nq_llama__lin(&L->wo, NQ_DT_F32, D, Q, f->wo + l * D * Q);
    nq_llama__lin(&L->w1, NQ_DT_F32, F, D, f->w1 + l * F * D);
    nq_llama__lin(&L->w2, NQ_DT_F32, D, F, f->w2 + l * D * F);
    nq_llama__lin(&L->w3, NQ_DT_F32, F, D, f->w3 + l * F * D);
  }
  nq_llama__wrap(&m->final_norm, NQ_DT_F32, 1, &D, f->rms_final);
  nq_llama__lin(&m->lm_head, NQ_DT_F32, c->vocab_size, D, f->wcls);
  return 0;
}

static int nq_llama__hf_lin(nq_llama_model_t *m, nq_linear_t *lin, int layer, const char *fmt, int64_t n, int64_t k,
                            nq_err_t *err) {
  const nq_st_tensor_t *t = nq_hf_llama_tensor(&m->hf, layer, fmt, 2, NQ_SHAPE(n, k), err);
  if (!t) return err ? err->code : NQ_EFORMAT;
  nq_llama__lin(lin, t->dtype, n, k, t->data);
  return 0;
}

static int nq_llama__hf_norm(nq_llama_model_t *m, nq_tensor_t *out, int layer, const char *fmt, int64_t n,
                             nq_err_t *err) {
  const nq_st_tensor_t *t = nq_hf_llama_tensor(&m->hf, layer, fmt, 1, &n, err);
  if (!t) return err ? err->code : NQ_EFORMAT;
  nq_llama__wrap(out, t->dtype, 1, &n, t->data);
  return nq_llama__convert(out, NQ_DT_F32, err);
}

static int nq_llama__load_hf(nq_llama_model_t *m, nq_err_t *err) {
  nq_hf_llama_t *h = &m->hf;
  int rc = nq_hf_llama_open(m->path, h, err);
  if (rc < 0) return rc;
  nq_llama_config_t *c = &m->cfg;
  c->dim = h->dim, c->hidden_dim = h->hidden_dim, c->n_layers = h->n_layers, c->n_heads = h->n_heads;
  c->n_kv_heads = h->n_kv_heads, c->head_dim = h->dim / h->n_heads, c->vocab_size = h->vocab_size;
  c->max_ctx = h->max_pos, c->norm_eps = h->rms_eps, c->rope_theta = h->rope_theta, c->rope_mode = NQ_ROPE_HALF;
  c->bos_id = h->bos_id, c->eos_id = h->eos_id;
  snprintf(m->format, sizeof m->format, "hf-llama");
  int64_t D = c->dim, F = c->hidden_dim, Q = (int64_t)c->n_heads * c->head_dim, KV = (int64_t)c->n_kv_heads * c->head_dim;
  m->layers = calloc((size_t)c->n_layers, sizeof(nq_llama_layer_t));
  if (!m->layers) return nq_err_set(err, NQ_ENOMEM, 0, "llama: out of memory");
  const nq_st_tensor_t *emb = nq_hf_llama_tensor(h, 0, "model.embed_tokens.weight", 2, NQ_SHAPE(c->vocab_size, D), err);
  if (!emb) return err ? err->code : NQ_EFORMAT;
  nq_llama__wrap(&m->tok_emb, emb->dtype, 2, NQ_SHAPE(c->vocab_size, D), emb->data);
  for (int l = 0; l < c->n_layers && rc == 0; l++) {
    nq_llama_layer_t *L = &m->layers[l];
    if (!rc) rc = nq_llama__hf_norm(m, &L->attn_norm, l, "model.layers.%d.input_layernorm.weight", D, err);
    if (!rc) rc = nq_llama__hf_norm(m, &L->ffn_norm, l, "model.layers.%d.post_attention_layernorm.weight", D, err);
    if (!rc) rc = nq_llama__hf_lin(m, &L->wq, l, "model.layers.%d.self_attn.q_proj.weight", Q, D, err);
    if (!rc) rc = nq_llama__hf_lin(m, &L->wk, l, "model.layers.%d.self_attn.k_proj.weight", KV, D, err);
    if (!rc) rc = nq_llama__hf_lin(m, &L->wv, l, "model.layers.%d.self_attn.v_proj.weight", KV, D, err);
    if (!rc) rc = nq_llama__hf_lin(m, &L->wo, l, "model.layers.%d.self_attn.o_proj.weight", D, Q, err);
    if (!rc) rc = nq_llama__hf_lin(m, &L->w1, l, "model.layers.%d.mlp.gate_proj.weight", F, D, err);
    if (!rc) rc = nq_llama__hf_lin(m, &L->w2, l, "model.layers.%d.mlp.down_proj.weight", D, F, err);
    if (!rc) rc = nq_llama__hf_lin(m, &L->w3, l, "model.layers.%d.mlp.up_proj.weight", F, D, err);
  }
  if (!rc) rc = nq_llama__hf_norm(m, &m->final_norm, 0, "model.norm.weight", D, err);
  if (rc) return rc;
  if (!h->tie_embeddings && nq_st_find(h->st, "lm_head.weight"))
    return nq_llama__hf_lin(m, &m->lm_head, 0, "lm_head.weight", c->vocab_size, D, err);
  nq_llama__lin(&m->lm_head, emb->dtype, c->vocab_size, D, emb->data); /* tied */
  return 0;
}

static nq_linear_t *nq_llama__linears(nq_llama_model_t *m, int i) {
  /* i over 7 per layer + lm_head */
  int L = i / 7, k = i % 7;
  if (L >= m->cfg.n_layers) return i == m->cfg.n_layers * 7 ? &m->lm_head : NULL;
  nq_llama_layer_t *ly = &m->layers[L];
  nq_linear_t *all[7] = {&ly->wq, &ly->wk, &ly->wv, &ly->wo, &ly->w1, &ly->w2, &ly->w3};
  return all[k];
}

int nq_llama_load(const char *path, const nq_llama_load_opts_t *opts, nq_llama_model_t **out, nq_err_t *err) {
  *out = NULL;
  nq_llama_load_opts_t o;
  if (opts) o = *opts;
  else nq_llama_load_opts_init(&o);
  nq_llama_model_t *m = calloc(1, sizeof(*m));
  if (!m) return nq_err_set(err, NQ_ENOMEM, 0, "llama: out of memory");
  snprintf(m->path, sizeof m->path, "%s", path);
  struct stat st;
  int rc;
  if (stat(path, &st) < 0) rc = nq_err_set(err, NQ_ENOENT, NQ_ERR_FATAL, "%s: not found", path);
  else if (S_ISDIR(st.st_mode)) rc = nq_llama__load_hf(m, err);
  else rc = nq_llama__load_llama2c(m, err);
  if (!rc && o.wdtype >= 0) {
    if (o.wdtype != NQ_DT_F32 && o.wdtype != NQ_DT_BF16 && o.wdtype != NQ_DT_F16)
      rc = nq_err_set(err, NQ_EINVAL, 0, "llama: weight dtype %d not supported", o.wdtype);
    for (int i = 0; !rc; i++) {
      nq_linear_t *lin = nq_llama__linears(m, i);
      if (!lin) break;
      rc = nq_llama__convert(&lin->w, (nq_dtype_t)o.wdtype, err);
    }
  }
  if (!rc && !(m->ex = nq_exec_new(o.backends ? o.backends : "auto", NULL, err))) rc = err ? err->code : NQ_EINTERNAL;
  if (!rc && o.lora_dir) rc = nq_llama_lora_load(m, o.lora_dir, o.lora_merge, err);
  if (rc) {
    nq_err_prefix(err, "loading %s", path);
    nq_llama_free(m);
    return rc;
  }
  *out = m;
  return 0;
}

void nq_llama_free(nq_llama_model_t *m) {
  if (!m) return;
  if (m->layers) {
    for (int l = 0; l < m->cfg.n_layers; l++) {
      nq_llama_layer_t *L = &m->layers[l];
      nq_tensor_deinit(&L->attn_norm), nq_tensor_deinit(&L->ffn_norm);
      nq_linear_t *all[7] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w1, &L->w2, &L->w3};
      for (int i = 0; i < 7; i++) nq_linear_deinit(all[i]);
      for (int i = 0; i < 4; i++) nq_linear_deinit(&L->lora[i].a), nq_linear_deinit(&L->lora[i].b);
    }
    free(m->layers);
  }
  nq_tensor_deinit(&m->tok_emb);
  nq_tensor_deinit(&m->final_norm);
  nq_linear_deinit(&m->lm_head);
  nq_exec_free(m->ex);
  nq_llama2c_close(&m->l2c);
  nq_hf_llama_close(&m->hf);
  free(m);
}

typedef struct {
  nq_tensor_t *t;
  uint64_t seed;
  float scale;
} nq_llama__rnd_t;

static void nq_llama__rnd_cb(void *ctx, int64_t b, int64_t e, int tid) {
  nq_llama__rnd_t *r = ctx;
  uint64_t s = r->seed ^ ((uint64_t)b * 0x9e3779b97f4a7c15ull) ^ 0x2545F4914F6CDD1Dull;
  for (int64_t i = b; i < e; i++) {
    s ^= s << 13, s ^= s >> 7, s ^= s << 17;
    float v = ((float)(s >> 40) * (1.0f / 16777216.0f) * 2.0f - 1.0f) * r->scale;
    if (r->t->dtype == NQ_DT_F32) ((float *)r->t->data)[i] = v;
    else if (r->t->dtype == NQ_DT_BF16) ((uint16_t *)r->t->data)[i] = nq_f32_to_bf16(v);
    else ((uint16_t *)r->t->data)[i] = nq_f32_to_f16(v);
  }
}

static int nq_llama__rnd(nq_tensor_t *t, nq_dtype_t dt, int64_t n, int64_t k, uint64_t seed, nq_err_t *err) {
  int rc = nq_tensor_init(t, dt, k ? 2 : 1, k ? NQ_SHAPE(n, k) : NQ_SHAPE(n), err);
  if (rc < 0) return rc;
  if (!k) {
    for (int64_t i = 0; i < n; i++) ((float *)t->data)[i] = 1.0f;
    return 0;
  }
  nq_llama__rnd_t r = {t, seed, 1.0f / sqrtf((float)k)};
  nq_pool_for(nq_pool_default(), n * k, 1 << 16, nq_llama__rnd_cb, &r);
  return 0;
}

int nq_llama_new_random(const nq_llama_config_t *cfg, nq_dtype_t wdtype, uint64_t seed, const char *backends,
                        nq_llama_model_t **out, nq_err_t *err) {
  *out = NULL;
  const nq_llama_config_t *c = cfg;
  if (c->dim <= 0 || c->n_heads <= 0 || c->dim % c->n_heads || c->n_kv_heads <= 0 || c->n_heads % c->n_kv_heads ||
      c->n_layers <= 0 || c->vocab_size <= 0 || c->hidden_dim <= 0 || c->max_ctx <= 0)
    return nq_err_set(err, NQ_EINVAL, 0, "llama random: inconsistent config");
  nq_llama_model_t *m = calloc(1, sizeof(*m));
  if (!m) return nq_err_set(err, NQ_ENOMEM, 0, "llama: out of memory");
  m->cfg = *cfg;
  m->cfg.head_dim = c->dim / c->n_heads;
  snprintf(m->format, sizeof m->format, "random");
  snprintf(m->path, sizeof m->path, "(random)");
  int64_t D = c->dim, F = c->hidden_dim, Q = D, KV = (int64_t)c->n_kv_heads * m->cfg.head_dim;
  int rc = 0;
  m->layers = calloc((size_t)c->n_layers, sizeof(nq_llama_layer_t));
  if (!m->layers) rc = nq_err_set(err, NQ_ENOMEM, 0, "llama: out of memory");
  uint64_t sd = seed;
  if (!rc) rc = nq_llama__rnd(&m->tok_emb, wdtype, c->vocab_size, D, ++sd, err);
  if (!rc) rc = nq_llama__rnd(&m->final_norm, NQ_DT_F32, D, 0, 0, err);
  for (int l = 0; l < c->n_layers && !rc; l++) {
    nq_llama_layer_t *L = &m->layers[l];
    nq_linear_t *lin[7] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w1, &L->w2, &L->w3};
    int64_t shp[7][2] = {{Q, D}, {KV, D}, {KV, D}, {D, Q}, {F, D}, {D, F}, {F, D}};
    rc = nq_llama__rnd(&L->attn_norm, NQ_DT_F32, D, 0, 0, err);
    if (!rc) rc = nq_llama__rnd(&L->ffn_norm, NQ_DT_F32, D, 0, 0, err);
    for (int i = 0; i < 7 && !rc; i++) {
      nq_tensor_t w;
      rc = nq_llama__rnd(&w, wdtype, shp[i][0], shp[i][1], ++sd, err);
      if (!rc) nq_linear_init(lin[i], &w, NULL); /* ownership moves into the linear */
    }
  }
  if (!rc) {
    nq_tensor_t w;
    rc = nq_llama__rnd(&w, wdtype, c->vocab_size, D, ++sd, err);
    if (!rc) nq_linear_init(&m->lm_head, &w, NULL);
  }
  if (!rc && !(m->ex = nq_exec_new(backends ? backends : "auto", NULL, err))) rc = err ? err->code : NQ_EINTERNAL;
  if (rc) {
    nq_llama_free(m);
    return rc;
  }
  *out = m;
  return 0;
}

size_t nq_llama_weight_bytes(const nq_llama_model_t *m) {
  size_t s = 0;
  for (int i = 0;; i++) {
    nq_linear_t *lin = nq_llama__linears((nq_llama_model_t *)m, i);
    if (!lin) break;
    s += nq_tensor_nbytes(&lin->w);
  }
  return s;
}

/* ---- LoRA (peft) ---- */

int nq_llama_lora_load(nq_llama_model_t *m, const char *dir, bool merge, nq_err_t *err) {
  char path[4200];
  snprintf(path, sizeof path, "%s/adapter_config.json", dir);
  json_error_t je;
  json_t *cfg = json_load_file(path, 0, &je);
  if (!cfg) return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: cannot parse (line %d: %s)", path, je.line, je.text);
  json_t *jr = json_object_get(cfg, "r"), *ja = json_object_get(cfg, "lora_alpha"),
         *jt = json_object_get(cfg, "target_modules");
  int r = json_is_integer(jr) ? (int)json_integer_value(jr) : 0;
  double alpha = json_is_number(ja) ? json_number_value(ja) : (double)r;
  static const char *names[4] = {"q_proj", "k_proj", "v_proj", "o_proj"};
  bool want[4] = {false, false, false, false};
  size_t i;
  json_t *v;
  json_array_foreach(jt, i, v) {
    for (int k = 0; k < 4; k++)
      if (json_is_string(v) && !strcmp(json_string_value(v), names[k])) want[k] = true;
  }
  json_decref(cfg);
  if (r <= 0 || r > 4096) return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: bad rank r=%d", path, r);
  float scale = (float)(alpha / r);
  snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
  nq_st_file_t *st;
  int rc = nq_st_open(path, &st, err);
  if (rc < 0) return rc;
  for (int l = 0; l < m->cfg.n_layers && !rc; l++) {
    nq_llama_layer_t *L = &m->layers[l];
    nq_linear_t *base[4] = {&L->wq, &L->wk, &L->wv, &L->wo};
    for (int k = 0; k < 4 && !rc; k++) {
      if (!want[k]) continue;
      int64_t out_f = base[k]->w.ne[0], in_f = base[k]->w.ne[1];
      char na[256], nb[256];
      const nq_st_tensor_t *ta, *tb;
      snprintf(na, sizeof na, "base_model.model.model.layers.%d.self_attn.%s.lora_A.weight", l, names[k]);
      snprintf(nb, sizeof nb, "base_model.model.model.layers.%d.self_attn.%s.lora_B.weight", l, names[k]);
      const nq_st_tensor_t *fa = nq_st_find(st, na), *fb = nq_st_find(st, nb);
      if (!fa || !fb) {
        rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: %s or lora_B missing", path, na);
        break;
      }
      if ((rc = nq_st_expect(st, na, fa->dtype, 2, NQ_SHAPE(r, in_f), &ta, err)) < 0) break;
      if ((rc = nq_st_expect(st, nb, fb->dtype, 2, NQ_SHAPE(out_f, r), &tb, err)) < 0) break;
      nq_tensor_t a, b, a32, b32;
      nq_llama__wrap(&a, ta->dtype, 2, NQ_SHAPE(r, in_f), ta->data);
      nq_llama__wrap(&b, tb->dtype, 2, NQ_SHAPE(out_f, r), tb->data);
      if ((rc = nq_tensor_init(&a32, NQ_DT_F32, 2, a.ne, err)) < 0) break;
      if ((rc = nq_tensor_init(&b32, NQ_DT_F32, 2, b.ne, err)) < 0) {
        nq_tensor_deinit(&a32);
        break;
      }
      nq_tensor_copy(&a32, &a, NULL);
      nq_tensor_copy(&b32, &b, NULL);
      float *B = b32.data, *A = a32.data;
      for (int64_t j = 0; j < out_f * r; j++) B[j] *= scale;
      if (merge) {
        /* W (owned copy in its dtype) += B A */
        nq_tensor_t *W = &base[k]->w;
        nq_tensor_t w32;
        if ((rc = nq_tensor_init(&w32, NQ_DT_F32, 2, W->ne, err)) == 0) {
          nq_tensor_copy(&w32, W, NULL);
          float *Wd = w32.data;
          for (int64_t o = 0; o < out_f; o++)
            for (int q = 0; q < r; q++) {
              float bo = B[o * r + q];
              const float *Aq = A + (int64_t)q * in_f;
              for (int64_t c = 0; c < in_f; c++) Wd[o * in_f + c] += bo * Aq[c];
            }
          nq_dtype_t dt = W->dtype;
          nq_tensor_deinit(W);
          *W = w32;
          for (int bk = 0; bk < NQ_BK_COUNT; bk++) /* drop stale packs */
            if (base[k]->packed[bk]) base[k]->packed_free[bk](base[k]->packed[bk]), base[k]->packed[bk] = NULL;
          rc = nq_llama__convert(W, dt, err);
        }
        nq_tensor_deinit(&a32), nq_tensor_deinit(&b32);
      } else {
        nq_linear_init(&L->lora[k].a, &a32, NULL);
        nq_linear_init(&L->lora[k].b, &b32, NULL);
        L->lora[k].a.w.owns_data = true, L->lora[k].b.w.owns_data = true;
        L->lora[k].scale = scale;
        L->lora[k].present = true;
      }
    }
  }
  nq_st_close(st);
  return rc;
}

/* ---- KV cache ---- */

nq_llama_kv_t *nq_llama_kv_new(const nq_llama_model_t *m, int n_slots, int max_ctx, nq_err_t *err) {
  if (n_slots < 1 || max_ctx < 1 || max_ctx > m->cfg.max_ctx) {
    nq_err_set(err, NQ_EINVAL, 0, "kv cache: %d slots x %d positions (model allows %d)", n_slots, max_ctx, m->cfg.max_ctx);
    return NULL;
  }
  nq_llama_kv_t *kv = calloc(1, sizeof(*kv));
  if (!kv) goto oom;
  kv->n_slots = n_slots, kv->max_ctx = max_ctx, kv->n_layers = m->cfg.n_layers;
  kv->kv_dim = m->cfg.n_kv_heads * m->cfg.head_dim;
  size_t n = (size_t)n_slots * (size_t)kv->n_layers * (size_t)max_ctx * (size_t)kv->kv_dim;
  kv->pos = calloc((size_t)n_slots, sizeof(int));
  kv->k = malloc(n * sizeof(float));
  kv->v = malloc(n * sizeof(float));
  if (!kv->pos || !kv->k || !kv->v) goto oom;
  return kv;
oom:
  nq_llama_kv_free(kv);
  nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "kv cache: cannot allocate %d slots x %d positions", n_slots, max_ctx);
  return NULL;
}

void nq_llama_kv_reset(nq_llama_kv_t *kv, int slot) {
  if (slot >= 0 && slot < kv->n_slots) kv->pos[slot] = 0;
}

void nq_llama_kv_free(nq_llama_kv_t *kv) {
  if (!kv) return;
  free(kv->pos), free(kv->k), free(kv->v);
  free(kv);
}

static float *nq_llama__kv_at(const nq_llama_kv_t *kv, float *base, int slot, int layer) {
  return base + (((size_t)slot * (size_t)kv->n_layers + (size_t)layer) * (size_t)kv->max_ctx) * (size_t)kv->kv_dim;
}

/* ---- forward ---- */

#define T2(t, rows, cols, ptr) nq_tensor_init_borrowed(&(t), NQ_DT_F32, 2, NQ_SHAPE((rows), (cols)), (ptr))

static int nq_llama__linear_lora(nq_llama_model_t *m, nq_tensor_t *y, const nq_tensor_t *x, nq_linear_t *lin,
                                 nq_llama_lora_t *lo, float *tmp_r, float *tmp_out, nq_err_t *err) {
  int rc = nq_op_linear(m->ex, y, x, lin, err);
  if (rc || !lo || !lo->present) return rc;
  nq_tensor_t t1, t2;
  T2(t1, y->ne[0], lo->a.w.ne[0], tmp_r);
  T2(t2, y->ne[0], y->ne[1], tmp_out);
  if ((rc = nq_op_linear(m->ex, &t1, x, &lo->a, err)) < 0) return rc;
  if ((rc = nq_op_linear(m->ex, &t2, &t1, &lo->b, err)) < 0) return rc; /* scale folded into B */
  return nq_op_binary(m->ex, NQ_OP_ADD, y, y, &t2, err);
}

int nq_llama_forward(nq_llama_model_t *m, nq_llama_kv_t *kv, const nq_llama_batch_t *b, nq_err_t *err) {
  const nq_llama_config_t *c = &m->cfg;
  if (b->n_seq < 1) return nq_err_set(err, NQ_EINVAL, 0, "llama forward: empty batch");
  int64_t T = 0;
  for (int s = 0; s < b->n_seq; s++) {
    int sl = b->slot[s];
    if (sl < 0 || sl >= kv->n_slots || b->n_tokens[s] < 1)
      return nq_err_set(err, NQ_EINVAL, 0, "llama forward: sequence %d has slot %d / %d tokens", s, sl, b->n_tokens[s]);
    for (int s2 = 0; s2 < s; s2++)
      if (b->slot[s2] == sl) return nq_err_set(err, NQ_EINVAL, 0, "llama forward: slot %d used twice", sl);
    if (kv->pos[sl] + b->n_tokens[s] > kv->max_ctx)
      return nq_err_set(err, NQ_ELIMIT, NQ_ERR_FATAL, "llama forward: sequence %d needs %d positions, context is %d", s,
                        kv->pos[sl] + b->n_tokens[s], kv->max_ctx);
    T += b->n_tokens[s];
  }
  if (b->tokens)
    for (int64_t i = 0; i < T; i++)
      if (b->tokens[i] < 0 || b->tokens[i] >= c->vocab_size)
        return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "llama forward: token %d at %lld outside vocab %d", b->tokens[i],
                          (long long)i, c->vocab_size);
  const int64_t D = c->dim, F = c->hidden_dim, Q = (int64_t)c->n_heads * c->head_dim, KVD = kv->kv_dim;
  int64_t R = b->logits_all ? T : b->n_seq;
  int64_t lora_r = 0;
  for (int l = 0; l < c->n_layers; l++)
    for (int k = 0; k < 4; k++)
      if (m->layers[l].lora[k].present && m->layers[l].lora[k].a.w.ne[0] > lora_r) lora_r = m->layers[l].lora[k].a.w.ne[0];
  /* scratch: x, xb, q, k, v, att, h1, h3, tmp(D or Q), lora r, rows for the head */
  size_t nfl = (size_t)T * (size_t)(D * 2 + Q * 2 + KVD * 2 + F * 2 + (Q > D ? Q : D) + lora_r) + (size_t)R * (size_t)D;
  float *buf = malloc(nfl * sizeof(float));
  int32_t *pos = malloc(sizeof(int32_t) * (size_t)T);
  if (!buf || !pos) {
    free(buf), free(pos);
    return nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "llama forward: scratch for %lld tokens", (long long)T);
  }
  float *px = buf, *pxb = px + T * D, *pq = pxb + T * D, *pk = pq + T * Q, *pv = pk + T * KVD, *patt = pv + T * KVD,
        *ph1 = patt + T * Q, *ph3 = ph1 + T * F, *ptmp = ph3 + T * F, *pr = ptmp + T * (Q > D ? Q : D),
        *prow = pr + T * lora_r;
  nq_tensor_t x, xb, q, k, v, att, h1, h3, tmp, tpos;
  T2(x, T, D, px), T2(xb, T, D, pxb), T2(q, T, Q, pq), T2(k, T, KVD, pk), T2(v, T, KVD, pv), T2(att, T, Q, patt);
  T2(h1, T, F, ph1), T2(h3, T, F, ph3), T2(tmp, T, D, ptmp);
  nq_tensor_init_borrowed(&tpos, NQ_DT_I32, 1, &T, pos);
  int rc = 0;
  for (int s = 0, r = 0; s < b->n_seq; s++)
    for (int i = 0; i < b->n_tokens[s]; i++) pos[r++] = kv->pos[b->slot[s]] + i;
  if (b->tokens) {
    nq_tensor_t ids;
    nq_tensor_init_borrowed(&ids, NQ_DT_I32, 1, &T, (void *)b->tokens);
    rc = nq_op_embed(m->ex, &x, &m->tok_emb, &ids, err);
  } else if (b->embeds) {
    memcpy(px, b->embeds, sizeof(float) * (size_t)(T * D));
  } else {
    rc = nq_err_set(err, NQ_EINVAL, 0, "llama forward: neither tokens nor embeddings");
  }
  const float att_scale = 1.0f / sqrtf((float)c->head_dim);
  for (int l = 0; l < c->n_layers && !rc; l++) {
    nq_llama_layer_t *L = &m->layers[l];
    if ((rc = nq_op_rmsnorm(m->ex, &xb, &x, &L->attn_norm, c->norm_eps, err))) break;
    if ((rc = nq_llama__linear_lora(m, &q, &xb, &L->wq, &L->lora[0], pr, ptmp, err))) break;
    if ((rc = nq_llama__linear_lora(m, &k, &xb, &L->wk, &L->lora[1], pr, ptmp, err))) break;
    if ((rc = nq_llama__linear_lora(m, &v, &xb, &L->wv, &L->lora[2], pr, ptmp, err))) break;
    if ((rc = nq_op_rope(m->ex, &q, &q, &tpos, c->head_dim, c->head_dim, c->rope_mode, c->rope_theta, err))) break;
    if ((rc = nq_op_rope(m->ex, &k, &k, &tpos, c->head_dim, c->head_dim, c->rope_mode, c->rope_theta, err))) break;
    int64_t r0 = 0;
    for (int s = 0; s < b->n_seq && !rc; s++) {
      int sl = b->slot[s], n = b->n_tokens[s], p0 = kv->pos[sl];
      float *kc = nq_llama__kv_at(kv, kv->k, sl, l), *vc = nq_llama__kv_at(kv, kv->v, sl, l);
      memcpy(kc + (size_t)p0 * KVD, pk + r0 * KVD, sizeof(float) * (size_t)(n * KVD));
      memcpy(vc + (size_t)p0 * KVD, pv + r0 * KVD, sizeof(float) * (size_t)(n * KVD));
      nq_tensor_t qs, os, kt, vt;
      T2(qs, n, Q, pq + r0 * Q), T2(os, n, Q, patt + r0 * Q), T2(kt, p0 + n, KVD, kc), T2(vt, p0 + n, KVD, vc);
      rc = nq_op_attention(m->ex, &os, &qs, &kt, &vt, c->n_heads, c->n_kv_heads, p0, 1, att_scale, err);
      r0 += n;
    }
    if (rc) break;
    if ((rc = nq_llama__linear_lora(m, &tmp, &att, &L->wo, &L->lora[3], pr, ph1, err))) break;
    if ((rc = nq_op_binary(m->ex, NQ_OP_ADD, &x, &x, &tmp, err))) break;
    if ((rc = nq_op_rmsnorm(m->ex, &xb, &x, &L->ffn_norm, c->norm_eps, err))) break;
    if ((rc = nq_op_linear(m->ex, &h1, &xb, &L->w1, err))) break;
    if ((rc = nq_op_linear(m->ex, &h3, &xb, &L->w3, err))) break;
    if ((rc = nq_op_binary(m->ex, NQ_OP_SWIGLU, &h1, &h1, &h3, err))) break;
    if ((rc = nq_op_linear(m->ex, &tmp, &h1, &L->w2, err))) break;
    if ((rc = nq_op_binary(m->ex, NQ_OP_ADD, &x, &x, &tmp, err))) break;
  }
  if (!rc) {
    /* rows for the head: every token, or each sequence's last */
    nq_tensor_t rows, hid;
    if (b->logits_all) {
      rows = x;
    } else {
      int64_t r0 = 0;
      for (int s = 0; s < b->n_seq; s++) {
        r0 += b->n_tokens[s];
        memcpy(prow + (int64_t)s * D, px + (r0 - 1) * D, sizeof(float) * (size_t)D);
      }
      T2(rows, R, D, prow);
    }
    float *ph = b->hidden ? b->hidden : pxb; /* pxb has >= R*D floats */
    T2(hid, R, D, ph);
    rc = nq_op_rmsnorm(m->ex, &hid, &rows, &m->final_norm, c->norm_eps, err);
    if (!rc && b->logits) {
      nq_tensor_t lg;
      T2(lg, R, c->vocab_size, b->logits);
      rc = nq_op_linear(m->ex, &lg, &hid, &m->lm_head, err);
    }
  }
  if (!rc)
    for (int s = 0; s < b->n_seq; s++) kv->pos[b->slot[s]] += b->n_tokens[s];
  free(buf), free(pos);
  return rc;
}

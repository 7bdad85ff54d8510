/* diffusers AutoencoderKL (see vae.h). Modules are named like the state_dict ("decoder.up_blocks.1.resnets.2"), so
 * loading is a walk over the config; the only name conversion is the attention table below. */
#include "compute/models/vae.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "compute/models/vae_int.h"

#define NQ_VAE_EPS 1e-6f

typedef struct {
  int cin, cout;
  nq_vae__norm_t norm1, norm2;
  nq_vae__conv_t conv1, conv2;
  bool has_sc;
  nq_vae__conv_t sc;          /* conv_shortcut 1x1 (cin != cout) */
} nq_vae__res_t;

typedef struct {
  int c;
  nq_vae__norm_t norm;        /* group_norm */
  nq_linear_t q, k, v, o;     /* [C,C] + bias */
} nq_vae__attn_t;

typedef struct {
  int n_res;
  nq_vae__res_t *res;         /* owned [n_res] */
  bool has_sampler;
  nq_vae__conv_t sampler;     /* downsamplers.0.conv (stride 2, pad 0 after (0,1,0,1)) / upsamplers.0.conv */
} nq_vae__level_t;

typedef struct {
  bool present;
  nq_vae__conv_t conv_in, conv_out, qconv; /* qconv: quant_conv (encoder) / post_quant_conv (decoder) */
  nq_vae__level_t lv[NQ_VAE_MAX_LEVELS];   /* encoder: down order; decoder: up order */
  nq_vae__res_t mid_res[2];
  nq_vae__attn_t mid_attn;
  nq_vae__norm_t norm_out;
} nq_vae__half_t;

struct nq_vae {
  nq_vae_config_t cfg;
  nq_vae__half_t enc, dec;
  nq_exec_t *ex;              /* owned */
};

/* ---- config ---- */

static int nq_vae__cfg_int(json_t *root, const char *key, int def, int lo, int hi, int *out, const char *path,
                           nq_err_t *err) {
  json_t *v = json_object_get(root, key);
  if (!v || json_is_null(v)) {
    if (def < lo) return nq_err_set(err, NQ_ECONFIG, NQ_ERR_FATAL, "%s: '%s' is required", path, key);
    *out = def;
    return 0;
  }
  if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi)
    return nq_err_set(err, NQ_ECONFIG, NQ_ERR_FATAL, "%s: '%s' must be an integer in [%d, %d]", path, key, lo, hi);
  *out = (int)json_integer_value(v);
  return 0;
}

static int nq_vae__cfg_types(json_t *root, const char *key, int n, const char *want, const char *path,
                             nq_err_t *err) {
  json_t *a = json_object_get(root, key);
  if (!a) return 0; /* diffusers default: all of `want` */
  if (!json_is_array(a) || (int)json_array_size(a) != n)
    return nq_err_set(err, NQ_ECONFIG, NQ_ERR_FATAL, "%s: '%s' must list %d block types", path, key, n);
  for (int i = 0; i < n; i++) {
    const char *s = json_string_value(json_array_get(a, (size_t)i));
    if (!s || strcmp(s, want))
      return nq_err_set(err, NQ_EUNSUPPORTED, NQ_ERR_FATAL, "%s: %s[%d] = %s (only %s is implemented)", path, key, i,
                        s ? s : "?", want);
  }
  return 0;
}

static int nq_vae__parse_config(const char *path, nq_vae_config_t *c, nq_err_t *err) {
  json_error_t je;
  json_t *root = json_load_file(path, 0, &je);
  if (!root) return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s:%d: %s", path, je.line, je.text);
  int rc = 0;
  memset(c, 0, sizeof(*c));
  const char *cls = json_string_value(json_object_get(root, "_class_name"));
  if (!json_is_object(root) || (cls && strcmp(cls, "AutoencoderKL"))) {
    rc = nq_err_set(err, NQ_EUNSUPPORTED, NQ_ERR_FATAL, "%s: _class_name %s (want AutoencoderKL)", path,
                    cls ? cls : "?");
    goto out;
  }
  json_t *boc = json_object_get(root, "block_out_channels");
  if (!json_is_array(boc) || json_array_size(boc) < 1 || json_array_size(boc) > NQ_VAE_MAX_LEVELS) {
    rc = nq_err_set(err, NQ_ECONFIG, NQ_ERR_FATAL, "%s: block_out_channels must list 1..%d ints", path,
                    NQ_VAE_MAX_LEVELS);
    goto out;
  }
  c->n_levels = (int)json_array_size(boc);
  if ((rc = nq_vae__cfg_int(root, "norm_num_groups", 32, 1, 1024, &c->norm_groups, path, err)) < 0) goto out;
  for (int i = 0; i < c->n_levels; i++) {
    json_t *v = json_array_get(boc, (size_t)i);
    if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 65536 ||
        json_integer_value(v) % c->norm_groups) {
      rc = nq_err_set(err, NQ_ECONFIG, NQ_ERR_FATAL, "%s: block_out_channels[%d] must be a multiple of %d", path, i,
                      c->norm_groups);
      goto out;
    }
    c->boc[i] = (int)json_integer_value(v);
  }
  if ((rc = nq_vae__cfg_int(root, "in_channels", 3, 1, 64, &c->in_channels, path, err)) < 0 ||
      (rc = nq_vae__cfg_int(root, "out_channels", 3, 1, 64, &c->out_channels, path, err)) < 0 ||
      (rc = nq_vae__cfg_int(root, "latent_channels", 4, 1, 256, &c->latent_channels, path, err)) < 0 ||
      (rc = nq_vae__cfg_int(root, "layers_per_block", 1, 1, 16, &c->layers_per_block, path, err)) < 0 ||
      (rc = nq_vae__cfg_types(root, "down_block_types", c->n_levels, "DownEncoderBlock2D", path, err)) < 0 ||
      (rc = nq_vae__cfg_types(root, "up_block_types", c->n_levels, "UpDecoderBlock2D", path, err)) < 0)
    goto out;
  const char *act = json_string_value(json_object_get(root, "act_fn"));
  if (act && strcmp(act, "silu")) {
    rc = nq_err_set(err, NQ_EUNSUPPORTED, NQ_ERR_FATAL, "%s: act_fn %s (only silu)", path, act);
    goto out;
  }
  json_t *sf = json_object_get(root, "scaling_factor");
  c->scaling_factor = json_is_number(sf) ? (float)json_number_value(sf) : 0.18215f;
  json_t *ma = json_object_get(root, "mid_block_add_attention");
  c->mid_attention = !ma || json_is_true(ma);
  if (json_is_true(json_object_get(root, "use_quant_conv")) == 0 && json_object_get(root, "use_quant_conv")) {
    rc = nq_err_set(err, NQ_EUNSUPPORTED, NQ_ERR_FATAL, "%s: use_quant_conv false is not implemented", path);
    goto out;
  }
out:
  json_decref(root);
  return rc;
}

/* ---- loading ---- */

static int nq_vae__res_load(const nq_st_file_t *f, const char *pfx, int cin, int cout, int groups, nq_dtype_t wdt,
                            nq_vae__res_t *r, nq_err_t *err) {
  char p[256];
  int rc;
  r->cin = cin, r->cout = cout;
  snprintf(p, sizeof p, "%s.norm1", pfx);
  if ((rc = nq_vae__norm_load(f, p, cin, groups, NQ_VAE_EPS, &r->norm1, err)) < 0) return rc;
  snprintf(p, sizeof p, "%s.conv1", pfx);
  if ((rc = nq_vae__conv_load(f, p, cout, cin, 3, true, 1, 1, wdt, &r->conv1, err)) < 0) return rc;
  snprintf(p, sizeof p, "%s.norm2", pfx);
  if ((rc = nq_vae__norm_load(f, p, cout, groups, NQ_VAE_EPS, &r->norm2, err)) < 0) return rc;
  snprintf(p, sizeof p, "%s.conv2", pfx);
  if ((rc = nq_vae__conv_load(f, p, cout, cout, 3, true, 1, 1, wdt, &r->conv2, err)) < 0) return rc;
  r->has_sc = cin != cout;
  if (!r->has_sc) return 0;
  snprintf(p, sizeof p, "%s.conv_shortcut", pfx);
  return nq_vae__conv_load(f, p, cout, cin, 1, true, 1, 0, wdt, &r->sc, err);
}

/* Attention weight names: diffusers >= 0.14 first, then the names older checkpoints (e.g. SD-1.5's vae, saved by
 * diffusers 0.6) store and diffusers renames at load time. */
static const char *const k_attn_names[4][2] = {
    {"to_q", "query"}, {"to_k", "key"}, {"to_v", "value"}, {"to_out.0", "proj_attn"}};

static int nq_vae__attn_load(const nq_st_file_t *f, const char *pfx, int c, int groups, nq_dtype_t wdt,
                             nq_vae__attn_t *a, nq_err_t *err) {
  char p[256], w[300];
  int rc;
  a->c = c;
  snprintf(p, sizeof p, "%s.group_norm", pfx);
  if ((rc = nq_vae__norm_load(f, p, c, groups, NQ_VAE_EPS, &a->norm, err)) < 0) return rc;
  nq_linear_t *lins[4] = {&a->q, &a->k, &a->v, &a->o};
  for (int i = 0; i < 4; i++) {
    int alt = 0;
    snprintf(w, sizeof w, "%s.%s.weight", pfx, k_attn_names[i][0]);
    if (!nq_st_find(f, w)) alt = 1;
    snprintf(p, sizeof p, "%s.%s", pfx, k_attn_names[i][alt]);
    if ((rc = nq_vae__linear_load(f, p, c, c, true, wdt, lins[i], err)) < 0) return rc;
  }
  return 0;
}

static int nq_vae__half_load(const nq_st_file_t *f, const nq_vae_config_t *c, bool enc, nq_dtype_t wdt,
                             nq_vae__half_t *h, nq_err_t *err) {
  const char *hp = enc ? "encoder" : "decoder";
  char p[256];
  int rc, L = c->n_levels, G = c->norm_groups, top = c->boc[L - 1], lat = c->latent_channels;
  snprintf(p, sizeof p, "%s.conv_in.weight", hp);
  if (!nq_st_find(f, p)) return 0; /* half absent */
  h->present = true;
  snprintf(p, sizeof p, "%s.conv_in", hp);
  if (enc) rc = nq_vae__conv_load(f, p, c->boc[0], c->in_channels, 3, true, 1, 1, NQ_DT_F32, &h->conv_in, err);
  else rc = nq_vae__conv_load(f, p, top, lat, 3, true, 1, 1, NQ_DT_F32, &h->conv_in, err);
  if (rc < 0) return rc;
  int prev = enc ? c->boc[0] : top;
  for (int i = 0; i < L; i++) {
    nq_vae__level_t *lv = &h->lv[i];
    int out = enc ? c->boc[i] : c->boc[L - 1 - i];
    lv->n_res = c->layers_per_block + (enc ? 0 : 1);
    lv->res = calloc((size_t)lv->n_res, sizeof(*lv->res));
    if (!lv->res) return nq_err_set(err, NQ_ENOMEM, 0, "vae: out of memory");
    for (int j = 0; j < lv->n_res; j++) {
      snprintf(p, sizeof p, "%s.%s.%d.resnets.%d", hp, enc ? "down_blocks" : "up_blocks", i, j);
      if ((rc = nq_vae__res_load(f, p, j ? out : prev, out, G, wdt, &lv->res[j], err)) < 0) return rc;
    }
    lv->has_sampler = i < L - 1;
    if (lv->has_sampler) {
      snprintf(p, sizeof p, "%s.%s.%d.%s.0.conv", hp, enc ? "down_blocks" : "up_blocks", i,
               enc ? "downsamplers" : "upsamplers");
      if ((rc = nq_vae__conv_load(f, p, out, out, 3, true, enc ? 2 : 1, enc ? 0 : 1, wdt, &lv->sampler, err)) < 0)
        return rc;
    }
    prev = out;
  }
  for (int j = 0; j < 2; j++) {
    snprintf(p, sizeof p, "%s.mid_block.resnets.%d", hp, j);
    if ((rc = nq_vae__res_load(f, p, top, top, G, wdt, &h->mid_res[j], err)) < 0) return rc;
  }
  if (c->mid_attention) {
    snprintf(p, sizeof p, "%s.mid_block.attentions.0", hp);
    if ((rc = nq_vae__attn_load(f, p, top, G, wdt, &h->mid_attn, err)) < 0) return rc;
  }
  int last = enc ? top : c->boc[0];
  snprintf(p, sizeof p, "%s.conv_norm_out", hp);
  if ((rc = nq_vae__norm_load(f, p, last, G, NQ_VAE_EPS, &h->norm_out, err)) < 0) return rc;
  snprintf(p, sizeof p, "%s.conv_out", hp);
  rc = nq_vae__conv_load(f, p, enc ? 2 * lat : c->out_channels, last, 3, true, 1, 1, NQ_DT_F32, &h->conv_out, err);
  if (rc < 0) return rc;
  int qc = enc ? 2 * lat : lat;
  /* edge layers (conv_in, conv_out, quant convs) stay F32 whatever wdt is: see vae.h */
  return nq_vae__conv_load(f, enc ? "quant_conv" : "post_quant_conv", qc, qc, 1, true, 1, 0, NQ_DT_F32, &h->qconv,
                           err);
}

static void nq_vae__res_deinit(nq_vae__res_t *r) {
  nq_vae__norm_deinit(&r->norm1), nq_vae__norm_deinit(&r->norm2);
  nq_vae__conv_deinit(&r->conv1), nq_vae__conv_deinit(&r->conv2), nq_vae__conv_deinit(&r->sc);
}

static void nq_vae__half_deinit(nq_vae__half_t *h) {
  nq_vae__conv_deinit(&h->conv_in), nq_vae__conv_deinit(&h->conv_out), nq_vae__conv_deinit(&h->qconv);
  for (int i = 0; i < NQ_VAE_MAX_LEVELS; i++) {
    for (int j = 0; h->lv[i].res && j < h->lv[i].n_res; j++) nq_vae__res_deinit(&h->lv[i].res[j]);
    free(h->lv[i].res);
    nq_vae__conv_deinit(&h->lv[i].sampler);
  }
  nq_vae__res_deinit(&h->mid_res[0]), nq_vae__res_deinit(&h->mid_res[1]);
  nq_vae__norm_deinit(&h->mid_attn.norm);
  nq_linear_deinit(&h->mid_attn.q), nq_linear_deinit(&h->mid_attn.k);
  nq_linear_deinit(&h->mid_attn.v), nq_linear_deinit(&h->mid_attn.o);
  nq_vae__norm_deinit(&h->norm_out);
  memset(h, 0, sizeof(*h));
}

void nq_vae_free(nq_vae_t *v) {
  if (!v) return;
  nq_vae__half_deinit(&v->enc);
  nq_vae__half_deinit(&v->dec);
  nq_exec_free(v->ex);
  free(v);
}

static int nq_vae__prepare_attn(nq_exec_t *ex, nq_vae__attn_t *a, nq_err_t *err) {
  nq_linear_t *l[4] = {&a->q, &a->k, &a->v, &a->o};
  for (int i = 0; i < 4; i++) {
    int rc = nq_exec_linear_prepare(ex, l[i], err);
    if (rc < 0) return rc;
  }
  return 0;
}

int nq_vae_open(const char *dir, nq_dtype_t wdtype, const char *backends, nq_vae_t **out, nq_err_t *err) {
  *out = NULL;
  if (wdtype != NQ_DT_F32 && wdtype != NQ_DT_BF16 && wdtype != NQ_DT_F16)
    return nq_err_set(err, NQ_EINVAL, 0, "vae: weight dtype %s", nq_dtype_name(wdtype));
  char cfg[4200], wts[4200];
  struct stat st;
  snprintf(cfg, sizeof cfg, "%s/config.json", dir);
  if (stat(cfg, &st) == 0) snprintf(wts, sizeof wts, "%s/diffusion_pytorch_model.safetensors", dir);
  else {
    snprintf(cfg, sizeof cfg, "%s/vae/config.json", dir);
    snprintf(wts, sizeof wts, "%s/vae/diffusion_pytorch_model.safetensors", dir);
  }
  nq_vae_t *v = calloc(1, sizeof(*v));
  if (!v) return nq_err_set(err, NQ_ENOMEM, 0, "vae: out of memory");
  nq_st_file_t *f = NULL;
  int rc = nq_vae__parse_config(cfg, &v->cfg, err);
  if (rc == 0) rc = nq_st_open(wts, &f, err);
  if (rc == 0 && (rc = nq_vae__half_load(f, &v->cfg, true, wdtype, &v->enc, err)) < 0) nq_err_prefix(err, "%s", wts);
  if (rc == 0 && (rc = nq_vae__half_load(f, &v->cfg, false, wdtype, &v->dec, err)) < 0) nq_err_prefix(err, "%s", wts);
  if (rc == 0 && !v->enc.present && !v->dec.present)
    rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: neither encoder.* nor decoder.* tensors", wts);
  nq_st_close(f);
  if (rc == 0 && !(v->ex = nq_exec_new(backends, NULL, err))) rc = err ? err->code : NQ_EINTERNAL;
  if (rc == 0 && v->cfg.mid_attention) {
    if (v->enc.present) rc = nq_vae__prepare_attn(v->ex, &v->enc.mid_attn, err);
    if (rc == 0 && v->dec.present) rc = nq_vae__prepare_attn(v->ex, &v->dec.mid_attn, err);
  }
  if (rc < 0) {
    nq_vae_free(v);
    return rc;
  }
  *out = v;
  return 0;
}

const nq_vae_config_t *nq_vae_config(const nq_vae_t *v) { return &v->cfg; }
bool nq_vae_has_encoder(const nq_vae_t *v) { return v && v->enc.present; }
bool nq_vae_has_decoder(const nq_vae_t *v) { return v && v->dec.present; }

/* ---- forward ---- */

static int nq_vae__clone(nq_tensor_t *dst, const nq_tensor_t *src, nq_err_t *err) {
  int rc = nq_tensor_init(dst, NQ_DT_F32, src->ndim, src->ne, err);
  if (rc == 0) memcpy(dst->data, src->data, nq_tensor_nbytes(src));
  return rc;
}

/* x <- resnet(x) */
static int nq_vae__res_fwd(nq_exec_t *ex, const nq_vae__res_t *r, nq_tensor_t *x, nq_err_t *err) {
  nq_tensor_t h = {0}, t = {0}, s = {0};
  int rc = nq_vae__clone(&h, x, err);
  if (rc == 0) rc = nq_vae__norm_fwd(ex, &r->norm1, &h, true, err);
  if (rc == 0 && (rc = nq_vae__conv_fwd(ex, &r->conv1, &h, &t, err)) == 0) nq_vae__move(&h, &t);
  if (rc == 0) rc = nq_vae__norm_fwd(ex, &r->norm2, &h, true, err);
  if (rc == 0 && (rc = nq_vae__conv_fwd(ex, &r->conv2, &h, &t, err)) == 0) nq_vae__move(&h, &t);
  if (rc == 0 && r->has_sc && (rc = nq_vae__conv_fwd(ex, &r->sc, x, &s, err)) == 0) nq_vae__move(x, &s);
  if (rc == 0) {
    nq_vae__add(&h, x);
    nq_vae__move(x, &h);
  }
  nq_tensor_deinit(&h);
  return rc;
}

/* [N,C,T] <-> [N,T,C] */
static void nq_vae__transpose(float *dst, const float *src, int64_t N, int64_t A, int64_t B) {
  for (int64_t n = 0; n < N; n++) {
    const float *s = src + n * A * B;
    float *d = dst + n * A * B;
    for (int64_t a = 0; a < A; a++)
      for (int64_t b = 0; b < B; b++) d[b * A + a] = s[a * B + b];
  }
}

/* x <- x + to_out(attention(groupnorm(x))) over the H*W positions, one head of dim C. */
static int nq_vae__attn_fwd(nq_exec_t *ex, const nq_vae__attn_t *a, nq_tensor_t *x, nq_err_t *err) {
  const int64_t N = x->ne[0], C = x->ne[1], T = x->ne[2] * x->ne[3];
  nq_tensor_t h = {0}, tok = {0}, q = {0}, k = {0}, v = {0}, o = {0};
  int rc = nq_vae__clone(&h, x, err);
  if (rc == 0) rc = nq_vae__norm_fwd(ex, &a->norm, &h, false, err);
  if (rc == 0) rc = nq_tensor_init(&tok, NQ_DT_F32, 2, NQ_SHAPE(N * T, C), err);
  if (rc == 0) rc = nq_tensor_init(&q, NQ_DT_F32, 2, NQ_SHAPE(N * T, C), err);
  if (rc == 0) rc = nq_tensor_init(&k, NQ_DT_F32, 2, NQ_SHAPE(N * T, C), err);
  if (rc == 0) rc = nq_tensor_init(&v, NQ_DT_F32, 2, NQ_SHAPE(N * T, C), err);
  if (rc == 0) rc = nq_tensor_init(&o, NQ_DT_F32, 2, NQ_SHAPE(N * T, C), err);
  if (rc < 0) goto out;
  nq_vae__transpose(tok.data, h.data, N, C, T);
  nq_linear_t *lq = (nq_linear_t *)&a->q, *lk = (nq_linear_t *)&a->k, *lv = (nq_linear_t *)&a->v,
              *lo = (nq_linear_t *)&a->o; /* linears cache backend state: not const */
  if ((rc = nq_op_linear(ex, &q, &tok, lq, err)) < 0 || (rc = nq_op_linear(ex, &k, &tok, lk, err)) < 0 ||
      (rc = nq_op_linear(ex, &v, &tok, lv, err)) < 0)
    goto out;
  for (int64_t n = 0; n < N && rc == 0; n++) {
    nq_tensor_t qs, ks, vs, os;
    if ((rc = nq_tensor_view_slice(&q, 0, n * T, T, &qs, err)) < 0 ||
        (rc = nq_tensor_view_slice(&k, 0, n * T, T, &ks, err)) < 0 ||
        (rc = nq_tensor_view_slice(&v, 0, n * T, T, &vs, err)) < 0 ||
        (rc = nq_tensor_view_slice(&tok, 0, n * T, T, &os, err)) < 0)
      break;
    rc = nq_op_attention(ex, &os, &qs, &ks, &vs, 1, 1, 0, 0, 1.0f / sqrtf((float)C), err);
  }
  if (rc == 0) rc = nq_op_linear(ex, &o, &tok, lo, err);
  if (rc == 0) {
    nq_vae__transpose(h.data, o.data, N, T, C);
    nq_vae__add(x, &h);
  }
out:
  nq_tensor_deinit(&h), nq_tensor_deinit(&tok), nq_tensor_deinit(&q), nq_tensor_deinit(&k), nq_tensor_deinit(&v);
  nq_tensor_deinit(&o);
  return rc;
}

static int nq_vae__mid_fwd(nq_exec_t *ex, const nq_vae__half_t *h, bool attn, nq_tensor_t *x, nq_err_t *err) {
  int rc = nq_vae__res_fwd(ex, &h->mid_res[0], x, err);
  if (rc == 0 && attn) rc = nq_vae__attn_fwd(ex, &h->mid_attn, x, err);
  if (rc == 0) rc = nq_vae__res_fwd(ex, &h->mid_res[1], x, err);
  return rc;
}

/* x <- conv(x) */
static int nq_vae__conv_inplace(nq_exec_t *ex, const nq_vae__conv_t *c, nq_tensor_t *x, nq_err_t *err) {
  nq_tensor_t y = {0};
  int rc = nq_vae__conv_fwd(ex, c, x, &y, err);
  if (rc == 0) nq_vae__move(x, &y);
  return rc;
}

/* Downsample2D of the encoder: zero-pad right and bottom by one, then the stride-2 conv (padding 0). */
static int nq_vae__down_fwd(nq_exec_t *ex, const nq_vae__conv_t *c, nq_tensor_t *x, nq_err_t *err) {
  const int64_t N = x->ne[0], C = x->ne[1], H = x->ne[2], W = x->ne[3];
  nq_tensor_t p = {0};
  int rc = nq_vae__alloc4(&p, N, C, H + 1, W + 1, err);
  if (rc < 0) return rc;
  const float *s = x->data;
  float *d = p.data;
  for (int64_t nc = 0; nc < N * C; nc++)
    for (int64_t y = 0; y < H; y++) memcpy(d + (nc * (H + 1) + y) * (W + 1), s + (nc * H + y) * W, sizeof(float) * W);
  rc = nq_vae__conv_inplace(ex, c, &p, err);
  if (rc == 0) nq_vae__move(x, &p);
  nq_tensor_deinit(&p);
  return rc;
}

static int nq_vae__input(const nq_tensor_t *in, int64_t ch, int64_t mult, const char *what, nq_tensor_t *x,
                         nq_err_t *err) {
  memset(x, 0, sizeof(*x));
  if (!in || in->ndim != 4 || in->ne[1] != ch || in->ne[0] < 1 || in->ne[2] < 1 || in->ne[3] < 1 ||
      in->ne[2] % mult || in->ne[3] % mult || in->ne[2] > 65536 || in->ne[3] > 65536)
    return nq_err_set(err, NQ_ESHAPE, NQ_ERR_FATAL, "vae: %s must be [N,%lld,H,W] with H, W multiples of %lld", what,
                      (long long)ch, (long long)mult);
  int rc = nq_tensor_init(x, NQ_DT_F32, 4, in->ne, err);
  if (rc == 0 && (rc = nq_tensor_copy(x, in, err)) < 0) nq_tensor_deinit(x);
  return rc;
}

int nq_vae_decode(nq_vae_t *v, const nq_tensor_t *z, nq_tensor_t *sample, nq_err_t *err) {
  if (!nq_vae_has_decoder(v)) return nq_err_set(err, NQ_EUNSUPPORTED, NQ_ERR_FATAL, "vae: no decoder weights");
  const nq_vae__half_t *h = &v->dec;
  nq_exec_t *ex = v->ex;
  int rc = nq_vae__input(z, v->cfg.latent_channels, 1, "z", sample, err);
  if (rc == 0) rc = nq_vae__conv_inplace(ex, &h->qconv, sample, err);
  if (rc == 0) rc = nq_vae__conv_inplace(ex, &h->conv_in, sample, err);
  if (rc == 0) rc = nq_vae__mid_fwd(ex, h, v->cfg.mid_attention, sample, err);
  for (int i = 0; i < v->cfg.n_levels && rc == 0; i++) {
    const nq_vae__level_t *lv = &h->lv[i];
    for (int j = 0; j < lv->n_res && rc == 0; j++) rc = nq_vae__res_fwd(ex, &lv->res[j], sample, err);
    if (rc == 0 && lv->has_sampler) {
      nq_tensor_t u = {0};
      rc = nq_vae__alloc4(&u, sample->ne[0], sample->ne[1], sample->ne[2] * 2, sample->ne[3] * 2, err);
      if (rc == 0 && (rc = nq_op_upsample_nearest(ex, &u, sample, 2, err)) == 0) nq_vae__move(sample, &u);
      nq_tensor_deinit(&u);
      if (rc == 0) rc = nq_vae__conv_inplace(ex, &lv->sampler, sample, err);
    }
    if (rc < 0) nq_err_prefix(err, "vae decoder up block %d", i);
  }
  if (rc == 0) rc = nq_vae__norm_fwd(ex, &h->norm_out, sample, true, err);
  if (rc == 0) rc = nq_vae__conv_inplace(ex, &h->conv_out, sample, err);
  if (rc < 0) nq_tensor_deinit(sample);
  return rc;
}

int nq_vae_encode_mean(nq_vae_t *v, const nq_tensor_t *image, nq_tensor_t *mean, nq_tensor_t *logvar,
                       nq_err_t *err) {
  memset(mean, 0, sizeof(*mean));
  if (logvar) memset(logvar, 0, sizeof(*logvar));
  if (!nq_vae_has_encoder(v)) return nq_err_set(err, NQ_EUNSUPPORTED, NQ_ERR_FATAL, "vae: no encoder weights");
  const nq_vae__half_t *h = &v->enc;
  nq_exec_t *ex = v->ex;
  nq_tensor_t x;
  int rc = nq_vae__input(image, v->cfg.in_channels, (int64_t)1 << (v->cfg.n_levels - 1), "image", &x, err);
  if (rc < 0) return rc;
  rc = nq_vae__conv_inplace(ex, &h->conv_in, &x, err);
  for (int i = 0; i < v->cfg.n_levels && rc == 0; i++) {
    const nq_vae__level_t *lv = &h->lv[i];
    for (int j = 0; j < lv->n_res && rc == 0; j++) rc = nq_vae__res_fwd(ex, &lv->res[j], &x, err);
    if (rc == 0 && lv->has_sampler) rc = nq_vae__down_fwd(ex, &lv->sampler, &x, err);
    if (rc < 0) nq_err_prefix(err, "vae encoder down block %d", i);
  }
  if (rc == 0) rc = nq_vae__mid_fwd(ex, h, v->cfg.mid_attention, &x, err);
  if (rc == 0) rc = nq_vae__norm_fwd(ex, &h->norm_out, &x, true, err);
  if (rc == 0) rc = nq_vae__conv_inplace(ex, &h->conv_out, &x, err);
  if (rc == 0) rc = nq_vae__conv_inplace(ex, &h->qconv, &x, err);
  const int64_t N = x.ne[0], L = v->cfg.latent_channels, S = rc == 0 ? x.ne[2] * x.ne[3] : 0;
  if (rc == 0) rc = nq_vae__alloc4(mean, N, L, x.ne[2], x.ne[3], err);
  if (rc == 0 && logvar) rc = nq_vae__alloc4(logvar, N, L, x.ne[2], x.ne[3], err);
  if (rc == 0)
    for (int64_t n = 0; n < N; n++) {
      memcpy((float *)mean->data + n * L * S, (float *)x.data + n * 2 * L * S, sizeof(float) * (size_t)(L * S));
      if (logvar)
        memcpy((float *)logvar->data + n * L * S, (float *)x.data + (n * 2 + 1) * L * S,
               sizeof(float) * (size_t)(L * S));
    }
  nq_tensor_deinit(&x);
  if (rc < 0) {
    nq_tensor_deinit(mean);
    if (logvar) nq_tensor_deinit(logvar);
  }
  return rc;
}

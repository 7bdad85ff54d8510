/* compute/models/hifigan.c — SpeechT5HifiGan vocoder (see hifigan.h). */
#include "compute/models/hifigan.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "compute/io/pickle.h"

/* ---- weights ------------------------------------------------------------------------------------------------ */

typedef struct nq_hifigan__conv {
  nq_tensor_t w; /* owned [Co,Ci,k] (conv) or [Ci,Co,k] (transposed), compute dtype */
  nq_tensor_t b; /* owned [Co] F32 */
} nq_hifigan__conv_t;

struct nq_hifigan {
  nq_hifigan_config_t cfg;
  int ch[NQ_HIFIGAN_MAX_STAGES + 1];     /* channels after conv_pre (ch[0]) and after each upsampler */
  nq_hifigan__conv_t conv_pre;           /* [C0, mels, 7] */
  nq_hifigan__conv_t up[NQ_HIFIGAN_MAX_STAGES];
  nq_hifigan__conv_t *rb1, *rb2;         /* owned [n_stages * n_kernels * n_dil] */
  nq_hifigan__conv_t conv_post;          /* [1, C_last, 7] */
  float *mean, *scale;                   /* owned [mels] */
  nq_exec_t *ex;                         /* owned */
};

void nq_hifigan_opts_init(nq_hifigan_opts_t *o) {
  memset(o, 0, sizeof *o);
  o->wdtype = -1;
}

const nq_hifigan_config_t *nq_hifigan_config(const nq_hifigan_t *v) { return &v->cfg; }

static int nq_hifigan__int_list(json_t *root, const char *key, int *out, int max, int *n, const char *path,
                                nq_err_t *err) {
  json_t *a = json_object_get(root, key);
  if (!json_is_array(a) || json_array_size(a) < 1 || (int)json_array_size(a) > max)
    return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: \"%s\" must be a list of 1..%d integers", path, key, max);
  for (size_t i = 0; i < json_array_size(a); i++) {
    json_t *v = json_array_get(a, i);
    if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 4096)
      return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: \"%s\"[%zu] must be an integer in 1..4096", path, key, i);
    out[i] = (int)json_integer_value(v);
  }
  *n = (int)json_array_size(a);
  return 0;
}

static int nq_hifigan__cfg_int(json_t *root, const char *key, int def, int lo, int hi, int *out, const char *path,
                               nq_err_t *err) {
  json_t *v = json_object_get(root, key);
  if (!v || json_is_null(v)) {
    if (def < 0) return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: missing \"%s\"", path, key);
    *out = def;
    return 0;
  }
  if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi)
    return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: \"%s\" must be an integer in %d..%d", path, key, lo, hi);
  *out = (int)json_integer_value(v);
  return 0;
}

static int nq_hifigan__config_load(const char *path, nq_hifigan_config_t *c, nq_err_t *err) {
  json_error_t je;
  json_t *root = json_load_file(path, 0, &je);
  if (!root)
    return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s:%d: %s", path, je.line, je.text);
  int rc = 0, n;
  memset(c, 0, sizeof *c);
  if (!json_is_object(root)) {
    rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: not a JSON object", path);
    goto out;
  }
  if ((rc = nq_hifigan__cfg_int(root, "model_in_dim", 80, 1, 4096, &c->model_in_dim, path, err)) < 0 ||
      (rc = nq_hifigan__cfg_int(root, "sampling_rate", 16000, 1, 1000000, &c->sampling_rate, path, err)) < 0 ||
      (rc = nq_hifigan__cfg_int(root, "upsample_initial_channel", 512, 1, 65536, &c->upsample_initial_channel, path,
                                err)) < 0)
    goto out;
  if ((rc = nq_hifigan__int_list(root, "upsample_rates", c->upsample_rates, NQ_HIFIGAN_MAX_STAGES, &c->n_stages, path,
                                 err)) < 0 ||
      (rc = nq_hifigan__int_list(root, "upsample_kernel_sizes", c->upsample_kernel_sizes, NQ_HIFIGAN_MAX_STAGES, &n,
                                 path, err)) < 0)
    goto out;
  if (n != c->n_stages) {
    rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: %d upsample_kernel_sizes for %d upsample_rates", path, n,
                    c->n_stages);
    goto out;
  }
  for (int i = 0; i < c->n_stages; i++)
    if (c->upsample_kernel_sizes[i] < c->upsample_rates[i] ||
        (c->upsample_initial_channel >> (i + 1)) < 1) {
      rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL,
                      "%s: stage %d: kernel %d < rate %d, or too few channels (%d halved %d times)", path, i,
                      c->upsample_kernel_sizes[i], c->upsample_rates[i], c->upsample_initial_channel, i + 1);
      goto out;
    }
  if ((rc = nq_hifigan__int_list(root, "resblock_kernel_sizes", c->resblock_kernel_sizes, NQ_HIFIGAN_MAX_KERNELS,
                                 &c->n_kernels, path, err)) < 0)
    goto out;
  json_t *dil = json_object_get(root, "resblock_dilation_sizes");
  if (!json_is_array(dil) || (int)json_array_size(dil) != c->n_kernels) {
    rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: \"resblock_dilation_sizes\" must hold %d lists", path,
                    c->n_kernels);
    goto out;
  }
  for (int j = 0; j < c->n_kernels; j++) {
    json_t *row = json_array_get(dil, (size_t)j);
    int nd = 0;
    char key[64];
    snprintf(key, sizeof key, "resblock_dilation_sizes[%d]", j);
    json_t *tmp = json_object();
    json_object_set(tmp, key, row);
    rc = nq_hifigan__int_list(tmp, key, c->resblock_dilation_sizes[j], NQ_HIFIGAN_MAX_DIL, &nd, path, err);
    json_decref(tmp);
    if (rc < 0) goto out;
    if (j > 0 && nd != c->n_dil) {
      rc = nq_err_set(err, NQ_EUNSUPPORTED, NQ_ERR_FATAL, "%s: resblocks with different dilation counts", path);
      goto out;
    }
    c->n_dil = nd;
  }
  json_t *s = json_object_get(root, "leaky_relu_slope");
  c->leaky_relu_slope = json_is_number(s) ? (float)json_number_value(s) : 0.1f;
  json_t *nb = json_object_get(root, "normalize_before");
  c->normalize_before = nb ? json_is_true(nb) : true;
out:
  json_decref(root);
  return rc;
}

/* `<pfx>.weight` of exactly shape (or the weight_g/weight_v pair, folded), converted to dt; `<pfx>.bias` [bias_n]. */
static int nq_hifigan__conv_load(const nq_ckpt_t *ck, const char *pfx, int64_t d0, int64_t d1, int64_t k,
                                 int64_t bias_n, nq_dtype_t dt, nq_hifigan__conv_t *c, nq_err_t *err) {
  char name[256];
  int64_t shape[3] = {d0, d1, k};
  int64_t n = d0 * d1 * k;
  float *w = malloc((size_t)n * sizeof(float));
  if (!w) return nq_err_set(err, NQ_ENOMEM, 0, "hifigan: %s: out of memory", pfx);
  int rc;
  snprintf(name, sizeof name, "%s.weight", pfx);
  const nq_ckpt_tensor_t *t = nq_ckpt_find(ck, name);
  if (t) {
    if ((rc = nq_ckpt_expect(ck, name, t->dtype, 3, shape, &t, err)) < 0 ||
        (rc = nq_dtype_to_f32(t->dtype, t->data, w, (size_t)n)) < 0) {
      if (rc == NQ_EUNSUPPORTED) nq_err_set(err, rc, NQ_ERR_FATAL, "hifigan: %s is not a float tensor", name);
      free(w);
      return rc;
    }
  } else {
    /* weight_norm(dim=0): w = g * v / ||v|| with the norm over every dim but 0 */
    const nq_ckpt_tensor_t *g, *v;
    char gn[256], vn[256];
    snprintf(gn, sizeof gn, "%s.weight_g", pfx);
    snprintf(vn, sizeof vn, "%s.weight_v", pfx);
    if (!nq_ckpt_find(ck, gn)) {
      free(w);
      return nq_err_set(err, NQ_ENOENT, NQ_ERR_FATAL, "hifigan: missing tensor %s (nor %s/%s)", name, gn, vn);
    }
    float *gv = malloc((size_t)d0 * sizeof(float));
    if (!gv) {
      free(w);
      return nq_err_set(err, NQ_ENOMEM, 0, "hifigan: %s: out of memory", pfx);
    }
    if ((rc = nq_ckpt_expect(ck, vn, NQ_DT_F32, 3, shape, &v, err)) < 0 ||
        (rc = nq_ckpt_expect(ck, gn, NQ_DT_F32, 3, NQ_SHAPE(d0, 1, 1), &g, err)) < 0) {
      free(w), free(gv);
      return rc;
    }
    memcpy(w, v->data, (size_t)n * sizeof(float));
    memcpy(gv, g->data, (size_t)d0 * sizeof(float));
    int64_t per = d1 * k;
    for (int64_t o = 0; o < d0; o++) {
      double ss = 0;
      for (int64_t i = 0; i < per; i++) ss += (double)w[o * per + i] * w[o * per + i];
      double f = gv[o] / sqrt(ss > 0 ? ss : 1e-30);
      for (int64_t i = 0; i < per; i++) w[o * per + i] = (float)(w[o * per + i] * f);
    }
    free(gv);
  }
  if ((rc = nq_tensor_init(&c->w, dt, 3, shape, err)) < 0) {
    free(w);
    return rc;
  }
  if (dt == NQ_DT_F32) memcpy(c->w.data, w, (size_t)n * sizeof(float));
  else {
    uint16_t *h = c->w.data;
    for (int64_t i = 0; i < n; i++) h[i] = dt == NQ_DT_BF16 ? nq_f32_to_bf16(w[i]) : nq_f32_to_f16(w[i]);
  }
  free(w);
  snprintf(name, sizeof name, "%s.bias", pfx);
  if ((rc = nq_ckpt_expect(ck, name, NQ_DT_F32, 1, NQ_SHAPE(bias_n), &t, err)) < 0) {
    /* accept other float dtypes */
    t = nq_ckpt_find(ck, name);
    if (!t || t->ndim != 1 || t->shape[0] != bias_n) return rc;
  }
  if ((rc = nq_tensor_init(&c->b, NQ_DT_F32, 1, NQ_SHAPE(bias_n), err)) < 0) return rc;
  if (nq_dtype_to_f32(t->dtype, t->data, c->b.data, (size_t)bias_n) < 0)
    return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "hifigan: %s is not a float tensor", name);
  return 0;
}

static void nq_hifigan__conv_deinit(nq_hifigan__conv_t *c) {
  nq_tensor_deinit(&c->w);
  nq_tensor_deinit(&c->b);
}

static int nq_hifigan__vec_load(const nq_ckpt_t *ck, const char *name, int64_t n, float **out, nq_err_t *err) {
  const nq_ckpt_tensor_t *t = nq_ckpt_find(ck, name);
  *out = NULL;
  if (!t) return 0; /* optional: mean/scale only matter with normalize_before (checked at load) */
  if (t->ndim != 1 || t->shape[0] != n)
    return nq_err_set(err, NQ_ESHAPE, NQ_ERR_FATAL, "hifigan: %s must be [%lld]", name, (long long)n);
  if (!(*out = malloc((size_t)n * sizeof(float)))) return nq_err_set(err, NQ_ENOMEM, 0, "hifigan: out of memory");
  if (nq_dtype_to_f32(t->dtype, t->data, *out, (size_t)n) < 0)
    return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "hifigan: %s is not a float tensor", name);
  return 0;
}

static int nq_hifigan__find_dir(const char *path, char *cfg, size_t n) {
  struct stat st;
  snprintf(cfg, n, "%s/config.json", path);
  if (stat(cfg, &st) == 0) return 0;
  snprintf(cfg, n, "%s/vocoder/config.json", path);
  if (stat(cfg, &st) == 0) return 1;
  return -1;
}

int nq_hifigan_load(const char *path, const nq_hifigan_opts_t *opts, nq_hifigan_t **out, nq_err_t *err) {
  nq_hifigan_opts_t dflt;
  if (!opts) nq_hifigan_opts_init(&dflt), opts = &dflt;
  *out = NULL;
  char cfgp[4096], dir[4096];
  int where = nq_hifigan__find_dir(path, cfgp, sizeof cfgp);
  if (where < 0) return nq_err_set(err, NQ_ENOENT, NQ_ERR_FATAL, "hifigan: no config.json in %s (or %s/vocoder)", path, path);
  snprintf(dir, sizeof dir, where ? "%s/vocoder" : "%s", path);
  nq_dtype_t dt = opts->wdtype < 0 ? NQ_DT_F32 : (nq_dtype_t)opts->wdtype;
  if (dt != NQ_DT_F32 && dt != NQ_DT_BF16 && dt != NQ_DT_F16)
    return nq_err_set(err, NQ_EINVAL, 0, "hifigan: weight dtype must be f32, bf16 or f16");
  nq_hifigan_t *v = calloc(1, sizeof *v);
  if (!v) return nq_err_set(err, NQ_ENOMEM, 0, "hifigan: out of memory");
  nq_ckpt_t *ck = NULL;
  int rc;
  if ((rc = nq_hifigan__config_load(cfgp, &v->cfg, err)) < 0) goto fail;
  if ((rc = nq_ckpt_open(dir, &ck, err)) < 0) goto fail;
  const nq_hifigan_config_t *c = &v->cfg;
  int mels = c->model_in_dim;
  v->ch[0] = c->upsample_initial_channel;
  for (int i = 0; i < c->n_stages; i++) v->ch[i + 1] = c->upsample_initial_channel >> (i + 1);
  if ((rc = nq_hifigan__conv_load(ck, "conv_pre", v->ch[0], mels, 7, v->ch[0], dt, &v->conv_pre, err)) < 0) goto fail;
  int nrb = c->n_stages * c->n_kernels * c->n_dil;
  v->rb1 = calloc((size_t)nrb, sizeof *v->rb1);
  v->rb2 = calloc((size_t)nrb, sizeof *v->rb2);
  if (!v->rb1 || !v->rb2) {
    rc = nq_err_set(err, NQ_ENOMEM, 0, "hifigan: out of memory");
    goto fail;
  }
  char pfx[128];
  for (int i = 0; i < c->n_stages; i++) {
    snprintf(pfx, sizeof pfx, "upsampler.%d", i);
    if ((rc = nq_hifigan__conv_load(ck, pfx, v->ch[i], v->ch[i + 1], c->upsample_kernel_sizes[i], v->ch[i + 1], dt,
                                    &v->up[i], err)) < 0)
      goto fail;
    for (int j = 0; j < c->n_kernels; j++)
      for (int m = 0; m < c->n_dil; m++) {
        int r = i * c->n_kernels + j, idx = r * c->n_dil + m;
        int64_t C = v->ch[i + 1], K = c->resblock_kernel_sizes[j];
        snprintf(pfx, sizeof pfx, "resblocks.%d.convs1.%d", r, m);
        if ((rc = nq_hifigan__conv_load(ck, pfx, C, C, K, C, dt, &v->rb1[idx], err)) < 0) goto fail;
        snprintf(pfx, sizeof pfx, "resblocks.%d.convs2.%d", r, m);
        if ((rc = nq_hifigan__conv_load(ck, pfx, C, C, K, C, dt, &v->rb2[idx], err)) < 0) goto fail;
      }
  }
  if ((rc = nq_hifigan__conv_load(ck, "conv_post", 1, v->ch[c->n_stages], 7, 1, NQ_DT_F32, &v->conv_post, err)) < 0)
    goto fail;
  if ((rc = nq_hifigan__vec_load(ck, "mean", mels, &v->mean, err)) < 0 ||
      (rc = nq_hifigan__vec_load(ck, "scale", mels, &v->scale, err)) < 0)
    goto fail;
  if (c->normalize_before && (!v->mean || !v->scale)) {
    rc = nq_err_set(err, NQ_ENOENT, NQ_ERR_FATAL, "hifigan: %s: normalize_before needs the mean and scale tensors", dir);
    goto fail;
  }
  if (!(v->ex = nq_exec_new(opts->backends ? opts->backends : "auto", NULL, err))) {
    rc = err ? err->code : NQ_EINTERNAL;
    goto fail;
  }
  nq_ckpt_close(ck);
  *out = v;
  return 0;
fail:
  if (ck) nq_ckpt_close(ck);
  nq_hifigan_free(v);
  return rc;
}

void nq_hifigan_free(nq_hifigan_t *v) {
  if (!v) return;
  nq_hifigan__conv_deinit(&v->conv_pre);
  nq_hifigan__conv_deinit(&v->conv_post);
  for (int i = 0; i < NQ_HIFIGAN_MAX_STAGES; i++) nq_hifigan__conv_deinit(&v->up[i]);
  int nrb = v->cfg.n_stages * v->cfg.n_kernels * v->cfg.n_dil;
  for (int i = 0; v->rb1 && i < nrb; i++) nq_hifigan__conv_deinit(&v->rb1[i]);
  for (int i = 0; v->rb2 && i < nrb; i++) nq_hifigan__conv_deinit(&v->rb2[i]);
  free(v->rb1), free(v->rb2);
  free(v->mean), free(v->scale);
  if (v->ex) nq_exec_free(v->ex);
  free(v);
}

int64_t nq_hifigan_out_len(const nq_hifigan_t *v, int64_t T) {
  int64_t L = T;
  for (int i = 0; i < v->cfg.n_stages; i++) {
    int r = v->cfg.upsample_rates[i], k = v->cfg.upsample_kernel_sizes[i];
    L = (L - 1) * r - 2 * ((k - r) / 2) + k;
  }
  return L;
}

/* ---- forward ------------------------------------------------------------------------------------------------ */

typedef struct {
  const float *x;
  float *y;
  float slope;
} nq_hifigan__lrelu_job_t;

static void nq_hifigan__lrelu_fn(void *ctx, int64_t b, int64_t e, int tid) {
  const nq_hifigan__lrelu_job_t *j = ctx;
  for (int64_t i = b; i < e; i++) j->y[i] = j->x[i] >= 0.f ? j->x[i] : j->x[i] * j->slope;
}

/* y = leaky_relu(x) (y may be x). */
static void nq_hifigan__lrelu(nq_exec_t *ex, float *y, const float *x, int64_t n, float slope) {
  nq_hifigan__lrelu_job_t j = {x, y, slope};
  nq_pool_for(n >= (1 << 16) ? ex->pool : NULL, n, 4096, nq_hifigan__lrelu_fn, &j);
}

static int nq_hifigan__conv1d(nq_exec_t *ex, const nq_hifigan__conv_t *c, const nq_tensor_t *x, int dil, int pad,
                              nq_tensor_t *y, nq_err_t *err) {
  int64_t N = x->ne[0], L = x->ne[2], K = c->w.ne[2];
  int64_t Lo = L + 2 * pad - dil * (K - 1);
  int rc;
  if ((rc = nq_tensor_init(y, NQ_DT_F32, 3, NQ_SHAPE(N, c->w.ne[0], Lo), err)) < 0) return rc;
  if ((rc = nq_op_conv1d(ex, y, x, &c->w, &c->b, 1, pad, dil, 1, err)) < 0) nq_tensor_deinit(y);
  return rc;
}

int nq_hifigan_forward(nq_hifigan_t *v, const nq_tensor_t *spec, nq_tensor_t *wave, nq_err_t *err) {
  const nq_hifigan_config_t *c = &v->cfg;
  memset(wave, 0, sizeof *wave);
  if (!spec || spec->ndim != 3 || spec->ne[2] != c->model_in_dim || spec->ne[1] < 1 || spec->ne[0] < 1)
    return nq_err_set(err, NQ_ESHAPE, NQ_ERR_FATAL, "hifigan: spectrogram must be [B, T, %d]", c->model_in_dim);
  int64_t B = spec->ne[0], T = spec->ne[1], M = c->model_in_dim;
  int rc;
  nq_tensor_t x = {0}, y = {0}, t1 = {0}, t2 = {0}, acc = {0}, rb = {0};
  /* normalise (frames-first), then transpose to [B, mels, T] */
  if ((rc = nq_tensor_init(&x, NQ_DT_F32, 3, NQ_SHAPE(B, M, T), err)) < 0) return rc;
  float *xd = x.data;
  for (int64_t b = 0; b < B; b++)
    for (int64_t t = 0; t < T; t++)
      for (int64_t m = 0; m < M; m++) {
        float s = (float)nq_tensor_get(spec, (b * T + t) * M + m);
        if (c->normalize_before) s = (s - v->mean[m]) / v->scale[m];
        xd[(b * M + m) * T + t] = s;
      }
  if ((rc = nq_hifigan__conv1d(v->ex, &v->conv_pre, &x, 1, 3, &y, err)) < 0) goto out;
  nq_tensor_deinit(&x), x = y, y = (nq_tensor_t){0};
  for (int i = 0; i < c->n_stages; i++) {
    int r = c->upsample_rates[i], k = c->upsample_kernel_sizes[i], pad = (k - r) / 2;
    int64_t L = x.ne[2], Lo = (L - 1) * r - 2 * pad + k, C = v->ch[i + 1];
    nq_hifigan__lrelu(v->ex, x.data, x.data, nq_tensor_numel(&x), c->leaky_relu_slope);
    if ((rc = nq_tensor_init(&y, NQ_DT_F32, 3, NQ_SHAPE(B, C, Lo), err)) < 0) goto out;
    if ((rc = nq_op_conv_transpose1d(v->ex, &y, &x, &v->up[i].w, &v->up[i].b, r, pad, 0, 1, 1, err)) < 0) goto out;
    nq_tensor_deinit(&x), x = y, y = (nq_tensor_t){0};
    int64_t n = nq_tensor_numel(&x);
    if ((rc = nq_tensor_init(&acc, NQ_DT_F32, 3, x.ne, err)) < 0 || (rc = nq_tensor_init(&rb, NQ_DT_F32, 3, x.ne, err)) < 0)
      goto out;
    for (int j = 0; j < c->n_kernels; j++) {
      int K = c->resblock_kernel_sizes[j];
      memcpy(rb.data, x.data, (size_t)n * sizeof(float));
      for (int m = 0; m < c->n_dil; m++) {
        int idx = (i * c->n_kernels + j) * c->n_dil + m, d = c->resblock_dilation_sizes[j][m];
        if ((rc = nq_tensor_init(&t1, NQ_DT_F32, 3, x.ne, err)) < 0) goto out;
        nq_hifigan__lrelu(v->ex, t1.data, rb.data, n, c->leaky_relu_slope);
        if ((rc = nq_hifigan__conv1d(v->ex, &v->rb1[idx], &t1, d, (K * d - d) / 2, &t2, err)) < 0) goto out;
        nq_hifigan__lrelu(v->ex, t2.data, t2.data, n, c->leaky_relu_slope);
        nq_tensor_deinit(&t1);
        if ((rc = nq_hifigan__conv1d(v->ex, &v->rb2[idx], &t2, 1, (K - 1) / 2, &t1, err)) < 0) goto out;
        float *rd = rb.data;
        const float *td = t1.data;
        for (int64_t e = 0; e < n; e++) rd[e] += td[e];
        nq_tensor_deinit(&t1), nq_tensor_deinit(&t2);
      }
      float *ad = acc.data;
      const float *rd = rb.data;
      for (int64_t e = 0; e < n; e++) ad[e] += rd[e];
    }
    float *ad = acc.data, inv = (float)c->n_kernels;
    for (int64_t e = 0; e < n; e++) ad[e] /= inv;
    nq_tensor_deinit(&x), nq_tensor_deinit(&rb);
    x = acc, acc = (nq_tensor_t){0};
  }
  nq_hifigan__lrelu(v->ex, x.data, x.data, nq_tensor_numel(&x), 0.01f); /* torch default slope, not the config's */
  if ((rc = nq_hifigan__conv1d(v->ex, &v->conv_post, &x, 1, 3, &y, err)) < 0) goto out;
  {
    int64_t S = y.ne[2];
    float *yd = y.data;
    for (int64_t e = 0; e < B * S; e++) yd[e] = tanhf(yd[e]);
    if ((rc = nq_tensor_view_reshape(&y, 2, NQ_SHAPE(B, S), wave, err)) < 0) goto out;
    wave->owns_data = true, y.owns_data = false; /* move */
    y.data = NULL;
  }
out:
  nq_tensor_deinit(&x), nq_tensor_deinit(&y), nq_tensor_deinit(&t1), nq_tensor_deinit(&t2);
  nq_tensor_deinit(&acc), nq_tensor_deinit(&rb);
  return rc;
}

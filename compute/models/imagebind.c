/* ImageBind vision and audio trunks: loading by the original state_dict names and the batched forward. */
#include "compute/models/imagebind.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

const char *nq_imagebind_modality_name(nq_imagebind_modality_t m) { return m == NQ_IB_AUDIO ? "audio" : "vision"; }

void nq_imagebind_load_opts_init(nq_imagebind_load_opts_t *o) {
  memset(o, 0, sizeof *o);
  o->modality = -1;
  o->wdtype = -1;
}

/* ---- loading ---------------------------------------------------------------------------------------------- */

typedef struct {
  nq_imagebind_t *m;
  const char *mod; /* "vision" / "audio" */
  nq_err_t *err;
} ib_ld_t;

static void ib__shape_str(char *s, size_t n, int ndim, const int64_t *shape) {
  size_t o = (size_t)snprintf(s, n, "[");
  for (int i = 0; i < ndim && o < n; i++) o += (size_t)snprintf(s + o, n - o, "%s%lld", i ? "," : "", (long long)shape[i]);
  if (o < n) snprintf(s + o, n - o, "]");
}

/* Finds "<fmt % args>" and checks a float dtype and the shape (-1 = any). */
static const nq_ckpt_tensor_t *ib__get(ib_ld_t *L, int ndim, const int64_t *shape, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static const nq_ckpt_tensor_t *ib__get(ib_ld_t *L, int ndim, const int64_t *shape, const char *fmt, ...) {
  char name[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(name, sizeof name, fmt, ap);
  va_end(ap);
  const nq_ckpt_tensor_t *t = nq_ckpt_find(L->m->ck, name);
  if (!t) {
    nq_err_set(L->err, NQ_EFORMAT, NQ_ERR_FATAL, "tensor '%s' is missing", name);
    return NULL;
  }
  if (t->dtype != NQ_DT_F32 && t->dtype != NQ_DT_BF16 && t->dtype != NQ_DT_F16 && t->dtype != NQ_DT_F64) {
    nq_err_set(L->err, NQ_EFORMAT, NQ_ERR_FATAL, "tensor '%s' has dtype %s (want a float type)", name,
               nq_dtype_name(t->dtype));
    return NULL;
  }
  int ok = t->ndim == ndim;
  for (int i = 0; ok && i < ndim; i++) ok = shape[i] < 0 || shape[i] == t->shape[i];
  if (!ok) {
    char want[96], have[96];
    ib__shape_str(want, sizeof want, ndim, shape);
    ib__shape_str(have, sizeof have, t->ndim, t->shape);
    nq_err_set(L->err, NQ_ESHAPE, NQ_ERR_FATAL, "tensor '%s' has shape %s, want %s", name, have, want);
    return NULL;
  }
  return t;
}

/* A vector/matrix parameter as F32 (borrowed when the file has F32, else an owned converted copy). */
static int ib__f32(ib_ld_t *L, nq_tensor_t *out, const nq_ckpt_tensor_t *t, int64_t rows, int64_t cols) {
  nq_tensor_t w;
  int nd = rows ? 2 : 1;
  const int64_t *shp = rows ? NQ_SHAPE(rows, cols) : NQ_SHAPE(cols);
  nq_tensor_init_borrowed(&w, t->dtype, nd, shp, (void *)t->data);
  if (t->dtype == NQ_DT_F32) {
    *out = w;
    return 0;
  }
  int rc = nq_tensor_init(out, NQ_DT_F32, nd, shp, L->err);
  if (!rc) rc = nq_tensor_copy(out, &w, L->err);
  return rc;
}

static int ib__vec(ib_ld_t *L, nq_tensor_t *out, int64_t n, const char *fmt, int i) {
  char name[256];
  snprintf(name, sizeof name, fmt, L->mod, i);
  const nq_ckpt_tensor_t *t = ib__get(L, 1, &n, "%s", name);
  return t ? ib__f32(L, out, t, 0, n) : L->err->code;
}

/* A linear layer: weight viewed as [n, k] (any leading shape with that many elements per row), optional bias. */
static int ib__lin(ib_ld_t *L, nq_linear_t *lin, const nq_ckpt_tensor_t *w, int64_t n, int64_t k, const char *bias_name,
                   int wdtype) {
  nq_tensor_t wt, bt = {0};
  int rc = 0;
  if (w->dtype == NQ_DT_F64) { /* rare: widen to a usable dtype */
    if ((rc = ib__f32(L, &wt, w, n, k))) return rc;
  } else {
    nq_tensor_init_borrowed(&wt, w->dtype, 2, NQ_SHAPE(n, k), (void *)w->data);
  }
  if (wdtype >= 0 && wt.dtype != (nq_dtype_t)wdtype) {
    nq_tensor_t c;
    if ((rc = nq_tensor_init(&c, (nq_dtype_t)wdtype, 2, wt.ne, L->err))) return rc;
    if ((rc = nq_tensor_copy(&c, &wt, L->err))) {
      nq_tensor_deinit(&c);
      return rc;
    }
    nq_tensor_deinit(&wt);
    wt = c;
  }
  if (bias_name) {
    const nq_ckpt_tensor_t *b = ib__get(L, 1, &n, "%s", bias_name);
    if (!b || (rc = ib__f32(L, &bt, b, 0, n))) {
      nq_tensor_deinit(&wt);
      return rc ? rc : L->err->code;
    }
  }
  nq_linear_init(lin, &wt, bias_name ? &bt : NULL); /* ownership of owned copies moves into lin */
  return 0;
}

static int ib__config_json(const char *dir, json_t **out, nq_err_t *err) {
  char p[4200];
  snprintf(p, sizeof p, "%s/config.json", dir);
  *out = NULL;
  struct stat st;
  if (stat(p, &st) != 0) return 0;
  json_error_t je;
  json_t *j = json_load_file(p, 0, &je);
  if (!j || !json_is_object(j)) {
    json_decref(j);
    return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: cannot parse (line %d: %s)", p, je.line, je.text);
  }
  *out = j;
  return 0;
}

static int ib__jint(const json_t *cfg, const char *key, int def) {
  json_t *v = json_object_get(cfg, key);
  return json_is_integer(v) ? (int)json_integer_value(v) : def;
}

static int ib__load(nq_imagebind_t *m, const char *path, const nq_imagebind_load_opts_t *o, nq_err_t *err) {
  struct stat st;
  if (stat(path, &st) != 0) return nq_err_set(err, NQ_ENOENT, NQ_ERR_FATAL, "%s: not found", path);
  json_t *cfg = NULL;
  int rc = 0;
  char wpath[4200];
  snprintf(wpath, sizeof wpath, "%s", path);
  if (S_ISDIR(st.st_mode)) {
    if ((rc = ib__config_json(path, &cfg, err))) return rc;
    static const char *cands[] = {"model.safetensors", "imagebind_huge.pth", NULL};
    for (int i = 0; cands[i]; i++) {
      char c[4200];
      snprintf(c, sizeof c, "%s/%s", path, cands[i]);
      if (stat(c, &st) == 0) {
        snprintf(wpath, sizeof wpath, "%s", c);
        break;
      }
    }
  }
  int modality = o->modality;
  if (cfg) {
    const char *schema = json_string_value(json_object_get(cfg, "schema"));
    const char *mod = json_string_value(json_object_get(cfg, "modality"));
    if (schema && strcmp(schema, "imagebind-dims/1") != 0)
      rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s/config.json: schema '%s' (want imagebind-dims/1)", path, schema);
    int cm = mod ? (strcmp(mod, "audio") == 0 ? NQ_IB_AUDIO : strcmp(mod, "vision") == 0 ? NQ_IB_VISION : -2) : -1;
    if (!rc && cm == -2) rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s/config.json: modality '%s'", path, mod);
    if (!rc && cm >= 0 && modality >= 0 && cm != modality)
      rc = nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "%s holds the %s trunk, not %s", path, mod,
                      nq_imagebind_modality_name((nq_imagebind_modality_t)modality));
    if (!rc && modality < 0) modality = cm;
  }
  if (!rc && modality < 0)
    rc = nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "%s: which trunk (vision or audio)? no config.json modality", path);
  if (rc) {
    json_decref(cfg);
    return rc;
  }
  if ((rc = nq_ckpt_open(wpath, &m->ck, err))) {
    json_decref(cfg);
    return rc;
  }
  nq_imagebind_config_t *c = &m->cfg;
  c->modality = (nq_imagebind_modality_t)modality;
  c->ln_eps = 1e-6f;
  c->stem_ln_eps = 1e-5f;
  ib_ld_t L = {m, nq_imagebind_modality_name(c->modality), err};
  const bool vis = c->modality == NQ_IB_VISION;
  const nq_ckpt_tensor_t *t;
  /* embed dim from the CLS token */
  if (!(t = ib__get(&L, 3, NQ_SHAPE(1, 1, -1), "modality_preprocessors.%s.cls_token", L.mod))) goto fail;
  const int64_t E = t->shape[2];
  if (E < 1 || E > 65536) {
    rc = nq_err_set(err, NQ_ESHAPE, NQ_ERR_FATAL, "cls_token: embed dim %lld", (long long)E);
    goto fail;
  }
  c->embed_dim = (int)E;
  if ((rc = ib__f32(&L, &m->cls, t, 0, E))) goto fail;
  /* stem */
  const nq_ckpt_tensor_t *sw;
  int64_t K;
  if (vis) {
    if (!(sw = ib__get(&L, 5, NQ_SHAPE(E, 3, -1, -1, -1), "modality_preprocessors.vision.rgbt_stem.proj.1.weight")))
      goto fail;
    c->kernel[0] = (int)sw->shape[2], c->kernel[1] = (int)sw->shape[3], c->kernel[2] = (int)sw->shape[4];
    c->frames = ib__jint(cfg, "video_frames", 2);
    json_t *is = json_object_get(cfg, "img_size");
    c->img_size = json_is_array(is) && json_array_size(is) == 4 ? (int)json_integer_value(json_array_get(is, 3)) : 224;
    if (c->kernel[0] < 1 || c->kernel[1] < 1 || c->kernel[2] < 1 || c->frames % c->kernel[0] ||
        c->img_size % c->kernel[1] || c->img_size % c->kernel[2] || c->img_size < 1 || c->img_size > 4096) {
      rc = nq_err_set(err, NQ_ESHAPE, NQ_ERR_FATAL, "vision stem kernel (%d,%d,%d) does not tile %d frames of %dx%d",
                      c->kernel[0], c->kernel[1], c->kernel[2], c->frames, c->img_size, c->img_size);
      goto fail;
    }
    c->grid[0] = c->frames / c->kernel[0], c->grid[1] = c->img_size / c->kernel[1], c->grid[2] = c->img_size / c->kernel[2];
    c->stride = c->kernel[1];
    K = 3LL * c->kernel[0] * c->kernel[1] * c->kernel[2];
  } else {
    if (!(sw = ib__get(&L, 4, NQ_SHAPE(E, 1, -1, -1), "modality_preprocessors.audio.rgbt_stem.proj.weight"))) goto fail;
    c->kernel[0] = 1, c->kernel[1] = (int)sw->shape[2], c->kernel[2] = (int)sw->shape[3];
    c->stride = ib__jint(cfg, "audio_stride", 10);
    c->mel_bins = ib__jint(cfg, "audio_num_mel_bins", 128);
    c->target_len = ib__jint(cfg, "audio_target_len", 204);
    if (c->stride < 1 || c->kernel[1] < 1 || c->kernel[2] < 1 || c->mel_bins < c->kernel[1] ||
        c->target_len < c->kernel[2] || c->mel_bins > 4096 || c->target_len > 65536) {
      rc = nq_err_set(err, NQ_ESHAPE, NQ_ERR_FATAL, "audio stem kernel %dx%d stride %d on %dx%d", c->kernel[1],
                      c->kernel[2], c->stride, c->mel_bins, c->target_len);
      goto fail;
    }
    c->grid[0] = 1, c->grid[1] = (c->mel_bins - c->kernel[1]) / c->stride + 1;
    c->grid[2] = (c->target_len - c->kernel[2]) / c->stride + 1;
    K = (int64_t)c->kernel[1] * c->kernel[2];
    if ((rc = ib__vec(&L, &m->stem_norm_w, E, "modality_preprocessors.%s.rgbt_stem.norm_layer.weight", 0))) goto fail;
    if ((rc = ib__vec(&L, &m->stem_norm_b, E, "modality_preprocessors.%s.rgbt_stem.norm_layer.bias", 0))) goto fail;
  }
  c->n_patches = c->grid[0] * c->grid[1] * c->grid[2];
  c->n_tokens = c->n_patches + 1;
  if ((rc = ib__lin(&L, &m->stem, sw, E, K, NULL, o->wdtype))) goto fail;
  if (!(t = ib__get(&L, 3, NQ_SHAPE(1, c->n_tokens, E), "modality_preprocessors.%s.pos_embedding_helper.pos_embed",
                    L.mod)))
    goto fail;
  if ((rc = ib__f32(&L, &m->pos, t, c->n_tokens, E))) goto fail;
  if (vis) {
    if ((rc = ib__vec(&L, &m->pre_norm_w, E, "modality_trunks.%s.pre_transformer_layer.0.weight", 0))) goto fail;
    if ((rc = ib__vec(&L, &m->pre_norm_b, E, "modality_trunks.%s.pre_transformer_layer.0.bias", 0))) goto fail;
  }
  /* blocks */
  char nm[256], bn[256];
  int nb = 0;
  for (; nb < 4096; nb++) {
    snprintf(nm, sizeof nm, "modality_trunks.%s.blocks.%d.attn.in_proj_weight", L.mod, nb);
    if (!nq_ckpt_find(m->ck, nm)) break;
  }
  if (nb == 0) {
    rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "tensor 'modality_trunks.%s.blocks.0.attn.in_proj_weight' is missing",
                    L.mod);
    goto fail;
  }
  c->num_blocks = nb;
  int jb = ib__jint(cfg, vis ? "vision_num_blocks" : "audio_num_blocks", nb);
  if (jb != nb) {
    rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "config.json says %d %s blocks, the weights hold %d", jb, L.mod, nb);
    goto fail;
  }
  int heads = ib__jint(cfg, vis ? "vision_num_heads" : "audio_num_heads", 0);
  if (!heads) heads = E == 1280 ? 16 : E == 768 ? 12 : E == 1024 ? 16 : 0; /* imagebind_huge values */
  if (heads <= 0 || E % heads) {
    rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: number of heads unknown for width %lld (add config.json)", L.mod,
                    (long long)E);
    goto fail;
  }
  c->num_heads = heads;
  m->blocks = calloc((size_t)nb, sizeof *m->blocks);
  if (!m->blocks) {
    rc = nq_err_set(err, NQ_ENOMEM, 0, "imagebind: out of memory");
    goto fail;
  }
  for (int i = 0; i < nb; i++) {
    nq_imagebind_block_t *B = &m->blocks[i];
    const char *bfmt = "modality_trunks.%s.blocks.%d.";
    char pre[128];
    snprintf(pre, sizeof pre, bfmt, L.mod, i);
#define IB_V(dst, suffix)                                                   \
  do {                                                                      \
    snprintf(nm, sizeof nm, "%s%s", pre, suffix);                           \
    if (!(t = ib__get(&L, 1, &E, "%s", nm)) || (rc = ib__f32(&L, dst, t, 0, E))) goto fail; \
  } while (0)
    IB_V(&B->norm1_w, "norm_1.weight");
    IB_V(&B->norm1_b, "norm_1.bias");
    IB_V(&B->norm2_w, "norm_2.weight");
    IB_V(&B->norm2_b, "norm_2.bias");
#undef IB_V
    if (!(t = ib__get(&L, 2, NQ_SHAPE(3 * E, E), "%sattn.in_proj_weight", pre))) goto fail;
    snprintf(bn, sizeof bn, "%sattn.in_proj_bias", pre);
    if ((rc = ib__lin(&L, &B->in_proj, t, 3 * E, E, bn, o->wdtype))) goto fail;
    if (!(t = ib__get(&L, 2, NQ_SHAPE(E, E), "%sattn.out_proj.weight", pre))) goto fail;
    snprintf(bn, sizeof bn, "%sattn.out_proj.bias", pre);
    if ((rc = ib__lin(&L, &B->out_proj, t, E, E, bn, o->wdtype))) goto fail;
    if (!(t = ib__get(&L, 2, NQ_SHAPE(-1, E), "%smlp.fc1.weight", pre))) goto fail;
    int64_t F = t->shape[0];
    if (i == 0) c->mlp_dim = (int)F;
    else if (F != c->mlp_dim) {
      rc = nq_err_set(err, NQ_ESHAPE, NQ_ERR_FATAL, "%smlp.fc1.weight: %lld rows, block 0 has %d", pre, (long long)F,
                      c->mlp_dim);
      goto fail;
    }
    snprintf(bn, sizeof bn, "%smlp.fc1.bias", pre);
    if ((rc = ib__lin(&L, &B->fc1, t, F, E, bn, o->wdtype))) goto fail;
    if (!(t = ib__get(&L, 2, NQ_SHAPE(E, F), "%smlp.fc2.weight", pre))) goto fail;
    snprintf(bn, sizeof bn, "%smlp.fc2.bias", pre);
    if ((rc = ib__lin(&L, &B->fc2, t, E, F, bn, o->wdtype))) goto fail;
    if (!vis) {
      if (!(t = ib__get(&L, 3, NQ_SHAPE(1, 1, E), "%sattn.bias_k", pre)) || (rc = ib__f32(&L, &B->bias_k, t, 0, E)))
        goto fail;
      if (!(t = ib__get(&L, 3, NQ_SHAPE(1, 1, E), "%sattn.bias_v", pre)) || (rc = ib__f32(&L, &B->bias_v, t, 0, E)))
        goto fail;
    }
  }
  if ((rc = ib__vec(&L, &m->head_norm_w, E, "modality_heads.%s.0.weight", 0))) goto fail;
  if ((rc = ib__vec(&L, &m->head_norm_b, E, "modality_heads.%s.0.bias", 0))) goto fail;
  if (!(t = ib__get(&L, 2, NQ_SHAPE(-1, E), "modality_heads.%s.2.weight", L.mod))) goto fail;
  c->out_dim = (int)t->shape[0];
  if ((rc = ib__lin(&L, &m->head, t, c->out_dim, E, NULL, o->wdtype))) goto fail;
  int jo = ib__jint(cfg, "out_embed_dim", c->out_dim);
  if (jo != c->out_dim) {
    rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "config.json out_embed_dim %d, the head has %d rows", jo, c->out_dim);
    goto fail;
  }
  json_decref(cfg);
  return 0;
fail:
  json_decref(cfg);
  return rc ? rc : (err && err->code ? err->code : NQ_EFORMAT);
}

int nq_imagebind_load(const char *path, const nq_imagebind_load_opts_t *opts, nq_imagebind_t **out, nq_err_t *err) {
  *out = NULL;
  nq_imagebind_load_opts_t o;
  if (opts) o = *opts;
  else nq_imagebind_load_opts_init(&o);
  if (o.wdtype >= 0 && o.wdtype != NQ_DT_F32 && o.wdtype != NQ_DT_BF16 && o.wdtype != NQ_DT_F16)
    return nq_err_set(err, NQ_EINVAL, 0, "imagebind: weight dtype %s not supported", nq_dtype_name((nq_dtype_t)o.wdtype));
  nq_imagebind_t *m = calloc(1, sizeof *m);
  if (!m) return nq_err_set(err, NQ_ENOMEM, 0, "imagebind: out of memory");
  snprintf(m->path, sizeof m->path, "%s", path);
  m->max_batch = o.max_batch > 0 ? o.max_batch : 16;
  int rc = ib__load(m, path, &o, err);
  if (!rc && !(m->ex = nq_exec_new(o.backends ? o.backends : "auto", NULL, err))) rc = err ? err->code : NQ_EINTERNAL;
  if (!rc) {
    nq_linear_t *lins[] = {&m->head, &m->stem}; /* the audio stem is a conv: no GEMM packing */
    for (int i = 0; i < (m->cfg.modality == NQ_IB_VISION ? 2 : 1) && !rc; i++) rc = nq_exec_linear_prepare(m->ex, lins[i], err);
    for (int i = 0; i < m->cfg.num_blocks && !rc; i++) {
      nq_imagebind_block_t *B = &m->blocks[i];
      nq_linear_t *bl[] = {&B->in_proj, &B->out_proj, &B->fc1, &B->fc2};
      for (int k = 0; k < 4 && !rc; k++) rc = nq_exec_linear_prepare(m->ex, bl[k], err);
    }
  }
  if (rc) {
    nq_err_prefix(err, "imagebind %s", path);
    nq_imagebind_free(m);
    return rc;
  }
  *out = m;
  return 0;
}

void nq_imagebind_free(nq_imagebind_t *m) {
  if (!m) return;
  if (m->blocks) {
    for (int i = 0; i < m->cfg.num_blocks; i++) {
      nq_imagebind_block_t *B = &m->blocks[i];
      nq_tensor_deinit(&B->norm1_w), nq_tensor_deinit(&B->norm1_b), nq_tensor_deinit(&B->norm2_w);
      nq_tensor_deinit(&B->norm2_b), nq_tensor_deinit(&B->bias_k), nq_tensor_deinit(&B->bias_v);
      nq_linear_deinit(&B->in_proj), nq_linear_deinit(&B->out_proj), nq_linear_deinit(&B->fc1);
      nq_linear_deinit(&B->fc2);
    }
    free(m->blocks);
  }
  nq_tensor_deinit(&m->cls), nq_tensor_deinit(&m->pos);
  nq_tensor_deinit(&m->stem_norm_w), nq_tensor_deinit(&m->stem_norm_b);
  nq_tensor_deinit(&m->pre_norm_w), nq_tensor_deinit(&m->pre_norm_b);
  nq_tensor_deinit(&m->head_norm_w), nq_tensor_deinit(&m->head_norm_b);
  nq_linear_deinit(&m->stem), nq_linear_deinit(&m->head);
  nq_exec_free(m->ex);
  nq_ckpt_close(m->ck);
  free(m);
}

/* ---- forward ---------------------------------------------------------------------------------------------- */

int64_t nq_imagebind_view_numel(const nq_imagebind_t *m, int frames_in) {
  const nq_imagebind_config_t *c = &m->cfg;
  if (c->modality == NQ_IB_AUDIO) return (int64_t)c->mel_bins * c->target_len;
  return 3LL * (frames_in > 1 ? c->frames : 1) * c->img_size * c->img_size;
}

static nq_tensor_t ib__v2(float *p, int64_t rows, int64_t cols, int64_t stride) {
  nq_tensor_t t;
  nq_tensor_init_borrowed(&t, NQ_DT_F32, 2, NQ_SHAPE(rows, cols), p);
  t.nb[0] = stride;
  return t;
}

typedef struct {
  const nq_imagebind_t *m;
  const float *in;
  float *patches; /* [n*P, K] */
  int frames_in;
} ib_patch_job_t;

/* Vision stem as patchify + GEMM: one row of the patch matrix per (view, patch), the Conv3d receptive field
 * flattened as the weight is ([C, kt, kh, kw] row-major), so patch . weight_row == the conv output (kernel == stride:
 * the patches do not overlap, so this is the convolution itself, not an approximation). */
static void ib__patch_cb(void *ctx, int64_t r0, int64_t r1, int tid) {
  const ib_patch_job_t *j = ctx;
  const nq_imagebind_config_t *c = &j->m->cfg;
  const int kt = c->kernel[0], kh = c->kernel[1], kw = c->kernel[2];
  const int64_t P = c->n_patches, K = j->m->stem.w.ne[1];
  const int64_t S = c->img_size, Fin = j->frames_in > 1 ? c->frames : 1;
  for (int64_t r = r0; r < r1; r++) {
    int64_t v = r / P, p = r % P;
    float *dst = j->patches + r * K;
    int64_t pt = p / (c->grid[1] * c->grid[2]), rem = p % (c->grid[1] * c->grid[2]);
    int64_t ph = rem / c->grid[2], pw = rem % c->grid[2];
    for (int ch = 0; ch < 3; ch++)
      for (int t = 0; t < kt; t++) {
        /* PadIm2Video(repeat): an image is the same frame at every t */
        int64_t fr = Fin == 1 ? 0 : pt * kt + t;
        const float *src = j->in + ((v * 3 + ch) * Fin + fr) * S * S + (ph * kh) * S + pw * kw;
        float *d = dst + ((int64_t)ch * kt + t) * kh * kw;
        for (int i = 0; i < kh; i++) memcpy(d + i * kw, src + i * S, sizeof(float) * (size_t)kw);
      }
  }
}

/* Audio stem: Conv2d 1->E (kernel 16, stride 10, overlapping) through nq_op_conv2d (oneDNN when built), into
 * conv_out [n,E,gh,gw]; then the tokens [n*P, E] (patch order = (mel-row, time-col), as flatten(2).transpose(1,2)). */
static int ib__audio_stem(nq_imagebind_t *m, const float *in, int64_t n, float *conv_out, float *tokens, nq_err_t *err) {
  const nq_imagebind_config_t *c = &m->cfg;
  const int64_t E = c->embed_dim, P = c->n_patches;
  nq_tensor_t x, w, y;
  nq_tensor_init_borrowed(&x, NQ_DT_F32, 4, NQ_SHAPE(n, 1, c->mel_bins, c->target_len), (void *)in);
  nq_tensor_init_borrowed(&w, m->stem.w.dtype, 4, NQ_SHAPE(E, 1, c->kernel[1], c->kernel[2]), m->stem.w.data);
  nq_tensor_init_borrowed(&y, NQ_DT_F32, 4, NQ_SHAPE(n, E, c->grid[1], c->grid[2]), conv_out);
  int rc = nq_op_conv2d(m->ex, &y, &x, &w, NULL, c->stride, c->stride, 0, 0, 1, 1, 1, err);
  if (rc) return rc;
  for (int64_t v = 0; v < n; v++)
    for (int64_t e = 0; e < E; e++) {
      const float *src = conv_out + (v * E + e) * P;
      float *dst = tokens + v * P * E + e;
      for (int64_t p = 0; p < P; p++) dst[p * E] = src[p];
    }
  return 0;
}

/* Full (non-causal) multi-head attention of one view as two GEMMs per head through nq_op_linear:
 * S = Q_h K_h^T, row softmax(S * scale), O_h = S V_h. For ImageBind's 229..257 tokens this runs the O(T^2 d) work at
 * GEMM speed (the row-at-a-time attention kernel is ~30x slower per FLOP here). q/k/v/o are [T, E]-shaped row views
 * (any row stride); scratch holds Tk*hd + hd*Tk + Tq*Tk floats. */
static int ib__attention(nq_exec_t *ex, const nq_tensor_t *q, const nq_tensor_t *k, const nq_tensor_t *v,
                         nq_tensor_t *o, int64_t H, float scale, float *scratch, nq_err_t *err) {
  const int64_t Tq = q->ne[0], Tk = k->ne[0], E = q->ne[1], hd = E / H;
  float *kh = scratch, *vt = kh + Tk * hd, *sc = vt + hd * Tk;
  const float *K = k->data, *V = v->data;
  int rc = 0;
  for (int64_t h = 0; h < H && !rc; h++) {
    for (int64_t t = 0; t < Tk; t++) {
      memcpy(kh + t * hd, K + t * k->nb[0] + h * hd, sizeof(float) * (size_t)hd);
      for (int64_t d = 0; d < hd; d++) vt[d * Tk + t] = V[t * v->nb[0] + h * hd + d];
    }
    nq_tensor_t wk, wv, qh = ib__v2((float *)q->data + h * hd, Tq, hd, q->nb[0]), s = ib__v2(sc, Tq, Tk, Tk),
                    oh = ib__v2((float *)o->data + h * hd, Tq, hd, o->nb[0]);
    nq_tensor_init_borrowed(&wk, NQ_DT_F32, 2, NQ_SHAPE(Tk, hd), kh);
    nq_tensor_init_borrowed(&wv, NQ_DT_F32, 2, NQ_SHAPE(hd, Tk), vt);
    nq_linear_t lk, lv;
    nq_linear_init(&lk, &wk, NULL);
    nq_linear_init(&lv, &wv, NULL);
    rc = nq_op_linear(ex, &s, &qh, &lk, err);
    if (!rc) rc = nq_op_softmax(ex, &s, &s, scale, err);
    if (!rc) rc = nq_op_linear(ex, &oh, &s, &lv, err);
    nq_linear_deinit(&lk); /* frees only what a backend packed; the data is borrowed */
    nq_linear_deinit(&lv);
  }
  return rc;
}

/* n <= max_batch views. out [n, out_dim]. */
static int ib__forward_chunk(nq_imagebind_t *m, const float *in, int64_t n, int frames_in, float *out, nq_err_t *err) {
  const nq_imagebind_config_t *c = &m->cfg;
  nq_exec_t *ex = m->ex;
  const int64_t E = c->embed_dim, F = c->mlp_dim, T = c->n_tokens, P = c->n_patches, K = m->stem.w.ne[1];
  const int64_t R = n * T, H = c->num_heads, hd = E / H;
  const bool audio = c->modality == NQ_IB_AUDIO;
  /* scratch: x, h, att [R,E]; qkv [R,3E]; mlp [R,F] (also the patch matrix [n*P,K] and stem output); kv for
   * add_bias_kv [(T+1), 2E]; head rows */
  int64_t big = n * P * (audio ? 2 * E : K + E);
  if (big < R * F) big = R * F;
  const int64_t Tk = T + (audio ? 1 : 0), natt = 2 * Tk * hd + T * Tk;
  size_t nfl = (size_t)(3 * R * E + R * 3 * E + big + (audio ? (T + 1) * 2 * E : 0) + n * E + natt);
  float *buf = malloc(nfl * sizeof(float));
  if (!buf)
    return nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "imagebind: scratch for %lld views (%zu MiB)", (long long)n,
                      nfl * 4 >> 20);
  float *px = buf, *ph = px + R * E, *patt = ph + R * E, *pqkv = patt + R * E, *pbig = pqkv + R * 3 * E,
        *pkv = pbig + big, *prow = pkv + (audio ? (T + 1) * 2 * E : 0), *patt_s = prow + n * E;
  nq_tensor_t x = ib__v2(px, R, E, E), h = ib__v2(ph, R, E, E), att = ib__v2(patt, R, E, E),
              qkv = ib__v2(pqkv, R, 3 * E, 3 * E), mlp = ib__v2(pbig, R, F, F);
  int rc = 0;
  /* stem -> tokens [n*P, E] at pbig + n*P*K (vision) / pbig + n*P*E (audio) */
  float *tok = pbig + n * P * (audio ? E : K);
  {
    if (audio) {
      rc = ib__audio_stem(m, in, n, pbig, tok, err);
    } else {
      ib_patch_job_t pj = {m, in, pbig, frames_in};
      nq_pool_for(ex->pool, n * P, 16, ib__patch_cb, &pj);
      nq_tensor_t pm = ib__v2(pbig, n * P, K, K), so = ib__v2(tok, n * P, E, E);
      rc = nq_op_linear(ex, &so, &pm, &m->stem, err);
    }
    nq_tensor_t so = ib__v2(tok, n * P, E, E);
    if (!rc && audio) rc = nq_op_layernorm(ex, &so, &so, &m->stem_norm_w, &m->stem_norm_b, c->stem_ln_eps, err);
    if (!rc)
      for (int64_t v = 0; v < n; v++) {
        memcpy(px + v * T * E, m->cls.data, sizeof(float) * (size_t)E);
        memcpy(px + (v * T + 1) * E, tok + v * P * E, sizeof(float) * (size_t)(P * E));
      }
    for (int64_t v = 0; v < n && !rc; v++) {
      nq_tensor_t xv = ib__v2(px + v * T * E, T, E, E);
      rc = nq_op_binary(ex, NQ_OP_ADD, &xv, &xv, &m->pos, err);
    }
  }
  if (!rc && !audio) rc = nq_op_layernorm(ex, &x, &x, &m->pre_norm_w, &m->pre_norm_b, c->ln_eps, err);
  const float scale = 1.0f / sqrtf((float)hd);
  for (int l = 0; l < c->num_blocks && !rc; l++) {
    nq_imagebind_block_t *B = &m->blocks[l];
    if ((rc = nq_op_layernorm(ex, &h, &x, &B->norm1_w, &B->norm1_b, c->ln_eps, err))) break;
    if ((rc = nq_op_linear(ex, &qkv, &h, &B->in_proj, err))) break;
    for (int64_t v = 0; v < n && !rc; v++) {
      float *base = pqkv + v * T * 3 * E;
      nq_tensor_t q = ib__v2(base, T, E, 3 * E), o = ib__v2(patt + v * T * E, T, E, E), k, vv;
      if (audio) {
        /* add_bias_kv: the learned key/value row goes after the sequence's T keys */
        for (int64_t r = 0; r < T; r++) memcpy(pkv + r * 2 * E, base + r * 3 * E + E, sizeof(float) * (size_t)(2 * E));
        memcpy(pkv + T * 2 * E, B->bias_k.data, sizeof(float) * (size_t)E);
        memcpy(pkv + T * 2 * E + E, B->bias_v.data, sizeof(float) * (size_t)E);
        k = ib__v2(pkv, T + 1, E, 2 * E), vv = ib__v2(pkv + E, T + 1, E, 2 * E);
      } else {
        k = ib__v2(base + E, T, E, 3 * E), vv = ib__v2(base + 2 * E, T, E, 3 * E);
      }
      rc = ib__attention(ex, &q, &k, &vv, &o, H, scale, patt_s, err);
    }
    if (rc) break;
    if ((rc = nq_op_linear(ex, &h, &att, &B->out_proj, err))) break;
    if ((rc = nq_op_binary(ex, NQ_OP_ADD, &x, &x, &h, err))) break;
    if ((rc = nq_op_layernorm(ex, &h, &x, &B->norm2_w, &B->norm2_b, c->ln_eps, err))) break;
    if ((rc = nq_op_linear(ex, &mlp, &h, &B->fc1, err))) break;
    if ((rc = nq_op_unary(ex, NQ_OP_GELU, &mlp, &mlp, err))) break;
    if ((rc = nq_op_linear(ex, &h, &mlp, &B->fc2, err))) break;
    if ((rc = nq_op_binary(ex, NQ_OP_ADD, &x, &x, &h, err))) break;
  }
  if (!rc) {
    /* head: LN is row-wise, so normalising only the CLS rows is the same as LN then select */
    nq_tensor_t cls = ib__v2(px, n, E, T * E), cn = ib__v2(prow, n, E, E), o = ib__v2(out, n, c->out_dim, c->out_dim);
    rc = nq_op_layernorm(ex, &cn, &cls, &m->head_norm_w, &m->head_norm_b, c->ln_eps, err);
    if (!rc) rc = nq_op_linear(ex, &o, &cn, &m->head, err);
  }
  for (int64_t v = 0; v < n && !rc; v++) {
    float *e = out + v * c->out_dim;
    double s = 0;
    for (int i = 0; i < c->out_dim; i++) s += (double)e[i] * e[i];
    double nrm = sqrt(s);
    float inv = (float)(1.0 / (nrm > 1e-12 ? nrm : 1e-12));
    for (int i = 0; i < c->out_dim; i++) e[i] *= inv;
    if (!isfinite(s)) rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "imagebind: non-finite embedding for view %lld", (long long)v);
  }
  free(buf);
  return rc;
}

int nq_imagebind_forward(nq_imagebind_t *m, const float *in, int64_t n, int frames_in, float *out, nq_err_t *err) {
  if (n < 0) return nq_err_set(err, NQ_EINVAL, 0, "imagebind: %lld views", (long long)n);
  if (m->cfg.modality == NQ_IB_VISION && frames_in != 1 && frames_in != m->cfg.frames)
    return nq_err_set(err, NQ_ESHAPE, NQ_ERR_FATAL, "imagebind vision: %d frames per view (want 1 or %d)", frames_in,
                      m->cfg.frames);
  const int64_t vn = nq_imagebind_view_numel(m, frames_in);
  for (int64_t v0 = 0; v0 < n; v0 += m->max_batch) {
    int64_t cnt = n - v0 < m->max_batch ? n - v0 : m->max_batch;
    int rc = ib__forward_chunk(m, in + v0 * vn, cnt, frames_in, out + v0 * m->cfg.out_dim, err);
    if (rc) return rc;
  }
  return 0;
}

int nq_imagebind_embed(nq_imagebind_t *m, const float *in, int64_t n_items, int views, int frames_in, float *out,
                       nq_err_t *err) {
  if (views < 1 || n_items < 0) return nq_err_set(err, NQ_EINVAL, 0, "imagebind: %d views per item", views);
  const int64_t D = m->cfg.out_dim, N = n_items * views;
  if (views == 1) return nq_imagebind_forward(m, in, N, frames_in, out, err);
  float *tmp = malloc(sizeof(float) * (size_t)(N * D + 1));
  if (!tmp) return nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "imagebind: out of memory");
  int rc = nq_imagebind_forward(m, in, N, frames_in, tmp, err);
  for (int64_t i = 0; i < n_items && !rc; i++)
    for (int64_t d = 0; d < D; d++) {
      double s = 0;
      for (int v = 0; v < views; v++) s += tmp[(i * views + v) * D + d];
      out[i * D + d] = (float)(s / views);
    }
  free(tmp);
  return rc;
}

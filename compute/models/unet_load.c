/* UNet (2D and 3D): config.json parsing, weight lookup with shape checks, module construction. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compute/models/unet_int.h"

/* ---- config.json ------------------------------------------------------------------------------------------ */

static int nq_unet__cfg_int(json_t *root, const char *key, int def, int lo, int hi, int *out, nq_err_t *err) {
  json_t *v = json_object_get(root, key);
  if (!v || json_is_null(v)) {
    *out = def;
    return 0;
  }
  if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi)
    return nq_err_set(err, NQ_ECONFIG, NQ_ERR_FATAL, "unet config: %s must be an integer in [%d, %d]", key, lo, hi);
  *out = (int)json_integer_value(v);
  return 0;
}

static int nq_unet__cfg_num(json_t *root, const char *key, double def, double *out, nq_err_t *err) {
  json_t *v = json_object_get(root, key);
  if (!v || json_is_null(v)) {
    *out = def;
    return 0;
  }
  if (!json_is_number(v)) return nq_err_set(err, NQ_ECONFIG, NQ_ERR_FATAL, "unet config: %s must be a number", key);
  *out = json_number_value(v);
  return 0;
}

static int nq_unet__cfg_bool(json_t *root, const char *key, int def, int *out, nq_err_t *err) {
  json_t *v = json_object_get(root, key);
  if (!v || json_is_null(v)) {
    *out = def;
    return 0;
  }
  if (!json_is_boolean(v)) return nq_err_set(err, NQ_ECONFIG, NQ_ERR_FATAL, "unet config: %s must be a boolean", key);
  *out = json_is_true(v);
  return 0;
}

/* An int, or a list of n ints (per down block). Absent/null: def everywhere (def < 0: required). */
static int nq_unet__cfg_ints(json_t *root, const char *key, int n, int def, int lo, int hi, int *out, nq_err_t *err) {
  json_t *v = json_object_get(root, key);
  if (!v || json_is_null(v)) {
    if (def < 0) return nq_err_set(err, NQ_ECONFIG, NQ_ERR_FATAL, "unet config: %s missing", key);
    for (int i = 0; i < n; i++) out[i] = def;
    return 0;
  }
  if (json_is_integer(v)) {
    for (int i = 0; i < n; i++) out[i] = (int)json_integer_value(v);
  } else if (json_is_array(v) && (int)json_array_size(v) == n) {
    for (int i = 0; i < n; i++) {
      json_t *e = json_array_get(v, (size_t)i);
      if (!json_is_integer(e))
        return nq_err_set(err, NQ_ECONFIG, NQ_ERR_FATAL, "unet config: %s[%d] is not an integer", key, i);
      out[i] = (int)json_integer_value(e);
    }
  } else {
    return nq_err_set(err, NQ_ECONFIG, NQ_ERR_FATAL, "unet config: %s must be an integer or a list of %d", key, n);
  }
  for (int i = 0; i < n; i++)
    if (out[i] < lo || out[i] > hi)
      return nq_err_set(err, NQ_ECONFIG, NQ_ERR_FATAL, "unet config: %s = %d out of [%d, %d]", key, out[i], lo, hi);
  return 0;
}

/* Key must be absent, null or equal to `ok` (a string), else unsupported. */
static int nq_unet__cfg_only(json_t *root, const char *key, const char *ok, nq_err_t *err) {
  json_t *v = json_object_get(root, key);
  if (!v || json_is_null(v)) return 0;
  if (ok && json_is_string(v) && !strcmp(json_string_value(v), ok)) return 0;
  if (json_is_false(v)) return 0;
  if (json_is_array(v)) { /* only_cross_attention may be a list of booleans */
    size_t i;
    json_t *e;
    int any = 0;
    json_array_foreach(v, i, e) any |= !json_is_false(e);
    if (!any) return 0;
  }
  char *s = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
  int rc = nq_err_set(err, NQ_EUNSUPPORTED, NQ_ERR_FATAL, "unet config: %s = %s is not supported (want %s)", key,
                      s ? s : "?", ok ? ok : "null/false");
  free(s);
  return rc;
}

static int nq_unet__cfg_types(json_t *root, const char *key, int n, const char *plain, const char *attn, int *flags,
                              nq_err_t *err) {
  json_t *v = json_object_get(root, key);
  if (!json_is_array(v) || (int)json_array_size(v) != n)
    return nq_err_set(err, NQ_ECONFIG, NQ_ERR_FATAL, "unet config: %s must be a list of %d block types", key, n);
  for (int i = 0; i < n; i++) {
    const char *s = json_string_value(json_array_get(v, (size_t)i));
    if (s && !strcmp(s, plain)) flags[i] = 0;
    else if (s && !strcmp(s, attn)) flags[i] = 1;
    else
      return nq_err_set(err, NQ_EUNSUPPORTED, NQ_ERR_FATAL, "unet config: %s[%d] = %s is not supported (%s or %s)", key,
                        i, s ? s : "?", plain, attn);
  }
  return 0;
}

int nq_unet__arch_parse(const char *config_path, int is3d, nq_unet__arch_t *a, nq_err_t *err) {
  memset(a, 0, sizeof(*a));
  json_error_t je;
  json_t *root = json_load_file(config_path, 0, &je);
  if (!root)
    return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: line %d: %s", config_path, je.line, je.text);
  int rc = 0;
  double d;
  a->is3d = is3d;
  if (!json_is_object(root)) {
    rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: not a JSON object", config_path);
    goto out;
  }
  json_t *boc = json_object_get(root, "block_out_channels");
  int n = json_is_array(boc) ? (int)json_array_size(boc) : 0;
  if (n < 1 || n > NQ_UNET_MAX_LEVELS) {
    rc = nq_err_set(err, NQ_ECONFIG, NQ_ERR_FATAL, "unet config: block_out_channels must list 1..%d ints",
                    NQ_UNET_MAX_LEVELS);
    goto out;
  }
  a->n_levels = n;
  if ((rc = nq_unet__cfg_ints(root, "block_out_channels", n, -1, 1, 1 << 14, a->boc, err)) < 0) goto out;
  if ((rc = nq_unet__cfg_int(root, "in_channels", 4, 1, 1 << 12, &a->in_channels, err)) < 0) goto out;
  if ((rc = nq_unet__cfg_int(root, "out_channels", 4, 1, 1 << 12, &a->out_channels, err)) < 0) goto out;
  if ((rc = nq_unet__cfg_int(root, "layers_per_block", 2, 1, 16, &a->layers_per_block, err)) < 0) goto out;
  if ((rc = nq_unet__cfg_int(root, "norm_num_groups", 32, 1, 1 << 12, &a->norm_groups, err)) < 0) goto out;
  if ((rc = nq_unet__cfg_num(root, "norm_eps", 1e-5, &d, err)) < 0) goto out;
  a->norm_eps = (float)d;
  if ((rc = nq_unet__cfg_int(root, "downsample_padding", 1, 0, 8, &a->downsample_padding, err)) < 0) goto out;
  if ((rc = nq_unet__cfg_num(root, "mid_block_scale_factor", 1.0, &d, err)) < 0) goto out;
  a->mid_scale = (float)d;
  a->resnet_out_scale = 1.0f, a->conv_in_kernel = 3, a->conv_out_kernel = 3, a->flip_sin_to_cos = 1;
  a->has_mid = 1;
  const char *plain_down = is3d ? "DownBlock3D" : "DownBlock2D", *attn_down = is3d ? "CrossAttnDownBlock3D" : "CrossAttnDownBlock2D";
  const char *plain_up = is3d ? "UpBlock3D" : "UpBlock2D", *attn_up = is3d ? "CrossAttnUpBlock3D" : "CrossAttnUpBlock2D";
  if ((rc = nq_unet__cfg_types(root, "down_block_types", n, plain_down, attn_down, a->down_attn, err)) < 0) goto out;
  if ((rc = nq_unet__cfg_types(root, "up_block_types", n, plain_up, attn_up, a->up_attn, err)) < 0) goto out;
  if ((rc = nq_unet__cfg_only(root, "act_fn", "silu", err)) < 0) goto out;
  /* diffusers: num_attention_heads defaults to attention_head_dim (a naming bug kept for compatibility) */
  json_t *nah = json_object_get(root, "num_attention_heads");
  const char *hkey = nah && !json_is_null(nah) ? "num_attention_heads" : "attention_head_dim";
  if ((rc = nq_unet__cfg_ints(root, hkey, n, 8, 1, 1 << 12, a->heads, err)) < 0) goto out;
  if ((rc = nq_unet__cfg_ints(root, "cross_attention_dim", n, 1280, 1, 1 << 16, a->cross_dim, err)) < 0) goto out;
  if ((rc = nq_unet__cfg_ints(root, "transformer_layers_per_block", n, 1, 1, 64, a->tf_layers, err)) < 0) goto out;
  if (is3d) {
    int ahd[NQ_UNET_MAX_LEVELS];
    if ((rc = nq_unet__cfg_ints(root, "attention_head_dim", n, 64, 1, 1 << 12, ahd, err)) < 0) goto out;
    a->tin_heads = 8, a->tin_head_dim = ahd[0];
    for (int i = 0; i < n; i++)
      if (a->boc[i] % 32) {
        rc = nq_err_set(err, NQ_ECONFIG, NQ_ERR_FATAL,
                        "unet3d config: block_out_channels[%d] = %d is not a multiple of 32 (GroupNorm(32))", i,
                        a->boc[i]);
        goto out;
      }
    if ((rc = nq_unet__cfg_only(root, "mid_block_type", "UNetMidBlock3DCrossAttn", err)) < 0) goto out;
  } else {
    if ((rc = nq_unet__cfg_bool(root, "flip_sin_to_cos", 1, &a->flip_sin_to_cos, err)) < 0) goto out;
    if ((rc = nq_unet__cfg_num(root, "freq_shift", 0.0, &d, err)) < 0) goto out;
    a->freq_shift = (float)d;
    if ((rc = nq_unet__cfg_int(root, "conv_in_kernel", 3, 1, 15, &a->conv_in_kernel, err)) < 0) goto out;
    if ((rc = nq_unet__cfg_int(root, "conv_out_kernel", 3, 1, 15, &a->conv_out_kernel, err)) < 0) goto out;
    if (!(a->conv_in_kernel & 1) || !(a->conv_out_kernel & 1)) {
      rc = nq_err_set(err, NQ_ECONFIG, NQ_ERR_FATAL, "unet config: conv_in/out_kernel must be odd");
      goto out;
    }
    if ((rc = nq_unet__cfg_bool(root, "center_input_sample", 0, &a->center_input_sample, err)) < 0) goto out;
    if ((rc = nq_unet__cfg_num(root, "resnet_out_scale_factor", 1.0, &d, err)) < 0) goto out;
    a->resnet_out_scale = (float)d;
    json_t *mbt = json_object_get(root, "mid_block_type");
    if (json_object_get(root, "mid_block_type") && json_is_null(mbt)) a->has_mid = 0;
    else if ((rc = nq_unet__cfg_only(root, "mid_block_type", "UNetMidBlock2DCrossAttn", err)) < 0) goto out;
    json_t *cet = json_object_get(root, "class_embed_type");
    if (cet && !json_is_null(cet)) {
      if ((rc = nq_unet__cfg_only(root, "class_embed_type", "simple_projection", err)) < 0) goto out;
      a->class_embed = 1;
      if ((rc = nq_unet__cfg_int(root, "projection_class_embeddings_input_dim", -1, 1, 1 << 16, &a->class_in_dim,
                                 err)) < 0)
        goto out;
      if (a->class_in_dim < 1) {
        rc = nq_err_set(err, NQ_ECONFIG, NQ_ERR_FATAL,
                        "unet config: class_embed_type simple_projection needs projection_class_embeddings_input_dim");
        goto out;
      }
    }
    if ((rc = nq_unet__cfg_bool(root, "class_embeddings_concat", 0, &a->class_concat, err)) < 0) goto out;
    if (!a->class_embed) a->class_concat = 0;
    static const char *const nulls[] = {"addition_embed_type", "encoder_hid_dim_type", "time_cond_proj_dim",
                                        "time_embedding_act_fn", "timestep_post_act", "num_class_embeds",
                                        "cross_attention_norm", "only_cross_attention", "dual_cross_attention",
                                        "resnet_skip_time_act", "mid_block_only_cross_attention", "time_embedding_dim"};
    for (size_t i = 0; i < sizeof nulls / sizeof *nulls; i++)
      if ((rc = nq_unet__cfg_only(root, nulls[i], NULL, err)) < 0) goto out;
    if ((rc = nq_unet__cfg_only(root, "resnet_time_scale_shift", "default", err)) < 0) goto out;
    if ((rc = nq_unet__cfg_only(root, "time_embedding_type", "positional", err)) < 0) goto out;
    if ((rc = nq_unet__cfg_only(root, "attention_type", "default", err)) < 0) goto out;
  }
  a->time_embed_dim = 4 * a->boc[0];
  if (a->boc[0] % 2) {
    rc = nq_err_set(err, NQ_ECONFIG, NQ_ERR_FATAL, "unet config: block_out_channels[0] must be even");
    goto out;
  }
  for (int i = 0; i < n; i++) {
    if (a->boc[i] % a->norm_groups) {
      rc = nq_err_set(err, NQ_ECONFIG, NQ_ERR_FATAL, "unet config: norm_num_groups %d does not divide %d channels",
                      a->norm_groups, a->boc[i]);
      goto out;
    }
    /* the head split must be exact in both conventions (2D: heads = value; 3D: head_dim = value) */
    if (a->boc[i] % a->heads[i]) {
      rc = nq_err_set(err, NQ_ECONFIG, NQ_ERR_FATAL, "unet config: %d channels of block %d do not split into %s %d",
                      a->boc[i], i, hkey, a->heads[i]);
      goto out;
    }
  }
out:
  json_decref(root);
  if (rc) nq_err_prefix(err, "%s", config_path);
  return rc;
}

/* ---- weight lookup ---------------------------------------------------------------------------------------- */

static int nq_unet__get(nq_unet__src_t *s, const char *name, int ndim, const int64_t *shape, nq_unet__entry_t *e,
                        nq_err_t *err) {
  char mapped[256];
  const char *fname = name;
  if (s->map) {
    if (s->map(s->arch, name, mapped, sizeof mapped) < 0)
      return nq_err_set(err, NQ_ENOENT, NQ_ERR_FATAL, "unet: no single-file name for tensor %s", name);
    fname = mapped;
  }
  if (!s->lookup(s->ctx, fname, e)) {
    if (fname != name) return nq_err_set(err, NQ_ENOENT, NQ_ERR_FATAL, "unet: tensor %s (%s) missing", fname, name);
    return nq_err_set(err, NQ_ENOENT, NQ_ERR_FATAL, "unet: tensor %s missing", name);
  }
  bool ok = e->ndim == ndim;
  for (int i = 0; ok && i < ndim; i++) ok = e->shape[i] == shape[i];
  if (!ok) {
    char want[96] = "", got[96] = "";
    size_t p = 0;
    for (int i = 0; i < ndim && p < sizeof want; i++)
      p += (size_t)snprintf(want + p, sizeof want - p, "%s%lld", i ? "," : "", (long long)shape[i]);
    p = 0;
    for (int i = 0; i < e->ndim && p < sizeof got; i++)
      p += (size_t)snprintf(got + p, sizeof got - p, "%s%lld", i ? "," : "", (long long)e->shape[i]);
    return nq_err_set(err, NQ_ESHAPE, NQ_ERR_FATAL, "unet: tensor %s has shape [%s], want [%s]", fname, got, want);
  }
  if (e->dtype != NQ_DT_F32 && e->dtype != NQ_DT_BF16 && e->dtype != NQ_DT_F16)
    return nq_err_set(err, NQ_EUNSUPPORTED, NQ_ERR_FATAL, "unet: tensor %s has dtype %s (want F32/BF16/F16)", fname,
                      nq_dtype_name(e->dtype));
  s->n_found++;
  return 0;
}

/* Wraps e as a tensor of `shape` (a view with the same element count), converted to dtype `want` (-1 keep). */
static int nq_unet__wrap(const nq_unet__entry_t *e, int ndim, const int64_t *shape, int want, nq_tensor_t *t,
                         nq_err_t *err) {
  nq_tensor_init_borrowed(t, e->dtype, ndim, shape, (void *)e->data); /* weights are never written through */
  if (want < 0 || (int)e->dtype == want || !e->data) {
    if (want >= 0 && !e->data) t->dtype = (nq_dtype_t)want;
    return 0;
  }
  nq_tensor_t c;
  int rc = nq_tensor_init(&c, (nq_dtype_t)want, ndim, shape, err);
  if (rc < 0) return rc;
  if ((rc = nq_tensor_copy(&c, t, err)) < 0) {
    nq_tensor_deinit(&c);
    return rc;
  }
  *t = c;
  return 0;
}

static int nq_unet__vec(nq_unet__src_t *s, const char *name, int64_t n, nq_tensor_t *t, nq_err_t *err) {
  nq_unet__entry_t e;
  int rc = nq_unet__get(s, name, 1, &n, &e, err);
  return rc < 0 ? rc : nq_unet__wrap(&e, 1, &n, NQ_DT_F32, t, err);
}

static int nq_unet__norm(nq_unet__src_t *s, const char *pfx, int64_t c, int groups, float eps, nq_unet__norm_t *nm,
                         nq_err_t *err) {
  char nb[256];
  nm->groups = groups, nm->eps = eps;
  snprintf(nb, sizeof nb, "%s.weight", pfx);
  int rc = nq_unet__vec(s, nb, c, &nm->g, err);
  snprintf(nb, sizeof nb, "%s.bias", pfx);
  return rc < 0 ? rc : nq_unet__vec(s, nb, c, &nm->b, err);
}

/* A Linear [n, k] (+ bias). conv1x1: also accept a [n, k, 1, 1] conv weight (used as the same linear). */
static int nq_unet__linear(nq_unet__src_t *s, const char *pfx, int64_t n, int64_t k, bool bias, bool conv1x1,
                           nq_linear_t *lin, nq_err_t *err) {
  char nb[256];
  nq_unet__entry_t e;
  snprintf(nb, sizeof nb, "%s.weight", pfx);
  int rc;
  if (conv1x1) {
    /* peek at the rank without counting the tensor twice */
    char mapped[256];
    const char *fname = nb;
    if (s->map && s->map(s->arch, nb, mapped, sizeof mapped) == 0) fname = mapped;
    if (s->lookup(s->ctx, fname, &e) && e.ndim == 4) rc = nq_unet__get(s, nb, 4, (int64_t[]){n, k, 1, 1}, &e, err);
    else rc = nq_unet__get(s, nb, 2, (int64_t[]){n, k}, &e, err);
  } else {
    rc = nq_unet__get(s, nb, 2, (int64_t[]){n, k}, &e, err);
  }
  nq_tensor_t w, b;
  memset(&b, 0, sizeof b);
  if (rc < 0 || (rc = nq_unet__wrap(&e, 2, (int64_t[]){n, k}, s->wdtype, &w, err)) < 0) return rc;
  if (bias) {
    snprintf(nb, sizeof nb, "%s.bias", pfx);
    if ((rc = nq_unet__vec(s, nb, n, &b, err)) < 0) {
      nq_tensor_deinit(&w);
      return rc;
    }
  }
  nq_linear_init(lin, &w, bias ? &b : NULL);
  return 0;
}

static int nq_unet__conv(nq_unet__src_t *s, const char *pfx, int64_t co, int64_t ci, int kh, int kw, int stride,
                         int pad_h, int pad_w, nq_unet__conv_t *cv, nq_err_t *err) {
  char nb[256];
  nq_unet__entry_t e;
  cv->stride = stride, cv->pad_h = pad_h, cv->pad_w = pad_w;
  snprintf(nb, sizeof nb, "%s.weight", pfx);
  int rc = nq_unet__get(s, nb, 4, (int64_t[]){co, ci, kh, kw}, &e, err);
  if (rc < 0 || (rc = nq_unet__wrap(&e, 4, (int64_t[]){co, ci, kh, kw}, s->conv_wdtype, &cv->w, err)) < 0) return rc;
  snprintf(nb, sizeof nb, "%s.bias", pfx);
  return nq_unet__vec(s, nb, co, &cv->b, err);
}

/* Conv3d (3,1,1) weight [co, ci, 3, 1, 1] used as a conv2d [co, ci, 3, 1] over [B, C, F, H*W]. */
static int nq_unet__conv3t(nq_unet__src_t *s, const char *pfx, int64_t c, nq_unet__conv_t *cv, nq_err_t *err) {
  char nb[256];
  nq_unet__entry_t e;
  cv->stride = 1, cv->pad_h = 1, cv->pad_w = 0;
  snprintf(nb, sizeof nb, "%s.weight", pfx);
  int rc = nq_unet__get(s, nb, 5, (int64_t[]){c, c, 3, 1, 1}, &e, err);
  if (rc < 0 || (rc = nq_unet__wrap(&e, 4, (int64_t[]){c, c, 3, 1}, s->conv_wdtype, &cv->w, err)) < 0) return rc;
  snprintf(nb, sizeof nb, "%s.bias", pfx);
  return nq_unet__vec(s, nb, c, &cv->b, err);
}

/* ---- modules ---------------------------------------------------------------------------------------------- */

static int nq_unet__resnet(nq_unet__src_t *s, const nq_unet__arch_t *a, const char *pfx, int cin, int cout, int temb,
                           float out_scale, nq_unet__resnet_t *r, nq_err_t *err) {
  char nb[256];
  int rc;
  r->cin = cin, r->cout = cout, r->out_scale = out_scale;
#define NQ_P(fmt) (snprintf(nb, sizeof nb, "%s." fmt, pfx), nb)
  if ((rc = nq_unet__norm(s, NQ_P("norm1"), cin, a->norm_groups, a->norm_eps, &r->norm1, err)) < 0) return rc;
  if ((rc = nq_unet__conv(s, NQ_P("conv1"), cout, cin, 3, 3, 1, 1, 1, &r->conv1, err)) < 0) return rc;
  if ((rc = nq_unet__linear(s, NQ_P("time_emb_proj"), cout, temb, true, false, &r->temb, err)) < 0) return rc;
  if ((rc = nq_unet__norm(s, NQ_P("norm2"), cout, a->norm_groups, a->norm_eps, &r->norm2, err)) < 0) return rc;
  if ((rc = nq_unet__conv(s, NQ_P("conv2"), cout, cout, 3, 3, 1, 1, 1, &r->conv2, err)) < 0) return rc;
  if (cin != cout) {
    r->has_shortcut = true;
    if ((rc = nq_unet__conv(s, NQ_P("conv_shortcut"), cout, cin, 1, 1, 1, 0, 0, &r->shortcut, err)) < 0) return rc;
  }
#undef NQ_P
  return 0;
}

static int nq_unet__attn(nq_unet__src_t *s, const char *pfx, int dim, int kv_dim, int heads, int head_dim,
                         nq_unet__attn_t *at, nq_err_t *err) {
  char nb[256];
  int rc, inner = heads * head_dim;
  at->heads = heads, at->head_dim = head_dim;
  snprintf(nb, sizeof nb, "%s.to_q", pfx);
  if ((rc = nq_unet__linear(s, nb, inner, dim, false, false, &at->q, err)) < 0) return rc;
  snprintf(nb, sizeof nb, "%s.to_k", pfx);
  if ((rc = nq_unet__linear(s, nb, inner, kv_dim, false, false, &at->k, err)) < 0) return rc;
  snprintf(nb, sizeof nb, "%s.to_v", pfx);
  if ((rc = nq_unet__linear(s, nb, inner, kv_dim, false, false, &at->v, err)) < 0) return rc;
  snprintf(nb, sizeof nb, "%s.to_out.0", pfx);
  return nq_unet__linear(s, nb, dim, inner, true, false, &at->o, err);
}

/* Transformer2DModel (temporal 0) or TransformerTemporalModel (temporal 1). cross_dim 0: attn2 is self-attention
 * (AudioLDM's attn2 has to_k/to_v of in_features = cross_dim = block channels, so it is passed explicitly). */
static int nq_unet__transformer(nq_unet__src_t *s, const char *pfx, int temporal, int c, int heads, int head_dim,
                                int groups, int cross_dim, int n_blocks, nq_unet__tf_t *tf, nq_err_t *err) {
  char nb[320];
  int rc, inner = heads * head_dim;
  tf->temporal = temporal, tf->c = c, tf->inner = inner;
  snprintf(nb, sizeof nb, "%s.norm", pfx);
  if ((rc = nq_unet__norm(s, nb, c, groups, 1e-6f, &tf->norm, err)) < 0) return rc;
  snprintf(nb, sizeof nb, "%s.proj_in", pfx);
  if ((rc = nq_unet__linear(s, nb, inner, c, true, !temporal, &tf->proj_in, err)) < 0) return rc;
  tf->blocks = calloc((size_t)n_blocks, sizeof *tf->blocks);
  if (!tf->blocks) return nq_err_set(err, NQ_ENOMEM, 0, "unet: out of memory");
  tf->n_blocks = n_blocks;
  for (int b = 0; b < n_blocks; b++) {
    nq_unet__tblock_t *tb = &tf->blocks[b];
    char bp[300];
    snprintf(bp, sizeof bp, "%s.transformer_blocks.%d", pfx, b);
    const char *nn[3] = {"norm1", "norm2", "norm3"};
    nq_unet__norm_t *ns[3] = {&tb->n1, &tb->n2, &tb->n3};
    for (int i = 0; i < 3; i++) {
      snprintf(nb, sizeof nb, "%s.%s", bp, nn[i]);
      if ((rc = nq_unet__norm(s, nb, inner, 0, 1e-5f, ns[i], err)) < 0) return rc;
    }
    snprintf(nb, sizeof nb, "%s.attn1", bp);
    if ((rc = nq_unet__attn(s, nb, inner, inner, heads, head_dim, &tb->a1, err)) < 0) return rc;
    snprintf(nb, sizeof nb, "%s.attn2", bp);
    if ((rc = nq_unet__attn(s, nb, inner, cross_dim ? cross_dim : inner, heads, head_dim, &tb->a2, err)) < 0)
      return rc;
    tb->ff_inner = 4 * inner;
    snprintf(nb, sizeof nb, "%s.ff.net.0.proj", bp);
    if ((rc = nq_unet__linear(s, nb, 2 * tb->ff_inner, inner, true, false, &tb->ff1, err)) < 0) return rc;
    snprintf(nb, sizeof nb, "%s.ff.net.2", bp);
    if ((rc = nq_unet__linear(s, nb, inner, tb->ff_inner, true, false, &tb->ff2, err)) < 0) return rc;
  }
  snprintf(nb, sizeof nb, "%s.proj_out", pfx);
  return nq_unet__linear(s, nb, c, inner, true, !temporal, &tf->proj_out, err);
}

static int nq_unet__tconv(nq_unet__src_t *s, const char *pfx, int c, nq_unet__tconv_t *t, nq_err_t *err) {
  char nb[256];
  int rc;
  for (int i = 0; i < 4; i++) {
    /* conv1 = Sequential(GroupNorm, SiLU, Conv3d); conv2..4 = (GroupNorm, SiLU, Dropout, Conv3d) */
    snprintf(nb, sizeof nb, "%s.conv%d.0", pfx, i + 1);
    if ((rc = nq_unet__norm(s, nb, c, 32, 1e-5f, &t->norm[i], err)) < 0) return rc;
    snprintf(nb, sizeof nb, "%s.conv%d.%d", pfx, i + 1, i ? 3 : 2);
    if ((rc = nq_unet__conv3t(s, nb, c, &t->conv[i], err)) < 0) return rc;
  }
  return 0;
}

/* The in-block transformers: 2D UNet heads = value, head_dim = C / value; 3D blocks call
 * Transformer2DModel(C // value, value), i.e. head_dim = value. */
static void nq_unet__split(const nq_unet__arch_t *a, int c, int value, int *heads, int *head_dim) {
  if (a->is3d) *head_dim = value, *heads = c / value;
  else *heads = value, *head_dim = c / value;
}

static int nq_unet__block_alloc(nq_unet__block_t *b, int n, int n_attn, bool is3d, nq_err_t *err) {
  b->n_layers = n;
  b->res = calloc((size_t)n, sizeof *b->res);
  if (is3d) b->tconv = calloc((size_t)n, sizeof *b->tconv);
  if (n_attn) {
    b->attn = calloc((size_t)n_attn, sizeof *b->attn);
    if (is3d) b->tattn = calloc((size_t)n_attn, sizeof *b->tattn);
  }
  if (!b->res || (is3d && !b->tconv) || (n_attn && (!b->attn || (is3d && !b->tattn))))
    return nq_err_set(err, NQ_ENOMEM, 0, "unet: out of memory");
  return 0;
}

/* One layer's attention pair: Transformer2D (+ TransformerTemporal in 3D). */
static int nq_unet__layer_attn(nq_unet__src_t *s, const nq_unet__arch_t *a, const char *bp, int j, int c, int value,
                               int cross, int tfl, nq_unet__block_t *b, nq_err_t *err) {
  char nb[256];
  int heads, hd, rc;
  nq_unet__split(a, c, value, &heads, &hd);
  snprintf(nb, sizeof nb, "%s.attentions.%d", bp, j);
  if ((rc = nq_unet__transformer(s, nb, 0, c, heads, hd, a->norm_groups, cross, tfl, &b->attn[j], err)) < 0) return rc;
  if (a->is3d) {
    snprintf(nb, sizeof nb, "%s.temp_attentions.%d", bp, j);
    if ((rc = nq_unet__transformer(s, nb, 1, c, heads, hd, a->norm_groups, 0, 1, &b->tattn[j], err)) < 0) return rc;
  }
  return 0;
}

int nq_unet__build(nq_unet__model_t *m, nq_unet__src_t *s, nq_err_t *err) {
  const nq_unet__arch_t *a = &m->a;
  int n = a->n_levels, lpb = a->layers_per_block, rc;
  int temb = a->time_embed_dim * (a->class_concat ? 2 : 1);
  char bp[128], nb[256];
  int kin = a->conv_in_kernel, kout = a->conv_out_kernel;
  if ((rc = nq_unet__conv(s, "conv_in", a->boc[0], a->in_channels, kin, kin, 1, kin / 2, kin / 2, &m->conv_in, err)) < 0)
    return rc;
  if ((rc = nq_unet__linear(s, "time_embedding.linear_1", a->time_embed_dim, a->boc[0], true, false, &m->t_lin1, err)) < 0)
    return rc;
  if ((rc = nq_unet__linear(s, "time_embedding.linear_2", a->time_embed_dim, a->time_embed_dim, true, false, &m->t_lin2,
                            err)) < 0)
    return rc;
  if (a->class_embed &&
      (rc = nq_unet__linear(s, "class_embedding", a->time_embed_dim, a->class_in_dim, true, false, &m->class_lin, err)) < 0)
    return rc;
  if (a->is3d) {
    m->has_tin = true;
    if ((rc = nq_unet__transformer(s, "transformer_in", 1, a->boc[0], a->tin_heads, a->tin_head_dim, 32, 0, 1, &m->tin,
                                   err)) < 0)
      return rc;
  }
  /* down */
  int out_c = a->boc[0];
  for (int i = 0; i < n; i++) {
    nq_unet__block_t *b = &m->down[i];
    int in_c = out_c;
    out_c = a->boc[i];
    snprintf(bp, sizeof bp, "down_blocks.%d", i);
    if ((rc = nq_unet__block_alloc(b, lpb, a->down_attn[i] ? lpb : 0, a->is3d, err)) < 0) return rc;
    for (int j = 0; j < lpb; j++) {
      snprintf(nb, sizeof nb, "%s.resnets.%d", bp, j);
      if ((rc = nq_unet__resnet(s, a, nb, j ? out_c : in_c, out_c, temb, a->resnet_out_scale, &b->res[j], err)) < 0)
        return rc;
      if (a->is3d) {
        snprintf(nb, sizeof nb, "%s.temp_convs.%d", bp, j);
        if ((rc = nq_unet__tconv(s, nb, out_c, &b->tconv[j], err)) < 0) return rc;
      }
      if (a->down_attn[i] &&
          (rc = nq_unet__layer_attn(s, a, bp, j, out_c, a->heads[i], a->cross_dim[i], a->tf_layers[i], b, err)) < 0)
        return rc;
    }
    if (i < n - 1) {
      b->has_sampler = true;
      snprintf(nb, sizeof nb, "%s.downsamplers.0.conv", bp);
      if ((rc = nq_unet__conv(s, nb, out_c, out_c, 3, 3, 2, a->downsample_padding, a->downsample_padding, &b->sampler,
                              err)) < 0)
        return rc;
    }
  }
  /* mid: resnet, then (attention, resnet) once */
  if (a->has_mid) {
    nq_unet__block_t *b = &m->mid;
    int c = a->boc[n - 1];
    if ((rc = nq_unet__block_alloc(b, 2, 1, a->is3d, err)) < 0) return rc;
    for (int j = 0; j < 2; j++) {
      snprintf(nb, sizeof nb, "mid_block.resnets.%d", j);
      if ((rc = nq_unet__resnet(s, a, nb, c, c, temb, a->mid_scale, &b->res[j], err)) < 0) return rc;
      if (a->is3d) {
        snprintf(nb, sizeof nb, "mid_block.temp_convs.%d", j);
        if ((rc = nq_unet__tconv(s, nb, c, &b->tconv[j], err)) < 0) return rc;
      }
    }
    if ((rc = nq_unet__layer_attn(s, a, "mid_block", 0, c, a->heads[n - 1], a->cross_dim[n - 1], a->tf_layers[n - 1], b,
                                  err)) < 0)
      return rc;
  }
  /* up: reversed channels, heads and cross dims; lpb + 1 resnets eating the skips */
  out_c = a->boc[n - 1];
  for (int i = 0; i < n; i++) {
    nq_unet__block_t *b = &m->up[i];
    int r = n - 1 - i; /* the matching down level */
    int prev_c = out_c;
    out_c = a->boc[r];
    int in_c = a->boc[r > 0 ? r - 1 : 0];
    snprintf(bp, sizeof bp, "up_blocks.%d", i);
    if ((rc = nq_unet__block_alloc(b, lpb + 1, a->up_attn[i] ? lpb + 1 : 0, a->is3d, err)) < 0) return rc;
    for (int j = 0; j <= lpb; j++) {
      int skip_c = j == lpb ? in_c : out_c, res_in = j ? out_c : prev_c;
      snprintf(nb, sizeof nb, "%s.resnets.%d", bp, j);
      if ((rc = nq_unet__resnet(s, a, nb, res_in + skip_c, out_c, temb, a->resnet_out_scale, &b->res[j], err)) < 0)
        return rc;
      if (a->is3d) {
        snprintf(nb, sizeof nb, "%s.temp_convs.%d", bp, j);
        if ((rc = nq_unet__tconv(s, nb, out_c, &b->tconv[j], err)) < 0) return rc;
      }
      if (a->up_attn[i] &&
          (rc = nq_unet__layer_attn(s, a, bp, j, out_c, a->heads[r], a->cross_dim[r], a->tf_layers[r], b, err)) < 0)
        return rc;
    }
    if (i < n - 1) {
      b->has_sampler = true;
      snprintf(nb, sizeof nb, "%s.upsamplers.0.conv", bp);
      if ((rc = nq_unet__conv(s, nb, out_c, out_c, 3, 3, 1, 1, 1, &b->sampler, err)) < 0) return rc;
    }
  }
  if ((rc = nq_unet__norm(s, "conv_norm_out", a->boc[0], a->norm_groups, a->norm_eps, &m->norm_out, err)) < 0) return rc;
  return nq_unet__conv(s, "conv_out", a->out_channels, a->boc[0], kout, kout, 1, kout / 2, kout / 2, &m->conv_out, err);
}

/* ---- teardown --------------------------------------------------------------------------------------------- */

static void nq_unet__conv_deinit(nq_unet__conv_t *c) { nq_tensor_deinit(&c->w), nq_tensor_deinit(&c->b); }
static void nq_unet__norm_deinit(nq_unet__norm_t *n) { nq_tensor_deinit(&n->g), nq_tensor_deinit(&n->b); }

static void nq_unet__tf_deinit(nq_unet__tf_t *tf) {
  nq_unet__norm_deinit(&tf->norm);
  nq_linear_deinit(&tf->proj_in), nq_linear_deinit(&tf->proj_out);
  for (int b = 0; b < tf->n_blocks; b++) {
    nq_unet__tblock_t *t = &tf->blocks[b];
    nq_unet__norm_deinit(&t->n1), nq_unet__norm_deinit(&t->n2), nq_unet__norm_deinit(&t->n3);
    nq_unet__attn_t *as[2] = {&t->a1, &t->a2};
    for (int i = 0; i < 2; i++)
      nq_linear_deinit(&as[i]->q), nq_linear_deinit(&as[i]->k), nq_linear_deinit(&as[i]->v), nq_linear_deinit(&as[i]->o);
    nq_linear_deinit(&t->ff1), nq_linear_deinit(&t->ff2);
  }
  free(tf->blocks);
  memset(tf, 0, sizeof *tf);
}

static void nq_unet__block_deinit(nq_unet__block_t *b, int n_attn) {
  for (int j = 0; b->res && j < b->n_layers; j++) {
    nq_unet__resnet_t *r = &b->res[j];
    nq_unet__norm_deinit(&r->norm1), nq_unet__norm_deinit(&r->norm2);
    nq_unet__conv_deinit(&r->conv1), nq_unet__conv_deinit(&r->conv2), nq_unet__conv_deinit(&r->shortcut);
    nq_linear_deinit(&r->temb);
  }
  for (int j = 0; b->tconv && j < b->n_layers; j++)
    for (int i = 0; i < 4; i++) nq_unet__norm_deinit(&b->tconv[j].norm[i]), nq_unet__conv_deinit(&b->tconv[j].conv[i]);
  for (int j = 0; b->attn && j < n_attn; j++) nq_unet__tf_deinit(&b->attn[j]);
  for (int j = 0; b->tattn && j < n_attn; j++) nq_unet__tf_deinit(&b->tattn[j]);
  free(b->res), free(b->tconv), free(b->attn), free(b->tattn);
  nq_unet__conv_deinit(&b->sampler);
  memset(b, 0, sizeof *b);
}

void nq_unet__model_deinit(nq_unet__model_t *m) {
  if (!m) return;
  nq_unet__conv_deinit(&m->conv_in), nq_unet__conv_deinit(&m->conv_out);
  nq_unet__norm_deinit(&m->norm_out);
  nq_linear_deinit(&m->t_lin1), nq_linear_deinit(&m->t_lin2), nq_linear_deinit(&m->class_lin);
  nq_unet__tf_deinit(&m->tin);
  for (int i = 0; i < NQ_UNET_MAX_LEVELS; i++) {
    nq_unet__block_deinit(&m->down[i], m->down[i].n_layers);
    nq_unet__block_deinit(&m->up[i], m->up[i].n_layers);
  }
  nq_unet__block_deinit(&m->mid, m->mid.n_layers - 1);
  nq_exec_free(m->ex);
  m->ex = NULL;
  nq_st_close(m->st);
  m->st = NULL;
}

/* ---- the weights file ----------------------------------------------------------------------------------- */

static int nq_unet__st_lookup(void *ctx, const char *name, nq_unet__entry_t *e) {
  const nq_st_tensor_t *t = nq_st_find(ctx, name);
  if (!t) return 0;
  e->name = t->name, e->dtype = t->dtype, e->ndim = t->ndim, e->data = t->data;
  for (int i = 0; i < t->ndim && i < NQ_ST_MAX_DIMS; i++) e->shape[i] = t->shape[i];
  return 1;
}

int nq_unet__load_weights(nq_unet__model_t *m, const char *path, const char *backends, int wdtype, int conv_wdtype,
                          nq_err_t *err) {
  int rc = nq_st_open(path, &m->st, err);
  if (rc < 0) return rc;
  nq_unet__src_t s = {.lookup = nq_unet__st_lookup, .ctx = m->st, .arch = &m->a, .wdtype = wdtype,
                      .conv_wdtype = conv_wdtype};
  bool ldm = !nq_st_find(m->st, "conv_in.weight") && nq_st_find(m->st, "model.diffusion_model.input_blocks.0.0.weight");
  if (ldm) {
    if (m->a.is3d) return nq_err_set(err, NQ_EUNSUPPORTED, NQ_ERR_FATAL, "%s: LDM names for a 3D UNet", path);
    s.map = nq_unet__ldm_name;
  }
  rc = nq_unet__build(m, &s, err);
  if (rc < 0) return nq_err_prefix(err, "%s", path);
  if (!(m->ex = nq_exec_new(backends ? backends : "auto", NULL, err))) return err ? err->code : NQ_EINTERNAL;
  return 0;
}

/* The NCHW layer kit of the TAESD and AutoencoderKL ports (see vae_int.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compute/models/vae_int.h"

static void nq_vae__shape_str(char *b, size_t cap, int nd, const int64_t *s) {
  size_t o = 0;
  o += (size_t)snprintf(b + o, cap - o, "[");
  for (int i = 0; i < nd && o < cap; i++) o += (size_t)snprintf(b + o, cap - o, i ? ",%lld" : "%lld", (long long)s[i]);
  if (o < cap) snprintf(b + o, cap - o, "]");
}

int nq_vae__tensor_load(const nq_st_file_t *f, const char *name, int ndim, const int64_t *shape, nq_dtype_t dt,
                        nq_tensor_t *out, nq_err_t *err) {
  memset(out, 0, sizeof(*out));
  const nq_st_tensor_t *t = nq_st_find(f, name);
  if (!t) return nq_err_set(err, NQ_ENOENT, NQ_ERR_FATAL, "tensor '%s' is missing", name);
  if (t->dtype != NQ_DT_F32 && t->dtype != NQ_DT_BF16 && t->dtype != NQ_DT_F16 && t->dtype != NQ_DT_F64)
    return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "tensor '%s': dtype %s is not a float type", name,
                      nq_dtype_name(t->dtype));
  int ok = t->ndim == ndim;
  for (int i = 0; ok && i < ndim; i++) ok = t->shape[i] == shape[i];
  if (!ok) {
    char a[128], b[128];
    nq_vae__shape_str(a, sizeof a, t->ndim, t->shape);
    nq_vae__shape_str(b, sizeof b, ndim, shape);
    return nq_err_set(err, NQ_ESHAPE, NQ_ERR_FATAL, "tensor '%s': shape %s, expected %s", name, a, b);
  }
  int rc = nq_tensor_init(out, dt, ndim, shape, err);
  if (rc < 0) return nq_err_prefix(err, "tensor '%s'", name);
  size_t n = (size_t)nq_tensor_numel(out);
  if (t->dtype == dt) {
    memcpy(out->data, t->data, n * nq_dtype_size(dt));
    return 0;
  }
  float *tmp = dt == NQ_DT_F32 ? out->data : malloc(sizeof(float) * n);
  if (!tmp) {
    nq_tensor_deinit(out);
    return nq_err_set(err, NQ_ENOMEM, 0, "tensor '%s': conversion buffer", name);
  }
  nq_dtype_to_f32(t->dtype, t->data, tmp, n);
  if (dt != NQ_DT_F32) {
    uint16_t *h = out->data;
    for (size_t i = 0; i < n; i++) h[i] = dt == NQ_DT_BF16 ? nq_f32_to_bf16(tmp[i]) : nq_f32_to_f16(tmp[i]);
    free(tmp);
  }
  return 0;
}

int nq_vae__conv_load(const nq_st_file_t *f, const char *pfx, int64_t co, int64_t ci, int k, bool bias, int stride,
                      int pad, nq_dtype_t wdt, nq_vae__conv_t *c, nq_err_t *err) {
  char name[256];
  memset(c, 0, sizeof(*c));
  c->stride = stride, c->pad = pad;
  snprintf(name, sizeof name, "%s.weight", pfx);
  int rc = nq_vae__tensor_load(f, name, 4, NQ_SHAPE(co, ci, k, k), wdt, &c->w, err);
  if (rc < 0 || !bias) return rc;
  snprintf(name, sizeof name, "%s.bias", pfx);
  return nq_vae__tensor_load(f, name, 1, NQ_SHAPE(co), NQ_DT_F32, &c->b, err);
}

int nq_vae__norm_load(const nq_st_file_t *f, const char *pfx, int64_t c, int groups, float eps, nq_vae__norm_t *n,
                      nq_err_t *err) {
  char name[256];
  memset(n, 0, sizeof(*n));
  n->groups = groups, n->eps = eps;
  snprintf(name, sizeof name, "%s.weight", pfx);
  int rc = nq_vae__tensor_load(f, name, 1, NQ_SHAPE(c), NQ_DT_F32, &n->g, err);
  if (rc < 0) return rc;
  snprintf(name, sizeof name, "%s.bias", pfx);
  return nq_vae__tensor_load(f, name, 1, NQ_SHAPE(c), NQ_DT_F32, &n->b, err);
}

int nq_vae__linear_load(const nq_st_file_t *f, const char *pfx, int64_t n, int64_t k, bool bias, nq_dtype_t wdt,
                        nq_linear_t *lin, nq_err_t *err) {
  char name[256];
  nq_tensor_t w = {0}, b = {0};
  memset(lin, 0, sizeof(*lin));
  snprintf(name, sizeof name, "%s.weight", pfx);
  const nq_st_tensor_t *t = nq_st_find(f, name);
  int rc = nq_vae__tensor_load(f, name, (t && t->ndim == 4) ? 4 : 2, NQ_SHAPE(n, k, 1, 1), wdt, &w, err);
  if (rc < 0) return rc;
  w.ndim = 2, w.nb[0] = k, w.nb[1] = 1; /* [n,k,1,1] -> [n,k]: same bytes */
  if (bias) {
    snprintf(name, sizeof name, "%s.bias", pfx);
    if ((rc = nq_vae__tensor_load(f, name, 1, NQ_SHAPE(n), NQ_DT_F32, &b, err)) < 0) {
      nq_tensor_deinit(&w);
      return rc;
    }
  }
  nq_linear_init(lin, &w, bias ? &b : NULL);
  return 0;
}

void nq_vae__conv_deinit(nq_vae__conv_t *c) {
  nq_tensor_deinit(&c->w);
  nq_tensor_deinit(&c->b);
}

void nq_vae__norm_deinit(nq_vae__norm_t *n) {
  nq_tensor_deinit(&n->g);
  nq_tensor_deinit(&n->b);
}

int nq_vae__alloc4(nq_tensor_t *t, int64_t n, int64_t c, int64_t h, int64_t w, nq_err_t *err) {
  return nq_tensor_init(t, NQ_DT_F32, 4, NQ_SHAPE(n, c, h, w), err);
}

int nq_vae__conv_fwd(nq_exec_t *ex, const nq_vae__conv_t *c, const nq_tensor_t *x, nq_tensor_t *y, nq_err_t *err) {
  const int64_t k = c->w.ne[2], s = c->stride, p = c->pad;
  const int64_t Ho = (x->ne[2] + 2 * p - k) / s + 1, Wo = (x->ne[3] + 2 * p - k) / s + 1;
  int rc = nq_vae__alloc4(y, x->ne[0], c->w.ne[0], Ho, Wo, err);
  if (rc < 0) return rc;
  rc = nq_op_conv2d(ex, y, x, &c->w, c->b.data ? &c->b : NULL, (int)s, (int)s, (int)p, (int)p, 1, 1, 1, err);
  if (rc < 0) nq_tensor_deinit(y);
  return rc;
}

int nq_vae__norm_fwd(nq_exec_t *ex, const nq_vae__norm_t *n, nq_tensor_t *x, bool silu, nq_err_t *err) {
  int rc = nq_op_groupnorm(ex, x, x, &n->g, &n->b, n->groups, n->eps, err);
  if (rc < 0 || !silu) return rc;
  nq_tensor_t flat;
  int64_t rows = x->ne[0] * x->ne[1]; /* one row per (n, c) plane: the pool splits over rows */
  if ((rc = nq_tensor_view_reshape(x, 2, NQ_SHAPE(rows, nq_tensor_numel(x) / rows), &flat, err)) < 0) return rc;
  return nq_op_unary(ex, NQ_OP_SILU, &flat, &flat, err);
}

void nq_vae__relu(nq_tensor_t *x) {
  float *p = x->data;
  for (int64_t i = 0, n = nq_tensor_numel(x); i < n; i++) p[i] = p[i] > 0.0f ? p[i] : 0.0f;
}

void nq_vae__add(nq_tensor_t *x, const nq_tensor_t *y) {
  float *p = x->data;
  const float *q = y->data;
  for (int64_t i = 0, n = nq_tensor_numel(x); i < n; i++) p[i] += q[i];
}

void nq_vae__move(nq_tensor_t *dst, nq_tensor_t *src) {
  nq_tensor_deinit(dst);
  *dst = *src;
  memset(src, 0, sizeof(*src));
}

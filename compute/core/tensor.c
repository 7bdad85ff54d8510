#include "compute/core/tensor.h"

#include <stdlib.h>
#include <string.h>

#define NQ_TENSOR_MAX_BYTES ((int64_t)1 << 40)

static void nq_tensor__set_shape(nq_tensor_t *t, nq_dtype_t dt, int ndim, const int64_t *shape) {
  memset(t, 0, sizeof(*t));
  t->dtype = dt;
  t->ndim = ndim;
  int64_t s = 1;
  for (int i = ndim - 1; i >= 0; i--) {
    t->ne[i] = shape[i];
    t->nb[i] = s;
    s *= shape[i] > 0 ? shape[i] : 1;
  }
}

int nq_tensor_init(nq_tensor_t *t, nq_dtype_t dt, int ndim, const int64_t *shape, nq_err_t *err) {
  if (ndim < 0 || ndim > NQ_MAX_DIMS) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "tensor: ndim %d out of range", ndim);
  int64_t n = 1;
  for (int i = 0; i < ndim; i++) {
    if (shape[i] < 0 || (shape[i] > 0 && n > NQ_TENSOR_MAX_BYTES / shape[i]))
      return nq_err_set(err, NQ_ELIMIT, NQ_ERR_FATAL, "tensor: shape dim %d = %lld too large", i, (long long)shape[i]);
    n *= shape[i];
  }
  size_t es = nq_dtype_size(dt);
  if (n > NQ_TENSOR_MAX_BYTES / (int64_t)es)
    return nq_err_set(err, NQ_ELIMIT, NQ_ERR_FATAL, "tensor: %lld elements too large", (long long)n);
  nq_tensor__set_shape(t, dt, ndim, shape);
  size_t bytes = (size_t)n * es;
  size_t alloc = (bytes + 63) & ~(size_t)63;
  if (alloc == 0) alloc = 64;
  void *p = aligned_alloc(64, alloc);
  if (!p) return nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "tensor: cannot allocate %zu bytes", alloc);
  memset(p, 0, alloc);
  t->data = p;
  t->owns_data = true;
  return 0;
}

void nq_tensor_init_borrowed(nq_tensor_t *t, nq_dtype_t dt, int ndim, const int64_t *shape, void *data) {
  NQ_ASSERT(ndim >= 0 && ndim <= NQ_MAX_DIMS);
  nq_tensor__set_shape(t, dt, ndim, shape);
  t->data = data;
  t->owns_data = false;
}

void nq_tensor_deinit(nq_tensor_t *t) {
  if (!t) return;
  if (t->owns_data) free(t->data);
  t->data = NULL;
  t->owns_data = false;
}

nq_tensor_t *nq_tensor_new(nq_dtype_t dt, int ndim, const int64_t *shape, nq_err_t *err) {
  nq_tensor_t *t = malloc(sizeof(*t));
  if (!t) {
    nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "tensor: out of memory");
    return NULL;
  }
  if (nq_tensor_init(t, dt, ndim, shape, err) < 0) {
    free(t);
    return NULL;
  }
  return t;
}

void nq_tensor_free(nq_tensor_t *t) {
  if (!t) return;
  nq_tensor_deinit(t);
  free(t);
}

int64_t nq_tensor_numel(const nq_tensor_t *t) {
  int64_t n = 1;
  for (int i = 0; i < t->ndim; i++) n *= t->ne[i];
  return n;
}

size_t nq_tensor_nbytes(const nq_tensor_t *t) { return (size_t)nq_tensor_numel(t) * nq_dtype_size(t->dtype); }

bool nq_tensor_is_contiguous(const nq_tensor_t *t) {
  int64_t s = 1;
  for (int i = t->ndim - 1; i >= 0; i--) {
    if (t->ne[i] != 1 && t->nb[i] != s) return false;
    s *= t->ne[i];
  }
  return true;
}

bool nq_tensor_rows(const nq_tensor_t *t, int64_t *n_rows, int64_t *row_len, int64_t *row_stride) {
  if (t->ndim == 0) {
    *n_rows = 1, *row_len = 1, *row_stride = 1;
    return true;
  }
  int last = t->ndim - 1;
  if (t->ne[last] > 1 && t->nb[last] != 1) return false;
  int64_t rows = 1, rs = t->ne[last];
  bool first = true;
  for (int i = last - 1; i >= 0; i--) {
    if (t->ne[i] == 1) continue;
    if (first) {
      rs = t->nb[i];
      first = false;
    } else if (t->nb[i] != t->nb[i + 1] * t->ne[i + 1]) {
      /* dims must collapse: stride[i] == stride[i+1]*ne[i+1] (for the next non-1 dim) */
      int j = i + 1;
      while (j < last && t->ne[j] == 1) j++;
      if (t->nb[i] != t->nb[j] * t->ne[j]) return false;
    }
    rows *= t->ne[i];
  }
  *n_rows = rows;
  *row_len = t->ne[last];
  *row_stride = rs;
  return true;
}

bool nq_tensor_same_shape(const nq_tensor_t *a, const nq_tensor_t *b) {
  if (a->ndim != b->ndim) return false;
  for (int i = 0; i < a->ndim; i++)
    if (a->ne[i] != b->ne[i]) return false;
  return true;
}

int nq_tensor_view_slice(const nq_tensor_t *src, int dim, int64_t start, int64_t len, nq_tensor_t *out, nq_err_t *err) {
  if (dim < 0 || dim >= src->ndim || start < 0 || len < 0 || start + len > src->ne[dim])
    return nq_err_set(err, NQ_ESHAPE, 0, "tensor slice: dim %d [%lld, +%lld) out of range", dim, (long long)start,
                      (long long)len);
  *out = *src;
  out->owns_data = false;
  out->ne[dim] = len;
  out->data = (char *)src->data + (size_t)(start * src->nb[dim]) * nq_dtype_size(src->dtype);
  return 0;
}

int nq_tensor_view_reshape(const nq_tensor_t *src, int ndim, const int64_t *shape, nq_tensor_t *out, nq_err_t *err) {
  if (!nq_tensor_is_contiguous(src)) return nq_err_set(err, NQ_ESHAPE, 0, "tensor reshape: source not contiguous");
  if (ndim < 0 || ndim > NQ_MAX_DIMS) return nq_err_set(err, NQ_ESHAPE, 0, "tensor reshape: ndim %d", ndim);
  int64_t n = 1;
  for (int i = 0; i < ndim; i++) n *= shape[i];
  if (n != nq_tensor_numel(src))
    return nq_err_set(err, NQ_ESHAPE, 0, "tensor reshape: %lld elements into %lld", (long long)nq_tensor_numel(src),
                      (long long)n);
  nq_tensor_init_borrowed(out, src->dtype, ndim, shape, src->data);
  out->device = src->device;
  return 0;
}

nq_tensor_t nq_tensor_row(const nq_tensor_t *t, int64_t r) {
  int64_t nr, len, rs;
  bool ok = nq_tensor_rows(t, &nr, &len, &rs);
  NQ_ASSERT(ok && r >= 0 && r < nr);
  nq_tensor_t v;
  nq_tensor_init_borrowed(&v, t->dtype, 1, &len, (char *)t->data + (size_t)(r * rs) * nq_dtype_size(t->dtype));
  return v;
}

void *nq_tensor_ptr(const nq_tensor_t *t, int64_t i) {
  int64_t off = 0;
  for (int d = t->ndim - 1; d >= 0; d--) {
    int64_t ne = t->ne[d] > 0 ? t->ne[d] : 1;
    off += (i % ne) * t->nb[d];
    i /= ne;
  }
  return (char *)t->data + (size_t)off * nq_dtype_size(t->dtype);
}

double nq_tensor_get(const nq_tensor_t *t, int64_t i) {
  const void *p = nq_tensor_ptr(t, i);
  switch (t->dtype) {
    case NQ_DT_F32: return *(const float *)p;
    case NQ_DT_F16: return nq_f16_to_f32(*(const uint16_t *)p);
    case NQ_DT_BF16: return nq_bf16_to_f32(*(const uint16_t *)p);
    case NQ_DT_F64: return *(const double *)p;
    case NQ_DT_I64: return (double)*(const int64_t *)p;
    case NQ_DT_I32: return *(const int32_t *)p;
    case NQ_DT_I16: return *(const int16_t *)p;
    case NQ_DT_I8: return *(const int8_t *)p;
    case NQ_DT_U8: return *(const uint8_t *)p;
    case NQ_DT_BOOL: return *(const uint8_t *)p ? 1 : 0;
    default: break;
  }
  return 0;
}

void nq_tensor_set(nq_tensor_t *t, int64_t i, double v) {
  void *p = nq_tensor_ptr(t, i);
  switch (t->dtype) {
    case NQ_DT_F32: *(float *)p = (float)v; break;
    case NQ_DT_F16: *(uint16_t *)p = nq_f32_to_f16((float)v); break;
    case NQ_DT_BF16: *(uint16_t *)p = nq_f32_to_bf16((float)v); break;
    case NQ_DT_F64: *(double *)p = v; break;
    case NQ_DT_I64: *(int64_t *)p = (int64_t)v; break;
    case NQ_DT_I32: *(int32_t *)p = (int32_t)v; break;
    case NQ_DT_I16: *(int16_t *)p = (int16_t)v; break;
    case NQ_DT_I8: *(int8_t *)p = (int8_t)v; break;
    case NQ_DT_U8: *(uint8_t *)p = (uint8_t)v; break;
    case NQ_DT_BOOL: *(uint8_t *)p = v != 0; break;
    default: break;
  }
}

int nq_tensor_copy(nq_tensor_t *dst, const nq_tensor_t *src, nq_err_t *err) {
  int64_t n = nq_tensor_numel(src);
  if (n != nq_tensor_numel(dst))
    return nq_err_set(err, NQ_ESHAPE, 0, "tensor copy: %lld elements into %lld", (long long)n,
                      (long long)nq_tensor_numel(dst));
  if (dst->dtype == src->dtype && nq_tensor_is_contiguous(dst) && nq_tensor_is_contiguous(src)) {
    memmove(dst->data, src->data, nq_tensor_nbytes(src));
    return 0;
  }
  if (dst->dtype == NQ_DT_F32 && src->dtype == NQ_DT_BF16 && nq_tensor_is_contiguous(dst) &&
      nq_tensor_is_contiguous(src)) {
    const uint16_t *s = src->data;
    float *d = dst->data;
    for (int64_t i = 0; i < n; i++) d[i] = nq_bf16_to_f32(s[i]);
    return 0;
  }
  for (int64_t i = 0; i < n; i++) nq_tensor_set(dst, i, nq_tensor_get(src, i));
  return 0;
}

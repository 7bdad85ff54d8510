/* NumPy .npy encoder/decoder (see npy.h). */
#include "compute/io/npy.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *nq_npy__descr(nq_dtype_t dt) {
  switch (dt) {
    case NQ_DT_F32: return "<f4";
    case NQ_DT_F16: return "<f2";
    case NQ_DT_F64: return "<f8";
    case NQ_DT_I32: return "<i4";
    case NQ_DT_I64: return "<i8";
    case NQ_DT_U8: return "|u1";
    default: return NULL;
  }
}

int nq_npy_encode(nq_dtype_t dt, const void *data, int ndim, const int64_t *shape, void **out, size_t *out_len,
                  nq_err_t *err) {
  *out = NULL;
  *out_len = 0;
  const char *descr = nq_npy__descr(dt);
  if (!descr) return nq_err_set(err, NQ_EUNSUPPORTED, 0, "npy: dtype %s not supported", nq_dtype_name(dt));
  if (ndim < 0 || ndim > NQ_NPY_MAX_DIMS) return nq_err_set(err, NQ_EINVAL, 0, "npy: %d dims", ndim);
  char hdr[512];
  int o = snprintf(hdr, sizeof hdr, "{'descr': '%s', 'fortran_order': False, 'shape': (", descr);
  uint64_t n = 1;
  for (int i = 0; i < ndim; i++) {
    if (shape[i] < 0 || (shape[i] && n > (UINT64_MAX >> 1) / (uint64_t)shape[i]))
      return nq_err_set(err, NQ_EINVAL, 0, "npy: bad dim %lld", (long long)shape[i]);
    n *= (uint64_t)shape[i];
    o += snprintf(hdr + o, sizeof hdr - (size_t)o, "%lld%s", (long long)shape[i], ndim == 1 ? "," : (i + 1 < ndim ? ", " : ""));
  }
  o += snprintf(hdr + o, sizeof hdr - (size_t)o, "), }");
  /* 10 bytes of preamble + header + padding + '\n' = multiple of 64 */
  size_t total_hdr = 10 + (size_t)o + 1;
  size_t pad = (64 - total_hdr % 64) % 64;
  size_t hlen = (size_t)o + pad + 1;
  size_t nbytes = (size_t)n * nq_dtype_size(dt);
  unsigned char *b = malloc(10 + hlen + nbytes);
  if (!b) return nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "npy: out of memory (%zu bytes)", nbytes);
  memcpy(b, "\x93NUMPY\x01\x00", 8);
  b[8] = (unsigned char)(hlen & 0xff);
  b[9] = (unsigned char)(hlen >> 8);
  memcpy(b + 10, hdr, (size_t)o);
  memset(b + 10 + o, ' ', pad);
  b[10 + hlen - 1] = '\n';
  if (nbytes) memcpy(b + 10 + hlen, data, nbytes);
  *out = b;
  *out_len = 10 + hlen + nbytes;
  return 0;
}

int nq_npy_save(const char *path, nq_dtype_t dt, const void *data, int ndim, const int64_t *shape, nq_err_t *err) {
  void *buf;
  size_t len;
  int rc = nq_npy_encode(dt, data, ndim, shape, &buf, &len, err);
  if (rc) return rc;
  char tmp[4200];
  snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
  FILE *f = fopen(tmp, "wb");
  if (!f) {
    free(buf);
    return nq_err_set(err, NQ_EIO, NQ_ERR_RETRIABLE, "%s: %s", tmp, strerror(errno));
  }
  size_t wr = fwrite(buf, 1, len, f);
  free(buf);
  int bad = wr != len || fflush(f) != 0 || fsync(fileno(f)) != 0;
  if (fclose(f) != 0) bad = 1;
  if (bad || rename(tmp, path) != 0) {
    int e = errno;
    unlink(tmp);
    return nq_err_set(err, NQ_EIO, NQ_ERR_RETRIABLE, "%s: write failed: %s", path, strerror(e));
  }
  return 0;
}

/* ---- decoder ---- */

static const char *nq_npy__skipws(const char *p, const char *e) {
  while (p < e && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
  return p;
}

/* Position just after "'key':" (or "\"key\":"), or NULL. */
static const char *nq_npy__key(const char *h, const char *e, const char *key) {
  size_t kl = strlen(key);
  for (const char *p = h; p + kl + 3 <= e; p++) {
    if ((*p == '\'' || *p == '"') && memcmp(p + 1, key, kl) == 0 && p[1 + kl] == *p) {
      const char *q = nq_npy__skipws(p + kl + 2, e);
      if (q < e && *q == ':') return nq_npy__skipws(q + 1, e);
    }
  }
  return NULL;
}

int nq_npy_parse(const void *buf, size_t len, const char *name, nq_npy_view_t *out, nq_err_t *err) {
  const unsigned char *b = buf;
  memset(out, 0, sizeof *out);
  if (!name) name = "npy";
  if (len < 10 || memcmp(b, "\x93NUMPY", 6) != 0)
    return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: not a .npy file (bad magic)", name);
  size_t hlen, off;
  if (b[6] == 1) {
    hlen = (size_t)b[8] | (size_t)b[9] << 8;
    off = 10;
  } else if (b[6] == 2 || b[6] == 3) {
    if (len < 12) return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: truncated .npy header", name);
    hlen = (size_t)b[8] | (size_t)b[9] << 8 | (size_t)b[10] << 16 | (size_t)b[11] << 24;
    off = 12;
  } else {
    return nq_err_set(err, NQ_EUNSUPPORTED, NQ_ERR_FATAL, "%s: .npy version %d.%d", name, b[6], b[7]);
  }
  if (hlen > len - off) return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: .npy header of %zu bytes exceeds the file", name, hlen);
  const char *h = (const char *)b + off, *e = h + hlen;
  const char *p = nq_npy__key(h, e, "descr");
  if (!p || p >= e || (*p != '\'' && *p != '"'))
    return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: .npy header has no 'descr'", name);
  char descr[16] = {0};
  const char *q = p + 1;
  size_t dl = 0;
  while (q < e && *q != *p && dl < sizeof descr - 1) descr[dl++] = *q++;
  static const struct { const char *s; nq_dtype_t dt; } dts[] = {
      {"<f4", NQ_DT_F32}, {"<f2", NQ_DT_F16}, {"<f8", NQ_DT_F64}, {"<i4", NQ_DT_I32},
      {"<i8", NQ_DT_I64}, {"|u1", NQ_DT_U8},  {"<u1", NQ_DT_U8}};
  int found = 0;
  for (size_t i = 0; i < sizeof dts / sizeof dts[0]; i++)
    if (strcmp(descr, dts[i].s) == 0) out->dtype = dts[i].dt, found = 1;
  if (!found) return nq_err_set(err, NQ_EUNSUPPORTED, NQ_ERR_FATAL, "%s: .npy dtype '%s' not supported", name, descr);
  p = nq_npy__key(h, e, "fortran_order");
  if (!p || e - p < 4) return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: .npy header has no 'fortran_order'", name);
  if (memcmp(p, "True", 4) == 0) return nq_err_set(err, NQ_EUNSUPPORTED, NQ_ERR_FATAL, "%s: Fortran-order .npy", name);
  if (e - p < 5 || memcmp(p, "False", 5) != 0)
    return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: .npy 'fortran_order' is not a boolean", name);
  p = nq_npy__key(h, e, "shape");
  if (!p || p >= e || *p != '(') return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: .npy header has no 'shape'", name);
  p++;
  uint64_t n = 1;
  for (;;) {
    p = nq_npy__skipws(p, e);
    if (p >= e) return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: .npy shape not closed", name);
    if (*p == ')') break;
    if (*p < '0' || *p > '9') return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: .npy shape is malformed", name);
    uint64_t d = 0;
    while (p < e && *p >= '0' && *p <= '9') {
      if (d > (1ull << 40)) return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: .npy dimension too large", name);
      d = d * 10 + (uint64_t)(*p++ - '0');
    }
    if (out->ndim == NQ_NPY_MAX_DIMS) return nq_err_set(err, NQ_EUNSUPPORTED, NQ_ERR_FATAL, "%s: .npy has > %d dims", name, NQ_NPY_MAX_DIMS);
    out->shape[out->ndim++] = (int64_t)d;
    if (d && n > (1ull << 48) / d) return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: .npy shape overflows", name);
    n *= d;
    p = nq_npy__skipws(p, e);
    if (p < e && *p == ',') p++;
  }
  size_t need = (size_t)n * nq_dtype_size(out->dtype);
  if (len - off - hlen != need)
    return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: .npy data is %zu bytes, shape needs %zu", name, len - off - hlen,
                      need);
  out->data = (const char *)b + off + hlen;
  out->nbytes = need;
  return 0;
}

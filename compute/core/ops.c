#include "compute/core/ops.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "compute/core/core_int.h"

const char *nq_op_name(nq_op_t op) {
  static const char *names[NQ_OP_COUNT] = {"linear", "rmsnorm",   "layernorm",  "rope", "softmax", "silu",
                                           "gelu",   "gelu_tanh", "quick_gelu", "add",  "mul",     "swiglu",
                                           "embed",  "attention", "conv2d", "conv_transpose1d",
                                           "groupnorm", "upsample_nearest"};
  return (op >= 0 && op < NQ_OP_COUNT) ? names[op] : "?";
}

/* ---- shape checks ---- */

static int nq_ops__rows(const nq_tensor_t *t, const char *what, nq_op_t op, nq_core__rows_t *r, nq_err_t *err) {
  if (!t || !t->data) return nq_err_set(err, NQ_EINVAL, 0, "%s: %s missing", nq_op_name(op), what);
  if (t->dtype != NQ_DT_F32)
    return nq_err_set(err, NQ_EUNSUPPORTED, 0, "%s: %s dtype %s (want F32)", nq_op_name(op), what,
                      nq_dtype_name(t->dtype));
  if (!nq_tensor_rows(t, &r->n, &r->len, &r->stride))
    return nq_err_set(err, NQ_ESHAPE, 0, "%s: %s is not row-contiguous", nq_op_name(op), what);
  return 0;
}

static int nq_ops__vec(const nq_tensor_t *t, int64_t n, const char *what, nq_op_t op, nq_err_t *err) {
  if (!t) return 0;
  if (t->dtype != NQ_DT_F32 || !nq_tensor_is_contiguous(t) || nq_tensor_numel(t) != n)
    return nq_err_set(err, NQ_ESHAPE, 0, "%s: %s must be contiguous F32 with %lld elements", nq_op_name(op), what,
                      (long long)n);
  return 0;
}

/* Contiguous F32 activation of ndim dims (ndim < 0: at least -ndim dims). */
static int nq_ops__act(const nq_tensor_t *t, int ndim, const char *what, nq_op_t op, nq_err_t *err) {
  if (!t || !t->data) return nq_err_set(err, NQ_EINVAL, 0, "%s: %s missing", nq_op_name(op), what);
  if (t->dtype != NQ_DT_F32 || !nq_tensor_is_contiguous(t) || (ndim >= 0 ? t->ndim != ndim : t->ndim < -ndim))
    return nq_err_set(err, NQ_ESHAPE, 0, "%s: %s must be contiguous F32 with %s%d dims (got %s, %d dims)",
                      nq_op_name(op), what, ndim < 0 ? ">= " : "", ndim < 0 ? -ndim : ndim, nq_dtype_name(t->dtype),
                      t->ndim);
  for (int d = 0; d < t->ndim; d++)
    if (t->ne[d] <= 0) return nq_err_set(err, NQ_ESHAPE, 0, "%s: %s has an empty dim %d", nq_op_name(op), what, d);
  return 0;
}

static int nq_ops__vision_check(const nq_op_desc_t *op, nq_err_t *err) {
  const char *nm = nq_op_name(op->op);
  const nq_tensor_t *x = op->src[0], *w = op->src[1], *y = op->dst;
  int rc;
  switch (op->op) {
    case NQ_OP_CONV2D:
    case NQ_OP_CONV_TRANSPOSE1D: {
      int nd = op->op == NQ_OP_CONV2D ? 4 : 3;
      if ((rc = nq_ops__act(x, nd, "x", op->op, err)) < 0 || (rc = nq_ops__act(y, nd, "y", op->op, err)) < 0)
        return rc;
      if (!w || !w->data || w->ndim != nd || !nq_tensor_is_contiguous(w) ||
          (w->dtype != NQ_DT_F32 && w->dtype != NQ_DT_BF16 && w->dtype != NQ_DT_F16))
        return nq_err_set(err, NQ_ESHAPE, 0, "%s: weight must be contiguous %d-d F32/BF16/F16", nm, nd);
      if (x->data == y->data) return nq_err_set(err, NQ_EINVAL, 0, "%s: y must not alias x", nm);
      const int64_t *p = op->i;
      int64_t g = op->op == NQ_OP_CONV2D ? p[6] : p[4];
      bool bad = g < 1 || x->ne[1] % g;
      for (int k = 0; k < (nd == 4 ? 6 : 4); k++) bad |= p[k] < 0 || p[k] > (1 << 20);
      if (op->op == NQ_OP_CONV2D) bad |= p[0] < 1 || p[1] < 1 || p[4] < 1 || p[5] < 1;
      else bad |= p[0] < 1 || p[3] < 1;
      if (bad) return nq_err_set(err, NQ_EINVAL, 0, "%s: bad stride/pad/dilation/groups (groups %lld, Cin %lld)", nm,
                                 (long long)g, (long long)x->ne[1]);
      int64_t N = x->ne[0], Ci = x->ne[1], Co;
      if (op->op == NQ_OP_CONV2D) {
        Co = w->ne[0];
        int64_t kh = w->ne[2], kw = w->ne[3];
        int64_t Ho = (x->ne[2] + 2 * p[2] - p[4] * (kh - 1) - 1), Wo = (x->ne[3] + 2 * p[3] - p[5] * (kw - 1) - 1);
        Ho = Ho < 0 ? 0 : Ho / p[0] + 1, Wo = Wo < 0 ? 0 : Wo / p[1] + 1;
        if (w->ne[1] * g != Ci || Co % g || y->ne[0] != N || y->ne[1] != Co || y->ne[2] != Ho || y->ne[3] != Wo)
          return nq_err_set(err, NQ_ESHAPE, 0,
                            "conv2d: x [%lld,%lld,%lld,%lld] * w [%lld,%lld,%lld,%lld] (groups %lld) -> y "
                            "[%lld,%lld,%lld,%lld], want [%lld,%lld,%lld,%lld]",
                            (long long)N, (long long)Ci, (long long)x->ne[2], (long long)x->ne[3], (long long)Co,
                            (long long)w->ne[1], (long long)kh, (long long)kw, (long long)g, (long long)y->ne[0],
                            (long long)y->ne[1], (long long)y->ne[2], (long long)y->ne[3], (long long)N, (long long)Co,
                            (long long)Ho, (long long)Wo);
      } else {
        Co = w->ne[1] * g;
        int64_t k = w->ne[2];
        int64_t Lo = (x->ne[2] - 1) * p[0] - 2 * p[1] + p[3] * (k - 1) + p[2] + 1;
        if (w->ne[0] != Ci || (p[2] >= p[0] && p[2] >= p[3]) || y->ne[0] != N || y->ne[1] != Co || y->ne[2] != Lo ||
            Lo < 1)
          return nq_err_set(err, NQ_ESHAPE, 0,
                            "conv_transpose1d: x [%lld,%lld,%lld] * w [%lld,%lld,%lld] (groups %lld, output_padding "
                            "%lld) -> y [%lld,%lld,%lld], want [%lld,%lld,%lld]",
                            (long long)N, (long long)Ci, (long long)x->ne[2], (long long)w->ne[0], (long long)w->ne[1],
                            (long long)k, (long long)g, (long long)p[2], (long long)y->ne[0], (long long)y->ne[1],
                            (long long)y->ne[2], (long long)N, (long long)Co, (long long)Lo);
      }
      return nq_ops__vec(op->src[2], Co, "bias", op->op, err);
    }
    case NQ_OP_GROUPNORM: {
      if ((rc = nq_ops__act(x, -2, "x", op->op, err)) < 0 || (rc = nq_ops__act(y, -2, "y", op->op, err)) < 0)
        return rc;
      if (!nq_tensor_same_shape(x, y)) return nq_err_set(err, NQ_ESHAPE, 0, "groupnorm: y shape != x shape");
      if (op->i[0] < 1 || x->ne[1] % op->i[0])
        return nq_err_set(err, NQ_ESHAPE, 0, "groupnorm: %lld groups do not divide %lld channels", (long long)op->i[0],
                          (long long)x->ne[1]);
      if ((rc = nq_ops__vec(op->src[1], x->ne[1], "gamma", op->op, err)) < 0) return rc;
      return nq_ops__vec(op->src[2], x->ne[1], "beta", op->op, err);
    }
    case NQ_OP_UPSAMPLE_NEAREST: {
      if ((rc = nq_ops__act(x, 4, "x", op->op, err)) < 0 || (rc = nq_ops__act(y, 4, "y", op->op, err)) < 0)
        return rc;
      int64_t f = op->i[0];
      if (f < 1 || f > 64 || y->ne[0] != x->ne[0] || y->ne[1] != x->ne[1] || y->ne[2] != x->ne[2] * f ||
          y->ne[3] != x->ne[3] * f)
        return nq_err_set(err, NQ_ESHAPE, 0,
                          "upsample_nearest: x [%lld,%lld,%lld,%lld] x%lld -> y [%lld,%lld,%lld,%lld]",
                          (long long)x->ne[0], (long long)x->ne[1], (long long)x->ne[2], (long long)x->ne[3],
                          (long long)f, (long long)y->ne[0], (long long)y->ne[1], (long long)y->ne[2],
                          (long long)y->ne[3]);
      if (x->data == y->data) return nq_err_set(err, NQ_EINVAL, 0, "upsample_nearest: y must not alias x");
      return 0;
    }
    default: return nq_err_set(err, NQ_EINVAL, 0, "%s: not a vision op", nm);
  }
}

int nq_op_check(const nq_op_desc_t *op, nq_err_t *err) {
  nq_core__rows_t x, y, b;
  int rc;
  const char *nm = nq_op_name(op->op);
  if (op->op < 0 || op->op >= NQ_OP_COUNT) return nq_err_set(err, NQ_EINVAL, 0, "op %d unknown", (int)op->op);
  if (op->op >= NQ_OP_CONV2D) return nq_ops__vision_check(op, err);
  if (op->op == NQ_OP_EMBED) {
    const nq_tensor_t *tab = op->src[0], *ids = op->src[1];
    if (!tab || tab->ndim != 2 || !nq_tensor_is_contiguous(tab) ||
        (tab->dtype != NQ_DT_F32 && tab->dtype != NQ_DT_BF16 && tab->dtype != NQ_DT_F16))
      return nq_err_set(err, NQ_ESHAPE, 0, "embed: table must be contiguous [V,D] F32/BF16/F16");
    if (!ids || ids->dtype != NQ_DT_I32 || !nq_tensor_is_contiguous(ids))
      return nq_err_set(err, NQ_ESHAPE, 0, "embed: ids must be contiguous I32");
    if ((rc = nq_ops__rows(op->dst, "dst", op->op, &y, err)) < 0) return rc;
    if (y.n != nq_tensor_numel(ids) || y.len != tab->ne[1])
      return nq_err_set(err, NQ_ESHAPE, 0, "embed: dst [%lld,%lld] for %lld ids of dim %lld", (long long)y.n,
                        (long long)y.len, (long long)nq_tensor_numel(ids), (long long)tab->ne[1]);
    const int32_t *id = ids->data;
    for (int64_t i = 0; i < y.n; i++)
      if (id[i] < 0 || id[i] >= tab->ne[0])
        return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "embed: id %d at %lld outside vocab %lld", id[i], (long long)i,
                          (long long)tab->ne[0]);
    return 0;
  }
  if ((rc = nq_ops__rows(op->src[0], "src0", op->op, &x, err)) < 0) return rc;
  if ((rc = nq_ops__rows(op->dst, "dst", op->op, &y, err)) < 0) return rc;
  switch (op->op) {
    case NQ_OP_LINEAR: {
      const nq_tensor_t *w = op->lin ? &op->lin->w : NULL;
      if (!w || w->ndim != 2 || !nq_tensor_is_contiguous(w) ||
          (w->dtype != NQ_DT_F32 && w->dtype != NQ_DT_BF16 && w->dtype != NQ_DT_F16))
        return nq_err_set(err, NQ_ESHAPE, 0, "linear: weight must be contiguous [N,K] F32/BF16/F16");
      if (x.len != w->ne[1] || y.n != x.n || y.len != w->ne[0])
        return nq_err_set(err, NQ_ESHAPE, 0, "linear: x [%lld,%lld] . W[%lld,%lld]^T -> y [%lld,%lld]", (long long)x.n,
                          (long long)x.len, (long long)w->ne[0], (long long)w->ne[1], (long long)y.n,
                          (long long)y.len);
      if (op->lin->b.data) return nq_ops__vec(&op->lin->b, w->ne[0], "bias", op->op, err);
      return 0;
    }
    case NQ_OP_ATTENTION: {
      nq_core__rows_t k, v;
      if ((rc = nq_ops__rows(op->src[1], "k_cache", op->op, &k, err)) < 0) return rc;
      if ((rc = nq_ops__rows(op->src[2], "v_cache", op->op, &v, err)) < 0) return rc;
      int64_t H = op->i[0], KV = op->i[1], pos0 = op->i[2];
      if (H <= 0 || KV <= 0 || H % KV || x.len % H)
        return nq_err_set(err, NQ_ESHAPE, 0, "attention: %lld heads / %lld kv heads / q dim %lld", (long long)H,
                          (long long)KV, (long long)x.len);
      int64_t hd = x.len / H;
      if (k.len != KV * hd || v.len != KV * hd || k.n != v.n || k.stride != v.stride)
        return nq_err_set(err, NQ_ESHAPE, 0, "attention: k/v rows of %lld (want %lld)", (long long)k.len,
                          (long long)(KV * hd));
      if (y.n != x.n || y.len != x.len) return nq_err_set(err, NQ_ESHAPE, 0, "attention: out shape != q shape");
      if (pos0 < 0 || (op->i[3] && pos0 + x.n > k.n) || k.n < 1)
        return nq_err_set(err, NQ_ESHAPE, 0, "attention: pos0 %lld + %lld queries > %lld cached keys", (long long)pos0,
                          (long long)x.n, (long long)k.n);
      return 0;
    }
    default: break;
  }
  if (x.n != y.n || x.len != y.len)
    return nq_err_set(err, NQ_ESHAPE, 0, "%s: dst [%lld,%lld] != src [%lld,%lld]", nm, (long long)y.n,
                      (long long)y.len, (long long)x.n, (long long)x.len);
  switch (op->op) {
    case NQ_OP_RMSNORM: return nq_ops__vec(op->src[1], x.len, "weight", op->op, err);
    case NQ_OP_LAYERNORM:
      if ((rc = nq_ops__vec(op->src[1], x.len, "gamma", op->op, err)) < 0) return rc;
      return nq_ops__vec(op->src[2], x.len, "beta", op->op, err);
    case NQ_OP_ROPE: {
      int64_t hd = op->i[0], rot = op->i[2];
      if (hd <= 0 || x.len % hd || rot <= 0 || rot > hd || rot % 2 || rot > 1024)
        return nq_err_set(err, NQ_ESHAPE, 0, "rope: head_dim %lld rot %lld row %lld", (long long)hd, (long long)rot,
                          (long long)x.len);
      const nq_tensor_t *p = op->src[1];
      if (!p || p->dtype != NQ_DT_I32 || !nq_tensor_is_contiguous(p) || nq_tensor_numel(p) != x.n)
        return nq_err_set(err, NQ_ESHAPE, 0, "rope: positions must be I32 [%lld]", (long long)x.n);
      return 0;
    }
    case NQ_OP_ADD:
    case NQ_OP_MUL:
    case NQ_OP_SWIGLU:
      if ((rc = nq_ops__rows(op->src[1], "src1", op->op, &b, err)) < 0) return rc;
      if (b.len != x.len || (b.n != x.n && b.n != 1))
        return nq_err_set(err, NQ_ESHAPE, 0, "%s: src1 [%lld,%lld] vs src0 [%lld,%lld]", nm, (long long)b.n,
                          (long long)b.len, (long long)x.n, (long long)x.len);
      return 0;
    default: return 0;
  }
}

/* ---- exec ---- */

static double nq_exec__now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

#define NQ_EXEC_AUTO_DEFAULT "openblas?,onednn?,cpu"
static char nq_exec__auto[128]; /* nq_exec_set_auto; empty: NQ_BACKENDS or the default */

int nq_exec_set_auto(const char *spec, nq_err_t *err) {
  if (spec && strlen(spec) >= sizeof nq_exec__auto)
    return nq_err_set(err, NQ_EINVAL, 0, "exec: backend list '%s' too long", spec);
  snprintf(nq_exec__auto, sizeof nq_exec__auto, "%s", spec ? spec : "");
  return 0;
}

const char *nq_exec_auto_spec(void) {
  if (nq_exec__auto[0]) return nq_exec__auto;
  const char *env = getenv("NQ_BACKENDS");
  return env && *env && strlen(env) < sizeof nq_exec__auto ? env : NQ_EXEC_AUTO_DEFAULT;
}

nq_exec_t *nq_exec_new(const char *spec, nq_pool_t *pool, nq_err_t *err) {
  nq_exec_t *ex = calloc(1, sizeof(*ex));
  if (!ex) {
    nq_err_set(err, NQ_ENOMEM, 0, "exec: out of memory");
    return NULL;
  }
  ex->pool = pool ? pool : nq_pool_default();
  const char *tr = getenv("NQ_EXEC_TRACE");
  ex->trace = tr && *tr && *tr != '0';
  const char *pr = getenv("NQ_EXEC_PROFILE");
  ex->profile = pr && *pr && *pr != '0';
  ex->prof_t0 = nq_exec__now();
  if (!spec || !*spec) spec = "auto";
  char buf[128];
  snprintf(buf, sizeof buf, "%s", strcmp(spec, "auto") == 0 ? nq_exec_auto_spec() : spec);
  bool have_ref = false;
  for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
    size_t l = strlen(tok);
    bool optional = l && tok[l - 1] == '?';
    if (optional) tok[l - 1] = 0;
    if (ex->n_be >= NQ_EXEC_MAX_BACKENDS - 1) break;
    nq_err_t e2 = {0};
    nq_backend_t *be = nq_backend_new_by_name(tok, ex->pool, &e2);
    if (!be) {
      if (optional) continue;
      if (err) *err = e2;
      nq_exec_free(ex);
      return NULL;
    }
    if (be->iface->kind == NQ_BK_REF) have_ref = true;
    ex->be[ex->n_be++] = be;
  }
  if (!have_ref) {
    nq_backend_t *be = nq_backend_ref_new(err);
    if (!be) {
      nq_exec_free(ex);
      return NULL;
    }
    ex->be[ex->n_be++] = be;
  }
  return ex;
}

void nq_exec_free(nq_exec_t *ex) {
  if (!ex) return;
  if (ex->profile) {
    double total = nq_exec__now() - ex->prof_t0, in_ops = 0;
    fprintf(stderr, "nq_exec profile (%.3f s since the executor was made):\n", total);
    for (int o = 0; o < NQ_OP_COUNT; o++)
      for (int b = 0; b < ex->n_be; b++)
        if (ex->prof_n[o][b]) {
          in_ops += ex->prof_s[o][b];
          fprintf(stderr, "  %-18s %-9s %9lld calls %10.3f s %5.1f%%\n", nq_op_name((nq_op_t)o), ex->be[b]->iface->name,
                  ex->prof_n[o][b], ex->prof_s[o][b], total > 0 ? 100.0 * ex->prof_s[o][b] / total : 0.0);
        }
    fprintf(stderr, "  %-18s %-9s %9s       %10.3f s %5.1f%%\n", "(outside ops)", "", "", total - in_ops,
            total > 0 ? 100.0 * (total - in_ops) / total : 0.0);
  }
  for (int i = 0; i < ex->n_be; i++) nq_backend_free(ex->be[i]);
  free(ex);
}

nq_backend_t *nq_exec_pick(nq_exec_t *ex, const nq_op_desc_t *op) {
  nq_backend_t *first = NULL;
  for (int i = 0; i < ex->n_be; i++) {
    nq_backend_t *be = ex->be[i];
    if (!be->iface->supports_op(be, op)) continue;
    if (!be->iface->prefers_op || be->iface->prefers_op(be, op)) return be;
    if (!first) first = be;
  }
  return first;
}

int nq_exec_run(nq_exec_t *ex, const nq_op_desc_t *op, nq_err_t *err) {
  int rc = nq_op_check(op, err);
  if (rc < 0) return rc;
  nq_backend_t *be = nq_exec_pick(ex, op);
  if (!be) return nq_err_set(err, NQ_EUNSUPPORTED, 0, "%s: no backend supports this op", nq_op_name(op->op));
  if (ex->trace) fprintf(stderr, "nq_exec: %s -> %s\n", nq_op_name(op->op), be->iface->name);
  if (!ex->profile) return be->iface->compute(be, op, err);
  double t0 = nq_exec__now();
  rc = be->iface->compute(be, op, err);
  int bi = 0;
  while (bi < ex->n_be && ex->be[bi] != be) bi++;
  if (bi < ex->n_be) ex->prof_s[op->op][bi] += nq_exec__now() - t0, ex->prof_n[op->op][bi]++;
  return rc;
}

/* ---- linear ---- */

void nq_linear_init(nq_linear_t *lin, const nq_tensor_t *w, const nq_tensor_t *bias) {
  memset(lin, 0, sizeof(*lin));
  lin->w = *w;
  if (bias) lin->b = *bias;
}

int nq_exec_linear_prepare(nq_exec_t *ex, nq_linear_t *lin, nq_err_t *err) {
  for (int i = 0; i < ex->n_be; i++) {
    nq_backend_t *be = ex->be[i];
    if (!be->iface->linear_pack || lin->packed[be->iface->kind]) continue;
    int rc = be->iface->linear_pack(be, lin, err);
    if (rc < 0) return rc;
  }
  return 0;
}

void nq_linear_deinit(nq_linear_t *lin) {
  if (!lin) return;
  for (int i = 0; i < NQ_BK_COUNT; i++)
    if (lin->packed[i] && lin->packed_free[i]) lin->packed_free[i](lin->packed[i]);
  nq_tensor_deinit(&lin->w);
  nq_tensor_deinit(&lin->b);
  memset(lin, 0, sizeof(*lin));
}

/* ---- op wrappers ---- */

int nq_op_linear(nq_exec_t *ex, nq_tensor_t *y, const nq_tensor_t *x, nq_linear_t *lin, nq_err_t *err) {
  nq_op_desc_t d = {.op = NQ_OP_LINEAR, .src = {x}, .dst = y, .lin = lin};
  return nq_exec_run(ex, &d, err);
}

int nq_op_rmsnorm(nq_exec_t *ex, nq_tensor_t *y, const nq_tensor_t *x, const nq_tensor_t *w, float eps, nq_err_t *err) {
  nq_op_desc_t d = {.op = NQ_OP_RMSNORM, .src = {x, w}, .dst = y, .f = {eps}};
  return nq_exec_run(ex, &d, err);
}

int nq_op_layernorm(nq_exec_t *ex, nq_tensor_t *y, const nq_tensor_t *x, const nq_tensor_t *gamma,
                    const nq_tensor_t *beta, float eps, nq_err_t *err) {
  nq_op_desc_t d = {.op = NQ_OP_LAYERNORM, .src = {x, gamma, beta}, .dst = y, .f = {eps}};
  return nq_exec_run(ex, &d, err);
}

int nq_op_rope(nq_exec_t *ex, nq_tensor_t *y, const nq_tensor_t *x, const nq_tensor_t *pos, int head_dim,
               int rot_dims, nq_rope_mode_t mode, float theta, nq_err_t *err) {
  nq_op_desc_t d = {.op = NQ_OP_ROPE, .src = {x, pos}, .dst = y, .f = {theta}, .i = {head_dim, mode, rot_dims}};
  return nq_exec_run(ex, &d, err);
}

int nq_op_softmax(nq_exec_t *ex, nq_tensor_t *y, const nq_tensor_t *x, float scale, nq_err_t *err) {
  nq_op_desc_t d = {.op = NQ_OP_SOFTMAX, .src = {x}, .dst = y, .f = {scale}};
  return nq_exec_run(ex, &d, err);
}

int nq_op_unary(nq_exec_t *ex, nq_op_t op, nq_tensor_t *y, const nq_tensor_t *x, nq_err_t *err) {
  if (op != NQ_OP_SILU && op != NQ_OP_GELU && op != NQ_OP_GELU_TANH && op != NQ_OP_QUICK_GELU)
    return nq_err_set(err, NQ_EINVAL, 0, "nq_op_unary: %s is not unary", nq_op_name(op));
  nq_op_desc_t d = {.op = op, .src = {x}, .dst = y};
  return nq_exec_run(ex, &d, err);
}

int nq_op_binary(nq_exec_t *ex, nq_op_t op, nq_tensor_t *y, const nq_tensor_t *a, const nq_tensor_t *b,
                 nq_err_t *err) {
  if (op != NQ_OP_ADD && op != NQ_OP_MUL && op != NQ_OP_SWIGLU)
    return nq_err_set(err, NQ_EINVAL, 0, "nq_op_binary: %s is not binary", nq_op_name(op));
  nq_op_desc_t d = {.op = op, .src = {a, b}, .dst = y};
  return nq_exec_run(ex, &d, err);
}

int nq_op_embed(nq_exec_t *ex, nq_tensor_t *y, const nq_tensor_t *table, const nq_tensor_t *ids, nq_err_t *err) {
  nq_op_desc_t d = {.op = NQ_OP_EMBED, .src = {table, ids}, .dst = y};
  return nq_exec_run(ex, &d, err);
}

int nq_op_attention(nq_exec_t *ex, nq_tensor_t *out, const nq_tensor_t *q, const nq_tensor_t *k_cache,
                    const nq_tensor_t *v_cache, int n_heads, int n_kv_heads, int64_t pos0, int causal, float scale,
                    nq_err_t *err) {
  nq_op_desc_t d = {.op = NQ_OP_ATTENTION,
                    .src = {q, k_cache, v_cache},
                    .dst = out,
                    .f = {scale},
                    .i = {n_heads, n_kv_heads, pos0, causal}};
  return nq_exec_run(ex, &d, err);
}

/* ---- vision / diffusion ---- */

int nq_op_conv2d(nq_exec_t *ex, nq_tensor_t *y, const nq_tensor_t *x, const nq_tensor_t *w, const nq_tensor_t *bias,
                 int stride_h, int stride_w, int pad_h, int pad_w, int dil_h, int dil_w, int groups, nq_err_t *err) {
  nq_op_desc_t d = {.op = NQ_OP_CONV2D,
                    .src = {x, w, bias},
                    .dst = y,
                    .i = {stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups}};
  return nq_exec_run(ex, &d, err);
}

/* [N,C,L] as [N,C,1,L] (contiguity is checked by the 2-d op; a non-contiguous input fails the reshape). */
static int nq_ops__as4d(const nq_tensor_t *t, const char *what, nq_tensor_t *out, nq_err_t *err) {
  if (!t || !t->data || t->ndim != 3)
    return nq_err_set(err, NQ_ESHAPE, 0, "conv1d: %s must be a 3-d tensor", what);
  int rc = nq_tensor_view_reshape(t, 4, NQ_SHAPE(t->ne[0], t->ne[1], 1, t->ne[2]), out, err);
  return rc < 0 ? nq_err_prefix(err, "conv1d: %s", what) : 0;
}

int nq_op_conv1d(nq_exec_t *ex, nq_tensor_t *y, const nq_tensor_t *x, const nq_tensor_t *w, const nq_tensor_t *bias,
                 int stride, int pad, int dil, int groups, nq_err_t *err) {
  nq_tensor_t x4, w4, y4;
  int rc;
  if ((rc = nq_ops__as4d(x, "x", &x4, err)) < 0 || (rc = nq_ops__as4d(w, "weight", &w4, err)) < 0 ||
      (rc = nq_ops__as4d(y, "y", &y4, err)) < 0)
    return rc;
  nq_op_desc_t d = {.op = NQ_OP_CONV2D, .src = {&x4, &w4, bias}, .dst = &y4, .i = {1, stride, 0, pad, 1, dil, groups}};
  return nq_exec_run(ex, &d, err);
}

int nq_op_conv_transpose1d(nq_exec_t *ex, nq_tensor_t *y, const nq_tensor_t *x, const nq_tensor_t *w,
                           const nq_tensor_t *bias, int stride, int pad, int output_padding, int dil, int groups,
                           nq_err_t *err) {
  nq_op_desc_t d = {.op = NQ_OP_CONV_TRANSPOSE1D,
                    .src = {x, w, bias},
                    .dst = y,
                    .i = {stride, pad, output_padding, dil, groups}};
  return nq_exec_run(ex, &d, err);
}

int nq_op_groupnorm(nq_exec_t *ex, nq_tensor_t *y, const nq_tensor_t *x, const nq_tensor_t *gamma,
                    const nq_tensor_t *beta, int groups, float eps, nq_err_t *err) {
  nq_op_desc_t d = {.op = NQ_OP_GROUPNORM, .src = {x, gamma, beta}, .dst = y, .f = {eps}, .i = {groups}};
  return nq_exec_run(ex, &d, err);
}

int nq_op_upsample_nearest(nq_exec_t *ex, nq_tensor_t *y, const nq_tensor_t *x, int factor, nq_err_t *err) {
  nq_op_desc_t d = {.op = NQ_OP_UPSAMPLE_NEAREST, .src = {x}, .dst = y, .i = {factor}};
  return nq_exec_run(ex, &d, err);
}

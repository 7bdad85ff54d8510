#include "compute/core/ops.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compute/core/core_int.h"

const char *nq_op_name(nq_op_t op) {
  static const char *names[NQ_OP_COUNT] = {"linear", "rmsnorm",   "layernorm",  "rope", "softmax", "silu",
                                           "gelu",   "gelu_tanh", "quick_gelu", "add",  "mul",     "swiglu",
                                           "embed",  "attention"};
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

int nq_op_check(const nq_op_desc_t *op, nq_err_t *err) {
  nq_core__rows_t x, y, b;
  int rc;
  const char *nm = nq_op_name(op->op);
  if (op->op < 0 || op->op >= NQ_OP_COUNT) return nq_err_set(err, NQ_EINVAL, 0, "op %d unknown", (int)op->op);
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

nq_exec_t *nq_exec_new(const char *spec, nq_pool_t *pool, nq_err_t *err) {
  nq_exec_t *ex = calloc(1, sizeof(*ex));
  if (!ex) {
    nq_err_set(err, NQ_ENOMEM, 0, "exec: out of memory");
    return NULL;
  }
  ex->pool = pool ? pool : nq_pool_default();
  const char *tr = getenv("NQ_EXEC_TRACE");
  ex->trace = tr && *tr && *tr != '0';
  if (!spec || !*spec) spec = "auto";
  char buf[128];
  snprintf(buf, sizeof buf, "%s", strcmp(spec, "auto") == 0 ? "openblas?,onednn?,cpu" : spec);
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
  return be->iface->compute(be, op, err);
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

/* NExT-GPT input projection (llama_proj). */
#include "compute/models/input_proj.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int ip__f32(const nq_ckpt_tensor_t *t, int nd, const int64_t *shape, nq_tensor_t *out, nq_err_t *err) {
  nq_tensor_t w;
  nq_tensor_init_borrowed(&w, t->dtype, nd, shape, (void *)t->data);
  if (t->dtype == NQ_DT_F32) {
    *out = w;
    return 0;
  }
  int rc = nq_tensor_init(out, NQ_DT_F32, nd, shape, err);
  if (!rc && (rc = nq_tensor_copy(out, &w, err))) nq_tensor_deinit(out);
  return rc;
}

int nq_input_proj_from_ckpt(nq_ckpt_t *ck, const char *prefix, nq_exec_t *ex, nq_input_proj_t **out, nq_err_t *err) {
  *out = NULL;
  if (!prefix) prefix = "llama_proj.";
  char wn[256], bn[256];
  snprintf(wn, sizeof wn, "%sweight", prefix);
  snprintf(bn, sizeof bn, "%sbias", prefix);
  const nq_ckpt_tensor_t *w = nq_ckpt_find(ck, wn), *b = nq_ckpt_find(ck, bn);
  if (!w) return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "tensor '%s' is missing", wn);
  if (!b) return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "tensor '%s' is missing", bn);
  bool fw = w->dtype == NQ_DT_F32 || w->dtype == NQ_DT_BF16 || w->dtype == NQ_DT_F16;
  bool fb = b->dtype == NQ_DT_F32 || b->dtype == NQ_DT_BF16 || b->dtype == NQ_DT_F16;
  if (!fw || w->ndim != 2 || w->shape[0] < 1 || w->shape[1] < 1)
    return nq_err_set(err, NQ_ESHAPE, NQ_ERR_FATAL, "tensor '%s' must be a float matrix [out, in]", wn);
  if (!fb || b->ndim != 1 || b->shape[0] != w->shape[0])
    return nq_err_set(err, NQ_ESHAPE, NQ_ERR_FATAL, "tensor '%s' must be a float vector [%lld]", bn,
                      (long long)w->shape[0]);
  nq_input_proj_t *p = calloc(1, sizeof *p);
  if (!p) return nq_err_set(err, NQ_ENOMEM, 0, "input proj: out of memory");
  p->out_dim = (int)w->shape[0], p->in_dim = (int)w->shape[1];
  nq_tensor_t wt, bt;
  nq_tensor_init_borrowed(&wt, w->dtype, 2, NQ_SHAPE(p->out_dim, p->in_dim), (void *)w->data);
  int rc = ip__f32(b, 1, NQ_SHAPE(p->out_dim), &bt, err);
  if (rc) {
    free(p);
    return rc;
  }
  nq_linear_init(&p->lin, &wt, &bt);
  p->ex = ex;
  if ((rc = nq_exec_linear_prepare(ex, &p->lin, err))) {
    nq_input_proj_free(p);
    return rc;
  }
  *out = p;
  return 0;
}

int nq_input_proj_load(const char *path, const char *prefix, const char *backends, nq_input_proj_t **out,
                       nq_err_t *err) {
  *out = NULL;
  nq_ckpt_t *ck = NULL;
  int rc = nq_ckpt_open(path, &ck, err);
  if (rc) return rc;
  nq_exec_t *ex = nq_exec_new(backends ? backends : "auto", NULL, err);
  if (!ex) {
    nq_ckpt_close(ck);
    return err ? err->code : NQ_EINTERNAL;
  }
  if ((rc = nq_input_proj_from_ckpt(ck, prefix, ex, out, err))) {
    nq_exec_free(ex);
    nq_ckpt_close(ck);
    return nq_err_prefix(err, "input projection %s", path);
  }
  (*out)->ck = ck;
  (*out)->owns_ex = true;
  return 0;
}

void nq_input_proj_free(nq_input_proj_t *p) {
  if (!p) return;
  nq_linear_deinit(&p->lin);
  if (p->owns_ex) nq_exec_free(p->ex);
  nq_ckpt_close(p->ck);
  free(p);
}

int nq_input_proj_forward(nq_input_proj_t *p, const float *x, int64_t n, float *y, nq_err_t *err) {
  if (n < 1) return 0;
  nq_tensor_t xt, yt;
  nq_tensor_init_borrowed(&xt, NQ_DT_F32, 2, NQ_SHAPE(n, p->in_dim), (void *)x);
  nq_tensor_init_borrowed(&yt, NQ_DT_F32, 2, NQ_SHAPE(n, p->out_dim), y);
  return nq_op_linear(p->ex, &yt, &xt, &p->lin, err);
}

/* compute/models/input_proj.h — NExT-GPT's input projection: ImageBind embedding -> LLM input embedding.
 *
 * `llama_proj = nn.Linear(1024, 4096)` with bias (spec §4): one (1,1,4096) LLM token per media item. Weights are
 * `<prefix>weight` [out, in] and `<prefix>bias` [out] in any file nq_ckpt_open reads (NExT-GPT's delta
 * `pytorch_model.pt`, safetensors); prefix NULL = "llama_proj.". */
#ifndef NQ_COMPUTE_MODELS_INPUT_PROJ_H
#define NQ_COMPUTE_MODELS_INPUT_PROJ_H

#include "compute/core/ops.h"
#include "compute/io/pickle.h"

typedef struct nq_input_proj {
  int in_dim, out_dim;
  nq_linear_t lin; /* [out, in] + bias [out] F32; borrowed from ck (or owned converted copies) */
  nq_exec_t *ex;   /* owned, or borrowed when owns_ex is false */
  bool owns_ex;
  nq_ckpt_t *ck;   /* owned when opened by nq_input_proj_load; NULL when built from a caller's ckpt */
} nq_input_proj_t;

/* Opens path and reads <prefix>weight / <prefix>bias. backends: nq_exec_new spec (NULL = "auto"). */
int nq_input_proj_load(const char *path, const char *prefix, const char *backends, nq_input_proj_t **out /* OUT owned */,
                       nq_err_t *err);
/* Same from an open checkpoint (borrowed: must outlive the projection) and an exec (borrowed). */
int nq_input_proj_from_ckpt(nq_ckpt_t *ck, const char *prefix, nq_exec_t *ex, nq_input_proj_t **out /* OUT owned */,
                            nq_err_t *err);
void nq_input_proj_free(nq_input_proj_t *p);
/* x [n, in_dim] -> y [n, out_dim]. */
int nq_input_proj_forward(nq_input_proj_t *p, const float *x /* borrowed */, int64_t n, float *y /* OUT */, nq_err_t *err);

#endif

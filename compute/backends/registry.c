#include <stdlib.h>
#include <string.h>

#include "compute/backends/backends_int.h"

nq_backend_t *nq_backend_new_by_name(const char *name, nq_pool_t *pool, nq_err_t *err) {
  if (!strcmp(name, "ref")) return nq_backend_ref_new(err);
  if (!strcmp(name, "cpu")) return nq_backend_cpu_new(pool, err);
  if (!strcmp(name, "openblas")) return nq_backend_openblas_new(pool, err);
  if (!strcmp(name, "onednn")) return nq_backend_onednn_new(pool, err);
  if (!strcmp(name, "cuda")) return nq_backend_cuda_new(pool, err);
  nq_err_set(err, NQ_EINVAL, 0, "backend '%s' unknown (ref, cpu, openblas, onednn, cuda)", name);
  return NULL;
}

void nq_backend_free(nq_backend_t *be) {
  if (!be) return;
  if (be->iface->free) be->iface->free(be);
  free(be);
}

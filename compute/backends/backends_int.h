/* compute/backends/backends_int.h — private helpers shared by the host backends. */
#ifndef NQ_COMPUTE_BACKENDS_INT_H
#define NQ_COMPUTE_BACKENDS_INT_H

#include "compute/core/core_int.h"

/* Runs any op except LINEAR on the host; pool NULL = sequential (reference). */
int nq_backends__host_run(const nq_op_desc_t *op, nq_pool_t *pool, nq_err_t *err);
/* Reference linear (plain loops, sequential). */
void nq_backends__linear_ref(const nq_op_desc_t *op);
bool nq_backends__is_host_op(const nq_op_desc_t *op);
nq_backend_t *nq_backends__alloc(const nq_backend_i *iface, void *ctx, nq_pool_t *pool, nq_err_t *err);

#endif

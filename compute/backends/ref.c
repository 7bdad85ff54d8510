/* The reference backend: plain C, one thread, every op. Numerics all other backends are tested against. */
#include "compute/backends/backends_int.h"

static bool nq_ref__supports(const nq_backend_t *be, const nq_op_desc_t *op) { return nq_backends__is_host_op(op); }

static int nq_ref__compute(nq_backend_t *be, const nq_op_desc_t *op, nq_err_t *err) {
  if (op->op == NQ_OP_LINEAR) {
    nq_backends__linear_ref(op);
    return 0;
  }
  return nq_backends__host_run(op, NULL, err);
}

static const nq_backend_i nq_ref__iface = {
    .name = "ref",
    .kind = NQ_BK_REF,
    .supports_op = nq_ref__supports,
    .compute = nq_ref__compute,
};

nq_backend_t *nq_backend_ref_new(nq_err_t *err) { return nq_backends__alloc(&nq_ref__iface, NULL, NULL, err); }

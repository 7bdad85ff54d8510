/* compute/core/tensor.h — n-d tensors: dtype, shape, strides, views; owned or borrowed data.
 *
 * A tensor is a small value type (embed it, pass pointers). Shapes are outermost-first
 * (`ne[0]` is the slowest dimension, like PyTorch), strides `nb[]` are in ELEMENTS.
 * `data` is owned iff `owns_data` (then nq_tensor_deinit frees it); views and wrappers of
 * mmapped weights borrow. Kernels need the last dimension contiguous (stride 1) and the
 * outer dimensions collapsible into rows; nq_tensor_rows() checks that.
 *
 * Data lives in host memory today; `device` is reserved so a CUDA backend can tag device
 * buffers later without changing the struct users see.
 */
#ifndef NQ_COMPUTE_CORE_TENSOR_H
#define NQ_COMPUTE_CORE_TENSOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "compute/core/dtype.h"

#define NQ_MAX_DIMS 6

typedef struct nq_tensor {
  nq_dtype_t dtype;
  int ndim;                 /* 0..NQ_MAX_DIMS (0 = scalar) */
  int64_t ne[NQ_MAX_DIMS];  /* shape, outermost first */
  int64_t nb[NQ_MAX_DIMS];  /* strides in elements */
  void *data;               /* owned iff owns_data, else borrowed */
  bool owns_data;
  int device;               /* 0 = host; reserved for device backends */
} nq_tensor_t;

/* Allocates zeroed, 64-byte aligned, contiguous storage. Refuses absurd sizes (> 2^40 bytes). */
int nq_tensor_init(nq_tensor_t *t /* OUT */, nq_dtype_t dt, int ndim, const int64_t *shape, nq_err_t *err);
/* Wraps caller memory (contiguous); the tensor does not free it. */
void nq_tensor_init_borrowed(nq_tensor_t *t /* OUT */, nq_dtype_t dt, int ndim, const int64_t *shape,
                             void *data /* borrowed */);
void nq_tensor_deinit(nq_tensor_t *t);
/* Heap tensor (owned storage). */
nq_tensor_t *nq_tensor_new(nq_dtype_t dt, int ndim, const int64_t *shape, nq_err_t *err);
void nq_tensor_free(nq_tensor_t *t);

/* Shape helpers for literal shapes: NQ_SHAPE(2, 3) */
#define NQ_SHAPE(...) ((const int64_t[]){__VA_ARGS__})

int64_t nq_tensor_numel(const nq_tensor_t *t);
size_t nq_tensor_nbytes(const nq_tensor_t *t); /* numel * dtype size (contiguous size) */
bool nq_tensor_is_contiguous(const nq_tensor_t *t);
/* Rows view: last dim contiguous and outer dims collapsible. Returns false otherwise. */
bool nq_tensor_rows(const nq_tensor_t *t, int64_t *n_rows /* OUT */, int64_t *row_len /* OUT */,
                    int64_t *row_stride /* OUT, elements */);
bool nq_tensor_same_shape(const nq_tensor_t *a, const nq_tensor_t *b);

/* Views (borrow src's data; never own). */
int nq_tensor_view_slice(const nq_tensor_t *src, int dim, int64_t start, int64_t len, nq_tensor_t *out /* OUT */,
                         nq_err_t *err);
int nq_tensor_view_reshape(const nq_tensor_t *src, int ndim, const int64_t *shape, nq_tensor_t *out /* OUT */,
                           nq_err_t *err);
/* Row r of a 2-d-collapsible tensor as a 1-d view. */
nq_tensor_t nq_tensor_row(const nq_tensor_t *t, int64_t r);
/* Pointer to element at flat (row-major logical) index i, honouring strides. */
void *nq_tensor_ptr(const nq_tensor_t *t, int64_t i);

/* Element get/set as f32/f64 through any float or integer dtype (slow path, tests and I/O). */
double nq_tensor_get(const nq_tensor_t *t, int64_t i);
void nq_tensor_set(nq_tensor_t *t, int64_t i, double v);
/* Convert/copy any dtype/strides into dst (same numel). */
int nq_tensor_copy(nq_tensor_t *dst, const nq_tensor_t *src, nq_err_t *err);

#endif

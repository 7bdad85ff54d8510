/* compute/io/npy.h — NumPy .npy (format version 1.0) encoder and a bounded decoder.
 *
 *   void *buf; size_t len;
 *   nq_npy_encode_f32(vec, 1, NQ_SHAPE(1024), &buf, &len, &err);   // bytes for nq_task_put / a file
 *
 * Layout: "\x93NUMPY" 1 0, uint16 little-endian header length, an ASCII Python dict
 * "{'descr': '<f4', 'fortran_order': False, 'shape': (1024,), }" padded with spaces and ended by '\n' so that
 * the data starts on a 64-byte boundary (what numpy >= 1.x writes), then the raw little-endian data in C order.
 *
 * The decoder accepts versions 1.0/2.0/3.0, little-endian '<f4', '<f2', '<f8', '<i4', '<i8', '|u1' and C order
 * only; it checks the header length, the shape (<= 8 dims, overflow-checked) against the data length and never
 * reads outside the buffer.
 */
#ifndef NQ_COMPUTE_IO_NPY_H
#define NQ_COMPUTE_IO_NPY_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "compute/core/dtype.h"

#define NQ_NPY_MAX_DIMS 8

/* Encode n = prod(shape) elements of dtype dt (F32, F16, F64, I32, I64, U8) as a .npy image.
 * *out is malloc'ed (caller frees). */
int nq_npy_encode(nq_dtype_t dt, const void *data /* borrowed */, int ndim, const int64_t *shape, void **out /* OUT owned */,
                  size_t *out_len /* OUT */, nq_err_t *err);
static inline int nq_npy_encode_f32(const float *data, int ndim, const int64_t *shape, void **out, size_t *out_len,
                                    nq_err_t *err) {
  return nq_npy_encode(NQ_DT_F32, data, ndim, shape, out, out_len, err);
}
/* Encode and write atomically (temp file + rename). */
int nq_npy_save(const char *path, nq_dtype_t dt, const void *data, int ndim, const int64_t *shape, nq_err_t *err);

/* A decoded view: data points INTO the caller's buffer (borrowed; may be unaligned: memcpy it out). */
typedef struct nq_npy_view {
  nq_dtype_t dtype;
  int ndim;
  int64_t shape[NQ_NPY_MAX_DIMS];
  const void *data; /* borrowed from buf */
  size_t nbytes;
} nq_npy_view_t;

/* Parse a .npy image in memory. `name` labels errors (file name or URI). */
int nq_npy_parse(const void *buf /* borrowed */, size_t len, const char *name, nq_npy_view_t *out /* OUT */,
                 nq_err_t *err);

#endif

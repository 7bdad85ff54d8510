/* compute/io/safetensors.h — safetensors reader (mmap, bounds-checked) and writer.
 *
 * The reader maps the file read-only and validates the whole header before handing out a
 * single pointer: every tensor's byte range lies inside the data section, ranges do not
 * overlap, the byte length equals product(shape) * dtype size (with overflow checks), and the
 * header itself is bounded (<= 100 MiB, valid JSON object). A sharded checkpoint is opened by
 * passing its `*.safetensors.index.json`: the shards it names are mapped and merged into one
 * tensor list (a tensor named twice is an error).
 */
#ifndef NQ_COMPUTE_SAFETENSORS_H
#define NQ_COMPUTE_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "compute/core/dtype.h"

#define NQ_ST_MAX_DIMS 8

typedef struct nq_st_tensor {
  const char *name;              /* borrowed from the file object */
  nq_dtype_t dtype;
  int ndim;
  int64_t shape[NQ_ST_MAX_DIMS];
  const void *data;              /* borrowed: points into the mapping; valid until nq_st_close */
  size_t nbytes;
} nq_st_tensor_t;

typedef struct nq_st_file nq_st_file_t;

/* Open a .safetensors file or a *.index.json of shards. On success *out is owned by the caller. */
int nq_st_open(const char *path, nq_st_file_t **out, nq_err_t *err);
void nq_st_close(nq_st_file_t *f);
size_t nq_st_count(const nq_st_file_t *f);
const nq_st_tensor_t *nq_st_get(const nq_st_file_t *f, size_t i);   /* NULL when out of range */
const nq_st_tensor_t *nq_st_find(const nq_st_file_t *f, const char *name); /* NULL when absent */
/* "__metadata__" string value for key, or NULL. Borrowed. */
const char *nq_st_metadata(const nq_st_file_t *f, const char *key);
int64_t nq_st_numel(const nq_st_tensor_t *t);

/* Find `name` and check dtype and shape (ndim dims; a dim of -1 matches anything). Errors name the tensor
 * and both shapes. */
int nq_st_expect(const nq_st_file_t *f, const char *name, nq_dtype_t dtype, int ndim, const int64_t *shape,
                 const nq_st_tensor_t **out, nq_err_t *err);

/* Writer: collects tensors (data is copied) and writes one file atomically (temp + fsync + rename). */
typedef struct nq_st_writer nq_st_writer_t;
nq_st_writer_t *nq_st_writer_new(void);
int nq_st_writer_add(nq_st_writer_t *w, const char *name, nq_dtype_t dtype, int ndim, const int64_t *shape,
                     const void *data /* borrowed, copied */, nq_err_t *err);
/* Convenience: float32 tensor. */
int nq_st_writer_add_f32(nq_st_writer_t *w, const char *name, int ndim, const int64_t *shape, const float *data,
                         nq_err_t *err);
int nq_st_writer_set_metadata(nq_st_writer_t *w, const char *key, const char *value, nq_err_t *err);
int nq_st_writer_save(nq_st_writer_t *w, const char *path, nq_err_t *err);
void nq_st_writer_free(nq_st_writer_t *w);

#endif

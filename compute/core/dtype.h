/* compute/core/dtype.h — element types shared by tensors, file readers and writers. */
#ifndef NQ_COMPUTE_DTYPE_H
#define NQ_COMPUTE_DTYPE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef enum nq_dtype {
  NQ_DT_F32 = 0,
  NQ_DT_F16,
  NQ_DT_BF16,
  NQ_DT_F64,
  NQ_DT_I64,
  NQ_DT_I32,
  NQ_DT_I16,
  NQ_DT_I8,
  NQ_DT_U8,
  NQ_DT_BOOL,
  NQ_DT_COUNT
} nq_dtype_t;

/* Bytes per element (0 for an invalid dtype). */
size_t nq_dtype_size(nq_dtype_t dt);
/* safetensors spelling: "F32", "BF16", "I64", "BOOL"... */
const char *nq_dtype_name(nq_dtype_t dt);
/* Parse the safetensors spelling; returns 0 or NQ_EFORMAT. */
int nq_dtype_parse(const char *s, nq_dtype_t *out);

static inline float nq_bf16_to_f32(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}
/* Round to nearest even; NaN stays NaN. */
static inline uint16_t nq_f32_to_bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}
float nq_f16_to_f32(uint16_t h);
uint16_t nq_f32_to_f16(float f);

/* Convert n elements of src (dtype dt) to float32. Returns 0, or NQ_EUNSUPPORTED for non-numeric dtypes. */
int nq_dtype_to_f32(nq_dtype_t dt, const void *src, float *dst, size_t n);

#endif

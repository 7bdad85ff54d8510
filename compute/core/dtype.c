#include "compute/core/dtype.h"

#include "common/err.h"

static const struct {
  const char *name;
  size_t size;
} dtype_info[NQ_DT_COUNT] = {
    [NQ_DT_F32] = {"F32", 4}, [NQ_DT_F16] = {"F16", 2}, [NQ_DT_BF16] = {"BF16", 2},
    [NQ_DT_F64] = {"F64", 8}, [NQ_DT_I64] = {"I64", 8}, [NQ_DT_I32] = {"I32", 4},
    [NQ_DT_I16] = {"I16", 2}, [NQ_DT_I8] = {"I8", 1},   [NQ_DT_U8] = {"U8", 1},
    [NQ_DT_BOOL] = {"BOOL", 1},
};

size_t nq_dtype_size(nq_dtype_t dt) { return (unsigned)dt < NQ_DT_COUNT ? dtype_info[dt].size : 0; }

const char *nq_dtype_name(nq_dtype_t dt) { return (unsigned)dt < NQ_DT_COUNT ? dtype_info[dt].name : "?"; }

int nq_dtype_parse(const char *s, nq_dtype_t *out) {
  for (int i = 0; i < NQ_DT_COUNT; i++)
    if (s && strcmp(s, dtype_info[i].name) == 0) {
      *out = (nq_dtype_t)i;
      return 0;
    }
  return NQ_EFORMAT;
}

float nq_f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ffu, u;
  if (exp == 0) {
    if (man == 0) {
      u = sign;
    } else { /* subnormal: renormalise */
      exp = 127 - 15 + 1;
      while (!(man & 0x400u)) {
        man <<= 1;
        exp--;
      }
      u = sign | (exp << 23) | ((man & 0x3ffu) << 13);
    }
  } else if (exp == 31) {
    u = sign | 0x7f800000u | (man << 13);
  } else {
    u = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  float f;
  memcpy(&f, &u, 4);
  return f;
}

uint16_t nq_f32_to_f16(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  uint32_t sign = (u >> 16) & 0x8000u;
  int32_t exp = (int32_t)((u >> 23) & 0xff) - 127 + 15;
  uint32_t man = u & 0x7fffffu;
  if (((u >> 23) & 0xff) == 0xff) return (uint16_t)(sign | 0x7c00u | (man ? 0x200u : 0));
  if (exp >= 31) return (uint16_t)(sign | 0x7c00u);
  if (exp <= 0) {
    if (exp < -10) return (uint16_t)sign;
    man |= 0x800000u;
    uint32_t shift = (uint32_t)(14 - exp);
    uint32_t half = man >> shift, rem = man & ((1u << shift) - 1), mid = 1u << (shift - 1);
    if (rem > mid || (rem == mid && (half & 1))) half++;
    return (uint16_t)(sign | half);
  }
  uint32_t h = sign | ((uint32_t)exp << 10) | (man >> 13), rem = man & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1))) h++; /* may carry into exponent: correct */
  return (uint16_t)h;
}

int nq_dtype_to_f32(nq_dtype_t dt, const void *src, float *dst, size_t n) {
  switch (dt) {
    case NQ_DT_F32: memcpy(dst, src, n * 4); return 0;
    case NQ_DT_F16: for (size_t i = 0; i < n; i++) dst[i] = nq_f16_to_f32(((const uint16_t *)src)[i]); return 0;
    case NQ_DT_BF16: for (size_t i = 0; i < n; i++) dst[i] = nq_bf16_to_f32(((const uint16_t *)src)[i]); return 0;
    case NQ_DT_F64: for (size_t i = 0; i < n; i++) dst[i] = (float)((const double *)src)[i]; return 0;
    case NQ_DT_I64: for (size_t i = 0; i < n; i++) dst[i] = (float)((const int64_t *)src)[i]; return 0;
    case NQ_DT_I32: for (size_t i = 0; i < n; i++) dst[i] = (float)((const int32_t *)src)[i]; return 0;
    case NQ_DT_I16: for (size_t i = 0; i < n; i++) dst[i] = (float)((const int16_t *)src)[i]; return 0;
    case NQ_DT_I8: for (size_t i = 0; i < n; i++) dst[i] = (float)((const int8_t *)src)[i]; return 0;
    case NQ_DT_U8:
    case NQ_DT_BOOL: for (size_t i = 0; i < n; i++) dst[i] = (float)((const uint8_t *)src)[i]; return 0;
    default: return NQ_EUNSUPPORTED;
  }
}

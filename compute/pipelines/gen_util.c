/* compute/pipelines/gen_util.c — noise and progress helpers of the generation pipelines (gen_int.h). */
#include <math.h>

#include "compute/pipelines/gen_int.h"

static uint64_t nq_gen__splitmix(uint64_t *s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

static inline uint64_t nq_gen__rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t nq_gen__next(uint64_t st[4]) {
  uint64_t r = nq_gen__rotl(st[1] * 5, 7) * 9, t = st[1] << 17;
  st[2] ^= st[0], st[3] ^= st[1], st[1] ^= st[2], st[0] ^= st[3], st[2] ^= t, st[3] = nq_gen__rotl(st[3], 45);
  return r;
}

void nq_gen__randn(uint64_t seed, float *out, int64_t n) {
  uint64_t s = seed, st[4];
  for (int i = 0; i < 4; i++) st[i] = nq_gen__splitmix(&s);
  for (int64_t i = 0; i < n; i += 2) {
    /* the generator documented in sd.h (nq_sd_randn): 53-bit uniforms u1, u2 in [0,1), r = sqrt(-2 ln(1 - u1)) */
    double u1 = (double)(nq_gen__next(st) >> 11) * 0x1.0p-53;
    double u2 = (double)(nq_gen__next(st) >> 11) * 0x1.0p-53;
    double r = sqrt(-2.0 * log(1.0 - u1)), a = 2.0 * M_PI * u2;
    out[i] = (float)(r * cos(a));
    if (i + 1 < n) out[i + 1] = (float)(r * sin(a));
  }
}

int nq_gen__progress_fn(void *ud, int call, int n_calls, float t) {
  const nq_gen__progress_t *p = ud;
  /* called before model call `call`: report the calls already done (1..n-1); the pipeline reports n at the end */
  return p && p->cb && call > 0 ? p->cb(p->ud, call, n_calls) : 0;
}

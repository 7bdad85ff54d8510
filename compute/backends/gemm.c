/* Packed, cache-blocked GEMM (see gemm.h). Per thread block of C, BLIS loop order
 *   jc (NC columns) -> pc (KC depth) -> ic (MC rows: pack A block) -> jr (NR) -> ir (MR) -> micro-kernel,
 * with a 6x16 AVX2/FMA micro-kernel (12 accumulators, 2 B loads + 6 broadcasts per k). Two variants of the B side:
 *  - a thread's rows fit one A block (<= MC_ONE rows, the A block <= 384 KiB stays in L2): B is packed in chunks of
 *    NB_ONE columns (4 slivers of KC x NR, 64 KiB) right before the A block sweeps them (prefill linears, most
 *    convs): no B panel round trip through L3;
 *  - otherwise the KC x NC B panel is packed once and swept by MC-row A blocks (the panel lives in L3).
 * Blocking for Zen 2 / Haswell-class cores (L1d 32 KiB, L2 512 KiB). Operands are converted to F32 while packing
 * (F32/BF16/F16, any strides; fast paths for contiguous rows and for contiguous columns, the W^T of a linear layer,
 * packed with 8x8 register transposes). */
#include "compute/backends/gemm.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define NQ_GEMM_SIMD 1
#endif

#define MR NQ_GEMM_MR
#define NR NQ_GEMM_NR
#ifndef NQ_GEMM_KC
#define NQ_GEMM_KC 256
#endif
#ifndef NQ_GEMM_MC
#define NQ_GEMM_MC 144 /* multiple of MR */
#endif
#ifndef NQ_GEMM_MC_ONE
#define NQ_GEMM_MC_ONE 384 /* a thread's rows up to this many: one A block (384 KiB at KC 256, in L2), B slivers
                              packed just before use */
#endif
#ifndef NQ_GEMM_NB_ONE
#define NQ_GEMM_NB_ONE 64 /* one-A-block path: B packed in chunks of this many columns (multiple of NR); wider than one
                             sliver so row-major B with a large power-of-two row stride is read a few lines per row */
#endif
#ifndef NQ_GEMM_NC
#define NQ_GEMM_NC 3072 /* multiple of NR */
#endif
#define NQ_GEMM_SLACK 16
/* the blocking in use (nq_gemm_set_blocking changes it for tests) */
typedef struct {
  int64_t kc, mc, mc_one, nc;
} nq_gemm__blk_t;
static nq_gemm__blk_t g_blk = {NQ_GEMM_KC, NQ_GEMM_MC, NQ_GEMM_MC_ONE, NQ_GEMM_NC};

void nq_gemm_set_blocking(int64_t kc, int64_t mc, int64_t mc_one, int64_t nc) {
  g_blk.kc = kc > 0 ? kc : NQ_GEMM_KC;
  g_blk.mc = mc > 0 ? (mc + MR - 1) / MR * MR : NQ_GEMM_MC;
  g_blk.mc_one = mc_one > 0 ? mc_one : NQ_GEMM_MC_ONE;
  g_blk.nc = nc > 0 ? (nc + NR - 1) / NR * NR : NQ_GEMM_NC;
} /* floats past each packed buffer: the A packer's 8-wide stores overrun by up to 2 */

/* ---- per-thread scratch (kept between calls, freed at thread exit) ---- */

typedef struct {
  float *buf; /* owned, 64-byte aligned */
  size_t cap; /* floats */
} nq_gemm__scratch_t;

static pthread_key_t g_gemm_key;
static pthread_once_t g_gemm_once = PTHREAD_ONCE_INIT;
static int g_gemm_key_ok;

static void nq_gemm__scratch_free(void *p) {
  nq_gemm__scratch_t *s = p;
  if (!s) return;
  free(s->buf);
  free(s);
}

static void nq_gemm__key_init(void) { g_gemm_key_ok = pthread_key_create(&g_gemm_key, nq_gemm__scratch_free) == 0; }

/* Scratch of at least n floats for the calling thread; NULL on allocation failure. */
static float *nq_gemm__scratch(size_t n) {
  pthread_once(&g_gemm_once, nq_gemm__key_init);
  if (!g_gemm_key_ok) return NULL;
  nq_gemm__scratch_t *s = pthread_getspecific(g_gemm_key);
  if (!s) {
    s = calloc(1, sizeof(*s));
    if (!s) return NULL;
    if (pthread_setspecific(g_gemm_key, s) != 0) {
      free(s);
      return NULL;
    }
  }
  if (s->cap < n) {
    free(s->buf);
    size_t bytes = (n * sizeof(float) + 63) & ~(size_t)63;
    s->buf = aligned_alloc(64, bytes);
    s->cap = s->buf ? n : 0;
  }
  return s->buf;
}

/* ---- element access ---- */

static inline float nq_gemm__get(const nq_gemm_mat_t *m, int64_t i, int64_t j) {
  int64_t o = i * m->rs + j * m->cs;
  switch (m->dtype) {
    case NQ_DT_F32: return ((const float *)m->data)[o];
    case NQ_DT_F16: return nq_f16_to_f32(((const uint16_t *)m->data)[o]);
    default: return nq_bf16_to_f32(((const uint16_t *)m->data)[o]);
  }
}

#ifdef NQ_GEMM_SIMD
/* 8 consecutive elements at element offset o, as f32 */
static inline __attribute__((always_inline)) __m256 nq_gemm__ld8(const void *p, int64_t o, nq_dtype_t dt) {
  if (dt == NQ_DT_F32) return _mm256_loadu_ps((const float *)p + o);
  __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)p + o));
  if (dt == NQ_DT_F16) return _mm256_cvtph_ps(h);
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

/* r[j] (8 lanes) -> r[k] holding lane k of every input (8x8 transpose in registers) */
static inline __attribute__((always_inline)) void nq_gemm__tr8(__m256 r[8]) {
  __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  r[0] = _mm256_permute2f128_ps(u0, u4, 0x20), r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
  r[2] = _mm256_permute2f128_ps(u2, u6, 0x20), r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
  r[4] = _mm256_permute2f128_ps(u0, u4, 0x31), r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
  r[6] = _mm256_permute2f128_ps(u2, u6, 0x31), r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}
#endif

/* ---- packing ---- */

/* B rows [k0, k0+kc), columns [n0, n0+nc) -> NR-wide slivers (zero-padded). */
static void nq_gemm__pack_b(const nq_gemm_mat_t *B, int64_t k0, int64_t kc, int64_t n0, int64_t nc, float *dst) {
  for (int64_t s = 0; s * NR < nc; s++) {
    float *d = dst + s * kc * NR;
    const int64_t j0 = n0 + s * NR, w = nc - s * NR < NR ? nc - s * NR : NR;
#ifdef NQ_GEMM_SIMD
    const nq_dtype_t dt = B->dtype;
    if (w == NR && B->cs == 1) { /* rows contiguous */
      for (int64_t k = 0; k < kc; k++) {
        int64_t o = (k0 + k) * B->rs + j0;
        _mm256_store_ps(d + k * NR, nq_gemm__ld8(B->data, o, dt));
        _mm256_store_ps(d + k * NR + 8, nq_gemm__ld8(B->data, o + 8, dt));
      }
      continue;
    }
    if (w == NR && B->rs == 1) { /* columns contiguous (W^T): transpose 8 k x 16 columns at a time */
      int64_t k = 0;
      for (; k + 8 <= kc; k += 8) {
        __m256 lo[8], hi[8];
        for (int j = 0; j < 8; j++) {
          lo[j] = nq_gemm__ld8(B->data, (j0 + j) * B->cs + k0 + k, dt);
          hi[j] = nq_gemm__ld8(B->data, (j0 + 8 + j) * B->cs + k0 + k, dt);
        }
        nq_gemm__tr8(lo), nq_gemm__tr8(hi);
        for (int kk = 0; kk < 8; kk++) {
          _mm256_store_ps(d + (k + kk) * NR, lo[kk]);
          _mm256_store_ps(d + (k + kk) * NR + 8, hi[kk]);
        }
      }
      for (; k < kc; k++)
        for (int j = 0; j < NR; j++) d[k * NR + j] = nq_gemm__get(B, k0 + k, j0 + j);
      continue;
    }
#endif
    for (int64_t k = 0; k < kc; k++) {
      int j = 0;
      for (; j < w; j++) d[k * NR + j] = nq_gemm__get(B, k0 + k, j0 + j);
      for (; j < NR; j++) d[k * NR + j] = 0.0f;
    }
  }
}

/* A rows [m0, m0+mc), columns [k0, k0+kc) -> MR-tall slivers (zero-padded). */
static void nq_gemm__pack_a(const nq_gemm_mat_t *A, int64_t m0, int64_t mc, int64_t k0, int64_t kc, float *dst) {
  for (int64_t s = 0; s * MR < mc; s++) {
    float *d = dst + s * kc * MR;
    const int64_t i0 = m0 + s * MR, h = mc - s * MR < MR ? mc - s * MR : MR;
#ifdef NQ_GEMM_SIMD
    if (h == MR && A->cs == 1) { /* rows contiguous: 8 k of the 6 rows per transpose; 8-wide stores overlap */
      const nq_dtype_t dt = A->dtype;
      int64_t k = 0;
      for (; k + 8 <= kc; k += 8) {
        __m256 r[8];
        for (int i = 0; i < MR; i++) r[i] = nq_gemm__ld8(A->data, (i0 + i) * A->rs + k0 + k, dt);
        r[6] = r[7] = _mm256_setzero_ps();
        nq_gemm__tr8(r);
        for (int kk = 0; kk < 8; kk++) _mm256_storeu_ps(d + (k + kk) * MR, r[kk]);
      }
      for (; k < kc; k++)
        for (int i = 0; i < MR; i++) d[k * MR + i] = nq_gemm__get(A, i0 + i, k0 + k);
      continue;
    }
#endif
    for (int64_t k = 0; k < kc; k++) {
      int i = 0;
      for (; i < h; i++) d[k * MR + i] = nq_gemm__get(A, i0 + i, k0 + k);
      for (; i < MR; i++) d[k * MR + i] = 0.0f;
    }
  }
}

/* ---- micro-kernel: the full MR x NR tile at c (row stride ldc).
 * add: C += A.B (else C = A.B); bn: NR column biases or NULL; bm: MR row biases or NULL. ---- */

#ifdef NQ_GEMM_SIMD
static void nq_gemm__kernel(int64_t kc, const float *restrict a, const float *restrict b, float *restrict c,
                            int64_t ldc, int add, const float *bn, const float *bm) {
  __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
  __m256 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
#pragma GCC unroll 4
  for (int64_t k = 0; k < kc; k++) {
    __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8), av;
    av = _mm256_broadcast_ss(a + 0), c00 = _mm256_fmadd_ps(av, b0, c00), c01 = _mm256_fmadd_ps(av, b1, c01);
    av = _mm256_broadcast_ss(a + 1), c10 = _mm256_fmadd_ps(av, b0, c10), c11 = _mm256_fmadd_ps(av, b1, c11);
    av = _mm256_broadcast_ss(a + 2), c20 = _mm256_fmadd_ps(av, b0, c20), c21 = _mm256_fmadd_ps(av, b1, c21);
    av = _mm256_broadcast_ss(a + 3), c30 = _mm256_fmadd_ps(av, b0, c30), c31 = _mm256_fmadd_ps(av, b1, c31);
    av = _mm256_broadcast_ss(a + 4), c40 = _mm256_fmadd_ps(av, b0, c40), c41 = _mm256_fmadd_ps(av, b1, c41);
    av = _mm256_broadcast_ss(a + 5), c50 = _mm256_fmadd_ps(av, b0, c50), c51 = _mm256_fmadd_ps(av, b1, c51);
    a += MR, b += NR;
  }
  __m256 acc[MR][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}, {c40, c41}, {c50, c51}};
  __m256 bn0 = bn ? _mm256_loadu_ps(bn) : _mm256_setzero_ps(), bn1 = bn ? _mm256_loadu_ps(bn + 8) : bn0;
  for (int i = 0; i < MR; i++) {
    float *ci = c + i * ldc;
    __m256 v0 = acc[i][0], v1 = acc[i][1];
    if (bn) v0 = _mm256_add_ps(v0, bn0), v1 = _mm256_add_ps(v1, bn1);
    if (bm) {
      __m256 s = _mm256_broadcast_ss(bm + i);
      v0 = _mm256_add_ps(v0, s), v1 = _mm256_add_ps(v1, s);
    }
    if (add) v0 = _mm256_add_ps(v0, _mm256_loadu_ps(ci)), v1 = _mm256_add_ps(v1, _mm256_loadu_ps(ci + 8));
    _mm256_storeu_ps(ci, v0);
    _mm256_storeu_ps(ci + 8, v1);
  }
}
#else
static void nq_gemm__kernel(int64_t kc, const float *restrict a, const float *restrict b, float *restrict c,
                            int64_t ldc, int add, const float *bn, const float *bm) {
  float acc[MR][NR] = {{0}};
  for (int64_t k = 0; k < kc; k++, a += MR, b += NR)
    for (int i = 0; i < MR; i++)
      for (int j = 0; j < NR; j++) acc[i][j] += a[i] * b[j];
  for (int i = 0; i < MR; i++)
    for (int j = 0; j < NR; j++) {
      float v = acc[i][j] + (bn ? bn[j] : 0.0f) + (bm ? bm[i] : 0.0f);
      c[i * ldc + j] = add ? c[i * ldc + j] + v : v;
    }
}
#endif

const char *nq_gemm_kernel_name(void) {
#ifdef NQ_GEMM_SIMD
  return "avx2-fma 6x16";
#else
  return "portable 6x16";
#endif
}

/* A partial tile (mr < MR or nr < NR): kernel into a local tile, then merge. */
static void nq_gemm__edge(int64_t kc, const float *a, const float *b, float *c, int64_t ldc, int64_t mr, int64_t nr,
                          int add, const float *bn, const float *bm) {
  float t[MR * NR] __attribute__((aligned(64)));
  nq_gemm__kernel(kc, a, b, t, NR, 0, NULL, NULL);
  for (int64_t i = 0; i < mr; i++)
    for (int64_t j = 0; j < nr; j++) {
      float v = t[i * NR + j] + (bn ? bn[j] : 0.0f) + (bm ? bm[i] : 0.0f);
      c[i * ldc + j] = add ? c[i * ldc + j] + v : v;
    }
}

/* ---- driver ---- */

typedef struct {
  const nq_gemm_args_t *g;
  int tm, tn;                 /* thread grid: tm row blocks x tn column blocks */
  int64_t mstep, nstep;       /* rows / columns per thread block (multiples of MR / NR) */
  int failed;                 /* set by a thread that could not get scratch */
  nq_gemm__blk_t blk;         /* blocking of this call (a copy of g_blk) */
} nq_gemm__job_t;

/* The MR x NR tiles of columns [jr, jr+nr) (one packed B sliver bs) for rows [ic, ic+mc) (packed A block ap). */
static inline void nq_gemm__sliver(const nq_gemm_args_t *g, int64_t kc, int first, const float *ap, int64_t ic,
                                   int64_t mc, const float *bs, int64_t col, int64_t nr) {
  const int add = !first || g->accumulate;
  const float *bn = first && g->bias ? g->bias + col : NULL;
  for (int64_t ir = 0; ir < mc; ir += MR) {
    const int64_t mr = mc - ir < MR ? mc - ir : MR;
    const float *bm = first && g->bias_m ? g->bias_m + ic + ir : NULL;
    float *c = g->c + (ic + ir) * g->ldc + col;
    if (mr == MR && nr == NR)
      nq_gemm__kernel(kc, ap + ir * kc, bs, c, g->ldc, add, bn, bm);
    else
      nq_gemm__edge(kc, ap + ir * kc, bs, c, g->ldc, mr, nr, add, bn, bm);
  }
}

static inline void nq_gemm__pack_b_any(const nq_gemm_args_t *g, int64_t k0, int64_t kc, int64_t n0, int64_t nc,
                                       float *dst) {
  if (g->pack_b)
    g->pack_b(g->pack_b_ctx, k0, kc, n0, nc, dst);
  else
    nq_gemm__pack_b(&g->b, k0, kc, n0, nc, dst);
}

/* Rows [m0, m1) x columns [n0, n1) of C. one_a (the rows fit one A block, scratch sized for it): every B sliver is
 * used by one A block only, so it is packed right before use (it stays in L1; no KC x NC panel round trip through
 * L3). Else BLIS order with a KC x NC B panel and MC-row A blocks. */
static void nq_gemm__block(const nq_gemm_args_t *g, int64_t m0, int64_t m1, int64_t n0, int64_t n1, bool one_a,
                           const nq_gemm__blk_t *b, float *ap, float *bp) {
  const int64_t K = g->K;
  for (int64_t jc = n0; jc < n1; jc += b->nc) {
    const int64_t nc = n1 - jc < b->nc ? n1 - jc : b->nc;
    for (int64_t pc = 0; pc < K; pc += b->kc) {
      const int64_t kc = K - pc < b->kc ? K - pc : b->kc;
      const int first = pc == 0;
      if (one_a) {
        nq_gemm__pack_a(&g->a, m0, m1 - m0, pc, kc, ap);
        for (int64_t jb = 0; jb < nc; jb += NQ_GEMM_NB_ONE) {
          const int64_t nb = nc - jb < NQ_GEMM_NB_ONE ? nc - jb : NQ_GEMM_NB_ONE;
          nq_gemm__pack_b_any(g, pc, kc, jc + jb, nb, bp);
          for (int64_t jr = 0; jr < nb; jr += NR) {
            const int64_t nr = nb - jr < NR ? nb - jr : NR;
            nq_gemm__sliver(g, kc, first, ap, m0, m1 - m0, bp + jr * kc, jc + jb + jr, nr);
          }
        }
        continue;
      }
      nq_gemm__pack_b_any(g, pc, kc, jc, nc, bp);
      for (int64_t ic = m0; ic < m1; ic += b->mc) {
        const int64_t mc = m1 - ic < b->mc ? m1 - ic : b->mc;
        nq_gemm__pack_a(&g->a, ic, mc, pc, kc, ap);
        for (int64_t jr = 0; jr < nc; jr += NR) {
          const int64_t nr = nc - jr < NR ? nc - jr : NR;
          nq_gemm__sliver(g, kc, first, ap, ic, mc, bp + jr * kc, jc + jr, nr);
        }
      }
    }
  }
}

static void nq_gemm__cb(void *ctx, int64_t t0, int64_t t1, int tid) {
  nq_gemm__job_t *j = ctx;
  const nq_gemm_args_t *g = j->g;
  const int64_t kcap = g->K < j->blk.kc ? g->K : j->blk.kc;
  const bool one_a = j->mstep <= j->blk.mc_one; /* the same for every block of this call: scratch is sized by it */
  const int64_t mcap = one_a ? j->mstep : j->blk.mc;
  const int64_t ncap = one_a ? NQ_GEMM_NB_ONE : j->nstep < j->blk.nc ? j->nstep : j->blk.nc;
  const size_t a_fl = (size_t)(((mcap + MR - 1) / MR * MR) * kcap) + NQ_GEMM_SLACK;
  const size_t a_al = (a_fl + 15) & ~(size_t)15; /* keep the B panel 64-byte aligned */
  const size_t b_fl = (size_t)(((ncap + NR - 1) / NR * NR) * kcap) + NQ_GEMM_SLACK;
  float *buf = nq_gemm__scratch(a_al + b_fl);
  if (!buf) {
    __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED);
    return;
  }
  for (int64_t t = t0; t < t1; t++) {
    int64_t bi = t / j->tn, bj = t % j->tn;
    int64_t m0 = bi * j->mstep, n0 = bj * j->nstep;
    int64_t m1 = m0 + j->mstep < g->M ? m0 + j->mstep : g->M, n1 = n0 + j->nstep < g->N ? n0 + j->nstep : g->N;
    if (m0 < m1 && n0 < n1) nq_gemm__block(g, m0, m1, n0, n1, one_a, &j->blk, buf, buf + a_al);
  }
}

static int64_t nq_gemm__ceil_to(int64_t x, int64_t q) { return (x + q - 1) / q * q; }

int nq_gemm(nq_pool_t *pool, const nq_gemm_args_t *g, nq_err_t *err) {
  if (g->M < 0 || g->N < 0 || g->K < 0 || !g->c || g->ldc < g->N)
    return nq_err_set(err, NQ_EINVAL, 0, "gemm: bad shape M=%lld N=%lld K=%lld ldc=%lld", (long long)g->M,
                      (long long)g->N, (long long)g->K, (long long)g->ldc);
  const nq_gemm_mat_t *mats[2] = {&g->a, g->pack_b ? NULL : &g->b};
  for (int i = 0; i < 2; i++)
    if (mats[i] && (!mats[i]->data || (mats[i]->dtype != NQ_DT_F32 && mats[i]->dtype != NQ_DT_BF16 &&
                                       mats[i]->dtype != NQ_DT_F16)))
      return nq_err_set(err, NQ_EINVAL, 0, "gemm: operand %c must be F32/BF16/F16 data", "AB"[i]);
  if (g->M == 0 || g->N == 0) return 0;
  if (g->K == 0) {
    for (int64_t i = 0; i < g->M; i++)
      for (int64_t j = 0; j < g->N; j++) {
        float *c = g->c + i * g->ldc + j;
        float v = (g->bias ? g->bias[j] : 0.0f) + (g->bias_m ? g->bias_m[i] : 0.0f);
        *c = g->accumulate ? *c + v : v;
      }
    return 0;
  }
  /* Thread grid: split N while every thread keeps >= 8 slivers of columns (A re-packing per thread is then cheap
   * next to the B panel work), otherwise split M. */
  int nt = nq_pool_size(pool);
  const double flops = 2.0 * (double)g->M * (double)g->N * (double)g->K;
  if (flops < 2e5) nt = 1;
  int tn = nt, tm = 1;
  while (tn > 1 && (nt % tn || g->N < (int64_t)tn * 8 * NR)) tn--;
  tm = nt / tn;
  if (tm > 1 && g->M < (int64_t)tm * MR) tm = g->M / MR > 1 ? (int)(g->M / MR) : 1;
  nq_gemm__job_t j = {.g = g, .tm = tm, .tn = tn, .blk = g_blk};
  j.mstep = nq_gemm__ceil_to((g->M + tm - 1) / tm, MR);
  j.nstep = nq_gemm__ceil_to((g->N + tn - 1) / tn, NR);
  if (tm * tn <= 1)
    nq_gemm__cb(&j, 0, 1, 0);
  else
    nq_pool_for(pool, (int64_t)tm * tn, 1, nq_gemm__cb, &j);
  if (j.failed) return nq_err_set(err, NQ_ENOMEM, 0, "gemm: no scratch for M=%lld N=%lld K=%lld", (long long)g->M,
                                  (long long)g->N, (long long)g->K);
  return 0;
}

/* Vision / diffusion ops (conv2d, conv1d, conv_transpose1d, groupnorm, upsample_nearest):
 *  - the reference backend against closed forms computed here in double (naive gather/scatter formulas, a 1x1 conv
 *    as a matmul, a hand-computed 3x3 case);
 *  - every built backend against the reference on random odd shapes (strides, padding, dilation, groups, weight
 *    dtypes, with and without bias);
 *  - shape errors. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compute/core/ops.h"

static uint64_t g_rng = 0x2545f4914f6cdd1dull;
static float frand(void) { /* uniform [-1, 1) */
  g_rng ^= g_rng << 13, g_rng ^= g_rng >> 7, g_rng ^= g_rng << 17;
  return (float)((g_rng >> 40) * (1.0 / 16777216.0)) * 2.0f - 1.0f;
}

static void fill(nq_tensor_t *t, float scale) {
  for (int64_t i = 0; i < nq_tensor_numel(t); i++) nq_tensor_set(t, i, frand() * scale);
}

static double rel_l2(const nq_tensor_t *a, const nq_tensor_t *b) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < nq_tensor_numel(a); i++) {
    double x = nq_tensor_get(a, i), y = nq_tensor_get(b, i);
    num += (x - y) * (x - y);
    den += y * y;
  }
  return sqrt(num) / fmax(sqrt(den), 1e-12);
}

static double rel_l2_d(const nq_tensor_t *a, const double *ref) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < nq_tensor_numel(a); i++) {
    double x = nq_tensor_get(a, i);
    num += (x - ref[i]) * (x - ref[i]);
    den += ref[i] * ref[i];
  }
  return sqrt(num) / fmax(sqrt(den), 1e-12);
}

static const char *k_backends[] = {"cpu", "openblas", "onednn", "cuda"};

static nq_tensor_t mk(nq_dtype_t dt, int nd, const int64_t *shape) {
  nq_tensor_t t;
  nq_err_t err = {0};
  cr_assert_eq(nq_tensor_init(&t, dt, nd, shape, &err), 0, "%s", err.msg);
  return t;
}

/* Runs d on be and on ref; returns rel_l2(be, ref), or -1 when be does not support the op. */
static double run_pair(nq_backend_t *be, nq_backend_t *ref, nq_op_desc_t *d, nq_tensor_t *dst_be,
                       nq_tensor_t *dst_ref) {
  nq_err_t err = {0};
  d->dst = dst_be;
  cr_assert_eq(nq_op_check(d, &err), 0, "%s: %s", nq_op_name(d->op), err.msg);
  if (!be->iface->supports_op(be, d)) return -1;
  fill(dst_be, 100.0f); /* garbage: kernels must overwrite */
  cr_assert_eq(be->iface->compute(be, d, &err), 0, "%s on %s: %s", nq_op_name(d->op), be->iface->name, err.msg);
  d->dst = dst_ref;
  cr_assert_eq(ref->iface->compute(ref, d, &err), 0, "ref %s: %s", nq_op_name(d->op), err.msg);
  return rel_l2(dst_be, dst_ref);
}

/* ---- naive double-precision formulas (independent of the kernels) ---- */

static void conv2d_naive(const nq_tensor_t *x, const nq_tensor_t *w, const nq_tensor_t *b, const int *p, int g,
                         int64_t Ho, int64_t Wo, double *y) {
  int64_t N = x->ne[0], Ci = x->ne[1], H = x->ne[2], W = x->ne[3], Co = w->ne[0], kh = w->ne[2], kw = w->ne[3];
  int64_t cig = Ci / g, cog = Co / g;
  for (int64_t n = 0; n < N; n++)
    for (int64_t co = 0; co < Co; co++)
      for (int64_t oy = 0; oy < Ho; oy++)
        for (int64_t ox = 0; ox < Wo; ox++) {
          double s = b ? nq_tensor_get(b, co) : 0;
          for (int64_t ci = 0; ci < cig; ci++)
            for (int64_t ky = 0; ky < kh; ky++)
              for (int64_t kx = 0; kx < kw; kx++) {
                int64_t iy = oy * p[0] - p[2] + ky * p[4], ix = ox * p[1] - p[3] + kx * p[5];
                if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
                s += nq_tensor_get(x, ((n * Ci + (co / cog) * cig + ci) * H + iy) * W + ix) *
                     nq_tensor_get(w, ((co * cig + ci) * kh + ky) * kw + kx);
              }
          y[((n * Co + co) * Ho + oy) * Wo + ox] = s;
        }
}

/* ConvTranspose1d as a scatter: every input element adds x * w into the outputs it touches. */
static void convt1d_scatter(const nq_tensor_t *x, const nq_tensor_t *w, const nq_tensor_t *b, int s, int pad, int dil,
                            int g, int64_t Lo, double *y) {
  int64_t N = x->ne[0], Ci = x->ne[1], L = x->ne[2], cog = w->ne[1], K = w->ne[2], cig = Ci / g, Co = cog * g;
  for (int64_t n = 0; n < N; n++)
    for (int64_t co = 0; co < Co; co++)
      for (int64_t o = 0; o < Lo; o++) y[(n * Co + co) * Lo + o] = b ? nq_tensor_get(b, co) : 0;
  for (int64_t n = 0; n < N; n++)
    for (int64_t ci = 0; ci < Ci; ci++)
      for (int64_t i = 0; i < L; i++) {
        double xv = nq_tensor_get(x, (n * Ci + ci) * L + i);
        int64_t gi = ci / cig;
        for (int64_t cl = 0; cl < cog; cl++)
          for (int64_t k = 0; k < K; k++) {
            int64_t o = i * s - pad + k * dil;
            if (o < 0 || o >= Lo) continue;
            y[(n * Co + gi * cog + cl) * Lo + o] += xv * nq_tensor_get(w, (ci * cog + cl) * K + k);
          }
      }
}

/* ---- closed forms ---- */

Test(compute_conv, ref_hand_computed_3x3) {
  nq_err_t err = {0};
  nq_exec_t *ex = nq_exec_new("ref", NULL, &err);
  cr_assert(ex, "%s", err.msg);
  nq_tensor_t x = mk(NQ_DT_F32, 4, NQ_SHAPE(1, 1, 3, 3)), w = mk(NQ_DT_F32, 4, NQ_SHAPE(1, 1, 2, 2));
  for (int i = 0; i < 9; i++) ((float *)x.data)[i] = (float)(i + 1); /* 1..9 row-major */
  float wv[4] = {1, 0, 0, -1};
  memcpy(w.data, wv, sizeof wv);
  /* stride 1, pad 0: y[i,j] = x[i,j] - x[i+1,j+1] = -4 */
  nq_tensor_t y = mk(NQ_DT_F32, 4, NQ_SHAPE(1, 1, 2, 2));
  cr_assert_eq(nq_op_conv2d(ex, &y, &x, &w, NULL, 1, 1, 0, 0, 1, 1, 1, &err), 0, "%s", err.msg);
  for (int i = 0; i < 4; i++) cr_assert_float_eq(((float *)y.data)[i], -4.0f, 1e-6);
  /* stride 2, pad 1: y[a,b] = x[2a-1,2b-1] - x[2a,2b] (zero outside) = {-1, -3, -7, 5-9} */
  float want[4] = {-1, -3, -7, -4};
  cr_assert_eq(nq_op_conv2d(ex, &y, &x, &w, NULL, 2, 2, 1, 1, 1, 1, 1, &err), 0, "%s", err.msg);
  for (int i = 0; i < 4; i++) cr_assert_float_eq(((float *)y.data)[i], want[i], 1e-6, "i=%d", i);
  /* dilation 2, pad 0 on 3x3 with a 2x2 kernel: one output = x[0,0] - x[2,2] = -8, + bias 0.5 */
  nq_tensor_t y1 = mk(NQ_DT_F32, 4, NQ_SHAPE(1, 1, 1, 1)), b = mk(NQ_DT_F32, 1, NQ_SHAPE(1));
  ((float *)b.data)[0] = 0.5f;
  cr_assert_eq(nq_op_conv2d(ex, &y1, &x, &w, &b, 1, 1, 0, 0, 2, 2, 1, &err), 0, "%s", err.msg);
  cr_assert_float_eq(((float *)y1.data)[0], -7.5f, 1e-6);
  nq_tensor_deinit(&x), nq_tensor_deinit(&w), nq_tensor_deinit(&y), nq_tensor_deinit(&y1), nq_tensor_deinit(&b);
  nq_exec_free(ex);
}

Test(compute_conv, ref_1x1_is_matmul) {
  nq_err_t err = {0};
  nq_exec_t *ex = nq_exec_new("ref", NULL, &err);
  const int64_t N = 2, Ci = 7, Co = 5, H = 3, W = 4;
  nq_tensor_t x = mk(NQ_DT_F32, 4, NQ_SHAPE(N, Ci, H, W)), w = mk(NQ_DT_F32, 4, NQ_SHAPE(Co, Ci, 1, 1)),
              b = mk(NQ_DT_F32, 1, NQ_SHAPE(Co)), y = mk(NQ_DT_F32, 4, NQ_SHAPE(N, Co, H, W));
  fill(&x, 1), fill(&w, 1), fill(&b, 1);
  cr_assert_eq(nq_op_conv2d(ex, &y, &x, &w, &b, 1, 1, 0, 0, 1, 1, 1, &err), 0, "%s", err.msg);
  const float *X = x.data, *Wt = w.data, *B = b.data, *Y = y.data;
  for (int64_t n = 0; n < N; n++)
    for (int64_t co = 0; co < Co; co++)
      for (int64_t s = 0; s < H * W; s++) {
        double acc = B[co];
        for (int64_t ci = 0; ci < Ci; ci++) acc += (double)Wt[co * Ci + ci] * X[(n * Ci + ci) * H * W + s];
        cr_assert_float_eq(Y[(n * Co + co) * H * W + s], acc, 1e-5);
      }
  nq_tensor_deinit(&x), nq_tensor_deinit(&w), nq_tensor_deinit(&b), nq_tensor_deinit(&y);
  nq_exec_free(ex);
}

/* {N, Ci, H, W, Co, kh, kw, sh, sw, ph, pw, dh, dw, groups} */
static const int k_conv_cases[][14] = {
    {1, 3, 7, 9, 5, 3, 3, 1, 1, 1, 1, 1, 1, 1},    {2, 4, 11, 6, 6, 3, 3, 2, 2, 1, 1, 1, 1, 2},
    {1, 6, 9, 13, 9, 3, 2, 2, 1, 0, 2, 2, 1, 3},   {1, 8, 5, 5, 8, 3, 3, 1, 1, 1, 1, 1, 1, 8},
    {3, 5, 4, 7, 3, 1, 1, 1, 1, 0, 0, 1, 1, 1},    {1, 16, 12, 12, 32, 3, 3, 1, 1, 1, 1, 1, 1, 1},
    {1, 3, 17, 15, 4, 5, 5, 3, 2, 2, 1, 1, 2, 1},  {2, 4, 1, 30, 6, 1, 7, 1, 3, 0, 3, 1, 2, 2},
    {1, 32, 16, 16, 4, 1, 1, 2, 2, 0, 0, 1, 1, 1}, {1, 12, 10, 9, 6, 2, 2, 2, 2, 0, 0, 1, 1, 1},
};

static int64_t out_dim(int64_t in, int k, int s, int p, int d) { return (in + 2 * p - d * (k - 1) - 1) / s + 1; }

Test(compute_conv, ref_conv2d_vs_naive) {
  nq_err_t err = {0};
  nq_exec_t *ex = nq_exec_new("ref", NULL, &err);
  for (size_t t = 0; t < sizeof k_conv_cases / sizeof *k_conv_cases; t++) {
    const int *c = k_conv_cases[t];
    int p[6] = {c[7], c[8], c[9], c[10], c[11], c[12]};
    int64_t Ho = out_dim(c[2], c[5], c[7], c[9], c[11]), Wo = out_dim(c[3], c[6], c[8], c[10], c[12]);
    nq_tensor_t x = mk(NQ_DT_F32, 4, NQ_SHAPE(c[0], c[1], c[2], c[3])),
                w = mk(NQ_DT_F32, 4, NQ_SHAPE(c[4], c[1] / c[13], c[5], c[6])), b = mk(NQ_DT_F32, 1, NQ_SHAPE(c[4])),
                y = mk(NQ_DT_F32, 4, NQ_SHAPE(c[0], c[4], Ho, Wo));
    fill(&x, 1), fill(&w, 1), fill(&b, 1);
    cr_assert_eq(nq_op_conv2d(ex, &y, &x, &w, &b, p[0], p[1], p[2], p[3], p[4], p[5], c[13], &err), 0, "case %zu: %s",
                 t, err.msg);
    double *want = malloc(sizeof(double) * (size_t)nq_tensor_numel(&y));
    conv2d_naive(&x, &w, &b, p, c[13], Ho, Wo, want);
    double r = rel_l2_d(&y, want);
    cr_assert_lt(r, 1e-6, "case %zu: rel_l2 %g", t, r);
    free(want);
    nq_tensor_deinit(&x), nq_tensor_deinit(&w), nq_tensor_deinit(&b), nq_tensor_deinit(&y);
  }
  nq_exec_free(ex);
}

/* {N, Ci, L, Co, k, stride, pad, output_padding, dil, groups} */
static const int k_convt_cases[][10] = {
    {1, 3, 7, 5, 4, 2, 1, 0, 1, 1}, {2, 4, 9, 6, 16, 8, 4, 0, 1, 2}, {1, 6, 5, 3, 3, 3, 0, 2, 1, 3},
    {1, 2, 11, 4, 5, 1, 2, 0, 2, 1}, {2, 8, 6, 8, 3, 2, 1, 1, 2, 8}, {1, 16, 33, 8, 11, 5, 3, 0, 1, 1},
};

Test(compute_conv, ref_conv_transpose1d_vs_scatter) {
  nq_err_t err = {0};
  nq_exec_t *ex = nq_exec_new("ref", NULL, &err);
  for (size_t t = 0; t < sizeof k_convt_cases / sizeof *k_convt_cases; t++) {
    const int *c = k_convt_cases[t];
    int64_t Lo = (int64_t)(c[2] - 1) * c[5] - 2 * c[6] + c[8] * (c[4] - 1) + c[7] + 1;
    nq_tensor_t x = mk(NQ_DT_F32, 3, NQ_SHAPE(c[0], c[1], c[2])),
                w = mk(NQ_DT_F32, 3, NQ_SHAPE(c[1], c[3] / c[9], c[4])),
                b = mk(NQ_DT_F32, 1, NQ_SHAPE(c[3])), y = mk(NQ_DT_F32, 3, NQ_SHAPE(c[0], c[3], Lo));
    fill(&x, 1), fill(&w, 1), fill(&b, 1);
    cr_assert_eq(nq_op_conv_transpose1d(ex, &y, &x, &w, &b, c[5], c[6], c[7], c[8], c[9], &err), 0, "case %zu: %s", t,
                 err.msg);
    double *want = malloc(sizeof(double) * (size_t)nq_tensor_numel(&y));
    convt1d_scatter(&x, &w, &b, c[5], c[6], c[8], c[9], Lo, want);
    double r = rel_l2_d(&y, want);
    cr_assert_lt(r, 1e-6, "case %zu: rel_l2 %g", t, r);
    free(want);
    nq_tensor_deinit(&x), nq_tensor_deinit(&w), nq_tensor_deinit(&b), nq_tensor_deinit(&y);
  }
  nq_exec_free(ex);
}

Test(compute_conv, ref_conv1d_is_conv2d_row) {
  /* conv1d = the naive 2-d formula with H = 1 */
  nq_err_t err = {0};
  nq_exec_t *ex = nq_exec_new("ref", NULL, &err);
  nq_tensor_t x = mk(NQ_DT_F32, 3, NQ_SHAPE(2, 6, 19)), w = mk(NQ_DT_F32, 3, NQ_SHAPE(4, 3, 5)),
              b = mk(NQ_DT_F32, 1, NQ_SHAPE(4));
  fill(&x, 1), fill(&w, 1), fill(&b, 1);
  int64_t Lo = out_dim(19, 5, 2, 3, 2);
  nq_tensor_t y = mk(NQ_DT_F32, 3, NQ_SHAPE(2, 4, Lo));
  cr_assert_eq(nq_op_conv1d(ex, &y, &x, &w, &b, 2, 3, 2, 2, &err), 0, "%s", err.msg);
  nq_tensor_t x4, w4;
  nq_tensor_view_reshape(&x, 4, NQ_SHAPE(2, 6, 1, 19), &x4, NULL);
  nq_tensor_view_reshape(&w, 4, NQ_SHAPE(4, 3, 1, 5), &w4, NULL);
  int p[6] = {1, 2, 0, 3, 1, 2};
  double *want = malloc(sizeof(double) * (size_t)nq_tensor_numel(&y));
  conv2d_naive(&x4, &w4, &b, p, 2, 1, Lo, want);
  cr_assert_lt(rel_l2_d(&y, want), 1e-6);
  free(want);
  nq_tensor_deinit(&x), nq_tensor_deinit(&w), nq_tensor_deinit(&b), nq_tensor_deinit(&y);
  nq_exec_free(ex);
}

Test(compute_conv, ref_groupnorm_and_upsample_closed_form) {
  nq_err_t err = {0};
  nq_exec_t *ex = nq_exec_new("ref", NULL, &err);
  const int64_t N = 2, C = 6, H = 3, W = 5, G = 3, S = H * W;
  nq_tensor_t x = mk(NQ_DT_F32, 4, NQ_SHAPE(N, C, H, W)), y = mk(NQ_DT_F32, 4, NQ_SHAPE(N, C, H, W)),
              ga = mk(NQ_DT_F32, 1, NQ_SHAPE(C)), be = mk(NQ_DT_F32, 1, NQ_SHAPE(C));
  fill(&x, 3), fill(&ga, 1), fill(&be, 1);
  for (int64_t i = 0; i < nq_tensor_numel(&x); i++) ((float *)x.data)[i] += 5.0f; /* non-zero mean */
  cr_assert_eq(nq_op_groupnorm(ex, &y, &x, &ga, &be, (int)G, 1e-6f, &err), 0, "%s", err.msg);
  const float *X = x.data, *Y = y.data, *Ga = ga.data, *Be = be.data;
  for (int64_t n = 0; n < N; n++)
    for (int64_t g = 0; g < G; g++) {
      const int64_t cpg = C / G, base = (n * C + g * cpg) * S;
      double m = 0, v = 0;
      for (int64_t i = 0; i < cpg * S; i++) m += X[base + i];
      m /= (double)(cpg * S);
      for (int64_t i = 0; i < cpg * S; i++) v += (X[base + i] - m) * (X[base + i] - m);
      v /= (double)(cpg * S);
      for (int64_t i = 0; i < cpg * S; i++) {
        int64_t ch = g * cpg + i / S;
        double want = (X[base + i] - m) / sqrt(v + 1e-6) * Ga[ch] + Be[ch];
        cr_assert_float_eq(Y[base + i], want, 1e-5, "n%lld g%lld i%lld", (long long)n, (long long)g, (long long)i);
      }
    }
  /* in place, no affine: every group has mean 0 and variance ~1 */
  cr_assert_eq(nq_op_groupnorm(ex, &x, &x, NULL, NULL, (int)G, 0.0f, &err), 0, "%s", err.msg);
  for (int64_t grp = 0; grp < N * G; grp++) {
    double m = 0, v = 0;
    for (int64_t i = 0; i < 2 * S; i++) m += X[grp * 2 * S + i];
    for (int64_t i = 0; i < 2 * S; i++) v += X[grp * 2 * S + i] * X[grp * 2 * S + i];
    cr_assert_float_eq(m / (2 * S), 0.0, 1e-5);
    cr_assert_float_eq(v / (2 * S), 1.0, 1e-4);
  }
  nq_tensor_t u = mk(NQ_DT_F32, 4, NQ_SHAPE(N, C, H * 3, W * 3));
  cr_assert_eq(nq_op_upsample_nearest(ex, &u, &y, 3, &err), 0, "%s", err.msg);
  for (int64_t nc = 0; nc < N * C; nc++)
    for (int64_t oy = 0; oy < H * 3; oy++)
      for (int64_t ox = 0; ox < W * 3; ox++)
        cr_assert_eq(((float *)u.data)[(nc * H * 3 + oy) * W * 3 + ox], Y[(nc * H + oy / 3) * W + ox / 3]);
  nq_tensor_deinit(&x), nq_tensor_deinit(&y), nq_tensor_deinit(&ga), nq_tensor_deinit(&be), nq_tensor_deinit(&u);
  nq_exec_free(ex);
}

/* ---- every backend vs the reference ---- */

Test(compute_conv, conv2d_all_backends_dtypes) {
  nq_err_t err = {0};
  nq_backend_t *ref = nq_backend_ref_new(&err);
  nq_dtype_t dts[] = {NQ_DT_F32, NQ_DT_BF16, NQ_DT_F16};
  int ran = 0;
  for (size_t bk = 0; bk < sizeof k_backends / sizeof *k_backends; bk++) {
    nq_backend_t *be = nq_backend_new_by_name(k_backends[bk], NULL, &err);
    if (!be) continue;
    for (size_t t = 0; t < sizeof k_conv_cases / sizeof *k_conv_cases; t++)
      for (int dt = 0; dt < 3; dt++) {
        const int *c = k_conv_cases[t];
        int64_t Ho = out_dim(c[2], c[5], c[7], c[9], c[11]), Wo = out_dim(c[3], c[6], c[8], c[10], c[12]);
        nq_tensor_t x = mk(NQ_DT_F32, 4, NQ_SHAPE(c[0], c[1], c[2], c[3])),
                    w = mk(dts[dt], 4, NQ_SHAPE(c[4], c[1] / c[13], c[5], c[6])), b = mk(NQ_DT_F32, 1, NQ_SHAPE(c[4])),
                    y1 = mk(NQ_DT_F32, 4, NQ_SHAPE(c[0], c[4], Ho, Wo)),
                    y2 = mk(NQ_DT_F32, 4, NQ_SHAPE(c[0], c[4], Ho, Wo));
        fill(&x, 1), fill(&w, 1), fill(&b, 1);
        nq_op_desc_t d = {.op = NQ_OP_CONV2D,
                          .src = {&x, &w, (t & 1) ? &b : NULL},
                          .i = {c[7], c[8], c[9], c[10], c[11], c[12], c[13]}};
        double r = run_pair(be, ref, &d, &y1, &y2);
        if (r >= 0) {
          cr_assert_lt(r, 1e-5, "%s case %zu dtype %s: rel_l2 %g", be->iface->name, t, nq_dtype_name(dts[dt]), r);
          ran++;
        }
        nq_tensor_deinit(&x), nq_tensor_deinit(&w), nq_tensor_deinit(&b), nq_tensor_deinit(&y1), nq_tensor_deinit(&y2);
      }
    nq_backend_free(be);
  }
  cr_assert_geq(ran, 30, "only %d backend runs", ran); /* cpu at least */
  nq_backend_free(ref);
}

Test(compute_conv, conv1d_and_transpose_all_backends) {
  nq_err_t err = {0};
  nq_backend_t *ref = nq_backend_ref_new(&err);
  int ran = 0;
  for (size_t bk = 0; bk < sizeof k_backends / sizeof *k_backends; bk++) {
    nq_backend_t *be = nq_backend_new_by_name(k_backends[bk], NULL, &err);
    if (!be) continue;
    for (size_t t = 0; t < sizeof k_convt_cases / sizeof *k_convt_cases; t++) {
      const int *c = k_convt_cases[t];
      int64_t Lo = (int64_t)(c[2] - 1) * c[5] - 2 * c[6] + c[8] * (c[4] - 1) + c[7] + 1;
      nq_tensor_t x = mk(NQ_DT_F32, 3, NQ_SHAPE(c[0], c[1], c[2])),
                  w = mk(t % 2 ? NQ_DT_BF16 : NQ_DT_F32, 3, NQ_SHAPE(c[1], c[3] / c[9], c[4])),
                  b = mk(NQ_DT_F32, 1, NQ_SHAPE(c[3])), y1 = mk(NQ_DT_F32, 3, NQ_SHAPE(c[0], c[3], Lo)),
                  y2 = mk(NQ_DT_F32, 3, NQ_SHAPE(c[0], c[3], Lo));
      fill(&x, 1), fill(&w, 1), fill(&b, 1);
      nq_op_desc_t d = {.op = NQ_OP_CONV_TRANSPOSE1D,
                        .src = {&x, &w, (t % 3) ? &b : NULL},
                        .i = {c[5], c[6], c[7], c[8], c[9]}};
      double r = run_pair(be, ref, &d, &y1, &y2);
      if (r >= 0) {
        cr_assert_lt(r, 1e-5, "%s convt case %zu: rel_l2 %g", be->iface->name, t, r);
        ran++;
      }
      nq_tensor_deinit(&x), nq_tensor_deinit(&w), nq_tensor_deinit(&b), nq_tensor_deinit(&y1), nq_tensor_deinit(&y2);
    }
    nq_backend_free(be);
  }
  cr_assert_geq(ran, 6);
  /* conv1d through two executors (its 4-d views must reach every backend the same way) */
  nq_exec_t *exr = nq_exec_new("ref", NULL, &err);
  for (size_t bk = 0; bk < sizeof k_backends / sizeof *k_backends; bk++) {
    char spec[32];
    snprintf(spec, sizeof spec, "%s?", k_backends[bk]);
    nq_exec_t *ex = nq_exec_new(spec, NULL, &err);
    cr_assert(ex, "%s", err.msg);
    nq_tensor_t x = mk(NQ_DT_F32, 3, NQ_SHAPE(3, 10, 101)), w = mk(NQ_DT_F16, 3, NQ_SHAPE(12, 5, 7)),
                b = mk(NQ_DT_F32, 1, NQ_SHAPE(12));
    fill(&x, 1), fill(&w, 1), fill(&b, 1);
    int64_t Lo = out_dim(101, 7, 3, 9, 3);
    nq_tensor_t y1 = mk(NQ_DT_F32, 3, NQ_SHAPE(3, 12, Lo)), y2 = mk(NQ_DT_F32, 3, NQ_SHAPE(3, 12, Lo));
    cr_assert_eq(nq_op_conv1d(ex, &y1, &x, &w, &b, 3, 9, 3, 2, &err), 0, "%s", err.msg);
    cr_assert_eq(nq_op_conv1d(exr, &y2, &x, &w, &b, 3, 9, 3, 2, &err), 0, "%s", err.msg);
    cr_assert_lt(rel_l2(&y1, &y2), 1e-5, "conv1d via %s", spec);
    nq_tensor_deinit(&x), nq_tensor_deinit(&w), nq_tensor_deinit(&b), nq_tensor_deinit(&y1), nq_tensor_deinit(&y2);
    nq_exec_free(ex);
  }
  nq_exec_free(exr);
  nq_backend_free(ref);
}

Test(compute_conv, groupnorm_upsample_all_backends) {
  nq_err_t err = {0};
  nq_backend_t *ref = nq_backend_ref_new(&err);
  const int64_t shapes[][5] = {{1, 32, 7, 9, 32}, {2, 12, 5, 1, 4}, {3, 6, 1, 1, 3}, {1, 64, 16, 15, 32}};
  for (size_t bk = 0; bk < sizeof k_backends / sizeof *k_backends; bk++) {
    nq_backend_t *be = nq_backend_new_by_name(k_backends[bk], NULL, &err);
    if (!be) continue;
    for (size_t t = 0; t < sizeof shapes / sizeof *shapes; t++) {
      const int64_t *s = shapes[t];
      nq_tensor_t x = mk(NQ_DT_F32, 4, NQ_SHAPE(s[0], s[1], s[2], s[3])), g = mk(NQ_DT_F32, 1, NQ_SHAPE(s[1])),
                  b = mk(NQ_DT_F32, 1, NQ_SHAPE(s[1])), y1 = mk(NQ_DT_F32, 4, NQ_SHAPE(s[0], s[1], s[2], s[3])),
                  y2 = mk(NQ_DT_F32, 4, NQ_SHAPE(s[0], s[1], s[2], s[3]));
      fill(&x, 2), fill(&g, 1), fill(&b, 1);
      nq_op_desc_t d = {.op = NQ_OP_GROUPNORM, .src = {&x, &g, t % 2 ? NULL : &b}, .f = {1e-5f}, .i = {s[4]}};
      double r = run_pair(be, ref, &d, &y1, &y2);
      if (r >= 0) cr_assert_lt(r, 1e-6, "%s groupnorm case %zu: %g", be->iface->name, t, r);
      nq_tensor_t u1 = mk(NQ_DT_F32, 4, NQ_SHAPE(s[0], s[1], s[2] * 2, s[3] * 2)),
                  u2 = mk(NQ_DT_F32, 4, NQ_SHAPE(s[0], s[1], s[2] * 2, s[3] * 2));
      nq_op_desc_t du = {.op = NQ_OP_UPSAMPLE_NEAREST, .src = {&x}, .i = {2}};
      r = run_pair(be, ref, &du, &u1, &u2);
      if (r >= 0) cr_assert_eq(r, 0.0, "%s upsample case %zu: %g", be->iface->name, t, r);
      nq_tensor_deinit(&x), nq_tensor_deinit(&g), nq_tensor_deinit(&b), nq_tensor_deinit(&y1), nq_tensor_deinit(&y2);
      nq_tensor_deinit(&u1), nq_tensor_deinit(&u2);
    }
    nq_backend_free(be);
  }
  nq_backend_free(ref);
}

Test(compute_conv, shape_errors) {
  nq_err_t err = {0};
  nq_exec_t *ex = nq_exec_new("auto", NULL, &err);
  nq_tensor_t x = mk(NQ_DT_F32, 4, NQ_SHAPE(1, 6, 8, 8)), w = mk(NQ_DT_F32, 4, NQ_SHAPE(4, 3, 3, 3)),
              y = mk(NQ_DT_F32, 4, NQ_SHAPE(1, 4, 8, 8)), ybad = mk(NQ_DT_F32, 4, NQ_SHAPE(1, 4, 7, 8));
  cr_assert_eq(nq_op_conv2d(ex, &y, &x, &w, NULL, 1, 1, 1, 1, 1, 1, 2, &err), 0, "%s", err.msg);
  cr_assert_eq(nq_op_conv2d(ex, &ybad, &x, &w, NULL, 1, 1, 1, 1, 1, 1, 2, &err), NQ_ESHAPE);
  cr_assert(strstr(err.msg, "conv2d"), "%s", err.msg);
  cr_assert_eq(nq_op_conv2d(ex, &y, &x, &w, NULL, 1, 1, 1, 1, 1, 1, 1, &err), NQ_ESHAPE); /* Ci/g mismatch */
  cr_assert_eq(nq_op_conv2d(ex, &y, &x, &w, NULL, 0, 1, 1, 1, 1, 1, 2, &err), NQ_EINVAL); /* stride 0 */
  cr_assert_eq(nq_op_conv2d(ex, &y, &x, &w, NULL, 1, 1, 1, 1, 1, 1, 4, &err), NQ_EINVAL); /* 6 % 4 */
  cr_assert_eq(nq_op_groupnorm(ex, &x, &x, NULL, NULL, 4, 1e-5f, &err), NQ_ESHAPE);
  cr_assert_eq(nq_op_upsample_nearest(ex, &x, &x, 2, &err), NQ_ESHAPE);
  nq_tensor_t x3 = mk(NQ_DT_F32, 3, NQ_SHAPE(1, 6, 5)), wt = mk(NQ_DT_F32, 3, NQ_SHAPE(6, 2, 4)),
              yt = mk(NQ_DT_F32, 3, NQ_SHAPE(1, 2, 12)), ytbad = mk(NQ_DT_F32, 3, NQ_SHAPE(1, 2, 11));
  cr_assert_eq(nq_op_conv_transpose1d(ex, &yt, &x3, &wt, NULL, 2, 0, 0, 1, 1, &err), 0, "%s", err.msg);
  cr_assert_eq(nq_op_conv_transpose1d(ex, &ytbad, &x3, &wt, NULL, 2, 0, 0, 1, 1, &err), NQ_ESHAPE);
  cr_assert_eq(nq_op_conv_transpose1d(ex, &yt, &x3, &wt, NULL, 2, 0, 2, 1, 1, &err), NQ_ESHAPE); /* opad >= s,d */
  cr_assert_eq(nq_op_conv1d(ex, &yt, &x, &wt, NULL, 1, 0, 1, 1, &err), NQ_ESHAPE);                /* 4-d x */
  nq_tensor_deinit(&x), nq_tensor_deinit(&w), nq_tensor_deinit(&y), nq_tensor_deinit(&ybad);
  nq_tensor_deinit(&x3), nq_tensor_deinit(&wt), nq_tensor_deinit(&yt), nq_tensor_deinit(&ytbad);
  nq_exec_free(ex);
}

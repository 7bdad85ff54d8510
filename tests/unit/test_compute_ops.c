/* Every op on every built backend vs the reference backend, random shapes incl. odd sizes. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "compute/core/ops.h"

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static float frand(void) { /* uniform [-1, 1) */
  g_rng ^= g_rng << 13, g_rng ^= g_rng >> 7, g_rng ^= g_rng << 17;
  return (float)((g_rng >> 40) * (1.0 / 16777216.0)) * 2.0f - 1.0f;
}
static int irand(int lo, int hi) { return lo + (int)((frand() + 1.0f) * 0.5f * (float)(hi - lo + 1)) % (hi - lo + 1); }

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

static const char *k_backends[] = {"cpu", "openblas", "onednn", "cuda"};

/* Runs op on be and on ref with separate dst tensors; returns rel_l2 or -1 if unsupported. */
static double run_pair(nq_backend_t *be, nq_backend_t *ref, nq_op_desc_t *d, nq_tensor_t *dst_be, nq_tensor_t *dst_ref) {
  nq_err_t err = {0};
  d->dst = dst_be;
  cr_assert_eq(nq_op_check(d, &err), 0, "%s: %s", nq_op_name(d->op), err.msg);
  if (!be->iface->supports_op(be, d)) return -1;
  cr_assert_eq(be->iface->compute(be, d, &err), 0, "%s on %s: %s", nq_op_name(d->op), be->iface->name, err.msg);
  d->dst = dst_ref;
  cr_assert_eq(ref->iface->compute(ref, d, &err), 0, "ref %s: %s", nq_op_name(d->op), err.msg);
  return rel_l2(dst_be, dst_ref);
}

Test(compute_ops, linear_all_backends_dtypes) {
  nq_err_t err = {0};
  nq_backend_t *ref = nq_backend_ref_new(&err);
  int shapes[][3] = {{1, 7, 5}, {1, 64, 33}, {3, 17, 129}, {16, 96, 40}, {33, 130, 65}, {64, 256, 128}, {2, 8, 8}};
  nq_dtype_t dts[] = {NQ_DT_F32, NQ_DT_BF16, NQ_DT_F16};
  int ran = 0;
  for (size_t b = 0; b < sizeof k_backends / sizeof *k_backends; b++) {
    nq_backend_t *be = nq_backend_new_by_name(k_backends[b], NULL, &err);
    if (!be) continue; /* not built */
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
      for (size_t t = 0; t < 3; t++)
        for (int with_bias = 0; with_bias < 2; with_bias++) {
          int M = shapes[s][0], K = shapes[s][1], N = shapes[s][2];
          nq_tensor_t x, w, bias, y1, y2;
          nq_tensor_init(&x, NQ_DT_F32, 2, NQ_SHAPE(M, K), &err);
          nq_tensor_init(&w, dts[t], 2, NQ_SHAPE(N, K), &err);
          nq_tensor_init(&bias, NQ_DT_F32, 1, NQ_SHAPE(N), &err);
          nq_tensor_init(&y1, NQ_DT_F32, 2, NQ_SHAPE(M, N), &err);
          nq_tensor_init(&y2, NQ_DT_F32, 2, NQ_SHAPE(M, N), &err);
          fill(&x, 1), fill(&w, 0.5f), fill(&bias, 1);
          nq_linear_t lin;
          nq_linear_init(&lin, &w, with_bias ? &bias : NULL);
          nq_op_desc_t d = {.op = NQ_OP_LINEAR, .src = {&x}, .lin = &lin};
          if (be->iface->supports_op(be, &d) && be->iface->linear_pack) {
            cr_assert_eq(be->iface->linear_pack(be, &lin, &err), 0, "%s pack: %s", k_backends[b], err.msg);
          }
          double r = run_pair(be, ref, &d, &y1, &y2);
          /* oneDNN bf16 and cuda (bf16 weights stay bf16) round activations to bf16 too */
          double tol = (dts[t] == NQ_DT_BF16 && (!strcmp(k_backends[b], "onednn") || !strcmp(k_backends[b], "cuda")))
                           ? 1e-2
                           : 2e-6 * sqrt(K);
          if (r >= 0) {
            ran++;
            cr_expect_leq(r, tol, "linear %s %s M%d K%d N%d bias%d: rel_l2 %g", k_backends[b], nq_dtype_name(dts[t]), M,
                          K, N, with_bias, r);
          }
          for (int i = 0; i < NQ_BK_COUNT; i++)
            if (lin.packed[i]) lin.packed_free[i](lin.packed[i]);
          nq_tensor_deinit(&x), nq_tensor_deinit(&w), nq_tensor_deinit(&bias), nq_tensor_deinit(&y1),
              nq_tensor_deinit(&y2);
        }
    nq_backend_free(be);
  }
  cr_assert_gt(ran, 40, "only %d linear comparisons ran", ran);
  nq_backend_free(ref);
}

Test(compute_ops, rowwise_all_backends) {
  nq_err_t err = {0};
  nq_backend_t *ref = nq_backend_ref_new(&err);
  nq_op_t ops[] = {NQ_OP_RMSNORM, NQ_OP_LAYERNORM, NQ_OP_SOFTMAX, NQ_OP_SILU, NQ_OP_GELU, NQ_OP_GELU_TANH,
                   NQ_OP_QUICK_GELU, NQ_OP_ADD, NQ_OP_MUL, NQ_OP_SWIGLU, NQ_OP_ROPE};
  int ran = 0;
  for (size_t b = 0; b < sizeof k_backends / sizeof *k_backends; b++) {
    nq_backend_t *be = nq_backend_new_by_name(k_backends[b], NULL, &err);
    if (!be) continue;
    for (size_t o = 0; o < sizeof ops / sizeof *ops; o++)
      for (int trial = 0; trial < 6; trial++) {
        int rows = irand(1, 37), hd = 2 * irand(1, 20), heads = irand(1, 5);
        int len = ops[o] == NQ_OP_ROPE ? hd * heads : irand(1, 300);
        nq_tensor_t x, x2, g, bt, pos, y1, y2;
        nq_tensor_init(&x, NQ_DT_F32, 2, NQ_SHAPE(rows, len), &err);
        int brows = (trial & 1) ? 1 : rows; /* broadcast one row on odd trials */
        nq_tensor_init(&x2, NQ_DT_F32, 2, NQ_SHAPE(brows, len), &err);
        nq_tensor_init(&g, NQ_DT_F32, 1, NQ_SHAPE(len), &err);
        nq_tensor_init(&bt, NQ_DT_F32, 1, NQ_SHAPE(len), &err);
        nq_tensor_init(&pos, NQ_DT_I32, 1, NQ_SHAPE(rows), &err);
        nq_tensor_init(&y1, NQ_DT_F32, 2, NQ_SHAPE(rows, len), &err);
        nq_tensor_init(&y2, NQ_DT_F32, 2, NQ_SHAPE(rows, len), &err);
        fill(&x, 4), fill(&x2, 2), fill(&g, 1), fill(&bt, 1);
        for (int r = 0; r < rows; r++) ((int32_t *)pos.data)[r] = irand(0, 2000);
        nq_op_desc_t d = {.op = ops[o], .src = {&x}};
        switch (ops[o]) {
          case NQ_OP_RMSNORM: d.src[1] = (trial & 2) ? NULL : &g, d.f[0] = 1e-5f; break;
          case NQ_OP_LAYERNORM: d.src[1] = &g, d.src[2] = (trial & 2) ? NULL : &bt, d.f[0] = 1e-5f; break;
          case NQ_OP_SOFTMAX: d.f[0] = 0.37f; break;
          case NQ_OP_ADD:
          case NQ_OP_MUL:
          case NQ_OP_SWIGLU: d.src[1] = &x2; break;
          case NQ_OP_ROPE:
            d.src[1] = &pos, d.f[0] = 10000.0f, d.i[0] = hd, d.i[1] = trial % 2, d.i[2] = (trial & 2) ? hd / 2 * 2 : hd;
            if (d.i[2] % 2) d.i[2]--;
            if (d.i[2] <= 0) d.i[2] = 2;
            break;
          default: break;
        }
        double r = run_pair(be, ref, &d, &y1, &y2);
        if (r >= 0) {
          ran++;
          cr_expect_leq(r, 1e-6, "%s on %s rows %d len %d: rel_l2 %g", nq_op_name(ops[o]), k_backends[b], rows, len, r);
        }
        nq_tensor_deinit(&x), nq_tensor_deinit(&x2), nq_tensor_deinit(&g), nq_tensor_deinit(&bt),
            nq_tensor_deinit(&pos), nq_tensor_deinit(&y1), nq_tensor_deinit(&y2);
      }
    nq_backend_free(be);
  }
  cr_assert_gt(ran, 50);
  nq_backend_free(ref);
}

/* Attention on random q/k/v ([T, H*hd], [S, KV*hd]) on backend be against ref: rel_l2, or < 0 if unsupported. */
static double attn_pair(nq_backend_t *be, nq_backend_t *ref, int T, int S, int H, int KV, int hd, int pos0,
                        int causal) {
  nq_err_t err = {0};
  nq_tensor_t q, k, v, y1, y2;
  nq_tensor_init(&q, NQ_DT_F32, 2, NQ_SHAPE(T, H * hd), &err);
  nq_tensor_init(&k, NQ_DT_F32, 2, NQ_SHAPE(S, KV * hd), &err);
  nq_tensor_init(&v, NQ_DT_F32, 2, NQ_SHAPE(S, KV * hd), &err);
  nq_tensor_init(&y1, NQ_DT_F32, 2, NQ_SHAPE(T, H * hd), &err);
  nq_tensor_init(&y2, NQ_DT_F32, 2, NQ_SHAPE(T, H * hd), &err);
  fill(&q, 2), fill(&k, 2), fill(&v, 1);
  nq_op_desc_t d = {.op = NQ_OP_ATTENTION, .src = {&q, &k, &v}, .f = {1.0f / sqrtf((float)hd)},
                    .i = {H, KV, pos0, causal}};
  double r = run_pair(be, ref, &d, &y1, &y2);
  nq_tensor_deinit(&q), nq_tensor_deinit(&k), nq_tensor_deinit(&v), nq_tensor_deinit(&y1), nq_tensor_deinit(&y2);
  return r;
}

Test(compute_ops, attention_embed_all_backends) {
  nq_err_t err = {0};
  nq_backend_t *ref = nq_backend_ref_new(&err);
  int ran = 0;
  for (size_t b = 0; b < sizeof k_backends / sizeof *k_backends; b++) {
    nq_backend_t *be = nq_backend_new_by_name(k_backends[b], NULL, &err);
    if (!be) continue;
    for (int trial = 0; trial < 8; trial++) {
      int KV = irand(1, 3), group = irand(1, 3), H = KV * group, hd = irand(1, 24), T = irand(1, 9),
          pos0 = irand(0, 20), causal = trial % 3 != 2, S = pos0 + T + (causal ? 0 : irand(0, 5));
      double r = attn_pair(be, ref, T, S, H, KV, hd, pos0, causal);
      if (r >= 0) {
        ran++;
        cr_expect_leq(r, 1e-6, "attention on %s: %g", k_backends[b], r);
      }
    }
    nq_dtype_t dts[] = {NQ_DT_F32, NQ_DT_BF16, NQ_DT_F16};
    for (int t = 0; t < 3; t++) {
      int V = irand(2, 50), D = irand(1, 70), T = irand(1, 12);
      nq_tensor_t tab, ids, y1, y2;
      nq_tensor_init(&tab, dts[t], 2, NQ_SHAPE(V, D), &err);
      nq_tensor_init(&ids, NQ_DT_I32, 1, NQ_SHAPE(T), &err);
      nq_tensor_init(&y1, NQ_DT_F32, 2, NQ_SHAPE(T, D), &err);
      nq_tensor_init(&y2, NQ_DT_F32, 2, NQ_SHAPE(T, D), &err);
      fill(&tab, 1);
      for (int i = 0; i < T; i++) ((int32_t *)ids.data)[i] = irand(0, V - 1);
      nq_op_desc_t d = {.op = NQ_OP_EMBED, .src = {&tab, &ids}};
      double r = run_pair(be, ref, &d, &y1, &y2);
      if (r >= 0) {
        ran++;
        cr_expect_eq(r, 0.0, "embed %s on %s: %g", nq_dtype_name(dts[t]), k_backends[b], r);
      }
      nq_tensor_deinit(&tab), nq_tensor_deinit(&ids), nq_tensor_deinit(&y1), nq_tensor_deinit(&y2);
    }
    nq_backend_free(be);
  }
  cr_assert_gt(ran, 8);
  nq_backend_free(ref);
}

/* The reference itself against closed forms, so the comparisons above are anchored. */
Test(compute_ops, reference_closed_forms) {
  nq_err_t err = {0};
  nq_exec_t *ex = nq_exec_new("ref", NULL, &err);
  cr_assert(ex, "%s", err.msg);
  float xv[4] = {1, -2, 3, 0.5f}, yv[4];
  nq_tensor_t x, y;
  nq_tensor_init_borrowed(&x, NQ_DT_F32, 2, NQ_SHAPE(1, 4), xv);
  nq_tensor_init_borrowed(&y, NQ_DT_F32, 2, NQ_SHAPE(1, 4), yv);
  cr_assert_eq(nq_op_rmsnorm(ex, &y, &x, NULL, 0.0f, &err), 0);
  float rms = sqrtf((1 + 4 + 9 + 0.25f) / 4);
  for (int i = 0; i < 4; i++) cr_expect_float_eq(yv[i], xv[i] / rms, 1e-6);
  cr_assert_eq(nq_op_unary(ex, NQ_OP_GELU, &y, &x, &err), 0);
  cr_expect_float_eq(yv[0], 0.8413447460685429f, 1e-6); /* 1 * Phi(1) */
  cr_expect_float_eq(yv[1], -0.04550026389635842f, 1e-6);
  cr_assert_eq(nq_op_unary(ex, NQ_OP_GELU_TANH, &y, &x, &err), 0);
  cr_expect_float_eq(yv[0], 0.8411919906082768f, 1e-6);
  cr_assert_eq(nq_op_unary(ex, NQ_OP_QUICK_GELU, &y, &x, &err), 0);
  cr_expect_float_eq(yv[0], 1.0f / (1.0f + expf(-1.702f)), 1e-6);
  cr_assert_eq(nq_op_softmax(ex, &y, &x, 1.0f, &err), 0);
  double s = exp(1) + exp(-2) + exp(3) + exp(0.5);
  cr_expect_float_eq(yv[2], exp(3) / s, 1e-6);
  /* rope: position 1, head_dim 4: interleaved pairs (0,1),(2,3) with freqs 1, 1/100 */
  int32_t pv = 1;
  nq_tensor_t pos;
  nq_tensor_init_borrowed(&pos, NQ_DT_I32, 1, NQ_SHAPE(1), &pv);
  cr_assert_eq(nq_op_rope(ex, &y, &x, &pos, 4, 4, NQ_ROPE_INTERLEAVED, 10000.0f, &err), 0);
  cr_expect_float_eq(yv[0], 1 * cosf(1) - (-2) * sinf(1), 1e-6);
  cr_expect_float_eq(yv[3], 3 * sinf(0.01f) + 0.5f * cosf(0.01f), 1e-6);
  cr_assert_eq(nq_op_rope(ex, &y, &x, &pos, 4, 4, NQ_ROPE_HALF, 10000.0f, &err), 0);
  cr_expect_float_eq(yv[0], 1 * cosf(1) - 3 * sinf(1), 1e-6);  /* pair (0, 2) */
  cr_expect_float_eq(yv[3], 0.5f * cosf(0.01f) + (-2) * sinf(0.01f), 1e-6); /* pair (1, 3) */
  /* shape errors are reported, not asserted */
  nq_tensor_t bad;
  float bv[3];
  nq_tensor_init_borrowed(&bad, NQ_DT_F32, 2, NQ_SHAPE(1, 3), bv);
  cr_expect_eq(nq_op_rmsnorm(ex, &bad, &x, NULL, 1e-5f, &err), NQ_ESHAPE);
  nq_exec_free(ex);
}

/* The cpu backend's vectorised softmax (kernels_fast.c: polynomial exp, 8-lane sums) against double precision on
 * long rows spanning the whole exp range, masked (-inf) entries and row lengths around the vector width. */
Test(compute_ops, fast_softmax_vs_double) {
  nq_err_t err = {0};
  nq_exec_t *ex = nq_exec_new("cpu", NULL, &err);
  cr_assert(ex, "%s", err.msg);
  const int lens[] = {1, 7, 8, 15, 16, 17, 33, 300, 4096, 5003};
  for (size_t li = 0; li < sizeof lens / sizeof *lens; li++) {
    int n = lens[li];
    for (int trial = 0; trial < 3; trial++) {
      float spread = trial == 0 ? 1.0f : trial == 1 ? 30.0f : 200.0f, scale = 0.9f;
      nq_tensor_t x, y;
      nq_tensor_init(&x, NQ_DT_F32, 2, NQ_SHAPE(2, n), &err);
      nq_tensor_init(&y, NQ_DT_F32, 2, NQ_SHAPE(2, n), &err);
      float *xv = x.data, *yv = y.data;
      for (int i = 0; i < 2 * n; i++) xv[i] = spread * (2.0f * (float)rand() / (float)RAND_MAX - 1.0f);
      for (int i = 3; i < n; i += 5) xv[n + i] = -INFINITY; /* row 1: a mask */
      cr_assert_eq(nq_op_softmax(ex, &y, &x, scale, &err), 0, "%s", err.msg);
      for (int r = 0; r < 2; r++) {
        double mx = -INFINITY, sum = 0;
        for (int i = 0; i < n; i++) mx = fmax(mx, (double)xv[r * n + i] * scale);
        for (int i = 0; i < n; i++) sum += exp((double)xv[r * n + i] * scale - mx);
        for (int i = 0; i < n; i++) {
          double xs = (double)xv[r * n + i] * scale, want = exp(xs - mx) / sum, got = yv[r * n + i];
          /* float rounding of the argument x * scale - max alone costs ~6e-8 * (|x s| + |max| + |arg|) relative */
          double tol = isinf(xs) ? 0 : 2e-6 + 1e-7 * (fabs(xs) + fabs(mx) + fabs(xs - mx));
          cr_expect_leq(fabs(got - want), tol * want + 1e-37, "n %d spread %g row %d [%d]: %.9g want %.9g", n,
                        (double)spread, r, i, got, want);
        }
      }
      nq_tensor_deinit(&x), nq_tensor_deinit(&y);
    }
  }
  nq_exec_free(ex);
}

/* Many query rows: the cpu backend runs attention as per-head GEMMs on strided views (host.c, >= 32 rows and keys);
 * against the reference per-row loop, causal with an offset and not, grouped-query heads, odd head sizes. */
Test(compute_ops, attention_long_sequences_gemm_path) {
  nq_err_t err = {0};
  nq_backend_t *ref = nq_backend_ref_new(&err), *cpu = nq_backend_cpu_new(NULL, &err);
  cr_assert(ref && cpu, "%s", err.msg);
  const int cases[][6] = {/* T, S extra, H, KV, hd, causal */
                          {32, 0, 1, 1, 8, 1},   {100, 0, 4, 2, 17, 1}, {64, 37, 2, 2, 40, 1},
                          {300, 0, 8, 8, 40, 0}, {77, 5, 3, 1, 64, 0},  {513, 0, 1, 1, 33, 1}};
  for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
    int T = cases[c][0], pos0 = cases[c][1], H = cases[c][2], KV = cases[c][3], hd = cases[c][4],
        causal = cases[c][5], S = causal ? pos0 + T : T + pos0 + 11;
    double r = attn_pair(cpu, ref, T, S, H, KV, hd, pos0, causal);
    cr_expect(r >= 0 && r <= 2e-6, "attention T %d S %d H %d KV %d hd %d causal %d: rel_l2 %g", T, S, H, KV, hd, causal,
              r);
  }
  nq_backend_free(cpu), nq_backend_free(ref);
}

/* The cuda backend's chunked paths -- attention in query blocks, conv2d in im2col row blocks -- on small shapes: the
 * block size is made tiny through NQ_CUDA_CHUNK_FLOATS (read when the backend is made). Skipped without a GPU. */
Test(compute_ops, cuda_chunked_paths) {
  nq_err_t err = {0};
  setenv("NQ_CUDA_CHUNK_FLOATS", "600", 1);
  nq_backend_t *be = nq_backend_cuda_new(NULL, &err);
  unsetenv("NQ_CUDA_CHUNK_FLOATS");
  if (!be) cr_skip_test("cuda: %s", err.msg);
  nq_backend_t *ref = nq_backend_ref_new(&err);
  /* 600 / (4 heads * 45 keys) = 3 query rows per block: 13 blocks, causal limits across block edges */
  for (int causal = 0; causal < 2; causal++) {
    double r = attn_pair(be, ref, 37, 45, 4, 2, 16, causal ? 8 : 0, causal);
    cr_assert_geq(r, 0, "cuda does not run attention");
    cr_expect_leq(r, 1e-6, "chunked attention causal %d: rel_l2 %g", causal, r);
  }
  for (int g = 1; g <= 2; g++) { /* 600 / (27 * 13) = 1 output row per im2col block */
    int N = 2, Ci = 6, Co = 4, H = 13, k = 3;
    nq_tensor_t x, w, b, y1, y2;
    nq_tensor_init(&x, NQ_DT_F32, 4, NQ_SHAPE(N, Ci, H, H), &err);
    nq_tensor_init(&w, NQ_DT_BF16, 4, NQ_SHAPE(Co, Ci / g, k, k), &err);
    nq_tensor_init(&b, NQ_DT_F32, 1, NQ_SHAPE(Co), &err);
    nq_tensor_init(&y1, NQ_DT_F32, 4, NQ_SHAPE(N, Co, H, H), &err);
    nq_tensor_init(&y2, NQ_DT_F32, 4, NQ_SHAPE(N, Co, H, H), &err);
    fill(&x, 1), fill(&w, 0.5f), fill(&b, 1);
    nq_op_desc_t d = {.op = NQ_OP_CONV2D, .src = {&x, &w, &b}, .i = {1, 1, 1, 1, 1, 1, g}};
    double r = run_pair(be, ref, &d, &y1, &y2);
    cr_assert_geq(r, 0, "cuda does not run conv2d");
    cr_expect_leq(r, 1e-6, "chunked conv2d groups %d: rel_l2 %g", g, r);
    nq_tensor_deinit(&x), nq_tensor_deinit(&w), nq_tensor_deinit(&b), nq_tensor_deinit(&y1), nq_tensor_deinit(&y2);
  }
  /* copies of several pinned staging chunks (8 MiB each) both ways: 1100x2048 f32 = 9 MiB in, 9 MiB out; against
   * the cpu backend (the reference's scalar loops would take long here; cpu is checked against it above) */
  nq_backend_t *cpu = nq_backend_cpu_new(NULL, &err);
  int M = 1100, K = 2048, N = 2048;
  nq_tensor_t x, w, y1, y2;
  nq_tensor_init(&x, NQ_DT_F32, 2, NQ_SHAPE(M, K), &err);
  nq_tensor_init(&w, NQ_DT_F32, 2, NQ_SHAPE(N, K), &err);
  nq_tensor_init(&y1, NQ_DT_F32, 2, NQ_SHAPE(M, N), &err);
  nq_tensor_init(&y2, NQ_DT_F32, 2, NQ_SHAPE(M, N), &err);
  fill(&x, 1), fill(&w, 0.1f);
  nq_linear_t lin;
  nq_linear_init(&lin, &w, NULL);
  cr_assert_eq(be->iface->linear_pack(be, &lin, &err), 0, "%s", err.msg);
  nq_op_desc_t d = {.op = NQ_OP_LINEAR, .src = {&x}, .lin = &lin};
  double r = run_pair(be, cpu, &d, &y1, &y2);
  cr_assert_geq(r, 0, "linear not run");
  cr_expect_leq(r, 1e-5, "linear through the staging chunks: rel_l2 %g", r);
  nq_linear_deinit(&lin);
  nq_tensor_deinit(&x), nq_tensor_deinit(&y1), nq_tensor_deinit(&y2);
  nq_backend_free(cpu);
  nq_backend_free(be);
  nq_backend_free(ref);
}

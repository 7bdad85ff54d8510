/* bench/bench_unet.c — one denoising step of the AudioLDM UNet2D and of the ZeroScope UNet3D (make bench), with
 * RANDOM weights built in memory from the real diffusers configs:
 *   ../shared/models/configs/audioldm-s-full-v2/unet/config.json      (UNet2DConditionModel, class-label variant)
 *   ../shared/models/configs/text-to-video-ms-1.7b/unet/config.json   (UNet3DConditionModel; ZeroScope's shape)
 *
 * Random weights: the loader itself is the source of truth for the tensor names and shapes. A listing lookup answers
 * every name it is asked for with a rank-0 entry; the loader rejects it with "tensor N has shape [], want [...]",
 * which gives N's shape; repeat until the build succeeds (bench-only, through the private compute/models/unet_int.h
 * like tests/unit/test_unet.c; nothing of this is in the library). Then every tensor gets random data (>= 2-d: bf16
 * uniform +-1/sqrt(fan_in), 1-d: f32, gains ~1, biases ~0) and the model is built over it (no file).
 *
 * Steps timed (median of --reps after a warm-up), CFG batch 2 ([uncond, cond]):
 *   audioldm   latents [2, 8, 256, 16] (10.24 s of audio: the pipeline rounds 1000 mel frames up to 1024),
 *              class_labels [2, 512], no encoder_hidden_states (self-attention in attn2, as diffusers does);
 *   zeroscope  latents [2, 4, 8, 40, 72] (320x576 video / 8, 8 frames), encoder_hidden_states [2, 77, 1024].
 *              ZeroScope's full step is ~14 TFLOP (~10 minutes on 2 cores), so by default --zs-batch 1 --zs-frames 1
 *              is run (--zs-reps 1 timed step after the warm-up) and the time is SCALED by the analytic FLOP ratio
 *              to batch 2 x 8 frames (every layer is linear in batch*frames, temporal convs included; only the
 *              temporal attention matmuls are quadratic in frames, a negligible share). Printed as SCALED.
 * FLOPs are analytic from the weight listing (multiply-add = 2): every conv/linear weight times the positions it runs
 * at (its level's latent size x batch x frames; cross-attention K/V at the 77 text tokens), plus the attention
 * matmuls (QK^T and AV); norms and elementwise ops are not counted.
 *
 *   build/bench/bench_unet [--threads 2] [--reps 2] [--zs-reps 1] [--zs-batch 1] [--zs-frames 1] [--dtype bf16|f32] [--only audioldm|zeroscope]
 * Default: ~2-3 minutes on 2 loaded cores, ~3.5 GB of memory (ZeroScope's 1.4 G parameters in bf16).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/bench_util.h"
#include "compute/core/dtype.h"
#include "compute/core/pool.h"
#include "compute/models/unet_int.h"

#define CONFIGS NQ_SHARED_DIR "/models/configs/"

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static inline float rnd(float s) {
  g_rng ^= g_rng << 13, g_rng ^= g_rng >> 7, g_rng ^= g_rng << 17;
  return s * ((float)(g_rng >> 40) / (float)(1 << 24) * 2.f - 1.f);
}

/* ---- the listing: names and shapes the loader asks for ---- */

typedef struct ent {
  char name[200];
  int ndim;
  int64_t shape[NQ_ST_MAX_DIMS];
  nq_dtype_t dtype;
  void *data; /* owned; NULL while listing */
} ent_t;

typedef struct listing {
  ent_t *e;
  int n, cap;
  char pending[200]; /* the last name asked for that is not in the listing */
} listing_t;

static int lookup(void *ctx, const char *name, nq_unet__entry_t *out) {
  listing_t *l = ctx;
  for (int i = l->n - 1; i >= 0; i--) /* the loader asks in build order: recent names first */
    if (!strcmp(l->e[i].name, name)) {
      out->name = l->e[i].name, out->dtype = l->e[i].dtype, out->ndim = l->e[i].ndim, out->data = l->e[i].data;
      memcpy(out->shape, l->e[i].shape, sizeof out->shape);
      return 1;
    }
  snprintf(l->pending, sizeof l->pending, "%s", name);
  memset(out, 0, sizeof *out);
  out->name = l->pending, out->dtype = NQ_DT_F32, out->ndim = 0; /* rejected with "want [...]" */
  return 1;
}

/* Fills the listing for arch a: build, read the wanted shape of the missing tensor from the error, add, repeat. */
static int discover(const nq_unet__arch_t *a, listing_t *l, nq_err_t *err) {
  for (int iter = 0; iter < 20000; iter++) {
    nq_unet__model_t m;
    memset(&m, 0, sizeof m);
    m.a = *a;
    nq_unet__src_t s = {.lookup = lookup, .ctx = l, .arch = &m.a, .wdtype = -1, .conv_wdtype = -1};
    l->pending[0] = 0;
    nq_err_t e = {0};
    int rc = nq_unet__build(&m, &s, &e);
    nq_unet__model_deinit(&m);
    if (rc == 0) return 0;
    const char *w = strstr(e.msg, "want [");
    if (!w || !l->pending[0]) return nq_err_set(err, NQ_EINTERNAL, 0, "listing: unexpected loader error: %s", e.msg);
    if (l->n == l->cap) {
      l->cap = l->cap ? 2 * l->cap : 1024;
      l->e = realloc(l->e, sizeof(ent_t) * (size_t)l->cap);
    }
    ent_t *x = &l->e[l->n];
    memset(x, 0, sizeof *x);
    snprintf(x->name, sizeof x->name, "%s", l->pending);
    x->dtype = NQ_DT_F32;
    const char *p = w + 6;
    while (*p && *p != ']' && x->ndim < NQ_ST_MAX_DIMS) {
      char *end;
      x->shape[x->ndim++] = strtoll(p, &end, 10);
      p = *end == ',' ? end + 1 : end;
      if (end == p && *p != ']') break;
    }
    if (x->ndim == 0) return nq_err_set(err, NQ_EINTERNAL, 0, "listing: cannot read the shape in: %s", e.msg);
    l->n++;
  }
  return nq_err_set(err, NQ_EINTERNAL, 0, "listing: no convergence");
}

static int64_t numel(const ent_t *x) {
  int64_t n = 1;
  for (int i = 0; i < x->ndim; i++) n *= x->shape[i];
  return n;
}

static double fill(listing_t *l, int bf16) {
  double params = 0;
  for (int i = 0; i < l->n; i++) {
    ent_t *x = &l->e[i];
    int64_t n = numel(x);
    params += (double)n;
    const char *nm = x->name;
    size_t ln = strlen(nm);
    bool is_bias = ln > 5 && !strcmp(nm + ln - 5, ".bias");
    if (x->ndim >= 2) {
      float s = 1.f / sqrtf((float)(n / x->shape[0]));
      if (bf16) {
        uint16_t *d = malloc((size_t)n * 2);
        for (int64_t k = 0; k < n; k++) d[k] = nq_f32_to_bf16(rnd(s));
        x->data = d, x->dtype = NQ_DT_BF16;
      } else {
        float *d = malloc((size_t)n * 4);
        for (int64_t k = 0; k < n; k++) d[k] = rnd(s);
        x->data = d, x->dtype = NQ_DT_F32;
      }
    } else {
      float *d = malloc((size_t)n * 4);
      for (int64_t k = 0; k < n; k++) d[k] = is_bias ? rnd(0.02f) : 1.f + rnd(0.1f);
      x->data = d, x->dtype = NQ_DT_F32;
    }
  }
  return params;
}

static void listing_free(listing_t *l) {
  for (int i = 0; i < l->n; i++) free(l->e[i].data);
  free(l->e);
  memset(l, 0, sizeof *l);
}

/* ---- analytic FLOPs ---- */

typedef struct geo {
  int B, F, H, W; /* batch, frames, latent size */
  int L;          /* text tokens of encoder_hidden_states (0: none, attn2 is self-attention) */
  int n_levels;
} geo_t;

static double level_pos(const geo_t *g, int lv) { /* spatial positions at level lv */
  int h = g->H, w = g->W;
  for (int i = 0; i < lv; i++) h = (h + 1) / 2, w = (w + 1) / 2;
  return (double)h * w;
}

/* Level of the module that owns `name`, or -1 (time/class embeddings). Samplers: the level of their output. */
static int name_level(const geo_t *g, const char *name) {
  int i;
  if (!strncmp(name, "conv_in", 7) || !strncmp(name, "conv_out", 8) || !strncmp(name, "conv_norm_out", 13) ||
      !strncmp(name, "transformer_in", 14))
    return 0;
  if (sscanf(name, "down_blocks.%d.", &i) == 1) return strstr(name, "downsamplers") ? i + 1 : i;
  if (sscanf(name, "up_blocks.%d.", &i) == 1) return g->n_levels - 1 - i - (strstr(name, "upsamplers") ? 1 : 0);
  if (!strncmp(name, "mid_block", 9)) return g->n_levels - 1;
  return -1;
}

static double unet_flops(const listing_t *l, const geo_t *g) {
  double f = 0, BF = (double)g->B * g->F;
  for (int i = 0; i < l->n; i++) {
    const ent_t *x = &l->e[i];
    size_t ln = strlen(x->name);
    if (x->ndim < 2 || ln < 7 || strcmp(x->name + ln - 7, ".weight")) continue;
    int lv = name_level(g, x->name);
    double w = (double)numel(x);
    bool temporal = strstr(x->name, "temp_attentions") || !strncmp(x->name, "transformer_in", 14);
    bool in_tf = strstr(x->name, "attentions.") || temporal;
    if (lv < 0) {
      f += 2 * w * g->B; /* time / class embedding MLPs */
      continue;
    }
    double pos = level_pos(g, lv);
    if (strstr(x->name, "time_emb_proj")) {
      f += 2 * w * BF;
    } else if (in_tf && !temporal && g->L > 0 && strstr(x->name, "attn2.to_") &&
               (strstr(x->name, "to_k.") || strstr(x->name, "to_v."))) {
      f += 2 * w * BF * g->L; /* cross-attention K/V over the text tokens */
    } else {
      f += 2 * w * BF * pos;
    }
    if (in_tf && strstr(x->name, ".to_q.weight")) { /* the attention matmuls of this attention: QK^T + AV */
      double inner = (double)x->shape[0];
      if (temporal) f += 2 * 2.0 * g->F * g->F * inner * g->B * pos;
      else if (strstr(x->name, "attn2") && g->L > 0) f += 2 * 2.0 * pos * g->L * inner * BF;
      else f += 2 * 2.0 * pos * pos * inner * BF;
    }
  }
  return f;
}

/* ---- one model ---- */

typedef struct run {
  const char *label, *config;
  int is3d;
  geo_t run_geo, full_geo; /* what is timed, what it is reported for */
  int class_dim;           /* 2D class labels */
} run_t;

static int bench_one(const run_t *r, int bf16, int reps, double peak, const char *which) {
  nq_err_t err = {0};
  nq_unet__model_t m;
  memset(&m, 0, sizeof m);
  if (nq_unet__arch_parse(r->config, r->is3d, &m.a, &err) < 0) {
    printf("  %s: %s\n", r->label, err.msg);
    return -1;
  }
  listing_t l = {0};
  double t0 = nqb_now();
  if (discover(&m.a, &l, &err) < 0) {
    printf("  %s: %s\n", r->label, err.msg);
    listing_free(&l);
    return -1;
  }
  double params = fill(&l, bf16);
  double t_list = nqb_now() - t0;
  nq_unet__src_t s = {.lookup = lookup, .ctx = &l, .arch = &m.a, .wdtype = -1, .conv_wdtype = -1};
  int rc = nq_unet__build(&m, &s, &err);
  if (rc == 0 && s.n_found != l.n) rc = nq_err_set(&err, NQ_EINTERNAL, 0, "used %d of %d tensors", s.n_found, l.n);
  if (rc == 0 && !(m.ex = nq_exec_new("auto", NULL, &err))) rc = err.code ? err.code : NQ_EINTERNAL;
  if (rc < 0) {
    printf("  %s: build: %s\n", r->label, err.msg);
    nq_unet__model_deinit(&m);
    listing_free(&l);
    return -1;
  }
  geo_t g = r->run_geo, G = r->full_geo;
  g.n_levels = G.n_levels = m.a.n_levels;
  double f_run = unet_flops(&l, &g), f_full = unet_flops(&l, &G), scale = f_full / f_run;
  printf("  %s: %s, %d tensors, %.1f M params (%s >= 2-d weights; listed + filled in %.1f s)\n", r->label, r->config,
         l.n, params / 1e6, bf16 ? "bf16" : "f32", t_list);

  int BF = g.B * g.F;
  nq_tensor_t x, ehs, cls, y;
  memset(&ehs, 0, sizeof ehs), memset(&cls, 0, sizeof cls), memset(&y, 0, sizeof y);
  nq_tensor_init(&x, NQ_DT_F32, 4, NQ_SHAPE(BF, m.a.in_channels, g.H, g.W), &err);
  for (int64_t i = 0; i < nq_tensor_numel(&x); i++) ((float *)x.data)[i] = rnd(1.7f);
  if (g.L > 0) {
    nq_tensor_init(&ehs, NQ_DT_F32, 3, NQ_SHAPE(g.B, g.L, m.a.cross_dim[0]), &err);
    for (int64_t i = 0; i < nq_tensor_numel(&ehs); i++) ((float *)ehs.data)[i] = rnd(1.f);
  }
  if (r->class_dim > 0) {
    nq_tensor_init(&cls, NQ_DT_F32, 2, NQ_SHAPE(g.B, r->class_dim), &err);
    for (int64_t i = 0; i < nq_tensor_numel(&cls); i++) ((float *)cls.data)[i] = rnd(0.1f);
  }
  float ts[64];
  for (int i = 0; i < g.B && i < 64; i++) ts[i] = 981.f;
  double v[16];
  int n = 0;
  for (int k = 0; k <= reps && k < 16 && rc == 0; k++) {
    double t = nqb_now();
    rc = nq_unet__forward(&m, &x, g.B, g.F, ts, g.L > 0 ? &ehs : NULL, r->class_dim > 0 ? &cls : NULL, &y, &err);
    double dt = nqb_now() - t;
    nq_tensor_deinit(&y);
    if (k > 0) v[n++] = dt; /* k = 0: warm-up (weight packing, primitive creation) */
  }
  if (rc < 0) {
    printf("  %s: forward: %s\n", r->label, err.msg);
  } else {
    double t = nqb_median(v, n), gf = f_run / t / 1e9;
    printf("  %s step: latents B=%d C=%d F=%d %dx%d: %.2f s (median of %d), %.2f TFLOP -> %.1f GFLOP/s = %.0f%% of "
           "the %s peak (%.1f)\n",
           r->label, g.B, m.a.in_channels, g.F, g.H, g.W, t, n, f_run / 1e12, gf, 100 * gf / peak, which, peak);
    if (scale > 1.0001)
      printf("    SCALED to batch %d (CFG) x %d frames: %.2f TFLOP per step -> %.1f s per step at the measured "
             "GFLOP/s (x%.2f)\n",
             G.B, G.F, f_full / 1e12, t * scale, scale);
  }
  nq_tensor_deinit(&x), nq_tensor_deinit(&ehs), nq_tensor_deinit(&cls);
  nq_unet__model_deinit(&m);
  listing_free(&l);
  return rc;
}

int main(int argc, char **argv) {
  int threads = 2, reps = 2, zreps = 1, zb = 1, zf = 1, bf16 = 1;
  const char *only = NULL;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--threads")) threads = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--reps")) reps = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--zs-reps")) zreps = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--zs-batch")) zb = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--zs-frames")) zf = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--dtype")) bf16 = strcmp(argv[i + 1], "f32") != 0;
    else if (!strcmp(argv[i], "--only")) only = argv[i + 1];
    else {
      fprintf(stderr, "usage: bench_unet [--threads N] [--reps N] [--zs-reps N] [--zs-batch 1|2] [--zs-frames N] [--dtype bf16|f32] "
                      "[--only audioldm|zeroscope]\n");
      return 2;
    }
  }
  if (threads < 1 || reps < 1 || reps > 15 || zreps < 1 || zreps > 15 || zb < 1 || zb > 2 || zf < 1 || zf > 8) {
    fprintf(stderr, "bench_unet: bad arguments\n");
    return 2;
  }
  char tsb[16];
  snprintf(tsb, sizeof tsb, "%d", threads);
  setenv("NQ_THREADS", tsb, 1);
  double la[3] = {0};
  if (getloadavg(la, 3) < 0) la[0] = -1;
  printf("bench_unet: %d compute threads, load average %.2f at start\n", nq_compute_threads(), la[0]);
  const char *which;
  /* a UNet-like GEMM: ZeroScope's 40x72 level (2 x 2880 positions), 320 -> 1280 (GEGLU-ish) */
  double peak = nqb_gemm_peaks(5760, 1280, 320, &which);
  run_t runs[2] = {
      {.label = "audioldm",
       .config = CONFIGS "audioldm-s-full-v2/unet/config.json",
       .is3d = 0,
       .run_geo = {.B = 2, .F = 1, .H = 256, .W = 16, .L = 0},
       .full_geo = {.B = 2, .F = 1, .H = 256, .W = 16, .L = 0},
       .class_dim = 512},
      {.label = "zeroscope",
       .config = CONFIGS "text-to-video-ms-1.7b/unet/config.json",
       .is3d = 1,
       .run_geo = {.B = zb, .F = zf, .H = 40, .W = 72, .L = 77},
       .full_geo = {.B = 2, .F = 8, .H = 40, .W = 72, .L = 77}},
  };
  int rc = 0;
  for (int i = 0; i < 2; i++) {
    if (only && strcmp(only, runs[i].label)) continue;
    if (bench_one(&runs[i], bf16, runs[i].is3d ? zreps : reps, peak, which) < 0) rc = 1;
  }
  return rc;
}

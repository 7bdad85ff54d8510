/* bench/bench_sd.c — Stable Diffusion 1.5-shaped pipeline throughput beside a GEMM peak measured in the same run.
 *
 * One LDM single file (v1-5-pruned-emaonly layout) with RANDOM weights is written to $TMPDIR from the SD-1.5 tensor
 * listings in ../shared/models/listings (UNet 859.5M + VAE decoder 49.5M + CLIP-L text 123.1M params; >= 2-d
 * tensors bf16, norms/biases f32), then loaded through the real pipeline (nq_sd_open with the SD-1.5 configs) and run:
 *
 *   unet     seconds per model evaluation at 64x64 latents (512x512 images), batch 2 (CFG [uncond, cond]), from the
 *            per-step progress callbacks of nq_sd_generate (DDIM, --steps evaluations; the first one is a warm-up),
 *            and GFLOP/s against the analytic FLOP count of SD-1.5's UNet (convs, linears, attention matmuls; the
 *            "compute floor" ~1.7 TFLOP per CFG step) and against the GEMM peak measured here;
 *   vae      decode 64x64 latents -> 512x512 (t_decode of the same run), likewise (weights widened to f32 at load:
 *            the pipeline's default VAE dtype);
 *   clip     captions/s of the precompute-embeddings path (nq_sd_text_encode, --captions per forward).
 * GEMM peak: oneDNN bf16 when this CPU has native bf16 kernels (AVX512-BF16/AMX), else oneDNN f32 and OpenBLAS sgemm
 * (the best is the reference; said in the output).
 *
 *   build/bench/bench_sd [--threads 2] [--steps 2] [--captions 32] [--size 512] [--keep FILE]
 * Default: ~2-3 minutes on 2 cores, ~4 GB of memory, a 2 GB temporary file (removed at exit).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "compute/core/ops.h"
#include "compute/core/pool.h"
#include "compute/io/safetensors.h"
#include "compute/pipelines/sd.h"
#include "bench/bench_util.h"

#define SD15 NQ_SHARED_DIR "/models/configs/runwayml-stable-diffusion-v1-5"
#define LISTINGS NQ_SHARED_DIR "/models/listings"

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- random weights from the listings ---- */

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static inline uint32_t rnd32(void) {
  g_rng ^= g_rng << 13, g_rng ^= g_rng >> 7, g_rng ^= g_rng << 17;
  return (uint32_t)(g_rng >> 16);
}

/* Adds every tensor of a listing: >= 2-d bf16 uniform(+-sqrt(1/fan_in)); 1-d weights (norm gains) 1, biases 0
 * (f32). */
static int add_listing(nq_st_writer_t *w, const char *path, long long *params, nq_err_t *err) {
  FILE *f = fopen(path, "r");
  if (!f) return nq_err_set(err, NQ_ENOENT, 0, "%s: cannot open", path);
  char line[512];
  int rc = 0;
  while (!rc && fgets(line, sizeof line, f)) {
    if (line[0] == '#' || line[0] == '\n') continue;
    char name[256], shp[256];
    if (sscanf(line, "%255s %255[^\n]", name, shp) != 2) continue;
    int64_t shape[4];
    int nd = 0;
    for (char *s = shp; *s && nd < 4; s++)
      if (*s >= '0' && *s <= '9') shape[nd++] = strtoll(s, &s, 10), s--;
    int64_t n = 1, fan = 1;
    for (int d = 0; d < nd; d++) n *= shape[d];
    for (int d = 1; d < nd; d++) fan *= shape[d];
    *params += n;
    if (nd >= 2) {
      uint16_t *b = malloc(sizeof(uint16_t) * (size_t)n);
      if (!b) return nq_err_set(err, NQ_ENOMEM, 0, "out of memory");
      float a = (float)sqrt(1.0 / (double)fan) * 2.0f;
      for (int64_t i = 0; i < n; i++) b[i] = nq_f32_to_bf16(((float)rnd32() * (1.0f / 4294967296.0f) - 0.5f) * a);
      rc = nq_st_writer_add(w, name, NQ_DT_BF16, nd, shape, b, err);
      free(b);
    } else {
      float *v = malloc(sizeof(float) * (size_t)n);
      if (!v) return nq_err_set(err, NQ_ENOMEM, 0, "out of memory");
      bool one = strstr(name, ".weight") != NULL; /* the 1-d weights are all norm gains */
      for (int64_t i = 0; i < n; i++) v[i] = one ? 1.0f : 0.0f;
      rc = nq_st_writer_add_f32(w, name, nd, shape, v, err);
      free(v);
    }
  }
  fclose(f);
  return rc;
}

/* ---- analytic FLOPs (multiply-add = 2) ---- */

static double conv_flops(double ci, double co, double k, double hw) { return 2.0 * ci * co * k * k * hw; }
static double resnet_flops(double ci, double co, double hw) {
  return conv_flops(ci, co, 3, hw) + conv_flops(co, co, 3, hw) + (ci != co ? conv_flops(ci, co, 1, hw) : 0);
}
/* Transformer2D (1 block) at N positions, C channels, text L x Dt. */
static double tf_flops(double c, double n, double l, double dt) {
  double f = 2 * 2.0 * c * c * n;                  /* proj_in, proj_out */
  f += 4 * 2.0 * c * c * n + 2 * 2.0 * n * n * c;  /* self-attn: q k v o, QK^T, AV */
  f += 2 * 2.0 * c * c * n + 2 * 2.0 * dt * c * l + 2 * 2.0 * n * l * c; /* cross-attn: q o, k v, QK^T AV */
  f += 2.0 * n * c * 8 * c + 2.0 * n * 4 * c * c; /* GEGLU ff: C -> 2*4C, 4C -> C */
  return f;
}

/* SD-1.5 UNet, one sample at h x w latents. */
static double unet_flops(int h, int w) {
  const double ch[4] = {320, 640, 1280, 1280};
  const int attn[4] = {1, 1, 1, 0};
  double f = 0, hw = (double)h * w, skip[16];
  int ns = 0;
  f += conv_flops(4, 320, 3, hw);
  skip[ns++] = 320;
  double cur = 320, r = hw;
  for (int i = 0; i < 4; i++) {
    for (int j = 0; j < 2; j++) {
      f += resnet_flops(cur, ch[i], r);
      cur = ch[i];
      if (attn[i]) f += tf_flops(cur, r, 77, 768);
      skip[ns++] = cur;
    }
    if (i < 3) {
      f += conv_flops(cur, cur, 3, r / 4);
      r /= 4;
      skip[ns++] = cur;
    }
  }
  f += 2 * resnet_flops(1280, 1280, r) + tf_flops(1280, r, 77, 768);
  for (int i = 0; i < 4; i++) {
    double co = ch[3 - i];
    for (int j = 0; j < 3; j++) {
      double s = skip[--ns];
      f += resnet_flops(cur + s, co, r);
      cur = co;
      if (attn[3 - i]) f += tf_flops(cur, r, 77, 768);
    }
    if (i < 3) {
      r *= 4;
      f += conv_flops(cur, cur, 3, r);
    }
  }
  f += conv_flops(320, 4, 3, hw);
  return f;
}

/* SD-1.5 VAE decoder, one image from h x w latents. */
static double vae_dec_flops(int h, int w) {
  const double ch[4] = {512, 512, 256, 128}; /* up order */
  double r = (double)h * w, f = conv_flops(4, 4, 1, r) + conv_flops(4, 512, 3, r);
  f += 2 * resnet_flops(512, 512, r) + 4 * 2.0 * 512 * 512 * r + 2 * 2.0 * r * r * 512; /* mid + attention */
  double cur = 512;
  for (int i = 0; i < 4; i++) {
    for (int j = 0; j < 3; j++) f += resnet_flops(cur, ch[i], r), cur = ch[i];
    if (i < 3) r *= 4, f += conv_flops(cur, cur, 3, r);
  }
  return f + conv_flops(128, 3, 3, r);
}

/* CLIP-L text encoder, n prompts of 77 tokens. */
static double clip_flops(int n) {
  double t = 77.0 * n, d = 768, f = 0;
  f += 12 * (4 * 2.0 * d * d * t + 2 * 2.0 * d * 3072 * t + 2 * 2.0 * 77.0 * 77.0 * d * n);
  return f;
}

/* ---- the run ---- */

typedef struct {
  double t_last;
  double dt[64];
  int n;
} steps_t;

static int on_step(void *ud, const nq_sd_progress_t *p) {
  steps_t *s = ud;
  double t = now_s();
  if (s->n < 64) s->dt[s->n++] = t - s->t_last;
  s->t_last = t;
  fprintf(stderr, "  unet eval %d/%d: %.2f s\n", p->step, p->n_steps, s->dt[s->n - 1]);
  return 0;
}

int main(int argc, char **argv) {
  int threads = 2, steps = 2, captions = 32, size = 512;
  const char *keep = NULL;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--steps") && i + 1 < argc) steps = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--captions") && i + 1 < argc) captions = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--size") && i + 1 < argc) size = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--keep") && i + 1 < argc) keep = argv[++i];
    else {
      fprintf(stderr, "usage: bench_sd [--threads N] [--steps N>=2] [--captions N] [--size PX] [--keep FILE]\n");
      return 2;
    }
  }
  if (steps < 2 || captions < 1 || size < 64 || size % 64) {
    fprintf(stderr, "bench_sd: --steps >= 2, --captions >= 1, --size a multiple of 64\n");
    return 2;
  }
  nq_compute_set_threads(threads);
  nq_err_t err = {0};
  printf("bench_sd: SD-1.5-shaped pipeline, random weights, %d threads\n", threads);

  /* GEMM peaks at a UNet-like shape (the 64x64 level: M = 2*4096 positions, N = K = 640) and a square one */
  int gm = 2048, gn = 1280, gk = 1280;
  double pk_bf16 = nqb_gemm_peak("onednn", NQ_DT_BF16, gm, gn, gk, 3);
  double pk_dnn = nqb_gemm_peak("onednn", NQ_DT_F32, gm, gn, gk, 3);
  double pk_blas = nqb_gemm_peak("openblas", NQ_DT_F32, gm, gn, gk, 3);
  double peak = pk_bf16 > pk_dnn ? pk_bf16 : pk_dnn;
  if (pk_blas > peak) peak = pk_blas;
  printf("  GEMM peak M=%d N=%d K=%d: OpenBLAS sgemm %.1f, oneDNN f32 %.1f, oneDNN bf16 %.1f GFLOP/s%s\n", gm, gn, gk,
         pk_blas, pk_dnn, pk_bf16,
         pk_bf16 < pk_dnn ? " (no native bf16 on this CPU: oneDNN 2.6 has bf16 GEMM kernels only for AVX512-BF16/AMX; "
                            "the reference below is the best f32 figure)"
                          : "");

  /* the checkpoint */
  char file[512];
  const char *td = getenv("TMPDIR");
  if (keep) snprintf(file, sizeof file, "%s", keep);
  else snprintf(file, sizeof file, "%s/nq_bench_sd_%d.safetensors", td && *td ? td : "/tmp", (int)getpid());
  long long params = 0;
  double t0 = now_s();
  if (!keep || access(keep, R_OK) != 0) {
    nq_st_writer_t *w = nq_st_writer_new();
    int rc = add_listing(w, LISTINGS "/sd15_unet_ldm.txt", &params, &err);
    if (!rc) rc = add_listing(w, LISTINGS "/sd15_vae_decoder_ldm.txt", &params, &err);
    if (!rc) rc = add_listing(w, LISTINGS "/sd15_text_encoder_clip_l_ldm.txt", &params, &err);
    if (!rc) rc = nq_st_writer_save(w, file, &err);
    nq_st_writer_free(w);
    if (rc) {
      fprintf(stderr, "bench_sd: %s\n", err.msg);
      return 1;
    }
    printf("  wrote %s: %.1fM random params in %.1f s\n", file, (double)params / 1e6, now_s() - t0);
  }
  nq_sd_opts_t o;
  nq_sd_opts_init(&o);
  o.config_dir = SD15;
  nq_sd_t *sd = NULL;
  t0 = now_s();
  if (nq_sd_open(file, &o, &sd, &err) != 0) {
    fprintf(stderr, "bench_sd: %s\n", err.msg);
    if (!keep) unlink(file);
    return 1;
  }
  printf("  loaded the pipeline in %.1f s\n", now_s() - t0);

  /* UNet + VAE: one generation, DDIM, `steps` evaluations at size x size */
  const char *prompt = "a photograph of an astronaut riding a horse";
  nq_sd_request_t r;
  nq_sd_request_init(&r);
  r.prompt = prompt, r.seed = 1, r.steps = steps, r.height = r.width = size, r.scheduler = "ddim";
  steps_t st = {.t_last = 0};
  r.progress = on_step, r.progress_ud = &st;
  nq_sd_result_t res;
  st.t_last = now_s();
  int rc = nq_sd_generate(sd, &r, &res, &err);
  if (rc) {
    fprintf(stderr, "bench_sd: generate: %s\n", err.msg);
    nq_sd_free(sd);
    if (!keep) unlink(file);
    return 1;
  }
  /* eval 1 includes the text encoder and first-call setup (warm-up); evals 2.. are timed */
  double best = 1e30, sum = 0;
  for (int i = 1; i < st.n; i++) best = fmin(best, st.dt[i]), sum += st.dt[i];
  double mean = sum / (st.n - 1);
  double uf = 2 * unet_flops(size / 8, size / 8);
  printf("  UNet %dx%d latents, batch 2 (CFG), bf16 weights: %.2f s per step (best of %d; mean %.2f), floor %.2f TFLOP "
         "per CFG step -> %.1f GFLOP/s = %.0f%% of the GEMM peak (%.1f); the floor at that peak is %.1f s, we take "
         "%.2fx it\n",
         size / 8, size / 8, best, st.n - 1, mean, uf / 1e12, uf / best / 1e9, 100.0 * uf / best / 1e9 / peak, peak,
         uf / peak / 1e9, best / (uf / peak / 1e9));
  double vf = vae_dec_flops(size / 8, size / 8);
  printf("  VAE decode %dx%d (f32 weights): %.2f s, %.2f TFLOP -> %.1f GFLOP/s = %.0f%% of the GEMM peak (floor %.1f s)\n",
         size, size, res.t_decode, vf / 1e12, vf / res.t_decode / 1e9, 100.0 * vf / res.t_decode / 1e9 / peak,
         vf / peak / 1e9);
  nq_sd_result_deinit(&res);
  nq_sd_free(sd);

  /* precompute-embeddings path: the text encoder alone */
  nq_sd_text_t *te = NULL;
  if (nq_sd_text_open(file, &o, &te, &err) != 0) {
    fprintf(stderr, "bench_sd: %s\n", err.msg);
    if (!keep) unlink(file);
    return 1;
  }
  const char **texts = malloc(sizeof(char *) * (size_t)captions);
  char (*buf)[96] = malloc(96 * (size_t)captions);
  for (int i = 0; i < captions; i++) {
    snprintf(buf[i], sizeof buf[i], "a photo of %d dogs playing with a red ball in the park at sunset", i + 2);
    texts[i] = buf[i];
  }
  float *out = malloc(sizeof(float) * (size_t)captions * 77 * 768);
  double tb = 1e30;
  for (int k = 0; k < 2; k++) { /* first forward warms up */
    double t = now_s();
    if (nq_sd_text_encode(te, texts, captions, out, &err) != 0) {
      fprintf(stderr, "bench_sd: %s\n", err.msg);
      break;
    }
    if (k) tb = now_s() - t;
  }
  double cf = clip_flops(captions);
  printf("  CLIP-L text encoder (precompute-embeddings), %d captions per forward, bf16 linear weights: %.1f captions/s "
         "(%.2f s per forward, %.1f GFLOP/s = %.0f%% of the GEMM peak)\n",
         captions, captions / tb, tb, cf / tb / 1e9, 100.0 * cf / tb / 1e9 / peak);
  free(texts), free(buf), free(out);
  nq_sd_text_free(te);
  if (!keep) unlink(file);
  return 0;
}

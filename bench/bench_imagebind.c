/* bench/bench_imagebind.c — ImageBind-huge vision trunk throughput and media preprocessing (make bench).
 *
 *   model   ImageBind-huge vision shape (width 1280, 16 heads, MLP 5120, 257 tokens = CLS + 16x16 patches of a
 *           2x224x224 clip, head 1280->1024) with RANDOM weights written to a temporary safetensors (bf16 file) and
 *           loaded by nq_imagebind_load, run at --batch images per forward. Huge has 32 blocks; by default only
 *           --blocks 2 are built and timed and the time is SCALED to 32 blocks by the analytic FLOP ratio (stem and
 *           head are < 1%; every block costs the same). Both weight dtypes are timed: bf16 (as the issue asks; on a
 *           CPU without AVX512-BF16/AMX it does not run natively) and f32. images/s and GFLOP/s beside the GEMM peak
 *           measured in this run at the trunk's fc1 shape (M = batch*257, N = 5120, K = 1280).
 *   torch   bench/torch_imagebind.py on the same shapes and thread count, when python3-torch is installed (Debian's
 *           python3-torch, not part of deploy/install-deps.sh: it is ~1 GB); the ratio is ours / torch time.
 *   media   preprocessing on one thread: a 640x480 JPEG made here with libjpeg (q90) -> [3,224,224] (decode, bicubic
 *           resize, crop, normalise), images/s; a 10 s 44.1 kHz stereo PCM16 WAV made here -> [3,1,128,204] (decode,
 *           resample to 16 kHz, fbank), audio seconds/s. Compared with the model's images/s per thread.
 *
 *   build/bench/bench_imagebind [--threads 2] [--batch 8] [--blocks 2] [--reps 3]
 * Default: ~1-2 minutes on 2 cores (plus ~1 minute of torch when installed).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jpeglib.h> /* after stdio.h: it needs FILE and size_t */

#include "bench/bench_util.h"
#include "compute/core/dtype.h"
#include "compute/core/pool.h"
#include "compute/io/safetensors.h"
#include "compute/models/imagebind.h"
#include "datasets/media.h"

#define E 1280
#define HEADS 16
#define FF 5120
#define OUT 1024
#define NTOK 257
#define HUGE_BLOCKS 32

static uint64_t g_rng = 0x2545f4914f6cdd1dull;
static inline float rnd(float s) {
  g_rng ^= g_rng << 13, g_rng ^= g_rng >> 7, g_rng ^= g_rng << 17;
  return s * ((float)(g_rng >> 40) / (float)(1 << 24) * 2.f - 1.f);
}

/* FLOPs of one image through `blocks` blocks (multiply-add = 2): stem GEMM, per block the 4 linears and the two
 * attention matmuls, head. */
static double ib_flops(int blocks) {
  double t = NTOK, f = 2.0 * 256 * E * (3 * 2 * 14 * 14);
  f += blocks * (2.0 * t * (3.0 * E * E + 1.0 * E * E + 2.0 * E * FF) + 2 * 2.0 * t * t * E);
  return f + 2.0 * E * OUT;
}

static int add(nq_st_writer_t *w, const char *name, int ndim, const int64_t *shape, float scale, float base,
               nq_err_t *err) {
  int64_t n = 1;
  for (int i = 0; i < ndim; i++) n *= shape[i];
  int rc;
  if (ndim >= 2) { /* bf16 */
    uint16_t *b = malloc((size_t)n * 2);
    for (int64_t i = 0; i < n; i++) b[i] = nq_f32_to_bf16(base + rnd(scale));
    rc = nq_st_writer_add(w, name, NQ_DT_BF16, ndim, shape, b, err);
    free(b);
  } else {
    float *b = malloc((size_t)n * 4);
    for (int64_t i = 0; i < n; i++) b[i] = base + rnd(scale);
    rc = nq_st_writer_add_f32(w, name, ndim, shape, b, err);
    free(b);
  }
  return rc;
}

/* ImageBind's state_dict names (vision keys only), shapes of imagebind_huge with `blocks` blocks. */
static int write_model(const char *dir, int blocks, nq_err_t *err) {
  char p[600], nm[160];
  snprintf(p, sizeof p, "%s/config.json", dir);
  FILE *f = fopen(p, "w");
  if (!f) return nq_err_set(err, NQ_EIO, 0, "%s: cannot write", p);
  fprintf(f,
          "{\"schema\": \"imagebind-dims/1\", \"modality\": \"vision\", \"video_frames\": 2, \"kernel_size\": [2,14,14], "
          "\"img_size\": [3,2,224,224], \"vision_embed_dim\": %d, \"vision_num_blocks\": %d, \"vision_num_heads\": %d, "
          "\"vision_mlp_ratio\": 4, \"out_embed_dim\": %d}\n",
          E, blocks, HEADS, OUT);
  fclose(f);
  nq_st_writer_t *w = nq_st_writer_new();
  const char *pp = "modality_preprocessors.vision.";
  int rc = 0;
  float se = 1.f / sqrtf(E), sf = 1.f / sqrtf(FF);
  snprintf(nm, sizeof nm, "%scls_token", pp), rc |= add(w, nm, 3, NQ_SHAPE(1, 1, E), 0.02f, 0, err);
  snprintf(nm, sizeof nm, "%spos_embedding_helper.pos_embed", pp), rc |= add(w, nm, 3, NQ_SHAPE(1, NTOK, E), 0.02f, 0, err);
  snprintf(nm, sizeof nm, "%srgbt_stem.proj.1.weight", pp);
  rc |= add(w, nm, 5, NQ_SHAPE(E, 3, 2, 14, 14), 1.f / sqrtf(1176), 0, err);
  rc |= add(w, "modality_trunks.vision.pre_transformer_layer.0.weight", 1, NQ_SHAPE(E), 0.1f, 1, err);
  rc |= add(w, "modality_trunks.vision.pre_transformer_layer.0.bias", 1, NQ_SHAPE(E), 0.02f, 0, err);
  for (int b = 0; b < blocks && !rc; b++) {
    const char *bp = "modality_trunks.vision.blocks";
#define T(suffix, nd, shape, s, base) \
  (snprintf(nm, sizeof nm, "%s.%d.%s", bp, b, suffix), rc |= add(w, nm, nd, shape, s, base, err))
    T("attn.in_proj_weight", 2, NQ_SHAPE(3 * E, E), se, 0);
    T("attn.in_proj_bias", 1, NQ_SHAPE(3 * E), 0.02f, 0);
    T("attn.out_proj.weight", 2, NQ_SHAPE(E, E), se, 0);
    T("attn.out_proj.bias", 1, NQ_SHAPE(E), 0.02f, 0);
    T("mlp.fc1.weight", 2, NQ_SHAPE(FF, E), se, 0);
    T("mlp.fc1.bias", 1, NQ_SHAPE(FF), 0.02f, 0);
    T("mlp.fc2.weight", 2, NQ_SHAPE(E, FF), sf, 0);
    T("mlp.fc2.bias", 1, NQ_SHAPE(E), 0.02f, 0);
    T("norm_1.weight", 1, NQ_SHAPE(E), 0.1f, 1);
    T("norm_1.bias", 1, NQ_SHAPE(E), 0.02f, 0);
    T("norm_2.weight", 1, NQ_SHAPE(E), 0.1f, 1);
    T("norm_2.bias", 1, NQ_SHAPE(E), 0.02f, 0);
#undef T
  }
  rc |= add(w, "modality_heads.vision.0.weight", 1, NQ_SHAPE(E), 0.1f, 1, err);
  rc |= add(w, "modality_heads.vision.0.bias", 1, NQ_SHAPE(E), 0.02f, 0, err);
  rc |= add(w, "modality_heads.vision.2.weight", 2, NQ_SHAPE(OUT, E), se, 0, err);
  snprintf(p, sizeof p, "%s/model.safetensors", dir);
  if (!rc) rc = nq_st_writer_save(w, p, err);
  nq_st_writer_free(w);
  return rc;
}

/* One timed configuration: median seconds per forward of `batch` images (after one warm-up forward). */
static double time_model(const char *dir, int wdtype, int batch, int reps, nq_err_t *err) {
  nq_imagebind_load_opts_t o;
  nq_imagebind_load_opts_init(&o);
  o.modality = NQ_IB_VISION, o.wdtype = wdtype, o.max_batch = batch;
  nq_imagebind_t *m = NULL;
  if (nq_imagebind_load(dir, &o, &m, err) < 0) return -1;
  int64_t vn = nq_imagebind_view_numel(m, 1);
  float *in = malloc(sizeof(float) * (size_t)(vn * batch)), *out = malloc(sizeof(float) * OUT * (size_t)batch);
  for (int64_t i = 0; i < vn * batch; i++) in[i] = rnd(2.f);
  double v[16];
  int n = 0;
  int rc = nq_imagebind_forward(m, in, batch, 1, out, err); /* warm-up: packing, primitive creation */
  for (int r = 0; r < reps && r < 16 && rc == 0; r++) {
    double t = nqb_now();
    rc = nq_imagebind_forward(m, in, batch, 1, out, err);
    v[n++] = nqb_now() - t;
  }
  free(in), free(out);
  nq_imagebind_free(m);
  return rc < 0 ? -1 : nqb_median(v, n);
}

/* ---- media ---- */

static unsigned char *make_jpeg(int w, int h, unsigned long *len) {
  struct jpeg_compress_struct c;
  struct jpeg_error_mgr jerr;
  c.err = jpeg_std_error(&jerr);
  jpeg_create_compress(&c);
  unsigned char *buf = NULL;
  jpeg_mem_dest(&c, &buf, len);
  c.image_width = (JDIMENSION)w, c.image_height = (JDIMENSION)h, c.input_components = 3, c.in_color_space = JCS_RGB;
  jpeg_set_defaults(&c);
  jpeg_set_quality(&c, 90, TRUE);
  jpeg_start_compress(&c, TRUE);
  unsigned char *row = malloc((size_t)w * 3);
  while (c.next_scanline < c.image_height) {
    int y = (int)c.next_scanline;
    for (int x = 0; x < w; x++) { /* gradients + a texture + noise: a photo-like entropy */
      row[3 * x] = (unsigned char)(x * 255 / w);
      row[3 * x + 1] = (unsigned char)(y * 255 / h);
      row[3 * x + 2] = (unsigned char)(128 + 60 * sinf((float)x * 0.05f) * cosf((float)y * 0.07f) + rnd(30.f));
    }
    JSAMPROW rp = row;
    jpeg_write_scanlines(&c, &rp, 1);
  }
  jpeg_finish_compress(&c);
  jpeg_destroy_compress(&c);
  free(row);
  return buf;
}

/* Runs fn for ~secs; median seconds per call over 5 slices. */
typedef int (*prep_fn)(const void *buf, size_t len, float *out, nq_err_t *err);
static int prep_img(const void *b, size_t n, float *o, nq_err_t *e) { return nq_media_image_preprocess_buf(b, n, "bench.jpg", o, e); }
static int prep_wav(const void *b, size_t n, float *o, nq_err_t *e) { return nq_media_audio_preprocess_buf(b, n, "bench.wav", o, e); }
static double time_prep(prep_fn fn, const void *buf, size_t len, float *out, double secs, nq_err_t *err) {
  if (fn(buf, len, out, err) < 0) return -1;
  double v[5];
  for (int s = 0; s < 5; s++) {
    int k = 0;
    double t0 = nqb_now(), t;
    do {
      if (fn(buf, len, out, err) < 0) return -1;
      k++;
    } while ((t = nqb_now() - t0) < secs / 5);
    v[s] = t / k;
  }
  return nqb_median(v, 5);
}

int main(int argc, char **argv) {
  int threads = 2, batch = 8, blocks = 2, reps = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--threads")) threads = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--batch")) batch = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--blocks")) blocks = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--reps")) reps = atoi(argv[i + 1]);
    else {
      fprintf(stderr, "usage: bench_imagebind [--threads N] [--batch N] [--blocks N] [--reps N]\n");
      return 2;
    }
  }
  if (threads < 1 || batch < 1 || batch > 64 || blocks < 1 || blocks > HUGE_BLOCKS || reps < 1 || reps > 16) {
    fprintf(stderr, "bench_imagebind: bad arguments\n");
    return 2;
  }
  char ts[16];
  snprintf(ts, sizeof ts, "%d", threads);
  setenv("NQ_THREADS", ts, 1);
  double la[3] = {0};
  if (getloadavg(la, 3) < 0) la[0] = -1;
  printf("bench_imagebind: %d compute threads, batch %d, load average %.2f at start\n", nq_compute_threads(), batch,
         la[0]);

  const char *which;
  double peak = nqb_gemm_peaks(batch * NTOK, FF, E, &which);

  nq_err_t err = {0};
  char dir[] = "/tmp/nq_bench_ib_XXXXXX";
  if (!mkdtemp(dir)) return 1;
  if (write_model(dir, blocks, &err) < 0) {
    fprintf(stderr, "bench_imagebind: %s\n", err.msg);
    return 1;
  }
  double f_meas = ib_flops(blocks) * batch, f_huge = ib_flops(HUGE_BLOCKS) * batch, scale = f_huge / f_meas;
  printf("  model: ImageBind-huge vision shape, random weights, %d of %d blocks built and timed; times scaled x%.2f "
         "(FLOP ratio) to the full trunk (%.2f TFLOP per batch of %d)\n",
         blocks, HUGE_BLOCKS, scale, f_huge / 1e12, batch);
  double t_c[2] = {-1, -1};
  const int dts[2] = {NQ_DT_BF16, NQ_DT_F32};
  for (int d = 0; d < 2; d++) {
    double t = time_model(dir, dts[d], batch, reps, &err);
    if (t < 0) {
      printf("  %s weights: failed: %s\n", d ? "f32" : "bf16", err.msg);
      continue;
    }
    t_c[d] = t * scale;
    double gf = f_meas / t / 1e9;
    printf("  %-4s weights: %.2f s per batch of %d (%d blocks, median of %d) -> full trunk %.2f s, %.2f images/s, "
           "%.1f GFLOP/s = %.0f%% of the %s peak (%.1f)\n",
           d ? "f32" : "bf16", t, batch, blocks, reps, t_c[d], batch / t_c[d], gf, 100 * gf / peak, which, peak);
  }
  char p[600];
  snprintf(p, sizeof p, "%s/model.safetensors", dir), unlink(p);
  snprintf(p, sizeof p, "%s/config.json", dir), unlink(p);
  rmdir(dir);

  char targs[128];
  snprintf(targs, sizeof targs, "--threads %d --batch %d --blocks %d --reps %d", threads, batch, blocks, reps);
  double t_torch = nqb_run_torch("torch_imagebind.py", targs, NULL);
  double best = t_c[0] > 0 && (t_c[1] < 0 || t_c[0] < t_c[1]) ? t_c[0] : t_c[1];
  if (t_torch > 0 && best > 0)
    printf("  vs torch (f32, same %d blocks, scaled alike): ours %.2f s / torch %.2f s per batch = %.2fx torch's "
           "speed\n",
           blocks, best, t_torch * scale, t_torch * scale / best);

  /* media preprocessing (one thread: the worker preprocesses items of a batch while the model runs on the pool) */
  unsigned long jl = 0;
  unsigned char *jpg = make_jpeg(640, 480, &jl);
  float *px = malloc(sizeof(float) * 3 * 224 * 224), *fb = malloc(sizeof(float) * 3 * 128 * 204);
  double t_img = time_prep(prep_img, jpg, jl, px, 2.0, &err);
  if (t_img < 0) printf("  image preprocess failed: %s\n", err.msg);
  const int rate = 44100, secs = 10;
  float *wav = malloc(sizeof(float) * 2 * rate * secs);
  for (int i = 0; i < rate * secs; i++) {
    float s = 0.3f * sinf(2 * 3.14159265f * 440.f * (float)i / rate) + rnd(0.05f);
    wav[2 * i] = s, wav[2 * i + 1] = 0.5f * s;
  }
  void *wb = NULL;
  size_t wl = 0;
  double t_aud = -1;
  if (nq_media_wav_encode(wav, rate * secs, 2, rate, NQ_MEDIA_WAV_PCM16, &wb, &wl, &err) == 0)
    t_aud = time_prep(prep_wav, wb, wl, fb, 3.0, &err);
  if (t_aud < 0) printf("  audio preprocess failed: %s\n", err.msg);
  double model_ips = best > 0 ? batch / best : 0;
  if (t_img > 0)
    printf("  preprocess JPEG 640x480 (%lu bytes) -> [3,224,224]: %.2f ms, %.0f images/s on 1 thread = %.0fx the "
           "model's %.2f images/s on %d threads\n",
           jl, t_img * 1e3, 1 / t_img, model_ips > 0 ? 1 / t_img / model_ips : 0, model_ips, threads);
  if (t_aud > 0)
    printf("  preprocess WAV %d s 44.1 kHz stereo PCM16 -> [3,1,128,204]: %.1f ms, %.0f audio seconds/s on 1 thread "
           "(%.0f files/s)\n",
           secs, t_aud * 1e3, secs / t_aud, 1 / t_aud);
  free(jpg), free(px), free(fb), free(wav), free(wb);
  return 0;
}

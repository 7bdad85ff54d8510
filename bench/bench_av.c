/* bench/bench_av.c — audio/video generation benchmarks (make bench):
 *   gemm peak   oneDNN (else best backend) bf16 and f32 GEMM GFLOP/s measured in this run (the ceiling);
 *   hifigan     real AudioLDM vocoder shape (64 mels, 1024 ch, rates [5,4,2,2,2], resblocks [3,7,11] x [1,3,5]) with
 *               random weights: seconds and GFLOP/s for NQ_BENCH_AUDIO_S seconds of audio (default 10), real-time
 *               factor = compute seconds / audio seconds.
 * The ZeroScope UNet3D and AudioLDM UNet2D steps are in bench/bench_unet.c.
 * Env: NQ_THREADS (compute threads), NQ_BENCH_AUDIO_S. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "compute/core/ops.h"
#include "compute/io/safetensors.h"
#include "compute/models/hifigan.h"

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t rs = 88172645463325252ull;
static float rnd(float s) {
  rs ^= rs << 13, rs ^= rs >> 7, rs ^= rs << 17;
  return s * ((float)(rs >> 40) / (float)(1 << 24) * 2.f - 1.f);
}

static double gemm_peak(nq_dtype_t dt, int M, int N, int K) {
  nq_err_t err = {0};
  nq_exec_t *ex = nq_exec_new("auto", NULL, &err);
  if (!ex) return 0;
  nq_tensor_t w, x, y;
  nq_tensor_init(&w, dt, 2, NQ_SHAPE(N, K), &err);
  nq_tensor_init(&x, NQ_DT_F32, 2, NQ_SHAPE(M, K), &err);
  nq_tensor_init(&y, NQ_DT_F32, 2, NQ_SHAPE(M, N), &err);
  for (int64_t i = 0; i < (int64_t)N * K; i++) nq_tensor_set(&w, i, rnd(0.1f));
  for (int64_t i = 0; i < (int64_t)M * K; i++) ((float *)x.data)[i] = rnd(1.f);
  nq_linear_t lin;
  nq_linear_init(&lin, &w, NULL); /* takes w's storage */
  nq_exec_linear_prepare(ex, &lin, &err);
  nq_op_linear(ex, &y, &x, &lin, &err); /* warm */
  int reps = 0;
  double t0 = now_s(), t;
  do {
    nq_op_linear(ex, &y, &x, &lin, &err);
    reps++;
  } while ((t = now_s() - t0) < 1.5);
  nq_linear_deinit(&lin);
  nq_tensor_deinit(&x), nq_tensor_deinit(&y);
  nq_exec_free(ex);
  return 2.0 * M * N * K * reps / t / 1e9;
}

/* Writes the real AudioLDM vocoder shape with random weights into dir; returns its MACs per input frame. */
static double write_vocoder(const char *dir) {
  static const int rates[5] = {5, 4, 2, 2, 2}, ks[5] = {16, 16, 8, 4, 4}, rk[3] = {3, 7, 11}, dil[3] = {1, 3, 5};
  char p[512];
  snprintf(p, sizeof p, "%s/config.json", dir);
  FILE *f = fopen(p, "w");
  fputs("{\"model_in_dim\": 64, \"sampling_rate\": 16000, \"upsample_initial_channel\": 1024, \"upsample_rates\": "
        "[5,4,2,2,2], \"upsample_kernel_sizes\": [16,16,8,4,4], \"resblock_kernel_sizes\": [3,7,11], "
        "\"resblock_dilation_sizes\": [[1,3,5],[1,3,5],[1,3,5]], \"leaky_relu_slope\": 0.1, \"normalize_before\": false}",
        f);
  fclose(f);
  nq_st_writer_t *w = nq_st_writer_new();
  nq_err_t err = {0};
  double macs = 0, len = 1; /* output samples per input frame at each stage */
  float *buf = malloc(sizeof(float) * 1024 * 1024 * 16);
  char nm[128];
#define ADD(name, nd, shape, scale)                                                   \
  do {                                                                                \
    int64_t n_ = 1;                                                                   \
    for (int i_ = 0; i_ < nd; i_++) n_ *= (shape)[i_];                                 \
    for (int64_t i_ = 0; i_ < n_; i_++) buf[i_] = rnd(scale);                          \
    nq_st_writer_add_f32(w, name, nd, shape, buf, &err);                               \
  } while (0)
  ADD("conv_pre.weight", 3, NQ_SHAPE(1024, 64, 7), 0.05f);
  ADD("conv_pre.bias", 1, NQ_SHAPE(1024), 0.01f);
  macs += 1024.0 * 64 * 7;
  int C = 1024;
  for (int i = 0; i < 5; i++) {
    int Co = C / 2;
    snprintf(nm, sizeof nm, "upsampler.%d.weight", i);
    ADD(nm, 3, NQ_SHAPE(C, Co, ks[i]), 0.5f / sqrtf((float)C * ks[i]));
    snprintf(nm, sizeof nm, "upsampler.%d.bias", i);
    ADD(nm, 1, NQ_SHAPE(Co), 0.01f);
    macs += len * (double)C * Co * ks[i]; /* per input sample of the stage: Cin*Cout*k */
    len *= rates[i];
    for (int j = 0; j < 3; j++)
      for (int m = 0; m < 3; m++)
        for (int c = 1; c <= 2; c++) {
          snprintf(nm, sizeof nm, "resblocks.%d.convs%d.%d.weight", i * 3 + j, c, m);
          ADD(nm, 3, NQ_SHAPE(Co, Co, rk[j]), 0.3f / sqrtf((float)Co * rk[j]));
          snprintf(nm, sizeof nm, "resblocks.%d.convs%d.%d.bias", i * 3 + j, c, m);
          ADD(nm, 1, NQ_SHAPE(Co), 0.01f);
          macs += len * (double)Co * Co * rk[j];
        }
    C = Co;
  }
  (void)dil;
  ADD("conv_post.weight", 3, NQ_SHAPE(1, C, 7), 0.1f);
  ADD("conv_post.bias", 1, NQ_SHAPE(1), 0.0f);
  macs += len * C * 7;
  ADD("mean", 1, NQ_SHAPE(64), 0.f);
  for (int i = 0; i < 64; i++) buf[i] = 1.f;
  nq_st_writer_add_f32(w, "scale", 1, NQ_SHAPE(64), buf, &err);
#undef ADD
  snprintf(p, sizeof p, "%s/model.safetensors", dir);
  if (nq_st_writer_save(w, p, &err)) fprintf(stderr, "bench_av: %s\n", err.msg);
  nq_st_writer_free(w);
  free(buf);
  return macs;
}

int main(void) {
  const char *as = getenv("NQ_BENCH_AUDIO_S");
  double secs = as ? atof(as) : 10.0;
  if (!(secs > 0 && secs <= 60)) secs = 10.0;
  printf("bench_av: %d compute threads\n", nq_compute_threads());
  double pk_bf16 = gemm_peak(NQ_DT_BF16, 256, 1024, 1024), pk_f32 = gemm_peak(NQ_DT_F32, 256, 1024, 1024);
  printf("  gemm peak       bf16 %.1f GFLOP/s, f32 %.1f GFLOP/s (256x1024x1024, best backend)\n", pk_bf16, pk_f32);

  char dir[] = "/tmp/nq_bench_av_XXXXXX";
  if (!mkdtemp(dir)) return 1;
  double macs_per_frame = write_vocoder(dir);
  nq_hifigan_t *v = NULL;
  nq_err_t err = {0};
  if (nq_hifigan_load(dir, NULL, &v, &err)) {
    fprintf(stderr, "bench_av: %s\n", err.msg);
    return 1;
  }
  int64_t T = (int64_t)ceil(secs / 0.01);
  nq_tensor_t x, y;
  nq_tensor_init(&x, NQ_DT_F32, 3, NQ_SHAPE(1, T, 64), &err);
  for (int64_t i = 0; i < T * 64; i++) ((float *)x.data)[i] = rnd(2.f) - 4.f; /* log-mel-like */
  double t0 = now_s();
  if (nq_hifigan_forward(v, &x, &y, &err)) {
    fprintf(stderr, "bench_av: %s\n", err.msg);
    return 1;
  }
  double t = now_s() - t0, gflop = 2.0 * macs_per_frame * (double)T / 1e9;
  printf("  hifigan         %.1f s of audio (%lld frames -> %lld samples): %.2f s, RTF %.3f, %.1f GFLOP, %.1f GFLOP/s "
         "(f32 weights; f32 GEMM peak %.1f)\n",
         secs, (long long)T, (long long)y.ne[1], t, t / secs, gflop, gflop / t, pk_f32);
  nq_tensor_deinit(&x), nq_tensor_deinit(&y);
  nq_hifigan_free(v);
  char p[600];
  snprintf(p, sizeof p, "%s/model.safetensors", dir), unlink(p);
  snprintf(p, sizeof p, "%s/config.json", dir), unlink(p);
  rmdir(dir);
  printf("  unet3d/unet2d   see bench_unet\n");
  return 0;
}

/* bench_cuda — the cuda backend's ops beside baselines measured in the same run on the same machine:
 *   peak    cuBLAS sgemm 4096^3 on device-resident data (f32, and TF32 tensor cores), and the host<->device copy
 *           bandwidth from pageable and from pinned memory (every op's activations travel through the backend's
 *           pinned staging; copies_share below is against the pinned figure);
 *   ops     linear (LLaMA-7B shapes, bf16 weights resident on the GPU: decode M=1, prefill M=128), conv2d (SD-1.5 UNet
 *           shapes, batch 2 = CFG), attention (the UNet's 64x64 self-attention, a 7B prefill block): median seconds
 *           on the cuda backend and on the host cpu backend (every core), the speedup, GFLOP/s as a share of the
 *           sgemm peak, and the share of the op's time the copies alone need at the measured bandwidth;
 *   check   each op's cuda result against the cpu backend's (relative L2).
 * Without a GPU (or built WITH_CUDA=0) it says so and exits 0. Medians of NQ_BENCH_REPS (default 5).
 * PyTorch twin, same shapes, resident and with the same copies: bench/torch_cuda_ops.py (needs a CUDA torch). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/bench_util.h"
#include "compute/core/ops.h"

#ifdef NQ_WITH_CUDA
#include <cublas_v2.h>
#include <cuda_runtime.h>
#endif

static int g_reps = 5;
static uint64_t g_rng = 0x243f6a8885a308d3ull;

static void fill(nq_tensor_t *t, float scale) {
  for (int64_t i = 0; i < nq_tensor_numel(t); i++) {
    g_rng ^= g_rng << 13, g_rng ^= g_rng >> 7, g_rng ^= g_rng << 17;
    nq_tensor_set(t, i, ((float)((g_rng >> 40) * (1.0 / 16777216.0)) * 2.0f - 1.0f) * scale);
  }
}

static double rel_l2(const nq_tensor_t *a, const nq_tensor_t *b) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < nq_tensor_numel(a); i++) {
    double x = ((const float *)a->data)[i], y = ((const float *)b->data)[i];
    num += (x - y) * (x - y), den += y * y;
  }
  return sqrt(num) / fmax(sqrt(den), 1e-30);
}

/* Median seconds of one op on be (after one warm-up run). */
static double time_op(nq_backend_t *be, nq_op_desc_t *d, int reps) {
  nq_err_t err = {0};
  if (be->iface->compute(be, d, &err) != 0) {
    fprintf(stderr, "bench_cuda: %s on %s: %s\n", nq_op_name(d->op), be->iface->name, err.msg);
    exit(1);
  }
  double v[64];
  if (reps > 64) reps = 64;
  for (int r = 0; r < reps; r++) {
    double t0 = nqb_now();
    be->iface->compute(be, d, &err);
    v[r] = nqb_now() - t0;
  }
  return nqb_median(v, reps);
}

static double g_peak = 0, g_bw = 0;

/* Runs d on cuda and cpu (dst swapped between), prints one line. bytes: activations moved per call. */
static void report(const char *name, nq_backend_t *cu, nq_backend_t *cpu, nq_op_desc_t *d, nq_tensor_t *y_cu,
                   nq_tensor_t *y_cpu, double flops, double bytes, int cpu_reps) {
  d->dst = y_cu;
  double tc = time_op(cu, d, g_reps);
  d->dst = y_cpu;
  double th = time_op(cpu, d, cpu_reps);
  double err = rel_l2(y_cu, y_cpu), gf = flops / tc / 1e9;
  printf("bench_cuda op=%s cuda_s=%.6f cpu_s=%.6f speedup=%.1fx cuda_gflops=%.0f of_sgemm_peak=%.0f%% "
         "copies_share=%.0f%% rel_l2=%.2e\n",
         name, tc, th, th / tc, gf, g_peak > 0 ? 100.0 * gf / g_peak : 0.0,
         g_bw > 0 ? 100.0 * (bytes / g_bw) / tc : 0.0, err);
  fflush(stdout);
}

static void linear_case(nq_backend_t *cu, nq_backend_t *cpu, int M, int N, int K) {
  nq_err_t err = {0};
  nq_tensor_t x, w, y1, y2;
  nq_tensor_init(&x, NQ_DT_F32, 2, NQ_SHAPE(M, K), &err);
  nq_tensor_init(&w, NQ_DT_BF16, 2, NQ_SHAPE(N, K), &err);
  nq_tensor_init(&y1, NQ_DT_F32, 2, NQ_SHAPE(M, N), &err);
  nq_tensor_init(&y2, NQ_DT_F32, 2, NQ_SHAPE(M, N), &err);
  fill(&x, 1), fill(&w, 0.05f);
  nq_linear_t lin;
  nq_linear_init(&lin, &w, NULL);
  if (cu->iface->linear_pack(cu, &lin, &err) != 0) {
    fprintf(stderr, "bench_cuda: pack: %s\n", err.msg);
    exit(1);
  }
  nq_op_desc_t d = {.op = NQ_OP_LINEAR, .src = {&x}, .lin = &lin};
  char name[64];
  snprintf(name, sizeof name, "linear_bf16_M%d_N%d_K%d", M, N, K);
  report(name, cu, cpu, &d, &y1, &y2, 2.0 * M * N * K, 4.0 * M * (N + K), M == 1 ? 20 : 3);
  nq_linear_deinit(&lin);
  nq_tensor_deinit(&x), nq_tensor_deinit(&y1), nq_tensor_deinit(&y2);
}

static void conv_case(nq_backend_t *cu, nq_backend_t *cpu, int N, int Ci, int Co, int H, int k) {
  nq_err_t err = {0};
  nq_tensor_t x, w, b, y1, y2;
  nq_tensor_init(&x, NQ_DT_F32, 4, NQ_SHAPE(N, Ci, H, H), &err);
  nq_tensor_init(&w, NQ_DT_BF16, 4, NQ_SHAPE(Co, Ci, k, k), &err);
  nq_tensor_init(&b, NQ_DT_F32, 1, NQ_SHAPE(Co), &err);
  nq_tensor_init(&y1, NQ_DT_F32, 4, NQ_SHAPE(N, Co, H, H), &err);
  nq_tensor_init(&y2, NQ_DT_F32, 4, NQ_SHAPE(N, Co, H, H), &err);
  fill(&x, 1), fill(&w, 0.05f), fill(&b, 0.1f);
  nq_op_desc_t d = {.op = NQ_OP_CONV2D, .src = {&x, &w, &b}, .i = {1, 1, k / 2, k / 2, 1, 1, 1}};
  char name[64];
  snprintf(name, sizeof name, "conv2d_bf16_N%d_%dto%d_%dx%d_k%d", N, Ci, Co, H, H, k);
  report(name, cu, cpu, &d, &y1, &y2, 2.0 * N * Co * H * H * Ci * k * k,
         4.0 * N * (Ci + Co) * H * H + 2.0 * Co * Ci * k * k, 2);
  nq_tensor_deinit(&x), nq_tensor_deinit(&w), nq_tensor_deinit(&b), nq_tensor_deinit(&y1), nq_tensor_deinit(&y2);
}

static void attn_case(nq_backend_t *cu, nq_backend_t *cpu, int T, int S, int H, int hd, int causal) {
  nq_err_t err = {0};
  nq_tensor_t q, k, v, y1, y2;
  nq_tensor_init(&q, NQ_DT_F32, 2, NQ_SHAPE(T, H * hd), &err);
  nq_tensor_init(&k, NQ_DT_F32, 2, NQ_SHAPE(S, H * hd), &err);
  nq_tensor_init(&v, NQ_DT_F32, 2, NQ_SHAPE(S, H * hd), &err);
  nq_tensor_init(&y1, NQ_DT_F32, 2, NQ_SHAPE(T, H * hd), &err);
  nq_tensor_init(&y2, NQ_DT_F32, 2, NQ_SHAPE(T, H * hd), &err);
  fill(&q, 1), fill(&k, 1), fill(&v, 1);
  nq_op_desc_t d = {.op = NQ_OP_ATTENTION, .src = {&q, &k, &v}, .f = {1.0f / sqrtf((float)hd)},
                    .i = {H, H, causal ? S - T : 0, causal}};
  char name[64];
  snprintf(name, sizeof name, "attention_T%d_S%d_H%d_hd%d%s", T, S, H, hd, causal ? "_causal" : "");
  report(name, cu, cpu, &d, &y1, &y2, 4.0 * T * S * H * hd * (causal ? 0.5 : 1.0), 4.0 * (2.0 * T + 2.0 * S) * H * hd,
         2);
  nq_tensor_deinit(&q), nq_tensor_deinit(&k), nq_tensor_deinit(&v), nq_tensor_deinit(&y1), nq_tensor_deinit(&y2);
}

#ifdef NQ_WITH_CUDA
/* sgemm 4096^3 on device memory (no copies): the ceiling of every GEMM-shaped op here. */
static double device_peak(int tf32) {
  const int n = 4096;
  float *a, *b, *c;
  cublasHandle_t h;
  if (cudaMalloc((void **)&a, sizeof(float) * n * n) || cudaMalloc((void **)&b, sizeof(float) * n * n) ||
      cudaMalloc((void **)&c, sizeof(float) * n * n) || cublasCreate(&h))
    return 0;
  cudaMemset(a, 0, sizeof(float) * n * n), cudaMemset(b, 0, sizeof(float) * n * n);
  cublasSetMathMode(h, tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH);
  const float one = 1, zero = 0;
  double v[16];
  for (int r = -1; r < 7; r++) {
    cudaDeviceSynchronize();
    double t0 = nqb_now();
    cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &one, a, n, b, n, &zero, c, n);
    cudaDeviceSynchronize();
    if (r >= 0) v[r] = nqb_now() - t0;
  }
  cublasDestroy(h);
  cudaFree(a), cudaFree(b), cudaFree(c);
  return 2.0 * n * n * (double)n / nqb_median(v, 7) / 1e9;
}

/* Bytes per second of a 64 MiB host -> device + device -> host round trip from pageable (malloc) or pinned memory. */
static double copy_bw(int pinned) {
  size_t bytes = (size_t)64 << 20;
  void *h = NULL, *d = NULL;
  if (pinned ? cudaMallocHost(&h, bytes) != cudaSuccess : !(h = malloc(bytes))) return 0;
  if (cudaMalloc(&d, bytes)) return 0;
  memset(h, 1, bytes);
  double v[8];
  for (int r = -1; r < 5; r++) {
    double t0 = nqb_now();
    cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice);
    cudaMemcpy(h, d, bytes, cudaMemcpyDeviceToHost);
    if (r >= 0) v[r] = nqb_now() - t0;
  }
  cudaFree(d);
  if (pinned) cudaFreeHost(h);
  else free(h);
  return 2.0 * bytes / nqb_median(v, 5);
}
#endif

int main(void) {
  const char *r = getenv("NQ_BENCH_REPS");
  if (r && atoi(r) > 0) g_reps = atoi(r);
  nq_err_t err = {0};
  nq_backend_t *cu = nq_backend_cuda_new(NULL, &err);
  if (!cu) {
    printf("bench_cuda: skipped: %s\n", err.msg);
    return 0;
  }
  nq_backend_t *cpu = nq_backend_cpu_new(NULL, &err);
  if (!cpu) {
    fprintf(stderr, "bench_cuda: cpu backend: %s\n", err.msg);
    return 1;
  }
#ifdef NQ_WITH_CUDA
  struct cudaDeviceProp prop;
  int dev = 0;
  cudaGetDevice(&dev);
  cudaGetDeviceProperties(&prop, dev);
  g_peak = device_peak(0);
  double tf = device_peak(1);
  double pageable = copy_bw(0), pinned = copy_bw(1);
  const char *pe = getenv("NQ_CUDA_PINNED");
  g_bw = pe && *pe == '0' ? pageable : pinned; /* what the backend's copies can reach at best */
  printf("bench_cuda device=\"%s\" sgemm_peak_gflops=%.0f tf32_peak_gflops=%.0f copy_gbps_pageable=%.1f "
         "copy_gbps_pinned=%.1f tf32=%s pinned_staging=%s host_threads=%d\n",
         prop.name, g_peak, tf, pageable / 1e9, pinned / 1e9, getenv("NQ_CUDA_TF32") ? getenv("NQ_CUDA_TF32") : "0",
         pe && *pe == '0' ? "off" : "on", nq_pool_size(nq_pool_default()));
  if (getenv("NQ_CUDA_TF32") && *getenv("NQ_CUDA_TF32") == '1') g_peak = tf;
#endif
  fflush(stdout);
  linear_case(cu, cpu, 1, 4096, 4096);
  linear_case(cu, cpu, 1, 11008, 4096);
  linear_case(cu, cpu, 128, 4096, 4096);
  linear_case(cu, cpu, 128, 11008, 4096);
  conv_case(cu, cpu, 2, 320, 320, 64, 3);
  conv_case(cu, cpu, 2, 640, 640, 32, 3);
  conv_case(cu, cpu, 2, 1280, 1280, 8, 3);
  conv_case(cu, cpu, 2, 320, 320, 64, 1);
  attn_case(cu, cpu, 4096, 4096, 8, 40, 0);
  attn_case(cu, cpu, 128, 128, 32, 128, 1);
  attn_case(cu, cpu, 512, 512, 32, 128, 1);
  nq_backend_free(cu);
  nq_backend_free(cpu);
  return 0;
}

/* bench/bench_llm.c — LLaMA-7B-shaped decode/prefill throughput beside in-run hardware baselines.
 *
 * Random BF16 weights of the 7B shapes (dim 4096, FFN 11008, 32 heads, vocab 32000) made in memory.
 * By default only --layers 4 of the 32 are built so the run stays under ~2 minutes and ~2.4 GB;
 * the fraction-of-bound figures do not depend on the layer count (weights streamed per token are
 * counted for the layers actually built), and the 32-layer tok/s is extrapolated from the
 * measured per-layer and head times (printed as such).
 *
 *   decode      batch-1 tok/s; bound = DRAM bandwidth (measured here, 2 threads streaming reads) /
 *               weight bytes per token
 *   prefill     GFLOP/s over a 128-token prompt beside the oneDNN GEMM peak measured here (bf16 when
 *               oneDNN has native bf16 on this CPU, else f32, said in the output)
 *   batched     decode throughput at batch 1/4/16 (one forward per step for all sequences)
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "compute/core/pool.h"
#include "compute/models/llama.h"
#include "bench/bench_util.h"

#if defined(__AVX2__)
#include <immintrin.h>
#endif

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

typedef struct {
  const float *buf;
  double sum[64];
} bw_t;

static void bw_cb(void *ctx, int64_t b, int64_t e, int tid) {
  bw_t *w = ctx;
#if defined(__AVX2__)
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  for (int64_t i = b; i + 32 <= e; i += 32) {
    a0 = _mm256_add_ps(a0, _mm256_load_ps(w->buf + i));
    a1 = _mm256_add_ps(a1, _mm256_load_ps(w->buf + i + 8));
    a2 = _mm256_add_ps(a2, _mm256_load_ps(w->buf + i + 16));
    a3 = _mm256_add_ps(a3, _mm256_load_ps(w->buf + i + 24));
  }
  float t[8];
  _mm256_storeu_ps(t, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
  w->sum[tid] = t[0] + t[7];
#else
  double s = 0;
  for (int64_t i = b; i < e; i++) s += w->buf[i];
  w->sum[tid] = s;
#endif
}

/* Streaming-read bandwidth with the compute pool (GB/s, best of 5 over 1 GiB). */
static double dram_bandwidth(void) {
  int64_t n = (int64_t)1 << 28; /* floats = 1 GiB */
  float *buf = aligned_alloc(64, (size_t)n * 4);
  if (!buf) return 0;
  for (int64_t i = 0; i < n; i++) buf[i] = (float)(i & 7);
  bw_t w = {.buf = buf};
  double best = 0;
  for (int r = 0; r < 5; r++) {
    double t = now_s();
    nq_pool_for(nq_pool_default(), n, 4096, bw_cb, &w);
    double gbs = (double)n * 4 / (now_s() - t) / 1e9;
    if (gbs > best) best = gbs;
  }
  free(buf);
  return best;
}

/* One decode step of `bsz` sequences at context `ctx`; returns seconds per step (median of steps). */
static double decode_step_time(nq_llama_model_t *m, int bsz, int prompt, int steps, nq_err_t *err) {
  nq_llama_kv_t *kv = nq_llama_kv_new(m, bsz, prompt + steps + 1, err);
  if (!kv) return -1;
  int *slot = malloc(sizeof(int) * (size_t)bsz), *nt = malloc(sizeof(int) * (size_t)bsz);
  int32_t *tok = malloc(sizeof(int32_t) * (size_t)(bsz * prompt));
  float *lg = malloc(sizeof(float) * (size_t)bsz * (size_t)m->cfg.vocab_size);
  for (int i = 0; i < bsz * prompt; i++) tok[i] = (i * 7919) % m->cfg.vocab_size;
  for (int i = 0; i < bsz; i++) slot[i] = i, nt[i] = prompt;
  nq_llama_batch_t b = {.n_seq = bsz, .slot = slot, .n_tokens = nt, .tokens = tok, .logits = lg};
  double best = 1e9;
  if (nq_llama_forward(m, kv, &b, err) == 0) {
    for (int i = 0; i < bsz; i++) nt[i] = 1;
    for (int s = 0; s < steps; s++) {
      double t = now_s();
      if (nq_llama_forward(m, kv, &b, err) < 0) {
        best = -1;
        break;
      }
      double dt = now_s() - t;
      if (dt < best) best = dt;
    }
  } else {
    best = -1;
  }
  free(slot), free(nt), free(tok), free(lg);
  nq_llama_kv_free(kv);
  return best;
}

int main(int argc, char **argv) {
  int layers = 4, threads = 2, prefill_T = 128;
  for (int i = 1; i + 1 < argc; i++) {
    if (!strcmp(argv[i], "--layers")) layers = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--threads")) threads = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--prefill")) prefill_T = atoi(argv[++i]);
  }
  if (layers < 1 || layers > 32 || threads < 1 || prefill_T < 16) {
    fprintf(stderr, "usage: bench_llm [--layers 1..32] [--threads N] [--prefill T>=16]\n");
    return 2;
  }
  nq_compute_set_threads(threads);
  nq_err_t err = {0};
  printf("bench_llm: LLaMA-7B shapes (dim 4096, ffn 11008, 32 heads, vocab 32000), BF16 random weights, %d of 32 "
         "layers built, %d threads\n",
         layers, threads);
  double bw = dram_bandwidth();
  printf("  DRAM read bandwidth (measured, %d threads):       %8.2f GB/s\n", threads, bw);
  double peak_bf16 = nqb_gemm_peak("onednn", NQ_DT_BF16, prefill_T, 4096, 4096, 3);
  double peak_f32 = nqb_gemm_peak("onednn", NQ_DT_F32, prefill_T, 4096, 4096, 3);
  double peak_blas = nqb_gemm_peak("openblas", NQ_DT_F32, prefill_T, 4096, 4096, 3);
  double peak = peak_bf16 > 0 ? peak_bf16 : peak_f32;
  printf("  oneDNN GEMM peak M=%d N=K=4096: bf16 %s, f32 %.1f GFLOP/s (OpenBLAS sgemm %.1f)\n", prefill_T,
         peak_bf16 > 0 ? "" : "unavailable on this CPU (no AVX512-BF16 kernels in oneDNN 2.6)", peak_f32, peak_blas);
  if (peak_bf16 > 0) printf("                                   bf16 %.1f GFLOP/s\n", peak_bf16);

  nq_llama_config_t c = {.dim = 4096, .hidden_dim = 11008, .n_layers = layers, .n_heads = 32, .n_kv_heads = 32,
                         .vocab_size = 32000, .max_ctx = 2048, .norm_eps = 1e-6f, .rope_theta = 10000.0f,
                         .rope_mode = NQ_ROPE_HALF, .bos_id = 1, .eos_id = 2};
  nq_llama_model_t *m;
  double t0 = now_s();
  if (nq_llama_new_random(&c, NQ_DT_BF16, 1234, "auto", &m, &err) < 0) {
    fprintf(stderr, "bench_llm: %s\n", err.msg);
    return 1;
  }
  size_t wbytes = nq_llama_weight_bytes(m);
  printf("  model built in %.1f s: %.2f GB of linear weights read per decode step\n", now_s() - t0, (double)wbytes / 1e9);

  /* decode, batch 1 */
  double step = decode_step_time(m, 1, 16, 6, &err);
  if (step < 0) {
    fprintf(stderr, "bench_llm: %s\n", err.msg);
    return 1;
  }
  double bound = bw * 1e9 / (double)wbytes; /* tok/s if every weight byte streams at DRAM speed */
  printf("  decode batch 1:   %7.3f tok/s  (%.1f ms/token); bound %.3f tok/s -> %.0f%% of the bandwidth bound\n",
         1.0 / step, step * 1e3, bound, 100.0 / step / bound);
  size_t per_layer = (wbytes - (size_t)32000 * 4096 * 2) / (size_t)layers;
  size_t bytes_7b = per_layer * 32 + (size_t)32000 * 4096 * 2;
  double t7 = step * (double)bytes_7b / (double)wbytes;
  printf("  decode batch 1, 32-layer 7B extrapolated (same bytes/s): %.3f tok/s (bound %.3f)\n", 1.0 / t7,
         bw * 1e9 / (double)bytes_7b);

  /* prefill */
  {
    nq_llama_kv_t *kv = nq_llama_kv_new(m, 1, prefill_T, &err);
    int32_t *tok = malloc(sizeof(int32_t) * (size_t)prefill_T);
    for (int i = 0; i < prefill_T; i++) tok[i] = (i * 131) % 32000;
    float *lg = malloc(sizeof(float) * 32000);
    int slot = 0;
    nq_llama_batch_t b = {.n_seq = 1, .slot = &slot, .n_tokens = &prefill_T, .tokens = tok, .logits = lg};
    double best = 1e9;
    for (int r = 0; r < 2; r++) {
      nq_llama_kv_reset(kv, 0);
      double t = now_s();
      if (nq_llama_forward(m, kv, &b, &err) < 0) {
        fprintf(stderr, "bench_llm: %s\n", err.msg);
        return 1;
      }
      double dt = now_s() - t;
      if (dt < best) best = dt;
    }
    /* linear FLOPs of all rows (the head only runs on the last row) + attention */
    double lin_params = (double)(wbytes - (size_t)32000 * 4096 * 2) / 2.0;
    double flops = 2.0 * lin_params * prefill_T + 2.0 * 32000 * 4096 +
                   (double)layers * 2.0 * 2.0 * 4096.0 * prefill_T * (prefill_T + 1) / 2.0;
    double g = flops / best / 1e9, best_peak = peak > peak_blas ? peak : peak_blas;
    printf("  prefill %d tokens: %.2f s, %.1f GFLOP/s = %.0f%% of the oneDNN %s GEMM peak, %.0f%% of the best GEMM "
           "peak measured (%.1f)\n",
           prefill_T, best, g, 100.0 * g / peak, peak_bf16 > 0 ? "bf16" : "f32", 100.0 * g / best_peak, best_peak);
    free(tok), free(lg);
    nq_llama_kv_free(kv);
  }

  /* batched decode */
  int bs[3] = {1, 4, 16};
  for (int i = 0; i < 3; i++) {
    double s = decode_step_time(m, bs[i], 8, 4, &err);
    if (s < 0) {
      fprintf(stderr, "bench_llm: %s\n", err.msg);
      return 1;
    }
    printf("  batched decode, batch %2d: %8.3f tok/s total (%.1f ms/step)\n", bs[i], bs[i] / s, s * 1e3);
  }
  nq_llama_free(m);
  return 0;
}

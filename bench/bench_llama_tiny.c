/* bench/bench_llama_tiny.c — a tiny LLaMA forward (stories260K shapes: dim 64, hidden 172, 5 layers, 8 heads, 4 KV
 * heads, vocab 512) with random f32 weights, beside PyTorch on the same shapes and thread count (make bench):
 *   prefill  one forward over 256 tokens (logits for every token), median seconds;
 *   decode   256 single-token forwards through the KV cache (logits of the new token), median seconds for all 256.
 * The PyTorch twin is bench/torch_llama.py (Debian's python3-torch 1.13, torch.set_num_threads(--threads)); the
 * ratio printed is torch time / our time (> 1: we are faster). At these sizes both measure per-op overhead, not FLOPs.
 *
 *   build/bench/bench_llama_tiny [--threads 2] [--seq 256] [--reps 5]
 * Default: a few seconds (plus ~10 s of torch when installed).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/bench_util.h"
#include "compute/core/pool.h"
#include "compute/models/llama.h"

int main(int argc, char **argv) {
  int threads = 2, seq = 256, reps = 5;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--threads")) threads = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--seq")) seq = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--reps")) reps = atoi(argv[i + 1]);
    else {
      fprintf(stderr, "usage: bench_llama_tiny [--threads N] [--seq N] [--reps N]\n");
      return 2;
    }
  }
  if (threads < 1 || seq < 1 || seq > 4096 || reps < 1 || reps > 64) {
    fprintf(stderr, "bench_llama_tiny: bad arguments\n");
    return 2;
  }
  char ts[16];
  snprintf(ts, sizeof ts, "%d", threads);
  setenv("NQ_THREADS", ts, 1);
  double la[3] = {0};
  if (getloadavg(la, 3) < 0) la[0] = -1;
  printf("bench_llama_tiny: %d compute threads, load average %.2f at start\n", nq_compute_threads(), la[0]);
  nq_llama_config_t c = {.dim = 64, .hidden_dim = 172, .n_layers = 5, .n_heads = 8, .n_kv_heads = 4, .head_dim = 8,
                         .vocab_size = 512, .max_ctx = seq, .norm_eps = 1e-5f, .rope_theta = 10000.f,
                         .rope_mode = NQ_ROPE_INTERLEAVED, .bos_id = 1, .eos_id = 2};
  nq_err_t err = {0};
  nq_llama_model_t *m = NULL;
  if (nq_llama_new_random(&c, NQ_DT_F32, 7, NULL, &m, &err) < 0) {
    fprintf(stderr, "bench_llama_tiny: %s\n", err.msg);
    return 1;
  }
  nq_llama_kv_t *kv = nq_llama_kv_new(m, 1, seq, &err);
  if (!kv) {
    fprintf(stderr, "bench_llama_tiny: %s\n", err.msg);
    return 1;
  }
  int32_t *tok = malloc(sizeof(int32_t) * (size_t)seq);
  float *logits = malloc(sizeof(float) * (size_t)seq * 512);
  for (int i = 0; i < seq; i++) tok[i] = (int32_t)((i * 37 + 11) % 512);
  int slot = 0, rc = 0;
  double vp[64], vd[64];
  for (int r = 0; r <= reps && rc == 0; r++) { /* r = 0: warm-up */
    nq_llama_kv_reset(kv, 0);
    nq_llama_batch_t b = {.n_seq = 1, .slot = &slot, .n_tokens = &seq, .tokens = tok, .logits_all = true,
                          .logits = logits};
    double t = nqb_now();
    rc = nq_llama_forward(m, kv, &b, &err);
    if (r) vp[r - 1] = nqb_now() - t;
    nq_llama_kv_reset(kv, 0);
    int one = 1;
    t = nqb_now();
    for (int i = 0; i < seq && rc == 0; i++) {
      nq_llama_batch_t d = {.n_seq = 1, .slot = &slot, .n_tokens = &one, .tokens = tok + i, .logits = logits};
      rc = nq_llama_forward(m, kv, &d, &err);
    }
    if (r) vd[r - 1] = nqb_now() - t;
  }
  if (rc < 0) {
    fprintf(stderr, "bench_llama_tiny: %s\n", err.msg);
    return 1;
  }
  double tp = nqb_median(vp, reps), td = nqb_median(vd, reps);
  printf("  ours:  prefill %d tokens %.2f ms (%.0f tok/s); decode %d tokens %.2f ms (%.0f tok/s); median of %d, f32\n",
         seq, tp * 1e3, seq / tp, seq, td * 1e3, seq / td, reps);
  char args[128];
  snprintf(args, sizeof args, "--threads %d --seq %d --reps %d", threads, seq, reps);
  double tpt = -1, tdt = nqb_run_torch("torch_llama.py", args, &tpt); /* prefill line first, decode last */
  if (tpt > 0 && tdt > 0)
    printf("  ratio torch/ours: prefill %.2fx, decode %.2fx (> 1: ours is faster)\n", tpt / tp, tdt / td);
  nq_llama_kv_free(kv);
  nq_llama_free(m);
  free(tok), free(logits);
  return 0;
}

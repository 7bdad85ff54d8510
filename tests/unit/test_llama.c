/* LLaMA forward, generation and loaders against llama2.c / float64 references. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "compute/models/llama_gen.h"

#define STORIES NQ_SHARED_DIR "/models/stories260K"
#define LOGITS_CASE NQ_SHARED_DIR "/golden/text/llm-logits-stories260K-llama2c"
#define GREEDY_CASE NQ_SHARED_DIR "/golden/text/llm-greedy-stories260K-llama2c"

static char *slurp(const char *path) {
  FILE *f = fopen(path, "rb");
  cr_assert(f, "cannot open %s", path);
  fseek(f, 0, SEEK_END);
  long l = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *b = malloc((size_t)l + 1);
  cr_assert_eq(fread(b, 1, (size_t)l, f), (size_t)l);
  b[l] = 0;
  fclose(f);
  return b;
}

static nq_llm_t *open_stories(const char *backends, int wdtype) {
  nq_llama_load_opts_t o;
  nq_llama_load_opts_init(&o);
  o.backends = backends;
  o.wdtype = wdtype;
  nq_err_t err = {0};
  nq_llm_t *llm;
  cr_assert_eq(nq_llm_open(STORIES "/stories260K.bin", STORIES "/tok512.bin", &o, &llm, &err), 0, "%s", err.msg);
  return llm;
}

/* logits of `tokens` (one sequence, all rows) vs the float64 golden; returns rel_l2, max_abs via out */
static double check_logits(nq_llama_model_t *m, const int32_t *tokens, int n, const float *want, double *max_abs) {
  nq_err_t err = {0};
  int V = m->cfg.vocab_size;
  nq_llama_kv_t *kv = nq_llama_kv_new(m, 1, n, &err);
  cr_assert(kv, "%s", err.msg);
  float *lg = malloc(sizeof(float) * (size_t)(n * V));
  int slot = 0;
  nq_llama_batch_t b = {.n_seq = 1, .slot = &slot, .n_tokens = &n, .tokens = tokens, .logits_all = true, .logits = lg};
  cr_assert_eq(nq_llama_forward(m, kv, &b, &err), 0, "%s", err.msg);
  double num = 0, den = 0, mx = 0;
  for (int i = 0; i < n * V; i++) {
    double d = (double)lg[i] - want[i];
    num += d * d, den += (double)want[i] * want[i];
    if (fabs(d) > mx) mx = fabs(d);
  }
  free(lg);
  nq_llama_kv_free(kv);
  *max_abs = mx;
  return sqrt(num) / sqrt(den);
}

static void load_case(int32_t *tokens, float *logits) {
  nq_err_t err = {0};
  nq_st_file_t *in, *ex;
  cr_assert_eq(nq_st_open(LOGITS_CASE "/inputs.safetensors", &in, &err), 0, "%s", err.msg);
  cr_assert_eq(nq_st_open(LOGITS_CASE "/expected.safetensors", &ex, &err), 0, "%s", err.msg);
  const nq_st_tensor_t *t = nq_st_find(in, "tokens"), *l = nq_st_find(ex, "logits");
  cr_assert(t && l && t->nbytes == 32 * 4 && l->nbytes == 32 * 512 * 4);
  memcpy(tokens, t->data, t->nbytes);
  memcpy(logits, l->data, l->nbytes);
  nq_st_close(in), nq_st_close(ex);
}

Test(llama, golden_logits_every_backend) {
  int32_t tokens[32];
  float *want = malloc(sizeof(float) * 32 * 512);
  load_case(tokens, want);
  const char *specs[] = {"ref", "cpu", "openblas", "onednn", "cuda,cpu", "auto"};
  for (int i = 0; i < 6; i++) {
    nq_llama_load_opts_t o;
    nq_llama_load_opts_init(&o);
    o.backends = specs[i];
    nq_err_t err = {0};
    nq_llama_model_t *m;
    if (nq_llama_load(STORIES "/stories260K.bin", &o, &m, &err) < 0) {
      cr_log_info("backend %s not available: %s", specs[i], err.msg);
      continue;
    }
    double mx, r = check_logits(m, tokens, 32, want, &mx);
    cr_expect_leq(r, 1e-4, "%s: rel_l2 %g", specs[i], r);
    cr_expect_leq(mx, 2e-3, "%s: max_abs %g", specs[i], mx);
    nq_llama_free(m);
  }
  /* bf16 weights: the golden README's bf16 tolerance */
  nq_llm_t *llm = open_stories(NULL, NQ_DT_BF16);
  double mx, r = check_logits(llm->model, tokens, 32, want, &mx);
  cr_expect_leq(r, 1e-2, "bf16: rel_l2 %g", r);
  nq_llm_free(llm);
  free(want);
}

/* Token-by-token decode must give the same logits as the one-shot prefill (KV cache correctness). */
Test(llama, incremental_decode_matches_golden) {
  int32_t tokens[32];
  float *want = malloc(sizeof(float) * 32 * 512);
  load_case(tokens, want);
  nq_llm_t *llm = open_stories(NULL, -1);
  nq_err_t err = {0};
  nq_llama_kv_t *kv = nq_llama_kv_new(llm->model, 1, 32, &err);
  float lg[512];
  int slot = 0, one = 1;
  double worst = 0;
  for (int p = 0; p < 32; p++) {
    nq_llama_batch_t b = {.n_seq = 1, .slot = &slot, .n_tokens = &one, .tokens = &tokens[p], .logits = lg};
    cr_assert_eq(nq_llama_forward(llm->model, kv, &b, &err), 0, "%s", err.msg);
    for (int v = 0; v < 512; v++) worst = fmax(worst, fabs(lg[v] - want[p * 512 + v]));
  }
  cr_expect_leq(worst, 2e-3, "max_abs %g", worst);
  nq_llama_kv_free(kv);
  nq_llm_free(llm);
  free(want);
}

Test(llama, greedy_200_matches_llama2c) {
  nq_llm_t *llm = open_stories(NULL, -1);
  nq_err_t err = {0};
  nq_st_file_t *ex;
  cr_assert_eq(nq_st_open(GREEDY_CASE "/expected.safetensors", &ex, &err), 0);
  const int32_t *want = nq_st_find(ex, "generated")->data;
  nq_gen_params_t p;
  nq_gen_params_init(&p);
  p.sampling.temperature = 0;
  p.max_new_tokens = 200;
  nq_gen_result_t r;
  const char *prompt = "";
  cr_assert_eq(nq_llm_generate_batch(llm, &prompt, 1, &p, &r, &err), 0, "%s", err.msg);
  cr_assert_eq(r.n_tokens, 200);
  for (int i = 0; i < 200; i++) cr_expect_eq(r.tokens[i], want[i], "token %d: %d != %d", i, r.tokens[i], want[i]);
  char *text = slurp(STORIES "/expected_t0_n200.txt");
  cr_expect_str_eq(r.text, text);
  free(text);
  nq_gen_result_deinit(&r);
  nq_st_close(ex);
  nq_llm_free(llm);
}

Test(llama, prompted_and_sampled_match_llama2c) {
  nq_llm_t *llm = open_stories(NULL, -1);
  nq_err_t err = {0};
  nq_gen_params_t p;
  nq_gen_params_init(&p);
  p.sampling.temperature = 0;
  p.max_new_tokens = 60; /* run.c -n 64: 4 prompt tokens after BOS, then 60 generated */
  nq_gen_result_t r;
  const char *prompt = "Once upon a time";
  cr_assert_eq(nq_llm_generate_batch(llm, &prompt, 1, &p, &r, &err), 0, "%s", err.msg);
  char *want = slurp(STORIES "/expected_t0_n64_prompt_OnceUponATime.txt");
  size_t wl = strlen(want);
  if (wl && want[wl - 1] == '\n') want[--wl] = 0; /* run.c's final newline */
  cr_expect_str_eq(r.text, want + 16);
  nq_gen_result_deinit(&r);
  free(want);
  /* -t 1.0 -p 0.9 -s 133742 (run.c default -n 256) */
  p.sampling.temperature = 1.0f, p.sampling.top_p = 0.9f, p.sampling.seed = 133742, p.max_new_tokens = 256;
  prompt = "";
  cr_assert_eq(nq_llm_generate_batch(llm, &prompt, 1, &p, &r, &err), 0, "%s", err.msg);
  want = slurp(STORIES "/expected_t1_p0.9_s133742_llama2c_rng.txt");
  wl = strlen(want);
  if (wl && want[wl - 1] == '\n') want[--wl] = 0; /* run.c's final newline */
  cr_expect_str_eq(r.text, want);
  nq_gen_result_deinit(&r);
  free(want);
  nq_llm_free(llm);
}

Test(llama, batched_decode_equals_single_runs) {
  nq_llm_t *llm = open_stories(NULL, -1);
  nq_err_t err = {0};
  const char *prompts[8] = {"Once upon a time", "Lily", "The cat sat", "One day, a big dog", "Tom and Sue went",
                            "", "She was happy because", "A little bird"};
  nq_gen_params_t p;
  nq_gen_params_init(&p);
  p.sampling.temperature = 0;
  p.stop_at_eos = false;
  p.max_new_tokens = 40;
  nq_gen_result_t single[8], batch[8], refill[8];
  for (int i = 0; i < 8; i++) {
    p.max_batch = 1;
    p.max_new_tokens = 20 + 5 * i; /* different lengths: slots finish at different steps */
    cr_assert_eq(nq_llm_generate_batch(llm, &prompts[i], 1, &p, &single[i], &err), 0, "%s", err.msg);
  }
  /* all 8 in one batch, and 3 slots with refill; per-prompt max lengths differ, so run per-length groups */
  for (int mode = 0; mode < 2; mode++) {
    nq_gen_result_t *out = mode ? refill : batch;
    p.max_batch = mode ? 3 : 8;
    p.max_new_tokens = 55;
    cr_assert_eq(nq_llm_generate_batch(llm, prompts, 8, &p, out, &err), 0, "%s", err.msg);
    for (int i = 0; i < 8; i++) {
      int n = single[i].n_tokens;
      cr_assert_geq(out[i].n_tokens, n);
      for (int k = 0; k < n; k++)
        cr_expect_eq(out[i].tokens[k], single[i].tokens[k], "mode %d prompt %d token %d", mode, i, k);
      nq_gen_result_deinit(&out[i]);
    }
  }
  for (int i = 0; i < 8; i++) nq_gen_result_deinit(&single[i]);
  nq_llm_free(llm);
}

Test(llama, hidden_states_and_stops) {
  nq_llm_t *llm = open_stories(NULL, -1);
  nq_err_t err = {0};
  nq_gen_params_t p;
  nq_gen_params_init(&p);
  p.sampling.temperature = 0;
  p.max_new_tokens = 10;
  p.want_hidden = true;
  nq_gen_result_t r;
  const char *prompt = "";
  cr_assert_eq(nq_llm_generate_batch(llm, &prompt, 1, &p, &r, &err), 0, "%s", err.msg);
  cr_assert_eq(r.n_tokens, 10);
  /* hidden[k] is the final-norm state fed token k: the classifier on it gives the logits of step k+1,
   * whose argmax is token k+1 */
  nq_llama_model_t *m = llm->model;
  for (int k = 0; k + 1 < r.n_tokens; k++) {
    float lg[512];
    for (int v = 0; v < 512; v++) {
      const float *e = (const float *)m->lm_head.w.data + v * 64;
      float s = 0;
      for (int d = 0; d < 64; d++) s += e[d] * r.hidden[k * 64 + d];
      lg[v] = s;
    }
    cr_expect_eq(nq_sample_argmax(lg, 512), r.tokens[k + 1], "step %d", k);
  }
  nq_gen_result_deinit(&r);
  /* stop string: cut before it */
  const char *stops[] = {"Lily"};
  p.want_hidden = false, p.stop_strings = stops, p.n_stop_strings = 1, p.max_new_tokens = 100;
  cr_assert_eq(nq_llm_generate_batch(llm, &prompt, 1, &p, &r, &err), 0);
  cr_expect_eq(r.stop_reason, NQ_GEN_STOP_STRING);
  cr_expect_str_eq(r.text, "Once upon a time, there was a little girl named ");
  nq_gen_result_deinit(&r);
  /* stop id: 261 is "," in tok512? whatever the first generated id is, stopping on it gives nothing */
  int32_t first;
  p.n_stop_strings = 0, p.max_new_tokens = 1;
  cr_assert_eq(nq_llm_generate_batch(llm, &prompt, 1, &p, &r, &err), 0);
  first = r.tokens[0];
  nq_gen_result_deinit(&r);
  p.stop_ids = &first, p.n_stop_ids = 1, p.max_new_tokens = 5;
  cr_assert_eq(nq_llm_generate_batch(llm, &prompt, 1, &p, &r, &err), 0);
  cr_expect_eq(r.n_tokens, 0);
  cr_expect_eq(r.stop_reason, NQ_GEN_STOP_ID);
  nq_gen_result_deinit(&r);
  nq_llm_free(llm);
}

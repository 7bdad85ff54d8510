/* HF LLaMA directory loader and LoRA: stories260K re-exported in HF layout (q/k rows permuted to
 * rotate_half order, as transformers' conversion script does) must reproduce the llama2.c golden
 * logits; a peft adapter must act exactly like the weight edit W + (alpha/r) B A. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "compute/io/llama2c.h"
#include "compute/models/llama.h"

#define LOGITS_CASE NQ_SHARED_DIR "/golden/text/llm-logits-stories260K-llama2c"

static void write_file(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  cr_assert(f);
  fputs(text, f);
  fclose(f);
}

/* HF rows of a q/k weight: hf row (h, j, i) = llama2.c row (h, i, j); j in {0,1}, i < hd/2 */
static void permute_rows(float *dst, const float *src, int heads, int hd, int dim) {
  for (int h = 0; h < heads; h++)
    for (int j = 0; j < 2; j++)
      for (int i = 0; i < hd / 2; i++)
        memcpy(dst + ((size_t)h * hd + (size_t)j * (hd / 2) + i) * dim, src + ((size_t)h * hd + 2 * i + j) * dim,
               sizeof(float) * (size_t)dim);
}

/* Writes dir/config.json + dir/model.safetensors from stories260K; dq (if not NULL) is added to layer-0 q_proj. */
static void export_hf(const char *dir, const double *dq) {
  nq_err_t err = {0};
  nq_llama2c_file_t f;
  cr_assert_eq(nq_llama2c_open(NQ_SHARED_DIR "/models/stories260K/stories260K.bin", &f, &err), 0, "%s", err.msg);
  mkdir(dir, 0755);
  char p[512];
  snprintf(p, sizeof p, "%s/config.json", dir);
  write_file(p, "{\"model_type\":\"llama\",\"hidden_size\":64,\"intermediate_size\":172,\"num_hidden_layers\":5,"
                "\"num_attention_heads\":8,\"num_key_value_heads\":4,\"vocab_size\":512,\"rms_norm_eps\":1e-5,"
                "\"rope_theta\":10000.0,\"max_position_embeddings\":512,\"tie_word_embeddings\":true}");
  nq_st_writer_t *w = nq_st_writer_new();
  const int D = 64, F = 172, KV = 32, hd = 8;
  float *tmp = malloc(sizeof(float) * D * D);
  nq_st_writer_add_f32(w, "model.embed_tokens.weight", 2, NQ_SHAPE(512, D), f.tok_emb, &err);
  nq_st_writer_add_f32(w, "model.norm.weight", 1, NQ_SHAPE(D), f.rms_final, &err);
  for (int l = 0; l < 5; l++) {
    char n[128];
#define ADD(fmt, nd, shape, data)                                              \
  snprintf(n, sizeof n, fmt, l);                                               \
  cr_assert_eq(nq_st_writer_add_f32(w, n, nd, shape, data, &err), 0, "%s", err.msg)
    ADD("model.layers.%d.input_layernorm.weight", 1, NQ_SHAPE(D), f.rms_att + l * D);
    ADD("model.layers.%d.post_attention_layernorm.weight", 1, NQ_SHAPE(D), f.rms_ffn + l * D);
    permute_rows(tmp, f.wq + l * D * D, 8, hd, D);
    if (dq && l == 0)
      for (int i = 0; i < D * D; i++) tmp[i] = (float)(tmp[i] + dq[i]);
    ADD("model.layers.%d.self_attn.q_proj.weight", 2, NQ_SHAPE(D, D), tmp);
    permute_rows(tmp, f.wk + l * KV * D, 4, hd, D);
    ADD("model.layers.%d.self_attn.k_proj.weight", 2, NQ_SHAPE(KV, D), tmp);
    ADD("model.layers.%d.self_attn.v_proj.weight", 2, NQ_SHAPE(KV, D), f.wv + l * KV * D);
    ADD("model.layers.%d.self_attn.o_proj.weight", 2, NQ_SHAPE(D, D), f.wo + l * D * D);
    ADD("model.layers.%d.mlp.gate_proj.weight", 2, NQ_SHAPE(F, D), f.w1 + l * F * D);
    ADD("model.layers.%d.mlp.down_proj.weight", 2, NQ_SHAPE(D, F), f.w2 + l * D * F);
    ADD("model.layers.%d.mlp.up_proj.weight", 2, NQ_SHAPE(F, D), f.w3 + l * F * D);
#undef ADD
  }
  snprintf(p, sizeof p, "%s/model.safetensors", dir);
  cr_assert_eq(nq_st_writer_save(w, p, &err), 0, "%s", err.msg);
  nq_st_writer_free(w);
  free(tmp);
  nq_llama2c_close(&f);
}

static float *logits_of(const char *dir, const char *lora, bool merge, const int32_t *tokens, int n) {
  nq_llama_load_opts_t o;
  nq_llama_load_opts_init(&o);
  o.lora_dir = lora, o.lora_merge = merge;
  nq_err_t err = {0};
  nq_llama_model_t *m;
  cr_assert_eq(nq_llama_load(dir, &o, &m, &err), 0, "%s", err.msg);
  cr_assert_eq(m->cfg.rope_mode, NQ_ROPE_HALF);
  nq_llama_kv_t *kv = nq_llama_kv_new(m, 1, n, &err);
  float *lg = malloc(sizeof(float) * (size_t)n * 512);
  int slot = 0;
  nq_llama_batch_t b = {.n_seq = 1, .slot = &slot, .n_tokens = &n, .tokens = tokens, .logits_all = true, .logits = lg};
  cr_assert_eq(nq_llama_forward(m, kv, &b, &err), 0, "%s", err.msg);
  nq_llama_kv_free(kv);
  nq_llama_free(m);
  return lg;
}

static double rel(const float *a, const float *b, int n) {
  double num = 0, den = 0;
  for (int i = 0; i < n; i++) num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]), den += (double)b[i] * b[i];
  return sqrt(num / den);
}

static void golden(int32_t *tokens, float *want) {
  nq_err_t err = {0};
  nq_st_file_t *in, *ex;
  cr_assert_eq(nq_st_open(LOGITS_CASE "/inputs.safetensors", &in, &err), 0);
  cr_assert_eq(nq_st_open(LOGITS_CASE "/expected.safetensors", &ex, &err), 0);
  memcpy(tokens, nq_st_find(in, "tokens")->data, 32 * 4);
  memcpy(want, nq_st_find(ex, "logits")->data, 32 * 512 * 4);
  nq_st_close(in), nq_st_close(ex);
}

Test(llama_hf, hf_layout_reproduces_golden_logits) {
  char dir[] = "/tmp/nq_hf_XXXXXX";
  cr_assert(mkdtemp(dir));
  export_hf(dir, NULL);
  int32_t tokens[32];
  float *want = malloc(sizeof(float) * 32 * 512);
  golden(tokens, want);
  float *lg = logits_of(dir, NULL, false, tokens, 32);
  double r = rel(lg, want, 32 * 512);
  cr_expect_leq(r, 1e-4, "rel_l2 %g", r);
  free(lg), free(want);
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  cr_assert_eq(system(cmd), 0);
}

Test(llama_hf, lora_equals_weight_edit) {
  char base[] = "/tmp/nq_hfb_XXXXXX", edited[] = "/tmp/nq_hfe_XXXXXX", ad[] = "/tmp/nq_lora_XXXXXX";
  cr_assert(mkdtemp(base) && mkdtemp(edited) && mkdtemp(ad));
  const int D = 64, r = 4;
  const double alpha = 8.0;
  float A[4 * 64], B[64 * 4];
  uint64_t s = 12345;
  for (int i = 0; i < r * D; i++) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    A[i] = (float)((double)(s >> 11) / 9007199254740992.0 - 0.5) * 0.2f;
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    B[i] = (float)((double)(s >> 11) / 9007199254740992.0 - 0.5) * 0.2f;
  }
  double *dq = calloc((size_t)(D * D), sizeof(double));
  for (int o = 0; o < D; o++)
    for (int c = 0; c < D; c++)
      for (int k = 0; k < r; k++) dq[o * D + c] += alpha / r * B[o * r + k] * A[k * D + c];
  export_hf(base, NULL);
  export_hf(edited, dq);
  char p[512];
  snprintf(p, sizeof p, "%s/adapter_config.json", ad);
  write_file(p, "{\"peft_type\":\"LORA\",\"r\":4,\"lora_alpha\":8,\"target_modules\":[\"q_proj\"],\"lora_dropout\":0.1}");
  nq_err_t err = {0};
  nq_st_writer_t *w = nq_st_writer_new();
  nq_st_writer_add_f32(w, "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", 2, NQ_SHAPE(r, D), A, &err);
  nq_st_writer_add_f32(w, "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight", 2, NQ_SHAPE(D, r), B, &err);
  for (int l = 1; l < 5; l++) { /* zero adapters elsewhere: must change nothing */
    float z[4 * 64] = {0};
    char n[128];
    snprintf(n, sizeof n, "base_model.model.model.layers.%d.self_attn.q_proj.lora_A.weight", l);
    nq_st_writer_add_f32(w, n, 2, NQ_SHAPE(r, D), A, &err);
    snprintf(n, sizeof n, "base_model.model.model.layers.%d.self_attn.q_proj.lora_B.weight", l);
    nq_st_writer_add_f32(w, n, 2, NQ_SHAPE(D, r), z, &err);
  }
  snprintf(p, sizeof p, "%s/adapter_model.safetensors", ad);
  cr_assert_eq(nq_st_writer_save(w, p, &err), 0, "%s", err.msg);
  nq_st_writer_free(w);
  int32_t tokens[32];
  float *want = malloc(sizeof(float) * 32 * 512);
  golden(tokens, want);
  float *ref = logits_of(edited, NULL, false, tokens, 32);
  float *un = logits_of(base, ad, false, tokens, 32);
  float *mg = logits_of(base, ad, true, tokens, 32);
  cr_expect_gt(rel(ref, want, 32 * 512), 1e-3, "the edit must matter");
  cr_expect_leq(rel(un, ref, 32 * 512), 1e-5, "unmerged: %g", rel(un, ref, 32 * 512));
  cr_expect_leq(rel(mg, ref, 32 * 512), 1e-5, "merged: %g", rel(mg, ref, 32 * 512));
  free(ref), free(un), free(mg), free(want), free(dq);
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf %s %s %s", base, edited, ad);
  cr_assert_eq(system(cmd), 0);
}

/* tests/unit/test_nextgpt.c — NExT-GPT assembly against ../shared/golden/nextgpt and ../shared/golden/imagebind/out-proj*
 * through the C API (compute/pipelines/nextgpt.h, compute/models/projector.h), plus the model YAML, prompt parsing
 * edge cases, greedy generation vs the fixture's reference ids, and bad-input handling. */
#include <criterion/criterion.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "compute/io/safetensors.h"
#include "compute/pipelines/nextgpt.h"

#define GOLD NQ_SHARED_DIR "/golden"

static nq_nextgpt_t *open_golden(const char *cas) {
  nq_nextgpt_config_t c;
  nq_err_t err = {0};
  cr_assert_eq(nq_nextgpt_config_init(&c, &err), 0, "%s", err.msg);
  char dir[1024], delta[1100];
  snprintf(dir, sizeof dir, GOLD "/nextgpt/%s/model", cas);
  snprintf(delta, sizeof delta, "%s/nextgpt.safetensors", dir);
  cr_assert_eq(nq_config_set(nq_nextgpt_config_props, &c, "vicuna_ckpt_path", dir, "test", &err), 0, "%s", err.msg);
  cr_assert_eq(nq_config_set(nq_nextgpt_config_props, &c, "delta_ckpt_path", delta, "test", &err), 0, "%s", err.msg);
  cr_assert_eq(nq_config_set(nq_nextgpt_config_props, &c, "projector.nhead", "2", "test", &err), 0, "%s", err.msg);
  cr_assert_eq(nq_config_set(nq_nextgpt_config_props, &c, "generation.stops_id", "[[38]]", "test", &err), 0, "%s", err.msg);
  nq_nextgpt_t *ng = NULL;
  int rc = nq_nextgpt_open(&c, NULL, &ng, &err);
  nq_nextgpt_config_deinit(&c);
  cr_assert_eq(rc, 0, "open %s: %s", cas, err.msg);
  return ng;
}

typedef struct {
  nq_st_file_t *in, *exp;
  char *text;
  float *media;
  int n_media;
} gcase_t;

static float *to_f32(const nq_st_tensor_t *t) {
  int64_t n = nq_st_numel(t);
  float *f = malloc(sizeof(float) * (size_t)(n ? n : 1));
  cr_assert(f);
  cr_assert_eq(nq_dtype_to_f32(t->dtype, t->data, f, (size_t)n), 0);
  return f;
}

static void load_case(const char *set, const char *cas, gcase_t *g) {
  char p[1024];
  nq_err_t err = {0};
  memset(g, 0, sizeof(*g));
  snprintf(p, sizeof p, GOLD "/%s/%s/inputs.safetensors", set, cas);
  cr_assert_eq(nq_st_open(p, &g->in, &err), 0, "%s", err.msg);
  snprintf(p, sizeof p, GOLD "/%s/%s/expected.safetensors", set, cas);
  cr_assert_eq(nq_st_open(p, &g->exp, &err), 0, "%s", err.msg);
  const nq_st_tensor_t *t = nq_st_find(g->in, "text_000");
  if (t) g->text = strndup(t->data, t->nbytes);
  if ((t = nq_st_find(g->in, "media_embeds"))) {
    g->media = to_f32(t);
    g->n_media = (int)t->shape[0];
  }
}

static void free_case(gcase_t *g) {
  nq_st_close(g->in), nq_st_close(g->exp);
  free(g->text), free(g->media);
}

/* rel_l2 / max_abs of out against the expected tensor `name` (element count must match). */
static void check(const gcase_t *g, const char *name, const float *out, int64_t n, double rel_tol, double abs_tol) {
  const nq_st_tensor_t *e = nq_st_find(g->exp, name);
  cr_assert(e, "expected has no %s", name);
  cr_assert_eq(nq_st_numel(e), n, "%s: %lld elements, expected %lld", name, (long long)n, (long long)nq_st_numel(e));
  float *x = to_f32(e);
  double num = 0, den = 0, mx = 0;
  for (int64_t i = 0; i < n; i++) {
    double d = (double)out[i] - x[i];
    num += d * d, den += (double)x[i] * x[i];
    if (fabs(d) > mx || isnan(d)) mx = isnan(d) ? INFINITY : fabs(d);
  }
  free(x);
  double rel = sqrt(num) / fmax(sqrt(den), 1e-12);
  cr_expect(rel <= rel_tol && mx <= abs_tol, "%s: rel_l2 %.3g max_abs %.3g (tol %.1g / %.1g)", name, rel, mx, rel_tol,
            abs_tol);
}

/* ---- out-proj ---- */

static void run_out_proj(const char *cas) {
  gcase_t g;
  load_case("imagebind", cas, &g);
  char p[1024];
  snprintf(p, sizeof p, GOLD "/imagebind/%s/model/config.json", cas);
  json_t *cfg = json_load_file(p, 0, NULL);
  cr_assert(cfg);
  nq_projector_opts_t o;
  nq_projector_opts_init(&o);
  o.nhead = (int)json_integer_value(json_object_get(cfg, "nhead"));
  snprintf(p, sizeof p, GOLD "/imagebind/%s/model/model.safetensors", cas);
  nq_ckpt_t *ck;
  nq_err_t err = {0};
  cr_assert_eq(nq_ckpt_open(p, &ck, &err), 0, "%s", err.msg);
  nq_projector_t *pr;
  cr_assert_eq(nq_projector_load(ck, json_string_value(json_object_get(cfg, "prefix")), &o, &pr, &err), 0, "%s", err.msg);
  cr_assert_eq(pr->n_queries, json_integer_value(json_object_get(cfg, "num_output_tokens")));
  cr_assert_eq(pr->out_dim, json_integer_value(json_object_get(cfg, "out_dim")));
  cr_assert_eq(pr->n_enc, json_integer_value(json_object_get(cfg, "num_encoder_layers")));
  const nq_st_tensor_t *th = nq_st_find(g.in, "hidden");
  float *h = to_f32(th), *e = to_f32(nq_st_find(g.in, "embeds"));
  float *out = malloc(sizeof(float) * (size_t)pr->n_queries * (size_t)pr->out_dim);
  cr_assert_eq(nq_projector_forward(pr, h, e, (int)th->shape[0], out, &err), 0, "%s", err.msg);
  check(&g, "out", out, (int64_t)pr->n_queries * pr->out_dim, 1e-4, 1e-4);
  free(h), free(e), free(out);
  nq_projector_free(pr);
  nq_ckpt_close(ck);
  json_decref(cfg);
  free_case(&g);
}

Test(nextgpt, out_proj_image) { run_out_proj("out-proj"); }
Test(nextgpt, out_proj_audio) { run_out_proj("out-proj-audio"); }

Test(nextgpt, projector_missing_tensor_is_named) {
  nq_ckpt_t *ck;
  nq_err_t err = {0};
  cr_assert_eq(nq_ckpt_open(GOLD "/imagebind/out-proj/model/model.safetensors", &ck, &err), 0);
  nq_projector_t *pr = NULL;
  cr_assert_neq(nq_projector_load(ck, "gen_text_hidden_fcs_video.0.", NULL, &pr, &err), 0);
  cr_assert_null(pr);
  cr_assert(strstr(err.msg, "gen_text_hidden_fcs_video.0.fc.weight"), "%s", err.msg);
  nq_ckpt_close(ck);
}

/* ---- nextgpt-prompt ---- */

static void run_prompt(const char *cas) {
  gcase_t g;
  load_case("nextgpt", cas, &g);
  nq_nextgpt_t *ng = open_golden(cas);
  nq_nextgpt_prompt_t P;
  nq_err_t err = {0};
  cr_assert_eq(nq_nextgpt_prompt_build(ng, g.text, g.media, g.n_media, &P, &err), 0, "%s", err.msg);
  const nq_st_tensor_t *ids = nq_st_find(g.exp, "token_ids");
  cr_assert_eq(ids->shape[0], P.T, "%s: %d positions, expected %lld", cas, P.T, (long long)ids->shape[0]);
  for (int i = 0; i < P.T; i++)
    cr_assert_eq(P.ids[i], ((const int64_t *)ids->data)[i], "%s: id %d at %d", cas, (int)P.ids[i], i);
  check(&g, "input_embeds", P.embeds, (int64_t)P.T * ng->llm->cfg.dim, 1e-5, 1e-4);
  nq_nextgpt_prompt_deinit(&P);
  nq_nextgpt_free(ng);
  free_case(&g);
}

Test(nextgpt, prompt_text) { run_prompt("prompt-text"); }
Test(nextgpt, prompt_image) { run_prompt("prompt-image"); }
Test(nextgpt, prompt_image_audio) { run_prompt("prompt-image-audio"); }

Test(nextgpt, prompt_media_count_mismatch_is_an_error) {
  gcase_t g;
  load_case("nextgpt", "prompt-image", &g);
  nq_nextgpt_t *ng = open_golden("prompt-image");
  nq_nextgpt_prompt_t P;
  nq_err_t err = {0};
  cr_assert_neq(nq_nextgpt_prompt_build(ng, g.text, NULL, 0, &P, &err), 0);
  cr_assert(strstr(err.msg, "1 media item"), "%s", err.msg);
  nq_nextgpt_free(ng);
  free_case(&g);
}

/* ---- nextgpt-signal ---- */

static void run_signal(const char *cas, int offset) {
  gcase_t g;
  load_case("nextgpt", cas, &g);
  nq_nextgpt_t *ng = open_golden(cas);
  const nq_st_tensor_t *tg = nq_st_find(g.in, "generated");
  int G = (int)tg->shape[0];
  int32_t *gen = malloc(sizeof(int32_t) * (size_t)G);
  for (int i = 0; i < G; i++) gen[i] = (int32_t)((const int64_t *)tg->data)[i];
  nq_nextgpt_output_t o;
  nq_err_t err = {0};
  cr_assert_eq(nq_nextgpt_signals_from_ids(ng, g.text, g.media, g.n_media, gen, G, offset, true, &o, &err), 0, "%s",
               err.msg);
  nq_nextgpt_signal_t *s = &o.sig[NQ_NG_IMAGE];
  cr_assert(s->present);
  cr_assert(!o.sig[NQ_NG_VIDEO].present && !o.sig[NQ_NG_AUDIO].present);
  cr_assert_eq(s->n, 4);
  int64_t H = ng->llm->cfg.dim;
  check(&g, "signal_hidden", s->hidden, 4 * H, 1e-4, 1e-3);
  check(&g, "signal_embeds", s->embeds, 4 * H, 1e-4, 1e-3);
  cr_assert_eq(s->K, 77);
  check(&g, "projected", s->cond, (int64_t)s->K * s->D, 1e-4, 1e-3);
  const nq_st_tensor_t *cap = nq_st_find(g.exp, "caption_text");
  cr_assert_eq(strlen(s->caption), cap->nbytes, "caption '%s'", s->caption);
  cr_assert(!memcmp(s->caption, cap->data, cap->nbytes), "caption '%s'", s->caption);
  /* the whole-text decode stops before the stop id and keeps the added tokens */
  cr_assert(strstr(o.text, "[IMG0] [IMG1] [IMG2] [IMG3]"), "%s", o.text);
  nq_nextgpt_output_deinit(&o);
  free(gen);
  nq_nextgpt_free(ng);
  free_case(&g);
}

Test(nextgpt, signal_offset_minus_one) { run_signal("signal-offset-m1", 1); }
Test(nextgpt, signal_offset_zero) { run_signal("signal-offset-0", 0); }

Test(nextgpt, signal_offset_swapped_differs) {
  /* negative control: the other gathering convention must not match the m1 case */
  gcase_t g;
  load_case("nextgpt", "signal-offset-m1", &g);
  nq_nextgpt_t *ng = open_golden("signal-offset-m1");
  const nq_st_tensor_t *tg = nq_st_find(g.in, "generated");
  int G = (int)tg->shape[0];
  int32_t *gen = malloc(sizeof(int32_t) * (size_t)G);
  for (int i = 0; i < G; i++) gen[i] = (int32_t)((const int64_t *)tg->data)[i];
  nq_nextgpt_output_t o;
  nq_err_t err = {0};
  cr_assert_eq(nq_nextgpt_signals_from_ids(ng, g.text, g.media, g.n_media, gen, G, 0, false, &o, &err), 0, "%s", err.msg);
  float *x = to_f32(nq_st_find(g.exp, "signal_hidden"));
  double mx = 0;
  for (int i = 0; i < 4 * ng->llm->cfg.dim; i++) mx = fmax(mx, fabs(x[i] - o.sig[0].hidden[i]));
  cr_assert_gt(mx, 1e-2);
  free(x);
  nq_nextgpt_output_deinit(&o);
  /* a broken span is an error in the teacher-forced path (upstream asserts) */
  gen[21] = gen[22];
  cr_assert_neq(nq_nextgpt_signals_from_ids(ng, g.text, g.media, g.n_media, gen, G, 1, false, &o, &err), 0);
  cr_assert(strstr(err.msg, "image signal"), "%s", err.msg);
  free(gen);
  nq_nextgpt_free(ng);
  free_case(&g);
}

/* ---- generation vs the fixture's reference greedy ids ---- */

Test(nextgpt, greedy_generation_matches_reference_ids) {
  char p[1024];
  snprintf(p, sizeof p, GOLD "/nextgpt/signal-offset-m1/inputs.json");
  json_t *j = json_load_file(p, 0, NULL);
  cr_assert(j);
  json_t *ids = json_object_get(j, "greedy_ids");
  const char *prompt = json_string_value(json_array_get(json_object_get(j, "texts"), 0));
  cr_assert(json_is_array(ids) && prompt);
  nq_nextgpt_t *ng = open_golden("signal-offset-m1");
  nq_nextgpt_gen_params_t gp;
  nq_nextgpt_gen_params_init(ng, &gp);
  gp.temperature = 0.0f; /* the demo's top_p 0.01 is argmax */
  gp.max_tgt_len = (int)json_array_size(ids);
  nq_nextgpt_output_t o;
  nq_err_t err = {0};
  cr_assert_eq(nq_nextgpt_generate(ng, prompt, NULL, 0, &gp, &o, &err), 0, "%s", err.msg);
  cr_assert_eq(o.n_tokens, (int)json_array_size(ids));
  for (int i = 0; i < o.n_tokens; i++)
    cr_assert_eq(o.tokens[i], json_integer_value(json_array_get(ids, (size_t)i)), "step %d", i);
  cr_assert(!o.sig[0].present && !o.sig[1].present && !o.sig[2].present); /* the fixture's note: never [IMG0] */
  cr_assert(strstr(o.text, "[VID6]") && strstr(o.text, "[AUD4]"), "%s", o.text);
  nq_nextgpt_output_deinit(&o);
  nq_nextgpt_free(ng);
  json_decref(j);
}

/* ---- prompt parsing (re.split(r' <|> ') / re.findall semantics) ---- */

Test(nextgpt, prompt_media_parsing) {
  nq_nextgpt_media_ref_t *r;
  int n;
  nq_err_t err = {0};
  /* the demo's two-tag prompt: the "> " after </Image> eats the space, so <Audio> is text (gotcha 1) */
  cr_assert_eq(nq_nextgpt_prompt_media("### Human: <Image>a.jpg</Image> <Audio>b.wav</Audio>  hi", &r, &n, &err), 0);
  cr_assert_eq(n, 1);
  cr_assert_str_eq(r[0].path, "a.jpg");
  cr_assert_eq(r[0].modality, NQ_NG_IMAGE);
  nq_nextgpt_media_refs_free(r, n);
  /* adjacent tags stay in one segment and are summed */
  cr_assert_eq(nq_nextgpt_prompt_media("### Human: <Image>x</Image><Image>y</Image> draw", &r, &n, &err), 0);
  cr_assert_eq(n, 2);
  cr_assert_eq(r[0].segment, r[1].segment);
  cr_assert_str_eq(r[1].path, "y");
  nq_nextgpt_media_refs_free(r, n);
  /* audio and video segments; a video segment ignores image tags inside it */
  cr_assert_eq(nq_nextgpt_prompt_media("Q: <Video>v.mp4</Video><Image>i.jpg</Image> and <Audio>s.wav</Audio> ok", &r, &n, &err), 0);
  cr_assert_eq(n, 2);
  cr_assert_eq(r[0].modality, NQ_NG_VIDEO);
  cr_assert_str_eq(r[0].path, "v.mp4");
  cr_assert_eq(r[1].modality, NQ_NG_AUDIO);
  nq_nextgpt_media_refs_free(r, n);
  /* no media at all; '.' does not match a newline */
  cr_assert_eq(nq_nextgpt_prompt_media("### Human:  Tell me a story.", &r, &n, &err), 0);
  cr_assert_eq(n, 0);
  nq_nextgpt_media_refs_free(r, n);
  cr_assert_neq(nq_nextgpt_prompt_media("a <Image>x\ny</Image> b", &r, &n, &err), 0);
  cr_assert(strstr(err.msg, "no complete tag"), "%s", err.msg);
}

/* ---- model YAML ---- */

static char *write_tmp(const char *text) {
  char *path = strdup("/tmp/nq_ng_cfg_XXXXXX.yaml");
  int fd = mkstemps(path, 5);
  cr_assert(fd >= 0);
  cr_assert_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
  close(fd);
  return path;
}

Test(nextgpt, config_yaml) {
  char *p = write_tmp("vicuna_ckpt_path: vicuna\n"
                      "delta_ckpt_path: /abs/delta.pt\n"
                      "n_img_tokens: 4\n"
                      "offset_minus_one: false\n"
                      "projector:\n  nhead: 2\n"
                      "generation:\n  max_tgt_len: 50\n  stops_id: [[38]]\n");
  nq_nextgpt_config_t c;
  nq_err_t err = {0};
  cr_assert_eq(nq_nextgpt_config_load(p, &c, &err), 0, "%s", err.msg);
  cr_assert_str_eq(c.vicuna_ckpt_path, "/tmp/vicuna"); /* relative to the YAML */
  cr_assert_str_eq(c.delta_ckpt_path, "/abs/delta.pt");
  cr_assert_eq(c.offset_minus_one, 0);
  cr_assert_eq(c.proj_nhead, 2);
  cr_assert_eq(c.max_tgt_len, 50);
  cr_assert_eq(c.n_video_tokens, 24);
  nq_nextgpt_config_deinit(&c);
  unlink(p);
  free(p);
  /* defaults: the released checkpoint's behaviour */
  cr_assert_eq(nq_nextgpt_config_init(&c, &err), 0);
  cr_assert_eq(c.offset_minus_one, 1);
  cr_assert_eq(c.n_img_tokens, 4);
  cr_assert_eq(c.n_audio_tokens, 8);
  cr_assert_eq(json_array_size(c.stops_id), 2);
  nq_nextgpt_config_deinit(&c);
}

Test(nextgpt, config_yaml_errors) {
  nq_nextgpt_config_t c;
  nq_err_t err = {0};
  char *p = write_tmp("vicuna_ckpt_path: v\nn_img_tokens: 4\nnum_clip_tokenz: 77\n");
  cr_assert_neq(nq_nextgpt_config_load(p, &c, &err), 0);
  cr_assert(strstr(err.msg, ":3:1: unknown key 'num_clip_tokenz'"), "%s", err.msg);
  unlink(p), free(p);
  p = write_tmp("vicuna_ckpt_path: v\ntext_emb_to_img_layers: [-2]\n");
  cr_assert_neq(nq_nextgpt_config_load(p, &c, &err), 0);
  cr_assert(strstr(err.msg, "only [-1]"), "%s", err.msg);
  unlink(p), free(p);
  p = write_tmp("vicuna_ckpt_path: v\nn_img_tokens: 5\n");
  cr_assert_neq(nq_nextgpt_config_load(p, &c, &err), 0);
  cr_assert(strstr(err.msg, "num_gen_"), "%s", err.msg);
  unlink(p), free(p);
  p = write_tmp("delta_ckpt_path: d\n");
  cr_assert_neq(nq_nextgpt_config_load(p, &c, &err), 0);
  cr_assert(strstr(err.msg, "vicuna_ckpt_path"), "%s", err.msg);
  unlink(p), free(p);
}

Test(nextgpt, open_rejects_wrong_signal_ids) {
  /* the golden added_tokens.json sits beside the delta: a tokenizer whose ids disagree must be refused. Here the
   * count of image tokens is changed, so [VID0] moves and no longer matches the saved file. */
  nq_nextgpt_config_t c;
  nq_err_t err = {0};
  cr_assert_eq(nq_nextgpt_config_init(&c, &err), 0);
  nq_config_set(nq_nextgpt_config_props, &c, "vicuna_ckpt_path", GOLD "/nextgpt/prompt-text/model", "t", &err);
  nq_config_set(nq_nextgpt_config_props, &c, "n_img_tokens", "3", "t", &err);
  nq_config_set(nq_nextgpt_config_props, &c, "num_gen_img_tokens", "3", "t", &err);
  nq_nextgpt_t *ng = NULL;
  cr_assert_neq(nq_nextgpt_open(&c, NULL, &ng, &err), 0);
  cr_assert_null(ng);
  cr_assert(strstr(err.msg, "added token"), "%s", err.msg);
  nq_nextgpt_config_deinit(&c);
}

/* ---- init-tiny ---- */

#include "compute/models/llama_gen.h"
#include "compute/pipelines/nextgpt_tiny.h"

static void tiny_dir(char *buf, size_t cap, const char *tag) {
  snprintf(buf, cap, "/tmp/nq_ng_tiny_%s_%d", tag, (int)getpid());
}

static void rm_rf(const char *d) {
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", d);
  cr_assert_eq(system(cmd), 0);
}

static void make_tiny(const char *dir, uint64_t seed, bool trained) {
  nq_nextgpt_tiny_opts_t o;
  nq_nextgpt_tiny_opts_init(&o);
  o.seed = seed;
  o.models_dir = trained ? NQ_SHARED_DIR "/models" : NULL;
  nq_nextgpt_tiny_info_t info;
  nq_err_t err = {0};
  cr_assert_eq(nq_nextgpt_init_tiny(dir, &o, &info, &err), 0, "%s", err.msg);
  cr_assert_eq(info.trained_llm, trained);
}

Test(nextgpt, tiny_llm_is_stories260k_in_hf_layout) {
  /* the converted HF LLaMA (q/k permuted to rotate-half, tokenizer.model rewritten from tok512.bin) must reproduce
   * llama2.c's own greedy run of stories260K */
  char d[256], v[300];
  tiny_dir(d, sizeof d, "hf");
  make_tiny(d, 13, true);
  snprintf(v, sizeof v, "%s/vicuna", d);
  nq_llm_t *llm;
  nq_err_t err = {0};
  cr_assert_eq(nq_llm_open(v, NULL, NULL, &llm, &err), 0, "%s", err.msg);
  FILE *f = fopen(NQ_SHARED_DIR "/models/stories260K/expected_t0_n200_ids.txt", "r");
  cr_assert(f);
  int want[200], n = 0;
  while (n < 200 && fscanf(f, "%d", &want[n]) == 1) n++;
  fclose(f);
  cr_assert_eq(n, 200);
  nq_gen_params_t p;
  nq_gen_params_init(&p);
  p.sampling.temperature = 0;
  p.max_new_tokens = n;
  p.stop_at_eos = false;
  int32_t bos = 1;
  const int32_t *pp = &bos;
  int one = 1;
  nq_gen_result_t r;
  cr_assert_eq(nq_llm_generate_tokens(llm, &pp, &one, 1, &p, &r, &err), 0, "%s", err.msg);
  cr_assert_eq(r.n_tokens, n);
  for (int i = 0; i < n; i++) cr_assert_eq(r.tokens[i], want[i], "step %d", i);
  nq_gen_result_deinit(&r);
  nq_llm_free(llm);
  /* the rewritten tokenizer.model + the 38 added tokens give the golden prompt ids (one text segment) */
  nq_nextgpt_t *ng;
  char y[300];
  snprintf(y, sizeof y, "%s/nextgpt.yaml", d);
  cr_assert_eq(nq_nextgpt_open_yaml(y, NULL, &ng, &err), 0, "%s", err.msg);
  gcase_t g;
  load_case("nextgpt", "prompt-text", &g);
  nq_nextgpt_prompt_t P;
  cr_assert_eq(nq_nextgpt_prompt_build(ng, g.text, NULL, 0, &P, &err), 0, "%s", err.msg);
  const nq_st_tensor_t *ids = nq_st_find(g.exp, "token_ids");
  cr_assert_eq(P.T, ids->shape[0]);
  for (int i = 0; i < P.T; i++) cr_assert_eq(P.ids[i], ((const int64_t *)ids->data)[i], "id %d", i);
  nq_nextgpt_prompt_deinit(&P);
  free_case(&g);
  nq_nextgpt_free(ng);
  rm_rf(d);
}

Test(nextgpt, tiny_model_loads_and_hands_off) {
  char d[256], y[300];
  tiny_dir(d, sizeof d, "full");
  make_tiny(d, 7, true);
  snprintf(y, sizeof y, "%s/nextgpt.yaml", d);
  nq_nextgpt_t *ng;
  nq_err_t err = {0};
  cr_assert_eq(nq_nextgpt_open_yaml(y, NULL, &ng, &err), 0, "%s", err.msg);
  cr_assert_eq(ng->llm->cfg.vocab_size, 550);        /* embed/lm_head resized by the delta */
  cr_assert(ng->llm->layers[0].lora[0].present);      /* LoRA from the delta */
  cr_assert_eq(ng->img_open, 512);
  cr_assert_eq(ng->sig_ids[NQ_NG_AUDIO][7], 549);
  int K[3] = {77, 77, 1}, D[3] = {768, 1024, 512};
  for (int m = 0; m < 3; m++) {
    cr_assert(ng->proj[m]);
    cr_assert_eq(ng->proj[m]->n_queries, K[m]);
    cr_assert_eq(ng->proj[m]->out_dim, D[m]);
    cr_assert_eq(ng->proj[m]->n_enc, 4);
  }
  /* teacher-forced: caption text, image and audio spans in one answer, a media item in the prompt */
  const char *prompt = "### Human: <Image>a.jpg</Image>  Draw it and make a sound.";
  float media[1024];
  for (int i = 0; i < 1024; i++) media[i] = (float)((i % 7) - 3) / 32.0f;
  int32_t gen[64];
  int G = 0;
  gen[G++] = 300, gen[G++] = 301;
  for (int i = 0; i < 4; i++) gen[G++] = ng->sig_ids[NQ_NG_IMAGE][i];
  gen[G++] = 302;
  for (int i = 0; i < 8; i++) gen[G++] = ng->sig_ids[NQ_NG_AUDIO][i];
  gen[G++] = 38;
  nq_nextgpt_output_t o;
  cr_assert_eq(nq_nextgpt_signals_from_ids(ng, prompt, media, 1, gen, G, -1, true, &o, &err), 0, "%s", err.msg);
  cr_assert(o.sig[NQ_NG_IMAGE].present && o.sig[NQ_NG_AUDIO].present && !o.sig[NQ_NG_VIDEO].present);
  cr_assert_eq(o.sig[NQ_NG_IMAGE].K, 77);
  cr_assert_eq(o.sig[NQ_NG_IMAGE].D, 768);
  cr_assert_eq(o.sig[NQ_NG_AUDIO].K, 1);
  cr_assert_eq(o.sig[NQ_NG_AUDIO].D, 512);
  cr_assert(strstr(o.sig[NQ_NG_AUDIO].caption, "[IMG3]") && strstr(o.sig[NQ_NG_AUDIO].caption, " [AUD7]"), "%s",
            o.sig[NQ_NG_AUDIO].caption);
  for (int i = 0; i < 77 * 768; i++) cr_assert(isfinite(o.sig[NQ_NG_IMAGE].cond[i]));
  /* the generate stage's path: project again from the transported hidden/embeds -> the same conditioning */
  float *c0 = malloc(sizeof(float) * 77 * 768);
  memcpy(c0, o.sig[NQ_NG_IMAGE].cond, sizeof(float) * 77 * 768);
  nq_nextgpt_open_opts_t po = {.parts = NQ_NG_PART_PROJECTORS};
  nq_nextgpt_t *gen_only;
  cr_assert_eq(nq_nextgpt_open_yaml(y, &po, &gen_only, &err), 0, "%s", err.msg);
  cr_assert_null(gen_only->llm);
  cr_assert_eq(nq_nextgpt_project(gen_only, NQ_NG_IMAGE, &o.sig[NQ_NG_IMAGE], &err), 0, "%s", err.msg);
  cr_assert_eq(memcmp(c0, o.sig[NQ_NG_IMAGE].cond, sizeof(float) * 77 * 768), 0);
  free(c0);
  nq_nextgpt_free(gen_only);
  nq_nextgpt_output_deinit(&o);
  /* sampled generation is deterministic for a seed */
  nq_nextgpt_gen_params_t gp;
  nq_nextgpt_gen_params_init(ng, &gp);
  gp.temperature = 1.0f, gp.top_p = 0.9f, gp.max_tgt_len = 24, gp.seed = 42;
  nq_nextgpt_output_t a, b;
  cr_assert_eq(nq_nextgpt_generate(ng, prompt, media, 1, &gp, &a, &err), 0, "%s", err.msg);
  cr_assert_eq(nq_nextgpt_generate(ng, prompt, media, 1, &gp, &b, &err), 0, "%s", err.msg);
  cr_assert_eq(a.n_tokens, b.n_tokens);
  cr_assert_eq(memcmp(a.tokens, b.tokens, sizeof(int32_t) * (size_t)a.n_tokens), 0);
  cr_assert_str_eq(a.text, b.text);
  nq_nextgpt_output_deinit(&a);
  nq_nextgpt_output_deinit(&b);
  nq_nextgpt_free(ng);
  rm_rf(d);
}

Test(nextgpt, tiny_init_is_deterministic_per_seed_and_random_variant_runs) {
  char d1[256], d2[256], d3[256];
  tiny_dir(d1, sizeof d1, "s1"), tiny_dir(d2, sizeof d2, "s2"), tiny_dir(d3, sizeof d3, "s3");
  make_tiny(d1, 3, false), make_tiny(d2, 3, false), make_tiny(d3, 4, false);
  char cmd[1024];
  snprintf(cmd, sizeof cmd, "cmp -s %s/delta/nextgpt.safetensors %s/delta/nextgpt.safetensors && cmp -s %s/vicuna/model.safetensors %s/vicuna/model.safetensors", d1, d2, d1, d2);
  cr_assert_eq(system(cmd), 0, "same seed, different files");
  snprintf(cmd, sizeof cmd, "cmp -s %s/delta/nextgpt.safetensors %s/delta/nextgpt.safetensors", d1, d3);
  cr_assert_neq(system(cmd), 0, "different seeds, same files");
  char y[300];
  snprintf(y, sizeof y, "%s/nextgpt.yaml", d1);
  nq_nextgpt_t *ng;
  nq_err_t err = {0};
  cr_assert_eq(nq_nextgpt_open_yaml(y, NULL, &ng, &err), 0, "%s", err.msg);
  cr_assert_eq(ng->llm->cfg.vocab_size, 550);
  nq_nextgpt_output_t o;
  cr_assert_eq(nq_nextgpt_generate(ng, "### Human:  hello there", NULL, 0, NULL, &o, &err), 0, "%s", err.msg);
  cr_assert_gt(o.n_tokens, 0);
  nq_nextgpt_output_deinit(&o);
  nq_nextgpt_free(ng);
  rm_rf(d1), rm_rf(d2), rm_rf(d3);
}

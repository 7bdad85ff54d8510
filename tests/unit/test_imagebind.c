/* ImageBind trunks against ../shared/golden/imagebind (ImageBind's own code in float64 at tiny dims):
 * vision (image, PadIm2Video), vision (2-frame clip), audio (add_bias_kv, stem LayerNorm, no logit scale);
 * multi-view averaging; chunked batches; bf16 weights; missing / mis-shaped tensors named in errors; the NExT-GPT
 * input projection (llama_proj). */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "compute/io/safetensors.h"
#include "compute/models/imagebind.h"
#include "compute/models/input_proj.h"

#define IB_DIR NQ_SHARED_DIR "/golden/imagebind/"

static float *read_f32(const char *path, const char *name, int64_t *numel) {
  nq_st_file_t *f;
  nq_err_t err = {0};
  cr_assert_eq(nq_st_open(path, &f, &err), 0, "%s", err.msg);
  const nq_st_tensor_t *t = nq_st_find(f, name);
  cr_assert(t, "%s: no tensor %s", path, name);
  int64_t n = nq_st_numel(t);
  float *d = malloc(sizeof(float) * (size_t)n);
  cr_assert_eq(nq_dtype_to_f32(t->dtype, t->data, d, (size_t)n), 0);
  nq_st_close(f);
  if (numel) *numel = n;
  return d;
}

static void compare(const float *out, const float *exp, int64_t n, double rel_tol, double abs_tol, const char *what) {
  double se = 0, sx = 0, mx = 0;
  for (int64_t i = 0; i < n; i++) {
    double d = (double)out[i] - exp[i];
    se += d * d, sx += (double)exp[i] * exp[i];
    if (fabs(d) > mx) mx = fabs(d);
  }
  double rel = sqrt(se) / fmax(sqrt(sx), 1e-12);
  fprintf(stderr, "%s: rel_l2 %.3g max_abs %.3g\n", what, rel, mx);
  cr_assert(rel <= rel_tol && mx <= abs_tol, "%s: rel_l2 %.3g (tol %.3g) max_abs %.3g (tol %.3g)", what, rel, rel_tol, mx,
            abs_tol);
}

static nq_imagebind_t *load(const char *case_name, int wdtype, int max_batch) {
  char p[512];
  snprintf(p, sizeof p, IB_DIR "%s/model", case_name);
  nq_imagebind_load_opts_t o;
  nq_imagebind_load_opts_init(&o);
  o.wdtype = wdtype;
  o.max_batch = max_batch;
  nq_imagebind_t *m = NULL;
  nq_err_t err = {0};
  cr_assert_eq(nq_imagebind_load(p, &o, &m, &err), 0, "%s", err.msg);
  return m;
}

static void run_case(const char *case_name, const char *in_name, int frames, int wdtype, int max_batch, double rel,
                     double abs_tol) {
  nq_imagebind_t *m = load(case_name, wdtype, max_batch);
  char p[512];
  int64_t n_in, n_exp;
  snprintf(p, sizeof p, IB_DIR "%s/inputs.safetensors", case_name);
  float *in = read_f32(p, in_name, &n_in);
  snprintf(p, sizeof p, IB_DIR "%s/expected.safetensors", case_name);
  float *exp = read_f32(p, "embeds", &n_exp);
  int64_t B = n_in / nq_imagebind_view_numel(m, frames);
  cr_assert_eq(B * m->cfg.out_dim, n_exp);
  float *out = calloc((size_t)n_exp, sizeof(float));
  nq_err_t err = {0};
  cr_assert_eq(nq_imagebind_forward(m, in, B, frames, out, &err), 0, "%s", err.msg);
  compare(out, exp, n_exp, rel, abs_tol, case_name);
  free(in), free(exp), free(out);
  nq_imagebind_free(m);
}

Test(imagebind, vision_image_golden) {
  nq_imagebind_t *m = load("imagebind-vision", -1, 0);
  cr_assert_eq(m->cfg.modality, NQ_IB_VISION);
  cr_assert_eq(m->cfg.n_tokens, 257);
  cr_assert_eq(m->cfg.num_heads, 4);
  cr_assert_eq(m->cfg.out_dim, 32);
  nq_imagebind_free(m);
  run_case("imagebind-vision", "pixels", 1, -1, 0, 1e-4, 1e-4);
}

Test(imagebind, vision_video_golden) { run_case("imagebind-vision-video", "video", 2, -1, 0, 1e-4, 1e-4); }

Test(imagebind, audio_golden) {
  nq_imagebind_t *m = load("imagebind-audio", -1, 0);
  cr_assert_eq(m->cfg.modality, NQ_IB_AUDIO);
  cr_assert_eq(m->cfg.n_tokens, 229);
  nq_imagebind_free(m);
  run_case("imagebind-audio", "fbank", 1, -1, 0, 1e-4, 1e-4);
}

Test(imagebind, one_view_per_forward) { run_case("imagebind-vision", "pixels", 1, -1, 1, 1e-4, 1e-4); }

Test(imagebind, bf16_weights) {
  run_case("imagebind-vision", "pixels", 1, NQ_DT_BF16, 0, 1e-2, 1e-1);
  run_case("imagebind-audio", "fbank", 1, NQ_DT_BF16, 0, 1e-2, 1e-1);
}

/* Two views of one item: the mean of the two normalised reference embeddings, not re-normalised. */
Test(imagebind, multi_view_mean) {
  nq_imagebind_t *m = load("imagebind-audio", -1, 0);
  float *in = read_f32(IB_DIR "imagebind-audio/inputs.safetensors", "fbank", NULL);
  float *exp = read_f32(IB_DIR "imagebind-audio/expected.safetensors", "embeds", NULL);
  int D = m->cfg.out_dim;
  float mean[64], out[64];
  double norm = 0;
  for (int d = 0; d < D; d++) mean[d] = 0.5f * (exp[d] + exp[D + d]), norm += (double)mean[d] * mean[d];
  cr_assert(sqrt(norm) < 0.999, "the two views must differ for this test to mean anything");
  nq_err_t err = {0};
  cr_assert_eq(nq_imagebind_embed(m, in, 1, 2, 1, out, &err), 0, "%s", err.msg);
  compare(out, mean, D, 1e-4, 1e-4, "audio 2-view mean");
  free(in), free(exp);
  nq_imagebind_free(m);
}

/* Copies the audio case's weights into dir, dropping `drop` and replacing `reshape` by a [3] tensor; with_config
 * also copies config.json. */
static void write_variant(const char *dir, const char *drop, const char *reshape, bool with_config) {
  nq_st_file_t *f;
  nq_err_t err = {0};
  cr_assert_eq(nq_st_open(IB_DIR "imagebind-audio/model/model.safetensors", &f, &err), 0, "%s", err.msg);
  nq_st_writer_t *w = nq_st_writer_new();
  for (size_t i = 0; i < nq_st_count(f); i++) {
    const nq_st_tensor_t *t = nq_st_get(f, i);
    if (drop && strcmp(t->name, drop) == 0) continue;
    if (reshape && strcmp(t->name, reshape) == 0) {
      float z[3] = {0};
      cr_assert_eq(nq_st_writer_add_f32(w, t->name, 1, NQ_SHAPE(3), z, &err), 0);
      continue;
    }
    cr_assert_eq(nq_st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, t->data, &err), 0, "%s", err.msg);
  }
  mkdir(dir, 0755);
  char p[512];
  snprintf(p, sizeof p, "%s/model.safetensors", dir);
  cr_assert_eq(nq_st_writer_save(w, p, &err), 0, "%s", err.msg);
  nq_st_writer_free(w);
  nq_st_close(f);
  snprintf(p, sizeof p, "%s/config.json", dir);
  unlink(p);
  if (with_config) {
    FILE *in = fopen(IB_DIR "imagebind-audio/model/config.json", "rb"), *out = fopen(p, "wb");
    cr_assert(in && out);
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0) fwrite(buf, 1, n, out);
    fclose(in), fclose(out);
  }
}

Test(imagebind, bad_weights_are_named) {
  char dir[] = "/tmp/nq_ib_XXXXXX";
  cr_assert(mkdtemp(dir));
  nq_imagebind_load_opts_t o;
  nq_imagebind_load_opts_init(&o);
  nq_imagebind_t *m = NULL;
  nq_err_t err = {0};
  write_variant(dir, "modality_trunks.audio.blocks.1.attn.bias_v", NULL, true);
  cr_assert_neq(nq_imagebind_load(dir, &o, &m, &err), 0);
  cr_assert_null(m);
  cr_assert(strstr(err.msg, "modality_trunks.audio.blocks.1.attn.bias_v"), "%s", err.msg);
  write_variant(dir, NULL, "modality_trunks.audio.blocks.0.mlp.fc2.bias", true);
  nq_err_clear(&err);
  cr_assert_neq(nq_imagebind_load(dir, &o, &m, &err), 0);
  cr_assert(strstr(err.msg, "modality_trunks.audio.blocks.0.mlp.fc2.bias") && strstr(err.msg, "[3]"), "%s", err.msg);
  /* the config says audio: asking for vision is refused */
  o.modality = NQ_IB_VISION;
  nq_err_clear(&err);
  cr_assert_neq(nq_imagebind_load(dir, &o, &m, &err), 0);
  cr_assert(strstr(err.msg, "audio trunk"), "%s", err.msg);
  /* no config.json: the modality must be given, and the head count is unknown for a non-huge width */
  write_variant(dir, NULL, NULL, false);
  o.modality = -1;
  nq_err_clear(&err);
  cr_assert_neq(nq_imagebind_load(dir, &o, &m, &err), 0);
  cr_assert(strstr(err.msg, "vision or audio"), "%s", err.msg);
  o.modality = NQ_IB_AUDIO;
  nq_err_clear(&err);
  cr_assert_neq(nq_imagebind_load(dir, &o, &m, &err), 0);
  cr_assert(strstr(err.msg, "heads"), "%s", err.msg);
  /* the vision trunk of an audio-only file: the first missing tensor is named */
  o.modality = NQ_IB_VISION;
  nq_err_clear(&err);
  cr_assert_neq(nq_imagebind_load(dir, &o, &m, &err), 0);
  cr_assert(strstr(err.msg, "modality_preprocessors.vision.cls_token"), "%s", err.msg);
  char p[600];
  snprintf(p, sizeof p, "%s/model.safetensors", dir);
  unlink(p);
  rmdir(dir);
}

/* llama_proj: y = x W^T + b on a hand-checked example (in F32 and BF16 files; these values are exact in BF16). */
Test(imagebind, input_projection) {
  const float W[6] = {1, 2, 3, 4, 5, 6}, b[3] = {0.5f, -1, 2}, x[4] = {1, -1, 0.5f, 2};
  const float want[6] = {-0.5f, -2, 1, 5, 8.5f, 16.5f};
  for (int bf = 0; bf < 2; bf++) {
    char path[] = "/tmp/nq_proj_XXXXXX";
    int fd = mkstemp(path);
    close(fd);
    nq_st_writer_t *w = nq_st_writer_new();
    nq_err_t err = {0};
    if (bf) {
      uint16_t wb[6];
      for (int i = 0; i < 6; i++) wb[i] = nq_f32_to_bf16(W[i]);
      cr_assert_eq(nq_st_writer_add(w, "llama_proj.weight", NQ_DT_BF16, 2, NQ_SHAPE(3, 2), wb, &err), 0);
    } else {
      cr_assert_eq(nq_st_writer_add_f32(w, "llama_proj.weight", 2, NQ_SHAPE(3, 2), W, &err), 0);
    }
    cr_assert_eq(nq_st_writer_add_f32(w, "llama_proj.bias", 1, NQ_SHAPE(3), b, &err), 0);
    cr_assert_eq(nq_st_writer_save(w, path, &err), 0, "%s", err.msg);
    nq_st_writer_free(w);
    nq_input_proj_t *p = NULL;
    cr_assert_eq(nq_input_proj_load(path, NULL, NULL, &p, &err), 0, "%s", err.msg);
    cr_assert(p->in_dim == 2 && p->out_dim == 3);
    float y[6];
    cr_assert_eq(nq_input_proj_forward(p, x, 2, y, &err), 0, "%s", err.msg);
    for (int i = 0; i < 6; i++) cr_assert_float_eq(y[i], want[i], 1e-6, "y[%d] = %g (bf16 %d)", i, y[i], bf);
    nq_input_proj_free(p);
    cr_assert_neq(nq_input_proj_load(path, "gen_text_hidden_fcs.0.fc.", NULL, &p, &err), 0);
    cr_assert(strstr(err.msg, "gen_text_hidden_fcs.0.fc.weight"), "%s", err.msg);
    unlink(path);
  }
}

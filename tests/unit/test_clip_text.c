/* CLIP text encoder against ../shared/golden/text/clip-text-tiny (HF CLIPTextModel in float64), the same weights
 * under the SD-1.x single-file names (with the position_ids buffer), the real SD-1.5 name/shape listing at reduced
 * width, batching, and bad input. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "compute/io/safetensors.h"
#include "compute/models/clip_text.h"

#define CT_CASE NQ_SHARED_DIR "/golden/text/clip-text-tiny"

static void *read_tensor(const char *path, const char *name, nq_dtype_t want, int64_t *numel) {
  nq_st_file_t *f;
  nq_err_t err = {0};
  cr_assert_eq(nq_st_open(path, &f, &err), 0, "%s", err.msg);
  const nq_st_tensor_t *t = nq_st_find(f, name);
  cr_assert(t && t->dtype == want, "%s: %s", path, name);
  void *d = malloc(t->nbytes);
  memcpy(d, t->data, t->nbytes);
  *numel = nq_st_numel(t);
  nq_st_close(f);
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
  cr_assert(rel <= rel_tol && mx <= abs_tol, "%s: rel_l2 %.3g max_abs %.3g", what, rel, mx);
}

/* Runs the golden input through m (batch of `copies` identical rows) and compares. */
static void check_golden(nq_clip_text_t *m, int copies, double rel, double abs_tol, const char *what) {
  int64_t n_ids, n_h, n_p;
  int64_t *ids1 = read_tensor(CT_CASE "/inputs.safetensors", "input_ids", NQ_DT_I64, &n_ids);
  float *eh = read_tensor(CT_CASE "/expected.safetensors", "last_hidden_state", NQ_DT_F32, &n_h);
  float *ep = read_tensor(CT_CASE "/expected.safetensors", "pooled", NQ_DT_F32, &n_p);
  cr_assert_eq(n_ids, 77);
  int64_t *ids = malloc(sizeof(int64_t) * 77 * copies);
  for (int c = 0; c < copies; c++) memcpy(ids + 77 * c, ids1, sizeof(int64_t) * 77);
  float *h = malloc(sizeof(float) * n_h * copies), *p = malloc(sizeof(float) * n_p * copies);
  nq_err_t err = {0};
  cr_assert_eq(nq_clip_text_forward(m, ids, copies, 77, h, p, &err), 0, "%s", err.msg);
  for (int c = 0; c < copies; c++) {
    compare(h + n_h * c, eh, n_h, rel, abs_tol, what);
    compare(p + n_p * c, ep, n_p, rel, abs_tol, what);
  }
  free(ids1), free(ids), free(eh), free(ep), free(h), free(p);
}

Test(clip_text, golden_hf_dir) {
  nq_clip_text_t *m = NULL;
  nq_err_t err = {0};
  cr_assert_eq(nq_clip_text_load(CT_CASE "/model", NULL, &m, &err), 0, "%s", err.msg);
  cr_assert_str_eq(m->layout->name, "hf");
  cr_assert_eq(m->cfg.n_layers, 2);
  cr_assert_eq(m->cfg.n_heads, 4);
  cr_assert_eq(m->cfg.act, NQ_OP_QUICK_GELU);
  check_golden(m, 1, 1e-4, 1e-3, "clip-text-tiny");
  check_golden(m, 3, 1e-4, 1e-3, "clip-text-tiny x3");
  nq_clip_text_free(m);
}

Test(clip_text, golden_bf16) {
  nq_clip_text_load_opts_t o;
  nq_clip_text_load_opts_init(&o);
  o.wdtype = NQ_DT_BF16;
  nq_clip_text_t *m = NULL;
  nq_err_t err = {0};
  cr_assert_eq(nq_clip_text_load(CT_CASE "/model", &o, &m, &err), 0, "%s", err.msg);
  check_golden(m, 2, 1e-2, 5e-2, "clip-text-tiny bf16");
  nq_clip_text_free(m);
}

/* The wrong activation must fail the golden: proves the config's hidden_act is honoured. */
Test(clip_text, activation_matters) {
  nq_clip_text_load_opts_t o;
  nq_clip_text_load_opts_init(&o);
  o.hidden_act = "gelu";
  nq_clip_text_t *m = NULL;
  nq_err_t err = {0};
  cr_assert_eq(nq_clip_text_load(CT_CASE "/model", &o, &m, &err), 0, "%s", err.msg);
  int64_t n;
  int64_t *ids = read_tensor(CT_CASE "/inputs.safetensors", "input_ids", NQ_DT_I64, &n);
  float *eh = read_tensor(CT_CASE "/expected.safetensors", "last_hidden_state", NQ_DT_F32, &n);
  float *h = malloc(sizeof(float) * n);
  cr_assert_eq(nq_clip_text_forward(m, ids, 1, 77, h, NULL, &err), 0, "%s", err.msg);
  double se = 0, sx = 0;
  for (int64_t i = 0; i < n; i++) se += (h[i] - eh[i]) * (double)(h[i] - eh[i]), sx += (double)eh[i] * eh[i];
  cr_assert(sqrt(se / sx) > 1e-3, "exact gelu should not match a quick_gelu reference (rel %.3g)", sqrt(se / sx));
  free(ids), free(eh), free(h);
  nq_clip_text_free(m);
}

/* The tiny weights renamed to the SD-1.x single file layout (+ the I64 position_ids buffer), no config.json. */
Test(clip_text, ldm_single_file_names) {
  nq_st_file_t *f;
  nq_err_t err = {0};
  cr_assert_eq(nq_st_open(CT_CASE "/model/model.safetensors", &f, &err), 0, "%s", err.msg);
  nq_st_writer_t *w = nq_st_writer_new();
  for (size_t i = 0; i < nq_st_count(f); i++) {
    const nq_st_tensor_t *t = nq_st_get(f, i);
    char n[256];
    snprintf(n, sizeof n, "cond_stage_model.transformer.%s", t->name);
    cr_assert_eq(nq_st_writer_add(w, n, t->dtype, t->ndim, t->shape, t->data, &err), 0, "%s", err.msg);
  }
  int64_t pos[77];
  for (int i = 0; i < 77; i++) pos[i] = i;
  cr_assert_eq(nq_st_writer_add(w, "cond_stage_model.transformer.text_model.embeddings.position_ids", NQ_DT_I64, 2,
                                NQ_SHAPE(1, 77), pos, &err), 0);
  float z = 0;
  cr_assert_eq(nq_st_writer_add_f32(w, "model.diffusion_model.time_embed.0.bias", 1, NQ_SHAPE(1), &z, &err), 0);
  char path[] = "/tmp/nq_ct_ldm_XXXXXX";
  int fd = mkstemp(path);
  cr_assert(fd >= 0);
  close(fd);
  cr_assert_eq(nq_st_writer_save(w, path, &err), 0, "%s", err.msg);
  nq_st_writer_free(w);
  nq_st_close(f);
  nq_clip_text_load_opts_t o;
  nq_clip_text_load_opts_init(&o);
  o.n_heads = 4; /* not CLIP-L's 64-wide heads: say so */
  nq_clip_text_t *m = NULL;
  cr_assert_eq(nq_clip_text_load(path, &o, &m, &err), 0, "%s", err.msg);
  cr_assert_str_eq(m->layout->name, "ldm-sd1");
  check_golden(m, 2, 1e-4, 1e-3, "clip-text-tiny ldm names");
  nq_clip_text_free(m);
  unlink(path);
}

/* Every name of the real SD-1.5 text encoder listing, at reduced width (768 -> 64, 3072 -> 256): the name map
 * loads it, with the 12 layers and nothing missing. */
Test(clip_text, sd15_listing) {
  FILE *f = fopen(NQ_SHARED_DIR "/models/listings/sd15_text_encoder_clip_l_ldm.txt", "r");
  cr_assert(f);
  nq_st_writer_t *w = nq_st_writer_new();
  char line[512];
  int n = 0;
  float *zeros = calloc(49408 * 64, sizeof(float));
  nq_err_t err = {0};
  while (fgets(line, sizeof line, f)) {
    if (line[0] == '#') continue;
    char name[300], shp[100];
    if (sscanf(line, "%299s %99[^\n]", name, shp) != 2) continue;
    int64_t dims[4];
    int nd = 0;
    for (char *s = shp; *s && nd < 4; s++)
      if (*s >= '0' && *s <= '9') {
        long long v = strtoll(s, &s, 10);
        dims[nd++] = v == 768 ? 64 : v == 3072 ? 256 : v;
        s--;
      }
    cr_assert_eq(nq_st_writer_add_f32(w, name, nd, dims, zeros, &err), 0, "%s", err.msg);
    n++;
  }
  fclose(f);
  cr_assert_eq(n, 196);
  char path[] = "/tmp/nq_ct_sd15_XXXXXX";
  int fd = mkstemp(path);
  close(fd);
  cr_assert_eq(nq_st_writer_save(w, path, &err), 0, "%s", err.msg);
  nq_st_writer_free(w);
  free(zeros);
  nq_clip_text_t *m = NULL;
  cr_assert_eq(nq_clip_text_load(path, NULL, &m, &err), 0, "%s", err.msg);
  cr_assert_str_eq(m->layout->name, "ldm-sd1");
  cr_assert_eq(m->cfg.n_layers, 12);
  cr_assert_eq(m->cfg.hidden, 64);
  cr_assert_eq(m->cfg.intermediate, 256);
  cr_assert_eq(m->cfg.vocab_size, 49408);
  cr_assert_eq(m->cfg.max_pos, 77);
  cr_assert_eq(m->cfg.act, NQ_OP_QUICK_GELU);
  nq_clip_text_free(m);
  unlink(path);
}

Test(clip_text, bad_input) {
  nq_clip_text_t *m = NULL;
  nq_err_t err = {0};
  cr_assert_eq(nq_clip_text_load(CT_CASE "/model", NULL, &m, &err), 0, "%s", err.msg);
  int64_t ids[78] = {49406, 320, 49407};
  ids[5] = 49408;
  float h[78 * 32];
  cr_assert_eq(nq_clip_text_forward(m, ids, 1, 77, h, NULL, &err), NQ_EINVAL);
  cr_assert(strstr(err.msg, "input_ids[0][5]"), "%s", err.msg);
  ids[5] = 0;
  cr_assert_eq(nq_clip_text_forward(m, ids, 1, 78, h, NULL, &err), NQ_ESHAPE);
  nq_clip_text_free(m);
  cr_assert_neq(nq_clip_text_load(NQ_SHARED_DIR "/golden/imagebind/imagebind-audio/model", NULL, &m, &err), 0);
  cr_assert(strstr(err.msg, "token_embedding"), "%s", err.msg);
}

/* diffusers UNet2DConditionModel / UNet3DConditionModel against the float64 diffusers golden cases
 * (../shared/golden/diffusers), the LDM single-file name map against the real SD-1.5 / SD-2 tensor listings, and
 * the loader's error paths. */
#include <criterion/criterion.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "compute/io/safetensors.h"
#include "compute/models/unet2d.h"
#include "compute/models/unet3d.h"
#include "compute/models/unet_int.h"

#define GOLD NQ_SHARED_DIR "/golden/diffusers/"
#define CONFIGS NQ_SHARED_DIR "/models/configs/"
#define LISTINGS NQ_SHARED_DIR "/models/listings/"

/* ---- golden helpers ------------------------------------------------------------------------------------------ */

typedef struct {
  nq_st_file_t *in, *exp;
  double rel_l2, max_abs;
} gcase_t;

static void case_open(const char *name, gcase_t *c) {
  char p[512];
  nq_err_t err = {0};
  snprintf(p, sizeof p, GOLD "%s/inputs.safetensors", name);
  cr_assert_eq(nq_st_open(p, &c->in, &err), 0, "%s", err.msg);
  snprintf(p, sizeof p, GOLD "%s/expected.safetensors", name);
  cr_assert_eq(nq_st_open(p, &c->exp, &err), 0, "%s", err.msg);
  snprintf(p, sizeof p, GOLD "%s/case.json", name);
  json_error_t je;
  json_t *j = json_load_file(p, 0, &je);
  cr_assert(j, "%s: %s", p, je.text);
  json_t *tol = json_object_get(j, "tolerance");
  c->rel_l2 = json_number_value(json_object_get(tol, "rel_l2"));
  c->max_abs = json_number_value(json_object_get(tol, "max_abs"));
  cr_assert(c->rel_l2 > 0 && c->max_abs > 0, "%s: tolerance", p);
  json_decref(j);
}

static void case_close(gcase_t *c) { nq_st_close(c->in), nq_st_close(c->exp); }

/* Borrowed F32 tensor of input `name`, or an empty tensor (data NULL) when absent. */
static nq_tensor_t case_input(const gcase_t *c, const char *name) {
  nq_tensor_t t;
  memset(&t, 0, sizeof t);
  const nq_st_tensor_t *s = nq_st_find(c->in, name);
  if (!s) return t;
  cr_assert_eq(s->dtype, NQ_DT_F32, "%s dtype", name);
  int64_t sh[NQ_MAX_DIMS];
  for (int i = 0; i < s->ndim; i++) sh[i] = s->shape[i];
  nq_tensor_init_borrowed(&t, NQ_DT_F32, s->ndim, sh, (void *)s->data);
  return t;
}

/* rel_l2 / max_abs of got[off .. off+n) against expected `out`. */
static void compare(const gcase_t *c, const nq_tensor_t *got, int64_t off, double rel_tol, const char *what) {
  const nq_st_tensor_t *e = nq_st_find(c->exp, "out");
  cr_assert(e, "expected.out missing");
  int64_t n = nq_st_numel(e);
  cr_assert(nq_tensor_numel(got) >= off + n, "%s: output too small", what);
  const float *w = e->data, *g = (const float *)got->data + off;
  double num = 0, den = 0, mx = 0;
  for (int64_t i = 0; i < n; i++) {
    double d = (double)g[i] - w[i];
    cr_assert(isfinite(g[i]), "%s: non-finite output at %lld", what, (long long)i);
    num += d * d, den += (double)w[i] * w[i];
    if (fabs(d) > mx) mx = fabs(d);
  }
  double rel = sqrt(num) / fmax(sqrt(den), 1e-12);
  cr_log_info("%s: rel_l2 %.3g max_abs %.3g (tolerance %.3g / %.3g)\n", what, rel, mx, rel_tol, c->max_abs);
  fprintf(stderr, "%s: rel_l2 %.3g max_abs %.3g\n", what, rel, mx);
  cr_expect(rel <= rel_tol, "%s: rel_l2 %.3g > %.3g", what, rel, rel_tol);
  if (rel_tol <= c->rel_l2) cr_expect(mx <= c->max_abs, "%s: max_abs %.3g > %.3g", what, mx, c->max_abs);
}

static nq_unet2d_t *load2d(const char *name, int wdtype) {
  char p[512];
  snprintf(p, sizeof p, GOLD "%s/model", name);
  nq_unet2d_opts_t o;
  nq_unet2d_opts_init(&o);
  o.wdtype = wdtype;
  o.conv_wdtype = wdtype; /* the 2D cases hold the bf16 tolerance with every weight converted */
  nq_unet2d_t *u;
  nq_err_t err = {0};
  cr_assert_eq(nq_unet2d_load(p, &o, &u, &err), 0, "%s", err.msg);
  return u;
}

/* Runs a 2D case at batch `rep` (the single golden sample repeated) and compares every copy. */
static void run2d(const char *name, int attn_path, int wdtype, int rep, double rel_tol) {
  gcase_t c;
  case_open(name, &c);
  nq_unet2d_t *u = load2d(name, wdtype);
  nq_unet2d_set_attn_path(u, attn_path);
  nq_tensor_t x = case_input(&c, "sample"), ts = case_input(&c, "timestep"), ehs = case_input(&c, "encoder_hidden_states"),
              cl = case_input(&c, "class_labels");
  cr_assert(x.data && ts.data);
  nq_tensor_t xb, eb, cb, out;
  float tb[4];
  nq_err_t err = {0};
  memset(&eb, 0, sizeof eb), memset(&cb, 0, sizeof cb);
  cr_assert_eq(nq_tensor_init(&xb, NQ_DT_F32, 4, (int64_t[]){rep, x.ne[1], x.ne[2], x.ne[3]}, &err), 0);
  for (int r = 0; r < rep; r++) {
    memcpy((float *)xb.data + r * nq_tensor_numel(&x), x.data, nq_tensor_nbytes(&x));
    tb[r] = ((float *)ts.data)[0];
  }
  if (ehs.data) {
    cr_assert_eq(nq_tensor_init(&eb, NQ_DT_F32, 3, (int64_t[]){rep, ehs.ne[1], ehs.ne[2]}, &err), 0);
    for (int r = 0; r < rep; r++) memcpy((float *)eb.data + r * nq_tensor_numel(&ehs), ehs.data, nq_tensor_nbytes(&ehs));
  }
  if (cl.data) {
    cr_assert_eq(nq_tensor_init(&cb, NQ_DT_F32, 2, (int64_t[]){rep, cl.ne[1]}, &err), 0);
    for (int r = 0; r < rep; r++) memcpy((float *)cb.data + r * nq_tensor_numel(&cl), cl.data, nq_tensor_nbytes(&cl));
  }
  cr_assert_eq(nq_unet2d_forward(u, &xb, tb, ehs.data ? &eb : NULL, cl.data ? &cb : NULL, &out, &err), 0, "%s",
               err.msg);
  cr_assert_eq(out.ne[0], rep);
  char what[160];
  for (int r = 0; r < rep; r++) {
    snprintf(what, sizeof what, "%s path %d wdtype %d batch %d/%d", name, attn_path, wdtype, r, rep);
    compare(&c, &out, r * nq_tensor_numel(&out) / rep, rel_tol, what);
  }
  nq_tensor_deinit(&out), nq_tensor_deinit(&xb), nq_tensor_deinit(&eb), nq_tensor_deinit(&cb);
  nq_unet2d_free(u);
  case_close(&c);
}

Test(unet2d, sd15_golden) { run2d("unet2d-sd15", 0, -1, 1, 1e-4); }
Test(unet2d, sd2_golden_linear_proj) { run2d("unet2d-sd2", 0, -1, 1, 1e-4); }
Test(unet2d, audioldm_golden_class_concat_no_ehs) { run2d("unet2d-audioldm", 0, -1, 1, 1e-4); }
Test(unet2d, sd15_batch2) { run2d("unet2d-sd15", 0, -1, 2, 1e-4); }
Test(unet2d, audioldm_batch2) { run2d("unet2d-audioldm", 0, -1, 2, 1e-4); }
/* every attention implementation reproduces the reference on its own */
Test(unet2d, sd15_attention_op_path) { run2d("unet2d-sd15", 1, -1, 1, 1e-4); }
Test(unet2d, sd15_gemm_attention_path) { run2d("unet2d-sd15", 2, -1, 1, 1e-4); }
Test(unet2d, sd2_batched_small_attention_path) { run2d("unet2d-sd2", 3, -1, 1, 1e-4); }
/* reduced-precision weights: the bf16 tolerance of ../shared/golden/README.md */
Test(unet2d, sd15_bf16_weights) { run2d("unet2d-sd15", 0, NQ_DT_BF16, 1, 1e-2); }

/* ---- UNet3D ------------------------------------------------------------------------------------------------- */

static void run3d(int attn_path, int rep) {
  gcase_t c;
  case_open("unet3d-zeroscope", &c);
  nq_unet3d_t *u;
  nq_err_t err = {0};
  cr_assert_eq(nq_unet3d_load(GOLD "unet3d-zeroscope/model", NULL, &u, &err), 0, "%s", err.msg);
  nq_unet3d_set_attn_path(u, attn_path);
  nq_tensor_t x = case_input(&c, "sample"), ts = case_input(&c, "timestep"), ehs = case_input(&c, "encoder_hidden_states");
  cr_assert(x.data && ts.data && ehs.data);
  nq_tensor_t xb, eb, out;
  float tb[4];
  cr_assert_eq(nq_tensor_init(&xb, NQ_DT_F32, 5, (int64_t[]){rep, x.ne[1], x.ne[2], x.ne[3], x.ne[4]}, &err), 0);
  cr_assert_eq(nq_tensor_init(&eb, NQ_DT_F32, 3, (int64_t[]){rep, ehs.ne[1], ehs.ne[2]}, &err), 0);
  for (int r = 0; r < rep; r++) {
    memcpy((float *)xb.data + r * nq_tensor_numel(&x), x.data, nq_tensor_nbytes(&x));
    memcpy((float *)eb.data + r * nq_tensor_numel(&ehs), ehs.data, nq_tensor_nbytes(&ehs));
    tb[r] = ((float *)ts.data)[0];
  }
  cr_assert_eq(nq_unet3d_forward(u, &xb, tb, &eb, &out, &err), 0, "%s", err.msg);
  cr_assert_eq(out.ndim, 5);
  char what[160];
  for (int r = 0; r < rep; r++) {
    snprintf(what, sizeof what, "unet3d-zeroscope path %d batch %d/%d", attn_path, r, rep);
    compare(&c, &out, r * nq_tensor_numel(&out) / rep, c.rel_l2, what);
  }
  nq_tensor_deinit(&out), nq_tensor_deinit(&xb), nq_tensor_deinit(&eb);
  nq_unet3d_free(u);
  case_close(&c);
}

Test(unet3d, zeroscope_golden) { run3d(0, 1); }
Test(unet3d, zeroscope_batch2) { run3d(0, 2); }
Test(unet3d, zeroscope_attention_op_path) { run3d(1, 1); }
Test(unet3d, zeroscope_batched_small_attention_path) { run3d(3, 1); }

/* ---- LDM single-file names against the real checkpoints' tensor listings -------------------------------------- */

typedef struct {
  int n;
  nq_unet__entry_t *e;
  int *used;
  char **names;
} listing_t;

/* "name<TAB>[d0, d1, ...]" lines (after '#' comments); drop: a name to leave out; reshape: a name whose first
 * dim is changed. */
static void listing_load(const char *path, listing_t *l, const char *drop, const char *reshape) {
  FILE *f = fopen(path, "r");
  cr_assert(f, "cannot open %s", path);
  char line[512];
  memset(l, 0, sizeof *l);
  l->e = calloc(1000, sizeof *l->e), l->used = calloc(1000, sizeof(int)), l->names = calloc(1000, sizeof(char *));
  while (fgets(line, sizeof line, f)) {
    if (line[0] == '#' || line[0] == '\n') continue;
    char *tab = strchr(line, '\t');
    cr_assert(tab && l->n < 1000, "listing line: %s", line);
    *tab = 0;
    if (drop && !strcmp(line, drop)) continue;
    nq_unet__entry_t *e = &l->e[l->n];
    l->names[l->n] = strdup(line);
    e->name = l->names[l->n], e->dtype = NQ_DT_F32;
    for (char *p = strchr(tab + 1, '['); p && *p && *p != ']';) {
      e->shape[e->ndim++] = strtoll(p + 1, &p, 10);
      while (*p == ' ') p++;
    }
    if (reshape && !strcmp(line, reshape)) e->shape[0] += 1;
    l->n++;
  }
  fclose(f);
}

static void listing_free(listing_t *l) {
  for (int i = 0; i < l->n; i++) free(l->names[i]);
  free(l->e), free(l->used), free(l->names);
}

static int listing_lookup(void *ctx, const char *name, nq_unet__entry_t *e) {
  listing_t *l = ctx;
  for (int i = 0; i < l->n; i++)
    if (!strcmp(l->e[i].name, name)) {
      *e = l->e[i];
      l->used[i]++;
      return 1;
    }
  return 0;
}

/* Builds the real-size model of `config` against `listing`; returns rc, err filled. */
static int build_from_listing(const char *config, listing_t *l, nq_err_t *err) {
  nq_unet__model_t m;
  memset(&m, 0, sizeof m);
  cr_assert_eq(nq_unet__arch_parse(config, 0, &m.a, err), 0, "%s", err->msg);
  nq_unet__src_t s = {.lookup = listing_lookup, .ctx = l, .map = nq_unet__ldm_name, .arch = &m.a, .wdtype = -1};
  int rc = nq_unet__build(&m, &s, err);
  nq_unet__model_deinit(&m);
  return rc;
}

static void check_listing(const char *config, const char *listing) {
  listing_t l;
  listing_load(listing, &l, NULL, NULL);
  cr_assert_eq(l.n, 686, "%s: %d tensors", listing, l.n);
  nq_err_t err = {0};
  cr_assert_eq(build_from_listing(config, &l, &err), 0, "%s", err.msg);
  /* every tensor of the checkpoint was asked for; (conv-shaped proj_in/out count once though peeked) */
  for (int i = 0; i < l.n; i++) cr_expect(l.used[i] >= 1, "%s: %s never loaded", listing, l.e[i].name);
  listing_free(&l);
}

Test(unet_ldm, sd15_listing_matches_real_config) {
  check_listing(CONFIGS "runwayml-stable-diffusion-v1-5/unet/config.json", LISTINGS "sd15_unet_ldm.txt");
}

Test(unet_ldm, sd2_listing_matches_real_config) {
  check_listing(CONFIGS "stable-diffusion-2-1-base/unet/config.json", LISTINGS "sd2_unet_ldm.txt");
}

Test(unet_ldm, missing_tensor_is_named) {
  listing_t l;
  const char *gone = "model.diffusion_model.output_blocks.5.2.conv.weight";
  listing_load(LISTINGS "sd15_unet_ldm.txt", &l, gone, NULL);
  nq_err_t err = {0};
  cr_assert_eq(build_from_listing(CONFIGS "runwayml-stable-diffusion-v1-5/unet/config.json", &l, &err), NQ_ENOENT);
  cr_assert(strstr(err.msg, gone) && strstr(err.msg, "up_blocks.1.upsamplers.0.conv.weight"), "%s", err.msg);
  listing_free(&l);
}

Test(unet_ldm, misshaped_tensor_is_named) {
  listing_t l;
  const char *bad = "model.diffusion_model.input_blocks.4.0.skip_connection.weight";
  listing_load(LISTINGS "sd15_unet_ldm.txt", &l, NULL, bad);
  nq_err_t err = {0};
  cr_assert_eq(build_from_listing(CONFIGS "runwayml-stable-diffusion-v1-5/unet/config.json", &l, &err), NQ_ESHAPE);
  cr_assert(strstr(err.msg, bad) && strstr(err.msg, "[641,320,1,1]"), "%s", err.msg);
  listing_free(&l);
}

/* The golden SD-1.5 / SD-2 weights rewritten under their LDM names load as a single file and give the same
 * reference output. */
static void ldm_roundtrip(const char *name) {
  char src[512], cfg[512], dst[] = "/tmp/nq_unet_ldm_XXXXXX";
  snprintf(src, sizeof src, GOLD "%s/model/unet/diffusion_pytorch_model.safetensors", name);
  snprintf(cfg, sizeof cfg, GOLD "%s/model/unet/config.json", name);
  nq_err_t err = {0};
  nq_st_file_t *f;
  cr_assert_eq(nq_st_open(src, &f, &err), 0, "%s", err.msg);
  nq_unet__arch_t a;
  cr_assert_eq(nq_unet__arch_parse(cfg, 0, &a, &err), 0, "%s", err.msg);
  nq_st_writer_t *w = nq_st_writer_new();
  for (size_t i = 0; i < nq_st_count(f); i++) {
    const nq_st_tensor_t *t = nq_st_get(f, i);
    char ldm[256];
    cr_assert_eq(nq_unet__ldm_name(&a, t->name, ldm, sizeof ldm), 0, "no LDM name for %s", t->name);
    cr_assert_eq(nq_st_writer_add(w, ldm, t->dtype, t->ndim, t->shape, t->data, &err), 0, "%s", err.msg);
  }
  int fd = mkstemp(dst);
  cr_assert(fd >= 0);
  close(fd);
  cr_assert_eq(nq_st_writer_save(w, dst, &err), 0, "%s", err.msg);
  nq_st_writer_free(w);
  nq_st_close(f);
  nq_unet2d_opts_t o;
  nq_unet2d_opts_init(&o);
  o.config = cfg;
  nq_unet2d_t *u;
  cr_assert_eq(nq_unet2d_load(dst, &o, &u, &err), 0, "%s", err.msg);
  gcase_t c;
  case_open(name, &c);
  nq_tensor_t x = case_input(&c, "sample"), ts = case_input(&c, "timestep"), ehs = case_input(&c, "encoder_hidden_states");
  nq_tensor_t out;
  cr_assert_eq(nq_unet2d_forward(u, &x, ts.data, &ehs, NULL, &out, &err), 0, "%s", err.msg);
  char what[128];
  snprintf(what, sizeof what, "%s as an LDM single file", name);
  compare(&c, &out, 0, c.rel_l2, what);
  nq_tensor_deinit(&out);
  nq_unet2d_free(u);
  case_close(&c);
  unlink(dst);
}

Test(unet_ldm, sd15_golden_as_single_file) { ldm_roundtrip("unet2d-sd15"); }
Test(unet_ldm, sd2_golden_as_single_file) { ldm_roundtrip("unet2d-sd2"); }

/* ---- configs --------------------------------------------------------------------------------------------------- */

Test(unet_config, real_configs_parse) {
  nq_unet__arch_t a;
  nq_err_t err = {0};
  cr_assert_eq(nq_unet__arch_parse(CONFIGS "runwayml-stable-diffusion-v1-5/unet/config.json", 0, &a, &err), 0, "%s",
               err.msg);
  cr_expect(a.n_levels == 4 && a.heads[0] == 8 && a.cross_dim[3] == 768 && a.has_mid && !a.class_embed);
  cr_assert_eq(nq_unet__arch_parse(CONFIGS "stable-diffusion-2-1-base/unet/config.json", 0, &a, &err), 0, "%s", err.msg);
  cr_expect(a.heads[0] == 5 && a.heads[3] == 20 && a.cross_dim[0] == 1024);
  cr_assert_eq(nq_unet__arch_parse(CONFIGS "audioldm-s-full-v2/unet/config.json", 0, &a, &err), 0, "%s", err.msg);
  cr_expect(a.class_embed == 1 && a.class_concat == 1 && a.class_in_dim == 512 && a.cross_dim[2] == 384 &&
            a.in_channels == 8 && !a.down_attn[0] && a.down_attn[1]);
  cr_assert_eq(nq_unet__arch_parse(CONFIGS "text-to-video-ms-1.7b/unet/config.json", 1, &a, &err), 0, "%s", err.msg);
  cr_expect(a.is3d && a.tin_heads == 8 && a.tin_head_dim == 64 && a.cross_dim[0] == 1024 && a.n_levels == 4);
}

static int parse_with(const char *extra, nq_err_t *err) {
  char path[] = "/tmp/nq_unet_cfg_XXXXXX";
  int fd = mkstemp(path);
  cr_assert(fd >= 0);
  FILE *f = fdopen(fd, "w");
  fprintf(f, "{\"block_out_channels\": [32, 64], \"down_block_types\": [\"CrossAttnDownBlock2D\", \"DownBlock2D\"],"
             " \"up_block_types\": [\"UpBlock2D\", \"CrossAttnUpBlock2D\"], \"norm_num_groups\": 8%s}",
          extra);
  fclose(f);
  nq_unet__arch_t a;
  int rc = nq_unet__arch_parse(path, 0, &a, err);
  unlink(path);
  return rc;
}

Test(unet_config, unsupported_options_are_named) {
  nq_err_t err = {0};
  cr_assert_eq(parse_with("", &err), 0, "%s", err.msg);
  cr_assert_eq(parse_with(", \"resnet_time_scale_shift\": \"scale_shift\"", &err), NQ_EUNSUPPORTED);
  cr_assert(strstr(err.msg, "resnet_time_scale_shift"), "%s", err.msg);
  cr_assert_eq(parse_with(", \"addition_embed_type\": \"text_time\"", &err), NQ_EUNSUPPORTED);
  cr_assert(strstr(err.msg, "addition_embed_type"), "%s", err.msg);
  cr_assert_eq(parse_with(", \"class_embed_type\": \"timestep\"", &err), NQ_EUNSUPPORTED);
  cr_assert_eq(parse_with(", \"only_cross_attention\": [true, false]", &err), NQ_EUNSUPPORTED);
  cr_assert_eq(parse_with(", \"attention_head_dim\": [3, 8]", &err), NQ_ECONFIG); /* 32 % 3 */
  cr_assert_eq(parse_with(", \"down_block_types\": [\"CrossAttnDownBlock2D\", \"SimpleCrossAttnDownBlock2D\"]", &err),
               NQ_EUNSUPPORTED);
  cr_assert(strstr(err.msg, "SimpleCrossAttnDownBlock2D"), "%s", err.msg);
}

/* ---- input checks ---------------------------------------------------------------------------------------------- */

Test(unet2d, bad_inputs_are_errors) {
  nq_unet2d_t *u = load2d("unet2d-sd15", -1);
  nq_unet2d_info_t info;
  nq_unet2d_get_info(u, &info);
  cr_assert(info.in_channels == 4 && info.cross_attention_dim == 32 && info.needs_ehs && info.class_in_dim == 0 &&
            info.downscale == 4);
  nq_tensor_t x, e, out;
  nq_err_t err = {0};
  float t[1] = {10};
  cr_assert_eq(nq_tensor_init(&x, NQ_DT_F32, 4, (int64_t[]){1, 4, 6, 8}, &err), 0);
  cr_assert_eq(nq_tensor_init(&e, NQ_DT_F32, 3, (int64_t[]){1, 5, 32}, &err), 0);
  cr_assert_eq(nq_unet2d_forward(u, &x, t, &e, NULL, &out, &err), NQ_ESHAPE); /* 6 is not a multiple of 4 */
  cr_assert_eq(nq_unet2d_forward(u, &x, t, NULL, NULL, &out, &err), NQ_ESHAPE);
  nq_tensor_deinit(&x);
  cr_assert_eq(nq_tensor_init(&x, NQ_DT_F32, 4, (int64_t[]){1, 4, 8, 8}, &err), 0);
  cr_assert_eq(nq_unet2d_forward(u, &x, t, NULL, NULL, &out, &err), NQ_EINVAL); /* needs encoder_hidden_states */
  cr_assert(strstr(err.msg, "encoder_hidden_states"), "%s", err.msg);
  cr_assert_eq(nq_unet2d_forward(u, &x, t, &e, NULL, &out, &err), 0, "%s", err.msg); /* L = 5 is fine */
  nq_tensor_deinit(&out), nq_tensor_deinit(&x), nq_tensor_deinit(&e);
  nq_unet2d_free(u);
}

Test(unet2d, audioldm_needs_class_labels) {
  nq_unet2d_t *u = load2d("unet2d-audioldm", -1);
  nq_unet2d_info_t info;
  nq_unet2d_get_info(u, &info);
  cr_assert(info.class_in_dim == 32 && !info.needs_ehs);
  nq_tensor_t x, out;
  nq_err_t err = {0};
  float t[1] = {10};
  cr_assert_eq(nq_tensor_init(&x, NQ_DT_F32, 4, (int64_t[]){1, 8, 8, 8}, &err), 0);
  cr_assert_eq(nq_unet2d_forward(u, &x, t, NULL, NULL, &out, &err), NQ_EINVAL);
  cr_assert(strstr(err.msg, "class_labels"), "%s", err.msg);
  nq_tensor_deinit(&x);
  nq_unet2d_free(u);
}

Test(unet2d, missing_model_dir) {
  nq_unet2d_t *u;
  nq_err_t err = {0};
  cr_assert_eq(nq_unet2d_load("/nonexistent/unet", NULL, &u, &err), NQ_ENOENT);
  cr_assert_null(u);
}

/* ---- the denoise loop (compute/models/samplers) driving the UNet through nq_unet2d_eps ------------------------ */

#include "compute/models/samplers/scheduler.h"

static void run_denoise(const char *name) {
  char p[512];
  gcase_t c;
  case_open(name, &c);
  snprintf(p, sizeof p, GOLD "%s/case.json", name);
  json_error_t je;
  json_t *j = json_load_file(p, 0, &je);
  cr_assert(j);
  json_t *params = json_object_get(j, "params");
  const char *kind = json_string_value(json_object_get(params, "scheduler"));
  int steps = (int)json_integer_value(json_object_get(params, "steps"));
  float g = (float)json_number_value(json_object_get(params, "guidance_scale"));
  nq_err_t err = {0};
  nq_sched_config_t sc;
  snprintf(p, sizeof p, GOLD "%s/model/scheduler/scheduler_config.json", name);
  cr_assert_eq(nq_sched_config_load(p, kind, &sc, &err), 0, "%s", err.msg);
  nq_sched_t *s;
  cr_assert_eq(nq_sched_new(&sc, steps, &s, &err), 0, "%s", err.msg);
  nq_unet2d_t *u = load2d(name, -1);
  nq_tensor_t lat = case_input(&c, "latents"), pe = case_input(&c, "prompt_embeds"),
              ne = case_input(&c, "negative_prompt_embeds"), x, ehs;
  cr_assert(lat.data && pe.data && ne.data);
  cr_assert_eq(nq_tensor_init(&x, NQ_DT_F32, 4, lat.ne, &err), 0);
  memcpy(x.data, lat.data, nq_tensor_nbytes(&lat));
  cr_assert_eq(nq_tensor_init(&ehs, NQ_DT_F32, 3, (int64_t[]){2, pe.ne[1], pe.ne[2]}, &err), 0);
  memcpy(ehs.data, ne.data, nq_tensor_nbytes(&ne)); /* uncond first */
  memcpy((char *)ehs.data + nq_tensor_nbytes(&ne), pe.data, nq_tensor_nbytes(&pe));
  nq_unet_cond_t cond = {.unet2d = u, .ehs = &ehs};
  nq_denoise_opts_t o = {.guidance_scale = g};
  cr_assert_eq(nq_denoise_run(s, nq_unet2d_eps, &cond, &x, &o, &err), 0, "%s", err.msg);
  const nq_st_tensor_t *e = nq_st_find(c.exp, "latents");
  cr_assert(e && nq_st_numel(e) == nq_tensor_numel(&x));
  double num = 0, den = 0, mx = 0;
  for (int64_t i = 0; i < nq_tensor_numel(&x); i++) {
    double d = (double)((float *)x.data)[i] - ((const float *)e->data)[i];
    num += d * d, den += (double)((const float *)e->data)[i] * ((const float *)e->data)[i], mx = fmax(mx, fabs(d));
  }
  double rel = sqrt(num / den);
  fprintf(stderr, "%s: rel_l2 %.3g max_abs %.3g\n", name, rel, mx);
  cr_expect(rel <= c.rel_l2 && mx <= c.max_abs, "%s: rel_l2 %.3g max_abs %.3g", name, rel, mx);
  nq_tensor_deinit(&x), nq_tensor_deinit(&ehs);
  nq_unet2d_free(u);
  nq_sched_free(s);
  json_decref(j);
  case_close(&c);
}

Test(unet_denoise, ddim_golden) { run_denoise("denoise-ddim"); }
Test(unet_denoise, pndm_golden) { run_denoise("denoise-pndm"); }
Test(unet_denoise, euler_golden) { run_denoise("denoise-euler"); }

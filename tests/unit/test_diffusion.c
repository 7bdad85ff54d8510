/* TAESD, AutoencoderKL and the diffusion schedulers against ../shared/golden/diffusers (case tolerances), plus
 * scheduler tables against the values the golden cases list (timesteps, sigmas). */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "compute/io/safetensors.h"
#include "compute/models/taesd.h"
#include "compute/models/samplers/scheduler.h"
#include "compute/models/unet2d.h"
#include "compute/models/vae.h"
#include <jansson.h>

#define GOLD NQ_SHARED_DIR "/golden/diffusers/"

/* Tensor `name` of a golden file as a fresh F32 tensor. */
static nq_tensor_t gold_tensor(const char *path, const char *name) {
  nq_err_t err = {0};
  nq_st_file_t *f;
  cr_assert_eq(nq_st_open(path, &f, &err), 0, "%s", err.msg);
  const nq_st_tensor_t *t = nq_st_find(f, name);
  cr_assert(t, "%s: no %s", path, name);
  nq_tensor_t out;
  cr_assert_eq(nq_tensor_init(&out, NQ_DT_F32, t->ndim, t->shape, &err), 0);
  cr_assert_eq(nq_dtype_to_f32(t->dtype, t->data, out.data, (size_t)nq_st_numel(t)), 0);
  nq_st_close(f);
  return out;
}

static void check_close(const nq_tensor_t *got, const nq_tensor_t *want, double tol_rel, double tol_abs,
                        const char *what) {
  cr_assert_eq(nq_tensor_numel(got), nq_tensor_numel(want), "%s: numel", what);
  for (int d = 0; d < want->ndim; d++) cr_assert_eq(got->ne[d], want->ne[d], "%s: dim %d", what, d);
  double num = 0, den = 0, mx = 0;
  const float *a = got->data, *b = want->data;
  for (int64_t i = 0; i < nq_tensor_numel(want); i++) {
    double d = (double)a[i] - b[i];
    num += d * d, den += (double)b[i] * b[i];
    if (fabs(d) > mx || isnan(d)) mx = isnan(d) ? INFINITY : fabs(d);
  }
  double rel = sqrt(num) / fmax(sqrt(den), 1e-30);
  fprintf(stderr, "%s: rel_l2 %.3e max_abs %.3e\n", what, rel, mx);
  cr_assert_leq(rel, tol_rel, "%s: rel_l2 %g > %g", what, rel, tol_rel);
  cr_assert_leq(mx, tol_abs, "%s: max_abs %g > %g", what, mx, tol_abs);
}

/* ---- TAESD ---- */

Test(diffusion, taesd_decode_golden) {
  nq_err_t err = {0};
  nq_taesd_t *m;
  cr_assert_eq(nq_taesd_open(GOLD "taesd-decode/model", NQ_DT_F32, NULL, &m, &err), 0, "%s", err.msg);
  cr_assert(nq_taesd_has_decoder(m) && !nq_taesd_has_encoder(m));
  nq_tensor_t z = gold_tensor(GOLD "taesd-decode/inputs.safetensors", "latents");
  nq_tensor_t want = gold_tensor(GOLD "taesd-decode/expected.safetensors", "image");
  nq_tensor_t img;
  cr_assert_eq(nq_taesd_decode(m, &z, &img, &err), 0, "%s", err.msg);
  float *p = img.data;
  for (int64_t i = 0; i < nq_tensor_numel(&img); i++) p[i] = fminf(fmaxf(p[i], 0.0f), 1.0f);
  check_close(&img, &want, 1e-4, 1e-3, "taesd-decode");
  nq_tensor_deinit(&img), nq_tensor_deinit(&z), nq_tensor_deinit(&want);
  nq_taesd_free(m);
}

/* ---- AutoencoderKL ---- */

Test(diffusion, vae_decode_encode_golden) {
  nq_err_t err = {0};
  nq_vae_t *v;
  cr_assert_eq(nq_vae_open(GOLD "vae-decode/model", NQ_DT_F32, NULL, &v, &err), 0, "%s", err.msg);
  cr_assert(nq_vae_has_decoder(v) && nq_vae_has_encoder(v));
  cr_assert_eq(nq_vae_config(v)->n_levels, 4);
  nq_tensor_t z = gold_tensor(GOLD "vae-decode/inputs.safetensors", "z");
  nq_tensor_t want = gold_tensor(GOLD "vae-decode/expected.safetensors", "sample");
  nq_tensor_t out;
  cr_assert_eq(nq_vae_decode(v, &z, &out, &err), 0, "%s", err.msg);
  check_close(&out, &want, 1e-4, 3e-3, "vae-decode");
  nq_tensor_deinit(&out), nq_tensor_deinit(&z), nq_tensor_deinit(&want);
  nq_tensor_t img = gold_tensor(GOLD "vae-encode/inputs.safetensors", "image");
  want = gold_tensor(GOLD "vae-encode/expected.safetensors", "mean");
  nq_tensor_t lv;
  cr_assert_eq(nq_vae_encode_mean(v, &img, &out, &lv, &err), 0, "%s", err.msg);
  check_close(&out, &want, 1e-4, 9e-4, "vae-encode");
  cr_assert_eq(lv.ne[1], 4);
  nq_tensor_deinit(&out), nq_tensor_deinit(&lv), nq_tensor_deinit(&img), nq_tensor_deinit(&want);
  nq_vae_free(v);
}

/* ---- schedulers: tables against the values diffusers produced (case.json params) ---- */

static json_t *case_params(const char *name) {
  char p[512];
  snprintf(p, sizeof p, GOLD "%s/case.json", name);
  json_t *c = json_load_file(p, 0, NULL);
  cr_assert(c, "%s", p);
  return c;
}

static nq_sched_t *case_sched(const char *name, json_t *params) {
  nq_err_t err = {0};
  char p[512];
  snprintf(p, sizeof p, GOLD "%s/model/scheduler/scheduler_config.json", name);
  nq_sched_config_t c;
  cr_assert_eq(nq_sched_config_load(p, NULL, &c, &err), 0, "%s", err.msg);
  nq_sched_t *s;
  int steps = (int)json_integer_value(json_object_get(params, "steps"));
  cr_assert_eq(nq_sched_new(&c, steps, &s, &err), 0, "%s", err.msg);
  return s;
}

Test(diffusion, scheduler_tables_match_diffusers) {
  const char *cases[] = {"denoise-ddim", "denoise-pndm", "denoise-euler"};
  nq_sched_kind_t kinds[] = {NQ_SCHED_DDIM, NQ_SCHED_PNDM, NQ_SCHED_EULER};
  for (int c = 0; c < 3; c++) {
    json_t *root = case_params(cases[c]), *params = json_object_get(root, "params");
    nq_sched_t *s = case_sched(cases[c], params);
    json_t *ts = json_object_get(params, "timesteps");
    cr_assert_eq(nq_sched_n_evals(s), (int)json_array_size(ts), "%s: evals", cases[c]);
    cr_assert_eq(nq_sched_n_evals(s), (int)json_integer_value(json_object_get(params, "unet_evals")));
    for (int i = 0; i < nq_sched_n_evals(s); i++)
      cr_assert_eq(nq_sched_timestep(s, i), (float)json_number_value(json_array_get(ts, (size_t)i)), "%s t[%d] %g",
                   cases[c], i, (double)nq_sched_timestep(s, i));
    /* sigmas: within 1e-6 relative (a few float32 ulps: torch's float32 schedule arithmetic is not bit-reproduced;
     * the denoise goldens below show it does not matter) */
    double ws = json_number_value(json_object_get(params, "init_noise_sigma"));
    cr_assert_float_eq(nq_sched_init_noise_sigma(s), ws, 1e-6 * ws, "%s: init sigma %.9g vs %.9g", cases[c],
                       (double)nq_sched_init_noise_sigma(s), ws);
    json_t *sg = json_object_get(params, "sigmas");
    if (kinds[c] == NQ_SCHED_EULER) {
      cr_assert(sg);
      for (int i = 0; i <= nq_sched_n_evals(s); i++) {
        double want = json_number_value(json_array_get(sg, (size_t)i));
        cr_assert_float_eq(nq_sched_sigma(s, i), want, 1e-6 * want, "sigma[%d] %.9g vs %.9g", i,
                           (double)nq_sched_sigma(s, i), want);
      }
    }
    nq_sched_free(s);
    json_decref(root);
  }
}

Test(diffusion, scheduler_config_errors) {
  nq_err_t err = {0};
  nq_sched_config_t c;
  cr_assert_eq(nq_sched_config_load(GOLD "denoise-ddim/model/scheduler/scheduler_config.json", "heun", &c, &err),
               NQ_EUNSUPPORTED);
  cr_assert_eq(nq_sched_config_load(GOLD "denoise-ddim/model/scheduler/scheduler_config.json", "euler", &c, &err), 0,
               "%s", err.msg);
  cr_assert_eq(c.kind, NQ_SCHED_EULER);
  cr_assert_eq(c.timestep_spacing, NQ_SPACING_LEADING); /* the file's key wins over the kind default */
  nq_sched_t *s;
  cr_assert_eq(nq_sched_new(&c, 0, &s, &err), NQ_EINVAL);
  cr_assert_eq(nq_sched_new(&c, 1001, &s, &err), NQ_EINVAL);
  cr_assert_eq(nq_sched_config_load("/nonexistent/scheduler_config.json", NULL, &c, &err), NQ_EFORMAT);
}

/* ---- the denoise loops with the golden UNet ---- */

typedef struct {
  nq_unet2d_t *u;
  nq_tensor_t ehs; /* [2, 77, D]: negative, then positive */
  int calls;
} unet_ud_t;

static int unet_eps(void *ud, const nq_tensor_t *x, float t, nq_tensor_t *out, nq_err_t *err) {
  unet_ud_t *u = ud;
  float ts[2] = {t, t};
  nq_tensor_t y;
  u->calls++;
  int rc = nq_unet2d_forward(u->u, x, ts, &u->ehs, NULL, &y, err);
  if (rc < 0) return rc;
  memcpy(out->data, y.data, nq_tensor_nbytes(&y));
  nq_tensor_deinit(&y);
  return 0;
}

static void run_denoise_case(const char *name) {
  nq_err_t err = {0};
  json_t *root = case_params(name), *params = json_object_get(root, "params");
  nq_sched_t *s = case_sched(name, params);
  char p[512];
  snprintf(p, sizeof p, GOLD "%s/model", name);
  unet_ud_t ud = {0};
  nq_unet2d_opts_t o;
  nq_unet2d_opts_init(&o);
  cr_assert_eq(nq_unet2d_load(p, &o, &ud.u, &err), 0, "%s", err.msg);
  snprintf(p, sizeof p, GOLD "%s/inputs.safetensors", name);
  nq_tensor_t lat = gold_tensor(p, "latents"), neg = gold_tensor(p, "negative_prompt_embeds"),
              pos = gold_tensor(p, "prompt_embeds");
  cr_assert_eq(nq_tensor_init(&ud.ehs, NQ_DT_F32, 3, NQ_SHAPE(2, neg.ne[1], neg.ne[2]), &err), 0);
  memcpy(ud.ehs.data, neg.data, nq_tensor_nbytes(&neg));
  memcpy((char *)ud.ehs.data + nq_tensor_nbytes(&neg), pos.data, nq_tensor_nbytes(&pos));
  nq_denoise_opts_t dopts = {.guidance_scale = (float)json_number_value(json_object_get(params, "guidance_scale"))};
  cr_assert_eq(nq_denoise_run(s, unet_eps, &ud, &lat, &dopts, &err), 0, "%s", err.msg);
  cr_assert_eq(ud.calls, (int)json_integer_value(json_object_get(params, "unet_evals")));
  snprintf(p, sizeof p, GOLD "%s/expected.safetensors", name);
  nq_tensor_t want = gold_tensor(p, "latents");
  json_t *tol = json_object_get(root, "tolerance");
  check_close(&lat, &want, json_number_value(json_object_get(tol, "rel_l2")),
              json_number_value(json_object_get(tol, "max_abs")), name);
  nq_tensor_deinit(&lat), nq_tensor_deinit(&neg), nq_tensor_deinit(&pos), nq_tensor_deinit(&want);
  nq_tensor_deinit(&ud.ehs);
  nq_unet2d_free(ud.u);
  nq_sched_free(s);
  json_decref(root);
}

Test(diffusion, denoise_ddim_golden) { run_denoise_case("denoise-ddim"); }
Test(diffusion, denoise_pndm_golden) { run_denoise_case("denoise-pndm"); }
Test(diffusion, denoise_euler_golden) { run_denoise_case("denoise-euler"); }

/* The pre-0.14 attention names (query/key/value/proj_attn, as SD-1.5's vae stores them) load through the name
 * table: a renamed copy of the golden weights decodes exactly like the original. */
Test(diffusion, vae_old_attention_names) {
  nq_err_t err = {0};
  char dir[] = "/tmp/nq_vae_oldnames_XXXXXX", p[256];
  cr_assert(mkdtemp(dir));
  nq_st_file_t *f;
  cr_assert_eq(nq_st_open(GOLD "vae-decode/model/vae/diffusion_pytorch_model.safetensors", &f, &err), 0);
  nq_st_writer_t *w = nq_st_writer_new();
  const char *from[] = {".to_q.", ".to_k.", ".to_v.", ".to_out.0."}, *to[] = {".query.", ".key.", ".value.",
                                                                             ".proj_attn."};
  int renamed = 0;
  for (size_t i = 0; i < nq_st_count(f); i++) {
    const nq_st_tensor_t *t = nq_st_get(f, i);
    char name[256];
    snprintf(name, sizeof name, "%s", t->name);
    for (int k = 0; k < 4; k++) {
      char *at = strstr(name, from[k]);
      if (!at) continue;
      char tail[128];
      snprintf(tail, sizeof tail, "%s", at + strlen(from[k]));
      snprintf(at, sizeof name - (size_t)(at - name), "%s%s", to[k], tail);
      renamed++;
    }
    cr_assert_eq(nq_st_writer_add(w, name, t->dtype, t->ndim, t->shape, t->data, &err), 0, "%s", err.msg);
  }
  cr_assert_eq(renamed, 16); /* 4 linears x (weight, bias) x 2 halves */
  snprintf(p, sizeof p, "%s/diffusion_pytorch_model.safetensors", dir);
  cr_assert_eq(nq_st_writer_save(w, p, &err), 0, "%s", err.msg);
  nq_st_writer_free(w);
  nq_st_close(f);
  char cmd[512];
  snprintf(cmd, sizeof cmd, "cp %s %s/config.json", GOLD "vae-decode/model/vae/config.json", dir);
  cr_assert_eq(system(cmd), 0);
  nq_vae_t *v1, *v2;
  cr_assert_eq(nq_vae_open(GOLD "vae-decode/model", NQ_DT_F32, "ref", &v1, &err), 0, "%s", err.msg);
  cr_assert_eq(nq_vae_open(dir, NQ_DT_F32, "ref", &v2, &err), 0, "%s", err.msg);
  nq_tensor_t z = gold_tensor(GOLD "vae-decode/inputs.safetensors", "z"), a, b;
  cr_assert_eq(nq_vae_decode(v1, &z, &a, &err), 0, "%s", err.msg);
  cr_assert_eq(nq_vae_decode(v2, &z, &b, &err), 0, "%s", err.msg);
  cr_assert_eq(memcmp(a.data, b.data, nq_tensor_nbytes(&a)), 0);
  nq_tensor_deinit(&a), nq_tensor_deinit(&b), nq_tensor_deinit(&z);
  nq_vae_free(v1), nq_vae_free(v2);
  unlink(p);
  snprintf(p, sizeof p, "%s/config.json", dir);
  unlink(p);
  rmdir(dir);
}

Test(diffusion, vae_and_taesd_bad_inputs) {
  nq_err_t err = {0};
  nq_vae_t *v;
  nq_taesd_t *m;
  cr_assert_eq(nq_vae_open("/nonexistent", NQ_DT_F32, NULL, &v, &err), NQ_EFORMAT);
  cr_assert_eq(nq_taesd_open("/nonexistent", NQ_DT_F32, NULL, &m, &err), NQ_ENOENT);
  /* a VAE weights file posing as a TAESD decoder: its tensors do not fit the layout */
  char dir[] = "/tmp/nq_taesd_bad_XXXXXX", p[256];
  cr_assert(mkdtemp(dir));
  snprintf(p, sizeof p, "%s/taesd_decoder.safetensors", dir);
  cr_assert_eq(symlink(GOLD "vae-decode/model/vae/diffusion_pytorch_model.safetensors", p), 0);
  int rc = nq_taesd_open(dir, NQ_DT_F32, NULL, &m, &err);
  cr_assert(rc == NQ_ENOENT || rc == NQ_EFORMAT || rc == NQ_ESHAPE, "rc %d: %s", rc, err.msg);
  cr_assert(strstr(err.msg, "taesd_decoder.safetensors"), "%s", err.msg);
  unlink(p);
  rmdir(dir);
  cr_assert_eq(nq_vae_open(GOLD "vae-decode/model", NQ_DT_F32, NULL, &v, &err), 0, "%s", err.msg);
  nq_tensor_t z, out;
  cr_assert_eq(nq_tensor_init(&z, NQ_DT_F32, 4, NQ_SHAPE(1, 3, 8, 8), &err), 0); /* 3 channels, want 4 */
  cr_assert_eq(nq_vae_decode(v, &z, &out, &err), NQ_ESHAPE);
  nq_tensor_deinit(&z);
  cr_assert_eq(nq_tensor_init(&z, NQ_DT_F32, 4, NQ_SHAPE(1, 3, 12, 16), &err), 0); /* 12 % 8 != 0 */
  cr_assert_eq(nq_vae_encode_mean(v, &z, &out, NULL, &err), NQ_ESHAPE);
  nq_tensor_deinit(&z);
  nq_vae_free(v);
}

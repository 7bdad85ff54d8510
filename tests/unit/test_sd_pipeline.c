/* The Stable Diffusion pipeline (compute/pipelines/sd.h) on a tiny pipeline assembled (by symlinks, nothing copied)
 * from the golden case directories: unet + scheduler from ../shared/golden/diffusers/denoise-*, the vae from
 * vae-decode, the CLIP text encoder from ../shared/golden/text/clip-text-tiny, the SD-1.5 tokenizer files, and the
 * real TAESD decoder. Numbers are checked against the golden references (denoise, VAE decode, TAESD decode); the
 * rest checks pipeline properties (determinism, the prompt_embeds path equal to the text path, previews, PNG
 * round trip, the LDM single-file loader equal to the diffusers directory, request validation).
 * The worker stages (generate-image, precompute-embeddings) are tested at the end, directly and through
 * `nextq run` (skipped when build/nextq is not built). */
#include <criterion/criterion.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "compute/io/npy.h"
#include "compute/io/safetensors.h"
#include "compute/models/names_ldm_vae.h"
#include "compute/models/unet_int.h"
#include "compute/models/vae.h"
#include "compute/pipelines/sd.h"
#include "datasets/media.h"

#define GOLD NQ_SHARED_DIR "/golden/diffusers/"
#define CLIP_TINY NQ_SHARED_DIR "/golden/text/clip-text-tiny/model"
#define SD15_CFG NQ_SHARED_DIR "/models/configs/runwayml-stable-diffusion-v1-5"
#define TAESD NQ_SHARED_DIR "/models/taesd"

/* ---- helpers ---- */

static char g_tmp[256];

static void tmp_init(void) {
  snprintf(g_tmp, sizeof g_tmp, "/tmp/nq_sd_test_XXXXXX");
  cr_assert(mkdtemp(g_tmp));
}
static void tmp_fini(void) {
  char cmd[400];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_tmp);
  cr_assert_eq(system(cmd), 0);
}

static void link_to(const char *target, const char *dir, const char *name) {
  char p[512];
  snprintf(p, sizeof p, "%s/%s", dir, name);
  cr_assert_eq(symlink(target, p), 0, "symlink %s -> %s", p, target);
}

/* <g_tmp>/<name>: unet + scheduler of golden case `dcase`, the vae-decode vae, the tiny CLIP, SD-1.5 tokenizer. */
static void make_pipe(const char *name, const char *dcase, char *out, size_t cap) {
  snprintf(out, cap, "%s/%s", g_tmp, name);
  cr_assert_eq(mkdir(out, 0755), 0);
  char p[512];
  snprintf(p, sizeof p, GOLD "%s/model/unet", dcase);
  link_to(p, out, "unet");
  snprintf(p, sizeof p, GOLD "%s/model/scheduler", dcase);
  link_to(p, out, "scheduler");
  link_to(GOLD "vae-decode/model/vae", out, "vae");
  link_to(CLIP_TINY, out, "text_encoder");
  link_to(SD15_CFG "/tokenizer", out, "tokenizer");
  link_to(SD15_CFG "/model_index.json", out, "model_index.json");
}

static float *gold_f32(const char *path, const char *name, int64_t *numel) {
  nq_err_t err = {0};
  nq_st_file_t *f;
  cr_assert_eq(nq_st_open(path, &f, &err), 0, "%s", err.msg);
  const nq_st_tensor_t *t = nq_st_find(f, name);
  cr_assert(t, "%s: no %s", path, name);
  int64_t n = nq_st_numel(t);
  float *o = malloc(sizeof(float) * (size_t)n);
  cr_assert_eq(nq_dtype_to_f32(t->dtype, t->data, o, (size_t)n), 0);
  nq_st_close(f);
  if (numel) *numel = n;
  return o;
}

static json_t *case_json(const char *dcase) {
  char p[512];
  snprintf(p, sizeof p, GOLD "%s/case.json", dcase);
  json_t *j = json_load_file(p, 0, NULL);
  cr_assert(j, "%s", p);
  return j;
}

static void check_close(const float *got, const float *want, int64_t n, double tol_rel, double tol_abs,
                        const char *what) {
  double num = 0, den = 0, mx = 0;
  for (int64_t i = 0; i < n; i++) {
    double d = (double)got[i] - want[i];
    num += d * d, den += (double)want[i] * want[i];
    if (fabs(d) > mx || isnan(d)) mx = isnan(d) ? INFINITY : fabs(d);
  }
  double rel = sqrt(num) / fmax(sqrt(den), 1e-30);
  fprintf(stderr, "%s: rel_l2 %.3e max_abs %.3e\n", what, rel, mx);
  cr_assert_leq(rel, tol_rel, "%s: rel_l2 %g > %g", what, rel, tol_rel);
  cr_assert_leq(mx, tol_abs, "%s: max_abs %g > %g", what, mx, tol_abs);
}

/* Expected RGB8 of a float image [3,H,W] in [-1,1] (pm1) or [0,1]: diffusers' mapping. */
static uint8_t *expect_rgb(const float *img, int64_t H, int64_t W, bool pm1) {
  uint8_t *o = malloc((size_t)(H * W * 3));
  for (int c = 0; c < 3; c++)
    for (int64_t i = 0; i < H * W; i++) {
      double v = img[c * H * W + i];
      if (pm1) v = v / 2 + 0.5;
      v = v < 0 ? 0 : v > 1 ? 1 : v;
      o[i * 3 + c] = (uint8_t)nearbyint(v * 255);
    }
  return o;
}

static int max_px_diff(const uint8_t *a, const uint8_t *b, size_t n) {
  int m = 0;
  for (size_t i = 0; i < n; i++) {
    int d = abs((int)a[i] - (int)b[i]);
    if (d > m) m = d;
  }
  return m;
}

static nq_sd_t *open_pipe(const char *dir, bool taesd) {
  nq_sd_opts_t o;
  nq_sd_opts_init(&o);
  if (taesd) o.taesd = TAESD;
  nq_sd_t *sd = NULL;
  nq_err_t err = {0};
  cr_assert_eq(nq_sd_open(dir, &o, &sd, &err), 0, "%s", err.msg);
  return sd;
}

/* ---- golden numerics through the pipeline ---- */

/* The pipeline's denoise loop (prompt_embeds + negative_embeds + given noise) equals the golden final latents. */
static void golden_denoise(const char *dcase, const char *kind) {
  tmp_init();
  char dir[512];
  make_pipe("pipe", dcase, dir, sizeof dir);
  nq_sd_t *sd = open_pipe(dir, false);
  json_t *c = case_json(dcase), *params = json_object_get(c, "params"), *tol = json_object_get(c, "tolerance");
  char p[512];
  snprintf(p, sizeof p, GOLD "%s/inputs.safetensors", dcase);
  int64_t nl, ne;
  float *lat = gold_f32(p, "latents", &nl), *pos = gold_f32(p, "prompt_embeds", &ne),
        *neg = gold_f32(p, "negative_prompt_embeds", NULL);
  /* the golden latents are the loop's input (already times init_noise_sigma); the pipeline multiplies by it */
  double sigma = json_number_value(json_object_get(params, "init_noise_sigma"));
  for (int64_t i = 0; i < nl; i++) lat[i] = (float)(lat[i] / sigma);
  nq_sd_request_t r;
  nq_sd_request_init(&r);
  r.prompt_embeds = pos, r.negative_embeds = neg, r.embeds_tokens = 77, r.embeds_dim = (int)(ne / 77);
  r.latents = lat;
  r.steps = (int)json_integer_value(json_object_get(params, "steps"));
  r.guidance_scale = (float)json_number_value(json_object_get(params, "guidance_scale"));
  r.scheduler = kind;
  r.height = r.width = 16 * 8;
  nq_sd_result_t res;
  nq_err_t err = {0};
  cr_assert_eq(nq_sd_generate(sd, &r, &res, &err), 0, "%s", err.msg);
  cr_assert_eq(res.n_evals, (int)json_integer_value(json_object_get(params, "unet_evals")));
  snprintf(p, sizeof p, GOLD "%s/expected.safetensors", dcase);
  int64_t nw;
  float *want = gold_f32(p, "latents", &nw);
  cr_assert_eq(nw, nl);
  check_close(res.latents, want, nw, json_number_value(json_object_get(tol, "rel_l2")),
              json_number_value(json_object_get(tol, "max_abs")), dcase);
  cr_assert_eq(res.width, 128);
  cr_assert_eq(res.height, 128);
  nq_sd_result_deinit(&res);
  free(lat), free(pos), free(neg), free(want);
  json_decref(c);
  nq_sd_free(sd);
  tmp_fini();
}

Test(sd_pipeline, golden_denoise_ddim) { golden_denoise("denoise-ddim", "ddim"); }
Test(sd_pipeline, golden_denoise_euler) { golden_denoise("denoise-euler", "euler"); }
Test(sd_pipeline, golden_denoise_pndm_default_scheduler) { golden_denoise("denoise-pndm", NULL); }

/* VAE decode through the pipeline (latents / scaling_factor, then diffusers' uint8 mapping) vs the golden sample. */
Test(sd_pipeline, golden_vae_and_taesd_decode_rgb) {
  tmp_init();
  char dir[512];
  make_pipe("pipe", "denoise-ddim", dir, sizeof dir);
  nq_sd_t *sd = open_pipe(dir, true);
  nq_sd_info_t info;
  nq_sd_get_info(sd, &info);
  cr_assert_float_eq(info.scaling_factor, 0.18215f, 1e-7);
  int64_t nz, ns;
  float *z = gold_f32(GOLD "vae-decode/inputs.safetensors", "z", &nz);
  float *sample = gold_f32(GOLD "vae-decode/expected.safetensors", "sample", &ns);
  for (int64_t i = 0; i < nz; i++) z[i] *= info.scaling_factor;
  uint8_t *rgb = NULL;
  nq_err_t err = {0};
  cr_assert_eq(nq_sd_decode_latents(sd, z, 8, 8, false, &rgb, &err), 0, "%s", err.msg);
  uint8_t *want = expect_rgb(sample, 64, 64, true);
  int d = max_px_diff(rgb, want, 64 * 64 * 3);
  cr_assert_leq(d, 1, "VAE rgb differs by %d levels", d);
  free(rgb), free(want), free(z), free(sample);
  /* TAESD (the preview decoder) */
  z = gold_f32(GOLD "taesd-decode/inputs.safetensors", "latents", &nz);
  float *img = gold_f32(GOLD "taesd-decode/expected.safetensors", "image", &ns);
  cr_assert_eq(nq_sd_decode_latents(sd, z, 8, 8, true, &rgb, &err), 0, "%s", err.msg);
  want = expect_rgb(img, 64, 64, false);
  d = max_px_diff(rgb, want, 64 * 64 * 3);
  cr_assert_leq(d, 1, "TAESD rgb differs by %d levels", d);
  free(rgb), free(want), free(z), free(img);
  nq_sd_free(sd);
  tmp_fini();
}

/* ---- pipeline properties ---- */

typedef struct {
  int calls, previews, last_step, n_steps;
  int cancel_at;
  int pw, ph;
  uint8_t *first_preview;
} prog_t;

static int on_progress(void *ud, const nq_sd_progress_t *p) {
  prog_t *s = ud;
  s->calls++;
  cr_assert_eq(p->step, s->last_step + 1, "steps in order");
  s->last_step = p->step, s->n_steps = p->n_steps;
  if (p->preview) {
    s->previews++;
    s->pw = p->preview_w, s->ph = p->preview_h;
    if (!s->first_preview) {
      s->first_preview = malloc((size_t)p->preview_w * p->preview_h * 3);
      memcpy(s->first_preview, p->preview, (size_t)p->preview_w * p->preview_h * 3);
    }
  }
  return s->cancel_at && p->step == s->cancel_at;
}

Test(sd_pipeline, text_path_determinism_embeds_equivalence_previews_png) {
  tmp_init();
  char dir[512];
  make_pipe("pipe", "denoise-ddim", dir, sizeof dir);
  nq_sd_t *sd = open_pipe(dir, true);
  nq_sd_info_t info;
  nq_sd_get_info(sd, &info);
  cr_assert_eq(info.pad_id, 49407, "SD-1.5 pads with the end token");
  cr_assert_eq(info.cross_attention_dim, 32);
  cr_assert(info.has_text_encoder && info.has_taesd);
  cr_assert_str_eq(info.scheduler, "ddim"); /* the golden case re-saved SD-1.5's config as DDIMScheduler */
  const char *prompt = "a photo of an astronaut riding a horse on mars";
  nq_sd_request_t r;
  nq_sd_request_init(&r);
  r.prompt = prompt, r.seed = 42, r.steps = 5, r.height = 64, r.width = 96, r.scheduler = "ddim";
  prog_t pg = {0};
  r.progress = on_progress, r.progress_ud = &pg, r.preview_every = 2;
  nq_sd_result_t a, b, c, e;
  nq_err_t err = {0};
  cr_assert_eq(nq_sd_generate(sd, &r, &a, &err), 0, "%s", err.msg);
  cr_assert_eq(a.width, 96);
  cr_assert_eq(a.height, 64);
  cr_assert_eq(pg.calls, 5);
  cr_assert_eq(pg.n_steps, 5);
  cr_assert_eq(pg.previews, 2, "previews at steps 2 and 4 (not on the last)");
  cr_assert_eq(pg.pw, 96);
  cr_assert_eq(pg.ph, 64);
  /* same seed: identical; another seed: different */
  r.progress = NULL;
  cr_assert_eq(nq_sd_generate(sd, &r, &b, &err), 0, "%s", err.msg);
  cr_assert_eq(memcmp(a.rgb, b.rgb, 96 * 64 * 3), 0, "same seed, same image");
  cr_assert_eq(memcmp(a.latents, b.latents, sizeof(float) * 4 * 8 * 12), 0);
  r.seed = 43;
  cr_assert_eq(nq_sd_generate(sd, &r, &c, &err), 0, "%s", err.msg);
  cr_assert_gt(max_px_diff(a.rgb, c.rgb, 96 * 64 * 3), 10, "another seed, another image");
  /* the prompt_embeds path (NExT-GPT's) fed CLIP(prompt) gives the text path's image; uncond is CLIP("") */
  float *emb = malloc(sizeof(float) * 77 * 32);
  cr_assert_eq(nq_sd_encode_text(sd, &prompt, 1, emb, &err), 0, "%s", err.msg);
  nq_sd_request_t re = r;
  re.prompt = NULL, re.seed = 42;
  re.prompt_embeds = emb, re.embeds_tokens = 77, re.embeds_dim = 32;
  cr_assert_eq(nq_sd_generate(sd, &re, &e, &err), 0, "%s", err.msg);
  double dl = 0;
  for (int i = 0; i < 4 * 8 * 12; i++) dl = fmax(dl, fabs(e.latents[i] - a.latents[i]));
  fprintf(stderr, "embeds vs text path: latents max diff %.3g, rgb max diff %d\n", dl,
          max_px_diff(e.rgb, a.rgb, 96 * 64 * 3));
  cr_assert_leq(dl, 1e-4);
  cr_assert_leq(max_px_diff(e.rgb, a.rgb, 96 * 64 * 3), 1);
  /* the first preview is the TAESD decode of the latents after 2 of 5 DDIM steps: a run of the same request
   * canceled at step 2 stops there (NQ_ECANCELED) and its preview is the same image */
  prog_t pc = {.cancel_at = 2};
  r.seed = 42, r.progress = on_progress, r.progress_ud = &pc;
  nq_sd_result_t x;
  cr_assert_eq(nq_sd_generate(sd, &r, &x, &err), NQ_ECANCELED);
  cr_assert_null(x.rgb);
  cr_assert_eq(pc.previews, 1);
  cr_assert_eq(memcmp(pc.first_preview, pg.first_preview, 96 * 64 * 3), 0);
  /* PNG: encodes and decodes back (libpng) to the same pixels and size */
  void *png = NULL;
  size_t len = 0;
  cr_assert_eq(nq_media_png_encode(a.rgb, a.width, a.height, &png, &len, &err), 0, "%s", err.msg);
  cr_assert_eq(nq_media_image_sniff(png, len), NQ_MEDIA_IMG_PNG);
  nq_media_image_t img;
  cr_assert_eq(nq_media_image_decode(png, len, "image.png", &img, &err), 0, "%s", err.msg);
  cr_assert_eq(img.w, 96);
  cr_assert_eq(img.h, 64);
  cr_assert_eq(memcmp(img.rgb, a.rgb, 96 * 64 * 3), 0);
  nq_media_image_deinit(&img);
  free(png);
  free(pg.first_preview), free(pc.first_preview), free(emb);
  nq_sd_result_deinit(&a), nq_sd_result_deinit(&b), nq_sd_result_deinit(&c), nq_sd_result_deinit(&e);
  nq_sd_free(sd);
  tmp_fini();
}

Test(sd_pipeline, bad_requests_fail_naming_the_field) {
  tmp_init();
  char dir[512];
  make_pipe("pipe", "denoise-ddim", dir, sizeof dir);
  nq_sd_t *sd = open_pipe(dir, false);
  nq_sd_request_t r;
  nq_sd_result_t res;
  nq_err_t err = {0};
  nq_sd_request_init(&r);
  r.prompt = "x", r.steps = 0, r.height = r.width = 64;
  cr_assert_eq(nq_sd_generate(sd, &r, &res, &err), NQ_EINVAL);
  cr_assert(strstr(err.msg, "steps") && (err.flags & NQ_ERR_FATAL), "%s", err.msg);
  r.steps = 2, r.height = 40;
  cr_assert_eq(nq_sd_generate(sd, &r, &res, &err), NQ_EINVAL);
  cr_assert(strstr(err.msg, "height"), "%s", err.msg);
  float emb[77 * 16] = {0};
  r.height = 64, r.prompt = NULL, r.prompt_embeds = emb, r.embeds_tokens = 77, r.embeds_dim = 16;
  cr_assert_eq(nq_sd_generate(sd, &r, &res, &err), NQ_ESHAPE);
  cr_assert(strstr(err.msg, "prompt_embeds"), "%s", err.msg);
  r.prompt_embeds = NULL, r.prompt = "x", r.scheduler = "heun";
  cr_assert_eq(nq_sd_generate(sd, &r, &res, &err), NQ_EINVAL);
  cr_assert(strstr(err.msg, "heun"), "%s", err.msg);
  cr_assert_null(res.rgb);
  nq_sd_free(sd);
  /* no TAESD: a preview request still runs, without previews; decode_latents(taesd) is refused */
  nq_sd_t *s2 = open_pipe(dir, false);
  uint8_t *rgb = NULL;
  float z[4 * 8 * 8] = {0};
  cr_assert_eq(nq_sd_decode_latents(s2, z, 8, 8, true, &rgb, &err), NQ_EUNSUPPORTED);
  nq_sd_free(s2);
  tmp_fini();
}

/* ---- LDM single file ---- */

/* Every name of the SD-1.5 VAE listings maps to a diffusers name and back; a zero-filled diffusers file built from
 * the listing (channels / 16) loads with nq_vae_open: the map covers exactly what the loader needs. */
Test(sd_pipeline, vae_ldm_name_map_covers_the_sd15_listing) {
  tmp_init();
  const char *lists[2] = {NQ_SHARED_DIR "/models/listings/sd15_vae_encoder_ldm.txt",
                          NQ_SHARED_DIR "/models/listings/sd15_vae_decoder_ldm.txt"};
  nq_st_writer_t *w = nq_st_writer_new();
  nq_err_t err = {0};
  int n = 0;
  char seen[300][128];
  for (int li = 0; li < 2; li++) {
    FILE *f = fopen(lists[li], "r");
    cr_assert(f, "%s", lists[li]);
    char line[512];
    while (fgets(line, sizeof line, f)) {
      if (line[0] == '#' || line[0] == '\n') continue;
      char name[256], shp[256];
      cr_assert_eq(sscanf(line, "%255s %255[^\n]", name, shp), 2, "%s", line);
      bool dup = false;
      for (int k = 0; k < n; k++) dup |= !strcmp(seen[k], name);
      if (dup) continue; /* quant_conv is in both listings */
      cr_assert_lt(n, 300);
      snprintf(seen[n++], sizeof seen[0], "%s", name);
      char dn[256], back[256];
      cr_assert_eq(nq_vae_ldm_to_diffusers(name, 4, dn, sizeof dn), 0, "no diffusers name for %s", name);
      cr_assert_eq(nq_vae_ldm_name(dn, 4, back, sizeof back), 0, "%s", dn);
      cr_assert_str_eq(back, name);
      int64_t shape[4];
      int nd = 0;
      for (char *s = shp; *s && nd < 4; s++)
        if (*s >= '0' && *s <= '9') {
          long v = strtol(s, &s, 10);
          shape[nd++] = v >= 128 ? v / 16 : v;
          s--;
        }
      int64_t numel = 1;
      for (int d = 0; d < nd; d++) numel *= shape[d];
      float *zeros = calloc((size_t)numel, sizeof(float));
      cr_assert_eq(nq_st_writer_add_f32(w, dn, nd, shape, zeros, &err), 0, "%s", err.msg);
      free(zeros);
    }
    fclose(f);
  }
  cr_assert_eq(n, 248, "encoder 106 + decoder 142 tensors, quant convs counted once: %d", n);
  char vdir[512], p[600];
  snprintf(vdir, sizeof vdir, "%s/vae", g_tmp);
  cr_assert_eq(mkdir(vdir, 0755), 0);
  snprintf(p, sizeof p, "%s/diffusion_pytorch_model.safetensors", vdir);
  cr_assert_eq(nq_st_writer_save(w, p, &err), 0, "%s", err.msg);
  nq_st_writer_free(w);
  snprintf(p, sizeof p, "%s/config.json", vdir);
  FILE *cf = fopen(p, "w");
  fputs("{\"_class_name\":\"AutoencoderKL\",\"block_out_channels\":[8,16,32,32],\"in_channels\":3,\"out_channels\":3,"
        "\"latent_channels\":4,\"layers_per_block\":2,\"norm_num_groups\":8,\"scaling_factor\":0.18215,"
        "\"down_block_types\":[\"DownEncoderBlock2D\",\"DownEncoderBlock2D\",\"DownEncoderBlock2D\",\"DownEncoderBlock2D\"],"
        "\"up_block_types\":[\"UpDecoderBlock2D\",\"UpDecoderBlock2D\",\"UpDecoderBlock2D\",\"UpDecoderBlock2D\"]}",
        cf);
  fclose(cf);
  nq_vae_t *v = NULL;
  cr_assert_eq(nq_vae_open(vdir, NQ_DT_F32, NULL, &v, &err), 0, "%s", err.msg);
  cr_assert(nq_vae_has_encoder(v) && nq_vae_has_decoder(v));
  nq_vae_free(v);
  /* names with no counterpart */
  char o[64];
  cr_assert_eq(nq_vae_ldm_to_diffusers("first_stage_model.loss.logvar", 4, o, sizeof o), NQ_ENOENT);
  cr_assert_eq(nq_vae_ldm_to_diffusers("first_stage_model.decoder.up.4.block.0.conv1.weight", 4, o, sizeof o),
               NQ_ENOENT);
  cr_assert_eq(nq_vae_ldm_name("decoder.up_blocks.0.resnets.0.conv1.weight", 4, o, 8), NQ_ELIMIT);
  tmp_fini();
}

/* Copies every tensor of a diffusers file into w under mapped names (map == NULL: prefix only). */
typedef int (*map_fn)(void *ctx, const char *name, char *out, size_t cap);
static void add_mapped(nq_st_writer_t *w, const char *file, map_fn map, void *ctx, const char *prefix) {
  nq_err_t err = {0};
  nq_st_file_t *f;
  cr_assert_eq(nq_st_open(file, &f, &err), 0, "%s", err.msg);
  for (size_t i = 0; i < nq_st_count(f); i++) {
    const nq_st_tensor_t *t = nq_st_get(f, i);
    char name[512];
    if (map) cr_assert_eq(map(ctx, t->name, name, sizeof name), 0, "no LDM name for %s", t->name);
    else snprintf(name, sizeof name, "%s%s", prefix, t->name);
    cr_assert_eq(nq_st_writer_add(w, name, t->dtype, t->ndim, t->shape, t->data, &err), 0, "%s", err.msg);
  }
  nq_st_close(f);
}
static int map_unet(void *ctx, const char *name, char *out, size_t cap) {
  return nq_unet__ldm_name(ctx, name, out, cap);
}
static int map_vae(void *ctx, const char *name, char *out, size_t cap) {
  (void)ctx;
  return nq_vae_ldm_name(name, 4, out, cap);
}

/* A v1-5-pruned-emaonly-style single file made from the tiny components (LDM names through the name maps) loads
 * with the configs of the assembled directory and generates exactly the directory pipeline's image. */
Test(sd_pipeline, ldm_single_file_equals_diffusers_dir) {
  tmp_init();
  char dir[512], file[600];
  make_pipe("pipe", "denoise-ddim", dir, sizeof dir);
  nq_unet__arch_t arch;
  nq_err_t err = {0};
  cr_assert_eq(nq_unet__arch_parse(GOLD "denoise-ddim/model/unet/config.json", 0, &arch, &err), 0, "%s", err.msg);
  nq_st_writer_t *w = nq_st_writer_new();
  add_mapped(w, GOLD "denoise-ddim/model/unet/diffusion_pytorch_model.safetensors", map_unet, &arch, NULL);
  add_mapped(w, GOLD "vae-decode/model/vae/diffusion_pytorch_model.safetensors", map_vae, NULL, NULL);
  add_mapped(w, CLIP_TINY "/model.safetensors", NULL, NULL, "cond_stage_model.transformer.");
  snprintf(file, sizeof file, "%s/tiny-pruned-emaonly.safetensors", g_tmp);
  cr_assert_eq(nq_st_writer_save(w, file, &err), 0, "%s", err.msg);
  nq_st_writer_free(w);

  nq_sd_opts_t o;
  nq_sd_opts_init(&o);
  o.config_dir = dir;
  nq_sd_t *single = NULL, *ref = open_pipe(dir, false);
  cr_assert_eq(nq_sd_open(file, &o, &single, &err), 0, "%s", err.msg);
  nq_sd_request_t r;
  nq_sd_request_init(&r);
  r.prompt = "a red cube on a table", r.seed = 7, r.steps = 3, r.height = r.width = 64;
  nq_sd_result_t a, b;
  cr_assert_eq(nq_sd_generate(ref, &r, &a, &err), 0, "%s", err.msg);
  cr_assert_eq(nq_sd_generate(single, &r, &b, &err), 0, "%s", err.msg);
  cr_assert_eq(memcmp(a.latents, b.latents, sizeof(float) * 4 * 8 * 8), 0);
  cr_assert_eq(memcmp(a.rgb, b.rgb, 64 * 64 * 3), 0);
  nq_sd_result_deinit(&a), nq_sd_result_deinit(&b);
  nq_sd_free(single), nq_sd_free(ref);
  /* no tmp dirs left behind by the LDM VAE conversion is not checked here (TMPDIR is shared) */
  tmp_fini();
}

/* ---- worker stages through `nextq run` ---- */

/* The nextq binary: $NQ_BIN (make test sets it), else build/nextq from the repo root; NULL when not built. */
static const char *nextq_bin(void) {
  const char *b = getenv("NQ_BIN");
  if (b && access(b, X_OK) == 0) return b;
  return access("build/nextq", X_OK) == 0 ? "build/nextq" : NULL;
}

static void write_text(const char *path, const char *s) {
  FILE *f = fopen(path, "w");
  cr_assert(f, "%s", path);
  fputs(s, f);
  fclose(f);
}

/* Number of outputs listed in a job's _manifest.jsonl (and its task count). */
static int manifest_outputs(const char *job_dir, int *tasks) {
  char p[600];
  snprintf(p, sizeof p, "%s/_manifest.jsonl", job_dir);
  FILE *f = fopen(p, "r");
  cr_assert(f, "%s", p);
  char line[1 << 16];
  int n = 0;
  *tasks = 0;
  while (fgets(line, sizeof line, f)) {
    json_t *j = json_loads(line, 0, NULL);
    cr_assert(j, "%s: %s", p, line);
    cr_assert_str_eq(json_string_value(json_object_get(j, "status")), "ok", "%s", line);
    n += (int)json_array_size(json_object_get(j, "outputs"));
    (*tasks)++;
    json_decref(j);
  }
  fclose(f);
  return n;
}

#define GOLDEN_CAPTION "a photo of an astronaut riding a horse on mars"

/* precompute-embeddings over a 40-caption cc3m.json with the tiny CLIP: 40 float16 [77, 32] files named
 * <image_name>.npy, the golden caption's equal to the golden CLIP output (to float16 precision); a second run skips
 * every sample (no outputs, files untouched). */
Test(sd_pipeline, precompute_embeddings_nextq_run_40_then_resume, .timeout = 240) {
  const char *bin = nextq_bin();
  if (!bin) cr_skip_test("build/nextq not built (make build/nextq)");
  tmp_init();
  char p[600], json[1 << 14];
  size_t o = (size_t)snprintf(json, sizeof json, "[");
  for (int i = 0; i < 40; i++)
    o += (size_t)snprintf(json + o, sizeof json - o, "%s{\"caption\": \"%s%s\", \"id\": \"%09d\", \"image_name\": \"%09d.jpg\"}",
                          i ? ",\n" : "", i ? "a small dog running on the beach number " : GOLDEN_CAPTION,
                          i ? (const char[]){(char)('a' + i % 26), 0} : "", 1000 + i, 1000 + i);
  snprintf(json + o, sizeof json - o, "]\n");
  snprintf(p, sizeof p, "%s/cc3m.json", g_tmp);
  write_text(p, json);
  char yaml[2048];
  snprintf(yaml, sizeof yaml,
           "job: cc3m-embed\nid: cc3m-embed\nstage: precompute-embeddings\n"
           "dataset: {format: nextgpt-json, path: %s/cc3m.json}\noutput: %s/out\nbatch_size: 40\n"
           "params: {model: %s, tokenizer: %s/tokenizer, modality: image}\n",
           g_tmp, g_tmp, CLIP_TINY, SD15_CFG);
  snprintf(p, sizeof p, "%s/job.yaml", g_tmp);
  write_text(p, yaml);
  char cmd[1400];
  snprintf(cmd, sizeof cmd, "NQ_LOG_LEVEL=warn %s run %s/job.yaml --workers 1 --quiet > /dev/null", bin, g_tmp);
  cr_assert_eq(system(cmd), 0, "%s", cmd);
  char job[600];
  snprintf(job, sizeof job, "%s/out/cc3m-embed", g_tmp);
  int tasks = 0;
  cr_assert_eq(manifest_outputs(job, &tasks), 40);
  cr_assert_eq(tasks, 1);
  struct stat st0[40];
  for (int i = 0; i < 40; i++) {
    snprintf(p, sizeof p, "%s/%09d.jpg.npy", job, 1000 + i);
    cr_assert_eq(stat(p, &st0[i]), 0, "missing %s", p);
    void *buf;
    size_t len;
    nq_err_t err = {0};
    cr_assert_eq(nq_media_read_file(p, &buf, &len, &err), 0, "%s", err.msg);
    nq_npy_view_t v;
    cr_assert_eq(nq_npy_parse(buf, len, p, &v, &err), 0, "%s", err.msg);
    cr_assert(v.dtype == NQ_DT_F16 && v.ndim == 2 && v.shape[0] == 77 && v.shape[1] == 32, "%s", p);
    if (i == 0) {
      float got[77 * 32];
      uint16_t h[77 * 32];
      memcpy(h, v.data, sizeof h);
      for (int k = 0; k < 77 * 32; k++) got[k] = nq_f16_to_f32(h[k]);
      int64_t n;
      float *want = gold_f32(NQ_SHARED_DIR "/golden/text/clip-text-tiny/expected.safetensors", "last_hidden_state", &n);
      cr_assert_eq(n, 77 * 32);
      check_close(got, want, n, 1e-3, 4e-3, "precomputed golden caption (float16)");
      free(want);
    }
    free(buf);
  }
  /* resume: everything exists with the right shape -> nothing written */
  sleep(1);
  cr_assert_eq(system(cmd), 0, "%s", cmd);
  cr_assert_eq(manifest_outputs(job, &tasks), 0, "the second run wrote outputs");
  for (int i = 0; i < 40; i++) {
    struct stat s1;
    snprintf(p, sizeof p, "%s/%09d.jpg.npy", job, 1000 + i);
    cr_assert_eq(stat(p, &s1), 0);
    cr_assert_eq(s1.st_mtim.tv_sec, st0[i].st_mtim.tv_sec, "%s rewritten", p);
    cr_assert_eq(s1.st_mtim.tv_nsec, st0[i].st_mtim.tv_nsec, "%s rewritten", p);
  }
  /* a wrong-shaped file is redone */
  snprintf(p, sizeof p, "%s/%09d.jpg.npy", job, 1005);
  float junk[4] = {0};
  nq_err_t err = {0};
  cr_assert_eq(nq_npy_save(p, NQ_DT_F32, junk, 1, NQ_SHAPE(4), &err), 0, "%s", err.msg);
  cr_assert_eq(system(cmd), 0, "%s", cmd);
  cr_assert_eq(manifest_outputs(job, &tasks), 1);
  tmp_fini();
}

/* generate-image over a JSONL of prompts: one image.png per task (64x64, decodable), TAESD previews. */
Test(sd_pipeline, generate_image_nextq_run_jsonl, .timeout = 240) {
  const char *bin = nextq_bin();
  if (!bin) cr_skip_test("build/nextq not built (make build/nextq)");
  tmp_init();
  char dir[512], p[600];
  make_pipe("pipe", "denoise-ddim", dir, sizeof dir);
  snprintf(p, sizeof p, "%s/prompts.jsonl", g_tmp);
  write_text(p, "{\"id\": \"p0\", \"prompt\": \"a red cube\"}\n{\"id\": \"p1\", \"prompt\": \"a blue sphere\", \"seed\": 5}\n"
                "{\"id\": \"p2\", \"text\": \"" GOLDEN_CAPTION "\"}\n");
  char yaml[2048];
  snprintf(yaml, sizeof yaml,
           "job: t2i\nid: t2i\nstage: generate-image\ndataset: {format: jsonl, path: %s/prompts.jsonl}\n"
           "output: %s/out\nbatch_size: 1\n"
           "params: {model: %s, taesd: %s, steps: 3, height: 64, width: 64, seed: 1, preview_every: 1}\n",
           g_tmp, g_tmp, dir, TAESD);
  snprintf(p, sizeof p, "%s/job.yaml", g_tmp);
  write_text(p, yaml);
  char cmd[1400];
  snprintf(cmd, sizeof cmd, "NQ_LOG_LEVEL=warn %s run %s/job.yaml --workers 1 --quiet > /dev/null", bin, g_tmp);
  cr_assert_eq(system(cmd), 0, "%s", cmd);
  char job[600];
  snprintf(job, sizeof job, "%s/out/t2i", g_tmp);
  int tasks = 0;
  cr_assert_eq(manifest_outputs(job, &tasks), 3 * 3, "image.png + preview_1.png + preview_2.png per task");
  cr_assert_eq(tasks, 3);
  uint8_t *first = NULL;
  for (int i = 0; i < 3; i++) {
    snprintf(p, sizeof p, "%s/%06d/image.png", job, i);
    nq_media_image_t img;
    nq_err_t err = {0};
    cr_assert_eq(nq_media_image_load(p, &img, &err), 0, "%s", err.msg);
    cr_assert(img.w == 64 && img.h == 64);
    if (!first) first = img.rgb, img.rgb = NULL;
    else cr_assert_neq(memcmp(first, img.rgb, 64 * 64 * 3), 0, "different prompts, different images");
    nq_media_image_deinit(&img);
    snprintf(p, sizeof p, "%s/%06d/preview_1.png", job, i);
    cr_assert_eq(access(p, R_OK), 0, "%s", p);
  }
  free(first);
  tmp_fini();
}

/* ---- generate-image stage directly: the NExT-GPT hand-off forms ---- */

#include "queue/envelope.h"
#include "store/store.h"
#include "worker/worker.h"

typedef struct {
  nq_envelope_t env;
  nq_task_ctx_t t;
  json_t *in, *params;
} task_t;

static void task_make(task_t *k, nq_store_t *st, const char *id, json_t *in /* stolen */, json_t *params /* stolen */) {
  nq_err_t err = {0};
  char out[600];
  snprintf(out, sizeof out, "file://%s/out/%s/", g_tmp, id);
  json_t *next = json_array();
  k->in = in, k->params = params;
  cr_assert_eq(nq_envelope_make(&k->env, "job", id, "generate-image", "cpu", 3, in, params, out, next, NULL, &err), 0,
               "%s", err.msg);
  json_decref(next);
  k->t = (nq_task_ctx_t){.env = &k->env, .store = st, .outputs = json_array(), .result = json_object()};
}
static void task_free(task_t *k) {
  nq_envelope_deinit(&k->env);
  json_decref(k->t.outputs), json_decref(k->t.result), json_decref(k->in), json_decref(k->params);
}
static void task_image(const task_t *k, const uint8_t *want) {
  cr_assert_eq(k->t.rc, 0, "%s: %s", k->env.task, k->t.err.msg);
  char p[600];
  snprintf(p, sizeof p, "%s/out/%s/image.png", g_tmp, k->env.task);
  nq_media_image_t img;
  nq_err_t err = {0};
  cr_assert_eq(nq_media_image_load(p, &img, &err), 0, "%s", err.msg);
  cr_assert(img.w == 64 && img.h == 64);
  int d = max_px_diff(img.rgb, want, 64 * 64 * 3);
  cr_assert_leq(d, 1, "%s: differs from the reference by %d levels", k->env.task, d);
  nq_media_image_deinit(&img);
  json_t *m = json_object_get(k->t.result, "metrics");
  cr_assert_eq(json_integer_value(json_object_get(m, "n_evals")), 2);
  cr_assert_eq(json_array_size(json_object_get(m, "progress")), 2);
}

Test(sd_pipeline, generate_image_stage_nextgpt_handoff_and_embeds_uri, .timeout = 240) {
  tmp_init();
  char dir[512], p[600], uri[700], uri16[700];
  make_pipe("pipe", "denoise-ddim", dir, sizeof dir);
  nq_sd_t *sd = open_pipe(dir, false);
  nq_err_t err = {0};
  const char *prompt = "a red cube on a table";
  float emb[77 * 32];
  cr_assert_eq(nq_sd_encode_text(sd, &prompt, 1, emb, &err), 0, "%s", err.msg);
  /* the llm stage's hand-off file: float32 [77, 768] in the real model, [77, 32] here */
  snprintf(p, sizeof p, "%s/llm/image_cond.npy", g_tmp);
  snprintf(uri, sizeof uri, "file://%s", p);
  snprintf(p, sizeof p, "%s/llm", g_tmp);
  cr_assert_eq(mkdir(p, 0755), 0);
  cr_assert_eq(nq_npy_save(uri + 7, NQ_DT_F32, emb, 2, NQ_SHAPE(77, 32), &err), 0, "%s", err.msg);
  /* a precomputed float16 caption embedding, [1, 77, D] */
  uint16_t h[77 * 32];
  float emb16[77 * 32];
  for (int i = 0; i < 77 * 32; i++) h[i] = nq_f32_to_f16(emb[i]), emb16[i] = nq_f16_to_f32(h[i]);
  snprintf(uri16, sizeof uri16, "file://%s/x.jpg.npy", g_tmp);
  cr_assert_eq(nq_npy_save(uri16 + 7, NQ_DT_F16, h, 3, NQ_SHAPE(1, 77, 32), &err), 0, "%s", err.msg);

  /* references from the pipeline API */
  nq_sd_request_t r;
  nq_sd_request_init(&r);
  r.prompt = prompt, r.seed = 3, r.steps = 2, r.height = r.width = 64;
  nq_sd_result_t ref, ref16;
  cr_assert_eq(nq_sd_generate(sd, &r, &ref, &err), 0, "%s", err.msg);
  r.prompt = NULL, r.prompt_embeds = emb16, r.embeds_tokens = 77, r.embeds_dim = 32;
  cr_assert_eq(nq_sd_generate(sd, &r, &ref16, &err), 0, "%s", err.msg);
  nq_sd_free(sd);

  const nq_stage_t *stage = nq_stage_find("generate-image");
  cr_assert(stage);
  json_t *cfg = json_pack("{s:s}", "model", dir);
  void *state = NULL;
  cr_assert_eq(stage->init(&state, cfg, &err), 0, "%s", err.msg);
  nq_store_t *st = NULL;
  nq_store_cfg_t sc = {0};
  cr_assert_eq(nq_store_new(&sc, &st, &err), 0, "%s", err.msg);
#define PARAMS json_pack("{s:i,s:i,s:i,s:i}", "seed", 3, "steps", 2, "height", 64, "width", 64)
  task_t k[6];
  task_make(&k[0], st, "signals",
            json_pack("{s:{s:{s:{s:{s:s,s:s}}}}}", "prev", "llm", "signals", "image", "cond", uri, "caption",
                      "a red cube [IMG0] [IMG1] [IMG2] [IMG3]"),
            PARAMS);
  task_make(&k[1], st, "outputs",
            json_pack("{s:{s:{s:[{s:s},{s:s}]}}}", "prev", "llm", "outputs", "uri", "file:///nonexistent/text.txt",
                      "uri", uri),
            PARAMS);
  task_make(&k[2], st, "embeds16", json_pack("{s:s}", "prompt_embeds", uri16), PARAMS);
  task_make(&k[3], st, "text", json_pack("{s:s,s:s}", "key", "000003", "text", prompt), PARAMS);
  task_make(&k[4], st, "nothing", json_pack("{s:s}", "key", "x"), PARAMS);
  task_make(&k[5], st, "badsteps", json_pack("{s:s}", "prompt", prompt),
            json_pack("{s:i,s:i,s:i}", "steps", 0, "height", 64, "width", 64));
#undef PARAMS
  for (int i = 0; i < 6; i++) stage->run_batch(state, &k[i].t, 1);
  task_image(&k[0], ref.rgb);
  task_image(&k[1], ref.rgb);
  task_image(&k[2], ref16.rgb);
  task_image(&k[3], ref.rgb);
  cr_assert_eq(k[4].t.rc, NQ_EINVAL);
  cr_assert(k[4].t.err.flags & NQ_ERR_FATAL);
  cr_assert(strstr(k[4].t.err.msg, "no prompt"), "%s", k[4].t.err.msg);
  cr_assert_eq(k[5].t.rc, NQ_EINVAL);
  cr_assert(strstr(k[5].t.err.msg, "steps"), "%s", k[5].t.err.msg);
  for (int i = 0; i < 6; i++) task_free(&k[i]);
  stage->fini(state);
  json_decref(cfg);
  nq_store_free(st);
  nq_sd_result_deinit(&ref), nq_sd_result_deinit(&ref16);
  tmp_fini();
}

/* Audio / video generation: SpeechT5HifiGan and the CLAP text encoder against ../shared/golden/audio (transformers in
 * float64), and the generate-audio / generate-video paths end to end on tiny models assembled from golden dirs: the WAV
 * and MP4 they write decode back (libsndfile, libav) to the expected length, rate and frame count. */
#include <criterion/criterion.h>
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "compute/io/safetensors.h"
#include "compute/models/clap_text.h"
#include "compute/models/hifigan.h"
#include "datasets/media.h"

#define AUDIO_GOLDEN NQ_SHARED_DIR "/golden/audio"

static void *read_tensor(const char *path, const char *name, nq_dtype_t want, int ndim_want, int64_t *shape,
                         int64_t *numel) {
  nq_st_file_t *f;
  nq_err_t err = {0};
  cr_assert_eq(nq_st_open(path, &f, &err), 0, "%s", err.msg);
  const nq_st_tensor_t *t = nq_st_find(f, name);
  cr_assert(t && t->dtype == want && t->ndim == ndim_want, "%s: %s", path, name);
  void *d = malloc(t->nbytes);
  memcpy(d, t->data, t->nbytes);
  *numel = nq_st_numel(t);
  for (int i = 0; shape && i < t->ndim; i++) shape[i] = t->shape[i];
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

/* ---- hifigan ---- */

static void hifigan_case(const char *name, int wdtype, double rel, double mabs) {
  char dir[512], p[600];
  snprintf(dir, sizeof dir, AUDIO_GOLDEN "/%s", name);
  nq_hifigan_opts_t o;
  nq_hifigan_opts_init(&o);
  o.wdtype = wdtype;
  nq_hifigan_t *v = NULL;
  nq_err_t err = {0};
  snprintf(p, sizeof p, "%s/model", dir);
  cr_assert_eq(nq_hifigan_load(p, &o, &v, &err), 0, "%s", err.msg);
  int64_t sh[3], n, ns, wsh[2];
  snprintf(p, sizeof p, "%s/inputs.safetensors", dir);
  float *spec = read_tensor(p, "spectrogram", NQ_DT_F32, 3, sh, &n);
  snprintf(p, sizeof p, "%s/expected.safetensors", dir);
  float *exp = read_tensor(p, "waveform", NQ_DT_F32, 2, wsh, &ns);
  nq_tensor_t x, y;
  nq_tensor_init_borrowed(&x, NQ_DT_F32, 3, sh, spec);
  cr_assert_eq(nq_hifigan_out_len(v, sh[1]), wsh[1]);
  cr_assert_eq(nq_hifigan_forward(v, &x, &y, &err), 0, "%s", err.msg);
  cr_assert(y.ndim == 2 && y.ne[0] == wsh[0] && y.ne[1] == wsh[1], "shape [%lld,%lld]", (long long)y.ne[0],
            (long long)y.ne[1]);
  compare(y.data, exp, ns, rel, mabs, name);
  nq_tensor_deinit(&y);
  free(spec), free(exp);
  nq_hifigan_free(v);
}

Test(hifigan, golden_tiny) { hifigan_case("hifigan-tiny", -1, 1e-4, 1e-3); }
Test(hifigan, golden_r54) { hifigan_case("hifigan-tiny-r54", -1, 1e-4, 1e-3); }
Test(hifigan, golden_bf16) {
  hifigan_case("hifigan-tiny", NQ_DT_BF16, 1e-2, 1.0);
  hifigan_case("hifigan-tiny-r54", NQ_DT_BF16, 1e-2, 1.0);
}

Test(hifigan, bad_input) {
  nq_hifigan_t *v = NULL;
  nq_err_t err = {0};
  cr_assert_eq(nq_hifigan_load(AUDIO_GOLDEN "/hifigan-tiny/model", NULL, &v, &err), 0, "%s", err.msg);
  nq_tensor_t x, y;
  cr_assert_eq(nq_tensor_init(&x, NQ_DT_F32, 3, NQ_SHAPE(1, 4, 7), &err), 0);
  cr_assert_eq(nq_hifigan_forward(v, &x, &y, &err), NQ_ESHAPE);
  cr_assert(strstr(err.msg, "spectrogram"), "%s", err.msg);
  nq_tensor_deinit(&x);
  nq_hifigan_free(v);
  cr_assert_lt(nq_hifigan_load("/nonexistent", NULL, &v, &err), 0);
}

/* ---- clap-text ---- */

static void clap_case(const char *name, int wdtype, double rel, double mabs) {
  char dir[512], p[600];
  snprintf(dir, sizeof dir, AUDIO_GOLDEN "/%s", name);
  nq_clap_text_opts_t o;
  nq_clap_text_opts_init(&o);
  o.wdtype = wdtype;
  nq_clap_text_t *m = NULL;
  nq_err_t err = {0};
  snprintf(p, sizeof p, "%s/model", dir);
  cr_assert_eq(nq_clap_text_load(p, &o, &m, &err), 0, "%s", err.msg);
  int64_t sh[2], n, ne, nh, esh[2];
  snprintf(p, sizeof p, "%s/inputs.safetensors", dir);
  int64_t *ids = read_tensor(p, "input_ids", NQ_DT_I64, 2, sh, &n);
  int64_t *mask = read_tensor(p, "attention_mask", NQ_DT_I64, 2, NULL, &n);
  snprintf(p, sizeof p, "%s/expected.safetensors", dir);
  float *ee = read_tensor(p, "text_embeds", NQ_DT_F32, 2, esh, &ne);
  float *eh = read_tensor(p, "last_hidden_state", NQ_DT_F32, 3, NULL, &nh);
  cr_assert_eq(esh[1], nq_clap_text_config(m)->projection_dim);
  float *te = malloc(sizeof(float) * ne), *lh = malloc(sizeof(float) * nh);
  cr_assert_eq(nq_clap_text_forward(m, ids, mask, sh[0], sh[1], te, lh, &err), 0, "%s", err.msg);
  char what[128];
  snprintf(what, sizeof what, "%s text_embeds", name);
  compare(te, ee, ne, rel, mabs, what);
  snprintf(what, sizeof what, "%s last_hidden_state", name);
  compare(lh, eh, nh, rel, mabs, what);
  free(ids), free(mask), free(ee), free(eh), free(te), free(lh);
  nq_clap_text_free(m);
}

Test(clap_text, golden_tiny) { clap_case("clap-text-tiny", -1, 2e-5, 2e-4); }
Test(clap_text, golden_512) { clap_case("clap-text-tiny-512", -1, 2e-5, 2e-4); }
Test(clap_text, golden_bf16) {
  clap_case("clap-text-tiny", NQ_DT_BF16, 1e-2, 1.0);
  clap_case("clap-text-tiny-512", NQ_DT_BF16, 1e-2, 1.0);
}

Test(clap_text, bad_ids) {
  nq_clap_text_t *m = NULL;
  nq_err_t err = {0};
  cr_assert_eq(nq_clap_text_load(AUDIO_GOLDEN "/clap-text-tiny/model", NULL, &m, &err), 0, "%s", err.msg);
  int64_t ids[4] = {0, 5, 99999, 2};
  float te[16];
  cr_assert_eq(nq_clap_text_forward(m, ids, NULL, 1, 4, te, NULL, &err), NQ_EINVAL);
  cr_assert(strstr(err.msg, "[0,2]"), "%s", err.msg);
  cr_assert_eq(nq_clap_text_forward(m, ids, NULL, 1, 600, te, NULL, &err), NQ_ESHAPE);
  nq_clap_text_free(m);
}

/* ---- media writers ---- */

Test(media_write, wav_roundtrip) {
  int64_t n = 16000 + 7;
  float *x = malloc(sizeof(float) * n);
  for (int64_t i = 0; i < n; i++) x[i] = 0.5f * sinf((float)i * 0.05f);
  x[3] = 1.7f; /* clipped, not wrapped */
  for (int f = 0; f < 2; f++) {
    void *buf;
    size_t len;
    nq_err_t err = {0};
    cr_assert_eq(nq_media_wav_encode(x, n, 1, 16000, f ? NQ_MEDIA_WAV_FLOAT : NQ_MEDIA_WAV_PCM16, &buf, &len, &err), 0,
                 "%s", err.msg);
    nq_media_audio_t a;
    cr_assert_eq(nq_media_audio_decode(buf, len, "t.wav", &a, &err), 0, "%s", err.msg);
    cr_assert_eq(a.rate, 16000);
    cr_assert_eq(a.channels, 1);
    cr_assert_eq(a.frames, n);
    double tol = f ? 0 : 1.0 / 32767 + 1e-6;
    for (int64_t i = 0; i < n; i++)
      if (i != 3) cr_assert_leq(fabs(a.data[i] - x[i]), tol, "sample %lld: %g vs %g", (long long)i, a.data[i], x[i]);
    cr_assert_gt(a.data[3], 0.99f);
    nq_media_audio_deinit(&a);
    free(buf);
  }
  free(x);
}

static void video_roundtrip(nq_media_video_fmt_t fmt, int F, int W, int H) {
  uint8_t *rgb = malloc((size_t)F * W * H * 3);
  for (int f = 0; f < F; f++)
    for (int i = 0; i < W * H; i++) {
      uint8_t *p = rgb + ((size_t)f * W * H + i) * 3;
      p[0] = (uint8_t)(i % W * 255 / W), p[1] = (uint8_t)(f * 255 / F), p[2] = (uint8_t)(i / W * 255 / H);
    }
  void *buf;
  size_t len;
  const char *codec = NULL;
  nq_err_t err = {0};
  cr_assert_eq(nq_media_video_encode(rgb, F, W, H, 8, fmt, &buf, &len, &codec, &err), 0, "%s", err.msg);
  fprintf(stderr, "video: %s %zu bytes\n", codec, len);
  nq_media_video_info_t info;
  cr_assert_eq(nq_media_video_probe(buf, len, "t", &info, &err), 0, "%s", err.msg);
  cr_assert_eq(info.w, W);
  cr_assert_eq(info.h, H);
  cr_assert_eq(info.n_frames, F);
  if (fmt == NQ_MEDIA_VIDEO_MP4) cr_assert_eq(info.fps, 8.0);
  int64_t idx[1] = {F - 1};
  nq_media_image_t im;
  cr_assert_eq(nq_media_video_decode_frames(buf, len, "t", idx, 1, &im, NULL, &err), 0, "%s", err.msg);
  double se = 0;
  const uint8_t *last = rgb + (size_t)(F - 1) * W * H * 3;
  for (int i = 0; i < W * H * 3; i++) se += (double)(im.rgb[i] - last[i]) * (im.rgb[i] - last[i]);
  double rmse = sqrt(se / (W * H * 3));
  fprintf(stderr, "video: last frame rmse %.2f\n", rmse);
  cr_assert_lt(rmse, fmt == NQ_MEDIA_VIDEO_MP4 ? 8.0 : 40.0);
  nq_media_image_deinit(&im);
  free(buf), free(rgb);
}

Test(media_write, mp4_roundtrip) { video_roundtrip(NQ_MEDIA_VIDEO_MP4, 9, 64, 48); }
Test(media_write, gif_roundtrip) { video_roundtrip(NQ_MEDIA_VIDEO_GIF, 5, 40, 24); }
Test(media_write, bad_args) {
  void *buf;
  size_t len;
  nq_err_t err = {0};
  uint8_t px[12] = {0};
  cr_assert_eq(nq_media_video_encode(px, 1, 1, 1, 8, NQ_MEDIA_VIDEO_MP4, &buf, &len, NULL, &err), NQ_EINVAL);
  cr_assert_eq(nq_media_wav_encode(NULL, 3, 1, 16000, NQ_MEDIA_WAV_PCM16, &buf, &len, &err), NQ_EINVAL);
}

/* ---- pipelines and stages on tiny models assembled from golden dirs ----
 * AudioLDM: unet = golden unet2d-audioldm (8 latent channels, class input 32); vocoder = hifigan-tiny (8 mels,
 * x4); vae = the golden vae-decode weights cut to 2 levels with 8 latent / 1 output channels (the re-shaped edge convs
 * drawn at random); text_encoder = clap-text-tiny with projection 32 and the full RoBERTa vocabulary (new rows random);
 * tokenizer = golden roberta-tokenize; scheduler = the real audioldm-s-full-v2 config.
 * ZeroScope: golden unet3d-zeroscope, vae-decode, clip-text-tiny, clip-tokenize and the real text-to-video scheduler.
 * Random weights give noise, so these check plumbing, shapes, lengths, rates and frame counts — the numerics of every
 * component are pinned by its own golden case. */
#include "compute/io/npy.h"
#include "compute/pipelines/audioldm.h"
#include "compute/pipelines/zeroscope.h"
#include "queue/envelope.h"
#include "store/store.h"
#include "worker/worker.h"

#define GOLD NQ_SHARED_DIR "/golden"
#define CONFIGS NQ_SHARED_DIR "/models/configs"

static uint64_t rng_state = 0x1234567;
static float rnd(float scale) {
  rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
  return scale * ((float)(rng_state >> 40) / (float)(1 << 24) * 2.f - 1.f);
}

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw) { return remove(p); }
static void rm_rf(const char *dir) { nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS); }

static void link_to(const char *target, const char *dir, const char *name) {
  char p[600];
  snprintf(p, sizeof p, "%s/%s", dir, name);
  cr_assert_eq(symlink(target, p), 0, "symlink %s", p);
}

static void write_text(const char *path, const char *s) {
  FILE *f = fopen(path, "w");
  cr_assert(f);
  fputs(s, f);
  fclose(f);
}

/* Copy every tensor of src except those `edit` replaces (returns 1 when it wrote the tensor itself). */
typedef int (*edit_fn)(nq_st_writer_t *w, const nq_st_tensor_t *t);

static void derive(const char *src, const char *dst, edit_fn edit) {
  nq_st_file_t *f;
  nq_err_t err = {0};
  cr_assert_eq(nq_st_open(src, &f, &err), 0, "%s", err.msg);
  nq_st_writer_t *w = nq_st_writer_new();
  for (size_t i = 0; i < nq_st_count(f); i++) {
    const nq_st_tensor_t *t = nq_st_get(f, i);
    if (edit(w, t)) continue;
    cr_assert_eq(nq_st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, t->data, &err), 0, "%s", err.msg);
  }
  cr_assert_eq(nq_st_writer_save(w, dst, &err), 0, "%s", err.msg);
  nq_st_writer_free(w);
  nq_st_close(f);
}

static void add_random(nq_st_writer_t *w, const char *name, int ndim, const int64_t *shape, float scale) {
  int64_t n = 1;
  for (int i = 0; i < ndim; i++) n *= shape[i];
  float *d = malloc(sizeof(float) * (size_t)n);
  for (int64_t i = 0; i < n; i++) d[i] = rnd(scale);
  nq_err_t err = {0};
  cr_assert_eq(nq_st_writer_add_f32(w, name, ndim, shape, d, &err), 0, "%s", err.msg);
  free(d);
}

static int edit_vae(nq_st_writer_t *w, const nq_st_tensor_t *t) {
  const char *n = t->name;
  if (!strncmp(n, "encoder.", 8) || !strncmp(n, "quant_conv.", 11) || !strncmp(n, "decoder.up_blocks.1.", 20) ||
      !strncmp(n, "decoder.up_blocks.2.", 20))
    return 1;
  nq_err_t err = {0};
  if (!strncmp(n, "decoder.up_blocks.3.", 20)) { /* the last level becomes level 1 */
    char nn[256];
    snprintf(nn, sizeof nn, "decoder.up_blocks.1.%s", n + 20);
    cr_assert_eq(nq_st_writer_add(w, nn, t->dtype, t->ndim, t->shape, t->data, &err), 0, "%s", err.msg);
    return 1;
  }
  if (!strcmp(n, "post_quant_conv.weight")) return add_random(w, n, 4, NQ_SHAPE(8, 8, 1, 1), 0.3f), 1;
  if (!strcmp(n, "post_quant_conv.bias")) return add_random(w, n, 1, NQ_SHAPE(8), 0.1f), 1;
  if (!strcmp(n, "decoder.conv_in.weight")) return add_random(w, n, 4, NQ_SHAPE(32, 8, 3, 3), 0.1f), 1;
  if (!strcmp(n, "decoder.conv_out.weight")) return add_random(w, n, 4, NQ_SHAPE(1, 16, 3, 3), 0.1f), 1;
  if (!strcmp(n, "decoder.conv_out.bias")) return add_random(w, n, 1, NQ_SHAPE(1), 0.1f), 1;
  return 0;
}

static int edit_clap(nq_st_writer_t *w, const nq_st_tensor_t *t) {
  const char *n = t->name;
  if (!strcmp(n, "text_model.embeddings.word_embeddings.weight")) {
    int64_t V = 50265, H = t->shape[1];
    float *d = malloc(sizeof(float) * (size_t)(V * H));
    memcpy(d, t->data, t->nbytes);
    for (int64_t i = t->shape[0] * H; i < V * H; i++) d[i] = rnd(0.05f);
    nq_err_t err = {0};
    cr_assert_eq(nq_st_writer_add_f32(w, n, 2, NQ_SHAPE(V, H), d, &err), 0, "%s", err.msg);
    free(d);
    return 1;
  }
  if (!strncmp(n, "text_projection.", 16)) {
    bool bias = strstr(n, ".bias") != NULL;
    if (bias) add_random(w, n, 1, NQ_SHAPE(32), 0.1f);
    else add_random(w, n, 2, NQ_SHAPE(32, 32), 0.2f);
    return 1;
  }
  return 0;
}

static void make_audioldm(const char *root, char *dir, size_t n) {
  snprintf(dir, n, "%s/audioldm", root);
  cr_assert_eq(mkdir(dir, 0755), 0);
  link_to(GOLD "/diffusers/unet2d-audioldm/model/unet", dir, "unet");
  link_to(GOLD "/audio/hifigan-tiny/model", dir, "vocoder");
  link_to(CONFIGS "/audioldm-s-full-v2/scheduler", dir, "scheduler");
  link_to(GOLD "/audio/roberta-tokenize/model", dir, "tokenizer");
  char p[700];
  snprintf(p, sizeof p, "%s/vae", dir);
  cr_assert_eq(mkdir(p, 0755), 0);
  snprintf(p, sizeof p, "%s/vae/config.json", dir);
  write_text(p, "{\"_class_name\": \"AutoencoderKL\", \"act_fn\": \"silu\", \"block_out_channels\": [16, 32],"
                " \"down_block_types\": [\"DownEncoderBlock2D\", \"DownEncoderBlock2D\"], \"in_channels\": 1,"
                " \"latent_channels\": 8, \"layers_per_block\": 2, \"norm_num_groups\": 8, \"out_channels\": 1,"
                " \"scaling_factor\": 0.9392935633659363,"
                " \"up_block_types\": [\"UpDecoderBlock2D\", \"UpDecoderBlock2D\"]}");
  snprintf(p, sizeof p, "%s/vae/diffusion_pytorch_model.safetensors", dir);
  derive(GOLD "/diffusers/vae-decode/model/vae/diffusion_pytorch_model.safetensors", p, edit_vae);
  snprintf(p, sizeof p, "%s/text_encoder", dir);
  cr_assert_eq(mkdir(p, 0755), 0);
  snprintf(p, sizeof p, "%s/text_encoder/config.json", dir);
  write_text(p, "{\"architectures\": [\"ClapTextModelWithProjection\"], \"hidden_act\": \"gelu\", \"hidden_size\": 32,"
                " \"intermediate_size\": 128, \"layer_norm_eps\": 1e-12, \"max_position_embeddings\": 514,"
                " \"model_type\": \"clap_text_model\", \"num_attention_heads\": 4, \"num_hidden_layers\": 2,"
                " \"pad_token_id\": 1, \"position_embedding_type\": \"absolute\", \"projection_dim\": 32,"
                " \"projection_hidden_act\": \"relu\", \"type_vocab_size\": 1, \"vocab_size\": 50265}");
  snprintf(p, sizeof p, "%s/text_encoder/model.safetensors", dir);
  derive(GOLD "/audio/clap-text-tiny/model/model.safetensors", p, edit_clap);
}

static void make_zeroscope(const char *root, char *dir, size_t n) {
  snprintf(dir, n, "%s/zeroscope", root);
  cr_assert_eq(mkdir(dir, 0755), 0);
  link_to(GOLD "/diffusers/unet3d-zeroscope/model/unet", dir, "unet");
  link_to(GOLD "/diffusers/vae-decode/model/vae", dir, "vae");
  link_to(GOLD "/text/clip-text-tiny/model", dir, "text_encoder");
  link_to(GOLD "/text/clip-tokenize/model", dir, "tokenizer");
  link_to(CONFIGS "/text-to-video-ms-1.7b/scheduler", dir, "scheduler");
}

static int count_cb(void *ud, int step, int n) {
  int *c = ud;
  (*c)++;
  cr_assert_leq(step, n);
  return 0;
}

Test(audioldm, pipeline_text_and_embeds) {
  char root[] = "/tmp/nq_aldm_XXXXXX", dir[600];
  cr_assert(mkdtemp(root));
  make_audioldm(root, dir, sizeof dir);
  nq_audioldm_t *p = NULL;
  nq_err_t err = {0};
  cr_assert_eq(nq_audioldm_open(dir, NULL, &p, &err), 0, "%s", err.msg);
  cr_assert_eq(nq_audioldm_embed_dim(p), 32);
  cr_assert_eq(nq_audioldm_sample_rate(p), 16000);
  cr_assert(nq_audioldm_has_text_encoder(p));
  float e[32];
  cr_assert_eq(nq_audioldm_encode_text(p, "", e, &err), 0, "%s", err.msg);
  double ss = 0;
  for (int i = 0; i < 32; i++) ss += (double)e[i] * e[i];
  cr_assert_float_eq(ss, 1.0, 1e-5); /* F.normalize */
  nq_audioldm_req_t r;
  nq_audioldm_req_init(&r);
  r.text = "a dog barking in the rain";
  r.steps = 3, r.guidance_scale = 2.5f, r.audio_length_s = 0.01;
  int calls = 0;
  r.progress = count_cb, r.progress_ud = &calls;
  nq_audioldm_out_t o, o2;
  cr_assert_eq(nq_audioldm_generate(p, &r, &o, &err), 0, "%s", err.msg);
  cr_assert_eq(calls, 3);
  cr_assert_eq(o.n_samples, 160); /* int(0.01 * 16000) */
  cr_assert_eq(o.sample_rate, 16000);
  cr_assert_eq(o.mel_frames, 40);   /* 0.01 s / (4 / 16000) */
  for (int64_t i = 0; i < o.n_samples; i++) cr_assert(isfinite(o.samples[i]) && fabsf(o.samples[i]) <= 1.f);
  cr_assert_eq(nq_audioldm_generate(p, &r, &o2, &err), 0, "%s", err.msg); /* same seed, same audio */
  cr_assert_eq(memcmp(o.samples, o2.samples, sizeof(float) * (size_t)o.n_samples), 0);
  nq_audioldm_out_deinit(&o2);
  r.seed = 14;
  cr_assert_eq(nq_audioldm_generate(p, &r, &o2, &err), 0, "%s", err.msg);
  cr_assert_neq(memcmp(o.samples, o2.samples, sizeof(float) * (size_t)o.n_samples), 0);
  nq_audioldm_out_deinit(&o2), nq_audioldm_out_deinit(&o);
  /* the NExT-GPT path: a given vector; lengths that need rounding up keep exactly len * 16000 samples */
  float v[32];
  for (int i = 0; i < 32; i++) v[i] = rnd(1.f);
  nq_audioldm_req_init(&r);
  r.embeds = v, r.n_embeds = 32, r.steps = 2, r.audio_length_s = 0.0123;
  cr_assert_eq(nq_audioldm_generate(p, &r, &o, &err), 0, "%s", err.msg);
  cr_assert_eq(o.n_samples, (int64_t)(0.0123 * 16000.0));
  cr_assert_eq(o.mel_frames % 8, 0);
  nq_audioldm_out_deinit(&o);
  r.n_embeds = 31;
  cr_assert_eq(nq_audioldm_generate(p, &r, &o, &err), NQ_ESHAPE);
  cr_assert(err.flags & NQ_ERR_FATAL);
  nq_audioldm_free(p);
  /* without a text encoder: embeds without guidance work, guidance needs CLAP("") */
  nq_audioldm_opts_t ao;
  nq_audioldm_opts_init(&ao);
  ao.no_text_encoder = true;
  cr_assert_eq(nq_audioldm_open(dir, &ao, &p, &err), 0, "%s", err.msg);
  r.n_embeds = 32, r.guidance_scale = 1.0f;
  cr_assert_eq(nq_audioldm_generate(p, &r, &o, &err), 0, "%s", err.msg);
  nq_audioldm_out_deinit(&o);
  r.guidance_scale = 3.0f;
  cr_assert_eq(nq_audioldm_generate(p, &r, &o, &err), NQ_EUNSUPPORTED);
  nq_audioldm_free(p);  rm_rf(root);
}

/* Runs one task of `stage_name` and returns its context (caller cleans up with task_done). */
typedef struct {
  nq_envelope_t env;
  nq_task_ctx_t t;
} task_t;

static void run_task(const nq_stage_t *stage, void *state, nq_store_t *st, const char *root, const char *name,
                     json_t *input, json_t *params, task_t *tk) {
  char out[600];
  nq_err_t err = {0};
  snprintf(out, sizeof out, "file://%s/out/%s/", root, name);
  json_t *next = json_array();
  cr_assert_eq(nq_envelope_make(&tk->env, "job", name, stage->name, "cpu", 3, input, params, out, next, NULL, &err), 0,
               "%s", err.msg);
  json_decref(next);
  tk->t = (nq_task_ctx_t){.env = &tk->env, .store = st, .outputs = json_array(), .result = json_object()};
  stage->run_batch(state, &tk->t, 1);
}

static void task_done(task_t *tk) {
  nq_envelope_deinit(&tk->env);
  json_decref(tk->t.outputs), json_decref(tk->t.result);
}

static void check_wav(nq_store_t *st, const json_t *result, int64_t frames) {
  const char *uri = json_string_value(json_object_get(json_object_get(result, "audio"), "uri"));
  cr_assert(uri && strstr(uri, "audio.wav"), "%s", uri ? uri : "(no uri)");
  void *buf;
  size_t len;
  nq_err_t err = {0};
  cr_assert_eq(nq_store_get(st, uri, &buf, &len, &err), 0, "%s", err.msg);
  nq_media_audio_t a;
  cr_assert_eq(nq_media_audio_decode(buf, len, uri, &a, &err), 0, "%s", err.msg);
  cr_assert_eq(a.rate, 16000);
  cr_assert_eq(a.channels, 1);
  cr_assert_eq(a.frames, frames);
  nq_media_audio_deinit(&a);
  free(buf);
}

Test(stage_generate, audio) {
  char root[] = "/tmp/nq_gaud_XXXXXX", dir[600];
  cr_assert(mkdtemp(root));
  make_audioldm(root, dir, sizeof dir);
  nq_store_t *st;
  nq_err_t err = {0};
  cr_assert_eq(nq_store_new(&(nq_store_cfg_t){0}, &st, &err), 0, "%s", err.msg);
  const nq_stage_t *stage = nq_stage_find("generate-audio");
  cr_assert(stage, "generate-audio not registered");
  json_t *cfg = json_pack("{s:s}", "model", dir);
  void *state = NULL;
  cr_assert_eq(stage->init(&state, cfg, &err), 0, "%s", err.msg);
  /* text */
  task_t a;
  json_t *in = json_pack("{s:s}", "text", "birds singing");
  json_t *pa = json_pack("{s:f,s:i,s:f}", "audio_length_in_s", 0.0125, "steps", 2, "guidance_scale", 3.0);
  run_task(stage, state, st, root, "a", in, pa, &a);
  cr_assert_eq(a.t.rc, 0, "%s", a.t.err.msg);
  check_wav(st, a.t.result, 200);
  json_t *m = json_object_get(a.t.result, "metrics");
  cr_assert_eq(json_integer_value(json_object_get(m, "steps")), 2);
  cr_assert_eq(json_array_size(json_object_get(m, "step_s")), 2);
  cr_assert_str_eq(json_string_value(json_object_get(m, "source")), "text");
  task_done(&a), json_decref(in);
  /* a given embedding (.npy URI) and the NExT-GPT hand-off (input.prev.llm.signals.audio.cond) */
  float v[32];
  for (int i = 0; i < 32; i++) v[i] = rnd(0.5f);
  char npy[700], uri[720];
  snprintf(npy, sizeof npy, "%s/cond.npy", root);
  cr_assert_eq(nq_npy_save(npy, NQ_DT_F32, v, 2, NQ_SHAPE(1, 32), &err), 0, "%s", err.msg);
  snprintf(uri, sizeof uri, "file://%s", npy);
  in = json_pack("{s:s}", "embeds", uri);
  run_task(stage, state, st, root, "b", in, pa, &a);
  cr_assert_eq(a.t.rc, 0, "%s", a.t.err.msg);
  check_wav(st, a.t.result, 200);
  cr_assert_str_eq(json_string_value(json_object_get(json_object_get(a.t.result, "metrics"), "source")), "embeds");
  task_done(&a), json_decref(in);
  in = json_pack("{s:s,s:{s:{s:{s:{s:s,s:s}}}}}", "text", "ignored when a signal is present", "prev", "llm", "signals",
                 "audio", "cond", uri, "caption", "a dog barks [AUD0]");
  run_task(stage, state, st, root, "c", in, pa, &a);
  cr_assert_eq(a.t.rc, 0, "%s", a.t.err.msg);
  check_wav(st, a.t.result, 200);
  cr_assert_str_eq(json_string_value(json_object_get(json_object_get(a.t.result, "metrics"), "source")), "nextgpt");
  cr_assert_str_eq(json_string_value(json_object_get(a.t.result, "caption")), "a dog barks [AUD0]");
  task_done(&a), json_decref(in);
  /* wrong size: fatal, nothing written */
  cr_assert_eq(nq_npy_save(npy, NQ_DT_F32, v, 1, NQ_SHAPE(31), &err), 0, "%s", err.msg);
  in = json_pack("{s:s}", "embeds", uri);
  run_task(stage, state, st, root, "d", in, pa, &a);
  cr_assert_eq(a.t.rc, NQ_ESHAPE, "%s", a.t.err.msg);
  cr_assert(a.t.err.flags & NQ_ERR_FATAL);
  cr_assert_eq(json_array_size(a.t.outputs), 0);
  task_done(&a), json_decref(in);
  /* bad params */
  json_t *bad = json_pack("{s:i}", "steps", 0);
  in = json_pack("{s:s}", "text", "x");
  run_task(stage, state, st, root, "e", in, bad, &a);
  cr_assert_eq(a.t.rc, NQ_EINVAL);
  cr_assert(strstr(a.t.err.msg, "steps"), "%s", a.t.err.msg);
  task_done(&a), json_decref(in), json_decref(bad);
  json_decref(pa);
  stage->fini(state);
  json_decref(cfg);
  nq_store_free(st);
  rm_rf(root);
}

static void check_video(nq_store_t *st, const json_t *result, const char *name, int frames, int w, int h) {
  const char *uri = json_string_value(json_object_get(json_object_get(result, "video"), "uri"));
  cr_assert(uri && strstr(uri, name), "%s", uri ? uri : "(no uri)");
  void *buf;
  size_t len;
  nq_err_t err = {0};
  cr_assert_eq(nq_store_get(st, uri, &buf, &len, &err), 0, "%s", err.msg);
  nq_media_video_info_t info;
  cr_assert_eq(nq_media_video_probe(buf, len, uri, &info, &err), 0, "%s", err.msg);
  cr_assert_eq(info.n_frames, frames);
  cr_assert_eq(info.w, w);
  cr_assert_eq(info.h, h);
  if (strstr(name, "mp4")) cr_assert_float_eq(info.fps, 8.0, 1e-9);
  int64_t idx[1] = {frames - 1};
  nq_media_image_t im;
  cr_assert_eq(nq_media_video_decode_frames(buf, len, uri, idx, 1, &im, NULL, &err), 0, "%s", err.msg);
  nq_media_image_deinit(&im);
  free(buf);
}

Test(stage_generate, video) {
  char root[] = "/tmp/nq_gvid_XXXXXX", dir[600];
  cr_assert(mkdtemp(root));
  make_zeroscope(root, dir, sizeof dir);
  /* the pipeline directly */
  nq_zeroscope_t *p = NULL;
  nq_err_t err = {0};
  cr_assert_eq(nq_zeroscope_open(dir, NULL, &p, &err), 0, "%s", err.msg);
  cr_assert_eq(nq_zeroscope_embed_dim(p), 32);
  nq_zeroscope_req_t r;
  nq_zeroscope_req_init(&r);
  r.text = "a cat playing the piano";
  r.steps = 2, r.num_frames = 3, r.height = 32, r.width = 48, r.guidance_scale = 4.0f;
  int calls = 0;
  r.progress = count_cb, r.progress_ud = &calls;
  nq_zeroscope_out_t o;
  cr_assert_eq(nq_zeroscope_generate(p, &r, &o, &err), 0, "%s", err.msg);
  cr_assert_eq(calls, 2);
  cr_assert(o.n_frames == 3 && o.height == 32 && o.width == 48 && o.fps == 8);
  nq_zeroscope_out_deinit(&o);
  float *emb = malloc(sizeof(float) * 77 * 32);
  for (int i = 0; i < 77 * 32; i++) emb[i] = rnd(1.f);
  nq_zeroscope_req_init(&r);
  r.embeds = emb, r.n_tokens = 77, r.steps = 1, r.num_frames = 2, r.height = 20, r.width = 40; /* rounded up to 16s */
  cr_assert_eq(nq_zeroscope_generate(p, &r, &o, &err), 0, "%s", err.msg);
  cr_assert(o.n_frames == 2 && o.height == 32 && o.width == 48);
  nq_zeroscope_out_deinit(&o);
  nq_zeroscope_free(p);
  /* the stage: MP4 and GIF */
  nq_store_t *st;
  cr_assert_eq(nq_store_new(&(nq_store_cfg_t){0}, &st, &err), 0, "%s", err.msg);
  const nq_stage_t *stage = nq_stage_find("generate-video");
  cr_assert(stage, "generate-video not registered");
  json_t *cfg = json_pack("{s:s}", "model", dir);
  void *state = NULL;
  cr_assert_eq(stage->init(&state, cfg, &err), 0, "%s", err.msg);
  task_t a;
  json_t *in = json_pack("{s:s}", "prompt", "waves on a beach");
  json_t *pa = json_pack("{s:i,s:i,s:i,s:i}", "num_frames", 4, "height", 32, "width", 48, "steps", 2);
  run_task(stage, state, st, root, "v", in, pa, &a);
  cr_assert_eq(a.t.rc, 0, "%s", a.t.err.msg);
  check_video(st, a.t.result, "video.mp4", 4, 48, 32);
  json_t *m = json_object_get(a.t.result, "metrics");
  cr_assert_eq(json_array_size(json_object_get(m, "step_s")), 2);
  task_done(&a);
  json_object_set_new(pa, "format", json_string("gif"));
  run_task(stage, state, st, root, "g", in, pa, &a);
  cr_assert_eq(a.t.rc, 0, "%s", a.t.err.msg);
  check_video(st, a.t.result, "video.gif", 4, 48, 32);
  task_done(&a), json_decref(in);
  /* the NExT-GPT hand-off [77, D] */
  char npy[700], uri[720];
  snprintf(npy, sizeof npy, "%s/cond.npy", root);
  cr_assert_eq(nq_npy_save(npy, NQ_DT_F32, emb, 2, NQ_SHAPE(77, 32), &err), 0, "%s", err.msg);
  snprintf(uri, sizeof uri, "file://%s", npy);
  in = json_pack("{s:{s:{s:{s:{s:s}}}}}", "prev", "llm", "signals", "video", "cond", uri);
  json_object_set_new(pa, "format", json_string("mp4"));
  run_task(stage, state, st, root, "n", in, pa, &a);
  cr_assert_eq(a.t.rc, 0, "%s", a.t.err.msg);
  check_video(st, a.t.result, "video.mp4", 4, 48, 32);
  task_done(&a), json_decref(in);
  free(emb);
  json_decref(pa);
  stage->fini(state);
  json_decref(cfg);
  nq_store_free(st);
  rm_rf(root);
}

/* compute/pipelines/zeroscope.c — ZeroScope / ModelScope text-to-video (see zeroscope.h). */
#include "compute/pipelines/zeroscope.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "compute/models/clip_text.h"
#include "compute/models/samplers/scheduler.h"
#include "compute/models/unet3d.h"
#include "compute/models/vae.h"
#include "compute/pipelines/gen_int.h"
#include "compute/tokenizers/clip_bpe.h"

#define NQ_ZS_TOKENS NQ_CLIP_TOK_MAX_LEN /* 77 */

struct nq_zeroscope {
  nq_unet3d_t *unet;        /* owned */
  nq_unet2d_info_t uinfo;
  nq_vae_t *vae;            /* owned */
  nq_clip_text_t *te;       /* owned, NULL without text_encoder/ */
  nq_clip_tok_t *tok;       /* owned, NULL without tokenizer/ */
  nq_sched_config_t sched;
  float *uncond;            /* owned [77, D]: CLIP("") last hidden state, computed on first use */
  pthread_mutex_t mu;
};

void nq_zeroscope_opts_init(nq_zeroscope_opts_t *o) {
  memset(o, 0, sizeof *o);
  o->wdtype = -1;
}

void nq_zeroscope_req_init(nq_zeroscope_req_t *r) {
  memset(r, 0, sizeof *r);
  r->n_tokens = NQ_ZS_TOKENS;
  r->seed = 13;
  r->steps = 50;
  r->guidance_scale = 7.5f;
  r->height = 320, r->width = 576;
  r->num_frames = 24;
}

int nq_zeroscope_open(const char *dir, const nq_zeroscope_opts_t *opts, nq_zeroscope_t **out, nq_err_t *err) {
  nq_zeroscope_opts_t dflt;
  if (!opts) nq_zeroscope_opts_init(&dflt), opts = &dflt;
  *out = NULL;
  nq_zeroscope_t *p = calloc(1, sizeof *p);
  if (!p) return nq_err_set(err, NQ_ENOMEM, 0, "zeroscope: out of memory");
  pthread_mutex_init(&p->mu, NULL);
  int rc;
  char path[4200];
  struct stat st;
  nq_unet3d_opts_t uo;
  nq_unet2d_opts_init(&uo);
  uo.backends = opts->backends, uo.wdtype = opts->wdtype;
  if ((rc = nq_unet3d_load(dir, &uo, &p->unet, err)) < 0) goto fail;
  nq_unet3d_get_info(p->unet, &p->uinfo);
  nq_dtype_t vdt = opts->wdtype < 0 ? NQ_DT_F32 : (nq_dtype_t)opts->wdtype;
  if ((rc = nq_vae_open(dir, vdt, opts->backends, &p->vae, err)) < 0) goto fail;
  const nq_vae_config_t *vc = nq_vae_config(p->vae);
  if (!nq_vae_has_decoder(p->vae) || vc->latent_channels != p->uinfo.in_channels || vc->out_channels != 3 ||
      p->uinfo.out_channels != p->uinfo.in_channels) {
    rc = nq_err_set(err, NQ_ESHAPE, NQ_ERR_FATAL,
                    "zeroscope: %s: unet in/out channels %d/%d vs vae latent %d, out %d (want equal latents, RGB)", dir,
                    p->uinfo.in_channels, p->uinfo.out_channels, vc->latent_channels, vc->out_channels);
    goto fail;
  }
  snprintf(path, sizeof path, "%s/scheduler/scheduler_config.json", dir);
  if ((rc = nq_sched_config_load(path, "ddim", &p->sched, err)) < 0) goto fail;
  snprintf(path, sizeof path, "%s/text_encoder", dir);
  if (!opts->no_text_encoder && stat(path, &st) == 0) {
    nq_clip_text_load_opts_t co;
    nq_clip_text_load_opts_init(&co);
    co.backends = opts->backends, co.wdtype = opts->wdtype;
    if ((rc = nq_clip_text_load(path, &co, &p->te, err)) < 0) goto fail;
    if ((rc = nq_clip_tok_open(dir, &p->tok, err)) < 0) goto fail;
    if (p->te->cfg.hidden != p->uinfo.cross_attention_dim || p->te->cfg.max_pos < NQ_ZS_TOKENS) {
      rc = nq_err_set(err, NQ_ESHAPE, NQ_ERR_FATAL,
                      "zeroscope: %s: text encoder hidden %d / %d positions vs unet cross_attention_dim %d / 77", dir,
                      p->te->cfg.hidden, p->te->cfg.max_pos, p->uinfo.cross_attention_dim);
      goto fail;
    }
  }
  *out = p;
  return 0;
fail:
  nq_err_prefix(err, "zeroscope %s", dir);
  nq_zeroscope_free(p);
  return rc;
}

void nq_zeroscope_free(nq_zeroscope_t *p) {
  if (!p) return;
  nq_unet3d_free(p->unet);
  if (p->vae) nq_vae_free(p->vae);
  if (p->te) nq_clip_text_free(p->te);
  if (p->tok) nq_clip_tok_free(p->tok);
  free(p->uncond);
  pthread_mutex_destroy(&p->mu);
  free(p);
}

int nq_zeroscope_embed_dim(const nq_zeroscope_t *p) { return p->uinfo.cross_attention_dim; }
bool nq_zeroscope_has_text_encoder(const nq_zeroscope_t *p) { return p->te != NULL; }

/* CLIP(text).last_hidden_state [77, D]; ids padded with 0 as open_clip / the ZeroScope tokenizer do. */
static int nq_zeroscope__encode(nq_zeroscope_t *p, const char *text, float *out, nq_err_t *err) {
  if (!p->te || !p->tok)
    return nq_err_set(err, NQ_EUNSUPPORTED, NQ_ERR_FATAL,
                      "zeroscope: no text encoder loaded (text prompts and guidance need text_encoder/ + tokenizer/)");
  int32_t ids[NQ_ZS_TOKENS];
  int64_t ids64[NQ_ZS_TOKENS];
  int rc = nq_clip_tok_encode(p->tok, text, strlen(text), NQ_ZS_TOKENS, NQ_CLIP_TOK_PAD_SD2, ids, NULL, err);
  if (rc) return rc;
  for (int i = 0; i < NQ_ZS_TOKENS; i++) ids64[i] = ids[i];
  return nq_clip_text_forward(p->te, ids64, 1, NQ_ZS_TOKENS, out, NULL, err);
}

/* nq_denoise_run drives 4-d latents: it sees [M, C, F*h, w] and this adapter hands UNet3D its 5-d view. */
typedef struct {
  nq_unet_cond_t uc;
  int64_t F, h;
} nq_zeroscope__eps_t;

static int nq_zeroscope__eps(void *ud, const nq_tensor_t *x4, float t, nq_tensor_t *o4, nq_err_t *err) {
  const nq_zeroscope__eps_t *e = ud;
  nq_tensor_t x5, o5;
  int64_t M = x4->ne[0], C = x4->ne[1], w = x4->ne[3];
  int rc;
  if ((rc = nq_tensor_view_reshape(x4, 5, NQ_SHAPE(M, C, e->F, e->h, w), &x5, err)) < 0 ||
      (rc = nq_tensor_view_reshape(o4, 5, NQ_SHAPE(M, C, e->F, e->h, w), &o5, err)) < 0)
    return rc;
  return nq_unet3d_eps((void *)&e->uc, &x5, t, &o5, err);
}

static int nq_zeroscope__generate(nq_zeroscope_t *p, const nq_zeroscope_req_t *r, nq_zeroscope_out_t *o,
                                  nq_err_t *err) {
  const int D = p->uinfo.cross_attention_dim;
  const nq_vae_config_t *vc = nq_vae_config(p->vae);
  const int vs = 1 << (vc->n_levels - 1), q = vs * p->uinfo.downscale;
  if (r->steps < 1 || r->steps > 1000)
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "zeroscope: steps %d outside 1..1000", r->steps);
  if (r->num_frames < 1 || r->num_frames > 256)
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "zeroscope: num_frames %d outside 1..256", r->num_frames);
  if (r->height < 1 || r->width < 1 || r->height > 4096 || r->width > 4096)
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "zeroscope: size %dx%d outside 1..4096", r->width, r->height);
  if (!isfinite(r->guidance_scale))
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "zeroscope: guidance_scale is not finite");
  if (!r->embeds && !r->text) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "zeroscope: a request needs text or embeds");
  if (r->embeds && r->n_tokens < 1)
    return nq_err_set(err, NQ_ESHAPE, NQ_ERR_FATAL, "zeroscope: embeds need n_tokens >= 1 rows of %d", D);
  const bool cfg = r->guidance_scale > 1.0f;
  const int K = r->embeds ? r->n_tokens : NQ_ZS_TOKENS;
  if (cfg && K != NQ_ZS_TOKENS)
    return nq_err_set(err, NQ_ESHAPE, NQ_ERR_FATAL, "zeroscope: guidance needs 77-token embeds (got %d)", K);
  const int64_t H = (r->height + q - 1) / q * q, W = (r->width + q - 1) / q * q;
  const int64_t F = r->num_frames, C = p->uinfo.in_channels, h = H / vs, w = W / vs;
  int rc = 0;
  float *ehs = calloc((size_t)(2 * K) * (size_t)D, sizeof(float));
  if (!ehs) return nq_err_set(err, NQ_ENOMEM, 0, "zeroscope: out of memory");
  float *cond = cfg ? ehs + (size_t)K * D : ehs;
  nq_tensor_t lat = {0}, et = {0}, z = {0}, img = {0};
  nq_sched_t *s = NULL;
  uint8_t *frames = NULL;
  if (r->embeds) {
    for (int64_t i = 0; i < (int64_t)K * D; i++)
      if (!isfinite(r->embeds[i])) {
        rc = nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "zeroscope: embeds[%lld] is not finite", (long long)i);
        goto out;
      }
    memcpy(cond, r->embeds, sizeof(float) * (size_t)K * D);
  } else if ((rc = nq_zeroscope__encode(p, r->text, cond, err)) < 0)
    goto out;
  if (cfg) {
    if (!p->uncond) {
      float *u = malloc(sizeof(float) * NQ_ZS_TOKENS * (size_t)D);
      if (!u) {
        rc = nq_err_set(err, NQ_ENOMEM, 0, "zeroscope: out of memory");
        goto out;
      }
      if ((rc = nq_zeroscope__encode(p, "", u, err)) < 0) {
        free(u);
        nq_err_prefix(err, "zeroscope: unconditional embedding for guidance %g", (double)r->guidance_scale);
        goto out;
      }
      p->uncond = u;
    }
    memcpy(ehs, p->uncond, sizeof(float) * NQ_ZS_TOKENS * (size_t)D);
  }
  if ((rc = nq_tensor_init(&lat, NQ_DT_F32, 4, NQ_SHAPE(1, C, F * h, w), err)) < 0) goto out;
  if ((rc = nq_sched_new(&p->sched, r->steps, &s, err)) < 0) goto out;
  nq_gen__randn(r->seed, lat.data, nq_tensor_numel(&lat));
  {
    float sig = nq_sched_init_noise_sigma(s), *ld = lat.data;
    for (int64_t i = 0; i < nq_tensor_numel(&lat); i++) ld[i] *= sig;
  }
  nq_tensor_init_borrowed(&et, NQ_DT_F32, 3, NQ_SHAPE(cfg ? 2 : 1, K, D), ehs);
  nq_zeroscope__eps_t ec = {.uc = {.unet3d = p->unet, .ehs = &et}, .F = F, .h = h};
  nq_gen__progress_t pg = {r->progress, r->progress_ud};
  nq_denoise_opts_t dopts = {.guidance_scale = r->guidance_scale, .progress = nq_gen__progress_fn, .progress_ud = &pg};
  if ((rc = nq_denoise_run(s, nq_zeroscope__eps, &ec, &lat, &dopts, err)) < 0) goto out;
  if (r->progress && r->progress(r->progress_ud, nq_sched_n_evals(s), nq_sched_n_evals(s))) {
    rc = nq_err_set(err, NQ_ECANCELED, 0, "zeroscope: canceled after the last step");
    goto out;
  }
  /* per-frame decode: z_f = latents[0, :, f] / scaling_factor -> [3, H, W] -> uint8 HWC */
  if (!(frames = malloc((size_t)F * (size_t)H * (size_t)W * 3))) {
    rc = nq_err_set(err, NQ_ENOMEM, 0, "zeroscope: out of memory for %lld frames", (long long)F);
    goto out;
  }
  if ((rc = nq_tensor_init(&z, NQ_DT_F32, 4, NQ_SHAPE(1, C, h, w), err)) < 0) goto out;
  for (int64_t f = 0; f < F; f++) {
    const float *ld = lat.data, inv = 1.0f / vc->scaling_factor;
    float *zd = z.data;
    for (int64_t c = 0; c < C; c++)
      for (int64_t i = 0; i < h * w; i++) zd[c * h * w + i] = ld[(c * F + f) * h * w + i] * inv;
    if ((rc = nq_vae_decode(p->vae, &z, &img, err)) < 0) {
      nq_err_prefix(err, "zeroscope: frame %lld", (long long)f);
      goto out;
    }
    const float *id = img.data;
    uint8_t *dst = frames + (size_t)f * (size_t)H * (size_t)W * 3;
    for (int64_t c = 0; c < 3; c++)
      for (int64_t i = 0; i < H * W; i++) {
        float v = id[c * H * W + i] * 0.5f + 0.5f;
        v = v < 0.f ? 0.f : v > 1.f ? 1.f : v;
        dst[i * 3 + c] = (uint8_t)(v * 255.f); /* numpy astype(uint8) truncates */
      }
    nq_tensor_deinit(&img);
  }
  o->frames = frames, frames = NULL;
  o->n_frames = (int)F, o->height = (int)H, o->width = (int)W, o->fps = NQ_ZEROSCOPE_FPS;
out:
  nq_sched_free(s);
  nq_tensor_deinit(&lat), nq_tensor_deinit(&z), nq_tensor_deinit(&img);
  free(ehs), free(frames);
  return rc;
}

int nq_zeroscope_generate(nq_zeroscope_t *p, const nq_zeroscope_req_t *req, nq_zeroscope_out_t *out, nq_err_t *err) {
  memset(out, 0, sizeof *out);
  if (!p || !req) return nq_err_set(err, NQ_EINVAL, 0, "zeroscope: NULL pipeline or request");
  pthread_mutex_lock(&p->mu);
  int rc = nq_zeroscope__generate(p, req, out, err);
  pthread_mutex_unlock(&p->mu);
  return rc;
}

void nq_zeroscope_out_deinit(nq_zeroscope_out_t *o) {
  if (!o) return;
  free(o->frames);
  memset(o, 0, sizeof *o);
}

/* compute/pipelines/audioldm.c — AudioLDM text-to-audio (see audioldm.h). */
#include "compute/pipelines/audioldm.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "compute/models/clap_text.h"
#include "compute/models/hifigan.h"
#include "compute/models/samplers/scheduler.h"
#include "compute/models/unet2d.h"
#include "compute/models/vae.h"
#include "compute/pipelines/gen_int.h"
#include "compute/tokenizers/roberta_bpe.h"

struct nq_audioldm {
  nq_unet2d_t *unet;        /* owned */
  nq_unet2d_info_t uinfo;
  nq_vae_t *vae;            /* owned */
  nq_hifigan_t *voc;        /* owned */
  nq_clap_text_t *clap;     /* owned, NULL without text_encoder/ */
  nq_roberta_tok_t *tok;    /* owned, NULL without tokenizer/ */
  nq_sched_config_t sched;
  float *uncond;            /* owned [embed_dim]: normalised CLAP(""), computed on first use */
  pthread_mutex_t mu;       /* one generate at a time */
};

void nq_audioldm_opts_init(nq_audioldm_opts_t *o) {
  memset(o, 0, sizeof *o);
  o->wdtype = -1;
}

void nq_audioldm_req_init(nq_audioldm_req_t *r) {
  memset(r, 0, sizeof *r);
  r->seed = 13;
  r->steps = 50;
  r->guidance_scale = 7.5f;
  r->audio_length_s = 5.0f;
}

static bool nq_audioldm__exists(const char *dir, const char *sub) {
  char p[4200];
  struct stat st;
  snprintf(p, sizeof p, "%s/%s", dir, sub);
  return stat(p, &st) == 0;
}

int nq_audioldm_open(const char *dir, const nq_audioldm_opts_t *opts, nq_audioldm_t **out, nq_err_t *err) {
  nq_audioldm_opts_t dflt;
  if (!opts) nq_audioldm_opts_init(&dflt), opts = &dflt;
  *out = NULL;
  nq_audioldm_t *p = calloc(1, sizeof *p);
  if (!p) return nq_err_set(err, NQ_ENOMEM, 0, "audioldm: out of memory");
  pthread_mutex_init(&p->mu, NULL);
  int rc;
  char path[4200];
  nq_unet2d_opts_t uo;
  nq_unet2d_opts_init(&uo);
  uo.backends = opts->backends, uo.wdtype = opts->wdtype;
  if ((rc = nq_unet2d_load(dir, &uo, &p->unet, err)) < 0) goto fail;
  nq_unet2d_get_info(p->unet, &p->uinfo);
  if (p->uinfo.class_in_dim <= 0) {
    rc = nq_err_set(err, NQ_EUNSUPPORTED, NQ_ERR_FATAL, "audioldm: %s/unet takes no class_labels (not an AudioLDM UNet)",
                    dir);
    goto fail;
  }
  nq_dtype_t vdt = opts->wdtype < 0 ? NQ_DT_F32 : (nq_dtype_t)opts->wdtype;
  if ((rc = nq_vae_open(dir, vdt, opts->backends, &p->vae, err)) < 0) goto fail;
  if (!nq_vae_has_decoder(p->vae)) {
    rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "audioldm: %s/vae has no decoder", dir);
    goto fail;
  }
  nq_hifigan_opts_t ho;
  nq_hifigan_opts_init(&ho);
  ho.backends = opts->backends;
  if ((rc = nq_hifigan_load(dir, &ho, &p->voc, err)) < 0) goto fail;
  const nq_vae_config_t *vc = nq_vae_config(p->vae);
  const nq_hifigan_config_t *hc = nq_hifigan_config(p->voc);
  if (vc->out_channels != 1 || vc->latent_channels != p->uinfo.in_channels ||
      p->uinfo.out_channels != p->uinfo.in_channels) {
    rc = nq_err_set(err, NQ_ESHAPE, NQ_ERR_FATAL,
                    "audioldm: %s: unet in/out channels %d/%d, vae latent %d and out %d channels (want equal latents "
                    "and a 1-channel mel image)",
                    dir, p->uinfo.in_channels, p->uinfo.out_channels, vc->latent_channels, vc->out_channels);
    goto fail;
  }
  int vs = 1 << (vc->n_levels - 1);
  if (hc->model_in_dim % (vs * p->uinfo.downscale)) {
    rc = nq_err_set(err, NQ_ESHAPE, NQ_ERR_FATAL,
                    "audioldm: %s: %d mel bins are not a multiple of vae scale %d x unet downscale %d", dir,
                    hc->model_in_dim, vs, p->uinfo.downscale);
    goto fail;
  }
  snprintf(path, sizeof path, "%s/scheduler/scheduler_config.json", dir);
  if ((rc = nq_sched_config_load(path, "ddim", &p->sched, err)) < 0) goto fail;
  if (!opts->no_text_encoder && nq_audioldm__exists(dir, "text_encoder")) {
    nq_clap_text_opts_t co;
    nq_clap_text_opts_init(&co);
    co.backends = opts->backends, co.wdtype = opts->wdtype;
    snprintf(path, sizeof path, "%s/text_encoder", dir);
    if ((rc = nq_clap_text_load(path, &co, &p->clap, err)) < 0) goto fail;
    if ((rc = nq_roberta_tok_open(dir, &p->tok, err)) < 0) goto fail;
    if (nq_clap_text_config(p->clap)->projection_dim != p->uinfo.class_in_dim) {
      rc = nq_err_set(err, NQ_ESHAPE, NQ_ERR_FATAL, "audioldm: %s: CLAP projection_dim %d != unet class input dim %d", dir,
                      nq_clap_text_config(p->clap)->projection_dim, p->uinfo.class_in_dim);
      goto fail;
    }
  }
  *out = p;
  return 0;
fail:
  nq_err_prefix(err, "audioldm %s", dir);
  nq_audioldm_free(p);
  return rc;
}

void nq_audioldm_free(nq_audioldm_t *p) {
  if (!p) return;
  nq_unet2d_free(p->unet);
  if (p->vae) nq_vae_free(p->vae);
  if (p->voc) nq_hifigan_free(p->voc);
  if (p->clap) nq_clap_text_free(p->clap);
  if (p->tok) nq_roberta_tok_free(p->tok);
  free(p->uncond);
  pthread_mutex_destroy(&p->mu);
  free(p);
}

int nq_audioldm_embed_dim(const nq_audioldm_t *p) { return p->uinfo.class_in_dim; }
int nq_audioldm_sample_rate(const nq_audioldm_t *p) { return nq_hifigan_config(p->voc)->sampling_rate; }
bool nq_audioldm_has_text_encoder(const nq_audioldm_t *p) { return p->clap != NULL; }

/* F.normalize(CLAP(text).text_embeds). Only the real (mask 1) positions are run: with the key mask, padding changes
 * neither the <s> row nor anything it attends to, so this equals the 512-padded pipeline call. */
static int nq_audioldm__clap(nq_audioldm_t *p, const char *text, float *out, nq_err_t *err) {
  if (!p->clap || !p->tok)
    return nq_err_set(err, NQ_EUNSUPPORTED, NQ_ERR_FATAL,
                      "audioldm: no text encoder loaded (text prompts and guidance need text_encoder/ + tokenizer/)");
  int L = NQ_ROBERTA_TOK_MAX_LEN, n_real = 0, rc;
  int maxp = nq_clap_text_config(p->clap)->max_pos - nq_clap_text_config(p->clap)->pad_token_id - 1;
  if (L > maxp) L = maxp;
  int32_t *ids = malloc(sizeof(int32_t) * (size_t)L);
  int64_t *ids64 = malloc(sizeof(int64_t) * (size_t)L);
  if (!ids || !ids64) {
    free(ids), free(ids64);
    return nq_err_set(err, NQ_ENOMEM, 0, "audioldm: out of memory");
  }
  if ((rc = nq_roberta_tok_encode(p->tok, text, strlen(text), L, -1, ids, NULL, &n_real, err)) == 0) {
    for (int i = 0; i < n_real; i++) ids64[i] = ids[i];
    rc = nq_clap_text_forward(p->clap, ids64, NULL, 1, n_real, out, NULL, err);
  }
  free(ids), free(ids64);
  if (rc) return rc;
  int E = p->uinfo.class_in_dim;
  double ss = 0;
  for (int i = 0; i < E; i++) ss += (double)out[i] * out[i];
  double nrm = sqrt(ss);
  if (nrm < 1e-12) nrm = 1e-12;
  for (int i = 0; i < E; i++) out[i] = (float)(out[i] / nrm);
  return 0;
}

int nq_audioldm_encode_text(nq_audioldm_t *p, const char *text, float *out, nq_err_t *err) {
  pthread_mutex_lock(&p->mu);
  int rc = nq_audioldm__clap(p, text ? text : "", out, err);
  pthread_mutex_unlock(&p->mu);
  return rc;
}

static int nq_audioldm__generate(nq_audioldm_t *p, const nq_audioldm_req_t *r, nq_audioldm_out_t *o, nq_err_t *err) {
  const int E = p->uinfo.class_in_dim;
  const nq_vae_config_t *vc = nq_vae_config(p->vae);
  const nq_hifigan_config_t *hc = nq_hifigan_config(p->voc);
  if (r->steps < 1 || r->steps > 1000)
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "audioldm: steps %d outside 1..1000", r->steps);
  if (!(r->audio_length_s > 0) || r->audio_length_s > 600)
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "audioldm: audio_length_s %g outside (0, 600]",
                      r->audio_length_s);
  if (!isfinite(r->guidance_scale))
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "audioldm: guidance_scale is not finite");
  if (!r->embeds && !r->text)
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "audioldm: a request needs text or embeds");
  if (r->embeds && r->n_embeds != E)
    return nq_err_set(err, NQ_ESHAPE, NQ_ERR_FATAL, "audioldm: embeds has %d values, the UNet takes %d", r->n_embeds, E);
  const bool cfg = r->guidance_scale > 1.0f;
  int rc;
  /* class labels [uncond; cond] (or [cond]) */
  float *cl = calloc((size_t)(2 * E), sizeof(float));
  if (!cl) return nq_err_set(err, NQ_ENOMEM, 0, "audioldm: out of memory");
  float *cond = cfg ? cl + E : cl;
  if (r->embeds) {
    for (int i = 0; i < E; i++)
      if (!isfinite(r->embeds[i])) {
        free(cl);
        return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "audioldm: embeds[%d] is not finite", i);
      }
    memcpy(cond, r->embeds, sizeof(float) * (size_t)E);
  } else if ((rc = nq_audioldm__clap(p, r->text, cond, err)) < 0) {
    free(cl);
    return rc;
  }
  if (cfg) {
    if (!p->uncond) {
      float *u = malloc(sizeof(float) * (size_t)E);
      if (!u) {
        free(cl);
        return nq_err_set(err, NQ_ENOMEM, 0, "audioldm: out of memory");
      }
      if ((rc = nq_audioldm__clap(p, "", u, err)) < 0) {
        free(u), free(cl);
        return nq_err_prefix(err, "audioldm: unconditional embedding for guidance %g", (double)r->guidance_scale);
      }
      p->uncond = u;
    }
    memcpy(cl, p->uncond, sizeof(float) * (size_t)E);
  }
  /* geometry (diffusers: height = int(len / (prod(rates)/sr)), rounded up to the VAE scale; we round up further to
   * what our UNet needs, vae scale x unet downscale) */
  double upf = 1.0;
  for (int i = 0; i < hc->n_stages; i++) upf *= hc->upsample_rates[i];
  upf /= hc->sampling_rate;
  const int vs = 1 << (vc->n_levels - 1), q = vs * p->uinfo.downscale;
  int64_t T = (int64_t)(r->audio_length_s / upf);
  if (T < 1) T = 1;
  T = (T + q - 1) / q * q;
  const int64_t n_keep = (int64_t)(r->audio_length_s * hc->sampling_rate);
  const int64_t C = p->uinfo.in_channels, h = T / vs, w = hc->model_in_dim / vs;
  nq_tensor_t lat = {0}, mel = {0}, wave = {0}, cls = {0};
  nq_sched_t *s = NULL;
  if ((rc = nq_tensor_init(&lat, NQ_DT_F32, 4, NQ_SHAPE(1, C, h, w), err)) < 0) goto out;
  if ((rc = nq_sched_new(&p->sched, r->steps, &s, err)) < 0) goto out;
  nq_gen__randn(r->seed, lat.data, nq_tensor_numel(&lat));
  {
    float sig = nq_sched_init_noise_sigma(s);
    float *ld = lat.data;
    for (int64_t i = 0; i < nq_tensor_numel(&lat); i++) ld[i] *= sig;
  }
  nq_tensor_init_borrowed(&cls, NQ_DT_F32, 2, NQ_SHAPE(cfg ? 2 : 1, E), cl);
  nq_unet_cond_t uc = {.unet2d = p->unet, .class_labels = &cls};
  nq_gen__progress_t pg = {r->progress, r->progress_ud};
  nq_denoise_opts_t dopts = {.guidance_scale = r->guidance_scale, .progress = nq_gen__progress_fn, .progress_ud = &pg};
  if ((rc = nq_denoise_run(s, nq_unet2d_eps, &uc, &lat, &dopts, err)) < 0) goto out;
  if (r->progress && r->progress(r->progress_ud, nq_sched_n_evals(s), nq_sched_n_evals(s))) {
    rc = nq_err_set(err, NQ_ECANCELED, 0, "audioldm: canceled after the last step");
    goto out;
  }
  {
    float *ld = lat.data, inv = 1.0f / vc->scaling_factor;
    for (int64_t i = 0; i < nq_tensor_numel(&lat); i++) ld[i] *= inv;
  }
  if ((rc = nq_vae_decode(p->vae, &lat, &mel, err)) < 0) goto out;
  {
    nq_tensor_t m3;
    if ((rc = nq_tensor_view_reshape(&mel, 3, NQ_SHAPE(1, T, hc->model_in_dim), &m3, err)) < 0) goto out;
    if ((rc = nq_hifigan_forward(p->voc, &m3, &wave, err)) < 0) goto out;
  }
  {
    int64_t n = wave.ne[1] < n_keep ? wave.ne[1] : n_keep;
    float *smp = malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
    if (!smp) {
      rc = nq_err_set(err, NQ_ENOMEM, 0, "audioldm: out of memory");
      goto out;
    }
    memcpy(smp, wave.data, sizeof(float) * (size_t)n);
    o->samples = smp, o->n_samples = n, o->sample_rate = hc->sampling_rate, o->mel_frames = (int)T;
  }
out:
  nq_sched_free(s);
  nq_tensor_deinit(&lat), nq_tensor_deinit(&mel), nq_tensor_deinit(&wave);
  free(cl);
  return rc;
}

int nq_audioldm_generate(nq_audioldm_t *p, const nq_audioldm_req_t *req, nq_audioldm_out_t *out, nq_err_t *err) {
  memset(out, 0, sizeof *out);
  if (!p || !req) return nq_err_set(err, NQ_EINVAL, 0, "audioldm: NULL pipeline or request");
  pthread_mutex_lock(&p->mu);
  int rc = nq_audioldm__generate(p, req, out, err);
  pthread_mutex_unlock(&p->mu);
  return rc;
}

void nq_audioldm_out_deinit(nq_audioldm_out_t *o) {
  if (!o) return;
  free(o->samples);
  memset(o, 0, sizeof *o);
}

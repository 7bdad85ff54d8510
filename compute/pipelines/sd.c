/* Stable Diffusion text-to-image pipeline (see sd.h). Sections: noise, loading (diffusers dir / LDM single file),
 * text conditioning, generation, decoding. */
#include "compute/pipelines/sd.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "compute/io/safetensors.h"
#include "compute/models/clip_text.h"
#include "compute/models/names_ldm_vae.h"
#include "compute/models/samplers/scheduler.h"
#include "compute/models/taesd.h"
#include "compute/models/unet2d.h"
#include "compute/models/vae.h"
#include "compute/tokenizers/clip_bpe.h"

#define SD_PATH_MAX 4200
#define SD_BOS 49406 /* <|startoftext|> of the CLIP vocabulary (used when no tokenizer is loaded) */
#define SD_EOS 49407 /* <|endoftext|> */

struct nq_sd_text {
  nq_clip_text_t *te;          /* owned */
  nq_clip_tok_t *tok;          /* owned, may be NULL ("" only) */
  int pad_id;                  /* tokenizer pad id; the end token without a tokenizer */
  int bos, eos;
  pthread_mutex_t mu;          /* one forward at a time */
};

struct nq_sd {
  nq_unet2d_t *unet;           /* owned */
  nq_unet2d_info_t uinfo;
  nq_vae_t *vae;               /* owned */
  nq_taesd_t *taesd;           /* owned, may be NULL */
  nq_sd_text_t *text;          /* owned, may be NULL (embeds-only pipeline) */
  int sample_size;             /* unet config sample_size (latent side) */
  int vae_scale;               /* 2^(levels-1) */
  float scaling;               /* vae scaling_factor */
  nq_sched_config_t sched;     /* the default scheduler */
  char sched_path[SD_PATH_MAX];/* scheduler_config.json, or "" (built-in SD-1.5 PNDM) */
  char sched_name[16];
  pthread_mutex_t mu;          /* one generate/encode at a time */
};

/* ---- noise ------------------------------------------------------------------------------------------------- */

static uint64_t sd__splitmix64(uint64_t *x) {
  uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

static inline uint64_t sd__rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t sd__xoshiro(uint64_t s[4]) {
  uint64_t r = sd__rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
  s[2] ^= s[0], s[3] ^= s[1], s[1] ^= s[2], s[0] ^= s[3];
  s[2] ^= t, s[3] = sd__rotl(s[3], 45);
  return r;
}

void nq_sd_randn(uint64_t seed, float *out, size_t n) {
  uint64_t sm = seed, s[4];
  for (int i = 0; i < 4; i++) s[i] = sd__splitmix64(&sm);
  const double two_pi = 6.283185307179586476925286766559;
  for (size_t i = 0; i < n; i += 2) {
    double u1 = (double)(sd__xoshiro(s) >> 11) * 0x1.0p-53, u2 = (double)(sd__xoshiro(s) >> 11) * 0x1.0p-53;
    double r = sqrt(-2.0 * log(1.0 - u1));
    out[i] = (float)(r * cos(two_pi * u2));
    if (i + 1 < n) out[i + 1] = (float)(r * sin(two_pi * u2));
  }
}

/* ---- small helpers ----------------------------------------------------------------------------------------- */

static double sd__now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static bool sd__is_file(const char *p) {
  struct stat st;
  return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}
static bool sd__is_dir(const char *p) {
  struct stat st;
  return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static int sd__join(char *out, size_t cap, const char *a, const char *b, nq_err_t *err) {
  int n = snprintf(out, cap, "%s/%s", a, b);
  if (n < 0 || (size_t)n >= cap) return nq_err_set(err, NQ_ELIMIT, NQ_ERR_FATAL, "sd: path too long: %s/%s", a, b);
  return 0;
}

/* A token string of the tokenizer config (plain string or {"content": ...}). */
static const char *sd__tok_str(json_t *v) {
  if (json_is_string(v)) return json_string_value(v);
  return json_string_value(json_object_get(v, "content"));
}

/* The pad id from the tokenizer's special_tokens_map.json (which transformers lets override tokenizer_config.json),
 * else tokenizer_config.json; the token string is looked up in vocab.json. SD-1.x: "<|endoftext|>" -> 49407;
 * SD-2: "!" -> 0. No config: the end token (CLIPTokenizer's default pad_token). */
static int sd__pad_id(const char *tokpath, const nq_clip_tok_t *tok) {
  int eos = nq_clip_tok_eos(tok), bos = nq_clip_tok_bos(tok);
  char dir[SD_PATH_MAX], p[SD_PATH_MAX + 64];
  if (sd__is_dir(tokpath)) {
    snprintf(p, sizeof p, "%s/tokenizer", tokpath);
    snprintf(dir, sizeof dir, "%s", sd__is_dir(p) ? p : tokpath);
  } else {
    snprintf(dir, sizeof dir, "%s", tokpath);
    char *sl = strrchr(dir, '/');
    if (sl) *sl = 0;
    else snprintf(dir, sizeof dir, ".");
  }
  const char *files[2] = {"special_tokens_map.json", "tokenizer_config.json"};
  char pad[256] = "";
  for (int i = 0; i < 2 && !pad[0]; i++) {
    snprintf(p, sizeof p, "%s/%s", dir, files[i]);
    json_t *j = sd__is_file(p) ? json_load_file(p, 0, NULL) : NULL;
    const char *s = sd__tok_str(json_object_get(j, "pad_token"));
    if (s) snprintf(pad, sizeof pad, "%s", s);
    json_decref(j);
  }
  if (!pad[0] || !strcmp(pad, "<|endoftext|>")) return eos;
  if (!strcmp(pad, "<|startoftext|>")) return bos;
  snprintf(p, sizeof p, "%s/vocab.json", dir);
  json_t *v = sd__is_file(p) ? json_load_file(p, 0, NULL) : NULL;
  json_t *id = json_object_get(v, pad);
  int r = json_is_integer(id) && json_integer_value(id) >= 0 && json_integer_value(id) < nq_clip_tok_vocab_size(tok)
              ? (int)json_integer_value(id)
              : eos;
  if (!json_is_integer(id)) NQ_WARN("sd", "pad_token '%s' not in %s; padding with the end token", pad, p);
  json_decref(v);
  return r;
}

/* ---- built-in SD-1.5 configs (runwayml/stable-diffusion-v1-5) for single files without configs ---------------- */

static const char sd__unet15_json[] =
    "{\"_class_name\":\"UNet2DConditionModel\",\"act_fn\":\"silu\",\"attention_head_dim\":8,"
    "\"block_out_channels\":[320,640,1280,1280],\"center_input_sample\":false,\"cross_attention_dim\":768,"
    "\"down_block_types\":[\"CrossAttnDownBlock2D\",\"CrossAttnDownBlock2D\",\"CrossAttnDownBlock2D\",\"DownBlock2D\"],"
    "\"downsample_padding\":1,\"flip_sin_to_cos\":true,\"freq_shift\":0,\"in_channels\":4,\"layers_per_block\":2,"
    "\"mid_block_scale_factor\":1,\"norm_eps\":1e-05,\"norm_num_groups\":32,\"out_channels\":4,\"sample_size\":64,"
    "\"up_block_types\":[\"UpBlock2D\",\"CrossAttnUpBlock2D\",\"CrossAttnUpBlock2D\",\"CrossAttnUpBlock2D\"]}";
static const char sd__vae15_json[] =
    "{\"_class_name\":\"AutoencoderKL\",\"act_fn\":\"silu\",\"block_out_channels\":[128,256,512,512],"
    "\"down_block_types\":[\"DownEncoderBlock2D\",\"DownEncoderBlock2D\",\"DownEncoderBlock2D\",\"DownEncoderBlock2D\"],"
    "\"in_channels\":3,\"latent_channels\":4,\"layers_per_block\":2,\"norm_num_groups\":32,\"out_channels\":3,"
    "\"sample_size\":512,\"scaling_factor\":0.18215,"
    "\"up_block_types\":[\"UpDecoderBlock2D\",\"UpDecoderBlock2D\",\"UpDecoderBlock2D\",\"UpDecoderBlock2D\"]}";

static void sd__sched_sd15(nq_sched_config_t *c, nq_sched_kind_t kind) {
  nq_sched_config_init(c, kind);
  c->num_train_timesteps = 1000;
  c->beta_start = 0.00085, c->beta_end = 0.012;
  c->beta_schedule = NQ_BETAS_SCALED_LINEAR;
  c->steps_offset = 1;
  c->set_alpha_to_one = false;
  c->skip_prk_steps = true;
  c->clip_sample = false;
}

static const char *sd__kind_name(nq_sched_kind_t k) {
  return k == NQ_SCHED_DDIM ? "ddim" : k == NQ_SCHED_PNDM ? "pndm" : "euler";
}

/* The scheduler config for kind (NULL = the default). */
static int sd__sched_config(const nq_sd_t *sd, const char *kind, nq_sched_config_t *c, nq_err_t *err) {
  if (!kind || !*kind) {
    *c = sd->sched;
    return 0;
  }
  int k = nq_sched_kind_parse(kind);
  if (k < 0) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "sd: scheduler '%s' (want ddim, pndm or euler)", kind);
  if (sd->sched_path[0]) return nq_sched_config_load(sd->sched_path, kind, c, err);
  sd__sched_sd15(c, (nq_sched_kind_t)k);
  return 0;
}

/* ---- loading ----------------------------------------------------------------------------------------------- */

void nq_sd_opts_init(nq_sd_opts_t *o) {
  memset(o, 0, sizeof *o);
  o->wdtype = -1;
  o->conv_wdtype = -1;
  o->vae_wdtype = NQ_DT_F32;
}

void nq_sd_free(nq_sd_t *sd) {
  if (!sd) return;
  nq_unet2d_free(sd->unet);
  nq_vae_free(sd->vae);
  nq_taesd_free(sd->taesd);
  nq_sd_text_free(sd->text);
  pthread_mutex_destroy(&sd->mu);
  free(sd);
}

static int sd__write_file(const char *path, const char *text, nq_err_t *err) {
  FILE *f = fopen(path, "wb");
  if (!f) return nq_err_set(err, NQ_EIO, NQ_ERR_RETRIABLE, "sd: cannot write %s: %s", path, strerror(errno));
  size_t n = strlen(text);
  bool ok = fwrite(text, 1, n, f) == n;
  ok = (fclose(f) == 0) && ok;
  return ok ? 0 : nq_err_set(err, NQ_EIO, NQ_ERR_RETRIABLE, "sd: cannot write %s", path);
}

/* LDM single file: the VAE tensors (first_stage_model.*) renamed to diffusers names into tmpdir/, beside
 * vae_config (a path, or NULL for the built-in SD-1.5 config). Then nq_vae_open on it. */
static int sd__open_ldm_vae(const char *ckpt, const char *vae_config, const char *tmpdir, nq_dtype_t wdt,
                            const char *backends, nq_vae_t **out, nq_err_t *err) {
  char cfgp[SD_PATH_MAX], wp[SD_PATH_MAX];
  int rc = sd__join(cfgp, sizeof cfgp, tmpdir, "config.json", err);
  if (!rc) rc = sd__join(wp, sizeof wp, tmpdir, "diffusion_pytorch_model.safetensors", err);
  if (rc) return rc;
  int L = 4;
  json_t *cj = NULL;
  if (vae_config) {
    json_error_t je;
    cj = json_load_file(vae_config, 0, &je);
    if (!cj) return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s:%d: %s", vae_config, je.line, je.text);
    json_t *boc = json_object_get(cj, "block_out_channels");
    if (json_is_array(boc) && json_array_size(boc) >= 1 && json_array_size(boc) <= NQ_VAE_MAX_LEVELS)
      L = (int)json_array_size(boc);
    char *s = json_dumps(cj, 0);
    json_decref(cj);
    rc = s ? sd__write_file(cfgp, s, err) : nq_err_set(err, NQ_ENOMEM, 0, "sd: out of memory");
    free(s);
  } else {
    rc = sd__write_file(cfgp, sd__vae15_json, err);
  }
  if (rc) return rc;
  nq_st_file_t *f = NULL;
  if ((rc = nq_st_open(ckpt, &f, err))) return rc;
  nq_st_writer_t *w = nq_st_writer_new();
  if (!w) rc = nq_err_set(err, NQ_ENOMEM, 0, "sd: out of memory");
  size_t n = nq_st_count(f), copied = 0;
  const size_t pl = strlen(NQ_VAE_LDM_PREFIX);
  for (size_t i = 0; i < n && !rc; i++) {
    const nq_st_tensor_t *t = nq_st_get(f, i);
    if (strncmp(t->name, NQ_VAE_LDM_PREFIX, pl)) continue;
    char dn[512];
    int mr = nq_vae_ldm_to_diffusers(t->name, L, dn, sizeof dn);
    if (mr == NQ_ENOENT) {
      NQ_DEBUG("sd", "%s: VAE tensor %s has no diffusers name; ignored", ckpt, t->name);
      continue;
    }
    if (mr) rc = nq_err_set(err, mr, NQ_ERR_FATAL, "%s: VAE tensor name %s", ckpt, t->name);
    else rc = nq_st_writer_add(w, dn, t->dtype, t->ndim, t->shape, t->data, err);
    copied++;
  }
  if (!rc && copied == 0)
    rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: no %s* (VAE) tensors", ckpt, NQ_VAE_LDM_PREFIX);
  if (!rc) rc = nq_st_writer_save(w, wp, err);
  nq_st_writer_free(w);
  nq_st_close(f);
  if (!rc) rc = nq_vae_open(tmpdir, wdt, backends, out, err);
  if (rc) nq_err_prefix(err, "%s (LDM VAE)", ckpt);
  unlink(wp);
  unlink(cfgp);
  return rc;
}

/* text_encoder/config.json hints for an LDM file (heads, activation); missing file = CLIP-L defaults. */
static void sd__clip_hints(const char *cfgdir, nq_clip_text_load_opts_t *o, char *act, size_t act_cap) {
  if (!cfgdir) return;
  char p[SD_PATH_MAX + 64];
  snprintf(p, sizeof p, "%s/text_encoder/config.json", cfgdir);
  json_t *j = sd__is_file(p) ? json_load_file(p, 0, NULL) : NULL;
  json_t *h = json_object_get(j, "num_attention_heads");
  if (json_is_integer(h) && json_integer_value(h) > 0 && json_integer_value(h) < 1024) o->n_heads = (int)json_integer_value(h);
  const char *a = json_string_value(json_object_get(j, "hidden_act"));
  if (a) {
    snprintf(act, act_cap, "%s", a);
    o->hidden_act = act;
  }
  json_decref(j);
}

static int sd__unet_sample_size(const char *cfg) {
  json_t *j = json_load_file(cfg, 0, NULL);
  json_t *s = json_object_get(j, "sample_size");
  int v = json_is_integer(s) && json_integer_value(s) > 0 && json_integer_value(s) <= 1024 ? (int)json_integer_value(s)
                                                                                            : 64;
  json_decref(j);
  return v;
}

/* An existing "<dir>/<rel>" into out, else "". */
static void sd__find(char *out, size_t cap, const char *dir, const char *rel) {
  out[0] = 0;
  if (!dir) return;
  char p[SD_PATH_MAX + 128];
  snprintf(p, sizeof p, "%s/%s", dir, rel);
  if (sd__is_file(p) || sd__is_dir(p)) snprintf(out, cap, "%s", p);
}

int nq_sd_open(const char *path, const nq_sd_opts_t *opts, nq_sd_t **out, nq_err_t *err) {
  *out = NULL;
  nq_sd_opts_t dflt;
  if (!opts) nq_sd_opts_init(&dflt), opts = &dflt;
  if (!path || !*path) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "sd: no model path");
  bool single = sd__is_file(path);
  if (!single && !sd__is_dir(path)) return nq_err_set(err, NQ_ENOENT, NQ_ERR_FATAL, "sd: %s: no such model", path);
  nq_sd_t *sd = calloc(1, sizeof *sd);
  if (!sd) return nq_err_set(err, NQ_ENOMEM, 0, "sd: out of memory");
  pthread_mutex_init(&sd->mu, NULL);
  int rc = 0;
  char cfgdir[SD_PATH_MAX] = "", tmpdir[64] = "", unet_cfg[SD_PATH_MAX] = "", p[SD_PATH_MAX];

  /* where the configs are */
  if (!single) snprintf(cfgdir, sizeof cfgdir, "%s", path);
  else if (opts->config_dir) snprintf(cfgdir, sizeof cfgdir, "%s", opts->config_dir);
  else {
    snprintf(p, sizeof p, "%s", path);
    char *sl = strrchr(p, '/');
    if (sl) *sl = 0;
    else snprintf(p, sizeof p, ".");
    char probe[SD_PATH_MAX + 64];
    snprintf(probe, sizeof probe, "%s/unet/config.json", p);
    if (sd__is_file(probe)) snprintf(cfgdir, sizeof cfgdir, "%s", p);
  }

  /* UNet */
  nq_unet2d_opts_t uo;
  nq_unet2d_opts_init(&uo);
  uo.backends = opts->backends, uo.wdtype = opts->wdtype, uo.conv_wdtype = opts->conv_wdtype;
  if (single) {
    snprintf(tmpdir, sizeof tmpdir, "%s/nq-sd-XXXXXX", "/tmp");
    const char *td = getenv("TMPDIR");
    if (td && *td && strlen(td) < 40) snprintf(tmpdir, sizeof tmpdir, "%s/nq-sd-XXXXXX", td);
    if (!mkdtemp(tmpdir)) {
      rc = nq_err_set(err, NQ_EIO, NQ_ERR_RETRIABLE, "sd: mkdtemp %s: %s", tmpdir, strerror(errno));
      tmpdir[0] = 0;
      goto out;
    }
    sd__find(unet_cfg, sizeof unet_cfg, cfgdir[0] ? cfgdir : NULL, "unet/config.json");
    if (!unet_cfg[0]) {
      snprintf(unet_cfg, sizeof unet_cfg, "%s/unet_config.json", tmpdir);
      if ((rc = sd__write_file(unet_cfg, sd__unet15_json, err))) goto out;
    }
    uo.config = unet_cfg;
  } else {
    sd__find(unet_cfg, sizeof unet_cfg, path, "unet/config.json");
    if (!unet_cfg[0]) sd__find(unet_cfg, sizeof unet_cfg, path, "config.json");
  }
  if ((rc = nq_unet2d_load(path, &uo, &sd->unet, err))) goto out;
  nq_unet2d_get_info(sd->unet, &sd->uinfo);
  sd->sample_size = unet_cfg[0] ? sd__unet_sample_size(unet_cfg) : 64;
  if (sd->uinfo.class_in_dim > 0 || !sd->uinfo.needs_ehs) {
    rc = nq_err_set(err, NQ_EUNSUPPORTED, NQ_ERR_FATAL, "sd: %s: the UNet takes class labels / no text (AudioLDM?)", path);
    goto out;
  }

  /* VAE */
  if (single) {
    char vcfg[SD_PATH_MAX];
    sd__find(vcfg, sizeof vcfg, cfgdir[0] ? cfgdir : NULL, "vae/config.json");
    rc = sd__open_ldm_vae(path, vcfg[0] ? vcfg : NULL, tmpdir, (nq_dtype_t)opts->vae_wdtype, opts->backends, &sd->vae,
                          err);
  } else {
    rc = nq_vae_open(path, (nq_dtype_t)opts->vae_wdtype, opts->backends, &sd->vae, err);
  }
  if (rc) goto out;
  if (!nq_vae_has_decoder(sd->vae)) {
    rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "sd: %s: the VAE has no decoder", path);
    goto out;
  }
  const nq_vae_config_t *vc = nq_vae_config(sd->vae);
  sd->vae_scale = 1 << (vc->n_levels - 1);
  sd->scaling = vc->scaling_factor > 0 ? vc->scaling_factor : 0.18215f;
  if (vc->latent_channels != sd->uinfo.in_channels || sd->uinfo.out_channels != sd->uinfo.in_channels) {
    rc = nq_err_set(err, NQ_ESHAPE, NQ_ERR_FATAL, "sd: %s: VAE latent channels %d vs UNet in/out %d/%d", path,
                    vc->latent_channels, sd->uinfo.in_channels, sd->uinfo.out_channels);
    goto out;
  }

  /* text encoder + tokenizer */
  if (!opts->no_text_encoder) {
    char tep[SD_PATH_MAX];
    nq_sd_opts_t to = *opts;
    if (single) {
      snprintf(tep, sizeof tep, "%s", path);
      to.config_dir = cfgdir[0] ? cfgdir : NULL;
    } else {
      sd__find(tep, sizeof tep, path, "text_encoder");
    }
    if (tep[0]) {
      /* a pipeline dir: nq_sd_text_open finds text_encoder/ + tokenizer/ itself */
      if ((rc = nq_sd_text_open(single ? tep : path, &to, &sd->text, err))) goto out;
      if (nq_sd_text_dim(sd->text) != sd->uinfo.cross_attention_dim) {
        rc = nq_err_set(err, NQ_ESHAPE, NQ_ERR_FATAL, "sd: %s: text encoder width %d vs UNet cross_attention_dim %d",
                        tep, nq_sd_text_dim(sd->text), sd->uinfo.cross_attention_dim);
        goto out;
      }
    }
  }

  /* scheduler */
  sd__find(sd->sched_path, sizeof sd->sched_path, cfgdir[0] ? cfgdir : NULL, "scheduler/scheduler_config.json");
  if (sd->sched_path[0]) rc = nq_sched_config_load(sd->sched_path, opts->scheduler, &sd->sched, err);
  else {
    int k = opts->scheduler ? nq_sched_kind_parse(opts->scheduler) : NQ_SCHED_PNDM;
    if (k < 0) rc = nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "sd: scheduler '%s'", opts->scheduler);
    else sd__sched_sd15(&sd->sched, (nq_sched_kind_t)k);
  }
  if (rc) goto out;
  snprintf(sd->sched_name, sizeof sd->sched_name, "%s", sd__kind_name(sd->sched.kind));

  /* TAESD */
  if (opts->taesd) {
    if ((rc = nq_taesd_open(opts->taesd, (nq_dtype_t)opts->vae_wdtype, opts->backends, &sd->taesd, err))) goto out;
    if (!nq_taesd_has_decoder(sd->taesd)) {
      rc = nq_err_set(err, NQ_ENOENT, NQ_ERR_FATAL, "sd: %s: no taesd_decoder", opts->taesd);
      goto out;
    }
    if (sd->uinfo.in_channels != 4 || sd->vae_scale != 8) {
      rc = nq_err_set(err, NQ_ESHAPE, NQ_ERR_FATAL, "sd: TAESD needs 4 latent channels at 1/8 scale");
      goto out;
    }
  }
  NQ_INFO("sd", "loaded %s: cross_attention_dim %d, %s, text encoder %s, scheduler %s, TAESD %s", path,
          sd->uinfo.cross_attention_dim, single ? "LDM single file" : "diffusers dir", sd->text ? "yes" : "no",
          sd->sched_name, sd->taesd ? "yes" : "no");
out:
  if (tmpdir[0]) {
    if (single && unet_cfg[0] && !strncmp(unet_cfg, tmpdir, strlen(tmpdir))) unlink(unet_cfg);
    rmdir(tmpdir);
  }
  if (rc) {
    nq_err_prefix(err, "sd");
    nq_sd_free(sd);
    return rc;
  }
  *out = sd;
  return 0;
}

void nq_sd_get_info(const nq_sd_t *sd, nq_sd_info_t *info) {
  memset(info, 0, sizeof *info);
  info->cross_attention_dim = sd->uinfo.cross_attention_dim;
  info->latent_channels = sd->uinfo.in_channels;
  info->vae_scale = sd->vae_scale;
  info->default_height = info->default_width = sd->sample_size * sd->vae_scale;
  info->scaling_factor = sd->scaling;
  info->pad_id = sd->text && sd->text->tok ? sd->text->pad_id : -1;
  info->has_text_encoder = sd->text != NULL;
  info->has_taesd = sd->taesd != NULL;
  snprintf(info->scheduler, sizeof info->scheduler, "%s", sd->sched_name);
}

/* ---- text conditioning --------------------------------------------------------------------------------------- */

/* ids for text (NULL/"" without a tokenizer: start, end, padding). */
static int sd__tokenize(const nq_sd_text_t *t, const char *text, int64_t *ids, nq_err_t *err) {
  const int T = NQ_SD_MAX_TOKENS;
  if (!t->tok) {
    if (text && *text)
      return nq_err_set(err, NQ_EUNSUPPORTED, NQ_ERR_FATAL, "sd: a text prompt needs a tokenizer (none loaded)");
    ids[0] = t->bos, ids[1] = t->eos;
    for (int i = 2; i < T; i++) ids[i] = t->pad_id;
    return 0;
  }
  int32_t buf[NQ_SD_MAX_TOKENS];
  const char *s = text ? text : "";
  int rc = nq_clip_tok_encode(t->tok, s, strlen(s), T, t->pad_id, buf, NULL, err);
  if (rc) return rc;
  for (int i = 0; i < T; i++) ids[i] = buf[i];
  return 0;
}

int nq_sd_text_encode(nq_sd_text_t *t, const char *const *texts, int n, float *out, nq_err_t *err) {
  if (!t || !texts || n < 1 || !out) return nq_err_set(err, NQ_EINVAL, 0, "sd text: bad arguments");
  const int T = NQ_SD_MAX_TOKENS;
  int64_t *ids = malloc(sizeof(int64_t) * (size_t)n * T);
  if (!ids) return nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "sd text: out of memory for %d prompts", n);
  int rc = 0;
  for (int i = 0; i < n && !rc; i++)
    if ((rc = sd__tokenize(t, texts[i], ids + (size_t)i * T, err))) nq_err_prefix(err, "prompt %d", i);
  if (!rc) {
    pthread_mutex_lock(&t->mu);
    rc = nq_clip_text_forward(t->te, ids, n, T, out, NULL, err);
    pthread_mutex_unlock(&t->mu);
  }
  free(ids);
  return rc;
}

int nq_sd_text_dim(const nq_sd_text_t *t) { return t ? t->te->cfg.hidden : 0; }
int nq_sd_text_pad_id(const nq_sd_text_t *t) { return t ? t->pad_id : -1; }

void nq_sd_text_free(nq_sd_text_t *t) {
  if (!t) return;
  nq_clip_text_free(t->te);
  nq_clip_tok_free(t->tok);
  pthread_mutex_destroy(&t->mu);
  free(t);
}

/* Whether dir holds CLIP tokenizer files. */
static bool sd__has_tok_files(const char *dir) {
  char p[SD_PATH_MAX + 64];
  snprintf(p, sizeof p, "%s/vocab.json", dir);
  if (sd__is_file(p)) return true;
  snprintf(p, sizeof p, "%s/bpe_simple_vocab_16e6.txt.gz", dir);
  return sd__is_file(p);
}

int nq_sd_text_open(const char *path, const nq_sd_opts_t *opts, nq_sd_text_t **out, nq_err_t *err) {
  *out = NULL;
  nq_sd_opts_t dflt;
  if (!opts) nq_sd_opts_init(&dflt), opts = &dflt;
  if (!path || !*path) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "sd text: no model path");
  bool file = sd__is_file(path);
  if (!file && !sd__is_dir(path)) return nq_err_set(err, NQ_ENOENT, NQ_ERR_FATAL, "sd text: %s: no such model", path);
  nq_sd_text_t *t = calloc(1, sizeof *t);
  if (!t) return nq_err_set(err, NQ_ENOMEM, 0, "sd text: out of memory");
  pthread_mutex_init(&t->mu, NULL);
  t->bos = SD_BOS, t->eos = SD_EOS, t->pad_id = SD_EOS;
  char tep[SD_PATH_MAX], tp[SD_PATH_MAX] = "", act[32];
  nq_clip_text_load_opts_t co;
  nq_clip_text_load_opts_init(&co);
  co.backends = opts->backends, co.wdtype = opts->wdtype;
  if (file) {
    snprintf(tep, sizeof tep, "%s", path);
    sd__clip_hints(opts->config_dir, &co, act, sizeof act);
    if (!opts->tokenizer) sd__find(tp, sizeof tp, opts->config_dir, "tokenizer");
  } else {
    sd__find(tep, sizeof tep, path, "text_encoder");
    if (tep[0]) {
      if (!opts->tokenizer) sd__find(tp, sizeof tp, path, "tokenizer");
    } else {
      snprintf(tep, sizeof tep, "%s", path);
      if (!opts->tokenizer && sd__has_tok_files(path)) snprintf(tp, sizeof tp, "%s", path);
    }
  }
  if (opts->tokenizer) snprintf(tp, sizeof tp, "%s", opts->tokenizer);
  int rc = nq_clip_text_load(tep, &co, &t->te, err);
  if (!rc && t->te->cfg.max_pos < NQ_SD_MAX_TOKENS)
    rc = nq_err_set(err, NQ_ESHAPE, NQ_ERR_FATAL, "sd text: %s: context %d < 77 tokens", tep, t->te->cfg.max_pos);
  if (!rc && tp[0]) {
    rc = nq_clip_tok_open(tp, &t->tok, err);
    if (!rc) {
      t->pad_id = sd__pad_id(tp, t->tok);
      t->bos = nq_clip_tok_bos(t->tok), t->eos = nq_clip_tok_eos(t->tok);
      if (t->te->cfg.vocab_size < nq_clip_tok_vocab_size(t->tok))
        rc = nq_err_set(err, NQ_ESHAPE, NQ_ERR_FATAL, "sd text: %s: vocabulary %d < the tokenizer's %d", tep,
                        t->te->cfg.vocab_size, nq_clip_tok_vocab_size(t->tok));
    }
  }
  if (rc) {
    nq_sd_text_free(t);
    return rc;
  }
  *out = t;
  return 0;
}

/* n texts -> out [n, 77, D]. */
static int sd__encode(nq_sd_t *sd, const char *const *texts, int n, float *out, nq_err_t *err) {
  if (!sd->text) return nq_err_set(err, NQ_EUNSUPPORTED, NQ_ERR_FATAL, "sd: no text encoder loaded");
  return nq_sd_text_encode(sd->text, texts, n, out, err);
}

int nq_sd_encode_text(nq_sd_t *sd, const char *const *texts, int n, float *out, nq_err_t *err) {
  if (!sd || !texts || n < 1 || !out) return nq_err_set(err, NQ_EINVAL, 0, "sd encode: bad arguments");
  pthread_mutex_lock(&sd->mu);
  int rc = sd__encode(sd, texts, n, out, err);
  pthread_mutex_unlock(&sd->mu);
  return rc;
}

/* ---- decoding ------------------------------------------------------------------------------------------------ */

/* [1,3,H,W] F32 -> RGB8 with diffusers' mapping: raw ? x : x/2 + 0.5, clamp [0,1], round-half-even(x*255). */
static int sd__to_rgb(const nq_tensor_t *img, bool from_pm1, uint8_t **rgb, nq_err_t *err) {
  const int64_t H = img->ne[2], W = img->ne[3], plane = H * W;
  uint8_t *o = malloc((size_t)(plane * 3));
  if (!o) return nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "sd: out of memory for a %lldx%lld image",
                            (long long)W, (long long)H);
  const float *x = img->data;
  for (int c = 0; c < 3; c++)
    for (int64_t i = 0; i < plane; i++) {
      float v = x[c * plane + i];
      if (from_pm1) v = v / 2.0f + 0.5f;
      v = v < 0.0f ? 0.0f : v > 1.0f ? 1.0f : v; /* NaN stays NaN: caught below */
      if (!(v == v)) v = 0.0f;
      o[i * 3 + c] = (uint8_t)nearbyintf(v * 255.0f);
    }
  *rgb = o;
  return 0;
}

/* latents [C,h,w] (the UNet's scale) -> RGB8 through the VAE (divides by scaling_factor) or TAESD. */
static int sd__decode(nq_sd_t *sd, const float *lat, int h, int w, bool taesd, uint8_t **rgb, nq_err_t *err) {
  const int C = sd->uinfo.in_channels;
  const int64_t n = (int64_t)C * h * w;
  nq_tensor_t z = {0}, img = {0};
  int rc = nq_tensor_init(&z, NQ_DT_F32, 4, NQ_SHAPE(1, C, h, w), err);
  if (rc) return rc;
  float *zd = z.data;
  if (taesd) memcpy(zd, lat, sizeof(float) * (size_t)n);
  else
    for (int64_t i = 0; i < n; i++) zd[i] = lat[i] / sd->scaling;
  rc = taesd ? nq_taesd_decode(sd->taesd, &z, &img, err) : nq_vae_decode(sd->vae, &z, &img, err);
  nq_tensor_deinit(&z);
  if (!rc && (img.ndim != 4 || img.ne[1] != 3))
    rc = nq_err_set(err, NQ_ESHAPE, 0, "sd: decoder output has %lld channels", (long long)img.ne[1]);
  if (!rc) rc = sd__to_rgb(&img, !taesd, rgb, err);
  nq_tensor_deinit(&img);
  return rc;
}

int nq_sd_decode_latents(nq_sd_t *sd, const float *latents, int h, int w, bool taesd, uint8_t **rgb, nq_err_t *err) {
  *rgb = NULL;
  if (!sd || !latents || h < 1 || w < 1 || h * sd->vae_scale > NQ_SD_MAX_SIDE || w * sd->vae_scale > NQ_SD_MAX_SIDE)
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "sd decode: bad latent size %dx%d", w, h);
  if (taesd && !sd->taesd) return nq_err_set(err, NQ_EUNSUPPORTED, NQ_ERR_FATAL, "sd decode: no TAESD loaded");
  pthread_mutex_lock(&sd->mu);
  int rc = sd__decode(sd, latents, h, w, taesd, rgb, err);
  pthread_mutex_unlock(&sd->mu);
  return rc;
}

/* ---- generation ---------------------------------------------------------------------------------------------- */

void nq_sd_request_init(nq_sd_request_t *r) {
  memset(r, 0, sizeof *r);
  r->steps = 50;
  r->guidance_scale = 7.5f;
}

void nq_sd_result_deinit(nq_sd_result_t *r) {
  if (!r) return;
  free(r->rgb);
  free(r->latents);
  memset(r, 0, sizeof *r);
}

typedef struct {
  nq_sd_t *sd;
  const nq_sd_request_t *req;
  const nq_tensor_t *lat;  /* the loop's latents (updated in place) */
  const nq_sched_t *sched;
  int lh, lw;
  int canceled;
  nq_err_t perr;           /* a preview decode error (reported, the run goes on) */
} sd__prog_t;

/* Report `done` finished evaluations (with a preview when due). Returns non-zero to cancel. */
static int sd__report(sd__prog_t *p, int done, int n) {
  const nq_sd_request_t *r = p->req;
  if (!r->progress) return 0;
  nq_sd_progress_t pr = {.step = done, .n_steps = n, .timestep = nq_sched_timestep(p->sched, done - 1)};
  uint8_t *rgb = NULL;
  if (r->preview_every > 0 && p->sd->taesd && done % r->preview_every == 0 && done < n) {
    nq_err_t e = {0};
    if (sd__decode(p->sd, p->lat->data, p->lh, p->lw, true, &rgb, &e) == 0) {
      pr.preview = rgb, pr.preview_w = p->lw * 8, pr.preview_h = p->lh * 8;
    } else if (!p->perr.code) {
      p->perr = e;
    }
  }
  int stop = r->progress(r->progress_ud, &pr);
  free(rgb);
  return stop;
}

static int sd__progress(void *ud, int call, int n_calls, float t) {
  (void)t;
  sd__prog_t *p = ud;
  if (call == 0) return 0;
  if (sd__report(p, call, n_calls)) {
    p->canceled = 1;
    return 1;
  }
  return 0;
}

/* Validates the request; fills the resolved size. */
static int sd__check(const nq_sd_t *sd, const nq_sd_request_t *r, int *H, int *W, nq_err_t *err) {
  const int D = sd->uinfo.cross_attention_dim;
  int mult = sd->vae_scale * (sd->uinfo.downscale > 0 ? sd->uinfo.downscale : 1);
  *H = r->height > 0 ? r->height : sd->sample_size * sd->vae_scale;
  *W = r->width > 0 ? r->width : sd->sample_size * sd->vae_scale;
  if (r->height < 0 || r->width < 0 || *H > NQ_SD_MAX_SIDE || *W > NQ_SD_MAX_SIDE || *H % mult || *W % mult)
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "sd: height/width %dx%d: need multiples of %d up to %d", *H, *W,
                      mult, NQ_SD_MAX_SIDE);
  if (r->steps < 1 || r->steps > NQ_SD_MAX_STEPS)
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "sd: steps %d (1..%d)", r->steps, NQ_SD_MAX_STEPS);
  if (!isfinite(r->guidance_scale) || r->guidance_scale < 0 || r->guidance_scale > 100)
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "sd: guidance_scale %g (0..100)", (double)r->guidance_scale);
  if (r->preview_every < 0) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "sd: preview_every %d", r->preview_every);
  bool have_emb = r->prompt_embeds != NULL;
  if (have_emb && r->prompt)
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "sd: give either prompt or prompt_embeds, not both");
  if (have_emb) {
    if (r->embeds_dim != D || r->embeds_tokens < 1 || r->embeds_tokens > NQ_SD_MAX_TOKENS)
      return nq_err_set(err, NQ_ESHAPE, NQ_ERR_FATAL, "sd: prompt_embeds [%d, %d]: the UNet wants [<=77, %d]",
                        r->embeds_tokens, r->embeds_dim, D);
  } else if (!sd->text) {
    return nq_err_set(err, NQ_EUNSUPPORTED, NQ_ERR_FATAL, "sd: no text encoder loaded: give prompt_embeds");
  } else if (r->prompt && !sd->text->tok && *r->prompt) {
    return nq_err_set(err, NQ_EUNSUPPORTED, NQ_ERR_FATAL, "sd: no tokenizer loaded: give prompt_embeds");
  }
  bool cfg = r->guidance_scale > 1.0f;
  if (cfg && have_emb && !r->negative_embeds) {
    if (!sd->text)
      return nq_err_set(err, NQ_EUNSUPPORTED, NQ_ERR_FATAL,
                        "sd: guidance needs negative_embeds or a text encoder for the unconditional \"\"");
    if (r->embeds_tokens != NQ_SD_MAX_TOKENS)
      return nq_err_set(err, NQ_ESHAPE, NQ_ERR_FATAL, "sd: prompt_embeds has %d tokens; CLIP(\"\") has 77",
                        r->embeds_tokens);
  }
  if (r->negative_prompt && *r->negative_prompt && (!sd->text || !sd->text->tok))
    return nq_err_set(err, NQ_EUNSUPPORTED, NQ_ERR_FATAL, "sd: a negative prompt needs a tokenizer");
  return 0;
}

/* ehs [M, L, D] for the request (M = 2 under guidance: [uncond, cond]). */
static int sd__conditioning(nq_sd_t *sd, const nq_sd_request_t *r, bool cfg, nq_tensor_t *ehs, nq_err_t *err) {
  const int D = sd->uinfo.cross_attention_dim;
  const int L = r->prompt_embeds ? r->embeds_tokens : NQ_SD_MAX_TOKENS;
  const int M = cfg ? 2 : 1;
  int rc = nq_tensor_init(ehs, NQ_DT_F32, 3, NQ_SHAPE(M, L, D), err);
  if (rc) return rc;
  float *e = ehs->data, *cond = e + (cfg ? (size_t)L * D : 0);
  const size_t row = (size_t)L * D;
  if (r->prompt_embeds) {
    memcpy(cond, r->prompt_embeds, sizeof(float) * row);
    for (size_t i = 0; i < row; i++)
      if (!isfinite(cond[i]))
        return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "sd: prompt_embeds[%zu] is not finite", i);
    if (cfg) {
      if (r->negative_embeds) memcpy(e, r->negative_embeds, sizeof(float) * row);
      else {
        const char *neg = r->negative_prompt ? r->negative_prompt : "";
        rc = sd__encode(sd, &neg, 1, e, err);
      }
    }
    return rc;
  }
  if (cfg) {
    const char *both[2] = {r->negative_prompt ? r->negative_prompt : "", r->prompt ? r->prompt : ""};
    return sd__encode(sd, both, 2, e, err);
  }
  const char *p = r->prompt ? r->prompt : "";
  return sd__encode(sd, &p, 1, e, err);
}

int nq_sd_generate(nq_sd_t *sd, const nq_sd_request_t *r, nq_sd_result_t *out, nq_err_t *err) {
  memset(out, 0, sizeof *out);
  if (!sd || !r) return nq_err_set(err, NQ_EINVAL, 0, "sd: no pipeline/request");
  int H, W;
  int rc = sd__check(sd, r, &H, &W, err);
  if (rc) return rc;
  const int C = sd->uinfo.in_channels, lh = H / sd->vae_scale, lw = W / sd->vae_scale;
  const bool cfg = r->guidance_scale > 1.0f;
  nq_sched_config_t scfg;
  if ((rc = sd__sched_config(sd, r->scheduler, &scfg, err))) return rc;
  nq_sched_t *sched = NULL;
  nq_tensor_t ehs = {0}, lat = {0};
  pthread_mutex_lock(&sd->mu);
  double t0 = sd__now();
  rc = nq_sched_new(&scfg, r->steps, &sched, err);
  if (!rc) rc = sd__conditioning(sd, r, cfg, &ehs, err);
  double t1 = sd__now();
  if (!rc) rc = nq_tensor_init(&lat, NQ_DT_F32, 4, NQ_SHAPE(1, C, lh, lw), err);
  sd__prog_t prog = {.sd = sd, .req = r, .lat = &lat, .sched = sched, .lh = lh, .lw = lw};
  if (!rc) {
    const int64_t n = (int64_t)C * lh * lw;
    float *x = lat.data;
    if (r->latents) memcpy(x, r->latents, sizeof(float) * (size_t)n);
    else nq_sd_randn(r->seed, x, (size_t)n);
    const float s0 = nq_sched_init_noise_sigma(sched);
    for (int64_t i = 0; i < n; i++) x[i] *= s0;
    nq_unet_cond_t uc = {.unet2d = sd->unet, .ehs = &ehs};
    nq_denoise_opts_t dopts = {.guidance_scale = r->guidance_scale, .progress = sd__progress, .progress_ud = &prog};
    rc = nq_denoise_run(sched, nq_unet2d_eps, &uc, &lat, &dopts, err);
    if (rc == NQ_ECANCELED && prog.canceled)
      nq_err_set(err, NQ_ECANCELED, 0, "sd: canceled by the progress callback");
    if (!rc) {
      out->n_evals = nq_sched_n_evals(sched);
      sd__report(&prog, out->n_evals, out->n_evals); /* the last step (its return value cannot cancel anything now) */
    }
  }
  double t2 = sd__now();
  if (!rc) rc = sd__decode(sd, lat.data, lh, lw, false, &out->rgb, err);
  double t3 = sd__now();
  pthread_mutex_unlock(&sd->mu);
  if (!rc) {
    out->width = W, out->height = H;
    out->latent_channels = C;
    out->latents = lat.data; /* move */
    lat.data = NULL, lat.owns_data = false;
    out->t_text = t1 - t0, out->t_denoise = t2 - t1, out->t_decode = t3 - t2;
    if (prog.perr.code) NQ_WARN("sd", "preview failed: %s", prog.perr.msg);
  } else {
    nq_sd_result_deinit(out);
  }
  nq_tensor_deinit(&lat);
  nq_tensor_deinit(&ehs);
  nq_sched_free(sched);
  return rc;
}

/* UNet2DConditionModel: path resolution, config, the public API over the shared UNet engine (unet_core.c). */
#include "compute/models/unet2d.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "compute/models/unet_int.h"

struct nq_unet2d {
  nq_unet__model_t m;
};

void nq_unet2d_opts_init(nq_unet2d_opts_t *o) {
  memset(o, 0, sizeof *o);
  o->wdtype = -1;
  o->conv_wdtype = -1;
}

static bool nq_unet__is_file(const char *p) {
  struct stat st;
  return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

int nq_unet__resolve(const char *path, const char *config, char *cfg_out, char *w_out, size_t cap, nq_err_t *err) {
  struct stat st;
  if (stat(path, &st) < 0) return nq_err_set(err, NQ_ENOENT, NQ_ERR_FATAL, "unet: %s not found", path);
  if (S_ISREG(st.st_mode)) {
    snprintf(w_out, cap, "%s", path);
    if (config) snprintf(cfg_out, cap, "%s", config);
    else {
      const char *slash = strrchr(path, '/');
      int dl = slash ? (int)(slash - path) : 1;
      snprintf(cfg_out, cap, "%.*s/config.json", dl, slash ? path : ".");
      if (!nq_unet__is_file(cfg_out))
        return nq_err_set(err, NQ_ECONFIG, NQ_ERR_FATAL, "unet: %s: no config.json beside it (give opts.config)", path);
    }
    return 0;
  }
  static const char *const subs[] = {"unet/", ""};
  static const char *const wnames[] = {"diffusion_pytorch_model.safetensors",
                                       "diffusion_pytorch_model.safetensors.index.json",
                                       "diffusion_pytorch_model.fp16.safetensors"};
  for (size_t i = 0; i < 2; i++) {
    snprintf(cfg_out, cap, "%s/%sconfig.json", path, subs[i]);
    if (!nq_unet__is_file(cfg_out)) continue;
    if (config) snprintf(cfg_out, cap, "%s", config);
    for (size_t k = 0; k < sizeof wnames / sizeof *wnames; k++) {
      snprintf(w_out, cap, "%s/%s%s", path, subs[i], wnames[k]);
      if (nq_unet__is_file(w_out)) return 0;
    }
    return nq_err_set(err, NQ_ENOENT, NQ_ERR_FATAL, "unet: %s/%s: no diffusion_pytorch_model.safetensors", path,
                      subs[i]);
  }
  return nq_err_set(err, NQ_ENOENT, NQ_ERR_FATAL, "unet: %s: neither unet/config.json nor config.json", path);
}

int nq_unet2d_load(const char *path, const nq_unet2d_opts_t *opts, nq_unet2d_t **out, nq_err_t *err) {
  *out = NULL;
  nq_unet2d_opts_t o;
  if (opts) o = *opts;
  else nq_unet2d_opts_init(&o);
  char cfg[4096], wpath[4096];
  int rc = nq_unet__resolve(path, o.config, cfg, wpath, sizeof cfg, err);
  if (rc < 0) return rc;
  nq_unet2d_t *u = calloc(1, sizeof *u);
  if (!u) return nq_err_set(err, NQ_ENOMEM, 0, "unet: out of memory");
  if ((rc = nq_unet__arch_parse(cfg, 0, &u->m.a, err)) == 0)
    rc = nq_unet__load_weights(&u->m, wpath, o.backends, o.wdtype, o.conv_wdtype, err);
  if (rc < 0) {
    nq_unet2d_free(u);
    return rc;
  }
  *out = u;
  return 0;
}

void nq_unet2d_free(nq_unet2d_t *u) {
  if (!u) return;
  nq_unet__model_deinit(&u->m);
  free(u);
}

void nq_unet2d_get_info(const nq_unet2d_t *u, nq_unet2d_info_t *info) {
  const nq_unet__arch_t *a = &u->m.a;
  memset(info, 0, sizeof *info);
  info->in_channels = a->in_channels, info->out_channels = a->out_channels;
  info->cross_attention_dim = a->cross_dim[0];
  info->class_in_dim = a->class_embed ? a->class_in_dim : 0;
  info->downscale = 1 << (a->n_levels - 1);
  bool any = a->has_mid, self_ok = true;
  for (int i = 0; i < a->n_levels; i++) {
    any |= a->down_attn[i] || a->up_attn[i];
    if ((a->down_attn[i] || (a->has_mid && i == a->n_levels - 1)) && a->cross_dim[i] != a->boc[i]) self_ok = false;
  }
  info->needs_ehs = any && !self_ok;
}

int nq_unet2d_forward(nq_unet2d_t *u, const nq_tensor_t *sample, const float *timesteps, const nq_tensor_t *ehs,
                      const nq_tensor_t *class_labels, nq_tensor_t *out, nq_err_t *err) {
  if (!sample || sample->ndim != 4 || !timesteps)
    return nq_err_set(err, NQ_ESHAPE, NQ_ERR_FATAL, "unet2d: sample must be [B, C, H, W] with B timesteps");
  return nq_unet__forward(&u->m, sample, (int)sample->ne[0], 1, timesteps, ehs, class_labels, out, err);
}

void nq_unet2d_set_attn_path(nq_unet2d_t *u, int path) { u->m.attn_path = path; }

/* Copies a forward result into the loop's output tensor (same element count). */
int nq_unet__eps_copy(nq_tensor_t *out, nq_tensor_t *y, nq_err_t *err) {
  int rc = 0;
  if (!out || !out->data || out->dtype != NQ_DT_F32 || !nq_tensor_is_contiguous(out) ||
      nq_tensor_numel(out) != nq_tensor_numel(y))
    rc = nq_err_set(err, NQ_ESHAPE, 0, "unet eps: output must be contiguous F32 with %lld elements",
                    (long long)nq_tensor_numel(y));
  else memcpy(out->data, y->data, nq_tensor_nbytes(y));
  nq_tensor_deinit(y);
  return rc;
}

int nq_unet2d_eps(void *ud, const nq_tensor_t *latents_in, float t, nq_tensor_t *out, nq_err_t *err) {
  const nq_unet_cond_t *c = ud;
  if (!c || !c->unet2d || !latents_in || latents_in->ndim != 4)
    return nq_err_set(err, NQ_EINVAL, 0, "unet2d eps: needs a bound unet2d and [M, C, H, W] latents");
  int64_t M = latents_in->ne[0];
  if ((c->ehs && c->ehs->ne[0] != M) || (c->class_labels && c->class_labels->ne[0] != M))
    return nq_err_set(err, NQ_ESHAPE, 0, "unet2d eps: conditioning rows != %lld latent rows", (long long)M);
  float *ts = malloc(sizeof(float) * (size_t)(M > 0 ? M : 1));
  if (!ts) return nq_err_set(err, NQ_ENOMEM, 0, "unet2d eps: out of memory");
  for (int64_t i = 0; i < M; i++) ts[i] = t;
  nq_tensor_t y;
  int rc = nq_unet2d_forward(c->unet2d, latents_in, ts, c->ehs, c->class_labels, &y, err);
  free(ts);
  return rc < 0 ? rc : nq_unet__eps_copy(out, &y, err);
}

/* UNet3DConditionModel: the public API over the shared UNet engine (unet_core.c), [B,C,F,H,W] <-> [B*F,C,H,W]. */
#include "compute/models/unet3d.h"

#include <stdlib.h>
#include <string.h>

#include "compute/models/unet_int.h"

struct nq_unet3d {
  nq_unet__model_t m;
};

int nq_unet3d_load(const char *path, const nq_unet3d_opts_t *opts, nq_unet3d_t **out, nq_err_t *err) {
  *out = NULL;
  nq_unet3d_opts_t o;
  if (opts) o = *opts;
  else nq_unet2d_opts_init(&o);
  char cfg[4096], wpath[4096];
  int rc = nq_unet__resolve(path, o.config, cfg, wpath, sizeof cfg, err);
  if (rc < 0) return rc;
  nq_unet3d_t *u = calloc(1, sizeof *u);
  if (!u) return nq_err_set(err, NQ_ENOMEM, 0, "unet3d: out of memory");
  if ((rc = nq_unet__arch_parse(cfg, 1, &u->m.a, err)) == 0)
    rc = nq_unet__load_weights(&u->m, wpath, o.backends, o.wdtype, o.conv_wdtype, err);
  if (rc < 0) {
    nq_unet3d_free(u);
    return rc;
  }
  *out = u;
  return 0;
}

void nq_unet3d_free(nq_unet3d_t *u) {
  if (!u) return;
  nq_unet__model_deinit(&u->m);
  free(u);
}

void nq_unet3d_get_info(const nq_unet3d_t *u, nq_unet2d_info_t *info) {
  const nq_unet__arch_t *a = &u->m.a;
  memset(info, 0, sizeof *info);
  info->in_channels = a->in_channels, info->out_channels = a->out_channels;
  info->cross_attention_dim = a->cross_dim[0];
  info->needs_ehs = 1;
  info->downscale = 1 << (a->n_levels - 1);
}

/* dst[(b*F + f), c, p] = src[b, c, f, p] (to_frames) or the inverse. */
static void nq_unet3d__permute(float *dst, const float *src, int64_t B, int64_t C, int64_t F, int64_t P, bool to_frames) {
  for (int64_t b = 0; b < B; b++)
    for (int64_t c = 0; c < C; c++)
      for (int64_t f = 0; f < F; f++) {
        int64_t bcf = ((b * C + c) * F + f) * P, bfc = ((b * F + f) * C + c) * P;
        memcpy(dst + (to_frames ? bfc : bcf), src + (to_frames ? bcf : bfc), sizeof(float) * (size_t)P);
      }
}

int nq_unet3d_forward(nq_unet3d_t *u, const nq_tensor_t *sample, const float *timesteps, const nq_tensor_t *ehs,
                      nq_tensor_t *out, nq_err_t *err) {
  memset(out, 0, sizeof *out);
  if (!sample || sample->ndim != 5 || sample->dtype != NQ_DT_F32 || !nq_tensor_is_contiguous(sample) || !timesteps)
    return nq_err_set(err, NQ_ESHAPE, NQ_ERR_FATAL, "unet3d: sample must be contiguous F32 [B, C, F, H, W]");
  if (!ehs) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "unet3d: encoder_hidden_states required");
  int64_t B = sample->ne[0], C = sample->ne[1], F = sample->ne[2], H = sample->ne[3], W = sample->ne[4];
  if (B < 1 || F < 1 || B * F > (1 << 20)) return nq_err_set(err, NQ_ESHAPE, NQ_ERR_FATAL, "unet3d: bad B/F");
  nq_tensor_t x, y;
  int rc = nq_tensor_init(&x, NQ_DT_F32, 4, (int64_t[]){B * F, C, H, W}, err);
  if (rc < 0) return rc;
  nq_unet3d__permute(x.data, sample->data, B, C, F, H * W, true);
  rc = nq_unet__forward(&u->m, &x, (int)B, (int)F, timesteps, ehs, NULL, &y, err);
  nq_tensor_deinit(&x);
  if (rc < 0) return rc;
  int64_t Co = y.ne[1];
  if ((rc = nq_tensor_init(out, NQ_DT_F32, 5, (int64_t[]){B, Co, F, H, W}, err)) == 0)
    nq_unet3d__permute(out->data, y.data, B, Co, F, H * W, false);
  nq_tensor_deinit(&y);
  return rc;
}

void nq_unet3d_set_attn_path(nq_unet3d_t *u, int path) { u->m.attn_path = path; }

int nq_unet3d_eps(void *ud, const nq_tensor_t *latents_in, float t, nq_tensor_t *out, nq_err_t *err) {
  const nq_unet_cond_t *c = ud;
  if (!c || !c->unet3d || !latents_in || latents_in->ndim != 5 || !c->ehs)
    return nq_err_set(err, NQ_EINVAL, 0, "unet3d eps: needs a bound unet3d, ehs and [M, C, F, H, W] latents");
  int64_t M = latents_in->ne[0];
  if (c->ehs->ne[0] != M)
    return nq_err_set(err, NQ_ESHAPE, 0, "unet3d eps: conditioning rows != %lld latent rows", (long long)M);
  float *ts = malloc(sizeof(float) * (size_t)(M > 0 ? M : 1));
  if (!ts) return nq_err_set(err, NQ_ENOMEM, 0, "unet3d eps: out of memory");
  for (int64_t i = 0; i < M; i++) ts[i] = t;
  nq_tensor_t y;
  int rc = nq_unet3d_forward(c->unet3d, latents_in, ts, c->ehs, &y, err);
  free(ts);
  return rc < 0 ? rc : nq_unet__eps_copy(out, &y, err);
}

/* `nextq module run` kinds of the latent-diffusion parts (../shared/golden/diffusers/README.md):
 *   taesd-decode: latents [N,4,h,w] -> image [N,3,8h,8w], clamped to params.clamp (default [0,1])
 *   vae-decode:   z [N,latent,h,w] -> sample (AutoencoderKL.decode, no 1/scaling_factor)
 *   vae-encode:   image [N,C,H,W] in [-1,1] -> mean (latent_dist.mean)
 *   denoise:      latents [B,4,h,w] (noise already times init_noise_sigma), prompt_embeds [B,L,D],
 *                 negative_prompt_embeds [B,L,D] -> latents after params.steps scheduler steps with classifier-free
 *                 guidance params.guidance_scale; --model holds unet/ and scheduler/; params.scheduler (ddim, pndm,
 *                 euler) overrides the scheduler_config.json class.
 * --dtype bf16|f16 converts the conv/linear weights at load. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/module_kinds.h"
#include "compute/core/pool.h"
#include "compute/models/samplers/scheduler.h"
#include "compute/models/taesd.h"
#include "compute/models/unet2d.h"
#include "compute/models/vae.h"

static nq_dtype_t nq_md__wdtype(const nq_module_ctx_t *ctx) {
  if (ctx->dtype && !strcmp(ctx->dtype, "bf16")) return NQ_DT_BF16;
  if (ctx->dtype && !strcmp(ctx->dtype, "f16")) return NQ_DT_F16;
  return NQ_DT_F32;
}

/* Input `name` of rank ndim as an owned F32 tensor. data NULL (and 0 returned) when absent and not required. */
static int nq_md__input(const nq_module_ctx_t *ctx, const char *name, int ndim, bool required, nq_tensor_t *t,
                        nq_err_t *err) {
  memset(t, 0, sizeof *t);
  const nq_st_tensor_t *st = ctx->in ? nq_st_find(ctx->in, name) : NULL;
  if (!st) return required ? nq_err_set(err, NQ_ENOENT, NQ_ERR_FATAL, "input tensor '%s' is missing", name) : 0;
  if (st->ndim != ndim)
    return nq_err_set(err, NQ_ESHAPE, NQ_ERR_FATAL, "input tensor '%s' has %d dims, want %d", name, st->ndim, ndim);
  float *f;
  int rc = nq_module_input_f32(ctx, name, &f, NULL, err);
  if (rc < 0) return rc;
  if ((rc = nq_tensor_init(t, NQ_DT_F32, ndim, st->shape, err)) == 0) memcpy(t->data, f, nq_tensor_nbytes(t));
  free(f);
  return rc;
}

static int nq_md__output(const nq_module_ctx_t *ctx, const char *name, const nq_tensor_t *t, nq_err_t *err) {
  return nq_st_writer_add_f32(ctx->out, name, t->ndim, t->ne, t->data, err);
}

static int nq_md__start(const nq_module_ctx_t *ctx, nq_err_t *err) {
  if (!ctx->model_dir) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "--model is required");
  if (ctx->threads > 0) nq_compute_set_threads(ctx->threads);
  return 0;
}

/* params.clamp = "[lo, hi]" (JSON list as the golden runner passes it) or absent (= [0, 1]). */
static int nq_md__clamp(const nq_module_ctx_t *ctx, float *lo, float *hi, nq_err_t *err) {
  const char *v = nq_module_param(ctx, "clamp");
  *lo = 0.0f, *hi = 1.0f;
  if (!v) return 0;
  double a, b;
  if (sscanf(v, " [ %lf , %lf ]", &a, &b) != 2 || !(a <= b))
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "--param clamp=%s: want [lo, hi]", v);
  *lo = (float)a, *hi = (float)b;
  return 0;
}

int nq_module_taesd_decode(const nq_module_ctx_t *ctx, nq_err_t *err) {
  float lo, hi;
  int rc = nq_md__start(ctx, err);
  if (rc == 0) rc = nq_md__clamp(ctx, &lo, &hi, err);
  if (rc < 0) return rc;
  nq_taesd_t *m = NULL;
  nq_tensor_t z = {0}, img = {0};
  if ((rc = nq_taesd_open(ctx->model_dir, nq_md__wdtype(ctx), NULL, &m, err)) == 0 &&
      (rc = nq_md__input(ctx, "latents", 4, true, &z, err)) == 0 && (rc = nq_taesd_decode(m, &z, &img, err)) == 0) {
    float *p = img.data;
    for (int64_t i = 0; i < nq_tensor_numel(&img); i++) p[i] = p[i] < lo ? lo : p[i] > hi ? hi : p[i];
    rc = nq_md__output(ctx, "image", &img, err);
  }
  nq_tensor_deinit(&z), nq_tensor_deinit(&img);
  nq_taesd_free(m);
  return rc;
}

static int nq_md__vae(const nq_module_ctx_t *ctx, bool decode, nq_err_t *err) {
  int rc = nq_md__start(ctx, err);
  if (rc < 0) return rc;
  nq_vae_t *v = NULL;
  nq_tensor_t x = {0}, y = {0};
  if ((rc = nq_vae_open(ctx->model_dir, nq_md__wdtype(ctx), NULL, &v, err)) == 0 &&
      (rc = nq_md__input(ctx, decode ? "z" : "image", 4, true, &x, err)) == 0) {
    rc = decode ? nq_vae_decode(v, &x, &y, err) : nq_vae_encode_mean(v, &x, &y, NULL, err);
    if (rc == 0) rc = nq_md__output(ctx, decode ? "sample" : "mean", &y, err);
  }
  nq_tensor_deinit(&x), nq_tensor_deinit(&y);
  nq_vae_free(v);
  return rc;
}

int nq_module_vae_decode(const nq_module_ctx_t *ctx, nq_err_t *err) { return nq_md__vae(ctx, true, err); }
int nq_module_vae_encode(const nq_module_ctx_t *ctx, nq_err_t *err) { return nq_md__vae(ctx, false, err); }

/* ---- denoise ---- */

typedef struct {
  nq_unet2d_t *u;   /* borrowed */
  nq_tensor_t ehs;  /* owned [M, L, D]: negative rows, then positive rows (M = 2B), or positive only (M = B) */
  float *ts;        /* owned [M] */
} nq_md__unet_ud_t;

/* nq_denoise_eps_fn over the UNet: the same timestep for every row, ehs bound in ud. */
static int nq_md__unet_eps(void *ud, const nq_tensor_t *x, float t, nq_tensor_t *out, nq_err_t *err) {
  nq_md__unet_ud_t *u = ud;
  for (int64_t i = 0; i < x->ne[0]; i++) u->ts[i] = t;
  nq_tensor_t y;
  int rc = nq_unet2d_forward(u->u, x, u->ts, &u->ehs, NULL, &y, err);
  if (rc < 0) return rc;
  if (!nq_tensor_same_shape(&y, out))
    rc = nq_err_set(err, NQ_ESHAPE, NQ_ERR_FATAL, "denoise: the UNet output does not have the latents' shape");
  else memcpy(out->data, y.data, nq_tensor_nbytes(out));
  nq_tensor_deinit(&y);
  return rc;
}

int nq_module_denoise(const nq_module_ctx_t *ctx, nq_err_t *err) {
  int rc = nq_md__start(ctx, err);
  if (rc < 0) return rc;
  long long steps;
  double g;
  if ((rc = nq_module_param_int(ctx, "steps", 25, &steps, err)) < 0 ||
      (rc = nq_module_param_double(ctx, "guidance_scale", 7.5, &g, err)) < 0)
    return rc;
  if (steps < 1 || steps > 10000) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "--param steps=%lld", steps);
  char path[4200];
  nq_sched_config_t sc;
  snprintf(path, sizeof path, "%s/scheduler/scheduler_config.json", ctx->model_dir);
  if ((rc = nq_sched_config_load(path, nq_module_param(ctx, "scheduler"), &sc, err)) < 0) return rc;
  nq_sched_t *s = NULL;
  nq_unet2d_t *u = NULL;
  nq_tensor_t lat = {0}, pos = {0}, neg = {0};
  nq_md__unet_ud_t ud = {0};
  nq_unet2d_opts_t uo;
  nq_unet2d_opts_init(&uo);
  if (nq_md__wdtype(ctx) != NQ_DT_F32) uo.wdtype = nq_md__wdtype(ctx);
  if ((rc = nq_sched_new(&sc, (int)steps, &s, err)) < 0 || (rc = nq_unet2d_load(ctx->model_dir, &uo, &u, err)) < 0 ||
      (rc = nq_md__input(ctx, "latents", 4, true, &lat, err)) < 0 ||
      (rc = nq_md__input(ctx, "prompt_embeds", 3, true, &pos, err)) < 0 ||
      (rc = nq_md__input(ctx, "negative_prompt_embeds", 3, g > 1.0, &neg, err)) < 0)
    goto out;
  const int64_t B = lat.ne[0], M = g > 1.0 ? 2 * B : B;
  if (pos.ne[0] != B || (g > 1.0 && !nq_tensor_same_shape(&pos, &neg))) {
    rc = nq_err_set(err, NQ_ESHAPE, NQ_ERR_FATAL, "denoise: prompt embeds must be [%lld,L,D] (negative the same)",
                    (long long)B);
    goto out;
  }
  ud.u = u;
  ud.ts = malloc(sizeof(float) * (size_t)M);
  if (!ud.ts) {
    rc = nq_err_set(err, NQ_ENOMEM, 0, "denoise: out of memory");
    goto out;
  }
  if ((rc = nq_tensor_init(&ud.ehs, NQ_DT_F32, 3, NQ_SHAPE(M, pos.ne[1], pos.ne[2]), err)) < 0) goto out;
  if (g > 1.0) { /* [uncond, cond], as StableDiffusionPipeline concatenates them */
    memcpy(ud.ehs.data, neg.data, nq_tensor_nbytes(&neg));
    memcpy((char *)ud.ehs.data + nq_tensor_nbytes(&neg), pos.data, nq_tensor_nbytes(&pos));
  } else {
    memcpy(ud.ehs.data, pos.data, nq_tensor_nbytes(&pos));
  }
  nq_denoise_opts_t o = {.guidance_scale = (float)g};
  if ((rc = nq_denoise_run(s, nq_md__unet_eps, &ud, &lat, &o, err)) == 0) rc = nq_md__output(ctx, "latents", &lat, err);
out:
  nq_tensor_deinit(&lat), nq_tensor_deinit(&pos), nq_tensor_deinit(&neg), nq_tensor_deinit(&ud.ehs);
  free(ud.ts);
  nq_unet2d_free(u);
  nq_sched_free(s);
  return rc;
}

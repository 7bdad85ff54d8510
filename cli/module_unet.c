/* `nextq module run --kind unet2d|unet3d`: one diffusers UNet evaluation (../shared/golden/README.md, kinds table).
 *   unet2d: sample [B,C,H,W], timestep [B], encoder_hidden_states [B,L,D] (cross-attention), class_labels [B,E]
 *           (class embedding) -> out [B,C,H,W]
 *   unet3d: sample [B,C,F,H,W], timestep [B], encoder_hidden_states [B,L,D] -> out [B,C,F,H,W]
 * --model is the case's model/ dir (holding unet/), a unet dir, or a single-file checkpoint (then
 * --param config=PATH gives its config.json). --dtype bf16|f16 converts the linear weights at load (see unet2d.h). */
#include <stdlib.h>
#include <string.h>

#include "cli/module_kinds.h"
#include "compute/models/unet2d.h"
#include "compute/models/unet3d.h"

/* An optional input as an owned F32 tensor (data NULL when absent); rank must be `ndim`. */
static int nq_mu__input(const nq_module_ctx_t *ctx, const char *name, int ndim, bool required, nq_tensor_t *t,
                        nq_err_t *err) {
  memset(t, 0, sizeof *t);
  const nq_st_tensor_t *st = ctx->in ? nq_st_find(ctx->in, name) : NULL;
  if (!st) return required ? nq_err_set(err, NQ_ENOENT, NQ_ERR_FATAL, "input tensor '%s' is missing", name) : 0;
  if (st->ndim != ndim)
    return nq_err_set(err, NQ_ESHAPE, NQ_ERR_FATAL, "input tensor '%s' has %d dims, want %d", name, st->ndim, ndim);
  float *f;
  int rc = nq_module_input_f32(ctx, name, &f, NULL, err);
  if (rc < 0) return rc;
  int64_t sh[NQ_MAX_DIMS];
  for (int i = 0; i < ndim; i++) sh[i] = st->shape[i];
  if ((rc = nq_tensor_init(t, NQ_DT_F32, ndim, sh, err)) == 0) memcpy(t->data, f, nq_tensor_nbytes(t));
  free(f);
  return rc;
}

static int nq_mu__opts(const nq_module_ctx_t *ctx, nq_unet2d_opts_t *o, nq_err_t *err) {
  nq_unet2d_opts_init(o);
  o->config = nq_module_param(ctx, "config");
  if (!ctx->model_dir) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "--model is required");
  if (ctx->dtype && !strcmp(ctx->dtype, "bf16")) o->wdtype = NQ_DT_BF16;
  else if (ctx->dtype && !strcmp(ctx->dtype, "f16")) o->wdtype = NQ_DT_F16;
  return 0;
}

/* timestep [B] (any float/int dtype) -> B floats. */
static int nq_mu__timesteps(const nq_module_ctx_t *ctx, int64_t B, float **ts, nq_err_t *err) {
  const nq_st_tensor_t *t;
  int rc = nq_module_input_f32(ctx, "timestep", ts, &t, err);
  if (rc < 0) return rc;
  int64_t n = nq_st_numel(t);
  if (n == B || n == 1) {
    if (n == 1 && B > 1) { /* one timestep for the whole batch, as diffusers broadcasts it */
      float *b = realloc(*ts, sizeof(float) * (size_t)B);
      if (!b) return nq_err_set(err, NQ_ENOMEM, 0, "out of memory");
      for (int64_t i = 1; i < B; i++) b[i] = b[0];
      *ts = b;
    }
    return 0;
  }
  return nq_err_set(err, NQ_ESHAPE, NQ_ERR_FATAL, "input tensor 'timestep' has %lld values for batch %lld",
                    (long long)n, (long long)B);
}

int nq_module_unet2d(const nq_module_ctx_t *ctx, nq_err_t *err) {
  nq_unet2d_opts_t o;
  int rc = nq_mu__opts(ctx, &o, err);
  if (rc < 0) return rc;
  nq_tensor_t x, ehs, cl, out;
  float *ts = NULL;
  nq_unet2d_t *u = NULL;
  memset(&ehs, 0, sizeof ehs), memset(&cl, 0, sizeof cl), memset(&out, 0, sizeof out);
  if ((rc = nq_mu__input(ctx, "sample", 4, true, &x, err)) < 0) return rc;
  if ((rc = nq_mu__input(ctx, "encoder_hidden_states", 3, false, &ehs, err)) < 0) goto done;
  if ((rc = nq_mu__input(ctx, "class_labels", 2, false, &cl, err)) < 0) goto done;
  if ((rc = nq_mu__timesteps(ctx, x.ne[0], &ts, err)) < 0) goto done;
  if ((rc = nq_unet2d_load(ctx->model_dir, &o, &u, err)) < 0) goto done;
  if ((rc = nq_unet2d_forward(u, &x, ts, ehs.data ? &ehs : NULL, cl.data ? &cl : NULL, &out, err)) < 0) goto done;
  rc = nq_st_writer_add_f32(ctx->out, "out", out.ndim, out.ne, out.data, err);
done:
  nq_unet2d_free(u);
  free(ts);
  nq_tensor_deinit(&x), nq_tensor_deinit(&ehs), nq_tensor_deinit(&cl), nq_tensor_deinit(&out);
  return rc;
}

int nq_module_unet3d(const nq_module_ctx_t *ctx, nq_err_t *err) {
  nq_unet3d_opts_t o;
  int rc = nq_mu__opts(ctx, &o, err);
  if (rc < 0) return rc;
  nq_tensor_t x, ehs, out;
  float *ts = NULL;
  nq_unet3d_t *u = NULL;
  memset(&ehs, 0, sizeof ehs), memset(&out, 0, sizeof out);
  if ((rc = nq_mu__input(ctx, "sample", 5, true, &x, err)) < 0) return rc;
  if ((rc = nq_mu__input(ctx, "encoder_hidden_states", 3, true, &ehs, err)) < 0) goto done;
  if ((rc = nq_mu__timesteps(ctx, x.ne[0], &ts, err)) < 0) goto done;
  if ((rc = nq_unet3d_load(ctx->model_dir, &o, &u, err)) < 0) goto done;
  if ((rc = nq_unet3d_forward(u, &x, ts, &ehs, &out, err)) < 0) goto done;
  rc = nq_st_writer_add_f32(ctx->out, "out", out.ndim, out.ne, out.data, err);
done:
  nq_unet3d_free(u);
  free(ts);
  nq_tensor_deinit(&x), nq_tensor_deinit(&ehs), nq_tensor_deinit(&out);
  return rc;
}

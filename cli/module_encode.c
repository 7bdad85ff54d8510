/* cli/module_encode.c — `nextq module run` kinds for the encoders (../shared/golden/README.md):
 *   imagebind-vision  pixels [B,3,224,224] or video [B,3,2,224,224] -> embeds [B,E] (L2-normalised)
 *   imagebind-audio   fbank [B,1,128,204]                           -> embeds [B,E] (L2-normalised, no logit scale)
 *   clip-text         input_ids [B,T] I64                           -> last_hidden_state [B,T,D], pooled [B,D]
 * --dtype bf16|f16 converts the linear weights at load; activations stay F32. Registered in cli/module_kinds.c. */
#include <stdlib.h>
#include <string.h>

#include "cli/module_kinds.h"
#include "compute/models/clip_text.h"
#include "compute/models/imagebind.h"

static int wdtype_of(const nq_module_ctx_t *ctx) {
  if (ctx->dtype && !strcmp(ctx->dtype, "bf16")) return NQ_DT_BF16;
  if (ctx->dtype && !strcmp(ctx->dtype, "f16")) return NQ_DT_F16;
  return -1;
}

static int run_imagebind(const nq_module_ctx_t *ctx, nq_imagebind_modality_t mod, nq_err_t *err) {
  if (!ctx->model_dir) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "--model DIR is required");
  if (ctx->threads > 0) nq_compute_set_threads(ctx->threads);
  const char *name = mod == NQ_IB_AUDIO ? "fbank" : "pixels";
  const nq_st_tensor_t *t = ctx->in ? nq_st_find(ctx->in, name) : NULL;
  if (!t && mod == NQ_IB_VISION && ctx->in && (t = nq_st_find(ctx->in, "video"))) name = "video";
  if (!t)
    return nq_err_set(err, NQ_ENOENT, NQ_ERR_FATAL, "input tensor '%s' is missing%s", name,
                      mod == NQ_IB_VISION ? " (or 'video')" : "");
  nq_imagebind_load_opts_t o;
  nq_imagebind_load_opts_init(&o);
  o.modality = mod;
  o.wdtype = wdtype_of(ctx);
  nq_imagebind_t *m = NULL;
  int rc = nq_imagebind_load(ctx->model_dir, &o, &m, err);
  if (rc) return rc;
  const nq_imagebind_config_t *c = &m->cfg;
  int frames = 1;
  bool ok;
  if (mod == NQ_IB_AUDIO)
    ok = t->ndim == 4 && t->shape[1] == 1 && t->shape[2] == c->mel_bins && t->shape[3] == c->target_len;
  else if (!strcmp(name, "video"))
    ok = t->ndim == 5 && t->shape[1] == 3 && t->shape[2] == c->frames && t->shape[3] == c->img_size &&
         t->shape[4] == c->img_size, frames = c->frames;
  else
    ok = t->ndim == 4 && t->shape[1] == 3 && t->shape[2] == c->img_size && t->shape[3] == c->img_size;
  float *in = NULL, *out = NULL;
  if (!ok || t->shape[0] < 1) {
    rc = nq_err_set(err, NQ_ESHAPE, NQ_ERR_FATAL, "input '%s': wrong shape for this model (see nextq module list)", name);
    goto done;
  }
  int64_t B = t->shape[0];
  if ((rc = nq_module_input_f32(ctx, name, &in, NULL, err))) goto done;
  if (!(out = malloc(sizeof(float) * (size_t)(B * c->out_dim)))) {
    rc = nq_err_set(err, NQ_ENOMEM, 0, "out of memory");
    goto done;
  }
  if ((rc = nq_imagebind_forward(m, in, B, frames, out, err))) goto done;
  rc = nq_st_writer_add_f32(ctx->out, "embeds", 2, NQ_SHAPE(B, c->out_dim), out, err);
done:
  free(in), free(out);
  nq_imagebind_free(m);
  return rc;
}

int nq_module_imagebind_vision(const nq_module_ctx_t *ctx, nq_err_t *err) { return run_imagebind(ctx, NQ_IB_VISION, err); }
int nq_module_imagebind_audio(const nq_module_ctx_t *ctx, nq_err_t *err) { return run_imagebind(ctx, NQ_IB_AUDIO, err); }

int nq_module_clip_text(const nq_module_ctx_t *ctx, nq_err_t *err) {
  if (!ctx->model_dir) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "--model DIR is required");
  if (ctx->threads > 0) nq_compute_set_threads(ctx->threads);
  const nq_st_tensor_t *t = ctx->in ? nq_st_find(ctx->in, "input_ids") : NULL;
  if (!t) return nq_err_set(err, NQ_ENOENT, NQ_ERR_FATAL, "input tensor 'input_ids' is missing");
  if ((t->dtype != NQ_DT_I64 && t->dtype != NQ_DT_I32) || t->ndim != 2 || t->shape[0] < 1 || t->shape[1] < 1)
    return nq_err_set(err, NQ_ESHAPE, NQ_ERR_FATAL, "input 'input_ids' must be I64/I32 [B,T]");
  const int64_t B = t->shape[0], T = t->shape[1];
  nq_clip_text_load_opts_t o;
  nq_clip_text_load_opts_init(&o);
  o.wdtype = wdtype_of(ctx);
  nq_clip_text_t *m = NULL;
  int rc = nq_clip_text_load(ctx->model_dir, &o, &m, err);
  if (rc) return rc;
  const int64_t D = m->cfg.hidden;
  int64_t *ids = malloc(sizeof(int64_t) * (size_t)(B * T));
  float *h = malloc(sizeof(float) * (size_t)(B * T * D)), *p = malloc(sizeof(float) * (size_t)(B * D));
  if (!ids || !h || !p) {
    rc = nq_err_set(err, NQ_ENOMEM, 0, "out of memory");
    goto done;
  }
  for (int64_t i = 0; i < B * T; i++) {
    if (t->dtype == NQ_DT_I64) memcpy(&ids[i], (const char *)t->data + i * 8, 8);
    else {
      int32_t v;
      memcpy(&v, (const char *)t->data + i * 4, 4);
      ids[i] = v;
    }
  }
  if ((rc = nq_clip_text_forward(m, ids, B, T, h, p, err))) goto done;
  if ((rc = nq_st_writer_add_f32(ctx->out, "last_hidden_state", 3, NQ_SHAPE(B, T, D), h, err))) goto done;
  rc = nq_st_writer_add_f32(ctx->out, "pooled", 2, NQ_SHAPE(B, D), p, err);
done:
  free(ids), free(h), free(p);
  nq_clip_text_free(m);
  return rc;
}

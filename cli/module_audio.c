/* cli/module_audio.c — `nextq module run` kinds of the AudioLDM side: hifigan (SpeechT5HifiGan vocoder) and clap-text
 * (CLAP text encoder with projection). --dtype bf16|f16 converts the weights at load (hifigan: conv weights; clap:
 * linear weights); activations stay F32. Registered in cli/module_kinds.c. */
#include <stdlib.h>
#include <string.h>

#include "cli/module_kinds.h"
#include "compute/models/clap_text.h"
#include "compute/models/hifigan.h"

static int audio_wdtype(const nq_module_ctx_t *ctx) {
  if (ctx->dtype && !strcmp(ctx->dtype, "bf16")) return NQ_DT_BF16;
  if (ctx->dtype && !strcmp(ctx->dtype, "f16")) return NQ_DT_F16;
  return -1;
}

int nq_module_hifigan(const nq_module_ctx_t *ctx, nq_err_t *err) {
  if (!ctx->model_dir) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "--model DIR is required");
  if (ctx->threads > 0) nq_compute_set_threads(ctx->threads);
  const nq_st_tensor_t *t = NULL;
  float *spec = NULL;
  int rc = nq_module_input_f32(ctx, "spectrogram", &spec, &t, err);
  if (rc) return rc;
  if (t->ndim != 3 && t->ndim != 2) {
    free(spec);
    return nq_err_set(err, NQ_ESHAPE, NQ_ERR_FATAL, "input 'spectrogram' must be [B,T,mels] or [T,mels]");
  }
  int64_t B = t->ndim == 3 ? t->shape[0] : 1, T = t->shape[t->ndim - 2], M = t->shape[t->ndim - 1];
  nq_hifigan_opts_t o;
  nq_hifigan_opts_init(&o);
  o.wdtype = audio_wdtype(ctx);
  nq_hifigan_t *v = NULL;
  nq_tensor_t x, y = {0};
  if ((rc = nq_hifigan_load(ctx->model_dir, &o, &v, err))) goto done;
  nq_tensor_init_borrowed(&x, NQ_DT_F32, 3, NQ_SHAPE(B, T, M), spec);
  if ((rc = nq_hifigan_forward(v, &x, &y, err))) goto done;
  if (t->ndim == 3) rc = nq_st_writer_add_f32(ctx->out, "waveform", 2, y.ne, y.data, err);
  else rc = nq_st_writer_add_f32(ctx->out, "waveform", 1, &y.ne[1], y.data, err);
done:
  nq_tensor_deinit(&y);
  nq_hifigan_free(v);
  free(spec);
  return rc;
}

/* I64/I32 [B,L] input -> int64 array (owned). */
static int audio_ids(const nq_module_ctx_t *ctx, const char *name, bool required, int64_t B, int64_t L, int64_t **out,
                     const nq_st_tensor_t **tt, nq_err_t *err) {
  *out = NULL;
  const nq_st_tensor_t *t = ctx->in ? nq_st_find(ctx->in, name) : NULL;
  if (tt) *tt = t;
  if (!t) return required ? nq_err_set(err, NQ_ENOENT, NQ_ERR_FATAL, "input tensor '%s' is missing", name) : 0;
  if ((t->dtype != NQ_DT_I64 && t->dtype != NQ_DT_I32) || t->ndim != 2 || t->shape[0] < 1 || t->shape[1] < 1 ||
      (B && (t->shape[0] != B || t->shape[1] != L)))
    return nq_err_set(err, NQ_ESHAPE, NQ_ERR_FATAL, "input '%s' must be I64/I32 [B,L]%s", name,
                      B ? " like input_ids" : "");
  int64_t n = t->shape[0] * t->shape[1];
  int64_t *d = malloc(sizeof(int64_t) * (size_t)n);
  if (!d) return nq_err_set(err, NQ_ENOMEM, 0, "out of memory");
  for (int64_t i = 0; i < n; i++) {
    if (t->dtype == NQ_DT_I64) memcpy(&d[i], (const char *)t->data + i * 8, 8);
    else {
      int32_t v;
      memcpy(&v, (const char *)t->data + i * 4, 4);
      d[i] = v;
    }
  }
  *out = d;
  return 0;
}

int nq_module_clap_text(const nq_module_ctx_t *ctx, nq_err_t *err) {
  if (!ctx->model_dir) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "--model DIR is required");
  if (ctx->threads > 0) nq_compute_set_threads(ctx->threads);
  const nq_st_tensor_t *t;
  int64_t *ids = NULL, *mask = NULL;
  int rc = audio_ids(ctx, "input_ids", true, 0, 0, &ids, &t, err);
  if (rc) return rc;
  const int64_t B = t->shape[0], L = t->shape[1];
  if ((rc = audio_ids(ctx, "attention_mask", false, B, L, &mask, NULL, err))) {
    free(ids);
    return rc;
  }
  nq_clap_text_opts_t o;
  nq_clap_text_opts_init(&o);
  o.wdtype = audio_wdtype(ctx);
  nq_clap_text_t *m = NULL;
  float *te = NULL, *lh = NULL;
  if ((rc = nq_clap_text_load(ctx->model_dir, &o, &m, err))) goto done;
  const nq_clap_text_config_t *c = nq_clap_text_config(m);
  const int64_t H = c->hidden, P = c->projection_dim;
  lh = malloc(sizeof(float) * (size_t)(B * L * H));
  te = P ? malloc(sizeof(float) * (size_t)(B * P)) : NULL;
  if (!lh || (P && !te)) {
    rc = nq_err_set(err, NQ_ENOMEM, 0, "out of memory");
    goto done;
  }
  if ((rc = nq_clap_text_forward(m, ids, mask, B, L, te, lh, err))) goto done;
  if (P && (rc = nq_st_writer_add_f32(ctx->out, "text_embeds", 2, NQ_SHAPE(B, P), te, err))) goto done;
  rc = nq_st_writer_add_f32(ctx->out, "last_hidden_state", 3, NQ_SHAPE(B, L, H), lh, err);
done:
  free(ids), free(mask), free(te), free(lh);
  nq_clap_text_free(m);
  return rc;
}

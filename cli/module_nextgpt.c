/* cli/module_nextgpt.c — `nextq module run` kinds for NExT-GPT's LLM-side glue (../shared/golden/README.md):
 *   out-proj        --model DIR (config.json: prefix, nhead, layer_norm_eps + model.safetensors)
 *                   --in hidden [N,H], embeds [N,H]                -> out [1,K,D]
 *   nextgpt-prompt  --model DIR (HF LLaMA + added_tokens.json + nextgpt.safetensors) or a model YAML
 *                   --in text_000 U8, media_embeds [n,E]           -> input_embeds [T,H], token_ids [T] I64
 *   nextgpt-signal  same model; --in + generated [G] I64; params offset_minus_one (bool), modality (image|video|audio,
 *                   default: the first signal found)
 *                   -> signal_hidden [N,H], signal_embeds [N,H], projected [1,K,D], caption_text U8
 * Registered in cli/module_kinds.c. */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/module_kinds.h"
#include "compute/core/pool.h"
#include "compute/pipelines/nextgpt.h"

static int nq_mng__wdtype(const nq_module_ctx_t *ctx) {
  if (ctx->dtype && !strcmp(ctx->dtype, "bf16")) return NQ_DT_BF16;
  if (ctx->dtype && !strcmp(ctx->dtype, "f16")) return NQ_DT_F16;
  return -1;
}

/* A float input [rows, cols] (cols checked when > 0). */
static int nq_mng__input2(const nq_module_ctx_t *ctx, const char *name, int64_t cols, float **out, int64_t *rows,
                          nq_err_t *err) {
  const nq_st_tensor_t *t;
  int rc = nq_module_input_f32(ctx, name, out, &t, err);
  if (rc < 0) return rc;
  if (t->ndim != 2 || (cols > 0 && t->shape[1] != cols)) {
    free(*out);
    *out = NULL;
    return nq_err_set(err, NQ_ESHAPE, NQ_ERR_FATAL, "input '%s': want [n, %lld], got %d dims", name, (long long)cols,
                      t->ndim);
  }
  *rows = t->shape[0];
  return 0;
}

int nq_module_out_proj(const nq_module_ctx_t *ctx, nq_err_t *err) {
  if (!ctx->model_dir) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "out-proj: --model DIR is required");
  if (ctx->threads > 0) nq_compute_set_threads(ctx->threads);
  char p[4200];
  snprintf(p, sizeof p, "%s/config.json", ctx->model_dir);
  json_error_t je;
  json_t *cfg = json_load_file(p, 0, &je);
  if (!cfg) return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: cannot parse (line %d: %s)", p, je.line, je.text);
  nq_projector_opts_t o;
  nq_projector_opts_init(&o);
  json_t *v = json_object_get(cfg, "nhead");
  if (json_is_integer(v)) o.nhead = (int)json_integer_value(v);
  v = json_object_get(cfg, "layer_norm_eps");
  if (json_is_number(v)) o.eps = (float)json_number_value(v);
  o.wdtype = nq_mng__wdtype(ctx);
  v = json_object_get(cfg, "prefix");
  char prefix[256];
  snprintf(prefix, sizeof prefix, "%s", json_is_string(v) ? json_string_value(v) : "gen_text_hidden_fcs.0.");
  json_decref(cfg);
  nq_ckpt_t *ck = NULL;
  nq_projector_t *pr = NULL;
  float *h = NULL, *e = NULL, *out = NULL;
  int64_t n = 0, n2 = 0;
  snprintf(p, sizeof p, "%s/model.safetensors", ctx->model_dir);
  int rc = nq_ckpt_open(p, &ck, err);
  if (!rc) rc = nq_projector_load(ck, prefix, &o, &pr, err);
  if (!rc) rc = nq_mng__input2(ctx, "hidden", pr->in_dim, &h, &n, err);
  if (!rc) rc = nq_mng__input2(ctx, "embeds", pr->in_dim, &e, &n2, err);
  if (!rc && (n != n2 || n < 1 || n > 65536))
    rc = nq_err_set(err, NQ_ESHAPE, NQ_ERR_FATAL, "out-proj: hidden has %lld rows, embeds %lld", (long long)n,
                    (long long)n2);
  if (!rc && !(out = malloc(sizeof(float) * (size_t)pr->n_queries * (size_t)pr->out_dim)))
    rc = nq_err_set(err, NQ_ENOMEM, 0, "out of memory");
  if (!rc) rc = nq_projector_forward(pr, h, e, (int)n, out, err);
  if (!rc) rc = nq_st_writer_add_f32(ctx->out, "out", 3, NQ_SHAPE(1, pr->n_queries, pr->out_dim), out, err);
  free(h), free(e), free(out);
  nq_projector_free(pr);
  nq_ckpt_close(ck);
  return rc;
}

/* A golden `nextgpt` model dir (config.json with NExT-GPT's base.yaml keys) or a model YAML file. */
static int nq_mng__open(const nq_module_ctx_t *ctx, nq_nextgpt_t **ng, nq_err_t *err) {
  if (!ctx->model_dir) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "%s: --model is required", ctx->kind);
  if (ctx->threads > 0) nq_compute_set_threads(ctx->threads);
  struct stat st;
  if (stat(ctx->model_dir, &st) != 0) return nq_err_set(err, NQ_ENOENT, NQ_ERR_FATAL, "%s: not found", ctx->model_dir);
  nq_nextgpt_config_t c;
  int rc;
  if (!S_ISDIR(st.st_mode)) {
    if ((rc = nq_nextgpt_config_load(ctx->model_dir, &c, err)) < 0) return rc;
  } else {
    if ((rc = nq_nextgpt_config_init(&c, err)) < 0) return rc;
    char p[4200];
    snprintf(p, sizeof p, "%s/config.json", ctx->model_dir);
    json_error_t je;
    json_t *cfg = json_load_file(p, 0, &je);
    if (!cfg) {
      nq_nextgpt_config_deinit(&c);
      return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: cannot parse (line %d: %s)", p, je.line, je.text);
    }
    static const char *const ints[] = {"n_img_tokens", "n_video_tokens", "n_audio_tokens", "num_clip_tokens"};
    for (size_t i = 0; i < sizeof ints / sizeof *ints && !rc; i++) {
      json_t *v = json_object_get(cfg, ints[i]);
      char val[32];
      if (!json_is_integer(v)) continue;
      snprintf(val, sizeof val, "%lld", (long long)json_integer_value(v));
      rc = nq_config_set(nq_nextgpt_config_props, &c, ints[i], val, p, err);
      if (!rc && strncmp(ints[i], "n_", 2) == 0) { /* num_gen_* follow n_* */
        char key[64];
        snprintf(key, sizeof key, "num_gen_%s", ints[i] + 2);
        rc = nq_config_set(nq_nextgpt_config_props, &c, key, val, p, err);
      }
    }
    json_t *fc = json_object_get(cfg, "text_fc_to_img");
    char val[64];
    if (!rc && json_is_integer(json_object_get(fc, "nhead"))) {
      snprintf(val, sizeof val, "%lld", (long long)json_integer_value(json_object_get(fc, "nhead")));
      rc = nq_config_set(nq_nextgpt_config_props, &c, "projector.nhead", val, p, err);
    }
    if (!rc && json_is_number(json_object_get(fc, "layer_norm_eps"))) {
      snprintf(val, sizeof val, "%.17g", json_number_value(json_object_get(fc, "layer_norm_eps")));
      rc = nq_config_set(nq_nextgpt_config_props, &c, "projector.layer_norm_eps", val, p, err);
    }
    json_t *stops = json_object_get(json_object_get(cfg, "generation"), "stops_id");
    if (!rc && json_is_array(stops)) {
      char *s = json_dumps(stops, JSON_COMPACT);
      rc = s ? nq_config_set(nq_nextgpt_config_props, &c, "generation.stops_id", s, p, err)
             : nq_err_set(err, NQ_ENOMEM, 0, "out of memory");
      free(s);
    }
    json_decref(cfg);
    snprintf(p, sizeof p, "%s/nextgpt.safetensors", ctx->model_dir);
    if (!rc) rc = nq_config_set(nq_nextgpt_config_props, &c, "vicuna_ckpt_path", ctx->model_dir, "--model", err);
    if (!rc && stat(p, &st) == 0) rc = nq_config_set(nq_nextgpt_config_props, &c, "delta_ckpt_path", p, "--model", err);
  }
  if (!rc) rc = nq_config_set(nq_nextgpt_config_props, &c, "compute.dtype", ctx->dtype ? ctx->dtype : "f32", "--dtype", err);
  if (!rc) rc = nq_nextgpt_open(&c, NULL, ng, err);
  nq_nextgpt_config_deinit(&c);
  return rc;
}

/* text_000 as a NUL-terminated string, and media_embeds [n, E] (absent = none). */
static int nq_mng__prompt_inputs(const nq_module_ctx_t *ctx, nq_nextgpt_t *ng, char **text, float **media, int *n_media,
                                 nq_err_t *err) {
  *text = NULL, *media = NULL, *n_media = 0;
  const nq_st_tensor_t *t = ctx->in ? nq_st_find(ctx->in, "text_000") : NULL;
  if (!t || t->dtype != NQ_DT_U8 || t->ndim != 1)
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "%s: input text_000 (1-d U8) is required", ctx->kind);
  if (memchr(t->data, 0, t->nbytes)) return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: text_000 contains NUL", ctx->kind);
  if (!(*text = strndup(t->data, t->nbytes))) return nq_err_set(err, NQ_ENOMEM, 0, "out of memory");
  if (!nq_st_find(ctx->in, "media_embeds")) return 0;
  int64_t E = ng->have_in_proj ? ng->in_proj.w.ne[1] : 0, rows = 0;
  int rc = nq_mng__input2(ctx, "media_embeds", E, media, &rows, err);
  if (!rc && rows > 4096) rc = nq_err_set(err, NQ_ELIMIT, NQ_ERR_FATAL, "%s: %lld media rows", ctx->kind, (long long)rows);
  if (rc) {
    free(*text), free(*media);
    *text = NULL, *media = NULL;
    return rc;
  }
  *n_media = (int)rows;
  return 0;
}

int nq_module_nextgpt_prompt(const nq_module_ctx_t *ctx, nq_err_t *err) {
  nq_nextgpt_t *ng;
  int rc = nq_mng__open(ctx, &ng, err);
  if (rc < 0) return rc;
  char *text = NULL;
  float *media = NULL;
  int n_media = 0;
  nq_nextgpt_prompt_t P = {0};
  rc = nq_mng__prompt_inputs(ctx, ng, &text, &media, &n_media, err);
  if (!rc) rc = nq_nextgpt_prompt_build(ng, text, media, n_media, &P, err);
  if (!rc) rc = nq_st_writer_add_f32(ctx->out, "input_embeds", 2, NQ_SHAPE(P.T, ng->llm->cfg.dim), P.embeds, err);
  if (!rc) rc = nq_st_writer_add(ctx->out, "token_ids", NQ_DT_I64, 1, NQ_SHAPE(P.T), P.ids, err);
  nq_nextgpt_prompt_deinit(&P);
  free(text), free(media);
  nq_nextgpt_free(ng);
  return rc;
}

int nq_module_nextgpt_signal(const nq_module_ctx_t *ctx, nq_err_t *err) {
  const char *om = nq_module_param(ctx, "offset_minus_one"), *mod = nq_module_param(ctx, "modality");
  int offset = -1;
  if (om) {
    if (!strcmp(om, "true") || !strcmp(om, "1")) offset = 1;
    else if (!strcmp(om, "false") || !strcmp(om, "0")) offset = 0;
    else return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "--param offset_minus_one=%s: true or false", om);
  }
  int want = -1;
  for (int m = 0; mod && m < NQ_NG_N_MODALITIES; m++)
    if (!strcmp(mod, nq_nextgpt_modality_name(m))) want = m;
  if (mod && want < 0) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "--param modality=%s: image, video or audio", mod);
  nq_nextgpt_t *ng;
  int rc = nq_mng__open(ctx, &ng, err);
  if (rc < 0) return rc;
  char *text = NULL;
  float *media = NULL, *g = NULL;
  int n_media = 0;
  int32_t *gen = NULL;
  int64_t G = 0;
  const nq_st_tensor_t *tg = NULL;
  nq_nextgpt_output_t o = {0};
  rc = nq_mng__prompt_inputs(ctx, ng, &text, &media, &n_media, err);
  if (!rc) rc = nq_module_input_f32(ctx, "generated", &g, &tg, err);
  if (!rc && (tg->ndim != 1 || (tg->dtype != NQ_DT_I64 && tg->dtype != NQ_DT_I32) || (G = tg->shape[0]) < 1 || G > (1 << 20)))
    rc = nq_err_set(err, NQ_ESHAPE, NQ_ERR_FATAL, "%s: generated must be a non-empty 1-d I64/I32 tensor", ctx->kind);
  if (!rc && !(gen = malloc(sizeof(int32_t) * (size_t)G))) rc = nq_err_set(err, NQ_ENOMEM, 0, "out of memory");
  for (int64_t i = 0; !rc && i < G; i++) gen[i] = (int32_t)g[i];
  if (!rc) rc = nq_nextgpt_signals_from_ids(ng, text, media, n_media, gen, (int)G, offset, true, &o, err);
  int m = want;
  for (int k = 0; !rc && m < 0 && k < NQ_NG_N_MODALITIES; k++)
    if (o.sig[k].present) m = k;
  if (!rc && (m < 0 || !o.sig[m].present))
    rc = nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "%s: no %s signal span in the generated ids", ctx->kind,
                    m < 0 ? "" : nq_nextgpt_modality_name(m));
  if (!rc && !o.sig[m].cond)
    rc = nq_err_set(err, NQ_ENOENT, NQ_ERR_FATAL, "%s: the model has no %s projector", ctx->kind, nq_nextgpt_modality_name(m));
  if (!rc) {
    nq_nextgpt_signal_t *s = &o.sig[m];
    rc = nq_st_writer_add_f32(ctx->out, "signal_hidden", 2, NQ_SHAPE(s->n, s->dim), s->hidden, err);
    if (!rc) rc = nq_st_writer_add_f32(ctx->out, "signal_embeds", 2, NQ_SHAPE(s->n, s->dim), s->embeds, err);
    if (!rc) rc = nq_st_writer_add_f32(ctx->out, "projected", 3, NQ_SHAPE(1, s->K, s->D), s->cond, err);
    if (!rc)
      rc = nq_st_writer_add(ctx->out, "caption_text", NQ_DT_U8, 1, NQ_SHAPE((int64_t)strlen(s->caption)), s->caption, err);
  }
  nq_nextgpt_output_deinit(&o);
  free(text), free(media), free(g), free(gen);
  nq_nextgpt_free(ng);
  return rc;
}

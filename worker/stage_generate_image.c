/* worker/stage_generate_image.c — the `generate-image` stage: text or prompt embeddings -> Stable Diffusion -> PNG.
 *
 * Conditioning, first match wins:
 *   1. input.prev.llm.signals.image (NExT-GPT chain, worker/nextgpt_stage.h): its `cond` URI ([77, 768] float32
 *      .npy written by the llm stage), or hidden/embeds projected here with the NExT-GPT model YAML (params.nextgpt,
 *      stage config {generate-image: {nextgpt: YAML}}, $NQ_NEXTGPT_MODEL);
 *   2. an output of input.prev.llm.outputs[] whose URI ends with "image_cond.npy" (or "image_cond.safetensors");
 *   3. input.prompt_embeds (or input.meta.prompt_embeds, a JSONL field): a URI of a .npy (float32 or float16, [77, D] or [1, 77, D]: NExT-GPT's precomputed
 *      caption embeddings work as is) or a .safetensors (tensor "prompt_embeds", "cond", "embeds" or its only
 *      tensor), read through the task's store;
 *   4. text: input.prompt, else input.text (a dataset record's caption/prompt), through the pipeline's CLIP.
 * The unconditional embedding is always CLIP(input.negative_prompt or "") (spec §8).
 *
 * A task input may also be {"records": [...]} (a job with batch_size > 1): one image per record, each under
 * "<record key>/".
 *
 * Params (the task's params; a record's own "seed" — top level or meta.seed — wins): seed (default 0), steps (50), guidance_scale (7.5),
 * height/width (the model's default, 512 for SD-1.5), scheduler (ddim|pndm|euler; default the model's),
 * preview_every (0: TAESD previews every k model evaluations; needs a TAESD model), negative_prompt.
 * Outputs: image.png (8-bit RGB) and preview_<step>.png; result "images": [{key, uri, seed, width, height}] and
 * "metrics": {n_evals, steps, t_text_s, t_denoise_s, t_decode_s, s_per_eval, previews, progress: [steps reported]}.
 *
 * Model: params.image_model, params.model, the stage config ({generate-image: {model: DIR, taesd: DIR, dtype:
 * f32|bf16, config_dir: DIR, tokenizer: PATH}}), the NExT-GPT YAML's image_diffusion, $NQ_SD_MODEL. TAESD:
 * params.taesd, stage config taesd, $NQ_SD_TAESD. DIR is anything nq_sd_open takes (diffusers dir or LDM file).
 * Pipelines are cached per (model, taesd); one generation at a time per pipeline (nq_sd serialises).
 *
 * Errors: bad params / inputs and models that do not load are fatal; out-of-memory is retriable.
 */
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "compute/io/npy.h"
#include "compute/io/safetensors.h"
#include "compute/pipelines/sd.h"
#include "datasets/media.h"
#include "worker/nextgpt_stage.h"
#include "worker/stages.h"

#define GI_CACHE_MAX 4
#define GI_MAX_RECORDS 256

typedef struct gi_entry {
  char *model, *taesd; /* owned keys (taesd may be NULL) */
  nq_sd_t *sd;         /* owned */
} gi_entry_t;

typedef struct gi_state {
  pthread_mutex_t mu;  /* guards the cache (loads happen under it) */
  gi_entry_t e[GI_CACHE_MAX];
  int n;
  char *def_model, *def_taesd, *def_nextgpt, *config_dir, *tokenizer; /* owned, may be NULL */
  int wdtype;
  nq_ngcache_t *ng;    /* owned: NExT-GPT projectors (chain without cond) */
} gi_state_t;

static char *gi__dup(const char *s) { return s && *s ? strdup(s) : NULL; }

static void gi_fini(void *state) {
  gi_state_t *s = state;
  if (!s) return;
  for (int i = 0; i < s->n; i++) nq_sd_free(s->e[i].sd), free(s->e[i].model), free(s->e[i].taesd);
  free(s->def_model), free(s->def_taesd), free(s->def_nextgpt), free(s->config_dir), free(s->tokenizer);
  nq_ngcache_free(s->ng);
  pthread_mutex_destroy(&s->mu);
  free(s);
}

static int gi_init(void **state, const json_t *config, nq_err_t *err) {
  gi_state_t *s = calloc(1, sizeof *s);
  if (!s) return nq_err_set(err, NQ_ENOMEM, NQ_ERR_FATAL, "generate-image: out of memory");
  pthread_mutex_init(&s->mu, NULL);
  const char *m = json_string_value(json_object_get(config, "model"));
  const char *t = json_string_value(json_object_get(config, "taesd"));
  const char *ng = json_string_value(json_object_get(config, "nextgpt"));
  s->def_model = gi__dup(m ? m : getenv("NQ_SD_MODEL"));
  s->def_taesd = gi__dup(t ? t : getenv("NQ_SD_TAESD"));
  s->def_nextgpt = gi__dup(ng ? ng : getenv("NQ_NEXTGPT_MODEL"));
  s->config_dir = gi__dup(json_string_value(json_object_get(config, "config_dir")));
  s->tokenizer = gi__dup(json_string_value(json_object_get(config, "tokenizer")));
  s->wdtype = -1;
  const char *dt = json_string_value(json_object_get(config, "dtype"));
  int rc = 0;
  if (dt && !strcmp(dt, "bf16")) s->wdtype = NQ_DT_BF16;
  else if (dt && !strcmp(dt, "f16")) s->wdtype = NQ_DT_F16;
  else if (dt && strcmp(dt, "f32"))
    rc = nq_err_set(err, NQ_ECONFIG, NQ_ERR_FATAL, "generate-image: dtype '%s' (want f32, bf16 or f16)", dt);
  if (!rc && !(s->ng = nq_ngcache_new())) rc = nq_err_set(err, NQ_ENOMEM, NQ_ERR_FATAL, "generate-image: out of memory");
  if (rc) {
    gi_fini(s);
    return rc;
  }
  *state = s;
  return 0;
}

static bool gi__eq(const char *a, const char *b) { return (!a && !b) || (a && b && !strcmp(a, b)); }

/* The cached pipeline for (model, taesd), loaded on first use. NULL with err set. */
static nq_sd_t *gi_get(gi_state_t *s, const char *model, const char *taesd, nq_err_t *err) {
  pthread_mutex_lock(&s->mu);
  for (int i = 0; i < s->n; i++)
    if (!strcmp(s->e[i].model, model) && gi__eq(s->e[i].taesd, taesd)) {
      pthread_mutex_unlock(&s->mu);
      return s->e[i].sd;
    }
  if (s->n == GI_CACHE_MAX) { /* no eviction: another task thread may be using any of them */
    pthread_mutex_unlock(&s->mu);
    nq_err_set(err, NQ_ELIMIT, NQ_ERR_FATAL, "generate-image: more than %d models requested of one worker (%s)",
               GI_CACHE_MAX, model);
    return NULL;
  }
  nq_sd_opts_t o;
  nq_sd_opts_init(&o);
  o.wdtype = s->wdtype;
  o.taesd = taesd, o.config_dir = s->config_dir, o.tokenizer = s->tokenizer;
  nq_sd_t *sd = NULL;
  if (nq_sd_open(model, &o, &sd, err) != 0) {
    pthread_mutex_unlock(&s->mu);
    if (err->code != NQ_ENOMEM) err->flags = NQ_ERR_FATAL;
    nq_err_prefix(err, "generate-image");
    return NULL;
  }
  gi_entry_t *e = &s->e[s->n++];
  e->model = strdup(model);
  e->taesd = taesd ? strdup(taesd) : NULL;
  e->sd = sd;
  pthread_mutex_unlock(&s->mu);
  return sd;
}

/* ---- conditioning inputs ---- */

static bool gi__ends(const char *s, const char *suf) {
  size_t a = strlen(s), b = strlen(suf);
  return a >= b && !strcmp(s + a - b, suf);
}

/* A [77,D] / [1,77,D] / [D] float matrix out of a .npy (F32/F16/F64) in memory. */
static int gi_npy_rows(const void *buf, size_t len, const char *name, float **out, int *rows, int *cols,
                       nq_err_t *err) {
  nq_npy_view_t v;
  int rc = nq_npy_parse(buf, len, name, &v, err);
  if (rc) return rc;
  int64_t r = 1, c;
  if (v.ndim == 3 && v.shape[0] == 1) r = v.shape[1], c = v.shape[2];
  else if (v.ndim == 2) r = v.shape[0], c = v.shape[1];
  else return nq_err_set(err, NQ_ESHAPE, NQ_ERR_FATAL, "%s: embeddings of %d dims (want [77, D] or [1, 77, D])", name,
                         v.ndim);
  if (r < 1 || r > NQ_SD_MAX_TOKENS || c < 1 || c > 65536)
    return nq_err_set(err, NQ_ESHAPE, NQ_ERR_FATAL, "%s: embeddings [%lld, %lld]", name, (long long)r, (long long)c);
  if (v.dtype != NQ_DT_F32 && v.dtype != NQ_DT_F16 && v.dtype != NQ_DT_F64)
    return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: embeddings dtype %s", name, nq_dtype_name(v.dtype));
  float *f = malloc(sizeof(float) * (size_t)(r * c));
  if (!f) return nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "%s: out of memory", name);
  /* the view may be unaligned: convert through an aligned copy */
  void *tmp = malloc(v.nbytes ? v.nbytes : 1);
  if (!tmp) {
    free(f);
    return nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "%s: out of memory", name);
  }
  memcpy(tmp, v.data, v.nbytes);
  rc = nq_dtype_to_f32(v.dtype, tmp, f, (size_t)(r * c));
  free(tmp);
  if (rc) {
    free(f);
    return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: cannot convert %s", name, nq_dtype_name(v.dtype));
  }
  *out = f, *rows = (int)r, *cols = (int)c;
  return 0;
}

/* Reads embeddings by URI through the store (.npy or .safetensors). */
static int gi_read_embeds(nq_task_ctx_t *t, const char *uri, float **out, int *rows, int *cols, nq_err_t *err) {
  if (gi__ends(uri, ".safetensors")) {
    char path[4096];
    int rc = nq_store_resolve(t->store, uri, path, sizeof path, err);
    nq_st_file_t *f = NULL;
    if (!rc) rc = nq_st_open(path, &f, err);
    if (rc) {
      if (!(err->flags & NQ_ERR_RETRIABLE)) err->flags |= NQ_ERR_FATAL;
      return rc;
    }
    const nq_st_tensor_t *st = nq_st_find(f, "prompt_embeds");
    if (!st) st = nq_st_find(f, "cond");
    if (!st) st = nq_st_find(f, "embeds");
    if (!st && nq_st_count(f) == 1) st = nq_st_get(f, 0);
    int64_t r = 0, c = 0;
    if (!st) rc = nq_err_set(err, NQ_ENOENT, NQ_ERR_FATAL, "%s: no prompt_embeds/cond/embeds tensor", uri);
    else if (st->ndim == 3 && st->shape[0] == 1) r = st->shape[1], c = st->shape[2];
    else if (st->ndim == 2) r = st->shape[0], c = st->shape[1];
    if (!rc && (r < 1 || r > NQ_SD_MAX_TOKENS || c < 1 || c > 65536))
      rc = nq_err_set(err, NQ_ESHAPE, NQ_ERR_FATAL, "%s: %s is not [77, D] / [1, 77, D]", uri, st->name);
    float *fl = rc ? NULL : malloc(sizeof(float) * (size_t)(r * c));
    if (!rc && !fl) rc = nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "%s: out of memory", uri);
    if (!rc && nq_dtype_to_f32(st->dtype, st->data, fl, (size_t)(r * c)))
      rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: %s dtype %s", uri, st->name, nq_dtype_name(st->dtype));
    nq_st_close(f);
    if (rc) {
      free(fl);
      return rc;
    }
    *out = fl, *rows = (int)r, *cols = (int)c;
    return 0;
  }
  void *buf = NULL;
  size_t len = 0;
  int rc = nq_store_get(t->store, uri, &buf, &len, err);
  if (rc) {
    if (!(err->flags & NQ_ERR_RETRIABLE)) err->flags |= NQ_ERR_FATAL;
    return nq_err_prefix(err, "prompt_embeds");
  }
  rc = gi_npy_rows(buf, len, uri, out, rows, cols, err);
  free(buf);
  return rc;
}

/* The conditioning of one record: *emb (owned) or *prompt (borrowed), per the order in the header. */
static int gi_conditioning(gi_state_t *s, nq_task_ctx_t *t, const json_t *rec, float **emb, int *rows, int *cols,
                           const char **prompt, nq_err_t *err) {
  *emb = NULL, *prompt = NULL;
  const json_t *llm = json_object_get(json_object_get(t->env->input, "prev"), "llm");
  if (json_is_object(json_object_get(json_object_get(llm, "signals"), "image"))) {
    int rc = nq_ngstage_cond(s->ng, t, NQ_NG_IMAGE, nq_ngstage_model(t->env->params, s->def_nextgpt), emb, rows, cols,
                             NULL, err);
    if (rc) nq_err_prefix(err, "generate-image: NExT-GPT conditioning");
    return rc;
  }
  size_t i;
  json_t *o;
  json_array_foreach(json_object_get(llm, "outputs"), i, o) {
    const char *u = json_string_value(json_object_get(o, "uri"));
    if (u && (gi__ends(u, "image_cond.npy") || gi__ends(u, "image_cond.safetensors")))
      return gi_read_embeds(t, u, emb, rows, cols, err);
  }
  const char *pe = json_string_value(json_object_get(rec, "prompt_embeds"));
  if (!pe) pe = json_string_value(json_object_get(json_object_get(rec, "meta"), "prompt_embeds"));
  if (pe) return gi_read_embeds(t, pe, emb, rows, cols, err);
  const char *p = json_string_value(json_object_get(rec, "prompt"));
  if (!p) p = json_string_value(json_object_get(rec, "text"));
  if (!p)
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL,
                      "generate-image: the task has no prompt, text, prompt_embeds or NExT-GPT image conditioning");
  *prompt = p;
  return 0;
}

/* ---- params ---- */

typedef struct gi_params {
  long long seed;
  int steps, height, width, preview_every;
  double guidance;
  const char *scheduler, *negative, *model, *taesd; /* borrowed */
} gi_params_t;

static int gi_int(const json_t *o, const char *k, long long def, long long lo, long long hi, long long *out,
                  nq_err_t *err) {
  const json_t *v = json_object_get(o, k);
  if (!v || json_is_null(v)) {
    *out = def;
    return 0;
  }
  if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi)
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "generate-image: params.%s must be an integer in %lld..%lld", k, lo,
                      hi);
  *out = json_integer_value(v);
  return 0;
}

static int gi_parse_params(gi_state_t *s, const json_t *pa, gi_params_t *p, nq_err_t *err) {
  long long v;
  int rc;
  memset(p, 0, sizeof *p);
  if ((rc = gi_int(pa, "seed", 0, 0, (long long)1 << 62, &p->seed, err))) return rc;
  if ((rc = gi_int(pa, "steps", 50, 1, NQ_SD_MAX_STEPS, &v, err))) return rc;
  p->steps = (int)v;
  if ((rc = gi_int(pa, "height", 0, 0, NQ_SD_MAX_SIDE, &v, err))) return rc;
  p->height = (int)v;
  if ((rc = gi_int(pa, "width", 0, 0, NQ_SD_MAX_SIDE, &v, err))) return rc;
  p->width = (int)v;
  if ((rc = gi_int(pa, "preview_every", 0, 0, NQ_SD_MAX_STEPS, &v, err))) return rc;
  p->preview_every = (int)v;
  const json_t *g = json_object_get(pa, "guidance_scale");
  p->guidance = 7.5;
  if (g && !json_is_null(g)) {
    if (!json_is_number(g) || json_number_value(g) < 0 || json_number_value(g) > 100)
      return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "generate-image: params.guidance_scale must be a number in 0..100");
    p->guidance = json_number_value(g);
  }
  p->scheduler = json_string_value(json_object_get(pa, "scheduler"));
  p->negative = json_string_value(json_object_get(pa, "negative_prompt"));
  p->model = json_string_value(json_object_get(pa, "image_model"));
  if (!p->model) p->model = json_string_value(json_object_get(pa, "model"));
  if (!p->model) p->model = s->def_model;
  p->taesd = json_string_value(json_object_get(pa, "taesd"));
  if (!p->taesd) p->taesd = s->def_taesd;
  return 0;
}

/* The NExT-GPT YAML's image_diffusion as a last-resort model (owned or NULL). */
static char *gi_nextgpt_image_model(const gi_state_t *s, const json_t *params) {
  const char *y = nq_ngstage_model(params, s->def_nextgpt);
  if (!y) return NULL;
  nq_nextgpt_config_t c;
  nq_err_t e = {0};
  if (nq_nextgpt_config_load(y, &c, &e) != 0) return NULL;
  char *m = gi__dup(c.image_diffusion);
  nq_nextgpt_config_deinit(&c);
  return m;
}

/* ---- one record ---- */

typedef struct gi_prog {
  nq_task_ctx_t *t;
  const char *prefix;  /* "" or "<key>/" */
  json_t *steps;       /* borrowed array: steps reported */
  int previews;
  nq_err_t err;        /* first preview write error */
} gi_prog_t;

static int gi_on_progress(void *ud, const nq_sd_progress_t *p) {
  gi_prog_t *g = ud;
  json_array_append_new(g->steps, json_integer(p->step));
  NQ_DEBUG("generate-image", "task %s: step %d/%d", g->t->env->task, p->step, p->n_steps);
  if (p->preview && !g->err.code) {
    void *png = NULL;
    size_t len = 0;
    char name[600];
    snprintf(name, sizeof name, "%spreview_%d.png", g->prefix, p->step);
    if (nq_media_png_encode(p->preview, p->preview_w, p->preview_h, &png, &len, &g->err) == 0 &&
        nq_task_put(g->t, name, png, len, &g->err) == 0)
      g->previews++;
    free(png);
  }
  return 0;
}

static int gi_record(gi_state_t *s, nq_task_ctx_t *t, const json_t *rec, const char *prefix, const gi_params_t *p0,
                     json_t *images, json_t *metrics, nq_err_t *err) {
  gi_params_t p = *p0;
  long long rs;
  /* a record's own seed wins (top level, or meta.seed: a JSONL line's extra fields) */
  const json_t *so = json_object_get(rec, "seed") ? rec : json_object_get(rec, "meta");
  int rc = gi_int(so, "seed", p.seed, 0, (long long)1 << 62, &rs, err);
  if (rc) return rc;
  char *ng_model = NULL;
  if (!p.model) p.model = ng_model = gi_nextgpt_image_model(s, t->env->params);
  if (!p.model)
    return nq_err_set(err, NQ_ECONFIG, NQ_ERR_FATAL,
                      "generate-image: no model: set params.model, generate-image.model in the stage config or "
                      "$NQ_SD_MODEL");
  nq_sd_t *sd = gi_get(s, p.model, p.taesd, err);
  free(ng_model);
  if (!sd) return err->code;
  float *emb = NULL;
  int rows = 0, cols = 0;
  const char *prompt = NULL;
  if ((rc = gi_conditioning(s, t, rec, &emb, &rows, &cols, &prompt, err))) return rc;
  nq_sd_request_t r;
  nq_sd_request_init(&r);
  r.prompt = prompt, r.negative_prompt = p.negative;
  r.prompt_embeds = emb, r.embeds_tokens = rows, r.embeds_dim = cols;
  r.seed = (uint64_t)rs, r.steps = p.steps, r.guidance_scale = (float)p.guidance;
  r.height = p.height, r.width = p.width, r.scheduler = p.scheduler, r.preview_every = p.preview_every;
  json_t *steps = json_array();
  gi_prog_t g = {.t = t, .prefix = prefix, .steps = steps};
  r.progress = gi_on_progress, r.progress_ud = &g;
  nq_sd_result_t res;
  rc = nq_sd_generate(sd, &r, &res, err);
  free(emb);
  if (!rc && g.err.code) *err = g.err, rc = g.err.code;
  void *png = NULL;
  size_t len = 0;
  char name[600];
  snprintf(name, sizeof name, "%simage.png", prefix);
  if (!rc) rc = nq_media_png_encode(res.rgb, res.width, res.height, &png, &len, err);
  if (!rc) rc = nq_task_put(t, name, png, len, err);
  free(png);
  if (!rc) {
    json_t *last = json_array_get(t->outputs, json_array_size(t->outputs) - 1);
    const char *key = json_string_value(json_object_get(rec, "key"));
    json_array_append_new(images, json_pack("{s:s?,s:O,s:I,s:i,s:i}", "key", key, "uri", json_object_get(last, "uri"),
                                            "seed", (json_int_t)rs, "width", res.width, "height", res.height));
    double te = res.t_text + json_number_value(json_object_get(metrics, "t_text_s"));
    double td = res.t_denoise + json_number_value(json_object_get(metrics, "t_denoise_s"));
    double tv = res.t_decode + json_number_value(json_object_get(metrics, "t_decode_s"));
    json_int_t ne = res.n_evals + json_integer_value(json_object_get(metrics, "n_evals"));
    json_object_set_new(metrics, "t_text_s", json_real(te));
    json_object_set_new(metrics, "t_denoise_s", json_real(td));
    json_object_set_new(metrics, "t_decode_s", json_real(tv));
    json_object_set_new(metrics, "n_evals", json_integer(ne));
    json_object_set_new(metrics, "steps", json_integer(p.steps));
    json_object_set_new(metrics, "s_per_eval", json_real(ne > 0 ? td / (double)ne : 0));
    json_object_set_new(metrics, "previews",
                        json_integer(g.previews + json_integer_value(json_object_get(metrics, "previews"))));
    json_object_set(metrics, "progress", steps);
  }
  json_decref(steps);
  nq_sd_result_deinit(&res);
  return rc;
}

static void gi_task(gi_state_t *s, nq_task_ctx_t *t) {
  nq_err_t err = {0};
  gi_params_t p;
  if (gi_parse_params(s, t->env->params, &p, &err)) {
    t->err = err, t->rc = err.code;
    return;
  }
  json_t *images = json_array(), *metrics = json_object();
  const json_t *recs = json_object_get(t->env->input, "records");
  int rc = 0;
  if (json_is_array(recs)) {
    if (json_array_size(recs) > GI_MAX_RECORDS)
      rc = nq_err_set(&err, NQ_ELIMIT, NQ_ERR_FATAL, "generate-image: %zu records in one task (max %d)",
                      json_array_size(recs), GI_MAX_RECORDS);
    size_t i;
    json_t *rec;
    json_array_foreach(recs, i, rec) {
      if (rc) break;
      const char *key = json_string_value(json_object_get(rec, "key"));
      char prefix[NQ_STORE_KEY_MAX + 2], kbuf[32];
      if (!key) snprintf(kbuf, sizeof kbuf, "%06zu", i), key = kbuf;
      if ((rc = nq_store_key_check(key, &err))) {
        err.flags = NQ_ERR_FATAL;
        break;
      }
      snprintf(prefix, sizeof prefix, "%s/", key);
      if ((rc = gi_record(s, t, rec, prefix, &p, images, metrics, &err))) nq_err_prefix(&err, "record %s", key);
    }
  } else {
    rc = gi_record(s, t, t->env->input, "", &p, images, metrics, &err);
  }
  if (rc) {
    if (err.code == NQ_ENOMEM) err.flags = NQ_ERR_RETRIABLE;
    t->err = err, t->rc = rc;
    json_decref(images), json_decref(metrics);
    return;
  }
  json_object_set_new(t->result, "images", images);
  json_object_set_new(t->result, "metrics", metrics);
}

static void gi_run_batch(void *state, nq_task_ctx_t *t, int n) {
  for (int i = 0; i < n; i++) gi_task(state, &t[i]);
}

const nq_stage_t nq_stage_generate_image = {
    .name = "generate-image",
    .max_batch = 4,
    .init = gi_init,
    .run_batch = gi_run_batch,
    .fini = gi_fini,
};

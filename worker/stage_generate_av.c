/* worker/stage_generate_av.c — shared parts of the generate-audio / generate-video stages (stage_generate_av.h). */
#include "worker/stage_generate_av.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/log.h"
#include "compute/io/npy.h"
#include "compute/io/safetensors.h"
#include "store/store.h"

double nq_genav_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static char *nq_genav__dup(const char *s) { return s && *s ? strdup(s) : NULL; }

int nq_genav_init(nq_genav_state_t **out, const json_t *config, const char *stage, const char *env_model, int modality,
                  nq_genav_open_fn open, nq_genav_free_fn free_pipe, nq_err_t *err) {
  *out = NULL;
  int wdtype = -1;
  const char *dt = json_string_value(json_object_get(config, "dtype"));
  if (dt && !strcmp(dt, "bf16")) wdtype = NQ_DT_BF16;
  else if (dt && !strcmp(dt, "f16")) wdtype = NQ_DT_F16;
  else if (dt && strcmp(dt, "f32"))
    return nq_err_set(err, NQ_ECONFIG, NQ_ERR_FATAL, "%s: dtype '%s' (want f32, bf16 or f16)", stage, dt);
  nq_genav_state_t *s = calloc(1, sizeof *s);
  if (!s || !(s->ng = nq_ngcache_new())) {
    free(s);
    return nq_err_set(err, NQ_ENOMEM, NQ_ERR_FATAL, "%s: out of memory", stage);
  }
  pthread_mutex_init(&s->mu, NULL);
  s->stage = stage, s->env_model = env_model, s->modality = modality, s->open = open, s->free_pipe = free_pipe;
  s->wdtype = wdtype;
  const char *m = json_string_value(json_object_get(config, "model"));
  if (!m) m = getenv(env_model);
  s->def_model = nq_genav__dup(m);
  const char *ng = json_string_value(json_object_get(config, "nextgpt"));
  if (!ng) ng = getenv("NQ_NEXTGPT_MODEL");
  s->def_nextgpt = nq_genav__dup(ng);
  s->backends = nq_genav__dup(json_string_value(json_object_get(config, "backends")));
  *out = s;
  return 0;
}

void nq_genav_fini(nq_genav_state_t *s) {
  if (!s) return;
  for (int i = 0; i < s->n; i++) s->free_pipe(s->pipe[i]), free(s->path[i]);
  free(s->def_model), free(s->def_nextgpt), free(s->backends);
  nq_ngcache_free(s->ng);
  pthread_mutex_destroy(&s->mu);
  free(s);
}

/* params.<audio|video>_model > stage config / env > the NExT-GPT YAML's <m>_diffusion. *owned set when malloc'ed. */
static const char *nq_genav__model(nq_genav_state_t *s, const nq_task_ctx_t *t, char **owned, nq_err_t *err) {
  *owned = NULL;
  const json_t *pa = t->env->params;
  const char *key = s->modality == NQ_NG_AUDIO ? "audio_model" : "video_model";
  const char *p = json_string_value(json_object_get(pa, key));
  if (p) return p;
  if (s->def_model) return s->def_model;
  const char *yaml = nq_ngstage_model(pa, s->def_nextgpt);
  if (yaml) {
    nq_nextgpt_config_t c;
    if (nq_nextgpt_config_load(yaml, &c, err) < 0) return NULL;
    const char *d = s->modality == NQ_NG_AUDIO ? c.audio_diffusion : c.video_diffusion;
    if (d && *d) *owned = strdup(d);
    nq_nextgpt_config_deinit(&c);
    if (*owned) return *owned;
  }
  nq_err_set(err, NQ_ECONFIG, NQ_ERR_FATAL, "%s: no model: set params.%s, the stage config's model or $%s", s->stage,
             key, s->env_model);
  return NULL;
}

void *nq_genav_pipe(nq_genav_state_t *s, const nq_task_ctx_t *t, nq_err_t *err) {
  char *owned = NULL;
  const char *path = nq_genav__model(s, t, &owned, err);
  if (!path) return NULL;
  void *pipe = NULL;
  pthread_mutex_lock(&s->mu);
  for (int i = 0; i < s->n && !pipe; i++)
    if (!strcmp(s->path[i], path)) pipe = s->pipe[i];
  if (!pipe) {
    if (s->n == NQ_GENAV_CACHE_MAX) {
      nq_err_set(err, NQ_ELIMIT, NQ_ERR_RETRIABLE, "%s: more than %d models requested of one worker", s->stage,
                 NQ_GENAV_CACHE_MAX);
    } else if (s->open(path, s->backends, s->wdtype, &pipe, err) < 0) {
      err->flags = NQ_ERR_FATAL; /* a model that does not load will not load on retry either */
      pipe = NULL;
    } else {
      s->path[s->n] = strdup(path), s->pipe[s->n] = pipe, s->n++;
      NQ_INFO(s->stage, "loaded %s", path);
    }
  }
  pthread_mutex_unlock(&s->mu);
  free(owned);
  return pipe;
}

/* A float32 .npy or .safetensors object -> rows x cols. */
static int nq_genav__read_embeds(nq_genav_state_t *s, const nq_task_ctx_t *t, const char *uri, nq_genav_cond_t *c,
                                 nq_err_t *err) {
  size_t n = strlen(uri);
  int rc;
  int64_t shape[8] = {0};
  int ndim = 0;
  const void *data = NULL;
  nq_dtype_t dt = NQ_DT_F32;
  void *buf = NULL;
  nq_st_file_t *f = NULL;
  if (n > 12 && !strcmp(uri + n - 12, ".safetensors")) {
    char path[4096];
    if ((rc = nq_store_resolve(t->store, uri, path, sizeof path, err)) < 0 || (rc = nq_st_open(path, &f, err)) < 0)
      return nq_err_prefix(err, "%s: input.embeds", s->stage);
    const nq_st_tensor_t *x = NULL;
    const char *names[] = {"embeds", "cond", "prompt_embeds"};
    for (int i = 0; i < 3 && !x; i++) x = nq_st_find(f, names[i]);
    if (!x && nq_st_count(f) == 1) x = nq_st_get(f, 0);
    if (!x) {
      nq_st_close(f);
      return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: %s: no tensor named embeds, cond or prompt_embeds", s->stage,
                        uri);
    }
    ndim = x->ndim, dt = x->dtype, data = x->data;
    for (int i = 0; i < ndim && i < 8; i++) shape[i] = x->shape[i];
  } else {
    size_t len;
    if ((rc = nq_store_get(t->store, uri, &buf, &len, err)) < 0) return nq_err_prefix(err, "%s: input.embeds", s->stage);
    nq_npy_view_t v;
    if ((rc = nq_npy_parse(buf, len, uri, &v, err)) < 0) {
      free(buf);
      err->flags |= NQ_ERR_FATAL;
      return rc;
    }
    ndim = v.ndim, dt = v.dtype, data = v.data;
    for (int i = 0; i < ndim && i < 8; i++) shape[i] = v.shape[i];
  }
  /* [D], [1,D], [K,D] or [1,K,D] */
  int64_t rows = 1, cols = ndim ? shape[ndim - 1] : 0;
  for (int i = 0; i < ndim - 1; i++) rows *= shape[i];
  rc = 0;
  if (ndim < 1 || ndim > 3 || (ndim == 3 && shape[0] != 1) || cols < 1 || rows < 1 || rows * cols > (1 << 24) ||
      (dt != NQ_DT_F32 && dt != NQ_DT_F16 && dt != NQ_DT_BF16))
    rc = nq_err_set(err, NQ_ESHAPE, NQ_ERR_FATAL, "%s: %s must be a float tensor [D], [K,D] or [1,K,D] (%d dims, %s)",
                    s->stage, uri, ndim, nq_dtype_name(dt));
  else if (!(c->embeds = malloc(sizeof(float) * (size_t)(rows * cols))))
    rc = nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "%s: out of memory", s->stage);
  else {
    void *tmp = malloc(nq_dtype_size(dt) * (size_t)(rows * cols)); /* npy data may be unaligned */
    if (!tmp) rc = nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "%s: out of memory", s->stage);
    else {
      memcpy(tmp, data, nq_dtype_size(dt) * (size_t)(rows * cols));
      nq_dtype_to_f32(dt, tmp, c->embeds, (size_t)(rows * cols));
      free(tmp);
      c->rows = (int)rows, c->cols = (int)cols;
    }
  }
  if (f) nq_st_close(f);
  free(buf);
  return rc;
}

int nq_genav_cond_get(nq_genav_state_t *s, const nq_task_ctx_t *t, nq_genav_cond_t *c, nq_err_t *err) {
  memset(c, 0, sizeof *c);
  const json_t *in = t->env->input;
  const char *uri = json_string_value(json_object_get(in, "embeds"));
  if (uri) {
    c->source = "embeds";
    return nq_genav__read_embeds(s, t, uri, c, err);
  }
  json_t *sig = json_object_get(json_object_get(json_object_get(json_object_get(in, "prev"), "llm"), "signals"),
                                nq_nextgpt_modality_name(s->modality));
  if (json_is_object(sig)) {
    c->source = "nextgpt";
    return nq_ngstage_cond(s->ng, t, s->modality, nq_ngstage_model(t->env->params, s->def_nextgpt), &c->embeds, &c->rows,
                           &c->cols, &c->caption, err);
  }
  const char *text = json_string_value(json_object_get(in, "prompt"));
  if (!text) text = json_string_value(json_object_get(in, "text"));
  if (!text)
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL,
                      "%s: task input has no embeds URI, no input.prev.llm.signals.%s and no prompt/text", s->stage,
                      nq_nextgpt_modality_name(s->modality));
  c->text = text, c->source = "text";
  return 0;
}

void nq_genav_cond_deinit(nq_genav_cond_t *c) {
  free(c->embeds), free(c->caption);
  memset(c, 0, sizeof *c);
}

int nq_genav_param_num(const json_t *pa, const char *key, double lo, double hi, double *v, nq_err_t *err) {
  json_t *j = json_object_get(pa, key);
  if (!j || json_is_null(j)) return 0;
  if (!json_is_number(j) || !(json_number_value(j) >= lo && json_number_value(j) <= hi))
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "params.%s must be a number in %g..%g", key, lo, hi);
  *v = json_number_value(j);
  return 0;
}

void nq_genav_prog_init(nq_genav_prog_t *p) {
  memset(p, 0, sizeof *p);
  p->step_s = json_array();
  p->last = nq_genav_now();
}

int nq_genav_prog_cb(void *ud, int step, int n_steps) {
  nq_genav_prog_t *p = ud;
  double now = nq_genav_now();
  for (; p->steps < step; p->steps++) /* one entry per step done (steps arrive in order) */
    json_array_append_new(p->step_s, json_real(round((now - p->last) * 1e4) / 1e4));
  p->last = now, p->n_steps = n_steps;
  return 0;
}

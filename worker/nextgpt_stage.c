/* worker/nextgpt_stage.c — the NExT-GPT llm step and the generate-side conditioning (see nextgpt_stage.h). */
#include "worker/nextgpt_stage.h"

#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "compute/io/npy.h"
#include "datasets/datasets.h"

#define NG_CACHE_MAX 4
#define NG_MAX_MEDIA 64

typedef struct ng_entry {
  char *path;            /* owned key */
  unsigned parts;        /* NQ_NG_PART_* it was opened with */
  nq_nextgpt_t *ng;      /* owned */
  pthread_mutex_t run_mu;/* one call at a time per model */
} ng_entry_t;

struct nq_ngcache {
  pthread_mutex_t mu;    /* guards the table */
  ng_entry_t e[NG_CACHE_MAX];
  int n;
};

static const char *const ng_stage_of[NQ_NG_N_MODALITIES] = {"generate-image", "generate-video", "generate-audio"};

nq_ngcache_t *nq_ngcache_new(void) {
  nq_ngcache_t *c = calloc(1, sizeof *c);
  if (c) pthread_mutex_init(&c->mu, NULL);
  return c;
}

void nq_ngcache_free(nq_ngcache_t *c) {
  if (!c) return;
  for (int i = 0; i < c->n; i++) {
    nq_nextgpt_free(c->e[i].ng);
    free(c->e[i].path);
    pthread_mutex_destroy(&c->e[i].run_mu);
  }
  pthread_mutex_destroy(&c->mu);
  free(c);
}

/* An entry holding at least `parts`; NULL with err set. */
static ng_entry_t *ng_get(nq_ngcache_t *c, const char *path, unsigned parts, nq_err_t *err) {
  pthread_mutex_lock(&c->mu);
  for (int i = 0; i < c->n; i++)
    if (!strcmp(c->e[i].path, path) && (c->e[i].parts & parts) == parts) {
      pthread_mutex_unlock(&c->mu);
      return &c->e[i];
    }
  if (c->n == NG_CACHE_MAX) {
    pthread_mutex_unlock(&c->mu);
    nq_err_set(err, NQ_ELIMIT, NQ_ERR_RETRIABLE, "nextgpt: more than %d models requested of one worker", NG_CACHE_MAX);
    return NULL;
  }
  nq_nextgpt_open_opts_t o = {.parts = parts};
  nq_nextgpt_t *ng = NULL;
  if (nq_nextgpt_open_yaml(path, &o, &ng, err) != 0) {
    pthread_mutex_unlock(&c->mu);
    err->flags = NQ_ERR_FATAL; /* a model that does not load will not load on retry either */
    nq_err_prefix(err, "nextgpt model %s", path);
    return NULL;
  }
  ng_entry_t *e = &c->e[c->n++];
  e->path = strdup(path);
  e->parts = parts;
  e->ng = ng;
  pthread_mutex_init(&e->run_mu, NULL);
  pthread_mutex_unlock(&c->mu);
  NQ_INFO("nextgpt", "loaded %s (%s)", path, parts == NQ_NG_PART_PROJECTORS ? "projectors only" : "LLM + projectors");
  return e;
}

const char *nq_ngstage_model(const json_t *params, const char *def) {
  const char *m = json_string_value(json_object_get(params, "nextgpt"));
  return m && *m ? m : def && *def ? def : NULL;
}

int nq_ngstage_read_npy(const char *uri, float **out, int *rows, int *cols, nq_err_t *err) {
  void *buf = NULL;
  size_t len = 0;
  int rc = nq_ds_read_uri(uri, &buf, &len, err);
  if (rc) return rc;
  nq_npy_view_t v;
  rc = nq_npy_parse(buf, len, uri, &v, err);
  if (!rc && (v.dtype != NQ_DT_F32 || v.ndim < 1 || v.ndim > 2))
    rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: want a float32 1-D or 2-D array", uri);
  int64_t r = 1, k = 0;
  if (!rc) {
    r = v.ndim == 2 ? v.shape[0] : 1, k = v.shape[v.ndim - 1];
    if (r < 1 || k < 1 || r > (1 << 20) || k > (1 << 20) || (size_t)(r * k) * sizeof(float) != v.nbytes)
      rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: shape %lld x %lld", uri, (long long)r, (long long)k);
  }
  float *f = rc ? NULL : malloc(v.nbytes);
  if (!rc && !f) rc = nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "out of memory for %s", uri);
  if (!rc) {
    memcpy(f, v.data, v.nbytes);
    *out = f, *rows = (int)r, *cols = (int)k;
  }
  free(buf);
  return rc;
}

/* ---- llm ---- */

typedef struct ng_buf {
  char *s;
  size_t n, cap;
} ng_buf_t;

static int ng_cat(ng_buf_t *b, const char *s) {
  size_t l = strlen(s);
  if (b->n + l + 1 > b->cap) {
    size_t nc = (b->n + l + 1) * 2;
    char *ns = realloc(b->s, nc);
    if (!ns) return NQ_ENOMEM;
    b->s = ns, b->cap = nc;
  }
  memcpy(b->s + b->n, s, l + 1);
  b->n += l;
  return 0;
}

/* The NExT-GPT prompt of a task (malloc'ed) or NULL with the task failed. */
static char *ng_prompt(nq_task_ctx_t *t) {
  const json_t *in = t->env->input, *pa = t->env->params;
  const char *mode = json_string_value(json_object_get(pa, "mode"));
  bool caption = mode && !strcmp(mode, "caption");
  const char *text = caption ? json_string_value(json_object_get(pa, "instruction")) : NULL;
  if (caption && !text) text = "generate a caption";
  if (!text) text = json_string_value(json_object_get(in, "prompt"));
  if (!text) text = json_string_value(json_object_get(in, "text"));
  if (!text) text = "";
  if (!strncmp(text, "### Human:", 10)) return strdup(text);
  ng_buf_t b = {0};
  int rc = ng_cat(&b, "### Human: ");
  static const char *const kinds[3] = {"image", "audio", "video"}, *const tags[3][2] = {
      {"<Image>", "</Image> "}, {"<Audio>", "</Audio> "}, {"<Video>", "</Video> "}};
  json_t *media = json_object_get(in, "media");
  for (int k = 0; k < 3 && !rc; k++) {
    size_t i;
    json_t *m;
    json_array_foreach(media, i, m) {
      const char *kind = json_string_value(json_object_get(m, "kind"));
      const char *uri = json_string_value(json_object_get(m, "uri"));
      if (!uri) uri = json_string_value(json_object_get(m, "path"));
      if (!kind || !uri || strcmp(kind, kinds[k])) continue;
      if (strstr(uri, "> ") || strstr(uri, " <") || strchr(uri, '<') || strchr(uri, '>')) {
        free(b.s);
        nq_task_fail(t, NQ_EFORMAT, NQ_ERR_FATAL, "llm: media URI '%s' cannot be written into a NExT-GPT prompt tag", uri);
        return NULL;
      }
      if (!rc) rc = ng_cat(&b, tags[k][0]);
      if (!rc) rc = ng_cat(&b, uri);
      if (!rc) rc = ng_cat(&b, tags[k][1]);
    }
  }
  if (!rc) rc = ng_cat(&b, " ");
  if (!rc) rc = ng_cat(&b, text);
  if (rc) {
    free(b.s);
    nq_task_fail(t, NQ_ENOMEM, NQ_ERR_RETRIABLE, "llm: out of memory");
    return NULL;
  }
  return b.s;
}

/* Media rows [n, E] for the prompt's tags, from input.prev.encode.embeddings (matched by URI, in tag order). */
static int ng_media(nq_task_ctx_t *t, const char *prompt, int in_dim, float **rows, int *n_rows, nq_err_t *err) {
  nq_nextgpt_media_ref_t *refs = NULL;
  int n = 0;
  *rows = NULL, *n_rows = 0;
  int rc = nq_nextgpt_prompt_media(prompt, &refs, &n, err);
  if (rc || n == 0) {
    nq_nextgpt_media_refs_free(refs, n);
    return rc;
  }
  json_t *emb = json_object_get(json_object_get(json_object_get(t->env->input, "prev"), "encode"), "embeddings");
  if (!json_is_array(emb)) {
    nq_nextgpt_media_refs_free(refs, n);
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL,
                      "llm: the prompt names %d media item(s) but no encode stage ran before (input.prev.encode)", n);
  }
  if (in_dim <= 0) rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "llm: the model has no input projection (llama_proj)");
  if (!rc && n > NG_MAX_MEDIA) rc = nq_err_set(err, NQ_ELIMIT, NQ_ERR_FATAL, "llm: %d media items (max %d)", n, NG_MAX_MEDIA);
  float *out = rc ? NULL : malloc(sizeof(float) * (size_t)n * (size_t)in_dim);
  if (!rc && !out) rc = nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "llm: out of memory");
  char used[NG_MAX_MEDIA * 4] = {0};
  for (int i = 0; i < n && !rc; i++) {
    size_t j, found = (size_t)-1;
    json_t *e;
    json_array_foreach(emb, j, e) {
      const char *uri = json_string_value(json_object_get(e, "uri"));
      if (j < sizeof used && !used[j] && uri && !strcmp(uri, refs[i].path)) {
        found = j;
        break;
      }
    }
    if (found == (size_t)-1) {
      rc = nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "llm: no encoded embedding for prompt media '%s'", refs[i].path);
      break;
    }
    used[found] = 1;
    const char *npy = json_string_value(json_object_get(json_array_get(emb, found), "npy"));
    float *v = NULL;
    int r = 0, k = 0;
    if (!npy) rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "llm: embeddings[%zu] has no npy URI", found);
    if (!rc) rc = nq_ngstage_read_npy(npy, &v, &r, &k, err);
    if (!rc && (r != 1 || k != in_dim))
      rc = nq_err_set(err, NQ_ESHAPE, NQ_ERR_FATAL, "llm: %s is %d x %d, the input projection takes %d", npy, r, k, in_dim);
    if (!rc) memcpy(out + (size_t)i * (size_t)in_dim, v, sizeof(float) * (size_t)in_dim);
    free(v);
  }
  nq_nextgpt_media_refs_free(refs, n);
  if (rc) {
    free(out);
    return rc;
  }
  *rows = out, *n_rows = n;
  return 0;
}

static int ng_param_num(const json_t *pa, const char *key, double lo, double hi, double *v, nq_err_t *err) {
  json_t *j = json_object_get(pa, key);
  if (!j) return 0;
  if (!json_is_number(j) || json_number_value(j) < lo || json_number_value(j) > hi)
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "llm: params.%s must be a number in %g..%g", key, lo, hi);
  *v = json_number_value(j);
  return 0;
}

static int ng_put_npy(nq_task_ctx_t *t, const char *name, const float *d, int rows, int cols, json_t *sig,
                      const char *key, nq_err_t *err) {
  void *buf = NULL;
  size_t len = 0;
  int rc = nq_npy_encode_f32(d, 2, NQ_SHAPE(rows, cols), &buf, &len, err);
  if (!rc) rc = nq_task_put(t, name, buf, len, err);
  free(buf);
  if (!rc) json_object_set(sig, key, json_object_get(json_array_get(t->outputs, json_array_size(t->outputs) - 1), "uri"));
  return rc;
}

static int ng_modality_parse(const char *s) {
  for (int m = 0; s && m < NQ_NG_N_MODALITIES; m++)
    if (!strcmp(s, nq_nextgpt_modality_name(m))) return m;
  return -1;
}

/* Appends the references of a caption task: input.text, input.meta.captions / meta.caption. */
static json_t *ng_refs(const json_t *in) {
  json_t *refs = json_array();
  const char *t = json_string_value(json_object_get(in, "text"));
  if (t && *t) json_array_append_new(refs, json_string(t));
  json_t *meta = json_object_get(in, "meta"), *caps = json_object_get(meta, "captions");
  size_t i;
  json_t *v;
  json_array_foreach(caps, i, v) if (json_is_string(v)) json_array_append(refs, v);
  return refs;
}

void nq_ngstage_llm_task(nq_ngcache_t *c, nq_task_ctx_t *t, const char *model) {
  nq_err_t err = {0};
  const json_t *pa = t->env->params;
  ng_entry_t *e = ng_get(c, model, NQ_NG_PART_ALL, &err);
  if (!e) {
    t->err = err, t->rc = err.code;
    return;
  }
  nq_nextgpt_t *ng = e->ng;
  nq_nextgpt_gen_params_t gp;
  nq_nextgpt_gen_params_init(ng, &gp);
  double v;
  int rc = 0;
  v = gp.max_tgt_len;
  if (!(rc = ng_param_num(pa, "max_tgt_len", 1, 4096, &v, &err))) gp.max_tgt_len = (int)v;
  v = gp.temperature;
  if (!rc && !(rc = ng_param_num(pa, "temperature", 0, 100, &v, &err))) gp.temperature = (float)v;
  v = gp.top_p;
  if (!rc && !(rc = ng_param_num(pa, "top_p", 0, 1, &v, &err))) gp.top_p = (float)v;
  v = (double)gp.seed;
  if (!rc && !(rc = ng_param_num(pa, "seed", 0, 9007199254740992.0, &v, &err))) gp.seed = (uint64_t)v;
  const char *proj_at = json_string_value(json_object_get(pa, "project"));
  gp.project = !proj_at || strcmp(proj_at, "generate") != 0;
  const char *om = json_string_value(json_object_get(pa, "output_modality"));
  int force = ng_modality_parse(om);
  if (!rc && om && force < 0 && strcmp(om, "text"))
    rc = nq_err_set(&err, NQ_EINVAL, NQ_ERR_FATAL, "llm: params.output_modality '%s' (image|video|audio|text)", om);
  if (rc) {
    t->err = err, t->rc = err.code;
    return;
  }
  char *prompt = ng_prompt(t);
  if (!prompt) return;
  float *media = NULL;
  int n_media = 0;
  nq_nextgpt_output_t o;
  memset(&o, 0, sizeof o);
  rc = ng_media(t, prompt, ng->have_in_proj ? (int)ng->in_proj.w.ne[1] : 0, &media, &n_media, &err);
  bool forced = false;
  if (!rc) {
    pthread_mutex_lock(&e->run_mu);
    rc = nq_nextgpt_generate(ng, prompt, media, n_media, &gp, &o, &err);
    if (!rc && force >= 0 && !o.sig[force].present) {
      /* t2x: the answer + the modality's full signal span, then teacher-forced states (stage-2 layout) */
      int n_text = o.n_tokens, L = ng->n_stops ? ng->stop_len[0] : 0;
      for (int s = 0; s < ng->n_stops; s++) {
        int sl = ng->stop_len[s];
        if (sl <= n_text && !memcmp(o.tokens + n_text - sl, ng->stops[s], sizeof(int32_t) * (size_t)sl)) {
          n_text -= sl;
          break;
        }
      }
      if (n_text > 0 && o.tokens[n_text - 1] == ng->llm->cfg.eos_id) n_text--;
      /* drop a span of this modality, a broken span of any other (the teacher-forced pass refuses those, as
       * upstream does) and everything after it */
      for (int k = 0; k < n_text; k++)
        for (int m = 0; m < NQ_NG_N_MODALITIES; m++) {
          const int Nm = ng->n_sig[m];
          if (Nm <= 0 || o.tokens[k] != ng->sig_ids[m][0]) continue;
          if (m == force || k + Nm > n_text || memcmp(o.tokens + k, ng->sig_ids[m], sizeof(int32_t) * (size_t)Nm))
            n_text = k;
        }
      const int N = ng->n_sig[force], G = n_text + N + (L ? L : 1);
      int32_t *ids = malloc(sizeof(int32_t) * (size_t)G);
      if (!ids) rc = nq_err_set(&err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "llm: out of memory");
      if (!rc) {
        memcpy(ids, o.tokens, sizeof(int32_t) * (size_t)n_text);
        memcpy(ids + n_text, ng->sig_ids[force], sizeof(int32_t) * (size_t)N);
        if (L) memcpy(ids + n_text + N, ng->stops[0], sizeof(int32_t) * (size_t)L);
        else ids[n_text + N] = ng->llm->cfg.eos_id;
        nq_nextgpt_output_deinit(&o);
        /* at position 0 there is no earlier step to take the legacy gen_idx-1 state from: use gen_idx */
        rc = nq_nextgpt_signals_from_ids(ng, prompt, media, n_media, ids, G, n_text == 0 ? 0 : -1, gp.project, &o, &err);
        forced = true;
      }
      free(ids);
    }
    pthread_mutex_unlock(&e->run_mu);
  }
  free(media);
  json_t *signals = json_object(), *next = json_array();
  const char *text = !rc && o.text ? o.text : "";
  if (!rc) rc = nq_task_put(t, "text.txt", text, strlen(text), &err);
  for (int m = 0; m < NQ_NG_N_MODALITIES && !rc; m++) {
    nq_nextgpt_signal_t *s = &o.sig[m];
    if (!s->present) continue;
    const char *mn = nq_nextgpt_modality_name(m);
    char name[64];
    json_t *sj = json_pack("{s:s,s:i,s:i}", "caption", s->caption ? s->caption : "", "n", s->n, "dim", s->dim);
    snprintf(name, sizeof name, "%s_hidden.npy", mn);
    rc = ng_put_npy(t, name, s->hidden, s->n, s->dim, sj, "hidden", &err);
    snprintf(name, sizeof name, "%s_embeds.npy", mn);
    if (!rc) rc = ng_put_npy(t, name, s->embeds, s->n, s->dim, sj, "embeds", &err);
    if (!rc && s->cond) {
      snprintf(name, sizeof name, "%s_cond.npy", mn);
      rc = ng_put_npy(t, name, s->cond, s->K, s->D, sj, "cond", &err);
      json_object_set_new(sj, "K", json_integer(s->K));
      json_object_set_new(sj, "D", json_integer(s->D));
    }
    json_object_set_new(signals, mn, sj);
    json_array_append_new(next, json_string(ng_stage_of[m]));
  }
  if (rc) {
    t->err = err, t->rc = err.code ? err.code : NQ_EINTERNAL;
    json_decref(signals), json_decref(next);
    nq_nextgpt_output_deinit(&o);
    free(prompt);
    return;
  }
  json_object_set_new(t->result, "text", json_string(text));
  json_object_set_new(t->result, "prompt", json_string(prompt));
  json_object_set_new(t->result, "signals", signals);
  json_object_set_new(t->result, "metrics", json_pack("{s:i,s:b}", "new_tokens", o.n_tokens, "forced_signal", forced));
  json_t *route = json_object_get(pa, "route");
  if (!json_is_false(route)) {
    size_t i;
    json_t *s;
    json_array_foreach(t->env->next, i, s) {
      const char *sn = json_string_value(s);
      if (sn && strncmp(sn, "generate-", 9)) json_array_append(next, s);
    }
    json_object_set_new(t->result, "next", next);
    const char *dev = json_string_value(json_object_get(pa, "generate_device"));
    if (dev && json_array_size(next) > 0) json_object_set_new(t->result, "next_device", json_string(dev));
  } else {
    json_decref(next);
  }
  if (json_is_true(json_object_get(pa, "eval")))
    json_object_set_new(t->result, "eval", json_pack("{s:s,s:o}", "hyp", text, "refs", ng_refs(t->env->input)));
  nq_nextgpt_output_deinit(&o);
  free(prompt);
}

/* ---- generate side ---- */

int nq_ngstage_cond(nq_ngcache_t *c, const nq_task_ctx_t *t, int modality, const char *model, float **cond, int *K,
                    int *D, char **caption, nq_err_t *err) {
  *cond = NULL;
  if (caption) *caption = NULL;
  const char *mn = nq_nextgpt_modality_name(modality);
  if (!mn) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "nextgpt: modality %d", modality);
  json_t *sig = json_object_get(
      json_object_get(json_object_get(json_object_get(t->env->input, "prev"), "llm"), "signals"), mn);
  if (!json_is_object(sig))
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "task %s: no %s signal in input.prev.llm.signals", t->env->task, mn);
  const char *cu = json_string_value(json_object_get(sig, "cond"));
  int rc;
  if (cu) {
    rc = nq_ngstage_read_npy(cu, cond, K, D, err);
  } else {
    const char *hu = json_string_value(json_object_get(sig, "hidden")), *eu = json_string_value(json_object_get(sig, "embeds"));
    if (!hu || !eu) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "task %s: %s signal without cond or hidden/embeds", t->env->task, mn);
    if (!model)
      return nq_err_set(err, NQ_ECONFIG, NQ_ERR_FATAL,
                        "task %s: the %s signal must be projected here but no NExT-GPT model is set (params.nextgpt)",
                        t->env->task, mn);
    nq_nextgpt_signal_t s;
    memset(&s, 0, sizeof s);
    int r1 = 0, c1 = 0, r2 = 0, c2 = 0;
    rc = nq_ngstage_read_npy(hu, &s.hidden, &r1, &c1, err);
    if (!rc) rc = nq_ngstage_read_npy(eu, &s.embeds, &r2, &c2, err);
    if (!rc && (r1 != r2 || c1 != c2)) rc = nq_err_set(err, NQ_ESHAPE, NQ_ERR_FATAL, "%s and %s differ in shape", hu, eu);
    ng_entry_t *e = rc ? NULL : ng_get(c, model, NQ_NG_PART_PROJECTORS, err);
    if (!rc && !e) rc = err->code;
    if (!rc) {
      s.present = true, s.n = r1, s.dim = c1;
      pthread_mutex_lock(&e->run_mu);
      rc = nq_nextgpt_project(e->ng, modality, &s, err);
      pthread_mutex_unlock(&e->run_mu);
    }
    if (!rc) *cond = s.cond, *K = s.K, *D = s.D, s.cond = NULL;
    free(s.hidden), free(s.embeds), free(s.cond);
  }
  if (!rc && caption) {
    const char *cap = json_string_value(json_object_get(sig, "caption"));
    if (cap) *caption = strdup(cap);
  }
  return rc;
}

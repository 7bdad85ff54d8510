/* worker/stage_precompute.c — the `precompute-embeddings` stage: captions -> one `<media name>.npy` per sample, the
 * caption embeddings NExT-GPT's decoding-side training loads (spec §9.3, process_embeddings.py).
 *
 * A job over a NExT-GPT caption JSON:
 *
 *   job: cc3m-embed
 *   id: cc3m-embed                # a fixed id keeps the output dir fixed, so a rerun resumes (see out_dir)
 *   stage: precompute-embeddings
 *   dataset: {format: nextgpt-json, path: data/T_X_pair_data/cc3m/cc3m.json, media_root: data/.../images}
 *   output: out/
 *   batch_size: 128               # captions per task (>= 32: they go through the text encoder together)
 *   params: {model: models/stable-diffusion-v1-5, modality: image}
 *
 * writes out/cc3m-embed/<image_name>.npy for every record (e.g. 001310451.jpg.npy), as NExT-GPT names them
 * (basename of the media path + ".npy"; datasets load basename(path) + ".npy").
 *
 * Embedding: the decoder pipeline's own text encoder, last_hidden_state padded to 77 tokens, no CFG:
 *   image: SD-1.5 CLIP-L/14 -> [77, 768]; video: ZeroScope OpenCLIP-H -> [77, 1024] (same code: a CLIP text encoder
 *   with the model's pad id from its tokenizer config). audio (CLAP text_embeds) is not implemented (NQ_EUNSUPPORTED).
 * Stored as float16 .npy, like upstream (np.save of the fp16 encoder's output); params.dtype: f32 stores float32.
 * The encoder itself runs in float32 (or the stage config's dtype), so the f16 values are the f32 result rounded
 * once — not bit-identical to a CUDA fp16 forward.
 *
 * Params: model (a diffusers dir with text_encoder/ + tokenizer/, an HF CLIPTextModel dir, or an LDM file with
 * tokenizer/config_dir), tokenizer, modality (image|video; default image), dtype (f16|f32; default f16), out_dir
 * (a URI/path for the .npy files; default the job's output dir = the parent of the task's prefix), forward_batch
 * (captions per forward; default 128 = upstream's batch). Worker stage config:
 * {precompute-embeddings: {model, tokenizer, config_dir, dtype: f32|bf16, forward_batch}}; env NQ_TEXT_MODEL,
 * then NQ_SD_MODEL.
 *
 * Resumable: a sample whose .npy already exists in the store with shape [77, D] (any float dtype) is skipped; the
 * result metrics count {records, written, skipped}. Every record of all the tasks handed to one run_batch call is
 * encoded in forward_batch chunks, so small tasks still share forwards.
 *
 * Errors: a record without text or without a media name fails its task (fatal, naming the record); a model that
 * does not load is fatal; out-of-memory is retriable.
 */
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/log.h"
#include "compute/core/tensor.h"
#include "compute/io/npy.h"
#include "compute/pipelines/sd.h"
#include "worker/stages.h"

#define PC_CACHE_MAX 4
#define PC_MAX_RECORDS 100000 /* records per run_batch call */

typedef struct pc_entry {
  char *model, *tok;   /* owned keys (tok may be NULL) */
  nq_sd_text_t *te;    /* owned (serialises its own forwards) */
} pc_entry_t;

typedef struct pc_state {
  pthread_mutex_t mu;  /* guards the cache (loads happen under it) */
  pc_entry_t e[PC_CACHE_MAX];
  int n;
  char *def_model, *def_tok, *config_dir; /* owned, may be NULL */
  int wdtype;
  int forward_batch;
} pc_state_t;

typedef struct pc_item {
  int task;            /* index in the batch */
  const char *text;    /* borrowed from the envelope */
  char uri[NQ_STORE_URI_MAX + 1];
  char name[300];
} pc_item_t;

static char *pc__dup(const char *s) { return s && *s ? strdup(s) : NULL; }

static void pc_fini(void *state) {
  pc_state_t *s = state;
  if (!s) return;
  for (int i = 0; i < s->n; i++) nq_sd_text_free(s->e[i].te), free(s->e[i].model), free(s->e[i].tok);
  free(s->def_model), free(s->def_tok), free(s->config_dir);
  pthread_mutex_destroy(&s->mu);
  free(s);
}

static int pc_init(void **state, const json_t *config, nq_err_t *err) {
  pc_state_t *s = calloc(1, sizeof *s);
  if (!s) return nq_err_set(err, NQ_ENOMEM, NQ_ERR_FATAL, "precompute-embeddings: out of memory");
  pthread_mutex_init(&s->mu, NULL);
  const char *m = json_string_value(json_object_get(config, "model"));
  if (!m) m = getenv("NQ_TEXT_MODEL");
  if (!m) m = getenv("NQ_SD_MODEL");
  s->def_model = pc__dup(m);
  s->def_tok = pc__dup(json_string_value(json_object_get(config, "tokenizer")));
  s->config_dir = pc__dup(json_string_value(json_object_get(config, "config_dir")));
  s->wdtype = -1;
  s->forward_batch = 128;
  const json_t *fb = json_object_get(config, "forward_batch");
  if (json_is_integer(fb) && json_integer_value(fb) >= 1 && json_integer_value(fb) <= 4096)
    s->forward_batch = (int)json_integer_value(fb);
  const char *dt = json_string_value(json_object_get(config, "dtype"));
  if (dt && !strcmp(dt, "bf16")) s->wdtype = NQ_DT_BF16;
  else if (dt && !strcmp(dt, "f16")) s->wdtype = NQ_DT_F16;
  else if (dt && strcmp(dt, "f32")) {
    pc_fini(s);
    return nq_err_set(err, NQ_ECONFIG, NQ_ERR_FATAL, "precompute-embeddings: dtype '%s' (want f32, bf16, f16)", dt);
  }
  *state = s;
  return 0;
}

static bool pc__eq(const char *a, const char *b) { return (!a && !b) || (a && b && !strcmp(a, b)); }

static nq_sd_text_t *pc_get(pc_state_t *s, const char *model, const char *tok, nq_err_t *err) {
  pthread_mutex_lock(&s->mu);
  for (int i = 0; i < s->n; i++)
    if (!strcmp(s->e[i].model, model) && pc__eq(s->e[i].tok, tok)) {
      pthread_mutex_unlock(&s->mu);
      return s->e[i].te;
    }
  if (s->n == PC_CACHE_MAX) {
    pthread_mutex_unlock(&s->mu);
    nq_err_set(err, NQ_ELIMIT, NQ_ERR_FATAL, "precompute-embeddings: more than %d models in one worker (%s)",
               PC_CACHE_MAX, model);
    return NULL;
  }
  nq_sd_opts_t o;
  nq_sd_opts_init(&o);
  o.wdtype = s->wdtype, o.tokenizer = tok, o.config_dir = s->config_dir;
  nq_sd_text_t *te = NULL;
  if (nq_sd_text_open(model, &o, &te, err) != 0) {
    pthread_mutex_unlock(&s->mu);
    if (err->code != NQ_ENOMEM) err->flags = NQ_ERR_FATAL;
    nq_err_prefix(err, "precompute-embeddings");
    return NULL;
  }
  pc_entry_t *e = &s->e[s->n++];
  e->model = strdup(model), e->tok = tok ? strdup(tok) : NULL, e->te = te;
  pthread_mutex_unlock(&s->mu);
  NQ_INFO("precompute-embeddings", "loaded text encoder %s (D %d, pad id %d)", model, nq_sd_text_dim(te),
          nq_sd_text_pad_id(te));
  return te;
}

/* NExT-GPT's file name of a record: basename(media path) + ".npy". 0 or NQ_ENOENT. */
static int pc_name(const json_t *rec, const char *modality, char *out, size_t cap) {
  const char *uri = NULL;
  size_t i;
  json_t *m;
  json_array_foreach(json_object_get(rec, "media"), i, m) {
    const char *k = json_string_value(json_object_get(m, "kind"));
    if (k && !strcmp(k, modality) && !uri) uri = json_string_value(json_object_get(m, "uri"));
  }
  if (!uri) {
    char key[32];
    snprintf(key, sizeof key, "%s_name", modality);
    uri = json_string_value(json_object_get(json_object_get(rec, "meta"), key));
  }
  if (!uri) return NQ_ENOENT;
  const char *p = uri;
  const char *hash = strrchr(p, '#');
  if (hash) p = hash + 1;
  const char *slash = strrchr(p, '/');
  if (slash) p = slash + 1;
  if (!*p || !strcmp(p, ".") || !strcmp(p, "..")) return NQ_ENOENT;
  int n = snprintf(out, cap, "%s.npy", p);
  return n < 0 || (size_t)n >= cap ? NQ_ELIMIT : 0;
}

/* The directory URI the .npy files go to (ends with '/'). */
static void pc_base(const nq_envelope_t *env, char *out, size_t cap) {
  const char *od = json_string_value(json_object_get(env->params, "out_dir"));
  if (od && *od) {
    snprintf(out, cap, "%s%s", od, od[strlen(od) - 1] == '/' ? "" : "/");
    return;
  }
  /* "<job output>/<task key>/" -> "<job output>/" */
  snprintf(out, cap, "%s", env->output);
  size_t l = strlen(out);
  if (l && out[l - 1] == '/') out[--l] = 0;
  char *sl = strrchr(out, '/');
  if (sl && sl > out && sl[-1] != '/') sl[1] = 0;
  else snprintf(out, cap, "%s", env->output);
}

/* Whether uri holds a [77, D] .npy. */
static bool pc_done(nq_store_t *st, const char *uri, int D) {
  if (!nq_store_exists(st, uri)) return false;
  void *buf = NULL;
  size_t len = 0;
  nq_err_t e = {0};
  if (nq_store_get(st, uri, &buf, &len, &e)) return false;
  nq_npy_view_t v;
  bool ok = nq_npy_parse(buf, len, uri, &v, &e) == 0 && v.ndim == 2 && v.shape[0] == NQ_SD_MAX_TOKENS &&
            v.shape[1] == D && (v.dtype == NQ_DT_F16 || v.dtype == NQ_DT_F32);
  free(buf);
  return ok;
}

/* Writes one object at an explicit URI (outside the task prefix) and records it like nq_task_put does. */
static int pc_put(nq_task_ctx_t *t, const char *uri, const void *data, size_t len, nq_err_t *err) {
  nq_store_obj_t obj;
  int rc = t->batch ? nq_store_batch_put(t->batch, uri, data, len, &obj, err)
                    : nq_store_put(t->store, uri, data, len, &obj, err);
  if (rc) return rc;
  json_array_append_new(t->outputs, json_pack("{s:s,s:s,s:I,s:s}", "uri", obj.uri, "sha256", obj.sha256, "bytes",
                                              (json_int_t)obj.bytes, "type", obj.type));
  return 0;
}

static void pc_fail(nq_task_ctx_t *t, const nq_err_t *e) {
  if (t->rc) return;
  t->err = *e;
  t->rc = e->code ? e->code : NQ_EINTERNAL;
}

typedef struct pc_counts {
  long long records, written, skipped;
  double t_encode;
} pc_counts_t;

static double pc_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Collects task ti's records into items (appended). Fails the task on a bad record. */
static void pc_collect(nq_task_ctx_t *t, int ti, const char *modality, pc_item_t **items, int *n, int *cap,
                       pc_counts_t *cnt) {
  const json_t *in = t->env->input, *recs = json_object_get(in, "records");
  size_t nr = json_is_array(recs) ? json_array_size(recs) : 1;
  char base[NQ_STORE_URI_MAX + 1];
  pc_base(t->env, base, sizeof base);
  nq_err_t err = {0};
  for (size_t i = 0; i < nr; i++) {
    const json_t *rec = json_is_array(recs) ? json_array_get(recs, i) : in;
    const char *key = json_string_value(json_object_get(rec, "key"));
    const char *text = json_string_value(json_object_get(rec, "text"));
    if (!text) text = json_string_value(json_object_get(rec, "caption"));
    if (!text) {
      nq_err_set(&err, NQ_EFORMAT, NQ_ERR_FATAL, "precompute-embeddings: record %s has no caption/text",
                 key ? key : "?");
      pc_fail(t, &err);
      return;
    }
    if (*n >= PC_MAX_RECORDS) {
      nq_err_set(&err, NQ_ELIMIT, NQ_ERR_FATAL, "precompute-embeddings: more than %d records in one batch",
                 PC_MAX_RECORDS);
      pc_fail(t, &err);
      return;
    }
    if (*n == *cap) {
      int nc = *cap ? *cap * 2 : 64;
      pc_item_t *ni = realloc(*items, sizeof(pc_item_t) * (size_t)nc);
      if (!ni) {
        nq_err_set(&err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "precompute-embeddings: out of memory");
        pc_fail(t, &err);
        return;
      }
      *items = ni, *cap = nc;
    }
    pc_item_t *it = &(*items)[*n];
    memset(it, 0, sizeof *it);
    it->task = ti, it->text = text;
    int rc = pc_name(rec, modality, it->name, sizeof it->name);
    if (!rc && nq_store_key_check(it->name, &err)) rc = NQ_EKEY;
    if (!rc) rc = nq_store_join(base, it->name, it->uri, sizeof it->uri, &err);
    if (rc) {
      nq_err_set(&err, rc == NQ_ENOENT ? NQ_EFORMAT : rc, NQ_ERR_FATAL,
                 "precompute-embeddings: record %s: no usable %s file name (media of kind %s or meta.%s_name)",
                 key ? key : "?", modality, modality, modality);
      pc_fail(t, &err);
      return;
    }
    (*n)++;
    cnt[ti].records++;
  }
}

/* Encodes and writes items[idx[0..m)) in one forward. */
static void pc_forward(nq_sd_text_t *te, nq_task_ctx_t *t, pc_item_t *items, const int *idx, int m, bool f16,
                       pc_counts_t *cnt) {
  const int D = nq_sd_text_dim(te), T = NQ_SD_MAX_TOKENS;
  const char **texts = malloc(sizeof(char *) * (size_t)m);
  float *out = malloc(sizeof(float) * (size_t)m * T * D);
  uint16_t *h = f16 ? malloc(sizeof(uint16_t) * (size_t)T * D) : NULL;
  nq_err_t err = {0};
  int rc = 0;
  if (!texts || !out || (f16 && !h))
    rc = nq_err_set(&err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "precompute-embeddings: out of memory for %d captions", m);
  double t0 = pc_now();
  if (!rc) {
    for (int j = 0; j < m; j++) texts[j] = items[idx[j]].text;
    rc = nq_sd_text_encode(te, texts, m, out, &err);
  }
  double dt = pc_now() - t0;
  for (int j = 0; j < m; j++) {
    pc_item_t *it = &items[idx[j]];
    nq_task_ctx_t *tk = &t[it->task];
    if (tk->rc) continue;
    if (rc) {
      pc_fail(tk, &err);
      continue;
    }
    cnt[it->task].t_encode += dt / m;
    const float *e = out + (size_t)j * T * D;
    void *buf = NULL;
    size_t len = 0;
    nq_err_t e2 = {0};
    int r2;
    if (f16) {
      for (int k = 0; k < T * D; k++) h[k] = nq_f32_to_f16(e[k]);
      r2 = nq_npy_encode(NQ_DT_F16, h, 2, NQ_SHAPE(T, D), &buf, &len, &e2);
    } else {
      r2 = nq_npy_encode(NQ_DT_F32, e, 2, NQ_SHAPE(T, D), &buf, &len, &e2);
    }
    if (!r2) r2 = pc_put(tk, it->uri, buf, len, &e2);
    free(buf);
    if (r2) pc_fail(tk, &e2);
    else cnt[it->task].written++;
  }
  free(texts), free(out), free(h);
}

static void pc_run_batch(void *state, nq_task_ctx_t *t, int n) {
  pc_state_t *s = state;
  pc_counts_t *cnt = calloc((size_t)n, sizeof *cnt);
  pc_item_t *items = NULL;
  int ni = 0, cap = 0;
  bool *done = calloc((size_t)n, sizeof(bool));
  int *grp = malloc(sizeof(int) * (size_t)n);
  if (!cnt || !done || !grp) {
    nq_err_t e = {0};
    nq_err_set(&e, NQ_ENOMEM, NQ_ERR_RETRIABLE, "precompute-embeddings: out of memory");
    for (int i = 0; i < n; i++) pc_fail(&t[i], &e);
    free(cnt), free(done), free(grp);
    return;
  }
  /* the batch's tasks may carry different params: group them by (model, tokenizer, modality, dtype) */
  for (int i = 0; i < n; i++) {
    if (done[i]) continue;
    const json_t *pa = t[i].env->params;
    const char *model = json_string_value(json_object_get(pa, "model"));
    if (!model) model = s->def_model;
    const char *tok = json_string_value(json_object_get(pa, "tokenizer"));
    if (!tok) tok = s->def_tok;
    const char *mod = json_string_value(json_object_get(pa, "modality"));
    if (!mod) mod = "image";
    const char *dt = json_string_value(json_object_get(pa, "dtype"));
    nq_err_t err = {0};
    int fb = s->forward_batch;
    const json_t *fbj = json_object_get(pa, "forward_batch");
    if (json_is_integer(fbj) && json_integer_value(fbj) >= 1 && json_integer_value(fbj) <= 4096)
      fb = (int)json_integer_value(fbj);
    int rc = 0;
    if (!model)
      rc = nq_err_set(&err, NQ_ECONFIG, NQ_ERR_FATAL,
                      "precompute-embeddings: no model: set params.model or the stage config's model");
    else if (strcmp(mod, "image") && strcmp(mod, "video"))
      rc = nq_err_set(&err, NQ_EUNSUPPORTED, NQ_ERR_FATAL,
                      "precompute-embeddings: modality '%s' (image and video are implemented; audio needs CLAP)", mod);
    else if (dt && strcmp(dt, "f16") && strcmp(dt, "f32"))
      rc = nq_err_set(&err, NQ_EINVAL, NQ_ERR_FATAL, "precompute-embeddings: params.dtype '%s' (f16|f32)", dt);
    /* the group: this task and every later one with the same settings */
    int ng = 0;
    for (int j = i; j < n; j++) {
      if (done[j]) continue;
      const json_t *pj = t[j].env->params;
      const char *mj = json_string_value(json_object_get(pj, "model"));
      const char *tj = json_string_value(json_object_get(pj, "tokenizer"));
      const char *oj = json_string_value(json_object_get(pj, "modality"));
      const char *dj = json_string_value(json_object_get(pj, "dtype"));
      if (pc__eq(mj ? mj : s->def_model, model) && pc__eq(tj ? tj : s->def_tok, tok) && pc__eq(oj ? oj : "image", mod) &&
          pc__eq(dj ? dj : "f16", dt ? dt : "f16"))
        grp[ng++] = j;
    }
    nq_sd_text_t *te = rc ? NULL : pc_get(s, model, tok, &err);
    if (!rc && !te) rc = err.code;
    ni = 0;
    for (int g = 0; g < ng; g++) {
      done[grp[g]] = true;
      if (rc) pc_fail(&t[grp[g]], &err);
      else pc_collect(&t[grp[g]], grp[g], mod, &items, &ni, &cap, cnt);
    }
    if (rc) continue;
    /* skip what exists; encode the rest in chunks of fb */
    const int D = nq_sd_text_dim(te);
    int *idx = malloc(sizeof(int) * (size_t)(ni > 0 ? ni : 1)), m = 0;
    for (int k = 0; idx && k < ni; k++) {
      nq_task_ctx_t *tk = &t[items[k].task];
      if (tk->rc) continue;
      if (pc_done(tk->store, items[k].uri, D)) cnt[items[k].task].skipped++;
      else idx[m++] = k;
    }
    if (!idx) {
      nq_err_set(&err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "precompute-embeddings: out of memory");
      for (int g = 0; g < ng; g++) pc_fail(&t[grp[g]], &err);
    }
    bool f16 = !dt || !strcmp(dt, "f16");
    for (int k = 0; idx && k < m; k += fb) {
      int c = m - k < fb ? m - k : fb;
      pc_forward(te, t, items, idx + k, c, f16, cnt);
      NQ_DEBUG("precompute-embeddings", "%d/%d captions encoded", k + c, m);
    }
    free(idx);
  }
  for (int i = 0; i < n; i++) {
    if (t[i].rc) continue;
    json_object_set_new(t[i].result, "metrics",
                        json_pack("{s:I,s:I,s:I,s:f,s:f}", "records", (json_int_t)cnt[i].records, "written",
                                  (json_int_t)cnt[i].written, "skipped", (json_int_t)cnt[i].skipped, "t_encode_s",
                                  cnt[i].t_encode, "captions_per_s",
                                  cnt[i].t_encode > 0 ? (double)cnt[i].written / cnt[i].t_encode : 0.0));
  }
  free(items);
  free(cnt), free(done), free(grp);
}

const nq_stage_t nq_stage_precompute = {
    .name = "precompute-embeddings",
    .max_batch = 64,
    .init = pc_init,
    .run_batch = pc_run_batch,
    .fini = pc_fini,
};

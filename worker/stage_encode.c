/* worker/stage_encode.c — the `encode` stage: media files -> ImageBind embeddings (one .npy per item).
 *
 * Task input (a datasets/ record): {"media": [{"kind": "image|video|audio", "uri": "file:///x.jpg"}, ...], ...}.
 * Every item is read (nq_ds_read_uri: files and tar members), preprocessed exactly as ImageBind does (datasets/media.h:
 * image 1 view, video 15 views of 2 frames, audio 3 clips) and embedded; each item gives `<media file name>.npy`
 * (float32 [out_dim] = 1024 for imagebind_huge, NumPy .npy 1.0), named as NExT-GPT names its embedding files
 * (basename + ".npy", e.g. 000042.jpg.npy; a repeated name in one task gets ".<index>" before ".npy"). The result
 * lists them: "embeddings": [{"kind", "uri" (the source), "npy" (the output URI), "dim"}].
 *
 * Model: params.<vision|audio>_model, else params.model, else the worker's stage config
 * ({encode: {model: PATH, vision_model: PATH, audio_model: PATH, dtype: f32|bf16, max_batch: N}}), else
 * $NQ_ENCODE_MODEL. PATH is anything nq_imagebind_load takes (imagebind_huge.pth, or a dir with config.json +
 * model.safetensors). Loaded trunks are cached per (path, modality) for the worker's life; one forward at a time per
 * trunk. Every image of the batch's tasks goes through one forward (likewise videos and audio clips).
 *
 * Errors: corrupt/unreadable media or a task without media -> fatal (dead-letter) naming the file; a model that does
 * not load -> fatal for the tasks that need it; out of memory -> retriable. Other tasks of the batch are unaffected.
 */
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "compute/io/npy.h"
#include "compute/models/imagebind.h"
#include "datasets/datasets.h"
#include "datasets/media.h"
#include "worker/stages.h"

#define ENC_CACHE_MAX 4
#define ENC_MAX_ITEMS 4096 /* media items per task */

typedef struct enc_entry {
  char *path;                      /* owned key */
  nq_imagebind_modality_t mod;
  nq_imagebind_t *m;               /* owned */
  pthread_mutex_t run_mu;          /* one forward at a time per trunk */
} enc_entry_t;

typedef struct enc_state {
  pthread_mutex_t mu;              /* guards the cache table */
  enc_entry_t e[ENC_CACHE_MAX];
  int n;
  char *def_model, *def_vision, *def_audio; /* owned, may be NULL */
  int wdtype;                      /* -1 = keep the file's */
  int max_batch;                   /* views per forward; 0 = model default */
} enc_state_t;

typedef enum { ENC_IMAGE = 0, ENC_VIDEO, ENC_AUDIO, ENC_KINDS } enc_kind_t;
static const char *const enc_kind_name[ENC_KINDS] = {"image", "video", "audio"};

typedef struct enc_item {
  int task;          /* index in the batch */
  enc_kind_t kind;
  const char *uri;   /* borrowed from the envelope */
  const char *model; /* borrowed: the model path for this item */
  float *views;      /* owned: preprocessed input */
  float *emb;        /* owned: [out_dim] */
  int dim;
} enc_item_t;

static char *enc__dup(const char *s) { return s && *s ? strdup(s) : NULL; }

static int enc_init(void **state, const json_t *config, nq_err_t *err) {
  enc_state_t *s = calloc(1, sizeof *s);
  if (!s) return nq_err_set(err, NQ_ENOMEM, NQ_ERR_FATAL, "encode: out of memory");
  pthread_mutex_init(&s->mu, NULL);
  const char *m = json_string_value(json_object_get(config, "model"));
  if (!m) m = getenv("NQ_ENCODE_MODEL");
  s->def_model = enc__dup(m);
  s->def_vision = enc__dup(json_string_value(json_object_get(config, "vision_model")));
  s->def_audio = enc__dup(json_string_value(json_object_get(config, "audio_model")));
  s->wdtype = -1;
  const char *dt = json_string_value(json_object_get(config, "dtype"));
  if (dt && !strcmp(dt, "bf16")) s->wdtype = NQ_DT_BF16;
  else if (dt && !strcmp(dt, "f16")) s->wdtype = NQ_DT_F16;
  else if (dt && strcmp(dt, "f32")) {
    free(s->def_model), free(s->def_vision), free(s->def_audio), free(s);
    return nq_err_set(err, NQ_ECONFIG, NQ_ERR_FATAL, "encode: dtype '%s' (want f32, bf16 or f16)", dt);
  }
  json_t *mb = json_object_get(config, "max_batch");
  if (json_is_integer(mb) && json_integer_value(mb) > 0 && json_integer_value(mb) <= 1024)
    s->max_batch = (int)json_integer_value(mb);
  *state = s;
  return 0;
}

static void enc_fini(void *state) {
  enc_state_t *s = state;
  for (int i = 0; i < s->n; i++) {
    nq_imagebind_free(s->e[i].m);
    free(s->e[i].path);
    pthread_mutex_destroy(&s->e[i].run_mu);
  }
  free(s->def_model), free(s->def_vision), free(s->def_audio);
  pthread_mutex_destroy(&s->mu);
  free(s);
}

/* Find or load the trunk; NULL with err set. */
static enc_entry_t *enc_get(enc_state_t *s, const char *path, nq_imagebind_modality_t mod, nq_err_t *err) {
  pthread_mutex_lock(&s->mu);
  for (int i = 0; i < s->n; i++)
    if (s->e[i].mod == mod && strcmp(s->e[i].path, path) == 0) {
      pthread_mutex_unlock(&s->mu);
      return &s->e[i];
    }
  if (s->n == ENC_CACHE_MAX) {
    pthread_mutex_unlock(&s->mu);
    nq_err_set(err, NQ_ELIMIT, NQ_ERR_RETRIABLE, "encode: more than %d trunks requested of one worker", ENC_CACHE_MAX);
    return NULL;
  }
  nq_imagebind_load_opts_t o;
  nq_imagebind_load_opts_init(&o);
  o.modality = mod;
  o.wdtype = s->wdtype;
  o.max_batch = s->max_batch;
  nq_imagebind_t *m = NULL;
  if (nq_imagebind_load(path, &o, &m, err) != 0) {
    pthread_mutex_unlock(&s->mu);
    err->flags = NQ_ERR_FATAL; /* a model that does not load will not load on retry either */
    nq_err_prefix(err, "encode");
    return NULL;
  }
  enc_entry_t *e = &s->e[s->n++];
  e->path = strdup(path);
  e->mod = mod;
  e->m = m;
  pthread_mutex_init(&e->run_mu, NULL);
  pthread_mutex_unlock(&s->mu);
  NQ_INFO("encode", "loaded ImageBind %s trunk from %s (%d blocks, width %d, out %d)", nq_imagebind_modality_name(mod),
          path, m->cfg.num_blocks, m->cfg.embed_dim, m->cfg.out_dim);
  return e;
}

static const char *enc_model_for(const enc_state_t *s, const json_t *params, enc_kind_t k) {
  const char *p = json_string_value(json_object_get(params, k == ENC_AUDIO ? "audio_model" : "vision_model"));
  if (!p) p = json_string_value(json_object_get(params, "model"));
  if (!p) p = k == ENC_AUDIO ? s->def_audio : s->def_vision;
  if (!p) p = s->def_model;
  return p;
}

static size_t enc_numel(enc_kind_t k) {
  return k == ENC_IMAGE ? NQ_MEDIA_IMAGE_NUMEL : k == ENC_VIDEO ? NQ_MEDIA_VIDEO_NUMEL : NQ_MEDIA_AUDIO_NUMEL;
}
static int enc_views(enc_kind_t k) {
  return k == ENC_IMAGE ? 1 : k == ENC_VIDEO ? NQ_MEDIA_VIDEO_CLIPS * NQ_MEDIA_VIDEO_CROPS : NQ_MEDIA_AUDIO_CLIPS;
}

/* Reads and preprocesses one item into it->views. */
static int enc_prepare(enc_item_t *it, nq_err_t *err) {
  void *buf = NULL;
  size_t len = 0;
  int rc = nq_ds_read_uri(it->uri, &buf, &len, err);
  if (rc) {
    nq_err_prefix(err, "encode: reading %s", it->uri);
    return rc;
  }
  it->views = malloc(enc_numel(it->kind) * sizeof(float));
  if (!it->views) {
    free(buf);
    return nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "encode: out of memory for %s", it->uri);
  }
  switch (it->kind) {
    case ENC_IMAGE: rc = nq_media_image_preprocess_buf(buf, len, it->uri, it->views, err); break;
    case ENC_VIDEO: rc = nq_media_video_preprocess_buf(buf, len, it->uri, it->views, err); break;
    default: rc = nq_media_audio_preprocess_buf(buf, len, it->uri, it->views, err); break;
  }
  free(buf);
  if (rc && !(err->flags & NQ_ERR_RETRIABLE) && err->code != NQ_ENOMEM) err->flags |= NQ_ERR_FATAL;
  return rc;
}

/* The object name of an item: basename of the file (or tar member) + ".npy". */
static void enc_name(const char *uri, char *out, size_t n) {
  const char *p = uri;
  if (!strncmp(p, "file://", 7)) p += 7;
  const char *hash = strrchr(p, '#');
  if (hash) p = hash + 1;
  const char *slash = strrchr(p, '/');
  if (slash) p = slash + 1;
  snprintf(out, n, "%s.npy", *p ? p : "media");
}

static void enc_fail_task(nq_task_ctx_t *t, const nq_err_t *e) {
  if (t->rc) return; /* keep the first error */
  t->err = *e;
  t->rc = e->code ? e->code : NQ_EINTERNAL;
}

/* Parses task i's media list into items (appended); fails the task on a malformed list. */
static int enc_collect_list(const enc_state_t *s, nq_task_ctx_t *t, int ti, json_t *media, enc_item_t **items, int *n,
                            int *cap);

/* A task holds one record ({media: [...]}) or, with the job's batch_size > 1, {records: [{media: [...]}, ...]}. */
static int enc_collect(const enc_state_t *s, nq_task_ctx_t *t, int ti, enc_item_t **items, int *n, int *cap) {
  json_t *records = json_object_get(t->env->input, "records");
  if (!json_is_array(records)) return enc_collect_list(s, t, ti, json_object_get(t->env->input, "media"), items, n, cap);
  size_t r, total = 0;
  json_t *rec;
  json_array_foreach(records, r, rec) total += json_array_size(json_object_get(rec, "media"));
  if (total > ENC_MAX_ITEMS)
    return nq_task_fail(t, NQ_ELIMIT, NQ_ERR_FATAL, "encode: %zu media items in one task (max %d)", total, ENC_MAX_ITEMS);
  json_array_foreach(records, r, rec) {
    int rc = enc_collect_list(s, t, ti, json_object_get(rec, "media"), items, n, cap);
    if (rc) return rc;
  }
  return 0;
}

static int enc_collect_list(const enc_state_t *s, nq_task_ctx_t *t, int ti, json_t *media, enc_item_t **items, int *n,
                            int *cap) {
  if (!json_is_array(media) || json_array_size(media) == 0)
    return nq_task_fail(t, NQ_EFORMAT, NQ_ERR_FATAL, "encode: task input has no \"media\" items");
  if (json_array_size(media) > ENC_MAX_ITEMS)
    return nq_task_fail(t, NQ_ELIMIT, NQ_ERR_FATAL, "encode: %zu media items in one task (max %d)",
                        json_array_size(media), ENC_MAX_ITEMS);
  size_t i;
  json_t *m;
  json_array_foreach(media, i, m) {
    const char *kind = json_string_value(json_object_get(m, "kind"));
    const char *uri = json_string_value(json_object_get(m, "uri"));
    if (!uri) uri = json_string_value(json_object_get(m, "path"));
    int k = -1;
    for (int j = 0; kind && j < ENC_KINDS; j++)
      if (!strcmp(kind, enc_kind_name[j])) k = j;
    if (k < 0 || !uri || !*uri)
      return nq_task_fail(t, NQ_EFORMAT, NQ_ERR_FATAL, "encode: media[%zu] needs \"kind\" (image|video|audio) and \"uri\"",
                          i);
    const char *model = enc_model_for(s, t->env->params, (enc_kind_t)k);
    if (!model)
      return nq_task_fail(t, NQ_ECONFIG, NQ_ERR_FATAL,
                          "encode: no model: set params.model in the job or encode.model in the worker's stage_config");
    if (*n == *cap) {
      int nc = *cap ? *cap * 2 : 16;
      enc_item_t *ni = realloc(*items, sizeof(enc_item_t) * (size_t)nc);
      if (!ni) return nq_task_fail(t, NQ_ENOMEM, NQ_ERR_RETRIABLE, "encode: out of memory");
      *items = ni, *cap = nc;
    }
    (*items)[(*n)++] = (enc_item_t){.task = ti, .kind = (enc_kind_t)k, .uri = uri, .model = model};
  }
  return 0;
}

/* Embeds every ok item of one (model, kind) group in one call. */
static void enc_run_group(enc_state_t *s, nq_task_ctx_t *t, enc_item_t *items, int n, const char *model, enc_kind_t k,
                          int *done) {
  int *idx = malloc(sizeof(int) * (size_t)n);
  int m = 0;
  for (int i = 0; idx && i < n; i++)
    if (!done[i] && items[i].kind == k && !strcmp(items[i].model, model)) idx[m++] = i, done[i] = 1;
  nq_err_t err = {0};
  if (!idx) {
    nq_err_set(&err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "encode: out of memory");
    for (int i = 0; i < n; i++)
      if (!done[i] && items[i].kind == k && !strcmp(items[i].model, model)) enc_fail_task(&t[items[i].task], &err), done[i] = 1;
    return;
  }
  /* skip items of tasks that already failed */
  int live = 0;
  for (int j = 0; j < m; j++)
    if (!t[items[idx[j]].task].rc) idx[live++] = idx[j];
  m = live;
  if (m == 0) {
    free(idx);
    return;
  }
  enc_entry_t *e = enc_get(s, model, k == ENC_AUDIO ? NQ_IB_AUDIO : NQ_IB_VISION, &err);
  float *in = NULL, *out = NULL;
  const size_t vn = enc_numel(k);
  int rc = e ? 0 : err.code;
  if (!rc) {
    in = malloc(sizeof(float) * vn * (size_t)m);
    out = malloc(sizeof(float) * (size_t)m * (size_t)e->m->cfg.out_dim);
    if (!in || !out) rc = nq_err_set(&err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "encode: out of memory for %d %ss", m, enc_kind_name[k]);
  }
  if (!rc) {
    for (int j = 0; j < m; j++) {
      memcpy(in + vn * (size_t)j, items[idx[j]].views, sizeof(float) * vn);
      free(items[idx[j]].views);
      items[idx[j]].views = NULL;
    }
    pthread_mutex_lock(&e->run_mu);
    rc = nq_imagebind_embed(e->m, in, m, enc_views(k), k == ENC_VIDEO ? NQ_MEDIA_VIDEO_FRAMES : 1, out, &err);
    pthread_mutex_unlock(&e->run_mu);
  }
  const int D = e ? e->m->cfg.out_dim : 0;
  for (int j = 0; j < m; j++) {
    enc_item_t *it = &items[idx[j]];
    if (rc) {
      enc_fail_task(&t[it->task], &err);
      continue;
    }
    it->emb = malloc(sizeof(float) * (size_t)D);
    if (!it->emb) {
      nq_err_t e2 = {0};
      nq_err_set(&e2, NQ_ENOMEM, NQ_ERR_RETRIABLE, "encode: out of memory");
      enc_fail_task(&t[it->task], &e2);
      continue;
    }
    memcpy(it->emb, out + (size_t)j * D, sizeof(float) * (size_t)D);
    it->dim = D;
  }
  free(in), free(out), free(idx);
}

/* Writes task ti's .npy files and its result. */
static void enc_write(nq_task_ctx_t *tk, enc_item_t *items, int n, int ti) {
  json_t *list = json_array();
  int pos = 0;
  for (int i = 0; i < n && !tk->rc; i++) {
    enc_item_t *it = &items[i];
    if (it->task != ti) continue;
    char name[600];
    enc_name(it->uri, name, sizeof name);
    /* a repeated name in one task: file.jpg.npy, file.jpg.1.npy, ... */
    bool dup = false;
    for (int j = 0; j < i; j++)
      if (items[j].task == ti) {
        char other[600];
        enc_name(items[j].uri, other, sizeof other);
        if (!strcmp(other, name)) dup = true;
      }
    if (dup) {
      size_t l = strlen(name);
      snprintf(name + l - 4, sizeof name - (l - 4), ".%d.npy", pos);
    }
    void *buf = NULL;
    size_t len = 0;
    nq_err_t err = {0};
    int rc = nq_npy_encode_f32(it->emb, 1, NQ_SHAPE(it->dim), &buf, &len, &err);
    if (!rc) rc = nq_task_put(tk, name, buf, len, &err);
    free(buf);
    if (rc) {
      enc_fail_task(tk, &err);
      break;
    }
    json_t *last = json_array_get(tk->outputs, json_array_size(tk->outputs) - 1);
    json_array_append_new(list, json_pack("{s:s,s:s,s:O,s:i}", "kind", enc_kind_name[it->kind], "uri", it->uri, "npy",
                                          json_object_get(last, "uri"), "dim", it->dim));
    pos++;
  }
  if (!tk->rc) json_object_set_new(tk->result, "embeddings", list);
  else json_decref(list);
}

static void enc_run_batch(void *state, nq_task_ctx_t *t, int n) {
  enc_state_t *s = state;
  enc_item_t *items = NULL;
  int ni = 0, cap = 0;
  for (int i = 0; i < n; i++) enc_collect(s, &t[i], i, &items, &ni, &cap);
  /* read + preprocess (a bad file fails only its task) */
  for (int i = 0; i < ni; i++) {
    if (t[items[i].task].rc) continue;
    nq_err_t err = {0};
    if (enc_prepare(&items[i], &err)) enc_fail_task(&t[items[i].task], &err);
  }
  int *done = calloc((size_t)(unsigned)ni + 1, sizeof(int));
  for (int i = 0; i < ni; i++) {
    if (!done) {
      nq_err_t e = {0};
      nq_err_set(&e, NQ_ENOMEM, NQ_ERR_RETRIABLE, "encode: out of memory");
      enc_fail_task(&t[items[i].task], &e);
      continue;
    }
    if (!done[i]) enc_run_group(s, t, items, ni, items[i].model, items[i].kind, done);
  }
  for (int i = 0; i < n; i++)
    if (!t[i].rc) enc_write(&t[i], items, ni, i);
  for (int i = 0; i < ni; i++) free(items[i].views), free(items[i].emb);
  free(items);
  free(done);
}

const nq_stage_t nq_stage_encode = {
    .name = "encode",
    .max_batch = 16,
    .init = enc_init,
    .run_batch = enc_run_batch,
    .fini = enc_fini,
};

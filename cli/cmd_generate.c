/* cli/cmd_generate.c — `nextq generate "PROMPT" [--image F] [--audio F] [--video F] --model CFG --out DIR [--seed S]`:
 * one NExT-GPT any-to-any request in this process, without a queue.
 *
 * It runs the same stage handlers a worker runs (worker/stages.h), one after the other, with the chaining the worker
 * does (each stage's result rides along in input.prev.<stage>; the llm stage routes to the generate stage of every
 * modality it produced): encode (ImageBind, when media are given) -> llm (NExT-GPT) -> generate-image / -video /
 * -audio. Every file lands in DIR: text.txt, <media>.npy, <m>_hidden.npy / <m>_embeds.npy / <m>_cond.npy,
 * image.png, video.mp4, audio.wav; DIR/result.json holds the stages' results. The model YAML (CFG) names every part
 * (vicuna_ckpt_path, delta_ckpt_path, imagebind_ckpt_path, image_diffusion, video_diffusion, audio_diffusion).
 *
 * Options: --modality image|video|audio forces that output (params.output_modality); --param KEY=VALUE sets any
 * stage parameter (VALUE parsed as JSON when it parses, else a string), e.g. --param steps=20
 * --param guidance_scale_for_aud=1. Exit status: 0 ok, 1 a stage failed, 2 usage. */
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/cli.h"
#include "compute/pipelines/nextgpt.h"
#include "queue/envelope.h"
#include "store/store.h"
#include "worker/stages.h"
#include "worker/worker.h"

#define GEN_MAX_MEDIA 16
#define GEN_MAX_STAGES 8

static void gen_usage(FILE *f) {
  fprintf(f,
          "usage: nextq generate \"PROMPT\" --model CFG --out DIR [--image F]... [--audio F]... [--video F]...\n"
          "                      [--seed S] [--modality image|video|audio] [--param KEY=VALUE]...\n"
          "  one any-to-any NExT-GPT request in this process (encode -> llm -> generate-*), no queue.\n"
          "  CFG: a NExT-GPT model YAML (nextq model init-tiny writes one; configs/models/ for the released model)\n"
          "  writes DIR/text.txt, DIR/image.png | video.mp4 | audio.wav (what the answer asks for) and DIR/result.json\n");
}

typedef struct gen_stage {
  const char *name;
  const nq_stage_t *st; /* borrowed */
  void *state;          /* owned (st->fini) */
} gen_stage_t;

static gen_stage_t *gen_stage_get(gen_stage_t *tab, int *n, const char *name, const json_t *config, nq_err_t *err) {
  for (int i = 0; i < *n; i++)
    if (!strcmp(tab[i].name, name)) return &tab[i];
  const nq_stage_t *st = nq_stage_find(name);
  if (!st) {
    nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "unknown stage '%s' (this binary has: %s)", name, nq_stage_names());
    return NULL;
  }
  if (*n == GEN_MAX_STAGES) {
    nq_err_set(err, NQ_ELIMIT, NQ_ERR_FATAL, "more than %d stages", GEN_MAX_STAGES);
    return NULL;
  }
  gen_stage_t *g = &tab[(*n)++];
  g->name = st->name, g->st = st, g->state = NULL;
  if (st->init && st->init(&g->state, json_object_get(config, name), err) != 0) {
    (*n)--;
    nq_err_prefix(err, "stage %s", name);
    return NULL;
  }
  return g;
}

/* KEY=VALUE into params (VALUE as JSON when it parses as a scalar/array/object, else as a string). */
static int gen_param(json_t *params, const char *kv) {
  const char *eq = strchr(kv, '=');
  if (!eq || eq == kv) return -1;
  char key[128];
  snprintf(key, sizeof key, "%.*s", (int)(eq - kv), kv);
  json_t *v = json_loads(eq + 1, JSON_DECODE_ANY, NULL);
  if (!v) v = json_string(eq + 1);
  json_object_set_new(params, key, v);
  return 0;
}

static int gen_abs(const char *p, char *out, size_t cap) {
  char r[PATH_MAX];
  if (!realpath(p, r)) return -1;
  snprintf(out, cap, "%s", r);
  return 0;
}

static int gen_mkdirs(const char *path) {
  char tmp[PATH_MAX];
  snprintf(tmp, sizeof tmp, "%s", path);
  for (char *p = tmp + 1; *p; p++)
    if (*p == '/') {
      *p = 0;
      if (mkdir(tmp, 0755) != 0 && errno != EEXIST) return -1;
      *p = '/';
    }
  return mkdir(tmp, 0755) != 0 && errno != EEXIST ? -1 : 0;
}

int nq_cli_generate(int argc, char **argv) {
  const char *prompt = NULL, *model = NULL, *out = NULL, *modality = NULL;
  const char *media[GEN_MAX_MEDIA][2];
  int n_media = 0;
  json_t *params = json_object();
  int status = 2;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      gen_usage(stdout);
      json_decref(params);
      return 0;
    } else if ((!strcmp(a, "--image") || !strcmp(a, "--audio") || !strcmp(a, "--video")) && v) {
      if (n_media == GEN_MAX_MEDIA) {
        fprintf(stderr, "nextq generate: at most %d media files\n", GEN_MAX_MEDIA);
        goto done;
      }
      media[n_media][0] = a + 2, media[n_media][1] = v, n_media++, i++;
    } else if (!strcmp(a, "--model") && v) model = v, i++;
    else if (!strcmp(a, "--out") && v) out = v, i++;
    else if (!strcmp(a, "--modality") && v) modality = v, i++;
    else if (!strcmp(a, "--seed") && v) {
      char *end;
      errno = 0;
      unsigned long long s = strtoull(v, &end, 10);
      if (!*v || *end || errno || s > (1ull << 53)) {
        fprintf(stderr, "nextq generate: --seed %s: not an integer in 0..2^53\n", v);
        goto done;
      }
      json_object_set_new(params, "seed", json_integer((json_int_t)s)), i++;
    } else if (!strcmp(a, "--param") && v) {
      if (gen_param(params, v)) {
        fprintf(stderr, "nextq generate: --param %s: want KEY=VALUE\n", v);
        goto done;
      }
      i++;
    } else if (a[0] != '-' && !prompt) prompt = a;
    else {
      fprintf(stderr, "nextq generate: unknown or incomplete argument '%s'\n", a);
      gen_usage(stderr);
      goto done;
    }
  }
  if (!prompt || !model || !out) {
    gen_usage(stderr);
    goto done;
  }
  status = 1;
  char model_abs[PATH_MAX], out_abs[PATH_MAX], outuri[PATH_MAX + 16];
  if (gen_abs(model, model_abs, sizeof model_abs)) {
    fprintf(stderr, "nextq generate: --model %s: %s\n", model, strerror(errno));
    goto done;
  }
  if (gen_mkdirs(out) || gen_abs(out, out_abs, sizeof out_abs)) {
    fprintf(stderr, "nextq generate: --out %s: %s\n", out, strerror(errno));
    goto done;
  }
  snprintf(outuri, sizeof outuri, "file://%s/", out_abs);
  /* The encode stage's model is the YAML's ImageBind checkpoint, given as its stage config (the worker's
   * {encode: {model: ...}}) rather than as params.audio_model, which generate-audio reads as its AudioLDM dir. */
  nq_err_t err = {0};
  nq_nextgpt_config_t cfg;
  if (nq_nextgpt_config_load(model_abs, &cfg, &err) != 0) {
    fprintf(stderr, "nextq generate: %s\n", err.msg);
    goto done;
  }
  json_t *stage_cfg = json_object();
  if (cfg.imagebind_ckpt_path)
    json_object_set_new(stage_cfg, "encode", json_pack("{s:s}", "model", cfg.imagebind_ckpt_path));
  nq_nextgpt_config_deinit(&cfg);
  json_object_set_new(params, "nextgpt", json_string(model_abs));
  if (modality) json_object_set_new(params, "output_modality", json_string(modality));

  json_t *input = json_pack("{s:s}", "prompt", prompt), *jm = json_array();
  for (int i = 0; i < n_media; i++) {
    char p[PATH_MAX], uri[PATH_MAX + 16];
    if (gen_abs(media[i][1], p, sizeof p)) {
      fprintf(stderr, "nextq generate: --%s %s: %s\n", media[i][0], media[i][1], strerror(errno));
      json_decref(input), json_decref(jm), json_decref(stage_cfg);
      goto done;
    }
    snprintf(uri, sizeof uri, "file://%s", p);
    json_array_append_new(jm, json_pack("{s:s,s:s}", "kind", media[i][0], "uri", uri));
  }
  json_object_set_new(input, "media", jm);

  nq_store_cfg_t sc = {0};
  nq_store_t *store = NULL;
  if (nq_store_new(&sc, &store, &err) != 0) {
    fprintf(stderr, "nextq generate: store: %s\n", err.msg);
    json_decref(input), json_decref(stage_cfg);
    goto done;
  }
  gen_stage_t tab[GEN_MAX_STAGES];
  int n_tab = 0;
  json_t *next = n_media ? json_pack("[s]", "llm") : json_array(), *results = json_object(), *files = json_array();
  const char *stage = n_media ? "encode" : "llm";
  char stage_buf[64];
  int rc = 0;
  for (int hop = 0; stage && hop < 16 && !rc; hop++) {
    gen_stage_t *g = gen_stage_get(tab, &n_tab, stage, stage_cfg, &err);
    if (!g) {
      rc = err.code ? err.code : NQ_EINTERNAL;
      break;
    }
    nq_envelope_t env;
    if ((rc = nq_envelope_make(&env, "generate", "generate/000000", stage, "cpu", 1, input, params, outuri, next, NULL,
                               &err)))
      break;
    nq_task_ctx_t t = {.env = &env, .store = store, .outputs = json_array(), .result = json_object()};
    fprintf(stderr, "== %s\n", stage);
    g->st->run_batch(g->state, &t, 1);
    if (t.rc) {
      rc = t.rc, err = t.err;
      nq_err_prefix(&err, "stage %s", stage);
    } else {
      size_t i;
      json_t *o;
      json_array_foreach(t.outputs, i, o) json_array_append(files, json_object_get(o, "uri"));
      /* the follow-up, as the worker does it (worker.c publish_next) */
      json_t *rn = json_object_get(t.result, "next");
      json_t *nx = json_is_array(rn) ? rn : env.next;
      const char *ns = json_string_value(json_array_get(nx, 0));
      json_t *rest = json_array();
      for (size_t k = 1; k < json_array_size(nx); k++) json_array_append(rest, json_array_get(nx, k));
      json_t *in2 = json_deep_copy(input), *prev = json_object_get(in2, "prev");
      if (!json_is_object(prev)) prev = json_object(), json_object_set_new(in2, "prev", prev);
      json_t *mine = json_deep_copy(t.result);
      json_object_del(mine, "next"), json_object_del(mine, "next_device");
      json_object_set(mine, "outputs", t.outputs);
      json_object_set(results, stage, mine);
      json_object_set_new(prev, stage, mine);
      json_decref(input), json_decref(next);
      input = in2, next = rest;
      if (ns) snprintf(stage_buf, sizeof stage_buf, "%s", ns);
      stage = ns ? stage_buf : NULL;
    }
    json_decref(t.outputs), json_decref(t.result);
    nq_envelope_deinit(&env);
  }
  for (int i = 0; i < n_tab; i++)
    if (tab[i].st->fini) tab[i].st->fini(tab[i].state);
  nq_store_free(store);
  json_t *summary = json_pack("{s:s,s:O,s:O,s:O}", "prompt", prompt, "params", params, "stages", results, "files", files);
  char rp[PATH_MAX + 16];
  snprintf(rp, sizeof rp, "%s/result.json", out_abs);
  if (json_dump_file(summary, rp, JSON_INDENT(2)) != 0) fprintf(stderr, "nextq generate: cannot write %s\n", rp);
  json_decref(summary);
  if (rc) {
    fprintf(stderr, "nextq generate: %s\n", err.msg);
  } else {
    const char *text = json_string_value(json_object_get(json_object_get(results, "llm"), "text"));
    printf("text: %s\n", text ? text : "");
    size_t i;
    json_t *f;
    json_array_foreach(files, i, f) {
      const char *u = json_string_value(f);
      size_t ul = u ? strlen(u) : 0;
      if (ul > 4 && (!strcmp(u + ul - 4, ".png") || !strcmp(u + ul - 4, ".wav") || !strcmp(u + ul - 4, ".mp4") ||
                     !strcmp(u + ul - 4, ".gif") || !strcmp(u + ul - 4, ".txt")))
        printf("%s\n", !strncmp(u, "file://", 7) ? u + 7 : u);
    }
    status = 0;
  }
  json_decref(input), json_decref(next), json_decref(results), json_decref(files), json_decref(stage_cfg);
done:
  json_decref(params);
  return status;
}

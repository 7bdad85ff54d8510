/* tests/integration/test_nextgpt_chain.c — NExT-GPT's stages as chained tasks with real processes (build/nextq):
 * the tiny model (`nextq model init-tiny`) and the project's own sample shard (`nextq demo-data`);
 *   - eval (= caption + metrics) through `nextq run`: encode -> llm, manifest complete, _eval.json, and the same
 *     texts on a second run (deterministic for a seed);
 *   - t2x: the llm stage writes the image signal tensors (hidden/embeds [4,64], cond [77,768]) byte-identically
 *     across runs;
 *   - the chain across two worker processes via a real redis-server: encode on one worker, llm on the other, the
 *     ImageBind .npy files travelling as object-store URIs;
 *   - the full chain encode -> llm -> generate-image across two worker processes (encode + llm on one, generate-image
 *     on the other) producing a PNG that decodes;
 *   - text -> image twice through `nextq run`: byte-identical PNGs for the same seed;
 *   - configs/jobs/demo.yaml itself (the `make demo` any-to-any job, 3 items) through `nextq run`, its relative paths
 *     resolved against the job file: every task ok at generate-image, PNGs decode, text.txt beside them, manifest
 *     and _SUCCESS;
 *   - init-tiny's decoder directories carry the diffusers/transformers tensor names of the golden cases (when
 *     ../shared is present), and `nextq generate` runs one request without a queue;
 *   - params naming files resolve against the job file's directory (scheduler). */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "compute/io/safetensors.h"
#include "datasets/media.h"
#include "scheduler/scheduler.h"
#include "tests/helpers/proc.h"
#include "tests/helpers/redis_harness.h"

extern char **environ;

static nq_redis_harness_t rh;
static char tmp[256];
static const char *bin;

static pid_t spawn(const char *out_path, const char *const *args) {
  char log[300];
  snprintf(log, sizeof log, "%s/stderr.log", tmp);
  pid_t pid = nq_proc_spawn(bin, out_path, log, args);
  cr_assert_gt(pid, 0, "spawn %s: %s", bin, strerror(errno));
  return pid;
}

static int wait_exit(pid_t pid) { return nq_proc_wait(pid); }

static int run(char *out, size_t cap, const char *const *args) {
  int rc = nq_proc_run(bin, tmp, out, cap, args);
  cr_assert_neq(rc, -1, "could not start %s", bin);
  return rc;
}

static void setup(void) {
  bin = getenv("NQ_BIN");
  if (!bin) bin = "build/nextq";
  snprintf(tmp, sizeof tmp, "/tmp/nq_ngchain_XXXXXX");
  cr_assert(mkdtemp(tmp));
  char a[400], b[400];
  snprintf(a, sizeof a, "%s/tiny", tmp);
  snprintf(b, sizeof b, "%s/data", tmp);
  cr_assert_eq(run(NULL, 0, (const char *[]){"model", "init-tiny", "--out", a, NULL}), 0, "init-tiny failed");
  cr_assert_eq(run(NULL, 0, (const char *[]){"demo-data", "--out", b, "--n", "3", NULL}), 0, "demo-data failed");
}
static void setup_redis(void) {
  setup();
  if (nq_redis_harness_start(&rh, 0) != 0) cr_skip_test("redis-server not available");
}
static void teardown(void) {
  nq_redis_harness_cleanup(&rh);
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf %s", tmp);
  if (system(cmd) != 0) fprintf(stderr, "cleanup failed\n");
}

static void write_job(const char *name, const char *job, const char *stage, const char *next, const char *ds,
                      const char *extra) {
  char p[400];
  snprintf(p, sizeof p, "%s/%s", tmp, name);
  FILE *f = fopen(p, "w");
  cr_assert(f);
  fprintf(f,
          "job: %s\nstage: %s\nnext: %s\ndataset: %s\noutput: out\nbatch_size: 1\nparams:\n"
          "  nextgpt: %s/tiny/nextgpt.yaml\n  vision_model: %s/tiny/imagebind\n  audio_model: %s/tiny/imagebind\n"
          "  max_tgt_len: 16\n  seed: 13\n%s",
          job, stage, next, ds, tmp, tmp, tmp, extra);
  fclose(f);
}

static json_t *manifest(const char *job) {
  char p[600];
  snprintf(p, sizeof p, "%s/out/%s/_manifest.jsonl", tmp, job);
  FILE *f = fopen(p, "r");
  cr_assert(f, "no manifest %s", p);
  json_t *rows = json_array();
  char line[1 << 16];
  while (fgets(line, sizeof line, f)) {
    json_t *r = json_loads(line, 0, NULL);
    cr_assert(r, "bad manifest line %s", line);
    json_array_append_new(rows, r);
  }
  fclose(f);
  return rows;
}

static int file_exists(const char *uri) {
  const char *p = strncmp(uri, "file://", 7) ? uri : uri + 7;
  return access(p, R_OK) == 0;
}

static char *slurp(const char *path, size_t *n) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long l = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *b = malloc((size_t)l + 1);
  *n = fread(b, 1, (size_t)l, f);
  b[*n] = 0;
  fclose(f);
  return b;
}

/* Every task ok at stage `stage`, each output present; returns the texts joined by '\n' (owned). */
static char *check_manifest(const char *job, int n, const char *stage, const char *must_have) {
  json_t *rows = manifest(job);
  cr_assert_eq((int)json_array_size(rows), n, "manifest rows %zu", json_array_size(rows));
  char *texts = calloc(1, 65536);
  size_t i;
  json_t *r;
  json_array_foreach(rows, i, r) {
    cr_assert_str_eq(json_string_value(json_object_get(r, "status")), "ok", "row %zu: %s", i,
                     json_dumps(r, JSON_COMPACT));
    cr_assert_str_eq(json_string_value(json_object_get(r, "stage")), stage);
    json_t *outs = json_object_get(r, "outputs"), *o;
    size_t j;
    bool have = false;
    json_array_foreach(outs, j, o) {
      const char *u = json_string_value(json_object_get(o, "uri"));
      cr_assert(u && file_exists(u), "output %s missing", u);
      if (must_have && strstr(u, must_have)) have = true;
    }
    cr_assert(!must_have || have, "row %zu lacks %s", i, must_have);
    const char *t = json_string_value(json_object_get(r, "text"));
    cr_assert(t);
    strncat(texts, t, 60000 - strlen(texts));
    strcat(texts, "\n");
  }
  json_decref(rows);
  char p[600];
  snprintf(p, sizeof p, "%s/out/%s/_SUCCESS", tmp, job);
  cr_assert(access(p, F_OK) == 0, "no _SUCCESS");
  return texts;
}

TestSuite(nextgpt_chain, .init = setup, .fini = teardown, .timeout = 240);

Test(nextgpt_chain, eval_job_embedded_deterministic) {
  char ds[400];
  snprintf(ds, sizeof ds, "{format: webdataset, path: %s/data/samples-000000.tar}", tmp);
  write_job("eval.yaml", "eval", "encode", "[llm]", ds, "  mode: caption\n  route: false\n  eval: true\n");
  char path[400], job1[256], job2[256];
  snprintf(path, sizeof path, "%s/eval.yaml", tmp);
  cr_assert_eq(run(job1, sizeof job1, (const char *[]){"run", path, "--workers", "2", NULL}), 0);
  char *t1 = check_manifest(job1, 3, "llm", "text.txt");
  /* the encode stage's embeddings stay in the task's directory, next to the text */
  char p[700];
  snprintf(p, sizeof p, "%s/out/%s/000000/000000.png.npy", tmp, job1);
  cr_assert(access(p, F_OK) == 0, "missing %s", p);
  snprintf(p, sizeof p, "%s/out/%s/000000/000000.wav.npy", tmp, job1);
  cr_assert(access(p, F_OK) == 0, "missing %s", p);
  /* the eval summary */
  snprintf(p, sizeof p, "%s/out/%s/_eval.json", tmp, job1);
  json_t *ev = json_load_file(p, 0, NULL);
  cr_assert(ev, "no %s", p);
  cr_assert_eq(json_integer_value(json_object_get(ev, "items")), 3);
  double b4 = json_number_value(json_object_get(ev, "bleu_4")), cd = json_number_value(json_object_get(ev, "cider_d"));
  cr_assert(json_is_number(json_object_get(ev, "bleu_4")) && b4 >= 0 && b4 <= 1);
  cr_assert(json_is_number(json_object_get(ev, "cider_d")) && cd >= 0 && cd <= 10);
  json_decref(ev);
  /* the same seed gives the same captions */
  cr_assert_eq(run(job2, sizeof job2, (const char *[]){"run", path, "--workers", "1", NULL}), 0);
  char *t2 = check_manifest(job2, 3, "llm", "text.txt");
  cr_assert_str_eq(t1, t2);
  free(t1), free(t2);
}

Test(nextgpt_chain, t2x_signal_tensors_deterministic) {
  char ds[400];
  snprintf(ds, sizeof ds, "{format: jsonl, path: %s/data/t2x.jsonl}", tmp);
  write_job("t2x.yaml", "t2x", "llm", "[]", ds, "  output_modality: image\n  route: false\n");
  char path[400], job[2][256];
  snprintf(path, sizeof path, "%s/t2x.yaml", tmp);
  for (int k = 0; k < 2; k++) {
    cr_assert_eq(run(job[k], sizeof job[k], (const char *[]){"run", path, NULL}), 0);
    free(check_manifest(job[k], 3, "llm", "image_cond.npy"));
  }
  static const char *const names[] = {"image_cond.npy", "image_hidden.npy", "image_embeds.npy"};
  static const size_t want[] = {77 * 768 * 4, 4 * 64 * 4, 4 * 64 * 4}; /* float32 payloads */
  for (int i = 0; i < 3; i++) {
    char a[700], b[700];
    snprintf(a, sizeof a, "%s/out/%s/000001/%s", tmp, job[0], names[i]);
    snprintf(b, sizeof b, "%s/out/%s/000001/%s", tmp, job[1], names[i]);
    size_t na, nb;
    char *da = slurp(a, &na), *db = slurp(b, &nb);
    cr_assert(da && db, "missing %s", a);
    cr_assert(na > want[i] && na - want[i] <= 256, "%s: %zu bytes for %zu of data", a, na, want[i]);
    cr_assert(na == nb && memcmp(da, db, na) == 0, "%s differs between runs", names[i]);
    free(da), free(db);
  }
}

TestSuite(nextgpt_chain_redis, .init = setup_redis, .fini = teardown, .timeout = 240);

Test(nextgpt_chain_redis, encode_and_llm_on_different_workers) {
  char ds[400];
  snprintf(ds, sizeof ds, "{format: webdataset, path: %s/data/samples-000000.tar}", tmp);
  write_job("cap.yaml", "cap", "encode", "[llm]", ds, "  mode: caption\n  route: false\n");
  const char *wa[] = {"worker", "--queue", rh.url, "--stages", "encode", "--threads", "1", NULL};
  const char *wb[] = {"worker", "--queue", rh.url, "--stages", "llm", "--threads", "1", NULL};
  pid_t a = spawn(NULL, wa), b = spawn(NULL, wb);
  char path[400], job[256];
  snprintf(path, sizeof path, "%s/cap.yaml", tmp);
  cr_assert_eq(run(job, sizeof job, (const char *[]){"submit", path, "--queue", rh.url, NULL}), 0);
  int rc = run(NULL, 0, (const char *[]){"wait", job, "--queue", rh.url, "--timeout", "120", NULL});
  kill(a, SIGTERM), kill(b, SIGTERM);
  wait_exit(a), wait_exit(b);
  cr_assert_eq(rc, 0, "wait: %d", rc);
  free(check_manifest(job, 3, "llm", "text.txt"));
  for (int i = 0; i < 3; i++) {
    char p[700];
    snprintf(p, sizeof p, "%s/out/%s/%06d/%06d.png.npy", tmp, job, i, i);
    cr_assert(access(p, F_OK) == 0, "missing %s (written by the encode worker)", p);
  }
}

/* ---- the generate side ---- */

/* A PNG output of the manifest row decodes to an RGB image of the tiny SD's default size (64 x 64). */
static void check_png(const char *uri) {
  const char *p = strncmp(uri, "file://", 7) ? uri : uri + 7;
  nq_media_image_t img;
  nq_err_t err = {0};
  cr_assert_eq(nq_media_image_load(p, &img, &err), 0, "%s: %s", p, err.msg);
  cr_assert(img.w == 64 && img.h == 64, "%s: %dx%d", p, img.w, img.h);
  long long sum = 0, sq = 0;
  for (int i = 0; i < img.w * img.h * 3; i++) sum += img.rgb[i], sq += (long long)img.rgb[i] * img.rgb[i];
  double n = img.w * img.h * 3.0, mean = (double)sum / n, var = (double)sq / n - mean * mean;
  cr_assert(var > 1.0, "%s: a flat image (mean %.1f, var %.2f)", p, mean, var); /* noise, not a constant */
  nq_media_image_deinit(&img);
}

/* Rows all ok at generate-image; each has image.png (decodes) and text.txt in its task directory. */
static void check_image_rows(const char *job, int n) {
  json_t *rows = manifest(job);
  cr_assert_eq((int)json_array_size(rows), n, "manifest rows %zu", json_array_size(rows));
  size_t i;
  json_t *r;
  json_array_foreach(rows, i, r) {
    cr_assert_str_eq(json_string_value(json_object_get(r, "status")), "ok", "row %zu: %s", i,
                     json_dumps(r, JSON_COMPACT));
    cr_assert_str_eq(json_string_value(json_object_get(r, "stage")), "generate-image");
    const char *png = NULL;
    size_t j;
    json_t *o;
    json_array_foreach(json_object_get(r, "outputs"), j, o) {
      const char *u = json_string_value(json_object_get(o, "uri"));
      cr_assert(u && file_exists(u), "output %s missing", u);
      if (strstr(u, "image.png")) png = u;
    }
    cr_assert(png, "row %zu has no image.png", i);
    check_png(png);
    char txt[1200];
    snprintf(txt, sizeof txt, "%.*stext.txt", (int)(strlen(png) - strlen("image.png")), png);
    cr_assert(file_exists(txt), "row %zu: no %s (the llm stage's text)", i, txt);
  }
  json_decref(rows);
  char p[600];
  snprintf(p, sizeof p, "%s/out/%s/_SUCCESS", tmp, job);
  cr_assert(access(p, F_OK) == 0, "no _SUCCESS");
}

Test(nextgpt_chain, t2x_image_png_deterministic) {
  char ds[400];
  snprintf(ds, sizeof ds, "{format: jsonl, path: %s/data/t2x.jsonl}", tmp);
  write_job("t2i.yaml", "t2i", "llm", "[generate-image]", ds, "  output_modality: image\n  steps: 6\n");
  char path[400], job[2][256];
  snprintf(path, sizeof path, "%s/t2i.yaml", tmp);
  for (int k = 0; k < 2; k++) {
    cr_assert_eq(run(job[k], sizeof job[k], (const char *[]){"run", path, "--workers", k ? "1" : "2", NULL}), 0);
    check_image_rows(job[k], 3);
  }
  for (int i = 0; i < 3; i++) {
    char a[700], b[700];
    snprintf(a, sizeof a, "%s/out/%s/%06d/image.png", tmp, job[0], i);
    snprintf(b, sizeof b, "%s/out/%s/%06d/image.png", tmp, job[1], i);
    size_t na, nb;
    char *da = slurp(a, &na), *db = slurp(b, &nb);
    cr_assert(da && db, "missing %s", a);
    cr_assert(na == nb && memcmp(da, db, na) == 0, "%s differs between runs of the same seed", a);
    free(da), free(db);
  }
}

/* configs/jobs/demo.yaml as `make demo` runs it, in a copy of the repository layout it expects. */
Test(nextgpt_chain, demo_job_through_nextq_run) {
  char p[700], q[700];
  snprintf(p, sizeof p, "mkdir -p %s/lay/configs/jobs %s/lay/build/demo && cp configs/jobs/demo.yaml %s/lay/configs/jobs/ "
           "&& ln -s %s/tiny %s/lay/build/tiny-nextgpt && ln -s %s/data %s/lay/build/demo/data",
           tmp, tmp, tmp, tmp, tmp, tmp, tmp);
  cr_assert_eq(system(p), 0, "%s", p);
  snprintf(p, sizeof p, "%s/lay/configs/jobs/demo.yaml", tmp);
  char job[256];
  cr_assert_eq(run(job, sizeof job, (const char *[]){"run", p, "--workers", "2", NULL}), 0, "nextq run %s", p);
  /* outputs under ../../build/demo/out relative to the job file */
  snprintf(q, sizeof q, "%s/lay/build/demo/out/%s/_manifest.jsonl", tmp, job);
  cr_assert(access(q, F_OK) == 0, "no %s", q);
  /* check_image_rows reads <tmp>/out/<job>: point it there */
  snprintf(p, sizeof p, "ln -s %s/lay/build/demo/out %s/out", tmp, tmp);
  cr_assert_eq(system(p), 0);
  check_image_rows(job, 3);
  /* every task went through the three stages: the ImageBind embeddings are in its directory too */
  for (int i = 0; i < 3; i++) {
    snprintf(p, sizeof p, "%s/out/%s/%06d/%06d.png.npy", tmp, job, i, i);
    cr_assert(access(p, F_OK) == 0, "missing %s", p);
    snprintf(p, sizeof p, "%s/out/%s/%06d/image_cond.npy", tmp, job, i);
    cr_assert(access(p, F_OK) == 0, "missing %s", p);
  }
}

Test(nextgpt_chain, generate_cli_one_request) {
  char model[400], out[400], img[400], buf[4096];
  snprintf(model, sizeof model, "%s/tiny/nextgpt.yaml", tmp);
  snprintf(out, sizeof out, "%s/gen", tmp);
  snprintf(img, sizeof img, "%s/data/media/000001.png", tmp);
  cr_assert_eq(run(buf, sizeof buf,
                   (const char *[]){"generate", "what is this? show me one like it", "--image", img, "--model", model,
                                    "--out", out, "--seed", "5", "--modality", "image", "--param", "steps=4", NULL}),
               0, "generate: %s", buf);
  cr_assert(strstr(buf, "text: "), "%s", buf);
  char p[600];
  snprintf(p, sizeof p, "%s/image.png", out);
  check_png(p);
  snprintf(p, sizeof p, "%s/000001.png.npy", out);
  cr_assert(access(p, F_OK) == 0, "missing %s (encode)", p);
  snprintf(p, sizeof p, "%s/result.json", out);
  json_t *r = json_load_file(p, 0, NULL);
  cr_assert(r, "no %s", p);
  json_t *st = json_object_get(r, "stages");
  cr_assert(json_object_get(st, "encode") && json_object_get(st, "llm") && json_object_get(st, "generate-image"));
  json_decref(r);
  cr_assert_neq(run(NULL, 0, (const char *[]){"generate", "x", "--out", out, NULL}), 0, "no --model must fail");
}

/* The decoders init-tiny writes carry the names and shape patterns of the golden diffusers/transformers cases (the
 * upstream state_dicts); indices are compared as patterns since the tiny configs differ. */
static json_t *name_patterns(const char *path) {
  nq_st_file_t *f = NULL;
  nq_err_t err = {0};
  cr_assert_eq(nq_st_open(path, &f, &err), 0, "%s: %s", path, err.msg);
  json_t *set = json_object();
  for (size_t i = 0; i < (size_t)nq_st_count(f); i++) {
    const char *n = nq_st_get(f, i)->name;
    char pat[512];
    size_t k = 0;
    for (const char *c = n; *c && k + 2 < sizeof pat; c++) {
      if (*c == '.' && c[1] >= '0' && c[1] <= '9') {
        pat[k++] = '.', pat[k++] = '#';
        while (c[1] >= '0' && c[1] <= '9') c++;
      } else pat[k++] = *c;
    }
    pat[k] = 0;
    json_object_set_new(set, pat, json_true());
  }
  nq_st_close(f);
  return set;
}

Test(nextgpt_chain, tiny_decoders_match_golden_names) {
  static const char *const pairs[][2] = {
      {"diffusers/unet2d-sd15/model/unet/diffusion_pytorch_model.safetensors", "sd/unet/diffusion_pytorch_model.safetensors"},
      {"diffusers/unet2d-audioldm/model/unet/diffusion_pytorch_model.safetensors",
       "audioldm/unet/diffusion_pytorch_model.safetensors"},
      {"diffusers/unet3d-zeroscope/model/unet/diffusion_pytorch_model.safetensors",
       "zeroscope/unet/diffusion_pytorch_model.safetensors"},
      {"diffusers/vae-decode/model/vae/diffusion_pytorch_model.safetensors", "sd/vae/diffusion_pytorch_model.safetensors"},
      {"text/clip-text-tiny/model/model.safetensors", "sd/text_encoder/model.safetensors"},
      {"audio/hifigan-tiny/model/model.safetensors", "audioldm/vocoder/model.safetensors"}};
  char g[700], t[700];
  snprintf(g, sizeof g, "%s/golden/diffusers/unet2d-sd15", NQ_SHARED_DIR);
  if (access(g, F_OK) != 0) cr_skip_test("%s not present", g);
  for (size_t i = 0; i < sizeof pairs / sizeof *pairs; i++) {
    snprintf(g, sizeof g, "%s/golden/%s", NQ_SHARED_DIR, pairs[i][0]);
    snprintf(t, sizeof t, "%s/tiny/%s", tmp, pairs[i][1]);
    json_t *a = name_patterns(g), *b = name_patterns(t);
    const char *k;
    json_t *v;
    json_object_foreach(a, k, v) cr_assert(json_object_get(b, k), "%s: golden tensor pattern %s missing", t, k);
    /* ours may add only the 1x1 shortcuts its wider channel ladder needs */
    json_object_foreach(b, k, v) cr_assert(json_object_get(a, k) || strstr(k, "conv_shortcut"), "%s: extra %s", t, k);
    json_decref(a), json_decref(b);
  }
}

/* params naming files resolve against the job file's directory; other values stay as they are. */
Test(nextgpt_chain, params_paths_resolve_against_the_job_file) {
  char d[400];
  snprintf(d, sizeof d, "%s/jobs", tmp);
  cr_assert_eq(mkdir(d, 0755), 0);
  const char *y = "job: p\nstage: llm\ndataset: {path: x.jsonl}\noutput: ../out\nparams:\n"
                  "  nextgpt: ../tiny/nextgpt.yaml\n  vision_model: ../tiny/imagebind\n  model: stories\n"
                  "  tokenizer: /abs/tok.model\n  taesd: s3://b/taesd\n  prompt: ../not/a/path\n  seed: 3\n";
  nq_job_spec_t s;
  nq_err_t err = {0};
  cr_assert_eq(nq_job_spec_load_string(y, strlen(y), "p.yaml", d, &s, &err), 0, "%s", err.msg);
  char want[600];
  snprintf(want, sizeof want, "%s/tiny/nextgpt.yaml", tmp);
  cr_assert_str_eq(json_string_value(json_object_get(s.params, "nextgpt")), want);
  snprintf(want, sizeof want, "%s/tiny/imagebind", tmp);
  cr_assert_str_eq(json_string_value(json_object_get(s.params, "vision_model")), want);
  cr_assert_str_eq(json_string_value(json_object_get(s.params, "model")), "stories"); /* no such file: a name */
  cr_assert_str_eq(json_string_value(json_object_get(s.params, "tokenizer")), "/abs/tok.model");
  cr_assert_str_eq(json_string_value(json_object_get(s.params, "taesd")), "s3://b/taesd");
  cr_assert_str_eq(json_string_value(json_object_get(s.params, "prompt")), "../not/a/path"); /* not a file key */
  cr_assert_eq(json_integer_value(json_object_get(s.params, "seed")), 3);
  nq_job_spec_deinit(&s);
}

/* The whole chain across two worker processes: encode + llm on one, generate-image on the other. */
Test(nextgpt_chain_redis, any2any_generate_on_another_worker) {
  char ds[400];
  snprintf(ds, sizeof ds, "{format: jsonl, path: %s/data/any2any.jsonl}", tmp);
  write_job("a2a.yaml", "a2a", "encode", "[llm, generate-image]", ds, "  output_modality: image\n  steps: 5\n");
  const char *wa[] = {"worker", "--queue", rh.url, "--stages", "encode,llm", "--threads", "1", NULL};
  const char *wb[] = {"worker", "--queue", rh.url, "--stages", "generate-image", "--threads", "1", NULL};
  pid_t a = spawn(NULL, wa), b = spawn(NULL, wb);
  char path[400], job[256];
  snprintf(path, sizeof path, "%s/a2a.yaml", tmp);
  cr_assert_eq(run(job, sizeof job, (const char *[]){"submit", path, "--queue", rh.url, NULL}), 0);
  int rc = run(NULL, 0, (const char *[]){"wait", job, "--queue", rh.url, "--timeout", "150", NULL});
  kill(a, SIGTERM), kill(b, SIGTERM);
  wait_exit(a), wait_exit(b);
  cr_assert_eq(rc, 0, "wait: %d", rc);
  check_image_rows(job, 3);
  /* the SD pipeline was loaded (by worker b: worker a does not serve generate-image) */
  char lp[400];
  snprintf(lp, sizeof lp, "%s/stderr.log", tmp);
  size_t n;
  char *log = slurp(lp, &n);
  cr_assert(log && strstr(log, "\"component\":\"sd\"") , "no SD load in the workers' log");
  free(log);
}

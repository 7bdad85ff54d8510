/* The `encode` stage end to end on real media and the golden tiny ImageBind trunks: a batch of tasks (an image, an
 * audio file, a JPEG, a corrupt file, an empty task) -> one .npy per item in the store, read back and compared with
 * the embeddings of the golden preprocessed tensors (../shared/golden/imagebind, the preprocess cases) through the trunks
 * that the imagebind tests check against their golden cases. Corrupt media fail only their task, fatally, naming the
 * file. */
#include <criterion/criterion.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "compute/io/npy.h"
#include "compute/io/safetensors.h"
#include "compute/models/imagebind.h"
#include "queue/envelope.h"
#include "store/store.h"
#include "worker/worker.h"

#define IB NQ_SHARED_DIR "/golden/imagebind/"

static float *golden(const char *path, const char *name) {
  nq_st_file_t *f;
  nq_err_t err = {0};
  cr_assert_eq(nq_st_open(path, &f, &err), 0, "%s", err.msg);
  const nq_st_tensor_t *t = nq_st_find(f, name);
  cr_assert(t);
  float *d = malloc(sizeof(float) * (size_t)nq_st_numel(t));
  cr_assert_eq(nq_dtype_to_f32(t->dtype, t->data, d, (size_t)nq_st_numel(t)), 0);
  nq_st_close(f);
  return d;
}

/* Reference embedding of golden preprocessed views. */
static void reference(const char *model, nq_imagebind_modality_t mod, const float *views, int n_views, float *out) {
  nq_imagebind_load_opts_t o;
  nq_imagebind_load_opts_init(&o);
  o.modality = mod;
  nq_imagebind_t *m;
  nq_err_t err = {0};
  cr_assert_eq(nq_imagebind_load(model, &o, &m, &err), 0, "%s", err.msg);
  cr_assert_eq(nq_imagebind_embed(m, views, 1, n_views, 1, out, &err), 0, "%s", err.msg);
  nq_imagebind_free(m);
}

static void check_npy(nq_store_t *st, const char *uri, const float *ref, int dim, double tol, const char *what) {
  void *buf;
  size_t len;
  nq_err_t err = {0};
  cr_assert_eq(nq_store_get(st, uri, &buf, &len, &err), 0, "%s: %s", uri, err.msg);
  nq_npy_view_t v;
  cr_assert_eq(nq_npy_parse(buf, len, uri, &v, &err), 0, "%s", err.msg);
  cr_assert(v.dtype == NQ_DT_F32 && v.ndim == 1 && v.shape[0] == dim, "%s: npy shape", uri);
  float got[64];
  memcpy(got, v.data, sizeof(float) * (size_t)dim);
  double se = 0, sx = 0, mx = 0;
  for (int i = 0; i < dim; i++) {
    double d = (double)got[i] - ref[i];
    se += d * d, sx += (double)ref[i] * ref[i], mx = fmax(mx, fabs(d));
  }
  fprintf(stderr, "%s: rel_l2 %.3g max_abs %.3g\n", what, sqrt(se / sx), mx);
  cr_assert(sqrt(se / sx) <= tol && mx <= tol, "%s: rel_l2 %.3g max_abs %.3g", what, sqrt(se / sx), mx);
  free(buf);
}

Test(stage_encode, batch_of_tasks) {
  char tmp[] = "/tmp/nq_enc_XXXXXX";
  cr_assert(mkdtemp(tmp));
  char bad[300];
  snprintf(bad, sizeof bad, "%s/broken.jpg", tmp);
  FILE *f = fopen(bad, "wb");
  static const char junk[] = "\xff\xd8\xff\xe0\x00\x10JFIF\x00garbage"; /* a JPEG header, then nothing valid */
  fwrite(junk, 1, sizeof junk - 1, f);
  fclose(f);

  nq_store_t *st;
  nq_err_t err = {0};
  cr_assert_eq(nq_store_new(&(nq_store_cfg_t){0}, &st, &err), 0, "%s", err.msg);
  const nq_stage_t *stage = nq_stage_find("encode");
  cr_assert(stage, "encode stage not registered");
  json_t *cfg = json_pack("{s:s,s:s}", "model", IB "imagebind-vision/model", "audio_model", IB "imagebind-audio/model");
  void *state = NULL;
  cr_assert_eq(stage->init(&state, cfg, &err), 0, "%s", err.msg);

  const char *png = "file://" IB "image-preprocess-png/synthetic_320x240.png";
  const char *jpg = IB "image-preprocess-jpeg/synthetic_320x240.jpg"; /* a plain path works too */
  const char *wav = "file://" IB "audio-preprocess/synthetic_44100Hz_4.0s.wav";
  json_t *inputs[5] = {
      json_pack("{s:s,s:[{s:s,s:s},{s:s,s:s}]}", "key", "a", "media", "kind", "image", "uri", png, "kind", "audio", "uri", wav),
      json_pack("{s:[{s:s,s:s}]}", "media", "kind", "image", "uri", bad),
      json_pack("{s:[{s:s,s:s},{s:s,s:s}]}", "media", "kind", "image", "uri", jpg, "kind", "image", "uri", png),
      json_pack("{s:[]}", "media"),
      json_pack("{s:[{s:s,s:s}]}", "media", "kind", "hologram", "uri", png),
  };
  enum { N = 5 };
  /* explicit params/next: nq_envelope_make leaks the defaults it makes for NULL ones (s:O on a fresh object) */
  json_t *no_params = json_object(), *no_next = json_array();
  nq_envelope_t env[N];
  nq_task_ctx_t t[N];
  memset(t, 0, sizeof t);
  for (int i = 0; i < N; i++) {
    char out[400], task[16];
    snprintf(out, sizeof out, "file://%s/out/t%d/", tmp, i);
    snprintf(task, sizeof task, "t%d", i);
    cr_assert_eq(nq_envelope_make(&env[i], "job1", task, "encode", "cpu", 3, inputs[i], no_params, out, no_next, NULL, &err), 0,
                 "%s", err.msg);
    t[i] = (nq_task_ctx_t){.env = &env[i], .store = st, .outputs = json_array(), .result = json_object()};
  }
  stage->run_batch(state, t, N);

  /* references: golden preprocessed tensors through the golden-checked trunks */
  float ref_png[32], ref_jpg[32], ref_wav[32];
  float *px = golden(IB "image-preprocess-png/expected.safetensors", "pixels");
  reference(IB "imagebind-vision/model", NQ_IB_VISION, px, 1, ref_png);
  free(px);
  px = golden(IB "image-preprocess-jpeg/expected.safetensors", "pixels");
  reference(IB "imagebind-vision/model", NQ_IB_VISION, px, 1, ref_jpg);
  free(px);
  float *fb = golden(IB "audio-preprocess/expected.safetensors", "fbank");
  reference(IB "imagebind-audio/model", NQ_IB_AUDIO, fb, 3, ref_wav);
  free(fb);

  cr_assert_eq(t[0].rc, 0, "t0: %s", t[0].err.msg);
  json_t *embs = json_object_get(t[0].result, "embeddings");
  cr_assert_eq(json_array_size(embs), 2);
  const char *npy0 = json_string_value(json_object_get(json_array_get(embs, 0), "npy"));
  const char *npy1 = json_string_value(json_object_get(json_array_get(embs, 1), "npy"));
  cr_assert(npy0 && strstr(npy0, "/out/t0/synthetic_320x240.png.npy"), "%s", npy0);
  cr_assert(npy1 && strstr(npy1, "/out/t0/synthetic_44100Hz_4.0s.wav.npy"), "%s", npy1);
  cr_assert_eq(json_integer_value(json_object_get(json_array_get(embs, 0), "dim")), 32);
  cr_assert_eq(json_array_size(t[0].outputs), 2);
  check_npy(st, npy0, ref_png, 32, 1e-4, "png via stage");
  check_npy(st, npy1, ref_wav, 32, 1e-4, "wav via stage (3 clips averaged)");

  cr_assert_eq(t[1].rc, NQ_EFORMAT, "t1 rc %d: %s", t[1].rc, t[1].err.msg);
  cr_assert(t[1].err.flags & NQ_ERR_FATAL);
  cr_assert(strstr(t[1].err.msg, "broken.jpg"), "%s", t[1].err.msg);
  cr_assert_eq(json_array_size(t[1].outputs), 0);

  cr_assert_eq(t[2].rc, 0, "t2: %s", t[2].err.msg);
  embs = json_object_get(t[2].result, "embeddings");
  cr_assert_eq(json_array_size(embs), 2);
  /* the JPEG reference is Pillow/libjpeg-turbo: decoders may differ by a level, hence the looser bound */
  check_npy(st, json_string_value(json_object_get(json_array_get(embs, 0), "npy")), ref_jpg, 32, 1e-3, "jpg via stage");
  check_npy(st, json_string_value(json_object_get(json_array_get(embs, 1), "npy")), ref_png, 32, 1e-4, "png in batch");

  cr_assert_eq(t[3].rc, NQ_EFORMAT);
  cr_assert(t[3].err.flags & NQ_ERR_FATAL);
  cr_assert_eq(t[4].rc, NQ_EFORMAT);
  cr_assert(strstr(t[4].err.msg, "media[0]"), "%s", t[4].err.msg);

  for (int i = 0; i < N; i++) {
    nq_envelope_deinit(&env[i]);
    json_decref(t[i].outputs), json_decref(t[i].result), json_decref(inputs[i]);
  }
  stage->fini(state);
  json_decref(cfg);

  /* a task naming a model that does not exist: fatal, names the path */
  json_t *cfg2 = json_object();
  cr_assert_eq(stage->init(&state, cfg2, &err), 0, "%s", err.msg);
  json_t *in = json_pack("{s:[{s:s,s:s}]}", "media", "kind", "image", "uri", png);
  json_t *params = json_pack("{s:s}", "model", "/nonexistent/imagebind");
  nq_envelope_t e1;
  char out[400];
  snprintf(out, sizeof out, "file://%s/out/x/", tmp);
  cr_assert_eq(nq_envelope_make(&e1, "job1", "x", "encode", "cpu", 3, in, params, out, no_next, NULL, &err), 0);
  nq_task_ctx_t tx = {.env = &e1, .store = st, .outputs = json_array(), .result = json_object()};
  stage->run_batch(state, &tx, 1);
  cr_assert_neq(tx.rc, 0);
  cr_assert(tx.err.flags & NQ_ERR_FATAL);
  cr_assert(strstr(tx.err.msg, "/nonexistent/imagebind"), "%s", tx.err.msg);
  nq_envelope_deinit(&e1);
  json_decref(tx.outputs), json_decref(tx.result), json_decref(in), json_decref(params), json_decref(cfg2);
  json_decref(no_params), json_decref(no_next);
  stage->fini(state);
  nq_store_free(st);
  char cmd[400];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
  cr_assert_eq(system(cmd), 0);
}

Test(stage_encode, npy_round_trip_and_hostile_headers) {
  float v[5] = {1, -2, 3.5f, 0, 1e-3f};
  void *buf;
  size_t len;
  nq_err_t err = {0};
  cr_assert_eq(nq_npy_encode_f32(v, 1, NQ_SHAPE(5), &buf, &len, &err), 0);
  const unsigned char *b = buf;
  cr_assert_eq(memcmp(b, "\x93NUMPY\x01\x00", 8), 0);
  size_t hl = b[8] | (size_t)b[9] << 8;
  cr_assert_eq((10 + hl) % 64, 0);
  cr_assert_eq(b[10 + hl - 1], '\n');
  cr_assert(strstr((const char *)b + 10, "{'descr': '<f4', 'fortran_order': False, 'shape': (5,), }"));
  cr_assert_eq(len, 10 + hl + sizeof v);
  nq_npy_view_t view;
  cr_assert_eq(nq_npy_parse(buf, len, "v.npy", &view, &err), 0, "%s", err.msg);
  cr_assert(view.ndim == 1 && view.shape[0] == 5 && view.dtype == NQ_DT_F32);
  cr_assert_eq(memcmp(view.data, v, sizeof v), 0);
  /* truncated data, absurd header length, Fortran order */
  cr_assert_eq(nq_npy_parse(buf, len - 1, "v.npy", &view, &err), NQ_EFORMAT);
  unsigned char *c = malloc(len);
  memcpy(c, buf, len);
  c[8] = 0xff, c[9] = 0xff;
  cr_assert_eq(nq_npy_parse(c, len, "v.npy", &view, &err), NQ_EFORMAT);
  memcpy(c, buf, len);
  char *fo = strstr((char *)c + 10, "False");
  memcpy(fo, "True ", 5);
  cr_assert_eq(nq_npy_parse(c, len, "v.npy", &view, &err), NQ_EUNSUPPORTED);
  free(c);
  free(buf);
  /* 2-d shape spelling */
  float m[6] = {0};
  cr_assert_eq(nq_npy_encode_f32(m, 2, NQ_SHAPE(2, 3), &buf, &len, &err), 0);
  cr_assert(strstr((const char *)buf + 10, "'shape': (2, 3), }"));
  cr_assert_eq(nq_npy_parse(buf, len, "m.npy", &view, &err), 0);
  cr_assert(view.ndim == 2 && view.shape[0] == 2 && view.shape[1] == 3);
  free(buf);
}

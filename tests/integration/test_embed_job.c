/* tests/integration/test_embed_job.c — the `embed` job kind (configs/jobs/embed.yaml: stage encode over a dataset)
 * end to end through build/nextq:
 *   - the test makes a WebDataset shard of 16 images (8 JPEG via libjpeg, 8 PNG via nq_media_png_encode; several
 *     sizes and aspect ratios, so resize + crop differ per image) with libarchive;
 *   - `nextq run` of an embed job over it with the tiny ImageBind vision model of the golden cases
 *     (../shared/golden/imagebind/imagebind-vision/model) -> 16 `<key>.<ext>.npy` files, float32 [32];
 *   - each embedding equals (max abs diff <= 1e-5) what `nextq module run --kind imagebind-vision` gives on the pixels
 *     of `nextq module run --kind image-preprocess --param path=<the same image file>` (both kinds are checked
 *     against the reference by the golden runner; this test checks the job path feeds them the same way: member
 *     addressing inside the shard, batching, naming, .npy encoding). */
#include <archive.h>
#include <archive_entry.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jpeglib.h> /* after stdio.h */

#include "compute/io/npy.h"
#include "compute/io/safetensors.h"
#include "datasets/media.h"

#define MODEL NQ_SHARED_DIR "/golden/imagebind/imagebind-vision/model"
#define N_IMG 16

extern char **environ;

static char tmp[256];
static const char *bin;

static int run(const char *const *args, const char *out_path) {
  const char *argv[32];
  int n = 0;
  argv[n++] = bin;
  for (int i = 0; args[i] && n < 31; i++) argv[n++] = args[i];
  argv[n] = NULL;
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  char log[300];
  snprintf(log, sizeof log, "%s/stderr.log", tmp);
  posix_spawn_file_actions_addopen(&fa, 1, out_path ? out_path : "/dev/null", O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&fa, 2, log, O_WRONLY | O_CREAT | O_APPEND, 0644);
  pid_t pid;
  int rc = posix_spawn(&pid, bin, &fa, NULL, (char *const *)argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  cr_assert_eq(rc, 0, "spawn %s: %s", bin, strerror(rc));
  int st;
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static void setup(void) {
  bin = getenv("NQ_BIN");
  if (!bin) bin = "build/nextq";
  if (access(MODEL "/model.safetensors", R_OK) != 0) cr_skip_test("no %s", MODEL);
  snprintf(tmp, sizeof tmp, "/tmp/nq_embedjob_XXXXXX");
  cr_assert(mkdtemp(tmp));
}

static void teardown(void) {
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf %s", tmp);
  if (system(cmd) != 0) fprintf(stderr, "cleanup failed\n");
}

/* A smooth, image-dependent RGB pattern with some texture. */
static uint8_t *pattern(int w, int h, int seed) {
  uint8_t *p = malloc((size_t)w * h * 3);
  cr_assert(p);
  for (int y = 0; y < h; y++)
    for (int x = 0; x < w; x++) {
      uint8_t *q = p + ((size_t)y * w + x) * 3;
      q[0] = (uint8_t)((x * 255 / w + seed * 31) & 255);
      q[1] = (uint8_t)((y * 255 / h + seed * 17) & 255);
      q[2] = (uint8_t)(128 + 100 * sin(0.07 * x + seed) * cos(0.05 * y - seed));
    }
  return p;
}

static void jpeg_encode(const uint8_t *rgb, int w, int h, unsigned char **out, unsigned long *len) {
  struct jpeg_compress_struct c;
  struct jpeg_error_mgr jerr;
  c.err = jpeg_std_error(&jerr);
  jpeg_create_compress(&c);
  *out = NULL, *len = 0;
  jpeg_mem_dest(&c, out, len);
  c.image_width = (JDIMENSION)w, c.image_height = (JDIMENSION)h, c.input_components = 3, c.in_color_space = JCS_RGB;
  jpeg_set_defaults(&c);
  jpeg_set_quality(&c, 88, TRUE);
  jpeg_start_compress(&c, TRUE);
  while (c.next_scanline < c.image_height) {
    JSAMPROW r = (JSAMPROW)(rgb + (size_t)c.next_scanline * w * 3);
    jpeg_write_scanlines(&c, &r, 1);
  }
  jpeg_finish_compress(&c);
  jpeg_destroy_compress(&c);
}

static void write_file(const char *path, const void *buf, size_t n) {
  FILE *f = fopen(path, "wb");
  cr_assert(f, "cannot write %s", path);
  cr_assert_eq(fwrite(buf, 1, n, f), n);
  fclose(f);
}

static const float *st_f32(nq_st_file_t *st, const char *name, int64_t want, const char *path) {
  const nq_st_tensor_t *t = nq_st_find(st, name);
  cr_assert(t, "%s: no tensor %s", path, name);
  cr_assert_eq(t->dtype, NQ_DT_F32, "%s: %s not F32", path, name);
  cr_assert_eq(nq_st_numel(t), want, "%s: %s has %lld elements, want %lld", path, name, (long long)nq_st_numel(t),
               (long long)want);
  return t->data;
}

TestSuite(embed_job, .init = setup, .fini = teardown, .timeout = 240);

Test(embed_job, webdataset_shard_of_16_images_matches_module_run) {
  static const int sizes[N_IMG][2] = {{640, 480}, {224, 224}, {300, 200}, {200, 300}, {257, 256}, {500, 333},
                                      {333, 500}, {225, 230}, {320, 240}, {240, 320}, {1000, 250}, {250, 1000},
                                      {448, 448}, {231, 611}, {611, 231}, {400, 401}};
  char shard[400], img[N_IMG][400], key[N_IMG][32];
  snprintf(shard, sizeof shard, "%s/shard-000000.tar", tmp);
  struct archive *a = archive_write_new();
  cr_assert_eq(archive_write_set_format_pax_restricted(a), ARCHIVE_OK);
  cr_assert_eq(archive_write_open_filename(a, shard), ARCHIVE_OK, "%s", archive_error_string(a));
  nq_err_t err = {0};
  for (int i = 0; i < N_IMG; i++) {
    int w = sizes[i][0], h = sizes[i][1];
    uint8_t *rgb = pattern(w, h, i);
    void *buf = NULL;
    size_t len = 0;
    bool jpg = i % 2 == 0;
    if (jpg) {
      unsigned char *jb = NULL;
      unsigned long jl = 0;
      jpeg_encode(rgb, w, h, &jb, &jl);
      buf = jb, len = jl;
    } else {
      cr_assert_eq(nq_media_png_encode(rgb, w, h, &buf, &len, &err), 0, "%s", err.msg);
    }
    free(rgb);
    snprintf(key[i], sizeof key[i], "%06d.%s", i, jpg ? "jpg" : "png");
    snprintf(img[i], sizeof img[i], "%s/%s", tmp, key[i]);
    write_file(img[i], buf, len); /* the same bytes, for module run */
    struct archive_entry *e = archive_entry_new();
    archive_entry_set_pathname(e, key[i]);
    archive_entry_set_size(e, (la_int64_t)len);
    archive_entry_set_filetype(e, AE_IFREG);
    archive_entry_set_perm(e, 0644);
    cr_assert_eq(archive_write_header(a, e), ARCHIVE_OK, "%s", archive_error_string(a));
    cr_assert_eq(archive_write_data(a, buf, len), (la_ssize_t)len);
    archive_entry_free(e);
    free(buf);
  }
  cr_assert_eq(archive_write_close(a), ARCHIVE_OK);
  archive_write_free(a);

  /* the embed job, as configs/jobs/embed.yaml describes it */
  char job[400];
  snprintf(job, sizeof job, "%s/embed.yaml", tmp);
  FILE *f = fopen(job, "w");
  cr_assert(f);
  fprintf(f,
          "job: embed\nstage: encode\ndataset: {format: webdataset, path: %s}\noutput: %s/out\nbatch_size: 1\n"
          "params:\n  vision_model: %s\n",
          shard, tmp, MODEL);
  fclose(f);
  char jid_path[400];
  snprintf(jid_path, sizeof jid_path, "%s/job_id.txt", tmp);
  cr_assert_eq(run((const char *[]){"run", job, "--workers", "2", "--batch", "8", "--quiet", NULL}, jid_path), 0,
               "nextq run %s failed (see %s/stderr.log)", job, tmp);
  char jid[256] = "";
  f = fopen(jid_path, "r");
  cr_assert(f);
  if (!fgets(jid, sizeof jid, f)) jid[0] = 0;
  fclose(f);
  jid[strcspn(jid, "\r\n")] = 0;
  cr_assert(jid[0], "nextq run printed no job id");

  /* the reference: module run image-preprocess per file -> one [16,3,224,224] batch -> module run imagebind-vision */
  const int64_t PX = 3 * 224 * 224;
  float *pix = malloc(sizeof(float) * (size_t)(PX * N_IMG));
  cr_assert(pix);
  for (int i = 0; i < N_IMG; i++) {
    char out[500], par[500];
    snprintf(out, sizeof out, "%s/pix%02d.safetensors", tmp, i);
    snprintf(par, sizeof par, "path=%s", img[i]);
    cr_assert_eq(run((const char *[]){"module", "run", "--kind", "image-preprocess", "--param", par, "--out", out,
                                      NULL},
                     NULL),
                 0, "module run image-preprocess %s", img[i]);
    nq_st_file_t *st = NULL;
    cr_assert_eq(nq_st_open(out, &st, &err), 0, "%s", err.msg);
    memcpy(pix + PX * i, st_f32(st, "pixels", PX, out), sizeof(float) * (size_t)PX);
    nq_st_close(st);
  }
  char in_path[400], emb_path[400];
  snprintf(in_path, sizeof in_path, "%s/pixels16.safetensors", tmp);
  snprintf(emb_path, sizeof emb_path, "%s/embeds16.safetensors", tmp);
  nq_st_writer_t *w = nq_st_writer_new();
  cr_assert_eq(nq_st_writer_add_f32(w, "pixels", 4, (int64_t[]){N_IMG, 3, 224, 224}, pix, &err), 0, "%s", err.msg);
  cr_assert_eq(nq_st_writer_save(w, in_path, &err), 0, "%s", err.msg);
  nq_st_writer_free(w);
  free(pix);
  cr_assert_eq(run((const char *[]){"module", "run", "--kind", "imagebind-vision", "--model", MODEL, "--in", in_path,
                                    "--out", emb_path, NULL},
                   NULL),
               0, "module run imagebind-vision");
  nq_st_file_t *st = NULL;
  cr_assert_eq(nq_st_open(emb_path, &st, &err), 0, "%s", err.msg);
  const nq_st_tensor_t *et = nq_st_find(st, "embeds");
  cr_assert(et && et->ndim == 2 && et->shape[0] == N_IMG && et->dtype == NQ_DT_F32, "bad embeds in %s", emb_path);
  int64_t D = et->shape[1];
  cr_assert_eq(D, 32, "the tiny model's out_embed_dim is 32, got %lld", (long long)D);
  const float *ref = et->data;

  /* every image's .npy: one task per sample (key = the member's basename), named <member>.npy */
  int found = 0;
  double worst = 0;
  for (int i = 0; i < N_IMG; i++) {
    char p[800];
    snprintf(p, sizeof p, "%s/out/%s/%06d/%s.npy", tmp, jid, i, key[i]);
    void *buf = NULL;
    size_t len = 0;
    cr_assert_eq(nq_media_read_file(p, &buf, &len, &err), 0, "missing %s: %s", p, err.msg);
    nq_npy_view_t v;
    cr_assert_eq(nq_npy_parse(buf, len, p, &v, &err), 0, "%s", err.msg);
    cr_assert(v.dtype == NQ_DT_F32 && v.ndim == 1 && v.shape[0] == D, "%s: want float32 [%lld]", p, (long long)D);
    const float *e = v.data;
    double nrm = 0;
    for (int64_t k = 0; k < D; k++) {
      double d = fabs((double)e[k] - (double)ref[i * D + k]);
      if (d > worst) worst = d;
      cr_assert_leq(d, 1e-5, "%s[%lld] = %.8f, module run gives %.8f", p, (long long)k, e[k], ref[i * D + k]);
      nrm += (double)e[k] * e[k];
    }
    cr_assert(fabs(nrm - 1.0) < 1e-4, "%s: not unit length (%f)", p, nrm); /* not all zeros / garbage */
    free(buf);
    found++;
  }
  cr_assert_eq(found, N_IMG);
  /* the images differ enough that a swapped or repeated item would fail the comparison above */
  for (int i = 0; i < N_IMG; i++)
    for (int j = i + 1; j < N_IMG; j++) {
      double md = 0;
      for (int64_t k = 0; k < D; k++) md = fmax(md, fabs((double)ref[i * D + k] - ref[j * D + k]));
      cr_assert_gt(md, 1e-3, "images %d and %d embed alike (%g): the test could not tell them apart", i, j, md);
    }
  nq_st_close(st);
  cr_log_info("embed job: %d embeddings, max |job - module run| = %.3g", found, worst);
}

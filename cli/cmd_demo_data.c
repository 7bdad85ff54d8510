/* cli/cmd_demo_data.c — `nextq demo-data --out DIR [--n N]`: a small sample dataset made by the project itself, for
 * `make demo` and the tests (no download):
 *   DIR/samples-000000.tar   WebDataset shard: per sample KEY.png (64x64 shapes on a background), KEY.wav (1 s,
 *                            16 kHz, a chord whose pitch depends on the sample) and KEY.txt (the reference caption)
 *   DIR/media/KEY.png, .wav  the same media as loose files (for JSONL prompts that name them)
 *   DIR/t2x.jsonl            text prompts (text -> image)
 *   DIR/any2any.jsonl        prompts with an image and an audio file each
 * Deterministic: the same N gives byte-identical files. */
#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "datasets/media.h"

int nq_cli_demo_data(int argc, char **argv);

static const char *const dd_colors[] = {"red", "green", "blue", "yellow"};
static const uint8_t dd_rgb[4][3] = {{220, 40, 40}, {40, 190, 60}, {50, 80, 220}, {230, 210, 40}};
static const char *const dd_shapes[] = {"square", "circle", "stripe"};

static void dd_image(int i, uint8_t *px, int w, int h) {
  const uint8_t *fg = dd_rgb[i % 4], *bg = dd_rgb[(i + 2) % 4];
  int shape = (i / 4) % 3;
  for (int y = 0; y < h; y++)
    for (int x = 0; x < w; x++) {
      int dx = x - w / 2, dy = y - h / 2;
      bool in = shape == 0 ? (abs(dx) < w / 4 && abs(dy) < h / 4)
                : shape == 1 ? dx * dx + dy * dy < (w / 4) * (w / 4)
                             : (x / 8) % 2 == 0;
      const uint8_t *c = in ? fg : bg;
      for (int k = 0; k < 3; k++) px[(y * w + x) * 3 + k] = c[k];
    }
}

static int dd_write(const char *path, const void *d, size_t n) {
  FILE *f = fopen(path, "wb");
  if (!f) return -1;
  bool ok = fwrite(d, 1, n, f) == n;
  return (fclose(f) == 0 && ok) ? 0 : -1;
}

static int dd_tar_add(struct archive *a, const char *name, const void *d, size_t n) {
  struct archive_entry *e = archive_entry_new();
  archive_entry_set_pathname(e, name);
  archive_entry_set_size(e, (la_int64_t)n);
  archive_entry_set_filetype(e, AE_IFREG);
  archive_entry_set_perm(e, 0644);
  archive_entry_set_mtime(e, 0, 0);
  int rc = archive_write_header(a, e) == ARCHIVE_OK && archive_write_data(a, d, n) == (la_ssize_t)n ? 0 : -1;
  archive_entry_free(e);
  return rc;
}

int nq_cli_demo_data(int argc, char **argv) {
  const char *out = NULL;
  int n = 4;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--out") && i + 1 < argc) out = argv[++i];
    else if (!strcmp(argv[i], "--n") && i + 1 < argc) n = atoi(argv[++i]);
    else {
      fprintf(stderr, "usage: nextq demo-data --out DIR [--n N]\n");
      return 2;
    }
  }
  if (!out || n < 1 || n > 1000) {
    fprintf(stderr, "usage: nextq demo-data --out DIR [--n N (1..1000)]\n");
    return 2;
  }
  char p[4200];
  snprintf(p, sizeof p, "%s/media", out);
  if ((mkdir(out, 0755) && errno != EEXIST) || (mkdir(p, 0755) && errno != EEXIST)) {
    fprintf(stderr, "nextq demo-data: mkdir %s: %s\n", p, strerror(errno));
    return 1;
  }
  struct archive *a = archive_write_new();
  archive_write_set_format_ustar(a);
  snprintf(p, sizeof p, "%s/samples-000000.tar", out);
  if (archive_write_open_filename(a, p) != ARCHIVE_OK) {
    fprintf(stderr, "nextq demo-data: %s: %s\n", p, archive_error_string(a));
    archive_write_free(a);
    return 1;
  }
  enum { W = 64, H = 64, RATE = 16000 };
  uint8_t *px = malloc(W * H * 3);
  float *wav = malloc(sizeof(float) * RATE);
  FILE *t2x = NULL, *a2a = NULL;
  int rc = px && wav ? 0 : 1;
  snprintf(p, sizeof p, "%s/t2x.jsonl", out);
  if (!rc && !(t2x = fopen(p, "w"))) rc = 1;
  snprintf(p, sizeof p, "%s/any2any.jsonl", out);
  if (!rc && !(a2a = fopen(p, "w"))) rc = 1;
  for (int i = 0; i < n && !rc; i++) {
    char key[32], name[64], cap[160];
    snprintf(key, sizeof key, "%06d", i);
    snprintf(cap, sizeof cap, "a %s %s on a %s background", dd_colors[i % 4], dd_shapes[(i / 4) % 3],
             dd_colors[(i + 2) % 4]);
    dd_image(i, px, W, H);
    void *png = NULL, *wbuf = NULL;
    size_t plen = 0, wlen = 0;
    nq_err_t err = {0};
    double f0 = 220.0 * pow(2.0, (i % 12) / 12.0);
    for (int s = 0; s < RATE; s++)
      wav[s] = (float)(0.3 * sin(2 * M_PI * f0 * s / RATE) + 0.2 * sin(2 * M_PI * 1.5 * f0 * s / RATE));
    if (nq_media_png_encode(px, W, H, &png, &plen, &err) || nq_media_wav_encode(wav, RATE, 1, RATE, NQ_MEDIA_WAV_PCM16, &wbuf, &wlen, &err)) {
      fprintf(stderr, "nextq demo-data: %s\n", err.msg);
      rc = 1;
    }
    snprintf(name, sizeof name, "%s.png", key);
    if (!rc) rc = dd_tar_add(a, name, png, plen);
    snprintf(name, sizeof name, "%s.wav", key);
    if (!rc) rc = dd_tar_add(a, name, wbuf, wlen);
    snprintf(name, sizeof name, "%s.txt", key);
    if (!rc) rc = dd_tar_add(a, name, cap, strlen(cap));
    snprintf(p, sizeof p, "%s/media/%s.png", out, key);
    if (!rc) rc = dd_write(p, png, plen);
    snprintf(p, sizeof p, "%s/media/%s.wav", out, key);
    if (!rc) rc = dd_write(p, wbuf, wlen);
    if (!rc) {
      fprintf(t2x, "{\"id\": \"%s\", \"prompt\": \"show me %s\"}\n", key, cap);
      fprintf(a2a, "{\"id\": \"%s\", \"prompt\": \"what is in this picture and this sound?\", \"image\": \"media/%s.png\", "
                   "\"audio\": \"media/%s.wav\"}\n", key, key, key);
    }
    free(png), free(wbuf);
  }
  if (archive_write_close(a) != ARCHIVE_OK) rc = 1;
  archive_write_free(a);
  if (t2x && fclose(t2x)) rc = 1;
  if (a2a && fclose(a2a)) rc = 1;
  free(px), free(wav);
  if (rc) fprintf(stderr, "nextq demo-data: writing %s failed\n", out);
  else printf("%s\n", out);
  return rc;
}

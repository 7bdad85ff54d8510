/* tests/fuzz/gen_media.c — writes the binary media seeds that Python's standard library cannot make:
 * JPEG (libjpeg: RGB, grayscale, progressive), WebP (libwebp: lossy, lossless), FLAC and OGG Vorbis
 * (libsndfile), MP4 and GIF (datasets/media_write_av.c). Tiny sizes; deterministic pixel/sample values.
 *
 *   cc -std=c11 -D_GNU_SOURCE -I. -o /tmp/gen_media tests/fuzz/gen_media.c datasets/media_write_av.c common/err.c \
 *      $(pkg-config --libs libjpeg libwebp sndfile libavformat libavcodec libavutil libswscale) && /tmp/gen_media
 * (run from the repository root). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>
#include <sndfile.h>
#include <webp/encode.h>

#include "datasets/media.h"

#define DIR "tests/fuzz/corpus/"

static void put(const char *path, const void *buf, size_t n) {
  FILE *f = fopen(path, "wb");
  if (!f || fwrite(buf, 1, n, f) != n || fclose(f)) {
    fprintf(stderr, "gen_media: cannot write %s\n", path);
    exit(1);
  }
}

static void jpeg(const char *path, int w, int h, int gray, int progressive) {
  struct jpeg_compress_struct c;
  struct jpeg_error_mgr e;
  unsigned char *mem = NULL;
  unsigned long n = 0;
  c.err = jpeg_std_error(&e);
  jpeg_create_compress(&c);
  jpeg_mem_dest(&c, &mem, &n);
  c.image_width = (JDIMENSION)w, c.image_height = (JDIMENSION)h;
  c.input_components = gray ? 1 : 3;
  c.in_color_space = gray ? JCS_GRAYSCALE : JCS_RGB;
  jpeg_set_defaults(&c);
  jpeg_set_quality(&c, 50, TRUE);
  if (progressive) jpeg_simple_progression(&c);
  jpeg_start_compress(&c, TRUE);
  unsigned char row[64 * 3];
  while (c.next_scanline < c.image_height) {
    for (int x = 0; x < w * c.input_components; x++) row[x] = (unsigned char)(x * 37 + c.next_scanline * 91);
    JSAMPROW r = row;
    jpeg_write_scanlines(&c, &r, 1);
  }
  jpeg_finish_compress(&c);
  jpeg_destroy_compress(&c);
  put(path, mem, n);
  free(mem);
}

static void webp(const char *path, int w, int h, int lossless) {
  unsigned char rgb[16 * 16 * 3];
  for (int i = 0; i < w * h * 3; i++) rgb[i] = (unsigned char)(i * 29);
  uint8_t *out = NULL;
  size_t n = lossless ? WebPEncodeLosslessRGB(rgb, w, h, w * 3, &out) : WebPEncodeRGB(rgb, w, h, w * 3, 40, &out);
  put(path, out, n);
  WebPFree(out);
}

static void snd(const char *path, int format, int rate, int ch, int frames) {
  SF_INFO si = {.samplerate = rate, .channels = ch, .format = format};
  SNDFILE *f = sf_open(path, SFM_WRITE, &si);
  if (!f) {
    fprintf(stderr, "gen_media: %s: %s\n", path, sf_strerror(NULL));
    exit(1);
  }
  float *s = malloc(sizeof *s * (size_t)frames * ch);
  for (int i = 0; i < frames * ch; i++) s[i] = (float)((i * 7919) % 2000 - 1000) / 1000.0f;
  sf_writef_float(f, s, frames);
  sf_close(f);
  free(s);
}

static void video(const char *path, nq_media_video_fmt_t fmt, int n, int w, int h) {
  unsigned char *rgb = malloc((size_t)n * w * h * 3);
  for (int i = 0; i < n * w * h * 3; i++) rgb[i] = (unsigned char)(i * 13);
  void *out = NULL;
  size_t len = 0;
  nq_err_t err = {0};
  if (nq_media_video_encode(rgb, n, w, h, 4, fmt, &out, &len, NULL, &err) < 0) {
    fprintf(stderr, "gen_media: %s: %s\n", path, err.msg);
    exit(1);
  }
  put(path, out, len);
  free(out);
  free(rgb);
}

int main(void) {
  jpeg(DIR "image/rgb.jpg", 8, 8, 0, 0);
  jpeg(DIR "image/gray-odd.jpg", 5, 3, 1, 0);
  jpeg(DIR "image/progressive.jpg", 17, 9, 0, 1);
  webp(DIR "image/lossy.webp", 6, 4, 0);
  webp(DIR "image/lossless.webp", 3, 3, 1);
  snd(DIR "audio/stereo.flac", SF_FORMAT_FLAC | SF_FORMAT_PCM_16, 8000, 2, 64);
  snd(DIR "audio/mono.ogg", SF_FORMAT_OGG | SF_FORMAT_VORBIS, 8000, 1, 256);
  snd(DIR "audio/aiff.aiff", SF_FORMAT_AIFF | SF_FORMAT_PCM_24, 11025, 1, 16);
  video(DIR "video/tiny.mp4", NQ_MEDIA_VIDEO_MP4, 3, 16, 16);
  video(DIR "video/tiny.gif", NQ_MEDIA_VIDEO_GIF, 2, 8, 6);
  return 0;
}

/* datasets/media_png_write.c — RGB8 -> PNG bytes with libpng (the generate stages' image outputs).
 *
 * 8-bit RGB, no interlace, zlib level 6 (libpng's default), no ancillary chunks, so equal pixels give equal bytes on
 * one libpng/zlib build. Written through a growing memory buffer (png_set_write_fn); libpng errors come back through
 * setjmp as NQ_EINTERNAL (only out-of-memory inside libpng/zlib can cause them with valid arguments). */
#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "datasets/media.h"

typedef struct {
  uint8_t *buf; /* owned until handed out */
  size_t len, cap;
  int oom;
} nq_png__sink_t;

static void nq_png__write(png_structp png, png_bytep data, png_size_t n) {
  nq_png__sink_t *s = png_get_io_ptr(png);
  if (s->oom) return;
  if (s->len + n > s->cap) {
    size_t nc = s->cap ? s->cap : 4096;
    while (nc < s->len + n) nc *= 2;
    uint8_t *nb = realloc(s->buf, nc);
    if (!nb) {
      s->oom = 1;
      png_error(png, "out of memory");
    }
    s->buf = nb, s->cap = nc;
  }
  memcpy(s->buf + s->len, data, n);
  s->len += n;
}

static void nq_png__flush(png_structp png) { (void)png; }

static void nq_png__warn(png_structp png, png_const_charp msg) { (void)png, (void)msg; }

int nq_media_png_encode(const uint8_t *rgb, int w, int h, void **out, size_t *out_len, nq_err_t *err) {
  if (out) *out = NULL;
  if (out_len) *out_len = 0;
  if (!rgb || !out || !out_len || w <= 0 || h <= 0 || (long long)w * h > NQ_MEDIA_MAX_PIXELS)
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "png encode: bad image %dx%d", w, h);
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, nq_png__warn);
  png_infop info = png ? png_create_info_struct(png) : NULL;
  if (!png || !info) {
    png_destroy_write_struct(png ? &png : NULL, NULL);
    return nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "png encode: out of memory");
  }
  nq_png__sink_t sink = {0};
  /* volatile: rows is read after a longjmp */
  png_bytep *volatile rows = NULL;
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    free(rows);
    free(sink.buf);
    return sink.oom ? nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "png encode: out of memory")
                    : nq_err_set(err, NQ_EINTERNAL, 0, "png encode: libpng error");
  }
  rows = malloc(sizeof(png_bytep) * (size_t)h);
  if (!rows) {
    sink.oom = 1;
    png_error(png, "out of memory");
  }
  for (int y = 0; y < h; y++) rows[y] = (png_bytep)(rgb + (size_t)y * (size_t)w * 3);
  png_set_write_fn(png, &sink, nq_png__write, nq_png__flush);
  png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_set_compression_level(png, 6);
  png_write_info(png, info);
  png_write_image(png, rows);
  png_write_end(png, NULL);
  png_destroy_write_struct(&png, &info);
  free(rows);
  *out = sink.buf;
  *out_len = sink.len;
  return 0;
}

/* datasets/media_image.c — JPEG/PNG/WebP decoding to RGB8 (as Pillow does), Pillow's bicubic
 * resampler and the ImageBind image transform. */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>
#include <jerror.h>
#include <png.h>
#include <webp/decode.h>
#include <webp/demux.h>

#include "datasets/media.h"

#define FATAL (NQ_ERR_FATAL)

static const char *dname(const char *name) { return name ? name : "<memory>"; }

void nq_media_image_deinit(nq_media_image_t *img) {
  if (!img) return;
  free(img->rgb);
  img->rgb = NULL;
  img->w = img->h = 0;
}

nq_media_image_fmt_t nq_media_image_sniff(const void *buf, size_t len) {
  const uint8_t *p = buf;
  if (!p) return NQ_MEDIA_IMG_UNKNOWN;
  if (len >= 3 && p[0] == 0xFF && p[1] == 0xD8 && p[2] == 0xFF) return NQ_MEDIA_IMG_JPEG;
  if (len >= 8 && memcmp(p, "\x89PNG\r\n\x1a\n", 8) == 0) return NQ_MEDIA_IMG_PNG;
  if (len >= 12 && memcmp(p, "RIFF", 4) == 0 && memcmp(p + 8, "WEBP", 4) == 0) return NQ_MEDIA_IMG_WEBP;
  return NQ_MEDIA_IMG_UNKNOWN;
}

static int check_dims(long long w, long long h, const char *fmt, const char *name, nq_err_t *err) {
  if (w <= 0 || h <= 0)
    return nq_err_set(err, NQ_EFORMAT, FATAL, "%s: %s: invalid image size %lldx%lld", dname(name), fmt, w, h);
  if (w * h > NQ_MEDIA_MAX_PIXELS)
    return nq_err_set(err, NQ_ELIMIT, FATAL, "%s: %s: image %lldx%lld exceeds the %lld-pixel limit", dname(name),
                      fmt, w, h, (long long)NQ_MEDIA_MAX_PIXELS);
  return 0;
}

/* ---- JPEG (libjpeg-turbo) ------------------------------------------------------------------- */

typedef struct jerr_mgr {
  struct jpeg_error_mgr pub;
  jmp_buf jb;
  char msg[JMSG_LENGTH_MAX];
} jerr_mgr_t;

static void jpeg_on_error(j_common_ptr cinfo) {
  jerr_mgr_t *m = (jerr_mgr_t *)cinfo->err;
  (*cinfo->err->format_message)(cinfo, m->msg);
  longjmp(m->jb, 1);
}

/* Warnings are non-fatal in libjpeg (and Pillow) except running out of data: libjpeg then pads
 * with grey, whereas Pillow refuses a truncated image. */
static void jpeg_on_message(j_common_ptr cinfo, int level) {
  jerr_mgr_t *m = (jerr_mgr_t *)cinfo->err;
  if (level < 0) {
    if (cinfo->err->msg_code == JWRN_JPEG_EOF) {
      (*cinfo->err->format_message)(cinfo, m->msg);
      longjmp(m->jb, 1);
    }
    cinfo->err->num_warnings++;
  }
}

static int decode_jpeg(const uint8_t *buf, size_t len, const char *name, nq_media_image_t *out, nq_err_t *err) {
  struct jpeg_decompress_struct cinfo;
  jerr_mgr_t jerr;
  /* volatile: modified between setjmp and longjmp. */
  uint8_t *volatile rgb = NULL;
  uint8_t *volatile row = NULL;
  memset(&cinfo, 0, sizeof cinfo);
  memset(&jerr, 0, sizeof jerr);
  cinfo.err = jpeg_std_error(&jerr.pub);
  jerr.pub.error_exit = jpeg_on_error;
  jerr.pub.emit_message = jpeg_on_message;
  if (setjmp(jerr.jb)) {
    jpeg_destroy_decompress(&cinfo);
    free(rgb);
    free(row);
    return nq_err_set(err, NQ_EFORMAT, FATAL, "%s: JPEG: %s", dname(name), jerr.msg);
  }
  jpeg_create_decompress(&cinfo);
  if (len > ULONG_MAX) len = ULONG_MAX;
  jpeg_mem_src(&cinfo, buf, (unsigned long)len);
  jpeg_read_header(&cinfo, TRUE);
  int rc = check_dims(cinfo.image_width, cinfo.image_height, "JPEG", name, err);
  if (rc) {
    jpeg_destroy_decompress(&cinfo);
    return rc;
  }
  int cmyk = 0, inverted = 0;
  switch (cinfo.jpeg_color_space) {
  case JCS_GRAYSCALE: cinfo.out_color_space = JCS_GRAYSCALE; break;
  case JCS_CMYK:
  case JCS_YCCK:
    cinfo.out_color_space = JCS_CMYK;
    cmyk = 1;
    inverted = cinfo.saw_Adobe_marker; /* Pillow: rawmode "CMYK;I" under Adobe conventions */
    break;
  default: cinfo.out_color_space = JCS_RGB; break;
  }
  cinfo.dct_method = JDCT_ISLOW;
  cinfo.do_fancy_upsampling = TRUE;
  jpeg_start_decompress(&cinfo);
  size_t w = cinfo.output_width, h = cinfo.output_height, nc = (size_t)cinfo.output_components;
  rgb = malloc(w * h * 3);
  row = malloc(w * nc);
  if (!rgb || !row) {
    jpeg_destroy_decompress(&cinfo);
    free(rgb);
    free(row);
    return nq_err_set(err, NQ_ENOMEM, 0, "%s: JPEG: out of memory for %zux%zu", dname(name), w, h);
  }
  while (cinfo.output_scanline < cinfo.output_height) {
    size_t y = cinfo.output_scanline;
    JSAMPROW rp = row;
    if (jpeg_read_scanlines(&cinfo, &rp, 1) != 1) break;
    uint8_t *o = rgb + y * w * 3;
    if (nc == 1) {
      for (size_t x = 0; x < w; x++) o[3 * x] = o[3 * x + 1] = o[3 * x + 2] = row[x];
    } else if (nc == 3) {
      memcpy(o, row, w * 3);
    } else if (cmyk && nc == 4) {
      /* Pillow Convert.c cmyk2rgb: nk = 255 - k; out = clip(nk - MULDIV255(c, nk)). */
      for (size_t x = 0; x < w; x++) {
        int v[4];
        for (int c = 0; c < 4; c++) v[c] = inverted ? 255 - row[4 * x + c] : row[4 * x + c];
        int nk = 255 - v[3];
        for (int c = 0; c < 3; c++) {
          int tmp = v[c] * nk + 128;
          int md = ((tmp >> 8) + tmp) >> 8;
          int r = nk - md;
          o[3 * x + c] = (uint8_t)(r < 0 ? 0 : r > 255 ? 255 : r);
        }
      }
    } else {
      jpeg_destroy_decompress(&cinfo);
      free(rgb);
      free(row);
      return nq_err_set(err, NQ_EUNSUPPORTED, FATAL, "%s: JPEG: unsupported %zu-component output", dname(name), nc);
    }
  }
  jpeg_finish_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
  free(row);
  out->w = (int)w;
  out->h = (int)h;
  out->rgb = rgb;
  return 0;
}

/* ---- PNG (libpng) ---------------------------------------------------------------------------- */

typedef struct png_src {
  const uint8_t *p;
  size_t len, pos;
  char msg[200];
} png_src_t;

static void png_on_read(png_structp png, png_bytep data, png_size_t n) {
  png_src_t *s = png_get_io_ptr(png);
  if (n > s->len - s->pos) {
    snprintf(s->msg, sizeof s->msg, "truncated (needed %zu bytes at offset %zu of %zu)", (size_t)n, s->pos, s->len);
    png_error(png, s->msg);
  }
  memcpy(data, s->p + s->pos, n);
  s->pos += n;
}

static void png_on_error(png_structp png, png_const_charp msg) {
  png_src_t *s = png_get_error_ptr(png);
  if (s && msg && msg != s->msg) snprintf(s->msg, sizeof s->msg, "%s", msg);
  png_longjmp(png, 1);
}

static void png_on_warning(png_structp png, png_const_charp msg) { (void)png, (void)msg; }

static int decode_png(const uint8_t *buf, size_t len, const char *name, nq_media_image_t *out, nq_err_t *err) {
  png_src_t src = {.p = buf, .len = len, .pos = 0, .msg = "error"};
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &src, png_on_error, png_on_warning);
  if (!png) return nq_err_set(err, NQ_ENOMEM, 0, "%s: PNG: out of memory", dname(name));
  png_infop info = png_create_info_struct(png);
  if (!info) {
    png_destroy_read_struct(&png, NULL, NULL);
    return nq_err_set(err, NQ_ENOMEM, 0, "%s: PNG: out of memory", dname(name));
  }
  uint8_t *volatile rgb = NULL;
  png_bytep *volatile rows = NULL;
  volatile int lim_rc = 0;
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_read_struct(&png, &info, NULL);
    free(rgb);
    free(rows);
    if (lim_rc) return lim_rc;
    return nq_err_set(err, NQ_EFORMAT, FATAL, "%s: PNG: %s", dname(name), src.msg);
  }
  png_set_read_fn(png, &src, png_on_read);
  png_set_user_limits(png, 1u << 20, 1u << 20);
  png_read_info(png, info);
  png_uint_32 w = png_get_image_width(png, info), h = png_get_image_height(png, info);
  int rc = check_dims(w, h, "PNG", name, err);
  if (rc) {
    lim_rc = rc;
    png_longjmp(png, 1);
  }
  int ct = png_get_color_type(png, info), bd = png_get_bit_depth(png, info);
  /* Pillow's convert('RGB'): palette colours, grey replicated, alpha dropped, 16 bit -> high byte. */
  if (ct == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if (ct == PNG_COLOR_TYPE_GRAY && bd < 8) png_set_expand_gray_1_2_4_to_8(png);
  if (bd == 16) png_set_strip_16(png);
  if (ct & PNG_COLOR_MASK_ALPHA) png_set_strip_alpha(png);
  if (ct == PNG_COLOR_TYPE_PALETTE && png_get_valid(png, info, PNG_INFO_tRNS)) png_set_strip_alpha(png);
  if (ct == PNG_COLOR_TYPE_GRAY || ct == PNG_COLOR_TYPE_GRAY_ALPHA) png_set_gray_to_rgb(png);
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  if (png_get_rowbytes(png, info) != (size_t)w * 3 || png_get_channels(png, info) != 3) {
    snprintf(src.msg, sizeof src.msg, "unexpected row layout after conversion (color type %d, depth %d)", ct, bd);
    png_error(png, src.msg);
  }
  rgb = malloc((size_t)w * h * 3);
  rows = malloc(sizeof(png_bytep) * h);
  if (!rgb || !rows) {
    snprintf(src.msg, sizeof src.msg, "out of memory for %ux%u", (unsigned)w, (unsigned)h);
    png_error(png, src.msg);
  }
  for (png_uint_32 y = 0; y < h; y++) rows[y] = rgb + (size_t)y * w * 3;
  png_read_image(png, rows);
  png_read_end(png, NULL);
  png_destroy_read_struct(&png, &info, NULL);
  free(rows);
  out->w = (int)w;
  out->h = (int)h;
  out->rgb = rgb;
  return 0;
}

/* ---- WebP (libwebp) -------------------------------------------------------------------------- */

static int decode_webp(const uint8_t *buf, size_t len, const char *name, nq_media_image_t *out, nq_err_t *err) {
  WebPBitstreamFeatures f;
  VP8StatusCode st = WebPGetFeatures(buf, len, &f);
  if (st != VP8_STATUS_OK)
    return nq_err_set(err, NQ_EFORMAT, FATAL, "%s: WebP: cannot read header (status %d)", dname(name), (int)st);
  int rc = check_dims(f.width, f.height, "WebP", name, err);
  if (rc) return rc;
  size_t n = (size_t)f.width * (size_t)f.height;
  uint8_t *rgb = malloc(n * 3);
  if (!rgb) return nq_err_set(err, NQ_ENOMEM, 0, "%s: WebP: out of memory", dname(name));
  if (!f.has_animation) {
    if (!WebPDecodeRGBInto(buf, len, rgb, n * 3, f.width * 3)) {
      free(rgb);
      return nq_err_set(err, NQ_EFORMAT, FATAL, "%s: WebP: corrupt or truncated image data", dname(name));
    }
    out->w = f.width;
    out->h = f.height;
    out->rgb = rgb;
    return 0;
  }
  /* Animated: the first frame on its canvas (what Pillow shows after open()). */
  WebPData data = {buf, len};
  WebPAnimDecoderOptions opt;
  WebPAnimDecoderOptionsInit(&opt);
  opt.color_mode = MODE_RGBA;
  opt.use_threads = 0;
  WebPAnimDecoder *dec = WebPAnimDecoderNew(&data, &opt);
  WebPAnimInfo ai;
  uint8_t *frame = NULL;
  int ts = 0;
  if (!dec || !WebPAnimDecoderGetInfo(dec, &ai) || (int)ai.canvas_width != f.width ||
      (int)ai.canvas_height != f.height || !WebPAnimDecoderGetNext(dec, &frame, &ts) || !frame) {
    if (dec) WebPAnimDecoderDelete(dec);
    free(rgb);
    return nq_err_set(err, NQ_EFORMAT, FATAL, "%s: WebP: corrupt or truncated animation", dname(name));
  }
  for (size_t i = 0; i < n; i++) memcpy(rgb + 3 * i, frame + 4 * i, 3);
  WebPAnimDecoderDelete(dec);
  out->w = f.width;
  out->h = f.height;
  out->rgb = rgb;
  return 0;
}

int nq_media_image_decode(const void *buf, size_t len, const char *name, nq_media_image_t *out, nq_err_t *err) {
  if (!out) return nq_err_set(err, NQ_EINVAL, 0, "%s: no output image", dname(name));
  memset(out, 0, sizeof *out);
  if (!buf || len == 0) return nq_err_set(err, NQ_EFORMAT, FATAL, "%s: empty image file", dname(name));
  switch (nq_media_image_sniff(buf, len)) {
  case NQ_MEDIA_IMG_JPEG: return decode_jpeg(buf, len, name, out, err);
  case NQ_MEDIA_IMG_PNG: return decode_png(buf, len, name, out, err);
  case NQ_MEDIA_IMG_WEBP: return decode_webp(buf, len, name, out, err);
  default: break;
  }
  const uint8_t *p = buf;
  return nq_err_set(err, NQ_EUNSUPPORTED, FATAL,
                    "%s: not a JPEG, PNG or WebP image (starts with %02x %02x %02x %02x, %zu bytes)", dname(name),
                    p[0], len > 1 ? p[1] : 0, len > 2 ? p[2] : 0, len > 3 ? p[3] : 0, len);
}

int nq_media_read_file(const char *path, void **buf, size_t *len, nq_err_t *err) {
  *buf = NULL;
  *len = 0;
  FILE *f = fopen(path, "rb");
  if (!f) return nq_err_set(err, errno == ENOENT ? NQ_ENOENT : NQ_EIO, FATAL, "%s: %s", path, strerror(errno));
  if (fseek(f, 0, SEEK_END) != 0) goto ioerr;
  long sz = ftell(f);
  if (sz < 0) goto ioerr;
  if ((unsigned long long)sz > (4ULL << 30)) {
    fclose(f);
    return nq_err_set(err, NQ_ELIMIT, FATAL, "%s: file too large (%ld bytes)", path, sz);
  }
  if (fseek(f, 0, SEEK_SET) != 0) goto ioerr;
  uint8_t *b = malloc(sz > 0 ? (size_t)sz : 1);
  if (!b) {
    fclose(f);
    return nq_err_set(err, NQ_ENOMEM, 0, "%s: out of memory (%ld bytes)", path, sz);
  }
  if (sz > 0 && fread(b, 1, (size_t)sz, f) != (size_t)sz) {
    free(b);
    goto ioerr;
  }
  fclose(f);
  *buf = b;
  *len = (size_t)sz;
  return 0;
ioerr:
  fclose(f);
  return nq_err_set(err, NQ_EIO, NQ_ERR_RETRIABLE, "%s: read error", path);
}

int nq_media_image_load(const char *path, nq_media_image_t *out, nq_err_t *err) {
  void *buf;
  size_t len;
  memset(out, 0, sizeof *out);
  int rc = nq_media_read_file(path, &buf, &len, err);
  if (rc) return rc;
  rc = nq_media_image_decode(buf, len, path, out, err);
  free(buf);
  return rc;
}

/* ---- Pillow bicubic resampler (Resample.c, Pillow 9.4) --------------------------------------- */

#define PIL_PRECISION_BITS (32 - 8 - 2)

static double pil_bicubic(double x) {
  const double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

/* Coefficients for one axis: bounds[2*i] = first input index, bounds[2*i+1] = tap count; kk fixed point. */
static int pil_coeffs(int in_size, int out_size, int **bounds_out, int32_t **kk_out) {
  const float in0 = 0.0f, in1 = (float)in_size;
  double scale = (double)(in1 - in0) / out_size, filterscale = scale;
  if (filterscale < 1.0) filterscale = 1.0;
  double support = 2.0 * filterscale;
  int ksize = (int)ceil(support) * 2 + 1;
  double *pre = malloc((size_t)out_size * ksize * sizeof(double));
  int32_t *kk = malloc((size_t)out_size * ksize * sizeof(int32_t));
  int *bounds = malloc((size_t)out_size * 2 * sizeof(int));
  if (!pre || !kk || !bounds) {
    free(pre), free(kk), free(bounds);
    return -1;
  }
  for (int xx = 0; xx < out_size; xx++) {
    double center = in0 + (xx + 0.5) * scale, ww = 0.0, ss = 1.0 / filterscale;
    int xmin = (int)(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = (int)(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double *k = &pre[(size_t)xx * ksize];
    int x;
    for (x = 0; x < xmax; x++) {
      double w = pil_bicubic((x + xmin - center + 0.5) * ss);
      k[x] = w;
      ww += w;
    }
    for (x = 0; x < xmax; x++)
      if (ww != 0.0) k[x] /= ww;
    for (; x < ksize; x++) k[x] = 0;
    bounds[2 * xx] = xmin;
    bounds[2 * xx + 1] = xmax;
  }
  for (size_t i = 0; i < (size_t)out_size * ksize; i++)
    kk[i] = pre[i] < 0 ? (int32_t)(-0.5 + pre[i] * (1 << PIL_PRECISION_BITS))
                       : (int32_t)(0.5 + pre[i] * (1 << PIL_PRECISION_BITS));
  free(pre);
  *bounds_out = bounds;
  *kk_out = kk;
  return ksize;
}

static inline uint8_t pil_clip8(int64_t v) {
  if (v >= ((int64_t)1 << PIL_PRECISION_BITS << 8)) return 255;
  if (v <= 0) return 0;
  return (uint8_t)(v >> PIL_PRECISION_BITS);
}

int nq_media_image_resize_bicubic(const nq_media_image_t *in, int ow, int oh, nq_media_image_t *out, nq_err_t *err) {
  memset(out, 0, sizeof *out);
  if (!in || !in->rgb || in->w <= 0 || in->h <= 0 || ow <= 0 || oh <= 0 || (long long)ow * oh > NQ_MEDIA_MAX_PIXELS)
    return nq_err_set(err, NQ_EINVAL, 0, "resize: bad sizes %dx%d -> %dx%d", in ? in->w : 0, in ? in->h : 0, ow, oh);
  const int iw = in->w, ih = in->h;
  uint8_t *dst = malloc((size_t)ow * oh * 3);
  if (!dst) return nq_err_set(err, NQ_ENOMEM, 0, "resize: out of memory");
  if (ow == iw && oh == ih) { /* Pillow copies */
    memcpy(dst, in->rgb, (size_t)iw * ih * 3);
    out->w = ow, out->h = oh, out->rgb = dst;
    return 0;
  }
  int *bh = NULL, *bv = NULL;
  int32_t *kh = NULL, *kv = NULL;
  int ksh = pil_coeffs(iw, ow, &bh, &kh), ksv = pil_coeffs(ih, oh, &bv, &kv);
  uint8_t *tmp = NULL;
  if (ksh < 0 || ksv < 0) goto oom;
  const int need_h = ow != iw, need_v = oh != ih;
  const uint8_t *src = in->rgb;
  int sw = iw, sh = ih;
  if (need_h) {
    /* Only the rows the vertical pass reads. */
    int y0 = bv[0], y1 = bv[2 * oh - 2] + bv[2 * oh - 1];
    if (!need_v) y0 = 0, y1 = ih;
    for (int i = 0; i < oh; i++) bv[2 * i] -= y0;
    int th = y1 - y0;
    tmp = malloc((size_t)ow * th * 3);
    if (!tmp) goto oom;
    for (int y = 0; y < th; y++) {
      const uint8_t *row = src + (size_t)(y + y0) * iw * 3;
      uint8_t *o = tmp + (size_t)y * ow * 3;
      for (int xx = 0; xx < ow; xx++) {
        int xmin = bh[2 * xx], xmax = bh[2 * xx + 1];
        const int32_t *k = &kh[(size_t)xx * ksh];
        int64_t s0 = 1 << (PIL_PRECISION_BITS - 1), s1 = s0, s2 = s0;
        for (int x = 0; x < xmax; x++) {
          const uint8_t *p = row + (size_t)(x + xmin) * 3;
          s0 += p[0] * (int64_t)k[x];
          s1 += p[1] * (int64_t)k[x];
          s2 += p[2] * (int64_t)k[x];
        }
        o[3 * xx] = pil_clip8(s0), o[3 * xx + 1] = pil_clip8(s1), o[3 * xx + 2] = pil_clip8(s2);
      }
    }
    src = tmp, sw = ow, sh = th;
  }
  if (need_v) {
    for (int yy = 0; yy < oh; yy++) {
      int ymin = bv[2 * yy], ymax = bv[2 * yy + 1];
      const int32_t *k = &kv[(size_t)yy * ksv];
      uint8_t *o = dst + (size_t)yy * sw * 3;
      for (int xx = 0; xx < sw; xx++) {
        int64_t s0 = 1 << (PIL_PRECISION_BITS - 1), s1 = s0, s2 = s0;
        for (int y = 0; y < ymax; y++) {
          const uint8_t *p = src + ((size_t)(y + ymin) * sw + xx) * 3;
          s0 += p[0] * (int64_t)k[y];
          s1 += p[1] * (int64_t)k[y];
          s2 += p[2] * (int64_t)k[y];
        }
        o[3 * xx] = pil_clip8(s0), o[3 * xx + 1] = pil_clip8(s1), o[3 * xx + 2] = pil_clip8(s2);
      }
    }
  } else {
    memcpy(dst, src, (size_t)sw * sh * 3);
  }
  free(bh), free(bv), free(kh), free(kv), free(tmp);
  out->w = ow, out->h = oh, out->rgb = dst;
  return 0;
oom:
  free(bh), free(bv), free(kh), free(kv), free(tmp), free(dst);
  return nq_err_set(err, NQ_ENOMEM, 0, "resize: out of memory");
}

/* ---- ImageBind image transform --------------------------------------------------------------- */

static const float clip_mean[3] = {0.48145466f, 0.4578275f, 0.40821073f};
static const float clip_std[3] = {0.26862954f, 0.26130258f, 0.27577711f};

/* Python int(round(v / 2.0)) for integer v >= 0: half to even. */
static int round_half_even_div2(int v) {
  int q = v / 2;
  if (v % 2 == 0) return q;
  return (q % 2 == 0) ? q : q + 1;
}

int nq_media_image_preprocess(const nq_media_image_t *img, float *out, nq_err_t *err) {
  if (!img || !img->rgb || img->w <= 0 || img->h <= 0)
    return nq_err_set(err, NQ_EINVAL, 0, "image preprocess: empty image");
  const int S = NQ_MEDIA_IMG_SIZE, w = img->w, h = img->h;
  /* torchvision Resize(224) on PIL: short side 224, long side int(224 * long / short). */
  int nw, nh;
  if (w <= h) {
    nw = S;
    nh = (int)((double)S * h / w);
  } else {
    nh = S;
    nw = (int)((double)S * w / h);
  }
  nq_media_image_t r;
  int rc = nq_media_image_resize_bicubic(img, nw, nh, &r, err);
  if (rc) return rc;
  int top = round_half_even_div2(nh - S), left = round_half_even_div2(nw - S);
  for (int c = 0; c < 3; c++) {
    float *o = out + (size_t)c * S * S;
    for (int y = 0; y < S; y++) {
      const uint8_t *row = r.rgb + ((size_t)(y + top) * nw + left) * 3 + c;
      for (int x = 0; x < S; x++) {
        float v = (float)row[3 * x] / 255.0f;
        o[(size_t)y * S + x] = (v - clip_mean[c]) / clip_std[c];
      }
    }
  }
  nq_media_image_deinit(&r);
  return 0;
}

int nq_media_image_preprocess_buf(const void *buf, size_t len, const char *name, float *out, nq_err_t *err) {
  nq_media_image_t img;
  int rc = nq_media_image_decode(buf, len, name, &img, err);
  if (rc) return rc;
  rc = nq_media_image_preprocess(&img, out, err);
  nq_media_image_deinit(&img);
  if (rc) nq_err_prefix(err, "%s", dname(name));
  return rc;
}

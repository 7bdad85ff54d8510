/* tests/unit/test_media.c — media decoding + ImageBind preprocessing against the golden cases in
 * NQ_SHARED_DIR/golden/imagebind (image-preprocess-{png,jpeg}, audio-preprocess, video-preprocess),
 * plus corrupt/truncated inputs of every format. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <png.h>
#include <unistd.h>
#include <webp/encode.h>

#include "compute/core/dtype.h"
#include "compute/io/safetensors.h"
#include "datasets/media.h"

#define GOLD NQ_SHARED_DIR "/golden/imagebind/"

typedef struct cmp {
  double rel_l2, max_abs;
} cmp_t;

/* Golden README: ||out - exp||_2 / max(||exp||_2, 1e-12) and max|out - exp|. */
static cmp_t compare_expected(const char *case_dir, const char *tensor, const float *out, size_t n, int ndim,
                              const int64_t *shape) {
  char path[512];
  snprintf(path, sizeof path, GOLD "%s/expected.safetensors", case_dir);
  nq_st_file_t *f = NULL;
  nq_err_t err = {0};
  cr_assert_eq(nq_st_open(path, &f, &err), 0, "%s", err.msg);
  const nq_st_tensor_t *t = nq_st_find(f, tensor);
  cr_assert_not_null(t, "%s: no tensor %s", path, tensor);
  cr_assert_eq(t->ndim, ndim, "%s: ndim %d", tensor, t->ndim);
  for (int i = 0; i < ndim; i++) cr_assert_eq(t->shape[i], shape[i], "%s: dim %d is %lld", tensor, i, (long long)t->shape[i]);
  cr_assert_eq((size_t)nq_st_numel(t), n);
  float *exp = malloc(n * sizeof(float));
  cr_assert_not_null(exp);
  cr_assert_eq(nq_dtype_to_f32(t->dtype, t->data, exp, n), 0);
  double d2 = 0, e2 = 0, mx = 0;
  for (size_t i = 0; i < n; i++) {
    double d = (double)out[i] - (double)exp[i];
    d2 += d * d;
    e2 += (double)exp[i] * exp[i];
    if (fabs(d) > mx || d != d) mx = d != d ? INFINITY : fabs(d);
  }
  free(exp);
  nq_st_close(f);
  cmp_t c = {sqrt(d2) / fmax(sqrt(e2), 1e-12), mx};
  fprintf(stderr, "[media] %-22s %-7s rel_l2 %.3e  max_abs %.3e\n", case_dir, tensor, c.rel_l2, c.max_abs);
  return c;
}

/* ---- golden preprocess cases ------------------------------------------------------------------ */

static void run_image_case(const char *case_dir, const char *file, double tol_rel, double tol_abs) {
  char path[512];
  snprintf(path, sizeof path, GOLD "%s/%s", case_dir, file);
  nq_media_image_t img;
  nq_err_t err = {0};
  cr_assert_eq(nq_media_image_load(path, &img, &err), 0, "%s", err.msg);
  cr_assert_eq(img.w, 320);
  cr_assert_eq(img.h, 240);
  float *out = malloc(NQ_MEDIA_IMAGE_NUMEL * sizeof(float));
  cr_assert_eq(nq_media_image_preprocess(&img, out, &err), 0, "%s", err.msg);
  int64_t shape[4] = {1, 3, 224, 224};
  cmp_t c = compare_expected(case_dir, "pixels", out, NQ_MEDIA_IMAGE_NUMEL, 4, shape);
  cr_expect_leq(c.rel_l2, tol_rel, "%s rel_l2 %g", case_dir, c.rel_l2);
  cr_expect_leq(c.max_abs, tol_abs, "%s max_abs %g", case_dir, c.max_abs);
  free(out);
  nq_media_image_deinit(&img);
}

/* Tolerances from case.json; the exact Pillow port is expected to land at ~3e-7, so also hold it
 * to a much tighter bound than the case (a float resampler would pass the case but not this). */
Test(media, golden_image_png) { run_image_case("image-preprocess-png", "synthetic_320x240.png", 1e-5, 1e-5); }
Test(media, golden_image_jpeg) { run_image_case("image-preprocess-jpeg", "synthetic_320x240.jpg", 1e-5, 1e-5); }

Test(media, golden_audio, .timeout = 60) {
  nq_media_audio_t a;
  nq_err_t err = {0};
  cr_assert_eq(nq_media_audio_load(GOLD "audio-preprocess/synthetic_44100Hz_4.0s.wav", &a, &err), 0, "%s", err.msg);
  cr_assert_eq(a.rate, 44100);
  cr_assert_eq(a.channels, 1);
  cr_assert_eq(a.frames, 176400);
  cr_assert_eq(nq_media_resample_length(a.frames, 44100, 16000), 64000);
  int64_t b, e;
  const int64_t want[3][2] = {{0, 32000}, {16000, 48000}, {32000, 64000}};
  for (int k = 0; k < 3; k++) {
    nq_media_audio_clip_range(64000, 16000, k, 3, &b, &e);
    cr_expect_eq(b, want[k][0]);
    cr_expect_eq(e, want[k][1]);
  }
  cr_assert_eq(nq_media_fbank_frames(32000), 198);
  float *out = malloc(NQ_MEDIA_AUDIO_NUMEL * sizeof(float));
  cr_assert_eq(nq_media_audio_preprocess(&a, out, "wav", &err), 0, "%s", err.msg);
  int64_t shape[4] = {3, 1, 128, 204};
  cmp_t c = compare_expected("audio-preprocess", "fbank", out, NQ_MEDIA_AUDIO_NUMEL, 4, shape);
  cr_expect_leq(c.rel_l2, 1e-4);
  cr_expect_leq(c.max_abs, 2e-3);
  free(out);
  nq_media_audio_deinit(&a);
}

Test(media, golden_video_indices_and_frames, .timeout = 60) {
  void *buf;
  size_t len;
  nq_err_t err = {0};
  cr_assert_eq(nq_media_read_file(GOLD "video-preprocess/synthetic_320x240_10fps_3s.mp4", &buf, &len, &err), 0);
  nq_media_video_info_t info;
  cr_assert_eq(nq_media_video_probe(buf, len, "mp4", &info, &err), 0, "%s", err.msg);
  cr_expect_eq(info.n_frames, 30);
  cr_expect_eq(info.w, 320);
  cr_expect_eq(info.h, 240);
  cr_expect_float_eq(info.fps, 10.0, 1e-12);
  int64_t idx[10];
  cr_assert_eq(nq_media_video_frame_indices(&info, idx, "mp4", &err), 0, "%s", err.msg);
  const int64_t want[10] = {0, 19, 3, 22, 5, 24, 8, 27, 10, 29}; /* case notes */
  for (int i = 0; i < 10; i++) cr_expect_eq(idx[i], want[i], "idx[%d] = %lld", i, (long long)idx[i]);
  /* Decoded RGB frames against the reference's decoded_frames/frame_NNN.png. */
  nq_media_image_t fr[10];
  cr_assert_eq(nq_media_video_decode_frames(buf, len, "mp4", want, 10, fr, NULL, &err), 0, "%s", err.msg);
  for (int i = 0; i < 10; i++) {
    char path[512];
    snprintf(path, sizeof path, GOLD "video-preprocess/decoded_frames/frame_%03lld.png", (long long)want[i]);
    nq_media_image_t ref;
    cr_assert_eq(nq_media_image_load(path, &ref, &err), 0, "%s", err.msg);
    cr_assert_eq(ref.w, fr[i].w);
    cr_assert_eq(ref.h, fr[i].h);
    int mx = 0;
    long long sum = 0;
    for (size_t p = 0; p < (size_t)ref.w * ref.h * 3; p++) {
      int d = abs((int)ref.rgb[p] - (int)fr[i].rgb[p]);
      if (d > mx) mx = d;
      sum += d;
    }
    if (i == 0) fprintf(stderr, "[media] frame %lld vs decoded_frames: max %d levels, mean %.4f\n",
                        (long long)want[i], mx, (double)sum / ((double)ref.w * ref.h * 3));
    /* The notes allow ~1 level of SIMD drift between swscale builds. */
    cr_expect_leq(mx, 1, "frame %lld differs by %d levels", (long long)want[i], mx);
    nq_media_image_deinit(&ref);
    nq_media_image_deinit(&fr[i]);
  }
  free(buf);
}

Test(media, golden_video, .timeout = 120) {
  void *buf;
  size_t len;
  nq_err_t err = {0};
  cr_assert_eq(nq_media_read_file(GOLD "video-preprocess/synthetic_320x240_10fps_3s.mp4", &buf, &len, &err), 0);
  float *out = malloc(NQ_MEDIA_VIDEO_NUMEL * sizeof(float));
  cr_assert_not_null(out);
  cr_assert_eq(nq_media_video_preprocess_buf(buf, len, "mp4", out, &err), 0, "%s", err.msg);
  int64_t shape[5] = {15, 3, 2, 224, 224};
  cmp_t c = compare_expected("video-preprocess", "video", out, NQ_MEDIA_VIDEO_NUMEL, 5, shape);
  cr_expect_leq(c.rel_l2, 1.2e-2);
  cr_expect_leq(c.max_abs, 0.07);
  free(out);
  free(buf);
}

/* ---- clip sampler edge cases (pytorchvideo semantics, worked by hand) --------------------------- */

Test(media, clip_ranges) {
  int64_t b, e;
  /* 1.5 s of audio: duration < 2 -> every clip starts at 0, end clamps later to the length. */
  nq_media_audio_clip_range(24000, 16000, 2, 3, &b, &e);
  cr_expect_eq(b, 0);
  cr_expect_eq(e, 32000);
  /* 10 s: starts 0, 4, 8 s. */
  nq_media_audio_clip_range(160000, 16000, 1, 3, &b, &e);
  cr_expect_eq(b, 64000);
  nq_media_audio_clip_range(160000, 16000, 2, 3, &b, &e);
  cr_expect_eq(b, 128000);
  /* 5.5 s: start_1 = 1.75 s -> 28000. */
  nq_media_audio_clip_range(88000, 16000, 1, 3, &b, &e);
  cr_expect_eq(b, 28000);
  cr_expect_eq(e, 60000);
  /* video 30 fps, 90 frames (3 s): clip 1 starts 0.25 s -> ceil(7.5) = 8, ends ceil(67.5) = 68 */
  nq_media_video_clip_range(90, 30.0, 1, 5, &b, &e);
  cr_expect_eq(b, 8);
  cr_expect_eq(e, 68);
  /* 1 s video at 10 fps: all clips [0, 10) */
  nq_media_video_clip_range(10, 10.0, 4, 5, &b, &e);
  cr_expect_eq(b, 0);
  cr_expect_eq(e, 10);
}

/* ---- decoders on synthetic files (values fixed by the test, not by our code) -------------------- */

typedef struct membuf {
  uint8_t *p;
  size_t n, cap;
} membuf_t;

static void png_mem_write(png_structp png, png_bytep data, png_size_t n) {
  membuf_t *m = png_get_io_ptr(png);
  if (m->n + n > m->cap) {
    m->cap = (m->n + n) * 2;
    m->p = realloc(m->p, m->cap);
  }
  memcpy(m->p + m->n, data, n);
  m->n += n;
}
static void png_mem_flush(png_structp png) { (void)png; }

/* Encode a w x h PNG with libpng from raw rows (row bytes as given). */
static membuf_t make_png(int w, int h, int color_type, int depth, const uint8_t *raw, const png_color *pal, int npal,
                         int interlace) {
  membuf_t m = {0};
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
  png_infop info = png_create_info_struct(png);
  cr_assert(!setjmp(png_jmpbuf(png)));
  png_set_write_fn(png, &m, png_mem_write, png_mem_flush);
  png_set_IHDR(png, info, w, h, depth, color_type, interlace ? PNG_INTERLACE_ADAM7 : PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  if (pal) png_set_PLTE(png, info, pal, npal);
  png_write_info(png, info);
  int ch = color_type == PNG_COLOR_TYPE_RGB ? 3 : color_type == PNG_COLOR_TYPE_RGBA ? 4
           : color_type == PNG_COLOR_TYPE_GRAY_ALPHA ? 2 : 1;
  size_t rb = ((size_t)w * ch * depth + 7) / 8;
  png_bytep *rows = malloc(sizeof(png_bytep) * h);
  for (int y = 0; y < h; y++) rows[y] = (png_bytep)raw + (size_t)y * rb;
  png_write_image(png, rows);
  png_write_end(png, NULL);
  png_destroy_write_struct(&png, &info);
  free(rows);
  return m;
}

Test(media, png_color_types) {
  nq_err_t err = {0};
  nq_media_image_t img;
  /* 16-bit RGB -> high byte (Pillow RGB;16B) */
  const uint8_t rgb16[2 * 6] = {0x12, 0xff, 0x34, 0x00, 0x56, 0x80, 0xfe, 0x01, 0x00, 0xff, 0x7f, 0x7f};
  membuf_t m = make_png(2, 1, PNG_COLOR_TYPE_RGB, 16, rgb16, NULL, 0, 0);
  cr_assert_eq(nq_media_image_decode(m.p, m.n, "rgb16.png", &img, &err), 0, "%s", err.msg);
  const uint8_t want16[6] = {0x12, 0x34, 0x56, 0xfe, 0x00, 0x7f};
  cr_expect_arr_eq(img.rgb, want16, 6);
  nq_media_image_deinit(&img);
  free(m.p);
  /* palette, 4-bit */
  png_color pal[3] = {{10, 20, 30}, {40, 50, 60}, {200, 100, 0}};
  const uint8_t idx4[2] = {0x12, 0x00}; /* pixels 1,2,0,0 (3 wide -> 2 bytes) */
  m = make_png(3, 1, PNG_COLOR_TYPE_PALETTE, 4, idx4, pal, 3, 0);
  cr_assert_eq(nq_media_image_decode(m.p, m.n, "pal.png", &img, &err), 0, "%s", err.msg);
  const uint8_t wantp[9] = {40, 50, 60, 200, 100, 0, 10, 20, 30};
  cr_expect_arr_eq(img.rgb, wantp, 9);
  nq_media_image_deinit(&img);
  free(m.p);
  /* 1-bit grey -> 0/255 replicated */
  const uint8_t g1[1] = {0xA0}; /* 1,0,1 */
  m = make_png(3, 1, PNG_COLOR_TYPE_GRAY, 1, g1, NULL, 0, 0);
  cr_assert_eq(nq_media_image_decode(m.p, m.n, "g1.png", &img, &err), 0, "%s", err.msg);
  const uint8_t wantg[9] = {255, 255, 255, 0, 0, 0, 255, 255, 255};
  cr_expect_arr_eq(img.rgb, wantg, 9);
  nq_media_image_deinit(&img);
  free(m.p);
  /* grey+alpha and RGBA: alpha dropped without compositing; interlaced */
  const uint8_t ga[4] = {77, 0, 200, 255};
  m = make_png(2, 1, PNG_COLOR_TYPE_GRAY_ALPHA, 8, ga, NULL, 0, 1);
  cr_assert_eq(nq_media_image_decode(m.p, m.n, "ga.png", &img, &err), 0, "%s", err.msg);
  const uint8_t wantga[6] = {77, 77, 77, 200, 200, 200};
  cr_expect_arr_eq(img.rgb, wantga, 6);
  nq_media_image_deinit(&img);
  free(m.p);
  uint8_t rgba[5 * 5 * 4];
  for (int i = 0; i < 100; i++) rgba[i] = (uint8_t)(i * 7 + 3);
  m = make_png(5, 5, PNG_COLOR_TYPE_RGBA, 8, rgba, NULL, 0, 1);
  cr_assert_eq(nq_media_image_decode(m.p, m.n, "rgba.png", &img, &err), 0, "%s", err.msg);
  for (int p = 0; p < 25; p++)
    for (int c = 0; c < 3; c++) cr_expect_eq(img.rgb[3 * p + c], rgba[4 * p + c]);
  nq_media_image_deinit(&img);
  free(m.p);
}

Test(media, webp_lossless_roundtrip) {
  uint8_t rgb[7 * 5 * 3];
  for (int i = 0; i < (int)sizeof rgb; i++) rgb[i] = (uint8_t)(i * 37 + 11);
  uint8_t *enc = NULL;
  size_t n = WebPEncodeLosslessRGB(rgb, 7, 5, 7 * 3, &enc);
  cr_assert_gt(n, 0);
  nq_media_image_t img;
  nq_err_t err = {0};
  cr_assert_eq(nq_media_image_sniff(enc, n), NQ_MEDIA_IMG_WEBP);
  cr_assert_eq(nq_media_image_decode(enc, n, "x.webp", &img, &err), 0, "%s", err.msg);
  cr_assert_eq(img.w, 7);
  cr_assert_eq(img.h, 5);
  cr_expect_arr_eq(img.rgb, rgb, sizeof rgb);
  nq_media_image_deinit(&img);
  /* truncated */
  int rc = nq_media_image_decode(enc, n / 2, "half.webp", &img, &err);
  cr_expect_lt(rc, 0);
  cr_expect(nq_err_is_fatal(&err));
  cr_expect(strstr(err.msg, "half.webp") != NULL, "%s", err.msg);
  WebPFree(enc);
}

Test(media, resize_constant_and_identity) {
  nq_media_image_t in = {.w = 37, .h = 23}, out;
  nq_err_t err = {0};
  in.rgb = malloc(37 * 23 * 3);
  for (int i = 0; i < 37 * 23 * 3; i++) in.rgb[i] = (uint8_t)(i % 3 == 0 ? 17 : i % 3 == 1 ? 128 : 250);
  cr_assert_eq(nq_media_image_resize_bicubic(&in, 11, 50, &out, &err), 0);
  for (int i = 0; i < 11 * 50 * 3; i++) cr_assert_eq(out.rgb[i], in.rgb[i % 3], "at %d", i);
  nq_media_image_deinit(&out);
  cr_assert_eq(nq_media_image_resize_bicubic(&in, 37, 23, &out, &err), 0);
  cr_expect_arr_eq(out.rgb, in.rgb, 37 * 23 * 3);
  nq_media_image_deinit(&out);
  nq_media_image_deinit(&in);
}

/* ---- corrupt / truncated media ------------------------------------------------------------------ */

static void *slurp(const char *path, size_t *len) {
  void *buf;
  nq_err_t err = {0};
  cr_assert_eq(nq_media_read_file(path, &buf, len, &err), 0, "%s", err.msg);
  return buf;
}

static void expect_fatal(int rc, const nq_err_t *err, const char *name) {
  cr_expect_lt(rc, 0, "%s: decoding should fail", name);
  cr_expect(nq_err_is_fatal(err), "%s: error should be fatal (%s)", name, err->msg);
  cr_expect(strstr(err->msg, name) != NULL, "error does not name the file: %s", err->msg);
  fprintf(stderr, "[media] %s -> %s\n", name, err->msg);
}

static void image_corruptions(const char *path, const char *tag) {
  size_t len;
  uint8_t *buf = slurp(path, &len);
  nq_media_image_t img;
  nq_err_t err;
  char name[64];
  /* Truncations at several points, each in an exact-size heap buffer so ASan sees overreads. */
  const double fr[] = {0.0, 0.001, 0.05, 0.5, 0.9, 0.999};
  for (size_t i = 0; i < sizeof fr / sizeof fr[0]; i++) {
    size_t n = (size_t)(len * fr[i]);
    if (n == 0) n = 1;
    uint8_t *cut = malloc(n);
    memcpy(cut, buf, n);
    snprintf(name, sizeof name, "%s-trunc-%zu", tag, n);
    nq_err_clear(&err);
    int rc = nq_media_image_decode(cut, n, name, &img, &err);
    expect_fatal(rc, &err, name);
    if (rc == 0) nq_media_image_deinit(&img);
    free(cut);
  }
  /* Garbage after a valid signature. */
  uint8_t *g = malloc(len);
  memcpy(g, buf, 16);
  for (size_t i = 16; i < len; i++) g[i] = (uint8_t)((i * 2654435761u) >> 13);
  snprintf(name, sizeof name, "%s-garbage", tag);
  nq_err_clear(&err);
  int rc = nq_media_image_decode(g, len, name, &img, &err);
  expect_fatal(rc, &err, name);
  if (rc == 0) nq_media_image_deinit(&img);
  free(g);
  free(buf);
}

Test(media, corrupt_jpeg) { image_corruptions(GOLD "image-preprocess-jpeg/synthetic_320x240.jpg", "bad.jpg"); }
Test(media, corrupt_png) { image_corruptions(GOLD "image-preprocess-png/synthetic_320x240.png", "bad.png"); }

static uint32_t crc32_ieee(const uint8_t *p, size_t n) {
  uint32_t c = 0xffffffffu;
  for (size_t i = 0; i < n; i++) {
    c ^= p[i];
    for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1u)));
  }
  return c ^ 0xffffffffu;
}

Test(media, corrupt_unknown_and_empty) {
  nq_media_image_t img;
  nq_err_t err = {0};
  expect_fatal(nq_media_image_decode("hello world", 11, "note.txt", &img, &err), &err, "note.txt");
  nq_err_clear(&err);
  expect_fatal(nq_media_image_decode("", 0, "empty.jpg", &img, &err), &err, "empty.jpg");
  /* PNG header claiming 2^30 x 2^30 pixels: refused before allocating. */
  uint8_t hdr[33] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n', 0, 0, 0, 13, 'I', 'H', 'D', 'R',
                     0x40, 0, 0, 0, 0x40, 0, 0, 0, 8, 2, 0, 0, 0};
  uint32_t crc = crc32_ieee(hdr + 12, 17);
  hdr[29] = crc >> 24, hdr[30] = crc >> 16, hdr[31] = crc >> 8, hdr[32] = crc;
  nq_err_clear(&err);
  expect_fatal(nq_media_image_decode(hdr, sizeof hdr, "huge.png", &img, &err), &err, "huge.png");
}

Test(media, corrupt_wav) {
  size_t len;
  uint8_t *buf = slurp(GOLD "audio-preprocess/synthetic_44100Hz_4.0s.wav", &len);
  nq_media_audio_t a;
  nq_err_t err = {0};
  const size_t cuts[] = {1, 12, 30, 44, 1000, len / 2};
  char name[64];
  for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
    uint8_t *cut = malloc(cuts[i]);
    memcpy(cut, buf, cuts[i]);
    snprintf(name, sizeof name, "bad-trunc-%zu.wav", cuts[i]);
    nq_err_clear(&err);
    int rc = nq_media_audio_decode(cut, cuts[i], name, &a, &err);
    expect_fatal(rc, &err, name);
    if (rc == 0) nq_media_audio_deinit(&a);
    free(cut);
  }
  uint8_t *g = malloc(len);
  for (size_t i = 0; i < len; i++) g[i] = (uint8_t)((i * 2654435761u) >> 11);
  nq_err_clear(&err);
  expect_fatal(nq_media_audio_decode(g, len, "noise.wav", &a, &err), &err, "noise.wav");
  free(g);
  /* A valid but very short file (100 samples at 44.1 kHz -> 37 samples at 16 kHz): clear error. */
  uint8_t *shortw = malloc(44 + 200);
  memcpy(shortw, buf, 44);
  memset(shortw + 44, 0, 200);
  uint32_t sz = 200, riff = 36 + 200;
  memcpy(shortw + 40, &sz, 4);
  memcpy(shortw + 4, &riff, 4);
  cr_assert_eq(nq_media_audio_decode(shortw, 244, "short.wav", &a, &err), 0, "%s", err.msg);
  cr_assert_eq(a.frames, 100);
  float *out = malloc(NQ_MEDIA_AUDIO_NUMEL * sizeof(float));
  nq_err_clear(&err);
  expect_fatal(nq_media_audio_preprocess(&a, out, "short.wav", &err), &err, "short.wav");
  free(out);
  nq_media_audio_deinit(&a);
  free(shortw);
  free(buf);
}

Test(media, corrupt_mp4, .timeout = 60) {
  size_t len;
  uint8_t *buf = slurp(GOLD "video-preprocess/synthetic_320x240_10fps_3s.mp4", &len);
  float *out = malloc(NQ_MEDIA_VIDEO_NUMEL * sizeof(float));
  nq_err_t err;
  char name[64];
  const double fr[] = {0.0, 0.01, 0.3, 0.6, 0.95};
  for (size_t i = 0; i < sizeof fr / sizeof fr[0]; i++) {
    size_t n = (size_t)(len * fr[i]);
    if (n == 0) n = 1;
    uint8_t *cut = malloc(n);
    memcpy(cut, buf, n);
    snprintf(name, sizeof name, "bad-trunc-%zu.mp4", n);
    nq_err_clear(&err);
    expect_fatal(nq_media_video_preprocess_buf(cut, n, name, out, &err), &err, name);
    free(cut);
  }
  uint8_t *g = malloc(len);
  for (size_t i = 0; i < len; i++) g[i] = (uint8_t)((i * 2654435761u) >> 9);
  nq_err_clear(&err);
  expect_fatal(nq_media_video_preprocess_buf(g, len, "noise.mp4", out, &err), &err, "noise.mp4");
  free(g);
  free(out);
  free(buf);
}

/* Random byte corruption (deterministic): decoding may succeed (libjpeg, libpng and the H.264
 * decoder conceal some damage, as the reference decoders do) but must never crash, read out of
 * bounds (run under `make sanitize`) or fail without a fatal error naming the file. */
static void bitflip_rounds(const char *path, const char *tag, int rounds) {
  size_t len;
  uint8_t *orig = slurp(path, &len);
  uint32_t s = 12345;
  float *out = malloc(NQ_MEDIA_VIDEO_NUMEL * sizeof(float));
  int failed = 0;
  for (int r = 0; r < rounds; r++) {
    uint8_t *b = malloc(len);
    memcpy(b, orig, len);
    int nflip = 1 + r % 8;
    for (int i = 0; i < nflip; i++) {
      s = s * 1664525u + 1013904223u;
      size_t at = (s >> 8) % len;
      s = s * 1664525u + 1013904223u;
      b[at] ^= (uint8_t)(1 + (s >> 24) % 255);
    }
    nq_err_t err = {0};
    char name[64];
    snprintf(name, sizeof name, "%s-flip-%d", tag, r);
    int rc;
    if (strstr(tag, "mp4"))
      rc = nq_media_video_preprocess_buf(b, len, name, out, &err);
    else if (strstr(tag, "wav"))
      rc = nq_media_audio_preprocess_buf(b, len, name, out, &err);
    else
      rc = nq_media_image_preprocess_buf(b, len, name, out, &err);
    if (rc) {
      failed++;
      cr_expect(nq_err_is_fatal(&err) || err.code == NQ_ENOMEM, "%s: %s", name, err.msg);
      cr_expect(strstr(err.msg, name) != NULL, "%s", err.msg);
    }
    free(b);
  }
  fprintf(stderr, "[media] %s: %d of %d corrupted copies rejected, none crashed\n", tag, failed, rounds);
  free(out);
  free(orig);
}

Test(media, bitflips_jpeg) { bitflip_rounds(GOLD "image-preprocess-jpeg/synthetic_320x240.jpg", "jpg", 60); }
Test(media, bitflips_png) { bitflip_rounds(GOLD "image-preprocess-png/synthetic_320x240.png", "png", 60); }
Test(media, bitflips_wav) { bitflip_rounds(GOLD "audio-preprocess/synthetic_44100Hz_4.0s.wav", "wav", 30); }
Test(media, bitflips_mp4, .timeout = 120) {
  bitflip_rounds(GOLD "video-preprocess/synthetic_320x240_10fps_3s.mp4", "mp4", 30);
}

/* Remux the golden MP4 with the moov atom first (faststart), so a cut inside mdat still opens
 * and the decoder runs out of packets: that must be an error, not a short clip. */
static uint8_t *remux_faststart(const char *in_path, size_t *len) {
  AVFormatContext *ic = NULL, *oc = NULL;
  cr_assert_geq(avformat_open_input(&ic, in_path, NULL, NULL), 0);
  cr_assert_geq(avformat_find_stream_info(ic, NULL), 0);
  char tmp[] = "/tmp/nq_media_fsXXXXXX";
  int fd = mkstemp(tmp);
  cr_assert_geq(fd, 0);
  close(fd);
  cr_assert_geq(avformat_alloc_output_context2(&oc, NULL, "mp4", tmp), 0);
  for (unsigned i = 0; i < ic->nb_streams; i++) {
    AVStream *os = avformat_new_stream(oc, NULL);
    cr_assert_geq(avcodec_parameters_copy(os->codecpar, ic->streams[i]->codecpar), 0);
    os->codecpar->codec_tag = 0;
    os->time_base = ic->streams[i]->time_base;
  }
  cr_assert_geq(avio_open(&oc->pb, tmp, AVIO_FLAG_WRITE), 0);
  AVDictionary *opt = NULL;
  av_dict_set(&opt, "movflags", "+faststart", 0);
  cr_assert_geq(avformat_write_header(oc, &opt), 0);
  av_dict_free(&opt);
  AVPacket *pkt = av_packet_alloc();
  while (av_read_frame(ic, pkt) >= 0) {
    av_packet_rescale_ts(pkt, ic->streams[pkt->stream_index]->time_base, oc->streams[pkt->stream_index]->time_base);
    pkt->pos = -1;
    cr_assert_geq(av_interleaved_write_frame(oc, pkt), 0);
  }
  av_packet_free(&pkt);
  cr_assert_geq(av_write_trailer(oc), 0);
  avio_closep(&oc->pb);
  avformat_free_context(oc);
  avformat_close_input(&ic);
  uint8_t *buf = slurp(tmp, len);
  unlink(tmp);
  return buf;
}

Test(media, truncated_faststart_mp4, .timeout = 60) {
  size_t len;
  uint8_t *buf = remux_faststart(GOLD "video-preprocess/synthetic_320x240_10fps_3s.mp4", &len);
  cr_assert(len > 1000 && memcmp(buf + 4, "ftyp", 4) == 0);
  float *out = malloc(NQ_MEDIA_VIDEO_NUMEL * sizeof(float));
  nq_err_t err = {0};
  /* the intact remux decodes to the same tensor as the original */
  cr_assert_eq(nq_media_video_preprocess_buf(buf, len, "fast.mp4", out, &err), 0, "%s", err.msg);
  int64_t shape[5] = {15, 3, 2, 224, 224};
  cmp_t c = compare_expected("video-preprocess", "video", out, NQ_MEDIA_VIDEO_NUMEL, 5, shape);
  cr_expect_leq(c.rel_l2, 1.2e-2);
  const double fr[] = {0.5, 0.8, 0.97};
  for (size_t i = 0; i < sizeof fr / sizeof fr[0]; i++) {
    size_t n = (size_t)(len * fr[i]);
    uint8_t *cut = malloc(n);
    memcpy(cut, buf, n);
    char name[64];
    snprintf(name, sizeof name, "fast-trunc-%zu.mp4", n);
    nq_err_clear(&err);
    expect_fatal(nq_media_video_preprocess_buf(cut, n, name, out, &err), &err, name);
    free(cut);
  }
  free(out);
  free(buf);
}

/* An MPEG-4 Part 2 file made here: 60 frames, a keyframe every 6, B-frames, frame i has luma
 * 20 + 3*i. Sparse targets take the seek-to-keyframe path; each decoded frame must show its own
 * brightness (display order, not decode order) and equal the densely decoded frame. */
static uint8_t *make_gop_video(size_t *len) {
  char tmp[] = "/tmp/nq_media_gopXXXXXX";
  int fd = mkstemp(tmp);
  cr_assert_geq(fd, 0);
  close(fd);
  AVFormatContext *oc = NULL;
  cr_assert_geq(avformat_alloc_output_context2(&oc, NULL, "mp4", tmp), 0);
  const AVCodec *codec = avcodec_find_encoder(AV_CODEC_ID_MPEG4);
  cr_assert_not_null(codec);
  AVCodecContext *enc = avcodec_alloc_context3(codec);
  enc->width = 64, enc->height = 48, enc->pix_fmt = AV_PIX_FMT_YUV420P;
  enc->time_base = (AVRational){1, 12};
  enc->framerate = (AVRational){12, 1};
  enc->gop_size = 6, enc->max_b_frames = 2, enc->bit_rate = 400000;
  if (oc->oformat->flags & AVFMT_GLOBALHEADER) enc->flags |= AV_CODEC_FLAG_GLOBAL_HEADER;
  cr_assert_geq(avcodec_open2(enc, codec, NULL), 0);
  AVStream *st = avformat_new_stream(oc, NULL);
  avcodec_parameters_from_context(st->codecpar, enc);
  st->time_base = enc->time_base;
  cr_assert_geq(avio_open(&oc->pb, tmp, AVIO_FLAG_WRITE), 0);
  cr_assert_geq(avformat_write_header(oc, NULL), 0);
  AVFrame *f = av_frame_alloc();
  f->format = AV_PIX_FMT_YUV420P, f->width = 64, f->height = 48;
  cr_assert_geq(av_frame_get_buffer(f, 0), 0);
  AVPacket *pkt = av_packet_alloc();
  for (int i = 0; i <= 60; i++) {
    AVFrame *in = NULL;
    if (i < 60) {
      cr_assert_geq(av_frame_make_writable(f), 0);
      for (int y = 0; y < 48; y++) memset(f->data[0] + y * f->linesize[0], 20 + 3 * i, 64);
      for (int y = 0; y < 24; y++) {
        memset(f->data[1] + y * f->linesize[1], 128, 32);
        memset(f->data[2] + y * f->linesize[2], 128, 32);
      }
      f->pts = i;
      in = f;
    }
    cr_assert_geq(avcodec_send_frame(enc, in), 0);
    while (avcodec_receive_packet(enc, pkt) == 0) {
      av_packet_rescale_ts(pkt, enc->time_base, st->time_base);
      pkt->stream_index = 0;
      cr_assert_geq(av_interleaved_write_frame(oc, pkt), 0);
    }
  }
  cr_assert_geq(av_write_trailer(oc), 0);
  av_packet_free(&pkt);
  av_frame_free(&f);
  avcodec_free_context(&enc);
  avio_closep(&oc->pb);
  avformat_free_context(oc);
  uint8_t *buf = slurp(tmp, len);
  unlink(tmp);
  return buf;
}

Test(media, video_keyframe_seek_matches_dense_decode, .timeout = 60) {
  size_t len;
  uint8_t *buf = make_gop_video(&len);
  nq_err_t err = {0};
  nq_media_video_info_t info;
  cr_assert_eq(nq_media_video_probe(buf, len, "gop.mp4", &info, &err), 0, "%s", err.msg);
  cr_assert_eq(info.n_frames, 60);
  int64_t all[60];
  for (int i = 0; i < 60; i++) all[i] = i;
  nq_media_image_t dense[60], sparse[4];
  cr_assert_eq(nq_media_video_decode_frames(buf, len, "gop.mp4", all, 60, dense, NULL, &err), 0, "%s", err.msg);
  for (int i = 0; i < 60; i++) {
    double m = 0;
    for (int p = 0; p < 64 * 48 * 3; p++) m += dense[i].rgb[p];
    m /= 64 * 48 * 3;
    double want = (3.0 * i + 4.0) * 255.0 / 219.0; /* limited-range luma 20 + 3i */
    cr_expect(fabs(m - want) < 3.0, "frame %d mean %.2f, expected %.2f", i, m, want);
  }
  const int64_t pick[4] = {47, 8, 33, 47}; /* unsorted, repeated */
  cr_assert_eq(nq_media_video_decode_frames(buf, len, "gop.mp4", pick, 4, sparse, NULL, &err), 0, "%s", err.msg);
  for (int k = 0; k < 4; k++) {
    cr_expect_arr_eq(sparse[k].rgb, dense[pick[k]].rgb, 64 * 48 * 3, "frame %lld", (long long)pick[k]);
    nq_media_image_deinit(&sparse[k]);
  }
  for (int i = 0; i < 60; i++) nq_media_image_deinit(&dense[i]);
  free(buf);
}

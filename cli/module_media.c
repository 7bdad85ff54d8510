/* cli/module_media.c — `nextq module run` kinds for ImageBind preprocessing:
 *   image-preprocess  --param path=IMG  -> pixels F32[1,3,224,224]
 *   audio-preprocess  --param path=WAV  -> fbank  F32[3,1,128,204]
 *   video-preprocess  --param path=MP4  -> video  F32[15,3,2,224,224]
 * The path is used as given (the golden runner passes it absolute). Registered in cli/module_kinds.c. */
#include <stdlib.h>

#include "cli/module_kinds.h"
#include "datasets/media.h"


typedef int (*media_fn)(const void *buf, size_t len, const char *name, float *out, nq_err_t *err);

static int run_media(const nq_module_ctx_t *ctx, media_fn fn, size_t numel, const char *tensor, int ndim,
                     const int64_t *shape, nq_err_t *err) {
  const char *path = nq_module_param(ctx, "path");
  if (!path || !*path)
    return nq_err_set(err, NQ_EINVAL, 0, "%s: missing --param path=FILE", ctx->kind ? ctx->kind : "preprocess");
  void *buf = NULL;
  size_t len = 0;
  int rc = nq_media_read_file(path, &buf, &len, err);
  if (rc) return rc;
  float *out = malloc(numel * sizeof(float));
  if (!out) {
    free(buf);
    return nq_err_set(err, NQ_ENOMEM, 0, "%s: out of memory", path);
  }
  rc = fn(buf, len, path, out, err);
  free(buf);
  if (rc == 0) rc = nq_st_writer_add_f32(ctx->out, tensor, ndim, shape, out, err);
  free(out);
  return rc;
}

int nq_module_image_preprocess(const nq_module_ctx_t *ctx, nq_err_t *err) {
  static const int64_t shape[4] = {1, 3, NQ_MEDIA_IMG_SIZE, NQ_MEDIA_IMG_SIZE};
  return run_media(ctx, nq_media_image_preprocess_buf, NQ_MEDIA_IMAGE_NUMEL, "pixels", 4, shape, err);
}

int nq_module_audio_preprocess(const nq_module_ctx_t *ctx, nq_err_t *err) {
  static const int64_t shape[4] = {NQ_MEDIA_AUDIO_CLIPS, 1, NQ_MEDIA_AUDIO_MELS, NQ_MEDIA_AUDIO_FRAMES};
  return run_media(ctx, nq_media_audio_preprocess_buf, NQ_MEDIA_AUDIO_NUMEL, "fbank", 4, shape, err);
}

int nq_module_video_preprocess(const nq_module_ctx_t *ctx, nq_err_t *err) {
  static const int64_t shape[5] = {NQ_MEDIA_VIDEO_CLIPS * NQ_MEDIA_VIDEO_CROPS, 3, NQ_MEDIA_VIDEO_FRAMES,
                                   NQ_MEDIA_IMG_SIZE, NQ_MEDIA_IMG_SIZE};
  return run_media(ctx, nq_media_video_preprocess_buf, NQ_MEDIA_VIDEO_NUMEL, "video", 5, shape, err);
}

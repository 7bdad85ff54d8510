/* tests/fuzz/fuzz_image.c — JPEG/PNG/WebP decoding (datasets/media.h nq_media_image_decode), then the
 * Pillow bicubic resize to a small size so the resampler sees odd geometries too. */
#include <stdint.h>

#include "datasets/media.h"
#include "tests/fuzz/fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  nq_media_image_t img = {0};
  nq_err_t err = {0};
  (void)nq_media_image_sniff(data, size);
  if (nq_media_image_decode(data, size, "fuzz.img", &img, &err) < 0) {
    if (!err.msg[0]) __builtin_trap();
    return 0;
  }
  if (img.w <= 0 || img.h <= 0 || !img.rgb) __builtin_trap();
  nq_fuzz_sink += nq_fuzz_touch(img.rgb, (size_t)img.w * img.h * 3);
  if ((long long)img.w * img.h <= 1 << 20) {
    nq_media_image_t small = {0};
    if (nq_media_image_resize_bicubic(&img, 7, 5, &small, &err) == 0) {
      nq_fuzz_sink += nq_fuzz_touch(small.rgb, 7 * 5 * 3);
      nq_media_image_deinit(&small);
    }
  }
  nq_media_image_deinit(&img);
  return 0;
}

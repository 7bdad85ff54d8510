/* tests/fuzz/fuzz_video.c — video container probe and frame decoding (datasets/media.h, libavformat /
 * libavcodec / libswscale): probe, then the ImageBind frame indices, then decode the first frame. */
#include <stdint.h>

#include "datasets/media.h"
#include "tests/fuzz/fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  nq_media_video_info_t info;
  nq_err_t err = {0};
  if (nq_media_video_probe(data, size, "fuzz.mp4", &info, &err) < 0) {
    if (!err.msg[0]) __builtin_trap();
    return 0;
  }
  int64_t idx[10];
  (void)nq_media_video_frame_indices(&info, idx, "fuzz.mp4", &err);
  if ((long long)info.w * info.h > (1 << 22)) return 0; /* keep one input cheap */
  int64_t first = 0;
  nq_media_image_t fr = {0};
  nq_err_clear(&err);
  if (nq_media_video_decode_frames(data, size, "fuzz.mp4", &first, 1, &fr, NULL, &err) == 0) {
    nq_fuzz_sink += nq_fuzz_touch(fr.rgb, (size_t)fr.w * fr.h * 3);
    nq_media_image_deinit(&fr);
  } else if (!err.msg[0]) {
    __builtin_trap();
  }
  return 0;
}

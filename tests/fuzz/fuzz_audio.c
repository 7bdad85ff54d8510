/* tests/fuzz/fuzz_audio.c — WAV/FLAC/OGG... decoding (datasets/media.h nq_media_audio_decode via libsndfile
 * virtual I/O). A decoded file of at most a few seconds also goes through the resampler to 16 kHz. */
#include <stdint.h>
#include <stdlib.h>

#include "datasets/media.h"
#include "tests/fuzz/fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  nq_media_audio_t a = {0};
  nq_err_t err = {0};
  if (nq_media_audio_decode(data, size, "fuzz.wav", &a, &err) < 0) {
    if (!err.msg[0]) __builtin_trap();
    return 0;
  }
  if (a.channels <= 0 || a.rate <= 0 || a.frames < 0) __builtin_trap();
  nq_fuzz_sink += nq_fuzz_touch(a.data, (size_t)a.frames * a.channels * sizeof(float));
  if (a.frames > 0 && a.frames <= 4096 && a.rate <= 192000) {
    int64_t n = nq_media_resample_length(a.frames, a.rate, 16000);
    if (n > 0 && n <= 1 << 16) {
      double *out = malloc((size_t)n * sizeof *out);
      if (out && nq_media_resample(a.data, a.frames, a.rate, 16000, 0, n, out, &err) == 0)
        nq_fuzz_sink += nq_fuzz_touch(out, (size_t)n * sizeof *out);
      free(out);
    }
  }
  nq_media_audio_deinit(&a);
  return 0;
}

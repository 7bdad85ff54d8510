/* datasets/media.h — media decoding (image, audio, video) and ImageBind preprocessing.
 *
 * Decoders read from memory buffers (the worker gets bytes from the object store or a tar member);
 * `*_load` are file-path conveniences. Every decoder takes a display name used in error messages
 * ("cc3m/000042.jpg: JPEG: Premature end of JPEG file"). Corrupt or truncated media give
 * NQ_EFORMAT (or NQ_EUNSUPPORTED) with NQ_ERR_FATAL: the input is bad, retrying will not help.
 * No decoder reads outside its buffer, exits, or aborts on hostile input; decoded sizes are capped
 * (NQ_MEDIA_MAX_PIXELS, NQ_MEDIA_MAX_AUDIO_SAMPLES) so a header cannot make us allocate absurd sizes.
 *
 * Preprocessing reproduces ImageBind's `data.py` (spec §3.1) bit-for-bit where it matters:
 *  - image: Pillow's BICUBIC resize (separable, a=-0.5, antialiased, 22-bit fixed point, uint8
 *    intermediate), short side 224 + centre crop (round half to even), /255, CLIP mean/std.
 *  - audio: torchaudio's Hann-windowed sinc resampler (width 6, rolloff 0.99) to 16 kHz, 3 clips of
 *    2 s (pytorchvideo ConstantClipsPerVideoSampler), in-place mean subtraction across overlapping
 *    clips (upstream quirk), Kaldi fbank (128 mel, 25/10 ms, hanning, htk_compat), 204 frames,
 *    (x + 4.268) / 9.138. Computed in double.
 *  - video: decord semantics (frames in pts order, N = nb_frames, fps = avg_frame_rate), 5 clips of
 *    2 s, first and last frame of each clip, libswscale yuv -> rgb24 at the same size, bilinear
 *    short side 224 (align_corners false), CLIP mean/std, 3 spatial crops.
 */
#ifndef NQ_DATASETS_MEDIA_H
#define NQ_DATASETS_MEDIA_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

/* Caps against hostile headers. Images: Pillow's DecompressionBombError threshold
 * (2 * Image.MAX_IMAGE_PIXELS), so we refuse exactly what the reference refuses. Audio: 2^28 decoded
 * samples (1 GiB of float; 1.5 h of 48 kHz stereo). */
#define NQ_MEDIA_MAX_PIXELS        178956970LL        /* w*h per image or frame */
#define NQ_MEDIA_MAX_AUDIO_SAMPLES (1LL << 28)        /* frames*channels per audio file */
#define NQ_MEDIA_MAX_AUDIO_SECONDS 3600               /* decoded duration per audio file (frames / rate) */
#define NQ_MEDIA_MAX_VIDEO_FRAMES  (1LL << 20)        /* frames per video stream (~9.7 h at 30 fps) */
#define NQ_MEDIA_RESAMPLE_MAX_KERNEL (1LL << 24)     /* resampler kernel coefficients (128 MiB of double) */

/* ImageBind geometry. */
#define NQ_MEDIA_IMG_SIZE    224
#define NQ_MEDIA_AUDIO_CLIPS 3
#define NQ_MEDIA_AUDIO_MELS  128
#define NQ_MEDIA_AUDIO_FRAMES 204
#define NQ_MEDIA_VIDEO_CLIPS 5
#define NQ_MEDIA_VIDEO_CROPS 3
#define NQ_MEDIA_VIDEO_FRAMES 2   /* frames per clip */

/* Element counts of the preprocessed tensors. */
#define NQ_MEDIA_IMAGE_NUMEL ((size_t)3 * 224 * 224)                  /* [3,224,224] */
#define NQ_MEDIA_AUDIO_NUMEL ((size_t)3 * 1 * 128 * 204)              /* [3,1,128,204] */
#define NQ_MEDIA_VIDEO_NUMEL ((size_t)15 * 3 * 2 * 224 * 224)         /* [15,3,2,224,224] */

/* ---- images ---------------------------------------------------------------------------------- */

typedef enum nq_media_image_fmt {
  NQ_MEDIA_IMG_UNKNOWN = 0,
  NQ_MEDIA_IMG_JPEG,
  NQ_MEDIA_IMG_PNG,
  NQ_MEDIA_IMG_WEBP,
} nq_media_image_fmt_t;

/* An 8-bit RGB image, rows top to bottom, pixels interleaved R,G,B. */
typedef struct nq_media_image {
  int w, h;
  uint8_t *rgb; /* owned: w*h*3 bytes */
} nq_media_image_t;

/* Sniff the format from magic bytes (JPEG FF D8 FF, PNG signature, RIFF....WEBP). */
nq_media_image_fmt_t nq_media_image_sniff(const void *buf, size_t len);

/* Decode JPEG/PNG/WebP to RGB8 the way Pillow's `Image.open(...).convert('RGB')` does: JPEG via
 * libjpeg-turbo (ISLOW IDCT, fancy upsampling; grayscale replicated; CMYK/YCCK converted like
 * Pillow's cmyk2rgb), PNG via libpng (palette expanded, gray replicated, alpha dropped without
 * compositing, 16-bit reduced to the high byte), WebP via libwebp (first frame of an animation).
 * On success *out owns its pixels; release with nq_media_image_deinit. */
int nq_media_image_decode(const void *buf /* borrowed */, size_t len, const char *name /* for errors */,
                          nq_media_image_t *out /* OUT */, nq_err_t *err);
int nq_media_image_load(const char *path, nq_media_image_t *out /* OUT */, nq_err_t *err);
void nq_media_image_deinit(nq_media_image_t *img);

/* Pillow `Image.resize((ow, oh), Image.BICUBIC)` on an RGB image (exact port of Pillow 9.4's
 * separable fixed-point resampler). out->rgb is allocated. */
int nq_media_image_resize_bicubic(const nq_media_image_t *in /* borrowed */, int ow, int oh,
                                  nq_media_image_t *out /* OUT */, nq_err_t *err);

/* ImageBind image transform: resize short side to 224 (Pillow bicubic), centre crop 224, /255,
 * CLIP normalisation. out: float[3*224*224] (CHW), caller-allocated. */
int nq_media_image_preprocess(const nq_media_image_t *img /* borrowed */, float *out /* OUT [3,224,224] */,
                              nq_err_t *err);
/* decode + preprocess. */
int nq_media_image_preprocess_buf(const void *buf, size_t len, const char *name, float *out /* OUT [3,224,224] */,
                                  nq_err_t *err);

/* ---- audio ----------------------------------------------------------------------------------- */

/* Decoded audio, planar float in [-1, 1) at the file's rate. */
typedef struct nq_media_audio {
  int rate;          /* samples per second */
  int channels;
  int64_t frames;    /* samples per channel */
  float *data;       /* owned: [channels][frames] */
} nq_media_audio_t;

/* Decode WAV/FLAC/OGG(Vorbis/Opus)/AIFF... via libsndfile, normalised like torchaudio.load
 * (int16 / 32768, int32 / 2^31, floats as stored). All channels are kept: ImageBind subtracts the
 * mean over all channels and then takes channel 0 for the fbank. */
int nq_media_audio_decode(const void *buf /* borrowed */, size_t len, const char *name,
                          nq_media_audio_t *out /* OUT */, nq_err_t *err);
int nq_media_audio_load(const char *path, nq_media_audio_t *out /* OUT */, nq_err_t *err);
void nq_media_audio_deinit(nq_media_audio_t *a);

/* torchaudio.functional.resample (sinc_interpolation, lowpass_filter_width 6, rolloff 0.99), in
 * double, for output samples [out_begin, out_end) of one channel of `n` input samples. The full
 * output length is ceil(new*n/orig) (after dividing both rates by their gcd); samples beyond it are
 * not defined (out_end must be <= that length). */
int64_t nq_media_resample_length(int64_t n, int orig_rate, int new_rate);
int nq_media_resample(const float *in /* borrowed [n] */, int64_t n, int orig_rate, int new_rate, int64_t out_begin,
                      int64_t out_end, double *out /* OUT [out_end-out_begin] */, nq_err_t *err);

/* Kaldi fbank of one waveform (torchaudio.compliance.kaldi.fbank with ImageBind's arguments:
 * 16 kHz, 128 mel, 25/10 ms, hanning, dither 0, htk_compat, no energy, preemph 0.97,
 * remove_dc_offset, snip_edges, 512-point power spectrum, log with floor FLT_EPSILON).
 * Returns the frame count T = 1 + (n-400)/160 (0 when n < 400); writes out[t*128 + m] for T frames. */
int nq_media_fbank_frames(int64_t n);
void nq_media_fbank(const double *wave /* borrowed [n] */, int64_t n, double *out /* OUT [T,128] */);

/* ImageBind audio transform -> float[3,1,128,204]. */
int nq_media_audio_preprocess(const nq_media_audio_t *a /* borrowed */, float *out /* OUT [3,1,128,204] */,
                              const char *name, nq_err_t *err);
int nq_media_audio_preprocess_buf(const void *buf, size_t len, const char *name,
                                  float *out /* OUT [3,1,128,204] */, nq_err_t *err);

/* ---- clip sampling (pytorchvideo ConstantClipsPerVideoSampler) ------------------------------- */

/* Start of clip k of `clips` for a 2-s clip length over `duration` seconds (a Python float), as
 * pytorchvideo computes it with Fractions: k * max(duration - 2, 0) / max(clips - 1, 1).
 * Audio: sample range [floor(start*rate), floor((start+2)*rate)) with exact rational arithmetic. */
void nq_media_audio_clip_range(int64_t n, int rate, int k, int clips, int64_t *begin /* OUT */, int64_t *end /* OUT */);
/* Video (decord via pytorchvideo EncodedVideoDecord.get_clip): frames
 * [ceil(fps*start), min(ceil(fps*(start+2)), n_frames)); fps and duration = n_frames/fps are doubles. */
void nq_media_video_clip_range(int64_t n_frames, double fps, int k, int clips, int64_t *begin /* OUT */,
                               int64_t *end /* OUT */);

/* ---- video ----------------------------------------------------------------------------------- */

typedef struct nq_media_video_info {
  int w, h;            /* coded picture size (frames are converted to this size) */
  int64_t n_frames;    /* stream nb_frames (decord's len); estimated from duration*fps when absent */
  int fps_num, fps_den;/* avg_frame_rate */
  double fps;          /* fps_num / fps_den */
  double duration;     /* n_frames / fps, as pytorchvideo computes it */
} nq_media_video_info_t;

/* Probe a video container in memory (libavformat). The video functions set libav's global log
 * level to AV_LOG_QUIET (corrupt input would otherwise print to stderr); errors come back in err. */
int nq_media_video_probe(const void *buf /* borrowed */, size_t len, const char *name,
                         nq_media_video_info_t *info /* OUT */, nq_err_t *err);

/* Decode the frames with the given indices (pts order, 0-based; any order, repeats allowed) to RGB8
 * via libswscale's default yuv->rgb24 path, the way decord does. frames[i] receives an owned image
 * for idx[i]; on error nothing is left allocated. */
int nq_media_video_decode_frames(const void *buf /* borrowed */, size_t len, const char *name, const int64_t *idx,
                                 int n_idx, nq_media_image_t *frames /* OUT [n_idx] */,
                                 nq_media_video_info_t *info /* OUT, may be NULL */, nq_err_t *err);

/* ImageBind video transform on 10 decoded frames (clip-major: clip k's first and last frame at
 * 2k, 2k+1; all the same size) -> float[15,3,2,224,224]. */
int nq_media_video_transform(const nq_media_image_t *frames /* borrowed [10] */,
                             float *out /* OUT [15,3,2,224,224] */, nq_err_t *err);
/* The frame indices ImageBind takes: idx[2k], idx[2k+1] = first and last frame of clip k. */
int nq_media_video_frame_indices(const nq_media_video_info_t *info, int64_t idx[10] /* OUT */, const char *name,
                                 nq_err_t *err);
/* probe + decode + transform. */
int nq_media_video_preprocess_buf(const void *buf, size_t len, const char *name,
                                  float *out /* OUT [15,3,2,224,224] */, nq_err_t *err);

/* ---- writers (datasets/media_write_av.c: libsndfile, libavcodec/libavformat/libswscale) ----------------- */

typedef enum nq_media_wav_fmt {
  NQ_MEDIA_WAV_PCM16 = 0, /* 16-bit PCM (samples clipped to [-1, 1]; what imageio/scipy write for NExT-GPT) */
  NQ_MEDIA_WAV_FLOAT = 1, /* IEEE float32 */
} nq_media_wav_fmt_t;

/* Encode interleaved float samples [frames * channels] as a WAV file in memory. *out is malloc'ed (owned). */
int nq_media_wav_encode(const float *samples /* borrowed [frames*channels] */, int64_t frames, int channels, int rate,
                        nq_media_wav_fmt_t fmt, void **out /* OUT owned */, size_t *len /* OUT */, nq_err_t *err);

typedef enum nq_media_video_fmt {
  NQ_MEDIA_VIDEO_MP4 = 0, /* H.264 (libx264) when the build has an encoder for it, else MPEG-4 Part 2; yuv420p */
  NQ_MEDIA_VIDEO_GIF = 1, /* animated GIF (libav's gif encoder, rgb8 palette), loops forever */
} nq_media_video_fmt_t;

/* Encode RGB8 frames [n_frames, h, w, 3] at `fps` into an MP4 or GIF file in memory. w and h are rounded down to even
 * for MP4 (yuv420p). *codec (may be NULL) receives the encoder's name ("libx264", "mpeg4", "gif"). */
int nq_media_video_encode(const uint8_t *rgb /* borrowed [n_frames*h*w*3] */, int n_frames, int w, int h, int fps,
                          nq_media_video_fmt_t fmt, void **out /* OUT owned */, size_t *len /* OUT */,
                          const char **codec /* OUT, static string, may be NULL */, nq_err_t *err);

/* Encode RGB8 (rows top to bottom, w*h*3 bytes) as an 8-bit RGB PNG (libpng; datasets/media_png_write.c).
 * *out is malloc'ed (caller frees). */
int nq_media_png_encode(const uint8_t *rgb /* borrowed [h*w*3] */, int w, int h, void **out /* OUT owned */,
                        size_t *out_len /* OUT */, nq_err_t *err);

/* ---- helpers --------------------------------------------------------------------------------- */

/* Read a whole file (<= 4 GiB) into a malloc'ed buffer. */
int nq_media_read_file(const char *path, void **buf /* OUT owned */, size_t *len /* OUT */, nq_err_t *err);

#endif

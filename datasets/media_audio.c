/* datasets/media_audio.c — audio decoding (libsndfile), torchaudio's sinc resampler, Kaldi fbank
 * and the ImageBind audio transform. */
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sndfile.h>

#include "datasets/media.h"

#define FATAL (NQ_ERR_FATAL)

static const char *dname(const char *name) { return name ? name : "<memory>"; }

void nq_media_audio_deinit(nq_media_audio_t *a) {
  if (!a) return;
  free(a->data);
  memset(a, 0, sizeof *a);
}

/* ---- decoding (libsndfile virtual I/O over a memory buffer) --------------------------------- */

typedef struct mem_io {
  const uint8_t *p;
  sf_count_t len, pos;
} mem_io_t;

static sf_count_t mio_len(void *u) { return ((mem_io_t *)u)->len; }
static sf_count_t mio_seek(sf_count_t off, int whence, void *u) {
  mem_io_t *m = u;
  sf_count_t base = whence == SEEK_SET ? 0 : whence == SEEK_CUR ? m->pos : m->len;
  sf_count_t np = base + off;
  if (np < 0) np = 0;
  if (np > m->len) np = m->len;
  m->pos = np;
  return np;
}
static sf_count_t mio_read(void *dst, sf_count_t n, void *u) {
  mem_io_t *m = u;
  if (n < 0) return 0;
  if (n > m->len - m->pos) n = m->len - m->pos;
  memcpy(dst, m->p + m->pos, (size_t)n);
  m->pos += n;
  return n;
}
static sf_count_t mio_write(const void *src, sf_count_t n, void *u) { (void)src, (void)n, (void)u; return 0; }
static sf_count_t mio_tell(void *u) { return ((mem_io_t *)u)->pos; }

static uint32_t rd_le32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* libsndfile (like sox) silently shortens a WAV whose data chunk is cut off; we want an error.
 * Walk the RIFF chunks to the data chunk and compare its declared size with the bytes present.
 * Returns 1 when truncated (sets have and want), 0 otherwise (also for non-WAV input). */
static int wav_truncated(const uint8_t *p, size_t len, uint64_t *have, uint64_t *want) {
  if (len < 12 || memcmp(p, "RIFF", 4) != 0 || memcmp(p + 8, "WAVE", 4) != 0) return 0;
  size_t off = 12;
  while (off + 8 <= len) {
    uint32_t sz = rd_le32(p + off + 4);
    if (memcmp(p + off, "data", 4) == 0) {
      if (sz == 0xFFFFFFFFu || sz == 0) return 0; /* streaming writers leave it unset */
      *have = len - off - 8;
      *want = sz;
      return (uint64_t)sz > len - off - 8;
    }
    uint64_t next = (uint64_t)off + 8 + sz + (sz & 1);
    if (next > len) return 0; /* libsndfile reports what it can't parse */
    off = (size_t)next;
  }
  return 0;
}

int nq_media_audio_decode(const void *buf, size_t len, const char *name, nq_media_audio_t *out, nq_err_t *err) {
  if (!out) return nq_err_set(err, NQ_EINVAL, 0, "%s: no output", dname(name));
  memset(out, 0, sizeof *out);
  if (!buf || len == 0) return nq_err_set(err, NQ_EFORMAT, FATAL, "%s: empty audio file", dname(name));
  uint64_t have = 0, want = 0;
  if (wav_truncated(buf, len, &have, &want))
    return nq_err_set(err, NQ_EFORMAT, FATAL, "%s: WAV truncated: data chunk declares %llu bytes, %llu present",
                      dname(name), (unsigned long long)want, (unsigned long long)have);
  mem_io_t m = {buf, (sf_count_t)len, 0};
  SF_VIRTUAL_IO vio = {mio_len, mio_seek, mio_read, mio_write, mio_tell};
  SF_INFO info;
  memset(&info, 0, sizeof info);
  SNDFILE *sf = sf_open_virtual(&vio, SFM_READ, &info, &m);
  if (!sf)
    return nq_err_set(err, NQ_EFORMAT, FATAL, "%s: audio: cannot open (%s)", dname(name), sf_strerror(NULL));
  if (info.channels <= 0 || info.channels > 64 || info.samplerate <= 0 || info.samplerate > 1000000) {
    sf_close(sf);
    return nq_err_set(err, NQ_EFORMAT, FATAL, "%s: audio: bad header (%d channels, %d Hz)", dname(name),
                      info.channels, info.samplerate);
  }
  const int ch = info.channels;
  /* The header's frame count is a hint only (hostile or truncated files): read in chunks and grow. */
  sf_count_t cap = 0, n = 0;
  float *inter = NULL;
  float chunk_buf[4096];
  const sf_count_t chunk_frames = (sf_count_t)(sizeof chunk_buf / sizeof chunk_buf[0]) / ch;
  sf_command(sf, SFC_SET_NORM_FLOAT, NULL, SF_TRUE);
  for (;;) {
    sf_count_t got = sf_readf_float(sf, chunk_buf, chunk_frames);
    if (got <= 0) break;
    if ((n + got) * ch > NQ_MEDIA_MAX_AUDIO_SAMPLES) {
      sf_close(sf);
      free(inter);
      return nq_err_set(err, NQ_ELIMIT, FATAL, "%s: audio: more than the limit of %lld samples (frames x channels)",
                        dname(name), (long long)NQ_MEDIA_MAX_AUDIO_SAMPLES);
    }
    if ((n + got) > (sf_count_t)NQ_MEDIA_MAX_AUDIO_SECONDS * info.samplerate) {
      sf_close(sf);
      free(inter);
      return nq_err_set(err, NQ_ELIMIT, FATAL, "%s: audio: longer than the limit of %d seconds (at %d Hz)", dname(name),
                        NQ_MEDIA_MAX_AUDIO_SECONDS, info.samplerate);
    }
    if (n + got > cap) {
      sf_count_t nc = cap ? cap * 2 : 65536;
      while (nc < n + got) nc *= 2;
      float *ni = realloc(inter, (size_t)nc * ch * sizeof(float));
      if (!ni) {
        sf_close(sf);
        free(inter);
        return nq_err_set(err, NQ_ENOMEM, 0, "%s: audio: out of memory", dname(name));
      }
      inter = ni, cap = nc;
    }
    memcpy(inter + n * ch, chunk_buf, (size_t)got * ch * sizeof(float));
    n += got;
  }
  int serr = sf_error(sf);
  char emsg[160];
  snprintf(emsg, sizeof emsg, "%s", sf_strerror(sf));
  sf_close(sf);
  if (serr != SF_ERR_NO_ERROR) {
    free(inter);
    return nq_err_set(err, NQ_EFORMAT, FATAL, "%s: audio: decode error after %lld frames (%s)", dname(name),
                      (long long)n, emsg);
  }
  if (info.frames > 0 && n < info.frames) {
    free(inter);
    return nq_err_set(err, NQ_EFORMAT, FATAL, "%s: audio: truncated (%lld of %lld frames)", dname(name),
                      (long long)n, (long long)info.frames);
  }
  if (n == 0) {
    free(inter);
    return nq_err_set(err, NQ_EFORMAT, FATAL, "%s: audio: no samples", dname(name));
  }
  float *planar = malloc((size_t)n * ch * sizeof(float));
  if (!planar) {
    free(inter);
    return nq_err_set(err, NQ_ENOMEM, 0, "%s: audio: out of memory", dname(name));
  }
  for (int c = 0; c < ch; c++)
    for (sf_count_t i = 0; i < n; i++) planar[(size_t)c * n + i] = inter[(size_t)i * ch + c];
  free(inter);
  out->rate = info.samplerate;
  out->channels = ch;
  out->frames = n;
  out->data = planar;
  return 0;
}

int nq_media_audio_load(const char *path, nq_media_audio_t *out, nq_err_t *err) {
  void *buf;
  size_t len;
  memset(out, 0, sizeof *out);
  int rc = nq_media_read_file(path, &buf, &len, err);
  if (rc) return rc;
  rc = nq_media_audio_decode(buf, len, path, out, err);
  free(buf);
  return rc;
}

/* ---- torchaudio.functional.resample (sinc_interpolation) ------------------------------------ */

static long gcd_l(long a, long b) {
  while (b) {
    long t = a % b;
    a = b, b = t;
  }
  return a;
}

int64_t nq_media_resample_length(int64_t n, int orig_rate, int new_rate) {
  if (orig_rate == new_rate) return n;
  long g = gcd_l(orig_rate, new_rate);
  int64_t o = orig_rate / g, w = new_rate / g;
  /* int(math.ceil(new * length / orig)) — exact integer ceil (the float expression agrees for
   * realistic lengths). */
  return (w * n + o - 1) / o;
}

int nq_media_resample(const float *in, int64_t n, int orig_rate, int new_rate, int64_t out_begin, int64_t out_end,
                      double *out, nq_err_t *err) {
  if (orig_rate <= 0 || new_rate <= 0 || n < 0 || out_begin < 0 || out_end < out_begin ||
      out_end > nq_media_resample_length(n, orig_rate, new_rate))
    return nq_err_set(err, NQ_EINVAL, 0, "resample: bad arguments (%d -> %d Hz, %lld samples, [%lld, %lld))",
                      orig_rate, new_rate, (long long)n, (long long)out_begin, (long long)out_end);
  if (orig_rate == new_rate) {
    for (int64_t i = out_begin; i < out_end; i++) out[i - out_begin] = in[i];
    return 0;
  }
  const long g = gcd_l(orig_rate, new_rate);
  const long orig = orig_rate / g, newf = new_rate / g;
  if (orig > 100000 || newf > 100000)
    return nq_err_set(err, NQ_EUNSUPPORTED, NQ_ERR_FATAL, "resample: %d -> %d Hz reduces to %ld/%ld (too many phases)",
                      orig_rate, new_rate, orig, newf);
  const double lpw = 6.0, rolloff = 0.99;
  double base = (double)(orig < newf ? orig : newf);
  base *= rolloff;
  const long width = (long)ceil(lpw * (double)orig / base);
  const long taps = 2 * width + orig;
  /* The kernel table is newf x taps doubles: a hostile rate (41521 Hz -> 16 kHz: 16000 x 41553) would ask for
   * gigabytes. Real rates stay far below the cap (44.1 kHz: 160 x 453; 44.056 kHz: 2000 x ~5540). */
  if ((double)newf * (double)taps > (double)NQ_MEDIA_RESAMPLE_MAX_KERNEL)
    return nq_err_set(err, NQ_ELIMIT, NQ_ERR_FATAL,
                      "resample: %d -> %d Hz needs a %ld x %ld kernel, more than the limit of %lld coefficients",
                      orig_rate, new_rate, newf, taps, (long long)NQ_MEDIA_RESAMPLE_MAX_KERNEL);
  /* Kernel rows only for the phases needed (all of them when the range is long). */
  double *kern = malloc((size_t)newf * taps * sizeof(double));
  if (!kern) return nq_err_set(err, NQ_ENOMEM, 0, "resample: out of memory");
  const double scale = base / (double)orig;
  for (long j = 0; j < newf; j++) {
    for (long k = 0; k < taps; k++) {
      /* idx = arange(-width, width+orig)/orig ; t = (arange(0,-new,-1)/new + idx) * base */
      double idx = (double)(k - width) / (double)orig;
      double t = (-(double)j / (double)newf + idx) * base;
      if (t < -lpw) t = -lpw;
      if (t > lpw) t = lpw;
      double c = cos(t * M_PI / lpw / 2);
      double window = c * c;
      t *= M_PI;
      double kv = t == 0 ? 1.0 : sin(t) / t;
      kern[(size_t)j * taps + k] = kv * (window * scale);
    }
  }
  /* Output sample s = i*newf + j takes padded[i*orig + k], padded = [width zeros] in [width+orig zeros]. */
  for (int64_t s = out_begin; s < out_end; s++) {
    int64_t i = s / newf;
    long j = (long)(s % newf);
    const double *kr = kern + (size_t)j * taps;
    int64_t p0 = i * orig - width; /* input index of tap 0 */
    long k0 = 0, k1 = taps;
    if (p0 < 0) k0 = (long)(-p0);
    if (p0 + k1 > n) k1 = (long)(n - p0);
    double acc = 0.0;
    for (long k = k0; k < k1; k++) acc += kr[k] * (double)in[p0 + k];
    out[s - out_begin] = acc;
  }
  free(kern);
  return 0;
}

/* ---- clip sampling ---------------------------------------------------------------------------- */

void nq_media_audio_clip_range(int64_t n, int rate, int k, int clips, int64_t *begin, int64_t *end) {
  /* duration = n / rate (a Python float d); start = Fraction(max(d - 2, 0)) * k / max(clips-1, 1);
   * begin = int(start * rate), end = int((start + 2) * rate) with exact rationals. d - 2 is a
   * double; write it as m * 2^e and do the rest in 128-bit integers. */
  double d = (double)n / (double)rate;
  double x = d - 2.0;
  int64_t b = 0;
  if (x > 0 && k > 0) {
    int e;
    double fr = frexp(x, &e);           /* x = fr * 2^e, fr in [0.5, 1) */
    int64_t mant = (int64_t)ldexp(fr, 53); /* exact */
    e -= 53;                            /* x = mant * 2^e */
    int den_c = clips > 1 ? clips - 1 : 1;
    __int128 num = (__int128)mant * k * rate;
    if (e >= 0) {
      b = (int64_t)((num << e) / den_c);
    } else if (e > -120) {
      __int128 den = (__int128)den_c << (-e);
      b = (int64_t)(num / den);
    }
  }
  *begin = b;
  *end = b + 2 * (int64_t)rate;
}

/* ---- Kaldi fbank ------------------------------------------------------------------------------ */

#define FB_WIN 400
#define FB_SHIFT 160
#define FB_NFFT 512
#define FB_MELS 128

int nq_media_fbank_frames(int64_t n) { return n < FB_WIN ? 0 : (int)(1 + (n - FB_WIN) / FB_SHIFT); }

typedef struct fbank_tables {
  double window[FB_WIN];
  double cosv[FB_NFFT / 2], sinv[FB_NFFT / 2];
  int bitrev[FB_NFFT];
  /* Mel banks [128][257] are sparse triangles: [first, last) bins and weights. */
  int mfirst[FB_MELS], mlast[FB_MELS];
  float bank[FB_MELS][FB_NFFT / 2 + 1];
} fbank_tables_t;

static fbank_tables_t fbt;
static pthread_once_t fbt_once = PTHREAD_ONCE_INIT;

static float mel_scale_f(float f) { return 1127.0f * logf(1.0f + f / 700.0f); }

static void fbank_init_tables(void) {
  for (int i = 0; i < FB_WIN; i++) fbt.window[i] = 0.5 - 0.5 * cos(2.0 * M_PI * i / (FB_WIN - 1));
  for (int i = 0; i < FB_NFFT / 2; i++) {
    fbt.cosv[i] = cos(2.0 * M_PI * i / FB_NFFT);
    fbt.sinv[i] = -sin(2.0 * M_PI * i / FB_NFFT);
  }
  for (int i = 0; i < FB_NFFT; i++) {
    int r = 0;
    for (int b = 0; b < 9; b++)
      if (i & (1 << b)) r |= 1 << (8 - b);
    fbt.bitrev[i] = r;
  }
  /* torchaudio get_mel_banks: the slopes are float32 tensors even in a float64 run. */
  const double low = 20.0, high = 8000.0, sr = 16000.0;
  const double mel_low = 1127.0 * log(1.0 + low / 700.0), mel_high = 1127.0 * log(1.0 + high / 700.0);
  const double delta = (mel_high - mel_low) / (FB_MELS + 1);
  const float fft_bin_width = (float)(sr / FB_NFFT);
  for (int m = 0; m < FB_MELS; m++) {
    float left = (float)mel_low + (float)m * (float)delta;
    float center = (float)mel_low + ((float)m + 1.0f) * (float)delta;
    float right = (float)mel_low + ((float)m + 2.0f) * (float)delta;
    fbt.mfirst[m] = FB_NFFT / 2;
    fbt.mlast[m] = 0;
    for (int b = 0; b < FB_NFFT / 2; b++) {
      float mel = mel_scale_f(fft_bin_width * (float)b);
      float up = (mel - left) / (center - left), down = (right - mel) / (right - center);
      float v = up < down ? up : down;
      if (v < 0.0f) v = 0.0f;
      fbt.bank[m][b] = v;
      if (v > 0.0f) {
        if (b < fbt.mfirst[m]) fbt.mfirst[m] = b;
        fbt.mlast[m] = b + 1;
      }
    }
    fbt.bank[m][FB_NFFT / 2] = 0.0f; /* Nyquist bin padded with 0 */
  }
}

/* In-place radix-2 complex FFT of size 512. */
static void fft512(double *re, double *im) {
  for (int i = 0; i < FB_NFFT; i++) {
    int j = fbt.bitrev[i];
    if (j > i) {
      double t = re[i];
      re[i] = re[j], re[j] = t;
      t = im[i];
      im[i] = im[j], im[j] = t;
    }
  }
  for (int len = 2; len <= FB_NFFT; len <<= 1) {
    int half = len >> 1, step = FB_NFFT / len;
    for (int s = 0; s < FB_NFFT; s += len) {
      for (int k = 0; k < half; k++) {
        double wr = fbt.cosv[k * step], wi = fbt.sinv[k * step];
        double xr = re[s + k + half], xi = im[s + k + half];
        double tr = xr * wr - xi * wi, ti = xr * wi + xi * wr;
        re[s + k + half] = re[s + k] - tr;
        im[s + k + half] = im[s + k] - ti;
        re[s + k] += tr;
        im[s + k] += ti;
      }
    }
  }
}

void nq_media_fbank(const double *wave, int64_t n, double *out) {
  pthread_once(&fbt_once, fbank_init_tables);
  const int T = nq_media_fbank_frames(n);
  const double eps = (double)FLT_EPSILON;
  double fr[FB_WIN], re[FB_NFFT], im[FB_NFFT], pw[FB_NFFT / 2 + 1];
  for (int t = 0; t < T; t++) {
    const double *x = wave + (int64_t)t * FB_SHIFT;
    double mean = 0;
    for (int i = 0; i < FB_WIN; i++) mean += x[i];
    mean /= FB_WIN;
    for (int i = 0; i < FB_WIN; i++) fr[i] = x[i] - mean;
    /* pre-emphasis with replicate padding: y[i] = x[i] - 0.97 x[i-1], x[-1] = x[0] */
    for (int i = FB_WIN - 1; i >= 1; i--) fr[i] -= 0.97 * fr[i - 1];
    fr[0] -= 0.97 * fr[0];
    for (int i = 0; i < FB_WIN; i++) re[i] = fr[i] * fbt.window[i];
    for (int i = FB_WIN; i < FB_NFFT; i++) re[i] = 0;
    memset(im, 0, sizeof im);
    fft512(re, im);
    for (int b = 0; b <= FB_NFFT / 2; b++) pw[b] = re[b] * re[b] + im[b] * im[b];
    double *o = out + (size_t)t * FB_MELS;
    for (int m = 0; m < FB_MELS; m++) {
      double e = 0;
      for (int b = fbt.mfirst[m]; b < fbt.mlast[m]; b++) e += pw[b] * (double)fbt.bank[m][b];
      o[m] = log(e > eps ? e : eps);
    }
  }
}

/* ---- ImageBind audio transform ---------------------------------------------------------------- */

int nq_media_audio_preprocess(const nq_media_audio_t *a, float *out, const char *name, nq_err_t *err) {
  if (!a || !a->data || a->frames <= 0 || a->channels <= 0 || a->rate <= 0)
    return nq_err_set(err, NQ_EINVAL, 0, "%s: audio preprocess: empty audio", dname(name));
  const int SR = 16000, C = a->channels;
  const int64_t N = nq_media_resample_length(a->frames, a->rate, SR);
  int64_t cb[NQ_MEDIA_AUDIO_CLIPS], ce[NQ_MEDIA_AUDIO_CLIPS];
  int64_t lo = INT64_MAX, hi = 0;
  for (int k = 0; k < NQ_MEDIA_AUDIO_CLIPS; k++) {
    nq_media_audio_clip_range(N, SR, k, NQ_MEDIA_AUDIO_CLIPS, &cb[k], &ce[k]);
    if (ce[k] > N) ce[k] = N; /* Python slice end clamps */
    if (cb[k] > ce[k]) cb[k] = ce[k];
    if (cb[k] < lo) lo = cb[k];
    if (ce[k] > hi) hi = ce[k];
  }
  if (nq_media_fbank_frames(ce[0] - cb[0]) == 0)
    return nq_err_set(err, NQ_EFORMAT, FATAL, "%s: audio too short (%lld samples at 16 kHz; a 25 ms window needs 400)",
                      dname(name), (long long)N);
  /* Resample only [lo, hi) of every channel (the clips cover it); the buffer is mutated in place
   * by the per-clip mean subtraction, as upstream's views are. */
  const int64_t L = hi - lo;
  double *wav = malloc((size_t)L * C * sizeof(double));
  double *fb = malloc((size_t)nq_media_fbank_frames(L > 32000 ? 32000 : L) * FB_MELS * sizeof(double) + 1);
  if (!wav || !fb) {
    free(wav), free(fb);
    return nq_err_set(err, NQ_ENOMEM, 0, "%s: audio preprocess: out of memory", dname(name));
  }
  for (int c = 0; c < C; c++) {
    int rc = nq_media_resample(a->data + (size_t)c * a->frames, a->frames, a->rate, SR, lo, hi, wav + (size_t)c * L, err);
    if (rc) {
      free(wav), free(fb);
      nq_err_prefix(err, "%s", dname(name));
      return rc;
    }
  }
  const float pad = (float)((0.0 + 4.268) / 9.138);
  for (int k = 0; k < NQ_MEDIA_AUDIO_CLIPS; k++) {
    int64_t b = cb[k] - lo, e = ce[k] - lo, len = e - b;
    /* waveform -= waveform.mean(): mean over all channels of the clip view, in place. */
    double s = 0;
    for (int c = 0; c < C; c++)
      for (int64_t i = b; i < e; i++) s += wav[(size_t)c * L + i];
    double mean = len > 0 ? s / ((double)len * C) : 0;
    for (int c = 0; c < C; c++)
      for (int64_t i = b; i < e; i++) wav[(size_t)c * L + i] -= mean;
    /* fbank of channel 0 */
    int T = nq_media_fbank_frames(len);
    if (T > 0) nq_media_fbank(wav + b, len, fb);
    float *o = out + (size_t)k * FB_MELS * NQ_MEDIA_AUDIO_FRAMES;
    for (int m = 0; m < FB_MELS; m++)
      for (int t = 0; t < NQ_MEDIA_AUDIO_FRAMES; t++)
        o[(size_t)m * NQ_MEDIA_AUDIO_FRAMES + t] =
            t < T ? (float)((fb[(size_t)t * FB_MELS + m] + 4.268) / 9.138) : pad;
  }
  free(wav), free(fb);
  return 0;
}

int nq_media_audio_preprocess_buf(const void *buf, size_t len, const char *name, float *out, nq_err_t *err) {
  nq_media_audio_t a;
  int rc = nq_media_audio_decode(buf, len, name, &a, err);
  if (rc) return rc;
  rc = nq_media_audio_preprocess(&a, out, name, err);
  nq_media_audio_deinit(&a);
  return rc;
}

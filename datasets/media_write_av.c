/* datasets/media_write_av.c — WAV (libsndfile virtual I/O) and MP4 / GIF (libavformat + libavcodec + libswscale)
 * writers into memory buffers (see media.h "writers"). */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/imgutils.h>
#include <libavutil/log.h>
#include <libavutil/opt.h>
#include <libswscale/swscale.h>
#include <sndfile.h>

#include "datasets/media.h"

/* ---- a growable, seekable memory file ------------------------------------------------------------------------ */

typedef struct nq_mw__buf {
  uint8_t *d;  /* owned */
  size_t len;  /* bytes written (file size) */
  size_t cap;
  size_t pos;  /* current offset */
  int oom;
} nq_mw__buf_t;

static int nq_mw__write(nq_mw__buf_t *b, const void *p, size_t n) {
  if (b->pos + n < b->pos) return -1;
  if (b->pos + n > b->cap) {
    size_t nc = b->cap ? b->cap : 65536;
    while (nc < b->pos + n) nc *= 2;
    uint8_t *nd = realloc(b->d, nc);
    if (!nd) {
      b->oom = 1;
      return -1;
    }
    if (nc > b->cap) memset(nd + b->cap, 0, nc - b->cap);
    b->d = nd, b->cap = nc;
  }
  memcpy(b->d + b->pos, p, n);
  b->pos += n;
  if (b->pos > b->len) b->len = b->pos;
  return 0;
}

/* ---- WAV --------------------------------------------------------------------------------------------------- */

static sf_count_t nq_mw__sf_len(void *ud) { return (sf_count_t)((nq_mw__buf_t *)ud)->len; }
static sf_count_t nq_mw__sf_seek(sf_count_t off, int whence, void *ud) {
  nq_mw__buf_t *b = ud;
  sf_count_t base = whence == SEEK_SET ? 0 : whence == SEEK_CUR ? (sf_count_t)b->pos : (sf_count_t)b->len;
  if (base + off < 0) return -1;
  b->pos = (size_t)(base + off);
  return (sf_count_t)b->pos;
}
static sf_count_t nq_mw__sf_read(void *ptr, sf_count_t n, void *ud) {
  nq_mw__buf_t *b = ud;
  if (b->pos >= b->len) return 0;
  size_t k = b->len - b->pos < (size_t)n ? b->len - b->pos : (size_t)n;
  memcpy(ptr, b->d + b->pos, k);
  b->pos += k;
  return (sf_count_t)k;
}
static sf_count_t nq_mw__sf_write(const void *ptr, sf_count_t n, void *ud) {
  return nq_mw__write(ud, ptr, (size_t)n) < 0 ? 0 : n;
}
static sf_count_t nq_mw__sf_tell(void *ud) { return (sf_count_t)((nq_mw__buf_t *)ud)->pos; }

int nq_media_wav_encode(const float *samples, int64_t frames, int channels, int rate, nq_media_wav_fmt_t fmt,
                        void **out, size_t *len, nq_err_t *err) {
  *out = NULL, *len = 0;
  if (!samples || frames < 0 || channels < 1 || channels > 64 || rate < 1 || rate > 768000 ||
      frames * channels > NQ_MEDIA_MAX_AUDIO_SAMPLES)
    return nq_err_set(err, NQ_EINVAL, 0, "wav: bad arguments (%lld frames, %d channels, %d Hz)", (long long)frames,
                      channels, rate);
  SF_INFO info = {.samplerate = rate,
                  .channels = channels,
                  .format = SF_FORMAT_WAV | (fmt == NQ_MEDIA_WAV_FLOAT ? SF_FORMAT_FLOAT : SF_FORMAT_PCM_16)};
  SF_VIRTUAL_IO vio = {nq_mw__sf_len, nq_mw__sf_seek, nq_mw__sf_read, nq_mw__sf_write, nq_mw__sf_tell};
  nq_mw__buf_t b = {0};
  SNDFILE *sf = sf_open_virtual(&vio, SFM_WRITE, &info, &b);
  if (!sf) {
    free(b.d);
    return nq_err_set(err, NQ_EIO, 0, "wav: libsndfile: %s", sf_strerror(NULL));
  }
  /* PCM16: libsndfile scales floats by 0x7FFF; clip so out-of-range samples saturate instead of wrapping */
  sf_command(sf, SFC_SET_CLIPPING, NULL, SF_TRUE);
  sf_count_t w = sf_writef_float(sf, samples, (sf_count_t)frames);
  int crc = sf_close(sf);
  if (w != (sf_count_t)frames || crc || b.oom) {
    free(b.d);
    return nq_err_set(err, b.oom ? NQ_ENOMEM : NQ_EIO, 0, "wav: wrote %lld of %lld frames", (long long)w,
                      (long long)frames);
  }
  *out = b.d, *len = b.len;
  return 0;
}

/* ---- MP4 / GIF --------------------------------------------------------------------------------------------- */

static int nq_mw__av_write(void *opaque, uint8_t *p, int n) {
  return nq_mw__write(opaque, p, (size_t)n) < 0 ? AVERROR(ENOMEM) : n;
}
static int64_t nq_mw__av_seek(void *opaque, int64_t off, int whence) {
  nq_mw__buf_t *b = opaque;
  if (whence & AVSEEK_SIZE) return (int64_t)b->len;
  whence &= ~AVSEEK_FORCE;
  int64_t base = whence == SEEK_SET ? 0 : whence == SEEK_CUR ? (int64_t)b->pos : (int64_t)b->len;
  if (base + off < 0) return AVERROR(EINVAL);
  b->pos = (size_t)(base + off);
  return (int64_t)b->pos;
}

static const char *nq_mw__averr(int e, char *buf, size_t n) {
  if (av_strerror(e, buf, n) < 0) snprintf(buf, n, "error %d", e);
  return buf;
}

/* Send one frame (or NULL to flush) and mux every packet that comes out. */
static int nq_mw__encode(AVCodecContext *cc, AVFormatContext *fc, AVStream *st, AVFrame *fr, AVPacket *pkt) {
  int rc = avcodec_send_frame(cc, fr);
  if (rc < 0) return rc;
  for (;;) {
    rc = avcodec_receive_packet(cc, pkt);
    if (rc == AVERROR(EAGAIN) || rc == AVERROR_EOF) return 0;
    if (rc < 0) return rc;
    av_packet_rescale_ts(pkt, cc->time_base, st->time_base);
    pkt->stream_index = st->index;
    if ((rc = av_interleaved_write_frame(fc, pkt)) < 0) return rc;
  }
}

int nq_media_video_encode(const uint8_t *rgb, int n_frames, int w, int h, int fps, nq_media_video_fmt_t fmt,
                          void **out, size_t *len, const char **codec, nq_err_t *err) {
  *out = NULL, *len = 0;
  if (codec) *codec = NULL;
  int ow = fmt == NQ_MEDIA_VIDEO_MP4 ? w & ~1 : w, oh = fmt == NQ_MEDIA_VIDEO_MP4 ? h & ~1 : h;
  if (!rgb || n_frames < 1 || n_frames > 100000 || ow < 2 || oh < 2 || w > 16384 || h > 16384 || fps < 1 ||
      fps > 1000 || (int64_t)w * h > NQ_MEDIA_MAX_PIXELS)
    return nq_err_set(err, NQ_EINVAL, 0, "video encode: bad arguments (%d frames of %dx%d at %d fps)", n_frames, w, h,
                      fps);
  av_log_set_level(AV_LOG_QUIET);
  const AVCodec *enc = NULL;
  enum AVPixelFormat pix;
  const char *mux;
  if (fmt == NQ_MEDIA_VIDEO_GIF) {
    enc = avcodec_find_encoder(AV_CODEC_ID_GIF), pix = AV_PIX_FMT_RGB8, mux = "gif";
  } else {
    enc = avcodec_find_encoder_by_name("libx264");
    if (!enc) enc = avcodec_find_encoder(AV_CODEC_ID_H264);
    if (!enc) enc = avcodec_find_encoder(AV_CODEC_ID_MPEG4);
    pix = AV_PIX_FMT_YUV420P, mux = "mp4";
  }
  if (!enc) return nq_err_set(err, NQ_EUNSUPPORTED, 0, "video encode: libavcodec has no %s encoder", mux);
  char eb[128];
  int rc = 0;
  nq_mw__buf_t b = {0};
  AVFormatContext *fc = NULL;
  AVCodecContext *cc = NULL;
  AVIOContext *io = NULL;
  AVFrame *fr = NULL;
  AVPacket *pkt = NULL;
  struct SwsContext *sws = NULL;
  uint8_t *iobuf = NULL;
  if ((rc = avformat_alloc_output_context2(&fc, NULL, mux, NULL)) < 0 || !fc) {
    rc = nq_err_set(err, NQ_EUNSUPPORTED, 0, "video encode: no %s muxer", mux);
    goto out;
  }
  AVStream *st = avformat_new_stream(fc, NULL);
  if (!st || !(cc = avcodec_alloc_context3(enc)) || !(fr = av_frame_alloc()) || !(pkt = av_packet_alloc())) {
    rc = nq_err_set(err, NQ_ENOMEM, 0, "video encode: out of memory");
    goto out;
  }
  cc->width = ow, cc->height = oh, cc->pix_fmt = pix;
  cc->time_base = (AVRational){1, fps};
  cc->framerate = (AVRational){fps, 1};
  cc->gop_size = 12;
  if (fmt == NQ_MEDIA_VIDEO_MP4 && enc->id == AV_CODEC_ID_MPEG4) cc->bit_rate = 4000000, cc->qmax = 8;
  if (enc->id == AV_CODEC_ID_H264) {
    av_opt_set(cc->priv_data, "preset", "medium", 0);
    av_opt_set(cc->priv_data, "crf", "18", 0);
  }
  if (fc->oformat->flags & AVFMT_GLOBALHEADER) cc->flags |= AV_CODEC_FLAG_GLOBAL_HEADER;
  if ((rc = avcodec_open2(cc, enc, NULL)) < 0) {
    rc = nq_err_set(err, NQ_EIO, 0, "video encode: open %s: %s", enc->name, nq_mw__averr(rc, eb, sizeof eb));
    goto out;
  }
  if ((rc = avcodec_parameters_from_context(st->codecpar, cc)) < 0) {
    rc = nq_err_set(err, NQ_EIO, 0, "video encode: codec parameters: %s", nq_mw__averr(rc, eb, sizeof eb));
    goto out;
  }
  st->time_base = cc->time_base;
  st->avg_frame_rate = cc->framerate;
  if (!(iobuf = av_malloc(65536)) ||
      !(io = avio_alloc_context(iobuf, 65536, 1, &b, NULL, nq_mw__av_write, nq_mw__av_seek))) {
    av_free(iobuf);
    rc = nq_err_set(err, NQ_ENOMEM, 0, "video encode: out of memory");
    goto out;
  }
  iobuf = NULL; /* owned by io now */
  fc->pb = io;
  if ((rc = avformat_write_header(fc, NULL)) < 0) {
    rc = nq_err_set(err, NQ_EIO, 0, "video encode: %s header: %s", mux, nq_mw__averr(rc, eb, sizeof eb));
    goto out;
  }
  fr->format = pix, fr->width = ow, fr->height = oh;
  if ((rc = av_frame_get_buffer(fr, 0)) < 0 ||
      !(sws = sws_getContext(ow, oh, AV_PIX_FMT_RGB24, ow, oh, pix, SWS_BICUBIC, NULL, NULL, NULL))) {
    rc = nq_err_set(err, NQ_ENOMEM, 0, "video encode: frame buffers / swscale");
    goto out;
  }
  for (int i = 0; i < n_frames; i++) {
    if ((rc = av_frame_make_writable(fr)) < 0) break;
    const uint8_t *src[1] = {rgb + (size_t)i * (size_t)h * (size_t)w * 3};
    int stride[1] = {w * 3};
    sws_scale(sws, src, stride, 0, oh, fr->data, fr->linesize);
    fr->pts = i;
    if ((rc = nq_mw__encode(cc, fc, st, fr, pkt)) < 0) break;
  }
  if (rc >= 0) rc = nq_mw__encode(cc, fc, st, NULL, pkt);
  if (rc >= 0) rc = av_write_trailer(fc);
  if (rc < 0 || b.oom) {
    rc = nq_err_set(err, b.oom ? NQ_ENOMEM : NQ_EIO, 0, "video encode: %s: %s", enc->name,
                    nq_mw__averr(rc, eb, sizeof eb));
    goto out;
  }
  avio_flush(io);
  rc = 0;
  if (codec) *codec = enc->name;
out:
  if (io) {
    av_freep(&io->buffer);
    avio_context_free(&io);
  }
  if (fc) fc->pb = NULL, avformat_free_context(fc);
  avcodec_free_context(&cc);
  av_frame_free(&fr);
  av_packet_free(&pkt);
  sws_freeContext(sws);
  if (rc < 0) {
    free(b.d);
    return rc;
  }
  *out = b.d, *len = b.len;
  return 0;
}

/* datasets/media_video.c — video decoding (libavformat/libavcodec/libswscale, decord semantics) and
 * the ImageBind video transform. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/imgutils.h>
#include <libavutil/log.h>
#include <libswscale/swscale.h>

#include "datasets/media.h"

#define FATAL (NQ_ERR_FATAL)

static const char *dname(const char *name) { return name ? name : "<memory>"; }

static const char *averr(int e, char *buf, size_t n) {
  if (av_strerror(e, buf, n) < 0) snprintf(buf, n, "error %d", e);
  return buf;
}

/* ---- clip sampling ---------------------------------------------------------------------------- */

void nq_media_video_clip_range(int64_t n_frames, double fps, int k, int clips, int64_t *begin, int64_t *end) {
  /* pytorchvideo: duration = float(N) / float(fps); start = Fraction(max(duration - 2, 0)) * k / (clips-1)
   * (exact); get_clip: ceil(fps * float(start)), ceil(fps * float(start + 2)) in double. The exact
   * products fit in long double's 64-bit mantissa, so one rounding to double reproduces float(). */
  double d = (double)n_frames / fps;
  double x = d - 2.0;
  if (x < 0) x = 0;
  int den = clips > 1 ? clips - 1 : 1;
  long double st = (long double)x * k / den;
  double start = (double)st, stop = (double)(st + 2.0L);
  int64_t b = (int64_t)ceil(fps * start), e = (int64_t)ceil(fps * stop);
  if (e > n_frames) e = n_frames;
  *begin = b;
  *end = e;
}

int nq_media_video_frame_indices(const nq_media_video_info_t *info, int64_t idx[10], const char *name, nq_err_t *err) {
  for (int k = 0; k < NQ_MEDIA_VIDEO_CLIPS; k++) {
    int64_t b, e;
    nq_media_video_clip_range(info->n_frames, info->fps, k, NQ_MEDIA_VIDEO_CLIPS, &b, &e);
    if (b >= e || b < 0)
      return nq_err_set(err, NQ_EFORMAT, FATAL, "%s: video: clip %d has no frames (%lld frames at %g fps)",
                        dname(name), k, (long long)info->n_frames, info->fps);
    /* UniformTemporalSubsample(2): linspace(0, T-1, 2) -> first and last frame */
    idx[2 * k] = b;
    idx[2 * k + 1] = e - 1;
  }
  return 0;
}

/* ---- memory AVIO ------------------------------------------------------------------------------ */

typedef struct vmem {
  const uint8_t *p;
  int64_t len, pos;
} vmem_t;

static int vmem_read(void *opaque, uint8_t *buf, int n) {
  vmem_t *m = opaque;
  int64_t left = m->len - m->pos;
  if (left <= 0) return AVERROR_EOF;
  if (n > left) n = (int)left;
  memcpy(buf, m->p + m->pos, (size_t)n);
  m->pos += n;
  return n;
}

static int64_t vmem_seek(void *opaque, int64_t off, int whence) {
  vmem_t *m = opaque;
  if (whence == AVSEEK_SIZE) return m->len;
  whence &= ~AVSEEK_FORCE;
  int64_t base = whence == SEEK_SET ? 0 : whence == SEEK_CUR ? m->pos : whence == SEEK_END ? m->len : -1;
  if (base < 0) return AVERROR(EINVAL);
  int64_t np = base + off;
  if (np < 0 || np > m->len) return AVERROR(EINVAL);
  m->pos = np;
  return np;
}

typedef struct vctx {
  vmem_t mem;
  AVIOContext *avio;
  AVFormatContext *fmt;
  AVCodecContext *dec;
  int stream;
} vctx_t;

static void vctx_close(vctx_t *v) {
  if (v->dec) avcodec_free_context(&v->dec);
  if (v->fmt) avformat_close_input(&v->fmt);
  if (v->avio) {
    av_freep(&v->avio->buffer);
    avio_context_free(&v->avio);
  }
}

static int vctx_open(vctx_t *v, const void *buf, size_t len, const char *name, nq_media_video_info_t *info,
                     int open_decoder, nq_err_t *err) {
  char eb[128];
  memset(v, 0, sizeof *v);
  v->stream = -1;
  if (!buf || len == 0) return nq_err_set(err, NQ_EFORMAT, FATAL, "%s: empty video file", dname(name));
  av_log_set_level(AV_LOG_QUIET);
  v->mem.p = buf;
  v->mem.len = (int64_t)len;
  uint8_t *iobuf = av_malloc(32768);
  if (!iobuf) return nq_err_set(err, NQ_ENOMEM, 0, "%s: video: out of memory", dname(name));
  v->avio = avio_alloc_context(iobuf, 32768, 0, &v->mem, vmem_read, NULL, vmem_seek);
  if (!v->avio) {
    av_free(iobuf);
    return nq_err_set(err, NQ_ENOMEM, 0, "%s: video: out of memory", dname(name));
  }
  v->fmt = avformat_alloc_context();
  if (!v->fmt) {
    vctx_close(v);
    return nq_err_set(err, NQ_ENOMEM, 0, "%s: video: out of memory", dname(name));
  }
  v->fmt->pb = v->avio;
  v->fmt->flags |= AVFMT_FLAG_CUSTOM_IO;
  int rc = avformat_open_input(&v->fmt, NULL, NULL, NULL);
  if (rc < 0) {
    /* avformat_open_input frees fmt on failure */
    vctx_close(v);
    return nq_err_set(err, NQ_EFORMAT, FATAL, "%s: video: cannot open container (%s)", dname(name),
                      averr(rc, eb, sizeof eb));
  }
  rc = avformat_find_stream_info(v->fmt, NULL);
  if (rc < 0) {
    vctx_close(v);
    return nq_err_set(err, NQ_EFORMAT, FATAL, "%s: video: cannot read stream info (%s)", dname(name),
                      averr(rc, eb, sizeof eb));
  }
  const AVCodec *codec = NULL;
  rc = av_find_best_stream(v->fmt, AVMEDIA_TYPE_VIDEO, -1, -1, &codec, 0);
  if (rc < 0 || !codec) {
    vctx_close(v);
    return nq_err_set(err, NQ_EFORMAT, FATAL, "%s: video: no decodable video stream (%s)", dname(name),
                      rc < 0 ? averr(rc, eb, sizeof eb) : "no decoder");
  }
  v->stream = rc;
  AVStream *st = v->fmt->streams[v->stream];
  AVRational fr = st->avg_frame_rate;
  if (fr.num <= 0 || fr.den <= 0) fr = st->r_frame_rate;
  int w = st->codecpar->width, h = st->codecpar->height;
  if (w > 0 && h > 0 && (long long)w * h > NQ_MEDIA_MAX_PIXELS) {
    vctx_close(v);
    return nq_err_set(err, NQ_ELIMIT, FATAL, "%s: video: frame %dx%d exceeds the %lld-pixel limit", dname(name), w, h,
                      (long long)NQ_MEDIA_MAX_PIXELS);
  }
  if (fr.num <= 0 || fr.den <= 0 || w <= 0 || h <= 0) {
    vctx_close(v);
    return nq_err_set(err, NQ_EFORMAT, FATAL, "%s: video: bad stream header (%dx%d, %d/%d fps)", dname(name), w, h,
                      fr.num, fr.den);
  }
  info->w = w;
  info->h = h;
  info->fps_num = fr.num;
  info->fps_den = fr.den;
  info->fps = (double)fr.num / fr.den;
  /* decord: len = nb_frames, or fps * container duration when the header has none. */
  int64_t n = st->nb_frames;
  if (n < 1 && v->fmt->duration > 0) { /* in double first: a hostile duration must not overflow the cast */
    double dn = info->fps * (double)v->fmt->duration / AV_TIME_BASE;
    n = dn > (double)NQ_MEDIA_MAX_VIDEO_FRAMES ? NQ_MEDIA_MAX_VIDEO_FRAMES + 1 : (int64_t)dn;
  }
  if (n > NQ_MEDIA_MAX_VIDEO_FRAMES) {
    vctx_close(v);
    return nq_err_set(err, NQ_ELIMIT, FATAL, "%s: video: %lld frames exceeds the limit of %lld frames", dname(name),
                      (long long)n, (long long)NQ_MEDIA_MAX_VIDEO_FRAMES);
  }
  if (n < 1) {
    vctx_close(v);
    return nq_err_set(err, NQ_EFORMAT, FATAL, "%s: video: cannot determine the frame count", dname(name));
  }
  info->n_frames = n;
  info->duration = (double)n / info->fps;
  if (!open_decoder) return 0;
  v->dec = avcodec_alloc_context3(codec);
  if (!v->dec) {
    vctx_close(v);
    return nq_err_set(err, NQ_ENOMEM, 0, "%s: video: out of memory", dname(name));
  }
  rc = avcodec_parameters_to_context(v->dec, st->codecpar);
  if (rc >= 0) {
    v->dec->thread_count = 1;
    rc = avcodec_open2(v->dec, codec, NULL);
  }
  if (rc < 0) {
    vctx_close(v);
    return nq_err_set(err, NQ_EFORMAT, FATAL, "%s: video: cannot open %s decoder (%s)", dname(name), codec->name,
                      averr(rc, eb, sizeof eb));
  }
  return 0;
}

int nq_media_video_probe(const void *buf, size_t len, const char *name, nq_media_video_info_t *info, nq_err_t *err) {
  vctx_t v;
  memset(info, 0, sizeof *info);
  int rc = vctx_open(&v, buf, len, name, info, 0, err);
  if (rc) return rc;
  vctx_close(&v);
  return 0;
}

/* Convert one decoded frame to RGB24 at the stream size, as decord's "scale=W:H" + rgb24 sink. */
static int frame_to_rgb(const AVFrame *f, int w, int h, struct SwsContext **sws, nq_media_image_t *out) {
  *sws = sws_getCachedContext(*sws, f->width, f->height, f->format, w, h, AV_PIX_FMT_RGB24, SWS_BICUBIC, NULL, NULL,
                              NULL);
  if (!*sws) return -1;
  /* vf_scale passes the frame's matrix and range; an untagged stream keeps swscale's defaults
   * (BT.601, limited range for yuv, full for yuvj). */
  int cs = f->colorspace;
  int full = f->color_range == AVCOL_RANGE_JPEG;
  if ((cs != AVCOL_SPC_UNSPECIFIED && cs != AVCOL_SPC_RGB) || full) {
    int *inv, srcr, *tab, dstr, bri, con, sat;
    if (sws_getColorspaceDetails(*sws, &inv, &srcr, &tab, &dstr, &bri, &con, &sat) >= 0) {
      const int *coef = sws_getCoefficients(cs == AVCOL_SPC_UNSPECIFIED || cs == AVCOL_SPC_RGB ? SWS_CS_DEFAULT : cs);
      sws_setColorspaceDetails(*sws, coef, full ? 1 : srcr, tab, dstr, bri, con, sat);
    }
  }
  uint8_t *rgb = malloc((size_t)w * h * 3);
  if (!rgb) return -2;
  uint8_t *dst[4] = {rgb, NULL, NULL, NULL};
  int ls[4] = {w * 3, 0, 0, 0};
  if (sws_scale(*sws, (const uint8_t *const *)f->data, f->linesize, 0, f->height, dst, ls) != h) {
    free(rgb);
    return -1;
  }
  out->w = w, out->h = h, out->rgb = rgb;
  return 0;
}

/* Packet index, like decord's: display index d <-> the packet with the d-th smallest pts, and for
 * each d the key packet (decode order) to start decoding from, so that far-apart frames of a long
 * video cost a GOP each instead of a decode of everything in between. */
typedef struct vindex {
  int64_t n;          /* packets of the stream */
  int64_t *pts_sorted;/* [n] display order */
  int64_t *key_for;   /* [n] per display index: first packet (decode order) to feed */
} vindex_t;

static void vindex_free(vindex_t *ix) {
  free(ix->pts_sorted);
  free(ix->key_for);
  memset(ix, 0, sizeof *ix);
}

static int cmp_i64(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return x < y ? -1 : x > y;
}

typedef struct pts_pk {
  int64_t pts, pk;
} pts_pk_t;
static int cmp_pts_pk(const void *a, const void *b) {
  const pts_pk_t *x = a, *y = b;
  return x->pts < y->pts ? -1 : x->pts > y->pts;
}

/* Returns 0 with a usable index, 1 when the stream has no usable pts (fall back to counting
 * frames from the start), or a negative code on allocation failure. */
static int vindex_build(const void *buf, size_t len, vindex_t *ix) {
  vctx_t v;
  nq_media_video_info_t info;
  memset(ix, 0, sizeof *ix);
  if (vctx_open(&v, buf, len, NULL, &info, 0, NULL)) return 1;
  int64_t cap = 1024, n = 0;
  pts_pk_t *pp = malloc(sizeof *pp * cap);
  uint8_t *key = malloc((size_t)cap);
  AVPacket *pkt = av_packet_alloc();
  int ret = 0;
  if (!pp || !key || !pkt) {
    ret = NQ_ENOMEM;
    goto done;
  }
  while (av_read_frame(v.fmt, pkt) >= 0) {
    if (pkt->stream_index == v.stream) {
      if (pkt->pts == AV_NOPTS_VALUE || n >= (1LL << 31)) ret = 1;
      if (n == cap) {
        cap *= 2;
        pts_pk_t *np = realloc(pp, sizeof *pp * cap);
        uint8_t *nk = realloc(key, (size_t)cap);
        if (np) pp = np;
        if (nk) key = nk;
        if (!np || !nk) {
          av_packet_unref(pkt);
          ret = NQ_ENOMEM;
          goto done;
        }
      }
      pp[n].pts = pkt->pts;
      pp[n].pk = n;
      key[n] = (pkt->flags & AV_PKT_FLAG_KEY) != 0;
      n++;
    }
    av_packet_unref(pkt);
  }
  if (ret || n == 0) {
    ret = ret ? ret : 1;
    goto done;
  }
  qsort(pp, (size_t)n, sizeof *pp, cmp_pts_pk);
  for (int64_t d = 1; d < n; d++)
    if (pp[d].pts == pp[d - 1].pts) {
      ret = 1; /* duplicate pts: no well-defined order */
      goto done;
    }
  ix->n = n;
  ix->pts_sorted = malloc(sizeof(int64_t) * n);
  ix->key_for = malloc(sizeof(int64_t) * n);
  int64_t *disp_of = malloc(sizeof(int64_t) * n), *prev_key = malloc(sizeof(int64_t) * n);
  if (!ix->pts_sorted || !ix->key_for || !disp_of || !prev_key) {
    free(disp_of), free(prev_key);
    ret = NQ_ENOMEM;
    goto done;
  }
  for (int64_t d = 0; d < n; d++) {
    ix->pts_sorted[d] = pp[d].pts;
    disp_of[pp[d].pk] = d;
  }
  for (int64_t p = 0, last = 0; p < n; p++) {
    if (key[p]) last = p;
    prev_key[p] = last;
  }
  for (int64_t d = 0; d < n; d++) {
    int64_t k = prev_key[pp[d].pk];
    /* a leading picture of k (shown before it) may reference the previous GOP */
    while (k > 0 && disp_of[k] > d) k = prev_key[k - 1];
    ix->key_for[d] = k;
  }
  free(disp_of), free(prev_key);
done:
  av_packet_free(&pkt);
  free(pp);
  free(key);
  vctx_close(&v);
  if (ret) vindex_free(ix);
  return ret;
}

int nq_media_video_decode_frames(const void *buf, size_t len, const char *name, const int64_t *idx, int n_idx,
                                 nq_media_image_t *frames, nq_media_video_info_t *info_out, nq_err_t *err) {
  nq_media_video_info_t info;
  vctx_t v;
  vindex_t ix;
  char eb[128];
  for (int i = 0; i < n_idx; i++) memset(&frames[i], 0, sizeof frames[i]);
  if (n_idx <= 0) return 0;
  int rc = vctx_open(&v, buf, len, name, &info, 1, err);
  if (rc) return rc;
  if (info_out) *info_out = info;
  for (int i = 0; i < n_idx; i++)
    if (idx[i] < 0 || idx[i] >= info.n_frames) {
      vctx_close(&v);
      return nq_err_set(err, NQ_EINVAL, 0, "%s: video: frame %lld out of range (%lld frames)", dname(name),
                        (long long)idx[i], (long long)info.n_frames);
    }
  int ret = 0, mapped = 0;
  int64_t *tg = malloc(sizeof(int64_t) * n_idx); /* sorted unique targets */
  AVPacket *pkt = av_packet_alloc();
  AVFrame *fr = av_frame_alloc();
  struct SwsContext *sws = NULL;
  if (!tg || !pkt || !fr) {
    ret = nq_err_set(err, NQ_ENOMEM, 0, "%s: video: out of memory", dname(name));
    goto done;
  }
  memcpy(tg, idx, sizeof(int64_t) * n_idx);
  qsort(tg, (size_t)n_idx, sizeof *tg, cmp_i64);
  int nt = 0;
  for (int i = 0; i < n_idx; i++)
    if (nt == 0 || tg[nt - 1] != tg[i]) tg[nt++] = tg[i];
  rc = vindex_build(buf, len, &ix);
  if (rc < 0) {
    ret = nq_err_set(err, NQ_ENOMEM, 0, "%s: video: out of memory", dname(name));
    goto done;
  }
  mapped = rc == 0;
  if (mapped && tg[nt - 1] >= ix.n) {
    ret = nq_err_set(err, NQ_EFORMAT, FATAL, "%s: video: truncated or corrupt: %lld frames present, header says %lld, "
                     "frame %lld needed", dname(name), (long long)ix.n, (long long)info.n_frames, (long long)tg[nt - 1]);
    goto done;
  }
  int ti = 0;            /* first target not yet decoded */
  int64_t pk = -1;       /* packet number (decode order) */
  int64_t count = 0;     /* frames output so far (unmapped mode) */
  int fed = 0, need_flush = 0, eof = 0;
  while (ti < nt) {
    int r = avcodec_receive_frame(v.dec, fr);
    if (r == 0) {
      int64_t d = -1;
      if (mapped) {
        int64_t pts = fr->pts != AV_NOPTS_VALUE ? fr->pts : fr->best_effort_timestamp;
        const int64_t *hit = bsearch(&pts, ix.pts_sorted, (size_t)ix.n, sizeof(int64_t), cmp_i64);
        if (hit) d = hit - ix.pts_sorted;
      } else {
        d = count++;
      }
      int wanted = 0;
      for (int i = 0; i < n_idx; i++) {
        if (idx[i] != d || frames[i].rgb) continue;
        wanted = 1;
        int cr = frame_to_rgb(fr, info.w, info.h, &sws, &frames[i]);
        if (cr == -2) {
          ret = nq_err_set(err, NQ_ENOMEM, 0, "%s: video: out of memory", dname(name));
          goto done;
        }
        if (cr) {
          const char *pf = av_get_pix_fmt_name(fr->format);
          ret = nq_err_set(err, NQ_EFORMAT, FATAL, "%s: video: cannot convert frame %lld (format %s, %dx%d)",
                           dname(name), (long long)d, pf ? pf : "?", fr->width, fr->height);
          goto done;
        }
      }
      if (wanted)
        for (int j = ti; j < nt; j++)
          if (tg[j] == d) {
            if (j == ti) ti++;
            else tg[j] = -1; /* done out of order */
          }
      while (ti < nt && tg[ti] < 0) ti++;
      av_frame_unref(fr);
      continue;
    }
    if (r == AVERROR_EOF || eof) break;
    if (r != AVERROR(EAGAIN)) {
      ret = nq_err_set(err, NQ_EFORMAT, FATAL, "%s: video: decode error (%s)", dname(name), averr(r, eb, sizeof eb));
      goto done;
    }
    for (;;) {
      r = av_read_frame(v.fmt, pkt);
      if (r < 0) {
        if (r != AVERROR_EOF && r != AVERROR(EIO) && r != AVERROR_INVALIDDATA) {
          ret = nq_err_set(err, NQ_EFORMAT, FATAL, "%s: video: demux error (%s)", dname(name), averr(r, eb, sizeof eb));
          goto done;
        }
        avcodec_send_packet(v.dec, NULL); /* drain */
        eof = 1;
        break;
      }
      if (pkt->stream_index != v.stream) {
        av_packet_unref(pkt);
        continue;
      }
      pk++;
      if (mapped && pk < ix.key_for[tg[ti]]) { /* nothing needed before that key packet */
        av_packet_unref(pkt);
        if (fed) need_flush = 1;
        continue;
      }
      if (need_flush) {
        avcodec_flush_buffers(v.dec);
        need_flush = 0;
      }
      r = avcodec_send_packet(v.dec, pkt);
      av_packet_unref(pkt);
      fed = 1;
      if (r < 0 && r != AVERROR(EAGAIN) && r != AVERROR_INVALIDDATA) {
        ret = nq_err_set(err, NQ_EFORMAT, FATAL, "%s: video: decode error at packet %lld (%s)", dname(name),
                         (long long)pk, averr(r, eb, sizeof eb));
        goto done;
      }
      break;
    }
  }
  if (ti < nt)
    ret = nq_err_set(err, NQ_EFORMAT, FATAL, "%s: video: truncated or corrupt: frame %lld of %lld could not be decoded",
                     dname(name), (long long)tg[ti], (long long)info.n_frames);
done:
  if (mapped) vindex_free(&ix);
  free(tg);
  sws_freeContext(sws);
  av_frame_free(&fr);
  av_packet_free(&pkt);
  vctx_close(&v);
  if (ret)
    for (int i = 0; i < n_idx; i++) nq_media_image_deinit(&frames[i]);
  return ret;
}

/* ---- ImageBind video transform ---------------------------------------------------------------- */

static const double vmean[3] = {0.48145466, 0.4578275, 0.40821073};
static const double vstd[3] = {0.26862954, 0.26130258, 0.27577711};

/* torch bilinear (align_corners=False) source index table for one axis. */
static void lin_axis(int in, int out, int *i0, int *i1, double *l1) {
  double scale = (double)in / out;
  for (int d = 0; d < out; d++) {
    double s = scale * (d + 0.5) - 0.5;
    if (s < 0) s = 0;
    int a = (int)s;
    i0[d] = a;
    i1[d] = a + (a < in - 1 ? 1 : 0);
    l1[d] = s - a;
  }
}

int nq_media_video_transform(const nq_media_image_t *frames, float *out, nq_err_t *err) {
  const int S = NQ_MEDIA_IMG_SIZE, W = frames[0].w, H = frames[0].h;
  for (int i = 0; i < 2 * NQ_MEDIA_VIDEO_CLIPS; i++)
    if (!frames[i].rgb || frames[i].w != W || frames[i].h != H || W <= 0 || H <= 0)
      return nq_err_set(err, NQ_EINVAL, 0, "video transform: frame %d missing or of a different size", i);
  /* pytorchvideo ShortSideScale: long side floor(long / short * 224). */
  int nw, nh;
  if (W < H) {
    nw = S;
    nh = (int)floor((double)H / W * S);
  } else {
    nh = S;
    nw = (int)floor((double)W / H * S);
  }
  int *x0 = malloc(sizeof(int) * nw), *x1 = malloc(sizeof(int) * nw), *y0 = malloc(sizeof(int) * nh),
      *y1 = malloc(sizeof(int) * nh);
  double *lx = malloc(sizeof(double) * nw), *ly = malloc(sizeof(double) * nh);
  float *scaled = malloc(sizeof(float) * 3 * 2 * (size_t)nh * nw); /* [C,T,nh,nw] of one clip */
  int ret = 0;
  if (!x0 || !x1 || !y0 || !y1 || !lx || !ly || !scaled) {
    ret = nq_err_set(err, NQ_ENOMEM, 0, "video transform: out of memory");
    goto done;
  }
  lin_axis(W, nw, x0, x1, lx);
  lin_axis(H, nh, y0, y1, ly);
  /* SpatialCrop(224, 3): offsets 0, ceil((L-224)/2), L-224 along the long side; the other axis
   * uses ceil((l-224)/2) (0 when it is 224). Portrait when H > W. */
  int yo[3], xo[3];
  for (int c = 0; c < 3; c++) {
    yo[c] = (nh - S + 1) / 2;
    xo[c] = (nw - S + 1) / 2;
  }
  if (nh > nw) {
    yo[0] = 0;
    yo[2] = nh - S;
  } else {
    xo[0] = 0;
    xo[2] = nw - S;
  }
  const size_t plane = (size_t)S * S;
  for (int k = 0; k < NQ_MEDIA_VIDEO_CLIPS; k++) {
    for (int t = 0; t < 2; t++) {
      const uint8_t *src = frames[2 * k + t].rgb;
      for (int c = 0; c < 3; c++) {
        float *o = scaled + ((size_t)c * 2 + t) * nh * nw;
        for (int y = 0; y < nh; y++) {
          const uint8_t *r0 = src + (size_t)y0[y] * W * 3 + c, *r1 = src + (size_t)y1[y] * W * 3 + c;
          double b1 = ly[y], b0 = 1.0 - b1;
          for (int x = 0; x < nw; x++) {
            double a1 = lx[x], a0 = 1.0 - a1;
            double v = b0 * (a0 * (r0[3 * x0[x]] / 255.0) + a1 * (r0[3 * x1[x]] / 255.0)) +
                       b1 * (a0 * (r1[3 * x0[x]] / 255.0) + a1 * (r1[3 * x1[x]] / 255.0));
            o[(size_t)y * nw + x] = (float)((v - vmean[c]) / vstd[c]);
          }
        }
      }
    }
    for (int cr = 0; cr < 3; cr++) {
      float *o = out + (size_t)(k * 3 + cr) * 3 * 2 * plane;
      for (int ct = 0; ct < 6; ct++) {
        const float *s = scaled + (size_t)ct * nh * nw;
        for (int y = 0; y < S; y++)
          memcpy(o + (size_t)ct * plane + (size_t)y * S, s + (size_t)(y + yo[cr]) * nw + xo[cr], sizeof(float) * S);
      }
    }
  }
done:
  free(x0), free(x1), free(y0), free(y1), free(lx), free(ly), free(scaled);
  return ret;
}

int nq_media_video_preprocess_buf(const void *buf, size_t len, const char *name, float *out, nq_err_t *err) {
  nq_media_video_info_t info;
  int rc = nq_media_video_probe(buf, len, name, &info, err);
  if (rc) return rc;
  int64_t idx[2 * NQ_MEDIA_VIDEO_CLIPS];
  rc = nq_media_video_frame_indices(&info, idx, name, err);
  if (rc) return rc;
  nq_media_image_t fr[2 * NQ_MEDIA_VIDEO_CLIPS];
  rc = nq_media_video_decode_frames(buf, len, name, idx, 2 * NQ_MEDIA_VIDEO_CLIPS, fr, NULL, err);
  if (rc) return rc;
  rc = nq_media_video_transform(fr, out, err);
  for (int i = 0; i < 2 * NQ_MEDIA_VIDEO_CLIPS; i++) nq_media_image_deinit(&fr[i]);
  if (rc) nq_err_prefix(err, "%s", dname(name));
  return rc;
}

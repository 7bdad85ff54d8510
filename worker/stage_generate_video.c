/* worker/stage_generate_video.c — the `generate-video` stage: text, [77,1024] embeddings or NExT-GPT's video
 * hand-off -> ZeroScope (compute/pipelines/zeroscope.h) -> video.mp4 (H.264 when libavcodec has it, else MPEG-4) at
 * 8 fps, or video.gif with params.format "gif".
 *
 * Conditioning and model: worker/stage_generate_av.h. Params (NExT-GPT names in brackets): steps
 * [num_inference_steps_for_vid] (50), guidance_scale [guidance_scale_for_vid] (7.5), num_frames (24), height (320),
 * width (576), fps (8), seed (13), format mp4|gif.
 * Result: "video": {uri, frames, width, height, fps, codec}, "caption" (NExT-GPT), metrics {steps, n_steps, step_s,
 * t_total_s, source}.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "compute/pipelines/zeroscope.h"
#include "datasets/media.h"
#include "worker/stage_generate_av.h"
#include "worker/stages.h"

static int gv_open(const char *dir, const char *backends, int wdtype, void **out, nq_err_t *err) {
  nq_zeroscope_opts_t o;
  nq_zeroscope_opts_init(&o);
  o.backends = backends, o.wdtype = wdtype;
  return nq_zeroscope_open(dir, &o, (nq_zeroscope_t **)out, err);
}
static void gv_free(void *p) { nq_zeroscope_free(p); }

static int gv_init(void **state, const json_t *config, nq_err_t *err) {
  return nq_genav_init((nq_genav_state_t **)state, config, "generate-video", "NQ_ZEROSCOPE_MODEL", NQ_NG_VIDEO, gv_open,
                       gv_free, err);
}
static void gv_fini(void *state) { nq_genav_fini(state); }

static int gv_task(nq_genav_state_t *s, nq_task_ctx_t *t, nq_err_t *err) {
  const json_t *pa = t->env->params;
  double steps = 50, g = 7.5, frames = 24, h = 320, w = 576, fps = NQ_ZEROSCOPE_FPS, seed = 13;
  int rc;
  if ((rc = nq_genav_param_num(pa, "num_inference_steps_for_vid", 1, 1000, &steps, err)) ||
      (rc = nq_genav_param_num(pa, "steps", 1, 1000, &steps, err)) ||
      (rc = nq_genav_param_num(pa, "guidance_scale_for_vid", 0, 100, &g, err)) ||
      (rc = nq_genav_param_num(pa, "guidance_scale", 0, 100, &g, err)) ||
      (rc = nq_genav_param_num(pa, "num_frames", 1, 256, &frames, err)) ||
      (rc = nq_genav_param_num(pa, "height", 8, 4096, &h, err)) ||
      (rc = nq_genav_param_num(pa, "width", 8, 4096, &w, err)) ||
      (rc = nq_genav_param_num(pa, "fps", 1, 120, &fps, err)) ||
      (rc = nq_genav_param_num(pa, "seed", 0, 9007199254740992.0, &seed, err)))
    return nq_err_prefix(err, "generate-video");
  const char *fmt = json_string_value(json_object_get(pa, "format"));
  if (fmt && strcmp(fmt, "mp4") && strcmp(fmt, "gif"))
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "generate-video: params.format must be \"mp4\" or \"gif\"");
  bool gif = fmt && !strcmp(fmt, "gif");
  nq_zeroscope_t *p = nq_genav_pipe(s, t, err);
  if (!p) return err->code;
  nq_genav_cond_t c;
  if ((rc = nq_genav_cond_get(s, t, &c, err)) < 0) return rc;
  nq_zeroscope_req_t r;
  nq_zeroscope_req_init(&r);
  r.steps = (int)steps, r.guidance_scale = (float)g, r.num_frames = (int)frames, r.height = (int)h, r.width = (int)w;
  r.seed = (uint64_t)seed, r.text = c.text;
  if (c.embeds) {
    if (c.cols != nq_zeroscope_embed_dim(p)) {
      rc = nq_err_set(err, NQ_ESHAPE, NQ_ERR_FATAL, "generate-video: %s conditioning is %d x %d, want [77, %d]", c.source,
                      c.rows, c.cols, nq_zeroscope_embed_dim(p));
      goto out;
    }
    r.embeds = c.embeds, r.n_tokens = c.rows;
  }
  nq_genav_prog_t pg;
  nq_genav_prog_init(&pg);
  r.progress = nq_genav_prog_cb, r.progress_ud = &pg;
  double t0 = nq_genav_now();
  nq_zeroscope_out_t o;
  if ((rc = nq_zeroscope_generate(p, &r, &o, err)) < 0) {
    json_decref(pg.step_s);
    goto out;
  }
  double t1 = nq_genav_now();
  void *vid = NULL;
  size_t vlen = 0;
  const char *codec = NULL;
  rc = nq_media_video_encode(o.frames, o.n_frames, o.width, o.height, (int)fps,
                             gif ? NQ_MEDIA_VIDEO_GIF : NQ_MEDIA_VIDEO_MP4, &vid, &vlen, &codec, err);
  if (!rc) rc = nq_task_put(t, gif ? "video.gif" : "video.mp4", vid, vlen, err);
  free(vid);
  if (!rc) {
    json_t *last = json_array_get(t->outputs, json_array_size(t->outputs) - 1);
    json_object_set_new(t->result, "video",
                        json_pack("{s:O,s:i,s:i,s:i,s:i,s:s}", "uri", json_object_get(last, "uri"), "frames", o.n_frames,
                                  "width", o.width, "height", o.height, "fps", (int)fps, "codec", codec ? codec : ""));
    if (c.caption) json_object_set_new(t->result, "caption", json_string(c.caption));
    json_object_set_new(t->result, "metrics",
                        json_pack("{s:i,s:i,s:o,s:f,s:s}", "steps", pg.steps, "n_steps", pg.n_steps, "step_s",
                                  pg.step_s, "t_total_s", round((t1 - t0) * 1e3) / 1e3, "source", c.source));
  } else {
    json_decref(pg.step_s);
  }
  nq_zeroscope_out_deinit(&o);
out:
  nq_genav_cond_deinit(&c);
  return rc;
}

static void gv_run_batch(void *state, nq_task_ctx_t *t, int n) {
  for (int i = 0; i < n; i++) {
    nq_err_t e = {0};
    int rc = gv_task(state, &t[i], &e);
    if (rc < 0) {
      if (rc == NQ_ENOMEM) e.flags = NQ_ERR_RETRIABLE;
      else if (!(e.flags & NQ_ERR_RETRIABLE)) e.flags |= NQ_ERR_FATAL;
      t[i].err = e, t[i].rc = rc;
    }
  }
}

const nq_stage_t nq_stage_generate_video = {
    .name = "generate-video", .max_batch = 1, .init = gv_init, .run_batch = gv_run_batch, .fini = gv_fini};

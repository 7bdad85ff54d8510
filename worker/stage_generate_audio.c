/* worker/stage_generate_audio.c — the `generate-audio` stage: text, a 512-d embedding or NExT-GPT's audio hand-off ->
 * AudioLDM (compute/pipelines/audioldm.h) -> audio.wav (16 kHz mono, 16-bit PCM; params.wav "float" for float32).
 *
 * Conditioning and model: worker/stage_generate_av.h. Params (NExT-GPT names in brackets): steps
 * [num_inference_steps_for_aud] (50), guidance_scale [guidance_scale_for_aud] (7.5), audio_length_in_s (5.0), seed (13).
 * Result: "audio": {uri, sample_rate, samples, seconds, format}, "caption" (NExT-GPT), metrics {steps, n_steps,
 * step_s [per step], mel_frames, t_total_s, source}.
 * Errors: bad params / embeds of the wrong size / missing text encoder -> fatal; out of memory -> retriable.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "compute/pipelines/audioldm.h"
#include "datasets/media.h"
#include "worker/stage_generate_av.h"
#include "worker/stages.h"

static int ga_open(const char *dir, const char *backends, int wdtype, void **out, nq_err_t *err) {
  nq_audioldm_opts_t o;
  nq_audioldm_opts_init(&o);
  o.backends = backends, o.wdtype = wdtype;
  return nq_audioldm_open(dir, &o, (nq_audioldm_t **)out, err);
}
static void ga_free(void *p) { nq_audioldm_free(p); }

static int ga_init(void **state, const json_t *config, nq_err_t *err) {
  return nq_genav_init((nq_genav_state_t **)state, config, "generate-audio", "NQ_AUDIOLDM_MODEL", NQ_NG_AUDIO, ga_open,
                       ga_free, err);
}
static void ga_fini(void *state) { nq_genav_fini(state); }

static int ga_task(nq_genav_state_t *s, nq_task_ctx_t *t, nq_err_t *err) {
  const json_t *pa = t->env->params;
  double steps = 50, g = 7.5, len = 5.0, seed = 13;
  int rc;
  if ((rc = nq_genav_param_num(pa, "num_inference_steps_for_aud", 1, 1000, &steps, err)) ||
      (rc = nq_genav_param_num(pa, "steps", 1, 1000, &steps, err)) ||
      (rc = nq_genav_param_num(pa, "guidance_scale_for_aud", 0, 100, &g, err)) ||
      (rc = nq_genav_param_num(pa, "guidance_scale", 0, 100, &g, err)) ||
      (rc = nq_genav_param_num(pa, "audio_length_in_s", 1e-3, 600, &len, err)) ||
      (rc = nq_genav_param_num(pa, "seed", 0, 9007199254740992.0, &seed, err)))
    return nq_err_prefix(err, "generate-audio");
  const char *wf = json_string_value(json_object_get(pa, "wav"));
  if (wf && strcmp(wf, "pcm16") && strcmp(wf, "float"))
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "generate-audio: params.wav must be \"pcm16\" or \"float\"");
  nq_audioldm_t *p = nq_genav_pipe(s, t, err);
  if (!p) return err->code;
  nq_genav_cond_t c;
  if ((rc = nq_genav_cond_get(s, t, &c, err)) < 0) return rc;
  nq_audioldm_req_t r;
  nq_audioldm_req_init(&r);
  r.steps = (int)steps, r.guidance_scale = (float)g, r.audio_length_s = len, r.seed = (uint64_t)seed;
  r.text = c.text;
  if (c.embeds) {
    if (c.rows != 1) {
      rc = nq_err_set(err, NQ_ESHAPE, NQ_ERR_FATAL, "generate-audio: %s conditioning is %d x %d, want one row of %d",
                      c.source, c.rows, c.cols, nq_audioldm_embed_dim(p));
      goto out;
    }
    r.embeds = c.embeds, r.n_embeds = c.cols;
  }
  nq_genav_prog_t pg;
  nq_genav_prog_init(&pg);
  r.progress = nq_genav_prog_cb, r.progress_ud = &pg;
  double t0 = nq_genav_now();
  nq_audioldm_out_t o;
  if ((rc = nq_audioldm_generate(p, &r, &o, err)) < 0) {
    json_decref(pg.step_s);
    goto out;
  }
  double t1 = nq_genav_now();
  void *wav = NULL;
  size_t wlen = 0;
  bool flt = wf && !strcmp(wf, "float");
  rc = nq_media_wav_encode(o.samples, o.n_samples, 1, o.sample_rate, flt ? NQ_MEDIA_WAV_FLOAT : NQ_MEDIA_WAV_PCM16, &wav,
                           &wlen, err);
  if (!rc) rc = nq_task_put(t, "audio.wav", wav, wlen, err);
  free(wav);
  if (!rc) {
    json_t *last = json_array_get(t->outputs, json_array_size(t->outputs) - 1);
    json_object_set_new(t->result, "audio",
                        json_pack("{s:O,s:i,s:I,s:f,s:s}", "uri", json_object_get(last, "uri"), "sample_rate",
                                  o.sample_rate, "samples", (json_int_t)o.n_samples, "seconds",
                                  (double)o.n_samples / o.sample_rate, "format", flt ? "float32" : "pcm16"));
    if (c.caption) json_object_set_new(t->result, "caption", json_string(c.caption));
    json_object_set_new(t->result, "metrics",
                        json_pack("{s:i,s:i,s:o,s:i,s:f,s:s}", "steps", pg.steps, "n_steps", pg.n_steps, "step_s",
                                  pg.step_s, "mel_frames", o.mel_frames, "t_total_s", round((t1 - t0) * 1e3) / 1e3,
                                  "source", c.source));
  } else {
    json_decref(pg.step_s);
  }
  nq_audioldm_out_deinit(&o);
out:
  nq_genav_cond_deinit(&c);
  return rc;
}

static void ga_run_batch(void *state, nq_task_ctx_t *t, int n) {
  for (int i = 0; i < n; i++) {
    nq_err_t e = {0};
    int rc = ga_task(state, &t[i], &e);
    if (rc < 0) {
      if (rc == NQ_ENOMEM) e.flags = NQ_ERR_RETRIABLE;
      else if (!(e.flags & NQ_ERR_RETRIABLE)) e.flags |= NQ_ERR_FATAL;
      t[i].err = e, t[i].rc = rc;
    }
  }
}

const nq_stage_t nq_stage_generate_audio = {
    .name = "generate-audio", .max_batch = 1, .init = ga_init, .run_batch = ga_run_batch, .fini = ga_fini};

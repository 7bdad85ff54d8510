/* Scheduler configuration, the shared noise schedule, dispatch to ddim.c / pndm.c / euler.c, and the
 * classifier-free-guidance denoise loop (see scheduler.h). */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "compute/models/samplers/sched_int.h"

void nq_sched_config_init(nq_sched_config_t *c, nq_sched_kind_t kind) {
  memset(c, 0, sizeof(*c));
  c->kind = kind;
  c->num_train_timesteps = 1000;
  c->beta_start = 0.0001, c->beta_end = 0.02; /* diffusers' constructor defaults */
  c->beta_schedule = NQ_BETAS_LINEAR;
  c->steps_offset = 0;
  c->set_alpha_to_one = kind == NQ_SCHED_DDIM; /* DDIM default true; PNDM default false */
  c->skip_prk_steps = kind == NQ_SCHED_PNDM ? false : true;
  c->prediction_type = NQ_PRED_EPSILON;
  c->timestep_spacing = kind == NQ_SCHED_EULER ? NQ_SPACING_LINSPACE : NQ_SPACING_LEADING;
  c->clip_sample = kind == NQ_SCHED_DDIM;
  c->clip_sample_range = 1.0;
  c->eta = 0.0;
}

int nq_sched_kind_parse(const char *s) {
  if (!s) return -1;
  if (!strcasecmp(s, "ddim") || !strcmp(s, "DDIMScheduler")) return NQ_SCHED_DDIM;
  if (!strcasecmp(s, "pndm") || !strcasecmp(s, "plms") || !strcmp(s, "PNDMScheduler")) return NQ_SCHED_PNDM;
  if (!strcasecmp(s, "euler") || !strcmp(s, "EulerDiscreteScheduler")) return NQ_SCHED_EULER;
  return -1;
}

static int nq_sched__unsupported(const char *path, const char *key, const char *why, nq_err_t *err) {
  return nq_err_set(err, NQ_EUNSUPPORTED, NQ_ERR_FATAL, "%s: %s: %s", path, key, why);
}

int nq_sched_config_load(const char *path, const char *kind, nq_sched_config_t *c, nq_err_t *err) {
  json_error_t je;
  json_t *root = json_load_file(path, 0, &je);
  if (!root) return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s:%d: %s", path, je.line, je.text);
  int rc = 0, k = kind ? nq_sched_kind_parse(kind) : -1;
  const char *cls = json_string_value(json_object_get(root, "_class_name"));
  if (k < 0 && !kind) k = nq_sched_kind_parse(cls);
  if (k < 0 || !json_is_object(root)) {
    rc = nq_err_set(err, NQ_EUNSUPPORTED, NQ_ERR_FATAL, "%s: scheduler '%s' (ddim, pndm, euler)", path,
                    kind ? kind : cls ? cls : "?");
    goto out;
  }
  nq_sched_config_init(c, (nq_sched_kind_t)k);
  json_t *v;
  if ((v = json_object_get(root, "num_train_timesteps"))) {
    if (!json_is_integer(v) || json_integer_value(v) < 2 || json_integer_value(v) > 100000) {
      rc = nq_err_set(err, NQ_ECONFIG, NQ_ERR_FATAL, "%s: num_train_timesteps must be in [2, 100000]", path);
      goto out;
    }
    c->num_train_timesteps = (int)json_integer_value(v);
  }
  if ((v = json_object_get(root, "beta_start")) && json_is_number(v)) c->beta_start = json_number_value(v);
  if ((v = json_object_get(root, "beta_end")) && json_is_number(v)) c->beta_end = json_number_value(v);
  if (!(c->beta_start > 0 && c->beta_end > 0 && c->beta_start < 1 && c->beta_end < 1)) {
    rc = nq_err_set(err, NQ_ECONFIG, NQ_ERR_FATAL, "%s: beta_start/beta_end must be in (0, 1)", path);
    goto out;
  }
  const char *bs = json_string_value(json_object_get(root, "beta_schedule"));
  if (bs && !strcmp(bs, "scaled_linear")) c->beta_schedule = NQ_BETAS_SCALED_LINEAR;
  else if (bs && !strcmp(bs, "linear")) c->beta_schedule = NQ_BETAS_LINEAR;
  else if (bs) {
    rc = nq_sched__unsupported(path, "beta_schedule", bs, err);
    goto out;
  }
  if ((v = json_object_get(root, "trained_betas")) && !json_is_null(v)) {
    rc = nq_sched__unsupported(path, "trained_betas", "explicit betas are not implemented", err);
    goto out;
  }
  if ((v = json_object_get(root, "steps_offset")) && json_is_integer(v)) {
    if (json_integer_value(v) < 0 || json_integer_value(v) > 1000) {
      rc = nq_err_set(err, NQ_ECONFIG, NQ_ERR_FATAL, "%s: steps_offset out of range", path);
      goto out;
    }
    c->steps_offset = (int)json_integer_value(v);
  }
  if ((v = json_object_get(root, "set_alpha_to_one")) && json_is_boolean(v)) c->set_alpha_to_one = json_is_true(v);
  if ((v = json_object_get(root, "skip_prk_steps")) && json_is_boolean(v)) c->skip_prk_steps = json_is_true(v);
  if ((v = json_object_get(root, "clip_sample")) && json_is_boolean(v)) c->clip_sample = json_is_true(v);
  if ((v = json_object_get(root, "clip_sample_range")) && json_is_number(v))
    c->clip_sample_range = json_number_value(v);
  const char *pt = json_string_value(json_object_get(root, "prediction_type"));
  if (pt && !strcmp(pt, "epsilon")) c->prediction_type = NQ_PRED_EPSILON;
  else if (pt && !strcmp(pt, "v_prediction")) c->prediction_type = NQ_PRED_V;
  else if (pt) {
    rc = nq_sched__unsupported(path, "prediction_type", pt, err);
    goto out;
  }
  const char *sp = json_string_value(json_object_get(root, "timestep_spacing"));
  if (sp && !strcmp(sp, "leading")) c->timestep_spacing = NQ_SPACING_LEADING;
  else if (sp && !strcmp(sp, "trailing")) c->timestep_spacing = NQ_SPACING_TRAILING;
  else if (sp && !strcmp(sp, "linspace")) c->timestep_spacing = NQ_SPACING_LINSPACE;
  else if (sp) {
    rc = nq_sched__unsupported(path, "timestep_spacing", sp, err);
    goto out;
  }
  if (json_is_true(json_object_get(root, "thresholding")) && c->kind == NQ_SCHED_DDIM) {
    rc = nq_sched__unsupported(path, "thresholding", "dynamic thresholding is not implemented", err);
    goto out;
  }
  if (json_is_true(json_object_get(root, "rescale_betas_zero_snr"))) {
    rc = nq_sched__unsupported(path, "rescale_betas_zero_snr", "not implemented", err);
    goto out;
  }
  if (c->kind == NQ_SCHED_EULER) {
    if (json_is_true(json_object_get(root, "use_karras_sigmas"))) {
      rc = nq_sched__unsupported(path, "use_karras_sigmas", "not implemented", err);
      goto out;
    }
    const char *it = json_string_value(json_object_get(root, "interpolation_type"));
    if (it && strcmp(it, "linear")) {
      rc = nq_sched__unsupported(path, "interpolation_type", it, err);
      goto out;
    }
  }
  if (c->kind == NQ_SCHED_PNDM && !c->skip_prk_steps) {
    rc = nq_sched__unsupported(path, "skip_prk_steps", "false (Runge-Kutta warm-up) is not implemented", err);
    goto out;
  }
out:
  json_decref(root);
  return rc;
}

/* ---- schedule ---- */

/* torch.linspace(a, b, n, dtype=float32): float math, the second half counted back from the end. */
static float nq_sched__linspace_f32(float a, float b, int n, int i) {
  float step = (b - a) / (float)(n - 1);
  return i < n / 2 ? a + step * (float)i : b - step * (float)(n - 1 - i);
}

float nq_sched__alpha(const nq_sched_t *s, int64_t t) {
  if (t < 0) return s->final_alpha;
  if (t >= s->cfg.num_train_timesteps) t = s->cfg.num_train_timesteps - 1; /* defensive: never out of bounds */
  return s->alphas_cumprod[t];
}

void nq_sched__int_timesteps(const nq_sched_t *s, int64_t *ts) {
  const int T = s->cfg.num_train_timesteps, n = s->steps;
  switch (s->cfg.timestep_spacing) {
    case NQ_SPACING_LEADING: {
      int64_t r = T / n;
      for (int i = 0; i < n; i++) ts[i] = (int64_t)(n - 1 - i) * r + s->cfg.steps_offset;
      break;
    }
    case NQ_SPACING_TRAILING: {
      double r = (double)T / n; /* np.round(np.arange(T, 0, -r)) - 1 */
      for (int i = 0; i < n; i++) ts[i] = (int64_t)nearbyint((double)T - i * r) - 1;
      break;
    }
    default: {
      double step = (double)(T - 1) / (n > 1 ? n - 1 : 1); /* np.linspace(0, T-1, n).round()[::-1] */
      for (int i = 0; i < n; i++) {
        int k = n - 1 - i;
        ts[i] = (int64_t)nearbyint(k == n - 1 && n > 1 ? (double)(T - 1) : k * step);
      }
      break;
    }
  }
}

int nq_sched_new(const nq_sched_config_t *c, int steps, nq_sched_t **out, nq_err_t *err) {
  *out = NULL;
  if (steps < 1 || steps > c->num_train_timesteps)
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "scheduler: %d steps (want 1..%d)", steps, c->num_train_timesteps);
  if (c->eta != 0.0) return nq_err_set(err, NQ_EUNSUPPORTED, NQ_ERR_FATAL, "scheduler: eta %g (only 0)", c->eta);
  nq_sched_t *s = calloc(1, sizeof(*s));
  if (!s) return nq_err_set(err, NQ_ENOMEM, 0, "scheduler: out of memory");
  s->cfg = *c;
  s->steps = steps;
  const int T = c->num_train_timesteps;
  s->alphas_cumprod = malloc(sizeof(float) * (size_t)T);
  if (!s->alphas_cumprod) {
    nq_sched_free(s);
    return nq_err_set(err, NQ_ENOMEM, 0, "scheduler: out of memory");
  }
  double cum = 1.0; /* torch CPU cumprod accumulates float32 input in double */
  for (int t = 0; t < T; t++) {
    float beta;
    if (c->beta_schedule == NQ_BETAS_SCALED_LINEAR) {
      float b = nq_sched__linspace_f32((float)sqrt(c->beta_start), (float)sqrt(c->beta_end), T, t);
      beta = b * b;
    } else {
      beta = nq_sched__linspace_f32((float)c->beta_start, (float)c->beta_end, T, t);
    }
    float alpha = 1.0f - beta;
    cum *= (double)alpha;
    s->alphas_cumprod[t] = (float)cum;
  }
  s->final_alpha = c->set_alpha_to_one ? 1.0f : s->alphas_cumprod[0];
  s->init_sigma = 1.0f;
  int rc;
  switch (c->kind) {
    case NQ_SCHED_DDIM: rc = nq_sched__ddim_setup(s, err); break;
    case NQ_SCHED_PNDM: rc = nq_sched__pndm_setup(s, err); break;
    default: rc = nq_sched__euler_setup(s, err); break;
  }
  if (rc < 0) {
    nq_sched_free(s);
    return rc;
  }
  *out = s;
  return 0;
}

void nq_sched_reset(nq_sched_t *s) {
  for (int i = 0; i < 4; i++) free(s->ets[i]), s->ets[i] = NULL;
  free(s->cur_sample);
  s->cur_sample = NULL;
  s->n_ets = 0, s->counter = 0, s->n = 0;
}

void nq_sched_free(nq_sched_t *s) {
  if (!s) return;
  nq_sched_reset(s);
  free(s->alphas_cumprod);
  free(s->timesteps);
  free(s->sigmas);
  free(s);
}

int nq_sched_n_evals(const nq_sched_t *s) { return s->n_evals; }
float nq_sched_timestep(const nq_sched_t *s, int i) { return i >= 0 && i < s->n_evals ? s->timesteps[i] : NAN; }
float nq_sched_init_noise_sigma(const nq_sched_t *s) { return s->init_sigma; }
float nq_sched_sigma(const nq_sched_t *s, int i) {
  return s->sigmas && i >= 0 && i <= s->n_evals ? s->sigmas[i] : NAN;
}

void nq_sched_scale_model_input(const nq_sched_t *s, int i, float *x, int64_t n) {
  if (s->cfg.kind != NQ_SCHED_EULER || i < 0 || i >= s->n_evals) return;
  float sg = s->sigmas[i];
  float d = sqrtf(sg * sg + 1.0f); /* (sigma**2 + 1) ** 0.5 on a float32 0-d tensor */
  for (int64_t k = 0; k < n; k++) x[k] = (float)((double)x[k] / d);
}

int nq_sched_step(nq_sched_t *s, int i, const float *mo, float *x, int64_t n, nq_err_t *err) {
  if (i < 0 || i >= s->n_evals)
    return nq_err_set(err, NQ_EINVAL, 0, "scheduler: call %d outside 0..%d", i, s->n_evals - 1);
  switch (s->cfg.kind) {
    case NQ_SCHED_DDIM: return nq_sched__ddim_step(s, i, mo, x, n, err);
    case NQ_SCHED_PNDM: return nq_sched__pndm_step(s, i, mo, x, n, err);
    default: return nq_sched__euler_step(s, i, mo, x, n, err);
  }
}

/* ---- the loop ---- */

int nq_denoise_run(nq_sched_t *s, nq_denoise_eps_fn eps_fn, void *ud, nq_tensor_t *latents,
                   const nq_denoise_opts_t *opts, nq_err_t *err) {
  if (!latents || latents->dtype != NQ_DT_F32 || latents->ndim != 4 || !nq_tensor_is_contiguous(latents))
    return nq_err_set(err, NQ_ESHAPE, NQ_ERR_FATAL, "denoise: latents must be contiguous F32 [B,C,H,W]");
  const float g = opts ? opts->guidance_scale : 1.0f;
  const bool cfg = g > 1.0f;
  const int64_t B = latents->ne[0], per = nq_tensor_numel(latents), M = cfg ? 2 * B : B;
  nq_tensor_t xin = {0}, eo = {0};
  int rc = nq_tensor_init(&xin, NQ_DT_F32, 4, NQ_SHAPE(M, latents->ne[1], latents->ne[2], latents->ne[3]), err);
  if (rc == 0) rc = nq_tensor_init(&eo, NQ_DT_F32, 4, xin.ne, err);
  float *x = latents->data, *in = xin.data, *e = eo.data;
  nq_sched_reset(s);
  for (int i = 0; i < s->n_evals && rc == 0; i++) {
    float t = nq_sched_timestep(s, i);
    if (opts && opts->progress && opts->progress(opts->progress_ud, i, s->n_evals, t)) {
      rc = nq_err_set(err, NQ_ECANCELED, 0, "denoise: canceled at call %d of %d", i, s->n_evals);
      break;
    }
    memcpy(in, x, sizeof(float) * (size_t)per);
    if (cfg) memcpy(in + per, x, sizeof(float) * (size_t)per);
    nq_sched_scale_model_input(s, i, in, M / B * per);
    if ((rc = eps_fn(ud, &xin, t, &eo, err)) < 0) {
      nq_err_prefix(err, "denoise call %d (t=%g)", i, (double)t);
      break;
    }
    if (cfg) /* e = u + g (c - u), u = rows 0..B-1, c = rows B..2B-1 */
      for (int64_t k = 0; k < per; k++) e[k] = e[k] + g * (e[per + k] - e[k]);
    for (int64_t k = 0; k < per; k++)
      if (!isfinite(e[k])) {
        rc = nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "denoise call %d (t=%g): model output is not finite at %lld", i,
                        (double)t, (long long)k);
        break;
      }
    if (rc == 0) rc = nq_sched_step(s, i, e, x, per, err);
  }
  nq_tensor_deinit(&xin);
  nq_tensor_deinit(&eo);
  return rc;
}

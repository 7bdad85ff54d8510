/* DDIM (diffusers 0.21 DDIMScheduler), eta = 0: deterministic.
 *   t_prev = t - T // steps;  a = alphas_cumprod[t], a' = alphas_cumprod[t_prev] (final_alpha when t_prev < 0)
 *   epsilon: x0 = (x - sqrt(1-a) e) / sqrt(a),      e' = e
 *   v:       x0 = sqrt(a) x - sqrt(1-a) v,           e' = sqrt(a) v + sqrt(1-a) x
 *   x <- sqrt(a') x0 + sqrt(1-a') e'                 (x0 clamped to +-clip_sample_range when clip_sample) */
#include <math.h>
#include <stdlib.h>

#include "compute/models/samplers/sched_int.h"

int nq_sched__ddim_setup(nq_sched_t *s, nq_err_t *err) {
  s->n_evals = s->steps;
  s->timesteps = malloc(sizeof(float) * (size_t)s->steps);
  int64_t *ts = malloc(sizeof(int64_t) * (size_t)s->steps);
  if (!s->timesteps || !ts) {
    free(ts);
    return nq_err_set(err, NQ_ENOMEM, 0, "ddim: out of memory");
  }
  nq_sched__int_timesteps(s, ts);
  for (int i = 0; i < s->steps; i++) s->timesteps[i] = (float)ts[i];
  free(ts);
  return 0;
}

int nq_sched__ddim_step(nq_sched_t *s, int i, const float *e, float *x, int64_t n, nq_err_t *err) {
  const int64_t t = (int64_t)s->timesteps[i], prev = t - s->cfg.num_train_timesteps / s->steps;
  /* coefficients as float32 0-d tensors, like diffusers */
  const float a = nq_sched__alpha(s, t), ap = nq_sched__alpha(s, prev);
  const float sa = sqrtf(a), sb = sqrtf(1.0f - a), sap = sqrtf(ap), sbp = sqrtf(1.0f - ap);
  const double r = s->cfg.clip_sample_range;
  for (int64_t k = 0; k < n; k++) {
    double xv = x[k], ev = e[k], x0, pe;
    if (s->cfg.prediction_type == NQ_PRED_V) {
      x0 = sa * xv - sb * ev;
      pe = sa * ev + sb * xv;
    } else {
      x0 = (xv - sb * ev) / sa;
      pe = ev;
    }
    if (s->cfg.clip_sample) x0 = x0 < -r ? -r : x0 > r ? r : x0;
    x[k] = (float)(sap * x0 + sbp * pe);
  }
  return 0;
}

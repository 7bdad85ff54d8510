/* PNDM with skip_prk_steps = PLMS (diffusers 0.21 PNDMScheduler.step_plms).
 * Timesteps: the ascending spacing a_0 < ... < a_{n-1}, then [a_{n-1}, a_{n-2}, a_{n-2}, a_{n-3}, ..., a_0]: the
 * second timestep is evaluated twice, so a run makes steps + 1 model calls (1 when steps == 1).
 * Call 0 keeps e0 and x; call 1 re-steps from that x with (e0 + e1)/2 (e1 not kept); later calls use the
 * Adams-Bashforth combinations of the kept outputs: (3e - e')/2, (23e - 16e' + 5e'')/12,
 * (55e - 59e' + 37e'' - 9e''')/24. Update (formula (9) of the PNDM paper):
 *   x <- sqrt(a'/a) x - (a' - a) e / (a sqrt(1-a') + sqrt(a (1-a) a')) */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "compute/models/samplers/sched_int.h"

int nq_sched__pndm_setup(nq_sched_t *s, nq_err_t *err) {
  const int n = s->steps;
  s->n_evals = n >= 2 ? n + 1 : 1;
  s->timesteps = malloc(sizeof(float) * (size_t)s->n_evals);
  int64_t *ts = malloc(sizeof(int64_t) * (size_t)n);
  if (!s->timesteps || !ts) {
    free(ts);
    return nq_err_set(err, NQ_ENOMEM, 0, "pndm: out of memory");
  }
  nq_sched__int_timesteps(s, ts); /* descending */
  int k = 0;
  s->timesteps[k++] = (float)ts[0];
  if (n >= 2) {
    s->timesteps[k++] = (float)ts[1];
    for (int i = 1; i < n; i++) s->timesteps[k++] = (float)ts[i];
  }
  free(ts);
  return 0;
}

static void nq_pndm__prev_sample(const nq_sched_t *s, const float *sample, int64_t t, int64_t prev, const double *mo,
                                 float *x, int64_t n) {
  const float a = nq_sched__alpha(s, t), ap = nq_sched__alpha(s, prev);
  const float b = 1.0f - a, bp = 1.0f - ap;
  const float sa = sqrtf(a), sb = sqrtf(b);
  const float coeff = sqrtf(ap / a);
  const float denom = a * sqrtf(bp) + sqrtf(a * b * ap);
  const float diff = ap - a;
  for (int64_t k = 0; k < n; k++) {
    double m = mo[k];
    if (s->cfg.prediction_type == NQ_PRED_V) m = sa * m + sb * (double)sample[k];
    x[k] = (float)(coeff * (double)sample[k] - diff * m / denom);
  }
}

int nq_sched__pndm_step(nq_sched_t *s, int i, const float *e, float *x, int64_t n, nq_err_t *err) {
  if (s->n != n) { /* first call of a run, or a new latent size: fresh history */
    nq_sched_reset(s);
    s->n = n;
  }
  if (i != s->counter)
    return nq_err_set(err, NQ_EINVAL, 0, "pndm: call %d out of order (expected %d)", i, s->counter);
  const int64_t r = s->cfg.num_train_timesteps / s->steps;
  int64_t t = (int64_t)s->timesteps[i], prev = t - r;
  double *mo = malloc(sizeof(double) * (size_t)n);
  if (!mo) return nq_err_set(err, NQ_ENOMEM, 0, "pndm: out of memory");
  if (s->counter != 1) {
    if (s->n_ets == 4) { /* keep the last 3, then append */
      float *old = s->ets[0];
      memmove(s->ets, s->ets + 1, sizeof(float *) * 3);
      s->ets[3] = old;
      s->n_ets = 3;
    }
    if (!s->ets[s->n_ets] && !(s->ets[s->n_ets] = malloc(sizeof(float) * (size_t)n))) {
      free(mo);
      return nq_err_set(err, NQ_ENOMEM, 0, "pndm: out of memory");
    }
    memcpy(s->ets[s->n_ets++], e, sizeof(float) * (size_t)n);
  } else {
    prev = t;
    t = t + r;
  }
  float *const *E = s->ets;
  const int m = s->n_ets;
  const float *sample = x;
  if (m == 1 && s->counter == 0) {
    for (int64_t k = 0; k < n; k++) mo[k] = e[k];
    if (!s->cur_sample && !(s->cur_sample = malloc(sizeof(float) * (size_t)n))) {
      free(mo);
      return nq_err_set(err, NQ_ENOMEM, 0, "pndm: out of memory");
    }
    memcpy(s->cur_sample, x, sizeof(float) * (size_t)n);
  } else if (m == 1 && s->counter == 1) {
    for (int64_t k = 0; k < n; k++) mo[k] = ((double)e[k] + E[0][k]) / 2.0;
    sample = s->cur_sample;
  } else if (m == 2) {
    for (int64_t k = 0; k < n; k++) mo[k] = (3.0 * E[1][k] - E[0][k]) / 2.0;
  } else if (m == 3) {
    for (int64_t k = 0; k < n; k++) mo[k] = (23.0 * E[2][k] - 16.0 * E[1][k] + 5.0 * E[0][k]) / 12.0;
  } else {
    for (int64_t k = 0; k < n; k++)
      mo[k] = (1.0 / 24.0) * (55.0 * E[3][k] - 59.0 * E[2][k] + 37.0 * E[1][k] - 9.0 * E[0][k]);
  }
  nq_pndm__prev_sample(s, sample, t, prev, mo, x, n);
  free(mo);
  s->counter++;
  return 0;
}

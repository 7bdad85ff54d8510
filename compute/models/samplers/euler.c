/* Euler discrete (diffusers 0.21 EulerDiscreteScheduler), s_churn = 0 (no noise), linear sigma interpolation.
 *   sigma(t) = sqrt((1 - a_t) / a_t) on the integer grid (float32), np.interp at the (fractional) timesteps, then 0
 *   scale_model_input: x / sqrt(sigma_i^2 + 1)
 *   epsilon: x0 = x - sigma_i e;   v: x0 = e * (-sigma_i / sqrt(sigma_i^2 + 1)) + x / (sigma_i^2 + 1)
 *   x <- x + (x - x0) / sigma_i * (sigma_{i+1} - sigma_i) */
#include <math.h>
#include <stdlib.h>

#include "compute/models/samplers/sched_int.h"

int nq_sched__euler_setup(nq_sched_t *s, nq_err_t *err) {
  const int n = s->steps, T = s->cfg.num_train_timesteps;
  s->n_evals = n;
  s->timesteps = malloc(sizeof(float) * (size_t)n);
  s->sigmas = malloc(sizeof(float) * (size_t)(n + 1));
  double *td = malloc(sizeof(double) * (size_t)n);
  float *grid = malloc(sizeof(float) * (size_t)T);
  if (!s->timesteps || !s->sigmas || !td || !grid) {
    free(td), free(grid);
    return nq_err_set(err, NQ_ENOMEM, 0, "euler: out of memory");
  }
  if (s->cfg.timestep_spacing == NQ_SPACING_LINSPACE) {
    /* np.linspace(0, T-1, n)[::-1]: fractional, not rounded */
    double step = n > 1 ? (double)(T - 1) / (n - 1) : 0.0;
    for (int i = 0; i < n; i++) {
      int k = n - 1 - i;
      td[i] = (k == n - 1 && n > 1) ? (double)(T - 1) : k * step;
    }
  } else {
    int64_t *ts = malloc(sizeof(int64_t) * (size_t)n);
    if (!ts) {
      free(td), free(grid);
      return nq_err_set(err, NQ_ENOMEM, 0, "euler: out of memory");
    }
    nq_sched__int_timesteps(s, ts);
    for (int i = 0; i < n; i++) td[i] = (double)ts[i];
    free(ts);
  }
  for (int t = 0; t < T; t++) {
    float a = s->alphas_cumprod[t];
    grid[t] = sqrtf((1.0f - a) / a);
  }
  float mx = 0.0f;
  for (int i = 0; i < n; i++) {
    double x = td[i];
    if (x < 0) x = 0;
    if (x > T - 1) x = T - 1;
    int j = (int)floor(x);
    double v = j >= T - 1 ? grid[T - 1] : ((double)grid[j + 1] - grid[j]) / 1.0 * (x - j) + grid[j];
    s->sigmas[i] = (float)v;
    s->timesteps[i] = (float)td[i];
    if (s->sigmas[i] > mx) mx = s->sigmas[i];
  }
  s->sigmas[n] = 0.0f;
  s->init_sigma = s->cfg.timestep_spacing == NQ_SPACING_LEADING ? sqrtf(mx * mx + 1.0f) : mx;
  free(td), free(grid);
  return 0;
}

int nq_sched__euler_step(nq_sched_t *s, int i, const float *e, float *x, int64_t n, nq_err_t *err) {
  const float sg = s->sigmas[i], dt = s->sigmas[i + 1] - sg;
  const float c_out = -sg / sqrtf(sg * sg + 1.0f), c_in = sg * sg + 1.0f;
  for (int64_t k = 0; k < n; k++) {
    double xv = x[k], x0;
    if (s->cfg.prediction_type == NQ_PRED_V) x0 = e[k] * (double)c_out + xv / c_in;
    else x0 = xv - (double)sg * e[k];
    double d = (xv - x0) / sg;
    x[k] = (float)(xv + d * dt);
  }
  return 0;
}

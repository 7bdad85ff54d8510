/* compute/models/samplers/sched_int.h — private: the scheduler state shared by scheduler.c and the per-kind files
 * (ddim.c, pndm.c, euler.c). */
#ifndef NQ_COMPUTE_MODELS_SAMPLERS_SCHED_INT_H
#define NQ_COMPUTE_MODELS_SAMPLERS_SCHED_INT_H

#include "compute/models/samplers/scheduler.h"

struct nq_sched {
  nq_sched_config_t cfg;
  int steps;             /* inference steps */
  int n_evals;           /* model calls */
  float *alphas_cumprod; /* owned [num_train_timesteps] float32 */
  float final_alpha;     /* DDIM/PNDM: alpha_cumprod used when t_prev < 0 */
  float *timesteps;      /* owned [n_evals] */
  float *sigmas;         /* owned [n_evals + 1] (Euler) */
  float init_sigma;
  /* PLMS state */
  float *ets[4];         /* owned: the last model outputs kept (newest last), each n floats */
  int n_ets;
  float *cur_sample;     /* owned: x at the start of the first step */
  int64_t n;             /* latent size the state buffers hold */
  int counter;
};

int nq_sched__ddim_setup(nq_sched_t *s, nq_err_t *err);
int nq_sched__ddim_step(nq_sched_t *s, int i, const float *eps, float *x, int64_t n, nq_err_t *err);
int nq_sched__pndm_setup(nq_sched_t *s, nq_err_t *err);
int nq_sched__pndm_step(nq_sched_t *s, int i, const float *eps, float *x, int64_t n, nq_err_t *err);
int nq_sched__euler_setup(nq_sched_t *s, nq_err_t *err);
int nq_sched__euler_step(nq_sched_t *s, int i, const float *eps, float *x, int64_t n, nq_err_t *err);

/* The `steps` integer timesteps of a spacing, descending (leading adds steps_offset). */
void nq_sched__int_timesteps(const nq_sched_t *s, int64_t *ts /* OUT [steps] */);
/* alphas_cumprod[t], or final_alpha for t < 0. */
float nq_sched__alpha(const nq_sched_t *s, int64_t t);

#endif

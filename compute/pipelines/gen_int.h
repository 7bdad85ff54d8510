/* compute/pipelines/gen_int.h — private helpers shared by the audio/video generation pipelines (audioldm.c,
 * zeroscope.c): the initial-noise generator and the progress adapter. */
#ifndef NQ_COMPUTE_PIPELINES_GEN_INT_H
#define NQ_COMPUTE_PIPELINES_GEN_INT_H

#include <stdint.h>

#include "compute/pipelines/audioldm.h"

/* n standard normal floats from `seed`: the generator sd.h documents for nq_sd_randn (xoshiro256** seeded by
 * splitmix64, Box-Muller in double), so one seed means the same noise stream in every pipeline. NOT torch's. */
void nq_gen__randn(uint64_t seed, float *out /* OUT [n] */, int64_t n);

/* Adapts nq_gen_progress_cb to the scheduler's nq_denoise_progress_cb: the scheduler reports call i before it
 * runs; this reports steps done (i) of n. */
typedef struct nq_gen__progress {
  nq_gen_progress_cb cb; /* borrowed, may be NULL */
  void *ud;              /* borrowed */
} nq_gen__progress_t;
int nq_gen__progress_fn(void *ud, int call, int n_calls, float t);

#endif

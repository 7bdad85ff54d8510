/* compute/models/sampling.h — token sampling: greedy, temperature, top-k, top-p, seeded.
 *
 * The RNG and the order of operations are llama2.c's (run.c): xorshift64* state seeded with the
 * user seed; temperature 0 = argmax (first maximum); otherwise logits / T, softmax, one coin
 * random_f32() per token, then multinomial over all probabilities (top_p <= 0 or >= 1) or
 * llama2.c's top-p (drop p < (1 - top_p)/(n - 1), sort descending with qsort, cut at cumulative
 * > top_p, sample coin * cumulative). With the same seed this reproduces run.c's output exactly.
 * top_k > 0 (not in llama2.c) keeps the k most likely tokens before top-p.
 */
#ifndef NQ_COMPUTE_MODELS_SAMPLING_H
#define NQ_COMPUTE_MODELS_SAMPLING_H

#include <stdint.h>

#include "common/err.h"

typedef struct nq_sampling_params {
  float temperature; /* 0 = greedy */
  float top_p;       /* (0,1) enables nucleus sampling */
  int top_k;         /* 0 = off */
  uint64_t seed;
} nq_sampling_params_t;

typedef struct nq_prob_index {
  float prob;
  int index;
} nq_prob_index_t;

typedef struct nq_sampler {
  nq_sampling_params_t p;
  int vocab;
  uint64_t state;            /* xorshift state */
  nq_prob_index_t *scratch;  /* owned [vocab] */
} nq_sampler_t;

int nq_sampler_init(nq_sampler_t *s /* OUT */, int vocab, const nq_sampling_params_t *p, nq_err_t *err);
void nq_sampler_deinit(nq_sampler_t *s);
/* Samples from logits[vocab] (modified in place). */
int nq_sampler_sample(nq_sampler_t *s, float *logits);
int nq_sample_argmax(const float *logits, int n);
uint32_t nq_sampler_random_u32(uint64_t *state);
float nq_sampler_random_f32(uint64_t *state);

#endif

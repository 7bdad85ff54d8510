#include "compute/models/sampling.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

uint32_t nq_sampler_random_u32(uint64_t *state) {
  *state ^= *state >> 12;
  *state ^= *state << 25;
  *state ^= *state >> 27;
  return (uint32_t)((*state * 0x2545F4914F6CDD1Dull) >> 32);
}

float nq_sampler_random_f32(uint64_t *state) { return (float)(nq_sampler_random_u32(state) >> 8) / 16777216.0f; }

int nq_sampler_init(nq_sampler_t *s, int vocab, const nq_sampling_params_t *p, nq_err_t *err) {
  memset(s, 0, sizeof(*s));
  if (vocab < 1) return nq_err_set(err, NQ_EINVAL, 0, "sampler: vocab %d", vocab);
  if (p->temperature < 0 || !isfinite(p->temperature) || p->top_p < 0 || p->top_k < 0)
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "sampler: temperature %g top_p %g top_k %d", p->temperature,
                      p->top_p, p->top_k);
  s->p = *p;
  s->vocab = vocab;
  s->state = p->seed;
  s->scratch = malloc(sizeof(nq_prob_index_t) * (size_t)vocab);
  if (!s->scratch) return nq_err_set(err, NQ_ENOMEM, 0, "sampler: out of memory");
  return 0;
}

void nq_sampler_deinit(nq_sampler_t *s) {
  if (s) free(s->scratch), s->scratch = NULL;
}

int nq_sample_argmax(const float *x, int n) {
  int best = 0;
  for (int i = 1; i < n; i++)
    if (x[i] > x[best]) best = i;
  return best;
}

static void nq_sampler__softmax(float *x, int n) {
  float mx = x[0];
  for (int i = 1; i < n; i++)
    if (x[i] > mx) mx = x[i];
  float sum = 0.0f;
  for (int i = 0; i < n; i++) {
    x[i] = expf(x[i] - mx);
    sum += x[i];
  }
  for (int i = 0; i < n; i++) x[i] /= sum;
}

static int nq_sampler__cmp(const void *a, const void *b) {
  const nq_prob_index_t *x = a, *y = b;
  if (x->prob > y->prob) return -1;
  if (x->prob < y->prob) return 1;
  return 0;
}

static int nq_sampler__mult(const float *p, int n, float coin) {
  float cdf = 0.0f;
  for (int i = 0; i < n; i++) {
    cdf += p[i];
    if (coin < cdf) return i;
  }
  return n - 1;
}

static int nq_sampler__topp(const float *p, int n, float topp, nq_prob_index_t *pi, float coin) {
  int n0 = 0;
  const float cutoff = (1.0f - topp) / (float)(n - 1);
  for (int i = 0; i < n; i++)
    if (p[i] >= cutoff) pi[n0].index = i, pi[n0].prob = p[i], n0++;
  qsort(pi, (size_t)n0, sizeof(*pi), nq_sampler__cmp);
  float cum = 0.0f;
  int last = n0 - 1;
  for (int i = 0; i < n0; i++) {
    cum += pi[i].prob;
    if (cum > topp) {
      last = i;
      break;
    }
  }
  float r = coin * cum, cdf = 0.0f;
  for (int i = 0; i <= last; i++) {
    cdf += pi[i].prob;
    if (r < cdf) return pi[i].index;
  }
  return pi[last].index;
}

static void nq_sampler__topk(float *p, int n, int k, nq_prob_index_t *pi) {
  if (k <= 0 || k >= n) return;
  for (int i = 0; i < n; i++) pi[i].index = i, pi[i].prob = p[i];
  qsort(pi, (size_t)n, sizeof(*pi), nq_sampler__cmp);
  float kth = pi[k - 1].prob, sum = 0.0f;
  int kept = 0;
  for (int i = 0; i < n; i++) {
    if (p[i] >= kth && kept < k) kept++, sum += p[i];
    else p[i] = 0.0f;
  }
  for (int i = 0; i < n; i++) p[i] /= sum;
}

int nq_sampler_sample(nq_sampler_t *s, float *logits) {
  int n = s->vocab;
  if (s->p.temperature == 0.0f) return nq_sample_argmax(logits, n);
  for (int i = 0; i < n; i++) logits[i] /= s->p.temperature;
  nq_sampler__softmax(logits, n);
  float coin = nq_sampler_random_f32(&s->state);
  nq_sampler__topk(logits, n, s->p.top_k, s->scratch);
  if (s->p.top_p <= 0.0f || s->p.top_p >= 1.0f || n < 2) return nq_sampler__mult(logits, n, coin);
  return nq_sampler__topp(logits, n, s->p.top_p, s->scratch, coin);
}

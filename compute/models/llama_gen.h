/* compute/models/llama_gen.h — text generation over a LLaMA model: batched, continuous.
 *
 * The worker's `llm` stage calls:
 *
 *   nq_llm_t *llm; nq_llm_open("models/vicuna", NULL, NULL, &llm, &err);
 *   nq_gen_params_t p; nq_gen_params_init(&p); p.max_new_tokens = 150; p.sampling.temperature = 0.4f;
 *   nq_gen_result_t res[n];
 *   nq_llm_generate_batch(llm, prompts, n, &p, res, &err);   // res[i].text, .tokens, .hidden, .ms
 *   ... nq_gen_result_deinit(&res[i]) ...
 *
 * Up to p.max_batch sequences decode together in one forward per step; when one finishes its KV
 * slot is reset and refilled with the next prompt (its prefill rides in the same forward as the
 * others' decode steps). Greedy results are identical to running each prompt alone.
 */
#ifndef NQ_COMPUTE_MODELS_LLAMA_GEN_H
#define NQ_COMPUTE_MODELS_LLAMA_GEN_H

#include "compute/models/llama.h"
#include "compute/models/sampling.h"
#include "compute/tokenizers/sentencepiece.h"

typedef struct nq_llm {
  nq_llama_model_t *model;  /* owned */
  nq_sp_tokenizer_t *tok;   /* owned */
  bool llama2c_text;        /* llama2.c run.c text rules (piece after BOS loses its space; stop at BOS) */
} nq_llm_t;

/* model_path: llama2.c .bin (tokenizer_path: its tokenizer.bin, required) or HF dir (tokenizer_path NULL: the
 * dir's tokenizer.model + added_tokens.json). opts may be NULL. */
int nq_llm_open(const char *model_path, const char *tokenizer_path, const nq_llama_load_opts_t *opts,
                nq_llm_t **out /* OUT owned */, nq_err_t *err);
void nq_llm_free(nq_llm_t *llm);

typedef struct nq_gen_params {
  nq_sampling_params_t sampling;       /* temperature 0 = greedy */
  int max_new_tokens;                  /* default 256 */
  bool add_bos;                        /* default true (prompts as text) */
  bool stop_at_eos;                    /* default true (llama2.c files: stop at BOS like run.c) */
  const int32_t *stop_ids;             /* borrowed; generation ends after one of these (not kept) */
  int n_stop_ids;
  const char *const *stop_strings;     /* borrowed; text is cut before the first occurrence */
  int n_stop_strings;
  bool want_hidden;                    /* result.hidden[k] = final-norm state of the step whose input was token k */
  int max_batch;                       /* sequences decoded together (default 8) */
} nq_gen_params_t;

enum { NQ_GEN_STOP_MAX = 0, NQ_GEN_STOP_ID = 1, NQ_GEN_STOP_STRING = 2, NQ_GEN_STOP_CONTEXT = 3 };

typedef struct nq_gen_result {
  char *text;          /* owned: generated text only (no prompt, no BOS) */
  int32_t *tokens;     /* owned: generated ids (stop id excluded) */
  int n_tokens;
  int n_prompt;        /* prompt tokens incl. BOS */
  float *hidden;       /* owned [n_tokens, dim] when want_hidden, else NULL */
  double ms;           /* wall time from the sequence's prefill to its end */
  int stop_reason;     /* NQ_GEN_STOP_* */
} nq_gen_result_t;

void nq_gen_params_init(nq_gen_params_t *p);
void nq_gen_result_deinit(nq_gen_result_t *r);

int nq_llm_generate_batch(nq_llm_t *llm, const char *const *prompts, int n, const nq_gen_params_t *p,
                          nq_gen_result_t *out /* OUT [n] */, nq_err_t *err);
/* Same from token ids (add_bos ignored: ids are used as given). */
int nq_llm_generate_tokens(nq_llm_t *llm, const int32_t *const *prompt_ids, const int *n_prompt, int n,
                           const nq_gen_params_t *p, nq_gen_result_t *out /* OUT [n] */, nq_err_t *err);

#endif

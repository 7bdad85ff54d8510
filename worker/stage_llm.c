/* worker/stage_llm.c — the `llm` stage: prompt -> generated text (text.txt + the result's "text").
 *
 * Model: params.model / params.tokenizer of the task, else the worker's stage config
 * ({llm: {model: PATH, tokenizer: PATH}}), else $NQ_LLM_MODEL / $NQ_LLM_TOKENIZER. Loaded models are
 * cached per (model, tokenizer) for the life of the worker; one batch runs on a model at a time (its
 * generate call already decodes the whole batch together and uses every core).
 *
 * Task input: {"prompt": "..."} (or "text"); params: max_new_tokens (default 64), temperature (0 = greedy),
 * top_p, top_k, seed, stop (string or list of strings), max_prompt_tokens. Tasks with equal params are decoded
 * together.
 *
 * Prompt limit: the worker's stage config llm.max_prompt_tokens (or $NQ_LLM_MAX_PROMPT_TOKENS) caps the prompt
 * tokens (BOS included) of every task; params.max_prompt_tokens may only lower it. A longer prompt fails its own task
 * (NQ_ELIMIT, fatal, naming the count and the limit) and never the batch it was grouped with. Without either limit
 * only the model's context applies.
 *
 * NExT-GPT: with params.nextgpt (or {llm: {nextgpt: YAML}} / $NQ_NEXTGPT_MODEL) the task runs the NExT-GPT model
 * instead — encoded media from input.prev.encode, signal tokens, routing to generate-* (worker/nextgpt_stage.h).
 */
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "compute/models/llama_gen.h"
#include "worker/nextgpt_stage.h"
#include "worker/stages.h"

#define LLM_CACHE_MAX 4

typedef struct llm_entry {
  char *model, *tokenizer; /* owned keys */
  nq_llm_t *llm;           /* owned */
  pthread_mutex_t run_mu;  /* one generate at a time per model */
} llm_entry_t;

typedef struct llm_state {
  pthread_mutex_t mu;      /* guards the cache table */
  llm_entry_t e[LLM_CACHE_MAX];
  int n;
  char *def_model, *def_tok; /* owned, may be NULL */
  char *def_nextgpt;         /* owned, may be NULL: NExT-GPT model YAML (worker/nextgpt_stage.h) */
  long long max_prompt_tokens; /* worker cap on prompt tokens; 0 = none (model context only) */
  nq_ngcache_t *ng;          /* owned: NExT-GPT models (the NExT-GPT path of this stage) */
} llm_state_t;

static int llm_init(void **state, const json_t *config, nq_err_t *err) {
  llm_state_t *s = calloc(1, sizeof *s);
  if (!s) return nq_err_set(err, NQ_ENOMEM, NQ_ERR_FATAL, "llm: out of memory");
  pthread_mutex_init(&s->mu, NULL);
  const char *m = json_string_value(json_object_get(config, "model"));
  const char *t = json_string_value(json_object_get(config, "tokenizer"));
  if (!m) m = getenv("NQ_LLM_MODEL");
  if (!t) t = getenv("NQ_LLM_TOKENIZER");
  if (m && *m) s->def_model = strdup(m);
  if (t && *t) s->def_tok = strdup(t);
  const char *ngm = json_string_value(json_object_get(config, "nextgpt"));
  if (!ngm) ngm = getenv("NQ_NEXTGPT_MODEL");
  if (ngm && *ngm) s->def_nextgpt = strdup(ngm);
  json_t *mp = json_object_get(config, "max_prompt_tokens");
  const char *mpe = getenv("NQ_LLM_MAX_PROMPT_TOKENS");
  if (json_is_integer(mp) && json_integer_value(mp) > 0) s->max_prompt_tokens = json_integer_value(mp);
  else if (mp) {
    free(s->def_model), free(s->def_tok), free(s->def_nextgpt), free(s);
    return nq_err_set(err, NQ_ECONFIG, NQ_ERR_FATAL, "llm: stage config max_prompt_tokens must be a positive integer");
  } else if (mpe && *mpe) s->max_prompt_tokens = atoll(mpe) > 0 ? atoll(mpe) : 0;
  if (!(s->ng = nq_ngcache_new())) {
    free(s->def_model), free(s->def_tok), free(s->def_nextgpt), free(s);
    return nq_err_set(err, NQ_ENOMEM, NQ_ERR_FATAL, "llm: out of memory");
  }
  *state = s;
  return 0;
}

static void llm_fini(void *state) {
  llm_state_t *s = state;
  for (int i = 0; i < s->n; i++) {
    nq_llm_free(s->e[i].llm);
    free(s->e[i].model);
    free(s->e[i].tokenizer);
    pthread_mutex_destroy(&s->e[i].run_mu);
  }
  free(s->def_model);
  free(s->def_tok);
  free(s->def_nextgpt);
  nq_ngcache_free(s->ng);
  pthread_mutex_destroy(&s->mu);
  free(s);
}

/* Find or load; returns the entry (borrowed) or NULL with err set. */
static llm_entry_t *llm_get(llm_state_t *s, const char *model, const char *tok, nq_err_t *err) {
  pthread_mutex_lock(&s->mu);
  for (int i = 0; i < s->n; i++)
    if (strcmp(s->e[i].model, model) == 0 && strcmp(s->e[i].tokenizer, tok ? tok : "") == 0) {
      pthread_mutex_unlock(&s->mu);
      return &s->e[i];
    }
  if (s->n == LLM_CACHE_MAX) {
    pthread_mutex_unlock(&s->mu);
    nq_err_set(err, NQ_ELIMIT, NQ_ERR_RETRIABLE, "llm: more than %d models requested of one worker", LLM_CACHE_MAX);
    return NULL;
  }
  nq_llm_t *llm = NULL;
  if (nq_llm_open(model, tok, NULL, &llm, err) != 0) {
    pthread_mutex_unlock(&s->mu);
    err->flags = NQ_ERR_FATAL; /* a model that does not load will not load on retry either */
    nq_err_prefix(err, "llm: model %s", model);
    return NULL;
  }
  llm_entry_t *e = &s->e[s->n++];
  e->model = strdup(model);
  e->tokenizer = strdup(tok ? tok : "");
  e->llm = llm;
  pthread_mutex_init(&e->run_mu, NULL);
  pthread_mutex_unlock(&s->mu);
  NQ_INFO("llm", "loaded %s", model);
  return e;
}

static int params_of(const json_t *params, nq_gen_params_t *p, const char **stops, int *nstops, nq_err_t *err) {
  nq_gen_params_init(p);
  json_t *v;
  if ((v = json_object_get(params, "max_new_tokens"))) {
    if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 4096)
      return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "llm: params.max_new_tokens must be an integer in 1..4096");
    p->max_new_tokens = (int)json_integer_value(v);
  } else {
    p->max_new_tokens = 64;
  }
  if ((v = json_object_get(params, "max_prompt_tokens")) && (!json_is_integer(v) || json_integer_value(v) < 1))
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "llm: params.max_prompt_tokens must be a positive integer");
  if ((v = json_object_get(params, "temperature"))) {
    if (!json_is_number(v) || json_number_value(v) < 0 || json_number_value(v) > 100)
      return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "llm: params.temperature must be a number in 0..100");
    p->sampling.temperature = (float)json_number_value(v);
  }
  if ((v = json_object_get(params, "top_p"))) {
    if (!json_is_number(v)) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "llm: params.top_p must be a number");
    p->sampling.top_p = (float)json_number_value(v);
  }
  if ((v = json_object_get(params, "top_k"))) {
    if (!json_is_integer(v)) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "llm: params.top_k must be an integer");
    p->sampling.top_k = (int)json_integer_value(v);
  }
  if ((v = json_object_get(params, "seed"))) {
    if (!json_is_integer(v)) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "llm: params.seed must be an integer");
    p->sampling.seed = (uint64_t)json_integer_value(v);
  }
  *nstops = 0;
  v = json_object_get(params, "stop");
  if (json_is_string(v)) stops[(*nstops)++] = json_string_value(v);
  else if (json_is_array(v))
    for (size_t i = 0; i < json_array_size(v) && *nstops < 8; i++)
      if (json_is_string(json_array_get(v, i))) stops[(*nstops)++] = json_string_value(json_array_get(v, i));
  p->stop_strings = stops;
  p->n_stop_strings = *nstops;
  return 0;
}

static const char *prompt_of(const json_t *input) {
  const char *p = json_string_value(json_object_get(input, "prompt"));
  if (!p) p = json_string_value(json_object_get(input, "text"));
  return p;
}

static void llm_run_batch(void *state, nq_task_ctx_t *t, int n) {
  llm_state_t *s = state;
  int *done = calloc((size_t)n, sizeof *done);
  const char **prompts = calloc((size_t)n, sizeof *prompts);
  int *idx = calloc((size_t)n, sizeof *idx);
  nq_gen_result_t *res = calloc((size_t)n, sizeof *res);
  if (!done || !prompts || !idx || !res) {
    for (int i = 0; i < n; i++) nq_task_fail(&t[i], NQ_ENOMEM, NQ_ERR_RETRIABLE, "llm: out of memory");
    goto out;
  }
  for (int i = 0; i < n; i++) {
    if (done[i]) continue;
    /* group: same model, tokenizer and params as task i */
    const json_t *pi = t[i].env->params;
    const char *ngm = nq_ngstage_model(pi, s->def_nextgpt);
    if (ngm) { /* NExT-GPT model YAML: prompt + encoded media -> text + signal states (one task at a time) */
      nq_ngstage_llm_task(s->ng, &t[i], ngm);
      done[i] = 1;
      continue;
    }
    const char *model = json_string_value(json_object_get(pi, "model"));
    const char *tok = json_string_value(json_object_get(pi, "tokenizer"));
    if (!model) model = s->def_model, tok = tok ? tok : s->def_tok;
    if (!model) {
      nq_task_fail(&t[i], NQ_ECONFIG, NQ_ERR_FATAL,
                   "llm: no model: set params.model in the job or llm.model in the worker's stage_config");
      done[i] = 1;
      continue;
    }
    nq_gen_params_t gp;
    const char *stops[8];
    int nstops;
    nq_err_t err = {0};
    if (params_of(pi, &gp, stops, &nstops, &err) != 0) {
      t[i].err = err;
      t[i].rc = err.code;
      done[i] = 1;
      continue;
    }
    int m = 0;
    for (int j = i; j < n; j++) {
      if (done[j] || (j != i && !json_equal((json_t *)pi, (json_t *)t[j].env->params))) continue;
      const char *p = prompt_of(t[j].env->input);
      done[j] = 1;
      if (!p) {
        nq_task_fail(&t[j], NQ_EFORMAT, NQ_ERR_FATAL, "llm: task input has no \"prompt\" (or \"text\") string");
        continue;
      }
      prompts[m] = p;
      idx[m++] = j;
    }
    if (m == 0) continue;
    llm_entry_t *e = llm_get(s, model, tok, &err);
    if (!e) {
      for (int k = 0; k < m; k++) t[idx[k]].err = err, t[idx[k]].rc = err.code;
      continue;
    }
    /* prompt token limit: per task, so one long prompt fails only its own task */
    long long lim = s->max_prompt_tokens;
    json_t *pl = json_object_get(pi, "max_prompt_tokens");
    if (json_is_integer(pl) && json_integer_value(pl) > 0 && (!lim || json_integer_value(pl) < lim))
      lim = json_integer_value(pl);
    if (lim > 0) {
      int kept = 0;
      for (int k = 0; k < m; k++) {
        size_t bytes = strlen(prompts[k]);
        int ntok = 0;
        if (bytes + 2 > (size_t)lim) { /* SentencePiece gives at most one token per byte (+ BOS, dummy prefix) */
          int32_t *ids = NULL;
          nq_sp_encode_opts_t eo = {.add_bos = gp.add_bos, .add_dummy_prefix = -1};
          nq_err_t terr = {0};
          if (nq_sp_encode(e->llm->tok, prompts[k], bytes, &eo, &ids, &ntok, &terr) != 0) {
            t[idx[k]].err = terr, t[idx[k]].rc = terr.code;
            continue;
          }
          free(ids);
        }
        if (ntok > lim) {
          nq_task_fail(&t[idx[k]], NQ_ELIMIT, NQ_ERR_FATAL,
                       "llm: prompt of %d tokens exceeds max_prompt_tokens = %lld (task %s)", ntok, lim,
                       t[idx[k]].env->task);
          continue;
        }
        prompts[kept] = prompts[k], idx[kept++] = idx[k];
      }
      m = kept;
      if (m == 0) continue;
    }
    gp.max_batch = m < 16 ? m : 16;
    pthread_mutex_lock(&e->run_mu);
    int rc = nq_llm_generate_batch(e->llm, prompts, m, &gp, res, &err);
    pthread_mutex_unlock(&e->run_mu);
    for (int k = 0; k < m; k++) {
      nq_task_ctx_t *tk = &t[idx[k]];
      if (rc) {
        tk->err = err;
        tk->rc = err.code;
        continue;
      }
      nq_err_t perr = {0};
      const char *text = res[k].text ? res[k].text : "";
      if (nq_task_put(tk, "text.txt", text, strlen(text), &perr) != 0) {
        tk->err = perr;
        tk->rc = perr.code;
      } else {
        json_object_set_new(tk->result, "text", json_string(text));
        json_object_set_new(tk->result, "metrics",
                            json_pack("{s:i,s:i,s:f}", "prompt_tokens", res[k].n_prompt, "new_tokens", res[k].n_tokens,
                                      "gen_ms", res[k].ms));
      }
      nq_gen_result_deinit(&res[k]);
    }
  }
out:
  free(done);
  free(prompts);
  free(idx);
  free(res);
}

const nq_stage_t nq_stage_llm = {
    .name = "llm",
    .max_batch = 16,
    .init = llm_init,
    .run_batch = llm_run_batch,
    .fini = llm_fini,
};

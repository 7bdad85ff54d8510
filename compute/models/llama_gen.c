#include "compute/models/llama_gen.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

int nq_llm_open(const char *model_path, const char *tokenizer_path, const nq_llama_load_opts_t *opts, nq_llm_t **out,
                nq_err_t *err) {
  *out = NULL;
  nq_llm_t *llm = calloc(1, sizeof(*llm));
  if (!llm) return nq_err_set(err, NQ_ENOMEM, 0, "llm: out of memory");
  int rc = nq_llama_load(model_path, opts, &llm->model, err);
  if (!rc) {
    llm->llama2c_text = !strcmp(llm->model->format, "llama2c");
    const char *tp = tokenizer_path ? tokenizer_path : model_path;
    if (llm->llama2c_text && !tokenizer_path)
      rc = nq_err_set(err, NQ_EINVAL, 0, "%s: a llama2.c model needs --tokenizer (tokenizer.bin)", model_path);
    else
      rc = nq_sp_load(tp, llm->model->cfg.vocab_size, &llm->tok, err);
  }
  if (!rc && nq_sp_vocab_size(llm->tok) > llm->model->cfg.vocab_size)
    rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "tokenizer has %d pieces, model vocab is %d",
                    nq_sp_vocab_size(llm->tok), llm->model->cfg.vocab_size);
  if (rc) {
    nq_llm_free(llm);
    return rc;
  }
  *out = llm;
  return 0;
}

void nq_llm_free(nq_llm_t *llm) {
  if (!llm) return;
  nq_llama_free(llm->model);
  nq_sp_free(llm->tok);
  free(llm);
}

void nq_gen_params_init(nq_gen_params_t *p) {
  memset(p, 0, sizeof(*p));
  p->sampling.temperature = 1.0f;
  p->sampling.top_p = 0.9f;
  p->max_new_tokens = 256;
  p->add_bos = true;
  p->stop_at_eos = true;
  p->max_batch = 8;
}

void nq_gen_result_deinit(nq_gen_result_t *r) {
  if (!r) return;
  free(r->text), free(r->tokens), free(r->hidden);
  memset(r, 0, sizeof(*r));
}

static double nq_gen__now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

typedef struct {
  int seq;            /* index into prompts, -1 = free */
  int phase;          /* 0 prefill pending, 1 decoding, 2 final feed for hidden */
  int n_hidden;
  int cap;
  nq_sampler_t sampler;
  int32_t prev;       /* last token fed/produced (text rule) */
  char *text;         /* growing decoded text */
  size_t text_len, text_cap;
  double t0;
} nq_gen__slot_t;

static int nq_gen__append_text(nq_gen__slot_t *s, const char *piece, size_t n) {
  if (s->text_len + n + 1 > s->text_cap) {
    size_t nc = (s->text_len + n + 1) * 2;
    char *t = realloc(s->text, nc);
    if (!t) return NQ_ENOMEM;
    s->text = t, s->text_cap = nc;
  }
  memcpy(s->text + s->text_len, piece, n);
  s->text_len += n;
  s->text[s->text_len] = 0;
  return 0;
}

int nq_llm_generate_tokens(nq_llm_t *llm, const int32_t *const *prompt_ids, const int *n_prompt, int n,
                           const nq_gen_params_t *p, nq_gen_result_t *out, nq_err_t *err) {
  nq_llama_model_t *m = llm->model;
  const int V = m->cfg.vocab_size, D = m->cfg.dim;
  memset(out, 0, sizeof(*out) * (size_t)n);
  if (n <= 0) return 0;
  int max_new = p->max_new_tokens > 0 ? p->max_new_tokens : 256;
  int max_prompt = 1;
  for (int i = 0; i < n; i++) {
    if (n_prompt[i] < 1) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "llm: prompt %d is empty", i);
    for (int k = 0; k < n_prompt[i]; k++) /* ids index the embedding table: never trust them */
      if (prompt_ids[i][k] < 0 || prompt_ids[i][k] >= V)
        return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "llm: prompt %d token %d: id %d outside the vocabulary of %d", i,
                          k, (int)prompt_ids[i][k], V);
    if (n_prompt[i] > max_prompt) max_prompt = n_prompt[i];
  }
  int max_ctx = max_prompt + max_new + 1;
  if (max_ctx > m->cfg.max_ctx) max_ctx = m->cfg.max_ctx;
  if (max_prompt >= max_ctx)
    return nq_err_set(err, NQ_ELIMIT, NQ_ERR_FATAL, "llm: prompt of %d tokens does not fit the context of %d", max_prompt,
                      m->cfg.max_ctx);
  int S = p->max_batch > 0 ? p->max_batch : 8;
  if (S > n) S = n;
  nq_llama_kv_t *kv = nq_llama_kv_new(m, S, max_ctx, err);
  if (!kv) return err ? err->code : NQ_ENOMEM;
  nq_gen__slot_t *sl = calloc((size_t)S, sizeof(*sl));
  int *bslot = malloc(sizeof(int) * (size_t)S), *bn = malloc(sizeof(int) * (size_t)S), *bseq = malloc(sizeof(int) * (size_t)S);
  int32_t *btok = malloc(sizeof(int32_t) * (size_t)(S * max_ctx));
  float *logits = malloc(sizeof(float) * (size_t)S * (size_t)V);
  float *hidden = p->want_hidden ? malloc(sizeof(float) * (size_t)S * (size_t)D) : NULL;
  int rc = 0;
  if (!sl || !bslot || !bn || !bseq || !btok || !logits || (p->want_hidden && !hidden))
    rc = nq_err_set(err, NQ_ENOMEM, 0, "llm: out of memory for %d slots", S);
  for (int i = 0; i < S && sl; i++) sl[i].seq = -1;
  int next = 0, active = 0;
  char piece[512];
  while (!rc && (next < n || active > 0)) {
    /* refill free slots */
    for (int i = 0; i < S && next < n; i++) {
      if (sl[i].seq >= 0) continue;
      nq_gen__slot_t *s = &sl[i];
      s->seq = next++;
      s->phase = 0;
      s->n_hidden = 0;
      s->text_len = 0;
      s->t0 = nq_gen__now_ms();
      nq_llama_kv_reset(kv, i);
      nq_gen_result_t *r = &out[s->seq];
      r->n_prompt = n_prompt[s->seq];
      r->tokens = malloc(sizeof(int32_t) * (size_t)(max_new + 1));
      r->hidden = p->want_hidden ? malloc(sizeof(float) * (size_t)(max_new + 1) * (size_t)D) : NULL;
      if (!r->tokens || (p->want_hidden && !r->hidden)) rc = nq_err_set(err, NQ_ENOMEM, 0, "llm: out of memory");
      nq_sampling_params_t sp = p->sampling;
      if ((rc = rc ? rc : nq_sampler_init(&s->sampler, V, &sp, err)) < 0) break;
      s->prev = prompt_ids[s->seq][n_prompt[s->seq] - 1];
      active++;
    }
    if (rc) break;
    /* build the batch */
    int ns = 0, nt = 0;
    for (int i = 0; i < S; i++) {
      nq_gen__slot_t *s = &sl[i];
      if (s->seq < 0) continue;
      bslot[ns] = i, bseq[ns] = s->seq;
      if (s->phase == 0) {
        memcpy(btok + nt, prompt_ids[s->seq], sizeof(int32_t) * (size_t)n_prompt[s->seq]);
        bn[ns] = n_prompt[s->seq];
      } else {
        btok[nt] = out[s->seq].tokens[out[s->seq].n_tokens - 1];
        bn[ns] = 1;
      }
      nt += bn[ns++];
    }
    nq_llama_batch_t b = {.n_seq = ns, .slot = bslot, .n_tokens = bn, .tokens = btok, .logits = logits, .hidden = hidden};
    if ((rc = nq_llama_forward(m, kv, &b, err)) < 0) break;
    for (int j = 0; j < ns; j++) {
      nq_gen__slot_t *s = &sl[bslot[j]];
      nq_gen_result_t *r = &out[s->seq];
      if (p->want_hidden && s->phase != 0)
        memcpy(r->hidden + (size_t)s->n_hidden++ * (size_t)D, hidden + (size_t)j * (size_t)D, sizeof(float) * (size_t)D);
      int done = -1;
      if (s->phase == 2) {
        done = r->stop_reason;
      } else {
        s->phase = 1;
        int tok = nq_sampler_sample(&s->sampler, logits + (size_t)j * (size_t)V);
        bool stop = false;
        for (int k = 0; k < p->n_stop_ids; k++) stop |= tok == p->stop_ids[k];
        if (p->stop_at_eos) stop |= llm->llama2c_text ? tok == m->cfg.bos_id : tok == m->cfg.eos_id;
        if (stop) {
          done = NQ_GEN_STOP_ID;
        } else {
          r->tokens[r->n_tokens++] = tok;
          size_t pl = llm->llama2c_text ? nq_sp_decode_piece(llm->tok, s->prev, tok, piece, sizeof piece) : 0;
          if (llm->llama2c_text && (rc = nq_gen__append_text(s, piece, pl)) < 0) break;
          s->prev = tok;
          if (p->n_stop_strings && !llm->llama2c_text) {
            free(s->text);
            s->text = nq_sp_decode(llm->tok, r->tokens, r->n_tokens, true);
            s->text_len = s->text ? strlen(s->text) : 0;
            s->text_cap = s->text_len + 1;
          }
          for (int k = 0; k < p->n_stop_strings && s->text; k++) {
            char *hit = strstr(s->text, p->stop_strings[k]);
            if (hit) {
              *hit = 0;
              s->text_len = (size_t)(hit - s->text);
              done = NQ_GEN_STOP_STRING;
              break;
            }
          }
          if (done < 0 && r->n_tokens >= max_new) done = NQ_GEN_STOP_MAX;
          if (done < 0 && kv->pos[bslot[j]] + 1 >= kv->max_ctx) done = NQ_GEN_STOP_CONTEXT;
          if (done >= 0 && p->want_hidden && s->n_hidden < r->n_tokens && kv->pos[bslot[j]] < kv->max_ctx) {
            r->stop_reason = done; /* one more forward to get the last token's state */
            s->phase = 2;
            done = -1;
          }
        }
      }
      if (done >= 0) {
        r->stop_reason = done;
        r->ms = nq_gen__now_ms() - s->t0;
        if (llm->llama2c_text || p->n_stop_strings) {
          r->text = s->text ? s->text : strdup("");
          s->text = NULL;
          s->text_cap = 0;
        } else {
          r->text = nq_sp_decode(llm->tok, r->tokens, r->n_tokens, true);
        }
        if (!r->text) rc = nq_err_set(err, NQ_ENOMEM, 0, "llm: out of memory");
        nq_sampler_deinit(&s->sampler);
        s->seq = -1;
        active--;
      }
    }
  }
  for (int i = 0; sl && i < S; i++) {
    nq_sampler_deinit(&sl[i].sampler);
    free(sl[i].text);
  }
  free(sl), free(bslot), free(bn), free(bseq), free(btok), free(logits), free(hidden);
  nq_llama_kv_free(kv);
  if (rc)
    for (int i = 0; i < n; i++) nq_gen_result_deinit(&out[i]);
  return rc;
}

int nq_llm_generate_batch(nq_llm_t *llm, const char *const *prompts, int n, const nq_gen_params_t *p,
                          nq_gen_result_t *out, nq_err_t *err) {
  int32_t **ids = calloc((size_t)(n > 0 ? n : 1), sizeof(int32_t *));
  int *nids = calloc((size_t)(n > 0 ? n : 1), sizeof(int));
  int rc = (!ids || !nids) ? nq_err_set(err, NQ_ENOMEM, 0, "llm: out of memory") : 0;
  nq_sp_encode_opts_t eo = {.add_bos = p->add_bos, .add_dummy_prefix = -1};
  for (int i = 0; i < n && !rc; i++) {
    rc = nq_sp_encode(llm->tok, prompts[i], strlen(prompts[i]), &eo, &ids[i], &nids[i], err);
    if (!rc && nids[i] == 0) {
      /* nothing to condition on: start from BOS */
      ids[i][0] = (int32_t)nq_sp_bos(llm->tok);
      nids[i] = 1;
    }
  }
  if (!rc) rc = nq_llm_generate_tokens(llm, (const int32_t *const *)ids, nids, n, p, out, err);
  for (int i = 0; ids && i < n; i++) free(ids[i]);
  free(ids), free(nids);
  return rc;
}

/* scheduler/caption_metrics.h — corpus BLEU-4 and CIDEr-D of generated captions against reference captions, as
 * the COCO caption evaluation (pycocoevalcap: bleu_scorer.py, cider_scorer.py with the CIDEr-D settings) computes
 * them. Used by the `eval` job kind: the scheduler's finalize step aggregates the per-task {"hyp", "refs"} the llm
 * stage attaches to its result and writes `<job>/_eval.json` (scheduler.c).
 *
 *   nq_capmetrics_t *m = nq_capmetrics_new();
 *   nq_capmetrics_add(m, "a dog runs", (const char *[]){"a dog is running", "the dog runs"}, 2, &err);
 *   nq_capmetrics_scores_t s;  nq_capmetrics_compute(m, &s, &err);   // s.bleu[3] = BLEU-4, s.cider_d
 *   nq_capmetrics_free(m);
 *
 * Tokenisation (approximates the PTBTokenizer step of pycocoevalcap): ASCII letters lowercased, the punctuation
 * the COCO tokenizer removes ('' ' `` ` ( ) { } [ ] . ? ! , : - ; ...) and '"' become spaces, then split on
 * white space. Other bytes (UTF-8) are kept as they are.
 *
 * BLEU (bleu_scorer.py, option "closest"): per hypothesis the clipped n-gram matches (n = 1..4, clipped by the
 * maximum count over its references) and the guesses max(0, len-n+1); the reference length is the one closest to
 * the hypothesis length (ties: the shorter). Corpus: BLEU-n = (prod_{k<=n} (correct_k + 1e-15)/(guess_k + 1e-9))^(1/n)
 * times the brevity penalty exp(1 - reflen/testlen) when testlen < reflen (ratio with the same 1e-15 / 1e-9).
 *
 * CIDEr-D (cider_scorer.py, n = 4, sigma = 6): document frequency df(g) = number of items whose references contain
 * n-gram g; weight of g in a sentence = tf(g) * (log(N_items) - log(max(1, df(g)))); per n the cosine-like
 * similarity sum_g min(h_g, r_g) * r_g / (|h| |r|) (0 when either norm is 0), times exp(-(lh - lr)^2 / (2 sigma^2))
 * where l = the number of bigrams of the sentence (as cider_scorer.py counts it). Item score = mean over n, summed
 * over the references, divided by their count, times 10; the corpus score is the mean over items. With a single
 * item every weight is 0 (log 1 = 0), so CIDEr-D is 0.
 */
#ifndef NQ_SCHEDULER_CAPTION_METRICS_H
#define NQ_SCHEDULER_CAPTION_METRICS_H

#include <stddef.h>

#include "common/err.h"

#define NQ_CAPMETRICS_MAX_WORDS 4096   /* tokens per sentence (longer sentences are refused) */
#define NQ_CAPMETRICS_MAX_REFS 256     /* references per item */

typedef struct nq_capmetrics nq_capmetrics_t;

typedef struct nq_capmetrics_scores {
  double bleu[4];      /* BLEU-1..4 (corpus) */
  double cider_d;      /* CIDEr-D (corpus mean) */
  long long n_items;   /* items scored */
  long long testlen, reflen; /* BLEU lengths (words) */
} nq_capmetrics_scores_t;

nq_capmetrics_t *nq_capmetrics_new(void); /* NULL when out of memory */
void nq_capmetrics_free(nq_capmetrics_t *m);

/* One item: its generated caption and n_refs >= 1 references (borrowed; copied). */
int nq_capmetrics_add(nq_capmetrics_t *m, const char *hyp, const char *const *refs, int n_refs, nq_err_t *err);

/* Scores over every item added so far (no items: all zero). */
int nq_capmetrics_compute(const nq_capmetrics_t *m, nq_capmetrics_scores_t *out /* OUT */, nq_err_t *err);

/* Per-item CIDEr-D (needs the corpus document frequencies, so after all items are added): out[i] for item i. */
int nq_capmetrics_cider_items(const nq_capmetrics_t *m, double *out /* OUT [n_items] */, nq_err_t *err);

#endif

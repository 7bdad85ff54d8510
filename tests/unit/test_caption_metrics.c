/* BLEU-4 and CIDEr-D (scheduler/caption_metrics.h) against values worked out by hand from the pycocoevalcap
 * formulas (bleu_scorer.py "closest", cider_scorer.py CIDEr-D sigma 6); each case's derivation is in its comment. */
#include <criterion/criterion.h>
#include <math.h>

#include "scheduler/caption_metrics.h"

static nq_capmetrics_scores_t score1(const char *hyp, const char *const *refs, int n) {
  nq_capmetrics_t *m = nq_capmetrics_new();
  nq_err_t err = {0};
  cr_assert(m);
  cr_assert_eq(nq_capmetrics_add(m, hyp, refs, n, &err), 0, "%s", err.msg);
  nq_capmetrics_scores_t s;
  cr_assert_eq(nq_capmetrics_compute(m, &s, &err), 0, "%s", err.msg);
  nq_capmetrics_free(m);
  return s;
}

#define NEAR(a, b) cr_assert(fabs((a) - (b)) < 1e-9, "%s = %.12f, want %.12f", #a, (double)(a), (double)(b))

/* hyp "the cat sat on a mat" vs "the cat sat on the mat": clipped matches 5/6, 3/5, 2/4, 1/3; equal lengths (BP 1).
 * BLEU-1 = 5/6, BLEU-2 = sqrt(5/6 * 3/5), BLEU-4 = (5/6 * 3/5 * 2/4 * 1/3)^(1/4) = (1/12)^(1/4). */
Test(caption_metrics, bleu_partial_match) {
  const char *refs[] = {"The cat sat on the mat."};
  nq_capmetrics_scores_t s = score1("the cat sat on a mat", refs, 1);
  NEAR(s.bleu[0], 5.0 / 6.0);
  NEAR(s.bleu[1], sqrt(0.5));
  NEAR(s.bleu[3], pow(1.0 / 12.0, 0.25));
  cr_assert_eq(s.testlen, 6);
  cr_assert_eq(s.reflen, 6);
}

/* hyp "the cat" vs a 6-word reference: 1- and 2-grams all match (2/2, 1/1), no 3-/4-grams (0 + 1e-15)/(0 + 1e-9) =
 * 1e-6 each; brevity penalty exp(1 - 6/2) = exp(-2). BLEU-1 = exp(-2), BLEU-4 = (1e-12)^(1/4) exp(-2) = 1e-3 exp(-2). */
Test(caption_metrics, bleu_brevity_penalty) {
  const char *refs[] = {"the cat sat on the mat"};
  nq_capmetrics_scores_t s = score1("the cat", refs, 1);
  NEAR(s.bleu[0], exp(-2.0));
  NEAR(s.bleu[1], exp(-2.0));
  cr_assert(fabs(s.bleu[3] - 1e-3 * exp(-2.0)) < 1e-12, "bleu4 %g", s.bleu[3]);
}

/* Clipping by the maximum count over references: "the the the the" vs {"the cat", "the the dog"}: "the" counts at most
 * 2 -> BLEU-1 = 2/4; the closest reference length to 4 is 3 (no brevity penalty). */
Test(caption_metrics, bleu_clipping_multi_ref) {
  const char *refs[] = {"the cat", "the the dog"};
  nq_capmetrics_scores_t s = score1("the the the the", refs, 2);
  NEAR(s.bleu[0], 0.5);
  cr_assert_eq(s.reflen, 3);
}

/* Closest-length tie goes to the shorter reference: testlen 3, references of 2 and 4 words -> reflen 2. */
Test(caption_metrics, bleu_closest_tie_shorter) {
  const char *refs[] = {"a b c d", "a b"};
  nq_capmetrics_scores_t s = score1("a b c", refs, 2);
  cr_assert_eq(s.reflen, 2);
}

/* Two items, N = 2 -> idf weight log 2 for every n-gram (each reference n-gram has df 1, others max(1, 0) = 1).
 *   A: hyp "a b", ref "a b": orders 1 and 2 match exactly (cosine 1), orders 3, 4 empty (0); equal bigram counts ->
 *      mean over n = 2/4, x10 = 5.
 *   B: hyp "a b c d", ref "c d": order 1: (l^2 + l^2) / (2l * sqrt2 l) = 1/sqrt2; order 2: l^2 / (sqrt3 l * l) = 1/sqrt3;
 *      orders 3, 4: 0; bigram counts 3 vs 1 -> penalty exp(-4 / 72). B = 10 (1/sqrt2 + 1/sqrt3) exp(-4/72) / 4.
 * CIDEr-D = (A + B) / 2. */
Test(caption_metrics, cider_d_two_items) {
  nq_capmetrics_t *m = nq_capmetrics_new();
  nq_err_t err = {0};
  const char *ra[] = {"a b"}, *rb[] = {"c d"};
  cr_assert_eq(nq_capmetrics_add(m, "a b", ra, 1, &err), 0);
  cr_assert_eq(nq_capmetrics_add(m, "a b c d", rb, 1, &err), 0);
  double items[2];
  cr_assert_eq(nq_capmetrics_cider_items(m, items, &err), 0, "%s", err.msg);
  double b = 10.0 * (1.0 / sqrt(2.0) + 1.0 / sqrt(3.0)) * exp(-4.0 / 72.0) / 4.0;
  NEAR(items[0], 5.0);
  NEAR(items[1], b);
  nq_capmetrics_scores_t s;
  cr_assert_eq(nq_capmetrics_compute(m, &s, &err), 0);
  NEAR(s.cider_d, (5.0 + b) / 2.0);
  cr_assert_eq(s.n_items, 2);
  nq_capmetrics_free(m);
}

/* Two references for one item: the item score is the mean over references. Items as above plus a second reference
 * "x y" for A: df(x) = df(y) = df(x y) = 1; sim(hyp "a b", "x y") = 0 -> A = 5 / 2. */
Test(caption_metrics, cider_d_reference_mean) {
  nq_capmetrics_t *m = nq_capmetrics_new();
  nq_err_t err = {0};
  const char *ra[] = {"a b", "x y"}, *rb[] = {"c d"};
  cr_assert_eq(nq_capmetrics_add(m, "a b", ra, 2, &err), 0);
  cr_assert_eq(nq_capmetrics_add(m, "c d", rb, 1, &err), 0);
  double items[2];
  cr_assert_eq(nq_capmetrics_cider_items(m, items, &err), 0);
  NEAR(items[0], 2.5);
  NEAR(items[1], 5.0);
  nq_capmetrics_free(m);
}

/* One item: log(1) = 0 makes every weight 0, so CIDEr-D is 0 even for a perfect caption (as pycocoevalcap). */
Test(caption_metrics, cider_d_single_item_zero) {
  const char *refs[] = {"a dog runs"};
  nq_capmetrics_scores_t s = score1("a dog runs", refs, 1);
  NEAR(s.cider_d, 0.0);
  cr_assert(s.bleu[0] > 0.999);
}

Test(caption_metrics, bad_input) {
  nq_capmetrics_t *m = nq_capmetrics_new();
  nq_err_t err = {0};
  cr_assert_neq(nq_capmetrics_add(m, "x", NULL, 0, &err), 0);
  const char *refs[] = {NULL};
  cr_assert_neq(nq_capmetrics_add(m, "x", refs, 1, &err), 0);
  nq_capmetrics_scores_t s;
  cr_assert_eq(nq_capmetrics_compute(m, &s, &err), 0);
  cr_assert_eq(s.n_items, 0);
  nq_capmetrics_free(m);
}

/* tests/unit/test_metrics.c — common/metrics: Prometheus text exposition, labels, histograms, threads. The expected
 * texts are written out by hand from the text-format rules (exposition format 0.0.4). */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/metrics.h"

static void reset(void) { nq_metrics_reset(); }
TestSuite(metrics, .init = reset, .fini = reset);

/* The rendered text without the built-in process gauges (their values vary). */
static char *render_own(void) {
  char *s = nq_metrics_render(NULL);
  cr_assert(s);
  char *out = calloc(1, strlen(s) + 1), *o = out;
  int skip = 0;
  for (char *save = NULL, *l = strtok_r(s, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
    if (strncmp(l, "# HELP ", 7) == 0) skip = strncmp(l + 7, "nq_process_", 11) == 0;
    if (skip) continue;
    o += sprintf(o, "%s\n", l);
  }
  free(s);
  return out;
}

Test(metrics, counter_gauge_text_format) {
  nq_metric_t *c = nq_metrics_counter("t_tasks_total", "tasks by stage", "stage,status");
  nq_metric_t *g = nq_metrics_gauge("t_in_flight", "in flight", NULL);
  cr_assert(c && g);
  nq_metric_add(c, 1, "noop", "ok");
  nq_metric_add(c, 2, "noop", "ok");
  nq_metric_add(c, 1, "llm", "dead");
  nq_metric_add(c, -5, "noop", "ok"); /* counters never go down */
  nq_metric_add(g, 3);
  nq_metric_add(g, -1);
  char *s = render_own();
  cr_assert_str_eq(s, "# HELP t_tasks_total tasks by stage\n"
                      "# TYPE t_tasks_total counter\n"
                      "t_tasks_total{stage=\"noop\",status=\"ok\"} 3\n"
                      "t_tasks_total{stage=\"llm\",status=\"dead\"} 1\n"
                      "# HELP t_in_flight in flight\n"
                      "# TYPE t_in_flight gauge\n"
                      "t_in_flight 2\n");
  free(s);
  cr_assert_eq(nq_metric_value(c, "noop", "ok"), 3);
  cr_assert_eq(nq_metric_value(c, "none", "x"), 0);
  nq_metric_set(g, 0.25);
  cr_assert_eq(nq_metric_value(g), 0.25);
}

Test(metrics, label_values_escaped) {
  nq_metric_t *c = nq_metrics_counter("t_esc_total", "help with \\ and\nnewline", "path");
  nq_metric_add(c, 1, "a\"b\\c\nd");
  char *s = render_own();
  cr_assert_str_eq(s, "# HELP t_esc_total help with \\\\ and\\nnewline\n"
                      "# TYPE t_esc_total counter\n"
                      "t_esc_total{path=\"a\\\"b\\\\c\\nd\"} 1\n");
  free(s);
}

Test(metrics, histogram_cumulative_buckets) {
  const double b[] = {0.1, 1, 10};
  nq_metric_t *h = nq_metrics_histogram("t_lat_seconds", "latency", "route", b, 3);
  cr_assert(h);
  nq_metric_observe(h, 0.05, "/x"); /* le 0.1 */
  nq_metric_observe(h, 0.1, "/x");  /* le 0.1 (upper bounds are inclusive) */
  nq_metric_observe(h, 5, "/x");    /* le 10 */
  nq_metric_observe(h, 50, "/x");   /* +Inf only */
  char *s = render_own();
  cr_assert_str_eq(s, "# HELP t_lat_seconds latency\n"
                      "# TYPE t_lat_seconds histogram\n"
                      "t_lat_seconds_bucket{route=\"/x\",le=\"0.1\"} 2\n"
                      "t_lat_seconds_bucket{route=\"/x\",le=\"1\"} 2\n"
                      "t_lat_seconds_bucket{route=\"/x\",le=\"10\"} 3\n"
                      "t_lat_seconds_bucket{route=\"/x\",le=\"+Inf\"} 4\n"
                      "t_lat_seconds_sum{route=\"/x\"} 55.149999999999999\n"
                      "t_lat_seconds_count{route=\"/x\"} 4\n");
  free(s);
}

Test(metrics, registration_rules) {
  nq_metric_t *a = nq_metrics_counter("t_same_total", "x", "k");
  cr_assert_eq(nq_metrics_counter("t_same_total", "x", "k"), a, "same name and type: same family");
  cr_assert_null(nq_metrics_gauge("t_same_total", "x", "k"), "type clash");
  cr_assert_null(nq_metrics_counter("9bad", "x", NULL));
  cr_assert_null(nq_metrics_counter("bad-name", "x", NULL));
  cr_assert_null(nq_metrics_counter("t_ok", "x", "bad-label"));
  cr_assert_null(nq_metrics_counter("t_ok2", "x", "a,b,c,d,e"), "too many labels");
  cr_assert_null(nq_metrics_histogram("t_h", "x", "le", NULL, 0), "le is reserved");
  const double dec[] = {1, 0.5};
  cr_assert_null(nq_metrics_histogram("t_h2", "x", NULL, dec, 2), "buckets must increase");
  nq_metric_add(NULL, 1); /* a failed registration is harmless */
  nq_metric_observe(a, 1, "v"); /* wrong kind: ignored */
  cr_assert_eq(nq_metric_value(a, "v"), 0);
}

static nq_metric_t *g_c, *g_h;
static void *hammer(void *arg) {
  const char *stage = arg;
  for (int i = 0; i < 20000; i++) {
    nq_metric_add(g_c, 1, stage);
    nq_metric_observe(g_h, 0.001, stage);
  }
  return NULL;
}

Test(metrics, threads_lose_no_updates) {
  g_c = nq_metrics_counter("t_thr_total", "x", "stage");
  g_h = nq_metrics_histogram("t_thr_seconds", "x", "stage", NULL, 0);
  pthread_t t[4];
  const char *st[4] = {"a", "b", "a", "b"};
  for (int i = 0; i < 4; i++) pthread_create(&t[i], NULL, hammer, (void *)st[i]);
  for (int i = 0; i < 4; i++) {
    char *s = nq_metrics_render(NULL); /* renders concurrently with the updates */
    cr_assert(s);
    free(s);
  }
  for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
  cr_assert_eq(nq_metric_value(g_c, "a"), 40000);
  cr_assert_eq(nq_metric_value(g_c, "b"), 40000);
  char *s = nq_metrics_render(NULL);
  cr_assert(strstr(s, "t_thr_seconds_count{stage=\"a\"} 40000\n"));
  cr_assert(strstr(s, "t_thr_seconds_bucket{stage=\"b\",le=\"0.005\"} 40000\n"));
  cr_assert(strstr(s, "# TYPE nq_process_resident_memory_bytes gauge\n"));
  free(s);
}

static int collected;
static void collect(void *ud) {
  collected++;
  nq_metric_set(nq_metrics_gauge("t_depth", "sampled", NULL), *(double *)ud);
}

Test(metrics, collectors_run_at_render) {
  double v = 42;
  cr_assert_eq(nq_metrics_collector_add(collect, &v), 0);
  char *s = nq_metrics_render(NULL);
  cr_assert(strstr(s, "\nt_depth 42\n"), "%s", s);
  free(s);
  v = 7;
  s = nq_metrics_render(NULL);
  cr_assert(strstr(s, "\nt_depth 7\n"));
  free(s);
  cr_assert_eq(collected, 2);
  nq_metrics_collector_remove(collect, &v);
  free(nq_metrics_render(NULL));
  cr_assert_eq(collected, 2);
}

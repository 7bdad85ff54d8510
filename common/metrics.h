/* common/metrics.h — process-wide Prometheus metrics: counters, gauges, histograms, text exposition format.
 *
 * A metric family is registered once by name (registering the same name again with the same type returns the same
 * family, so call sites may simply register where they use it) and holds one series per combination of label values:
 *
 *   static nq_metric_t *tasks;
 *   if (!tasks) tasks = nq_metrics_counter("nq_worker_tasks_total", "tasks finished", "stage,status");
 *   nq_metric_add(tasks, 1, "noop", "ok");          // one label value per label name, in order
 *
 *   nq_metric_t *lat = nq_metrics_histogram("nq_worker_task_seconds", "task latency", "stage", NULL, 0);
 *   nq_metric_observe(lat, 0.012, "noop");           // NULL buckets = nq_metrics_default_buckets
 *
 * nq_metrics_render() writes every family in the Prometheus text format 0.0.4 (# HELP, # TYPE, series sorted as
 * registered, histogram _bucket{le=...} cumulative + _sum + _count; label values escaped). Collectors registered
 * with nq_metrics_collector_add run first, so gauges that are sampled (queue depth, resident memory) are fresh.
 * Built in: nq_process_resident_memory_bytes and nq_process_start_time_seconds.
 *
 * @thread any: one mutex guards the registry; the hot path is a lock, a short scan and an add. A NULL family
 * pointer is accepted (and ignored) by every update so an out-of-memory registration never crashes a worker.
 */
#ifndef NQ_COMMON_METRICS_H
#define NQ_COMMON_METRICS_H

#include <stddef.h>

#define NQ_METRICS_MAX_LABELS 4
#define NQ_METRICS_MAX_BUCKETS 32

typedef struct nq_metric nq_metric_t; /* owned by the process-wide registry; never freed while in use */

/* label_names: comma-separated ("stage,status"), NULL or "" for none; at most NQ_METRICS_MAX_LABELS. Names must match
 * [a-zA-Z_:][a-zA-Z0-9_:]* (labels: no ':'). Returns NULL on a bad name, a type clash with an existing family of the
 * same name, or out of memory. */
nq_metric_t *nq_metrics_counter(const char *name, const char *help, const char *label_names);
nq_metric_t *nq_metrics_gauge(const char *name, const char *help, const char *label_names);
/* buckets: increasing upper bounds (borrowed, copied), NULL = nq_metrics_default_buckets; +Inf is implicit. */
nq_metric_t *nq_metrics_histogram(const char *name, const char *help, const char *label_names, const double *buckets,
                                  int nbuckets);

/* 0.005 .. 60 s: API requests to model tasks. */
extern const double nq_metrics_default_buckets[];
extern const int nq_metrics_default_nbuckets;

/* Updates; the variadic arguments are the label values (const char *, as many as the family has labels; NULL is
 * written as ""). Counters ignore negative adds. */
void nq_metric_add(nq_metric_t *m, double v, ...);     /* counter or gauge */
void nq_metric_set(nq_metric_t *m, double v, ...);     /* gauge */
void nq_metric_observe(nq_metric_t *m, double v, ...); /* histogram */
/* Current value of a counter/gauge series (0 if absent) — for tests and collectors. */
double nq_metric_value(nq_metric_t *m, ...);

/* Collectors: called (under no lock) at the start of every render to refresh sampled gauges. */
typedef void (*nq_metrics_collect_cb)(void *ud);
int nq_metrics_collector_add(nq_metrics_collect_cb cb, void *ud /* borrowed: must outlive the registration */);
void nq_metrics_collector_remove(nq_metrics_collect_cb cb, void *ud);

/* The text exposition (malloc'ed, NUL-terminated; NULL on out of memory). */
char *nq_metrics_render(size_t *len /* OUT, may be NULL */);
/* Content-Type of the text format. */
#define NQ_METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

/* Drops every family and collector (tests only: pointers obtained before are dangling afterwards). */
void nq_metrics_reset(void);

#endif

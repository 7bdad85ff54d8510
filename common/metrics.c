/* common/metrics.c — see metrics.h. */
#include "common/metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef enum { M_COUNTER, M_GAUGE, M_HISTOGRAM } mtype_t;

typedef struct series {
  char *vals[NQ_METRICS_MAX_LABELS]; /* owned: label values */
  double value;                      /* counter / gauge */
  double sum;                        /* histogram */
  unsigned long long count;          /* histogram */
  unsigned long long *bucket;        /* owned: histogram, nbuckets non-cumulative counts (+Inf = count) */
  struct series *next;
} series_t;

struct nq_metric {
  char *name, *help;                     /* owned */
  mtype_t type;
  int nlabels;
  char *labels[NQ_METRICS_MAX_LABELS];   /* owned: label names */
  double buckets[NQ_METRICS_MAX_BUCKETS];
  int nbuckets;
  series_t *series, **tail;              /* owned list, in first-use order */
  struct nq_metric *next;
};

typedef struct collector {
  nq_metrics_collect_cb cb;
  void *ud; /* borrowed */
  struct collector *next;
} collector_t;

const double nq_metrics_default_buckets[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
const int nq_metrics_default_nbuckets = (int)(sizeof nq_metrics_default_buckets / sizeof nq_metrics_default_buckets[0]);

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static nq_metric_t *families, **families_tail = &families;
static collector_t *collectors;
static double start_time;

static int name_ok(const char *s, int allow_colon) {
  if (!s || !*s) return 0;
  for (const char *p = s; *p; p++) {
    char c = *p;
    int alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (allow_colon && c == ':');
    if (!alpha && !(p > s && c >= '0' && c <= '9')) return 0;
  }
  return 1;
}

static void family_free(nq_metric_t *m) {
  for (series_t *s = m->series, *n; s; s = n) {
    n = s->next;
    for (int i = 0; i < m->nlabels; i++) free(s->vals[i]);
    free(s->bucket);
    free(s);
  }
  for (int i = 0; i < m->nlabels; i++) free(m->labels[i]);
  free(m->name);
  free(m->help);
  free(m);
}

static nq_metric_t *family_get(mtype_t type, const char *name, const char *help, const char *label_names,
                               const double *buckets, int nbuckets) {
  if (!name_ok(name, 1)) return NULL;
  if (type == M_HISTOGRAM && !buckets) {
    buckets = nq_metrics_default_buckets;
    nbuckets = nq_metrics_default_nbuckets;
  }
  if (nbuckets < 0 || nbuckets > NQ_METRICS_MAX_BUCKETS) return NULL;
  for (int i = 1; i < nbuckets; i++)
    if (!(buckets[i] > buckets[i - 1])) return NULL;
  pthread_mutex_lock(&mu);
  if (start_time == 0) start_time = (double)time(NULL);
  nq_metric_t *m;
  for (m = families; m; m = m->next)
    if (strcmp(m->name, name) == 0) break;
  if (m) {
    pthread_mutex_unlock(&mu);
    return m->type == type ? m : NULL;
  }
  m = calloc(1, sizeof *m);
  int ok = m && (m->name = strdup(name)) && (m->help = strdup(help ? help : ""));
  if (ok && label_names && *label_names) {
    char buf[256];
    snprintf(buf, sizeof buf, "%s", label_names);
    char *save = NULL;
    for (char *t = strtok_r(buf, ",", &save); ok && t; t = strtok_r(NULL, ",", &save)) {
      while (*t == ' ') t++;
      if (m->nlabels == NQ_METRICS_MAX_LABELS || !name_ok(t, 0) || strcmp(t, "le") == 0) ok = 0;
      else ok = (m->labels[m->nlabels++] = strdup(t)) != NULL;
    }
  }
  if (!ok) {
    if (m) family_free(m);
    pthread_mutex_unlock(&mu);
    return NULL;
  }
  m->type = type;
  if (type == M_HISTOGRAM) {
    memcpy(m->buckets, buckets, (size_t)nbuckets * sizeof *buckets);
    m->nbuckets = nbuckets;
  }
  m->tail = &m->series;
  *families_tail = m;
  families_tail = &m->next;
  pthread_mutex_unlock(&mu);
  return m;
}

nq_metric_t *nq_metrics_counter(const char *name, const char *help, const char *label_names) {
  return family_get(M_COUNTER, name, help, label_names, NULL, 0);
}
nq_metric_t *nq_metrics_gauge(const char *name, const char *help, const char *label_names) {
  return family_get(M_GAUGE, name, help, label_names, NULL, 0);
}
nq_metric_t *nq_metrics_histogram(const char *name, const char *help, const char *label_names, const double *buckets,
                                  int nbuckets) {
  return family_get(M_HISTOGRAM, name, help, label_names, buckets, nbuckets);
}

/* Finds or creates the series for the label values in ap. Called with mu held; NULL on out of memory. */
static series_t *series_get(nq_metric_t *m, va_list ap) {
  const char *vals[NQ_METRICS_MAX_LABELS];
  for (int i = 0; i < m->nlabels; i++) {
    vals[i] = va_arg(ap, const char *);
    if (!vals[i]) vals[i] = "";
  }
  for (series_t *s = m->series; s; s = s->next) {
    int i = 0;
    while (i < m->nlabels && strcmp(s->vals[i], vals[i]) == 0) i++;
    if (i == m->nlabels) return s;
  }
  series_t *s = calloc(1, sizeof *s);
  if (!s) return NULL;
  int ok = 1;
  for (int i = 0; i < m->nlabels && ok; i++) ok = (s->vals[i] = strdup(vals[i])) != NULL;
  if (ok && m->type == M_HISTOGRAM) ok = (s->bucket = calloc((size_t)m->nbuckets + 1, sizeof *s->bucket)) != NULL;
  if (!ok) {
    for (int i = 0; i < m->nlabels; i++) free(s->vals[i]);
    free(s);
    return NULL;
  }
  *m->tail = s;
  m->tail = &s->next;
  return s;
}

void nq_metric_add(nq_metric_t *m, double v, ...) {
  if (!m || m->type == M_HISTOGRAM || (m->type == M_COUNTER && !(v >= 0))) return;
  va_list ap;
  va_start(ap, v);
  pthread_mutex_lock(&mu);
  series_t *s = series_get(m, ap);
  if (s) s->value += v;
  pthread_mutex_unlock(&mu);
  va_end(ap);
}

void nq_metric_set(nq_metric_t *m, double v, ...) {
  if (!m || m->type != M_GAUGE) return;
  va_list ap;
  va_start(ap, v);
  pthread_mutex_lock(&mu);
  series_t *s = series_get(m, ap);
  if (s) s->value = v;
  pthread_mutex_unlock(&mu);
  va_end(ap);
}

void nq_metric_observe(nq_metric_t *m, double v, ...) {
  if (!m || m->type != M_HISTOGRAM || isnan(v)) return;
  va_list ap;
  va_start(ap, v);
  pthread_mutex_lock(&mu);
  series_t *s = series_get(m, ap);
  if (s) {
    int b = 0;
    while (b < m->nbuckets && v > m->buckets[b]) b++;
    s->bucket[b]++;
    s->count++;
    s->sum += v;
  }
  pthread_mutex_unlock(&mu);
  va_end(ap);
}

double nq_metric_value(nq_metric_t *m, ...) {
  if (!m || m->type == M_HISTOGRAM) return 0;
  va_list ap;
  va_start(ap, m);
  const char *vals[NQ_METRICS_MAX_LABELS];
  for (int i = 0; i < m->nlabels; i++) {
    vals[i] = va_arg(ap, const char *);
    if (!vals[i]) vals[i] = "";
  }
  va_end(ap);
  double v = 0;
  pthread_mutex_lock(&mu);
  for (series_t *s = m->series; s; s = s->next) {
    int i = 0;
    while (i < m->nlabels && strcmp(s->vals[i], vals[i]) == 0) i++;
    if (i == m->nlabels) {
      v = s->value;
      break;
    }
  }
  pthread_mutex_unlock(&mu);
  return v;
}

int nq_metrics_collector_add(nq_metrics_collect_cb cb, void *ud) {
  collector_t *c = calloc(1, sizeof *c);
  if (!c) return -1;
  c->cb = cb;
  c->ud = ud;
  pthread_mutex_lock(&mu);
  c->next = collectors;
  collectors = c;
  pthread_mutex_unlock(&mu);
  return 0;
}

void nq_metrics_collector_remove(nq_metrics_collect_cb cb, void *ud) {
  pthread_mutex_lock(&mu);
  for (collector_t **pp = &collectors; *pp; pp = &(*pp)->next) {
    if ((*pp)->cb == cb && (*pp)->ud == ud) {
      collector_t *c = *pp;
      *pp = c->next;
      free(c);
      break;
    }
  }
  pthread_mutex_unlock(&mu);
}

/* ---- rendering ---- */

typedef struct sbuf {
  char *p;
  size_t len, cap;
  int oom;
} sbuf_t;

static void sb_printf(sbuf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf_t *b, const char *fmt, ...) {
  if (b->oom) return;
  for (;;) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(b->p ? b->p + b->len : NULL, b->p ? b->cap - b->len : 0, fmt, ap);
    va_end(ap);
    if (n < 0) {
      b->oom = 1;
      return;
    }
    if (b->p && b->len + (size_t)n < b->cap) {
      b->len += (size_t)n;
      return;
    }
    size_t nc = b->cap ? b->cap * 2 : 4096;
    while (nc < b->len + (size_t)n + 1) nc *= 2;
    char *np = realloc(b->p, nc);
    if (!np) {
      b->oom = 1;
      return;
    }
    b->p = np;
    b->cap = nc;
  }
}

/* Label value escaping per the text format: backslash, double quote and newline. */
static void sb_escaped(sbuf_t *b, const char *s, int help) {
  for (; *s; s++) {
    if (*s == '\\') sb_printf(b, "\\\\");
    else if (*s == '\n') sb_printf(b, "\\n");
    else if (*s == '"' && !help) sb_printf(b, "\\\"");
    else sb_printf(b, "%c", *s);
  }
}

static void sb_labels(sbuf_t *b, const nq_metric_t *m, const series_t *s, const char *le) {
  if (m->nlabels == 0 && !le) return;
  sb_printf(b, "{");
  for (int i = 0; i < m->nlabels; i++) {
    sb_printf(b, "%s%s=\"", i ? "," : "", m->labels[i]);
    sb_escaped(b, s->vals[i], 0);
    sb_printf(b, "\"");
  }
  if (le) sb_printf(b, "%sle=\"%s\"", m->nlabels ? "," : "", le);
  sb_printf(b, "}");
}

static void sb_value(sbuf_t *b, double v) {
  if (isinf(v)) sb_printf(b, v > 0 ? "+Inf" : "-Inf");
  else if (isnan(v)) sb_printf(b, "NaN");
  else if (v == (double)(long long)v && fabs(v) < 1e15) sb_printf(b, "%lld", (long long)v);
  else sb_printf(b, "%.17g", v);
}

static void process_metrics(void) {
  nq_metric_t *rss = nq_metrics_gauge("nq_process_resident_memory_bytes", "resident set size of this process", NULL);
  nq_metric_t *start = nq_metrics_gauge("nq_process_start_time_seconds", "start time of this process since the Unix epoch", NULL);
  FILE *f = fopen("/proc/self/statm", "r");
  long long pages_total = 0, pages_rss = 0;
  if (f) {
    if (fscanf(f, "%lld %lld", &pages_total, &pages_rss) != 2) pages_rss = 0;
    fclose(f);
  }
  nq_metric_set(rss, (double)pages_rss * (double)sysconf(_SC_PAGESIZE));
  pthread_mutex_lock(&mu);
  double st = start_time;
  pthread_mutex_unlock(&mu);
  nq_metric_set(start, st);
}

char *nq_metrics_render(size_t *len) {
  /* Collectors run without the lock (they update metrics themselves). The list is snapshotted first. */
  collector_t snap[32];
  int ns = 0;
  pthread_mutex_lock(&mu);
  for (collector_t *c = collectors; c && ns < 32; c = c->next) snap[ns++] = *c;
  pthread_mutex_unlock(&mu);
  for (int i = 0; i < ns; i++) snap[i].cb(snap[i].ud);
  process_metrics();

  sbuf_t b = {0};
  pthread_mutex_lock(&mu);
  for (nq_metric_t *m = families; m; m = m->next) {
    static const char *const tn[] = {"counter", "gauge", "histogram"};
    sb_printf(&b, "# HELP %s ", m->name);
    sb_escaped(&b, m->help, 1);
    sb_printf(&b, "\n# TYPE %s %s\n", m->name, tn[m->type]);
    for (series_t *s = m->series; s; s = s->next) {
      if (m->type != M_HISTOGRAM) {
        sb_printf(&b, "%s", m->name);
        sb_labels(&b, m, s, NULL);
        sb_printf(&b, " ");
        sb_value(&b, s->value);
        sb_printf(&b, "\n");
        continue;
      }
      unsigned long long cum = 0;
      for (int i = 0; i <= m->nbuckets; i++) {
        char le[40];
        if (i < m->nbuckets) snprintf(le, sizeof le, "%g", m->buckets[i]);
        else snprintf(le, sizeof le, "+Inf");
        cum += s->bucket[i];
        sb_printf(&b, "%s_bucket", m->name);
        sb_labels(&b, m, s, le);
        sb_printf(&b, " %llu\n", cum);
      }
      sb_printf(&b, "%s_sum", m->name);
      sb_labels(&b, m, s, NULL);
      sb_printf(&b, " ");
      sb_value(&b, s->sum);
      sb_printf(&b, "\n%s_count", m->name);
      sb_labels(&b, m, s, NULL);
      sb_printf(&b, " %llu\n", s->count);
    }
  }
  pthread_mutex_unlock(&mu);
  if (!b.p) sb_printf(&b, "%s", "");
  if (b.oom) {
    free(b.p);
    return NULL;
  }
  if (len) *len = b.len;
  return b.p;
}

void nq_metrics_reset(void) {
  pthread_mutex_lock(&mu);
  for (nq_metric_t *m = families, *n; m; m = n) {
    n = m->next;
    family_free(m);
  }
  families = NULL;
  families_tail = &families;
  for (collector_t *c = collectors, *n; c; c = n) {
    n = c->next;
    free(c);
  }
  collectors = NULL;
  pthread_mutex_unlock(&mu);
}

#include "compute/core/pool.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#include "common/err.h"

#ifdef NQ_WITH_OPENBLAS
#include <cblas.h>
#endif

struct nq_pool {
  int n;                   /* threads including the caller */
  pthread_t *th;           /* owned: n-1 workers */
  pthread_mutex_t run_mu;  /* serialises nq_pool_for callers */
  pthread_mutex_t mu;
  pthread_cond_t cv_work, cv_done;
  uint64_t gen;            /* job generation; workers wait for a new one */
  int stop;
  /* current job */
  nq_pool_fn_cb fn;
  void *ctx;
  int64_t n_items, chunk;
  atomic_int pending;      /* workers still running the current job */
};

typedef struct {
  nq_pool_t *p;
  int tid;
} nq_pool__arg_t;

static void nq_pool__run_chunk(nq_pool_t *p, int tid) {
  int64_t b = (int64_t)tid * p->chunk, e = b + p->chunk;
  if (e > p->n_items) e = p->n_items;
  if (b < e) p->fn(p->ctx, b, e, tid);
}

static void *nq_pool__worker(void *arg) {
  nq_pool__arg_t a = *(nq_pool__arg_t *)arg;
  free(arg);
  nq_pool_t *p = a.p;
  uint64_t seen = 0;
  for (;;) {
    pthread_mutex_lock(&p->mu);
    while (p->gen == seen && !p->stop) pthread_cond_wait(&p->cv_work, &p->mu);
    if (p->stop) {
      pthread_mutex_unlock(&p->mu);
      return NULL;
    }
    seen = p->gen;
    pthread_mutex_unlock(&p->mu);
    nq_pool__run_chunk(p, a.tid);
    if (atomic_fetch_sub(&p->pending, 1) == 1) {
      pthread_mutex_lock(&p->mu);
      pthread_cond_signal(&p->cv_done);
      pthread_mutex_unlock(&p->mu);
    }
  }
}

nq_pool_t *nq_pool_new(int n_threads) {
  if (n_threads < 1) n_threads = 1;
  nq_pool_t *p = calloc(1, sizeof(*p));
  if (!p) return NULL;
  p->n = n_threads;
  pthread_mutex_init(&p->run_mu, NULL);
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->cv_work, NULL);
  pthread_cond_init(&p->cv_done, NULL);
  p->th = calloc((size_t)n_threads, sizeof(pthread_t));
  if (!p->th) {
    free(p);
    return NULL;
  }
  for (int i = 1; i < n_threads; i++) {
    nq_pool__arg_t *a = malloc(sizeof(*a));
    if (!a) {
      p->n = i;
      break;
    }
    a->p = p;
    a->tid = i;
    if (pthread_create(&p->th[i - 1], NULL, nq_pool__worker, a) != 0) {
      free(a);
      p->n = i;
      break;
    }
  }
  return p;
}

void nq_pool_free(nq_pool_t *p) {
  if (!p) return;
  pthread_mutex_lock(&p->mu);
  p->stop = 1;
  pthread_cond_broadcast(&p->cv_work);
  pthread_mutex_unlock(&p->mu);
  for (int i = 1; i < p->n; i++) pthread_join(p->th[i - 1], NULL);
  pthread_mutex_destroy(&p->run_mu);
  pthread_mutex_destroy(&p->mu);
  pthread_cond_destroy(&p->cv_work);
  pthread_cond_destroy(&p->cv_done);
  free(p->th);
  free(p);
}

int nq_pool_size(const nq_pool_t *p) { return p ? p->n : 1; }

void nq_pool_for(nq_pool_t *p, int64_t n, int64_t grain, nq_pool_fn_cb fn, void *ctx) {
  if (n <= 0) return;
  if (grain < 1) grain = 1;
  int nt = p ? p->n : 1;
  int64_t units = (n + grain - 1) / grain;
  if (units < nt) nt = (int)units;
  if (nt <= 1) {
    fn(ctx, 0, n, 0);
    return;
  }
  pthread_mutex_lock(&p->run_mu);
  int64_t per = (units + nt - 1) / nt;
  p->fn = fn;
  p->ctx = ctx;
  p->n_items = n;
  p->chunk = per * grain;
  /* every worker takes part in each generation (chunks past n are empty) */
  atomic_store(&p->pending, p->n - 1);
  pthread_mutex_lock(&p->mu);
  p->gen++;
  pthread_cond_broadcast(&p->cv_work);
  pthread_mutex_unlock(&p->mu);
  nq_pool__run_chunk(p, 0);
  /* brief spin before sleeping: most chunks finish within microseconds of each other */
  for (int spin = 0; spin < 20000 && atomic_load(&p->pending) > 0; spin++) __builtin_ia32_pause();
  if (atomic_load(&p->pending) > 0) {
    pthread_mutex_lock(&p->mu);
    while (atomic_load(&p->pending) > 0) pthread_cond_wait(&p->cv_done, &p->mu);
    pthread_mutex_unlock(&p->mu);
  }
  pthread_mutex_unlock(&p->run_mu);
}

/* ---- process-wide default ---- */

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static nq_pool_t *g_pool;
static int g_threads;

static void nq_pool__apply_libs(int n) {
#ifdef NQ_WITH_OPENBLAS
  openblas_set_num_threads(n);
#endif
  /* oneDNN in Debian uses GNU OpenMP; libgomp is only linked indirectly, so look it up. */
  void (*omp_set)(int) = (void (*)(int))dlsym(RTLD_DEFAULT, "omp_set_num_threads");
  if (omp_set) omp_set(n);
}

static int nq_pool__env_threads(void) {
  const char *s = getenv("NQ_THREADS");
  int n = s ? atoi(s) : 0;
  if (n <= 0) n = (int)sysconf(_SC_NPROCESSORS_ONLN);
  if (n <= 0) n = 1;
  if (n > 256) n = 256;
  return n;
}

nq_pool_t *nq_pool_default(void) {
  pthread_mutex_lock(&g_mu);
  if (!g_pool) {
    if (!g_threads) g_threads = nq_pool__env_threads();
    g_pool = nq_pool_new(g_threads);
    nq_pool__apply_libs(g_threads);
  }
  nq_pool_t *p = g_pool;
  pthread_mutex_unlock(&g_mu);
  return p;
}

int nq_compute_threads(void) {
  pthread_mutex_lock(&g_mu);
  if (!g_threads) g_threads = nq_pool__env_threads();
  int n = g_threads;
  pthread_mutex_unlock(&g_mu);
  return n;
}

void nq_compute_set_threads(int n) {
  if (n < 1) n = 1;
  pthread_mutex_lock(&g_mu);
  if (g_pool && g_pool->n != n) {
    nq_pool_free(g_pool);
    g_pool = NULL;
  }
  g_threads = n;
  if (!g_pool) g_pool = nq_pool_new(n);
  nq_pool__apply_libs(n);
  pthread_mutex_unlock(&g_mu);
}

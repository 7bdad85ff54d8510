/* compute/core/pool.h — the one compute thread pool.
 *
 * Cores are shared by three thread owners: this pool, OpenBLAS and oneDNN (OpenMP). They never
 * run at the same time: a kernel either runs on this pool (its workers sleep between jobs) or
 * calls into a library from the calling thread while the pool is idle. nq_compute_set_threads()
 * gives all three the same count, so at most N threads compute at any moment.
 *
 * nq_pool_for splits [0, n) into contiguous chunks, one per thread (the caller is thread 0).
 * A pool runs one job at a time; concurrent callers serialise on an internal mutex.
 */
#ifndef NQ_COMPUTE_CORE_POOL_H
#define NQ_COMPUTE_CORE_POOL_H

#include <stdint.h>

typedef struct nq_pool nq_pool_t;

/* fn processes items [begin, end) on thread tid (0..n_threads-1). */
typedef void (*nq_pool_fn_cb)(void *ctx, int64_t begin, int64_t end, int tid);

nq_pool_t *nq_pool_new(int n_threads); /* n_threads >= 1; NULL on failure */
void nq_pool_free(nq_pool_t *p);
int nq_pool_size(const nq_pool_t *p);
/* Runs fn over [0, n) split in at most n_threads chunks whose sizes are multiples of `grain`
 * (except the last). Returns when all chunks are done. p may be NULL (runs inline). */
void nq_pool_for(nq_pool_t *p, int64_t n, int64_t grain, nq_pool_fn_cb fn, void *ctx);

/* Process-wide default: NQ_THREADS env, else the number of online CPUs. Created on first use;
 * also applies the count to OpenBLAS and oneDNN/OpenMP. */
nq_pool_t *nq_pool_default(void);
int nq_compute_threads(void);
/* Set the thread count for the default pool, OpenBLAS and OpenMP (call before heavy work). */
void nq_compute_set_threads(int n);

#endif

/* common/arena.h — bump allocator with a lifetime (model, job, compute). Nothing is freed on its
 * own; nq_arena_reset() drops everything at once and keeps the first block for reuse. */
#ifndef NQ_COMMON_ARENA_H
#define NQ_COMMON_ARENA_H

#include <stddef.h>

typedef struct nq_arena_block nq_arena_block_t;
typedef struct nq_arena {
  nq_arena_block_t *head; /* owned chain, newest first */
  size_t block_size;      /* default size of new blocks */
  size_t used, peak;      /* bytes handed out since the last reset; high-water mark */
  size_t limit;           /* 0 = unlimited; allocations beyond it fail (per-job memory cap) */
} nq_arena_t;

void nq_arena_init(nq_arena_t *a, size_t block_size, size_t limit);
/* Aligned allocation (align: power of two, <= 4096); NULL when out of memory or over the limit. */
void *nq_arena_alloc(nq_arena_t *a, size_t size, size_t align);
void *nq_arena_calloc(nq_arena_t *a, size_t n, size_t size);
char *nq_arena_strdup(nq_arena_t *a, const char *s);
void nq_arena_reset(nq_arena_t *a);
void nq_arena_deinit(nq_arena_t *a);

#endif

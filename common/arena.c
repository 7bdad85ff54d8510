#include "common/arena.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct nq_arena_block {
  nq_arena_block_t *next;
  size_t cap, off;
  unsigned char data[];
};

void nq_arena_init(nq_arena_t *a, size_t block_size, size_t limit) {
  memset(a, 0, sizeof *a);
  a->block_size = block_size ? block_size : (1u << 20);
  a->limit = limit;
}

void *nq_arena_alloc(nq_arena_t *a, size_t size, size_t align) {
  if (align < 16) align = 16;
  if ((align & (align - 1)) || align > 4096) return NULL;
  if (a->limit && (size > a->limit || a->used > a->limit - size)) return NULL;
  nq_arena_block_t *b = a->head;
  /* align the address, not the offset: malloc only guarantees 16 bytes */
  size_t off = b ? (size_t)((((uintptr_t)b->data + b->off + align - 1) & ~(uintptr_t)(align - 1)) - (uintptr_t)b->data) : 0;
  if (!b || off > b->cap || size > b->cap - off) {
    size_t cap = a->block_size;
    if (size + align > cap) cap = size + align;
    b = malloc(sizeof *b + cap);
    if (!b) return NULL;
    b->cap = cap;
    b->off = 0;
    b->next = a->head;
    a->head = b;
    off = (size_t)((((uintptr_t)b->data + align - 1) & ~(uintptr_t)(align - 1)) - (uintptr_t)b->data);
  }
  void *p = b->data + off;
  b->off = off + size;
  a->used += size;
  if (a->used > a->peak) a->peak = a->used;
  return p;
}

void *nq_arena_calloc(nq_arena_t *a, size_t n, size_t size) {
  if (size && n > SIZE_MAX / size) return NULL;
  void *p = nq_arena_alloc(a, n * size, 16);
  if (p) memset(p, 0, n * size);
  return p;
}

char *nq_arena_strdup(nq_arena_t *a, const char *s) {
  size_t n = strlen(s) + 1;
  char *p = nq_arena_alloc(a, n, 1);
  if (p) memcpy(p, s, n);
  return p;
}

void nq_arena_reset(nq_arena_t *a) {
  /* keep the oldest block (usually the one sized for steady state), free the rest */
  nq_arena_block_t *b = a->head, *keep = NULL;
  while (b) {
    nq_arena_block_t *n = b->next;
    if (!n) keep = b;
    else free(b);
    b = n;
  }
  if (keep) keep->off = 0;
  a->head = keep;
  a->used = 0;
}

void nq_arena_deinit(nq_arena_t *a) {
  nq_arena_block_t *b = a->head;
  while (b) {
    nq_arena_block_t *n = b->next;
    free(b);
    b = n;
  }
  a->head = NULL;
  a->used = 0;
}

/* queue/local.c — the in-process backend ("local://NAME").
 *
 * The same semantics as the Redis Streams backend, modelled the same way so `nextq run` behaves like a cluster:
 *   - each topic is an append-only log of messages with a monotonically growing sequence number (the id);
 *   - each (topic, group) has a cursor into the log (like a consumer group's last-delivered-id) and a pending
 *     list (like the PEL: id -> consumer, lease deadline, delivery count); a message is delivered once per group;
 *   - the log is compacted below the smallest group cursor (pending entries own a copy of their body), which is
 *     the analogue of trimming only acked entries;
 *   - nack puts the message into the topic's delayed heap; a fetch moves due entries back to the log's tail;
 *   - one mutex + one condvar per queue; fetch and read_results wait on the condvar, every write broadcasts.
 * Time: CLOCK_MONOTONIC (leases and delays never jump with the wall clock).
 * A registry by NAME makes two opens of the same name in one process share one queue (refcounted); lease_ms comes
 * from the first open.
 */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "queue/queue.h"

/* ---------------------------------------------------------------- types */

typedef struct lmsg {
  uint64_t seq;
  char *body; /* owned */
  size_t len;
} lmsg_t;

typedef struct lpend {
  uint64_t seq;
  char *body; /* owned: copy, so the log can be compacted under pending entries */
  size_t len;
  char *consumer; /* owned */
  int64_t deadline_ms; /* monotonic; reclaimable when <= now */
  unsigned count;      /* delivery count */
} lpend_t;

typedef struct lgroup {
  char *name;      /* owned */
  uint64_t cursor; /* absolute log index of the next message to deliver */
  lpend_t *pend;   /* owned: in delivery order */
  size_t npend, cappend;
  struct lgroup *next; /* owned */
} lgroup_t;

typedef struct ldelay {
  int64_t due_ms;
  uint64_t order; /* FIFO among equal due times */
  char *body;     /* owned */
  size_t len;
} ldelay_t;

typedef struct ltopic {
  char *name;   /* owned */
  lmsg_t *log;  /* owned: log[i] has absolute index base + i */
  size_t nlog, caplog;
  uint64_t base;
  lgroup_t *groups; /* owned list */
  ldelay_t *heap;   /* owned: binary min-heap on (due_ms, order) */
  size_t nheap, capheap;
  struct ltopic *next; /* owned */
} ltopic_t;

typedef struct ldead {
  char *id, *topic, *reason, *body; /* owned */
} ldead_t;

typedef struct lresult {
  uint64_t seq;
  char *body; /* owned */
} lresult_t;

/* task id -> status (0 ok, 1 failed, 2 dead): open addressing, linear probing. */
typedef struct ltask {
  char *task; /* owned; NULL = empty slot */
  int status;
} ltask_t;

typedef struct ljob {
  char *name;     /* owned */
  char *meta;     /* owned, NULL until job_put */
  long long total, counts[3];
  ltask_t *tasks; /* owned */
  size_t ntasks, captasks;
  lresult_t *res; /* owned */
  size_t nres, capres;
  struct ljob *next; /* owned */
} ljob_t;

typedef struct lqueue {
  nq_queue_t base; /* first: the common header */
  char *name;      /* owned: registry key */
  int refs;        /* guarded by the registry lock */
  pthread_mutex_t mu;
  pthread_cond_t cv; /* CLOCK_MONOTONIC */
  uint64_t seq;      /* last id handed out */
  ltopic_t *topics;  /* owned list */
  ldead_t *dlq;      /* owned */
  size_t ndlq, capdlq;
  ljob_t *jobs;        /* owned list */
  struct lqueue *next; /* registry link */
} lqueue_t;

static pthread_mutex_t g_reg_mu = PTHREAD_MUTEX_INITIALIZER;
static lqueue_t *g_reg; /* borrowed links: each queue is owned by its refs */

/* ---------------------------------------------------------------- small helpers */

static int64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static char *memdup0(const char *s, size_t n) {
  char *p = malloc(n + 1);
  if (!p) return NULL;
  if (n) memcpy(p, s, n);
  p[n] = 0;
  return p;
}

static char *sdup(const char *s) { return memdup0(s, strlen(s)); }

static char *u64str(uint64_t v) {
  char b[32];
  snprintf(b, sizeof b, "%llu", (unsigned long long)v);
  return sdup(b);
}

/* Grows *arr (element size es) so that it holds at least need elements. */
static int grow(void **arr, size_t *cap, size_t need, size_t es) {
  if (need <= *cap) return 0;
  size_t nc = *cap ? *cap * 2 : 16;
  while (nc < need) nc *= 2;
  void *p = realloc(*arr, nc * es);
  if (!p) return NQ_ENOMEM;
  *arr = p;
  *cap = nc;
  return 0;
}

static int parse_seq(const char *id, uint64_t *out) {
  if (!id || !*id) return -1;
  char *end;
  errno = 0;
  unsigned long long v = strtoull(id, &end, 10);
  if (errno || *end) return -1;
  *out = v;
  return 0;
}

static int oom(nq_err_t *err, const char *what) {
  return nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "local queue: out of memory (%s)", what);
}

/* ---------------------------------------------------------------- topics, groups, heap */

static ltopic_t *topic_find(lqueue_t *q, const char *name) {
  for (ltopic_t *t = q->topics; t; t = t->next)
    if (strcmp(t->name, name) == 0) return t;
  return NULL;
}

static ltopic_t *topic_get(lqueue_t *q, const char *name) {
  ltopic_t *t = topic_find(q, name);
  if (t) return t;
  t = calloc(1, sizeof *t);
  if (!t || !(t->name = sdup(name))) {
    free(t);
    return NULL;
  }
  t->next = q->topics;
  q->topics = t;
  return t;
}

static lgroup_t *group_find(ltopic_t *t, const char *name) {
  for (lgroup_t *g = t->groups; g; g = g->next)
    if (strcmp(g->name, name) == 0) return g;
  return NULL;
}

/* New groups start at the oldest retained message (like XGROUP CREATE ... 0). */
static lgroup_t *group_get(ltopic_t *t, const char *name) {
  lgroup_t *g = group_find(t, name);
  if (g) return g;
  g = calloc(1, sizeof *g);
  if (!g || !(g->name = sdup(name))) {
    free(g);
    return NULL;
  }
  g->cursor = t->base;
  g->next = t->groups;
  t->groups = g;
  return g;
}

static lpend_t *pend_find(lgroup_t *g, uint64_t seq, size_t *idx) {
  for (size_t i = 0; i < g->npend; i++)
    if (g->pend[i].seq == seq) {
      if (idx) *idx = i;
      return &g->pend[i];
    }
  return NULL;
}

static void pend_remove(lgroup_t *g, size_t i) {
  free(g->pend[i].body);
  free(g->pend[i].consumer);
  memmove(&g->pend[i], &g->pend[i + 1], (g->npend - i - 1) * sizeof *g->pend);
  g->npend--;
}

static int heap_less(const ldelay_t *a, const ldelay_t *b) {
  return a->due_ms < b->due_ms || (a->due_ms == b->due_ms && a->order < b->order);
}

static int heap_push(ltopic_t *t, ldelay_t d) {
  if (grow((void **)&t->heap, &t->capheap, t->nheap + 1, sizeof *t->heap)) return NQ_ENOMEM;
  size_t i = t->nheap++;
  t->heap[i] = d;
  while (i > 0) {
    size_t p = (i - 1) / 2;
    if (!heap_less(&t->heap[i], &t->heap[p])) break;
    ldelay_t tmp = t->heap[p];
    t->heap[p] = t->heap[i];
    t->heap[i] = tmp;
    i = p;
  }
  return 0;
}

static ldelay_t heap_pop(ltopic_t *t) {
  ldelay_t top = t->heap[0];
  t->heap[0] = t->heap[--t->nheap];
  size_t i = 0;
  for (;;) {
    size_t l = 2 * i + 1, r = l + 1, m = i;
    if (l < t->nheap && heap_less(&t->heap[l], &t->heap[m])) m = l;
    if (r < t->nheap && heap_less(&t->heap[r], &t->heap[m])) m = r;
    if (m == i) break;
    ldelay_t tmp = t->heap[m];
    t->heap[m] = t->heap[i];
    t->heap[i] = tmp;
    i = m;
  }
  return top;
}

/* Appends a message to the topic log; takes ownership of body. */
static int log_append(lqueue_t *q, ltopic_t *t, char *body, size_t len) {
  if (grow((void **)&t->log, &t->caplog, t->nlog + 1, sizeof *t->log)) return NQ_ENOMEM;
  t->log[t->nlog++] = (lmsg_t){.seq = ++q->seq, .body = body, .len = len};
  return 0;
}

/* Drops the log prefix every group has passed (only when at least one group exists). */
static void log_compact(ltopic_t *t) {
  if (!t->groups) return;
  uint64_t minc = UINT64_MAX;
  for (lgroup_t *g = t->groups; g; g = g->next)
    if (g->cursor < minc) minc = g->cursor;
  size_t k = (size_t)(minc - t->base);
  if (k == 0 || (k < 256 && k * 2 < t->nlog)) return;
  for (size_t i = 0; i < k; i++) free(t->log[i].body);
  memmove(t->log, t->log + k, (t->nlog - k) * sizeof *t->log);
  t->nlog -= k;
  t->base += k;
}

/* Moves due delayed retries to the tail of the log. */
static int move_due(lqueue_t *q, ltopic_t *t, int64_t now) {
  while (t->nheap && t->heap[0].due_ms <= now) {
    if (grow((void **)&t->log, &t->caplog, t->nlog + 1, sizeof *t->log)) return NQ_ENOMEM;
    ldelay_t d = heap_pop(t);
    log_append(q, t, d.body, d.len); /* capacity ensured above */
  }
  return 0;
}

/* ---------------------------------------------------------------- jobs */

static ljob_t *job_find(lqueue_t *q, const char *name) {
  for (ljob_t *j = q->jobs; j; j = j->next)
    if (strcmp(j->name, name) == 0) return j;
  return NULL;
}

static ljob_t *job_get(lqueue_t *q, const char *name) {
  ljob_t *j = job_find(q, name);
  if (j) return j;
  j = calloc(1, sizeof *j);
  if (!j || !(j->name = sdup(name))) {
    free(j);
    return NULL;
  }
  j->total = -1;
  j->next = q->jobs;
  q->jobs = j;
  return j;
}

static uint64_t fnv1a(const char *s) {
  uint64_t h = 1469598103934665603ull;
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
  return h;
}

/* Slot of task (existing or the empty slot where it would go). Table must not be full. */
static ltask_t *task_slot(ljob_t *j, const char *task) {
  size_t mask = j->captasks - 1, i = (size_t)fnv1a(task) & mask;
  while (j->tasks[i].task && strcmp(j->tasks[i].task, task) != 0) i = (i + 1) & mask;
  return &j->tasks[i];
}

static int task_reserve(ljob_t *j) {
  if ((j->ntasks + 1) * 4 <= j->captasks * 3) return 0;
  size_t nc = j->captasks ? j->captasks * 2 : 64;
  ltask_t *old = j->tasks;
  size_t oldcap = j->captasks;
  ltask_t *nt = calloc(nc, sizeof *nt);
  if (!nt) return NQ_ENOMEM;
  j->tasks = nt;
  j->captasks = nc;
  for (size_t i = 0; i < oldcap; i++)
    if (old[i].task) *task_slot(j, old[i].task) = old[i];
  free(old);
  return 0;
}

static int status_index(const char *s) {
  if (!s) return -1;
  if (strcmp(s, "ok") == 0) return 0;
  if (strcmp(s, "failed") == 0) return 1;
  if (strcmp(s, "dead") == 0) return 2;
  return -1;
}

/* ---------------------------------------------------------------- vtable: messages */

#define LQ(q) ((lqueue_t *)(q))

static int l_publish(nq_queue_t *qq, const char *topic, const char *body, size_t len, nq_err_t *err) {
  lqueue_t *q = LQ(qq);
  if (!topic || !*topic || (!body && len))
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "local queue publish: empty topic or NULL body");
  char *b = memdup0(body ? body : "", len);
  if (!b) return oom(err, "publish");
  pthread_mutex_lock(&q->mu);
  ltopic_t *t = topic_get(q, topic);
  int rc = t ? log_append(q, t, b, len) : NQ_ENOMEM;
  if (rc == 0) pthread_cond_broadcast(&q->cv);
  pthread_mutex_unlock(&q->mu);
  if (rc) {
    free(b);
    return oom(err, topic);
  }
  return 0;
}

/* Fills one delivery with copies. */
static int deliver(nq_delivery_t *d, const char *topic, uint64_t seq, const char *body, size_t len, unsigned count) {
  d->id = u64str(seq);
  d->topic = sdup(topic);
  d->body = memdup0(body, len);
  d->len = len;
  d->delivery_count = count;
  d->backend_tag = 0;
  return d->id && d->topic && d->body ? 0 : NQ_ENOMEM;
}

static int l_fetch(nq_queue_t *qq, const char *const *topics, int ntopics, const char *group, const char *consumer,
                   int max_n, int block_ms, nq_delivery_t **out, int *n_out, nq_err_t *err) {
  lqueue_t *q = LQ(qq);
  if (!out || !n_out || !topics || ntopics <= 0 || !group || !consumer || max_n <= 0)
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "local queue fetch: bad arguments");
  *out = NULL;
  *n_out = 0;
  for (int i = 0; i < ntopics; i++)
    if (!topics[i] || !*topics[i]) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "local queue fetch: empty topic");
  nq_delivery_t *d = calloc((size_t)max_n, sizeof *d);
  if (!d) return oom(err, "fetch");
  int n = 0, rc = 0;
  int64_t deadline = mono_ms() + (block_ms > 0 ? block_ms : 0);
  pthread_mutex_lock(&q->mu);
  for (;;) {
    int64_t now = mono_ms();
    int64_t wake = deadline;
    for (int ti = 0; ti < ntopics && rc == 0; ti++) {
      ltopic_t *t = topic_get(q, topics[ti]);
      lgroup_t *g = t ? group_get(t, group) : NULL;
      if (!g) {
        rc = NQ_ENOMEM;
        break;
      }
      /* 1. reclaim expired leases */
      for (size_t i = 0; i < g->npend && n < max_n; i++) {
        lpend_t *p = &g->pend[i];
        if (p->deadline_ms > now) continue;
        char *c = sdup(consumer);
        if (!c || (rc = deliver(&d[n], t->name, p->seq, p->body, p->len, p->count + 1))) {
          free(c);
          rc = NQ_ENOMEM;
          break;
        }
        n++;
        free(p->consumer);
        p->consumer = c;
        p->count++;
        p->deadline_ms = now + q->base.lease_ms;
      }
      /* 2. due delayed retries back to the log */
      if (rc == 0) rc = move_due(q, t, now);
      /* 3. new messages */
      while (rc == 0 && n < max_n && g->cursor < t->base + t->nlog) {
        lmsg_t *m = &t->log[g->cursor - t->base];
        if (grow((void **)&g->pend, &g->cappend, g->npend + 1, sizeof *g->pend)) {
          rc = NQ_ENOMEM;
          break;
        }
        lpend_t p = {.seq = m->seq, .body = memdup0(m->body, m->len), .len = m->len, .consumer = sdup(consumer),
                     .deadline_ms = now + q->base.lease_ms, .count = 1};
        if (!p.body || !p.consumer || deliver(&d[n], t->name, m->seq, m->body, m->len, 1)) {
          free(p.body);
          free(p.consumer);
          rc = NQ_ENOMEM;
          break;
        }
        g->pend[g->npend++] = p;
        g->cursor++;
        n++;
      }
      log_compact(t);
      /* when to look again: the next due retry or the next lease expiry */
      if (t->nheap && t->heap[0].due_ms < wake) wake = t->heap[0].due_ms;
      for (size_t i = 0; i < g->npend; i++)
        if (g->pend[i].deadline_ms < wake) wake = g->pend[i].deadline_ms;
    }
    if (rc || n > 0 || now >= deadline) break;
    if (wake <= now) continue;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int64_t ns = (int64_t)ts.tv_nsec + (wake - now) * 1000000ll;
    ts.tv_sec += ns / 1000000000ll;
    ts.tv_nsec = ns % 1000000000ll;
    pthread_cond_timedwait(&q->cv, &q->mu, &ts);
  }
  pthread_mutex_unlock(&q->mu);
  if (rc) {
    /* messages already moved to pending stay there and are reclaimed after the lease: nothing is lost */
    nq_delivery_free_array(d, max_n);
    return oom(err, "fetch");
  }
  if (n == 0) {
    free(d);
    d = NULL;
  }
  *out = d;
  *n_out = n;
  return 0;
}

/* Looks up the pending entry of d in group; returns NULL (t and g set as far as found) when not pending. */
static lpend_t *pend_of(lqueue_t *q, const char *group, const nq_delivery_t *d, ltopic_t **t, lgroup_t **g,
                        size_t *idx) {
  uint64_t seq;
  *t = NULL;
  *g = NULL;
  if (!d || !d->topic || parse_seq(d->id, &seq)) return NULL;
  if (!(*t = topic_find(q, d->topic))) return NULL;
  if (!(*g = group_find(*t, group))) return NULL;
  return pend_find(*g, seq, idx);
}

static int check_del(const char *what, const char *group, const nq_delivery_t *d, nq_err_t *err) {
  if (!group || !d || !d->id || !d->topic)
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "local queue %s: NULL group or delivery", what);
  return 0;
}

/* Ack of a message that is not pending (already acked, or the id is unknown) is a no-op, as XACK. */
static int l_ack(nq_queue_t *qq, const char *group, const nq_delivery_t *d, nq_err_t *err) {
  lqueue_t *q = LQ(qq);
  int rc = check_del("ack", group, d, err);
  if (rc) return rc;
  pthread_mutex_lock(&q->mu);
  ltopic_t *t;
  lgroup_t *g;
  size_t i;
  if (pend_of(q, group, d, &t, &g, &i)) {
    pend_remove(g, i);
    pthread_cond_broadcast(&q->cv);
  }
  pthread_mutex_unlock(&q->mu);
  return 0;
}

/* Atomic under the lock: the pending entry goes away and the retry is scheduled together. A nack of a message
 * that is no longer pending does nothing (so a retry is never doubled). */
static int l_nack(nq_queue_t *qq, const char *group, const nq_delivery_t *d, int retry_after_ms, const char *new_body,
                  nq_err_t *err) {
  lqueue_t *q = LQ(qq);
  int rc = check_del("nack", group, d, err);
  if (rc) return rc;
  pthread_mutex_lock(&q->mu);
  ltopic_t *t;
  lgroup_t *g;
  size_t i;
  lpend_t *p = pend_of(q, group, d, &t, &g, &i);
  if (p) {
    size_t len = new_body ? strlen(new_body) : p->len;
    char *b = new_body ? memdup0(new_body, len) : memdup0(p->body, p->len);
    ldelay_t dl = {.due_ms = mono_ms() + (retry_after_ms > 0 ? retry_after_ms : 0), .order = ++q->seq, .body = b,
                   .len = len};
    if (!b || heap_push(t, dl)) {
      free(b);
      rc = oom(err, "nack");
    } else {
      pend_remove(g, i);
      pthread_cond_broadcast(&q->cv);
    }
  }
  pthread_mutex_unlock(&q->mu);
  return rc;
}

static int l_extend_lease(nq_queue_t *qq, const char *group, const char *consumer, const nq_delivery_t *d,
                          nq_err_t *err) {
  lqueue_t *q = LQ(qq);
  int rc = check_del("extend_lease", group, d, err);
  if (rc) return rc;
  if (!consumer) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "local queue extend_lease: NULL consumer");
  pthread_mutex_lock(&q->mu);
  ltopic_t *t;
  lgroup_t *g;
  lpend_t *p = pend_of(q, group, d, &t, &g, NULL);
  if (p) {
    char *c = sdup(consumer);
    if (!c) {
      rc = oom(err, "extend_lease");
    } else {
      free(p->consumer);
      p->consumer = c;
      p->deadline_ms = mono_ms() + q->base.lease_ms;
    }
  } else {
    rc = nq_err_set(err, NQ_ENOENT, 0, "local queue extend_lease: message %s of topic %s is not pending in group %s",
                    d->id, d->topic, group);
  }
  pthread_mutex_unlock(&q->mu);
  return rc;
}

static int l_dead_letter(nq_queue_t *qq, const char *group, const nq_delivery_t *d, const char *reason,
                         nq_err_t *err) {
  lqueue_t *q = LQ(qq);
  int rc = check_del("dead_letter", group, d, err);
  if (rc) return rc;
  pthread_mutex_lock(&q->mu);
  ltopic_t *t;
  lgroup_t *g;
  size_t i;
  lpend_t *p = pend_of(q, group, d, &t, &g, &i);
  if (p) {
    ldead_t e = {.id = u64str(++q->seq), .topic = sdup(d->topic), .reason = sdup(reason ? reason : ""),
                 .body = memdup0(p->body, p->len)};
    if (!e.id || !e.topic || !e.reason || !e.body || grow((void **)&q->dlq, &q->capdlq, q->ndlq + 1, sizeof *q->dlq)) {
      free(e.id), free(e.topic), free(e.reason), free(e.body);
      rc = oom(err, "dead_letter");
    } else {
      q->dlq[q->ndlq++] = e;
      pend_remove(g, i);
      pthread_cond_broadcast(&q->cv);
    }
  }
  pthread_mutex_unlock(&q->mu);
  return rc;
}

static int l_stats(nq_queue_t *qq, const char *topic, const char *group, nq_queue_stats_t *st, nq_err_t *err) {
  lqueue_t *q = LQ(qq);
  if (!topic || !st) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "local queue stats: NULL topic or output");
  memset(st, 0, sizeof *st);
  pthread_mutex_lock(&q->mu);
  ltopic_t *t = topic_find(q, topic);
  if (t) {
    lgroup_t *g = group ? group_find(t, group) : NULL;
    if (g) {
      st->depth = (long long)(t->base + t->nlog - g->cursor);
      st->in_flight = (long long)g->npend;
    } else {
      /* no such group yet: it would start at the oldest retained message */
      st->depth = (long long)t->nlog;
      if (!group)
        for (lgroup_t *x = t->groups; x; x = x->next) st->in_flight += (long long)x->npend;
    }
    st->delayed = (long long)t->nheap;
  }
  st->dead = (long long)q->ndlq;
  st->lag = st->depth;
  pthread_mutex_unlock(&q->mu);
  return 0;
}

/* ---------------------------------------------------------------- vtable: results and jobs */

static int l_publish_result(nq_queue_t *qq, const char *job, const char *body, nq_err_t *err) {
  lqueue_t *q = LQ(qq);
  if (!job || !body) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "local queue publish_result: NULL argument");
  char *b = sdup(body);
  if (!b) return oom(err, "publish_result");
  pthread_mutex_lock(&q->mu);
  ljob_t *j = job_get(q, job);
  int rc = 0;
  if (!j || grow((void **)&j->res, &j->capres, j->nres + 1, sizeof *j->res)) {
    rc = NQ_ENOMEM;
  } else {
    j->res[j->nres++] = (lresult_t){.seq = ++q->seq, .body = b};
    pthread_cond_broadcast(&q->cv);
  }
  pthread_mutex_unlock(&q->mu);
  if (rc) {
    free(b);
    return oom(err, "publish_result");
  }
  return 0;
}

static int l_read_results(nq_queue_t *qq, const char *job, const char *after, int max_n, int block_ms,
                          nq_result_entry_t **out, int *n_out, nq_err_t *err) {
  lqueue_t *q = LQ(qq);
  if (!job || !out || !n_out || max_n <= 0)
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "local queue read_results: bad arguments");
  *out = NULL;
  *n_out = 0;
  uint64_t from = 0;
  if (after && *after && parse_seq(after, &from))
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "local queue read_results: bad cursor '%s' for job %s", after,
                      job);
  int64_t deadline = mono_ms() + (block_ms > 0 ? block_ms : 0);
  nq_result_entry_t *r = NULL;
  int n = 0, rc = 0;
  pthread_mutex_lock(&q->mu);
  for (;;) {
    ljob_t *j = job_find(q, job);
    size_t start = 0;
    if (j) { /* results are in seq order: binary search for the first seq > from */
      size_t lo = 0, hi = j->nres;
      while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (j->res[mid].seq <= from) lo = mid + 1;
        else hi = mid;
      }
      start = lo;
    }
    if (j && start < j->nres) {
      size_t cnt = j->nres - start;
      if (cnt > (size_t)max_n) cnt = (size_t)max_n;
      r = calloc(cnt, sizeof *r);
      if (!r) {
        rc = NQ_ENOMEM;
        break;
      }
      for (size_t i = 0; i < cnt; i++) {
        r[i].id = u64str(j->res[start + i].seq);
        r[i].body = sdup(j->res[start + i].body);
        if (!r[i].id || !r[i].body) rc = NQ_ENOMEM;
      }
      n = (int)cnt;
      break;
    }
    int64_t now = mono_ms();
    if (now >= deadline) break;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int64_t ns = (int64_t)ts.tv_nsec + (deadline - now) * 1000000ll;
    ts.tv_sec += ns / 1000000000ll;
    ts.tv_nsec = ns % 1000000000ll;
    pthread_cond_timedwait(&q->cv, &q->mu, &ts);
  }
  pthread_mutex_unlock(&q->mu);
  if (rc) {
    nq_result_entries_free(r, n);
    return oom(err, "read_results");
  }
  *out = r;
  *n_out = n;
  return 0;
}

static int l_job_put(nq_queue_t *qq, const char *job, const char *meta_json, nq_err_t *err) {
  lqueue_t *q = LQ(qq);
  if (!job || !meta_json) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "local queue job_put: NULL argument");
  char *m = sdup(meta_json);
  if (!m) return oom(err, "job_put");
  pthread_mutex_lock(&q->mu);
  ljob_t *j = job_get(q, job);
  if (j) {
    free(j->meta);
    j->meta = m;
  }
  pthread_mutex_unlock(&q->mu);
  if (!j) {
    free(m);
    return oom(err, "job_put");
  }
  return 0;
}

static int l_job_get(nq_queue_t *qq, const char *job, char **meta_json, nq_err_t *err) {
  lqueue_t *q = LQ(qq);
  if (!job || !meta_json) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "local queue job_get: NULL argument");
  *meta_json = NULL;
  int rc = 0;
  pthread_mutex_lock(&q->mu);
  ljob_t *j = job_find(q, job);
  if (j && j->meta && !(*meta_json = sdup(j->meta))) rc = NQ_ENOMEM;
  pthread_mutex_unlock(&q->mu);
  return rc ? oom(err, "job_get") : 0;
}

static int l_job_set_total(nq_queue_t *qq, const char *job, long long total, nq_err_t *err) {
  lqueue_t *q = LQ(qq);
  if (!job) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "local queue job_set_total: NULL job");
  pthread_mutex_lock(&q->mu);
  ljob_t *j = job_get(q, job);
  if (j) {
    j->total = total;
    pthread_cond_broadcast(&q->cv);
  }
  pthread_mutex_unlock(&q->mu);
  return j ? 0 : oom(err, "job_set_total");
}

static void counts_of(const ljob_t *j, nq_job_counts_t *c) {
  c->total = j ? j->total : -1;
  c->ok = j ? j->counts[0] : 0;
  c->failed = j ? j->counts[1] : 0;
  c->dead = j ? j->counts[2] : 0;
}

static int l_job_mark(nq_queue_t *qq, const char *job, const char *task, const char *status, nq_job_counts_t *after,
                      int *changed, nq_err_t *err) {
  lqueue_t *q = LQ(qq);
  int si = status_index(status);
  if (!job || !task) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "local queue job_mark: NULL job or task");
  if (si < 0)
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "local queue job_mark: status '%s' of task %s is not ok|failed|dead",
                      status ? status : "(null)", task);
  int rc = 0, ch = 0;
  pthread_mutex_lock(&q->mu);
  ljob_t *j = job_get(q, job);
  if (!j || task_reserve(j)) {
    rc = NQ_ENOMEM;
  } else {
    ltask_t *s = task_slot(j, task);
    if (!s->task) {
      if (!(s->task = sdup(task))) {
        rc = NQ_ENOMEM;
      } else {
        s->status = si;
        j->ntasks++;
        j->counts[si]++;
        ch = 1;
      }
    } else if (s->status != si) {
      j->counts[s->status]--;
      j->counts[si]++;
      s->status = si;
      ch = 1;
    }
    if (after) counts_of(j, after);
    if (ch) pthread_cond_broadcast(&q->cv);
  }
  pthread_mutex_unlock(&q->mu);
  if (rc) return oom(err, "job_mark");
  if (changed) *changed = ch;
  return 0;
}

static int l_tasks_ok(nq_queue_t *qq, const char *job, const char *const *tasks, int n, unsigned char *ok,
                      nq_err_t *err) {
  lqueue_t *q = LQ(qq);
  if (!job || !ok || n < 0 || (n && !tasks))
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "local queue tasks_ok: bad arguments");
  pthread_mutex_lock(&q->mu);
  ljob_t *j = job_find(q, job);
  for (int i = 0; i < n; i++) {
    ok[i] = 0;
    if (!j || !j->captasks || !tasks[i]) continue;
    const ltask_t *s = task_slot(j, tasks[i]);
    ok[i] = s->task && s->status == status_index("ok");
  }
  pthread_mutex_unlock(&q->mu);
  return 0;
}

static int l_job_counts(nq_queue_t *qq, const char *job, nq_job_counts_t *c, nq_err_t *err) {
  lqueue_t *q = LQ(qq);
  if (!job || !c) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "local queue job_counts: NULL argument");
  pthread_mutex_lock(&q->mu);
  counts_of(job_find(q, job), c);
  pthread_mutex_unlock(&q->mu);
  return 0;
}

/* ---------------------------------------------------------------- vtable: batches */

/* All n messages appended under one lock hold: a reader sees none or all of them. */
static int l_publish_batch(nq_queue_t *qq, const char *topic, const char *const *bodies, const size_t *lens, int n,
                           nq_err_t *err) {
  lqueue_t *q = LQ(qq);
  if (!topic || !*topic || n < 0 || (n > 0 && (!bodies || !lens)))
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "local queue publish_batch: empty topic or bad arguments");
  for (int i = 0; i < n; i++)
    if (!bodies[i] && lens[i])
      return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "local queue publish_batch to %s: NULL body at item %d", topic,
                        i);
  if (n == 0) return 0;
  char **b = calloc((size_t)n, sizeof *b);
  if (!b) return oom(err, "publish_batch");
  int rc = 0;
  for (int i = 0; i < n && rc == 0; i++)
    if (!(b[i] = memdup0(bodies[i] ? bodies[i] : "", lens[i]))) rc = NQ_ENOMEM;
  if (rc == 0) {
    pthread_mutex_lock(&q->mu);
    ltopic_t *t = topic_get(q, topic);
    if (!t || grow((void **)&t->log, &t->caplog, t->nlog + (size_t)n, sizeof *t->log)) rc = NQ_ENOMEM;
    for (int i = 0; rc == 0 && i < n; i++) {
      log_append(q, t, b[i], lens[i]); /* capacity ensured above: cannot fail */
      b[i] = NULL;
    }
    if (rc == 0) pthread_cond_broadcast(&q->cv);
    pthread_mutex_unlock(&q->mu);
  }
  for (int i = 0; i < n; i++) free(b[i]);
  free(b);
  return rc ? oom(err, topic) : 0;
}

/* One item of complete_batch under q->mu. Everything that can fail (memory) is done before the first change, so
 * an item is either complete (pending entry gone, result appended, status recorded) or untouched. A delivery that
 * is no longer pending (acked, nacked, dead-lettered, or completed before) makes the item a no-op: no second result,
 * no second count. */
static int complete_one(lqueue_t *q, const char *group, const nq_completion_t *it, int si, nq_job_counts_t *after,
                        int *changed) {
  ltopic_t *t;
  lgroup_t *g;
  size_t pi = 0;
  *changed = 0;
  if (it->d && !pend_of(q, group, it->d, &t, &g, &pi)) {
    counts_of(job_find(q, it->job), after);
    return 0;
  }
  ljob_t *j = job_get(q, it->job);
  if (!j || task_reserve(j) || grow((void **)&j->res, &j->capres, j->nres + 1, sizeof *j->res)) return NQ_ENOMEM;
  ltask_t *s = task_slot(j, it->task);
  char *b = sdup(it->result), *tk = s->task ? NULL : sdup(it->task);
  if (!b || (!s->task && !tk)) {
    free(b);
    free(tk);
    return NQ_ENOMEM;
  }
  /* commit */
  if (it->d) pend_remove(g, pi);
  j->res[j->nres++] = (lresult_t){.seq = ++q->seq, .body = b};
  if (tk) {
    s->task = tk;
    s->status = si;
    j->ntasks++;
    j->counts[si]++;
    *changed = 1;
  } else if (s->status != si) {
    j->counts[s->status]--;
    j->counts[si]++;
    s->status = si;
    *changed = 1;
  }
  counts_of(j, after);
  return 0;
}

static int l_complete_batch(nq_queue_t *qq, const char *group, const nq_completion_t *items, int n,
                            nq_job_counts_t *counts, int *changed, nq_err_t *err) {
  lqueue_t *q = LQ(qq);
  if (n < 0 || (n > 0 && !items))
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "local queue complete_batch: bad arguments (n %d)", n);
  /* validate everything first: a bad item fails the call before any change */
  for (int i = 0; i < n; i++) {
    const nq_completion_t *it = &items[i];
    if (!it->job || !*it->job || !it->task || !*it->task || !it->result)
      return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "local queue complete_batch: item %d has an empty job/task or "
                        "NULL result", i);
    if (status_index(it->status) < 0)
      return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL,
                        "local queue complete_batch: status '%s' of task %s (item %d) is not ok|failed|dead",
                        it->status ? it->status : "(null)", it->task, i);
    if (it->d && (!group || !*group || !it->d->id || !it->d->topic))
      return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL,
                        "local queue complete_batch: item %d (task %s): NULL group or delivery fields", i, it->task);
  }
  int rc = 0, done = 0;
  pthread_mutex_lock(&q->mu);
  for (int i = 0; i < n && rc == 0; i++) {
    nq_job_counts_t c;
    int ch = 0;
    rc = complete_one(q, group, &items[i], status_index(items[i].status), &c, &ch);
    if (rc) break;
    if (counts) counts[i] = c;
    if (changed) changed[i] = ch;
    done++;
  }
  if (done) pthread_cond_broadcast(&q->cv);
  pthread_mutex_unlock(&q->mu);
  if (rc)
    return nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE,
                      "local queue complete_batch: out of memory at item %d of %d (items before it are complete)",
                      done, n);
  return 0;
}

/* ---------------------------------------------------------------- vtable: DLQ */

static int l_dlq_list(nq_queue_t *qq, int max_n, nq_dlq_entry_t **out, int *n_out, nq_err_t *err) {
  lqueue_t *q = LQ(qq);
  if (!out || !n_out || max_n <= 0) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "local queue dlq_list: bad arguments");
  *out = NULL;
  *n_out = 0;
  int rc = 0, n = 0;
  nq_dlq_entry_t *e = NULL;
  pthread_mutex_lock(&q->mu);
  size_t cnt = q->ndlq < (size_t)max_n ? q->ndlq : (size_t)max_n;
  if (cnt && !(e = calloc(cnt, sizeof *e))) rc = NQ_ENOMEM;
  for (size_t i = 0; e && i < cnt; i++, n++) {
    e[i].id = sdup(q->dlq[i].id);
    e[i].topic = sdup(q->dlq[i].topic);
    e[i].reason = sdup(q->dlq[i].reason);
    e[i].body = sdup(q->dlq[i].body);
    if (!e[i].id || !e[i].topic || !e[i].reason || !e[i].body) rc = NQ_ENOMEM;
  }
  pthread_mutex_unlock(&q->mu);
  if (rc) {
    nq_dlq_entries_free(e, n);
    return oom(err, "dlq_list");
  }
  *out = e;
  *n_out = n;
  return 0;
}

static void dead_free(ldead_t *e) {
  free(e->id), free(e->topic), free(e->reason), free(e->body);
}

static int l_dlq_requeue(nq_queue_t *qq, const char *id, int *n, nq_err_t *err) {
  lqueue_t *q = LQ(qq);
  int rc = 0, moved = 0;
  pthread_mutex_lock(&q->mu);
  size_t w = 0;
  for (size_t i = 0; i < q->ndlq; i++) {
    ldead_t *e = &q->dlq[i];
    int take = rc == 0 && (!id || strcmp(e->id, id) == 0);
    if (take) {
      ltopic_t *t = topic_get(q, e->topic);
      if (!t || log_append(q, t, e->body, strlen(e->body))) {
        rc = NQ_ENOMEM;
        take = 0;
      } else {
        e->body = NULL; /* moved into the log */
        dead_free(e);
        moved++;
      }
    }
    if (!take) q->dlq[w++] = *e;
  }
  q->ndlq = w;
  if (moved) pthread_cond_broadcast(&q->cv);
  pthread_mutex_unlock(&q->mu);
  if (n) *n = moved;
  if (rc) return oom(err, "dlq_requeue");
  if (id && moved == 0) return nq_err_set(err, NQ_ENOENT, 0, "local queue dlq_requeue: no DLQ entry '%s'", id);
  return 0;
}

static int l_dlq_purge(nq_queue_t *qq, int *n, nq_err_t *err) {
  lqueue_t *q = LQ(qq);
  pthread_mutex_lock(&q->mu);
  if (n) *n = (int)q->ndlq;
  for (size_t i = 0; i < q->ndlq; i++) dead_free(&q->dlq[i]);
  q->ndlq = 0;
  pthread_mutex_unlock(&q->mu);
  return 0;
}

/* ---------------------------------------------------------------- lifecycle */

static void lqueue_destroy(lqueue_t *q) {
  for (ltopic_t *t = q->topics, *tn; t; t = tn) {
    tn = t->next;
    for (size_t i = 0; i < t->nlog; i++) free(t->log[i].body);
    for (size_t i = 0; i < t->nheap; i++) free(t->heap[i].body);
    for (lgroup_t *g = t->groups, *gn; g; g = gn) {
      gn = g->next;
      for (size_t i = 0; i < g->npend; i++) free(g->pend[i].body), free(g->pend[i].consumer);
      free(g->pend);
      free(g->name);
      free(g);
    }
    free(t->log);
    free(t->heap);
    free(t->name);
    free(t);
  }
  for (size_t i = 0; i < q->ndlq; i++) dead_free(&q->dlq[i]);
  free(q->dlq);
  for (ljob_t *j = q->jobs, *jn; j; j = jn) {
    jn = j->next;
    for (size_t i = 0; i < j->captasks; i++) free(j->tasks[i].task);
    for (size_t i = 0; i < j->nres; i++) free(j->res[i].body);
    free(j->tasks);
    free(j->res);
    free(j->meta);
    free(j->name);
    free(j);
  }
  pthread_cond_destroy(&q->cv);
  pthread_mutex_destroy(&q->mu);
  free(q->name);
  free(q);
}

static void l_free(nq_queue_t *qq) {
  lqueue_t *q = LQ(qq);
  pthread_mutex_lock(&g_reg_mu);
  int last = --q->refs == 0;
  if (last)
    for (lqueue_t **pp = &g_reg; *pp; pp = &(*pp)->next)
      if (*pp == q) {
        *pp = q->next;
        break;
      }
  pthread_mutex_unlock(&g_reg_mu);
  if (last) lqueue_destroy(q);
}

static const nq_queue_i local_vt = {
    .name = "local",
    .publish = l_publish,
    .fetch = l_fetch,
    .ack = l_ack,
    .nack = l_nack,
    .extend_lease = l_extend_lease,
    .dead_letter = l_dead_letter,
    .stats = l_stats,
    .publish_result = l_publish_result,
    .read_results = l_read_results,
    .job_put = l_job_put,
    .job_get = l_job_get,
    .job_set_total = l_job_set_total,
    .job_mark = l_job_mark,
    .job_counts = l_job_counts,
    .tasks_ok = l_tasks_ok,
    .dlq_list = l_dlq_list,
    .dlq_requeue = l_dlq_requeue,
    .dlq_purge = l_dlq_purge,
    .publish_batch = l_publish_batch,
    .complete_batch = l_complete_batch,
    .free = l_free,
};

int nq_queue_local_open(const char *name, const nq_queue_opts_t *opts, nq_queue_t **out, nq_err_t *err) {
  if (!name || !out) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "local queue open: NULL argument");
  *out = NULL;
  pthread_mutex_lock(&g_reg_mu);
  for (lqueue_t *q = g_reg; q; q = q->next)
    if (strcmp(q->name, name) == 0) {
      q->refs++;
      *out = &q->base;
      pthread_mutex_unlock(&g_reg_mu);
      return 0;
    }
  lqueue_t *q = calloc(1, sizeof *q);
  if (!q || !(q->name = sdup(name))) {
    free(q);
    pthread_mutex_unlock(&g_reg_mu);
    return oom(err, "open");
  }
  q->base.vt = &local_vt;
  q->base.lease_ms = opts && opts->lease_ms > 0 ? opts->lease_ms : 30000;
  snprintf(q->base.url, sizeof q->base.url, "local://%s", name);
  q->refs = 1;
  pthread_mutex_init(&q->mu, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&q->cv, &ca);
  pthread_condattr_destroy(&ca);
  q->next = g_reg;
  g_reg = q;
  pthread_mutex_unlock(&g_reg_mu);
  *out = &q->base;
  return 0;
}

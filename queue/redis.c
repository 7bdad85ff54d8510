/* queue/redis.c — the Redis Streams backend ("redis://HOST:PORT[/DB]"), hiredis 0.14, redis-server >= 7.0.
 *
 * Keys:
 *   nq:<topic>            stream of tasks, field "body"; one consumer group per stage, created lazily at id 0
 *                         (so messages published before the group existed are seen); never trimmed with MAXLEN:
 *                         every 128 acks of a connection a Lua script trims below the oldest pending/undelivered
 *                         entry of every group (XTRIM MINID), so nothing unacked is ever removed.
 *   nq:delayed:<topic>    ZSET of nacked messages, score = due time (server ms), member "<uniq>\n<body>";
 *                         moved back into the stream by a Lua script at the start of each fetch.
 *   nq:dlq                dead-letter stream: topic, reason, body, id, group.
 *   nq:results:<job>      results stream: field "body", repeated in entries written by complete_batch (one entry per
 *                         call and job; read_results splits them, cursors "<id>/<k>" point inside an entry).
 *   nq:job:<job>          hash: meta, total, ok, failed, dead.   nq:job:<job>:tasks  hash task -> status.
 * Lease = the PEL idle time: a fetch first XAUTOCLAIMs entries idle >= lease_ms (delivery count from XPENDING),
 * extend_lease is XCLAIM ... 0 id JUSTID (resets the idle time).
 * Round trips: fetch = one FETCH script (reclaim + due retries + read for max_n <= 16) or that script plus an
 * XREADGROUP (larger max_n, or blocking); publish_batch = one pipeline; complete_batch = one pipeline of COMPLETE
 * scripts (XACK + result + job_mark per item, all or nothing per item).
 * Time: delayed retries use the server's clock (TIME inside the scripts); leases use the server's idle times.
 * Connections: one redisContext per calling thread (pthread key per queue object), created lazily. An I/O error
 * drops the context and returns NQ_EQUEUE|NQ_ERR_RETRIABLE; a call on a context that was already open is retried
 * once on a fresh connection first, so a server restart costs the caller nothing (a write whose reply was lost may
 * then happen twice: at-least-once, never a loss).
 */
#include <errno.h>
#include <hiredis/hiredis.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include "queue/queue.h"
#include "queue/redis_lua.h"

#define RQ_MAX_TOPICS 64
#define RQ_MAX_ARGS (8 + 2 * RQ_MAX_TOPICS)
#define RQ_KEY_MAX 512
#define RQ_DEFAULT_TMO_MS 10000
#define RQ_TRIM_EVERY 128

/* ---------------------------------------------------------------- types */

typedef struct rq rq_t;

typedef struct rconn {
  redisContext *c; /* owned; NULL = reconnect on next use */
  rq_t *q;         /* borrowed */
  int tmo_ms;      /* socket timeout currently set on c */
  unsigned acks;   /* acks since the last trim */
  struct rconn *prev, *next; /* q->conns list, guarded by q->mu */
} rconn_t;

/* Known (stream, group) pairs whose group was created; a NOGROUP error forgets them all. */
typedef struct rgroup {
  char *key; /* owned: "<stream>\n<group>" */
  struct rgroup *next;
} rgroup_t;

struct rq {
  nq_queue_t base; /* first */
  char host[256];
  int port, db;
  char *user;        /* owned, NULL: AUTH without a user name (requirepass) */
  char *pass;        /* owned, NULL: no AUTH; wiped at close; never printed */
  pthread_key_t key; /* -> rconn_t of the calling thread */
  pthread_mutex_t mu;
  rconn_t *conns;    /* owned: every thread's connection, freed at close */
  rgroup_t *groups;  /* owned */
  char sha[NQ_LUA_N][41];
};

/* Argument vector for redisCommandArgv/redisAppendCommandArgv. Strings are borrowed; numbers are formatted
 * into the vector's own buffers. */
typedef struct rargs {
  int n;
  const char *v[RQ_MAX_ARGS];
  size_t l[RQ_MAX_ARGS];
  char num[8][32];
  int nnum;
} rargs_t;

static void ra_bin(rargs_t *a, const char *s, size_t len) {
  NQ_ASSERT(a->n < RQ_MAX_ARGS);
  a->v[a->n] = s;
  a->l[a->n++] = len;
}
static void ra_str(rargs_t *a, const char *s) { ra_bin(a, s, strlen(s)); }
static void ra_ll(rargs_t *a, long long v) {
  NQ_ASSERT(a->nnum < 8);
  char *b = a->num[a->nnum++];
  snprintf(b, 32, "%lld", v);
  ra_str(a, b);
}
static void ra_init(rargs_t *a, const char *cmd) {
  a->n = 0;
  a->nnum = 0;
  ra_str(a, cmd);
}

/* ---------------------------------------------------------------- small helpers */

static char *memdup0(const char *s, size_t n) {
  char *p = malloc(n + 1);
  if (!p) return NULL;
  if (n) memcpy(p, s, n);
  p[n] = 0;
  return p;
}

static int oom(nq_err_t *err, const char *what) {
  return nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "redis queue: out of memory (%s)", what);
}

/* "nq:" + a + b; NQ_EINVAL if it does not fit. */
static int mkkey(char *out, const char *a, const char *b, const char *what, nq_err_t *err) {
  if (!a || !*a) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "redis queue %s: empty name", what);
  int n = snprintf(out, RQ_KEY_MAX, "nq:%s%s", a, b ? b : "");
  if (n < 0 || n >= RQ_KEY_MAX)
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "redis queue %s: name '%.40s...' too long", what, a);
  return 0;
}

static int mkkey2(char *out, const char *pre, const char *a, const char *post, const char *what, nq_err_t *err) {
  if (!a || !*a) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "redis queue %s: empty name", what);
  int n = snprintf(out, RQ_KEY_MAX, "nq:%s%s%s", pre, a, post ? post : "");
  if (n < 0 || n >= RQ_KEY_MAX)
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "redis queue %s: name '%.40s...' too long", what, a);
  return 0;
}

static long long reply_ll(const redisReply *r, long long dflt) {
  if (!r) return dflt;
  if (r->type == REDIS_REPLY_INTEGER) return r->integer;
  if (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS) {
    char *end;
    errno = 0;
    long long v = strtoll(r->str, &end, 10);
    if (!errno && end != r->str) return v;
  }
  return dflt;
}

static int is_str(const redisReply *r) {
  return r && (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS);
}

static int starts(const char *s, const char *p) { return strncmp(s, p, strlen(p)) == 0; }

/* An error reply -> nq_err. Transient server states are retriable. */
static int reply_err(rq_t *q, const redisReply *r, const char *what, nq_err_t *err) {
  const char *s = r->str ? r->str : "?";
  unsigned fl = (starts(s, "LOADING") || starts(s, "BUSY") || starts(s, "TRYAGAIN") || starts(s, "MASTERDOWN") ||
                 starts(s, "READONLY") || starts(s, "CLUSTERDOWN"))
                    ? NQ_ERR_RETRIABLE
                    : 0;
  return nq_err_set(err, NQ_EQUEUE, fl, "redis %s:%d %s: %s", q->host, q->port, what, s);
}

/* ---------------------------------------------------------------- connections */

static void conn_drop(rconn_t *rc) {
  if (rc->c) redisFree(rc->c);
  rc->c = NULL;
}

/* Thread exit: the connection goes with the thread. */
static void conn_dtor(void *p) {
  rconn_t *rc = p;
  rq_t *q = rc->q;
  pthread_mutex_lock(&q->mu);
  if (rc->prev) rc->prev->next = rc->next;
  else q->conns = rc->next;
  if (rc->next) rc->next->prev = rc->prev;
  pthread_mutex_unlock(&q->mu);
  conn_drop(rc);
  free(rc);
}

static int set_tmo(rconn_t *rc, int ms) {
  if (rc->tmo_ms == ms) return 0;
  struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
  if (redisSetTimeout(rc->c, tv) != REDIS_OK) return -1;
  rc->tmo_ms = ms;
  return 0;
}

/* The calling thread's connection, connected. *fresh = 1 if it was (re)connected just now. */
static rconn_t *conn_get(rq_t *q, int *fresh, nq_err_t *err) {
  rconn_t *rc = pthread_getspecific(q->key);
  *fresh = 0;
  if (!rc) {
    if (!(rc = calloc(1, sizeof *rc))) {
      oom(err, "connection");
      return NULL;
    }
    rc->q = q;
    pthread_mutex_lock(&q->mu);
    rc->next = q->conns;
    if (q->conns) q->conns->prev = rc;
    q->conns = rc;
    pthread_mutex_unlock(&q->mu);
    pthread_setspecific(q->key, rc);
  }
  if (rc->c) return rc;
  struct timeval tv = {.tv_sec = 2, .tv_usec = 0};
  rc->c = redisConnectWithTimeout(q->host, q->port, tv);
  if (!rc->c || rc->c->err) {
    nq_err_set(err, NQ_EQUEUE, NQ_ERR_RETRIABLE, "redis %s:%d: connect: %s", q->host, q->port,
               rc->c ? rc->c->errstr : "cannot allocate context");
    conn_drop(rc);
    return NULL;
  }
  rc->tmo_ms = -1;
  if (set_tmo(rc, RQ_DEFAULT_TMO_MS)) {
    nq_err_set(err, NQ_EQUEUE, NQ_ERR_RETRIABLE, "redis %s:%d: set timeout: %s", q->host, q->port, rc->c->errstr);
    conn_drop(rc);
    return NULL;
  }
  if (q->pass) {
    /* AUTH on every (re)connect; the reply's error text is the server's ("WRONGPASS ..."), never the password */
    redisReply *r = q->user ? redisCommand(rc->c, "AUTH %s %s", q->user, q->pass) : redisCommand(rc->c, "AUTH %s", q->pass);
    int ok = r && r->type != REDIS_REPLY_ERROR;
    if (!ok) {
      int auth_err = r != NULL; /* a refused password is a configuration error, not a network hiccup */
      nq_err_set(err, NQ_EQUEUE, auth_err ? NQ_ERR_FATAL : NQ_ERR_RETRIABLE, "redis %s:%d: AUTH%s%s%s: %s", q->host,
                 q->port, q->user ? " as user '" : "", q->user ? q->user : "", q->user ? "'" : "",
                 r ? r->str : rc->c->errstr);
      if (r) freeReplyObject(r);
      conn_drop(rc);
      return NULL;
    }
    freeReplyObject(r);
  }
  if (q->db) {
    redisReply *r = redisCommand(rc->c, "SELECT %d", q->db);
    int ok = r && r->type != REDIS_REPLY_ERROR;
    if (!ok) {
      nq_err_set(err, NQ_EQUEUE, NQ_ERR_RETRIABLE, "redis %s:%d: SELECT %d: %s", q->host, q->port, q->db,
                 r ? r->str : rc->c->errstr);
      if (r) freeReplyObject(r);
      conn_drop(rc);
      return NULL;
    }
    freeReplyObject(r);
  }
  *fresh = 1;
  return rc;
}

/* Appends command j of a pipeline to c (redisAppendCommandArgv); REDIS_OK or REDIS_ERR. */
typedef int (*rappend_fn)(redisContext *c, int j, void *ctx);

/* Runs k pipelined commands, appended by append(c, j, ctx) for j in [0, k); rep[0..k) receive the replies (error
 * replies included). On an I/O error on a connection that was already open, reconnects and runs them once more.
 * tmo_ms: socket timeout for this round. */
static int rexec_fn(rq_t *q, const char *what, int k, rappend_fn append, void *ctx, redisReply **rep, int tmo_ms,
                    nq_err_t *err) {
  for (int attempt = 0;; attempt++) {
    int fresh;
    rconn_t *rc = conn_get(q, &fresh, err);
    if (!rc) return nq_err_prefix(err, "%s", what);
    int got = 0, ok = set_tmo(rc, tmo_ms) == 0;
    for (int j = 0; ok && j < k; j++) ok = append(rc->c, j, ctx) == REDIS_OK;
    while (ok && got < k) {
      void *r = NULL;
      if (redisGetReply(rc->c, &r) != REDIS_OK || !r) ok = 0;
      else rep[got++] = r;
    }
    if (ok) return 0;
    for (int j = 0; j < got; j++) freeReplyObject(rep[j]), rep[j] = NULL;
    char es[128];
    snprintf(es, sizeof es, "%s", rc->c && rc->c->errstr[0] ? rc->c->errstr : "connection lost");
    conn_drop(rc);
    if (attempt == 0 && !fresh) continue;
    return nq_err_set(err, NQ_EQUEUE, NQ_ERR_RETRIABLE, "redis %s:%d %s: %s", q->host, q->port, what, es);
  }
}

static int append_rargs(redisContext *c, int j, void *ctx) {
  rargs_t *a = &((rargs_t *)ctx)[j];
  return redisAppendCommandArgv(c, a->n, a->v, a->l);
}

/* Runs k pipelined commands cmds[0..k) (see rexec_fn). */
static int rexec(rq_t *q, const char *what, int k, rargs_t *cmds, redisReply **rep, int tmo_ms, nq_err_t *err) {
  return rexec_fn(q, what, k, append_rargs, cmds, rep, tmo_ms, err);
}

/* One command; an error reply becomes an error. Returns the reply or NULL. */
static redisReply *rcmd(rq_t *q, const char *what, rargs_t *a, int tmo_ms, nq_err_t *err) {
  redisReply *r = NULL;
  if (rexec(q, what, 1, a, &r, tmo_ms, err)) return NULL;
  if (r->type == REDIS_REPLY_ERROR) {
    reply_err(q, r, what, err);
    freeReplyObject(r);
    return NULL;
  }
  return r;
}

/* EVALSHA script with a = {keys..., args...} (a built without the command words); EVAL on NOSCRIPT. */
static redisReply *reval(rq_t *q, int script, int nkeys, const rargs_t *a, const char *what, nq_err_t *err) {
  rargs_t e;
  ra_init(&e, "EVALSHA");
  ra_str(&e, q->sha[script]);
  ra_ll(&e, nkeys);
  for (int i = 0; i < a->n; i++) ra_bin(&e, a->v[i], a->l[i]);
  redisReply *r = NULL;
  if (rexec(q, what, 1, &e, &r, RQ_DEFAULT_TMO_MS, err)) return NULL;
  if (r->type == REDIS_REPLY_ERROR && r->str && starts(r->str, "NOSCRIPT")) {
    freeReplyObject(r);
    e.v[0] = "EVAL";
    e.l[0] = 4;
    e.v[1] = nq_lua_src[script];
    e.l[1] = strlen(nq_lua_src[script]);
    if (rexec(q, what, 1, &e, &r, RQ_DEFAULT_TMO_MS, err)) return NULL;
  }
  if (r->type == REDIS_REPLY_ERROR) {
    reply_err(q, r, what, err);
    freeReplyObject(r);
    return NULL;
  }
  return r;
}

/* Growable argument vector for commands whose length depends on the input (batches, scripts over many topics).
 * Strings are borrowed; an append that cannot grow the vector sets oom and is dropped. */
typedef struct dargs {
  int n, cap;
  const char **v; /* owned array */
  size_t *l;      /* owned array */
  int oom;
} dargs_t;

static void da_bin(dargs_t *a, const char *s, size_t len) {
  if (a->oom) return;
  if (a->n == a->cap) {
    int nc = a->cap ? a->cap * 2 : 32;
    const char **v = realloc(a->v, (size_t)nc * sizeof *v);
    if (v) a->v = v;
    size_t *l = v ? realloc(a->l, (size_t)nc * sizeof *l) : NULL;
    if (!l) {
      a->oom = 1;
      return;
    }
    a->l = l;
    a->cap = nc;
  }
  a->v[a->n] = s;
  a->l[a->n++] = len;
}
static void da_str(dargs_t *a, const char *s) { da_bin(a, s, strlen(s)); }
static void da_free(dargs_t *a) {
  free(a->v);
  free(a->l);
  memset(a, 0, sizeof *a);
}

/* "EVALSHA sha nkeys" at the head of a; nbuf (>= 16 bytes) holds the number and must outlive a. */
static void da_evalsha(rq_t *q, dargs_t *a, int script, int nkeys, char *nbuf) {
  da_str(a, "EVALSHA");
  da_str(a, q->sha[script]);
  snprintf(nbuf, 16, "%d", nkeys);
  da_str(a, nbuf);
}

typedef struct dpipe {
  dargs_t *cmds;    /* borrowed */
  const int *idx;   /* borrowed: which commands, NULL = all in order */
} dpipe_t;

static int append_dargs(redisContext *c, int j, void *ctx) {
  dpipe_t *p = ctx;
  dargs_t *a = &p->cmds[p->idx ? p->idx[j] : j];
  return redisAppendCommandArgv(c, a->n, a->v, a->l);
}

/* Pipelines cmds[0..k) in one round trip; cmds[j] built with da_evalsha(script[j]) (script[j] < 0: not a script).
 * Scripts the server does not know (NOSCRIPT: restarted or SCRIPT FLUSHed) are sent once more as EVAL of their
 * source; a NOSCRIPT reply means the script did not run, so this never runs anything twice. rep[j]: the replies,
 * error replies included (the caller frees them). */
static int rexec_scripts(rq_t *q, const char *what, int k, dargs_t *cmds, const int *script, redisReply **rep,
                         int tmo_ms, nq_err_t *err) {
  for (int j = 0; j < k; j++)
    if (cmds[j].oom) return oom(err, what);
  dpipe_t p = {.cmds = cmds, .idx = NULL};
  int rc = rexec_fn(q, what, k, append_dargs, &p, rep, tmo_ms, err);
  if (rc) return rc;
  int *redo = NULL, nredo = 0;
  for (int j = 0; j < k; j++) {
    if (script[j] < 0 || rep[j]->type != REDIS_REPLY_ERROR || !rep[j]->str || !starts(rep[j]->str, "NOSCRIPT"))
      continue;
    if (!redo && !(redo = malloc((size_t)k * sizeof *redo))) rc = oom(err, what);
    if (rc) break;
    redo[nredo++] = j;
    cmds[j].v[0] = "EVAL";
    cmds[j].l[0] = 4;
    cmds[j].v[1] = nq_lua_src[script[j]];
    cmds[j].l[1] = strlen(nq_lua_src[script[j]]);
  }
  if (rc == 0 && nredo) {
    redisReply **r2 = calloc((size_t)nredo, sizeof *r2);
    p.idx = redo;
    if (!r2) rc = oom(err, what);
    else rc = rexec_fn(q, what, nredo, append_dargs, &p, r2, tmo_ms, err);
    for (int i = 0; rc == 0 && i < nredo; i++) {
      freeReplyObject(rep[redo[i]]);
      rep[redo[i]] = r2[i];
    }
    free(r2);
  }
  free(redo);
  if (rc)
    for (int j = 0; j < k; j++)
      if (rep[j]) freeReplyObject(rep[j]), rep[j] = NULL;
  return rc;
}

/* Vtable entries may be called with err == NULL; errors still need a code to return. */
#define NEED_ERR          \
  nq_err_t err_local_;    \
  if (!err) err = &err_local_

static void args_empty(rargs_t *a) {
  a->n = 0;
  a->nnum = 0;
}

/* ---------------------------------------------------------------- groups */

static int group_known(rq_t *q, const char *gk) {
  int found = 0;
  pthread_mutex_lock(&q->mu);
  for (rgroup_t *g = q->groups; g && !found; g = g->next) found = strcmp(g->key, gk) == 0;
  pthread_mutex_unlock(&q->mu);
  return found;
}

static void groups_forget(rq_t *q) {
  pthread_mutex_lock(&q->mu);
  for (rgroup_t *g = q->groups, *n; g; g = n) {
    n = g->next;
    free(g->key);
    free(g);
  }
  q->groups = NULL;
  pthread_mutex_unlock(&q->mu);
}

/* XGROUP CREATE key group 0 MKSTREAM once per (key, group); BUSYGROUP = already there. */
static int group_ensure(rq_t *q, const char *key, const char *group, nq_err_t *err) {
  char gk[RQ_KEY_MAX * 2];
  snprintf(gk, sizeof gk, "%s\n%s", key, group);
  if (group_known(q, gk)) return 0;
  rargs_t a;
  ra_init(&a, "XGROUP");
  ra_str(&a, "CREATE");
  ra_str(&a, key);
  ra_str(&a, group);
  ra_str(&a, "0");
  ra_str(&a, "MKSTREAM");
  redisReply *r = NULL;
  int rc = rexec(q, "XGROUP CREATE", 1, &a, &r, RQ_DEFAULT_TMO_MS, err);
  if (rc) return rc;
  if (r->type == REDIS_REPLY_ERROR && !(r->str && starts(r->str, "BUSYGROUP"))) {
    rc = reply_err(q, r, "XGROUP CREATE", err);
    nq_err_prefix(err, "stream %s group %s", key, group);
  }
  freeReplyObject(r);
  if (rc) return rc;
  rgroup_t *g = malloc(sizeof *g);
  if (g && (g->key = strdup(gk))) {
    pthread_mutex_lock(&q->mu);
    g->next = q->groups;
    q->groups = g;
    pthread_mutex_unlock(&q->mu);
  } else {
    free(g); /* not remembered: created again next time, harmless */
  }
  return 0;
}

/* ---------------------------------------------------------------- messages */

static int r_publish(nq_queue_t *qq, const char *topic, const char *body, size_t len, nq_err_t *err) {
  NEED_ERR;
  rq_t *q = (rq_t *)qq;
  char key[RQ_KEY_MAX];
  if (!body && len) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "redis queue publish: NULL body");
  int rc = mkkey(key, topic, NULL, "publish", err);
  if (rc) return rc;
  rargs_t a;
  ra_init(&a, "XADD");
  ra_str(&a, key);
  ra_str(&a, "*");
  ra_str(&a, "body");
  ra_bin(&a, body ? body : "", len);
  redisReply *r = rcmd(q, "XADD", &a, RQ_DEFAULT_TMO_MS, err);
  if (!r) return nq_err_prefix(err, "publish to %s", topic);
  freeReplyObject(r);
  return 0;
}

/* One stream entry [id, [field, value, ...]] -> delivery. Entries whose data was deleted (nil) return 1 (skip). */
static int entry_to_delivery(const redisReply *e, const char *topic, unsigned count, nq_delivery_t *d) {
  if (!e || e->type != REDIS_REPLY_ARRAY || e->elements < 2 || !is_str(e->element[0])) return 1;
  const redisReply *f = e->element[1];
  if (!f || f->type != REDIS_REPLY_ARRAY) return 1;
  const char *body = "";
  size_t len = 0;
  for (size_t i = 0; i + 1 < f->elements; i += 2)
    if (is_str(f->element[i]) && strcmp(f->element[i]->str, "body") == 0 && is_str(f->element[i + 1])) {
      body = f->element[i + 1]->str;
      len = f->element[i + 1]->len;
      break;
    }
  /* an entry without "body" (pushed by hand) is delivered with an empty body: the envelope check rejects it */
  d->id = memdup0(e->element[0]->str, e->element[0]->len);
  d->topic = strdup(topic);
  d->body = memdup0(body, len);
  d->len = len;
  d->delivery_count = count;
  d->backend_tag = 0;
  if (!d->id || !d->topic || !d->body) return NQ_ENOMEM;
  return 0;
}

/* The entries of an XREADGROUP reply [[key, [entry...]]...] into d[*n..max_n) (delivery count 1). */
static int read_reply_to_deliveries(const redisReply *r, nq_delivery_t *d, int *n, int max_n, nq_err_t *err) {
  if (!r || r->type != REDIS_REPLY_ARRAY) return 0;
  for (size_t s = 0; s < r->elements; s++) {
    const redisReply *sr = r->element[s];
    if (!sr || sr->type != REDIS_REPLY_ARRAY || sr->elements < 2 || !is_str(sr->element[0])) continue;
    const char *topic = sr->element[0]->str;
    if (starts(topic, "nq:")) topic += 3;
    const redisReply *ents = sr->element[1];
    for (size_t i = 0; ents && ents->type == REDIS_REPLY_ARRAY && i < ents->elements && *n < max_n; i++) {
      int x = entry_to_delivery(ents->element[i], topic, 1, &d[*n]);
      if (x < 0) return oom(err, "fetch");
      if (x == 0) (*n)++;
    }
  }
  return 0;
}

/* The non-blocking part of a fetch, one round trip (script FETCH): reclaim expired leases, move due retries and,
 * with lua_read, read new entries. Fills d[*n..max_n); *wait_cap = ms until the next delayed retry is due, or -1.
 * A NOGROUP error comes back as NQ_EQUEUE with "NOGROUP" in the message, after whatever was claimed before it. */
static int fetch_step(rq_t *q, const char *const *topics, char (*keys)[RQ_KEY_MAX], char (*dkeys)[RQ_KEY_MAX],
                      int ntopics, const char *group, const char *consumer, int max_n, int lua_read, nq_delivery_t *d,
                      int *n, long long *wait_cap, nq_err_t *err) {
  dargs_t a = {0};
  char nk[16], lease[24], cnt[24];
  snprintf(lease, sizeof lease, "%d", q->base.lease_ms);
  snprintf(cnt, sizeof cnt, "%d", max_n - *n);
  da_evalsha(q, &a, NQ_LUA_FETCH, 2 * ntopics, nk);
  for (int i = 0; i < ntopics; i++) da_str(&a, keys[i]);
  for (int i = 0; i < ntopics; i++) da_str(&a, dkeys[i]);
  da_str(&a, group);
  da_str(&a, consumer);
  da_str(&a, lease);
  da_str(&a, cnt);
  da_str(&a, "100");
  da_str(&a, lua_read ? "1" : "0");
  int script = NQ_LUA_FETCH;
  redisReply *r = NULL;
  int rc = rexec_scripts(q, "fetch", 1, &a, &script, &r, RQ_DEFAULT_TMO_MS, err);
  da_free(&a);
  *wait_cap = -1;
  if (rc) return rc;
  if (r->type == REDIS_REPLY_ERROR) {
    rc = reply_err(q, r, "fetch", err);
    freeReplyObject(r);
    return rc;
  }
  if (r->type != REDIS_REPLY_ARRAY || r->elements != 5) {
    freeReplyObject(r);
    return nq_err_set(err, NQ_EQUEUE, 0, "redis %s:%d fetch: unexpected script reply", q->host, q->port);
  }
  const redisReply *cl = r->element[0];
  for (size_t i = 0; cl->type == REDIS_REPLY_ARRAY && i + 2 < cl->elements && rc == 0 && *n < max_n; i += 3) {
    long long ti = reply_ll(cl->element[i], 0);
    if (ti < 1 || ti > ntopics) continue;
    unsigned c = (unsigned)reply_ll(cl->element[i + 2], 2); /* claimed after a lease: at least the second */
    int x = entry_to_delivery(cl->element[i + 1], topics[ti - 1], c, &d[*n]);
    if (x < 0) rc = oom(err, "fetch");
    else if (x == 0) (*n)++;
  }
  if (rc == 0) rc = read_reply_to_deliveries(r->element[1], d, n, max_n, err);
  long long nd = reply_ll(r->element[2], -1), now = reply_ll(r->element[3], 0);
  if (nd >= 0) *wait_cap = nd > now ? nd - now : 1;
  if (rc == 0 && is_str(r->element[4]) && r->element[4]->len > 0)
    rc = nq_err_set(err, NQ_EQUEUE, 0, "redis %s:%d fetch: %s", q->host, q->port, r->element[4]->str);
  freeReplyObject(r);
  return rc;
}

/* Up to this many messages a fetch reads inside the FETCH script (one round trip); larger fetches read with a
 * plain XREADGROUP after the script (two round trips, but half the server time per entry). */
#define RQ_FETCH_LUA_READ_MAX 16

/* Fetch: the FETCH script (reclaim, due retries, and for small max_n the read), then, for large max_n or when
 * nothing was there and block_ms > 0, an XREADGROUP (blocking up to the next delayed retry's due time). */
static int r_fetch(nq_queue_t *qq, const char *const *topics, int ntopics, const char *group, const char *consumer,
                   int max_n, int block_ms, nq_delivery_t **out, int *n_out, nq_err_t *err) {
  NEED_ERR;
  rq_t *q = (rq_t *)qq;
  if (!out || !n_out || !topics || ntopics <= 0 || ntopics > RQ_MAX_TOPICS || !group || !*group || !consumer ||
      !*consumer || max_n <= 0)
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "redis queue fetch: bad arguments (ntopics %d, max_n %d)",
                      ntopics, max_n);
  *out = NULL;
  *n_out = 0;
  char(*keys)[RQ_KEY_MAX] = calloc((size_t)ntopics, RQ_KEY_MAX);
  char(*dkeys)[RQ_KEY_MAX] = calloc((size_t)ntopics, RQ_KEY_MAX);
  nq_delivery_t *d = calloc((size_t)max_n, sizeof *d);
  int rc = 0, n = 0, lua_read = max_n <= RQ_FETCH_LUA_READ_MAX;
  if (!keys || !dkeys || !d) rc = oom(err, "fetch");
  for (int i = 0; rc == 0 && i < ntopics; i++) {
    if ((rc = mkkey(keys[i], topics[i], NULL, "fetch", err))) break;
    if ((rc = mkkey2(dkeys[i], "delayed:", topics[i], NULL, "fetch", err))) break;
    rc = group_ensure(q, keys[i], group, err);
  }
  struct timespec t0;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  int nogroup_retry = 0;
  while (rc == 0) {
    long long wait_cap;
    rc = fetch_step(q, topics, keys, dkeys, ntopics, group, consumer, max_n, lua_read, d, &n, &wait_cap, err);
    if (rc && n > 0) {
      rc = 0; /* deliver what was claimed; the next fetch meets the error again */
      nq_err_clear(err);
      break;
    }
    if (rc == NQ_EQUEUE && strstr(err->msg, "NOGROUP") && !nogroup_retry) {
      /* the server lost the group (flushed, or restarted without data): create it again, once */
      nogroup_retry = 1;
      groups_forget(q);
      rc = 0;
      for (int i = 0; rc == 0 && i < ntopics; i++) rc = group_ensure(q, keys[i], group, err);
      continue;
    }
    if (rc || n >= max_n || (lua_read && (n > 0 || block_ms <= 0))) break;
    /* read (large max_n) or block (nothing there yet), but wake when the next delayed retry is due */
    long long block = 0;
    if (n == 0 && block_ms > 0) {
      struct timespec t1;
      clock_gettime(CLOCK_MONOTONIC, &t1);
      block = block_ms - ((t1.tv_sec - t0.tv_sec) * 1000ll + (t1.tv_nsec - t0.tv_nsec) / 1000000);
      if (block <= 0 && lua_read) break;
      if (block < 0) block = 0;
      if (block > 0 && wait_cap >= 0 && wait_cap < block) block = wait_cap < 1 ? 1 : wait_cap;
    }
    rargs_t a;
    ra_init(&a, "XREADGROUP");
    ra_str(&a, "GROUP");
    ra_str(&a, group);
    ra_str(&a, consumer);
    ra_str(&a, "COUNT");
    ra_ll(&a, max_n - n);
    if (block > 0) {
      ra_str(&a, "BLOCK");
      ra_ll(&a, block);
    }
    ra_str(&a, "STREAMS");
    for (int i = 0; i < ntopics; i++) ra_str(&a, keys[i]);
    for (int i = 0; i < ntopics; i++) ra_str(&a, ">");
    redisReply *r = NULL;
    int tmo = (int)(block + 5000);
    if (tmo < RQ_DEFAULT_TMO_MS) tmo = RQ_DEFAULT_TMO_MS;
    if ((rc = rexec(q, "XREADGROUP", 1, &a, &r, tmo, err))) break;
    if (r->type == REDIS_REPLY_ERROR) {
      if (r->str && starts(r->str, "NOGROUP") && !nogroup_retry) {
        freeReplyObject(r);
        nogroup_retry = 1;
        groups_forget(q);
        for (int i = 0; rc == 0 && i < ntopics; i++) rc = group_ensure(q, keys[i], group, err);
        continue;
      }
      rc = reply_err(q, r, "XREADGROUP", err);
      freeReplyObject(r);
      break;
    }
    rc = read_reply_to_deliveries(r, d, &n, max_n, err);
    freeReplyObject(r);
    if (rc || n > 0 || block == 0) break;
    struct timespec t2;
    clock_gettime(CLOCK_MONOTONIC, &t2);
    if ((t2.tv_sec - t0.tv_sec) * 1000ll + (t2.tv_nsec - t0.tv_nsec) / 1000000 >= block_ms) break;
  }
  free(keys);
  free(dkeys);
  if (rc) {
    /* whatever was delivered stays pending and is reclaimed after the lease: nothing is lost */
    nq_delivery_free_array(d, max_n);
    return rc;
  }
  if (n == 0) {
    free(d);
    d = NULL;
  }
  *out = d;
  *n_out = n;
  return 0;
}

static int check_del(const char *what, const char *group, const nq_delivery_t *d, nq_err_t *err) {
  if (!group || !*group || !d || !d->id || !d->topic)
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "redis queue %s: NULL group or delivery", what);
  return 0;
}

static void maybe_trim(rq_t *q, const char *key) {
  rconn_t *rc = pthread_getspecific(q->key);
  if (!rc || ++rc->acks < RQ_TRIM_EVERY) return;
  rc->acks = 0;
  rargs_t a;
  args_empty(&a);
  ra_str(&a, key);
  nq_err_t e;
  redisReply *r = reval(q, NQ_LUA_TRIM, 1, &a, "trim", &e);
  if (r) freeReplyObject(r); /* a failed trim is retried after the next RQ_TRIM_EVERY acks */
}

static int r_ack(nq_queue_t *qq, const char *group, const nq_delivery_t *d, nq_err_t *err) {
  NEED_ERR;
  rq_t *q = (rq_t *)qq;
  char key[RQ_KEY_MAX];
  int rc = check_del("ack", group, d, err);
  if (rc || (rc = mkkey(key, d->topic, NULL, "ack", err))) return rc;
  rargs_t a;
  ra_init(&a, "XACK");
  ra_str(&a, key);
  ra_str(&a, group);
  ra_str(&a, d->id);
  redisReply *r = rcmd(q, "XACK", &a, RQ_DEFAULT_TMO_MS, err);
  if (!r) return nq_err_prefix(err, "ack %s of %s", d->id, d->topic);
  freeReplyObject(r);
  maybe_trim(q, key);
  return 0;
}

static int r_nack(nq_queue_t *qq, const char *group, const nq_delivery_t *d, int retry_after_ms, const char *new_body,
                  nq_err_t *err) {
  NEED_ERR;
  rq_t *q = (rq_t *)qq;
  char key[RQ_KEY_MAX], dkey[RQ_KEY_MAX], uniq[128];
  int rc = check_del("nack", group, d, err);
  if (rc || (rc = mkkey(key, d->topic, NULL, "nack", err)) ||
      (rc = mkkey2(dkey, "delayed:", d->topic, NULL, "nack", err)))
    return rc;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  snprintf(uniq, sizeof uniq, "%.60s:%u:%lld.%09ld", d->id, d->delivery_count, (long long)ts.tv_sec, ts.tv_nsec);
  rargs_t a;
  args_empty(&a);
  ra_str(&a, key);
  ra_str(&a, dkey);
  ra_str(&a, group);
  ra_str(&a, d->id);
  ra_ll(&a, retry_after_ms);
  if (new_body) ra_str(&a, new_body);
  else ra_bin(&a, d->body ? d->body : "", d->body ? d->len : 0);
  ra_str(&a, uniq);
  redisReply *r = reval(q, NQ_LUA_NACK, 2, &a, "nack", err);
  if (!r) return nq_err_prefix(err, "nack %s of %s", d->id, d->topic);
  freeReplyObject(r);
  return 0;
}

static int r_extend_lease(nq_queue_t *qq, const char *group, const char *consumer, const nq_delivery_t *d,
                          nq_err_t *err) {
  NEED_ERR;
  rq_t *q = (rq_t *)qq;
  char key[RQ_KEY_MAX];
  int rc = check_del("extend_lease", group, d, err);
  if (rc || (rc = mkkey(key, d->topic, NULL, "extend_lease", err))) return rc;
  if (!consumer || !*consumer)
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "redis queue extend_lease: empty consumer");
  rargs_t a;
  ra_init(&a, "XCLAIM");
  ra_str(&a, key);
  ra_str(&a, group);
  ra_str(&a, consumer);
  ra_str(&a, "0");
  ra_str(&a, d->id);
  ra_str(&a, "JUSTID");
  redisReply *r = rcmd(q, "XCLAIM", &a, RQ_DEFAULT_TMO_MS, err);
  if (!r) return nq_err_prefix(err, "extend lease of %s in %s", d->id, d->topic);
  int claimed = r->type == REDIS_REPLY_ARRAY && r->elements > 0;
  freeReplyObject(r);
  if (!claimed)
    return nq_err_set(err, NQ_ENOENT, 0, "redis queue extend_lease: message %s of %s is not pending in group %s",
                      d->id, d->topic, group);
  return 0;
}

static int r_dead_letter(nq_queue_t *qq, const char *group, const nq_delivery_t *d, const char *reason,
                         nq_err_t *err) {
  NEED_ERR;
  rq_t *q = (rq_t *)qq;
  char key[RQ_KEY_MAX];
  int rc = check_del("dead_letter", group, d, err);
  if (rc || (rc = mkkey(key, d->topic, NULL, "dead_letter", err))) return rc;
  rargs_t a;
  args_empty(&a);
  ra_str(&a, key);
  ra_str(&a, "nq:dlq");
  ra_str(&a, group);
  ra_str(&a, d->id);
  ra_str(&a, d->topic);
  ra_str(&a, reason ? reason : "");
  ra_bin(&a, d->body ? d->body : "", d->body ? d->len : 0);
  redisReply *r = reval(q, NQ_LUA_DEAD, 2, &a, "dead_letter", err);
  if (!r) return nq_err_prefix(err, "dead-letter %s of %s", d->id, d->topic);
  freeReplyObject(r);
  return 0;
}

/* Field `name` of a flat [name, value, ...] reply; NULL if absent. */
static const redisReply *field(const redisReply *g, const char *name) {
  if (!g || g->type != REDIS_REPLY_ARRAY) return NULL;
  for (size_t i = 0; i + 1 < g->elements; i += 2)
    if (is_str(g->element[i]) && strcmp(g->element[i]->str, name) == 0) return g->element[i + 1];
  return NULL;
}

static int r_stats(nq_queue_t *qq, const char *topic, const char *group, nq_queue_stats_t *st, nq_err_t *err) {
  NEED_ERR;
  rq_t *q = (rq_t *)qq;
  char key[RQ_KEY_MAX], dkey[RQ_KEY_MAX];
  if (!st) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "redis queue stats: NULL output");
  memset(st, 0, sizeof *st);
  int rc;
  if ((rc = mkkey(key, topic, NULL, "stats", err)) || (rc = mkkey2(dkey, "delayed:", topic, NULL, "stats", err)))
    return rc;
  rargs_t c[4];
  redisReply *r[4] = {0};
  ra_init(&c[0], "XLEN");
  ra_str(&c[0], key);
  ra_init(&c[1], "XINFO");
  ra_str(&c[1], "GROUPS");
  ra_str(&c[1], key);
  ra_init(&c[2], "ZCARD");
  ra_str(&c[2], dkey);
  ra_init(&c[3], "XLEN");
  ra_str(&c[3], "nq:dlq");
  if ((rc = rexec(q, "stats", 4, c, r, RQ_DEFAULT_TMO_MS, err))) return rc;
  for (int i = 0; i < 4 && rc == 0; i++)
    if (r[i]->type == REDIS_REPLY_ERROR && !(i == 1 && r[i]->str && strstr(r[i]->str, "no such key")))
      rc = reply_err(q, r[i], "stats", err);
  char last[64] = "";
  if (rc == 0) {
    long long xlen = reply_ll(r[0], 0);
    st->depth = xlen; /* no such group: a group created now starts at 0 and sees every entry */
    st->delayed = reply_ll(r[2], 0);
    st->dead = reply_ll(r[3], 0);
    if (r[1]->type == REDIS_REPLY_ARRAY)
      for (size_t i = 0; i < r[1]->elements; i++) {
        const redisReply *g = r[1]->element[i], *name = field(g, "name");
        if (!is_str(name) || (group && strcmp(name->str, group) != 0)) continue;
        st->in_flight += reply_ll(field(g, "pending"), 0);
        if (!group) continue;
        const redisReply *lag = field(g, "lag"), *ld = field(g, "last-delivered-id");
        if (lag && lag->type == REDIS_REPLY_INTEGER) st->depth = lag->integer;
        else if (is_str(ld)) snprintf(last, sizeof last, "%s", ld->str); /* lag unknown: count below */
      }
  }
  for (int i = 0; i < 4; i++)
    if (r[i]) freeReplyObject(r[i]);
  if (rc == 0 && last[0]) {
    rargs_t a;
    args_empty(&a);
    ra_str(&a, key);
    ra_str(&a, last);
    redisReply *x = reval(q, NQ_LUA_COUNT_AFTER, 1, &a, "stats depth", err);
    if (!x) return err ? err->code : NQ_EQUEUE;
    st->depth = reply_ll(x, st->depth);
    freeReplyObject(x);
  }
  st->lag = st->depth;
  return rc;
}

/* ---------------------------------------------------------------- results and jobs */

static int r_publish_result(nq_queue_t *qq, const char *job, const char *body, nq_err_t *err) {
  NEED_ERR;
  rq_t *q = (rq_t *)qq;
  char key[RQ_KEY_MAX];
  if (!body) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "redis queue publish_result: NULL body");
  int rc = mkkey2(key, "results:", job, NULL, "publish_result", err);
  if (rc) return rc;
  rargs_t a;
  ra_init(&a, "XADD");
  ra_str(&a, key);
  ra_str(&a, "*");
  ra_str(&a, "body");
  ra_str(&a, body);
  redisReply *r = rcmd(q, "XADD results", &a, RQ_DEFAULT_TMO_MS, err);
  if (!r) return nq_err_prefix(err, "publish result of job %s", job);
  freeReplyObject(r);
  return 0;
}

/* Results: one stream entry holds one or more results ("body" fields in order; complete_batch writes one entry per
 * call and job). Cursors: "<entry id>" = everything up to and including that entry; "<entry id>/<k>" = the entry's
 * bodies 0..k (0-based), when a read stopped inside an entry. The last body of an entry gets the plain id, so an
 * entry with one result has the cursor it always had. */
typedef struct rres {
  nq_result_entry_t *e; /* owned */
  int n, cap, max_n;
} rres_t;

/* Appends the bodies of entry x from body index `from` on, up to r->max_n. 0, or NQ_ENOMEM. */
static int rres_add_entry(rres_t *r, const redisReply *x, int from) {
  if (!x || x->type != REDIS_REPLY_ARRAY || x->elements < 2 || !is_str(x->element[0])) return 0;
  const redisReply *f = x->element[1];
  if (!f || f->type != REDIS_REPLY_ARRAY) return 0;
  int nb = 0;
  for (size_t i = 0; i + 1 < f->elements; i += 2)
    nb += is_str(f->element[i]) && strcmp(f->element[i]->str, "body") == 0 && is_str(f->element[i + 1]);
  int b = 0;
  for (size_t i = 0; i + 1 < f->elements && r->n < r->max_n; i += 2) {
    if (!is_str(f->element[i]) || strcmp(f->element[i]->str, "body") != 0 || !is_str(f->element[i + 1])) continue;
    int k = b++;
    if (k < from) continue;
    if (r->n == r->cap) {
      int nc = r->cap ? r->cap * 2 : 16;
      if (nc > r->max_n) nc = r->max_n;
      nq_result_entry_t *ne = realloc(r->e, (size_t)nc * sizeof *ne);
      if (!ne) return NQ_ENOMEM;
      r->e = ne;
      r->cap = nc;
    }
    nq_result_entry_t *e = &r->e[r->n];
    e->body = memdup0(f->element[i + 1]->str, f->element[i + 1]->len);
    e->id = NULL;
    if (k == nb - 1) e->id = memdup0(x->element[0]->str, x->element[0]->len);
    else if (asprintf(&e->id, "%s/%d", x->element[0]->str, k) < 0) e->id = NULL;
    r->n++;
    if (!e->body || !e->id) return NQ_ENOMEM;
  }
  return 0;
}

static int r_read_results(nq_queue_t *qq, const char *job, const char *after, int max_n, int block_ms,
                          nq_result_entry_t **out, int *n_out, nq_err_t *err) {
  NEED_ERR;
  rq_t *q = (rq_t *)qq;
  char key[RQ_KEY_MAX], from_id[64] = "0-0";
  if (!out || !n_out || max_n <= 0)
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "redis queue read_results: bad arguments");
  *out = NULL;
  *n_out = 0;
  int rc = mkkey2(key, "results:", job, NULL, "read_results", err);
  if (rc) return rc;
  int mid = -1; /* bodies 0..mid of entry from_id were read */
  if (after && *after) {
    const char *sl = strchr(after, '/');
    size_t idlen = sl ? (size_t)(sl - after) : strlen(after);
    char *end = NULL;
    long k = sl ? strtol(sl + 1, &end, 10) : 0;
    if (idlen == 0 || idlen >= sizeof from_id || (sl && (end == sl + 1 || *end || k < 0 || k > 1000000)))
      return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "redis queue read_results: bad cursor '%.80s' for job %s",
                        after, job);
    memcpy(from_id, after, idlen);
    from_id[idlen] = 0;
    if (sl) mid = (int)k;
  }
  rres_t res = {.max_n = max_n};
  if (mid >= 0) { /* the rest of the entry the last read stopped in */
    rargs_t a;
    ra_init(&a, "XRANGE");
    ra_str(&a, key);
    ra_str(&a, from_id);
    ra_str(&a, from_id);
    redisReply *r = rcmd(q, "XRANGE results", &a, RQ_DEFAULT_TMO_MS, err);
    if (!r) return nq_err_prefix(err, "read results of job %s", job);
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 1 && rres_add_entry(&res, r->element[0], mid + 1))
      rc = oom(err, "read_results");
    freeReplyObject(r);
  }
  if (rc == 0 && res.n < max_n) {
    int block = res.n == 0 && block_ms > 0;
    rargs_t a;
    ra_init(&a, "XREAD");
    ra_str(&a, "COUNT");
    ra_ll(&a, max_n - res.n);
    if (block) {
      ra_str(&a, "BLOCK");
      ra_ll(&a, block_ms);
    }
    ra_str(&a, "STREAMS");
    ra_str(&a, key);
    ra_str(&a, from_id);
    int tmo = block ? block_ms + 5000 : RQ_DEFAULT_TMO_MS;
    if (tmo < RQ_DEFAULT_TMO_MS) tmo = RQ_DEFAULT_TMO_MS;
    redisReply *r = rcmd(q, "XREAD results", &a, tmo, err);
    if (!r) {
      rc = nq_err_prefix(err, "read results of job %s", job);
    } else {
      const redisReply *ents = NULL;
      if (r->type == REDIS_REPLY_ARRAY && r->elements >= 1 && r->element[0]->type == REDIS_REPLY_ARRAY &&
          r->element[0]->elements >= 2)
        ents = r->element[0]->element[1];
      for (size_t i = 0; rc == 0 && ents && ents->type == REDIS_REPLY_ARRAY && i < ents->elements; i++)
        if (rres_add_entry(&res, ents->element[i], 0)) rc = oom(err, "read_results");
      freeReplyObject(r);
    }
  }
  if (rc) {
    nq_result_entries_free(res.e, res.n);
    return rc;
  }
  if (res.n == 0) {
    free(res.e);
    res.e = NULL;
  }
  *out = res.e;
  *n_out = res.n;
  return 0;
}

static int hset(rq_t *q, const char *job, const char *f, const char *v, size_t vlen, const char *what, nq_err_t *err) {
  char key[RQ_KEY_MAX];
  int rc = mkkey2(key, "job:", job, NULL, what, err);
  if (rc) return rc;
  rargs_t a;
  ra_init(&a, "HSET");
  ra_str(&a, key);
  ra_str(&a, f);
  ra_bin(&a, v, vlen);
  redisReply *r = rcmd(q, what, &a, RQ_DEFAULT_TMO_MS, err);
  if (!r) return nq_err_prefix(err, "job %s", job);
  freeReplyObject(r);
  return 0;
}

static int r_job_put(nq_queue_t *qq, const char *job, const char *meta_json, nq_err_t *err) {
  NEED_ERR;
  if (!meta_json) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "redis queue job_put: NULL meta");
  return hset((rq_t *)qq, job, "meta", meta_json, strlen(meta_json), "job_put", err);
}

static int r_job_set_total(nq_queue_t *qq, const char *job, long long total, nq_err_t *err) {
  NEED_ERR;
  char b[32];
  snprintf(b, sizeof b, "%lld", total);
  return hset((rq_t *)qq, job, "total", b, strlen(b), "job_set_total", err);
}

static int r_job_get(nq_queue_t *qq, const char *job, char **meta_json, nq_err_t *err) {
  NEED_ERR;
  rq_t *q = (rq_t *)qq;
  char key[RQ_KEY_MAX];
  if (!meta_json) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "redis queue job_get: NULL output");
  *meta_json = NULL;
  int rc = mkkey2(key, "job:", job, NULL, "job_get", err);
  if (rc) return rc;
  rargs_t a;
  ra_init(&a, "HGET");
  ra_str(&a, key);
  ra_str(&a, "meta");
  redisReply *r = rcmd(q, "HGET", &a, RQ_DEFAULT_TMO_MS, err);
  if (!r) return nq_err_prefix(err, "job %s", job);
  if (is_str(r) && !(*meta_json = memdup0(r->str, r->len))) rc = oom(err, "job_get");
  freeReplyObject(r);
  return rc;
}

static int r_job_mark(nq_queue_t *qq, const char *job, const char *task, const char *status, nq_job_counts_t *after,
                      int *changed, nq_err_t *err) {
  NEED_ERR;
  rq_t *q = (rq_t *)qq;
  char key[RQ_KEY_MAX], tkey[RQ_KEY_MAX];
  if (!task || !*task) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "redis queue job_mark: empty task");
  if (!status || (strcmp(status, "ok") && strcmp(status, "failed") && strcmp(status, "dead")))
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "redis queue job_mark: status '%s' of task %s is not ok|failed|dead",
                      status ? status : "(null)", task);
  int rc;
  if ((rc = mkkey2(key, "job:", job, NULL, "job_mark", err)) || (rc = mkkey2(tkey, "job:", job, ":tasks", "job_mark", err)))
    return rc;
  rargs_t a;
  args_empty(&a);
  ra_str(&a, key);
  ra_str(&a, tkey);
  ra_str(&a, task);
  ra_str(&a, status);
  redisReply *r = reval(q, NQ_LUA_JOB_MARK, 2, &a, "job_mark", err);
  if (!r) return nq_err_prefix(err, "job %s task %s", job, task);
  if (r->type != REDIS_REPLY_ARRAY || r->elements != 5) {
    freeReplyObject(r);
    return nq_err_set(err, NQ_EQUEUE, 0, "redis queue job_mark: unexpected script reply for job %s", job);
  }
  if (after) {
    after->total = reply_ll(r->element[0], -1);
    after->ok = reply_ll(r->element[1], 0);
    after->failed = reply_ll(r->element[2], 0);
    after->dead = reply_ll(r->element[3], 0);
  }
  if (changed) *changed = (int)reply_ll(r->element[4], 0);
  freeReplyObject(r);
  return 0;
}

static int r_job_counts(nq_queue_t *qq, const char *job, nq_job_counts_t *c, nq_err_t *err) {
  NEED_ERR;
  rq_t *q = (rq_t *)qq;
  char key[RQ_KEY_MAX];
  if (!c) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "redis queue job_counts: NULL output");
  int rc = mkkey2(key, "job:", job, NULL, "job_counts", err);
  if (rc) return rc;
  rargs_t a;
  ra_init(&a, "HMGET");
  ra_str(&a, key);
  ra_str(&a, "total");
  ra_str(&a, "ok");
  ra_str(&a, "failed");
  ra_str(&a, "dead");
  redisReply *r = rcmd(q, "HMGET", &a, RQ_DEFAULT_TMO_MS, err);
  if (!r) return nq_err_prefix(err, "job %s", job);
  int good = r->type == REDIS_REPLY_ARRAY && r->elements == 4;
  c->total = good ? reply_ll(r->element[0], -1) : -1;
  c->ok = good ? reply_ll(r->element[1], 0) : 0;
  c->failed = good ? reply_ll(r->element[2], 0) : 0;
  c->dead = good ? reply_ll(r->element[3], 0) : 0;
  freeReplyObject(r);
  return 0;
}

/* HMGET of the job's task statuses, in chunks of what one command's argument array holds. */
static int r_tasks_ok(nq_queue_t *qq, const char *job, const char *const *tasks, int n, unsigned char *ok,
                      nq_err_t *err) {
  NEED_ERR;
  rq_t *q = (rq_t *)qq;
  char tkey[RQ_KEY_MAX];
  if (!ok || n < 0 || (n && !tasks)) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "redis queue tasks_ok: bad arguments");
  int rc = mkkey2(tkey, "job:", job, ":tasks", "tasks_ok", err);
  if (rc) return rc;
  memset(ok, 0, (size_t)n);
  for (int i0 = 0; i0 < n;) {
    rargs_t a;
    ra_init(&a, "HMGET");
    ra_str(&a, tkey);
    int i1 = i0;
    for (; i1 < n && a.n < RQ_MAX_ARGS; i1++) ra_str(&a, tasks[i1] ? tasks[i1] : "");
    redisReply *r = rcmd(q, "HMGET", &a, RQ_DEFAULT_TMO_MS, err);
    if (!r) return nq_err_prefix(err, "job %s", job);
    for (int i = i0; r->type == REDIS_REPLY_ARRAY && i < i1 && (size_t)(i - i0) < r->elements; i++) {
      const redisReply *e = r->element[i - i0];
      ok[i] = tasks[i] && e->type == REDIS_REPLY_STRING && e->len == 2 && !memcmp(e->str, "ok", 2);
    }
    freeReplyObject(r);
    i0 = i1;
  }
  return 0;
}

/* ---------------------------------------------------------------- batches */

#define RQ_PUB_CHUNK 1024     /* XADDs per round trip in publish_batch */
#define RQ_COMPLETE_CHUNK 256 /* items per COMPLETE script call (one call runs atomically on the server) */

typedef struct pubctx {
  const char *key;            /* borrowed */
  const char *const *bodies;  /* borrowed */
  const size_t *lens;         /* borrowed */
  int off;
} pubctx_t;

static int append_xadd(redisContext *c, int j, void *ctx) {
  const pubctx_t *p = ctx;
  const char *b = p->bodies[p->off + j];
  const char *argv[5] = {"XADD", p->key, "*", "body", b ? b : ""};
  size_t argl[5] = {4, strlen(p->key), 1, 4, b ? p->lens[p->off + j] : 0};
  return redisAppendCommandArgv(c, 5, argv, argl);
}

/* n XADDs pipelined: one round trip per RQ_PUB_CHUNK messages. On an error, messages before the failing one
 * are published (and, after a lost reply on a connection that was already open, a chunk may be sent twice:
 * at-least-once, as publish). */
static int r_publish_batch(nq_queue_t *qq, const char *topic, const char *const *bodies, const size_t *lens, int n,
                           nq_err_t *err) {
  NEED_ERR;
  rq_t *q = (rq_t *)qq;
  char key[RQ_KEY_MAX];
  if (n < 0 || (n > 0 && (!bodies || !lens)))
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "redis queue publish_batch: bad arguments (n %d)", n);
  int rc = mkkey(key, topic, NULL, "publish_batch", err);
  if (rc) return rc;
  for (int i = 0; i < n; i++)
    if (!bodies[i] && lens[i])
      return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "redis queue publish_batch to %s: NULL body at item %d", topic,
                        i);
  if (n == 0) return 0;
  int chunk = n < RQ_PUB_CHUNK ? n : RQ_PUB_CHUNK;
  redisReply **rep = calloc((size_t)chunk, sizeof *rep);
  if (!rep) return oom(err, "publish_batch");
  pubctx_t p = {.key = key, .bodies = bodies, .lens = lens};
  for (p.off = 0; rc == 0 && p.off < n; p.off += chunk) {
    int k = n - p.off < chunk ? n - p.off : chunk;
    if ((rc = rexec_fn(q, "XADD batch", k, append_xadd, &p, rep, RQ_DEFAULT_TMO_MS, err))) {
      nq_err_prefix(err, "publish_batch to %s (items %d..%d of %d)", topic, p.off, p.off + k - 1, n);
      break;
    }
    for (int j = 0; j < k; j++) {
      if (rc == 0 && rep[j]->type == REDIS_REPLY_ERROR) {
        rc = reply_err(q, rep[j], "XADD batch", err);
        nq_err_prefix(err, "publish_batch to %s item %d of %d", topic, p.off + j, n);
      }
      freeReplyObject(rep[j]);
      rep[j] = NULL;
    }
  }
  free(rep);
  return rc;
}

static int status_ok(const char *s) {
  return s && (strcmp(s, "ok") == 0 || strcmp(s, "failed") == 0 || strcmp(s, "dead") == 0);
}

/* One COMPLETE script call's keys: the distinct task streams and jobs of items [lo, hi). Key strings are owned
 * by the chunk; every item gets the 1-based index of its stream (0: no delivery) and of its job. */
typedef struct cchunk {
  int lo, hi;
  char **streams; /* owned: "nq:<topic>" */
  const char **stopic; /* borrowed: topic of each stream, for matching */
  int ns;
  char **jkeys; /* owned: 3 per job: results, job hash, task hash */
  const char **jname; /* borrowed */
  int nj;
  char (*idx)[2][12]; /* owned: per item, the stream and job index as strings */
  char nk[16], sn[16];
} cchunk_t;

static void cchunk_free(cchunk_t *c) {
  for (int i = 0; c->streams && i < c->ns; i++) free(c->streams[i]);
  for (int i = 0; c->jkeys && i < 3 * c->nj; i++) free(c->jkeys[i]);
  free(c->streams);
  free(c->stopic);
  free(c->jkeys);
  free(c->jname);
  free(c->idx);
}

static char *keydup(const char *pre, const char *a, const char *post) {
  char *k = NULL;
  return asprintf(&k, "nq:%s%s%s", pre, a, post) < 0 ? NULL : k;
}

/* Builds the chunk's keys and the script call; 0 or NQ_ENOMEM. */
static int cchunk_build(rq_t *q, cchunk_t *c, const char *group, const nq_completion_t *items, dargs_t *a) {
  int m = c->hi - c->lo;
  c->streams = calloc((size_t)m, sizeof *c->streams);
  c->stopic = calloc((size_t)m, sizeof *c->stopic);
  c->jkeys = calloc((size_t)m * 3, sizeof *c->jkeys);
  c->jname = calloc((size_t)m, sizeof *c->jname);
  c->idx = calloc((size_t)m, sizeof *c->idx);
  if (!c->streams || !c->stopic || !c->jkeys || !c->jname || !c->idx) return NQ_ENOMEM;
  for (int i = c->lo; i < c->hi; i++) {
    const nq_completion_t *it = &items[i];
    int si = 0, ji = 0;
    if (it->d) {
      for (int k = 0; k < c->ns && !si; k++)
        if (strcmp(c->stopic[k], it->d->topic) == 0) si = k + 1;
      if (!si) {
        if (!(c->streams[c->ns] = keydup("", it->d->topic, ""))) return NQ_ENOMEM;
        c->stopic[c->ns++] = it->d->topic;
        si = c->ns;
      }
    }
    for (int k = 0; k < c->nj && !ji; k++)
      if (strcmp(c->jname[k], it->job) == 0) ji = k + 1;
    if (!ji) {
      char **jk = &c->jkeys[3 * c->nj];
      if (!(jk[0] = keydup("results:", it->job, "")) || !(jk[1] = keydup("job:", it->job, "")) ||
          !(jk[2] = keydup("job:", it->job, ":tasks"))) {
        c->nj++; /* freed by cchunk_free */
        return NQ_ENOMEM;
      }
      c->jname[c->nj++] = it->job;
      ji = c->nj;
    }
    snprintf(c->idx[i - c->lo][0], 12, "%d", si);
    snprintf(c->idx[i - c->lo][1], 12, "%d", ji);
  }
  da_evalsha(q, a, NQ_LUA_COMPLETE, c->ns + 3 * c->nj, c->nk);
  for (int k = 0; k < c->ns; k++) da_str(a, c->streams[k]);
  for (int k = 0; k < 3 * c->nj; k++) da_str(a, c->jkeys[k]);
  da_str(a, group ? group : "");
  snprintf(c->sn, sizeof c->sn, "%d", c->ns);
  da_str(a, c->sn);
  int wide = c->ns > 1 || c->nj > 1; /* else the indexes are implied (see NQ_LUA_COMPLETE) */
  da_str(a, wide ? "6" : "4");
  for (int i = c->lo; i < c->hi; i++) {
    const nq_completion_t *it = &items[i];
    if (wide) {
      da_str(a, c->idx[i - c->lo][0]);
      da_str(a, c->idx[i - c->lo][1]);
    }
    da_str(a, it->d ? it->d->id : "");
    da_str(a, it->task);
    da_str(a, it->status);
    da_str(a, it->result);
  }
  return a->oom ? NQ_ENOMEM : 0;
}

static long long *count_slot(nq_job_counts_t *c, char st) {
  return st == 'o' ? &c->ok : st == 'f' ? &c->failed : st == 'd' ? &c->dead : NULL;
}

/* The script's reply {codes, before} -> counts/changed of items [lo, hi). */
static int cchunk_parse(rq_t *q, const cchunk_t *c, const redisReply *r, const nq_completion_t *items,
                        nq_job_counts_t *counts, int *changed, nq_err_t *err) {
  int m = c->hi - c->lo;
  if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 || !is_str(r->element[0]) || r->element[0]->len != (size_t)m ||
      r->element[1]->type != REDIS_REPLY_ARRAY || r->element[1]->elements != (size_t)(4 * c->nj))
    return nq_err_set(err, NQ_EQUEUE, 0, "redis %s:%d complete_batch: unexpected script reply for items %d..%d",
                      q->host, q->port, c->lo, c->hi - 1);
  nq_job_counts_t *cur = calloc((size_t)c->nj, sizeof *cur);
  if (!cur) return oom(err, "complete_batch");
  for (int j = 0; j < c->nj; j++) {
    redisReply *const *b = &r->element[1]->element[4 * j];
    cur[j] = (nq_job_counts_t){reply_ll(b[0], -1), reply_ll(b[1], 0), reply_ll(b[2], 0), reply_ll(b[3], 0)};
  }
  const char *codes = r->element[0]->str;
  for (int i = c->lo; i < c->hi; i++) {
    char code = codes[i - c->lo];
    nq_job_counts_t *jc = &cur[atoi(c->idx[i - c->lo][1]) - 1];
    int ch = code != '-' && code != '=';
    if (ch) {
      long long *old = count_slot(jc, code), *now = count_slot(jc, items[i].status[0]);
      if (old) (*old)--;
      if (now) (*now)++;
    }
    if (counts) counts[i] = *jc;
    if (changed) changed[i] = ch;
  }
  free(cur);
  return 0;
}

/* All items in one round trip: COMPLETE script calls of up to RQ_COMPLETE_CHUNK items, pipelined (plus the
 * periodic trim of the task streams when this connection's ack count says so). Every item is all or nothing
 * on the server (see NQ_LUA_COMPLETE); a delivery no longer pending makes its item a no-op (changed 0, counts
 * as they are). On an error, items of the chunks before the failing one are complete: repeating the whole call
 * is safe for items with a delivery (they are no-ops the second time); items without one append their result
 * again. */
static int r_complete_batch(nq_queue_t *qq, const char *group, const nq_completion_t *items, int n,
                            nq_job_counts_t *counts, int *changed, nq_err_t *err) {
  NEED_ERR;
  rq_t *q = (rq_t *)qq;
  if (n < 0 || (n > 0 && !items))
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "redis queue complete_batch: bad arguments (n %d)", n);
  /* validate everything first: a bad item fails the call before any change */
  int nacks = 0;
  for (int i = 0; i < n; i++) {
    const nq_completion_t *it = &items[i];
    if (!it->job || !*it->job || !it->task || !*it->task || !it->result)
      return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL,
                        "redis queue complete_batch: item %d has an empty job/task or NULL result", i);
    if (!status_ok(it->status))
      return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL,
                        "redis queue complete_batch: status '%s' of task %s (item %d) is not ok|failed|dead",
                        it->status ? it->status : "(null)", it->task, i);
    if (it->d && (!group || !*group || !it->d->id || !*it->d->id || !it->d->topic || !*it->d->topic))
      return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL,
                        "redis queue complete_batch: item %d (task %s): NULL group or delivery fields", i, it->task);
    if (strlen(it->job) + 16 >= RQ_KEY_MAX || (it->d && strlen(it->d->topic) + 4 >= RQ_KEY_MAX))
      return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL,
                        "redis queue complete_batch: job or topic name of item %d (task %s) too long", i, it->task);
    nacks += it->d != NULL;
  }
  if (n == 0) return 0;
  int nchunks = (n + RQ_COMPLETE_CHUNK - 1) / RQ_COMPLETE_CHUNK;
  /* trims ride along in the same round trip when this connection's ack count reaches RQ_TRIM_EVERY */
  rconn_t *conn = pthread_getspecific(q->key);
  int trim = conn && nacks > 0 && conn->acks + (unsigned)nacks >= RQ_TRIM_EVERY;
  int maxcmd = nchunks + (trim ? n : 0);
  cchunk_t *ch = calloc((size_t)nchunks, sizeof *ch);
  dargs_t *cmds = calloc((size_t)maxcmd, sizeof *cmds);
  int *script = calloc((size_t)maxcmd, sizeof *script);
  redisReply **rep = calloc((size_t)maxcmd, sizeof *rep);
  char(*nk)[16] = calloc((size_t)maxcmd, sizeof *nk);
  int rc = 0, ncmd = 0;
  if (!ch || !cmds || !script || !rep || !nk) rc = oom(err, "complete_batch");
  for (int c = 0; rc == 0 && c < nchunks; c++) {
    ch[c].lo = c * RQ_COMPLETE_CHUNK;
    ch[c].hi = ch[c].lo + RQ_COMPLETE_CHUNK < n ? ch[c].lo + RQ_COMPLETE_CHUNK : n;
    script[ncmd] = NQ_LUA_COMPLETE;
    if (cchunk_build(q, &ch[c], group, items, &cmds[ncmd++])) rc = oom(err, "complete_batch");
  }
  if (rc == 0 && trim) { /* the distinct task streams of all chunks */
    for (int c = 0; c < nchunks; c++)
      for (int k = 0; k < ch[c].ns; k++) {
        int seen = 0;
        for (int t = nchunks; t < ncmd && !seen; t++) seen = strcmp(cmds[t].v[3], ch[c].streams[k]) == 0;
        if (seen) continue;
        script[ncmd] = NQ_LUA_TRIM;
        da_evalsha(q, &cmds[ncmd], NQ_LUA_TRIM, 1, nk[ncmd]);
        da_str(&cmds[ncmd++], ch[c].streams[k]);
      }
  }
  if (rc == 0) rc = rexec_scripts(q, "complete_batch", ncmd, cmds, script, rep, RQ_DEFAULT_TMO_MS, err);
  if (rc == 0) {
    if (nacks && (conn = pthread_getspecific(q->key))) conn->acks = trim ? 0 : conn->acks + (unsigned)nacks;
    for (int c = 0; c < nchunks && rc == 0; c++) {
      if (rep[c]->type == REDIS_REPLY_ERROR) {
        rc = reply_err(q, rep[c], "complete_batch", err);
        nq_err_prefix(err, "complete_batch items %d..%d of %d (task %s)", ch[c].lo, ch[c].hi - 1, n,
                      items[ch[c].lo].task);
        break;
      }
      rc = cchunk_parse(q, &ch[c], rep[c], items, counts, changed, err);
    }
    for (int j = 0; j < ncmd; j++) freeReplyObject(rep[j]); /* a failed trim is retried later */
  }
  for (int j = 0; cmds && j < ncmd; j++) da_free(&cmds[j]);
  for (int c = 0; ch && c < nchunks; c++) cchunk_free(&ch[c]);
  free(ch);
  free(cmds);
  free(script);
  free(rep);
  free(nk);
  return rc;
}

/* ---------------------------------------------------------------- DLQ */

static int r_dlq_list(nq_queue_t *qq, int max_n, nq_dlq_entry_t **out, int *n_out, nq_err_t *err) {
  NEED_ERR;
  rq_t *q = (rq_t *)qq;
  if (!out || !n_out || max_n <= 0) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "redis queue dlq_list: bad arguments");
  *out = NULL;
  *n_out = 0;
  rargs_t a;
  ra_init(&a, "XRANGE");
  ra_str(&a, "nq:dlq");
  ra_str(&a, "-");
  ra_str(&a, "+");
  ra_str(&a, "COUNT");
  ra_ll(&a, max_n);
  redisReply *r = rcmd(q, "XRANGE nq:dlq", &a, RQ_DEFAULT_TMO_MS, err);
  if (!r) return err ? err->code : NQ_EQUEUE;
  int rc = 0, n = 0;
  nq_dlq_entry_t *e = NULL;
  if (r->type == REDIS_REPLY_ARRAY && r->elements) {
    if (!(e = calloc(r->elements, sizeof *e))) rc = oom(err, "dlq_list");
    for (size_t i = 0; rc == 0 && i < r->elements; i++) {
      const redisReply *x = r->element[i];
      if (!x || x->type != REDIS_REPLY_ARRAY || x->elements < 2 || !is_str(x->element[0])) continue;
      const redisReply *t = field(x->element[1], "topic"), *rs = field(x->element[1], "reason"),
                       *b = field(x->element[1], "body");
      e[n].id = memdup0(x->element[0]->str, x->element[0]->len);
      e[n].topic = is_str(t) ? memdup0(t->str, t->len) : strdup("");
      e[n].reason = is_str(rs) ? memdup0(rs->str, rs->len) : strdup("");
      e[n].body = is_str(b) ? memdup0(b->str, b->len) : strdup("");
      n++;
      if (!e[n - 1].id || !e[n - 1].topic || !e[n - 1].reason || !e[n - 1].body) rc = oom(err, "dlq_list");
    }
  }
  freeReplyObject(r);
  if (rc) {
    nq_dlq_entries_free(e, n);
    return rc;
  }
  if (n == 0) {
    free(e);
    e = NULL;
  }
  *out = e;
  *n_out = n;
  return 0;
}

static int r_dlq_requeue(nq_queue_t *qq, const char *id, int *n, nq_err_t *err) {
  NEED_ERR;
  rq_t *q = (rq_t *)qq;
  int total = 0;
  char start[64] = "-";
  for (;;) {
    rargs_t a;
    args_empty(&a);
    ra_str(&a, "nq:dlq");
    ra_str(&a, id ? "one" : "batch");
    ra_str(&a, id ? id : start);
    ra_str(&a, "nq:");
    redisReply *r = reval(q, NQ_LUA_REQUEUE, 1, &a, "dlq_requeue", err);
    if (!r) {
      if (n) *n = total;
      return err ? err->code : NQ_EQUEUE;
    }
    int ok = r->type == REDIS_REPLY_ARRAY && r->elements == 2;
    total += ok ? (int)reply_ll(r->element[0], 0) : 0;
    int more = ok && !id && is_str(r->element[1]) && r->element[1]->len > 0;
    if (more) snprintf(start, sizeof start, "(%s", r->element[1]->str);
    freeReplyObject(r);
    if (!more) break;
  }
  if (n) *n = total;
  if (id && total == 0) return nq_err_set(err, NQ_ENOENT, 0, "redis queue dlq_requeue: no DLQ entry '%s'", id);
  return 0;
}

static int r_dlq_purge(nq_queue_t *qq, int *n, nq_err_t *err) {
  NEED_ERR;
  rq_t *q = (rq_t *)qq;
  rargs_t a;
  args_empty(&a);
  ra_str(&a, "nq:dlq");
  redisReply *r = reval(q, NQ_LUA_PURGE, 1, &a, "dlq_purge", err);
  if (!r) return err ? err->code : NQ_EQUEUE;
  if (n) *n = (int)reply_ll(r, 0);
  freeReplyObject(r);
  return 0;
}

/* ---------------------------------------------------------------- lifecycle */

/* Call only when no other thread uses q any more. */
/* Wipes and frees the credentials. */
static void creds_free(rq_t *q) {
  if (q->pass) explicit_bzero(q->pass, strlen(q->pass));
  free(q->pass);
  free(q->user);
  q->pass = q->user = NULL;
}

static void r_free(nq_queue_t *qq) {
  rq_t *q = (rq_t *)qq;
  creds_free(q);
  pthread_key_delete(q->key); /* no destructor runs after this: the connections are freed here */
  for (rconn_t *c = q->conns, *n; c; c = n) {
    n = c->next;
    conn_drop(c);
    free(c);
  }
  groups_forget(q);
  pthread_mutex_destroy(&q->mu);
  free(q);
}

static const nq_queue_i redis_vt = {
    .name = "redis",
    .publish = r_publish,
    .fetch = r_fetch,
    .ack = r_ack,
    .nack = r_nack,
    .extend_lease = r_extend_lease,
    .dead_letter = r_dead_letter,
    .stats = r_stats,
    .publish_result = r_publish_result,
    .read_results = r_read_results,
    .job_put = r_job_put,
    .job_get = r_job_get,
    .job_set_total = r_job_set_total,
    .job_mark = r_job_mark,
    .job_counts = r_job_counts,
    .tasks_ok = r_tasks_ok,
    .dlq_list = r_dlq_list,
    .dlq_requeue = r_dlq_requeue,
    .dlq_purge = r_dlq_purge,
    .publish_batch = r_publish_batch,
    .complete_batch = r_complete_batch,
    .free = r_free,
};

static int sha1_hex(const char *s, char out[41]) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int mdlen = 0;
  if (!EVP_Digest(s, strlen(s), md, &mdlen, EVP_sha1(), NULL) || mdlen != 20) return -1;
  for (unsigned i = 0; i < 20; i++) snprintf(out + 2 * i, 3, "%02x", md[i]);
  return 0;
}

int nq_queue_redis_open(const char *host, int port, int db, const nq_queue_opts_t *opts, nq_queue_t **out,
                        nq_err_t *err) {
  return nq_queue_redis_open_auth(host, port, db, NULL, NULL, opts, out, err);
}

int nq_queue_redis_open_auth(const char *host, int port, int db, const char *user, const char *pass,
                             const nq_queue_opts_t *opts, nq_queue_t **out, nq_err_t *err) {
  if (!host || !out || port <= 0 || port > 65535 || db < 0)
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "redis queue open: bad host/port/db");
  *out = NULL;
  if (strlen(host) >= sizeof(((rq_t *)0)->host))
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "redis queue open: host name too long");
  rq_t *q = calloc(1, sizeof *q);
  if (!q) return oom(err, "open");
  q->base.vt = &redis_vt;
  q->base.lease_ms = opts && opts->lease_ms > 0 ? opts->lease_ms : 30000;
  if (pass && user && *user)
    snprintf(q->base.url, sizeof q->base.url, "redis://%.100s:***@%s:%d/%d", user, host, port, db);
  else if (pass)
    snprintf(q->base.url, sizeof q->base.url, "redis://:***@%s:%d/%d", host, port, db);
  else
    snprintf(q->base.url, sizeof q->base.url, "redis://%s:%d/%d", host, port, db);
  snprintf(q->host, sizeof q->host, "%s", host);
  if ((pass && !(q->pass = strdup(pass))) || (pass && user && *user && !(q->user = strdup(user)))) {
    creds_free(q);
    free(q);
    return oom(err, "open");
  }
  q->port = port;
  q->db = db;
  for (int i = 0; i < NQ_LUA_N; i++)
    if (sha1_hex(nq_lua_src[i], q->sha[i])) {
      creds_free(q);
      free(q);
      return nq_err_set(err, NQ_EINTERNAL, NQ_ERR_FATAL, "redis queue open: SHA-1 unavailable");
    }
  if (pthread_key_create(&q->key, conn_dtor)) {
    creds_free(q);
    free(q);
    return nq_err_set(err, NQ_ELIMIT, NQ_ERR_RETRIABLE, "redis queue open: out of thread keys");
  }
  pthread_mutex_init(&q->mu, NULL);
  /* connect now so a wrong address fails at open; the connection belongs to the opening thread */
  int fresh;
  if (!conn_get(q, &fresh, err)) {
    r_free(&q->base);
    return err ? err->code : NQ_EQUEUE;
  }
  *out = &q->base;
  return 0;
}

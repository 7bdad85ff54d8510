/* queue/kafka.c — the Kafka backend ("kafka://HOST:PORT[,HOST:PORT][?prop=value&...]"), librdkafka >= 2.0.
 *
 * Topics (Kafka names; see nq_kafka__topic_name):
 *   nq.<topic>     tasks ("tasks:llm:cpu" -> "nq.tasks.llm.cpu"); one consumer group per stage ("stage:llm").
 *   nq.retry       nacked messages: value = body, headers nq-topic (logical destination) and nq-due (epoch ms).
 *   nq.dlq         dead letters, all written to partition 0: value = body, headers nq-kind=entry, nq-topic,
 *                  nq-reason, nq-group, nq-id; plus markers nq-kind=remove (nq-ref = entry offset, after a requeue)
 *                  and nq-kind=purge (every entry before the marker is gone). The DLQ is the fold of that log.
 *   nq.results     results, key = job, partition = FNV-1a(job) % partitions; the cursor is the record's offset.
 *   nq.jobs        job state, key = job, same partitioning: records {"k":"meta"}, {"k":"total"}, {"k":"mark"}.
 * Job state has no key-value store in Kafka. We fold nq.jobs per partition in log order (each process keeps the
 * fold incrementally): a task counts once, with its latest status, and "changed" is decided by log order, so two
 * workers marking the same task agree on which mark counted. job_mark appends its record, then folds up to that
 * record's own offset (one process serialises its marks), which makes the counts it returns exact at that point.
 * A compacted topic would bound the size but needs CreateTopics with cleanup.policy=compact, which the mock broker
 * does not answer; set retention.ms=-1 on nq.jobs, nq.results and nq.dlq in production instead.
 *
 * Delivery on a task topic (the lease model mapped to Kafka):
 *   - each (group, consumer name) of a handle is one librdkafka consumer, cooperative-sticky, auto commit off;
 *     offsets are committed explicitly only up to the lowest delivery of the partition not yet done (acked,
 *     nacked or dead-lettered): a commit never passes a task whose outputs and result are not written.
 *   - a consumer busy with a long task is paused: the worker's heartbeat (extend_lease) pauses every assigned
 *     partition and keeps calling poll so librdkafka's max.poll.interval.ms (= lease_ms) never expires, and the
 *     paused partitions fetch nothing meanwhile. The next fetch resumes them (fetching restarts at the last position
 *     handed out). Fetches do not pause on return: a 2.0 resume waits for the broker thread's ~1 s wakeup.
 *   - a rebalance that revokes a partition with tasks in flight is deferred until they are done (heartbeats keep
 *     flowing; the coordinator waits up to the rebalance timeout, which librdkafka sets to max.poll.interval.ms).
 *   - a consumer that stops polling for lease_ms (hung) leaves the group; one that dies stops heartbeating and is
 *     expelled after session.timeout.ms (= lease_ms, at least 6 s: see session_ms()). Its uncommitted deliveries go to the next owner: a
 *     redelivery (delivery_count 2+), never a loss.
 *   - delivery_count across processes: every fetch commits the unchanged offset with metadata "nq1;F;n" (F = first
 *     offset never delivered, n = deliveries of the message at the commit point), so the next owner knows which
 *     offsets were delivered before and how often the head was (the message most likely to be a poison pill).
 *   - nack: produce to nq.retry (due time in a header), then the delivery is done. Delay 0 re-publishes directly.
 *     Each fetching handle runs a "mover": a consumer of nq.retry in group "nq.retry" that reads retries into
 *     memory (a small list ordered by due time) and, during fetch/extend_lease calls, re-publishes the due ones to
 *     their topic and commits nq.retry only below the oldest retry not yet re-published. fetch never blocks on a
 *     retry: it caps its poll slices at the next due time. A crash between re-publish and commit duplicates a
 *     retry (at-least-once), never loses it.
 *   - dead_letter: produce the DLQ entry with the reason in headers, then the delivery is done.
 * stats: depth = Σ(high watermark − max(committed, F)), in_flight = Σ(F − committed), lag = Σ(high watermark −
 * committed) (Kafka's consumer lag: depth + in_flight), delayed = lag of group "nq.retry" on nq.retry (all topics),
 * dead = live DLQ entries (all topics).
 * Properties: librdkafka properties pass through from opts->kv and the URL query (security.protocol, sasl.*,
 * ssl.*, message.timeout.ms, session.timeout.ms...); they override the defaults set here. No transactions, no
 * idempotent producer (the mock does not model them).
 */
#include <errno.h>
#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/log.h"
#include "queue/kafka_int.h"
#include "queue/queue.h"

#define KQ_TOPIC_MAX 256
#define KQ_MAX_TOPICS 64
#define KQ_TMO_MS 10000      /* metadata, watermark and commit round trips */
#define KQ_SLICE_MS 100      /* a blocking fetch polls in slices this long (heartbeats and retries in between) */
#define KQ_MIN_SESSION_MS 6000 /* see session_ms() */
#define KQ_LINGER_MS 5       /* once a fetch has something, it waits this long for more to fill the batch */
#define KQ_T_RETRY "nq.retry"
#define KQ_T_DLQ "nq.dlq"
#define KQ_T_RESULTS "nq.results"
#define KQ_T_JOBS "nq.jobs"
#define KQ_G_RETRY "nq.retry"

/* ---------------------------------------------------------------- small helpers */

static int64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static char *memdup0(const void *s, size_t n) {
  char *p = malloc(n + 1);
  if (!p) return NULL;
  if (n) memcpy(p, s, n);
  p[n] = 0;
  return p;
}

static int oom(nq_err_t *err, const char *what) {
  return nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "kafka queue: out of memory (%s)", what);
}

/* Vtable entries may be called with err == NULL; errors still need a code to return. */
#define NEED_ERR       \
  nq_err_t err_local_; \
  if (!err) err = &err_local_

static int kerr(nq_err_t *err, rd_kafka_resp_err_t e, const char *fmt, const char *a) {
  return nq_err_set(err, NQ_EQUEUE, NQ_ERR_RETRIABLE, "kafka %s %s: %s", fmt, a ? a : "", rd_kafka_err2str(e));
}

int nq_kafka__topic_name(const char *logical, char *out, size_t cap, nq_err_t *err) {
  if (!logical || !*logical) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "kafka queue: empty topic name");
  size_t n = strlen(logical);
  if (n + 3 > 249 || n + 4 > cap)
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "kafka queue: topic '%.40s...' longer than Kafka allows", logical);
  memcpy(out, "nq.", 3);
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)logical[i];
    int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
             c == '-';
    out[3 + i] = c == ':' ? '.' : ok ? (char)c : '_';
  }
  out[3 + n] = 0;
  if (!strcmp(out, KQ_T_RETRY) || !strcmp(out, KQ_T_DLQ) || !strcmp(out, KQ_T_RESULTS) || !strcmp(out, KQ_T_JOBS))
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "kafka queue: topic '%s' maps to reserved topic %s", logical, out);
  return 0;
}

int nq_kafka__meta_parse(const char *s, size_t len, int64_t *f, unsigned *n) {
  *f = -1;
  *n = 0;
  char b[64];
  if (!s || len < 4 || len >= sizeof b) return -1;
  memcpy(b, s, len);
  b[len] = 0;
  long long ff;
  unsigned nn;
  char tail;
  if (sscanf(b, "nq1;%lld;%u%c", &ff, &nn, &tail) != 2 || ff < 0) return -1;
  *f = ff;
  *n = nn;
  return 0;
}

unsigned nq_kafka__delivery_count(int64_t off, int64_t c0, int64_t f0, unsigned n0) {
  if (f0 < 0 || off >= f0) return 1; /* never delivered before (as far as the last commit knows) */
  if (off == c0) return (n0 ? n0 : 1) + 1;
  return 2;
}

int32_t nq_kafka__key_partition(const char *key, int32_t nparts) {
  uint32_t h = 2166136261u;
  for (const unsigned char *p = (const unsigned char *)key; *p; p++) h = (h ^ *p) * 16777619u;
  return nparts > 0 ? (int32_t)(h % (uint32_t)nparts) : 0;
}

/* ---------------------------------------------------------------- types */

typedef struct kq kq_t;

/* One delivered offset of a partition; kept in offset order until the prefix is done. */
typedef struct kfl {
  int64_t off;
  unsigned count;
  int done;
} kfl_t;

/* Per assigned partition of a task consumer. */
typedef struct kpart {
  char *ktopic; /* owned */
  int32_t part;
  int64_t c0, f0; /* committed offset and metadata F when assigned (-1: none) */
  unsigned n0;
  int64_t hi;     /* first offset never delivered by us (-1: nothing delivered in this assignment) */
  kfl_t *fl;      /* owned: deliveries not yet committed past, offset order */
  int nfl, capfl;
  int paused;   /* paused by us (rd_kafka_pause_partitions), not resumed yet */
  int dirty;    /* state changed since the last successful commit */
  int revoking; /* revocation deferred (deliveries in flight): paused for good, nothing more is handed out */
  struct kpart *next;
} kpart_t;

/* A consumer: (group, consumer name) of one handle. Every field is guarded by mu, which is held only briefly: never
 * across rd_kafka_consumer_poll. Polls are serialised by pmu (taken before mu, never while holding it); the
 * callbacks librdkafka runs inside a poll (rebalance, commit results) take mu themselves. Holding mu across a
 * blocking poll made every ack of every other consumer of the handle wait out that poll (locate() visits all of
 * them): a few acks a second, so rebalances overran their timeouts and tests their deadlines. */
typedef struct kc {
  kq_t *q;
  char *group, *name; /* owned */
  rd_kafka_t *rk;     /* owned */
  char (*ktopics)[KQ_TOPIC_MAX];  /* owned: subscribed Kafka topics */
  char **ltopics;                 /* owned: their logical names */
  int ntopics;
  kpart_t *parts;                 /* owned: current assignment */
  rd_kafka_topic_partition_list_t *pending_revoke; /* owned: revocation deferred until its deliveries are done */
  rd_kafka_message_t **buf;       /* owned: messages polled by a heartbeat, handed out by the next fetch */
  int nbuf, capbuf;
  int closing;
  int synced; /* a rebalance callback ran: the group's first SyncGroup answered (see kc_free) */
  int coop;   /* cooperative rebalance protocol (conf_coop) */
  int64_t commit_hold_until; /* mono ms: async commits wait (a rebalance is in progress), see kc_commit_cb */
  int in_fetch; /* fetches running: their partitions are resumed; outside fetches everything is paused */
  int64_t last_poll; /* mono ms of the last rd_kafka_consumer_poll; guarded by pmu */
  int keeping;       /* keeper_main is polling it; guarded by q->mu (k_free waits for 0 on q->kcv) */
  unsigned kept_round; /* keeper_main's last round that visited it; guarded by q->mu */
  pthread_mutex_t mu;
  int hold_ms;         /* longest commit hold: session_ms() */
  pthread_mutex_t pmu; /* serialises rd_kafka_consumer_poll / consumer_close of rk */
  struct kc *next;
} kc_t;

/* A retry read from nq.retry and not yet re-published. */
typedef struct kretry {
  int32_t part;
  int64_t off, due;
  char *ktopic; /* owned: destination */
  char *body;   /* owned */
  size_t len;
} kretry_t;

typedef struct kmover {
  rd_kafka_t *rk; /* owned: consumer of nq.retry in group nq.retry */
  kretry_t *r;    /* owned */
  int nr, capr;
  int closing;            /* k_free: the final commit is done, revocations commit nothing more */
  int64_t next_read[256]; /* per partition: offset after the last retry read (-1 unknown); partitions >= 256 are
                             committed only through the retries themselves */
  pthread_mutex_t mu;
} kmover_t;

/* Consumers used only for rd_kafka_committed() of a group (stats). */
typedef struct kprobe {
  char *group; /* owned */
  rd_kafka_t *rk;
  struct kprobe *next;
} kprobe_t;

/* Fold of one nq.jobs partition. */
typedef struct ktask {
  char *task; /* owned */
  char st;    /* 'o'k, 'f'ailed, 'd'ead */
} ktask_t;

typedef struct kjob {
  char *job, *meta; /* owned */
  long long total, ok, failed, dead;
  ktask_t *t; /* owned: open-addressed hash table, cap a power of two */
  size_t nt, capt;
  struct kjob *next;
} kjob_t;

typedef struct kjpart {
  int32_t part;
  int64_t nextoff; /* next offset to fold */
  kjob_t *jobs;
  struct kjpart *next;
} kjpart_t;

/* Fold of nq.dlq partition 0. */
typedef struct kdlq {
  int64_t off;
  char *topic, *reason, *body; /* owned */
  size_t len;
  int live;
} kdlq_t;

struct kq {
  nq_queue_t base; /* first */
  char brokers[512];
  char **kv; /* owned: librdkafka properties, key,value pairs (URL query then opts->kv) */
  int nkv;
  int msg_timeout_ms;
  rd_kafka_t *prod; /* owned: the producer, shared by every thread */
  pthread_t poller; /* serves the producer's delivery reports */
  volatile int stop;
  pthread_t keeper; /* polls idle consumers (keeper_main); started with the first consumer */
  int keeper_on;    /* guarded by mu */
  pthread_cond_t kcv; /* with mu: a consumer's keeping dropped to 0 */
  volatile int keeper_stop;
  pthread_mutex_t dmu; /* delivery reports */
  pthread_cond_t dcv;
  pthread_mutex_t mu;  /* kcs, probes, mover creation */
  kc_t *kcs;
  kprobe_t *probes;
  kmover_t *mover;
  pthread_mutex_t rmu; /* the reader (folds and result reads) */
  rd_kafka_t *reader;
  pthread_mutex_t jmu; /* job folds */
  kjpart_t *jparts;
  pthread_mutex_t cmu; /* partition counts of nq.results / nq.jobs (fixed for the handle: a job's records must keep
                          mapping to one partition, so a count seen once is kept) */
  int32_t np_results, np_jobs;
  pthread_mutex_t xmu; /* DLQ fold */
  kdlq_t *dlq;
  int ndlq, capdlq;
  int64_t dlq_next;
};

/* ---------------------------------------------------------------- configuration */

static void k_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf) {
  (void)rk;
  if (level <= 3) nq_log(NQ_LOG_ERROR, "kafka", "%s: %s", fac, buf);
  else if (level == 4) nq_log(NQ_LOG_WARN, "kafka", "%s: %s", fac, buf);
  else NQ_DEBUG("kafka", "%s: %s", fac, buf);
}

static int conf_set(rd_kafka_conf_t *c, const char *k, const char *v, nq_err_t *err) {
  char es[256];
  if (rd_kafka_conf_set(c, k, v, es, sizeof es) != RD_KAFKA_CONF_OK)
    return nq_err_set(err, NQ_ECONFIG, NQ_ERR_FATAL, "kafka property %s: %s", k, es);
  return 0;
}

/* A conf with our defaults for `type` (group may be NULL), then the user's properties on top. */
static rd_kafka_conf_t *make_conf(kq_t *q, rd_kafka_type_t type, const char *group, int session_ms, nq_err_t *err) {
  rd_kafka_conf_t *c = rd_kafka_conf_new();
  rd_kafka_conf_set_log_cb(c, k_log);
  char b[32];
  int rc = conf_set(c, "bootstrap.servers", q->brokers, err);
  if (!rc) rc = conf_set(c, "client.id", "nextq", err);
  if (!rc) rc = conf_set(c, "allow.auto.create.topics", "true", err);
  if (!rc) rc = conf_set(c, "topic.metadata.refresh.interval.ms", "5000", err);
  if (type == RD_KAFKA_PRODUCER) {
    snprintf(b, sizeof b, "%d", q->msg_timeout_ms);
    if (!rc) rc = conf_set(c, "acks", "all", err);
    if (!rc) rc = conf_set(c, "linger.ms", "1", err);
    /* Results, job records and task batches are JSON that compresses well (a batch of noop results: measured below
     * in deploy/README.md); the broker keeps a partition by bytes, so this is also how many results it holds. */
    if (!rc) rc = conf_set(c, "compression.type", "lz4", err);
    if (!rc) rc = conf_set(c, "message.timeout.ms", b, err);
  } else {
    if (!rc) rc = conf_set(c, "group.id", group ? group : "nq.reader", err);
    if (!rc) rc = conf_set(c, "enable.auto.commit", "false", err);
    if (!rc) rc = conf_set(c, "enable.auto.offset.store", "false", err);
    if (!rc) rc = conf_set(c, "auto.offset.reset", "earliest", err);
    if (!rc) rc = conf_set(c, "fetch.wait.max.ms", "100", err);
    /* session_ms < 0: the retry mover. It holds no task, so an eager assignor does; and librdkafka < 2.2 aborts
     * when a cooperative-sticky member is destroyed between JoinGroup and its first assignment (fixed upstream in
     * #4381) -- a window the mover hits whenever a peer process died and the group waits out its session. */
    if (!rc) rc = conf_set(c, "partition.assignment.strategy", session_ms < 0 ? "roundrobin" : "cooperative-sticky", err);
    if (session_ms < 0) session_ms = -session_ms;
    if (session_ms > 0) {
      snprintf(b, sizeof b, "%d", session_ms);
      if (!rc) rc = conf_set(c, "session.timeout.ms", b, err);
      if (!rc) rc = conf_set(c, "max.poll.interval.ms", b, err);
      snprintf(b, sizeof b, "%d", session_ms / 5 > 10 ? session_ms / 5 : 10);
      if (!rc) rc = conf_set(c, "heartbeat.interval.ms", b, err);
    }
  }
  /* NQ_KAFKA_DEBUG=cgrp,fetch,... turns on librdkafka's debug contexts (logged at debug level) */
  const char *dbg = getenv("NQ_KAFKA_DEBUG");
  if (!rc && dbg && *dbg) rc = conf_set(c, "debug", dbg, err);
  for (int i = 0; !rc && i < q->nkv; i++) {
    const char *k = q->kv[2 * i], *v = q->kv[2 * i + 1];
    /* producer-only / consumer-only properties go to their kind; the rest (security, sockets) to every client */
    int prod_only = !strcmp(k, "acks") || !strncmp(k, "linger.ms", 9) || !strcmp(k, "message.timeout.ms") ||
                    !strncmp(k, "batch.", 6) || !strncmp(k, "compression.", 12) || !strcmp(k, "queue.buffering.max.ms");
    int cons_only = !strcmp(k, "session.timeout.ms") || !strcmp(k, "max.poll.interval.ms") ||
                    !strcmp(k, "heartbeat.interval.ms") || !strncmp(k, "fetch.", 6) ||
                    !strcmp(k, "partition.assignment.strategy") || !strcmp(k, "auto.offset.reset") ||
                    !strcmp(k, "group.instance.id");
    if ((prod_only && type != RD_KAFKA_PRODUCER) || (cons_only && type == RD_KAFKA_PRODUCER)) continue;
    if (!strcmp(k, "group.id") || !strcmp(k, "enable.auto.commit") || !strcmp(k, "enable.auto.offset.store") ||
        !strcmp(k, "bootstrap.servers"))
      continue; /* ours */
    rc = conf_set(c, k, v, err);
  }
  if (rc) {
    rd_kafka_conf_destroy(c);
    return NULL;
  }
  return c;
}

static void kc_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t e, rd_kafka_topic_partition_list_t *l, void *opaque);
static void kc_commit_cb(rd_kafka_t *rk, rd_kafka_resp_err_t e, rd_kafka_topic_partition_list_t *l, void *opaque);

static rd_kafka_t *new_client(kq_t *q, rd_kafka_type_t type, const char *group, int session_ms, void *opaque,
                              void (*rebalance)(rd_kafka_t *, rd_kafka_resp_err_t, rd_kafka_topic_partition_list_t *,
                                                void *),
                              nq_err_t *err) {
  rd_kafka_conf_t *c = make_conf(q, type, group, session_ms, err);
  if (!c) return NULL;
  if (opaque) rd_kafka_conf_set_opaque(c, opaque);
  if (rebalance) rd_kafka_conf_set_rebalance_cb(c, rebalance);
  if (rebalance == kc_rebalance) rd_kafka_conf_set_offset_commit_cb(c, kc_commit_cb);
  char es[512];
  rd_kafka_t *rk = rd_kafka_new(type, c, es, sizeof es);
  if (!rk) {
    rd_kafka_conf_destroy(c);
    nq_err_set(err, NQ_ECONFIG, NQ_ERR_FATAL, "kafka %s: cannot create client: %s", q->brokers, es);
    return NULL;
  }
  if (type == RD_KAFKA_CONSUMER) rd_kafka_poll_set_consumer(rk);
  return rk;
}

/* ---------------------------------------------------------------- producing */

typedef struct kdr {
  int done;
  rd_kafka_resp_err_t err;
  int32_t part;
  int64_t off;
} kdr_t;

static void dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
  kq_t *q = opaque;
  kdr_t *w = m->_private;
  if (!w) return;
  pthread_mutex_lock(&q->dmu);
  w->err = m->err;
  w->part = m->partition;
  w->off = m->offset;
  w->done = 1;
  pthread_cond_broadcast(&q->dcv);
  pthread_mutex_unlock(&q->dmu);
}

static void *poller_main(void *p) {
  kq_t *q = p;
  while (!q->stop) rd_kafka_poll(q->prod, 100);
  return NULL;
}

/* Enqueue one message. hdrs (may be NULL) is consumed in every case. */
static int produce1(kq_t *q, const char *ktopic, int32_t part, const char *key, const void *val, size_t len,
                    rd_kafka_headers_t *hdrs, kdr_t *w, nq_err_t *err) {
  memset(w, 0, sizeof *w);
  for (int tries = 0;; tries++) {
    rd_kafka_resp_err_t e =
        hdrs ? rd_kafka_producev(q->prod, RD_KAFKA_V_TOPIC(ktopic), RD_KAFKA_V_PARTITION(part),
                                 RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_KEY(key, key ? strlen(key) : 0),
                                 RD_KAFKA_V_VALUE((void *)val, len), RD_KAFKA_V_HEADERS(hdrs), RD_KAFKA_V_OPAQUE(w),
                                 RD_KAFKA_V_END)
             : rd_kafka_producev(q->prod, RD_KAFKA_V_TOPIC(ktopic), RD_KAFKA_V_PARTITION(part),
                                 RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_KEY(key, key ? strlen(key) : 0),
                                 RD_KAFKA_V_VALUE((void *)val, len), RD_KAFKA_V_OPAQUE(w), RD_KAFKA_V_END);
    if (!e) return 0;
    if (e == RD_KAFKA_RESP_ERR__QUEUE_FULL && tries < 100) {
      struct timespec ts = {0, 10 * 1000000L};
      nanosleep(&ts, NULL); /* the poller thread drains delivery reports */
      continue;
    }
    /* on failure librdkafka did not take the headers over */
    if (hdrs) rd_kafka_headers_destroy(hdrs);
    return kerr(err, e, "produce to", ktopic);
  }
}

static int wait_dr(kq_t *q, kdr_t *w, int n, const char *ktopic, nq_err_t *err) {
  int64_t deadline = mono_ms() + q->msg_timeout_ms + 5000;
  int rc = 0;
  pthread_mutex_lock(&q->dmu);
  for (int i = 0; i < n; i++) {
    while (!w[i].done) {
      struct timespec ts;
      clock_gettime(CLOCK_REALTIME, &ts);
      ts.tv_nsec += 50 * 1000000L;
      if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
      pthread_cond_timedwait(&q->dcv, &q->dmu, &ts);
      if (!w[i].done && mono_ms() > deadline) {
        /* cannot happen unless librdkafka loses a report: the waiter's memory must outlive it, so keep waiting */
        if (!rc) rc = nq_err_set(err, NQ_ETIMEOUT, NQ_ERR_RETRIABLE, "kafka produce to %s: no delivery report", ktopic);
        deadline = mono_ms() + 60000;
      }
    }
    if (w[i].err && !rc) rc = kerr(err, w[i].err, "produce to", ktopic);
  }
  pthread_mutex_unlock(&q->dmu);
  return rc;
}

/* Waits for the delivery reports of w[0..n) whatever happened (librdkafka writes into them until then), then
 * returns rc, or the first delivery error. */
static int wait_all(kq_t *q, kdr_t *w, int n, const char *ktopic, int rc, nq_err_t *err) {
  nq_err_t e2 = {0};
  int wrc = n > 0 ? wait_dr(q, w, n, ktopic, rc ? &e2 : err) : 0;
  return rc ? rc : wrc;
}

static int produce_sync(kq_t *q, const char *ktopic, int32_t part, const char *key, const void *val, size_t len,
                        rd_kafka_headers_t *hdrs, int64_t *off, nq_err_t *err) {
  kdr_t w;
  int rc = produce1(q, ktopic, part, key, val, len, hdrs, &w, err);
  if (!rc) rc = wait_dr(q, &w, 1, ktopic, err);
  if (!rc && off) *off = w.off;
  return rc;
}

static int k_publish(nq_queue_t *qq, const char *topic, const char *body, size_t len, nq_err_t *err) {
  NEED_ERR;
  kq_t *q = (kq_t *)qq;
  char kt[KQ_TOPIC_MAX];
  if (!body && len) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "kafka queue publish: NULL body");
  int rc = nq_kafka__topic_name(topic, kt, sizeof kt, err);
  if (!rc) rc = produce_sync(q, kt, RD_KAFKA_PARTITION_UA, NULL, body ? body : "", len, NULL, NULL, err);
  return rc;
}

static int k_publish_batch(nq_queue_t *qq, const char *topic, const char *const *bodies, const size_t *lens, int n,
                           nq_err_t *err) {
  NEED_ERR;
  kq_t *q = (kq_t *)qq;
  char kt[KQ_TOPIC_MAX];
  if (n < 0 || (n > 0 && (!bodies || !lens)))
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "kafka queue publish_batch: bad arguments");
  int rc = nq_kafka__topic_name(topic, kt, sizeof kt, err);
  if (rc || n == 0) return rc;
  for (int i = 0; i < n; i++) /* a bad item rejects the whole batch before anything is produced */
    if (!bodies[i] && lens[i]) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "kafka publish_batch: NULL body %d", i);
  kdr_t *w = calloc((size_t)n, sizeof *w);
  if (!w) return oom(err, "publish_batch");
  int sent = 0;
  for (; sent < n && !rc; sent++)
    rc = produce1(q, kt, RD_KAFKA_PARTITION_UA, NULL, bodies[sent] ? bodies[sent] : "", lens[sent], NULL, &w[sent], err);
  if (rc) sent--; /* the failed one was not enqueued */
  rc = wait_all(q, w, sent, kt, rc, err);
  free(w);
  return rc;
}

/* ---------------------------------------------------------------- metadata */

/* Partition count of a Kafka topic (auto-creating it where the broker allows); 0 if it does not exist. */
static int partition_count(kq_t *q, const char *ktopic, int32_t *n, nq_err_t *err) {
  *n = 0;
  rd_kafka_topic_t *t = rd_kafka_topic_new(q->prod, ktopic, NULL);
  if (!t) return nq_err_set(err, NQ_EQUEUE, NQ_ERR_RETRIABLE, "kafka: topic handle %s", ktopic);
  const struct rd_kafka_metadata *md = NULL;
  rd_kafka_resp_err_t e = rd_kafka_metadata(q->prod, 0, t, &md, KQ_TMO_MS);
  rd_kafka_topic_destroy(t);
  if (e) return kerr(err, e, "metadata of", ktopic);
  int rc = 0;
  if (md->topic_cnt == 1) {
    rd_kafka_resp_err_t te = md->topics[0].err;
    if (!te) *n = md->topics[0].partition_cnt;
    else if (te != RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART && te != RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE)
      rc = kerr(err, te, "metadata of", ktopic);
  }
  rd_kafka_metadata_destroy(md);
  return rc;
}

static int watermarks(kq_t *q, const char *ktopic, int32_t part, int64_t *lo, int64_t *hi, nq_err_t *err) {
  rd_kafka_resp_err_t e = rd_kafka_query_watermark_offsets(q->prod, ktopic, part, lo, hi, KQ_TMO_MS);
  if (e) return kerr(err, e, "watermarks of", ktopic);
  return 0;
}

static const char *hdr(const rd_kafka_message_t *m, const char *name, size_t *len) {
  rd_kafka_headers_t *h = NULL;
  const void *v = NULL;
  size_t l = 0;
  if (rd_kafka_message_headers(m, &h) || rd_kafka_header_get_last(h, name, &v, &l) || !v) {
    if (len) *len = 0;
    return NULL;
  }
  if (len) *len = l;
  return v;
}

static char *hdr_dup(const rd_kafka_message_t *m, const char *name) {
  size_t l;
  const char *v = hdr(m, name, &l);
  return memdup0(v ? v : "", v ? l : 0);
}

/* ---------------------------------------------------------------- task consumers */

static kpart_t *part_find(kc_t *kc, const char *ktopic, int32_t part) {
  for (kpart_t *p = kc->parts; p; p = p->next)
    if (p->part == part && !strcmp(p->ktopic, ktopic)) return p;
  return NULL;
}

static int part_pending(const kpart_t *p) {
  for (int i = 0; i < p->nfl; i++)
    if (!p->fl[i].done) return 1;
  return 0;
}

static void part_free(kpart_t *p) {
  free(p->ktopic);
  free(p->fl);
  free(p);
}

/* Drop the done prefix; returns the commit point (-1: nothing to commit). */
static int64_t part_commit_point(kpart_t *p) {
  int k = 0;
  while (k < p->nfl && p->fl[k].done) k++;
  if (k) {
    memmove(p->fl, p->fl + k, (size_t)(p->nfl - k) * sizeof *p->fl);
    p->nfl -= k;
  }
  if (p->nfl) return p->fl[0].off;
  return p->hi;
}

/* Commits every dirty partition (or, with only != NULL, that one): offset = commit point, metadata "nq1;F;n".
 * Asynchronous on the hot paths (ack, fetch): a synchronous commit waits while the group rebalances, and a consumer
 * that does not poll meanwhile overruns max.poll.interval.ms and loses its partitions. A failed async commit marks
 * its partitions dirty again (kc_commit_cb) and the next call commits them. Revocation, close and stats commit
 * synchronously: the next owner or the caller must see the result. */
static void kc_commit_sync(kc_t *kc, kpart_t *only, int force, int sync);
static void kc_commit(kc_t *kc, kpart_t *only, int force) { kc_commit_sync(kc, only, force, 0); }

static void kc_commit_sync(kc_t *kc, kpart_t *only, int force, int sync) {
  if (!sync && kc->commit_hold_until && mono_ms() < kc->commit_hold_until) return; /* dirty: committed later */
  rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(4);
  for (kpart_t *p = kc->parts; p; p = p->next) {
    if ((only && p != only) || (!p->dirty && !force)) continue;
    int64_t c = part_commit_point(p);
    if (c < 0) continue;
    int64_t f = p->hi > p->f0 ? p->hi : p->f0;
    char md[64];
    int mdl = snprintf(md, sizeof md, "nq1;%lld;%u", (long long)f, p->nfl ? p->fl[0].count : 0);
    rd_kafka_topic_partition_t *tp = rd_kafka_topic_partition_list_add(l, p->ktopic, p->part);
    tp->offset = c;
    tp->metadata = memdup0(md, (size_t)mdl); /* freed by the list */
    tp->metadata_size = (size_t)mdl;
    tp->opaque = p;
  }
  if (l->cnt) {
    for (int i = 0; i < l->cnt; i++) l->elems[i].opaque = NULL; /* the commit callback must not see our pointers */
    rd_kafka_resp_err_t e = rd_kafka_commit(kc->rk, l, !sync);
    for (kpart_t *p = kc->parts; p; p = p->next)
      if (rd_kafka_topic_partition_list_find(l, p->ktopic, p->part)) p->dirty = e ? 1 : 0;
    if (e) NQ_DEBUG("kafka", "commit for group %s: %s (retried later)", kc->group, rd_kafka_err2str(e));
  }
  rd_kafka_topic_partition_list_destroy(l);
}

/* Result of an async commit, served inside rd_kafka_consumer_poll (kc->pmu held, kc->mu not): failed partitions are
 * dirty again. REBALANCE_IN_PROGRESS also holds further async commits until our next rebalance callback (or hold_ms):
 * librdkafka 2.0 treats an OffsetCommit answered ILLEGAL_GENERATION -- one still in flight when the coordinator
 * bumps the generation -- as the loss of the whole assignment, so each ack's commit during the join phase of a
 * rebalance gambled every acked-but-uncommitted task of the member (hundreds of reruns per rebalance). Nothing
 * commits successfully in that phase anyway; the revocation callback commits synchronously afterwards. */
static void kc_commit_cb(rd_kafka_t *rk, rd_kafka_resp_err_t e, rd_kafka_topic_partition_list_t *l, void *opaque) {
  kc_t *kc = opaque;
  pthread_mutex_lock(&kc->mu);
  int rebalancing = e == RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS;
  for (int i = 0; l && i < l->cnt; i++) rebalancing |= l->elems[i].err == RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS;
  if (rebalancing) kc->commit_hold_until = mono_ms() + kc->hold_ms;
  for (int i = 0; l && i < l->cnt; i++) {
    if (!e && !l->elems[i].err) continue;
    kpart_t *p = part_find(kc, l->elems[i].topic, l->elems[i].partition);
    if (p) p->dirty = 1;
  }
  pthread_mutex_unlock(&kc->mu);
}

/* Whether rk's group uses the cooperative protocol, from its configuration. Not rd_kafka_rebalance_protocol(): that
 * is a request to the group thread, and inside the revocation that rd_kafka_consumer_close serves it was never
 * answered (librdkafka 2.0.2; a worker hung forever on SIGTERM after a broker outage). librdkafka picks COOPERATIVE
 * only when every configured assignor is cooperative, i.e. "cooperative-sticky" alone. */
static int conf_coop(rd_kafka_t *rk) {
  char v[256];
  size_t n = sizeof v;
  return rd_kafka_conf_get(rd_kafka_conf(rk), "partition.assignment.strategy", v, &n) == RD_KAFKA_CONF_OK &&
         !strcmp(v, "cooperative-sticky");
}

/* Forget buffered (not yet handed out) messages of a partition: the next owner reads them from the commit. */
static void buf_drop(kc_t *kc, const char *ktopic, int32_t part) {
  int j = 0;
  for (int i = 0; i < kc->nbuf; i++) {
    rd_kafka_message_t *m = kc->buf[i];
    if (m->partition == part && !strcmp(rd_kafka_topic_name(m->rkt), ktopic)) rd_kafka_message_destroy(m);
    else kc->buf[j++] = m;
  }
  kc->nbuf = j;
}

/* Unassign `l`: commit what is done (unless lost), drop their state. A partition we paused is resumed first:
 * librdkafka keeps the application's pause flag across unassign/assign (it resets only its own), so a partition
 * lost while paused -- a broker outage during a long task -- came back paused, fetched nothing, and its tasks
 * stalled for good. */
static void kc_unassign(kc_t *kc, rd_kafka_topic_partition_list_t *l, int lost) {
  rd_kafka_topic_partition_list_t *rl = rd_kafka_topic_partition_list_new(l->cnt > 0 ? l->cnt : 1);
  for (int i = 0; i < l->cnt; i++) {
    kpart_t *p = part_find(kc, l->elems[i].topic, l->elems[i].partition);
    if (p && p->paused) rd_kafka_topic_partition_list_add(rl, p->ktopic, p->part);
  }
  if (rl->cnt) rd_kafka_resume_partitions(kc->rk, rl);
  rd_kafka_topic_partition_list_destroy(rl);
  for (int i = 0; i < l->cnt; i++) {
    kpart_t *p = part_find(kc, l->elems[i].topic, l->elems[i].partition);
    if (!p) continue;
    /* Not while closing: kc_free committed everything just before rd_kafka_consumer_close, and a synchronous commit
     * from the revocation that close itself serves waited forever (librdkafka 2.0.2: no timeout, seen as a worker
     * hung after "stopped" on SIGTERM). */
    if (!lost && !kc->closing) kc_commit_sync(kc, p, 1, 1);
    buf_drop(kc, p->ktopic, p->part);
    for (kpart_t **pp = &kc->parts; *pp; pp = &(*pp)->next)
      if (*pp == p) {
        *pp = p->next;
        break;
      }
    part_free(p);
  }
  rd_kafka_error_t *e = NULL;
  if (kc->coop) e = rd_kafka_incremental_unassign(kc->rk, l);
  else rd_kafka_assign(kc->rk, NULL);
  if (e) {
    NQ_WARN("kafka", "group %s: unassign: %s", kc->group, rd_kafka_error_string(e));
    rd_kafka_error_destroy(e);
  }
}

/* A deferred revocation completes once none of its partitions has a delivery in flight. Caller holds kc->mu. */
static void kc_revoke_maybe(kc_t *kc) {
  if (!kc->pending_revoke) return;
  for (int i = 0; i < kc->pending_revoke->cnt; i++) {
    /* every partition of a pending revocation is revoking until it is unassigned (a loss clears the list) */
    kpart_t *p = part_find(kc, kc->pending_revoke->elems[i].topic, kc->pending_revoke->elems[i].partition);
    if (p && part_pending(p)) return;
  }
  rd_kafka_topic_partition_list_t *l = kc->pending_revoke;
  kc->pending_revoke = NULL;
  kc_unassign(kc, l, 0);
  rd_kafka_topic_partition_list_destroy(l);
}

/* Pauses (or resumes) every assigned partition: outside a fetch nothing is fetched, so the heartbeat's polls only
 * keep the membership alive; resuming restarts fetching at the last position handed out. Only partitions we paused
 * are resumed: resuming partitions never paused (tried for freshly assigned ones) made librdkafka 2.0 fetch again
 * from the committed offset -- acked tasks were redelivered and FIFO order broke. Caller holds kc->mu. */
static void kc_pause_all(kc_t *kc, int pause) {
  rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(4);
  for (kpart_t *p = kc->parts; p; p = p->next)
    if (p->paused != pause && !(p->revoking && !pause)) rd_kafka_topic_partition_list_add(l, p->ktopic, p->part)->opaque = p;
  rd_kafka_resp_err_t e = RD_KAFKA_RESP_ERR_NO_ERROR;
  if (l->cnt) e = pause ? rd_kafka_pause_partitions(kc->rk, l) : rd_kafka_resume_partitions(kc->rk, l);
  for (int i = 0; i < l->cnt; i++)
    if (!e && !l->elems[i].err) ((kpart_t *)l->elems[i].opaque)->paused = pause;
  for (int i = 0; i < l->cnt; i++) l->elems[i].opaque = NULL;
  rd_kafka_topic_partition_list_destroy(l);
}

static void kc_rebalance_locked(kc_t *kc, rd_kafka_t *rk, rd_kafka_resp_err_t e, rd_kafka_topic_partition_list_t *l);

/* Runs inside rd_kafka_consumer_poll / consumer_close, i.e. with kc->pmu held by the polling thread (not kc->mu). */
static void kc_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t e, rd_kafka_topic_partition_list_t *l, void *opaque) {
  kc_t *kc = opaque;
  pthread_mutex_lock(&kc->mu);
  kc_rebalance_locked(kc, rk, e, l);
  pthread_mutex_unlock(&kc->mu);
}

static void kc_rebalance_locked(kc_t *kc, rd_kafka_t *rk, rd_kafka_resp_err_t e, rd_kafka_topic_partition_list_t *l) {
  kc->synced = 1;
  kc->commit_hold_until = 0; /* the rebalance reached us: commits carry the new generation */
  int coop = kc->coop;
  if (e == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
    /* the committed offsets and their metadata say what earlier owners delivered */
    rd_kafka_topic_partition_list_t *c = rd_kafka_topic_partition_list_copy(l);
    rd_kafka_resp_err_t ce = rd_kafka_committed(rk, c, KQ_TMO_MS);
    for (int i = 0; i < l->cnt; i++) {
      kpart_t *p = part_find(kc, l->elems[i].topic, l->elems[i].partition);
      if (p) continue;
      if (!(p = calloc(1, sizeof *p)) || !(p->ktopic = strdup(l->elems[i].topic))) {
        free(p);
        continue; /* without state its deliveries count 1 and are committed by a later partition list: harmless */
      }
      p->part = l->elems[i].partition;
      p->c0 = p->f0 = p->hi = -1;
      if (!ce && !c->elems[i].err) {
        p->c0 = c->elems[i].offset;
        nq_kafka__meta_parse(c->elems[i].metadata, c->elems[i].metadata_size, &p->f0, &p->n0);
      }
      p->next = kc->parts;
      kc->parts = p;
    }
    rd_kafka_topic_partition_list_destroy(c);
    if (coop) {
      rd_kafka_error_t *er = rd_kafka_incremental_assign(rk, l);
      if (er) {
        NQ_WARN("kafka", "group %s: assign: %s", kc->group, rd_kafka_error_string(er));
        rd_kafka_error_destroy(er);
      }
    } else {
      rd_kafka_assign(rk, l);
    }
    /* Not paused here even outside a fetch: a pause right behind the assign can overtake its fetch-start op
     * (librdkafka issue 2190) and the partition would never fetch. The next heartbeat of a long task pauses it;
     * until then its messages are buffered, not handed out. */
    return;
  }
  int lost = rd_kafka_assignment_lost(rk) || e != RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS;
  int busy = 0;
  for (int i = 0; i < l->cnt && !busy; i++) {
    kpart_t *p = part_find(kc, l->elems[i].topic, l->elems[i].partition);
    busy = p && part_pending(p);
  }
  if (lost || kc->closing || !busy || !coop) {
    if (lost && busy) NQ_WARN("kafka", "group %s: partitions lost with tasks in flight: they will run again", kc->group);
    kc_unassign(kc, l, lost);
    if (lost && kc->pending_revoke) {
      /* a loss takes the whole assignment, the deferred revocation included: unassigning it later would drop
       * partitions the group may give back to us meanwhile (owned by us for the coordinator, fetched by nobody) */
      for (int i = 0; i < kc->pending_revoke->cnt; i++) {
        kpart_t *p = part_find(kc, kc->pending_revoke->elems[i].topic, kc->pending_revoke->elems[i].partition);
        if (p) p->revoking = 0;
      }
      rd_kafka_topic_partition_list_destroy(kc->pending_revoke);
      kc->pending_revoke = NULL;
    }
    return;
  }
  /* tasks in flight: finish them first (heartbeats keep the membership; the coordinator waits) */
  if (kc->pending_revoke) {
    for (int i = 0; i < l->cnt; i++)
      rd_kafka_topic_partition_list_add(kc->pending_revoke, l->elems[i].topic, l->elems[i].partition);
  } else {
    kc->pending_revoke = rd_kafka_topic_partition_list_copy(l);
  }
  /* Hand out nothing more of these partitions: buffered messages are dropped (librdkafka's position is past them),
   * so a later delivery would open a gap below it that the commit point would skip -- lost for good. Paused, they
   * fetch nothing more; the commit stays at or below the first dropped offset and the next owner reads from it. */
  rd_kafka_topic_partition_list_t *pl = rd_kafka_topic_partition_list_new(l->cnt);
  for (int i = 0; i < l->cnt; i++) {
    buf_drop(kc, l->elems[i].topic, l->elems[i].partition);
    kpart_t *p = part_find(kc, l->elems[i].topic, l->elems[i].partition);
    if (!p) continue;
    p->revoking = 1;
    if (!p->paused) rd_kafka_topic_partition_list_add(pl, p->ktopic, p->part);
  }
  if (pl->cnt && !rd_kafka_pause_partitions(rk, pl))
    for (int i = 0; i < pl->cnt; i++) {
      kpart_t *p = part_find(kc, pl->elems[i].topic, pl->elems[i].partition);
      if (p && !pl->elems[i].err) p->paused = 1;
    }
  rd_kafka_topic_partition_list_destroy(pl);
}

static void kc_poll(kc_t *kc, int timeout_ms);

/* rd_kafka_consumer_close on a helper thread, waited for at most timeout_ms. 1 when it finished. */
typedef struct kclose {
  rd_kafka_t *rk;
  int done, refs; /* refs: the waiter and the thread; the last one frees */
  pthread_mutex_t mu;
  pthread_cond_t cv;
} kclose_t;

static void kclose_unref(kclose_t *c) {
  int last = --c->refs == 0;
  pthread_mutex_unlock(&c->mu);
  if (!last) return;
  pthread_mutex_destroy(&c->mu);
  pthread_cond_destroy(&c->cv);
  free(c);
}

static void *close_main(void *p) {
  kclose_t *c = p;
  rd_kafka_consumer_close(c->rk);
  pthread_mutex_lock(&c->mu);
  c->done = 1;
  pthread_cond_broadcast(&c->cv);
  kclose_unref(c);
  return NULL;
}

static int close_bounded(rd_kafka_t *rk, int timeout_ms) {
  kclose_t *c = calloc(1, sizeof *c);
  pthread_t th;
  pthread_attr_t at;
  if (!c) {
    rd_kafka_consumer_close(rk);
    return 1;
  }
  c->rk = rk, c->refs = 2;
  pthread_mutex_init(&c->mu, NULL);
  pthread_cond_init(&c->cv, NULL);
  pthread_attr_init(&at);
  pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
  if (pthread_create(&th, &at, close_main, c) != 0) {
    pthread_attr_destroy(&at);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
    free(c);
    rd_kafka_consumer_close(rk);
    return 1;
  }
  pthread_attr_destroy(&at);
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_sec += timeout_ms / 1000;
  ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
  if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
  pthread_mutex_lock(&c->mu);
  while (!c->done && pthread_cond_timedwait(&c->cv, &c->mu, &ts) == 0) {
  }
  int done = c->done;
  kclose_unref(c);
  return done;
}

static void kc_free(kc_t *kc) {
  /* librdkafka 2.0.2 aborts (rd_kafka_sticky_assignor_state_destroy: Assertion `assignor_state' failed) when a
   * cooperative-sticky consumer is destroyed after its JoinGroup but before its first SyncGroup answer (upstream issue
   * 4312, fixed by PR 4381 in 2.3): a worker stopped moments after it started. So serve the first rebalance before
   * closing (bounded), and if it still has not come, leave the group without rd_kafka_destroy (a leaked handle at
   * exit rather than an abort). */
  int64_t until = mono_ms() + 2 * (int64_t)kc->hold_ms + 3000;
  pthread_mutex_lock(&kc->mu);
  int wait = kc->ntopics > 0 && !kc->synced;
  pthread_mutex_unlock(&kc->mu);
  while (wait && mono_ms() < until) {
    kc_poll(kc, 100);
    pthread_mutex_lock(&kc->mu);
    wait = !kc->synced;
    pthread_mutex_unlock(&kc->mu);
  }
  pthread_mutex_lock(&kc->pmu);
  pthread_mutex_lock(&kc->mu);
  kc_commit_sync(kc, NULL, 1, 1); /* every partition, a deferred revocation's included */
  kc->closing = 1;
  if (kc->pending_revoke) {
    rd_kafka_topic_partition_list_t *l = kc->pending_revoke;
    kc->pending_revoke = NULL;
    kc_unassign(kc, l, 0);
    rd_kafka_topic_partition_list_destroy(l);
  }
  pthread_mutex_unlock(&kc->mu); /* close serves the last rebalance, whose callback takes mu */
  /* leaves the group: undone deliveries go to the next owner now */
  if (!close_bounded(kc->rk, kc->hold_ms + 5000)) {
    /* Seen with librdkafka 2.0.2 after a broker outage: the incremental unassign the close's own revocation needs
     * is never answered, and close waits forever. Everything done is committed above; the group hands the
     * partitions on after session.timeout.ms. The handle and kc stay allocated (the close thread still uses them):
     * a leak at shutdown instead of a worker that never exits. */
    NQ_WARN("kafka", "group %s consumer %s: close did not finish in %d ms: left to the session timeout", kc->group,
            kc->name, kc->hold_ms + 5000);
    pthread_mutex_unlock(&kc->pmu);
    return;
  }
  pthread_mutex_lock(&kc->mu);
  for (int i = 0; i < kc->nbuf; i++) rd_kafka_message_destroy(kc->buf[i]);
  free(kc->buf);
  if (wait) NQ_WARN("kafka", "group %s consumer %s: no assignment yet at close: handle left open", kc->group, kc->name);
  else rd_kafka_destroy(kc->rk);
  while (kc->parts) {
    kpart_t *p = kc->parts;
    kc->parts = p->next;
    part_free(p);
  }
  for (int i = 0; i < kc->ntopics; i++) free(kc->ltopics[i]);
  free(kc->ltopics);
  free(kc->ktopics);
  free(kc->group);
  free(kc->name);
  pthread_mutex_unlock(&kc->mu);
  pthread_mutex_unlock(&kc->pmu);
  pthread_mutex_destroy(&kc->mu);
  pthread_mutex_destroy(&kc->pmu);
  free(kc);
}

static kc_t *kc_find(kq_t *q, const char *group, const char *name) {
  pthread_mutex_lock(&q->mu);
  kc_t *kc = q->kcs;
  while (kc && (strcmp(kc->group, group) || strcmp(kc->name, name))) kc = kc->next;
  pthread_mutex_unlock(&q->mu);
  return kc;
}

/* (Re)subscribes kc to topics if its set differs. Caller holds kc->mu. */
static int kc_subscribe(kc_t *kc, const char *const *topics, int ntopics, nq_err_t *err) {
  char(*kt)[KQ_TOPIC_MAX] = calloc((size_t)ntopics, KQ_TOPIC_MAX);
  if (!kt) return oom(err, "subscribe");
  int rc = 0, same = ntopics == kc->ntopics;
  for (int i = 0; !rc && i < ntopics; i++) {
    rc = nq_kafka__topic_name(topics[i], kt[i], KQ_TOPIC_MAX, err);
    if (same && (strcmp(kt[i], kc->ktopics[i]) || strcmp(topics[i], kc->ltopics[i]))) same = 0;
  }
  if (rc || same) {
    free(kt);
    return rc;
  }
  char **lt = calloc((size_t)ntopics, sizeof *lt);
  rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(ntopics);
  for (int i = 0; lt && i < ntopics; i++) {
    if (!(lt[i] = strdup(topics[i]))) rc = oom(err, "subscribe");
    rd_kafka_topic_partition_list_add(l, kt[i], RD_KAFKA_PARTITION_UA);
  }
  if (!lt) rc = oom(err, "subscribe");
  if (!rc) {
    rd_kafka_resp_err_t e = rd_kafka_subscribe(kc->rk, l);
    if (e) rc = kerr(err, e, "subscribe group", kc->group);
  }
  rd_kafka_topic_partition_list_destroy(l);
  if (rc) {
    for (int i = 0; lt && i < ntopics; i++) free(lt[i]);
    free(lt);
    free(kt);
    return rc;
  }
  for (int i = 0; i < kc->ntopics; i++) free(kc->ltopics[i]);
  free(kc->ltopics);
  free(kc->ktopics);
  kc->ktopics = kt;
  kc->ltopics = lt;
  kc->ntopics = ntopics;
  return 0;
}

/* session.timeout.ms = max.poll.interval.ms = the lease, at least KQ_MIN_SESSION_MS: Kafka brokers refuse shorter
 * sessions (group.min.session.timeout.ms, 6 s by default), and the mock expels a member whose session is shorter
 * than its 3 s initial rebalance delay. */
static int session_ms(const kq_t *q) { return q->base.lease_ms > KQ_MIN_SESSION_MS ? q->base.lease_ms : KQ_MIN_SESSION_MS; }

static void *keeper_main(void *arg);

static kc_t *kc_get(kq_t *q, const char *group, const char *name, nq_err_t *err) {
  kc_t *kc = kc_find(q, group, name);
  if (kc) return kc;
  if (!(kc = calloc(1, sizeof *kc)) || !(kc->group = strdup(group)) || !(kc->name = strdup(name))) {
    if (kc) free(kc->group);
    free(kc);
    oom(err, "consumer");
    return NULL;
  }
  kc->q = q;
  kc->hold_ms = session_ms(q);
  pthread_mutex_init(&kc->mu, NULL);
  pthread_mutex_init(&kc->pmu, NULL);
  kc->rk = new_client(q, RD_KAFKA_CONSUMER, group, session_ms(q), kc, kc_rebalance, err);
  if (kc->rk) kc->coop = conf_coop(kc->rk);
  if (!kc->rk) {
    pthread_mutex_destroy(&kc->mu);
    pthread_mutex_destroy(&kc->pmu);
    free(kc->group);
    free(kc->name);
    free(kc);
    return NULL;
  }
  pthread_mutex_lock(&q->mu);
  kc_t *other = q->kcs;
  while (other && (strcmp(other->group, group) || strcmp(other->name, name))) other = other->next;
  if (other) { /* another thread of the same consumer name won the race */
    pthread_mutex_unlock(&q->mu);
    kc_free(kc);
    return other;
  }
  kc->last_poll = mono_ms();
  kc->next = q->kcs;
  q->kcs = kc;
  if (!q->keeper_on && pthread_create(&q->keeper, NULL, keeper_main, q) == 0) q->keeper_on = 1;
  pthread_mutex_unlock(&q->mu);
  return kc;
}

static void kc_buffer(kc_t *kc, rd_kafka_message_t *m);

/* Polls once (timeout_ms) and buffers a message; serves rebalances. Caller holds neither kc->mu nor kc->pmu. */
static void kc_poll_locked(kc_t *kc, int timeout_ms);
static void kc_poll(kc_t *kc, int timeout_ms) {
  pthread_mutex_lock(&kc->pmu);
  kc_poll_locked(kc, timeout_ms);
  pthread_mutex_unlock(&kc->pmu);
}

/* kc_poll with kc->pmu held by the caller. */
static void kc_poll_locked(kc_t *kc, int timeout_ms) {
  kc->last_poll = mono_ms();
  rd_kafka_message_t *m = rd_kafka_consumer_poll(kc->rk, timeout_ms);
  if (m && m->err) {
    if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF && m->err != RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART)
      NQ_WARN("kafka", "group %s consumer %s: %s", kc->group, kc->name, rd_kafka_message_errstr(m));
    rd_kafka_message_destroy(m);
    m = NULL;
  }
  if (m) {
    pthread_mutex_lock(&kc->mu);
    kc_buffer(kc, m);
    pthread_mutex_unlock(&kc->mu);
  }
}

/* Appends a polled message to kc->buf. Caller holds kc->pmu and kc->mu. */
static void kc_buffer(kc_t *kc, rd_kafka_message_t *m) {
  if (kc->nbuf == kc->capbuf) {
    int cap = kc->capbuf ? kc->capbuf * 2 : 16;
    rd_kafka_message_t **nb = realloc(kc->buf, (size_t)cap * sizeof *nb);
    if (!nb) { /* not handed out: seek back so it is fetched again */
      rd_kafka_seek(m->rkt, m->partition, m->offset, 0);
      rd_kafka_message_destroy(m);
      return;
    }
    kc->buf = nb;
    kc->capbuf = cap;
  }
  kc->buf[kc->nbuf++] = m;
}

/* Keeps every consumer of the handle in its group. A worker thread polls its consumer of one stage only while it
 * fetches from that stage or heartbeats a task of it; its consumers of the other stages, and an idle thread's, are
 * not polled meanwhile, and librdkafka expels a consumer that has not polled for max.poll.interval.ms (MAXPOLL:
 * leaving group). Each expulsion is a rebalance of the whole group, and every rebalance costs the group's members
 * their uncommitted work: measured on the chaos run (2,000 noop + 20 llm tasks, two stages per worker), the stage
 * groups' idle members were expelled every few seconds. So a consumer not polled for a third of its session and
 * holding no delivery in flight is polled here (timeout 0: rebalances served, a message buffered for its next fetch,
 * held commits retried). One with deliveries in flight is kept alive by their heartbeats (extend_lease) alone: when
 * those stop, the consumer must fall silent and lose its partitions to another member, as a lease runs out on the
 * other backends. A consumer whose poll lock is taken is being polled already. */
static void *keeper_main(void *arg) {
  kq_t *q = arg;
  for (unsigned round = 1; !q->keeper_stop; round++) {
    struct timespec ts = {0, 200 * 1000000L};
    nanosleep(&ts, NULL);
    for (;;) { /* one consumer at a time, marked: k_free unlinks and frees consumers meanwhile */
      pthread_mutex_lock(&q->mu);
      kc_t *kc = q->kcs;
      while (kc && kc->kept_round == round) kc = kc->next;
      if (kc) kc->kept_round = round, kc->keeping = 1;
      pthread_mutex_unlock(&q->mu);
      if (!kc || q->keeper_stop) {
        if (kc) {
          pthread_mutex_lock(&q->mu);
          kc->keeping = 0;
          pthread_cond_broadcast(&q->kcv);
          pthread_mutex_unlock(&q->mu);
        }
        break;
      }
      if (!pthread_mutex_trylock(&kc->pmu)) { /* taken: being polled already */
        pthread_mutex_lock(&kc->mu);
        int busy = 0;
        for (kpart_t *p = kc->parts; p && !busy; p = p->next) busy = part_pending(p);
        pthread_mutex_unlock(&kc->mu);
        if (!busy && !kc->closing && mono_ms() - kc->last_poll >= kc->hold_ms / 3) {
          kc_poll_locked(kc, 0);
          pthread_mutex_lock(&kc->mu);
          kc_commit(kc, NULL, 0);
          kc_revoke_maybe(kc);
          pthread_mutex_unlock(&kc->mu);
        }
        pthread_mutex_unlock(&kc->pmu);
      }
      pthread_mutex_lock(&q->mu);
      kc->keeping = 0;
      pthread_cond_broadcast(&q->kcv);
      pthread_mutex_unlock(&q->mu);
    }
  }
  return NULL;
}

/* Turns buffered messages into deliveries (FIFO). Caller holds kc->mu. */
static int kc_take(kc_t *kc, nq_delivery_t *d, int *n, int max_n, kpart_t **touched, int *ntouched, nq_err_t *err) {
  int used = 0, rc = 0;
  for (; used < kc->nbuf && *n < max_n && !rc; used++) {
    rd_kafka_message_t *m = kc->buf[used];
    const char *kt = rd_kafka_topic_name(m->rkt);
    kpart_t *p = part_find(kc, kt, m->partition);
    if (!p || p->revoking) { /* not ours any more (revoked meanwhile), or being revoked: see kc_rebalance */
      rd_kafka_message_destroy(m);
      continue;
    }
    const char *lt = kt;
    for (int i = 0; i < kc->ntopics; i++)
      if (!strcmp(kc->ktopics[i], kt)) lt = kc->ltopics[i];
    if (p->nfl == p->capfl) {
      int cap = p->capfl ? p->capfl * 2 : 16;
      kfl_t *nf = realloc(p->fl, (size_t)cap * sizeof *nf);
      if (!nf) {
        rc = oom(err, "fetch");
        break;
      }
      p->fl = nf;
      p->capfl = cap;
    }
    char id[KQ_TOPIC_MAX + 48];
    snprintf(id, sizeof id, "%s/%d/%lld", kt, (int)m->partition, (long long)m->offset);
    nq_delivery_t *x = &d[*n];
    x->id = strdup(id);
    x->topic = strdup(lt);
    x->body = memdup0(m->payload ? m->payload : "", m->payload ? m->len : 0);
    x->len = m->payload ? m->len : 0;
    x->delivery_count = nq_kafka__delivery_count(m->offset, p->c0, p->f0, p->n0);
    x->backend_tag = ((int64_t)m->partition << 40) | (m->offset & ((1ll << 40) - 1));
    if (!x->id || !x->topic || !x->body) {
      free(x->id), free(x->topic), free(x->body);
      memset(x, 0, sizeof *x);
      rc = oom(err, "fetch");
      break;
    }
    p->fl[p->nfl++] = (kfl_t){.off = m->offset, .count = x->delivery_count, .done = 0};
    if (m->offset + 1 > p->hi) p->hi = m->offset + 1;
    p->dirty = 1;
    int seen = 0;
    for (int i = 0; i < *ntouched; i++) seen |= touched[i] == p;
    if (!seen && *ntouched < 64) touched[(*ntouched)++] = p;
    (*n)++;
    rd_kafka_message_destroy(m);
  }
  memmove(kc->buf, kc->buf + used, (size_t)(kc->nbuf - used) * sizeof *kc->buf);
  kc->nbuf -= used;
  return rc;
}

/* ---------------------------------------------------------------- retry mover */

static void mover_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t e, rd_kafka_topic_partition_list_t *l, void *opaque);

static kmover_t *mover_get(kq_t *q, nq_err_t *err) {
  pthread_mutex_lock(&q->mu);
  kmover_t *m = q->mover;
  if (!m && (m = calloc(1, sizeof *m))) {
    pthread_mutex_init(&m->mu, NULL);
    for (int i = 0; i < 256; i++) m->next_read[i] = -1;
    /* the mover only needs to poll about as often as fetches run; a long silence costs duplicates, not losses */
    m->rk = new_client(q, RD_KAFKA_CONSUMER, KQ_G_RETRY, -(session_ms(q) > 10000 ? session_ms(q) : 10000), m,
                       mover_rebalance, err);
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, KQ_T_RETRY, RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t e = m->rk ? rd_kafka_subscribe(m->rk, l) : RD_KAFKA_RESP_ERR__FAIL;
    rd_kafka_topic_partition_list_destroy(l);
    if (e) {
      if (m->rk) {
        kerr(err, e, "subscribe", KQ_T_RETRY);
        rd_kafka_destroy(m->rk);
      }
      pthread_mutex_destroy(&m->mu);
      free(m);
      m = NULL;
    }
    q->mover = m;
  } else if (!m) {
    oom(err, "retry mover");
  }
  pthread_mutex_unlock(&q->mu);
  return m;
}

/* Commits nq.retry below the oldest retry of each partition not yet re-published. Caller holds m->mu. */
static void mover_commit(kmover_t *m, rd_kafka_topic_partition_list_t *only) {
  rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(4);
  for (int p = 0; p < 256; p++) {
    if (m->next_read[p] < 0) continue;
    if (only && !rd_kafka_topic_partition_list_find(only, KQ_T_RETRY, p)) continue;
    int64_t c = m->next_read[p];
    for (int i = 0; i < m->nr; i++)
      if (m->r[i].part == p && m->r[i].off < c) c = m->r[i].off;
    rd_kafka_topic_partition_list_add(l, KQ_T_RETRY, p)->offset = c;
  }
  if (l->cnt) {
    rd_kafka_resp_err_t e = rd_kafka_commit(m->rk, l, 0);
    if (e) NQ_WARN("kafka", "retry mover commit: %s (retries may be re-published twice)", rd_kafka_err2str(e));
  }
  rd_kafka_topic_partition_list_destroy(l);
}

static void mover_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t e, rd_kafka_topic_partition_list_t *l, void *opaque) {
  kmover_t *m = opaque;
  int coop = conf_coop(rk);
  if (e == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
    rd_kafka_error_t *er = coop ? rd_kafka_incremental_assign(rk, l) : NULL;
    if (!coop) rd_kafka_assign(rk, l);
    if (er) rd_kafka_error_destroy(er);
    return;
  }
  if (!rd_kafka_assignment_lost(rk) && !m->closing) mover_commit(m, l); /* closing: committed just before */
  /* retries of revoked partitions are re-read by their next owner from the commit */
  int j = 0;
  for (int i = 0; i < m->nr; i++) {
    if (rd_kafka_topic_partition_list_find(l, KQ_T_RETRY, m->r[i].part)) {
      free(m->r[i].ktopic);
      free(m->r[i].body);
    } else {
      m->r[j++] = m->r[i];
    }
  }
  m->nr = j;
  for (int i = 0; i < l->cnt; i++)
    if (l->elems[i].partition >= 0 && l->elems[i].partition < 256) m->next_read[l->elems[i].partition] = -1;
  rd_kafka_error_t *er = coop ? rd_kafka_incremental_unassign(rk, l) : NULL;
  if (!coop) rd_kafka_assign(rk, NULL);
  if (er) rd_kafka_error_destroy(er);
}

/* Reads new retries (non-blocking), re-publishes the due ones. *next_due = earliest pending due time (epoch ms) or -1.
 * Skipped (returns 0) while another thread is in it. */
static int mover_step(kq_t *q, int64_t *next_due) {
  *next_due = -1;
  kmover_t *m = q->mover;
  if (!m || pthread_mutex_trylock(&m->mu)) return 0;
  int moved = 0;
  for (int k = 0; k < 1000; k++) {
    rd_kafka_message_t *msg = rd_kafka_consumer_poll(m->rk, 0);
    if (!msg) break;
    if (msg->err) {
      if (msg->err != RD_KAFKA_RESP_ERR__PARTITION_EOF && msg->err != RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART)
        NQ_WARN("kafka", "retry mover: %s", rd_kafka_message_errstr(msg));
      rd_kafka_message_destroy(msg);
      continue;
    }
    char *lt = hdr_dup(msg, "nq-topic"), *due = hdr_dup(msg, "nq-due");
    char kt[KQ_TOPIC_MAX];
    nq_err_t e = {0};
    int ok = lt && due && nq_kafka__topic_name(lt, kt, sizeof kt, &e) == 0;
    if (msg->partition >= 0 && msg->partition < 256) m->next_read[msg->partition] = msg->offset + 1;
    if (!ok) {
      NQ_WARN("kafka", "retry at %s/%d/%lld has no valid nq-topic/nq-due header: dropped", KQ_T_RETRY,
              (int)msg->partition, (long long)msg->offset);
    } else {
      if (m->nr == m->capr) {
        int cap = m->capr ? m->capr * 2 : 16;
        kretry_t *nr = realloc(m->r, (size_t)cap * sizeof *nr);
        if (nr) m->r = nr, m->capr = cap;
      }
      char *ktd = strdup(kt), *body = memdup0(msg->payload ? msg->payload : "", msg->payload ? msg->len : 0);
      if (m->nr < m->capr && ktd && body) {
        m->r[m->nr++] = (kretry_t){.part = msg->partition, .off = msg->offset, .due = strtoll(due, NULL, 10),
                                   .ktopic = ktd, .body = body, .len = msg->payload ? msg->len : 0};
      } else { /* out of memory: read it again later */
        free(ktd);
        free(body);
        rd_kafka_seek(msg->rkt, msg->partition, msg->offset, 0);
        if (msg->partition >= 0 && msg->partition < 256) m->next_read[msg->partition] = msg->offset;
        free(lt);
        free(due);
        rd_kafka_message_destroy(msg);
        break;
      }
    }
    free(lt);
    free(due);
    rd_kafka_message_destroy(msg);
  }
  int64_t now = wall_ms();
  int j = 0, changed = 0;
  for (int i = 0; i < m->nr; i++) {
    kretry_t *r = &m->r[i];
    if (r->due <= now) {
      nq_err_t e = {0};
      if (produce_sync(q, r->ktopic, RD_KAFKA_PARTITION_UA, NULL, r->body, r->len, NULL, NULL, &e) == 0) {
        free(r->ktopic);
        free(r->body);
        moved++;
        changed = 1;
        continue;
      }
      NQ_WARN("kafka", "retry to %s: %s (tried again later)", r->ktopic, e.msg);
    }
    if (*next_due < 0 || r->due < *next_due) *next_due = r->due;
    m->r[j++] = *r;
  }
  m->nr = j;
  if (changed || moved) mover_commit(m, NULL);
  else {
    /* retries read but none due: commit anyway once in a while is not needed; the commit point is unchanged */
  }
  pthread_mutex_unlock(&m->mu);
  return moved;
}

/* ---------------------------------------------------------------- fetch / ack / nack / dead-letter / lease */

static int k_fetch(nq_queue_t *qq, const char *const *topics, int ntopics, const char *group, const char *consumer,
                   int max_n, int block_ms, nq_delivery_t **out, int *n_out, nq_err_t *err) {
  NEED_ERR;
  kq_t *q = (kq_t *)qq;
  if (!out || !n_out || !topics || ntopics <= 0 || ntopics > KQ_MAX_TOPICS || !group || !*group || !consumer ||
      !*consumer || max_n <= 0)
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "kafka queue fetch: bad arguments (ntopics %d, max_n %d)", ntopics,
                      max_n);
  *out = NULL;
  *n_out = 0;
  if (!mover_get(q, err)) return err->code;
  kc_t *kc = kc_get(q, group, consumer, err);
  if (!kc) return err->code;
  nq_delivery_t *d = calloc((size_t)max_n, sizeof *d);
  if (!d) return oom(err, "fetch");
  kpart_t *touched[64];
  int n = 0, nt = 0, rc = 0;
  int64_t t0 = mono_ms();
  pthread_mutex_lock(&kc->mu);
  rc = kc_subscribe(kc, topics, ntopics, err);
  kc->in_fetch++;
  kc_pause_all(kc, 0);
  pthread_mutex_unlock(&kc->mu);
  while (!rc) {
    int64_t due;
    mover_step(q, &due);
    int64_t left = block_ms - (mono_ms() - t0);
    int slice = left > KQ_SLICE_MS ? KQ_SLICE_MS : left > 0 ? (int)left : 0;
    if (due >= 0) {
      int64_t until = due - wall_ms();
      if (until < slice) slice = until > 0 ? (int)until : 0;
    }
    pthread_mutex_lock(&kc->mu);
    kc_revoke_maybe(kc);
    int empty = kc->nbuf == 0;
    pthread_mutex_unlock(&kc->mu);
    if (empty) kc_poll(kc, slice);
    pthread_mutex_lock(&kc->mu);
    while (kc->nbuf > 0 && n < max_n && !rc) {
      rc = kc_take(kc, d, &n, max_n, touched, &nt, err);
      /* fill the batch with what arrives right behind (a fetch response holds one message set per partition) */
      if (n < max_n && !rc) {
        pthread_mutex_unlock(&kc->mu);
        kc_poll(kc, KQ_LINGER_MS);
        pthread_mutex_lock(&kc->mu);
      }
    }
    pthread_mutex_unlock(&kc->mu);
    if (rc || n > 0 || mono_ms() - t0 >= block_ms) break;
  }
  pthread_mutex_lock(&kc->mu);
  /* Not paused here: in librdkafka 2.0 a resume does not wake the broker thread, so fetching restarts only at its
   * next periodic wakeup (~1 s) -- pausing after every fetch capped a consumer at one batch a second. A consumer
   * busy long enough to heartbeat is paused by extend_lease instead. Record the delivery (metadata F). */
  kc->in_fetch--;
  if (nt) kc_commit(kc, NULL, 0);
  pthread_mutex_unlock(&kc->mu);
  if (rc) {
    /* delivered ones stay in flight; the partition's next owner (or our close) redelivers them: nothing is lost */
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

/* Finds the consumer and partition that hold delivery d in group `group`; returns kc with kc->mu locked. */
static kc_t *locate(kq_t *q, const char *group, const nq_delivery_t *d, kpart_t **pp, int *idx) {
  char kt[KQ_TOPIC_MAX];
  if (!d || !d->topic || nq_kafka__topic_name(d->topic, kt, sizeof kt, NULL)) return NULL;
  int32_t part = (int32_t)(d->backend_tag >> 40);
  int64_t off = d->backend_tag & ((1ll << 40) - 1);
  pthread_mutex_lock(&q->mu);
  kc_t *list[256];
  int nl = 0;
  for (kc_t *kc = q->kcs; kc && nl < 256; kc = kc->next)
    if (!strcmp(kc->group, group)) list[nl++] = kc;
  pthread_mutex_unlock(&q->mu);
  for (int i = 0; i < nl; i++) {
    kc_t *kc = list[i];
    pthread_mutex_lock(&kc->mu);
    kpart_t *p = part_find(kc, kt, part);
    for (int j = 0; p && j < p->nfl; j++)
      if (p->fl[j].off == off && !p->fl[j].done) {
        *pp = p;
        *idx = j;
        return kc;
      }
    pthread_mutex_unlock(&kc->mu);
  }
  return NULL;
}

/* Marks the delivery done, commits, completes a deferred revocation. Unlocks kc->mu. */
static void finish(kc_t *kc, kpart_t *p, int idx) {
  p->fl[idx].done = 1;
  p->dirty = 1;
  kc_commit(kc, p, 0);
  kc_revoke_maybe(kc);
  pthread_mutex_unlock(&kc->mu);
}

static int check_del(const char *what, const char *group, const nq_delivery_t *d, nq_err_t *err) {
  if (!group || !*group || !d || !d->id || !d->topic)
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "kafka queue %s: NULL group or delivery", what);
  return 0;
}

/* ack of a delivery that is not in flight here (acked before, or its partition moved away: it is or was
 * redelivered elsewhere) is a no-op, like XACK of an unknown id. */
static int k_ack(nq_queue_t *qq, const char *group, const nq_delivery_t *d, nq_err_t *err) {
  NEED_ERR;
  int rc = check_del("ack", group, d, err);
  if (rc) return rc;
  kpart_t *p;
  int idx;
  kc_t *kc = locate((kq_t *)qq, group, d, &p, &idx);
  if (kc) finish(kc, p, idx);
  return 0;
}

static int k_nack(nq_queue_t *qq, const char *group, const nq_delivery_t *d, int retry_after_ms, const char *new_body,
                  nq_err_t *err) {
  NEED_ERR;
  kq_t *q = (kq_t *)qq;
  int rc = check_del("nack", group, d, err);
  if (rc) return rc;
  kpart_t *p;
  int idx;
  kc_t *kc = locate(q, group, d, &p, &idx);
  if (!kc) return 0; /* not in flight here: done already, or redelivered elsewhere */
  const char *body = new_body ? new_body : d->body ? d->body : "";
  size_t len = new_body ? strlen(new_body) : d->body ? d->len : 0;
  char kt[KQ_TOPIC_MAX];
  rc = nq_kafka__topic_name(d->topic, kt, sizeof kt, err);
  if (!rc && retry_after_ms <= 0) {
    rc = produce_sync(q, kt, RD_KAFKA_PARTITION_UA, NULL, body, len, NULL, NULL, err);
  } else if (!rc) {
    char due[32];
    snprintf(due, sizeof due, "%lld", (long long)(wall_ms() + retry_after_ms));
    rd_kafka_headers_t *h = rd_kafka_headers_new(3);
    rd_kafka_header_add(h, "nq-topic", -1, d->topic, -1);
    rd_kafka_header_add(h, "nq-due", -1, due, -1);
    rd_kafka_header_add(h, "nq-id", -1, d->id, -1);
    rc = produce_sync(q, KQ_T_RETRY, RD_KAFKA_PARTITION_UA, NULL, body, len, h, NULL, err);
  }
  if (rc) {
    pthread_mutex_unlock(&kc->mu);
    return nq_err_prefix(err, "nack %s", d->id);
  }
  finish(kc, p, idx);
  return 0;
}

static int k_dead_letter(nq_queue_t *qq, const char *group, const nq_delivery_t *d, const char *reason,
                         nq_err_t *err) {
  NEED_ERR;
  kq_t *q = (kq_t *)qq;
  int rc = check_del("dead_letter", group, d, err);
  if (rc) return rc;
  kpart_t *p;
  int idx;
  kc_t *kc = locate(q, group, d, &p, &idx);
  if (!kc) return 0; /* not in flight here: its next delivery decides again */
  rd_kafka_headers_t *h = rd_kafka_headers_new(5);
  rd_kafka_header_add(h, "nq-kind", -1, "entry", -1);
  rd_kafka_header_add(h, "nq-topic", -1, d->topic, -1);
  rd_kafka_header_add(h, "nq-reason", -1, reason ? reason : "", -1);
  rd_kafka_header_add(h, "nq-group", -1, group, -1);
  rd_kafka_header_add(h, "nq-id", -1, d->id, -1);
  rc = produce_sync(q, KQ_T_DLQ, 0, NULL, d->body ? d->body : "", d->body ? d->len : 0, h, NULL, err);
  if (rc) {
    pthread_mutex_unlock(&kc->mu);
    return nq_err_prefix(err, "dead-letter %s", d->id);
  }
  finish(kc, p, idx);
  return 0;
}

/* Keeps the consumer alive in its group (poll; the partition stays paused) and retries a failed commit. */
static int k_extend_lease(nq_queue_t *qq, const char *group, const char *consumer, const nq_delivery_t *d,
                          nq_err_t *err) {
  NEED_ERR;
  kq_t *q = (kq_t *)qq;
  int rc = check_del("extend_lease", group, d, err);
  if (rc) return rc;
  if (!consumer || !*consumer) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "kafka queue extend_lease: empty consumer");
  kpart_t *p;
  int idx;
  kc_t *kc = locate(q, group, d, &p, &idx);
  int found = kc != NULL;
  if (kc) pthread_mutex_unlock(&kc->mu);
  /* The consumer's own liveness first, whatever the delivery's state: a worker whose tasks are acked but who is still
   * finishing the batch (job marks, the job's manifest) polls nothing else, and librdkafka expels a consumer that
   * has not polled for max.poll.interval.ms (MAXPOLL: leaving group) -- its uncommitted work then runs again. */
  kc_t *own = kc_find(q, group, consumer);
  if (own) kc = own;
  if (!kc)
    return nq_err_set(err, NQ_ENOENT, 0, "kafka queue extend_lease: %s is not in flight in group %s", d->id, group);
  pthread_mutex_lock(&kc->mu);
  if (!kc->in_fetch) kc_pause_all(kc, 1); /* a long task: fetch nothing until the next fetch */
  pthread_mutex_unlock(&kc->mu);
  kc_poll(kc, 0); /* max.poll.interval.ms restarts; rebalances are served; messages of other partitions are buffered */
  pthread_mutex_lock(&kc->mu);
  kc_commit(kc, NULL, 0);
  kc_revoke_maybe(kc);
  pthread_mutex_unlock(&kc->mu);
  int64_t due;
  mover_step(q, &due);
  if (!found)
    return nq_err_set(err, NQ_ENOENT, 0, "kafka queue extend_lease: %s is not in flight in group %s", d->id, group);
  return 0;
}

/* ---------------------------------------------------------------- reader (folds, results) */

/* Reads ktopic/part from `start` until the high watermark (and, with block_ms > 0 and nothing accepted, until a
 * record is accepted or the time is up). cb returns 1 to accept a record, 0 to skip it, -1 to stop reading.
 * Caller holds q->rmu. */
static int read_part(kq_t *q, const char *ktopic, int32_t part, int64_t start, int block_ms,
                     int (*cb)(void *, const rd_kafka_message_t *), void *ud, nq_err_t *err) {
  if (!q->reader && !(q->reader = new_client(q, RD_KAFKA_CONSUMER, NULL, 0, NULL, NULL, err))) return err->code;
  int64_t lo, hi;
  int rc = watermarks(q, ktopic, part, &lo, &hi, err);
  if (rc) return rc;
  if (start < lo) start = lo;
  if (start >= hi && block_ms <= 0) return 0;
  rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
  rd_kafka_topic_partition_list_add(l, ktopic, part)->offset = start;
  rd_kafka_resp_err_t e = rd_kafka_assign(q->reader, l);
  rd_kafka_topic_partition_list_destroy(l);
  if (e) return kerr(err, e, "assign", ktopic);
  int64_t t0 = mono_ms(), pos = start;
  int accepted = 0;
  for (;;) {
    if (pos >= hi && (block_ms <= 0 || accepted || mono_ms() - t0 >= block_ms)) break;
    if (pos < hi && mono_ms() - t0 > KQ_TMO_MS + (block_ms > 0 ? block_ms : 0)) {
      rc = nq_err_set(err, NQ_ETIMEOUT, NQ_ERR_RETRIABLE, "kafka read %s/%d: stuck at offset %lld of %lld", ktopic,
                      (int)part, (long long)pos, (long long)hi);
      break;
    }
    rd_kafka_message_t *m = rd_kafka_consumer_poll(q->reader, 50);
    if (!m) continue;
    if (m->err) {
      if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF) {
        if (m->err == RD_KAFKA_RESP_ERR_OFFSET_OUT_OF_RANGE) pos = hi; /* truncated under us */
        else NQ_WARN("kafka", "read %s/%d: %s", ktopic, (int)part, rd_kafka_message_errstr(m));
      }
      rd_kafka_message_destroy(m);
      continue;
    }
    pos = m->offset + 1;
    if (pos > hi) hi = pos;
    int r = cb(ud, m);
    rd_kafka_message_destroy(m);
    if (r > 0) accepted++;
    if (r < 0) break;
  }
  rd_kafka_assign(q->reader, NULL);
  return rc;
}

/* ---------------------------------------------------------------- results */

typedef struct rres {
  const char *job;
  int max_n, n;
  nq_result_entry_t *e;
  int oom;
} rres_t;

static int res_cb(void *ud, const rd_kafka_message_t *m) {
  rres_t *r = ud;
  if (!m->key || m->key_len != strlen(r->job) || memcmp(m->key, r->job, m->key_len)) return 0;
  char id[32];
  snprintf(id, sizeof id, "%lld", (long long)m->offset);
  nq_result_entry_t *x = &r->e[r->n];
  x->id = strdup(id);
  x->body = memdup0(m->payload ? m->payload : "", m->payload ? m->len : 0);
  if (!x->id || !x->body) {
    free(x->id), free(x->body);
    x->id = x->body = NULL;
    r->oom = 1;
    return -1;
  }
  r->n++;
  return r->n >= r->max_n ? -1 : 1;
}

static int job_part(kq_t *q, const char *ktopic, const char *job, int32_t *part, nq_err_t *err) {
  int32_t np, *cache = !strcmp(ktopic, KQ_T_RESULTS) ? &q->np_results : !strcmp(ktopic, KQ_T_JOBS) ? &q->np_jobs : NULL;
  pthread_mutex_lock(&q->cmu);
  np = cache ? *cache : 0;
  pthread_mutex_unlock(&q->cmu);
  if (np > 0) {
    *part = nq_kafka__key_partition(job, np);
    return 0;
  }
  int rc = partition_count(q, ktopic, &np, err);
  if (rc) return rc;
  if (np <= 0) {
    /* auto-creation may take a moment */
    struct timespec ts = {0, 200 * 1000000L};
    nanosleep(&ts, NULL);
    if ((rc = partition_count(q, ktopic, &np, err))) return rc;
    if (np <= 0) return nq_err_set(err, NQ_EQUEUE, NQ_ERR_RETRIABLE, "kafka: topic %s does not exist", ktopic);
  }
  if (cache) {
    pthread_mutex_lock(&q->cmu);
    *cache = np;
    pthread_mutex_unlock(&q->cmu);
  }
  *part = nq_kafka__key_partition(job, np);
  return 0;
}

static int k_publish_result(nq_queue_t *qq, const char *job, const char *body, nq_err_t *err) {
  NEED_ERR;
  kq_t *q = (kq_t *)qq;
  if (!job || !*job || !body) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "kafka queue publish_result: bad arguments");
  int32_t part;
  int rc = job_part(q, KQ_T_RESULTS, job, &part, err);
  if (!rc) rc = produce_sync(q, KQ_T_RESULTS, part, job, body, strlen(body), NULL, NULL, err);
  return rc ? nq_err_prefix(err, "publish result of job %s", job) : 0;
}

static int k_read_results(nq_queue_t *qq, const char *job, const char *after, int max_n, int block_ms,
                          nq_result_entry_t **out, int *n_out, nq_err_t *err) {
  NEED_ERR;
  kq_t *q = (kq_t *)qq;
  if (!job || !*job || !out || !n_out || max_n <= 0)
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "kafka queue read_results: bad arguments");
  *out = NULL;
  *n_out = 0;
  int64_t start = 0;
  if (after && *after) {
    char *end;
    errno = 0;
    long long a = strtoll(after, &end, 10);
    if (errno || *end || a < 0)
      return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "kafka queue read_results: bad cursor '%.40s'", after);
    start = a + 1;
  }
  int32_t part;
  int rc = job_part(q, KQ_T_RESULTS, job, &part, err);
  if (rc) return rc;
  rres_t r = {.job = job, .max_n = max_n, .e = calloc((size_t)max_n, sizeof(nq_result_entry_t))};
  if (!r.e) return oom(err, "read_results");
  pthread_mutex_lock(&q->rmu);
  rc = read_part(q, KQ_T_RESULTS, part, start, block_ms, res_cb, &r, err);
  pthread_mutex_unlock(&q->rmu);
  if (!rc && r.oom) rc = oom(err, "read_results");
  if (rc) {
    nq_result_entries_free(r.e, r.n);
    return rc;
  }
  if (r.n == 0) {
    free(r.e);
    r.e = NULL;
  }
  *out = r.e;
  *n_out = r.n;
  return 0;
}

/* ---------------------------------------------------------------- job state (fold of nq.jobs) */

static size_t str_hash(const char *s) {
  size_t h = 1469598103934665603ull;
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
  return h;
}

/* The task's slot (existing or empty). NULL only when the table cannot grow. */
static ktask_t *task_slot(kjob_t *j, const char *task) {
  if ((j->nt + 1) * 2 > j->capt) {
    size_t cap = j->capt ? j->capt * 2 : 64;
    ktask_t *nt = calloc(cap, sizeof *nt);
    if (!nt) return NULL;
    for (size_t i = 0; i < j->capt; i++) {
      if (!j->t[i].task) continue;
      size_t k = str_hash(j->t[i].task) & (cap - 1);
      while (nt[k].task) k = (k + 1) & (cap - 1);
      nt[k] = j->t[i];
    }
    free(j->t);
    j->t = nt;
    j->capt = cap;
  }
  size_t k = str_hash(task) & (j->capt - 1);
  while (j->t[k].task && strcmp(j->t[k].task, task)) k = (k + 1) & (j->capt - 1);
  return &j->t[k];
}

static long long *counter(kjob_t *j, char st) {
  return st == 'o' ? &j->ok : st == 'f' ? &j->failed : &j->dead;
}

static kjob_t *job_find(kjpart_t *jp, const char *job, int create) {
  for (kjob_t *j = jp->jobs; j; j = j->next)
    if (!strcmp(j->job, job)) return j;
  if (!create) return NULL;
  kjob_t *j = calloc(1, sizeof *j);
  if (!j || !(j->job = strdup(job))) {
    free(j);
    return NULL;
  }
  j->total = -1;
  j->next = jp->jobs;
  jp->jobs = j;
  return j;
}

typedef struct jfold {
  kjpart_t *jp;
  int64_t stop_at;  /* stop after the record at this offset (-1: read to the high watermark) */
  /* records to report (a batch of marks): offsets, and per offset whether it changed its task's status and the
   * job's counts right after it; borrowed arrays of ntgt entries */
  const int64_t *tgt;
  int *tgt_changed;
  nq_job_counts_t *tgt_after;
  int ntgt;
  int oom;
} jfold_t;

static int jobs_cb(void *ud, const rd_kafka_message_t *m) {
  jfold_t *f = ud;
  f->jp->nextoff = m->offset + 1;
  char job[512];
  if (!m->key || m->key_len == 0 || m->key_len >= sizeof job) return 0;
  memcpy(job, m->key, m->key_len);
  job[m->key_len] = 0;
  json_error_t je;
  json_t *r = m->payload ? json_loadb(m->payload, m->len, 0, &je) : NULL;
  const char *k = json_string_value(json_object_get(r, "k"));
  kjob_t *j = k ? job_find(f->jp, job, 1) : NULL;
  int changed = 0;
  if (k && !j) f->oom = 1;
  if (j && !strcmp(k, "meta")) {
    const char *meta = json_string_value(json_object_get(r, "meta"));
    char *dup = meta ? strdup(meta) : NULL;
    if (dup) free(j->meta), j->meta = dup;
  } else if (j && !strcmp(k, "total")) {
    json_t *n = json_object_get(r, "n");
    if (json_is_integer(n)) j->total = json_integer_value(n);
  } else if (j && !strcmp(k, "mark")) {
    const char *task = json_string_value(json_object_get(r, "task")), *s = json_string_value(json_object_get(r, "s"));
    char st = s && !strcmp(s, "ok") ? 'o' : s && !strcmp(s, "failed") ? 'f' : s && !strcmp(s, "dead") ? 'd' : 0;
    ktask_t *slot = task && st ? task_slot(j, task) : NULL;
    if (task && st && !slot) f->oom = 1;
    if (slot && !slot->task) {
      if ((slot->task = strdup(task))) {
        slot->st = st;
        j->nt++;
        (*counter(j, st))++;
        changed = 1;
      } else {
        f->oom = 1;
      }
    } else if (slot && slot->st != st) {
      (*counter(j, slot->st))--;
      (*counter(j, st))++;
      slot->st = st;
      changed = 1;
    }
  }
  json_decref(r);
  for (int t = 0; t < f->ntgt; t++)
    if (f->tgt[t] == m->offset) {
      f->tgt_changed[t] = changed;
      if (j) f->tgt_after[t] = (nq_job_counts_t){.total = j->total, .ok = j->ok, .failed = j->failed, .dead = j->dead};
    }
  return m->offset == f->stop_at ? -1 : 1;
}

static kjpart_t *jpart_get(kq_t *q, int32_t part) {
  for (kjpart_t *jp = q->jparts; jp; jp = jp->next)
    if (jp->part == part) return jp;
  kjpart_t *jp = calloc(1, sizeof *jp);
  if (!jp) return NULL;
  jp->part = part;
  jp->next = q->jparts;
  q->jparts = jp;
  return jp;
}

/* Folds nq.jobs partition `part` up to the high watermark (or through f->stop_at). Caller holds q->jmu. */
static int jobs_fold_part(kq_t *q, int32_t part, kjpart_t **jpp, jfold_t *f, nq_err_t *err) {
  kjpart_t *jp = jpart_get(q, part);
  if (!jp) return oom(err, "job fold");
  f->jp = jp;
  int rc = 0;
  if (f->stop_at < 0 || jp->nextoff <= f->stop_at) {
    pthread_mutex_lock(&q->rmu);
    rc = read_part(q, KQ_T_JOBS, part, jp->nextoff, 0, jobs_cb, f, err);
    pthread_mutex_unlock(&q->rmu);
  }
  if (!rc && f->oom) rc = oom(err, "job fold");
  *jpp = jp;
  return rc;
}

/* Folds the job's partition up to the high watermark. Caller holds q->jmu. */
static int jobs_fold(kq_t *q, const char *job, kjpart_t **jpp, nq_err_t *err) {
  int32_t part;
  int rc = job_part(q, KQ_T_JOBS, job, &part, err);
  if (rc) return rc;
  jfold_t f = {.stop_at = -1};
  return jobs_fold_part(q, part, jpp, &f, err);
}

static int jobs_append(kq_t *q, const char *job, json_t *rec, int64_t *off, nq_err_t *err) {
  char *s = rec ? json_dumps(rec, JSON_COMPACT) : NULL;
  json_decref(rec);
  if (!s) return oom(err, "job record");
  int32_t part;
  int rc = job_part(q, KQ_T_JOBS, job, &part, err);
  if (!rc) rc = produce_sync(q, KQ_T_JOBS, part, job, s, strlen(s), NULL, off, err);
  free(s);
  return rc ? nq_err_prefix(err, "job %s", job) : 0;
}

static int check_job(const char *job, const char *what, nq_err_t *err) {
  if (!job || !*job || strlen(job) >= 500)
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "kafka queue %s: empty or overlong job id", what);
  return 0;
}

static int k_job_put(nq_queue_t *qq, const char *job, const char *meta_json, nq_err_t *err) {
  NEED_ERR;
  int rc = check_job(job, "job_put", err);
  if (rc) return rc;
  if (!meta_json) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "kafka queue job_put: NULL meta");
  return jobs_append((kq_t *)qq, job, json_pack("{s:s,s:s}", "k", "meta", "meta", meta_json), NULL, err);
}

static int k_job_set_total(nq_queue_t *qq, const char *job, long long total, nq_err_t *err) {
  NEED_ERR;
  int rc = check_job(job, "job_set_total", err);
  if (rc) return rc;
  return jobs_append((kq_t *)qq, job, json_pack("{s:s,s:I}", "k", "total", "n", (json_int_t)total), NULL, err);
}

static int k_job_get(nq_queue_t *qq, const char *job, char **meta_json, nq_err_t *err) {
  NEED_ERR;
  kq_t *q = (kq_t *)qq;
  int rc = check_job(job, "job_get", err);
  if (rc) return rc;
  if (!meta_json) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "kafka queue job_get: NULL output");
  *meta_json = NULL;
  pthread_mutex_lock(&q->jmu);
  kjpart_t *jp;
  rc = jobs_fold(q, job, &jp, err);
  kjob_t *j = rc ? NULL : job_find(jp, job, 0);
  if (j && j->meta && !(*meta_json = strdup(j->meta))) rc = oom(err, "job_get");
  pthread_mutex_unlock(&q->jmu);
  return rc;
}

static int k_job_counts(nq_queue_t *qq, const char *job, nq_job_counts_t *c, nq_err_t *err) {
  NEED_ERR;
  kq_t *q = (kq_t *)qq;
  int rc = check_job(job, "job_counts", err);
  if (rc) return rc;
  if (!c) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "kafka queue job_counts: NULL output");
  *c = (nq_job_counts_t){.total = -1};
  pthread_mutex_lock(&q->jmu);
  kjpart_t *jp;
  rc = jobs_fold(q, job, &jp, err);
  kjob_t *j = rc ? NULL : job_find(jp, job, 0);
  if (j) *c = (nq_job_counts_t){.total = j->total, .ok = j->ok, .failed = j->failed, .dead = j->dead};
  pthread_mutex_unlock(&q->jmu);
  return rc;
}

static int k_tasks_ok(nq_queue_t *qq, const char *job, const char *const *tasks, int n, unsigned char *ok,
                      nq_err_t *err) {
  NEED_ERR;
  kq_t *q = (kq_t *)qq;
  int rc = check_job(job, "tasks_ok", err);
  if (rc) return rc;
  if (!ok || n < 0 || (n && !tasks)) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "kafka queue tasks_ok: bad arguments");
  memset(ok, 0, (size_t)n);
  pthread_mutex_lock(&q->jmu);
  kjpart_t *jp;
  rc = jobs_fold(q, job, &jp, err);
  kjob_t *j = rc ? NULL : job_find(jp, job, 0);
  for (int i = 0; j && j->capt && i < n; i++) {
    if (!tasks[i]) continue;
    size_t k = str_hash(tasks[i]) & (j->capt - 1);
    while (j->t[k].task && strcmp(j->t[k].task, tasks[i])) k = (k + 1) & (j->capt - 1);
    ok[i] = j->t[k].task && j->t[k].st == 'o';
  }
  pthread_mutex_unlock(&q->jmu);
  return rc;
}

static int check_mark(const char *job, const char *task, const char *status, nq_err_t *err) {
  int rc = check_job(job, "job_mark", err);
  if (rc) return rc;
  if (!task || !*task) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "kafka queue job_mark: empty task");
  if (!status || (strcmp(status, "ok") && strcmp(status, "failed") && strcmp(status, "dead")))
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "kafka queue job_mark: status '%s' of task %s is not ok|failed|dead",
                      status ? status : "(null)", task);
  return 0;
}

/* Appends the marks of items[0..n) (all records produced, then their delivery reports awaited: one round trip),
 * then folds each touched nq.jobs partition once, through its last mark, reporting every mark on the way.
 * One batch at a time per process (q->jmu): each record's offset is beyond everything this process has folded, so
 * the fold sees, at each mark, the state every other process will see at that point of the log. */
static int marks_batch(kq_t *q, const nq_completion_t *items, int n, nq_job_counts_t *after, int *changed,
                       nq_err_t *err) {
  if (n <= 0) return 0;
  kdr_t *w = calloc((size_t)n, sizeof *w);
  int32_t *part = calloc((size_t)n, sizeof *part);
  int64_t *tgt = calloc((size_t)n, sizeof *tgt);
  int *tch = calloc((size_t)n, sizeof *tch), *done = calloc((size_t)n, sizeof *done);
  nq_job_counts_t *taft = calloc((size_t)n, sizeof *taft);
  int rc = 0, sent = 0;
  if (!w || !part || !tgt || !tch || !done || !taft) rc = oom(err, "job marks");
  pthread_mutex_lock(&q->jmu);
  for (; !rc && sent < n; sent++) {
    const nq_completion_t *it = &items[sent];
    json_t *rec = json_pack("{s:s,s:s,s:s}", "k", "mark", "task", it->task, "s", it->status);
    char *js = rec ? json_dumps(rec, JSON_COMPACT) : NULL;
    json_decref(rec);
    if (!js) rc = oom(err, "job record");
    if (!rc) rc = job_part(q, KQ_T_JOBS, it->job, &part[sent], err);
    if (!rc) rc = produce1(q, KQ_T_JOBS, part[sent], it->job, js, strlen(js), NULL, &w[sent], err);
    free(js);
    if (rc) break;
  }
  rc = wait_all(q, w, sent, KQ_T_JOBS, rc, err);
  /* one fold per partition, through its last mark */
  for (int i = 0; !rc && i < n; i++) {
    if (done[i]) continue;
    int nt = 0;
    int64_t last = -1;
    for (int k = i; k < n; k++)
      if (!done[k] && part[k] == part[i]) {
        tgt[nt] = w[k].off, tch[nt] = 0, taft[nt] = (nq_job_counts_t){.total = -1};
        if (w[k].off > last) last = w[k].off;
        nt++;
      }
    jfold_t f = {.stop_at = last, .tgt = tgt, .tgt_changed = tch, .tgt_after = taft, .ntgt = nt};
    kjpart_t *jp;
    rc = jobs_fold_part(q, part[i], &jp, &f, err);
    if (!rc && jp->nextoff <= last)
      rc = nq_err_set(err, NQ_EQUEUE, NQ_ERR_RETRIABLE, "kafka job %s: mark at offset %lld not readable", items[i].job,
                      (long long)last);
    for (int k = i, t = 0; !rc && k < n; k++)
      if (!done[k] && part[k] == part[i]) {
        if (after) after[k] = taft[t];
        if (changed) changed[k] = tch[t];
        done[k] = 1, t++;
      }
  }
  pthread_mutex_unlock(&q->jmu);
  free(w), free(part), free(tgt), free(tch), free(done), free(taft);
  return rc;
}

static int k_job_mark(nq_queue_t *qq, const char *job, const char *task, const char *status, nq_job_counts_t *after,
                      int *changed, nq_err_t *err) {
  NEED_ERR;
  int rc = check_mark(job, task, status, err);
  if (rc) return rc;
  nq_completion_t it = {.job = job, .task = task, .status = status};
  return marks_batch((kq_t *)qq, &it, 1, after, changed, err);
}

/* publish_result + job_mark + ack of every item, with one produce round trip for the results, one for the marks and
 * one fold per touched nq.jobs partition (the per-item wrapper paid ~3 round trips per task: ~10 tasks/s). Not atomic
 * (Kafka transactions are not used): a crash between the steps leaves results/marks without the ack, the tasks are
 * redelivered and their results published again (at-least-once; the marks count each task once). */
static int k_complete_batch(nq_queue_t *qq, const char *group, const nq_completion_t *items, int n,
                            nq_job_counts_t *counts, int *changed, nq_err_t *err) {
  NEED_ERR;
  kq_t *q = (kq_t *)qq;
  if (n <= 0 || !items) return 0;
  for (int i = 0; i < n; i++) {
    const nq_completion_t *it = &items[i];
    if (!it->job || !it->task || !it->status || !it->result)
      return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "queue complete_batch: item %d of %d has a NULL field", i, n);
    int rc = check_mark(it->job, it->task, it->status, err);
    if (!rc && it->d) rc = check_del("complete_batch", group, it->d, err);
    if (rc) return nq_err_prefix(err, "complete_batch item %d of %d", i, n);
  }
  kdr_t *w = calloc((size_t)n, sizeof *w);
  if (!w) return oom(err, "complete_batch");
  int rc = 0, sent = 0;
  for (; !rc && sent < n; sent++) {
    int32_t part;
    rc = job_part(q, KQ_T_RESULTS, items[sent].job, &part, err);
    if (!rc)
      rc = produce1(q, KQ_T_RESULTS, part, items[sent].job, items[sent].result, strlen(items[sent].result), NULL,
                    &w[sent], err);
    if (rc) break;
  }
  rc = wait_all(q, w, sent, KQ_T_RESULTS, rc, err);
  free(w);
  if (rc) return nq_err_prefix(err, "complete_batch: publish results");
  if ((rc = marks_batch(q, items, n, counts, changed, err))) return nq_err_prefix(err, "complete_batch: job marks");
  for (int i = 0; i < n; i++) {
    if (!items[i].d) continue;
    kpart_t *p;
    int idx;
    kc_t *kc = locate(q, group, items[i].d, &p, &idx);
    if (kc) finish(kc, p, idx);
  }
  return 0;
}

/* ---------------------------------------------------------------- DLQ (fold of nq.dlq partition 0) */

static int dlq_cb(void *ud, const rd_kafka_message_t *m) {
  kq_t *q = ud;
  q->dlq_next = m->offset + 1;
  size_t kl;
  const char *kind = hdr(m, "nq-kind", &kl);
  if (!kind) return 0;
  if (kl == 5 && !memcmp(kind, "entry", 5)) {
    if (q->ndlq == q->capdlq) {
      int cap = q->capdlq ? q->capdlq * 2 : 16;
      kdlq_t *nd = realloc(q->dlq, (size_t)cap * sizeof *nd);
      if (!nd) return -1;
      q->dlq = nd;
      q->capdlq = cap;
    }
    kdlq_t *x = &q->dlq[q->ndlq];
    x->off = m->offset;
    x->topic = hdr_dup(m, "nq-topic");
    x->reason = hdr_dup(m, "nq-reason");
    x->body = memdup0(m->payload ? m->payload : "", m->payload ? m->len : 0);
    x->len = m->payload ? m->len : 0;
    x->live = 1;
    if (!x->topic || !x->reason || !x->body) {
      free(x->topic), free(x->reason), free(x->body);
      return -1;
    }
    q->ndlq++;
  } else if (kl == 6 && !memcmp(kind, "remove", 6)) {
    char *ref = hdr_dup(m, "nq-ref");
    long long r = ref ? strtoll(ref, NULL, 10) : -1;
    free(ref);
    for (int i = 0; i < q->ndlq; i++)
      if (q->dlq[i].off == r) q->dlq[i].live = 0;
  } else if (kl == 5 && !memcmp(kind, "purge", 5)) {
    for (int i = 0; i < q->ndlq; i++) q->dlq[i].live = 0;
  }
  /* compact: drop dead entries from the front */
  int k = 0;
  while (k < q->ndlq && !q->dlq[k].live) {
    free(q->dlq[k].topic), free(q->dlq[k].reason), free(q->dlq[k].body);
    k++;
  }
  if (k) {
    memmove(q->dlq, q->dlq + k, (size_t)(q->ndlq - k) * sizeof *q->dlq);
    q->ndlq -= k;
  }
  return 1;
}

/* Caller holds q->xmu. */
static int dlq_fold(kq_t *q, nq_err_t *err) {
  pthread_mutex_lock(&q->rmu);
  int rc = read_part(q, KQ_T_DLQ, 0, q->dlq_next, 0, dlq_cb, q, err);
  pthread_mutex_unlock(&q->rmu);
  return rc;
}

static int dlq_live(kq_t *q) {
  int n = 0;
  for (int i = 0; i < q->ndlq; i++) n += q->dlq[i].live;
  return n;
}

static int dlq_marker(kq_t *q, const char *kind, int64_t ref, nq_err_t *err) {
  rd_kafka_headers_t *h = rd_kafka_headers_new(2);
  char b[32];
  snprintf(b, sizeof b, "%lld", (long long)ref);
  rd_kafka_header_add(h, "nq-kind", -1, kind, -1);
  rd_kafka_header_add(h, "nq-ref", -1, b, -1);
  return produce_sync(q, KQ_T_DLQ, 0, NULL, "", 0, h, NULL, err);
}

static int k_dlq_list(nq_queue_t *qq, int max_n, nq_dlq_entry_t **out, int *n_out, nq_err_t *err) {
  NEED_ERR;
  kq_t *q = (kq_t *)qq;
  if (!out || !n_out || max_n <= 0) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "kafka queue dlq_list: bad arguments");
  *out = NULL;
  *n_out = 0;
  pthread_mutex_lock(&q->xmu);
  int rc = dlq_fold(q, err), n = 0;
  nq_dlq_entry_t *e = NULL;
  int live = rc ? 0 : dlq_live(q);
  if (live > max_n) live = max_n;
  if (live && !(e = calloc((size_t)live, sizeof *e))) rc = oom(err, "dlq_list");
  for (int i = 0; !rc && i < q->ndlq && n < live; i++) {
    if (!q->dlq[i].live) continue;
    char id[32];
    snprintf(id, sizeof id, "%lld", (long long)q->dlq[i].off);
    e[n].id = strdup(id);
    e[n].topic = strdup(q->dlq[i].topic);
    e[n].reason = strdup(q->dlq[i].reason);
    e[n].body = memdup0(q->dlq[i].body, q->dlq[i].len);
    n++;
    if (!e[n - 1].id || !e[n - 1].topic || !e[n - 1].reason || !e[n - 1].body) rc = oom(err, "dlq_list");
  }
  pthread_mutex_unlock(&q->xmu);
  if (rc) {
    nq_dlq_entries_free(e, n);
    return rc;
  }
  *out = n ? e : NULL;
  if (!n) free(e);
  *n_out = n;
  return 0;
}

static int k_dlq_requeue(nq_queue_t *qq, const char *id, int *n, nq_err_t *err) {
  NEED_ERR;
  kq_t *q = (kq_t *)qq;
  int total = 0;
  long long want = -1;
  if (id) {
    char *end;
    errno = 0;
    want = strtoll(id, &end, 10);
    if (errno || *end || want < 0) {
      if (n) *n = 0;
      return nq_err_set(err, NQ_ENOENT, 0, "kafka queue dlq_requeue: no DLQ entry '%.40s'", id);
    }
  }
  pthread_mutex_lock(&q->xmu);
  int rc = dlq_fold(q, err);
  for (int i = 0; !rc && i < q->ndlq; i++) {
    kdlq_t *x = &q->dlq[i];
    if (!x->live || (id && x->off != want)) continue;
    char kt[KQ_TOPIC_MAX];
    /* re-publish first, then the remove marker: a crash in between leaves a duplicate, never a loss */
    rc = nq_kafka__topic_name(x->topic, kt, sizeof kt, err);
    if (!rc) rc = produce_sync(q, kt, RD_KAFKA_PARTITION_UA, NULL, x->body, x->len, NULL, NULL, err);
    if (!rc) rc = dlq_marker(q, "remove", x->off, err);
    if (!rc) {
      x->live = 0;
      total++;
    }
  }
  pthread_mutex_unlock(&q->xmu);
  if (n) *n = total;
  if (!rc && id && total == 0) return nq_err_set(err, NQ_ENOENT, 0, "kafka queue dlq_requeue: no DLQ entry '%s'", id);
  return rc;
}

static int k_dlq_purge(nq_queue_t *qq, int *n, nq_err_t *err) {
  NEED_ERR;
  kq_t *q = (kq_t *)qq;
  pthread_mutex_lock(&q->xmu);
  int rc = dlq_fold(q, err), live = rc ? 0 : dlq_live(q);
  if (!rc) rc = dlq_marker(q, "purge", -1, err);
  if (!rc)
    for (int i = 0; i < q->ndlq; i++) q->dlq[i].live = 0;
  pthread_mutex_unlock(&q->xmu);
  if (n) *n = rc ? 0 : live;
  return rc;
}

/* ---------------------------------------------------------------- stats */

static rd_kafka_t *probe_get(kq_t *q, const char *group, nq_err_t *err) {
  pthread_mutex_lock(&q->mu);
  kprobe_t *p = q->probes;
  while (p && strcmp(p->group, group)) p = p->next;
  if (!p && (p = calloc(1, sizeof *p))) {
    p->group = strdup(group);
    p->rk = p->group ? new_client(q, RD_KAFKA_CONSUMER, group, 0, NULL, NULL, err) : NULL;
    if (!p->rk) {
      free(p->group);
      free(p);
      p = NULL;
    } else {
      p->next = q->probes;
      q->probes = p;
    }
  }
  pthread_mutex_unlock(&q->mu);
  return p ? p->rk : NULL;
}

/* For every partition of ktopic: lo, hi and the group's committed offset c (lo when none) and metadata F. */
typedef struct pstat {
  int64_t lo, hi, c, f;
} pstat_t;

static int topic_stats(kq_t *q, const char *ktopic, const char *group, pstat_t **out, int32_t *np, nq_err_t *err) {
  *out = NULL;
  int rc = partition_count(q, ktopic, np, err);
  if (rc || *np <= 0) return rc;
  pstat_t *s = calloc((size_t)*np, sizeof *s);
  if (!s) return oom(err, "stats");
  rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(*np);
  for (int32_t i = 0; !rc && i < *np; i++) {
    rc = watermarks(q, ktopic, i, &s[i].lo, &s[i].hi, err);
    s[i].c = s[i].lo;
    s[i].f = -1;
    rd_kafka_topic_partition_list_add(l, ktopic, i);
  }
  rd_kafka_t *rk = rc || !group ? NULL : probe_get(q, group, err);
  if (!rc && group && !rk) rc = err->code;
  if (rk) {
    rd_kafka_resp_err_t e = rd_kafka_committed(rk, l, KQ_TMO_MS);
    if (e) rc = kerr(err, e, "committed offsets of group", group);
    for (int i = 0; !rc && i < l->cnt; i++) {
      rd_kafka_topic_partition_t *tp = &l->elems[i];
      if (tp->err || tp->offset < 0) continue;
      pstat_t *x = &s[tp->partition];
      x->c = tp->offset < x->lo ? x->lo : tp->offset > x->hi ? x->hi : tp->offset;
      unsigned n0;
      nq_kafka__meta_parse(tp->metadata, tp->metadata_size, &x->f, &n0);
    }
  }
  rd_kafka_topic_partition_list_destroy(l);
  if (rc) {
    free(s);
    return rc;
  }
  *out = s;
  return 0;
}

static int k_stats(nq_queue_t *qq, const char *topic, const char *group, nq_queue_stats_t *st, nq_err_t *err) {
  NEED_ERR;
  kq_t *q = (kq_t *)qq;
  char kt[KQ_TOPIC_MAX];
  if (!st) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "kafka queue stats: NULL output");
  memset(st, 0, sizeof *st);
  int rc = nq_kafka__topic_name(topic, kt, sizeof kt, err);
  if (rc) return rc;
  if (group && *group) { /* this process's own acks first (async commits may still be on the wire) */
    pthread_mutex_lock(&q->mu);
    kc_t *list[256];
    int nl = 0;
    for (kc_t *kc = q->kcs; kc && nl < 256; kc = kc->next)
      if (!strcmp(kc->group, group)) list[nl++] = kc;
    pthread_mutex_unlock(&q->mu);
    for (int i = 0; i < nl; i++) {
      pthread_mutex_lock(&list[i]->mu);
      kc_commit_sync(list[i], NULL, 1, 1);
      pthread_mutex_unlock(&list[i]->mu);
    }
  }
  pstat_t *s = NULL;
  int32_t np = 0;
  if ((rc = topic_stats(q, kt, group && *group ? group : NULL, &s, &np, err))) return rc;
  for (int32_t i = 0; i < np; i++) {
    int64_t f = s[i].f > s[i].c ? (s[i].f < s[i].hi ? s[i].f : s[i].hi) : s[i].c;
    st->depth += s[i].hi - f;
    st->in_flight += f - s[i].c;
    st->lag += s[i].hi - s[i].c;
  }
  free(s);
  if ((rc = topic_stats(q, KQ_T_RETRY, KQ_G_RETRY, &s, &np, err))) return rc;
  for (int32_t i = 0; i < np; i++) st->delayed += s[i].hi - s[i].c;
  free(s);
  pthread_mutex_lock(&q->xmu);
  rc = dlq_fold(q, err);
  st->dead = dlq_live(q);
  pthread_mutex_unlock(&q->xmu);
  return rc;
}

/* ---------------------------------------------------------------- lifecycle */

static void k_free(nq_queue_t *qq) {
  kq_t *q = (kq_t *)qq;
  /* The keeper keeps polling the consumers not closed yet: closing one waits up to its session, and the others
   * must not be expelled (MAXPOLL) meanwhile -- a rebalance of their groups for nothing. */
  for (;;) {
    pthread_mutex_lock(&q->mu);
    kc_t *kc = q->kcs;
    if (kc) q->kcs = kc->next;
    while (kc && kc->keeping) pthread_cond_wait(&q->kcv, &q->mu);
    pthread_mutex_unlock(&q->mu);
    if (!kc) break;
    kc_free(kc);
  }
  if (q->keeper_on) {
    q->keeper_stop = 1;
    pthread_join(q->keeper, NULL);
  }
  if (q->mover) {
    kmover_t *m = q->mover;
    pthread_mutex_lock(&m->mu);
    mover_commit(m, NULL);
    m->closing = 1;
    pthread_mutex_unlock(&m->mu);
    if (close_bounded(m->rk, session_ms(q) + 5000)) {
      rd_kafka_destroy(m->rk);
      for (int i = 0; i < m->nr; i++) free(m->r[i].ktopic), free(m->r[i].body);
      free(m->r);
      pthread_mutex_destroy(&m->mu);
      free(m);
    } else { /* as in kc_free: leaked rather than a process that never exits */
      NQ_WARN("kafka", "retry mover: close did not finish: left to the session timeout");
    }
  }
  while (q->probes) {
    kprobe_t *p = q->probes;
    q->probes = p->next;
    rd_kafka_destroy(p->rk);
    free(p->group);
    free(p);
  }
  if (q->reader) {
    rd_kafka_consumer_close(q->reader);
    rd_kafka_destroy(q->reader);
  }
  if (q->prod) {
    rd_kafka_flush(q->prod, 5000);
    q->stop = 1;
    pthread_join(q->poller, NULL);
    rd_kafka_destroy(q->prod);
  }
  while (q->jparts) {
    kjpart_t *jp = q->jparts;
    q->jparts = jp->next;
    while (jp->jobs) {
      kjob_t *j = jp->jobs;
      jp->jobs = j->next;
      for (size_t i = 0; i < j->capt; i++) free(j->t[i].task);
      free(j->t);
      free(j->job);
      free(j->meta);
      free(j);
    }
    free(jp);
  }
  for (int i = 0; i < q->ndlq; i++) free(q->dlq[i].topic), free(q->dlq[i].reason), free(q->dlq[i].body);
  free(q->dlq);
  for (int i = 0; i < 2 * q->nkv; i++) free(q->kv[i]);
  free(q->kv);
  pthread_mutex_destroy(&q->dmu);
  pthread_cond_destroy(&q->dcv);
  pthread_cond_destroy(&q->kcv);
  pthread_mutex_destroy(&q->mu);
  pthread_mutex_destroy(&q->rmu);
  pthread_mutex_destroy(&q->jmu);
  pthread_mutex_destroy(&q->cmu);
  pthread_mutex_destroy(&q->xmu);
  free(q);
}

static const nq_queue_i kafka_vt = {
    .name = "kafka",
    .counts_lower_bound = 1,
    .publish = k_publish,
    .fetch = k_fetch,
    .ack = k_ack,
    .nack = k_nack,
    .extend_lease = k_extend_lease,
    .dead_letter = k_dead_letter,
    .stats = k_stats,
    .publish_result = k_publish_result,
    .read_results = k_read_results,
    .job_put = k_job_put,
    .job_get = k_job_get,
    .job_set_total = k_job_set_total,
    .job_mark = k_job_mark,
    .job_counts = k_job_counts,
    .tasks_ok = k_tasks_ok,
    .dlq_list = k_dlq_list,
    .dlq_requeue = k_dlq_requeue,
    .dlq_purge = k_dlq_purge,
    .publish_batch = k_publish_batch,
    .complete_batch = k_complete_batch,
    .free = k_free,
};

static int kv_add(kq_t *q, const char *k, size_t kl, const char *v, size_t vl, nq_err_t *err) {
  char **nkv = realloc(q->kv, (size_t)(2 * q->nkv + 2) * sizeof *nkv);
  if (!nkv) return oom(err, "properties");
  q->kv = nkv;
  if (!(q->kv[2 * q->nkv] = memdup0(k, kl))) return oom(err, "properties");
  if (!(q->kv[2 * q->nkv + 1] = memdup0(v, vl))) {
    free(q->kv[2 * q->nkv]);
    return oom(err, "properties");
  }
  q->nkv++;
  return 0;
}

int nq_queue_kafka_open(const char *brokers, const nq_queue_opts_t *opts, nq_queue_t **out, nq_err_t *err) {
  if (!brokers || !out) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "kafka queue open: NULL argument");
  *out = NULL;
  const char *qm = strchr(brokers, '?');
  size_t bl = qm ? (size_t)(qm - brokers) : strlen(brokers);
  if (bl == 0) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "kafka queue url: no brokers (want kafka://HOST:PORT[,...])");
  kq_t *q = calloc(1, sizeof *q);
  if (!q) return oom(err, "open");
  if (bl >= sizeof q->brokers) {
    free(q);
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "kafka queue url: broker list too long");
  }
  memcpy(q->brokers, brokers, bl);
  q->base.vt = &kafka_vt;
  q->base.lease_ms = opts && opts->lease_ms > 0 ? opts->lease_ms : 30000;
  /* the URL keeps no properties: they may hold secrets (sasl.password) and URLs get logged */
  snprintf(q->base.url, sizeof q->base.url, "kafka://%s", q->brokers);
  q->msg_timeout_ms = 30000;
  pthread_mutex_init(&q->dmu, NULL);
  pthread_cond_init(&q->dcv, NULL);
  pthread_mutex_init(&q->mu, NULL);
  pthread_cond_init(&q->kcv, NULL);
  pthread_mutex_init(&q->rmu, NULL);
  pthread_mutex_init(&q->jmu, NULL);
  pthread_mutex_init(&q->cmu, NULL);
  pthread_mutex_init(&q->xmu, NULL);
  int rc = 0;
  /* properties: "?k=v&k=v" in the URL, then opts->kv (later ones win) */
  for (const char *s = qm ? qm + 1 : NULL; !rc && s && *s;) {
    const char *amp = strchr(s, '&'), *end = amp ? amp : s + strlen(s), *eq = memchr(s, '=', (size_t)(end - s));
    if (!eq || eq == s) rc = nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "kafka queue url: bad property '%.*s'", (int)(end - s), s);
    else rc = kv_add(q, s, (size_t)(eq - s), eq + 1, (size_t)(end - eq - 1), err);
    s = amp ? amp + 1 : NULL;
  }
  for (int i = 0; !rc && opts && opts->kv && i < opts->nkv; i++) {
    const char *k = opts->kv[2 * i], *v = opts->kv[2 * i + 1];
    if (!k || !v) rc = nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "kafka queue open: NULL property %d", i);
    else rc = kv_add(q, k, strlen(k), v, strlen(v), err);
  }
  for (int i = 0; !rc && i < q->nkv; i++)
    if (!strcmp(q->kv[2 * i], "message.timeout.ms")) q->msg_timeout_ms = atoi(q->kv[2 * i + 1]) > 0 ? atoi(q->kv[2 * i + 1]) : 30000;
  rd_kafka_conf_t *c = rc ? NULL : make_conf(q, RD_KAFKA_PRODUCER, NULL, 0, err);
  if (c) {
    char es[512];
    rd_kafka_conf_set_opaque(c, q);
    rd_kafka_conf_set_dr_msg_cb(c, dr_cb);
    if (!(q->prod = rd_kafka_new(RD_KAFKA_PRODUCER, c, es, sizeof es))) {
      rd_kafka_conf_destroy(c);
      rc = nq_err_set(err, NQ_ECONFIG, NQ_ERR_FATAL, "kafka %s: cannot create producer: %s", q->brokers, es);
    }
  } else if (!rc) {
    rc = err ? err->code : NQ_ECONFIG;
  }
  if (!rc && pthread_create(&q->poller, NULL, poller_main, q)) {
    rd_kafka_destroy(q->prod);
    q->prod = NULL;
    rc = nq_err_set(err, NQ_ELIMIT, NQ_ERR_RETRIABLE, "kafka queue open: cannot start the delivery thread");
  }
  if (!rc) {
    /* reach a broker now so a wrong address fails at open (retriable: it may just not be up yet) */
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t e = rd_kafka_metadata(q->prod, 0, NULL, &md, 5000);
    if (e) rc = nq_err_set(err, NQ_EQUEUE, NQ_ERR_RETRIABLE, "kafka %s: no broker reachable: %s", q->brokers, rd_kafka_err2str(e));
    else rd_kafka_metadata_destroy(md);
  }
  if (rc) {
    k_free(&q->base);
    return rc;
  }
  *out = &q->base;
  return 0;
}

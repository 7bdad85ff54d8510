/* api/api_int.h — private state of the HTTP API (server core, routes, keys). */
#ifndef NQ_API_API_INT_H
#define NQ_API_API_INT_H

#include <jansson.h>
#include <microhttpd.h>
#include <pthread.h>

#include "api/api.h"
#include "common/hash.h"
#include "common/metrics.h"

typedef struct nq_api__key {
  char sha256[NQ_SHA256_HEX_LEN + 1]; /* hex digest of the key; the key itself is never kept */
  int read_only;                      /* 1: GET only (POST -> 403) */
} nq_api__key_t;

typedef struct nq_api__bucket {
  char id[80];                  /* key digest prefix or client address */
  double tokens;
  double last;                  /* monotonic seconds of the last refill */
  struct nq_api__bucket *next;
} nq_api__bucket_t;

#define NQ_API__NBUCKETS 1024

struct nq_api {
  nq_api_cfg_t cfg;             /* strings point into the owned copies below */
  char *s_store_root, *s_output, *s_listen, *s_cors, *s_stage, *s_device, *s_jobs_dir; /* owned */
  char output_base[1100];       /* URI prefix of generate outputs, no trailing '/' */
  nq_api__key_t *keys;          /* owned array */
  int nkeys;
  pthread_mutex_t rl_mu;        /* guards buckets */
  nq_api__bucket_t *buckets[NQ_API__NBUCKETS]; /* owned chains */
  int nbucket_entries;
  struct MHD_Daemon *d;         /* owned */
  int port;
  volatile int stopping;        /* set by nq_api_free: event streams and ?wait end so connection threads exit */
  nq_metric_t *m_requests, *m_latency, *m_submitted; /* borrowed from the metrics registry */
};

/* Per-request state (MHD's con_cls). */
typedef struct nq_api__req {
  char *body;                   /* owned: request body, NUL-terminated */
  size_t len, cap;
  int too_large;                /* body exceeded max_body_bytes (413 at the end) */
  int responded;                /* a response was queued in the header phase */
  int read_only;                /* the caller's key is read-only */
  const char *route;            /* static: route template for metrics */
  double t0;                    /* monotonic start */
  unsigned status;              /* status sent */
} nq_api__req_t;

/* Responses (all add CORS headers; they record req->status). Return MHD's result. */
enum MHD_Result nq_api__send_json(nq_api_t *api, struct MHD_Connection *c, nq_api__req_t *r, unsigned status,
                                  json_t *body /* stolen */);
enum MHD_Result nq_api__send_error(nq_api_t *api, struct MHD_Connection *c, nq_api__req_t *r, unsigned status,
                                   const char *code, const char *fmt, ...) __attribute__((format(printf, 6, 7)));
enum MHD_Result nq_api__send_response(nq_api_t *api, struct MHD_Connection *c, nq_api__req_t *r, unsigned status,
                                      struct MHD_Response *resp /* destroyed here */, const char *content_type);
/* HTTP status for an NQ_E* code (400 for data errors, 404 not found, 503 queue, 500 else). */
unsigned nq_api__status_of(int code);
const char *nq_api__code_name(unsigned status);
double nq_api__now(void);

/* Routes (api/routes.c). `tail` is the path after the route prefix. */
enum MHD_Result nq_api__route(nq_api_t *api, struct MHD_Connection *c, nq_api__req_t *r, const char *method,
                              const char *url);

/* Keys and rate limits (api/keys.c). */
int nq_api__keys_load(nq_api_t *api, const char *path, nq_err_t *err);
/* 0 = allowed (fills *read_only, and id = a bucket id); 401 when the header is missing or the key unknown. */
unsigned nq_api__auth(nq_api_t *api, const char *authorization, int *read_only, char *id, size_t cap);
/* 0 allowed, else seconds to wait. */
int nq_api__rate_take(nq_api_t *api, const char *id);
void nq_api__buckets_free(nq_api_t *api);

#endif

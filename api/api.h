/* api/api.h — the asynchronous HTTP API (libmicrohttpd) and the Prometheus metrics listener.
 *
 * Routes (JSON unless said otherwise; every error is {"error": {"code": "...", "message": "..."}}):
 *   GET  /                         the demo page (HTML, embedded in the binary)
 *   GET  /healthz                  200 {"ok": true} while the process serves
 *   GET  /readyz                   200 when the queue answers, else 503
 *   GET  /v1/openapi.json          the OpenAPI 3 description of these routes
 *   POST /v1/jobs                  job YAML (application/yaml) or the same as JSON -> 201 {"id"}; 400 names line:column
 *   GET  /v1/jobs/{id}             {"id","state":"queued|running|done|failed","counts":{"ok","failed","dead","pending"},
 *                                   "total", ...metadata}
 *   GET  /v1/jobs/{id}/results     latest result per task, one JSON per line (application/x-ndjson); ?raw=1 streams
 *                                  every result event in order
 *   GET  /v1/jobs/{id}/events      Server-Sent Events: "progress" (counts), "result" (each result), "done"
 *   POST /v1/generate              {"prompt", "stage"?, "params"?, "next"?, "media"?: [{"name","data": base64}]}
 *                                  -> 202 {"id"} at once; ?wait=SECONDS blocks until the task ends (200) or times out
 *   GET  /v1/tasks/{id}            a generate task (id = its job id) or JOB/TASKKEY: {"id","state","result"}
 *   GET  /v1/objects/{key}         a stored object under the store root, with its media type; keys are checked by
 *                                  nq_store_key_check (400) and must exist inside the root (404)
 * Auth: with API keys configured every /v1/ request needs "Authorization: Bearer KEY" (401 otherwise); a key marked
 * read-only gets 403 on POST. Keys are kept as sha256 only. Per-key (or per-address without keys) token-bucket rate
 * limit (429 + Retry-After), request body limit (413), CORS (Access-Control-Allow-Origin for the configured origin,
 * OPTIONS preflight -> 204).
 *
 * @thread the server runs one thread per connection (blocking waits and SSE streams are simple there); the queue and
 * store are shared by those threads (both are thread-safe).
 */
#ifndef NQ_API_API_H
#define NQ_API_API_H

#include <stddef.h>

#include "common/err.h"
#include "queue/queue.h"
#include "store/store.h"

typedef struct nq_api_cfg {
  nq_queue_t *queue;          /* borrowed */
  nq_store_t *store;          /* borrowed: media uploads and /v1/objects */
  const char *store_root;     /* borrowed: absolute directory objects are served from (NULL: /v1/objects is 404) */
  const char *output;         /* borrowed: output base URI/dir of /v1/generate jobs (default <store_root>/generate) */
  const char *listen;         /* borrowed: "HOST:PORT" (PORT 0 = any free port; see nq_api_port) */
  const char *api_key_file;   /* borrowed, may be NULL: one key per line: KEY or sha256:HEX, then optional " ro" */
  const char *cors_origin;    /* borrowed, may be NULL: value of Access-Control-Allow-Origin ("*" or an origin) */
  const char *default_stage;  /* borrowed: stage of /v1/generate when the request names none (default "noop") */
  const char *device;         /* borrowed: device class of generate tasks (default "cpu") */
  const char *jobs_dir;       /* borrowed: base directory for relative paths in POST /v1/jobs (default ".") */
  double rate_limit;          /* requests per second per key / address; 0 = unlimited */
  double rate_burst;          /* bucket size (default 2 * rate_limit, at least 1) */
  size_t max_body_bytes;      /* request body limit (default 16 MiB) */
  int max_wait_s;             /* cap of ?wait= (default 300) */
  int sse_max_s;              /* an event stream ends after this long (default 3600) */
  int max_connections;        /* default 512 */
  int max_attempts;           /* of generate tasks (default 3) */
} nq_api_cfg_t;

typedef struct nq_api nq_api_t;

/* Loads the keys, binds and starts serving. The cfg strings are copied; queue and store are borrowed and must outlive
 * the server. */
int nq_api_new(const nq_api_cfg_t *cfg, nq_api_t **out /* OUT owned */, nq_err_t *err);
/* The bound port (useful with PORT 0). */
int nq_api_port(const nq_api_t *api);
/* Stops accepting, waits for the connection threads, frees. */
void nq_api_free(nq_api_t *api);

/* A metrics-only listener: GET /metrics (nq_metrics_render) and GET /healthz. */
typedef struct nq_api_metrics_server nq_api_metrics_server_t;
int nq_api_metrics_server_new(const char *listen /* "HOST:PORT" */, nq_api_metrics_server_t **out /* OUT owned */,
                              nq_err_t *err);
int nq_api_metrics_server_port(const nq_api_metrics_server_t *s);
void nq_api_metrics_server_free(nq_api_metrics_server_t *s);

/* Queue gauges (depth, in flight, delayed, lag per topic; DLQ size) sampled at every scrape for the given stages on
 * the device's and the "any" topics. The struct is copied; the queue is borrowed. Returns a handle for _unwatch. */
typedef struct nq_api_queue_watch nq_api_queue_watch_t;
nq_api_queue_watch_t *nq_api_queue_watch(nq_queue_t *q, const char *const *stages, int nstages, const char *device);
void nq_api_queue_unwatch(nq_api_queue_watch_t *w);

/* "HOST:PORT", "[v6]:PORT" or ":PORT" (127.0.0.1). */
int nq_api_listen_parse(const char *s, char *host /* OUT */, size_t cap, int *port /* OUT */, nq_err_t *err);

/* The demo page and the OpenAPI document (static strings). */
extern const char nq_api_page_html[];
extern const char nq_api_openapi_json[];

#endif

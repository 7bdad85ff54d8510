/* api/server.c — libmicrohttpd daemon, request bodies and limits, auth, CORS, JSON errors; the metrics listener. */
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "api/api_int.h"
#include "common/log.h"

double nq_api__now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

int nq_api_listen_parse(const char *s, char *host, size_t cap, int *port, nq_err_t *err) {
  if (!s || !*s) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "listen address: empty (want HOST:PORT)");
  const char *colon;
  size_t hl;
  const char *h = s;
  if (s[0] == '[') {
    const char *rb = strchr(s, ']');
    if (!rb || rb[1] != ':') return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "listen address '%s': want [V6]:PORT", s);
    h = s + 1;
    hl = (size_t)(rb - h);
    colon = rb + 1;
  } else {
    colon = strrchr(s, ':');
    if (!colon) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "listen address '%s': want HOST:PORT", s);
    hl = (size_t)(colon - s);
  }
  if (hl == 0) {
    h = "127.0.0.1";
    hl = strlen(h);
  }
  if (hl >= cap) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "listen address '%s': host too long", s);
  memcpy(host, h, hl);
  host[hl] = 0;
  char *end;
  long p = strtol(colon + 1, &end, 10);
  if (!colon[1] || *end || p < 0 || p > 65535)
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "listen address '%s': bad port", s);
  *port = (int)p;
  return 0;
}

/* Resolves host:port (numeric or a name) to a socket address. */
static int resolve(const char *listen, struct sockaddr_storage *ss, int *v6, nq_err_t *err) {
  char host[256];
  int port;
  int rc = nq_api_listen_parse(listen, host, sizeof host, &port, err);
  if (rc) return rc;
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *ai = NULL;
  char ps[16];
  snprintf(ps, sizeof ps, "%d", port);
  int g = getaddrinfo(host, ps, &hints, &ai);
  if (g || !ai) return nq_err_set(err, NQ_ECONFIG, NQ_ERR_FATAL, "listen address '%s': %s", listen, gai_strerror(g));
  memcpy(ss, ai->ai_addr, ai->ai_addrlen);
  *v6 = ai->ai_family == AF_INET6;
  freeaddrinfo(ai);
  return 0;
}

static int bound_port(struct MHD_Daemon *d) {
  const union MHD_DaemonInfo *i = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
  return i ? (int)i->port : 0;
}

static void mhd_log(void *cls, const char *fmt, va_list ap) {
  char buf[512];
  vsnprintf(buf, sizeof buf, fmt, ap);
  size_t n = strlen(buf);
  while (n && buf[n - 1] == '\n') buf[--n] = 0;
  NQ_DEBUG("api", "libmicrohttpd: %s", buf);
}

/* ---- responses ---- */

unsigned nq_api__status_of(int code) {
  switch (code) {
    case NQ_EINVAL: case NQ_EFORMAT: case NQ_ECONFIG: case NQ_EKEY: case NQ_ESHAPE: return 400;
    case NQ_ENOENT: return 404;
    case NQ_ELIMIT: return 413;
    case NQ_EQUEUE: case NQ_EAGAIN: case NQ_ETIMEOUT: return 503;
    case NQ_EUNSUPPORTED: return 501;
    default: return 500;
  }
}

const char *nq_api__code_name(unsigned status) {
  switch (status) {
    case 400: return "bad_request";
    case 401: return "unauthorized";
    case 403: return "forbidden";
    case 404: return "not_found";
    case 405: return "method_not_allowed";
    case 413: return "payload_too_large";
    case 415: return "unsupported_media_type";
    case 429: return "rate_limited";
    case 501: return "not_implemented";
    case 503: return "unavailable";
    default: return status >= 500 ? "internal" : "error";
  }
}

enum MHD_Result nq_api__send_response(nq_api_t *api, struct MHD_Connection *c, nq_api__req_t *r, unsigned status,
                                      struct MHD_Response *resp, const char *content_type) {
  if (!resp) return MHD_NO;
  if (content_type) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
  if (api->cfg.cors_origin) {
    MHD_add_response_header(resp, "Access-Control-Allow-Origin", api->cfg.cors_origin);
    MHD_add_response_header(resp, "Access-Control-Expose-Headers", "Retry-After, Location");
    if (strcmp(api->cfg.cors_origin, "*") != 0) MHD_add_response_header(resp, "Vary", "Origin");
  }
  MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
  enum MHD_Result ret = MHD_queue_response(c, status, resp);
  MHD_destroy_response(resp);
  if (r) {
    r->status = status;
    r->responded = 1;
  }
  return ret;
}

enum MHD_Result nq_api__send_json(nq_api_t *api, struct MHD_Connection *c, nq_api__req_t *r, unsigned status,
                                  json_t *body) {
  char *s = body ? json_dumps(body, JSON_COMPACT) : NULL;
  json_decref(body);
  if (!s) return MHD_NO;
  size_t n = strlen(s);
  char *t = realloc(s, n + 2); /* a trailing newline keeps curl output and logs tidy */
  if (t) {
    s = t;
    s[n++] = '\n';
    s[n] = 0;
  }
  struct MHD_Response *resp = MHD_create_response_from_buffer(n, s, MHD_RESPMEM_MUST_FREE);
  if (!resp) free(s);
  return nq_api__send_response(api, c, r, status, resp, "application/json");
}

enum MHD_Result nq_api__send_error(nq_api_t *api, struct MHD_Connection *c, nq_api__req_t *r, unsigned status,
                                   const char *code, const char *fmt, ...) {
  char msg[600];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  json_t *e = json_pack("{s:{s:s,s:s}}", "error", "code", code ? code : nq_api__code_name(status), "message", msg);
  if (status == 401) {
    char *s = json_dumps(e, JSON_COMPACT);
    json_decref(e);
    if (!s) return MHD_NO;
    struct MHD_Response *resp = MHD_create_response_from_buffer(strlen(s), s, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
      free(s);
      return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer realm=\"nextq\"");
    return nq_api__send_response(api, c, r, status, resp, "application/json");
  }
  return nq_api__send_json(api, c, r, status, e);
}

/* ---- the access handler ---- */

static const char *client_id(struct MHD_Connection *c, char *buf, size_t cap) {
  const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
  buf[0] = 0;
  if (ci && ci->client_addr) {
    if (ci->client_addr->sa_family == AF_INET)
      inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)ci->client_addr)->sin_addr, buf, (socklen_t)cap);
    else if (ci->client_addr->sa_family == AF_INET6)
      inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)(const void *)ci->client_addr)->sin6_addr, buf, (socklen_t)cap);
  }
  return buf;
}

/* Header phase: CORS preflight, auth, rate limit, Content-Length against the body limit. Returns 1 when a response
 * was queued (the body, if any, is then not read). */
static int header_phase(nq_api_t *api, struct MHD_Connection *c, nq_api__req_t *r, const char *method, const char *url,
                        enum MHD_Result *ret) {
  if (strcmp(method, "OPTIONS") == 0) {
    struct MHD_Response *resp = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    if (resp) {
      MHD_add_response_header(resp, "Access-Control-Allow-Methods", "GET, POST, OPTIONS");
      MHD_add_response_header(resp, "Access-Control-Allow-Headers", "Authorization, Content-Type, Last-Event-ID");
      MHD_add_response_header(resp, "Access-Control-Max-Age", "600");
    }
    r->route = "OPTIONS";
    *ret = nq_api__send_response(api, c, r, 204, resp, NULL);
    return 1;
  }
  char idbuf[80], addr[64];
  snprintf(idbuf, sizeof idbuf, "ip:%s", client_id(c, addr, sizeof addr));
  if (strncmp(url, "/v1/", 4) == 0) {
    if (api->nkeys > 0) {
      const char *auth = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
      unsigned st = nq_api__auth(api, auth, &r->read_only, idbuf, sizeof idbuf);
      if (st) {
        r->route = "auth";
        *ret = nq_api__send_error(api, c, r, st, NULL, "%s", auth ? "unknown API key" : "missing Authorization: Bearer KEY");
        return 1;
      }
      if (r->read_only && strcmp(method, "POST") == 0) {
        r->route = "auth";
        *ret = nq_api__send_error(api, c, r, 403, NULL, "this API key is read-only");
        return 1;
      }
    }
    if (api->cfg.rate_limit > 0) {
      int wait = nq_api__rate_take(api, idbuf);
      if (wait > 0) {
        char ra[16];
        snprintf(ra, sizeof ra, "%d", wait);
        json_t *e = json_pack("{s:{s:s,s:s}}", "error", "code", "rate_limited", "message", "too many requests; retry later");
        char *s = json_dumps(e, JSON_COMPACT);
        json_decref(e);
        struct MHD_Response *resp = s ? MHD_create_response_from_buffer(strlen(s), s, MHD_RESPMEM_MUST_FREE) : NULL;
        if (!resp) free(s);
        else MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, ra);
        r->route = "ratelimit";
        *ret = nq_api__send_response(api, c, r, 429, resp, "application/json");
        return 1;
      }
    }
  }
  const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
  if (cl) {
    char *end;
    unsigned long long n = strtoull(cl, &end, 10);
    if (*end || n > api->cfg.max_body_bytes) {
      r->route = "limit";
      *ret = nq_api__send_error(api, c, r, 413, NULL, "request body of %s bytes exceeds the limit of %zu bytes", cl,
                                api->cfg.max_body_bytes);
      return 1;
    }
  }
  return 0;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload_data, size_t *upload_data_size,
                                  void **con_cls) {
  nq_api_t *api = cls;
  nq_api__req_t *r = *con_cls;
  if (!r) {
    r = calloc(1, sizeof *r);
    if (!r) return MHD_NO;
    r->t0 = nq_api__now();
    r->route = "other";
    *con_cls = r;
    enum MHD_Result ret;
    if (header_phase(api, c, r, method, url, &ret)) return ret;
    return MHD_YES;
  }
  if (r->responded) { /* the body of a refused request: discard */
    *upload_data_size = 0;
    return MHD_YES;
  }
  if (*upload_data_size > 0) {
    size_t n = *upload_data_size;
    *upload_data_size = 0;
    if (r->too_large || r->len + n > api->cfg.max_body_bytes) {
      r->too_large = 1;
      free(r->body);
      r->body = NULL;
      r->len = r->cap = 0;
      return MHD_YES;
    }
    if (r->len + n + 1 > r->cap) {
      size_t nc = r->cap ? r->cap : 4096;
      while (nc < r->len + n + 1) nc *= 2;
      char *nb = realloc(r->body, nc);
      if (!nb) return MHD_NO;
      r->body = nb;
      r->cap = nc;
    }
    memcpy(r->body + r->len, upload_data, n);
    r->len += n;
    r->body[r->len] = 0;
    return MHD_YES;
  }
  if (r->too_large) {
    r->route = "limit";
    return nq_api__send_error(api, c, r, 413, NULL, "request body exceeds the limit of %zu bytes", api->cfg.max_body_bytes);
  }
  if (!r->body) {
    r->body = calloc(1, 1);
    if (!r->body) return MHD_NO;
  }
  return nq_api__route(api, c, r, method, url);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe) {
  nq_api_t *api = cls;
  nq_api__req_t *r = *con_cls;
  if (!r) return;
  if (r->status) {
    char code[8];
    snprintf(code, sizeof code, "%u", r->status);
    nq_metric_add(api->m_requests, 1, r->route, code);
    nq_metric_observe(api->m_latency, nq_api__now() - r->t0, r->route);
  }
  free(r->body);
  free(r);
  *con_cls = NULL;
}

static char *dup_or_null(const char *s) { return s ? strdup(s) : NULL; }

int nq_api_new(const nq_api_cfg_t *cfg, nq_api_t **out, nq_err_t *err) {
  *out = NULL;
  if (!cfg || !cfg->queue || !cfg->listen) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "api: queue and listen are required");
  nq_api_t *api = calloc(1, sizeof *api);
  if (!api) return nq_err_set(err, NQ_ENOMEM, NQ_ERR_FATAL, "api: out of memory");
  pthread_mutex_init(&api->rl_mu, NULL);
  api->cfg = *cfg;
  api->cfg.store_root = api->s_store_root = dup_or_null(cfg->store_root);
  api->cfg.output = api->s_output = dup_or_null(cfg->output);
  api->cfg.listen = api->s_listen = dup_or_null(cfg->listen);
  api->cfg.cors_origin = api->s_cors = dup_or_null(cfg->cors_origin);
  api->cfg.default_stage = api->s_stage = strdup(cfg->default_stage ? cfg->default_stage : "noop");
  api->cfg.device = api->s_device = strdup(cfg->device ? cfg->device : "cpu");
  api->cfg.jobs_dir = api->s_jobs_dir = strdup(cfg->jobs_dir ? cfg->jobs_dir : ".");
  api->cfg.api_key_file = NULL;
  if (!api->cfg.max_body_bytes) api->cfg.max_body_bytes = 16u << 20;
  if (api->cfg.max_wait_s <= 0) api->cfg.max_wait_s = 300;
  if (api->cfg.sse_max_s <= 0) api->cfg.sse_max_s = 3600;
  if (api->cfg.max_connections <= 0) api->cfg.max_connections = 512;
  if (api->cfg.max_attempts <= 0) api->cfg.max_attempts = 3;
  if (api->cfg.rate_limit > 0 && api->cfg.rate_burst < 1)
    api->cfg.rate_burst = api->cfg.rate_limit * 2 < 1 ? 1 : api->cfg.rate_limit * 2;
  int rc = 0;
  if (!api->cfg.default_stage || !api->cfg.device || !api->cfg.jobs_dir) rc = nq_err_set(err, NQ_ENOMEM, NQ_ERR_FATAL, "api: oom");
  /* generate outputs: <output> or <store_root>/generate, as a URI without a trailing '/' */
  const char *ob = api->cfg.output;
  char tmp[1100];
  if (!rc && !ob && api->cfg.store_root) {
    snprintf(tmp, sizeof tmp, "%s/generate", api->cfg.store_root);
    ob = tmp;
  }
  if (!rc && !ob) rc = nq_err_set(err, NQ_ECONFIG, NQ_ERR_FATAL, "api: needs a store root or an output for /v1/generate");
  if (!rc) {
    if (ob[0] == '/') snprintf(api->output_base, sizeof api->output_base, "file://%s", ob);
    else snprintf(api->output_base, sizeof api->output_base, "%s", ob);
    size_t l = strlen(api->output_base);
    while (l > 0 && api->output_base[l - 1] == '/') api->output_base[--l] = 0;
  }
  if (!rc && cfg->api_key_file) rc = nq_api__keys_load(api, cfg->api_key_file, err);
  api->m_requests = nq_metrics_counter("nq_api_requests_total", "HTTP requests by route and status", "route,code");
  api->m_latency = nq_metrics_histogram("nq_api_request_seconds", "HTTP request latency by route", "route", NULL, 0);
  api->m_submitted = nq_metrics_counter("nq_api_tasks_submitted_total", "tasks submitted through the API by stage", "stage");
  struct sockaddr_storage ss;
  int v6 = 0;
  if (!rc) rc = resolve(api->cfg.listen, &ss, &v6, err);
  if (!rc) {
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL | MHD_USE_ERROR_LOG |
                     MHD_USE_ITC | /* for MHD_quiesce_daemon */
                     (v6 ? MHD_USE_IPv6 : 0);
    api->d = MHD_start_daemon(flags, 0, NULL, NULL, on_request, api, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
                              MHD_OPTION_NOTIFY_COMPLETED, on_completed, api, MHD_OPTION_CONNECTION_LIMIT,
                              (unsigned)api->cfg.max_connections, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)120,
                              MHD_OPTION_LISTENING_ADDRESS_REUSE, 1, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
                              MHD_OPTION_END);
    if (!api->d) rc = nq_err_set(err, NQ_ECONFIG, NQ_ERR_FATAL, "api: cannot listen on %s (address in use?)", api->cfg.listen);
    else api->port = bound_port(api->d);
  }
  if (rc) {
    nq_api_free(api);
    return rc;
  }
  *out = api;
  return 0;
}

int nq_api_port(const nq_api_t *api) { return api ? api->port : 0; }

void nq_api_free(nq_api_t *api) {
  if (!api) return;
  __atomic_store_n(&api->stopping, 1, __ATOMIC_SEQ_CST);
  if (api->d) {
    /* stop accepting, give event streams up to ~2 s to send their "shutdown" event (their next fill sees
     * `stopping`), then close whatever is left (idle keep-alive connections) */
    MHD_quiesce_daemon(api->d);
    for (int i = 0; i < 40; i++) {
      const union MHD_DaemonInfo *ci = MHD_get_daemon_info(api->d, MHD_DAEMON_INFO_CURRENT_CONNECTIONS);
      if (!ci || ci->num_connections == 0) break;
      struct timespec ts = {0, 50 * 1000000L};
      nanosleep(&ts, NULL);
    }
    MHD_stop_daemon(api->d);
  }
  nq_api__buckets_free(api);
  pthread_mutex_destroy(&api->rl_mu);
  free(api->keys);
  free(api->s_store_root);
  free(api->s_output);
  free(api->s_listen);
  free(api->s_cors);
  free(api->s_stage);
  free(api->s_device);
  free(api->s_jobs_dir);
  free(api);
}

/* ---- metrics listener ---- */

struct nq_api_metrics_server {
  struct MHD_Daemon *d; /* owned */
  int port;
};

static enum MHD_Result on_metrics(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload_data, size_t *upload_data_size,
                                  void **con_cls) {
  if (!*con_cls) { /* first call: headers only */
    *con_cls = (void *)1;
    return MHD_YES;
  }
  if (*upload_data_size) {
    *upload_data_size = 0;
    return MHD_YES;
  }
  struct MHD_Response *resp;
  unsigned status = 200;
  const char *ct = "text/plain; charset=utf-8";
  if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
    status = 405;
    resp = MHD_create_response_from_buffer(19, (void *)"method not allowed\n", MHD_RESPMEM_PERSISTENT);
  } else if (strcmp(url, "/metrics") == 0) {
    size_t n = 0;
    char *s = nq_metrics_render(&n);
    if (!s) return MHD_NO;
    resp = MHD_create_response_from_buffer(n, s, MHD_RESPMEM_MUST_FREE);
    if (!resp) free(s);
    ct = NQ_METRICS_CONTENT_TYPE;
  } else if (strcmp(url, "/healthz") == 0) {
    resp = MHD_create_response_from_buffer(3, (void *)"ok\n", MHD_RESPMEM_PERSISTENT);
  } else {
    status = 404;
    resp = MHD_create_response_from_buffer(10, (void *)"not found\n", MHD_RESPMEM_PERSISTENT);
  }
  if (!resp) return MHD_NO;
  MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ct);
  enum MHD_Result ret = MHD_queue_response(c, status, resp);
  MHD_destroy_response(resp);
  return ret;
}

int nq_api_metrics_server_new(const char *listen, nq_api_metrics_server_t **out, nq_err_t *err) {
  *out = NULL;
  struct sockaddr_storage ss;
  int v6 = 0;
  int rc = resolve(listen, &ss, &v6, err);
  if (rc) return rc;
  nq_api_metrics_server_t *s = calloc(1, sizeof *s);
  if (!s) return nq_err_set(err, NQ_ENOMEM, NQ_ERR_FATAL, "metrics listener: out of memory");
  /* one internal thread is plenty for scrapes */
  s->d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL | (v6 ? MHD_USE_IPv6 : 0), 0, NULL, NULL,
                          on_metrics, NULL, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss, MHD_OPTION_CONNECTION_LIMIT,
                          (unsigned)64, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)30, MHD_OPTION_LISTENING_ADDRESS_REUSE, 1,
                          MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL, MHD_OPTION_END);
  if (!s->d) {
    free(s);
    return nq_err_set(err, NQ_ECONFIG, NQ_ERR_FATAL, "metrics listener: cannot listen on %s (address in use?)", listen);
  }
  s->port = bound_port(s->d);
  *out = s;
  return 0;
}

int nq_api_metrics_server_port(const nq_api_metrics_server_t *s) { return s ? s->port : 0; }

void nq_api_metrics_server_free(nq_api_metrics_server_t *s) {
  if (!s) return;
  MHD_stop_daemon(s->d);
  free(s);
}

/* ---- queue gauges ---- */

struct nq_api_queue_watch {
  nq_queue_t *q;      /* borrowed */
  int n;
  char topics[32][160];
  char groups[32][128];
};

static void watch_collect(void *ud) {
  nq_api_queue_watch_t *w = ud;
  nq_metric_t *depth = nq_metrics_gauge("nq_queue_depth", "messages waiting, by topic", "topic");
  nq_metric_t *infl = nq_metrics_gauge("nq_queue_in_flight", "messages delivered and not acked, by topic", "topic");
  nq_metric_t *delayed = nq_metrics_gauge("nq_queue_delayed", "scheduled retries not yet due, by topic", "topic");
  nq_metric_t *lag = nq_metrics_gauge("nq_queue_lag", "consumer-group lag, by topic", "topic");
  nq_metric_t *dlq = nq_metrics_gauge("nq_dlq_size", "entries in the dead-letter queue", NULL);
  for (int i = 0; i < w->n; i++) {
    nq_queue_stats_t st;
    nq_err_t err = {0};
    if (nq_queue_stats(w->q, w->topics[i], w->groups[i], &st, &err) != 0) continue;
    nq_metric_set(depth, (double)st.depth, w->topics[i]);
    nq_metric_set(infl, (double)st.in_flight, w->topics[i]);
    nq_metric_set(delayed, (double)st.delayed, w->topics[i]);
    nq_metric_set(lag, (double)st.lag, w->topics[i]);
    nq_metric_set(dlq, (double)st.dead);
  }
}

nq_api_queue_watch_t *nq_api_queue_watch(nq_queue_t *q, const char *const *stages, int nstages, const char *device) {
  nq_api_queue_watch_t *w = calloc(1, sizeof *w);
  if (!w) return NULL;
  w->q = q;
  for (int i = 0; i < nstages && w->n + 2 <= 32; i++) {
    const char *devs[2] = {device ? device : "cpu", "any"};
    for (int k = 0; k < 2; k++) {
      nq_queue_topic(w->topics[w->n], sizeof w->topics[0], stages[i], devs[k]);
      nq_queue_group(w->groups[w->n], sizeof w->groups[0], stages[i]);
      w->n++;
    }
  }
  if (nq_metrics_collector_add(watch_collect, w) != 0) {
    free(w);
    return NULL;
  }
  return w;
}

void nq_api_queue_unwatch(nq_api_queue_watch_t *w) {
  if (!w) return;
  nq_metrics_collector_remove(watch_collect, w);
  free(w);
}

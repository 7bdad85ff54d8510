/* cli/cmd_api.c — `nextq api`: the asynchronous HTTP API and demo page (api/api.h) until SIGTERM/SIGINT. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "api/api.h"
#include "cli/cli.h"
#include "cli/cli_util.h"
#include "common/log.h"
#include "worker/worker.h"

static void usage(FILE *f) {
  fprintf(f,
          "usage: nextq api [--queue URL] [--listen HOST:PORT] [--api-key-file FILE] [--store-root DIR]\n"
          "                 [--output DIR|URI] [--stage NAME] [--device cpu|cuda|any] [--cors-origin ORIGIN]\n"
          "                 [--rate-limit RPS] [--rate-burst N] [--max-body BYTES] [--max-wait S] [--jobs-dir DIR]\n"
          "                 [--s3-root DIR] [--metrics-listen HOST:PORT]\n"
          "Serves the HTTP API (POST /v1/jobs, /v1/generate; GET /v1/jobs/{id}[/results|/events], /v1/tasks/{id},\n"
          "/v1/objects/{key}, /v1/openapi.json, /healthz, /readyz) and the demo page at /. Prints the URL it listens on\n"
          "(\"listening on http://HOST:PORT\") on stdout once ready; stops on SIGTERM/SIGINT.\n"
          "  --listen          default 127.0.0.1:8080 (PORT 0: any free port)\n"
          "  --api-key-file    one key per line (KEY or sha256:HEX, optional ' ro' = read-only); then every /v1/ request\n"
          "                    needs 'Authorization: Bearer KEY' (else 401; a read-only key gets 403 on POST)\n"
          "  --store-root      object store root: uploads, /v1/generate outputs (<root>/generate) and /v1/objects\n"
          "                    (default $NQ_STORE_ROOT, else ./nq-data)\n"
          "  --output          where /v1/generate jobs write (default <store-root>/generate)\n"
          "  --stage           stage of /v1/generate when the request names none (default noop)\n"
          "  --rate-limit      requests/s per API key (per client address without keys); 0 = off (default)\n"
          "  --max-body        request body limit in bytes (default 16777216)\n"
          "  --jobs-dir        base directory for relative paths in submitted jobs (default: the current directory)\n"
          "  --metrics-listen  Prometheus /metrics on this address\n");
}

int nq_cli_api(int argc, char **argv) {
  static const struct option lo[] = {
      {"queue", 1, 0, 'q'},       {"listen", 1, 0, 'l'},     {"api-key-file", 1, 0, 'k'}, {"store-root", 1, 0, 'r'},
      {"output", 1, 0, 'o'},      {"stage", 1, 0, 's'},      {"device", 1, 0, 'd'},       {"cors-origin", 1, 0, 'C'},
      {"rate-limit", 1, 0, 'R'},  {"rate-burst", 1, 0, 'B'}, {"max-body", 1, 0, 'M'},     {"max-wait", 1, 0, 'W'},
      {"jobs-dir", 1, 0, 'J'},    {"s3-root", 1, 0, '3'},    {"metrics-listen", 1, 0, 'm'}, {"help", 0, 0, 'h'},
      {0, 0, 0, 0}};
  const char *qurl = NULL, *root = NULL, *s3 = NULL, *metrics = NULL;
  nq_api_cfg_t cfg = {.listen = "127.0.0.1:8080"};
  int opt;
  optind = 1;
  while ((opt = getopt_long(argc, argv, "q:l:h", lo, NULL)) != -1) {
    char *end = NULL;
    switch (opt) {
      case 'q': qurl = optarg; break;
      case 'l': cfg.listen = optarg; break;
      case 'k': cfg.api_key_file = optarg; break;
      case 'r': root = optarg; break;
      case 'o': cfg.output = optarg; break;
      case 's': cfg.default_stage = optarg; break;
      case 'd': cfg.device = optarg; break;
      case 'C': cfg.cors_origin = optarg; break;
      case 'R': cfg.rate_limit = strtod(optarg, &end); break;
      case 'B': cfg.rate_burst = strtod(optarg, &end); break;
      case 'M': cfg.max_body_bytes = (size_t)strtoull(optarg, &end, 10); break;
      case 'W': cfg.max_wait_s = (int)strtol(optarg, &end, 10); break;
      case 'J': cfg.jobs_dir = optarg; break;
      case '3': s3 = optarg; break;
      case 'm': metrics = optarg; break;
      case 'h': usage(stdout); return 0;
      default: usage(stderr); return 2;
    }
    if (end && *end) {
      fprintf(stderr, "nextq: api: '%s': not a number\n", optarg);
      return 2;
    }
  }
  if (optind != argc) {
    usage(stderr);
    return 2;
  }
  if (cfg.default_stage && !nq_stage_find(cfg.default_stage)) {
    fprintf(stderr, "nextq: api: unknown stage '%s' (known: %s)\n", cfg.default_stage, nq_stage_names());
    return 2;
  }
  if (!root) root = getenv("NQ_STORE_ROOT");
  if (!root || !*root) root = "nq-data";
  if (mkdir(root, 0755) != 0 && errno != EEXIST) {
    fprintf(stderr, "nextq: api: store root %s: %s\n", root, strerror(errno));
    return 2;
  }
  char absroot[PATH_MAX];
  if (!realpath(root, absroot)) {
    fprintf(stderr, "nextq: api: store root %s: %s\n", root, strerror(errno));
    return 2;
  }
  cfg.store_root = absroot;
  char jobs_abs[PATH_MAX];
  if (!realpath(cfg.jobs_dir ? cfg.jobs_dir : ".", jobs_abs)) {
    fprintf(stderr, "nextq: api: jobs dir %s: %s\n", cfg.jobs_dir ? cfg.jobs_dir : ".", strerror(errno));
    return 2;
  }
  cfg.jobs_dir = jobs_abs; /* job outputs and datasets then resolve to absolute paths workers can use */
  nq_queue_t *q = nq_cli_open_queue(nq_cli_queue_url(qurl), 30000);
  nq_store_t *st = q ? nq_cli_open_store(absroot, s3) : NULL;
  if (!q || !st) {
    nq_store_free(st);
    nq_queue_close(q);
    return 2;
  }
  cfg.queue = q;
  cfg.store = st;
  nq_err_t err = {0};
  nq_api_t *api = NULL;
  nq_api_metrics_server_t *ms = NULL;
  nq_api_queue_watch_t *watch = NULL;
  int code = 2;
  if (metrics && nq_api_metrics_server_new(metrics, &ms, &err) != 0) {
    fprintf(stderr, "nextq: api: %s\n", err.msg);
  } else if (nq_api_new(&cfg, &api, &err) != 0) {
    fprintf(stderr, "nextq: api: %s\n", err.msg);
  } else {
    /* queue gauges for every stage this binary knows, on the API's device and "any" topics */
    char names[512];
    snprintf(names, sizeof names, "%s", nq_stage_names());
    const char *stages[32];
    int ns = 0;
    char *save = NULL;
    for (char *t = strtok_r(names, ",", &save); t && ns < 32; t = strtok_r(NULL, ",", &save)) stages[ns++] = t;
    if (ms) watch = nq_api_queue_watch(q, stages, ns, cfg.device ? cfg.device : "cpu");
    static volatile sig_atomic_t stop = 0;
    nq_cli_on_signals(&stop);
    char host[256];
    int port;
    nq_api_listen_parse(cfg.listen, host, sizeof host, &port, NULL);
    printf("listening on http://%s%s%s:%d\n", strchr(host, ':') ? "[" : "", host, strchr(host, ':') ? "]" : "",
           nq_api_port(api));
    if (ms && nq_api_listen_parse(metrics, host, sizeof host, &port, NULL) == 0)
      printf("metrics on http://%s%s%s:%d/metrics\n", strchr(host, ':') ? "[" : "", host, strchr(host, ':') ? "]" : "",
             nq_api_metrics_server_port(ms));
    fflush(stdout);
    NQ_INFO("api", "listening on %s (port %d), queue %s, store %s", cfg.listen, nq_api_port(api), q->url, absroot);
    while (!stop) usleep(100000); /* the server runs in its own threads */
    NQ_INFO("api", "stopping");
    code = 0;
  }
  nq_api_free(api);
  nq_api_queue_unwatch(watch);
  nq_api_metrics_server_free(ms);
  nq_store_free(st);
  nq_queue_close(q);
  return code;
}

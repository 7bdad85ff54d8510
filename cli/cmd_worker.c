/* cli/cmd_worker.c — `nextq worker`: serve stages from a queue until SIGTERM/SIGINT (then drain). */
#include <getopt.h>
#include <jansson.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api/api.h"
#include "cli/cli.h"
#include "cli/cli_util.h"
#include "common/config.h"
#include "common/log.h"
#include "compute/core/ops.h"
#include "worker/worker.h"

typedef struct worker_cfg {
  char *queue;
  json_t *stages;
  char *device;
  long long threads, batch, lease_ms, grace_ms, block_ms, backoff_base_ms, backoff_max_ms;
  char *file_root, *s3_root;
  char *log_level, *log_format;
  json_t *stage_config;
  char *metrics_listen;
} worker_cfg_t;

#define O(f) offsetof(worker_cfg_t, f)
static const nq_prop_t worker_props[] = {
    {"queue", NQ_PROP_STRING, O(queue), 0, 0, NULL, NULL, 0, "queue URL (redis://H:P, kafka://B, local://N)"},
    {"stages", NQ_PROP_STRLIST, O(stages), 0, 0, "noop", NULL, 0, "stages to serve"},
    {"device", NQ_PROP_ENUM, O(device), 0, 0, "cpu", "cpu|cuda", 0, "device class: serves tasks:<stage>:<device> and :any"},
    {"threads", NQ_PROP_INT, O(threads), 1, 1024, "1", NULL, 0, "task threads"},
    {"batch", NQ_PROP_INT, O(batch), 1, 10000, "16", NULL, 0, "max messages per fetch"},
    {"lease_ms", NQ_PROP_INT, O(lease_ms), 100, 86400000, "30000", NULL, 0, "visibility timeout; heartbeats every lease/3"},
    {"grace_ms", NQ_PROP_INT, O(grace_ms), 0, 86400000, "30000", NULL, 0, "drain grace period after SIGTERM"},
    {"block_ms", NQ_PROP_INT, O(block_ms), 1, 60000, "1000", NULL, 0, "fetch block time"},
    {"backoff_base_ms", NQ_PROP_INT, O(backoff_base_ms), 1, 3600000, "1000", NULL, 0, "retry backoff base"},
    {"backoff_max_ms", NQ_PROP_INT, O(backoff_max_ms), 1, 86400000, "60000", NULL, 0, "retry backoff cap"},
    {"store.file_root", NQ_PROP_STRING, O(file_root), 0, 0, NULL, NULL, 0, "confine file:// outputs under this root"},
    {"store.s3_root", NQ_PROP_STRING, O(s3_root), 0, 0, NULL, NULL, 0, "mount root for s3://bucket/key"},
    {"log.level", NQ_PROP_ENUM, O(log_level), 0, 0, "info", "debug|info|warn|error", 0, "log level"},
    {"log.format", NQ_PROP_ENUM, O(log_format), 0, 0, "auto", "auto|human|json", 0, "human on a terminal, JSON lines otherwise"},
    {"metrics_listen", NQ_PROP_STRING, O(metrics_listen), 0, 0, NULL, NULL, 0, "Prometheus /metrics on HOST:PORT"},
    {"stage_config", NQ_PROP_JSON, O(stage_config), 0, 0, NULL, NULL, 0, "per-stage settings: {llm: {model: ...}, ...}"},
    {0},
};
#undef O

static void usage(FILE *f) {
  fprintf(f,
          "usage: nextq worker [--config worker.yaml] [--queue URL] [--stages a,b] [--device cpu|cuda] [--threads N]\n"
          "                    [--batch N] [--lease-ms MS] [--grace-ms MS] [--store-root DIR] [--s3-root DIR]\n"
          "                    [--metrics-listen HOST:PORT] [--set KEY=VALUE]...\n"
          "Serves the stages until SIGTERM/SIGINT, then drains: stops fetching, finishes in-flight tasks within the\n"
          "grace period or hands them back to the queue, exits 0. Environment NQ_WORKER_<KEY> overrides the config\n"
          "file (e.g. NQ_WORKER_THREADS=4); flags override both.\n\nsettings:\n");
  char *ref = nq_config_reference("worker.yaml", worker_props);
  if (ref) fprintf(f, "%s", ref);
  free(ref);
}

int nq_cli_worker(int argc, char **argv) {
  static const struct option lo[] = {{"config", 1, 0, 'c'},   {"queue", 1, 0, 'q'},    {"stages", 1, 0, 's'},
                                     {"device", 1, 0, 'd'},   {"threads", 1, 0, 't'},  {"batch", 1, 0, 'b'},
                                     {"lease-ms", 1, 0, 'l'}, {"grace-ms", 1, 0, 'g'}, {"store-root", 1, 0, 'r'},
                                     {"s3-root", 1, 0, '3'},  {"set", 1, 0, 'S'},      {"help", 0, 0, 'h'},
                                     {"metrics-listen", 1, 0, 'm'}, {0, 0, 0, 0}};
  worker_cfg_t cfg;
  memset(&cfg, 0, sizeof cfg);
  nq_err_t err = {0};
  const char *config = NULL;
  int opt;
  optind = 1;
  /* pass 1: config file; pass 2: flags override */
  while ((opt = getopt_long(argc, argv, "c:q:s:d:t:b:h", lo, NULL)) != -1) {
    if (opt == 'c') config = optarg;
    if (opt == 'h') {
      usage(stdout);
      return 0;
    }
    if (opt == '?') {
      usage(stderr);
      return 2;
    }
  }
  int rc = config ? nq_config_load_file(config, worker_props, &cfg, "NQ_WORKER_", &err)
                  : nq_config_load_string("", 0, "(defaults)", worker_props, &cfg, "NQ_WORKER_", &err);
  optind = 1;
  while (!rc && (opt = getopt_long(argc, argv, "c:q:s:d:t:b:h", lo, NULL)) != -1) {
    const char *key = NULL;
    char kv[1024];
    switch (opt) {
      case 'q': key = "queue"; break;
      case 's': key = "stages"; break;
      case 'd': key = "device"; break;
      case 't': key = "threads"; break;
      case 'b': key = "batch"; break;
      case 'l': key = "lease_ms"; break;
      case 'g': key = "grace_ms"; break;
      case 'r': key = "store.file_root"; break;
      case '3': key = "store.s3_root"; break;
      case 'm': key = "metrics_listen"; break;
      case 'S': {
        snprintf(kv, sizeof kv, "%s", optarg);
        char *eq = strchr(kv, '=');
        if (!eq) {
          rc = nq_err_set(&err, NQ_EINVAL, NQ_ERR_FATAL, "--set %s: expected KEY=VALUE", optarg);
          continue;
        }
        *eq = 0;
        rc = nq_config_set(worker_props, &cfg, kv, eq + 1, "--set", &err);
        continue;
      }
      default: continue;
    }
    rc = nq_config_set(worker_props, &cfg, key, optarg, "command line", &err);
  }
  if (rc || optind != argc) {
    if (rc) fprintf(stderr, "nextq: worker: %s\n", err.msg);
    else usage(stderr);
    nq_config_deinit(worker_props, &cfg);
    return 2;
  }
  nq_log_level_t lvl;
  nq_log_format_t fmt;
  if (nq_log_level_parse(cfg.log_level, &lvl) == 0 && nq_log_format_parse(cfg.log_format, &fmt) == 0 &&
      (config || getenv("NQ_WORKER_LOG_LEVEL") || getenv("NQ_WORKER_LOG_FORMAT")))
    nq_log_setup(lvl, fmt);
  if (!strcmp(cfg.device, "cuda")) {
    /* GPU workers: every model's executor puts the cuda backend first. Refuse to start without a usable GPU rather
     * than serve the cuda queues at CPU speed. */
    nq_backend_t *probe = nq_backend_cuda_new(NULL, &err);
    if (!probe) {
      fprintf(stderr, "nextq: worker --device cuda: %s\n", err.msg);
      nq_config_deinit(worker_props, &cfg);
      return 2;
    }
    nq_backend_free(probe);
    nq_exec_set_auto("cuda,openblas?,onednn?,cpu", NULL);
  }
  size_t ns = json_array_size(cfg.stages);
  const char **stages = calloc(ns ? ns : 1, sizeof *stages);
  for (size_t i = 0; i < ns; i++) stages[i] = json_string_value(json_array_get(cfg.stages, i));
  nq_queue_t *q = nq_cli_open_queue(nq_cli_queue_url(cfg.queue), (int)cfg.lease_ms);
  nq_store_t *st = q ? nq_cli_open_store(cfg.file_root, cfg.s3_root) : NULL;
  int code = 2;
  nq_api_metrics_server_t *msrv = NULL;
  nq_api_queue_watch_t *mwatch = NULL;
  if (q && st && cfg.metrics_listen) { /* Prometheus /metrics: worker counters + queue gauges of the served topics */
    if (nq_api_metrics_server_new(cfg.metrics_listen, &msrv, &err) != 0) {
      fprintf(stderr, "nextq: worker: %s\n", err.msg);
      nq_store_free(st);
      st = NULL;
    } else {
      mwatch = nq_api_queue_watch(q, stages, (int)ns, cfg.device);
      NQ_INFO("worker", "metrics on %s (port %d)", cfg.metrics_listen, nq_api_metrics_server_port(msrv));
    }
  }
  if (q && st) {
    static volatile sig_atomic_t stop = 0;
    nq_cli_on_signals(&stop);
    nq_worker_opts_t o = {.queue = q, .store = st, .stages = stages, .nstages = (int)ns, .device = cfg.device,
                          .threads = (int)cfg.threads, .batch = (int)cfg.batch, .block_ms = (int)cfg.block_ms,
                          .backoff_base_ms = (int)cfg.backoff_base_ms, .backoff_max_ms = (int)cfg.backoff_max_ms,
                          .grace_ms = (int)cfg.grace_ms, .stage_config = cfg.stage_config, .stop = &stop};
    nq_worker_stats_t ws = {0};
    if (nq_worker_run(&o, &ws, &err) != 0) {
      fprintf(stderr, "nextq: worker: %s\n", err.msg);
    } else {
      NQ_INFO("worker", "stopped: %lld ok, %lld retried, %lld dead, %lld malformed", ws.ok, ws.retried, ws.dead, ws.malformed);
      code = 0;
      if (ws.released) _exit(0); /* threads still inside a stage use the queue and store: don't free them */
    }
  }
  nq_api_queue_unwatch(mwatch);
  nq_api_metrics_server_free(msrv);
  nq_store_free(st);
  nq_queue_close(q);
  free(stages);
  nq_config_deinit(worker_props, &cfg);
  return code;
}

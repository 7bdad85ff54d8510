/* cli/cmd_jobs.c — run, submit, status, wait, results, dlq. */
#include <getopt.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/cli_util.h"
#include "common/log.h"
#include "scheduler/scheduler.h"
#include "worker/worker.h"

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* ---------------- run ---------------- */

typedef struct run_worker_arg {
  nq_worker_opts_t opts;
  nq_worker_stats_t stats;
  nq_err_t err;
  int rc;
} run_worker_arg_t;

static void *run_worker_main(void *p) {
  run_worker_arg_t *a = p;
  a->rc = nq_worker_run(&a->opts, &a->stats, &a->err);
  return NULL;
}

static void progress_line(const nq_job_counts_t *c, double t0, int tty, int final) {
  double el = now_s() - t0;
  long long done = c->ok + c->dead;
  double rate = el > 0 ? done / el : 0;
  if (tty) {
    int width = 30, fill = c->total > 0 ? (int)(width * done / c->total) : 0;
    char bar[64];
    for (int i = 0; i < width; i++) bar[i] = i < fill ? '#' : '.';
    bar[width] = 0;
    fprintf(stderr, "\r[%s] %lld/%lld  ok %lld  dead %lld  %.1f tasks/s  %.1fs%s", bar, done, c->total < 0 ? 0 : c->total,
            c->ok, c->dead, rate, el, final ? "\n" : "");
  } else {
    fprintf(stderr, "progress: %lld/%lld done (ok %lld, dead %lld), %.1f tasks/s, %.1fs\n", done, c->total < 0 ? 0 : c->total,
            c->ok, c->dead, rate, el);
  }
  fflush(stderr);
}

static void run_usage(FILE *f) {
  fprintf(f, "usage: nextq run JOB.yaml [--workers N] [--batch N] [--lease-ms MS] [--store-root DIR] [--s3-root DIR]\n"
             "                [--stage-config FILE.yaml] [--quiet]\n"
             "Runs the job in this process: scheduler + embedded queue + N worker threads. Shows a progress bar on a\n"
             "terminal, plain lines otherwise. Exit 0 when every task is ok, 1 if any task ended dead, 2 on usage or\n"
             "setup errors.\n");
}

int nq_cli_run(int argc, char **argv) {
  static const struct option lo[] = {{"workers", 1, 0, 'w'}, {"batch", 1, 0, 'b'},      {"lease-ms", 1, 0, 'l'},
                                     {"store-root", 1, 0, 'r'}, {"s3-root", 1, 0, 's'}, {"stage-config", 1, 0, 'c'},
                                     {"quiet", 0, 0, 'q'},   {"help", 0, 0, 'h'},       {0, 0, 0, 0}};
  int workers = 2, batch = 8, lease = 30000, quiet = 0, opt;
  const char *root = NULL, *s3 = NULL, *stage_cfg = NULL;
  optind = 1;
  while ((opt = getopt_long(argc, argv, "w:b:qh", lo, NULL)) != -1) {
    switch (opt) {
      case 'w': workers = atoi(optarg); break;
      case 'b': batch = atoi(optarg); break;
      case 'l': lease = atoi(optarg); break;
      case 'r': root = optarg; break;
      case 's': s3 = optarg; break;
      case 'c': stage_cfg = optarg; break;
      case 'q': quiet = 1; break;
      case 'h': run_usage(stdout); return 0;
      default: run_usage(stderr); return 2;
    }
  }
  if (optind != argc - 1 || workers < 1 || batch < 1) {
    run_usage(stderr);
    return 2;
  }
  nq_err_t err = {0};
  nq_job_spec_t spec;
  if (nq_job_spec_load(argv[optind], &spec, &err) != 0) {
    fprintf(stderr, "nextq: %s\n", err.msg);
    return 2;
  }
  json_t *stage_config = NULL;
  if (stage_cfg) {
    FILE *f = fopen(stage_cfg, "rb");
    char *buf = NULL;
    size_t len = 0;
    if (f) {
      fseek(f, 0, SEEK_END);
      long n = ftell(f);
      fseek(f, 0, SEEK_SET);
      buf = malloc((size_t)(n > 0 ? n : 0) + 1);
      len = buf ? fread(buf, 1, (size_t)(n > 0 ? n : 0), f) : 0;
      fclose(f);
    }
    if (!buf || nq_yaml_to_json(buf, len, stage_cfg, &stage_config, &err) != 0) {
      fprintf(stderr, "nextq: %s\n", buf ? err.msg : "cannot read stage config");
      free(buf);
      nq_job_spec_deinit(&spec);
      return 2;
    }
    free(buf);
  }
  char url[64];
  snprintf(url, sizeof url, "local://run-%d", (int)getpid());
  nq_queue_t *q = nq_cli_open_queue(url, lease);
  nq_store_t *st = q ? nq_cli_open_store(root, s3) : NULL;
  if (!q || !st) {
    nq_queue_close(q);
    nq_job_spec_deinit(&spec);
    return 2;
  }
  /* every stage of the chain is served by the embedded workers */
  const char *stages[17];
  int ns = 0;
  stages[ns++] = spec.stage;
  size_t i;
  json_t *v;
  json_array_foreach(spec.next, i, v) if (ns < 17) stages[ns++] = json_string_value(v);
  static volatile sig_atomic_t stop = 0;
  nq_cli_on_signals(&stop);
  volatile sig_atomic_t worker_stop = 0;
  run_worker_arg_t wa = {.opts = {.queue = q, .store = st, .stages = stages, .nstages = ns,
                                  .device = strcmp(spec.device, "any") == 0 ? "cpu" : spec.device, .threads = workers,
                                  .batch = batch, .block_ms = 100, .backoff_base_ms = 200, .backoff_max_ms = 10000,
                                  .grace_ms = 30000, .consumer = "run", .stage_config = stage_config,
                                  .stop = &worker_stop}};
  pthread_t wt;
  pthread_create(&wt, NULL, run_worker_main, &wa);
  double t0 = now_s();
  char job_id[256];
  int rc = nq_sched_submit(q, st, &spec, job_id, sizeof job_id, NULL, NULL, &err);
  int tty = isatty(2) && !quiet;
  int exit_code = 0;
  nq_job_counts_t c = {.total = -1};
  if (rc) {
    fprintf(stderr, "\nnextq: submit: %s\n", err.msg);
    exit_code = 2;
  } else {
    if (!quiet) fprintf(stderr, "job %s: %s over %s\n", job_id, spec.stage, spec.ds_path);
    double last = 0;
    for (;;) {
      if (nq_queue_job_counts(q, job_id, &c, &err) != 0) break;
      if (nq_job_counts_complete(&c) || stop || wa.rc) break;
      double t = now_s();
      if (!quiet && (tty ? t - last > 0.2 : t - last > 5)) {
        progress_line(&c, t0, tty, 0);
        last = t;
      }
      usleep(50000);
    }
    if (!quiet) progress_line(&c, t0, tty, 1);
  }
  worker_stop = 1;
  pthread_join(wt, NULL);
  if (wa.rc) {
    fprintf(stderr, "nextq: worker: %s\n", wa.err.msg);
    exit_code = 2;
  }
  if (!rc && !wa.rc) {
    int complete = 0;
    if (nq_sched_finalize(q, st, job_id, &complete, &err) != 0) {
      fprintf(stderr, "nextq: manifest: %s\n", err.msg);
      exit_code = 2;
    } else if (!complete) {
      fprintf(stderr, "nextq: interrupted: %lld of %lld tasks done\n", c.ok + c.dead, c.total);
      exit_code = 2;
    } else {
      char *meta = NULL;
      nq_queue_job_get(q, job_id, &meta, &err);
      json_t *m = meta ? json_loads(meta, 0, NULL) : NULL;
      printf("%s\n", job_id);
      fprintf(stderr, "job %s: %lld tasks, %lld ok, %lld dead; output %s\n", job_id, c.total, c.ok, c.dead,
              m ? json_string_value(json_object_get(m, "output")) : "?");
      json_decref(m);
      free(meta);
      if (c.dead) {
        nq_dlq_entry_t *d = NULL;
        int nd = 0;
        if (nq_queue_dlq_list(q, 20, &d, &nd, &err) == 0) {
          for (int k = 0; k < nd; k++) fprintf(stderr, "  dead: %s\n", d[k].reason);
          nq_dlq_entries_free(d, nd);
        }
        exit_code = 1;
      }
    }
  }
  nq_store_free(st);
  nq_queue_close(q);
  json_decref(stage_config);
  nq_job_spec_deinit(&spec);
  return exit_code;
}

/* ---------------- submit ---------------- */

int nq_cli_submit(int argc, char **argv) {
  static const struct option lo[] = {{"queue", 1, 0, 'q'}, {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
  const char *qurl = NULL;
  int opt;
  optind = 1;
  while ((opt = getopt_long(argc, argv, "q:h", lo, NULL)) != -1) {
    if (opt == 'q') qurl = optarg;
    else {
      fprintf(opt == 'h' ? stdout : stderr, "usage: nextq submit JOB.yaml [--queue URL]\nPublishes the job's tasks and prints the job id alone on stdout.\n");
      return opt == 'h' ? 0 : 2;
    }
  }
  if (optind != argc - 1) {
    fprintf(stderr, "usage: nextq submit JOB.yaml [--queue URL]\n");
    return 2;
  }
  nq_err_t err = {0};
  nq_job_spec_t spec;
  if (nq_job_spec_load(argv[optind], &spec, &err) != 0) {
    fprintf(stderr, "nextq: %s\n", err.msg);
    return 2;
  }
  nq_queue_t *q = nq_cli_open_queue(nq_cli_queue_url(qurl), 30000);
  nq_store_t *st = q ? nq_cli_open_store(NULL, NULL) : NULL;
  int code = 2;
  if (q && st) {
    char job_id[256];
    if (nq_sched_submit(q, st, &spec, job_id, sizeof job_id, NULL, NULL, &err) != 0) {
      fprintf(stderr, "nextq: submit: %s\n", err.msg);
    } else {
      printf("%s\n", job_id);
      code = 0;
    }
  }
  nq_store_free(st);
  nq_queue_close(q);
  nq_job_spec_deinit(&spec);
  return code;
}

/* ---------------- status / wait / results ---------------- */

static int job_args(int argc, char **argv, const char *usage, const char **qurl, double *timeout, int *raw) {
  static const struct option lo[] = {{"queue", 1, 0, 'q'}, {"timeout", 1, 0, 't'}, {"raw", 0, 0, 'r'}, {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
  int opt;
  optind = 1;
  while ((opt = getopt_long(argc, argv, "q:t:rh", lo, NULL)) != -1) {
    if (opt == 'q') *qurl = optarg;
    else if (opt == 't' && timeout) *timeout = atof(optarg);
    else if (opt == 'r' && raw) *raw = 1;
    else {
      fprintf(opt == 'h' ? stdout : stderr, "%s", usage);
      return opt == 'h' ? 0 : 2;
    }
  }
  if (optind != argc - 1) {
    fprintf(stderr, "%s", usage);
    return 2;
  }
  return -1;
}

int nq_cli_status(int argc, char **argv) {
  const char *qurl = NULL;
  int r = job_args(argc, argv, "usage: nextq status JOB_ID [--queue URL]\nPrints {job,state,total,ok,dead} as JSON.\n", &qurl, NULL, NULL);
  if (r >= 0) return r;
  nq_queue_t *q = nq_cli_open_queue(nq_cli_queue_url(qurl), 30000);
  if (!q) return 2;
  nq_err_t err = {0};
  nq_job_counts_t c;
  char *meta = NULL;
  int code = 0;
  if (nq_queue_job_get(q, argv[optind], &meta, &err) != 0 || !meta) {
    fprintf(stderr, "nextq: job %s: %s\n", argv[optind], meta ? err.msg : "unknown job");
    code = 2;
  } else if (nq_queue_job_counts(q, argv[optind], &c, &err) != 0) {
    fprintf(stderr, "nextq: job %s: %s\n", argv[optind], err.msg);
    code = 2;
  } else {
    const char *state = c.total < 0 ? "submitting" : nq_job_counts_complete(&c) ? (c.dead ? "failed" : "succeeded") : "running";
    json_t *o = json_pack("{s:s,s:s,s:I,s:I,s:I}", "job", argv[optind], "state", state, "total", (json_int_t)c.total, "ok",
                          (json_int_t)c.ok, "dead", (json_int_t)c.dead);
    json_t *m = json_loads(meta, 0, NULL);
    if (m) json_object_set(o, "output", json_object_get(m, "output"));
    char *s = json_dumps(o, JSON_COMPACT);
    printf("%s\n", s);
    free(s);
    json_decref(o);
    json_decref(m);
  }
  free(meta);
  nq_queue_close(q);
  return code;
}

int nq_cli_wait(int argc, char **argv) {
  const char *qurl = NULL;
  double timeout = 0;
  int r = job_args(argc, argv,
                   "usage: nextq wait JOB_ID [--queue URL] [--timeout SECONDS]\n"
                   "Exit 0 when every task is ok, 1 if any is dead, 2 on timeout (0 = wait forever) or when the\n"
                   "job's manifest cannot be written (tried 3 times).\n",
                   &qurl, &timeout, NULL);
  if (r >= 0) return r;
  nq_queue_t *q = nq_cli_open_queue(nq_cli_queue_url(qurl), 30000);
  if (!q) return 2;
  nq_store_t *st = nq_cli_open_store(NULL, NULL);
  if (!st) {
    nq_queue_close(q);
    return 2;
  }
  static volatile sig_atomic_t stop = 0;
  nq_cli_on_signals(&stop);
  double t0 = now_s();
  int code = 2;
  nq_err_t err = {0};
  for (;;) {
    nq_job_counts_t c;
    if (nq_queue_job_counts(q, argv[optind], &c, &err) != 0) {
      NQ_WARN("wait", "%s (retrying)", err.msg);
    } else if (nq_job_counts_complete(&c)) {
      /* the worker that completed the job wrote the manifest unless it failed or died meanwhile: write it (again) */
      int complete = 0, fin = -1;
      for (int tries = 0; tries < 3 && !stop; tries++) {
        if ((fin = nq_sched_finalize(q, st, argv[optind], &complete, &err)) == 0) break;
        NQ_WARN("wait", "job %s: manifest: %s (try %d of 3)", argv[optind], err.msg, tries + 1);
        sleep(1);
      }
      fprintf(stderr, "job %s: %lld tasks, %lld ok, %lld dead\n", argv[optind], c.total, c.ok, c.dead);
      if (fin != 0) fprintf(stderr, "nextq: job %s: manifest not written: %s\n", argv[optind], err.msg);
      code = fin != 0 ? 2 : c.dead ? 1 : 0;
      break;
    }
    if ((timeout > 0 && now_s() - t0 >= timeout) || stop) {
      fprintf(stderr, "nextq: job %s: timed out\n", argv[optind]);
      break;
    }
    usleep(100000);
  }
  nq_store_free(st);
  nq_queue_close(q);
  return code;
}

int nq_cli_results(int argc, char **argv) {
  const char *qurl = NULL;
  int raw = 0;
  int r = job_args(argc, argv,
                   "usage: nextq results JOB_ID [--queue URL] [--raw]\n"
                   "Prints the latest terminal result of each task as JSON lines (--raw: every result event).\n",
                   &qurl, NULL, &raw);
  if (r >= 0) return r;
  nq_queue_t *q = nq_cli_open_queue(nq_cli_queue_url(qurl), 30000);
  if (!q) return 2;
  nq_err_t err = {0};
  char cursor[128] = "";
  json_t *latest = json_object(), *order = json_array();
  int code = 0;
  for (;;) {
    nq_result_entry_t *e = NULL;
    int n = 0;
    if (nq_queue_read_results(q, argv[optind], cursor, 1000, 0, &e, &n, &err) != 0) {
      fprintf(stderr, "nextq: %s\n", err.msg);
      code = 2;
      break;
    }
    for (int i = 0; i < n; i++) {
      if (raw) {
        printf("%s\n", e[i].body);
        continue;
      }
      json_t *o = json_loads(e[i].body, 0, NULL);
      const char *task = json_string_value(json_object_get(o, "task"));
      if (task) {
        if (!json_object_get(latest, task)) json_array_append_new(order, json_string(task));
        json_object_set_new(latest, task, json_string(e[i].body));
      }
      json_decref(o);
    }
    if (n > 0) snprintf(cursor, sizeof cursor, "%s", e[n - 1].id);
    nq_result_entries_free(e, n);
    if (n < 1000) break;
  }
  size_t i;
  json_t *t;
  json_array_foreach(order, i, t) printf("%s\n", json_string_value(json_object_get(latest, json_string_value(t))));
  json_decref(latest);
  json_decref(order);
  nq_queue_close(q);
  return code;
}

/* ---------------- dlq ---------------- */

int nq_cli_dlq(int argc, char **argv) {
  static const char *usage = "usage: nextq dlq list [--queue URL] [--max N] [--json]\n"
                             "       nextq dlq requeue (ID | --all) [--queue URL]\n"
                             "       nextq dlq purge [--queue URL]\n";
  if (argc < 2 || nq_cli_wants_help(argc, argv)) {
    fprintf(argc < 2 ? stderr : stdout, "%s", usage);
    return argc < 2 ? 2 : 0;
  }
  const char *sub = argv[1], *qurl = NULL, *id = NULL;
  int all = 0, max = 1000, as_json = 0;
  for (int i = 2; i < argc; i++) {
    if (strcmp(argv[i], "--queue") == 0 && i + 1 < argc) qurl = argv[++i];
    else if (strncmp(argv[i], "--queue=", 8) == 0) qurl = argv[i] + 8;
    else if (strcmp(argv[i], "--max") == 0 && i + 1 < argc) max = atoi(argv[++i]);
    else if (strcmp(argv[i], "--all") == 0) all = 1;
    else if (strcmp(argv[i], "--json") == 0) as_json = 1;
    else if (argv[i][0] != '-' && !id) id = argv[i];
    else {
      fprintf(stderr, "%s", usage);
      return 2;
    }
  }
  nq_queue_t *q = nq_cli_open_queue(nq_cli_queue_url(qurl), 30000);
  if (!q) return 2;
  nq_err_t err = {0};
  int code = 0, n = 0;
  if (strcmp(sub, "list") == 0) {
    nq_dlq_entry_t *e = NULL;
    if (nq_queue_dlq_list(q, max, &e, &n, &err) != 0) {
      fprintf(stderr, "nextq: dlq list: %s\n", err.msg);
      code = 2;
    }
    for (int i = 0; i < n; i++) {
      if (as_json) {
        json_t *o = json_pack("{s:s,s:s,s:s,s:s}", "id", e[i].id, "topic", e[i].topic, "reason", e[i].reason, "body", e[i].body);
        char *s = json_dumps(o, JSON_COMPACT);
        printf("%s\n", s);
        free(s);
        json_decref(o);
      } else {
        char job[160], task[300];
        nq_envelope_peek_ids(e[i].body, strlen(e[i].body), job, sizeof job, task, sizeof task);
        printf("%s\t%s\t%s\t%s\n", e[i].id, task[0] ? task : "-", e[i].topic, e[i].reason);
      }
    }
    nq_dlq_entries_free(e, n);
  } else if (strcmp(sub, "requeue") == 0) {
    if (!id && !all) {
      fprintf(stderr, "%s", usage);
      code = 2;
    } else if (nq_queue_dlq_requeue(q, all ? NULL : id, &n, &err) != 0) {
      fprintf(stderr, "nextq: dlq requeue: %s\n", err.msg);
      code = 2;
    } else {
      printf("requeued %d\n", n);
    }
  } else if (strcmp(sub, "purge") == 0) {
    if (nq_queue_dlq_purge(q, &n, &err) != 0) {
      fprintf(stderr, "nextq: dlq purge: %s\n", err.msg);
      code = 2;
    } else {
      printf("purged %d\n", n);
    }
  } else {
    fprintf(stderr, "%s", usage);
    code = 2;
  }
  nq_queue_close(q);
  return code;
}

/* worker/worker.c — see worker.h for the per-delivery state machine. */
#include "worker/worker.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "common/metrics.h"
#include "scheduler/scheduler.h"

typedef struct inflight {
  const nq_delivery_t *d;   /* borrowed from the fetching thread */
  const char *group;        /* borrowed */
  const char *consumer;     /* borrowed */
  struct inflight *next;
} inflight_t;

typedef struct worker {
  const nq_worker_opts_t *o;   /* borrowed */
  const nq_stage_t **stages;   /* owned array of borrowed stage pointers */
  void **state;                /* owned array: per-stage state (owned by the stage) */
  pthread_mutex_t mu;          /* guards inflight, stats, running */
  pthread_cond_t cv;
  inflight_t *inflight;        /* tasks being processed (heartbeats) */
  nq_worker_stats_t stats;
  int running;                 /* task threads still running */
  char host[128];
  /* Prometheus series (common/metrics.h), registered by nq_worker_run */
  nq_metric_t *m_tasks, *m_latency, *m_retries, *m_inflight, *m_tokens, *m_images, *m_load;
} worker_t;

typedef struct thread_arg {
  worker_t *w;
  int idx;
  char consumer[192];
} thread_arg_t;

static long long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void stat_add(worker_t *w, long long *field, long long v) {
  pthread_mutex_lock(&w->mu);
  *field += v;
  pthread_mutex_unlock(&w->mu);
}

int nq_task_fail(nq_task_ctx_t *t, int code, unsigned flags, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  nq_err_vset(&t->err, code, flags, fmt, ap);
  va_end(ap);
  t->rc = code;
  return code;
}

int nq_task_put(nq_task_ctx_t *t, const char *name, const void *data, size_t len, nq_err_t *err) {
  char uri[NQ_STORE_URI_MAX + 1];
  nq_store_obj_t obj;
  int rc = nq_store_join(t->env->output, name, uri, sizeof uri, err);
  if (!rc) rc = t->batch ? nq_store_batch_put(t->batch, uri, data, len, &obj, err) : nq_store_put(t->store, uri, data, len, &obj, err);
  if (rc) return rc;
  json_array_append_new(t->outputs, json_pack("{s:s,s:s,s:I,s:s}", "uri", obj.uri, "sha256", obj.sha256, "bytes",
                                              (json_int_t)obj.bytes, "type", obj.type));
  return 0;
}

/* ---- result / completion ---- */

static int publish_terminal(worker_t *w, const nq_envelope_t *env, const char *job, const char *task, const char *stage,
                            const char *status, int attempt, json_t *outputs, json_t *extra, const nq_err_t *e,
                            nq_err_t *err) {
  nq_queue_t *q = w->o->queue;
  json_t *r = json_pack("{s:i,s:s,s:s,s:s,s:s,s:i,s:O}", "v", 1, "job", job, "task", task, "stage", stage, "status", status,
                        "attempts", attempt, "outputs", outputs ? outputs : json_array());
  if (!r) return nq_err_set(err, NQ_EINTERNAL, NQ_ERR_RETRIABLE, "cannot build result for %s", task);
  if (extra) json_object_update_missing(r, extra);
  if (e && e->code) json_object_set_new(r, "error", json_pack("{s:s,s:s}", "code", nq_err_name(e->code), "message", e->msg));
  (void)env;
  char *body = json_dumps(r, JSON_COMPACT);
  json_decref(r);
  int rc = body ? nq_queue_publish_result(q, job, body, err) : NQ_ENOMEM;
  free(body);
  nq_job_counts_t after;
  int changed = 0;
  if (!rc) rc = nq_queue_job_mark(q, job, task, status, &after, &changed, err);
  if (!rc && changed && nq_job_counts_complete(&after)) {
    nq_err_t ferr = {0};
    int complete = 0;
    if (nq_sched_finalize(q, w->o->store, job, &complete, &ferr) != 0)
      NQ_WARN("worker", "job %s: manifest: %s", job, ferr.msg); /* `nextq wait` finalizes again */
    else if (complete)
      NQ_INFO("worker", "job %s complete: %lld ok, %lld dead", job, after.ok, after.dead);
  }
  return rc;
}

static void dead_letter(worker_t *w, const char *group, const nq_delivery_t *d, const char *reason) {
  nq_err_t err = {0};
  for (int tries = 0; tries < 5; tries++) {
    if (nq_queue_dead_letter(w->o->queue, group, d, reason, &err) == 0) return;
    NQ_WARN("worker", "dead-letter %s: %s (retrying)", d->id, err.msg);
    usleep(200000u << tries);
  }
  NQ_ERROR("worker", "could not dead-letter %s; it will be redelivered after its lease", d->id);
}

static void ack(worker_t *w, const char *group, const nq_delivery_t *d) {
  nq_err_t err = {0};
  for (int tries = 0; tries < 5; tries++) {
    if (nq_queue_ack(w->o->queue, group, d, &err) == 0) {
      stat_add(w, &w->stats.acks, 1);
      return;
    }
    NQ_WARN("worker", "ack %s: %s (retrying)", d->id, err.msg);
    usleep(200000u << tries);
  }
  NQ_ERROR("worker", "could not ack %s; it will be redelivered (outputs are idempotent)", d->id);
}

static void handle_malformed(worker_t *w, const char *group, const nq_delivery_t *d, const nq_err_t *perr) {
  char job[160], task[300], reason[400];
  snprintf(reason, sizeof reason, "malformed message: %s", perr->msg);
  NQ_WARN("worker", "%s on %s: %s", d->id, d->topic, reason);
  stat_add(w, &w->stats.malformed, 1);
  nq_metric_add(w->m_tasks, 1, "?", "malformed");
  if (nq_envelope_peek_ids(d->body, d->len, job, sizeof job, task, sizeof task) == 0 && task[0]) {
    nq_err_t err = {0};
    if (publish_terminal(w, NULL, job, task, "?", "dead", (int)d->delivery_count, NULL, NULL, perr, &err))
      NQ_WARN("worker", "result for malformed %s: %s", task, err.msg);
  }
  dead_letter(w, group, d, reason);
  stat_add(w, &w->stats.dead, 1);
}

/* Follow-up stage: same task id and output prefix; the earlier stages' results ride along in input.prev. */
/* The follow-up stages of a task: the stage may decide them itself (result "next": [..], e.g. NExT-GPT's LLM routes to
 * generate-image/-audio/-video by the signal tokens it produced), else the envelope's list. Borrowed. */
static json_t *next_stages(const nq_envelope_t *env, json_t *result) {
  json_t *n = json_object_get(result, "next");
  return json_is_array(n) ? n : env->next;
}

static int publish_next(worker_t *w, const nq_envelope_t *env, json_t *outputs, json_t *result, nq_err_t *err) {
  json_t *next = next_stages(env, result);
  const char *next_stage = json_string_value(json_array_get(next, 0));
  if (!next_stage || nq_id_check(next_stage, 64, "next stage", err))
    return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "task %s: bad next stage", env->task);
  json_t *rest = json_array();
  for (size_t i = 1; i < json_array_size(next); i++) json_array_append(rest, json_array_get(next, i));
  json_t *input = json_deep_copy(env->input);
  json_t *prev = json_object_get(input, "prev");
  if (!json_is_object(prev)) {
    prev = json_object();
    json_object_set_new(input, "prev", prev);
  }
  json_t *mine = json_deep_copy(result);
  json_object_del(mine, "next");
  json_object_del(mine, "next_device");
  json_object_set(mine, "outputs", outputs);
  /* the stage may route its follow-ups to another device class (result "next_device": "cuda") */
  const char *dev = json_string_value(json_object_get(result, "next_device"));
  if (!dev || (strcmp(dev, "cpu") && strcmp(dev, "cuda"))) dev = env->device;
  json_object_set_new(prev, env->stage, mine);
  nq_envelope_t ne;
  int rc = nq_envelope_make(&ne, env->job, env->task, next_stage, dev, env->max_attempts, input, env->params,
                            env->output, rest, env->trace, err);
  json_decref(input);
  json_decref(rest);
  if (rc) return rc;
  char *body = nq_envelope_dump(&ne);
  char topic[160];
  nq_queue_topic(topic, sizeof topic, next_stage, dev);
  rc = body ? nq_queue_publish(w->o->queue, topic, body, strlen(body), err) : NQ_ENOMEM;
  free(body);
  nq_envelope_deinit(&ne);
  return rc;
}

static void finish_failed(worker_t *w, const char *group, const nq_delivery_t *d, nq_task_ctx_t *t, int attempt) {
  const nq_envelope_t *env = t->env;
  nq_err_t err = {0};
  int fatal = nq_err_is_fatal(&t->err);
  if (!fatal && attempt < env->max_attempts) {
    int delay = nq_queue_backoff_ms(attempt, w->o->backoff_base_ms, w->o->backoff_max_ms);
    nq_envelope_t copy;
    char *body = NULL;
    if (nq_envelope_parse(d->body, d->len, &copy, &err) == 0) {
      nq_envelope_set_attempt(&copy, attempt + 1);
      body = nq_envelope_dump(&copy);
      nq_envelope_deinit(&copy);
    }
    NQ_INFO("worker", "task %s attempt %d/%d failed (%s); retry in %d ms", env->task, attempt, env->max_attempts,
            t->err.msg, delay);
    if (nq_queue_nack(w->o->queue, group, d, delay, body, &err) != 0)
      NQ_WARN("worker", "nack %s: %s (lease expiry will redeliver)", d->id, err.msg);
    free(body);
    stat_add(w, &w->stats.retried, 1);
    nq_metric_add(w->m_tasks, 1, env->stage, "retried");
    nq_metric_add(w->m_retries, 1, env->stage);
    return;
  }
  char reason[512];
  snprintf(reason, sizeof reason, "%s after attempt %d/%d: %s: %s", fatal ? "fatal error" : "attempts exhausted", attempt,
           env->max_attempts, nq_err_name(t->err.code), t->err.msg);
  NQ_WARN("worker", "task %s dead: %s", env->task, reason);
  if (publish_terminal(w, env, env->job, env->task, env->stage, "dead", attempt, t->outputs, t->result, &t->err, &err))
    NQ_WARN("worker", "task %s: dead result: %s", env->task, err.msg);
  dead_letter(w, group, d, reason);
  stat_add(w, &w->stats.dead, 1);
  nq_metric_add(w->m_tasks, 1, env->stage, "dead");
}

static void set_ms(nq_task_ctx_t *t, long long ms) {
  json_t *metrics = json_object_get(t->result, "metrics");
  if (!json_is_object(metrics)) {
    metrics = json_object();
    json_object_set_new(t->result, "metrics", metrics);
  }
  json_object_set_new(metrics, "ms", json_integer(ms));
}

/* A chained task's final result speaks for the whole chain: the outputs of every stage (earlier stages' first, from
 * input.prev in stage order) and, when the last stage produced no text, the text of the latest stage that did. */
static json_t *chain_outputs(const nq_envelope_t *env, json_t *mine) {
  json_t *all = json_array(), *prev = json_object_get(env->input, "prev");
  const char *k;
  json_t *v;
  json_object_foreach(prev, k, v) json_array_extend(all, json_object_get(v, "outputs"));
  json_array_extend(all, mine);
  return all;
}

static void chain_text(const nq_envelope_t *env, json_t *r) {
  const char *txt = json_string_value(json_object_get(r, "text"));
  if (txt && *txt) return;
  const char *k, *found = NULL;
  json_t *v;
  json_object_foreach(json_object_get(env->input, "prev"), k, v) {
    const char *t = json_string_value(json_object_get(v, "text"));
    if (t && *t) found = t;
  }
  if (found) json_object_set_new(r, "text", json_string(found));
}

/* Successful tasks of one run_batch: follow-up stages are published and acked one by one; terminal ones are
 * reported together with one complete_batch (result + job_mark + ack per task, one round trip). */
static void finish_ok_group(worker_t *w, const char *group, nq_delivery_t *ds, const int *map, nq_task_ctx_t *t,
                            const int *attempts, int k) {
  nq_completion_t *items = calloc((size_t)k, sizeof *items);
  char **bodies = calloc((size_t)k, sizeof *bodies);
  int *from = calloc((size_t)k, sizeof *from), m = 0;
  nq_err_t err = {0};
  for (int j = 0; items && bodies && from && j < k; j++) {
    const nq_envelope_t *env = t[j].env;
    const nq_delivery_t *d = &ds[map[j]];
    if (json_array_size(next_stages(env, t[j].result)) > 0) {
      if (publish_next(w, env, t[j].outputs, t[j].result, &err) != 0) {
        NQ_WARN("worker", "task %s: next stage: %s; releasing for retry", env->task, err.msg);
        nq_err_t e2 = {0};
        nq_queue_nack(w->o->queue, group, d, w->o->backoff_base_ms, NULL, &e2);
        continue;
      }
      ack(w, group, d);
      stat_add(w, &w->stats.ok, 1);
      nq_metric_add(w->m_tasks, 1, env->stage, "ok");
      continue;
    }
    json_t *all_outputs = chain_outputs(env, t[j].outputs);
    json_t *r = json_pack("{s:i,s:s,s:s,s:s,s:s,s:i,s:o}", "v", 1, "job", env->job, "task", env->task, "stage", env->stage,
                          "status", "ok", "attempts", attempts[j], "outputs", all_outputs);
    json_object_update_missing(r, t[j].result);
    chain_text(env, r);
    json_object_del(r, "next");
    json_object_del(r, "next_device");
    bodies[m] = json_dumps(r, JSON_COMPACT);
    json_decref(r);
    items[m] = (nq_completion_t){.d = d, .job = env->job, .task = env->task, .status = "ok", .result = bodies[m]};
    from[m++] = j;
  }
  if (m > 0) {
    nq_job_counts_t *counts = calloc((size_t)m, sizeof *counts);
    int *changed = calloc((size_t)m, sizeof *changed);
    int rc = -1;
    for (int tries = 0; tries < 3 && rc != 0; tries++) {
      rc = nq_queue_complete_batch(w->o->queue, group, items, m, counts, changed, &err);
      if (rc) {
        NQ_WARN("worker", "completing %d task(s): %s (retrying)", m, err.msg);
        usleep(200000u << tries);
      }
    }
    if (rc) { /* not reported: leases expire and the tasks run again (outputs are idempotent) */
      NQ_ERROR("worker", "could not report %d finished task(s): %s; they will be redelivered", m, err.msg);
    } else {
      stat_add(w, &w->stats.ok, m);
      stat_add(w, &w->stats.acks, m);
      for (int i = 0; i < m; i++) {
        json_t *tm = json_object_get(t[from[i]].result, "metrics");
        nq_metric_add(w->m_tasks, 1, t[from[i]].env->stage, "ok");
        nq_metric_add(w->m_tokens, (double)json_integer_value(json_object_get(tm, "new_tokens")), t[from[i]].env->stage);
        nq_metric_add(w->m_images, (double)json_integer_value(json_object_get(tm, "images")), t[from[i]].env->stage);
      }
      for (int i = 0; i < m; i++) {
        if (!changed[i] || !nq_job_counts_complete(&counts[i])) continue;
        nq_err_t ferr = {0};
        int complete = 0;
        if (nq_sched_finalize(w->o->queue, w->o->store, items[i].job, &complete, &ferr) != 0)
          NQ_WARN("worker", "job %s: manifest: %s", items[i].job, ferr.msg); /* `nextq wait` finalizes again */
        else if (complete)
          NQ_INFO("worker", "job %s complete: %lld ok, %lld dead", items[i].job, counts[i].ok, counts[i].dead);
      }
    }
    free(counts);
    free(changed);
  }
  for (int i = 0; i < m; i++) free(bodies[i]);
  free(items);
  free(bodies);
  free(from);
}

/* ---- processing a fetched batch of one stage ---- */

/* done[i] = 1 for redeliveries (delivery count > 1; every delivery where counts are lower bounds, i.e. Kafka) whose
 * task is already recorded ok: a worker that died after publishing a task's result but before its ack (or, on Kafka,
 * before its offset commit landed -- a group that keeps rebalancing refuses commits) had the task handed out again. Outputs are idempotent, so running it again would be
 * harmless but wasted, and on Kafka each run appends one more result to the job's results partition. One query per
 * job of the batch; a queue without tasks_ok, or a failed query, runs them. */
static void skip_recorded(worker_t *w, const nq_delivery_t *ds, const nq_envelope_t *envs, const unsigned char *valid,
                          unsigned char *done, int n) {
  const char **tasks = calloc((size_t)n, sizeof *tasks);
  unsigned char *seen = calloc((size_t)n, 1), *ok = calloc((size_t)n, 1);
  int *idx = calloc((size_t)n, sizeof *idx);
  const int lower = w->o->queue->vt->counts_lower_bound;
  for (int i = 0; tasks && seen && ok && idx && i < n; i++) {
    if (!valid[i] || seen[i] || (ds[i].delivery_count <= 1 && !lower)) continue;
    int k = 0;
    for (int j = i; j < n; j++)
      if (valid[j] && !seen[j] && (ds[j].delivery_count > 1 || lower) && !strcmp(envs[j].job, envs[i].job)) {
        seen[j] = 1;
        idx[k] = j;
        tasks[k++] = envs[j].task;
      }
    nq_err_t err = {0};
    if (nq_queue_tasks_ok(w->o->queue, envs[i].job, tasks, k, ok, &err) != 0) {
      if (err.code != NQ_EUNSUPPORTED) NQ_DEBUG("worker", "job %s: recorded statuses: %s", envs[i].job, err.msg);
      continue;
    }
    for (int t = 0; t < k; t++) done[idx[t]] = ok[t];
  }
  free(tasks);
  free(seen);
  free(ok);
  free(idx);
}

static void process(worker_t *w, int si, const char *group, nq_delivery_t *ds, int n, nq_store_batch_t *sbatch) {
  const nq_stage_t *st = w->stages[si];
  nq_envelope_t *envs = calloc((size_t)n, sizeof *envs);
  nq_task_ctx_t *ctx = calloc((size_t)n, sizeof *ctx);
  int *attempts = calloc((size_t)n, sizeof *attempts), *map = calloc((size_t)n, sizeof *map);
  unsigned char *valid = calloc((size_t)n, 1), *done = calloc((size_t)n, 1);
  if (!envs || !ctx || !attempts || !map || !valid || !done) {
    NQ_ERROR("worker", "out of memory; %d deliveries left to their lease", n);
    goto out;
  }
  int m = 0;
  for (int i = 0; i < n; i++) {
    nq_err_t perr = {0};
    if (nq_envelope_parse(ds[i].body, ds[i].len, &envs[i], &perr) != 0) {
      handle_malformed(w, group, &ds[i], &perr);
      continue;
    }
    if (strcmp(envs[i].stage, st->name) != 0) {
      nq_err_set(&perr, NQ_EFORMAT, NQ_ERR_FATAL, "task for stage '%s' on the queue of stage '%s'", envs[i].stage, st->name);
      handle_malformed(w, group, &ds[i], &perr);
      nq_envelope_deinit(&envs[i]);
      continue;
    }
    valid[i] = 1;
  }
  skip_recorded(w, ds, envs, valid, done, n);
  for (int i = 0; i < n; i++) {
    if (!valid[i]) continue;
    if (done[i]) { /* its result is recorded: the previous run finished, only its ack was lost */
      ack(w, group, &ds[i]);
      stat_add(w, &w->stats.skipped, 1);
      nq_metric_add(w->m_tasks, 1, envs[i].stage, "skipped");
      nq_envelope_deinit(&envs[i]);
      continue;
    }
    int attempt = envs[i].attempt + (int)(ds[i].delivery_count ? ds[i].delivery_count - 1 : 0);
    if (attempt > envs[i].max_attempts) {
      nq_err_t e = {0}, e2 = {0};
      nq_err_set(&e, NQ_ELIMIT, NQ_ERR_FATAL, "delivered %u times (lease expired without ack: the worker died or hung)",
                 ds[i].delivery_count);
      char reason[400];
      snprintf(reason, sizeof reason, "attempts exhausted (%d/%d): %s", attempt, envs[i].max_attempts, e.msg);
      publish_terminal(w, &envs[i], envs[i].job, envs[i].task, envs[i].stage, "dead", attempt, NULL, NULL, &e, &e2);
      dead_letter(w, group, &ds[i], reason);
      stat_add(w, &w->stats.dead, 1);
      nq_metric_add(w->m_tasks, 1, envs[i].stage, "dead");
      nq_envelope_deinit(&envs[i]);
      continue;
    }
    ctx[m] = (nq_task_ctx_t){.env = &envs[i], .store = w->o->store, .outputs = json_array(), .result = json_object()};
    attempts[m] = attempt;
    map[m] = i;
    m++;
  }
  int mb = st->max_batch > 0 ? st->max_batch : 1;
  for (int off = 0; off < m; off += mb) {
    int k = m - off < mb ? m - off : mb;
    long long t0 = now_ms();
    for (int j = off; j < off + k; j++) ctx[j].batch = sbatch;
    nq_log_set_context(ctx[off].env->job, ctx[off].env->task, ctx[off].env->trace);
    st->run_batch(w->state[si], ctx + off, k);
    long long ms = now_ms() - t0;
    for (int j = off; j < off + k; j++) nq_metric_observe(w->m_latency, (double)ms / 1000.0, st->name);
    /* group commit of every output of the batch before anything is reported */
    nq_err_t cerr = {0};
    if (sbatch && nq_store_batch_commit(sbatch, &cerr) != 0) {
      for (int j = off; j < off + k; j++)
        if (ctx[j].rc == 0) nq_task_fail(&ctx[j], cerr.code, NQ_ERR_RETRIABLE, "store commit: %s", cerr.msg);
    }
    int *okmap = calloc((size_t)k, sizeof *okmap), *okatt = calloc((size_t)k, sizeof *okatt), nok = 0;
    nq_task_ctx_t *okctx = calloc((size_t)k, sizeof *okctx);
    for (int j = off; j < off + k; j++) {
      nq_log_set_context(ctx[j].env->job, ctx[j].env->task, ctx[j].env->trace);
      set_ms(&ctx[j], ms);
      if (ctx[j].rc == 0 && okmap && okatt && okctx) {
        okmap[nok] = map[j];
        okatt[nok] = attempts[j];
        okctx[nok++] = ctx[j]; /* shallow: ctx[j] keeps ownership */
      } else if (ctx[j].rc == 0) {
        nq_task_fail(&ctx[j], NQ_ENOMEM, NQ_ERR_RETRIABLE, "worker: out of memory");
        finish_failed(w, group, &ds[map[j]], &ctx[j], attempts[j]);
      } else {
        finish_failed(w, group, &ds[map[j]], &ctx[j], attempts[j]);
      }
    }
    if (nok) finish_ok_group(w, group, ds, okmap, okctx, okatt, nok);
    free(okmap);
    free(okatt);
    free(okctx);
    nq_log_set_context(NULL, NULL, NULL);
  }
  for (int j = 0; j < m; j++) {
    json_decref(ctx[j].outputs);
    json_decref(ctx[j].result);
    nq_envelope_deinit(&envs[map[j]]);
  }
out:
  free(valid);
  free(done);
  free(envs);
  free(ctx);
  free(attempts);
  free(map);
}

static void *task_thread(void *arg) {
  thread_arg_t *ta = arg;
  worker_t *w = ta->w;
  const nq_worker_opts_t *o = w->o;
  int ns = o->nstages;
  long long last_work = now_ms();
  int si = ta->idx % ns;
  int peek = 0; /* the last batch had tasks: the next stage is only peeked at (no wait) */
  nq_store_batch_t *sbatch = nq_store_batch_new(o->store); /* this thread's group commit */
  while (!*o->stop) {
    const nq_stage_t *st = w->stages[si];
    char t1[160], t2[160], group[128];
    nq_queue_topic(t1, sizeof t1, st->name, o->device);
    nq_queue_topic(t2, sizeof t2, st->name, "any");
    nq_queue_group(group, sizeof group, st->name);
    const char *topics[2] = {t1, t2};
    nq_delivery_t *ds = NULL;
    int n = 0;
    nq_err_t err = {0};
    int block = ns > 1 ? (peek ? 0 : o->block_ms < 100 ? o->block_ms : 100) : o->block_ms;
    if (nq_queue_fetch(o->queue, topics, 2, group, ta->consumer, o->batch, block, &ds, &n, &err) != 0) {
      NQ_WARN("worker", "fetch from %s: %s", t1, err.msg);
      usleep(500000);
      n = 0;
    }
    if (n > 0) {
      inflight_t *nodes = calloc((size_t)n, sizeof *nodes);
      pthread_mutex_lock(&w->mu);
      w->stats.fetched += n;
      nq_metric_add(w->m_inflight, (double)n);
      for (int i = 0; nodes && i < n; i++) {
        nodes[i] = (inflight_t){&ds[i], group, ta->consumer, w->inflight};
        w->inflight = &nodes[i];
      }
      pthread_mutex_unlock(&w->mu);
      process(w, si, group, ds, n, sbatch);
      nq_metric_add(w->m_inflight, -(double)n);
      pthread_mutex_lock(&w->mu);
      for (inflight_t **pp = &w->inflight; *pp;) {
        if (nodes && *pp >= nodes && *pp < nodes + n) *pp = (*pp)->next;
        else pp = &(*pp)->next;
      }
      pthread_mutex_unlock(&w->mu);
      free(nodes);
      nq_delivery_free_array(ds, n);
      last_work = now_ms();
      /* Stages take turns after every batch: a stage with a long backlog would otherwise keep the thread from the
       * tasks its consumers of the other stages hold (on Kafka a partition's tasks go to one consumer only). The
       * other stage is peeked at without waiting, so an empty one costs no time. */
      peek = ns > 1;
      si = (si + 1) % ns;
    } else {
      free(ds);
      peek = 0;
      si = (si + 1) % ns;
      if (o->exit_when_idle && now_ms() - last_work > o->idle_ms) break;
    }
  }
  nq_store_batch_free(sbatch);
  pthread_mutex_lock(&w->mu);
  w->running--;
  pthread_cond_broadcast(&w->cv);
  pthread_mutex_unlock(&w->mu);
  return NULL;
}

/* Heartbeat: extend the lease of every task in flight every lease/3. */
static void *heartbeat_thread(void *arg) {
  worker_t *w = arg;
  int period = w->o->queue->lease_ms / 3;
  if (period < 50) period = 50;
  pthread_mutex_lock(&w->mu);
  while (w->running > 0) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += period / 1000;
    ts.tv_nsec += (long)(period % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
      ts.tv_sec++;
      ts.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(&w->cv, &w->mu, &ts);
    for (inflight_t *f = w->inflight; f; f = f->next) {
      nq_err_t err = {0};
      if (nq_queue_extend_lease(w->o->queue, f->group, f->consumer, f->d, &err) != 0)
        NQ_WARN("worker", "heartbeat %s: %s", f->d->id, err.msg);
    }
  }
  pthread_mutex_unlock(&w->mu);
  return NULL;
}

int nq_worker_run(const nq_worker_opts_t *opts_in, nq_worker_stats_t *stats, nq_err_t *err) {
  nq_worker_opts_t o = *opts_in;
  if (o.threads < 1) o.threads = 1;
  if (o.batch < 1) o.batch = 1;
  if (o.block_ms <= 0) o.block_ms = 1000;
  if (o.backoff_base_ms <= 0) o.backoff_base_ms = 1000;
  if (o.backoff_max_ms <= 0) o.backoff_max_ms = 60000;
  if (o.grace_ms <= 0) o.grace_ms = 30000;
  if (o.idle_ms <= 0) o.idle_ms = 2000;
  if (!o.device) o.device = "cpu";
  if (o.nstages < 1) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "worker: no stages to serve");
  static volatile sig_atomic_t never = 0;
  if (!o.stop) o.stop = &never;
  worker_t w = {.o = &o};
  pthread_mutex_init(&w.mu, NULL);
  pthread_cond_init(&w.cv, NULL);
  gethostname(w.host, sizeof w.host - 1);
  w.m_tasks = nq_metrics_counter("nq_worker_tasks_total", "task deliveries finished, by stage and status "
                                 "(ok|retried|dead|malformed)", "stage,status");
  w.m_latency = nq_metrics_histogram("nq_worker_task_seconds", "stage run time of a task's batch", "stage", NULL, 0);
  w.m_retries = nq_metrics_counter("nq_worker_retries_total", "retriable failures sent back with backoff", "stage");
  w.m_inflight = nq_metrics_gauge("nq_worker_in_flight", "deliveries fetched and not yet finished", NULL);
  w.m_tokens = nq_metrics_counter("nq_worker_tokens_total", "tokens generated (rate() = tokens/s)", "stage");
  w.m_images = nq_metrics_counter("nq_worker_images_total", "images generated (rate() = images/s)", "stage");
  w.m_load = nq_metrics_gauge("nq_worker_model_load_seconds", "stage init time (model load)", "stage");
  w.stages = calloc((size_t)o.nstages, sizeof *w.stages);
  w.state = calloc((size_t)o.nstages, sizeof *w.state);
  int rc = 0, inited = 0;
  if (!w.stages || !w.state) {
    rc = nq_err_set(err, NQ_ENOMEM, NQ_ERR_FATAL, "worker: out of memory");
    goto out;
  }
  for (int i = 0; i < o.nstages; i++, inited++) {
    w.stages[i] = nq_stage_find(o.stages[i]);
    if (!w.stages[i]) {
      rc = nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "worker: unknown stage '%s' (known: %s)", o.stages[i], nq_stage_names());
      goto out;
    }
    if (w.stages[i]->init) {
      const json_t *cfg = o.stage_config ? json_object_get(o.stage_config, o.stages[i]) : NULL;
      long long tl = now_ms();
      if ((rc = w.stages[i]->init(&w.state[i], cfg, err))) {
        nq_err_prefix(err, "stage %s", o.stages[i]);
        goto out;
      }
      nq_metric_set(w.m_load, (double)(now_ms() - tl) / 1000.0, o.stages[i]);
    }
  }
  thread_arg_t *args = calloc((size_t)o.threads, sizeof *args);
  pthread_t *tids = calloc((size_t)o.threads, sizeof *tids);
  if (!args || !tids) {
    free(args);
    free(tids);
    rc = nq_err_set(err, NQ_ENOMEM, NQ_ERR_FATAL, "worker: out of memory");
    goto out;
  }
  w.running = o.threads;
  for (int i = 0; i < o.threads; i++) {
    args[i].w = &w;
    args[i].idx = i;
    snprintf(args[i].consumer, sizeof args[i].consumer, "%s-%s-%d-%d", o.consumer ? o.consumer : "w", w.host, (int)getpid(), i);
    pthread_create(&tids[i], NULL, task_thread, &args[i]);
  }
  pthread_t hb;
  pthread_create(&hb, NULL, heartbeat_thread, &w);
  NQ_INFO("worker", "serving %d stage(s) on %s with %d thread(s), batch %d", o.nstages, o.queue->url, o.threads, o.batch);

  /* Wait for the stop flag (or the threads to finish when idle-exiting), then drain within grace_ms. */
  pthread_mutex_lock(&w.mu);
  while (!*o.stop && w.running > 0) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += 100000000L;
    if (ts.tv_nsec >= 1000000000L) {
      ts.tv_sec++;
      ts.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(&w.cv, &w.mu, &ts);
  }
  if (*o.stop) NQ_INFO("worker", "draining: %d thread(s) finishing in-flight tasks (grace %d ms)", w.running, o.grace_ms);
  long long deadline = now_ms() + o.grace_ms;
  while (w.running > 0 && now_ms() < deadline) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += 50000000L;
    if (ts.tv_nsec >= 1000000000L) {
      ts.tv_sec++;
      ts.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(&w.cv, &w.mu, &ts);
  }
  int stuck = w.running;
  if (stuck) { /* grace over: hand the unfinished tasks back so another worker takes them now */
    for (inflight_t *f = w.inflight; f; f = f->next) {
      nq_err_t e = {0};
      if (nq_queue_nack(o.queue, f->group, f->d, 0, NULL, &e) != 0) NQ_WARN("worker", "release %s: %s", f->d->id, e.msg);
    }
    NQ_WARN("worker", "grace period over: released %d in-flight task thread(s)' work back to the queue", stuck);
  }
  pthread_cond_broadcast(&w.cv);
  pthread_mutex_unlock(&w.mu);
  if (!stuck) {
    for (int i = 0; i < o.threads; i++) pthread_join(tids[i], NULL);
    pthread_join(hb, NULL);
    free(args);
    free(tids);
  } else { /* threads still inside a stage: leave them (the process exits); do not free what they use */
    pthread_detach(hb);
    for (int i = 0; i < o.threads; i++) pthread_detach(tids[i]);
    w.stats.released = stuck;
    if (stats) *stats = w.stats;
    return 0;
  }
  if (stats) *stats = w.stats;
out:
  for (int i = 0; i < inited; i++)
    if (w.stages[i] && w.stages[i]->fini && w.state[i]) w.stages[i]->fini(w.state[i]);
  free(w.stages);
  free(w.state);
  pthread_mutex_destroy(&w.mu);
  pthread_cond_destroy(&w.cv);
  return rc;
}

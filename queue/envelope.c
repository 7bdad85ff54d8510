#include "queue/envelope.h"

#include <stdlib.h>
#include <string.h>

static const char *const known_keys[] = {"v", "job", "task", "stage", "device", "attempt", "max_attempts", "input",
                                         "params", "output", "next", "trace", "created", NULL};

int nq_id_check(const char *id, size_t max, const char *what, nq_err_t *err) {
  size_t n = id ? strlen(id) : 0;
  if (n == 0 || n > max) return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: length %zu not in 1..%zu", what, n, max);
  if (id[0] == '/' || id[0] == '.' || strstr(id, "..") || strstr(id, "//"))
    return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: '%s' is not a valid id", what, id);
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)id[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
          c == '-' || c == ':' || c == '/'))
      return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: invalid character 0x%02x at %zu", what, c, i);
  }
  return 0;
}

static int get_str(json_t *o, const char *k, int required, size_t max, const char **out, nq_err_t *err) {
  json_t *v = json_object_get(o, k);
  if (!v) {
    *out = "";
    return required ? nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "envelope: missing field '%s'", k) : 0;
  }
  if (!json_is_string(v)) return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "envelope: field '%s' must be a string", k);
  if (json_string_length(v) > max) return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "envelope: field '%s' longer than %zu", k, max);
  if (strlen(json_string_value(v)) != json_string_length(v))
    return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "envelope: field '%s' contains NUL", k);
  *out = json_string_value(v);
  return 0;
}

static int validate(nq_envelope_t *e, nq_err_t *err) {
  json_t *o = e->obj;
  if (!json_is_object(o)) return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "envelope: not a JSON object");
  json_t *v = json_object_get(o, "v");
  if (!json_is_integer(v)) return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "envelope: missing integer field 'v'");
  if (json_integer_value(v) != NQ_ENVELOPE_VERSION)
    return nq_err_set(err, NQ_EUNSUPPORTED, NQ_ERR_FATAL, "envelope: unknown version %lld (this worker speaks %d)",
                      (long long)json_integer_value(v), NQ_ENVELOPE_VERSION);
  const char *key;
  json_t *val;
  json_object_foreach(o, key, val) {
    int ok = 0;
    for (int i = 0; known_keys[i]; i++) ok |= strcmp(key, known_keys[i]) == 0;
    if (!ok) return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "envelope: unknown field '%.64s'", key);
  }
  int rc;
  if ((rc = get_str(o, "job", 1, 128, &e->job, err)) || (rc = get_str(o, "task", 1, 256, &e->task, err)) ||
      (rc = get_str(o, "stage", 1, 64, &e->stage, err)) || (rc = get_str(o, "device", 0, 16, &e->device, err)) ||
      (rc = get_str(o, "output", 1, 4096, &e->output, err)) || (rc = get_str(o, "trace", 0, 128, &e->trace, err)))
    return rc;
  if ((rc = nq_id_check(e->job, 128, "envelope: field 'job'", err)) || (rc = nq_id_check(e->task, 256, "envelope: field 'task'", err)) ||
      (rc = nq_id_check(e->stage, 64, "envelope: field 'stage'", err)))
    return rc;
  if (!*e->device) e->device = "cpu";
  if (strcmp(e->device, "cpu") && strcmp(e->device, "cuda") && strcmp(e->device, "any"))
    return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "envelope: field 'device': '%s' is not cpu|cuda|any", e->device);
  json_t *a = json_object_get(o, "attempt"), *m = json_object_get(o, "max_attempts");
  if (a && !json_is_integer(a)) return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "envelope: field 'attempt' must be an integer");
  if (m && !json_is_integer(m)) return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "envelope: field 'max_attempts' must be an integer");
  long long at = a ? json_integer_value(a) : 1, ma = m ? json_integer_value(m) : 3;
  if (at < 1 || at > 1000) return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "envelope: field 'attempt': %lld not in 1..1000", at);
  if (ma < 1 || ma > 100) return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "envelope: field 'max_attempts': %lld not in 1..100", ma);
  e->attempt = (int)at;
  e->max_attempts = (int)ma;
  e->input = json_object_get(o, "input");
  if (!json_is_object(e->input)) return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "envelope: field 'input' must be an object");
  e->params = json_object_get(o, "params");
  if (!e->params) {
    json_object_set_new(o, "params", json_object());
    e->params = json_object_get(o, "params");
  }
  if (!json_is_object(e->params)) return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "envelope: field 'params' must be an object");
  e->next = json_object_get(o, "next");
  if (!e->next) {
    json_object_set_new(o, "next", json_array());
    e->next = json_object_get(o, "next");
  }
  if (!json_is_array(e->next) || json_array_size(e->next) > 16)
    return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "envelope: field 'next' must be an array of at most 16 stages");
  size_t i;
  json_array_foreach(e->next, i, val) {
    if (!json_is_string(val) || nq_id_check(json_string_value(val), 64, "envelope: field 'next'", err))
      return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "envelope: field 'next'[%zu] is not a stage name", i);
  }
  return 0;
}

int nq_envelope_parse(const char *body, size_t len, nq_envelope_t *env, nq_err_t *err) {
  memset(env, 0, sizeof *env);
  if (len > NQ_ENVELOPE_MAX_BYTES)
    return nq_err_set(err, NQ_ELIMIT, NQ_ERR_FATAL, "envelope: %zu bytes exceeds the %u byte limit", len, NQ_ENVELOPE_MAX_BYTES);
  json_error_t je;
  env->obj = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
  if (!env->obj) return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "envelope: invalid JSON at line %d column %d: %s", je.line, je.column, je.text);
  int rc = validate(env, err);
  if (rc) {
    json_decref(env->obj);
    memset(env, 0, sizeof *env);
  }
  return rc;
}

int nq_envelope_make(nq_envelope_t *env, const char *job, const char *task, const char *stage, const char *device,
                     int max_attempts, json_t *input, json_t *params, const char *output, json_t *next,
                     const char *trace, nq_err_t *err) {
  memset(env, 0, sizeof *env);
  /* "o" steals a reference: pass our own (incref'ed caller objects or fresh defaults) */
  json_t *o = json_pack("{s:i,s:s,s:s,s:s,s:s,s:i,s:i,s:o,s:o,s:s,s:o}", "v", NQ_ENVELOPE_VERSION, "job", job, "task", task,
                        "stage", stage, "device", device ? device : "cpu", "attempt", 1, "max_attempts", max_attempts,
                        "input", input ? json_incref(input) : json_object(), "params",
                        params ? json_incref(params) : json_object(), "output", output, "next",
                        next ? json_incref(next) : json_array());
  if (!o) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "envelope: cannot build message for task %s", task ? task : "?");
  if (trace && *trace) json_object_set_new(o, "trace", json_string(trace));
  env->obj = o;
  int rc = validate(env, err);
  if (rc) {
    json_decref(o);
    memset(env, 0, sizeof *env);
  }
  return rc;
}

char *nq_envelope_dump(const nq_envelope_t *env) { return json_dumps(env->obj, JSON_COMPACT); }

int nq_envelope_set_attempt(nq_envelope_t *env, int attempt) {
  env->attempt = attempt;
  return json_object_set_new(env->obj, "attempt", json_integer(attempt));
}

void nq_envelope_deinit(nq_envelope_t *env) {
  json_decref(env->obj);
  memset(env, 0, sizeof *env);
}

int nq_envelope_peek_ids(const char *body, size_t len, char *job, size_t jcap, char *task, size_t tcap) {
  job[0] = task[0] = 0;
  json_t *o = json_loadb(body, len, 0, NULL);
  if (!o) return -1;
  const char *j = json_string_value(json_object_get(o, "job")), *t = json_string_value(json_object_get(o, "task"));
  if (j && !nq_id_check(j, 128, "job", NULL)) snprintf(job, jcap, "%s", j);
  if (t && !nq_id_check(t, 256, "task", NULL)) snprintf(task, tcap, "%s", t);
  json_decref(o);
  return job[0] ? 0 : -1;
}

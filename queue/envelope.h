/* queue/envelope.h — the task message (envelope v1, JSON) and the result message.
 *
 *   {"v":1,"job":"J","task":"J/000042","stage":"llm","device":"cpu","attempt":1,"max_attempts":3,
 *    "input":{...},"params":{...},"output":"file:///out/J/000042/","next":["generate"],"trace":"..."}
 *
 * Parsing validates every field (types, lengths, known keys, version); a message that fails goes to the
 * dead-letter queue with the parse error as the reason. */
#ifndef NQ_QUEUE_ENVELOPE_H
#define NQ_QUEUE_ENVELOPE_H

#include <jansson.h>
#include <stddef.h>

#include "common/err.h"

#define NQ_ENVELOPE_VERSION 1
#define NQ_ENVELOPE_MAX_BYTES (16u << 20)

typedef struct nq_envelope {
  json_t *obj;          /* owned: the whole message; the fields below borrow from it */
  const char *job;      /* borrowed */
  const char *task;     /* borrowed */
  const char *stage;    /* borrowed */
  const char *device;   /* borrowed: cpu|cuda|any */
  const char *output;   /* borrowed: output prefix URI of this task (ends with '/') */
  const char *trace;    /* borrowed, "" when absent */
  int attempt;          /* 1-based */
  int max_attempts;
  json_t *input;        /* borrowed object */
  json_t *params;       /* borrowed object ({} when absent) */
  json_t *next;         /* borrowed array of stage names ([] when absent) */
} nq_envelope_t;

/* Parse and validate; on error *env is zeroed and err says what and where ("envelope: field 'attempt': ..."). */
int nq_envelope_parse(const char *body, size_t len, nq_envelope_t *env, nq_err_t *err);
/* Build a new envelope (takes references: input/params/next are incref'ed, may be NULL). */
int nq_envelope_make(nq_envelope_t *env, const char *job, const char *task, const char *stage, const char *device,
                     int max_attempts, json_t *input, json_t *params, const char *output, json_t *next,
                     const char *trace, nq_err_t *err);
/* Serialise (compact JSON, malloc'ed, caller frees). */
char *nq_envelope_dump(const nq_envelope_t *env);
int nq_envelope_set_attempt(nq_envelope_t *env, int attempt);
void nq_envelope_deinit(nq_envelope_t *env);

/* Peek job/task ids from a body that failed validation (best effort; for DLQ bookkeeping). */
int nq_envelope_peek_ids(const char *body, size_t len, char *job, size_t jcap, char *task, size_t tcap);

/* Validate an id used in keys: [A-Za-z0-9._:-/], 1..max bytes, no "..", no leading '/'. */
int nq_id_check(const char *id, size_t max, const char *what, nq_err_t *err);

#endif

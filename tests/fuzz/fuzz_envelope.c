/* tests/fuzz/fuzz_envelope.c — task envelope JSON parser (queue/envelope.h). A message that parses must
 * dump and parse again to the same fields; peek_ids must never fail hard on anything. */
#include <stdint.h>
#include <string.h>

#include "queue/envelope.h"
#include "tests/fuzz/fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  nq_envelope_t env;
  nq_err_t err = {0};
  char job[128], task[256];
  (void)nq_envelope_peek_ids((const char *)data, size, job, sizeof job, task, sizeof task);
  if (nq_envelope_parse((const char *)data, size, &env, &err) < 0) {
    if (!err.msg[0]) __builtin_trap(); /* every failure must say why */
    return 0;
  }
  char *s = nq_envelope_dump(&env);
  if (s) {
    nq_envelope_t env2;
    nq_err_t err2 = {0};
    if (nq_envelope_parse(s, strlen(s), &env2, &err2) < 0) __builtin_trap(); /* a dumped envelope re-parses */
    if (strcmp(env.task, env2.task) || strcmp(env.job, env2.job) || env.attempt != env2.attempt) __builtin_trap();
    if (nq_envelope_set_attempt(&env2, env2.attempt + 1) == 0) free(nq_envelope_dump(&env2));
    nq_envelope_deinit(&env2);
    free(s);
  }
  nq_envelope_deinit(&env);
  return 0;
}

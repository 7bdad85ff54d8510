/* tests/fuzz/fuzz_job_yaml.c — job spec YAML loader (scheduler/scheduler.h nq_job_spec_load_string). */
#include <stdint.h>

#include "scheduler/scheduler.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  nq_job_spec_t spec;
  nq_err_t err = {0};
  if (nq_job_spec_load_string((const char *)data, size, "fuzz.yaml", "/nonexistent-fuzz-dir", &spec, &err) == 0)
    nq_job_spec_deinit(&spec);
  else if (!err.msg[0])
    __builtin_trap();
  return 0;
}

/* tests/helpers/outputs.h — check a finished job's outputs the way the chaos tests need: one manifest row per task,
 * no task twice, every first output present and whole (size as recorded), and every task directory holding exactly
 * its one output file (no temp files, no duplicates). Criterion-free: bench binaries link the helpers too. */
#ifndef NQ_TESTS_OUTPUTS_H
#define NQ_TESTS_OUTPUTS_H

#include <stddef.h>

/* job_dir: <output>/<job id>. Returns the number of ok rows, or -1 with the reason in why. */
int nq_check_job_outputs(const char *job_dir, int expect, const char *outname, char *why, size_t cap);

#endif

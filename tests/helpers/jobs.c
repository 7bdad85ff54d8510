#include "tests/helpers/jobs.h"

#include <stdio.h>
#include <string.h>

#include "scheduler/scheduler.h"

int nq_test_submit_rows(nq_queue_t *q, const char *dir, int n, const char *yaml, nq_store_t **st, char *job,
                        size_t cap, nq_err_t *err) {
  char path[512];
  snprintf(path, sizeof path, "%s/in.jsonl", dir);
  FILE *f = fopen(path, "w");
  if (!f) return nq_err_set(err, NQ_EIO, 0, "cannot write %s", path);
  for (int i = 0; i < n; i++) fprintf(f, "{\"id\":\"r%02d\",\"prompt\":\"p %d\"}\n", i, i);
  if (fclose(f) != 0) return nq_err_set(err, NQ_EIO, 0, "cannot write %s", path);
  nq_job_spec_t spec;
  int rc = nq_job_spec_load_string(yaml, strlen(yaml), "job.yaml", dir, &spec, err);
  if (rc) return rc;
  nq_store_cfg_t sc = {.file_root = dir};
  *st = NULL;
  rc = nq_store_new(&sc, st, err);
  if (!rc) rc = nq_sched_submit(q, *st, &spec, job, cap, NULL, NULL, err);
  nq_job_spec_deinit(&spec);
  return rc;
}

/* tests/fuzz/fuzz_tar.c — WebDataset tar reader (datasets/datasets.h). The input is written to a per-process
 * temp shard, read record by record through nq_ds_open / nq_ds_next (going on after bad members, as the
 * scheduler does), and every media URI of every record is read back with nq_ds_read_uri. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "datasets/datasets.h"
#include "tests/fuzz/fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char g_path[256];

static void fuzz_tar_cleanup(void) {
  if (g_path[0]) unlink(g_path);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!g_path[0]) {
    const char *tmp = getenv("TMPDIR");
    snprintf(g_path, sizeof g_path, "%s/nq-fuzz-tar-%d.tar", tmp && *tmp ? tmp : "/tmp", (int)getpid());
    atexit(fuzz_tar_cleanup);
  }
  if (nq_fuzz_write_file(g_path, data, size) < 0) return 0;
  nq_ds_spec_t spec = {.format = NQ_DS_WEBDATASET, .path = g_path, .max_record_bytes = 1u << 20};
  nq_dataset_t *ds = NULL;
  nq_err_t err = {0};
  if (nq_ds_open(&spec, &ds, &err) < 0) return 0;
  for (int guard = 0; guard < 4096; guard++) {
    json_t *rec = NULL;
    nq_err_clear(&err);
    int rc = nq_ds_next(ds, &rec, &err);
    if (rc == 0) break;
    if (rc < 0) {
      if (!err.msg[0]) __builtin_trap();
      continue;
    }
    if (!json_is_string(json_object_get(rec, "key"))) __builtin_trap();
    json_t *media = json_object_get(rec, "media");
    size_t i;
    json_t *m;
    json_array_foreach(media, i, m) {
      const char *uri = json_string_value(json_object_get(m, "uri"));
      if (!uri) __builtin_trap();
      void *buf = NULL;
      size_t len = 0;
      if (nq_ds_read_uri(uri, &buf, &len, &err) == 0) {
        nq_fuzz_sink += nq_fuzz_touch(buf, len + 1); /* NUL one past the end */
        free(buf);
      }
    }
    json_decref(rec);
  }
  nq_ds_free(ds);
  return 0;
}

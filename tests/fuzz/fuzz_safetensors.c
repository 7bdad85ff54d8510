/* tests/fuzz/fuzz_safetensors.c — safetensors header validation (compute/io/safetensors.h). The input is
 * a whole .safetensors file, opened through a memfd; every tensor's data range is read in full so ASan
 * checks that validation kept it inside the mapping. */
#include <stdint.h>
#include <unistd.h>

#include "compute/io/safetensors.h"
#include "tests/fuzz/fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char path[64];
  int fd = nq_fuzz_memfd(data, size, path, sizeof path);
  if (fd < 0) return 0;
  nq_st_file_t *f = NULL;
  nq_err_t err = {0};
  if (nq_st_open(path, &f, &err) == 0) {
    unsigned s = 0;
    for (size_t i = 0; i < nq_st_count(f); i++) {
      const nq_st_tensor_t *t = nq_st_get(f, i);
      s += nq_fuzz_touch(t->data, t->nbytes);
      if (nq_st_find(f, t->name) == NULL) __builtin_trap();
      if (nq_st_numel(t) < 0) __builtin_trap();
    }
    (void)nq_st_metadata(f, "format");
    nq_fuzz_sink += s;
    nq_st_close(f);
  } else if (!err.msg[0]) {
    __builtin_trap();
  }
  close(fd);
  return 0;
}

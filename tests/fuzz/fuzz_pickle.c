/* tests/fuzz/fuzz_pickle.c — restricted unpickler + torch.save reader (compute/io/pickle.h): the input is a
 * torch.save image (zip or legacy) opened from memory, and the same bytes run through nq_pickle_validate
 * as a bare pickle stream. Tight limits keep one input cheap. */
#include <stdint.h>

#include "compute/io/pickle.h"
#include "tests/fuzz/fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  nq_pickle_limits_t lim;
  nq_pickle_limits_init(&lim);
  lim.arena_base = 8u << 20;
  lim.max_expand_bytes = 8u << 20;
  nq_err_t err = {0};
  (void)nq_pickle_validate(data, size, &lim, &err);
  nq_ckpt_t *ck = NULL;
  nq_err_clear(&err);
  if (nq_ckpt_open_mem(data, size, "fuzz.pt", &lim, &ck, &err) == 0) {
    unsigned s = 0;
    for (size_t i = 0; i < nq_ckpt_count(ck); i++) {
      const nq_ckpt_tensor_t *t = nq_ckpt_get(ck, i);
      s += nq_fuzz_touch(t->data, t->nbytes);
      if (!nq_ckpt_find(ck, t->name)) __builtin_trap();
    }
    for (size_t i = 0; i < nq_ckpt_value_count(ck); i++) {
      s += nq_fuzz_touch(nq_ckpt_value_name(ck, i), 1);
      s += nq_fuzz_touch(nq_ckpt_value_repr(ck, i), 1);
    }
    nq_fuzz_sink += s;
    nq_ckpt_close(ck);
  } else if (!err.msg[0]) {
    __builtin_trap();
  }
  return 0;
}

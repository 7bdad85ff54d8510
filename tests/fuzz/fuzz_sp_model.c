/* tests/fuzz/fuzz_sp_model.c — the SentencePiece ModelProto reader (compute/tokenizers/sentencepiece.h,
 * a hand-written protobuf parser): the input is a tokenizer.model read through a memfd; a model that loads
 * encodes and decodes a fixed text. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "compute/tokenizers/sentencepiece.h"
#include "tests/fuzz/fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char path[64];
  int fd = nq_fuzz_memfd(data, size, path, sizeof path);
  if (fd < 0) return 0;
  nq_sp_tokenizer_t *t = NULL;
  nq_err_t err = {0};
  if (nq_sp_load_model(path, &t, &err) == 0) {
    static const char text[] = "Hello  world, \xe2\x96\x81x <0x41> caf\xc3\xa9 \xf0\x9f\x98\x80!";
    nq_sp_encode_opts_t o = {.add_bos = true, .add_eos = true, .add_dummy_prefix = -1};
    int32_t *ids = NULL;
    int n = 0;
    if (nq_sp_encode(t, text, sizeof text - 1, &o, &ids, &n, &err) == 0) {
      for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= nq_sp_vocab_size(t)) __builtin_trap();
      free(nq_sp_decode(t, ids, n, true));
      char buf[64];
      for (int i = 0; i < n; i++) (void)nq_sp_decode_piece(t, i ? ids[i - 1] : -1, ids[i], buf, sizeof buf);
      free(ids);
    }
    for (int i = 0; i < nq_sp_vocab_size(t) && i < 64; i++) {
      const char *p = nq_sp_piece(t, i);
      if (!p) __builtin_trap();
      nq_fuzz_sink += (unsigned)nq_sp_piece_to_id(t, p);
    }
    nq_sp_free(t);
  } else if (!err.msg[0]) {
    __builtin_trap();
  }
  close(fd);
  return 0;
}

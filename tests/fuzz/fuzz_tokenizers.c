/* tests/fuzz/fuzz_tokenizers.c — CLIP BPE, RoBERTa BPE and SentencePiece encoding of arbitrary bytes
 * (compute/tokenizers). The first input byte picks the tokenizer and max_len, the rest is the text. The
 * vocabularies are the real ones under NQ_SHARED_DIR/models (loaded once); a tokenizer whose files are
 * missing is skipped. Encoded ids are decoded back. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "compute/tokenizers/clip_bpe.h"
#include "compute/tokenizers/roberta_bpe.h"
#include "compute/tokenizers/sentencepiece.h"
#include "tests/fuzz/fuzz_util.h"

#ifndef NQ_SHARED_DIR
#define NQ_SHARED_DIR "/work/shared"
#endif

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static nq_clip_tok_t *g_clip;
static nq_roberta_tok_t *g_rob;
static nq_sp_tokenizer_t *g_sp;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  nq_err_t err = {0};
  if (nq_clip_tok_open(NQ_SHARED_DIR "/models/clip/bpe_simple_vocab_16e6.txt.gz", &g_clip, &err) < 0)
    fprintf(stderr, "fuzz_tokenizers: CLIP skipped: %s\n", err.msg);
  if (nq_roberta_tok_open(NQ_SHARED_DIR "/models/configs/audioldm-s-full-v2/tokenizer", &g_rob, &err) < 0)
    fprintf(stderr, "fuzz_tokenizers: RoBERTa skipped: %s\n", err.msg);
  if (nq_sp_load(NQ_SHARED_DIR "/models/llama-tokenizer/tokenizer.model", 0, &g_sp, &err) < 0)
    fprintf(stderr, "fuzz_tokenizers: SentencePiece skipped: %s\n", err.msg);
  else {
    const char *added[] = {"<Img>", "</Img>", "[IMG0]", "[IMG1]"};
    (void)nq_sp_add_tokens(g_sp, added, 4, &err);
  }
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  unsigned sel = data[0];
  const char *text = (const char *)data + 1;
  size_t len = size - 1;
  int max_len = 2 + (int)(sel >> 2) % 80;
  nq_err_t err = {0};
  int32_t ids[96], mask[96];
  char *dec = NULL;
  switch (sel & 3) {
  case 0:
    if (!g_clip) return 0;
    if (nq_clip_tok_encode(g_clip, text, len, max_len, (sel & 4) ? 0 : -1, ids, NULL, &err) == 0) {
      if (nq_clip_tok_decode(g_clip, ids, (size_t)max_len, sel & 8, &dec, &err) == 0) free(dec);
    } else if (!err.msg[0]) {
      __builtin_trap();
    }
    break;
  case 1:
    if (!g_rob) return 0;
    if (nq_roberta_tok_encode(g_rob, text, len, max_len, -1, ids, mask, NULL, &err) == 0) {
      if (nq_roberta_tok_decode(g_rob, ids, (size_t)max_len, sel & 8, &dec, &err) == 0) free(dec);
    } else if (!err.msg[0]) {
      __builtin_trap();
    }
    break;
  default: {
    if (!g_sp) return 0;
    nq_sp_encode_opts_t o = {.add_bos = sel & 4, .add_eos = sel & 8, .add_dummy_prefix = (int)((sel >> 4) % 3) - 1,
                             .no_added_tokens = sel & 64};
    int32_t *out = NULL;
    int n = 0;
    if (nq_sp_encode(g_sp, text, len, &o, &out, &n, &err) == 0) {
      for (int i = 0; i < n; i++)
        if (out[i] < 0 || out[i] >= nq_sp_vocab_size(g_sp)) __builtin_trap();
      dec = nq_sp_decode(g_sp, out, n, true);
      free(dec);
      free(out);
    }
    break;
  }
  }
  return 0;
}

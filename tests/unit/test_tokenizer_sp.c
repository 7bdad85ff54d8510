/* SentencePiece BPE and llama2.c tokenizers against upstream references. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "compute/tokenizers/sentencepiece.h"

static char *slurp(const char *path, size_t *n) {
  FILE *f = fopen(path, "rb");
  cr_assert(f, "cannot open %s", path);
  fseek(f, 0, SEEK_END);
  long l = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *b = malloc((size_t)l + 1);
  cr_assert_eq(fread(b, 1, (size_t)l, f), (size_t)l);
  b[l] = 0;
  fclose(f);
  if (n) *n = (size_t)l;
  return b;
}

/* llama.cpp's 46 vectors: identical to SentencePiece 0.1.97 on the LLaMA tokenizer.model. */
Test(tokenizer_sp, llama_cpp_vectors) {
  nq_err_t err = {0};
  nq_sp_tokenizer_t *t;
  cr_assert_eq(nq_sp_load(NQ_SHARED_DIR "/models/llama-tokenizer/tokenizer.model", 0, &t, &err), 0, "%s", err.msg);
  cr_assert_eq(nq_sp_vocab_size(t), 32000);
  char *inp = slurp(NQ_SHARED_DIR "/models/llama-tokenizer/test-vectors.inp", NULL);
  char *outp = slurp(NQ_SHARED_DIR "/models/llama-tokenizer/test-vectors.out", NULL);
  const char *sep = "\n__ggml_vocab_test__\n";
  char *s = inp, *line = outp;
  int n = 0;
  for (;;) {
    char *e = strstr(s, sep);
    if (!e) break;
    char *nl = strchr(line, '\n');
    cr_assert(nl, "expected ids missing for vector %d", n);
    *nl = 0;
    int32_t *ids;
    int nid;
    cr_assert_eq(nq_sp_encode(t, s, (size_t)(e - s), NULL, &ids, &nid, &err), 0);
    char got[4096] = "";
    size_t gl = 0;
    for (int i = 0; i < nid; i++) gl += (size_t)snprintf(got + gl, sizeof got - gl, " %d", ids[i]);
    /* the .out lines are " id id id" (leading space) or empty */
    const char *want = line;
    cr_expect_str_eq(got, want, "vector %d (\"%.*s\"): got [%s] want [%s]", n, (int)(e - s), s, got, want);
    /* decode gives the text back (SentencePiece is lossless without normalisation) */
    char *back = nq_sp_decode(t, ids, nid, true);
    cr_expect(strlen(back) == (size_t)(e - s) && !memcmp(back, s, (size_t)(e - s)), "vector %d round trip: \"%s\"", n,
              back);
    free(back);
    free(ids);
    n++;
    s = e + strlen(sep);
    line = nl + 1;
  }
  cr_expect_eq(n, 46);
  free(inp), free(outp);
  nq_sp_free(t);
}

Test(tokenizer_sp, bos_eos_and_added_tokens) {
  nq_err_t err = {0};
  nq_sp_tokenizer_t *t;
  cr_assert_eq(nq_sp_load_model(NQ_SHARED_DIR "/models/llama-tokenizer/tokenizer.model", &t, &err), 0, "%s", err.msg);
  /* NExT-GPT's 38 added tokens in add order (spec §2) */
  const char *names[38];
  char buf[38][16];
  int k = 0;
  names[k++] = "<Img>", names[k++] = "</Img>";
  for (int i = 0; i < 4; i++) snprintf(buf[k], 16, "[IMG%d]", i), names[k] = buf[k], k++;
  for (int i = 0; i < 24; i++) snprintf(buf[k], 16, "[VID%d]", i), names[k] = buf[k], k++;
  for (int i = 0; i < 8; i++) snprintf(buf[k], 16, "[AUD%d]", i), names[k] = buf[k], k++;
  cr_assert_eq(nq_sp_add_tokens(t, names, 38, &err), 0);
  cr_assert_eq(nq_sp_vocab_size(t), 32038);
  cr_expect_eq(nq_sp_piece_to_id(t, "[IMG0]"), 32002);
  cr_expect_eq(nq_sp_piece_to_id(t, "[AUD7]"), 32037);
  const char *txt = "a cat [IMG0] [IMG1] [IMG2] [IMG3]";
  int32_t *ids;
  int n;
  nq_sp_encode_opts_t o = {.add_bos = true, .add_dummy_prefix = -1};
  cr_assert_eq(nq_sp_encode(t, txt, strlen(txt), &o, &ids, &n, &err), 0);
  /* BOS, "▁a" 263, "▁cat" 6635, then exactly the 4 consecutive signal ids */
  int32_t want[] = {1, 263, 6635, 32002, 32003, 32004, 32005};
  cr_assert_eq(n, 7, "got %d ids", n);
  for (int i = 0; i < 7; i++) cr_expect_eq(ids[i], want[i], "id %d: %d != %d", i, ids[i], want[i]);
  char *back = nq_sp_decode(t, ids, n, true);
  cr_expect_str_eq(back, "a cat[IMG0][IMG1][IMG2][IMG3]");
  free(back), free(ids);
  nq_sp_free(t);
}

Test(tokenizer_sp, llama2c_tokenizer_bin) {
  nq_err_t err = {0};
  nq_sp_tokenizer_t *t;
  cr_assert_eq(nq_sp_load(NQ_SHARED_DIR "/models/stories260K/tok512.bin", 512, &t, &err), 0, "%s", err.msg);
  /* expected_t0_n200_ids.txt: BOS then the ids whose text is expected_t0_n200.txt */
  char *ids_txt = slurp(NQ_SHARED_DIR "/models/stories260K/expected_t0_n200_ids.txt", NULL);
  char *want = slurp(NQ_SHARED_DIR "/models/stories260K/expected_t0_n200.txt", NULL);
  int32_t ids[256];
  int n = 0;
  for (char *p = ids_txt, *e; n < 256; p = e) {
    long v = strtol(p, &e, 10);
    if (e == p) break;
    ids[n++] = (int32_t)v;
  }
  cr_assert_geq(n, 200);
  char text[8192] = "";
  size_t len = 0;
  int start = ids[0] == 1 ? 1 : 0; /* BOS is fed first, then the generated ids */
  int prev = 1;
  for (int i = start; i < n; i++) {
    len += nq_sp_decode_piece(t, prev, ids[i], text + len, sizeof text - len);
    prev = ids[i];
  }
  cr_expect_str_eq(text, want);
  /* run.c encodes "Once upon a time" with a dummy-prefix space; decoding its ids gives the text back */
  int32_t *enc;
  int ne;
  nq_sp_encode_opts_t o = {.add_bos = true, .add_dummy_prefix = 1};
  cr_assert_eq(nq_sp_encode(t, "Once upon a time", 16, &o, &enc, &ne, &err), 0);
  cr_expect_eq(enc[0], 1);
  cr_expect_eq(ne, 5, "Once upon a time -> %d ids", ne);
  char *back = nq_sp_decode(t, enc, ne, true);
  cr_expect_str_eq(back, "Once upon a time");
  free(back), free(enc), free(ids_txt), free(want);
  nq_sp_free(t);
}

Test(tokenizer_sp, hostile_files_refused) {
  nq_err_t err = {0};
  nq_sp_tokenizer_t *t = NULL;
  char path[] = "/tmp/nq_sp_bad_XXXXXX";
  int fd = mkstemp(path);
  /* field 1, wire type 2, length 0x7fffffff: runs past the end */
  const unsigned char bad[] = {0x0a, 0xff, 0xff, 0xff, 0xff, 0x07, 0x0a};
  cr_assert_eq(write(fd, bad, sizeof bad), (ssize_t)sizeof bad);
  close(fd);
  cr_expect_lt(nq_sp_load_model(path, &t, &err), 0);
  cr_expect_null(t);
  cr_expect(strstr(err.msg, path) != NULL, "error names the file: %s", err.msg);
  cr_expect_lt(nq_sp_load_llama2c(path, 512, &t, &err), 0);
  unlink(path);
}

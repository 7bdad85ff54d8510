/* tests/unit/test_hash.c — SHA-256 against the FIPS 180-2 example vectors. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/hash.h"

/* FIPS 180-2, Appendix B. */
#define ABC_HEX "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
#define TWO_BLOCK_MSG "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
#define TWO_BLOCK_HEX "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
#define MILLION_A_HEX "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"
#define EMPTY_HEX "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

Test(hash, one_shot_vectors) {
  char out[65];
  cr_assert_eq(nq_sha256_hex("abc", 3, out), 0);
  cr_assert_str_eq(out, ABC_HEX);
  cr_assert_eq(nq_sha256_hex(TWO_BLOCK_MSG, strlen(TWO_BLOCK_MSG), out), 0);
  cr_assert_str_eq(out, TWO_BLOCK_HEX);
  cr_assert_eq(nq_sha256_hex("", 0, out), 0);
  cr_assert_str_eq(out, EMPTY_HEX);
}

Test(hash, streaming_million_a_in_odd_chunks) {
  char *a = malloc(1000000);
  cr_assert_not_null(a);
  memset(a, 'a', 1000000);
  nq_sha256_t h;
  cr_assert_eq(nq_sha256_init(&h), 0);
  size_t off = 0, step = 1;
  while (off < 1000000) {
    size_t n = step < 1000000 - off ? step : 1000000 - off;
    cr_assert_eq(nq_sha256_update(&h, a + off, n), 0);
    off += n;
    step = step * 3 + 1; /* chunk sizes that straddle the 64-byte block boundary */
  }
  char out[65];
  cr_assert_eq(nq_sha256_final(&h, out), 0);
  nq_sha256_deinit(&h); /* no-op after final */
  cr_assert_str_eq(out, MILLION_A_HEX);
  free(a);
}

Test(hash, file_and_missing_file) {
  char path[] = "/tmp/nq_hash_XXXXXX";
  int fd = mkstemp(path);
  cr_assert(fd >= 0);
  cr_assert_eq(write(fd, TWO_BLOCK_MSG, strlen(TWO_BLOCK_MSG)), (ssize_t)strlen(TWO_BLOCK_MSG));
  close(fd);
  char out[65];
  nq_err_t err = {0};
  cr_assert_eq(nq_sha256_file(path, out, &err), 0, "%s", err.msg);
  cr_assert_str_eq(out, TWO_BLOCK_HEX);
  unlink(path);
  cr_assert_eq(nq_sha256_file(path, out, &err), NQ_ENOENT);
  cr_assert(strstr(err.msg, path), "message names the path: %s", err.msg);
  cr_assert_str_eq(out, "");
}

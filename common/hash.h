/* common/hash.h — SHA-256 (OpenSSL libcrypto EVP) as lowercase hex.
 *
 * One-shot:   nq_sha256_hex(data, len, out)
 * Streaming:  nq_sha256_init(&h); nq_sha256_update(&h, p, n)...; nq_sha256_final(&h, out); nq_sha256_deinit(&h);
 * File:       nq_sha256_file(path, out, err)
 * `out` always receives 64 hex digits + NUL on success (and an empty string on failure).
 */
#ifndef NQ_COMMON_HASH_H
#define NQ_COMMON_HASH_H

#include <stddef.h>

#include "common/err.h"

#define NQ_SHA256_HEX_LEN 64 /* hex digits, without the NUL */

/* Caller-allocated streaming context (_init/_deinit pair). */
typedef struct nq_sha256 {
  void *md; /* owned: EVP_MD_CTX*, NULL after _final/_deinit */
} nq_sha256_t;

/* 0 or NQ_ENOMEM / NQ_EINTERNAL. */
int nq_sha256_init(nq_sha256_t *h);
int nq_sha256_update(nq_sha256_t *h, const void *data /* borrowed */, size_t len);
/* Writes the hex digest to out and releases the EVP context (the _deinit that follows is a no-op). */
int nq_sha256_final(nq_sha256_t *h, char out[NQ_SHA256_HEX_LEN + 1] /* OUT */);
/* Safe to call on an initialised, finalised or zeroed context. */
void nq_sha256_deinit(nq_sha256_t *h);

int nq_sha256_hex(const void *data /* borrowed */, size_t len, char out[NQ_SHA256_HEX_LEN + 1] /* OUT */);
/* Hashes a file by streaming it; errors name the path. */
int nq_sha256_file(const char *path, char out[NQ_SHA256_HEX_LEN + 1] /* OUT */, nq_err_t *err);

#endif

#include "common/hash.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int nq_sha256_init(nq_sha256_t *h) {
  NQ_ASSERT(h);
  EVP_MD_CTX *c = EVP_MD_CTX_new();
  h->md = NULL;
  if (!c) return NQ_ENOMEM;
  if (EVP_DigestInit_ex(c, EVP_sha256(), NULL) != 1) {
    EVP_MD_CTX_free(c);
    return NQ_EINTERNAL;
  }
  h->md = c;
  return 0;
}

int nq_sha256_update(nq_sha256_t *h, const void *data, size_t len) {
  NQ_ASSERT(h && h->md);
  if (len == 0) return 0;
  return EVP_DigestUpdate((EVP_MD_CTX *)h->md, data, len) == 1 ? 0 : NQ_EINTERNAL;
}

static void nq_hash__hex(const unsigned char *d, unsigned n, char *out) {
  static const char hx[] = "0123456789abcdef";
  for (unsigned i = 0; i < n; i++) {
    out[2 * i] = hx[d[i] >> 4];
    out[2 * i + 1] = hx[d[i] & 15];
  }
  out[2 * n] = 0;
}

int nq_sha256_final(nq_sha256_t *h, char out[NQ_SHA256_HEX_LEN + 1]) {
  NQ_ASSERT(h && h->md && out);
  unsigned char d[EVP_MAX_MD_SIZE];
  unsigned n = 0;
  int ok = EVP_DigestFinal_ex((EVP_MD_CTX *)h->md, d, &n) == 1 && n == 32;
  EVP_MD_CTX_free((EVP_MD_CTX *)h->md);
  h->md = NULL;
  if (!ok) {
    out[0] = 0;
    return NQ_EINTERNAL;
  }
  nq_hash__hex(d, n, out);
  return 0;
}

void nq_sha256_deinit(nq_sha256_t *h) {
  if (!h || !h->md) return;
  EVP_MD_CTX_free((EVP_MD_CTX *)h->md);
  h->md = NULL;
}

int nq_sha256_hex(const void *data, size_t len, char out[NQ_SHA256_HEX_LEN + 1]) {
  NQ_ASSERT(out);
  out[0] = 0;
  nq_sha256_t h;
  int rc = nq_sha256_init(&h);
  if (rc) return rc;
  rc = nq_sha256_update(&h, data, len);
  if (rc) {
    nq_sha256_deinit(&h);
    return rc;
  }
  return nq_sha256_final(&h, out);
}

int nq_sha256_file(const char *path, char out[NQ_SHA256_HEX_LEN + 1], nq_err_t *err) {
  NQ_ASSERT(path && out);
  out[0] = 0;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return nq_err_set(err, errno == ENOENT ? NQ_ENOENT : NQ_EIO, errno == ENOENT ? NQ_ERR_FATAL : NQ_ERR_RETRIABLE,
                      "sha256: open %s: %s", path, strerror(errno));
  nq_sha256_t h;
  int rc = nq_sha256_init(&h);
  if (rc) {
    close(fd);
    return nq_err_set(err, rc, 0, "sha256 %s: %s", path, nq_strerror(rc));
  }
  enum { CHUNK = 1 << 16 };
  unsigned char *buf = malloc(CHUNK);
  if (!buf) {
    nq_sha256_deinit(&h);
    close(fd);
    return nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "sha256 %s: out of memory", path);
  }
  for (;;) {
    ssize_t n = read(fd, buf, CHUNK);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      rc = nq_err_set(err, NQ_EIO, NQ_ERR_RETRIABLE, "sha256: read %s: %s", path, strerror(errno));
      break;
    }
    if (n == 0) break;
    if ((rc = nq_sha256_update(&h, buf, (size_t)n)) != 0) {
      nq_err_set(err, rc, 0, "sha256 %s: %s", path, nq_strerror(rc));
      break;
    }
  }
  free(buf);
  close(fd);
  if (rc) {
    nq_sha256_deinit(&h);
    return rc;
  }
  rc = nq_sha256_final(&h, out);
  if (rc) return nq_err_set(err, rc, 0, "sha256 %s: %s", path, nq_strerror(rc));
  return 0;
}

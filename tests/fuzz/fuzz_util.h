/* tests/fuzz/fuzz_util.h — helpers shared by the libFuzzer targets (header-only, static).
 *
 * Readers that take a path get the fuzz input through an anonymous memory file (memfd_create) opened as
 * "/proc/self/fd/N", or, where the reader needs a file name with an extension (WebDataset shards), a
 * per-process temp file. Nothing here is used outside tests/fuzz. */
#ifndef NQ_TESTS_FUZZ_UTIL_H
#define NQ_TESTS_FUZZ_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* A memfd holding data; *path receives "/proc/self/fd/N". Returns the fd (close it when done) or -1. */
static inline int nq_fuzz_memfd(const uint8_t *data, size_t size, char *path, size_t cap) {
  int fd = memfd_create("nq-fuzz", MFD_CLOEXEC);
  if (fd < 0) return -1;
  size_t off = 0;
  while (off < size) {
    ssize_t w = write(fd, data + off, size - off);
    if (w <= 0) {
      close(fd);
      return -1;
    }
    off += (size_t)w;
  }
  snprintf(path, cap, "/proc/self/fd/%d", fd);
  return fd;
}

/* Write data to a file (truncating). 0 or -1. */
static inline int nq_fuzz_write_file(const char *path, const uint8_t *data, size_t size) {
  FILE *f = fopen(path, "wb");
  if (!f) return -1;
  size_t w = size ? fwrite(data, 1, size, f) : 0;
  int rc = fclose(f);
  return (w == size && rc == 0) ? 0 : -1;
}

/* Read every byte of a buffer so ASan checks the whole range is addressable; returns a checksum that the
 * caller folds into a volatile sink. */
static inline unsigned nq_fuzz_touch(const void *p, size_t n) {
  const uint8_t *b = (const uint8_t *)p;
  unsigned s = 0;
  for (size_t i = 0; i < n; i++) s += b[i];
  return s;
}

static volatile unsigned nq_fuzz_sink;

#endif

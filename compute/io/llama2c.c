#include "compute/io/llama2c.h"

#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

int nq_llama2c_open(const char *path, nq_llama2c_file_t *f, nq_err_t *err) {
  memset(f, 0, sizeof(*f));
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return nq_err_set(err, NQ_ENOENT, NQ_ERR_FATAL, "%s: cannot open", path);
  struct stat st;
  if (fstat(fd, &st) < 0 || st.st_size < 28) {
    close(fd);
    return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: too small for a llama2.c header", path);
  }
  size_t len = (size_t)st.st_size;
  void *map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
  close(fd);
  if (map == MAP_FAILED) return nq_err_set(err, NQ_EIO, 0, "%s: mmap failed", path);
  const uint8_t *b = map;
  int32_t h[7];
  size_t off;
  uint32_t magic;
  memcpy(&magic, b, 4);
  if (magic == 0x616b3432u) {
    int32_t ver;
    memcpy(&ver, b + 4, 4);
    if (ver != 1 || len < 256) {
      munmap(map, len);
      return nq_err_set(err, NQ_EUNSUPPORTED, NQ_ERR_FATAL, "%s: llama2.c export version %d (only 0 and 1)", path, ver);
    }
    memcpy(h, b + 8, sizeof h);
    f->shared_classifier = b[36] != 0;
    f->version = 1;
    off = 256;
  } else {
    memcpy(h, b, sizeof h);
    f->shared_classifier = h[5] > 0;
    if (h[5] < 0) h[5] = -h[5];
    off = 28;
  }
  f->dim = h[0], f->hidden_dim = h[1], f->n_layers = h[2], f->n_heads = h[3], f->n_kv_heads = h[4];
  f->vocab_size = h[5], f->seq_len = h[6];
  if (f->dim <= 0 || f->dim > 65536 || f->hidden_dim <= 0 || f->hidden_dim > 262144 || f->n_layers <= 0 ||
      f->n_layers > 1024 || f->n_heads <= 0 || f->dim % f->n_heads || f->n_kv_heads <= 0 ||
      f->n_heads % f->n_kv_heads || f->vocab_size <= 0 || f->vocab_size > 1000000 || f->seq_len <= 0 ||
      f->seq_len > 1 << 20 || (f->dim / f->n_heads) % 2) {
    munmap(map, len);
    return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL,
                      "%s: implausible header dim %d hidden %d layers %d heads %d kv %d vocab %d seq %d", path, f->dim,
                      f->hidden_dim, f->n_layers, f->n_heads, f->n_kv_heads, f->vocab_size, f->seq_len);
  }
  uint64_t D = (uint64_t)f->dim, L = (uint64_t)f->n_layers, Hd = D / (uint64_t)f->n_heads,
           KVD = Hd * (uint64_t)f->n_kv_heads, F = (uint64_t)f->hidden_dim, V = (uint64_t)f->vocab_size;
  uint64_t need = (V * D + L * D * 2 + L * D * D * 2 + L * D * KVD * 2 + L * D * F * 3 + D) * 4;
  if (f->version == 0) need += (uint64_t)f->seq_len * Hd * 4; /* freq_cis real + imag: seq * hd/2 each */
  if (!f->shared_classifier) need += V * D * 4;
  if (need > len - off) {
    munmap(map, len);
    return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: %zu bytes of weights, the header needs %llu", path, len - off,
                      (unsigned long long)need);
  }
  const float *p = (const float *)(b + off);
#define TAKE(dst, n) (f->dst = p, p += (n))
  if (f->version == 0) {
    TAKE(tok_emb, V * D);
    TAKE(rms_att, L * D);
  } else {
    TAKE(rms_att, L * D);
    TAKE(rms_ffn, L * D);
    TAKE(rms_final, D);
    TAKE(tok_emb, V * D);
  }
  TAKE(wq, L * D * D);
  TAKE(wk, L * D * KVD);
  TAKE(wv, L * D * KVD);
  TAKE(wo, L * D * D);
  if (f->version == 0) TAKE(rms_ffn, L * D);
  TAKE(w1, L * F * D);
  TAKE(w2, L * D * F);
  TAKE(w3, L * F * D);
  if (f->version == 0) {
    TAKE(rms_final, D);
    p += (uint64_t)f->seq_len * Hd; /* freq_cis_real, freq_cis_imag */
  }
  f->wcls = f->shared_classifier ? f->tok_emb : p;
#undef TAKE
  f->map = map;
  f->map_len = len;
  return 0;
}

void nq_llama2c_close(nq_llama2c_file_t *f) {
  if (f && f->map) munmap(f->map, f->map_len);
  if (f) memset(f, 0, sizeof(*f));
}

/* datasets/datasets_int.h — private to datasets/datasets*.c. */
#ifndef NQ_DATASETS_DATASETS_INT_H
#define NQ_DATASETS_DATASETS_INT_H

#include <stdio.h>

#include "datasets/datasets.h"

/* One reader per format behind a small vtable. */
typedef struct nq_ds_impl_i {
  int (*next)(nq_dataset_t *ds, json_t **rec, nq_err_t *err);
  void (*close)(nq_dataset_t *ds);
} nq_ds_impl_i;

struct nq_dataset {
  nq_ds_format_t format;
  char *path;          /* owned: as given (used in messages) */
  char *media_base;    /* owned: absolute dir relative media paths resolve against (media_root or the file's dir) */
  size_t max_record;   /* bytes */
  const nq_ds_impl_i *impl;
  void *state;         /* owned by impl->close */
};

int nq_ds__open_json(nq_dataset_t *ds, nq_err_t *err);  /* jsonl + nextgpt-json */
int nq_ds__open_wds(nq_dataset_t *ds, nq_err_t *err);
int nq_ds__open_dir(nq_dataset_t *ds, nq_err_t *err);

/* ---- buffered byte reader (no getline: a hostile line must not grow a buffer without bound) ---- */
typedef struct nq_ds_reader {
  FILE *f;                 /* owned */
  unsigned char *buf;      /* owned, NQ_DS__RBUF bytes */
  size_t pos, len;
  unsigned long long off;  /* bytes consumed so far */
  int eof, ioerr;
} nq_ds_reader_t;
#define NQ_DS__RBUF (1u << 16)

int nq_ds__reader_open(nq_ds_reader_t *r, const char *path, nq_err_t *err);
void nq_ds__reader_close(nq_ds_reader_t *r);
int nq_ds__reader_fill(nq_ds_reader_t *r); /* >0 bytes available, 0 at EOF, <0 on error */
static inline int nq_ds__getc(nq_ds_reader_t *r) {
  if (r->pos == r->len && nq_ds__reader_fill(r) <= 0) return -1;
  r->off++;
  return r->buf[r->pos++];
}
static inline int nq_ds__peekc(nq_ds_reader_t *r) {
  if (r->pos == r->len && nq_ds__reader_fill(r) <= 0) return -1;
  return r->buf[r->pos];
}

/* ---- growable byte buffer ---- */
typedef struct nq_ds_buf {
  char *p; /* owned */
  size_t len, cap;
} nq_ds_buf_t;
int nq_ds__buf_put(nq_ds_buf_t *b, const void *data, size_t n); /* keeps p NUL-terminated */
void nq_ds__buf_free(nq_ds_buf_t *b);

/* ---- records ---- */
/* {"key": key, "media": [], "meta": meta or {}} ; meta reference is stolen (may be NULL). NULL on OOM. */
json_t *nq_ds__record_new(const char *key, json_t *meta /* stolen */);
int nq_ds__record_media(json_t *rec, const char *kind, const char *uri);
/* Sets "text" (a copy of s[0..n)); NQ_EFORMAT if it isn't valid UTF-8. */
int nq_ds__record_text(json_t *rec, const char *s, size_t n);
/* 0 if key is a safe relative key (store rules, <= NQ_DS_KEY_MAX bytes), else <0 with a reason in why[]. */
int nq_ds__key_check(const char *key, char *why, size_t cap);
/* "image" | "audio" | "video" for a media extension (case-insensitive, no dot), else NULL. */
const char *nq_ds__ext_kind(const char *ext);
/* Relative or absolute media path -> "file:///abs". NQ_EFORMAT for "..", control characters, too long. */
int nq_ds__path_uri(const nq_dataset_t *ds, const char *path, char *out, size_t cap, nq_err_t *err);
/* Lexically absolute, normalised copy of path (cwd-relative); NULL on OOM or a too long path. */
char *nq_ds__abspath(const char *path);
/* Tar member names as grouped and addressed: without leading "./". */
const char *nq_ds__member_name(const char *name);
/* Opens a (possibly gzip/bzip2/xz/zstd-compressed) tar for reading. */
struct archive;
int nq_ds__archive_open(const char *shard, struct archive **out, nq_err_t *err);
/* Reads at most max bytes of a regular file; NQ_ELIMIT above. */
int nq_ds__read_file(const char *path, size_t max, void **data, size_t *len, nq_err_t *err);

#endif

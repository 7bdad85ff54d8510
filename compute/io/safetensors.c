/* compute/io/safetensors.c — see safetensors.h. Format: u64 LE header length N, N bytes of JSON
 * {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}},
 * then the data section; offsets are relative to the start of the data section. */
#include "compute/io/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define ST_MAX_HEADER (100u << 20)
#define ST_MAX_TENSORS (1u << 20)

typedef struct st_map {
  void *base;   /* owned mapping (munmap) */
  size_t size;
} st_map_t;

struct nq_st_file {
  st_map_t *maps;          /* owned, nmaps entries */
  size_t nmaps;
  nq_st_tensor_t *tensors; /* owned array; names owned (strdup) */
  size_t n, cap;
  json_t *metadata;        /* owned, may be NULL (from the first shard) */
};

static int map_file(const char *path, st_map_t *m, nq_err_t *err) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return nq_err_set(err, errno == ENOENT ? NQ_ENOENT : NQ_EIO, NQ_ERR_FATAL, "%s: %s", path, strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return nq_err_set(err, NQ_EIO, NQ_ERR_FATAL, "%s: not a regular file", path);
  }
  m->size = (size_t)st.st_size;
  m->base = NULL;
  if (m->size > 0) {
    m->base = mmap(NULL, m->size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m->base == MAP_FAILED) {
      close(fd);
      m->base = NULL;
      return nq_err_set(err, NQ_EIO, NQ_ERR_RETRIABLE, "%s: mmap: %s", path, strerror(errno));
    }
  }
  close(fd);
  return 0;
}

static int cmp_range(const void *a, const void *b) {
  const nq_st_tensor_t *x = a, *y = b;
  const char *px = x->data, *py = y->data;
  return px < py ? -1 : px > py ? 1 : 0;
}

static int add_tensor(nq_st_file_t *f, const nq_st_tensor_t *t, nq_err_t *err) {
  if (f->n == f->cap) {
    size_t nc = f->cap ? f->cap * 2 : 64;
    nq_st_tensor_t *nt = realloc(f->tensors, nc * sizeof *nt);
    if (!nt) return nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "safetensors: out of memory");
    f->tensors = nt;
    f->cap = nc;
  }
  f->tensors[f->n] = *t;
  f->tensors[f->n].name = strdup(t->name);
  if (!f->tensors[f->n].name) return nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "safetensors: out of memory");
  f->n++;
  return 0;
}

/* Parse one mapped file, appending its tensors. */
static int parse_one(nq_st_file_t *f, const char *path, const st_map_t *m, nq_err_t *err) {
  const unsigned char *p = m->base;
  if (m->size < 8) return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: safetensors file too short (%zu bytes)", path, m->size);
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | p[i];
  if (hlen > ST_MAX_HEADER || hlen > m->size - 8)
    return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: header length %llu exceeds file size %zu or limit", path,
                      (unsigned long long)hlen, m->size);
  const char *data = (const char *)p + 8 + hlen;
  size_t dsize = m->size - 8 - (size_t)hlen;
  json_error_t je;
  json_t *root = json_loadb((const char *)p + 8, (size_t)hlen, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &je);
  if (!root) return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: bad header JSON at byte %d: %s", path, je.position, je.text);
  if (!json_is_object(root)) {
    json_decref(root);
    return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: header is not a JSON object", path);
  }
  if (json_object_size(root) > ST_MAX_TENSORS) {
    json_decref(root);
    return nq_err_set(err, NQ_ELIMIT, NQ_ERR_FATAL, "%s: too many tensors", path);
  }
  size_t first = f->n;
  const char *key;
  json_t *val;
  int rc = 0;
  json_object_foreach(root, key, val) {
    if (strcmp(key, "__metadata__") == 0) {
      if (!json_is_object(val)) {
        rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: __metadata__ is not an object", path);
        break;
      }
      if (!f->metadata) f->metadata = json_incref(val);
      continue;
    }
    nq_st_tensor_t t = {.name = key};
    json_t *jd = json_object_get(val, "dtype"), *js = json_object_get(val, "shape"),
           *jo = json_object_get(val, "data_offsets");
    if (!json_is_object(val) || !json_is_string(jd) || !json_is_array(js) || !json_is_array(jo) || json_array_size(jo) != 2) {
      rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: tensor '%s': missing or malformed dtype/shape/data_offsets", path, key);
      break;
    }
    if (nq_dtype_parse(json_string_value(jd), &t.dtype) != 0) {
      rc = nq_err_set(err, NQ_EUNSUPPORTED, NQ_ERR_FATAL, "%s: tensor '%s': unsupported dtype %s", path, key, json_string_value(jd));
      break;
    }
    if (json_array_size(js) > NQ_ST_MAX_DIMS) {
      rc = nq_err_set(err, NQ_ELIMIT, NQ_ERR_FATAL, "%s: tensor '%s': %zu dims (max %d)", path, key, json_array_size(js), NQ_ST_MAX_DIMS);
      break;
    }
    t.ndim = (int)json_array_size(js);
    unsigned __int128 numel = 1;
    for (int d = 0; d < t.ndim; d++) {
      json_t *x = json_array_get(js, (size_t)d);
      if (!json_is_integer(x) || json_integer_value(x) < 0) {
        rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: tensor '%s': bad dim %d", path, key, d);
        break;
      }
      t.shape[d] = json_integer_value(x);
      numel *= (unsigned __int128)t.shape[d];
      if (numel > ((unsigned __int128)1 << 62)) {
        rc = nq_err_set(err, NQ_ELIMIT, NQ_ERR_FATAL, "%s: tensor '%s': absurd shape", path, key);
        break;
      }
    }
    if (rc) break;
    json_t *b = json_array_get(jo, 0), *e = json_array_get(jo, 1);
    if (!json_is_integer(b) || !json_is_integer(e) || json_integer_value(b) < 0 || json_integer_value(e) < json_integer_value(b) ||
        (uint64_t)json_integer_value(e) > dsize) {
      rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: tensor '%s': data_offsets outside the data section (%zu bytes)", path, key, dsize);
      break;
    }
    size_t begin = (size_t)json_integer_value(b), end = (size_t)json_integer_value(e);
    if ((unsigned __int128)(end - begin) != numel * nq_dtype_size(t.dtype)) {
      rc = nq_err_set(err, NQ_ESHAPE, NQ_ERR_FATAL, "%s: tensor '%s': %zu bytes for shape of %llu %s elements", path, key,
                      end - begin, (unsigned long long)numel, nq_dtype_name(t.dtype));
      break;
    }
    t.data = data + begin;
    t.nbytes = end - begin;
    if (nq_st_find(f, key)) {
      rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: tensor '%s' appears twice", path, key);
      break;
    }
    if ((rc = add_tensor(f, &t, err))) break;
  }
  json_decref(root);
  if (rc) return rc;
  /* overlap check within this file */
  size_t cnt = f->n - first;
  if (cnt > 1) {
    nq_st_tensor_t *tmp = malloc(cnt * sizeof *tmp);
    if (!tmp) return nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "safetensors: out of memory");
    memcpy(tmp, f->tensors + first, cnt * sizeof *tmp);
    qsort(tmp, cnt, sizeof *tmp, cmp_range);
    for (size_t i = 1; i < cnt; i++) {
      if ((const char *)tmp[i - 1].data + tmp[i - 1].nbytes > (const char *)tmp[i].data) {
        rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: tensors '%s' and '%s' overlap", path, tmp[i - 1].name, tmp[i].name);
        break;
      }
    }
    free(tmp);
  }
  return rc;
}

static int open_single(nq_st_file_t *f, const char *path, nq_err_t *err) {
  st_map_t *nm = realloc(f->maps, (f->nmaps + 1) * sizeof *nm);
  if (!nm) return nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "safetensors: out of memory");
  f->maps = nm;
  int rc = map_file(path, &f->maps[f->nmaps], err);
  if (rc) return rc;
  f->nmaps++;
  return parse_one(f, path, &f->maps[f->nmaps - 1], err);
}

static int open_index(nq_st_file_t *f, const char *path, nq_err_t *err) {
  json_error_t je;
  json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
  if (!root) return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s:%d:%d: %s", path, je.line, je.column, je.text);
  json_t *wm = json_object_get(root, "weight_map");
  int rc = 0;
  if (!json_is_object(wm)) {
    rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: no weight_map object", path);
    goto out;
  }
  char dirbuf[PATH_MAX];
  snprintf(dirbuf, sizeof dirbuf, "%s", path);
  const char *dir = dirname(dirbuf);
  /* distinct shard names, in first-seen order */
  json_t *seen = json_object();
  const char *key;
  json_t *val;
  json_object_foreach(wm, key, val) {
    const char *shard = json_string_value(val);
    if (!shard || strchr(shard, '/') || strcmp(shard, "..") == 0 || !*shard) {
      rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: tensor '%s': bad shard name", path, key);
      break;
    }
    if (json_object_get(seen, shard)) continue;
    json_object_set_new(seen, shard, json_true());
    char sp[PATH_MAX];
    if (snprintf(sp, sizeof sp, "%s/%s", dir, shard) >= (int)sizeof sp) {
      rc = nq_err_set(err, NQ_ELIMIT, NQ_ERR_FATAL, "%s: shard path too long", path);
      break;
    }
    if ((rc = open_single(f, sp, err))) break;
  }
  if (!rc) /* every tensor named in the map must be present */
    json_object_foreach(wm, key, val) if (!nq_st_find(f, key)) {
      rc = nq_err_set(err, NQ_ENOENT, NQ_ERR_FATAL, "%s: tensor '%s' not found in shard %s", path, key, json_string_value(val));
      break;
    }
  json_decref(seen);
out:
  json_decref(root);
  return rc;
}

int nq_st_open(const char *path, nq_st_file_t **out, nq_err_t *err) {
  *out = NULL;
  nq_st_file_t *f = calloc(1, sizeof *f);
  if (!f) return nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "safetensors: out of memory");
  size_t L = strlen(path);
  int rc = (L > 11 && strcmp(path + L - 11, ".index.json") == 0) ? open_index(f, path, err) : open_single(f, path, err);
  if (rc) {
    nq_st_close(f);
    return rc;
  }
  *out = f;
  return 0;
}

void nq_st_close(nq_st_file_t *f) {
  if (!f) return;
  for (size_t i = 0; i < f->n; i++) free((char *)f->tensors[i].name);
  free(f->tensors);
  for (size_t i = 0; i < f->nmaps; i++)
    if (f->maps[i].base) munmap(f->maps[i].base, f->maps[i].size);
  free(f->maps);
  json_decref(f->metadata);
  free(f);
}

size_t nq_st_count(const nq_st_file_t *f) { return f ? f->n : 0; }
const nq_st_tensor_t *nq_st_get(const nq_st_file_t *f, size_t i) { return f && i < f->n ? &f->tensors[i] : NULL; }

const nq_st_tensor_t *nq_st_find(const nq_st_file_t *f, const char *name) {
  if (!f || !name) return NULL;
  for (size_t i = 0; i < f->n; i++)
    if (strcmp(f->tensors[i].name, name) == 0) return &f->tensors[i];
  return NULL;
}

const char *nq_st_metadata(const nq_st_file_t *f, const char *key) {
  return f && f->metadata ? json_string_value(json_object_get(f->metadata, key)) : NULL;
}

int64_t nq_st_numel(const nq_st_tensor_t *t) {
  int64_t n = 1;
  for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
  return n;
}

static void shape_str(char *buf, size_t cap, int ndim, const int64_t *shape) {
  size_t o = 0;
  o += (size_t)snprintf(buf + o, cap - o, "[");
  for (int i = 0; i < ndim && o < cap; i++) o += (size_t)snprintf(buf + o, cap - o, "%s%lld", i ? "," : "", (long long)shape[i]);
  if (o < cap) snprintf(buf + o, cap - o, "]");
}

int nq_st_expect(const nq_st_file_t *f, const char *name, nq_dtype_t dtype, int ndim, const int64_t *shape,
                 const nq_st_tensor_t **out, nq_err_t *err) {
  const nq_st_tensor_t *t = nq_st_find(f, name);
  if (out) *out = t;
  if (!t) return nq_err_set(err, NQ_ENOENT, NQ_ERR_FATAL, "tensor '%s' is missing", name);
  if (t->dtype != dtype)
    return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "tensor '%s': dtype %s, expected %s", name, nq_dtype_name(t->dtype), nq_dtype_name(dtype));
  int ok = t->ndim == ndim;
  for (int i = 0; ok && i < ndim; i++) ok = shape[i] < 0 || shape[i] == t->shape[i];
  if (!ok) {
    char a[128], b[128];
    shape_str(a, sizeof a, t->ndim, t->shape);
    shape_str(b, sizeof b, ndim, shape);
    return nq_err_set(err, NQ_ESHAPE, NQ_ERR_FATAL, "tensor '%s': shape %s, expected %s", name, a, b);
  }
  return 0;
}

/* ---- writer ---- */

typedef struct st_wentry {
  char *name;       /* owned */
  nq_dtype_t dtype;
  int ndim;
  int64_t shape[NQ_ST_MAX_DIMS];
  void *data;       /* owned copy */
  size_t nbytes;
} st_wentry_t;

struct nq_st_writer {
  st_wentry_t *e; /* owned */
  size_t n, cap;
  json_t *meta;   /* owned */
};

nq_st_writer_t *nq_st_writer_new(void) { return calloc(1, sizeof(nq_st_writer_t)); }

void nq_st_writer_free(nq_st_writer_t *w) {
  if (!w) return;
  for (size_t i = 0; i < w->n; i++) {
    free(w->e[i].name);
    free(w->e[i].data);
  }
  free(w->e);
  json_decref(w->meta);
  free(w);
}

int nq_st_writer_add(nq_st_writer_t *w, const char *name, nq_dtype_t dtype, int ndim, const int64_t *shape,
                     const void *data, nq_err_t *err) {
  if (ndim < 0 || ndim > NQ_ST_MAX_DIMS || !name || !*name || nq_dtype_size(dtype) == 0)
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "safetensors writer: bad tensor '%s'", name ? name : "(null)");
  for (size_t i = 0; i < w->n; i++)
    if (strcmp(w->e[i].name, name) == 0) return nq_err_set(err, NQ_EEXIST, NQ_ERR_FATAL, "safetensors writer: '%s' added twice", name);
  size_t numel = 1;
  for (int i = 0; i < ndim; i++) {
    if (shape[i] < 0) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "safetensors writer: '%s' negative dim", name);
    numel *= (size_t)shape[i];
  }
  if (w->n == w->cap) {
    size_t nc = w->cap ? w->cap * 2 : 16;
    st_wentry_t *ne = realloc(w->e, nc * sizeof *ne);
    if (!ne) return nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "safetensors writer: out of memory");
    w->e = ne;
    w->cap = nc;
  }
  st_wentry_t *e = &w->e[w->n];
  memset(e, 0, sizeof *e);
  e->nbytes = numel * nq_dtype_size(dtype);
  e->name = strdup(name);
  e->data = malloc(e->nbytes ? e->nbytes : 1);
  if (!e->name || !e->data) {
    free(e->name);
    free(e->data);
    return nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "safetensors writer: out of memory");
  }
  if (e->nbytes) memcpy(e->data, data, e->nbytes);
  e->dtype = dtype;
  e->ndim = ndim;
  for (int i = 0; i < ndim; i++) e->shape[i] = shape[i];
  w->n++;
  return 0;
}

int nq_st_writer_add_f32(nq_st_writer_t *w, const char *name, int ndim, const int64_t *shape, const float *data,
                         nq_err_t *err) {
  return nq_st_writer_add(w, name, NQ_DT_F32, ndim, shape, data, err);
}

int nq_st_writer_set_metadata(nq_st_writer_t *w, const char *key, const char *value, nq_err_t *err) {
  if (!w->meta) w->meta = json_object();
  if (!w->meta || json_object_set_new(w->meta, key, json_string(value)) != 0)
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "safetensors writer: bad metadata '%s'", key);
  return 0;
}

static int write_all(int fd, const void *p, size_t n) {
  const char *c = p;
  while (n) {
    ssize_t k = write(fd, c, n);
    if (k < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    c += k;
    n -= (size_t)k;
  }
  return 0;
}

int nq_st_writer_save(nq_st_writer_t *w, const char *path, nq_err_t *err) {
  json_t *h = json_object();
  size_t off = 0;
  if (w->meta) json_object_set(h, "__metadata__", w->meta);
  for (size_t i = 0; i < w->n; i++) {
    st_wentry_t *e = &w->e[i];
    json_t *shape = json_array();
    for (int d = 0; d < e->ndim; d++) json_array_append_new(shape, json_integer(e->shape[d]));
    json_object_set_new(h, e->name,
                        json_pack("{s:s,s:o,s:[I,I]}", "dtype", nq_dtype_name(e->dtype), "shape", shape, "data_offsets",
                                  (json_int_t)off, (json_int_t)(off + e->nbytes)));
    off += e->nbytes;
  }
  char *hs = json_dumps(h, JSON_COMPACT);
  json_decref(h);
  if (!hs) return nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "safetensors writer: out of memory");
  size_t hl = strlen(hs), padded = (hl + 7) & ~(size_t)7;
  char tmp[PATH_MAX];
  if (snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid()) >= (int)sizeof tmp) {
    free(hs);
    return nq_err_set(err, NQ_ELIMIT, NQ_ERR_FATAL, "%s: path too long", path);
  }
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    free(hs);
    return nq_err_set(err, NQ_EIO, NQ_ERR_RETRIABLE, "%s: %s", tmp, strerror(errno));
  }
  unsigned char len8[8];
  for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)padded >> (8 * i));
  int bad = write_all(fd, len8, 8) || write_all(fd, hs, hl) || write_all(fd, "        ", padded - hl);
  free(hs);
  for (size_t i = 0; !bad && i < w->n; i++) bad = write_all(fd, w->e[i].data, w->e[i].nbytes);
  if (!bad) bad = fsync(fd);
  if (close(fd) != 0) bad = 1;
  if (bad || rename(tmp, path) != 0) {
    int e = errno;
    unlink(tmp);
    return nq_err_set(err, NQ_EIO, NQ_ERR_RETRIABLE, "%s: write failed: %s", path, strerror(e));
  }
  return 0;
}

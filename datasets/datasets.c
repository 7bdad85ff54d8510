/* datasets/datasets.c — dataset lifecycle, record helpers, buffered reader, nq_ds_read_uri. */
#include "datasets/datasets.h"

#include <archive.h>
#include <archive_entry.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "datasets/datasets_int.h"

/* ---------------------------------------------------------------------------------------------------------------- */
/* formats                                                                                                           */

static const char *const nq_ds__format_names[] = {"jsonl", "nextgpt-json", "webdataset", "dir"};

int nq_ds_format_parse(const char *s, nq_ds_format_t *out) {
  NQ_ASSERT(out);
  for (int i = 0; s && i < 4; i++)
    if (strcmp(s, nq_ds__format_names[i]) == 0) {
      *out = (nq_ds_format_t)i;
      return 0;
    }
  return NQ_EINVAL;
}

const char *nq_ds_format_name(nq_ds_format_t f) {
  return (unsigned)f < 4 ? nq_ds__format_names[f] : "unknown";
}

/* ---------------------------------------------------------------------------------------------------------------- */
/* lifecycle                                                                                                         */

int nq_ds_open(const nq_ds_spec_t *spec, nq_dataset_t **out, nq_err_t *err) {
  NQ_ASSERT(spec && out);
  *out = NULL;
  if (!spec->path || !*spec->path) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "dataset: empty path");
  if ((unsigned)spec->format >= 4)
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "dataset: unknown format %d", (int)spec->format);
  nq_dataset_t *ds = calloc(1, sizeof *ds);
  if (!ds) return nq_err_set(err, NQ_ENOMEM, 0, "dataset: out of memory");
  ds->format = spec->format;
  ds->max_record = spec->max_record_bytes ? spec->max_record_bytes : NQ_DS_MAX_RECORD_DEFAULT;
  ds->path = strdup(spec->path);
  if (spec->media_root && *spec->media_root) {
    ds->media_base = nq_ds__abspath(spec->media_root);
  } else if (spec->format == NQ_DS_DIR) {
    ds->media_base = nq_ds__abspath(spec->path);
  } else {
    /* the directory of the dataset file (of the first shard pattern for webdataset: unused there) */
    char *abs = nq_ds__abspath(spec->path);
    if (abs) {
      char *slash = strrchr(abs, '/');
      if (slash == abs) slash[1] = 0;
      else if (slash) *slash = 0;
    }
    ds->media_base = abs;
  }
  if (!ds->path || !ds->media_base) {
    nq_ds_free(ds);
    return nq_err_set(err, NQ_ENOMEM, 0, "dataset %s: out of memory or path too long", spec->path);
  }
  int rc;
  switch (spec->format) {
    case NQ_DS_JSONL:
    case NQ_DS_NEXTGPT_JSON: rc = nq_ds__open_json(ds, err); break;
    case NQ_DS_WEBDATASET: rc = nq_ds__open_wds(ds, err); break;
    default: rc = nq_ds__open_dir(ds, err); break;
  }
  if (rc) {
    nq_ds_free(ds);
    return rc;
  }
  *out = ds;
  return 0;
}

int nq_ds_next(nq_dataset_t *ds, json_t **rec, nq_err_t *err) {
  NQ_ASSERT(ds && rec && ds->impl);
  *rec = NULL;
  return ds->impl->next(ds, rec, err);
}

void nq_ds_free(nq_dataset_t *ds) {
  if (!ds) return;
  if (ds->impl && ds->impl->close) ds->impl->close(ds);
  free(ds->path);
  free(ds->media_base);
  free(ds);
}

/* ---------------------------------------------------------------------------------------------------------------- */
/* reader and buffer                                                                                                 */

int nq_ds__reader_open(nq_ds_reader_t *r, const char *path, nq_err_t *err) {
  memset(r, 0, sizeof *r);
  struct stat sb;
  if (stat(path, &sb) != 0)
    return nq_err_set(err, errno == ENOENT ? NQ_ENOENT : NQ_EIO, NQ_ERR_FATAL, "dataset %s: %s", path,
                      strerror(errno));
  if (S_ISDIR(sb.st_mode)) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "dataset %s: is a directory", path);
  r->f = fopen(path, "rb");
  if (!r->f) return nq_err_set(err, NQ_EIO, NQ_ERR_FATAL, "dataset %s: %s", path, strerror(errno));
  r->buf = malloc(NQ_DS__RBUF);
  if (!r->buf) {
    fclose(r->f);
    r->f = NULL;
    return nq_err_set(err, NQ_ENOMEM, 0, "dataset %s: out of memory", path);
  }
  return 0;
}

void nq_ds__reader_close(nq_ds_reader_t *r) {
  if (r->f) fclose(r->f);
  free(r->buf);
  memset(r, 0, sizeof *r);
}

int nq_ds__reader_fill(nq_ds_reader_t *r) {
  if (r->pos < r->len) return (int)(r->len - r->pos);
  if (r->eof || r->ioerr || !r->f) return r->ioerr ? -1 : 0;
  size_t n = fread(r->buf, 1, NQ_DS__RBUF, r->f);
  r->pos = 0;
  r->len = n;
  if (n == 0) {
    if (ferror(r->f)) {
      r->ioerr = 1;
      return -1;
    }
    r->eof = 1;
    return 0;
  }
  return (int)n;
}

int nq_ds__buf_put(nq_ds_buf_t *b, const void *data, size_t n) {
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + n + 1) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) return NQ_ENOMEM;
    b->p = p;
    b->cap = cap;
  }
  if (n) memcpy(b->p + b->len, data, n);
  b->len += n;
  b->p[b->len] = 0;
  return 0;
}

void nq_ds__buf_free(nq_ds_buf_t *b) {
  free(b->p);
  memset(b, 0, sizeof *b);
}

/* ---------------------------------------------------------------------------------------------------------------- */
/* records                                                                                                           */

json_t *nq_ds__record_new(const char *key, json_t *meta) {
  json_t *rec = json_object();
  if (!meta) meta = json_object();
  /* json_object_set_new steals its value even when it fails (and fails on a NULL value) */
  if (!rec || !meta || json_object_set_new(rec, "key", json_string(key)) ||
      json_object_set_new(rec, "media", json_array())) {
    json_decref(rec);
    json_decref(meta);
    return NULL;
  }
  if (json_object_set_new(rec, "meta", meta)) {
    json_decref(rec);
    return NULL;
  }
  return rec;
}

int nq_ds__record_media(json_t *rec, const char *kind, const char *uri) {
  json_t *m = json_pack("{s:s, s:s}", "kind", kind, "uri", uri);
  if (!m) return NQ_EFORMAT; /* json_pack fails on invalid UTF-8 too */
  return json_array_append_new(json_object_get(rec, "media"), m) == 0 ? 0 : NQ_ENOMEM;
}

int nq_ds__record_text(json_t *rec, const char *s, size_t n) {
  json_t *t = json_stringn(s, n);
  if (!t) return NQ_EFORMAT;
  return json_object_set_new(rec, "text", t) == 0 ? 0 : NQ_ENOMEM;
}

int nq_ds__key_check(const char *key, char *why, size_t cap) {
  size_t len = strlen(key);
  if (len == 0) return snprintf(why, cap, "empty key"), NQ_EFORMAT;
  if (len > NQ_DS_KEY_MAX) return snprintf(why, cap, "key of %zu bytes (max %d)", len, NQ_DS_KEY_MAX), NQ_EFORMAT;
  size_t seg = 0;
  for (size_t i = 0; i <= len; i++) {
    unsigned char c = (unsigned char)key[i];
    if (i < len) {
      if (c < 0x20 || c == 0x7f || c == '\\' || c == '#')
        return snprintf(why, cap, "key contains byte 0x%02x", c), NQ_EFORMAT;
      if (c != '/') continue;
    }
    size_t n = i - seg;
    if (n == 0) return snprintf(why, cap, "key '%.100s' has an empty segment or is absolute", key), NQ_EFORMAT;
    if (n > 200) return snprintf(why, cap, "key has a segment of %zu bytes (max 200)", n), NQ_EFORMAT;
    if ((n == 1 && key[seg] == '.') || (n == 2 && key[seg] == '.' && key[seg + 1] == '.'))
      return snprintf(why, cap, "key '%.100s' has a '.' or '..' segment", key), NQ_EFORMAT;
    seg = i + 1;
  }
  json_t *t = json_string(key); /* NULL for invalid UTF-8 */
  if (!t) return snprintf(why, cap, "key is not valid UTF-8"), NQ_EFORMAT;
  json_decref(t);
  return 0;
}

const char *nq_ds__ext_kind(const char *ext) {
  static const char *const img[] = {"jpg", "jpeg", "png", "webp"};
  static const char *const aud[] = {"wav", "flac", "mp3", "ogg"};
  static const char *const vid[] = {"mp4", "webm", "avi", "mkv"};
  for (int i = 0; i < 4; i++) {
    if (strcasecmp(ext, img[i]) == 0) return "image";
    if (strcasecmp(ext, aud[i]) == 0) return "audio";
    if (strcasecmp(ext, vid[i]) == 0) return "video";
  }
  return NULL;
}

char *nq_ds__abspath(const char *path) {
  char tmp[PATH_MAX];
  if (path[0] == '/') {
    if (strlen(path) >= sizeof tmp) return NULL;
    strcpy(tmp, path);
  } else {
    char cwd[PATH_MAX];
    if (!getcwd(cwd, sizeof cwd)) return NULL;
    size_t cl = strlen(cwd), pl = strlen(path);
    if (cl + 1 + pl >= sizeof tmp) return NULL;
    memcpy(tmp, cwd, cl);
    tmp[cl] = '/';
    memcpy(tmp + cl + 1, path, pl + 1);
  }
  /* lexical normalisation: collapse "//", drop ".", pop on ".." */
  char *out = malloc(strlen(tmp) + 2);
  if (!out) return NULL;
  size_t o = 0;
  const char *s = tmp;
  while (*s) {
    while (*s == '/') s++;
    if (!*s) break;
    const char *e = strchr(s, '/');
    size_t n = e ? (size_t)(e - s) : strlen(s);
    if (n == 1 && s[0] == '.') {
      /* skip */
    } else if (n == 2 && s[0] == '.' && s[1] == '.') {
      while (o > 0 && out[o - 1] != '/') o--;
      if (o > 0) o--; /* the slash */
    } else {
      out[o++] = '/';
      memcpy(out + o, s, n);
      o += n;
    }
    s += n;
  }
  if (o == 0) out[o++] = '/';
  out[o] = 0;
  return out;
}

int nq_ds__path_uri(const nq_dataset_t *ds, const char *path, char *out, size_t cap, nq_err_t *err) {
  size_t len = strlen(path);
  if (len == 0) return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "empty media path");
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)path[i];
    if (c < 0x20 || c == 0x7f)
      return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "media path '%.100s' contains control byte 0x%02x", path, c);
  }
  int n;
  if (path[0] == '/') {
    n = snprintf(out, cap, "file://%s", path);
  } else {
    for (const char *s = path; *s;) {
      const char *e = strchr(s, '/');
      size_t sl = e ? (size_t)(e - s) : strlen(s);
      if (sl == 2 && s[0] == '.' && s[1] == '.')
        return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "media path '%.100s' escapes the media root with '..'", path);
      s += sl;
      while (*s == '/') s++;
    }
    const char *p = path;
    while (p[0] == '.' && p[1] == '/') p += 2;
    const char *base = ds->media_base;
    n = snprintf(out, cap, "file://%s%s%s", base, base[strlen(base) - 1] == '/' ? "" : "/", p);
  }
  if (n < 0 || (size_t)n >= cap)
    return nq_err_set(err, NQ_ELIMIT, NQ_ERR_FATAL, "media path '%.100s' too long", path);
  return 0;
}

int nq_ds__read_file(const char *path, size_t max, void **data, size_t *len, nq_err_t *err) {
  *data = NULL;
  *len = 0;
  FILE *f = fopen(path, "rb");
  if (!f)
    return nq_err_set(err, errno == ENOENT ? NQ_ENOENT : NQ_EIO, errno == ENOENT ? NQ_ERR_FATAL : NQ_ERR_RETRIABLE,
                      "%s: %s", path, strerror(errno));
  struct stat sb;
  if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode)) {
    fclose(f);
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "%s: not a regular file", path);
  }
  if ((unsigned long long)sb.st_size > max) {
    fclose(f);
    return nq_err_set(err, NQ_ELIMIT, NQ_ERR_FATAL, "%s: %lld bytes exceeds the limit of %zu bytes", path,
                      (long long)sb.st_size, max);
  }
  size_t cap = (size_t)sb.st_size;
  char *buf = malloc(cap + 1);
  if (!buf) {
    fclose(f);
    return nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "%s: out of memory for %zu bytes", path, cap);
  }
  size_t got = fread(buf, 1, cap, f);
  int bad = ferror(f);
  fclose(f);
  if (bad) {
    free(buf);
    return nq_err_set(err, NQ_EIO, NQ_ERR_RETRIABLE, "%s: read error", path);
  }
  buf[got] = 0;
  *data = buf;
  *len = got;
  return 0;
}

/* ---------------------------------------------------------------------------------------------------------------- */
/* nq_ds_read_uri                                                                                                    */

const char *nq_ds__member_name(const char *name) {
  while (name[0] == '.' && name[1] == '/') {
    name += 2;
    while (*name == '/') name++;
  }
  return name;
}

int nq_ds__archive_open(const char *shard, struct archive **out, nq_err_t *err) {
  *out = NULL;
  struct archive *a = archive_read_new();
  if (!a) return nq_err_set(err, NQ_ENOMEM, 0, "shard %s: out of memory", shard);
  /* Only filters with in-library decoders: support_filter_all would also accept formats decoded by spawning an
   * external program, which we don't want to run on hostile input. */
  archive_read_support_filter_gzip(a);
  archive_read_support_filter_bzip2(a);
  archive_read_support_filter_xz(a);
  archive_read_support_filter_zstd(a);
  archive_read_support_format_tar(a);
  if (archive_read_open_filename(a, shard, 1 << 16) != ARCHIVE_OK) {
    int code = archive_errno(a) == ENOENT ? NQ_ENOENT : NQ_EFORMAT;
    nq_err_set(err, code, NQ_ERR_FATAL, "shard %s: %s", shard, archive_error_string(a));
    archive_read_free(a);
    return code;
  }
  *out = a;
  return 0;
}

static int nq_ds__read_member(const char *shard, const char *member, void **data, size_t *len, nq_err_t *err) {
  struct archive *a = NULL;
  int rc = nq_ds__archive_open(shard, &a, err);
  if (rc) return rc;
  struct archive_entry *e;
  char last[256] = "(start)";
  for (;;) {
    int r = archive_read_next_header(a, &e);
    if (r == ARCHIVE_EOF) {
      rc = nq_err_set(err, NQ_ENOENT, NQ_ERR_FATAL, "shard %s has no member %s", shard, member);
      break;
    }
    if (r != ARCHIVE_OK && r != ARCHIVE_WARN) {
      rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "shard %s: at or after member %s: %s", shard, last,
                      archive_error_string(a));
      break;
    }
    const char *name = archive_entry_pathname(e);
    if (!name) continue;
    snprintf(last, sizeof last, "%s", name);
    if (strcmp(nq_ds__member_name(name), member) != 0 || archive_entry_filetype(e) != AE_IFREG) continue;
    if (archive_entry_size_is_set(e) && (unsigned long long)archive_entry_size(e) > NQ_DS_READ_MAX) {
      rc = nq_err_set(err, NQ_ELIMIT, NQ_ERR_FATAL, "shard %s: member %s: %lld bytes exceeds the member limit of %llu bytes",
                      shard, member, (long long)archive_entry_size(e), (unsigned long long)NQ_DS_READ_MAX);
      break;
    }
    nq_ds_buf_t b = {0};
    char chunk[1 << 14];
    rc = 0;
    for (;;) {
      la_ssize_t n = archive_read_data(a, chunk, sizeof chunk);
      if (n == 0) break;
      if (n < 0) {
        rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "shard %s: member %s: %s", shard, member,
                        archive_error_string(a));
        break;
      }
      if (b.len + (size_t)n > NQ_DS_READ_MAX) {
        rc = nq_err_set(err, NQ_ELIMIT, NQ_ERR_FATAL, "shard %s: member %s: larger than the member limit of %llu bytes",
                        shard, member, (unsigned long long)NQ_DS_READ_MAX);
        break;
      }
      if (nq_ds__buf_put(&b, chunk, (size_t)n)) {
        rc = nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "shard %s: member %s: out of memory", shard, member);
        break;
      }
    }
    if (rc == 0 && !b.p && nq_ds__buf_put(&b, "", 0))
      rc = nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "shard %s: member %s: out of memory", shard, member);
    if (rc) {
      nq_ds__buf_free(&b);
    } else {
      *data = b.p;
      *len = b.len;
    }
    break;
  }
  archive_read_free(a);
  return rc;
}

int nq_ds_read_uri(const char *uri, void **data, size_t *len, nq_err_t *err) {
  NQ_ASSERT(data && len);
  *data = NULL;
  *len = 0;
  if (!uri || !*uri) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "empty media URI");
  const char *p = uri;
  if (strncmp(uri, "file://", 7) == 0) {
    p = uri + 7;
    if (strncmp(p, "localhost/", 10) == 0) p += 9;
  } else {
    const char *c = uri;
    while (isalnum((unsigned char)*c) || *c == '+' || *c == '-' || *c == '.') c++;
    if (c != uri && strncmp(c, "://", 3) == 0)
      return nq_err_set(err, NQ_EUNSUPPORTED, NQ_ERR_FATAL, "media URI '%.200s': unsupported scheme", uri);
  }
  size_t pl = strlen(p);
  if (pl == 0 || pl >= PATH_MAX) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "media URI '%.200s': bad path", uri);
  struct stat sb;
  if (stat(p, &sb) == 0 && S_ISREG(sb.st_mode)) return nq_ds__read_file(p, NQ_DS_READ_MAX, data, len, err);
  /* shard#member: the first '#' whose prefix is a regular file */
  char shard[PATH_MAX];
  for (const char *h = strchr(p, '#'); h; h = strchr(h + 1, '#')) {
    size_t n = (size_t)(h - p);
    memcpy(shard, p, n);
    shard[n] = 0;
    if (stat(shard, &sb) == 0 && S_ISREG(sb.st_mode)) {
      if (!h[1]) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "media URI '%.200s': empty member name", uri);
      return nq_ds__read_member(shard, h + 1, data, len, err);
    }
  }
  return nq_err_set(err, NQ_ENOENT, NQ_ERR_FATAL, "media URI '%.200s': not found", uri);
}

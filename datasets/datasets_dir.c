/* datasets/datasets_dir.c — a directory tree as a dataset: files grouped by relative path without extension. */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "datasets/datasets_int.h"

#define NQ_DS__DIR_DEPTH 64       /* deeper trees are an error (and symlink loops can't happen: links aren't entered) */
#define NQ_DS__DIR_FILES 50000000 /* sanity bound on the file count */

typedef struct nq_ds_file {
  char *rel;       /* owned: path relative to the root */
  size_t key_len;  /* rel[0..key_len) is the key */
  const char *ext; /* borrowed from rel: the last extension without the dot, "" if none */
} nq_ds_file_t;

typedef struct nq_ds_dir {
  char *root;          /* owned: absolute root */
  nq_ds_file_t *files; /* owned, sorted by (key, ext) */
  size_t n, cap, next;
} nq_ds_dir_t;

static int nq_ds__dir_add(nq_ds_dir_t *st, const char *rel) {
  if (st->n >= NQ_DS__DIR_FILES) return NQ_ELIMIT;
  if (st->n == st->cap) {
    size_t cap = st->cap ? st->cap * 2 : 64;
    nq_ds_file_t *f = realloc(st->files, cap * sizeof *f);
    if (!f) return NQ_ENOMEM;
    st->files = f;
    st->cap = cap;
  }
  char *r = strdup(rel);
  if (!r) return NQ_ENOMEM;
  const char *base = strrchr(r, '/');
  base = base ? base + 1 : r;
  const char *dot = strrchr(base, '.');
  nq_ds_file_t *f = &st->files[st->n++];
  f->rel = r;
  f->key_len = dot && dot != base ? (size_t)(dot - r) : strlen(r);
  f->ext = dot && dot != base ? dot + 1 : "";
  return 0;
}

static int nq_ds__dir_walk(nq_ds_dir_t *st, const char *rel, int depth, nq_err_t *err) {
  char full[PATH_MAX];
  int n = snprintf(full, sizeof full, "%s%s%s", st->root, rel[0] ? "/" : "", rel);
  if (n < 0 || (size_t)n >= sizeof full) return nq_err_set(err, NQ_ELIMIT, NQ_ERR_FATAL, "dir dataset: path too long under %s", st->root);
  if (depth > NQ_DS__DIR_DEPTH)
    return nq_err_set(err, NQ_ELIMIT, NQ_ERR_FATAL, "dir dataset: %s is nested deeper than %d", full, NQ_DS__DIR_DEPTH);
  DIR *d = opendir(full);
  if (!d)
    return nq_err_set(err, errno == ENOENT ? NQ_ENOENT : NQ_EIO, NQ_ERR_FATAL, "dir dataset: %s: %s", full,
                      strerror(errno));
  int rc = 0;
  struct dirent *de;
  while (!rc && (de = readdir(d))) {
    if (de->d_name[0] == '.') continue; /* ".", "..", hidden files */
    char sub[PATH_MAX], path[PATH_MAX];
    if (snprintf(sub, sizeof sub, "%s%s%s", rel, rel[0] ? "/" : "", de->d_name) >= (int)sizeof sub ||
        snprintf(path, sizeof path, "%s/%s", full, de->d_name) >= (int)sizeof path) {
      rc = nq_err_set(err, NQ_ELIMIT, NQ_ERR_FATAL, "dir dataset: path too long under %s", full);
      break;
    }
    struct stat sb;
    if (lstat(path, &sb) != 0) continue; /* vanished meanwhile */
    if (S_ISDIR(sb.st_mode)) {
      rc = nq_ds__dir_walk(st, sub, depth + 1, err);
    } else if (S_ISLNK(sb.st_mode)) {
      if (stat(path, &sb) == 0 && S_ISREG(sb.st_mode)) rc = nq_ds__dir_add(st, sub); /* links to files only */
    } else if (S_ISREG(sb.st_mode)) {
      rc = nq_ds__dir_add(st, sub);
    }
    if (rc == NQ_ENOMEM) nq_err_set(err, rc, NQ_ERR_RETRIABLE, "dir dataset %s: out of memory", st->root);
    if (rc == NQ_ELIMIT) nq_err_set(err, rc, NQ_ERR_FATAL, "dir dataset %s: more than %d files", st->root, NQ_DS__DIR_FILES);
  }
  closedir(d);
  return rc;
}

static int nq_ds__file_cmp(const void *pa, const void *pb) {
  const nq_ds_file_t *a = pa, *b = pb;
  size_t n = a->key_len < b->key_len ? a->key_len : b->key_len;
  int c = memcmp(a->rel, b->rel, n);
  if (c) return c;
  if (a->key_len != b->key_len) return a->key_len < b->key_len ? -1 : 1;
  return strcmp(a->ext, b->ext);
}

/* Adds one file to rec. */
static int nq_ds__dir_file(nq_dataset_t *ds, nq_ds_dir_t *st, json_t *rec, const nq_ds_file_t *f, int *has_txt,
                           nq_err_t *err) {
  char path[PATH_MAX], uri[PATH_MAX + 16];
  if ((size_t)snprintf(path, sizeof path, "%s/%s", st->root, f->rel) >= sizeof path ||
      (size_t)snprintf(uri, sizeof uri, "file://%s", path) >= sizeof uri)
    return nq_err_set(err, NQ_ELIMIT, NQ_ERR_FATAL, "dir dataset: %s/%s: path too long", st->root, f->rel);
  for (const char *c = f->rel; *c; c++)
    if ((unsigned char)*c < 0x20 || *c == 0x7f || *c == '#')
      return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "dir dataset: %s: unsafe byte 0x%02x in the name", path,
                        (unsigned char)*c);
  json_t *meta = json_object_get(rec, "meta");
  const char *kind = nq_ds__ext_kind(f->ext);
  if (kind) {
    if (nq_ds__record_media(rec, kind, uri))
      return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "dir dataset: %s: name is not UTF-8", path);
    return 0;
  }
  int is_txt = strcasecmp(f->ext, "txt") == 0, is_json = strcasecmp(f->ext, "json") == 0,
      is_cls = strcasecmp(f->ext, "cls") == 0;
  if (!is_txt && !is_json && !is_cls) {
    json_t *members = json_object_get(meta, "members");
    if (!members && (!(members = json_object()) || json_object_set_new(meta, "members", members)))
      return nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "dir dataset: out of memory");
    json_t *u = json_string(uri);
    if (!u || json_object_set_new(members, f->ext[0] ? f->ext : "(none)", u))
      return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "dir dataset: %s: name is not UTF-8", path);
    return 0;
  }
  void *data = NULL;
  size_t len = 0;
  int rc = nq_ds__read_file(path, ds->max_record, &data, &len, err);
  if (rc) return rc;
  char *s = data;
  if (is_txt) {
    while (len && (s[len - 1] == '\n' || s[len - 1] == '\r')) len--; /* the file's final newline */
    if ((rc = nq_ds__record_text(rec, s, len)))
      nq_err_set(err, rc, NQ_ERR_FATAL, "dir dataset: %s: text is not valid UTF-8", path);
    else
      *has_txt = 1;
  } else if (is_json) {
    json_error_t jerr;
    json_t *o = json_loadb(s, len, 0, &jerr);
    if (!o || !json_is_object(o)) {
      rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "dir dataset: %s:%d: %s%s", path, o ? 1 : jerr.line,
                      o ? "not a JSON object" : "invalid JSON: ", o ? "" : jerr.text);
    } else {
      if (json_object_update(meta, o)) rc = nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "dir dataset: out of memory");
      static const char *const tf[] = {"caption", "text", "prompt"};
      for (int i = 0; i < 3 && !rc && !*has_txt; i++) {
        json_t *t = json_object_get(o, tf[i]);
        if (json_is_string(t)) {
          rc = nq_ds__record_text(rec, json_string_value(t), json_string_length(t));
          break;
        }
      }
    }
    json_decref(o);
  } else {
    size_t l = len;
    while (l && isspace((unsigned char)s[l - 1])) l--;
    while (l && isspace((unsigned char)*s)) s++, l--;
    s[l] = 0;
    char *end = NULL;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    json_t *c = (l && end && *end == 0 && errno == 0) ? json_integer(v) : json_stringn(s, l);
    if (!c || json_object_set_new(meta, "cls", c))
      rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "dir dataset: %s: class is not valid UTF-8", path);
  }
  free(data);
  return rc;
}

static int nq_ds__dir_next(nq_dataset_t *ds, json_t **rec, nq_err_t *err) {
  nq_ds_dir_t *st = ds->state;
  if (st->next >= st->n) return 0;
  size_t i = st->next, j = i + 1;
  const nq_ds_file_t *f0 = &st->files[i];
  while (j < st->n && st->files[j].key_len == f0->key_len && memcmp(st->files[j].rel, f0->rel, f0->key_len) == 0) j++;
  st->next = j; /* whatever happens, the next call moves on to the next key */
  char key[NQ_DS_KEY_MAX + 1], why[160];
  if (f0->key_len > NQ_DS_KEY_MAX)
    return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "dir dataset: %s/%.200s: key too long", st->root, f0->rel);
  memcpy(key, f0->rel, f0->key_len);
  key[f0->key_len] = 0;
  if (nq_ds__key_check(key, why, sizeof why))
    return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "dir dataset: %s/%.200s: %s", st->root, f0->rel, why);
  json_t *r = nq_ds__record_new(key, NULL);
  if (!r) return nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "dir dataset: out of memory");
  int has_txt = 0;
  for (size_t k = i; k < j; k++) {
    int rc = nq_ds__dir_file(ds, st, r, &st->files[k], &has_txt, err);
    if (rc) {
      json_decref(r);
      return rc;
    }
  }
  *rec = r;
  return 1;
}

static void nq_ds__dir_close(nq_dataset_t *ds) {
  nq_ds_dir_t *st = ds->state;
  if (!st) return;
  for (size_t i = 0; i < st->n; i++) free(st->files[i].rel);
  free(st->files);
  free(st->root);
  free(st);
  ds->state = NULL;
}

static const nq_ds_impl_i nq_ds__dir_impl = {nq_ds__dir_next, nq_ds__dir_close};

int nq_ds__open_dir(nq_dataset_t *ds, nq_err_t *err) {
  nq_ds_dir_t *st = calloc(1, sizeof *st);
  if (!st) return nq_err_set(err, NQ_ENOMEM, 0, "dataset %s: out of memory", ds->path);
  ds->state = st;
  ds->impl = &nq_ds__dir_impl;
  st->root = nq_ds__abspath(ds->path);
  if (!st->root) return nq_err_set(err, NQ_ENOMEM, 0, "dataset %s: out of memory or path too long", ds->path);
  struct stat sb;
  if (stat(st->root, &sb) != 0 || !S_ISDIR(sb.st_mode))
    return nq_err_set(err, NQ_ENOENT, NQ_ERR_FATAL, "dir dataset %s: not a directory", ds->path);
  int rc = nq_ds__dir_walk(st, "", 0, err);
  if (rc) return rc;
  if (st->n) qsort(st->files, st->n, sizeof *st->files, nq_ds__file_cmp);
  return 0;
}

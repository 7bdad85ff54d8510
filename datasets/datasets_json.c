/* datasets/datasets_json.c — JSONL and NExT-GPT JSON-array readers. Both stream: a line / an element at a time,
 * each capped at ds->max_record bytes, so a 100 MB line or a multi-GB cc3m.json costs bounded memory. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "datasets/datasets_int.h"

typedef struct nq_ds_json {
  nq_ds_reader_t r;
  nq_ds_buf_t buf;             /* the current line / element */
  unsigned long long line;     /* jsonl: 0-based index of the next line; json: 1-based current line */
  unsigned long long elem;     /* json: 0-based index of the next element */
  int started, need_sep, done; /* json array scanner state */
} nq_ds_json_t;

/* ---------------------------------------------------------------------------------------------------------------- */
/* object -> record                                                                                                  */

/* Adds media from a field holding a path or an array of paths. */
static int nq_ds__media_field(nq_dataset_t *ds, json_t *rec, json_t *v, const char *kind, const char *field,
                              const char *where, nq_err_t *err) {
  char uri[PATH_MAX + 16];
  size_t n = json_is_array(v) ? json_array_size(v) : 1;
  for (size_t i = 0; i < n; i++) {
    json_t *item = json_is_array(v) ? json_array_get(v, i) : v;
    if (!json_is_string(item))
      return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: field '%s' must be a path string or an array of them",
                        where, field);
    if (strlen(json_string_value(item)) != json_string_length(item))
      return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: field '%s' contains NUL", where, field);
    int rc = nq_ds__path_uri(ds, json_string_value(item), uri, sizeof uri, err);
    if (rc) return nq_err_prefix(err, "%s: field '%s'", where, field);
    if ((rc = nq_ds__record_media(rec, kind, uri))) return nq_err_set(err, rc, NQ_ERR_FATAL, "%s: media", where);
  }
  return 0;
}

/* The explicit "media": [{"kind": "image", "uri": "..." | "path": "..."}] array. */
static int nq_ds__media_array(nq_dataset_t *ds, json_t *rec, json_t *arr, const char *where, nq_err_t *err) {
  if (!json_is_array(arr)) return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: 'media' must be an array", where);
  char uri[PATH_MAX + 16];
  for (size_t i = 0; i < json_array_size(arr); i++) {
    json_t *m = json_array_get(arr, i);
    const char *kind = json_string_value(json_object_get(m, "kind"));
    const char *u = json_string_value(json_object_get(m, "uri"));
    const char *p = json_string_value(json_object_get(m, "path"));
    if (!kind || (strcmp(kind, "image") && strcmp(kind, "video") && strcmp(kind, "audio")))
      return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: media[%zu].kind must be image, video or audio", where, i);
    if (u && strstr(u, "://")) {
      for (const char *c = u; *c; c++)
        if ((unsigned char)*c < 0x20 || *c == 0x7f)
          return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: media[%zu].uri contains a control byte", where, i);
      if (strlen(u) != json_string_length(json_object_get(m, "uri")))
        return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: media[%zu].uri contains NUL", where, i);
      if (strlen(u) >= sizeof uri) return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: media[%zu].uri too long", where, i);
      strcpy(uri, u);
    } else {
      const char *path = u ? u : p;
      json_t *pj = json_object_get(m, u ? "uri" : "path");
      if (!path) return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: media[%zu] needs a 'uri' or a 'path'", where, i);
      if (strlen(path) != json_string_length(pj))
        return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: media[%zu] path contains NUL", where, i);
      if (nq_ds__path_uri(ds, path, uri, sizeof uri, err)) return nq_err_prefix(err, "%s: media[%zu]", where, i);
    }
    int rc = nq_ds__record_media(rec, kind, uri);
    if (rc) return nq_err_set(err, rc, NQ_ERR_FATAL, "%s: media[%zu]", where, i);
  }
  return 0;
}

/* obj is stolen (it becomes "meta"). */
static int nq_ds__json_record(nq_dataset_t *ds, json_t *obj, const char *fallback_key, const char *where,
                              json_t **out, nq_err_t *err) {
  static const char *const key_fields[] = {"id", "key", "audio_id"};
  static const char *const text_fields[] = {"prompt", "text", "caption"};
  static const struct { const char *field, *kind; } media_fields[] = {
      {"image", "image"}, {"image_name", "image"}, {"video", "video"},
      {"video_name", "video"}, {"audio", "audio"}, {"audio_name", "audio"},
  };
  char keybuf[64], why[160];
  const char *key = fallback_key;
  for (size_t i = 0; i < 3; i++) {
    json_t *k = json_object_get(obj, key_fields[i]);
    if (json_is_string(k)) {
      key = json_string_value(k);
      if (strlen(key) != json_string_length(k)) {
        json_decref(obj);
        return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: field '%s' contains NUL", where, key_fields[i]);
      }
      break;
    }
    if (json_is_integer(k)) {
      snprintf(keybuf, sizeof keybuf, "%lld", (long long)json_integer_value(k));
      key = keybuf;
      break;
    }
  }
  if (nq_ds__key_check(key, why, sizeof why)) {
    json_decref(obj);
    return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: invalid key: %s", where, why);
  }
  json_t *rec = nq_ds__record_new(key, obj); /* key is copied before obj could go */
  if (!rec) return nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "%s: out of memory", where);
  int rc = 0;
  for (size_t i = 0; i < 3 && !rc; i++) {
    json_t *t = json_object_get(obj, text_fields[i]);
    if (json_is_string(t)) {
      rc = nq_ds__record_text(rec, json_string_value(t), json_string_length(t));
      if (rc) nq_err_set(err, rc, NQ_ERR_FATAL, "%s: bad text", where);
      break;
    }
  }
  for (size_t i = 0; i < sizeof media_fields / sizeof media_fields[0] && !rc; i++) {
    json_t *v = json_object_get(obj, media_fields[i].field);
    if (v && !json_is_null(v))
      rc = nq_ds__media_field(ds, rec, v, media_fields[i].kind, media_fields[i].field, where, err);
  }
  json_t *m = json_object_get(obj, "media");
  if (!rc && m && !json_is_null(m)) rc = nq_ds__media_array(ds, rec, m, where, err);
  if (rc) {
    json_decref(rec);
    return rc;
  }
  *out = rec;
  return 1;
}

/* ---------------------------------------------------------------------------------------------------------------- */
/* JSONL                                                                                                             */

/* Reads one line into st->buf (without the newline). 1 = a line, 0 = EOF, <0 = I/O error. *overflow when the line
 * exceeded max (its bytes are discarded, the reader is past it). */
static int nq_ds__read_line(nq_ds_json_t *st, size_t max, int *overflow) {
  nq_ds_reader_t *r = &st->r;
  st->buf.len = 0;
  if (st->buf.p) st->buf.p[0] = 0;
  *overflow = 0;
  int any = 0;
  for (;;) {
    int avail = nq_ds__reader_fill(r);
    if (avail < 0) return -1;
    if (avail == 0) return any;
    any = 1;
    unsigned char *s = r->buf + r->pos;
    unsigned char *nl = memchr(s, '\n', (size_t)avail);
    size_t n = nl ? (size_t)(nl - s) : (size_t)avail;
    if (!*overflow) {
      if (st->buf.len + n > max) {
        *overflow = 1;
        nq_ds__buf_free(&st->buf); /* don't keep a huge buffer around */
      } else if (nq_ds__buf_put(&st->buf, s, n)) {
        return -2;
      }
    }
    r->pos += n + (nl ? 1 : 0);
    r->off += n + (nl ? 1 : 0);
    if (nl) return 1;
  }
}

static int nq_ds__jsonl_next(nq_dataset_t *ds, json_t **rec, nq_err_t *err) {
  nq_ds_json_t *st = ds->state;
  if (st->done) return 0;
  for (;;) {
    int overflow = 0;
    int r = nq_ds__read_line(st, ds->max_record, &overflow);
    if (r == 0) return 0;
    unsigned long long lineno = st->line++; /* 0-based */
    if (r == -1) {
      st->done = 1; /* a read error ends the file: the caller must not spin on it */
      return nq_err_set(err, NQ_EIO, NQ_ERR_RETRIABLE, "%s:%llu: read error", ds->path, lineno + 1);
    }
    if (r < 0) return nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "%s:%llu: out of memory", ds->path, lineno + 1);
    if (overflow)
      return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s:%llu: line longer than %zu bytes", ds->path, lineno + 1,
                        ds->max_record);
    char *s = st->buf.p ? st->buf.p : (char *)"";
    size_t n = st->buf.len;
    if (lineno == 0 && n >= 3 && memcmp(s, "\xEF\xBB\xBF", 3) == 0) s += 3, n -= 3; /* UTF-8 BOM */
    while (n > 0 && (s[n - 1] == '\r' || s[n - 1] == ' ' || s[n - 1] == '\t')) n--;
    size_t lead = 0;
    while (lead < n && (s[lead] == ' ' || s[lead] == '\t')) lead++;
    if (lead == n) continue; /* blank line */
    json_error_t jerr;
    json_t *obj = json_loadb(s, n, JSON_REJECT_DUPLICATES, &jerr);
    if (!obj)
      return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s:%llu:%d: invalid JSON: %s", ds->path, lineno + 1,
                        jerr.column, jerr.text);
    if (!json_is_object(obj)) {
      json_decref(obj);
      return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s:%llu: not a JSON object", ds->path, lineno + 1);
    }
    char where[PATH_MAX + 32], key[32];
    snprintf(where, sizeof where, "%s:%llu", ds->path, lineno + 1);
    snprintf(key, sizeof key, "%06llu", lineno);
    return nq_ds__json_record(ds, obj, key, where, rec, err);
  }
}

/* ---------------------------------------------------------------------------------------------------------------- */
/* NExT-GPT JSON array                                                                                               */

static inline int nq_ds__jgetc(nq_ds_json_t *st) {
  int c = nq_ds__getc(&st->r);
  if (c == '\n') st->line++;
  return c;
}

static int nq_ds__skip_ws(nq_ds_json_t *st) {
  for (;;) {
    int c = nq_ds__peekc(&st->r);
    if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
      nq_ds__jgetc(st);
      continue;
    }
    return c;
  }
}

static int nq_ds__array_next(nq_dataset_t *ds, json_t **rec, nq_err_t *err) {
  nq_ds_json_t *st = ds->state;
  if (st->done) return 0;
  if (!st->started) {
    st->started = 1;
    st->line = 1;
    if (nq_ds__peekc(&st->r) == 0xEF) { /* BOM */
      for (int i = 0; i < 3; i++) nq_ds__jgetc(st);
    }
    int c = nq_ds__skip_ws(st);
    if (c != '[') {
      st->done = 1;
      return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s:%llu: expected a JSON array ('['), found %s", ds->path,
                        st->line, c < 0 ? "end of file" : "something else");
    }
    nq_ds__jgetc(st);
  }
  for (;;) {
    int c = nq_ds__skip_ws(st);
    if (c < 0) {
      st->done = 1;
      if (st->r.ioerr) return nq_err_set(err, NQ_EIO, NQ_ERR_RETRIABLE, "%s: read error", ds->path);
      return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s:%llu: unterminated array after element %llu", ds->path,
                        st->line, st->elem);
    }
    if (c == ']') {
      nq_ds__jgetc(st);
      st->done = 1;
      return 0;
    }
    if (st->need_sep) {
      if (c != ',') {
        st->done = 1;
        return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s:%llu: expected ',' or ']' after element %llu", ds->path,
                          st->line, st->elem - 1);
      }
      nq_ds__jgetc(st);
      st->need_sep = 0;
      continue;
    }
    break;
  }
  /* one element: scan to the ',' or ']' at depth 0 outside strings */
  unsigned long long elem = st->elem++, line0 = st->line;
  st->need_sep = 1;
  st->buf.len = 0;
  int depth = 0, in_str = 0, esc = 0, overflow = 0;
  for (;;) {
    int c = nq_ds__peekc(&st->r);
    if (c < 0) {
      st->done = 1;
      if (st->r.ioerr) return nq_err_set(err, NQ_EIO, NQ_ERR_RETRIABLE, "%s: read error", ds->path);
      return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s:%llu: element %llu is unterminated", ds->path, line0, elem);
    }
    if (!in_str && depth == 0 && (c == ',' || c == ']')) break;
    nq_ds__jgetc(st);
    if (!overflow) {
      if (st->buf.len + 1 > ds->max_record) {
        overflow = 1;
        nq_ds__buf_free(&st->buf);
      } else {
        unsigned char ch = (unsigned char)c;
        if (nq_ds__buf_put(&st->buf, &ch, 1)) {
          st->done = 1;
          return nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "%s: element %llu: out of memory", ds->path, elem);
        }
      }
    }
    if (in_str) {
      if (esc) esc = 0;
      else if (c == '\\') esc = 1;
      else if (c == '"') in_str = 0;
    } else if (c == '"') {
      in_str = 1;
    } else if (c == '{' || c == '[') {
      depth++;
    } else if (c == '}' || c == ']') {
      if (--depth < 0) {
        st->done = 1;
        return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s:%llu: element %llu: unbalanced '%c'", ds->path, st->line,
                          elem, c);
      }
    }
  }
  if (overflow)
    return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s:%llu: element %llu is larger than %zu bytes", ds->path, line0,
                      elem, ds->max_record);
  while (st->buf.len > 0 && strchr(" \t\r\n", st->buf.p[st->buf.len - 1])) st->buf.len--;
  if (st->buf.len == 0)
    return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s:%llu: element %llu is empty", ds->path, line0, elem);
  json_error_t jerr;
  json_t *obj = json_loadb(st->buf.p, st->buf.len, JSON_REJECT_DUPLICATES, &jerr);
  if (!obj)
    return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s:%llu: element %llu: invalid JSON: %s", ds->path,
                      line0 + (jerr.line > 1 ? (unsigned long long)jerr.line - 1 : 0), elem, jerr.text);
  if (!json_is_object(obj)) {
    json_decref(obj);
    return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s:%llu: element %llu is not a JSON object", ds->path, line0,
                      elem);
  }
  char where[PATH_MAX + 64], key[32];
  snprintf(where, sizeof where, "%s:%llu: element %llu", ds->path, line0, elem);
  snprintf(key, sizeof key, "%06llu", elem);
  return nq_ds__json_record(ds, obj, key, where, rec, err);
}

/* ---------------------------------------------------------------------------------------------------------------- */

static void nq_ds__json_close(nq_dataset_t *ds) {
  nq_ds_json_t *st = ds->state;
  if (!st) return;
  nq_ds__reader_close(&st->r);
  nq_ds__buf_free(&st->buf);
  free(st);
  ds->state = NULL;
}

static const nq_ds_impl_i nq_ds__jsonl_impl = {nq_ds__jsonl_next, nq_ds__json_close};
static const nq_ds_impl_i nq_ds__array_impl = {nq_ds__array_next, nq_ds__json_close};

int nq_ds__open_json(nq_dataset_t *ds, nq_err_t *err) {
  nq_ds_json_t *st = calloc(1, sizeof *st);
  if (!st) return nq_err_set(err, NQ_ENOMEM, 0, "dataset %s: out of memory", ds->path);
  int rc = nq_ds__reader_open(&st->r, ds->path, err);
  if (rc) {
    free(st);
    return rc;
  }
  ds->state = st;
  ds->impl = ds->format == NQ_DS_JSONL ? &nq_ds__jsonl_impl : &nq_ds__array_impl;
  return 0;
}

/* datasets/datasets_wds.c — WebDataset tar shards (libarchive) and brace expansion of shard patterns.
 *
 * Members of one sample are consecutive in a shard and share a key (directory + basename up to the first dot). The
 * reader keeps one sample "in progress" and emits it when a member with another key (or the end of the shard)
 * arrives. Media members are not read, only addressed ("file://<shard>#<member>"); text/json/cls members are read
 * (capped at ds->max_record).
 *
 * Failure scopes:
 *   - a bad member (unsafe name, invalid UTF-8 text, bad .json, too large) spoils its sample: an error is returned
 *     once, the sample's other members are skipped, the shard goes on;
 *   - a shard that can't be opened, or breaks while reading (truncated, corrupt header), ends that shard: the
 *     in-progress sample is dropped, an error names the shard and member, the next call opens the next shard.
 */
#include <archive.h>
#include <archive_entry.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "datasets/datasets_int.h"

/* ---------------------------------------------------------------------------------------------------------------- */
/* brace expansion                                                                                                   */

typedef struct nq_ds_strv {
  char **v; /* owned strings, NULL-terminated when finished */
  size_t n, cap;
} nq_ds_strv_t;

static int nq_ds__strv_push(nq_ds_strv_t *s, char *str /* stolen */) {
  if (!str) return NQ_ENOMEM;
  if (s->n + 2 > s->cap) {
    size_t cap = s->cap ? s->cap * 2 : 8;
    char **v = realloc(s->v, cap * sizeof *v);
    if (!v) {
      free(str);
      return NQ_ENOMEM;
    }
    s->v = v;
    s->cap = cap;
  }
  s->v[s->n++] = str;
  s->v[s->n] = NULL;
  return 0;
}

static void nq_ds__strv_free(nq_ds_strv_t *s) {
  for (size_t i = 0; i < s->n; i++) free(s->v[i]);
  free(s->v);
  memset(s, 0, sizeof *s);
}

static char *nq_ds__cat3(const char *a, size_t an, const char *b, size_t bn, const char *c) {
  size_t cn = strlen(c);
  char *s = malloc(an + bn + cn + 1);
  if (!s) return NULL;
  memcpy(s, a, an);
  memcpy(s + an, b, bn);
  memcpy(s + an + bn, c, cn + 1);
  return s;
}

/* Decimal bound of a range ("000", "17"): 0 and the value, or -1. */
static int nq_ds__range_bound(const char *s, size_t n, long long *v) {
  if (n == 0 || n > 18) return -1;
  long long x = 0;
  for (size_t i = 0; i < n; i++) {
    if (!isdigit((unsigned char)s[i])) return -1;
    x = x * 10 + (s[i] - '0');
  }
  *v = x;
  return 0;
}

static int nq_ds__expand(const char *pat, nq_ds_strv_t *out, nq_err_t *err) {
  const char *open = strchr(pat, '{');
  if (!open) {
    if (strchr(pat, '}'))
      return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "shard pattern: unmatched '}' in '%.200s'", pat);
    if (out->n >= NQ_DS_MAX_SHARDS) return nq_err_set(err, NQ_ELIMIT, NQ_ERR_FATAL, "shard pattern: too many shards");
    return nq_ds__strv_push(out, strdup(pat)) ? nq_err_set(err, NQ_ENOMEM, 0, "shard pattern: out of memory") : 0;
  }
  const char *close = strchr(open + 1, '}');
  if (!close) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "shard pattern: unmatched '{' in '%.200s'", pat);
  const char *inner = memchr(open + 1, '{', (size_t)(close - open - 1));
  if (inner) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "shard pattern: nested braces in '%.200s'", pat);
  const char *body = open + 1;
  size_t bl = (size_t)(close - body);
  size_t pre = (size_t)(open - pat);

  /* the rest of the pattern first, once */
  nq_ds_strv_t rest = {0};
  int rc = nq_ds__expand(close + 1, &rest, err);
  if (rc) {
    nq_ds__strv_free(&rest);
    return rc;
  }
  const char *dots = NULL;
  for (size_t i = 0; i + 1 < bl; i++)
    if (body[i] == '.' && body[i + 1] == '.') {
      dots = body + i;
      break;
    }
  long long lo, hi;
  if (dots && !memchr(body, ',', bl) && nq_ds__range_bound(body, (size_t)(dots - body), &lo) == 0 &&
      nq_ds__range_bound(dots + 2, (size_t)(close - dots - 2), &hi) == 0) {
    size_t la = (size_t)(dots - body), lb = (size_t)(close - dots - 2);
    int width = ((la > 1 && body[0] == '0') || (lb > 1 && dots[2] == '0')) ? (int)(la > lb ? la : lb) : 0;
    unsigned long long count = (unsigned long long)(lo <= hi ? hi - lo : lo - hi) + 1;
    if (count * rest.n > NQ_DS_MAX_SHARDS || out->n + count * rest.n > NQ_DS_MAX_SHARDS) {
      nq_ds__strv_free(&rest);
      return nq_err_set(err, NQ_ELIMIT, NQ_ERR_FATAL, "shard pattern: '%.200s' expands to more than %d shards", pat,
                        NQ_DS_MAX_SHARDS);
    }
    for (unsigned long long k = 0; k < count && !rc; k++) {
      long long v = lo <= hi ? lo + (long long)k : lo - (long long)k;
      char num[32];
      int nn = snprintf(num, sizeof num, "%0*lld", width, v);
      for (size_t j = 0; j < rest.n && !rc; j++)
        rc = nq_ds__strv_push(out, nq_ds__cat3(pat, pre, num, (size_t)nn, rest.v[j]));
    }
  } else if (memchr(body, ',', bl)) {
    size_t nalt = 1;
    for (size_t i = 0; i < bl; i++) nalt += body[i] == ',';
    if (nalt * rest.n > NQ_DS_MAX_SHARDS || out->n + nalt * rest.n > NQ_DS_MAX_SHARDS) {
      nq_ds__strv_free(&rest);
      return nq_err_set(err, NQ_ELIMIT, NQ_ERR_FATAL, "shard pattern: '%.200s' expands to more than %d shards", pat,
                        NQ_DS_MAX_SHARDS);
    }
    const char *a = body;
    while (!rc) {
      const char *e = memchr(a, ',', (size_t)(close - a));
      if (!e) e = close;
      for (size_t j = 0; j < rest.n && !rc; j++) {
        char *head = nq_ds__cat3(pat, pre, a, (size_t)(e - a), "");
        char *full = head ? nq_ds__cat3(head, strlen(head), "", 0, rest.v[j]) : NULL;
        free(head);
        rc = nq_ds__strv_push(out, full);
      }
      if (e == close) break;
      a = e + 1;
    }
  } else {
    nq_ds__strv_free(&rest);
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL,
                      "shard pattern: '{%.*s}' is neither a range {A..B} of integers nor a list {a,b} in '%.200s'",
                      (int)(bl > 100 ? 100 : bl), body, pat);
  }
  nq_ds__strv_free(&rest);
  if (rc) return nq_err_set(err, NQ_ENOMEM, 0, "shard pattern: out of memory");
  return 0;
}

int nq_ds_brace_expand(const char *pattern, char ***out, size_t *n, nq_err_t *err) {
  NQ_ASSERT(out && n);
  *out = NULL;
  *n = 0;
  if (!pattern || !*pattern) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "shard pattern: empty");
  nq_ds_strv_t v = {0};
  int rc = nq_ds__expand(pattern, &v, err);
  if (rc) {
    nq_ds__strv_free(&v);
    return rc;
  }
  *out = v.v;
  *n = v.n;
  return 0;
}

void nq_ds_brace_free(char **list) {
  if (!list) return;
  for (char **p = list; *p; p++) free(*p);
  free(list);
}

/* ---------------------------------------------------------------------------------------------------------------- */
/* shard reader                                                                                                      */

typedef struct nq_ds_wds {
  char **shards;             /* owned, NULL-terminated */
  size_t n, next;            /* count, index of the next shard to open */
  struct archive *ar;        /* owned; the open shard or NULL */
  const char *shard;         /* borrowed from shards[]: the open shard as given */
  char *shard_abs;           /* owned: its absolute path, for URIs */
  char last[256];            /* the last member header read, for messages */
  json_t *cur;               /* owned: the sample in progress, NULL if none */
  char cur_key[NQ_DS_KEY_MAX + 1];
  int cur_has_txt;
  int cur_bad;               /* cur_key's sample is spoilt: skip its members, emit nothing */
  int pending;               /* an error to return on the next call (after a finished sample went out first) */
  nq_err_t pending_err;
} nq_ds_wds_t;

static void nq_ds__wds_close_shard(nq_ds_wds_t *st) {
  if (st->ar) archive_read_free(st->ar);
  st->ar = NULL;
  free(st->shard_abs);
  st->shard_abs = NULL;
  st->shard = NULL;
}

/* Member names must stay inside the shard's namespace and be safe to echo in a URI. */
static int nq_ds__member_check(const char *m, char *why, size_t cap) {
  if (!*m) return snprintf(why, cap, "empty name"), -1;
  if (m[0] == '/') return snprintf(why, cap, "absolute name"), -1;
  for (const char *c = m; *c; c++) {
    unsigned char ch = (unsigned char)*c;
    if (ch < 0x20 || ch == 0x7f) return snprintf(why, cap, "control byte 0x%02x in name", ch), -1;
    if (ch == '#' || ch == '\\') return snprintf(why, cap, "'%c' in name", ch), -1;
  }
  for (const char *s = m; *s;) {
    const char *e = strchr(s, '/');
    size_t n = e ? (size_t)(e - s) : strlen(s);
    if (n == 2 && s[0] == '.' && s[1] == '.') return snprintf(why, cap, "'..' in name"), -1;
    s += n;
    while (*s == '/') s++;
  }
  return 0;
}

/* Reads the current member's data (at most max bytes). <0: *shard_broken set when the archive itself failed. */
static int nq_ds__wds_read(nq_dataset_t *ds, nq_ds_wds_t *st, struct archive_entry *e, const char *m, nq_ds_buf_t *b,
                           int *shard_broken, nq_err_t *err) {
  if (archive_entry_size_is_set(e) && (unsigned long long)archive_entry_size(e) > ds->max_record)
    return nq_err_set(err, NQ_ELIMIT, NQ_ERR_FATAL,
                      "shard %s: member %s: %lld bytes exceeds the record limit of %zu bytes (max_record_bytes)",
                      st->shard, m, (long long)archive_entry_size(e), ds->max_record);
  char chunk[1 << 14];
  b->len = 0;
  if (nq_ds__buf_put(b, "", 0)) return nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "shard %s: out of memory", st->shard);
  for (;;) {
    la_ssize_t n = archive_read_data(st->ar, chunk, sizeof chunk);
    if (n == 0) return 0;
    if (n < 0) {
      *shard_broken = 1;
      return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "shard %s: member %s: %s", st->shard, m,
                        archive_error_string(st->ar) ? archive_error_string(st->ar) : "read error");
    }
    if (b->len + (size_t)n > ds->max_record)
      return nq_err_set(err, NQ_ELIMIT, NQ_ERR_FATAL,
                        "shard %s: member %s: larger than the record limit of %zu bytes (max_record_bytes)", st->shard,
                        m, ds->max_record);
    if (nq_ds__buf_put(b, chunk, (size_t)n))
      return nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "shard %s: member %s: out of memory", st->shard, m);
  }
}

static int nq_ds__wds_skip(nq_ds_wds_t *st, const char *m, int *shard_broken, nq_err_t *err) {
  int r = archive_read_data_skip(st->ar);
  if (r != ARCHIVE_OK && r != ARCHIVE_WARN) {
    *shard_broken = 1;
    return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "shard %s: member %s: %s", st->shard, m,
                      archive_error_string(st->ar) ? archive_error_string(st->ar) : "read error");
  }
  return 0;
}

/* Adds one member to st->cur. */
static int nq_ds__wds_member(nq_dataset_t *ds, nq_ds_wds_t *st, struct archive_entry *e, const char *m,
                             const char *ext_full, const char *ext, int *shard_broken, nq_err_t *err) {
  char uri[PATH_MAX + 300];
  int n = snprintf(uri, sizeof uri, "file://%s#%s", st->shard_abs, m);
  if (n < 0 || (size_t)n >= sizeof uri)
    return nq_err_set(err, NQ_ELIMIT, NQ_ERR_FATAL, "shard %s: member %s: URI too long", st->shard, m);
  json_t *meta = json_object_get(st->cur, "meta");
  const char *kind = nq_ds__ext_kind(ext);
  int rc;
  if (kind) {
    if ((rc = nq_ds__wds_skip(st, m, shard_broken, err))) return rc;
    if ((rc = nq_ds__record_media(st->cur, kind, uri)))
      return nq_err_set(err, rc, NQ_ERR_FATAL, "shard %s: member %s: bad name", st->shard, m);
    return 0;
  }
  if (strcasecmp(ext, "txt") && strcasecmp(ext, "json") && strcasecmp(ext, "cls")) {
    if ((rc = nq_ds__wds_skip(st, m, shard_broken, err))) return rc;
    json_t *members = json_object_get(meta, "members");
    if (!members) {
      members = json_object();
      if (!members || json_object_set_new(meta, "members", members))
        return nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "shard %s: out of memory", st->shard);
    }
    json_t *u = json_string(uri);
    if (!u || json_object_set_new(members, ext_full[0] ? ext_full : "(none)", u))
      return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "shard %s: member %s: name is not UTF-8", st->shard, m);
    return 0;
  }
  nq_ds_buf_t b = {0};
  rc = nq_ds__wds_read(ds, st, e, m, &b, shard_broken, err);
  if (rc) goto done;
  if (strcasecmp(ext, "txt") == 0) {
    while (b.len && (b.p[b.len - 1] == '\n' || b.p[b.len - 1] == '\r')) b.len--; /* the file's final newline */
    if ((rc = nq_ds__record_text(st->cur, b.p, b.len)))
      nq_err_set(err, rc, NQ_ERR_FATAL, "shard %s: member %s: text is not valid UTF-8", st->shard, m);
    else
      st->cur_has_txt = 1;
  } else if (strcasecmp(ext, "json") == 0) {
    json_error_t jerr;
    json_t *o = json_loadb(b.p, b.len, 0, &jerr);
    if (!o || !json_is_object(o)) {
      rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "shard %s: member %s: %s%s", st->shard, m,
                      o ? "not a JSON object" : "invalid JSON: ", o ? "" : jerr.text);
      json_decref(o);
      goto done;
    }
    if (json_object_update(meta, o)) rc = nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "shard %s: out of memory", st->shard);
    static const char *const tf[] = {"caption", "text", "prompt"};
    for (int i = 0; i < 3 && !rc && !st->cur_has_txt; i++) {
      json_t *t = json_object_get(o, tf[i]);
      if (json_is_string(t)) {
        rc = nq_ds__record_text(st->cur, json_string_value(t), json_string_length(t));
        break;
      }
    }
    json_decref(o);
  } else { /* cls */
    char *s = b.p;
    size_t l = b.len;
    while (l && isspace((unsigned char)s[l - 1])) l--;
    while (l && isspace((unsigned char)*s)) s++, l--;
    s[l] = 0;
    char *end = NULL;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    json_t *c = (l && end && *end == 0 && errno == 0) ? json_integer(v) : json_stringn(s, l);
    if (!c || json_object_set_new(meta, "cls", c))
      rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "shard %s: member %s: class is not valid UTF-8", st->shard, m);
  }
done:
  nq_ds__buf_free(&b);
  return rc;
}

static int nq_ds__wds_next(nq_dataset_t *ds, json_t **rec, nq_err_t *err) {
  nq_ds_wds_t *st = ds->state;
  if (st->pending) {
    st->pending = 0;
    if (err) *err = st->pending_err;
    return st->pending_err.code;
  }
  for (;;) {
    if (!st->ar) {
      if (st->next >= st->n) return 0;
      st->shard = st->shards[st->next++];
      st->last[0] = 0;
      st->cur_bad = 0;
      st->cur_key[0] = 0;
      st->shard_abs = nq_ds__abspath(st->shard);
      if (!st->shard_abs) {
        const char *s = st->shard;
        nq_ds__wds_close_shard(st);
        return nq_err_set(err, NQ_ELIMIT, NQ_ERR_FATAL, "shard %s: path too long", s);
      }
      int rc = nq_ds__archive_open(st->shard, &st->ar, err);
      if (rc) {
        nq_ds__wds_close_shard(st);
        return rc;
      }
    }
    struct archive_entry *e;
    int r = archive_read_next_header(st->ar, &e);
    if (r == ARCHIVE_EOF) {
      nq_ds__wds_close_shard(st);
      if (st->cur) {
        *rec = st->cur;
        st->cur = NULL;
        return 1;
      }
      continue;
    }
    if (r != ARCHIVE_OK && r != ARCHIVE_WARN) { /* FATAL, FAILED, or RETRY ("damaged"): the shard ends here */
      /* The header after `last` is bad, or last's data was cut (skipping it may not notice). */
      const char *why = archive_error_string(st->ar) ? archive_error_string(st->ar) : "corrupt";
      int rc = st->last[0] ? nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "shard %s: at or after member %s: %s",
                                        st->shard, st->last, why)
                           : nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "shard %s: first member: %s", st->shard, why);
      json_decref(st->cur);
      st->cur = NULL;
      nq_ds__wds_close_shard(st);
      return rc;
    }
    const char *raw = archive_entry_pathname(e);
    if (!raw) {
      nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "shard %s: the member after %s has an unreadable name", st->shard,
                 st->last[0] ? st->last : "(start)");
      snprintf(st->last, sizeof st->last, "(unnamed)");
      return NQ_EFORMAT;
    }
    const char *m = nq_ds__member_name(raw);
    snprintf(st->last, sizeof st->last, "%s", m);
    if (archive_entry_filetype(e) != AE_IFREG) continue; /* directories, links, devices: not samples */
    char why[128];
    if (nq_ds__member_check(m, why, sizeof why))
      return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "shard %s: member %.200s: unsafe name: %s", st->shard, m, why);

    /* key = directory + basename up to its first dot */
    const char *base = strrchr(m, '/');
    base = base ? base + 1 : m;
    const char *dot1 = strchr(base, '.');
    const char *dotl = strrchr(base, '.');
    size_t kl = dot1 ? (size_t)(dot1 - m) : strlen(m);
    const char *ext_full = dot1 ? dot1 + 1 : "";
    const char *ext = dotl ? dotl + 1 : "";
    char key[NQ_DS_KEY_MAX + 1];
    if (kl == 0 || kl > NQ_DS_KEY_MAX || base == dot1)
      return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "shard %s: member %.200s: no usable sample key", st->shard, m);
    memcpy(key, m, kl);
    key[kl] = 0;
    if (nq_ds__key_check(key, why, sizeof why))
      return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "shard %s: member %.200s: %s", st->shard, m, why);

    json_t *finished = NULL;
    if (strcmp(key, st->cur_key) != 0) {
      finished = st->cur; /* may be NULL (start, or after a spoilt sample) */
      st->cur = NULL;
      st->cur_bad = 0;
      st->cur_has_txt = 0;
      snprintf(st->cur_key, sizeof st->cur_key, "%s", key);
    } else if (st->cur_bad) {
      continue; /* the rest of a spoilt sample */
    }
    if (!st->cur && !(st->cur = nq_ds__record_new(key, NULL))) {
      json_decref(finished);
      return nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "shard %s: out of memory", st->shard);
    }
    int broken = 0;
    nq_err_t merr = {0};
    int rc = nq_ds__wds_member(ds, st, e, m, ext_full, ext, &broken, &merr);
    if (rc) {
      json_decref(st->cur);
      st->cur = NULL;
      st->cur_bad = 1;
      if (broken) nq_ds__wds_close_shard(st);
      if (finished) {
        st->pending = 1;
        st->pending_err = merr;
        *rec = finished;
        return 1;
      }
      if (err) *err = merr;
      return rc;
    }
    if (finished) {
      *rec = finished;
      return 1;
    }
  }
}

static void nq_ds__wds_close(nq_dataset_t *ds) {
  nq_ds_wds_t *st = ds->state;
  if (!st) return;
  nq_ds__wds_close_shard(st);
  json_decref(st->cur);
  nq_ds_brace_free(st->shards);
  free(st);
  ds->state = NULL;
}

static const nq_ds_impl_i nq_ds__wds_impl = {nq_ds__wds_next, nq_ds__wds_close};

int nq_ds__open_wds(nq_dataset_t *ds, nq_err_t *err) {
  nq_ds_wds_t *st = calloc(1, sizeof *st);
  if (!st) return nq_err_set(err, NQ_ENOMEM, 0, "dataset %s: out of memory", ds->path);
  int rc = nq_ds_brace_expand(ds->path, &st->shards, &st->n, err);
  if (rc) {
    free(st);
    return nq_err_prefix(err, "dataset %s", ds->path);
  }
  ds->state = st;
  ds->impl = &nq_ds__wds_impl;
  return 0;
}

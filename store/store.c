/* store/store.c — see store.h. */
#include "store/store.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#include "common/hash.h"

struct nq_store {
  char *file_root;      /* owned; lexically normalised absolute path, NULL when unset */
  char *file_root_real; /* owned; realpath(file_root) */
  char *s3_root;        /* owned; same, NULL when unset */
  char *s3_root_real;   /* owned */
};

/* Process-wide counter so temp names are unique across threads and stores. */
static atomic_ulong nq_store__tmp_counter;

/* ---------------------------------------------------------------------------------------------------------------- */
/* errors                                                                                                            */

static int nq_store__errno(nq_err_t *err, int e, const char *what, const char *path) {
  int code = NQ_EIO;
  unsigned flags = NQ_ERR_RETRIABLE;
  switch (e) {
    case ENOENT: code = NQ_ENOENT; flags = NQ_ERR_FATAL; break;
    case ENOMEM: code = NQ_ENOMEM; break;
    case EISDIR: case ENOTDIR: case ENAMETOOLONG: case ELOOP: case EROFS: case EACCES: case EPERM:
      flags = NQ_ERR_FATAL;
      break;
    default: break;
  }
  return nq_err_set(err, code, flags, "store: %s %s: %s", what, path, strerror(e));
}

/* ---------------------------------------------------------------------------------------------------------------- */
/* keys and paths                                                                                                    */

/* Shared segment rules. `strict` (keys): no empty, "." segments. Paths (lenient) may have empty and "." segments,
 * which normalisation drops. Both refuse "..", control characters (incl. NUL), backslash and long segments. */
static int nq_store__check(const char *s, size_t len, int strict, const char *what, nq_err_t *err) {
  if (len == 0) return nq_err_set(err, NQ_EKEY, NQ_ERR_FATAL, "store: empty %s", what);
  size_t seg = 0; /* start of the current segment */
  for (size_t i = 0; i <= len; i++) {
    if (i < len) {
      unsigned char c = (unsigned char)s[i];
      if (c == 0)
        return nq_err_set(err, NQ_EKEY, NQ_ERR_FATAL, "store: %s contains NUL at byte %zu", what, i);
      if (c < 0x20 || c == 0x7f)
        return nq_err_set(err, NQ_EKEY, NQ_ERR_FATAL, "store: %s contains control character 0x%02x at byte %zu",
                          what, c, i);
      if (c == '\\')
        return nq_err_set(err, NQ_EKEY, NQ_ERR_FATAL, "store: %s contains a backslash at byte %zu", what, i);
      if (c != '/') continue;
    }
    size_t n = i - seg;
    if (strict && i == 0 && i < len)
      return nq_err_set(err, NQ_EKEY, NQ_ERR_FATAL, "store: %s '%.*s' is absolute", what, (int)(len > 200 ? 200 : len), s);
    if (n > NQ_STORE_SEGMENT_MAX)
      return nq_err_set(err, NQ_EKEY, NQ_ERR_FATAL, "store: %s has a segment of %zu bytes at byte %zu (max %d)", what,
                        n, seg, NQ_STORE_SEGMENT_MAX);
    if (n == 2 && s[seg] == '.' && s[seg + 1] == '.')
      return nq_err_set(err, NQ_EKEY, NQ_ERR_FATAL, "store: %s '%.*s' contains a '..' segment", what,
                        (int)(len > 200 ? 200 : len), s);
    if (strict && n == 0)
      return nq_err_set(err, NQ_EKEY, NQ_ERR_FATAL, "store: %s '%.*s' has an empty segment at byte %zu", what,
                        (int)(len > 200 ? 200 : len), s, seg);
    if (strict && n == 1 && s[seg] == '.')
      return nq_err_set(err, NQ_EKEY, NQ_ERR_FATAL, "store: %s '%.*s' contains a '.' segment", what,
                        (int)(len > 200 ? 200 : len), s);
    seg = i + 1;
  }
  return 0;
}

int nq_store_key_checkn(const char *key, size_t len, nq_err_t *err) {
  if (!key) return nq_err_set(err, NQ_EKEY, NQ_ERR_FATAL, "store: NULL key");
  if (len > NQ_STORE_KEY_MAX)
    return nq_err_set(err, NQ_EKEY, NQ_ERR_FATAL, "store: key of %zu bytes is too long (max %d)", len,
                      NQ_STORE_KEY_MAX);
  return nq_store__check(key, len, 1, "key", err);
}

int nq_store_key_check(const char *key, nq_err_t *err) {
  if (!key) return nq_err_set(err, NQ_EKEY, NQ_ERR_FATAL, "store: NULL key");
  return nq_store_key_checkn(key, strnlen(key, NQ_STORE_KEY_MAX + 1), err);
}

int nq_store_join(const char *base_uri, const char *key, char *out, size_t cap, nq_err_t *err) {
  NQ_ASSERT(out && cap > 0);
  out[0] = 0;
  if (!base_uri || !*base_uri) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "store: empty base URI");
  int rc = nq_store_key_check(key, err);
  if (rc) return rc;
  size_t bl = strlen(base_uri);
  const char *sep = base_uri[bl - 1] == '/' ? "" : "/";
  int n = snprintf(out, cap, "%s%s%s", base_uri, sep, key);
  if (n < 0 || (size_t)n >= cap) {
    out[0] = 0;
    return nq_err_set(err, NQ_ELIMIT, NQ_ERR_FATAL, "store: '%s' + '%s' does not fit %zu bytes", base_uri, key, cap);
  }
  return 0;
}

/* Lexical normalisation of a checked path: collapse "//", drop "." segments and trailing "/". Writes to out (cap
 * bytes). Absolute stays absolute. */
static int nq_store__normalize(const char *p, char *out, size_t cap, nq_err_t *err) {
  size_t o = 0;
  int abs = p[0] == '/';
  if (abs) {
    if (cap < 2) goto toolong;
    out[o++] = '/';
  }
  const char *s = p;
  while (*s) {
    while (*s == '/') s++;
    if (!*s) break;
    const char *e = strchr(s, '/');
    size_t n = e ? (size_t)(e - s) : strlen(s);
    if (!(n == 1 && s[0] == '.')) {
      if (o > 0 && out[o - 1] != '/') {
        if (o + 1 >= cap) goto toolong;
        out[o++] = '/';
      }
      if (o + n >= cap) goto toolong;
      memcpy(out + o, s, n);
      o += n;
    }
    s += n;
  }
  if (o == 0) {
    if (cap < 2) goto toolong;
    out[o++] = '.';
  }
  out[o] = 0;
  return 0;
toolong:
  out[0] = 0;
  return nq_err_set(err, NQ_ELIMIT, NQ_ERR_FATAL, "store: path '%.200s' is too long", p);
}

/* Is path equal to root or below it (on a "/" boundary)? Both normalised absolute. */
static int nq_store__inside(const char *path, const char *root) {
  if (!root) return 0;
  size_t rl = strlen(root);
  if (rl == 1 && root[0] == '/') return path[0] == '/';
  return strncmp(path, root, rl) == 0 && (path[rl] == 0 || path[rl] == '/');
}

/* realpath() of the deepest existing ancestor of path (path included) must lie inside root_real. */
static int nq_store__symlink_check(const char *path, const char *root_real, const char *uri, nq_err_t *err) {
  char cur[PATH_MAX], real[PATH_MAX];
  if (strlen(path) >= sizeof cur) return nq_err_set(err, NQ_ELIMIT, NQ_ERR_FATAL, "store: path of '%.200s' too long", uri);
  strcpy(cur, path);
  for (;;) {
    if (realpath(cur, real)) break;
    if (errno != ENOENT && errno != ENOTDIR) return nq_store__errno(err, errno, "resolve", cur);
    char *slash = strrchr(cur, '/');
    if (!slash || slash == cur) {
      strcpy(cur, "/");
      if (!realpath(cur, real)) return nq_store__errno(err, errno, "resolve", cur);
      break;
    }
    *slash = 0;
  }
  if (!nq_store__inside(real, root_real))
    return nq_err_set(err, NQ_EKEY, NQ_ERR_FATAL, "store: '%.200s' escapes its root through a symlink (%.200s -> %.200s)",
                      uri, cur, real);
  return 0;
}

/* Does s start with a URI scheme ("xyz://")? Returns the scheme length or 0. */
static size_t nq_store__scheme(const char *s) {
  if (!isalpha((unsigned char)s[0])) return 0;
  size_t i = 1;
  while (isalnum((unsigned char)s[i]) || s[i] == '+' || s[i] == '-' || s[i] == '.') i++;
  return strncmp(s + i, "://", 3) == 0 ? i : 0;
}

int nq_store_resolve(nq_store_t *st, const char *uri, char *path, size_t cap, nq_err_t *err) {
  NQ_ASSERT(st && path && cap > 0);
  path[0] = 0;
  if (!uri || !*uri) return nq_err_set(err, NQ_EKEY, NQ_ERR_FATAL, "store: empty URI");
  size_t ulen = strnlen(uri, PATH_MAX + 16);
  if (ulen > PATH_MAX) return nq_err_set(err, NQ_EKEY, NQ_ERR_FATAL, "store: URI of more than %d bytes", PATH_MAX);

  char buf[PATH_MAX];
  const char *root = NULL, *root_real = NULL;
  int rc;
  size_t sl = nq_store__scheme(uri);
  if (sl == 2 && strncasecmp(uri, "s3", 2) == 0) {
    if (!st->s3_root)
      return nq_err_set(err, NQ_ECONFIG, NQ_ERR_FATAL, "store: '%.200s': s3:// needs a configured s3_root", uri);
    const char *bk = uri + 5, *slash = strchr(bk, '/');
    if (!slash || slash == bk || !slash[1])
      return nq_err_set(err, NQ_EKEY, NQ_ERR_FATAL, "store: '%.200s' is not s3://bucket/key", uri);
    if ((rc = nq_store_key_checkn(bk, (size_t)(slash - bk), err)) ||
        (rc = nq_store_key_check(slash + 1, err)))
      return nq_err_prefix(err, "'%.200s'", uri), rc;
    int n = snprintf(buf, sizeof buf, "%s/%s", st->s3_root, bk);
    if (n < 0 || (size_t)n >= sizeof buf)
      return nq_err_set(err, NQ_ELIMIT, NQ_ERR_FATAL, "store: path of '%.200s' too long", uri);
    root = st->s3_root;
    root_real = st->s3_root_real;
  } else {
    const char *p = uri;
    if (sl == 4 && strncasecmp(uri, "file", 4) == 0) {
      p = uri + 7;
      if (strncmp(p, "localhost/", 10) == 0) p += 9;
    } else if (sl) {
      return nq_err_set(err, NQ_EUNSUPPORTED, NQ_ERR_FATAL, "store: '%.200s': unsupported scheme", uri);
    }
    if ((rc = nq_store__check(p, strlen(p), 0, "path", err))) return nq_err_prefix(err, "'%.200s'", uri), rc;
    char norm[PATH_MAX];
    if ((rc = nq_store__normalize(p, norm, sizeof norm, err))) return rc;
    root = st->file_root;
    root_real = st->file_root_real;
    if (root && norm[0] != '/') {
      int n = snprintf(buf, sizeof buf, "%s/%s", root, norm);
      if (n < 0 || (size_t)n >= sizeof buf)
        return nq_err_set(err, NQ_ELIMIT, NQ_ERR_FATAL, "store: path of '%.200s' too long", uri);
    } else {
      strcpy(buf, norm);
    }
    if (root && !nq_store__inside(buf, root) && !nq_store__inside(buf, root_real))
      return nq_err_set(err, NQ_EKEY, NQ_ERR_FATAL, "store: '%.200s' is outside the file root %s", uri, root);
  }
  if (root && (rc = nq_store__symlink_check(buf, root_real, uri, err))) return rc;
  size_t bl = strlen(buf);
  if (bl >= cap) return nq_err_set(err, NQ_ELIMIT, NQ_ERR_FATAL, "store: path of '%.200s' does not fit %zu bytes", uri, cap);
  memcpy(path, buf, bl + 1);
  return 0;
}

/* ---------------------------------------------------------------------------------------------------------------- */
/* lifecycle                                                                                                         */

/* mkdir -p. Returns 1 when the last directory was created now (so it holds nothing yet), 0 when it existed, or a
 * negative error. The common cases (parent exists / directory exists) cost one syscall. */
static int nq_store__mkdirs(char *path /* modified and restored */, nq_err_t *err) {
  if (mkdir(path, 0755) == 0) return 1;
  if (errno != ENOENT && errno != EEXIST) return nq_store__errno(err, errno, "mkdir", path);
  int created = 0;
  if (errno == ENOENT) {
    size_t n = strlen(path);
    for (size_t i = 1; i <= n; i++) {
      if (path[i] != '/' && path[i] != 0) continue;
      char c = path[i];
      path[i] = 0;
      created = mkdir(path, 0755) == 0;
      if (!created && errno != EEXIST) {
        int e = errno;
        nq_store__errno(err, e, "mkdir", path);
        path[i] = c;
        return err ? err->code : (e == ENOENT ? NQ_ENOENT : NQ_EIO);
      }
      path[i] = c;
    }
    if (created) return 1;
  }
  struct stat sb;
  if (stat(path, &sb) != 0) return nq_store__errno(err, errno, "stat", path);
  if (!S_ISDIR(sb.st_mode)) return nq_store__errno(err, ENOTDIR, "mkdir", path);
  return 0;
}

/* Normalised absolute copy of a root + its realpath. */
static int nq_store__root(const char *given, int create, char **lex, char **real, const char *what, nq_err_t *err) {
  int rc = nq_store__check(given, strlen(given), 0, what, err);
  if (rc) return nq_err_set(err, NQ_ECONFIG, NQ_ERR_FATAL, "store: %s '%.200s' is not a usable path", what, given);
  char abs[PATH_MAX], norm[PATH_MAX];
  if (given[0] == '/') {
    snprintf(abs, sizeof abs, "%s", given);
  } else {
    char cwd[PATH_MAX];
    if (!getcwd(cwd, sizeof cwd)) return nq_store__errno(err, errno, "getcwd for", what);
    if ((size_t)snprintf(abs, sizeof abs, "%s/%s", cwd, given) >= sizeof abs)
      return nq_err_set(err, NQ_ECONFIG, NQ_ERR_FATAL, "store: %s too long", what);
  }
  if ((rc = nq_store__normalize(abs, norm, sizeof norm, err))) return rc;
  struct stat sb;
  if (stat(norm, &sb) != 0) {
    if (!create)
      return nq_err_set(err, NQ_ECONFIG, NQ_ERR_FATAL, "store: %s %s: %s", what, norm, strerror(errno));
    if ((rc = nq_store__mkdirs(norm, err)) < 0) {
      if (err) err->code = NQ_ECONFIG, err->flags = NQ_ERR_FATAL;
      return NQ_ECONFIG;
    }
  } else if (!S_ISDIR(sb.st_mode)) {
    return nq_err_set(err, NQ_ECONFIG, NQ_ERR_FATAL, "store: %s %s is not a directory", what, norm);
  }
  char r[PATH_MAX];
  if (!realpath(norm, r)) return nq_err_set(err, NQ_ECONFIG, NQ_ERR_FATAL, "store: %s %s: %s", what, norm, strerror(errno));
  *lex = strdup(norm);
  *real = strdup(r);
  if (!*lex || !*real) return nq_err_set(err, NQ_ENOMEM, 0, "store: out of memory");
  return 0;
}

int nq_store_new(const nq_store_cfg_t *cfg, nq_store_t **out, nq_err_t *err) {
  NQ_ASSERT(out);
  *out = NULL;
  nq_store_t *st = calloc(1, sizeof *st);
  if (!st) return nq_err_set(err, NQ_ENOMEM, 0, "store: out of memory");
  int rc = 0;
  if (cfg && cfg->file_root && *cfg->file_root)
    rc = nq_store__root(cfg->file_root, 1, &st->file_root, &st->file_root_real, "file_root", err);
  if (!rc && cfg && cfg->s3_root && *cfg->s3_root)
    rc = nq_store__root(cfg->s3_root, 0, &st->s3_root, &st->s3_root_real, "s3_root", err);
  if (rc) {
    nq_store_free(st);
    return rc;
  }
  *out = st;
  return 0;
}

void nq_store_free(nq_store_t *st) {
  if (!st) return;
  free(st->file_root);
  free(st->file_root_real);
  free(st->s3_root);
  free(st->s3_root_real);
  free(st);
}

/* ---------------------------------------------------------------------------------------------------------------- */
/* objects                                                                                                           */

const char *nq_store_type_guess(const char *name) {
  static const struct { const char *ext, *type; } tab[] = {
      {"json", "application/json"},   {"jsonl", "application/x-ndjson"}, {"txt", "text/plain"},
      {"csv", "text/csv"},            {"yaml", "application/yaml"},      {"yml", "application/yaml"},
      {"png", "image/png"},           {"jpg", "image/jpeg"},             {"jpeg", "image/jpeg"},
      {"webp", "image/webp"},         {"gif", "image/gif"},              {"bmp", "image/bmp"},
      {"wav", "audio/wav"},           {"flac", "audio/flac"},            {"mp3", "audio/mpeg"},
      {"ogg", "audio/ogg"},           {"mp4", "video/mp4"},              {"webm", "video/webm"},
      {"avi", "video/x-msvideo"},     {"mkv", "video/x-matroska"},
      {"npy", "application/x-npy"},   {"tar", "application/x-tar"},      {"gz", "application/gzip"},
  };
  if (!name) return "application/octet-stream";
  const char *base = strrchr(name, '/');
  base = base ? base + 1 : name;
  const char *dot = strrchr(base, '.');
  if (!dot || dot == base) return "application/octet-stream";
  for (size_t i = 0; i < sizeof tab / sizeof tab[0]; i++)
    if (strcasecmp(dot + 1, tab[i].ext) == 0) return tab[i].type;
  return "application/octet-stream";
}

static int nq_store__fsync_dir(const char *dir, nq_err_t *err) {
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return nq_store__errno(err, errno, "open dir", dir);
  int rc = 0;
  if (fsync(fd) != 0 && errno != EINVAL && errno != EROFS) rc = nq_store__errno(err, errno, "fsync dir", dir);
  close(fd);
  return rc;
}

/* The URI recorded for an object: scheme URIs as given, plain paths as file:///abs. */
static int nq_store__obj_uri(const char *uri, const char *path, char *out, size_t cap, nq_err_t *err) {
  int n;
  if (nq_store__scheme(uri)) {
    n = snprintf(out, cap, "%s", uri);
  } else if (path[0] == '/') {
    n = snprintf(out, cap, "file://%s", path);
  } else {
    char cwd[PATH_MAX];
    if (!getcwd(cwd, sizeof cwd)) return nq_store__errno(err, errno, "getcwd for", uri);
    n = snprintf(out, cap, "file://%s/%s", cwd, path);
  }
  if (n < 0 || (size_t)n >= cap) {
    out[0] = 0;
    return nq_err_set(err, NQ_ELIMIT, NQ_ERR_FATAL, "store: URI of '%.200s' longer than %zu bytes", uri, cap - 1);
  }
  return 0;
}

static char nq_store__host_buf[64];
static pthread_once_t nq_store__host_once = PTHREAD_ONCE_INIT;
static void nq_store__host_init(void) {
  char h[64] = "";
  if (gethostname(h, sizeof h - 1) != 0 || !h[0]) snprintf(h, sizeof h, "host");
  for (char *c = h; *c; c++)
    if (*c == '.' || *c == '/' || (unsigned char)*c < 0x21) *c = '_';
  snprintf(nq_store__host_buf, sizeof nq_store__host_buf, "%s", h);
}
/* This host's name as used in temp file names (dots replaced: the sweep parses the name back). */
static const char *nq_store__host(void) {
  pthread_once(&nq_store__host_once, nq_store__host_init);
  return nq_store__host_buf;
}

/* A writer killed between creating its temp file and the rename (SIGKILL, OOM, power cut) leaves
 * `.<name>.tmp.<host>.<pid>.<tid>.<n>` behind. Before writing <name> again, remove such leftovers when their
 * writer is provably gone: same host and the pid no longer exists, or (any host) older than an hour. */
static void nq_store__sweep_stale(int dir_fd, const char *name) {
  int dup_fd = dup(dir_fd);
  if (dup_fd < 0) return;
  DIR *d = fdopendir(dup_fd);
  if (!d) {
    close(dup_fd);
    return;
  }
  char prefix[300];
  int pl = snprintf(prefix, sizeof prefix, ".%.180s.tmp.", name);
  const char *me = nq_store__host();
  size_t ml = strlen(me);
  time_t now = time(NULL);
  struct dirent *e;
  while ((e = readdir(d))) {
    if (strncmp(e->d_name, prefix, (size_t)pl) != 0) continue;
    const char *rest = e->d_name + pl; /* HOST.PID.TID.CNT */
    int dead = 0;
    if (strncmp(rest, me, ml) == 0 && rest[ml] == '.') {
      long pid = strtol(rest + ml + 1, NULL, 10);
      dead = pid > 0 && kill((pid_t)pid, 0) != 0 && errno == ESRCH;
    }
    struct stat stt;
    if (!dead && fstatat(dirfd(d), e->d_name, &stt, AT_SYMLINK_NOFOLLOW) == 0 && now - stt.st_mtime > 3600) dead = 1;
    if (dead) unlinkat(dirfd(d), e->d_name, 0);
  }
  closedir(d);
}

/* The configured root (lexical and real) that applies to uri, or NULLs. */
static void nq_store__root_of(const nq_store_t *st, const char *uri, const char **root, const char **root_real) {
  size_t sl = nq_store__scheme(uri);
  if (sl == 2 && strncasecmp(uri, "s3", 2) == 0) {
    *root = st->s3_root, *root_real = st->s3_root_real;
  } else {
    *root = st->file_root, *root_real = st->file_root_real;
  }
}

/* Opens (creating what is missing) the directory `dir` for writing into, and returns its fd (O_DIRECTORY).
 *
 * Under a root the walk is component by component from an fd of the root's realpath: openat(O_NOFOLLOW |
 * O_DIRECTORY) on each segment, mkdirat when it is missing. A symlink (or any non-directory) anywhere below the
 * root is refused, and since every later step (temp create, rename, fsync) is relative to the returned fd, a
 * symlink swapped in after a check cannot redirect the write: there is no window between check and use.
 * Without a root, dir is created with mkdir -p and opened as given (the caller chose to trust the whole tree).
 * *fresh is 1 when the last directory was created now. */
static int nq_store__open_dir(nq_store_t *st, const char *uri, char *dir /* modified and restored */, int *fresh,
                              nq_err_t *err) {
  const char *root, *root_real;
  nq_store__root_of(st, uri, &root, &root_real);
  *fresh = 0;
  if (!root_real) {
    int f = nq_store__mkdirs(dir, err);
    if (f < 0) return f;
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return nq_store__errno(err, errno, "open dir", dir);
    *fresh = f;
    return fd;
  }
  /* dir lies inside root or root_real (nq_store_resolve checked it lexically): walk the rest */
  const char *rest;
  if (nq_store__inside(dir, root)) rest = dir + strlen(root);
  else if (nq_store__inside(dir, root_real)) rest = dir + strlen(root_real);
  else return nq_err_set(err, NQ_EKEY, NQ_ERR_FATAL, "store: '%.200s' is outside its root %s", uri, root);
  if (strcmp(root, "/") == 0 || strcmp(root_real, "/") == 0) rest = dir; /* root "/": the whole path is the rest */
  int fd = open(root_real, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return nq_store__errno(err, errno, "open root", root_real);
  char seg[NQ_STORE_SEGMENT_MAX + 1];
  const char *p = rest;
  while (*p) {
    while (*p == '/') p++;
    if (!*p) break;
    size_t n = strcspn(p, "/");
    if (n > NQ_STORE_SEGMENT_MAX) {
      close(fd);
      return nq_err_set(err, NQ_EKEY, NQ_ERR_FATAL, "store: '%.200s': path segment longer than %d bytes", uri,
                        NQ_STORE_SEGMENT_MAX);
    }
    memcpy(seg, p, n);
    seg[n] = 0;
    p += n;
    int created = 0;
    int nfd = openat(fd, seg, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (nfd < 0 && errno == ENOENT) {
      if (mkdirat(fd, seg, 0755) == 0) created = 1;
      else if (errno != EEXIST) {
        int e = errno;
        close(fd);
        return nq_store__errno(err, e, "mkdir", dir);
      }
      nfd = openat(fd, seg, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    }
    if (nfd < 0) {
      int e = errno;
      struct stat sb;
      int is_link = (e == ELOOP || e == ENOTDIR) && fstatat(fd, seg, &sb, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(sb.st_mode);
      close(fd);
      if (is_link)
        return nq_err_set(err, NQ_EKEY, NQ_ERR_FATAL,
                          "store: '%.200s': '%.*s' is a symlink below the root %s (writes never follow symlinks)", uri,
                          (int)(p - rest), rest, root);
      return nq_store__errno(err, e, "open dir", dir);
    }
    close(fd);
    fd = nfd;
    *fresh = created;
  }
  return fd;
}

/* Write data to a fresh temp file in the directory of uri's final path, created relative to the directory fd. With
 * `sync`, the temp file is fsynced. On success *dirfd (owned by the caller) is that directory, tmp its temp leaf name,
 * name the final leaf name, path the full final path (for messages); *obj gets uri (sha256/bytes/type once
 * written). tmp, path and dir are PATH_MAX; name points into path. */
static int nq_store__stage(nq_store_t *st, const char *uri, const void *data, size_t len, int sync, int *dirfd,
                           char *tmp, char *path, char *dir, const char **name_out, nq_store_obj_t *obj, nq_err_t *err) {
  NQ_ASSERT(st && (data || len == 0));
  *dirfd = -1;
  if (obj) memset(obj, 0, sizeof *obj);
  int rc = nq_store_resolve(st, uri, path, PATH_MAX, err);
  if (rc) return rc;
  size_t ul = strlen(uri);
  if (uri[ul - 1] == '/' || strcmp(path, "/") == 0 || strcmp(path, ".") == 0)
    return nq_err_set(err, NQ_EKEY, NQ_ERR_FATAL, "store: put '%.200s': URI names a directory", uri);
  const char *name;
  char *slash = strrchr(path, '/');
  if (!slash) {
    strcpy(dir, ".");
    name = path;
  } else {
    size_t dl = (size_t)(slash - path);
    if (dl == 0) dl = 1; /* "/x" */
    memcpy(dir, path, dl);
    dir[dl] = 0;
    name = slash + 1;
  }
  *name_out = name;
  int fresh = 0;
  int dfd = nq_store__open_dir(st, uri, dir, &fresh, err);
  if (dfd < 0) return nq_err_prefix(err, "put '%.200s'", uri);

  if (obj && (rc = nq_store__obj_uri(uri, path, obj->uri, sizeof obj->uri, err))) goto fail_dir; /* before writing */
  if (!fresh) nq_store__sweep_stale(dfd, name); /* a directory created just now holds no leftovers */
  unsigned long cnt = atomic_fetch_add(&nq_store__tmp_counter, 1);
  int n = snprintf(tmp, PATH_MAX, ".%.180s.tmp.%s.%ld.%ld.%lu", name, nq_store__host(), (long)getpid(),
                   (long)syscall(SYS_gettid), cnt);
  if (n < 0 || n > NQ_STORE_SEGMENT_MAX) {
    rc = nq_err_set(err, NQ_ELIMIT, NQ_ERR_FATAL, "store: temp name for '%.200s' too long", uri);
    goto fail_dir;
  }
  int fd = openat(dfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0644);
  if (fd < 0) {
    rc = nq_store__errno(err, errno, "create temp in", dir);
    goto fail_dir;
  }
  const unsigned char *p = data;
  size_t left = len;
  while (left > 0) {
    ssize_t w = write(fd, p, left);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) {
      rc = nq_store__errno(err, errno, "write", path);
      goto fail;
    }
    p += w;
    left -= (size_t)w;
  }
  if (sync && fsync(fd) != 0) {
    rc = nq_store__errno(err, errno, "fsync", path);
    goto fail;
  }
  if (close(fd) != 0) {
    fd = -1;
    rc = nq_store__errno(err, errno, "close", path);
    goto fail;
  }
  if (obj) {
    if ((rc = nq_sha256_hex(data, len, obj->sha256))) {
      rc = nq_err_set(err, rc, NQ_ERR_RETRIABLE, "store: sha256 of '%.200s' failed", uri);
      fd = -1;
      goto fail;
    }
    obj->bytes = len;
    snprintf(obj->type, sizeof obj->type, "%s", nq_store_type_guess(name));
  }
  *dirfd = dfd;
  return 0;
fail:
  if (fd >= 0) close(fd);
  unlinkat(dfd, tmp, 0);
fail_dir:
  close(dfd);
  return rc;
}

static int nq_store__fsync_fd(int fd, const char *dir, nq_err_t *err) {
  if (fsync(fd) != 0 && errno != EINVAL && errno != EROFS) return nq_store__errno(err, errno, "fsync dir", dir);
  return 0;
}

int nq_store_put(nq_store_t *st, const char *uri, const void *data, size_t len, nq_store_obj_t *obj, nq_err_t *err) {
  char tmp[PATH_MAX], path[PATH_MAX], dir[PATH_MAX];
  const char *name;
  int dfd;
  int rc = nq_store__stage(st, uri, data, len, 1, &dfd, tmp, path, dir, &name, obj, err);
  if (rc) return rc;
  if (renameat(dfd, tmp, dfd, name) != 0) {
    rc = nq_store__errno(err, errno, "rename to", path);
    unlinkat(dfd, tmp, 0);
  } else {
    rc = nq_store__fsync_fd(dfd, dir, err);
  }
  close(dfd);
  return rc;
}

/* ---------------------------------------------------------------------------------------------------------------- */
/* batches: group commit                                                                                             */

typedef struct nq_store__staged {
  char *tmp, *name, *path; /* owned: temp leaf, final leaf, final full path (messages) */
  size_t dir;              /* index into the batch's dirs */
} nq_store__staged_t;

typedef struct nq_store__bdir {
  char *dir; /* owned: path (lookup key and messages) */
  int fd;    /* owned: O_DIRECTORY fd every rename of the batch in this directory is relative to */
  dev_t dev;
} nq_store__bdir_t;

struct nq_store_batch {
  nq_store_t *st;               /* borrowed */
  nq_store__staged_t *items;    /* owned [n] */
  size_t n, cap;
  nq_store__bdir_t *dirs;       /* owned [nd]: distinct directories of the staged items */
  size_t nd, dcap;
};

nq_store_batch_t *nq_store_batch_new(nq_store_t *st) {
  nq_store_batch_t *b = calloc(1, sizeof *b);
  if (b) b->st = st;
  return b;
}

/* Index of dir in b->dirs, taking ownership of dfd (closed when the directory is already known). <0 on OOM. */
static long nq_store__batch_dir(nq_store_batch_t *b, const char *dir, int dfd) {
  for (size_t i = b->nd; i-- > 0;)
    if (strcmp(b->dirs[i].dir, dir) == 0) {
      close(dfd);
      return (long)i;
    }
  if (b->nd == b->dcap) {
    size_t nc = b->dcap ? b->dcap * 2 : 8;
    nq_store__bdir_t *nd = realloc(b->dirs, nc * sizeof *nd);
    if (!nd) return -1;
    b->dirs = nd;
    b->dcap = nc;
  }
  char *d = strdup(dir);
  if (!d) return -1;
  struct stat sb;
  b->dirs[b->nd] = (nq_store__bdir_t){.dir = d, .fd = dfd, .dev = fstat(dfd, &sb) == 0 ? sb.st_dev : 0};
  return (long)b->nd++;
}

int nq_store_batch_put(nq_store_batch_t *b, const char *uri, const void *data, size_t len, nq_store_obj_t *obj,
                       nq_err_t *err) {
  char tmp[PATH_MAX], path[PATH_MAX], dir[PATH_MAX];
  const char *name;
  int dfd;
  if (b->n == b->cap) {
    size_t nc = b->cap ? b->cap * 2 : 16;
    nq_store__staged_t *ni = realloc(b->items, nc * sizeof *ni);
    if (!ni) return nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "store: out of memory");
    b->items = ni;
    b->cap = nc;
  }
  int rc = nq_store__stage(b->st, uri, data, len, 0, &dfd, tmp, path, dir, &name, obj, err);
  if (rc) return rc;
  nq_store__staged_t *it = &b->items[b->n];
  it->tmp = strdup(tmp);
  it->name = strdup(name);
  it->path = strdup(path);
  if (!it->tmp || !it->name || !it->path) {
    unlinkat(dfd, tmp, 0);
    close(dfd);
    free(it->tmp);
    free(it->name);
    free(it->path);
    return nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "store: out of memory");
  }
  long d = nq_store__batch_dir(b, dir, dfd);
  if (d < 0) {
    unlinkat(dfd, tmp, 0);
    close(dfd);
    free(it->tmp);
    free(it->name);
    free(it->path);
    return nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "store: out of memory");
  }
  it->dir = (size_t)d;
  b->n++;
  return 0;
}

/* syncfs() once per distinct filesystem among the staged files' directories. */
static int nq_store__syncfs_all(nq_store_batch_t *b, nq_err_t *err) {
  for (size_t i = 0; i < b->nd; i++) {
    int seen = 0;
    for (size_t j = 0; j < i && !seen; j++) seen = b->dirs[j].dev == b->dirs[i].dev;
    if (seen) continue;
    if (syncfs(b->dirs[i].fd) != 0) return nq_store__errno(err, errno, "syncfs", b->dirs[i].dir);
  }
  return 0;
}

static void nq_store__batch_clear(nq_store_batch_t *b, int unlink_tmp) {
  for (size_t i = 0; i < b->n; i++) {
    if (unlink_tmp) unlinkat(b->dirs[b->items[i].dir].fd, b->items[i].tmp, 0);
    free(b->items[i].tmp);
    free(b->items[i].name);
    free(b->items[i].path);
  }
  b->n = 0;
  for (size_t i = 0; i < b->nd; i++) {
    close(b->dirs[i].fd);
    free(b->dirs[i].dir);
  }
  b->nd = 0;
}

int nq_store_batch_commit(nq_store_batch_t *b, nq_err_t *err) {
  if (b->n == 0) return 0;
  /* 1. every staged file's data reaches stable storage, 2. then the names appear (rename is atomic), 3. then the
   * directory entries are made durable. A reader never sees a partial file, even after a power loss. */
  int rc = nq_store__syncfs_all(b, err);
  size_t done = 0;
  for (; !rc && done < b->n; done++) {
    int dfd = b->dirs[b->items[done].dir].fd;
    if (renameat(dfd, b->items[done].tmp, dfd, b->items[done].name) != 0)
      rc = nq_store__errno(err, errno, "rename to", b->items[done].path);
  }
  if (!rc) rc = nq_store__syncfs_all(b, err);
  nq_store__batch_clear(b, rc != 0);
  return rc;
}

void nq_store_batch_abort(nq_store_batch_t *b) {
  if (b) nq_store__batch_clear(b, 1);
}

size_t nq_store_batch_count(const nq_store_batch_t *b) { return b ? b->n : 0; }

void nq_store_batch_free(nq_store_batch_t *b) {
  if (!b) return;
  nq_store__batch_clear(b, 1);
  free(b->items);
  free(b->dirs);
  free(b);
}

int nq_store_get(nq_store_t *st, const char *uri, void **data, size_t *len, nq_err_t *err) {
  NQ_ASSERT(st && data && len);
  *data = NULL;
  *len = 0;
  char path[PATH_MAX];
  int rc = nq_store_resolve(st, uri, path, sizeof path, err);
  if (rc) return rc;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return nq_store__errno(err, errno, "open", path);
  struct stat sb;
  if (fstat(fd, &sb) != 0) {
    rc = nq_store__errno(err, errno, "stat", path);
    close(fd);
    return rc;
  }
  if (!S_ISREG(sb.st_mode)) {
    close(fd);
    return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "store: get %s: not a regular file", path);
  }
  if ((unsigned long long)sb.st_size > NQ_STORE_GET_MAX || (unsigned long long)sb.st_size >= SIZE_MAX) {
    close(fd);
    return nq_err_set(err, NQ_ELIMIT, NQ_ERR_FATAL, "store: get %s: %lld bytes exceeds the limit of %llu", path,
                      (long long)sb.st_size, NQ_STORE_GET_MAX);
  }
  size_t cap = (size_t)sb.st_size;
  unsigned char *buf = malloc(cap + 1);
  if (!buf) {
    close(fd);
    return nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "store: get %s: out of memory for %zu bytes", path, cap);
  }
  size_t got = 0;
  while (got < cap) {
    ssize_t r = read(fd, buf + got, cap - got);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      rc = nq_store__errno(err, errno, "read", path);
      free(buf);
      close(fd);
      return rc;
    }
    if (r == 0) break; /* shrank meanwhile: return what is there */
    got += (size_t)r;
  }
  close(fd);
  buf[got] = 0;
  *data = buf;
  *len = got;
  return 0;
}

int nq_store_exists(nq_store_t *st, const char *uri) {
  char path[PATH_MAX];
  if (nq_store_resolve(st, uri, path, sizeof path, NULL)) return 0;
  struct stat sb;
  return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

int nq_store_stat(nq_store_t *st, const char *uri, nq_store_obj_t *obj, nq_err_t *err) {
  NQ_ASSERT(st && obj);
  memset(obj, 0, sizeof *obj);
  char path[PATH_MAX];
  int rc = nq_store_resolve(st, uri, path, sizeof path, err);
  if (rc) return rc;
  struct stat sb;
  if (stat(path, &sb) != 0) return nq_store__errno(err, errno, "stat", path);
  if (!S_ISREG(sb.st_mode)) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "store: stat %s: not a regular file", path);
  if ((rc = nq_sha256_file(path, obj->sha256, err))) return rc;
  if ((rc = nq_store__obj_uri(uri, path, obj->uri, sizeof obj->uri, err))) return rc;
  obj->bytes = (unsigned long long)sb.st_size;
  snprintf(obj->type, sizeof obj->type, "%s", nq_store_type_guess(path));
  return 0;
}

/* ---------------------------------------------------------------------------------------------------------------- */
/* per-job files                                                                                                     */

int nq_store_manifest_write(nq_store_t *st, const char *job_output_uri, const char *const *lines, size_t n,
                            nq_err_t *err) {
  NQ_ASSERT(st && (lines || n == 0));
  char uri[PATH_MAX];
  int rc = nq_store_join(job_output_uri, NQ_STORE_MANIFEST_NAME, uri, sizeof uri, err);
  if (rc) return rc;
  size_t total = 0;
  for (size_t i = 0; i < n; i++) {
    if (!lines[i]) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "store: manifest line %zu is NULL", i);
    if (strchr(lines[i], '\n'))
      return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "store: manifest line %zu contains a newline", i);
    size_t l = strlen(lines[i]);
    if (total > SIZE_MAX - l - 1) return nq_err_set(err, NQ_ELIMIT, NQ_ERR_FATAL, "store: manifest too large");
    total += l + 1;
  }
  char *buf = malloc(total ? total : 1);
  if (!buf) return nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "store: manifest of %zu bytes: out of memory", total);
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    size_t l = strlen(lines[i]);
    memcpy(buf + o, lines[i], l);
    o += l;
    buf[o++] = '\n';
  }
  rc = nq_store_put(st, uri, buf, o, NULL, err);
  free(buf);
  return rc;
}

int nq_store_success_write(nq_store_t *st, const char *job_output_uri, nq_err_t *err) {
  char uri[PATH_MAX];
  int rc = nq_store_join(job_output_uri, NQ_STORE_SUCCESS_NAME, uri, sizeof uri, err);
  if (rc) return rc;
  return nq_store_put(st, uri, "", 0, NULL, err);
}

int nq_store_success_remove(nq_store_t *st, const char *job_output_uri, nq_err_t *err) {
  char uri[PATH_MAX], path[PATH_MAX];
  int rc = nq_store_join(job_output_uri, NQ_STORE_SUCCESS_NAME, uri, sizeof uri, err);
  if (rc) return rc;
  if ((rc = nq_store_resolve(st, uri, path, sizeof path, err))) return rc;
  if (unlink(path) != 0) {
    if (errno == ENOENT || errno == ENOTDIR) return 0;
    return nq_store__errno(err, errno, "unlink", path);
  }
  char *slash = strrchr(path, '/');
  if (!slash) return nq_store__fsync_dir(".", err);
  if (slash == path) return nq_store__fsync_dir("/", err);
  *slash = 0;
  return nq_store__fsync_dir(path, err);
}

/* tests/unit/test_store.c — keys, URI resolution, symlink escapes, atomic puts, s3 mapping, manifest/_SUCCESS. */
#include <criterion/criterion.h>
#include <stdarg.h>
#include <dirent.h>
#include <ftw.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "store/store.h"

/* FIPS 180-2 example: sha256("abc"). */
#define ABC_HEX "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"

static char g_tmp[PATH_MAX]; /* per-test scratch dir */

/* snprintf that fails the test on truncation (and keeps -Wformat-truncation quiet). */
static void sfmt(char *out, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void sfmt(char *out, size_t cap, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(out, cap, fmt, ap);
  va_end(ap);
  cr_assert(n >= 0 && (size_t)n < cap, "test path too long");
}
#define S(buf, ...) sfmt(buf, sizeof buf, __VA_ARGS__)

static int rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *ftw) { return remove(p); }
static void setup(void) {
  S(g_tmp, "/tmp/nq_store_XXXXXX");
  cr_assert_not_null(mkdtemp(g_tmp));
}
static void teardown(void) { nftw(g_tmp, rm_cb, 16, FTW_DEPTH | FTW_PHYS); }

static const char *tp(const char *rel) { /* g_tmp/rel in a rotating static buffer */
  static char buf[8][PATH_MAX];
  static int i;
  char *b = buf[i++ & 7];
  sfmt(b, PATH_MAX, "%s/%s", g_tmp, rel);
  return b;
}

static void write_file(const char *path, const char *s) {
  FILE *f = fopen(path, "wb");
  cr_assert_not_null(f, "open %s", path);
  fputs(s, f);
  fclose(f);
}

static char *read_all(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  static char buf[1 << 16];
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = 0;
  return buf;
}

/* Number of entries in dir whose name contains ".tmp." */
static int count_tmp(const char *dir) {
  DIR *d = opendir(dir);
  cr_assert_not_null(d, "opendir %s", dir);
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)))
    if (strstr(e->d_name, ".tmp.")) n++;
  closedir(d);
  return n;
}

static nq_store_t *mkstore(const char *froot, const char *s3root) {
  nq_store_cfg_t cfg = {.file_root = froot, .s3_root = s3root};
  nq_store_t *st = NULL;
  nq_err_t err = {0};
  cr_assert_eq(nq_store_new(&cfg, &st, &err), 0, "%s", err.msg);
  return st;
}

/* ---- keys ---------------------------------------------------------------------------------------------------- */

Test(store, key_check_accepts_ordinary_keys) {
  const char *ok[] = {"a", "out.json", "job-1/000042/out.json", "a/b/c/d.e.f", "_manifest.jsonl", "..a", "a..", "x/.hidden"};
  for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
    nq_err_t err = {0};
    cr_assert_eq(nq_store_key_check(ok[i], &err), 0, "%s: %s", ok[i], err.msg);
  }
}

Test(store, key_check_refuses_hostile_keys) {
  const char *bad[] = {"", "..", "../x", "a/../b", "a/..", "/abs", "/", "a//b", "a/", "a\\b", "a\x01" "b", "a\x7f",
                       ".", "a/./b", "x\n"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    nq_err_t err = {0};
    cr_assert_eq(nq_store_key_check(bad[i], &err), NQ_EKEY, "key #%zu '%s' accepted", i, bad[i]);
    cr_assert(nq_err_is_fatal(&err));
    cr_assert(err.msg[0]);
  }
  nq_err_t err = {0};
  cr_assert_eq(nq_store_key_check(NULL, &err), NQ_EKEY);
}

Test(store, key_check_nul_via_explicit_length) {
  nq_err_t err = {0};
  cr_assert_eq(nq_store_key_checkn("abc", 3, &err), 0);
  cr_assert_eq(nq_store_key_checkn("a\0b", 3, &err), NQ_EKEY);
  cr_assert(strstr(err.msg, "NUL"), "%s", err.msg);
  cr_assert_eq(nq_store_key_checkn("ab\0", 3, &err), NQ_EKEY);
}

Test(store, key_check_lengths) {
  char seg[300];
  memset(seg, 'x', sizeof seg);
  nq_err_t err = {0};
  cr_assert_eq(nq_store_key_checkn(seg, 255, &err), 0);
  cr_assert_eq(nq_store_key_checkn(seg, 256, &err), NQ_EKEY, "a 256-byte segment must be refused");
  /* 1024 bytes in segments of 127 + "/" is fine, 1025 is not */
  char k[1100];
  for (size_t i = 0; i < sizeof k; i++) k[i] = (i % 128 == 127) ? '/' : 'k';
  k[1023] = 'k';
  cr_assert_eq(nq_store_key_checkn(k, 1024, &err), 0, "%s", err.msg);
  k[1024] = 'k';
  cr_assert_eq(nq_store_key_checkn(k, 1025, &err), NQ_EKEY);
  k[1025] = 0;
  cr_assert_eq(nq_store_key_check(k, &err), NQ_EKEY);
}

Test(store, join) {
  char out[64];
  nq_err_t err = {0};
  cr_assert_eq(nq_store_join("file:///data/out", "j1/000001/out.json", out, sizeof out, &err), 0);
  cr_assert_str_eq(out, "file:///data/out/j1/000001/out.json");
  cr_assert_eq(nq_store_join("s3://b/p/", "k", out, sizeof out, &err), 0);
  cr_assert_str_eq(out, "s3://b/p/k");
  cr_assert_eq(nq_store_join("file:///x", "../y", out, sizeof out, &err), NQ_EKEY);
  cr_assert_str_eq(out, "");
  cr_assert_eq(nq_store_join("file:///x", "a", out, 10, &err), NQ_ELIMIT);
  cr_assert_eq(nq_store_join("", "a", out, sizeof out, &err), NQ_EINVAL);
}

/* ---- resolve ------------------------------------------------------------------------------------------------- */

Test(store, resolve_under_file_root, .init = setup, .fini = teardown) {
  nq_store_t *st = mkstore(tp("root"), NULL);
  char p[PATH_MAX], want[PATH_MAX];
  nq_err_t err = {0};
  cr_assert_eq(nq_store_resolve(st, "a/b.json", p, sizeof p, &err), 0, "%s", err.msg);
  cr_assert_str_eq(p, tp("root/a/b.json"));
  cr_assert_eq(nq_store_resolve(st, "file://a//./b.json", p, sizeof p, &err), 0, "%s", err.msg);
  cr_assert_str_eq(p, tp("root/a/b.json"));
  S(want, "file://%s", tp("root/x/y"));
  cr_assert_eq(nq_store_resolve(st, want, p, sizeof p, &err), 0, "%s", err.msg);
  cr_assert_str_eq(p, tp("root/x/y"));
  S(want, "file://localhost%s", tp("root/x/y"));
  cr_assert_eq(nq_store_resolve(st, want, p, sizeof p, &err), 0, "%s", err.msg);
  cr_assert_str_eq(p, tp("root/x/y"));

  /* outside the root, lexically */
  cr_assert_eq(nq_store_resolve(st, "file:///etc/passwd", p, sizeof p, &err), NQ_EKEY);
  cr_assert(strstr(err.msg, "outside"), "%s", err.msg);
  cr_assert_eq(nq_store_resolve(st, tp("rootx/a"), p, sizeof p, &err), NQ_EKEY, "sibling with the root as prefix");
  cr_assert_eq(nq_store_resolve(st, "../x", p, sizeof p, &err), NQ_EKEY);
  cr_assert_eq(nq_store_resolve(st, "a/../../x", p, sizeof p, &err), NQ_EKEY);
  S(want, "file://%s/../x", tp("root"));
  cr_assert_eq(nq_store_resolve(st, want, p, sizeof p, &err), NQ_EKEY);
  cr_assert_eq(nq_store_resolve(st, "a\tb", p, sizeof p, &err), NQ_EKEY);
  cr_assert_eq(nq_store_resolve(st, "http://x/y", p, sizeof p, &err), NQ_EUNSUPPORTED);
  cr_assert_eq(nq_store_resolve(st, "", p, sizeof p, &err), NQ_EKEY);
  cr_assert_eq(nq_store_resolve(st, "a/b", p, 4, &err), NQ_ELIMIT);
  nq_store_free(st);
}

Test(store, symlink_escape_is_refused, .init = setup, .fini = teardown) {
  nq_store_t *st = mkstore(tp("root"), NULL);
  cr_assert_eq(mkdir(tp("outside"), 0755), 0);
  write_file(tp("outside/secret"), "s3cr3t");
  cr_assert_eq(symlink(tp("outside"), tp("root/link")), 0);
  cr_assert_eq(symlink(tp("outside/secret"), tp("root/flink")), 0);
  cr_assert_eq(mkdir(tp("root/inner"), 0755), 0);
  cr_assert_eq(symlink(tp("root/inner"), tp("root/ok_link")), 0); /* a link that stays inside is fine */

  char p[PATH_MAX];
  nq_err_t err = {0};
  cr_assert_eq(nq_store_resolve(st, "link/secret", p, sizeof p, &err), NQ_EKEY);
  cr_assert(strstr(err.msg, "symlink"), "%s", err.msg);
  cr_assert_eq(nq_store_resolve(st, "link/new/deeper/file", p, sizeof p, &err), NQ_EKEY);
  cr_assert_eq(nq_store_resolve(st, "flink", p, sizeof p, &err), NQ_EKEY);
  cr_assert_eq(nq_store_resolve(st, "ok_link/f", p, sizeof p, &err), 0, "%s", err.msg);

  void *data = NULL;
  size_t len = 0;
  cr_assert_eq(nq_store_get(st, "flink", &data, &len, &err), NQ_EKEY);
  cr_assert_null(data);
  cr_assert_eq(nq_store_put(st, "link/planted", "x", 1, NULL, &err), NQ_EKEY);
  cr_assert_eq(access(tp("outside/planted"), F_OK), -1, "nothing may be written outside the root");
  cr_assert_eq(nq_store_exists(st, "flink"), 0);
  nq_store_free(st);
}

Test(store, no_root_means_plain_paths, .init = setup, .fini = teardown) {
  nq_store_t *st = mkstore(NULL, NULL);
  nq_err_t err = {0};
  nq_store_obj_t obj;
  char uri[PATH_MAX];
  S(uri, "file://%s", tp("plain/a.txt"));
  cr_assert_eq(nq_store_put(st, uri, "abc", 3, &obj, &err), 0, "%s", err.msg);
  cr_assert_str_eq(read_all(tp("plain/a.txt")), "abc");
  cr_assert_str_eq(obj.uri, uri);
  /* relative to the cwd; the recorded URI is absolute */
  cr_assert_eq(chdir(g_tmp), 0);
  cr_assert_eq(nq_store_put(st, "rel/b.bin", "abc", 3, &obj, &err), 0, "%s", err.msg);
  cr_assert_str_eq(read_all(tp("rel/b.bin")), "abc");
  char want[PATH_MAX + 8], cwd[PATH_MAX];
  cr_assert_not_null(getcwd(cwd, sizeof cwd));
  S(want, "file://%s/rel/b.bin", cwd);
  cr_assert_str_eq(obj.uri, want);
  cr_assert_str_eq(obj.type, "application/octet-stream");
  cr_assert_eq(nq_store_put(st, "../escape", "x", 1, NULL, &err), NQ_EKEY);
  cr_assert_eq(nq_store_resolve(st, "s3://b/k", cwd, sizeof cwd, &err), NQ_ECONFIG, "s3 without s3_root");
  nq_store_free(st);
}

/* ---- s3 ------------------------------------------------------------------------------------------------------ */

Test(store, s3_mapping, .init = setup, .fini = teardown) {
  nq_err_t err = {0};
  nq_store_t *bad = NULL;
  nq_store_cfg_t cfg = {.s3_root = tp("s3-missing")};
  cr_assert_eq(nq_store_new(&cfg, &bad, &err), NQ_ECONFIG, "a missing s3 mount must be refused");
  cr_assert_null(bad);

  cr_assert_eq(mkdir(tp("s3"), 0755), 0);
  nq_store_t *st = mkstore(NULL, tp("s3"));
  char p[PATH_MAX];
  cr_assert_eq(nq_store_resolve(st, "s3://bucket/prefix/job/t1/out.json", p, sizeof p, &err), 0, "%s", err.msg);
  cr_assert_str_eq(p, tp("s3/bucket/prefix/job/t1/out.json"));
  nq_store_obj_t obj;
  cr_assert_eq(nq_store_put(st, "s3://bucket/k/v.json", "{}", 2, &obj, &err), 0, "%s", err.msg);
  cr_assert_str_eq(read_all(tp("s3/bucket/k/v.json")), "{}");
  cr_assert_str_eq(obj.uri, "s3://bucket/k/v.json");
  cr_assert_str_eq(obj.type, "application/json");
  cr_assert_eq(nq_store_exists(st, "s3://bucket/k/v.json"), 1);

  const char *bad_uris[] = {"s3://bucket", "s3://bucket/", "s3:///key", "s3://../x", "s3://b/../x", "s3://b/a//c",
                            "s3://b/a/"};
  for (size_t i = 0; i < sizeof bad_uris / sizeof bad_uris[0]; i++)
    cr_assert_eq(nq_store_resolve(st, bad_uris[i], p, sizeof p, &err), NQ_EKEY, "%s accepted", bad_uris[i]);
  /* file:// is unrestricted without a file_root, but still validated */
  cr_assert_eq(nq_store_resolve(st, "file:///a/../b", p, sizeof p, &err), NQ_EKEY);
  nq_store_free(st);
}

/* ---- put/get ------------------------------------------------------------------------------------------------- */

Test(store, put_get_roundtrip_and_sha, .init = setup, .fini = teardown) {
  nq_store_t *st = mkstore(tp("root"), NULL);
  nq_err_t err = {0};
  nq_store_obj_t obj;
  cr_assert_eq(nq_store_put(st, "job/000001/out.txt", "abc", 3, &obj, &err), 0, "%s", err.msg);
  cr_assert_str_eq(obj.sha256, ABC_HEX);
  cr_assert_eq(obj.bytes, 3);
  cr_assert_str_eq(obj.type, "text/plain");
  char want[PATH_MAX + 8];
  S(want, "file://%s", tp("root/job/000001/out.txt"));
  cr_assert_str_eq(obj.uri, want, "plain paths are recorded as file:///abs");

  void *data = NULL;
  size_t len = 0;
  cr_assert_eq(nq_store_get(st, "job/000001/out.txt", &data, &len, &err), 0, "%s", err.msg);
  cr_assert_eq(len, 3);
  cr_assert_eq(memcmp(data, "abc", 3), 0);
  cr_assert_eq(((char *)data)[3], 0);
  free(data);

  nq_store_obj_t st_obj;
  cr_assert_eq(nq_store_stat(st, "job/000001/out.txt", &st_obj, &err), 0, "%s", err.msg);
  cr_assert_str_eq(st_obj.sha256, ABC_HEX);
  cr_assert_eq(st_obj.bytes, 3);

  /* idempotent rewrite, then a real overwrite */
  cr_assert_eq(nq_store_put(st, "job/000001/out.txt", "abc", 3, &obj, &err), 0, "%s", err.msg);
  cr_assert_str_eq(read_all(tp("root/job/000001/out.txt")), "abc");
  cr_assert_eq(nq_store_put(st, "job/000001/out.txt", "xyz!", 4, &obj, &err), 0, "%s", err.msg);
  cr_assert_str_eq(read_all(tp("root/job/000001/out.txt")), "xyz!");
  cr_assert_eq(obj.bytes, 4);
  cr_assert_eq(count_tmp(tp("root/job/000001")), 0, "temp files left behind");

  /* empty object */
  cr_assert_eq(nq_store_put(st, "job/empty.bin", "", 0, &obj, &err), 0, "%s", err.msg);
  cr_assert_eq(obj.bytes, 0);
  cr_assert_str_eq(obj.sha256, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");

  cr_assert_eq(nq_store_get(st, "job/missing", &data, &len, &err), NQ_ENOENT);
  cr_assert(strstr(err.msg, "job/missing"), "%s", err.msg);
  cr_assert_eq(nq_store_get(st, "job", &data, &len, &err), NQ_EINVAL, "a directory is not an object");
  cr_assert_eq(nq_store_put(st, "job/000001", "x", 1, NULL, &err), NQ_EIO, "a directory can't be overwritten");
  cr_assert_eq(nq_store_put(st, "job/dir/", "x", 1, NULL, &err), NQ_EKEY);
  cr_assert_eq(nq_store_exists(st, "job/000001/out.txt"), 1);
  cr_assert_eq(nq_store_exists(st, "job/000001/nope"), 0);
  cr_assert_eq(nq_store_exists(st, "job/000001"), 0);
  cr_assert_eq(nq_store_exists(st, "../x"), 0);
  cr_assert_eq(count_tmp(tp("root/job")), 0, "temp files left behind after failed puts");
  nq_store_free(st);
}

Test(store, type_guess) {
  cr_assert_str_eq(nq_store_type_guess("a/out.json"), "application/json");
  cr_assert_str_eq(nq_store_type_guess("x.PNG"), "image/png");
  cr_assert_str_eq(nq_store_type_guess("x.wav"), "audio/wav");
  cr_assert_str_eq(nq_store_type_guess("x.mp4"), "video/mp4");
  cr_assert_str_eq(nq_store_type_guess("x.txt"), "text/plain");
  cr_assert_str_eq(nq_store_type_guess("x.weird"), "application/octet-stream");
  cr_assert_str_eq(nq_store_type_guess("dir.json/noext"), "application/octet-stream");
  cr_assert_str_eq(nq_store_type_guess(".json"), "application/octet-stream");
}

/* ---- concurrency --------------------------------------------------------------------------------------------- */

typedef struct {
  nq_store_t *st;
  int id;
  int failures;
} put_arg_t;

#define NTHREADS 8
#define NPUTS 40

static void *put_thread(void *p) {
  put_arg_t *a = p;
  char uri[128], body[64];
  for (int i = 0; i < NPUTS; i++) {
    nq_err_t err = {0};
    /* own keys, plus one key all threads fight over */
    S(uri, "c/t%d/%03d.txt", a->id, i);
    S(body, "thread %d put %d", a->id, i);
    if (nq_store_put(a->st, uri, body, strlen(body), NULL, &err)) a->failures++;
    if (nq_store_put(a->st, "c/shared.txt", "same bytes", 10, NULL, &err)) a->failures++;
  }
  return NULL;
}

Test(store, concurrent_puts_8_threads, .init = setup, .fini = teardown) {
  nq_store_t *st = mkstore(tp("root"), NULL);
  pthread_t th[NTHREADS];
  put_arg_t args[NTHREADS];
  for (int i = 0; i < NTHREADS; i++) {
    args[i] = (put_arg_t){st, i, 0};
    cr_assert_eq(pthread_create(&th[i], NULL, put_thread, &args[i]), 0);
  }
  for (int i = 0; i < NTHREADS; i++) {
    pthread_join(th[i], NULL);
    cr_assert_eq(args[i].failures, 0, "thread %d had failed puts", i);
  }
  char path[64], want[64];
  for (int t = 0; t < NTHREADS; t++) {
    for (int i = 0; i < NPUTS; i++) {
      S(path, "root/c/t%d/%03d.txt", t, i);
      S(want, "thread %d put %d", t, i);
      const char *got = read_all(tp(path));
      cr_assert_not_null(got, "%s missing", path);
      cr_assert_str_eq(got, want);
    }
    S(path, "root/c/t%d", t);
    cr_assert_eq(count_tmp(tp(path)), 0);
  }
  cr_assert_str_eq(read_all(tp("root/c/shared.txt")), "same bytes");
  cr_assert_eq(count_tmp(tp("root/c")), 0, "temp files left behind");
  nq_store_free(st);
}

/* ---- manifest / _SUCCESS ------------------------------------------------------------------------------------- */

Test(store, manifest_and_success, .init = setup, .fini = teardown) {
  nq_store_t *st = mkstore(tp("root"), NULL);
  nq_err_t err = {0};
  char job[PATH_MAX + 8];
  S(job, "file://%s/", tp("root/out/job-7"));
  const char *lines[] = {"{\"task\":\"job-7/000000\",\"status\":\"ok\"}", "{\"task\":\"job-7/000001\",\"status\":\"dead\"}"};
  cr_assert_eq(nq_store_manifest_write(st, job, lines, 2, &err), 0, "%s", err.msg);
  cr_assert_str_eq(read_all(tp("root/out/job-7/_manifest.jsonl")),
                   "{\"task\":\"job-7/000000\",\"status\":\"ok\"}\n{\"task\":\"job-7/000001\",\"status\":\"dead\"}\n");
  /* rewritten whole */
  cr_assert_eq(nq_store_manifest_write(st, job, lines, 1, &err), 0, "%s", err.msg);
  cr_assert_str_eq(read_all(tp("root/out/job-7/_manifest.jsonl")), "{\"task\":\"job-7/000000\",\"status\":\"ok\"}\n");
  const char *bad[] = {"{\"a\":1}\n{\"b\":2}"};
  cr_assert_eq(nq_store_manifest_write(st, job, bad, 1, &err), NQ_EINVAL);
  cr_assert_str_eq(read_all(tp("root/out/job-7/_manifest.jsonl")), "{\"task\":\"job-7/000000\",\"status\":\"ok\"}\n",
                   "a refused manifest leaves the old one");
  cr_assert_eq(nq_store_manifest_write(st, job, NULL, 0, &err), 0, "%s", err.msg);
  cr_assert_str_eq(read_all(tp("root/out/job-7/_manifest.jsonl")), "");

  cr_assert_eq(access(tp("root/out/job-7/_SUCCESS"), F_OK), -1);
  cr_assert_eq(nq_store_success_write(st, job, &err), 0, "%s", err.msg);
  struct stat sb;
  cr_assert_eq(stat(tp("root/out/job-7/_SUCCESS"), &sb), 0);
  cr_assert_eq(sb.st_size, 0);
  cr_assert_eq(nq_store_success_remove(st, job, &err), 0, "%s", err.msg);
  cr_assert_eq(access(tp("root/out/job-7/_SUCCESS"), F_OK), -1);
  cr_assert_eq(nq_store_success_remove(st, job, &err), 0, "removing twice is fine");
  cr_assert_eq(count_tmp(tp("root/out/job-7")), 0);
  cr_assert_eq(nq_store_success_write(st, "file:///etc", &err), NQ_EKEY, "outside the root");
  nq_store_free(st);
}

Test(store, batch_group_commit, .init = setup, .fini = teardown) {
  nq_store_t *st = mkstore(NULL, NULL);
  nq_err_t err = {0};
  nq_store_batch_t *b = nq_store_batch_new(st);
  nq_store_obj_t o1, o2;
  char u1[PATH_MAX], u2[PATH_MAX];
  sfmt(u1, sizeof u1, "file://%s/j/000001/out.json", g_tmp);
  sfmt(u2, sizeof u2, "file://%s/j/000002/out.json", g_tmp);
  cr_assert_eq(nq_store_batch_put(b, u1, "abc", 3, &o1, &err), 0, "%s", err.msg);
  cr_assert_eq(nq_store_batch_put(b, u2, "xyz!", 4, &o2, &err), 0, "%s", err.msg);
  cr_assert_eq(nq_store_batch_count(b), 2);
  /* staged objects are invisible until commit */
  cr_assert_eq(nq_store_exists(st, u1), 0);
  cr_assert_eq(count_tmp(tp("j/000001")), 1);
  cr_assert_str_eq(o1.sha256, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"); /* FIPS 180-2 "abc" */
  cr_assert_eq(nq_store_batch_commit(b, &err), 0, "%s", err.msg);
  cr_assert_eq(nq_store_batch_count(b), 0);
  cr_assert_str_eq(read_all(tp("j/000001/out.json")), "abc"); /* read_all returns a static buffer */
  cr_assert_str_eq(read_all(tp("j/000002/out.json")), "xyz!");
  cr_assert_eq(count_tmp(tp("j/000001")), 0);
  /* abort removes staged temps and leaves the committed object alone */
  cr_assert_eq(nq_store_batch_put(b, u1, "NEW", 3, NULL, &err), 0);
  nq_store_batch_abort(b);
  cr_assert_eq(count_tmp(tp("j/000001")), 0);
  cr_assert_str_eq(read_all(tp("j/000001/out.json")), "abc");
  nq_store_batch_free(b);
  nq_store_free(st);
}

Test(store, stale_temp_of_dead_writer_is_swept, .init = setup, .fini = teardown) {
  nq_store_t *st = mkstore(NULL, NULL);
  nq_err_t err = {0};
  char u[PATH_MAX], host[64] = "", stale[PATH_MAX], live[PATH_MAX];
  sfmt(u, sizeof u, "file://%s/t/out.json", g_tmp);
  cr_assert_eq(nq_store_put(st, u, "1", 1, NULL, &err), 0);
  gethostname(host, sizeof host - 1);
  for (char *p = host; *p; p++)
    if (*p == '.' || *p == '/') *p = '_';
  /* a writer killed mid-put (pid that cannot exist) and one that is alive (us) */
  sfmt(stale, sizeof stale, "%s/t/.out.json.tmp.%s.%d.1.1", g_tmp, host, 999999999);
  sfmt(live, sizeof live, "%s/t/.out.json.tmp.%s.%d.1.2", g_tmp, host, (int)getpid());
  write_file(stale, "half");
  write_file(live, "in progress");
  cr_assert_eq(nq_store_put(st, u, "2", 1, NULL, &err), 0);
  cr_assert_neq(access(stale, F_OK), 0, "stale temp of a dead writer was not removed");
  cr_assert_eq(access(live, F_OK), 0, "temp of a live writer was removed");
  nq_store_free(st);
}

/* ---- writes never follow symlinks below the root (openat walk) ------------------------------------------------ */

Test(store, put_refuses_any_symlink_below_root, .init = setup, .fini = teardown) {
  nq_store_t *st = mkstore(tp("root"), NULL);
  nq_err_t err = {0};
  cr_assert_eq(mkdir(tp("root/inner"), 0755), 0);
  cr_assert_eq(symlink(tp("root/inner"), tp("root/ok_link")), 0);
  /* reads may go through a link that stays inside; writes refuse every symlink, naming it */
  cr_assert_eq(nq_store_put(st, "ok_link/f", "x", 1, NULL, &err), NQ_EKEY);
  cr_assert(strstr(err.msg, "ok_link") && strstr(err.msg, "symlink"), "%s", err.msg);
  cr_assert_eq(access(tp("root/inner/f"), F_OK), -1);
  /* batches too, and nothing is left staged */
  nq_store_batch_t *b = nq_store_batch_new(st);
  cr_assert_eq(nq_store_batch_put(b, "ok_link/deeper/g", "y", 1, NULL, &err), NQ_EKEY);
  cr_assert_eq(nq_store_batch_put(b, "inner/sub/g", "y", 1, NULL, &err), 0, "%s", err.msg);
  cr_assert_eq(nq_store_batch_put(b, "inner/sub/h", "z", 1, NULL, &err), 0, "%s", err.msg);
  cr_assert_eq(nq_store_batch_commit(b, &err), 0, "%s", err.msg);
  cr_assert_str_eq(read_all(tp("root/inner/sub/g")), "y");
  cr_assert_str_eq(read_all(tp("root/inner/sub/h")), "z");
  nq_store_batch_free(b);
  /* a plain put with fresh parents under the root still works */
  cr_assert_eq(nq_store_put(st, "a/b/c/d.txt", "hello", 5, NULL, &err), 0, "%s", err.msg);
  cr_assert_str_eq(read_all(tp("root/a/b/c/d.txt")), "hello");
  nq_store_free(st);
}

typedef struct swap_arg {
  const char *dir, *link_target, *aside;
  volatile int stop;
} swap_arg_t;

/* Keeps replacing root/d between a real directory and a symlink to the outside. */
static void *swapper(void *p) {
  swap_arg_t *a = p;
  while (!a->stop) {
    usleep(30);                            /* the real dir stays a while */
    rename(a->dir, a->aside);              /* move it aside */
    symlink(a->link_target, a->dir);       /* a symlink to the outside takes its place */
    usleep(30);
    unlink(a->dir);
    rename(a->aside, a->dir);              /* and back */
  }
  return NULL;
}

static int count_entries(const char *dir) {
  DIR *d = opendir(dir);
  cr_assert_not_null(d, "opendir %s", dir);
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)))
    if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
  closedir(d);
  return n;
}

/* The race the openat walk closes: a directory checked as real is swapped for a symlink to the outside before the
 * temp file is created. Staged batch puts (no fsync) make the check-to-create window a large share of each put; a
 * temp file appearing outside, even briefly, is an escape. */
Test(store, symlink_swapped_in_during_puts_never_escapes, .init = setup, .fini = teardown) {
  nq_store_t *st = mkstore(tp("root"), NULL);
  cr_assert_eq(mkdir(tp("outside"), 0755), 0);
  cr_assert_eq(mkdir(tp("root/d"), 0755), 0);
  char dir[PATH_MAX], target[PATH_MAX], aside[PATH_MAX];
  S(dir, "%s", tp("root/d"));
  S(target, "%s", tp("outside"));
  S(aside, "%s", tp("root/d.aside"));
  swap_arg_t a = {dir, target, aside, 0};
  pthread_t th;
  cr_assert_eq(pthread_create(&th, NULL, swapper, &a), 0);
  int ok = 0, refused = 0, escaped = 0;
  nq_store_batch_t *b = nq_store_batch_new(st);
  for (int i = 0; i < 3000; i++) {
    nq_err_t err = {0};
    if (nq_store_batch_put(b, "d/f.txt", "x", 1, NULL, &err) == 0) ok++;
    else refused++;
    escaped += count_entries(target) > 0;
    nq_store_batch_abort(b);
  }
  a.stop = 1;
  pthread_join(th, NULL);
  nq_store_batch_free(b);
  escaped += count_entries(target) > 0;
  if (getenv("NQ_TEST_VERBOSE")) cr_log_info("swap race: %d staged, %d refused, %d escaped", ok, refused, escaped);
  cr_assert_eq(escaped, 0, "%d of %d puts wrote outside the root through a swapped-in symlink", escaped, ok + refused);
  nq_store_free(st);
}

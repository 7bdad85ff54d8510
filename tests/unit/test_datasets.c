/* tests/unit/test_datasets.c — JSONL, NExT-GPT JSON, WebDataset shards (made here with libarchive's writer), dirs,
 * brace expansion, hostile input (100 MB line, truncated shard, ".." members), nq_ds_read_uri. */
#include <archive.h>
#include <archive_entry.h>
#include <criterion/criterion.h>
#include <ftw.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "datasets/datasets.h"

static char g_tmp[PATH_MAX];

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
  S(g_tmp, "/tmp/nq_ds_XXXXXX");
  cr_assert_not_null(mkdtemp(g_tmp));
}
static void teardown(void) { nftw(g_tmp, rm_cb, 16, FTW_DEPTH | FTW_PHYS); }

static const char *tp(const char *rel) {
  static char buf[8][PATH_MAX];
  static int i;
  char *b = buf[i++ & 7];
  sfmt(b, PATH_MAX, "%s/%s", g_tmp, rel);
  return b;
}

static void write_file(const char *path, const void *data, size_t len) {
  FILE *f = fopen(path, "wb");
  cr_assert_not_null(f, "open %s", path);
  cr_assert_eq(fwrite(data, 1, len, f), len);
  fclose(f);
}
static void write_str(const char *path, const char *s) { write_file(path, s, strlen(s)); }

typedef struct {
  const char *name;
  const char *data; /* NULL: `len` bytes of a repeating pattern */
  size_t len;
} member_t;

/* A ustar tar written with libarchive: 512-byte headers, no extension headers, so offsets are predictable. */
static void write_tar(const char *path, const member_t *m, size_t n) {
  struct archive *a = archive_write_new();
  cr_assert_eq(archive_write_set_format_ustar(a), ARCHIVE_OK);
  cr_assert_eq(archive_write_open_filename(a, path), ARCHIVE_OK, "%s", archive_error_string(a));
  for (size_t i = 0; i < n; i++) {
    size_t len = m[i].data ? strlen(m[i].data) : m[i].len;
    char *buf = malloc(len + 1);
    if (m[i].data) memcpy(buf, m[i].data, len);
    else
      for (size_t k = 0; k < len; k++) buf[k] = (char)('A' + k % 26);
    struct archive_entry *e = archive_entry_new();
    archive_entry_set_pathname(e, m[i].name);
    archive_entry_set_size(e, (la_int64_t)len);
    archive_entry_set_filetype(e, AE_IFREG);
    archive_entry_set_perm(e, 0644);
    cr_assert_eq(archive_write_header(a, e), ARCHIVE_OK, "%s: %s", m[i].name, archive_error_string(a));
    cr_assert_eq(archive_write_data(a, buf, len), (la_ssize_t)len);
    archive_entry_free(e);
    free(buf);
  }
  cr_assert_eq(archive_write_close(a), ARCHIVE_OK);
  archive_write_free(a);
}

/* Byte offset of member `name`'s data in a ustar file (header is the 512-byte block naming it). */
static long tar_data_offset(const char *path, const char *name) {
  FILE *f = fopen(path, "rb");
  cr_assert_not_null(f);
  char blk[512];
  long off = 0;
  while (fread(blk, 1, 512, f) == 512) {
    if (strncmp(blk, name, 100) == 0 && memcmp(blk + 257, "ustar", 5) == 0) {
      fclose(f);
      return off + 512;
    }
    off += 512;
  }
  fclose(f);
  cr_assert_fail("member %s not found in %s", name, path);
  return -1;
}

static nq_dataset_t *open_ds(nq_ds_format_t fmt, const char *path, const char *media_root) {
  nq_ds_spec_t spec = {.format = fmt, .path = path, .media_root = media_root};
  nq_dataset_t *ds = NULL;
  nq_err_t err = {0};
  cr_assert_eq(nq_ds_open(&spec, &ds, &err), 0, "%s", err.msg);
  return ds;
}

static const char *jstr(json_t *rec, const char *field) { return json_string_value(json_object_get(rec, field)); }
static size_t nmedia(json_t *rec) { return json_array_size(json_object_get(rec, "media")); }
static const char *media_kind(json_t *rec, size_t i) {
  return json_string_value(json_object_get(json_array_get(json_object_get(rec, "media"), i), "kind"));
}
static const char *media_uri(json_t *rec, size_t i) {
  return json_string_value(json_object_get(json_array_get(json_object_get(rec, "media"), i), "uri"));
}

/* Next call must give a record; returns it (caller decrefs). */
static json_t *must_next(nq_dataset_t *ds) {
  json_t *rec = NULL;
  nq_err_t err = {0};
  int rc = nq_ds_next(ds, &rec, &err);
  cr_assert_eq(rc, 1, "expected a record, got %d: %s", rc, err.msg);
  cr_assert(json_is_object(rec));
  return rec;
}
/* Next call must fail; returns the message in a static buffer. */
static const char *must_fail(nq_dataset_t *ds, int code) {
  static nq_err_t err;
  json_t *rec = NULL;
  memset(&err, 0, sizeof err);
  int rc = nq_ds_next(ds, &rec, &err);
  cr_assert_eq(rc, code, "expected %d, got %d (%s) key=%s", code, rc, err.msg, rec ? jstr(rec, "key") : "-");
  cr_assert_null(rec);
  cr_assert(nq_err_is_fatal(&err), "data errors are fatal: %s", err.msg);
  return err.msg;
}
static void must_end(nq_dataset_t *ds) {
  json_t *rec = NULL;
  nq_err_t err = {0};
  int rc = nq_ds_next(ds, &rec, &err);
  cr_assert_eq(rc, 0, "expected the end, got %d (%s) key=%s", rc, err.msg, rec ? jstr(rec, "key") : "-");
  cr_assert_eq(nq_ds_next(ds, &rec, &err), 0, "the end is sticky");
}

/* ---- formats, braces ----------------------------------------------------------------------------------------- */

Test(datasets, format_parse) {
  nq_ds_format_t f;
  cr_assert_eq(nq_ds_format_parse("jsonl", &f), 0);
  cr_assert_eq(f, NQ_DS_JSONL);
  cr_assert_eq(nq_ds_format_parse("nextgpt-json", &f), 0);
  cr_assert_eq(f, NQ_DS_NEXTGPT_JSON);
  cr_assert_eq(nq_ds_format_parse("webdataset", &f), 0);
  cr_assert_eq(f, NQ_DS_WEBDATASET);
  cr_assert_eq(nq_ds_format_parse("dir", &f), 0);
  cr_assert_eq(f, NQ_DS_DIR);
  cr_assert_eq(nq_ds_format_parse("tar", &f), NQ_EINVAL);
  cr_assert_eq(nq_ds_format_parse(NULL, &f), NQ_EINVAL);
  cr_assert_str_eq(nq_ds_format_name(NQ_DS_NEXTGPT_JSON), "nextgpt-json");
}

Test(datasets, brace_expand) {
  char **v;
  size_t n;
  nq_err_t err = {0};
  cr_assert_eq(nq_ds_brace_expand("/d/shard-{000000..000003}.tar", &v, &n, &err), 0, "%s", err.msg);
  cr_assert_eq(n, 4);
  cr_assert_str_eq(v[0], "/d/shard-000000.tar");
  cr_assert_str_eq(v[3], "/d/shard-000003.tar");
  cr_assert_null(v[4]);
  nq_ds_brace_free(v);

  cr_assert_eq(nq_ds_brace_expand("{a,b}-{8..10}.tar", &v, &n, &err), 0, "%s", err.msg);
  const char *want[] = {"a-8.tar", "a-9.tar", "a-10.tar", "b-8.tar", "b-9.tar", "b-10.tar"};
  cr_assert_eq(n, 6);
  for (size_t i = 0; i < 6; i++) cr_assert_str_eq(v[i], want[i]);
  nq_ds_brace_free(v);

  cr_assert_eq(nq_ds_brace_expand("s{3..1}", &v, &n, &err), 0);
  cr_assert_eq(n, 3);
  cr_assert_str_eq(v[0], "s3");
  cr_assert_str_eq(v[2], "s1");
  nq_ds_brace_free(v);

  cr_assert_eq(nq_ds_brace_expand("{0..1}{0..1}", &v, &n, &err), 0);
  cr_assert_eq(n, 4);
  cr_assert_str_eq(v[1], "01");
  nq_ds_brace_free(v);

  cr_assert_eq(nq_ds_brace_expand("plain.tar", &v, &n, &err), 0);
  cr_assert_eq(n, 1);
  cr_assert_str_eq(v[0], "plain.tar");
  nq_ds_brace_free(v);

  const char *bad[] = {"x{a", "x}a", "{{a,b}}", "{a}", "{1..x}", ""};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    v = (char **)1;
    cr_assert_eq(nq_ds_brace_expand(bad[i], &v, &n, &err), NQ_EINVAL, "'%s' accepted", bad[i]);
    cr_assert_null(v);
  }
  cr_assert_eq(nq_ds_brace_expand("{0..99999999}", &v, &n, &err), NQ_ELIMIT);
  cr_assert_eq(nq_ds_brace_expand("{0..999}{0..999}{0..9}", &v, &n, &err), NQ_ELIMIT);
}

/* ---- JSONL --------------------------------------------------------------------------------------------------- */

Test(datasets, jsonl_records_and_bad_line, .init = setup, .fini = teardown) {
  write_str(tp("data.jsonl"),
            "{\"id\": \"a1\", \"prompt\": \"a cat\", \"image\": \"imgs/1.jpg\", \"extra\": 7}\n"   /* line 1 */
            "{\"caption\": \"no id\", \"audio\": [\"x.wav\", \"/abs/y.flac\"]}\r\n"                   /* line 2 */
            "{\"id\": \"broken\", \"text\": }\n"                                                        /* line 3 */
            "\n"                                                                                        /* line 4 */
            "   \n"                                                                                     /* line 5 */
            "{\"key\": 42, \"media\": [{\"kind\": \"video\", \"path\": \"v.mp4\"},"
            " {\"kind\": \"image\", \"uri\": \"s3://b/k.png\"}]}\n"                                     /* line 6 */
            "[1, 2]\n"                                                                                  /* line 7 */
            "{\"id\": \"../etc/passwd\"}\n"                                                             /* line 8 */
            "{\"image\": \"../outside.jpg\"}\n"                                                         /* line 9 */
            "{\"media\": [{\"kind\": \"smell\", \"path\": \"x\"}]}\n"                                   /* line 10 */
            "{\"id\": \"last\", \"video\": \"./clip.mp4\"}");                                           /* line 11, no \n */
  nq_dataset_t *ds = open_ds(NQ_DS_JSONL, tp("data.jsonl"), tp("media"));
  char want[PATH_MAX + 32];

  json_t *r = must_next(ds);
  cr_assert_str_eq(jstr(r, "key"), "a1");
  cr_assert_str_eq(jstr(r, "text"), "a cat");
  cr_assert_eq(nmedia(r), 1);
  cr_assert_str_eq(media_kind(r, 0), "image");
  S(want, "file://%s", tp("media/imgs/1.jpg"));
  cr_assert_str_eq(media_uri(r, 0), want);
  cr_assert_eq(json_integer_value(json_object_get(json_object_get(r, "meta"), "extra")), 7, "meta keeps the line");
  json_decref(r);

  r = must_next(ds);
  cr_assert_str_eq(jstr(r, "key"), "000001", "0-based line number");
  cr_assert_str_eq(jstr(r, "text"), "no id");
  cr_assert_eq(nmedia(r), 2);
  S(want, "file://%s", tp("media/x.wav"));
  cr_assert_str_eq(media_uri(r, 0), want);
  cr_assert_str_eq(media_uri(r, 1), "file:///abs/y.flac");
  cr_assert_str_eq(media_kind(r, 1), "audio");
  json_decref(r);

  const char *msg = must_fail(ds, NQ_EFORMAT);
  S(want, "%s:3:", tp("data.jsonl"));
  cr_assert(strstr(msg, want), "names file:line: %s", msg);

  r = must_next(ds); /* blank lines 4-5 skipped */
  cr_assert_str_eq(jstr(r, "key"), "42");
  cr_assert_null(json_object_get(r, "text"), "no text field when the line has none");
  cr_assert_eq(nmedia(r), 2);
  cr_assert_str_eq(media_kind(r, 0), "video");
  S(want, "file://%s", tp("media/v.mp4"));
  cr_assert_str_eq(media_uri(r, 0), want);
  cr_assert_str_eq(media_uri(r, 1), "s3://b/k.png");
  json_decref(r);

  msg = must_fail(ds, NQ_EFORMAT);
  cr_assert(strstr(msg, ":7:") || strstr(msg, ":7"), "%s", msg);
  msg = must_fail(ds, NQ_EFORMAT);
  cr_assert(strstr(msg, ":8: invalid key"), "%s", msg);
  msg = must_fail(ds, NQ_EFORMAT);
  cr_assert(strstr(msg, ":9") && strstr(msg, ".."), "%s", msg);
  msg = must_fail(ds, NQ_EFORMAT);
  cr_assert(strstr(msg, ":10") && strstr(msg, "kind"), "%s", msg);

  r = must_next(ds);
  cr_assert_str_eq(jstr(r, "key"), "last");
  S(want, "file://%s", tp("media/clip.mp4"));
  cr_assert_str_eq(media_uri(r, 0), want);
  json_decref(r);
  must_end(ds);
  nq_ds_free(ds);
}

Test(datasets, jsonl_media_default_to_file_dir, .init = setup, .fini = teardown) {
  cr_assert_eq(mkdir(tp("sub"), 0755), 0);
  write_str(tp("sub/d.jsonl"), "{\"image\": \"p.png\"}\n");
  nq_dataset_t *ds = open_ds(NQ_DS_JSONL, tp("sub/d.jsonl"), NULL);
  json_t *r = must_next(ds);
  char want[PATH_MAX + 16];
  S(want, "file://%s", tp("sub/p.png"));
  cr_assert_str_eq(media_uri(r, 0), want);
  cr_assert_str_eq(jstr(r, "key"), "000000");
  json_decref(r);
  must_end(ds);
  nq_ds_free(ds);

  nq_ds_spec_t spec = {.format = NQ_DS_JSONL, .path = tp("missing.jsonl")};
  nq_err_t err = {0};
  cr_assert_eq(nq_ds_open(&spec, &ds, &err), NQ_ENOENT);
  cr_assert(strstr(err.msg, "missing.jsonl"), "%s", err.msg);
  cr_assert_null(ds);
}

Test(datasets, jsonl_100mb_line_is_an_error_not_a_crash, .init = setup, .fini = teardown, .timeout = 120) {
  FILE *f = fopen(tp("big.jsonl"), "wb");
  cr_assert_not_null(f);
  fputs("{\"id\": \"first\"}\n{\"text\": \"", f);
  static char chunk[1 << 20];
  memset(chunk, 'x', sizeof chunk);
  for (int i = 0; i < 100; i++) cr_assert_eq(fwrite(chunk, 1, sizeof chunk, f), sizeof chunk);
  fputs("\"}\n{\"id\": \"after\", \"text\": \"ok\"}\n", f);
  fclose(f);
  nq_dataset_t *ds = open_ds(NQ_DS_JSONL, tp("big.jsonl"), NULL);
  json_t *r = must_next(ds);
  cr_assert_str_eq(jstr(r, "key"), "first");
  json_decref(r);
  const char *msg = must_fail(ds, NQ_EFORMAT);
  char want[PATH_MAX + 16];
  S(want, "%s:2: line longer than", tp("big.jsonl"));
  cr_assert(strstr(msg, want), "%s", msg);
  r = must_next(ds);
  cr_assert_str_eq(jstr(r, "key"), "after");
  json_decref(r);
  must_end(ds);
  nq_ds_free(ds);
}

Test(datasets, jsonl_nul_byte_in_line, .init = setup, .fini = teardown) {
  static const char data[] = "{\"image\": \"a\0b.jpg\"}\n{\"image\": \"a\\u0000b.jpg\"}\n{\"id\": \"ok\"}\n";
  write_file(tp("nul.jsonl"), data, sizeof data - 1);
  nq_dataset_t *ds = open_ds(NQ_DS_JSONL, tp("nul.jsonl"), NULL);
  const char *msg = must_fail(ds, NQ_EFORMAT);
  cr_assert(strstr(msg, ":1:"), "%s", msg);
  msg = must_fail(ds, NQ_EFORMAT);
  cr_assert(strstr(msg, ":2:"), "%s", msg);
  json_t *r = must_next(ds);
  cr_assert_str_eq(jstr(r, "key"), "ok");
  json_decref(r);
  must_end(ds);
  nq_ds_free(ds);
}

/* ---- NExT-GPT JSON ------------------------------------------------------------------------------------------- */

Test(datasets, nextgpt_cc3m_webvid_audiocap, .init = setup, .fini = teardown) {
  write_str(tp("cc3m.json"),
            "[\n"
            "  {\"caption\": \"a \\\"quoted\\\" [bracket] {brace}, comma\", \"id\": \"GCC_train_000000001\",\n"
            "   \"image_name\": \"000000001.jpg\"},\n"
            "  {\"caption\": \"second\", \"id\": \"GCC_train_000000002\", \"image_name\": \"000000002.jpg\"}\n"
            "]\n");
  write_str(tp("webvid.json"), "[{\"caption\": \"waves\", \"id\": \"1066674784\", \"video_name\": \"1066674784.mp4\"}]");
  write_str(tp("audiocap.json"),
            "[{\"audio_id\": \"91139\", \"audio_name\": \"91139.wav\", \"caption\": \"a dog barks\"},"
            " {\"audio_id\": 7, \"audio_name\": \"7.wav\", \"caption\": \"rain\"}]");
  char want[PATH_MAX + 16];

  nq_dataset_t *ds = open_ds(NQ_DS_NEXTGPT_JSON, tp("cc3m.json"), tp("images"));
  json_t *r = must_next(ds);
  cr_assert_str_eq(jstr(r, "key"), "GCC_train_000000001");
  cr_assert_str_eq(jstr(r, "text"), "a \"quoted\" [bracket] {brace}, comma");
  cr_assert_eq(nmedia(r), 1);
  cr_assert_str_eq(media_kind(r, 0), "image");
  S(want, "file://%s", tp("images/000000001.jpg"));
  cr_assert_str_eq(media_uri(r, 0), want);
  cr_assert_str_eq(json_string_value(json_object_get(json_object_get(r, "meta"), "image_name")), "000000001.jpg");
  json_decref(r);
  r = must_next(ds);
  cr_assert_str_eq(jstr(r, "key"), "GCC_train_000000002");
  json_decref(r);
  must_end(ds);
  nq_ds_free(ds);

  ds = open_ds(NQ_DS_NEXTGPT_JSON, tp("webvid.json"), tp("videos"));
  r = must_next(ds);
  cr_assert_str_eq(jstr(r, "key"), "1066674784");
  cr_assert_str_eq(jstr(r, "text"), "waves");
  cr_assert_str_eq(media_kind(r, 0), "video");
  S(want, "file://%s", tp("videos/1066674784.mp4"));
  cr_assert_str_eq(media_uri(r, 0), want);
  json_decref(r);
  must_end(ds);
  nq_ds_free(ds);

  ds = open_ds(NQ_DS_NEXTGPT_JSON, tp("audiocap.json"), tp("audios"));
  r = must_next(ds);
  cr_assert_str_eq(jstr(r, "key"), "91139");
  cr_assert_str_eq(jstr(r, "text"), "a dog barks");
  cr_assert_str_eq(media_kind(r, 0), "audio");
  S(want, "file://%s", tp("audios/91139.wav"));
  cr_assert_str_eq(media_uri(r, 0), want);
  json_decref(r);
  r = must_next(ds);
  cr_assert_str_eq(jstr(r, "key"), "7", "integer audio_id");
  json_decref(r);
  must_end(ds);
  nq_ds_free(ds);
}

Test(datasets, nextgpt_bad_element_then_continue, .init = setup, .fini = teardown) {
  write_str(tp("bad.json"),
            "[{\"id\": \"a\", \"caption\": \"x\", \"image_name\": \"a.jpg\"},\n"
            " {\"id\": \"b\", \"caption\": tru},\n"                /* element 1, line 2: invalid */
            " 17,\n"                                               /* element 2: not an object */
            " {\"caption\": \"no id\", \"image_name\": \"../x.jpg\"},\n" /* element 3: escapes media root */
            " {\"caption\": \"fallback key\"}\n"                   /* element 4 */
            "]");
  nq_dataset_t *ds = open_ds(NQ_DS_NEXTGPT_JSON, tp("bad.json"), NULL);
  json_t *r = must_next(ds);
  cr_assert_str_eq(jstr(r, "key"), "a");
  json_decref(r);
  const char *msg = must_fail(ds, NQ_EFORMAT);
  cr_assert(strstr(msg, "bad.json:2: element 1"), "%s", msg);
  msg = must_fail(ds, NQ_EFORMAT);
  cr_assert(strstr(msg, "element 2"), "%s", msg);
  msg = must_fail(ds, NQ_EFORMAT);
  cr_assert(strstr(msg, "element 3") && strstr(msg, ".."), "%s", msg);
  r = must_next(ds);
  cr_assert_str_eq(jstr(r, "key"), "000004", "element index as the key");
  json_decref(r);
  must_end(ds);
  nq_ds_free(ds);

  write_str(tp("obj.json"), "{\"not\": \"an array\"}");
  ds = open_ds(NQ_DS_NEXTGPT_JSON, tp("obj.json"), NULL);
  msg = must_fail(ds, NQ_EFORMAT);
  cr_assert(strstr(msg, "expected a JSON array"), "%s", msg);
  must_end(ds);
  nq_ds_free(ds);

  write_str(tp("cut.json"), "[{\"id\": \"a\"}, {\"id\": \"b\", \"caption\": \"unterminated");
  ds = open_ds(NQ_DS_NEXTGPT_JSON, tp("cut.json"), NULL);
  r = must_next(ds);
  json_decref(r);
  msg = must_fail(ds, NQ_EFORMAT);
  cr_assert(strstr(msg, "element 1 is unterminated"), "%s", msg);
  must_end(ds);
  nq_ds_free(ds);

  write_str(tp("empty.json"), "  [ ]  ");
  ds = open_ds(NQ_DS_NEXTGPT_JSON, tp("empty.json"), NULL);
  must_end(ds);
  nq_ds_free(ds);
}

Test(datasets, nextgpt_element_size_cap, .init = setup, .fini = teardown) {
  char big[300];
  memset(big, 'y', sizeof big - 1);
  big[sizeof big - 1] = 0;
  FILE *f = fopen(tp("cap.json"), "wb");
  fprintf(f, "[{\"id\": \"a\"}, {\"id\": \"big\", \"caption\": \"%s\"}, {\"id\": \"c\"}]", big);
  fclose(f);
  nq_ds_spec_t spec = {.format = NQ_DS_NEXTGPT_JSON, .path = tp("cap.json"), .max_record_bytes = 200};
  nq_dataset_t *ds = NULL;
  nq_err_t err = {0};
  cr_assert_eq(nq_ds_open(&spec, &ds, &err), 0, "%s", err.msg);
  json_t *r = must_next(ds);
  json_decref(r);
  const char *msg = must_fail(ds, NQ_EFORMAT);
  cr_assert(strstr(msg, "element 1 is larger than 200 bytes"), "%s", msg);
  r = must_next(ds);
  cr_assert_str_eq(jstr(r, "key"), "c");
  json_decref(r);
  must_end(ds);
  nq_ds_free(ds);
}

/* ---- WebDataset ---------------------------------------------------------------------------------------------- */

static void make_shard(const char *path, int first, int count, int with_big_media) {
  member_t m[64];
  static char names[64][32], texts[64][64];
  size_t n = 0;
  for (int k = first; k < first + count; k++) {
    S(names[n], "%06d.jpg", k);
    m[n] = (member_t){names[n], NULL, with_big_media ? 3000 : 100};
    n++;
    S(names[n], "%06d.txt", k);
    S(texts[n], "caption %d", k);
    m[n] = (member_t){names[n], texts[n], 0};
    n++;
    S(names[n], "%06d.json", k);
    S(texts[n], "{\"width\": %d, \"caption\": \"from json\"}", k);
    m[n] = (member_t){names[n], texts[n], 0};
    n++;
  }
  write_tar(path, m, n);
}

Test(datasets, webdataset_brace_shards_grouping_and_read_uri, .init = setup, .fini = teardown) {
  make_shard(tp("shard-000000.tar"), 0, 3, 0);
  make_shard(tp("shard-000001.tar"), 3, 3, 0);
  /* shard 2: mixed roles, "./" prefixes, a directory entry, unknown extensions, audio/video, .cls, json text only */
  member_t m2[] = {
      {"./000006.cls", " 3\n", 0},        {"000006.flac", NULL, 10},     {"000006.npy", NULL, 16},
      {"000007.json", "{\"text\": \"json text\", \"lang\": \"en\"}", 0}, {"000007.mp4", NULL, 20},
      {"sub/000008.seg.png", NULL, 5},    {"sub/000008.txt", "nested", 0},
  };
  write_tar(tp("shard-000002.tar"), m2, sizeof m2 / sizeof m2[0]);

  char pat[PATH_MAX];
  S(pat, "%s/shard-{000000..000002}.tar", g_tmp);
  nq_dataset_t *ds = open_ds(NQ_DS_WEBDATASET, pat, NULL);
  char want[PATH_MAX + 64], key[16], text[32];
  for (int k = 0; k < 6; k++) {
    json_t *r = must_next(ds);
    S(key, "%06d", k);
    S(text, "caption %d", k);
    cr_assert_str_eq(jstr(r, "key"), key);
    cr_assert_str_eq(jstr(r, "text"), text, ".txt wins over the json caption");
    cr_assert_eq(nmedia(r), 1);
    cr_assert_str_eq(media_kind(r, 0), "image");
    S(want, "file://%s/shard-%06d.tar#%06d.jpg", g_tmp, k / 3, k);
    cr_assert_str_eq(media_uri(r, 0), want);
    cr_assert_eq(json_integer_value(json_object_get(json_object_get(r, "meta"), "width")), k, ".json merged into meta");
    if (k == 4) { /* the media URI reads back the member's bytes */
      void *data = NULL;
      size_t len = 0;
      nq_err_t err = {0};
      cr_assert_eq(nq_ds_read_uri(want, &data, &len, &err), 0, "%s", err.msg);
      cr_assert_eq(len, 100);
      for (size_t i = 0; i < len; i++) cr_assert_eq(((char *)data)[i], (char)('A' + i % 26));
      free(data);
    }
    json_decref(r);
  }
  json_t *r = must_next(ds);
  cr_assert_str_eq(jstr(r, "key"), "000006");
  cr_assert_eq(json_integer_value(json_object_get(json_object_get(r, "meta"), "cls")), 3);
  cr_assert_str_eq(media_kind(r, 0), "audio");
  S(want, "file://%s/shard-000002.tar#000006.npy", g_tmp);
  cr_assert_str_eq(json_string_value(json_object_get(json_object_get(json_object_get(r, "meta"), "members"), "npy")),
                   want);
  cr_assert_null(json_object_get(r, "text"));
  json_decref(r);
  r = must_next(ds);
  cr_assert_str_eq(jstr(r, "key"), "000007");
  cr_assert_str_eq(jstr(r, "text"), "json text");
  cr_assert_str_eq(media_kind(r, 0), "video");
  cr_assert_str_eq(json_string_value(json_object_get(json_object_get(r, "meta"), "lang")), "en");
  json_decref(r);
  r = must_next(ds);
  cr_assert_str_eq(jstr(r, "key"), "sub/000008");
  cr_assert_str_eq(jstr(r, "text"), "nested");
  S(want, "file://%s/shard-000002.tar#sub/000008.seg.png", g_tmp);
  cr_assert_str_eq(media_uri(r, 0), want);
  json_decref(r);
  must_end(ds);
  nq_ds_free(ds);

  /* read_uri: plain files, missing members, unsupported schemes */
  void *data = NULL;
  size_t len = 0;
  nq_err_t err = {0};
  S(want, "file://%s/shard-000002.tar#sub/000008.txt", g_tmp);
  cr_assert_eq(nq_ds_read_uri(want, &data, &len, &err), 0, "%s", err.msg);
  cr_assert_eq(len, 6);
  cr_assert_str_eq(data, "nested");
  free(data);
  write_str(tp("plain.txt"), "hello");
  cr_assert_eq(nq_ds_read_uri(tp("plain.txt"), &data, &len, &err), 0, "%s", err.msg);
  cr_assert_str_eq(data, "hello");
  free(data);
  S(want, "file://%s/shard-000002.tar#nope.jpg", g_tmp);
  cr_assert_eq(nq_ds_read_uri(want, &data, &len, &err), NQ_ENOENT);
  cr_assert(strstr(err.msg, "shard-000002.tar") && strstr(err.msg, "nope.jpg"), "%s", err.msg);
  cr_assert_eq(nq_ds_read_uri("http://example.com/x.jpg", &data, &len, &err), NQ_EUNSUPPORTED);
  S(want, "file://%s/missing.jpg", g_tmp);
  cr_assert_eq(nq_ds_read_uri(want, &data, &len, &err), NQ_ENOENT);
  cr_assert_null(data);
}

Test(datasets, webdataset_truncated_shard_names_shard_and_member, .init = setup, .fini = teardown) {
  make_shard(tp("s-0.tar"), 0, 2, 1);
  make_shard(tp("s-1.tar"), 2, 3, 1); /* samples 2,3,4; cut inside 000003.jpg */
  make_shard(tp("s-2.tar"), 5, 2, 1);
  long off = tar_data_offset(tp("s-1.tar"), "000003.jpg");
  cr_assert_eq(truncate(tp("s-1.tar"), off + 1000), 0);

  char pat[PATH_MAX], key[16];
  S(pat, "%s/s-{0..2}.tar", g_tmp);
  nq_dataset_t *ds = open_ds(NQ_DS_WEBDATASET, pat, NULL);
  for (int k = 0; k < 3; k++) { /* 000000, 000001 from s-0; 000002 is complete in s-1 */
    json_t *r = must_next(ds);
    S(key, "%06d", k);
    cr_assert_str_eq(jstr(r, "key"), key);
    json_decref(r);
  }
  const char *msg = must_fail(ds, NQ_EFORMAT);
  cr_assert(strstr(msg, "s-1.tar"), "names the shard: %s", msg);
  cr_assert(strstr(msg, "000003.jpg"), "names the member: %s", msg);
  for (int k = 5; k < 7; k++) { /* the next shard still reads */
    json_t *r = must_next(ds);
    S(key, "%06d", k);
    cr_assert_str_eq(jstr(r, "key"), key);
    cr_assert_eq(nmedia(r), 1);
    json_decref(r);
  }
  must_end(ds);
  nq_ds_free(ds);

  /* reading the cut member directly also names shard and member */
  char uri[PATH_MAX + 32];
  S(uri, "file://%s/s-1.tar#000003.jpg", g_tmp);
  void *data = NULL;
  size_t len = 0;
  nq_err_t err = {0};
  cr_assert_eq(nq_ds_read_uri(uri, &data, &len, &err), NQ_EFORMAT, "%s", err.msg);
  cr_assert(strstr(err.msg, "s-1.tar") && strstr(err.msg, "000003.jpg"), "%s", err.msg);
  cr_assert_null(data);
}

Test(datasets, webdataset_truncated_in_text_member_and_garbage_shard, .init = setup, .fini = teardown) {
  member_t m[] = {{"000000.jpg", NULL, 10}, {"000000.txt", "zero", 0}, {"000001.jpg", NULL, 10},
                  {"000001.txt", NULL, 2000}};
  write_tar(tp("a.tar"), m, 4);
  long off = tar_data_offset(tp("a.tar"), "000001.txt");
  cr_assert_eq(truncate(tp("a.tar"), off + 700), 0);
  write_str(tp("b.tar"), "this is not a tar archive at all, just some bytes that go on for a while ...........");
  member_t ok[] = {{"000009.txt", "nine", 0}};
  write_tar(tp("c.tar"), ok, 1);

  char pat[PATH_MAX];
  S(pat, "%s/{a,b,missing,c}.tar", g_tmp);
  nq_dataset_t *ds = open_ds(NQ_DS_WEBDATASET, pat, NULL);
  json_t *r = must_next(ds);
  cr_assert_str_eq(jstr(r, "key"), "000000");
  cr_assert_str_eq(jstr(r, "text"), "zero");
  json_decref(r);
  const char *msg = must_fail(ds, NQ_EFORMAT);
  cr_assert(strstr(msg, "a.tar") && strstr(msg, "000001.txt"), "%s", msg);
  msg = must_fail(ds, NQ_EFORMAT);
  cr_assert(strstr(msg, "b.tar"), "%s", msg);
  msg = must_fail(ds, NQ_ENOENT);
  cr_assert(strstr(msg, "missing.tar"), "%s", msg);
  r = must_next(ds);
  cr_assert_str_eq(jstr(r, "key"), "000009");
  json_decref(r);
  must_end(ds);
  nq_ds_free(ds);
}

Test(datasets, webdataset_hostile_member_names, .init = setup, .fini = teardown) {
  member_t m[] = {
      {"000000.txt", "fine", 0},
      {"../evil.txt", "x", 0},          /* ".." */
      {"/etc/abs.txt", "x", 0},         /* absolute */
      {"a/../../b.txt", "x", 0},
      {"000001.txt", "also fine", 0},
      {"000001.json", "{not json", 0},  /* spoils sample 000001 */
      {"000001.jpg", NULL, 4},
      {"000002.txt", "\xff\xfe bad utf8", 0},
      {"000003.txt", "three", 0},
  };
  write_tar(tp("h.tar"), m, sizeof m / sizeof m[0]);
  nq_dataset_t *ds = open_ds(NQ_DS_WEBDATASET, tp("h.tar"), NULL);
  const char *msg;
  json_t *r;
  msg = must_fail(ds, NQ_EFORMAT);
  cr_assert(strstr(msg, "../evil.txt") && strstr(msg, "unsafe"), "%s", msg);
  msg = must_fail(ds, NQ_EFORMAT);
  cr_assert(strstr(msg, "/etc/abs.txt"), "%s", msg);
  msg = must_fail(ds, NQ_EFORMAT);
  cr_assert(strstr(msg, "a/../../b.txt"), "%s", msg);
  r = must_next(ds); /* 000000 is emitted when 000001 starts */
  cr_assert_str_eq(jstr(r, "key"), "000000");
  cr_assert_str_eq(jstr(r, "text"), "fine");
  json_decref(r);
  msg = must_fail(ds, NQ_EFORMAT);
  cr_assert(strstr(msg, "h.tar") && strstr(msg, "000001.json"), "%s", msg);
  msg = must_fail(ds, NQ_EFORMAT); /* 000001 was spoilt: its .jpg is skipped, and 000002 has bad text */
  cr_assert(strstr(msg, "000002.txt") && strstr(msg, "UTF-8"), "%s", msg);
  r = must_next(ds);
  cr_assert_str_eq(jstr(r, "key"), "000003");
  json_decref(r);
  must_end(ds);
  nq_ds_free(ds);
}

/* ---- dir ----------------------------------------------------------------------------------------------------- */

Test(datasets, dir_grouping_sorted_recursive, .init = setup, .fini = teardown) {
  cr_assert_eq(mkdir(tp("d"), 0755), 0);
  cr_assert_eq(mkdir(tp("d/a"), 0755), 0);
  cr_assert_eq(mkdir(tp("d/.git"), 0755), 0);
  write_str(tp("d/a/002.png"), "png");
  write_str(tp("d/a/001.txt"), "first caption");
  write_str(tp("d/a/001.jpg"), "jpg");
  write_str(tp("d/a/001.json"), "{\"caption\": \"json caption\", \"n\": 1}");
  write_str(tp("d/b.wav"), "wav");
  write_str(tp("d/b.json"), "{\"caption\": \"bee\"}");
  write_str(tp("d/c.bin"), "bin");
  write_str(tp("d/bad.json"), "{oops");
  write_str(tp("d/.hidden.txt"), "no");
  write_str(tp("d/.git/x.txt"), "no");
  cr_assert_eq(symlink(tp("d/a"), tp("d/loop")), 0); /* a symlinked dir is not entered */

  nq_dataset_t *ds = open_ds(NQ_DS_DIR, tp("d"), NULL);
  char want[PATH_MAX + 16];
  json_t *r = must_next(ds);
  cr_assert_str_eq(jstr(r, "key"), "a/001");
  cr_assert_str_eq(jstr(r, "text"), "first caption");
  cr_assert_eq(nmedia(r), 1);
  S(want, "file://%s", tp("d/a/001.jpg"));
  cr_assert_str_eq(media_uri(r, 0), want);
  cr_assert_eq(json_integer_value(json_object_get(json_object_get(r, "meta"), "n")), 1);
  json_decref(r);
  r = must_next(ds);
  cr_assert_str_eq(jstr(r, "key"), "a/002");
  cr_assert_str_eq(media_kind(r, 0), "image");
  json_decref(r);
  r = must_next(ds);
  cr_assert_str_eq(jstr(r, "key"), "b");
  cr_assert_str_eq(jstr(r, "text"), "bee");
  cr_assert_str_eq(media_kind(r, 0), "audio");
  json_decref(r);
  const char *msg = must_fail(ds, NQ_EFORMAT);
  cr_assert(strstr(msg, "bad.json"), "%s", msg);
  r = must_next(ds);
  cr_assert_str_eq(jstr(r, "key"), "c");
  cr_assert_eq(nmedia(r), 0);
  S(want, "file://%s", tp("d/c.bin"));
  cr_assert_str_eq(json_string_value(json_object_get(json_object_get(json_object_get(r, "meta"), "members"), "bin")),
                   want);
  json_decref(r);
  must_end(ds);
  nq_ds_free(ds);

  nq_ds_spec_t spec = {.format = NQ_DS_DIR, .path = tp("nope")};
  nq_err_t err = {0};
  cr_assert_eq(nq_ds_open(&spec, &ds, &err), NQ_ENOENT);
}

Test(datasets, webdataset_corrupt_header_mid_shard, .init = setup, .fini = teardown) {
  member_t m[] = {{"000000.txt", "zero", 0}, {"000001.txt", "one", 0}, {"000002.txt", "two", 0}};
  write_tar(tp("bad.tar"), m, 3);
  write_tar(tp("good.tar"), (member_t[]){{"000005.txt", "five", 0}}, 1);
  long hdr = tar_data_offset(tp("bad.tar"), "000001.txt") - 512;
  FILE *f = fopen(tp("bad.tar"), "r+b");
  cr_assert_not_null(f);
  fseek(f, hdr + 124, SEEK_SET); /* the size field: garbage breaks the header checksum */
  fputs("zzzzzzzz", f);
  fclose(f);
  char pat[PATH_MAX];
  S(pat, "%s/{bad,good}.tar", g_tmp);
  nq_dataset_t *ds = open_ds(NQ_DS_WEBDATASET, pat, NULL);
  const char *msg = must_fail(ds, NQ_EFORMAT); /* 000000 was in progress when the shard broke: dropped */
  cr_assert(strstr(msg, "bad.tar") && strstr(msg, "after member 000000.txt"), "%s", msg);
  json_t *r = must_next(ds);
  cr_assert_str_eq(jstr(r, "key"), "000005");
  json_decref(r);
  must_end(ds);
  nq_ds_free(ds);
}

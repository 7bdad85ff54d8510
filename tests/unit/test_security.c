/* tests/unit/test_security.c — credentials and limits: Redis AUTH / ACL users from the queue URL against a real
 * redis-server (--requirepass, an ACL user), reconnects re-authenticate, passwords never reach q->url or error
 * messages, URL redaction; size limits produce errors that name the limit and the thing. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <archive.h>
#include <ftw.h>
#include <archive_entry.h>
#include <stdint.h>
#include <unistd.h>

#include "datasets/datasets.h"
#include "datasets/media.h"
#include "queue/envelope.h"
#include "queue/queue.h"
#include "compute/tokenizers/sentencepiece.h"
#include "store/store.h"
#include "tests/helpers/redis_harness.h"
#include "worker/worker.h"

_Static_assert(NQ_QUEUE_MAX_MESSAGE_BYTES == NQ_ENVELOPE_MAX_BYTES, "queue and envelope message limits differ");

/* ---- URL redaction ----------------------------------------------------------------------------------------- */

Test(security, url_redact) {
  char out[256];
  cr_assert_str_eq(nq_url_redact("redis://alice:s3cret@h:6379/2", out, sizeof out), "redis://alice:***@h:6379/2");
  cr_assert_str_eq(nq_url_redact("redis://:s3cret@h:6379", out, sizeof out), "redis://:***@h:6379");
  cr_assert_str_eq(nq_url_redact("redis://u:p@ss@h/0", out, sizeof out), "redis://u:***@h/0"); /* last '@' */
  cr_assert_str_eq(nq_url_redact("redis://h:6379/0", out, sizeof out), "redis://h:6379/0");   /* host:port kept */
  cr_assert_str_eq(nq_url_redact("redis://user@h", out, sizeof out), "redis://user@h");       /* no password */
  cr_assert_str_eq(nq_url_redact("kafka://a:1,b:2", out, sizeof out), "kafka://a:1,b:2");
  cr_assert_str_eq(nq_url_redact("http://x/y@z:w", out, sizeof out), "http://x/y@z:w"); /* '@' after the path */
}

Test(security, bad_userinfo_errors_do_not_show_the_password) {
  nq_queue_t *q = NULL;
  nq_err_t err = {0};
  cr_assert_eq(nq_queue_open("redis://u:pa%zzSECRET@127.0.0.1:1/0", NULL, &q, &err), NQ_EINVAL);
  cr_assert_null(strstr(err.msg, "SECRET"), "%s", err.msg);
  cr_assert(strstr(err.msg, "***"), "%s", err.msg);
  cr_assert_eq(nq_queue_open("bogus://u:SECRET@h", NULL, &q, &err), NQ_EINVAL);
  cr_assert_null(strstr(err.msg, "SECRET"), "%s", err.msg);
  /* connection refused (nothing listens on port 1): the error names the host, never the password */
  cr_assert_lt(nq_queue_open("redis://u:SECRET@127.0.0.1:1/0", NULL, &q, &err), 0);
  cr_assert_null(strstr(err.msg, "SECRET"), "%s", err.msg);
  cr_assert(strstr(err.msg, "127.0.0.1:1"), "%s", err.msg);
}

/* ---- Redis AUTH / ACL ---------------------------------------------------------------------------------------- */

static void roundtrip(nq_queue_t *q, const char *what) {
  nq_err_t err = {0};
  cr_assert_eq(nq_queue_publish(q, "sec:t", "hello", 5, &err), 0, "%s: publish: %s", what, err.msg);
  const char *topics[] = {"sec:t"};
  nq_delivery_t *d = NULL;
  int n = 0;
  cr_assert_eq(nq_queue_fetch(q, topics, 1, "g", "c1", 1, 1000, &d, &n, &err), 0, "%s: fetch: %s", what, err.msg);
  cr_assert_eq(n, 1, "%s", what);
  cr_assert_str_eq(d[0].body, "hello");
  cr_assert_eq(nq_queue_ack(q, "g", &d[0], &err), 0, "%s: ack: %s", what, err.msg);
  nq_delivery_free_array(d, n);
}

Test(security, redis_requirepass_and_reconnect) {
  if (!nq_redis_harness_available()) cr_skip_test("no redis-server");
  static const char *const args[] = {"--requirepass", "pw-1:@/x", NULL};
  nq_redis_harness_t h;
  cr_assert_eq(nq_redis_harness_start_ex(&h, 0, args, NULL, "pw-1:@/x"), 0);
  char url[256];
  nq_err_t err = {0};
  nq_queue_t *q = NULL;

  /* without a password: the first command is refused by the server (NOAUTH) */
  snprintf(url, sizeof url, "redis://127.0.0.1:%d/0", h.port);
  if (nq_queue_open(url, NULL, &q, &err) == 0) {
    cr_assert_lt(nq_queue_publish(q, "sec:t", "x", 1, &err), 0);
    nq_queue_close(q);
    q = NULL;
  }
  cr_assert(strstr(err.msg, "NOAUTH") || strstr(err.msg, "uthentication"), "%s", err.msg);
  /* a wrong one: a fatal error (configuration), naming the host but not the password */
  snprintf(url, sizeof url, "redis://:WRONGpw@127.0.0.1:%d/1", h.port);
  cr_assert_lt(nq_queue_open(url, NULL, &q, &err), 0);
  cr_assert(strstr(err.msg, "AUTH"), "%s", err.msg);
  cr_assert_null(strstr(err.msg, "WRONGpw"), "%s", err.msg);
  cr_assert(nq_err_is_fatal(&err), "%s", err.msg);

  /* the right one, percent-encoded (':', '@', '/' in the password), with a db number */
  snprintf(url, sizeof url, "redis://:pw-1%%3A%%40%%2Fx@127.0.0.1:%d/3", h.port);
  cr_assert_eq(nq_queue_open(url, NULL, &q, &err), 0, "%s", err.msg);
  cr_assert_null(strstr(q->url, "pw-1"), "%s", q->url);
  cr_assert(strstr(q->url, ":***@"), "%s", q->url);
  roundtrip(q, "requirepass");
  cr_assert_eq(nq_redis_harness_int(&h, "EXISTS %s", "sec:t"), 0, "db 3 was selected after AUTH, not db 0");

  /* kill and restart the server: the next call reconnects and authenticates again */
  cr_assert_eq(nq_redis_harness_kill(&h), 0);
  cr_assert_eq(nq_redis_harness_resume(&h, 0), 0);
  int ok = 0;
  for (int i = 0; i < 5 && !ok; i++) ok = nq_queue_publish(q, "sec:t2", "x", 1, &err) == 0;
  cr_assert(ok, "after a restart: %s", err.msg);
  roundtrip(q, "after restart");
  nq_queue_close(q);
  nq_redis_harness_cleanup(&h);
}

Test(security, redis_acl_user) {
  if (!nq_redis_harness_available()) cr_skip_test("no redis-server");
  /* the default user is off: only alice (password "alice pw") may connect */
  static const char *const args[] = {"--user", "default", "off", "--user", "alice", "on", ">alice-pw", "~*", "&*", "+@all",
                                     NULL};
  nq_redis_harness_t h;
  cr_assert_eq(nq_redis_harness_start_ex(&h, 0, args, "alice", "alice-pw"), 0);
  char url[256];
  nq_err_t err = {0};
  nq_queue_t *q = NULL;
  snprintf(url, sizeof url, "redis://alice:alice-pw@127.0.0.1:%d", h.port);
  cr_assert_eq(nq_queue_open(url, NULL, &q, &err), 0, "%s", err.msg);
  char want[128];
  snprintf(want, sizeof want, "redis://alice:***@127.0.0.1:%d/0", h.port);
  cr_assert_str_eq(q->url, want);
  nq_queue_close(q);
  q = NULL;
  /* the password alone (AUTH pass = user "default", which is off) and a wrong user are both refused */
  snprintf(url, sizeof url, "redis://:alice-pw@127.0.0.1:%d", h.port);
  cr_assert_lt(nq_queue_open(url, NULL, &q, &err), 0);
  snprintf(url, sizeof url, "redis://bob:alice-pw@127.0.0.1:%d", h.port);
  cr_assert_lt(nq_queue_open(url, NULL, &q, &err), 0);
  cr_assert(strstr(err.msg, "bob"), "the error names the user: %s", err.msg);
  cr_assert_null(strstr(err.msg, "alice-pw"), "%s", err.msg);
  snprintf(url, sizeof url, "redis://alice:alice-pw@127.0.0.1:%d/0", h.port);
  cr_assert_eq(nq_queue_open(url, NULL, &q, &err), 0, "%s", err.msg);
  roundtrip(q, "acl user");
  nq_queue_close(q);
  nq_redis_harness_cleanup(&h);
}

/* ---- limits: each error names the limit and the thing ------------------------------------------------------------ */

Test(security, limit_message_bytes) {
  size_t n = (size_t)NQ_ENVELOPE_MAX_BYTES + 1;
  char *big = malloc(n);
  cr_assert_not_null(big);
  memset(big, ' ', n);
  nq_envelope_t env;
  nq_err_t err = {0};
  cr_assert_eq(nq_envelope_parse(big, n, &env, &err), NQ_ELIMIT);
  cr_assert(strstr(err.msg, "envelope") && strstr(err.msg, "16777216"), "%s", err.msg);
  cr_assert(nq_err_is_fatal(&err));
  /* refused at publish already: it could never run */
  nq_queue_t *q = NULL;
  cr_assert_eq(nq_queue_open("local://sec-limit", NULL, &q, &err), 0, "%s", err.msg);
  cr_assert_eq(nq_queue_publish(q, "tasks:x", big, n, &err), NQ_ELIMIT);
  cr_assert(strstr(err.msg, "tasks:x") && strstr(err.msg, "16777217") && strstr(err.msg, "16777216"), "%s", err.msg);
  const char *bodies[] = {"{}", big};
  size_t lens[] = {2, n};
  cr_assert_eq(nq_queue_publish_batch(q, "tasks:x", bodies, lens, 2, &err), NQ_ELIMIT);
  cr_assert(strstr(err.msg, "item 1 of 2"), "%s", err.msg);
  cr_assert_eq(nq_queue_publish(q, "tasks:x", big, n - 1, &err), 0, "one byte less is fine: %s", err.msg);
  nq_queue_close(q);
  free(big);
}

/* A PNG whose IHDR claims w x h (no pixel data needed: the size is checked first). */
static size_t png_header(unsigned char *b, uint32_t w, uint32_t h) {
  static const unsigned char sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  memcpy(b, sig, 8);
  unsigned char ihdr[17] = {'I', 'H', 'D', 'R', w >> 24, w >> 16, w >> 8, w, h >> 24, h >> 16, h >> 8, h, 8, 2, 0, 0, 0};
  b[8] = 0, b[9] = 0, b[10] = 0, b[11] = 13;
  memcpy(b + 12, ihdr, 17);
  uint32_t crc = 0xffffffffu; /* CRC-32 of type + data, as libpng checks it */
  for (int i = 0; i < 17; i++) {
    crc ^= ihdr[i];
    for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (0xedb88320u & (0u - (crc & 1)));
  }
  crc ^= 0xffffffffu;
  b[29] = crc >> 24, b[30] = crc >> 16, b[31] = crc >> 8, b[32] = crc;
  static const unsigned char idat[12] = {0, 0, 0, 0, 'I', 'D', 'A', 'T', 0x35, 0xaf, 0x06, 0x1e}; /* empty IDAT */
  memcpy(b + 33, idat, 12); /* the size is refused when the first IDAT is reached, before any pixel */
  return 45;
}

Test(security, limit_image_pixels) {
  unsigned char b[64];
  size_t n = png_header(b, 20000, 20000); /* 4e8 pixels > 178956970 */
  nq_media_image_t img;
  nq_err_t err = {0};
  cr_assert_eq(nq_media_image_decode(b, n, "huge.png", &img, &err), NQ_ELIMIT, "%s", err.msg);
  cr_assert(strstr(err.msg, "huge.png") && strstr(err.msg, "20000x20000") && strstr(err.msg, "178956970-pixel limit"),
            "%s", err.msg);
}

/* 16-bit mono WAV of `frames` zero samples at `rate` Hz. */
static unsigned char *wav(int rate, uint32_t frames, size_t *len) {
  uint32_t data = frames * 2;
  *len = 44 + data;
  unsigned char *b = calloc(1, *len);
  uint32_t v[] = {36 + data, 16, (uint32_t)rate, (uint32_t)rate * 2, data};
  memcpy(b, "RIFF", 4), memcpy(b + 4, &v[0], 4), memcpy(b + 8, "WAVEfmt ", 8), memcpy(b + 16, &v[1], 4);
  uint16_t fmt[2] = {1, 1};
  memcpy(b + 20, fmt, 4), memcpy(b + 24, &v[2], 4), memcpy(b + 28, &v[3], 4);
  uint16_t ba[2] = {2, 16};
  memcpy(b + 32, ba, 4), memcpy(b + 36, "data", 4), memcpy(b + 40, &v[4], 4);
  return b;
}

Test(security, limit_audio_seconds) {
  size_t len;
  nq_media_audio_t a;
  nq_err_t err = {0};
  /* 100 Hz: 3600 s is 360000 frames; one second more is refused, exactly the limit is fine */
  unsigned char *b = wav(100, 100 * (NQ_MEDIA_MAX_AUDIO_SECONDS + 1), &len);
  cr_assert_eq(nq_media_audio_decode(b, len, "long.wav", &a, &err), NQ_ELIMIT, "%s", err.msg);
  cr_assert(strstr(err.msg, "long.wav") && strstr(err.msg, "3600 seconds"), "%s", err.msg);
  free(b);
  b = wav(100, 100 * NQ_MEDIA_AUDIO_CLIPS, &len);
  cr_assert_eq(nq_media_audio_decode(b, len, "short.wav", &a, &err), 0, "%s", err.msg);
  nq_media_audio_deinit(&a);
  free(b);
}

/* Patches the sample count of every 'stts' entry of an MP4 to `count` (mov: stream nb_frames = the stts total). */
static int patch_stts(unsigned char *b, size_t len, uint32_t count) {
  int patched = 0;
  for (size_t i = 4; i + 16 <= len; i++) {
    if (memcmp(b + i, "stts", 4)) continue;
    uint32_t entries = (uint32_t)b[i + 8] << 24 | b[i + 9] << 16 | b[i + 10] << 8 | b[i + 11];
    for (uint32_t e = 0; e < entries && i + 12 + 8 * e + 8 <= len; e++) {
      unsigned char *c = b + i + 12 + 8 * e;
      uint32_t each = e == 0 ? count : 0;
      c[0] = each >> 24, c[1] = each >> 16, c[2] = each >> 8, c[3] = (unsigned char)each;
      patched = 1;
    }
  }
  return patched;
}

Test(security, limit_video_frames) {
  uint8_t rgb[3 * 16 * 16 * 3];
  for (size_t i = 0; i < sizeof rgb; i++) rgb[i] = (uint8_t)(i * 7);
  void *mp4 = NULL;
  size_t len = 0;
  nq_err_t err = {0};
  cr_assert_eq(nq_media_video_encode(rgb, 3, 16, 16, 4, NQ_MEDIA_VIDEO_MP4, &mp4, &len, NULL, &err), 0, "%s", err.msg);
  nq_media_video_info_t info;
  cr_assert_eq(nq_media_video_probe(mp4, len, "ok.mp4", &info, &err), 0, "%s", err.msg);
  cr_assert_eq(info.n_frames, 3);
  cr_assert(patch_stts(mp4, len, (uint32_t)NQ_MEDIA_MAX_VIDEO_FRAMES + 1), "no stts box in the encoded mp4");
  cr_assert_eq(nq_media_video_probe(mp4, len, "long.mp4", &info, &err), NQ_ELIMIT, "%s", err.msg);
  cr_assert(strstr(err.msg, "long.mp4") && strstr(err.msg, "1048577 frames") && strstr(err.msg, "1048576"), "%s",
            err.msg);
  free(mp4);
}

Test(security, limit_tar_member_size) {
  char dir[] = "/tmp/nq_sec_XXXXXX", path[256];
  cr_assert_not_null(mkdtemp(dir));
  snprintf(path, sizeof path, "%s/shard.tar", dir);
  struct archive *a = archive_write_new();
  archive_write_set_format_ustar(a);
  cr_assert_eq(archive_write_open_filename(a, path), ARCHIVE_OK);
  static char big[300];
  memset(big, 'x', sizeof big);
  const char *names[] = {"000000.txt", "000001.txt"};
  size_t sizes[] = {sizeof big, 10};
  for (int i = 0; i < 2; i++) {
    struct archive_entry *e = archive_entry_new();
    archive_entry_set_pathname(e, names[i]);
    archive_entry_set_size(e, (la_int64_t)sizes[i]);
    archive_entry_set_filetype(e, AE_IFREG);
    archive_entry_set_perm(e, 0644);
    archive_write_header(a, e);
    archive_write_data(a, big, sizes[i]);
    archive_entry_free(e);
  }
  archive_write_close(a);
  archive_write_free(a);

  nq_ds_spec_t spec = {.format = NQ_DS_WEBDATASET, .path = path, .max_record_bytes = 100};
  nq_dataset_t *ds = NULL;
  nq_err_t err = {0};
  cr_assert_eq(nq_ds_open(&spec, &ds, &err), 0, "%s", err.msg);
  json_t *rec = NULL;
  cr_assert_eq(nq_ds_next(ds, &rec, &err), NQ_ELIMIT, "%s", err.msg);
  cr_assert(strstr(err.msg, "000000.txt") && strstr(err.msg, "300 bytes") && strstr(err.msg, "100 bytes") &&
                strstr(err.msg, "max_record_bytes"),
            "%s", err.msg);
  cr_assert_eq(nq_ds_next(ds, &rec, &err), 1, "the next record still reads: %s", err.msg); /* only that one fails */
  cr_assert_str_eq(json_string_value(json_object_get(rec, "key")), "000001");
  json_decref(rec);
  nq_ds_free(ds);
  unlink(path);
  rmdir(dir);
}

#define STORIES NQ_SHARED_DIR "/models/stories260K/"

static int rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *ftw) { return remove(p); }

Test(security, limit_prompt_tokens) {
  if (access(STORIES "stories260K.bin", R_OK) != 0) cr_skip_test("no stories260K model");
  const nq_stage_t *stage = nq_stage_find("llm");
  cr_assert(stage, "llm stage not registered");
  nq_err_t err = {0};
  json_t *cfg = json_pack("{s:s,s:s,s:i}", "model", STORIES "stories260K.bin", "tokenizer", STORIES "tok512.bin",
                          "max_prompt_tokens", 12);
  void *state = NULL;
  cr_assert_eq(stage->init(&state, cfg, &err), 0, "%s", err.msg);
  char dir[] = "/tmp/nq_sec_XXXXXX";
  cr_assert_not_null(mkdtemp(dir));
  nq_store_t *st;
  cr_assert_eq(nq_store_new(&(nq_store_cfg_t){.file_root = dir}, &st, &err), 0, "%s", err.msg);
  /* task 0: short; task 1: long (same params: the same batch); task 2: short but its params lower the limit to 2 */
  const char *prompts[3] = {"Once upon a time", "Once upon a time there was a little girl who liked to play outside",
                            "Once upon a time"};
  json_t *params[3] = {json_pack("{s:i}", "max_new_tokens", 4), json_pack("{s:i}", "max_new_tokens", 4),
                       json_pack("{s:i,s:i}", "max_new_tokens", 4, "max_prompt_tokens", 2)};
  nq_envelope_t env[3];
  nq_task_ctx_t t[3];
  memset(t, 0, sizeof t);
  json_t *next = json_array();
  for (int i = 0; i < 3; i++) {
    char out[64], task[16];
    snprintf(out, sizeof out, "o/t%d/", i);
    snprintf(task, sizeof task, "t%d", i);
    json_t *in = json_pack("{s:s}", "prompt", prompts[i]);
    cr_assert_eq(nq_envelope_make(&env[i], "job", task, "llm", "cpu", 3, in, params[i], out, next, NULL, &err), 0, "%s",
                 err.msg);
    json_decref(in);
    t[i] = (nq_task_ctx_t){.env = &env[i], .store = st, .outputs = json_array(), .result = json_object()};
  }
  stage->run_batch(state, t, 3);
  cr_assert_eq(t[0].rc, 0, "short prompt: %s", t[0].err.msg);
  cr_assert(json_string_value(json_object_get(t[0].result, "text")), "short prompt generated text");
  cr_assert_eq(t[1].rc, NQ_ELIMIT, "long prompt: %s", t[1].err.msg);
  cr_assert(strstr(t[1].err.msg, "max_prompt_tokens = 12") && strstr(t[1].err.msg, "t1"), "%s", t[1].err.msg);
  cr_assert(t[1].err.flags & NQ_ERR_FATAL);
  cr_assert_eq(t[2].rc, NQ_ELIMIT, "params lower the limit: %s", t[2].err.msg);
  cr_assert(strstr(t[2].err.msg, "max_prompt_tokens = 2"), "%s", t[2].err.msg);
  for (int i = 0; i < 3; i++) {
    json_decref(t[i].outputs), json_decref(t[i].result), json_decref(params[i]);
    nq_envelope_deinit(&env[i]);
  }
  json_decref(next);
  stage->fini(state);
  json_decref(cfg);
  nq_store_free(st);
  nftw(dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

/* ---- regressions found by fuzzing (tests/fuzz) ------------------------------------------------------------------- */

/* fuzz_sp_model: a 2-piece model kept the default bos 1 / eos 2, so encode emitted id 2 outside the vocabulary. */
Test(security, fuzz_sp_special_ids_outside_vocab) {
  static const char b64[] = "Cg4KBTx1bms+FQAAAQAAAQAAOHwA5QMKDAoD4paBFQAAgL8YCwAAAAAAAAAAAMAYAQoKCgAAGAIKLQxSAAAAAAAAAMIY"
                            "AQoKCgFlFQAAQMCYARICGAI=";
  unsigned char buf[128];
  size_t n = 0;
  unsigned acc = 0;
  int bits = 0;
  for (const char *c = b64; *c && *c != '='; c++) {
    const char *tab = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    acc = acc << 6 | (unsigned)(strchr(tab, *c) - tab);
    if ((bits += 6) >= 8) buf[n++] = (unsigned char)(acc >> (bits -= 8));
  }
  char path[] = "/tmp/nq_sec_sp_XXXXXX";
  int fd = mkstemp(path);
  cr_assert_geq(fd, 0);
  cr_assert_eq(write(fd, buf, n), (ssize_t)n);
  close(fd);
  nq_sp_tokenizer_t *t = NULL;
  nq_err_t err = {0};
  cr_assert_eq(nq_sp_load_model(path, &t, &err), NQ_EFORMAT, "%s", err.msg);
  cr_assert(strstr(err.msg, path) && strstr(err.msg, "eos 2") && strstr(err.msg, "2 pieces"), "%s", err.msg);
  unlink(path);
}

/* fuzz_audio: a WAV at 41521 Hz made the 16 kHz resampler allocate a 16000 x 41553 kernel (5.3 GB). */
Test(security, fuzz_resample_kernel_is_bounded) {
  float in[64] = {0};
  double out[256]; /* 8 kHz -> 16 kHz doubles the length */
  nq_err_t err = {0};
  int64_t n = nq_media_resample_length(64, 41521, 16000);
  cr_assert_eq(nq_media_resample(in, 64, 41521, 16000, 0, n, out, &err), NQ_ELIMIT, "%s", err.msg);
  cr_assert(strstr(err.msg, "41521") && strstr(err.msg, "16777216"), "%s", err.msg);
  cr_assert(nq_err_is_fatal(&err));
  /* real rates are unaffected */
  int rates[] = {44100, 48000, 22050, 11025, 8000, 44056};
  for (size_t i = 0; i < sizeof rates / sizeof rates[0]; i++) {
    n = nq_media_resample_length(64, rates[i], 16000);
    cr_assert_eq(nq_media_resample(in, 64, rates[i], 16000, 0, n, out, &err), 0, "%d Hz: %s", rates[i], err.msg);
  }
}

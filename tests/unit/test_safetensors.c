/* tests/unit/test_safetensors.c — writer/reader round trip, sharded index, hostile headers; also reads a
 * real file from ../shared (TAESD) to check the reader against a file we did not write. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "compute/io/safetensors.h"

static char dir[256];
static void setup(void) {
  snprintf(dir, sizeof dir, "/tmp/nq_st_XXXXXX");
  cr_assert(mkdtemp(dir));
}
static void teardown(void) {
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  cr_assert_eq(system(cmd), 0);
}

static void write_raw(const char *path, const char *header, const void *data, size_t dlen) {
  FILE *f = fopen(path, "wb");
  cr_assert(f);
  unsigned long long n = strlen(header);
  unsigned char len8[8];
  for (int i = 0; i < 8; i++) len8[i] = (unsigned char)(n >> (8 * i));
  fwrite(len8, 1, 8, f);
  fwrite(header, 1, n, f);
  if (dlen) fwrite(data, 1, dlen, f);
  fclose(f);
}

TestSuite(safetensors, .init = setup, .fini = teardown);

Test(safetensors, roundtrip) {
  char p[300];
  snprintf(p, sizeof p, "%s/a.safetensors", dir);
  nq_err_t err = {0};
  nq_st_writer_t *w = nq_st_writer_new();
  float x[6] = {1, 2, 3, 4, 5, 6};
  int64_t ids[3] = {7, -1, 1LL << 40};
  cr_assert_eq(nq_st_writer_add_f32(w, "x", 2, (int64_t[]){2, 3}, x, &err), 0);
  cr_assert_eq(nq_st_writer_add(w, "ids", NQ_DT_I64, 1, (int64_t[]){3}, ids, &err), 0);
  cr_assert_eq(nq_st_writer_add(w, "empty", NQ_DT_F32, 2, (int64_t[]){0, 4}, NULL, &err), 0);
  cr_assert_eq(nq_st_writer_add(w, "x", NQ_DT_F32, 1, (int64_t[]){1}, x, &err), NQ_EEXIST);
  cr_assert_eq(nq_st_writer_set_metadata(w, "format", "pt", &err), 0);
  cr_assert_eq(nq_st_writer_save(w, p, &err), 0, "%s", err.msg);
  nq_st_writer_free(w);
  nq_st_file_t *f;
  cr_assert_eq(nq_st_open(p, &f, &err), 0, "%s", err.msg);
  cr_assert_eq(nq_st_count(f), 3);
  const nq_st_tensor_t *t;
  cr_assert_eq(nq_st_expect(f, "x", NQ_DT_F32, 2, (int64_t[]){2, 3}, &t, &err), 0);
  cr_assert_eq(memcmp(t->data, x, sizeof x), 0);
  cr_assert_eq(((const int64_t *)nq_st_find(f, "ids")->data)[2], 1LL << 40);
  cr_assert_str_eq(nq_st_metadata(f, "format"), "pt");
  cr_assert_eq(nq_st_expect(f, "x", NQ_DT_F32, 2, (int64_t[]){3, 2}, &t, &err), NQ_ESHAPE);
  cr_assert(strstr(err.msg, "'x'") && strstr(err.msg, "[2,3]") && strstr(err.msg, "[3,2]"), "%s", err.msg);
  cr_assert_eq(nq_st_expect(f, "nope", NQ_DT_F32, 1, (int64_t[]){1}, &t, &err), NQ_ENOENT);
  cr_assert(strstr(err.msg, "'nope'"));
  nq_st_close(f);
}

Test(safetensors, sharded_index) {
  char p[300];
  nq_err_t err = {0};
  float a = 1.5f, b = 2.5f;
  for (int s = 0; s < 2; s++) {
    snprintf(p, sizeof p, "%s/model-%05d-of-00002.safetensors", dir, s + 1);
    nq_st_writer_t *w = nq_st_writer_new();
    nq_st_writer_add_f32(w, s ? "b" : "a", 1, (int64_t[]){1}, s ? &b : &a, &err);
    cr_assert_eq(nq_st_writer_save(w, p, &err), 0);
    nq_st_writer_free(w);
  }
  snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir);
  FILE *fi = fopen(p, "w");
  fprintf(fi, "{\"metadata\":{},\"weight_map\":{\"a\":\"model-00001-of-00002.safetensors\",\"b\":\"model-00002-of-00002.safetensors\"}}");
  fclose(fi);
  nq_st_file_t *f;
  cr_assert_eq(nq_st_open(p, &f, &err), 0, "%s", err.msg);
  cr_assert_eq(nq_st_count(f), 2);
  cr_assert_float_eq(*(const float *)nq_st_find(f, "b")->data, 2.5f, 0);
  nq_st_close(f);
  fi = fopen(p, "w");
  fprintf(fi, "{\"weight_map\":{\"a\":\"../../etc/passwd\"}}");
  fclose(fi);
  cr_assert_neq(nq_st_open(p, &f, &err), 0);
  cr_assert(strstr(err.msg, "shard"), "%s", err.msg);
}

static void expect_refused(const char *header, size_t dlen, const char *needle) {
  char p[300];
  snprintf(p, sizeof p, "%s/h.safetensors", dir);
  char *data = calloc(1, dlen + 1);
  write_raw(p, header, data, dlen);
  free(data);
  nq_st_file_t *f = NULL;
  nq_err_t err = {0};
  cr_assert_neq(nq_st_open(p, &f, &err), 0, "accepted: %s", header);
  cr_assert_null(f);
  cr_assert(strstr(err.msg, needle), "'%s' lacks '%s'", err.msg, needle);
  cr_assert(strstr(err.msg, "h.safetensors"), "error does not name the file: %s", err.msg);
}

Test(safetensors, hostile_headers) {
  expect_refused("{\"x\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8, "outside the data section");
  expect_refused("{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"y\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                 16, "overlap");
  expect_refused("{\"x\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904,4611686018427387904],\"data_offsets\":[0,8]}}", 8, "absurd");
  expect_refused("{\"x\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, "bytes for shape");
  expect_refused("{\"x\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8, "bad dim");
  expect_refused("{\"x\":{\"dtype\":\"Q4\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "unsupported dtype");
  expect_refused("{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8, "outside");
  expect_refused("{\"x\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8, "malformed");
  expect_refused("{\"x\": [1,2", 8, "bad header JSON");
  expect_refused("[1,2,3]", 0, "not a JSON object");
  expect_refused("{\"x\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4, "dims");
  /* header length larger than the file */
  char p[300];
  snprintf(p, sizeof p, "%s/h2.safetensors", dir);
  FILE *f = fopen(p, "wb");
  unsigned char len8[8] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f};
  fwrite(len8, 1, 8, f);
  fwrite("{}", 1, 2, f);
  fclose(f);
  nq_st_file_t *sf = NULL;
  nq_err_t err = {0};
  cr_assert_eq(nq_st_open(p, &sf, &err), NQ_EFORMAT);
  cr_assert(strstr(err.msg, "header length"), "%s", err.msg);
  /* a 3-byte file */
  f = fopen(p, "wb");
  fwrite("abc", 1, 3, f);
  fclose(f);
  cr_assert_eq(nq_st_open(p, &sf, &err), NQ_EFORMAT);
  cr_assert_eq(nq_st_open("/nonexistent/x.safetensors", &sf, &err), NQ_ENOENT);
}

Test(safetensors, reads_real_taesd_file) {
  nq_st_file_t *f = NULL;
  nq_err_t err = {0};
  cr_assert_eq(nq_st_open(NQ_SHARED_DIR "/models/taesd/taesd_decoder.safetensors", &f, &err), 0, "%s", err.msg);
  cr_assert_gt(nq_st_count(f), 10);
  for (size_t i = 0; i < nq_st_count(f); i++) {
    const nq_st_tensor_t *t = nq_st_get(f, i);
    cr_assert_eq((size_t)nq_st_numel(t) * nq_dtype_size(t->dtype), t->nbytes);
  }
  nq_st_close(f);
}

Test(dtype, conversions) {
  cr_assert_float_eq(nq_f16_to_f32(0x3c00), 1.0f, 0);
  cr_assert_float_eq(nq_f16_to_f32(0xc000), -2.0f, 0);
  cr_assert_float_eq(nq_f16_to_f32(0x0001), 5.960464477539063e-08f, 0); /* smallest subnormal */
  cr_assert_float_eq(nq_f16_to_f32(0x7bff), 65504.0f, 0);
  cr_assert_eq(nq_f32_to_f16(65504.0f), 0x7bff);
  cr_assert_eq(nq_f32_to_f16(1e6f), 0x7c00);
  cr_assert_eq(nq_f32_to_f16(5.960464477539063e-08f), 0x0001);
  cr_assert_eq(nq_f32_to_bf16(1.0f), 0x3f80);
  cr_assert_float_eq(nq_bf16_to_f32(0x4049), 3.140625f, 0);
  for (unsigned h = 0; h < 0x7c00; h += 7) cr_assert_eq(nq_f32_to_f16(nq_f16_to_f32((uint16_t)h)), h);
}

/* tests/unit/test_pickle.c — the safe PyTorch checkpoint reader (compute/io/pickle.h).
 *
 * Golden: every ../shared/golden/pickle case through the library (pickle-load: equal to expected.safetensors
 * byte for byte; pickle-refuse: refused with the global named, nothing created in the working directory).
 * Hostile input: hand-built pickles and zips (refused globals, bad memo indexes, huge lengths, deep nesting,
 * views larger than their storage, truncation and byte-flip sweeps over the golden files). */
#include <criterion/criterion.h>
#include <dirent.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "compute/io/pickle.h"
#include "compute/io/safetensors.h"

#ifndef NQ_SHARED_DIR
#define NQ_SHARED_DIR "../shared"
#endif
#define GOLDEN NQ_SHARED_DIR "/golden/pickle"

/* ---- byte builder ---- */

typedef struct bb {
  unsigned char *b;
  size_t n, cap;
} bb_t;

static void put(bb_t *o, const void *p, size_t n) {
  if (o->n + n > o->cap) {
    o->cap = (o->n + n) * 2 + 64;
    o->b = realloc(o->b, o->cap);
    cr_assert(o->b);
  }
  memcpy(o->b + o->n, p, n);
  o->n += n;
}
static void put1(bb_t *o, unsigned v) {
  unsigned char c = (unsigned char)v;
  put(o, &c, 1);
}
static void putle(bb_t *o, uint64_t v, int k) {
  for (int i = 0; i < k; i++) put1(o, (unsigned)(v >> (8 * i)) & 0xff);
}
static void puts_(bb_t *o, const char *s) { put(o, s, strlen(s)); }

/* pickle pieces (protocol 2, as torch.save writes) */
static void p_str(bb_t *o, const char *s) {
  put1(o, 'X');
  putle(o, strlen(s), 4);
  puts_(o, s);
}
static void p_global(bb_t *o, const char *mod, const char *name) {
  put1(o, 'c');
  puts_(o, mod);
  put1(o, '\n');
  puts_(o, name);
  put1(o, '\n');
}
static void p_int(bb_t *o, int64_t v) {
  put1(o, 0x8a); /* LONG1, 8 bytes */
  put1(o, 8);
  putle(o, (uint64_t)v, 8);
}
static void p_ints(bb_t *o, int n, const int64_t *v) {
  put1(o, '(');
  for (int i = 0; i < n; i++) p_int(o, v[i]);
  put1(o, 't');
}
/* _rebuild_tensor_v2(('storage', torch.<cls>, key, 'cpu', numel), offset, size, stride, False, {}) */
static void p_tensor(bb_t *o, const char *cls, const char *key, int64_t numel, int64_t off, int nd, const int64_t *shape,
                     const int64_t *stride) {
  p_global(o, "torch._utils", "_rebuild_tensor_v2");
  put1(o, '(');
  put1(o, '(');
  p_str(o, "storage");
  p_global(o, "torch", cls);
  p_str(o, key);
  p_str(o, "cpu");
  p_int(o, numel);
  put1(o, 't');
  put1(o, 'Q');
  p_int(o, off);
  p_ints(o, nd, shape);
  p_ints(o, nd, stride);
  put1(o, 0x89);
  put1(o, '}');
  put1(o, 't');
  put1(o, 'R');
}
/* {"w": tensor} */
static bb_t pkl_one(const char *cls, int64_t numel, int64_t off, int nd, const int64_t *shape, const int64_t *stride) {
  bb_t o = {0};
  put1(&o, 0x80);
  put1(&o, 2);
  put1(&o, '}');
  p_str(&o, "w");
  p_tensor(&o, cls, "0", numel, off, nd, shape, stride);
  put1(&o, 's');
  put1(&o, '.');
  return o;
}

/* a zip of stored (or "compressed"-flagged) members, as torch's writer lays them out */
typedef struct zent {
  const char *name;
  const void *data;
  size_t n;
} zent_t;

/* zip64: every size/offset in the central directory is 0xFFFFFFFF with the real value in a zip64 extra field,
 * and the end record points to a zip64 end record through its locator (as big torch checkpoints are written). */
static bb_t make_zip_ex(const zent_t *e, int ne, unsigned method, int zip64) {
  bb_t o = {0};
  uint64_t lho[16];
  cr_assert(ne <= 16);
  for (int i = 0; i < ne; i++) {
    lho[i] = o.n;
    putle(&o, 0x04034b50, 4);
    putle(&o, 20, 2), putle(&o, 0, 2), putle(&o, method, 2), putle(&o, 0, 4), putle(&o, 0, 4);
    putle(&o, e[i].n, 4), putle(&o, e[i].n, 4), putle(&o, strlen(e[i].name), 2), putle(&o, zip64 ? 12 : 0, 2);
    puts_(&o, e[i].name);
    if (zip64) putle(&o, 0xfbfb, 2), putle(&o, 8, 2), putle(&o, 0, 8); /* padding extra, like torch's alignment */
    put(&o, e[i].data, e[i].n);
  }
  size_t cd = o.n;
  uint64_t big = 0xFFFFFFFFu;
  for (int i = 0; i < ne; i++) {
    putle(&o, 0x02014b50, 4);
    putle(&o, 45, 2), putle(&o, 45, 2), putle(&o, 0, 2), putle(&o, method, 2), putle(&o, 0, 4), putle(&o, 0, 4);
    putle(&o, zip64 ? big : e[i].n, 4), putle(&o, zip64 ? big : e[i].n, 4), putle(&o, strlen(e[i].name), 2);
    putle(&o, zip64 ? 28 : 0, 2), putle(&o, 0, 2), putle(&o, 0, 2), putle(&o, 0, 2), putle(&o, 0, 4), putle(&o, zip64 ? big : lho[i], 4);
    puts_(&o, e[i].name);
    if (zip64) putle(&o, 1, 2), putle(&o, 24, 2), putle(&o, e[i].n, 8), putle(&o, e[i].n, 8), putle(&o, lho[i], 8);
  }
  size_t cdsize = o.n - cd;
  if (zip64) {
    size_t z64 = o.n;
    putle(&o, 0x06064b50, 4), putle(&o, 44, 8), putle(&o, 45, 2), putle(&o, 45, 2), putle(&o, 0, 4), putle(&o, 0, 4);
    putle(&o, (uint64_t)ne, 8), putle(&o, (uint64_t)ne, 8), putle(&o, cdsize, 8), putle(&o, cd, 8);
    putle(&o, 0x07064b50, 4), putle(&o, 0, 4), putle(&o, z64, 8), putle(&o, 1, 4);
  }
  putle(&o, 0x06054b50, 4);
  putle(&o, 0, 2), putle(&o, 0, 2), putle(&o, zip64 ? 0xFFFF : (uint64_t)ne, 2), putle(&o, zip64 ? 0xFFFF : (uint64_t)ne, 2);
  putle(&o, zip64 ? big : cdsize, 4), putle(&o, zip64 ? big : cd, 4), putle(&o, 0, 2);
  return o;
}
static bb_t make_zip(const zent_t *e, int ne, unsigned method) { return make_zip_ex(e, ne, method, 0); }

static const float k_floats[8] = {0, 1, 2, 3, 4, 5, 6, 7};

/* torch-style zip: <top>/data.pkl + <top>/data/0 (nbytes of k_floats) + version */
static bb_t ckpt_zip(const char *top, const bb_t *pkl, size_t storage_bytes, unsigned method) {
  char n1[128], n2[128], n3[128];
  snprintf(n1, sizeof n1, "%s/data.pkl", top);
  snprintf(n2, sizeof n2, "%s/data/0", top);
  snprintf(n3, sizeof n3, "%s/version", top);
  zent_t e[3] = {{n1, pkl->b, pkl->n}, {n2, k_floats, storage_bytes}, {n3, "3\n", 2}};
  return make_zip(e, 3, method);
}

/* The ckpt borrows the zip image: it lives in *z until the caller frees it (after nq_ckpt_close). */
static int open_zip_pkl(const bb_t *pkl, size_t storage_bytes, bb_t *z, nq_ckpt_t **ck, nq_err_t *err) {
  free(z->b);
  *z = ckpt_zip("archive", pkl, storage_bytes, 0);
  return nq_ckpt_open_mem(z->b, z->n, "test.pt", NULL, ck, err);
}

/* ---- golden ---- */

static char *read_file(const char *path, size_t *n) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long sz = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *b = malloc((size_t)sz + 1);
  cr_assert(b);
  cr_assert_eq(fread(b, 1, (size_t)sz, f), (size_t)sz);
  fclose(f);
  *n = (size_t)sz;
  return b;
}

static void check_equal(const nq_ckpt_t *ck, const char *expected_path) {
  nq_err_t err = {0};
  nq_st_file_t *ex;
  cr_assert_eq(nq_st_open(expected_path, &ex, &err), 0, "%s", err.msg);
  cr_assert_eq(nq_ckpt_count(ck), nq_st_count(ex), "%s: %zu tensors, expected %zu", expected_path, nq_ckpt_count(ck), nq_st_count(ex));
  for (size_t i = 0; i < nq_st_count(ex); i++) {
    const nq_st_tensor_t *e = nq_st_get(ex, i);
    const nq_ckpt_tensor_t *t = nq_ckpt_find(ck, e->name);
    cr_assert(t, "%s: tensor '%s' missing", expected_path, e->name);
    cr_assert_eq(t->dtype, e->dtype, "%s: '%s' dtype", expected_path, e->name);
    cr_assert_eq(t->ndim, e->ndim, "%s: '%s' ndim", expected_path, e->name);
    for (int d = 0; d < e->ndim; d++) cr_assert_eq(t->shape[d], e->shape[d], "%s: '%s' dim %d", expected_path, e->name, d);
    cr_assert_eq(t->nbytes, e->nbytes);
    cr_assert(t->nbytes == 0 || memcmp(t->data, e->data, e->nbytes) == 0, "%s: '%s' bytes differ", expected_path, e->name);
  }
  nq_st_close(ex);
}

Test(pickle, golden_cases) {
  DIR *d = opendir(GOLDEN);
  if (!d) cr_skip_test("no %s", GOLDEN);
  struct dirent *de;
  int loaded = 0, refused = 0;
  char cwd[1024];
  cr_assert(getcwd(cwd, sizeof cwd));
  char tmp[] = "/tmp/nq_pickle_test_XXXXXX";
  cr_assert(mkdtemp(tmp));
  cr_assert_eq(chdir(tmp), 0); /* a refused pickle must not create anything here */
  while ((de = readdir(d))) {
    if (de->d_name[0] == '.') continue;
    char cj[1024], file[1200], exp[1200];
    snprintf(cj, sizeof cj, "%s/%s/case.json", GOLDEN, de->d_name);
    json_t *c = json_load_file(cj, 0, NULL);
    if (!c) continue;
    const char *kind = json_string_value(json_object_get(c, "kind"));
    snprintf(file, sizeof file, "%s/%s/%s", GOLDEN, de->d_name, json_string_value(json_object_get(c, "file")));
    nq_err_t err = {0};
    nq_ckpt_t *ck = NULL;
    int rc = nq_ckpt_open(file, &ck, &err);
    if (kind && !strcmp(kind, "pickle-load")) {
      cr_assert_eq(rc, 0, "%s: %s", de->d_name, err.msg);
      const char *fmt = json_string_value(json_object_get(c, "format"));
      if (fmt) cr_assert_eq(nq_ckpt_format(ck), !strcmp(fmt, "zip") ? NQ_CKPT_TORCH_ZIP : NQ_CKPT_TORCH_LEGACY, "%s: format", de->d_name);
      snprintf(exp, sizeof exp, "%s/%s/%s", GOLDEN, de->d_name, json_string_value(json_object_get(c, "expected")));
      check_equal(ck, exp);
      nq_ckpt_close(ck);
      loaded++;
    } else if (kind && !strcmp(kind, "pickle-refuse")) {
      cr_assert_lt(rc, 0, "%s: loaded a hostile file", de->d_name);
      cr_assert_null(ck);
      cr_assert_eq(rc, NQ_EUNSUPPORTED, "%s: %s", de->d_name, err.msg);
      cr_assert(strstr(err.msg, "refused global"), "%s: %s", de->d_name, err.msg);
      const char *rule = json_string_value(json_object_get(c, "rule"));
      const char *lp = rule ? strchr(rule, '(') : NULL, *rp = lp ? strchr(lp, ')') : NULL;
      if (lp && rp) { /* the rule names the global in parentheses */
        char g[128];
        snprintf(g, sizeof g, "'%.*s'", (int)(rp - lp - 1), lp + 1);
        cr_assert(strstr(err.msg, g), "%s: message does not name %s: %s", de->d_name, g, err.msg);
      }
      cr_assert_neq(access("nq_pickle_public_pwned", F_OK), 0, "%s: the payload ran", de->d_name);
      refused++;
    }
    json_decref(c);
  }
  closedir(d);
  cr_assert_eq(chdir(cwd), 0);
  rmdir(tmp);
  cr_assert_geq(loaded, 4);
  cr_assert_geq(refused, 1);
}

Test(pickle, nested_values_reported) {
  nq_err_t err = {0};
  nq_ckpt_t *ck;
  if (access(GOLDEN "/nested-checkpoint/checkpoint.pt", R_OK)) cr_skip_test("no golden");
  cr_assert_eq(nq_ckpt_open(GOLDEN "/nested-checkpoint/checkpoint.pt", &ck, &err), 0, "%s", err.msg);
  int seen = 0;
  for (size_t i = 0; i < nq_ckpt_value_count(ck); i++) {
    const char *n = nq_ckpt_value_name(ck, i), *r = nq_ckpt_value_repr(ck, i);
    if (!strcmp(n, "epoch")) seen += !strcmp(r, "3");
    if (!strcmp(n, "name")) seen += !strcmp(r, "'stage_2'");
    if (!strcmp(n, "lr")) seen += !strcmp(r, "0.0005");
  }
  cr_assert_eq(seen, 3);
  int64_t shp[2] = {3, 2}, bad[2] = {2, 3};
  cr_assert_eq(nq_ckpt_expect(ck, "model.a.weight", NQ_DT_F32, 2, shp, NULL, &err), 0, "%s", err.msg);
  cr_assert_eq(nq_ckpt_expect(ck, "model.a.weight", NQ_DT_F32, 2, bad, NULL, &err), NQ_ESHAPE);
  cr_assert_eq(nq_ckpt_expect(ck, "model.nope", NQ_DT_F32, 2, shp, NULL, &err), NQ_ENOENT);
  nq_ckpt_close(ck);
}

Test(pickle, safetensors_through_ckpt) {
  nq_err_t err = {0};
  nq_ckpt_t *ck;
  if (access(GOLDEN "/state-dict-dtypes/expected.safetensors", R_OK)) cr_skip_test("no golden");
  cr_assert_eq(nq_ckpt_open(GOLDEN "/state-dict-dtypes/expected.safetensors", &ck, &err), 0, "%s", err.msg);
  cr_assert_eq(nq_ckpt_format(ck), NQ_CKPT_SAFETENSORS);
  cr_assert_eq(nq_ckpt_count(ck), 9);
  cr_assert(nq_ckpt_find(ck, "lora.weight"));
  nq_ckpt_close(ck);
}

Test(pickle, sharded_bin_index) {
  if (access(GOLDEN "/legacy-format/checkpoint.pt", R_OK)) cr_skip_test("no golden");
  char dir[] = "/tmp/nq_pickle_shards_XXXXXX", p[256];
  cr_assert(mkdtemp(dir));
  snprintf(p, sizeof p, "%s/a.bin", dir);
  cr_assert_eq(symlink(GOLDEN "/legacy-format/checkpoint.pt", p), 0);
  snprintf(p, sizeof p, "%s/b.bin", dir);
  cr_assert_eq(symlink(GOLDEN "/shared-storage-views/checkpoint.pt", p), 0);
  snprintf(p, sizeof p, "%s/pytorch_model.bin.index.json", dir);
  FILE *f = fopen(p, "w");
  fprintf(f, "{\"metadata\": {}, \"weight_map\": {\"w\": \"a.bin\", \"h\": \"a.bin\", \"full\": \"b.bin\", \"rows\": \"b.bin\", "
             "\"col\": \"b.bin\", \"t\": \"b.bin\"}}");
  fclose(f);
  nq_err_t err = {0};
  nq_ckpt_t *ck;
  cr_assert_eq(nq_ckpt_open(p, &ck, &err), 0, "%s", err.msg);
  cr_assert_eq(nq_ckpt_format(ck), NQ_CKPT_TORCH_SHARDED);
  cr_assert_eq(nq_ckpt_count(ck), 6);
  const nq_ckpt_tensor_t *t = nq_ckpt_find(ck, "t");
  cr_assert(t && t->ndim == 2 && t->shape[0] == 8 && t->shape[1] == 6);
  nq_ckpt_close(ck);
  cr_assert_eq(nq_ckpt_open(dir, &ck, &err), 0, "%s", err.msg); /* the directory finds its index */
  cr_assert_eq(nq_ckpt_count(ck), 6);
  nq_ckpt_close(ck);
  /* an index naming a tensor its shard lacks */
  f = fopen(p, "w");
  fprintf(f, "{\"weight_map\": {\"w\": \"a.bin\", \"ghost\": \"a.bin\"}}");
  fclose(f);
  cr_assert_lt(nq_ckpt_open(p, &ck, &err), 0);
  cr_assert(strstr(err.msg, "ghost"), "%s", err.msg);
  char q[300];
  snprintf(q, sizeof q, "%s/a.bin", dir), unlink(q);
  snprintf(q, sizeof q, "%s/b.bin", dir), unlink(q);
  unlink(p);
  rmdir(dir);
}

/* ---- hand-built checkpoints ---- */

Test(pickle, handmade_zip_views) {
  nq_err_t err = {0};
  nq_ckpt_t *ck;
  /* contiguous [2,3] at offset 1 and a transposed [3,2] view; top folder name is arbitrary */
  int64_t s23[2] = {2, 3}, st23[2] = {3, 1}, s32[2] = {3, 2}, st32[2] = {1, 3};
  bb_t o = {0};
  put1(&o, 0x80), put1(&o, 2), put1(&o, '}');
  put1(&o, '(');
  p_str(&o, "a");
  p_tensor(&o, "FloatStorage", "0", 8, 1, 2, s23, st23);
  p_str(&o, "layers");
  put1(&o, ']'), put1(&o, '(');
  p_tensor(&o, "FloatStorage", "0", 8, 0, 2, s32, st32);
  put1(&o, 'e'); /* APPENDS: layers = [view] */
  put1(&o, 'u'), put1(&o, '.');
  bb_t z = ckpt_zip("some-other_Name", &o, sizeof k_floats, 0);
  cr_assert_eq(nq_ckpt_open_mem(z.b, z.n, "views.pt", NULL, &ck, &err), 0, "%s", err.msg);
  const nq_ckpt_tensor_t *a = nq_ckpt_find(ck, "a"), *t = nq_ckpt_find(ck, "layers.0");
  cr_assert(a && t);
  const float *fa = a->data, *ft = t->data;
  float wa[6] = {1, 2, 3, 4, 5, 6}, wt[6] = {0, 3, 1, 4, 2, 5}; /* torch semantics of offset/stride, by hand */
  for (int i = 0; i < 6; i++) {
    cr_assert_eq(fa[i], wa[i]);
    cr_assert_eq(ft[i], wt[i], "transpose element %d", i);
  }
  nq_ckpt_close(ck);
  free(z.b);
  free(o.b);
}

Test(pickle, zip64_layout) {
  int64_t sh[2] = {2, 4}, st[2] = {4, 1};
  bb_t o = pkl_one("FloatStorage", 8, 0, 2, sh, st);
  zent_t e[3] = {{"big/data.pkl", o.b, o.n}, {"big/data/0", k_floats, sizeof k_floats}, {"big/version", "3\n", 2}};
  bb_t z = make_zip_ex(e, 3, 0, 1);
  nq_err_t err = {0};
  nq_ckpt_t *ck = NULL;
  cr_assert_eq(nq_ckpt_open_mem(z.b, z.n, "z64.pt", NULL, &ck, &err), 0, "%s", err.msg);
  const nq_ckpt_tensor_t *t = nq_ckpt_find(ck, "w");
  cr_assert(t && t->nbytes == sizeof k_floats && !memcmp(t->data, k_floats, sizeof k_floats));
  nq_ckpt_close(ck);
  /* the zip64 end record pointing outside the file */
  z.b[z.n - 22 - 20 + 8] ^= 0x40;
  cr_assert_lt(nq_ckpt_open_mem(z.b, z.n, "z64bad.pt", NULL, &ck, &err), 0);
  free(z.b);
  free(o.b);
}

Test(pickle, storage_smaller_than_declared) {
  int64_t sh[1] = {6}, st[1] = {1};
  bb_t o = pkl_one("FloatStorage", 6, 0, 1, sh, st);
  nq_err_t err = {0};
  nq_ckpt_t *ck = NULL;
  bb_t z = {0};
  cr_assert_lt(open_zip_pkl(&o, 5 * sizeof(float), &z, &ck, &err), 0);
  cr_assert(strstr(err.msg, "storage '0'"), "%s", err.msg);
  free(o.b);
  free(z.b);
}

Test(pickle, view_outside_storage) {
  int64_t sh[2] = {3, 3}, st[2] = {3, 1};
  bb_t o = pkl_one("FloatStorage", 6, 0, 2, sh, st);
  nq_err_t err = {0};
  nq_ckpt_t *ck = NULL;
  bb_t z = {0};
  cr_assert_lt(open_zip_pkl(&o, 6 * sizeof(float), &z, &ck, &err), 0);
  cr_assert(strstr(err.msg, "'w'") && strstr(err.msg, "reaches element"), "%s", err.msg);
  free(o.b);
  /* offset past the end */
  int64_t sh1[1] = {2}, st1[1] = {1};
  o = pkl_one("FloatStorage", 6, 5, 1, sh1, st1);
  cr_assert_lt(open_zip_pkl(&o, 6 * sizeof(float), &z, &ck, &err), 0);
  free(o.b);
  free(z.b);
}

Test(pickle, overlapping_view_expansion_bounded) {
  int64_t sh[2] = {1 << 20, 1 << 20}, st[2] = {0, 0}; /* 2^40 floats from a 1-element storage */
  bb_t o = pkl_one("FloatStorage", 1, 0, 2, sh, st);
  nq_err_t err = {0};
  nq_ckpt_t *ck = NULL;
  bb_t z = {0};
  cr_assert_eq(open_zip_pkl(&o, sizeof(float), &z, &ck, &err), NQ_ELIMIT, "%s", err.msg);
  free(o.b);
  /* a small broadcast is fine and materialised */
  int64_t sh2[2] = {2, 3}, st2[2] = {0, 1};
  o = pkl_one("FloatStorage", 4, 1, 2, sh2, st2);
  cr_assert_eq(open_zip_pkl(&o, 4 * sizeof(float), &z, &ck, &err), 0, "%s", err.msg);
  const float *f = nq_ckpt_find(ck, "w")->data;
  float want[6] = {1, 2, 3, 1, 2, 3};
  for (int i = 0; i < 6; i++) cr_assert_eq(f[i], want[i]);
  nq_ckpt_close(ck);
  free(o.b);
  free(z.b);
}

Test(pickle, missing_and_compressed_members) {
  int64_t sh[1] = {2}, st[1] = {1};
  bb_t o = pkl_one("FloatStorage", 2, 0, 1, sh, st);
  nq_err_t err = {0};
  nq_ckpt_t *ck = NULL;
  char n1[] = "archive/data.pkl";
  zent_t e[1] = {{n1, o.b, o.n}};
  bb_t z = make_zip(e, 1, 0);
  cr_assert_lt(nq_ckpt_open_mem(z.b, z.n, "nostorage.pt", NULL, &ck, &err), 0);
  cr_assert(strstr(err.msg, "missing"), "%s", err.msg);
  free(z.b);
  z = ckpt_zip("archive", &o, 8, 8);
  cr_assert_eq(nq_ckpt_open_mem(z.b, z.n, "deflated.pt", NULL, &ck, &err), NQ_EUNSUPPORTED, "%s", err.msg);
  free(z.b);
  zent_t e2[1] = {{"x/other.txt", "hi", 2}};
  z = make_zip(e2, 1, 0);
  cr_assert_lt(nq_ckpt_open_mem(z.b, z.n, "notorch.zip", NULL, &ck, &err), 0);
  cr_assert(strstr(err.msg, "data.pkl"), "%s", err.msg);
  free(z.b);
  free(o.b);
}

Test(pickle, refused_global_inside_zip) {
  bb_t o = {0};
  put1(&o, 0x80), put1(&o, 2);
  p_global(&o, "os", "system");
  p_str(&o, "touch nq_pickle_public_pwned");
  put1(&o, 0x85), put1(&o, 'R'), put1(&o, '.');
  nq_err_t err = {0};
  nq_ckpt_t *ck = NULL;
  bb_t z = {0};
  cr_assert_eq(open_zip_pkl(&o, 0, &z, &ck, &err), NQ_EUNSUPPORTED);
  cr_assert(strstr(err.msg, "'os.system'"), "%s", err.msg);
  free(o.b);
  free(z.b);
}

Test(pickle, deep_nesting_bounded) {
  bb_t o = {0};
  put1(&o, 0x80), put1(&o, 2);
  for (int i = 0; i < 2000; i++) put1(&o, ']');
  for (int i = 0; i < 1999; i++) put1(&o, 'a');
  put1(&o, '.');
  nq_err_t err = {0};
  nq_ckpt_t *ck = NULL;
  bb_t z = {0};
  cr_assert_eq(open_zip_pkl(&o, 0, &z, &ck, &err), NQ_ELIMIT, "%s", err.msg);
  cr_assert(strstr(err.msg, "nested deeper"), "%s", err.msg);
  free(o.b);
  /* nested MARKs */
  o = (bb_t){0};
  put1(&o, 0x80), put1(&o, 2);
  for (int i = 0; i < 100000; i++) put1(&o, '(');
  cr_assert_eq(nq_pickle_validate(o.b, o.n, NULL, &err), NQ_ELIMIT, "%s", err.msg);
  free(o.b);
  free(z.b);
}

Test(pickle, shared_reference_explosion_bounded, .timeout = 20) {
  /* t; then 80 x (x = (x, x)): 2^80 key paths through shared references */
  int64_t sh[1] = {1}, st[1] = {1};
  bb_t o = {0};
  put1(&o, 0x80), put1(&o, 2);
  p_tensor(&o, "FloatStorage", "0", 1, 0, 1, sh, st);
  for (int i = 0; i < 80; i++) put1(&o, 'q'), put1(&o, 0), put1(&o, 'h'), put1(&o, 0), put1(&o, 0x86);
  put1(&o, '.');
  nq_err_t err = {0};
  nq_ckpt_t *ck = NULL;
  bb_t z = {0};
  time_t t0 = time(NULL);
  cr_assert_eq(open_zip_pkl(&o, sizeof(float), &z, &ck, &err), NQ_ELIMIT, "%s", err.msg);
  cr_assert_leq(time(NULL) - t0, 5);
  free(o.b);
  free(z.b);
}

/* ---- the unpickler on its own ---- */

static int validate(const void *p, size_t n, nq_err_t *err) { return nq_pickle_validate(p, n, NULL, err); }
#define V(lit, err) validate(lit, sizeof(lit) - 1, err)

Test(pickle, refuses_globals_by_name) {
  nq_err_t err = {0};
  cr_assert_eq(V("\x80\x02" "cos\nsystem\nX\x02\x00\x00\x00ls\x85R.", &err), NQ_EUNSUPPORTED);
  cr_assert(strstr(err.msg, "'os.system'") && strstr(err.msg, "byte 2"), "%s", err.msg);
  /* STACK_GLOBAL (protocol 4) */
  cr_assert_eq(V("\x80\x04\x8c\x08" "builtins\x8c\x04" "eval\x93\x8c\x01" "1\x85R.", &err), NQ_EUNSUPPORTED);
  cr_assert(strstr(err.msg, "'builtins.eval'"), "%s", err.msg);
  /* Python 2 spelling: named as Python 3 resolves it */
  cr_assert_eq(V("\x80\x02" "c__builtin__\neval\n.", &err), NQ_EUNSUPPORTED);
  cr_assert(strstr(err.msg, "'builtins.eval'") && strstr(err.msg, "__builtin__.eval"), "%s", err.msg);
  cr_assert_eq(V("\x80\x02" "csubprocess\nPopen\n.", &err), NQ_EUNSUPPORTED);
  cr_assert(strstr(err.msg, "'subprocess.Popen'"), "%s", err.msg);
  /* a lookalike of an allowed global */
  cr_assert_eq(V("\x80\x02" "ctorch._utils\n_rebuild_tensor_v2x\n.", &err), NQ_EUNSUPPORTED);
  /* NUL inside a module name must not match an allowed one */
  cr_assert_eq(V("\x80\x02" "ccollections\x00x\nOrderedDict\n.", &err), NQ_EUNSUPPORTED);
  /* other code paths that would instantiate or call */
  cr_assert_eq(V("\x80\x02(cos\nsystem\no.", &err), NQ_EUNSUPPORTED);
  cr_assert_eq(V("\x80\x02(i__main__\nEvil\n.", &err), NQ_EUNSUPPORTED);
  cr_assert_eq(V("\x80\x02\x82\x01.", &err), NQ_EUNSUPPORTED);
  cr_assert_eq(V("\x80\x02" "ctorch\nFloatStorage\n)R.", &err), NQ_EFORMAT); /* a storage type is not callable */
  cr_assert_eq(V("\x80\x02" "ctorch\nFloatStorage\n)\x81.", &err), NQ_EUNSUPPORTED);
}

Test(pickle, accepts_plain_containers) {
  nq_err_t err = {0};
  /* protocol 4 with FRAME/MEMOIZE: {'a': [1, 2.5, None, True], 'b': ('x', b'y')} */
  static const char p4[] = "\x80\x04\x95\x28\x00\x00\x00\x00\x00\x00\x00}\x94(\x8c\x01" "a\x94]\x94(K\x01G\x40\x04\x00\x00\x00\x00\x00\x00N\x88"
                           "e\x8c\x01" "b\x94\x8c\x01x\x94" "C\x01y\x94\x86\x94u.";
  cr_assert_eq(V(p4, &err), 0, "%s", err.msg);
  /* OrderedDict via REDUCE and via NEWOBJ, BUILD with _metadata state */
  cr_assert_eq(V("\x80\x02" "ccollections\nOrderedDict\nq\x00)Rq\x01}X\x09\x00\x00\x00_metadata}sb.", &err), 0, "%s", err.msg);
  cr_assert_eq(V("\x80\x02" "ccollections\nOrderedDict\n)\x81.", &err), 0, "%s", err.msg);
}

Test(pickle, malformed_bounded) {
  nq_err_t err = {0};
  cr_assert_eq(V("\x80\x02h\x05.", &err), NQ_EFORMAT); /* BINGET of a never-stored index */
  cr_assert(strstr(err.msg, "memo index 5"), "%s", err.msg);
  cr_assert_eq(V("\x80\x02Nj\x10\x27\x00\x00.", &err), NQ_EFORMAT);
  cr_assert_eq(V("\x80\x02Nr\xff\xff\xff\xff.", &err), NQ_ELIMIT); /* LONG_BINPUT far out: no 32 GiB memo */
  cr_assert_eq(V("\x80\x02X\xff\xff\xff\x7f" "abc.", &err), NQ_EFORMAT); /* 2 GiB string in 4 bytes */
  cr_assert(strstr(err.msg, "exceeds"), "%s", err.msg);
  cr_assert_eq(V("\x80\x02\x8d\xff\xff\xff\xff\xff\xff\xff\x7f" "a.", &err), NQ_EFORMAT);
  cr_assert_eq(V("\x80\x02T\xff\xff\xff\xff.", &err), NQ_EFORMAT); /* negative BINSTRING */
  cr_assert_eq(V("\x80\x02\x8b\x00\x00\x00\x70.", &err), NQ_EFORMAT); /* LONG4 of 1.8 GB */
  cr_assert_eq(V("\x80\x02\x95\x00\x00\x00\x00\x01\x00\x00\x00N.", &err), NQ_EFORMAT); /* FRAME past the end */
  cr_assert_eq(V("\x80\x02s.", &err), NQ_EFORMAT);                  /* stack underflow */
  cr_assert_eq(V("\x80\x02(N\x86.", &err), NQ_EFORMAT);              /* TUPLE2 across a MARK */
  cr_assert_eq(V("\x80\x02" "e.", &err), NQ_EFORMAT);                /* APPENDS without MARK */
  cr_assert_eq(V("\x80\x02N(Na.", &err), NQ_EFORMAT);               /* APPEND to None */
  cr_assert_eq(V("\x80\x02}", &err), NQ_EFORMAT);                    /* no STOP */
  cr_assert(strstr(err.msg, "truncated"), "%s", err.msg);
  cr_assert_eq(V("\x80\x02" "ccollections\nOrderedDi", &err), NQ_EFORMAT); /* unterminated GLOBAL */
  cr_assert_eq(V("\x80\x09.", &err), NQ_EUNSUPPORTED);              /* protocol 9 */
  cr_assert_eq(V("\xff.", &err), NQ_EUNSUPPORTED);                   /* unknown opcode */
  cr_assert_eq(V("", &err), NQ_EFORMAT);
  /* a persistent id that is not a storage */
  cr_assert_eq(V("\x80\x02X\x01\x00\x00\x00xQ.", &err), NQ_EFORMAT);
  cr_assert_eq(V("\x80\x02(X\x06\x00\x00\x00moduletQ.", &err), NQ_EUNSUPPORTED);
  /* huge stack: bounded by limits */
  nq_pickle_limits_t lim;
  nq_pickle_limits_init(&lim);
  lim.max_stack = 1000;
  bb_t o = {0};
  put1(&o, 0x80), put1(&o, 2);
  for (int i = 0; i < 5000; i++) put1(&o, 'N');
  put1(&o, '.');
  cr_assert_eq(nq_pickle_validate(o.b, o.n, &lim, &err), NQ_ELIMIT, "%s", err.msg);
  /* object memory: bounded by the arena limit */
  lim.max_stack = (size_t)1 << 22;
  lim.arena_base = 4096;
  lim.arena_per_byte = 1;
  o.n = 2;
  for (int i = 0; i < 5000; i++) put1(&o, '}');
  put1(&o, '.');
  cr_assert_eq(nq_pickle_validate(o.b, o.n, &lim, &err), NQ_ELIMIT, "%s", err.msg);
  free(o.b);
}

/* ---- sweeps over the golden files: every truncation fails cleanly; byte flips never crash ---- */

static void sweep(const char *path) {
  size_t n;
  char *b = read_file(path, &n);
  if (!b) cr_skip_test("no %s", path);
  nq_err_t err = {0};
  nq_ckpt_t *ck;
  for (size_t len = 0; len < n; len++) {
    unsigned char *c = malloc(len ? len : 1); /* exact-size copy: ASan sees any read past the end */
    memcpy(c, b, len);
    int rc = nq_ckpt_open_mem(c, len, "cut.pt", NULL, &ck, &err);
    cr_assert_lt(rc, 0, "%s truncated to %zu bytes loaded", path, len);
    cr_assert(err.msg[0]);
    free(c);
  }
  unsigned char *c = malloc(n);
  for (size_t i = 0; i < n; i++) {
    memcpy(c, b, n);
    c[i] ^= (unsigned char)(0x5a + i);
    if (nq_ckpt_open_mem(c, n, "flip.pt", NULL, &ck, &err) == 0) {
      for (size_t k = 0; k < nq_ckpt_count(ck); k++) { /* whatever loaded must be readable */
        const nq_ckpt_tensor_t *t = nq_ckpt_get(ck, k);
        volatile unsigned char s = 0;
        for (size_t j = 0; j < t->nbytes; j++) s ^= ((const unsigned char *)t->data)[j];
        (void)s;
      }
      nq_ckpt_close(ck);
    }
  }
  free(c);
  free(b);
}

Test(pickle, sweep_zip) { sweep(GOLDEN "/shared-storage-views/checkpoint.pt"); }
Test(pickle, sweep_legacy) { sweep(GOLDEN "/legacy-format/checkpoint.pt"); }

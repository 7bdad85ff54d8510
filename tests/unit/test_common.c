/* tests/unit/test_common.c — err, config loader (libyaml, table-driven), arena. */
#include <criterion/criterion.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/arena.h"
#include "common/config.h"
#include "common/err.h"

Test(err, codes_and_messages) {
  nq_err_t e = {0};
  cr_assert_eq(nq_err_set(&e, NQ_EFORMAT, NQ_ERR_FATAL, "bad %s at %d", "thing", 7), NQ_EFORMAT);
  cr_assert_str_eq(e.msg, "bad thing at 7");
  cr_assert(nq_err_is_fatal(&e));
  nq_err_prefix(&e, "file %s", "x.tar");
  cr_assert_str_eq(e.msg, "file x.tar: bad thing at 7");
  cr_assert_str_eq(nq_strerror(NQ_ESHAPE), "wrong tensor shape");
  cr_assert_str_eq(nq_err_name(NQ_EKEY), "EKEY");
  cr_assert_str_eq(nq_strerror(-999), "unknown error");
  cr_assert_eq(nq_err_set(NULL, NQ_EIO, 0, "x"), NQ_EIO);
}

typedef struct cfg {
  char *name;
  long long n;
  double ratio;
  int flag;
  char *mode;
  char *nested;
  json_t *params;
  json_t *list;
} cfg_t;

#define O(f) offsetof(cfg_t, f)
static const nq_prop_t props[] = {
    {"name", NQ_PROP_STRING, O(name), 0, 0, NULL, NULL, NQ_PROP_REQUIRED, "a name"},
    {"n", NQ_PROP_INT, O(n), 1, 100, "5", NULL, 0, "count"},
    {"ratio", NQ_PROP_DOUBLE, O(ratio), 0, 1, "0.5", NULL, 0, "ratio"},
    {"flag", NQ_PROP_BOOL, O(flag), 0, 0, "false", NULL, 0, "flag"},
    {"mode", NQ_PROP_ENUM, O(mode), 0, 0, "a", "a|b|c", 0, "mode"},
    {"sub.key", NQ_PROP_STRING, O(nested), 0, 0, NULL, NULL, 0, "nested"},
    {"params", NQ_PROP_JSON, O(params), 0, 0, NULL, NULL, 0, "free-form"},
    {"list", NQ_PROP_STRLIST, O(list), 0, 0, NULL, NULL, 0, "names"},
    {0},
};

static int load(const char *yaml, cfg_t *c, nq_err_t *e) {
  memset(c, 0, sizeof *c);
  return nq_config_load_string(yaml, strlen(yaml), "t.yaml", props, c, "NQ_TEST_", e);
}

Test(config, values_defaults_nesting) {
  cfg_t c;
  nq_err_t e = {0};
  const char *y = "name: x\nratio: 0.25\nflag: yes\nmode: c\nsub:\n  key: deep\nparams: {a: 1, b: [x, 2.5], c: \"007\"}\nlist: [p, q]\n";
  cr_assert_eq(load(y, &c, &e), 0, "%s", e.msg);
  cr_assert_str_eq(c.name, "x");
  cr_assert_eq(c.n, 5);
  cr_assert_float_eq(c.ratio, 0.25, 1e-12);
  cr_assert_eq(c.flag, 1);
  cr_assert_str_eq(c.mode, "c");
  cr_assert_str_eq(c.nested, "deep");
  cr_assert_eq(json_integer_value(json_object_get(c.params, "a")), 1);
  cr_assert_str_eq(json_string_value(json_object_get(c.params, "c")), "007"); /* quoted stays a string */
  cr_assert_float_eq(json_real_value(json_array_get(json_object_get(c.params, "b"), 1)), 2.5, 1e-12);
  cr_assert_eq(json_array_size(c.list), 2);
  nq_config_deinit(props, &c);
}

Test(config, unknown_key_names_file_line_column) {
  cfg_t c;
  nq_err_t e = {0};
  cr_assert_eq(load("name: x\nsub:\n  kye: 1\n", &c, &e), NQ_ECONFIG);
  cr_assert(strstr(e.msg, "t.yaml:3:3") && strstr(e.msg, "sub.kye"), "%s", e.msg);
  nq_config_deinit(props, &c);
}

Test(config, bad_values_are_errors_with_position) {
  cfg_t c;
  nq_err_t e = {0};
  cr_assert_eq(load("name: x\nn: 500\n", &c, &e), NQ_ECONFIG);
  cr_assert(strstr(e.msg, "t.yaml:2:4") && strstr(e.msg, "outside"), "%s", e.msg);
  nq_config_deinit(props, &c);
  cr_assert_eq(load("name: x\nn: ten\n", &c, &e), NQ_ECONFIG);
  cr_assert(strstr(e.msg, "not an integer"), "%s", e.msg);
  nq_config_deinit(props, &c);
  cr_assert_eq(load("name: x\nmode: z\n", &c, &e), NQ_ECONFIG);
  cr_assert(strstr(e.msg, "a|b|c"), "%s", e.msg);
  nq_config_deinit(props, &c);
  cr_assert_eq(load("name: x\nflag: maybe\n", &c, &e), NQ_ECONFIG);
  nq_config_deinit(props, &c);
  cr_assert_eq(load("n: 3\n", &c, &e), NQ_ECONFIG);
  cr_assert(strstr(e.msg, "required key 'name'"), "%s", e.msg);
  nq_config_deinit(props, &c);
  cr_assert_eq(load("name: x\nname: y\n", &c, &e), NQ_ECONFIG);
  cr_assert(strstr(e.msg, "duplicate"), "%s", e.msg);
  nq_config_deinit(props, &c);
  cr_assert_eq(load("name: [unclosed\n", &c, &e), NQ_ECONFIG);
  cr_assert(strstr(e.msg, "t.yaml:"), "%s", e.msg);
  nq_config_deinit(props, &c);
  cr_assert_eq(load("name: x\nlist: [a, {b: 1}]\n", &c, &e), NQ_ECONFIG);
  nq_config_deinit(props, &c);
}

Test(config, env_overrides) {
  cfg_t c;
  nq_err_t e = {0};
  setenv("NQ_TEST_N", "42", 1);
  setenv("NQ_TEST_SUB_KEY", "from-env", 1);
  cr_assert_eq(load("name: x\nn: 3\n", &c, &e), 0, "%s", e.msg);
  cr_assert_eq(c.n, 42);
  cr_assert_str_eq(c.nested, "from-env");
  nq_config_deinit(props, &c);
  setenv("NQ_TEST_N", "0", 1);
  cr_assert_eq(load("name: x\n", &c, &e), NQ_ECONFIG);
  cr_assert(strstr(e.msg, "NQ_TEST_N"), "%s", e.msg);
  nq_config_deinit(props, &c);
  unsetenv("NQ_TEST_N");
  unsetenv("NQ_TEST_SUB_KEY");
}

Test(config, reference_table) {
  char *md = nq_config_reference("t", props);
  cr_assert(md && strstr(md, "| `sub.key` |") && strstr(md, "a|b|c"));
  free(md);
}

Test(arena, alloc_align_limit_reset) {
  nq_arena_t a;
  nq_arena_init(&a, 1024, 4096);
  char *p = nq_arena_alloc(&a, 10, 64);
  cr_assert(p && ((uintptr_t)p % 64) == 0);
  void *big = nq_arena_alloc(&a, 3000, 16); /* larger than a block: own block */
  cr_assert(big);
  cr_assert_null(nq_arena_alloc(&a, 2000, 16)); /* over the 4096 limit */
  cr_assert_eq(a.peak, 3010);
  nq_arena_reset(&a);
  cr_assert_eq(a.used, 0);
  cr_assert(nq_arena_alloc(&a, 2000, 16));
  cr_assert_str_eq(nq_arena_strdup(&a, "hi"), "hi");
  nq_arena_deinit(&a);
}

/* tests/fuzz/fuzz_config.c — the generic table-driven YAML config loader (common/config.h): nq_yaml_to_json
 * and nq_config_load_string against a table with one property of every type, nested names and bounds. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "common/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct fuzz_cfg {
  char *name;
  long long n;
  double x;
  int flag;
  char *mode;
  json_t *extra;
  json_t *list;
  char *nested_s;
  long long nested_n;
} fuzz_cfg_t;

static const nq_prop_t fuzz_props[] = {
    {"name", NQ_PROP_STRING, offsetof(fuzz_cfg_t, name), 0, 0, "x", NULL, 0, "a string"},
    {"n", NQ_PROP_INT, offsetof(fuzz_cfg_t, n), -100, 1e12, "3", NULL, 0, "an int"},
    {"x", NQ_PROP_DOUBLE, offsetof(fuzz_cfg_t, x), 0, 1, "0.5", NULL, 0, "a double"},
    {"flag", NQ_PROP_BOOL, offsetof(fuzz_cfg_t, flag), 0, 0, "false", NULL, 0, "a bool"},
    {"mode", NQ_PROP_ENUM, offsetof(fuzz_cfg_t, mode), 0, 0, "a", "a|bb|ccc", 0, "an enum"},
    {"extra", NQ_PROP_JSON, offsetof(fuzz_cfg_t, extra), 0, 0, NULL, NULL, 0, "any subtree"},
    {"list", NQ_PROP_STRLIST, offsetof(fuzz_cfg_t, list), 0, 0, NULL, NULL, 0, "a string list"},
    {"nested.s", NQ_PROP_STRING, offsetof(fuzz_cfg_t, nested_s), 0, 0, NULL, NULL, 0, "nested string"},
    {"nested.n", NQ_PROP_INT, offsetof(fuzz_cfg_t, nested_n), 1, 10, "1", NULL, 0, "nested int"},
    {0},
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  nq_err_t err = {0};
  json_t *j = NULL;
  if (nq_yaml_to_json((const char *)data, size, "fuzz.yaml", &j, &err) == 0) {
    char *s = json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY);
    free(s);
    json_decref(j);
  }
  fuzz_cfg_t cfg = {0};
  nq_err_clear(&err);
  (void)nq_config_load_string((const char *)data, size, "fuzz.yaml", fuzz_props, &cfg, NULL, &err);
  nq_config_deinit(fuzz_props, &cfg);
  return 0;
}

/* common/config.h — table-driven YAML configuration (libyaml).
 *
 * A module declares its settings as a table of nq_prop_t rows (name, type, bounds, default, doc,
 * offset into its struct). One loader parses YAML, checks every key against the table and every
 * value against its type and bounds, fills the struct, and applies environment overrides. An
 * unknown key or a bad value is an error naming file:line:column. Nested mappings are addressed
 * with dotted names ("dataset.format").
 */
#ifndef NQ_COMMON_CONFIG_H
#define NQ_COMMON_CONFIG_H

#include <jansson.h>
#include <stddef.h>

#include "common/err.h"

typedef enum nq_prop_type {
  NQ_PROP_STRING,  /* char * (owned by the struct; freed by nq_config_deinit) */
  NQ_PROP_INT,     /* long long, bounds min..max */
  NQ_PROP_DOUBLE,  /* double, bounds min..max */
  NQ_PROP_BOOL,    /* int 0/1 */
  NQ_PROP_ENUM,    /* char * limited to `choices` ("a|b|c") */
  NQ_PROP_JSON,    /* json_t * any YAML subtree as JSON (owned; decref'd by nq_config_deinit) */
  NQ_PROP_STRLIST, /* json_t * array of strings; a scalar becomes a one-element list */
} nq_prop_type_t;

#define NQ_PROP_REQUIRED 0x1u

typedef struct nq_prop {
  const char *name;    /* dotted path: "dataset.format" */
  nq_prop_type_t type;
  size_t offset;       /* offsetof(struct, field) */
  double min, max;     /* numeric bounds (ignored when min > max) */
  const char *def;     /* default as text (NULL: none) */
  const char *choices; /* NQ_PROP_ENUM: "a|b|c" */
  unsigned flags;      /* NQ_PROP_REQUIRED */
  const char *doc;     /* one line for configs/REFERENCE.md and --help */
} nq_prop_t;

/* Table terminator: {0}. */

/* Apply defaults to obj (zeroed by the caller). */
int nq_config_defaults(const nq_prop_t *props, void *obj, nq_err_t *err);
/* Parse YAML from a file (name used in messages) into obj (defaults applied first). env_prefix
 * (e.g. "NQ_WORKER_", may be NULL) enables overrides: NQ_WORKER_DATASET_FORMAT overrides dataset.format. */
int nq_config_load_file(const char *path, const nq_prop_t *props, void *obj, const char *env_prefix, nq_err_t *err);
int nq_config_load_string(const char *yaml, size_t len, const char *name, const nq_prop_t *props, void *obj,
                          const char *env_prefix, nq_err_t *err);
/* Set one property from text (env overrides and --set KEY=VALUE use it). */
int nq_config_set(const nq_prop_t *props, void *obj, const char *key, const char *value, const char *where,
                  nq_err_t *err);
/* Free owned strings and JSON in obj. */
void nq_config_deinit(const nq_prop_t *props, void *obj);
/* Markdown table of the props (for configs/REFERENCE.md). Caller frees. */
char *nq_config_reference(const char *title, const nq_prop_t *props);

/* Parse a whole YAML document into JSON (scalars typed as YAML core schema: int, float, bool, null,
 * otherwise string; quoted scalars are strings). Errors name file:line:column. */
int nq_yaml_to_json(const char *yaml, size_t len, const char *name, json_t **out, nq_err_t *err);

#endif

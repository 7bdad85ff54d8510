/* common/config.c — see config.h. */
#include "common/config.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#define FIELD(obj, p, T) ((T *)((char *)(obj) + (p)->offset))

static const nq_prop_t *find_prop(const nq_prop_t *props, const char *name) {
  for (const nq_prop_t *p = props; p->name; p++)
    if (strcmp(p->name, name) == 0) return p;
  return NULL;
}

static int has_prefix_prop(const nq_prop_t *props, const char *prefix) {
  size_t n = strlen(prefix);
  for (const nq_prop_t *p = props; p->name; p++)
    if (strncmp(p->name, prefix, n) == 0 && p->name[n] == '.') return 1;
  return 0;
}

static int in_choices(const char *choices, const char *v) {
  size_t n = strlen(v);
  for (const char *c = choices; c && *c;) {
    const char *bar = strchr(c, '|');
    size_t len = bar ? (size_t)(bar - c) : strlen(c);
    if (len == n && strncmp(c, v, n) == 0) return 1;
    c = bar ? bar + 1 : NULL;
  }
  return 0;
}

static int parse_bool(const char *s, int *out) {
  static const char *t[] = {"true", "yes", "on", "1", "True", "TRUE", "Yes", "On"};
  static const char *f[] = {"false", "no", "off", "0", "False", "FALSE", "No", "Off"};
  for (size_t i = 0; i < sizeof t / sizeof *t; i++) {
    if (strcmp(s, t[i]) == 0) return *out = 1, 0;
    if (strcmp(s, f[i]) == 0) return *out = 0, 0;
  }
  return -1;
}

/* Typed scalar -> JSON per the YAML core schema. */
static json_t *scalar_json(const char *s, int quoted) {
  if (quoted) return json_string(s);
  if (!*s || strcmp(s, "~") == 0 || strcmp(s, "null") == 0 || strcmp(s, "Null") == 0 || strcmp(s, "NULL") == 0)
    return json_null();
  int b;
  if (strcmp(s, "1") != 0 && strcmp(s, "0") != 0 && parse_bool(s, &b) == 0) return json_boolean(b);
  char *end;
  errno = 0;
  long long ll = strtoll(s, &end, 0);
  if (!*end && errno == 0 && (isdigit((unsigned char)s[0]) || ((s[0] == '-' || s[0] == '+') && isdigit((unsigned char)s[1]))))
    return json_integer(ll);
  double d = strtod(s, &end);
  if (!*end && (isdigit((unsigned char)s[0]) || s[0] == '.' || s[0] == '-' || s[0] == '+') && isfinite(d)) return json_real(d);
  return json_string(s);
}

static int set_value(const nq_prop_t *p, void *obj, const char *v, const char *where, nq_err_t *err) {
  char *end;
  switch (p->type) {
    case NQ_PROP_STRING:
    case NQ_PROP_ENUM: {
      if (p->type == NQ_PROP_ENUM && !in_choices(p->choices, v))
        return nq_err_set(err, NQ_ECONFIG, NQ_ERR_FATAL, "%s: %s: '%s' is not one of %s", where, p->name, v, p->choices);
      char *dup = strdup(v);
      if (!dup) return nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "out of memory");
      free(*FIELD(obj, p, char *));
      *FIELD(obj, p, char *) = dup;
      return 0;
    }
    case NQ_PROP_INT: {
      errno = 0;
      long long x = strtoll(v, &end, 0);
      if (!*v || *end || errno)
        return nq_err_set(err, NQ_ECONFIG, NQ_ERR_FATAL, "%s: %s: '%s' is not an integer", where, p->name, v);
      if (p->min <= p->max && ((double)x < p->min || (double)x > p->max))
        return nq_err_set(err, NQ_ECONFIG, NQ_ERR_FATAL, "%s: %s: %lld is outside [%.17g, %.17g]", where, p->name, x, p->min, p->max);
      *FIELD(obj, p, long long) = x;
      return 0;
    }
    case NQ_PROP_DOUBLE: {
      errno = 0;
      double x = strtod(v, &end);
      if (!*v || *end || errno || !isfinite(x))
        return nq_err_set(err, NQ_ECONFIG, NQ_ERR_FATAL, "%s: %s: '%s' is not a number", where, p->name, v);
      if (p->min <= p->max && (x < p->min || x > p->max))
        return nq_err_set(err, NQ_ECONFIG, NQ_ERR_FATAL, "%s: %s: %g is outside [%g, %g]", where, p->name, x, p->min, p->max);
      *FIELD(obj, p, double) = x;
      return 0;
    }
    case NQ_PROP_BOOL: {
      int b;
      if (parse_bool(v, &b) != 0)
        return nq_err_set(err, NQ_ECONFIG, NQ_ERR_FATAL, "%s: %s: '%s' is not a boolean", where, p->name, v);
      *FIELD(obj, p, int) = b;
      return 0;
    }
    case NQ_PROP_JSON:
    case NQ_PROP_STRLIST: {
      json_error_t je;
      json_t *j = json_loads(v, JSON_DECODE_ANY, &je);
      if (!j) j = json_string(v);
      if (p->type == NQ_PROP_STRLIST && json_is_string(j)) { /* "a,b" -> ["a","b"] */
        json_t *arr = json_array();
        const char *s = json_string_value(j);
        while (*s) {
          const char *c = strchr(s, ',');
          size_t n = c ? (size_t)(c - s) : strlen(s);
          if (n) json_array_append_new(arr, json_stringn(s, n));
          s += n + (c ? 1 : 0);
        }
        json_decref(j);
        j = arr;
      }
      json_decref(*FIELD(obj, p, json_t *));
      *FIELD(obj, p, json_t *) = j;
      return 0;
    }
  }
  return nq_err_set(err, NQ_EINTERNAL, NQ_ERR_FATAL, "bad prop type");
}

int nq_config_set(const nq_prop_t *props, void *obj, const char *key, const char *value, const char *where,
                  nq_err_t *err) {
  const nq_prop_t *p = find_prop(props, key);
  if (!p) return nq_err_set(err, NQ_ECONFIG, NQ_ERR_FATAL, "%s: unknown key '%s'", where, key);
  return set_value(p, obj, value, where, err);
}

int nq_config_defaults(const nq_prop_t *props, void *obj, nq_err_t *err) {
  for (const nq_prop_t *p = props; p->name; p++) {
    if (p->type == NQ_PROP_STRLIST && !p->def) {
      json_decref(*FIELD(obj, p, json_t *));
      *FIELD(obj, p, json_t *) = json_array();
    }
    if (p->def) {
      int rc = set_value(p, obj, p->def, "default", err);
      if (rc) return rc;
    }
  }
  return 0;
}

void nq_config_deinit(const nq_prop_t *props, void *obj) {
  for (const nq_prop_t *p = props; p->name; p++) {
    if (p->type == NQ_PROP_STRING || p->type == NQ_PROP_ENUM) {
      free(*FIELD(obj, p, char *));
      *FIELD(obj, p, char *) = NULL;
    } else if (p->type == NQ_PROP_JSON || p->type == NQ_PROP_STRLIST) {
      json_decref(*FIELD(obj, p, json_t *));
      *FIELD(obj, p, json_t *) = NULL;
    }
  }
}

/* ---- YAML document -> JSON / props ---- */

typedef struct ywalk {
  yaml_document_t *doc;
  const char *name;
  nq_err_t *err;
  int depth;
} ywalk_t;

#define WHERE_FMT "%s:%zu:%zu"
#define WHERE_ARGS(w, node) (w)->name, (size_t)(node)->start_mark.line + 1, (size_t)(node)->start_mark.column + 1

static int node_json(ywalk_t *w, yaml_node_t *n, json_t **out) {
  if (++w->depth > 64) {
    w->depth--;
    return nq_err_set(w->err, NQ_ELIMIT, NQ_ERR_FATAL, WHERE_FMT ": nesting too deep", WHERE_ARGS(w, n));
  }
  int rc = 0;
  switch (n->type) {
    case YAML_SCALAR_NODE:
      *out = scalar_json((const char *)n->data.scalar.value,
                         n->data.scalar.style == YAML_SINGLE_QUOTED_SCALAR_STYLE ||
                             n->data.scalar.style == YAML_DOUBLE_QUOTED_SCALAR_STYLE);
      break;
    case YAML_SEQUENCE_NODE: {
      json_t *a = json_array();
      for (yaml_node_item_t *it = n->data.sequence.items.start; it < n->data.sequence.items.top; it++) {
        json_t *c = NULL;
        if ((rc = node_json(w, yaml_document_get_node(w->doc, *it), &c))) break;
        json_array_append_new(a, c);
      }
      if (rc) json_decref(a);
      else *out = a;
      break;
    }
    case YAML_MAPPING_NODE: {
      json_t *o = json_object();
      for (yaml_node_pair_t *pr = n->data.mapping.pairs.start; pr < n->data.mapping.pairs.top; pr++) {
        yaml_node_t *k = yaml_document_get_node(w->doc, pr->key), *v = yaml_document_get_node(w->doc, pr->value);
        if (k->type != YAML_SCALAR_NODE) {
          rc = nq_err_set(w->err, NQ_ECONFIG, NQ_ERR_FATAL, WHERE_FMT ": mapping key must be a scalar", WHERE_ARGS(w, k));
          break;
        }
        const char *ks = (const char *)k->data.scalar.value;
        if (json_object_get(o, ks)) {
          rc = nq_err_set(w->err, NQ_ECONFIG, NQ_ERR_FATAL, WHERE_FMT ": duplicate key '%s'", WHERE_ARGS(w, k), ks);
          break;
        }
        json_t *c = NULL;
        if ((rc = node_json(w, v, &c))) break;
        json_object_set_new(o, ks, c);
      }
      if (rc) json_decref(o);
      else *out = o;
      break;
    }
    default: *out = json_null();
  }
  w->depth--;
  return rc;
}

static int load_doc(const char *yaml, size_t len, const char *name, yaml_document_t *doc, nq_err_t *err) {
  yaml_parser_t parser;
  if (!yaml_parser_initialize(&parser)) return nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "yaml: out of memory");
  yaml_parser_set_input_string(&parser, (const unsigned char *)yaml, len);
  int ok = yaml_parser_load(&parser, doc);
  int rc = 0;
  if (!ok)
    rc = nq_err_set(err, NQ_ECONFIG, NQ_ERR_FATAL, "%s:%zu:%zu: YAML error: %s%s%s", name, (size_t)parser.problem_mark.line + 1,
                    (size_t)parser.problem_mark.column + 1, parser.problem ? parser.problem : "syntax error",
                    parser.context ? " " : "", parser.context ? parser.context : "");
  yaml_parser_delete(&parser);
  return rc;
}

int nq_yaml_to_json(const char *yaml, size_t len, const char *name, json_t **out, nq_err_t *err) {
  yaml_document_t doc;
  *out = NULL;
  int rc = load_doc(yaml, len, name, &doc, err);
  if (rc) return rc;
  yaml_node_t *root = yaml_document_get_root_node(&doc);
  ywalk_t w = {&doc, name, err, 0};
  if (!root) *out = json_object();
  else rc = node_json(&w, root, out);
  yaml_document_delete(&doc);
  return rc;
}

static int walk_props(ywalk_t *w, yaml_node_t *map, const char *prefix, const nq_prop_t *props, void *obj) {
  if (map->type != YAML_MAPPING_NODE)
    return nq_err_set(w->err, NQ_ECONFIG, NQ_ERR_FATAL, WHERE_FMT ": %s%sexpected a mapping", WHERE_ARGS(w, map),
                      prefix ? prefix : "", prefix ? ": " : "");
  for (yaml_node_pair_t *pr = map->data.mapping.pairs.start; pr < map->data.mapping.pairs.top; pr++) {
    yaml_node_t *k = yaml_document_get_node(w->doc, pr->key), *v = yaml_document_get_node(w->doc, pr->value);
    if (k->type != YAML_SCALAR_NODE)
      return nq_err_set(w->err, NQ_ECONFIG, NQ_ERR_FATAL, WHERE_FMT ": mapping key must be a scalar", WHERE_ARGS(w, k));
    char full[256];
    snprintf(full, sizeof full, "%s%s%s", prefix ? prefix : "", prefix ? "." : "", (const char *)k->data.scalar.value);
    for (yaml_node_pair_t *q = map->data.mapping.pairs.start; q < pr; q++) {
      yaml_node_t *k2 = yaml_document_get_node(w->doc, q->key);
      if (k2->type == YAML_SCALAR_NODE && strcmp((const char *)k2->data.scalar.value, (const char *)k->data.scalar.value) == 0)
        return nq_err_set(w->err, NQ_ECONFIG, NQ_ERR_FATAL, WHERE_FMT ": duplicate key '%s'", WHERE_ARGS(w, k), full);
    }
    const nq_prop_t *p = find_prop(props, full);
    char where[512];
    snprintf(where, sizeof where, WHERE_FMT, WHERE_ARGS(w, v));
    int rc;
    if (p && (p->type == NQ_PROP_JSON || p->type == NQ_PROP_STRLIST)) {
      json_t *j = NULL;
      if ((rc = node_json(w, v, &j))) return rc;
      if (p->type == NQ_PROP_STRLIST) {
        if (json_is_string(j)) {
          json_t *a = json_array();
          json_array_append_new(a, j);
          j = a;
        }
        size_t i;
        json_t *x;
        int bad = !json_is_array(j);
        json_array_foreach(j, i, x) bad |= !json_is_string(x);
        if (bad) {
          json_decref(j);
          return nq_err_set(w->err, NQ_ECONFIG, NQ_ERR_FATAL, "%s: %s: expected a list of strings", where, full);
        }
      }
      json_decref(*FIELD(obj, p, json_t *));
      *FIELD(obj, p, json_t *) = j;
    } else if (p) {
      if (v->type != YAML_SCALAR_NODE)
        return nq_err_set(w->err, NQ_ECONFIG, NQ_ERR_FATAL, "%s: %s: expected a single value", where, full);
      if ((rc = set_value(p, obj, (const char *)v->data.scalar.value, where, w->err))) return rc;
    } else if (has_prefix_prop(props, full)) {
      if ((rc = walk_props(w, v, full, props, obj))) return rc;
    } else {
      return nq_err_set(w->err, NQ_ECONFIG, NQ_ERR_FATAL, WHERE_FMT ": unknown key '%s'", WHERE_ARGS(w, k), full);
    }
  }
  return 0;
}

static int apply_env(const nq_prop_t *props, void *obj, const char *prefix, nq_err_t *err) {
  if (!prefix) return 0;
  for (const nq_prop_t *p = props; p->name; p++) {
    char var[256];
    size_t o = (size_t)snprintf(var, sizeof var, "%s", prefix);
    for (const char *c = p->name; *c && o + 1 < sizeof var; c++) var[o++] = *c == '.' ? '_' : (char)toupper((unsigned char)*c);
    var[o] = 0;
    const char *v = getenv(var);
    if (v) {
      char where[300];
      snprintf(where, sizeof where, "environment %s", var);
      int rc = set_value(p, obj, v, where, err);
      if (rc) return rc;
    }
  }
  return 0;
}

static int check_required(const nq_prop_t *props, void *obj, const char *name, nq_err_t *err) {
  for (const nq_prop_t *p = props; p->name; p++) {
    if (!(p->flags & NQ_PROP_REQUIRED)) continue;
    int missing = 0;
    if (p->type == NQ_PROP_STRING || p->type == NQ_PROP_ENUM) missing = !*FIELD(obj, p, char *);
    if (p->type == NQ_PROP_JSON) missing = !*FIELD(obj, p, json_t *);
    if (missing) return nq_err_set(err, NQ_ECONFIG, NQ_ERR_FATAL, "%s: required key '%s' is missing", name, p->name);
  }
  return 0;
}

int nq_config_load_string(const char *yaml, size_t len, const char *name, const nq_prop_t *props, void *obj,
                          const char *env_prefix, nq_err_t *err) {
  int rc = nq_config_defaults(props, obj, err);
  if (rc) return rc;
  yaml_document_t doc;
  if ((rc = load_doc(yaml, len, name, &doc, err))) return rc;
  yaml_node_t *root = yaml_document_get_root_node(&doc);
  ywalk_t w = {&doc, name, err, 0};
  if (root && !(root->type == YAML_SCALAR_NODE && !root->data.scalar.length)) rc = walk_props(&w, root, NULL, props, obj);
  yaml_document_delete(&doc);
  if (!rc) rc = apply_env(props, obj, env_prefix, err);
  if (!rc) rc = check_required(props, obj, name, err);
  return rc;
}

int nq_config_load_file(const char *path, const nq_prop_t *props, void *obj, const char *env_prefix, nq_err_t *err) {
  FILE *f = fopen(path, "rb");
  if (!f) return nq_err_set(err, NQ_ENOENT, NQ_ERR_FATAL, "%s: %s", path, strerror(errno));
  char *buf = NULL;
  size_t len = 0, cap = 0;
  for (;;) {
    if (len + 65536 > cap) {
      if (cap > (64u << 20)) {
        free(buf);
        fclose(f);
        return nq_err_set(err, NQ_ELIMIT, NQ_ERR_FATAL, "%s: config larger than 64 MiB", path);
      }
      cap = cap ? cap * 2 : 65536 * 2;
      char *nb = realloc(buf, cap);
      if (!nb) {
        free(buf);
        fclose(f);
        return nq_err_set(err, NQ_ENOMEM, NQ_ERR_RETRIABLE, "out of memory");
      }
      buf = nb;
    }
    size_t k = fread(buf + len, 1, cap - len, f);
    len += k;
    if (k == 0) break;
  }
  int ferr = ferror(f);
  fclose(f);
  if (ferr) {
    free(buf);
    return nq_err_set(err, NQ_EIO, NQ_ERR_RETRIABLE, "%s: read error", path);
  }
  int rc = nq_config_load_string(buf ? buf : "", len, path, props, obj, env_prefix, err);
  free(buf);
  return rc;
}

char *nq_config_reference(const char *title, const nq_prop_t *props) {
  static const char *tn[] = {"string", "int", "number", "bool", "enum", "any", "list"};
  size_t cap = 4096, len = 0;
  char *out = malloc(cap);
  if (!out) return NULL;
  len += (size_t)snprintf(out, cap, "## %s\n\n| key | type | default | range / choices | description |\n|---|---|---|---|---|\n", title);
  for (const nq_prop_t *p = props; p->name; p++) {
    char range[128] = "";
    if (p->type == NQ_PROP_ENUM) snprintf(range, sizeof range, "%s", p->choices);
    else if ((p->type == NQ_PROP_INT || p->type == NQ_PROP_DOUBLE) && p->min <= p->max)
      snprintf(range, sizeof range, "%.17g .. %.17g", p->min, p->max);
    char row[1024];
    int n = snprintf(row, sizeof row, "| `%s` | %s | %s | %s | %s%s |\n", p->name, tn[p->type], p->def ? p->def : "",
                     range, p->flags & NQ_PROP_REQUIRED ? "**required.** " : "", p->doc ? p->doc : "");
    if (len + (size_t)n + 1 > cap) {
      cap = (cap + (size_t)n) * 2;
      char *nb = realloc(out, cap);
      if (!nb) {
        free(out);
        return NULL;
      }
      out = nb;
    }
    memcpy(out + len, row, (size_t)n + 1);
    len += (size_t)n;
  }
  return out;
}

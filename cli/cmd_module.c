/* cli/cmd_module.c — `nextq module run --kind KIND [--model DIR] [--in IN.safetensors] --out OUT.safetensors
 * [--param KEY=VALUE]... [--dtype f32|bf16|f16] [--threads N]` and `nextq module list`. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/module.h"

const char *nq_module_param(const nq_module_ctx_t *ctx, const char *key) {
  for (int i = ctx->nparams - 1; i >= 0; i--)
    if (strcmp(ctx->keys[i], key) == 0) return ctx->vals[i];
  return NULL;
}

int nq_module_param_int(const nq_module_ctx_t *ctx, const char *key, long long def, long long *out, nq_err_t *err) {
  const char *v = nq_module_param(ctx, key);
  if (!v) {
    *out = def;
    return 0;
  }
  char *end;
  errno = 0;
  long long x = strtoll(v, &end, 10);
  if (!*v || *end || errno) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "--param %s=%s: not an integer", key, v);
  *out = x;
  return 0;
}

int nq_module_param_double(const nq_module_ctx_t *ctx, const char *key, double def, double *out, nq_err_t *err) {
  const char *v = nq_module_param(ctx, key);
  if (!v) {
    *out = def;
    return 0;
  }
  char *end;
  errno = 0;
  double x = strtod(v, &end);
  if (!*v || *end || errno) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "--param %s=%s: not a number", key, v);
  *out = x;
  return 0;
}

int nq_module_input_f32(const nq_module_ctx_t *ctx, const char *name, float **out, const nq_st_tensor_t **tp,
                        nq_err_t *err) {
  *out = NULL;
  const nq_st_tensor_t *t = ctx->in ? nq_st_find(ctx->in, name) : NULL;
  if (tp) *tp = t;
  if (!t) return nq_err_set(err, NQ_ENOENT, NQ_ERR_FATAL, "input tensor '%s' is missing", name);
  int64_t n = nq_st_numel(t);
  float *f = malloc((size_t)(n > 0 ? n : 1) * sizeof *f);
  if (!f) return nq_err_set(err, NQ_ENOMEM, NQ_ERR_FATAL, "input tensor '%s': out of memory", name);
  if (nq_dtype_to_f32(t->dtype, t->data, f, (size_t)n) != 0) {
    free(f);
    return nq_err_set(err, NQ_EUNSUPPORTED, NQ_ERR_FATAL, "input tensor '%s': dtype %s", name, nq_dtype_name(t->dtype));
  }
  *out = f;
  return 0;
}

static void usage(FILE *f) {
  fprintf(f, "usage: nextq module run --kind KIND [--model DIR] [--in IN.safetensors] --out OUT.safetensors\n"
             "                        [--param KEY=VALUE]... [--dtype f32|bf16|f16] [--threads N]\n"
             "       nextq module list\nkinds:\n");
  for (const nq_module_kind_t *k = nq_module_kinds; k->kind; k++) fprintf(f, "  %-20s %s\n", k->kind, k->doc);
}

int nq_cli_module(int argc, char **argv) {
  if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
    usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  if (strcmp(argv[1], "list") == 0) {
    for (const nq_module_kind_t *k = nq_module_kinds; k->kind; k++) printf("%s\n", k->kind);
    return 0;
  }
  if (strcmp(argv[1], "run") != 0) {
    usage(stderr);
    return 2;
  }
  const char *kind = NULL, *model = NULL, *in = NULL, *out = NULL, *dtype = "f32";
  int threads = 0;
  const char **keys = calloc((size_t)argc, sizeof *keys), **vals = calloc((size_t)argc, sizeof *vals);
  char **owned = calloc((size_t)argc, sizeof *owned);
  int np = 0, code = 2;
  for (int i = 2; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (strcmp(a, "--help") == 0) {
      usage(stdout);
      code = 0;
      goto done;
    }
    if (!v) {
      fprintf(stderr, "nextq module run: %s needs a value\n", a);
      goto done;
    }
    i++;
    if (strcmp(a, "--kind") == 0) kind = v;
    else if (strcmp(a, "--model") == 0) model = v;
    else if (strcmp(a, "--in") == 0) in = v;
    else if (strcmp(a, "--out") == 0) out = v;
    else if (strcmp(a, "--dtype") == 0) dtype = v;
    else if (strcmp(a, "--threads") == 0) threads = atoi(v);
    else if (strcmp(a, "--param") == 0) {
      const char *eq = strchr(v, '=');
      if (!eq) {
        fprintf(stderr, "nextq module run: --param %s: expected KEY=VALUE\n", v);
        goto done;
      }
      owned[np] = strndup(v, (size_t)(eq - v));
      keys[np] = owned[np];
      vals[np] = eq + 1;
      np++;
    } else {
      fprintf(stderr, "nextq module run: unknown option %s\n", a);
      goto done;
    }
  }
  if (!kind || !out) {
    usage(stderr);
    goto done;
  }
  if (strcmp(dtype, "f32") && strcmp(dtype, "bf16") && strcmp(dtype, "f16")) {
    fprintf(stderr, "nextq module run: --dtype %s: expected f32, bf16 or f16\n", dtype);
    goto done;
  }
  const nq_module_kind_t *k = nq_module_kinds;
  while (k->kind && strcmp(k->kind, kind) != 0) k++;
  if (!k->kind) {
    fprintf(stderr, "nextq module run: unknown kind '%s' (nextq module list)\n", kind);
    goto done;
  }
  nq_err_t err = {0};
  nq_st_file_t *inf = NULL;
  if (in && nq_st_open(in, &inf, &err) != 0) {
    fprintf(stderr, "nextq module run: --in: %s\n", err.msg);
    goto done;
  }
  nq_st_writer_t *w = nq_st_writer_new();
  nq_module_ctx_t ctx = {.kind = kind, .model_dir = model, .in = inf, .out = w, .nparams = np, .keys = keys,
                         .vals = vals, .dtype = dtype, .threads = threads > 0 ? threads : 0};
  if (k->fn(&ctx, &err) != 0) fprintf(stderr, "nextq module run --kind %s: %s\n", kind, err.msg);
  else if (nq_st_writer_save(w, out, &err) != 0) fprintf(stderr, "nextq module run: --out: %s\n", err.msg);
  else code = 0;
  nq_st_writer_free(w);
  nq_st_close(inf);
done:
  for (int i = 0; i < np; i++) free(owned[i]);
  free(owned);
  free(keys);
  free(vals);
  return code;
}

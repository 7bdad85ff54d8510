/* cli/cmd_model.c — `nextq model`: look inside weight files and convert PyTorch checkpoints to safetensors.
 *
 *   nextq model inspect FILE              tensors (name, dtype, shape) and, for torch files, the other values
 *   nextq model convert FILE --out X      every tensor under its dotted key path, bytes unchanged
 *
 * FILE is anything nq_ckpt_open takes (compute/io/pickle.h): .safetensors, *.index.json, torch.save files in
 * the zip or legacy format. Torch pickles go through the restricted unpickler: a file that names any other
 * global is refused (exit 1) and nothing in it is executed. */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "compute/io/pickle.h"
#include "compute/io/safetensors.h"

static void nq_model__usage(FILE *f) {
  fprintf(f,
          "usage: nextq model inspect FILE\n"
          "       nextq model convert FILE --out OUT.safetensors\n"
          "       nextq model init-tiny --out DIR [--seed S] [--models DIR | --random]   (tiny NExT-GPT, real layouts)\n"
          "  FILE: .safetensors, *.safetensors.index.json, a torch.save checkpoint (.pt/.pth/.bin; zip or legacy\n"
          "        format) or pytorch_model.bin.index.json. Torch pickles are read by a restricted unpickler that\n"
          "        only rebuilds tensors: any other global is refused and nothing is executed.\n"
          "  inspect  prints one line per tensor: name<TAB>dtype<TAB>[shape], then '# name = value' for the\n"
          "           checkpoint's other (non-tensor) values.\n"
          "  convert  writes every tensor, named by its dotted key path (list indices as path elements), with\n"
          "           its exact bytes.\n");
}

static void nq_model__shape(char *buf, size_t cap, const nq_ckpt_tensor_t *t) {
  size_t o = (size_t)snprintf(buf, cap, "[");
  for (int i = 0; i < t->ndim && o < cap; i++) o += (size_t)snprintf(buf + o, cap - o, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
  if (o < cap) snprintf(buf + o, cap - o, "]");
}

static int nq_model__inspect(const char *path) {
  nq_err_t err = {0};
  nq_ckpt_t *ck;
  if (nq_ckpt_open(path, &ck, &err) < 0) {
    fprintf(stderr, "nextq model inspect: %s\n", err.msg);
    return 1;
  }
  size_t n = nq_ckpt_count(ck), nv = nq_ckpt_value_count(ck);
  uint64_t total = 0;
  for (size_t i = 0; i < n; i++) {
    const nq_ckpt_tensor_t *t = nq_ckpt_get(ck, i);
    char sh[256];
    nq_model__shape(sh, sizeof sh, t);
    printf("%s\t%s\t%s\n", t->name, nq_dtype_name(t->dtype), sh);
    total += t->nbytes;
  }
  for (size_t i = 0; i < nv; i++) printf("# %s = %s\n", nq_ckpt_value_name(ck, i), nq_ckpt_value_repr(ck, i));
  fprintf(stderr, "%s: %s, %zu tensors, %llu bytes of tensor data, %zu other values\n", path,
          nq_ckpt_format_name(nq_ckpt_format(ck)), n, (unsigned long long)total, nv);
  nq_ckpt_close(ck);
  return 0;
}

static int nq_model__convert(const char *path, const char *out) {
  nq_err_t err = {0};
  nq_ckpt_t *ck;
  if (nq_ckpt_open(path, &ck, &err) < 0) {
    fprintf(stderr, "nextq model convert: %s\n", err.msg);
    return 1;
  }
  nq_st_writer_t *w = nq_st_writer_new();
  int rc = w ? 0 : NQ_ENOMEM;
  if (!w) snprintf(err.msg, sizeof err.msg, "out of memory");
  size_t n = nq_ckpt_count(ck);
  for (size_t i = 0; !rc && i < n; i++) {
    const nq_ckpt_tensor_t *t = nq_ckpt_get(ck, i);
    rc = nq_st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, t->data, &err);
  }
  if (!rc) rc = nq_st_writer_set_metadata(w, "format", "pt", &err);
  if (!rc) rc = nq_st_writer_save(w, out, &err);
  if (rc) fprintf(stderr, "nextq model convert: %s\n", err.msg);
  else fprintf(stderr, "%s: wrote %zu tensors to %s\n", path, n, out);
  nq_st_writer_free(w);
  nq_ckpt_close(ck);
  return rc ? 1 : 0;
}

int nq_cli_model_init_tiny(int argc, char **argv); /* cli/cmd_model_tiny.c */

int nq_cli_model(int argc, char **argv) {
  if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
    nq_model__usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  if (!strcmp(argv[1], "init-tiny")) return nq_cli_model_init_tiny(argc - 1, argv + 1); /* cli/cmd_model_tiny.c */
  const char *sub = argv[1], *file = NULL, *out = NULL;
  for (int i = 2; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      nq_model__usage(stdout);
      return 0;
    } else if (!strcmp(a, "--out") && i + 1 < argc) out = argv[++i];
    else if (a[0] != '-' && !file) file = a;
    else {
      fprintf(stderr, "nextq model %s: unknown or incomplete argument '%s'\n", sub, a);
      nq_model__usage(stderr);
      return 2;
    }
  }
  if (!strcmp(sub, "inspect")) {
    if (!file || out) {
      nq_model__usage(stderr);
      return 2;
    }
    return nq_model__inspect(file);
  }
  if (!strcmp(sub, "convert")) {
    if (!file || !out) {
      nq_model__usage(stderr);
      return 2;
    }
    return nq_model__convert(file, out);
  }
  fprintf(stderr, "nextq model: unknown subcommand '%s'\n", sub);
  nq_model__usage(stderr);
  return 2;
}

/* cli/module.h — `nextq module run`: runs one model component (or preprocessing step) on tensors.
 * This is how every port is checked against ../shared/golden (see its README). Each kind is one
 * function; the registry lives in cli/module_kinds.c. */
#ifndef NQ_CLI_MODULE_H
#define NQ_CLI_MODULE_H

#include "common/err.h"
#include "compute/io/safetensors.h"

typedef struct nq_module_ctx {
  const char *kind;          /* borrowed: the --kind value */
  const char *model_dir;     /* borrowed: --model, NULL when absent */
  const nq_st_file_t *in;    /* borrowed: --in, NULL when absent */
  nq_st_writer_t *out;       /* borrowed: add every output tensor here; saved to --out by the caller */
  int nparams;
  const char *const *keys;   /* borrowed: --param KEY=VALUE, in order */
  const char *const *vals;
  const char *dtype;         /* "f32" (default), "bf16" or "f16": the compute dtype */
  int threads;               /* compute threads (>= 1) */
} nq_module_ctx_t;

typedef int (*nq_module_fn)(const nq_module_ctx_t *ctx, nq_err_t *err);

/* Value of --param KEY (the last one wins), or NULL. Borrowed. */
const char *nq_module_param(const nq_module_ctx_t *ctx, const char *key);
/* Integer/float params with a default; a malformed value is an error naming the key. */
int nq_module_param_int(const nq_module_ctx_t *ctx, const char *key, long long def, long long *out, nq_err_t *err);
int nq_module_param_double(const nq_module_ctx_t *ctx, const char *key, double def, double *out, nq_err_t *err);
/* Input tensor by name converted to a freshly malloc'ed float32 array (caller frees); checks presence. */
int nq_module_input_f32(const nq_module_ctx_t *ctx, const char *name, float **out /* OUT owned */,
                        const nq_st_tensor_t **t /* OUT borrowed, may be NULL */, nq_err_t *err);

typedef struct nq_module_kind {
  const char *kind;
  nq_module_fn fn;
  const char *doc;
} nq_module_kind_t;

/* The registry (cli/module_kinds.c), terminated by a {NULL} row. */
extern const nq_module_kind_t nq_module_kinds[];

#endif

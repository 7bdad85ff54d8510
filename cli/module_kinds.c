/* cli/module_kinds.c — the `nextq module run` registry: one row per kind (../shared/golden/README.md). */
#include "cli/module.h"

const nq_module_kind_t nq_module_kinds[] = {
    {NULL, NULL, NULL},
};

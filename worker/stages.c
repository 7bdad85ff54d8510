/* worker/stages.c — the stage registry: one row per stage handler. */
#include <stdio.h>
#include <string.h>

#include "worker/stages.h"

static const nq_stage_t *const registry[] = {
    &nq_stage_noop,
    &nq_stage_llm,
    &nq_stage_encode,
    &nq_stage_generate_audio,
    &nq_stage_generate_video,
    &nq_stage_generate_image,
    &nq_stage_precompute,
    NULL,
};

const nq_stage_t *nq_stage_find(const char *name) {
  for (int i = 0; name && registry[i]; i++)
    if (strcmp(registry[i]->name, name) == 0) return registry[i];
  return NULL;
}

const char *nq_stage_names(void) {
  static char buf[512];
  if (!buf[0]) {
    size_t o = 0;
    for (int i = 0; registry[i] && o < sizeof buf - 1; i++)
      o += (size_t)snprintf(buf + o, sizeof buf - o, "%s%s", i ? "," : "", registry[i]->name);
  }
  return buf;
}

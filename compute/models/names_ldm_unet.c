/* Name map: diffusers UNet2DConditionModel state_dict names -> the original LDM / CompVis single-file names
 * (`model.diffusion_model.*`, e.g. v1-5-pruned-emaonly.safetensors), the inverse of diffusers'
 * convert_ldm_unet_checkpoint. The LDM layout numbers the blocks flatly:
 *
 *   input_blocks.0.0                conv_in
 *   input_blocks.{1+i(L+1)+j}.0     down_blocks.i.resnets.j       (.1 = attentions.j)
 *   input_blocks.{(i+1)(L+1)}.0.op  down_blocks.i.downsamplers.0.conv
 *   middle_block.{0,1,2}            mid_block.resnets.0, attentions.0, resnets.1
 *   output_blocks.{i(L+1)+j}.0      up_blocks.i.resnets.j         (.1 = attentions.j)
 *   output_blocks.{i(L+1)+L}.{1|2}.conv  up_blocks.i.upsamplers.0.conv (2 when the block has attentions)
 *   time_embed.{0,2}, out.{0,2}     time_embedding.linear_{1,2}, conv_norm_out / conv_out
 *
 * with L = layers_per_block, and inside a resnet: norm1 -> in_layers.0, conv1 -> in_layers.2,
 * time_emb_proj -> emb_layers.1, norm2 -> out_layers.0, conv2 -> out_layers.3, conv_shortcut -> skip_connection.
 * Transformer internals keep their names. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compute/models/unet_int.h"

#define NQ_LDM_PREFIX "model.diffusion_model."

typedef struct {
  const char *from, *to;
} nq_ldm__pair_t;

static const nq_ldm__pair_t nq_ldm__resnet[] = {
    {"norm1.", "in_layers.0."},         {"conv1.", "in_layers.2."},  {"time_emb_proj.", "emb_layers.1."},
    {"norm2.", "out_layers.0."},        {"conv2.", "out_layers.3."}, {"conv_shortcut.", "skip_connection."},
};

static const nq_ldm__pair_t nq_ldm__top[] = {
    {"time_embedding.linear_1.", "time_embed.0."},
    {"time_embedding.linear_2.", "time_embed.2."},
    {"conv_in.", "input_blocks.0.0."},
    {"conv_norm_out.", "out.0."},
    {"conv_out.", "out.2."},
};

static int nq_ldm__emit(char *out, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int nq_ldm__emit(char *out, size_t cap, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(out, cap, fmt, ap);
  va_end(ap);
  return n < 0 || (size_t)n >= cap ? NQ_ELIMIT : 0;
}

/* Resnet-internal rename of `rest` ("norm1.weight" -> "in_layers.0.weight"). */
static const char *nq_ldm__resnet_part(const char *rest, const char **tail) {
  for (size_t i = 0; i < sizeof nq_ldm__resnet / sizeof *nq_ldm__resnet; i++) {
    size_t n = strlen(nq_ldm__resnet[i].from);
    if (!strncmp(rest, nq_ldm__resnet[i].from, n)) {
      *tail = rest + n;
      return nq_ldm__resnet[i].to;
    }
  }
  return NULL;
}

/* "<kind>.<j>.<rest>" where kind is resnets/attentions: emits "<base>.<slot>.<mapped rest>". */
static int nq_ldm__layer(const char *p, const char *base, int block, char *out, size_t cap) {
  int j, used = 0;
  if (sscanf(p, "resnets.%d.%n", &j, &used) == 1 && used > 0) {
    const char *tail, *part = nq_ldm__resnet_part(p + used, &tail);
    if (!part) return NQ_ENOENT;
    return nq_ldm__emit(out, cap, NQ_LDM_PREFIX "%s.%d.0.%s%s", base, block + j, part, tail);
  }
  if (sscanf(p, "attentions.%d.%n", &j, &used) == 1 && used > 0)
    return nq_ldm__emit(out, cap, NQ_LDM_PREFIX "%s.%d.1.%s", base, block + j, p + used);
  return NQ_ENOENT;
}

int nq_unet__ldm_name(const nq_unet__arch_t *a, const char *name, char *out, size_t cap) {
  if (!a || !name) return NQ_EINVAL;
  int L = a->layers_per_block, i, j, used = 0;
  for (size_t k = 0; k < sizeof nq_ldm__top / sizeof *nq_ldm__top; k++) {
    size_t n = strlen(nq_ldm__top[k].from);
    if (!strncmp(name, nq_ldm__top[k].from, n))
      return nq_ldm__emit(out, cap, NQ_LDM_PREFIX "%s%s", nq_ldm__top[k].to, name + n);
  }
  if (sscanf(name, "down_blocks.%d.%n", &i, &used) == 1 && used > 0) {
    const char *p = name + used;
    if (i < 0 || i >= a->n_levels) return NQ_ENOENT;
    if (!strncmp(p, "downsamplers.0.conv.", 20))
      return nq_ldm__emit(out, cap, NQ_LDM_PREFIX "input_blocks.%d.0.op.%s", (i + 1) * (L + 1), p + 20);
    return nq_ldm__layer(p, "input_blocks", 1 + i * (L + 1), out, cap);
  }
  if (!strncmp(name, "mid_block.", 10)) {
    const char *p = name + 10;
    if (sscanf(p, "resnets.%d.%n", &j, &used) == 1 && used > 0) {
      const char *tail, *part = nq_ldm__resnet_part(p + used, &tail);
      if (!part || j < 0 || j > 1) return NQ_ENOENT;
      return nq_ldm__emit(out, cap, NQ_LDM_PREFIX "middle_block.%d.%s%s", 2 * j, part, tail);
    }
    if (!strncmp(p, "attentions.0.", 13)) return nq_ldm__emit(out, cap, NQ_LDM_PREFIX "middle_block.1.%s", p + 13);
    return NQ_ENOENT;
  }
  if (sscanf(name, "up_blocks.%d.%n", &i, &used) == 1 && used > 0) {
    const char *p = name + used;
    if (i < 0 || i >= a->n_levels) return NQ_ENOENT;
    if (!strncmp(p, "upsamplers.0.conv.", 18))
      return nq_ldm__emit(out, cap, NQ_LDM_PREFIX "output_blocks.%d.%d.conv.%s", i * (L + 1) + L, a->up_attn[i] ? 2 : 1,
                          p + 18);
    return nq_ldm__layer(p, "output_blocks", i * (L + 1), out, cap);
  }
  return NQ_ENOENT; /* class_embedding and friends have no LDM counterpart in SD-1.x/2.x files */
}

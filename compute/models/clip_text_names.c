/* compute/models/clip_text_names.c — the CLIP text encoder's checkpoint name maps.
 *
 * Every supported layout stores HF CLIPTextModel's tensors under one prefix, so the map is a prefix table:
 *   hf       text_model.embeddings.token_embedding.weight                       (transformers, diffusers text_encoder/)
 *   ldm-sd1  cond_stage_model.transformer.text_model.embeddings.token_embedding.weight
 *            (SD-1.x single-file checkpoints: v1-5-pruned-emaonly.safetensors / .ckpt; 196 tensors,
 *             ../shared/models/listings/sd15_text_encoder_clip_l_ldm.txt)
 * SD-2's OpenCLIP-H single file (`cond_stage_model.model.transformer.resblocks.N.attn.in_proj_weight`, packed qkv)
 * is a different structure, not a renaming: it is not in this table. */
#include <stdio.h>

#include "compute/models/clip_text.h"

const nq_clip_text_layout_t nq_clip_text_layouts[] = {
    {"hf", "", "transformers CLIPTextModel / diffusers text_encoder/"},
    {"ldm-sd1", "cond_stage_model.transformer.", "SD-1.x single-file checkpoint (cond_stage_model.transformer.*)"},
    {NULL, NULL, NULL},
};

const char *nq_clip_text_name(const nq_clip_text_layout_t *layout, const char *hf_name, char *buf, size_t n) {
  snprintf(buf, n, "%s%s", layout ? layout->prefix : "", hf_name);
  return buf;
}

const nq_clip_text_layout_t *nq_clip_text_detect(const nq_ckpt_t *ck) {
  char nm[256];
  for (const nq_clip_text_layout_t *l = nq_clip_text_layouts; l->name; l++)
    if (nq_ckpt_find(ck, nq_clip_text_name(l, "text_model.embeddings.token_embedding.weight", nm, sizeof nm))) return l;
  return NULL;
}

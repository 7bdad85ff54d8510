/* compute/pipelines/nextgpt_tiny_media.c — the encoder side of `nextq model init-tiny`: ImageBind-tiny.
 *
 * OUT/imagebind/model.safetensors holds both trunks NExT-GPT uses (vision and audio) under ImageBind's own
 * state_dict names (modality_preprocessors.*, modality_trunks.*, modality_heads.*), so nq_imagebind_load reads it
 * exactly as imagebind_huge.pth (the encode stage picks the trunk by the media kind); OUT/imagebind/config.json
 * (schema imagebind-dims/1, no "modality": it holds both) gives the head counts. Widths are tiny (32, one block,
 * 4 heads) but the token layouts are the real ones (vision 2x14x14 patches of 224x224 -> 257 tokens; audio 16x16
 * stride 10 on 128x204 fbanks -> 229 tokens, learned bias_k/bias_v) and the output is 1024-d, what llama_proj takes.
 * Weights are seeded random (no trained ImageBind this small exists). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compute/core/tensor.h"
#include "compute/io/safetensors.h"
#include "compute/pipelines/nextgpt_tiny.h"

enum { IBE = 32, IBF = 128, IBOUT = 1024, IBHEADS = 4 };

typedef struct {
  uint64_t s;
} ibt_rng_t;

static float ibt_u(ibt_rng_t *r) { /* uniform [-1, 1) */
  r->s ^= r->s >> 12, r->s ^= r->s << 25, r->s ^= r->s >> 27;
  uint64_t x = r->s * 0x2545F4914F6CDD1Dull;
  return (float)((double)(x >> 11) * (1.0 / 9007199254740992.0) * 2.0 - 1.0);
}

static int ibt_add(nq_st_writer_t *st, ibt_rng_t *r, const char *name, int ndim, const int64_t *shape, float scale,
                   float offset, nq_err_t *err) {
  int64_t n = 1;
  for (int i = 0; i < ndim; i++) n *= shape[i];
  float *p = malloc(sizeof(float) * (size_t)n);
  if (!p) return nq_err_set(err, NQ_ENOMEM, 0, "out of memory");
  for (int64_t i = 0; i < n; i++) p[i] = offset + scale * ibt_u(r);
  int rc = nq_st_writer_add_f32(st, name, ndim, shape, p, err);
  free(p);
  return rc;
}

static int ibt_trunk(nq_st_writer_t *st, ibt_rng_t *r, const char *mod, nq_err_t *err) {
  const bool vis = !strcmp(mod, "vision");
  const int T = vis ? 257 : 229;
  const float sw = 1.0f / sqrtf((float)IBE), sf = 1.0f / sqrtf((float)IBF);
  char n[256];
  int rc = 0;
#define IBT(nd, shp, sc, off, ...)                                \
  if (!rc) {                                                      \
    snprintf(n, sizeof n, __VA_ARGS__);                           \
    rc = ibt_add(st, r, n, nd, shp, sc, off, err);                \
  }
  IBT(3, NQ_SHAPE(1, 1, IBE), 0.02f, 0, "modality_preprocessors.%s.cls_token", mod);
  if (vis) {
    IBT(5, NQ_SHAPE(IBE, 3, 2, 14, 14), 1.0f / sqrtf(3.0f * 2 * 14 * 14), 0, "modality_preprocessors.vision.rgbt_stem.proj.1.weight");
  } else {
    IBT(4, NQ_SHAPE(IBE, 1, 16, 16), 1.0f / 16.0f, 0, "modality_preprocessors.audio.rgbt_stem.proj.weight");
    IBT(1, NQ_SHAPE(IBE), 0.1f, 1.0f, "modality_preprocessors.audio.rgbt_stem.norm_layer.weight");
    IBT(1, NQ_SHAPE(IBE), 0.02f, 0, "modality_preprocessors.audio.rgbt_stem.norm_layer.bias");
  }
  IBT(3, NQ_SHAPE(1, T, IBE), 0.02f, 0, "modality_preprocessors.%s.pos_embedding_helper.pos_embed", mod);
  if (vis) {
    IBT(1, NQ_SHAPE(IBE), 0.1f, 1.0f, "modality_trunks.vision.pre_transformer_layer.0.weight");
    IBT(1, NQ_SHAPE(IBE), 0.02f, 0, "modality_trunks.vision.pre_transformer_layer.0.bias");
  }
  const char *b = "modality_trunks";
  IBT(1, NQ_SHAPE(IBE), 0.1f, 1.0f, "%s.%s.blocks.0.norm_1.weight", b, mod);
  IBT(1, NQ_SHAPE(IBE), 0.02f, 0, "%s.%s.blocks.0.norm_1.bias", b, mod);
  IBT(1, NQ_SHAPE(IBE), 0.1f, 1.0f, "%s.%s.blocks.0.norm_2.weight", b, mod);
  IBT(1, NQ_SHAPE(IBE), 0.02f, 0, "%s.%s.blocks.0.norm_2.bias", b, mod);
  IBT(2, NQ_SHAPE(3 * IBE, IBE), sw, 0, "%s.%s.blocks.0.attn.in_proj_weight", b, mod);
  IBT(1, NQ_SHAPE(3 * IBE), 0.02f, 0, "%s.%s.blocks.0.attn.in_proj_bias", b, mod);
  IBT(2, NQ_SHAPE(IBE, IBE), sw, 0, "%s.%s.blocks.0.attn.out_proj.weight", b, mod);
  IBT(1, NQ_SHAPE(IBE), 0.02f, 0, "%s.%s.blocks.0.attn.out_proj.bias", b, mod);
  IBT(2, NQ_SHAPE(IBF, IBE), sw, 0, "%s.%s.blocks.0.mlp.fc1.weight", b, mod);
  IBT(1, NQ_SHAPE(IBF), 0.02f, 0, "%s.%s.blocks.0.mlp.fc1.bias", b, mod);
  IBT(2, NQ_SHAPE(IBE, IBF), sf, 0, "%s.%s.blocks.0.mlp.fc2.weight", b, mod);
  IBT(1, NQ_SHAPE(IBE), 0.02f, 0, "%s.%s.blocks.0.mlp.fc2.bias", b, mod);
  if (!vis) {
    IBT(3, NQ_SHAPE(1, 1, IBE), 0.02f, 0, "%s.audio.blocks.0.attn.bias_k", b);
    IBT(3, NQ_SHAPE(1, 1, IBE), 0.02f, 0, "%s.audio.blocks.0.attn.bias_v", b);
  }
  IBT(1, NQ_SHAPE(IBE), 0.1f, 1.0f, "modality_heads.%s.0.weight", mod);
  IBT(1, NQ_SHAPE(IBE), 0.02f, 0, "modality_heads.%s.0.bias", mod);
  IBT(2, NQ_SHAPE(IBOUT, IBE), sw, 0, "modality_heads.%s.2.weight", mod);
#undef IBT
  return rc;
}

int nq_nextgpt_tiny__imagebind(const char *dir, uint64_t seed, nq_err_t *err);

int nq_nextgpt_tiny__imagebind(const char *dir, uint64_t seed, nq_err_t *err) {
  ibt_rng_t r = {seed * 0xD1B54A32D192ED03ull + 0x8CB92BA72F3D8DD7ull};
  nq_st_writer_t *st = nq_st_writer_new();
  if (!st) return nq_err_set(err, NQ_ENOMEM, 0, "out of memory");
  int rc = ibt_trunk(st, &r, "vision", err);
  if (!rc) rc = ibt_trunk(st, &r, "audio", err);
  if (!rc) rc = nq_st_writer_set_metadata(st, "format", "imagebind-tiny", err);
  char p[4200];
  snprintf(p, sizeof p, "%s/model.safetensors", dir);
  if (!rc) rc = nq_st_writer_save(st, p, err);
  nq_st_writer_free(st);
  if (rc) return rc;
  char js[1024];
  snprintf(js, sizeof js,
           "{\n  \"schema\": \"imagebind-dims/1\",\n  \"video_frames\": 2,\n  \"kernel_size\": [2, 14, 14],\n"
           "  \"img_size\": [3, 2, 224, 224],\n  \"vision_embed_dim\": %d,\n  \"vision_num_blocks\": 1,\n"
           "  \"vision_num_heads\": %d,\n  \"audio_kernel_size\": 16,\n  \"audio_stride\": 10,\n"
           "  \"audio_num_mel_bins\": 128,\n  \"audio_target_len\": 204,\n  \"audio_embed_dim\": %d,\n"
           "  \"audio_num_blocks\": 1,\n  \"audio_num_heads\": %d,\n  \"out_embed_dim\": %d\n}\n",
           IBE, IBHEADS, IBE, IBHEADS, IBOUT);
  snprintf(p, sizeof p, "%s/config.json", dir);
  FILE *f = fopen(p, "wb");
  if (!f) return nq_err_set(err, NQ_EIO, NQ_ERR_FATAL, "%s: cannot write", p);
  bool ok = fputs(js, f) >= 0;
  ok = fclose(f) == 0 && ok;
  return ok ? 0 : nq_err_set(err, NQ_EIO, NQ_ERR_FATAL, "%s: write failed", p);
}

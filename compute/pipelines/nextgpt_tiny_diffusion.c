/* compute/pipelines/nextgpt_tiny_diffusion.c — the decoder side of `nextq model init-tiny`: tiny diffusers pipeline
 * directories in the real on-disk layouts, so compute/pipelines/sd.h, audioldm.h and zeroscope.h load them exactly as
 * they load stable-diffusion-v1-5, audioldm-l-full and zeroscope_v2_576w.
 *
 *   OUT/sd/         model_index.json, unet/ (UNet2DConditionModel, cross_attention_dim 768: NExT-GPT's image cond
 *                   [77,768] goes in unchanged), vae/ (AutoencoderKL, 4 levels: 1/8 scale, so TAESD fits), text_encoder/
 *                   (CLIPTextModel, hidden 768: the unconditional CLIP("") row matches the cond width), tokenizer/
 *                   (a synthetic byte-level CLIP BPE vocabulary: 256 bytes, 256 "</w>" bytes, a few merges, the two
 *                   specials), scheduler/scheduler_config.json (SD-1.5's PNDM, as released).
 *   OUT/zeroscope/  unet/ (UNet3DConditionModel, cross_attention_dim 1024), vae/, text_encoder/ (hidden 1024, gelu,
 *                   padded with id 0 as open_clip), tokenizer/, scheduler/ (DDIM).
 *   OUT/audioldm/   unet/ (UNet2DConditionModel with simple_projection class embeddings of 512 inputs, concatenated,
 *                   8 latent channels), vae/ (1 in/out channel), vocoder/ (SpeechT5HifiGan, 16 kHz, x160), scheduler/
 *                   (DDIM). No CLAP text encoder: requests carry NExT-GPT's audio cond and run with guidance <= 1.
 *   OUT/taesd/      taesd_decoder.safetensors copied from models_dir/taesd when present (the real TAESD).
 *
 * Every weight is drawn from a seeded generator (uniform, 1/sqrt(fan_in) for weights, 1 +- 0.1 for norm scales):
 * the same seed gives byte-identical files. Names and shapes follow diffusers 0.21 / transformers (checked against the
 * golden case listings in ../shared/golden by tests/integration/test_nextgpt_chain.c). */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "compute/core/tensor.h"
#include "compute/io/safetensors.h"
#include "compute/pipelines/nextgpt_tiny.h"

/* ---- seeded tensor writer ---- */

enum { TW_W, TW_B, TW_G, TW_Z, TW_E };

typedef struct tw {
  nq_st_writer_t *st; /* owned */
  uint64_t s;         /* xorshift state */
  int rc;             /* first error */
  nq_err_t *err;      /* borrowed */
} tw_t;

static float tw_u(tw_t *w) { /* uniform [-1, 1) */
  w->s ^= w->s >> 12, w->s ^= w->s << 25, w->s ^= w->s >> 27;
  uint64_t x = w->s * 0x2545F4914F6CDD1Dull;
  return (float)((double)(x >> 11) * (1.0 / 9007199254740992.0) * 2.0 - 1.0);
}

/* Adds a tensor named by fmt: TW_W weights (fan_in = prod(shape[1:])), TW_B biases, TW_G norm scales, TW_Z norm
 * shifts, TW_E embeddings. */
static void tw_add(tw_t *w, int kind, int ndim, const int64_t *shape, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static void tw_add(tw_t *w, int kind, int ndim, const int64_t *shape, const char *fmt, ...) {
  if (w->rc) return;
  char name[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(name, sizeof name, fmt, ap);
  va_end(ap);
  int64_t n = 1, fan = 1;
  for (int i = 0; i < ndim; i++) n *= shape[i];
  for (int i = 1; i < ndim; i++) fan *= shape[i];
  float scale = 0.02f, off = 0;
  if (kind == TW_W) scale = 1.0f / sqrtf((float)fan);
  else if (kind == TW_G) scale = 0.1f, off = 1.0f;
  else if (kind == TW_E) scale = 0.5f;
  float *p = malloc(sizeof(float) * (size_t)n);
  if (!p) {
    w->rc = nq_err_set(w->err, NQ_ENOMEM, 0, "out of memory for %s", name);
    return;
  }
  for (int64_t i = 0; i < n; i++) p[i] = off + scale * tw_u(w);
  w->rc = nq_st_writer_add_f32(w->st, name, ndim, shape, p, w->err);
  free(p);
}

static void tw_norm(tw_t *w, const char *p, int64_t c) {
  tw_add(w, TW_G, 1, NQ_SHAPE(c), "%s.weight", p);
  tw_add(w, TW_Z, 1, NQ_SHAPE(c), "%s.bias", p);
}

static void tw_lin(tw_t *w, const char *p, int64_t out, int64_t in, int bias) {
  tw_add(w, TW_W, 2, NQ_SHAPE(out, in), "%s.weight", p);
  if (bias) tw_add(w, TW_B, 1, NQ_SHAPE(out), "%s.bias", p);
}

static void tw_conv(tw_t *w, const char *p, int64_t co, int64_t ci, int64_t k) {
  tw_add(w, TW_W, 4, NQ_SHAPE(co, ci, k, k), "%s.weight", p);
  tw_add(w, TW_B, 1, NQ_SHAPE(co), "%s.bias", p);
}

static int tw_begin(tw_t *w, uint64_t seed, uint64_t salt, nq_err_t *err) {
  memset(w, 0, sizeof *w);
  w->s = (seed + 1) * 0x9E3779B97F4A7C15ull ^ salt;
  if (!w->s) w->s = 1;
  w->err = err;
  w->st = nq_st_writer_new();
  return w->st ? 0 : (w->rc = nq_err_set(err, NQ_ENOMEM, 0, "out of memory"));
}

static int tw_end(tw_t *w, const char *path) {
  if (!w->rc) w->rc = nq_st_writer_save(w->st, path, w->err);
  nq_st_writer_free(w->st);
  w->st = NULL;
  return w->rc;
}

/* ---- files ---- */

static int td_mkdir(const char *p, nq_err_t *err) {
  if (mkdir(p, 0755) != 0 && errno != EEXIST) return nq_err_set(err, NQ_EIO, NQ_ERR_FATAL, "mkdir %s: %s", p, strerror(errno));
  return 0;
}

static int td_write(const char *path, const void *d, size_t n, nq_err_t *err) {
  char tmp[4200];
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  FILE *f = fopen(tmp, "wb");
  if (!f) return nq_err_set(err, NQ_EIO, NQ_ERR_FATAL, "%s: %s", tmp, strerror(errno));
  bool ok = fwrite(d, 1, n, f) == n;
  ok = fclose(f) == 0 && ok;
  if (!ok || rename(tmp, path) != 0) return nq_err_set(err, NQ_EIO, NQ_ERR_FATAL, "%s: write failed", path);
  return 0;
}

static int td_text(const char *dir, const char *name, const char *text, nq_err_t *err) {
  char p[4300];
  snprintf(p, sizeof p, "%s/%s", dir, name);
  return td_write(p, text, strlen(text), err);
}

static int td_sub(char *out, size_t cap, const char *dir, const char *sub, nq_err_t *err) {
  snprintf(out, cap, "%s/%s", dir, sub);
  return td_mkdir(out, err);
}

/* ---- UNet2D / UNet3D (diffusers 0.21 UNet2DConditionModel / UNet3DConditionModel) ---- */

typedef struct td_unet {
  bool is3d;
  int in_ch, out_ch, n, lpb, head_value, groups, sample_size;
  int boc[4];
  bool down_attn[4];   /* per down level; the up levels mirror it */
  int cross;           /* cross_attention_dim (2D AudioLDM: 0 = per level = the channels) */
  int class_in;        /* simple_projection input dim, 0 = none (always concatenated) */
} td_unet_t;

static void td_resnet(tw_t *w, const char *p, int cin, int cout, int temb) {
  char b[256];
  snprintf(b, sizeof b, "%s.norm1", p), tw_norm(w, b, cin);
  snprintf(b, sizeof b, "%s.conv1", p), tw_conv(w, b, cout, cin, 3);
  if (temb) snprintf(b, sizeof b, "%s.time_emb_proj", p), tw_lin(w, b, cout, temb, 1);
  snprintf(b, sizeof b, "%s.norm2", p), tw_norm(w, b, cout);
  snprintf(b, sizeof b, "%s.conv2", p), tw_conv(w, b, cout, cout, 3);
  if (cin != cout) snprintf(b, sizeof b, "%s.conv_shortcut", p), tw_conv(w, b, cout, cin, 1);
}

/* BasicTransformerBlock: attn1 self, attn2 with keys of width kv, GEGLU feed-forward. */
static void td_tblock(tw_t *w, const char *p, int inner, int kv) {
  char b[256];
  for (int k = 1; k <= 3; k++) snprintf(b, sizeof b, "%s.norm%d", p, k), tw_norm(w, b, inner);
  for (int a = 1; a <= 2; a++) {
    snprintf(b, sizeof b, "%s.attn%d.to_q", p, a), tw_lin(w, b, inner, inner, 0);
    snprintf(b, sizeof b, "%s.attn%d.to_k", p, a), tw_lin(w, b, inner, a == 1 ? inner : kv, 0);
    snprintf(b, sizeof b, "%s.attn%d.to_v", p, a), tw_lin(w, b, inner, a == 1 ? inner : kv, 0);
    snprintf(b, sizeof b, "%s.attn%d.to_out.0", p, a), tw_lin(w, b, inner, inner, 1);
  }
  snprintf(b, sizeof b, "%s.ff.net.0.proj", p), tw_lin(w, b, 8 * inner, inner, 1);
  snprintf(b, sizeof b, "%s.ff.net.2", p), tw_lin(w, b, inner, 4 * inner, 1);
}

/* Transformer2DModel (conv 1x1 proj_in/out) or TransformerTemporalModel (linear, self-attention only). */
static void td_transformer(tw_t *w, const char *p, int c, int inner, int cross, bool temporal) {
  char b[256];
  snprintf(b, sizeof b, "%s.norm", p), tw_norm(w, b, c);
  snprintf(b, sizeof b, "%s.proj_in", p);
  if (temporal) tw_lin(w, b, inner, c, 1);
  else tw_conv(w, b, inner, c, 1);
  snprintf(b, sizeof b, "%s.transformer_blocks.0", p), td_tblock(w, b, inner, temporal ? inner : cross);
  snprintf(b, sizeof b, "%s.proj_out", p);
  if (temporal) tw_lin(w, b, c, inner, 1);
  else tw_conv(w, b, c, inner, 1);
}

/* TemporalConvLayer: conv1 = (GroupNorm, SiLU, Conv3d (3,1,1)), conv2..4 = (GroupNorm, SiLU, Dropout, Conv3d). */
static void td_tconv(tw_t *w, const char *p, int c) {
  for (int k = 1; k <= 4; k++) {
    int ci = k == 1 ? 2 : 3;
    char b[256];
    snprintf(b, sizeof b, "%s.conv%d.0", p, k), tw_norm(w, b, c);
    tw_add(w, TW_W, 5, NQ_SHAPE(c, c, 3, 1, 1), "%s.conv%d.%d.weight", p, k, ci);
    tw_add(w, TW_B, 1, NQ_SHAPE(c), "%s.conv%d.%d.bias", p, k, ci);
  }
}

static void td_unet_weights(tw_t *w, const td_unet_t *u) {
  const int n = u->n, ted = 4 * u->boc[0], temb = u->class_in ? 2 * ted : ted;
  char p[256], b[256];
  tw_conv(w, "conv_in", u->boc[0], u->in_ch, 3);
  tw_lin(w, "time_embedding.linear_1", ted, u->boc[0], 1);
  tw_lin(w, "time_embedding.linear_2", ted, ted, 1);
  if (u->class_in) tw_lin(w, "class_embedding", ted, u->class_in, 1);
  if (u->is3d) td_transformer(w, "transformer_in", u->boc[0], 8 * u->head_value, 0, true);
#define TD_CROSS(lvl) (u->cross ? u->cross : u->boc[lvl])
  for (int i = 0; i < n; i++) {
    const int c = u->boc[i], cin = i ? u->boc[i - 1] : u->boc[0];
    for (int j = 0; j < u->lpb; j++) {
      snprintf(p, sizeof p, "down_blocks.%d", i);
      snprintf(b, sizeof b, "%s.resnets.%d", p, j), td_resnet(w, b, j ? c : cin, c, temb);
      if (u->is3d) snprintf(b, sizeof b, "%s.temp_convs.%d", p, j), td_tconv(w, b, c);
      if (u->down_attn[i]) {
        snprintf(b, sizeof b, "%s.attentions.%d", p, j), td_transformer(w, b, c, c, TD_CROSS(i), false);
        if (u->is3d) snprintf(b, sizeof b, "%s.temp_attentions.%d", p, j), td_transformer(w, b, c, c, 0, true);
      }
    }
    if (i < n - 1) snprintf(b, sizeof b, "down_blocks.%d.downsamplers.0.conv", i), tw_conv(w, b, c, c, 3);
  }
  const int cm = u->boc[n - 1];
  td_resnet(w, "mid_block.resnets.0", cm, cm, temb);
  if (u->is3d) td_tconv(w, "mid_block.temp_convs.0", cm);
  td_transformer(w, "mid_block.attentions.0", cm, cm, TD_CROSS(n - 1), false);
  if (u->is3d) td_transformer(w, "mid_block.temp_attentions.0", cm, cm, 0, true);
  td_resnet(w, "mid_block.resnets.1", cm, cm, temb);
  if (u->is3d) td_tconv(w, "mid_block.temp_convs.1", cm);
  for (int i = 0; i < n; i++) {
    const int out = u->boc[n - 1 - i], prev = u->boc[n - 1 - (i ? i - 1 : 0)];
    const int inblk = u->boc[n - 1 - (i + 1 < n ? i + 1 : n - 1)];
    const bool attn = u->down_attn[n - 1 - i];
    for (int j = 0; j <= u->lpb; j++) {
      const int skip = j == u->lpb ? inblk : out, rin = j ? out : prev;
      snprintf(p, sizeof p, "up_blocks.%d", i);
      snprintf(b, sizeof b, "%s.resnets.%d", p, j), td_resnet(w, b, rin + skip, out, temb);
      if (u->is3d) snprintf(b, sizeof b, "%s.temp_convs.%d", p, j), td_tconv(w, b, out);
      if (attn) {
        snprintf(b, sizeof b, "%s.attentions.%d", p, j), td_transformer(w, b, out, out, TD_CROSS(n - 1 - i), false);
        if (u->is3d) snprintf(b, sizeof b, "%s.temp_attentions.%d", p, j), td_transformer(w, b, out, out, 0, true);
      }
    }
    if (i < n - 1) snprintf(b, sizeof b, "up_blocks.%d.upsamplers.0.conv", i), tw_conv(w, b, out, out, 3);
  }
#undef TD_CROSS
  tw_norm(w, "conv_norm_out", u->boc[0]);
  tw_conv(w, "conv_out", u->out_ch, u->boc[0], 3);
}

/* JSON list of n ints. */
static void td_ints(char *o, size_t cap, const int *v, int n) {
  size_t k = (size_t)snprintf(o, cap, "[");
  for (int i = 0; i < n && k < cap; i++) k += (size_t)snprintf(o + k, cap - k, "%s%d", i ? ", " : "", v[i]);
  if (k < cap) snprintf(o + k, cap - k, "]");
}

static int td_unet_write(const char *dir, const td_unet_t *u, uint64_t seed, uint64_t salt, nq_err_t *err) {
  char sub[4200], p[4300], boc[128], down[256] = "[", up[256] = "[", cross[128];
  int rc = td_sub(sub, sizeof sub, dir, "unet", err);
  if (rc) return rc;
  td_ints(boc, sizeof boc, u->boc, u->n);
  const char *d2 = u->is3d ? "DownBlock3D" : "DownBlock2D", *da = u->is3d ? "CrossAttnDownBlock3D" : "CrossAttnDownBlock2D";
  const char *u2 = u->is3d ? "UpBlock3D" : "UpBlock2D", *ua = u->is3d ? "CrossAttnUpBlock3D" : "CrossAttnUpBlock2D";
  for (int i = 0; i < u->n; i++) {
    snprintf(down + strlen(down), sizeof down - strlen(down), "%s\"%s\"", i ? ", " : "", u->down_attn[i] ? da : d2);
    snprintf(up + strlen(up), sizeof up - strlen(up), "%s\"%s\"", i ? ", " : "", u->down_attn[u->n - 1 - i] ? ua : u2);
  }
  strcat(down, "]"), strcat(up, "]");
  if (u->cross) snprintf(cross, sizeof cross, "%d", u->cross);
  else td_ints(cross, sizeof cross, u->boc, u->n);
  char cls[256] = "";
  if (u->class_in)
    snprintf(cls, sizeof cls,
             "  \"class_embed_type\": \"simple_projection\",\n  \"class_embeddings_concat\": true,\n"
             "  \"projection_class_embeddings_input_dim\": %d,\n",
             u->class_in);
  char cfg[4096];
  snprintf(cfg, sizeof cfg,
           "{\n  \"_class_name\": \"%s\",\n  \"_diffusers_version\": \"0.21.4\",\n  \"_nextq_tiny\": true,\n"
           "  \"act_fn\": \"silu\",\n  \"attention_head_dim\": %d,\n  \"block_out_channels\": %s,\n%s"
           "  \"cross_attention_dim\": %s,\n  \"down_block_types\": %s,\n  \"downsample_padding\": 1,\n"
           "%s  \"in_channels\": %d,\n  \"layers_per_block\": %d,\n  \"mid_block_scale_factor\": 1,\n"
           "  \"norm_eps\": 1e-05,\n  \"norm_num_groups\": %d,\n  \"out_channels\": %d,\n  \"sample_size\": %d,\n"
           "  \"up_block_types\": %s%s\n}\n",
           u->is3d ? "UNet3DConditionModel" : "UNet2DConditionModel", u->head_value, boc, cls, cross, down,
           u->is3d ? "" : "  \"flip_sin_to_cos\": true,\n  \"freq_shift\": 0,\n  \"center_input_sample\": false,\n"
                          "  \"mid_block_type\": \"UNetMidBlock2DCrossAttn\",\n  \"use_linear_projection\": false,\n",
           u->in_ch, u->lpb, u->groups, u->out_ch, u->sample_size, up, "");
  if ((rc = td_text(sub, "config.json", cfg, err))) return rc;
  tw_t w;
  if ((rc = tw_begin(&w, seed, salt, err))) return rc;
  td_unet_weights(&w, u);
  snprintf(p, sizeof p, "%s/diffusion_pytorch_model.safetensors", sub);
  return tw_end(&w, p);
}

/* ---- AutoencoderKL ---- */

typedef struct td_vae {
  int in_ch, out_ch, latent, n, lpb, groups, sample_size;
  int boc[4];
  float scaling;
} td_vae_t;

static void td_vae_mid(tw_t *w, const char *p, int c) {
  char b[256];
  snprintf(b, sizeof b, "%s.resnets.0", p), td_resnet(w, b, c, c, 0);
  snprintf(b, sizeof b, "%s.attentions.0.group_norm", p), tw_norm(w, b, c);
  static const char *const l[4] = {"to_q", "to_k", "to_v", "to_out.0"};
  for (int k = 0; k < 4; k++) snprintf(b, sizeof b, "%s.attentions.0.%s", p, l[k]), tw_lin(w, b, c, c, 1);
  snprintf(b, sizeof b, "%s.resnets.1", p), td_resnet(w, b, c, c, 0);
}

static int td_vae_write(const char *dir, const td_vae_t *v, uint64_t seed, uint64_t salt, nq_err_t *err) {
  char sub[4200], p[4300], boc[128], down[512] = "[", up[512] = "[";
  int rc = td_sub(sub, sizeof sub, dir, "vae", err);
  if (rc) return rc;
  td_ints(boc, sizeof boc, v->boc, v->n);
  for (int i = 0; i < v->n; i++) {
    snprintf(down + strlen(down), sizeof down - strlen(down), "%s\"DownEncoderBlock2D\"", i ? ", " : "");
    snprintf(up + strlen(up), sizeof up - strlen(up), "%s\"UpDecoderBlock2D\"", i ? ", " : "");
  }
  strcat(down, "]"), strcat(up, "]");
  char cfg[2048];
  snprintf(cfg, sizeof cfg,
           "{\n  \"_class_name\": \"AutoencoderKL\",\n  \"_diffusers_version\": \"0.21.4\",\n  \"_nextq_tiny\": true,\n"
           "  \"act_fn\": \"silu\",\n  \"block_out_channels\": %s,\n  \"down_block_types\": %s,\n"
           "  \"in_channels\": %d,\n  \"latent_channels\": %d,\n  \"layers_per_block\": %d,\n"
           "  \"norm_num_groups\": %d,\n  \"out_channels\": %d,\n  \"sample_size\": %d,\n  \"scaling_factor\": %g,\n"
           "  \"up_block_types\": %s\n}\n",
           boc, down, v->in_ch, v->latent, v->lpb, v->groups, v->out_ch, v->sample_size, (double)v->scaling, up);
  if ((rc = td_text(sub, "config.json", cfg, err))) return rc;
  tw_t w;
  if ((rc = tw_begin(&w, seed, salt, err))) return rc;
  const int n = v->n, cl = v->boc[n - 1];
  char b[256];
  tw_conv(&w, "encoder.conv_in", v->boc[0], v->in_ch, 3);
  for (int i = 0; i < n; i++) {
    const int c = v->boc[i], cin = i ? v->boc[i - 1] : v->boc[0];
    for (int j = 0; j < v->lpb; j++)
      snprintf(b, sizeof b, "encoder.down_blocks.%d.resnets.%d", i, j), td_resnet(&w, b, j ? c : cin, c, 0);
    if (i < n - 1) snprintf(b, sizeof b, "encoder.down_blocks.%d.downsamplers.0.conv", i), tw_conv(&w, b, c, c, 3);
  }
  td_vae_mid(&w, "encoder.mid_block", cl);
  tw_norm(&w, "encoder.conv_norm_out", cl);
  tw_conv(&w, "encoder.conv_out", 2 * v->latent, cl, 3);
  tw_conv(&w, "quant_conv", 2 * v->latent, 2 * v->latent, 1);
  tw_conv(&w, "post_quant_conv", v->latent, v->latent, 1);
  tw_conv(&w, "decoder.conv_in", cl, v->latent, 3);
  td_vae_mid(&w, "decoder.mid_block", cl);
  for (int i = 0; i < n; i++) {
    const int out = v->boc[n - 1 - i], prev = v->boc[n - 1 - (i ? i - 1 : 0)];
    for (int j = 0; j <= v->lpb; j++)
      snprintf(b, sizeof b, "decoder.up_blocks.%d.resnets.%d", i, j), td_resnet(&w, b, j ? out : prev, out, 0);
    if (i < n - 1) snprintf(b, sizeof b, "decoder.up_blocks.%d.upsamplers.0.conv", i), tw_conv(&w, b, out, out, 3);
  }
  tw_norm(&w, "decoder.conv_norm_out", v->boc[0]);
  tw_conv(&w, "decoder.conv_out", v->out_ch, v->boc[0], 3);
  snprintf(p, sizeof p, "%s/diffusion_pytorch_model.safetensors", sub);
  return tw_end(&w, p);
}

/* ---- CLIP text encoder + a synthetic byte-level CLIP BPE tokenizer ---- */

/* GPT-2 / CLIP bytes_to_unicode: byte b -> its code point. */
static int td_b2u(int b) {
  if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255)) return b;
  int n = 0;
  for (int x = 0; x < b; x++)
    if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255))) n++;
  return 256 + n;
}

static size_t td_utf8(char *o, int cp) {
  if (cp < 0x80) return o[0] = (char)cp, 1;
  o[0] = (char)(0xC0 | (cp >> 6)), o[1] = (char)(0x80 | (cp & 0x3F));
  return 2;
}

/* A JSON string body for the symbol of byte b (escaping '"' and '\\'). */
static void td_sym(char *o, int b) {
  char u[4];
  size_t n = td_utf8(u, td_b2u(b));
  if (n == 1 && (u[0] == '"' || u[0] == '\\')) o[0] = '\\', o[1] = u[0], o[2] = 0;
  else memcpy(o, u, n), o[n] = 0;
}

/* Merges of the synthetic vocabulary: common English letter pairs ("t h" -> "th", "th e</w>" -> "the</w>"...). */
static const char *const td_merges[][2] = {{"t", "h"}, {"th", "e</w>"}, {"a", "n"}, {"an", "d</w>"}, {"i", "n"},
                                           {"e", "r"}, {"o", "n</w>"}, {"a", "t</w>"}, {"o", "f</w>"}, {"i", "s</w>"},
                                           {"o", "u"}, {"e", "n"}, {"r", "e</w>"}, {"in", "g</w>"}, {"a", "</w>"}};
#define TD_N_MERGES (int)(sizeof td_merges / sizeof *td_merges)
#define TD_CLIP_VOCAB (512 + TD_N_MERGES + 2)

static int td_tokenizer_write(const char *dir, bool pad_zero, nq_err_t *err) {
  char sub[4200];
  int rc = td_sub(sub, sizeof sub, dir, "tokenizer", err);
  if (rc) return rc;
  size_t cap = 64 * 1024, k = 0;
  char *js = malloc(cap), sym[8];
  if (!js) return nq_err_set(err, NQ_ENOMEM, 0, "out of memory");
  int id = 0;
  k += (size_t)snprintf(js + k, cap - k, "{");
  for (int pass = 0; pass < 2; pass++)
    for (int b = 0; b < 256; b++) {
      td_sym(sym, b);
      k += (size_t)snprintf(js + k, cap - k, "%s\"%s%s\": %d", id ? ", " : "", sym, pass ? "</w>" : "", id);
      id++;
    }
  for (int m = 0; m < TD_N_MERGES; m++)
    k += (size_t)snprintf(js + k, cap - k, ", \"%s%s\": %d", td_merges[m][0], td_merges[m][1], id++);
  k += (size_t)snprintf(js + k, cap - k, ", \"<|startoftext|>\": %d, \"<|endoftext|>\": %d}\n", id, id + 1);
  rc = td_text(sub, "vocab.json", js, err);
  k = (size_t)snprintf(js, cap, "#version: 0.2 (nextq tiny: a synthetic byte-level vocabulary)\n");
  for (int m = 0; m < TD_N_MERGES; m++) k += (size_t)snprintf(js + k, cap - k, "%s %s\n", td_merges[m][0], td_merges[m][1]);
  if (!rc) rc = td_text(sub, "merges.txt", js, err);
  snprintf(js, cap,
           "{\n  \"bos_token\": \"<|startoftext|>\",\n  \"eos_token\": \"<|endoftext|>\",\n  \"pad_token\": \"%s\",\n"
           "  \"unk_token\": \"<|endoftext|>\",\n  \"model_max_length\": 77,\n  \"tokenizer_class\": \"CLIPTokenizer\"\n}\n",
           pad_zero ? "!" : "<|endoftext|>");
  if (!rc) rc = td_text(sub, "tokenizer_config.json", js, err);
  free(js);
  return rc;
}

static int td_clip_write(const char *dir, int hidden, int inter, int heads, bool gelu, uint64_t seed, uint64_t salt,
                         nq_err_t *err) {
  char sub[4200], p[4300], cfg[1024];
  int rc = td_sub(sub, sizeof sub, dir, "text_encoder", err);
  if (rc) return rc;
  snprintf(cfg, sizeof cfg,
           "{\n  \"architectures\": [\"CLIPTextModel\"],\n  \"model_type\": \"clip_text_model\",\n  \"_nextq_tiny\": true,\n"
           "  \"vocab_size\": %d,\n  \"hidden_size\": %d,\n  \"intermediate_size\": %d,\n  \"num_hidden_layers\": 1,\n"
           "  \"num_attention_heads\": %d,\n  \"max_position_embeddings\": 77,\n  \"hidden_act\": \"%s\",\n"
           "  \"layer_norm_eps\": 1e-05,\n  \"bos_token_id\": %d,\n  \"eos_token_id\": %d,\n  \"pad_token_id\": 1,\n"
           "  \"projection_dim\": %d,\n  \"torch_dtype\": \"float32\"\n}\n",
           TD_CLIP_VOCAB, hidden, inter, heads, gelu ? "gelu" : "quick_gelu", TD_CLIP_VOCAB - 2, TD_CLIP_VOCAB - 1, hidden);
  if ((rc = td_text(sub, "config.json", cfg, err))) return rc;
  tw_t w;
  if ((rc = tw_begin(&w, seed, salt, err))) return rc;
  tw_add(&w, TW_E, 2, NQ_SHAPE(TD_CLIP_VOCAB, hidden), "text_model.embeddings.token_embedding.weight");
  tw_add(&w, TW_E, 2, NQ_SHAPE(77, hidden), "text_model.embeddings.position_embedding.weight");
  char b[256];
  static const char *const pr[4] = {"q_proj", "k_proj", "v_proj", "out_proj"};
  for (int k = 0; k < 4; k++)
    snprintf(b, sizeof b, "text_model.encoder.layers.0.self_attn.%s", pr[k]), tw_lin(&w, b, hidden, hidden, 1);
  tw_norm(&w, "text_model.encoder.layers.0.layer_norm1", hidden);
  tw_lin(&w, "text_model.encoder.layers.0.mlp.fc1", inter, hidden, 1);
  tw_lin(&w, "text_model.encoder.layers.0.mlp.fc2", hidden, inter, 1);
  tw_norm(&w, "text_model.encoder.layers.0.layer_norm2", hidden);
  tw_norm(&w, "text_model.final_layer_norm", hidden);
  snprintf(p, sizeof p, "%s/model.safetensors", sub);
  return tw_end(&w, p);
}

/* ---- schedulers ---- */

static int td_scheduler_write(const char *dir, const char *cls, nq_err_t *err) {
  char sub[4200], cfg[1024];
  int rc = td_sub(sub, sizeof sub, dir, "scheduler", err);
  if (rc) return rc;
  snprintf(cfg, sizeof cfg,
           "{\n  \"_class_name\": \"%s\",\n  \"_diffusers_version\": \"0.21.4\",\n  \"beta_end\": 0.012,\n"
           "  \"beta_schedule\": \"scaled_linear\",\n  \"beta_start\": 0.00085,\n  \"clip_sample\": false,\n"
           "  \"num_train_timesteps\": 1000,\n  \"prediction_type\": \"epsilon\",\n  \"set_alpha_to_one\": false,\n"
           "  \"skip_prk_steps\": true,\n  \"steps_offset\": 1,\n  \"timestep_spacing\": \"leading\",\n"
           "  \"trained_betas\": null\n}\n",
           cls);
  return td_text(sub, "scheduler_config.json", cfg, err);
}

/* ---- SpeechT5HifiGan vocoder (AudioLDM's vocoder/) ---- */

static int td_hifigan_write(const char *dir, int mels, uint64_t seed, uint64_t salt, nq_err_t *err) {
  static const int rates[5] = {5, 4, 2, 2, 2}, kern[5] = {16, 16, 8, 4, 4}, rk[3] = {3, 7, 11};
  const int c0 = 64, ns = 5;
  char sub[4200], p[4300], cfg[1024];
  int rc = td_sub(sub, sizeof sub, dir, "vocoder", err);
  if (rc) return rc;
  snprintf(cfg, sizeof cfg,
           "{\n  \"architectures\": [\"SpeechT5HifiGan\"],\n  \"model_type\": \"hifigan\",\n  \"_nextq_tiny\": true,\n"
           "  \"model_in_dim\": %d,\n  \"sampling_rate\": 16000,\n  \"upsample_initial_channel\": %d,\n"
           "  \"upsample_rates\": [5, 4, 2, 2, 2],\n  \"upsample_kernel_sizes\": [16, 16, 8, 4, 4],\n"
           "  \"resblock_kernel_sizes\": [3, 7, 11],\n  \"resblock_dilation_sizes\": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],\n"
           "  \"leaky_relu_slope\": 0.1,\n  \"normalize_before\": true\n}\n",
           mels, c0);
  if ((rc = td_text(sub, "config.json", cfg, err))) return rc;
  tw_t w;
  if ((rc = tw_begin(&w, seed, salt, err))) return rc;
  tw_add(&w, TW_W, 3, NQ_SHAPE(c0, mels, 7), "conv_pre.weight");
  tw_add(&w, TW_B, 1, NQ_SHAPE(c0), "conv_pre.bias");
  for (int i = 0; i < ns; i++) {
    const int ci = c0 >> i, co = c0 >> (i + 1);
    tw_add(&w, TW_W, 3, NQ_SHAPE(ci, co, kern[i]), "upsampler.%d.weight", i);
    tw_add(&w, TW_B, 1, NQ_SHAPE(co), "upsampler.%d.bias", i);
    for (int k = 0; k < 3; k++)
      for (int s = 1; s <= 2; s++)
        for (int d = 0; d < 3; d++) {
          tw_add(&w, TW_W, 3, NQ_SHAPE(co, co, rk[k]), "resblocks.%d.convs%d.%d.weight", i * 3 + k, s, d);
          tw_add(&w, TW_B, 1, NQ_SHAPE(co), "resblocks.%d.convs%d.%d.bias", i * 3 + k, s, d);
        }
  }
  (void)rates;
  tw_add(&w, TW_W, 3, NQ_SHAPE(1, c0 >> ns, 7), "conv_post.weight");
  tw_add(&w, TW_B, 1, NQ_SHAPE(1), "conv_post.bias");
  tw_add(&w, TW_Z, 1, NQ_SHAPE(mels), "mean");
  tw_add(&w, TW_G, 1, NQ_SHAPE(mels), "scale");
  snprintf(p, sizeof p, "%s/model.safetensors", sub);
  return tw_end(&w, p);
}

/* ---- the pipelines ---- */

static int td_model_index(const char *dir, const char *json, nq_err_t *err) { return td_text(dir, "model_index.json", json, err); }

/* The real TAESD decoder (and encoder) from models_dir/taesd, copied; 1 when copied, 0 when absent. */
static int td_copy(const char *src, const char *dst, nq_err_t *err) {
  FILE *f = fopen(src, "rb");
  if (!f) return 0;
  int rc = 0;
  char tmp[4200];
  snprintf(tmp, sizeof tmp, "%s.tmp", dst);
  FILE *o = fopen(tmp, "wb");
  if (!o) rc = nq_err_set(err, NQ_EIO, NQ_ERR_FATAL, "%s: %s", tmp, strerror(errno));
  char buf[65536];
  size_t n;
  while (!rc && (n = fread(buf, 1, sizeof buf, f)) > 0)
    if (fwrite(buf, 1, n, o) != n) rc = nq_err_set(err, NQ_EIO, NQ_ERR_FATAL, "%s: write failed", tmp);
  if (!rc && ferror(f)) rc = nq_err_set(err, NQ_EIO, NQ_ERR_FATAL, "%s: read failed", src);
  fclose(f);
  if (o && fclose(o) != 0 && !rc) rc = nq_err_set(err, NQ_EIO, NQ_ERR_FATAL, "%s: write failed", tmp);
  if (!rc && rename(tmp, dst) != 0) rc = nq_err_set(err, NQ_EIO, NQ_ERR_FATAL, "%s: rename failed", dst);
  return rc ? rc : 1;
}

int nq_nextgpt_tiny__diffusion(const char *out_dir, uint64_t seed, const char *models_dir, unsigned *written,
                               nq_err_t *err);

int nq_nextgpt_tiny__diffusion(const char *out_dir, uint64_t seed, const char *models_dir, unsigned *written,
                               nq_err_t *err) {
  char d[4200];
  int rc;
  *written = 0;
  /* Stable Diffusion v1-5 shaped: 768-wide cross-attention and CLIP, 4 latent channels at 1/8 (64x64 images) */
  if ((rc = td_sub(d, sizeof d, out_dir, "sd", err))) return rc;
  const td_unet_t su = {.in_ch = 4, .out_ch = 4, .n = 2, .lpb = 1, .head_value = 4, .groups = 8, .sample_size = 8,
                        .boc = {32, 64}, .down_attn = {true, false}, .cross = 768};
  const td_vae_t sv = {.in_ch = 3, .out_ch = 3, .latent = 4, .n = 4, .lpb = 1, .groups = 8, .sample_size = 64,
                       .boc = {8, 16, 16, 16}, .scaling = 0.18215f};
  rc = td_model_index(d,
                      "{\n  \"_class_name\": \"StableDiffusionPipeline\",\n  \"_diffusers_version\": \"0.21.4\",\n"
                      "  \"_nextq_tiny\": true,\n  \"scheduler\": [\"diffusers\", \"PNDMScheduler\"],\n"
                      "  \"text_encoder\": [\"transformers\", \"CLIPTextModel\"],\n"
                      "  \"tokenizer\": [\"transformers\", \"CLIPTokenizer\"],\n"
                      "  \"unet\": [\"diffusers\", \"UNet2DConditionModel\"],\n"
                      "  \"vae\": [\"diffusers\", \"AutoencoderKL\"]\n}\n",
                      err);
  if (!rc) rc = td_unet_write(d, &su, seed, 0x51, err);
  if (!rc) rc = td_vae_write(d, &sv, seed, 0x52, err);
  if (!rc) rc = td_clip_write(d, 768, 128, 12, false, seed, 0x53, err);
  if (!rc) rc = td_tokenizer_write(d, false, err);
  if (!rc) rc = td_scheduler_write(d, "PNDMScheduler", err);
  if (rc) return nq_err_prefix(err, "tiny sd");
  *written |= NQ_TINY_SD;

  /* ZeroScope v2 shaped: UNet3D with 1024-wide cross-attention, CLIP hidden 1024 (gelu, pad 0) */
  if ((rc = td_sub(d, sizeof d, out_dir, "zeroscope", err))) return rc;
  const td_unet_t zu = {.is3d = true, .in_ch = 4, .out_ch = 4, .n = 2, .lpb = 1, .head_value = 8, .groups = 8,
                        .sample_size = 8, .boc = {32, 64}, .down_attn = {true, false}, .cross = 1024};
  rc = td_model_index(d,
                      "{\n  \"_class_name\": \"TextToVideoSDPipeline\",\n  \"_diffusers_version\": \"0.21.4\",\n"
                      "  \"_nextq_tiny\": true,\n  \"scheduler\": [\"diffusers\", \"DDIMScheduler\"],\n"
                      "  \"text_encoder\": [\"transformers\", \"CLIPTextModel\"],\n"
                      "  \"tokenizer\": [\"transformers\", \"CLIPTokenizer\"],\n"
                      "  \"unet\": [\"diffusers\", \"UNet3DConditionModel\"],\n"
                      "  \"vae\": [\"diffusers\", \"AutoencoderKL\"]\n}\n",
                      err);
  if (!rc) rc = td_unet_write(d, &zu, seed, 0x61, err);
  if (!rc) rc = td_vae_write(d, &sv, seed, 0x62, err);
  if (!rc) rc = td_clip_write(d, 1024, 128, 16, true, seed, 0x63, err);
  if (!rc) rc = td_tokenizer_write(d, true, err);
  if (!rc) rc = td_scheduler_write(d, "DDIMScheduler", err);
  if (rc) return nq_err_prefix(err, "tiny zeroscope");
  *written |= NQ_TINY_ZEROSCOPE;

  /* AudioLDM shaped: class embeddings of 512 (NExT-GPT's audio cond), 8 latent channels, 64 mel bins, x160 vocoder */
  if ((rc = td_sub(d, sizeof d, out_dir, "audioldm", err))) return rc;
  const td_unet_t au = {.in_ch = 8, .out_ch = 8, .n = 2, .lpb = 1, .head_value = 4, .groups = 8, .sample_size = 16,
                        .boc = {16, 32}, .down_attn = {false, true}, .cross = 0, .class_in = 512};
  const td_vae_t av = {.in_ch = 1, .out_ch = 1, .latent = 8, .n = 3, .lpb = 1, .groups = 8, .sample_size = 64,
                       .boc = {8, 16, 16}, .scaling = 1.0f};
  rc = td_model_index(d,
                      "{\n  \"_class_name\": \"AudioLDMPipeline\",\n  \"_diffusers_version\": \"0.21.4\",\n"
                      "  \"_nextq_tiny\": true,\n  \"scheduler\": [\"diffusers\", \"DDIMScheduler\"],\n"
                      "  \"unet\": [\"diffusers\", \"UNet2DConditionModel\"],\n"
                      "  \"vae\": [\"diffusers\", \"AutoencoderKL\"],\n"
                      "  \"vocoder\": [\"transformers\", \"SpeechT5HifiGan\"]\n}\n",
                      err);
  if (!rc) rc = td_unet_write(d, &au, seed, 0x71, err);
  if (!rc) rc = td_vae_write(d, &av, seed, 0x72, err);
  if (!rc) rc = td_hifigan_write(d, 64, seed, 0x73, err);
  if (!rc) rc = td_scheduler_write(d, "DDIMScheduler", err);
  if (rc) return nq_err_prefix(err, "tiny audioldm");
  *written |= NQ_TINY_AUDIOLDM;

  /* the real TAESD, when the small models are at hand */
  if (models_dir) {
    char src[4300], dst[4300];
    snprintf(src, sizeof src, "%s/taesd/taesd_decoder.safetensors", models_dir);
    FILE *f = fopen(src, "rb");
    if (f) {
      fclose(f);
      if ((rc = td_sub(d, sizeof d, out_dir, "taesd", err))) return rc;
      snprintf(dst, sizeof dst, "%s/taesd_decoder.safetensors", d);
      if ((rc = td_copy(src, dst, err)) < 0) return rc;
      snprintf(src, sizeof src, "%s/taesd/taesd_encoder.safetensors", models_dir);
      snprintf(dst, sizeof dst, "%s/taesd_encoder.safetensors", d);
      if ((rc = td_copy(src, dst, err)) < 0) return rc;
      *written |= NQ_TINY_TAESD;
    }
  }
  return 0;
}

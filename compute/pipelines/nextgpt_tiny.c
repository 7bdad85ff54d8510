/* `nextq model init-tiny`: writes a tiny NExT-GPT in the real layouts (see nextgpt_tiny.h). */
#include "compute/pipelines/nextgpt_tiny.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "compute/core/tensor.h"
#include "compute/io/llama2c.h"
#include "compute/io/safetensors.h"

/* stories260K's shape; the random fallback uses the same */
enum { TD = 64, TF = 172, TL = 5, TH = 8, TKV = 4, TV = 512, TCTX = 512, TADD = 38, TE = 1024, TR = 4 };
enum { PD = 32, PHEADS = 4, PLAYERS = 4, PFFN = 128 };

int nq_nextgpt_tiny__imagebind(const char *dir, uint64_t seed, nq_err_t *err); /* nextgpt_tiny_media.c */
int nq_nextgpt_tiny__diffusion(const char *out_dir, uint64_t seed, const char *models_dir, unsigned *written,
                               nq_err_t *err); /* nextgpt_tiny_diffusion.c */

void nq_nextgpt_tiny_opts_init(nq_nextgpt_tiny_opts_t *o) {
  memset(o, 0, sizeof(*o));
  o->seed = 13;
}

/* ---- helpers ---- */

typedef struct {
  uint64_t s;
} nq_tiny__rng_t;

static float nq_tiny__u(nq_tiny__rng_t *r) { /* uniform [-1, 1) */
  r->s ^= r->s >> 12, r->s ^= r->s << 25, r->s ^= r->s >> 27;
  uint64_t x = r->s * 0x2545F4914F6CDD1Dull;
  return (float)((double)(x >> 11) * (1.0 / 9007199254740992.0) * 2.0 - 1.0);
}

static void nq_tiny__fill(nq_tiny__rng_t *r, float *p, int64_t n, float scale, float offset) {
  for (int64_t i = 0; i < n; i++) p[i] = offset + scale * nq_tiny__u(r);
}

static int nq_tiny__mkdirs(const char *path, nq_err_t *err) {
  char tmp[4096];
  snprintf(tmp, sizeof tmp, "%s", path);
  for (char *p = tmp + 1;; p++) {
    bool end = !*p;
    if (*p == '/' || end) {
      *p = 0;
      if (mkdir(tmp, 0755) != 0 && errno != EEXIST)
        return nq_err_set(err, NQ_EIO, NQ_ERR_FATAL, "mkdir %s: %s", tmp, strerror(errno));
      if (end) break;
      *p = '/';
    }
  }
  return 0;
}

static int nq_tiny__write_text(const char *path, const char *text, nq_err_t *err) {
  char tmp[4200];
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  FILE *f = fopen(tmp, "wb");
  if (!f) return nq_err_set(err, NQ_EIO, NQ_ERR_FATAL, "%s: %s", tmp, strerror(errno));
  size_t n = strlen(text);
  bool ok = fwrite(text, 1, n, f) == n;
  ok = (fclose(f) == 0) && ok;
  if (!ok || rename(tmp, path) != 0) return nq_err_set(err, NQ_EIO, NQ_ERR_RETRIABLE, "%s: write failed", path);
  return 0;
}

static float *nq_tiny__alloc(int64_t n) { return malloc(sizeof(float) * (size_t)(n > 0 ? n : 1)); }

/* ---- tokenizer.model (SentencePiece ModelProto, BPE) ---- */

typedef struct {
  uint8_t *p;
  size_t n, cap;
} nq_tiny__buf_t;

static int nq_tiny__put(nq_tiny__buf_t *b, const void *d, size_t n) {
  if (b->n + n > b->cap) {
    size_t nc = (b->n + n) * 2 + 256;
    uint8_t *np = realloc(b->p, nc);
    if (!np) return NQ_ENOMEM;
    b->p = np, b->cap = nc;
  }
  memcpy(b->p + b->n, d, n);
  b->n += n;
  return 0;
}

static int nq_tiny__varint(nq_tiny__buf_t *b, uint64_t v) {
  uint8_t t[10];
  int k = 0;
  do {
    t[k] = (uint8_t)(v & 0x7f);
    v >>= 7;
    if (v) t[k] |= 0x80;
    k++;
  } while (v);
  return nq_tiny__put(b, t, (size_t)k);
}

static int nq_tiny__bytes_field(nq_tiny__buf_t *b, int field, const void *d, size_t n) {
  int rc = nq_tiny__varint(b, ((uint64_t)field << 3) | 2);
  if (!rc) rc = nq_tiny__varint(b, n);
  if (!rc) rc = nq_tiny__put(b, d, n);
  return rc;
}

static int nq_tiny__int_field(nq_tiny__buf_t *b, int field, uint64_t v) {
  int rc = nq_tiny__varint(b, ((uint64_t)field << 3) | 0);
  return rc ? rc : nq_tiny__varint(b, v);
}

typedef struct {
  char *piece; /* owned, SentencePiece spelling (U+2581 for spaces) */
  float score;
  int type;    /* 1 normal, 2 unknown, 3 control, 6 byte */
} nq_tiny__piece_t;

static int nq_tiny__write_spm(const char *path, const nq_tiny__piece_t *pc, int n, nq_err_t *err) {
  nq_tiny__buf_t b = {0}, s = {0};
  int rc = 0;
  for (int i = 0; i < n && !rc; i++) {
    s.n = 0;
    rc = nq_tiny__bytes_field(&s, 1, pc[i].piece, strlen(pc[i].piece));
    uint32_t u;
    memcpy(&u, &pc[i].score, 4);
    uint8_t f[5] = {(2 << 3) | 5, (uint8_t)u, (uint8_t)(u >> 8), (uint8_t)(u >> 16), (uint8_t)(u >> 24)};
    if (!rc) rc = nq_tiny__put(&s, f, 5);
    if (!rc && pc[i].type != 1) rc = nq_tiny__int_field(&s, 3, (uint64_t)pc[i].type);
    if (!rc) rc = nq_tiny__bytes_field(&b, 1, s.p, s.n);
  }
  /* trainer_spec: model_type BPE, byte_fallback, unk/bos/eos ids */
  s.n = 0;
  if (!rc) rc = nq_tiny__int_field(&s, 3, 2);
  if (!rc) rc = nq_tiny__int_field(&s, 35, 1);
  if (!rc) rc = nq_tiny__int_field(&s, 40, 0);
  if (!rc) rc = nq_tiny__int_field(&s, 41, 1);
  if (!rc) rc = nq_tiny__int_field(&s, 42, 2);
  if (!rc) rc = nq_tiny__bytes_field(&b, 2, s.p, s.n);
  /* normalizer_spec: identity, add_dummy_prefix, keep extra whitespace (as LLaMA's) */
  s.n = 0;
  if (!rc) rc = nq_tiny__bytes_field(&s, 1, "identity", 8);
  if (!rc) rc = nq_tiny__int_field(&s, 3, 1);
  if (!rc) rc = nq_tiny__int_field(&s, 4, 0);
  if (!rc) rc = nq_tiny__bytes_field(&b, 3, s.p, s.n);
  if (rc) {
    free(b.p), free(s.p);
    return nq_err_set(err, NQ_ENOMEM, 0, "out of memory");
  }
  FILE *f = fopen(path, "wb");
  bool ok = f && fwrite(b.p, 1, b.n, f) == b.n;
  if (f) ok = (fclose(f) == 0) && ok;
  free(b.p), free(s.p);
  return ok ? 0 : nq_err_set(err, NQ_EIO, NQ_ERR_FATAL, "%s: write failed", path);
}

/* tok512.bin (llama2.c export: int max_len; per token float score, int len, bytes; ' ' for U+2581, "\n<s>\n"). */
static int nq_tiny__read_l2c_tok(const char *path, nq_tiny__piece_t *pc, nq_err_t *err) {
  FILE *f = fopen(path, "rb");
  if (!f) return nq_err_set(err, NQ_ENOENT, NQ_ERR_FATAL, "%s: cannot open", path);
  int32_t maxlen;
  int rc = fread(&maxlen, 4, 1, f) == 1 ? 0 : NQ_EFORMAT;
  for (int i = 0; i < TV && !rc; i++) {
    int32_t len;
    float score;
    char raw[256];
    if (fread(&score, 4, 1, f) != 1 || fread(&len, 4, 1, f) != 1 || len < 0 || len > 255 ||
        fread(raw, 1, (size_t)len, f) != (size_t)len) {
      rc = NQ_EFORMAT;
      break;
    }
    raw[len] = 0;
    char sp[1024];
    size_t o = 0;
    for (int k = 0; k < len; k++) {
      if (raw[k] == ' ') memcpy(sp + o, "\xe2\x96\x81", 3), o += 3;
      else sp[o++] = raw[k];
    }
    sp[o] = 0;
    int type = 1;
    if (i == 0) snprintf(sp, sizeof sp, "<unk>"), type = 2;
    else if (i == 1) snprintf(sp, sizeof sp, "<s>"), type = 3;
    else if (i == 2) snprintf(sp, sizeof sp, "</s>"), type = 3;
    else if (len == 6 && !strncmp(raw, "<0x", 3) && raw[5] == '>') type = 6;
    pc[i].piece = strdup(sp), pc[i].score = score, pc[i].type = type;
    if (!pc[i].piece) rc = NQ_ENOMEM;
  }
  fclose(f);
  return rc ? nq_err_set(err, rc, NQ_ERR_FATAL, "%s: not a llama2.c tokenizer of %d pieces", path, TV) : 0;
}

/* Synthetic 512-piece vocabulary: specials, 256 bytes, "▁", printable ASCII, "▁a".."▁z", then letter pairs. */
static int nq_tiny__synthetic_tok(nq_tiny__piece_t *pc, nq_err_t *err) {
  int n = 0;
  char s[16];
  pc[n++] = (nq_tiny__piece_t){strdup("<unk>"), 0, 2};
  pc[n++] = (nq_tiny__piece_t){strdup("<s>"), 0, 3};
  pc[n++] = (nq_tiny__piece_t){strdup("</s>"), 0, 3};
  for (int b = 0; b < 256; b++) {
    snprintf(s, sizeof s, "<0x%02X>", b);
    pc[n++] = (nq_tiny__piece_t){strdup(s), 0, 6};
  }
  pc[n++] = (nq_tiny__piece_t){strdup("\xe2\x96\x81"), -(float)n, 1};
  for (int c = 33; c < 127; c++) {
    snprintf(s, sizeof s, "%c", c);
    pc[n] = (nq_tiny__piece_t){strdup(s), -(float)n, 1};
    n++;
  }
  for (int c = 'a'; c <= 'z'; c++) {
    snprintf(s, sizeof s, "\xe2\x96\x81%c", c);
    pc[n] = (nq_tiny__piece_t){strdup(s), -(float)n, 1};
    n++;
  }
  for (int a = 'a'; a <= 'z' && n < TV; a++)
    for (int c = 'a'; c <= 'z' && n < TV; c++) {
      snprintf(s, sizeof s, "%c%c", a, c);
      pc[n] = (nq_tiny__piece_t){strdup(s), -(float)n, 1};
      n++;
    }
  for (int i = 0; i < n; i++)
    if (!pc[i].piece) return nq_err_set(err, NQ_ENOMEM, 0, "out of memory");
  return 0;
}

/* ---- the LLM (HF layout) ---- */

typedef struct {
  float *emb, *att_norm, *ffn_norm, *wq, *wk, *wv, *wo, *w1, *w2, *w3, *final_norm; /* llama2.c order/layout */
} nq_tiny__llm_t;

/* llama2.c interleaved RoPE rows -> HF rotate-half rows, per head. */
static void nq_tiny__permute(float *dst, const float *src, int heads, int hd, int cols) {
  for (int h = 0; h < heads; h++)
    for (int i = 0; i < hd / 2; i++) {
      memcpy(dst + ((size_t)h * hd + i) * cols, src + ((size_t)h * hd + 2 * i) * cols, sizeof(float) * (size_t)cols);
      memcpy(dst + ((size_t)h * hd + hd / 2 + i) * cols, src + ((size_t)h * hd + 2 * i + 1) * cols,
             sizeof(float) * (size_t)cols);
    }
}

static int nq_tiny__write_llm(const char *dir, const nq_tiny__llm_t *w, nq_err_t *err) {
  const int hd = TD / TH;
  nq_st_writer_t *st = nq_st_writer_new();
  float *tmp = nq_tiny__alloc((int64_t)TH * hd * TD);
  int rc = st && tmp ? 0 : nq_err_set(err, NQ_ENOMEM, 0, "out of memory");
  if (!rc) rc = nq_st_writer_add_f32(st, "model.embed_tokens.weight", 2, NQ_SHAPE(TV, TD), w->emb, err);
  if (!rc) rc = nq_st_writer_add_f32(st, "lm_head.weight", 2, NQ_SHAPE(TV, TD), w->emb, err); /* stories260K is tied */
  if (!rc) rc = nq_st_writer_add_f32(st, "model.norm.weight", 1, NQ_SHAPE(TD), w->final_norm, err);
  for (int l = 0; l < TL && !rc; l++) {
    char n[128];
#define NQ_TINY_ADD(fmt, nd, shp, ptr)                               \
  if (!rc) {                                                         \
    snprintf(n, sizeof n, "model.layers.%d." fmt, l);                 \
    rc = nq_st_writer_add_f32(st, n, nd, shp, ptr, err);             \
  }
    NQ_TINY_ADD("input_layernorm.weight", 1, NQ_SHAPE(TD), w->att_norm + l * TD);
    NQ_TINY_ADD("post_attention_layernorm.weight", 1, NQ_SHAPE(TD), w->ffn_norm + l * TD);
    nq_tiny__permute(tmp, w->wq + (size_t)l * TD * TD, TH, hd, TD);
    NQ_TINY_ADD("self_attn.q_proj.weight", 2, NQ_SHAPE(TD, TD), tmp);
    nq_tiny__permute(tmp, w->wk + (size_t)l * TKV * hd * TD, TKV, hd, TD);
    NQ_TINY_ADD("self_attn.k_proj.weight", 2, NQ_SHAPE(TKV * hd, TD), tmp);
    NQ_TINY_ADD("self_attn.v_proj.weight", 2, NQ_SHAPE(TKV * hd, TD), w->wv + (size_t)l * TKV * hd * TD);
    NQ_TINY_ADD("self_attn.o_proj.weight", 2, NQ_SHAPE(TD, TD), w->wo + (size_t)l * TD * TD);
    NQ_TINY_ADD("mlp.gate_proj.weight", 2, NQ_SHAPE(TF, TD), w->w1 + (size_t)l * TF * TD);
    NQ_TINY_ADD("mlp.down_proj.weight", 2, NQ_SHAPE(TD, TF), w->w2 + (size_t)l * TD * TF);
    NQ_TINY_ADD("mlp.up_proj.weight", 2, NQ_SHAPE(TF, TD), w->w3 + (size_t)l * TF * TD);
#undef NQ_TINY_ADD
  }
  char p[4200];
  snprintf(p, sizeof p, "%s/model.safetensors", dir);
  if (!rc) rc = nq_st_writer_save(st, p, err);
  nq_st_writer_free(st);
  free(tmp);
  if (rc) return rc;
  char cfg[2048];
  snprintf(cfg, sizeof cfg,
           "{\n  \"architectures\": [\"LlamaForCausalLM\"],\n  \"model_type\": \"llama\",\n  \"hidden_size\": %d,\n"
           "  \"intermediate_size\": %d,\n  \"num_hidden_layers\": %d,\n  \"num_attention_heads\": %d,\n"
           "  \"num_key_value_heads\": %d,\n  \"vocab_size\": %d,\n  \"max_position_embeddings\": %d,\n"
           "  \"rms_norm_eps\": 1e-05,\n  \"rope_theta\": 10000.0,\n  \"tie_word_embeddings\": false,\n"
           "  \"bos_token_id\": 1,\n  \"eos_token_id\": 2,\n  \"pad_token_id\": 0,\n  \"hidden_act\": \"silu\",\n"
           "  \"torch_dtype\": \"float32\"\n}\n",
           TD, TF, TL, TH, TKV, TV, TCTX);
  snprintf(p, sizeof p, "%s/config.json", dir);
  return nq_tiny__write_text(p, cfg, err);
}

/* ---- the delta ---- */

static int nq_tiny__add_rand(nq_st_writer_t *st, nq_tiny__rng_t *r, const char *name, int ndim, const int64_t *shape,
                             float scale, float offset, nq_err_t *err) {
  int64_t n = 1;
  for (int i = 0; i < ndim; i++) n *= shape[i];
  float *p = nq_tiny__alloc(n);
  if (!p) return nq_err_set(err, NQ_ENOMEM, 0, "out of memory");
  nq_tiny__fill(r, p, n, scale, offset);
  int rc = nq_st_writer_add_f32(st, name, ndim, shape, p, err);
  free(p);
  return rc;
}

static int nq_tiny__projector(nq_st_writer_t *st, nq_tiny__rng_t *r, const char *prefix, int K, int D, nq_err_t *err) {
  char n[256];
  int rc = 0;
  const float sd = 1.0f / sqrtf((float)PD), sf = 1.0f / sqrtf((float)PFFN), sh = 1.0f / sqrtf((float)TD);
#define NQ_TINY_R(suffix, nd, shp, sc, off)                          \
  if (!rc) {                                                         \
    snprintf(n, sizeof n, "%s%s", prefix, suffix);                   \
    rc = nq_tiny__add_rand(st, r, n, nd, shp, sc, off, err);         \
  }
  NQ_TINY_R("fc.weight", 2, NQ_SHAPE(PD, TD), sh, 0);
  NQ_TINY_R("fc.bias", 1, NQ_SHAPE(PD), 0.02f, 0);
  NQ_TINY_R("query_embs", 3, NQ_SHAPE(1, K, PD), 1.0f, 0);
  NQ_TINY_R("model.weight", 2, NQ_SHAPE(D, PD), sd, 0);
  NQ_TINY_R("model.bias", 1, NQ_SHAPE(D), 0.02f, 0);
  static const char *const parts[2] = {"encoder", "decoder"};
  for (int pt = 0; pt < 2; pt++) {
    for (int l = 0; l < PLAYERS; l++) {
      char b[160];
      snprintf(b, sizeof b, "tfm.%s.layers.%d.", parts[pt], l);
      const char *attn[2] = {"self_attn", "multihead_attn"};
      for (int a = 0; a < (pt ? 2 : 1); a++) {
        char s[256];
        snprintf(s, sizeof s, "%s%s.in_proj_weight", b, attn[a]);
        NQ_TINY_R(s, 2, NQ_SHAPE(3 * PD, PD), sd, 0);
        snprintf(s, sizeof s, "%s%s.in_proj_bias", b, attn[a]);
        NQ_TINY_R(s, 1, NQ_SHAPE(3 * PD), 0.02f, 0);
        snprintf(s, sizeof s, "%s%s.out_proj.weight", b, attn[a]);
        NQ_TINY_R(s, 2, NQ_SHAPE(PD, PD), sd, 0);
        snprintf(s, sizeof s, "%s%s.out_proj.bias", b, attn[a]);
        NQ_TINY_R(s, 1, NQ_SHAPE(PD), 0.02f, 0);
      }
      char s[256];
      snprintf(s, sizeof s, "%slinear1.weight", b);
      NQ_TINY_R(s, 2, NQ_SHAPE(PFFN, PD), sd, 0);
      snprintf(s, sizeof s, "%slinear1.bias", b);
      NQ_TINY_R(s, 1, NQ_SHAPE(PFFN), 0.02f, 0);
      snprintf(s, sizeof s, "%slinear2.weight", b);
      NQ_TINY_R(s, 2, NQ_SHAPE(PD, PFFN), sf, 0);
      snprintf(s, sizeof s, "%slinear2.bias", b);
      NQ_TINY_R(s, 1, NQ_SHAPE(PD), 0.02f, 0);
      for (int k = 1; k <= (pt ? 3 : 2); k++) {
        snprintf(s, sizeof s, "%snorm%d.weight", b, k);
        NQ_TINY_R(s, 1, NQ_SHAPE(PD), 0.1f, 1.0f);
        snprintf(s, sizeof s, "%snorm%d.bias", b, k);
        NQ_TINY_R(s, 1, NQ_SHAPE(PD), 0.02f, 0);
      }
    }
    char s[160];
    snprintf(s, sizeof s, "tfm.%s.norm.weight", parts[pt]);
    NQ_TINY_R(s, 1, NQ_SHAPE(PD), 0.1f, 1.0f);
    snprintf(s, sizeof s, "tfm.%s.norm.bias", parts[pt]);
    NQ_TINY_R(s, 1, NQ_SHAPE(PD), 0.02f, 0);
  }
#undef NQ_TINY_R
  return rc;
}

static const char *const nq_tiny__added_fmt[3] = {"[IMG%d]", "[VID%d]", "[AUD%d]"};

static int nq_tiny__write_delta(const char *dir, const nq_tiny__llm_t *w, nq_tiny__rng_t *r, nq_err_t *err) {
  nq_st_writer_t *st = nq_st_writer_new();
  const int V2 = TV + TADD;
  float *emb = nq_tiny__alloc((int64_t)V2 * TD);
  int rc = st && emb ? 0 : nq_err_set(err, NQ_ENOMEM, 0, "out of memory");
  if (!rc) { /* resized rows: the base rows, then 38 new ones at the scale of the old rows */
    double ss = 0;
    for (int64_t i = 0; i < (int64_t)TV * TD; i++) ss += (double)w->emb[i] * w->emb[i];
    float sc = (float)sqrt(3.0 * ss / ((double)TV * TD)); /* uniform with the same rms */
    memcpy(emb, w->emb, sizeof(float) * (size_t)TV * TD);
    nq_tiny__fill(r, emb + (size_t)TV * TD, (int64_t)TADD * TD, sc, 0);
    rc = nq_st_writer_add_f32(st, "llama_model.base_model.model.model.embed_tokens.weight", 2, NQ_SHAPE(V2, TD), emb, err);
    nq_tiny__fill(r, emb + (size_t)TV * TD, (int64_t)TADD * TD, sc, 0); /* lm_head: untied new rows */
    if (!rc) rc = nq_st_writer_add_f32(st, "llama_model.base_model.model.lm_head.weight", 2, NQ_SHAPE(V2, TD), emb, err);
  }
  static const char *const proj[4] = {"q_proj", "k_proj", "v_proj", "o_proj"};
  for (int l = 0; l < TL && !rc; l++)
    for (int k = 0; k < 4 && !rc; k++) {
      int out = (k == 1 || k == 2) ? TKV * (TD / TH) : TD;
      char n[256];
      snprintf(n, sizeof n, "llama_model.base_model.model.model.layers.%d.self_attn.%s.lora_A.weight", l, proj[k]);
      rc = nq_tiny__add_rand(st, r, n, 2, NQ_SHAPE(TR, TD), 1.0f / sqrtf((float)TD), 0, err);
      snprintf(n, sizeof n, "llama_model.base_model.model.model.layers.%d.self_attn.%s.lora_B.weight", l, proj[k]);
      if (!rc) rc = nq_tiny__add_rand(st, r, n, 2, NQ_SHAPE(out, TR), 0.02f, 0, err);
    }
  if (!rc) rc = nq_tiny__add_rand(st, r, "llama_proj.weight", 2, NQ_SHAPE(TD, TE), 1.0f / sqrtf((float)TE), 0, err);
  if (!rc) rc = nq_tiny__add_rand(st, r, "llama_proj.bias", 1, NQ_SHAPE(TD), 0.02f, 0, err);
  if (!rc) rc = nq_tiny__projector(st, r, "gen_text_hidden_fcs.0.", 77, 768, err);
  if (!rc) rc = nq_tiny__projector(st, r, "gen_text_hidden_fcs_video.0.", 77, 1024, err);
  if (!rc) rc = nq_tiny__projector(st, r, "gen_text_hidden_fcs_audio.0.", 1, 512, err);
  if (!rc) rc = nq_st_writer_set_metadata(st, "format", "nextgpt-delta-tiny", err);
  char p[4200];
  snprintf(p, sizeof p, "%s/nextgpt.safetensors", dir);
  if (!rc) rc = nq_st_writer_save(st, p, err);
  nq_st_writer_free(st);
  free(emb);
  if (rc) return rc;
  /* added_tokens.json as NExT-GPT's saved tokenizer has it */
  char js[4096];
  size_t o = (size_t)snprintf(js, sizeof js, "{\n \"<Img>\": %d,\n \"</Img>\": %d", TV, TV + 1);
  int id = TV + 2, cnt[3] = {4, 24, 8};
  for (int m = 0; m < 3; m++)
    for (int i = 0; i < cnt[m]; i++) {
      char t[16];
      snprintf(t, sizeof t, nq_tiny__added_fmt[m], i);
      o += (size_t)snprintf(js + o, sizeof js - o, ",\n \"%s\": %d", t, id++);
    }
  snprintf(js + o, sizeof js - o, "\n}\n");
  snprintf(p, sizeof p, "%s/added_tokens.json", dir);
  return nq_tiny__write_text(p, js, err);
}

static const char nq_tiny__yaml[] =
    "# Tiny NExT-GPT written by `nextq model init-tiny` (seed %llu; LLM: %s).\n"
    "# Same keys as a real model YAML (spec section 11, NExT-GPT config/base.yaml); paths are relative to this file.\n"
    "# For the released model point them at the real files:\n"
    "#   vicuna_ckpt_path: <dir>/vicuna_ckpt/7b_v0            (HF LLaMA dir, safetensors)\n"
    "#   delta_ckpt_path: <dir>/nextgpt/7b_tiva_v0/pytorch_model.pt\n"
    "#   imagebind_ckpt_path: <dir>/imagebind_ckpt/huge/imagebind_huge.pth\n"
    "#   image_diffusion / video_diffusion / audio_diffusion: diffusers dirs (SD v1-5, ZeroScope v2 576w, AudioLDM-l-full)\n"
    "#   projector.nhead: 4, generation.stops_id: [[835], [2277, 29937]]\n"
    "vicuna_version: %s\n"
    "imagebind_version: tiny\n"
    "vicuna_ckpt_path: vicuna\n"
    "delta_ckpt_path: delta/nextgpt.safetensors\n"
    "imagebind_ckpt_path: imagebind\n"
    "image_diffusion: sd               # tiny Stable Diffusion (diffusers layout; cross_attention_dim 768)\n"
    "video_diffusion: zeroscope        # tiny ZeroScope (UNet3D, cross_attention_dim 1024)\n"
    "audio_diffusion: audioldm         # tiny AudioLDM (class embeddings 512; no CLAP: guidance <= 1)\n"
    "n_img_tokens: 4\n"
    "num_gen_img_tokens: 4\n"
    "text_emb_to_img_layers: [-1]\n"
    "text_fc_to_img_mode: transformer\n"
    "n_video_tokens: 24\n"
    "num_gen_video_tokens: 24\n"
    "text_emb_to_video_layers: [-1]\n"
    "text_fc_to_video_mode: transformer\n"
    "n_audio_tokens: 8\n"
    "num_gen_audio_tokens: 8\n"
    "text_emb_to_audio_layers: [-1]\n"
    "text_fc_to_audio_mode: transformer\n"
    "num_clip_tokens: 77\n"
    "gen_emb_dim: 768\n"
    "max_length: 512\n"
    "seed: 13\n"
    "offset_minus_one: true\n"
    "projector:\n"
    "  nhead: %d\n"
    "  layer_norm_eps: 1.0e-5\n"
    "lora:\n"
    "  alpha: %d\n"
    "generation:\n"
    "  max_tgt_len: 64\n"
    "  top_p: 0.01\n"
    "  temperature: 1.0\n"
    "  # '#' is the byte piece <0x23> = 38 in the 512-piece vocabulary (\"###\" is 835 in LLaMA's)\n"
    "  stops_id: [[38]]\n";

int nq_nextgpt_init_tiny(const char *out_dir, const nq_nextgpt_tiny_opts_t *opts, nq_nextgpt_tiny_info_t *info,
                         nq_err_t *err) {
  nq_nextgpt_tiny_opts_t o;
  if (opts) o = *opts;
  else nq_nextgpt_tiny_opts_init(&o);
  if (info) memset(info, 0, sizeof(*info));
  char vdir[4200], ddir[4200], p[4300], l2c[4300], tokp[4300];
  snprintf(vdir, sizeof vdir, "%s/vicuna", out_dir);
  snprintf(ddir, sizeof ddir, "%s/delta", out_dir);
  int rc = nq_tiny__mkdirs(vdir, err);
  if (!rc) rc = nq_tiny__mkdirs(ddir, err);
  if (rc) return rc;
  nq_tiny__rng_t rng = {o.seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull};
  nq_tiny__piece_t *pc = calloc(TV, sizeof *pc);
  nq_tiny__llm_t w = {0};
  nq_llama2c_file_t f;
  memset(&f, 0, sizeof f);
  bool trained = false;
  if (!pc) return nq_err_set(err, NQ_ENOMEM, 0, "out of memory");
  struct stat st;
  if (o.models_dir) {
    snprintf(l2c, sizeof l2c, "%s/stories260K/stories260K.bin", o.models_dir);
    snprintf(tokp, sizeof tokp, "%s/stories260K/tok512.bin", o.models_dir);
    trained = stat(l2c, &st) == 0 && stat(tokp, &st) == 0;
  }
  if (trained) {
    rc = nq_llama2c_open(l2c, &f, err);
    if (!rc && (f.dim != TD || f.hidden_dim != TF || f.n_layers != TL || f.n_heads != TH || f.n_kv_heads != TKV ||
                f.vocab_size != TV))
      rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: not the stories260K shape", l2c);
    if (!rc) rc = nq_tiny__read_l2c_tok(tokp, pc, err);
    if (!rc) {
      w.emb = (float *)f.tok_emb, w.att_norm = (float *)f.rms_att, w.ffn_norm = (float *)f.rms_ffn;
      w.wq = (float *)f.wq, w.wk = (float *)f.wk, w.wv = (float *)f.wv, w.wo = (float *)f.wo;
      w.w1 = (float *)f.w1, w.w2 = (float *)f.w2, w.w3 = (float *)f.w3, w.final_norm = (float *)f.rms_final;
    }
  } else {
    const int64_t kv = (int64_t)TKV * (TD / TH);
    float **all[] = {&w.emb, &w.att_norm, &w.ffn_norm, &w.wq, &w.wk, &w.wv, &w.wo, &w.w1, &w.w2, &w.w3, &w.final_norm};
    int64_t sz[] = {(int64_t)TV * TD, TL * TD, TL * TD, (int64_t)TL * TD * TD, TL * kv * TD, TL * kv * TD,
                    (int64_t)TL * TD * TD, (int64_t)TL * TF * TD, (int64_t)TL * TD * TF, (int64_t)TL * TF * TD, TD};
    float sc[] = {1.0f, 0, 0, 1.0f / 8, 1.0f / 8, 1.0f / 8, 1.0f / 8, 1.0f / 8, 1.0f / sqrtf((float)TF), 1.0f / 8, 0};
    for (size_t i = 0; i < sizeof all / sizeof *all && !rc; i++) {
      if (!(*all[i] = nq_tiny__alloc(sz[i]))) rc = nq_err_set(err, NQ_ENOMEM, 0, "out of memory");
      else nq_tiny__fill(&rng, *all[i], sz[i], sc[i] ? sc[i] : 0.05f, sc[i] ? 0.0f : 1.0f);
    }
    if (!rc) rc = nq_tiny__synthetic_tok(pc, err);
  }
  if (!rc) rc = nq_tiny__write_llm(vdir, &w, err);
  snprintf(p, sizeof p, "%s/tokenizer.model", vdir);
  if (!rc) rc = nq_tiny__write_spm(p, pc, TV, err);
  if (!rc) rc = nq_tiny__write_delta(ddir, &w, &rng, err);
  if (!rc) { /* ImageBind-tiny (both trunks) for the encode stage: nextgpt_tiny_media.c */
    snprintf(p, sizeof p, "%s/imagebind", out_dir);
    rc = nq_tiny__mkdirs(p, err);
    if (!rc) rc = nq_nextgpt_tiny__imagebind(p, o.seed, err);
  }
  unsigned dec = 0;
  if (!rc) rc = nq_nextgpt_tiny__diffusion(out_dir, o.seed, o.models_dir, &dec, err);
  if (!rc) {
    char y[8192];
    snprintf(y, sizeof y, nq_tiny__yaml, (unsigned long long)o.seed,
             trained ? "stories260K (trained, MIT) + 38 random signal rows" : "random (stories260K not found)",
             trained ? "stories260K" : "random-tiny", PHEADS, TR);
    snprintf(p, sizeof p, "%s/nextgpt.yaml", out_dir);
    rc = nq_tiny__write_text(p, y, err);
    if (!rc && info) {
      info->trained_llm = trained;
      info->decoders = dec;
      if (dec & NQ_TINY_TAESD) snprintf(info->taesd, sizeof info->taesd, "%s/taesd", out_dir);
      snprintf(info->yaml, sizeof info->yaml, "%s", p);
    }
  }
  if (trained) nq_llama2c_close(&f);
  else {
    float *all[] = {w.emb, w.att_norm, w.ffn_norm, w.wq, w.wk, w.wv, w.wo, w.w1, w.w2, w.w3, w.final_norm};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) free(all[i]);
  }
  for (int i = 0; i < TV; i++) free(pc[i].piece);
  free(pc);
  if (rc) nq_err_prefix(err, "init-tiny %s", out_dir);
  return rc;
}

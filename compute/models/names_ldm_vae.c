/* Name map: diffusers AutoencoderKL <-> LDM single-file VAE names (see names_ldm_vae.h for the table). */
#include "compute/models/names_ldm_vae.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "common/err.h"

typedef struct {
  const char *d, *l; /* diffusers fragment, LDM fragment (both end with '.') */
} nq_vae__pair_t;

/* Leaf renames inside a resnet / the mid attention. Rows with the same LDM name: the first is the diffusers name
 * the LDM -> diffusers direction produces. */
static const nq_vae__pair_t nq_vae__res_leaf[] = {
    {"norm1.", "norm1."}, {"conv1.", "conv1."}, {"norm2.", "norm2."}, {"conv2.", "conv2."},
    {"conv_shortcut.", "nin_shortcut."},
};
static const nq_vae__pair_t nq_vae__attn_leaf[] = {
    {"group_norm.", "norm."}, {"to_q.", "q."},   {"to_k.", "k."},     {"to_v.", "v."},        {"to_out.0.", "proj_out."},
    {"query.", "q."},         {"key.", "k."},    {"value.", "v."},    {"proj_attn.", "proj_out."},
};
/* Renames right under encoder./decoder. */
static const nq_vae__pair_t nq_vae__half_leaf[] = {
    {"conv_in.", "conv_in."}, {"conv_out.", "conv_out."}, {"conv_norm_out.", "norm_out."},
};

static int nq_vae__emit(char *out, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int nq_vae__emit(char *out, size_t cap, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(out, cap, fmt, ap);
  va_end(ap);
  return n < 0 || (size_t)n >= cap ? NQ_ELIMIT : 0;
}

/* Finds the row whose `from` side (dir 0: diffusers, 1: LDM) prefixes s; sets *tail past it. */
static const nq_vae__pair_t *nq_vae__leaf(const nq_vae__pair_t *t, size_t n, int dir, const char *s,
                                          const char **tail) {
  for (size_t i = 0; i < n; i++) {
    const char *from = dir ? t[i].l : t[i].d;
    size_t k = strlen(from);
    if (!strncmp(s, from, k) && s[k]) {
      *tail = s + k;
      return &t[i];
    }
  }
  return NULL;
}
#define NQ_VAE__N(a) (sizeof(a) / sizeof *(a))

/* "<int>." at s: the value and the text after the dot, or -1. */
static int nq_vae__index(const char *s, const char **rest) {
  int v = 0, k = 0;
  while (s[k] >= '0' && s[k] <= '9' && k < 4) v = v * 10 + (s[k++] - '0');
  if (k == 0 || s[k] != '.') return -1;
  *rest = s + k + 1;
  return v;
}

int nq_vae_ldm_name(const char *name, int L, char *out, size_t cap) {
  if (!name || !out || L < 1) return NQ_EINVAL;
  if (!strncmp(name, "quant_conv.", 11) || !strncmp(name, "post_quant_conv.", 16))
    return nq_vae__emit(out, cap, NQ_VAE_LDM_PREFIX "%s", name);
  int enc = !strncmp(name, "encoder.", 8), dec = !strncmp(name, "decoder.", 8);
  if (!enc && !dec) return NQ_ENOENT;
  const char *half = enc ? "encoder" : "decoder", *p = name + 8, *tail, *r;
  const nq_vae__pair_t *e;
  if ((e = nq_vae__leaf(nq_vae__half_leaf, NQ_VAE__N(nq_vae__half_leaf), 0, p, &tail)))
    return nq_vae__emit(out, cap, NQ_VAE_LDM_PREFIX "%s.%s%s", half, e->l, tail);
  if (!strncmp(p, "mid_block.resnets.", 18)) {
    int j = nq_vae__index(p + 18, &r);
    if (j < 0 || j > 1 || !(e = nq_vae__leaf(nq_vae__res_leaf, NQ_VAE__N(nq_vae__res_leaf), 0, r, &tail)))
      return NQ_ENOENT;
    return nq_vae__emit(out, cap, NQ_VAE_LDM_PREFIX "%s.mid.block_%d.%s%s", half, j + 1, e->l, tail);
  }
  if (!strncmp(p, "mid_block.attentions.0.", 23)) {
    if (!(e = nq_vae__leaf(nq_vae__attn_leaf, NQ_VAE__N(nq_vae__attn_leaf), 0, p + 23, &tail))) return NQ_ENOENT;
    return nq_vae__emit(out, cap, NQ_VAE_LDM_PREFIX "%s.mid.attn_1.%s%s", half, e->l, tail);
  }
  const char *blocks = enc ? "down_blocks." : "up_blocks.";
  size_t bl = strlen(blocks);
  if (strncmp(p, blocks, bl)) return NQ_ENOENT;
  int i = nq_vae__index(p + bl, &r);
  if (i < 0 || i >= L) return NQ_ENOENT;
  int li = enc ? i : L - 1 - i;
  const char *lvl = enc ? "down" : "up";
  if (!strncmp(r, "resnets.", 8)) {
    int j = nq_vae__index(r + 8, &r);
    if (j < 0 || !(e = nq_vae__leaf(nq_vae__res_leaf, NQ_VAE__N(nq_vae__res_leaf), 0, r, &tail))) return NQ_ENOENT;
    return nq_vae__emit(out, cap, NQ_VAE_LDM_PREFIX "%s.%s.%d.block.%d.%s%s", half, lvl, li, j, e->l, tail);
  }
  const char *samp = enc ? "downsamplers.0.conv." : "upsamplers.0.conv.";
  size_t sl = strlen(samp);
  if (!strncmp(r, samp, sl) && r[sl])
    return nq_vae__emit(out, cap, NQ_VAE_LDM_PREFIX "%s.%s.%d.%s.conv.%s", half, lvl, li,
                        enc ? "downsample" : "upsample", r + sl);
  return NQ_ENOENT;
}

int nq_vae_ldm_to_diffusers(const char *name, int L, char *out, size_t cap) {
  if (!name || !out || L < 1) return NQ_EINVAL;
  size_t pl = strlen(NQ_VAE_LDM_PREFIX);
  if (!strncmp(name, NQ_VAE_LDM_PREFIX, pl)) name += pl;
  if (!strncmp(name, "quant_conv.", 11) || !strncmp(name, "post_quant_conv.", 16))
    return nq_vae__emit(out, cap, "%s", name);
  int enc = !strncmp(name, "encoder.", 8), dec = !strncmp(name, "decoder.", 8);
  if (!enc && !dec) return NQ_ENOENT;
  const char *half = enc ? "encoder" : "decoder", *p = name + 8, *tail, *r;
  const nq_vae__pair_t *e;
  if ((e = nq_vae__leaf(nq_vae__half_leaf, NQ_VAE__N(nq_vae__half_leaf), 1, p, &tail)))
    return nq_vae__emit(out, cap, "%s.%s%s", half, e->d, tail);
  if (!strncmp(p, "mid.block_", 10)) {
    int j = nq_vae__index(p + 10, &r);
    if (j < 1 || j > 2 || !(e = nq_vae__leaf(nq_vae__res_leaf, NQ_VAE__N(nq_vae__res_leaf), 1, r, &tail)))
      return NQ_ENOENT;
    return nq_vae__emit(out, cap, "%s.mid_block.resnets.%d.%s%s", half, j - 1, e->d, tail);
  }
  if (!strncmp(p, "mid.attn_1.", 11)) {
    if (!(e = nq_vae__leaf(nq_vae__attn_leaf, NQ_VAE__N(nq_vae__attn_leaf), 1, p + 11, &tail))) return NQ_ENOENT;
    return nq_vae__emit(out, cap, "%s.mid_block.attentions.0.%s%s", half, e->d, tail);
  }
  const char *lvl = enc ? "down." : "up.";
  size_t ll = strlen(lvl);
  if (strncmp(p, lvl, ll)) return NQ_ENOENT;
  int li = nq_vae__index(p + ll, &r);
  if (li < 0 || li >= L) return NQ_ENOENT;
  int i = enc ? li : L - 1 - li;
  const char *blocks = enc ? "down_blocks" : "up_blocks";
  if (!strncmp(r, "block.", 6)) {
    int j = nq_vae__index(r + 6, &r);
    if (j < 0 || !(e = nq_vae__leaf(nq_vae__res_leaf, NQ_VAE__N(nq_vae__res_leaf), 1, r, &tail))) return NQ_ENOENT;
    return nq_vae__emit(out, cap, "%s.%s.%d.resnets.%d.%s%s", half, blocks, i, j, e->d, tail);
  }
  const char *samp = enc ? "downsample.conv." : "upsample.conv.";
  size_t sl = strlen(samp);
  if (!strncmp(r, samp, sl) && r[sl])
    return nq_vae__emit(out, cap, "%s.%s.%d.%s.0.conv.%s", half, blocks, i, enc ? "downsamplers" : "upsamplers",
                        r + sl);
  return NQ_ENOENT;
}

/* TAESD decoder and encoder (see taesd.h). Each half is taesd.py's nn.Sequential, described here by a layout
 * string whose i-th letter is module i, so loading is a walk over the state_dict indices. */
#include "compute/models/taesd.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "compute/models/vae_int.h"

#define NQ_TAESD_CH 64
#define NQ_TAESD_LATENT 4

/* Module letters: T = Clamp (tanh(x/3)*3), c = conv 3x3 (bias), n = conv 3x3 without bias, s = stride-2 conv
 * without bias, r = ReLU, B = Block, U = nearest upsampling x2. First conv: in_ch -> 64, last conv: 64 -> out_ch. */
static const char k_dec_layout[] = "TcrBBBUnBBBUnBBBUnBc";
static const char k_enc_layout[] = "cBsBBBsBBBsBBBc";

typedef struct {
  char kind;
  nq_vae__conv_t conv;       /* c, n, s; Block: conv[0] */
  nq_vae__conv_t bconv[2];   /* Block: conv.2, conv.4 */
  bool has_skip;
  nq_vae__conv_t skip;       /* Block skip (1x1, no bias) when channels differ */
} nq_taesd__mod_t;

typedef struct {
  int n;
  nq_taesd__mod_t *mods;     /* owned [n] */
} nq_taesd__seq_t;

struct nq_taesd {
  nq_taesd__seq_t dec, enc;  /* n == 0: half not loaded */
  nq_exec_t *ex;             /* owned */
};

static int nq_taesd__load_seq(const char *path, const char *layout, int in_ch, int out_ch, nq_dtype_t wdt,
                              nq_taesd__seq_t *s, nq_err_t *err) {
  nq_st_file_t *f = NULL;
  int rc = nq_st_open(path, &f, err);
  if (rc < 0) return rc;
  int n = (int)strlen(layout);
  s->mods = calloc((size_t)n, sizeof(*s->mods));
  if (!s->mods) {
    nq_st_close(f);
    return nq_err_set(err, NQ_ENOMEM, 0, "taesd: out of memory");
  }
  s->n = n;
  int first_conv = (int)(strchr(layout, 'c') - layout), last_conv = (int)(strrchr(layout, 'c') - layout);
  char pfx[64];
  for (int i = 0; i < n && rc == 0; i++) {
    nq_taesd__mod_t *m = &s->mods[i];
    m->kind = layout[i];
    switch (m->kind) {
      case 'c':
      case 'n':
      case 's': {
        int ci = i == first_conv ? in_ch : NQ_TAESD_CH, co = i == last_conv ? out_ch : NQ_TAESD_CH;
        snprintf(pfx, sizeof pfx, "%d", i);
        rc = nq_vae__conv_load(f, pfx, co, ci, 3, m->kind == 'c', m->kind == 's' ? 2 : 1, 1, wdt, &m->conv, err);
        break;
      }
      case 'B':
        for (int j = 0; j < 3 && rc == 0; j++) {
          snprintf(pfx, sizeof pfx, "%d.conv.%d", i, 2 * j);
          rc = nq_vae__conv_load(f, pfx, NQ_TAESD_CH, NQ_TAESD_CH, 3, true, 1, 1, wdt, j ? &m->bconv[j - 1] : &m->conv,
                                 err);
        }
        /* every TAESD block is 64 -> 64, so skip is Identity; a stray skip weight means another architecture */
        snprintf(pfx, sizeof pfx, "%d.skip.weight", i);
        if (rc == 0 && nq_st_find(f, pfx))
          rc = nq_err_set(err, NQ_EUNSUPPORTED, NQ_ERR_FATAL, "%s: block %d has a skip conv (64->64 expected)", path,
                          i);
        break;
      default: break;
    }
  }
  /* a tensor this layout does not know means the file is not a TAESD half of this shape */
  for (size_t t = 0; rc == 0 && t < nq_st_count(f); t++) {
    const char *name = nq_st_get(f, t)->name;
    int idx = atoi(name);
    if (idx < 0 || idx >= n || !strchr("cnsB", layout[idx]))
      rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: unexpected tensor '%s' for a TAESD %s", path, name,
                      layout == k_dec_layout ? "decoder" : "encoder");
  }
  nq_st_close(f);
  if (rc < 0) nq_err_prefix(err, "%s", path);
  return rc;
}

static void nq_taesd__free_seq(nq_taesd__seq_t *s) {
  for (int i = 0; i < s->n; i++) {
    nq_vae__conv_deinit(&s->mods[i].conv);
    nq_vae__conv_deinit(&s->mods[i].bconv[0]);
    nq_vae__conv_deinit(&s->mods[i].bconv[1]);
    nq_vae__conv_deinit(&s->mods[i].skip);
  }
  free(s->mods);
  memset(s, 0, sizeof(*s));
}

void nq_taesd_free(nq_taesd_t *m) {
  if (!m) return;
  nq_taesd__free_seq(&m->dec);
  nq_taesd__free_seq(&m->enc);
  nq_exec_free(m->ex);
  free(m);
}

int nq_taesd_open(const char *path, nq_dtype_t wdtype, const char *backends, nq_taesd_t **out, nq_err_t *err) {
  *out = NULL;
  if (wdtype != NQ_DT_F32 && wdtype != NQ_DT_BF16 && wdtype != NQ_DT_F16)
    return nq_err_set(err, NQ_EINVAL, 0, "taesd: weight dtype %s", nq_dtype_name(wdtype));
  nq_taesd_t *m = calloc(1, sizeof(*m));
  if (!m) return nq_err_set(err, NQ_ENOMEM, 0, "taesd: out of memory");
  char dec[4200] = "", enc[4200] = "";
  struct stat st;
  int rc = 0;
  if (stat(path, &st) != 0) {
    rc = nq_err_set(err, NQ_ENOENT, NQ_ERR_FATAL, "taesd: %s does not exist", path);
    goto fail;
  }
  if (S_ISDIR(st.st_mode)) {
    snprintf(dec, sizeof dec, "%s/taesd_decoder.safetensors", path);
    snprintf(enc, sizeof enc, "%s/taesd_encoder.safetensors", path);
    if (stat(dec, &st) != 0) dec[0] = 0;
    if (stat(enc, &st) != 0) enc[0] = 0;
  } else if (strstr(path, "decoder")) {
    snprintf(dec, sizeof dec, "%s", path);
  } else if (strstr(path, "encoder")) {
    snprintf(enc, sizeof enc, "%s", path);
  }
  if (!dec[0] && !enc[0]) {
    rc = nq_err_set(err, NQ_ENOENT, NQ_ERR_FATAL, "taesd: %s has no taesd_decoder/taesd_encoder .safetensors", path);
    goto fail;
  }
  if (dec[0] && (rc = nq_taesd__load_seq(dec, k_dec_layout, NQ_TAESD_LATENT, 3, wdtype, &m->dec, err)) < 0) goto fail;
  if (enc[0] && (rc = nq_taesd__load_seq(enc, k_enc_layout, 3, NQ_TAESD_LATENT, wdtype, &m->enc, err)) < 0) goto fail;
  if (!(m->ex = nq_exec_new(backends, NULL, err))) {
    rc = err ? err->code : NQ_EINTERNAL;
    goto fail;
  }
  *out = m;
  return 0;
fail:
  nq_taesd_free(m);
  return rc;
}

bool nq_taesd_has_decoder(const nq_taesd_t *m) { return m && m->dec.n > 0; }
bool nq_taesd_has_encoder(const nq_taesd_t *m) { return m && m->enc.n > 0; }

/* x <- ReLU(conv(ReLU(conv(ReLU(conv(x))))) + x) */
static int nq_taesd__block(nq_exec_t *ex, const nq_taesd__mod_t *b, nq_tensor_t *x, nq_err_t *err) {
  nq_tensor_t h = {0}, t = {0};
  int rc = nq_vae__conv_fwd(ex, &b->conv, x, &h, err);
  for (int j = 0; j < 2 && rc == 0; j++) {
    nq_vae__relu(&h);
    if ((rc = nq_vae__conv_fwd(ex, &b->bconv[j], &h, &t, err)) == 0) nq_vae__move(&h, &t);
  }
  if (rc == 0) {
    nq_vae__add(&h, x);
    nq_vae__relu(&h);
    nq_vae__move(x, &h);
  }
  nq_tensor_deinit(&h);
  return rc;
}

static int nq_taesd__run(nq_exec_t *ex, const nq_taesd__seq_t *s, nq_tensor_t *x /* in/out, owned */,
                         nq_err_t *err) {
  int rc = 0;
  for (int i = 0; i < s->n && rc == 0; i++) {
    const nq_taesd__mod_t *m = &s->mods[i];
    nq_tensor_t y = {0};
    switch (m->kind) {
      case 'T': {
        float *p = x->data;
        for (int64_t k = 0, n = nq_tensor_numel(x); k < n; k++) p[k] = tanhf(p[k] / 3.0f) * 3.0f;
        break;
      }
      case 'r': nq_vae__relu(x); break;
      case 'B': rc = nq_taesd__block(ex, m, x, err); break;
      case 'U':
        if ((rc = nq_vae__alloc4(&y, x->ne[0], x->ne[1], x->ne[2] * 2, x->ne[3] * 2, err)) == 0 &&
            (rc = nq_op_upsample_nearest(ex, &y, x, 2, err)) == 0)
          nq_vae__move(x, &y);
        break;
      default:
        if ((rc = nq_vae__conv_fwd(ex, &m->conv, x, &y, err)) == 0) nq_vae__move(x, &y);
        break;
    }
    nq_tensor_deinit(&y);
    if (rc < 0) nq_err_prefix(err, "taesd module %d (%c)", i, m->kind);
  }
  return rc;
}

static int nq_taesd__input(const nq_tensor_t *in, int64_t ch, int64_t mult, const char *what, nq_tensor_t *x,
                           nq_err_t *err) {
  if (!in || in->ndim != 4 || in->ne[1] != ch || in->ne[0] < 1 || in->ne[2] < 1 || in->ne[3] < 1 ||
      in->ne[2] % mult || in->ne[3] % mult)
    return nq_err_set(err, NQ_ESHAPE, NQ_ERR_FATAL, "taesd: %s must be [N,%lld,H,W] (H, W multiples of %lld)", what,
                      (long long)ch, (long long)mult);
  int rc = nq_tensor_init(x, NQ_DT_F32, 4, in->ne, err);
  if (rc == 0 && (rc = nq_tensor_copy(x, in, err)) < 0) nq_tensor_deinit(x);
  return rc;
}

int nq_taesd_decode(nq_taesd_t *m, const nq_tensor_t *latents, nq_tensor_t *image, nq_err_t *err) {
  memset(image, 0, sizeof(*image));
  if (!nq_taesd_has_decoder(m)) return nq_err_set(err, NQ_EUNSUPPORTED, NQ_ERR_FATAL, "taesd: no decoder loaded");
  int rc = nq_taesd__input(latents, NQ_TAESD_LATENT, 1, "latents", image, err);
  if (rc == 0 && (rc = nq_taesd__run(m->ex, &m->dec, image, err)) < 0) nq_tensor_deinit(image);
  return rc;
}

int nq_taesd_encode(nq_taesd_t *m, const nq_tensor_t *img, nq_tensor_t *latents, nq_err_t *err) {
  memset(latents, 0, sizeof(*latents));
  if (!nq_taesd_has_encoder(m)) return nq_err_set(err, NQ_EUNSUPPORTED, NQ_ERR_FATAL, "taesd: no encoder loaded");
  int rc = nq_taesd__input(img, 3, 8, "image", latents, err);
  if (rc == 0 && (rc = nq_taesd__run(m->ex, &m->enc, latents, err)) < 0) nq_tensor_deinit(latents);
  return rc;
}

/* Reference kernels of the vision / diffusion ops (conv2d, conv_transpose1d, groupnorm, nearest upsampling).
 * Plain loops over index ranges: the ref backend runs a whole range on one thread, the cpu backend splits it over
 * the pool. These are the numerics the fast paths (im2col + sgemm, oneDNN) are tested against. */
#include <math.h>

#include "compute/core/core_int.h"

nq_core__conv_t nq_core__conv_of(const nq_op_desc_t *op) {
  nq_core__conv_t c = {0};
  const nq_tensor_t *x = op->src[0], *w = op->src[1], *y = op->dst;
  if (op->op == NQ_OP_CONV2D) {
    c.N = x->ne[0], c.Ci = x->ne[1], c.H = x->ne[2], c.W = x->ne[3];
    c.Co = w->ne[0], c.kh = w->ne[2], c.kw = w->ne[3], c.Ho = y->ne[2], c.Wo = y->ne[3];
    c.sh = op->i[0], c.sw = op->i[1], c.ph = op->i[2], c.pw = op->i[3], c.dh = op->i[4], c.dw = op->i[5];
    c.g = op->i[6];
  } else {
    NQ_ASSERT(op->op == NQ_OP_CONV_TRANSPOSE1D);
    c.N = x->ne[0], c.Ci = x->ne[1], c.H = 1, c.W = x->ne[2];
    c.Co = y->ne[1], c.kh = 1, c.kw = w->ne[2], c.Ho = 1, c.Wo = y->ne[2];
    c.sh = 1, c.sw = op->i[0], c.ph = 0, c.pw = op->i[1], c.opad = op->i[2], c.dh = 1, c.dw = op->i[3];
    c.g = op->i[4];
  }
  c.cig = c.Ci / c.g, c.cog = c.Co / c.g;
  return c;
}

void nq_core__conv_wrow(float *dst, const nq_tensor_t *w, int64_t co, int64_t len) {
  nq_core__row_to_f32(dst, w->data, w->dtype, co, len);
}

/* Output indices o in [*lo, *hi) with 0 <= o*s + off < L (s > 0). */
static inline void nq_core__span(int64_t off, int64_t s, int64_t L, int64_t n_out, int64_t *lo, int64_t *hi) {
  /* o*s + off >= 0  <=>  o >= ceil(-off / s) */
  int64_t a = -off;
  int64_t l = a <= 0 ? 0 : (a + s - 1) / s;
  /* o*s + off <= L-1  <=>  o <= floor((L-1-off) / s) */
  int64_t b = L - 1 - off;
  int64_t h = b < 0 ? 0 : b / s + 1;
  if (h > n_out) h = n_out;
  *lo = l, *hi = h > l ? h : l;
}

void nq_core__conv2d_planes(const nq_op_desc_t *op, const nq_core__conv_t *c, int64_t p0, int64_t p1, float *wbuf) {
  const float *X = op->src[0]->data, *B = op->src[2] ? op->src[2]->data : NULL;
  float *Y = op->dst->data;
  const int64_t klen = c->cig * c->kh * c->kw, HoWo = c->Ho * c->Wo;
  int64_t wco = -1;
  for (int64_t p = p0; p < p1; p++) {
    int64_t n = p / c->Co, co = p % c->Co, gi = co / c->cog;
    if (co != wco) nq_core__conv_wrow(wbuf, op->src[1], co, klen), wco = co;
    float *yp = Y + p * HoWo;
    float b0 = B ? B[co] : 0.0f;
    for (int64_t i = 0; i < HoWo; i++) yp[i] = b0;
    for (int64_t ci = 0; ci < c->cig; ci++) {
      const float *xp = X + ((n * c->Ci) + gi * c->cig + ci) * c->H * c->W;
      for (int64_t ky = 0; ky < c->kh; ky++) {
        int64_t oy0, oy1;
        nq_core__span(ky * c->dh - c->ph, c->sh, c->H, c->Ho, &oy0, &oy1);
        for (int64_t kx = 0; kx < c->kw; kx++) {
          const float wv = wbuf[(ci * c->kh + ky) * c->kw + kx];
          const int64_t offx = kx * c->dw - c->pw;
          int64_t ox0, ox1;
          nq_core__span(offx, c->sw, c->W, c->Wo, &ox0, &ox1);
          for (int64_t oy = oy0; oy < oy1; oy++) {
            const float *xr = xp + (oy * c->sh - c->ph + ky * c->dh) * c->W + offx;
            float *yr = yp + oy * c->Wo;
            if (c->sw == 1)
              for (int64_t ox = ox0; ox < ox1; ox++) yr[ox] += wv * xr[ox];
            else
              for (int64_t ox = ox0; ox < ox1; ox++) yr[ox] += wv * xr[ox * c->sw];
          }
        }
      }
    }
  }
}

void nq_core__convt1d_rows(const nq_op_desc_t *op, const nq_core__conv_t *c, int64_t p0, int64_t p1, float *wbuf) {
  const nq_tensor_t *w = op->src[1];
  const float *X = op->src[0]->data, *B = op->src[2] ? op->src[2]->data : NULL;
  float *Y = op->dst->data;
  const int64_t K = c->kw, L = c->W, Lo = c->Wo, s = c->sw;
  for (int64_t p = p0; p < p1; p++) {
    int64_t n = p / c->Co, co = p % c->Co, gi = co / c->cog, col = co % c->cog;
    /* w [Ci, Co/g, K]: the K taps linking input channel gi*cig+ci to this output channel */
    for (int64_t ci = 0; ci < c->cig; ci++)
      nq_core__row_to_f32(wbuf + ci * K, w->data, w->dtype, (gi * c->cig + ci) * c->cog + col, K);
    float *yr = Y + p * Lo;
    float b0 = B ? B[co] : 0.0f;
    for (int64_t o = 0; o < Lo; o++) yr[o] = b0;
    /* y[o] += x[i] * w[k] for every o = i*s - pad + k*dil */
    for (int64_t ci = 0; ci < c->cig; ci++) {
      const float *xr = X + (n * c->Ci + gi * c->cig + ci) * L;
      for (int64_t k = 0; k < K; k++) {
        const float wv = wbuf[ci * K + k];
        const int64_t off = k * c->dw - c->pw;
        for (int64_t i = 0; i < L; i++) {
          int64_t o = i * s + off;
          if (o >= 0 && o < Lo) yr[o] += wv * xr[i];
        }
      }
    }
  }
}

void nq_core__groupnorm_items(const nq_op_desc_t *op, int64_t i0, int64_t i1) {
  const nq_tensor_t *x = op->src[0];
  const float *X = x->data, *G = op->src[1] ? op->src[1]->data : NULL, *Bt = op->src[2] ? op->src[2]->data : NULL;
  float *Y = op->dst->data;
  const int64_t C = x->ne[1], ng = op->i[0], cpg = C / ng;
  int64_t S = 1;
  for (int d = 2; d < x->ndim; d++) S *= x->ne[d];
  const float eps = op->f[0];
  for (int64_t it = i0; it < i1; it++) {
    int64_t n = it / ng, g = it % ng;
    const float *xg = X + (n * C + g * cpg) * S;
    float *yg = Y + (n * C + g * cpg) * S;
    const int64_t cnt = cpg * S;
    double mean = 0, var = 0;
    for (int64_t i = 0; i < cnt; i++) mean += xg[i];
    mean /= (double)cnt;
    for (int64_t i = 0; i < cnt; i++) var += ((double)xg[i] - mean) * ((double)xg[i] - mean);
    var /= (double)cnt;
    const float rs = (float)(1.0 / sqrt(var + eps)), m = (float)mean;
    for (int64_t cc = 0; cc < cpg; cc++) {
      int64_t ch = g * cpg + cc;
      float a = rs * (G ? G[ch] : 1.0f), b = Bt ? Bt[ch] : 0.0f;
      const float *xc = xg + cc * S;
      float *yc = yg + cc * S;
      for (int64_t i = 0; i < S; i++) yc[i] = (xc[i] - m) * a + b;
    }
  }
}

void nq_core__upsample_rows(const nq_op_desc_t *op, int64_t r0, int64_t r1) {
  const nq_tensor_t *x = op->src[0];
  const int64_t f = op->i[0], H = x->ne[2], W = x->ne[3], Ho = H * f, Wo = W * f;
  const float *X = x->data;
  float *Y = op->dst->data;
  for (int64_t r = r0; r < r1; r++) {
    int64_t nc = r / Ho, oy = r % Ho;
    const float *xr = X + (nc * H + oy / f) * W;
    float *yr = Y + r * Wo;
    for (int64_t ix = 0; ix < W; ix++)
      for (int64_t k = 0; k < f; k++) yr[ix * f + k] = xr[ix];
  }
}

/* compute/models/taesd.h — TAESD, the tiny autoencoder for Stable Diffusion latents (madebyollin/taesd, MIT).
 *
 *   nq_taesd_t *m; nq_taesd_open("/models/taesd", NQ_DT_F32, NULL, &m, &err);  // taesd_{decoder,encoder}.safetensors
 *   nq_taesd_decode(m, &latents, &image, &err);    // [N,4,h,w] -> [N,3,8h,8w], nominally [0,1] (clamp it)
 *   nq_taesd_encode(m, &image01, &latents, &err);  // [N,3,H,W] in [0,1] -> [N,4,H/8,W/8]
 *
 * Weights are taesd.py's nn.Sequential state_dicts (keys "1.weight", "3.conv.0.weight", ...):
 *   decoder: Clamp(tanh(x/3)*3), conv(4,64), ReLU, 3 Block, [Upsample x2, conv(no bias), Block x3|x3|x1] x3, conv(64,3)
 *   encoder: conv(3,64), Block, [conv stride 2 (no bias), Block x3] x3, conv(64,4)
 *   Block(x) = ReLU(conv(ReLU(conv(ReLU(conv(x))))) + skip(x)), skip = 1x1 conv (no bias) when channels differ.
 * Either file may be absent; the matching call then fails with NQ_EUNSUPPORTED. The decoder's raw output is what
 * taesd.py returns (diffusers' AutoencoderTiny maps it with 2x-1); taesd.py's main() clamps it to [0,1]. */
#ifndef NQ_COMPUTE_MODELS_TAESD_H
#define NQ_COMPUTE_MODELS_TAESD_H

#include "compute/core/ops.h"

typedef struct nq_taesd nq_taesd_t;

/* path: a directory holding taesd_decoder.safetensors and/or taesd_encoder.safetensors, or one such file (its
 * name says which half). wdtype: conv weight dtype for compute (F32, BF16, F16). backends: nq_exec_new spec
 * (NULL = "auto"). */
int nq_taesd_open(const char *path, nq_dtype_t wdtype, const char *backends, nq_taesd_t **out /* OUT owned */,
                  nq_err_t *err);
void nq_taesd_free(nq_taesd_t *m);
bool nq_taesd_has_decoder(const nq_taesd_t *m);
bool nq_taesd_has_encoder(const nq_taesd_t *m);

/* latents [N,4,h,w] F32 -> *image (allocated here, [N,3,8h,8w] F32, raw decoder output). */
int nq_taesd_decode(nq_taesd_t *m, const nq_tensor_t *latents, nq_tensor_t *image /* OUT owned */, nq_err_t *err);
/* image [N,3,H,W] F32 in [0,1] (H, W multiples of 8) -> *latents (allocated here, [N,4,H/8,W/8]). */
int nq_taesd_encode(nq_taesd_t *m, const nq_tensor_t *image, nq_tensor_t *latents /* OUT owned */, nq_err_t *err);

#endif

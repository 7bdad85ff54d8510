/* compute/models/imagebind.h — ImageBind-huge encoder trunks (vision and audio) as NExT-GPT uses them.
 *
 *   nq_imagebind_t *ib;
 *   nq_imagebind_load("imagebind_huge.pth", &(nq_imagebind_load_opts_t){.modality = NQ_IB_VISION, ...}, &ib, &err);
 *   nq_imagebind_embed(ib, pixels, n_items, 1, 1, out, &err);      // images: [n,3,224,224] -> [n,1024]
 *   nq_imagebind_embed(ib, video, n_items, 15, 2, out, &err);       // videos: [n*15,3,2,224,224] -> [n,1024]
 *   nq_imagebind_embed(ib_audio, fbank, n_items, 3, 1, out, &err);  // audio:  [n*3,1,128,204] -> [n,1024]
 *
 * Network (spec §3.2, ../shared/golden/imagebind/README.md):
 *   vision: PadIm2Video (an image is repeated x2 in time) -> Conv3d 3->E, kernel = stride = (2,14,14), no bias
 *           -> tokens (T,H,W) row-major -> CLS first -> + pos_embed -> LayerNorm(1e-6) -> blocks -> head
 *   audio:  Conv2d 1->E, kernel 16, stride 10, no bias -> tokens (mel-row, time-col) -> LayerNorm(1e-5)
 *           -> CLS -> + pos_embed -> blocks (attention with add_bias_kv) -> head
 *   block:  x += MHA(LN1(x)) (packed in_proj with bias; 1/sqrt(head_dim)); x += fc2(GELU_erf(fc1(LN2(x)))); LN eps 1e-6
 *   head:   LN(1e-6) -> CLS row -> Linear without bias -> L2 normalise (eps 1e-12). The audio ×20 logit scale
 *           (modality_postprocessors.audio.1.log_logit_scale) is NOT applied, as in NExT-GPT.
 *   multi-view: every view is embedded and normalised, views of one item are averaged (no re-normalisation).
 * The Conv3d stem with kernel == stride is a non-overlapping patchify, computed exactly as patch extraction + one
 * GEMM; the audio Conv2d (overlapping) runs through nq_op_conv2d. All views of a forward share every GEMM
 * (rows = views x tokens); attention runs per view.
 *
 * Weights are read by ImageBind's original state_dict names (modality_preprocessors.<m>.*, modality_trunks.<m>.*,
 * modality_heads.<m>.*) through nq_ckpt_open, so imagebind_huge.pth (torch zip pickle) and a safetensors file with
 * the same names load alike. Dimensions come from the tensor shapes; config.json (schema imagebind-dims/1), when
 * present next to the weights, gives the modality and head count and is cross-checked. Linear weights stay in the
 * file's dtype (F32/BF16/F16, mmapped) unless opts.wdtype converts them; activations are F32.
 */
#ifndef NQ_COMPUTE_MODELS_IMAGEBIND_H
#define NQ_COMPUTE_MODELS_IMAGEBIND_H

#include "compute/core/ops.h"
#include "compute/io/pickle.h"

typedef enum nq_imagebind_modality { NQ_IB_VISION = 0, NQ_IB_AUDIO = 1 } nq_imagebind_modality_t;

typedef struct nq_imagebind_config {
  nq_imagebind_modality_t modality;
  int embed_dim;       /* E: 1280 vision-huge, 768 audio */
  int num_blocks;      /* 32 / 12 */
  int num_heads;       /* 16 / 12 */
  int mlp_dim;         /* 4E */
  int out_dim;         /* 1024 */
  int kernel[3];       /* vision: kt, kh, kw (2,14,14); audio: 1, k, k (16) */
  int stride;          /* audio conv stride (10); vision: = kernel */
  int frames;          /* vision: frames per clip (2); an image is repeated to this many */
  int img_size;        /* vision: 224 */
  int mel_bins;        /* audio: 128 */
  int target_len;      /* audio: 204 frames */
  int grid[3];         /* patch grid: vision (T,H,W) = (1,16,16); audio (1,12,19) */
  int n_patches;       /* product of grid */
  int n_tokens;        /* n_patches + 1 (CLS) */
  float ln_eps;        /* 1e-6: pre-LN, blocks, head */
  float stem_ln_eps;   /* audio stem LayerNorm: 1e-5 */
} nq_imagebind_config_t;

typedef struct nq_imagebind_block {
  nq_tensor_t norm1_w, norm1_b, norm2_w, norm2_b; /* [E] F32 (borrowed from the ckpt or owned copies) */
  nq_linear_t in_proj;                            /* [3E, E] + bias [3E] (q, k, v packed) */
  nq_linear_t out_proj;                           /* [E, E] + bias */
  nq_linear_t fc1, fc2;                           /* [F, E] + bias, [E, F] + bias */
  nq_tensor_t bias_k, bias_v;                     /* audio: [E] F32 learned extra key/value; data NULL otherwise */
} nq_imagebind_block_t;

typedef struct nq_imagebind {
  nq_imagebind_config_t cfg;
  nq_tensor_t cls;                  /* [E] F32 */
  nq_tensor_t pos;                  /* [n_tokens, E] F32 */
  nq_linear_t stem;                 /* vision: [E, 3*kt*kh*kw] (Conv3d weight viewed as a matrix); audio: [E, kh*kw]
                                       holding the Conv2d weight [E,1,kh,kw] for nq_op_conv2d; no bias */
  nq_tensor_t stem_norm_w, stem_norm_b; /* audio: [E]; data NULL for vision */
  nq_tensor_t pre_norm_w, pre_norm_b;   /* vision: [E]; data NULL for audio */
  nq_imagebind_block_t *blocks;     /* owned [num_blocks] */
  nq_tensor_t head_norm_w, head_norm_b; /* [E] */
  nq_linear_t head;                 /* [out_dim, E], no bias */
  nq_exec_t *ex;                    /* owned */
  nq_ckpt_t *ck;                    /* owned: the weights' mapping */
  int max_batch;                    /* views per forward (memory bound) */
  char path[4096];
} nq_imagebind_t;

typedef struct nq_imagebind_load_opts {
  int modality;         /* -1: take it from config.json; else NQ_IB_VISION / NQ_IB_AUDIO (needed for a bare
                           checkpoint such as imagebind_huge.pth, which holds every trunk) */
  const char *backends; /* nq_exec_new spec; NULL = "auto" */
  int wdtype;           /* -1: keep the file's dtype; NQ_DT_F32 / NQ_DT_BF16 / NQ_DT_F16: convert linear weights */
  int max_batch;        /* views per forward; 0 = 16 */
} nq_imagebind_load_opts_t;

void nq_imagebind_load_opts_init(nq_imagebind_load_opts_t *o /* OUT */);
/* path: a weight file (.pth/.pt/.safetensors) or a directory holding config.json and model.safetensors (or
 * imagebind_huge.pth, or anything nq_ckpt_open accepts for a directory). A missing or mis-shaped tensor is an error
 * naming it. */
int nq_imagebind_load(const char *path, const nq_imagebind_load_opts_t *opts, nq_imagebind_t **out /* OUT owned */,
                      nq_err_t *err);
void nq_imagebind_free(nq_imagebind_t *m);

/* Floats per view of the input: vision 3*frames_in*224*224, audio 1*128*204. frames_in is 1 (an image, repeated)
 * or cfg.frames (a clip) for vision, ignored for audio. */
int64_t nq_imagebind_view_numel(const nq_imagebind_t *m, int frames_in);

/* n views -> out [n, out_dim], each L2-normalised. in: vision [n,3,224,224] (frames_in 1) or [n,3,frames,224,224];
 * audio [n,1,mel_bins,target_len]. Runs in chunks of max_batch views. */
int nq_imagebind_forward(nq_imagebind_t *m, const float *in /* borrowed */, int64_t n, int frames_in,
                         float *out /* OUT [n, out_dim] */, nq_err_t *err);
/* n_items items of `views` consecutive views each -> out [n_items, out_dim]: the mean of each item's normalised view
 * embeddings (not re-normalised), as NExT-GPT's ImageBind does for video (15 views) and audio (3 clips). */
int nq_imagebind_embed(nq_imagebind_t *m, const float *in /* borrowed */, int64_t n_items, int views, int frames_in,
                       float *out /* OUT [n_items, out_dim] */, nq_err_t *err);

const char *nq_imagebind_modality_name(nq_imagebind_modality_t m); /* "vision" / "audio" */

#endif

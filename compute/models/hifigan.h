/* compute/models/hifigan.h — SpeechT5HifiGan (transformers), the AudioLDM vocoder: log-mel [B,T,mels] -> waveform.
 *
 *   nq_hifigan_t *v;  nq_hifigan_load("audioldm/vocoder", NULL, &v, &err);   // config.json + model.safetensors
 *   nq_tensor_t wav;  nq_hifigan_forward(v, &spec, &wav, &err);               // [B,T,mels] -> [B, samples]
 *   nq_hifigan_free(v);
 *
 * Forward (../shared/golden/audio/README.md §1):
 *   normalize_before: x = (x - mean) / scale per mel bin; transpose to [B,mels,T]; conv_pre (k7, pad 3);
 *   per stage i: leaky_relu(slope) -> ConvTranspose1d(stride r_i, kernel k_i, pad (k_i-r_i)/2) -> mean of the
 *   stage's resblocks (each: for every dilation d: x += conv2(lrelu(conv1_d(lrelu(x)))), "same" paddings);
 *   leaky_relu with the torch default slope 0.01 (not leaky_relu_slope) -> conv_post (k7, pad 3) -> tanh.
 *   samples = prod over stages of the upsampler length rule, L' = (L-1) r - 2 ((k-r)/2) + k.
 * Weights: HF state_dict names (conv_pre.weight, upsampler.{i}.weight [Cin,Cout,k], resblocks.{r}.convs{1,2}.{m},
 * conv_post, mean, scale); weight_g/weight_v pairs are folded at load (w = g v / ||v||, norm over all dims but 0).
 */
#ifndef NQ_COMPUTE_MODELS_HIFIGAN_H
#define NQ_COMPUTE_MODELS_HIFIGAN_H

#include "compute/core/ops.h"

#define NQ_HIFIGAN_MAX_STAGES 8
#define NQ_HIFIGAN_MAX_KERNELS 4
#define NQ_HIFIGAN_MAX_DIL 4

typedef struct nq_hifigan_config {
  int model_in_dim;            /* mels (64) */
  int sampling_rate;           /* 16000 */
  int upsample_initial_channel;/* 1024 */
  int n_stages;
  int upsample_rates[NQ_HIFIGAN_MAX_STAGES];
  int upsample_kernel_sizes[NQ_HIFIGAN_MAX_STAGES];
  int n_kernels;
  int resblock_kernel_sizes[NQ_HIFIGAN_MAX_KERNELS];
  int n_dil;                   /* dilations per resblock (same count for each) */
  int resblock_dilation_sizes[NQ_HIFIGAN_MAX_KERNELS][NQ_HIFIGAN_MAX_DIL];
  float leaky_relu_slope;      /* 0.1 */
  bool normalize_before;
} nq_hifigan_config_t;

typedef struct nq_hifigan_opts {
  const char *backends; /* nq_exec_new spec; NULL = "auto" */
  int wdtype;           /* -1 / NQ_DT_F32 keep F32; NQ_DT_BF16 / NQ_DT_F16: store conv weights converted */
} nq_hifigan_opts_t;

void nq_hifigan_opts_init(nq_hifigan_opts_t *o /* OUT */);

typedef struct nq_hifigan nq_hifigan_t;

/* path: a dir with config.json + model.safetensors (or pytorch_model.bin), or a pipeline dir holding vocoder/. */
int nq_hifigan_load(const char *path, const nq_hifigan_opts_t *opts /* may be NULL */,
                    nq_hifigan_t **out /* OUT owned */, nq_err_t *err);
void nq_hifigan_free(nq_hifigan_t *v);
const nq_hifigan_config_t *nq_hifigan_config(const nq_hifigan_t *v);
/* Output samples for T input frames. */
int64_t nq_hifigan_out_len(const nq_hifigan_t *v, int64_t T);

/* spec [B,T,mels] F32 -> *wave (allocated here, [B, out_len(T)] F32). */
int nq_hifigan_forward(nq_hifigan_t *v, const nq_tensor_t *spec, nq_tensor_t *wave /* OUT owned */, nq_err_t *err);

#endif

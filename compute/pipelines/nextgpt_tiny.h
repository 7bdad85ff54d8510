/* compute/pipelines/nextgpt_tiny.h — `nextq model init-tiny`: a tiny NExT-GPT with the real architecture and the
 * real on-disk layouts, so one loader (compute/pipelines/nextgpt.h) serves the tiny and the real model.
 *
 *   OUT/nextgpt.yaml                 model YAML (paths relative to it), as for the real checkpoints
 *   OUT/vicuna/                      HF LLaMA dir: config.json, model.safetensors (base vocab 512), tokenizer.model
 *   OUT/delta/nextgpt.safetensors    NExT-GPT delta names: embed_tokens / lm_head resized to 550 rows,
 *                                    LoRA (r 4) on q/k/v/o, llama_proj [64,1024], the three TextFcLayer projectors
 *                                    (d_model 32, 4 heads, 4+4 layers, ffn 128; K x D = 77x768, 77x1024, 1x512)
 *   OUT/delta/added_tokens.json      the 38 added tokens (ids 512..549), checked against the tokenizer at load
 *
 * The LLM is stories260K (dim 64, 5 layers, 8 heads / 4 kv heads, vocab 512; MIT) converted to the HF layout
 * (q/k rows permuted from llama2.c's interleaved RoPE to rotate-half) with its tok512 tokenizer rewritten as a
 * SentencePiece tokenizer.model, when `models_dir` holds stories260K/{stories260K.bin,tok512.bin}. Otherwise the
 * LLM has the same shape with seeded random weights and a synthetic 512-piece byte-fallback BPE vocabulary, so the
 * signal-token ids (512..549) are the same either way. Every weight that has no trained source is drawn from a
 * seeded generator: the same seed gives byte-identical files.
 *   OUT/imagebind/                   ImageBind-tiny: model.safetensors with both trunks (vision, audio) under
 *                                    ImageBind's state_dict names + config.json (imagebind-dims/1); width 32, one
 *                                    block, 4 heads, the real token layouts, 1024-d output (nextgpt_tiny_media.c)
 *   OUT/sd/, OUT/zeroscope/, OUT/audioldm/   tiny diffusers pipelines in the real layouts (nextgpt_tiny_diffusion.c):
 *                                    Stable Diffusion (UNet2D cross 768, VAE 1/8, CLIP text 768, tokenizer, PNDM),
 *                                    ZeroScope (UNet3D cross 1024, VAE, CLIP text 1024), AudioLDM (UNet2D with 512-d
 *                                    class embeddings, 1-channel VAE, HiFi-GAN vocoder; no CLAP text encoder, so
 *                                    audio runs on NExT-GPT's cond with guidance <= 1); the YAML's image_diffusion /
 *                                    video_diffusion / audio_diffusion point at them
 *   OUT/taesd/                       the real TAESD (copied from models_dir/taesd when present)
 */
#ifndef NQ_COMPUTE_PIPELINES_NEXTGPT_TINY_H
#define NQ_COMPUTE_PIPELINES_NEXTGPT_TINY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

typedef struct nq_nextgpt_tiny_opts {
  uint64_t seed;           /* default 13 */
  const char *models_dir;  /* borrowed: a dir with stories260K/ (../shared/models), or NULL: fully random LLM */
} nq_nextgpt_tiny_opts_t;

enum { NQ_TINY_SD = 1, NQ_TINY_ZEROSCOPE = 2, NQ_TINY_AUDIOLDM = 4, NQ_TINY_TAESD = 8 };

typedef struct nq_nextgpt_tiny_info {
  bool trained_llm;        /* stories260K was used */
  unsigned decoders;       /* NQ_TINY_* written */
  char taesd[4096];        /* OUT/taesd when the real TAESD was copied, else "" */
  char yaml[4096];         /* path of the written model YAML */
} nq_nextgpt_tiny_info_t;

void nq_nextgpt_tiny_opts_init(nq_nextgpt_tiny_opts_t *o /* OUT */);
/* Creates out_dir (mkdir -p) and writes the model; existing files are replaced. info may be NULL. */
int nq_nextgpt_init_tiny(const char *out_dir, const nq_nextgpt_tiny_opts_t *o, nq_nextgpt_tiny_info_t *info /* OUT */,
                         nq_err_t *err);

#endif

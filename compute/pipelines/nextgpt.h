/* compute/pipelines/nextgpt.h — NExT-GPT (legacy 7b_tiva_v0) LLM-side assembly and the hand-off to generation.
 *
 *   nq_nextgpt_config_t cfg;  nq_nextgpt_config_load("models/nextgpt.yaml", &cfg, &err);   // spec §11 base.yaml
 *   nq_nextgpt_t *ng;         nq_nextgpt_open(&cfg, NULL, &ng, &err);   // Vicuna + delta (LoRA, embed/lm_head,
 *                                                                        // llama_proj, projectors) + tokenizer
 *   // encode stage: which media the prompt makes NExT-GPT encode, in order -> ImageBind 1024-d rows
 *   nq_nextgpt_prompt_media(prompt, &refs, &n_refs, &err);
 *   // llm stage: generate; signal hidden states gathered and (optionally) projected
 *   nq_nextgpt_output_t o;    nq_nextgpt_generate(ng, prompt, media, n_media, &gp, &o, &err);
 *   o.text; o.sig[NQ_NG_IMAGE].present / .caption / .hidden [N,H] / .embeds [N,H] / .cond [K,D]
 *   // generate stage (possibly another worker): conditioning from the transported hidden/embeds
 *   nq_nextgpt_project(ng, NQ_NG_IMAGE, &o.sig[NQ_NG_IMAGE], &err);   // fills .cond
 *
 * THE HAND-OFF to the decoders is nq_nextgpt_signal_t.cond: [K, D] float32 row-major with
 *   image  K=77, D=768   -> Stable Diffusion v1-5 prompt_embeds [1,77,768] (UNet cross-attention)
 *   video  K=77, D=1024  -> ZeroScope prompt_embeds [1,77,1024] (UNet3D cross-attention)
 *   audio  K=1,  D=512   -> AudioLDM class embedding [1,512] (NOT normalised; spec §8)
 * Negative/unconditional embeddings are each decoder's own business (spec §8). Between workers, transport
 * `hidden`+`embeds` (N x H each; small) or `cond` directly as safetensors; never via the queue.
 *
 * Prompt format (spec §5.2): the demo string "### Human: <Image>PATH</Image>  text" WITHOUT the trailing
 * "\n### Assistant:" (appended here). It is split on the regex ' <|> '; a segment starting "Image>"/"Audio>"/
 * "Video>" becomes <Img> Σ llama_proj(row) </Img> (one position, each item projected with its bias, rows taken in
 * order from `media`); every other segment becomes [BOS] + tokens. Gotchas pinned by ../shared/golden/nextgpt.
 *
 * Signals (spec §5.4): the first [IMG0]/[VID0]/[AUD0] in the generated ids; the next N-1 must complete the span.
 * hidden = final-RMSNorm states of the steps whose inputs were generated[g-1 .. g+N-2] (offset_minus_one, the
 * released checkpoint's legacy inference) or generated[g .. g+N-1]; embeds = input embedding rows of the N signal
 * ids; caption = decode(generated[0:g]) + " [IMG0] [IMG1] ...".
 */
#ifndef NQ_COMPUTE_PIPELINES_NEXTGPT_H
#define NQ_COMPUTE_PIPELINES_NEXTGPT_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/config.h"
#include "common/err.h"
#include "compute/io/pickle.h"
#include "compute/models/llama.h"
#include "compute/models/projector.h"
#include "compute/tokenizers/sentencepiece.h"

enum { NQ_NG_IMAGE = 0, NQ_NG_VIDEO = 1, NQ_NG_AUDIO = 2, NQ_NG_N_MODALITIES = 3 };
#define NQ_NG_MAX_SIGNAL 64   /* signal tokens per modality (NExT-GPT: 4 / 24 / 8) */
#define NQ_NG_MAX_STOPS 8

/* "image", "video", "audio"; NULL when out of range. */
const char *nq_nextgpt_modality_name(int modality);

/* ---- model YAML (mirrors NExT-GPT's config/base.yaml; relative paths are relative to the YAML file) ---- */

typedef struct nq_nextgpt_config {
  char *vicuna_ckpt_path;      /* HF LLaMA dir (config.json + model.safetensors[.index.json]) */
  char *tokenizer_path;        /* tokenizer.model / dir (+ added_tokens.json); default: vicuna_ckpt_path */
  char *delta_ckpt_path;       /* NExT-GPT delta: pytorch_model.pt or .safetensors (llama_proj, gen_text_hidden_fcs*,
                                  LoRA, embed_tokens/lm_head [32038,4096]); NULL: none */
  char *imagebind_ckpt_path;   /* imagebind_huge.pth (encode stage) */
  char *image_diffusion, *video_diffusion, *audio_diffusion; /* decoder dirs (generate stage) */
  char *vicuna_version, *imagebind_version;                  /* informational (7b_v0, huge) */
  long long n_img_tokens, n_video_tokens, n_audio_tokens;    /* 4, 24, 8 */
  long long num_gen_img_tokens, num_gen_video_tokens, num_gen_audio_tokens; /* must equal the n_* */
  json_t *text_emb_to_img_layers, *text_emb_to_video_layers, *text_emb_to_audio_layers; /* [-1] only */
  char *text_fc_to_img_mode, *text_fc_to_video_mode, *text_fc_to_audio_mode;           /* "transformer" */
  long long num_clip_tokens;   /* 77 */
  long long gen_emb_dim;       /* 768 (informational; the projector's out dim comes from its weights) */
  long long max_length;        /* 512 */
  long long seed;              /* 13 */
  int offset_minus_one;        /* true: legacy inference gathering gen_idx-1 (the released checkpoint) */
  long long proj_nhead;        /* projector.nhead: 4 */
  double proj_eps;             /* projector.layer_norm_eps: 1e-5 */
  double lora_alpha;           /* lora.alpha: 32 (scale alpha/r; r from the weights) */
  long long max_tgt_len;       /* generation.max_tgt_len: 246 (demo) */
  double top_p, temperature;   /* generation.top_p 0.01, generation.temperature 1.0 (demo) */
  json_t *stops_id;            /* generation.stops_id: [[835], [2277, 29937]] */
  char *dtype;                 /* compute.dtype: f32 | bf16 (linear weights) */
  char *backends;              /* compute.backends: nq_exec_new spec ("auto") */
  char *base_dir;              /* directory of the YAML (set by the loader; owned) */
} nq_nextgpt_config_t;

extern const nq_prop_t nq_nextgpt_config_props[];

/* Defaults (every key of the table). */
int nq_nextgpt_config_init(nq_nextgpt_config_t *c /* OUT */, nq_err_t *err);
/* Parse a model YAML (unknown key = error with file:line:col); env overrides NQ_NEXTGPT_<KEY>; relative paths
 * resolved against the YAML's directory; checks the layer/mode/token-count constraints. */
int nq_nextgpt_config_load(const char *path, nq_nextgpt_config_t *c /* OUT */, nq_err_t *err);
void nq_nextgpt_config_deinit(nq_nextgpt_config_t *c);

/* ---- the loaded model ---- */

enum { NQ_NG_PART_LLM = 1, NQ_NG_PART_PROJECTORS = 2, NQ_NG_PART_ALL = 3 };

typedef struct nq_nextgpt_open_opts {
  unsigned parts;       /* NQ_NG_PART_*: a generate-only worker needs only the projectors (default ALL) */
} nq_nextgpt_open_opts_t;

typedef struct nq_nextgpt {
  nq_nextgpt_config_t cfg;              /* owned copy (strings/json owned) */
  nq_llama_model_t *llm;                /* owned; NULL without NQ_NG_PART_LLM */
  nq_sp_tokenizer_t *tok;               /* owned; NULL without NQ_NG_PART_LLM */
  nq_ckpt_t *delta;                     /* owned; weights below borrow from it */
  nq_linear_t in_proj;                  /* llama_proj: [H, E] + bias (F32 owned bias) */
  bool have_in_proj;
  nq_projector_t *proj[NQ_NG_N_MODALITIES]; /* owned; NULL when the delta has none for that modality */
  nq_exec_t *ex;                        /* borrowed from llm, or owned (own_ex) when the LLM is not loaded */
  bool own_ex;
  int32_t img_open, img_close;          /* <Img>, </Img> */
  int32_t sig_ids[NQ_NG_N_MODALITIES][NQ_NG_MAX_SIGNAL];
  int n_sig[NQ_NG_N_MODALITIES];        /* 4, 24, 8 */
  int32_t stops[NQ_NG_MAX_STOPS][4];    /* stop sequences (ids) */
  int stop_len[NQ_NG_MAX_STOPS];
  int n_stops;
  int base_vocab;                       /* 32000 (512 in the tiny model) */
} nq_nextgpt_t;

/* cfg is copied. opts may be NULL. */
int nq_nextgpt_open(const nq_nextgpt_config_t *cfg, const nq_nextgpt_open_opts_t *opts,
                    nq_nextgpt_t **out /* OUT owned */, nq_err_t *err);
void nq_nextgpt_free(nq_nextgpt_t *ng);
/* Convenience: nq_nextgpt_config_load + nq_nextgpt_open. */
int nq_nextgpt_open_yaml(const char *path, const nq_nextgpt_open_opts_t *opts, nq_nextgpt_t **out, nq_err_t *err);

/* ---- prompt ---- */

typedef struct nq_nextgpt_media_ref {
  int modality;   /* NQ_NG_* */
  char *path;     /* owned: the path as written in the tag ("temp..." is opened as "./temp...") */
  int segment;    /* which spliced position it is summed into */
} nq_nextgpt_media_ref_t;

/* The media NExT-GPT encodes for `prompt`, in encode order (one media row each). */
int nq_nextgpt_prompt_media(const char *prompt, nq_nextgpt_media_ref_t **out /* OUT owned */, int *n /* OUT */,
                            nq_err_t *err);
void nq_nextgpt_media_refs_free(nq_nextgpt_media_ref_t *refs, int n);

typedef struct nq_nextgpt_prompt {
  float *embeds;   /* owned [T, H] */
  int64_t *ids;    /* owned [T]: token id, or -1 at a media position */
  int T;
} nq_nextgpt_prompt_t;

/* media: [n_media, E] ImageBind rows (E = llama_proj's in dim), consumed in nq_nextgpt_prompt_media order;
 * n_media must equal the number of items the prompt names. */
int nq_nextgpt_prompt_build(nq_nextgpt_t *ng, const char *prompt, const float *media, int n_media,
                            nq_nextgpt_prompt_t *out /* OUT */, nq_err_t *err);
void nq_nextgpt_prompt_deinit(nq_nextgpt_prompt_t *p);

/* ---- generation and signals ---- */

typedef struct nq_nextgpt_gen_params {
  int max_tgt_len;      /* default cfg.max_tgt_len */
  float top_p;          /* default cfg.top_p */
  float temperature;    /* default cfg.temperature (0 = greedy) */
  uint64_t seed;        /* default cfg.seed */
  bool project;         /* run the projectors on found signals (fills cond); default true */
} nq_nextgpt_gen_params_t;

void nq_nextgpt_gen_params_init(const nq_nextgpt_t *ng, nq_nextgpt_gen_params_t *p /* OUT */);

typedef struct nq_nextgpt_signal {
  bool present;         /* a complete span was generated */
  bool incomplete;      /* [X0] generated but the span broken (upstream asserts; here the modality is dropped) */
  int gen_idx;          /* position of [X0] in the generated ids */
  int n;                /* N signal tokens (4 / 24 / 8) */
  int dim;              /* H */
  float *hidden;        /* owned [N, H] */
  float *embeds;        /* owned [N, H] */
  float *cond;          /* owned [K, D] projector output, or NULL */
  int K, D;
  char *caption;        /* owned: decoded text before the signal + " [X0] [X1] ..." */
} nq_nextgpt_signal_t;

typedef struct nq_nextgpt_output {
  char *text;           /* owned: decode of the generated ids (stop sequence removed) */
  int32_t *tokens;      /* owned: generated ids as HF returns them (the final stop id included) */
  int n_tokens;
  nq_nextgpt_signal_t sig[NQ_NG_N_MODALITIES];
} nq_nextgpt_output_t;

void nq_nextgpt_output_deinit(nq_nextgpt_output_t *o);

/* Sampled generation from the prompt (batch 1, KV cache), stopping on the configured stop sequences or EOS, then
 * signal detection, gathering and (p->project) projection. p may be NULL (defaults). */
int nq_nextgpt_generate(nq_nextgpt_t *ng, const char *prompt, const float *media, int n_media,
                        const nq_nextgpt_gen_params_t *p, nq_nextgpt_output_t *out /* OUT */, nq_err_t *err);
/* Teacher-forced: the same outputs for given generated ids (HF `sequences`, the last id never fed back).
 * offset_minus_one < 0: the config's setting. An incomplete signal span is an error here (as upstream). */
int nq_nextgpt_signals_from_ids(nq_nextgpt_t *ng, const char *prompt, const float *media, int n_media,
                                const int32_t *generated, int G, int offset_minus_one, bool project,
                                nq_nextgpt_output_t *out /* OUT */, nq_err_t *err);
/* Projector for sig (hidden + embeds [N,H]) -> sig->cond [K,D] (replaced if present). */
int nq_nextgpt_project(nq_nextgpt_t *ng, int modality, nq_nextgpt_signal_t *sig, nq_err_t *err);
/* batch_decode(ids, skip_special_tokens=True) of transformers 4.29's slow LlamaTokenizer: ids 0/1/2 dropped, runs
 * of ordinary pieces decoded by SentencePiece, added tokens standing alone, parts joined with " ". malloc'ed. */
char *nq_nextgpt_decode(const nq_nextgpt_t *ng, const int32_t *ids, int n);

#endif

/* compute/models/unet_int.h — private: the building blocks shared by UNet2DConditionModel (unet2d.c) and
 * UNet3DConditionModel (unet3d.c), as diffusers 0.21 defines them.
 *
 * Both UNets are the same engine (unet_core.c): conv_in, down blocks, mid block, up blocks with skip
 * concatenation, conv_norm_out/SiLU/conv_out. Each down/mid/up layer is
 *     resnet -> [temporal conv] -> [Transformer2D -> [TransformerTemporal]]
 * where the bracketed temporal modules only exist in the 3D model. Activations are NCHW F32 with frames
 * folded into the batch (row n = b*F + f), so a 2D UNet is the F = 1 case without temporal modules.
 *
 * Weights are looked up by their diffusers state_dict names (through a name map for LDM single files),
 * every shape is checked at load, and the tensors stay in the mapped file (F32/BF16/F16) unless a weight
 * dtype conversion is asked for; norm parameters and biases are F32 (converted copies where needed).
 */
#ifndef NQ_COMPUTE_MODELS_UNET_INT_H
#define NQ_COMPUTE_MODELS_UNET_INT_H

#include "compute/core/ops.h"
#include "compute/io/safetensors.h"

#define NQ_UNET_MAX_LEVELS 8

/* ---- weights of one module ---------------------------------------------------------------------------- */

typedef struct nq_unet__conv {
  nq_tensor_t w;           /* [Co, Ci, kh, kw] F32/BF16/F16 (borrowed from the file or owned when converted) */
  nq_tensor_t b;           /* [Co] F32 */
  int stride, pad_h, pad_w;
} nq_unet__conv_t;

typedef struct nq_unet__norm {
  nq_tensor_t g, b;        /* [C] F32 */
  int groups;              /* GroupNorm only */
  float eps;
} nq_unet__norm_t;

typedef struct nq_unet__resnet {
  int cin, cout;
  nq_unet__norm_t norm1, norm2;
  nq_unet__conv_t conv1, conv2;
  nq_linear_t temb;        /* time_emb_proj [Co, E] */
  bool has_shortcut;
  nq_unet__conv_t shortcut; /* 1x1 conv_shortcut when cin != cout */
  float out_scale;         /* output_scale_factor */
} nq_unet__resnet_t;

typedef struct nq_unet__attn {
  nq_linear_t q, k, v, o;  /* to_q [I, D], to_k/to_v [I, Dkv], to_out.0 [D, I] (+bias) */
  int heads, head_dim;
} nq_unet__attn_t;

typedef struct nq_unet__tblock {
  nq_unet__norm_t n1, n2, n3; /* LayerNorm eps 1e-5 */
  nq_unet__attn_t a1, a2;
  nq_linear_t ff1, ff2;       /* GEGLU proj [2F, I], out [I, F] */
  int ff_inner;
} nq_unet__tblock_t;

/* Transformer2DModel (temporal = 0) or TransformerTemporalModel (temporal = 1). */
typedef struct nq_unet__tf {
  int temporal;
  int c, inner;
  nq_unet__norm_t norm;       /* GroupNorm eps 1e-6 */
  nq_linear_t proj_in, proj_out; /* 1x1 convs are used as linears on the token layout (same maths) */
  int n_blocks;
  nq_unet__tblock_t *blocks;  /* owned [n_blocks] */
} nq_unet__tf_t;

/* TemporalConvLayer: 4 x [GroupNorm(32), SiLU, Conv3d (3,1,1)] + identity. */
typedef struct nq_unet__tconv {
  nq_unet__norm_t norm[4];
  nq_unet__conv_t conv[4];    /* weights viewed as [Co, Ci, 3, 1] */
} nq_unet__tconv_t;

/* One down/up block or the mid block. */
typedef struct nq_unet__block {
  int n_layers;               /* resnets (mid block: resnets = n_layers, attentions = n_layers - 1) */
  nq_unet__resnet_t *res;     /* owned [n_layers] */
  nq_unet__tconv_t *tconv;    /* owned [n_layers] or NULL (2D) */
  nq_unet__tf_t *attn;        /* owned [n_layers] (mid: n_layers - 1) or NULL when the block has no attention */
  nq_unet__tf_t *tattn;       /* owned, same count as attn, or NULL (2D) */
  bool has_sampler;           /* down: Downsample2D (stride-2 conv); up: Upsample2D (nearest x2 + conv) */
  nq_unet__conv_t sampler;
} nq_unet__block_t;

/* ---- architecture (filled from config.json by unet2d.c / unet3d.c) ---------------------------------------- */

typedef struct nq_unet__arch {
  int is3d;
  int in_channels, out_channels, n_levels;
  int boc[NQ_UNET_MAX_LEVELS];        /* block_out_channels */
  int down_attn[NQ_UNET_MAX_LEVELS];  /* CrossAttnDownBlock */
  int up_attn[NQ_UNET_MAX_LEVELS];    /* CrossAttnUpBlock (in up order) */
  int heads[NQ_UNET_MAX_LEVELS];      /* per down level: the config's num_attention_heads/attention_head_dim value */
  int cross_dim[NQ_UNET_MAX_LEVELS];  /* per down level: cross_attention_dim */
  int tf_layers[NQ_UNET_MAX_LEVELS];  /* per down level: transformer_layers_per_block */
  int layers_per_block;
  int has_mid;
  int norm_groups;
  float norm_eps;
  int flip_sin_to_cos;
  float freq_shift;
  int conv_in_kernel, conv_out_kernel, downsample_padding;
  int time_embed_dim;                 /* 4 * boc[0] */
  int class_embed;                    /* 0 none, 1 simple_projection */
  int class_concat, class_in_dim;
  float mid_scale, resnet_out_scale;
  int center_input_sample;
  int tin_heads, tin_head_dim;        /* 3D transformer_in: 8 heads x attention_head_dim */
} nq_unet__arch_t;

/* ---- the loaded model ----------------------------------------------------------------------------------- */

typedef struct nq_unet__model {
  nq_unet__arch_t a;
  nq_st_file_t *st;                   /* owned mapping of the weights file (NULL for a listing check) */
  nq_exec_t *ex;                      /* owned */
  int attn_path;                      /* 0 auto, 1 per-sequence attention op, 2 GEMM, 3 batched small (tests) */
  nq_unet__conv_t conv_in, conv_out;
  nq_unet__norm_t norm_out;
  nq_linear_t t_lin1, t_lin2;         /* time_embedding.linear_1/2 */
  nq_linear_t class_lin;              /* class_embedding (simple_projection) */
  bool has_tin;
  nq_unet__tf_t tin;                  /* 3D transformer_in */
  nq_unet__block_t down[NQ_UNET_MAX_LEVELS], up[NQ_UNET_MAX_LEVELS], mid;
} nq_unet__model_t;

/* ---- loading -------------------------------------------------------------------------------------------- */

/* One tensor as a weights source describes it (a safetensors file, or a name/shape listing for checks). */
typedef struct nq_unet__entry {
  const char *name;
  nq_dtype_t dtype;
  int ndim;
  int64_t shape[NQ_ST_MAX_DIMS];
  const void *data;                   /* NULL in a listing */
} nq_unet__entry_t;

/* Looks `name` (a file name, after mapping) up; returns 1 and fills *e when present, 0 when absent. */
typedef int (*nq_unet__lookup_fn)(void *ctx, const char *name, nq_unet__entry_t *e);
/* Maps a diffusers name to the file's name; returns 0 or NQ_ENOENT when the name has no counterpart. */
typedef int (*nq_unet__map_fn)(const nq_unet__arch_t *a, const char *diffusers, char *out, size_t cap);

typedef struct nq_unet__src {
  nq_unet__lookup_fn lookup;
  void *ctx;
  nq_unet__map_fn map;                /* NULL: names are diffusers names */
  const nq_unet__arch_t *arch;        /* borrowed: passed to map */
  int wdtype;                         /* -1 keep; NQ_DT_F32/BF16/F16: convert linear weights */
  int conv_wdtype;                    /* the same for conv weights */
  int n_found;                        /* OUT: tensors consumed */
} nq_unet__src_t;

/* Builds every module of m->a from src (m->a must be filled). On error the partially built model is left for
 * nq_unet__model_deinit. */
int nq_unet__build(nq_unet__model_t *m, nq_unet__src_t *src, nq_err_t *err);
void nq_unet__model_deinit(nq_unet__model_t *m);

/* Opens the weights file (diffusers names, or an LDM single file detected by its names), builds m (m->a filled
 * by the caller) and creates its executor. */
int nq_unet__load_weights(nq_unet__model_t *m, const char *weights_path, const char *backends, int wdtype,
                          int conv_wdtype, nq_err_t *err);

/* Finds config.json and the weights file for `path` (a pipeline dir with unet/, a unet dir, or a single
 * .safetensors file; config overrides the config path). */
int nq_unet__resolve(const char *path, const char *config, char *cfg_out, char *w_out, size_t cap, nq_err_t *err);

/* Moves a forward result y into the denoise loop's out (checks the size; frees y). */
int nq_unet__eps_copy(nq_tensor_t *out, nq_tensor_t *y, nq_err_t *err);

/* LDM single-file names (names_ldm_unet.c): "model.diffusion_model.input_blocks.1.0.in_layers.0.weight"... */
int nq_unet__ldm_name(const nq_unet__arch_t *a, const char *diffusers, char *out, size_t cap);

/* ---- forward -------------------------------------------------------------------------------------------- */

/* Runs the UNet on x [B*F, Cin, H, W] (frames folded; F = 1 for 2D). timesteps [B]; ehs [B, L, D] or NULL;
 * class_labels [B, E] or NULL. y is allocated here ([B*F, Cout, H, W]). */
int nq_unet__forward(nq_unet__model_t *m, const nq_tensor_t *x, int B, int F, const float *timesteps,
                     const nq_tensor_t *ehs, const nq_tensor_t *class_labels, nq_tensor_t *y /* OUT */,
                     nq_err_t *err);

/* Fills *a from a diffusers config.json (UNet2DConditionModel when is3d == 0, UNet3DConditionModel otherwise).
 * Options this port does not implement are NQ_EUNSUPPORTED errors naming the key. */
int nq_unet__arch_parse(const char *config_path, int is3d, nq_unet__arch_t *a, nq_err_t *err);

#endif

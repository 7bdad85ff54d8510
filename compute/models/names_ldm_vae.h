/* compute/models/names_ldm_vae.h — name map between diffusers AutoencoderKL state_dict names and the original
 * LDM / CompVis single-file names (`first_stage_model.*` in v1-5-pruned-emaonly.safetensors; the listings in
 * ../shared/models/listings/sd15_vae_{encoder,decoder}_ldm.txt), the inverse of diffusers' convert_ldm_vae_checkpoint.
 *
 *   diffusers                                   LDM (after "first_stage_model.")
 *   {en,de}coder.conv_in / conv_out              {en,de}coder.conv_in / conv_out
 *   {en,de}coder.conv_norm_out                   {en,de}coder.norm_out
 *   encoder.down_blocks.i.resnets.j.X            encoder.down.i.block.j.X
 *   encoder.down_blocks.i.downsamplers.0.conv    encoder.down.i.downsample.conv
 *   decoder.up_blocks.i.resnets.j.X              decoder.up.(L-1-i).block.j.X      (LDM counts up levels upwards)
 *   decoder.up_blocks.i.upsamplers.0.conv        decoder.up.(L-1-i).upsample.conv
 *   {en,de}coder.mid_block.resnets.{0,1}.X       {en,de}coder.mid.block_{1,2}.X
 *   {en,de}coder.mid_block.attentions.0.A        {en,de}coder.mid.attn_1.A'
 *   quant_conv, post_quant_conv                  quant_conv, post_quant_conv
 * with, inside a resnet, conv_shortcut <-> nin_shortcut (norm1/conv1/norm2/conv2 unchanged), and inside the
 * attention group_norm <-> norm, to_q/to_k/to_v <-> q/k/v, to_out.0 <-> proj_out (the diffusers <= 0.13 names
 * query/key/value/proj_attn map to the same LDM names). LDM stores the attention projections as 1x1 convs
 * [C, C, 1, 1]; the VAE loader takes that shape as a linear.
 */
#ifndef NQ_COMPUTE_MODELS_NAMES_LDM_VAE_H
#define NQ_COMPUTE_MODELS_NAMES_LDM_VAE_H

#include <stddef.h>

#define NQ_VAE_LDM_PREFIX "first_stage_model."

/* diffusers name -> LDM name (with the prefix). n_levels = len(block_out_channels). 0, NQ_ENOENT when the name has
 * no LDM counterpart, NQ_ELIMIT when out is too small. */
int nq_vae_ldm_name(const char *diffusers, int n_levels, char *out /* OUT */, size_t cap);
/* LDM name (with or without the prefix) -> diffusers name (0.21 attention names). Same returns. */
int nq_vae_ldm_to_diffusers(const char *ldm, int n_levels, char *out /* OUT */, size_t cap);

#endif

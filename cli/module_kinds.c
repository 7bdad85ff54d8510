/* cli/module_kinds.c — the `nextq module run` registry: one row per kind (../shared/golden/README.md). */
#include "cli/module_kinds.h"

const nq_module_kind_t nq_module_kinds[] = {
    {"image-preprocess", nq_module_image_preprocess, "image file (params.path) -> pixels [1,3,224,224]"},
    {"audio-preprocess", nq_module_audio_preprocess, "audio file (params.path) -> fbank [3,1,128,204]"},
    {"video-preprocess", nq_module_video_preprocess, "video file (params.path) -> video [15,3,2,224,224]"},
    {"clip-tokenize", nq_module_clip_tokenize, "text_NNN -> input_ids [N,77] (CLIP BPE)"},
    {"roberta-tokenize", nq_module_roberta_tokenize, "text_NNN -> input_ids, attention_mask [N,L] (RoBERTa BPE)"},
    {"llm-logits", nq_module_llm_logits, "tokens [T] -> logits [T,vocab] (llama2c .bin or HF LLaMA dir)"},
    {"llm-greedy", nq_module_llm_greedy, "tokens [T] -> generated [n_new] (params.n_new)"},
    {"llama-tokenize", nq_module_llama_tokenize, "text_NNN -> ids_NNN (SentencePiece tokenizer.model)"},
    {"out-proj", nq_module_out_proj, "hidden [N,H], embeds [N,H] -> out [1,K,D] (NExT-GPT TextFcLayer)"},
    {"nextgpt-prompt", nq_module_nextgpt_prompt, "text_000, media_embeds [n,E] -> input_embeds [T,H], token_ids [T]"},
    {"nextgpt-signal", nq_module_nextgpt_signal,
     "text_000, media_embeds, generated [G] -> signal_hidden, signal_embeds, projected, caption_text"},
    {"imagebind-vision", nq_module_imagebind_vision, "pixels [B,3,224,224] or video [B,3,2,224,224] -> embeds [B,E]"},
    {"imagebind-audio", nq_module_imagebind_audio, "fbank [B,1,128,204] -> embeds [B,E] (ImageBind audio trunk)"},
    {"clip-text", nq_module_clip_text, "input_ids [B,77] -> last_hidden_state [B,77,D], pooled [B,D] (CLIP text)"},
    {"unet2d", nq_module_unet2d, "sample [B,C,H,W], timestep [B], encoder_hidden_states / class_labels -> out"},
    {"unet3d", nq_module_unet3d, "sample [B,C,F,H,W], timestep [B], encoder_hidden_states [B,L,D] -> out"},
    {"taesd-decode", nq_module_taesd_decode, "latents [N,4,h,w] -> image [N,3,8h,8w] in params.clamp (TAESD)"},
    {"vae-decode", nq_module_vae_decode, "z [N,4,h,w] -> sample [N,3,8h,8w] (AutoencoderKL.decode)"},
    {"vae-encode", nq_module_vae_encode, "image [N,3,H,W] -> mean [N,4,H/8,W/8] (AutoencoderKL latent_dist.mean)"},
    {"denoise", nq_module_denoise,
     "latents, prompt_embeds, negative_prompt_embeds -> latents (params.steps, guidance_scale; model unet/+scheduler/)"},
    {NULL, NULL, NULL},
};

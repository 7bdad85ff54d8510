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
    {NULL, NULL, NULL},
};

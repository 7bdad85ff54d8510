/* worker/nextgpt_stage.h — private to worker/: the NExT-GPT side of the chained stages
 *   encode (stage_encode.c) -> llm (NExT-GPT mode, here) -> generate-image | generate-video | generate-audio.
 *
 * Which model: params.nextgpt (a NExT-GPT model YAML, compute/pipelines/nextgpt.h), else the worker's stage config
 * {llm: {nextgpt: PATH}}, else $NQ_NEXTGPT_MODEL. The llm stage runs the NExT-GPT path when one is set; otherwise
 * its plain LLaMA path (params.model) is unchanged. `model` stays free for the stages' own models because the
 * envelope's params are shared by every stage of a chain.
 *
 * llm task input: the dataset record (prompt/text, media) plus, after encode, input.prev.encode.embeddings
 * [{kind, uri, npy, dim}]. The prompt is input.prompt, else input.text, used as is when it already starts with
 * "### Human:" (its <Image>/<Audio>/<Video> tags must name the encoded URIs), else built as NExT-GPT's demo does:
 * "### Human: " + "<Image>URI</Image> " per image + "<Audio>URI</Audio> " per audio + "<Video>URI</Video> " per video
 * + " " + text. params.mode "caption": the text is params.instruction (default "generate a caption", the stage-1
 * prompt) and the record's text is the reference caption.
 *
 * llm params: max_tgt_len, temperature, top_p, seed (defaults: the model YAML's generation block),
 *   output_modality: image|video|audio — when the generated answer has no complete span of that modality, the span
 *     is appended to the generated text and the signal states are computed teacher-forced (NExT-GPT's stage-2 layout
 *     "caption [IMG0] ... [IMG3]"), so t2x jobs always produce their modality;
 *   route (default true): result.next = the generate stage of every modality produced (image, video, audio order),
 *     followed by the envelope's next entries that are not generate-*; false: the envelope's next as is;
 *   project: "llm" (default: the projectors run here and `<m>_cond.npy` is written) or "generate" (only the signal
 *     states travel; the generate worker opens the projectors alone);
 *   generate_device: cpu|cuda — device class of the routed generate tasks (result.next_device; default the envelope's);
 *   eval (bool): attach {"hyp": text, "refs": [input.text and input.meta.captions...]} as result.eval; the scheduler
 *     aggregates BLEU-4 / CIDEr-D into <job>/_eval.json (scheduler/caption_metrics.h).
 *
 * llm outputs (object-store files next to the task; never blobs in the queue):
 *   text.txt                      the generated text (decode without the stop sequence)
 *   <m>_hidden.npy, <m>_embeds.npy   float32 [N, H]: signal hidden states and signal-token input embeddings
 *   <m>_cond.npy                  float32 [K, D]: projector output (project: llm) — the decoder's conditioning
 *   result.signals.<m> = {"hidden", "embeds", "cond" (URIs), "caption", "n", "K", "D"}
 *
 * generate side: nq_ngstage_cond reads input.prev.llm.signals.<m>: the cond URI when present, else projects the
 * hidden/embeds with a projectors-only open of the same model YAML.
 */
#ifndef NQ_WORKER_NEXTGPT_STAGE_H
#define NQ_WORKER_NEXTGPT_STAGE_H

#include <stdbool.h>

#include "compute/pipelines/nextgpt.h"
#include "worker/worker.h"

typedef struct nq_ngcache nq_ngcache_t; /* per-worker cache of opened NExT-GPT models (thread-safe) */

nq_ngcache_t *nq_ngcache_new(void);
void nq_ngcache_free(nq_ngcache_t *c);

/* The model YAML for a task: params.nextgpt, else def (stage config / env; may be NULL). NULL when none. */
const char *nq_ngstage_model(const json_t *params, const char *def);

/* Runs the NExT-GPT llm step of one task (sets t->rc / t->err on failure). */
void nq_ngstage_llm_task(nq_ngcache_t *c, nq_task_ctx_t *t, const char *model_yaml);

/* The conditioning of `modality` for a generate task: *cond owned [K, D]. caption (may be NULL): owned copy of the
 * signal caption or NULL. A task without input.prev.llm.signals.<m> is NQ_EINVAL | NQ_ERR_FATAL. */
int nq_ngstage_cond(nq_ngcache_t *c, const nq_task_ctx_t *t, int modality, const char *model_yaml,
                    float **cond /* OUT owned */, int *K /* OUT */, int *D /* OUT */, char **caption /* OUT owned */,
                    nq_err_t *err);

/* Reads a float32 .npy object by URI into *out (owned); shape into dims (up to 2: [rows, cols], 1-D gives rows 1). */
int nq_ngstage_read_npy(const char *uri, float **out /* OUT owned */, int *rows /* OUT */, int *cols /* OUT */,
                        nq_err_t *err);

#endif

/* worker/stage_generate_av.h — private to worker/: what the generate-audio and generate-video stages share
 * (stage_generate_audio.c, stage_generate_video.c; helpers in stage_generate_av.c).
 *
 * Conditioning of a task, first match wins:
 *   1. input.embeds: URI of a float32 .npy ([D] / [1,D] audio, [77,D] video) or .safetensors (the tensor named
 *      "embeds", "cond" or "prompt_embeds", else the only tensor), read through the worker's store;
 *   2. input.prev.llm.signals.<audio|video>: the NExT-GPT hand-off (worker/nextgpt_stage.h, nq_ngstage_cond);
 *   3. text: input.prompt, else input.text (encoded by the pipeline's own text encoder).
 * Model directory: params.<audio|video>_model, else the stage config {generate-audio: {model: DIR}}, else
 * $NQ_AUDIOLDM_MODEL / $NQ_ZEROSCOPE_MODEL, else the NExT-GPT model YAML's audio_diffusion / video_diffusion.
 * Stage config also takes dtype (f32|bf16|f16) and backends. Pipelines are cached per directory for the worker's
 * life (each runs one generation at a time).
 * Progress: result.metrics.step_s lists the seconds of each denoise step, metrics.steps the steps done.
 */
#ifndef NQ_WORKER_STAGE_GENERATE_AV_H
#define NQ_WORKER_STAGE_GENERATE_AV_H

#include <jansson.h>
#include <pthread.h>

#include "worker/nextgpt_stage.h"
#include "worker/worker.h"

#define NQ_GENAV_CACHE_MAX 2

typedef int (*nq_genav_open_fn)(const char *dir, const char *backends, int wdtype, void **out, nq_err_t *err);
typedef void (*nq_genav_free_fn)(void *pipe);

typedef struct nq_genav_state {
  const char *stage;          /* borrowed: "generate-audio" / "generate-video" */
  const char *env_model;      /* borrowed: environment variable with the default directory */
  int modality;               /* NQ_NG_AUDIO / NQ_NG_VIDEO */
  nq_genav_open_fn open;
  nq_genav_free_fn free_pipe;
  pthread_mutex_t mu;         /* guards the cache */
  char *path[NQ_GENAV_CACHE_MAX]; /* owned keys */
  void *pipe[NQ_GENAV_CACHE_MAX]; /* owned */
  int n;
  char *def_model, *def_nextgpt, *backends; /* owned, may be NULL */
  int wdtype;
  nq_ngcache_t *ng;           /* owned: NExT-GPT projectors for hand-offs that were not projected upstream */
} nq_genav_state_t;

int nq_genav_init(nq_genav_state_t **out /* OUT owned */, const json_t *config, const char *stage, const char *env_model,
                  int modality, nq_genav_open_fn open, nq_genav_free_fn free_pipe, nq_err_t *err);
void nq_genav_fini(nq_genav_state_t *s);
/* The pipeline for task t (loaded on first use); NULL with err set. */
void *nq_genav_pipe(nq_genav_state_t *s, const nq_task_ctx_t *t, nq_err_t *err);

typedef struct nq_genav_cond {
  float *embeds;   /* owned [rows, cols] or NULL (text) */
  int rows, cols;
  const char *text;/* borrowed from the envelope, or NULL */
  char *caption;   /* owned: NExT-GPT signal caption, or NULL */
  const char *source; /* "embeds", "nextgpt" or "text" */
} nq_genav_cond_t;

int nq_genav_cond_get(nq_genav_state_t *s, const nq_task_ctx_t *t, nq_genav_cond_t *c /* OUT */, nq_err_t *err);
void nq_genav_cond_deinit(nq_genav_cond_t *c);

/* params.key as a number in [lo, hi] into *v (left alone when absent); NQ_EINVAL | FATAL otherwise. */
int nq_genav_param_num(const json_t *params, const char *key, double lo, double hi, double *v, nq_err_t *err);

/* Progress recorder (nq_gen_progress_cb ud). */
typedef struct nq_genav_prog {
  json_t *step_s;  /* owned array of per-step seconds */
  double last;     /* time of the previous report */
  int steps, n_steps;
} nq_genav_prog_t;
void nq_genav_prog_init(nq_genav_prog_t *p);
int nq_genav_prog_cb(void *ud, int step, int n_steps);
double nq_genav_now(void);

#endif

/* worker/stages.h — private: the stage handlers known to the registry (worker/stages.c). */
#ifndef NQ_WORKER_STAGES_H
#define NQ_WORKER_STAGES_H

#include "worker/worker.h"

extern const nq_stage_t nq_stage_noop;
extern const nq_stage_t nq_stage_llm;
extern const nq_stage_t nq_stage_encode;
extern const nq_stage_t nq_stage_generate_audio; /* stage_generate_audio.c */
extern const nq_stage_t nq_stage_generate_video; /* stage_generate_video.c */
extern const nq_stage_t nq_stage_generate_image; /* stage_generate_image.c */
extern const nq_stage_t nq_stage_precompute;     /* stage_precompute.c: precompute-embeddings */

#endif

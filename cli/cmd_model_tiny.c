/* cli/cmd_model_tiny.c — `nextq model init-tiny --out DIR [--seed S] [--models DIR | --random]`.
 *
 * Writes a tiny NExT-GPT (compute/pipelines/nextgpt_tiny.h) and checks it loads and generates. The trained small
 * LLM (stories260K) is taken from --models, else $NQ_MODELS_DIR, else ../shared/models when it exists; without it
 * (or with --random) every weight is seeded random and the command says which public files to put where. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "compute/pipelines/audioldm.h"
#include "compute/pipelines/nextgpt.h"
#include "compute/pipelines/nextgpt_tiny.h"
#include "compute/pipelines/sd.h"
#include "compute/pipelines/zeroscope.h"

int nq_cli_model_init_tiny(int argc, char **argv);

static void nq_tiny_cli__usage(FILE *f) {
  fprintf(f, "usage: nextq model init-tiny --out DIR [--seed S] [--models DIR | --random]\n"
             "  writes DIR/nextgpt.yaml, DIR/vicuna/ (HF LLaMA + tokenizer.model), DIR/delta/nextgpt.safetensors,\n"
             "  DIR/imagebind/, and the decoders DIR/sd/, DIR/zeroscope/, DIR/audioldm/ (diffusers layouts), DIR/taesd/\n"
             "  --models DIR  where stories260K/{stories260K.bin,tok512.bin} and taesd/taesd_decoder.safetensors are\n"
             "                (default $NQ_MODELS_DIR, then ../shared/models); --random: random LLM, synthetic\n"
             "                vocabulary and no TAESD instead\n");
}

int nq_cli_model_init_tiny(int argc, char **argv) {
  const char *out = NULL, *models = NULL;
  bool random_llm = false;
  nq_nextgpt_tiny_opts_t o;
  nq_nextgpt_tiny_opts_init(&o);
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      nq_tiny_cli__usage(stdout);
      return 0;
    } else if (!strcmp(a, "--out") && v) out = v, i++;
    else if (!strcmp(a, "--models") && v) models = v, i++;
    else if (!strcmp(a, "--random")) random_llm = true;
    else if (!strcmp(a, "--seed") && v) {
      char *end;
      errno = 0;
      unsigned long long s = strtoull(v, &end, 10);
      if (!*v || *end || errno) {
        fprintf(stderr, "nextq model init-tiny: --seed %s: not a non-negative integer\n", v);
        return 2;
      }
      o.seed = s, i++;
    } else {
      fprintf(stderr, "nextq model init-tiny: unknown or incomplete argument '%s'\n", a);
      nq_tiny_cli__usage(stderr);
      return 2;
    }
  }
  if (!out) {
    nq_tiny_cli__usage(stderr);
    return 2;
  }
  struct stat st;
  if (!models) models = getenv("NQ_MODELS_DIR");
  if (!models && stat("../shared/models", &st) == 0) models = "../shared/models";
  o.models_dir = random_llm ? NULL : models;
  nq_nextgpt_tiny_info_t info;
  nq_err_t err = {0};
  if (nq_nextgpt_init_tiny(out, &o, &info, &err) < 0) {
    fprintf(stderr, "nextq model init-tiny: %s\n", err.msg);
    return 1;
  }
  /* it must load through the same loader as the real model, and run */
  nq_nextgpt_t *ng;
  if (nq_nextgpt_open_yaml(info.yaml, NULL, &ng, &err) < 0) {
    fprintf(stderr, "nextq model init-tiny: the written model does not load: %s\n", err.msg);
    return 1;
  }
  nq_nextgpt_gen_params_t gp;
  nq_nextgpt_gen_params_init(ng, &gp);
  gp.max_tgt_len = 8;
  nq_nextgpt_output_t res;
  int rc = nq_nextgpt_generate(ng, "### Human:  Once upon a time", NULL, 0, &gp, &res, &err);
  if (rc < 0) fprintf(stderr, "nextq model init-tiny: smoke generation failed: %s\n", err.msg);
  else nq_nextgpt_output_deinit(&res);
  nq_nextgpt_free(ng);
  if (rc < 0) return 1;
  /* the decoders must load through the loaders of the real ones */
  char p[4200];
  nq_nextgpt_config_t cfg;
  if (nq_nextgpt_config_load(info.yaml, &cfg, &err) < 0) {
    fprintf(stderr, "nextq model init-tiny: %s\n", err.msg);
    return 1;
  }
  nq_sd_opts_t so;
  nq_sd_opts_init(&so);
  so.taesd = info.taesd[0] ? info.taesd : NULL;
  nq_sd_t *sd = NULL;
  nq_zeroscope_t *zs = NULL;
  nq_audioldm_t *al = NULL;
  if ((rc = nq_sd_open(cfg.image_diffusion, &so, &sd, &err)) == 0) nq_sd_free(sd);
  if (!rc && (rc = nq_zeroscope_open(cfg.video_diffusion, NULL, &zs, &err)) == 0) nq_zeroscope_free(zs);
  if (!rc && (rc = nq_audioldm_open(cfg.audio_diffusion, NULL, &al, &err)) == 0) nq_audioldm_free(al);
  snprintf(p, sizeof p, "%s", err.msg);
  nq_nextgpt_config_deinit(&cfg);
  if (rc < 0) {
    fprintf(stderr, "nextq model init-tiny: a written decoder does not load: %s\n", p);
    return 1;
  }
  printf("%s\n", info.yaml);
  if (info.trained_llm)
    fprintf(stderr,
            "tiny NExT-GPT written to %s (LLM: stories260K from %s%s; every other weight random, seed %llu)\n", out,
            models, info.taesd[0] ? ", TAESD" : "", (unsigned long long)o.seed);
  else
    fprintf(stderr,
            "tiny NExT-GPT written to %s with a FULLY RANDOM LLM (seed %llu): outputs are noise.\n"
            "  for a trained tiny LLM put stories260K.bin and tok512.bin (github.com/karpathy/llama2.c, the tinyllamas\n"
            "  260K model, MIT) under MODELS/stories260K/ and taesd_decoder.safetensors (github.com/madebyollin/taesd, MIT)\n"
            "  under MODELS/taesd/, and run again with --models MODELS (or NQ_MODELS_DIR)\n",
            out, (unsigned long long)o.seed);
  return 0;
}

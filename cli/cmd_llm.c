/* cli/cmd_llm.c — `nextq llm`, `nextq tokenize`, and the module-run kinds llm-logits, llm-greedy,
 * llama-tokenize (registered by cli/module_kinds.c). */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/cli.h"
#include "cli/module_kinds.h"
#include "compute/core/pool.h"
#include "compute/models/llama_gen.h"
#include "compute/tokenizers/bpe.h"


static void nq_llm__usage(FILE *f) {
  fprintf(f, "usage: nextq llm --model PATH [--tokenizer PATH] [--prompt TEXT] [--temperature T] [--top-p P]\n"
             "                 [--top-k K] [--seed S] [--max-new-tokens N] [--threads N] [--dtype f32|bf16]\n"
             "  PATH: a llama2.c .bin (with --tokenizer tokenizer.bin) or an HF LLaMA directory.\n"
             "  Prints only the generated text.\n");
}

static int nq_llm__num(const char *flag, const char *v, double lo, double hi, double *out) {
  char *end;
  double x = v ? strtod(v, &end) : 0;
  if (!v || !*v || *end || x < lo || x > hi) {
    fprintf(stderr, "nextq llm: %s needs a number in [%g, %g]\n", flag, lo, hi);
    return -1;
  }
  *out = x;
  return 0;
}

int nq_cli_llm(int argc, char **argv) {
  const char *model = NULL, *tok = NULL, *prompt = "", *dtype = NULL;
  double temp = 1.0, top_p = 0.9, seed = 0, max_new = 256, top_k = 0, threads = 0;
  bool have_seed = false;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    int rc = 0;
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      nq_llm__usage(stdout);
      return 0;
    } else if (!strcmp(a, "--model") && v) model = v, i++;
    else if (!strcmp(a, "--tokenizer") && v) tok = v, i++;
    else if (!strcmp(a, "--prompt") && v) prompt = v, i++;
    else if (!strcmp(a, "--dtype") && v) dtype = v, i++;
    else if (!strcmp(a, "--temperature")) rc = nq_llm__num(a, v, 0, 100, &temp), i++;
    else if (!strcmp(a, "--top-p")) rc = nq_llm__num(a, v, 0, 1, &top_p), i++;
    else if (!strcmp(a, "--top-k")) rc = nq_llm__num(a, v, 0, 1e7, &top_k), i++;
    else if (!strcmp(a, "--seed")) rc = nq_llm__num(a, v, 0, 1.8e19, &seed), i++, have_seed = true;
    else if (!strcmp(a, "--max-new-tokens")) rc = nq_llm__num(a, v, 1, 1e7, &max_new), i++;
    else if (!strcmp(a, "--threads")) rc = nq_llm__num(a, v, 1, 1024, &threads), i++;
    else {
      fprintf(stderr, "nextq llm: unknown or incomplete argument '%s'\n", a);
      nq_llm__usage(stderr);
      return 2;
    }
    if (rc) return 2;
  }
  if (!model) {
    nq_llm__usage(stderr);
    return 2;
  }
  if (threads > 0) nq_compute_set_threads((int)threads);
  nq_llama_load_opts_t lo;
  nq_llama_load_opts_init(&lo);
  if (dtype && !strcmp(dtype, "bf16")) lo.wdtype = NQ_DT_BF16;
  else if (dtype && strcmp(dtype, "f32")) {
    fprintf(stderr, "nextq llm: --dtype %s (f32 or bf16)\n", dtype);
    return 2;
  }
  nq_err_t err = {0};
  nq_llm_t *llm;
  if (nq_llm_open(model, tok, &lo, &llm, &err) < 0) {
    fprintf(stderr, "nextq llm: %s\n", err.msg);
    return 1;
  }
  nq_gen_params_t p;
  nq_gen_params_init(&p);
  p.sampling.temperature = (float)temp;
  p.sampling.top_p = (float)top_p;
  p.sampling.top_k = (int)top_k;
  /* llama2.c run.c's default seed is time(NULL); ours is fixed unless given, for reproducible jobs */
  p.sampling.seed = have_seed ? (uint64_t)seed : 42;
  p.max_new_tokens = (int)max_new;
  nq_gen_result_t r;
  int rc = nq_llm_generate_batch(llm, &prompt, 1, &p, &r, &err);
  if (rc < 0) {
    fprintf(stderr, "nextq llm: %s\n", err.msg);
  } else {
    fputs(r.text, stdout);
    fputc('\n', stdout);
    nq_gen_result_deinit(&r);
  }
  nq_llm_free(llm);
  return rc < 0 ? 1 : 0;
}

/* SentencePiece (tokenizer.model, llama2.c tokenizer.bin, HF LLaMA dir) or byte-level BPE (CLIP's
 * bpe_simple_vocab_16e6.txt.gz, HF vocab.json + merges.txt of CLIP or RoBERTa)? */
static bool nq_tok__is_sentencepiece(const char *path) {
  size_t l = strlen(path);
  if ((l > 6 && !strcmp(path + l - 6, ".model")) || (l > 4 && !strcmp(path + l - 4, ".bin"))) return true;
  char p[4200];
  struct stat st;
  snprintf(p, sizeof p, "%s/tokenizer.model", path);
  return stat(p, &st) == 0;
}

int nq_cli_tokenize(int argc, char **argv) {
  static const char *usage =
      "usage: nextq tokenize --tokenizer PATH [--bos] [--max-length N] [--pad-id ID] -- TEXT\n"
      "  PATH: tokenizer.model / llama2.c tokenizer.bin / HF LLaMA dir (SentencePiece), or CLIP\n"
      "  bpe_simple_vocab_16e6.txt.gz / a dir or vocab.json+merges.txt of CLIP or RoBERTa (byte-level BPE:\n"
      "  start/end tokens added; --max-length pads/truncates, --pad-id 49407 SD-1.5, 0 SD-2/ZeroScope).\n"
      "  Prints the ids separated by spaces.\n";
  const char *tok = NULL, *text = NULL;
  bool bos = false;
  int max_len = 0, pad_id = -1;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--tokenizer") && i + 1 < argc) tok = argv[++i];
    else if (!strcmp(argv[i], "--bos")) bos = true;
    else if (!strcmp(argv[i], "--max-length") && i + 1 < argc) max_len = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--pad-id") && i + 1 < argc) pad_id = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--") && i + 1 < argc) {
      text = argv[++i];
      break;
    } else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      printf("%s", usage);
      return 0;
    } else if (!text && argv[i][0] != '-') text = argv[i];
    else {
      fprintf(stderr, "nextq tokenize: unknown argument '%s'\n%s", argv[i], usage);
      return 2;
    }
  }
  if (!tok || !text) {
    fprintf(stderr, "%s", usage);
    return 2;
  }
  nq_err_t err = {0};
  if (!nq_tok__is_sentencepiece(tok)) {
    if (nq_tok_cli_encode_bpe(tok, text, max_len, pad_id, stdout, &err) != 0) {
      fprintf(stderr, "nextq tokenize: %s\n", err.msg);
      return 1;
    }
    return 0;
  }
  nq_sp_tokenizer_t *t;
  if (nq_sp_load(tok, 0, &t, &err) < 0) {
    fprintf(stderr, "nextq tokenize: %s\n", err.msg);
    return 1;
  }
  int32_t *ids;
  int n;
  nq_sp_encode_opts_t o = {.add_bos = bos, .add_dummy_prefix = -1};
  if (nq_sp_encode(t, text, strlen(text), &o, &ids, &n, &err) < 0) {
    fprintf(stderr, "nextq tokenize: %s\n", err.msg);
    nq_sp_free(t);
    return 1;
  }
  for (int i = 0; i < n; i++) printf(i ? " %d" : "%d", ids[i]);
  printf("\n");
  free(ids);
  nq_sp_free(t);
  return 0;
}

/* ---- module kinds ---- */

/* A golden case's model/: an HF directory (config.json) or llama2.c files (model .bin + tok*.bin). */
static int nq_llm__open_case(const nq_module_ctx_t *ctx, nq_llm_t **out, nq_err_t *err) {
  if (!ctx->model_dir) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "--model DIR is required");
  if (ctx->threads > 0) nq_compute_set_threads(ctx->threads);
  nq_llama_load_opts_t lo;
  nq_llama_load_opts_init(&lo);
  if (ctx->dtype && !strcmp(ctx->dtype, "bf16")) lo.wdtype = NQ_DT_BF16;
  else if (ctx->dtype && !strcmp(ctx->dtype, "f16")) lo.wdtype = NQ_DT_F16;
  char p[4200], model[4200] = "", tok[4200] = "";
  struct stat st;
  snprintf(p, sizeof p, "%s/config.json", ctx->model_dir);
  if (stat(p, &st) == 0) return nq_llm_open(ctx->model_dir, NULL, &lo, out, err);
  DIR *d = opendir(ctx->model_dir);
  if (!d) return nq_err_set(err, NQ_ENOENT, NQ_ERR_FATAL, "%s: cannot open directory", ctx->model_dir);
  for (struct dirent *e; (e = readdir(d));) {
    size_t l = strlen(e->d_name);
    if (l < 5 || strcmp(e->d_name + l - 4, ".bin")) continue;
    bool is_tok = !strncmp(e->d_name, "tok", 3);
    snprintf(is_tok ? tok : model, sizeof model, "%s/%s", ctx->model_dir, e->d_name);
  }
  closedir(d);
  if (!*model || !*tok)
    return nq_err_set(err, NQ_ENOENT, NQ_ERR_FATAL, "%s: no config.json, nor a llama2.c .bin + tok*.bin pair",
                      ctx->model_dir);
  return nq_llm_open(model, tok, &lo, out, err);
}

static int nq_llm__input_ids(const nq_module_ctx_t *ctx, const char *name, int32_t **ids, int *n, nq_err_t *err) {
  float *f;
  const nq_st_tensor_t *t;
  int rc = nq_module_input_f32(ctx, name, &f, &t, err);
  if (rc < 0) return rc;
  int64_t cnt = nq_st_numel(t);
  if (cnt < 1 || cnt > (1 << 20)) {
    free(f);
    return nq_err_set(err, NQ_ESHAPE, NQ_ERR_FATAL, "input '%s': %lld tokens", name, (long long)cnt);
  }
  *ids = malloc(sizeof(int32_t) * (size_t)cnt);
  if (!*ids) {
    free(f);
    return nq_err_set(err, NQ_ENOMEM, 0, "out of memory");
  }
  for (int64_t i = 0; i < cnt; i++) (*ids)[i] = (int32_t)f[i];
  *n = (int)cnt;
  free(f);
  return 0;
}

int nq_module_llm_logits(const nq_module_ctx_t *ctx, nq_err_t *err) {
  nq_llm_t *llm;
  int rc = nq_llm__open_case(ctx, &llm, err);
  if (rc < 0) return rc;
  int32_t *ids = NULL;
  int n = 0;
  float *logits = NULL;
  nq_llama_kv_t *kv = NULL;
  if ((rc = nq_llm__input_ids(ctx, "tokens", &ids, &n, err)) < 0) goto out;
  int V = llm->model->cfg.vocab_size;
  if (!(kv = nq_llama_kv_new(llm->model, 1, n, err))) {
    rc = err ? err->code : NQ_ENOMEM;
    goto out;
  }
  logits = malloc(sizeof(float) * (size_t)n * (size_t)V);
  if (!logits) {
    rc = nq_err_set(err, NQ_ENOMEM, 0, "out of memory");
    goto out;
  }
  int slot = 0;
  nq_llama_batch_t b = {.n_seq = 1, .slot = &slot, .n_tokens = &n, .tokens = ids, .logits_all = true, .logits = logits};
  if ((rc = nq_llama_forward(llm->model, kv, &b, err)) < 0) goto out;
  rc = nq_st_writer_add_f32(ctx->out, "logits", 2, NQ_SHAPE(n, V), logits, err);
out:
  free(ids), free(logits);
  nq_llama_kv_free(kv);
  nq_llm_free(llm);
  return rc;
}

int nq_module_llm_greedy(const nq_module_ctx_t *ctx, nq_err_t *err) {
  long long n_new;
  int rc = nq_module_param_int(ctx, "n_new", 32, &n_new, err);
  if (rc < 0) return rc;
  if (n_new < 1 || n_new > 100000) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "--param n_new=%lld", n_new);
  nq_llm_t *llm;
  if ((rc = nq_llm__open_case(ctx, &llm, err)) < 0) return rc;
  int32_t *ids = NULL;
  int n = 0;
  if ((rc = nq_llm__input_ids(ctx, "tokens", &ids, &n, err)) == 0) {
    nq_gen_params_t p;
    nq_gen_params_init(&p);
    p.sampling.temperature = 0.0f;
    p.max_new_tokens = (int)n_new;
    p.stop_at_eos = false; /* exactly n_new ids */
    nq_gen_result_t r;
    const int32_t *pp = ids;
    if ((rc = nq_llm_generate_tokens(llm, &pp, &n, 1, &p, &r, err)) == 0) {
      if (r.n_tokens != n_new)
        rc = nq_err_set(err, NQ_ELIMIT, 0, "llm-greedy: only %d of %lld tokens fit the context", r.n_tokens, n_new);
      else
        rc = nq_st_writer_add(ctx->out, "generated", NQ_DT_I32, 1, NQ_SHAPE(r.n_tokens), r.tokens, err);
      nq_gen_result_deinit(&r);
    }
  }
  free(ids);
  nq_llm_free(llm);
  return rc;
}

static int nq_llm__bool_param(const nq_module_ctx_t *ctx, const char *key, int def) {
  const char *v = nq_module_param(ctx, key);
  if (!v) return def;
  return !strcmp(v, "true") || !strcmp(v, "1");
}

int nq_module_llama_tokenize(const nq_module_ctx_t *ctx, nq_err_t *err) {
  if (!ctx->model_dir) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "--model DIR (with tokenizer.model) is required");
  if (!ctx->in) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "--in is required");
  nq_sp_tokenizer_t *t;
  int rc = nq_sp_load(ctx->model_dir, 0, &t, err);
  if (rc < 0) return rc;
  nq_sp_encode_opts_t o = {.add_bos = nq_llm__bool_param(ctx, "add_bos", 0),
                           .add_eos = nq_llm__bool_param(ctx, "add_eos", 0),
                           .add_dummy_prefix = nq_llm__bool_param(ctx, "add_dummy_prefix", -1)};
  if (nq_llm__bool_param(ctx, "parse_special", 0))
    rc = nq_err_set(err, NQ_EUNSUPPORTED, NQ_ERR_FATAL, "llama-tokenize: parse_special=true is not supported");
  int done = 0;
  for (size_t i = 0; !rc && i < nq_st_count(ctx->in); i++) {
    const nq_st_tensor_t *in = nq_st_get(ctx->in, i);
    if (strncmp(in->name, "text_", 5)) continue;
    if (in->dtype != NQ_DT_U8 || in->ndim != 1) {
      rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "input %s: want a 1-d U8 tensor", in->name);
      break;
    }
    int32_t *ids;
    int n;
    if ((rc = nq_sp_encode(t, in->data, in->nbytes, &o, &ids, &n, err)) < 0) break;
    char name[300];
    snprintf(name, sizeof name, "ids_%s", in->name + 5);
    rc = nq_st_writer_add(ctx->out, name, NQ_DT_I32, 1, NQ_SHAPE(n), ids, err);
    free(ids);
    done++;
  }
  if (!rc && done == 0) rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "llama-tokenize: no text_NNN inputs");
  nq_sp_free(t);
  return rc;
}

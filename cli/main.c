/* cli/main.c — `nextq` entry point: dispatch to subcommands. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "common/log.h"

/* Subcommands contributed by optional model modules are weak: a build without them still links. */
__attribute__((weak)) int nq_cli_llm(int argc, char **argv);
__attribute__((weak)) int nq_cli_tokenize(int argc, char **argv);
__attribute__((weak)) int nq_cli_model(int argc, char **argv);

typedef struct cmd {
  const char *name;
  int (*fn)(int, char **);
  const char *help;
} cmd_t;

static const cmd_t cmds[] = {
    {"run", nq_cli_run, "run a job in this process (embedded queue + worker threads)"},
    {"submit", nq_cli_submit, "submit a job to a queue; prints the job id"},
    {"status", nq_cli_status, "show a job's progress counts"},
    {"wait", nq_cli_wait, "wait for a job: exit 0 all ok, 1 some dead, 2 timeout"},
    {"results", nq_cli_results, "print a job's results (JSON lines)"},
    {"worker", nq_cli_worker, "serve stages from a queue until SIGTERM"},
    {"api", nq_cli_api, "HTTP API + demo page over a queue (POST /v1/jobs, /v1/generate, ...)"},
    {"generate", nq_cli_generate, "one any-to-any NExT-GPT request in this process (no queue)"},
    {"demo-data", nq_cli_demo_data, "write a small sample dataset (PNG, WAV, captions; WebDataset shard + JSONL)"},
    {"dlq", nq_cli_dlq, "dead-letter queue: list | requeue | purge"},
    {"module", nq_cli_module, "run one model component on tensors (golden checks)"},
    {"llm", NULL, "generate text with a LLaMA model"},
    {"tokenize", NULL, "print token ids of a text"},
    {"model", NULL, "inspect | convert checkpoints (safetensors, PyTorch .pt/.pth/.bin)"},
    {NULL, NULL, NULL},
};

static void usage(FILE *f) {
  fprintf(f, "nextq — NExT-GPT as a job-queue batch worker system\n\nusage: nextq COMMAND [ARGS]   (nextq COMMAND --help)\n\ncommands:\n");
  for (const cmd_t *c = cmds; c->name; c++) fprintf(f, "  %-10s %s\n", c->name, c->help);
  fprintf(f, "\nenvironment: NQ_QUEUE (default queue URL), NQ_LOG_LEVEL, NQ_LOG_FORMAT (human|json)\n");
}

int main(int argc, char **argv) {
  nq_log_level_t lvl = NQ_LOG_INFO;
  nq_log_format_t fmt = NQ_LOG_AUTO;
  const char *e;
  if ((e = getenv("NQ_LOG_LEVEL"))) nq_log_level_parse(e, &lvl);
  if ((e = getenv("NQ_LOG_FORMAT"))) nq_log_format_parse(e, &fmt);
  nq_log_setup(lvl, fmt);
  if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0) {
    usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  for (const cmd_t *c = cmds; c->name; c++) {
    if (strcmp(argv[1], c->name) != 0) continue;
    int (*fn)(int, char **) = c->fn;
    if (!fn && strcmp(c->name, "llm") == 0) fn = nq_cli_llm;
    if (!fn && strcmp(c->name, "tokenize") == 0) fn = nq_cli_tokenize;
    if (!fn && strcmp(c->name, "model") == 0) fn = nq_cli_model;
    if (!fn) {
      fprintf(stderr, "nextq: '%s' is not built into this binary\n", c->name);
      return 2;
    }
    return fn(argc - 1, argv + 1);
  }
  fprintf(stderr, "nextq: unknown command '%s'\n\n", argv[1]);
  usage(stderr);
  return 2;
}

/* cli/cli.h — the `nextq` subcommands. Each takes argv with argv[0] = the subcommand name and
 * returns the process exit status. */
#ifndef NQ_CLI_CLI_H
#define NQ_CLI_CLI_H

int nq_cli_run(int argc, char **argv);
int nq_cli_submit(int argc, char **argv);
int nq_cli_status(int argc, char **argv);
int nq_cli_wait(int argc, char **argv);
int nq_cli_results(int argc, char **argv);
int nq_cli_worker(int argc, char **argv);
int nq_cli_dlq(int argc, char **argv);
int nq_cli_module(int argc, char **argv);
int nq_cli_llm(int argc, char **argv);
int nq_cli_tokenize(int argc, char **argv);
int nq_cli_model(int argc, char **argv);
int nq_cli_api(int argc, char **argv);
int nq_cli_demo_data(int argc, char **argv);
int nq_cli_generate(int argc, char **argv);

#endif

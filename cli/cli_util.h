/* cli/cli_util.h — private helpers shared by the subcommands. */
#ifndef NQ_CLI_UTIL_H
#define NQ_CLI_UTIL_H

#include <signal.h>

#include "queue/queue.h"
#include "store/store.h"

/* --queue value, else $NQ_QUEUE, else redis://127.0.0.1:6379. */
const char *nq_cli_queue_url(const char *flag);
/* Open the queue and print the error on failure (returns NULL). */
nq_queue_t *nq_cli_open_queue(const char *url, int lease_ms);
/* Store with roots from flags or $NQ_STORE_ROOT / $NQ_S3_ROOT. Prints the error on failure. */
nq_store_t *nq_cli_open_store(const char *file_root, const char *s3_root);
/* Install SIGINT/SIGTERM handlers that set *flag. */
void nq_cli_on_signals(volatile sig_atomic_t *flag);
int nq_cli_wants_help(int argc, char **argv);

#endif

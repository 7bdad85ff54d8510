/* tests/tools/kafka_mock_broker.c — a Kafka broker for manual and CLI tests, on librdkafka's mock cluster.
 *
 *   cc -std=c11 -D_GNU_SOURCE -O2 -I. -o build/kafka_mock_broker tests/tools/kafka_mock_broker.c \
 *      tests/helpers/kafka_broker.c -lrdkafka
 *   build/kafka_mock_broker [--brokers N] [--topic NAME:PARTITIONS]...
 *
 * Prints "kafka://127.0.0.1:PORT[,...]" on the first line of stdout, then serves until SIGINT/SIGTERM or until
 * stdin reaches EOF (so a test harness that spawns it with a pipe on stdin stops it by closing the pipe or dying).
 * Everything lives in memory: stopping it loses the data. Gaps of the mock: see tests/helpers/kafka_broker.h.
 * Fault injection from outside (chaos tests): SIGUSR1 takes broker 1 down (connections closed, new ones refused),
 * SIGUSR2 brings it back up; each is acknowledged by a line "down" / "up" on stderr.
 *   build/kafka_mock_broker > /tmp/kafka.url &   ...   build/nextq worker --queue "$(head -1 /tmp/kafka.url)"
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/helpers/kafka_broker.h"

static volatile sig_atomic_t stop_flag, down_req, up_req;

static void on_signal(int sig) {
  (void)sig;
  stop_flag = 1;
}

static void on_usr(int sig) {
  if (sig == SIGUSR1) down_req = 1;
  else up_req = 1;
}

/* Applies a pending SIGUSR1/SIGUSR2 (outside the handler: the mock's calls are not async-signal-safe). */
static void apply_faults(nq_kafka_broker_t *b) {
  if (down_req) {
    down_req = 0;
    fprintf(stderr, nq_kafka_broker_down(b, 1) == 0 ? "down\n" : "down failed\n");
  }
  if (up_req) {
    up_req = 0;
    fprintf(stderr, nq_kafka_broker_up(b, 1) == 0 ? "up\n" : "up failed\n");
  }
}

int main(int argc, char **argv) {
  int nbrokers = 1;
  for (int i = 1; i < argc; i++)
    if (!strcmp(argv[i], "--brokers") && i + 1 < argc) nbrokers = atoi(argv[++i]);
  nq_kafka_broker_t b;
  if (nq_kafka_broker_start(&b, nbrokers) != 0) return 1;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--topic") || i + 1 >= argc) continue;
    char name[256];
    snprintf(name, sizeof name, "%s", argv[++i]);
    char *colon = strrchr(name, ':');
    int parts = colon ? atoi(colon + 1) : 1;
    if (colon) *colon = 0;
    if (nq_kafka_broker_topic(&b, name, parts > 0 ? parts : 1) != 0) {
      nq_kafka_broker_stop(&b);
      return 1;
    }
  }
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  sa.sa_handler = on_usr;
  sigaction(SIGUSR1, &sa, NULL);
  sigaction(SIGUSR2, &sa, NULL);
  signal(SIGPIPE, SIG_IGN);
  printf("%s\n", b.url);
  fflush(stdout);
  int watch_stdin = !isatty(0);
  while (!stop_flag) {
    apply_faults(&b);
    struct pollfd p = {.fd = 0, .events = POLLIN};
    if (!watch_stdin) {
      poll(NULL, 0, 50);
      continue;
    }
    int r = poll(&p, 1, 50);
    if (r > 0) {
      char buf[256];
      ssize_t k = read(0, buf, sizeof buf);
      if (k == 0 || (k < 0 && errno != EINTR)) break; /* EOF: the parent went away */
    }
  }
  nq_kafka_broker_stop(&b);
  return 0;
}

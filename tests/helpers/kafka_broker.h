/* tests/helpers/kafka_broker.h — a Kafka broker for tests, on librdkafka's mock cluster.
 *
 * Debian has no Kafka server. librdkafka 2.0.2 ships a mock cluster (rdkafka_mock.h) that speaks the wire protocol
 * over real loopback TCP sockets: Produce, Fetch, ListOffsets, Metadata (with topic auto-creation), the consumer
 * group protocol and OffsetCommit/OffsetFetch (with commit metadata). It lives in the process that creates it
 * (threads of its own), which is what lets tests inject faults: broker down/up, request errors, round-trip time.
 *
 * Known gaps of the 2.0.2 mock (see tracker issue 7): CreateTopics is not answered (create topics here, or let
 * Metadata auto-create them with 4 partitions), no DeleteRecords, transactions/idempotence are not modelled, a
 * partition keeps ~5 MiB / 100,000 message sets (older ones are dropped), and the first join of an empty consumer
 * group waits 3 s (group.initial.rebalance.delay).
 *
 *   nq_kafka_broker_t b;
 *   if (nq_kafka_broker_start(&b, 1) != 0) cr_skip_test("no mock cluster");
 *   nq_kafka_broker_topic(&b, "nq.t", 1);          // FIFO tests want one partition
 *   ... nq_queue_open(b.url, ...) ...
 *   nq_kafka_broker_down(&b, 1); ... nq_kafka_broker_up(&b, 1);
 *   nq_kafka_broker_stop(&b);
 *
 * A standalone broker for the CLI (`nextq worker --queue kafka://...`) is tests/tools/kafka_mock_broker.c.
 */
#ifndef NQ_TESTS_KAFKA_BROKER_H
#define NQ_TESTS_KAFKA_BROKER_H

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

typedef struct nq_kafka_broker {
  rd_kafka_t *rk;                /* owned: the handle the mock cluster hangs off */
  rd_kafka_mock_cluster_t *mc;   /* owned: use it directly for rd_kafka_mock_* fault injection */
  int nbrokers;                  /* broker ids are 1..nbrokers */
  char bootstraps[512];          /* "127.0.0.1:PORT[,127.0.0.1:PORT]" */
  char url[520];                 /* "kafka://" + bootstraps */
} nq_kafka_broker_t;

/* Kafka API keys (the protocol's numbers; librdkafka keeps its RD_KAFKAP_* names private). */
enum { NQ_KAFKA_API_PRODUCE = 0, NQ_KAFKA_API_FETCH = 1, NQ_KAFKA_API_METADATA = 3, NQ_KAFKA_API_OFFSET_COMMIT = 8,
       NQ_KAFKA_API_OFFSET_FETCH = 9, NQ_KAFKA_API_JOIN_GROUP = 11, NQ_KAFKA_API_HEARTBEAT = 12 };

/* Starts a mock cluster with nbrokers (>= 1) brokers listening on free loopback ports. 0 or -1 (stderr). */
int nq_kafka_broker_start(nq_kafka_broker_t *b, int nbrokers);
/* Creates topic `ktopic` (a Kafka topic name, e.g. "nq.tasks.noop.cpu") with `partitions` partitions. 0 or -1. */
int nq_kafka_broker_topic(nq_kafka_broker_t *b, const char *ktopic, int partitions);
/* Fault injection: a broker stops answering (connections closed, new ones refused) / comes back. 0 or -1. */
int nq_kafka_broker_down(nq_kafka_broker_t *b, int broker_id);
int nq_kafka_broker_up(nq_kafka_broker_t *b, int broker_id);
/* Adds rtt_ms of latency to every response of a broker (0 = none). 0 or -1. */
int nq_kafka_broker_rtt(nq_kafka_broker_t *b, int broker_id, int rtt_ms);
/* The next `n` requests of API `apikey` (NQ_KAFKA_API_*) fail with `code`. */
void nq_kafka_broker_fail_requests(nq_kafka_broker_t *b, int apikey, int n, int code);
/* Destroys the cluster (its data is gone). Safe on a zeroed or stopped struct. */
void nq_kafka_broker_stop(nq_kafka_broker_t *b);

#endif

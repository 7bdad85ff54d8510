/* queue/kafka_int.h — private helpers of the Kafka backend, exposed for its unit tests only. */
#ifndef NQ_QUEUE_KAFKA_INT_H
#define NQ_QUEUE_KAFKA_INT_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

/* Kafka topic of a logical topic: "nq." + the name with ':' -> '.' and every byte outside [A-Za-z0-9._-] -> '_'
 * ("tasks:llm:cpu" -> "nq.tasks.llm.cpu"). Names of the backend's own topics (nq.retry, nq.dlq, nq.results,
 * nq.jobs) are refused. NQ_EINVAL (empty, reserved, or longer than Kafka's 249 bytes). */
int nq_kafka__topic_name(const char *logical, char *out, size_t cap, nq_err_t *err);

/* Commit metadata written with every offset commit of a task topic: "nq1;<F>;<n>" where F is the first offset of
 * the partition that was never delivered and n how often the message at the committed offset was delivered.
 * Parse returns 0 and fills f/n, or -1 (foreign or malformed metadata: f = -1, n = 0). */
int nq_kafka__meta_parse(const char *s, size_t len, int64_t *f, unsigned *n);

/* Delivery count of offset `off` in a partition whose committed offset at assignment was c0 with metadata (f0, n0). */
unsigned nq_kafka__delivery_count(int64_t off, int64_t c0, int64_t f0, unsigned n0);

/* Partition of a key among nparts (FNV-1a 32): results and job records of one job stay in one partition. */
int32_t nq_kafka__key_partition(const char *key, int32_t nparts);

#endif

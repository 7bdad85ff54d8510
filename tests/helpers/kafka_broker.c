/* tests/helpers/kafka_broker.c — see kafka_broker.h. */
#include "tests/helpers/kafka_broker.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The mock's own handle logs nothing interesting for tests; keep warnings and errors. */
static void kb_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf) {
  (void)rk;
  if (level <= 3) fprintf(stderr, "kafka mock: %s: %s\n", fac, buf);
}

int nq_kafka_broker_start(nq_kafka_broker_t *b, int nbrokers) {
  memset(b, 0, sizeof *b);
  if (nbrokers < 1) nbrokers = 1;
  char es[512];
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  rd_kafka_conf_set_log_cb(conf, kb_log);
  /* the handle only carries the mock cluster; it never connects anywhere */
  if (rd_kafka_conf_set(conf, "bootstrap.servers", "", es, sizeof es) != RD_KAFKA_CONF_OK) {
    rd_kafka_conf_destroy(conf);
    fprintf(stderr, "kafka mock: conf: %s\n", es);
    return -1;
  }
  b->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, es, sizeof es);
  if (!b->rk) {
    rd_kafka_conf_destroy(conf);
    fprintf(stderr, "kafka mock: rd_kafka_new: %s\n", es);
    return -1;
  }
  b->mc = rd_kafka_mock_cluster_new(b->rk, nbrokers);
  if (!b->mc) {
    fprintf(stderr, "kafka mock: rd_kafka_mock_cluster_new failed\n");
    rd_kafka_destroy(b->rk);
    b->rk = NULL;
    return -1;
  }
  b->nbrokers = nbrokers;
  snprintf(b->bootstraps, sizeof b->bootstraps, "%s", rd_kafka_mock_cluster_bootstraps(b->mc));
  snprintf(b->url, sizeof b->url, "kafka://%s", b->bootstraps);
  return 0;
}

int nq_kafka_broker_topic(nq_kafka_broker_t *b, const char *ktopic, int partitions) {
  if (!b->mc) return -1;
  int rf = b->nbrokers < 3 ? b->nbrokers : 3;
  rd_kafka_resp_err_t e = rd_kafka_mock_topic_create(b->mc, ktopic, partitions, rf);
  if (e && e != RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS) {
    fprintf(stderr, "kafka mock: create topic %s: %s\n", ktopic, rd_kafka_err2str(e));
    return -1;
  }
  return 0;
}

int nq_kafka_broker_down(nq_kafka_broker_t *b, int broker_id) {
  return b->mc && rd_kafka_mock_broker_set_down(b->mc, broker_id) == 0 ? 0 : -1;
}

int nq_kafka_broker_up(nq_kafka_broker_t *b, int broker_id) {
  return b->mc && rd_kafka_mock_broker_set_up(b->mc, broker_id) == 0 ? 0 : -1;
}

int nq_kafka_broker_rtt(nq_kafka_broker_t *b, int broker_id, int rtt_ms) {
  return b->mc && rd_kafka_mock_broker_set_rtt(b->mc, broker_id, rtt_ms) == 0 ? 0 : -1;
}

void nq_kafka_broker_fail_requests(nq_kafka_broker_t *b, int apikey, int n, int code) {
  if (!b->mc || n <= 0) return;
  rd_kafka_resp_err_t *errs = calloc((size_t)n, sizeof *errs);
  if (!errs) return;
  for (int i = 0; i < n; i++) errs[i] = (rd_kafka_resp_err_t)code;
  rd_kafka_mock_push_request_errors_array(b->mc, (int16_t)apikey, (size_t)n, errs);
  free(errs);
}

void nq_kafka_broker_stop(nq_kafka_broker_t *b) {
  if (b->mc) rd_kafka_mock_cluster_destroy(b->mc);
  if (b->rk) rd_kafka_destroy(b->rk);
  b->mc = NULL;
  b->rk = NULL;
}

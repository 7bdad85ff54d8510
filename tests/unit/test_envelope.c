/* tests/unit/test_envelope.c — envelope v1 parsing/validation and the job spec loader. */
#include <criterion/criterion.h>
#include <string.h>

#include "queue/envelope.h"
#include "scheduler/scheduler.h"

static const char *good =
    "{\"v\":1,\"job\":\"J\",\"task\":\"J/000042\",\"stage\":\"llm\",\"device\":\"cpu\",\"attempt\":2,\"max_attempts\":3,"
    "\"input\":{\"prompt\":\"hi\"},\"params\":{\"t\":0},\"output\":\"file:///o/J/000042/\",\"next\":[\"generate\"],\"trace\":\"x\"}";

Test(envelope, parse_good) {
  nq_envelope_t e;
  nq_err_t err = {0};
  cr_assert_eq(nq_envelope_parse(good, strlen(good), &e, &err), 0, "%s", err.msg);
  cr_assert_str_eq(e.task, "J/000042");
  cr_assert_eq(e.attempt, 2);
  cr_assert_str_eq(json_string_value(json_array_get(e.next, 0)), "generate");
  nq_envelope_set_attempt(&e, 3);
  char *s = nq_envelope_dump(&e);
  nq_envelope_t e2;
  cr_assert_eq(nq_envelope_parse(s, strlen(s), &e2, &err), 0);
  cr_assert_eq(e2.attempt, 3);
  free(s);
  nq_envelope_deinit(&e);
  nq_envelope_deinit(&e2);
}

static void expect_bad(const char *body, const char *needle) {
  nq_envelope_t e;
  nq_err_t err = {0};
  cr_assert_neq(nq_envelope_parse(body, strlen(body), &e, &err), 0, "accepted: %s", body);
  cr_assert(strstr(err.msg, needle), "message '%s' lacks '%s'", err.msg, needle);
  cr_assert(nq_err_is_fatal(&err));
  cr_assert_null(e.obj);
}

Test(envelope, rejects_malformed) {
  expect_bad("not json", "invalid JSON");
  expect_bad("[1,2]", "not a JSON object");
  expect_bad("{\"v\":2,\"job\":\"J\"}", "unknown version 2");
  expect_bad("{\"job\":\"J\"}", "'v'");
  expect_bad("{\"v\":1,\"job\":\"J\",\"task\":\"J/1\",\"stage\":\"noop\",\"input\":{},\"output\":\"o/\",\"evil\":1}", "unknown field 'evil'");
  expect_bad("{\"v\":1,\"job\":\"../x\",\"task\":\"J/1\",\"stage\":\"noop\",\"input\":{},\"output\":\"o/\"}", "job");
  expect_bad("{\"v\":1,\"job\":\"J\",\"task\":\"J/1\",\"stage\":\"noop\",\"input\":[],\"output\":\"o/\"}", "'input'");
  expect_bad("{\"v\":1,\"job\":\"J\",\"task\":\"J/1\",\"stage\":\"noop\",\"input\":{},\"output\":\"o/\",\"attempt\":0}", "'attempt'");
  expect_bad("{\"v\":1,\"job\":\"J\",\"task\":\"J/1\",\"stage\":\"noop\",\"input\":{},\"output\":\"o/\",\"device\":\"tpu\"}", "device");
  expect_bad("{\"v\":1,\"job\":\"J\",\"task\":\"J/1\",\"stage\":\"noop\",\"input\":{},\"output\":\"o/\",\"job\":\"K\"}", "invalid JSON");
  expect_bad("{\"v\":1,\"job\":\"J\",\"task\":\"J/1\",\"stage\":\"no op\",\"input\":{},\"output\":\"o/\"}", "stage");
}

Test(envelope, peek_ids_of_invalid_message) {
  const char *b = "{\"v\":9,\"job\":\"J\",\"task\":\"J/7\"}";
  char job[64], task[64];
  cr_assert_eq(nq_envelope_peek_ids(b, strlen(b), job, sizeof job, task, sizeof task), 0);
  cr_assert_str_eq(job, "J");
  cr_assert_str_eq(task, "J/7");
}

Test(jobspec, load_and_errors) {
  nq_job_spec_t s;
  nq_err_t err = {0};
  const char *y = "job: caps\nstage: noop\nnext: [llm]\ndataset: {format: jsonl, path: in.jsonl}\noutput: out\nbatch_size: 4\n";
  cr_assert_eq(nq_job_spec_load_string(y, strlen(y), "j.yaml", "/base", &s, &err), 0, "%s", err.msg);
  cr_assert_str_eq(s.ds_format, "jsonl");
  cr_assert_eq(s.batch_size, 4);
  cr_assert_eq(s.max_attempts, 3);
  cr_assert_str_eq(s.device, "cpu");
  cr_assert(json_is_object(s.params));
  nq_job_spec_deinit(&s);
  const char *bad = "job: caps\nstage: noop\ndataset: {format: jsonl, path: in.jsonl, colour: red}\noutput: out\n";
  cr_assert_eq(nq_job_spec_load_string(bad, strlen(bad), "j.yaml", "/base", &s, &err), NQ_ECONFIG);
  cr_assert(strstr(err.msg, "j.yaml:3:") && strstr(err.msg, "dataset.colour"), "%s", err.msg);
  const char *bad2 = "job: caps\nstage: noop\ndataset: {format: parquet, path: x}\noutput: out\n";
  cr_assert_eq(nq_job_spec_load_string(bad2, strlen(bad2), "j.yaml", "/base", &s, &err), NQ_ECONFIG);
  cr_assert(strstr(err.msg, "parquet"), "%s", err.msg);
  const char *bad3 = "job: a/b\nstage: noop\ndataset: {path: x}\noutput: out\n";
  cr_assert_neq(nq_job_spec_load_string(bad3, strlen(bad3), "j.yaml", "/base", &s, &err), 0);
}

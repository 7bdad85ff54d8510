/* tests/integration/test_api.c — `nextq api` over real HTTP (libcurl) with a `nextq worker` and a real redis-server
 * (tests/helpers/redis_harness.h): submit, status, Server-Sent Events, results, generate + objects, auth (401/403),
 * body limit (413), malformed YAML (400 naming line:column), path escapes (400/404), rate limit (429), CORS, a
 * Prometheus scrape that parses and counts what ran; and the demo page in headless Chromium driven over WebDriver
 * (chromedriver), which SKIPs when chromium or chromedriver are missing. The screenshot is kept under
 * build/test-artifacts/ ($NQ_ARTIFACTS overrides). */
#include <criterion/criterion.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tests/helpers/redis_harness.h"

extern char **environ;

static nq_redis_harness_t rh;
static char tmp[256];
static const char *bin;
static pid_t api_pid, worker_pid;
static char api_url[128], api_metrics[160], worker_metrics[160];

#define KEY_RW "test-key-rw-0123456789"
#define KEY_RO "test-key-ro-abcdef"

/* ---- processes ---- */

static int free_port(void) {
  int s = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t l = sizeof a;
  cr_assert(s >= 0 && bind(s, (struct sockaddr *)&a, sizeof a) == 0 && getsockname(s, (struct sockaddr *)&a, &l) == 0);
  close(s);
  return ntohs(a.sin_port);
}

static pid_t spawn_argv(const char *prog, const char *out_path, const char *log_name, const char *const *argv) {
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  char log[400];
  snprintf(log, sizeof log, "%s/%s", tmp, log_name);
  posix_spawn_file_actions_addopen(&fa, 1, out_path ? out_path : "/dev/null", O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&fa, 2, log, O_WRONLY | O_CREAT | O_APPEND, 0644);
  pid_t pid;
  int rc = posix_spawn(&pid, prog, &fa, NULL, (char *const *)argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  cr_assert_eq(rc, 0, "spawn %s: %s", prog, strerror(rc));
  return pid;
}

static int stop_pid(pid_t *pid) {
  if (*pid <= 0) return 0;
  kill(*pid, SIGTERM);
  int st = 0;
  for (int i = 0; i < 100; i++) {
    pid_t r = waitpid(*pid, &st, WNOHANG);
    if (r == *pid) break;
    if (i == 99) {
      kill(*pid, SIGKILL);
      waitpid(*pid, &st, 0);
    }
    usleep(100000);
  }
  *pid = 0;
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static char *slurp(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *b = malloc((size_t)n + 1);
  size_t k = fread(b, 1, (size_t)n, f);
  b[k] = 0;
  fclose(f);
  if (len) *len = k;
  return b;
}

/* Starts `nextq api` with extra args; waits for its "listening on" (and "metrics on") lines. */
static void start_api(const char *const *extra) {
  const char *argv[48];
  int n = 0;
  char store[300], keys[300], out[300];
  snprintf(store, sizeof store, "%s/store", tmp);
  snprintf(keys, sizeof keys, "%s/keys.txt", tmp);
  snprintf(out, sizeof out, "%s/api.out", tmp);
  argv[n++] = bin;
  argv[n++] = "api";
  argv[n++] = "--queue";
  argv[n++] = rh.url;
  argv[n++] = "--listen";
  argv[n++] = "127.0.0.1:0";
  argv[n++] = "--store-root";
  argv[n++] = store;
  argv[n++] = "--jobs-dir";
  argv[n++] = tmp;
  argv[n++] = "--metrics-listen";
  argv[n++] = "127.0.0.1:0";
  for (int i = 0; extra && extra[i]; i++) argv[n++] = extra[i];
  argv[n] = NULL;
  api_pid = spawn_argv(bin, out, "api.log", argv);
  api_url[0] = api_metrics[0] = 0;
  for (int i = 0; i < 100 && !api_metrics[0]; i++) {
    usleep(100000);
    char *s = slurp(out, NULL);
    const char *l = s ? strstr(s, "listening on ") : NULL, *m = s ? strstr(s, "metrics on ") : NULL;
    if (l && m && strchr(m, '\n')) {
      sscanf(l + 13, "%127s", api_url);
      sscanf(m + 11, "%159s", api_metrics);
    }
    free(s);
    int st;
    if (waitpid(api_pid, &st, WNOHANG) == api_pid) {
      char lp[300];
      snprintf(lp, sizeof lp, "%s/api.log", tmp);
      char *log = slurp(lp, NULL);
      cr_assert_fail("nextq api exited: %s", log ? log : "");
    }
  }
  cr_assert(api_url[0] && api_metrics[0], "nextq api did not report its address");
}

static void start_worker(void) {
  char store[300], listen[64];
  snprintf(store, sizeof store, "%s/store", tmp);
  int port = free_port();
  snprintf(listen, sizeof listen, "127.0.0.1:%d", port);
  snprintf(worker_metrics, sizeof worker_metrics, "http://127.0.0.1:%d/metrics", port);
  const char *argv[] = {bin, "worker", "--queue", rh.url, "--stages", "noop", "--batch", "4", "--store-root", tmp,
                        "--metrics-listen", listen, NULL};
  (void)store;
  worker_pid = spawn_argv(bin, NULL, "worker.log", argv);
}

static void write_file(const char *name, const char *text) {
  char p[400];
  snprintf(p, sizeof p, "%s/%s", tmp, name);
  FILE *f = fopen(p, "w");
  cr_assert(f);
  fputs(text, f);
  fclose(f);
}

static void setup_common(void) {
  bin = getenv("NQ_BIN");
  if (!bin) bin = "build/nextq";
  snprintf(tmp, sizeof tmp, "/tmp/nq_api_XXXXXX");
  cr_assert(mkdtemp(tmp));
  if (nq_redis_harness_start(&rh, 0) != 0) cr_skip_test("redis-server not available");
  curl_global_init(CURL_GLOBAL_ALL);
  write_file("in.jsonl", "{\"id\":\"a\",\"prompt\":\"alpha\"}\n{\"id\":\"b\",\"prompt\":\"beta\"}\n{\"id\":\"c\",\"prompt\":\"gamma\"}\n");
}

/* Keys: the read-only one is written as its sha256 (coreutils sha256sum), so that form is tested too. */
static void write_keys(void) {
  char cmd[600], out[200] = {0};
  snprintf(cmd, sizeof cmd, "printf %%s '%s' | sha256sum", KEY_RO);
  FILE *p = popen(cmd, "r");
  cr_assert(p);
  cr_assert(fgets(out, sizeof out, p));
  pclose(p);
  out[64] = 0;
  char text[400];
  snprintf(text, sizeof text, "# test keys\n%s\nsha256:%s ro\n", KEY_RW, out);
  write_file("keys.txt", text);
}

static void setup(void) {
  setup_common();
  write_keys();
  char keys[300];
  snprintf(keys, sizeof keys, "%s/keys.txt", tmp);
  start_api((const char *[]){"--api-key-file", keys, "--max-body", "65536", "--cors-origin", "http://example.test", NULL});
  start_worker();
}

static void teardown(void) {
  int wrc = stop_pid(&worker_pid), arc = stop_pid(&api_pid);
  nq_redis_harness_cleanup(&rh);
  curl_global_cleanup();
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf %s", tmp);
  if (system(cmd) != 0) fprintf(stderr, "cleanup failed\n");
  (void)wrc;
  (void)arc;
}

/* ---- HTTP ---- */

typedef struct resp {
  long status;
  char *body;
  size_t len;
  char *hdr;
  size_t hlen;
  char ctype[128];
} resp_t;

static size_t on_data(char *p, size_t sz, size_t n, void *ud) {
  char **buf = ((char **)ud);
  size_t *len = (size_t *)((char **)ud + 1);
  size_t k = sz * n;
  *buf = realloc(*buf, *len + k + 1);
  memcpy(*buf + *len, p, k);
  *len += k;
  (*buf)[*len] = 0;
  return k;
}

typedef struct acc {
  char *buf;
  size_t len;
} acc_t;

/* method, path (appended to base), optional key, body (blen < 0: strlen), extra header. */
static resp_t http_to(const char *base, const char *method, const char *path, const char *key, const char *body,
                      long blen, const char *header) {
  resp_t r = {0};
  CURL *c = curl_easy_init();
  char url[2048];
  snprintf(url, sizeof url, "%s%s", base, path);
  acc_t b = {0}, h = {0};
  struct curl_slist *hl = NULL;
  char auth[300];
  if (key) {
    snprintf(auth, sizeof auth, "Authorization: Bearer %s", key);
    hl = curl_slist_append(hl, auth);
  }
  if (header) hl = curl_slist_append(hl, header);
  curl_easy_setopt(c, CURLOPT_URL, url);
  curl_easy_setopt(c, CURLOPT_PATH_AS_IS, 1L);
  curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
  curl_easy_setopt(c, CURLOPT_TIMEOUT, 60L);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
  curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_data);
  curl_easy_setopt(c, CURLOPT_HEADERDATA, &h);
  curl_easy_setopt(c, CURLOPT_NOPROXY, "*");
  if (body) {
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)(blen < 0 ? (long)strlen(body) : blen));
  }
  if (hl) curl_easy_setopt(c, CURLOPT_HTTPHEADER, hl);
  CURLcode cc = curl_easy_perform(c);
  cr_assert_eq(cc, CURLE_OK, "%s %s: %s", method, url, curl_easy_strerror(cc));
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r.status);
  char *ct = NULL;
  curl_easy_getinfo(c, CURLINFO_CONTENT_TYPE, &ct);
  if (ct) snprintf(r.ctype, sizeof r.ctype, "%s", ct);
  curl_slist_free_all(hl);
  curl_easy_cleanup(c);
  r.body = b.buf ? b.buf : calloc(1, 1);
  r.len = b.len;
  r.hdr = h.buf ? h.buf : calloc(1, 1);
  r.hlen = h.len;
  return r;
}

static resp_t http(const char *method, const char *path, const char *key, const char *body) {
  return http_to(api_url, method, path, key, body, -1, NULL);
}

static void resp_free(resp_t *r) {
  free(r->body);
  free(r->hdr);
}

static json_t *body_json(const resp_t *r) {
  json_error_t e;
  json_t *j = json_loads(r->body, 0, &e);
  cr_assert(j, "response is not JSON (%s): %.400s", e.text, r->body);
  return j;
}

/* {"error":{"code","message"}} with the status. Returns the message (static copy). */
static const char *expect_error(resp_t *r, long status) {
  static char msg[700];
  cr_assert_eq(r->status, status, "want %ld, got %ld: %.300s", status, r->status, r->body);
  json_t *j = body_json(r);
  const char *code = json_string_value(json_object_get(json_object_get(j, "error"), "code"));
  const char *m = json_string_value(json_object_get(json_object_get(j, "error"), "message"));
  cr_assert(code && m && *code && *m, "error body lacks code/message: %s", r->body);
  snprintf(msg, sizeof msg, "%s", m);
  json_decref(j);
  return msg;
}

static const char *job_yaml =
    "job: apitest\nstage: noop\ndataset: {format: jsonl, path: in.jsonl}\noutput: store/jobs\nparams: {sleep_ms: 150}\n";

static char *submit_job(const char *yaml, const char *ctype) {
  char hdr[100];
  snprintf(hdr, sizeof hdr, "Content-Type: %s", ctype);
  resp_t r = http_to(api_url, "POST", "/v1/jobs", KEY_RW, yaml, -1, hdr);
  cr_assert_eq(r.status, 201, "submit: %ld %s", r.status, r.body);
  json_t *j = body_json(&r);
  char *id = strdup(json_string_value(json_object_get(j, "id")));
  json_decref(j);
  resp_free(&r);
  return id;
}

static json_t *wait_job(const char *id, const char *state, int secs) {
  char path[300];
  snprintf(path, sizeof path, "/v1/jobs/%s", id);
  for (int i = 0; i < secs * 10; i++) {
    resp_t r = http("GET", path, KEY_RO, NULL);
    cr_assert_eq(r.status, 200, "%s: %s", path, r.body);
    json_t *j = body_json(&r);
    resp_free(&r);
    if (strcmp(json_string_value(json_object_get(j, "state")), state) == 0) return j;
    json_decref(j);
    usleep(100000);
  }
  cr_assert_fail("job %s did not reach %s in %d s", id, state, secs);
  return NULL;
}

static long long count(json_t *job, const char *k) { return json_integer_value(json_object_get(json_object_get(job, "counts"), k)); }

TestSuite(api, .init = setup, .fini = teardown, .timeout = 120);

Test(api, submit_yaml_status_and_results) {
  char *id = submit_job(job_yaml, "application/yaml");
  char path[300];
  snprintf(path, sizeof path, "/v1/jobs/%s", id);
  resp_t r = http("GET", path, KEY_RW, NULL);
  json_t *j = body_json(&r);
  const char *st = json_string_value(json_object_get(j, "state"));
  cr_assert(strcmp(st, "queued") == 0 || strcmp(st, "running") == 0 || strcmp(st, "done") == 0, "state %s", st);
  cr_assert_eq(count(j, "ok") + count(j, "dead") + count(j, "pending"), 3);
  json_decref(j);
  resp_free(&r);

  j = wait_job(id, "done", 30);
  cr_assert_eq(count(j, "ok"), 3);
  cr_assert_eq(count(j, "dead"), 0);
  cr_assert_eq(count(j, "failed"), 0);
  cr_assert_eq(count(j, "pending"), 0);
  json_decref(j);

  snprintf(path, sizeof path, "/v1/jobs/%s/results", id);
  r = http("GET", path, KEY_RO, NULL);
  cr_assert_eq(r.status, 200);
  cr_assert(strstr(r.ctype, "ndjson"), "content type %s", r.ctype);
  int lines = 0;
  json_t *tasks = json_object();
  for (char *save = NULL, *l = strtok_r(r.body, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
    json_t *o = json_loads(l, 0, NULL);
    cr_assert(o, "result line is not JSON: %s", l);
    cr_assert_str_eq(json_string_value(json_object_get(o, "status")), "ok");
    cr_assert_str_eq(json_string_value(json_object_get(o, "job")), id);
    json_object_set_new(tasks, json_string_value(json_object_get(o, "task")), json_true());
    /* the output the worker wrote holds the record's prompt */
    const char *uri = json_string_value(json_object_get(json_array_get(json_object_get(o, "outputs"), 0), "uri"));
    cr_assert(uri && strncmp(uri, "file://", 7) == 0, "output uri %s", uri ? uri : "(none)");
    char *out = slurp(uri + 7, NULL);
    cr_assert(out && (strstr(out, "alpha") || strstr(out, "beta") || strstr(out, "gamma")), "output %s: %s", uri, out);
    free(out);
    json_decref(o);
    lines++;
  }
  cr_assert_eq(lines, 3);
  cr_assert_eq(json_object_size(tasks), 3, "results name 3 distinct tasks");
  json_decref(tasks);
  resp_free(&r);

  /* the same job as JSON */
  char *id2 = submit_job("{\"job\": \"apijson\", \"stage\": \"noop\", \"dataset\": {\"format\": \"jsonl\", \"path\": "
                         "\"in.jsonl\"}, \"output\": \"store/jobs\", \"limit\": 2}",
                         "application/json");
  j = wait_job(id2, "done", 30);
  cr_assert_eq(count(j, "ok"), 2);
  json_decref(j);
  /* unknown job */
  r = http("GET", "/v1/jobs/no-such-job-123", KEY_RO, NULL);
  expect_error(&r, 404);
  resp_free(&r);
  free(id);
  free(id2);
}

Test(api, sse_progress_until_done) {
  char *id = submit_job(job_yaml, "application/yaml");
  char path[300];
  snprintf(path, sizeof path, "/v1/jobs/%s/events", id);
  resp_t r = http("GET", path, KEY_RO, NULL);
  cr_assert_eq(r.status, 200);
  cr_assert(strstr(r.ctype, "text/event-stream"), "content type %s", r.ctype);
  /* parse the stream: blocks separated by blank lines, "event:" and "data:" fields */
  int results = 0, progress = 0, done = 0;
  long long last_ok = -1;
  char *save = NULL;
  char *text = r.body;
  for (char *blk = strstr(text, "event: "); blk; blk = strstr(blk + 1, "event: ")) {
    char ev[32] = {0};
    sscanf(blk + 7, "%31s", ev);
    char *data = strstr(blk, "\ndata: ");
    cr_assert(data, "event without data");
    char *end = strstr(data + 7, "\n\n");
    cr_assert(end, "unterminated event");
    char *d = strndup(data + 7, (size_t)(end - data - 7));
    json_t *o = json_loads(d, 0, NULL);
    cr_assert(o, "event data is not JSON: %s", d);
    if (strcmp(ev, "result") == 0) {
      results++;
      cr_assert_str_eq(json_string_value(json_object_get(o, "status")), "ok");
    } else if (strcmp(ev, "progress") == 0 || strcmp(ev, "done") == 0) {
      long long ok = count(o, "ok");
      cr_assert_geq(ok, last_ok, "progress went backwards");
      last_ok = ok;
      progress += strcmp(ev, "progress") == 0;
      if (strcmp(ev, "done") == 0) {
        done++;
        cr_assert_str_eq(json_string_value(json_object_get(o, "state")), "done");
        cr_assert_eq(count(o, "ok"), 3);
        cr_assert_eq(count(o, "pending"), 0);
      }
    }
    json_decref(o);
    free(d);
  }
  (void)save;
  cr_assert_eq(results, 3, "3 result events, got %d: %s", results, r.body);
  cr_assert_geq(progress, 2, "a first and a final progress event");
  cr_assert_eq(done, 1);
  resp_free(&r);
  free(id);
}

static const char png_b64[] = /* 1x1 PNG */
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==";

Test(api, generate_wait_objects_and_tasks) {
  char body[1024];
  snprintf(body, sizeof body, "{\"prompt\": \"a red fox\", \"stage\": \"noop\", \"media\": [{\"name\": \"fox.png\", \"data\": \"%s\"}]}",
           png_b64);
  resp_t r = http("POST", "/v1/generate?wait=30", KEY_RW, body);
  cr_assert_eq(r.status, 200, "generate: %ld %s", r.status, r.body);
  json_t *j = body_json(&r);
  resp_free(&r);
  cr_assert_str_eq(json_string_value(json_object_get(j, "state")), "done");
  json_t *res = json_object_get(j, "result");
  json_t *out = json_array_get(json_object_get(res, "outputs"), 0);
  const char *url = json_string_value(json_object_get(out, "url"));
  cr_assert(url && strncmp(url, "/v1/objects/", 12) == 0, "output url: %s", url ? url : "(none)");
  r = http("GET", url, KEY_RO, NULL);
  cr_assert_eq(r.status, 200);
  cr_assert(strncmp(r.ctype, "application/json", 16) == 0, "content type %s", r.ctype);
  json_t *o = body_json(&r);
  resp_free(&r);
  cr_assert_str_eq(json_string_value(json_object_get(o, "text")), "a red fox");
  json_t *m = json_array_get(json_object_get(o, "media"), 0);
  cr_assert_str_eq(json_string_value(json_object_get(m, "kind")), "image");
  const char *muri = json_string_value(json_object_get(m, "uri"));
  cr_assert(muri && strstr(muri, "/inputs/0-fox.png"), "media uri %s", muri ? muri : "(none)");
  /* the uploaded media is served back byte for byte with its type */
  const char *key = strstr(muri, "/store/") + 7;
  char opath[600];
  snprintf(opath, sizeof opath, "/v1/objects/%s", key);
  r = http("GET", opath, KEY_RO, NULL);
  cr_assert_eq(r.status, 200, "%s: %ld", opath, r.status);
  cr_assert_str_eq(r.ctype, "image/png");
  cr_assert_eq(r.len, 70, "1x1 PNG is 70 bytes, got %zu", r.len);
  cr_assert(memcmp(r.body, "\x89PNG", 4) == 0);
  resp_free(&r);
  json_decref(o);

  /* without wait: 202 at once, then GET /v1/tasks/{id} until done */
  r = http("POST", "/v1/generate", KEY_RW, "{\"prompt\": \"second\"}");
  cr_assert_eq(r.status, 202, "%ld %s", r.status, r.body);
  json_t *s = body_json(&r);
  resp_free(&r);
  char tpath[300];
  snprintf(tpath, sizeof tpath, "/v1/tasks/%s", json_string_value(json_object_get(s, "id")));
  const char *state = "";
  json_t *t = NULL;
  for (int i = 0; i < 300 && strcmp(state, "done") != 0; i++) {
    json_decref(t);
    r = http("GET", tpath, KEY_RO, NULL);
    cr_assert_eq(r.status, 200);
    t = body_json(&r);
    resp_free(&r);
    state = json_string_value(json_object_get(t, "state"));
    if (strcmp(state, "done") != 0) usleep(100000);
  }
  cr_assert_str_eq(state, "done");
  cr_assert_str_eq(json_string_value(json_object_get(json_object_get(t, "result"), "status")), "ok");
  json_decref(t);
  json_decref(s);
  json_decref(j);

  /* bad requests */
  r = http("POST", "/v1/generate", KEY_RW, "{\"prompt\": \"x\", \"stage\": \"no-such-stage\"}");
  cr_assert(strstr(expect_error(&r, 400), "unknown stage"));
  resp_free(&r);
  r = http("POST", "/v1/generate", KEY_RW, "{\"prompt\": 5}");
  expect_error(&r, 400);
  resp_free(&r);
  r = http("POST", "/v1/generate", KEY_RW, "{\"prompt\": \"x\", \"media\": [{\"name\": \"a.png\", \"data\": \"!!!\"}]}");
  cr_assert(strstr(expect_error(&r, 400), "base64"));
  resp_free(&r);
  r = http("GET", "/v1/generate", KEY_RW, NULL);
  expect_error(&r, 405);
  resp_free(&r);
}

Test(api, auth_401_403) {
  resp_t r = http("GET", "/v1/openapi.json", NULL, NULL);
  expect_error(&r, 401);
  cr_assert(strcasestr(r.hdr, "WWW-Authenticate: Bearer"), "401 names the scheme");
  resp_free(&r);
  r = http("GET", "/v1/openapi.json", "wrong-key", NULL);
  expect_error(&r, 401);
  resp_free(&r);
  r = http_to(api_url, "GET", "/v1/openapi.json", NULL, NULL, -1, "Authorization: Basic dXNlcjpwYXNz");
  expect_error(&r, 401);
  resp_free(&r);
  r = http("POST", "/v1/generate", KEY_RO, "{\"prompt\": \"x\"}");
  expect_error(&r, 403);
  resp_free(&r);
  r = http("POST", "/v1/jobs", KEY_RO, job_yaml);
  expect_error(&r, 403);
  resp_free(&r);
  /* read-only key reads; the document is valid JSON naming the routes */
  r = http("GET", "/v1/openapi.json", KEY_RO, NULL);
  cr_assert_eq(r.status, 200);
  json_t *j = body_json(&r);
  cr_assert(json_object_get(json_object_get(j, "paths"), "/v1/generate"));
  json_decref(j);
  resp_free(&r);
  /* health, readiness and the page need no key */
  r = http("GET", "/healthz", NULL, NULL);
  cr_assert_eq(r.status, 200);
  resp_free(&r);
  r = http("GET", "/readyz", NULL, NULL);
  cr_assert_eq(r.status, 200);
  resp_free(&r);
  r = http("GET", "/", NULL, NULL);
  cr_assert_eq(r.status, 200);
  cr_assert(strstr(r.ctype, "text/html"));
  cr_assert(strstr(r.body, "id=\"prompt\""));
  resp_free(&r);
}

Test(api, body_limit_413) {
  size_t n = 100000; /* --max-body 65536 */
  char *big = malloc(n + 1);
  memset(big, 'a', n);
  big[n] = 0;
  memcpy(big, "job: x\n# ", 9);
  resp_t r = http_to(api_url, "POST", "/v1/jobs", KEY_RW, big, (long)n, "Content-Type: application/yaml");
  expect_error(&r, 413);
  resp_free(&r);
  /* chunked (no Content-Length): refused once it exceeds */
  r = http_to(api_url, "POST", "/v1/generate", KEY_RW, big, (long)n, "Transfer-Encoding: chunked");
  expect_error(&r, 413);
  resp_free(&r);
  free(big);
  /* the server keeps serving */
  r = http("GET", "/healthz", NULL, NULL);
  cr_assert_eq(r.status, 200);
  resp_free(&r);
}

Test(api, malformed_yaml_400_names_line_and_column) {
  const char *bad = "job: broken\nstage: noop\ndataset: {format: jsonl, path: in.jsonl\noutput: out\n";
  resp_t r = http_to(api_url, "POST", "/v1/jobs", KEY_RW, bad, -1, "Content-Type: application/yaml");
  const char *m = expect_error(&r, 400);
  /* "request:LINE:COL: ..." */
  int line = 0, col = 0;
  const char *p = strstr(m, "request:");
  cr_assert(p && sscanf(p, "request:%d:%d", &line, &col) == 2, "message lacks line:column: %s", m);
  cr_assert(line >= 3 && line <= 5 && col >= 1, "line %d col %d: %s", line, col, m);
  resp_free(&r);
  /* a schema error names its place too */
  r = http_to(api_url, "POST", "/v1/jobs", KEY_RW, "job: x\nstage: noop\nbogus: 1\n", -1, "Content-Type: application/yaml");
  m = expect_error(&r, 400);
  cr_assert(strstr(m, "request:3:1") && strstr(m, "bogus"), "%s", m);
  resp_free(&r);
  r = http_to(api_url, "POST", "/v1/jobs", KEY_RW, "x", -1, "Content-Type: image/png");
  expect_error(&r, 415);
  resp_free(&r);
}

Test(api, object_path_escapes) {
  char p[400];
  snprintf(p, sizeof p, "%s/secret.txt", tmp);
  FILE *f = fopen(p, "w");
  fputs("outside the store", f);
  fclose(f);
  char link[400];
  snprintf(link, sizeof link, "%s/store/link.txt", tmp);
  cr_assert_eq(symlink(p, link), 0);
  snprintf(p, sizeof p, "%s/store/ok.txt", tmp);
  f = fopen(p, "w");
  fputs("inside", f);
  fclose(f);

  resp_t r = http("GET", "/v1/objects/ok.txt", KEY_RO, NULL);
  cr_assert_eq(r.status, 200);
  cr_assert_str_eq(r.body, "inside");
  cr_assert(strncmp(r.ctype, "text/plain", 10) == 0, "%s", r.ctype);
  resp_free(&r);
  static const struct { const char *path; long status; } cases[] = {
      {"/v1/objects/../secret.txt", 400},      {"/v1/objects/%2e%2e/secret.txt", 400},
      {"/v1/objects/a/../../secret.txt", 400}, {"/v1/objects//etc/passwd", 400},
      {"/v1/objects/%2fetc%2fpasswd", 400},    {"/v1/objects/", 400},
      {"/v1/objects/link.txt", 404},           {"/v1/objects/missing.txt", 404},
      {"/v1/objects/a\\..\\secret.txt", 400},  {"/v1/objects/store/../../secret.txt", 400},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    r = http("GET", cases[i].path, KEY_RO, NULL);
    cr_assert_eq(r.status, cases[i].status, "%s: want %ld got %ld (%s)", cases[i].path, cases[i].status, r.status, r.body);
    cr_assert(!strstr(r.body, "outside the store"), "%s leaked the file", cases[i].path);
    resp_free(&r);
  }
}

Test(api, cors) {
  resp_t r = http_to(api_url, "OPTIONS", "/v1/generate", NULL, NULL, -1, "Origin: http://example.test");
  cr_assert_eq(r.status, 204);
  cr_assert(strcasestr(r.hdr, "Access-Control-Allow-Origin: http://example.test"));
  cr_assert(strcasestr(r.hdr, "Access-Control-Allow-Headers: Authorization"));
  resp_free(&r);
  r = http("GET", "/healthz", NULL, NULL);
  cr_assert(strcasestr(r.hdr, "Access-Control-Allow-Origin: http://example.test"));
  resp_free(&r);
}

/* ---- metrics: parse the text format, then check the numbers match what ran ---- */

typedef struct sample {
  char name[128];
  char labels[256];
  double value;
} sample_t;

static int parse_metrics(const char *text, sample_t *out, int cap) {
  int n = 0;
  json_t *types = json_object();
  char *copy = strdup(text), *save = NULL;
  for (char *l = strtok_r(copy, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
    if (strncmp(l, "# TYPE ", 7) == 0) {
      char name[128], type[32];
      cr_assert_eq(sscanf(l + 7, "%127s %31s", name, type), 2, "bad TYPE line: %s", l);
      cr_assert(!strcmp(type, "counter") || !strcmp(type, "gauge") || !strcmp(type, "histogram"), "%s", l);
      cr_assert(!json_object_get(types, name), "family %s declared twice", name);
      json_object_set_new(types, name, json_string(type));
      continue;
    }
    if (l[0] == '#') {
      cr_assert(strncmp(l, "# HELP ", 7) == 0, "bad comment: %s", l);
      continue;
    }
    cr_assert(n < cap);
    sample_t *s = &out[n++];
    size_t k = strcspn(l, "{ ");
    cr_assert(k > 0 && k < sizeof s->name, "bad sample: %s", l);
    memcpy(s->name, l, k);
    s->name[k] = 0;
    for (size_t i = 0; i < k; i++)
      cr_assert(strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_:0123456789", s->name[i]), "bad name %s", s->name);
    const char *rest = l + k;
    s->labels[0] = 0;
    if (*rest == '{') {
      const char *e = strstr(rest, "} ");
      cr_assert(e, "unterminated labels: %s", l);
      snprintf(s->labels, sizeof s->labels, "%.*s", (int)(e - rest - 1), rest + 1);
      rest = e + 1;
    }
    char *end;
    s->value = strtod(rest + 1, &end);
    cr_assert(*rest == ' ' && end != rest + 1 && *end == 0, "bad value: %s", l);
    /* every sample belongs to a declared family (histograms: _bucket/_sum/_count) */
    char fam[128];
    snprintf(fam, sizeof fam, "%s", s->name);
    if (!json_object_get(types, fam)) {
      char *suf = strrchr(fam, '_');
      if (suf) *suf = 0;
      cr_assert(json_object_get(types, fam), "sample %s of an undeclared family", s->name);
    }
  }
  free(copy);
  json_decref(types);
  return n;
}

static double metric(const sample_t *s, int n, const char *name, const char *labels) {
  for (int i = 0; i < n; i++)
    if (strcmp(s[i].name, name) == 0 && strcmp(s[i].labels, labels) == 0) return s[i].value;
  return -1;
}

Test(api, metrics_scrape_counts_what_ran) {
  char *id = submit_job(job_yaml, "application/yaml");
  json_decref(wait_job(id, "done", 30));
  resp_t r = http("POST", "/v1/generate?wait=30", KEY_RW, "{\"prompt\": \"count me\"}");
  cr_assert_eq(r.status, 200);
  resp_free(&r);
  r = http("GET", "/v1/does-not-exist", KEY_RW, NULL);
  cr_assert_eq(r.status, 404);
  resp_free(&r);

  static sample_t s[4096];
  int n = 0;
  /* the worker counts a task right after reporting it, so the API may answer a moment before: poll briefly */
  for (int i = 0; i < 50; i++) {
    r = http_to(worker_metrics, "GET", "", NULL, NULL, -1, NULL);
    cr_assert_eq(r.status, 200);
    cr_assert(strstr(r.ctype, "text/plain") && strstr(r.ctype, "0.0.4"), "content type %s", r.ctype);
    n = parse_metrics(r.body, s, 4096);
    resp_free(&r);
    if (metric(s, n, "nq_worker_tasks_total", "stage=\"noop\",status=\"ok\"") >= 4 && metric(s, n, "nq_worker_in_flight", "") == 0)
      break;
    usleep(100000);
  }
  cr_assert_eq(metric(s, n, "nq_worker_tasks_total", "stage=\"noop\",status=\"ok\""), 4, "3 job tasks + 1 generate");
  cr_assert_eq(metric(s, n, "nq_worker_task_seconds_count", "stage=\"noop\""), 4);
  cr_assert_eq(metric(s, n, "nq_worker_task_seconds_bucket", "stage=\"noop\",le=\"+Inf\""), 4);
  /* the sleep_ms: 150 tasks (3 of them) took >= 0.1 s */
  cr_assert_leq(metric(s, n, "nq_worker_task_seconds_bucket", "stage=\"noop\",le=\"0.1\""), 1);
  cr_assert_geq(metric(s, n, "nq_worker_task_seconds_sum", "stage=\"noop\""), 0.45 - 1e-9);
  cr_assert_eq(metric(s, n, "nq_worker_in_flight", ""), 0);
  cr_assert_eq(metric(s, n, "nq_queue_depth", "topic=\"tasks:noop:cpu\""), 0);
  cr_assert_eq(metric(s, n, "nq_dlq_size", ""), 0);
  cr_assert_gt(metric(s, n, "nq_process_resident_memory_bytes", ""), 1e6);
  /* buckets are cumulative */
  double prev = -1;
  for (int i = 0; i < n; i++)
    if (strcmp(s[i].name, "nq_worker_task_seconds_bucket") == 0) {
      cr_assert_geq(s[i].value, prev);
      prev = s[i].value;
    }

  r = http_to(api_metrics, "GET", "", NULL, NULL, -1, NULL);
  cr_assert_eq(r.status, 200);
  n = parse_metrics(r.body, s, 4096);
  resp_free(&r);
  cr_assert_eq(metric(s, n, "nq_api_tasks_submitted_total", "stage=\"noop\""), 2, "one job + one generate");
  cr_assert_eq(metric(s, n, "nq_api_requests_total", "route=\"/v1/jobs\",code=\"201\""), 1);
  cr_assert_eq(metric(s, n, "nq_api_requests_total", "route=\"/v1/generate\",code=\"200\""), 1);
  cr_assert_eq(metric(s, n, "nq_api_requests_total", "route=\"other\",code=\"404\""), 1);
  cr_assert_geq(metric(s, n, "nq_api_requests_total", "route=\"/v1/jobs/{id}\",code=\"200\""), 1);
  free(id);
}

/* ---- rate limit: its own API instance ---- */

static void setup_ratelimit(void) {
  setup_common();
  write_keys();
  char keys[300];
  snprintf(keys, sizeof keys, "%s/keys.txt", tmp);
  start_api((const char *[]){"--api-key-file", keys, "--rate-limit", "0.5", "--rate-burst", "3", NULL});
}

TestSuite(api_ratelimit, .init = setup_ratelimit, .fini = teardown, .timeout = 60);

Test(api_ratelimit, per_key_429_with_retry_after) {
  for (int i = 0; i < 3; i++) {
    resp_t r = http("GET", "/v1/openapi.json", KEY_RW, NULL);
    cr_assert_eq(r.status, 200, "request %d within the burst", i);
    resp_free(&r);
  }
  resp_t r = http("GET", "/v1/openapi.json", KEY_RW, NULL);
  expect_error(&r, 429);
  cr_assert(strcasestr(r.hdr, "Retry-After: "), "429 carries Retry-After");
  resp_free(&r);
  /* another key has its own bucket */
  r = http("GET", "/v1/openapi.json", KEY_RO, NULL);
  cr_assert_eq(r.status, 200);
  resp_free(&r);
}

/* ---- the demo page in headless Chromium over WebDriver ---- */

static const char *find_exe(const char *const *names) {
  static char path[300];
  for (int i = 0; names[i]; i++) {
    const char *dirs[] = {"/usr/bin", "/usr/local/bin", "/usr/lib/chromium", NULL};
    for (int d = 0; dirs[d]; d++) {
      snprintf(path, sizeof path, "%s/%s", dirs[d], names[i]);
      if (access(path, X_OK) == 0) return path;
    }
  }
  return NULL;
}

static char wd[128];

static json_t *wd_call(const char *method, const char *path, json_t *body /* stolen */) {
  char *b = body ? json_dumps(body, JSON_COMPACT) : NULL;
  json_decref(body);
  resp_t r = http_to(wd, method, path, NULL, b, -1, b ? "Content-Type: application/json" : NULL);
  free(b);
  json_t *j = json_loads(r.body, 0, NULL);
  cr_assert(j, "webdriver %s %s: %ld %.300s", method, path, r.status, r.body);
  cr_assert_eq(r.status, 200, "webdriver %s %s: %ld %.500s", method, path, r.status, r.body);
  resp_free(&r);
  json_t *v = json_incref(json_object_get(j, "value"));
  json_decref(j);
  return v;
}

static char *wd_find(const char *sid, const char *css) {
  char p[300];
  snprintf(p, sizeof p, "/session/%s/element", sid);
  json_t *v = wd_call("POST", p, json_pack("{s:s,s:s}", "using", "css selector", "value", css));
  const char *k;
  json_t *x;
  char *id = NULL;
  json_object_foreach(v, k, x) id = strdup(json_string_value(x)); /* {"element-6066-...": "id"} */
  json_decref(v);
  cr_assert(id, "element %s not found", css);
  return id;
}

static char *wd_text(const char *sid, const char *css) {
  char *el = wd_find(sid, css), p[400];
  snprintf(p, sizeof p, "/session/%s/element/%s/text", sid, el);
  json_t *v = wd_call("GET", p, NULL);
  char *t = strdup(json_string_value(v) ? json_string_value(v) : "");
  json_decref(v);
  free(el);
  return t;
}

static void wd_type(const char *sid, const char *css, const char *text) {
  char *el = wd_find(sid, css), p[400];
  snprintf(p, sizeof p, "/session/%s/element/%s/value", sid, el);
  json_decref(wd_call("POST", p, json_pack("{s:s}", "text", text)));
  free(el);
}

static void b64_to_file(const char *b64, const char *path) {
  static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  FILE *f = fopen(path, "wb");
  cr_assert(f, "cannot write %s", path);
  unsigned acc = 0;
  int bits = 0;
  for (const char *p = b64; *p && *p != '='; p++) {
    const char *q = strchr(tbl, *p);
    if (!q) continue;
    acc = (acc << 6) | (unsigned)(q - tbl);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      fputc((int)((acc >> bits) & 0xff), f);
    }
  }
  fclose(f);
}

Test(api, demo_page_in_headless_chromium, .timeout = 180) {
  const char *chromium = find_exe((const char *[]){"chromium", "chromium-browser", NULL});
  char chrome_path[300];
  if (chromium) snprintf(chrome_path, sizeof chrome_path, "%s", chromium);
  const char *driver = find_exe((const char *[]){"chromedriver", NULL});
  if (!chromium || !driver) cr_skip_test("chromium or chromedriver not installed (Debian: chromium chromium-driver)");
  char driver_path[300];
  snprintf(driver_path, sizeof driver_path, "%s", driver);
  int port = free_port();
  char portarg[32];
  snprintf(portarg, sizeof portarg, "--port=%d", port);
  snprintf(wd, sizeof wd, "http://127.0.0.1:%d", port);
  pid_t dpid = spawn_argv(driver_path, NULL, "chromedriver.log", (const char *[]){driver_path, portarg, NULL});
  int up = 0;
  for (int i = 0; i < 100 && !up; i++) {
    usleep(100000);
    CURL *c = curl_easy_init();
    char u[200];
    snprintf(u, sizeof u, "%s/status", wd);
    curl_easy_setopt(c, CURLOPT_URL, u);
    curl_easy_setopt(c, CURLOPT_NOPROXY, "*");
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    acc_t a = {0};
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &a);
    up = curl_easy_perform(c) == CURLE_OK;
    free(a.buf);
    curl_easy_cleanup(c);
  }
  if (!up) {
    stop_pid(&dpid);
    cr_assert_fail("chromedriver did not start");
  }
  char udd[400];
  snprintf(udd, sizeof udd, "--user-data-dir=%s/chromium-profile", tmp);
  json_t *args = json_pack("[s,s,s,s,s,s,s,s,s,s]", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                           "--no-first-run", "--disable-background-networking", "--disable-component-update",
                           "--disable-sync", "--window-size=1000,900", udd);
  json_t *caps = json_pack("{s:{s:{s:{s:s,s:o}}}}", "capabilities", "alwaysMatch", "goog:chromeOptions", "binary",
                           chrome_path, "args", args);
  json_t *sess = wd_call("POST", "/session", caps);
  char sid[128];
  snprintf(sid, sizeof sid, "%s", json_string_value(json_object_get(sess, "sessionId")));
  json_decref(sess);
  char p[300];
  snprintf(p, sizeof p, "/session/%s/url", sid);
  char page[200];
  snprintf(page, sizeof page, "%s/", api_url);
  json_decref(wd_call("POST", p, json_pack("{s:s}", "url", page)));
  /* a person types a prompt and the API key, picks the noop stage and presses Generate */
  wd_type(sid, "#prompt", "a small red boat");
  wd_type(sid, "#stage", "noop");
  wd_type(sid, "#apikey", KEY_RW);
  /* and attaches an image (WebDriver types the file's path into the file input) */
  char img[400];
  snprintf(img, sizeof img, "%s/boat.png", tmp);
  b64_to_file(png_b64, img);
  wd_type(sid, "#media", img);
  char *btn = wd_find(sid, "#submit");
  snprintf(p, sizeof p, "/session/%s/element/%s/click", sid, btn);
  json_decref(wd_call("POST", p, json_object()));
  free(btn);
  char *state = NULL;
  for (int i = 0; i < 300; i++) {
    free(state);
    state = wd_text(sid, "#state");
    if (strcmp(state, "done") == 0 || strcmp(state, "error") == 0 || strcmp(state, "failed") == 0) break;
    usleep(100000);
  }
  char *outputs = wd_text(sid, "#outputs");
  /* screenshot artifact */
  snprintf(p, sizeof p, "/session/%s/screenshot", sid);
  json_t *shot = wd_call("GET", p, NULL);
  const char *adir = getenv("NQ_ARTIFACTS") ? getenv("NQ_ARTIFACTS") : "build/test-artifacts";
  char cmd[600], png[600];
  snprintf(cmd, sizeof cmd, "mkdir -p '%s'", adir);
  cr_assert_eq(system(cmd), 0);
  snprintf(png, sizeof png, "%s/api_demo_page.png", adir);
  b64_to_file(json_string_value(shot), png);
  json_decref(shot);
  snprintf(p, sizeof p, "/session/%s", sid);
  json_decref(wd_call("DELETE", p, NULL));
  stop_pid(&dpid);
  cr_assert_str_eq(state, "done", "page state %s; outputs: %s", state, outputs);
  /* the noop stage's output (the task input) is shown: the prompt came back through the queue and the store */
  cr_assert(strstr(outputs, "a small red boat"), "outputs shown: %s", outputs);
  /* the upload reached the task as an image stored in the object store */
  cr_assert(strstr(outputs, "\"kind\":\"image\"") && strstr(outputs, "-boat.png"), "outputs shown: %s", outputs);
  struct stat st;
  cr_assert(stat(png, &st) == 0 && st.st_size > 1000, "screenshot %s", png);
  free(state);
  free(outputs);
}

Test(api, sigterm_with_open_event_stream_exits_promptly) {
  /* a job that stays running (one slow task), an event stream open on it, then SIGTERM to the API */
  char *id = submit_job("job: slow\nstage: noop\ndataset: {format: jsonl, path: in.jsonl}\noutput: store/jobs\n"
                        "limit: 1\nparams: {sleep_ms: 20000}\n",
                        "application/yaml");
  char url[400], auth[200], out[400];
  snprintf(url, sizeof url, "%s/v1/jobs/%s/events", api_url, id);
  snprintf(auth, sizeof auth, "Authorization: Bearer %s", KEY_RO);
  snprintf(out, sizeof out, "%s/sse.txt", tmp);
  pid_t cpid = spawn_argv("/usr/bin/curl", out, "curl.log", (const char *[]){"curl", "-sN", "-H", auth, url, NULL});
  usleep(1500000);
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  int rc = stop_pid(&api_pid);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double secs = (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
  cr_assert_eq(rc, 0, "nextq api exit status %d", rc);
  cr_assert_lt(secs, 5, "stop took %.1f s", secs);
  stop_pid(&cpid);
  char *sse = slurp(out, NULL);
  cr_assert(sse && strstr(sse, "event: progress") && strstr(sse, "event: shutdown"), "stream: %s", sse ? sse : "");
  free(sse);
  free(id);
}

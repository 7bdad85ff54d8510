#include "common/log.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "common/err.h"

static nq_log_level_t g_level = NQ_LOG_INFO;
static nq_log_format_t g_fmt = NQ_LOG_AUTO;

static _Thread_local char t_job[128], t_task[160], t_trace[64];

static const char *level_names[] = {"debug", "info", "warn", "error", "off"};

void nq_log_setup(nq_log_level_t level, nq_log_format_t fmt) {
  g_level = level;
  g_fmt = fmt;
  if (g_fmt == NQ_LOG_AUTO) g_fmt = isatty(2) ? NQ_LOG_HUMAN : NQ_LOG_JSON;
}

nq_log_level_t nq_log_level(void) { return g_level; }

int nq_log_level_parse(const char *s, nq_log_level_t *out) {
  for (int i = 0; i <= NQ_LOG_OFF; i++)
    if (s && strcmp(s, level_names[i]) == 0) {
      *out = (nq_log_level_t)i;
      return 0;
    }
  return NQ_EINVAL;
}

int nq_log_format_parse(const char *s, nq_log_format_t *out) {
  static const char *names[] = {"auto", "human", "json"};
  for (int i = 0; i < 3; i++)
    if (s && strcmp(s, names[i]) == 0) {
      *out = (nq_log_format_t)i;
      return 0;
    }
  return NQ_EINVAL;
}

void nq_log_set_context(const char *job, const char *task, const char *trace) {
  snprintf(t_job, sizeof t_job, "%s", job ? job : "");
  snprintf(t_task, sizeof t_task, "%s", task ? task : "");
  snprintf(t_trace, sizeof t_trace, "%s", trace ? trace : "");
}

void nq_log(nq_log_level_t lvl, const char *component, const char *fmt, ...) {
  if (lvl < g_level || lvl >= NQ_LOG_OFF) return;
  char msg[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  struct timeval tv;
  gettimeofday(&tv, NULL);
  struct tm tm;
  gmtime_r(&tv.tv_sec, &tm);
  char ts[40];
  snprintf(ts, sizeof ts, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
           tm.tm_hour, tm.tm_min, tm.tm_sec, (long)(tv.tv_usec / 1000));
  nq_log_format_t f = g_fmt == NQ_LOG_AUTO ? (isatty(2) ? NQ_LOG_HUMAN : NQ_LOG_JSON) : g_fmt;
  char line[4096];
  int n;
  if (f == NQ_LOG_JSON) {
    json_t *o = json_pack("{s:s,s:s,s:s,s:s}", "ts", ts, "level", level_names[lvl], "component", component ? component : "",
                          "msg", msg);
    if (!o) return;
    if (t_job[0]) json_object_set_new(o, "job", json_string(t_job));
    if (t_task[0]) json_object_set_new(o, "task", json_string(t_task));
    if (t_trace[0]) json_object_set_new(o, "trace", json_string(t_trace));
    char *s = json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII);
    json_decref(o);
    if (!s) return;
    n = snprintf(line, sizeof line, "%s\n", s);
    free(s);
  } else {
    n = snprintf(line, sizeof line, "%s %-5s [%s]%s%s %s\n", ts + 11, level_names[lvl], component ? component : "",
                 t_task[0] ? " " : "", t_task, msg);
  }
  if (n < 0) return;
  if ((size_t)n >= sizeof line) {
    n = sizeof line - 1;
    line[n - 1] = '\n';
  }
  ssize_t w = write(2, line, (size_t)n);
  (void)w;
}

#include "common/err.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *nq_strerror(int code) {
  switch (code) {
    case 0: return "ok";
#define NQ__ERR_STR(name, val, text) \
  case NQ_##name: return text;
    NQ_ERRNO_MAP(NQ__ERR_STR)
#undef NQ__ERR_STR
  }
  return "unknown error";
}

const char *nq_err_name(int code) {
  switch (code) {
    case 0: return "OK";
#define NQ__ERR_NAME(name, val, text) \
  case NQ_##name: return #name;
    NQ_ERRNO_MAP(NQ__ERR_NAME)
#undef NQ__ERR_NAME
  }
  return "EUNKNOWN";
}

int nq_err_vset(nq_err_t *err, int code, unsigned flags, const char *fmt, va_list ap) {
  if (!err) return code;
  err->code = code;
  err->flags = flags;
  if (fmt)
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
  else
    snprintf(err->msg, sizeof err->msg, "%s", nq_strerror(code));
  return code;
}

int nq_err_set(nq_err_t *err, int code, unsigned flags, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  nq_err_vset(err, code, flags, fmt, ap);
  va_end(ap);
  return code;
}

int nq_err_prefix(nq_err_t *err, const char *fmt, ...) {
  if (!err) return 0;
  char pre[256], old[sizeof err->msg];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(pre, sizeof pre, fmt, ap);
  va_end(ap);
  memcpy(old, err->msg, sizeof old);
  snprintf(err->msg, sizeof err->msg, "%s: %s", pre, old);
  return err->code;
}

void nq_err_clear(nq_err_t *err) {
  if (!err) return;
  err->code = 0;
  err->flags = 0;
  err->msg[0] = 0;
}

void nq_assert_fail(const char *expr, const char *file, int line) {
  fprintf(stderr, "nextq: assertion failed: %s (%s:%d)\n", expr, file, line);
  abort();
}

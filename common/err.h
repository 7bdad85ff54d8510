/* common/err.h — the one error convention of nextq.
 *
 * Functions return int: 0 on success or a negative NQ_E* code. Functions that can fail on
 * *data* (a corrupt file, a bad message, a wrong shape) also take `nq_err_t *err` as their last
 * parameter and fill it with a message naming the thing and the place. `err` may be NULL.
 *
 * The flags say what the worker should do with the task that hit the error:
 *   NQ_ERR_RETRIABLE  transient (I/O hiccup, broker down, timeout): nack with backoff.
 *   NQ_ERR_FATAL      the input itself is bad (corrupt media, malformed message): dead-letter now.
 * An error with neither flag is treated as retriable up to max_attempts.
 */
#ifndef NQ_COMMON_ERR_H
#define NQ_COMMON_ERR_H

#include <stdarg.h>
#include <stddef.h>

/* X-macro: name, value, text. Values are negated on return. */
#define NQ_ERRNO_MAP(XX)                                                     \
  XX(EINVAL,      1, "invalid argument")                                     \
  XX(ENOMEM,      2, "out of memory")                                        \
  XX(EIO,         3, "i/o error")                                            \
  XX(ENOENT,      4, "not found")                                            \
  XX(EFORMAT,     5, "malformed data")                                       \
  XX(ESHAPE,      6, "wrong tensor shape")                                   \
  XX(EUNSUPPORTED,7, "unsupported")                                          \
  XX(ETIMEOUT,    8, "timed out")                                            \
  XX(EQUEUE,      9, "queue backend error")                                  \
  XX(ECONFIG,    10, "configuration error")                                  \
  XX(EKEY,       11, "invalid object key")                                   \
  XX(EEXIST,     12, "already exists")                                       \
  XX(EAGAIN,     13, "try again")                                            \
  XX(ECANCELED,  14, "canceled")                                             \
  XX(ELIMIT,     15, "limit exceeded")                                       \
  XX(EINTERNAL,  16, "internal error")

enum {
#define NQ__ERR_ENUM(name, val, text) NQ_##name = -(val),
  NQ_ERRNO_MAP(NQ__ERR_ENUM)
#undef NQ__ERR_ENUM
};

#define NQ_ERR_RETRIABLE 0x1u
#define NQ_ERR_FATAL     0x2u

typedef struct nq_err {
  int code;        /* 0 or a negative NQ_E* */
  unsigned flags;  /* NQ_ERR_RETRIABLE | NQ_ERR_FATAL */
  char msg[256];   /* human message naming the thing and the place; NUL-terminated */
} nq_err_t;

/* Text of a code ("malformed data"); "unknown error" for anything else. Never NULL. */
const char *nq_strerror(int code);
/* Short name of a code ("EFORMAT"). Never NULL. */
const char *nq_err_name(int code);

/* Fill *err (if non-NULL) and return code. printf-style message. */
int nq_err_set(nq_err_t *err, int code, unsigned flags, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
int nq_err_vset(nq_err_t *err, int code, unsigned flags, const char *fmt, va_list ap);
/* Prefix the existing message with "<prefix>: " (adds context while unwinding). Returns err->code. */
int nq_err_prefix(nq_err_t *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void nq_err_clear(nq_err_t *err);
/* Errors without an explicit flag count as retriable. */
static inline int nq_err_is_fatal(const nq_err_t *err) { return err && (err->flags & NQ_ERR_FATAL); }

/* Invariants only (programmer bugs). Bad input must never reach an assert. */
#define NQ_ASSERT(x)                                                                   \
  do {                                                                                 \
    if (!(x)) nq_assert_fail(#x, __FILE__, __LINE__);                                  \
  } while (0)
_Noreturn void nq_assert_fail(const char *expr, const char *file, int line);

#endif

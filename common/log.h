/* common/log.h — leveled logging to stderr, human lines on a terminal, JSON lines otherwise
 * (or as configured). Thread-safe; each line is written with one write(2). */
#ifndef NQ_COMMON_LOG_H
#define NQ_COMMON_LOG_H

typedef enum { NQ_LOG_DEBUG = 0, NQ_LOG_INFO, NQ_LOG_WARN, NQ_LOG_ERROR, NQ_LOG_OFF } nq_log_level_t;
typedef enum { NQ_LOG_AUTO = 0, NQ_LOG_HUMAN, NQ_LOG_JSON } nq_log_format_t;

void nq_log_setup(nq_log_level_t level, nq_log_format_t fmt);
/* Parse "debug|info|warn|error|off" / "auto|human|json"; return 0 or NQ_EINVAL. */
int nq_log_level_parse(const char *s, nq_log_level_t *out);
int nq_log_format_parse(const char *s, nq_log_format_t *out);
nq_log_level_t nq_log_level(void);

/* Context fields attached to every line from this thread (job, task, trace ids); NULL clears. */
void nq_log_set_context(const char *job, const char *task, const char *trace);

void nq_log(nq_log_level_t lvl, const char *component, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#define NQ_DEBUG(comp, ...) do { if (nq_log_level() <= NQ_LOG_DEBUG) nq_log(NQ_LOG_DEBUG, comp, __VA_ARGS__); } while (0)
#define NQ_INFO(comp, ...) nq_log(NQ_LOG_INFO, comp, __VA_ARGS__)
#define NQ_WARN(comp, ...) nq_log(NQ_LOG_WARN, comp, __VA_ARGS__)
#define NQ_ERROR(comp, ...) nq_log(NQ_LOG_ERROR, comp, __VA_ARGS__)

#endif

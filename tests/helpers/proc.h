/* tests/helpers/proc.h — run `nextq` (or any binary) as a real child process from integration tests. */
#ifndef NQ_TESTS_PROC_H
#define NQ_TESTS_PROC_H

#include <stddef.h>
#include <sys/types.h>

/* Spawns bin with args (NULL-terminated, without argv[0]); stdout to out_path (NULL: /dev/null), stderr appended
 * to err_path (NULL: /dev/null). Returns the pid, or -1 (errno set). */
pid_t nq_proc_spawn(const char *bin, const char *out_path, const char *err_path, const char *const *args);
/* Waits for pid; returns its exit status, or 128 + signal. */
int nq_proc_wait(pid_t pid);
/* Runs to completion with stdout captured in a file under dir ("<dir>/stdout.txt") and copied into out (cap bytes,
 * trailing newlines removed; out may be NULL); stderr appended to "<dir>/stderr.log". Returns the exit status, or -1
 * when it could not start. */
int nq_proc_run(const char *bin, const char *dir, char *out, size_t cap, const char *const *args);

#endif

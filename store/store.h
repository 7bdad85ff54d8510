/* store/store.h — object-store-style output directories.
 *
 * Objects are addressed by URI:
 *   file:///abs/path        absolute path (also file://localhost/abs/path)
 *   file://rel/path         relative path (to file_root when set, else to the cwd)
 *   /abs/path, rel/path     plain paths, same rules as file://
 *   s3://bucket/key         <s3_root>/bucket/key (s3_root is a mount of the bucket store)
 * URIs are taken literally: no percent-decoding ("%20" is three bytes of the file name).
 *
 * Safety: every path is checked before use — no ".." segment, no control characters, segments of at most 255 bytes,
 * at most 1024 bytes in all (keys) — and, when a root is configured, must stay inside it both lexically and after
 * resolving symlinks (realpath of the deepest existing ancestor). Violations are NQ_EKEY with NQ_ERR_FATAL.
 * Writes under a root never follow a symlink at all: the directories are walked one segment at a time from an fd of
 * the root with openat(O_NOFOLLOW | O_DIRECTORY) (mkdirat for missing ones), and the temp file, the rename and the
 * directory fsync are all relative to the final directory's fd, so a symlink swapped in after the check cannot
 * redirect a write (no check-to-use window). A symlink below the root, even one pointing inside it, makes a put fail.
 *
 * Writes are atomic: a reader sees the old object or the whole new one, never a half file (temp name in the same
 * directory, fsync, rename, fsync of the directory). Rewriting an object is allowed (idempotent task outputs).
 *
 * @thread any: a store is immutable after _new; every function may be called from several threads at once.
 */
#ifndef NQ_STORE_STORE_H
#define NQ_STORE_STORE_H

#include <stddef.h>

#include "common/err.h"

#define NQ_STORE_KEY_MAX 1024     /* bytes in a key (nq_store_key_check) */
#define NQ_STORE_SEGMENT_MAX 255  /* bytes in one path segment */
#define NQ_STORE_URI_MAX 1024     /* bytes in a stored object's URI (nq_store_obj_t.uri, without NUL) */
#define NQ_STORE_GET_MAX (4ull << 30) /* nq_store_get refuses larger objects (NQ_ELIMIT) */

typedef struct nq_store_cfg {
  const char *file_root; /* borrowed; may be NULL: file:// and plain paths must then be absolute or relative to the
                            cwd. When set, every file:// / plain path must resolve inside it (else NQ_EKEY); relative
                            ones are taken relative to it. Created (mkdir -p) by nq_store_new if missing. */
  const char *s3_root;   /* borrowed; may be NULL: s3://bucket/key -> <s3_root>/bucket/key; NULL => s3:// is an
                            error. Must exist (a missing mount must not silently fill the local disk). */
} nq_store_cfg_t;

typedef struct nq_store nq_store_t;

typedef struct nq_store_obj {
  char uri[NQ_STORE_URI_MAX + 1]; /* the object's URI: s3:// and file:// as given, plain paths as file:///abs */
  char sha256[65];                /* lowercase hex */
  unsigned long long bytes;
  char type[64];                  /* media type guessed from the extension */
} nq_store_obj_t;

/* The roots are copied. NQ_ECONFIG if a root can't be used. */
int nq_store_new(const nq_store_cfg_t *cfg /* borrowed */, nq_store_t **out /* OUT owned */, nq_err_t *err);
void nq_store_free(nq_store_t *st);

/* Validate a relative key: no "." or ".." segment, not absolute, no NUL, no empty segment (so no "//" nor a trailing
 * "/"), no backslash, no control characters, each segment <= 255 bytes, total <= 1024 bytes. NQ_EKEY otherwise. */
int nq_store_key_check(const char *key, nq_err_t *err);
/* Same on an explicit length, so an embedded NUL is caught. */
int nq_store_key_checkn(const char *key, size_t len, nq_err_t *err);

/* out = base_uri + "/" + key (no doubled slash when base_uri ends with "/"); key validated. NQ_ELIMIT when it
 * doesn't fit cap. */
int nq_store_join(const char *base_uri, const char *key, char *out /* OUT */, size_t cap, nq_err_t *err);

/* URI -> local path (see the header comment for the forms and checks). The path is absolute when a root applies,
 * else as given (relative to the cwd). */
int nq_store_resolve(nq_store_t *st, const char *uri, char *path /* OUT */, size_t cap, nq_err_t *err);

/* Atomic write of data[0..len) to uri, creating parent directories. Fills *obj when non-NULL. */
int nq_store_put(nq_store_t *st, const char *uri, const void *data /* borrowed */, size_t len,
                 nq_store_obj_t *obj /* OUT, may be NULL */, nq_err_t *err);
/* Group commit: many puts made durable and visible together, for the worker's batches. Each put writes its
 * temp file (no fsync); commit syncs every staged file's filesystem once (syncfs), renames all of them into place,
 * and syncs again — two syncs per batch instead of two fsyncs per object, with the same guarantee: when commit
 * returns 0 every object is durable under its name, and no reader ever sees a partial object. Staged objects are
 * invisible until commit; abort (or free) removes them. A batch is used by one thread at a time. */
typedef struct nq_store_batch nq_store_batch_t;
nq_store_batch_t *nq_store_batch_new(nq_store_t *st /* borrowed, must outlive the batch */);
int nq_store_batch_put(nq_store_batch_t *b, const char *uri, const void *data /* borrowed */, size_t len,
                       nq_store_obj_t *obj /* OUT, may be NULL */, nq_err_t *err);
int nq_store_batch_commit(nq_store_batch_t *b, nq_err_t *err);
void nq_store_batch_abort(nq_store_batch_t *b);
size_t nq_store_batch_count(const nq_store_batch_t *b);
void nq_store_batch_free(nq_store_batch_t *b);

/* Reads a whole object (regular files only, at most NQ_STORE_GET_MAX bytes). *data is NUL-terminated one byte past
 * *len for convenience. NQ_ENOENT if it doesn't exist. */
int nq_store_get(nq_store_t *st, const char *uri, void **data /* OUT owned, free() */, size_t *len /* OUT */,
                 nq_err_t *err);
/* 1 if uri is valid and names an existing regular file, else 0. */
int nq_store_exists(nq_store_t *st, const char *uri);
/* Fills *obj (uri, sha256, bytes, type) for an existing object. */
int nq_store_stat(nq_store_t *st, const char *uri, nq_store_obj_t *obj /* OUT */, nq_err_t *err);

/* "application/json", "image/png", "audio/wav", "video/mp4", "text/plain", ... "application/octet-stream" for unknown
 * extensions (matched case-insensitively on the last extension of the last segment). Never NULL. */
const char *nq_store_type_guess(const char *name);

/* Per-job files ----------------------------------------------------------------------------------------------------
 * <job_output_uri>/_manifest.jsonl: lines[i] is one JSON object (no newline inside; NQ_EINVAL otherwise), written as
 * the whole file atomically (the scheduler rewrites it with every task's final state). */
#define NQ_STORE_MANIFEST_NAME "_manifest.jsonl"
#define NQ_STORE_SUCCESS_NAME "_SUCCESS"
int nq_store_manifest_write(nq_store_t *st, const char *job_output_uri, const char *const *lines /* borrowed */,
                            size_t n, nq_err_t *err);
/* Empty <job_output_uri>/_SUCCESS, atomically. */
int nq_store_success_write(nq_store_t *st, const char *job_output_uri, nq_err_t *err);
/* Removes _SUCCESS (absent is fine) and syncs the directory. */
int nq_store_success_remove(nq_store_t *st, const char *job_output_uri, nq_err_t *err);

#endif

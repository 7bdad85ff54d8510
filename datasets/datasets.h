/* datasets/datasets.h — record readers the scheduler iterates to make tasks.
 *
 * Every format yields the same record, a JSON object that becomes the task input:
 *   {"key": "000042",                        always; a safe relative object key (segments, no "..")
 *    "text": "...",                          only when the sample has text (prompt/text/caption, .txt member)
 *    "media": [{"kind": "image|video|audio", "uri": "file:///abs/x.jpg"}, ...],   always (maybe empty)
 *    "meta": {...}}                          always: the original fields (JSONL line, JSON element, .json members)
 *
 * Formats (spec §10 for the NExT-GPT ones):
 *   jsonl         one object per line. key = "id" / "key" (string or integer) else the 0-based line number as %06d;
 *                 text = "prompt" / "text" / "caption"; media from "image" / "video" / "audio" (a path or an array of
 *                 paths) and an explicit "media": [{"kind", "uri" | "path"}]. Blank lines are skipped.
 *   nextgpt-json  one JSON array, streamed element by element (cc3m.json, webvid.json, audiocap.json):
 *                 key = "id" / "audio_id", text = "caption", media from "image_name" / "video_name" / "audio_name"
 *                 (plus everything jsonl accepts). Captions are passed through unchanged.
 *   webdataset    tar shards (libarchive; also compressed tars). path may hold brace lists:
 *                 "shard-{000000..000009}.tar", "{a,b}.tar", several groups. Members are grouped by key (directory +
 *                 basename up to its first dot); the last extension picks the role: txt -> text, json -> merged into
 *                 meta (its caption/text/prompt is the text when there is no .txt), cls -> meta.cls, jpg jpeg png webp
 *                 -> image, wav flac mp3 ogg -> audio, mp4 webm avi mkv -> video (URI "file://<abs shard>#<member>"),
 *                 anything else -> meta.members.<ext> = its URI.
 *   dir           every regular file under path (recursive, hidden names skipped, symlinked dirs not followed),
 *                 grouped by key = relative path without its last extension, records in key order; same roles.
 *
 * Relative media paths are resolved against media_root (made absolute) or, without one, the dataset file's
 * directory; a relative path with a ".." segment is refused. URIs are not percent-encoded (store.h takes them
 * literally too).
 *
 * Errors: nq_ds_next returns <0 for a bad record / shard / member with a message naming file:line (jsonl),
 * file:element (json), or shard + member (webdataset); the caller may call nq_ds_next again to go on with the rest
 * (the next line, the next element, the next shard). Data errors are NQ_EFORMAT + NQ_ERR_FATAL.
 *
 * @thread one dataset per thread; different datasets are independent.
 */
#ifndef NQ_DATASETS_DATASETS_H
#define NQ_DATASETS_DATASETS_H

#include <jansson.h>
#include <stddef.h>

#include "common/err.h"

#define NQ_DS_MAX_RECORD_DEFAULT (16u << 20) /* bytes in a line / element / text member (spec.max_record_bytes = 0) */
#define NQ_DS_READ_MAX (1ull << 30)           /* nq_ds_read_uri refuses larger objects (NQ_ELIMIT) */
#define NQ_DS_MAX_SHARDS 1000000              /* brace expansion limit */
#define NQ_DS_KEY_MAX 512                     /* bytes in a record key */

typedef enum { NQ_DS_JSONL, NQ_DS_NEXTGPT_JSON, NQ_DS_WEBDATASET, NQ_DS_DIR } nq_ds_format_t;

/* "jsonl" | "nextgpt-json" | "webdataset" | "dir". NQ_EINVAL otherwise. */
int nq_ds_format_parse(const char *s, nq_ds_format_t *out /* OUT */);
const char *nq_ds_format_name(nq_ds_format_t f);

typedef struct nq_ds_spec {
  nq_ds_format_t format;
  const char *path;        /* borrowed (copied by nq_ds_open) */
  const char *media_root;  /* borrowed, may be NULL */
  size_t max_record_bytes; /* 0 = NQ_DS_MAX_RECORD_DEFAULT */
} nq_ds_spec_t;

typedef struct nq_dataset nq_dataset_t;

/* Opens the file / directory / shard list. A missing file or an empty brace expansion is an error here; a missing
 * shard is reported by nq_ds_next when it is reached. */
int nq_ds_open(const nq_ds_spec_t *spec /* borrowed */, nq_dataset_t **out /* OUT owned */, nq_err_t *err);
/* 1 and *rec (owned, json_decref) on a record; 0 at the end; <0 on a bad record / shard / member (see above). */
int nq_ds_next(nq_dataset_t *ds, json_t **rec /* OUT owned */, nq_err_t *err);
void nq_ds_free(nq_dataset_t *ds);

/* Reads a media URI's bytes: "file:///abs/x.jpg", a plain path, or a tar member
 * "file:///abs/shard-000001.tar#000042.jpg". *data is NUL-terminated one byte past *len. */
int nq_ds_read_uri(const char *uri, void **data /* OUT owned, free() */, size_t *len /* OUT */, nq_err_t *err);

/* Expands brace lists in a path: "{000..003}" (zero-padded when either bound has a leading zero), "{a,b}", several
 * groups (cartesian product, left to right); no nesting. *out is a NULL-terminated array, free with
 * nq_ds_brace_free. NQ_EINVAL on a malformed pattern, NQ_ELIMIT past NQ_DS_MAX_SHARDS. */
int nq_ds_brace_expand(const char *pattern, char ***out /* OUT owned */, size_t *n /* OUT */, nq_err_t *err);
void nq_ds_brace_free(char **list);

#endif

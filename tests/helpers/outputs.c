#include "tests/helpers/outputs.h"

#include <dirent.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

static int fail(char *why, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(char *why, size_t cap, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(why, cap, fmt, ap);
  va_end(ap);
  return -1;
}

static int check_manifest(const char *job_dir, int expect, int *ok, char *why, size_t cap) {
  char p[1024];
  snprintf(p, sizeof p, "%s/_manifest.jsonl", job_dir);
  FILE *f = fopen(p, "r");
  if (!f) return fail(why, cap, "no manifest %s", p);
  json_t *seen = json_object();
  char line[16384];
  int rows = 0, rc = 0;
  *ok = 0;
  while (!rc && fgets(line, sizeof line, f)) {
    json_t *o = json_loads(line, 0, NULL);
    rows++;
    const char *task = json_string_value(json_object_get(o, "task"));
    const char *st = json_string_value(json_object_get(o, "status"));
    json_t *out0 = json_array_get(json_object_get(o, "outputs"), 0);
    const char *uri = json_string_value(json_object_get(out0, "uri"));
    struct stat sb;
    if (!task) rc = fail(why, cap, "manifest row %d is not JSON with a task", rows);
    else if (json_object_get(seen, task)) rc = fail(why, cap, "task %s twice in the manifest", task);
    else if (!uri || strlen(uri) <= 7 || stat(uri + 7, &sb) != 0) rc = fail(why, cap, "output of %s missing", task);
    else if ((long long)sb.st_size != json_integer_value(json_object_get(out0, "bytes")))
      rc = fail(why, cap, "output of %s partial", task);
    if (!rc) {
      json_object_set_new(seen, task, json_true());
      if (st && strcmp(st, "ok") == 0) (*ok)++;
    }
    json_decref(o);
  }
  fclose(f);
  json_decref(seen);
  if (!rc && rows != expect) rc = fail(why, cap, "manifest rows %d, expected %d", rows, expect);
  return rc;
}

static int check_dirs(const char *job_dir, int expect, const char *outname, char *why, size_t cap) {
  DIR *d = opendir(job_dir);
  if (!d) return fail(why, cap, "no output dir %s", job_dir);
  struct dirent *e;
  int dirs = 0, rc = 0;
  while (!rc && (e = readdir(d))) {
    if (e->d_name[0] == '.' || e->d_name[0] == '_') continue;
    char q[1300];
    snprintf(q, sizeof q, "%s/%s", job_dir, e->d_name);
    DIR *t = opendir(q);
    if (!t) {
      rc = fail(why, cap, "unexpected entry %s", q);
      break;
    }
    struct dirent *g;
    int files = 0;
    while (!rc && (g = readdir(t))) {
      if (!strcmp(g->d_name, ".") || !strcmp(g->d_name, "..")) continue;
      if (strcmp(g->d_name, outname) != 0)
        rc = fail(why, cap, "stray file %s/%s (partial or duplicate output)", q, g->d_name);
      files++;
    }
    closedir(t);
    if (!rc && files != 1) rc = fail(why, cap, "%s holds %d files", q, files);
    dirs++;
  }
  closedir(d);
  if (!rc && dirs != expect) rc = fail(why, cap, "%d task directories, expected %d", dirs, expect);
  return rc;
}

int nq_check_job_outputs(const char *job_dir, int expect, const char *outname, char *why, size_t cap) {
  int ok = 0;
  if (check_manifest(job_dir, expect, &ok, why, cap) || check_dirs(job_dir, expect, outname, why, cap)) return -1;
  return ok;
}

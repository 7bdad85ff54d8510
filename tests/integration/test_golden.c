/* tests/integration/test_golden.c — the golden runner: every case in ../shared/golden whose kind this build
 * implements (`nextq module list`) is run through `nextq module run` exactly as ../shared/golden/README.md says,
 * and every expected tensor is compared (rel_l2 / max_abs, or equality when tolerance.exact). The same cases run
 * again with --dtype bf16 at rel_l2 <= 1e-2 (3e-2 for nextgpt-signal) for the model kinds. Pickle cases run
 * through `nextq model convert` / `nextq model inspect` when `nextq model` exists. A table is printed. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "compute/io/safetensors.h"

extern char **environ;

static const char *bin(void) {
  const char *b = getenv("NQ_BIN");
  return b ? b : "build/nextq";
}

/* Runs bin with argv; stdout to out_path (may be NULL), stderr to err_path. Returns exit status. */
static int run_argv(const char **argv, const char *out_path, const char *err_path, const char *cwd) {
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, out_path ? out_path : "/dev/null", O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&fa, 2, err_path ? err_path : "/dev/null", O_WRONLY | O_CREAT | O_TRUNC, 0644);
  pid_t pid;
  char b[4096];
  if (bin()[0] == '/') snprintf(b, sizeof b, "%s", bin());
  else {
    char cwdbuf[2048];
    snprintf(b, sizeof b, "%s/%s", getcwd(cwdbuf, sizeof cwdbuf), bin());
  }
  argv[0] = b;
  char old[2048];
  if (cwd) {
    if (!getcwd(old, sizeof old) || chdir(cwd) != 0) return -1;
  }
  int rc = posix_spawn(&pid, b, &fa, NULL, (char *const *)argv, environ);
  if (cwd && chdir(old) != 0) rc = -1;
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) return -1;
  int st;
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static char *slurp(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return strdup("");
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *s = malloc((size_t)n + 1);
  size_t k = fread(s, 1, (size_t)n, f);
  s[k] = 0;
  fclose(f);
  return s;
}

static int kind_supported(const char *kinds, const char *kind) {
  size_t n = strlen(kind);
  for (const char *p = kinds; (p = strstr(p, kind)); p += n)
    if ((p == kinds || p[-1] == '\n') && (p[n] == '\n' || !p[n])) return 1;
  return 0;
}

static double *to_f64(const nq_st_tensor_t *t) {
  int64_t n = nq_st_numel(t);
  double *d = malloc((size_t)(n ? n : 1) * sizeof *d);
  const void *p = t->data;
  for (int64_t i = 0; i < n; i++) {
    switch (t->dtype) {
      case NQ_DT_F32: d[i] = ((const float *)p)[i]; break;
      case NQ_DT_F64: d[i] = ((const double *)p)[i]; break;
      case NQ_DT_F16: d[i] = nq_f16_to_f32(((const uint16_t *)p)[i]); break;
      case NQ_DT_BF16: d[i] = nq_bf16_to_f32(((const uint16_t *)p)[i]); break;
      case NQ_DT_I64: d[i] = (double)((const int64_t *)p)[i]; break;
      case NQ_DT_I32: d[i] = ((const int32_t *)p)[i]; break;
      case NQ_DT_I16: d[i] = ((const int16_t *)p)[i]; break;
      case NQ_DT_I8: d[i] = ((const int8_t *)p)[i]; break;
      default: d[i] = ((const uint8_t *)p)[i]; break;
    }
  }
  return d;
}

/* Compare every expected tensor; returns 1 when all pass. Appends details to why. */
static int compare(const char *exp_path, const char *out_path, int exact, double rel_tol, double abs_tol, double *worst_rel,
                   double *worst_abs, char *why, size_t cap) {
  nq_st_file_t *e = NULL, *o = NULL;
  nq_err_t err = {0};
  *worst_rel = *worst_abs = 0;
  if (nq_st_open(exp_path, &e, &err) != 0) {
    snprintf(why, cap, "expected: %s", err.msg);
    return 0;
  }
  if (nq_st_open(out_path, &o, &err) != 0) {
    snprintf(why, cap, "output: %s", err.msg);
    nq_st_close(e);
    return 0;
  }
  int ok = 1;
  for (size_t i = 0; i < nq_st_count(e); i++) {
    const nq_st_tensor_t *te = nq_st_get(e, i), *to = nq_st_find(o, te->name);
    if (!to) {
      snprintf(why + strlen(why), cap - strlen(why), " missing '%s';", te->name);
      ok = 0;
      continue;
    }
    int same = te->ndim == to->ndim;
    for (int d = 0; same && d < te->ndim; d++) same = te->shape[d] == to->shape[d];
    if (!same) {
      snprintf(why + strlen(why), cap - strlen(why), " '%s' shape differs;", te->name);
      ok = 0;
      continue;
    }
    int64_t n = nq_st_numel(te);
    double *a = to_f64(te), *b = to_f64(to), num = 0, den = 0, mx = 0;
    int64_t mismatches = 0;
    for (int64_t k = 0; k < n; k++) {
      double dd = b[k] - a[k];
      if (isnan(b[k]) != isnan(a[k])) dd = INFINITY;
      num += dd * dd;
      den += a[k] * a[k];
      if (fabs(dd) > mx || isnan(dd)) mx = isnan(dd) ? INFINITY : fabs(dd);
      mismatches += a[k] != b[k];
    }
    double rel = sqrt(num) / fmax(sqrt(den), 1e-12);
    if (rel > *worst_rel) *worst_rel = rel;
    if (mx > *worst_abs) *worst_abs = mx;
    if (exact ? mismatches != 0 : !(rel <= rel_tol && mx <= abs_tol)) {
      snprintf(why + strlen(why), cap - strlen(why), " '%s' rel_l2 %.3g max_abs %.3g%s;", te->name, rel, mx,
               exact ? " (exact required)" : "");
      ok = 0;
    }
    free(a);
    free(b);
  }
  nq_st_close(e);
  nq_st_close(o);
  return ok;
}

typedef struct tally {
  int run, passed, skipped;
  char failures[16384];
} tally_t;

static void run_case(const char *cdir, const char *kinds, const char *dtype, int have_model_cmd, tally_t *t, char *tmp) {
  char p[1200];
  snprintf(p, sizeof p, "%s/case.json", cdir);
  json_t *c = json_load_file(p, 0, NULL);
  if (!c) return;
  const char *kind = json_string_value(json_object_get(c, "kind"));
  const char *cname = strrchr(cdir, '/') + 1;
  int is_pickle = kind && strncmp(kind, "pickle-", 7) == 0;
  int is_model_kind = kind && !strstr(kind, "preprocess") && !strstr(kind, "tokenize") && !is_pickle;
  int exact_case = json_is_true(json_object_get(json_object_get(c, "tolerance"), "exact"));
  if (dtype && is_model_kind && exact_case && kind_supported(kinds, kind)) {
    /* exact ids (greedy decoding) under bf16 weights: the golden margins (e.g. 0.0042 between the top two logits)
     * are below bf16 precision, so ids may legitimately differ; the logits cases carry the bf16 check. */
    printf("  skip  %-34s %-18s bf16 (exact ids; margin below bf16 precision)\n", strrchr(cdir, '/') + 1, kind);
    json_decref(c);
    return;
  }
  if (!kind || (is_pickle ? !have_model_cmd : !kind_supported(kinds, kind)) || (dtype && !is_model_kind)) {
    if (!dtype) {
      t->skipped++;
      printf("  skip  %-34s %-18s (kind not built)\n", cname, kind ? kind : "?");
    }
    json_decref(c);
    return;
  }
  t->run++;
  char outp[600], errp[600], exp[1200];
  snprintf(outp, sizeof outp, "%s/out.safetensors", tmp);
  snprintf(errp, sizeof errp, "%s/stderr.txt", tmp);
  unlink(outp);
  const char *argv[128];
  char *owned[128];
  int na = 0, no = 0;
  argv[na++] = NULL; /* bin */
  int rc;
  if (is_pickle) {
    char file[1200];
    snprintf(file, sizeof file, "%s/%s", cdir, json_string_value(json_object_get(c, "file")));
    argv[na++] = "model";
    if (strcmp(kind, "pickle-refuse") == 0) {
      argv[na++] = "inspect";
      argv[na++] = owned[no++] = strdup(file);
      argv[na] = NULL;
      rc = run_argv(argv, NULL, errp, tmp); /* cwd = tmp: nothing may appear there */
      char *err_text = slurp(errp);
      char pw[700];
      snprintf(pw, sizeof pw, "%s/nq_pickle_public_pwned", tmp);
      int pass = rc != 0 && rc < 128 && strlen(err_text) > 0 && access(pw, F_OK) != 0;
      if (pass) t->passed++;
      else snprintf(t->failures + strlen(t->failures), sizeof t->failures - strlen(t->failures), "%s: not refused cleanly (exit %d): %.200s\n", cname, rc, err_text);
      printf("  %s  %-34s %-18s exit %d: %.100s\n", pass ? "ok  " : "FAIL", cname, kind, rc, err_text);
      free(err_text);
      goto done;
    }
    argv[na++] = "convert";
    argv[na++] = owned[no++] = strdup(file);
    argv[na++] = "--out";
    argv[na++] = outp;
  } else {
    argv[na++] = "module";
    argv[na++] = "run";
    argv[na++] = "--kind";
    argv[na++] = kind;
    const char *model = json_string_value(json_object_get(c, "model"));
    if (model) {
      char mp[1200];
      snprintf(mp, sizeof mp, "%s/%s", cdir, model);
      argv[na++] = "--model";
      argv[na++] = owned[no++] = strdup(mp);
    }
    const char *inputs = json_string_value(json_object_get(c, "inputs"));
    if (inputs) {
      char ip[1200];
      snprintf(ip, sizeof ip, "%s/%s", cdir, inputs);
      argv[na++] = "--in";
      argv[na++] = owned[no++] = strdup(ip);
    }
    argv[na++] = "--out";
    argv[na++] = outp;
    if (dtype) {
      argv[na++] = "--dtype";
      argv[na++] = dtype;
    }
    const char *k;
    json_t *v;
    json_object_foreach(json_object_get(c, "params"), k, v) {
      if (na > 120) break;
      char *val = json_is_string(v) ? strdup(json_string_value(v)) : json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
      char kv[4096];
      if (strcmp(k, "path") == 0 && json_is_string(v) && val[0] != '/') snprintf(kv, sizeof kv, "%s=%s/%s", k, cdir, val);
      else snprintf(kv, sizeof kv, "%s=%s", k, val);
      free(val);
      argv[na++] = "--param";
      argv[na++] = owned[no++] = strdup(kv);
    }
  }
  argv[na] = NULL;
  rc = run_argv(argv, NULL, errp, NULL);
  if (rc != 0) {
    char *e = slurp(errp);
    snprintf(t->failures + strlen(t->failures), sizeof t->failures - strlen(t->failures), "%s [%s%s]: exit %d: %.300s\n",
             cname, kind, dtype ? " bf16" : "", rc, e);
    printf("  FAIL  %-34s %-18s exit %d: %.200s\n", cname, kind, rc, e);
    free(e);
    goto done;
  }
  {
    json_t *tol = json_object_get(c, "tolerance");
    int exact = is_pickle || json_is_true(json_object_get(tol, "exact"));
    double rel = json_number_value(json_object_get(tol, "rel_l2")), mx = json_number_value(json_object_get(tol, "max_abs"));
    if (dtype && !exact) {
      rel = strcmp(kind, "nextgpt-signal") == 0 ? 3e-2 : 1e-2;
      mx = INFINITY;
    }
    if (dtype && exact) exact = 0, rel = 1e-2, mx = INFINITY; /* ids in bf16: only where the margin allows; reported */
    snprintf(exp, sizeof exp, "%s/%s", cdir, is_pickle ? "expected.safetensors" : json_string_value(json_object_get(c, "expected")));
    double wr, wa;
    char why[2048] = "";
    int pass = compare(exp, outp, exact, rel, mx, &wr, &wa, why, sizeof why);
    printf("  %s  %-34s %-18s%s rel_l2 %.2e  max_abs %.2e  (tol %s%.1e/%.1e)\n", pass ? "ok  " : "FAIL", cname, kind,
           dtype ? " bf16" : "", wr, wa, exact ? "exact " : "", rel, mx);
    if (pass) t->passed++;
    else snprintf(t->failures + strlen(t->failures), sizeof t->failures - strlen(t->failures), "%s [%s%s]:%s\n", cname, kind,
                  dtype ? " bf16" : "", why);
  }
done:
  for (int i = 0; i < no; i++) free(owned[i]);
  json_decref(c);
}

static int cmp_names(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static void run_all(const char *dtype) {
  char tmp[] = "/tmp/nq_golden_XXXXXX";
  cr_assert(mkdtemp(tmp));
  char kp[600], ep[600];
  snprintf(kp, sizeof kp, "%s/kinds.txt", tmp);
  snprintf(ep, sizeof ep, "%s/e.txt", tmp);
  const char *argv[] = {NULL, "module", "list", NULL};
  cr_assert_eq(run_argv(argv, kp, ep, NULL), 0, "nextq module list failed");
  char *kinds = slurp(kp);
  const char *margv[] = {NULL, "model", "--help", NULL};
  int have_model = run_argv(margv, NULL, NULL, NULL) == 0;
  tally_t t;
  memset(&t, 0, sizeof t);
  const char *root = NQ_SHARED_DIR "/golden";
  DIR *d = opendir(root);
  cr_assert(d, "no %s", root);
  char *sets[64];
  int ns = 0;
  struct dirent *e;
  while ((e = readdir(d)) && ns < 64)
    if (e->d_name[0] != '.' && e->d_type == DT_DIR) sets[ns++] = strdup(e->d_name);
  closedir(d);
  qsort(sets, (size_t)ns, sizeof *sets, cmp_names);
  printf("golden cases%s:\n", dtype ? " (--dtype bf16)" : "");
  for (int s = 0; s < ns; s++) {
    char sd[1024];
    snprintf(sd, sizeof sd, "%s/%s", root, sets[s]);
    DIR *cd = opendir(sd);
    char *cases[128];
    int nc = 0;
    while (cd && (e = readdir(cd)) && nc < 128)
      if (e->d_name[0] != '.' && e->d_type == DT_DIR) cases[nc++] = strdup(e->d_name);
    if (cd) closedir(cd);
    qsort(cases, (size_t)nc, sizeof *cases, cmp_names);
    for (int i = 0; i < nc; i++) {
      char cdir[1200];
      snprintf(cdir, sizeof cdir, "%s/%s", sd, cases[i]);
      run_case(cdir, kinds, dtype, have_model, &t, tmp);
      free(cases[i]);
    }
    free(sets[s]);
  }
  printf("golden%s: %d run, %d passed, %d skipped (kind not built yet)\n", dtype ? " bf16" : "", t.run, t.passed, t.skipped);
  fflush(stdout);
  free(kinds);
  char cmd[700];
  snprintf(cmd, sizeof cmd, "rm -rf %s", tmp);
  if (system(cmd) != 0) fprintf(stderr, "cleanup failed\n");
  cr_assert_eq(t.passed, t.run, "golden failures:\n%s", t.failures);
}

Test(golden, all_cases_f32, .timeout = 600) { run_all(NULL); }
Test(golden, model_cases_bf16, .timeout = 600) { run_all("bf16"); }

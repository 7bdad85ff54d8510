/* bench/bench_store.c — cost of the object store's group-committed puts (what every task output pays) beside a
 * bare syscall loop doing the same file work (mkdir + open/write/close + rename, no checks, no hashing, no sync),
 * measured in the same run on the same directory. Shows the floor that file-writing tasks put under the
 * end-to-end queue figures.
 *
 *   build/bench/bench_store [DIR [N [RUNS]]]     defaults: /dev/shm (else /tmp), 20000, 3
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "store/store.h"

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
  const char *base = argc > 1 ? argv[1] : (access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
  int n = argc > 2 ? atoi(argv[2]) : 20000, runs = argc > 3 ? atoi(argv[3]) : 3;
  if (n < 1 || runs < 1 || runs > 50) return 2;
  char dir[512];
  snprintf(dir, sizeof dir, "%s/nq_bench_store_XXXXXX", base);
  if (!mkdtemp(dir)) return perror("mkdtemp"), 1;
  const char body[] = "{\"id\":\"12345\",\"prompt\":\"p\"}";
  double raw[50], st[50];
  nq_store_t *s = NULL;
  nq_err_t err = {0};
  nq_store_cfg_t cfg = {0};
  if (nq_store_new(&cfg, &s, &err)) return fprintf(stderr, "%s\n", err.msg), 1;
  for (int r = 0; r < runs; r++) {
    char p[1024], t[1024];
    double t0 = now_s();
    for (int i = 0; i < n; i++) {
      snprintf(p, sizeof p, "%s/raw%d/%06d", dir, r, i);
      if (i == 0) {
        snprintf(t, sizeof t, "%s/raw%d", dir, r);
        mkdir(t, 0755);
      }
      mkdir(p, 0755);
      snprintf(t, sizeof t, "%s/.out.json.tmp", p);
      int fd = open(t, O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (fd < 0 || write(fd, body, sizeof body - 1) < 0) return perror("raw"), 1;
      close(fd);
      snprintf(p + strlen(p), sizeof p - strlen(p), "/out.json");
      rename(t, p);
    }
    raw[r] = n / (now_s() - t0);
    nq_store_batch_t *b = nq_store_batch_new(s);
    t0 = now_s();
    for (int i = 0; i < n; i++) {
      char uri[1100];
      nq_store_obj_t obj;
      snprintf(uri, sizeof uri, "file://%s/st%d/%06d/out.json", dir, r, i);
      if (nq_store_batch_put(b, uri, body, sizeof body - 1, &obj, &err)) return fprintf(stderr, "%s\n", err.msg), 1;
      if ((i + 1) % 64 == 0 && nq_store_batch_commit(b, &err)) return fprintf(stderr, "%s\n", err.msg), 1;
    }
    if (nq_store_batch_commit(b, &err)) return fprintf(stderr, "%s\n", err.msg), 1;
    st[r] = n / (now_s() - t0);
    nq_store_batch_free(b);
    printf("run %d: raw syscalls %.0f objects/s, store group commit (64/batch) %.0f objects/s\n", r, raw[r], st[r]);
  }
  qsort(raw, (size_t)runs, sizeof *raw, cmp_d);
  qsort(st, (size_t)runs, sizeof *st, cmp_d);
  printf("bench_store dir=%s n=%d raw_per_s=%.0f store_per_s=%.0f ratio=%.3f store_us_per_object=%.1f\n", base, n,
         raw[runs / 2], st[runs / 2], st[runs / 2] / raw[runs / 2], 1e6 / st[runs / 2]);
  nq_store_free(s);
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  return system(cmd) == 0 ? 0 : 1;
}

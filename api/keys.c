/* api/keys.c — API keys (kept as sha256 digests only) and per-key token-bucket rate limits. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api_int.h"

/* Key file: one key per line; blank lines and '#' comments are skipped. A line is either the key itself or
 * "sha256:<64 hex>" (so the file need not hold secrets), optionally followed by whitespace and "ro"/"read-only".
 * The plain keys are hashed as they are read and never kept. */
int nq_api__keys_load(nq_api_t *api, const char *path, nq_err_t *err) {
  FILE *f = fopen(path, "r");
  if (!f) return nq_err_set(err, NQ_ENOENT, NQ_ERR_FATAL, "api key file %s: cannot open", path);
  char line[1024];
  int lineno = 0, rc = 0;
  while (!rc && fgets(line, sizeof line, f)) {
    lineno++;
    size_t l = strlen(line);
    if (l == sizeof line - 1 && line[l - 1] != '\n') {
      rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "api key file %s:%d: line too long", path, lineno);
      break;
    }
    char *p = line;
    while (*p && isspace((unsigned char)*p)) p++;
    if (!*p || *p == '#') continue;
    char *key = p;
    while (*p && !isspace((unsigned char)*p)) p++;
    char *keyend = p;
    while (*p && isspace((unsigned char)*p)) p++;
    char *flag = p;
    while (*p && !isspace((unsigned char)*p)) p++;
    *p = 0;
    *keyend = 0;
    int ro = 0;
    if (*flag) {
      if (strcmp(flag, "ro") == 0 || strcmp(flag, "read-only") == 0) ro = 1;
      else if (strcmp(flag, "rw") != 0) {
        rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "api key file %s:%d: unknown flag '%.40s' (ro|rw)", path, lineno, flag);
        break;
      }
    }
    nq_api__key_t k = {.read_only = ro};
    if (strncmp(key, "sha256:", 7) == 0) {
      const char *h = key + 7;
      size_t hl = strlen(h);
      int ok = hl == NQ_SHA256_HEX_LEN;
      for (size_t i = 0; ok && i < hl; i++) ok = isxdigit((unsigned char)h[i]);
      if (!ok) {
        rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "api key file %s:%d: sha256: wants 64 hex digits", path, lineno);
        break;
      }
      for (size_t i = 0; i < hl; i++) k.sha256[i] = (char)tolower((unsigned char)h[i]);
      k.sha256[hl] = 0;
    } else {
      nq_sha256_hex(key, strlen(key), k.sha256);
    }
    memset(line, 0, sizeof line); /* don't leave the key on the stack */
    nq_api__key_t *nk = realloc(api->keys, (size_t)(api->nkeys + 1) * sizeof *nk);
    if (!nk) {
      rc = nq_err_set(err, NQ_ENOMEM, NQ_ERR_FATAL, "api key file %s: out of memory", path);
      break;
    }
    api->keys = nk;
    api->keys[api->nkeys++] = k;
  }
  fclose(f);
  if (!rc && api->nkeys == 0) rc = nq_err_set(err, NQ_ECONFIG, NQ_ERR_FATAL, "api key file %s: no keys", path);
  return rc;
}

static int ct_equal(const char *a, const char *b, size_t n) {
  unsigned char d = 0;
  for (size_t i = 0; i < n; i++) d |= (unsigned char)(a[i] ^ b[i]);
  return d == 0;
}

unsigned nq_api__auth(nq_api_t *api, const char *authorization, int *read_only, char *id, size_t cap) {
  *read_only = 0;
  if (!authorization) return 401;
  const char *p = authorization;
  if (strncasecmp(p, "Bearer ", 7) != 0) return 401;
  p += 7;
  while (*p == ' ') p++;
  size_t n = strlen(p);
  while (n > 0 && p[n - 1] == ' ') n--;
  if (n == 0 || n > 4096) return 401;
  char h[NQ_SHA256_HEX_LEN + 1];
  if (nq_sha256_hex(p, n, h) != 0) return 401;
  int found = -1;
  for (int i = 0; i < api->nkeys; i++) /* compare against every key: timing says nothing about which matched */
    if (ct_equal(h, api->keys[i].sha256, NQ_SHA256_HEX_LEN) && found < 0) found = i;
  if (found < 0) return 401;
  *read_only = api->keys[found].read_only;
  snprintf(id, cap, "key:%.16s", api->keys[found].sha256);
  return 0;
}

static unsigned bucket_hash(const char *s) {
  unsigned h = 2166136261u;
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 16777619u;
  return h % NQ_API__NBUCKETS;
}

void nq_api__buckets_free(nq_api_t *api) {
  for (int i = 0; i < NQ_API__NBUCKETS; i++) {
    for (nq_api__bucket_t *b = api->buckets[i], *n; b; b = n) {
      n = b->next;
      free(b);
    }
    api->buckets[i] = NULL;
  }
  api->nbucket_entries = 0;
}

int nq_api__rate_take(nq_api_t *api, const char *id) {
  double now = nq_api__now(), rate = api->cfg.rate_limit, burst = api->cfg.rate_burst;
  int wait = 0;
  pthread_mutex_lock(&api->rl_mu);
  unsigned h = bucket_hash(id);
  nq_api__bucket_t *b = api->buckets[h];
  while (b && strcmp(b->id, id) != 0) b = b->next;
  if (!b) {
    /* bounded memory: many distinct clients reset the table (they all start with a full bucket again) */
    if (api->nbucket_entries >= 100000) nq_api__buckets_free(api);
    b = calloc(1, sizeof *b);
    if (b) {
      snprintf(b->id, sizeof b->id, "%s", id);
      b->tokens = burst;
      b->last = now;
      b->next = api->buckets[h];
      api->buckets[h] = b;
      api->nbucket_entries++;
    }
  }
  if (b) {
    b->tokens += (now - b->last) * rate;
    if (b->tokens > burst) b->tokens = burst;
    b->last = now;
    if (b->tokens >= 1) b->tokens -= 1;
    else wait = (int)((1 - b->tokens) / rate) + 1;
  }
  pthread_mutex_unlock(&api->rl_mu);
  return wait;
}

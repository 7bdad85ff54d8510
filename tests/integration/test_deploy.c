/* tests/integration/test_deploy.c — checks what can be checked of deploy/ without docker or kubectl (absent on these
 * machines): every YAML parses (libyaml via nq_yaml_to_json); Kubernetes objects carry their required fields,
 * selectors match their pods, probes and Services name real ports, worker termination grace exceeds the task lease
 * and drain grace from the ConfigMap, PodDisruptionBudgets cover every Deployment, KEDA ScaledObjects target real
 * Deployments and watch the streams/topics/groups the queue code really uses; the compose file has the services,
 * the shared object volume and the NVIDIA reservation; Dockerfiles are multi-stage and run as non-root with build
 * packages listed in deploy/install-deps.sh; systemd units are complete; and every `nextq` flag these files pass
 * appears in that subcommand's --help. Runs from the repository root. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/config.h"
#include "queue/queue.h"

static char *slurp(const char *path) {
  FILE *f = fopen(path, "rb");
  cr_assert(f, "cannot open %s (run from the repository root)", path);
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *b = malloc((size_t)n + 1);
  size_t k = fread(b, 1, (size_t)n, f);
  b[k] = 0;
  fclose(f);
  return b;
}

static json_t *load_yaml(const char *path) {
  char *s = slurp(path);
  json_t *j = NULL;
  nq_err_t err = {0};
  cr_assert_eq(nq_yaml_to_json(s, strlen(s), path, &j, &err), 0, "%s", err.msg);
  free(s);
  return j;
}

/* "a.b.c" lookup (array indexes as digits). */
static json_t *at(json_t *j, const char *path) {
  char buf[256];
  snprintf(buf, sizeof buf, "%s", path);
  char *save = NULL;
  for (char *t = strtok_r(buf, ".", &save); t && j; t = strtok_r(NULL, ".", &save))
    j = json_is_array(j) ? json_array_get(j, (size_t)atoi(t)) : json_object_get(j, t);
  return j;
}

static const char *str_at(json_t *j, const char *path) { return json_string_value(at(j, path)); }

static char *help_of(const char *sub) {
  const char *bin = getenv("NQ_BIN") ? getenv("NQ_BIN") : "build/nextq";
  char cmd[512];
  snprintf(cmd, sizeof cmd, "%s %s --help 2>&1", bin, sub);
  FILE *p = popen(cmd, "r");
  cr_assert(p);
  size_t cap = 1 << 16, n = 0;
  char *b = malloc(cap);
  size_t k;
  while ((k = fread(b + n, 1, cap - n - 1, p)) > 0) n += k;
  b[n] = 0;
  pclose(p);
  cr_assert(strstr(b, "usage"), "%s --help printed no usage: %s", sub, b);
  return b;
}

/* Every "--flag" in args (array of strings, args[0] = subcommand) appears in `nextq SUB --help`. */
static void flags_known(json_t *args, const char *where) {
  const char *sub = json_string_value(json_array_get(args, 0));
  cr_assert(sub && (strcmp(sub, "api") == 0 || strcmp(sub, "worker") == 0), "%s: unexpected subcommand", where);
  char *help = help_of(sub);
  size_t i;
  json_t *a;
  json_array_foreach(args, i, a) {
    const char *s = json_string_value(a);
    if (!s || strncmp(s, "--", 2) != 0) continue;
    char flag[64];
    snprintf(flag, sizeof flag, "%.*s", (int)strcspn(s, "="), s);
    cr_assert(strstr(help, flag), "%s: flag %s is not in `nextq %s --help`", where, flag, sub);
  }
  free(help);
}

static json_t *k8s; /* kind -> array of objects */

static void load_k8s(void) {
  k8s = json_object();
  DIR *d = opendir("deploy/k8s");
  cr_assert(d, "deploy/k8s missing");
  struct dirent *e;
  int files = 0;
  while ((e = readdir(d))) {
    size_t l = strlen(e->d_name);
    if (l < 6 || strcmp(e->d_name + l - 5, ".yaml") != 0) continue;
    char p[512];
    snprintf(p, sizeof p, "deploy/k8s/%s", e->d_name);
    json_t *o = load_yaml(p);
    const char *kind = str_at(o, "kind");
    cr_assert(str_at(o, "apiVersion") && kind && str_at(o, "metadata.name"), "%s: apiVersion, kind, metadata.name", p);
    json_object_set_new(o, "_file", json_string(p));
    if (!json_object_get(k8s, kind)) json_object_set_new(k8s, kind, json_array());
    json_array_append_new(json_object_get(k8s, kind), o);
    files++;
  }
  closedir(d);
  cr_assert_geq(files, 8);
}

static json_t *find(const char *kind, const char *name) {
  size_t i;
  json_t *o;
  json_array_foreach(json_object_get(k8s, kind), i, o) if (strcmp(str_at(o, "metadata.name"), name) == 0) return o;
  return NULL;
}

/* every key=value of sel is in labels */
static int selects(json_t *sel, json_t *labels) {
  const char *k;
  json_t *v;
  if (!json_is_object(sel) || json_object_size(sel) == 0) return 0;
  json_object_foreach(sel, k, v) if (!json_equal(v, json_object_get(labels, k))) return 0;
  return 1;
}

static void unload(void) { json_decref(k8s); }

TestSuite(deploy, .init = load_k8s, .fini = unload, .timeout = 60);

Test(deploy, k8s_required_kinds) {
  const char *kinds[] = {"Deployment", "Service", "ConfigMap", "Secret", "PodDisruptionBudget", "ScaledObject", NULL};
  for (int i = 0; kinds[i]; i++) cr_assert(json_array_size(json_object_get(k8s, kinds[i])) > 0, "no %s", kinds[i]);
  cr_assert(find("Deployment", "nextq-api") && find("Deployment", "nextq-worker-cpu") && find("Deployment", "nextq-worker-gpu"));
}

Test(deploy, k8s_deployments) {
  json_t *cm = find("ConfigMap", "nextq-config");
  cr_assert(cm);
  const char *wy = json_string_value(json_object_get(at(cm, "data"), "worker.yaml"));
  cr_assert(wy, "ConfigMap has worker.yaml");
  json_t *wcfg = NULL;
  nq_err_t err = {0};
  cr_assert_eq(nq_yaml_to_json(wy, strlen(wy), "configmap worker.yaml", &wcfg, &err), 0, "%s", err.msg);
  long long lease_ms = json_integer_value(json_object_get(wcfg, "lease_ms"));
  long long grace_ms = json_integer_value(json_object_get(wcfg, "grace_ms"));
  cr_assert(lease_ms > 0 && grace_ms > 0);
  /* the worker config's keys are settings the worker knows */
  char *help = help_of("worker");
  const char *k;
  json_t *v;
  json_object_foreach(wcfg, k, v) {
    char want[80];
    snprintf(want, sizeof want, "%s%s", k, json_is_object(v) && strcmp(k, "stage_config") ? "." : "");
    cr_assert(strstr(help, want), "worker.yaml key %s is not a worker setting", want);
  }
  free(help);

  size_t i;
  json_t *d;
  json_array_foreach(json_object_get(k8s, "Deployment"), i, d) {
    const char *f = str_at(d, "_file");
    cr_assert(selects(at(d, "spec.selector.matchLabels"), at(d, "spec.template.metadata.labels")), "%s: selector", f);
    json_t *c = at(d, "spec.template.spec.containers.0");
    cr_assert(c && str_at(c, "image"), "%s: container image", f);
    cr_assert(json_is_true(at(d, "spec.template.spec.securityContext.runAsNonRoot")), "%s: runAsNonRoot", f);
    flags_known(json_object_get(c, "args"), f);
    /* probes use named ports the container declares */
    const char *probes[] = {"readinessProbe.httpGet.port", "livenessProbe.httpGet.port"};
    for (int p = 0; p < 2; p++) {
      const char *port = str_at(c, probes[p]);
      if (!port) continue;
      int found = 0;
      size_t j;
      json_t *cp;
      json_array_foreach(json_object_get(c, "ports"), j, cp) found |= strcmp(str_at(cp, "name"), port) == 0;
      cr_assert(found, "%s: probe port %s not declared", f, port);
    }
    /* a PodDisruptionBudget covers it */
    int pdb = 0;
    size_t j;
    json_t *b;
    json_array_foreach(json_object_get(k8s, "PodDisruptionBudget"), j, b) pdb |= selects(at(b, "spec.selector.matchLabels"), at(d, "spec.template.metadata.labels"));
    cr_assert(pdb, "%s: no PodDisruptionBudget selects it", f);
    if (strstr(str_at(d, "metadata.name"), "worker")) {
      long long tg = json_integer_value(at(d, "spec.template.spec.terminationGracePeriodSeconds"));
      cr_assert_gt(tg * 1000, lease_ms, "%s: terminationGracePeriodSeconds %lld <= lease", f, tg);
      cr_assert_gt(tg * 1000, grace_ms, "%s: terminationGracePeriodSeconds %lld <= drain grace", f, tg);
    }
  }
  json_t *gpu = find("Deployment", "nextq-worker-gpu");
  cr_assert(json_integer_value(json_object_get(at(gpu, "spec.template.spec.containers.0.resources.limits"), "nvidia.com/gpu")) >= 1,
            "gpu workers request a GPU");
  cr_assert(strstr(str_at(gpu, "spec.template.spec.containers.0.image"), "cuda"));
  json_decref(wcfg);

  json_t *svc = find("Service", "nextq-api");
  cr_assert(svc && selects(at(svc, "spec.selector"), at(find("Deployment", "nextq-api"), "spec.template.metadata.labels")),
            "Service selects the api pods");
}

Test(deploy, keda_scaledobjects_watch_real_queues) {
  int redis = 0, kafka = 0;
  size_t i;
  json_t *so;
  json_array_foreach(json_object_get(k8s, "ScaledObject"), i, so) {
    const char *f = str_at(so, "_file");
    cr_assert(find("Deployment", str_at(so, "spec.scaleTargetRef.name")), "%s: scaleTargetRef names no Deployment", f);
    size_t j;
    json_t *t;
    json_array_foreach(at(so, "spec.triggers"), j, t) {
      const char *type = str_at(t, "type");
      json_t *m = json_object_get(t, "metadata");
      if (strcmp(type, "redis-streams") == 0) {
        const char *stream = str_at(m, "stream"), *group = str_at(m, "consumerGroup");
        cr_assert(stream && group && str_at(m, "address"), "%s: redis-streams needs address, stream, consumerGroup", f);
        cr_assert(str_at(m, "lagCount") || str_at(m, "pendingEntriesCount"), "%s: lagCount or pendingEntriesCount", f);
        /* the names the queue code uses: "nq:" + nq_queue_topic, group nq_queue_group */
        char stage[64], dev[16], topic[160], want_group[128];
        cr_assert_eq(sscanf(stream, "nq:tasks:%63[^:]:%15s", stage, dev), 2, "%s: stream %s", f, stream);
        nq_queue_topic(topic, sizeof topic, stage, dev);
        nq_queue_group(want_group, sizeof want_group, stage);
        cr_assert_str_eq(stream + 3, topic);
        cr_assert_str_eq(group, want_group);
        redis += str_at(m, "lagCount") != NULL;
      } else if (strcmp(type, "kafka") == 0) {
        const char *topic = str_at(m, "topic"), *group = str_at(m, "consumerGroup");
        cr_assert(topic && group && str_at(m, "bootstrapServers") && str_at(m, "lagThreshold"),
                  "%s: kafka needs bootstrapServers, consumerGroup, topic, lagThreshold", f);
        char stage[64], dev[16], want_group[128];
        cr_assert_eq(sscanf(topic, "nq.tasks.%63[^.].%15s", stage, dev), 2, "%s: topic %s", f, topic);
        nq_queue_group(want_group, sizeof want_group, stage);
        cr_assert_str_eq(group, want_group);
        kafka++;
      } else {
        cr_assert_fail("%s: unexpected trigger %s", f, type);
      }
    }
  }
  cr_assert(redis > 0, "a ScaledObject on Redis Streams consumer-group lag");
  cr_assert(kafka > 0, "a ScaledObject on Kafka lag");
}

Test(deploy, compose) {
  json_t *c = load_yaml("deploy/docker-compose.yml");
  json_t *s = json_object_get(c, "services");
  const char *need[] = {"redis", "kafka", "api", "worker-cpu", "worker-gpu", NULL};
  for (int i = 0; need[i]; i++) cr_assert(json_object_get(s, need[i]), "service %s", need[i]);
  json_t *dev = at(s, "worker-gpu.deploy.resources.reservations.devices.0");
  cr_assert_str_eq(str_at(dev, "driver"), "nvidia");
  int gpu = 0;
  size_t i;
  json_t *v;
  json_array_foreach(json_object_get(dev, "capabilities"), i, v) gpu |= strcmp(json_string_value(v), "gpu") == 0;
  cr_assert(gpu, "gpu capability reserved");
  cr_assert(at(c, "volumes.objects"), "a named volume for the object store");
  const char *users[] = {"api", "worker-cpu", "worker-gpu", NULL};
  for (int u = 0; users[u]; u++) {
    int mounted = 0;
    json_array_foreach(at(s, users[u])->type == JSON_OBJECT ? json_object_get(json_object_get(s, users[u]), "volumes") : NULL, i, v)
      mounted |= strncmp(json_string_value(v), "objects:", 8) == 0;
    cr_assert(mounted, "%s mounts the shared object store", users[u]);
    flags_known(json_object_get(json_object_get(s, users[u]), "command"), users[u]);
  }
  json_decref(c);
}

static void dockerfile(const char *path, const char *base) {
  char *s = slurp(path), *deps = slurp("deploy/install-deps.sh");
  int froms = 0, user_ok = 0, copy_from = 0;
  char *save = NULL;
  int stage = 0;
  for (char *l = strtok_r(s, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
    while (*l == ' ') l++;
    if (strncmp(l, "FROM ", 5) == 0) {
      froms++;
      stage = froms;
      if (froms == 1) cr_assert(strstr(l, base), "%s: first FROM is %s", path, base);
    }
    if (strncmp(l, "USER ", 5) == 0) user_ok = strncmp(l + 5, "root", 4) != 0 && strncmp(l + 5, "0", 1) != 0;
    if (strncmp(l, "COPY --from=", 12) == 0) copy_from++;
    /* every -dev package of the build stage is one install-deps.sh installs too (Ubuntu-only names excepted) */
    if (stage == 1 && strncmp(l, "FROM ", 5) != 0) {
      char *tok = l, *end;
      while ((tok = strstr(tok, "-dev")) && (end = tok + 4)) {
        char *st = tok;
        while (st > l && st[-1] != ' ') st--;
        char pkg[80];
        snprintf(pkg, sizeof pkg, "%.*s", (int)(end - st), st);
        if (strcmp(pkg, "libjpeg-turbo8-dev") != 0) cr_assert(strstr(deps, pkg), "%s: %s not in install-deps.sh", path, pkg);
        tok = end;
      }
    }
  }
  cr_assert_geq(froms, 2, "%s: multi-stage", path);
  cr_assert(user_ok, "%s: runs as a non-root USER", path);
  cr_assert(copy_from >= 1, "%s: copies the binary from the build stage", path);
  free(s);
  free(deps);
}

Test(deploy, dockerfiles) {
  dockerfile("deploy/Dockerfile.cpu", "debian:12");
  dockerfile("deploy/Dockerfile.cuda", "nvidia/cuda:");
}

static void unit(const char *path, const char *sub) {
  char *s = slurp(path);
  cr_assert(strstr(s, "\n[Unit]\n") && strstr(s, "\n[Service]\n") && strstr(s, "\n[Install]\n"), "%s: sections", path);
  cr_assert(strstr(s, "\nWantedBy="), "%s: WantedBy", path);
  char *u = strstr(s, "\nUser=");
  cr_assert(u && strncmp(u + 6, "root", 4) != 0, "%s: non-root User=", path);
  char *e = strstr(s, "\nExecStart=");
  cr_assert(e, "%s: ExecStart", path);
  char line[512];
  snprintf(line, sizeof line, "%.*s", (int)strcspn(e + 11, "\n"), e + 11);
  char want[64];
  snprintf(want, sizeof want, "/usr/local/bin/nextq %s ", sub);
  cr_assert(strncmp(line, want, strlen(want)) == 0, "%s: ExecStart runs nextq %s: %s", path, sub, line);
  json_t *args = json_array();
  char *save = NULL;
  for (char *t = strtok_r(line + strlen("/usr/local/bin/nextq "), " ", &save); t; t = strtok_r(NULL, " ", &save))
    json_array_append_new(args, json_string(t));
  flags_known(args, path);
  json_decref(args);
  cr_assert(strstr(s, "\nKillSignal=SIGTERM"), "%s: SIGTERM drains", path);
  free(s);
}

Test(deploy, systemd_units) {
  unit("deploy/systemd/nextq-api.service", "api");
  unit("deploy/systemd/nextq-worker@.service", "worker");
}

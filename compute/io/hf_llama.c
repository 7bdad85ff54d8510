#include "compute/io/hf_llama.h"

#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

static int nq_hf__int(json_t *cfg, const char *key, int def, int *out, const char *path, nq_err_t *err) {
  json_t *v = json_object_get(cfg, key);
  if (!v || json_is_null(v)) {
    if (def < 0) return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: \"%s\" missing", path, key);
    *out = def;
    return 0;
  }
  if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > (1 << 24))
    return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: \"%s\" is not a sane integer", path, key);
  *out = (int)json_integer_value(v);
  return 0;
}

int nq_hf_llama_open(const char *dir, nq_hf_llama_t *h, nq_err_t *err) {
  memset(h, 0, sizeof(*h));
  snprintf(h->dir, sizeof h->dir, "%s", dir);
  char path[4200];
  snprintf(path, sizeof path, "%s/config.json", dir);
  json_error_t je;
  json_t *cfg = json_load_file(path, 0, &je);
  if (!cfg || !json_is_object(cfg)) {
    json_decref(cfg);
    return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: cannot parse (line %d: %s)", path, je.line, je.text);
  }
  int rc = 0;
  if (!rc) rc = nq_hf__int(cfg, "hidden_size", -1, &h->dim, path, err);
  if (!rc) rc = nq_hf__int(cfg, "intermediate_size", -1, &h->hidden_dim, path, err);
  if (!rc) rc = nq_hf__int(cfg, "num_hidden_layers", -1, &h->n_layers, path, err);
  if (!rc) rc = nq_hf__int(cfg, "num_attention_heads", -1, &h->n_heads, path, err);
  if (!rc) rc = nq_hf__int(cfg, "num_key_value_heads", h->n_heads, &h->n_kv_heads, path, err);
  if (!rc) rc = nq_hf__int(cfg, "vocab_size", -1, &h->vocab_size, path, err);
  if (!rc) rc = nq_hf__int(cfg, "max_position_embeddings", 2048, &h->max_pos, path, err);
  if (!rc) rc = nq_hf__int(cfg, "bos_token_id", 1, &h->bos_id, path, err);
  if (!rc) rc = nq_hf__int(cfg, "eos_token_id", 2, &h->eos_id, path, err);
  json_t *v = json_object_get(cfg, "rms_norm_eps");
  h->rms_eps = json_is_number(v) ? (float)json_number_value(v) : 1e-6f;
  v = json_object_get(cfg, "rope_theta");
  h->rope_theta = json_is_number(v) ? (float)json_number_value(v) : 10000.0f;
  v = json_object_get(cfg, "tie_word_embeddings");
  h->tie_embeddings = json_is_true(v);
  v = json_object_get(cfg, "model_type");
  if (!rc && json_is_string(v) && strcmp(json_string_value(v), "llama") != 0)
    rc = nq_err_set(err, NQ_EUNSUPPORTED, NQ_ERR_FATAL, "%s: model_type \"%s\" is not llama", path, json_string_value(v));
  json_decref(cfg);
  if (!rc && (h->dim == 0 || h->n_heads == 0 || h->dim % h->n_heads || h->n_kv_heads == 0 ||
              h->n_heads % h->n_kv_heads || (h->dim / h->n_heads) % 2 || h->n_layers == 0 || h->vocab_size == 0))
    rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: inconsistent dims (hidden %d, heads %d, kv heads %d)", path,
                    h->dim, h->n_heads, h->n_kv_heads);
  if (rc) return rc;
  struct stat st;
  snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
  if (stat(path, &st) != 0) snprintf(path, sizeof path, "%s/model.safetensors", dir);
  rc = nq_st_open(path, &h->st, err);
  return rc;
}

void nq_hf_llama_close(nq_hf_llama_t *h) {
  if (h && h->st) nq_st_close(h->st);
  if (h) h->st = NULL;
}

const nq_st_tensor_t *nq_hf_llama_tensor(const nq_hf_llama_t *h, int layer, const char *fmt, int ndim,
                                         const int64_t *shape, nq_err_t *err) {
  char name[256];
  snprintf(name, sizeof name, fmt, layer);
  const nq_st_tensor_t *t = NULL;
  /* dtype is checked by the caller (F32/BF16/F16 all fine): match any by trying each */
  const nq_st_tensor_t *any = nq_st_find(h->st, name);
  if (!any) {
    nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: tensor %s missing", h->dir, name);
    return NULL;
  }
  if (nq_st_expect(h->st, name, any->dtype, ndim, shape, &t, err) < 0) return NULL;
  if (t->dtype != NQ_DT_F32 && t->dtype != NQ_DT_BF16 && t->dtype != NQ_DT_F16) {
    nq_err_set(err, NQ_EUNSUPPORTED, NQ_ERR_FATAL, "%s: tensor %s has dtype %s", h->dir, name, nq_dtype_name(t->dtype));
    return NULL;
  }
  return t;
}

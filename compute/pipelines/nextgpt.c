/* NExT-GPT assembly: model YAML, loading (Vicuna + delta + tokenizer), prompt splicing, generation, signals. */
#include "compute/pipelines/nextgpt.h"

#include <libgen.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "compute/models/sampling.h"

static const char *const nq_ng__names[NQ_NG_N_MODALITIES] = {"image", "video", "audio"};
static const char *const nq_ng__tag[NQ_NG_N_MODALITIES] = {"Image", "Video", "Audio"};
static const char *const nq_ng__sigfmt[NQ_NG_N_MODALITIES] = {"[IMG%d]", "[VID%d]", "[AUD%d]"};
static const char *const nq_ng__proj_prefix[NQ_NG_N_MODALITIES] = {
    "gen_text_hidden_fcs.0.", "gen_text_hidden_fcs_video.0.", "gen_text_hidden_fcs_audio.0."};

const char *nq_nextgpt_modality_name(int m) { return m >= 0 && m < NQ_NG_N_MODALITIES ? nq_ng__names[m] : NULL; }

/* ---------------------------------------------------------------------------------------------------------------
 * config
 * ------------------------------------------------------------------------------------------------------------- */

#define OFF(f) offsetof(nq_nextgpt_config_t, f)
#define NOB 1, 0 /* no numeric bounds */

const nq_prop_t nq_nextgpt_config_props[] = {
    {"vicuna_ckpt_path", NQ_PROP_STRING, OFF(vicuna_ckpt_path), NOB, NULL, NULL, NQ_PROP_REQUIRED,
     "HF LLaMA directory of Vicuna-7B v0 (config.json + model.safetensors); relative to this file"},
    {"tokenizer_path", NQ_PROP_STRING, OFF(tokenizer_path), NOB, NULL, NULL, 0,
     "tokenizer.model or a directory with it (+ added_tokens.json); default vicuna_ckpt_path"},
    {"delta_ckpt_path", NQ_PROP_STRING, OFF(delta_ckpt_path), NOB, NULL, NULL, 0,
     "NExT-GPT delta checkpoint (pytorch_model.pt or .safetensors): llama_proj, projectors, LoRA, embed/lm_head"},
    {"imagebind_ckpt_path", NQ_PROP_STRING, OFF(imagebind_ckpt_path), NOB, NULL, NULL, 0,
     "ImageBind checkpoint (imagebind_huge.pth) for the encode stage"},
    {"image_diffusion", NQ_PROP_STRING, OFF(image_diffusion), NOB, NULL, NULL, 0, "image decoder dir (SD v1-5)"},
    {"video_diffusion", NQ_PROP_STRING, OFF(video_diffusion), NOB, NULL, NULL, 0, "video decoder dir (ZeroScope)"},
    {"audio_diffusion", NQ_PROP_STRING, OFF(audio_diffusion), NOB, NULL, NULL, 0, "audio decoder dir (AudioLDM)"},
    {"vicuna_version", NQ_PROP_STRING, OFF(vicuna_version), NOB, "7b_v0", NULL, 0, "informational"},
    {"imagebind_version", NQ_PROP_STRING, OFF(imagebind_version), NOB, "huge", NULL, 0, "informational"},
    {"n_img_tokens", NQ_PROP_INT, OFF(n_img_tokens), 1, NQ_NG_MAX_SIGNAL, "4", NULL, 0, "[IMGi] signal tokens"},
    {"num_gen_img_tokens", NQ_PROP_INT, OFF(num_gen_img_tokens), 1, NQ_NG_MAX_SIGNAL, "4", NULL, 0,
     "must equal n_img_tokens"},
    {"text_emb_to_img_layers", NQ_PROP_JSON, OFF(text_emb_to_img_layers), NOB, "[-1]", NULL, 0,
     "LLM layers feeding the image projector; only [-1] (final RMSNorm output)"},
    {"text_fc_to_img_mode", NQ_PROP_ENUM, OFF(text_fc_to_img_mode), NOB, "transformer", "transformer", 0,
     "image projector mode"},
    {"n_video_tokens", NQ_PROP_INT, OFF(n_video_tokens), 1, NQ_NG_MAX_SIGNAL, "24", NULL, 0, "[VIDi] signal tokens"},
    {"num_gen_video_tokens", NQ_PROP_INT, OFF(num_gen_video_tokens), 1, NQ_NG_MAX_SIGNAL, "24", NULL, 0,
     "must equal n_video_tokens"},
    {"text_emb_to_video_layers", NQ_PROP_JSON, OFF(text_emb_to_video_layers), NOB, "[-1]", NULL, 0, "only [-1]"},
    {"text_fc_to_video_mode", NQ_PROP_ENUM, OFF(text_fc_to_video_mode), NOB, "transformer", "transformer", 0,
     "video projector mode"},
    {"n_audio_tokens", NQ_PROP_INT, OFF(n_audio_tokens), 1, NQ_NG_MAX_SIGNAL, "8", NULL, 0, "[AUDi] signal tokens"},
    {"num_gen_audio_tokens", NQ_PROP_INT, OFF(num_gen_audio_tokens), 1, NQ_NG_MAX_SIGNAL, "8", NULL, 0,
     "must equal n_audio_tokens"},
    {"text_emb_to_audio_layers", NQ_PROP_JSON, OFF(text_emb_to_audio_layers), NOB, "[-1]", NULL, 0, "only [-1]"},
    {"text_fc_to_audio_mode", NQ_PROP_ENUM, OFF(text_fc_to_audio_mode), NOB, "transformer", "transformer", 0,
     "audio projector mode"},
    {"num_clip_tokens", NQ_PROP_INT, OFF(num_clip_tokens), 1, 4096, "77", NULL, 0, "projector queries (image/video)"},
    {"gen_emb_dim", NQ_PROP_INT, OFF(gen_emb_dim), 1, 1 << 16, "768", NULL, 0, "image projector width (informational)"},
    {"max_length", NQ_PROP_INT, OFF(max_length), 1, 1 << 20, "512", NULL, 0, "training max length (informational)"},
    {"seed", NQ_PROP_INT, OFF(seed), 0, 9.2e18, "13", NULL, 0, "sampling seed"},
    {"offset_minus_one", NQ_PROP_BOOL, OFF(offset_minus_one), NOB, "true", NULL, 0,
     "gather signal states at gen_idx-1 (legacy v0 inference, what the released checkpoint was used with)"},
    {"projector.nhead", NQ_PROP_INT, OFF(proj_nhead), 1, 1024, "4", NULL, 0, "output projector attention heads"},
    {"projector.layer_norm_eps", NQ_PROP_DOUBLE, OFF(proj_eps), 0, 1, "1e-5", NULL, 0, "projector LayerNorm eps"},
    {"lora.alpha", NQ_PROP_DOUBLE, OFF(lora_alpha), 0, 1e6, "32", NULL, 0, "LoRA alpha (scale = alpha / r)"},
    {"generation.max_tgt_len", NQ_PROP_INT, OFF(max_tgt_len), 1, 1 << 16, "246", NULL, 0, "max new tokens"},
    {"generation.top_p", NQ_PROP_DOUBLE, OFF(top_p), 0, 1, "0.01", NULL, 0, "nucleus sampling"},
    {"generation.temperature", NQ_PROP_DOUBLE, OFF(temperature), 0, 100, "1.0", NULL, 0, "0 = greedy"},
    {"generation.stops_id", NQ_PROP_JSON, OFF(stops_id), NOB, "[[835], [2277, 29937]]", NULL, 0,
     "stop id sequences (\"###\")"},
    {"compute.dtype", NQ_PROP_ENUM, OFF(dtype), NOB, "f32", "f32|bf16|f16", 0, "linear weight dtype"},
    {"compute.backends", NQ_PROP_STRING, OFF(backends), NOB, "auto", NULL, 0, "compute backends (nq_exec_new spec)"},
    {0},
};

int nq_nextgpt_config_init(nq_nextgpt_config_t *c, nq_err_t *err) {
  memset(c, 0, sizeof(*c));
  return nq_config_defaults(nq_nextgpt_config_props, c, err);
}

void nq_nextgpt_config_deinit(nq_nextgpt_config_t *c) {
  if (!c) return;
  nq_config_deinit(nq_nextgpt_config_props, c);
  free(c->base_dir);
  c->base_dir = NULL;
}

static int nq_ng__resolve(char **p, const char *base, nq_err_t *err) {
  if (!*p || !**p || (*p)[0] == '/' || !base) return 0;
  size_t n = strlen(base) + strlen(*p) + 2;
  char *r = malloc(n);
  if (!r) return nq_err_set(err, NQ_ENOMEM, 0, "out of memory");
  snprintf(r, n, "%s/%s", base, *p);
  free(*p);
  *p = r;
  return 0;
}

static int nq_ng__check_layers(const json_t *j, const char *key, const char *where, nq_err_t *err) {
  if (!json_is_array(j) || json_array_size(j) != 1 || !json_is_integer(json_array_get(j, 0)) ||
      json_integer_value(json_array_get(j, 0)) != -1)
    return nq_err_set(err, NQ_ECONFIG, NQ_ERR_FATAL, "%s: %s: only [-1] (the final-norm hidden state) is supported",
                      where, key);
  return 0;
}

static int nq_ng__config_check(nq_nextgpt_config_t *c, const char *where, nq_err_t *err) {
  int rc = 0;
  if (c->num_gen_img_tokens != c->n_img_tokens || c->num_gen_video_tokens != c->n_video_tokens ||
      c->num_gen_audio_tokens != c->n_audio_tokens)
    return nq_err_set(err, NQ_ECONFIG, NQ_ERR_FATAL, "%s: num_gen_*_tokens must equal n_*_tokens", where);
  if (!rc) rc = nq_ng__check_layers(c->text_emb_to_img_layers, "text_emb_to_img_layers", where, err);
  if (!rc) rc = nq_ng__check_layers(c->text_emb_to_video_layers, "text_emb_to_video_layers", where, err);
  if (!rc) rc = nq_ng__check_layers(c->text_emb_to_audio_layers, "text_emb_to_audio_layers", where, err);
  if (rc) return rc;
  size_t i, j;
  json_t *s, *v;
  if (!json_is_array(c->stops_id) || json_array_size(c->stops_id) > NQ_NG_MAX_STOPS)
    return nq_err_set(err, NQ_ECONFIG, NQ_ERR_FATAL, "%s: generation.stops_id: a list of at most %d id lists", where,
                      NQ_NG_MAX_STOPS);
  json_array_foreach(c->stops_id, i, s) {
    if (!json_is_array(s) || json_array_size(s) < 1 || json_array_size(s) > 4)
      return nq_err_set(err, NQ_ECONFIG, NQ_ERR_FATAL, "%s: generation.stops_id[%zu]: a list of 1..4 ids", where, i);
    json_array_foreach(s, j, v) if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > (1 << 24))
      return nq_err_set(err, NQ_ECONFIG, NQ_ERR_FATAL, "%s: generation.stops_id[%zu][%zu]: not a token id", where, i, j);
  }
  return 0;
}

int nq_nextgpt_config_load(const char *path, nq_nextgpt_config_t *c, nq_err_t *err) {
  memset(c, 0, sizeof(*c));
  int rc = nq_config_load_file(path, nq_nextgpt_config_props, c, "NQ_NEXTGPT_", err);
  if (!rc) {
    char *dup = strdup(path);
    c->base_dir = dup ? strdup(dirname(dup)) : NULL;
    free(dup);
    if (!c->base_dir) rc = nq_err_set(err, NQ_ENOMEM, 0, "out of memory");
  }
  char **paths[] = {&c->vicuna_ckpt_path, &c->tokenizer_path, &c->delta_ckpt_path, &c->imagebind_ckpt_path,
                    &c->image_diffusion, &c->video_diffusion, &c->audio_diffusion};
  for (size_t i = 0; !rc && i < sizeof paths / sizeof *paths; i++) rc = nq_ng__resolve(paths[i], c->base_dir, err);
  if (!rc) rc = nq_ng__config_check(c, path, err);
  if (rc) nq_nextgpt_config_deinit(c);
  return rc;
}

static int nq_ng__config_copy(nq_nextgpt_config_t *dst, const nq_nextgpt_config_t *src, nq_err_t *err) {
  *dst = *src;
  int bad = 0;
  for (const nq_prop_t *p = nq_nextgpt_config_props; p->name; p++) {
    void *f = (char *)dst + p->offset;
    if (p->type == NQ_PROP_STRING || p->type == NQ_PROP_ENUM) {
      char **s = f;
      if (*s && !(*s = strdup(*s))) bad = 1;
    } else if (p->type == NQ_PROP_JSON || p->type == NQ_PROP_STRLIST) {
      json_t **j = f;
      if (*j) *j = json_deep_copy(*j);
    }
  }
  if (dst->base_dir && !(dst->base_dir = strdup(dst->base_dir))) bad = 1;
  return bad ? nq_err_set(err, NQ_ENOMEM, 0, "out of memory") : 0;
}

/* ---------------------------------------------------------------------------------------------------------------
 * loading
 * ------------------------------------------------------------------------------------------------------------- */

/* The 38 added tokens in NExT-GPT's add order, for the configured counts. */
static int nq_ng__added_names(const nq_nextgpt_config_t *c, char names[][16], int cap) {
  int n = 0;
  snprintf(names[n++], 16, "<Img>");
  snprintf(names[n++], 16, "</Img>");
  long long cnt[3] = {c->n_img_tokens, c->n_video_tokens, c->n_audio_tokens};
  for (int m = 0; m < NQ_NG_N_MODALITIES; m++)
    for (int i = 0; i < cnt[m] && n < cap; i++) snprintf(names[n++], 16, nq_ng__sigfmt[m], i);
  return n;
}

/* Checks ids against a saved added_tokens.json (the delta's tokenizer), when present. */
static int nq_ng__check_added_json(const nq_nextgpt_t *ng, const char *path, char names[][16], int n, nq_err_t *err) {
  json_error_t je;
  json_t *j = json_load_file(path, 0, &je);
  if (!j || !json_is_object(j)) {
    json_decref(j);
    return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: cannot parse (line %d: %s)", path, je.line, je.text);
  }
  int rc = 0;
  for (int i = 0; i < n && !rc; i++) {
    json_t *v = json_object_get(j, names[i]);
    int mine = nq_sp_piece_to_id(ng->tok, names[i]);
    if (!json_is_integer(v) || json_integer_value(v) != mine)
      rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "%s: %s has id %lld, the tokenizer gives %d", path, names[i],
                      json_is_integer(v) ? (long long)json_integer_value(v) : -1LL, mine);
  }
  json_decref(j);
  return rc;
}

static int nq_ng__tokenizer(nq_nextgpt_t *ng, nq_err_t *err) {
  const nq_nextgpt_config_t *c = &ng->cfg;
  const char *tp = c->tokenizer_path && *c->tokenizer_path ? c->tokenizer_path : c->vicuna_ckpt_path;
  int rc = nq_sp_load(tp, 0, &ng->tok, err);
  if (rc < 0) return rc;
  char names[2 + 3 * NQ_NG_MAX_SIGNAL][16];
  int n = nq_ng__added_names(c, names, (int)(sizeof names / sizeof *names));
  int V = nq_sp_vocab_size(ng->tok), base = V;
  for (int i = 0; i < V; i++)
    if (nq_sp_type(ng->tok, i) == NQ_SP_ADDED) {
      base = i;
      break;
    }
  if (base == V) { /* a plain LLaMA tokenizer: add NExT-GPT's tokens as its _add_*_token methods do */
    const char *ptr[2 + 3 * NQ_NG_MAX_SIGNAL];
    for (int i = 0; i < n; i++) ptr[i] = names[i];
    if ((rc = nq_sp_add_tokens(ng->tok, ptr, n, err)) < 0) return rc;
  }
  ng->base_vocab = base;
  for (int i = 0; i < n; i++) {
    int id = nq_sp_piece_to_id(ng->tok, names[i]);
    if (id != base + i)
      return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL,
                        "%s: added token %s has id %d, NExT-GPT's add order gives %d (base vocab %d)", tp, names[i], id,
                        base + i, base);
  }
  ng->img_open = base, ng->img_close = base + 1;
  long long cnt[3] = {c->n_img_tokens, c->n_video_tokens, c->n_audio_tokens};
  for (int m = 0, k = 2; m < NQ_NG_N_MODALITIES; m++) {
    ng->n_sig[m] = (int)cnt[m];
    for (int i = 0; i < cnt[m]; i++) ng->sig_ids[m][i] = base + k++;
  }
  if (c->delta_ckpt_path && *c->delta_ckpt_path) { /* the delta's saved tokenizer, when it sits beside it */
    char *dup = strdup(c->delta_ckpt_path), p[4200];
    struct stat st;
    if (!dup) return nq_err_set(err, NQ_ENOMEM, 0, "out of memory");
    if (stat(c->delta_ckpt_path, &st) == 0 && S_ISDIR(st.st_mode)) snprintf(p, sizeof p, "%s/added_tokens.json", dup);
    else snprintf(p, sizeof p, "%s/added_tokens.json", dirname(dup));
    free(dup);
    if (stat(p, &st) == 0 && (rc = nq_ng__check_added_json(ng, p, names, n, err)) < 0) return rc;
  }
  return 0;
}

static const nq_ckpt_tensor_t *nq_ng__find_any(const nq_ckpt_t *ck, const char *const *names, int n) {
  for (int i = 0; i < n; i++) {
    const nq_ckpt_tensor_t *t = nq_ckpt_find(ck, names[i]);
    if (t) return t;
  }
  return NULL;
}

/* Owned F32 copy of a checkpoint tensor (any float dtype). */
static int nq_ng__f32(const nq_ckpt_tensor_t *t, nq_tensor_t *out, nq_err_t *err) {
  int64_t shape[NQ_MAX_DIMS];
  if (t->ndim > NQ_MAX_DIMS) return nq_err_set(err, NQ_ESHAPE, NQ_ERR_FATAL, "%s: too many dims", t->name);
  for (int i = 0; i < t->ndim; i++) shape[i] = t->shape[i];
  int rc = nq_tensor_init(out, NQ_DT_F32, t->ndim, shape, err);
  if (rc < 0) return rc;
  if (nq_dtype_to_f32(t->dtype, t->data, out->data, (size_t)nq_st_numel(t)) != 0) {
    nq_tensor_deinit(out);
    return nq_err_set(err, NQ_EUNSUPPORTED, NQ_ERR_FATAL, "%s: dtype %s", t->name, nq_dtype_name(t->dtype));
  }
  return 0;
}

static bool nq_ng__float_dt(nq_dtype_t d) { return d == NQ_DT_F32 || d == NQ_DT_BF16 || d == NQ_DT_F16; }

/* embed_tokens / lm_head rows from the delta ([32038, 4096] in the released checkpoint, issue #47). */
static int nq_ng__delta_vocab(nq_nextgpt_t *ng, nq_err_t *err) {
  nq_llama_model_t *m = ng->llm;
  static const char *const emb_names[] = {"llama_model.base_model.model.model.embed_tokens.weight",
                                          "llama_model.model.embed_tokens.weight"};
  static const char *const head_names[] = {"llama_model.base_model.model.lm_head.weight", "llama_model.lm_head.weight"};
  const nq_ckpt_tensor_t *e = nq_ng__find_any(ng->delta, emb_names, 2), *h = nq_ng__find_any(ng->delta, head_names, 2);
  const int64_t D = m->cfg.dim;
  if (e) {
    if (e->ndim != 2 || e->shape[1] != D || e->shape[0] < 1 || e->shape[0] > (1 << 24) || !nq_ng__float_dt(e->dtype))
      return nq_err_set(err, NQ_ESHAPE, NQ_ERR_FATAL, "%s: %s must be [V, %lld] float", ng->cfg.delta_ckpt_path, e->name,
                        (long long)D);
    bool tied = m->lm_head.w.data == m->tok_emb.data;
    nq_tensor_deinit(&m->tok_emb);
    nq_tensor_init_borrowed(&m->tok_emb, e->dtype, 2, NQ_SHAPE(e->shape[0], D), (void *)e->data);
    m->cfg.vocab_size = (int)e->shape[0];
    if (tied && !h) {
      nq_linear_deinit(&m->lm_head);
      nq_linear_init(&m->lm_head, &m->tok_emb, NULL);
    }
  }
  if (h) {
    if (h->ndim != 2 || h->shape[1] != D || h->shape[0] != m->cfg.vocab_size || !nq_ng__float_dt(h->dtype))
      return nq_err_set(err, NQ_ESHAPE, NQ_ERR_FATAL, "%s: %s must be [%d, %lld] float", ng->cfg.delta_ckpt_path,
                        h->name, m->cfg.vocab_size, (long long)D);
    nq_tensor_t w;
    nq_tensor_init_borrowed(&w, h->dtype, 2, NQ_SHAPE(h->shape[0], D), (void *)h->data);
    nq_linear_deinit(&m->lm_head);
    nq_linear_init(&m->lm_head, &w, NULL);
  }
  if (m->lm_head.w.ne[0] != m->cfg.vocab_size)
    return nq_err_set(err, NQ_ESHAPE, NQ_ERR_FATAL, "%s: embed_tokens has %d rows but lm_head %lld",
                      ng->cfg.delta_ckpt_path, m->cfg.vocab_size, (long long)m->lm_head.w.ne[0]);
  return 0;
}

/* peft LoRA on q/k/v/o from the delta (unmerged; B pre-scaled by alpha/r). */
static int nq_ng__delta_lora(nq_nextgpt_t *ng, nq_err_t *err) {
  nq_llama_model_t *m = ng->llm;
  static const char *const proj[4] = {"q_proj", "k_proj", "v_proj", "o_proj"};
  int rc = 0;
  for (int l = 0; l < m->cfg.n_layers && !rc; l++) {
    nq_llama_layer_t *L = &m->layers[l];
    nq_linear_t *base[4] = {&L->wq, &L->wk, &L->wv, &L->wo};
    for (int k = 0; k < 4 && !rc; k++) {
      char na[2][256], nb[2][256];
      for (int v = 0; v < 2; v++) {
        snprintf(na[v], sizeof na[v], "llama_model.base_model.model.model.layers.%d.self_attn.%s.lora_A%s.weight", l,
                 proj[k], v ? ".default" : "");
        snprintf(nb[v], sizeof nb[v], "llama_model.base_model.model.model.layers.%d.self_attn.%s.lora_B%s.weight", l,
                 proj[k], v ? ".default" : "");
      }
      const char *an[2] = {na[0], na[1]}, *bn[2] = {nb[0], nb[1]};
      const nq_ckpt_tensor_t *a = nq_ng__find_any(ng->delta, an, 2), *b = nq_ng__find_any(ng->delta, bn, 2);
      if (!a && !b) continue;
      int64_t out_f = base[k]->w.ne[0], in_f = base[k]->w.ne[1];
      if (!a || !b || a->ndim != 2 || b->ndim != 2 || a->shape[1] != in_f || b->shape[0] != out_f ||
          a->shape[0] != b->shape[1] || a->shape[0] < 1 || a->shape[0] > 4096)
        return nq_err_set(err, NQ_ESHAPE, NQ_ERR_FATAL, "%s: LoRA of layer %d %s: A/B missing or shapes wrong",
                          ng->cfg.delta_ckpt_path, l, proj[k]);
      nq_tensor_t ta, tb;
      if ((rc = nq_ng__f32(a, &ta, err)) < 0) break;
      if ((rc = nq_ng__f32(b, &tb, err)) < 0) {
        nq_tensor_deinit(&ta);
        break;
      }
      float scale = (float)(ng->cfg.lora_alpha / (double)a->shape[0]);
      float *B = tb.data;
      for (int64_t i = 0; i < out_f * a->shape[0]; i++) B[i] *= scale;
      nq_llama_lora_t *lo = &L->lora[k];
      nq_linear_deinit(&lo->a), nq_linear_deinit(&lo->b);
      nq_linear_init(&lo->a, &ta, NULL); /* owned storage moves into the linears */
      nq_linear_init(&lo->b, &tb, NULL);
      lo->scale = scale;
      lo->present = true;
    }
  }
  return rc;
}

static int nq_ng__in_proj(nq_nextgpt_t *ng, nq_err_t *err) {
  const nq_ckpt_tensor_t *w = nq_ckpt_find(ng->delta, "llama_proj.weight"), *b = nq_ckpt_find(ng->delta, "llama_proj.bias");
  if (!w) return 0;
  if (w->ndim != 2 || !b || b->ndim != 1 || b->shape[0] != w->shape[0] || !nq_ng__float_dt(w->dtype) ||
      (ng->llm && w->shape[0] != ng->llm->cfg.dim))
    return nq_err_set(err, NQ_ESHAPE, NQ_ERR_FATAL, "%s: llama_proj.weight/bias must be [H, E] / [H] float (H = %d)",
                      ng->cfg.delta_ckpt_path, ng->llm ? ng->llm->cfg.dim : -1);
  nq_tensor_t tw, tb;
  nq_tensor_init_borrowed(&tw, w->dtype, 2, NQ_SHAPE(w->shape[0], w->shape[1]), (void *)w->data);
  int rc = nq_ng__f32(b, &tb, err);
  if (rc < 0) return rc;
  nq_linear_init(&ng->in_proj, &tw, &tb);
  ng->have_in_proj = true;
  return 0;
}

int nq_nextgpt_open(const nq_nextgpt_config_t *cfg, const nq_nextgpt_open_opts_t *opts, nq_nextgpt_t **out,
                    nq_err_t *err) {
  *out = NULL;
  unsigned parts = opts && opts->parts ? opts->parts : NQ_NG_PART_ALL;
  nq_nextgpt_t *ng = calloc(1, sizeof(*ng));
  if (!ng) return nq_err_set(err, NQ_ENOMEM, 0, "nextgpt: out of memory");
  int rc = nq_ng__config_copy(&ng->cfg, cfg, err);
  const nq_nextgpt_config_t *c = &ng->cfg;
  int wdtype = !c->dtype || !strcmp(c->dtype, "f32") ? -1 : !strcmp(c->dtype, "bf16") ? NQ_DT_BF16 : NQ_DT_F16;
  if (!rc && (!c->vicuna_ckpt_path || !*c->vicuna_ckpt_path) && (parts & NQ_NG_PART_LLM))
    rc = nq_err_set(err, NQ_ECONFIG, NQ_ERR_FATAL, "nextgpt: vicuna_ckpt_path is not set");
  if (!rc) rc = nq_ng__config_check(&ng->cfg, "nextgpt config", err);
  if (!rc && (parts & NQ_NG_PART_LLM)) {
    nq_llama_load_opts_t lo;
    nq_llama_load_opts_init(&lo);
    lo.backends = c->backends;
    lo.wdtype = wdtype;
    rc = nq_llama_load(c->vicuna_ckpt_path, &lo, &ng->llm, err);
    if (!rc) ng->ex = ng->llm->ex;
    if (!rc) rc = nq_ng__tokenizer(ng, err);
  }
  if (!rc && !ng->ex) {
    if ((ng->ex = nq_exec_new(c->backends ? c->backends : "auto", NULL, err))) ng->own_ex = true;
    else rc = err ? err->code : NQ_EINTERNAL;
  }
  if (!rc && c->delta_ckpt_path && *c->delta_ckpt_path) {
    rc = nq_ckpt_open(c->delta_ckpt_path, &ng->delta, err);
    if (!rc && ng->llm) rc = nq_ng__delta_vocab(ng, err);
    if (!rc && ng->llm) rc = nq_ng__delta_lora(ng, err);
    if (!rc) rc = nq_ng__in_proj(ng, err);
    for (int m = 0; m < NQ_NG_N_MODALITIES && !rc && (parts & NQ_NG_PART_PROJECTORS); m++) {
      char fcn[128];
      snprintf(fcn, sizeof fcn, "%sfc.weight", nq_ng__proj_prefix[m]);
      if (!nq_ckpt_find(ng->delta, fcn)) continue;
      nq_projector_opts_t po;
      nq_projector_opts_init(&po);
      po.nhead = (int)c->proj_nhead, po.eps = (float)c->proj_eps, po.wdtype = wdtype, po.ex = ng->ex;
      rc = nq_projector_load(ng->delta, nq_ng__proj_prefix[m], &po, &ng->proj[m], err);
      if (!rc && ng->llm && ng->proj[m]->in_dim != ng->llm->cfg.dim)
        rc = nq_err_set(err, NQ_ESHAPE, NQ_ERR_FATAL, "%s: %s projector takes %d-d states, the LLM has %d",
                        c->delta_ckpt_path, nq_ng__names[m], ng->proj[m]->in_dim, ng->llm->cfg.dim);
    }
    if (rc) nq_err_prefix(err, "nextgpt delta %s", c->delta_ckpt_path);
  }
  if (!rc && ng->llm && nq_sp_vocab_size(ng->tok) != ng->llm->cfg.vocab_size)
    rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL,
                    "nextgpt: tokenizer has %d tokens (with the added ones) but the LLM vocab is %d; the delta's "
                    "embed_tokens/lm_head must supply the resized rows",
                    nq_sp_vocab_size(ng->tok), ng->llm->cfg.vocab_size);
  if (!rc) {
    size_t i;
    json_t *s;
    json_array_foreach(c->stops_id, i, s) {
      size_t j;
      json_t *v;
      json_array_foreach(s, j, v) ng->stops[i][j] = (int32_t)json_integer_value(v);
      ng->stop_len[i] = (int)json_array_size(s);
      ng->n_stops++;
    }
  }
  if (rc) {
    nq_nextgpt_free(ng);
    return rc;
  }
  *out = ng;
  return 0;
}

void nq_nextgpt_free(nq_nextgpt_t *ng) {
  if (!ng) return;
  for (int m = 0; m < NQ_NG_N_MODALITIES; m++) nq_projector_free(ng->proj[m]);
  nq_linear_deinit(&ng->in_proj);
  nq_llama_free(ng->llm); /* before the delta: it may borrow embed/lm_head rows from it */
  nq_sp_free(ng->tok);
  nq_ckpt_close(ng->delta);
  if (ng->own_ex) nq_exec_free(ng->ex);
  nq_nextgpt_config_deinit(&ng->cfg);
  free(ng);
}

int nq_nextgpt_open_yaml(const char *path, const nq_nextgpt_open_opts_t *opts, nq_nextgpt_t **out, nq_err_t *err) {
  nq_nextgpt_config_t c;
  int rc = nq_nextgpt_config_load(path, &c, err);
  if (rc < 0) return rc;
  rc = nq_nextgpt_open(&c, opts, out, err);
  nq_nextgpt_config_deinit(&c);
  return rc;
}

/* ---------------------------------------------------------------------------------------------------------------
 * prompt: re.split(r' <|> ', prompt + "\n### Assistant:"), media segments, [BOS] per text segment
 * ------------------------------------------------------------------------------------------------------------- */

#define NQ_NG_SUFFIX "\n### Assistant:"

typedef struct {
  const char *s; /* borrowed into the text */
  size_t len;
  int modality;  /* -1: text */
} nq_ng__seg_t;

/* Splits text into segments (caller frees *segs). */
static int nq_ng__split(const char *text, size_t len, nq_ng__seg_t **segs, int *n, nq_err_t *err) {
  size_t cap = 8;
  int k = 0;
  nq_ng__seg_t *v = malloc(cap * sizeof *v);
  if (!v) return nq_err_set(err, NQ_ENOMEM, 0, "out of memory");
  size_t start = 0, i = 0;
  for (;;) {
    bool end = i + 1 >= len;
    bool sep = !end && ((text[i] == ' ' && text[i + 1] == '<') || (text[i] == '>' && text[i + 1] == ' '));
    if (sep || end) {
      size_t stop = sep ? i : len;
      if ((size_t)k + 1 > cap) {
        cap *= 2;
        nq_ng__seg_t *nv = realloc(v, cap * sizeof *v);
        if (!nv) {
          free(v);
          return nq_err_set(err, NQ_ENOMEM, 0, "out of memory");
        }
        v = nv;
      }
      nq_ng__seg_t *g = &v[k++];
      g->s = text + start, g->len = stop - start, g->modality = -1;
      for (int m = 0; m < NQ_NG_N_MODALITIES; m++) {
        size_t tl = strlen(nq_ng__tag[m]);
        if (g->len >= tl + 1 && !memcmp(g->s, nq_ng__tag[m], tl) && g->s[tl] == '>') g->modality = m;
      }
      if (!sep) break;
      i += 2;
      start = i;
      continue;
    }
    i++;
  }
  *segs = v;
  *n = k;
  return 0;
}

/* re.findall(r'<Tag>(.*?)<\/<Tag>', seg): calls back with each match (no '\n' inside, as Python's '.'). */
typedef int (*nq_ng__match_cb)(void *ctx, const char *s, size_t n, nq_err_t *err);

static int nq_ng__findall(const nq_ng__seg_t *g, nq_ng__match_cb cb, void *ctx, int *count, nq_err_t *err) {
  char open[16], close[16];
  snprintf(open, sizeof open, "%s>", nq_ng__tag[g->modality]);
  snprintf(close, sizeof close, "</%s", nq_ng__tag[g->modality]);
  size_t ol = strlen(open), cl = strlen(close), pos = 0;
  *count = 0;
  while (pos + ol <= g->len) {
    if (memcmp(g->s + pos, open, ol) != 0) {
      pos++;
      continue;
    }
    size_t st = pos + ol, q = st;
    bool found = false;
    for (; q + cl <= g->len && g->s[q] != '\n'; q++)
      if (!memcmp(g->s + q, close, cl)) {
        found = true;
        break;
      }
    if (!found) {
      pos++;
      continue;
    }
    int rc = cb ? cb(ctx, g->s + st, q - st, err) : 0;
    if (rc < 0) return rc;
    (*count)++;
    pos = q + cl;
  }
  return 0;
}

static char *nq_ng__with_suffix(const char *prompt, size_t *len) {
  size_t pl = strlen(prompt), sl = strlen(NQ_NG_SUFFIX);
  char *t = malloc(pl + sl + 1);
  if (!t) return NULL;
  memcpy(t, prompt, pl);
  memcpy(t + pl, NQ_NG_SUFFIX, sl + 1);
  *len = pl + sl;
  return t;
}

typedef struct {
  nq_nextgpt_media_ref_t *v;
  int n, cap, seg, modality;
} nq_ng__refs_t;

static int nq_ng__ref_cb(void *ctx, const char *s, size_t n, nq_err_t *err) {
  nq_ng__refs_t *r = ctx;
  if (r->n == r->cap) {
    int nc = r->cap ? r->cap * 2 : 4;
    nq_nextgpt_media_ref_t *nv = realloc(r->v, (size_t)nc * sizeof *nv);
    if (!nv) return nq_err_set(err, NQ_ENOMEM, 0, "out of memory");
    r->v = nv, r->cap = nc;
  }
  nq_nextgpt_media_ref_t *m = &r->v[r->n];
  if (!(m->path = strndup(s, n))) return nq_err_set(err, NQ_ENOMEM, 0, "out of memory");
  m->modality = r->modality, m->segment = r->seg;
  r->n++;
  return 0;
}

int nq_nextgpt_prompt_media(const char *prompt, nq_nextgpt_media_ref_t **out, int *n, nq_err_t *err) {
  *out = NULL, *n = 0;
  size_t len;
  char *text = nq_ng__with_suffix(prompt, &len);
  if (!text) return nq_err_set(err, NQ_ENOMEM, 0, "out of memory");
  nq_ng__seg_t *segs = NULL;
  int ns = 0, rc = nq_ng__split(text, len, &segs, &ns, err);
  nq_ng__refs_t r = {0};
  for (int i = 0; i < ns && !rc; i++) {
    if (segs[i].modality < 0) continue;
    int cnt;
    r.seg = i, r.modality = segs[i].modality;
    rc = nq_ng__findall(&segs[i], nq_ng__ref_cb, &r, &cnt, err);
    if (!rc && cnt == 0)
      rc = nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "prompt: segment %d starts with '%s>' but has no complete tag", i,
                      nq_ng__tag[segs[i].modality]);
  }
  free(segs);
  free(text);
  if (rc) {
    nq_nextgpt_media_refs_free(r.v, r.n);
    return rc;
  }
  *out = r.v, *n = r.n;
  return 0;
}

void nq_nextgpt_media_refs_free(nq_nextgpt_media_ref_t *refs, int n) {
  for (int i = 0; refs && i < n; i++) free(refs[i].path);
  free(refs);
}

void nq_nextgpt_prompt_deinit(nq_nextgpt_prompt_t *p) {
  if (!p) return;
  free(p->embeds), free(p->ids);
  memset(p, 0, sizeof(*p));
}

typedef struct {
  int64_t *ids;
  int n, cap;
} nq_ng__idv_t;

static int nq_ng__push(nq_ng__idv_t *v, int64_t id) {
  if (v->n == v->cap) {
    int nc = v->cap ? v->cap * 2 : 64;
    int64_t *ni = realloc(v->ids, (size_t)nc * sizeof *ni);
    if (!ni) return NQ_ENOMEM;
    v->ids = ni, v->cap = nc;
  }
  v->ids[v->n++] = id;
  return 0;
}

/* rows of the input embedding table for ids (I32 on the way in) */
static int nq_ng__embed_rows(nq_nextgpt_t *ng, const int32_t *ids, int n, float *out, nq_err_t *err) {
  if (n <= 0) return 0;
  nq_tensor_t ti, to;
  int64_t nn = n;
  nq_tensor_init_borrowed(&ti, NQ_DT_I32, 1, &nn, (void *)ids);
  nq_tensor_init_borrowed(&to, NQ_DT_F32, 2, NQ_SHAPE(n, ng->llm->cfg.dim), out);
  return nq_op_embed(ng->ex, &to, &ng->llm->tok_emb, &ti, err);
}

int nq_nextgpt_prompt_build(nq_nextgpt_t *ng, const char *prompt, const float *media, int n_media,
                            nq_nextgpt_prompt_t *out, nq_err_t *err) {
  memset(out, 0, sizeof(*out));
  if (!ng->llm) return nq_err_set(err, NQ_EINVAL, 0, "nextgpt: prompt needs the LLM part loaded");
  nq_nextgpt_media_ref_t *refs = NULL;
  int nref = 0, rc = nq_nextgpt_prompt_media(prompt, &refs, &nref, err);
  if (rc < 0) return rc;
  nq_ng__seg_t *segs = NULL;
  int ns = 0;
  size_t len;
  char *text = nq_ng__with_suffix(prompt, &len);
  float *acc = NULL, *row = NULL;
  int32_t *ids32 = NULL;
  nq_ng__idv_t v = {0};
  const int64_t H = ng->llm->cfg.dim;
  if (!text) rc = nq_err_set(err, NQ_ENOMEM, 0, "out of memory");
  if (!rc && nref != n_media)
    rc = nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "prompt names %d media item(s) to encode but %d embedding row(s) given",
                    nref, n_media);
  if (!rc && nref > 0 && !ng->have_in_proj)
    rc = nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "prompt has media but the model has no llama_proj (delta checkpoint)");
  if (!rc) rc = nq_ng__split(text, len, &segs, &ns, err);
  /* media positions get one row each; remember which segment's sum goes where */
  int n_media_pos = 0;
  for (int i = 0; i < ns && !rc; i++) {
    if (segs[i].modality >= 0) {
      rc = nq_ng__push(&v, ng->img_open) | nq_ng__push(&v, -1 - (int64_t)i) | nq_ng__push(&v, ng->img_close);
      n_media_pos++;
    } else {
      int32_t *t = NULL;
      int nt = 0;
      nq_sp_encode_opts_t eo = {.add_dummy_prefix = -1};
      rc = nq_ng__push(&v, nq_sp_bos(ng->tok));
      if (!rc) rc = nq_sp_encode(ng->tok, segs[i].s, segs[i].len, &eo, &t, &nt, err);
      for (int k = 0; k < nt && !rc; k++) rc = nq_ng__push(&v, t[k]);
      free(t);
    }
    if (rc == NQ_ENOMEM) nq_err_set(err, NQ_ENOMEM, 0, "out of memory");
  }
  if (!rc) {
    out->T = v.n;
    out->embeds = malloc(sizeof(float) * (size_t)v.n * (size_t)H);
    ids32 = malloc(sizeof(int32_t) * (size_t)(v.n ? v.n : 1));
    acc = malloc(sizeof(float) * (size_t)H);
    row = malloc(sizeof(float) * (size_t)H);
    if (!out->embeds || !ids32 || !acc || !row) rc = nq_err_set(err, NQ_ENOMEM, 0, "out of memory");
  }
  if (!rc) {
    for (int i = 0; i < v.n; i++) ids32[i] = v.ids[i] < 0 ? 0 : (int32_t)v.ids[i];
    rc = nq_ng__embed_rows(ng, ids32, v.n, out->embeds, err);
  }
  int r = 0; /* next media row */
  for (int i = 0; i < v.n && !rc; i++) {
    if (v.ids[i] >= 0) continue;
    int seg = (int)(-1 - v.ids[i]);
    v.ids[i] = -1;
    memset(acc, 0, sizeof(float) * (size_t)H);
    const int64_t E = ng->in_proj.w.ne[1];
    for (; r < nref && refs[r].segment == seg && !rc; r++) { /* Σ (W r + b): each item with its bias */
      nq_tensor_t tx, ty;
      nq_tensor_init_borrowed(&tx, NQ_DT_F32, 2, NQ_SHAPE(1, E), (void *)(media + (size_t)r * (size_t)E));
      nq_tensor_init_borrowed(&ty, NQ_DT_F32, 2, NQ_SHAPE(1, H), row);
      rc = nq_op_linear(ng->ex, &ty, &tx, &ng->in_proj, err);
      for (int64_t k = 0; k < H && !rc; k++) acc[k] += row[k];
    }
    memcpy(out->embeds + (size_t)i * (size_t)H, acc, sizeof(float) * (size_t)H);
  }
  if (!rc) {
    out->ids = v.ids;
    v.ids = NULL;
  }
  free(v.ids), free(ids32), free(acc), free(row), free(segs), free(text);
  nq_nextgpt_media_refs_free(refs, nref);
  if (rc) nq_nextgpt_prompt_deinit(out);
  return rc;
}

/* ---------------------------------------------------------------------------------------------------------------
 * decode (transformers 4.29 slow LlamaTokenizer, skip_special_tokens=True, spaces_between_special_tokens)
 * ------------------------------------------------------------------------------------------------------------- */

typedef struct {
  char *s;
  size_t n, cap;
} nq_ng__str_t;

static int nq_ng__cat(nq_ng__str_t *b, const char *s, size_t n) {
  if (b->n + n + 1 > b->cap) {
    size_t nc = (b->n + n + 1) * 2;
    char *ns = realloc(b->s, nc);
    if (!ns) return NQ_ENOMEM;
    b->s = ns, b->cap = nc;
  }
  memcpy(b->s + b->n, s, n);
  b->n += n;
  b->s[b->n] = 0;
  return 0;
}

char *nq_nextgpt_decode(const nq_nextgpt_t *ng, const int32_t *ids, int n) {
  nq_ng__str_t b = {0};
  int parts = 0, rc = nq_ng__cat(&b, "", 0);
  int run0 = -1;
  for (int i = 0; i <= n && !rc; i++) {
    nq_sp_type_t t = i < n ? nq_sp_type(ng->tok, ids[i]) : NQ_SP_ADDED;
    bool special = i < n && (t == NQ_SP_CONTROL || t == NQ_SP_UNKNOWN || nq_sp_piece(ng->tok, ids[i]) == NULL);
    if (special) continue; /* skip_special_tokens: <unk> <s> </s> */
    if (t != NQ_SP_ADDED) {
      if (run0 < 0) run0 = i;
      continue;
    }
    if (run0 >= 0) { /* flush the run of ordinary pieces (specials inside it are dropped by sp decode) */
      char *s = nq_sp_decode(ng->tok, ids + run0, i - run0, true);
      if (!s) rc = NQ_ENOMEM;
      if (!rc && parts++) rc = nq_ng__cat(&b, " ", 1);
      if (!rc) rc = nq_ng__cat(&b, s, strlen(s));
      free(s);
      run0 = -1;
    }
    if (i < n && !rc) {
      const char *p = nq_sp_piece(ng->tok, ids[i]);
      if (parts++) rc = nq_ng__cat(&b, " ", 1);
      if (!rc) rc = nq_ng__cat(&b, p, strlen(p));
    }
  }
  if (rc) {
    free(b.s);
    return NULL;
  }
  return b.s;
}

/* ---------------------------------------------------------------------------------------------------------------
 * signals
 * ------------------------------------------------------------------------------------------------------------- */

static void nq_ng__signal_deinit(nq_nextgpt_signal_t *s) {
  free(s->hidden), free(s->embeds), free(s->cond), free(s->caption);
  memset(s, 0, sizeof(*s));
}

void nq_nextgpt_output_deinit(nq_nextgpt_output_t *o) {
  if (!o) return;
  free(o->text), free(o->tokens);
  for (int m = 0; m < NQ_NG_N_MODALITIES; m++) nq_ng__signal_deinit(&o->sig[m]);
  memset(o, 0, sizeof(*o));
}

int nq_nextgpt_project(nq_nextgpt_t *ng, int modality, nq_nextgpt_signal_t *sig, nq_err_t *err) {
  if (modality < 0 || modality >= NQ_NG_N_MODALITIES)
    return nq_err_set(err, NQ_EINVAL, 0, "nextgpt: modality %d", modality);
  nq_projector_t *p = ng->proj[modality];
  if (!p)
    return nq_err_set(err, NQ_ENOENT, NQ_ERR_FATAL, "nextgpt: no %s projector (%s in the delta checkpoint)",
                      nq_ng__names[modality], nq_ng__proj_prefix[modality]);
  if (!sig->hidden || !sig->embeds || sig->n < 1 || sig->dim != p->in_dim)
    return nq_err_set(err, NQ_ESHAPE, NQ_ERR_FATAL, "nextgpt: %s signal of %d x %d states for a %d-d projector",
                      nq_ng__names[modality], sig->n, sig->dim, p->in_dim);
  float *cond = malloc(sizeof(float) * (size_t)p->n_queries * (size_t)p->out_dim);
  if (!cond) return nq_err_set(err, NQ_ENOMEM, 0, "out of memory");
  int rc = nq_projector_forward(p, sig->hidden, sig->embeds, sig->n, cond, err);
  if (rc < 0) {
    free(cond);
    return rc;
  }
  free(sig->cond);
  sig->cond = cond, sig->K = p->n_queries, sig->D = p->out_dim;
  return 0;
}

/* h: [n_h, H] states; h[k] = the step whose input was gen[k]. strict: an incomplete span is an error. */
static int nq_ng__signals(nq_nextgpt_t *ng, const int32_t *gen, int G, const float *h, int n_h, int offset_m1,
                          bool project, bool strict, nq_nextgpt_output_t *o, nq_err_t *err) {
  const int H = ng->llm->cfg.dim;
  for (int m = 0; m < NQ_NG_N_MODALITIES; m++) {
    nq_nextgpt_signal_t *s = &o->sig[m];
    int N = ng->n_sig[m], g = -1;
    for (int k = 0; k < G; k++)
      if (gen[k] == ng->sig_ids[m][0]) {
        g = k;
        break;
      }
    if (g < 0) continue;
    bool ok = g + N <= G;
    for (int i = 0; ok && i < N; i++) ok = gen[g + i] == ng->sig_ids[m][i];
    int r0 = offset_m1 ? g - 1 : g;
    if (ok && (r0 < 0 || r0 + N > n_h)) {
      if (strict)
        return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL,
                          "nextgpt: %s signal at %d needs hidden states %d..%d, only %d steps were run",
                          nq_ng__names[m], g, r0, r0 + N - 1, n_h);
      ok = false;
    }
    if (!ok) {
      if (strict)
        return nq_err_set(err, NQ_EFORMAT, NQ_ERR_FATAL, "nextgpt: %s signal at %d is not followed by all %d tokens",
                          nq_ng__names[m], g, N);
      s->incomplete = true, s->gen_idx = g;
      continue;
    }
    s->present = true, s->gen_idx = g, s->n = N, s->dim = H;
    s->hidden = malloc(sizeof(float) * (size_t)N * (size_t)H);
    s->embeds = malloc(sizeof(float) * (size_t)N * (size_t)H);
    if (!s->hidden || !s->embeds) return nq_err_set(err, NQ_ENOMEM, 0, "out of memory");
    memcpy(s->hidden, h + (size_t)r0 * (size_t)H, sizeof(float) * (size_t)N * (size_t)H);
    int rc = nq_ng__embed_rows(ng, ng->sig_ids[m], N, s->embeds, err);
    if (rc < 0) return rc;
    char *pre = nq_nextgpt_decode(ng, gen, g);
    nq_ng__str_t b = {0};
    rc = pre ? nq_ng__cat(&b, pre, strlen(pre)) : NQ_ENOMEM;
    free(pre);
    for (int i = 0; i < N && !rc; i++) {
      const char *p = nq_sp_piece(ng->tok, ng->sig_ids[m][i]);
      rc = nq_ng__cat(&b, " ", 1);
      if (!rc) rc = nq_ng__cat(&b, p, strlen(p));
    }
    if (rc) {
      free(b.s);
      return nq_err_set(err, NQ_ENOMEM, 0, "out of memory");
    }
    s->caption = b.s;
    if (project && ng->proj[m] && (rc = nq_nextgpt_project(ng, m, s, err)) < 0) return rc;
  }
  return 0;
}

static int nq_ng__ends_with_stop(const nq_nextgpt_t *ng, const int32_t *gen, int G) {
  for (int s = 0; s < ng->n_stops; s++) {
    int L = ng->stop_len[s];
    if (L <= G && !memcmp(gen + G - L, ng->stops[s], sizeof(int32_t) * (size_t)L)) return L;
  }
  return 0;
}

static int nq_ng__finish_text(nq_nextgpt_t *ng, nq_nextgpt_output_t *o, nq_err_t *err) {
  int n = o->n_tokens, L = nq_ng__ends_with_stop(ng, o->tokens, n);
  if (L) n -= L;
  else if (n > 0 && o->tokens[n - 1] == ng->llm->cfg.eos_id) n--;
  o->text = nq_nextgpt_decode(ng, o->tokens, n);
  return o->text ? 0 : nq_err_set(err, NQ_ENOMEM, 0, "out of memory");
}

void nq_nextgpt_gen_params_init(const nq_nextgpt_t *ng, nq_nextgpt_gen_params_t *p) {
  memset(p, 0, sizeof(*p));
  p->max_tgt_len = (int)ng->cfg.max_tgt_len;
  p->top_p = (float)ng->cfg.top_p;
  p->temperature = (float)ng->cfg.temperature;
  p->seed = (uint64_t)ng->cfg.seed;
  p->project = true;
}

int nq_nextgpt_signals_from_ids(nq_nextgpt_t *ng, const char *prompt, const float *media, int n_media,
                                const int32_t *generated, int G, int offset_minus_one, bool project,
                                nq_nextgpt_output_t *out, nq_err_t *err) {
  memset(out, 0, sizeof(*out));
  if (!ng->llm) return nq_err_set(err, NQ_EINVAL, 0, "nextgpt: needs the LLM part loaded");
  if (G < 1 || G > (1 << 20)) return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "nextgpt: %d generated ids", G);
  const int V = ng->llm->cfg.vocab_size, H = ng->llm->cfg.dim;
  for (int k = 0; k < G; k++)
    if (generated[k] < 0 || generated[k] >= V)
      return nq_err_set(err, NQ_EINVAL, NQ_ERR_FATAL, "nextgpt: generated id %d at %d outside vocab %d", generated[k], k, V);
  nq_nextgpt_prompt_t P;
  int rc = nq_nextgpt_prompt_build(ng, prompt, media, n_media, &P, err);
  if (rc < 0) return rc;
  int T = P.T, n = T + G - 1; /* the last generated id is never fed back */
  float *x = malloc(sizeof(float) * (size_t)n * (size_t)H), *hid = malloc(sizeof(float) * (size_t)n * (size_t)H);
  nq_llama_kv_t *kv = NULL;
  if (!x || !hid) rc = nq_err_set(err, NQ_ENOMEM, 0, "out of memory");
  if (!rc && n > ng->llm->cfg.max_ctx)
    rc = nq_err_set(err, NQ_ELIMIT, NQ_ERR_FATAL, "nextgpt: %d positions exceed the context of %d", n,
                    ng->llm->cfg.max_ctx);
  if (!rc) {
    memcpy(x, P.embeds, sizeof(float) * (size_t)T * (size_t)H);
    rc = nq_ng__embed_rows(ng, generated, G - 1, x + (size_t)T * (size_t)H, err);
  }
  if (!rc && !(kv = nq_llama_kv_new(ng->llm, 1, n, err))) rc = err ? err->code : NQ_ENOMEM;
  if (!rc) {
    int slot = 0;
    nq_llama_batch_t b = {.n_seq = 1, .slot = &slot, .n_tokens = &n, .embeds = x, .logits_all = true, .hidden = hid};
    rc = nq_llama_forward(ng->llm, kv, &b, err);
  }
  if (!rc) {
    out->tokens = malloc(sizeof(int32_t) * (size_t)G);
    if (!out->tokens) rc = nq_err_set(err, NQ_ENOMEM, 0, "out of memory");
    else memcpy(out->tokens, generated, sizeof(int32_t) * (size_t)G), out->n_tokens = G;
  }
  if (!rc) rc = nq_ng__finish_text(ng, out, err);
  if (!rc)
    rc = nq_ng__signals(ng, generated, G, hid + (size_t)T * (size_t)H, G - 1,
                        offset_minus_one < 0 ? ng->cfg.offset_minus_one : offset_minus_one, project, true, out, err);
  free(x), free(hid);
  nq_llama_kv_free(kv);
  nq_nextgpt_prompt_deinit(&P);
  if (rc) nq_nextgpt_output_deinit(out);
  return rc;
}

int nq_nextgpt_generate(nq_nextgpt_t *ng, const char *prompt, const float *media, int n_media,
                        const nq_nextgpt_gen_params_t *params, nq_nextgpt_output_t *out, nq_err_t *err) {
  memset(out, 0, sizeof(*out));
  if (!ng->llm) return nq_err_set(err, NQ_EINVAL, 0, "nextgpt: needs the LLM part loaded");
  nq_nextgpt_gen_params_t p;
  if (params) p = *params;
  else nq_nextgpt_gen_params_init(ng, &p);
  if (p.max_tgt_len < 1) return nq_err_set(err, NQ_EINVAL, 0, "nextgpt: max_tgt_len %d", p.max_tgt_len);
  nq_llama_model_t *m = ng->llm;
  const int V = m->cfg.vocab_size, H = m->cfg.dim;
  nq_nextgpt_prompt_t P;
  int rc = nq_nextgpt_prompt_build(ng, prompt, media, n_media, &P, err);
  if (rc < 0) return rc;
  int ctx = P.T + p.max_tgt_len;
  if (ctx > m->cfg.max_ctx) ctx = m->cfg.max_ctx;
  float *logits = malloc(sizeof(float) * (size_t)V);
  float *hid = malloc(sizeof(float) * (size_t)p.max_tgt_len * (size_t)H);
  out->tokens = malloc(sizeof(int32_t) * (size_t)p.max_tgt_len);
  nq_llama_kv_t *kv = NULL;
  nq_sampler_t smp;
  bool have_smp = false;
  if (!logits || !hid || !out->tokens) rc = nq_err_set(err, NQ_ENOMEM, 0, "out of memory");
  if (!rc && P.T >= ctx)
    rc = nq_err_set(err, NQ_ELIMIT, NQ_ERR_FATAL, "nextgpt: prompt of %d positions does not fit the context of %d", P.T,
                    m->cfg.max_ctx);
  if (!rc && !(kv = nq_llama_kv_new(m, 1, ctx, err))) rc = err ? err->code : NQ_ENOMEM;
  if (!rc) {
    nq_sampling_params_t sp = {.temperature = p.temperature, .top_p = p.top_p, .seed = p.seed};
    rc = nq_sampler_init(&smp, V, &sp, err);
    have_smp = rc == 0;
  }
  int slot = 0, n_h = 0;
  if (!rc) {
    nq_llama_batch_t b = {.n_seq = 1, .slot = &slot, .n_tokens = &P.T, .embeds = P.embeds, .logits = logits};
    rc = nq_llama_forward(m, kv, &b, err);
  }
  while (!rc) {
    int tok = nq_sampler_sample(&smp, logits);
    out->tokens[out->n_tokens++] = tok;
    if (nq_ng__ends_with_stop(ng, out->tokens, out->n_tokens) || tok == m->cfg.eos_id ||
        out->n_tokens >= p.max_tgt_len || kv->pos[0] >= ctx)
      break; /* the last id is never fed back, as in HF generate */
    int one = 1;
    int32_t t32 = tok;
    nq_llama_batch_t b = {.n_seq = 1, .slot = &slot, .n_tokens = &one, .tokens = &t32, .logits = logits,
                          .hidden = hid + (size_t)n_h * (size_t)H};
    rc = nq_llama_forward(m, kv, &b, err);
    if (!rc) n_h++;
  }
  if (!rc) rc = nq_ng__finish_text(ng, out, err);
  if (!rc) rc = nq_ng__signals(ng, out->tokens, out->n_tokens, hid, n_h, ng->cfg.offset_minus_one, p.project, false, out, err);
  if (have_smp) nq_sampler_deinit(&smp);
  free(logits), free(hid);
  nq_llama_kv_free(kv);
  nq_nextgpt_prompt_deinit(&P);
  if (rc) nq_nextgpt_output_deinit(out);
  return rc;
}

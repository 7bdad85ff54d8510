/* The oneDNN backend: linear as a oneDNN matmul with weights reordered once into the layout the
 * primitive wants (prepacked at nq_exec_linear_prepare), F32 and BF16 weights (BF16: the
 * activations are rounded to BF16, accumulation and output F32). Whether BF16 runs on native
 * instructions (AVX512-BF16/AMX) or on oneDNN's reference kernels is probed once; it is only
 * *preferred* when native, so on AVX2 machines BF16 falls back cleanly to openblas/cpu while tests
 * still check the oneDNN path. Primitives are cached per (M, strides) on the packed weights. */
#include "compute/backends/backends_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef NQ_WITH_ONEDNN
#include <oneapi/dnnl/dnnl.h>
#include <pthread.h>

#define NQ_DNNL_MIN_BATCH 16
#define NQ_DNNL_PACK_M 64
#define NQ_DNNL_CACHE 6

typedef struct {
  bool f32_ok, bf16_ok, bf16_native;
  char impl_f32[64], impl_bf16[64];
} nq_dnnl__ctx_t;

typedef struct {
  int64_t M, xs, ys;
  dnnl_primitive_t prim;
  dnnl_memory_t src, dst;
  unsigned used;
} nq_dnnl__ent_t;

typedef struct {
  dnnl_data_type_t wdt;
  dnnl_memory_desc_t wmd;  /* packed layout */
  dnnl_memory_t wmem;      /* owned; over wbuf */
  void *wbuf;              /* owned */
  dnnl_memory_t bmem;      /* owned or NULL */
  int64_t N, K;
  pthread_mutex_t mu;
  nq_dnnl__ent_t cache[NQ_DNNL_CACHE];
  unsigned tick;
  uint16_t *xbf;           /* owned bf16 activation scratch */
  size_t xbf_n;
} nq_dnnl__packed_t;

static pthread_once_t g_dnnl_once = PTHREAD_ONCE_INIT;
static dnnl_engine_t g_eng;   /* process lifetime */
static dnnl_stream_t g_stream;

static void nq_dnnl__init_engine(void) {
  if (dnnl_engine_create(&g_eng, dnnl_cpu, 0) != dnnl_success) g_eng = NULL;
  if (g_eng && dnnl_stream_create(&g_stream, g_eng, dnnl_stream_default_flags) != dnnl_success) g_stream = NULL;
}

static dnnl_status_t nq_dnnl__matmul_pd(dnnl_primitive_desc_t *pd, int64_t M, int64_t K, int64_t N, int64_t xs,
                                        int64_t ys, dnnl_data_type_t xdt, const dnnl_memory_desc_t *wmd, bool bias) {
  dnnl_memory_desc_t smd, dmd, bmd;
  dnnl_dims_t sd = {M, K}, ss = {xs, 1}, dd = {M, N}, ds = {ys, 1}, bd = {1, N};
  dnnl_memory_desc_init_by_strides(&smd, 2, sd, xdt, ss);
  dnnl_memory_desc_init_by_strides(&dmd, 2, dd, dnnl_f32, ds);
  if (bias) dnnl_memory_desc_init_by_tag(&bmd, 2, bd, dnnl_f32, dnnl_ab);
  dnnl_matmul_desc_t md;
  dnnl_status_t s = dnnl_matmul_desc_init(&md, &smd, wmd, bias ? &bmd : NULL, &dmd);
  if (s != dnnl_success) return s;
  return dnnl_primitive_desc_create(pd, &md, NULL, g_eng, NULL);
}

static bool nq_dnnl__probe(dnnl_data_type_t dt, char *impl, size_t n) {
  dnnl_memory_desc_t wmd;
  dnnl_dims_t wd = {256, 256};
  dnnl_memory_desc_init_by_tag(&wmd, 2, wd, dt, dnnl_format_tag_any);
  dnnl_primitive_desc_t pd;
  if (nq_dnnl__matmul_pd(&pd, 64, 256, 256, 256, 256, dt, &wmd, false) != dnnl_success) return false;
  const char *s = NULL;
  dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &s);
  snprintf(impl, n, "%s", s ? s : "?");
  dnnl_primitive_desc_destroy(pd);
  return true;
}

static void nq_dnnl__packed_free(void *p) {
  nq_dnnl__packed_t *pk = p;
  for (int i = 0; i < NQ_DNNL_CACHE; i++) {
    if (pk->cache[i].prim) dnnl_primitive_destroy(pk->cache[i].prim);
    if (pk->cache[i].src) dnnl_memory_destroy(pk->cache[i].src);
    if (pk->cache[i].dst) dnnl_memory_destroy(pk->cache[i].dst);
  }
  if (pk->wmem) dnnl_memory_destroy(pk->wmem);
  if (pk->bmem) dnnl_memory_destroy(pk->bmem);
  free(pk->wbuf);
  free(pk->xbf);
  pthread_mutex_destroy(&pk->mu);
  free(pk);
}

static dnnl_data_type_t nq_dnnl__dt(nq_dtype_t dt) { return dt == NQ_DT_BF16 ? dnnl_bf16 : dnnl_f32; }

static bool nq_dnnl__supports(const nq_backend_t *be, const nq_op_desc_t *op) {
  const nq_dnnl__ctx_t *c = be->ctx;
  if (op->op != NQ_OP_LINEAR || !nq_backends__is_host_op(op)) return false;
  if (op->lin->w.ne[0] > INT32_MAX || op->lin->w.ne[1] > INT32_MAX) return false;
  if (op->lin->w.dtype == NQ_DT_F32) return c->f32_ok;
  if (op->lin->w.dtype == NQ_DT_BF16) return c->bf16_ok;
  return false;
}

static bool nq_dnnl__prefers(const nq_backend_t *be, const nq_op_desc_t *op) {
  const nq_dnnl__ctx_t *c = be->ctx;
  int64_t M, len, st;
  if (!nq_tensor_rows(op->src[0], &M, &len, &st) || M < NQ_DNNL_MIN_BATCH) return false;
  return op->lin->w.dtype == NQ_DT_F32 || c->bf16_native;
}

static int nq_dnnl__pack(nq_backend_t *be, nq_linear_t *lin, nq_err_t *err) {
  nq_op_desc_t probe = {.op = NQ_OP_LINEAR, .lin = lin};
  if (!nq_dnnl__supports(be, &probe) || lin->w.ndim != 2) return 0; /* not ours: others will run it */
  int64_t N = lin->w.ne[0], K = lin->w.ne[1];
  dnnl_data_type_t dt = nq_dnnl__dt(lin->w.dtype);
  nq_dnnl__packed_t *pk = calloc(1, sizeof(*pk));
  if (!pk) return nq_err_set(err, NQ_ENOMEM, 0, "onednn pack: out of memory");
  pthread_mutex_init(&pk->mu, NULL);
  pk->wdt = dt, pk->N = N, pk->K = K;
  dnnl_memory_desc_t any, plain;
  dnnl_dims_t wd = {K, N}, ws = {1, K};
  dnnl_memory_desc_init_by_tag(&any, 2, wd, dt, dnnl_format_tag_any);
  dnnl_memory_desc_init_by_strides(&plain, 2, wd, dt, ws);
  dnnl_primitive_desc_t pd = NULL, rpd = NULL;
  dnnl_primitive_t reorder = NULL;
  dnnl_memory_t src = NULL;
  int rc = 0;
  if (nq_dnnl__matmul_pd(&pd, NQ_DNNL_PACK_M, K, N, K, N, dt, &any, lin->b.data != NULL) != dnnl_success) {
    rc = nq_err_set(err, NQ_EUNSUPPORTED, 0, "onednn pack: no matmul for [%lld,%lld] %s", (long long)N, (long long)K,
                    nq_dtype_name(lin->w.dtype));
    goto out;
  }
  pk->wmd = *dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
  size_t bytes = dnnl_memory_desc_get_size(&pk->wmd);
  pk->wbuf = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
  if (!pk->wbuf) {
    rc = nq_err_set(err, NQ_ENOMEM, 0, "onednn pack: %zu bytes", bytes);
    goto out;
  }
  if (dnnl_memory_create(&pk->wmem, &pk->wmd, g_eng, pk->wbuf) != dnnl_success ||
      dnnl_memory_create(&src, &plain, g_eng, lin->w.data) != dnnl_success ||
      dnnl_reorder_primitive_desc_create(&rpd, &plain, g_eng, &pk->wmd, g_eng, NULL) != dnnl_success ||
      dnnl_primitive_create(&reorder, rpd) != dnnl_success) {
    rc = nq_err_set(err, NQ_EINTERNAL, 0, "onednn pack: reorder setup failed");
    goto out;
  }
  dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, src}, {DNNL_ARG_TO, pk->wmem}};
  if (dnnl_primitive_execute(reorder, g_stream, 2, args) != dnnl_success || dnnl_stream_wait(g_stream) != dnnl_success) {
    rc = nq_err_set(err, NQ_EINTERNAL, 0, "onednn pack: reorder failed");
    goto out;
  }
  if (lin->b.data) {
    dnnl_memory_desc_t bmd;
    dnnl_dims_t bd = {1, N};
    dnnl_memory_desc_init_by_tag(&bmd, 2, bd, dnnl_f32, dnnl_ab);
    if (dnnl_memory_create(&pk->bmem, &bmd, g_eng, lin->b.data) != dnnl_success) {
      rc = nq_err_set(err, NQ_EINTERNAL, 0, "onednn pack: bias memory");
      goto out;
    }
  }
out:
  if (reorder) dnnl_primitive_destroy(reorder);
  if (rpd) dnnl_primitive_desc_destroy(rpd);
  if (pd) dnnl_primitive_desc_destroy(pd);
  if (src) dnnl_memory_destroy(src);
  if (rc < 0) {
    nq_dnnl__packed_free(pk);
    return rc;
  }
  lin->packed[NQ_BK_ONEDNN] = pk;
  lin->packed_free[NQ_BK_ONEDNN] = nq_dnnl__packed_free;
  return 0;
}

static nq_dnnl__ent_t *nq_dnnl__entry(nq_dnnl__packed_t *pk, int64_t M, int64_t xs, int64_t ys, bool bias,
                                      nq_err_t *err) {
  nq_dnnl__ent_t *victim = &pk->cache[0];
  for (int i = 0; i < NQ_DNNL_CACHE; i++) {
    nq_dnnl__ent_t *e = &pk->cache[i];
    if (e->prim && e->M == M && e->xs == xs && e->ys == ys) {
      e->used = ++pk->tick;
      return e;
    }
    if (!e->prim || e->used < victim->used) victim = e;
  }
  if (victim->prim) dnnl_primitive_destroy(victim->prim);
  if (victim->src) dnnl_memory_destroy(victim->src);
  if (victim->dst) dnnl_memory_destroy(victim->dst);
  memset(victim, 0, sizeof(*victim));
  dnnl_primitive_desc_t pd;
  if (nq_dnnl__matmul_pd(&pd, M, pk->K, pk->N, xs, ys, pk->wdt, &pk->wmd, bias) != dnnl_success) {
    nq_err_set(err, NQ_EUNSUPPORTED, 0, "onednn linear: no matmul for M=%lld with the packed layout", (long long)M);
    return NULL;
  }
  dnnl_status_t s = dnnl_primitive_create(&victim->prim, pd);
  if (s == dnnl_success) s = dnnl_memory_create(&victim->src, dnnl_primitive_desc_query_md(pd, dnnl_query_src_md, 0),
                                                g_eng, DNNL_MEMORY_NONE);
  if (s == dnnl_success) s = dnnl_memory_create(&victim->dst, dnnl_primitive_desc_query_md(pd, dnnl_query_dst_md, 0),
                                                g_eng, DNNL_MEMORY_NONE);
  dnnl_primitive_desc_destroy(pd);
  if (s != dnnl_success) {
    nq_err_set(err, NQ_EINTERNAL, 0, "onednn linear: primitive creation failed (%d)", (int)s);
    return NULL;
  }
  victim->M = M, victim->xs = xs, victim->ys = ys, victim->used = ++pk->tick;
  return victim;
}

static int nq_dnnl__compute(nq_backend_t *be, const nq_op_desc_t *op, nq_err_t *err) {
  nq_linear_t *lin = op->lin;
  if (!lin->packed[NQ_BK_ONEDNN]) {
    int rc = nq_dnnl__pack(be, lin, err);
    if (rc < 0) return rc;
  }
  nq_dnnl__packed_t *pk = lin->packed[NQ_BK_ONEDNN];
  nq_core__rows_t x = nq_core__rows_of(op->src[0]), y = nq_core__rows_of(op->dst);
  pthread_mutex_lock(&pk->mu);
  const float *X = op->src[0]->data;
  void *src = (void *)X;
  int64_t xs = x.stride;
  int rc = 0;
  if (pk->wdt == dnnl_bf16) {
    size_t need = (size_t)(x.n * x.len);
    if (need > pk->xbf_n) {
      free(pk->xbf);
      pk->xbf = malloc(need * 2);
      pk->xbf_n = pk->xbf ? need : 0;
      if (!pk->xbf) {
        rc = nq_err_set(err, NQ_ENOMEM, 0, "onednn linear: bf16 scratch");
        goto out;
      }
    }
    for (int64_t m = 0; m < x.n; m++)
      for (int64_t k = 0; k < x.len; k++) pk->xbf[m * x.len + k] = nq_f32_to_bf16(X[m * x.stride + k]);
    src = pk->xbf;
    xs = x.len;
  }
  nq_dnnl__ent_t *e = nq_dnnl__entry(pk, x.n, xs, y.stride, pk->bmem != NULL, err);
  if (!e) {
    rc = err ? err->code : NQ_EINTERNAL;
    goto out;
  }
  dnnl_memory_set_data_handle(e->src, src);
  dnnl_memory_set_data_handle(e->dst, op->dst->data);
  dnnl_exec_arg_t args[4] = {{DNNL_ARG_SRC, e->src}, {DNNL_ARG_WEIGHTS, pk->wmem}, {DNNL_ARG_DST, e->dst},
                             {DNNL_ARG_BIAS, pk->bmem}};
  if (dnnl_primitive_execute(e->prim, g_stream, pk->bmem ? 4 : 3, args) != dnnl_success ||
      dnnl_stream_wait(g_stream) != dnnl_success)
    rc = nq_err_set(err, NQ_EINTERNAL, 0, "onednn linear: execute failed");
out:
  pthread_mutex_unlock(&pk->mu);
  return rc;
}

static void nq_dnnl__free(nq_backend_t *be) { free(be->ctx); }

static const nq_backend_i nq_dnnl__iface = {
    .name = "onednn",
    .kind = NQ_BK_ONEDNN,
    .supports_op = nq_dnnl__supports,
    .prefers_op = nq_dnnl__prefers,
    .compute = nq_dnnl__compute,
    .linear_pack = nq_dnnl__pack,
    .free = nq_dnnl__free,
};

nq_backend_t *nq_backend_onednn_new(nq_pool_t *pool, nq_err_t *err) {
  pthread_once(&g_dnnl_once, nq_dnnl__init_engine);
  if (!g_eng || !g_stream) {
    nq_err_set(err, NQ_EUNSUPPORTED, 0, "backend onednn: cannot create a CPU engine");
    return NULL;
  }
  nq_dnnl__ctx_t *c = calloc(1, sizeof(*c));
  if (!c) {
    nq_err_set(err, NQ_ENOMEM, 0, "backend onednn: out of memory");
    return NULL;
  }
  c->f32_ok = nq_dnnl__probe(dnnl_f32, c->impl_f32, sizeof c->impl_f32);
  c->bf16_ok = nq_dnnl__probe(dnnl_bf16, c->impl_bf16, sizeof c->impl_bf16);
  c->bf16_native = c->bf16_ok && strncmp(c->impl_bf16, "ref", 3) != 0;
  if (getenv("NQ_EXEC_TRACE"))
    fprintf(stderr, "onednn: f32 %s (%s), bf16 %s (%s)\n", c->f32_ok ? "ok" : "no", c->impl_f32,
            c->bf16_ok ? (c->bf16_native ? "native" : "emulated") : "no", c->impl_bf16);
  nq_backend_t *be = nq_backends__alloc(&nq_dnnl__iface, c, pool ? pool : nq_pool_default(), err);
  if (!be) free(c);
  return be;
}

const char *nq_backend_onednn_impl(const nq_backend_t *be, int bf16) {
  const nq_dnnl__ctx_t *c = be->ctx;
  return bf16 ? (c->bf16_ok ? c->impl_bf16 : "none") : (c->f32_ok ? c->impl_f32 : "none");
}
#else
nq_backend_t *nq_backend_onednn_new(nq_pool_t *pool, nq_err_t *err) {
  nq_err_set(err, NQ_EUNSUPPORTED, 0, "backend onednn: not built (WITH_ONEDNN=0)");
  return NULL;
}
const char *nq_backend_onednn_impl(const nq_backend_t *be, int bf16) { return "none"; }
#endif

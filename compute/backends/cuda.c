/* The CUDA backend (WITH_CUDA=1): the heavy ops of the models -- linear, conv2d, attention -- on an NVIDIA GPU through
 * cuBLAS, around a few kernels of our own (cuda_kernels.cu). Everything else stays on the host backends.
 *
 * Activations live in host memory (the tensor contract of compute/core): each op copies its inputs to the device,
 * runs there and copies its output back, on one stream per backend, serialised by a mutex (an executor may be shared
 * by threads). Copies go through two pinned staging buffers: the pool copies chunk k+1 into one while the DMA engine
 * moves chunk k from the other (a plain cudaMemcpy from pageable memory measured 8.9 GB/s there and back on the H100
 * machine; NQ_CUDA_PINNED=0 goes back to it). Linear weights are uploaded once, widened to f32, and stay on the device
 * (nq_linear_t.packed[NQ_BK_CUDA]), so an M = 1 decode step moves only its activation rows; conv weights are plain
 * tensors with no packed slot and are uploaded with each call (a model's conv weights and a test's random ones
 * look alike to the backend: no cache can tell them apart safely). Device-resident activations are the next step:
 * for the UNet the per-op copies cost more than the convolutions.
 *
 * Math: BF16 linear weights stay BF16 on the device (half the memory of f32: LLaMA-7B's 13.5 GB instead of 27) and
 * multiply activations rounded to BF16 on tensor cores with f32 accumulation (cublasGemmEx), as oneDNN does on
 * AVX512-BF16 CPUs: ~3e-3 relative. NQ_CUDA_WEIGHTS=f32 widens them to f32 instead. Everything else is f32
 * (cublasSgemm: the host backends' results to ~1e-6 relative); NQ_CUDA_TF32=1 lets cuBLAS use TF32 tensor cores
 * there (~1e-4). F16 weights are widened to f32 (F16 activations could overflow). NQ_CUDA_DEVICE picks the GPU.
 * The backend cannot be made (NULL, err says why) when it was not built, no driver or no GPU is there. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compute/backends/backends_int.h"

#ifdef NQ_WITH_CUDA
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "compute/backends/cuda_kernels.h"

enum { NQ_CUDA__X, NQ_CUDA__Y, NQ_CUDA__T, NQ_CUDA__W, NQ_CUDA__K, NQ_CUDA__V, NQ_CUDA__NBUF };

/* scratch / score blocks are bounded (floats): a 512x512 VAE conv's columns or a 4096-token UNet attention's
 * scores are split into chunks of at most this (NQ_CUDA_CHUNK_FLOATS overrides: tests make it tiny so every
 * chunked path runs on small shapes) */
#define NQ_CUDA_CHUNK_FLOATS ((int64_t)64 << 20)

typedef struct {
  int dev;
  cudaStream_t st;       /* owned */
  cublasHandle_t blas;   /* owned */
  pthread_mutex_t mu;    /* one op at a time per backend */
  void *buf[NQ_CUDA__NBUF]; /* owned device scratch, grown on demand */
  size_t cap[NQ_CUDA__NBUF];
  int64_t chunk;            /* floats per im2col / score block */
  int wbf16;                /* keep BF16 linear weights BF16 (NQ_CUDA_WEIGHTS != f32) */
  void *pin[2];             /* owned pinned host staging buffers of NQ_CUDA_PIN_BYTES (NULL: pageable copies) */
  cudaEvent_t pin_ev[2];    /* owned: the last copy that used pin[i] */
  nq_pool_t *pool;          /* borrowed: host-side staging copies */
} nq_cuda__ctx_t;

#define NQ_CUDA_PIN_BYTES ((size_t)8 << 20)

/* A linear layer's weights on the device (nq_linear_t.packed[NQ_BK_CUDA]). */
typedef struct {
  int dev;
  void *w;   /* owned device [N, K]: f32, or bf16 when bf16 */
  float *b;  /* owned device [N] or NULL */
  int64_t N, K;
  int bf16;  /* w holds the BF16 weights as they were */
} nq_cuda__lin_t;

static int nq_cuda__err(nq_err_t *err, cudaError_t e, const char *what) {
  return nq_err_set(err, e == cudaErrorMemoryAllocation ? NQ_ENOMEM : NQ_EINTERNAL, NQ_ERR_RETRIABLE, "cuda %s: %s",
                    what, cudaGetErrorString(e));
}

static int nq_cuda__blas_err(nq_err_t *err, cublasStatus_t s, const char *what) {
  return nq_err_set(err, s == CUBLAS_STATUS_ALLOC_FAILED ? NQ_ENOMEM : NQ_EINTERNAL, NQ_ERR_RETRIABLE,
                    "cublas %s: status %d", what, (int)s);
}

#define NQ_CUDA_TRY(call, what)                             \
  do {                                                      \
    cudaError_t e_ = (call);                                \
    if (e_ != cudaSuccess) return nq_cuda__err(err, e_, what); \
  } while (0)
#define NQ_BLAS_TRY(call, what)                                      \
  do {                                                               \
    cublasStatus_t s_ = (call);                                      \
    if (s_ != CUBLAS_STATUS_SUCCESS) return nq_cuda__blas_err(err, s_, what); \
  } while (0)

/* Scratch buffer `i` of at least `bytes`. */
static int nq_cuda__scratch(nq_cuda__ctx_t *c, int i, size_t bytes, void **out, nq_err_t *err) {
  if (c->cap[i] < bytes) {
    if (c->buf[i]) cudaFree(c->buf[i]);
    c->buf[i] = NULL, c->cap[i] = 0;
    size_t want = bytes + bytes / 4; /* room to grow a little without another allocation */
    cudaError_t e = cudaMalloc(&c->buf[i], want);
    if (e != cudaSuccess) {
      cudaGetLastError();
      if ((e = cudaMalloc(&c->buf[i], bytes)) != cudaSuccess) return nq_cuda__err(err, e, "scratch allocation");
      want = bytes;
    }
    c->cap[i] = want;
  }
  *out = c->buf[i];
  return 0;
}

/* ---- host <-> device copies through the pinned double buffer ---- */

typedef struct {
  char *dst;
  const char *src;
} nq_cuda__mcpy_t;

static void nq_cuda__mcpy_cb(void *ctx, int64_t b0, int64_t b1, int tid) {
  const nq_cuda__mcpy_t *m = ctx;
  memcpy(m->dst + b0 * 65536, m->src + b0 * 65536, (size_t)(b1 - b0) * 65536);
}

/* memcpy on the pool in 64 KiB blocks (the tail alone on the caller). */
static void nq_cuda__pcopy(nq_cuda__ctx_t *c, void *dst, const void *src, size_t bytes) {
  size_t nb = bytes / 65536;
  if (nb >= 4 && c->pool) {
    nq_cuda__mcpy_t m = {dst, src};
    nq_pool_for(c->pool, (int64_t)nb, 8, nq_cuda__mcpy_cb, &m);
  } else {
    nb = 0;
  }
  memcpy((char *)dst + nb * 65536, (const char *)src + nb * 65536, bytes - nb * 65536);
}

/* bytes from host memory to device memory dst; ordered on the stream like any other async call. */
static int nq_cuda__put(nq_cuda__ctx_t *c, void *dst, const void *src, size_t bytes, nq_err_t *err) {
  if (!c->pin[0] || bytes < ((size_t)1 << 20)) {
    NQ_CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, c->st), "upload");
    return 0;
  }
  for (size_t off = 0, k = 0; off < bytes; off += NQ_CUDA_PIN_BYTES, k++) {
    size_t n = bytes - off < NQ_CUDA_PIN_BYTES ? bytes - off : NQ_CUDA_PIN_BYTES;
    int b = (int)(k & 1);
    NQ_CUDA_TRY(cudaEventSynchronize(c->pin_ev[b]), "staging wait"); /* its previous DMA is done */
    nq_cuda__pcopy(c, c->pin[b], (const char *)src + off, n);
    NQ_CUDA_TRY(cudaMemcpyAsync((char *)dst + off, c->pin[b], n, cudaMemcpyHostToDevice, c->st), "upload");
    NQ_CUDA_TRY(cudaEventRecord(c->pin_ev[b], c->st), "staging event");
  }
  return 0;
}

/* bytes from device memory src to host memory dst, after everything queued before it; returns when dst holds them. */
static int nq_cuda__get(nq_cuda__ctx_t *c, void *dst, const void *src, size_t bytes, nq_err_t *err) {
  if (!c->pin[0] || bytes < ((size_t)1 << 20)) {
    NQ_CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, c->st), "download");
    NQ_CUDA_TRY(cudaStreamSynchronize(c->st), "stream");
    return 0;
  }
  size_t prev_off = 0, prev_n = 0;
  size_t k = 0;
  for (size_t off = 0; off < bytes; off += NQ_CUDA_PIN_BYTES, k++) {
    size_t n = bytes - off < NQ_CUDA_PIN_BYTES ? bytes - off : NQ_CUDA_PIN_BYTES;
    int b = (int)(k & 1);
    NQ_CUDA_TRY(cudaMemcpyAsync(c->pin[b], (const char *)src + off, n, cudaMemcpyDeviceToHost, c->st), "download");
    NQ_CUDA_TRY(cudaEventRecord(c->pin_ev[b], c->st), "staging event");
    if (k > 0) { /* chunk k-1 out of the other buffer while chunk k moves */
      NQ_CUDA_TRY(cudaEventSynchronize(c->pin_ev[b ^ 1]), "staging wait");
      nq_cuda__pcopy(c, (char *)dst + prev_off, c->pin[b ^ 1], prev_n);
    }
    prev_off = off, prev_n = n;
  }
  int b = (int)((k - 1) & 1);
  NQ_CUDA_TRY(cudaEventSynchronize(c->pin_ev[b]), "staging wait");
  nq_cuda__pcopy(c, (char *)dst + prev_off, c->pin[b], prev_n);
  return 0;
}

/* Uploads a F32/BF16/F16 host array of n values as f32 into dst (device); tmp: scratch slot for the 2-byte copy. */
static int nq_cuda__upload_f32(nq_cuda__ctx_t *c, float *dst, const void *src, nq_dtype_t dt, int64_t n, int tmp,
                               nq_err_t *err) {
  if (dt == NQ_DT_F32) return nq_cuda__put(c, dst, src, sizeof(float) * (size_t)n, err);
  void *raw;
  int rc = nq_cuda__scratch(c, tmp, sizeof(uint16_t) * (size_t)n, &raw, err);
  if (!rc) rc = nq_cuda__put(c, raw, src, sizeof(uint16_t) * (size_t)n, err);
  if (rc) return rc;
  NQ_CUDA_TRY((cudaError_t)nq_cuk_widen(c->st, dst, raw, n, dt == NQ_DT_BF16 ? 1 : 2), "widen kernel");
  return 0;
}

static bool nq_cuda__supports(const nq_backend_t *be, const nq_op_desc_t *op) {
  if (!nq_backends__is_host_op(op)) return false;
  switch (op->op) {
    case NQ_OP_LINEAR:
      return op->lin->w.dtype == NQ_DT_F32 || op->lin->w.dtype == NQ_DT_BF16 || op->lin->w.dtype == NQ_DT_F16;
    case NQ_OP_CONV2D: {
      nq_dtype_t dt = op->src[1]->dtype;
      return nq_tensor_is_contiguous(op->src[0]) && nq_tensor_is_contiguous(op->dst) &&
             (dt == NQ_DT_F32 || dt == NQ_DT_BF16 || dt == NQ_DT_F16);
    }
    case NQ_OP_ATTENTION: return true;
    default: return false;
  }
}

/* Linear and conv always (linear weights stay on the device: even an M = 1 step moves only its rows). Attention
 * uploads its K/V caches with every call, so only blocks of many query rows go to the GPU (prefill, the UNet's
 * self-attention); a decode step's one row stays on the host. */
static bool nq_cuda__prefers(const nq_backend_t *be, const nq_op_desc_t *op) {
  if (op->op != NQ_OP_ATTENTION) return true;
  nq_core__rows_t q = nq_core__rows_of(op->src[0]), k = nq_core__rows_of(op->src[1]);
  return q.n >= 16 && (double)q.n * (double)k.n * (double)q.len >= (double)(1 << 22);
}

static void nq_cuda__lin_free(void *p) {
  nq_cuda__lin_t *l = p;
  if (!l) return;
  cudaSetDevice(l->dev);
  cudaFree(l->w);
  cudaFree(l->b);
  free(l);
}

static int nq_cuda__pack_locked(nq_backend_t *be, nq_linear_t *lin, nq_err_t *err) {
  nq_cuda__ctx_t *c = be->ctx;
  if (lin->packed[NQ_BK_CUDA]) return 0;
  const nq_tensor_t *w = &lin->w;
  nq_cuda__lin_t *l = calloc(1, sizeof *l);
  if (!l) return nq_err_set(err, NQ_ENOMEM, 0, "cuda linear pack: out of memory");
  l->dev = c->dev, l->N = w->ne[0], l->K = w->ne[1];
  l->bf16 = c->wbf16 && w->dtype == NQ_DT_BF16;
  int64_t n = l->N * l->K;
  cudaError_t e = cudaMalloc(&l->w, (l->bf16 ? sizeof(uint16_t) : sizeof(float)) * (size_t)n);
  if (e == cudaSuccess && lin->b.data) e = cudaMalloc((void **)&l->b, sizeof(float) * (size_t)l->N);
  int rc = e != cudaSuccess ? nq_cuda__err(err, e, "linear weights allocation") : 0;
  if (!rc && l->bf16) rc = nq_cuda__put(c, l->w, w->data, sizeof(uint16_t) * (size_t)n, err);
  else if (!rc) rc = nq_cuda__upload_f32(c, l->w, w->data, w->dtype, n, NQ_CUDA__T, err);
  if (!rc && l->b) rc = nq_cuda__upload_f32(c, l->b, lin->b.data, NQ_DT_F32, l->N, NQ_CUDA__T, err);
  if (!rc && (e = cudaStreamSynchronize(c->st)) != cudaSuccess) rc = nq_cuda__err(err, e, "linear weights upload");
  if (rc) {
    cudaGetLastError();
    nq_cuda__lin_free(l);
    return rc;
  }
  lin->packed[NQ_BK_CUDA] = l;
  lin->packed_free[NQ_BK_CUDA] = nq_cuda__lin_free;
  return 0;
}

static int nq_cuda__pack(nq_backend_t *be, nq_linear_t *lin, nq_err_t *err) {
  nq_cuda__ctx_t *c = be->ctx;
  pthread_mutex_lock(&c->mu);
  cudaSetDevice(c->dev);
  int rc = nq_cuda__pack_locked(be, lin, err);
  pthread_mutex_unlock(&c->mu);
  return rc;
}

/* Host rows [n, len] (stride) <-> contiguous device rows. */
static int nq_cuda__rows_in(nq_cuda__ctx_t *c, void *dst, const nq_tensor_t *t, nq_core__rows_t r, nq_err_t *err) {
  if (r.stride == r.len) return nq_cuda__put(c, dst, t->data, sizeof(float) * (size_t)(r.n * r.len), err);
  NQ_CUDA_TRY(cudaMemcpy2DAsync(dst, sizeof(float) * (size_t)r.len, t->data, sizeof(float) * (size_t)r.stride,
                                sizeof(float) * (size_t)r.len, (size_t)r.n, cudaMemcpyHostToDevice, c->st),
              "rows upload");
  return 0;
}

static int nq_cuda__rows_out(nq_cuda__ctx_t *c, nq_tensor_t *t, const void *src, nq_core__rows_t r, nq_err_t *err) {
  if (r.stride == r.len) return nq_cuda__get(c, t->data, src, sizeof(float) * (size_t)(r.n * r.len), err);
  NQ_CUDA_TRY(cudaMemcpy2DAsync(t->data, sizeof(float) * (size_t)r.stride, src, sizeof(float) * (size_t)r.len,
                                sizeof(float) * (size_t)r.len, (size_t)r.n, cudaMemcpyDeviceToHost, c->st),
              "rows download");
  NQ_CUDA_TRY(cudaStreamSynchronize(c->st), "stream");
  return 0;
}

/* y[M,N] = x[M,K] . W[N,K]^T + b: row-major y is column-major y^T [N,M], so y^T = W . x^T is one GEMM with W
 * transposed (column-major W is [K,N]): Sgemm, or for BF16 weights GemmEx on x rounded to BF16. */
static int nq_cuda__linear(nq_backend_t *be, const nq_op_desc_t *op, nq_err_t *err) {
  nq_cuda__ctx_t *c = be->ctx;
  int rc = nq_cuda__pack_locked(be, op->lin, err);
  if (rc) return rc;
  const nq_cuda__lin_t *l = op->lin->packed[NQ_BK_CUDA];
  nq_core__rows_t x = nq_core__rows_of(op->src[0]), y = nq_core__rows_of(op->dst);
  float *dx, *dy;
  if ((rc = nq_cuda__scratch(c, NQ_CUDA__X, sizeof(float) * (size_t)(x.n * x.len), (void **)&dx, err)) ||
      (rc = nq_cuda__scratch(c, NQ_CUDA__Y, sizeof(float) * (size_t)(y.n * y.len), (void **)&dy, err)))
    return rc;
  if ((rc = nq_cuda__rows_in(c, dx, op->src[0], x, err))) return rc;
  const float one = 1.0f, zero = 0.0f;
  if (l->bf16) {
    uint16_t *dxb;
    if ((rc = nq_cuda__scratch(c, NQ_CUDA__K, sizeof(uint16_t) * (size_t)(x.n * x.len), (void **)&dxb, err))) return rc;
    NQ_CUDA_TRY((cudaError_t)nq_cuk_to_bf16(c->st, dxb, dx, x.n * x.len), "bf16 kernel");
    NQ_BLAS_TRY(cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)l->N, (int)x.n, (int)l->K, &one, l->w, CUDA_R_16BF,
                             (int)l->K, dxb, CUDA_R_16BF, (int)l->K, &zero, dy, CUDA_R_32F, (int)l->N,
                             CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                "linear bf16 gemm");
  } else {
    NQ_BLAS_TRY(cublasSgemm(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)l->N, (int)x.n, (int)l->K, &one, l->w, (int)l->K,
                            dx, (int)l->K, &zero, dy, (int)l->N),
                "linear sgemm");
  }
  if (l->b) NQ_CUDA_TRY((cudaError_t)nq_cuk_bias_rows(c->st, dy, l->b, x.n, l->N, l->N), "bias kernel");
  return nq_cuda__rows_out(c, op->dst, dy, y, err);
}

/* conv2d as GEMMs per (image, group): 1x1 stride-1 unpadded convs multiply the input planes directly, the rest go
 * through device im2col in row chunks (columns bounded by NQ_CUDA_CHUNK_FLOATS). Row-major Y_g[cog, P] =
 * W_g[cog, K] . col[K, P] is column-major Y_g^T = col^T . W_g^T: Sgemm(N, N, P, cog, K). */
static int nq_cuda__conv2d(nq_backend_t *be, const nq_op_desc_t *op, nq_err_t *err) {
  nq_cuda__ctx_t *c = be->ctx;
  const nq_core__conv_t cv = nq_core__conv_of(op);
  const int64_t K = cv.cig * cv.kh * cv.kw, HW = cv.H * cv.W, HoWo = cv.Ho * cv.Wo;
  const int64_t nx = cv.N * cv.Ci * HW, ny = cv.N * cv.Co * HoWo, nw = cv.Co * K;
  const bool direct = cv.kh == 1 && cv.kw == 1 && cv.sh == 1 && cv.sw == 1 && cv.ph == 0 && cv.pw == 0;
  int64_t rows = direct ? cv.Ho : c->chunk / (K * cv.Wo);
  if (rows < 1) rows = 1;
  if (rows > cv.Ho) rows = cv.Ho;
  float *dx, *dy, *dw, *dcol = NULL, *db = NULL;
  int rc;
  if ((rc = nq_cuda__scratch(c, NQ_CUDA__X, sizeof(float) * (size_t)nx, (void **)&dx, err)) ||
      (rc = nq_cuda__scratch(c, NQ_CUDA__Y, sizeof(float) * (size_t)ny, (void **)&dy, err)) ||
      (rc = nq_cuda__scratch(c, NQ_CUDA__W, sizeof(float) * (size_t)(nw + cv.Co), (void **)&dw, err)) ||
      (!direct && (rc = nq_cuda__scratch(c, NQ_CUDA__K, sizeof(float) * (size_t)(K * rows * cv.Wo), (void **)&dcol, err))))
    return rc;
  if ((rc = nq_cuda__put(c, dx, op->src[0]->data, sizeof(float) * (size_t)nx, err))) return rc;
  if ((rc = nq_cuda__upload_f32(c, dw, op->src[1]->data, op->src[1]->dtype, nw, NQ_CUDA__T, err))) return rc;
  if (op->src[2]) {
    db = dw + nw;
    if ((rc = nq_cuda__upload_f32(c, db, op->src[2]->data, op->src[2]->dtype, cv.Co, NQ_CUDA__V, err))) return rc;
  }
  const float one = 1.0f, zero = 0.0f;
  for (int64_t n = 0; n < cv.N; n++)
    for (int64_t g = 0; g < cv.g; g++) {
      const float *xg = dx + (n * cv.Ci + g * cv.cig) * HW, *wg = dw + g * cv.cog * K;
      float *yg = dy + (n * cv.Co + g * cv.cog) * HoWo;
      if (direct) {
        NQ_BLAS_TRY(cublasSgemm(c->blas, CUBLAS_OP_N, CUBLAS_OP_N, (int)HW, (int)cv.cog, (int)K, &one, xg, (int)HW, wg,
                                (int)K, &zero, yg, (int)HoWo),
                    "conv2d sgemm");
        continue;
      }
      for (int64_t oy0 = 0; oy0 < cv.Ho; oy0 += rows) {
        int64_t r = cv.Ho - oy0 < rows ? cv.Ho - oy0 : rows, P = r * cv.Wo;
        NQ_CUDA_TRY((cudaError_t)nq_cuk_im2col(c->st, dcol, xg, cv.cig, cv.H, cv.W, cv.kh, cv.kw, cv.sh, cv.sw, cv.ph,
                                               cv.pw, cv.dh, cv.dw, cv.Wo, oy0, r),
                    "im2col kernel");
        NQ_BLAS_TRY(cublasSgemm(c->blas, CUBLAS_OP_N, CUBLAS_OP_N, (int)P, (int)cv.cog, (int)K, &one, dcol, (int)P, wg,
                                (int)K, &zero, yg + oy0 * cv.Wo, (int)HoWo),
                    "conv2d sgemm");
      }
    }
  if (db) NQ_CUDA_TRY((cudaError_t)nq_cuk_bias_planes(c->st, dy, db, cv.N, cv.Co, HoWo), "bias kernel");
  return nq_cuda__get(c, op->dst->data, dy, sizeof(float) * (size_t)ny, err);
}

/* Attention per query chunk: for each KV head, one strided-batched Sgemm gives the scores of its query heads
 * (K shared: stride 0), the softmax kernel applies scale, causal limit and normalisation, and a second batched Sgemm
 * multiplies by V. Column-major views of the row-major blocks: scores_h^T [S, Tc] = K_h . Q_h^T, out_h^T [hd, Tc] =
 * V_h^T . P_h^T. */
static int nq_cuda__attention(nq_backend_t *be, const nq_op_desc_t *op, nq_err_t *err) {
  nq_cuda__ctx_t *c = be->ctx;
  nq_core__rows_t q = nq_core__rows_of(op->src[0]), k = nq_core__rows_of(op->src[1]), v = nq_core__rows_of(op->src[2]),
                  y = nq_core__rows_of(op->dst);
  const int64_t H = op->i[0], KV = op->i[1], pos0 = op->i[2], T = q.n, S = k.n, hd = q.len / H, grp = H / KV;
  const int causal = (int)op->i[3];
  int64_t Tc = c->chunk / (H * S);
  if (Tc < 1) Tc = 1;
  if (Tc > T) Tc = T;
  float *dq, *dk, *dv, *dsc, *dout;
  int rc;
  if ((rc = nq_cuda__scratch(c, NQ_CUDA__X, sizeof(float) * (size_t)(T * q.len), (void **)&dq, err)) ||
      (rc = nq_cuda__scratch(c, NQ_CUDA__K, sizeof(float) * (size_t)(S * k.len), (void **)&dk, err)) ||
      (rc = nq_cuda__scratch(c, NQ_CUDA__V, sizeof(float) * (size_t)(S * v.len), (void **)&dv, err)) ||
      (rc = nq_cuda__scratch(c, NQ_CUDA__T, sizeof(float) * (size_t)(H * Tc * S), (void **)&dsc, err)) ||
      (rc = nq_cuda__scratch(c, NQ_CUDA__Y, sizeof(float) * (size_t)(T * y.len), (void **)&dout, err)))
    return rc;
  if ((rc = nq_cuda__rows_in(c, dq, op->src[0], q, err)) || (rc = nq_cuda__rows_in(c, dk, op->src[1], k, err)) ||
      (rc = nq_cuda__rows_in(c, dv, op->src[2], v, err)))
    return rc;
  const float one = 1.0f, zero = 0.0f;
  const int ldq = (int)q.len, ldk = (int)k.len;
  for (int64_t t0 = 0; t0 < T; t0 += Tc) {
    int64_t tc = T - t0 < Tc ? T - t0 : Tc;
    for (int64_t g = 0; g < KV; g++) {
      const float *qh = dq + t0 * q.len + g * grp * hd, *kh = dk + g * hd;
      float *sh = dsc + g * grp * tc * S;
      NQ_BLAS_TRY(cublasSgemmStridedBatched(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)S, (int)tc, (int)hd, &one, kh, ldk,
                                            0, qh, ldq, hd, &zero, sh, (int)S, tc * S, (int)grp),
                  "attention scores");
    }
    NQ_CUDA_TRY((cudaError_t)nq_cuk_attn_softmax(c->st, dsc, H * tc, tc, S, S, op->f[0], causal, pos0, t0),
                "softmax kernel");
    for (int64_t g = 0; g < KV; g++) {
      const float *vh = dv + g * hd, *ph = dsc + g * grp * tc * S;
      float *oh = dout + t0 * q.len + g * grp * hd;
      NQ_BLAS_TRY(cublasSgemmStridedBatched(c->blas, CUBLAS_OP_N, CUBLAS_OP_N, (int)hd, (int)tc, (int)S, &one, vh, ldk,
                                            0, ph, (int)S, tc * S, &zero, oh, ldq, hd, (int)grp),
                  "attention values");
    }
  }
  return nq_cuda__rows_out(c, op->dst, dout, y, err);
}

static int nq_cuda__compute(nq_backend_t *be, const nq_op_desc_t *op, nq_err_t *err) {
  nq_cuda__ctx_t *c = be->ctx;
  pthread_mutex_lock(&c->mu);
  cudaSetDevice(c->dev);
  int rc;
  switch (op->op) {
    case NQ_OP_LINEAR: rc = nq_cuda__linear(be, op, err); break;
    case NQ_OP_CONV2D: rc = nq_cuda__conv2d(be, op, err); break;
    case NQ_OP_ATTENTION: rc = nq_cuda__attention(be, op, err); break;
    default: rc = nq_err_set(err, NQ_EUNSUPPORTED, 0, "cuda: op %s not supported", nq_op_name(op->op)); break;
  }
  if (rc) { /* leave the stream idle and the error state clear for the next op */
    cudaStreamSynchronize(c->st);
    cudaGetLastError();
  }
  pthread_mutex_unlock(&c->mu);
  return rc;
}

static void nq_cuda__free(nq_backend_t *be) {
  nq_cuda__ctx_t *c = be->ctx;
  if (!c) return;
  cudaSetDevice(c->dev);
  if (c->st) cudaStreamSynchronize(c->st);
  for (int i = 0; i < NQ_CUDA__NBUF; i++)
    if (c->buf[i]) cudaFree(c->buf[i]);
  for (int i = 0; i < 2; i++) {
    if (c->pin[i]) cudaFreeHost(c->pin[i]);
    if (c->pin_ev[i]) cudaEventDestroy(c->pin_ev[i]);
  }
  if (c->blas) cublasDestroy(c->blas);
  if (c->st) cudaStreamDestroy(c->st);
  pthread_mutex_destroy(&c->mu);
  free(c);
}

static const nq_backend_i nq_cuda__iface = {
    .name = "cuda",
    .kind = NQ_BK_CUDA,
    .supports_op = nq_cuda__supports,
    .prefers_op = nq_cuda__prefers,
    .compute = nq_cuda__compute,
    .linear_pack = nq_cuda__pack,
    .free = nq_cuda__free,
};

nq_backend_t *nq_backend_cuda_new(nq_pool_t *pool, nq_err_t *err) {
  int n = 0, dev = 0;
  const char *ev = getenv("NQ_CUDA_DEVICE");
  if (ev && *ev) dev = atoi(ev);
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess || n <= 0) {
    cudaGetLastError();
    nq_err_set(err, NQ_EUNSUPPORTED, 0, "backend cuda: no usable GPU (%s)",
               e != cudaSuccess ? cudaGetErrorString(e) : "no device");
    return NULL;
  }
  if (dev < 0 || dev >= n) {
    nq_err_set(err, NQ_EINVAL, 0, "backend cuda: NQ_CUDA_DEVICE=%d but %d GPU(s)", dev, n);
    return NULL;
  }
  nq_cuda__ctx_t *c = calloc(1, sizeof *c);
  if (!c) {
    nq_err_set(err, NQ_ENOMEM, 0, "backend cuda: out of memory");
    return NULL;
  }
  c->dev = dev;
  const char *wm = getenv("NQ_CUDA_WEIGHTS");
  c->wbf16 = !(wm && !strcmp(wm, "f32"));
  const char *ch = getenv("NQ_CUDA_CHUNK_FLOATS");
  c->chunk = ch && atoll(ch) > 0 ? atoll(ch) : NQ_CUDA_CHUNK_FLOATS;
  pthread_mutex_init(&c->mu, NULL);
  cublasStatus_t s = CUBLAS_STATUS_SUCCESS;
  if ((e = cudaSetDevice(dev)) != cudaSuccess || (e = cudaStreamCreateWithFlags(&c->st, cudaStreamNonBlocking)) != cudaSuccess) {
    nq_cuda__err(err, e, "backend start");
  } else if ((s = cublasCreate(&c->blas)) != CUBLAS_STATUS_SUCCESS || (s = cublasSetStream(c->blas, c->st)) != CUBLAS_STATUS_SUCCESS) {
    nq_cuda__blas_err(err, s, "backend start");
  } else {
    /* pinned staging; without it (pinned memory refused) copies go straight from pageable memory */
    c->pool = pool ? pool : nq_pool_default();
    for (int i = 0; i < 2; i++)
      if (cudaMallocHost(&c->pin[i], NQ_CUDA_PIN_BYTES) != cudaSuccess ||
          cudaEventCreateWithFlags(&c->pin_ev[i], cudaEventDisableTiming) != cudaSuccess) {
        cudaGetLastError();
        for (int j = 0; j <= i; j++) {
          if (c->pin[j]) cudaFreeHost(c->pin[j]);
          if (c->pin_ev[j]) cudaEventDestroy(c->pin_ev[j]);
          c->pin[j] = NULL, c->pin_ev[j] = NULL;
        }
        break;
      }
    const char *pe = getenv("NQ_CUDA_PINNED");
    if (pe && *pe == '0')
      for (int j = 0; j < 2; j++) {
        if (c->pin[j]) cudaFreeHost(c->pin[j]);
        if (c->pin_ev[j]) cudaEventDestroy(c->pin_ev[j]);
        c->pin[j] = NULL, c->pin_ev[j] = NULL;
      }
    const char *tf = getenv("NQ_CUDA_TF32");
    cublasSetMathMode(c->blas, tf && *tf == '1' ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH);
    nq_backend_t *be = nq_backends__alloc(&nq_cuda__iface, c, pool ? pool : nq_pool_default(), err);
    if (be) return be;
  }
  nq_backend_t tmp = {.ctx = c};
  nq_cuda__free(&tmp);
  return NULL;
}
#else
nq_backend_t *nq_backend_cuda_new(nq_pool_t *pool, nq_err_t *err) {
  nq_err_set(err, NQ_EUNSUPPORTED, 0, "backend cuda: not built (WITH_CUDA=0: no nvcc when it was built)");
  return NULL;
}
#endif

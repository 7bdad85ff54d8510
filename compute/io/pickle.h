/* compute/io/pickle.h — safe PyTorch checkpoint reader and one "named tensor source" for every weight file.
 *
 * A loader asks for tensors by name and never cares about the file format:
 *
 *   nq_ckpt_t *ck;
 *   if (nq_ckpt_open("imagebind_huge.pth", &ck, err) < 0) return err->code;
 *   const nq_ckpt_tensor_t *t = nq_ckpt_find(ck, "modality_trunks.vision.blocks.0.attn.in_proj_weight");
 *   ... t->dtype, t->ndim, t->shape, t->data (contiguous row-major, t->nbytes bytes) ...
 *   nq_ckpt_close(ck);
 *
 * nq_ckpt_open takes:
 *   - `.safetensors` and `*.safetensors.index.json` (delegated to compute/io/safetensors.h),
 *   - PyTorch `torch.save` files (`.pt/.pth/.bin`, any name): the zip format of torch >= 1.6
 *     (`<top>/data.pkl` + `<top>/data/<key>` storages; the top folder name varies) and the legacy pre-1.6
 *     format (magic-number pickle, protocol pickle, sys-info pickle, the main pickle, the storage-key list
 *     pickle, then each storage as int64 element count + raw little-endian bytes),
 *   - `pytorch_model.bin.index.json` (HF sharded .bin checkpoints, e.g. Vicuna): its shards are merged,
 *   - a directory: the first of model.safetensors.index.json, model.safetensors, pytorch_model.bin.index.json,
 *     pytorch_model.bin found in it.
 * The format is detected from the content (zip magic, pickle PROTO opcode, safetensors header), not the name.
 *
 * Safety. The pickle is run by a restricted unpickler that never executes anything: GLOBAL/STACK_GLOBAL
 * resolve only against a fixed table (torch._utils._rebuild_tensor_v2, _rebuild_tensor, _rebuild_parameter,
 * _rebuild_parameter_with_state, torch._tensor._rebuild_from_type_v2, the torch.*Storage types,
 * torch.Tensor / torch.nn.parameter.Parameter as type tokens, collections.OrderedDict); any other global is
 * refused with an NQ_EUNSUPPORTED error naming it ("refused global 'subprocess.call'"), before the pickle goes
 * any further. Python-2 spellings written by protocol-2 pickles (`commands`, `__builtin__`, `copy_reg`...) are
 * named by their Python-3 module too. Every length, index and count is bounded (nq_pickle_limits_t): strings
 * and storages must lie inside the file, memo indexes and the stack are capped, object memory is capped by an
 * arena limit proportional to the pickle size, container nesting is capped when flattening, and a view must
 * fit inside its storage. A hostile file yields a clear error, never a crash or an absurd allocation.
 *
 * Names. Nested containers flatten to dotted key paths: {"model": {"a.weight": T}, "epoch": 3} gives the
 * tensor "model.a.weight"; list/tuple elements use their index as a path element ("layers.0"). Dict keys
 * that are ints/bools/None use their Python repr. A file that is a bare tensor gives one tensor named
 * "tensor". Non-tensor leaves (ints, floats, strings, None...) are kept as "values" with a short repr
 * (nq_ckpt_value_*) so tools can report them; they are never needed to load weights.
 *
 * Data. Storages are mmapped; a tensor whose view is contiguous and suitably aligned points into the
 * mapping (zero copy), any other view (offset + strides, transposes, shared storages) is materialised into
 * an owned contiguous buffer. All pointers stay valid until nq_ckpt_close. Only stored (uncompressed) zip
 * members are read, as torch writes them; big-endian checkpoints are refused.
 */
#ifndef NQ_COMPUTE_PICKLE_H
#define NQ_COMPUTE_PICKLE_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "compute/core/dtype.h"
#include "compute/io/safetensors.h"

/* ---- limits of the restricted unpickler ------------------------------------------------------------- */

typedef struct nq_pickle_limits {
  size_t max_pickle_bytes;   /* a data.pkl larger than this is refused (default 1 GiB) */
  size_t max_stack;          /* items on the VM stack (default 1 << 22) */
  size_t max_marks;          /* nested MARKs (default 4096) */
  size_t max_memo;           /* highest memo index + 1 (default 1 << 22) */
  size_t max_depth;          /* container nesting when flattening to key paths (default 256) */
  size_t max_tensors;        /* tensors per file (default 1 << 20) */
  size_t arena_base;         /* object memory: arena_base + arena_per_byte * pickle size (default 64 MiB, 32) */
  size_t arena_per_byte;
  size_t max_expand_bytes;   /* an overlapping view (stride 0 etc.) may materialise more elements than its
                                storage holds only up to this many bytes (default 64 MiB) */
} nq_pickle_limits_t;

void nq_pickle_limits_init(nq_pickle_limits_t *lim /* OUT */);

/* Run the restricted unpickler over one pickle stream in memory, without any storage data: persistent ids
 * are checked for shape only. Succeeds when the pickle would load; otherwise the error names the refused
 * global, the bad opcode or the exceeded bound and its byte offset. `lim` may be NULL (defaults). For tests and
 * for vetting a pickle before trusting it. */
int nq_pickle_validate(const void *buf /* borrowed */, size_t n, const nq_pickle_limits_t *lim, nq_err_t *err);

/* ---- the named tensor source ------------------------------------------------------------------------ */

/* Same view as safetensors: name, dtype, ndim, shape, contiguous data, nbytes; all borrowed from the ckpt. */
typedef nq_st_tensor_t nq_ckpt_tensor_t;

typedef enum nq_ckpt_format {
  NQ_CKPT_SAFETENSORS = 0, /* .safetensors or *.safetensors.index.json */
  NQ_CKPT_TORCH_ZIP,       /* torch.save, torch >= 1.6 */
  NQ_CKPT_TORCH_LEGACY,    /* torch.save, pre-1.6 (_use_new_zipfile_serialization=False) */
  NQ_CKPT_TORCH_SHARDED,   /* pytorch_model.bin.index.json */
} nq_ckpt_format_t;

typedef struct nq_ckpt nq_ckpt_t;

/* Open any supported weight file (see the top of this header). On success *out is owned by the caller. */
int nq_ckpt_open(const char *path, nq_ckpt_t **out /* OUT, owned */, nq_err_t *err);
/* Same as nq_ckpt_open with explicit limits (NULL = defaults). */
int nq_ckpt_open_ex(const char *path, const nq_pickle_limits_t *lim, nq_ckpt_t **out /* OUT, owned */, nq_err_t *err);
/* A torch.save image (zip or legacy) already in memory. `buf` is borrowed and must outlive the ckpt; `label`
 * names it in errors. */
int nq_ckpt_open_mem(const void *buf /* borrowed */, size_t n, const char *label, const nq_pickle_limits_t *lim,
                     nq_ckpt_t **out /* OUT, owned */, nq_err_t *err);
void nq_ckpt_close(nq_ckpt_t *ck);

nq_ckpt_format_t nq_ckpt_format(const nq_ckpt_t *ck);
const char *nq_ckpt_format_name(nq_ckpt_format_t f); /* "safetensors", "torch-zip", ... */
size_t nq_ckpt_count(const nq_ckpt_t *ck);
/* In file order (the pickle's order; safetensors: header order). NULL when out of range. */
const nq_ckpt_tensor_t *nq_ckpt_get(const nq_ckpt_t *ck, size_t i);
/* NULL when absent. O(log n). */
const nq_ckpt_tensor_t *nq_ckpt_find(const nq_ckpt_t *ck, const char *name);
/* Find `name` and check dtype and shape (a dim of -1 matches anything); errors name the tensor and both shapes. */
int nq_ckpt_expect(const nq_ckpt_t *ck, const char *name, nq_dtype_t dtype, int ndim, const int64_t *shape,
                   const nq_ckpt_tensor_t **out /* OUT, borrowed */, nq_err_t *err);

/* Non-tensor leaves of a torch checkpoint ("epoch" -> "3", "name" -> "'stage_2'"); none for safetensors.
 * Strings borrowed from the ckpt; NULL when out of range. */
size_t nq_ckpt_value_count(const nq_ckpt_t *ck);
const char *nq_ckpt_value_name(const nq_ckpt_t *ck, size_t i);
const char *nq_ckpt_value_repr(const nq_ckpt_t *ck, size_t i);

#endif

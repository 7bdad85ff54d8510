/* compute/io/pickle.c — restricted unpickler, torch.save readers (zip + legacy) and the nq_ckpt tensor source.
 *
 * Layout:
 *   values      the few Python objects a state dict is made of, allocated in a bounded arena
 *   globals     the allow-list; everything else is refused by name at GLOBAL time
 *   VM          the pickle opcodes (protocol 0 PUT/GET, 2..5); no opcode ever calls anything
 *   zip         a bounds-checked central-directory reader (zip64 aware) over the mmapped file
 *   legacy      the pre-1.6 stream of pickles followed by raw storages
 *   assembly    flatten to dotted key paths, check each view against its storage, materialise views
 *   nq_ckpt     the public named-tensor source (also fronts safetensors and sharded .bin indexes)
 */
#include "compute/io/pickle.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/arena.h"

#define PK_ERR(err, code, ...) nq_err_set((err), (code), NQ_ERR_FATAL, __VA_ARGS__)

void nq_pickle_limits_init(nq_pickle_limits_t *lim) {
  lim->max_pickle_bytes = (size_t)1 << 30;
  lim->max_stack = (size_t)1 << 22;
  lim->max_marks = 4096;
  lim->max_memo = (size_t)1 << 22;
  lim->max_depth = 256;
  lim->max_tensors = (size_t)1 << 20;
  lim->arena_base = (size_t)64 << 20;
  lim->arena_per_byte = 64;
  lim->max_expand_bytes = (size_t)64 << 20;
}

/* ---- values ----------------------------------------------------------------------------------------- */

enum {
  PV_NONE, PV_BOOL, PV_INT, PV_BIGINT, PV_FLOAT, PV_STR, PV_BYTES, PV_TUPLE, PV_LIST, PV_SET, PV_DICT,
  PV_GLOBAL, PV_STORAGE, PV_TENSOR
};

typedef struct pv pv_t;
typedef struct pk_tensor {
  pv_t *storage;     /* borrowed (arena): a PV_STORAGE */
  int64_t offset;    /* elements, relative to the storage view */
  int ndim;
  int64_t shape[NQ_ST_MAX_DIMS], stride[NQ_ST_MAX_DIMS];
} pk_tensor_t;

struct pv {
  int kind;
  int flags; /* PV_F_*: flattening's memo of holds_tensor() */
  union {
    int64_t i;                                      /* BOOL, INT */
    double f;                                       /* FLOAT */
    struct { char *s; size_t n; } str;              /* STR, BYTES (NUL-terminated copy), BIGINT (raw LE) */
    struct { pv_t **v; size_t n, cap; } seq;        /* TUPLE, LIST, SET */
    struct { pv_t **k, **v; size_t n, cap; } dict; /* DICT (insertion order) */
    struct { int id; const char *mod, *name; } g;   /* GLOBAL: allow-list id + spelling */
    struct { size_t idx; int64_t off, numel; } st;  /* STORAGE: registry index, view offset/size (elements) */
    pk_tensor_t *t;                                 /* TENSOR (arena) */
  } u;
};

/* ---- globals ---------------------------------------------------------------------------------------- */

enum {
  G_ODICT = 1, G_REBUILD_V2, G_REBUILD, G_REBUILD_PARAM, G_REBUILD_PARAM_STATE, G_FROM_TYPE_V2, G_TENSOR_TYPE,
  G_STORAGE /* + dtype in pk_global_t.dt */
};

typedef struct pk_global {
  const char *mod, *name;
  int id;
  nq_dtype_t dt; /* for G_STORAGE */
} pk_global_t;

static const pk_global_t pk_globals[] = {
    {"collections", "OrderedDict", G_ODICT, 0},
    {"torch._utils", "_rebuild_tensor_v2", G_REBUILD_V2, 0},
    {"torch._utils", "_rebuild_tensor", G_REBUILD, 0},
    {"torch._utils", "_rebuild_parameter", G_REBUILD_PARAM, 0},
    {"torch._utils", "_rebuild_parameter_with_state", G_REBUILD_PARAM_STATE, 0},
    {"torch._tensor", "_rebuild_from_type_v2", G_FROM_TYPE_V2, 0},
    {"torch", "Tensor", G_TENSOR_TYPE, 0},
    {"torch._tensor", "Tensor", G_TENSOR_TYPE, 0},
    {"torch.nn.parameter", "Parameter", G_TENSOR_TYPE, 0},
    {"torch", "FloatStorage", G_STORAGE, NQ_DT_F32},
    {"torch", "HalfStorage", G_STORAGE, NQ_DT_F16},
    {"torch", "BFloat16Storage", G_STORAGE, NQ_DT_BF16},
    {"torch", "DoubleStorage", G_STORAGE, NQ_DT_F64},
    {"torch", "LongStorage", G_STORAGE, NQ_DT_I64},
    {"torch", "IntStorage", G_STORAGE, NQ_DT_I32},
    {"torch", "ShortStorage", G_STORAGE, NQ_DT_I16},
    {"torch", "CharStorage", G_STORAGE, NQ_DT_I8},
    {"torch", "ByteStorage", G_STORAGE, NQ_DT_U8},
    {"torch", "BoolStorage", G_STORAGE, NQ_DT_BOOL},
    {"torch", "UntypedStorage", G_STORAGE, NQ_DT_U8},
};

/* Python 2 module spellings that protocol <= 2 pickles carry (pickle's fix_imports maps them back). Used to
 * name a refused global as Python 3 would resolve it: "commands.call" is subprocess.call. */
static const char *const pk_py2_modules[][2] = {
    {"__builtin__", "builtins"}, {"exceptions", "builtins"}, {"copy_reg", "copyreg"}, {"commands", "subprocess"},
    {"cPickle", "pickle"},       {"Queue", "queue"},          {"thread", "_thread"}, {"UserDict", "collections"},
    {"cStringIO", "io"},         {"StringIO", "io"},          {"urllib2", "urllib.request"}, {"repr", "reprlib"},
    {"SocketServer", "socketserver"}, {"ConfigParser", "configparser"}, {"httplib", "http.client"},
};

static const pk_global_t *pk_global_find(const char *mod, const char *name) {
  for (size_t i = 0; i < sizeof pk_globals / sizeof pk_globals[0]; i++)
    if (!strcmp(pk_globals[i].mod, mod) && !strcmp(pk_globals[i].name, name)) return &pk_globals[i];
  return NULL;
}

/* ---- VM --------------------------------------------------------------------------------------------- */

typedef struct pk_storage {
  char *key;                 /* arena */
  nq_dtype_t dt;
  int64_t numel;             /* elements declared by the persistent id */
  const unsigned char *data; /* borrowed (mapping); NULL until resolved */
  int64_t avail;             /* elements actually present at data */
} pk_storage_t;

typedef struct pk_vm {
  const nq_pickle_limits_t *lim;
  const char *where;         /* "file.pt: archive/data.pkl" for messages */
  nq_arena_t arena;          /* owned: every pv_t and string */
  const unsigned char *buf;  /* borrowed: the pickle bytes */
  size_t n, pos, op;         /* op: offset of the current opcode */
  pv_t **stack;              /* owned */
  size_t sp, scap;
  size_t *marks;             /* owned */
  size_t nmarks, mcap;
  pv_t **memo;               /* owned, max_memo bound */
  size_t nmemo;              /* slots allocated */
  size_t memo_used;          /* slots set (MEMOIZE's index, as Python's len(memo)) */
  bool legacy;               /* persistent ids may carry view metadata; 'module' ids exist */
  pk_storage_t *st;          /* owned registry */
  size_t nst, stcap;
  size_t *sth;               /* owned open-addressing hash: key -> st index + 1 */
  size_t sthcap;
  size_t nobjects;           /* objects created (bounds flattening visits) */
  nq_err_t *err;
} pk_vm_t;

static pv_t pk_none = {.kind = PV_NONE}, pk_true = {.kind = PV_BOOL, .u.i = 1}, pk_false = {.kind = PV_BOOL, .u.i = 0},
            pk_empty_tuple = {.kind = PV_TUPLE};

static int vm_fail(pk_vm_t *vm, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int vm_fail(pk_vm_t *vm, int code, const char *fmt, ...) {
  char msg[200];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  return PK_ERR(vm->err, code, "%s byte %zu: %s", vm->where, vm->op, msg);
}

static void *vm_alloc(pk_vm_t *vm, size_t size) {
  void *p = nq_arena_alloc(&vm->arena, size, 8);
  if (p) memset(p, 0, size);
  return p;
}

static pv_t *vm_new(pk_vm_t *vm, int kind) {
  pv_t *v = vm_alloc(vm, sizeof *v);
  if (!v) {
    vm_fail(vm, NQ_ELIMIT, "object memory limit (%zu bytes) exceeded", vm->arena.limit);
    return NULL;
  }
  v->kind = kind;
  vm->nobjects++;
  return v;
}

static const char *vm_kind_name(int k) {
  static const char *const names[] = {"None", "bool", "int", "int", "float", "str", "bytes", "tuple", "list",
                                      "set", "dict", "global", "storage", "tensor"};
  return k >= 0 && k <= PV_TENSOR ? names[k] : "?";
}

static int vm_push(pk_vm_t *vm, pv_t *v) {
  if (!v) return NQ_ELIMIT; /* vm_new already set the error */
  if (vm->sp == vm->scap) {
    if (vm->scap >= vm->lim->max_stack) return vm_fail(vm, NQ_ELIMIT, "stack deeper than %zu items", vm->lim->max_stack);
    size_t nc = vm->scap ? vm->scap * 2 : 256;
    if (nc > vm->lim->max_stack) nc = vm->lim->max_stack;
    pv_t **ns = realloc(vm->stack, nc * sizeof *ns);
    if (!ns) return vm_fail(vm, NQ_ENOMEM, "out of memory (stack)");
    vm->stack = ns;
    vm->scap = nc;
  }
  vm->stack[vm->sp++] = v;
  return 0;
}

static pv_t *vm_pop(pk_vm_t *vm) {
  size_t floor = vm->nmarks ? vm->marks[vm->nmarks - 1] : 0;
  if (vm->sp <= floor) {
    vm_fail(vm, NQ_EFORMAT, "stack underflow");
    return NULL;
  }
  return vm->stack[--vm->sp];
}

static pv_t *vm_top(pk_vm_t *vm) {
  size_t floor = vm->nmarks ? vm->marks[vm->nmarks - 1] : 0;
  if (vm->sp <= floor) {
    vm_fail(vm, NQ_EFORMAT, "stack underflow");
    return NULL;
  }
  return vm->stack[vm->sp - 1];
}

/* Pops to the last MARK; *first = index of the first item above it. */
static int vm_pop_mark(pk_vm_t *vm, size_t *first) {
  if (!vm->nmarks) return vm_fail(vm, NQ_EFORMAT, "no MARK on the stack");
  *first = vm->marks[--vm->nmarks];
  return 0;
}

static int vm_need(pk_vm_t *vm, size_t k) {
  if (k > vm->n - vm->pos) return vm_fail(vm, NQ_EFORMAT, "truncated: opcode needs %zu more bytes, %zu left", k, vm->n - vm->pos);
  return 0;
}

static uint64_t rd_le(const unsigned char *p, int k) {
  uint64_t x = 0;
  for (int i = k - 1; i >= 0; i--) x = (x << 8) | p[i];
  return x;
}

static int seq_append(pk_vm_t *vm, pv_t *s, pv_t *x) {
  if (s->u.seq.n == s->u.seq.cap) {
    size_t nc = s->u.seq.cap ? s->u.seq.cap * 2 : 4;
    pv_t **nv = nq_arena_alloc(&vm->arena, nc * sizeof *nv, 8);
    if (!nv) return vm_fail(vm, NQ_ELIMIT, "object memory limit (%zu bytes) exceeded", vm->arena.limit);
    if (s->u.seq.n) memcpy(nv, s->u.seq.v, s->u.seq.n * sizeof *nv);
    s->u.seq.v = nv;
    s->u.seq.cap = nc;
  }
  s->u.seq.v[s->u.seq.n++] = x;
  return 0;
}

/* Python dict semantics for the key types that occur: a repeated str/int key replaces the value. */
static bool pv_key_eq(const pv_t *a, const pv_t *b) {
  if (a == b) return true;
  bool ai = a->kind == PV_INT || a->kind == PV_BOOL, bi = b->kind == PV_INT || b->kind == PV_BOOL;
  if (ai && bi) return a->u.i == b->u.i;
  if (a->kind != b->kind) return false;
  if (a->kind == PV_STR || a->kind == PV_BYTES) return a->u.str.n == b->u.str.n && !memcmp(a->u.str.s, b->u.str.s, a->u.str.n);
  return a->kind == PV_NONE;
}

static int dict_set(pk_vm_t *vm, pv_t *d, pv_t *k, pv_t *v) {
  /* replacing is only checked against the last few keys: enough for torch's writer, and keeps SETITEMS linear;
   * a duplicate further back shows up later as "tensor name appears twice". */
  for (size_t i = d->u.dict.n, c = 0; i > 0 && c < 8; i--, c++)
    if (pv_key_eq(d->u.dict.k[i - 1], k)) {
      d->u.dict.v[i - 1] = v;
      return 0;
    }
  if (d->u.dict.n == d->u.dict.cap) {
    size_t nc = d->u.dict.cap ? d->u.dict.cap * 2 : 4;
    pv_t **nk = nq_arena_alloc(&vm->arena, nc * sizeof *nk, 8), **nv = nq_arena_alloc(&vm->arena, nc * sizeof *nv, 8);
    if (!nk || !nv) return vm_fail(vm, NQ_ELIMIT, "object memory limit (%zu bytes) exceeded", vm->arena.limit);
    if (d->u.dict.n) {
      memcpy(nk, d->u.dict.k, d->u.dict.n * sizeof *nk);
      memcpy(nv, d->u.dict.v, d->u.dict.n * sizeof *nv);
    }
    d->u.dict.k = nk;
    d->u.dict.v = nv;
    d->u.dict.cap = nc;
  }
  d->u.dict.k[d->u.dict.n] = k;
  d->u.dict.v[d->u.dict.n++] = v;
  return 0;
}

static pv_t *vm_str(pk_vm_t *vm, int kind, const unsigned char *p, size_t len) {
  pv_t *v = vm_new(vm, kind);
  if (!v) return NULL;
  char *s = nq_arena_alloc(&vm->arena, len + 1, 1);
  if (!s) {
    vm_fail(vm, NQ_ELIMIT, "object memory limit (%zu bytes) exceeded", vm->arena.limit);
    return NULL;
  }
  if (len) memcpy(s, p, len);
  s[len] = 0;
  v->u.str.s = s;
  v->u.str.n = len;
  return v;
}

/* Length-prefixed string/bytes opcodes: the length must lie inside the pickle (no allocation before that). */
static int op_lenstr(pk_vm_t *vm, int kind, int lenbytes, bool is_signed) {
  if (vm_need(vm, (size_t)lenbytes)) return NQ_EFORMAT;
  uint64_t len = rd_le(vm->buf + vm->pos, lenbytes);
  if (is_signed && lenbytes == 4 && (len & 0x80000000u)) return vm_fail(vm, NQ_EFORMAT, "negative string length");
  vm->pos += (size_t)lenbytes;
  if (len > vm->n - vm->pos)
    return vm_fail(vm, NQ_EFORMAT, "string length %llu exceeds the %zu bytes left", (unsigned long long)len, vm->n - vm->pos);
  pv_t *v = vm_str(vm, kind, vm->buf + vm->pos, (size_t)len);
  vm->pos += (size_t)len;
  return vm_push(vm, v);
}

static int vm_memo_put(pk_vm_t *vm, size_t idx) {
  pv_t *top = vm_top(vm);
  if (!top) return NQ_EFORMAT;
  if (idx >= vm->lim->max_memo) return vm_fail(vm, NQ_ELIMIT, "memo index %zu over the limit %zu", idx, vm->lim->max_memo);
  if (idx >= vm->nmemo) {
    size_t nc = vm->nmemo ? vm->nmemo : 64;
    while (nc <= idx) nc *= 2;
    if (nc > vm->lim->max_memo) nc = vm->lim->max_memo;
    pv_t **nm = realloc(vm->memo, nc * sizeof *nm);
    if (!nm) return vm_fail(vm, NQ_ENOMEM, "out of memory (memo)");
    memset(nm + vm->nmemo, 0, (nc - vm->nmemo) * sizeof *nm);
    vm->memo = nm;
    vm->nmemo = nc;
  }
  if (!vm->memo[idx]) vm->memo_used++;
  vm->memo[idx] = top;
  return 0;
}

static int vm_memo_get(pk_vm_t *vm, size_t idx) {
  if (idx >= vm->nmemo || !vm->memo[idx]) return vm_fail(vm, NQ_EFORMAT, "memo index %zu was never stored", idx);
  return vm_push(vm, vm->memo[idx]);
}

static int vm_line(pk_vm_t *vm, const char **s, size_t *len) {
  const unsigned char *p = vm->buf + vm->pos, *nl = memchr(p, '\n', vm->n - vm->pos);
  if (!nl) return vm_fail(vm, NQ_EFORMAT, "truncated: unterminated text argument");
  *s = (const char *)p;
  *len = (size_t)(nl - p);
  vm->pos += *len + 1;
  return 0;
}

static int vm_global(pk_vm_t *vm, const char *mod, size_t mlen, const char *name, size_t nlen) {
  char m[128], nm[128];
  snprintf(m, sizeof m, "%.*s", (int)(mlen < 127 ? mlen : 127), mod);
  snprintf(nm, sizeof nm, "%.*s", (int)(nlen < 127 ? nlen : 127), name);
  const pk_global_t *g = (mlen < 127 && nlen < 127 && !memchr(mod, 0, mlen) && !memchr(name, 0, nlen)) ? pk_global_find(m, nm) : NULL;
  if (!g) {
    for (size_t i = 0; i < sizeof pk_py2_modules / sizeof pk_py2_modules[0]; i++)
      if (!strcmp(m, pk_py2_modules[i][0]))
        return vm_fail(vm, NQ_EUNSUPPORTED,
                       "refused global '%s.%s' (pickled as '%s.%s'): only tensor-rebuilding globals are allowed; nothing was executed",
                       pk_py2_modules[i][1], nm, m, nm);
    return vm_fail(vm, NQ_EUNSUPPORTED, "refused global '%s.%s': only tensor-rebuilding globals are allowed; nothing was executed", m, nm);
  }
  pv_t *v = vm_new(vm, PV_GLOBAL);
  if (!v) return NQ_ELIMIT;
  v->u.g.id = g->id;
  v->u.g.mod = g->mod;
  v->u.g.name = g->name;
  return vm_push(vm, v);
}

/* ---- storages and tensors ---- */

static uint64_t str_hash(const char *s) {
  uint64_t h = 1469598103934665603ull;
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
  return h;
}

static pk_storage_t *vm_storage_lookup(pk_vm_t *vm, const char *key) {
  if (!vm->sthcap) return NULL;
  for (size_t i = str_hash(key) & (vm->sthcap - 1);; i = (i + 1) & (vm->sthcap - 1)) {
    if (!vm->sth[i]) return NULL;
    if (!strcmp(vm->st[vm->sth[i] - 1].key, key)) return &vm->st[vm->sth[i] - 1];
  }
}

static int vm_storage_add(pk_vm_t *vm, const char *key, nq_dtype_t dt, int64_t numel, size_t *idx) {
  pk_storage_t *s = vm_storage_lookup(vm, key);
  if (s) {
    if (s->dt != dt) return vm_fail(vm, NQ_EFORMAT, "storage '%s' used as %s and %s", key, nq_dtype_name(s->dt), nq_dtype_name(dt));
    if (numel > s->numel) s->numel = numel;
    *idx = (size_t)(s - vm->st);
    return 0;
  }
  if (vm->nst >= vm->lim->max_tensors) return vm_fail(vm, NQ_ELIMIT, "more than %zu storages", vm->lim->max_tensors);
  if (vm->nst == vm->stcap) {
    size_t nc = vm->stcap ? vm->stcap * 2 : 64;
    pk_storage_t *ns = realloc(vm->st, nc * sizeof *ns);
    if (!ns) return vm_fail(vm, NQ_ENOMEM, "out of memory (storages)");
    vm->st = ns;
    vm->stcap = nc;
  }
  if ((vm->nst + 1) * 2 > vm->sthcap) {
    size_t nc = vm->sthcap ? vm->sthcap * 2 : 128;
    size_t *nh = calloc(nc, sizeof *nh);
    if (!nh) return vm_fail(vm, NQ_ENOMEM, "out of memory (storages)");
    for (size_t i = 0; i < vm->nst; i++) {
      size_t j = str_hash(vm->st[i].key) & (nc - 1);
      while (nh[j]) j = (j + 1) & (nc - 1);
      nh[j] = i + 1;
    }
    free(vm->sth);
    vm->sth = nh;
    vm->sthcap = nc;
  }
  pk_storage_t *ns = &vm->st[vm->nst];
  memset(ns, 0, sizeof *ns);
  ns->key = nq_arena_strdup(&vm->arena, key);
  if (!ns->key) return vm_fail(vm, NQ_ELIMIT, "object memory limit exceeded");
  ns->dt = dt;
  ns->numel = numel;
  size_t j = str_hash(key) & (vm->sthcap - 1);
  while (vm->sth[j]) j = (j + 1) & (vm->sthcap - 1);
  vm->sth[j] = ++vm->nst;
  *idx = vm->nst - 1;
  return 0;
}

/* Storage counts must stay far from overflow when multiplied by an element size and summed with offsets. */
#define PK_MAX_NUMEL ((int64_t)1 << 58)

/* BINPERSID: ('storage', StorageType, key, location, numel[, view_metadata]) */
static int vm_persid(pk_vm_t *vm) {
  pv_t *pid = vm_pop(vm);
  if (!pid) return NQ_EFORMAT;
  if (pid->kind != PV_TUPLE || pid->u.seq.n < 1 || pid->u.seq.v[0]->kind != PV_STR)
    return vm_fail(vm, NQ_EFORMAT, "persistent id is not a ('storage', ...) tuple");
  pv_t **a = pid->u.seq.v;
  if (!strcmp(a[0]->u.str.s, "module"))
    return vm_fail(vm, NQ_EUNSUPPORTED, "checkpoint pickles a whole nn.Module (legacy 'module' record), not a state dict: refused");
  if (strcmp(a[0]->u.str.s, "storage")) return vm_fail(vm, NQ_EUNSUPPORTED, "persistent id of unknown type '%.60s'", a[0]->u.str.s);
  size_t n = pid->u.seq.n;
  if (n != 5 && !(vm->legacy && n == 6))
    return vm_fail(vm, NQ_EFORMAT, "storage persistent id has %zu fields (expected %s)", n, vm->legacy ? "5 or 6" : "5");
  if (a[1]->kind != PV_GLOBAL || a[1]->u.g.id != G_STORAGE) return vm_fail(vm, NQ_EFORMAT, "storage persistent id without a storage type");
  const pk_global_t *g = pk_global_find(a[1]->u.g.mod, a[1]->u.g.name);
  if (a[2]->kind != PV_STR || a[2]->u.str.n == 0 || a[2]->u.str.n > 256 || strchr(a[2]->u.str.s, '/'))
    return vm_fail(vm, NQ_EFORMAT, "storage key is not a short string");
  if (a[4]->kind != PV_INT || a[4]->u.i < 0 || a[4]->u.i > PK_MAX_NUMEL)
    return vm_fail(vm, NQ_EFORMAT, "storage '%s': bad element count", a[2]->u.str.s);
  size_t idx = 0;
  int rc = vm_storage_add(vm, a[2]->u.str.s, g->dt, a[4]->u.i, &idx);
  if (rc) return rc;
  pv_t *v = vm_new(vm, PV_STORAGE);
  if (!v) return NQ_ELIMIT;
  v->u.st.idx = idx;
  v->u.st.off = 0;
  v->u.st.numel = a[4]->u.i;
  if (n == 6 && a[5]->kind != PV_NONE) { /* legacy view: (view_key, offset, size) into the root storage */
    pv_t *vmd = a[5];
    if (vmd->kind != PV_TUPLE || vmd->u.seq.n != 3 || vmd->u.seq.v[1]->kind != PV_INT || vmd->u.seq.v[2]->kind != PV_INT)
      return vm_fail(vm, NQ_EFORMAT, "storage '%s': bad view metadata", a[2]->u.str.s);
    int64_t off = vmd->u.seq.v[1]->u.i, sz = vmd->u.seq.v[2]->u.i;
    if (off < 0 || sz < 0 || off > a[4]->u.i || sz > a[4]->u.i - off)
      return vm_fail(vm, NQ_EFORMAT, "storage '%s': view [%lld, +%lld) outside its %lld elements", a[2]->u.str.s, (long long)off,
                     (long long)sz, (long long)a[4]->u.i);
    v->u.st.off = off;
    v->u.st.numel = sz;
  }
  return vm_push(vm, v);
}

static int int_tuple(pk_vm_t *vm, const pv_t *t, int64_t *out, int *n, const char *what) {
  if (t->kind != PV_TUPLE && t->kind != PV_LIST) return vm_fail(vm, NQ_EFORMAT, "tensor %s is a %s, not a tuple", what, vm_kind_name(t->kind));
  if (t->u.seq.n > NQ_ST_MAX_DIMS) return vm_fail(vm, NQ_ELIMIT, "tensor with %zu dims (max %d)", t->u.seq.n, NQ_ST_MAX_DIMS);
  for (size_t i = 0; i < t->u.seq.n; i++) {
    const pv_t *x = t->u.seq.v[i];
    if (x->kind != PV_INT || x->u.i < 0 || x->u.i > PK_MAX_NUMEL) return vm_fail(vm, NQ_EFORMAT, "tensor %s[%zu] is not a small non-negative int", what, i);
    out[i] = x->u.i;
  }
  *n = (int)t->u.seq.n;
  return 0;
}

static int vm_call(pk_vm_t *vm, const pv_t *fn, const pv_t *args, pv_t **res);

static int vm_rebuild_tensor(pk_vm_t *vm, const pv_t *args, pv_t **res) {
  pv_t **a = args->u.seq.v;
  if (a[0]->kind != PV_STORAGE) return vm_fail(vm, NQ_EFORMAT, "_rebuild_tensor: first argument is a %s, not a storage", vm_kind_name(a[0]->kind));
  if (a[1]->kind != PV_INT || a[1]->u.i < 0 || a[1]->u.i > PK_MAX_NUMEL) return vm_fail(vm, NQ_EFORMAT, "_rebuild_tensor: bad storage offset");
  pk_tensor_t *t = vm_alloc(vm, sizeof *t);
  pv_t *v = t ? vm_new(vm, PV_TENSOR) : NULL;
  if (!v) return t ? NQ_ELIMIT : vm_fail(vm, NQ_ELIMIT, "object memory limit exceeded");
  t->storage = a[0];
  t->offset = a[1]->u.i;
  int ns, nst;
  int rc = int_tuple(vm, a[2], t->shape, &ns, "size");
  if (!rc) rc = int_tuple(vm, a[3], t->stride, &nst, "stride");
  if (rc) return rc;
  if (ns != nst) return vm_fail(vm, NQ_EFORMAT, "tensor size has %d dims but stride has %d", ns, nst);
  t->ndim = ns;
  v->u.t = t;
  *res = v;
  return 0;
}

static int vm_call(pk_vm_t *vm, const pv_t *fn, const pv_t *args, pv_t **res) {
  if (fn->kind != PV_GLOBAL) return vm_fail(vm, NQ_EFORMAT, "REDUCE on a %s, not a callable", vm_kind_name(fn->kind));
  if (args->kind != PV_TUPLE) return vm_fail(vm, NQ_EFORMAT, "REDUCE arguments are a %s, not a tuple", vm_kind_name(args->kind));
  size_t n = args->u.seq.n;
  pv_t **a = args->u.seq.v;
  switch (fn->u.g.id) {
  case G_ODICT: {
    pv_t *d = vm_new(vm, PV_DICT);
    if (!d) return NQ_ELIMIT;
    if (n == 1 && (a[0]->kind == PV_LIST || a[0]->kind == PV_TUPLE)) { /* OrderedDict([(k, v), ...]) */
      for (size_t i = 0; i < a[0]->u.seq.n; i++) {
        pv_t *p = a[0]->u.seq.v[i];
        if ((p->kind != PV_TUPLE && p->kind != PV_LIST) || p->u.seq.n != 2) return vm_fail(vm, NQ_EFORMAT, "OrderedDict item is not a pair");
        int rc = dict_set(vm, d, p->u.seq.v[0], p->u.seq.v[1]);
        if (rc) return rc;
      }
    } else if (n != 0)
      return vm_fail(vm, NQ_EFORMAT, "OrderedDict called with %zu arguments", n);
    *res = d;
    return 0;
  }
  case G_REBUILD_V2:
    if (n != 6 && n != 7) return vm_fail(vm, NQ_EFORMAT, "_rebuild_tensor_v2 called with %zu arguments (expected 6 or 7)", n);
    return vm_rebuild_tensor(vm, args, res);
  case G_REBUILD:
    if (n != 4) return vm_fail(vm, NQ_EFORMAT, "_rebuild_tensor called with %zu arguments (expected 4)", n);
    return vm_rebuild_tensor(vm, args, res);
  case G_REBUILD_PARAM:
  case G_REBUILD_PARAM_STATE:
    if (n != 3 && n != 4) return vm_fail(vm, NQ_EFORMAT, "%s called with %zu arguments", fn->u.g.name, n);
    if (a[0]->kind != PV_TENSOR) return vm_fail(vm, NQ_EFORMAT, "%s: data is a %s, not a tensor", fn->u.g.name, vm_kind_name(a[0]->kind));
    *res = a[0];
    return 0;
  case G_FROM_TYPE_V2: /* (func, new_type, args, state): only plain tensor/Parameter types */
    if (n != 4) return vm_fail(vm, NQ_EFORMAT, "_rebuild_from_type_v2 called with %zu arguments", n);
    if (a[1]->kind != PV_GLOBAL || a[1]->u.g.id != G_TENSOR_TYPE) return vm_fail(vm, NQ_EUNSUPPORTED, "_rebuild_from_type_v2 with a tensor subclass");
    if (a[0]->kind != PV_GLOBAL || a[0]->u.g.id == G_FROM_TYPE_V2) return vm_fail(vm, NQ_EFORMAT, "_rebuild_from_type_v2: bad function");
    return vm_call(vm, a[0], a[2], res);
  default:
    return vm_fail(vm, NQ_EFORMAT, "'%s.%s' is not callable here", fn->u.g.mod, fn->u.g.name);
  }
}

/* Runs one pickle from vm->pos to its STOP; *out = the result. */
static int vm_run(pk_vm_t *vm, pv_t **out) {
  int rc = 0;
  vm->sp = 0;
  vm->nmarks = 0;
  for (size_t i = 0; i < vm->nmemo; i++) vm->memo[i] = NULL; /* each pickle has its own memo */
  vm->memo_used = 0;
  for (;;) {
    vm->op = vm->pos;
    if (vm->pos >= vm->n) return vm_fail(vm, NQ_EFORMAT, "truncated: pickle ends without STOP");
    unsigned char op = vm->buf[vm->pos++];
    switch (op) {
    case 0x80: /* PROTO */
      if ((rc = vm_need(vm, 1))) return rc;
      if (vm->buf[vm->pos] > 5) return vm_fail(vm, NQ_EUNSUPPORTED, "pickle protocol %d", vm->buf[vm->pos]);
      vm->pos++;
      break;
    case 0x95: /* FRAME: a hint only */
      if ((rc = vm_need(vm, 8))) return rc;
      if (rd_le(vm->buf + vm->pos, 8) > vm->n - vm->pos - 8) return vm_fail(vm, NQ_EFORMAT, "frame longer than the pickle");
      vm->pos += 8;
      break;
    case '.': { /* STOP */
      pv_t *r = vm_pop(vm);
      if (!r) return NQ_EFORMAT;
      *out = r;
      return 0;
    }
    case 'c': { /* GLOBAL "module\nname\n" */
      const char *m, *nm;
      size_t ml, nl;
      if ((rc = vm_line(vm, &m, &ml)) || (rc = vm_line(vm, &nm, &nl))) return rc;
      if ((rc = vm_global(vm, m, ml, nm, nl))) return rc;
      break;
    }
    case 0x93: { /* STACK_GLOBAL */
      pv_t *nm = vm_pop(vm), *m = nm ? vm_pop(vm) : NULL;
      if (!m) return NQ_EFORMAT;
      if (m->kind != PV_STR || nm->kind != PV_STR) return vm_fail(vm, NQ_EFORMAT, "STACK_GLOBAL on non-strings");
      if ((rc = vm_global(vm, m->u.str.s, m->u.str.n, nm->u.str.s, nm->u.str.n))) return rc;
      break;
    }
    case 'q': /* BINPUT */
      if ((rc = vm_need(vm, 1))) return rc;
      rc = vm_memo_put(vm, vm->buf[vm->pos++]);
      break;
    case 'r': /* LONG_BINPUT */
      if ((rc = vm_need(vm, 4))) return rc;
      rc = vm_memo_put(vm, (size_t)rd_le(vm->buf + vm->pos, 4));
      vm->pos += 4;
      break;
    case 0x94: /* MEMOIZE: index = len(memo) */
      rc = vm_memo_put(vm, vm->memo_used);
      break;
    case 'p': case 'g': { /* PUT / GET (protocol 0): decimal index line */
      const char *s;
      size_t l;
      if ((rc = vm_line(vm, &s, &l))) return rc;
      size_t idx = 0;
      if (l == 0 || l > 10) return vm_fail(vm, NQ_EFORMAT, "bad memo index text");
      for (size_t i = 0; i < l; i++) {
        if (s[i] < '0' || s[i] > '9') return vm_fail(vm, NQ_EFORMAT, "bad memo index text");
        idx = idx * 10 + (size_t)(s[i] - '0');
      }
      rc = op == 'p' ? vm_memo_put(vm, idx) : vm_memo_get(vm, idx);
      break;
    }
    case 'h': /* BINGET */
      if ((rc = vm_need(vm, 1))) return rc;
      rc = vm_memo_get(vm, vm->buf[vm->pos++]);
      break;
    case 'j': /* LONG_BINGET */
      if ((rc = vm_need(vm, 4))) return rc;
      rc = vm_memo_get(vm, (size_t)rd_le(vm->buf + vm->pos, 4));
      vm->pos += 4;
      break;
    case '(': /* MARK */
      if (vm->nmarks >= vm->lim->max_marks) return vm_fail(vm, NQ_ELIMIT, "more than %zu nested MARKs", vm->lim->max_marks);
      if (vm->nmarks == vm->mcap) {
        size_t nc = vm->mcap ? vm->mcap * 2 : 32;
        size_t *nm = realloc(vm->marks, nc * sizeof *nm);
        if (!nm) return vm_fail(vm, NQ_ENOMEM, "out of memory (marks)");
        vm->marks = nm;
        vm->mcap = nc;
      }
      vm->marks[vm->nmarks++] = vm->sp;
      break;
    case '0': /* POP */
      if (!vm_pop(vm)) return NQ_EFORMAT;
      break;
    case '1': { /* POP_MARK */
      size_t first = 0;
      if ((rc = vm_pop_mark(vm, &first))) return rc;
      vm->sp = first;
      break;
    }
    case '2': { /* DUP */
      pv_t *t = vm_top(vm);
      if (!t) return NQ_EFORMAT;
      rc = vm_push(vm, t);
      break;
    }
    case 'N': rc = vm_push(vm, &pk_none); break;
    case 0x88: rc = vm_push(vm, &pk_true); break;
    case 0x89: rc = vm_push(vm, &pk_false); break;
    case ')': rc = vm_push(vm, &pk_empty_tuple); break;
    case '}': rc = vm_push(vm, vm_new(vm, PV_DICT)); break;
    case ']': rc = vm_push(vm, vm_new(vm, PV_LIST)); break;
    case 0x8f: rc = vm_push(vm, vm_new(vm, PV_SET)); break;
    case 'J': case 'K': case 'M': { /* BININT (signed 4), BININT1, BININT2 */
      int k = op == 'J' ? 4 : op == 'K' ? 1 : 2;
      if ((rc = vm_need(vm, (size_t)k))) return rc;
      uint64_t x = rd_le(vm->buf + vm->pos, k);
      vm->pos += (size_t)k;
      pv_t *v = vm_new(vm, PV_INT);
      if (v) v->u.i = op == 'J' ? (int64_t)(int32_t)(uint32_t)x : (int64_t)x;
      rc = vm_push(vm, v);
      break;
    }
    case 0x8a: case 0x8b: { /* LONG1, LONG4: little-endian two's complement */
      int k = op == 0x8a ? 1 : 4;
      if ((rc = vm_need(vm, (size_t)k))) return rc;
      uint64_t len = rd_le(vm->buf + vm->pos, k);
      if (k == 4 && (len & 0x80000000u)) return vm_fail(vm, NQ_EFORMAT, "negative LONG4 length");
      vm->pos += (size_t)k;
      if (len > vm->n - vm->pos) return vm_fail(vm, NQ_EFORMAT, "integer of %llu bytes exceeds the pickle", (unsigned long long)len);
      const unsigned char *p = vm->buf + vm->pos;
      vm->pos += (size_t)len;
      pv_t *v;
      if (len <= 8) {
        v = vm_new(vm, PV_INT);
        if (v) {
          uint64_t x = len ? rd_le(p, (int)len) : 0;
          if (len && len < 8 && (p[len - 1] & 0x80)) x |= ~(uint64_t)0 << (8 * len);
          v->u.i = (int64_t)x;
        }
      } else
        v = vm_str(vm, PV_BIGINT, p, (size_t)len);
      rc = vm_push(vm, v);
      break;
    }
    case 'G': { /* BINFLOAT: big-endian double */
      if ((rc = vm_need(vm, 8))) return rc;
      uint64_t x = 0;
      for (int i = 0; i < 8; i++) x = (x << 8) | vm->buf[vm->pos + (size_t)i];
      vm->pos += 8;
      pv_t *v = vm_new(vm, PV_FLOAT);
      if (v) memcpy(&v->u.f, &x, 8);
      rc = vm_push(vm, v);
      break;
    }
    case 0x8c: rc = op_lenstr(vm, PV_STR, 1, false); break;  /* SHORT_BINUNICODE */
    case 'X': rc = op_lenstr(vm, PV_STR, 4, false); break;   /* BINUNICODE */
    case 0x8d: rc = op_lenstr(vm, PV_STR, 8, false); break;  /* BINUNICODE8 */
    case 'U': rc = op_lenstr(vm, PV_STR, 1, false); break;   /* SHORT_BINSTRING (py2 str) */
    case 'T': rc = op_lenstr(vm, PV_STR, 4, true); break;    /* BINSTRING */
    case 'C': rc = op_lenstr(vm, PV_BYTES, 1, false); break; /* SHORT_BINBYTES */
    case 'B': rc = op_lenstr(vm, PV_BYTES, 4, false); break; /* BINBYTES */
    case 0x8e: case 0x96: rc = op_lenstr(vm, PV_BYTES, 8, false); break; /* BINBYTES8, BYTEARRAY8 */
    case 't': case 'l': case 'd': case 0x91: { /* TUPLE, LIST, DICT, FROZENSET: from the last MARK */
      size_t first = 0;
      if ((rc = vm_pop_mark(vm, &first))) return rc;
      size_t cnt = vm->sp - first;
      if (op == 'd' && cnt % 2) return vm_fail(vm, NQ_EFORMAT, "DICT with an odd number of items");
      pv_t *v = vm_new(vm, op == 't' ? PV_TUPLE : op == 'l' ? PV_LIST : op == 'd' ? PV_DICT : PV_SET);
      if (!v) return NQ_ELIMIT;
      for (size_t i = first; i < vm->sp && !rc; i += op == 'd' ? 2 : 1)
        rc = op == 'd' ? dict_set(vm, v, vm->stack[i], vm->stack[i + 1]) : seq_append(vm, v, vm->stack[i]);
      vm->sp = first;
      if (!rc) rc = vm_push(vm, v);
      break;
    }
    case 0x85: case 0x86: case 0x87: { /* TUPLE1..3 */
      size_t k = (size_t)(op - 0x84);
      size_t floor = vm->nmarks ? vm->marks[vm->nmarks - 1] : 0;
      if (vm->sp - floor < k) return vm_fail(vm, NQ_EFORMAT, "stack underflow");
      pv_t *v = vm_new(vm, PV_TUPLE);
      if (!v) return NQ_ELIMIT;
      for (size_t i = vm->sp - k; i < vm->sp && !rc; i++) rc = seq_append(vm, v, vm->stack[i]);
      vm->sp -= k;
      if (!rc) rc = vm_push(vm, v);
      break;
    }
    case 'a': { /* APPEND */
      pv_t *x = vm_pop(vm), *l = x ? vm_top(vm) : NULL;
      if (!l) return NQ_EFORMAT;
      if (l->kind != PV_LIST) return vm_fail(vm, NQ_EFORMAT, "APPEND to a %s", vm_kind_name(l->kind));
      rc = seq_append(vm, l, x);
      break;
    }
    case 'e': case 0x90: { /* APPENDS, ADDITEMS */
      size_t first = 0;
      if ((rc = vm_pop_mark(vm, &first))) return rc;
      size_t cnt = vm->sp - first;
      vm->sp = first;
      pv_t *l = vm_top(vm);
      if (!l) return NQ_EFORMAT;
      if (l->kind != (op == 'e' ? PV_LIST : PV_SET)) return vm_fail(vm, NQ_EFORMAT, "%s to a %s", op == 'e' ? "APPENDS" : "ADDITEMS", vm_kind_name(l->kind));
      for (size_t i = 0; i < cnt && !rc; i++) rc = seq_append(vm, l, vm->stack[first + i]);
      break;
    }
    case 's': { /* SETITEM */
      pv_t *v = vm_pop(vm), *k = v ? vm_pop(vm) : NULL, *d = k ? vm_top(vm) : NULL;
      if (!d) return NQ_EFORMAT;
      if (d->kind != PV_DICT) return vm_fail(vm, NQ_EFORMAT, "SETITEM on a %s", vm_kind_name(d->kind));
      rc = dict_set(vm, d, k, v);
      break;
    }
    case 'u': { /* SETITEMS */
      size_t first = 0;
      if ((rc = vm_pop_mark(vm, &first))) return rc;
      size_t cnt = vm->sp - first;
      vm->sp = first;
      if (cnt % 2) return vm_fail(vm, NQ_EFORMAT, "SETITEMS with an odd number of items");
      pv_t *d = vm_top(vm);
      if (!d) return NQ_EFORMAT;
      if (d->kind != PV_DICT) return vm_fail(vm, NQ_EFORMAT, "SETITEMS on a %s", vm_kind_name(d->kind));
      for (size_t i = 0; i < cnt && !rc; i += 2) rc = dict_set(vm, d, vm->stack[first + i], vm->stack[first + i + 1]);
      break;
    }
    case 'R': { /* REDUCE: only the allow-listed rebuild functions, emulated */
      pv_t *args = vm_pop(vm), *fn = args ? vm_pop(vm) : NULL, *res = NULL;
      if (!fn) return NQ_EFORMAT;
      if ((rc = vm_call(vm, fn, args, &res))) return rc;
      rc = vm_push(vm, res);
      break;
    }
    case 0x81: case 0x92: { /* NEWOBJ, NEWOBJ_EX: only OrderedDict.__new__ */
      pv_t *kw = op == 0x92 ? vm_pop(vm) : &pk_none, *args = kw ? vm_pop(vm) : NULL, *cls = args ? vm_pop(vm) : NULL;
      if (!cls) return NQ_EFORMAT;
      if (cls->kind != PV_GLOBAL || cls->u.g.id != G_ODICT)
        return vm_fail(vm, NQ_EUNSUPPORTED, "NEWOBJ of %s%s%s: only OrderedDict may be instantiated", cls->kind == PV_GLOBAL ? cls->u.g.mod : "a ",
                       cls->kind == PV_GLOBAL ? "." : "", cls->kind == PV_GLOBAL ? cls->u.g.name : vm_kind_name(cls->kind));
      rc = vm_push(vm, vm_new(vm, PV_DICT));
      break;
    }
    case 'b': { /* BUILD: state of a dict (OrderedDict._metadata) or tensor (hooks): ignored */
      pv_t *state = vm_pop(vm), *obj = state ? vm_top(vm) : NULL;
      if (!obj) return NQ_EFORMAT;
      if (obj->kind != PV_DICT && obj->kind != PV_TENSOR) return vm_fail(vm, NQ_EUNSUPPORTED, "BUILD on a %s", vm_kind_name(obj->kind));
      break;
    }
    case 'Q': rc = vm_persid(vm); break; /* BINPERSID */
    case 'P': return vm_fail(vm, NQ_EUNSUPPORTED, "text persistent id (PERSID): not written by torch.save");
    case 'i': case 'o': return vm_fail(vm, NQ_EUNSUPPORTED, "class instantiation opcode %s: refused", op == 'i' ? "INST" : "OBJ");
    case 0x82: case 0x83: case 0x84: return vm_fail(vm, NQ_EUNSUPPORTED, "extension registry opcode EXT: refused");
    case 0x97: case 0x98: return vm_fail(vm, NQ_EUNSUPPORTED, "out-of-band buffer opcode: refused");
    default: return vm_fail(vm, NQ_EUNSUPPORTED, "unsupported pickle opcode 0x%02x", op);
    }
    if (rc) return rc;
  }
}

static void vm_init(pk_vm_t *vm, const nq_pickle_limits_t *lim, const char *where, const unsigned char *buf, size_t n, nq_err_t *err) {
  memset(vm, 0, sizeof *vm);
  vm->lim = lim;
  vm->where = where;
  vm->buf = buf;
  vm->n = n;
  vm->err = err;
  size_t limit = lim->arena_base;
  if (lim->arena_per_byte && n <= (SIZE_MAX - limit) / lim->arena_per_byte) limit += n * lim->arena_per_byte;
  else limit = SIZE_MAX;
  nq_arena_init(&vm->arena, (size_t)1 << 20, limit);
}

static void vm_deinit(pk_vm_t *vm) {
  nq_arena_deinit(&vm->arena);
  free(vm->stack);
  free(vm->marks);
  free(vm->memo);
  free(vm->st);
  free(vm->sth);
}

int nq_pickle_validate(const void *buf, size_t n, const nq_pickle_limits_t *lim, nq_err_t *err) {
  nq_pickle_limits_t dl;
  if (!lim) nq_pickle_limits_init(&dl), lim = &dl;
  if (n > lim->max_pickle_bytes) return PK_ERR(err, NQ_ELIMIT, "pickle: %zu bytes over the limit %zu", n, lim->max_pickle_bytes);
  pk_vm_t vm;
  vm_init(&vm, lim, "pickle", buf, n, err);
  vm.legacy = true;
  pv_t *root;
  int rc = vm_run(&vm, &root);
  vm_deinit(&vm);
  return rc;
}

/* ---- the checkpoint object -------------------------------------------------------------------------- */

typedef struct ck_map { void *base; size_t size; } ck_map_t;
typedef struct ck_value { const char *name, *repr; } ck_value_t;

struct nq_ckpt {
  nq_ckpt_format_t fmt;
  nq_st_file_t *st;        /* owned; set for safetensors (everything delegated) */
  ck_map_t *maps;          /* owned mmaps */
  size_t nmaps;
  void **bufs;             /* owned materialised tensors */
  size_t nbufs, capbufs;
  nq_arena_t strs;         /* owned: tensor names, value names and reprs */
  nq_ckpt_tensor_t *t;     /* owned array, file order; names in strs */
  size_t n, cap;
  size_t *order;           /* owned: tensor indices sorted by name */
  ck_value_t *vals;        /* owned array; strings in strs */
  size_t nvals, capvals;
};

#define CK_MAX_VALUES 65536
#define CK_MAX_PATH 4096

static int ck_keep_buf(nq_ckpt_t *ck, void *p, nq_err_t *err) {
  if (ck->nbufs == ck->capbufs) {
    size_t nc = ck->capbufs ? ck->capbufs * 2 : 16;
    void **nb = realloc(ck->bufs, nc * sizeof *nb);
    if (!nb) {
      free(p);
      return PK_ERR(err, NQ_ENOMEM, "checkpoint: out of memory");
    }
    ck->bufs = nb;
    ck->capbufs = nc;
  }
  ck->bufs[ck->nbufs++] = p;
  return 0;
}

/* Turns a view into a contiguous tensor: checks it against its storage, then points into the mapping
 * (contiguous + aligned) or gathers a copy. */
static int ck_add_tensor(nq_ckpt_t *ck, pk_vm_t *vm, const char *name, const pk_tensor_t *pt, nq_err_t *err) {
  const char *where = vm->where;
  if (ck->n >= vm->lim->max_tensors) return PK_ERR(err, NQ_ELIMIT, "%s: more than %zu tensors", where, vm->lim->max_tensors);
  const pv_t *sv = pt->storage;
  const pk_storage_t *s = &vm->st[sv->u.st.idx];
  size_t es = nq_dtype_size(s->dt);
  if (!s->data && s->numel > 0)
    return PK_ERR(err, NQ_EFORMAT, "%s: tensor '%s': storage '%s' has no data in the file", where, name, s->key);
  /* the storage view this tensor sees: [base, base + vnumel) elements of the root storage */
  int64_t avail = s->data ? s->avail : 0, base = sv->u.st.off, vnumel = sv->u.st.numel;
  if (base > avail || vnumel > avail - base)
    return PK_ERR(err, NQ_EFORMAT, "%s: tensor '%s': storage '%s' holds %lld elements, the pickle declares %lld", where, name, s->key,
                  (long long)avail, (long long)(base + vnumel));
  nq_ckpt_tensor_t t = {.dtype = s->dt, .ndim = pt->ndim};
  unsigned __int128 numel = 1, last = (unsigned __int128)pt->offset;
  for (int d = 0; d < pt->ndim; d++) {
    t.shape[d] = pt->shape[d];
    numel *= (unsigned __int128)pt->shape[d];
    if (numel > (unsigned __int128)PK_MAX_NUMEL) return PK_ERR(err, NQ_ELIMIT, "%s: tensor '%s': absurd shape", where, name);
    if (pt->shape[d] > 0) last += (unsigned __int128)(pt->shape[d] - 1) * (unsigned __int128)pt->stride[d];
  }
  if (numel > 0 && last >= (unsigned __int128)vnumel)
    return PK_ERR(err, NQ_EFORMAT,
                  "%s: tensor '%s': view (offset %lld, %d dims) reaches element %llu but storage '%s' has %lld elements", where, name,
                  (long long)pt->offset, pt->ndim, (unsigned long long)last, s->key, (long long)vnumel);
  t.nbytes = (size_t)numel * es;
  const unsigned char *src = s->data && numel > 0 ? s->data + (size_t)(base + pt->offset) * es : NULL;
  bool contig = true;
  int64_t want = 1;
  for (int d = pt->ndim - 1; d >= 0; d--) {
    if (pt->shape[d] != 1 && pt->stride[d] != want) contig = false;
    want *= pt->shape[d];
  }
  if (numel == 0) {
    t.data = NULL;
  } else if (contig && ((uintptr_t)src % es) == 0) {
    t.data = src;
  } else {
    if (numel > (unsigned __int128)vnumel && t.nbytes > vm->lim->max_expand_bytes)
      return PK_ERR(err, NQ_ELIMIT, "%s: tensor '%s': overlapping view expands to %zu bytes (limit %zu)", where, name, t.nbytes,
                    vm->lim->max_expand_bytes);
    unsigned char *dst = malloc(t.nbytes);
    if (!dst) return PK_ERR(err, NQ_ENOMEM, "%s: tensor '%s': out of memory (%zu bytes)", where, name, t.nbytes);
    int rc = ck_keep_buf(ck, dst, err);
    if (rc) return rc;
    if (contig) memcpy(dst, src, t.nbytes);
    else {
      int64_t idx[NQ_ST_MAX_DIMS] = {0};
      size_t nd = (size_t)pt->ndim;
      for (size_t k = 0; k < (size_t)numel; k++) {
        int64_t off = 0;
        for (size_t d = 0; d < nd; d++) off += idx[d] * pt->stride[d];
        memcpy(dst + k * es, src + (size_t)off * es, es);
        for (size_t d = nd; d-- > 0;) {
          if (++idx[d] < pt->shape[d]) break;
          idx[d] = 0;
        }
      }
    }
    t.data = dst;
  }
  t.name = nq_arena_strdup(&ck->strs, name);
  if (!t.name) return PK_ERR(err, NQ_ENOMEM, "checkpoint: out of memory");
  if (ck->n == ck->cap) {
    size_t nc = ck->cap ? ck->cap * 2 : 64;
    nq_ckpt_tensor_t *nt = realloc(ck->t, nc * sizeof *nt);
    if (!nt) return PK_ERR(err, NQ_ENOMEM, "checkpoint: out of memory");
    ck->t = nt;
    ck->cap = nc;
  }
  ck->t[ck->n++] = t;
  return 0;
}

static void repr_value(const pv_t *v, char *buf, size_t cap, int depth) {
  switch (v->kind) {
  case PV_NONE: snprintf(buf, cap, "None"); break;
  case PV_BOOL: snprintf(buf, cap, "%s", v->u.i ? "True" : "False"); break;
  case PV_INT: snprintf(buf, cap, "%lld", (long long)v->u.i); break;
  case PV_BIGINT: snprintf(buf, cap, "<int of %zu bytes>", v->u.str.n); break;
  case PV_FLOAT: /* shortest form that reads back exactly, like Python's repr */
    for (int prec = 1; prec <= 17; prec++) {
      snprintf(buf, cap, "%.*g", prec, v->u.f);
      if (strtod(buf, NULL) == v->u.f) break;
    }
    break;
  case PV_STR: {
    size_t o = 0;
    o += (size_t)snprintf(buf, cap, "'");
    for (size_t i = 0; i < v->u.str.n && o + 8 < cap; i++) {
      unsigned char c = (unsigned char)v->u.str.s[i];
      o += (size_t)snprintf(buf + o, cap - o, c >= 0x20 && c != 0x7f && c != '\'' && c != '\\' ? "%c" : "\\x%02x", c);
    }
    snprintf(buf + o, cap - o, v->u.str.n && o + 8 >= cap ? "'..." : "'");
    break;
  }
  case PV_BYTES: snprintf(buf, cap, "<bytes of %zu>", v->u.str.n); break;
  case PV_GLOBAL: snprintf(buf, cap, "<%s.%s>", v->u.g.mod, v->u.g.name); break;
  case PV_STORAGE: snprintf(buf, cap, "<storage>"); break;
  case PV_TENSOR: snprintf(buf, cap, "<tensor>"); break;
  default: { /* containers that hold no tensor: a short repr */
    bool is_dict = v->kind == PV_DICT;
    size_t n = is_dict ? v->u.dict.n : v->u.seq.n, o = 0;
    o += (size_t)snprintf(buf, cap, "%s", is_dict ? "{" : v->kind == PV_TUPLE ? "(" : "[");
    for (size_t i = 0; i < n && o + 16 < cap; i++) {
      char sub[128];
      if (depth > 4) snprintf(sub, sizeof sub, "...");
      else if (is_dict) {
        char k[64], val[64];
        repr_value(v->u.dict.k[i], k, sizeof k, depth + 1);
        repr_value(v->u.dict.v[i], val, sizeof val, depth + 1);
        snprintf(sub, sizeof sub, "%s: %s", k, val);
      } else
        repr_value(v->u.seq.v[i], sub, sizeof sub, depth + 1);
      o += (size_t)snprintf(buf + o, cap - o, "%s%s", i ? ", " : "", sub);
    }
    if (o < cap) snprintf(buf + o, cap - o, "%s", is_dict ? "}" : v->kind == PV_TUPLE ? (n == 1 ? ",)" : ")") : "]");
  }
  }
}

/* Does this subtree hold a tensor? Memoised in pv.flags, so shared subtrees are walked once; past depth 64 it
 * answers yes without caching, and flatten() then reports the real nesting bound. */
#define PV_F_SCANNED 1
#define PV_F_HAS_TENSOR 2
static bool holds_tensor(pv_t *v, size_t depth) {
  if (v->kind == PV_TENSOR) return true;
  if (v->flags & PV_F_SCANNED) return v->flags & PV_F_HAS_TENSOR;
  if (depth > 64) return true;
  bool has = false;
  if (v->kind == PV_DICT) {
    for (size_t i = 0; i < v->u.dict.n && !has; i++) has = holds_tensor(v->u.dict.v[i], depth + 1);
  } else if (v->kind == PV_TUPLE || v->kind == PV_LIST || v->kind == PV_SET) {
    for (size_t i = 0; i < v->u.seq.n && !has; i++) has = holds_tensor(v->u.seq.v[i], depth + 1);
  } else
    return false;
  if (v != &pk_empty_tuple) v->flags = PV_F_SCANNED | (has ? PV_F_HAS_TENSOR : 0);
  return has;
}

typedef struct flat_ctx {
  nq_ckpt_t *ck;
  pk_vm_t *vm;
  char path[CK_MAX_PATH];
  size_t budget; /* node visits left: shared references must not blow up exponentially */
  nq_err_t *err;
} flat_ctx_t;

static int flatten(flat_ctx_t *fc, const pv_t *v, size_t plen, size_t depth) {
  const char *where = fc->vm->where;
  if (depth > fc->vm->lim->max_depth)
    return PK_ERR(fc->err, NQ_ELIMIT, "%s: containers nested deeper than %zu at '%.200s'", where, fc->vm->lim->max_depth, fc->path);
  if (!fc->budget) return PK_ERR(fc->err, NQ_ELIMIT, "%s: object graph too large to flatten (shared references?) at '%.200s'", where, fc->path);
  fc->budget--;
  if (v->kind == PV_TENSOR) return ck_add_tensor(fc->ck, fc->vm, plen ? fc->path : "tensor", v->u.t, fc->err);
  bool is_dict = v->kind == PV_DICT, is_seq = v->kind == PV_TUPLE || v->kind == PV_LIST || v->kind == PV_SET;
  if (is_dict || is_seq) {
    if (!holds_tensor((pv_t *)v, 0)) goto leaf;
    size_t n = is_dict ? v->u.dict.n : v->u.seq.n;
    for (size_t i = 0; i < n; i++) {
      char key[96];
      const char *ks = key;
      size_t klen = 0;
      if (is_dict) {
        const pv_t *k = v->u.dict.k[i];
        if (k->kind == PV_STR) ks = k->u.str.s, klen = k->u.str.n;
        else if (k->kind == PV_INT || k->kind == PV_BOOL || k->kind == PV_NONE || k->kind == PV_FLOAT) repr_value(k, key, sizeof key, 0);
        else snprintf(key, sizeof key, "<key %zu>", i);
        if (ks == key) klen = strlen(key);
        if (memchr(ks, 0, klen)) return PK_ERR(fc->err, NQ_EFORMAT, "%s: dict key with a NUL byte under '%.200s'", where, fc->path);
      } else {
        snprintf(key, sizeof key, "%zu", i);
        klen = strlen(key);
      }
      size_t need = plen + (plen ? 1 : 0) + klen;
      if (need >= CK_MAX_PATH) return PK_ERR(fc->err, NQ_ELIMIT, "%s: key path longer than %d bytes under '%.200s'", where, CK_MAX_PATH, fc->path);
      size_t o = plen;
      if (plen) fc->path[o++] = '.';
      memcpy(fc->path + o, ks, klen);
      fc->path[need] = 0;
      int rc = flatten(fc, is_dict ? v->u.dict.v[i] : v->u.seq.v[i], need, depth + 1);
      fc->path[plen] = 0;
      if (rc) return rc;
    }
    return 0;
  }
leaf:
  if (fc->ck->nvals >= CK_MAX_VALUES) return 0; /* informational only */
  {
    char r[256];
    repr_value(v, r, sizeof r, 0);
    if (fc->ck->nvals == fc->ck->capvals) {
      size_t nc = fc->ck->capvals ? fc->ck->capvals * 2 : 16;
      ck_value_t *nv = realloc(fc->ck->vals, nc * sizeof *nv);
      if (!nv) return PK_ERR(fc->err, NQ_ENOMEM, "checkpoint: out of memory");
      fc->ck->vals = nv;
      fc->ck->capvals = nc;
    }
    ck_value_t *cv = &fc->ck->vals[fc->ck->nvals];
    cv->name = nq_arena_strdup(&fc->ck->strs, plen ? fc->path : "value");
    cv->repr = nq_arena_strdup(&fc->ck->strs, r);
    if (!cv->name || !cv->repr) return PK_ERR(fc->err, NQ_ENOMEM, "checkpoint: out of memory");
    fc->ck->nvals++;
  }
  return 0;
}

static int ck_flatten(nq_ckpt_t *ck, pk_vm_t *vm, const pv_t *root, nq_err_t *err) {
  flat_ctx_t *fc = calloc(1, sizeof *fc);
  if (!fc) return PK_ERR(err, NQ_ENOMEM, "checkpoint: out of memory");
  fc->ck = ck;
  fc->vm = vm;
  fc->err = err;
  fc->budget = 4 * vm->nobjects + ((size_t)1 << 16);
  int rc = flatten(fc, root, 0, 0);
  free(fc);
  return rc;
}

/* ---- zip -------------------------------------------------------------------------------------------- */

typedef struct zip_member {
  const char *name; /* borrowed: points into the central directory, not NUL-terminated */
  size_t nlen;
  unsigned method;
  uint64_t csize, usize, lho;
} zip_member_t;

typedef struct zip_reader {
  const unsigned char *base;
  size_t size;
  zip_member_t *m;  /* owned */
  size_t n;
  size_t *sorted;   /* owned: member indices by name */
} zip_reader_t;

static int zip_cmp_name(const zip_member_t *a, const char *name, size_t nlen) {
  size_t l = a->nlen < nlen ? a->nlen : nlen;
  int c = memcmp(a->name, name, l);
  return c ? c : (a->nlen < nlen ? -1 : a->nlen > nlen ? 1 : 0);
}

static int zip_qcmp(const void *x, const void *y, void *ctx) {
  const zip_member_t *m = ctx, *b = &m[*(const size_t *)y];
  return zip_cmp_name(&m[*(const size_t *)x], b->name, b->nlen);
}

static const zip_member_t *zip_find(const zip_reader_t *z, const char *name) {
  size_t nlen = strlen(name), lo = 0, hi = z->n;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    int c = zip_cmp_name(&z->m[z->sorted[mid]], name, nlen);
    if (!c) return &z->m[z->sorted[mid]];
    if (c < 0) lo = mid + 1;
    else hi = mid;
  }
  return NULL;
}

#define ZIP_MAX_MEMBERS ((size_t)1 << 22)

static int zip_open(zip_reader_t *z, const unsigned char *base, size_t size, const char *label, nq_err_t *err) {
  memset(z, 0, sizeof *z);
  z->base = base;
  z->size = size;
  if (size < 22) return PK_ERR(err, NQ_EFORMAT, "%s: truncated zip (%zu bytes)", label, size);
  size_t eocd = SIZE_MAX;
  size_t lo = size > 22 + 65535 ? size - 22 - 65535 : 0;
  for (size_t p = size - 22 + 1; p-- > lo;)
    if (rd_le(base + p, 4) == 0x06054b50u && p + 22 + rd_le(base + p + 20, 2) <= size) {
      eocd = p;
      break;
    }
  if (eocd == SIZE_MAX) return PK_ERR(err, NQ_EFORMAT, "%s: zip end-of-central-directory record not found (truncated file?)", label);
  uint64_t entries = rd_le(base + eocd + 10, 2), cdsize = rd_le(base + eocd + 12, 4), cdoff = rd_le(base + eocd + 16, 4);
  if (entries == 0xFFFF || cdsize == 0xFFFFFFFFu || cdoff == 0xFFFFFFFFu) { /* zip64 */
    if (eocd < 20 || rd_le(base + eocd - 20, 4) != 0x07064b50u) return PK_ERR(err, NQ_EFORMAT, "%s: zip64 locator missing", label);
    uint64_t z64 = rd_le(base + eocd - 20 + 8, 8);
    if (z64 > size - 56 || size < 56 || rd_le(base + z64, 4) != 0x06064b50u) return PK_ERR(err, NQ_EFORMAT, "%s: bad zip64 end record", label);
    entries = rd_le(base + z64 + 32, 8);
    cdsize = rd_le(base + z64 + 40, 8);
    cdoff = rd_le(base + z64 + 48, 8);
  }
  if (cdoff > size || cdsize > size - cdoff) return PK_ERR(err, NQ_EFORMAT, "%s: zip central directory outside the file (truncated?)", label);
  if (entries > ZIP_MAX_MEMBERS || entries > cdsize / 46) return PK_ERR(err, NQ_EFORMAT, "%s: implausible zip member count %llu", label, (unsigned long long)entries);
  z->m = calloc(entries ? entries : 1, sizeof *z->m);
  z->sorted = calloc(entries ? entries : 1, sizeof *z->sorted);
  if (!z->m || !z->sorted) return PK_ERR(err, NQ_ENOMEM, "%s: out of memory", label);
  size_t p = (size_t)cdoff, end = (size_t)(cdoff + cdsize);
  for (uint64_t i = 0; i < entries; i++) {
    if (end - p < 46 || rd_le(base + p, 4) != 0x02014b50u) return PK_ERR(err, NQ_EFORMAT, "%s: bad zip central directory entry %llu", label, (unsigned long long)i);
    zip_member_t *m = &z->m[i];
    m->method = (unsigned)rd_le(base + p + 10, 2);
    m->csize = rd_le(base + p + 20, 4);
    m->usize = rd_le(base + p + 24, 4);
    size_t nl = (size_t)rd_le(base + p + 28, 2), el = (size_t)rd_le(base + p + 30, 2), cl = (size_t)rd_le(base + p + 32, 2);
    m->lho = rd_le(base + p + 42, 4);
    if (46 + nl + el + cl > end - p) return PK_ERR(err, NQ_EFORMAT, "%s: zip entry %llu runs past the central directory", label, (unsigned long long)i);
    m->name = (const char *)base + p + 46;
    m->nlen = nl;
    for (size_t e = p + 46 + nl, ee = e + el; ee - e >= 4;) { /* extra fields: zip64 sizes/offset */
      size_t id = (size_t)rd_le(base + e, 2), sz = (size_t)rd_le(base + e + 2, 2);
      if (sz > ee - e - 4) break;
      if (id == 1) {
        size_t q = e + 4, qe = q + sz;
        if (m->usize == 0xFFFFFFFFu && qe - q >= 8) m->usize = rd_le(base + q, 8), q += 8;
        if (m->csize == 0xFFFFFFFFu && qe - q >= 8) m->csize = rd_le(base + q, 8), q += 8;
        if (m->lho == 0xFFFFFFFFu && qe - q >= 8) m->lho = rd_le(base + q, 8), q += 8;
      }
      e += 4 + sz;
    }
    z->sorted[i] = (size_t)i;
    p += 46 + nl + el + cl;
  }
  z->n = (size_t)entries;
  qsort_r(z->sorted, z->n, sizeof *z->sorted, zip_qcmp, z->m);
  return 0;
}

static void zip_close(zip_reader_t *z) {
  free(z->m);
  free(z->sorted);
}

/* Data of a stored member, bounds-checked through its local header. */
static int zip_data(const zip_reader_t *z, const zip_member_t *m, const char *label, const unsigned char **data, size_t *len, nq_err_t *err) {
  if (m->method != 0)
    return PK_ERR(err, NQ_EUNSUPPORTED, "%s: zip member '%.*s' is compressed (method %u); torch.save stores members uncompressed", label,
                  (int)(m->nlen > 200 ? 200 : m->nlen), m->name, m->method);
  if (m->csize != m->usize) return PK_ERR(err, NQ_EFORMAT, "%s: zip member '%.*s': sizes disagree", label, (int)(m->nlen > 200 ? 200 : m->nlen), m->name);
  if (m->lho > z->size || z->size - m->lho < 30 || rd_le(z->base + m->lho, 4) != 0x04034b50u)
    return PK_ERR(err, NQ_EFORMAT, "%s: zip member '%.*s': bad local header (truncated file?)", label, (int)(m->nlen > 200 ? 200 : m->nlen), m->name);
  uint64_t off = m->lho + 30 + rd_le(z->base + m->lho + 26, 2) + rd_le(z->base + m->lho + 28, 2);
  if (off > z->size || m->csize > z->size - off)
    return PK_ERR(err, NQ_EFORMAT, "%s: zip member '%.*s': %llu bytes at offset %llu run past the end of the %zu-byte file (truncated?)", label,
                  (int)(m->nlen > 200 ? 200 : m->nlen), m->name, (unsigned long long)m->csize, (unsigned long long)off, z->size);
  *data = z->base + off;
  *len = (size_t)m->csize;
  return 0;
}

static int load_zip(nq_ckpt_t *ck, const unsigned char *base, size_t size, const char *label, const nq_pickle_limits_t *lim, nq_err_t *err) {
  zip_reader_t z;
  int rc = zip_open(&z, base, size, label, err);
  if (rc) {
    zip_close(&z);
    return rc;
  }
  /* the pickle: "<top>/data.pkl" (the top folder is the saved file's stem and varies) */
  const zip_member_t *pkl = NULL;
  for (size_t i = 0; i < z.n && !pkl; i++) {
    const zip_member_t *m = &z.m[i];
    const char *slash = memchr(m->name, '/', m->nlen);
    if (slash && (size_t)(m->name + m->nlen - slash) == 9 && !memcmp(slash, "/data.pkl", 9)) pkl = m;
  }
  if (!pkl) {
    zip_close(&z);
    return PK_ERR(err, NQ_EFORMAT, "%s: zip without <top>/data.pkl: not a torch.save checkpoint", label);
  }
  char prefix[512], where[768], name[1024];
  size_t plen = pkl->nlen - 8; /* keeps the slash */
  if (plen >= sizeof prefix) {
    zip_close(&z);
    return PK_ERR(err, NQ_EFORMAT, "%s: zip top folder name too long", label);
  }
  memcpy(prefix, pkl->name, plen);
  prefix[plen] = 0;
  snprintf(where, sizeof where, "%s: %sdata.pkl", label, prefix);
  const unsigned char *pdata = NULL;
  size_t plen_bytes = 0;
  rc = zip_data(&z, pkl, label, &pdata, &plen_bytes, err);
  if (!rc && plen_bytes > lim->max_pickle_bytes)
    rc = PK_ERR(err, NQ_ELIMIT, "%s: %zu bytes over the limit %zu", where, plen_bytes, lim->max_pickle_bytes);
  snprintf(name, sizeof name, "%sbyteorder", prefix);
  const zip_member_t *bo = zip_find(&z, name);
  if (!rc && bo) {
    const unsigned char *b;
    size_t bl;
    rc = zip_data(&z, bo, label, &b, &bl, err);
    if (!rc && !(bl == 6 && !memcmp(b, "little", 6))) rc = PK_ERR(err, NQ_EUNSUPPORTED, "%s: byteorder is not 'little': big-endian checkpoints are not supported", label);
  }
  if (rc) {
    zip_close(&z);
    return rc;
  }
  pk_vm_t vm;
  vm_init(&vm, lim, where, pdata, plen_bytes, err);
  pv_t *root = NULL;
  rc = vm_run(&vm, &root);
  for (size_t i = 0; !rc && i < vm.nst; i++) { /* attach every storage to its member "<top>/data/<key>" */
    pk_storage_t *s = &vm.st[i];
    snprintf(name, sizeof name, "%sdata/%s", prefix, s->key);
    const zip_member_t *m = zip_find(&z, name);
    if (!m) {
      rc = PK_ERR(err, NQ_EFORMAT, "%s: storage '%s' is missing (no member %s)", label, s->key, name);
      break;
    }
    const unsigned char *d;
    size_t dl;
    if ((rc = zip_data(&z, m, label, &d, &dl, err))) break;
    size_t es = nq_dtype_size(s->dt);
    if ((uint64_t)s->numel * es > dl) {
      rc = PK_ERR(err, NQ_EFORMAT, "%s: storage '%s' declares %lld %s elements (%llu bytes) but member %s has %zu bytes", label, s->key,
                  (long long)s->numel, nq_dtype_name(s->dt), (unsigned long long)s->numel * es, name, dl);
      break;
    }
    s->data = d;
    s->avail = (int64_t)(dl / es);
  }
  if (!rc) rc = ck_flatten(ck, &vm, root, err);
  vm_deinit(&vm);
  zip_close(&z);
  return rc;
}

/* ---- legacy (pre-1.6) -------------------------------------------------------------------------------- */

static const unsigned char pk_legacy_magic[10] = {0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19};

static int load_legacy(nq_ckpt_t *ck, const unsigned char *base, size_t size, const char *label, const nq_pickle_limits_t *lim, nq_err_t *err) {
  char where[600];
  snprintf(where, sizeof where, "%s (legacy torch.save)", label);
  /* the pickles run over the whole file; the arena bound uses the pickle-sized prefix at most */
  size_t pn = size < lim->max_pickle_bytes ? size : lim->max_pickle_bytes;
  pk_vm_t vm;
  vm_init(&vm, lim, where, base, pn, err);
  vm.legacy = true;
  pv_t *magic = NULL, *proto = NULL, *sys = NULL, *root = NULL, *keys = NULL;
  int rc = vm_run(&vm, &magic);
  if (!rc && !(magic->kind == PV_BIGINT && magic->u.str.n == 10 && !memcmp(magic->u.str.s, pk_legacy_magic, 10)))
    rc = PK_ERR(err, NQ_EFORMAT, "%s: not a torch.save file (no zip signature, no legacy magic number)", label);
  if (!rc) rc = vm_run(&vm, &proto);
  if (!rc && !(proto->kind == PV_INT && proto->u.i == 1001))
    rc = PK_ERR(err, NQ_EUNSUPPORTED, "%s: legacy protocol version is not 1001", label);
  if (!rc) rc = vm_run(&vm, &sys);
  if (!rc && sys->kind == PV_DICT)
    for (size_t i = 0; i < sys->u.dict.n; i++) {
      const pv_t *k = sys->u.dict.k[i], *v = sys->u.dict.v[i];
      if (k->kind == PV_STR && !strcmp(k->u.str.s, "little_endian") && v->kind == PV_BOOL && !v->u.i)
        rc = PK_ERR(err, NQ_EUNSUPPORTED, "%s: big-endian checkpoint is not supported", label);
    }
  if (!rc) rc = vm_run(&vm, &root);
  if (!rc) rc = vm_run(&vm, &keys);
  if (!rc && keys->kind != PV_LIST && keys->kind != PV_TUPLE) rc = PK_ERR(err, NQ_EFORMAT, "%s: storage key list is a %s", label, vm_kind_name(keys->kind));
  size_t pos = vm.pos;
  for (size_t i = 0; !rc && i < keys->u.seq.n; i++) {
    const pv_t *k = keys->u.seq.v[i];
    pk_storage_t *s = k->kind == PV_STR ? vm_storage_lookup(&vm, k->u.str.s) : NULL;
    if (!s) {
      rc = PK_ERR(err, NQ_EFORMAT, "%s: storage key #%zu is not referenced by the pickle", label, i);
      break;
    }
    if (size - pos < 8) {
      rc = PK_ERR(err, NQ_EFORMAT, "%s: truncated at byte %zu: storage '%s' header missing", label, pos, s->key);
      break;
    }
    uint64_t numel = rd_le(base + pos, 8);
    size_t es = nq_dtype_size(s->dt);
    pos += 8;
    if (numel > (uint64_t)PK_MAX_NUMEL || numel * es > size - pos) {
      rc = PK_ERR(err, NQ_EFORMAT, "%s: truncated at byte %zu: storage '%s' claims %llu %s elements, %zu bytes left", label, pos - 8, s->key,
                  (unsigned long long)numel, nq_dtype_name(s->dt), size - pos);
      break;
    }
    if ((int64_t)numel < s->numel) {
      rc = PK_ERR(err, NQ_EFORMAT, "%s: storage '%s' has %llu elements, the pickle declares %lld", label, s->key, (unsigned long long)numel,
                  (long long)s->numel);
      break;
    }
    if (s->data) {
      rc = PK_ERR(err, NQ_EFORMAT, "%s: storage '%s' appears twice", label, s->key);
      break;
    }
    s->data = base + pos;
    s->avail = (int64_t)numel;
    pos += (size_t)(numel * es);
  }
  if (!rc) rc = ck_flatten(ck, &vm, root, err);
  vm_deinit(&vm);
  return rc;
}

/* ---- nq_ckpt ---------------------------------------------------------------------------------------- */

static int ck_qcmp(const void *a, const void *b, void *ctx) {
  const nq_ckpt_tensor_t *t = ctx;
  return strcmp(t[*(const size_t *)a].name, t[*(const size_t *)b].name);
}

/* Sort the name index and refuse duplicate names. */
static int ck_index(nq_ckpt_t *ck, const char *label, nq_err_t *err) {
  free(ck->order);
  ck->order = malloc((ck->n ? ck->n : 1) * sizeof *ck->order);
  if (!ck->order) return PK_ERR(err, NQ_ENOMEM, "checkpoint: out of memory");
  for (size_t i = 0; i < ck->n; i++) ck->order[i] = i;
  qsort_r(ck->order, ck->n, sizeof *ck->order, ck_qcmp, ck->t);
  for (size_t i = 1; i < ck->n; i++)
    if (!strcmp(ck->t[ck->order[i - 1]].name, ck->t[ck->order[i]].name))
      return PK_ERR(err, NQ_EFORMAT, "%s: tensor name '%.200s' appears twice", label, ck->t[ck->order[i]].name);
  return 0;
}

static nq_ckpt_t *ck_new(void) {
  nq_ckpt_t *ck = calloc(1, sizeof *ck);
  if (ck) nq_arena_init(&ck->strs, (size_t)1 << 16, 0);
  return ck;
}

void nq_ckpt_close(nq_ckpt_t *ck) {
  if (!ck) return;
  nq_st_close(ck->st);
  for (size_t i = 0; i < ck->nmaps; i++)
    if (ck->maps[i].base) munmap(ck->maps[i].base, ck->maps[i].size);
  free(ck->maps);
  for (size_t i = 0; i < ck->nbufs; i++) free(ck->bufs[i]);
  free(ck->bufs);
  nq_arena_deinit(&ck->strs);
  free(ck->t);
  free(ck->order);
  free(ck->vals);
  free(ck);
}

static int load_torch(nq_ckpt_t *ck, const unsigned char *base, size_t size, const char *label, const nq_pickle_limits_t *lim, nq_err_t *err) {
  if (size >= 4 && !memcmp(base, "PK\x03\x04", 4)) {
    if (ck->fmt != NQ_CKPT_TORCH_SHARDED) ck->fmt = NQ_CKPT_TORCH_ZIP;
    return load_zip(ck, base, size, label, lim, err);
  }
  if (size >= 2 && base[0] == 0x80) {
    if (ck->fmt != NQ_CKPT_TORCH_SHARDED) ck->fmt = NQ_CKPT_TORCH_LEGACY;
    return load_legacy(ck, base, size, label, lim, err);
  }
  if (size >= 4 && !memcmp(base, "PK\x05\x06", 4)) return PK_ERR(err, NQ_EFORMAT, "%s: empty zip archive", label);
  return PK_ERR(err, NQ_EFORMAT, "%s: not a torch.save checkpoint (neither zip nor legacy pickle)", label);
}

int nq_ckpt_open_mem(const void *buf, size_t n, const char *label, const nq_pickle_limits_t *lim, nq_ckpt_t **out, nq_err_t *err) {
  *out = NULL;
  nq_pickle_limits_t dl;
  if (!lim) nq_pickle_limits_init(&dl), lim = &dl;
  nq_ckpt_t *ck = ck_new();
  if (!ck) return PK_ERR(err, NQ_ENOMEM, "checkpoint: out of memory");
  int rc = load_torch(ck, buf, n, label ? label : "checkpoint", lim, err);
  if (!rc) rc = ck_index(ck, label ? label : "checkpoint", err);
  if (rc) {
    nq_ckpt_close(ck);
    return rc;
  }
  *out = ck;
  return 0;
}

static int ck_map_file(nq_ckpt_t *ck, const char *path, ck_map_t *m, nq_err_t *err) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return nq_err_set(err, errno == ENOENT ? NQ_ENOENT : NQ_EIO, NQ_ERR_FATAL, "%s: %s", path, strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return PK_ERR(err, NQ_EIO, "%s: not a regular file", path);
  }
  m->size = (size_t)st.st_size;
  m->base = NULL;
  if (m->size) {
    m->base = mmap(NULL, m->size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m->base == MAP_FAILED) {
      m->base = NULL;
      close(fd);
      return nq_err_set(err, NQ_EIO, NQ_ERR_RETRIABLE, "%s: mmap: %s", path, strerror(errno));
    }
  }
  close(fd);
  ck_map_t *nm = realloc(ck->maps, (ck->nmaps + 1) * sizeof *nm);
  if (!nm) {
    if (m->base) munmap(m->base, m->size);
    return PK_ERR(err, NQ_ENOMEM, "checkpoint: out of memory");
  }
  ck->maps = nm;
  ck->maps[ck->nmaps++] = *m;
  return 0;
}

static bool ends_with(const char *s, const char *suf) {
  size_t a = strlen(s), b = strlen(suf);
  return a >= b && !strcmp(s + a - b, suf);
}

/* pytorch_model.bin.index.json: {"weight_map": {tensor: shard file}}; every shard named is loaded. */
static int open_bin_index(nq_ckpt_t *ck, const char *path, json_t *root, const nq_pickle_limits_t *lim, nq_err_t *err) {
  json_t *wm = json_object_get(root, "weight_map");
  if (!json_is_object(wm)) return PK_ERR(err, NQ_EFORMAT, "%s: no weight_map object", path);
  ck->fmt = NQ_CKPT_TORCH_SHARDED;
  const char *slash = strrchr(path, '/');
  size_t dlen = slash ? (size_t)(slash - path + 1) : 0;
  const char **done = calloc(json_object_size(wm) + 1, sizeof *done);
  size_t ndone = 0;
  if (!done) return PK_ERR(err, NQ_ENOMEM, "checkpoint: out of memory");
  int rc = 0;
  const char *key;
  json_t *val;
  json_object_foreach(wm, key, val) {
    const char *shard = json_string_value(val);
    if (!shard || !*shard || strstr(shard, "..") || shard[0] == '/') {
      rc = PK_ERR(err, NQ_EFORMAT, "%s: tensor '%s': bad shard file name", path, key);
      break;
    }
    bool seen = false;
    for (size_t i = 0; i < ndone && !seen; i++) seen = !strcmp(done[i], shard);
    if (seen) continue;
    done[ndone++] = shard;
    char sp[4096];
    if ((size_t)snprintf(sp, sizeof sp, "%.*s%s", (int)dlen, path, shard) >= sizeof sp) {
      rc = PK_ERR(err, NQ_EINVAL, "%s: shard path too long", path);
      break;
    }
    ck_map_t m;
    if ((rc = ck_map_file(ck, sp, &m, err))) break;
    if ((rc = load_torch(ck, m.base, m.size, sp, lim, err))) break;
  }
  free(done);
  if (!rc && !(rc = ck_index(ck, path, err)))
    json_object_foreach(wm, key, val) if (!nq_ckpt_find(ck, key)) return PK_ERR(err, NQ_EFORMAT, "%s: tensor '%s' is not in shard %s", path, key, json_string_value(val));
  return rc;
}

int nq_ckpt_open_ex(const char *path, const nq_pickle_limits_t *lim, nq_ckpt_t **out, nq_err_t *err) {
  *out = NULL;
  struct stat sst;
  if (stat(path, &sst) == 0 && S_ISDIR(sst.st_mode)) { /* an HF model directory: its usual weight files */
    static const char *const cands[] = {"model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json",
                                        "pytorch_model.bin"};
    for (size_t i = 0; i < sizeof cands / sizeof cands[0]; i++) {
      char p[4096];
      if ((size_t)snprintf(p, sizeof p, "%s/%s", path, cands[i]) < sizeof p && access(p, R_OK) == 0) return nq_ckpt_open_ex(p, lim, out, err);
    }
    return PK_ERR(err, NQ_ENOENT, "%s: directory without model.safetensors[.index.json] or pytorch_model.bin[.index.json]", path);
  }
  nq_pickle_limits_t dl;
  if (!lim) nq_pickle_limits_init(&dl), lim = &dl;
  nq_ckpt_t *ck = ck_new();
  if (!ck) return PK_ERR(err, NQ_ENOMEM, "checkpoint: out of memory");
  int rc = 0;
  if (ends_with(path, ".json")) {
    json_error_t je;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    if (!root) rc = PK_ERR(err, NQ_EFORMAT, "%s:%d:%d: %s", path, je.line, je.column, je.text);
    else {
      const char *first = NULL;
      json_t *wm = json_object_get(root, "weight_map");
      if (json_is_object(wm) && json_object_size(wm)) first = json_string_value(json_object_iter_value(json_object_iter(wm)));
      if (first && ends_with(first, ".safetensors")) {
        ck->fmt = NQ_CKPT_SAFETENSORS;
        rc = nq_st_open(path, &ck->st, err);
      } else
        rc = open_bin_index(ck, path, root, lim, err);
      json_decref(root);
    }
  } else {
    ck_map_t m;
    rc = ck_map_file(ck, path, &m, err);
    const unsigned char *b = m.base;
    if (!rc && m.size >= 9 && !(b[0] == 'P' && b[1] == 'K') && b[0] != 0x80 && b[8] == '{' && rd_le(b, 8) <= m.size - 8) {
      munmap(m.base, m.size); /* safetensors: its own reader maps it */
      ck->nmaps--;
      ck->fmt = NQ_CKPT_SAFETENSORS;
      rc = nq_st_open(path, &ck->st, err);
    } else if (!rc) {
      rc = load_torch(ck, m.base, m.size, path, lim, err);
      if (!rc) rc = ck_index(ck, path, err);
    }
  }
  if (rc) {
    nq_ckpt_close(ck);
    return rc;
  }
  *out = ck;
  return 0;
}

int nq_ckpt_open(const char *path, nq_ckpt_t **out, nq_err_t *err) { return nq_ckpt_open_ex(path, NULL, out, err); }

nq_ckpt_format_t nq_ckpt_format(const nq_ckpt_t *ck) { return ck->fmt; }

const char *nq_ckpt_format_name(nq_ckpt_format_t f) {
  switch (f) {
  case NQ_CKPT_SAFETENSORS: return "safetensors";
  case NQ_CKPT_TORCH_ZIP: return "torch-zip";
  case NQ_CKPT_TORCH_LEGACY: return "torch-legacy";
  case NQ_CKPT_TORCH_SHARDED: return "torch-sharded";
  }
  return "?";
}

size_t nq_ckpt_count(const nq_ckpt_t *ck) { return ck->st ? nq_st_count(ck->st) : ck->n; }

const nq_ckpt_tensor_t *nq_ckpt_get(const nq_ckpt_t *ck, size_t i) {
  if (ck->st) return nq_st_get(ck->st, i);
  return i < ck->n ? &ck->t[i] : NULL;
}

const nq_ckpt_tensor_t *nq_ckpt_find(const nq_ckpt_t *ck, const char *name) {
  if (ck->st) return nq_st_find(ck->st, name);
  if (!ck->order) return NULL;
  size_t lo = 0, hi = ck->n;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    int c = strcmp(ck->t[ck->order[mid]].name, name);
    if (!c) return &ck->t[ck->order[mid]];
    if (c < 0) lo = mid + 1;
    else hi = mid;
  }
  return NULL;
}

int nq_ckpt_expect(const nq_ckpt_t *ck, const char *name, nq_dtype_t dtype, int ndim, const int64_t *shape,
                   const nq_ckpt_tensor_t **out, nq_err_t *err) {
  if (ck->st) return nq_st_expect(ck->st, name, dtype, ndim, shape, out, err);
  const nq_ckpt_tensor_t *t = nq_ckpt_find(ck, name);
  if (out) *out = t;
  if (!t) return PK_ERR(err, NQ_ENOENT, "tensor '%s' is missing", name);
  if (t->dtype != dtype) return PK_ERR(err, NQ_EFORMAT, "tensor '%s': dtype %s, expected %s", name, nq_dtype_name(t->dtype), nq_dtype_name(dtype));
  int ok = t->ndim == ndim;
  for (int i = 0; ok && i < ndim; i++) ok = shape[i] < 0 || shape[i] == t->shape[i];
  if (!ok) {
    char a[128] = "[", b[128] = "[";
    for (int i = 0; i < t->ndim; i++) snprintf(a + strlen(a), sizeof a - strlen(a), "%s%lld", i ? "," : "", (long long)t->shape[i]);
    for (int i = 0; i < ndim; i++) snprintf(b + strlen(b), sizeof b - strlen(b), "%s%lld", i ? "," : "", (long long)shape[i]);
    return PK_ERR(err, NQ_ESHAPE, "tensor '%s': shape %s], expected %s]", name, a, b);
  }
  return 0;
}

size_t nq_ckpt_value_count(const nq_ckpt_t *ck) { return ck->nvals; }
const char *nq_ckpt_value_name(const nq_ckpt_t *ck, size_t i) { return i < ck->nvals ? ck->vals[i].name : NULL; }
const char *nq_ckpt_value_repr(const nq_ckpt_t *ck, size_t i) { return i < ck->nvals ? ck->vals[i].repr : NULL; }

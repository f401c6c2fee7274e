/* gguf.c - GGUF v3 reader (bounds-checked, over an mmap) and streaming writer.
 *
 * Reader design: a cursor (pos, end) walks the mapped bytes; every read goes
 * through cursor_take(), which fails instead of running past the end. Counts
 * read from the file (number of keys, tensors, array items, string lengths)
 * are checked against the bytes that remain before anything is allocated for
 * them, so a hostile header cannot make us allocate terabytes. Scalar arrays
 * are not copied (a pointer to their packed bytes is kept); string and nested
 * arrays are parsed into gguf_value items. Tensor names are copied and
 * indexed in a hash table for gguf_find_tensor().
 *
 * Writer design: metadata is serialised into a growing memory buffer as it
 * is set; tensors are declared (name, shape, type) so their offsets can be
 * laid out; begin() writes header + metadata + tensor table + padding, and
 * tensor payloads are then streamed in declaration order with alignment
 * padding between them. Nothing but the metadata is held in memory.
 */
#include "gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dtype.h"

#define GGUF_MAX_NAME_LEN 4096

struct gguf_file {
    const uint8_t *base; /* whole file */
    uint64_t size;
    bool mapped;         /* base came from mmap (unmap on close) */
    uint32_t version;
    uint32_t alignment;
    uint64_t data_offset;
    uint64_t n_kv;
    gguf_kv *kvs;
    uint64_t n_tensors;
    gguf_tensor *tensors;
    int64_t *tensor_hash; /* open addressing, -1 = empty; size tensor_hash_cap */
    uint64_t tensor_hash_cap;
};

/* ------------------------------------------------------------------------ */
/* errors */

static void set_err(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || errlen == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* ------------------------------------------------------------------------ */
/* bounded cursor */

typedef struct {
    const uint8_t *p;
    const uint8_t *end;
    const uint8_t *base;
    char *err;
    size_t errlen;
    bool failed;
} cursor;

static uint64_t cursor_left(const cursor *c) { return (uint64_t)(c->end - c->p); }
static uint64_t cursor_pos(const cursor *c) { return (uint64_t)(c->p - c->base); }

static const uint8_t *cursor_take(cursor *c, uint64_t n, const char *what) {
    if (c->failed) return NULL;
    if (n > cursor_left(c)) {
        set_err(c->err, c->errlen, "truncated file: %s needs %llu bytes at offset %llu, only %llu left", what,
                (unsigned long long)n, (unsigned long long)cursor_pos(c), (unsigned long long)cursor_left(c));
        c->failed = true;
        return NULL;
    }
    const uint8_t *p = c->p;
    c->p += n;
    return p;
}

static uint64_t rd_le(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static bool cursor_u32(cursor *c, uint32_t *out, const char *what) {
    const uint8_t *p = cursor_take(c, 4, what);
    if (!p) return false;
    *out = (uint32_t)rd_le(p, 4);
    return true;
}

static bool cursor_u64(cursor *c, uint64_t *out, const char *what) {
    const uint8_t *p = cursor_take(c, 8, what);
    if (!p) return false;
    *out = rd_le(p, 8);
    return true;
}

static bool cursor_str(cursor *c, gguf_str *out, const char *what) {
    uint64_t len;
    if (!cursor_u64(c, &len, what)) return false;
    const uint8_t *p = cursor_take(c, len, what);
    if (!p) return false;
    out->data = (const char *)p;
    out->len = len;
    return true;
}

/* ------------------------------------------------------------------------ */
/* value types */

static const char *const vtype_names[GGUF_TYPE_COUNT] = {
    "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64",
};

const char *gguf_vtype_name(gguf_vtype t) { return (unsigned)t < GGUF_TYPE_COUNT ? vtype_names[t] : "?"; }

/* Size of a scalar of type t, 0 for string/array/invalid. */
static int scalar_size(gguf_vtype t) {
    switch (t) {
    case GGUF_TYPE_UINT8: case GGUF_TYPE_INT8: case GGUF_TYPE_BOOL: return 1;
    case GGUF_TYPE_UINT16: case GGUF_TYPE_INT16: return 2;
    case GGUF_TYPE_UINT32: case GGUF_TYPE_INT32: case GGUF_TYPE_FLOAT32: return 4;
    case GGUF_TYPE_UINT64: case GGUF_TYPE_INT64: case GGUF_TYPE_FLOAT64: return 8;
    default: return 0;
    }
}

/* Decode one packed scalar of type t at p into v. */
static void decode_scalar(gguf_vtype t, const uint8_t *p, gguf_value *v) {
    v->type = t;
    int n = scalar_size(t);
    uint64_t raw = rd_le(p, n);
    switch (t) {
    case GGUF_TYPE_UINT8: case GGUF_TYPE_UINT16: case GGUF_TYPE_UINT32: case GGUF_TYPE_UINT64:
        v->u64 = raw;
        break;
    case GGUF_TYPE_INT8: v->i64 = (int8_t)raw; break;
    case GGUF_TYPE_INT16: v->i64 = (int16_t)raw; break;
    case GGUF_TYPE_INT32: v->i64 = (int32_t)raw; break;
    case GGUF_TYPE_INT64: v->i64 = (int64_t)raw; break;
    case GGUF_TYPE_FLOAT32: {
        uint32_t u = (uint32_t)raw;
        float f;
        memcpy(&f, &u, 4);
        v->f64 = f;
        break;
    }
    case GGUF_TYPE_FLOAT64: {
        double d;
        memcpy(&d, &raw, 8);
        v->f64 = d;
        break;
    }
    case GGUF_TYPE_BOOL: v->b = raw != 0; break;
    default: break;
    }
}

static void value_free(gguf_value *v) {
    if (v->type != GGUF_TYPE_ARRAY || !v->arr.items) return;
    for (uint64_t i = 0; i < v->arr.count; i++) value_free(&v->arr.items[i]);
    free(v->arr.items);
    v->arr.items = NULL;
}

static bool parse_value(cursor *c, gguf_vtype type, gguf_value *v, int depth, const char *key);

static bool parse_array(cursor *c, gguf_value *v, int depth, const char *key) {
    uint32_t et;
    uint64_t count;
    if (!cursor_u32(c, &et, "array item type") || !cursor_u64(c, &count, "array length")) return false;
    if (et >= GGUF_TYPE_COUNT) {
        set_err(c->err, c->errlen, "key '%s': array item type %u is not a GGUF value type", key, et);
        return false;
    }
    if (depth >= GGUF_MAX_ARRAY_DEPTH && et == GGUF_TYPE_ARRAY) {
        set_err(c->err, c->errlen, "key '%s': arrays nested deeper than %d", key, GGUF_MAX_ARRAY_DEPTH);
        return false;
    }
    v->type = GGUF_TYPE_ARRAY;
    v->arr.elem_type = (gguf_vtype)et;
    v->arr.count = count;
    v->arr.raw = NULL;
    v->arr.items = NULL;
    int ss = scalar_size((gguf_vtype)et);
    if (ss > 0) {
        if (count > cursor_left(c) / (uint64_t)ss) {
            set_err(c->err, c->errlen, "key '%s': array of %llu %s items runs past the end of the file", key,
                    (unsigned long long)count, gguf_vtype_name((gguf_vtype)et));
            return false;
        }
        v->arr.raw = cursor_take(c, count * (uint64_t)ss, "array data");
        return v->arr.raw != NULL;
    }
    /* strings need >= 8 bytes each, arrays >= 12: reject impossible counts
     * before allocating */
    uint64_t min_item = et == GGUF_TYPE_STRING ? 8 : 12;
    if (count > cursor_left(c) / min_item) {
        set_err(c->err, c->errlen, "key '%s': array of %llu %s items runs past the end of the file", key,
                (unsigned long long)count, gguf_vtype_name((gguf_vtype)et));
        return false;
    }
    if (count == 0) return true;
    v->arr.items = calloc(count, sizeof(gguf_value));
    if (!v->arr.items) {
        set_err(c->err, c->errlen, "key '%s': out of memory for %llu array items", key, (unsigned long long)count);
        return false;
    }
    for (uint64_t i = 0; i < count; i++) {
        v->arr.items[i].type = (gguf_vtype)et;
        if (!parse_value(c, (gguf_vtype)et, &v->arr.items[i], depth + 1, key)) {
            v->arr.count = i + 1; /* free only what was parsed */
            return false;
        }
    }
    return true;
}

static bool parse_value(cursor *c, gguf_vtype type, gguf_value *v, int depth, const char *key) {
    v->type = type;
    if (type == GGUF_TYPE_STRING) return cursor_str(c, &v->str, "string value");
    if (type == GGUF_TYPE_ARRAY) return parse_array(c, v, depth, key);
    int ss = scalar_size(type);
    if (ss == 0) {
        set_err(c->err, c->errlen, "key '%s': value type %u is not a GGUF value type", key, (unsigned)type);
        return false;
    }
    const uint8_t *p = cursor_take(c, (uint64_t)ss, "scalar value");
    if (!p) return false;
    decode_scalar(type, p, v);
    return true;
}

/* ------------------------------------------------------------------------ */
/* tensor name hash */

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 1099511628211ull;
    return h;
}

static int64_t tensor_lookup(const gguf_file *f, const char *name) {
    if (f->tensor_hash_cap == 0) return -1;
    uint64_t mask = f->tensor_hash_cap - 1;
    for (uint64_t h = hash_bytes(name, strlen(name)) & mask;; h = (h + 1) & mask) {
        int64_t idx = f->tensor_hash[h];
        if (idx < 0) return -1;
        if (strcmp(f->tensors[idx].name, name) == 0) return idx;
    }
}

/* ------------------------------------------------------------------------ */
/* open */

static bool parse_file(gguf_file *f, char *err, size_t errlen) {
    cursor c = {.p = f->base, .end = f->base + f->size, .base = f->base, .err = err, .errlen = errlen};
    uint32_t magic;
    if (!cursor_u32(&c, &magic, "magic")) return false;
    if (magic != GGUF_MAGIC) {
        set_err(err, errlen, "not a GGUF file (magic 0x%08x, expected 0x%08x \"GGUF\")", magic, GGUF_MAGIC);
        return false;
    }
    if (!cursor_u32(&c, &f->version, "version")) return false;
    if (f->version != GGUF_VERSION) {
        set_err(err, errlen, "unsupported GGUF version %u (only version %d is supported)", f->version, GGUF_VERSION);
        return false;
    }
    if (!cursor_u64(&c, &f->n_tensors, "tensor count") || !cursor_u64(&c, &f->n_kv, "metadata count")) return false;
    /* a KV entry takes >= 8 (key len) + 4 (type) + 1 bytes; a tensor info >= 8+4+8+4+8 */
    if (f->n_kv > cursor_left(&c) / 13) {
        set_err(err, errlen, "header claims %llu metadata entries, more than the file can hold (truncated or corrupt file?)",
                (unsigned long long)f->n_kv);
        return false;
    }
    if (f->n_tensors > cursor_left(&c) / 32) {
        set_err(err, errlen, "header claims %llu tensors, more than the file can hold (truncated or corrupt file?)",
                (unsigned long long)f->n_tensors);
        return false;
    }

    f->kvs = calloc(f->n_kv ? f->n_kv : 1, sizeof(gguf_kv));
    if (!f->kvs) { set_err(err, errlen, "out of memory"); return false; }
    f->alignment = GGUF_DEFAULT_ALIGNMENT;
    for (uint64_t i = 0; i < f->n_kv; i++) {
        gguf_kv *kv = &f->kvs[i];
        if (!cursor_str(&c, &kv->key, "metadata key")) return false;
        char keybuf[256];
        size_t kl = kv->key.len < sizeof keybuf - 1 ? (size_t)kv->key.len : sizeof keybuf - 1;
        memcpy(keybuf, kv->key.data, kl);
        keybuf[kl] = 0;
        if (kv->key.len == 0 || kv->key.len > GGUF_MAX_NAME_LEN) {
            set_err(err, errlen, "metadata entry %llu has an invalid key length %llu", (unsigned long long)i,
                    (unsigned long long)kv->key.len);
            return false;
        }
        for (uint64_t j = 0; j < i; j++) {
            if (f->kvs[j].key.len == kv->key.len && memcmp(f->kvs[j].key.data, kv->key.data, kv->key.len) == 0) {
                set_err(err, errlen, "duplicate metadata key '%s'", keybuf);
                return false;
            }
        }
        uint32_t t;
        if (!cursor_u32(&c, &t, "metadata value type")) return false;
        if (t >= GGUF_TYPE_COUNT) {
            set_err(err, errlen, "key '%s': value type %u is not a GGUF value type", keybuf, t);
            return false;
        }
        if (!parse_value(&c, (gguf_vtype)t, &kv->value, 0, keybuf)) {
            if (!c.failed && err && !err[0]) set_err(err, errlen, "key '%s': bad value", keybuf);
            return false;
        }
        if (gguf_str_eq(kv->key, "general.alignment")) {
            if (kv->value.type != GGUF_TYPE_UINT32) {
                set_err(err, errlen, "general.alignment must be u32, found %s", gguf_vtype_name(kv->value.type));
                return false;
            }
            uint64_t a = kv->value.u64;
            if (a == 0 || (a & (a - 1)) != 0 || a > (1u << 20)) {
                set_err(err, errlen, "general.alignment %llu is not a power of two in [1, 2^20]",
                        (unsigned long long)a);
                return false;
            }
            f->alignment = (uint32_t)a;
        }
    }
    /* the duplicate-key scan above is quadratic; GGUF files carry tens of keys */

    f->tensors = calloc(f->n_tensors ? f->n_tensors : 1, sizeof(gguf_tensor));
    if (!f->tensors) { set_err(err, errlen, "out of memory"); return false; }
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        gguf_tensor *t = &f->tensors[i];
        gguf_str name;
        if (!cursor_str(&c, &name, "tensor name")) return false;
        if (name.len == 0 || name.len > GGUF_MAX_NAME_LEN || memchr(name.data, 0, name.len)) {
            set_err(err, errlen, "tensor %llu has an invalid name (length %llu)", (unsigned long long)i,
                    (unsigned long long)name.len);
            return false;
        }
        t->name = malloc(name.len + 1);
        if (!t->name) { set_err(err, errlen, "out of memory"); return false; }
        memcpy(t->name, name.data, name.len);
        t->name[name.len] = 0;
        if (!cursor_u32(&c, &t->n_dims, "tensor dimension count")) return false;
        if (t->n_dims < 1 || t->n_dims > GGUF_MAX_DIMS) {
            set_err(err, errlen, "tensor '%s': %u dimensions (must be 1..%d)", t->name, t->n_dims, GGUF_MAX_DIMS);
            return false;
        }
        for (int d = 0; d < GGUF_MAX_DIMS; d++) t->ne[d] = 1;
        t->n_elems = 1;
        for (uint32_t d = 0; d < t->n_dims; d++) {
            if (!cursor_u64(&c, &t->ne[d], "tensor dimension")) return false;
            if (t->ne[d] == 0 || t->ne[d] > (1ull << 62)) {
                set_err(err, errlen, "tensor '%s': dimension %u has invalid size %llu", t->name, d,
                        (unsigned long long)t->ne[d]);
                return false;
            }
            if (t->n_elems > (1ull << 62) / t->ne[d]) {
                set_err(err, errlen, "tensor '%s': element count overflows", t->name);
                return false;
            }
            t->n_elems *= t->ne[d];
        }
        if (!cursor_u32(&c, &t->type, "tensor type") || !cursor_u64(&c, &t->offset, "tensor offset")) return false;
        const ds4_dtype_traits *tr = ds4_dtype_info(t->type);
        if (!tr) {
            set_err(err, errlen, "tensor '%s': unknown ggml type %u", t->name, t->type);
            return false;
        }
        if (t->ne[0] % tr->block_elems != 0) {
            set_err(err, errlen, "tensor '%s': row length %llu is not a multiple of the %s block size %u", t->name,
                    (unsigned long long)t->ne[0], tr->name, tr->block_elems);
            return false;
        }
        if (!ds4_dtype_nbytes(t->type, t->n_elems, &t->nbytes)) {
            set_err(err, errlen, "tensor '%s': byte size overflows", t->name);
            return false;
        }
        for (uint64_t j = 0; j < i; j++) {
            if (strcmp(f->tensors[j].name, t->name) == 0) {
                /* quadratic only on the error-free path's first pass; fine up to ~10^4 tensors */
                set_err(err, errlen, "duplicate tensor name '%s'", t->name);
                return false;
            }
        }
    }

    uint64_t info_end = cursor_pos(&c);
    uint64_t a = f->alignment;
    f->data_offset = (info_end + a - 1) / a * a;
    if (f->n_tensors > 0 && f->data_offset > f->size) {
        set_err(err, errlen, "truncated file: data section would start at %llu, file has %llu bytes",
                (unsigned long long)f->data_offset, (unsigned long long)f->size);
        return false;
    }
    uint64_t data_size = f->data_offset <= f->size ? f->size - f->data_offset : 0;
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        gguf_tensor *t = &f->tensors[i];
        if (t->offset % a != 0) {
            set_err(err, errlen, "tensor '%s': data offset %llu is not aligned to %u", t->name,
                    (unsigned long long)t->offset, f->alignment);
            return false;
        }
        if (t->offset > data_size || t->nbytes > data_size - t->offset) {
            set_err(err, errlen,
                    "tensor '%s': data [%llu, %llu) runs past the end of the file (data section is %llu bytes; "
                    "file truncated?)",
                    t->name, (unsigned long long)t->offset, (unsigned long long)(t->offset + t->nbytes),
                    (unsigned long long)data_size);
            return false;
        }
        t->data = f->base + f->data_offset + t->offset;
    }

    /* name index */
    uint64_t cap = 16;
    while (cap < f->n_tensors * 2) cap <<= 1;
    f->tensor_hash = malloc(cap * sizeof(int64_t));
    if (!f->tensor_hash) { set_err(err, errlen, "out of memory"); return false; }
    for (uint64_t i = 0; i < cap; i++) f->tensor_hash[i] = -1;
    f->tensor_hash_cap = cap;
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        uint64_t h = hash_bytes(f->tensors[i].name, strlen(f->tensors[i].name)) & (cap - 1);
        while (f->tensor_hash[h] >= 0) h = (h + 1) & (cap - 1);
        f->tensor_hash[h] = (int64_t)i;
    }
    return true;
}

static gguf_file *open_common(gguf_file *f, const char *label, char *err, size_t errlen) {
    char inner[512] = {0};
    if (!parse_file(f, inner, sizeof inner)) {
        set_err(err, errlen, "%s: %s", label, inner[0] ? inner : "invalid GGUF file");
        gguf_close(f);
        return NULL;
    }
    return f;
}

gguf_file *gguf_open_memory(const void *data, size_t size, char *err, size_t errlen) {
    gguf_file *f = calloc(1, sizeof *f);
    if (!f) { set_err(err, errlen, "out of memory"); return NULL; }
    f->base = data;
    f->size = size;
    return open_common(f, "<memory>", err, errlen);
}

gguf_file *gguf_open(const char *path, char *err, size_t errlen) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        set_err(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        set_err(err, errlen, "%s: not a regular file", path);
        close(fd);
        return NULL;
    }
    if (st.st_size == 0) {
        set_err(err, errlen, "%s: empty file (not a GGUF model)", path);
        close(fd);
        return NULL;
    }
    void *m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (m == MAP_FAILED) {
        set_err(err, errlen, "%s: mmap failed: %s", path, strerror(errno));
        return NULL;
    }
    gguf_file *f = calloc(1, sizeof *f);
    if (!f) { munmap(m, (size_t)st.st_size); set_err(err, errlen, "out of memory"); return NULL; }
    f->base = m;
    f->size = (uint64_t)st.st_size;
    f->mapped = true;
    return open_common(f, path, err, errlen);
}

void gguf_close(gguf_file *f) {
    if (!f) return;
    if (f->kvs)
        for (uint64_t i = 0; i < f->n_kv; i++) value_free(&f->kvs[i].value);
    free(f->kvs);
    if (f->tensors)
        for (uint64_t i = 0; i < f->n_tensors; i++) free(f->tensors[i].name);
    free(f->tensors);
    free(f->tensor_hash);
    if (f->mapped) munmap((void *)f->base, (size_t)f->size);
    free(f);
}

/* ------------------------------------------------------------------------ */
/* accessors */

uint32_t gguf_version(const gguf_file *f) { return f->version; }
uint32_t gguf_alignment(const gguf_file *f) { return f->alignment; }
uint64_t gguf_data_offset(const gguf_file *f) { return f->data_offset; }
uint64_t gguf_file_size(const gguf_file *f) { return f->size; }
const void *gguf_base(const gguf_file *f) { return f->base; }
uint64_t gguf_n_kv(const gguf_file *f) { return f->n_kv; }
const gguf_kv *gguf_kv_at(const gguf_file *f, uint64_t i) { return i < f->n_kv ? &f->kvs[i] : NULL; }
uint64_t gguf_n_tensors(const gguf_file *f) { return f->n_tensors; }
const gguf_tensor *gguf_tensor_at(const gguf_file *f, uint64_t i) { return i < f->n_tensors ? &f->tensors[i] : NULL; }

const gguf_tensor *gguf_find_tensor(const gguf_file *f, const char *name) {
    int64_t i = tensor_lookup(f, name);
    return i < 0 ? NULL : &f->tensors[i];
}

bool gguf_str_eq(gguf_str s, const char *c) {
    size_t n = strlen(c);
    return s.len == n && memcmp(s.data, c, n) == 0;
}

const gguf_value *gguf_get(const gguf_file *f, const char *key) {
    for (uint64_t i = 0; i < f->n_kv; i++)
        if (gguf_str_eq(f->kvs[i].key, key)) return &f->kvs[i].value;
    return NULL;
}

static bool is_uint(gguf_vtype t) {
    return t == GGUF_TYPE_UINT8 || t == GGUF_TYPE_UINT16 || t == GGUF_TYPE_UINT32 || t == GGUF_TYPE_UINT64;
}
static bool is_int(gguf_vtype t) {
    return t == GGUF_TYPE_INT8 || t == GGUF_TYPE_INT16 || t == GGUF_TYPE_INT32 || t == GGUF_TYPE_INT64;
}

bool gguf_value_as_i64(const gguf_value *v, int64_t *out) {
    if (!v) return false;
    if (is_uint(v->type)) {
        if (v->u64 > (uint64_t)INT64_MAX) return false;
        *out = (int64_t)v->u64;
        return true;
    }
    if (is_int(v->type)) { *out = v->i64; return true; }
    return false;
}

bool gguf_value_as_f64(const gguf_value *v, double *out) {
    if (!v) return false;
    if (v->type == GGUF_TYPE_FLOAT32 || v->type == GGUF_TYPE_FLOAT64) { *out = v->f64; return true; }
    if (is_uint(v->type)) { *out = (double)v->u64; return true; }
    if (is_int(v->type)) { *out = (double)v->i64; return true; }
    return false;
}

bool gguf_get_u64(const gguf_file *f, const char *key, uint64_t *out) {
    const gguf_value *v = gguf_get(f, key);
    if (!v) return false;
    if (is_uint(v->type)) { *out = v->u64; return true; }
    if (is_int(v->type) && v->i64 >= 0) { *out = (uint64_t)v->i64; return true; }
    return false;
}

bool gguf_get_u32(const gguf_file *f, const char *key, uint32_t *out) {
    uint64_t v;
    if (!gguf_get_u64(f, key, &v) || v > UINT32_MAX) return false;
    *out = (uint32_t)v;
    return true;
}

bool gguf_get_f64(const gguf_file *f, const char *key, double *out) { return gguf_value_as_f64(gguf_get(f, key), out); }

bool gguf_get_bool(const gguf_file *f, const char *key, bool *out) {
    const gguf_value *v = gguf_get(f, key);
    if (!v || v->type != GGUF_TYPE_BOOL) return false;
    *out = v->b;
    return true;
}

bool gguf_get_str(const gguf_file *f, const char *key, gguf_str *out) {
    const gguf_value *v = gguf_get(f, key);
    if (!v || v->type != GGUF_TYPE_STRING) return false;
    *out = v->str;
    return true;
}

uint64_t gguf_arr_len(const gguf_value *v) { return v && v->type == GGUF_TYPE_ARRAY ? v->arr.count : 0; }

static bool arr_item(const gguf_value *v, uint64_t i, gguf_value *tmp) {
    if (!v || v->type != GGUF_TYPE_ARRAY || i >= v->arr.count) return false;
    if (v->arr.raw) {
        int ss = scalar_size(v->arr.elem_type);
        decode_scalar(v->arr.elem_type, v->arr.raw + i * (uint64_t)ss, tmp);
    } else {
        *tmp = v->arr.items[i];
    }
    return true;
}

bool gguf_arr_i64(const gguf_value *v, uint64_t i, int64_t *out) {
    gguf_value t;
    return arr_item(v, i, &t) && gguf_value_as_i64(&t, out);
}

bool gguf_arr_f64(const gguf_value *v, uint64_t i, double *out) {
    gguf_value t;
    return arr_item(v, i, &t) && gguf_value_as_f64(&t, out);
}

bool gguf_arr_str(const gguf_value *v, uint64_t i, gguf_str *out) {
    gguf_value t;
    if (!arr_item(v, i, &t) || t.type != GGUF_TYPE_STRING) return false;
    *out = t.str;
    return true;
}

/* ------------------------------------------------------------------------ */
/* writer */

typedef struct {
    char *name;
    uint32_t n_dims;
    uint64_t ne[GGUF_MAX_DIMS];
    uint32_t type;
    uint64_t nbytes;
    uint64_t offset;
} writer_tensor;

struct gguf_writer {
    uint8_t *kv_buf; /* serialised metadata entries */
    size_t kv_len, kv_cap;
    uint64_t n_kv;
    char **keys; /* for duplicate detection */
    writer_tensor *tensors;
    uint64_t n_tensors, tensors_cap;
    uint32_t alignment;
    FILE *fp;
    uint64_t cur_tensor;  /* tensor being streamed */
    uint64_t cur_written; /* bytes of it written so far */
    char err[256];
    bool failed;
};

static void w_fail(gguf_writer *w, const char *fmt, ...) {
    if (w->failed) return;
    w->failed = true;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->err, sizeof w->err, fmt, ap);
    va_end(ap);
}

gguf_writer *gguf_writer_new(void) {
    gguf_writer *w = calloc(1, sizeof *w);
    if (w) w->alignment = GGUF_DEFAULT_ALIGNMENT;
    return w;
}

void gguf_writer_free(gguf_writer *w) {
    if (!w) return;
    free(w->kv_buf);
    for (uint64_t i = 0; i < w->n_kv; i++) free(w->keys[i]);
    free(w->keys);
    for (uint64_t i = 0; i < w->n_tensors; i++) free(w->tensors[i].name);
    free(w->tensors);
    free(w);
}

const char *gguf_writer_error(const gguf_writer *w) { return w->failed ? w->err : NULL; }

static void buf_put(gguf_writer *w, const void *p, size_t n) {
    if (w->failed) return;
    if (w->kv_len + n > w->kv_cap) {
        size_t cap = w->kv_cap ? w->kv_cap : 4096;
        while (cap < w->kv_len + n) cap *= 2;
        uint8_t *nb = realloc(w->kv_buf, cap);
        if (!nb) { w_fail(w, "out of memory serialising metadata"); return; }
        w->kv_buf = nb;
        w->kv_cap = cap;
    }
    memcpy(w->kv_buf + w->kv_len, p, n);
    w->kv_len += n;
}

static void buf_le(gguf_writer *w, uint64_t v, int n) {
    uint8_t b[8];
    for (int i = 0; i < n; i++) b[i] = (uint8_t)(v >> (8 * i));
    buf_put(w, b, (size_t)n);
}

static void buf_str(gguf_writer *w, const char *s, uint64_t len) {
    buf_le(w, len, 8);
    buf_put(w, s, (size_t)len);
}

/* Starts a KV entry: key + type. Rejects duplicates. */
static bool kv_begin(gguf_writer *w, const char *key, gguf_vtype type) {
    if (w->failed) return false;
    for (uint64_t i = 0; i < w->n_kv; i++) {
        if (strcmp(w->keys[i], key) == 0) {
            w_fail(w, "metadata key '%s' set twice", key);
            return false;
        }
    }
    char **nk = realloc(w->keys, (w->n_kv + 1) * sizeof *nk);
    if (!nk) { w_fail(w, "out of memory"); return false; }
    w->keys = nk;
    w->keys[w->n_kv] = strdup(key);
    if (!w->keys[w->n_kv]) { w_fail(w, "out of memory"); return false; }
    w->n_kv++;
    buf_str(w, key, strlen(key));
    buf_le(w, (uint64_t)type, 4);
    return !w->failed;
}

void gguf_writer_set_u32(gguf_writer *w, const char *key, uint32_t v) {
    if (strcmp(key, "general.alignment") == 0) {
        if (v == 0 || (v & (v - 1)) != 0) { w_fail(w, "general.alignment %u is not a power of two", v); return; }
        w->alignment = v;
    }
    if (kv_begin(w, key, GGUF_TYPE_UINT32)) buf_le(w, v, 4);
}
void gguf_writer_set_i32(gguf_writer *w, const char *key, int32_t v) {
    if (kv_begin(w, key, GGUF_TYPE_INT32)) buf_le(w, (uint32_t)v, 4);
}
void gguf_writer_set_u64(gguf_writer *w, const char *key, uint64_t v) {
    if (kv_begin(w, key, GGUF_TYPE_UINT64)) buf_le(w, v, 8);
}
void gguf_writer_set_f32(gguf_writer *w, const char *key, float v) {
    uint32_t u;
    memcpy(&u, &v, 4);
    if (kv_begin(w, key, GGUF_TYPE_FLOAT32)) buf_le(w, u, 4);
}
void gguf_writer_set_f64(gguf_writer *w, const char *key, double v) {
    uint64_t u;
    memcpy(&u, &v, 8);
    if (kv_begin(w, key, GGUF_TYPE_FLOAT64)) buf_le(w, u, 8);
}
void gguf_writer_set_bool(gguf_writer *w, const char *key, bool v) {
    if (kv_begin(w, key, GGUF_TYPE_BOOL)) buf_le(w, v ? 1 : 0, 1);
}
void gguf_writer_set_strn(gguf_writer *w, const char *key, const char *v, uint64_t len) {
    if (kv_begin(w, key, GGUF_TYPE_STRING)) buf_str(w, v, len);
}
void gguf_writer_set_str(gguf_writer *w, const char *key, const char *v) { gguf_writer_set_strn(w, key, v, strlen(v)); }

void gguf_writer_set_arr(gguf_writer *w, const char *key, gguf_vtype elem_type, const void *elems, uint64_t count) {
    int ss = scalar_size(elem_type);
    if (ss == 0) { w_fail(w, "key '%s': gguf_writer_set_arr needs a scalar item type", key); return; }
    if (!kv_begin(w, key, GGUF_TYPE_ARRAY)) return;
    buf_le(w, (uint64_t)elem_type, 4);
    buf_le(w, count, 8);
    /* host is little-endian on every platform we build for (x86-64, arm64) */
    buf_put(w, elems, (size_t)(count * (uint64_t)ss));
}

void gguf_writer_set_arr_str(gguf_writer *w, const char *key, const char *const *strs, uint64_t count) {
    if (!kv_begin(w, key, GGUF_TYPE_ARRAY)) return;
    buf_le(w, GGUF_TYPE_STRING, 4);
    buf_le(w, count, 8);
    for (uint64_t i = 0; i < count; i++) buf_str(w, strs[i], strlen(strs[i]));
}

static void put_value_body(gguf_writer *w, const gguf_value *v) {
    switch (v->type) {
    case GGUF_TYPE_STRING: buf_str(w, v->str.data, v->str.len); break;
    case GGUF_TYPE_ARRAY:
        buf_le(w, (uint64_t)v->arr.elem_type, 4);
        buf_le(w, v->arr.count, 8);
        if (v->arr.raw) {
            buf_put(w, v->arr.raw, (size_t)(v->arr.count * (uint64_t)scalar_size(v->arr.elem_type)));
        } else {
            for (uint64_t i = 0; i < v->arr.count; i++) put_value_body(w, &v->arr.items[i]);
        }
        break;
    case GGUF_TYPE_FLOAT32: {
        float fv = (float)v->f64;
        uint32_t u;
        memcpy(&u, &fv, 4);
        buf_le(w, u, 4);
        break;
    }
    case GGUF_TYPE_FLOAT64: {
        uint64_t u;
        memcpy(&u, &v->f64, 8);
        buf_le(w, u, 8);
        break;
    }
    case GGUF_TYPE_BOOL: buf_le(w, v->b ? 1 : 0, 1); break;
    default:
        if (is_uint(v->type)) buf_le(w, v->u64, scalar_size(v->type));
        else if (is_int(v->type)) buf_le(w, (uint64_t)v->i64, scalar_size(v->type));
        else w_fail(w, "cannot serialise value type %u", (unsigned)v->type);
    }
}

void gguf_writer_set_value(gguf_writer *w, const char *key, const gguf_value *v) {
    if (kv_begin(w, key, v->type)) put_value_body(w, v);
    if (strcmp(key, "general.alignment") == 0 && v->type == GGUF_TYPE_UINT32 && v->u64 &&
        (v->u64 & (v->u64 - 1)) == 0)
        w->alignment = (uint32_t)v->u64;
}

int64_t gguf_writer_add_tensor(gguf_writer *w, const char *name, uint32_t n_dims, const uint64_t *ne, uint32_t type) {
    if (w->failed) return -1;
    if (w->fp) { w_fail(w, "tensor '%s' declared after writing started", name); return -1; }
    if (n_dims < 1 || n_dims > GGUF_MAX_DIMS) { w_fail(w, "tensor '%s': %u dims", name, n_dims); return -1; }
    uint64_t n = 1;
    for (uint32_t d = 0; d < n_dims; d++) n *= ne[d];
    uint64_t nbytes;
    if (!ds4_dtype_nbytes(type, n, &nbytes) || ne[0] % ds4_dtype_info(type)->block_elems) {
        w_fail(w, "tensor '%s': %llu elements do not fit type %s blocks", name, (unsigned long long)n,
               ds4_dtype_name(type));
        return -1;
    }
    for (uint64_t i = 0; i < w->n_tensors; i++) {
        if (strcmp(w->tensors[i].name, name) == 0) { w_fail(w, "tensor '%s' declared twice", name); return -1; }
    }
    if (w->n_tensors == w->tensors_cap) {
        uint64_t cap = w->tensors_cap ? w->tensors_cap * 2 : 64;
        writer_tensor *nt = realloc(w->tensors, cap * sizeof *nt);
        if (!nt) { w_fail(w, "out of memory"); return -1; }
        w->tensors = nt;
        w->tensors_cap = cap;
    }
    writer_tensor *t = &w->tensors[w->n_tensors];
    memset(t, 0, sizeof *t);
    t->name = strdup(name);
    t->n_dims = n_dims;
    for (uint32_t d = 0; d < n_dims; d++) t->ne[d] = ne[d];
    t->type = type;
    t->nbytes = nbytes;
    return (int64_t)w->n_tensors++;
}

static bool f_put(gguf_writer *w, const void *p, size_t n) {
    if (w->failed) return false;
    if (n && fwrite(p, 1, n, w->fp) != n) { w_fail(w, "write failed: %s", strerror(errno)); return false; }
    return true;
}

static bool f_le(gguf_writer *w, uint64_t v, int n) {
    uint8_t b[8];
    for (int i = 0; i < n; i++) b[i] = (uint8_t)(v >> (8 * i));
    return f_put(w, b, (size_t)n);
}

static bool f_pad(gguf_writer *w, uint64_t pos) {
    static const uint8_t zeros[64] = {0};
    uint64_t pad = (w->alignment - pos % w->alignment) % w->alignment;
    while (pad > 0) {
        size_t k = pad > sizeof zeros ? sizeof zeros : (size_t)pad;
        if (!f_put(w, zeros, k)) return false;
        pad -= k;
    }
    return true;
}

bool gguf_writer_begin(gguf_writer *w, FILE *fp) {
    if (w->failed) return false;
    w->fp = fp;
    uint64_t off = 0;
    for (uint64_t i = 0; i < w->n_tensors; i++) {
        w->tensors[i].offset = off;
        off += w->tensors[i].nbytes;
        off = (off + w->alignment - 1) / w->alignment * w->alignment;
    }
    uint64_t pos = 0;
    f_le(w, GGUF_MAGIC, 4);
    f_le(w, GGUF_VERSION, 4);
    f_le(w, w->n_tensors, 8);
    f_le(w, w->n_kv, 8);
    f_put(w, w->kv_buf, w->kv_len);
    pos = 24 + w->kv_len;
    for (uint64_t i = 0; i < w->n_tensors; i++) {
        writer_tensor *t = &w->tensors[i];
        uint64_t nl = strlen(t->name);
        f_le(w, nl, 8);
        f_put(w, t->name, (size_t)nl);
        f_le(w, t->n_dims, 4);
        for (uint32_t d = 0; d < t->n_dims; d++) f_le(w, t->ne[d], 8);
        f_le(w, t->type, 4);
        f_le(w, t->offset, 8);
        pos += 8 + nl + 4 + 8ull * t->n_dims + 4 + 8;
    }
    f_pad(w, pos);
    w->cur_tensor = 0;
    w->cur_written = 0;
    return !w->failed;
}

bool gguf_writer_write_data(gguf_writer *w, const void *data, uint64_t nbytes) {
    if (w->failed) return false;
    if (!w->fp) { w_fail(w, "write_data before begin"); return false; }
    const uint8_t *p = data;
    while (nbytes > 0) {
        if (w->cur_tensor >= w->n_tensors) { w_fail(w, "more tensor data written than declared"); return false; }
        writer_tensor *t = &w->tensors[w->cur_tensor];
        uint64_t room = t->nbytes - w->cur_written;
        uint64_t k = nbytes < room ? nbytes : room;
        if (!f_put(w, p, (size_t)k)) return false;
        p += k;
        nbytes -= k;
        w->cur_written += k;
        if (w->cur_written == t->nbytes) {
            if (!f_pad(w, t->offset + t->nbytes)) return false;
            w->cur_tensor++;
            w->cur_written = 0;
        }
    }
    return true;
}

bool gguf_writer_finish(gguf_writer *w) {
    if (w->failed) return false;
    if (w->cur_tensor != w->n_tensors) {
        w_fail(w, "tensor '%s' was not fully written (%llu of %llu bytes)",
               w->tensors[w->cur_tensor].name, (unsigned long long)w->cur_written,
               (unsigned long long)w->tensors[w->cur_tensor].nbytes);
        return false;
    }
    if (fflush(w->fp) != 0) { w_fail(w, "flush failed: %s", strerror(errno)); return false; }
    return true;
}

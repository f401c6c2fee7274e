/* gguf.h - GGUF v3 container: a bounds-checked mmap reader and a streaming
 * writer.
 *
 * Reader: gguf_open() maps the file read-only and parses the header, every
 * metadata value (all 13 value types, arrays nested up to 8 deep) and the
 * tensor table. Every length, count, offset and size is checked against the
 * bytes actually present before it is used, so a truncated or hostile file
 * yields an error message naming the problem, never an out-of-bounds read.
 * Strings point into the mapping (not NUL-terminated: use gguf_str).
 * Tensor data is never copied: gguf_tensor.data points into the mapping.
 *
 * Writer: declare metadata and tensors first, then stream tensor payloads in
 * declaration order; the writer lays out offsets and alignment padding.
 */
#ifndef DS4_GGUF_H
#define DS4_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define GGUF_MAGIC 0x46554747u /* "GGUF" little-endian */
#define GGUF_VERSION 3
#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_DIMS 8
#define GGUF_MAX_ARRAY_DEPTH 8

typedef enum {
    GGUF_TYPE_UINT8 = 0,
    GGUF_TYPE_INT8 = 1,
    GGUF_TYPE_UINT16 = 2,
    GGUF_TYPE_INT16 = 3,
    GGUF_TYPE_UINT32 = 4,
    GGUF_TYPE_INT32 = 5,
    GGUF_TYPE_FLOAT32 = 6,
    GGUF_TYPE_BOOL = 7,
    GGUF_TYPE_STRING = 8,
    GGUF_TYPE_ARRAY = 9,
    GGUF_TYPE_UINT64 = 10,
    GGUF_TYPE_INT64 = 11,
    GGUF_TYPE_FLOAT64 = 12,
    GGUF_TYPE_COUNT
} gguf_vtype;

typedef struct {
    const char *data; /* not NUL-terminated */
    uint64_t len;
} gguf_str;

typedef struct gguf_value gguf_value;
struct gguf_value {
    gguf_vtype type;
    union {
        uint64_t u64;  /* UINT8/16/32/64 */
        int64_t i64;   /* INT8/16/32/64 */
        double f64;    /* FLOAT32/64 */
        bool b;        /* BOOL */
        gguf_str str;  /* STRING */
        struct {
            gguf_vtype elem_type;
            uint64_t count;
            const uint8_t *raw;   /* scalar elements, packed little-endian */
            gguf_value *items;    /* STRING / ARRAY elements, parsed */
        } arr;
    };
};

typedef struct {
    gguf_str key;
    gguf_value value;
} gguf_kv;

typedef struct {
    char *name;                 /* NUL-terminated copy */
    uint32_t n_dims;
    uint64_t ne[GGUF_MAX_DIMS]; /* ggml order: ne[0] is contiguous; unused = 1 */
    uint32_t type;              /* ds4_dtype id */
    uint64_t offset;            /* relative to the data section */
    uint64_t n_elems;
    uint64_t nbytes;
    const void *data;           /* into the mapping */
} gguf_tensor;

typedef struct gguf_file gguf_file;

/* Open and validate. On failure returns NULL and writes a one-line reason
 * (prefixed with the path) into err. */
gguf_file *gguf_open(const char *path, char *err, size_t errlen);
/* Parse a caller-owned buffer (kept alive by the caller; used by the fuzzer). */
gguf_file *gguf_open_memory(const void *data, size_t size, char *err, size_t errlen);
void gguf_close(gguf_file *f);

uint32_t gguf_version(const gguf_file *f);
uint32_t gguf_alignment(const gguf_file *f);
uint64_t gguf_data_offset(const gguf_file *f); /* file offset of the data section */
uint64_t gguf_file_size(const gguf_file *f);
const void *gguf_base(const gguf_file *f);     /* the whole mapped file */

uint64_t gguf_n_kv(const gguf_file *f);
const gguf_kv *gguf_kv_at(const gguf_file *f, uint64_t i);
const gguf_value *gguf_get(const gguf_file *f, const char *key); /* NULL if absent */

/* Typed getters: false if absent or of an incompatible type / out of range.
 * Integers convert between widths when the value fits; floats accept any
 * numeric type. */
bool gguf_get_u32(const gguf_file *f, const char *key, uint32_t *out);
bool gguf_get_u64(const gguf_file *f, const char *key, uint64_t *out);
bool gguf_get_f64(const gguf_file *f, const char *key, double *out);
bool gguf_get_bool(const gguf_file *f, const char *key, bool *out);
bool gguf_get_str(const gguf_file *f, const char *key, gguf_str *out);

/* Value helpers (work on any gguf_value, including array items). */
bool gguf_value_as_i64(const gguf_value *v, int64_t *out);
bool gguf_value_as_f64(const gguf_value *v, double *out);
uint64_t gguf_arr_len(const gguf_value *v); /* 0 if not an array */
bool gguf_arr_i64(const gguf_value *v, uint64_t i, int64_t *out);
bool gguf_arr_f64(const gguf_value *v, uint64_t i, double *out);
bool gguf_arr_str(const gguf_value *v, uint64_t i, gguf_str *out);
const char *gguf_vtype_name(gguf_vtype t);
bool gguf_str_eq(gguf_str s, const char *c);

uint64_t gguf_n_tensors(const gguf_file *f);
const gguf_tensor *gguf_tensor_at(const gguf_file *f, uint64_t i);
const gguf_tensor *gguf_find_tensor(const gguf_file *f, const char *name);

/* ---- writer ---- */
typedef struct gguf_writer gguf_writer;

gguf_writer *gguf_writer_new(void);
void gguf_writer_free(gguf_writer *w);
const char *gguf_writer_error(const gguf_writer *w); /* first error, or NULL */

void gguf_writer_set_u32(gguf_writer *w, const char *key, uint32_t v);
void gguf_writer_set_i32(gguf_writer *w, const char *key, int32_t v);
void gguf_writer_set_u64(gguf_writer *w, const char *key, uint64_t v);
void gguf_writer_set_f32(gguf_writer *w, const char *key, float v);
void gguf_writer_set_f64(gguf_writer *w, const char *key, double v);
void gguf_writer_set_bool(gguf_writer *w, const char *key, bool v);
void gguf_writer_set_str(gguf_writer *w, const char *key, const char *v);
void gguf_writer_set_strn(gguf_writer *w, const char *key, const char *v, uint64_t len);
/* Arrays of scalars: elems points at count packed values of elem_type. */
void gguf_writer_set_arr(gguf_writer *w, const char *key, gguf_vtype elem_type, const void *elems,
                         uint64_t count);
void gguf_writer_set_arr_str(gguf_writer *w, const char *key, const char *const *strs, uint64_t count);
/* Copy a parsed value (any type, nested arrays included) under `key`. */
void gguf_writer_set_value(gguf_writer *w, const char *key, const gguf_value *v);

/* Declare a tensor (ne in ggml order). Returns its index or -1. */
int64_t gguf_writer_add_tensor(gguf_writer *w, const char *name, uint32_t n_dims, const uint64_t *ne,
                               uint32_t type);

/* Start streaming to fp: writes header, metadata and tensor table. Then call
 * gguf_writer_write_data() with each tensor's bytes, in declaration order
 * (a tensor may be written in several pieces); finish() checks that every
 * tensor was complete. All return false and set the error on failure. */
bool gguf_writer_begin(gguf_writer *w, FILE *fp);
bool gguf_writer_write_data(gguf_writer *w, const void *data, uint64_t nbytes);
bool gguf_writer_finish(gguf_writer *w);

#endif

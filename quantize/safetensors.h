/* safetensors.h - read-only access to one .safetensors shard (mmap).
 *
 * Format: u64 little-endian header length N, N bytes of JSON
 * {"name": {"dtype": "...", "shape": [...], "data_offsets": [begin, end]}, ...}
 * (plus an optional "__metadata__" object), then the data section. Every
 * tensor's byte range is checked against its dtype x shape and against the
 * file size at open time, so a truncated shard is reported by name up front.
 */
#ifndef DS4_SAFETENSORS_H
#define DS4_SAFETENSORS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum {
    ST_F32,
    ST_F16,
    ST_BF16,
    ST_F8_E4M3,
    ST_F8_E8M0,
    ST_I8,
    ST_U8,
    ST_I32,
    ST_I64,
    ST_F64,
    ST_UNKNOWN
} st_dtype;

typedef struct {
    char *name;
    st_dtype dtype;
    char dtype_name[16];
    uint32_t n_dims;
    uint64_t shape[8]; /* row-major, shape[n_dims-1] contiguous */
    uint64_t n_elems;
    const uint8_t *data;
    uint64_t nbytes;
} st_tensor;

typedef struct {
    char *path;
    const uint8_t *map;
    uint64_t size;
    st_tensor *tensors;
    size_t n_tensors;
} st_file;

/* Opens and validates; on error returns false with a message naming the file. */
bool st_open(st_file *f, const char *path, char *err, size_t errlen);
void st_close(st_file *f);
const st_tensor *st_find(const st_file *f, const char *name);
uint32_t st_dtype_size(st_dtype t); /* bytes per element, 0 if unknown */

#endif

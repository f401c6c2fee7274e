/* dtype.h - ggml tensor element types as they appear in GGUF files.
 *
 * The numeric ids are ggml's (they are stored in GGUF tensor infos), so they
 * must never be renumbered. Every type a GGUF file may name has its block
 * geometry here, so the reader can size any tensor; only a subset has
 * arithmetic (see quant.h for which ones can be (de)quantized and dotted).
 */
#ifndef DS4_DTYPE_H
#define DS4_DTYPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum {
    DS4_TYPE_F32 = 0,
    DS4_TYPE_F16 = 1,
    DS4_TYPE_Q4_0 = 2,
    DS4_TYPE_Q4_1 = 3,
    DS4_TYPE_Q5_0 = 6,
    DS4_TYPE_Q5_1 = 7,
    DS4_TYPE_Q8_0 = 8,
    DS4_TYPE_Q8_1 = 9,
    DS4_TYPE_Q2_K = 10,
    DS4_TYPE_Q3_K = 11,
    DS4_TYPE_Q4_K = 12,
    DS4_TYPE_Q5_K = 13,
    DS4_TYPE_Q6_K = 14,
    DS4_TYPE_Q8_K = 15,
    DS4_TYPE_IQ2_XXS = 16,
    DS4_TYPE_IQ2_XS = 17,
    DS4_TYPE_IQ3_XXS = 18,
    DS4_TYPE_IQ1_S = 19,
    DS4_TYPE_IQ4_NL = 20,
    DS4_TYPE_IQ3_S = 21,
    DS4_TYPE_IQ2_S = 22,
    DS4_TYPE_IQ4_XS = 23,
    DS4_TYPE_I8 = 24,
    DS4_TYPE_I16 = 25,
    DS4_TYPE_I32 = 26,
    DS4_TYPE_I64 = 27,
    DS4_TYPE_F64 = 28,
    DS4_TYPE_IQ1_M = 29,
    DS4_TYPE_BF16 = 30,
    DS4_TYPE_TQ1_0 = 34,
    DS4_TYPE_TQ2_0 = 35,
    DS4_TYPE_COUNT = 40
} ds4_dtype;

/* Block geometry: a row of n elements takes (n / block_elems) * block_bytes
 * bytes; n must be a multiple of block_elems. Unknown ids have 0 for both. */
typedef struct {
    const char *name;     /* ggml spelling, e.g. "IQ2_XXS" */
    uint32_t block_elems; /* values per block (1 for plain types) */
    uint32_t block_bytes; /* bytes per block */
} ds4_dtype_traits;

const ds4_dtype_traits *ds4_dtype_info(uint32_t type); /* NULL if unknown */
const char *ds4_dtype_name(uint32_t type);              /* "?" if unknown */
bool ds4_dtype_from_name(const char *name, ds4_dtype *out); /* case-insensitive */

/* Bytes taken by n_elems elements; false when n_elems is not a multiple of the
 * block size, the type is unknown, or the result would overflow. */
bool ds4_dtype_nbytes(uint32_t type, uint64_t n_elems, uint64_t *out_bytes);

#endif

/* quant.h - block formats: dequantize, quantize, and quantized dot products.
 *
 * Formats are byte-identical to ggml's (see docs/FORMATS.md for layouts):
 * F32, F16, BF16, Q8_0, Q2_K, Q4_K, IQ2_XXS, I32 for weights, and Q8_K (plus
 * Q8_0) for activations. Every routine exists as a plain C reference
 * (`*_ref`) and as the fastest path this CPU supports (no suffix; AVX2 on
 * x86-64, falling back to the reference). The two must agree: dequantize and
 * quantize bit-exactly, dot products to float rounding.
 *
 * A "row" is n consecutive values; n must be a multiple of the type's block
 * size (dtype.h). Importance weights ("imatrix") are per column: n floats,
 * larger = that column's error matters more (negative or NaN entries count as
 * 0). NULL means no column preference, except for
 * IQ2_XXS which needs weights and uses the per-row fallback w[i] = x[i]^2
 * blend documented in quant_iq2xxs.c; callers converting whole tensors pass
 * the Σ_rows w² column fallback (ds4_quant_column_sumsq) instead of NULL.
 *
 * Layout of this header: the public API first, then the block structs (shared
 * by every implementation and by code that walks blocks itself), then the
 * per-path kernel tables that quant.c dispatches through.
 */
#ifndef DS4_QUANT_H
#define DS4_QUANT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dtype.h"

/* true for the types this file can (de)quantize: F32 F16 BF16 Q8_0 Q2_K Q4_K
 * IQ2_XXS Q8_K (I32 is copied, not converted). */
bool ds4_quant_supported(ds4_dtype type);

/* true when quantizing `type` wants importance weights (IQ2_XXS): without
 * them the quantizer still works, through the documented fallback. */
bool ds4_quant_wants_imatrix(ds4_dtype type);

/* The activation format a weight type is dotted against:
 * Q8_0 -> Q8_0; Q2_K, Q4_K, IQ2_XXS -> Q8_K; F32, F16, BF16 -> F32.
 * Types without a dot product give DS4_TYPE_COUNT. */
ds4_dtype ds4_quant_vec_dot_type(ds4_dtype weight_type);

/* Bytes taken by a row of n values of `type`; 0 if n is not a multiple of the
 * block size or the type is unknown. */
size_t ds4_quant_row_size(ds4_dtype type, int64_t n);

/* dst[0..n) = values of one row of `type`. For a type that is not
 * ds4_quant_supported() (or a bad n) dst[0..n) is filled with NaN. */
void ds4_dequantize_row(ds4_dtype type, const void *src, float *dst, int64_t n);
void ds4_dequantize_row_ref(ds4_dtype type, const void *src, float *dst, int64_t n);

/* Quantize one row; returns bytes written (row size), 0 if n is not a
 * multiple of the block size or the type is unsupported. */
size_t ds4_quantize_row(ds4_dtype type, const float *src, void *dst, int64_t n, const float *imatrix);
size_t ds4_quantize_row_ref(ds4_dtype type, const float *src, void *dst, int64_t n, const float *imatrix);

/* Quantize n_rows rows of n_per_row values (src row-major, dst rows packed
 * back to back); imatrix (n_per_row floats or NULL) applies to every row.
 * Returns total bytes written, 0 on bad arguments. */
size_t ds4_quantize_rows(ds4_dtype type, const float *src, void *dst, int64_t n_rows, int64_t n_per_row,
                         const float *imatrix);

/* Dot product of one weight row of `type` with an activation row already in
 * ds4_quant_vec_dot_type(type) (for F32/F16/BF16 the activation is f32).
 * NaN for a type without a dot product. */
float ds4_vec_dot(ds4_dtype type, int64_t n, const void *w_row, const void *x_row);
float ds4_vec_dot_ref(ds4_dtype type, int64_t n, const void *w_row, const void *x_row);

/* Column importance fallback for a [n_rows x n_cols] f32 matrix:
 * out[c] = Σ_r x[r][c]^2 (what ds4's quantizer uses when no imatrix is given). */
void ds4_quant_column_sumsq(const float *x, int64_t n_rows, int64_t n_cols, float *out);

/* Name of the SIMD path in use ("avx2", "neon" or "none"). */
const char *ds4_quant_simd_name(void);

/* ------------------------------------------------------------------------ */
/* Block layouts (ggml's, byte for byte; all fields little-endian).         */

#define DS4_QK8_0 32 /* values per Q8_0 block */
#define DS4_QK_K 256 /* values per K-quant / IQ2 / Q8_K super-block */

typedef struct {
    uint16_t d;      /* f16 scale */
    int8_t qs[32];   /* x[i] = d * qs[i] */
} ds4_block_q8_0;    /* 34 bytes */

typedef struct {
    uint8_t scales[16]; /* sub-block s (16 values): low nibble scale, high nibble min */
    uint8_t qs[64];     /* 2-bit codes, 4 per byte; see docs/FORMATS.md for the order */
    uint16_t d;         /* f16 super-scale of the 4-bit scales */
    uint16_t dmin;      /* f16 super-scale of the 4-bit mins */
} ds4_block_q2_k;       /* 84 bytes: x = d*(sc&15)*q - dmin*(sc>>4) */

typedef struct {
    uint16_t d;         /* f16 super-scale of the 6-bit scales */
    uint16_t dmin;      /* f16 super-scale of the 6-bit mins */
    uint8_t scales[12]; /* 8 x (6-bit scale, 6-bit min), packed */
    uint8_t qs[128];    /* 4-bit codes: byte 32*(j/2)+i holds sub-block j element i (low nibble: j even) */
} ds4_block_q4_k;       /* 144 bytes: x = d*sc*q - dmin*m */

typedef struct {
    uint16_t d;        /* f16 super-scale */
    uint16_t qs[32];   /* per 32-value sub-block: u32 of 4 grid indices, u32 of 4x7 sign bits + 4-bit scale */
} ds4_block_iq2_xxs;   /* 66 bytes */

typedef struct {
    float d;           /* f32 scale: x[i] = d * qs[i] */
    int8_t qs[256];
    int16_t bsums[16]; /* bsums[j] = Σ qs[16j .. 16j+15] */
} ds4_block_q8_k;      /* 292 bytes */

_Static_assert(sizeof(ds4_block_q8_0) == 34, "Q8_0 block is 34 bytes");
_Static_assert(sizeof(ds4_block_q2_k) == 84, "Q2_K block is 84 bytes");
_Static_assert(sizeof(ds4_block_q4_k) == 144, "Q4_K block is 144 bytes");
_Static_assert(sizeof(ds4_block_iq2_xxs) == 66, "IQ2_XXS block is 66 bytes");
_Static_assert(sizeof(ds4_block_q8_k) == 292, "Q8_K block is 292 bytes");

/* ------------------------------------------------------------------------ */
/* Kernel tables: one per implementation (reference C, AVX2, later NEON).   */
/* quant.c picks one at first use; a NULL entry falls back to the reference */
/* entry. Functions take n already checked against the block size.          */

typedef void (*ds4_dequantize_fn)(const void *src, float *dst, int64_t n);
typedef void (*ds4_quantize_fn)(const float *src, void *dst, int64_t n, const float *imatrix);
typedef float (*ds4_vec_dot_fn)(int64_t n, const void *w_row, const void *x_row);

typedef struct {
    const char *name;
    ds4_dequantize_fn dequantize[DS4_TYPE_COUNT];
    ds4_quantize_fn quantize[DS4_TYPE_COUNT];
    ds4_vec_dot_fn vec_dot[DS4_TYPE_COUNT];
} ds4_quant_kernels;

/* Reference C kernels (quant_ref.c; IQ2_XXS ones in quant_iq2xxs.c). */
extern const ds4_quant_kernels ds4_quant_kernels_ref;

/* AVX2+FMA+F16C kernels (quant_avx2.c); NULL when not built for x86. The
 * caller checks the CPU before using them. A NEON file would add
 * ds4_quant_kernels_neon() the same way. */
const ds4_quant_kernels *ds4_quant_kernels_avx2(void);

/* IQ2_XXS reference routines (quant_iq2xxs.c). */
void ds4_dequantize_iq2_xxs_ref(const void *src, float *dst, int64_t n);
void ds4_quantize_iq2_xxs_ref(const float *src, void *dst, int64_t n, const float *imatrix);
float ds4_vec_dot_iq2_xxs_q8_k_ref(int64_t n, const void *w_row, const void *x_row);

#endif

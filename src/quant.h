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
 * larger = that column's error matters more. NULL means uniform, except for
 * IQ2_XXS which needs weights and uses the per-row fallback w[i] = x[i]^2
 * blend documented in quant_iq2xxs.c; callers converting whole tensors pass
 * the Σ_rows w² column fallback (ds4_quant_column_sumsq) instead of NULL.
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

/* The activation format a weight type is dotted against:
 * Q8_0 -> Q8_0; Q2_K, Q4_K, IQ2_XXS -> Q8_K; F32, F16, BF16 -> F32. */
ds4_dtype ds4_quant_vec_dot_type(ds4_dtype weight_type);

/* dst[0..n) = values of one row of `type`. */
void ds4_dequantize_row(ds4_dtype type, const void *src, float *dst, int64_t n);
void ds4_dequantize_row_ref(ds4_dtype type, const void *src, float *dst, int64_t n);

/* Quantize one row; returns bytes written (row size), 0 if n is not a
 * multiple of the block size or the type is unsupported. */
size_t ds4_quantize_row(ds4_dtype type, const float *src, void *dst, int64_t n, const float *imatrix);
size_t ds4_quantize_row_ref(ds4_dtype type, const float *src, void *dst, int64_t n, const float *imatrix);

/* Dot product of one weight row of `type` with an activation row already in
 * ds4_quant_vec_dot_type(type) (for F32/F16/BF16 the activation is f32). */
float ds4_vec_dot(ds4_dtype type, int64_t n, const void *w_row, const void *x_row);
float ds4_vec_dot_ref(ds4_dtype type, int64_t n, const void *w_row, const void *x_row);

/* Column importance fallback for a [n_rows x n_cols] f32 matrix:
 * out[c] = Σ_r x[r][c]^2 (what ds4's quantizer uses when no imatrix is given). */
void ds4_quant_column_sumsq(const float *x, int64_t n_rows, int64_t n_cols, float *out);

/* Name of the SIMD path in use ("avx2", "neon" or "none"). */
const char *ds4_quant_simd_name(void);

#endif

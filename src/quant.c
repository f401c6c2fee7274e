/* quant.c - the public quant.h entry points: argument checks and dispatch.
 *
 * Why it exists: callers should not care which instruction set runs their
 * dot products. This file picks, once (pthread_once), the best kernel table
 * for the CPU it runs on and routes every call through it:
 *
 *   x86-64 with AVX2 + FMA + F16C  -> ds4_quant_kernels_avx2()  (quant_avx2.c)
 *   (aarch64: a quant_neon.c would provide ds4_quant_kernels_neon() and be
 *    selected here under __aarch64__; nothing else changes)
 *   otherwise                      -> ds4_quant_kernels_ref     (quant_ref.c)
 *
 * A table entry left NULL falls back to the reference entry, so a SIMD file
 * only implements what is worth speeding up. The `_ref` entry points always
 * use the reference table; tests compare the two.
 *
 * Setting the environment variable DS4_QUANT_SIMD=none forces the reference
 * table (useful to rule SIMD out when chasing a numerical difference).
 */
#include "quant.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

static const ds4_quant_kernels *active_kernels = &ds4_quant_kernels_ref;
static pthread_once_t active_once = PTHREAD_ONCE_INIT;

/* AVX2 and FMA via the compiler's CPU model (which also checks that the OS
 * saves the YMM registers); F16C from CPUID leaf 1 (ECX bit 29), since not
 * every compiler knows "f16c" as a feature name. */
static bool cpu_has_avx2(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) return false;
    unsigned eax, ebx, ecx, edx;
    return __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & (1u << 29));
#else
    return false;
#endif
}

static void select_kernels(void) {
    const char *force = getenv("DS4_QUANT_SIMD");
    if (force && strcmp(force, "none") == 0) return;
    const ds4_quant_kernels *avx2 = ds4_quant_kernels_avx2();
    if (avx2 && cpu_has_avx2()) active_kernels = avx2;
}

static const ds4_quant_kernels *kernels(void) {
    pthread_once(&active_once, select_kernels);
    return active_kernels;
}

const char *ds4_quant_simd_name(void) { return kernels()->name; }

bool ds4_quant_supported(ds4_dtype type) {
    return (unsigned)type < DS4_TYPE_COUNT && ds4_quant_kernels_ref.dequantize[type] != NULL;
}

bool ds4_quant_wants_imatrix(ds4_dtype type) { return type == DS4_TYPE_IQ2_XXS; }

ds4_dtype ds4_quant_vec_dot_type(ds4_dtype weight_type) {
    switch (weight_type) {
    case DS4_TYPE_Q8_0: return DS4_TYPE_Q8_0;
    case DS4_TYPE_Q2_K:
    case DS4_TYPE_Q4_K:
    case DS4_TYPE_IQ2_XXS: return DS4_TYPE_Q8_K;
    case DS4_TYPE_F32:
    case DS4_TYPE_F16:
    case DS4_TYPE_BF16: return DS4_TYPE_F32;
    default: return DS4_TYPE_COUNT;
    }
}

size_t ds4_quant_row_size(ds4_dtype type, int64_t n) {
    uint64_t bytes;
    if (n < 0 || !ds4_dtype_nbytes((uint32_t)type, (uint64_t)n, &bytes) || bytes > SIZE_MAX) return 0;
    return (size_t)bytes;
}

/* n is a valid row length for a supported type. */
static bool row_ok(ds4_dtype type, int64_t n) {
    return ds4_quant_supported(type) && n >= 0 && (n == 0 || ds4_quant_row_size(type, n) > 0);
}

static void dequantize_with(const ds4_quant_kernels *k, ds4_dtype type, const void *src, float *dst, int64_t n) {
    if (!row_ok(type, n)) {
        for (int64_t i = 0; i < n; i++) dst[i] = NAN;
        return;
    }
    ds4_dequantize_fn fn = k->dequantize[type] ? k->dequantize[type] : ds4_quant_kernels_ref.dequantize[type];
    fn(src, dst, n);
}

void ds4_dequantize_row(ds4_dtype type, const void *src, float *dst, int64_t n) {
    dequantize_with(kernels(), type, src, dst, n);
}

void ds4_dequantize_row_ref(ds4_dtype type, const void *src, float *dst, int64_t n) {
    dequantize_with(&ds4_quant_kernels_ref, type, src, dst, n);
}

static size_t quantize_with(const ds4_quant_kernels *k, ds4_dtype type, const float *src, void *dst, int64_t n,
                            const float *imatrix) {
    if (!row_ok(type, n)) return 0;
    ds4_quantize_fn fn = k->quantize[type] ? k->quantize[type] : ds4_quant_kernels_ref.quantize[type];
    fn(src, dst, n, imatrix);
    return ds4_quant_row_size(type, n);
}

size_t ds4_quantize_row(ds4_dtype type, const float *src, void *dst, int64_t n, const float *imatrix) {
    return quantize_with(kernels(), type, src, dst, n, imatrix);
}

size_t ds4_quantize_row_ref(ds4_dtype type, const float *src, void *dst, int64_t n, const float *imatrix) {
    return quantize_with(&ds4_quant_kernels_ref, type, src, dst, n, imatrix);
}

size_t ds4_quantize_rows(ds4_dtype type, const float *src, void *dst, int64_t n_rows, int64_t n_per_row,
                         const float *imatrix) {
    if (n_rows < 0 || !row_ok(type, n_per_row)) return 0;
    const size_t row_bytes = ds4_quant_row_size(type, n_per_row);
    for (int64_t r = 0; r < n_rows; r++)
        ds4_quantize_row(type, src + r * n_per_row, (char *)dst + (size_t)r * row_bytes, n_per_row, imatrix);
    return (size_t)n_rows * row_bytes;
}

static float vec_dot_with(const ds4_quant_kernels *k, ds4_dtype type, int64_t n, const void *w, const void *x) {
    if (!row_ok(type, n) || ds4_quant_kernels_ref.vec_dot[type] == NULL) return NAN;
    ds4_vec_dot_fn fn = k->vec_dot[type] ? k->vec_dot[type] : ds4_quant_kernels_ref.vec_dot[type];
    return fn(n, w, x);
}

float ds4_vec_dot(ds4_dtype type, int64_t n, const void *w_row, const void *x_row) {
    return vec_dot_with(kernels(), type, n, w_row, x_row);
}

float ds4_vec_dot_ref(ds4_dtype type, int64_t n, const void *w_row, const void *x_row) {
    return vec_dot_with(&ds4_quant_kernels_ref, type, n, w_row, x_row);
}

void ds4_quant_column_sumsq(const float *x, int64_t n_rows, int64_t n_cols, float *out) {
    for (int64_t c = 0; c < n_cols; c++) out[c] = 0.0f;
    for (int64_t r = 0; r < n_rows; r++) {
        const float *row = x + r * n_cols;
        for (int64_t c = 0; c < n_cols; c++) out[c] += row[c] * row[c];
    }
}

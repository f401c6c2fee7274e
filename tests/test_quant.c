/* test_quant.c - block formats (quant.h): round-trip error bounds, reference
 * vs SIMD agreement, dot products against dequantize-then-dot, edge cases
 * (zero blocks, huge/tiny magnitudes, importance weights with zeros) and
 * stability of re-quantizing dequantized rows.
 *
 * The error bounds asserted here are the ones documented in docs/FORMATS.md;
 * they are relative RMS errors on N(0,1) data (RMS(error) / RMS(data)) with a
 * little headroom over what the quantizers measure. The independent check of
 * the dequantizers against the `gguf` Python package is
 * tests/run_quant_gguf.sh. Everything is seeded: runs are reproducible.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fp16.h"
#include "iq2xxs_tables.h"
#include "quant.h"

/* ------------------------------------------------------------------------ */
/* Deterministic random data.                                                */

typedef struct {
    uint64_t s;
} rng_t;

static uint64_t rng_u64(rng_t *r) { /* splitmix64 */
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double rng_unit(rng_t *r) { return ((rng_u64(r) >> 11) + 0.5) * (1.0 / 9007199254740992.0); }

static float rng_gauss(rng_t *r) {
    const double u = rng_unit(r), v = rng_unit(r);
    return (float)(sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v));
}

static void fill_gauss(rng_t *r, float *x, int64_t n, float scale) {
    for (int64_t i = 0; i < n; i++) x[i] = scale * rng_gauss(r);
}

static void fill_bytes(rng_t *r, void *p, size_t n) {
    uint8_t *b = p;
    for (size_t i = 0; i < n; i++) b[i] = (uint8_t)rng_u64(r);
}

/* A finite, "sane" f16 scale: ±(1e-3 .. 1) roughly log-uniform. */
static uint16_t sane_f16(rng_t *r, bool allow_negative) {
    float v = (float)exp(-6.9 * rng_unit(r));
    if (allow_negative && (rng_u64(r) & 1)) v = -v;
    return ds4_fp32_to_fp16(v);
}

/* Random bytes for a row of `type` with every scale field made sane. */
static void random_blocks(rng_t *r, ds4_dtype type, void *dst, int64_t n) {
    const size_t bytes = ds4_quant_row_size(type, n);
    fill_bytes(r, dst, bytes);
    switch (type) {
    case DS4_TYPE_Q8_0: {
        ds4_block_q8_0 *b = dst;
        for (int64_t i = 0; i < n / DS4_QK8_0; i++) b[i].d = sane_f16(r, true);
        break;
    }
    case DS4_TYPE_Q2_K: {
        ds4_block_q2_k *b = dst;
        for (int64_t i = 0; i < n / DS4_QK_K; i++) {
            b[i].d = sane_f16(r, true);
            b[i].dmin = sane_f16(r, true);
        }
        break;
    }
    case DS4_TYPE_Q4_K: {
        ds4_block_q4_k *b = dst;
        for (int64_t i = 0; i < n / DS4_QK_K; i++) {
            b[i].d = sane_f16(r, true);
            b[i].dmin = sane_f16(r, true);
        }
        break;
    }
    case DS4_TYPE_IQ2_XXS: {
        ds4_block_iq2_xxs *b = dst;
        for (int64_t i = 0; i < n / DS4_QK_K; i++) b[i].d = sane_f16(r, true);
        break;
    }
    case DS4_TYPE_Q8_K: { /* consistent partial sums, codes may be -128 */
        ds4_block_q8_k *b = dst;
        for (int64_t i = 0; i < n / DS4_QK_K; i++) {
            b[i].d = (float)(0.01 * rng_unit(r) + 1e-4);
            for (int g = 0; g < 16; g++) {
                int s = 0;
                for (int j = 0; j < 16; j++) s += b[i].qs[16 * g + j];
                b[i].bsums[g] = (int16_t)s;
            }
        }
        break;
    }
    default: break; /* F16/BF16/F32: any bits (NaN and inf included) */
    }
}

/* ------------------------------------------------------------------------ */
/* Comparison helpers.                                                       */

static bool same_float(float a, float b) {
    if (isnan(a) || isnan(b)) return isnan(a) && isnan(b);
    return ds4_f32_bits(a) == ds4_f32_bits(b);
}

/* Bit-identical including NaN payloads. */
static void assert_floats_identical(const float *a, const float *b, int64_t n, const char *what) {
    for (int64_t i = 0; i < n; i++)
        if (ds4_f32_bits(a[i]) != ds4_f32_bits(b[i]))
            fail_msg("%s: element %lld differs: %.9g (0x%08x) vs %.9g (0x%08x)", what, (long long)i, a[i],
                     ds4_f32_bits(a[i]), b[i], ds4_f32_bits(b[i]));
}

static double rel_rms(const float *x, const float *y, int64_t n, const float *w) {
    double se = 0, sx = 0;
    for (int64_t i = 0; i < n; i++) {
        const double wi = w ? w[i] : 1.0;
        const double e = (double)y[i] - x[i];
        se += wi * e * e;
        sx += wi * (double)x[i] * x[i];
    }
    return sx > 0 ? sqrt(se / sx) : sqrt(se);
}

/* Weighted relative RMS where w is a per-column vector of length ncols. */
static double rel_rms_cols(const float *x, const float *y, int64_t rows, int64_t ncols, const float *w) {
    double se = 0, sx = 0;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < ncols; c++) {
            const double wi = w ? w[c] : 1.0;
            const double e = (double)y[r * ncols + c] - x[r * ncols + c];
            se += wi * e * e;
            sx += wi * (double)x[r * ncols + c] * x[r * ncols + c];
        }
    return sqrt(se / sx);
}

static const ds4_dtype k_all_types[] = {DS4_TYPE_F32,  DS4_TYPE_F16,  DS4_TYPE_BF16, DS4_TYPE_Q8_0,
                                        DS4_TYPE_Q8_K, DS4_TYPE_Q2_K, DS4_TYPE_Q4_K, DS4_TYPE_IQ2_XXS};
#define N_ALL_TYPES (sizeof k_all_types / sizeof k_all_types[0])

static const ds4_dtype k_weight_types[] = {DS4_TYPE_F32, DS4_TYPE_F16,  DS4_TYPE_BF16,
                                           DS4_TYPE_Q8_0, DS4_TYPE_Q2_K, DS4_TYPE_Q4_K, DS4_TYPE_IQ2_XXS};
#define N_WEIGHT_TYPES (sizeof k_weight_types / sizeof k_weight_types[0])

static int64_t block_elems(ds4_dtype t) { return ds4_dtype_info(t)->block_elems; }

/* Row lengths to try for a type: a few block counts, plus odd tails for the
 * one-element-block types (SIMD tail handling). */
static int row_lengths(ds4_dtype t, int64_t *out) {
    const int64_t be = block_elems(t);
    int k = 0;
    if (be == 1) {
        const int64_t odd[] = {1, 7, 8, 15, 33, 100, 257, 4096, 4103};
        for (size_t i = 0; i < sizeof odd / sizeof odd[0]; i++) out[k++] = odd[i];
    } else {
        const int64_t blocks[] = {1, 2, 3, 16};
        for (size_t i = 0; i < sizeof blocks / sizeof blocks[0]; i++) out[k++] = blocks[i] * (be == 32 ? 8 : 1) * be;
        out[k++] = be; /* a single block */
    }
    return k;
}

/* ------------------------------------------------------------------------ */
/* Geometry and API plumbing.                                                */

static void test_geometry(void **state) {
    (void)state;
    assert_int_equal(ds4_quant_row_size(DS4_TYPE_Q8_0, 64), 68);
    assert_int_equal(ds4_quant_row_size(DS4_TYPE_Q2_K, 512), 168);
    assert_int_equal(ds4_quant_row_size(DS4_TYPE_Q4_K, 256), 144);
    assert_int_equal(ds4_quant_row_size(DS4_TYPE_IQ2_XXS, 256), 66);
    assert_int_equal(ds4_quant_row_size(DS4_TYPE_Q8_K, 256), 292);
    assert_int_equal(ds4_quant_row_size(DS4_TYPE_F16, 3), 6);
    assert_int_equal(ds4_quant_row_size(DS4_TYPE_Q4_K, 100), 0);
    for (size_t i = 0; i < N_ALL_TYPES; i++) assert_true(ds4_quant_supported(k_all_types[i]));
    assert_false(ds4_quant_supported(DS4_TYPE_I32));
    assert_false(ds4_quant_supported(DS4_TYPE_Q6_K));
    assert_int_equal(ds4_quant_vec_dot_type(DS4_TYPE_Q8_0), DS4_TYPE_Q8_0);
    assert_int_equal(ds4_quant_vec_dot_type(DS4_TYPE_Q2_K), DS4_TYPE_Q8_K);
    assert_int_equal(ds4_quant_vec_dot_type(DS4_TYPE_Q4_K), DS4_TYPE_Q8_K);
    assert_int_equal(ds4_quant_vec_dot_type(DS4_TYPE_IQ2_XXS), DS4_TYPE_Q8_K);
    assert_int_equal(ds4_quant_vec_dot_type(DS4_TYPE_F16), DS4_TYPE_F32);
    assert_int_equal(ds4_quant_vec_dot_type(DS4_TYPE_BF16), DS4_TYPE_F32);
    assert_int_equal(ds4_quant_vec_dot_type(DS4_TYPE_Q8_K), DS4_TYPE_COUNT);
    assert_true(ds4_quant_wants_imatrix(DS4_TYPE_IQ2_XXS));
    assert_false(ds4_quant_wants_imatrix(DS4_TYPE_Q4_K));

    /* bad arguments: no write, 0 bytes / NaN */
    float x[256] = {0}, y[256];
    uint8_t q[512];
    assert_int_equal(ds4_quantize_row(DS4_TYPE_Q4_K, x, q, 100, NULL), 0);
    assert_int_equal(ds4_quantize_row(DS4_TYPE_I32, x, q, 16, NULL), 0);
    assert_true(isnan(ds4_vec_dot(DS4_TYPE_Q8_K, 256, q, q)));
    ds4_dequantize_row(DS4_TYPE_Q6_K, q, y, 256);
    assert_true(isnan(y[0]) && isnan(y[255]));

    const char *simd = ds4_quant_simd_name();
    assert_true(strcmp(simd, "avx2") == 0 || strcmp(simd, "neon") == 0 || strcmp(simd, "none") == 0);
    print_message("SIMD path: %s\n", simd);
}

static void test_iq2xxs_tables(void **state) {
    (void)state;
    for (int s = 0; s < 128; s++) {
        assert_int_equal(ds4_iq2xxs_ksigns[s] & 127, s);
        assert_int_equal(__builtin_popcount(ds4_iq2xxs_ksigns[s]) % 2, 0);
    }
    for (int k = 0; k < 256; k++) {
        for (int i = 0; i < 8; i++) {
            const unsigned b = (unsigned)(ds4_iq2xxs_grid[k] >> (8 * i)) & 0xFF;
            assert_true(b == 0x08 || b == 0x19 || b == 0x2b);
        }
        for (int j = 0; j < k; j++) assert_true(ds4_iq2xxs_grid[j] != ds4_iq2xxs_grid[k]);
    }
    /* spot values (ggml-common.h) */
    assert_true(ds4_iq2xxs_grid[0] == 0x0808080808080808ull);
    assert_true(ds4_iq2xxs_grid[1] == 0x080808080808082bull);
}

static void test_column_sumsq(void **state) {
    (void)state;
    const float x[6] = {1, 2, 3, -4, 5, 0.5f}; /* 2 x 3 */
    float out[3];
    ds4_quant_column_sumsq(x, 2, 3, out);
    assert_true(out[0] == 17.0f && out[1] == 29.0f && out[2] == 9.25f);
}

/* ------------------------------------------------------------------------ */
/* Round-trip error bounds (docs/FORMATS.md).                                */

typedef struct {
    ds4_dtype type;
    double bound;
} bound_t;

/* Relative RMS on N(0,1) data, no importance weights (IQ2_XXS: the
 * documented NULL fallback). */
static const bound_t k_bounds[] = {
    {DS4_TYPE_F32, 0.0},       {DS4_TYPE_F16, 3.0e-4},   {DS4_TYPE_BF16, 2.4e-3},   {DS4_TYPE_Q8_0, 0.0060},
    {DS4_TYPE_Q8_K, 0.0080},   {DS4_TYPE_Q4_K, 0.0740},  {DS4_TYPE_Q2_K, 0.2800},   {DS4_TYPE_IQ2_XXS, 0.3750},
};

enum { ROWS = 8, COLS = 4096 };

static void test_roundtrip_bounds(void **state) {
    (void)state;
    rng_t r = {1};
    float *x = malloc(sizeof(float) * ROWS * COLS), *y = malloc(sizeof(float) * ROWS * COLS);
    uint8_t *q = malloc(4 * COLS);
    fill_gauss(&r, x, (int64_t)ROWS * COLS, 1.0f);
    for (size_t t = 0; t < sizeof k_bounds / sizeof k_bounds[0]; t++) {
        const ds4_dtype type = k_bounds[t].type;
        for (int row = 0; row < ROWS; row++) {
            assert_int_equal(ds4_quantize_row(type, x + row * COLS, q, COLS, NULL), ds4_quant_row_size(type, COLS));
            ds4_dequantize_row(type, q, y + row * COLS, COLS);
        }
        const double e = rel_rms(x, y, (int64_t)ROWS * COLS, NULL);
        print_message("%-8s rel RMS error %.5f (bound %.4f)\n", ds4_dtype_name(type), e, k_bounds[t].bound);
        if (k_bounds[t].bound == 0.0)
            assert_true(e == 0.0);
        else
            assert_true(e < k_bounds[t].bound);
    }
    free(x);
    free(y);
    free(q);
}

/* With importance weights: uniform weights reach the bound of the unweighted
 * error, and random positive weights lower the *weighted* error compared with
 * quantizing without them (the quantizer honours them). */
static void test_imatrix_bounds(void **state) {
    (void)state;
    rng_t r = {2};
    float *x = malloc(sizeof(float) * ROWS * COLS), *y = malloc(sizeof(float) * ROWS * COLS);
    float *ones = malloc(sizeof(float) * COLS), *imp = malloc(sizeof(float) * COLS);
    uint8_t *q = malloc(4 * COLS);
    fill_gauss(&r, x, (int64_t)ROWS * COLS, 1.0f);
    for (int c = 0; c < COLS; c++) {
        ones[c] = 1.0f;
        imp[c] = expf(1.5f * rng_gauss(&r)); /* log-normal, spread ~ 20x */
    }
    const struct {
        ds4_dtype type;
        double uniform_bound, weighted_bound;
    } cases[] = {
        {DS4_TYPE_Q4_K, 0.0740, 0.0650},
        {DS4_TYPE_Q2_K, 0.2800, 0.2200},
        {DS4_TYPE_IQ2_XXS, 0.3400, 0.2650},
    };
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        const ds4_dtype type = cases[t].type;
        double e[3];
        const float *im[3] = {ones, imp, NULL};
        for (int k = 0; k < 3; k++) {
            for (int row = 0; row < ROWS; row++) {
                ds4_quantize_row(type, x + row * COLS, q, COLS, im[k]);
                ds4_dequantize_row(type, q, y + row * COLS, COLS);
            }
            e[k] = rel_rms_cols(x, y, ROWS, COLS, k == 0 ? NULL : imp);
        }
        print_message("%-8s uniform imatrix %.5f (bound %.4f); weighted error with imatrix %.5f (bound %.4f), "
                      "without %.5f\n",
                      ds4_dtype_name(type), e[0], cases[t].uniform_bound, e[1], cases[t].weighted_bound, e[2]);
        assert_true(e[0] < cases[t].uniform_bound);
        assert_true(e[1] < cases[t].weighted_bound);
        assert_true(e[1] < e[2]);
    }
    free(x);
    free(y);
    free(ones);
    free(imp);
    free(q);
}

/* ------------------------------------------------------------------------ */
/* Reference vs SIMD.                                                        */

static void test_simd_dequantize_identical(void **state) {
    (void)state;
    rng_t r = {3};
    int64_t lens[16];
    uint8_t *q = malloc(8 * 8192);
    float *a = malloc(sizeof(float) * 8192), *b = malloc(sizeof(float) * 8192);
    for (size_t t = 0; t < N_ALL_TYPES; t++) {
        const ds4_dtype type = k_all_types[t];
        const int nl = row_lengths(type, lens);
        for (int li = 0; li < nl; li++)
            for (int rep = 0; rep < 3; rep++) {
                const int64_t n = lens[li];
                random_blocks(&r, type, q, n);
                ds4_dequantize_row_ref(type, q, a, n);
                ds4_dequantize_row(type, q, b, n);
                assert_floats_identical(a, b, n, ds4_dtype_name(type));
            }
    }
    free(q);
    free(a);
    free(b);
}

static void test_simd_quantize_identical(void **state) {
    (void)state;
    rng_t r = {4};
    int64_t lens[16];
    float *x = malloc(sizeof(float) * 8192);
    uint8_t *qa = malloc(8 * 8192), *qb = malloc(8 * 8192);
    const float scales[] = {1.0f, 3e-3f, 250.0f};
    for (size_t t = 0; t < N_ALL_TYPES; t++) {
        const ds4_dtype type = k_all_types[t];
        const int nl = row_lengths(type, lens);
        for (int li = 0; li < nl; li++)
            for (size_t si = 0; si < sizeof scales / sizeof scales[0]; si++) {
                const int64_t n = lens[li];
                if (type == DS4_TYPE_IQ2_XXS && n > 1024) continue; /* slow, and not SIMD anyway */
                fill_gauss(&r, x, n, scales[si]);
                if (n > 5) x[n / 2] = 0.0f, x[n / 3] = -x[n / 5]; /* exact zero and a +/- tie */
                const size_t bytes = ds4_quant_row_size(type, n);
                memset(qa, 0xAA, bytes);
                memset(qb, 0x55, bytes);
                assert_int_equal(ds4_quantize_row_ref(type, x, qa, n, NULL), bytes);
                assert_int_equal(ds4_quantize_row(type, x, qb, n, NULL), bytes);
                if (memcmp(qa, qb, bytes) != 0)
                    fail_msg("%s: SIMD quantization differs (n=%lld)", ds4_dtype_name(type), (long long)n);
            }
    }
    /* f16/bf16 conversions on special values: NaNs, infinities, subnormals,
     * rounding ties, overflow boundaries. */
    const uint32_t special[] = {0x7fc00000, 0xffc00001, 0x7f800001, 0x7fbfffff, 0x7f800000, 0xff800000, 0x00000001,
                                0x80000001, 0x33000000, 0x33000001, 0x387fe000, 0x38800000, 0x477fefff, 0x477ff000,
                                0x477ff001, 0x3f801000, 0x3f803000, 0x3f808000, 0x3f818000, 0x7f7fffff, 0x00800000};
    float sp[24];
    for (int i = 0; i < 24; i++) sp[i] = ds4_bits_f32(special[i % (sizeof special / sizeof special[0])]);
    for (int i = 0; i < 2; i++) {
        const ds4_dtype type = i ? DS4_TYPE_BF16 : DS4_TYPE_F16;
        ds4_quantize_row_ref(type, sp, qa, 24, NULL);
        ds4_quantize_row(type, sp, qb, 24, NULL);
        assert_memory_equal(qa, qb, 48);
    }
    free(x);
    free(qa);
    free(qb);
}

/* Σ|w_i x_i| from dequantized rows, the scale of a dot's rounding error. */
static double abs_dot(const float *w, const float *x, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += fabs((double)w[i] * x[i]);
    return s;
}

static double exact_dot(const float *w, const float *x, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += (double)w[i] * x[i];
    return s;
}

/* Weight row (random blocks or quantized gaussians) and the activation row in
 * the type's dot format (quantized gaussians, or random Q8_K blocks with
 * codes down to -128). */
static void make_dot_operands(rng_t *r, ds4_dtype type, int64_t n, int variant, void *wq, void *xq, float *xf) {
    const ds4_dtype at = ds4_quant_vec_dot_type(type);
    if (variant == 0) {
        random_blocks(r, type, wq, n);
        if (type == DS4_TYPE_F16 || type == DS4_TYPE_BF16) { /* finite weights for dots */
            uint16_t *h = wq;
            for (int64_t i = 0; i < n; i++) h[i] = type == DS4_TYPE_F16 ? ds4_fp32_to_fp16(rng_gauss(r)) : ds4_fp32_to_bf16(rng_gauss(r));
        }
        if (type == DS4_TYPE_F32) fill_gauss(r, wq, n, 1.0f);
    } else {
        fill_gauss(r, xf, n, 1.0f);
        ds4_quantize_row(type, xf, wq, n, NULL);
    }
    fill_gauss(r, xf, n, 1.0f);
    if (at == DS4_TYPE_F32)
        memcpy(xq, xf, sizeof(float) * n);
    else if (at == DS4_TYPE_Q8_K && variant == 2)
        random_blocks(r, at, xq, n);
    else
        ds4_quantize_row(at, xf, xq, n, NULL);
}

static void test_simd_dot_agrees(void **state) {
    (void)state;
    rng_t r = {5};
    int64_t lens[16];
    uint8_t *wq = malloc(8 * 8192), *xq = malloc(8 * 8192);
    float *wf = malloc(sizeof(float) * 8192), *xf = malloc(sizeof(float) * 8192);
    for (size_t t = 0; t < N_WEIGHT_TYPES; t++) {
        const ds4_dtype type = k_weight_types[t], at = ds4_quant_vec_dot_type(type);
        const int nl = row_lengths(type, lens);
        /* integer-exact inner sums and reference-ordered block arithmetic */
        const bool bit_exact = type == DS4_TYPE_Q2_K || type == DS4_TYPE_Q4_K || type == DS4_TYPE_IQ2_XXS;
        for (int li = 0; li < nl; li++)
            for (int variant = 0; variant < 3; variant++) {
                const int64_t n = lens[li];
                if (type == DS4_TYPE_IQ2_XXS && variant == 1 && n > 1024) continue;
                make_dot_operands(&r, type, n, variant, wq, xq, xf);
                const float ref = ds4_vec_dot_ref(type, n, wq, xq);
                const float simd = ds4_vec_dot(type, n, wq, xq);
                ds4_dequantize_row_ref(type, wq, wf, n);
                ds4_dequantize_row_ref(at, xq, xf, n);
                const double scale = abs_dot(wf, xf, n);
                if (bit_exact) {
                    if (!same_float(ref, simd))
                        fail_msg("%s n=%lld: ref %.9g simd %.9g", ds4_dtype_name(type), (long long)n, ref, simd);
                } else if (!(fabs((double)ref - simd) <= 2e-6 * scale + 1e-30)) {
                    fail_msg("%s n=%lld: ref %.9g simd %.9g (scale %.3g)", ds4_dtype_name(type), (long long)n, ref,
                             simd, scale);
                }
            }
    }
    free(wq);
    free(xq);
    free(wf);
    free(xf);
}

/* The quantized dot equals the dot of the dequantized rows (the integer
 * arithmetic loses nothing). */
static void test_dot_matches_dequantized(void **state) {
    (void)state;
    rng_t r = {6};
    const int64_t n = 4096;
    uint8_t *wq = malloc(8 * n), *xq = malloc(8 * n);
    float *wf = malloc(sizeof(float) * n), *xf = malloc(sizeof(float) * n);
    for (size_t t = 0; t < N_WEIGHT_TYPES; t++) {
        const ds4_dtype type = k_weight_types[t], at = ds4_quant_vec_dot_type(type);
        for (int variant = 0; variant < 3; variant++) {
            make_dot_operands(&r, type, n, variant, wq, xq, xf);
            ds4_dequantize_row_ref(type, wq, wf, n);
            ds4_dequantize_row_ref(at, xq, xf, n);
            const double want = exact_dot(wf, xf, n), scale = abs_dot(wf, xf, n);
            const float got_ref = ds4_vec_dot_ref(type, n, wq, xq), got = ds4_vec_dot(type, n, wq, xq);
            if (!(fabs(got_ref - want) <= 1e-5 * scale) || !(fabs(got - want) <= 1e-5 * scale))
                fail_msg("%s variant %d: exact %.9g ref %.9g simd %.9g (scale %.3g)", ds4_dtype_name(type), variant,
                         want, got_ref, got, scale);
        }
    }
    free(wq);
    free(xq);
    free(wf);
    free(xf);
}

/* Q8_K partial sums match the codes; codes never reach -128. */
static void test_q8_k_layout(void **state) {
    (void)state;
    rng_t r = {7};
    float x[1024];
    ds4_block_q8_k b[4];
    fill_gauss(&r, x, 1024, 2.0f);
    x[5] = -9.0f; /* the largest magnitude is negative */
    ds4_quantize_row(DS4_TYPE_Q8_K, x, b, 1024, NULL);
    for (int i = 0; i < 4; i++) {
        for (int g = 0; g < 16; g++) {
            int s = 0;
            for (int j = 0; j < 16; j++) {
                s += b[i].qs[16 * g + j];
                assert_true(b[i].qs[16 * g + j] >= -127);
            }
            assert_int_equal(b[i].bsums[g], s);
        }
    }
    assert_int_equal(b[0].qs[5], -127);
    assert_true(b[0].d > 0.0f);

    /* magnitude ties: the first element of largest magnitude sets the sign
     * of d, in the reference and the SIMD path alike */
    for (int order = 0; order < 2; order++) {
        ds4_block_q8_k ref, simd;
        fill_gauss(&r, x, 256, 1.0f);
        x[200] = order ? 8.0f : -8.0f;
        x[9] = -x[200];
        ds4_quantize_row_ref(DS4_TYPE_Q8_K, x, &ref, 256, NULL);
        ds4_quantize_row(DS4_TYPE_Q8_K, x, &simd, 256, NULL);
        assert_memory_equal(&ref, &simd, sizeof ref);
        assert_int_equal(ref.qs[9], -127);
        assert_int_equal(ref.qs[200], 127);
        assert_true(order ? ref.d > 0.0f : ref.d < 0.0f);
    }
}

/* ------------------------------------------------------------------------ */
/* Edge cases.                                                               */

static void quant_roundtrip(ds4_dtype type, const float *x, float *y, int64_t n, const float *imatrix, void *q) {
    assert_int_equal(ds4_quantize_row(type, x, q, n, imatrix), ds4_quant_row_size(type, n));
    ds4_dequantize_row(type, q, y, n);
}

static bool all_finite(const float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(y[i])) return false;
    return true;
}

static void test_edge_zero_blocks(void **state) {
    (void)state;
    float x[1024] = {0}, y[1024];
    uint8_t q[4096];
    rng_t r = {8};
    for (size_t t = 0; t < N_ALL_TYPES; t++) {
        const ds4_dtype type = k_all_types[t];
        quant_roundtrip(type, x, y, 1024, NULL, q);
        for (int i = 0; i < 1024; i++) assert_true(y[i] == 0.0f);
        /* zero super-blocks next to non-zero ones */
        fill_gauss(&r, x + 256, 256, 1.0f);
        quant_roundtrip(type, x, y, 1024, NULL, q);
        for (int i = 0; i < 256; i++) assert_true(y[i] == 0.0f);
        for (int i = 512; i < 1024; i++) assert_true(y[i] == 0.0f);
        assert_true(rel_rms(x + 256, y + 256, 256, NULL) < 0.4);
        memset(x, 0, sizeof x);
    }
}

/* The error bounds are scale-invariant while the block scales stay inside
 * the f16 range; far below it, values flush towards 0 without NaN/inf. */
#define CHECK(cond, ...)                                                                                          \
    do {                                                                                                       \
        if (!(cond)) fail_msg(__VA_ARGS__);                                                                    \
    } while (0)

static void test_edge_magnitudes(void **state) {
    (void)state;
    rng_t r = {9};
    const int64_t n = 2048;
    float *x = malloc(sizeof(float) * n), *y = malloc(sizeof(float) * n);
    uint8_t *q = malloc(8 * n);
    for (size_t t = 0; t < sizeof k_bounds / sizeof k_bounds[0]; t++) {
        const ds4_dtype type = k_bounds[t].type;
        const char *name = ds4_dtype_name(type);
        const double bound = type == DS4_TYPE_F32 ? 1e-30 : k_bounds[t].bound * 1.1;
        const float big = type == DS4_TYPE_F16 ? 100.0f : 1000.0f; /* f16 itself tops out at 65504 */
        double e;
        fill_gauss(&r, x, n, big);
        quant_roundtrip(type, x, y, n, NULL, q);
        CHECK(all_finite(y, n), "%s big: non-finite", name);
        CHECK((e = rel_rms(x, y, n, NULL)) < bound, "%s big: error %g", name, e);

        /* block scales ~1e-5: f16 subnormals lose precision in Q8 scales */
        fill_gauss(&r, x, n, 1e-3f);
        quant_roundtrip(type, x, y, n, NULL, q);
        CHECK(all_finite(y, n), "%s small: non-finite", name);
        e = rel_rms(x, y, n, NULL);
        CHECK(e < (type == DS4_TYPE_F16 || type == DS4_TYPE_Q8_0 ? 0.05 : bound), "%s small: error %g", name, e);

        /* far below f16: anything finite and no larger than the input */
        fill_gauss(&r, x, n, 1e-9f);
        quant_roundtrip(type, x, y, n, NULL, q);
        CHECK(all_finite(y, n), "%s tiny: non-finite", name);
        for (int64_t i = 0; i < n; i++) CHECK(fabsf(y[i]) <= 1e-7f, "%s tiny: y[%lld] = %g", name, (long long)i, y[i]);

        /* one spike among small values */
        fill_gauss(&r, x, n, 0.01f);
        x[77] = 50.0f;
        quant_roundtrip(type, x, y, n, NULL, q);
        CHECK(all_finite(y, n), "%s spike: non-finite", name);
        CHECK(fabsf(y[77] - 50.0f) < 50.0f * (type == DS4_TYPE_IQ2_XXS ? 0.25f : 0.1f), "%s spike: %g", name, y[77]);

        /* constant negative row */
        for (int64_t i = 0; i < n; i++) x[i] = -0.75f;
        quant_roundtrip(type, x, y, n, NULL, q);
        CHECK(all_finite(y, n), "%s constant: non-finite", name);
        CHECK((e = rel_rms(x, y, n, NULL)) < (type == DS4_TYPE_IQ2_XXS ? 0.1 : 0.01), "%s constant: error %g", name,
              e);

        /* all-negative row */
        for (int64_t i = 0; i < n; i++) x[i] = -fabsf(rng_gauss(&r));
        quant_roundtrip(type, x, y, n, NULL, q);
        CHECK((e = rel_rms(x, y, n, NULL)) < bound * 1.2, "%s negative: error %g", name, e);
    }
    free(x);
    free(y);
    free(q);
}

/* Importance weights with zeros: zero columns still get finite values; the
 * columns that matter keep their accuracy; an all-zero importance vector
 * behaves like no importance at all; garbage (negative, NaN) is ignored. */
static void test_edge_imatrix_zeros(void **state) {
    (void)state;
    rng_t r = {10};
    const int64_t n = 2048;
    float *x = malloc(sizeof(float) * n), *y = malloc(sizeof(float) * n), *y0 = malloc(sizeof(float) * n);
    float *imp = malloc(sizeof(float) * n), *zeros = calloc((size_t)n, sizeof(float));
    uint8_t *q = malloc(8 * n);
    fill_gauss(&r, x, n, 1.0f);
    for (int64_t i = 0; i < n; i++) imp[i] = (i % 3 == 0) ? 0.0f : 1.0f;
    const ds4_dtype types[] = {DS4_TYPE_Q4_K, DS4_TYPE_Q2_K, DS4_TYPE_IQ2_XXS};
    const double bounds[] = {0.074, 0.28, 0.375};
    for (int t = 0; t < 3; t++) {
        quant_roundtrip(types[t], x, y, n, imp, q);
        assert_true(all_finite(y, n));
        assert_true(rel_rms_cols(x, y, 1, n, imp) < bounds[t]); /* on the columns that count */
        assert_true(rel_rms(x, y, n, NULL) < 1.0);               /* and nothing absurd elsewhere */

        quant_roundtrip(types[t], x, y, n, zeros, q);
        quant_roundtrip(types[t], x, y0, n, NULL, q);
        assert_true(all_finite(y, n));
        assert_true(rel_rms(x, y, n, NULL) < bounds[t]);
        if (types[t] == DS4_TYPE_IQ2_XXS) assert_floats_identical(y, y0, n, "all-zero imatrix = fallback");

        /* negative and NaN entries count as zero importance */
        for (int64_t i = 0; i < n; i++) imp[i] = (i % 7 == 0) ? -1.0f : (i % 11 == 0) ? NAN : 1.0f;
        quant_roundtrip(types[t], x, y, n, imp, q);
        assert_true(all_finite(y, n));
        for (int64_t i = 0; i < n; i++) imp[i] = (i % 7 == 0 || i % 11 == 0) ? 0.0f : 1.0f;
        assert_true(rel_rms_cols(x, y, 1, n, imp) < bounds[t]);
        for (int64_t i = 0; i < n; i++) imp[i] = (i % 3 == 0) ? 0.0f : 1.0f;
    }
    free(x);
    free(y);
    free(y0);
    free(imp);
    free(zeros);
    free(q);
}

/* ------------------------------------------------------------------------ */
/* Re-quantizing dequantized rows.                                           */

/* A dequantized row is representable, and every quantizer maps it back to
 * the same bytes, except Q8_K whose f32 scale (1/iscale, recomputed from the
 * dequantized maximum) may move by an ulp while the codes stay. */
static void test_requantize_stable(void **state) {
    (void)state;
    rng_t r = {11};
    const int64_t n = 4096;
    float *x = malloc(sizeof(float) * n), *y = malloc(sizeof(float) * n), *z = malloc(sizeof(float) * n);
    uint8_t *q1 = malloc(8 * n), *q2 = malloc(8 * n);
    const float *imps[2] = {NULL, NULL};
    float *imp = malloc(sizeof(float) * n);
    for (int64_t i = 0; i < n; i++) imp[i] = 0.5f + (float)(i % 13);
    imps[1] = imp;
    for (size_t t = 0; t < N_ALL_TYPES; t++)
        for (int k = 0; k < 2; k++) {
            const ds4_dtype type = k_all_types[t];
            const size_t bytes = ds4_quant_row_size(type, n);
            fill_gauss(&r, x, n, 1.0f);
            ds4_quantize_row(type, x, q1, n, imps[k]);
            ds4_dequantize_row(type, q1, y, n);
            ds4_quantize_row(type, y, q2, n, imps[k]);
            ds4_dequantize_row(type, q2, z, n);
            if (type == DS4_TYPE_Q8_K) {
                const ds4_block_q8_k *a = (const void *)q1, *b = (const void *)q2;
                for (int64_t i = 0; i < n / DS4_QK_K; i++) {
                    assert_memory_equal(a[i].qs, b[i].qs, sizeof a[i].qs);
                    assert_true(fabsf(a[i].d - b[i].d) <= 1.2e-7f * fabsf(a[i].d));
                }
            } else if (memcmp(q1, q2, bytes) != 0) {
                fail_msg("%s (imatrix %d): re-quantized bytes differ, error %.2e", ds4_dtype_name(type), k,
                         rel_rms(y, z, n, NULL));
            }
        }
    free(x);
    free(y);
    free(z);
    free(q1);
    free(q2);
    free(imp);
}

static void test_quantize_rows(void **state) {
    (void)state;
    rng_t r = {12};
    const int64_t rows = 3, cols = 512;
    float x[3 * 512], imp[512];
    uint8_t a[3 * 168], b[3 * 168];
    fill_gauss(&r, x, rows * cols, 1.0f);
    for (int c = 0; c < cols; c++) imp[c] = 1.0f + (c % 5);
    assert_int_equal(ds4_quantize_rows(DS4_TYPE_Q2_K, x, a, rows, cols, imp), 3 * 168);
    for (int64_t i = 0; i < rows; i++) ds4_quantize_row(DS4_TYPE_Q2_K, x + i * cols, b + i * 168, cols, imp);
    assert_memory_equal(a, b, sizeof a);
    assert_int_equal(ds4_quantize_rows(DS4_TYPE_Q2_K, x, a, rows, 100, imp), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_geometry),
        cmocka_unit_test(test_iq2xxs_tables),
        cmocka_unit_test(test_column_sumsq),
        cmocka_unit_test(test_roundtrip_bounds),
        cmocka_unit_test(test_imatrix_bounds),
        cmocka_unit_test(test_simd_dequantize_identical),
        cmocka_unit_test(test_simd_quantize_identical),
        cmocka_unit_test(test_simd_dot_agrees),
        cmocka_unit_test(test_dot_matches_dequantized),
        cmocka_unit_test(test_q8_k_layout),
        cmocka_unit_test(test_edge_zero_blocks),
        cmocka_unit_test(test_edge_magnitudes),
        cmocka_unit_test(test_edge_imatrix_zeros),
        cmocka_unit_test(test_requantize_stable),
        cmocka_unit_test(test_quantize_rows),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

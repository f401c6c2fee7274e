/* quant_avx2.c - AVX2 + FMA + F16C kernels for the block formats.
 *
 * Why it exists: dot products of quantized weight rows with quantized
 * activations are the inner loop of CPU inference, and dequantization feeds
 * batched matmuls; both are 5-20x faster with 256-bit integer/float SIMD than
 * the reference C. The Makefile compiles *_avx2.c with -mavx2 -mfma -mf16c;
 * quant.c only uses this table after checking the CPU at run time.
 *
 * Contract with quant_ref.c (the oracle; tests/test_quant.c checks it):
 *   - dequantize and quantize: bit-identical outputs, NaN payloads included
 *     (f16 -> f32 falls back to the scalar conversion for any 8-value chunk
 *     holding a NaN, since vcvtph2ps quiets signalling NaNs and the reference,
 *     like numpy, keeps them);
 *   - K-quant and IQ2_XXS dots: the integer inner sums are exact and the
 *     per-block float arithmetic is written exactly as in the reference, so
 *     results are bit-identical too;
 *   - F32/F16/BF16 and Q8_0 dots: accumulated in 8 float lanes with FMA, so
 *     they differ from the sequential reference sum by float rounding only.
 * Integer products use exact widenings (no saturating tricks that break on
 * a -128 code), so any bytes give the reference's integers.
 *
 * Entries not listed in the table (Q2_K/Q4_K/IQ2_XXS quantization, Q8_K
 * dequantization) fall back to the reference. A NEON file would mirror this
 * one: same table shape, same contract.
 */
#include "quant.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)

#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "fp16.h"
#include "iq2xxs_tables.h"

/* The block arithmetic below must round like the reference (a*b - c as two
 * roundings): no FMA contraction of plain C expressions. GCC does not
 * contract in ISO C mode (-std=c11, as the Makefile builds); clang needs the
 * pragma. Explicit _mm256_fmadd_ps calls are unaffected. */
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

/* ------------------------------------------------------------------------ */
/* Small helpers.                                                            */

static inline int hsum_i32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
}

static inline float hsum_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline float hmax_ps(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline __m256 abs_ps(__m256 v) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v); }

/* 8 int8 codes at p -> 8 floats. */
static inline __m256 i8x8_to_ps(const int8_t *p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}

static inline __m256 u8x8_to_ps(const uint8_t *p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}

/* Exact Σ a[i]*b[i] over 32 signed bytes, as 8 int32 partial sums. */
static inline __m256i dot_i8x32(__m256i a, __m256i b) {
    const __m256i a_lo = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(a));
    const __m256i a_hi = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(a, 1));
    const __m256i b_lo = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(b));
    const __m256i b_hi = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(b, 1));
    return _mm256_add_epi32(_mm256_madd_epi16(a_lo, b_lo), _mm256_madd_epi16(a_hi, b_hi));
}

/* ------------------------------------------------------------------------ */
/* F16, BF16, F32.                                                           */

static void dequantize_f16_avx2(const void *src, float *dst, int64_t n) {
    const uint16_t *h = src;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 v = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i)));
        if (_mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q))) { /* NaN: keep its payload as-is */
            for (int k = 0; k < 8; k++) dst[i + k] = ds4_fp16_to_fp32(h[i + k]);
        } else {
            _mm256_storeu_ps(dst + i, v);
        }
    }
    for (; i < n; i++) dst[i] = ds4_fp16_to_fp32(h[i]);
}

static void quantize_f16_avx2(const float *src, void *dst, int64_t n, const float *imatrix) {
    (void)imatrix;
    uint16_t *h = dst;
    int64_t i = 0;
    /* vcvtps2ph equals ds4_fp32_to_fp16 on all 2^32 inputs, NaNs included
     * (checked exhaustively when this was written; the tests cover the edges) */
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(h + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    for (; i < n; i++) h[i] = ds4_fp32_to_fp16(src[i]);
}

static void dequantize_bf16_avx2(const void *src, float *dst, int64_t n) {
    const uint16_t *h = src;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256i u = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(h + i)));
        _mm256_storeu_si256((__m256i *)(dst + i), _mm256_slli_epi32(u, 16));
    }
    for (; i < n; i++) dst[i] = ds4_bf16_to_fp32(h[i]);
}

/* Round to nearest even on bit 16, NaN made quiet: the scalar rule, 8 lanes. */
static inline __m256i fp32_to_bf16_lanes(__m256i x) {
    const __m256i abs = _mm256_and_si256(x, _mm256_set1_epi32(0x7fffffff));
    const __m256i is_nan = _mm256_cmpgt_epi32(abs, _mm256_set1_epi32(0x7f800000));
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(1));
    const __m256i rounded =
        _mm256_srli_epi32(_mm256_add_epi32(x, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), lsb)), 16);
    const __m256i quiet = _mm256_or_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(64));
    return _mm256_blendv_epi8(rounded, quiet, is_nan);
}

static void quantize_bf16_avx2(const float *src, void *dst, int64_t n, const float *imatrix) {
    (void)imatrix;
    uint16_t *h = dst;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m256i a = fp32_to_bf16_lanes(_mm256_loadu_si256((const __m256i *)(src + i)));
        const __m256i b = fp32_to_bf16_lanes(_mm256_loadu_si256((const __m256i *)(src + i + 8)));
        const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(a, b), 0xD8);
        _mm256_storeu_si256((__m256i *)(h + i), packed);
    }
    for (; i < n; i++) h[i] = ds4_fp32_to_bf16(src[i]);
}

static float vec_dot_f32_f32_avx2(int64_t n, const void *w_row, const void *x_row) {
    const float *w = w_row, *x = x_row;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps(), acc2 = _mm256_setzero_ps(),
           acc3 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(x + i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 8), _mm256_loadu_ps(x + i + 8), acc1);
        acc2 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 16), _mm256_loadu_ps(x + i + 16), acc2);
        acc3 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 24), _mm256_loadu_ps(x + i + 24), acc3);
    }
    for (; i + 8 <= n; i += 8) acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(x + i), acc0);
    float sum = hsum_ps(_mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)));
    for (; i < n; i++) sum += w[i] * x[i];
    return sum;
}

static float vec_dot_f16_f32_avx2(int64_t n, const void *w_row, const void *x_row) {
    const uint16_t *w = w_row;
    const float *x = x_row;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps(), acc2 = _mm256_setzero_ps(),
           acc3 = _mm256_setzero_ps();
#define F16X8(p) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p)))
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        acc0 = _mm256_fmadd_ps(F16X8(w + i), _mm256_loadu_ps(x + i), acc0);
        acc1 = _mm256_fmadd_ps(F16X8(w + i + 8), _mm256_loadu_ps(x + i + 8), acc1);
        acc2 = _mm256_fmadd_ps(F16X8(w + i + 16), _mm256_loadu_ps(x + i + 16), acc2);
        acc3 = _mm256_fmadd_ps(F16X8(w + i + 24), _mm256_loadu_ps(x + i + 24), acc3);
    }
    for (; i + 8 <= n; i += 8) acc0 = _mm256_fmadd_ps(F16X8(w + i), _mm256_loadu_ps(x + i), acc0);
#undef F16X8
    float sum = hsum_ps(_mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)));
    for (; i < n; i++) sum += ds4_fp16_to_fp32(w[i]) * x[i];
    return sum;
}

static float vec_dot_bf16_f32_avx2(int64_t n, const void *w_row, const void *x_row) {
    const uint16_t *w = w_row;
    const float *x = x_row;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
#define BF16X8(p) \
    _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(p))), 16))
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        acc0 = _mm256_fmadd_ps(BF16X8(w + i), _mm256_loadu_ps(x + i), acc0);
        acc1 = _mm256_fmadd_ps(BF16X8(w + i + 8), _mm256_loadu_ps(x + i + 8), acc1);
    }
    for (; i + 8 <= n; i += 8) acc0 = _mm256_fmadd_ps(BF16X8(w + i), _mm256_loadu_ps(x + i), acc0);
#undef BF16X8
    float sum = hsum_ps(_mm256_add_ps(acc0, acc1));
    for (; i < n; i++) sum += ds4_bf16_to_fp32(w[i]) * x[i];
    return sum;
}

/* ------------------------------------------------------------------------ */
/* Q8_0.                                                                     */

static void dequantize_q8_0_avx2(const void *src, float *dst, int64_t n) {
    const ds4_block_q8_0 *b = src;
    for (int64_t ib = 0; ib < n / DS4_QK8_0; ib++, dst += DS4_QK8_0) {
        const __m256 d = _mm256_set1_ps(ds4_fp16_to_fp32(b[ib].d));
        for (int j = 0; j < DS4_QK8_0; j += 8) _mm256_storeu_ps(dst + j, _mm256_mul_ps(i8x8_to_ps(b[ib].qs + j), d));
    }
}

/* roundf() of 8 lanes (ties away from zero), exactly: floor(|v|) plus one
 * when the (exact) fraction is >= 0.5, sign put back. */
static inline __m256 round_half_away_ps(__m256 v) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256 a = _mm256_andnot_ps(sign, v);
    const __m256 fl = _mm256_round_ps(a, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    const __m256 up = _mm256_and_ps(_mm256_cmp_ps(_mm256_sub_ps(a, fl), _mm256_set1_ps(0.5f), _CMP_GE_OQ),
                                    _mm256_set1_ps(1.0f));
    return _mm256_or_ps(_mm256_add_ps(fl, up), _mm256_and_ps(sign, v));
}

/* 32 int32 lanes (4 vectors, in order) -> 32 int8, saturating (never hit). */
static inline __m256i pack_i32x32_to_i8(__m256i a, __m256i b, __m256i c, __m256i d) {
    const __m256i ab = _mm256_packs_epi32(a, b), cd = _mm256_packs_epi32(c, d);
    const __m256i abcd = _mm256_packs_epi16(ab, cd);
    /* packs work per 128-bit lane: dwords come out as a0 b0 c0 d0 a1 b1 c1 d1 */
    return _mm256_permutevar8x32_epi32(abcd, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

static void quantize_q8_0_avx2(const float *src, void *dst, int64_t n, const float *imatrix) {
    (void)imatrix;
    ds4_block_q8_0 *b = dst;
    for (int64_t ib = 0; ib < n / DS4_QK8_0; ib++, src += DS4_QK8_0) {
        const __m256 v0 = _mm256_loadu_ps(src), v1 = _mm256_loadu_ps(src + 8);
        const __m256 v2 = _mm256_loadu_ps(src + 16), v3 = _mm256_loadu_ps(src + 24);
        const __m256 m = _mm256_max_ps(_mm256_max_ps(abs_ps(v0), abs_ps(v1)), _mm256_max_ps(abs_ps(v2), abs_ps(v3)));
        const float amax = hmax_ps(m);
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        b[ib].d = ds4_fp32_to_fp16(d);
        const __m256 idv = _mm256_set1_ps(id);
        const __m256i q0 = _mm256_cvttps_epi32(round_half_away_ps(_mm256_mul_ps(v0, idv)));
        const __m256i q1 = _mm256_cvttps_epi32(round_half_away_ps(_mm256_mul_ps(v1, idv)));
        const __m256i q2 = _mm256_cvttps_epi32(round_half_away_ps(_mm256_mul_ps(v2, idv)));
        const __m256i q3 = _mm256_cvttps_epi32(round_half_away_ps(_mm256_mul_ps(v3, idv)));
        _mm256_storeu_si256((__m256i *)b[ib].qs, pack_i32x32_to_i8(q0, q1, q2, q3));
    }
}

static float vec_dot_q8_0_q8_0_avx2(int64_t n, const void *w_row, const void *x_row) {
    const ds4_block_q8_0 *w = w_row, *x = x_row;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t ib = 0; ib < n / DS4_QK8_0; ib++) {
        const __m256i p = dot_i8x32(_mm256_loadu_si256((const __m256i *)w[ib].qs),
                                    _mm256_loadu_si256((const __m256i *)x[ib].qs));
        const __m256 d = _mm256_set1_ps(ds4_fp16_to_fp32(w[ib].d) * ds4_fp16_to_fp32(x[ib].d));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc);
    }
    return hsum_ps(acc);
}

/* ------------------------------------------------------------------------ */
/* Q8_K (activation quantizer).                                              */

static void quantize_q8_k_avx2(const float *src, void *dst, int64_t n, const float *imatrix) {
    (void)imatrix;
    ds4_block_q8_k *b = dst;
    for (int64_t ib = 0; ib < n / DS4_QK_K; ib++, src += DS4_QK_K) {
        __m256 m = _mm256_setzero_ps();
        for (int j = 0; j < DS4_QK_K; j += 8) m = _mm256_max_ps(m, abs_ps(_mm256_loadu_ps(src + j)));
        const float amax = hmax_ps(m);
        if (amax == 0.0f) {
            memset(&b[ib], 0, sizeof b[ib]);
            continue;
        }
        /* the reference takes the first element of largest magnitude */
        const __m256 amax_v = _mm256_set1_ps(amax);
        int first = 0;
        for (int j = 0; j < DS4_QK_K; j += 8) {
            const int mask = _mm256_movemask_ps(_mm256_cmp_ps(abs_ps(_mm256_loadu_ps(src + j)), amax_v, _CMP_EQ_OQ));
            if (mask) {
                first = j + __builtin_ctz((unsigned)mask);
                break;
            }
        }
        const float iscale = -127.0f / src[first];
        const __m256 is = _mm256_set1_ps(iscale), cap = _mm256_set1_ps(127.0f);
        for (int j = 0; j < DS4_QK_K; j += 32) {
            __m256i q[4];
            for (int k = 0; k < 4; k++) {
                const __m256 v = _mm256_mul_ps(_mm256_loadu_ps(src + j + 8 * k), is);
                const __m256 r = _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
                q[k] = _mm256_cvttps_epi32(_mm256_min_ps(r, cap));
            }
            const __m256i q8 = pack_i32x32_to_i8(q[0], q[1], q[2], q[3]);
            _mm256_storeu_si256((__m256i *)(b[ib].qs + j), q8);
            /* bsums of elements j..j+15 and j+16..j+31 */
            const __m256i s16 = _mm256_maddubs_epi16(_mm256_set1_epi8(1), q8);
            const __m256i s32 = _mm256_madd_epi16(s16, _mm256_set1_epi16(1));
            __m256i h = _mm256_hadd_epi32(s32, s32);
            h = _mm256_hadd_epi32(h, h);
            b[ib].bsums[j / 16] = (int16_t)_mm256_extract_epi32(h, 0);
            b[ib].bsums[j / 16 + 1] = (int16_t)_mm256_extract_epi32(h, 4);
        }
        b[ib].d = 1.0f / iscale;
    }
}

/* ------------------------------------------------------------------------ */
/* Q2_K.                                                                     */

static void dequantize_q2_k_avx2(const void *src, float *dst, int64_t n) {
    const ds4_block_q2_k *b = src;
    const __m256i m3 = _mm256_set1_epi32(3);
    for (int64_t ib = 0; ib < n / DS4_QK_K; ib++) {
        const float d = ds4_fp16_to_fp32(b[ib].d), dmin = ds4_fp16_to_fp32(b[ib].dmin);
        for (int s = 0; s < 16; s++, dst += 16) {
            const int h = s / 8, j = (s % 8) / 2, k = s % 2;
            const __m256 dl = _mm256_set1_ps(d * (b[ib].scales[s] & 0xF));
            const __m256 ml = _mm256_set1_ps(dmin * (b[ib].scales[s] >> 4));
            const uint8_t *q = b[ib].qs + 32 * h + 16 * k;
            for (int i = 0; i < 16; i += 8) {
                const __m256i bytes = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(q + i)));
                const __m256 codes = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(bytes, 2 * j), m3));
                _mm256_storeu_ps(dst + i, _mm256_sub_ps(_mm256_mul_ps(dl, codes), ml));
            }
        }
    }
}

static float vec_dot_q2_k_q8_k_avx2(int64_t n, const void *w_row, const void *x_row) {
    const ds4_block_q2_k *w = w_row;
    const ds4_block_q8_k *x = x_row;
    const __m256i m3 = _mm256_set1_epi8(3);
    float sum = 0.0f;
    for (int64_t ib = 0; ib < n / DS4_QK_K; ib++) {
        /* mins: Σ_s bsum_s * (scales[s] >> 4) */
        const __m256i sc16 = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)w[ib].scales));
        const __m256i bs = _mm256_loadu_si256((const __m256i *)x[ib].bsums);
        const int summs = hsum_i32(_mm256_madd_epi16(bs, _mm256_srli_epi16(sc16, 4)));

        __m256i acc = _mm256_setzero_si256();
        for (int h = 0; h < 2; h++) {
            const __m256i q = _mm256_loadu_si256((const __m256i *)(w[ib].qs + 32 * h));
            for (int j = 0; j < 4; j++) {
                const int s = 8 * h + 2 * j; /* low 16 bytes: sub-block s, high 16: s + 1 */
                const __m256i codes = _mm256_and_si256(_mm256_srli_epi16(q, 2 * j), m3);
                const __m256i a = _mm256_loadu_si256((const __m256i *)(x[ib].qs + 128 * h + 32 * j));
                const __m256i p = _mm256_maddubs_epi16(codes, a);
                const __m256i sc = _mm256_set_m128i(_mm_set1_epi16(w[ib].scales[s + 1] & 0xF),
                                                    _mm_set1_epi16(w[ib].scales[s] & 0xF));
                acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, sc));
            }
        }
        const int isum = hsum_i32(acc);
        const float dall = x[ib].d * ds4_fp16_to_fp32(w[ib].d);
        const float dmin = x[ib].d * ds4_fp16_to_fp32(w[ib].dmin);
        sum += dall * (float)isum - dmin * (float)summs;
    }
    return sum;
}

/* ------------------------------------------------------------------------ */
/* Q4_K.                                                                     */

static inline void q4k_scale_min(const uint8_t *p, int j, int *sc, int *m) {
    if (j < 4) {
        *sc = p[j] & 63;
        *m = p[j + 4] & 63;
    } else {
        *sc = (p[j + 4] & 0xF) | ((p[j - 4] >> 6) << 4);
        *m = (p[j + 4] >> 4) | ((p[j] >> 6) << 4);
    }
}

static void dequantize_q4_k_avx2(const void *src, float *dst, int64_t n) {
    const ds4_block_q4_k *b = src;
    const __m256i m4 = _mm256_set1_epi32(0xF);
    for (int64_t ib = 0; ib < n / DS4_QK_K; ib++) {
        const float d = ds4_fp16_to_fp32(b[ib].d), dmin = ds4_fp16_to_fp32(b[ib].dmin);
        for (int j = 0; j < 8; j++, dst += 32) {
            int sc, m;
            q4k_scale_min(b[ib].scales, j, &sc, &m);
            const __m256 dl = _mm256_set1_ps(d * sc), ml = _mm256_set1_ps(dmin * m);
            const uint8_t *q = b[ib].qs + 32 * (j / 2);
            const int shift = 4 * (j % 2);
            for (int i = 0; i < 32; i += 8) {
                const __m256i bytes = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(q + i)));
                const __m256 codes = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(bytes, shift), m4));
                _mm256_storeu_ps(dst + i, _mm256_sub_ps(_mm256_mul_ps(dl, codes), ml));
            }
        }
    }
}

static float vec_dot_q4_k_q8_k_avx2(int64_t n, const void *w_row, const void *x_row) {
    const ds4_block_q4_k *w = w_row;
    const ds4_block_q8_k *x = x_row;
    const __m256i m4 = _mm256_set1_epi8(0xF);
    float sum = 0.0f;
    for (int64_t ib = 0; ib < n / DS4_QK_K; ib++) {
        int sc[8], mn[8];
        for (int j = 0; j < 8; j++) q4k_scale_min(w[ib].scales, j, &sc[j], &mn[j]);
        int summ = 0;
        for (int j = 0; j < 8; j++) summ += mn[j] * (x[ib].bsums[2 * j] + x[ib].bsums[2 * j + 1]);

        __m256i acc = _mm256_setzero_si256();
        for (int j2 = 0; j2 < 4; j2++) {
            const __m256i q = _mm256_loadu_si256((const __m256i *)(w[ib].qs + 32 * j2));
            const __m256i lo = _mm256_and_si256(q, m4), hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
            const __m256i a_lo = _mm256_loadu_si256((const __m256i *)(x[ib].qs + 64 * j2));
            const __m256i a_hi = _mm256_loadu_si256((const __m256i *)(x[ib].qs + 64 * j2 + 32));
            const __m256i p_lo = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, a_lo), _mm256_set1_epi16((short)sc[2 * j2]));
            const __m256i p_hi =
                _mm256_madd_epi16(_mm256_maddubs_epi16(hi, a_hi), _mm256_set1_epi16((short)sc[2 * j2 + 1]));
            acc = _mm256_add_epi32(acc, _mm256_add_epi32(p_lo, p_hi));
        }
        const int sumi = hsum_i32(acc);
        const float dall = x[ib].d * ds4_fp16_to_fp32(w[ib].d);
        const float dmin = x[ib].d * ds4_fp16_to_fp32(w[ib].dmin);
        sum += dall * (float)sumi - dmin * (float)summ;
    }
    return sum;
}

/* ------------------------------------------------------------------------ */
/* IQ2_XXS.                                                                  */

/* 32 sign masks (0xFF = negative) for the 4 groups of a sub-block. */
static inline __m256i iq2_sign_masks(uint32_t aux1) {
    const uint32_t s = (uint32_t)ds4_iq2xxs_ksigns[aux1 & 127] | (uint32_t)ds4_iq2xxs_ksigns[(aux1 >> 7) & 127] << 8 |
                       (uint32_t)ds4_iq2xxs_ksigns[(aux1 >> 14) & 127] << 16 |
                       (uint32_t)ds4_iq2xxs_ksigns[(aux1 >> 21) & 127] << 24;
    /* byte k of the result takes sign byte k/8 (shuffles stay within 128-bit lanes) */
    const __m256i spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32((int)s),
        _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ull);
    return _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
}

static void dequantize_iq2_xxs_avx2(const void *src, float *dst, int64_t n) {
    const ds4_block_iq2_xxs *b = src;
    const __m256i bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    const __m256 one = _mm256_set1_ps(1.0f), minus_one = _mm256_set1_ps(-1.0f);
    for (int64_t ib = 0; ib < n / DS4_QK_K; ib++) {
        const float d = ds4_fp16_to_fp32(b[ib].d);
        for (int sb = 0; sb < 8; sb++) {
            uint32_t aux[2];
            memcpy(aux, b[ib].qs + 4 * sb, sizeof aux);
            const __m256 db = _mm256_set1_ps(d * (0.5f + (float)(aux[1] >> 28)) * 0.25f);
            for (int l = 0; l < 4; l++, dst += 8) {
                const uint64_t g = ds4_iq2xxs_grid[(aux[0] >> (8 * l)) & 0xFF];
                const int signs = ds4_iq2xxs_ksigns[(aux[1] >> (7 * l)) & 127];
                const __m256 mag = u8x8_to_ps((const uint8_t *)&g);
                const __m256i neg = _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(signs), bit), bit);
                const __m256 sgn = _mm256_blendv_ps(one, minus_one, _mm256_castsi256_ps(neg));
                _mm256_storeu_ps(dst, _mm256_mul_ps(_mm256_mul_ps(db, mag), sgn));
            }
        }
    }
}

static float vec_dot_iq2_xxs_q8_k_avx2(int64_t n, const void *w_row, const void *x_row) {
    const ds4_block_iq2_xxs *w = w_row;
    const ds4_block_q8_k *x = x_row;
    const __m256i one8 = _mm256_set1_epi8(1);
    float sum = 0.0f;
    for (int64_t ib = 0; ib < n / DS4_QK_K; ib++) {
        __m256i acc = _mm256_setzero_si256();
        for (int sb = 0; sb < 8; sb++) {
            uint32_t aux[2];
            memcpy(aux, w[ib].qs + 4 * sb, sizeof aux);
            const __m256i grid = _mm256_setr_epi64x(
                (long long)ds4_iq2xxs_grid[aux[0] & 0xFF], (long long)ds4_iq2xxs_grid[(aux[0] >> 8) & 0xFF],
                (long long)ds4_iq2xxs_grid[(aux[0] >> 16) & 0xFF], (long long)ds4_iq2xxs_grid[aux[0] >> 24]);
            /* signed magnitudes in [-43, 43]; then |a| * (g * sign(a)) = a*g exactly, even for a = -128 */
            const __m256i g = _mm256_sign_epi8(grid, _mm256_or_si256(iq2_sign_masks(aux[1]), one8));
            const __m256i a = _mm256_loadu_si256((const __m256i *)(x[ib].qs + 32 * sb));
            const __m256i p = _mm256_maddubs_epi16(_mm256_abs_epi8(a), _mm256_sign_epi8(g, a));
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16((short)(2 * (aux[1] >> 28) + 1))));
        }
        const float d = ds4_fp16_to_fp32(w[ib].d) * x[ib].d;
        sum += d * (float)hsum_i32(acc);
    }
    return 0.125f * sum;
}

/* ------------------------------------------------------------------------ */

static const ds4_quant_kernels kernels_avx2 = {
    .name = "avx2",
    .dequantize =
        {
            [DS4_TYPE_F16] = dequantize_f16_avx2,
            [DS4_TYPE_BF16] = dequantize_bf16_avx2,
            [DS4_TYPE_Q8_0] = dequantize_q8_0_avx2,
            [DS4_TYPE_Q2_K] = dequantize_q2_k_avx2,
            [DS4_TYPE_Q4_K] = dequantize_q4_k_avx2,
            [DS4_TYPE_IQ2_XXS] = dequantize_iq2_xxs_avx2,
        },
    .quantize =
        {
            [DS4_TYPE_F16] = quantize_f16_avx2,
            [DS4_TYPE_BF16] = quantize_bf16_avx2,
            [DS4_TYPE_Q8_0] = quantize_q8_0_avx2,
            [DS4_TYPE_Q8_K] = quantize_q8_k_avx2,
        },
    .vec_dot =
        {
            [DS4_TYPE_F32] = vec_dot_f32_f32_avx2,
            [DS4_TYPE_F16] = vec_dot_f16_f32_avx2,
            [DS4_TYPE_BF16] = vec_dot_bf16_f32_avx2,
            [DS4_TYPE_Q8_0] = vec_dot_q8_0_q8_0_avx2,
            [DS4_TYPE_Q2_K] = vec_dot_q2_k_q8_k_avx2,
            [DS4_TYPE_Q4_K] = vec_dot_q4_k_q8_k_avx2,
            [DS4_TYPE_IQ2_XXS] = vec_dot_iq2_xxs_q8_k_avx2,
        },
};

const ds4_quant_kernels *ds4_quant_kernels_avx2(void) { return &kernels_avx2; }

#else /* not built with AVX2/FMA/F16C (e.g. a non-x86 target) */

const ds4_quant_kernels *ds4_quant_kernels_avx2(void) { return NULL; }

#endif

/* quant_ref.c - plain C reference for the block formats (everything but
 * IQ2_XXS, which lives in quant_iq2xxs.c).
 *
 * Why it exists: this is the oracle. Every SIMD path (quant_avx2.c, a future
 * quant_neon.c) is tested against these functions, and model files are
 * produced by them, so they favour obviousness over speed. The arithmetic is
 * spelled out in the same order ggml uses, because dequantized values must be
 * bit-identical to ggml's (and to the `gguf` Python package, which the tests
 * check): a * b - c is written as two roundings, never fused.
 *
 * Organisation, per format:
 *   dequantize_<fmt>   block bytes -> floats
 *   quantize_<fmt>     floats (+ optional per-column importance) -> blocks
 *   vec_dot_<w>_<x>    weight row . activation row (integer inner sums)
 * followed by the kernel table ds4_quant_kernels_ref that quant.c dispatches
 * through.
 *
 * Q8_0 and Q8_K quantization reproduce ggml's reference quantizers exactly
 * (they are the activation formats, and Q8_0 is also checked byte for byte
 * against gguf.quants.quantize). Q2_K and Q4_K quantizers are our own
 * weighted least-squares fits; only their output format is ggml's.
 */
#include "quant.h"

#include <float.h>
#include <math.h>
#include <string.h>

#include "fp16.h"

#ifdef __clang__
#pragma STDC FP_CONTRACT OFF /* GCC keeps contraction off in -std=c11 already */
#endif

/* Round to nearest, ties to even (the rounding of ggml's nearest_int), for
 * |v| < 2^22: adding 1.5*2^23 leaves the rounded integer in the low mantissa
 * bits. */
static inline int round_half_even(float v) {
    float t = v + 12582912.f;
    uint32_t bits = ds4_f32_bits(t);
    return (int)(bits & 0x007fffff) - 0x00400000;
}

static inline int clamp_int(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

/* ======================================================================== */
/* F32, F16, BF16: element-wise conversions.                                 */

static void dequantize_f32(const void *src, float *dst, int64_t n) { memcpy(dst, src, (size_t)n * sizeof(float)); }

static void quantize_f32(const float *src, void *dst, int64_t n, const float *imatrix) {
    (void)imatrix;
    memcpy(dst, src, (size_t)n * sizeof(float));
}

static void dequantize_f16(const void *src, float *dst, int64_t n) {
    const uint16_t *h = src;
    for (int64_t i = 0; i < n; i++) dst[i] = ds4_fp16_to_fp32(h[i]);
}

static void quantize_f16(const float *src, void *dst, int64_t n, const float *imatrix) {
    (void)imatrix;
    uint16_t *h = dst;
    for (int64_t i = 0; i < n; i++) h[i] = ds4_fp32_to_fp16(src[i]);
}

static void dequantize_bf16(const void *src, float *dst, int64_t n) {
    const uint16_t *h = src;
    for (int64_t i = 0; i < n; i++) dst[i] = ds4_bf16_to_fp32(h[i]);
}

static void quantize_bf16(const float *src, void *dst, int64_t n, const float *imatrix) {
    (void)imatrix;
    uint16_t *h = dst;
    for (int64_t i = 0; i < n; i++) h[i] = ds4_fp32_to_bf16(src[i]);
}

static float vec_dot_f32_f32(int64_t n, const void *w_row, const void *x_row) {
    const float *w = w_row, *x = x_row;
    float sum = 0.0f;
    for (int64_t i = 0; i < n; i++) sum += w[i] * x[i];
    return sum;
}

static float vec_dot_f16_f32(int64_t n, const void *w_row, const void *x_row) {
    const uint16_t *w = w_row;
    const float *x = x_row;
    float sum = 0.0f;
    for (int64_t i = 0; i < n; i++) sum += ds4_fp16_to_fp32(w[i]) * x[i];
    return sum;
}

static float vec_dot_bf16_f32(int64_t n, const void *w_row, const void *x_row) {
    const uint16_t *w = w_row;
    const float *x = x_row;
    float sum = 0.0f;
    for (int64_t i = 0; i < n; i++) sum += ds4_bf16_to_fp32(w[i]) * x[i];
    return sum;
}

/* ======================================================================== */
/* Q8_0: 32 values, f16 d, int8 q; x = d*q.                                  */

static void dequantize_q8_0(const void *src, float *dst, int64_t n) {
    const ds4_block_q8_0 *b = src;
    for (int64_t ib = 0; ib < n / DS4_QK8_0; ib++, dst += DS4_QK8_0) {
        const float d = ds4_fp16_to_fp32(b[ib].d);
        for (int j = 0; j < DS4_QK8_0; j++) dst[j] = b[ib].qs[j] * d;
    }
}

/* ggml's quantize_row_q8_0_ref: d = amax/127, q = roundf(x / d) (ties away
 * from zero), d stored as f16. Used for weights and for activations. */
static void quantize_q8_0(const float *src, void *dst, int64_t n, const float *imatrix) {
    (void)imatrix;
    ds4_block_q8_0 *b = dst;
    for (int64_t ib = 0; ib < n / DS4_QK8_0; ib++, src += DS4_QK8_0) {
        float amax = 0.0f;
        for (int j = 0; j < DS4_QK8_0; j++) amax = fmaxf(amax, fabsf(src[j]));
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        b[ib].d = ds4_fp32_to_fp16(d);
        for (int j = 0; j < DS4_QK8_0; j++) b[ib].qs[j] = (int8_t)roundf(src[j] * id);
    }
}

/* y = Σ_blocks (dw*dx) * Σ_j qw*qx, blocks summed in order. */
static float vec_dot_q8_0_q8_0(int64_t n, const void *w_row, const void *x_row) {
    const ds4_block_q8_0 *w = w_row, *x = x_row;
    float sum = 0.0f;
    for (int64_t ib = 0; ib < n / DS4_QK8_0; ib++) {
        int sumi = 0;
        for (int j = 0; j < DS4_QK8_0; j++) sumi += w[ib].qs[j] * x[ib].qs[j];
        sum += (float)sumi * (ds4_fp16_to_fp32(w[ib].d) * ds4_fp16_to_fp32(x[ib].d));
    }
    return sum;
}

/* ======================================================================== */
/* Q8_K: 256 values, f32 d, int8 q, 16 partial sums. Activations only.       */

static void dequantize_q8_k(const void *src, float *dst, int64_t n) {
    const ds4_block_q8_k *b = src;
    for (int64_t ib = 0; ib < n / DS4_QK_K; ib++, dst += DS4_QK_K)
        for (int j = 0; j < DS4_QK_K; j++) dst[j] = b[ib].d * b[ib].qs[j];
}

/* ggml's quantize_row_q8_K_ref: the element m with the largest magnitude
 * (first one on ties) gives iscale = -127/m, q = round_half_even(iscale*x)
 * capped at 127, d = 1/iscale. All-zero blocks get d = 0, q = 0. */
static void quantize_q8_k(const float *src, void *dst, int64_t n, const float *imatrix) {
    (void)imatrix;
    ds4_block_q8_k *b = dst;
    for (int64_t ib = 0; ib < n / DS4_QK_K; ib++, src += DS4_QK_K) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < DS4_QK_K; j++) {
            const float ax = fabsf(src[j]);
            if (ax > amax) { amax = ax; max = src[j]; }
        }
        if (amax == 0.0f) {
            memset(&b[ib], 0, sizeof b[ib]);
            continue;
        }
        const float iscale = -127.0f / max;
        for (int j = 0; j < DS4_QK_K; j++) {
            const int v = round_half_even(iscale * src[j]);
            b[ib].qs[j] = (int8_t)(v < 127 ? v : 127);
        }
        for (int g = 0; g < DS4_QK_K / 16; g++) {
            int sum = 0;
            for (int j = 0; j < 16; j++) sum += b[ib].qs[16 * g + j];
            b[ib].bsums[g] = (int16_t)sum;
        }
        b[ib].d = 1.0f / iscale;
    }
}

/* ======================================================================== */
/* K-quant fitting shared by Q2_K and Q4_K.                                  */
/*
 * Both formats model a sub-block as x ≈ s*L - m with integer codes
 * L ∈ [0, nmax], a scale s ≥ 0 and a "min" m ≥ 0 (so the lowest representable
 * value is ≤ 0). The s and m of all sub-blocks are then themselves quantized
 * to nbits-bit integers times two f16 super-scales (d, dmin).
 *
 * Our quantizer:
 *  1. per super-block, element weights w = qw * sqrt(σ² + x²), σ² = mean x²
 *     of the super-block, qw = imatrix column (1 without one; tiny floor so a
 *     zero column still gets a sane code);
 *  2. per sub-block, fit_scale_min(): weighted least squares for (s, m) over a
 *     sweep of candidate code assignments, then a few refit iterations;
 *  3. fit_super_scale(): d and dmin by weighted least squares on the
 *     integer-rounded s/d (weights: how much each sub-block's error grows with
 *     a scale error, Σ w L² for scales and Σ w for mins);
 *  4. per sub-block, try the integer scale/min and their ±1 neighbours with
 *     the *stored* f16 super-scales, re-derive the codes for each, keep the
 *     pair with the least weighted error.
 */

#define KQ_MAX_SUB 32 /* largest sub-block (Q4_K) */

/* Weighted squared error of x against s*L + o. */
static float kq_error(int n, const float *x, const float *w, const uint8_t *L, float s, float o) {
    float err = 0.0f;
    for (int i = 0; i < n; i++) {
        const float diff = s * L[i] + o - x[i];
        err += w[i] * diff * diff;
    }
    return err;
}

/* Weighted least-squares (s, o) for fixed codes L with o ≤ 0 and s ≥ 0.
 * Returns false if the system is degenerate. */
static bool kq_solve(int n, const float *x, const float *w, const uint8_t *L, float *s_out, float *o_out) {
    float sw = 0, swx = 0, swl = 0, swl2 = 0, swlx = 0;
    for (int i = 0; i < n; i++) {
        const float wl = w[i] * L[i];
        sw += w[i];
        swx += w[i] * x[i];
        swl += wl;
        swl2 += wl * L[i];
        swlx += wl * x[i];
    }
    const float det = sw * swl2 - swl * swl;
    if (!(det > 0.0f)) return false;
    float s = (sw * swlx - swx * swl) / det;
    float o = (swl2 * swx - swl * swlx) / det;
    if (o > 0.0f) { /* a positive offset is not representable: pin it at 0 */
        o = 0.0f;
        s = swlx / swl2;
    }
    if (!(s >= 0.0f)) return false;
    *s_out = s;
    *o_out = o;
    return true;
}

/* Codes for x with scale s and offset o (o ≤ 0), clamped to [0, nmax]. */
static void kq_codes(int n, int nmax, const float *x, float s, float o, uint8_t *L) {
    const float is = s > 0.0f ? 1.0f / s : 0.0f;
    for (int i = 0; i < n; i++) {
        const float v = (x[i] - o) * is;
        L[i] = (uint8_t)(v > 0.0f ? clamp_int(round_half_even(fminf(v, (float)nmax)), 0, nmax) : 0);
    }
}

/* Fit x[0..n) ≈ s*L - m; writes L, returns s, stores m (≥ 0) in *m_out. */
static float fit_scale_min(int n, int nmax, const float *x, const float *w, uint8_t *L, float *m_out) {
    float lo = x[0], hi = x[0];
    for (int i = 1; i < n; i++) {
        lo = fminf(lo, x[i]);
        hi = fmaxf(hi, x[i]);
    }
    if (lo > 0.0f) lo = 0.0f;
    if (!(hi > lo)) { /* constant non-positive block: all codes 0, value -m */
        memset(L, 0, (size_t)n);
        *m_out = -lo;
        return 0.0f;
    }

    /* Plain min/max mapping as the starting point. */
    float best_s = (hi - lo) / nmax, best_o = lo;
    kq_codes(n, nmax, x, best_s, best_o, L);
    float best_err = kq_error(n, x, w, L, best_s, best_o);

    /* Sweep the code density: iscale = (nmax + t)/(hi - lo), t ∈ [-1, 1]. */
    uint8_t Lc[KQ_MAX_SUB];
    for (int k = 0; k <= 10; k++) {
        const float iscale = (nmax - 1.0f + 0.2f * k) / (hi - lo);
        for (int i = 0; i < n; i++) {
            const int l = round_half_even((x[i] - lo) * iscale);
            Lc[i] = (uint8_t)clamp_int(l, 0, nmax);
        }
        float s, o;
        if (!kq_solve(n, x, w, Lc, &s, &o)) continue;
        const float err = kq_error(n, x, w, Lc, s, o);
        if (err < best_err) {
            best_err = err;
            best_s = s;
            best_o = o;
            memcpy(L, Lc, (size_t)n);
        }
    }

    /* Alternate code assignment and refit until nothing improves. */
    for (int iter = 0; iter < 3 && best_s > 0.0f; iter++) {
        kq_codes(n, nmax, x, best_s, best_o, Lc);
        float s, o;
        if (!kq_solve(n, x, w, Lc, &s, &o)) break;
        const float err = kq_error(n, x, w, Lc, s, o);
        if (!(err < best_err)) break;
        best_err = err;
        best_s = s;
        best_o = o;
        memcpy(L, Lc, (size_t)n);
    }
    *m_out = -best_o;
    return best_s;
}

/* Super-scale for n values v ≥ 0: v[j] ≈ d*q[j], q ∈ [0, nmax], weighted by
 * imp[j]. Returns d (0 when all v are 0). */
static float fit_super_scale(int n, int nmax, const float *v, const float *imp) {
    float vmax = 0.0f;
    for (int j = 0; j < n; j++) vmax = fmaxf(vmax, v[j]);
    if (!(vmax > 0.0f)) return 0.0f;

    /* Candidates: the largest value at code nmax give or take 0.6, or at any
     * integer code down to nmax/2 (a row quantized before maps back to its
     * own scales exactly). Each candidate is refined by least squares. */
    float best_d = vmax / nmax, best_err = FLT_MAX;
    const int n_frac = 13, n_int = nmax - nmax / 2;
    for (int k = 0; k < n_frac + n_int; k++) {
        const float d0 = k < n_frac ? vmax / (nmax + 0.1f * (k - 6)) : vmax / (float)(nmax - 1 - (k - n_frac));
        float sqv = 0, sqq = 0;
        for (int j = 0; j < n; j++) {
            const int q = clamp_int(round_half_even(v[j] / d0), 0, nmax);
            sqv += imp[j] * q * v[j];
            sqq += imp[j] * q * q;
        }
        const float d = sqq > 0.0f ? sqv / sqq : d0;
        float err = 0.0f;
        for (int j = 0; j < n; j++) {
            const int q = clamp_int(round_half_even(v[j] / d), 0, nmax);
            const float diff = v[j] - d * q;
            err += imp[j] * diff * diff;
        }
        if (err < best_err) {
            best_err = err;
            best_d = d;
        }
    }
    return best_d;
}

/* f16 that holds d (clamped to the largest finite half). */
static uint16_t kq_store_scale(float d) { return ds4_fp32_to_fp16(fminf(d, 65504.0f)); }

/* Element weights for one super-block of 256 values. */
static void kq_weights(const float *x, const float *qw, float *w) {
    float sumx2 = 0.0f;
    for (int i = 0; i < DS4_QK_K; i++) sumx2 += x[i] * x[i];
    const float sigma2 = sumx2 / DS4_QK_K;

    float qsum = 0.0f;
    if (qw)
        for (int i = 0; i < DS4_QK_K; i++) qsum += qw[i] > 0.0f ? qw[i] : 0.0f;
    const bool use_qw = qw && qsum > 0.0f && isfinite(qsum);
    const float floor_w = use_qw ? 1e-3f * qsum / DS4_QK_K : 0.0f;
    for (int i = 0; i < DS4_QK_K; i++) {
        const float q = use_qw ? (qw[i] > 0.0f ? qw[i] : 0.0f) + floor_w : 1.0f;
        w[i] = q * sqrtf(sigma2 + x[i] * x[i]);
    }
}

/* Best (scale code, min code) near (sc0, m0) for one sub-block given the
 * stored super-scales; writes the codes L that go with it. */
static void kq_pick_codes(int n, int nmax, int smax, const float *x, const float *w, float d, float dmin, int sc0,
                          int m0, int *sc_out, int *m_out, uint8_t *L) {
    uint8_t Lc[KQ_MAX_SUB];
    float best_err = FLT_MAX;
    *sc_out = clamp_int(sc0, 0, smax);
    *m_out = clamp_int(m0, 0, smax);
    for (int ds = -1; ds <= 1; ds++) {
        const int sc = sc0 + ds;
        if (sc < 0 || sc > smax) continue;
        for (int dm = -1; dm <= 1; dm++) {
            const int m = m0 + dm;
            if (m < 0 || m > smax) continue;
            const float dl = d * sc, ml = dmin * m;
            if (dl > 0.0f) {
                for (int i = 0; i < n; i++) {
                    const float v = (x[i] + ml) / dl;
                    Lc[i] = (uint8_t)(v > 0.0f ? clamp_int(round_half_even(fminf(v, (float)nmax)), 0, nmax) : 0);
                }
            } else {
                memset(Lc, 0, (size_t)n);
            }
            float err = 0.0f;
            for (int i = 0; i < n; i++) {
                const float diff = dl * Lc[i] - ml - x[i]; /* the dequantizer's arithmetic */
                err += w[i] * diff * diff;
            }
            if (err < best_err) {
                best_err = err;
                *sc_out = sc;
                *m_out = m;
                memcpy(L, Lc, (size_t)n);
            }
        }
    }
}

/* Quantize one super-block: n_sub sub-blocks of sub_n values, codes in
 * [0, nmax], scale/min codes in [0, smax]. Outputs codes L[256] and per
 * sub-block integer scales/mins plus the two f16 super-scales. */
static void kq_quantize_superblock(const float *x, const float *qw, int n_sub, int sub_n, int nmax, int smax,
                                   uint8_t *L, int *sc, int *mn, uint16_t *d16, uint16_t *dmin16) {
    float w[DS4_QK_K], scales[16], mins[16], imp_s[16], imp_m[16];
    kq_weights(x, qw, w);
    for (int j = 0; j < n_sub; j++) {
        const float *xs = x + sub_n * j, *ws = w + sub_n * j;
        uint8_t *Ls = L + sub_n * j;
        scales[j] = fit_scale_min(sub_n, nmax, xs, ws, Ls, &mins[j]);
        imp_s[j] = imp_m[j] = 0.0f;
        for (int i = 0; i < sub_n; i++) {
            imp_s[j] += ws[i] * Ls[i] * Ls[i];
            imp_m[j] += ws[i];
        }
        if (!(imp_s[j] > 0.0f)) imp_s[j] = imp_m[j];
    }
    *d16 = kq_store_scale(fit_super_scale(n_sub, smax, scales, imp_s));
    *dmin16 = kq_store_scale(fit_super_scale(n_sub, smax, mins, imp_m));
    const float d = ds4_fp16_to_fp32(*d16), dmin = ds4_fp16_to_fp32(*dmin16);
    for (int j = 0; j < n_sub; j++) {
        const int sc0 = d > 0.0f ? clamp_int(round_half_even(fminf(scales[j] / d, (float)smax)), 0, smax) : 0;
        const int m0 = dmin > 0.0f ? clamp_int(round_half_even(fminf(mins[j] / dmin, (float)smax)), 0, smax) : 0;
        kq_pick_codes(sub_n, nmax, smax, x + sub_n * j, w + sub_n * j, d, dmin, sc0, m0, &sc[j], &mn[j],
                      L + sub_n * j);
    }
}

/* ======================================================================== */
/* Q2_K: 16 sub-blocks of 16 values, 2-bit codes, 4-bit scale and min.       */
/*
 * Element n = 128h + 32j + 16k + i (h half, j bit-plane, k, i < 16) has code
 * (qs[32h + 16k + i] >> 2j) & 3 and belongs to sub-block s = 8h + 2j + k,
 * i.e. sub-block s covers elements 16s .. 16s+15.
 */

static void dequantize_q2_k(const void *src, float *dst, int64_t n) {
    const ds4_block_q2_k *b = src;
    for (int64_t ib = 0; ib < n / DS4_QK_K; ib++) {
        const float d = ds4_fp16_to_fp32(b[ib].d), dmin = ds4_fp16_to_fp32(b[ib].dmin);
        for (int s = 0; s < 16; s++) {
            const int h = s / 8, j = (s % 8) / 2, k = s % 2;
            const float dl = d * (b[ib].scales[s] & 0xF), ml = dmin * (b[ib].scales[s] >> 4);
            const uint8_t *q = b[ib].qs + 32 * h + 16 * k;
            for (int i = 0; i < 16; i++) *dst++ = dl * ((q[i] >> (2 * j)) & 3) - ml;
        }
    }
}

static void quantize_q2_k(const float *src, void *dst, int64_t n, const float *imatrix) {
    ds4_block_q2_k *b = dst;
    for (int64_t ib = 0; ib < n / DS4_QK_K; ib++) {
        uint8_t L[DS4_QK_K];
        int sc[16], mn[16];
        const float *x = src + DS4_QK_K * ib;
        kq_quantize_superblock(x, imatrix ? imatrix + DS4_QK_K * ib : NULL, 16, 16, 3, 15, L, sc, mn, &b[ib].d,
                               &b[ib].dmin);
        for (int s = 0; s < 16; s++) b[ib].scales[s] = (uint8_t)(sc[s] | (mn[s] << 4));
        memset(b[ib].qs, 0, sizeof b[ib].qs);
        for (int e = 0; e < DS4_QK_K; e++) {
            const int h = e / 128, j = (e % 128) / 32, r = e % 32; /* r = 16k + i */
            b[ib].qs[32 * h + r] |= (uint8_t)(L[e] << (2 * j));
        }
    }
}

/* Per block: dall*Σ_s sc_s Σ q*q8  -  dmin*Σ_s m_s*bsum_s, in ggml's order. */
static float vec_dot_q2_k_q8_k(int64_t n, const void *w_row, const void *x_row) {
    const ds4_block_q2_k *w = w_row;
    const ds4_block_q8_k *x = x_row;
    float sum = 0.0f;
    for (int64_t ib = 0; ib < n / DS4_QK_K; ib++) {
        int summs = 0, isum = 0;
        for (int s = 0; s < 16; s++) summs += x[ib].bsums[s] * (w[ib].scales[s] >> 4);
        for (int s = 0; s < 16; s++) {
            const int h = s / 8, j = (s % 8) / 2, k = s % 2;
            const uint8_t *q = w[ib].qs + 32 * h + 16 * k;
            const int8_t *a = x[ib].qs + 16 * s;
            int sub = 0;
            for (int i = 0; i < 16; i++) sub += ((q[i] >> (2 * j)) & 3) * a[i];
            isum += (w[ib].scales[s] & 0xF) * sub;
        }
        const float dall = x[ib].d * ds4_fp16_to_fp32(w[ib].d);
        const float dmin = x[ib].d * ds4_fp16_to_fp32(w[ib].dmin);
        sum += dall * (float)isum - dmin * (float)summs;
    }
    return sum;
}

/* ======================================================================== */
/* Q4_K: 8 sub-blocks of 32 values, 4-bit codes, 6-bit scale and min.        */
/*
 * scales[12] packs 8 (scale, min) pairs of 6 bits: for j < 4 the low 6 bits
 * of scales[j] / scales[j+4]; for j ≥ 4 the nibbles of scales[j+4] plus the
 * top 2 bits of scales[j-4] / scales[j].
 */

static inline void q4k_get_scale_min(const uint8_t *p, int j, int *sc, int *m) {
    if (j < 4) {
        *sc = p[j] & 63;
        *m = p[j + 4] & 63;
    } else {
        *sc = (p[j + 4] & 0xF) | ((p[j - 4] >> 6) << 4);
        *m = (p[j + 4] >> 4) | ((p[j] >> 6) << 4);
    }
}

static void q4k_set_scale_mins(uint8_t *p, const int *sc, const int *m) {
    memset(p, 0, 12);
    for (int j = 0; j < 8; j++) {
        if (j < 4) {
            p[j] |= (uint8_t)sc[j];
            p[j + 4] |= (uint8_t)m[j];
        } else {
            p[j + 4] = (uint8_t)((sc[j] & 0xF) | ((m[j] & 0xF) << 4));
            p[j - 4] |= (uint8_t)((sc[j] >> 4) << 6);
            p[j] |= (uint8_t)((m[j] >> 4) << 6);
        }
    }
}

static void dequantize_q4_k(const void *src, float *dst, int64_t n) {
    const ds4_block_q4_k *b = src;
    for (int64_t ib = 0; ib < n / DS4_QK_K; ib++) {
        const float d = ds4_fp16_to_fp32(b[ib].d), dmin = ds4_fp16_to_fp32(b[ib].dmin);
        for (int j = 0; j < 8; j++) {
            int sc, m;
            q4k_get_scale_min(b[ib].scales, j, &sc, &m);
            const float dl = d * sc, ml = dmin * m;
            const uint8_t *q = b[ib].qs + 32 * (j / 2);
            const int shift = 4 * (j % 2);
            for (int i = 0; i < 32; i++) *dst++ = dl * ((q[i] >> shift) & 0xF) - ml;
        }
    }
}

static void quantize_q4_k(const float *src, void *dst, int64_t n, const float *imatrix) {
    ds4_block_q4_k *b = dst;
    for (int64_t ib = 0; ib < n / DS4_QK_K; ib++) {
        uint8_t L[DS4_QK_K];
        int sc[8], mn[8];
        const float *x = src + DS4_QK_K * ib;
        kq_quantize_superblock(x, imatrix ? imatrix + DS4_QK_K * ib : NULL, 8, 32, 15, 63, L, sc, mn, &b[ib].d,
                               &b[ib].dmin);
        q4k_set_scale_mins(b[ib].scales, sc, mn);
        for (int j = 0; j < 4; j++)
            for (int i = 0; i < 32; i++)
                b[ib].qs[32 * j + i] = (uint8_t)(L[64 * j + i] | (L[64 * j + 32 + i] << 4));
    }
}

/* Per block: (d8*d)*Σ_j sc_j Σ q*q8  -  (d8*dmin)*Σ_j m_j*(bsum_2j + bsum_2j+1). */
static float vec_dot_q4_k_q8_k(int64_t n, const void *w_row, const void *x_row) {
    const ds4_block_q4_k *w = w_row;
    const ds4_block_q8_k *x = x_row;
    float sum = 0.0f;
    for (int64_t ib = 0; ib < n / DS4_QK_K; ib++) {
        int sumi = 0, summ = 0;
        for (int j = 0; j < 8; j++) {
            int sc, m;
            q4k_get_scale_min(w[ib].scales, j, &sc, &m);
            const uint8_t *q = w[ib].qs + 32 * (j / 2);
            const int shift = 4 * (j % 2);
            const int8_t *a = x[ib].qs + 32 * j;
            int sub = 0;
            for (int i = 0; i < 32; i++) sub += ((q[i] >> shift) & 0xF) * a[i];
            sumi += sc * sub;
            summ += m * (x[ib].bsums[2 * j] + x[ib].bsums[2 * j + 1]);
        }
        const float dall = x[ib].d * ds4_fp16_to_fp32(w[ib].d);
        const float dmin = x[ib].d * ds4_fp16_to_fp32(w[ib].dmin);
        sum += dall * (float)sumi - dmin * (float)summ;
    }
    return sum;
}

/* ======================================================================== */

const ds4_quant_kernels ds4_quant_kernels_ref = {
    .name = "none",
    .dequantize =
        {
            [DS4_TYPE_F32] = dequantize_f32,
            [DS4_TYPE_F16] = dequantize_f16,
            [DS4_TYPE_BF16] = dequantize_bf16,
            [DS4_TYPE_Q8_0] = dequantize_q8_0,
            [DS4_TYPE_Q8_K] = dequantize_q8_k,
            [DS4_TYPE_Q2_K] = dequantize_q2_k,
            [DS4_TYPE_Q4_K] = dequantize_q4_k,
            [DS4_TYPE_IQ2_XXS] = ds4_dequantize_iq2_xxs_ref,
        },
    .quantize =
        {
            [DS4_TYPE_F32] = quantize_f32,
            [DS4_TYPE_F16] = quantize_f16,
            [DS4_TYPE_BF16] = quantize_bf16,
            [DS4_TYPE_Q8_0] = quantize_q8_0,
            [DS4_TYPE_Q8_K] = quantize_q8_k,
            [DS4_TYPE_Q2_K] = quantize_q2_k,
            [DS4_TYPE_Q4_K] = quantize_q4_k,
            [DS4_TYPE_IQ2_XXS] = ds4_quantize_iq2_xxs_ref,
        },
    .vec_dot =
        {
            [DS4_TYPE_F32] = vec_dot_f32_f32,
            [DS4_TYPE_F16] = vec_dot_f16_f32,
            [DS4_TYPE_BF16] = vec_dot_bf16_f32,
            [DS4_TYPE_Q8_0] = vec_dot_q8_0_q8_0,
            [DS4_TYPE_Q2_K] = vec_dot_q2_k_q8_k,
            [DS4_TYPE_Q4_K] = vec_dot_q4_k_q8_k,
            [DS4_TYPE_IQ2_XXS] = ds4_vec_dot_iq2_xxs_q8_k_ref,
        },
};

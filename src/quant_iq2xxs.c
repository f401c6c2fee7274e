/* quant_iq2xxs.c - IQ2_XXS (2.0625 bits per weight): reference dequantize,
 * dot product against Q8_K, and the quantizer.
 *
 * Why it exists: DeepSeek V4 Flash's routed gate/up experts (most of the
 * model's ~277 B routed parameters) are stored as IQ2_XXS. The format is
 * ggml's; the quantizer is ours and is the expensive part of model
 * conversion, so it gets its own file.
 *
 * Format (66 bytes per 256 values): f16 d, then per 32-value sub-block two
 * little-endian u32: A holds 4 grid indices (one byte per group of 8 values),
 * B holds 4 x 7-bit sign indices (bits 7l..7l+6) and a 4-bit scale s (bits
 * 28..31). Value i of group l:
 *     x = d * (0.5 + s) * 0.25 * grid[A.byte l][i] * (ksigns[sign l] bit i ? -1 : +1)
 * The grid bytes are 8, 25 or 43, so in units of the sub-block scale
 * S = d*(2s+1) the magnitudes are 1, 3.125 and 5.375; zero is not
 * representable, and each group has an even number of negative values.
 *
 * Quantizer (ours; same ingredients as ggml's quantize_row_iq2_xxs_impl,
 * different search):
 *   - element weights w = qw * sqrt(σ² + x²) with σ² the super-block mean of
 *     x² and qw the importance ("imatrix") column;
 *   - signs are taken from x; a group with an odd number of negatives flips
 *     the element whose w*x² is smallest, which then aims for -|x|;
 *   - for a group, the weighted error of grid point p at scale S is
 *     Σw t² - 2S·A_p + S²·B_p with A_p = Σ w t g_p, B_p = Σ w g_p² (t the
 *     sign-corrected targets, g_p the magnitudes). A_p, B_p are computed for
 *     all 256 points once per group (two 81-entry half tables), after which
 *     the *exact* best grid point for any S costs 256 multiply-adds. There is
 *     no neighbour list to miss a better point.
 *   - per sub-block, S is chosen by a sweep over candidates around
 *     max|x|/5.375 followed by least-squares refits (S = ΣA/ΣB of the chosen
 *     points);
 *   - per super-block, d is tried at max S/{31,30,29} (as stored in f16), each
 *     sub-block takes the better of the two nearest odd multiples of d, grid
 *     points are re-chosen for that exact stored scale, and the d with the
 *     least total error wins.
 *
 * Importance fallback: with imatrix == NULL the per-row weights
 * qw[i] = σ² + x[i]² are used (a blend of "this weight's square", which is
 * what a one-row Σ_rows x² column sum reduces to, and a uniform floor so that
 * small weights are not ignored). Converters quantizing a whole tensor without
 * an imatrix pass ds4_quant_column_sumsq() instead. A super-block whose
 * importance values are all zero (e.g. an expert that never fired while the
 * imatrix was collected) also uses the fallback; individual zero or negative
 * entries are raised to a small floor (1e-3 of the super-block mean).
 *
 * Search tables (per grid point, the base-3 level codes of its two 4-value
 * halves, i.e. its rows in the 81-entry half tables) are built once, with
 * pthread_once, on the first quantization.
 */
#include "quant.h"

#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "fp16.h"
#include "iq2xxs_tables.h"

#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

#define IQ2_GRID 256
#define IQ2_SUB 32    /* values per sub-block */
#define IQ2_GROUP 8   /* values per grid point */
#define IQ2_NSUB (DS4_QK_K / IQ2_SUB)
#define IQ2_NGROUP (DS4_QK_K / IQ2_GROUP)

/* ======================================================================== */
/* Dequantize and dot (the format).                                          */

void ds4_dequantize_iq2_xxs_ref(const void *src, float *dst, int64_t n) {
    const ds4_block_iq2_xxs *b = src;
    for (int64_t ib = 0; ib < n / DS4_QK_K; ib++) {
        const float d = ds4_fp16_to_fp32(b[ib].d);
        for (int sb = 0; sb < IQ2_NSUB; sb++) {
            uint32_t aux[2];
            memcpy(aux, b[ib].qs + 4 * sb, sizeof aux);
            const float db = d * (0.5f + (float)(aux[1] >> 28)) * 0.25f;
            for (int l = 0; l < 4; l++) {
                const uint64_t g = ds4_iq2xxs_grid[(aux[0] >> (8 * l)) & 0xFF];
                const uint8_t signs = ds4_iq2xxs_ksigns[(aux[1] >> (7 * l)) & 127];
                for (int i = 0; i < 8; i++) {
                    const float mag = (float)((g >> (8 * i)) & 0xFF);
                    *dst++ = db * mag * ((signs >> i) & 1 ? -1.0f : 1.0f);
                }
            }
        }
    }
}

/* Per block: (d_w * d_x) * Σ_sub (2s+1) * Σ grid*sign*q8, times 1/8 at the end
 * (the 0.25 * (0.5 + s) of the dequantizer is (2s+1)/8). */
float ds4_vec_dot_iq2_xxs_q8_k_ref(int64_t n, const void *w_row, const void *x_row) {
    const ds4_block_iq2_xxs *w = w_row;
    const ds4_block_q8_k *x = x_row;
    float sum = 0.0f;
    for (int64_t ib = 0; ib < n / DS4_QK_K; ib++) {
        const int8_t *a = x[ib].qs;
        int bsum = 0;
        for (int sb = 0; sb < IQ2_NSUB; sb++) {
            uint32_t aux[2];
            memcpy(aux, w[ib].qs + 4 * sb, sizeof aux);
            int sumi = 0;
            for (int l = 0; l < 4; l++) {
                const uint64_t g = ds4_iq2xxs_grid[(aux[0] >> (8 * l)) & 0xFF];
                const uint8_t signs = ds4_iq2xxs_ksigns[(aux[1] >> (7 * l)) & 127];
                for (int i = 0; i < 8; i++) {
                    const int mag = (int)((g >> (8 * i)) & 0xFF);
                    sumi += (signs >> i) & 1 ? -mag * a[i] : mag * a[i];
                }
                a += 8;
            }
            bsum += (int)(2 * (aux[1] >> 28) + 1) * sumi;
        }
        const float d = ds4_fp16_to_fp32(w[ib].d) * x[ib].d;
        sum += d * (float)bsum;
    }
    return 0.125f * sum;
}

/* ======================================================================== */
/* Search tables.                                                            */

/* Magnitudes of the three levels in units of the sub-block scale S. */
static const float iq2_mag[3] = {1.0f, 3.125f, 5.375f};

static struct {
    uint8_t half_lo[IQ2_GRID]; /* base-3 code of levels of elements 0..3 (0..80) */
    uint8_t half_hi[IQ2_GRID]; /* same for elements 4..7 */
} iq2_tab;

static pthread_once_t iq2_tab_once = PTHREAD_ONCE_INIT;

static void iq2_build_tables(void) {
    for (int p = 0; p < IQ2_GRID; p++) {
        int lo = 0, hi = 0;
        for (int i = 3; i >= 0; i--) {
            const int byte_lo = (int)((ds4_iq2xxs_grid[p] >> (8 * i)) & 0xFF);
            const int byte_hi = (int)((ds4_iq2xxs_grid[p] >> (8 * (i + 4))) & 0xFF);
            lo = 3 * lo + (byte_lo == 0x08 ? 0 : byte_lo == 0x19 ? 1 : 2);
            hi = 3 * hi + (byte_hi == 0x08 ? 0 : byte_hi == 0x19 ? 1 : 2);
        }
        iq2_tab.half_lo[p] = (uint8_t)lo;
        iq2_tab.half_hi[p] = (uint8_t)hi;
    }
}

/* ======================================================================== */
/* The quantizer.                                                            */

/* Per group: A2[p] = 2 Σ w t g_p, B[p] = Σ w g_p² for the 256 grid points. */
typedef struct {
    float A2[IQ2_GRID];
    float B[IQ2_GRID];
} iq2_group_scores;

/* Sums over 4 elements for all 81 level combinations; c = l0 + 3l1 + 9l2 + 27l3. */
static void iq2_half_table(const float *t, const float *w, float *a2, float *b) {
    float ea[4][3], eb[4][3];
    for (int i = 0; i < 4; i++)
        for (int l = 0; l < 3; l++) {
            ea[i][l] = 2.0f * w[i] * t[i] * iq2_mag[l];
            eb[i][l] = w[i] * iq2_mag[l] * iq2_mag[l];
        }
    for (int l3 = 0, c = 0; l3 < 3; l3++)
        for (int l2 = 0; l2 < 3; l2++)
            for (int l1 = 0; l1 < 3; l1++) {
                const float a_hi = ea[3][l3] + ea[2][l2] + ea[1][l1];
                const float b_hi = eb[3][l3] + eb[2][l2] + eb[1][l1];
                for (int l0 = 0; l0 < 3; l0++, c++) {
                    a2[c] = a_hi + ea[0][l0];
                    b[c] = b_hi + eb[0][l0];
                }
            }
}

static void iq2_group_scores_compute(const float *t, const float *w, iq2_group_scores *gs) {
    float a2_lo[81], b_lo[81], a2_hi[81], b_hi[81];
    iq2_half_table(t, w, a2_lo, b_lo);
    iq2_half_table(t + 4, w + 4, a2_hi, b_hi);
    for (int p = 0; p < IQ2_GRID; p++) {
        gs->A2[p] = a2_lo[iq2_tab.half_lo[p]] + a2_hi[iq2_tab.half_hi[p]];
        gs->B[p] = b_lo[iq2_tab.half_lo[p]] + b_hi[iq2_tab.half_hi[p]];
    }
}

/* Best grid point of a group at scale S > 0; returns its error term
 * S²B - 2S·A (the group's weighted error minus Σ w t²). Ties go to the lowest
 * index.
 *
 * This loop is most of the quantizer's time, so it is written with GCC/Clang
 * generic vectors (4 floats; SSE2 on x86-64, NEON on arm64, plain scalar code
 * elsewhere): two sets of 4 running minima with their indices, merged at the
 * end. Each candidate value is S*B - A2 with one rounding per operation, the
 * same as a scalar loop would compute, so the choice does not depend on the
 * vector width. */
typedef float iq2_v4f __attribute__((vector_size(16)));
typedef int32_t iq2_v4i __attribute__((vector_size(16)));

static inline iq2_v4f iq2_load4(const float *p) {
    iq2_v4f v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void iq2_min_step(iq2_v4f v, iq2_v4i idx, iq2_v4f *m, iq2_v4i *mi) {
    const iq2_v4i lt = v < *m; /* all-ones lanes where v is smaller */
    *m = (iq2_v4f)(((iq2_v4i)v & lt) | ((iq2_v4i)*m & ~lt));
    *mi = (idx & lt) | (*mi & ~lt);
}

static float iq2_group_best(const iq2_group_scores *gs, float S, int *best_p) {
    const iq2_v4f s4 = {S, S, S, S};
    iq2_v4f ma = {FLT_MAX, FLT_MAX, FLT_MAX, FLT_MAX}, mb = ma;
    iq2_v4i ia = {0, 1, 2, 3}, ib = {4, 5, 6, 7};
    iq2_v4i pa = ia, pb = ib;
    const iq2_v4i step = {8, 8, 8, 8};
    for (int p = 0; p < IQ2_GRID; p += 8) {
        const iq2_v4f va = s4 * iq2_load4(gs->B + p) - iq2_load4(gs->A2 + p);
        const iq2_v4f vb = s4 * iq2_load4(gs->B + p + 4) - iq2_load4(gs->A2 + p + 4);
        iq2_min_step(va, pa, &ma, &ia);
        iq2_min_step(vb, pb, &mb, &ib);
        pa += step;
        pb += step;
    }
    float best = FLT_MAX;
    int bp = IQ2_GRID;
    for (int k = 0; k < 4; k++) {
        if (ma[k] < best || (ma[k] == best && ia[k] < bp)) { best = ma[k]; bp = ia[k]; }
        if (mb[k] < best || (mb[k] == best && ib[k] < bp)) { best = mb[k]; bp = ib[k]; }
    }
    *best_p = bp < IQ2_GRID ? bp : 0;
    return S * best;
}

/* Error term of a whole sub-block (4 groups) at scale S; writes the points. */
static float iq2_sub_error(const iq2_group_scores *gs, float S, int *points) {
    float err = 0.0f;
    for (int g = 0; g < 4; g++) err += iq2_group_best(&gs[g], S, &points[g]);
    return err;
}

/* Continuous best scale for one sub-block (0 if nothing to fit). */
static float iq2_fit_sub_scale(const iq2_group_scores *gs, float tmax) {
    if (!(tmax > 0.0f)) return 0.0f;
    int pts[4], best_pts[4] = {0, 0, 0, 0};
    float best_S = 0.0f, best_err = 0.0f; /* error term of S = 0 is 0 */
    /* Sweep: the largest target lands near level 5.375 (ratio 1) or 3.125
     * (ratio 1.72); 8 geometric steps of 16% cover [0.7, 2.0]. Two more
     * candidates cover sub-blocks of near-equal magnitudes, best served by
     * the lowest level (ratio 5.375). The refits below do the fine tuning: a
     * 64-step sweep over [0.5, 2.5] lowers the error on gaussian data by only
     * ~0.1% of itself, at 4x the time. */
    const float S0 = tmax / iq2_mag[2];
    static const float ratios[10] = {0.7f, 0.813f, 0.945f, 1.098f, 1.275f, 1.482f, 1.721f, 2.0f, 5.0f, 5.6f};
    for (int k = 0; k < 10; k++) {
        const float S = S0 * ratios[k];
        const float err = iq2_sub_error(gs, S, pts);
        if (err < best_err) {
            best_err = err;
            best_S = S;
            memcpy(best_pts, pts, sizeof pts);
        }
    }
    /* Refit S by least squares for the chosen points, re-choose, repeat. */
    for (int iter = 0; iter < 4 && best_S > 0.0f; iter++) {
        float sa2 = 0.0f, sb = 0.0f;
        for (int g = 0; g < 4; g++) {
            sa2 += gs[g].A2[best_pts[g]];
            sb += gs[g].B[best_pts[g]];
        }
        if (!(sb > 0.0f) || !(sa2 > 0.0f)) break;
        const float S = 0.5f * sa2 / sb;
        const float err = iq2_sub_error(gs, S, pts);
        if (!(err < best_err)) break;
        best_err = err;
        best_S = S;
        memcpy(best_pts, pts, sizeof pts);
    }
    return best_S;
}

/* Importance weights for one super-block, see the top of the file. */
static void iq2_weights(const float *x, const float *qw, float *w) {
    float sumx2 = 0.0f;
    for (int i = 0; i < DS4_QK_K; i++) sumx2 += x[i] * x[i];
    const float sigma2 = sumx2 / DS4_QK_K;

    float qsum = 0.0f;
    if (qw)
        for (int i = 0; i < DS4_QK_K; i++) qsum += qw[i] > 0.0f ? qw[i] : 0.0f;
    const bool use_qw = qw && qsum > 0.0f && isfinite(qsum);
    const float floor_w = use_qw ? 1e-3f * qsum / DS4_QK_K : 0.0f;
    for (int i = 0; i < DS4_QK_K; i++) {
        const float q = use_qw ? (qw[i] > 0.0f ? qw[i] : 0.0f) + floor_w : sigma2 + x[i] * x[i];
        w[i] = q * sqrtf(sigma2 + x[i] * x[i]);
    }
}

/* Scratch for one super-block: 32 groups of scores (64 KiB). */
typedef struct {
    iq2_group_scores gs[IQ2_NGROUP];
} iq2_scratch;

static void iq2_quantize_superblock(const float *x, const float *qw, ds4_block_iq2_xxs *out, iq2_scratch *sc) {
    float w[DS4_QK_K], t[DS4_QK_K], S[IQ2_NSUB];
    uint8_t sign7[IQ2_NGROUP];
    iq2_weights(x, qw, w);

    /* Signs and sign-corrected targets, per group of 8. */
    for (int g = 0; g < IQ2_NGROUP; g++) {
        const float *xg = x + IQ2_GROUP * g, *wg = w + IQ2_GROUP * g;
        float *tg = t + IQ2_GROUP * g;
        unsigned bits = 0;
        for (int i = 0; i < IQ2_GROUP; i++) {
            tg[i] = fabsf(xg[i]);
            if (xg[i] < 0.0f) bits |= 1u << i;
        }
        if (__builtin_popcount(bits) & 1) { /* odd: one element takes the wrong sign */
            int imin = 0;
            float vmin = wg[0] * xg[0] * xg[0];
            for (int i = 1; i < IQ2_GROUP; i++) {
                const float v = wg[i] * xg[i] * xg[i];
                if (v < vmin) {
                    vmin = v;
                    imin = i;
                }
            }
            bits ^= 1u << imin;
            tg[imin] = -tg[imin];
        }
        sign7[g] = (uint8_t)(bits & 127); /* bit 7 is implied by even parity */
        iq2_group_scores_compute(tg, wg, &sc->gs[g]);
    }

    /* Continuous scale per sub-block. */
    float max_S = 0.0f;
    for (int sb = 0; sb < IQ2_NSUB; sb++) {
        float tmax = 0.0f;
        for (int i = 0; i < IQ2_SUB; i++) tmax = fmaxf(tmax, t[IQ2_SUB * sb + i]);
        S[sb] = iq2_fit_sub_scale(&sc->gs[4 * sb], tmax);
        max_S = fmaxf(max_S, S[sb]);
    }

    memset(out, 0, sizeof *out);
    if (!(max_S > 0.0f)) return; /* nothing to represent: d = 0, all values 0 */

    /* Super-scale: try d = max_S/31, /30, /29 as stored (/29 and /31 let a
     * dequantized row map back to its own d); per sub-block the
     * better of the two nearest odd multiples; grid points re-chosen exactly
     * for the stored scale. */
    float best_total = FLT_MAX;
    uint16_t best_d16 = 0;
    int best_l[IQ2_NSUB] = {0}, best_pts[IQ2_NGROUP] = {0};
    static const float divisors[3] = {31.0f, 30.0f, 29.0f};
    for (int k = 0; k < 3; k++) {
        const uint16_t d16 = ds4_fp32_to_fp16(fminf(max_S / divisors[k], 65504.0f));
        const float d = ds4_fp16_to_fp32(d16);
        if (!(d > 0.0f)) continue;
        int ls[IQ2_NSUB], pts[IQ2_NGROUP];
        float total = 0.0f;
        for (int sb = 0; sb < IQ2_NSUB; sb++) {
            const float u = 0.5f * (S[sb] / d - 1.0f); /* continuous l */
            const int l0 = u <= 0.0f ? 0 : u >= 15.0f ? 15 : (int)floorf(u);
            const int l1 = l0 < 15 ? l0 + 1 : 15;
            float best = FLT_MAX;
            for (int l = l0; l <= l1; l++) {
                int p4[4];
                const float err = iq2_sub_error(&sc->gs[4 * sb], d * (float)(2 * l + 1), p4);
                if (err < best) {
                    best = err;
                    ls[sb] = l;
                    memcpy(pts + 4 * sb, p4, sizeof p4);
                }
            }
            total += best;
        }
        if (total < best_total) {
            best_total = total;
            best_d16 = d16;
            memcpy(best_l, ls, sizeof ls);
            memcpy(best_pts, pts, sizeof pts);
        }
    }

    out->d = best_d16;
    for (int sb = 0; sb < IQ2_NSUB; sb++) {
        uint32_t aux[2] = {0, (uint32_t)best_l[sb] << 28};
        for (int l = 0; l < 4; l++) {
            aux[0] |= (uint32_t)best_pts[4 * sb + l] << (8 * l);
            aux[1] |= (uint32_t)sign7[4 * sb + l] << (7 * l);
        }
        memcpy(out->qs + 4 * sb, aux, sizeof aux);
    }
}

void ds4_quantize_iq2_xxs_ref(const float *src, void *dst, int64_t n, const float *imatrix) {
    pthread_once(&iq2_tab_once, iq2_build_tables);
    ds4_block_iq2_xxs *b = dst;
    iq2_scratch *sc = malloc(sizeof *sc);
    if (!sc) { /* out of memory: leave a well-formed all-zero row */
        memset(dst, 0, (size_t)(n / DS4_QK_K) * sizeof *b);
        return;
    }
    for (int64_t ib = 0; ib < n / DS4_QK_K; ib++)
        iq2_quantize_superblock(src + DS4_QK_K * ib, imatrix ? imatrix + DS4_QK_K * ib : NULL, &b[ib], sc);
    free(sc);
}

/* ops.c - CPU primitives of the forward pass (see ops.h). */
#include "ops.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fp16.h"
#include "quant.h"

/* ------------------------------------------------------------------------ */
/* matrix products */

typedef struct {
    const ds4_weight *w;
    uint64_t mat, row0, n_rows;
    const uint8_t *xq;   /* T activation rows in the weight's dot format */
    size_t xq_stride;    /* bytes between activation rows */
    int T;
    float *y;            /* [T][n_rows] */
} matmul_ctx;

#define MATMUL_ROW_BLOCK 16

static void matmul_worker(void *vctx, int64_t begin, int64_t end, int worker) {
    (void)worker;
    const matmul_ctx *c = vctx;
    const ds4_weight *w = c->w;
    for (int64_t ob = begin; ob < end; ob += MATMUL_ROW_BLOCK) {
        int64_t oe = ob + MATMUL_ROW_BLOCK < end ? ob + MATMUL_ROW_BLOCK : end;
        for (int t = 0; t < c->T; t++) {
            const uint8_t *x = c->xq + (size_t)t * c->xq_stride;
            float *yt = c->y + (size_t)t * c->n_rows;
            for (int64_t o = ob; o < oe; o++)
                yt[o] = ds4_vec_dot(w->type, (int64_t)w->n_in, ds4_weight_row(w, c->mat, c->row0 + (uint64_t)o), x);
        }
    }
}

void ds4_matmul_rows(ds4_pool *pool, const ds4_weight *w, uint64_t mat, uint64_t row0, uint64_t n_rows,
                     const float *x, int T, float *y) {
    if (T <= 0 || n_rows == 0) return;
    ds4_dtype vt = ds4_quant_vec_dot_type(w->type);
    const uint8_t *xq = (const uint8_t *)x;
    size_t stride = (size_t)w->n_in * sizeof(float);
    uint8_t *buf = NULL;
    if (vt != DS4_TYPE_F32) {
        uint64_t rb = 0;
        ds4_dtype_nbytes(vt, w->n_in, &rb);
        stride = (size_t)rb;
        buf = malloc(stride * (size_t)T);
        for (int t = 0; t < T; t++) ds4_quantize_row(vt, x + (size_t)t * w->n_in, buf + (size_t)t * stride, (int64_t)w->n_in, NULL);
        xq = buf;
    }
    matmul_ctx c = {.w = w, .mat = mat, .row0 = row0, .n_rows = n_rows, .xq = xq, .xq_stride = stride, .T = T, .y = y};
    /* enough rows per range that each range amortises its activation reads */
    int64_t grain = T > 1 ? MATMUL_ROW_BLOCK : 64;
    ds4_pool_run(pool, (int64_t)n_rows, grain, matmul_worker, &c);
    free(buf);
}

void ds4_matmul(ds4_pool *pool, const ds4_weight *w, uint64_t mat, const float *x, int T, float *y) {
    ds4_matmul_rows(pool, w, mat, 0, w->n_out, x, T, y);
}

void ds4_weight_dequant_row(const ds4_weight *w, uint64_t mat, uint64_t row, float *out) {
    ds4_dequantize_row(w->type, ds4_weight_row(w, mat, row), out, (int64_t)w->n_in);
}

/* ------------------------------------------------------------------------ */
/* norms */

void ds4_rmsnorm(float *out, const float *x, const float *w, int n, float eps) {
    double ss = 0;
    for (int i = 0; i < n; i++) ss += (double)x[i] * x[i];
    float scale = (float)(1.0 / sqrt(ss / n + eps));
    if (w)
        for (int i = 0; i < n; i++) out[i] = x[i] * scale * w[i];
    else
        for (int i = 0; i < n; i++) out[i] = x[i] * scale;
}

/* ------------------------------------------------------------------------ */
/* rotary embedding */

void ds4_rope_inv_freq(float *inv_freq, int n_rot, double base, double factor, double orig_ctx, double beta_fast,
                       double beta_slow) {
    const int half = n_rot / 2;
    double lo = 0, hi = 0;
    if (factor > 1) {
        /* YaRN correction range over the pair index k (k < n_rot/2) */
        double corr_fast = n_rot * log(orig_ctx / (beta_fast * 2 * M_PI)) / (2 * log(base));
        double corr_slow = n_rot * log(orig_ctx / (beta_slow * 2 * M_PI)) / (2 * log(base));
        lo = floor(corr_fast);
        hi = ceil(corr_slow);
        if (lo < 0) lo = 0;
        if (hi > n_rot - 1) hi = n_rot - 1;
    }
    for (int k = 0; k < half; k++) {
        double f = 1.0 / pow(base, (2.0 * k) / n_rot);
        if (factor > 1) {
            double span = hi - lo > 0.001 ? hi - lo : 0.001;
            double ramp = (k - lo) / span;
            ramp = ramp < 0 ? 0 : (ramp > 1 ? 1 : ramp);
            /* ramp = 0: keep the frequency (extrapolate); 1: divide by factor */
            f = f / factor * ramp + f * (1 - ramp);
        }
        inv_freq[k] = (float)f;
    }
}

void ds4_rope_tail(float *x, int dim, int n_rot, const float *inv_freq, int64_t pos, bool inverse) {
    float *r = x + dim - n_rot;
    for (int k = 0; k < n_rot / 2; k++) {
        float theta = (float)pos * inv_freq[k];
        float c = cosf(theta), s = sinf(theta);
        if (inverse) s = -s;
        float a = r[2 * k], b = r[2 * k + 1];
        r[2 * k] = a * c - b * s;
        r[2 * k + 1] = a * s + b * c;
    }
}

/* ------------------------------------------------------------------------ */
/* low-precision simulations */

/* 2^ceil(log2(y)) for y > 0, exactly. */
static float pow2_ceil(float y) {
    int e;
    float m = frexpf(y, &e); /* y = m * 2^e, m in [0.5, 1) */
    return ldexpf(1.0f, m == 0.5f ? e - 1 : e);
}

static float round_e4m3(float v) { /* v >= 0, <= 448: nearest E4M3 value, ties to even */
    if (v < 0.015625f) return rintf(v * 512.0f) / 512.0f; /* subnormals: step 2^-9 */
    int e;
    frexpf(v, &e); /* v in [2^(e-1), 2^e) */
    float step = ldexpf(1.0f, e - 1 - 3);
    return rintf(v / step) * step;
}

void ds4_sim_fp8_e4m3(float *x, int n) {
    for (int b = 0; b < n; b += 64) {
        int m = n - b < 64 ? n - b : 64;
        float amax = 0;
        for (int i = 0; i < m; i++) amax = fmaxf(amax, fabsf(x[b + i]));
        float scale = pow2_ceil(fmaxf(amax, 1e-4f) / 448.0f);
        for (int i = 0; i < m; i++) {
            float v = x[b + i] / scale;
            v = fminf(fmaxf(v, -448.0f), 448.0f);
            float q = round_e4m3(fabsf(v));
            x[b + i] = copysignf(q, v) * scale;
        }
    }
}

static float round_e2m1(float v) { /* v >= 0, <= 6: nearest of {0,.5,1,1.5,2,3,4,6}, ties to even index */
    if (v <= 0.25f) return 0.0f;
    if (v < 0.75f) return 0.5f;
    if (v <= 1.25f) return 1.0f;
    if (v < 1.75f) return 1.5f;
    if (v <= 2.5f) return 2.0f;
    if (v < 3.5f) return 3.0f;
    if (v <= 5.0f) return 4.0f;
    return 6.0f;
}

void ds4_sim_fp4_e2m1(float *x, int n) {
    for (int b = 0; b < n; b += 32) {
        int m = n - b < 32 ? n - b : 32;
        float amax = 0;
        for (int i = 0; i < m; i++) amax = fmaxf(amax, fabsf(x[b + i]));
        float scale = pow2_ceil(fmaxf(amax, 7.052966104933725e-38f) / 6.0f);
        for (int i = 0; i < m; i++) {
            float v = x[b + i] / scale;
            v = fminf(fmaxf(v, -6.0f), 6.0f);
            x[b + i] = copysignf(round_e2m1(fabsf(v)), v) * scale;
        }
    }
}

void ds4_hadamard(float *x, int n) {
    for (int h = 1; h < n; h *= 2)
        for (int i = 0; i < n; i += 2 * h)
            for (int j = i; j < i + h; j++) {
                float a = x[j], b = x[j + h];
                x[j] = a + b;
                x[j + h] = a - b;
            }
    float s = (float)(1.0 / sqrt((double)n));
    for (int i = 0; i < n; i++) x[i] *= s;
}

void ds4_round_f16(float *x, int n) {
    for (int i = 0; i < n; i++) x[i] = ds4_fp16_to_fp32(ds4_fp32_to_fp16(x[i]));
}

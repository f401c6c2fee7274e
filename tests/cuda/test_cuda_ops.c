/* test_cuda_ops.c - every CUDA kernel family against the CPU function it
 * replaces, on random inputs of awkward sizes (the ggml test-backend-ops
 * habit). One line per case: the normalised max error (max |gpu - cpu| /
 * max |cpu|) against the op's tolerance, and for the discontinuous
 * low-precision simulations (FP8/FP4 rounding, where a last-bit difference
 * upstream may move a value to the next code) the share of elements that
 * differ. Exits 1 if any case fails. Needs a CUDA device; built by
 * `make cuda`, run by tests/cuda/run_cuda.sh.
 *
 * Tolerances: integer dot products are the CPU's exactly, so matrix products
 * differ only by float summation order (~1e-6 of the row's scale); element
 * and row ops by libm vs CUDA math (~1 ulp); indexer selections and routing
 * must be identical.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compressor.h"
#include "cuda/ds4_cuda.h"
#include "engine.h"
#include "moe.h"
#include "ops.h"
#include "quant.h"
#include "threadpool.h"

static int n_fail = 0, n_pass = 0;
static ds4_pool *pool;
static uint64_t rng = 0x9E3779B97F4A7C15ull;

static float frand(void) { /* uniform [-1, 1) */
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return (float)((rng * 0x2545F4914F6CDD1Dull) >> 40) / 8388608.0f - 1.0f;
}
static void fill(float *x, size_t n, float amp) {
    for (size_t i = 0; i < n; i++) x[i] = frand() * amp;
}
static float *falloc(size_t n) { return calloc(n ? n : 1, sizeof(float)); }

static void report(const char *name, double err, double tol, double frac, double frac_tol, const char *why) {
    const bool ok = !why && err <= tol && frac <= frac_tol && err == err;
    printf("  %-4s %-46s max err %-9.3g (tol %.0e)", ok ? "ok" : "FAIL", name, err, tol);
    if (frac_tol > 0) printf("  differing %.4f (tol %.3f)", frac, frac_tol);
    if (why) printf("  [%s]", why);
    printf("\n");
    ok ? n_pass++ : n_fail++;
}

/* normalised max error, share of elements off by more than `elt` of scale */
static void compare(const char *name, const float *got, const float *ref, size_t n, double tol, double elt,
                    double frac_tol) {
    double mx = 0, md = 0;
    size_t bad = 0, nan = 0;
    for (size_t i = 0; i < n; i++) mx = fmax(mx, fabs(ref[i]));
    if (mx == 0) mx = 1;
    for (size_t i = 0; i < n; i++) {
        if (got[i] != got[i] && ref[i] == ref[i]) nan++;
        const double d = fabs((double)got[i] - ref[i]);
        if (d > elt * mx) bad++;
        md = fmax(md, d);
    }
    double err = md / mx, frac = (double)bad / (n ? n : 1);
    if (frac_tol > 0) err = 0; /* discontinuous op: judged by the share of differing elements */
    else frac = 0;
    report(name, nan ? INFINITY : err, tol, frac, frac_tol, nan ? "unwritten/NaN" : NULL);
}

static ds4_weight make_weight(ds4_dtype type, uint64_t n_in, uint64_t n_out, uint64_t n_mat, float amp, void **mem) {
    const size_t rb = ds4_quant_row_size(type, (int64_t)n_in);
    float *src = falloc(n_in * n_out * n_mat);
    fill(src, n_in * n_out * n_mat, amp);
    uint8_t *data = malloc(rb * n_out * n_mat);
    ds4_quantize_rows(type, src, data, (int64_t)(n_out * n_mat), (int64_t)n_in, NULL);
    free(src);
    *mem = data;
    ds4_weight w = {data, type, n_in, n_out, n_mat, rb};
    return w;
}

/* ------------------------------------------------------------------------ */

static void test_quantize(void) {
    char err[256], name[96];
    const int rows = 3, n = 512;
    float *x = falloc(rows * n);
    fill(x, rows * n, 3.0f);
    for (int i = 0; i < 256; i++) x[256 + i] = 0; /* an all-zero super-block */
    x[2 * n + 7] = 2.5f;                          /* magnitude tie, first one wins */
    x[2 * n + 9] = -2.5f;
    for (int ti = 0; ti < 2; ti++) {
        const ds4_dtype t = ti ? DS4_TYPE_Q8_K : DS4_TYPE_Q8_0;
        const size_t rb = ds4_quant_row_size(t, n);
        uint8_t *ref = calloc(rows, rb), *got = calloc(rows, rb);
        for (int r = 0; r < rows; r++) ds4_quantize_row(t, x + r * n, ref + r * rb, n, NULL);
        bool ok = ds4_cuda_test_quantize(t, x, rows, n, got, err, sizeof err);
        size_t diff = 0;
        for (size_t i = 0; i < rows * rb; i++) diff += ref[i] != got[i];
        snprintf(name, sizeof name, "quantize %s (%d x %d) bytes", ti ? "Q8_K" : "Q8_0", rows, n);
        report(name, (double)diff, 0, 0, 0, ok ? NULL : err);
        free(ref);
        free(got);
    }
    free(x);
}

static void test_matmul(void) {
    static const struct {
        ds4_dtype t;
        uint32_t n_in;
    } cases[] = {{DS4_TYPE_F32, 96},   {DS4_TYPE_F16, 104},    {DS4_TYPE_BF16, 72},     {DS4_TYPE_Q8_0, 96},
                 {DS4_TYPE_Q8_0, 4096}, {DS4_TYPE_Q2_K, 512},  {DS4_TYPE_Q4_K, 768},    {DS4_TYPE_IQ2_XXS, 512},
                 {DS4_TYPE_IQ2_XXS, 2048}, {DS4_TYPE_F16, 4096}, {DS4_TYPE_Q8_0, 2048},
                 /* decode: rows in 2, 4 and 8 segments of 2048 (q8_rows_seg) */
                 {DS4_TYPE_Q8_0, 8192}, {DS4_TYPE_Q8_0, 16384}};
    /* 70 (an exact job, as the router): the tiled f32 kernel for float weights with k % 32 == 0 */
    static const int Ts[] = {1, 3, 8, 13, 70};
    char err[256], name[96];
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        void *mem;
        const uint32_t n_out = 37, n_mat = 3;
        ds4_weight w = make_weight(cases[c].t, cases[c].n_in, n_out, n_mat, 1.0f, &mem);
        for (size_t ti = 0; ti < sizeof Ts / sizeof Ts[0]; ti++) {
            const int T = Ts[ti];
            const uint64_t mat = ti % n_mat, row0 = ti == 2 ? 5 : 0, nr = ti == 2 ? 29 : n_out;
            float *x = falloc((size_t)T * w.n_in), *ref = falloc((size_t)T * nr), *got = falloc((size_t)T * nr);
            fill(x, (size_t)T * w.n_in, 2.0f);
            ds4_matmul_rows(pool, &w, mat, row0, nr, x, T, ref);
            ds4_cuda_test_set_exact_jobs(T == 70);
            bool ok = ds4_cuda_test_matmul(&w, mat, row0, nr, x, T, got, err, sizeof err);
            ds4_cuda_test_set_exact_jobs(false);
            snprintf(name, sizeof name, "matmul %s [%u x %u] mat %u T=%d", ds4_dtype_name(w.type), cases[c].n_in,
                     (unsigned)nr, (unsigned)mat, T);
            if (ok) compare(name, got, ref, (size_t)T * nr, 2e-5, 0, 0);
            else report(name, INFINITY, 0, 0, 0, err);
            free(x);
            free(ref);
            free(got);
        }
        free(mem);
    }
}

/* the decode router kernel (a block a row, the row split over 256
 * threads): F16 and BF16 rows of 2048 / 4096 / 8192 values, 37 or 256 rows */
static void test_router(void) {
    static const struct {
        ds4_dtype t;
        uint32_t n_in, n_out;
    } cases[] = {{DS4_TYPE_F16, 4096, 256}, {DS4_TYPE_BF16, 4096, 37}, {DS4_TYPE_F16, 2048, 37}, {DS4_TYPE_BF16, 8192, 256}};
    char err[256], name[96];
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        void *mem;
        ds4_weight w = make_weight(cases[c].t, cases[c].n_in, cases[c].n_out, 1, 1.0f, &mem);
        float *x = falloc(w.n_in), *ref = falloc(w.n_out), *got = falloc(w.n_out);
        fill(x, w.n_in, 2.0f);
        ds4_matmul_rows(pool, &w, 0, 0, w.n_out, x, 1, ref);
        const bool ok = ds4_cuda_test_router(&w, x, got, err, sizeof err);
        snprintf(name, sizeof name, "router %s [%u x %u]", ds4_dtype_name(w.type), cases[c].n_in, cases[c].n_out);
        if (ok) compare(name, got, ref, w.n_out, 2e-5, 0, 0);
        else report(name, INFINITY, 0, 0, 0, err);
        /* the routing by the router's last block (top-6 with bias, or by
         * the hash table), twice, = route_kernel on the same logits */
        if (cases[c].n_out == 256) {
            const uint32_t K = 6, n_tok = 50;
            float *bias = falloc(256), wts_in[12], wts_sep[6];
            int32_t *tid2eid = malloc(n_tok * K * sizeof(int32_t)), ids_in[12], ids_sep[6];
            fill(bias, 256, 0.5f);
            for (uint32_t i = 0; i < n_tok * K; i++) tid2eid[i] = (int32_t)((i * 37 + 11) % 256);
            const bool hash = c == 3;
            const bool rok = ds4_cuda_test_router_route(&w, x, K, hash ? NULL : bias, hash ? tid2eid : NULL, n_tok, 17,
                                                        true, 2.5f, ids_in, wts_in, ids_sep, wts_sep, err, sizeof err);
            int diff = 0;
            for (uint32_t i = 0; rok && i < 2 * K; i++)
                diff += ids_in[i] != ids_sep[i % K] || wts_in[i] != wts_sep[i % K];
            snprintf(name, sizeof name, "router + routing in its last block (%s), twice = route kernel: differing",
                     hash ? "hash" : "top-6 + bias");
            report(name, rok ? (double)diff : INFINITY, 0, 0, 0, rok ? NULL : err);
            free(bias);
            free(tid2eid);
        }
        free(x);
        free(ref);
        free(got);
        free(mem);
    }
}

/* decode launches: routed-expert pairs and a dense job in one launch (the
 * pipelined T = 1 kernel walks both), rows of 1 to 8 passes */
static void test_matvec_pairs(void) {
    static const struct {
        ds4_dtype t;
        uint32_t n_in;
    } cases[] = {{DS4_TYPE_IQ2_XXS, 4096}, {DS4_TYPE_IQ2_XXS, 8192}, {DS4_TYPE_Q2_K, 2048}, {DS4_TYPE_Q2_K, 4096},
                 {DS4_TYPE_Q8_0, 1024},    {DS4_TYPE_Q8_0, 8192},    {DS4_TYPE_F16, 4096},  {DS4_TYPE_Q4_K, 2048}};
    char err[256], name[96];
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        void *mem;
        const uint32_t n_out = 45, X = 9, P = 6, n_in = cases[c].n_in;
        ds4_weight w = make_weight(cases[c].t, n_in, n_out, X, 1.0f, &mem);
        const int32_t ids[6] = {4, 0, 8, 3, 7, 1};
        for (int shared = 0; shared < 2; shared++) {
            const uint32_t nx = shared ? 1 : P;
            float *x = falloc((size_t)nx * n_in), *ref = falloc((size_t)P * n_out), *got = falloc((size_t)P * n_out);
            float *ref2 = falloc(n_out), *got2 = falloc(n_out);
            fill(x, (size_t)nx * n_in, 2.0f);
            for (uint32_t p = 0; p < P; p++)
                ds4_matmul(pool, &w, ids[p], x + (size_t)(shared ? 0 : p) * n_in, 1, ref + (size_t)p * n_out);
            ds4_matmul_rows(pool, &w, X - 1, 3, n_out - 3, x, 1, ref2);
            bool ok = ds4_cuda_test_matvec_pairs(&w, ids, P, x, shared, got, got2, err, sizeof err);
            snprintf(name, sizeof name, "decode pairs %s [%u] x %s: experts", ds4_dtype_name(w.type), n_in,
                     shared ? "shared" : "per pair");
            if (ok) compare(name, got, ref, (size_t)P * n_out, 2e-5, 0, 0);
            else report(name, INFINITY, 0, 0, 0, err);
            snprintf(name, sizeof name, "decode pairs %s [%u] x %s: dense job", ds4_dtype_name(w.type), n_in,
                     shared ? "shared" : "per pair");
            if (ok) compare(name, got2, ref2, n_out - 3, 2e-5, 0, 0);
            free(x);
            free(ref);
            free(got);
            free(ref2);
            free(got2);
        }
        free(mem);
    }
}

/* decode products whose last blocks form the next product's activation
 * (mv_job.fin: q_a's RMSNorm in the input projections, the experts' SwiGLU
 * in their gate/up, the quantization of out_a's output in out_a): the
 * product within the product tolerance of the CPU, the activation's forms
 * bit-identical to the separate launch they replace, launched twice (the
 * block counters reset themselves) */
static void test_matvec_fin(void) {
    static const struct {
        ds4_dtype t;
        uint32_t n_in, n_out, pairs, groups;
        int mode; /* 2 norm, 3 swiglu, 1 quantize */
    } cases[] = {{DS4_TYPE_Q8_0, 4096, 1024, 1, 1, 2},   {DS4_TYPE_Q8_0, 1024, 512, 1, 1, 2},
                 {DS4_TYPE_F16, 512, 256, 1, 1, 2},      {DS4_TYPE_IQ2_XXS, 1024, 512, 6, 1, 3},
                 {DS4_TYPE_Q8_0, 4096, 512, 1, 1, 3},    {DS4_TYPE_Q4_K, 768, 256, 6, 1, 3},
                 {DS4_TYPE_Q8_0, 1024, 768, 1, 3, 1},    {DS4_TYPE_Q8_0, 512, 2048, 1, 8, 1}};
    static const char *mode_name[] = {"", "quantize", "RMSNorm", "SwiGLU"};
    char err[256], name[112];
    const int32_t ids[6] = {4, 0, 6, 3, 5, 1};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const uint32_t n_in = cases[c].n_in, n = cases[c].n_out, P = cases[c].pairs;
        const int mode = cases[c].mode;
        const uint32_t X = P > 1 ? 7 : 1;
        void *mem, *mem2 = NULL;
        ds4_weight w = make_weight(cases[c].t, n_in, n, X, 1.0f, &mem), w2 = w;
        if (mode == 3) w2 = make_weight(cases[c].t, n_in, n, X, 1.0f, &mem2);
        float *x = falloc(n_in), *aux = falloc(mode == 3 ? P : n), *ref = falloc((size_t)P * n), *got = falloc((size_t)P * n);
        fill(x, n_in, 2.0f);
        const float eps = mode == 3 ? 10.0f : 1e-6f;
        if (mode == 3) for (uint32_t p = 0; p < P; p++) aux[p] = 0.5f + 0.5f * frand();
        else for (uint32_t i = 0; i < n; i++) aux[i] = 1 + 0.2f * frand();
        for (uint32_t p = 0; p < P; p++) ds4_matmul(pool, &w, P > 1 ? ids[p] : 0, x, 1, ref + (size_t)p * n);
        long diff = -1;
        const bool ok = ds4_cuda_test_matvec_fin(&w, &w2, mode, P > 1 ? ids : NULL, P, cases[c].groups, x,
                                                 mode == 1 ? NULL : aux, eps, got, &diff, err, sizeof err);
        snprintf(name, sizeof name, "decode %s [%u x %u]%s finishing with %s", ds4_dtype_name(w.type), n_in, n,
                 P > 1 ? " 6 pairs" : cases[c].groups > 1 ? " in groups" : "", mode_name[mode]);
        if (ok) compare(name, got, ref, (size_t)P * n, 2e-5, 0, 0);
        else report(name, INFINITY, 0, 0, 0, err);
        if (ok) {
            snprintf(name, sizeof name, "  = separate launches (%s %s): differing", mode_name[mode], ds4_dtype_name(w.type));
            report(name, (double)diff, 0, 0, 0, diff < 0 ? "not read back" : NULL);
        }
        free(x); free(aux); free(ref); free(got);
        free(mem);
        free(mem2);
    }
}

/* the out_a shape: row groups of one weight against column slices of the
 * attention output, one tensor-core launch (and the exact kernels below
 * the tensor-core threshold) */
static void test_matmul_groups(void) {
    char err[256], name[96];
    const uint32_t G = 3, R = 70, n = 512, n_mat = 2;
    static const int Ts[] = {5, 70};
    void *mem;
    ds4_weight w = make_weight(DS4_TYPE_Q8_0, n, G * R, n_mat, 1.0f, &mem);
    ds4_cuda_test_set_mma(16);
    for (size_t ti = 0; ti < 2; ti++) {
        const int T = Ts[ti];
        float *x = falloc((size_t)T * G * n), *xs = falloc((size_t)T * n), *ref = falloc((size_t)T * G * R);
        float *part = falloc((size_t)T * R), *got = falloc((size_t)T * G * R);
        fill(x, (size_t)T * G * n, 2.0f);
        for (uint32_t g = 0; g < G; g++) {
            for (int t = 0; t < T; t++) memcpy(xs + (size_t)t * n, x + ((size_t)t * G + g) * n, n * 4);
            ds4_matmul_rows(pool, &w, 1, g * R, R, xs, T, part);
            for (int t = 0; t < T; t++) memcpy(ref + ((size_t)t * G + g) * R, part + (size_t)t * R, R * 4);
        }
        const bool ok = ds4_cuda_test_matmul_groups(&w, 1, G, R, x, T, got, err, sizeof err);
        snprintf(name, sizeof name, "out_a-like groups Q8_0 [%u x %u] x %u, T=%d", n, R, G, T);
        if (ok) compare(name, got, ref, (size_t)T * G * R, T >= 16 ? 1e-2 : 2e-5, 0, 0);
        else report(name, INFINITY, 0, 0, 0, err);
        free(x); free(xs); free(ref); free(part); free(got);
    }
    ds4_cuda_test_set_mma(0);
    free(mem);
}

/* the prefill MoE's gate + up + SwiGLU in one tensor-core launch: 150
 * pairs over 8 experts (one with 70, one unused), 80 rows (a partial
 * 128-row block), both token tiles, against the CPU's products and SwiGLU */
static void test_moe_swiglu(void) {
    static const ds4_dtype types[] = {DS4_TYPE_IQ2_XXS, DS4_TYPE_Q2_K, DS4_TYPE_Q4_K, DS4_TYPE_Q8_0};
    char err[256], name[96];
    ds4_cuda_test_set_mma(16);
    for (size_t c = 0; c < 8; c++) {
        ds4_cuda_test_set_mma_moe_bn(c < 4 ? 64 : 32);
        void *mg, *mu;
        const uint32_t n_in = 512, F = 80, X = 8, P = 150, xdiv = 3;
        const float clampv = 10.0f;
        ds4_weight wg = make_weight(types[c % 4], n_in, F, X, 1.0f, &mg), wu = make_weight(types[c % 4], n_in, F, X, 1.0f, &mu);
        int32_t ids[150];
        for (uint32_t p = 0; p < P; p++) ids[p] = p < 70 ? 5 : (int32_t)((p * 5 + p / 7) % 7);
        const uint32_t nx = (P + xdiv - 1) / xdiv;
        float *x = falloc((size_t)nx * n_in), *wts = falloc(P), *gv = falloc(F), *uv = falloc(F);
        float *ref = falloc((size_t)P * F), *got = falloc((size_t)P * F), *sep = falloc((size_t)P * F);
        fill(x, (size_t)nx * n_in, 2.0f);
        for (uint32_t p = 0; p < P; p++) wts[p] = 0.2f + 0.1f * frand();
        for (uint32_t p = 0; p < P; p++) {
            ds4_matmul(pool, &wg, ids[p], x + (size_t)(p / xdiv) * n_in, 1, gv);
            ds4_matmul(pool, &wu, ids[p], x + (size_t)(p / xdiv) * n_in, 1, uv);
            for (uint32_t r = 0; r < F; r++) {
                const float g = fminf(gv[r], clampv), u = fminf(fmaxf(uv[r], -clampv), clampv);
                ref[(size_t)p * F + r] = ds4_silu(g) * u * wts[p];
            }
        }
        bool ok = ds4_cuda_test_moe_swiglu(&wg, &wu, ids, P, x, xdiv, wts, clampv, got, sep, err, sizeof err);
        snprintf(name, sizeof name, "mma moe gate+up+swiglu %s (%u pairs, tile %d)", ds4_dtype_name(wg.type), P,
                 c < 4 ? 64 : 32);
        /* vs the CPU: the BF16 noise of g (~4e-3 of max |g| ~ 60, i.e. ~0.25)
         * times u (up to the clamp) against max |h| ~ 30: measured 0.017 -
         * 0.026; an indexing error is O(1). Against the separate launches
         * (same BF16 operands, same k order): equal within float rounding. */
        if (ok) {
            compare(name, got, ref, (size_t)P * F, 5e-2, 0, 0);
            snprintf(name + strlen(name), sizeof name - strlen(name), " = separate");
            compare(name, got, sep, (size_t)P * F, 1e-6, 0, 0);
        } else report(name, INFINITY, 0, 0, 0, err);
        free(x); free(wts); free(gv); free(uv); free(ref); free(got); free(sep);
        free(mg);
        free(mu);
    }
    ds4_cuda_test_set_mma_moe_bn(0);
    ds4_cuda_test_set_mma(0);
}

static void test_moe_mm(void) {
    static const ds4_dtype types[] = {DS4_TYPE_IQ2_XXS, DS4_TYPE_Q2_K, DS4_TYPE_Q4_K, DS4_TYPE_Q8_0};
    char err[256], name[96];
    for (size_t c = 0; c < 4; c++) {
        void *mem;
        const uint32_t n_in = 512, n_out = 45, X = 8, P = 37, xdiv = 3;
        ds4_weight w = make_weight(types[c], n_in, n_out, X, 1.0f, &mem);
        int32_t ids[37];
        for (uint32_t p = 0; p < P; p++) ids[p] = (int32_t)((p * 5 + p / 7) % 7); /* expert 7 unused */
        const uint32_t nx = (P + xdiv - 1) / xdiv;
        float *x = falloc((size_t)nx * n_in), *ref = falloc((size_t)P * n_out), *got = falloc((size_t)P * n_out);
        fill(x, (size_t)nx * n_in, 2.0f);
        for (uint32_t p = 0; p < P; p++) ds4_matmul(pool, &w, ids[p], x + (size_t)(p / xdiv) * n_in, 1, ref + (size_t)p * n_out);
        bool ok = ds4_cuda_test_moe_mm(&w, ids, P, x, xdiv, got, err, sizeof err);
        snprintf(name, sizeof name, "moe_mm %s (%u pairs sorted by expert)", ds4_dtype_name(w.type), P);
        if (ok) compare(name, got, ref, (size_t)P * n_out, 2e-5, 0, 0);
        else report(name, INFINITY, 0, 0, 0, err);
        free(x);
        free(ref);
        free(got);
        free(mem);
    }
}

/* Tensor-core prefill products (BF16 weights and activations, f32 sums)
 * against the CPU's Q8-activation products: normalised max error within
 * 1e-2 (both sides carry ~8-bit activation rounding; a layout or indexing
 * bug shows as O(1)). Tiles of 64 rows x 64 tokens (128 from T = 128 on):
 * T = 16/70/130 and 150 rows cover partial tiles in both directions. */
static void test_mma(void) {
    static const struct {
        ds4_dtype t;
        uint32_t n_in;
    } cases[] = {{DS4_TYPE_Q8_0, 512}, {DS4_TYPE_Q8_0, 4096}, {DS4_TYPE_Q2_K, 768}, {DS4_TYPE_Q4_K, 512},
                 {DS4_TYPE_IQ2_XXS, 512}, {DS4_TYPE_IQ2_XXS, 2048}, {DS4_TYPE_F16, 4096}, {DS4_TYPE_BF16, 512}};
    static const int Ts[] = {16, 70, 130};
    char err[256], name[96];
    ds4_cuda_test_set_mma(1);
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        void *mem;
        const uint32_t n_out = 150, n_mat = 2;
        ds4_weight w = make_weight(cases[c].t, cases[c].n_in, n_out, n_mat, 1.0f, &mem);
        for (size_t ti = 0; ti < sizeof Ts / sizeof Ts[0]; ti++) {
            const int T = Ts[ti];
            const uint64_t mat = ti % n_mat, row0 = ti == 1 ? 7 : 0, nr = ti == 1 ? 131 : n_out;
            float *x = falloc((size_t)T * w.n_in), *ref = falloc((size_t)T * nr), *got = falloc((size_t)T * nr);
            fill(x, (size_t)T * w.n_in, 2.0f);
            ds4_matmul_rows(pool, &w, mat, row0, nr, x, T, ref);
            bool ok = ds4_cuda_test_matmul(&w, mat, row0, nr, x, T, got, err, sizeof err);
            snprintf(name, sizeof name, "mma %s [%u x %u] mat %u T=%d", ds4_dtype_name(w.type), cases[c].n_in,
                     (unsigned)nr, (unsigned)mat, T);
            if (ok) compare(name, got, ref, (size_t)T * nr, 1e-2, 0, 0);
            else report(name, INFINITY, 0, 0, 0, err);
            free(x);
            free(ref);
            free(got);
        }
        free(mem);
    }
    /* routed experts: 150 pairs over 8 experts (one unused, one with 70),
     * with 64- and 32-token tiles */
    static const ds4_dtype types[] = {DS4_TYPE_IQ2_XXS, DS4_TYPE_Q2_K, DS4_TYPE_Q4_K, DS4_TYPE_Q8_0};
    for (size_t c = 0; c < 8; c++) {
        ds4_cuda_test_set_mma_moe_bn(c < 4 ? 64 : 32);
        void *mem;
        const uint32_t n_in = 512, n_out = 80, X = 8, P = 150, xdiv = 3;
        ds4_weight w = make_weight(types[c % 4], n_in, n_out, X, 1.0f, &mem);
        int32_t ids[150];
        for (uint32_t p = 0; p < P; p++) ids[p] = p < 70 ? 2 : (int32_t)((p * 5 + p / 7) % 7);
        const uint32_t nx = (P + xdiv - 1) / xdiv;
        float *x = falloc((size_t)nx * n_in), *ref = falloc((size_t)P * n_out), *got = falloc((size_t)P * n_out);
        fill(x, (size_t)nx * n_in, 2.0f);
        for (uint32_t p = 0; p < P; p++) ds4_matmul(pool, &w, ids[p], x + (size_t)(p / xdiv) * n_in, 1, ref + (size_t)p * n_out);
        bool ok = ds4_cuda_test_moe_mm(&w, ids, P, x, xdiv, got, err, sizeof err);
        snprintf(name, sizeof name, "mma moe %s (%u pairs by expert, tile %d)", ds4_dtype_name(w.type), P,
                 c < 4 ? 64 : 32);
        if (ok) compare(name, got, ref, (size_t)P * n_out, 1e-2, 0, 0);
        else report(name, INFINITY, 0, 0, 0, err);
        free(x);
        free(ref);
        free(got);
        free(mem);
    }
    ds4_cuda_test_set_mma_moe_bn(0);
    ds4_cuda_test_set_mma(0);
}

/* forward.c's hc_pre + norm on the CPU: pre/post/comb and the normed collapse */
static void cpu_hc_pre(const ds4_weight *fn, const float *scale, const float *base, const float *R, uint32_t T,
                       uint32_t C, uint32_t E, uint32_t iters, const float *norm, float *flat, float *mix, float *pre,
                       float *post, float *comb, float *out) {
    const uint32_t M = (2 + C) * C;
    for (uint32_t t = 0; t < T; t++) ds4_rmsnorm(flat + (size_t)t * C * E, R + (size_t)t * C * E, NULL, (int)(C * E), 1e-6f);
    ds4_matmul(pool, fn, 0, flat, (int)T, mix);
    for (uint32_t t = 0; t < T; t++) {
        ds4_hc_split(mix + t * M, scale, base, C, iters, 1e-6f, pre + t * C, post + t * C, comb + t * C * C);
        for (uint32_t e = 0; e < E; e++) {
            float s = 0;
            for (uint32_t h = 0; h < C; h++) s += pre[t * C + h] * R[(size_t)t * C * E + h * E + e];
            out[(size_t)t * E + e] = s;
        }
        ds4_rmsnorm(out + (size_t)t * E, out + (size_t)t * E, norm, (int)E, 1e-6f);
    }
}

static void test_hc(void) {
    char err[256], name[96];
    /* T = 1: the decode kernels; T > 1: hc_post's warp-per-token kernel
     * (37: a partial block of 16 tokens, E = 288: a partial column block) */
    static const uint32_t Es[] = {256, 4096, 288, 4096}, Ts[] = {1, 3, 37, 1};
    for (int ei = 0; ei < 4; ei++) {
        const uint32_t C = 4, E = Es[ei], M = (2 + C) * C, T = Ts[ei], iters = 20;
        void *mem;
        ds4_weight fn = make_weight(DS4_TYPE_F16, C * E, M, 1, 1.0f / sqrtf((float)(C * E)), &mem);
        float scale[3] = {0.7f, 0.4f, 0.9f}, base[24], *norm = falloc(E);
        for (uint32_t i = 0; i < M; i++) base[i] = frand();
        for (uint32_t i = 0; i < E; i++) norm[i] = 1 + 0.15f * frand();
        float *R = falloc((size_t)T * C * E);
        fill(R, (size_t)T * C * E, 3.0f);
        /* CPU: forward.c hc_pre + attn_norm */
        float *flat = falloc((size_t)T * C * E), *mix = falloc(T * M), *pre = falloc(T * C), *post = falloc(T * C);
        float *comb = falloc(T * C * C), *out = falloc((size_t)T * E);
        cpu_hc_pre(&fn, scale, base, R, T, C, E, iters, norm, flat, mix, pre, post, comb, out);
        float *gpre = falloc(T * C), *gpost = falloc(T * C), *gcomb = falloc(T * C * C), *gout = falloc((size_t)T * E);
        bool ok = ds4_cuda_test_hc_pre(&fn, scale, base, R, T, C, E, iters, 1e-6f, 1e-6f, norm, gpre, gpost, gcomb, gout,
                                       err, sizeof err);
        snprintf(name, sizeof name, "hc_pre E=%u T=%u: pre", E, T);
        if (ok) compare(name, gpre, pre, T * C, 1e-5, 0, 0); else report(name, INFINITY, 0, 0, 0, err);
        snprintf(name, sizeof name, "hc_pre E=%u: post", E);
        if (ok) compare(name, gpost, post, T * C, 1e-5, 0, 0);
        snprintf(name, sizeof name, "hc_pre E=%u: comb (Sinkhorn)", E);
        if (ok) compare(name, gcomb, comb, T * C * C, 1e-5, 0, 0);
        snprintf(name, sizeof name, "hc_pre E=%u: collapsed + RMSNorm", E);
        if (ok) compare(name, gout, out, (size_t)T * E, 2e-5, 0, 0);
        /* hc_post on the same weights */
        float *y = falloc((size_t)T * E), *Rc = falloc((size_t)T * C * E), *old = falloc(C * E);
        fill(y, (size_t)T * E, 1.0f);
        memcpy(Rc, R, (size_t)T * C * E * 4);
        float *Rorig = falloc((size_t)T * C * E);
        memcpy(Rorig, R, (size_t)T * C * E * 4);
        for (uint32_t t = 0; t < T; t++) {
            float *Rt = R + (size_t)t * C * E;
            memcpy(old, Rt, C * E * 4);
            for (uint32_t b = 0; b < C; b++)
                for (uint32_t e = 0; e < E; e++) {
                    float s = post[t * C + b] * y[(size_t)t * E + e];
                    for (uint32_t a = 0; a < C; a++) s += comb[t * C * C + a * C + b] * old[a * E + e];
                    Rt[b * E + e] = s;
                }
        }
        ok = ds4_cuda_test_hc_post(Rc, y, post, comb, T, C, E, err, sizeof err);
        snprintf(name, sizeof name, "hc_post E=%u T=%u", E, T);
        if (ok) compare(name, Rc, R, (size_t)T * C * E, 1e-6, 0, 0); else report(name, INFINITY, 0, 0, 0, err);
        /* hc_post forming the next mix (the decode path), then hc_pre from
         * those partials: against the CPU's hc_pre on the updated R */
        {
            float *Rf = falloc((size_t)T * C * E), *pre2 = falloc(T * C), *post2 = falloc(T * C);
            float *comb2 = falloc(T * C * C), *out2 = falloc((size_t)T * E), *gpre2 = falloc(T * C);
            float *gpost2 = falloc(T * C), *gcomb2 = falloc(T * C * C), *gout2 = falloc((size_t)T * E);
            memcpy(Rf, Rorig, (size_t)T * C * E * 4);
            cpu_hc_pre(&fn, scale, base, R, T, C, E, iters, norm, flat, mix, pre2, post2, comb2, out2);
            int8_t *q8a = malloc((size_t)T * E), *q8b = malloc((size_t)T * E);
            float *dka = falloc((size_t)T * E / 256 + 1), *dkb = falloc((size_t)T * E / 256 + 1);
            ok = ds4_cuda_test_hc_post_fused(Rf, y, post, comb, T, C, E, &fn, scale, base, iters, 1e-6f, 1e-6f, norm,
                                             false, false, gpre2, gpost2, gcomb2, gout2, q8a, dka, err, sizeof err);
            snprintf(name, sizeof name, "hc_post + next mix E=%u T=%u: R", E, T);
            if (ok) compare(name, Rf, R, (size_t)T * C * E, 1e-6, 0, 0); else report(name, INFINITY, 0, 0, 0, err);
            snprintf(name, sizeof name, "hc_post + next mix E=%u: pre", E);
            if (ok) compare(name, gpre2, pre2, T * C, 1e-5, 0, 0);
            snprintf(name, sizeof name, "hc_post + next mix E=%u: comb", E);
            if (ok) compare(name, gcomb2, comb2, T * C * C, 1e-5, 0, 0);
            snprintf(name, sizeof name, "hc_post + next mix E=%u: collapsed + RMSNorm", E);
            if (ok) compare(name, gout2, out2, (size_t)T * E, 2e-5, 0, 0);
            if (T == 1 && E % 256 == 0) {
                /* decode: hc_post also forms R's Gram partials and hc_pre
                 * collapses over many blocks with them: against the CPU, and
                 * its quantized forms against the one-block path's (equal
                 * unless the norm's scale moved a rounding tie) */
                const bool ok1 = ok;
                for (int mode = 1; mode <= 2; mode++) { /* 2: the Sinkhorn split its own launch (the side stream's) */
                    const char *what = mode == 1 ? "hc_post + Gram, hc_pre over blocks" : "hc_pre over blocks, split alone";
                    memcpy(Rf, Rorig, (size_t)T * C * E * 4);
                    ok = ds4_cuda_test_hc_post_fused(Rf, y, post, comb, T, C, E, &fn, scale, base, iters, 1e-6f, 1e-6f,
                                                     norm, false, mode, gpre2, gpost2, gcomb2, gout2, q8b, dkb, err,
                                                     sizeof err);
                    snprintf(name, sizeof name, "%s E=%u: R", what, E);
                    if (ok) compare(name, Rf, R, (size_t)T * C * E, 1e-6, 0, 0); else report(name, INFINITY, 0, 0, 0, err);
                    snprintf(name, sizeof name, "%s E=%u: pre", what, E);
                    if (ok) compare(name, gpre2, pre2, T * C, 1e-5, 0, 0);
                    snprintf(name, sizeof name, "%s E=%u: post", what, E);
                    if (ok) compare(name, gpost2, post2, T * C, 1e-5, 0, 0);
                    snprintf(name, sizeof name, "%s E=%u: comb", what, E);
                    if (ok) compare(name, gcomb2, comb2, T * C * C, 1e-5, 0, 0);
                    snprintf(name, sizeof name, "%s E=%u: collapsed + RMSNorm", what, E);
                    if (ok) compare(name, gout2, out2, (size_t)T * E, 2e-5, 0, 0);
                    if (ok && ok1 && mode == 1) {
                        float *fa = falloc((size_t)T * E), *fb = falloc((size_t)T * E);
                        for (size_t i = 0; i < (size_t)T * E; i++) fa[i] = q8a[i], fb[i] = q8b[i];
                        snprintf(name, sizeof name, "%s E=%u: Q8_0 values", what, E);
                        compare(name, fb, fa, (size_t)T * E, 0, 0.5 / 127, 2.5 / E); /* a rounding tie or two */
                        snprintf(name, sizeof name, "%s E=%u: Q8_K scales", what, E);
                        compare(name, dkb, dka, (size_t)T * E / 256, 1e-6, 0, 0);
                        free(fa);
                        free(fb);
                    }
                }
            }
            free(q8a); free(q8b); free(dka); free(dkb);
            free(Rf); free(pre2); free(post2); free(comb2); free(out2); free(gpre2); free(gpost2); free(gcomb2); free(gout2);
        }
        free(y);
        free(Rc);
        free(Rorig);
        free(old);
        free(flat);
        free(mix);
        free(pre);
        free(post);
        free(comb);
        free(out);
        free(gpre);
        free(gpost);
        free(gcomb);
        free(gout);
        free(R);
        free(norm);
        free(mem);
    }
}

/* forward.c's output HC head + output_norm on the CPU */
static void cpu_head_hc(const ds4_weight *fn, float scale, const float *base, const float *R, uint32_t T, uint32_t C,
                        uint32_t E, const float *norm, float *flat, float *mix, float *x) {
    for (uint32_t t = 0; t < T; t++) ds4_rmsnorm(flat + (size_t)t * C * E, R + (size_t)t * C * E, NULL, (int)(C * E), 1e-6f);
    ds4_matmul(pool, fn, 0, flat, (int)T, mix);
    memset(x, 0, (size_t)T * E * 4);
    for (uint32_t t = 0; t < T; t++) {
        float *xt = x + (size_t)t * E;
        for (uint32_t h = 0; h < C; h++) {
            const float w = ds4_sigmoid(mix[t * C + h] * scale + base[h]) + 1e-6f;
            for (uint32_t e = 0; e < E; e++) xt[e] += w * R[(size_t)t * C * E + h * E + e];
        }
        ds4_rmsnorm(xt, xt, norm, (int)E, 1e-6f);
    }
}

static void test_head_hc(void) {
    char err[256];
    const uint32_t C = 4, E = 4096, T = 2;
    void *mem;
    ds4_weight fn = make_weight(DS4_TYPE_F16, C * E, C, 1, 1.0f / sqrtf((float)(C * E)), &mem);
    const float scale = 0.6f;
    float base[4] = {0.1f, -0.3f, 0.5f, 0.0f}, *norm = falloc(E);
    for (uint32_t i = 0; i < E; i++) norm[i] = 1 + 0.15f * frand();
    float *R = falloc((size_t)T * C * E), *flat = falloc((size_t)T * C * E), *mix = falloc(T * C);
    float *x = falloc((size_t)T * E), *gx = falloc((size_t)T * E);
    fill(R, (size_t)T * C * E, 4.0f);
    cpu_head_hc(&fn, scale, base, R, T, C, E, norm, flat, mix, x);
    bool ok = ds4_cuda_test_head_hc(&fn, &scale, base, R, T, C, E, 1e-6f, 1e-6f, norm, gx, err, sizeof err);
    if (ok) compare("output HC head + output_norm", gx, x, (size_t)T * E, 2e-5, 0, 0);
    else report("output HC head + output_norm", INFINITY, 0, 0, 0, err);
    /* the decode path: the last hc_post forms the head's mix partials */
    float *y = falloc((size_t)T * E), *post = falloc(T * C), *comb = falloc(T * C * C), *Rg = falloc((size_t)T * C * E);
    fill(y, (size_t)T * E, 1.0f);
    for (uint32_t i = 0; i < T * C; i++) post[i] = 1.0f + 0.5f * frand();
    for (uint32_t i = 0; i < T * C * C; i++) comb[i] = 0.25f + 0.1f * frand();
    memcpy(Rg, R, (size_t)T * C * E * 4);
    float old[4];
    for (uint32_t t = 0; t < T; t++)
        for (uint32_t e = 0; e < E; e++) {
            float *Rt = R + (size_t)t * C * E;
            for (uint32_t a = 0; a < C; a++) old[a] = Rt[a * E + e];
            for (uint32_t b = 0; b < C; b++) {
                float s = post[t * C + b] * y[(size_t)t * E + e];
                for (uint32_t a = 0; a < C; a++) s += comb[t * C * C + a * C + b] * old[a];
                Rt[b * E + e] = s;
            }
        }
    cpu_head_hc(&fn, scale, base, R, T, C, E, norm, flat, mix, x);
    ok = ds4_cuda_test_hc_post_fused(Rg, y, post, comb, T, C, E, &fn, &scale, base, 0, 1e-6f, 1e-6f, norm, true, false, NULL,
                                     NULL, NULL, gx, NULL, NULL, err, sizeof err);
    if (ok) compare("hc_post + output head mix: head", gx, x, (size_t)T * E, 2e-5, 0, 0);
    else report("hc_post + output head mix: head", INFINITY, 0, 0, 0, err);
    free(y);
    free(post);
    free(comb);
    free(Rg);
    free(R);
    free(flat);
    free(mix);
    free(x);
    free(gx);
    free(norm);
    free(mem);
}

static void test_heads(void) {
    char err[256], name[96];
    float inv[32];
    ds4_rope_inv_freq(inv, 64, 160000, 16, 65536, 32, 1);
    static const uint32_t Ds[] = {128, 512};
    /* wide: one token past position 105615, the decode kernel whose RoPE
     * reduces the angles beyond sinf / cosf's fast range itself */
    for (int wide = 0; wide < 2; wide++)
    for (int di = 0; di < 2; di++)
        for (int mode = 0; mode < 3; mode++) { /* q heads (norm), inverse, indexer (Hadamard + FP4) */
            const uint32_t T = wide ? 1 : 3, H = 5, D = Ds[di];
            if (mode == 2 && D != 128) continue;
            const int64_t pos0 = wide ? 300001 : 70001;
            float *x = falloc((size_t)T * H * D), *ref = falloc((size_t)T * H * D);
            fill(x, (size_t)T * H * D, 2.0f);
            memcpy(ref, x, (size_t)T * H * D * 4);
            for (uint32_t t = 0; t < T; t++)
                for (uint32_t h = 0; h < H; h++) {
                    float *r = ref + ((size_t)t * H + h) * D;
                    if (mode == 0) ds4_rmsnorm(r, r, NULL, (int)D, 1e-6f);
                    ds4_rope_tail(r, (int)D, 64, inv, pos0 + t, mode == 1);
                    if (mode == 2) {
                        ds4_hadamard(r, (int)D);
                        ds4_sim_fp4_e2m1(r, (int)D);
                    }
                }
            bool ok = ds4_cuda_test_head_post(x, T, H, D, 64, inv, pos0, mode == 0, mode == 1, mode == 2, err, sizeof err);
            snprintf(name, sizeof name, "heads D=%u %s at %lld", D,
                     mode == 0 ? "RMSNorm + RoPE" : mode == 1 ? "inverse RoPE" : "RoPE + Hadamard + FP4",
                     (long long)pos0);
            if (!ok) report(name, INFINITY, 0, 0, 0, err);
            else if (mode == 2) compare(name, x, ref, (size_t)T * H * D, 0, 1e-5, 0.01);
            else compare(name, x, ref, (size_t)T * H * D, 2e-6, 0, 0);
            free(x);
            free(ref);
        }
}

static void test_kv_store(void) {
    char err[256], name[96];
    float inv[32];
    ds4_rope_inv_freq(inv, 64, 10000, 1, 0, 0, 0);
    for (int sim = 0; sim < 2; sim++) {
        const uint32_t T = 5, D = 512, cap = 16;
        const int64_t pos0 = 13;
        float *kv = falloc((size_t)T * D), *norm = falloc(D), *raw = falloc((size_t)cap * D), *ref = falloc((size_t)cap * D);
        fill(kv, (size_t)T * D, 3.0f);
        for (uint32_t i = 0; i < D; i++) norm[i] = 1 + 0.15f * frand();
        fill(raw, (size_t)cap * D, 1.0f);
        memcpy(ref, raw, (size_t)cap * D * 4);
        for (uint32_t t = 0; t < T; t++) {
            float k[512];
            memcpy(k, kv + (size_t)t * D, D * 4);
            ds4_rmsnorm(k, k, norm, (int)D, 1e-6f);
            ds4_rope_tail(k, (int)D, 64, inv, pos0 + t, false);
            if (sim) {
                ds4_sim_fp8_e4m3(k, (int)(D - 64));
                ds4_round_f16(k, (int)D);
            }
            memcpy(ref + (size_t)((pos0 + t) % cap) * D, k, D * 4);
        }
        bool ok = ds4_cuda_test_kv_store(kv, T, D, norm, 64, inv, pos0, sim, sim, raw, cap, err, sizeof err);
        snprintf(name, sizeof name, "kv rows %s (ring wraps)", sim ? "norm+RoPE+FP8+F16" : "norm+RoPE");
        if (!ok) report(name, INFINITY, 0, 0, 0, err);
        else if (sim) compare(name, raw, ref, (size_t)cap * D, 0, 1e-5, 0.005);
        else compare(name, raw, ref, (size_t)cap * D, 2e-6, 0, 0);
        free(kv);
        free(norm);
        free(raw);
        free(ref);
    }
}

static void test_route(void) {
    char err[256], name[96];
    const uint32_t X = 256, K = 6, T = 7, V = 50;
    ds4_hparams hp;
    memset(&hp, 0, sizeof hp);
    hp.n_expert = X;
    hp.n_expert_used = K;
    hp.expert_weights_scale = 1.5;
    hp.expert_weights_norm = true;
    float *logits = falloc((size_t)T * X), *bias = falloc(X);
    fill(logits, (size_t)T * X, 3.0f);
    fill(bias, X, 0.3f);
    int32_t *tab = malloc((size_t)K * V * 4), tokens[7] = {0, 5, 49, 17, 3, 3, 22};
    for (uint32_t i = 0; i < K * V; i++) tab[i] = (int32_t)((i * 37 + 11) % X);
    for (int mode = 0; mode < 3; mode++) { /* score + bias, score, hash */
        ds4_layer L;
        memset(&L, 0, sizeof L);
        L.expert_bias = mode == 0 ? bias : NULL;
        L.tid2eid = tab;
        hp.n_hash_layer = mode == 2 ? 1 : 0;
        int32_t rid[42], gid[42];
        float rw[42], gw[42];
        for (uint32_t t = 0; t < T; t++) ds4_moe_route(&hp, &L, 0, tokens[t], logits + (size_t)t * X, rid + t * K, rw + t * K);
        bool ok = ds4_cuda_test_route(logits, T, X, K, tokens, mode == 2 ? tab : NULL, V, L.expert_bias, true, 1.5f, gid,
                                      gw, err, sizeof err);
        size_t diff = 0;
        for (uint32_t i = 0; ok && i < T * K; i++) diff += rid[i] != gid[i];
        snprintf(name, sizeof name, "router %s: expert ids (count differing)", mode == 0 ? "top-k of p+bias" : mode == 1 ? "top-k" : "hash");
        report(name, ok ? (double)diff : INFINITY, 0, 0, 0, ok ? NULL : err);
        snprintf(name, sizeof name, "router %s: weights", mode == 0 ? "top-k of p+bias" : mode == 1 ? "top-k" : "hash");
        if (ok) compare(name, gw, rw, T * K, 1e-6, 0, 0);
    }
    free(logits);
    free(bias);
    free(tab);
}

static void test_moe_small(void) {
    char err[256];
    const uint32_t T = 3, K = 6, E = 300, F = 260;
    float *g = falloc(T * K * F), *u = falloc(T * K * F), *w = falloc(T * K), *h = falloc(T * K * F), *ref = falloc(T * K * F);
    fill(g, T * K * F, 14.0f);
    fill(u, T * K * F, 14.0f);
    fill(w, T * K, 1.0f);
    for (uint32_t r = 0; r < T * K; r++)
        for (uint32_t i = 0; i < F; i++) {
            const float gv = fminf(g[r * F + i], 10.0f), uv = fminf(fmaxf(u[r * F + i], -10.0f), 10.0f);
            ref[r * F + i] = ds4_silu(gv) * uv * w[r];
        }
    bool ok = ds4_cuda_test_swiglu(g, u, w, T * K, F, 10.0f, h, NULL, err, sizeof err);
    if (ok) compare("SwiGLU with clamp and route weight", h, ref, T * K * F, 1e-6, 0, 0);
    else report("SwiGLU with clamp and route weight", INFINITY, 0, 0, 0, err);
    /* decode's shape (a block a 256-value slice) and a chunk's, with the
     * quantized forms held to quantize_kernel's */
    static const uint32_t rows_[] = {6, 6, 48}, F_[] = {2048, 512, 512};
    for (int c = 0; c < 3; c++) {
        const uint32_t R = rows_[c], FF = F_[c];
        float *g2 = falloc(R * FF), *u2 = falloc(R * FF), *h2 = falloc(R * FF), *r2 = falloc(R * FF);
        fill(g2, R * FF, 14.0f);
        fill(u2, R * FF, 14.0f);
        for (uint32_t r = 0; r < R; r++)
            for (uint32_t i = 0; i < FF; i++) {
                const float gv = fminf(g2[r * FF + i], 10.0f), uv = fminf(fmaxf(u2[r * FF + i], -10.0f), 10.0f);
                r2[r * FF + i] = ds4_silu(gv) * uv * w[r % (T * K)];
            }
        float *w2 = falloc(R);
        for (uint32_t r = 0; r < R; r++) w2[r] = w[r % (T * K)];
        long qd = -1;
        char nm[96];
        ok = ds4_cuda_test_swiglu(g2, u2, w2, R, FF, 10.0f, h2, &qd, err, sizeof err);
        snprintf(nm, sizeof nm, "SwiGLU %u x %u", R, FF);
        if (ok) compare(nm, h2, r2, R * FF, 1e-6, 0, 0); else report(nm, INFINITY, 0, 0, 0, err);
        snprintf(nm, sizeof nm, "SwiGLU %u x %u: quantized forms differing", R, FF);
        if (ok) report(nm, (double)qd, 0, 0, 0, qd < 0 ? "not read back" : NULL);
        free(g2); free(u2); free(h2); free(r2); free(w2);
    }
    /* RMSNorm: one row (decode: a block a 256-value slice) and several */
    static const uint32_t nr_[] = {1, 1, 1, 3}, nn_[] = {1024, 4096, 300, 1024};
    for (int c = 0; c < 4; c++) {
        const uint32_t R = nr_[c], N = nn_[c];
        float *x = falloc(R * N), *wn = falloc(N), *o = falloc(R * N), *r2 = falloc(R * N);
        fill(x, R * N, 3.0f);
        for (uint32_t i = 0; i < N; i++) wn[i] = 1 + 0.2f * frand();
        for (uint32_t r = 0; r < R; r++) ds4_rmsnorm(r2 + r * N, x + r * N, wn, (int)N, 1e-6f);
        long qd = -1;
        char nm[96];
        ok = ds4_cuda_test_rmsnorm(x, R, N, wn, 1e-6f, o, &qd, err, sizeof err);
        snprintf(nm, sizeof nm, "RMSNorm %u x %u", R, N);
        if (ok) compare(nm, o, r2, R * N, 2e-6, 0, 0); else report(nm, INFINITY, 0, 0, 0, err);
        snprintf(nm, sizeof nm, "RMSNorm %u x %u: quantized forms differing", R, N);
        if (ok) report(nm, (double)qd, 0, 0, 0, qd < 0 ? "not read back" : NULL);
        free(x); free(wn); free(o); free(r2);
    }
    float *ysh = falloc(T * E), *ye = falloc(T * K * E), *y = falloc(T * E), *yr = falloc(T * E);
    fill(ysh, T * E, 1.0f);
    fill(ye, T * K * E, 1.0f);
    int32_t ids[18] = {5, 3, 3, 200, 0, 9, 1, 2, 3, 4, 5, 6, 255, 254, 0, 1, 254, 7};
    for (uint32_t t = 0; t < T; t++)
        for (uint32_t e = 0; e < E; e++) {
            float s = ysh[t * E + e];
            for (int32_t x = 0; x < 256; x++)
                for (uint32_t k = 0; k < K; k++)
                    if (ids[t * K + k] == x) s += ye[(t * K + k) * E + e];
            yr[t * E + e] = s;
        }
    ok = ds4_cuda_test_moe_sum(ysh, ye, ids, T, K, E, y, err, sizeof err);
    if (ok) compare("expert sum in (id, k) order", y, yr, T * E, 0, 0, 0);
    else report("expert sum in (id, k) order", INFINITY, 0, 0, 0, err);
    free(g); free(u); free(w); free(h); free(ref); free(ysh); free(ye); free(y); free(yr);
}

/* forward.c run_compressor, for the reference */
static void cpu_compress(uint32_t ratio, uint32_t dim, const float *inv, const float *norm, bool indexer, bool sim,
                         bool f16, const ds4_weight *ape, const float *kv, float *sc, uint32_t T, int64_t p0,
                         float *st_kv, float *st_sc, float *rows) {
    const uint32_t W = (ratio == 4 ? 2 : 1) * dim;
    float *ape_row = falloc(W), *pooled = falloc(dim);
    for (uint32_t t = 0; t < T; t++) {
        const int64_t p = p0 + t;
        ds4_weight_dequant_row(ape, 0, (uint64_t)(p % ratio), ape_row);
        float *s = sc + (size_t)t * W;
        for (uint32_t j = 0; j < W; j++) s[j] += ape_row[j];
        if (!ds4_compressor_step(ratio, dim, st_kv, st_sc, kv + (size_t)t * W, s, p, pooled)) continue;
        float *row = rows + (size_t)((p + 1) / ratio - 1) * dim;
        ds4_rmsnorm(row, pooled, norm, (int)dim, 1e-6f);
        ds4_rope_tail(row, (int)dim, 64, inv, p + 1 - ratio, false);
        if (sim) {
            if (indexer) {
                ds4_hadamard(row, (int)dim);
                ds4_sim_fp4_e2m1(row, (int)dim);
            } else {
                ds4_sim_fp8_e4m3(row, (int)(dim - 64));
                if (f16) ds4_round_f16(row, (int)dim);
            }
        }
    }
    free(ape_row);
    free(pooled);
}

static void test_compressor(void) {
    char err[256], name[128];
    float inv[32];
    ds4_rope_inv_freq(inv, 64, 160000, 16, 65536, 32, 1);
    static const struct {
        uint32_t ratio, dim;
        bool indexer;
    } cases[] = {{4, 512, false}, {4, 128, true}, {128, 512, false}};
    for (int c = 0; c < 3; c++)
        for (int sim = 0; sim < 2; sim++) {
            const uint32_t ratio = cases[c].ratio, dim = cases[c].dim, cc = ratio == 4 ? 2 : 1, W = cc * dim;
            const uint32_t T1 = 300, T2 = 37, cap = (T1 + T2) / ratio + 1;
            const size_t sn = (size_t)cc * ratio * W;
            void *mem;
            ds4_weight ape = make_weight(DS4_TYPE_F16, W, ratio, 1, 1.0f, &mem);
            float *norm = falloc(dim), *kv = falloc((size_t)(T1 + T2) * W), *sc = falloc((size_t)(T1 + T2) * W);
            for (uint32_t i = 0; i < dim; i++) norm[i] = 1 + 0.15f * frand();
            fill(kv, (size_t)(T1 + T2) * W, 2.0f);
            fill(sc, (size_t)(T1 + T2) * W, 2.0f);
            float *skv = falloc(sn), *ssc = falloc(sn), *gkv = falloc(sn), *gsc = falloc(sn);
            float *rows = falloc((size_t)cap * dim), *grows = falloc((size_t)cap * dim);
            for (size_t i = 0; i < sn; i++) ssc[i] = gsc[i] = -INFINITY;
            float *sc_cpu = falloc((size_t)(T1 + T2) * W);
            memcpy(sc_cpu, sc, (size_t)(T1 + T2) * W * 4);
            bool ok = true;
            for (int part = 0; part < 2 && ok; part++) { /* two chunks: the frontier carries over */
                const uint32_t T = part ? T2 : T1, t0 = part ? T1 : 0;
                cpu_compress(ratio, dim, inv, norm, cases[c].indexer, sim, sim, &ape, kv + (size_t)t0 * W,
                             sc_cpu + (size_t)t0 * W, T, t0, skv, ssc, rows);
                ok = ds4_cuda_test_compress(ratio, dim, 64, inv, norm, cases[c].indexer, sim, sim, &ape,
                                            kv + (size_t)t0 * W, sc + (size_t)t0 * W, T, t0, gkv, gsc, grows, cap, err,
                                            sizeof err);
            }
            const uint32_t n_rows = (T1 + T2) / ratio;
            snprintf(name, sizeof name, "compressor ratio %u dim %u%s%s: rows", ratio, dim,
                     cases[c].indexer ? " (indexer)" : "", sim ? (cases[c].indexer ? " Hadamard+FP4" : " FP8+F16") : "");
            if (!ok) report(name, INFINITY, 0, 0, 0, err);
            else if (sim) compare(name, grows, rows, (size_t)n_rows * dim, 0, 1e-5, 0.01);
            else compare(name, grows, rows, (size_t)n_rows * dim, 2e-5, 0, 0);
            snprintf(name, sizeof name, "compressor ratio %u dim %u: frontier state", ratio, dim);
            if (ok) {
                /* -inf entries compare equal; replace for the metric */
                for (size_t i = 0; i < sn; i++)
                    if (isinf(ssc[i]) && isinf(gsc[i])) ssc[i] = gsc[i] = 0;
                compare(name, gsc, ssc, sn, 1e-6, 0, 0);
                compare("  ... frontier kv", gkv, skv, sn, 0, 0, 0);
            }
            free(norm); free(kv); free(sc); free(sc_cpu); free(skv); free(ssc); free(gkv); free(gsc);
            free(rows); free(grows); free(mem);
        }
}

/* decode: the KV row and both compressors in one launch give the separate
 * launches' results bit for bit (with and without a closing window) */
static void test_side_decode(void) {
    char err[256], name[128];
    float inv[32];
    ds4_rope_inv_freq(inv, 64, 160000, 16, 65536, 32, 1);
    static const struct {
        uint32_t ratio;
        int64_t pos0;
    } cases[] = {{0, 9}, {4, 6}, {4, 7}, {128, 126}, {128, 255}, {0, 150000}, {128, 200063}};
    const uint32_t D = 512, ID = 128, raw_cap = 16;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const uint32_t ratio = cases[c].ratio, W = (ratio == 4 ? 2 : 1) * D;
        /* compressed rows are stored at their index: room up to this one */
        const uint32_t comp_cap = ratio && cases[c].pos0 / ratio + 1 > 8 ? (uint32_t)(cases[c].pos0 / ratio + 1) : 8;
        void *m1, *m2;
        ds4_weight ape = make_weight(DS4_TYPE_F16, W, ratio ? ratio : 1, 1, 1.0f, &m1);
        ds4_weight iape = make_weight(DS4_TYPE_F16, 2 * ID, 4, 1, 1.0f, &m2);
        float *norms = falloc(2 * D + ID), *kv = falloc(D), *ckv = falloc(W), *csc = falloc(W);
        float *ikv = falloc(2 * ID), *isc = falloc(2 * ID);
        for (uint32_t i = 0; i < 2 * D + ID; i++) norms[i] = 1 + 0.15f * frand();
        fill(kv, D, 2.0f);
        fill(ckv, W, 2.0f);
        fill(csc, W, 2.0f);
        fill(ikv, 2 * ID, 2.0f);
        fill(isc, 2 * ID, 2.0f);
        const size_t n = ds4_cuda_test_side_state_floats(D, ID, ratio, raw_cap, comp_cap);
        float *fused = falloc(n), *sep = falloc(n);
        fill(fused, n, 1.0f);
        memcpy(sep, fused, n * 4);
        bool ok = ds4_cuda_test_side_decode(D, ID, ratio, 64, inv, norms, &ape, &iape, kv, ckv, csc, ikv, isc,
                                            cases[c].pos0, raw_cap, comp_cap, fused, sep, err, sizeof err);
        snprintf(name, sizeof name, "decode side branch in one launch, ratio %u at %lld", ratio,
                 (long long)cases[c].pos0);
        /* past position 105615 the fused launch reduces the RoPE angles
         * itself (the decode variant) while the separate launches keep sinf /
         * cosf's slow path: both within ~2 ulp of the exact rotation, so an
         * F16 / FP4 rounding may fall the other way in a few elements */
        if (!ok) report(name, INFINITY, 0, 0, 0, err);
        else if (cases[c].pos0 > 105615) compare(name, fused, sep, n, 0, 1e-3, 0.002);
        else compare(name, fused, sep, n, 0, 0, 0);
        free(norms); free(kv); free(ckv); free(csc); free(ikv); free(isc); free(fused); free(sep);
        free(m1); free(m2);
    }
}

static void test_indexer(void) {
    char err[256], name[160];
    /* fp4: queries and keys Hadamard + FP4-simulated (the default model's
     * inputs, exact in BF16: the tensor-core scores) */
    /* dup: the keys repeat every 97 rows, so the scores tie in runs across
     * the whole range (decode's cluster top-k: ties split between blocks) */
    static const struct {
        uint32_t I, K, n_keys, T;
        int64_t pos0;
        bool fp4, dup;
    } cases[] = {{32, 16, 160, 4, 55, false, false},      {64, 512, 3000, 4, 11990, false, false},
                 {64, 8, 36, 4, 130, false, false},       {64, 512, 3000, 1, 11999, true, false},
                 {64, 512, 3000, 13, 11990, true, false}, {64, 512, 3000, 13, 2040, true, false},
                 {64, 512, 16384, 1, 65535, true, false}, {64, 512, 16384, 13, 65523, true, false},
                 {64, 512, 16384, 1, 4095, true, false},  {64, 512, 16384, 1, 65535, true, true},
                 {64, 512, 9000, 1, 30001, true, true}};
    for (int c = 0; c < (int)(sizeof cases / sizeof cases[0]); c++) {
        const uint32_t I = cases[c].I, ID = 128, K = cases[c].K, T = cases[c].T, n = cases[c].n_keys;
        const int64_t pos0 = cases[c].pos0;
        float *qi = falloc((size_t)T * I * ID), *wi = falloc((size_t)T * I), *keys = falloc((size_t)n * ID);
        fill(qi, (size_t)T * I * ID, 1.0f);
        fill(wi, (size_t)T * I, 1.0f);
        fill(keys, (size_t)n * ID, 1.0f);
        for (size_t r = 97; cases[c].dup && r < n; r++) memcpy(keys + r * ID, keys + (r % 97) * ID, ID * 4);
        for (size_t r = 0; cases[c].fp4 && r < (size_t)T * I + n; r++) {
            float *row = r < (size_t)T * I ? qi + r * ID : keys + (r - (size_t)T * I) * ID;
            ds4_hadamard(row, (int)ID);
            ds4_sim_fp4_e2m1(row, (int)ID);
        }
        const float wscale = 1.0f / sqrtf((float)ID * (float)I);
        uint32_t *sel = calloc((size_t)T * K, 4), *gsel = calloc((size_t)T * K, 4);
        uint32_t *nsel = calloc(T, 4), *gnsel = calloc(T, 4);
        float *score = falloc(n);
        for (uint32_t t = 0; t < T; t++) {
            const uint32_t nv = (uint32_t)((pos0 + t + 1) / 4);
            if (nv <= K) {
                nsel[t] = UINT32_MAX;
                continue;
            }
            for (uint32_t k = 0; k < nv; k++) {
                float s = 0;
                for (uint32_t h = 0; h < I; h++) {
                    float d = 0;
                    for (uint32_t i = 0; i < ID; i++) d += qi[((size_t)t * I + h) * ID + i] * keys[(size_t)k * ID + i];
                    if (d > 0) s += wi[t * I + h] * wscale * d;
                }
                score[k] = s;
            }
            nsel[t] = ds4_topk_select(score, nv, K, sel + (size_t)t * K);
        }
        bool ok = ds4_cuda_test_indexer(qi, wi, wscale, keys, n, T, I, ID, K, pos0, gsel, gnsel, err, sizeof err);
        size_t diff = 0;
        for (uint32_t t = 0; ok && t < T; t++) {
            if (nsel[t] != gnsel[t]) { diff++; continue; }
            if (nsel[t] == UINT32_MAX) continue;
            diff += memcmp(sel + (size_t)t * K, gsel + (size_t)t * K, K * 4) != 0;
        }
        snprintf(name, sizeof name, "indexer top-%u of %u rows x %u heads, T %u at %lld%s%s: differing sets", K, n, I,
                 T, (long long)pos0, cases[c].fp4 ? " (FP4, tensor cores)" : "", cases[c].dup ? ", tied" : "");
        report(name, ok ? (double)diff : INFINITY, 0, 0, 0, ok ? NULL : err);
        free(qi); free(wi); free(keys); free(sel); free(gsel); free(score); free(nsel); free(gnsel);
    }
}

/* The exact kernel (splits > 0) and, for the cases with splits 0, the
 * tensor-core prefill kernel (FP16 queries and softmax weights, key rows
 * F16-rounded as kv_store stores them): T = 20 tokens, a window that starts
 * at position 0 (partial tiles), 64 and 128 heads. */
static void test_attention(void) {
    char err[256], name[128];
    /* qpost: q as q_b wrote it, the decode kernel applies the heads' RMSNorm +
     * RoPE (position 200000: angles past the fast sin/cos range) */
    static const struct {
        uint32_t H, D, ratio, splits, T;
        bool sel;
        int64_t pos0;
        bool qpost;
    } cases[] = {{4, 128, 0, 1, 3, false, 700, false},   {8, 512, 4, 1, 3, true, 700, false},
                 {64, 512, 4, 7, 3, true, 700, false},   {8, 256, 128, 3, 3, false, 700, false},
                 {64, 512, 128, 32, 3, false, 700, false}, {5, 128, 4, 2, 3, false, 700, false},
                 {64, 512, 0, 0, 20, false, 700, false}, {64, 512, 4, 0, 20, true, 700, false},
                 {128, 512, 128, 0, 20, false, 1400, false}, {64, 512, 4, 0, 20, false, 5, false},
                 {64, 512, 4, 32, 3, true, 700, true},   {64, 512, 0, 32, 1, false, 200000, true},
                 {4, 128, 0, 3, 3, false, 9, true}};
    const float q_eps = 1e-6f;
    float inv[32];
    ds4_rope_inv_freq(inv, 64, 160000, 16, 65536, 32, 1);
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const uint32_t H = cases[c].H, D = cases[c].D, ratio = cases[c].ratio, T = cases[c].T, n_swa = 128;
        const uint32_t top_k = 16, cap = 128 + 64;
        const int64_t pos0 = cases[c].pos0;
        const bool tc = cases[c].splits == 0;
        const uint32_t n_comp = ratio ? (uint32_t)((pos0 + T) / ratio) : 0;
        float *q = falloc((size_t)T * H * D), *raw = falloc((size_t)cap * D), *comp = falloc((size_t)(n_comp + 1) * D);
        float *sinks = falloc(H), *ref = falloc((size_t)T * H * D), *got = falloc((size_t)T * H * D);
        fill(q, (size_t)T * H * D, 1.0f);
        /* the reference attends with the normalised, rotated heads */
        float *qn = falloc((size_t)T * H * D);
        memcpy(qn, q, (size_t)T * H * D * sizeof(float));
        if (cases[c].qpost)
            for (uint32_t t = 0; t < T; t++)
                for (uint32_t h = 0; h < H; h++) {
                    float *qh = qn + ((size_t)t * H + h) * D;
                    ds4_rmsnorm(qh, qh, NULL, (int)D, q_eps);
                    ds4_rope_tail(qh, (int)D, 64, inv, pos0 + t, false);
                }
        fill(raw, (size_t)cap * D, 1.0f);
        fill(comp, (size_t)(n_comp + 1) * D, 1.0f);
        if (tc) {
            ds4_round_f16(raw, (int)(cap * D));
            ds4_round_f16(comp, (int)((n_comp + 1) * D));
        }
        for (uint32_t h = 0; h < H; h++) sinks[h] = 1.5f * frand() + 0.5f;
        uint32_t *sel = NULL, nsel[20];
        if (cases[c].sel) {
            sel = calloc((size_t)T * top_k, 4);
            for (uint32_t t = 0; t < T; t++) {
                nsel[t] = t == 1 ? UINT32_MAX : top_k;
                for (uint32_t i = 0; i < top_k; i++) sel[t * top_k + i] = (i * 11 + t) % (n_comp > 1 ? n_comp - 1 : 1);
            }
        }
        for (uint32_t t = 0; t < T; t++)
            for (uint32_t h = 0; h < H; h++) { /* forward.c attention_worker */
                const int64_t p = pos0 + t, lo = p - n_swa + 1 > 0 ? p - n_swa + 1 : 0;
                const uint32_t n_raw = (uint32_t)(p - lo + 1);
                uint32_t nc = ratio ? (uint32_t)((p + 1) / ratio) : 0;
                const uint32_t *sl = NULL;
                if (sel && nsel[t] != UINT32_MAX) {
                    sl = sel + t * top_k;
                    nc = nsel[t];
                }
                const float *qq = qn + ((size_t)t * H + h) * D, scale = 1.0f / sqrtf((float)D);
                float z[1024], mx = sinks[h];
                for (uint32_t r = 0; r < n_raw + nc; r++) {
                    const float *k = r < n_raw ? raw + (size_t)((lo + r) % cap) * D : comp + (size_t)(sl ? sl[r - n_raw] : r - n_raw) * D;
                    float d = 0;
                    for (uint32_t i = 0; i < D; i++) d += qq[i] * k[i];
                    z[r] = d * scale;
                    mx = fmaxf(mx, z[r]);
                }
                float den = expf(sinks[h] - mx), *o = ref + ((size_t)t * H + h) * D;
                for (uint32_t r = 0; r < n_raw + nc; r++) {
                    const float *v = r < n_raw ? raw + (size_t)((lo + r) % cap) * D : comp + (size_t)(sl ? sl[r - n_raw] : r - n_raw) * D;
                    const float w = expf(z[r] - mx);
                    den += w;
                    for (uint32_t i = 0; i < D; i++) o[i] += w * v[i];
                }
                for (uint32_t i = 0; i < D; i++) o[i] /= den;
                ds4_rope_tail(o, (int)D, 64, inv, p, true);
            }
        ds4_cuda_test_set_attn_q_post(cases[c].qpost, q_eps);
        bool ok = ds4_cuda_test_attention(q, T, H, D, n_swa, ratio, top_k, 64, inv, sinks, raw, cap, comp, n_comp, sel,
                                          sel ? nsel : NULL, pos0, cases[c].splits, got, err, sizeof err);
        ds4_cuda_test_set_attn_q_post(false, 0.0f);
        if (tc)
            snprintf(name, sizeof name, "attention (tensor cores) H=%u ratio %u%s, T=%u at %lld", H, ratio,
                     cases[c].sel ? " + top-k" : "", T, (long long)pos0);
        else
            snprintf(name, sizeof name, "attention H=%u D=%u ratio %u%s, %u splits%s", H, D, ratio,
                     cases[c].sel ? " + top-k" : "", cases[c].splits, cases[c].qpost ? ", q norm+rope in kernel" : "");
        /* tensor cores: FP16 queries and weights (relative 2^-11 each) */
        if (ok) compare(name, got, ref, (size_t)T * H * D, tc ? 3e-3 : 2e-5, 0, 0);
        else report(name, INFINITY, 0, 0, 0, err);
        free(q); free(qn); free(raw); free(comp); free(sinks); free(ref); free(got); free(sel);
    }
}

static void test_argmax(void) {
    char err[256];
    const uint32_t rows = 3, n = 129280;
    float *x = falloc((size_t)rows * n);
    fill(x, (size_t)rows * n, 1.0f);
    x[5] = 7;
    x[900] = 7;                 /* tie: first wins */
    x[n + n - 1] = 9;           /* last element */
    x[2 * n + 64000] = 3;
    int32_t got[3], ref[3] = {5, (int32_t)n - 1, 64000};
    bool ok = ds4_cuda_test_argmax(x, rows, n, got, err, sizeof err);
    double diff = 0;
    for (int i = 0; ok && i < 3; i++) diff += got[i] != ref[i];
    report("argmax over the vocabulary (ties: first)", ok ? diff : INFINITY, 0, 0, 0, ok ? NULL : err);
    free(x);
}

int main(void) {
    char err[256];
    if (!ds4_cuda_backend_probe(err, sizeof err)) {
        fprintf(stderr, "test_cuda_ops: %s\n", err);
        return 2;
    }
    pool = ds4_pool_new(4);
    printf("CUDA kernels vs the CPU reference\n");
    test_quantize();
    ds4_cuda_test_set_mma(0); /* the exact kernels first; test_mma turns the tensor-core path on */
    test_matmul();
    test_router();
    test_moe_mm();
    test_mma();
    test_matmul_groups();
    test_moe_swiglu();
    test_matvec_pairs();
    test_matvec_fin();
    test_hc();
    test_head_hc();
    test_heads();
    test_kv_store();
    test_route();
    test_moe_small();
    test_compressor();
    test_side_decode();
    test_indexer();
    test_attention();
    test_argmax();
    ds4_pool_free(pool);
    printf("%d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}

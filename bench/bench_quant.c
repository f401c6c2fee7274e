/* bench_quant.c - single-thread throughput of the block formats: quantize,
 * dequantize and dot product, reference C against the SIMD path.
 *
 * Why it exists: the dot products are the inner loop of CPU inference and
 * the quantizers bound how long a model conversion takes; this prints the
 * numbers to compare against memory bandwidth and to catch regressions. Not
 * part of `make test` (timings are not assertions); run with `make bench` or
 * build/bench/bench_quant [seconds-per-measurement].
 *
 * Shapes: rows of 4096 values (DeepSeek V4 Flash's hidden size). Dots run a
 * matrix-vector product over a [1024 x 4096] weight matrix (4M weights, 2-16
 * MiB depending on the format: mostly cache-resident on a server CPU, so these
 * are compute numbers, not DRAM numbers) against one activation row already in
 * the format's dot type. GB/s counts weight bytes (the quantized row size),
 * elements/s counts weights.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "quant.h"

enum { COLS = 4096, DOT_ROWS = 1024 };

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static uint64_t rng_state = 12345;
static float rng_gauss(void) {
    double u[2];
    for (int k = 0; k < 2; k++) {
        rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
        u[k] = ((rng_state >> 11) + 0.5) * (1.0 / 9007199254740992.0);
    }
    return (float)(sqrt(-2.0 * log(u[0])) * cos(6.283185307179586 * u[1]));
}

static double g_min_time = 0.1; /* seconds per measurement */
static volatile float g_sink;

typedef enum { OP_QUANTIZE, OP_DEQUANTIZE, OP_DOT } op_kind;

typedef struct {
    ds4_dtype type;
    op_kind op;
    bool ref;
    int rows;            /* rows processed per iteration */
    const float *src;    /* rows x COLS f32 */
    const float *imatrix;
    uint8_t *q;          /* rows x row_bytes */
    float *f;            /* COLS floats of scratch */
    const void *x;       /* activation row for dots */
} job;

static void run_once(const job *j) {
    const size_t rb = ds4_quant_row_size(j->type, COLS);
    float acc = 0.0f;
    for (int r = 0; r < j->rows; r++) {
        switch (j->op) {
        case OP_QUANTIZE:
            if (j->ref)
                ds4_quantize_row_ref(j->type, j->src + (size_t)r * COLS, j->q + r * rb, COLS, j->imatrix);
            else
                ds4_quantize_row(j->type, j->src + (size_t)r * COLS, j->q + r * rb, COLS, j->imatrix);
            break;
        case OP_DEQUANTIZE:
            if (j->ref)
                ds4_dequantize_row_ref(j->type, j->q + r * rb, j->f, COLS);
            else
                ds4_dequantize_row(j->type, j->q + r * rb, j->f, COLS);
            acc += j->f[r & (COLS - 1)];
            break;
        case OP_DOT:
            acc += j->ref ? ds4_vec_dot_ref(j->type, COLS, j->q + r * rb, j->x)
                          : ds4_vec_dot(j->type, COLS, j->q + r * rb, j->x);
            break;
        }
    }
    g_sink = acc;
}

/* Seconds per iteration, best of the repetitions within g_min_time. */
static double time_job(const job *j) {
    double best = INFINITY, total = 0.0;
    int reps = 0;
    while (total < g_min_time || reps < 2) {
        const double t0 = now_s();
        run_once(j);
        const double dt = now_s() - t0;
        best = dt < best ? dt : best;
        total += dt;
        reps++;
    }
    return best;
}

static void report(const char *op, const char *path, ds4_dtype type, int rows, double secs) {
    const double elems = (double)rows * COLS;
    const double bytes = (double)rows * (double)ds4_quant_row_size(type, COLS);
    printf("%-8s %-10s %-5s %10.1f Melem/s %9.3f GB/s\n", ds4_dtype_name(type), op, path, elems / secs / 1e6,
           bytes / secs / 1e9);
}

int main(int argc, char **argv) {
    if (argc > 1) g_min_time = atof(argv[1]);
    const char *simd = ds4_quant_simd_name();
    printf("bench_quant: rows of %d, dot = [%d x %d] mat-vec, single thread, SIMD path: %s\n", COLS, DOT_ROWS, COLS,
           simd);
    printf("%-8s %-10s %-5s %18s %14s\n", "format", "op", "path", "elements", "weight bytes");

    float *src = malloc(sizeof(float) * (size_t)DOT_ROWS * COLS);
    float *imatrix = malloc(sizeof(float) * COLS), *f = malloc(sizeof(float) * COLS);
    uint8_t *q = malloc((size_t)DOT_ROWS * COLS * 4);
    uint8_t *x = malloc((size_t)COLS * 4);
    if (!src || !imatrix || !f || !q || !x) return 1;
    for (size_t i = 0; i < (size_t)DOT_ROWS * COLS; i++) src[i] = rng_gauss();
    for (int i = 0; i < COLS; i++) imatrix[i] = expf(rng_gauss());

    const ds4_dtype types[] = {DS4_TYPE_F32,  DS4_TYPE_F16,  DS4_TYPE_BF16,    DS4_TYPE_Q8_0,
                               DS4_TYPE_Q2_K, DS4_TYPE_Q4_K, DS4_TYPE_IQ2_XXS, DS4_TYPE_Q8_K};
    for (size_t t = 0; t < sizeof types / sizeof types[0]; t++) {
        const ds4_dtype type = types[t];
        /* quantizer speed: the K/IQ searches are slow, give them fewer rows */
        const int qrows = type == DS4_TYPE_IQ2_XXS ? 16 : (type == DS4_TYPE_Q2_K || type == DS4_TYPE_Q4_K) ? 64 : 256;
        const float *imat = type == DS4_TYPE_IQ2_XXS ? imatrix : NULL;
        for (int ref = 1; ref >= 0; ref--) {
            job j = {type, OP_QUANTIZE, ref, qrows, src, imat, q, f, NULL};
            report("quantize", ref ? "ref" : simd, type, qrows, time_job(&j));
        }
        /* the quantize runs left qrows rows in q: tile them over the matrix */
        const size_t rb = ds4_quant_row_size(type, COLS);
        for (int r = qrows; r < DOT_ROWS; r++) memcpy(q + r * rb, q + (r % qrows) * rb, rb);
        for (int ref = 1; ref >= 0; ref--) {
            job j = {type, OP_DEQUANTIZE, ref, DOT_ROWS, src, imat, q, f, NULL};
            report("dequantize", ref ? "ref" : simd, type, DOT_ROWS, time_job(&j));
        }
        const ds4_dtype xt = ds4_quant_vec_dot_type(type);
        if (xt == DS4_TYPE_COUNT) continue;
        ds4_quantize_row(xt, src + 7 * COLS, x, COLS, NULL);
        for (int ref = 1; ref >= 0; ref--) {
            job j = {type, OP_DOT, ref, DOT_ROWS, src, imat, q, f, x};
            report("dot", ref ? "ref" : simd, type, DOT_ROWS, time_job(&j));
        }
    }
    free(src);
    free(imatrix);
    free(f);
    free(q);
    free(x);
    return 0;
}

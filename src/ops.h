/* ops.h - the CPU primitives the forward pass is written in.
 *
 * Plain float32 math on contiguous rows; weights go through the block dot
 * products of quant.h, with activations quantized to the weight type's dot
 * format first (Q8_0 for Q8_0 weights, Q8_K for K-quants and IQ2_XXS, f32 for
 * float weights). Matrix products are split over the thread pool by output
 * rows, and loop over the T tokens inside, so each weight row is read once per
 * call whatever T is.
 */
#ifndef DS4_OPS_H
#define DS4_OPS_H

#include <math.h>
#include <stdbool.h>
#include <stdint.h>

#include "model.h"
#include "threadpool.h"

/* y[t][o] = Σ_i W_mat[o][i] · x[t][i] for t < T, o < n_out.
 * x: [T][n_in] f32, y: [T][n_out] f32. */
void ds4_matmul(ds4_pool *pool, const ds4_weight *w, uint64_t mat, const float *x, int T, float *y);
/* As ds4_matmul but only output rows [row0, row0 + n_rows); y: [T][n_rows]. */
void ds4_matmul_rows(ds4_pool *pool, const ds4_weight *w, uint64_t mat, uint64_t row0, uint64_t n_rows,
                     const float *x, int T, float *y);

/* One row of a weight as floats (n_in values). */
void ds4_weight_dequant_row(const ds4_weight *w, uint64_t mat, uint64_t row, float *out);

/* out = x / sqrt(mean(x²) + eps) (· w when w != NULL). out may alias x. */
void ds4_rmsnorm(float *out, const float *x, const float *w, int n, float eps);

/* Rotary embedding on the last n_rot dims of x (interleaved pairs (2k, 2k+1)).
 * inv_freq: n_rot/2 per-pair frequencies (YaRN already folded in). inverse
 * rotates by -θ. */
void ds4_rope_tail(float *x, int dim, int n_rot, const float *inv_freq, int64_t pos, bool inverse);
/* Per-pair inverse frequencies of a layer: base^(-2k/n_rot), with YaRN
 * blending (factor > 1) between extrapolation and 1/factor interpolation. */
void ds4_rope_inv_freq(float *inv_freq, int n_rot, double base, double factor, double orig_ctx, double beta_fast,
                       double beta_slow);

/* DeepSeek's in-graph low-precision simulations (official model numerics). */
void ds4_sim_fp8_e4m3(float *x, int n);  /* 64-value blocks, power-of-two scales */
void ds4_sim_fp4_e2m1(float *x, int n);  /* 32-value blocks, power-of-two scales */
void ds4_hadamard(float *x, int n);      /* orthonormal Walsh-Hadamard, n a power of 2 */
void ds4_round_f16(float *x, int n);     /* f32 -> f16 -> f32 */

static inline float ds4_silu(float x) { return x / (1.0f + expf(-x)); }
static inline float ds4_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }
static inline float ds4_softplus(float x) { return x > 20.0f ? x : (x < -20.0f ? expf(x) : log1pf(expf(x))); }

#endif

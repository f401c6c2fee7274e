/* ds4_cuda.h - the CUDA backend's C entry points (src/cuda/).
 *
 * The backend itself is reached through backend.h (ds4_backend_select);
 * this header adds what tools and tests need beyond that: device facts for
 * ds4-bench, a timing hook, and one function per kernel family that runs it
 * on host inputs, for the op-by-op tests against the CPU functions
 * (tests/cuda/test_cuda_ops.c). Every function returns false with a
 * one-line reason on failure.
 */
#ifndef DS4_CUDA_H
#define DS4_CUDA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "compressor.h"
#include "engine.h"

#ifdef __cplusplus
extern "C" {
#endif

const ds4_backend *ds4_cuda_backend_probe(char *err, size_t errlen);

typedef struct {
    char name[128];
    double mem_total_gib, mem_free_gib;
    double peak_bw_gbs;       /* from the memory clock and bus width (0 if unknown) */
    size_t weight_bytes;      /* model weights on the device */
    size_t kv_bytes;          /* session KV state on the device (0 without a session) */
    size_t scratch_bytes;     /* session scratch */
} ds4_cuda_info;
bool ds4_cuda_info_get(const ds4_model *m, const ds4_session *s, ds4_cuda_info *out);

/* Bytes a decode step reads from device memory (weights actually touched:
 * every dense weight, K routed experts per layer, one embedding row, the LM
 * head; plus the KV rows attended at position pos). The roofline numerator. */
double ds4_cuda_decode_bytes(const ds4_model *m, uint64_t pos);

/* Per-phase decode timing (ms, CUDA events, no graph): embedding, each layer,
 * the output head. times[n_layer + 2]. Runs one decode step of `token`. */
bool ds4_cuda_profile_decode(ds4_session *s, int32_t token, float *times_ms, char *err, size_t errlen);

/* Where the time of the last ds4_cuda_profile_decode step went, by forward
 * step summed over layers, largest first (one line). */
void ds4_cuda_profile_breakdown(char *buf, size_t buflen);

/* Measurement aid (ds4-bench --skip-sweep): decode graphs leave out the
 * steps named in the comma list (NULL or "": none; the results are wrong
 * while set); ds4_cuda_step_names: the decode steps, ';'-separated. */
bool ds4_cuda_set_skip(ds4_session *s, const char *steps);
const char *ds4_cuda_step_names(void);

/* Greedy decode of n tokens entirely on the device (argmax there, no logits
 * copy): the decode loop ds4-bench times. out (n ids) may be NULL. */
bool ds4_cuda_decode_greedy(ds4_session *s, int32_t first, uint32_t n, int32_t *out, char *err, size_t errlen);

/* Fills the session's KV state with random rows as if n tokens had been
 * evaluated (ds4-bench --kv-fill random: decode speed at a deep frontier
 * without the prefill). */
bool ds4_cuda_fake_fill(ds4_session *s, uint32_t n, uint64_t seed, char *err, size_t errlen);

/* ---- op tests: host in, host out ---- */

/* y[T][n_rows] = rows [row0, row0+n_rows) of matrix mat of w, times x[T][n_in] */
bool ds4_cuda_test_matmul(const ds4_weight *w, uint64_t mat, uint64_t row0, uint64_t n_rows, const float *x, int T,
                          float *y, char *err, size_t errlen);
/* the decode router kernel (one token, F16/BF16 weights, n_in % 2048 == 0) */
/* ... with the routing done by its last block (launched twice) against
 * route_kernel on its logits: ids/wts_in [2][K], ids/wts_sep [K] */
bool ds4_cuda_test_router_route(const ds4_weight *w, const float *x, uint32_t K, const float *bias,
                                const int32_t *tid2eid, uint32_t n_tok, int32_t token, bool norm, float scale,
                                int32_t *ids_in, float *wts_in, int32_t *ids_sep, float *wts_sep, char *err,
                                size_t errlen);
bool ds4_cuda_test_router(const ds4_weight *w, const float *x, float *y, char *err, size_t errlen);
/* products of >= min_T tokens on tensor cores (BF16); 0: always the exact kernels */
void ds4_cuda_test_set_mma(unsigned min_T);
/* the token tile of tensor-core expert products: 32, 64, or 0 (by size) */
void ds4_cuda_test_set_mma_moe_bn(unsigned bn);
/* routed-expert products over sorted pairs: y[p] = W[ids[p]] x[p / x_div] */
bool ds4_cuda_test_moe_mm(const ds4_weight *w, const int32_t *ids, uint32_t n_pairs, const float *x, uint32_t x_div,
                          float *y, char *err, size_t errlen);
/* activation quantization, bytes as the CPU lays them out (Q8_0 or Q8_K) */
bool ds4_cuda_test_quantize(ds4_dtype type, const float *x, int rows, int n, void *out, char *err, size_t errlen);
/* HC: mix, split, collapse + RMSNorm(norm) (pre/post/comb/out) */
bool ds4_cuda_test_hc_pre(const ds4_weight *fn, const float *scale, const float *base, const float *R, uint32_t T,
                          uint32_t C, uint32_t E, uint32_t iters, float rms_eps, float hc_eps, const float *norm,
                          float *pre, float *post, float *comb, float *out, char *err, size_t errlen);
bool ds4_cuda_test_hc_post(float *R, const float *y, const float *post, const float *comb, uint32_t T, uint32_t C,
                           uint32_t E, char *err, size_t errlen);
/* heads [T][H][D]: (norm) + RoPE at pos0+t (+ Hadamard/FP4), in place */
bool ds4_cuda_test_head_post(float *x, uint32_t T, uint32_t H, uint32_t D, uint32_t n_rot, const float *inv_freq,
                             int64_t pos0, bool norm, bool inverse, bool hadamard_fp4, char *err, size_t errlen);
/* KV rows: norm, RoPE, FP8, F16 -> ring rows (raw [raw_cap][D], in/out) */
bool ds4_cuda_test_kv_store(const float *kv, uint32_t T, uint32_t D, const float *norm, uint32_t n_rot,
                            const float *inv_freq, int64_t pos0, bool fp8, bool f16, float *raw, uint32_t raw_cap,
                            char *err, size_t errlen);
bool ds4_cuda_test_route(const float *logits, uint32_t T, uint32_t X, uint32_t K, const int32_t *tokens,
                         const int32_t *tid2eid, uint32_t vocab, const float *bias, bool norm, float scale, int32_t *ids,
                         float *wts, char *err, size_t errlen);
bool ds4_cuda_test_moe_sum(const float *ysh, const float *ye, const int32_t *ids, uint32_t T, uint32_t K, uint32_t E,
                           float *y, char *err, size_t errlen);
/* SwiGLU (and RMSNorm) with their quantized forms; *qdiff: the values of
 * those forms that differ from quantize_kernel's of the float result */
bool ds4_cuda_test_swiglu(const float *g, const float *u, const float *w, uint32_t rows, uint32_t F, float c, float *h,
                          long *qdiff, char *err, size_t errlen);
bool ds4_cuda_test_rmsnorm(const float *x, uint32_t rows, uint32_t n, const float *w, float eps, float *out, long *qdiff,
                           char *err, size_t errlen);
/* compressor over T tokens: states (in/out) and the rows it appends
 * (rows: [comp_cap][dim], in/out) */
bool ds4_cuda_test_compress(uint32_t ratio, uint32_t dim, uint32_t n_rot, const float *inv_freq, const float *norm,
                            bool indexer, bool sim, bool f16, const ds4_weight *ape, const float *kv, const float *sc,
                            uint32_t T, int64_t pos0, float *st_kv, float *st_sc, float *rows, uint32_t comp_cap,
                            char *err, size_t errlen);
/* the decode side branch (KV row + attention and indexer compressors, ratio
 * 0 / 4 / other) in one launch and as separate launches from the same
 * state (layout: ds4_cuda_test_side_state_floats; in/out, one copy each);
 * norms: kv [D], compressor [D], indexer [ID] */
size_t ds4_cuda_test_side_state_floats(uint32_t D, uint32_t ID, uint32_t ratio, uint32_t raw_cap, uint32_t comp_cap);
bool ds4_cuda_test_side_decode(uint32_t D, uint32_t ID, uint32_t ratio, uint32_t n_rot, const float *inv_freq,
                               const float *norms, const ds4_weight *ape, const ds4_weight *idx_ape, const float *kv,
                               const float *ckv, const float *csc, const float *ikv, const float *isc, int64_t pos0,
                               uint32_t raw_cap, uint32_t comp_cap, float *state_fused, float *state_sep, char *err,
                               size_t errlen);
bool ds4_cuda_test_indexer(const float *qi, const float *wi, float wscale, const float *keys, uint32_t n_keys,
                           uint32_t T, uint32_t I, uint32_t ID, uint32_t K, int64_t pos0, uint32_t *sel,
                           uint32_t *n_sel, char *err, size_t errlen);
/* the decode attention applies the query heads' RMSNorm (eps) + RoPE itself (off: q as given) */
void ds4_cuda_test_set_attn_q_post(bool on, float eps);
/* attention of q [T][H][D] (sel/n_sel may be NULL); o [T][H][D]; splits 0: the
 * tensor-core prefill kernel (cu_attention_tc) */
bool ds4_cuda_test_attention(const float *q, uint32_t T, uint32_t H, uint32_t D, uint32_t n_swa, uint32_t ratio,
                             uint32_t top_k, uint32_t n_rot, const float *inv_freq, const float *sinks,
                             const float *raw, uint32_t raw_cap, const float *comp, uint32_t n_comp, const uint32_t *sel,
                             const uint32_t *n_sel, int64_t pos0, uint32_t splits, float *o, char *err, size_t errlen);
bool ds4_cuda_test_head_hc(const ds4_weight *fn, const float *scale, const float *base, const float *R, uint32_t T,
                           uint32_t C, uint32_t E, float rms_eps, float hc_eps, const float *norm, float *x, char *err,
                           size_t errlen);
/* hc_post forming the next mix (fn), then hc_pre (head false) or the output
 * HC head (head true) from those partials; R updated in place. gram (T = 1,
 * C = 4): hc_post also forms R's Gram partials and hc_pre collapses over many
 * blocks with them (the decode path; 2: the Sinkhorn split its own launch). out_q8 (T * E bytes) and out_qk_scale
 * (T * E / 256), when not NULL, receive out's Q8_0 values and Q8_K scales. */
/* a decode launch: expert pairs (ids, x per pair or shared) and a dense job
 * on rows [3, n_out) of the last matrix, T = 1 */
/* ds4_cuda_test_matmul marks its job exact (as the router is: the tiled f32
 * kernel for float weights over many tokens) */
void ds4_cuda_test_set_exact_jobs(bool on);
/* G row groups of one weight against G column slices of x in one call (the
 * out_a groups: one tensor-core launch at prefill) */
bool ds4_cuda_test_matmul_groups(const ds4_weight *w, uint64_t mat, uint32_t G, uint32_t R, const float *x, int T,
                                 float *y, char *err, size_t errlen);
/* routed gate + up + SwiGLU (clamp c, weight wts[p]) in one tensor-core
 * launch -> h, and as separate gate, up and SwiGLU launches -> h_sep */
bool ds4_cuda_test_moe_swiglu(const ds4_weight *gate, const ds4_weight *up, const int32_t *ids, uint32_t n_pairs,
                              const float *x, uint32_t x_div, const float *wts, float clamp, float *h, float *h_sep,
                              char *err, size_t errlen);
/* a decode launch whose last blocks form the next activation (mode 2: RMSNorm of y = W x with weights aux,
 * 3: SwiGLU of gate W / up W2 expert pairs with route weights aux, clamp eps, 1: Q8_0/Q8_K of W's rows in
 * n_groups jobs) against the separate launches: *diff = differing elements (0 expected), y the product */
bool ds4_cuda_test_matvec_fin(const ds4_weight *w, const ds4_weight *w2, int mode, const int32_t *ids, uint32_t n_pairs,
                              uint32_t n_groups, const float *x, const float *aux, float eps, float *y, long *diff,
                              char *err, size_t errlen);
bool ds4_cuda_test_matvec_pairs(const ds4_weight *w, const int32_t *ids, uint32_t n_pairs, const float *x,
                                bool x_shared, float *y, float *y2, char *err, size_t errlen);
bool ds4_cuda_test_hc_post_fused(float *R, const float *y, const float *post, const float *comb, uint32_t T, uint32_t C,
                                 uint32_t E, const ds4_weight *fn, const float *scale, const float *base,
                                 uint32_t iters, float rms_eps, float hc_eps, const float *norm, bool head,
                                 int gram, float *pre2, float *post2, float *comb2, float *out, int8_t *out_q8,
                                 float *out_qk_scale, char *err, size_t errlen);
bool ds4_cuda_test_argmax(const float *x, uint32_t rows, uint32_t n, int32_t *out, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif

#endif

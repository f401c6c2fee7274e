/* kernels_ops.cu - the element-wise and per-row steps of the forward pass:
 * hyper-connections (mix, Sinkhorn split, collapse, expand; the expand also
 * adds the routed experts to the FFN output and forms the next mix's
 * partials, and at decode the Gram partials that let the collapse run over
 * many blocks), RMSNorm, RoPE and the official low-precision simulations on
 * heads, the MoE routing (and the decode router's logits, a block a row,
 * with the routing in its last block), SwiGLU, the per-token expert sum, the
 * pair sort for prefill MoE, the output HC head and argmax.
 *
 * Each kernel mirrors a CPU function (ops.c, forward.c, moe.c) and keeps its
 * arithmetic order where that is cheap (RMSNorm sums in double, Sinkhorn and
 * routing run on one thread exactly as written on the CPU, experts are added
 * in ascending id order); tests/cuda/test_cuda_ops.c holds each one to the
 * CPU function with a per-op tolerance.
 */
#include "cuda_internal.cuh"
#include "row_ops.cuh"

/* ------------------------------------------------------------------------ */
/* hyper-connections */

static __device__ __forceinline__ float sigmoidf_(float x) { return 1.0f / (1.0f + expf(-x)); }

#define HCM_CHUNK 1024

uint32_t cu_hc_splits(uint32_t CE) { return (CE + HCM_CHUNK - 1) / HCM_CHUNK; }
static __device__ __forceinline__ uint32_t cu_hc_splits_dev(uint32_t CE) { return (CE + HCM_CHUNK - 1) / HCM_CHUNK; }

/* Partial dots of fn rows with 1024-value slices of R (and partial sums of
 * squares): [T][M][S] floats, then [T][S] doubles after them. Many small
 * blocks, four independent loads per thread: bandwidth, not latency. */
__global__ void hc_mix_part_kernel(dweight fn, const float *R, uint32_t CE, uint32_t M, uint32_t S, float *part) {
    pdl_wait();
    pdl_trigger();
    __shared__ double red[32];
    const uint32_t m = blockIdx.x, sp = blockIdx.y, t = blockIdx.z;
    const float *Rt = R + (size_t)t * CE;
    const uint32_t i0 = sp * HCM_CHUNK + threadIdx.x * 4;
    float w[4], r[4];
#pragma unroll
    for (int k = 0; k < 4; k++) {
        const bool in = i0 + k < CE;
        r[k] = in ? Rt[i0 + k] : 0.0f;
        w[k] = in ? dw_elem(fn, m, i0 + k) : 0.0f;
    }
    const float dot = w[0] * r[0] + w[1] * r[1] + w[2] * r[2] + w[3] * r[3];
    const double d = block_sum_d((double)dot, red);
    if (threadIdx.x == 0) part[((size_t)t * M + m) * S + sp] = (float)d;
    if (m == 0) {
        double ss = 0;
#pragma unroll
        for (int k = 0; k < 4; k++) ss += (double)r[k] * r[k];
        ss = block_sum_d(ss, red);
        double *ssp = (double *)(part + (((size_t)gridDim.z * M * S + 1) & ~(size_t)1));
        if (threadIdx.x == 0) ssp[(size_t)t * S + sp] = ss;
    }
}

/* partials: [T][M][S] floats, then [T][S] doubles (sums of squares), S the
 * larger of the two producers' slice counts (cu_hc_mix: 1024-value slices of
 * C*E; hc_post with the next mix fused: HCP_COLS columns of E) */
#define HCP_BLOCK 256 /* threads of hc_post_kernel */
#define HCP_COLS 64   /* columns of E a hc_post block updates */
#define HCP_FN_SMEM (96 * 1024) /* most shared memory for hc_post's fn tile */
uint32_t cu_hc_post_splits(uint32_t E) { return (E + HCP_COLS - 1) / HCP_COLS; }
size_t cu_hc_part_floats(uint32_t T, uint32_t M, uint32_t C, uint32_t E) {
    const size_t S1 = cu_hc_splits(C * E), S2 = cu_hc_post_splits(E), S = S1 > S2 ? S1 : S2;
    return (((size_t)T * M * S + 1) & ~(size_t)1) + 2 * (size_t)T * S;
}

uint32_t cu_hc_mix(cudaStream_t st, const dweight &fn, const float *R, uint32_t T, uint32_t CE, float rms_eps,
                   float *part) {
    (void)rms_eps;
    const uint32_t S = cu_hc_splits(CE);
    dim3 grid(fn.n_out, S, T);
    cu_launch(hc_mix_part_kernel, grid, 256, 0, st, fn, R, CE, fn.n_out, S, part);
    return S;
}

/* mix[m] of token t from the partials: warp w sums the S slices of rows
 * m = w, w + nw, ... (and row M: the sums of squares) in double; every
 * thread of the block calls it, the result is in mix[] after a barrier */
#define HC_MIX_MAX 80 /* (2 + HC_MAX) * HC_MAX */
static __device__ void hc_mix_finish(const float *part, uint32_t T, uint32_t M, uint32_t S, uint32_t CE, float eps,
                                     uint32_t t, float *mix) {
    __shared__ double s_d[HC_MIX_MAX + 1];
    const uint32_t lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    const double *ssp = (const double *)(part + (((size_t)T * M * S + 1) & ~(size_t)1));
    for (uint32_t m = wid; m <= M; m += nw) {
        double d = 0;
        for (uint32_t sp = lane; sp < S; sp += 32) d += m < M ? (double)part[((size_t)t * M + m) * S + sp] : ssp[(size_t)t * S + sp];
        d = warp_sum_d(d);
        if (lane == 0) s_d[m] = d;
    }
    __syncthreads();
    if (threadIdx.x < M) mix[threadIdx.x] = (float)s_d[threadIdx.x] * (float)(1.0 / sqrt(s_d[M] / CE + (double)eps));
    __syncthreads();
}

/* forward.c hc_split, line for line */
static __device__ void hc_split_dev(const float *mix, const float *scale, const float *base, uint32_t C, uint32_t iters,
                                    float eps, float *pre, float *post, float *comb) {
    for (uint32_t i = 0; i < C; i++) {
        pre[i] = sigmoidf_(mix[i] * scale[0] + base[i]) + eps;
        post[i] = 2.0f * sigmoidf_(mix[C + i] * scale[1] + base[C + i]);
    }
    for (uint32_t a = 0; a < C; a++) {
        float *row = comb + a * C;
        float m = -INFINITY;
        for (uint32_t b = 0; b < C; b++) {
            row[b] = mix[2 * C + a * C + b] * scale[2] + base[2 * C + a * C + b];
            m = fmaxf(m, row[b]);
        }
        float s = 0;
        for (uint32_t b = 0; b < C; b++) s += (row[b] = expf(row[b] - m));
        for (uint32_t b = 0; b < C; b++) row[b] = row[b] / s + eps;
    }
    for (uint32_t it = 0; it < iters; it++) {
        if (it > 0)
            for (uint32_t a = 0; a < C; a++) {
                float s = eps;
                for (uint32_t b = 0; b < C; b++) s += comb[a * C + b];
                for (uint32_t b = 0; b < C; b++) comb[a * C + b] /= s;
            }
        for (uint32_t b = 0; b < C; b++) {
            float s = eps;
            for (uint32_t a = 0; a < C; a++) s += comb[a * C + b];
            for (uint32_t a = 0; a < C; a++) comb[a * C + b] /= s;
        }
    }
}

#define HC_MAX 8

/* hc_split by warp 0, lane = a*C + b of the comb matrix (C*C <= 32): every
 * row / column sum is formed by each lane from the same values in the CPU's
 * order (shuffles), so the result is the CPU's. */
static __device__ void hc_split_warp(const float *mix, const float *scale, const float *base, uint32_t C,
                                     uint32_t iters, float eps, float *pre, float *post, float *comb) {
    const uint32_t lane = threadIdx.x & 31, a = lane / C, b = lane % C;
    const bool in = lane < C * C;
    if (lane < C) {
        pre[lane] = sigmoidf_(mix[lane] * scale[0] + base[lane]) + eps;
        post[lane] = 2.0f * sigmoidf_(mix[C + lane] * scale[1] + base[C + lane]);
    }
    float v = in ? mix[2 * C + lane] * scale[2] + base[2 * C + lane] : 0.0f;
    /* softmax along b for each a */
    float m = -INFINITY;
    for (uint32_t k = 0; k < C; k++) m = fmaxf(m, __shfl_sync(0xffffffffu, v, (a * C + k) & 31));
    float e = expf(v - m);
    float s = 0;
    for (uint32_t k = 0; k < C; k++) s += __shfl_sync(0xffffffffu, e, (a * C + k) & 31);
    v = e / s + eps;
    /* x / s as x * (1 / s): one rounding more than the CPU, far cheaper in
     * this 40-step dependent chain (the op test holds it to 1e-5) */
    for (uint32_t it = 0; it < iters; it++) {
        if (it > 0) {
            float rs = eps;
            for (uint32_t k = 0; k < C; k++) rs += __shfl_sync(0xffffffffu, v, (a * C + k) & 31);
            v *= __frcp_rn(rs);
        }
        float cs = eps;
        for (uint32_t k = 0; k < C; k++) cs += __shfl_sync(0xffffffffu, v, (k * C + b) & 31);
        v *= __frcp_rn(cs);
    }
    if (in) comb[lane] = v;
}

/* blockIdx.y 0: mix, pre weights, x = Σ pre R, RMSNorm, quantized forms;
 * blockIdx.y 1: mix and the Sinkhorn split (post, comb) — a latency-bound
 * chain on one warp that now runs beside the collapse instead of before it.
 * Both blocks compute the pre weights with the same arithmetic. */
__global__ void hc_pre_kernel(hc_params hp, const float *part, uint32_t T, const float *R, uint32_t E,
                              const float *norm, float eps, float *pre, float *post, float *comb, dact out) {
    if (norm && blockIdx.y == 0 && threadIdx.x == 0)
        l2_prefetch((const uint8_t *)norm, (size_t)E * 4, (const uint8_t *)norm, (const uint8_t *)(norm + E));
    pdl_wait();
    pdl_trigger();
    extern __shared__ float s_x[];
    __shared__ float s_pre[HC_MAX], s_post[HC_MAX], s_comb[HC_MAX * HC_MAX], s_mix[(2 + HC_MAX) * HC_MAX];
    __shared__ double red[32];
    const uint32_t t = blockIdx.x, C = hp.C, M = (2 + C) * C;
    hc_mix_finish(part, T, M, hp.S ? hp.S : cu_hc_splits_dev(C * E), C * E, eps, t, s_mix);
    if (blockIdx.y == 1) {
        if (C * C <= 32) {
            if (threadIdx.x < 32) hc_split_warp(s_mix, hp.scale, hp.base, C, hp.iters, hp.eps, s_pre, s_post, s_comb);
        } else if (threadIdx.x == 0) {
            hc_split_dev(s_mix, hp.scale, hp.base, C, hp.iters, hp.eps, s_pre, s_post, s_comb);
        }
        __syncthreads();
        if (threadIdx.x < C) {
            pre[t * C + threadIdx.x] = s_pre[threadIdx.x];
            post[t * C + threadIdx.x] = s_post[threadIdx.x];
        }
        if (threadIdx.x < C * C) comb[(size_t)t * C * C + threadIdx.x] = s_comb[threadIdx.x];
        return;
    }
    if (threadIdx.x < C) s_pre[threadIdx.x] = sigmoidf_(s_mix[threadIdx.x] * hp.scale[0] + hp.base[threadIdx.x]) + hp.eps;
    __syncthreads();
    const float *Rt = R + (size_t)t * C * E;
    #pragma unroll 4
    for (uint32_t e = threadIdx.x; e < E; e += blockDim.x) {
        float v[HC_MAX];
#pragma unroll
        for (uint32_t h = 0; h < HC_MAX; h++)
            if (h < C) v[h] = Rt[h * E + e];
        float s = 0;
#pragma unroll
        for (uint32_t h = 0; h < HC_MAX; h++)
            if (h < C) s += s_pre[h] * v[h];
        s_x[e] = s;
    }
    __syncthreads();
    srow_rmsnorm(s_x, E, norm, eps, red);
    #pragma unroll 4
    for (uint32_t e = threadIdx.x; e < E; e += blockDim.x) out.f[(size_t)t * E + e] = s_x[e];
    const qrow q = qrow_of(out, t);
    srow_quantize(s_x, E, q.q8, q.d8, q.qk, q.dk, q.bk);
}

/* One token with the Gram partials of R (hc_post's): blocks [0, ncb) each
 * collapse 256 columns, block ncb (when launched) runs the Sinkhorn split
 * (alone: cu_hc_split, on the side stream). The
 * RMSNorm's sum of squares of x = sum_c pre_c R_c is pre^T G pre (double,
 * from G's exact products), so a block needs no other block's columns:
 * loads of R and of the partials in flight together, one barrier, then the
 * block's Q8_0 blocks and Q8_K block. The mix and pre weights are
 * hc_pre_kernel's arithmetic; the norm's scale differs from the sum over
 * the rounded x by double rounding only. */
#define HCG_COLS 256
template <uint32_t C>
__global__ void __launch_bounds__(HCG_COLS) hc_pre_gram_kernel(hc_params hp, const float *part, const double *gram,
                                                              const float *R, uint32_t E, const float *norm, float eps,
                                                              float *pre, float *post, float *comb, dact out,
                                                              uint32_t ncb) {
    constexpr uint32_t M = (2 + C) * C, NG = C * (C + 1) / 2, ROWS = C + 1 + NG;
    const uint32_t nb = ncb, S = hp.S, e0 = blockIdx.x * HCG_COLS, e = e0 + threadIdx.x;
    const uint32_t lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
    const float w = blockIdx.x < nb && norm ? norm[e] : 1.0f; /* a weight: before pdl_wait */
    pdl_wait();
    pdl_trigger();
    if (blockIdx.x == nb) { /* the Sinkhorn split (post, comb) and pre */
        __shared__ float s_mix[HC_MIX_MAX], s_pre[HC_MAX], s_post[HC_MAX], s_comb[HC_MAX * HC_MAX];
        hc_mix_finish(part, 1, M, S, C * E, eps, 0, s_mix);
        if (wid) return;
        hc_split_warp(s_mix, hp.scale, hp.base, C, hp.iters, hp.eps, s_pre, s_post, s_comb);
        __syncwarp();
        if (lane < C) {
            pre[lane] = s_pre[lane];
            post[lane] = s_post[lane];
        }
        if (lane < C * C) comb[lane] = s_comb[lane];
        return;
    }
    float v[C];
#pragma unroll
    for (uint32_t c = 0; c < C; c++) v[c] = R[(size_t)c * E + e];
    /* the partials' sums: mix rows 0..C-1 (hc_mix_finish's order), the sum
     * of squares of R, the Gram entries */
    __shared__ double s_d[ROWS];
    __shared__ float s_x[HCG_COLS];
    const double *ssp = (const double *)(part + (((size_t)M * S + 1) & ~(size_t)1));
    for (uint32_t r = wid; r < ROWS; r += HCG_COLS / 32) {
        double d = 0;
        for (uint32_t sp = lane; sp < S; sp += 32)
            d += r < C ? (double)part[(size_t)r * S + sp] : r == C ? ssp[sp] : gram[(size_t)(r - C - 1) * S + sp];
        d = warp_sum_d(d);
        if (lane == 0) s_d[r] = d;
    }
    __syncthreads();
    const float rinv = (float)(1.0 / sqrt(s_d[C] / (C * E) + (double)eps));
    float p[C];
#pragma unroll
    for (uint32_t c = 0; c < C; c++) p[c] = sigmoidf_(((float)s_d[c] * rinv) * hp.scale[0] + hp.base[c]) + hp.eps;
    double ssx = 0;
#pragma unroll
    for (uint32_t b = 0; b < C; b++)
#pragma unroll
        for (uint32_t b2 = b; b2 < C; b2++) {
            const double g = s_d[C + 1 + b * C - b * (b - 1) / 2 + (b2 - b)];
            ssx += (b == b2 ? 1.0 : 2.0) * ((double)p[b] * p[b2]) * g;
        }
    const float scale = (float)(1.0 / sqrt(ssx / E + (double)eps));
    float x = 0;
#pragma unroll
    for (uint32_t c = 0; c < C; c++) x += p[c] * v[c];
    const float y = norm ? __fmul_rn(__fmul_rn(x, scale), w) : __fmul_rn(x, scale);
    out.f[e] = y;
    s_x[threadIdx.x] = y;
    __syncthreads();
    const qrow q = qrow_of(out, 0, e0);
    srow_quantize_warps(s_x, HCG_COLS, q.q8, q.d8, q.qk, q.dk, q.bk, wid, HCG_COLS / 32);
}

size_t cu_hc_gram_doubles(uint32_t C, uint32_t E) { return (size_t)C * (C + 1) / 2 * cu_hc_post_splits(E); }

bool cu_hc_pre_gram_ok(const hc_params &hp, uint32_t T, uint32_t E) {
    return T == 1 && hp.C == 4 && hp.S && E % HCG_COLS == 0;
}

void cu_hc_split(cudaStream_t st, const hc_params &hp, const float *part, uint32_t E, float rms_eps, float *pre,
                 float *post, float *comb) {
    dact none;
    memset(&none, 0, sizeof none);
    cu_launch(hc_pre_gram_kernel<4>, 1, HCG_COLS, 0, st, hp, part, (const double *)NULL, (const float *)NULL, E,
              (const float *)NULL, rms_eps, pre, post, comb, none, 0u);
}

void cu_hc_pre(cudaStream_t st, const hc_params &hp, const float *part, const float *R, uint32_t T, uint32_t E,
               const float *norm, float rms_eps, float *pre, float *post, float *comb, dact &out, const double *gram,
               bool split_elsewhere) {
    if (gram && cu_hc_pre_gram_ok(hp, T, E)) {
        const uint32_t ncb = E / HCG_COLS;
        cu_launch(hc_pre_gram_kernel<4>, ncb + (split_elsewhere ? 0 : 1), HCG_COLS, 0, st, hp, part, gram, R, E, norm,
                  rms_eps, pre, post, comb, out, ncb);
        return;
    }
    /* decode: 1024 threads shorten the one token's chain; chunks: 256 (8
     * blocks an SM hide each other's latency: 0.30 ms a 2048-token chunk
     * with 1024) */
    cu_launch(hc_pre_kernel, dim3(T, 2), T > 1 ? 256 : 1024, E * sizeof(float), st, hp, part, T, R, E, norm, rms_eps, pre,
              post, comb, out);
}

/* Column e of token t's FFN output: the shared expert's value plus the
 * routed rows ye[t*K + k] in (expert id, k) order, the CPU's accumulation
 * order (moe_sum_kernel; hc_post_kernel with ye). */
static __device__ float moe_sum_at(float shared, const float *ye, const int32_t *ids, uint32_t t, uint32_t K,
                                   uint32_t E, uint32_t e) {
    int order[ROUTE_MAX_K];
    for (uint32_t k = 0; k < K; k++) order[k] = (int)k;
    const int32_t *id = ids + (size_t)t * K;
    for (uint32_t i = 1; i < K; i++) {
        const int v = order[i];
        int j = (int)i - 1;
        while (j >= 0 && (id[order[j]] > id[v])) { order[j + 1] = order[j]; j--; }
        order[j + 1] = v;
    }
    float s = shared;
    for (uint32_t i = 0; i < K; i++) s += ye[((size_t)t * K + order[i]) * E + e];
    return s;
}

/* The block's fn tile [M][C][HCP_COLS] (columns e0 .. e0+ncol of each of
 * the C streams, es bytes an element) -> shared memory by cp.async, one
 * commit group; weights only, so it may run before pdl_wait. */
static __device__ __forceinline__ void hc_fn_tile_copy(const dweight &fn, uint32_t C, uint32_t E, uint32_t e0,
                                                       uint32_t ncol, uint32_t es, unsigned char *s_fn) {
    const uint32_t cps = HCP_COLS * es / 16, nseg = fn.n_out * C; /* 16-byte chunks a segment */
    for (uint32_t i = threadIdx.x; i < nseg * cps; i += blockDim.x) {
        const uint32_t sg = i / cps, k = i % cps, m = sg / C, b = sg % C;
        if (k * 16 / es >= ncol) continue;
        const uint8_t *src = fn.q + (size_t)m * fn.row_bytes + ((size_t)b * E + e0) * es + 16 * k;
        cp_async16(s_fn + (size_t)sg * HCP_COLS * es + 16 * k, src);
    }
    cp_async_commit();
}

/* R = post y + comb^T R on HCP_COLS columns e of a token. With fn.q set it
 * also forms the next hyper-connection's mix partials from the new R (what
 * cu_hc_mix would compute, sliced by these column blocks): one launch and one
 * read of R fewer per hyper-connection. The old columns go through shared
 * memory first (a column's new values need all C old ones); then warps dot
 * fn rows with the new columns, one warp reduction per row. */
__global__ void __launch_bounds__(HCP_BLOCK) hc_post_kernel(float *R, const float *y, const float *post,
                                                            const float *comb, uint32_t C, uint32_t E, dweight fn,
                                                            float *part, uint32_t fn_es, const float *ye,
                                                            const int32_t *ids, uint32_t K, uint32_t T, uint32_t TB) {
    /* fn_es (2 or 4: F16/BF16 or F32 bytes an element; 0: read fn from
     * global below): the block's fn tile [M][C][HCP_COLS] is copied to
     * shared memory before pdl_wait, under the previous kernel's tail */
    extern __shared__ __align__(16) unsigned char s_fn[];
    if (fn_es) {
        const uint32_t e0_ = blockIdx.x * HCP_COLS;
        hc_fn_tile_copy(fn, C, E, e0_, E - e0_ < HCP_COLS ? E - e0_ : HCP_COLS, fn_es, s_fn);
    }
    pdl_wait();
    pdl_trigger();
    __shared__ float s_old[HC_MAX][HCP_COLS], s_new[HC_MAX][HCP_COLS], s_y[HCP_COLS];
    __shared__ double s_dot[HC_MIX_MAX + 1];
    const uint32_t e0 = blockIdx.x * HCP_COLS, ncol = E - e0 < HCP_COLS ? E - e0 : HCP_COLS;
    /* TB tokens a block (prefill): the fn tile in shared memory serves them all */
    for (uint32_t tt = 0; tt < TB; tt++) {
    const uint32_t t = blockIdx.y * TB + tt;
    if (t >= T) break;
    float *Rt = R + (size_t)t * C * E;
    for (uint32_t i = threadIdx.x; i < C * HCP_COLS; i += HCP_BLOCK) {
        const uint32_t a = i / HCP_COLS, c = i % HCP_COLS;
        s_old[a][c] = c < ncol ? Rt[a * E + e0 + c] : 0.0f;
    }
    /* the layer output: y, or with ye the FFN's y = shared + the routed
     * experts' rows in (expert id, k) order (cu_moe_sum's arithmetic) */
    if (threadIdx.x < HCP_COLS) {
        const uint32_t c = threadIdx.x;
        float v = 0.0f;
        if (c < ncol) {
            v = y[(size_t)t * E + e0 + c];
            if (ye) v = moe_sum_at(v, ye, ids, t, K, E, e0 + c);
        }
        s_y[c] = v;
    }
    __syncthreads();
    const float *cb = comb + (size_t)t * C * C;
    for (uint32_t i = threadIdx.x; i < C * HCP_COLS; i += HCP_BLOCK) {
        const uint32_t b = i / HCP_COLS, c = i % HCP_COLS;
        float s = c < ncol ? post[t * C + b] * s_y[c] : 0.0f;
        for (uint32_t a = 0; a < C; a++) s += cb[a * C + b] * s_old[a][c];
        if (c < ncol) Rt[b * E + e0 + c] = s;
        s_new[b][c] = c < ncol ? s : 0.0f;
    }
    if (!fn.q) continue; /* the next token's barrier orders s_old/s_new reuse */
    if (fn_es && tt == 0) cp_async_wait_all();
    __syncthreads();
    const uint32_t M = fn.n_out, S = gridDim.x, lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
    for (uint32_t m = wid; m <= M; m += HCP_BLOCK / 32) {
        double dd = 0;
        if (m < M) {
            float w[HC_MAX][HCP_COLS / 32];
#pragma unroll
            for (uint32_t b = 0; b < HC_MAX; b++)
#pragma unroll
                for (uint32_t k = 0; k < HCP_COLS / 32; k++) {
                    const uint32_t c = lane + 32 * k;
                    if (!(b < C && c < ncol)) w[b][k] = 0.0f;
                    else if (fn_es) {
                        const unsigned char *t = s_fn + ((size_t)m * C + b) * HCP_COLS * fn_es;
                        w[b][k] = fn_es == 4 ? ((const float *)t)[c]
                                  : fn.type == DS4_TYPE_BF16 ? bf2f(((const uint16_t *)t)[c])
                                                             : h2f(((const uint16_t *)t)[c]);
                    } else
                        w[b][k] = dw_elem(fn, m, b * E + e0 + c);
                }
            float d = 0;
#pragma unroll
            for (uint32_t b = 0; b < HC_MAX; b++)
#pragma unroll
                for (uint32_t k = 0; k < HCP_COLS / 32; k++)
                    if (b < C) d += w[b][k] * s_new[b][lane + 32 * k];
            dd = d;
        } else {
            for (uint32_t b = 0; b < C; b++)
                for (uint32_t k = 0; k < HCP_COLS / 32; k++) dd += (double)s_new[b][lane + 32 * k] * s_new[b][lane + 32 * k];
        }
        dd = warp_sum_d(dd);
        if (lane == 0) s_dot[m] = dd;
    }
    __syncthreads();
    if (threadIdx.x < M) part[((size_t)t * M + threadIdx.x) * S + blockIdx.x] = (float)s_dot[threadIdx.x];
    else if (threadIdx.x == M) {
        double *ssp = (double *)(part + (((size_t)T * M * S + 1) & ~(size_t)1));
        ssp[(size_t)t * S + blockIdx.x] = s_dot[M];
    }
    }
}

/* hc_post for chunks of several tokens: a warp per token (HCPT_TOKENS a
 * block, HCPT_TOKENS / 8 per warp), lane l updating columns e0 + l and
 * e0 + l + 32 of all CT streams in registers, then the next mix's 24 dots
 * from the block's fn tile (shared by all its tokens) with one warp sum
 * each. Compiled for the stream count and the fn tile's element type (FT 0:
 * f32, 1: f16, 2: bf16), so the dot loop is plain loads and FMAs: the
 * generic kernel's per-element type dispatch and its serial walk over a
 * block's tokens (three barriers each) made it instruction-bound at ~15x
 * the time the bytes of R need (1.6-2.0 ms a 2048-token chunk on H100).
 * Same per-lane sums as hc_post_kernel (b outer, the lane's columns inner)
 * and the same warp tree, so the mix partials are bit-identical. */
#define HCPT_TOKENS 16
template <uint32_t CT, int FT, uint32_t WPT>
__global__ void __launch_bounds__(HCP_BLOCK) hc_post_tok_kernel(float *R, const float *y, const float *post,
                                                                const float *comb, uint32_t E, dweight fn, float *part,
                                                                const float *ye, const int32_t *ids, uint32_t K,
                                                                uint32_t T, double *gram) {
    constexpr uint32_t ES = FT == 0 ? 4 : 2;
    constexpr uint32_t TPB = WPT == 1 ? HCPT_TOKENS : 1; /* tokens a block */
    extern __shared__ __align__(16) unsigned char s_fn[];
    const uint32_t e0 = blockIdx.x * HCP_COLS, ncol = E - e0 < HCP_COLS ? E - e0 : HCP_COLS;
    const uint32_t M = fn.q ? fn.n_out : 0;
    if (M) hc_fn_tile_copy(fn, CT, E, e0, ncol, ES, s_fn); /* before pdl_wait */
    const uint32_t lane = threadIdx.x & 31, wid = threadIdx.x >> 5, S = gridDim.x;
    const bool in0 = lane < ncol, in1 = lane + 32 < ncol;
    __shared__ int s_ord[HCP_BLOCK / 32][ROUTE_MAX_K];
    /* the token's experts in (id, k) order (moe_sum_at's), once a warp */
    auto expert_order = [&](uint32_t t) {
        if (lane < K) {
            const int32_t *id = ids + (size_t)t * K, me = id[lane];
            uint32_t r = 0;
            for (uint32_t j = 0; j < K; j++) r += id[j] < me || (id[j] == me && j < lane);
            s_ord[wid][r] = (int)lane;
        }
        __syncwarp();
    };
    /* One token a block (decode): R and the expert ids were written at
     * least two kernels back on every path into this launch (the last HC
     * post and the router on the main stream; the side branch and the
     * split's stream joined just before write neither), so the old columns
     * and the experts' order are read before pdl_wait; only y, the routed
     * rows and the split's post / comb wait */
    float old_early[2][CT];
    if (TPB == 1 && blockIdx.y < T) {
        const float *Rt = R + (size_t)blockIdx.y * CT * E;
#pragma unroll
        for (uint32_t k = 0; k < 2; k++)
#pragma unroll
            for (uint32_t a = 0; a < CT; a++) old_early[k][a] = (k ? in1 : in0) ? Rt[a * E + e0 + lane + 32 * k] : 0.0f;
        if (ye) expert_order(blockIdx.y);
    }
    pdl_wait();
    pdl_trigger();
    if (M) cp_async_wait_all();
    __syncthreads();
    const uint32_t phase = wid % WPT; /* this warp's share of the mix rows */
    for (uint32_t tw = wid / WPT; tw < TPB; tw += HCP_BLOCK / 32 / WPT) {
        const uint32_t t = blockIdx.y * TPB + tw;
        if (t >= T) break;
        float *Rt = R + (size_t)t * CT * E;
        const float *cb = comb + (size_t)t * CT * CT;
        if (ye && TPB > 1) expert_order(t);
        float nv[CT][2];
#pragma unroll
        for (uint32_t k = 0; k < 2; k++) {
            const uint32_t c = lane + 32 * k;
            const bool in = k ? in1 : in0;
            float yv = 0.0f, old[CT];
            if (in) {
                yv = y[(size_t)t * E + e0 + c];
                if (ye)
                    for (uint32_t i = 0; i < K; i++) yv += ye[((size_t)t * K + s_ord[wid][i]) * E + e0 + c];
            }
#pragma unroll
            for (uint32_t a = 0; a < CT; a++) old[a] = TPB == 1 ? old_early[k][a] : in ? Rt[a * E + e0 + c] : 0.0f;
#pragma unroll
            for (uint32_t b = 0; b < CT; b++) {
                float s = in ? post[t * CT + b] * yv : 0.0f;
#pragma unroll
                for (uint32_t a = 0; a < CT; a++) s += cb[a * CT + b] * old[a];
                nv[b][k] = in ? s : 0.0f;
            }
        }
        if (WPT > 1) __syncthreads(); /* every warp of the token has read the old columns */
        if (phase == 0)
#pragma unroll
            for (uint32_t k = 0; k < 2; k++)
                if (k ? in1 : in0)
#pragma unroll
                    for (uint32_t b = 0; b < CT; b++) Rt[b * E + e0 + lane + 32 * k] = nv[b][k];
        __syncwarp(); /* s_ord is rewritten for the warp's next token */
        if (!M) continue;
        for (uint32_t m = phase; m < M; m += WPT) {
            float d = 0;
#pragma unroll
            for (uint32_t b = 0; b < CT; b++) {
                const unsigned char *tp = s_fn + ((size_t)m * CT + b) * HCP_COLS * ES;
#pragma unroll
                for (uint32_t k = 0; k < 2; k++) {
                    const uint32_t c = lane + 32 * k;
                    const float w = FT == 0 ? ((const float *)tp)[c]
                                    : FT == 2 ? bf2f(((const uint16_t *)tp)[c]) : h2f(((const uint16_t *)tp)[c]);
                    if (k ? in1 : in0) d += w * nv[b][k];
                }
            }
            const double dd = warp_sum_d((double)d);
            if (lane == 0) part[((size_t)t * M + m) * S + blockIdx.x] = (float)dd;
        }
        if (WPT > 1 && gram) { /* one token: the Gram partials, entry i by warp i % WPT */
#pragma unroll
            for (uint32_t b = 0; b < CT; b++)
#pragma unroll
                for (uint32_t b2 = b; b2 < CT; b2++) {
                    const uint32_t i = b * CT - b * (b - 1) / 2 + (b2 - b);
                    if (i % WPT != phase) continue;
                    double g = (double)nv[b][0] * nv[b2][0] + (double)nv[b][1] * nv[b2][1];
                    g = warp_sum_d(g);
                    if (lane == 0) gram[(size_t)i * S + blockIdx.x] = g;
                }
        }
        if (phase) continue;
        double ss = 0;
#pragma unroll
        for (uint32_t b = 0; b < CT; b++)
#pragma unroll
            for (uint32_t k = 0; k < 2; k++) ss += (double)nv[b][k] * nv[b][k];
        ss = warp_sum_d(ss);
        if (lane == 0) {
            double *ssp = (double *)(part + (((size_t)T * M * S + 1) & ~(size_t)1));
            ssp[(size_t)t * S + blockIdx.x] = ss;
        }
    }
}

template <uint32_t CT, int FT, uint32_t WPT>
static void hc_post_tok_launch(dim3 grid, size_t smem, cudaStream_t st, float *R, const float *y, const float *post,
                               const float *comb, uint32_t E, const dweight &fn, float *part, const float *ye,
                               const int32_t *ids, uint32_t K, uint32_t T, double *gram) {
    static bool attr = false;
    if (!attr) {
        cudaFuncSetAttribute(hc_post_tok_kernel<CT, FT, WPT>, cudaFuncAttributeMaxDynamicSharedMemorySize, HCP_FN_SMEM);
        attr = true;
    }
    cu_launch(hc_post_tok_kernel<CT, FT, WPT>, grid, HCP_BLOCK, smem, st, R, y, post, comb, E, fn, part, ye, ids, K, T,
              gram);
}

uint32_t cu_hc_post(cudaStream_t st, float *R, const float *y, const float *post, const float *comb, uint32_t T,
                    uint32_t C, uint32_t E, const dweight *next_fn, float *part, const float *ye, const int32_t *ids,
                    uint32_t K, double *gram, bool *gram_formed) {
    dweight none;
    memset(&none, 0, sizeof none);
    if (gram_formed) *gram_formed = false;
    const bool mix = next_fn && next_fn->q && next_fn->n_out <= HC_MIX_MAX && part;
    const uint32_t TB = T >= 64 ? 8 : 1; /* tokens a block */
    dim3 grid(cu_hc_post_splits(E), (T + TB - 1) / TB);
    /* the fn tile through shared memory when its rows allow 16-byte copies */
    uint32_t es = 0;
    if (mix) {
        const int ty = next_fn->type;
        const uint32_t e = ty == DS4_TYPE_F32 ? 4 : ty == DS4_TYPE_F16 || ty == DS4_TYPE_BF16 ? 2 : 0;
        const size_t bytes = (size_t)next_fn->n_out * C * HCP_COLS * e;
        if (e && next_fn->row_bytes % 16 == 0 && (E * e) % 16 == 0 && ((uintptr_t)next_fn->q & 15) == 0 &&
            bytes <= HCP_FN_SMEM)
            es = e;
    }
    static bool attr = false;
    if (!attr) {
        cudaFuncSetAttribute(hc_post_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, HCP_FN_SMEM);
        attr = true;
    }
    const size_t smem = es ? (size_t)next_fn->n_out * C * HCP_COLS * es : 0;
    /* 4 streams (DS4 Flash) with the fn tile in shared memory or no mix to
     * form: the specialised kernel, a warp per token for chunks, the block's
     * 8 warps sharing one token's mix rows for decode (DS4_CUDA_HCPOST_GENERIC=1:
     * the generic kernel, for measurements) */
    static int generic = -1;
    if (generic < 0) {
        const char *e = getenv("DS4_CUDA_HCPOST_GENERIC");
        generic = e && *e == '1';
    }
    if (!generic && C == 4 && (es || !mix)) {
        const float *yes = ye && K <= ROUTE_MAX_K ? ye : NULL;
        const dweight &fw = mix ? *next_fn : none;
        float *pp = mix ? part : NULL;
        const int ft = !mix || es == 4 ? 0 : next_fn->type == DS4_TYPE_BF16 ? 2 : 1;
        if (T > 1) {
            const dim3 g2(grid.x, (T + HCPT_TOKENS - 1) / HCPT_TOKENS);
            if (ft == 0) hc_post_tok_launch<4, 0, 1>(g2, smem, st, R, y, post, comb, E, fw, pp, yes, ids, K, T, NULL);
            else if (ft == 2) hc_post_tok_launch<4, 2, 1>(g2, smem, st, R, y, post, comb, E, fw, pp, yes, ids, K, T, NULL);
            else hc_post_tok_launch<4, 1, 1>(g2, smem, st, R, y, post, comb, E, fw, pp, yes, ids, K, T, NULL);
        } else {
            const dim3 g1(grid.x, T);
            double *gr = mix ? gram : NULL;
            if (ft == 0) hc_post_tok_launch<4, 0, 8>(g1, smem, st, R, y, post, comb, E, fw, pp, yes, ids, K, T, gr);
            else if (ft == 2) hc_post_tok_launch<4, 2, 8>(g1, smem, st, R, y, post, comb, E, fw, pp, yes, ids, K, T, gr);
            else hc_post_tok_launch<4, 1, 8>(g1, smem, st, R, y, post, comb, E, fw, pp, yes, ids, K, T, gr);
            if (gram_formed) *gram_formed = gr != NULL;
        }
        return mix ? grid.x : 0;
    }
    cu_launch(hc_post_kernel, grid, HCP_BLOCK, smem, st, R, y, post, comb, C, E, mix ? *next_fn : none,
              mix ? part : NULL, es, ye && K <= ROUTE_MAX_K ? ye : NULL, ids, K, T, TB);
    return mix ? grid.x : 0;
}

/* ------------------------------------------------------------------------ */
/* norms, heads, KV rows */

__global__ void rmsnorm_kernel(const float *x, dact out, const float *w, uint32_t n, float eps) {
    pdl_wait();
    pdl_trigger();
    extern __shared__ float s_row[];
    __shared__ double red[32];
    const size_t o = (size_t)blockIdx.x * n;
    #pragma unroll 4
    for (uint32_t i = threadIdx.x; i < n; i += blockDim.x) s_row[i] = x[o + i];
    __syncthreads();
    srow_rmsnorm(s_row, n, w, eps, red);
    if (out.f) {
        #pragma unroll 4
        for (uint32_t i = threadIdx.x; i < n; i += blockDim.x) out.f[o + i] = s_row[i];
    }
    const qrow q = qrow_of(out, blockIdx.x);
    srow_quantize(s_row, n, q.q8, q.d8, q.qk, q.dk, q.bk);
}

/* One row over n / 256 blocks (decode): every block forms the whole row's
 * sum of squares in rmsnorm_kernel's order (256 threads, the same strides:
 * the same double), then normalises and quantizes only its 256 values, its
 * norm weights loaded before pdl_wait. Bit-identical to rmsnorm_kernel; a
 * chain of one quantization round instead of n / 256 Q8_0 rounds a warp.
 * Not in place (a block would overwrite values another still sums): out.f
 * is x only when the caller dropped the floats (out.f NULL). */
#define RMS_SLICE 256
__global__ void __launch_bounds__(RMS_SLICE) rmsnorm_slice_kernel(const float *x, dact out, const float *w, uint32_t n,
                                                                  float eps) {
    const uint32_t i0 = blockIdx.x * RMS_SLICE, i = i0 + threadIdx.x;
    const float wi = w ? w[i] : 1.0f;
    pdl_wait();
    pdl_trigger();
    __shared__ float s_x[RMS_SLICE];
    __shared__ double red[32];
    double ss = 0;
    #pragma unroll 4
    for (uint32_t k = threadIdx.x; k < n; k += RMS_SLICE) {
        const float v = x[k];
        ss += (double)v * v;
    }
    ss = block_sum_d(ss, red);
    const float scale = (float)(1.0 / sqrt(ss / n + (double)eps));
    const float v = x[i];
    const float y = w ? __fmul_rn(__fmul_rn(v, scale), wi) : __fmul_rn(v, scale);
    s_x[threadIdx.x] = y;
    if (out.f) out.f[i] = y;
    __syncthreads();
    const qrow q = qrow_of(out, 0, i0);
    srow_quantize_warps(s_x, RMS_SLICE, q.q8, q.d8, q.qk, q.dk, q.bk, threadIdx.x >> 5, RMS_SLICE / 32);
}

void cu_rmsnorm(cudaStream_t st, const float *x, dact &out, const float *w, uint32_t rows, uint32_t n, float eps) {
    if (rows == 1 && n % RMS_SLICE == 0 && n <= 16 * RMS_SLICE && x != out.f) {
        cu_launch(rmsnorm_slice_kernel, n / RMS_SLICE, RMS_SLICE, 0, st, x, out, w, n, eps);
        return;
    }
    cu_launch(rmsnorm_kernel, rows, 256, n * sizeof(float), st, x, out, w, n, eps);
}

/* blocks [0, T a.H): heads of a, then T b.H heads of b (decode: the
 * queries and the indexer queries in one launch; WIDE for decode, see
 * sincos_angle) */
template <bool WIDE>
__global__ void head_post_kernel(head_job a, head_job b, const int64_t *pos0, float eps) {
    pdl_wait();
    pdl_trigger();
    extern __shared__ float s_row[];
    __shared__ double red[32];
    const uint32_t T = gridDim.x / (a.H + b.H);
    const bool first = blockIdx.x < T * a.H;
    const head_job &J = first ? a : b;
    const uint32_t blk = first ? blockIdx.x : blockIdx.x - T * a.H, t = blk / J.H, D = J.D;
    float *row = J.x + (size_t)blk * D;
    #pragma unroll 4
    for (uint32_t i = threadIdx.x; i < D; i += blockDim.x) s_row[i] = row[i];
    __syncthreads();
    if (J.norm) srow_rmsnorm(s_row, D, NULL, eps, red);
    srow_rope<WIDE>(s_row, D, J.n_rot, J.inv_freq, pos0[0] + t, J.inverse);
    if (J.had) {
        srow_hadamard(s_row, D);
        srow_fp4(s_row, D);
    }
    #pragma unroll 4
    for (uint32_t i = threadIdx.x; i < D; i += blockDim.x) row[i] = s_row[i];
}

void cu_head_post2(cudaStream_t st, const head_job &a, const head_job &b, uint32_t T, const int64_t *pos0, float eps,
                   bool wide) {
    const uint32_t D = a.D > b.D ? a.D : b.D;
    if (T == 1 && wide) cu_launch(head_post_kernel<true>, a.H + b.H, 128, D * sizeof(float), st, a, b, pos0, eps);
    else cu_launch(head_post_kernel<false>, T * (a.H + b.H), 128, D * sizeof(float), st, a, b, pos0, eps);
}

/* head_post_kernel for chunks without the Hadamard step: a warp per head
 * row (8 a block, no block barriers), lane l holding 16-byte pieces l, l+32,
 * ... of the row (RoPE pairs never straddle a piece); RMSNorm sums in
 * double as srow_rmsnorm, the rotation with its arithmetic. 0.28 ms for the
 * queries of a 2048-token chunk with a 128-thread block a row. */
#define HPW_MAXV 8 /* float4 pieces a lane: head_dim <= 1024 */
__global__ void head_post_warp_kernel(float *x, uint32_t rows, uint32_t H, uint32_t D, uint32_t n_rot,
                                      const float *inv_freq, const int64_t *pos0, int norm, float eps, int inverse) {
    pdl_wait();
    pdl_trigger();
    const uint32_t lane = threadIdx.x & 31, row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= rows) return;
    float *xr = x + (size_t)row * D;
    const uint32_t nv = D / 128; /* pieces a lane */
    float4 v[HPW_MAXV];
    double ss = 0;
#pragma unroll
    for (uint32_t k = 0; k < HPW_MAXV; k++)
        if (k < nv) {
            v[k] = ((const float4 *)xr)[lane + 32 * k];
            ss += (double)v[k].x * v[k].x + (double)v[k].y * v[k].y + (double)v[k].z * v[k].z + (double)v[k].w * v[k].w;
        }
    if (norm) {
        ss = warp_sum_d(ss);
        const float scale = (float)(1.0 / sqrt(ss / D + (double)eps));
#pragma unroll
        for (uint32_t k = 0; k < HPW_MAXV; k++)
            if (k < nv) {
                v[k].x = __fmul_rn(v[k].x, scale);
                v[k].y = __fmul_rn(v[k].y, scale);
                v[k].z = __fmul_rn(v[k].z, scale);
                v[k].w = __fmul_rn(v[k].w, scale);
            }
    }
    const uint32_t rot0 = D - n_rot;
    const int64_t p = pos0[0] + row / H;
#pragma unroll
    for (uint32_t k = 0; k < HPW_MAXV; k++) {
        if (k >= nv) break;
        const uint32_t i = 4 * (lane + 32 * k);
        float e[4] = {v[k].x, v[k].y, v[k].z, v[k].w};
#pragma unroll
        for (int h = 0; h < 2; h++)
            if (i + 2 * h >= rot0) rope_pair(e[2 * h], e[2 * h + 1], p, inv_freq[(i + 2 * h - rot0) / 2], inverse);
        ((float4 *)xr)[lane + 32 * k] = make_float4(e[0], e[1], e[2], e[3]);
    }
}

void cu_head_post(cudaStream_t st, float *x, uint32_t T, uint32_t H, uint32_t D, uint32_t n_rot, const float *inv_freq,
                  const int64_t *pos0, bool norm, float eps, bool inverse, bool hadamard_fp4, bool wide) {
    if (T > 1 && !hadamard_fp4 && D % 128 == 0 && D / 128 <= HPW_MAXV && n_rot % 4 == 0 && n_rot <= D) {
        const uint32_t rows = T * H;
        cu_launch(head_post_warp_kernel, (rows + 7) / 8, 256, 0, st, x, rows, H, D, n_rot, inv_freq, pos0, (int)norm,
                  eps, (int)inverse);
        return;
    }
    const head_job a = {x, H, D, n_rot, inv_freq, norm, inverse, hadamard_fp4}, none = {NULL, 0, 0, 0, NULL, 0, 0, 0};
    cu_head_post2(st, a, none, T, pos0, eps, wide);
}

/* ------------------------------------------------------------------------ */
/* MoE */


static __device__ __forceinline__ float softplusf_(float x) {
    return x > 20.0f ? x : (x < -20.0f ? expf(x) : log1pf(expf(x)));
}


/* The routing of token t from its logits [X] (a block of >= 32 threads;
 * s_prob: 2 X floats of shared memory): sqrt(softplus), + bias, top-K or the
 * hash table, weights normalised (moe.c ds4_moe_route, same order). The
 * logits are read through L2 (the fused router writes them from other
 * blocks). */
static __device__ void route_token(const float *logits, uint32_t X, const route_args &ra, uint32_t t, float *s_prob) {
    const uint32_t K = ra.K;
    const int32_t *tid2eid = ra.tid2eid;
    const float *bias = ra.bias;
    float *s_val = s_prob + X;
    __shared__ int s_ids[ROUTE_MAX_K];
    const int lane = threadIdx.x & 31;
    #pragma unroll 4
    for (uint32_t e = threadIdx.x; e < X; e += blockDim.x) {
        const float p = sqrtf(softplusf_(__ldcg(logits + (size_t)t * X + e)));
        s_prob[e] = p;
        s_val[e] = p + (bias ? bias[e] : 0.0f);
    }
    __syncthreads();
    if (threadIdx.x >= 32) return;
    if (tid2eid) {
        if (lane < (int)K) {
            const int32_t e = tid2eid[(size_t)ra.tokens[t] * K + lane];
            s_ids[lane] = e >= 0 && (uint32_t)e < X ? e : 0;
        }
    } else {
        uint32_t taken = 0; /* bit i: this lane's i-th candidate (e = lane + 32 i) is chosen; X <= 1024 */
        for (uint32_t i = 0; i < K; i++) {
            /* best = highest value, ties to the lower id, among the untaken */
            float bv = -INFINITY;
            int bi = -1;
            for (uint32_t k = 0, e = lane; e < X; k++, e += 32) {
                if (taken >> k & 1) continue;
                const float v = s_val[e];
                if (bi < 0 || v > bv) { bv = v; bi = (int)e; }
            }
#pragma unroll
            for (int off = 16; off > 0; off >>= 1) {
                const float ov = __shfl_xor_sync(0xffffffffu, bv, off);
                const int oi = __shfl_xor_sync(0xffffffffu, bi, off);
                if (oi >= 0 && (bi < 0 || ov > bv || (ov == bv && oi < bi))) { bv = ov; bi = oi; }
            }
            if (bi < 0) bi = 0;
            if ((bi & 31) == lane) taken |= 1u << (bi >> 5);
            if (lane == 0) s_ids[i] = bi;
        }
    }
    __syncwarp();
    if (lane == 0) { /* moe.c ds4_moe_route, same order */
        float w[ROUTE_MAX_K], sum = 0;
        for (uint32_t i = 0; i < K; i++) sum += (w[i] = s_prob[s_ids[i]]);
        const float nrm = ra.norm ? 1.0f / (sum + 1e-20f) : 1.0f;
        for (uint32_t i = 0; i < K; i++) {
            ra.ids[(size_t)t * K + i] = s_ids[i];
            ra.wts[(size_t)t * K + i] = w[i] * (nrm * ra.scale);
        }
    }
}

__global__ void route_kernel(const float *logits, uint32_t X, const route_args ra) {
    pdl_wait();
    pdl_trigger();
    extern __shared__ float s_prob[]; /* [X] prob, [X] prob+bias */
    route_token(logits, X, ra, blockIdx.x, s_prob);
}

void cu_route(cudaStream_t st, const float *logits, uint32_t T, uint32_t X, const route_args &ra) {
    cu_launch(route_kernel, T, 256, 2 * X * sizeof(float), st, logits, X, ra);
}

/* Decode router: the logits of one token, a block per expert row, and (ra
 * set) the routing done by the block that finishes last.
 *
 * In the generic mat-vec the router's 256 rows were a job beside the shared
 * expert's gate/up (17.8 MB) in one launch, so the routing waited for the
 * whole launch; alone it is 32 blocks of one row a warp, each lane
 * streaming 256 bytes in turns (latency-bound). Here each block's 256
 * threads split the row (n_in / 256 weights a thread, loaded before
 * pdl_wait: weights are constant) and the shared expert runs on the side
 * stream. Sum: each thread's products in order, then the warp and the block
 * (f32; the CPU adds in another order, as every GPU product does). The
 * routing then needs no launch of its own: each block publishes its row
 * (fence, then a count), and the block that counts last reads all X logits
 * from L2 and runs route_token, resetting the count for the next launch
 * (graph replays): +1.9% decode on H200 (DS4_CUDA_ROUTE_IN_ROUTER=0 keeps
 * route_kernel). */
static __device__ unsigned int g_router_done; /* blocks of the running router launch that wrote their row */
template <bool BF>
__global__ void __launch_bounds__(256) router_rows_kernel(dweight w, const float *x, float *y, route_args ra) {
    constexpr int PER = RR_MAX_PER; /* weights a thread at most */
    const uint32_t row = blockIdx.x, n = w.n_in, per = n / 256;
    const uint16_t *wr = (const uint16_t *)(w.q + (size_t)row * w.row_bytes) + threadIdx.x * per;
    uint4 raw[PER / 8];
#pragma unroll
    for (int v = 0; v < PER / 8; v++) raw[v] = 8 * v < (int)per ? __ldg((const uint4 *)wr + v) : make_uint4(0, 0, 0, 0);
    pdl_wait();
    pdl_trigger();
    const float *xr = x + threadIdx.x * per;
    float s = 0.0f;
#pragma unroll
    for (int v = 0; v < PER / 8; v++) {
        if (8 * v >= (int)per) break;
        const float4 a = *(const float4 *)(xr + 8 * v), b = *(const float4 *)(xr + 8 * v + 4);
        const float xs[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
        const uint32_t u[4] = {raw[v].x, raw[v].y, raw[v].z, raw[v].w};
#pragma unroll
        for (int k = 0; k < 4; k++) {
            float lo, hi;
            if (BF) {
                lo = __uint_as_float(u[k] << 16);
                hi = __uint_as_float(u[k] & 0xffff0000u);
            } else {
                const float2 f = __half22float2(*(const __half2 *)&u[k]);
                lo = f.x;
                hi = f.y;
            }
            s = fmaf(lo, xs[2 * k], s);
            s = fmaf(hi, xs[2 * k + 1], s);
        }
    }
    __shared__ float red[8];
    s = warp_sum(s);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = s;
    __syncthreads();
    __shared__ bool s_last;
    if (threadIdx.x == 0) {
        float t = 0.0f;
        for (int i = 0; i < 8; i++) t += red[i];
        y[row] = t;
        if (ra.ids) {
            __threadfence();
            s_last = atomicAdd(&g_router_done, 1u) == gridDim.x - 1;
        }
    }
    if (!ra.ids) return;
    __syncthreads();
    if (!s_last) return;
    __threadfence();
    if (threadIdx.x == 0) g_router_done = 0;
    extern __shared__ float s_prob[]; /* [X] prob, [X] prob+bias */
    route_token(y, gridDim.x, ra, 0, s_prob);
}

bool cu_router_decode_ok(const dweight &w, const act_view &x) {
    return (w.type == DS4_TYPE_F16 || w.type == DS4_TYPE_BF16) && w.n_in % 2048 == 0 && w.n_in / 256 <= RR_MAX_PER &&
           w.row_bytes % 16 == 0 && ((uintptr_t)w.q & 15) == 0 && x.f && ((uintptr_t)(x.f + x.off) & 15) == 0;
}

void cu_router_decode(cudaStream_t st, const dweight &w, const act_view &x, float *y, const route_args *ra) {
    route_args r;
    memset(&r, 0, sizeof r);
    if (ra) r = *ra;
    const size_t smem = r.ids ? 2 * (size_t)w.n_out * sizeof(float) : 0;
    if (w.type == DS4_TYPE_BF16) cu_launch(router_rows_kernel<true>, w.n_out, 256, smem, st, w, x.f + x.off, y, r);
    else cu_launch(router_rows_kernel<false>, w.n_out, 256, smem, st, w, x.f + x.off, y, r);
}

__global__ void swiglu_kernel(const float *g, const float *u, const float *wts, uint32_t F, float c, dact h) {
    pdl_wait();
    pdl_trigger();
    extern __shared__ float s_row[];
    const uint32_t r = blockIdx.x;
    const float w = wts ? wts[r] : 1.0f;
    #pragma unroll 4
    for (uint32_t i = threadIdx.x; i < F; i += blockDim.x) {
        const size_t o = (size_t)r * F + i;
        const float gv = fminf(g[o], c), uv = fminf(fmaxf(u[o], -c), c);
        const float v = gv / (1.0f + expf(-gv)) * uv * w;
        s_row[i] = v;
        h.f[o] = v;
    }
    __syncthreads();
    const qrow q = qrow_of(h, r);
    srow_quantize(s_row, F, q.q8, q.d8, q.qk, q.dk, q.bk);
}

/* A few rows (decode) over (F / 256, rows) blocks: each block one 256-value
 * slice, its Q8_0 blocks and Q8_K block (one quantization round instead of
 * F / 512 Q8_0 rounds a warp); bit-identical to swiglu_kernel. */
__global__ void __launch_bounds__(256) swiglu_slice_kernel(const float *g, const float *u, const float *wts, uint32_t F,
                                                           float c, dact h) {
    pdl_wait();
    pdl_trigger();
    __shared__ float s_x[256];
    const uint32_t r = blockIdx.y, i0 = blockIdx.x * 256;
    const size_t o = (size_t)r * F + i0 + threadIdx.x;
    const float w = wts ? wts[r] : 1.0f;
    const float gv = fminf(g[o], c), uv = fminf(fmaxf(u[o], -c), c);
    const float v = gv / (1.0f + expf(-gv)) * uv * w;
    s_x[threadIdx.x] = v;
    h.f[o] = v;
    __syncthreads();
    const qrow q = qrow_of(h, r, i0);
    srow_quantize_warps(s_x, 256, q.q8, q.d8, q.qk, q.dk, q.bk, threadIdx.x >> 5, 8);
}

void cu_swiglu(cudaStream_t st, const float *g, const float *u, const float *wts, uint32_t rows, uint32_t F, float c,
               dact &h) {
    if (rows <= 16 && F % 256 == 0) {
        cu_launch(swiglu_slice_kernel, dim3(F / 256, rows), 256, 0, st, g, u, wts, F, c, h);
        return;
    }
    cu_launch(swiglu_kernel, rows, 512, F * sizeof(float), st, g, u, wts, F, c, h);
}

__global__ void moe_sum_kernel(const float *ysh, const float *ye, const int32_t *ids, uint32_t K, uint32_t E, float *y) {
    pdl_wait();
    pdl_trigger();
    const uint32_t t = blockIdx.y, e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= E) return;
    y[(size_t)t * E + e] = moe_sum_at(ysh[(size_t)t * E + e], ye, ids, t, K, E, e);
}

void cu_moe_sum(cudaStream_t st, const float *ysh, const float *ye, const int32_t *ids, uint32_t T, uint32_t K,
                uint32_t E, float *y) {
    dim3 grid((E + 255) / 256, T);
    cu_launch(moe_sum_kernel, grid, 256, 0, st, ysh, ye, ids, K, E, y);
}

__global__ void moe_count_kernel(const int32_t *ids, uint32_t n, int32_t *cnt) {
    pdl_wait();
    pdl_trigger();
    __shared__ int s_c[32];
    const int e = blockIdx.x;
    int c = 0;
    #pragma unroll 4
    for (uint32_t i = threadIdx.x; i < n; i += blockDim.x) c += ids[i] == e;
    for (int off = 16; off > 0; off >>= 1) c += __shfl_xor_sync(0xffffffffu, c, off);
    if ((threadIdx.x & 31) == 0) s_c[threadIdx.x >> 5] = c;
    __syncthreads();
    if (threadIdx.x == 0) {
        int s = 0;
        for (uint32_t w = 0; w < blockDim.x / 32; w++) s += s_c[w];
        cnt[e] = s;
    }
}

__global__ void moe_scatter_kernel(const int32_t *ids, uint32_t n, const int32_t *cnt, int32_t *off, int32_t *list) {
    pdl_wait();
    pdl_trigger();
    __shared__ int s_w[32];
    __shared__ int s_base;
    const int e = blockIdx.x;
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    if (threadIdx.x == 0) {
        int s = 0;
        for (int i = 0; i < e; i++) s += cnt[i];
        off[e] = s;
        s_base = s;
    }
    __syncthreads();
    int running = s_base;
    for (uint32_t b = 0; b < n; b += blockDim.x) {
        const uint32_t i = b + threadIdx.x;
        const bool hit = i < n && ids[i] == e;
        const unsigned m = __ballot_sync(0xffffffffu, hit);
        if (lane == 0) s_w[wid] = __popc(m);
        __syncthreads();
        int before = 0, total = 0;
        for (int w = 0; w < nw; w++) {
            if (w < wid) before += s_w[w];
            total += s_w[w];
        }
        if (hit) list[running + before + __popc(m & ((1u << lane) - 1))] = (int32_t)i;
        running += total;
        __syncthreads();
    }
}

void cu_moe_sort(cudaStream_t st, const int32_t *ids, uint32_t n_pairs, uint32_t X, int32_t *cnt, int32_t *off,
                 int32_t *list) {
    cu_launch(moe_count_kernel, X, 256, 0, st, ids, n_pairs, cnt);
    cu_launch(moe_scatter_kernel, X, 256, 0, st, ids, n_pairs, cnt, off, list);
}

/* ------------------------------------------------------------------------ */
/* output head */

__global__ void head_finish_kernel(const float *part, uint32_t T, uint32_t S, const float *scale, const float *base,
                                   const float *R, uint32_t C, uint32_t E, float eps, float hc_eps, const float *norm,
                                   dact x) {
    pdl_wait();
    pdl_trigger();
    extern __shared__ float s_x[];
    __shared__ double red[32];
    __shared__ float s_w[HC_MAX];
    const uint32_t t = blockIdx.x;
    const float *Rt = R + (size_t)t * C * E;
    __shared__ float s_mix[HC_MAX];
    hc_mix_finish(part, T, C, S, C * E, eps, t, s_mix);
    if (threadIdx.x < C) s_w[threadIdx.x] = sigmoidf_(s_mix[threadIdx.x] * scale[0] + base[threadIdx.x]) + hc_eps;
    __syncthreads();
    #pragma unroll 4
    for (uint32_t e = threadIdx.x; e < E; e += blockDim.x) {
        float s = 0;
        for (uint32_t h = 0; h < C; h++) s += s_w[h] * Rt[h * E + e];
        s_x[e] = s;
    }
    __syncthreads();
    srow_rmsnorm(s_x, E, norm, eps, red);
    #pragma unroll 4
    for (uint32_t e = threadIdx.x; e < E; e += blockDim.x) x.f[(size_t)t * E + e] = s_x[e];
    const qrow q = qrow_of(x, t);
    srow_quantize(s_x, E, q.q8, q.d8, q.qk, q.dk, q.bk);
}

void cu_head_hc(cudaStream_t st, const dweight &fn, const float *scale, const float *base, const float *R, uint32_t T,
                uint32_t C, uint32_t E, float rms_eps, float hc_eps, const float *norm, float *part, dact &x,
                uint32_t mixed_S) {
    const uint32_t S = mixed_S ? mixed_S : cu_hc_mix(st, fn, R, T, C * E, rms_eps, part);
    cu_launch(head_finish_kernel, T, 1024, E * sizeof(float), st, part, T, S, scale, base, R, C, E, rms_eps, hc_eps,
              norm, x);
}

/* argmax in two stages: 128 blocks reduce slices (first max wins), then one
 * warp reduces the block results in index order */
#define ARGMAX_BLOCKS 128
__global__ void argmax_part_kernel(const float *x, uint32_t n, float *pv, int32_t *pi) {
    pdl_wait();
    pdl_trigger();
    __shared__ float s_v[32];
    __shared__ int s_i[32];
    const float *r = x + (size_t)blockIdx.y * n;
    float bv = -INFINITY;
    int bi = -1;
#pragma unroll 4
    for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        if (bi < 0 || r[i] > bv) { bv = r[i]; bi = (int)i; }
    for (int off = 16; off > 0; off >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, bv, off);
        const int oi = __shfl_xor_sync(0xffffffffu, bi, off);
        if (oi >= 0 && (bi < 0 || ov > bv || (ov == bv && oi < bi))) { bv = ov; bi = oi; }
    }
    if ((threadIdx.x & 31) == 0) { s_v[threadIdx.x >> 5] = bv; s_i[threadIdx.x >> 5] = bi; }
    __syncthreads();
    if (threadIdx.x == 0) {
        float b = s_v[0];
        int w = s_i[0];
        for (uint32_t k = 1; k < blockDim.x / 32; k++)
            if (s_i[k] >= 0 && (w < 0 || s_v[k] > b || (s_v[k] == b && s_i[k] < w))) {
                b = s_v[k];
                w = s_i[k];
            }
        pv[blockIdx.y * gridDim.x + blockIdx.x] = b;
        pi[blockIdx.y * gridDim.x + blockIdx.x] = w;
    }
}

__global__ void argmax_final_kernel(const float *pv, const int32_t *pi, uint32_t nb, int32_t *out) {
    pdl_wait();
    pdl_trigger();
    const int lane = threadIdx.x;
    float bv = -INFINITY;
    int bi = -1;
    for (uint32_t k = lane; k < nb; k += 32) {
        const float v = pv[blockIdx.x * nb + k];
        const int i = pi[blockIdx.x * nb + k];
        if (i >= 0 && (bi < 0 || v > bv || (v == bv && i < bi))) { bv = v; bi = i; }
    }
    for (int off = 16; off > 0; off >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, bv, off);
        const int oi = __shfl_xor_sync(0xffffffffu, bi, off);
        if (oi >= 0 && (bi < 0 || ov > bv || (ov == bv && oi < bi))) { bv = ov; bi = oi; }
    }
    if (lane == 0) out[blockIdx.x] = bi < 0 ? 0 : bi;
}

size_t cu_argmax_scratch_floats(uint32_t rows) { return (size_t)rows * ARGMAX_BLOCKS * 2; }

void cu_argmax(cudaStream_t st, const float *x, uint32_t rows, uint32_t n, int32_t *out, float *scratch) {
    float *pv = scratch;
    int32_t *pi = (int32_t *)(scratch + (size_t)rows * ARGMAX_BLOCKS);
    dim3 grid(ARGMAX_BLOCKS, rows);
    cu_launch(argmax_part_kernel, grid, 256, 0, st, x, n, pv, pi);
    cu_launch(argmax_final_kernel, rows, 32, 0, st, pv, pi, ARGMAX_BLOCKS, out);
}

/* kernels_attn.cu - KV compressors, the Lightning indexer (scores + exact
 * top-k) and attention with sinks over the raw window and compressed rows.
 *
 * Every position-dependent quantity (visible rows, compressor emissions,
 * whether the indexer is active) is computed on the device from pos0[0], the
 * chunk's first absolute position, so one captured decode graph serves every
 * step: the host never decides between kernels.
 *
 * Compressor: each output dim's state column evolves independently of the
 * others; a decode step runs one thread per dim (exactly compressor.c's
 * arithmetic, double-precision pooling included), a prefill chunk pools every
 * window that closes in it at once (thread per window and dim, earlier tokens
 * read from the frontier state) and then rewrites the state; a last kernel
 * normalises, rotates and quantizes the rows that closed.
 * Indexer scores: with FP4-simulated queries and keys (the default numerics)
 * BF16 tensor cores (mma.sync m16n8k16, f32 sums: exact products of exact
 * BF16 values), else (--exact, odd shapes) the f32 CUDA-core kernel.
 * Indexer top-k: radix select of the k-th largest score (scores mapped to
 * order-preserving u32 keys), then an in-order compaction that keeps ties
 * at the threshold by lowest index: the CPU's selection, bit for bit; decode
 * at long contexts runs it over a cluster of 8 blocks (histograms summed
 * through distributed shared memory).
 * Attention: split over (token, 8-head group, row range); each block keeps
 * an online softmax over tiles of 16 rows staged in shared memory (K = V, one
 * row serves all heads of the group); a combine kernel merges the splits with
 * the sink and applies the inverse RoPE.
 */
#include <stdlib.h>
#include <string.h>

#include <cooperative_groups.h>

#include "cuda_internal.cuh"
#include "row_ops.cuh"

/* ------------------------------------------------------------------------ */
/* compressor */

/* output dim j of the compressor walked through T tokens from p0 (state
 * columns j and dim + j; closed windows pooled into pooled[e][j]) */
static __device__ void comp_update_col(const comp_params &cp, const dweight &ape, const float *kv, const float *sc,
                                       uint32_t T, int64_t p0, float *st_kv, float *st_sc, float *pooled, uint32_t j) {
    const uint32_t ratio = cp.ratio, dim = cp.dim, c = ratio == 4 ? 2 : 1, W = c * dim;
    for (uint32_t t = 0; t < T; t++) {
        const int64_t p = p0 + t;
        const uint32_t slot = (uint32_t)(p % ratio), row = c == 2 ? ratio + slot : slot;
        for (uint32_t lane = 0; lane < c; lane++) {
            const uint32_t col = lane * dim + j;
            st_kv[(size_t)row * W + col] = kv[(size_t)t * W + col];
            st_sc[(size_t)row * W + col] = sc[(size_t)t * W + col] + dw_elem(ape, slot, col);
        }
        if ((p + 1) % ratio != 0) continue;
        float m = -INFINITY;
        for (uint32_t r = 0; r < ratio; r++) {
            if (c == 2) m = fmaxf(m, st_sc[(size_t)r * W + j]);
            m = fmaxf(m, st_sc[(size_t)(row - slot + r) * W + (c - 1) * dim + j]);
        }
        float out = 0;
        if (m != -INFINITY) {
            double num = 0, den = 0;
            for (uint32_t r = 0; r < ratio; r++) {
                if (c == 2) {
                    const double e = exp((double)st_sc[(size_t)r * W + j] - m);
                    num += e * st_kv[(size_t)r * W + j];
                    den += e;
                }
                const size_t at = (size_t)(row - slot + r) * W + (c - 1) * dim + j;
                const double e = exp((double)st_sc[at] - m);
                num += e * st_kv[at];
                den += e;
            }
            out = (float)(num / den);
        }
        const int64_t e_idx = (p + 1) / ratio - 1 - p0 / ratio;
        pooled[(size_t)e_idx * dim + j] = out;
        if (c == 2)
            for (uint32_t r = 0; r < ratio; r++)
                for (uint32_t lane = 0; lane < c; lane++) {
                    const uint32_t col = lane * dim + j;
                    st_kv[(size_t)r * W + col] = st_kv[(size_t)(ratio + r) * W + col];
                    st_sc[(size_t)r * W + col] = st_sc[(size_t)(ratio + r) * W + col];
                }
    }
}

__global__ void comp_update_kernel(comp_params cp, dweight ape, const float *kv, const float *sc, uint32_t T,
                                   const int64_t *pos0, float *st_kv, float *st_sc, float *pooled) {
    pdl_wait();
    pdl_trigger();
    const uint32_t j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j < cp.dim) comp_update_col(cp, ape, kv, sc, T, pos0[0], st_kv, st_sc, pooled, j);
}

/* Prefill (T > 1): every window closing in the chunk is pooled at once, a
 * thread per (window, output dim), instead of one thread per dim walking the
 * chunk (which left 4-8 blocks on the card for 2048 tokens: 14% of prefill).
 * A window's tokens come from the chunk's projections or, before pos0, from
 * the frontier state: for ratio 4 (two lanes, overlapping windows) rows
 * ratio + slot hold the window that was open at pos0 and rows 0..ratio-1 the
 * one closed before it; for other ratios rows slot. The max and the double
 * sums run in comp_update_kernel's order, so the rows are bit-identical.
 * comp_state_kernel then leaves the state as the serial walk would. */
static __device__ __forceinline__ void comp_val(const comp_params &cp, const dweight &ape, const float *kv,
                                                const float *sc, const float *st_kv, const float *st_sc, int64_t p0,
                                                int64_t p, uint32_t col, float &k, float &s) {
    const uint32_t ratio = cp.ratio, c = ratio == 4 ? 2 : 1, W = c * cp.dim;
    const uint32_t slot = (uint32_t)(((p % ratio) + ratio) % ratio);
    if (p >= p0) {
        const size_t t = (size_t)(p - p0);
        k = kv[t * W + col];
        s = sc[t * W + col] + dw_elem(ape, slot, col);
    } else {
        const uint32_t row = c == 2 && p >= p0 - p0 % ratio ? ratio + slot : slot;
        k = st_kv[(size_t)row * W + col];
        s = st_sc[(size_t)row * W + col];
    }
}

__global__ void comp_pool_kernel(comp_params cp, dweight ape, const float *kv, const float *sc, uint32_t T,
                                 const int64_t *pos0, const float *st_kv, const float *st_sc, float *pooled) {
    pdl_wait();
    pdl_trigger();
    const uint32_t j = blockIdx.x * blockDim.x + threadIdx.x, w = blockIdx.y;
    const uint32_t ratio = cp.ratio, dim = cp.dim, c = ratio == 4 ? 2 : 1;
    if (j >= dim) return;
    const int64_t p0 = pos0[0];
    const int64_t pc = p0 + (int64_t)(ratio - 1 - p0 % ratio) + (int64_t)w * ratio; /* closing position */
    if (pc >= p0 + (int64_t)T) return;
    const int64_t cur0 = pc - ratio + 1;
    float m = -INFINITY, k, s;
    for (uint32_t r = 0; r < ratio; r++) {
        if (c == 2) {
            comp_val(cp, ape, kv, sc, st_kv, st_sc, p0, cur0 - ratio + r, j, k, s);
            m = fmaxf(m, s);
        }
        comp_val(cp, ape, kv, sc, st_kv, st_sc, p0, cur0 + r, (c - 1) * dim + j, k, s);
        m = fmaxf(m, s);
    }
    float out = 0;
    if (m != -INFINITY) {
        double num = 0, den = 0;
        for (uint32_t r = 0; r < ratio; r++) {
            if (c == 2) {
                comp_val(cp, ape, kv, sc, st_kv, st_sc, p0, cur0 - ratio + r, j, k, s);
                const double e = exp((double)s - m);
                num += e * k;
                den += e;
            }
            comp_val(cp, ape, kv, sc, st_kv, st_sc, p0, cur0 + r, (c - 1) * dim + j, k, s);
            const double e = exp((double)s - m);
            num += e * k;
            den += e;
        }
        out = (float)(num / den);
    }
    pooled[(size_t)w * dim + j] = out;
}

/* the frontier state after the chunk, one thread per column of both lanes:
 * rows (ratio +) slot take the chunk's latest token of that slot, and for
 * ratio 4 rows 0..ratio-1 the last window closed in the chunk */
__global__ void comp_state_kernel(comp_params cp, dweight ape, const float *kv, const float *sc, uint32_t T,
                                  const int64_t *pos0, float *st_kv, float *st_sc) {
    pdl_wait();
    pdl_trigger();
    const uint32_t ratio = cp.ratio, c = ratio == 4 ? 2 : 1, W = c * cp.dim;
    const uint32_t col = blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= W) return;
    const int64_t p0 = pos0[0], plast = p0 + T - 1;
    const int64_t pc0 = p0 + (int64_t)(ratio - 1 - p0 % ratio);
    const bool emitted = pc0 <= plast;
    float pk[4] = {0, 0, 0, 0}, ps[4] = {0, 0, 0, 0};
    if (c == 2 && emitted) { /* read before the rows below are overwritten */
        const int64_t plc = pc0 + ((plast - pc0) / ratio) * ratio;
        for (uint32_t s = 0; s < ratio; s++)
            comp_val(cp, ape, kv, sc, st_kv, st_sc, p0, plc - ratio + 1 + s, col, pk[s], ps[s]);
    }
    const uint32_t base = c == 2 ? ratio : 0;
    for (uint32_t s = 0; s < ratio; s++) {
        const int64_t p = plast - (((plast - (int64_t)s) % ratio) + ratio) % ratio;
        if (p < p0) continue;
        const size_t t = (size_t)(p - p0);
        st_kv[(size_t)(base + s) * W + col] = kv[t * W + col];
        st_sc[(size_t)(base + s) * W + col] = sc[t * W + col] + dw_elem(ape, s, col);
    }
    if (c == 2 && emitted)
        for (uint32_t s = 0; s < ratio; s++) {
            st_kv[(size_t)s * W + col] = pk[s];
            st_sc[(size_t)s * W + col] = ps[s];
        }
}

/* the b-th row closed in the chunk from p0: normalised, rotated, quantized
 * into rows[] (whole block; nothing when fewer closed) */
template <bool WIDE = false>
static __device__ void comp_emit_row(const comp_params &cp, uint32_t T, int64_t p0, const float *pooled, float *rows,
                                     uint32_t b, float *s_row, double *red) {
    const uint32_t ratio = cp.ratio, dim = cp.dim;
    const int64_t first = p0 / ratio, n_emit = (p0 + T) / ratio - first;
    if ((int64_t)b >= n_emit) return;
    const int64_t ri = first + b;
    #pragma unroll 4
    for (uint32_t i = threadIdx.x; i < dim; i += blockDim.x) s_row[i] = pooled[(size_t)b * dim + i];
    __syncthreads();
    srow_rmsnorm(s_row, dim, cp.norm, cp.eps, red);
    srow_rope<WIDE>(s_row, dim, cp.n_rot, cp.inv_freq, ri * ratio, false);
    if (cp.sim) {
        if (cp.indexer) {
            srow_hadamard(s_row, dim);
            srow_fp4(s_row, dim);
        } else {
            srow_fp8(s_row, dim - cp.n_rot);
            if (cp.f16) srow_f16(s_row, dim);
        }
    }
    #pragma unroll 4
    for (uint32_t i = threadIdx.x; i < dim; i += blockDim.x) rows[(size_t)ri * dim + i] = s_row[i];
}

__global__ void comp_emit_kernel(comp_params cp, uint32_t T, const int64_t *pos0, const float *pooled, float *rows) {
    pdl_wait();
    pdl_trigger();
    extern __shared__ float s_row[];
    __shared__ double red[32];
    comp_emit_row(cp, T, pos0[0], pooled, rows, blockIdx.x, s_row, red);
}

void cu_compress(cudaStream_t st, const comp_job &J, uint32_t T, const int64_t *pos0) {
    const comp_params &cp = J.cp;
    const dweight &ape = J.ape;
    const float *kv = J.kv, *sc = J.sc;
    float *st_kv = J.st_kv, *st_sc = J.st_sc, *pooled = J.pooled, *rows = J.rows;
    static int par = -1; /* DS4_CUDA_COMP_SERIAL=1: the serial walk for every chunk (measurements) */
    if (par < 0) {
        const char *e = getenv("DS4_CUDA_COMP_SERIAL");
        par = !(e && *e == '1');
    }
    if (T > 1 && par) {
        const uint32_t W = (cp.ratio == 4 ? 2 : 1) * cp.dim;
        cu_launch(comp_pool_kernel, dim3((cp.dim + 127) / 128, T / cp.ratio + 1), 128, 0, st, cp, ape, kv, sc, T, pos0,
                  (const float *)st_kv, (const float *)st_sc, pooled);
        cu_launch(comp_state_kernel, (W + 127) / 128, 128, 0, st, cp, ape, kv, sc, T, pos0, st_kv, st_sc);
    } else {
        cu_launch(comp_update_kernel, (cp.dim + 127) / 128, 128, 0, st, cp, ape, kv, sc, T, pos0, st_kv, st_sc, pooled);
    }
    cu_launch(comp_emit_kernel, T / cp.ratio + 1, 128, cp.dim * sizeof(float), st, cp, T, pos0, pooled, rows);
}

/* ------------------------------------------------------------------------ */
/* KV rows */

/* token t's KV row [D]: RMSNorm, RoPE at p, FP8 / F16 rounding, into ring row p % raw_cap (whole block) */
template <bool WIDE = false>
static __device__ void kv_row_store(const kvrow_params &kp, const float *kv, uint32_t t, int64_t p, float *s_row,
                                    double *red) {
    const uint32_t D = kp.D;
    #pragma unroll 4
    for (uint32_t i = threadIdx.x; i < D; i += blockDim.x) s_row[i] = kv[(size_t)t * D + i];
    __syncthreads();
    srow_rmsnorm(s_row, D, kp.norm, kp.eps, red);
    srow_rope<WIDE>(s_row, D, kp.n_rot, kp.inv_freq, p, false);
    if (kp.fp8) srow_fp8(s_row, D - kp.n_rot);
    if (kp.f16) srow_f16(s_row, D);
    float *dst = kp.raw + (size_t)(p % kp.raw_cap) * D;
    #pragma unroll 4
    for (uint32_t i = threadIdx.x; i < D; i += blockDim.x) dst[i] = s_row[i];
}

__global__ void kv_store_kernel(kvrow_params kp, const float *kv, const int64_t *pos0) {
    pdl_wait();
    pdl_trigger();
    extern __shared__ float s_row[];
    __shared__ double red[32];
    kv_row_store(kp, kv, blockIdx.x, pos0[0] + blockIdx.x, s_row, red);
}

void cu_kv_store(cudaStream_t st, const kvrow_params &kp, const float *kv, uint32_t T, const int64_t *pos0) {
    cu_launch(kv_store_kernel, T, 128, kp.D * sizeof(float), st, kp, kv, pos0);
}

/* Decode: the side branch of a layer in one launch - block 0 stores the KV
 * row, block 1 (2) walks the attention (indexer) compressor one token and
 * emits its row when a window closes: one kernel where the chain of
 * kv_store / update / emit launches was five, each waiting on the last. */
template <bool WIDE>
__global__ void __launch_bounds__(512) side_decode_kernel(kvrow_params kp, const float *kv, comp_job a, comp_job ix,
                                                          const int64_t *pos0) {
    pdl_wait();
    pdl_trigger();
    extern __shared__ float s_row[];
    __shared__ double red[32];
    const int64_t p0 = pos0[0];
    if (blockIdx.x == 0) {
        kv_row_store<WIDE>(kp, kv, 0, p0, s_row, red);
        return;
    }
    const comp_job &J = blockIdx.x == 1 ? a : ix;
    for (uint32_t j = threadIdx.x; j < J.cp.dim; j += blockDim.x)
        comp_update_col(J.cp, J.ape, J.kv, J.sc, 1, p0, J.st_kv, J.st_sc, J.pooled, j);
    __syncthreads(); /* the pooled row (global) is read by other threads below */
    comp_emit_row<WIDE>(J.cp, 1, p0, J.pooled, J.rows, 0, s_row, red);
}

void cu_side_decode(cudaStream_t st, const kvrow_params &kp, const float *kv, const comp_job *a, const comp_job *ix,
                    const int64_t *pos0, bool wide) {
    comp_job none;
    memset(&none, 0, sizeof none);
    uint32_t smem = kp.D;
    if (a && a->cp.dim > smem) smem = a->cp.dim;
    if (ix && ix->cp.dim > smem) smem = ix->cp.dim;
    const uint32_t blocks = a ? (ix ? 3 : 2) : 1;
    if (wide)
        cu_launch(side_decode_kernel<true>, blocks, 512, smem * sizeof(float), st, kp, kv, a ? *a : none,
                  ix ? *ix : none, pos0);
    else
        cu_launch(side_decode_kernel<false>, blocks, 512, smem * sizeof(float), st, kp, kv, a ? *a : none,
                  ix ? *ix : none, pos0);
}

/* ------------------------------------------------------------------------ */
/* indexer */

#define IDX_ROWS 32

__global__ void indexer_score_kernel(const float *qi, const float *wi, float wscale, const float *keys, uint32_t I,
                                     uint32_t ID, uint32_t K, const int64_t *pos0, float *scores, uint32_t n_cap) {
    pdl_wait();
    pdl_trigger();
    extern __shared__ float s_mem[];
    const uint32_t t = blockIdx.y;
    const int64_t p = pos0[0] + t;
    const uint32_t n_vis = (uint32_t)((p + 1) / 4);
    const uint32_t k0 = blockIdx.x * IDX_ROWS;
    if (n_vis <= K || k0 >= n_vis) return;
    const uint32_t QS = ID + 1;
    float *s_q = s_mem, *s_w = s_q + (size_t)I * QS, *s_key = s_w + I;
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    #pragma unroll 4
    for (uint32_t i = threadIdx.x; i < I * ID; i += blockDim.x) s_q[(i / ID) * QS + i % ID] = qi[(size_t)t * I * ID + i];
    #pragma unroll 4
    for (uint32_t h = threadIdx.x; h < I; h += blockDim.x) s_w[h] = wi[(size_t)t * I + h] * wscale;
    __syncthreads();
    float *key = s_key + (size_t)wid * ID;
    const uint32_t k1 = min(k0 + IDX_ROWS, n_vis);
    float pre[4];
    uint32_t kk = k0 + wid;
#pragma unroll
    for (int q = 0; q < 4; q++) pre[q] = kk < k1 && lane + 32 * q < ID ? keys[(size_t)kk * ID + lane + 32 * q] : 0.0f;
    for (uint32_t k = k0 + wid; k < k1; k += nw) {
        /* this row's key from registers, the next row's loads in flight */
#pragma unroll
        for (int q = 0; q < 4; q++)
            if (lane + 32 * q < ID) key[lane + 32 * q] = pre[q];
        const uint32_t kn = k + nw;
#pragma unroll
        for (int q = 0; q < 4; q++) pre[q] = kn < k1 && lane + 32 * q < ID ? keys[(size_t)kn * ID + lane + 32 * q] : 0.0f;
        for (uint32_t i = lane + 128; i < ID; i += 32) key[i] = keys[(size_t)k * ID + i];
        __syncwarp();
        float part = 0;
        for (uint32_t h = lane; h < I; h += 32) {
            const float *q = s_q + (size_t)h * QS;
            float d = 0;
            for (uint32_t i = 0; i < ID; i++) d += q[i] * key[i];
            if (d > 0) part += s_w[h] * d;
        }
        part = warp_sum(part);
        if (lane == 0) scores[(size_t)t * n_cap + k] = part;
        __syncwarp();
    }
}

/* Tensor-core scores for FP4-simulated inputs (not --exact). Queries and key
 * rows are then e2m1 codes times a power-of-two scale per 32 values: exact in
 * BF16, their products exact in f32, and a dot's partial sums are multiples of
 * the smallest scale product far below 2^24 of them, so BF16 mma with f32
 * accumulation gives the f32 dot (only the order of the head sum differs).
 * GEMM per token: C[row][head] = key[row] . q[head] (M = key rows, N = heads,
 * K = ID). A warp owns a 16-row tile: its keys are loaded once from global
 * (f32 -> bf16 A fragments in registers) and reused for the block's IDXM_TT
 * tokens, whose queries sit in shared memory as BF16 ([I][ID + 8]: ldmatrix
 * rows land on distinct banks) with the scaled head weights. Epilogue: relu,
 * times w, sum over the thread's heads, then over the quad's 4 lanes. Tiles
 * are dealt to warps as tile = blockIdx.x + gridDim.x * (warp + 8 * i), so a
 * short visible range still spreads over many blocks (SMs). Needs I % 16 == 0,
 * I <= 64, ID % 16 == 0, ID <= 128 (cu_indexer falls back otherwise). */
#define IDXM_WARPS 8
#define IDXM_TT 4   /* tokens sharing a key tile */
#define IDXM_MAXKS 8 /* ID / 16 */
#define IDXM_MAXNT 8 /* I / 8 */

static __device__ __forceinline__ uint32_t bf16x2_bits(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&v);
}

static __device__ __forceinline__ void idx_mma(float *c, const uint32_t *a, uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

static __device__ __forceinline__ void idx_ldmatrix_x4(uint32_t *r, const void *p) {
    const uint32_t s = (uint32_t)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s)
                 : "memory");
}

__global__ void __launch_bounds__(IDXM_WARPS * 32, 2)
    indexer_score_mma_kernel(const float *qi, const float *wi, float wscale, const float *keys, uint32_t T, uint32_t I,
                             uint32_t ID, uint32_t K, const int64_t *pos0, float *scores, uint32_t n_cap,
                             uint32_t TT) {
    extern __shared__ __align__(16) unsigned char s_raw[];
    pdl_wait();
    pdl_trigger();
    const uint32_t QS = ID + 8, KS = ID / 16, NT = I / 8;
    __nv_bfloat16 *s_q = reinterpret_cast<__nv_bfloat16 *>(s_raw); /* [TT][I][QS] */
    float *s_w = reinterpret_cast<float *>(s_q + (size_t)TT * I * QS); /* [TT][I] */
    const uint32_t t0 = blockIdx.y * TT, nt = min(TT, T - t0);
    const int64_t p0 = pos0[0] + t0;
    uint32_t nv_max = (uint32_t)((p0 + nt) / 4); /* the group's last token sees the most rows */
    if (nv_max > n_cap) nv_max = n_cap;
    if (nv_max <= K) return;
    const uint32_t n_tiles = (nv_max + 15) / 16;
    if (blockIdx.x >= n_tiles) return; /* every tile of this block lies past the visible rows */
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
    const uint32_t g = lane >> 2, c2 = (lane & 3) * 2;
    const uint32_t stride = gridDim.x * IDXM_WARPS;
    uint32_t tile = blockIdx.x + gridDim.x * wid;

    float2 ar[IDXM_MAXKS][4];
    auto load_tile = [&](uint32_t tl) {
        const uint32_t r0 = tl * 16 + g, r1 = r0 + 8;
        const float *k0 = keys + (size_t)r0 * ID + c2, *k1 = keys + (size_t)r1 * ID + c2;
        const bool v0 = r0 < nv_max, v1 = r1 < nv_max;
#pragma unroll
        for (int ks = 0; ks < IDXM_MAXKS; ks++) { /* every entry written: no stale value stays live */
            const bool in = (uint32_t)ks < KS;
            const float2 z = make_float2(0.0f, 0.0f);
            ar[ks][0] = in && v0 ? __ldg(reinterpret_cast<const float2 *>(k0 + ks * 16)) : z;
            ar[ks][1] = in && v1 ? __ldg(reinterpret_cast<const float2 *>(k1 + ks * 16)) : z;
            ar[ks][2] = in && v0 ? __ldg(reinterpret_cast<const float2 *>(k0 + ks * 16 + 8)) : z;
            ar[ks][3] = in && v1 ? __ldg(reinterpret_cast<const float2 *>(k1 + ks * 16 + 8)) : z;
        }
    };
    /* the first tile's keys (16 rows, 2 lines a lane) head for L1 while the
     * queries are staged; loading them into registers here instead raised the
     * kernel from 94 to ~155 registers (ptxas keeps both tiles' loads live) */
    if (tile < n_tiles) {
        const uint32_t rows = min(16u, nv_max - tile * 16), bytes = rows * ID * 4;
        const char *base = reinterpret_cast<const char *>(keys + (size_t)tile * 16 * ID);
        for (uint32_t o = (uint32_t)lane * 128; o < bytes; o += 32 * 128)
            asm volatile("prefetch.global.L1 [%0];" ::"l"(base + o));
    }

    /* stage the group's queries (BF16, exact for FP4 values) and scaled weights */
    const uint32_t ID4 = ID / 4, n4 = I * ID4;
    for (uint32_t tl = 0; tl < nt; tl++) {
        const float4 *src = reinterpret_cast<const float4 *>(qi + (size_t)(t0 + tl) * I * ID);
        __nv_bfloat16 *dst = s_q + (size_t)tl * I * QS;
        for (uint32_t i = threadIdx.x; i < n4; i += blockDim.x) {
            const float4 v = src[i];
            const uint32_t h = i / ID4, d = (i - h * ID4) * 4;
            uint2 packed;
            packed.x = bf16x2_bits(v.x, v.y);
            packed.y = bf16x2_bits(v.z, v.w);
            *reinterpret_cast<uint2 *>(dst + (size_t)h * QS + d) = packed;
        }
        for (uint32_t h = threadIdx.x; h < I; h += blockDim.x) s_w[tl * I + h] = wi[(size_t)(t0 + tl) * I + h] * wscale;
    }
    __syncthreads();

    /* ldmatrix.x4 address of this lane: matrix j = lane / 8 covers heads
     * (j / 2) * 8 + 0..7 of a 16-head pair, dims (j % 2) * 8 + 0..7 */
    const uint32_t lm_off = ((lane >> 4) * 8 + (lane & 7)) * QS + ((lane >> 3) & 1) * 8;
    for (; tile < n_tiles; tile += stride) {
        load_tile(tile);
        uint32_t a[IDXM_MAXKS][4];
#pragma unroll
        for (int ks = 0; ks < IDXM_MAXKS; ks++)
#pragma unroll
            for (int r = 0; r < 4; r++) a[ks][r] = bf16x2_bits(ar[ks][r].x, ar[ks][r].y);
        const uint32_t r0 = tile * 16 + g, r1 = r0 + 8;
        for (uint32_t tl = 0; tl < nt; tl++) {
            const uint32_t nv = min((uint32_t)((p0 + tl + 1) / 4), n_cap);
            if (nv <= K || tile * 16 >= nv) continue;
            float acc[IDXM_MAXNT][4];
#pragma unroll
            for (int j = 0; j < IDXM_MAXNT; j++) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;
            const __nv_bfloat16 *qb = s_q + (size_t)tl * I * QS + lm_off;
#pragma unroll
            for (int ks = 0; ks < IDXM_MAXKS; ks++) {
                if ((uint32_t)ks >= KS) continue;
#pragma unroll
                for (int jp = 0; jp < IDXM_MAXNT / 2; jp++) {
                    if ((uint32_t)jp * 2 >= NT) continue;
                    uint32_t b[4];
                    idx_ldmatrix_x4(b, qb + (size_t)jp * 16 * QS + ks * 16);
                    idx_mma(acc[2 * jp], a[ks], b[0], b[1]);
                    idx_mma(acc[2 * jp + 1], a[ks], b[2], b[3]);
                }
            }
            const float *w = s_w + tl * I + c2;
            float s0 = 0.0f, s1 = 0.0f;
#pragma unroll
            for (int j = 0; j < IDXM_MAXNT; j++) {
                if ((uint32_t)j >= NT) continue;
                const float w0 = w[j * 8], w1 = w[j * 8 + 1];
                if (acc[j][0] > 0) s0 = fmaf(w0, acc[j][0], s0);
                if (acc[j][1] > 0) s0 = fmaf(w1, acc[j][1], s0);
                if (acc[j][2] > 0) s1 = fmaf(w0, acc[j][2], s1);
                if (acc[j][3] > 0) s1 = fmaf(w1, acc[j][3], s1);
            }
            s0 += __shfl_xor_sync(0xffffffffu, s0, 1);
            s1 += __shfl_xor_sync(0xffffffffu, s1, 1);
            s0 += __shfl_xor_sync(0xffffffffu, s0, 2);
            s1 += __shfl_xor_sync(0xffffffffu, s1, 2);
            if ((lane & 3) == 0) {
                float *out = scores + (size_t)(t0 + tl) * n_cap;
                if (r0 < nv) out[r0] = s0;
                if (r1 < nv) out[r1] = s1;
            }
        }
    }
}

static __device__ __forceinline__ uint32_t f2key(float f) {
    const uint32_t b = __float_as_uint(f);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

/* The radix select's steps, shared by the one-block kernel and the cluster
 * kernel. Keys are read from shared memory when staged, else from the
 * scores; m keys, those of a block's slice. */
typedef struct {
    uint32_t prefix, mask, want, gt; /* the k-th key's bits found so far; rank left to find; keys above */
} topk_state;

static __device__ __forceinline__ uint32_t topk_key(const uint32_t *keys, const float *sc, bool staged, uint32_t i) {
    return staged ? keys[i] : f2key(sc[i]);
}

/* the m keys into shared memory when they fit (returns whether), the state
 * reset to "want the K-th largest" (the first pass's barrier orders both) */
static __device__ bool topk_stage(const float *sc, uint32_t m, uint32_t K, uint32_t cap, uint32_t *keys,
                                  topk_state *st) {
    const bool staged = m <= cap;
    if (staged)
        #pragma unroll 4
        for (uint32_t i = threadIdx.x; i < m; i += blockDim.x) keys[i] = f2key(sc[i]);
    if (threadIdx.x == 0) *st = {0, 0, K, 0};
    return staged;
}

/* keys matching the state's prefix counted by their byte at shift; the adds
 * are aggregated per warp over lanes with the same bin (scores share their
 * top bits, so plain atomics serialise on a few bins) */
static __device__ void topk_histogram(const uint32_t *keys, const float *sc, bool staged, uint32_t m, uint32_t prefix,
                                      uint32_t mask, int shift, uint32_t *hist) {
    const int lane = threadIdx.x & 31;
    for (uint32_t b = 0; b < m; b += blockDim.x) { /* every lane runs every round: full-warp ballots */
        const uint32_t i = b + threadIdx.x;
        const uint32_t k = i < m ? topk_key(keys, sc, staged, i) : 0;
        const bool in = i < m && (k & mask) == prefix;
        const unsigned act = __ballot_sync(0xffffffffu, in);
        if (in) {
            const uint32_t bin = (k >> shift) & 0xff;
            const unsigned peers = __match_any_sync(act, bin);
            if (lane == __ffs(peers) - 1) atomicAdd(&hist[bin], (uint32_t)__popc(peers));
        }
    }
}

/* warp 0: the bin holding the want-th largest key (8 bins a lane, from the
 * top), appended to the state's prefix */
static __device__ void topk_choose_bin(const uint32_t *hist, int shift, topk_state *st) {
    const int lane = threadIdx.x & 31;
    const uint32_t want = st->want;
    uint32_t cnt = 0;
    for (int k = 0; k < 8; k++) cnt += hist[255 - (lane * 8 + k)];
    uint32_t incl = cnt; /* inclusive prefix over lanes */
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
        const uint32_t o = __shfl_up_sync(0xffffffffu, incl, off);
        if (lane >= off) incl += o;
    }
    const unsigned hit = __ballot_sync(0xffffffffu, incl >= want);
    const int first = hit ? __ffs(hit) - 1 : 31;
    if (lane == first) {
        uint32_t acc = incl - cnt;
        int b = 255 - lane * 8;
        for (int k = 0; k < 7; k++, b--) {
            if (acc + hist[b] >= want) break;
            acc += hist[b];
        }
        st->gt += acc; /* keys above this bin (with the same prefix) */
        st->want = want - acc;
        st->prefix |= (uint32_t)b << shift;
        st->mask |= 0xffu << shift;
    }
}

/* In-order compaction: keys above kth, then the first need_eq equal ones.
 * Warp w owns the contiguous keys [w wseg, (w + 1) wseg) of the m: the
 * counting pass leaves each warp's counts in s_cgt / s_ceq ... */
static __device__ void topk_count(const uint32_t *keys, const float *sc, bool staged, uint32_t m, uint32_t kth,
                                  uint32_t *s_cgt, uint32_t *s_ceq) {
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    const uint32_t wseg = (((m + nw - 1) / nw) + 31) & ~31u;
    const uint32_t lo = min(m, (uint32_t)wid * wseg), hi = min(m, lo + wseg);
    uint32_t c_gt = 0, c_eq = 0;
    for (uint32_t b = lo; b < hi; b += 32) {
        const uint32_t i = b + lane;
        const uint32_t k = i < hi ? topk_key(keys, sc, staged, i) : 0;
        c_gt += __popc(__ballot_sync(0xffffffffu, i < hi && k > kth));
        c_eq += __popc(__ballot_sync(0xffffffffu, i < hi && k == kth));
    }
    if (lane == 0) { s_cgt[wid] = c_gt; s_ceq[wid] = c_eq; }
}

/* ... and, after a barrier, the writing pass: exclusive scans of the warps'
 * counts give each warp its first equal rank and output slot (after eq_off
 * equal keys and sel_off selected ones before this slice), ranks inside a
 * warp from ballots; key i is written as index i0 + i */
static __device__ void topk_write(const uint32_t *keys, const float *sc, bool staged, uint32_t m, uint32_t kth,
                                  uint32_t need_eq, uint32_t eq_off, uint32_t sel_off, uint32_t i0,
                                  const uint32_t *s_cgt, const uint32_t *s_ceq, uint32_t *sel, uint32_t K) {
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    const uint32_t wseg = (((m + nw - 1) / nw) + 31) & ~31u;
    const uint32_t lo = min(m, (uint32_t)wid * wseg), hi = min(m, lo + wseg);
    /* lane l: warp l's counts */
    const uint32_t gl = lane < nw ? s_cgt[lane] : 0, el = lane < nw ? s_ceq[lane] : 0;
    uint32_t e_incl = el;
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
        const uint32_t o = __shfl_up_sync(0xffffffffu, e_incl, off);
        if (lane >= off) e_incl += o;
    }
    const uint32_t e_excl = eq_off + e_incl - el;
    const uint32_t take_l = gl + (e_excl >= need_eq ? 0 : min(el, need_eq - e_excl));
    uint32_t s_incl = take_l;
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
        const uint32_t o = __shfl_up_sync(0xffffffffu, s_incl, off);
        if (lane >= off) s_incl += o;
    }
    uint32_t eq_before = __shfl_sync(0xffffffffu, e_excl, wid);
    uint32_t sel_before = sel_off + __shfl_sync(0xffffffffu, s_incl - take_l, wid);
    const unsigned below = (1u << lane) - 1;
    for (uint32_t b = lo; b < hi; b += 32) {
        const uint32_t i = b + lane;
        const uint32_t k = i < hi ? topk_key(keys, sc, staged, i) : 0;
        const bool gt = i < hi && k > kth, eq = i < hi && k == kth;
        const unsigned em = __ballot_sync(0xffffffffu, eq);
        const bool take = gt || (eq && eq_before + __popc(em & below) < need_eq);
        const unsigned tm = __ballot_sync(0xffffffffu, take);
        const uint32_t at = sel_before + __popc(tm & below);
        if (take && at < K) sel[at] = i0 + i;
        eq_before += __popc(em);
        sel_before += __popc(tm);
    }
}

/* The K largest of the n scores sc[0..n) (n > K) into sel[0..K), in index
 * order, ties at the threshold by lowest index: the whole block, the n keys
 * in shared memory when they fit (cu_indexer sizes it). */
static __device__ void topk_select_block(const float *sc, uint32_t n, uint32_t K, uint32_t *sel,
                                         uint32_t topk_smem_keys) {
    __shared__ uint32_t s_hist[256];
    __shared__ uint32_t s_cgt[32], s_ceq[32];
    __shared__ topk_state s_st;
    extern __shared__ uint32_t s_keys[];
    const bool staged = topk_stage(sc, n, K, topk_smem_keys, s_keys, &s_st);
    for (int shift = 24; shift >= 0; shift -= 8) { /* 8 bits a pass from the top */
        for (uint32_t i = threadIdx.x; i < 256; i += blockDim.x) s_hist[i] = 0;
        __syncthreads();
        topk_histogram(s_keys, sc, staged, n, s_st.prefix, s_st.mask, shift, s_hist);
        __syncthreads();
        if (threadIdx.x < 32) topk_choose_bin(s_hist, shift, &s_st);
        __syncthreads();
    }
    const uint32_t kth = s_st.prefix, need_eq = K - s_st.gt;
    topk_count(s_keys, sc, staged, n, kth, s_cgt, s_ceq);
    __syncthreads();
    topk_write(s_keys, sc, staged, n, kth, need_eq, 0, 0, 0, s_cgt, s_ceq, sel, K);
}

__global__ void __launch_bounds__(1024) indexer_topk_kernel(const float *scores, uint32_t n_cap, uint32_t K,
                                                            const int64_t *pos0, uint32_t *sel, uint32_t *n_sel,
                                                            uint32_t topk_smem_keys) {
    pdl_wait();
    pdl_trigger();
    const uint32_t t = blockIdx.x;
    const int64_t p = pos0[0] + t;
    const uint32_t n = (uint32_t)((p + 1) / 4);
    if (n <= K) {
        if (threadIdx.x == 0) n_sel[t] = 0xffffffffu;
        return;
    }
    topk_select_block(scores + (size_t)t * n_cap, n, K, sel + (size_t)t * K, topk_smem_keys);
    if (threadIdx.x == 0) n_sel[t] = K;
}

/* The same selection by a cluster of TOPK_CL blocks a token (decode's long
 * contexts: one block walked all n keys four times). Block r of the cluster
 * owns the contiguous keys [r seg, (r + 1) seg): each radix pass counts its
 * slice into its own histogram, the blocks meet at a cluster barrier, and
 * every block sums the TOPK_CL histograms through distributed shared memory
 * and takes the same decision from the same integer counts. The in-order
 * compaction adds the earlier blocks' counts (read the same way) to each
 * block's offsets, so the set and its order are the one-block kernel's. */
#define TOPK_CL 8
__global__ void __launch_bounds__(1024) indexer_topk_cluster_kernel(const float *scores, uint32_t n_cap, uint32_t K,
                                                                    const int64_t *pos0, uint32_t *sel,
                                                                    uint32_t *n_sel, uint32_t seg_keys) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    pdl_wait();
    pdl_trigger();
    namespace cg = cooperative_groups;
    cg::cluster_group cl = cg::this_cluster();
    __shared__ uint32_t s_hist[2][256], s_tot[256];
    __shared__ uint32_t s_cgt[32], s_ceq[32], s_blk[2];
    __shared__ topk_state s_st;
    const uint32_t rank = cl.block_rank(), t = blockIdx.y;
    const int64_t p = pos0[0] + t;
    const uint32_t n = (uint32_t)((p + 1) / 4);
    if (n <= K) { /* every block of the cluster leaves here: no shared memory is read across */
        if (rank == 0 && threadIdx.x == 0) n_sel[t] = 0xffffffffu;
        return;
    }
    if (n <= TOPK_CL_MIN_N) { /* short: block 0 alone (the cluster's barriers cost more than they save) */
        if (rank == 0) {
            topk_select_block(scores + (size_t)t * n_cap, n, K, sel + (size_t)t * K, seg_keys);
            if (threadIdx.x == 0) n_sel[t] = K;
        }
        return;
    }
    const uint32_t seg = ((n + TOPK_CL - 1) / TOPK_CL + 31) & ~31u;
    const uint32_t lo = min(n, rank * seg), hi = min(n, lo + seg), m = hi - lo;
    const float *sc = scores + (size_t)t * n_cap + lo;
    extern __shared__ uint32_t s_keys[]; /* the slice's keys when they fit, else read from global */
    const bool staged = topk_stage(sc, m, K, seg_keys, s_keys, &s_st);
    int pass = 0;
    for (int shift = 24; shift >= 0; shift -= 8, pass++) {
        uint32_t *hist = s_hist[pass & 1]; /* peers read it until the next barrier: alternate */
        for (uint32_t i = threadIdx.x; i < 256; i += blockDim.x) hist[i] = 0;
        __syncthreads();
        topk_histogram(s_keys, sc, staged, m, s_st.prefix, s_st.mask, shift, hist);
        cl.sync(); /* every block's histogram is complete */
        for (uint32_t i = threadIdx.x; i < 256; i += blockDim.x) {
            uint32_t tot = 0;
            for (uint32_t r = 0; r < TOPK_CL; r++) tot += cl.map_shared_rank(hist, r)[i];
            s_tot[i] = tot;
        }
        __syncthreads();
        if (threadIdx.x < 32) topk_choose_bin(s_tot, shift, &s_st);
        __syncthreads();
    }
    const uint32_t kth = s_st.prefix, need_eq = K - s_st.gt;
    topk_count(s_keys, sc, staged, m, kth, s_cgt, s_ceq);
    __syncthreads();
    if (threadIdx.x == 0) { /* the block's totals, for the later blocks */
        uint32_t g = 0, e = 0;
        for (uint32_t w = 0; w < blockDim.x / 32; w++) g += s_cgt[w], e += s_ceq[w];
        s_blk[0] = g;
        s_blk[1] = e;
    }
    cl.sync();
    /* the earlier blocks' equal keys and selected keys, in block order */
    uint32_t eq_blk = 0, sel_blk = 0;
    for (uint32_t r = 0; r < rank; r++) {
        const uint32_t *pb = cl.map_shared_rank(s_blk, r);
        const uint32_t g = pb[0], e = pb[1];
        sel_blk += g + (eq_blk >= need_eq ? 0 : min(e, need_eq - eq_blk));
        eq_blk += e;
    }
    topk_write(s_keys, sc, staged, m, kth, need_eq, eq_blk, sel_blk, lo, s_cgt, s_ceq, sel + (size_t)t * K, K);
    if (rank == 0 && threadIdx.x == 0) n_sel[t] = K;
    cl.sync(); /* no block leaves while a later one may still read its counts */
#else
    __trap(); /* launched only on cc >= 9.0 */
#endif
}

/* set by cu_attn_init: cc >= 9.0, a cluster of TOPK_CL blocks with the most
 * shared memory cu_indexer gives them can be resident (asked once, before any
 * graph capture: a launch that fails would spoil one), and not switched off */
static bool g_topk_cluster = false;
/* keys the top-k kernels stage in shared memory at most (48K, fewer on cards
 * with less opt-in shared memory a block; the rest are read from global) */
static uint32_t g_topk_keys = 48 * 1024;
bool cu_topk_cluster_ok(void) { return g_topk_cluster; }

static bool topk_cluster_probe(void) {
    const char *e = getenv("DS4_CUDA_TOPK_CLUSTER");
    int dev = 0, cc = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&cc, cudaDevAttrComputeCapabilityMajor, dev);
    if (cc < 9 || (e && *e == '0')) return false;
    cudaLaunchConfig_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.gridDim = dim3(TOPK_CL, 1);
    cfg.blockDim = dim3(1024);
    cfg.dynamicSmemBytes = (size_t)g_topk_keys * 4;
    cudaLaunchAttribute at;
    at.id = cudaLaunchAttributeClusterDimension;
    at.val.clusterDim.x = TOPK_CL;
    at.val.clusterDim.y = at.val.clusterDim.z = 1;
    cfg.attrs = &at;
    cfg.numAttrs = 1;
    int n = 0;
    const bool ok = cudaOccupancyMaxActiveClusters(&n, indexer_topk_cluster_kernel, &cfg) == cudaSuccess && n > 0;
    (void)cudaGetLastError();
    return ok;
}

void cu_indexer(cudaStream_t st, const float *qi, const float *wi, float wscale, const float *keys, uint32_t n_cap,
                uint32_t T, uint32_t I, uint32_t ID, uint32_t K, const int64_t *pos0, float *scores, uint32_t *sel,
                uint32_t *n_sel, bool fp4_inputs, bool topk_cluster) {
    const bool mma = fp4_inputs && T > 0 && I % 16 == 0 && I > 0 && I <= 8 * IDXM_MAXNT && ID % 16 == 0 && ID > 0 &&
                     ID <= 16 * IDXM_MAXKS && ((uintptr_t)qi & 15) == 0 && ((uintptr_t)keys & 7) == 0;
    if (mma) {
        const uint32_t TT = T < IDXM_TT ? T : IDXM_TT, groups = (T + TT - 1) / TT;
        const uint32_t tiles = (n_cap + 15) / 16;
        /* decode: at least ~one block an SM while there are tiles (a warp per
         * tile, 8 tiles a block when there are plenty); prefill: 4 tiles a
         * warp, so a block's staged queries serve 32 key tiles */
        uint32_t G;
        if (groups == 1) {
            G = (tiles + IDXM_WARPS - 1) / IDXM_WARPS;
            if (G < 132) G = tiles < 132 ? tiles : 132;
        } else {
            G = (tiles + 4 * IDXM_WARPS - 1) / (4 * IDXM_WARPS);
        }
        if (G < 1) G = 1;
        const size_t smem = (size_t)TT * I * (ID + 8) * sizeof(__nv_bfloat16) + (size_t)TT * I * sizeof(float);
        cu_launch(indexer_score_mma_kernel, dim3(G, groups), IDXM_WARPS * 32, smem, st, qi, wi, wscale, keys, T, I, ID,
                  K, pos0, scores, n_cap, TT);
    } else {
        const size_t smem = ((size_t)I * (ID + 1) + I + 8 * ID) * sizeof(float);
        dim3 grid((n_cap + IDX_ROWS - 1) / IDX_ROWS, T);
        cu_launch(indexer_score_kernel, grid, 256, smem, st, qi, wi, wscale, keys, I, ID, K, pos0, scores, n_cap);
    }
    /* decode over many keys: a cluster of blocks (DS4_CUDA_TOPK_CLUSTER=0: one block) */
    if (T == 1 && topk_cluster && n_cap > TOPK_CL_MIN_N && cu_topk_cluster_ok()) {
        uint32_t seg = ((n_cap + TOPK_CL - 1) / TOPK_CL + 31) & ~31u;
        if (seg < TOPK_CL_MIN_N) seg = TOPK_CL_MIN_N; /* block 0 alone stages up to TOPK_CL_MIN_N keys */
        const uint32_t keys = seg < g_topk_keys ? seg : g_topk_keys;
        cu_launch_cluster(indexer_topk_cluster_kernel, dim3(TOPK_CL, T), 1024, (size_t)keys * 4, st, TOPK_CL, scores,
                          n_cap, K, pos0, sel, n_sel, keys);
        return;
    }
    const uint32_t staged = n_cap < g_topk_keys ? n_cap : g_topk_keys; /* up to 192 KiB of shared memory */
    cu_launch(indexer_topk_kernel, T, 1024, (size_t)staged * 4, st, scores, n_cap, K, pos0, sel, n_sel, staged);
}

/* ------------------------------------------------------------------------ */
/* attention */

#define ATT_HPB 8   /* heads per block: one warp each */
#define ATT_TILE 16 /* rows per shared-memory tile (<= 32: lane r holds row r's score) */

size_t cu_attention_part_floats(uint32_t T, uint32_t H, uint32_t D, uint32_t splits) {
    return (size_t)T * splits * H * (D + 2);
}

/* rows a tile of the decode attention: ATT_TILE, fewer where two tiles of
 * head_dim floats would not fit the card's shared memory a block (set by
 * cu_attn_init) */
static uint32_t g_att_tile = ATT_TILE;

/* WPH warps per head: each warp keeps its head's query (DPL = D/32 values a
 * lane) and its output accumulator in registers and takes every WPH-th row
 * of each staged tile; each of its rows is dotted by the whole warp (one
 * reduction per row), the online softmax runs on the warp's lanes, and the
 * value update reuses the staged row (K = V); at the end the WPH partial
 * states of a head are merged through shared memory. A warp's rows are a
 * chain of dependent reductions, so the kernel is bound by that latency:
 * two warps a head halve the chain (two heads a warp, sharing the row
 * reads, doubled it). The split's rows reach shared memory by cp.async in
 * tiles of `tr` rows, double buffered: the first two are requested before
 * the query is loaded and normalised, and tile k + 2 while tile k + 1 is
 * used, so the row loads overlap the query's prologue and the previous
 * tile's arithmetic. */
template <int DPL, int WPH, bool WIDE>
__global__ void __launch_bounds__(32 * ATT_HPB * WPH) attn_part_kernel(attn_params ap, const float *q,
                                                                     const int64_t *pos0, uint32_t S, uint32_t tr,
                                                                     float *part_o, float *part_ml, int early) {
    /* early: the host says every row was written at least two kernels
     * back on each path into this launch (attn_params.rows_early), so the
     * rows are staged before pdl_wait, under the q_b product's tail */
    if (!early) pdl_wait();
    extern __shared__ __align__(16) float s_k[]; /* [2][tr][D]; at the end [ATT_HPB][D + 2] for the merge */
    const uint32_t t = blockIdx.x, hg = blockIdx.y, s = blockIdx.z;
    const uint32_t H = ap.H, D = ap.D;
    const uint32_t h0 = hg * ATT_HPB, hpb = min((uint32_t)ATT_HPB, H - h0);
    const attn_rows AR = attn_rows_of(ap, pos0[0] + t, t);
    const uint32_t n = AR.n_raw + AR.n_comp, per = (n + S - 1) / S;
    const uint32_t r0 = min(n, s * per), r1 = min(n, r0 + per);
    const uint32_t ntile = (r1 - r0 + tr - 1) / tr;
    /* tile k (if any) -> buffer k & 1, one commit group either way */
    auto stage = [&](uint32_t k) {
        if (k < ntile) {
            const uint32_t rb = r0 + k * tr, nr = min(tr, r1 - rb);
            float *buf = s_k + (size_t)(k & 1) * tr * D;
            /* a warp a row: its address found once, no division per chunk */
            for (uint32_t rr = threadIdx.x >> 5; rr < nr; rr += blockDim.x >> 5) {
                const float *src = attn_row(ap, AR, rb + rr);
                for (uint32_t c4 = threadIdx.x & 31; c4 < D / 4; c4 += 32)
                    cp_async16(buf + (size_t)rr * D + 4 * c4, src + 4 * c4);
            }
        }
        cp_async_commit();
    };
    stage(0);
    stage(1);
    if (early) pdl_wait();
    pdl_trigger();
    const float scale = 1.0f / sqrtf((float)D);
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
    const uint32_t hw = wid % ATT_HPB, sub = wid / ATT_HPB; /* head slot, which of its WPH warps */
    const bool hv = hw < hpb;
    const float *qh = q + ((size_t)t * H + h0 + (hv ? hw : 0)) * D;
    float qr[DPL], o[DPL];
#pragma unroll
    for (int j = 0; j < DPL; j++) {
        qr[j] = hv ? qh[lane + 32 * j] : 0.0f;
        o[j] = 0.0f;
    }
    if (ap.q_post) { /* the head's RMSNorm (srow_rmsnorm's arithmetic) and RoPE (rope_pair) */
        double ss = 0;
#pragma unroll
        for (int j = 0; j < DPL; j++) ss += (double)qr[j] * qr[j];
        ss = warp_sum_d(ss);
        const float sc = (float)(1.0 / sqrt(ss / D + (double)ap.q_eps));
        const int64_t pos = pos0[0] + t;
        const uint32_t rope0 = D - ap.n_rot; /* even; lane parity = element parity */
#pragma unroll
        for (int j = 0; j < DPL; j++) {
            qr[j] = __fmul_rn(qr[j], sc);
            const float other = __shfl_xor_sync(0xffffffffu, qr[j], 1);
            const uint32_t d = lane + 32 * j;
            if (d >= rope0) { /* the pair (even, odd) sits on lanes (lane & ~1, lane | 1) */
                float a = d & 1 ? other : qr[j], b = d & 1 ? qr[j] : other;
                rope_pair<WIDE>(a, b, pos, ap.inv_freq[(d - rope0) >> 1], false);
                qr[j] = d & 1 ? b : a;
            }
        }
    }
    float m = -INFINITY, l = 0.0f;
    for (uint32_t k = 0; k < ntile; k++) {
        const uint32_t nr = min(tr, r1 - (r0 + k * tr));
        const uint32_t ni = nr > sub ? (nr - sub + WPH - 1) / WPH : 0; /* this warp's rows sub, sub + WPH, .. */
        const float *tile = s_k + (size_t)(k & 1) * tr * D;
        cp_async_wait_1(); /* tile k landed (k + 1 may be in flight) */
        __syncthreads();
        if (hv && ni) {
            float mine = -INFINITY; /* lane i: score of the warp's row i */
            for (uint32_t i = 0; i < ni; i++) {
                const float *kr = tile + (size_t)(sub + WPH * i) * D + lane;
                float d = 0;
#pragma unroll
                for (int j = 0; j < DPL; j++) d += qr[j] * kr[32 * j];
                d = warp_sum(d) * scale;
                if ((uint32_t)lane == i) mine = d;
            }
            const float mx = fmaxf(m, warp_max(mine));
            const float alpha = expf(m - mx);
            const float pw = (uint32_t)lane < ni ? expf(mine - mx) : 0.0f;
            l = l * alpha + warp_sum(pw);
            m = mx;
#pragma unroll
            for (int j = 0; j < DPL; j++) o[j] *= alpha;
            for (uint32_t i = 0; i < ni; i++) {
                const float pr = __shfl_sync(0xffffffffu, pw, i);
                const float *kr = tile + (size_t)(sub + WPH * i) * D + lane;
#pragma unroll
                for (int j = 0; j < DPL; j++) o[j] += pr * kr[32 * j];
            }
        }
        __syncthreads(); /* buffer k & 1 is free */
        stage(k + 2);
    }
    cp_async_wait_all();
    if (WPH > 1) { /* the other warps' states through shared memory, merged in warp order */
        __syncthreads();
        float *sm = s_k + (size_t)hw * (D + 2);
        for (uint32_t w = 1; w < WPH; w++) {
            if (sub == w && hv) {
#pragma unroll
                for (int j = 0; j < DPL; j++) sm[lane + 32 * j] = o[j];
                if (lane == 0) sm[D] = m, sm[D + 1] = l;
            }
            __syncthreads();
            if (sub == 0 && hv) {
                const float mb = sm[D], lb = sm[D + 1], mx = fmaxf(m, mb);
                if (mx != -INFINITY) { /* (neither had a row: nothing to add) */
                    const float a = expf(m - mx), b = expf(mb - mx);
                    l = l * a + lb * b;
#pragma unroll
                    for (int j = 0; j < DPL; j++) o[j] = o[j] * a + sm[lane + 32 * j] * b;
                    m = mx;
                }
            }
            __syncthreads();
        }
    }
    if (hv && sub == 0) {
        const size_t base = ((size_t)t * S + s) * H + h0 + hw;
#pragma unroll
        for (int j = 0; j < DPL; j++) part_o[base * D + lane + 32 * j] = o[j];
        if (lane == 0) {
            part_ml[base * 2] = m;
            part_ml[base * 2 + 1] = l;
        }
    }
}

/* a thread a dimension (up to 512 threads): each loads its dimension's S
 * split values before the split weights are known, so the two loads from L2
 * overlap; the sum keeps the split order (the same result) */
#define ATT_COMBINE_MAX_THREADS 512
template <bool WIDE>
__global__ void __launch_bounds__(ATT_COMBINE_MAX_THREADS) attn_combine_kernel(attn_params ap, const int64_t *pos0,
                                                                               uint32_t S, const float *part_o,
                                                                               const float *part_ml, float *out,
                                                                               dact oq) {
    pdl_wait();
    pdl_trigger();
    extern __shared__ float s_row[];
    __shared__ float s_w[64];
    __shared__ float s_inv;
    const uint32_t t = blockIdx.x, h = blockIdx.y, H = ap.H, D = ap.D;
    float po[32];
    const uint32_t d0 = threadIdx.x;
#pragma unroll
    for (uint32_t s = 0; s < 32; s++)
        po[s] = s < S && d0 < D ? part_o[(((size_t)t * S + s) * H + h) * D + d0] : 0.0f;
    if (threadIdx.x < 32) { /* warp 0: one split per lane (S <= 32) */
        const int lane = threadIdx.x;
        const float sink = ap.sinks[h];
        const size_t b = ((size_t)t * S + lane) * H + h;
        const float ms = (uint32_t)lane < S ? part_ml[b * 2] : -INFINITY;
        const float ls = (uint32_t)lane < S ? part_ml[b * 2 + 1] : 0.0f;
        const float m = fmaxf(sink, warp_max(ms));
        const float w = (uint32_t)lane < S ? expf(ms - m) : 0.0f;
        if ((uint32_t)lane < S) s_w[lane] = w;
        const float den = expf(sink - m) + warp_sum(ls * w);
        if (lane == 0) s_inv = 1.0f / den;
    }
    __syncthreads();
    const float inv = s_inv;
    for (uint32_t d = d0; d < D; d += blockDim.x) {
        if (d != d0)
#pragma unroll
            for (uint32_t s = 0; s < 32; s++) po[s] = s < S ? part_o[(((size_t)t * S + s) * H + h) * D + d] : 0.0f;
        float acc = 0;
#pragma unroll
        for (uint32_t s = 0; s < 32; s++)
            if (s < S) acc += po[s] * s_w[s];
        s_row[d] = acc * inv;
    }
    __syncthreads();
    srow_rope<WIDE>(s_row, D, ap.n_rot, ap.inv_freq, pos0[0] + t, true);
    const size_t o = ((size_t)t * H + h) * D;
    #pragma unroll 4
    for (uint32_t d = threadIdx.x; d < D; d += blockDim.x) out[o + d] = s_row[d];
    if (oq.f) { /* this head's slice of the Q8_0 / Q8_K forms (D % 256 == 0) */
        const qrow q = qrow_of(oq, t, h * D);
        srow_quantize(s_row, D, q.q8, q.d8, q.qk, q.dk, q.bk);
    }
}

void cu_attention(cudaStream_t st, const attn_params &ap, const float *q, uint32_t T, const int64_t *pos0, float *part,
                  size_t part_floats, uint32_t splits, float *o, const dact *oq) {
    /* two tiles of tr rows (double buffer) */
    uint32_t tr = g_att_tile;
    if (ap.D > 512) tr = tr * 512 / ap.D < 1 ? 1 : tr * 512 / ap.D;
    const size_t tiles = (size_t)2 * tr * ap.D, merge = (size_t)ATT_HPB * (ap.D + 2);
    const size_t smem = (tiles > merge ? tiles : merge) * sizeof(float);
    float *part_o = part, *part_ml = part + (size_t)T * splits * ap.H * ap.D;
    (void)part_floats;
    dim3 grid(T, (ap.H + ATT_HPB - 1) / ATT_HPB, splits);
    /* two warps a head (DS4_CUDA_ATT_WPH=1: one); rows staged before
     * pdl_wait where the host allows it and no indexer selection is read
     * (DS4_CUDA_ATT_EARLY=0: never) */
    static int wph = -1, early_env = 1;
    if (wph < 0) {
        const char *e = getenv("DS4_CUDA_ATT_WPH");
        wph = e && *e == '1' ? 1 : 2;
        e = getenv("DS4_CUDA_ATT_EARLY");
        early_env = !(e && *e == '0');
    }
    const int early = early_env && ap.rows_early && !ap.sel;
#define ATT_PART(DPL, WPH)                                                                                       \
    do {                                                                                                         \
        if (ap.wide)                                                                                             \
            cu_launch(attn_part_kernel<DPL, WPH, true>, grid, 32 * ATT_HPB * WPH, smem, st, ap, q, pos0, splits, \
                      tr, part_o, part_ml, early);                                                               \
        else                                                                                                     \
            cu_launch(attn_part_kernel<DPL, WPH, false>, grid, 32 * ATT_HPB * WPH, smem, st, ap, q, pos0, splits, \
                      tr, part_o, part_ml, early);                                                               \
    } while (0)
    switch (ap.D / 32) {
    case 4: if (wph == 2) ATT_PART(4, 2); else ATT_PART(4, 1); break;
    case 8: if (wph == 2) ATT_PART(8, 2); else ATT_PART(8, 1); break;
    case 16: if (wph == 2) ATT_PART(16, 2); else ATT_PART(16, 1); break;
    default: if (wph == 2) ATT_PART(32, 2); else ATT_PART(32, 1); break;
    }
#undef ATT_PART
    dact none;
    memset(&none, 0, sizeof none);
    dim3 g2(T, ap.H);
    const uint32_t nt = ap.D < ATT_COMBINE_MAX_THREADS ? (ap.D + 31) / 32 * 32 : ATT_COMBINE_MAX_THREADS;
    const dact oqf = oq && ap.D % 256 == 0 ? *oq : none;
    if (ap.wide) cu_launch(attn_combine_kernel<true>, g2, nt, ap.D * sizeof(float), st, ap, pos0, splits, part_o, part_ml, o, oqf);
    else cu_launch(attn_combine_kernel<false>, g2, nt, ap.D * sizeof(float), st, ap, pos0, splits, part_o, part_ml, o, oqf);
}

bool cu_attn_init(char *err, size_t errlen) {
    /* the caps below are asked only up to what the card allows a block (the
     * kernels' real needs are smaller, the top-k's staging adapts) */
    int dev = 0, optin = 0;
    cudaGetDevice(&dev);
    CU_OK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev), err, errlen,
          "shared memory limit");
    auto cap = [&](int bytes) { return bytes < optin ? bytes : optin; };
    g_topk_keys = (uint32_t)((cap(200 * 1024) - 8 * 1024) / 4); /* 8 KiB left for the kernels' static arrays */
    if (g_topk_keys > 48 * 1024) g_topk_keys = 48 * 1024;
    /* the decode attention's double buffer: 2 x ATT_TILE rows of up to 512
     * floats (64 KiB; head_dim 1024 halves the rows), fewer rows where the
     * card allows less */
    const int att_bytes = cap(2 * ATT_TILE * 512 * 4);
    g_att_tile = (uint32_t)att_bytes / (2 * 512 * 4);
    if (g_att_tile < 1) g_att_tile = 1;
#define ATT_VARIANTS(W)                                                                                            \
    (const void *)attn_part_kernel<4, 1, W>, (const void *)attn_part_kernel<8, 1, W>,                              \
        (const void *)attn_part_kernel<16, 1, W>, (const void *)attn_part_kernel<32, 1, W>,                        \
        (const void *)attn_part_kernel<4, 2, W>, (const void *)attn_part_kernel<8, 2, W>,                          \
        (const void *)attn_part_kernel<16, 2, W>, (const void *)attn_part_kernel<32, 2, W>
    for (const void *f : {ATT_VARIANTS(false), ATT_VARIANTS(true)})
        CU_OK(cudaFuncSetAttribute(f, cudaFuncAttributeMaxDynamicSharedMemorySize, att_bytes), err, errlen,
              "attention shared memory");
#undef ATT_VARIANTS
    CU_OK(cudaFuncSetAttribute(indexer_score_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, cap(160 * 1024)), err,
          errlen, "indexer shared memory");
    CU_OK(cudaFuncSetAttribute(indexer_score_mma_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               (int)(IDXM_TT * 8 * IDXM_MAXNT * (16 * IDXM_MAXKS + 8) * sizeof(__nv_bfloat16) +
                                     IDXM_TT * 8 * IDXM_MAXNT * sizeof(float))),
          err, errlen, "indexer (tensor cores) shared memory");
    CU_OK(cudaFuncSetAttribute(indexer_topk_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, g_topk_keys * 4), err,
          errlen, "top-k shared memory");
    CU_OK(cudaFuncSetAttribute(indexer_topk_cluster_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               g_topk_keys * 4),
          err, errlen, "top-k (cluster) shared memory");
    g_topk_cluster = topk_cluster_probe();
    return true;
}

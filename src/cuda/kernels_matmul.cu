/* kernels_matmul.cu - activation quantization and quantized matrix products.
 *
 * One warp computes one weight row against up to NT activation rows: each
 * lane loads its slice of the row once (16-byte loads for F16/Q8_0/Q4_K,
 * one 8-byte IQ2_XXS sub-block, one Q2_K quarter block), then dots it with
 * every activation row of the group. Integer inner sums use dp4a over the
 * same int8 activations the CPU uses (Q8_0 for Q8_0 weights, Q8_K for the
 * K-quants and IQ2_XXS), and are combined per block exactly as the CPU's
 * vec_dot does; only the order in which block results are added differs
 * (a warp tree instead of a left-to-right sum).
 *
 * cu_matvec runs a small list of independent products in one launch (the
 * blocks of all jobs form one grid) so the decode graph has few nodes; a job
 * can also run one product per (expert) pair with the matrix picked from a
 * device array of expert ids (decode MoE). cu_moe_mm is the prefill MoE:
 * pairs sorted by expert, each block streams one expert's rows once per
 * group of NT pairs.
 *
 * Prefill (T >= 16 tokens, DS4_CUDA_MMA_MIN): products with quantized or
 * F16/BF16 weights go to the tensor-core kernels of kernels_mma.cu instead (BF16
 * tensor cores, weights dequantized into the MMA operand registers); F32
 * weights, jobs marked exact (the router) and decode stay on the kernels
 * above (the decode router has its own kernel in kernels_ops.cu).
 */
#include "cuda_internal.cuh"

#include <stdlib.h>
#include <string.h>

#include "iq2xxs_tables.h"

__device__ uint64_t g_iq2_grid[256];
/* IQ2_XXS sign masks: entry i has byte j = 0xff where bit j of ksigns[i]
 * (the 7 stored sign bits plus the parity bit) is set, so a group of 8 grid
 * bytes is signed with one xor and one byte-wise subtract per 4 */
__device__ uint64_t g_iq2_smask[128];

bool cu_tables_init(char *err, size_t errlen) {
    uint64_t smask[128];
    for (int i = 0; i < 128; i++) {
        smask[i] = 0;
        for (int j = 0; j < 8; j++)
            if (ds4_iq2xxs_ksigns[i] >> j & 1) smask[i] |= (uint64_t)0xff << (8 * j);
    }
    CU_OK(cudaMemcpyToSymbol(g_iq2_grid, ds4_iq2xxs_grid, sizeof ds4_iq2xxs_grid), err, errlen, "IQ2 grid upload");
    CU_OK(cudaMemcpyToSymbol(g_iq2_smask, smask, sizeof smask), err, errlen, "IQ2 sign masks upload");
    return cu_mma_tables_init(err, errlen);
}

/* ------------------------------------------------------------------------ */
/* activation quantization: one block of 256 threads per 256 values of a row */

__global__ void quantize_kernel(const float *x, uint32_t xstride, uint32_t n, int8_t *q8, float *d8, int8_t *qk,
                                float *dk, int32_t *bk) {
    pdl_wait();
    pdl_trigger();
    const uint32_t t = blockIdx.y, i = blockIdx.x * 256 + threadIdx.x;
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
    const bool in = i < n;
    const float v = in ? x[(size_t)t * xstride + i] : 0.0f;
    const size_t o = (size_t)t * n + i;
    if (q8) { /* ggml quantize_row_q8_0_ref: d = amax/127, q = round(x/d) */
        const float amax = warp_max(fabsf(v));
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        if (in) {
            q8[o] = (int8_t)roundf(v * id);
            if (lane == 0) d8[o / 32] = round_f16(d);
        }
    }
    if (qk) { /* ggml quantize_row_q8_K_ref: the first element of largest magnitude sets the scale */
        __shared__ float s_ax[8];
        __shared__ int s_ix[8];
        float ax = in ? fabsf(v) : -1.0f;
        if (ax != ax) ax = -1.0f;
        int ix = threadIdx.x;
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) {
            const float oa = __shfl_xor_sync(0xffffffffu, ax, off);
            const int oi = __shfl_xor_sync(0xffffffffu, ix, off);
            if (oa > ax || (oa == ax && oi < ix)) { ax = oa; ix = oi; }
        }
        if (lane == 0) { s_ax[wid] = ax; s_ix[wid] = ix; }
        __syncthreads();
        float best = s_ax[0];
        int bi = s_ix[0];
        for (int w = 1; w < 8; w++)
            if (s_ax[w] > best || (s_ax[w] == best && s_ix[w] < bi)) { best = s_ax[w]; bi = s_ix[w]; }
        __shared__ float s_max;
        if (threadIdx.x == bi) s_max = v;
        __syncthreads();
        int q = 0;
        if (best > 0.0f) {
            const float iscale = -127.0f / s_max;
            q = __float2int_rn(iscale * v);
            q = q < 127 ? q : 127;
            if (threadIdx.x == 0) dk[o / 256] = 1.0f / iscale;
        } else if (threadIdx.x == 0) {
            dk[o / 256] = 0.0f;
        }
        if (in) qk[o] = (int8_t)q;
        int s = q;
#pragma unroll
        for (int off = 8; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
        if (in && (lane & 15) == 0) bk[o / 16] = s;
    }
}

void cu_quantize(cudaStream_t st, const float *x, uint32_t xstride, uint32_t rows, dact &a) {
    const bool k8 = a.q8 && a.n % 32 == 0, kk = a.qk && a.n % 256 == 0;
    if (!k8 && !kk) return;
    dim3 grid((a.n + 255) / 256, rows);
    cu_launch(quantize_kernel, grid, 256, 0, st, x, xstride, a.n, k8 ? a.q8 : NULL, a.d8, kk ? a.qk : NULL, a.dk, a.bk);
}

__global__ void dequant_rows_kernel(dweight w, const int32_t *ids, uint32_t n, float *out, uint32_t rep) {
    pdl_wait();
    pdl_trigger();
    const uint32_t r = blockIdx.y;
    int64_t id = ids[r];
    if (id < 0 || id >= (int64_t)w.n_out) id = 0;
    for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        const float v = dw_elem(w, (uint64_t)id, i);
        for (uint32_t k = 0; k < rep; k++) out[((size_t)r * rep + k) * n + i] = v;
    }
}

void cu_dequant_rows(cudaStream_t st, const dweight &w, const int32_t *ids, uint32_t n, float *out, uint32_t rep) {
    dim3 grid((w.n_in + 255) / 256, n);
    cu_launch(dequant_rows_kernel, grid, 256, 0, st, w, ids, w.n_in, out, rep);
}

/* ------------------------------------------------------------------------ */
/* one weight row . NT activation rows, per type (warp cooperative) */

#define FULL 0xffffffffu

static __device__ __forceinline__ int dp4a(int a, int b, int c) { return __dp4a(a, b, c); }

template <int NT>
static __device__ __forceinline__ void dot_f32(const float *w, uint32_t n, const act_view &x, const uint32_t (&xr)[NT],
                                               int nt, float (&acc)[NT]) {
    const int lane = threadIdx.x & 31;
    for (uint32_t i = lane * 4; i < n; i += 128) {
        const float4 wv = *(const float4 *)(w + i);
#pragma unroll
        for (int j = 0; j < NT; j++)
            if (j < nt) {
                const float4 xv = *(const float4 *)(x.f + (size_t)xr[j] * x.stride + x.off + i);
                acc[j] += wv.x * xv.x + wv.y * xv.y + wv.z * xv.z + wv.w * xv.w;
            }
    }
}

#define F16U 2
template <int NT, bool BF>
static __device__ __forceinline__ void dot_f16(const uint16_t *w, uint32_t n, const act_view &x,
                                               const uint32_t (&xr)[NT], int nt, float (&acc)[NT]) {
    const int lane = threadIdx.x & 31;
    for (uint32_t base = 0; base < n; base += 256 * F16U) {
        float wf[F16U][8];
#pragma unroll
        for (int v = 0; v < F16U; v++) {
            const uint32_t i = base + 256 * v + lane * 8;
            const uint4 raw = i < n ? __ldg((const uint4 *)(w + i)) : make_uint4(0, 0, 0, 0);
            const uint32_t u[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
            for (int k = 0; k < 4; k++) {
                if (BF) {
                    wf[v][2 * k] = __uint_as_float(u[k] << 16);
                    wf[v][2 * k + 1] = __uint_as_float(u[k] & 0xffff0000u);
                } else {
                    const float2 f = __half22float2(*(const __half2 *)&u[k]);
                    wf[v][2 * k] = f.x;
                    wf[v][2 * k + 1] = f.y;
                }
            }
        }
#pragma unroll
        for (int j = 0; j < NT; j++)
            if (j < nt) {
#pragma unroll
                for (int v = 0; v < F16U; v++) {
                    const uint32_t i = base + 256 * v + lane * 8;
                    if (i >= n) break;
                    const float *xp = x.f + (size_t)xr[j] * x.stride + x.off + i;
                    const float4 a = *(const float4 *)xp, b = *(const float4 *)(xp + 4);
                    acc[j] += wf[v][0] * a.x + wf[v][1] * a.y + wf[v][2] * a.z + wf[v][3] * a.w + wf[v][4] * b.x +
                              wf[v][5] * b.y + wf[v][6] * b.z + wf[v][7] * b.w;
                }
            }
    }
}

/* Q8_0 split: lane l of a pass takes 16 bytes (half a block); the two halves
 * of a block are summed as integers before the scale, as the CPU does. Four
 * chunks per lane are loaded before any is used (memory-level parallelism:
 * a decode step is bound by how many bytes are in flight). */
#define Q8U 4
template <int NT>
static __device__ __forceinline__ void dot_q8_0(const int8_t *wq, const __half *wd, uint32_t n, const act_view &x,
                                                const uint32_t (&xr)[NT], int nt, float (&acc)[NT]) {
    const int lane = threadIdx.x & 31;
    const uint32_t nch = n / 16;
    for (uint32_t base = 0; base < nch; base += 32 * Q8U) {
        int4 wv[Q8U];
        float dw[Q8U];
#pragma unroll
        for (int u = 0; u < Q8U; u++) {
            const uint32_t c = base + 32 * u + lane;
            const bool act = c < nch;
            wv[u] = act ? __ldg((const int4 *)(wq + 16 * (size_t)c)) : make_int4(0, 0, 0, 0);
            dw[u] = act ? __half2float(wd[c / 2]) : 0.0f;
        }
#pragma unroll
        for (int j = 0; j < NT; j++)
            if (j < nt) {
                const size_t xo = (size_t)xr[j] * x.stride + x.off;
                int4 xv[Q8U];
                float dx[Q8U];
#pragma unroll
                for (int u = 0; u < Q8U; u++) {
                    const uint32_t c = base + 32 * u + lane;
                    const bool act = c < nch;
                    xv[u] = act ? *(const int4 *)(x.q8 + xo + 16 * (size_t)c) : make_int4(0, 0, 0, 0);
                    dx[u] = act ? x.d8[xo / 32 + c / 2] : 0.0f;
                }
#pragma unroll
                for (int u = 0; u < Q8U; u++) {
                    int s = dp4a(wv[u].x, xv[u].x, 0);
                    s = dp4a(wv[u].y, xv[u].y, s);
                    s = dp4a(wv[u].z, xv[u].z, s);
                    s = dp4a(wv[u].w, xv[u].w, s);
                    s += __shfl_xor_sync(FULL, s, 1);
                    if (!(lane & 1)) acc[j] += (float)s * (dw[u] * dx[u]);
                }
            }
    }
}


/* IQ2_XXS split: one 32-value sub-block per lane; the 8 lanes of a
 * super-block add their (2s+1)-scaled integer sums before the block scale. */
#define IQU 4
template <int NT>
static __device__ __forceinline__ void dot_iq2_xxs(const uint8_t *wq, const __half *wd, uint32_t n, const act_view &x,
                                                   const uint32_t (&xr)[NT], int nt, float (&acc)[NT],
                                                   const uint64_t *grid, const uint64_t *smask) {
    const int lane = threadIdx.x & 31;
    const uint32_t nsub = n / 32;
    for (uint32_t base = 0; base < nsub; base += 32 * IQU) {
        uint2 wv[IQU];
        float dw[IQU];
#pragma unroll
        for (int v = 0; v < IQU; v++) {
            const uint32_t sb = base + 32 * v + lane;
            const bool act = sb < nsub;
            wv[v] = act ? __ldg((const uint2 *)(wq + 8 * (size_t)sb)) : make_uint2(0, 0);
            dw[v] = act ? __half2float(wd[sb / 8]) : 0.0f;
        }
#pragma unroll
        for (int v = 0; v < IQU; v++) {
            const uint32_t sb = base + 32 * v + lane;
            const bool act = sb < nsub;
            int wvals[8];
#pragma unroll
            for (int l = 0; l < 4; l++) {
                const uint64_t g = grid[(wv[v].x >> (8 * l)) & 0xff];
                const uint64_t sm = smask[(wv[v].y >> (7 * l)) & 127];
                const uint32_t mlo = (uint32_t)sm, mhi = (uint32_t)(sm >> 32);
                wvals[2 * l] = (int)__vsub4((uint32_t)g ^ mlo, mlo);
                wvals[2 * l + 1] = (int)__vsub4((uint32_t)(g >> 32) ^ mhi, mhi);
            }
            const int ls = 2 * (int)(wv[v].y >> 28) + 1;
#pragma unroll
            for (int j = 0; j < NT; j++)
                if (j < nt) {
                    const size_t xo = (size_t)xr[j] * x.stride + x.off;
                    int s = 0;
                    if (act) {
                        const int4 a0 = *(const int4 *)(x.qk + xo + 32 * (size_t)sb);
                        const int4 a1 = *(const int4 *)(x.qk + xo + 32 * (size_t)sb + 16);
                        s = dp4a(wvals[0], a0.x, s);
                        s = dp4a(wvals[1], a0.y, s);
                        s = dp4a(wvals[2], a0.z, s);
                        s = dp4a(wvals[3], a0.w, s);
                        s = dp4a(wvals[4], a1.x, s);
                        s = dp4a(wvals[5], a1.y, s);
                        s = dp4a(wvals[6], a1.z, s);
                        s = dp4a(wvals[7], a1.w, s);
                        s *= ls;
                    }
                    s += __shfl_xor_sync(FULL, s, 1);
                    s += __shfl_xor_sync(FULL, s, 2);
                    s += __shfl_xor_sync(FULL, s, 4);
                    if (act && (lane & 7) == 0) acc[j] += (dw[v] * x.dk[xo / 256 + sb / 8]) * (float)s;
                }
        }
    }
}


/* Q2_K (84-byte blocks): 4 lanes per block, lane (h, k) takes the 16 code
 * bytes qs[32h + 16k ..] and the 4 sub-blocks 8h + 2j + k they hold. */
template <int NT>
static __device__ __forceinline__ void dot_q2_k(const uint8_t *wr, uint32_t n, const act_view &x,
                                                const uint32_t (&xr)[NT], int nt, float (&acc)[NT]) {
    const int lane = threadIdx.x & 31;
    const uint32_t nunits = (n / 256) * 4;
    for (uint32_t base = 0; base < nunits; base += 32) {
        const uint32_t u = base + lane;
        const bool act = u < nunits;
        const uint32_t blk = u >> 2, part = u & 3, h = part >> 1, k = part & 1;
        uint32_t qv[4] = {0, 0, 0, 0}, sc8[2] = {0, 0}, ddm = 0;
        if (act) {
            const uint8_t *b = wr + 84 * (size_t)blk;
            const uint32_t *q32 = (const uint32_t *)(b + 16 + 32 * h + 16 * k);
            qv[0] = q32[0]; qv[1] = q32[1]; qv[2] = q32[2]; qv[3] = q32[3];
            sc8[0] = *(const uint32_t *)(b + 8 * h);
            sc8[1] = *(const uint32_t *)(b + 8 * h + 4);
            ddm = *(const uint32_t *)(b + 80);
        }
        const float d = h2f(ddm & 0xffff), dmin = h2f(ddm >> 16);
#pragma unroll
        for (int j = 0; j < NT; j++)
            if (j < nt) {
                const size_t xo = (size_t)xr[j] * x.stride + x.off;
                int isum = 0, summs = 0;
                float dx = 0;
                if (act) {
                    const int8_t *a = x.qk + xo + 256 * (size_t)blk + 128 * h + 16 * k;
                    const int32_t *bs = x.bk + xo / 16 + 16 * (size_t)blk;
                    dx = x.dk[xo / 256 + blk];
#pragma unroll
                    for (int jj = 0; jj < 4; jj++) {
                        const uint32_t idx = 2 * jj + k; /* byte of the 8 scale bytes of half h */
                        const uint32_t sc = byte_of(sc8[idx >> 2], idx & 3);
                        const int4 av = *(const int4 *)(a + 32 * jj);
                        int sub = dp4a((qv[0] >> (2 * jj)) & 0x03030303, av.x, 0);
                        sub = dp4a((qv[1] >> (2 * jj)) & 0x03030303, av.y, sub);
                        sub = dp4a((qv[2] >> (2 * jj)) & 0x03030303, av.z, sub);
                        sub = dp4a((qv[3] >> (2 * jj)) & 0x03030303, av.w, sub);
                        isum += (int)(sc & 15) * sub;
                        summs += bs[8 * h + 2 * jj + k] * (int)(sc >> 4);
                    }
                }
                isum += __shfl_xor_sync(FULL, isum, 1);
                isum += __shfl_xor_sync(FULL, isum, 2);
                summs += __shfl_xor_sync(FULL, summs, 1);
                summs += __shfl_xor_sync(FULL, summs, 2);
                if (act && part == 0) acc[j] += (dx * d) * (float)isum - (dx * dmin) * (float)summs;
            }
    }
}


/* Q4_K (144-byte blocks): 4 lanes per block, lane jp takes the 32 code bytes
 * of sub-blocks 2jp (low nibbles) and 2jp+1 (high nibbles). */
template <int NT>
static __device__ __forceinline__ void dot_q4_k(const uint8_t *wr, uint32_t n, const act_view &x,
                                                const uint32_t (&xr)[NT], int nt, float (&acc)[NT]) {
    const int lane = threadIdx.x & 31;
    const uint32_t nunits = (n / 256) * 4;
    for (uint32_t base = 0; base < nunits; base += 32) {
        const uint32_t u = base + lane;
        const bool act = u < nunits;
        const uint32_t blk = u >> 2, jp = u & 3;
        uint32_t qv[8] = {0, 0, 0, 0, 0, 0, 0, 0}, sc[3] = {0, 0, 0}, dd = 0;
        if (act) {
            const uint8_t *b = wr + 144 * (size_t)blk;
            dd = *(const uint32_t *)b;
            sc[0] = *(const uint32_t *)(b + 4);
            sc[1] = *(const uint32_t *)(b + 8);
            sc[2] = *(const uint32_t *)(b + 12);
            const uint4 q0 = *(const uint4 *)(b + 16 + 32 * jp), q1 = *(const uint4 *)(b + 32 + 32 * jp);
            qv[0] = q0.x; qv[1] = q0.y; qv[2] = q0.z; qv[3] = q0.w;
            qv[4] = q1.x; qv[5] = q1.y; qv[6] = q1.z; qv[7] = q1.w;
        }
        const float d = h2f(dd & 0xffff), dmin = h2f(dd >> 16);
        int sc0 = 0, m0 = 0, sc1 = 0, m1 = 0;
        q4k_scale_min(sc, 2 * jp, sc0, m0);
        q4k_scale_min(sc, 2 * jp + 1, sc1, m1);
#pragma unroll
        for (int j = 0; j < NT; j++)
            if (j < nt) {
                const size_t xo = (size_t)xr[j] * x.stride + x.off;
                int sumi = 0, summ = 0;
                float dx = 0;
                if (act) {
                    const int8_t *a = x.qk + xo + 256 * (size_t)blk + 64 * jp;
                    const int32_t *bs = x.bk + xo / 16 + 16 * (size_t)blk;
                    dx = x.dk[xo / 256 + blk];
                    const int4 a0 = *(const int4 *)a, a1 = *(const int4 *)(a + 16);
                    const int4 a2 = *(const int4 *)(a + 32), a3 = *(const int4 *)(a + 48);
                    int s0 = dp4a(qv[0] & 0x0f0f0f0f, a0.x, 0);
                    s0 = dp4a(qv[1] & 0x0f0f0f0f, a0.y, s0);
                    s0 = dp4a(qv[2] & 0x0f0f0f0f, a0.z, s0);
                    s0 = dp4a(qv[3] & 0x0f0f0f0f, a0.w, s0);
                    s0 = dp4a(qv[4] & 0x0f0f0f0f, a1.x, s0);
                    s0 = dp4a(qv[5] & 0x0f0f0f0f, a1.y, s0);
                    s0 = dp4a(qv[6] & 0x0f0f0f0f, a1.z, s0);
                    s0 = dp4a(qv[7] & 0x0f0f0f0f, a1.w, s0);
                    int s1 = dp4a((qv[0] >> 4) & 0x0f0f0f0f, a2.x, 0);
                    s1 = dp4a((qv[1] >> 4) & 0x0f0f0f0f, a2.y, s1);
                    s1 = dp4a((qv[2] >> 4) & 0x0f0f0f0f, a2.z, s1);
                    s1 = dp4a((qv[3] >> 4) & 0x0f0f0f0f, a2.w, s1);
                    s1 = dp4a((qv[4] >> 4) & 0x0f0f0f0f, a3.x, s1);
                    s1 = dp4a((qv[5] >> 4) & 0x0f0f0f0f, a3.y, s1);
                    s1 = dp4a((qv[6] >> 4) & 0x0f0f0f0f, a3.z, s1);
                    s1 = dp4a((qv[7] >> 4) & 0x0f0f0f0f, a3.w, s1);
                    sumi = sc0 * s0 + sc1 * s1;
                    summ = m0 * (bs[4 * jp] + bs[4 * jp + 1]) + m1 * (bs[4 * jp + 2] + bs[4 * jp + 3]);
                }
                sumi += __shfl_xor_sync(FULL, sumi, 1);
                sumi += __shfl_xor_sync(FULL, sumi, 2);
                summ += __shfl_xor_sync(FULL, summ, 1);
                summ += __shfl_xor_sync(FULL, summ, 2);
                if (act && jp == 0) acc[j] += (dx * d) * (float)sumi - (dx * dmin) * (float)summ;
            }
    }
}

/* weight types as bits, so a kernel can be compiled for the types its jobs
 * use (fewer registers: the decode mat-vec runs more warps an SM) */
#define TB(t) (1u << (t))
#define TB_ALL (TB(DS4_TYPE_F32) | TB(DS4_TYPE_F16) | TB(DS4_TYPE_BF16) | TB(DS4_TYPE_Q8_0) | TB(DS4_TYPE_IQ2_XXS) | \
                TB(DS4_TYPE_Q2_K) | TB(DS4_TYPE_Q4_K))

/* The row's dot with NT activation rows; every lane returns the totals.
 * TYPES: the weight types this instantiation handles (others give 0). */
template <int NT, uint32_t TYPES = TB_ALL>
static __device__ __forceinline__ void row_dot(const dweight &w, uint64_t wrow, const act_view &x,
                                               const uint32_t (&xr)[NT], int nt, float (&out)[NT],
                                               const uint64_t *grid, const uint64_t *smask) {
    float acc[NT];
#pragma unroll
    for (int j = 0; j < NT; j++) acc[j] = 0.0f;
    const uint8_t *q = w.q + wrow * w.row_bytes;
    if ((TYPES & TB(DS4_TYPE_F32)) && w.type == DS4_TYPE_F32) dot_f32<NT>((const float *)q, w.n_in, x, xr, nt, acc);
    else if ((TYPES & TB(DS4_TYPE_F16)) && w.type == DS4_TYPE_F16)
        dot_f16<NT, false>((const uint16_t *)q, w.n_in, x, xr, nt, acc);
    else if ((TYPES & TB(DS4_TYPE_BF16)) && w.type == DS4_TYPE_BF16)
        dot_f16<NT, true>((const uint16_t *)q, w.n_in, x, xr, nt, acc);
    else if ((TYPES & TB(DS4_TYPE_Q8_0)) && w.type == DS4_TYPE_Q8_0)
        dot_q8_0<NT>((const int8_t *)q, w.d + wrow * (w.n_in / 32), w.n_in, x, xr, nt, acc);
    else if ((TYPES & TB(DS4_TYPE_IQ2_XXS)) && w.type == DS4_TYPE_IQ2_XXS)
        dot_iq2_xxs<NT>(q, w.d + wrow * (w.n_in / 256), w.n_in, x, xr, nt, acc, grid, smask);
    else if ((TYPES & TB(DS4_TYPE_Q2_K)) && w.type == DS4_TYPE_Q2_K) dot_q2_k<NT>(q, w.n_in, x, xr, nt, acc);
    else if ((TYPES & TB(DS4_TYPE_Q4_K)) && w.type == DS4_TYPE_Q4_K) dot_q4_k<NT>(q, w.n_in, x, xr, nt, acc);
#pragma unroll
    for (int j = 0; j < NT; j++) {
        float v = warp_sum(acc[j]);
        if ((TYPES & TB(DS4_TYPE_IQ2_XXS)) && w.type == DS4_TYPE_IQ2_XXS) v *= 0.125f;
        out[j] = v;
    }
}

/* ------------------------------------------------------------------------ */
/* kernels */

#define MV_WARPS 8

typedef struct {
    mv_job jobs[MV_MAX_JOBS];
    uint32_t blk0[MV_MAX_JOBS + 1]; /* first block of each job */
    uint32_t T;
    int n_jobs;
    int need_iq2;
    int fast;     /* IQ2_XXS / Q2_K one-pass decode paths (DS4_CUDA_MV_FAST=0: off) */
    uint32_t rpw; /* rows per warp */
    int iq2_table_signs; /* IQ2_XXS one-pass: sign masks from the smask table (DS4_CUDA_IQ2_SIGNS=table) */
    int q2k_chunk;       /* Q2_K one-pass: 4 rows' loads issued together (DS4_CUDA_Q2K_CHUNK=1: the next row's) */
    uint32_t pf_blocks; /* decode: blocks [0, pf_blocks) prefetch the launch's weights into L2 */
    uint64_t pf_max;    /* at most this many bytes (the first in block order) */
} mv_launch;

/* Weight prefetch before pdl_wait (decode). A launch is scheduled as soon
 * as the kernel before it passed its own wait, and most mat-vecs follow a
 * short latency-bound kernel (HC pre, a norm, the attention combine, SwiGLU)
 * that leaves DRAM idle: the first pf_blocks blocks split the launch's
 * weight bytes (quants and split scales of every job and pair, in block
 * order, capped at pf_max) and issue bulk L2 prefetches for their share
 * while that kernel runs. Weights are constant, so reading them before the
 * wait is allowed; expert ids only when the job says they are complete
 * (ids_early). No effect before sm_90 (l2_prefetch is empty there). */
template <typename F>
static __device__ __forceinline__ void mv_weight_ranges(const mv_launch &L, F &&f) {
    for (int j = 0; j < L.n_jobs; j++) {
        const mv_job &J = L.jobs[j];
        if (J.mat_ids && !J.ids_early) continue;
        const uint32_t np = J.mat_ids ? (J.n_pairs ? J.n_pairs : 1) : 1;
        const uint32_t spr = dw_split(J.w.type) ? dw_scales_per_row(J.w.type, J.w.n_in) : 0;
        for (uint32_t p = 0; p < np; p++) {
            uint32_t mat = J.mat;
            if (J.mat_ids) {
                const int32_t e = J.mat_ids[p];
                mat = e >= 0 && (uint32_t)e < J.w.n_mat ? (uint32_t)e : 0;
            }
            const uint64_t r0 = (uint64_t)mat * J.w.n_out + J.row0;
            f(J.w.q + r0 * J.w.row_bytes, (uint64_t)J.n_rows * J.w.row_bytes);
            if (spr && J.w.d) f((const uint8_t *)(J.w.d + r0 * spr), (uint64_t)J.n_rows * spr * 2);
        }
    }
}

static __device__ void mv_prefetch(const mv_launch &L) {
    uint64_t total = 0;
    mv_weight_ranges(L, [&](const uint8_t *, uint64_t n) { total += n; });
    if (total > L.pf_max) total = L.pf_max;
    const uint64_t lo = total * blockIdx.x / L.pf_blocks, hi = total * (blockIdx.x + 1) / L.pf_blocks;
    uint64_t at = 0;
    mv_weight_ranges(L, [&](const uint8_t *p, uint64_t n) {
        const uint64_t a = at > lo ? at : lo, b = at + n < hi ? at + n : hi;
        if (a < b) l2_prefetch(p + (a - at), b - a, p, p + n);
        at += n;
    });
}

static __device__ __forceinline__ void load_iq2_tables(uint64_t *s_grid, uint64_t *s_smask) {
    for (int i = threadIdx.x; i < 256; i += blockDim.x) s_grid[i] = g_iq2_grid[i];
    for (int i = threadIdx.x; i < 128; i += blockDim.x) s_smask[i] = g_iq2_smask[i];
    __syncthreads();
}


/* OCC: the decode variant capped at 48 registers (5 blocks, 40 warps an SM:
 * more weight bytes in flight, a few spills); chosen with DS4_CUDA_MV_OCC=1 */
/* Decode fast paths for the routed experts' formats (T = 1, rows of one
 * pass: IQ2_XXS up to 4096 values, Q2_K up to 2048). The generic row_dot
 * re-reads the activation slice from L1 for every row, and for these 2-bit
 * formats that is 3-4x the weight bytes: the kernels were bound by L1/shared
 * traffic at ~15% of DRAM bandwidth (ncu). Here a warp keeps its lanes'
 * activation slice in registers for all its rows, loads the next row's
 * weights before reducing the current one, and (IQ2_XXS) applies the signs
 * through a second dp4a on the masked grid bytes. Same integer sums as
 * row_dot; IQ2_XXS scales each 32-value sub-block's sum in its own lane
 * (Q2_K per 256-block, as row_dot). */

/* byte i of the result is 0xff where bit i of the 4 bits b is set: bit i
 * lands on bit 8i + 7 of the product (no two partial products share a
 * bit), and prmt's sign-replicating selectors (8 + i) spread the top bit of
 * each byte over it (three instructions; the shift-and-multiply form took
 * five) */
static __device__ __forceinline__ uint32_t bytemask4(uint32_t b) {
    uint32_t r; /* prmt itself: __byte_perm masks the selector nibbles to 3 bits */
    asm("prmt.b32 %0, %1, 0, 0xBA98;" : "=r"(r) : "r"((b & 15u) * 0x10204080u));
    return r;
}

/* SMASK_ALU: the 8 sign bits (7 stored + the parity bit that makes the count
 * even, ksigns) and their byte masks by arithmetic instead of the shared
 * smask table: the table reads were half of this kernel's shared-memory
 * traffic (DS4_CUDA_IQ2_SIGNS=table keeps the lookups, for measurements) */
/* this lane's 32-value sub-blocks of the activation's Q8_K form */
typedef struct {
    int4 a0[IQU], a1[IQU];
    float dk[IQU];
} iq2_act;
static __device__ __forceinline__ void iq2_load_act(const mv_job &J, uint32_t pair, iq2_act &A) {
    const int lane = threadIdx.x & 31;
    const uint32_t nsub = J.w.n_in / 32;
    const size_t xo = (size_t)(pair * J.x_pair) * J.x.stride + J.x.off;
#pragma unroll
    for (int v = 0; v < IQU; v++) {
        const uint32_t sb = 32 * v + lane;
        const bool act = sb < nsub;
        A.a0[v] = act ? *(const int4 *)(J.x.qk + xo + 32 * (size_t)sb) : make_int4(0, 0, 0, 0);
        A.a1[v] = act ? *(const int4 *)(J.x.qk + xo + 32 * (size_t)sb + 16) : make_int4(0, 0, 0, 0);
        A.dk[v] = act ? J.x.dk[xo / 256 + sb / 8] : 0.0f;
    }
}

template <bool SMASK_ALU>
static __device__ __forceinline__ void iq2_rows_1pass(const mv_job &J, uint32_t mat, uint32_t pair, uint32_t rb0,
                                                      uint32_t rpw, const uint64_t *grid, const uint64_t *smask,
                                                      const iq2_act &A) {
    const int lane = threadIdx.x & 31;
    const uint32_t n = J.w.n_in, nsub = n / 32;
    const int4(&a0)[IQU] = A.a0, (&a1)[IQU] = A.a1;
    const float(&dk)[IQU] = A.dk;
    uint32_t r = rb0 + (threadIdx.x >> 5);
    if (r >= J.n_rows) return;
    uint2 wv[IQU];
    float dw[IQU];
    /* this lane's sub-blocks of the warp's first row; the next row is
     * MV_WARPS rows on (pointers stepped, not rebuilt from the job: the
     * 64-bit row arithmetic was 6% of the kernel's instructions, ncu) */
    const uint64_t wrow0 = (uint64_t)mat * J.w.n_out + J.row0 + r;
    const uint8_t *qp = J.w.q + wrow0 * J.w.row_bytes + 8 * lane;
    const __half *dp = J.w.d + wrow0 * (n / 256) + lane / 8;
    const size_t qstep = (size_t)MV_WARPS * J.w.row_bytes, dstep = (size_t)MV_WARPS * (n / 256);
    auto load = [&](uint2 (&w)[IQU], float (&d)[IQU]) {
#pragma unroll
        for (int v = 0; v < IQU; v++) {
            const bool act = 32 * v + lane < nsub;
            w[v] = act ? __ldg((const uint2 *)(qp + 256 * v)) : make_uint2(0, 0);
            d[v] = act ? __half2float(dp[4 * v]) : 0.0f;
        }
    };
    load(wv, dw);
    for (uint32_t k = 0; k < rpw; k++) {
        const uint32_t rn = r + MV_WARPS;
        const bool more = k + 1 < rpw && rn < J.n_rows;
        uint2 wn[IQU];
        float dn[IQU];
        if (more) {
            qp += qstep;
            dp += dstep;
            load(wn, dn);
        }
        float acc = 0.0f;
#pragma unroll
        for (int v = 0; v < IQU; v++) {
            /* signed weights w = g - 2 (g & m) for the grid bytes g (all <
             * 128) and the sign mask m: sum w x = sum g x - 2 sum (g & m) x,
             * two dp4a and an and per 4 weights instead of xor + byte-wise
             * subtract + dp4a (the subtract is several instructions; the
             * two measured the same on H200, this one issues fewer) */
            const int xs[8] = {a0[v].x, a0[v].y, a0[v].z, a0[v].w, a1[v].x, a1[v].y, a1[v].z, a1[v].w};
            int sp = 0, sn = 0;
#pragma unroll
            for (int l = 0; l < 4; l++) {
                const uint64_t g = grid[(wv[v].x >> (8 * l)) & 0xff];
                uint32_t mlo, mhi;
                if (SMASK_ALU) {
                    /* the low four signs as bytemask4; the high four are
                     * stored bits 4..6 plus the parity bit: bits 4..6 go
                     * to bits 7, 15, 23 by one product (the other partial
                     * products land on distinct lower bits) and the parity
                     * (popc's low bit) is added at bit 31 */
                    const uint32_t sh = wv[v].y >> (7 * l);
                    mlo = bytemask4(sh);
                    const uint32_t hi = (sh & 0x70u) * 0x01020408u + (__popc(sh & 127u) << 31);
                    asm("prmt.b32 %0, %1, 0, 0xBA98;" : "=r"(mhi) : "r"(hi));
                } else {
                    const uint64_t sm = smask[(wv[v].y >> (7 * l)) & 127];
                    mlo = (uint32_t)sm;
                    mhi = (uint32_t)(sm >> 32);
                }
                const uint32_t glo = (uint32_t)g, ghi = (uint32_t)(g >> 32);
                sp = dp4a((int)glo, xs[2 * l], sp);
                sp = dp4a((int)ghi, xs[2 * l + 1], sp);
                sn = dp4a((int)(glo & mlo), xs[2 * l], sn);
                sn = dp4a((int)(ghi & mhi), xs[2 * l + 1], sn);
            }
            /* each lane scales its own sub-block's sum (exact in float,
             * |s| < 2^24): no butterfly over the 8 lanes of a 256-block */
            const int s = (sp - 2 * sn) * (2 * (int)(wv[v].y >> 28) + 1);
            acc = fmaf(dw[v] * dk[v], (float)s, acc);
        }
        const float y = warp_sum(acc) * 0.125f;
        if (lane == 0) J.y[(size_t)(pair * J.y_pair) * J.y_stride + r] = y;
        if (!more) break;
        r = rn;
#pragma unroll
        for (int v = 0; v < IQU; v++) {
            wv[v] = wn[v];
            dw[v] = dn[v];
        }
    }
}

/* CH: rows a warp loads at once. CH = 1 keeps the next row's loads in
 * flight while this one is reduced; CH > 1 issues the loads of CH rows
 * together and then reduces them, so a warp waits for memory once per CH
 * rows (a Q2_K row's reduction is short, ~80 instructions a lane, far less
 * than a load's latency) */
template <int CH>
static __device__ __forceinline__ void q2k_rows_1pass(const mv_job &J, uint32_t mat, uint32_t pair, uint32_t rb0,
                                                      uint32_t rpw) {
    const int lane = threadIdx.x & 31;
    const uint32_t n = J.w.n_in, nunits = (n / 256) * 4;
    const size_t xo = (size_t)(pair * J.x_pair) * J.x.stride + J.x.off;
    const bool act = (uint32_t)lane < nunits;
    const uint32_t blk = lane >> 2, part = lane & 3, h = part >> 1, k = part & 1;
    int4 av[4];
    int bs[4];
    float dx = 0.0f;
#pragma unroll
    for (int jj = 0; jj < 4; jj++) {
        av[jj] = act ? *(const int4 *)(J.x.qk + xo + 256 * (size_t)blk + 128 * h + 16 * k + 32 * jj) : make_int4(0, 0, 0, 0);
        bs[jj] = act ? J.x.bk[xo / 16 + 16 * (size_t)blk + 8 * h + 2 * jj + k] : 0;
    }
    if (act) dx = J.x.dk[xo / 256 + blk];
    uint32_t r = rb0 + (threadIdx.x >> 5);
    if (r >= J.n_rows) return;
    auto load = [&](uint32_t row, uint32_t (&q)[4], uint32_t (&s)[2], uint32_t &d) {
        q[0] = q[1] = q[2] = q[3] = s[0] = s[1] = d = 0;
        if (!act) return;
        const uint64_t wrow = (uint64_t)mat * J.w.n_out + J.row0 + row;
        const uint8_t *b = J.w.q + wrow * J.w.row_bytes + 84 * (size_t)blk;
        const uint32_t *q32 = (const uint32_t *)(b + 16 + 32 * h + 16 * k);
        q[0] = __ldg(q32); q[1] = __ldg(q32 + 1); q[2] = __ldg(q32 + 2); q[3] = __ldg(q32 + 3);
        s[0] = __ldg((const uint32_t *)(b + 8 * h));
        s[1] = __ldg((const uint32_t *)(b + 8 * h + 4));
        d = __ldg((const uint32_t *)(b + 80));
    };
    auto reduce = [&](uint32_t row, const uint32_t (&qv)[4], const uint32_t (&sc)[2], uint32_t dd) {
        int isum = 0, summs = 0;
#pragma unroll
        for (int jj = 0; jj < 4; jj++) {
            const uint32_t idx = 2 * jj + k;
            const uint32_t s8 = byte_of(sc[idx >> 2], idx & 3);
            int sub = dp4a((qv[0] >> (2 * jj)) & 0x03030303, av[jj].x, 0);
            sub = dp4a((qv[1] >> (2 * jj)) & 0x03030303, av[jj].y, sub);
            sub = dp4a((qv[2] >> (2 * jj)) & 0x03030303, av[jj].z, sub);
            sub = dp4a((qv[3] >> (2 * jj)) & 0x03030303, av[jj].w, sub);
            isum += (int)(s8 & 15) * sub;
            summs += bs[jj] * (int)(s8 >> 4);
        }
        isum += __shfl_xor_sync(FULL, isum, 1);
        isum += __shfl_xor_sync(FULL, isum, 2);
        summs += __shfl_xor_sync(FULL, summs, 1);
        summs += __shfl_xor_sync(FULL, summs, 2);
        const float d = h2f(dd & 0xffff), dmin = h2f(dd >> 16);
        const float acc = act && part == 0 ? (dx * d) * (float)isum - (dx * dmin) * (float)summs : 0.0f;
        const float y = warp_sum(acc);
        if (lane == 0) J.y[(size_t)(pair * J.y_pair) * J.y_stride + row] = y;
    };
    if (CH > 1) {
        for (uint32_t it = 0; it < rpw; it += CH) {
            uint32_t qv[CH][4], sc[CH][2], dd[CH];
#pragma unroll
            for (int c = 0; c < CH; c++) {
                const uint32_t row = r + c * MV_WARPS;
                if (it + c < rpw && row < J.n_rows) load(row, qv[c], sc[c], dd[c]);
            }
#pragma unroll
            for (int c = 0; c < CH; c++) {
                const uint32_t row = r + c * MV_WARPS;
                if (it + c < rpw && row < J.n_rows) reduce(row, qv[c], sc[c], dd[c]);
            }
            r += CH * MV_WARPS;
            if (r >= J.n_rows) break;
        }
        return;
    }
    uint32_t qv[4], sc[2], dd;
    load(r, qv, sc, dd);
    for (uint32_t it = 0; it < rpw; it++) {
        const uint32_t rn = r + MV_WARPS;
        const bool more = it + 1 < rpw && rn < J.n_rows;
        uint32_t qn[4], sn[2], dn;
        if (more) load(rn, qn, sn, dn);
        reduce(r, qv, sc, dd);
        if (!more) break;
        r = rn;
        qv[0] = qn[0]; qv[1] = qn[1]; qv[2] = qn[2]; qv[3] = qn[3];
        sc[0] = sn[0]; sc[1] = sn[1];
        dd = dn;
    }
}

/* Q8_0 rows of up to 32 * CPL 16-byte chunks (CPL 2: 1024 values, 4: 2048)
 * the same way: activation chunks in registers, the next row's weights in
 * flight while this one is reduced (short rows give a warp few bytes to
 * load, so without the second row in flight q_b ran at ~40% of DRAM). */
template <int CPL>
static __device__ __forceinline__ void q8_rows_1pass(const mv_job &J, uint32_t mat, uint32_t pair, uint32_t rb0,
                                                     uint32_t rpw) {
    const int lane = threadIdx.x & 31;
    const uint32_t n = J.w.n_in, nch = n / 16;
    const size_t xo = (size_t)(pair * J.x_pair) * J.x.stride + J.x.off;
    int4 xa[CPL];
    float dx[CPL];
#pragma unroll
    for (int u = 0; u < CPL; u++) {
        const uint32_t c = 32 * u + lane;
        const bool act = c < nch;
        xa[u] = act ? *(const int4 *)(J.x.q8 + xo + 16 * (size_t)c) : make_int4(0, 0, 0, 0);
        dx[u] = act ? J.x.d8[xo / 32 + c / 2] : 0.0f;
    }
    uint32_t r = rb0 + (threadIdx.x >> 5);
    if (r >= J.n_rows) return;
    int4 wv[CPL];
    float dw[CPL];
    auto load = [&](uint32_t row, int4 (&w)[CPL], float (&d)[CPL]) {
        const uint64_t wrow = (uint64_t)mat * J.w.n_out + J.row0 + row;
        const int8_t *q = (const int8_t *)J.w.q + wrow * J.w.row_bytes;
        const __half *wd = J.w.d + wrow * (n / 32);
#pragma unroll
        for (int u = 0; u < CPL; u++) {
            const uint32_t c = 32 * u + lane;
            const bool act = c < nch;
            w[u] = act ? __ldg((const int4 *)(q + 16 * (size_t)c)) : make_int4(0, 0, 0, 0);
            d[u] = act ? __half2float(wd[c / 2]) : 0.0f;
        }
    };
    load(r, wv, dw);
    for (uint32_t k = 0; k < rpw; k++) {
        const uint32_t rn = r + MV_WARPS;
        const bool more = k + 1 < rpw && rn < J.n_rows;
        int4 wn[CPL];
        float dn[CPL];
        if (more) load(rn, wn, dn);
        float acc = 0.0f;
#pragma unroll
        for (int u = 0; u < CPL; u++) {
            int s = dp4a(wv[u].x, xa[u].x, 0);
            s = dp4a(wv[u].y, xa[u].y, s);
            s = dp4a(wv[u].z, xa[u].z, s);
            s = dp4a(wv[u].w, xa[u].w, s);
            s += __shfl_xor_sync(FULL, s, 1);
            if (!(lane & 1)) acc += (float)s * (dw[u] * dx[u]);
        }
        const float y = warp_sum(acc);
        if (lane == 0) J.y[(size_t)(pair * J.y_pair) * J.y_stride + r] = y;
        if (!more) break;
        r = rn;
#pragma unroll
        for (int u = 0; u < CPL; u++) {
            wv[u] = wn[u];
            dw[u] = dn[u];
        }
    }
}

/* Decode activation finish (mv_job.fin). The products before q_b, the
 * routed and shared experts' down and out_b each needed a short launch of
 * their own (q_a's RMSNorm, the SwiGLU, the quantization of out_a's
 * output): a dependent launch in the chain. Instead the block of the
 * producing launch that counts last (per pair: gate and up blocks share a
 * counter) forms that activation from the rows the launch wrote, read from
 * L2, and writes its quantized forms where the consumer reads them, with
 * the arithmetic of the launch it replaces (rmsnorm_slice_kernel's thread
 * strides for the double sum; swiglu_slice_kernel; quantize_kernel's
 * scales, rounding and Q8_K tie rule): bit-identical. A thread takes 8
 * consecutive values a round (a Q8_0 block is 4 lanes, a Q8_K block a
 * warp), so every block of the row is quantized at once. (Forming the
 * activation in every block of the consuming launch instead, in shared
 * memory, cost 2% a fusion on H100: each SM repeated it for 4 blocks
 * before its first weight load.) */

/* values [i0, i0 + 8) of a row into its Q8_0 form (4 lanes a block) and /
 * or Q8_K form (a warp a block; the first value of largest magnitude sets
 * the scale); the caller's lanes walk i0 = 8 lane + 256 k in step */
static __device__ __forceinline__ void act_store8(const float (&v)[8], uint32_t i0, const qrow &q) {
    const int lane = threadIdx.x & 31;
    auto pack = [](const int (&qi)[8], uint32_t k) {
        return (uint32_t)(uint8_t)qi[k] | (uint32_t)(uint8_t)qi[k + 1] << 8 | (uint32_t)(uint8_t)qi[k + 2] << 16 |
               (uint32_t)(uint8_t)qi[k + 3] << 24;
    };
    if (q.q8) { /* quantize_kernel: d = amax / 127, q = round(x / d) */
        float amax = 0.0f;
#pragma unroll
        for (int k = 0; k < 8; k++) amax = fmaxf(amax, fabsf(v[k]));
        amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 1));
        amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 2));
        const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        int qi[8];
#pragma unroll
        for (int k = 0; k < 8; k++) qi[k] = (int8_t)roundf(v[k] * id);
        *(uint2 *)(q.q8 + i0) = make_uint2(pack(qi, 0), pack(qi, 4));
        if ((lane & 3) == 0) q.d8[i0 / 32] = round_f16(d);
    }
    if (q.qk) {
        float ax = -1.0f, xv = 0.0f;
        int ix = 0;
#pragma unroll
        for (int k = 0; k < 8; k++) {
            const float a = fabsf(v[k]);
            if (a > ax) { ax = a; ix = 8 * lane + k; xv = v[k]; }
        }
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) {
            const float oa = __shfl_xor_sync(0xffffffffu, ax, off), ov = __shfl_xor_sync(0xffffffffu, xv, off);
            const int oi = __shfl_xor_sync(0xffffffffu, ix, off);
            if (oa > ax || (oa == ax && oi < ix)) { ax = oa; ix = oi; xv = ov; }
        }
        const float iscale = ax > 0.0f ? -127.0f / xv : 0.0f;
        int qi[8], sum = 0;
#pragma unroll
        for (int k = 0; k < 8; k++) {
            int t = ax > 0.0f ? __float2int_rn(iscale * v[k]) : 0;
            qi[k] = t < 127 ? t : 127;
            sum += qi[k];
        }
        *(uint2 *)(q.qk + i0) = make_uint2(pack(qi, 0), pack(qi, 4));
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        if (!(lane & 1)) q.bk[i0 / 16] = sum;
        if (lane == 0) q.dk[i0 / 256] = ax > 0.0f ? 1.0f / iscale : 0.0f;
    }
}

static __device__ __forceinline__ void ld8(const float *p, float (&v)[8]) {
    const float4 a = __ldcg((const float4 *)p), b = __ldcg((const float4 *)(p + 4));
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
}

/* the activation of pair p, by the whole (last) block; sources through L2 */
static __device__ __noinline__ void act_finish(const mv_job &J, uint32_t p) {
    const uint32_t n = J.fin_n, row = J.fin == MV_FIN_SWIGLU ? p : 0;
    const float *x = J.fin_x + (size_t)p * J.fin_pstride;
    const qrow q = qrow_of(J.fin_out, row, J.fin_c0);
    float *fo = J.fin_out.f ? J.fin_out.f + (size_t)row * J.fin_out.n + J.fin_c0 : NULL;
    float scale = 1.0f;
    if (J.fin == MV_FIN_NORM) { /* rmsnorm_slice_kernel's sum: thread k adds x[k], x[k + 256], ... */
        __shared__ double red[32];
        double ss = 0;
#pragma unroll 4
        for (uint32_t k = threadIdx.x; k < n; k += blockDim.x) {
            const float v = __ldcg(x + k);
            ss += (double)v * v;
        }
        ss = block_sum_d(ss, red);
        scale = (float)(1.0 / sqrt(ss / n + (double)J.fin_eps));
    }
    const float rw = J.fin == MV_FIN_SWIGLU && J.fin_w ? J.fin_w[p] : 1.0f, c = J.fin_eps;
    for (uint32_t i0 = 8 * threadIdx.x; i0 < n; i0 += 8 * blockDim.x) {
        float v[8];
        ld8(x + i0, v);
        if (J.fin == MV_FIN_NORM) {
            float w[8] = {1, 1, 1, 1, 1, 1, 1, 1};
            if (J.fin_w) ld8(J.fin_w + i0, w);
#pragma unroll
            for (int k = 0; k < 8; k++)
                v[k] = J.fin_w ? __fmul_rn(__fmul_rn(v[k], scale), w[k]) : __fmul_rn(v[k], scale);
        } else if (J.fin == MV_FIN_SWIGLU) {
            float u[8];
            ld8(J.fin_u + (size_t)p * J.fin_pstride + i0, u);
#pragma unroll
            for (int k = 0; k < 8; k++) {
                const float gv = fminf(v[k], c), uv = fminf(fmaxf(u[k], -c), c);
                v[k] = gv / (1.0f + expf(-gv)) * uv * rw;
            }
        }
        if (fo) {
            *(float4 *)(fo + i0) = make_float4(v[0], v[1], v[2], v[3]);
            *(float4 *)(fo + i0 + 4) = make_float4(v[4], v[5], v[6], v[7]);
        }
        act_store8(v, i0, q);
    }
}

/* after the block's rows: count it; the last block of the pair finishes */
static __device__ __noinline__ void mv_finish(const mv_job &J, uint32_t pair) {
    __shared__ bool s_last;
    const uint32_t slot = J.fin == MV_FIN_SWIGLU ? pair : 0;
    __threadfence(); /* this thread's rows before the count */
    __syncthreads();
    if (threadIdx.x == 0) s_last = atomicAdd(&J.fin_count[slot], 1u) == J.fin_total - 1;
    __syncthreads();
    if (!s_last) return;
    __threadfence();
    if (threadIdx.x == 0) J.fin_count[slot] = 0; /* (for the next launch: graph replays) */
    act_finish(J, pair);
}

bool cu_matvec_fin_ok(const mv_job &J) {
    auto al16 = [](const void *p) { return ((uintptr_t)p & 15) == 0; };
    const dact &o = J.fin_out;
    const bool forms = (o.q8 || o.qk || o.f) && (!o.f || al16(o.f)) && o.n % 256 == 0;
    return J.fin && J.fin_count && J.fin_x && al16(J.fin_x) && J.fin_n % 256 == 0 && J.fin_c0 % 256 == 0 &&
           J.fin_c0 + J.fin_n <= o.n && J.fin_pstride % 4 == 0 && forms &&
           (J.fin != MV_FIN_NORM || al16(J.fin_w)) && (J.fin != MV_FIN_SWIGLU || (J.fin_u && al16(J.fin_u)));
}

/* FIN: the instantiation for launches with a finishing job (mv_finish),
 * apart so the others' register allocation stays as it was */
template <int NT, bool OCC, uint32_t TYPES = TB_ALL, bool FIN = false>
__global__ void __launch_bounds__(256, OCC ? 4 : (TYPES == TB_ALL ? 1 : 3)) matvec_kernel(const __grid_constant__ mv_launch L) {
    __shared__ uint64_t s_grid[256];
    __shared__ uint64_t s_smask[128];
    int jn = 0;
    while (jn + 1 < L.n_jobs && blockIdx.x >= L.blk0[jn + 1]) jn++;
    const mv_job &J = L.jobs[jn];
    const uint32_t rpw = L.rpw, rows_pb = MV_WARPS * rpw;
    const uint32_t local = blockIdx.x - L.blk0[jn];
    const uint32_t rbp = (J.n_rows + rows_pb - 1) / rows_pb;
    const uint32_t pair = local / rbp;
    const uint32_t rb0 = (local % rbp) * rows_pb;
    if (blockIdx.x < L.pf_blocks && threadIdx.x == 0) mv_prefetch(L);
    /* constant tables, and a one-pass activation written two or more
     * launches back, before pdl_wait (they leave the chain after it) */
    if (L.need_iq2) load_iq2_tables(s_grid, s_smask);
    [[maybe_unused]] iq2_act A;
    [[maybe_unused]] const bool iq2_1pass = NT == 1 && TYPES == TB(DS4_TYPE_IQ2_XXS) && L.fast &&
                                            J.w.n_in / 32 <= 32 * IQU;
    if constexpr (NT == 1 && TYPES == TB(DS4_TYPE_IQ2_XXS))
        if (iq2_1pass && J.x_early) iq2_load_act(J, pair, A);
    pdl_wait();
    pdl_trigger();
    uint32_t mat = J.mat;
    if (J.mat_ids) {
        const int32_t e = J.mat_ids[pair];
        mat = e >= 0 && (uint32_t)e < J.w.n_mat ? (uint32_t)e : 0;
    }
    /* the rows of this block (a lambda: every path returns to the finish below) */
    auto rows = [&]() {
        if constexpr (NT == 1 && TYPES == TB(DS4_TYPE_IQ2_XXS)) {
            if (iq2_1pass) {
                if (!J.x_early) iq2_load_act(J, pair, A);
                if (L.iq2_table_signs) iq2_rows_1pass<false>(J, mat, pair, rb0, rpw, s_grid, s_smask, A);
                else iq2_rows_1pass<true>(J, mat, pair, rb0, rpw, s_grid, s_smask, A);
                return;
            }
        }
        if constexpr (NT == 1 && TYPES == TB(DS4_TYPE_Q8_0)) {
            if (L.fast && J.w.n_in <= 1024) {
                q8_rows_1pass<2>(J, mat, pair, rb0, rpw);
                return;
            }
            if (L.fast && J.w.n_in <= 2048) {
                q8_rows_1pass<4>(J, mat, pair, rb0, rpw);
                return;
            }
        }
        if constexpr (NT == 1 && TYPES == TB(DS4_TYPE_Q2_K)) {
            if (L.fast && (J.w.n_in / 256) * 4 <= 32) {
                if (L.q2k_chunk) q2k_rows_1pass<4>(J, mat, pair, rb0, rpw);
                else q2k_rows_1pass<1>(J, mat, pair, rb0, rpw);
                return;
            }
        }
        for (uint32_t k = 0; k < rpw; k++) {
            const uint32_t r = rb0 + k * MV_WARPS + (threadIdx.x >> 5);
            if (r >= J.n_rows) break;
            const uint64_t wrow = (uint64_t)mat * J.w.n_out + J.row0 + r;
            for (uint32_t t0 = 0; t0 < L.T; t0 += NT) {
                const int nt = L.T - t0 < (uint32_t)NT ? (int)(L.T - t0) : NT;
                uint32_t xr[NT];
#pragma unroll
                for (int j = 0; j < NT; j++) xr[j] = pair * J.x_pair + t0 + j;
                float out[NT];
                row_dot<NT, TYPES>(J.w, wrow, J.x, xr, nt, out, s_grid, s_smask);
                if ((threadIdx.x & 31) == 0)
#pragma unroll
                    for (int j = 0; j < NT; j++)
                        if (j < nt) J.y[((size_t)pair * J.y_pair + t0 + j) * J.y_stride + r] = out[j];
            }
        }
    };
    rows();
    if constexpr (NT == 1 && FIN)
        if (J.fin) mv_finish(J, pair);
}

/* decode mat-vecs compiled for the job list's weight types (DS4_CUDA_MV_SPEC=0: one kernel for all) */
static bool g_mv_spec = true;

static void matvec_launch(cudaStream_t st, const mv_job *jobs, int n_jobs, uint32_t T) {
    for (int base = 0; base < n_jobs; base += MV_MAX_JOBS) {
        mv_launch L;
        memset(&L, 0, sizeof L);
        L.T = T;
        L.n_jobs = n_jobs - base < MV_MAX_JOBS ? n_jobs - base : MV_MAX_JOBS;
        /* rows a warp at T = 1: DS4_CUDA_MV_RPW (default 1; 2 was +1% on H200 with
         * a 32 MB prefetch cap, with 6 MB 1 is +2.2% on H200 and +1.7% on H100) */
        static int rpw_env = -1, fast_env = 1, rpw2_env = 8;
        if (rpw_env < 0) {
            const char *f = getenv("DS4_CUDA_MV_FAST");
            fast_env = !(f && *f == '0');
            f = getenv("DS4_CUDA_MV_RPW_2BIT");
            if (f && atoi(f) >= 1 && atoi(f) <= 64) rpw2_env = atoi(f);
            const char *sp = getenv("DS4_CUDA_MV_SPEC");
            g_mv_spec = !(sp && *sp == '0');
            const char *e = getenv("DS4_CUDA_MV_RPW");
            rpw_env = e && atoi(e) >= 1 && atoi(e) <= 8 ? atoi(e) : 1;
        }
        L.rpw = T == 1 ? (uint32_t)rpw_env : 1;
        uint32_t types = 0;
        for (int j = 0; j < L.n_jobs; j++) types |= TB(jobs[base + j].w.type);
        /* the one-pass paths (2-bit expert formats, Q8_0 rows <= 2048) keep
         * activations in registers across a warp's rows: more rows a warp
         * (DS4_CUDA_MV_RPW_2BIT, default 8) */
        L.fast = fast_env;
        bool short_q8 = types == TB(DS4_TYPE_Q8_0);
        for (int j = 0; j < L.n_jobs; j++) short_q8 = short_q8 && jobs[base + j].w.n_in <= 2048;
        if (T == 1 && fast_env && g_mv_spec &&
            (types == TB(DS4_TYPE_IQ2_XXS) || types == TB(DS4_TYPE_Q2_K) || short_q8))
            L.rpw = (uint32_t)rpw2_env;
        /* a decode launch gets at least a block an SM: its rows a warp are
         * halved until it does (the shared expert's down projection, 4096
         * rows of 2048 values, had 64 blocks at 8 rows a warp: on the side
         * branch: +1.9% decode on H100 at 128 or 256 blocks with the
         * Sinkhorn split last on that branch, +0.8% with the split on its own
         * stream). DS4_CUDA_MV_MIN_BLOCKS=N sets the floor (0: off). */
        static int min_blocks = -1;
        if (min_blocks < 0) {
            const char *e = getenv("DS4_CUDA_MV_MIN_BLOCKS");
            int dev = 0, sms = 0;
            if (cudaGetDevice(&dev) != cudaSuccess ||
                cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
                sms = 0;
            min_blocks = e && *e ? (atoi(e) > 0 ? atoi(e) : 0) : sms;
        }
        /* blocks of job J at rpw rows a warp (its pairs one after another) */
        auto job_blocks = [](const mv_job &J, uint32_t rpw) {
            return (J.n_pairs ? J.n_pairs : 1) * ((J.n_rows + MV_WARPS * rpw - 1) / (MV_WARPS * rpw));
        };
        auto blocks_at = [&](uint32_t rpw) {
            uint32_t b = 0;
            for (int j = 0; j < L.n_jobs; j++) b += job_blocks(jobs[base + j], rpw);
            return b;
        };
        while (T == 1 && L.rpw > 1 && blocks_at(L.rpw) < (uint32_t)min_blocks) L.rpw /= 2;
        uint32_t blocks = 0;
        for (int j = 0; j < L.n_jobs; j++) {
            L.jobs[j] = jobs[base + j];
            if (L.jobs[j].n_pairs == 0) L.jobs[j].n_pairs = 1;
            L.blk0[j] = blocks;
            blocks += job_blocks(L.jobs[j], L.rpw);
            if (L.jobs[j].w.type == DS4_TYPE_IQ2_XXS) L.need_iq2 = 1;
        }
        L.blk0[L.n_jobs] = blocks;
        if (!blocks) continue;
        /* finishing jobs (T = 1): the blocks a pair of all jobs sharing the counter */
        bool fin = false;
        for (int j = 0; j < L.n_jobs; j++) {
            mv_job &J = L.jobs[j];
            if (!J.fin) continue;
            if (T != 1 || !cu_matvec_fin_ok(J)) { /* (callers check) */
                J.fin = MV_FIN_NONE;
                continue;
            }
            fin = true;
            J.fin_total = 0;
            for (int k = 0; k < L.n_jobs; k++)
                if (L.jobs[k].fin && L.jobs[k].fin_count == J.fin_count)
                    J.fin_total += (L.jobs[k].n_rows + MV_WARPS * L.rpw - 1) / (MV_WARPS * L.rpw);
        }
        /* decode weight prefetch (mv_prefetch): DS4_CUDA_MV_PREFETCH_MB
         * (default 6, 0: off) caps the bytes, 256 blocks share them: 43
         * layers at 4k, H200 126.9 / 130.4 / 130.2 / 129.7 tok/s at 32 / 4 /
         * 6 / 8 MB, H100 (30 layers) 170.5 / 172.9 / - / 173.5; a large
         * prefetch delays the latency-bound kernel it overlaps */
        static int64_t pf_mb = -1;
        if (pf_mb < 0) {
            const char *e = getenv("DS4_CUDA_MV_PREFETCH_MB");
            pf_mb = e && *e ? atoll(e) : 6;
            if (pf_mb < 0) pf_mb = 0;
        }
        static int iq2_table = -1;
        if (iq2_table < 0) {
            const char *e = getenv("DS4_CUDA_IQ2_SIGNS");
            iq2_table = e && !strcmp(e, "table");
        }
        L.iq2_table_signs = iq2_table;
        /* Q2_K one-pass rows 4 at a time: H100, 30 layers, 4k: +0.6% (214.3
         * -> 215.6 tok/s, three rounds; 2 rows: as 4, 8: -4.6%, spills) */
        static int q2k_chunk = -1;
        if (q2k_chunk < 0) {
            const char *e = getenv("DS4_CUDA_Q2K_CHUNK");
            q2k_chunk = !(e && *e == '1');
        }
        L.q2k_chunk = q2k_chunk;
        if (T == 1 && pf_mb > 0) {
            L.pf_blocks = blocks < 256 ? blocks : 256;
            L.pf_max = (uint64_t)pf_mb << 20;
        }
        /* T = 1 launches whose jobs are all Q8_0 (or Q8_0 and F16) run a
         * variant capped at 64 registers (4 blocks an SM): +3% decode on
         * H200; DS4_CUDA_MV_OCC=0 turns it off */
        static int occ = -1;
        if (occ < 0) {
            const char *e = getenv("DS4_CUDA_MV_OCC");
            occ = !(e && *e == '0');
        }
        if (fin) {
            if (occ && g_mv_spec && types == TB(DS4_TYPE_Q8_0))
                cu_launch(matvec_kernel<1, true, TB(DS4_TYPE_Q8_0), true>, blocks, 256, 0, st, L);
            else if (occ && g_mv_spec && !(types & ~(TB(DS4_TYPE_Q8_0) | TB(DS4_TYPE_F16))))
                cu_launch(matvec_kernel<1, true, TB(DS4_TYPE_Q8_0) | TB(DS4_TYPE_F16), true>, blocks, 256, 0, st, L);
            else if (g_mv_spec && types == TB(DS4_TYPE_IQ2_XXS))
                cu_launch(matvec_kernel<1, false, TB(DS4_TYPE_IQ2_XXS), true>, blocks, 256, 0, st, L);
            else
                cu_launch(matvec_kernel<1, false, TB_ALL, true>, blocks, 256, 0, st, L);
        } else if (T == 1 && occ && g_mv_spec && types == TB(DS4_TYPE_Q8_0))
            cu_launch(matvec_kernel<1, true, TB(DS4_TYPE_Q8_0)>, blocks, 256, 0, st, L);
        else if (T == 1 && occ && g_mv_spec && !(types & ~(TB(DS4_TYPE_Q8_0) | TB(DS4_TYPE_F16))))
            cu_launch(matvec_kernel<1, true, TB(DS4_TYPE_Q8_0) | TB(DS4_TYPE_F16)>, blocks, 256, 0, st, L);
        else if (T == 1 && g_mv_spec && types == TB(DS4_TYPE_Q8_0))
            cu_launch(matvec_kernel<1, false, TB(DS4_TYPE_Q8_0)>, blocks, 256, 0, st, L);
        else if (T == 1 && g_mv_spec && types == TB(DS4_TYPE_IQ2_XXS))
            cu_launch(matvec_kernel<1, false, TB(DS4_TYPE_IQ2_XXS)>, blocks, 256, 0, st, L);
        else if (T == 1 && g_mv_spec && types == TB(DS4_TYPE_Q2_K))
            cu_launch(matvec_kernel<1, false, TB(DS4_TYPE_Q2_K)>, blocks, 256, 0, st, L);
        else if (T == 1 && g_mv_spec && !(types & ~(TB(DS4_TYPE_Q8_0) | TB(DS4_TYPE_F16))))
            cu_launch(matvec_kernel<1, false, TB(DS4_TYPE_Q8_0) | TB(DS4_TYPE_F16)>, blocks, 256, 0, st, L);
        else if (T == 1)
            cu_launch(matvec_kernel<1, false>, blocks, 256, 0, st, L);
        else if (T <= 4)
            cu_launch(matvec_kernel<4, false>, blocks, 256, 0, st, L);
        else
            cu_launch(matvec_kernel<8, false>, blocks, 256, 0, st, L);
    }
}

#define MOE_NT 8

__global__ void __launch_bounds__(256) moe_mm_kernel(dweight w, const int32_t *cnt, const int32_t *off,
                                                     const int32_t *list, act_view x, uint32_t x_div, float *y,
                                                     uint32_t y_stride, int need_iq2) {
    pdl_wait();
    pdl_trigger();
    const uint32_t e = blockIdx.y;
    const int32_t n = cnt[e];
    if (n <= 0) return;
    __shared__ uint64_t s_grid[256];
    __shared__ uint64_t s_smask[128];
    if (need_iq2) load_iq2_tables(s_grid, s_smask);
    const uint32_t r = blockIdx.x * MV_WARPS + (threadIdx.x >> 5);
    if (r >= w.n_out) return;
    const uint64_t wrow = (uint64_t)e * w.n_out + r;
    const int32_t *lst = list + off[e];
    for (int g = 0; g < n; g += MOE_NT) {
        const int nt = n - g < MOE_NT ? n - g : MOE_NT;
        uint32_t xr[MOE_NT], yr[MOE_NT];
#pragma unroll
        for (int j = 0; j < MOE_NT; j++) {
            const uint32_t p = (uint32_t)lst[j < nt ? g + j : g];
            xr[j] = p / x_div;
            yr[j] = p;
        }
        float out[MOE_NT];
        row_dot<MOE_NT>(w, wrow, x, xr, nt, out, s_grid, s_smask);
        if ((threadIdx.x & 31) == 0)
#pragma unroll
            for (int j = 0; j < MOE_NT; j++)
                if (j < nt) y[(size_t)yr[j] * y_stride + r] = out[j];
    }
}

void cu_moe_mm(cudaStream_t st, const dweight &w, uint32_t n_expert, const int32_t *cnt, const int32_t *off,
               const int32_t *list, act_view x, uint32_t x_div, float *y, uint32_t y_stride, uint32_t T) {
    if (cu_mma_moe(st, w, n_expert, cnt, off, list, x, x_div, y, y_stride, T)) return;
    dim3 grid((w.n_out + MV_WARPS - 1) / MV_WARPS, n_expert);
    cu_launch(moe_mm_kernel, grid, 256, 0, st, w, cnt, off, list, x, x_div, y, y_stride, w.type == DS4_TYPE_IQ2_XXS);
}

/* y[t][r] = W[r] . x[t] for float-typed weights (F32 / F16 / BF16) over
 * many tokens, for the router of a prefill chunk (kept exact: it picks the
 * experts). The warp-per-row kernel
 * re-read 8 tokens' f32 activations for every weight row: 8.6 GB of L1/L2
 * traffic and 0.96 ms for the router of a 2048-token chunk on H100. Here a
 * block computes 64 rows x 64 tokens through 32-wide k slices in shared
 * memory (rows and tokens both reused 64 times), 4 x 4 outputs a thread,
 * f32 FMAs in k order; the next slice is loaded into registers while the
 * current one is used. */
#define SG_BM 64
#define SG_BN 64
#define SG_BK 32
__global__ void __launch_bounds__(256) sgemm_kernel(dweight w, uint64_t wrow0, uint32_t n_rows, act_view x, uint32_t T,
                                                    float *y, uint32_t y_stride) {
    __shared__ __align__(16) float sW[SG_BK][SG_BM + 4]; /* [k][row] */
    __shared__ __align__(16) float sX[SG_BK][SG_BN + 4]; /* [k][token] */
    const uint32_t tid = threadIdx.x, tr = tid >> 4, tc = tid & 15;
    const uint32_t r0 = blockIdx.x * SG_BM, t0 = blockIdx.y * SG_BN, n = w.n_in;
    const uint32_t lr = tid >> 2, lk = (tid & 3) * 8; /* loader: row / token lr, k lk .. lk + 7 */
    const bool rin = r0 + lr < n_rows, tin = t0 + lr < T;
    const uint8_t *wr = w.q + (wrow0 + (rin ? r0 + lr : 0)) * w.row_bytes;
    const float *xr = x.f + (size_t)(tin ? t0 + lr : 0) * x.stride + x.off;
    float wv[8], xv[8];
    auto load = [&](uint32_t k0) {
        if (w.type == DS4_TYPE_F32) {
            const float4 a = *(const float4 *)((const float *)wr + k0 + lk), b = *(const float4 *)((const float *)wr + k0 + lk + 4);
            wv[0] = a.x; wv[1] = a.y; wv[2] = a.z; wv[3] = a.w; wv[4] = b.x; wv[5] = b.y; wv[6] = b.z; wv[7] = b.w;
        } else {
            const uint4 raw = *(const uint4 *)((const uint16_t *)wr + k0 + lk);
            const uint32_t u[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
            for (int i = 0; i < 4; i++) {
                if (w.type == DS4_TYPE_BF16) {
                    wv[2 * i] = __uint_as_float(u[i] << 16);
                    wv[2 * i + 1] = __uint_as_float(u[i] & 0xffff0000u);
                } else {
                    const float2 f = __half22float2(*(const __half2 *)&u[i]);
                    wv[2 * i] = f.x;
                    wv[2 * i + 1] = f.y;
                }
            }
        }
        const float4 a = *(const float4 *)(xr + k0 + lk), b = *(const float4 *)(xr + k0 + lk + 4);
        xv[0] = a.x; xv[1] = a.y; xv[2] = a.z; xv[3] = a.w; xv[4] = b.x; xv[5] = b.y; xv[6] = b.z; xv[7] = b.w;
    };
    pdl_wait();
    pdl_trigger();
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; i++) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.0f;
    load(0);
    for (uint32_t k0 = 0; k0 < n; k0 += SG_BK) {
        __syncthreads(); /* the previous slice is no longer read */
#pragma unroll
        for (int i = 0; i < 8; i++) {
            sW[lk + i][lr] = rin ? wv[i] : 0.0f;
            sX[lk + i][lr] = tin ? xv[i] : 0.0f;
        }
        __syncthreads();
        if (k0 + SG_BK < n) load(k0 + SG_BK);
        float part[4][4]; /* the slice's sum first, then into the total: two-level, closer to a tree */
#pragma unroll
        for (int i = 0; i < 4; i++) part[i][0] = part[i][1] = part[i][2] = part[i][3] = 0.0f;
#pragma unroll 8
        for (int kk = 0; kk < SG_BK; kk++) {
            const float4 a = *(const float4 *)&sW[kk][4 * tr], b = *(const float4 *)&sX[kk][4 * tc];
            const float av[4] = {a.x, a.y, a.z, a.w}, bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) part[i][j] = fmaf(av[i], bv[j], part[i][j]);
        }
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
            for (int j = 0; j < 4; j++) acc[i][j] += part[i][j];
    }
#pragma unroll
    for (int j = 0; j < 4; j++) {
        const uint32_t t = t0 + 4 * tc + j;
        if (t >= T) break;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const uint32_t r = r0 + 4 * tr + i;
            if (r < n_rows) y[(size_t)t * y_stride + r] = acc[i][j];
        }
    }
}

static bool sgemm_ok(const mv_job &J, uint32_t T) {
    const int ty = J.w.type;
    /* the router only: the F32 products of the small test models keep the
     * warp kernel's summation order (their FP8/FP4 simulations turn other
     * orders into flipped indexer choices against the reference) */
    return J.exact && T >= 16 && (ty == DS4_TYPE_F32 || ty == DS4_TYPE_F16 || ty == DS4_TYPE_BF16) && !J.mat_ids &&
           J.n_pairs <= 1 && J.w.n_in % SG_BK == 0 && J.x.f && J.x.stride % 4 == 0 && J.x.off % 4 == 0 &&
           ((uintptr_t)J.x.f & 15) == 0 && ((uintptr_t)J.w.q & 15) == 0 && J.w.row_bytes % 16 == 0;
}

/* The exact kernel over many tokens: a block walks all T tokens 8 at a time,
 * so a small matrix (the router: 256 rows) fills few SMs. Split the tokens
 * into pairs of 8 (x_pair = y_pair = 8: one block row per 8 tokens) plus the
 * remainder as a view shifted by whole rows. */
static void matvec_split(cudaStream_t st, const mv_job &J, uint32_t T) {
    static int sg = -1;
    if (sg < 0) {
        const char *e = getenv("DS4_CUDA_SGEMM");
        sg = !(e && *e == '0');
    }
    if (sg && sgemm_ok(J, T)) {
        const dim3 grid((J.n_rows + SG_BM - 1) / SG_BM, (T + SG_BN - 1) / SG_BN);
        cu_launch(sgemm_kernel, grid, 256, 0, st, J.w, (uint64_t)J.mat * J.w.n_out + J.row0, J.n_rows, J.x, T, J.y,
                  J.y_stride);
        return;
    }
    const uint32_t full = T / 8 * 8, rem = T - full;
    const act_view &x = J.x;
    const bool shiftable = x.stride % 256 == 0 && x.off % 256 == 0 && J.y_stride > 0;
    if (J.mat_ids || J.n_pairs > 1 || T <= 8 || !shiftable) {
        matvec_launch(st, &J, 1, T);
        return;
    }
    mv_job a = J;
    a.n_pairs = full / 8;
    a.x_pair = 8;
    a.y_pair = 8;
    matvec_launch(st, &a, 1, 8);
    if (rem) {
        mv_job b = J;
        const size_t o = (size_t)full * x.stride;
        if (b.x.f) b.x.f += o;
        if (b.x.q8) { b.x.q8 += o; b.x.d8 += o / 32; }
        if (b.x.qk) { b.x.qk += o; b.x.dk += o / 256; b.x.bk += o / 16; }
        b.y += (size_t)full * J.y_stride;
        matvec_launch(st, &b, 1, rem);
    }
}

void cu_matvec(cudaStream_t st, const mv_job *jobs, int n_jobs, uint32_t T) {
    if (T < cu_mma_min_T()) {
        if (T <= 8) matvec_launch(st, jobs, n_jobs, T);
        else
            for (int j = 0; j < n_jobs; j++) matvec_split(st, jobs[j], T);
        return;
    }
    if (cu_mma_dense_groups(st, jobs, n_jobs, T)) return;
    for (int j = 0; j < n_jobs; j++)
        if (!cu_mma_dense(st, jobs[j], T)) matvec_split(st, jobs[j], T);
}

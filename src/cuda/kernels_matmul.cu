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
 * F16/BF16 weights go to mma_kernel at the end of this file instead (BF16
 * tensor cores, weights dequantized per tile in shared memory); F32 weights,
 * jobs marked exact (the router) and decode stay on the kernels above.
 */
#include "cuda_internal.cuh"

#include <stdlib.h>
#include <string.h>

#include "iq2xxs_tables.h"

__device__ uint64_t g_iq2_grid[256];
__device__ uint8_t g_iq2_signs[128];

bool cu_tables_init(char *err, size_t errlen) {
    CU_OK(cudaMemcpyToSymbol(g_iq2_grid, ds4_iq2xxs_grid, sizeof ds4_iq2xxs_grid), err, errlen, "IQ2 grid upload");
    CU_OK(cudaMemcpyToSymbol(g_iq2_signs, ds4_iq2xxs_ksigns, sizeof ds4_iq2xxs_ksigns), err, errlen, "IQ2 signs upload");
    return true;
}

/* ------------------------------------------------------------------------ */
/* activation quantization: one block of 256 threads per 256 values of a row */

__global__ void quantize_kernel(const float *x, uint32_t xstride, uint32_t n, int8_t *q8, float *d8, int8_t *qk,
                                float *dk, int32_t *bk) {
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
    quantize_kernel<<<grid, 256, 0, st>>>(x, xstride, a.n, k8 ? a.q8 : NULL, a.d8, kk ? a.qk : NULL, a.dk, a.bk);
}

__global__ void dequant_rows_kernel(dweight w, const int32_t *ids, uint32_t n, float *out, uint32_t rep) {
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
    dequant_rows_kernel<<<grid, 256, 0, st>>>(w, ids, w.n_in, out, rep);
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

static __device__ __forceinline__ uint32_t sign_mask4(uint32_t s4) {
    return ((s4 * 0x00204081u) & 0x01010101u) * 0xffu;
}

/* IQ2_XXS split: one 32-value sub-block per lane; the 8 lanes of a
 * super-block add their (2s+1)-scaled integer sums before the block scale. */
#define IQU 4
template <int NT>
static __device__ __forceinline__ void dot_iq2_xxs(const uint8_t *wq, const __half *wd, uint32_t n, const act_view &x,
                                                   const uint32_t (&xr)[NT], int nt, float (&acc)[NT],
                                                   const uint64_t *grid, const uint8_t *signs) {
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
                const uint32_t si = (wv[v].y >> (7 * l)) & 127;
                const uint32_t sg = si | ((__popc(si) & 1) << 7);
                const uint32_t mlo = sign_mask4(sg & 0xf), mhi = sign_mask4(sg >> 4);
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

static __device__ __forceinline__ uint32_t byte_of(uint32_t w, int i) { return (w >> (8 * i)) & 0xff; }

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

static __device__ __forceinline__ void q4k_scale_min(const uint32_t (&s)[3], int j, int &sc, int &m) {
#define SB(i) ((int)byte_of(s[(i) >> 2], (i) & 3))
    if (j < 4) {
        sc = SB(j) & 63;
        m = SB(j + 4) & 63;
    } else {
        sc = (SB(j + 4) & 0xF) | ((SB(j - 4) >> 6) << 4);
        m = (SB(j + 4) >> 4) | ((SB(j) >> 6) << 4);
    }
#undef SB
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

/* The row's dot with NT activation rows; every lane returns the totals. */
template <int NT>
static __device__ __forceinline__ void row_dot(const dweight &w, uint64_t wrow, const act_view &x,
                                               const uint32_t (&xr)[NT], int nt, float (&out)[NT],
                                               const uint64_t *grid, const uint8_t *signs) {
    float acc[NT];
#pragma unroll
    for (int j = 0; j < NT; j++) acc[j] = 0.0f;
    const uint8_t *q = w.q + wrow * w.row_bytes;
    switch (w.type) {
    case DS4_TYPE_F32: dot_f32<NT>((const float *)q, w.n_in, x, xr, nt, acc); break;
    case DS4_TYPE_F16: dot_f16<NT, false>((const uint16_t *)q, w.n_in, x, xr, nt, acc); break;
    case DS4_TYPE_BF16: dot_f16<NT, true>((const uint16_t *)q, w.n_in, x, xr, nt, acc); break;
    case DS4_TYPE_Q8_0:
        dot_q8_0<NT>((const int8_t *)q, w.d + wrow * (w.n_in / 32), w.n_in, x, xr, nt, acc);
        break;
    case DS4_TYPE_IQ2_XXS: dot_iq2_xxs<NT>(q, w.d + wrow * (w.n_in / 256), w.n_in, x, xr, nt, acc, grid, signs); break;
    case DS4_TYPE_Q2_K: dot_q2_k<NT>(q, w.n_in, x, xr, nt, acc); break;
    case DS4_TYPE_Q4_K: dot_q4_k<NT>(q, w.n_in, x, xr, nt, acc); break;
    default: break;
    }
#pragma unroll
    for (int j = 0; j < NT; j++) {
        float v = warp_sum(acc[j]);
        if (w.type == DS4_TYPE_IQ2_XXS) v *= 0.125f;
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
    uint32_t rpw; /* rows per warp */
} mv_launch;

static __device__ __forceinline__ void load_iq2_tables(uint64_t *s_grid, uint8_t *s_signs) {
    for (int i = threadIdx.x; i < 256; i += blockDim.x) s_grid[i] = g_iq2_grid[i];
    for (int i = threadIdx.x; i < 128; i += blockDim.x) s_signs[i] = g_iq2_signs[i];
    __syncthreads();
}

/* rows a warp handles in turn at T <= 4 (fewer, longer-lived blocks: the
 * IQ2 table load and the block launch amortise over more rows) */
#define MV_RPW_SMALL 2

/* OCC: the decode variant capped at 48 registers (5 blocks, 40 warps an SM:
 * more weight bytes in flight, a few spills); chosen with DS4_CUDA_MV_OCC=1 */
template <int NT, bool OCC>
__global__ void __launch_bounds__(256, OCC ? 5 : 1) matvec_kernel(const __grid_constant__ mv_launch L) {
    __shared__ uint64_t s_grid[256];
    __shared__ uint8_t s_signs[128];
    if (L.need_iq2) load_iq2_tables(s_grid, s_signs);
    int jn = 0;
    while (jn + 1 < L.n_jobs && blockIdx.x >= L.blk0[jn + 1]) jn++;
    const mv_job &J = L.jobs[jn];
    const uint32_t rpw = L.rpw, rows_pb = MV_WARPS * rpw;
    const uint32_t local = blockIdx.x - L.blk0[jn];
    const uint32_t rbp = (J.n_rows + rows_pb - 1) / rows_pb;
    const uint32_t pair = local / rbp;
    uint32_t mat = J.mat;
    if (J.mat_ids) {
        const int32_t e = J.mat_ids[pair];
        mat = e >= 0 && (uint32_t)e < J.w.n_mat ? (uint32_t)e : 0;
    }
    for (uint32_t k = 0; k < rpw; k++) {
        const uint32_t r = (local % rbp) * rows_pb + k * MV_WARPS + (threadIdx.x >> 5);
        if (r >= J.n_rows) break;
        const uint64_t wrow = (uint64_t)mat * J.w.n_out + J.row0 + r;
        for (uint32_t t0 = 0; t0 < L.T; t0 += NT) {
            const int nt = L.T - t0 < (uint32_t)NT ? (int)(L.T - t0) : NT;
            uint32_t xr[NT];
#pragma unroll
            for (int j = 0; j < NT; j++) xr[j] = pair * J.x_pair + t0 + j;
            float out[NT];
            row_dot<NT>(J.w, wrow, J.x, xr, nt, out, s_grid, s_signs);
            if ((threadIdx.x & 31) == 0)
#pragma unroll
                for (int j = 0; j < NT; j++)
                    if (j < nt) J.y[((size_t)pair * J.y_pair + t0 + j) * J.y_stride + r] = out[j];
        }
    }
}

static void matvec_launch(cudaStream_t st, const mv_job *jobs, int n_jobs, uint32_t T) {
    for (int base = 0; base < n_jobs; base += MV_MAX_JOBS) {
        mv_launch L;
        memset(&L, 0, sizeof L);
        L.T = T;
        L.n_jobs = n_jobs - base < MV_MAX_JOBS ? n_jobs - base : MV_MAX_JOBS;
        uint32_t rows = 0;
        for (int j = 0; j < L.n_jobs; j++) rows += (jobs[base + j].n_pairs ? jobs[base + j].n_pairs : 1) * jobs[base + j].n_rows;
        /* two rows a warp for small batches of moderate size: fewer blocks to launch and fewer table loads */
        L.rpw = 1; (void)rows; /* two rows a warp (MV_RPW_SMALL) measured no faster on H200 */
        uint32_t blocks = 0;
        for (int j = 0; j < L.n_jobs; j++) {
            L.jobs[j] = jobs[base + j];
            if (L.jobs[j].n_pairs == 0) L.jobs[j].n_pairs = 1;
            L.blk0[j] = blocks;
            const uint32_t rows_pb = MV_WARPS * L.rpw;
            blocks += L.jobs[j].n_pairs * ((L.jobs[j].n_rows + rows_pb - 1) / rows_pb);
            if (L.jobs[j].w.type == DS4_TYPE_IQ2_XXS) L.need_iq2 = 1;
        }
        L.blk0[L.n_jobs] = blocks;
        if (!blocks) continue;
        static int occ = -1;
        if (occ < 0) {
            const char *e = getenv("DS4_CUDA_MV_OCC");
            occ = e && *e == '1';
        }
        if (T == 1 && occ)
            matvec_kernel<1, true><<<blocks, 256, 0, st>>>(L);
        else if (T == 1)
            matvec_kernel<1, false><<<blocks, 256, 0, st>>>(L);
        else if (T <= 4)
            matvec_kernel<4, false><<<blocks, 256, 0, st>>>(L);
        else
            matvec_kernel<8, false><<<blocks, 256, 0, st>>>(L);
    }
}

#define MOE_NT 8

__global__ void __launch_bounds__(256) moe_mm_kernel(dweight w, const int32_t *cnt, const int32_t *off,
                                                     const int32_t *list, act_view x, uint32_t x_div, float *y,
                                                     uint32_t y_stride, int need_iq2) {
    const uint32_t e = blockIdx.y;
    const int32_t n = cnt[e];
    if (n <= 0) return;
    __shared__ uint64_t s_grid[256];
    __shared__ uint8_t s_signs[128];
    if (need_iq2) load_iq2_tables(s_grid, s_signs);
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
        row_dot<MOE_NT>(w, wrow, x, xr, nt, out, s_grid, s_signs);
        if ((threadIdx.x & 31) == 0)
#pragma unroll
            for (int j = 0; j < MOE_NT; j++)
                if (j < nt) y[(size_t)yr[j] * y_stride + r] = out[j];
    }
}

static bool mma_moe(cudaStream_t st, const dweight &w, uint32_t n_expert, const int32_t *cnt, const int32_t *off,
                    const int32_t *list, act_view x, uint32_t x_div, float *y, uint32_t y_stride, uint32_t T);

void cu_moe_mm(cudaStream_t st, const dweight &w, uint32_t n_expert, const int32_t *cnt, const int32_t *off,
               const int32_t *list, act_view x, uint32_t x_div, float *y, uint32_t y_stride, uint32_t T) {
    if (mma_moe(st, w, n_expert, cnt, off, list, x, x_div, y, y_stride, T)) return;
    dim3 grid((w.n_out + MV_WARPS - 1) / MV_WARPS, n_expert);
    moe_mm_kernel<<<grid, 256, 0, st>>>(w, cnt, off, list, x, x_div, y, y_stride, w.type == DS4_TYPE_IQ2_XXS);
}

/* ------------------------------------------------------------------------ */
/* Tensor-core prefill products (T >= cu_mma_min_T tokens).
 *
 * A block computes a 64-row x 64-token tile of y = W x: per 256-wide slice of
 * the row it dequantizes its 64 weight rows (Q8_0 / IQ2_XXS / Q2_K / Q4_K,
 * the CPU's dequantizer arithmetic) into BF16 in shared memory, converts the
 * 64 activation rows (floats) to BF16 next to them, and runs 16 x 16 x 16
 * BF16 WMMA steps with f32 accumulation. Weights are read once per 64 tokens
 * instead of once per 8 and the products run on tensor cores; the numerics
 * are BF16 activations (8-bit mantissa, per element) instead of the CPU's
 * Q8 blocks, so prefill results differ from the CPU by about the CPU's own
 * activation-quantization noise (docs/CUDA.md). Routed experts: blockIdx.z
 * is the expert, the token tile gathers its pairs from the sorted list.
 * F32/F16/BF16 weights and decode keep the exact kernels above. */
#include <mma.h>

#define MMA_BM 64
#define MMA_BK 256
#define MMA_LD (MMA_BK + 8)  /* bf16 elements per shared row (16-byte pad) */
#define MMA_CLD (MMA_BM + 4) /* floats per shared output column */

static uint32_t g_mma_min_T = 0xffffffffu; /* set on first use from DS4_CUDA_MMA_MIN (default 16; 0 = off) */
static bool g_mma_forced = false;

void cu_mma_set_min_T(uint32_t min_T) {
    g_mma_min_T = min_T ? min_T : 0xffffffffu;
    g_mma_forced = true;
}

static uint32_t mma_min_T(void) {
    if (!g_mma_forced) {
        const char *e = getenv("DS4_CUDA_MMA_MIN");
        const long v = e && *e ? atol(e) : 16;
        g_mma_min_T = v > 0 ? (uint32_t)v : 0xffffffffu;
        g_mma_forced = true;
    }
    return g_mma_min_T;
}

static bool mma_type(int t) {
    return t == DS4_TYPE_Q8_0 || t == DS4_TYPE_IQ2_XXS || t == DS4_TYPE_Q2_K || t == DS4_TYPE_Q4_K ||
           t == DS4_TYPE_F16 || t == DS4_TYPE_BF16;
}

static bool mma_ok(const dweight &w, const act_view &x) {
    return mma_type(w.type) && w.n_in % MMA_BK == 0 && x.f && x.stride % 4 == 0 && x.off % 4 == 0 &&
           ((uintptr_t)x.f & 15) == 0 && ((uintptr_t)w.q & 15) == 0 &&
           (w.type == DS4_TYPE_Q2_K || w.row_bytes % 16 == 0);
}

typedef struct {
    dweight w;
    uint64_t wrow0;  /* first weight row (dense: mat * n_out + row0) */
    uint32_t n_rows; /* output rows */
    act_view x;
    float *y;
    uint32_t y_stride, T;
    const int32_t *cnt, *off, *list; /* MoE: pairs by expert (NULL: dense) */
    uint32_t x_div;
} mma_args;

/* Four bytes (unsigned) -> floats without int->float conversions (a quarter
 * rate instruction): 0x4B000000 | u is the float 2^23 + u, exactly. */
static __device__ __forceinline__ void bytes4_f(uint32_t w, float bias, float *o) {
    const float c = 8388608.0f + bias;
    o[0] = __uint_as_float(__byte_perm(w, 0x4B000000u, 0x7540)) - c;
    o[1] = __uint_as_float(__byte_perm(w, 0x4B000000u, 0x7541)) - c;
    o[2] = __uint_as_float(__byte_perm(w, 0x4B000000u, 0x7542)) - c;
    o[3] = __uint_as_float(__byte_perm(w, 0x4B000000u, 0x7543)) - c;
}

static __device__ __forceinline__ void put4(__nv_bfloat16 *o, float a, float b, float c, float d) {
    const __nv_bfloat162 x = __floats2bfloat162_rn(a, b), y = __floats2bfloat162_rn(c, d);
    *(uint2 *)o = make_uint2(*(const uint32_t *)&x, *(const uint32_t *)&y);
}

/* 64 weights of row `wrow`, super-block slice sb, quarter qd -> BF16 (the
 * CPU dequantizer's values, rounded once to BF16), stored 4 at a time */
static __device__ __forceinline__ void mma_dequant64(const dweight &w, uint64_t wrow, uint32_t sb, uint32_t qd,
                                                     __nv_bfloat16 *out, const uint64_t *grid, const uint8_t *signs) {
    const uint8_t *row = w.q + wrow * w.row_bytes;
    switch (w.type) {
    case DS4_TYPE_Q8_0: {
        const int8_t *q = (const int8_t *)row + (size_t)sb * 256 + qd * 64;
        const __half *dd = w.d + wrow * (w.n_in / 32) + sb * 8 + qd * 2;
        const float d0 = __half2float(dd[0]), d1 = __half2float(dd[1]);
#pragma unroll
        for (int c = 0; c < 4; c++) {
            const uint4 qq = *(const uint4 *)(q + 16 * c);
            const uint32_t u[4] = {qq.x, qq.y, qq.z, qq.w};
            const float dc = c < 2 ? d0 : d1;
#pragma unroll
            for (int k = 0; k < 4; k++) {
                float f[4];
                bytes4_f(u[k] ^ 0x80808080u, 128.0f, f); /* int8 q: q + 128 as unsigned */
                put4(out + 16 * c + 4 * k, dc * f[0], dc * f[1], dc * f[2], dc * f[3]);
            }
        }
        break;
    }
    case DS4_TYPE_IQ2_XXS: {
        const uint8_t *q = row + (size_t)sb * 64 + qd * 16;
        const float d = __half2float(w.d[wrow * (w.n_in / 256) + sb]);
        const uint4 qq = *(const uint4 *)q;
        const uint32_t aux[4] = {qq.x, qq.y, qq.z, qq.w};
#pragma unroll
        for (int g = 0; g < 2; g++) {
            const float db = d * (0.5f + (float)(aux[2 * g + 1] >> 28)) * 0.25f;
#pragma unroll
            for (int l = 0; l < 4; l++) {
                const uint64_t gv = grid[(aux[2 * g] >> (8 * l)) & 0xFF];
                const uint32_t sg = signs[(aux[2 * g + 1] >> (7 * l)) & 127];
#pragma unroll
                for (int hh = 0; hh < 2; hh++) {
                    float f[4];
                    bytes4_f((uint32_t)(gv >> (32 * hh)), 0.0f, f);
#pragma unroll
                    for (int i = 0; i < 4; i++) f[i] *= (sg >> (4 * hh + i)) & 1 ? -db : db;
                    put4(out + 32 * g + 8 * l + 4 * hh, f[0], f[1], f[2], f[3]);
                }
            }
        }
        break;
    }
    case DS4_TYPE_Q2_K: {
        const uint8_t *b = row + (size_t)sb * 84;
        const uint32_t h = qd >> 1, j0 = (qd & 1) * 2;
        const uint32_t ddm = *(const uint32_t *)(b + 80);
        const float d = h2f(ddm & 0xffff), dmin = h2f(ddm >> 16);
        uint32_t qs[8];
#pragma unroll
        for (int i = 0; i < 8; i++) qs[i] = *(const uint32_t *)(b + 16 + 32 * h + 4 * i);
        const uint32_t scw = *(const uint32_t *)(b + 8 * h + 2 * j0); /* scales 8h+2j0 .. +3 */
#pragma unroll
        for (int jj = 0; jj < 2; jj++) {
            const uint32_t j = j0 + jj;
#pragma unroll
            for (int half = 0; half < 2; half++) {
                const uint32_t sc = byte_of(scw, 2 * jj + half);
                const float dl = d * (float)(sc & 15), ml = dmin * (float)(sc >> 4);
#pragma unroll
                for (int k = 0; k < 4; k++) {
                    float f[4];
                    bytes4_f((qs[4 * half + k] >> (2 * j)) & 0x03030303u, 0.0f, f);
                    put4(out + 32 * jj + 16 * half + 4 * k, dl * f[0] - ml, dl * f[1] - ml, dl * f[2] - ml,
                         dl * f[3] - ml);
                }
            }
        }
        break;
    }
    case DS4_TYPE_Q4_K: {
        const uint8_t *b = row + (size_t)sb * 144;
        const uint32_t dd = *(const uint32_t *)b;
        const uint32_t s3[3] = {*(const uint32_t *)(b + 4), *(const uint32_t *)(b + 8), *(const uint32_t *)(b + 12)};
        const float d = h2f(dd & 0xffff), dmin = h2f(dd >> 16);
        int sc0, m0, sc1, m1;
        q4k_scale_min(s3, 2 * qd, sc0, m0);
        q4k_scale_min(s3, 2 * qd + 1, sc1, m1);
        const float d1 = d * (float)sc0, mm1 = dmin * (float)m0, d2 = d * (float)sc1, mm2 = dmin * (float)m1;
        const uint4 q0 = *(const uint4 *)(b + 16 + 32 * qd), q1 = *(const uint4 *)(b + 32 + 32 * qd);
        const uint32_t qv[8] = {q0.x, q0.y, q0.z, q0.w, q1.x, q1.y, q1.z, q1.w};
#pragma unroll
        for (int k = 0; k < 8; k++) {
            float lo[4], hi[4];
            bytes4_f(qv[k] & 0x0f0f0f0fu, 0.0f, lo);
            bytes4_f((qv[k] >> 4) & 0x0f0f0f0fu, 0.0f, hi);
            put4(out + 4 * k, d1 * lo[0] - mm1, d1 * lo[1] - mm1, d1 * lo[2] - mm1, d1 * lo[3] - mm1);
            put4(out + 32 + 4 * k, d2 * hi[0] - mm2, d2 * hi[1] - mm2, d2 * hi[2] - mm2, d2 * hi[3] - mm2);
        }
        break;
    }
    case DS4_TYPE_F16: {
        const uint4 *q = (const uint4 *)(row + ((size_t)sb * 256 + qd * 64) * 2);
#pragma unroll
        for (int c = 0; c < 8; c++) {
            const uint4 qq = q[c];
            const float2 a0 = __half22float2(*(const __half2 *)&qq.x), a1 = __half22float2(*(const __half2 *)&qq.y);
            const float2 a2 = __half22float2(*(const __half2 *)&qq.z), a3 = __half22float2(*(const __half2 *)&qq.w);
            put4(out + 8 * c, a0.x, a0.y, a1.x, a1.y);
            put4(out + 8 * c + 4, a2.x, a2.y, a3.x, a3.y);
        }
        break;
    }
    case DS4_TYPE_BF16: {
        const uint4 *q = (const uint4 *)(row + ((size_t)sb * 256 + qd * 64) * 2);
        uint4 *o = (uint4 *)out;
#pragma unroll
        for (int c = 0; c < 8; c++) o[c] = q[c];
        break;
    }
    default:
#pragma unroll
        for (int i = 0; i < 64; i += 4) put4(out + i, 0.0f, 0.0f, 0.0f, 0.0f);
    }
}

/* BN tokens a block (64, or 128 for dense products of >= 128 tokens: the
 * dequantized tile serves twice the tokens); 8 warps = 4 row groups of 16 x
 * 2 token groups of BN/2. */
template <int BN>
__global__ void __launch_bounds__(256, BN == 32 ? 4 : BN == 64 ? 3 : 2) mma_kernel(const __grid_constant__ mma_args A) {
    using namespace nvcuda;
    constexpr int NF = BN / 32; /* accumulator fragments a warp */
    constexpr int XT = BN < 64 ? BN : 64; /* activation rows a pass */
    constexpr int TPT = 256 / XT, FPT = MMA_BK / TPT; /* threads a row, floats a thread */
    extern __shared__ __align__(128) unsigned char smem[];
    __nv_bfloat16 *Ws = (__nv_bfloat16 *)smem, *Xs = Ws + MMA_BM * MMA_LD;
    float *Cs = (float *)smem;
    __shared__ uint64_t s_grid[256];
    __shared__ uint8_t s_signs[128];
    __shared__ uint32_t s_xrow[BN], s_yrow[BN];
    __shared__ int s_n;
    const uint32_t tid = threadIdx.x;
    uint64_t wrow0 = A.wrow0;
    if (A.list) {
        const uint32_t e = blockIdx.z;
        const int32_t n = A.cnt[e];
        if ((int32_t)(blockIdx.y * BN) >= n) return;
        wrow0 = (uint64_t)e * A.w.n_out;
        if (tid < BN) {
            const int32_t i = (int32_t)(blockIdx.y * BN + tid);
            const uint32_t p = (uint32_t)A.list[A.off[e] + (i < n ? i : n - 1)];
            s_xrow[tid] = p / A.x_div;
            s_yrow[tid] = p;
        }
        if (tid == 0) s_n = n - (int32_t)(blockIdx.y * BN) < BN ? n - (int32_t)(blockIdx.y * BN) : BN;
    } else {
        if (tid < BN) {
            const uint32_t t = blockIdx.y * BN + tid;
            s_xrow[tid] = t < A.T ? t : A.T - 1;
            s_yrow[tid] = t;
        }
        if (tid == 0) s_n = A.T - blockIdx.y * BN < (uint32_t)BN ? (int)(A.T - blockIdx.y * BN) : BN;
    }
    if (A.w.type == DS4_TYPE_IQ2_XXS) load_iq2_tables(s_grid, s_signs);
    __syncthreads();
    const int n = s_n;
    const uint32_t r0 = blockIdx.x * MMA_BM;
    const uint32_t lr = tid >> 2, qd = tid & 3;
    const bool rvalid = r0 + lr < A.n_rows;
    const uint64_t wrow = wrow0 + r0 + (rvalid ? lr : 0);
    const int warp = tid >> 5, wr = warp & 3, wc = warp >> 2;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[NF];
#pragma unroll
    for (int f = 0; f < NF; f++) wmma::fill_fragment(acc[f], 0.0f);
    const uint32_t nsb = A.w.n_in / MMA_BK;
    for (uint32_t sb = 0; sb < nsb; sb++) {
        __syncthreads();
        __nv_bfloat16 *wd = Ws + lr * MMA_LD + qd * 64;
        if (rvalid) mma_dequant64(A.w, wrow, sb, qd, wd, s_grid, s_signs);
        else
            for (int i = 0; i < 64; i += 4) put4(wd + i, 0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
        for (int pass = 0; pass < BN / XT; pass++) {
            const uint32_t t = tid / TPT + XT * pass, part = tid % TPT;
            __nv_bfloat16 *xd = Xs + t * MMA_LD + part * FPT;
            if ((int)t < n) {
                const float4 *xs4 = (const float4 *)(A.x.f + (size_t)s_xrow[t] * A.x.stride + A.x.off + part * FPT +
                                                     (size_t)sb * MMA_BK);
                float4 f[FPT / 4];
#pragma unroll
                for (int i = 0; i < FPT / 4; i++) f[i] = xs4[i];
#pragma unroll
                for (int i = 0; i < FPT / 4; i++) put4(xd + 4 * i, f[i].x, f[i].y, f[i].z, f[i].w);
            } else {
#pragma unroll
                for (int i = 0; i < FPT / 8; i++) ((uint4 *)xd)[i] = make_uint4(0, 0, 0, 0);
            }
        }
        __syncthreads();
#pragma unroll 2
        for (int kk = 0; kk < MMA_BK / 16; kk++) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
            wmma::load_matrix_sync(a, Ws + (16 * wr) * MMA_LD + 16 * kk, MMA_LD);
#pragma unroll
            for (int f = 0; f < NF; f++) {
                if (wc * (BN / 2) + 16 * f >= n) break; /* all-zero token columns */
                wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> b;
                wmma::load_matrix_sync(b, Xs + (wc * (BN / 2) + 16 * f) * MMA_LD + 16 * kk, MMA_LD);
                wmma::mma_sync(acc[f], a, b, acc[f]);
            }
        }
    }
    __syncthreads();
#pragma unroll
    for (int f = 0; f < NF; f++)
        wmma::store_matrix_sync(Cs + (wc * (BN / 2) + 16 * f) * MMA_CLD + 16 * wr, acc[f], MMA_CLD, wmma::mem_col_major);
    __syncthreads();
    for (uint32_t i = tid; i < (uint32_t)BN * MMA_BM; i += 256) {
        const uint32_t t = i / MMA_BM, m = i % MMA_BM;
        if ((int)t < n && r0 + m < A.n_rows) A.y[(size_t)s_yrow[t] * A.y_stride + r0 + m] = Cs[t * MMA_CLD + m];
    }
}

#define MMA_SMEM_BN(bn) (((MMA_BM + (bn)) * MMA_LD * 2) > ((bn) * MMA_CLD * 4) ? ((MMA_BM + (bn)) * MMA_LD * 2) : ((bn) * MMA_CLD * 4))

static uint32_t g_mma_moe_bn = 0; /* tests: force the expert tile (32 or 64); 0: by pairs per expert */
void cu_mma_set_moe_bn(uint32_t bn) { g_mma_moe_bn = bn; }

static void mma_launch(cudaStream_t st, const mma_args &A, uint32_t n_rows, uint32_t T, uint32_t n_expert) {
    static bool attr = false;
    if (!attr) {
        cudaFuncSetAttribute(mma_kernel<32>, cudaFuncAttributeMaxDynamicSharedMemorySize, MMA_SMEM_BN(32));
        const char *e = getenv("DS4_CUDA_MMA_MOE_BN"); /* 32 / 64: the expert tile, for measurements */
        if (e && *e && !g_mma_moe_bn) g_mma_moe_bn = (uint32_t)atoi(e);
        cudaFuncSetAttribute(mma_kernel<64>, cudaFuncAttributeMaxDynamicSharedMemorySize, MMA_SMEM_BN(64));
        cudaFuncSetAttribute(mma_kernel<128>, cudaFuncAttributeMaxDynamicSharedMemorySize, MMA_SMEM_BN(128));
        attr = true;
    }
    /* 128-token tiles only where the grid still fills the card (~2 blocks an SM) */
    const uint32_t tiles128 = ((n_rows + MMA_BM - 1) / MMA_BM) * ((T + 127) / 128);
    /* experts with few pairs each (T <= 4 x experts: ~24 pairs at top-6):
     * 32-token tiles, 4 blocks an SM */
    const bool moe32 = A.list && (g_mma_moe_bn ? g_mma_moe_bn == 32 : T <= 4 * n_expert);
    if (moe32)
        mma_kernel<32><<<dim3((n_rows + MMA_BM - 1) / MMA_BM, (T + 31) / 32, n_expert), 256, MMA_SMEM_BN(32), st>>>(A);
    else if (!A.list && T >= 128 && tiles128 >= 264)
        mma_kernel<128><<<dim3((n_rows + MMA_BM - 1) / MMA_BM, (T + 127) / 128, n_expert), 256, MMA_SMEM_BN(128), st>>>(A);
    else
        mma_kernel<64><<<dim3((n_rows + MMA_BM - 1) / MMA_BM, (T + 63) / 64, n_expert), 256, MMA_SMEM_BN(64), st>>>(A);
}

static bool mma_moe(cudaStream_t st, const dweight &w, uint32_t n_expert, const int32_t *cnt, const int32_t *off,
                    const int32_t *list, act_view x, uint32_t x_div, float *y, uint32_t y_stride, uint32_t T) {
    if (T < mma_min_T() || !mma_ok(w, x)) return false;
    mma_args A;
    memset(&A, 0, sizeof A);
    A.w = w;
    A.n_rows = w.n_out;
    A.x = x;
    A.y = y;
    A.y_stride = y_stride;
    A.T = T;
    A.cnt = cnt;
    A.off = off;
    A.list = list;
    A.x_div = x_div;
    mma_launch(st, A, w.n_out, T, n_expert);
    return true;
}

/* The exact kernel over many tokens: a block walks all T tokens 8 at a time,
 * so a small matrix (the router: 256 rows) fills few SMs. Split the tokens
 * into pairs of 8 (x_pair = y_pair = 8: one block row per 8 tokens) plus the
 * remainder as a view shifted by whole rows. */
static void matvec_split(cudaStream_t st, const mv_job &J, uint32_t T) {
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
    if (T < mma_min_T()) {
        if (T <= 8) matvec_launch(st, jobs, n_jobs, T);
        else
            for (int j = 0; j < n_jobs; j++) matvec_split(st, jobs[j], T);
        return;
    }
    for (int j = 0; j < n_jobs; j++) {
        const mv_job &J = jobs[j];
        if (J.mat_ids || J.n_pairs > 1 || J.exact || !mma_ok(J.w, J.x)) {
            matvec_split(st, J, T);
            continue;
        }
        mma_args A;
        memset(&A, 0, sizeof A);
        A.w = J.w;
        A.wrow0 = (uint64_t)J.mat * J.w.n_out + J.row0;
        A.n_rows = J.n_rows;
        A.x = J.x;
        A.y = J.y;
        A.y_stride = J.y_stride;
        A.T = T;
        A.x_div = 1;
        mma_launch(st, A, J.n_rows, T, 1);
    }
}

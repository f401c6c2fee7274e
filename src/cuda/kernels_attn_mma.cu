/* kernels_attn_mma.cu - prefill attention on FP16 tensor cores.
 *
 * Why: the exact attention kernel (kernels_attn.cu) gives each (token, 8
 * heads) block a warp per head that forms every score with a warp reduction
 * and re-reads the token's key rows from L2 for each head group: 3.1 ms of a
 * 2048-token chunk on an H100 for the 128-row window alone, the largest
 * prefill step after the expert products. DS4 attention has one key/value
 * row set for all heads (K = V, shared by the 64 heads), so a token's
 * attention is two small GEMMs, S = Q K^T (heads x rows) and O = P V, which
 * this kernel runs with mma.sync m16n8k16 (FP16 inputs, f32 sums) and an
 * online softmax (flash-attention style) over 32-row tiles.
 *
 * Numerics: the raw KV rows of a non-exact model are F16-rounded when stored
 * (kv_store_kernel), so K and V are exact in FP16; queries and the softmax
 * weights are rounded to FP16 (11-bit mantissa, relative 2^-11), sums stay
 * f32. Used for prefill chunks only (T >= 16, not --exact), like the BF16
 * products of kernels_mma.cu; decode keeps the exact kernel.
 *
 * A block is one token and 64 heads (grid T x H/64), 8 warps:
 *   warp w: heads 16 (w & 3) .. +15 (one m16 tile), dims 256 (w >> 2) .. +255
 *   Q [64][512] FP16 in shared memory (loaded once)
 *   per 32-row tile: rows gathered by cp.async as f32 into a staging area
 *     (tile i+1 in flight while tile i is used), converted to FP16 [32][512];
 *     S partial over the warp's 256 dims (16 k-steps x 4 row n-tiles), the
 *     two dim halves exchanged through shared memory and added;
 *     online softmax per head row (quad shuffles), P reused as the A
 *     fragments of O += P V (C layout of two n-tiles = A layout of k16);
 *     V fragments by ldmatrix.trans from the same FP16 tile.
 *   end: O / (l + exp(sink - m)), inverse RoPE on the last n_rot dims in
 *   registers (a thread holds the (2k, 2k+1) pair), f32 out.
 * Shared memory: Q 66.5 KB + FP16 tile 33 KB + f32 staging 64 KB + S
 * exchange 16 KB = 180 KB, one block an SM.
 */
#include "cuda_internal.cuh"
#include "row_ops.cuh"

#include <cuda_fp16.h>
#include <stdlib.h>

#define ATC_D 512        /* head_dim this kernel is compiled for */
#define ATC_HB 64        /* heads a block */
#define ATC_NR 32        /* key rows a tile */
#define ATC_P (ATC_D + 8) /* FP16 pitch of Q and K rows: ldmatrix rows 16 bytes apart mod 128 */
#define ATC_SMEM                                                                                                  \
    ((size_t)ATC_HB * ATC_P * 2 + (size_t)ATC_NR * ATC_P * 2 + (size_t)ATC_NR * ATC_D * 4 + (size_t)8 * 16 * ATC_NR * 4)

static __device__ __forceinline__ void atc_ldsm4(uint32_t (&r)[4], const void *p) {
    ldsm_x4(r, (uint32_t)__cvta_generic_to_shared(p));
}
static __device__ __forceinline__ void atc_ldsm4t(uint32_t (&r)[4], const void *p) {
    const uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a)
                 : "memory");
}
/* c (16 x 8 f32) += a (16 x 16 FP16, row) b (16 x 8 FP16, col) */
static __device__ __forceinline__ void atc_mma(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                               uint32_t b0, uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
static __device__ __forceinline__ uint32_t atc_h2(float lo, float hi) {
    const __half2 v = __floats2half2_rn(lo, hi);
    return *(const uint32_t *)&v;
}

__global__ void __launch_bounds__(256, 1) attn_tc_kernel(attn_params ap, const float *q, const int64_t *pos0,
                                                         float *out) {
    extern __shared__ __align__(16) unsigned char sm[];
    __half *sQ = (__half *)sm;                                   /* [64][ATC_P] */
    __half *sK = sQ + ATC_HB * ATC_P;                            /* [32][ATC_P] */
    float *sKf = (float *)(sK + ATC_NR * ATC_P);                 /* [32][512] staging */
    float *sS = sKf + ATC_NR * ATC_D;                            /* [8 warps][16][32] */
    const uint32_t tid = threadIdx.x, lane = tid & 31, w = tid >> 5, mt = w & 3, dh = w >> 2;
    const uint32_t g = lane >> 2, t4 = lane & 3;
    const uint32_t t = blockIdx.x, h0 = blockIdx.y * ATC_HB, H = ap.H;
    pdl_wait();
    pdl_trigger();
    const int64_t p = pos0[0] + t;
    const attn_rows AR = attn_rows_of(ap, p, t);
    const uint32_t n = AR.n_raw + AR.n_comp, ntile = (n + ATC_NR - 1) / ATC_NR;

    /* key rows r0 .. r0+31 -> f32 staging (16-byte pieces; rows >= n skipped) */
    auto issue = [&](uint32_t r0) {
#pragma unroll
        for (int j = 0; j < ATC_NR * ATC_D / 4 / 256; j++) {
            const uint32_t c = tid + 256 * j, rr = c / (ATC_D / 4), c4 = c % (ATC_D / 4), r = r0 + rr;
            if (r >= n) continue;
            const float *src = attn_row(ap, AR, r);
            cp_async16(sKf + rr * ATC_D + 4 * c4, src + 4 * c4);
        }
        cp_async_commit();
    };
    issue(0);
    /* Q of the block's 64 heads -> FP16 */
    const float *qt = q + ((size_t)t * H + h0) * ATC_D;
#pragma unroll 4
    for (uint32_t c = tid; c < ATC_HB * ATC_D / 4; c += 256) {
        const uint32_t hh = c / (ATC_D / 4), c4 = c % (ATC_D / 4);
        const float4 v = *(const float4 *)(qt + (size_t)hh * ATC_D + 4 * c4);
        *(uint2 *)(sQ + hh * ATC_P + 4 * c4) = make_uint2(atc_h2(v.x, v.y), atc_h2(v.z, v.w));
    }

    float o[32][4]; /* O: heads 16 mt + g (c0, c1) / + 8 (c2, c3), dims 256 dh + 8 j + 2 t4 (+1) */
#pragma unroll
    for (int j = 0; j < 32; j++) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f; /* rows g, g + 8 */
    const float scale = 1.0f / sqrtf((float)ATC_D);

    for (uint32_t it = 0; it < ntile; it++) {
        const uint32_t r0 = it * ATC_NR;
        cp_async_wait_all();
        __syncthreads(); /* staging complete; the previous tile's FP16 rows and S are no longer read */
#pragma unroll
        for (int j = 0; j < ATC_NR * ATC_D / 4 / 256; j++) {
            const uint32_t c = tid + 256 * j, rr = c / (ATC_D / 4), c4 = c % (ATC_D / 4);
            uint2 hv = make_uint2(0, 0);
            if (r0 + rr < n) {
                const float4 v = *(const float4 *)(sKf + rr * ATC_D + 4 * c4);
                hv = make_uint2(atc_h2(v.x, v.y), atc_h2(v.z, v.w));
            }
            *(uint2 *)(sK + rr * ATC_P + 4 * c4) = hv;
        }
        __syncthreads();
        if (it + 1 < ntile) issue(r0 + ATC_NR);

        /* S partial: 16 heads x 32 rows over dims [256 dh, 256 dh + 256) */
        float s[4][4];
#pragma unroll
        for (int j = 0; j < 4; j++) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
        const __half *qa = sQ + (16 * mt + (lane & 15)) * ATC_P + 256 * dh + 8 * (lane >> 4);
        const __half *kb = sK + ((lane & 7) + ((lane >> 4) << 3)) * ATC_P + 256 * dh + 8 * ((lane >> 3) & 1);
#pragma unroll 4
        for (int ks = 0; ks < 16; ks++) {
            uint32_t a[4], b01[4], b23[4];
            atc_ldsm4(a, qa + 16 * ks);
            atc_ldsm4(b01, kb + 16 * ks);                  /* rows 0-7 (b0, b1), rows 8-15 (b0, b1) */
            atc_ldsm4(b23, kb + 16 * ATC_P + 16 * ks);     /* rows 16-23, 24-31 */
            atc_mma(s[0], a[0], a[1], a[2], a[3], b01[0], b01[1]);
            atc_mma(s[1], a[0], a[1], a[2], a[3], b01[2], b01[3]);
            atc_mma(s[2], a[0], a[1], a[2], a[3], b23[0], b23[1]);
            atc_mma(s[3], a[0], a[1], a[2], a[3], b23[2], b23[3]);
        }
        /* exchange the dim halves: S = S(dh 0) + S(dh 1) in both warps */
        float *mine = sS + w * 16 * ATC_NR, *other = sS + (w ^ 4) * 16 * ATC_NR;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            *(float2 *)(mine + g * ATC_NR + 8 * j + 2 * t4) = make_float2(s[j][0], s[j][1]);
            *(float2 *)(mine + (g + 8) * ATC_NR + 8 * j + 2 * t4) = make_float2(s[j][2], s[j][3]);
        }
        __syncthreads();
        float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const float2 u = *(const float2 *)(other + g * ATC_NR + 8 * j + 2 * t4);
            const float2 v = *(const float2 *)(other + (g + 8) * ATC_NR + 8 * j + 2 * t4);
            const uint32_t c = r0 + 8 * j + 2 * t4;
            /* the dh 0 half first in both warps: the same sums */
            s[j][0] = c < n ? (dh ? u.x + s[j][0] : s[j][0] + u.x) * scale : -INFINITY;
            s[j][1] = c + 1 < n ? (dh ? u.y + s[j][1] : s[j][1] + u.y) * scale : -INFINITY;
            s[j][2] = c < n ? (dh ? v.x + s[j][2] : s[j][2] + v.x) * scale : -INFINITY;
            s[j][3] = c + 1 < n ? (dh ? v.y + s[j][3] : s[j][3] + v.y) * scale : -INFINITY;
            mx0 = fmaxf(mx0, fmaxf(s[j][0], s[j][1]));
            mx1 = fmaxf(mx1, fmaxf(s[j][2], s[j][3]));
        }
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
        const float n0 = fmaxf(m0, mx0), n1 = fmaxf(m1, mx1); /* finite: every tile has a visible row */
        const float al0 = expf(m0 - n0), al1 = expf(m1 - n1);
        float ps0 = 0.0f, ps1 = 0.0f;
        uint32_t pa[4][2]; /* P in FP16: rows g (pa[j][0]) and g + 8 (pa[j][1]), cols 8 j + 2 t4 */
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const float e0 = expf(s[j][0] - n0), e1 = expf(s[j][1] - n0);
            const float e2 = expf(s[j][2] - n1), e3 = expf(s[j][3] - n1);
            ps0 += e0 + e1;
            ps1 += e2 + e3;
            pa[j][0] = atc_h2(e0, e1);
            pa[j][1] = atc_h2(e2, e3);
        }
        ps0 += __shfl_xor_sync(0xffffffffu, ps0, 1);
        ps0 += __shfl_xor_sync(0xffffffffu, ps0, 2);
        ps1 += __shfl_xor_sync(0xffffffffu, ps1, 1);
        ps1 += __shfl_xor_sync(0xffffffffu, ps1, 2);
        l0 = l0 * al0 + ps0;
        l1 = l1 * al1 + ps1;
        m0 = n0;
        m1 = n1;
#pragma unroll
        for (int j = 0; j < 32; j++) {
            o[j][0] *= al0;
            o[j][1] *= al0;
            o[j][2] *= al1;
            o[j][3] *= al1;
        }
        /* O += P V over the tile's 32 rows (two k16 steps), the warp's 256 dims */
        const __half *vb = sK + ((lane & 7) + (((lane >> 3) & 1) << 3)) * ATC_P + 256 * dh + 8 * (lane >> 4);
#pragma unroll
        for (int kk = 0; kk < 2; kk++) {
            const uint32_t a0 = pa[2 * kk][0], a1 = pa[2 * kk][1], a2 = pa[2 * kk + 1][0], a3 = pa[2 * kk + 1][1];
#pragma unroll
            for (int jj = 0; jj < 16; jj++) {
                uint32_t b[4];
                atc_ldsm4t(b, vb + 16 * kk * ATC_P + 16 * jj); /* dims 16 jj .. +7 (b0, b1), +8 .. +15 (b0, b1) */
                atc_mma(o[2 * jj], a0, a1, a2, a3, b[0], b[1]);
                atc_mma(o[2 * jj + 1], a0, a1, a2, a3, b[2], b[3]);
            }
        }
    }

    /* the sink, 1 / denominator, inverse RoPE of the last n_rot dims, out */
    const uint32_t ha = h0 + 16 * mt + g, hb = ha + 8;
    const float i0 = 1.0f / (l0 + expf(ap.sinks[ha] - m0)), i1 = 1.0f / (l1 + expf(ap.sinks[hb] - m1));
    float *oa = out + ((size_t)t * H + ha) * ATC_D, *ob = out + ((size_t)t * H + hb) * ATC_D;
    const uint32_t rot0 = ATC_D - ap.n_rot;
#pragma unroll
    for (int j = 0; j < 32; j++) {
        const uint32_t d = 256 * dh + 8 * j + 2 * t4;
        float x0 = o[j][0] * i0, x1 = o[j][1] * i0, y0 = o[j][2] * i1, y1 = o[j][3] * i1;
        if (d >= rot0) { /* srow_rope(inverse) on the pair (d, d + 1) */
            const float f = ap.inv_freq[(d - rot0) / 2];
            rope_pair(x0, x1, p, f, true);
            rope_pair(y0, y1, p, f, true);
        }
        *(float2 *)(oa + d) = make_float2(x0, x1);
        *(float2 *)(ob + d) = make_float2(y0, y1);
    }
}

bool cu_attention_tc(cudaStream_t st, const attn_params &ap, const float *q, uint32_t T, const int64_t *pos0,
                     float *o) {
    static int on = -1;
    if (on < 0) {
        const char *e = getenv("DS4_CUDA_ATT_TC");
        on = !(e && *e == '0');
        int dev = 0, maj = 0;
        cudaGetDevice(&dev);
        cudaDeviceGetAttribute(&maj, cudaDevAttrComputeCapabilityMajor, dev);
        if (maj < 8) on = 0;
        if (on && cudaFuncSetAttribute(attn_tc_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)ATC_SMEM) !=
                      cudaSuccess) {
            cudaGetLastError();
            on = 0;
        }
    }
    if (!on || ap.D != ATC_D || ap.H % ATC_HB || ap.n_rot > ATC_D || ap.n_rot % 2 || T == 0) return false;
    cu_launch(attn_tc_kernel, dim3(T, ap.H / ATC_HB), 256, ATC_SMEM, st, ap, q, pos0, o);
    return true;
}

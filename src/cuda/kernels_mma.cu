/* kernels_mma.cu - tensor-core prefill products (T >= cu_mma_min_T() tokens).
 *
 * Decode and small batches use the exact dp4a kernels of kernels_matmul.cu;
 * prefill chunks send every product with a quantized or F16/BF16 weight here:
 * weight tiles are dequantized to BF16 in shared memory (the CPU
 * dequantizer's values) and multiplied with BF16 activations on tensor cores
 * with f32 sums. Routed experts run as one grid over experts, each block
 * gathering its token tile from the expert's sorted pair list (no host sync).
 */
#include "cuda_internal.cuh"

#include <stdlib.h>
#include <string.h>

#include "iq2xxs_tables.h"

/* the IQ2_XXS tables again: without relocatable device code every file that
 * reads a __device__ table owns its copy */
static __device__ uint64_t g_mma_iq2_grid[256];
static __device__ uint8_t g_mma_iq2_signs[128];

bool cu_mma_tables_init(char *err, size_t errlen) {
    CU_OK(cudaMemcpyToSymbol(g_mma_iq2_grid, ds4_iq2xxs_grid, sizeof ds4_iq2xxs_grid), err, errlen, "IQ2 grid upload (mma)");
    CU_OK(cudaMemcpyToSymbol(g_mma_iq2_signs, ds4_iq2xxs_ksigns, sizeof ds4_iq2xxs_ksigns), err, errlen, "IQ2 signs upload (mma)");
    return true;
}

static __device__ __forceinline__ void load_iq2_tables(uint64_t *s_grid, uint8_t *s_signs) {
    for (int i = threadIdx.x; i < 256; i += blockDim.x) s_grid[i] = g_mma_iq2_grid[i];
    for (int i = threadIdx.x; i < 128; i += blockDim.x) s_signs[i] = g_mma_iq2_signs[i];
    __syncthreads();
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

uint32_t cu_mma_min_T(void) {
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

bool cu_mma_moe(cudaStream_t st, const dweight &w, uint32_t n_expert, const int32_t *cnt, const int32_t *off,
                const int32_t *list, act_view x, uint32_t x_div, float *y, uint32_t y_stride, uint32_t T) {
    if (T < cu_mma_min_T() || !mma_ok(w, x)) return false;
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

bool cu_mma_dense(cudaStream_t st, const mv_job &J, uint32_t T) {
    if (T < cu_mma_min_T() || J.mat_ids || J.n_pairs > 1 || J.exact || !mma_ok(J.w, J.x)) return false;
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
    return true;
}

/* kernels_mma.cu - tensor-core prefill products (T >= cu_mma_min_T() tokens).
 *
 * Decode and small batches use the exact dp4a kernels of kernels_matmul.cu;
 * prefill chunks send every product with a quantized or F16/BF16 weight here:
 * weight tiles are dequantized to BF16 in shared memory (the CPU
 * dequantizer's values) and multiplied with BF16 activations on tensor cores
 * (mma.sync m16n8k16) with f32 sums, the next slice's weight bytes and
 * activations in flight during the current slice's MMAs (two-stage pipeline,
 * see mma_kernel). Routed experts run as one grid over experts, each block
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
 * A block computes a 64-row x BN-token tile of y = W x (BN = 32 or 64; 8
 * warps = 4 row groups of 16 x 2 token halves of BN/2), walking the row in
 * 128-wide slices with a two-stage pipeline and one __syncthreads a slice:
 *
 *   slice s+1: raw weight bytes -> registers (each thread: one row, 32
 *              weights), activation floats -> shared stage (s+1)&1 by
 *              cp.async (16-byte pieces, rows of pitch 136 floats)
 *   slice s:   MMAs on stage s&1 (mma.sync m16n8k16 BF16, f32 sums): weight
 *              fragments by ldmatrix from the BF16 tile, activation fragments
 *              as float pairs from the float tile, rounded to BF16 in
 *              registers (cvt.rn.bf16x2)
 *   slice s+1: the registers dequantized (the CPU dequantizer's arithmetic)
 *              into the BF16 weight tile (s+1)&1; wait for the cp.async;
 *              __syncthreads
 *
 * so the global loads of a slice are in flight during the previous slice's
 * MMAs. Shared memory a block: 2 x (64 x 136 BF16 weights + BN x 136 float
 * activations) = 69,632 bytes (BN 32, 3 blocks an SM) / 104,448 (BN 64, 2).
 * Weights are read once per BN tokens; the numerics are BF16 activations (8-bit
 * mantissa, per element) instead of the CPU's Q8 blocks, so prefill results
 * differ from the CPU by about the CPU's own activation-quantization noise
 * (docs/CUDA.md). Routed experts: blockIdx.z is the expert, the token tile
 * gathers its pairs from the sorted list. F32 weights and decode keep the
 * exact kernels. */

#define MMA_BM 64
#define MMA_BK 128            /* row slice a pipeline stage */
#define MMA_WP (MMA_BK + 8)   /* bf16 a shared weight row: 272 bytes, ldmatrix rows conflict-free */
#define MMA_XP (MMA_BK + 8)   /* floats a shared activation row: 8 rows x float2 reads conflict-free */
#define MMA_WSTAGE (MMA_BM * MMA_WP * 2)
#define MMA_XSTAGE(bn) ((bn) * MMA_XP * 4)
#define MMA_SMEM_BN(bn) (2 * (MMA_WSTAGE + MMA_XSTAGE(bn)))

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
    return mma_type(w.type) && w.n_in % 256 == 0 && x.f && x.stride % 4 == 0 && x.off % 4 == 0 &&
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

static __device__ __forceinline__ uint32_t bf2(float lo, float hi) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi); /* .x (low half) = lo */
    return *(const uint32_t *)&v;
}

/* 8 floats -> 8 BF16, one 16-byte shared store */
static __device__ __forceinline__ void put8(__nv_bfloat16 *o, const float *f) {
    *(uint4 *)o = make_uint4(bf2(f[0], f[1]), bf2(f[2], f[3]), bf2(f[4], f[5]), bf2(f[6], f[7]));
}

/* The raw bytes of 32 weights: row `wrow`, super-block sb (256 weights), 32-
 * weight piece sub (0..7) = weights [32 sub, 32 sub + 32) of the super-block.
 * load() issues the global loads (kept in registers across the MMAs), store()
 * dequantizes them to BF16 (the CPU dequantizer's values, rounded once). */
template <int TYPE> struct mma_raw;

template <> struct mma_raw<DS4_TYPE_Q8_0> { /* split: 32 int8 + one f16 scale per 32 */
    uint4 q0, q1;
    __half d;
    __device__ __forceinline__ void load(const dweight &w, uint64_t wrow, uint32_t sb, uint32_t sub) {
        const uint4 *q = (const uint4 *)(w.q + wrow * w.row_bytes + (size_t)sb * 256 + sub * 32);
        q0 = q[0];
        q1 = q[1];
        d = w.d[wrow * (w.n_in / 32) + sb * 8 + sub];
    }
    __device__ __forceinline__ void store(__nv_bfloat16 *out, const uint64_t *, const uint8_t *) const {
        const float dc = __half2float(d);
        const uint32_t u[8] = {q0.x, q0.y, q0.z, q0.w, q1.x, q1.y, q1.z, q1.w};
#pragma unroll
        for (int k = 0; k < 8; k += 2) {
            float f[8];
            bytes4_f(u[k] ^ 0x80808080u, 128.0f, f); /* int8 q: q + 128 as unsigned */
            bytes4_f(u[k + 1] ^ 0x80808080u, 128.0f, f + 4);
#pragma unroll
            for (int i = 0; i < 8; i++) f[i] = dc * f[i];
            put8(out + 4 * k, f);
        }
    }
};

template <> struct mma_raw<DS4_TYPE_IQ2_XXS> { /* split: 64 bytes per 256, one f16 scale per 256 */
    uint2 a;
    __half d;
    __device__ __forceinline__ void load(const dweight &w, uint64_t wrow, uint32_t sb, uint32_t sub) {
        a = *(const uint2 *)(w.q + wrow * w.row_bytes + (size_t)sb * 64 + sub * 8);
        d = w.d[wrow * (w.n_in / 256) + sb];
    }
    __device__ __forceinline__ void store(__nv_bfloat16 *out, const uint64_t *grid, const uint8_t *signs) const {
        const float db = __half2float(d) * (0.5f + (float)(a.y >> 28)) * 0.25f;
#pragma unroll
        for (int l = 0; l < 4; l++) {
            const uint64_t gv = grid[(a.x >> (8 * l)) & 0xFF];
            const uint32_t sg = signs[(a.y >> (7 * l)) & 127];
            float f[8];
            bytes4_f((uint32_t)gv, 0.0f, f);
            bytes4_f((uint32_t)(gv >> 32), 0.0f, f + 4);
#pragma unroll
            for (int i = 0; i < 8; i++) f[i] *= (sg >> i) & 1 ? -db : db;
            put8(out + 8 * l, f);
        }
    }
};

template <> struct mma_raw<DS4_TYPE_Q2_K> { /* 84-byte blocks (4-byte aligned): scales[16], qs[64], d, dmin */
    uint32_t qs[8], scw, ddm, j;
    __device__ __forceinline__ void load(const dweight &w, uint64_t wrow, uint32_t sb, uint32_t sub) {
        const uint8_t *b = w.q + wrow * w.row_bytes + (size_t)sb * 84;
        const uint32_t h = sub >> 2; /* weights 128h + 32j + 16half + l: qs[32h + 16half + l] >> 2j, scale 8h + 2j + half */
        j = sub & 3;
#pragma unroll
        for (int i = 0; i < 8; i++) qs[i] = *(const uint32_t *)(b + 16 + 32 * h + 4 * i);
        scw = *(const uint32_t *)(b + 8 * h + 4 * (j >> 1)); /* scales 8h + 4(j>>1) .. +3 */
        ddm = *(const uint32_t *)(b + 80);
    }
    __device__ __forceinline__ void store(__nv_bfloat16 *out, const uint64_t *, const uint8_t *) const {
        const float d = h2f(ddm & 0xffff), dmin = h2f(ddm >> 16);
#pragma unroll
        for (int half = 0; half < 2; half++) {
            const uint32_t sc = byte_of(scw, 2 * (j & 1) + half);
            const float dl = d * (float)(sc & 15), ml = dmin * (float)(sc >> 4);
#pragma unroll
            for (int k = 0; k < 4; k += 2) {
                float f[8];
                bytes4_f((qs[4 * half + k] >> (2 * j)) & 0x03030303u, 0.0f, f);
                bytes4_f((qs[4 * half + k + 1] >> (2 * j)) & 0x03030303u, 0.0f, f + 4);
#pragma unroll
                for (int i = 0; i < 8; i++) f[i] = dl * f[i] - ml;
                put8(out + 16 * half + 4 * k, f);
            }
        }
    }
};

template <> struct mma_raw<DS4_TYPE_Q4_K> { /* 144-byte blocks: d, dmin, scales[12], qs[128] */
    uint4 q0, q1;
    uint32_t dd, s3[3], sub;
    __device__ __forceinline__ void load(const dweight &w, uint64_t wrow, uint32_t sb, uint32_t sub_) {
        const uint8_t *b = w.q + wrow * w.row_bytes + (size_t)sb * 144;
        sub = sub_; /* weights 64(sub>>1) + 32(sub&1) + l: nibble (sub&1) of qs[32(sub>>1) + l], scale/min sub */
        const uint4 hd = *(const uint4 *)b;
        dd = hd.x;
        s3[0] = hd.y;
        s3[1] = hd.z;
        s3[2] = hd.w;
        q0 = *(const uint4 *)(b + 16 + 32 * (sub >> 1));
        q1 = *(const uint4 *)(b + 32 + 32 * (sub >> 1));
    }
    __device__ __forceinline__ void store(__nv_bfloat16 *out, const uint64_t *, const uint8_t *) const {
        const float d = h2f(dd & 0xffff), dmin = h2f(dd >> 16);
        /* q4k_scale_min with the byte picked by selects (no local array) */
#define SB(i) ((int)byte_of((i) < 4 ? s3[0] : (i) < 8 ? s3[1] : s3[2], (i) & 3))
        const int j = (int)sub;
        const int sc = j < 4 ? SB(j) & 63 : (SB(j + 4) & 0xF) | ((SB(j - 4) >> 6) << 4);
        const int m = j < 4 ? SB(j + 4) & 63 : (SB(j + 4) >> 4) | ((SB(j) >> 6) << 4);
#undef SB
        const float dl = d * (float)sc, ml = dmin * (float)m;
        const uint32_t sh = 4 * (sub & 1);
        const uint32_t qv[8] = {q0.x, q0.y, q0.z, q0.w, q1.x, q1.y, q1.z, q1.w};
#pragma unroll
        for (int k = 0; k < 8; k += 2) {
            float f[8];
            bytes4_f((qv[k] >> sh) & 0x0f0f0f0fu, 0.0f, f);
            bytes4_f((qv[k + 1] >> sh) & 0x0f0f0f0fu, 0.0f, f + 4);
#pragma unroll
            for (int i = 0; i < 8; i++) f[i] = dl * f[i] - ml;
            put8(out + 4 * k, f);
        }
    }
};

template <> struct mma_raw<DS4_TYPE_F16> {
    uint4 q[4];
    __device__ __forceinline__ void load(const dweight &w, uint64_t wrow, uint32_t sb, uint32_t sub) {
        const uint4 *p = (const uint4 *)(w.q + wrow * w.row_bytes + ((size_t)sb * 256 + sub * 32) * 2);
#pragma unroll
        for (int c = 0; c < 4; c++) q[c] = p[c];
    }
    __device__ __forceinline__ void store(__nv_bfloat16 *out, const uint64_t *, const uint8_t *) const {
#pragma unroll
        for (int c = 0; c < 4; c++) {
            const float2 a0 = __half22float2(*(const __half2 *)&q[c].x), a1 = __half22float2(*(const __half2 *)&q[c].y);
            const float2 a2 = __half22float2(*(const __half2 *)&q[c].z), a3 = __half22float2(*(const __half2 *)&q[c].w);
            const float f[8] = {a0.x, a0.y, a1.x, a1.y, a2.x, a2.y, a3.x, a3.y};
            put8(out + 8 * c, f);
        }
    }
};

template <> struct mma_raw<DS4_TYPE_BF16> {
    uint4 q[4];
    __device__ __forceinline__ void load(const dweight &w, uint64_t wrow, uint32_t sb, uint32_t sub) {
        const uint4 *p = (const uint4 *)(w.q + wrow * w.row_bytes + ((size_t)sb * 256 + sub * 32) * 2);
#pragma unroll
        for (int c = 0; c < 4; c++) q[c] = p[c];
    }
    __device__ __forceinline__ void store(__nv_bfloat16 *out, const uint64_t *, const uint8_t *) const {
#pragma unroll
        for (int c = 0; c < 4; c++) ((uint4 *)out)[c] = q[c];
    }
};

static __device__ __forceinline__ void cp_async16(void *dst, const void *src) {
    const uint32_t d = (uint32_t)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(d), "l"(src) : "memory");
}
static __device__ __forceinline__ void cp_async_commit(void) { asm volatile("cp.async.commit_group;" ::: "memory"); }
static __device__ __forceinline__ void cp_async_wait_all(void) { asm volatile("cp.async.wait_group 0;" ::: "memory"); }

/* A fragment (16 rows x 16 k, row-major BF16 in shared memory): lanes 0-15
 * address rows 0-15 at k, lanes 16-31 rows 0-15 at k + 8 */
static __device__ __forceinline__ void ldsm_x4(uint32_t (&a)[4], const __nv_bfloat16 *p) {
    const uint32_t s = (uint32_t)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(a[0]), "=r"(a[1]), "=r"(a[2]), "=r"(a[3])
                 : "r"(s)
                 : "memory");
}

/* c (16 x 8 f32) += a (16 x 16 BF16) b (16 x 8 BF16); registers only (not
 * volatile: free to be scheduled around the shared loads) */
static __device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <int TYPE, int BN>
__global__ void __launch_bounds__(256, BN == 32 ? 3 : 2) mma_kernel(const __grid_constant__ mma_args A) {
    constexpr int NJ = BN / 16;                    /* 8-token fragments a warp (BN/2 tokens) */
    constexpr int XCH = BN * (MMA_BK / 4) / 256;   /* 16-byte activation pieces a thread a slice */
    extern __shared__ __align__(128) unsigned char smem[];
    __nv_bfloat16 *Ws0 = (__nv_bfloat16 *)smem;                       /* [2][64][MMA_WP] */
    float *Xs0 = (float *)(smem + 2 * MMA_WSTAGE);                    /* [2][BN][MMA_XP] */
    __shared__ uint64_t s_grid[TYPE == DS4_TYPE_IQ2_XXS ? 256 : 1];
    __shared__ uint8_t s_signs[TYPE == DS4_TYPE_IQ2_XXS ? 128 : 1];
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
    if (TYPE == DS4_TYPE_IQ2_XXS) load_iq2_tables(s_grid, s_signs);
    __syncthreads();
    const int n = s_n;
    const uint32_t r0 = blockIdx.x * MMA_BM;
    const uint32_t lr = tid >> 2, qd = tid & 3; /* dequant: row lr, weights [32 qd, 32 qd + 32) of the slice */
    const bool rvalid = r0 + lr < A.n_rows;
    const uint64_t wrow = wrow0 + r0 + (rvalid ? lr : 0);
    const uint32_t lane = tid & 31, warp = tid >> 5, wr = warp & 3, wc = warp >> 2;
    const uint32_t g = lane >> 2, t4 = lane & 3;
    const uint32_t nsl = A.w.n_in / MMA_BK;

    /* activation pieces of slice s into stage b: piece c = tid + 256 i is row
     * c / 32, floats 4 (c % 32) .. +3; rows >= n are left as they are (their
     * token columns are never stored) */
    auto issue_x = [&](uint32_t s, int b) {
        float *xd = Xs0 + b * (BN * MMA_XP);
#pragma unroll
        for (int i = 0; i < XCH; i++) {
            const uint32_t c = tid + 256 * i, t = c >> 5, p = c & 31;
            if ((int)t < n)
                cp_async16(xd + t * MMA_XP + 4 * p,
                           A.x.f + (size_t)s_xrow[t] * A.x.stride + A.x.off + (size_t)s * MMA_BK + 4 * p);
        }
        cp_async_commit();
    };
    auto store_w = [&](const mma_raw<TYPE> &raw, int b) {
        __nv_bfloat16 *wd = Ws0 + b * (MMA_BM * MMA_WP) + lr * MMA_WP + qd * 32;
        if (rvalid) raw.store(wd, s_grid, s_signs);
        else
#pragma unroll
            for (int i = 0; i < 4; i++) ((uint4 *)wd)[i] = make_uint4(0, 0, 0, 0);
    };

    float acc[NJ][4];
#pragma unroll
    for (int j = 0; j < NJ; j++) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;

    mma_raw<TYPE> raw;
    if (rvalid) raw.load(A.w, wrow, 0, qd);
    issue_x(0, 0);
    store_w(raw, 0);
    cp_async_wait_all();
    __syncthreads();

    for (uint32_t s = 0; s < nsl; s++) {
        const int b = s & 1;
        const bool more = s + 1 < nsl;
        if (more) {
            if (rvalid) raw.load(A.w, wrow, (s + 1) >> 1, 4 * ((s + 1) & 1) + qd);
            issue_x(s + 1, b ^ 1);
        }
        const __nv_bfloat16 *Wb = Ws0 + b * (MMA_BM * MMA_WP) + (16 * wr + (lane & 15)) * MMA_WP + 8 * (lane >> 4);
        const float *Xb = Xs0 + b * (BN * MMA_XP) + (wc * (BN / 2) + g) * MMA_XP + 2 * t4;
#pragma unroll 4
        for (int kk = 0; kk < MMA_BK / 16; kk++) {
            uint32_t a[4];
            ldsm_x4(a, Wb + 16 * kk);
#pragma unroll
            for (int j = 0; j < NJ; j++) {
                if ((int)(wc * (BN / 2) + 8 * j) >= n) break; /* token columns past the tile's pairs */
                const float2 v0 = *(const float2 *)(Xb + 8 * j * MMA_XP + 16 * kk);
                const float2 v1 = *(const float2 *)(Xb + 8 * j * MMA_XP + 16 * kk + 8);
                mma16816(acc[j], a, bf2(v0.x, v0.y), bf2(v1.x, v1.y));
            }
        }
        if (more) store_w(raw, b ^ 1);
        cp_async_wait_all();
        __syncthreads();
    }

    /* c0, c1: row g, tokens 2 t4, +1; c2, c3: row g + 8 */
    const uint32_t ra = r0 + 16 * wr + g, rb = ra + 8;
#pragma unroll
    for (int j = 0; j < NJ; j++) {
#pragma unroll
        for (int e = 0; e < 2; e++) {
            const int t = (int)(wc * (BN / 2) + 8 * j + 2 * t4 + e);
            if (t >= n) continue;
            float *yt = A.y + (size_t)s_yrow[t] * A.y_stride;
            if (ra < A.n_rows) yt[ra] = acc[j][e];
            if (rb < A.n_rows) yt[rb] = acc[j][2 + e];
        }
    }
}

static uint32_t g_mma_moe_bn = 0; /* tests: force the expert tile (32 or 64); 0: by pairs per expert */
void cu_mma_set_moe_bn(uint32_t bn) { g_mma_moe_bn = bn; }

template <int TYPE> static void mma_attr(void) {
    cudaFuncSetAttribute(mma_kernel<TYPE, 32>, cudaFuncAttributeMaxDynamicSharedMemorySize, MMA_SMEM_BN(32));
    cudaFuncSetAttribute(mma_kernel<TYPE, 64>, cudaFuncAttributeMaxDynamicSharedMemorySize, MMA_SMEM_BN(64));
}

template <int TYPE> static void mma_go(cudaStream_t st, const mma_args &A, uint32_t n_rows, uint32_t T, uint32_t n_expert, bool bn32) {
    if (bn32)
        mma_kernel<TYPE, 32><<<dim3((n_rows + MMA_BM - 1) / MMA_BM, (T + 31) / 32, n_expert), 256, MMA_SMEM_BN(32), st>>>(A);
    else
        mma_kernel<TYPE, 64><<<dim3((n_rows + MMA_BM - 1) / MMA_BM, (T + 63) / 64, n_expert), 256, MMA_SMEM_BN(64), st>>>(A);
}

static void mma_launch(cudaStream_t st, const mma_args &A, uint32_t n_rows, uint32_t T, uint32_t n_expert) {
    static bool attr = false;
    if (!attr) {
        mma_attr<DS4_TYPE_Q8_0>();
        mma_attr<DS4_TYPE_IQ2_XXS>();
        mma_attr<DS4_TYPE_Q2_K>();
        mma_attr<DS4_TYPE_Q4_K>();
        mma_attr<DS4_TYPE_F16>();
        mma_attr<DS4_TYPE_BF16>();
        const char *e = getenv("DS4_CUDA_MMA_MOE_BN"); /* 32 / 64: the expert tile, for measurements */
        if (e && *e && !g_mma_moe_bn) g_mma_moe_bn = (uint32_t)atoi(e);
        attr = true;
    }
    /* experts with few pairs each (T <= 4 x experts: ~24 pairs at top-6):
     * 32-token tiles (3 blocks an SM); dense products and fuller experts: 64 */
    const bool bn32 = A.list && (g_mma_moe_bn ? g_mma_moe_bn == 32 : T <= 4 * n_expert);
    switch (A.w.type) {
    case DS4_TYPE_Q8_0: mma_go<DS4_TYPE_Q8_0>(st, A, n_rows, T, n_expert, bn32); break;
    case DS4_TYPE_IQ2_XXS: mma_go<DS4_TYPE_IQ2_XXS>(st, A, n_rows, T, n_expert, bn32); break;
    case DS4_TYPE_Q2_K: mma_go<DS4_TYPE_Q2_K>(st, A, n_rows, T, n_expert, bn32); break;
    case DS4_TYPE_Q4_K: mma_go<DS4_TYPE_Q4_K>(st, A, n_rows, T, n_expert, bn32); break;
    case DS4_TYPE_F16: mma_go<DS4_TYPE_F16>(st, A, n_rows, T, n_expert, bn32); break;
    case DS4_TYPE_BF16: mma_go<DS4_TYPE_BF16>(st, A, n_rows, T, n_expert, bn32); break;
    default: break;
    }
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

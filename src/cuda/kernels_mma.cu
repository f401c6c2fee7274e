/* kernels_mma.cu - tensor-core prefill products (T >= cu_mma_min_T() tokens).
 *
 * Decode and small batches use the exact dp4a kernels of kernels_matmul.cu;
 * prefill chunks send every product with a quantized or F16/BF16 weight here:
 * weights are dequantized to BF16 (the CPU dequantizer's values, rounded
 * once) and multiplied with activations rounded to BF16 on tensor cores
 * (f32 sums): Hopper warpgroup MMAs (wgmma, when compiled for sm_90a) or
 * mma.sync m16n8k16 (other cards). A block owns a 256-row x 64-token tile
 * (smaller where that would leave SMs idle, see mma_launch); each warp owns
 * 32 of the rows and dequantizes them straight into its MMA operand
 * registers, the activations go through shared memory as BF16 (mma_kernel
 * tells how and why). Routed experts run as one grid over experts, each
 * block gathering its token tiles from the expert's sorted pair list (no
 * host sync).
 *
 * Against the first version (64-row tiles dequantized into shared memory,
 * activations read there as floats), H100, 2048-token chunk: q_b (Q8_0,
 * 1024 -> 32768) 1.42 -> 0.74 ms, routed gate (IQ2_XXS, 256 x 2048 x 4096,
 * ~48 tokens an expert) 2.82 -> 1.43 ms, routed down (Q2_K, 256 x 4096 x
 * 2048) 3.17 -> 1.45 ms. The warpgroup MMAs, against mma.sync with the
 * same tiles (H200, 43 layers, 8k prompt): 4696 -> 5110 tok/s (routed
 * gate/up 10.0 -> 9.1 ms a layer, down 5.1 -> 4.3). The attention's out_a groups (one weight's row
 * groups against slices of the attention output) run as one launch with
 * the group in blockIdx.z (cu_mma_dense_groups).
 */
#include "cuda_internal.cuh"

#include <stdlib.h>
#include <string.h>

#include "iq2xxs_tables.h"

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define MMA_WG 1 /* sm_90a: warpgroup MMAs (B straight from shared memory) */
#else
#define MMA_WG 0 /* mma.sync with B fragments by ldmatrix */
#endif

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

/* activations are copied in 16-byte pieces, weights read in 8/16-byte pieces
 * (Q2_K: 4), the Q8_0 scales two at a time (4 bytes) */
static bool mma_ok(const dweight &w, const act_view &x) {
    return mma_type(w.type) && w.n_in % 256 == 0 && x.f && x.stride % 4 == 0 && x.off % 4 == 0 &&
           ((uintptr_t)x.f & 15) == 0 && ((uintptr_t)w.q & 15) == 0 &&
           (w.type == DS4_TYPE_Q2_K || w.row_bytes % 16 == 0) && (!dw_split(w.type) || ((uintptr_t)w.d & 3) == 0);
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
    /* dense groups (blockIdx.z, 0 for MoE): group z reads weight rows
     * wrow0 + z gz_w, activation elements from x.off + z gz_x and writes y +
     * z gz_y (the attention output's 8 out_a groups in one launch) */
    uint64_t gz_w;
    uint32_t gz_x, gz_y;
    /* routed gate + up with the SwiGLU in the epilogue (mma_kernel PAIR):
     * w is the gate, w2 the up matrices; y[p][r] = silu(min(g, clamp)) x
     * clamp(u, +-clamp) x pair_w[p] */
    dweight w2;
    const float *pair_w;
    float clamp;
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

/* v < 2^23 -> float, exactly, without the int->float conversion unit */
static __device__ __forceinline__ float u2f(uint32_t v) { return __uint_as_float(0x4B000000u | v) - 8388608.0f; }

static __device__ __forceinline__ uint32_t bf2(float lo, float hi) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi); /* .x (low half) = lo */
    return *(const uint32_t *)&v;
}

/* Formats whose 32-weight pieces take at most four distinct values (IQ2_XXS
 * magnitudes 8/25/43, Q2_K codes 0..3 per 16) skip the float arithmetic per
 * weight: the four BF16 values are computed once (the CPU's expression) into
 * the 8-byte pool {lo, hi} and each pair of weights is one byte permute.
 * `u` holds four bytes 34 c + 16 (c = code 0..3), i.e. the selector nibbles
 * 2c (low byte of value c) and 2c + 1 (high byte); result: the BF16 pair of
 * the weights of bytes 0, 1 (half 0) or 2, 3 (half 1), element 0 low. */
static __device__ __forceinline__ uint32_t lut2(uint32_t lo, uint32_t hi, uint32_t u, int half) {
    uint32_t r; /* prmt itself: __byte_perm would mask the selector nibbles to 3 bits first (they are < 8 here) */
    asm("prmt.b32 %0, %1, %2, %3;" : "=r"(r) : "r"(lo), "r"(hi), "r"(half ? u >> 16 : u));
    return r;
}


#if !MMA_WG
/* c (16 x 8 f32) += a (16 x 16 BF16) b (16 x 8 BF16); registers only (not
 * volatile: free to be scheduled around the shared loads) */
static __device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
#endif

/* Hopper warpgroup MMA (sm_90a; the kernels below use it when compiled for
 * it, mma.sync otherwise): d (64 x N f32, this warp's 16 rows) += a (64 x 16
 * BF16 from registers: this warp's 16 rows in mma.m16n8k16's A layout) b (16
 * x N BF16, K-major in shared memory, described by desc). The warp's d
 * registers are mma.sync's C fragments of its 16 rows, 8 tokens after 8. */
#if MMA_WG
static __device__ __forceinline__ void wg_fence(void) { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
static __device__ __forceinline__ void wg_commit(void) { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
static __device__ __forceinline__ void wg_wait(void) { asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory"); }
template <int N> static __device__ __forceinline__ void wgmma_bf16(float *d, const uint32_t (&a)[4], uint64_t desc);
template <> __device__ __forceinline__ void wgmma_bf16<16>(float *d, const uint32_t (&a)[4], uint64_t desc) {
    asm volatile("{\n\t.reg .pred p;\n\tsetp.ne.b32 p, %13, 0;\n\t"
                 "wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 {"
                 "%0, %1, %2, %3, %4, %5, %6, %7"
                 "}, {%8, %9, %10, %11}, %12, p, 1, 1, 0;\n\t}"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
                   "+f"(d[7])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1));
}
template <> __device__ __forceinline__ void wgmma_bf16<32>(float *d, const uint32_t (&a)[4], uint64_t desc) {
    asm volatile("{\n\t.reg .pred p;\n\tsetp.ne.b32 p, %21, 0;\n\t"
                 "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {"
                 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15"
                 "}, {%16, %17, %18, %19}, %20, p, 1, 1, 0;\n\t}"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
                   "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
                   "+f"(d[14]), "+f"(d[15])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1));
}
template <> __device__ __forceinline__ void wgmma_bf16<48>(float *d, const uint32_t (&a)[4], uint64_t desc) {
    asm volatile("{\n\t.reg .pred p;\n\tsetp.ne.b32 p, %29, 0;\n\t"
                 "wgmma.mma_async.sync.aligned.m64n48k16.f32.bf16.bf16 {"
                 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
                 "%16, %17, %18, %19, %20, %21, %22, %23"
                 "}, {%24, %25, %26, %27}, %28, p, 1, 1, 0;\n\t}"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
                   "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
                   "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]),
                   "+f"(d[21]), "+f"(d[22]), "+f"(d[23])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1));
}
template <> __device__ __forceinline__ void wgmma_bf16<64>(float *d, const uint32_t (&a)[4], uint64_t desc) {
    asm volatile("{\n\t.reg .pred p;\n\tsetp.ne.b32 p, %37, 0;\n\t"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {"
                 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
                 "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
                 "}, {%32, %33, %34, %35}, %36, p, 1, 1, 0;\n\t}"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
                   "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
                   "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]),
                   "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]),
                   "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1));
}
#endif

/* async-proxy reads (wgmma) of shared memory written by ordinary stores:
 * each writing thread fences before the barrier */
static __device__ __forceinline__ void fence_async_smem(void) {
#if MMA_WG
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
#endif
}

/* ------------------------------------------------------------------------ */
/* Tensor-core prefill products (T >= cu_mma_min_T tokens).
 *
 * Block: 256 threads = 8 warps over a BM-row x BN-token tile of y = W x
 * (BM x BN = 256 x 64; 256 x 32 for experts with few pairs; 128 x 64 and 128
 * x 32 for dense products too small for 256-row blocks). Warp w owns rows
 * [w BM/8, (w+1) BM/8) and all BN tokens: MI = BM/128 16-row fragments x NJ
 * = BN/8 8-token fragments, 16 MMAs per 16 k at 256 x 64 (acc: 64 floats a
 * lane). The row is walked in slices of 32 k with one __syncthreads a
 * slice:
 *
 *   weights:     global -> registers (the lane's 8 weights of each of its
 *                2 MI rows, mma_frag::load, one slice ahead) -> dequantized
 *                (mma_frag::deq) into the A fragment registers themselves:
 *                no shared memory, no barrier, and each weight is
 *                dequantized once (a warp owns its rows).
 *   activations: global -> shared float ring (cp.async, MMA_XF slices, two
 *                ahead) -> the copying thread rounds its own pieces to BF16
 *                (no barrier needed for its own cp.async data) into the
 *                token-major tile Xs[2][BN][40] -> B fragments by ldmatrix
 *                (rows 80 bytes apart: the 8 rows of a matrix hit distinct
 *                banks), shared by the 8 warps.
 *   slice s:     issue activations s+2 and weights s+1; MMAs of s on stage
 *                s&1; dequantize s+1 into the fragment registers just used;
 *                activations of s+1 -> stage (s+1)&1; barrier.
 *
 * sm_90a (MMA_WG): warp w is warp w & 3 of warpgroup w >> 2; fragment i of
 * the warpgroup is one wgmma m64nNk16 with A (64 rows: 16 a warp, the same
 * registers and layout as mma.sync's A) from registers and B (N tokens x 16
 * k) read by the tensor cores from shared memory, so no ldmatrix and no B
 * registers; its accumulators are mma.sync's C fragments of the warp's 16
 * rows. Xs is then K-major "core matrices" (8 tokens x 8 k, 128 bytes;
 * [k-chunk][token][8]), described by a descriptor (start, LBO = the k-chunk
 * stride BN x 16 bytes, SBO = 128 bytes between 8-token groups, no
 * swizzle). The stores into Xs are fenced for the async proxy before the
 * barrier; the MMAs of slice s are issued, the activations of s+1 staged
 * while they run, then waited for before the fragment registers are
 * dequantized again.
 *
 * Why: the first version (64 x 64 tiles dequantized into shared memory,
 * float activations converted per MMA) spent its time in shared-memory
 * traffic and in a dequantize -> store -> barrier -> ldmatrix round trip
 * that left the tensor cores idle, and re-read the activations from L2 for
 * every 64 rows. Here activations are read once per 256 rows and the
 * dequantization overlaps the warp's own MMAs.
 *
 * Fragments (PTX ISA mma.m16n8k16 .bf16; g = lane >> 2, t4 = lane & 3; a
 * register holds 2 BF16, the lower k in the low half):
 *   A regs 0..3: (row g, k 2t4..+1), (row g+8, k 2t4..+1), (row g, k
 *                2t4+8..+9), (row g+8, k 2t4+8..+9)
 *   B regs 0, 1: (k 2t4..+1, token g), (k 2t4+8..+9, token g)
 *   C regs 0..3: (row g, tokens 2t4, 2t4+1), (row g+8, tokens 2t4, 2t4+1)
 * Over the two 16-k steps h of a slice a lane holds, of rows g and g+8, the
 * 8 logical k = 16h + 8m + 2t4 + e (m: register pair, e: half). Those are
 * mapped to the physical k = 8t4 + 4h + 2m + e of the slice, i.e. lane t4
 * dequantizes the 8 consecutive weights [8t4, 8t4+8) (one IQ2_XXS grid
 * group, 8 Q8_0 bytes, one half of a Q2_K scale group) as 4 BF16 pairs p0..p3,
 * and A of step h is {p_2h (row g), p_2h (row g+8), p_2h+1 (row g), p_2h+1
 * (row g+8)}. The activations are stored with the same permutation (physical
 * k 4f + 2m + e, f = 2t + h, goes to logical column 16h + 8m + 2t + e of the
 * token's row), so every product pairs a weight with its own activation:
 * the permutation only reorders the MMA's internal sum. B by ldmatrix.x4
 * from Xs (not transposed): lane L addresses token (L & 7) + 8 (L >> 4), k
 * 8 ((L >> 3) & 1) of the step; matrices (tokens 0-7, k 0-7), (0-7, 8-15),
 * (8-15, 0-7), (8-15, 8-15) give each lane token g, k 2t4..+1 of each, i.e.
 * b0, b1 of the first 8 tokens and b0, b1 of the next 8.
 *
 * Shared memory (dynamic): 3 x BN x 32 floats + 2 x BN x 40 BF16 = 34.8 KB
 * (BN 64), 17.4 KB (BN 32), + 2.2 KB IQ2_XXS tables (static); 2 blocks an SM by
 * registers (<= 128). Token columns past the tile's pairs are zeros, their
 * 8-token fragments skipped in steps of a quarter tile; rows past n_rows
 * read the last row and are not stored. The numerics are BF16 activations
 * (8-bit mantissa, per element) instead of the CPU's Q8 blocks, so prefill
 * results differ from the CPU by about the CPU's own activation-quantization
 * noise (docs/CUDA.md). Routed experts: blockIdx.z is the expert; blockIdx.y
 * walks the expert's token tiles gridDim.y apart (a quarter of the chunk's
 * tiles, so the grid does not carry a block for every tile an expert could
 * have); blocks without tokens return at once. F32 weights and decode keep
 * the exact kernels. */

/* global loads of the weight bytes with an L2 prefetch hint (.L2::256B:
 * a miss brings the next sectors of the row too, which the next slices
 * read) */
static __device__ __forceinline__ uint2 ldg_u2(const void *p) {
    uint2 v;
    asm("ld.global.L2::256B.v2.u32 {%0, %1}, [%2];" : "=r"(v.x), "=r"(v.y) : "l"(p));
    return v;
}
static __device__ __forceinline__ uint4 ldg_u4(const void *p) {
    uint4 v;
    asm("ld.global.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    return v;
}
static __device__ __forceinline__ uint32_t ldg_u32(const void *p) {
    uint32_t v;
    asm("ld.global.L2::256B.u32 %0, [%1];" : "=r"(v) : "l"(p));
    return v;
}

/* The 8 weights [8 t4, 8 t4 + 8) of a row's 32-weight piece sub (0..7) of
 * super-block sb: load() the raw bytes into registers (a slice ahead), deq()
 * -> 4 BF16 pairs (weights 0-1, 2-3, 4-5, 6-7), the CPU dequantizer's
 * values; deq() may read the row's block again (wq, sb, sub) for bytes that
 * are not worth registers across the MMAs (scales: the line is in L1). */
template <int TYPE> struct mma_frag;

template <> struct mma_frag<DS4_TYPE_Q8_0> { /* split: 32 int8 + one f16 scale per 32 */
    uint2 q;
    uint32_t d; /* two scales */
    __device__ __forceinline__ void load(const uint8_t *wq, const __half *wd, uint32_t sb, uint32_t sub, uint32_t t4) {
        q = ldg_u2(wq + (size_t)sb * 256 + sub * 32 + 8 * t4);
        if ((sub & 1) == 0) d = ldg_u32(wd + (size_t)sb * 8 + sub); /* the scales of pieces sub, sub + 1 */
    }
    __device__ __forceinline__ void deq(uint32_t (&o)[4], const uint64_t *, const uint8_t *, uint32_t, const uint8_t *,
                                        uint32_t, uint32_t sub) const {
        const float dc = h2f((uint16_t)(sub & 1 ? d >> 16 : d & 0xffff));
        float f[8];
        bytes4_f(q.x ^ 0x80808080u, 128.0f, f); /* int8 q: q + 128 as unsigned */
        bytes4_f(q.y ^ 0x80808080u, 128.0f, f + 4);
#pragma unroll
        for (int i = 0; i < 4; i++) o[i] = bf2(dc * f[2 * i], dc * f[2 * i + 1]);
    }
};

template <> struct mma_frag<DS4_TYPE_IQ2_XXS> { /* split: 64 bytes per 256, one f16 scale per 256 */
    uint2 a; /* 4 grid indices, 4 x 7 sign bits + 4-bit scale */
    uint32_t d;
    __device__ __forceinline__ void load(const uint8_t *wq, const __half *wd, uint32_t sb, uint32_t sub, uint32_t) {
        a = ldg_u2(wq + (size_t)sb * 64 + sub * 8);
        if (sub == 0) d = *(const uint16_t *)(wd + sb);
    }
    /* value = db * magnitude (f32, the CPU's product) rounded to BF16, sign
     * applied after rounding (exact: rounding is symmetric). Magnitude byte
     * m in {8, 25, 43}: (m >> 3) & 6 = 2c with c = 0, 1, 2 (see lut2). Sign
     * bits of weights 2k, 2k+1 -> bits 15, 31 of pair k: sg * (2^(15-2k) +
     * 2^(30-2k)) (the two shifted copies do not overlap: no carries). */
    __device__ __forceinline__ void deq(uint32_t (&o)[4], const uint64_t *grid, const uint8_t *signs, uint32_t t4,
                                        const uint8_t *, uint32_t, uint32_t) const {
        const float db = h2f((uint16_t)d) * (0.5f + u2f(a.y >> 28)) * 0.25f;
        const uint32_t lo = bf2(db * 8.0f, db * 25.0f), hi = bf2(db * 43.0f, 0.0f);
        const uint64_t gv = grid[(a.x >> (8 * t4)) & 0xFF];
        const uint32_t sg = signs[(a.y >> (7 * t4)) & 127];
        const uint32_t u0 = (((uint32_t)gv >> 3) & 0x06060606u) * 17u + 0x10101010u;
        const uint32_t u1 = (((uint32_t)(gv >> 32) >> 3) & 0x06060606u) * 17u + 0x10101010u;
        o[0] = lut2(lo, hi, u0, 0) ^ ((sg * 0x40008000u) & 0x80008000u);
        o[1] = lut2(lo, hi, u0, 1) ^ ((sg * 0x10002000u) & 0x80008000u);
        o[2] = lut2(lo, hi, u1, 0) ^ ((sg * 0x04000800u) & 0x80008000u);
        o[3] = lut2(lo, hi, u1, 1) ^ ((sg * 0x01000200u) & 0x80008000u);
    }
};

template <> struct mma_frag<DS4_TYPE_Q2_K> { /* 84-byte blocks (4-byte aligned): scales[16], qs[64], d, dmin */
    uint32_t q0, q1;
    __device__ __forceinline__ void load(const uint8_t *wq, const __half *, uint32_t sb, uint32_t sub, uint32_t t4) {
        /* weight 16 half + l of piece (h, j) = sub: qs[32h + 16half + l] >> 2j, scale 8h + 2j + half;
         * the lane's 8 qs bytes serve the four bit-planes j: loaded at j = 0 */
        if ((sub & 3) == 0) {
            const uint8_t *b = wq + (size_t)sb * 84 + 16 + 32 * (sub >> 2) + 8 * t4;
            q0 = ldg_u32(b);
            q1 = ldg_u32(b + 4);
        }
    }
    /* values dl * code - ml (the CPU's two roundings, no fused multiply-add):
     * four per 16 weights, so a byte-permute table (lut2) */
    __device__ __forceinline__ void deq(uint32_t (&o)[4], const uint64_t *, const uint8_t *, uint32_t t4,
                                        const uint8_t *wq, uint32_t sb, uint32_t sub) const {
        const uint8_t *b = wq + (size_t)sb * 84;
        const uint32_t j = sub & 3, sc = b[8 * (sub >> 2) + 2 * j + (t4 >> 1)], ddm = *(const uint32_t *)(b + 80);
        const float dl = h2f(ddm & 0xffff) * u2f(sc & 15), ml = h2f(ddm >> 16) * u2f(sc >> 4);
        const uint32_t lo = bf2(__fsub_rn(__fmul_rn(dl, 0.0f), ml), __fsub_rn(dl, ml));
        const uint32_t hi = bf2(__fsub_rn(__fmul_rn(dl, 2.0f), ml), __fsub_rn(__fmul_rn(dl, 3.0f), ml));
        const uint32_t u0 = ((q0 >> (2 * j)) & 0x03030303u) * 34u + 0x10101010u;
        const uint32_t u1 = ((q1 >> (2 * j)) & 0x03030303u) * 34u + 0x10101010u;
        o[0] = lut2(lo, hi, u0, 0);
        o[1] = lut2(lo, hi, u0, 1);
        o[2] = lut2(lo, hi, u1, 0);
        o[3] = lut2(lo, hi, u1, 1);
    }
};

template <> struct mma_frag<DS4_TYPE_Q4_K> { /* 144-byte blocks: d, dmin, scales[12], qs[128] */
    uint2 q;
    __device__ __forceinline__ void load(const uint8_t *wq, const __half *, uint32_t sb, uint32_t sub, uint32_t t4) {
        /* weight l of piece sub: nibble (sub&1) of qs[32(sub>>1) + l], scale/min sub */
        q = ldg_u2(wq + (size_t)sb * 144 + 16 + 32 * (sub >> 1) + 8 * t4);
    }
    __device__ __forceinline__ void deq(uint32_t (&o)[4], const uint64_t *, const uint8_t *, uint32_t,
                                        const uint8_t *wq, uint32_t sb, uint32_t sub) const {
        const uint4 hd = *(const uint4 *)(wq + (size_t)sb * 144); /* d, dmin, scales */
        /* q4k_scale_min with the byte picked by selects (no local array) */
#define SB(i) ((int)byte_of((i) < 4 ? hd.y : (i) < 8 ? hd.z : hd.w, (i) & 3))
        const int j = (int)sub;
        const int sc = j < 4 ? SB(j) & 63 : (SB(j + 4) & 0xF) | ((SB(j - 4) >> 6) << 4);
        const int m = j < 4 ? SB(j + 4) & 63 : (SB(j + 4) >> 4) | ((SB(j) >> 6) << 4);
#undef SB
        const float dl = h2f(hd.x & 0xffff) * u2f((uint32_t)sc), ml = h2f(hd.x >> 16) * u2f((uint32_t)m);
        const uint32_t sh = 4 * (sub & 1);
        float f[8];
        bytes4_f((q.x >> sh) & 0x0f0f0f0fu, 0.0f, f);
        bytes4_f((q.y >> sh) & 0x0f0f0f0fu, 0.0f, f + 4);
#pragma unroll
        for (int i = 0; i < 4; i++)
            o[i] = bf2(__fsub_rn(__fmul_rn(dl, f[2 * i]), ml), __fsub_rn(__fmul_rn(dl, f[2 * i + 1]), ml));
    }
};

/* F16 and BF16: the lane's 8 raw 2-byte weights */
struct mma_frag_16bit {
    uint4 v;
    __device__ __forceinline__ void load(const uint8_t *wq, const __half *, uint32_t sb, uint32_t sub, uint32_t t4) {
        v = ldg_u4(wq + ((size_t)sb * 256 + sub * 32 + 8 * t4) * 2);
    }
};

template <> struct mma_frag<DS4_TYPE_F16> : mma_frag_16bit {
    __device__ __forceinline__ void deq(uint32_t (&o)[4], const uint64_t *, const uint8_t *, uint32_t, const uint8_t *,
                                        uint32_t, uint32_t) const {
        const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const float2 f = __half22float2(*(const __half2 *)&w[i]);
            o[i] = bf2(f.x, f.y);
        }
    }
};

template <> struct mma_frag<DS4_TYPE_BF16> : mma_frag_16bit {
    __device__ __forceinline__ void deq(uint32_t (&o)[4], const uint64_t *, const uint8_t *, uint32_t, const uint8_t *,
                                        uint32_t, uint32_t) const {
        o[0] = v.x;
        o[1] = v.y;
        o[2] = v.z;
        o[3] = v.w;
    }
};

template <int V> struct mma_int {
    static constexpr int value = V;
};


#define MMA_XF 3 /* float activation slices in flight (ring) */

/* see the comment above mma_frag */
template <int BM, int BN> struct mma_cfg {
    static constexpr int MI = BM / 128;       /* 16-row fragments a warp (warp: BM / 8 rows) */
    static constexpr int NJ = BN / 8;         /* 8-token fragments a warp (all BN tokens) */
    static constexpr int P = 40;              /* BF16 pitch of a token row of the activation tile */
    static constexpr int XPT = BN * 32 / 256; /* activation floats a thread a slice (8 or 4) */
    static constexpr int TPR = 32 / XPT;      /* threads a token row */
    /* BF16 elements a stage: token rows of pitch P (ldmatrix), or for
     * wgmma 4 k-chunks x BN tokens x 8 (8 x 8 core matrices, K-major) */
    static constexpr int XSTAGE = MMA_WG ? BN * 32 : BN * P;
    /* output rows of fragment i a warp: i RS apart */
    static constexpr int RS = MMA_WG ? 64 : 16;
    /* 8-token fragments of a tile 3/4 full (48 of 64 tokens: the usual expert) */
    static constexpr int NV3 = 3 * NJ / 4 % 2 ? NJ : 3 * NJ / 4;
};

/* PAIR (routed experts, BM 256): the warp's two 16-row fragments are the
 * same 16 rows of the gate (A.w) and the up (A.w2) matrix, so a lane holds
 * g and u of the same (row, token) and the epilogue writes the SwiGLU: one
 * activation tile serves both products (half the activation traffic of two
 * launches) and g, u never reach memory. */
template <int TYPE, int BM, int BN, bool PAIR = false>
__global__ void __launch_bounds__(256, 2) mma_kernel(const __grid_constant__ mma_args A) {
    static_assert(!PAIR || BM == 256, "PAIR: two 16-row fragments a warp");
    typedef mma_cfg<BM, BN> C;
    constexpr int MI = C::MI, NJ = C::NJ, P = C::P, XPT = C::XPT, TPR = C::TPR;
    /* F16 (16 raw bytes a row) loads its next weights after the first half
     * of the slice's MMAs, where fewer registers are live */
    constexpr bool LATE = TYPE == DS4_TYPE_F16;
    /* dynamic (mma_smem_bytes; +0.9% prefill on H200 against the same
     * arrays static): Xf [MMA_XF][BN x 32] floats, the activation slices as
     * loaded (row-major); Xs [2][BN][P] (or [2][4][BN][8]) BF16, k permuted
     * in the slice */
    extern __shared__ __align__(128) unsigned char mma_smem[];
    float *const Xf = (float *)mma_smem;
    __nv_bfloat16 *const Xs = (__nv_bfloat16 *)(mma_smem + MMA_XF * BN * 32 * sizeof(float));
    __shared__ uint64_t s_grid[TYPE == DS4_TYPE_IQ2_XXS ? 256 : 1];
    __shared__ uint8_t s_signs[TYPE == DS4_TYPE_IQ2_XXS ? 128 : 1];
    __shared__ uint32_t s_xrow[BN], s_yrow[BN];
    const uint32_t tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t4 = lane & 3;
    uint64_t wrow0 = A.wrow0 + blockIdx.z * A.gz_w;
    int32_t ntok = (int32_t)A.T;
    if (A.list) {
        ntok = A.cnt[blockIdx.z];
        wrow0 = (uint64_t)blockIdx.z * A.w.n_out;
    }
    /* dense: blockIdx.x walks the token tiles (the activations stay in L2
     * while the blocks sharing a weight tile run together) */
    const uint32_t brow = A.list ? blockIdx.x : blockIdx.y, btile = A.list ? blockIdx.y : blockIdx.x;
    const uint32_t ntile = A.list ? gridDim.y : gridDim.x;
    if ((int32_t)(btile * BN) >= ntok) return;
    if (TYPE == DS4_TYPE_IQ2_XXS) load_iq2_tables(s_grid, s_signs);

    /* activations: token xt of the tile, floats 4f .. 4f+3 of each slice (f = xq + TPR i) */
    const uint32_t xt = tid / TPR, xq = tid % TPR;
#if !MMA_WG /* the lane's ldmatrix row */
    const uint32_t sx = (uint32_t)__cvta_generic_to_shared(Xs + ((lane & 7) + 8 * (lane >> 4)) * P + 8 * ((lane >> 3) & 1));
#endif
    const uint32_t nsl = A.w.n_in / 32;

    for (uint32_t tile = btile; (int32_t)(tile * BN) < ntok; tile += ntile) {
        __syncthreads(); /* the previous tile's epilogue is done with s_yrow */
        if (tid < BN) {
            const int32_t i = (int32_t)(tile * BN + tid);
            if (A.list) {
                const uint32_t p = (uint32_t)A.list[A.off[blockIdx.z] + (i < ntok ? i : ntok - 1)];
                s_xrow[tid] = p / A.x_div;
                s_yrow[tid] = p;
            } else {
                s_xrow[tid] = i < ntok ? (uint32_t)i : (uint32_t)ntok - 1;
                s_yrow[tid] = (uint32_t)i;
            }
        }
        __syncthreads();
        const int n = ntok - (int)(tile * BN) < BN ? ntok - (int)(tile * BN) : BN; /* tokens in the tile */
        const bool xvalid = (int)xt < n;
        const uint32_t xrow = s_xrow[xt];
        const int njv = (n + 7) >> 3; /* 8-token fragments holding tokens */
        /* the lane's rows r0 + 8k = 16 i + 8 hh + g of the warp's BM / 8 (k = 2i +
         * hh), as weight rows; rows past n_rows read the last row (their
         * outputs are not stored) */
        /* PAIR: rows r0, r0 + 8 of the gate (k 0, 1) and of the up (k 2, 3) */
        /* wgmma: warpgroup wg (warps 4 wg..4 wg+3) owns rows [64 MI wg, 64 MI (wg+1)) of the tile,
         * fragment i rows 64 i + 16 (warp & 3) + g (+8) of those */
        const uint32_t wrow = MMA_WG ? 64 * (PAIR ? 1 : MI) * (warp >> 2) + 16 * (warp & 3) : warp * (PAIR ? 16 : BM / 8);
        const uint32_t r0 = (PAIR ? brow * (BM / 2) : brow * BM) + wrow + g;
        uint32_t rowk[2 * MI];
#pragma unroll
        for (int k = 0; k < 2 * MI; k++) {
            const uint32_t rr = r0 + 8 * (k & 1) + (PAIR ? 0 : C::RS * (k >> 1));
            rowk[k] = (uint32_t)wrow0 + (rr < A.n_rows ? rr : A.n_rows - 1);
        }
        const uint32_t spr = dw_scales_per_row(A.w.type, A.w.n_in);
        float acc[MI][NJ][4];
#pragma unroll
        for (int i = 0; i < MI; i++)
#pragma unroll
            for (int j = 0; j < NJ; j++) acc[i][j][0] = acc[i][j][1] = acc[i][j][2] = acc[i][j][3] = 0.0f;
        /* (wgmma: keeps the compiler from moving the accumulators while an
         * MMA that writes them is in flight, which would serialise it) */
        auto acc_pin = [&]() {
#pragma unroll
            for (int i = 0; i < MI; i++)
#pragma unroll
                for (int j = 0; j < NJ; j++)
#pragma unroll
                    for (int e = 0; e < 4; e++) asm volatile("" : "+f"(acc[i][j][e])::"memory");
        };
        mma_frag<TYPE> fr[2 * MI];
        uint32_t pw[2 * MI][4]; /* the lane's dequantized BF16 pairs of rows r0 + 8k */

        /* global -> registers (weights) / shared ring (activations) */
        /* (the empty asm keeps the row addresses from being computed once and
         * held in registers across the loop: 64-bit pointers cost registers
         * the MMAs need, recomputing them costs an IMAD a row and slice) */
        auto load_w = [&](uint32_t s) {
#pragma unroll
            for (int k = 0; k < 2 * MI; k++) {
                uint32_t r = rowk[k];
                asm volatile("" : "+r"(r));
                const dweight &W = PAIR && k >= 2 ? A.w2 : A.w;
                fr[k].load(W.q + (size_t)r * W.row_bytes, dw_split(TYPE) ? W.d + (size_t)r * spr : W.d, s >> 3, s & 7, t4);
            }
        };
        auto load_x = [&](uint32_t s) {
            uint32_t r = xrow;
            asm volatile("" : "+r"(r));
            const float *xs = A.x.f + (size_t)r * A.x.stride + A.x.off + blockIdx.z * A.gz_x + 4 * xq + s * 32;
            if (xvalid && s < nsl)
#pragma unroll
                for (int i = 0; i < XPT / 4; i++) cp_async16_256(Xf + (s % MMA_XF) * BN * 32 + xt * 32 + 4 * (xq + TPR * i), xs + 4 * TPR * i);
            cp_async_commit(); /* one group a slice, empty past the row */
        };
        auto deq = [&](uint32_t s) {
#pragma unroll
            for (int k = 0; k < 2 * MI; k++) {
                uint32_t r = rowk[k];
                asm volatile("" : "+r"(r));
                const dweight &W = PAIR && k >= 2 ? A.w2 : A.w;
                fr[k].deq(pw[k], s_grid, s_signs, t4, W.q + (size_t)r * W.row_bytes, s >> 3, s & 7);
            }
        };
        /* the thread's own float pieces of slice s (complete after its
         * wait_group) -> BF16 stage b: physical k 4f + c (c = 2m + e) of the
         * slice goes to logical column 16h + 8m + 2t + e, t = f >> 1, h = f & 1 */
        auto stx = [&](uint32_t s, int b) {
#pragma unroll
            for (int i = 0; i < XPT / 4; i++) {
                const uint32_t f = xq + TPR * i;
                const float4 v = xvalid ? *(const float4 *)(Xf + (s % MMA_XF) * BN * 32 + xt * 32 + 4 * f) : make_float4(0, 0, 0, 0);
                /* columns c and c + 8 (c = 16h + 2t): k-chunks 2h, 2h + 1 */
                __nv_bfloat16 *o = Xs + b * C::XSTAGE +
                                   (MMA_WG ? (2 * (f & 1) * BN + xt) * 8 + 2 * (f >> 1) : xt * P + 16 * (f & 1) + 2 * (f >> 1));
                *(uint32_t *)o = bf2(v.x, v.y);
                *(uint32_t *)(o + (MMA_WG ? 8 * BN : 8)) = bf2(v.z, v.w);
            }
            fence_async_smem();
        };
        /* the warp's MMAs of a slice on stage b: NV 8-token fragments */
        auto mmas = [&](auto nvc, int b, int h0, int h1) {
            constexpr int NV = decltype(nvc)::value;
#if MMA_WG
            /* B of k-step h: core matrices (8 tokens x 8 k, 128 bytes) 128 bytes apart
             * along the tokens (SBO), k-chunks 2h and 2h + 1 BN x 16 bytes apart (LBO) */
            const uint32_t xs0 = (uint32_t)__cvta_generic_to_shared(Xs) + b * C::XSTAGE * 2;
            const uint64_t dconst = ((uint64_t)(128 >> 4) << 32) | ((uint64_t)((BN * 16) >> 4) << 16);
            acc_pin();
            wg_fence();
#pragma unroll
            for (int h = h0; h < h1; h++) {
                const uint64_t desc = dconst | (((xs0 + 2 * h * BN * 16) >> 4) & 0x3FFF);
#pragma unroll
                for (int i = 0; i < MI; i++) {
                    const uint32_t a[4] = {pw[2 * i][2 * h], pw[2 * i + 1][2 * h], pw[2 * i][2 * h + 1],
                                           pw[2 * i + 1][2 * h + 1]};
                    wgmma_bf16<NV * 8>(&acc[i][0][0], a, desc);
                }
            }
            wg_commit(); /* the caller waits (wg_wait) before it touches acc or pw */
            acc_pin();
#else
#pragma unroll
            for (int h = h0; h < h1; h++) {
#pragma unroll
                for (int jj = 0; jj < NV / 2; jj++) {
                    uint32_t r[4];
                    ldsm_x4(r, sx + (b * C::XSTAGE + 16 * jj * P + 16 * h) * 2);
#pragma unroll
                    for (int i = 0; i < MI; i++) {
                        const uint32_t a[4] = {pw[2 * i][2 * h], pw[2 * i + 1][2 * h], pw[2 * i][2 * h + 1],
                                               pw[2 * i + 1][2 * h + 1]};
                        mma16816(acc[i][2 * jj], a, r[0], r[1]);
                        mma16816(acc[i][2 * jj + 1], a, r[2], r[3]);
                    }
                }
            }
#endif
        };

        load_x(0);
        load_x(1);
        load_w(0);
        deq(0);
        cp_async_wait_1();
        stx(0, 0);
        __syncthreads();
        /* slice s: weights of s+1 -> registers, activations of s+2 -> ring;
         * MMAs of s; dequantization of s+1 (into the fragment registers just
         * used); activations of s+1 -> BF16 stage; one barrier. The whole
         * walk per fragment count NV (a branch per slice would make the
         * compiler serialise the warpgroup MMAs) */
        auto walk = [&](auto nvc) {
            for (uint32_t s = 0; s + 1 < nsl; s++) {
                const int b = s & 1;
                load_x(s + 2);
                if (!LATE) load_w(s + 1);
#if MMA_WG
                /* the warpgroup MMAs run while the activations of s+1 go to
                 * the other stage; the fragment registers wait for them */
                if (LATE) load_w(s + 1);
                mmas(nvc, b, 0, 2);
                cp_async_wait_1();
                stx(s + 1, b ^ 1);
                wg_wait();
                acc_pin();
                deq(s + 1);
#else
                mmas(nvc, b, 0, 1);
                if (LATE) load_w(s + 1);
                mmas(nvc, b, 1, 2);
                deq(s + 1);
                cp_async_wait_1();
                stx(s + 1, b ^ 1);
#endif
                __syncthreads();
            }
            mmas(nvc, (nsl - 1) & 1, 0, 2);
#if MMA_WG
            wg_wait();
            acc_pin();
#endif
        };
        if (njv > C::NV3) walk(mma_int<NJ>());
        else if (njv > NJ / 2) walk(mma_int<C::NV3>());
        else walk(mma_int<NJ / 2>());
        cp_async_wait_all(); /* (empty groups) */

        /* c0, c1: row g, tokens 2 t4, +1; c2, c3: row g + 8 */
        if (PAIR) { /* swiglu_kernel's arithmetic on (g, u) = (acc[0], acc[1]) */
            const float c = A.clamp;
#pragma unroll
            for (int j = 0; j < NJ; j++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    const int t = 8 * j + 2 * t4 + e;
                    if (t >= n) continue;
                    const uint32_t p = s_yrow[t];
                    const float wp = A.pair_w ? A.pair_w[p] : 1.0f;
                    float *yt = A.y + (size_t)p * A.y_stride;
#pragma unroll
                    for (int hh = 0; hh < 2; hh++) {
                        const uint32_t r = r0 + 8 * hh;
                        if (r >= A.n_rows) continue;
                        const float gv = fminf(acc[0][j][2 * hh + e], c), uv = fminf(fmaxf(acc[1][j][2 * hh + e], -c), c);
                        __stcs(yt + r, gv / (1.0f + expf(-gv)) * uv * wp);
                    }
                }
        } else {
#pragma unroll
            for (int j = 0; j < NJ; j++) {
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    const int t = 8 * j + 2 * t4 + e;
                    if (t >= n) continue;
                    float *yt = A.y + blockIdx.z * A.gz_y + (size_t)s_yrow[t] * A.y_stride;
#pragma unroll
                    for (int i = 0; i < MI; i++) { /* streaming stores: y should not evict the operands from L2 */
                        const uint32_t ra = r0 + C::RS * i, rb = ra + 8;
                        if (ra < A.n_rows) __stcs(yt + ra, acc[i][j][e]);
                        if (rb < A.n_rows) __stcs(yt + rb, acc[i][j][2 + e]);
                    }
                }
            }
        }
    }
}

/* ------------------------------------------------------------------------ */
/* launch */

enum { MMA_256x64, MMA_256x32, MMA_128x64, MMA_128x32, MMA_TILES };
static const uint32_t g_mma_tile_bm[MMA_TILES] = {256, 256, 128, 128}, g_mma_tile_bn[MMA_TILES] = {64, 32, 64, 32};

static uint32_t g_mma_moe_bn = 0; /* tests: force the expert tile (32 or 64); 0: by pairs per expert */
void cu_mma_set_moe_bn(uint32_t bn) { g_mma_moe_bn = bn; }

static int g_mma_tile = -1; /* DS4_CUDA_MMA_TILE=256x64|256x32|128x64|128x32: every product's tile */
static uint32_t g_mma_sms = 132;

/* dynamic shared memory of a BN-token tile: the float ring and two BF16
 * stages (the ldmatrix pitch covers both layouts) */
static constexpr size_t mma_smem_bytes(int BN) { return (size_t)BN * 32 * MMA_XF * 4 + (size_t)2 * BN * 40 * 2; }

template <int TYPE, int BM, int BN, bool PAIR>
static void mma_run(dim3 grid, cudaStream_t st, const mma_args &A) {
    static_assert(mma_smem_bytes(BN) <= 48 * 1024, "more needs cudaFuncAttributeMaxDynamicSharedMemorySize");
    mma_kernel<TYPE, BM, BN, PAIR><<<grid, 256, mma_smem_bytes(BN), st>>>(A);
}

/* experts: (row blocks, token tiles, experts); dense: (token tiles, row blocks) */
template <int TYPE, int BM, int BN>
static void mma_go1(cudaStream_t st, const mma_args &A, uint32_t n_rows, uint32_t gy, uint32_t n_expert) {
    const uint32_t rb = (n_rows + BM - 1) / BM;
    const dim3 grid = A.list ? dim3(rb, gy, n_expert) : dim3(gy, rb, n_expert); /* dense: n_expert groups */
    mma_run<TYPE, BM, BN, false>(grid, st, A);
}

template <int TYPE>
static void mma_go(cudaStream_t st, const mma_args &A, int tile, uint32_t n_rows, uint32_t gy, uint32_t n_expert) {
    switch (tile) {
    case MMA_256x64: mma_go1<TYPE, 256, 64>(st, A, n_rows, gy, n_expert); break;
    case MMA_256x32: mma_go1<TYPE, 256, 32>(st, A, n_rows, gy, n_expert); break;
    case MMA_128x64: mma_go1<TYPE, 128, 64>(st, A, n_rows, gy, n_expert); break;
    default: mma_go1<TYPE, 128, 32>(st, A, n_rows, gy, n_expert); break;
    }
}

static void mma_init(void) {
    static bool init = false;
    if (!init) {
        const char *e = getenv("DS4_CUDA_MMA_MOE_BN"); /* 32 / 64: the expert tile, for measurements */
        if (e && *e && !g_mma_moe_bn) g_mma_moe_bn = (uint32_t)atoi(e);
        e = getenv("DS4_CUDA_MMA_TILE");
        for (int t = 0; e && *e && t < MMA_TILES; t++) {
            char name[16];
            snprintf(name, sizeof name, "%ux%u", g_mma_tile_bm[t], g_mma_tile_bn[t]);
            if (!strcmp(e, name)) g_mma_tile = t;
        }
        int dev = 0, sms = 0;
        if (cudaGetDevice(&dev) == cudaSuccess && cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) == cudaSuccess &&
            sms > 0)
            g_mma_sms = (uint32_t)sms;
        init = true;
    }
}

static void mma_launch(cudaStream_t st, const mma_args &A, uint32_t n_rows, uint32_t T, uint32_t n_expert) {
    mma_init();
    /* experts with few pairs each (T <= 4 x experts: ~24 pairs at top-6):
     * 32-token tiles; dense products and fuller experts: 64 */
    const bool bn32 = A.list && (g_mma_moe_bn ? g_mma_moe_bn == 32 : T <= 4 * n_expert);
    int tile;
    if (g_mma_tile >= 0) tile = g_mma_tile;
    else if (A.list) tile = bn32 ? MMA_256x32 : MMA_256x64; /* experts: n_out x experts rows fill the GPU */
    else {
        /* dense: the largest tile whose grid still fills the GPU (about 2
         * blocks an SM), else the one with more blocks; tiny products: a
         * 32-token tile when T <= 32 */
        const uint32_t want = 2 * g_mma_sms - g_mma_sms / 8;
        uint32_t nb[MMA_TILES];
        for (int t = 0; t < MMA_TILES; t++)
            nb[t] = ((n_rows + g_mma_tile_bm[t] - 1) / g_mma_tile_bm[t]) * ((T + g_mma_tile_bn[t] - 1) / g_mma_tile_bn[t]) *
                    n_expert;
        tile = nb[MMA_256x64] >= want   ? MMA_256x64
               : nb[MMA_128x64] >= want ? MMA_128x64
               : nb[MMA_128x32] >= want || T <= 32 ? MMA_128x32
                                                    : MMA_128x64;
    }
    const uint32_t tiles = (T + g_mma_tile_bn[tile] - 1) / g_mma_tile_bn[tile];
    const uint32_t gy = A.list ? (tiles + 3) / 4 : tiles; /* experts: blocks walk tiles gridDim.y apart */
    switch (A.w.type) {
    case DS4_TYPE_Q8_0: mma_go<DS4_TYPE_Q8_0>(st, A, tile, n_rows, gy, n_expert); break;
    case DS4_TYPE_IQ2_XXS: mma_go<DS4_TYPE_IQ2_XXS>(st, A, tile, n_rows, gy, n_expert); break;
    case DS4_TYPE_Q2_K: mma_go<DS4_TYPE_Q2_K>(st, A, tile, n_rows, gy, n_expert); break;
    case DS4_TYPE_Q4_K: mma_go<DS4_TYPE_Q4_K>(st, A, tile, n_rows, gy, n_expert); break;
    case DS4_TYPE_F16: mma_go<DS4_TYPE_F16>(st, A, tile, n_rows, gy, n_expert); break;
    case DS4_TYPE_BF16: mma_go<DS4_TYPE_BF16>(st, A, tile, n_rows, gy, n_expert); break;
    default: break;
    }
}

/* the arguments of a routed-expert product over the sorted pair list */
static mma_args moe_args(const dweight &w, const int32_t *cnt, const int32_t *off, const int32_t *list, act_view x,
                         uint32_t x_div, float *y, uint32_t y_stride, uint32_t T) {
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
    return A;
}

bool cu_mma_moe(cudaStream_t st, const dweight &w, uint32_t n_expert, const int32_t *cnt, const int32_t *off,
                const int32_t *list, act_view x, uint32_t x_div, float *y, uint32_t y_stride, uint32_t T) {
    if (T < cu_mma_min_T() || !mma_ok(w, x)) return false;
    mma_launch(st, moe_args(w, cnt, off, list, x, x_div, y, y_stride, T), w.n_out, T, n_expert);
    return true;
}

bool cu_mma_moe_ok(const dweight &w, act_view x, uint32_t T) { return T >= cu_mma_min_T() && mma_ok(w, x); }

template <int TYPE>
static void mma_go_pair(cudaStream_t st, const mma_args &A, bool bn32, uint32_t T, uint32_t n_expert) {
    const uint32_t rb = (A.n_rows + 127) / 128, bn = bn32 ? 32 : 64, gy = ((T + bn - 1) / bn + 3) / 4;
    if (bn32) mma_run<TYPE, 256, 32, true>(dim3(rb, gy, n_expert), st, A);
    else mma_run<TYPE, 256, 64, true>(dim3(rb, gy, n_expert), st, A);
}

bool cu_mma_moe_swiglu(cudaStream_t st, const dweight &gate, const dweight &up, uint32_t n_expert, const int32_t *cnt,
                       const int32_t *off, const int32_t *list, act_view x, uint32_t x_div, const float *pair_w,
                       float clamp, float *h, uint32_t h_stride, uint32_t T) {
    static int on = -1;
    if (on < 0) {
        const char *e = getenv("DS4_CUDA_MMA_PAIR");
        on = !(e && *e == '0');
    }
    const int ty = gate.type;
    if (!on || !cu_mma_moe_ok(gate, x, T) || !mma_ok(up, x) || up.type != ty || up.n_in != gate.n_in ||
        up.n_out != gate.n_out || up.row_bytes != gate.row_bytes ||
        !(ty == DS4_TYPE_Q8_0 || ty == DS4_TYPE_IQ2_XXS || ty == DS4_TYPE_Q2_K || ty == DS4_TYPE_Q4_K))
        return false;
    mma_init();
    mma_args A = moe_args(gate, cnt, off, list, x, x_div, h, h_stride, T);
    A.w2 = up;
    A.pair_w = pair_w;
    A.clamp = clamp;
    const bool bn32 = g_mma_moe_bn ? g_mma_moe_bn == 32 : T <= 4 * n_expert;
    switch (ty) {
    case DS4_TYPE_Q8_0: mma_go_pair<DS4_TYPE_Q8_0>(st, A, bn32, T, n_expert); break;
    case DS4_TYPE_IQ2_XXS: mma_go_pair<DS4_TYPE_IQ2_XXS>(st, A, bn32, T, n_expert); break;
    case DS4_TYPE_Q2_K: mma_go_pair<DS4_TYPE_Q2_K>(st, A, bn32, T, n_expert); break;
    default: mma_go_pair<DS4_TYPE_Q4_K>(st, A, bn32, T, n_expert); break;
    }
    return true;
}

bool cu_mma_dense_ok(const mv_job &J, uint32_t T) {
    return T >= cu_mma_min_T() && !J.mat_ids && J.n_pairs <= 1 && !J.exact && mma_ok(J.w, J.x);
}

/* jobs that are one weight's consecutive row groups against equally spaced
 * slices of one activation, written to equally spaced outputs */
bool cu_mma_dense_groups(cudaStream_t st, const mv_job *J, int n, uint32_t T) {
    if (n < 2) return false;
    const int64_t dr = (int64_t)J[1].row0 - J[0].row0, dx = (int64_t)J[1].x.off - J[0].x.off, dy = J[1].y - J[0].y;
    if (dr <= 0 || dx < 0 || dy < 0 || dx % 4 || dx > 0xffffffffLL || dy > 0xffffffffLL) return false;
    for (int i = 0; i < n; i++) {
        const mv_job &a = J[i];
        if (!cu_mma_dense_ok(a, T) || a.w.q != J[0].w.q || a.mat != J[0].mat || a.n_rows != J[0].n_rows ||
            a.y_stride != J[0].y_stride || a.x.f != J[0].x.f || a.x.stride != J[0].x.stride ||
            (int64_t)a.row0 != J[0].row0 + i * dr || (int64_t)a.x.off != J[0].x.off + i * dx || a.y != J[0].y + i * dy)
            return false;
    }
    mma_args A;
    memset(&A, 0, sizeof A);
    A.w = J[0].w;
    A.wrow0 = (uint64_t)J[0].mat * J[0].w.n_out + J[0].row0;
    A.n_rows = J[0].n_rows;
    A.x = J[0].x;
    A.y = J[0].y;
    A.y_stride = J[0].y_stride;
    A.T = T;
    A.x_div = 1;
    A.gz_w = (uint64_t)dr;
    A.gz_x = (uint32_t)dx;
    A.gz_y = (uint32_t)dy;
    mma_launch(st, A, J[0].n_rows, T, (uint32_t)n);
    return true;
}

bool cu_mma_dense(cudaStream_t st, const mv_job &J, uint32_t T) {
    if (!cu_mma_dense_ok(J, T)) return false;
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

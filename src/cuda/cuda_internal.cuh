/* cuda_internal.cuh - what the CUDA backend's files share: device weight and
 * activation views, reduction helpers, the block-format constants, and the
 * host-side launchers each kernel file exports.
 *
 * Device layout of weights (docs/CUDA.md):
 *   Q8_0 and IQ2_XXS are "split" at upload: the quant bytes of a row are
 *   contiguous (32 bytes per Q8_0 block, 64 per IQ2_XXS super-block) and the
 *   f16 scales live in a separate array, so a warp reads 16-byte aligned,
 *   perfectly coalesced chunks. Every other type keeps its file layout (Q4_K
 *   blocks are 144 bytes = 16-byte aligned, Q2_K 84 = 4-byte aligned).
 * Activations are float rows plus, on demand, their Q8_0 form (int8 + one
 * f32 scale per 32, the scale already rounded through f16 as the CPU does)
 * and Q8_K form (int8 + f32 scale per 256 + int32 sums per 16): the formats
 * the CPU dots each weight type against, so the integer inner sums are the
 * CPU's exactly and only the float summation order differs.
 */
#ifndef DS4_CUDA_INTERNAL_CUH
#define DS4_CUDA_INTERNAL_CUH

#define _Static_assert static_assert /* quant.h is C11 */
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

extern "C" {
#include "engine.h"
#include "quant.h"
}

#define CU_OK(call, err, errlen, what)                                                              \
    do {                                                                                             \
        cudaError_t e_ = (call);                                                                     \
        if (e_ != cudaSuccess) {                                                                     \
            if (err && errlen) snprintf(err, errlen, "CUDA %s: %s", what, cudaGetErrorString(e_));   \
            return false;                                                                            \
        }                                                                                            \
    } while (0)

/* ------------------------------------------------------------------------ */
/* weights and activations */

typedef struct {
    const uint8_t *q;   /* quants / raw blocks / plain values; NULL when absent */
    const __half *d;    /* split scales (Q8_0: per 32, IQ2_XXS: per 256), else NULL */
    int type;           /* ds4_dtype */
    uint32_t n_in, n_out, n_mat;
    uint64_t row_bytes; /* bytes of q per row */
} dweight;

static inline __host__ __device__ bool dw_split(int type) { return type == DS4_TYPE_Q8_0 || type == DS4_TYPE_IQ2_XXS; }
/* scales per row of a split weight */
static inline __host__ __device__ uint32_t dw_scales_per_row(int type, uint32_t n_in) {
    return type == DS4_TYPE_Q8_0 ? n_in / 32 : n_in / 256;
}

/* An activation matrix of rows `stride` elements apart; views start `off`
 * elements into each row. Any of the formats may be NULL. */
typedef struct {
    const float *f;
    const int8_t *q8; const float *d8;                  /* Q8_0: d8 per 32 */
    const int8_t *qk; const float *dk; const int32_t *bk; /* Q8_K: dk per 256, bk per 16 */
    uint32_t stride, off;
} act_view;

/* Owned activation buffer: rows x n, with the quantized forms allocated when
 * n allows them (n % 32 for Q8_0, n % 256 for Q8_K). */
typedef struct {
    float *f;
    int8_t *q8; float *d8;
    int8_t *qk; float *dk; int32_t *bk;
    uint32_t n, rows;
} dact;

static inline act_view av_of(const dact &a, uint32_t off = 0) {
    act_view v;
    v.f = a.f; v.q8 = a.q8; v.d8 = a.d8; v.qk = a.qk; v.dk = a.dk; v.bk = a.bk;
    v.stride = a.n; v.off = off;
    return v;
}

/* ------------------------------------------------------------------------ */
/* Programmatic dependent launch (sm_90+). Forward kernels are launched with
 * cu_launch, which lets the next kernel of the stream start while this one
 * finishes. Every kernel launched that way calls pdl_wait() before it reads
 * anything an earlier kernel wrote or writes anything an earlier kernel
 * reads (griddepcontrol.wait returns once the preceding grids have completed
 * and their writes are visible), then pdl_trigger() so the next kernel may be
 * scheduled. Work before pdl_wait() may only touch the weights (constant):
 * hc_post copies its fn tile and hc_pre prefetches its norm weights there,
 * under the previous kernel's tail. On older cards and with
 * DS4_CUDA_PDL=0 the launch is an ordinary one and both calls are no-ops. */
static __device__ __forceinline__ void pdl_wait(void) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
static __device__ __forceinline__ void pdl_trigger(void) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
/* whether cu_launch asks for programmatic serialization (cc >= 9.0 and
 * DS4_CUDA_PDL != 0) */
bool cu_pdl_enabled(void);
/* DS4_CUDA_CARVEOUT=N (0..100): every kernel cu_launch starts gets N as its
 * preferred shared-memory carveout (set once a kernel), so consecutive
 * kernels need no L1 / shared reconfiguration of an SM (a resident block of
 * another configuration keeps a dependent kernel's blocks off that SM) */
void cu_carveout(const void *kernel);
/* cu_launch with clusters of cluster_x blocks along x (cc >= 9.0; 0: no
 * clusters) */
template <typename... KArgs, typename... Args>
static inline void cu_launch_cluster(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem,
                                            cudaStream_t st, uint32_t cluster_x, Args... args) {
    cu_carveout((const void *)kernel);
    cudaLaunchConfig_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = st;
    cudaLaunchAttribute at[2];
    unsigned n = 0;
    if (cu_pdl_enabled()) {
        at[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        at[n++].val.programmaticStreamSerializationAllowed = 1;
    }
    if (cluster_x) {
        at[n].id = cudaLaunchAttributeClusterDimension;
        at[n].val.clusterDim.x = cluster_x;
        at[n].val.clusterDim.y = 1;
        at[n++].val.clusterDim.z = 1;
    }
    cfg.attrs = at;
    cfg.numAttrs = n;
    cudaLaunchKernelEx(&cfg, kernel, ((KArgs)args)...);
}
template <typename... KArgs, typename... Args>
static inline void cu_launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t st,
                             Args... args) {
    cu_launch_cluster(kernel, grid, block, smem, st, 0, args...);
}

/* Prefetches bytes [p, p + n) of a weight into L2 (16-byte aligned pieces
 * inside [lo, hi), the weight's allocation): bulk prefetches issued by the
 * calling thread on sm_90 (CUDA 12+), nothing on older cards. */
static __device__ __forceinline__ void l2_prefetch(const uint8_t *p, size_t n, const uint8_t *lo, const uint8_t *hi) {
    uintptr_t a = (uintptr_t)p & ~(uintptr_t)15, b = ((uintptr_t)p + n + 15) & ~(uintptr_t)15;
    if (a < (uintptr_t)lo) a = ((uintptr_t)lo + 15) & ~(uintptr_t)15;
    if (b > (uintptr_t)hi) b = (uintptr_t)hi & ~(uintptr_t)15;
    if (b <= a) return;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && __CUDACC_VER_MAJOR__ >= 12 /* PTX 8.0 */
    for (uintptr_t c = a; c < b; c += 0x10000u) {
        const uint32_t len = b - c < 0x10000u ? (uint32_t)(b - c) : 0x10000u;
        asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(c), "r"(len) : "memory");
    }
#else
    (void)a; (void)b;
#endif
}

/* ------------------------------------------------------------------------ */
/* device helpers */

/* cp.async (sm_80+): 16 bytes global -> shared without a register round
 * trip, in commit groups; wait_group N returns once at most N of the
 * committed groups are still in flight. The _256 form asks L2 to fetch
 * 256-byte sectors (streamed activation slices). */
static __device__ __forceinline__ void cp_async16(void *dst, const void *src) {
    const uint32_t d = (uint32_t)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(d), "l"(src) : "memory");
}
static __device__ __forceinline__ void cp_async16_256(void *dst, const void *src) {
    const uint32_t d = (uint32_t)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global.L2::256B [%0], [%1], 16;" ::"r"(d), "l"(src) : "memory");
}
static __device__ __forceinline__ void cp_async_commit(void) { asm volatile("cp.async.commit_group;" ::: "memory"); }
static __device__ __forceinline__ void cp_async_wait_all(void) { asm volatile("cp.async.wait_group 0;" ::: "memory"); }
static __device__ __forceinline__ void cp_async_wait_1(void) { asm volatile("cp.async.wait_group 1;" ::: "memory"); }

/* ldmatrix .x4 (16-bit elements, sm_75+): four 8 x 8 matrices; lane L gives
 * the shared address of row L & 7 of matrix L >> 3 and receives, of each
 * matrix, row L >> 2, elements 2 (L & 3), +1 (the lower one in the low half) */
static __device__ __forceinline__ void ldsm_x4(uint32_t (&a)[4], uint32_t saddr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(a[0]), "=r"(a[1]), "=r"(a[2]), "=r"(a[3])
                 : "r"(saddr)
                 : "memory");
}

static __device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
static __device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
static __device__ __forceinline__ double warp_sum_d(double v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* Sum over the block (blockDim.x a multiple of 32, <= 1024); every thread
 * gets the result. `red` is >= 32 doubles of shared scratch. */
static __device__ __forceinline__ double block_sum_d(double v, double *red) {
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum_d(v);
    __syncthreads();
    if (lane == 0) red[wid] = v;
    __syncthreads();
    double s = 0;
    for (int i = 0; i < nw; i++) s += red[i];
    return s;
}
static __device__ __forceinline__ float block_max(float v, float *red) {
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) red[wid] = v;
    __syncthreads();
    float m = -INFINITY;
    for (int i = 0; i < nw; i++) m = fmaxf(m, red[i]);
    return m;
}

static __device__ __forceinline__ uint32_t byte_of(uint32_t w, int i) { return (w >> (8 * i)) & 0xff; }
/* Q4_K: the 6-bit scale and min of sub-block j from the 12 scale bytes */
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
static __device__ __forceinline__ float h2f(uint16_t h) { return __half2float(__ushort_as_half(h)); }
static __device__ __forceinline__ float bf2f(uint16_t h) { return __uint_as_float((uint32_t)h << 16); }
static __device__ __forceinline__ float round_f16(float x) { return __half2float(__float2half_rn(x)); }

/* Quantizes a finished shared-memory row into the Q8_0 / Q8_K forms of an
 * activation (either may be NULL), one warp per block (warps wid, wid + nw,
 * ...), with exactly the arithmetic of quantize_kernel (kernels_matmul.cu).
 * Needs no barrier. */
static __device__ __forceinline__ void srow_quantize_warps(const float *x, uint32_t n, int8_t *q8, float *d8, int8_t *qk,
                                                           float *dk, int32_t *bk, uint32_t wid, uint32_t nw) {
    const int lane = threadIdx.x & 31;
    if (q8 && n % 32 == 0)
        for (uint32_t b = wid; b < n / 32; b += nw) {
            const float v = x[b * 32 + lane];
            const float amax = warp_max(fabsf(v));
            const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
            q8[b * 32 + lane] = (int8_t)roundf(v * id);
            if (lane == 0) d8[b] = round_f16(d);
        }
    if (qk && n % 256 == 0)
        for (uint32_t b = wid; b < n / 256; b += nw) {
            const float *xb = x + b * 256;
            float ax = -1.0f;
            int ix = 0;
            for (int k = 0; k < 8; k++) {
                const float a = fabsf(xb[lane * 8 + k]);
                if (a > ax) { ax = a; ix = lane * 8 + k; }
            }
#pragma unroll
            for (int off = 16; off > 0; off >>= 1) {
                const float oa = __shfl_xor_sync(0xffffffffu, ax, off);
                const int oi = __shfl_xor_sync(0xffffffffu, ix, off);
                if (oa > ax || (oa == ax && oi < ix)) { ax = oa; ix = oi; }
            }
            int sum = 0;
            if (ax > 0.0f) {
                const float iscale = -127.0f / xb[ix];
                for (int k = 0; k < 8; k++) {
                    int q = __float2int_rn(iscale * xb[lane * 8 + k]);
                    q = q < 127 ? q : 127;
                    qk[b * 256 + lane * 8 + k] = (int8_t)q;
                    sum += q;
                }
                if (lane == 0) dk[b] = 1.0f / iscale;
            } else {
                for (int k = 0; k < 8; k++) qk[b * 256 + lane * 8 + k] = 0;
                if (lane == 0) dk[b] = 0.0f;
            }
            sum += __shfl_xor_sync(0xffffffffu, sum, 1);
            if (!(lane & 1)) bk[b * 16 + lane / 2] = sum;
        }
}
/* ... by all warps of the block */
static __device__ __forceinline__ void srow_quantize(const float *x, uint32_t n, int8_t *q8, float *d8, int8_t *qk, float *dk,
                                     int32_t *bk) {
    srow_quantize_warps(x, n, q8, d8, qk, dk, bk, threadIdx.x >> 5, blockDim.x >> 5);
}

/* the row-t slices of an activation's quantized forms, from column c0 on
 * (a multiple of 256 where the Q8_K form exists) */
typedef struct {
    int8_t *q8; float *d8; int8_t *qk; float *dk; int32_t *bk;
} qrow;
static __device__ __forceinline__ qrow qrow_of(const dact &a, uint32_t t, uint32_t c0 = 0) {
    qrow r;
    const size_t o = (size_t)t * a.n + c0;
    r.q8 = a.q8 ? a.q8 + o : NULL;
    r.d8 = a.q8 ? a.d8 + o / 32 : NULL;
    r.qk = a.qk ? a.qk + o : NULL;
    r.dk = a.qk ? a.dk + o / 256 : NULL;
    r.bk = a.qk ? a.bk + o / 16 : NULL;
    return r;
}

/* Element i of row `row` (of matrix mat) of a float-typed weight (F32, F16,
 * BF16) and of Q8_0 (split). Used for small vectors (ape rows, embedding). */
static __device__ __forceinline__ float dw_elem(const dweight &w, uint64_t row, uint32_t i) {
    const uint8_t *r = w.q + row * w.row_bytes;
    switch (w.type) {
    case DS4_TYPE_F32: return ((const float *)r)[i];
    case DS4_TYPE_F16: return h2f(((const uint16_t *)r)[i]);
    case DS4_TYPE_BF16: return bf2f(((const uint16_t *)r)[i]);
    case DS4_TYPE_Q8_0: return (float)((const int8_t *)r)[i] * __half2float(w.d[row * (w.n_in / 32) + i / 32]);
    default: return __int_as_float(0x7fc00000);
    }
}

/* Device allocations of a model (or a test), freed together. */
#include <vector>
struct cu_alloc {
    cudaStream_t st;
    std::vector<void *> allocs;
    size_t weight_bytes;
};
/* cudaMalloc with a message naming what did not fit */
bool cu_dev_alloc(cu_alloc *a, void **p, size_t bytes, char *err, size_t errlen, const char *what);
/* One weight onto the device: upload (+ split repack through `staging`), or
 * random contents of the right type when w->data is NULL. */
bool cu_weight_upload(cu_alloc *a, const ds4_weight *w, dweight *out, uint64_t seed, uint8_t *staging,
                      size_t staging_bytes, double *progress, double total, char *err, size_t errlen);

/* ------------------------------------------------------------------------ */
/* launchers (kernels_*.cu); all asynchronous on `st` */

/* kernels_matmul.cu */
bool cu_tables_init(char *err, size_t errlen);
/* rows x n floats (rows `xstride` apart) -> a's quantized forms */
void cu_quantize(cudaStream_t st, const float *x, uint32_t xstride, uint32_t rows, dact &a);
/* Dequantizes one row (embedding lookup etc.): out[r][0..n_in) for rows[r]
 * (device ids), repeated `rep` times with stride n_in (HC streams). */
void cu_dequant_rows(cudaStream_t st, const dweight &w, const int32_t *ids, uint32_t n, float *out, uint32_t rep);

#define MV_MAX_JOBS 8
typedef struct {
    dweight w;
    uint32_t mat;            /* matrix of a stacked weight */
    const int32_t *mat_ids;  /* when set: pair p uses matrix mat_ids[p] (p < n_pairs) */
    uint32_t n_pairs;        /* >= 1; pairs advance x by x_pair and y by y_pair rows */
    uint32_t x_pair, y_pair; /* rows of x / y per pair (0: shared input) */
    uint32_t row0, n_rows;   /* output rows of the weight */
    act_view x;              /* T activation rows (per pair) */
    float *y;                /* y[t][r] at y + t*y_stride + r (r relative to row0) */
    uint32_t y_stride;
    int exact;               /* keep the exact kernels at any T (the router: expert choices) */
    int ids_early;           /* mat_ids were written two or more launches earlier (complete when this
                                launch starts): decode may read them before pdl_wait to prefetch */
    int x_early;             /* the same for x (on every path into the launch: a stream joined just
                                before counts as the kernel before): the IQ2_XXS one-pass decode kernel
                                loads it before pdl_wait */
    /* decode (T = 1): the launch's last block of the job (per pair; of all
     * jobs sharing fin_count) forms the next product's activation from the
     * rows this launch wrote, with the arithmetic of the launch it replaces,
     * so that launch leaves the chain (cu_matvec_fin_ok says where it applies) */
    int fin;                 /* MV_FIN_* */
    uint32_t *fin_count;     /* device counters, one a pair, zero between launches (the last block resets its own) */
    uint32_t fin_total;      /* blocks counted a pair (cu_matvec sets it) */
    uint32_t fin_n;          /* values of the activation row */
    const float *fin_x;      /* source row of pair p at fin_x + p fin_pstride (NORM / QUANT: y; SWIGLU: the gate rows) */
    const float *fin_u;      /* SWIGLU: the up rows, laid out as fin_x */
    uint32_t fin_pstride;
    const float *fin_w;      /* NORM: the norm weights [fin_n] (or NULL); SWIGLU: route weight a pair (or NULL) */
    float fin_eps;           /* NORM: RMSNorm eps; SWIGLU: the clamp */
    dact fin_out;            /* destination: row p (SWIGLU) or 0, columns from fin_c0; the forms it has are written */
    uint32_t fin_c0;
} mv_job;
#define MV_FIN_NONE 0
#define MV_FIN_QUANT 1  /* the rows as they are (cu_quantize) */
#define MV_FIN_NORM 2   /* RMSNorm times fin_w (cu_rmsnorm of one row) */
#define MV_FIN_SWIGLU 3 /* clamp, SiLU(gate) * up * route weight (cu_swiglu) */
/* whether job J may finish with J.fin at T = 1 (rows of fin_n % 256 == 0, 16-byte aligned sources) */
bool cu_matvec_fin_ok(const mv_job &J);
/* y = W x for T tokens, several independent products in one launch. */
void cu_matvec(cudaStream_t st, const mv_job *jobs, int n_jobs, uint32_t T);
/* decode router logits y[n_out] = W x for one token (F16/BF16 W, n_in a
 * multiple of 2048 up to 256 RR_MAX_PER), a block a row */
#define RR_MAX_PER 32
/* what the routing needs besides the logits (cu_route, cu_router_decode) */
typedef struct {
    uint32_t K;
    const int32_t *tokens, *tid2eid;
    const float *bias;
    int norm;
    float scale;
    int32_t *ids; /* NULL: logits only */
    float *wts;
} route_args;
bool cu_router_decode_ok(const dweight &w, const act_view &x);
/* ra: also route the token (by the block that finishes last; X = n_out <= 1024) */
void cu_router_decode(cudaStream_t st, const dweight &w, const act_view &x, float *y, const route_args *ra = NULL);
/* Routed experts over pairs sorted by expert: for every expert e, rows
 * [0, w.n_out) of matrix e against the activations of its pairs
 * list[off[e] .. off[e]+cnt[e]); the activation row of pair p is p / x_div,
 * the output row p. T: the chunk's tokens (no expert has more pairs). */
void cu_moe_mm(cudaStream_t st, const dweight &w, uint32_t n_expert, const int32_t *cnt, const int32_t *off,
               const int32_t *list, act_view x, uint32_t x_div, float *y, uint32_t y_stride, uint32_t T);
/* kernels_mma.cu: prefill products of T >= min_T tokens on tensor cores
 * (BF16, quantized and F16/BF16 weights); 0 turns that off. Default:
 * DS4_CUDA_MMA_MIN or 16. */
bool cu_mma_tables_init(char *err, size_t errlen);
uint32_t cu_mma_min_T(void);
/* J on tensor cores when T, the weight type and the layout allow (dense jobs
 * only); false: the caller runs the exact kernels */
bool cu_mma_dense(cudaStream_t st, const mv_job &J, uint32_t T);
/* whether cu_mma_dense would run J (then only x's floats are read: the
 * caller may skip forming the quantized activations) */
bool cu_mma_dense_ok(const mv_job &J, uint32_t T);
/* whether cu_mma_moe would run w over x (then only x's floats are read) */
bool cu_mma_moe_ok(const dweight &w, act_view x, uint32_t T);
/* routed gate and up products with the SwiGLU (clamp, pair weight) in one
 * tensor-core launch: h[p][r] for the pairs sorted by expert; false (nothing
 * run) when it does not apply (DS4_CUDA_MMA_PAIR=0, types, shapes) */
bool cu_mma_moe_swiglu(cudaStream_t st, const dweight &gate, const dweight &up, uint32_t n_expert, const int32_t *cnt,
                       const int32_t *off, const int32_t *list, act_view x, uint32_t x_div, const float *pair_w,
                       float clamp, float *h, uint32_t h_stride, uint32_t T);
/* n jobs that are consecutive row groups of one weight against equally
 * spaced slices of one activation (the out_a groups) as one launch; false
 * (nothing run) otherwise */
bool cu_mma_dense_groups(cudaStream_t st, const mv_job *jobs, int n, uint32_t T);
/* cu_moe_mm on tensor cores when allowed; false: not run */
bool cu_mma_moe(cudaStream_t st, const dweight &w, uint32_t n_expert, const int32_t *cnt, const int32_t *off,
                const int32_t *list, act_view x, uint32_t x_div, float *y, uint32_t y_stride, uint32_t T);
void cu_mma_set_min_T(uint32_t min_T);
/* tests: the token tile of the expert products (32 or 64; 0: chosen by size) */
void cu_mma_set_moe_bn(uint32_t bn);

/* kernels_ops.cu */
#define ROUTE_MAX_K 16 /* routed experts a token, at most */
typedef struct {
    const float *scale, *base; /* [3], [M] device */
    uint32_t C, iters;
    float eps;
    uint32_t S; /* partial slices in `part` (what produced them returned it; 0: cu_hc_mix's) */
} hc_params;
/* Partial sums of mix[t][m] = (fn_m . R_t) / rms(R_t) for the M rows of fn
 * [C*E -> M], over 1024-value slices: `part` holds cu_hc_part_floats(). */
uint32_t cu_hc_mix(cudaStream_t st, const dweight &fn, const float *R, uint32_t T, uint32_t CE, float rms_eps,
                   float *part);
/* the slice count of the partials cu_hc_post forms with next_fn */
uint32_t cu_hc_post_splits(uint32_t E);
size_t cu_hc_part_floats(uint32_t T, uint32_t M, uint32_t C, uint32_t E);
/* mix from the partials, split into pre/post/comb, x[t] = Σ pre R[t], then
 * out = RMSNorm(x; norm) with its quantized forms. With gram (one token,
 * from cu_hc_post) the sum of squares of x is the quadratic form pre^T G
 * pre, so the collapse runs over many blocks with no reduction after it. */
void cu_hc_pre(cudaStream_t st, const hc_params &hp, const float *part, const float *R, uint32_t T, uint32_t E,
               const float *norm, float rms_eps, float *pre, float *post, float *comb, dact &out,
               const double *gram = NULL, bool split_elsewhere = false);
/* whether cu_hc_pre takes the Gram path (then split_elsewhere leaves the
 * Sinkhorn split, post and comb, to cu_hc_split: only the next hc_post reads
 * them, so it may run on the side stream) */
bool cu_hc_pre_gram_ok(const hc_params &hp, uint32_t T, uint32_t E);
void cu_hc_split(cudaStream_t st, const hc_params &hp, const float *part, uint32_t E, float rms_eps, float *pre,
                 float *post, float *comb);
/* the Gram partials cu_hc_post forms for a decode step: [C (C + 1) / 2][S]
 * doubles (G[b][b'] = sum over e of R[b][e] R[b'][e], b <= b') */
size_t cu_hc_gram_doubles(uint32_t C, uint32_t E);
/* R = post y + comb^T R; with next_fn (M <= 80 rows) also the next
 * hyper-connection's mix partials into part (returns their slice count for
 * hc_params.S / cu_head_hc, 0 when not formed); with ye (K <= 16 pairs a
 * token) y is the shared expert's output and the routed rows ye[t*K+k] are
 * added in cu_moe_sum's order first; with gram (cu_hc_gram_doubles) and one
 * token also the Gram partials of the new R, *gram_formed saying whether
 * they were formed (4 streams with the mix) */
uint32_t cu_hc_post(cudaStream_t st, float *R, const float *y, const float *post, const float *comb, uint32_t T,
                    uint32_t C, uint32_t E, const dweight *next_fn = NULL, float *part = NULL,
                    const float *ye = NULL, const int32_t *ids = NULL, uint32_t K = 0, double *gram = NULL,
                    bool *gram_formed = NULL);
/* rows x n: out = RMSNorm(x; w) (w may be NULL) with its quantized forms; x may be out.f */
void cu_rmsnorm(cudaStream_t st, const float *x, dact &out, const float *w, uint32_t rows, uint32_t n, float eps);
/* Per head of T x H heads of dim D: RMSNorm (no weight, if norm), RoPE tail
 * at pos0[0] + t (heads are T-major), then optional Hadamard + FP4 (indexer
 * queries). inverse rotates by -θ. */
void cu_head_post(cudaStream_t st, float *x, uint32_t T, uint32_t H, uint32_t D, uint32_t n_rot, const float *inv_freq,
                  const int64_t *pos0, bool norm, float eps, bool inverse, bool hadamard_fp4, bool wide = false);
/* cu_head_post's per-head steps for two sets of heads in one launch */
typedef struct {
    float *x;
    uint32_t H, D, n_rot;
    const float *inv_freq;
    int norm, inverse, had;
} head_job;
/* RoPE angles pos x f (f <= 1) stay within sinf / cosf's fast range up to
 * position 105615; a decode step past it runs kernels whose RoPE reduces
 * larger angles itself (sincos_angle in row_ops.cuh): the host picks them
 * by position (a decode graph of their own), so shorter contexts keep the
 * kernels without the extra code (with it 4k decode was 1% slower on H100) */
static inline bool cu_wide_angles(int64_t pos) { return pos > 105615; }
void cu_head_post2(cudaStream_t st, const head_job &a, const head_job &b, uint32_t T, const int64_t *pos0, float eps,
                   bool wide = false);

/* Router: probabilities, selection (hash table or top-k of prob+bias), weights
 * of T tokens' logits [T][X] -> ra.ids / ra.wts [T][K] */
void cu_route(cudaStream_t st, const float *logits, uint32_t T, uint32_t X, const route_args &ra);
/* h[p][i] = silu(min(g,c)) * clamp(u,-c,c) * (wts ? wts[p] : 1), with h's quantized forms */
void cu_swiglu(cudaStream_t st, const float *g, const float *u, const float *wts, uint32_t rows, uint32_t F, float c,
               dact &h);
/* y[t] = ysh[t] + Σ over t's pairs in (expert id, k) order of ye[t*K+k] */
void cu_moe_sum(cudaStream_t st, const float *ysh, const float *ye, const int32_t *ids, uint32_t T, uint32_t K,
                uint32_t E, float *y);
/* Pairs by expert: cnt[e], off[e] (exclusive prefix), list (pair ids in
 * ascending order within each expert). */
void cu_moe_sort(cudaStream_t st, const int32_t *ids, uint32_t n_pairs, uint32_t X, int32_t *cnt, int32_t *off,
                 int32_t *list);
/* Output HC head: x[t] = RMSNorm(Σ_h w_h R[t][h]; norm) with its quantized
 * forms, w from out_hc_fn; part: cu_hc_part_floats(T, C, C, E) scratch, already
 * holding the mix partials when mixed_S (cu_hc_post with out_hc_fn) */
void cu_head_hc(cudaStream_t st, const dweight &fn, const float *scale, const float *base, const float *R, uint32_t T,
                uint32_t C, uint32_t E, float rms_eps, float hc_eps, const float *norm, float *part, dact &x,
                uint32_t mixed_S = 0);
/* out[t] = argmax of rows of n floats (first max wins); scratch:
 * cu_argmax_scratch_floats(rows) */
void cu_argmax(cudaStream_t st, const float *x, uint32_t rows, uint32_t n, int32_t *out, float *scratch);
size_t cu_argmax_scratch_floats(uint32_t rows);

/* kernels_attn.cu */
typedef struct {
    uint32_t ratio, dim, n_rot;    /* compressor geometry */
    const float *inv_freq;         /* compressed-layer RoPE */
    const float *norm;             /* [dim] */
    bool indexer;                  /* Hadamard + FP4 (else FP8 + optional F16) */
    bool sim, f16;
    float eps;
} comp_params;
/* A compressor's work: projections kv, sc [T][c*dim] (ape added here) fed
 * through the frontier state st_kv / st_sc, closed rows appended to rows[];
 * pooled: scratch [T/ratio + 1][dim]. */
typedef struct {
    comp_params cp;
    dweight ape;
    const float *kv, *sc;
    float *st_kv, *st_sc, *pooled, *rows;
} comp_job;
/* Feeds T tokens at positions pos0[0].. through the compressor J. */
void cu_compress(cudaStream_t st, const comp_job &J, uint32_t T, const int64_t *pos0);
typedef struct {
    uint32_t D;
    const float *norm;
    float eps;
    uint32_t n_rot;
    const float *inv_freq;
    bool fp8, f16;
    float *raw;
    uint32_t raw_cap;
} kvrow_params;
/* KV rows [T][D]: RMSNorm(norm), RoPE, FP8 (D - n_rot dims), F16 round,
 * stored at ring row (pos0+t) % raw_cap. */
void cu_kv_store(cudaStream_t st, const kvrow_params &kp, const float *kv, uint32_t T, const int64_t *pos0);
/* Decode (one token): cu_kv_store of the token's row [D] plus cu_compress of
 * the attention compressor a and the indexer compressor ix (either may be
 * NULL; ix only with a) in one launch */
void cu_side_decode(cudaStream_t st, const kvrow_params &kp, const float *kv, const comp_job *a, const comp_job *ix,
                    const int64_t *pos0, bool wide = false);
/* Indexer scores [T][n_cap] (rows k < visible of each token) and top-k:
 * sel [T][K] ascending, n_sel[t] = K, or UINT32_MAX when every visible row
 * is attended. fp4_inputs: queries and keys are FP4-simulated (exact in
 * BF16), so the scores may run on tensor cores. */
void cu_indexer(cudaStream_t st, const float *qi, const float *wi, float wscale, const float *keys, uint32_t n_cap,
                uint32_t T, uint32_t I, uint32_t ID, uint32_t K, const int64_t *pos0, float *scores, uint32_t *sel,
                uint32_t *n_sel, bool fp4_inputs, bool topk_cluster = false);
/* Decode with more compressed rows than this (n = (pos + 1) / 4) selects
 * its top-k over a cluster of blocks (cu_indexer's topk_cluster; fewer rows:
 * one block, faster there): whether that applies on this device */
#define TOPK_CL_MIN_N 4096
bool cu_topk_cluster_ok(void);
typedef struct {
    uint32_t H, D, n_swa, raw_cap, ratio, top_k, n_rot;
    const float *sinks;
    const float *raw, *comp;
    const uint32_t *sel, *n_sel; /* NULL unless the indexer ran */
    const float *inv_freq;       /* inverse RoPE of the outputs */
    /* decode (cu_attention): with q_post set, q holds the heads as q_b wrote
     * them and each warp applies the head's RMSNorm (eps q_eps) and RoPE
     * (inv_freq) itself, what head_post_kernel did in a launch before */
    int q_post;
    float q_eps;
    /* decode: the rows were written at least two kernels back on every path
     * into this launch (the side branch that wrote them ends with another
     * kernel, the Sinkhorn split), so they may be staged before pdl_wait.
     * A launch joined from another stream is a programmatic successor of
     * that stream's last kernel too: rows from a side branch that ends with
     * the KV / compressor launch, or an indexer selection, are not. */
    int rows_early;
    /* decode past position 105615: RoPE angles leave sinf / cosf's fast
     * range (sincos_angle's WIDE variant, chosen by the host) */
    int wide;
} attn_params;
/* The key/value rows token t (position p) attends, in order: the raw window
 * [lo, p] (n_raw rows of the ring), then n_comp compressed rows (the
 * indexer's selection `list` when it chose, else rows 0 .. n_comp-1). */
typedef struct {
    int64_t lo;
    uint32_t slot0; /* ring slot of row lo (lo % raw_cap, taken once: a 64-bit remainder is ~100 instructions) */
    uint32_t n_raw, n_comp;
    const uint32_t *list;
} attn_rows;
static __device__ __forceinline__ attn_rows attn_rows_of(const attn_params &ap, int64_t p, uint32_t t) {
    attn_rows R;
    R.lo = p - (int64_t)ap.n_swa + 1 > 0 ? p - (int64_t)ap.n_swa + 1 : 0;
    R.slot0 = (uint32_t)(R.lo % ap.raw_cap);
    R.n_raw = (uint32_t)(p - R.lo + 1);
    R.n_comp = ap.ratio ? (uint32_t)((p + 1) / ap.ratio) : 0;
    R.list = NULL;
    if (ap.ratio && ap.sel && ap.n_sel[t] != 0xffffffffu) {
        R.list = ap.sel + (size_t)t * ap.top_k;
        R.n_comp = ap.n_sel[t];
    }
    return R;
}
/* row r (< n_raw + n_comp) of that sequence, D floats (the window's rows
 * are fewer than raw_cap, so slot0 + r wraps at most once) */
static __device__ __forceinline__ const float *attn_row(const attn_params &ap, const attn_rows &R, uint32_t r) {
    const uint32_t slot = R.slot0 + r >= ap.raw_cap ? R.slot0 + r - ap.raw_cap : R.slot0 + r;
    return r < R.n_raw ? ap.raw + (size_t)slot * ap.D
                       : ap.comp + (size_t)(R.list ? R.list[r - R.n_raw] : r - R.n_raw) * ap.D;
}
/* o[t][h] = softmax-with-sink attention of q[t][h] over the visible rows,
 * inverse-rotated. part: scratch for split partials. oq (optional): also
 * writes o's quantized forms when head_dim % 256 == 0 (returns without them
 * otherwise: the caller quantizes). head_dim: 128, 256, 512 or 1024. */
void cu_attention(cudaStream_t st, const attn_params &ap, const float *q, uint32_t T, const int64_t *pos0, float *part,
                  size_t part_floats, uint32_t splits, float *o, const dact *oq);
/* kernels_attn_mma.cu: cu_attention for prefill chunks on FP16 tensor cores
 * (head_dim 512, heads a multiple of 64, K/V rows exact in FP16); false when
 * it does not apply (DS4_CUDA_ATT_TC=0, pre-sm_80, other shapes). Writes the
 * float output only. */
bool cu_attention_tc(cudaStream_t st, const attn_params &ap, const float *q, uint32_t T, const int64_t *pos0,
                     float *o);
/* raises the shared-memory limits of the attention and indexer kernels */
bool cu_attn_init(char *err, size_t errlen);
/* floats of `part` scratch that cu_attention needs */
size_t cu_attention_part_floats(uint32_t T, uint32_t H, uint32_t D, uint32_t splits);

#endif

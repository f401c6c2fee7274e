/* row_ops.cuh - block-cooperative steps on one row held in shared memory
 * (RMSNorm, RoPE, the official FP8 E4M3 / FP4 E2M1 simulations, Hadamard),
 * shared by kernels_ops.cu and kernels_attn.cu. Static device functions in a
 * header: each kernel file gets its own copy without relocatable device code.
 * Every thread of the block calls them; each ends with a barrier. */
#ifndef DS4_CUDA_ROW_OPS_CUH
#define DS4_CUDA_ROW_OPS_CUH

#include "cuda_internal.cuh"

static __device__ void srow_rmsnorm(float *x, uint32_t n, const float *w, float eps, double *red) {
    double ss = 0;
    #pragma unroll 4
    for (uint32_t i = threadIdx.x; i < n; i += blockDim.x) ss += (double)x[i] * x[i];
    ss = block_sum_d(ss, red);
    const float scale = (float)(1.0 / sqrt(ss / n + (double)eps));
    #pragma unroll 4
    for (uint32_t i = threadIdx.x; i < n; i += blockDim.x) x[i] = w ? __fmul_rn(__fmul_rn(x[i], scale), w[i]) : __fmul_rn(x[i], scale);
    __syncthreads();
}

/* sin and cos of a float angle. Up to 105615 (in magnitude) sinf / cosf
 * reduce the angle in float and stay on their fast path; above it they fall
 * back to a Payne-Hanek reduction with a local-memory array, which a warp
 * walks for its one or two diverging lanes on the critical path of every
 * RoPE step of long-context decode (the first pairs' angles pass 105615 at
 * position ~105k: 128k decode 1.8% slower for it on H100). WIDE: there the
 * angle (an exact float) is reduced by pi/2 in double (a two-part pi/2: the
 * remainder is exact to ~1e-16 for angles below 2^31), and sinf / cosf of
 * the float remainder, on their fast path, are rotated by the quadrant:
 * within ~2 ulp of the exact values, as the float fallback; below 105615
 * the result is sinf / cosf's own, bit for bit. The extra code costs where
 * it is never taken (H100, 30 layers: 4k decode -1.0%, an 8k prefill
 * -1.7%), so only the decode kernels of steps past position 105615 use it
 * (cu_wide_angles: the host picks them, a decode graph of their own);
 * prefill keeps the fallback, paid once per chunk row rather than on each
 * decode step's chain. */
template <bool WIDE>
static __device__ __forceinline__ void sincos_angle(float theta, float *s, float *c) {
    float x = theta;
    int q = 0;
    if (WIDE && fabsf(theta) > 105615.0f) {
        const double t = theta, k = rint(t * 0.63661977236758134308);
        x = (float)fma(-k, 6.123233995736766036e-17, fma(-k, 1.5707963267948966192, t));
        q = (int)((long long)k & 3);
    }
    const float cx = cosf(x), sx = sinf(x);
    *s = q == 0 ? sx : q == 1 ? cx : q == 2 ? -sx : -cx;
    *c = q == 0 ? cx : q == 1 ? -sx : q == 2 ? -cx : sx;
}

/* RoPE of one pair (a, b) at position pos with frequency f (CPU
 * arithmetic); WIDE: sincos_angle's own reduction above 105615 */
template <bool WIDE = false>
static __device__ __forceinline__ void rope_pair(float &a, float &b, int64_t pos, float f, bool inverse) {
    const float theta = __fmul_rn((float)pos, f);
    float c, s;
    sincos_angle<WIDE>(theta, &s, &c);
    if (inverse) s = -s;
    const float x = a, y = b;
    a = __fsub_rn(__fmul_rn(x, c), __fmul_rn(y, s));
    b = __fadd_rn(__fmul_rn(x, s), __fmul_rn(y, c));
}

template <bool WIDE = false>
static __device__ void srow_rope(float *x, uint32_t dim, uint32_t n_rot, const float *inv_freq, int64_t pos, bool inverse) {
    float *r = x + dim - n_rot;
    #pragma unroll 4
    for (uint32_t k = threadIdx.x; k < n_rot / 2; k += blockDim.x)
        rope_pair<WIDE>(r[2 * k], r[2 * k + 1], pos, inv_freq[k], inverse);
    __syncthreads();
}

static __device__ __forceinline__ float pow2_ceil(float y) {
    int e;
    const float m = frexpf(y, &e);
    return ldexpf(1.0f, m == 0.5f ? e - 1 : e);
}

static __device__ __forceinline__ float round_e4m3(float v) {
    if (v < 0.015625f) return rintf(v * 512.0f) / 512.0f;
    int e;
    frexpf(v, &e);
    const float step = ldexpf(1.0f, e - 1 - 3);
    return rintf(v / step) * step;
}

static __device__ __forceinline__ float round_e2m1(float v) {
    if (v <= 0.25f) return 0.0f;
    if (v < 0.75f) return 0.5f;
    if (v <= 1.25f) return 1.0f;
    if (v < 1.75f) return 1.5f;
    if (v <= 2.5f) return 2.0f;
    if (v < 3.5f) return 3.0f;
    if (v <= 5.0f) return 4.0f;
    return 6.0f;
}

/* FP8 E4M3 simulation of x[0..n) in 64-value blocks (one warp per block). */
static __device__ void srow_fp8(float *x, uint32_t n) {
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    for (uint32_t b = (uint32_t)wid * 64; b < n; b += (uint32_t)nw * 64) {
        const uint32_t m = n - b < 64 ? n - b : 64;
        const float v0 = (uint32_t)lane < m ? x[b + lane] : 0.0f, v1 = (uint32_t)lane + 32 < m ? x[b + lane + 32] : 0.0f;
        const float amax = warp_max(fmaxf(fabsf(v0), fabsf(v1)));
        const float scale = pow2_ceil(fmaxf(amax, 1e-4f) / 448.0f);
        if ((uint32_t)lane < m) {
            const float v = fminf(fmaxf(v0 / scale, -448.0f), 448.0f);
            x[b + lane] = copysignf(round_e4m3(fabsf(v)), v) * scale;
        }
        if ((uint32_t)lane + 32 < m) {
            const float v = fminf(fmaxf(v1 / scale, -448.0f), 448.0f);
            x[b + lane + 32] = copysignf(round_e4m3(fabsf(v)), v) * scale;
        }
    }
    __syncthreads();
}

/* FP4 E2M1 simulation in 32-value blocks (one warp per block). */
static __device__ void srow_fp4(float *x, uint32_t n) {
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    for (uint32_t b = (uint32_t)wid * 32; b < n; b += (uint32_t)nw * 32) {
        const uint32_t m = n - b < 32 ? n - b : 32;
        const float v0 = (uint32_t)lane < m ? x[b + lane] : 0.0f;
        const float amax = warp_max(fabsf(v0));
        const float scale = pow2_ceil(fmaxf(amax, 7.052966104933725e-38f) / 6.0f);
        if ((uint32_t)lane < m) {
            const float v = fminf(fmaxf(v0 / scale, -6.0f), 6.0f);
            x[b + lane] = copysignf(round_e2m1(fabsf(v)), v) * scale;
        }
    }
    __syncthreads();
}

/* round to F16 precision (the F16 KV cache of the reference) */
static __device__ void srow_f16(float *x, uint32_t n) {
    #pragma unroll 4
    for (uint32_t i = threadIdx.x; i < n; i += blockDim.x) x[i] = round_f16(x[i]);
    __syncthreads();
}

static __device__ void srow_hadamard(float *x, uint32_t n) {
    for (uint32_t h = 1; h < n; h <<= 1) {
        #pragma unroll 4
        for (uint32_t idx = threadIdx.x; idx < n / 2; idx += blockDim.x) {
            const uint32_t i = (idx / h) * 2 * h + (idx % h);
            const float a = x[i], b = x[i + h];
            x[i] = a + b;
            x[i + h] = a - b;
        }
        __syncthreads();
    }
    const float s = (float)(1.0 / sqrt((double)n));
    #pragma unroll 4
    for (uint32_t i = threadIdx.x; i < n; i += blockDim.x) x[i] *= s;
    __syncthreads();
}

#endif

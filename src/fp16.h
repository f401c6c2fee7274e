/* fp16.h - IEEE half and bfloat16 <-> float conversions (round to nearest
 * even, NaN kept quiet), matching ggml's bit patterns. Header-only so hot
 * loops inline them. */
#ifndef DS4_FP16_H
#define DS4_FP16_H

#include <stdint.h>
#include <string.h>

static inline uint32_t ds4_f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float ds4_bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

static inline float ds4_fp16_to_fp32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
    if (exp == 0) {
        if (mant == 0) return ds4_bits_f32(sign);
        /* subnormal: mant * 2^-24 */
        float v = (float)mant * 5.9604644775390625e-8f;
        return sign ? -v : v;
    }
    if (exp == 31) return ds4_bits_f32(sign | 0x7f800000u | (mant << 13));
    return ds4_bits_f32(sign | ((exp + 112) << 23) | (mant << 13));
}

static inline uint16_t ds4_fp32_to_fp16(float f) {
    uint32_t x = ds4_f32_bits(f);
    uint32_t sign = (x >> 16) & 0x8000;
    uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) /* inf or nan */
        return (uint16_t)(sign | 0x7c00 | (ax > 0x7f800000u ? 0x200 | ((ax >> 13) & 0x3ff) : 0));
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00); /* rounds to >= 65520: inf */
    if (ax < 0x38800000u) { /* result is subnormal or zero */
        if (ax < 0x33000000u) return (uint16_t)sign; /* < 2^-25: rounds to 0 */
        uint32_t e = ax >> 23, m = (ax & 0x7fffff) | 0x800000;
        uint32_t shift = 126 - e; /* 14..24 */
        uint32_t q = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1))) q++;
        return (uint16_t)(sign | q);
    }
    uint32_t r = ax + 0xfff + ((ax >> 13) & 1); /* round to nearest even on bit 13 */
    return (uint16_t)(sign | ((r - 0x38000000u) >> 13));
}

static inline float ds4_bf16_to_fp32(uint16_t h) { return ds4_bits_f32((uint32_t)h << 16); }

static inline uint16_t ds4_fp32_to_bf16(float f) {
    uint32_t x = ds4_f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 64); /* quiet nan */
    return (uint16_t)((x + (0x7fff + ((x >> 16) & 1))) >> 16);
}

#endif

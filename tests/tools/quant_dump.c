/* quant_dump.c - write blocks of every format and our own decoding of them,
 * for tests/check_dequant_gguf.py to compare with an independent
 * implementation (the `gguf` Python package's numpy dequantizers).
 *
 * Usage: quant_dump OUTDIR [SEED]
 *
 * For each type (F32 F16 BF16 Q8_0 Q2_K Q4_K IQ2_XXS) and each of two block
 * sources, it writes
 *     OUTDIR/<TYPE>.<source>.bin        the raw blocks (n values' worth)
 *     OUTDIR/<TYPE>.<source>.ref.f32    ds4_dequantize_row_ref() of them
 *     OUTDIR/<TYPE>.<source>.simd.f32   ds4_dequantize_row() (the SIMD path)
 * with <source> = "random" (random bytes, f16 scale fields replaced by sane
 * finite values; F16/BF16 keep fully random bits, NaN and inf included) or
 * "quant" (our quantizer run on gaussian data; IQ2_XXS with an importance
 * vector). For the quantizers that gguf also implements it writes
 *     OUTDIR/src.f32                    the gaussian input row (with edge values)
 *     OUTDIR/<TYPE>.fromsrc.bin         ds4_quantize_row() of it, <TYPE> in Q8_0 BF16 F16
 * and a manifest.txt listing every set: "dequant TYPE SOURCE N" and
 * "quant TYPE N". All files are little-endian raw arrays, no headers.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fp16.h"
#include "quant.h"

static uint64_t rng_state;

static uint64_t rng_u64(void) { /* splitmix64 */
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double rng_unit(void) { return ((rng_u64() >> 11) + 0.5) * (1.0 / 9007199254740992.0); }

static float rng_gauss(void) {
    const double u = rng_unit(), v = rng_unit();
    return (float)(sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v));
}

/* ±(1e-3 .. 1), f16; sometimes a subnormal or zero to cover those paths. */
static uint16_t sane_f16(void) {
    const uint64_t r = rng_u64();
    uint16_t h;
    if ((r & 31) == 0)
        h = (uint16_t)(r >> 8) & 0x03ff; /* subnormal or zero */
    else
        h = ds4_fp32_to_fp16((float)exp(-6.9 * rng_unit()));
    return (uint16_t)(h | ((r >> 40) & 1 ? 0x8000 : 0));
}

static void random_blocks(ds4_dtype type, uint8_t *dst, int64_t n) {
    const size_t bytes = ds4_quant_row_size(type, n);
    for (size_t i = 0; i < bytes; i++) dst[i] = (uint8_t)rng_u64();
    const int64_t nb = n / ds4_dtype_info(type)->block_elems;
    for (int64_t i = 0; i < nb; i++) {
        switch (type) {
        case DS4_TYPE_Q8_0: ((ds4_block_q8_0 *)dst)[i].d = sane_f16(); break;
        case DS4_TYPE_Q2_K:
            ((ds4_block_q2_k *)dst)[i].d = sane_f16();
            ((ds4_block_q2_k *)dst)[i].dmin = sane_f16();
            break;
        case DS4_TYPE_Q4_K:
            ((ds4_block_q4_k *)dst)[i].d = sane_f16();
            ((ds4_block_q4_k *)dst)[i].dmin = sane_f16();
            break;
        case DS4_TYPE_IQ2_XXS: ((ds4_block_iq2_xxs *)dst)[i].d = sane_f16(); break;
        case DS4_TYPE_F32: { /* finite random floats, a wide exponent range */
            float v = (float)(rng_gauss() * exp(20.0 * (rng_unit() - 0.5)));
            memcpy(dst + 4 * i, &v, 4);
            break;
        }
        default: break; /* F16/BF16: every bit pattern is fair */
        }
    }
}

static int write_file(const char *dir, const char *name, const void *data, size_t bytes) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, bytes, f) != bytes || fclose(f) != 0) {
        fprintf(stderr, "quant_dump: cannot write %s\n", path);
        return -1;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: quant_dump OUTDIR [SEED]\n");
        return 2;
    }
    const char *dir = argv[1];
    rng_state = argc > 2 ? strtoull(argv[2], NULL, 10) : 20240531;

    const ds4_dtype types[] = {DS4_TYPE_F32,  DS4_TYPE_F16,  DS4_TYPE_BF16,   DS4_TYPE_Q8_0,
                               DS4_TYPE_Q2_K, DS4_TYPE_Q4_K, DS4_TYPE_IQ2_XXS};
    const int64_t n = 64 * 256; /* 64 super-blocks, 512 Q8_0 blocks */
    uint8_t *blocks = malloc((size_t)n * 4);
    float *src = malloc(sizeof(float) * n), *ref = malloc(sizeof(float) * n), *simd = malloc(sizeof(float) * n);
    float *imp = malloc(sizeof(float) * n);
    char manifest[8192] = "", name[256];
    if (!blocks || !src || !ref || !simd || !imp) return 1;

    for (size_t t = 0; t < sizeof types / sizeof types[0]; t++) {
        const ds4_dtype type = types[t];
        const char *tn = ds4_dtype_name(type);
        const size_t bytes = ds4_quant_row_size(type, n);
        for (int source = 0; source < 2; source++) {
            if (source == 0) {
                random_blocks(type, blocks, n);
            } else {
                for (int64_t i = 0; i < n; i++) {
                    src[i] = rng_gauss() * (float)exp(2.0 * (rng_unit() - 0.5));
                    imp[i] = (float)exp(rng_gauss());
                }
                for (int64_t i = 0; i < 256; i++) src[i] = 0.0f; /* one all-zero super-block */
                ds4_quantize_row(type, src, blocks, n, type == DS4_TYPE_IQ2_XXS ? imp : NULL);
            }
            ds4_dequantize_row_ref(type, blocks, ref, n);
            ds4_dequantize_row(type, blocks, simd, n);
            const char *sn = source ? "quant" : "random";
            snprintf(name, sizeof name, "%s.%s.bin", tn, sn);
            if (write_file(dir, name, blocks, bytes)) return 1;
            snprintf(name, sizeof name, "%s.%s.ref.f32", tn, sn);
            if (write_file(dir, name, ref, sizeof(float) * n)) return 1;
            snprintf(name, sizeof name, "%s.%s.simd.f32", tn, sn);
            if (write_file(dir, name, simd, sizeof(float) * n)) return 1;
            snprintf(manifest + strlen(manifest), sizeof manifest - strlen(manifest), "dequant %s %s %lld\n", tn, sn,
                     (long long)n);
        }
    }

    /* Quantization where gguf has its own implementation. */
    for (int64_t i = 0; i < n; i++) src[i] = rng_gauss() * (float)exp(4.0 * (rng_unit() - 0.5));
    for (int64_t i = 0; i < 32; i++) src[i] = 0.0f;            /* zero Q8_0 block */
    for (int64_t i = 32; i < 64; i++) src[i] = (float)(i - 48); /* integers: exact x/d ties */
    src[100] = 1e30f;                                           /* f16 overflow */
    src[101] = -1e-30f;                                         /* underflow */
    src[102] = 65520.0f;                                        /* f16 rounding tie to inf */
    src[103] = 1.00048828125f;                                  /* f16 tie to even */
    if (write_file(dir, "src.f32", src, sizeof(float) * n)) return 1;
    const ds4_dtype qtypes[] = {DS4_TYPE_Q8_0, DS4_TYPE_BF16, DS4_TYPE_F16};
    for (size_t t = 0; t < 3; t++) {
        const size_t bytes = ds4_quantize_row(qtypes[t], src, blocks, n, NULL);
        snprintf(name, sizeof name, "%s.fromsrc.bin", ds4_dtype_name(qtypes[t]));
        if (!bytes || write_file(dir, name, blocks, bytes)) return 1;
        snprintf(manifest + strlen(manifest), sizeof manifest - strlen(manifest), "quant %s %lld\n",
                 ds4_dtype_name(qtypes[t]), (long long)n);
    }
    if (write_file(dir, "manifest.txt", manifest, strlen(manifest))) return 1;
    printf("quant_dump: wrote %s (SIMD path: %s)\n", dir, ds4_quant_simd_name());
    free(blocks);
    free(src);
    free(ref);
    free(simd);
    free(imp);
    return 0;
}

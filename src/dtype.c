/* dtype.c - the table of ggml element types (names and block geometry). */
#include "dtype.h"

#include <strings.h>

static const ds4_dtype_traits dtype_table[DS4_TYPE_COUNT] = {
    [DS4_TYPE_F32] = {"F32", 1, 4},         [DS4_TYPE_F16] = {"F16", 1, 2},
    [DS4_TYPE_Q4_0] = {"Q4_0", 32, 18},     [DS4_TYPE_Q4_1] = {"Q4_1", 32, 20},
    [DS4_TYPE_Q5_0] = {"Q5_0", 32, 22},     [DS4_TYPE_Q5_1] = {"Q5_1", 32, 24},
    [DS4_TYPE_Q8_0] = {"Q8_0", 32, 34},     [DS4_TYPE_Q8_1] = {"Q8_1", 32, 36},
    [DS4_TYPE_Q2_K] = {"Q2_K", 256, 84},    [DS4_TYPE_Q3_K] = {"Q3_K", 256, 110},
    [DS4_TYPE_Q4_K] = {"Q4_K", 256, 144},   [DS4_TYPE_Q5_K] = {"Q5_K", 256, 176},
    [DS4_TYPE_Q6_K] = {"Q6_K", 256, 210},   [DS4_TYPE_Q8_K] = {"Q8_K", 256, 292},
    [DS4_TYPE_IQ2_XXS] = {"IQ2_XXS", 256, 66}, [DS4_TYPE_IQ2_XS] = {"IQ2_XS", 256, 74},
    [DS4_TYPE_IQ3_XXS] = {"IQ3_XXS", 256, 98}, [DS4_TYPE_IQ1_S] = {"IQ1_S", 256, 50},
    [DS4_TYPE_IQ4_NL] = {"IQ4_NL", 32, 18},  [DS4_TYPE_IQ3_S] = {"IQ3_S", 256, 110},
    [DS4_TYPE_IQ2_S] = {"IQ2_S", 256, 82},   [DS4_TYPE_IQ4_XS] = {"IQ4_XS", 256, 136},
    [DS4_TYPE_I8] = {"I8", 1, 1},            [DS4_TYPE_I16] = {"I16", 1, 2},
    [DS4_TYPE_I32] = {"I32", 1, 4},          [DS4_TYPE_I64] = {"I64", 1, 8},
    [DS4_TYPE_F64] = {"F64", 1, 8},          [DS4_TYPE_IQ1_M] = {"IQ1_M", 256, 56},
    [DS4_TYPE_BF16] = {"BF16", 1, 2},        [DS4_TYPE_TQ1_0] = {"TQ1_0", 256, 54},
    [DS4_TYPE_TQ2_0] = {"TQ2_0", 256, 66},
};

const ds4_dtype_traits *ds4_dtype_info(uint32_t type) {
    if (type >= DS4_TYPE_COUNT || dtype_table[type].name == NULL) return NULL;
    return &dtype_table[type];
}

const char *ds4_dtype_name(uint32_t type) {
    const ds4_dtype_traits *t = ds4_dtype_info(type);
    return t ? t->name : "?";
}

bool ds4_dtype_from_name(const char *name, ds4_dtype *out) {
    for (uint32_t i = 0; i < DS4_TYPE_COUNT; i++) {
        if (dtype_table[i].name && strcasecmp(dtype_table[i].name, name) == 0) {
            *out = (ds4_dtype)i;
            return true;
        }
    }
    return false;
}

bool ds4_dtype_nbytes(uint32_t type, uint64_t n_elems, uint64_t *out_bytes) {
    const ds4_dtype_traits *t = ds4_dtype_info(type);
    if (!t || n_elems % t->block_elems != 0) return false;
    uint64_t blocks = n_elems / t->block_elems;
    if (blocks > UINT64_MAX / t->block_bytes) return false;
    *out_bytes = blocks * t->block_bytes;
    return true;
}

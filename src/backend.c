/* backend.c - backend selection and the CPU backend (see backend.h).
 *
 * The CUDA backend lives in src/cuda/ and is linked only by `make cuda`. This
 * file refers to it through a weak symbol, so the CPU-only library needs no
 * CUDA headers, no define and no stub: when the CUDA objects are not linked
 * the symbol is NULL and "cuda" is reported as not built in.
 */
#include "backend.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool cpu_forward(ds4_session *s, const int32_t *tokens, uint32_t T, float *all_logits, char *err,
                        size_t errlen) {
    (void)err;
    (void)errlen;
    ds4_forward_chunk(s, tokens, T, all_logits);
    return true;
}

const ds4_backend ds4_backend_cpu = {
    .name = "cpu",
    .forward = cpu_forward,
};

/* Defined in src/cuda/cuda_backend.cu when linked in. */
__attribute__((weak)) const ds4_backend *ds4_cuda_backend_probe(char *err, size_t errlen);

const ds4_backend *ds4_backend_cuda_get(char *err, size_t errlen) {
    if (!ds4_cuda_backend_probe) {
        if (err && errlen) snprintf(err, errlen, "this build has no CUDA backend (build with `make cuda`)");
        return NULL;
    }
    return ds4_cuda_backend_probe(err, errlen);
}

const ds4_backend *ds4_backend_select(const char *name, char *err, size_t errlen) {
    if (!name || !*name || !strcmp(name, "auto")) {
        const char *env = getenv("DS4_BACKEND");
        if (env && *env && strcmp(env, "auto") != 0) return ds4_backend_select(env, err, errlen);
        char why[256];
        const ds4_backend *b = ds4_backend_cuda_get(why, sizeof why);
        return b ? b : &ds4_backend_cpu;
    }
    if (!strcmp(name, "cpu")) return &ds4_backend_cpu;
    if (!strcmp(name, "cuda")) return ds4_backend_cuda_get(err, errlen);
    if (err && errlen) snprintf(err, errlen, "unknown backend '%s' (expected cpu, cuda or auto)", name);
    return NULL;
}

/* bench_sampler.c - time of one sampling call over a DeepSeek-sized
 * vocabulary (129,280 logits), per setting. On a GPU a decode step takes
 * ~8 ms, so sampling must stay well below that.
 *
 *   build/bench/bench_sampler [vocab] [iterations]
 *
 * Logits: a peaked head over a long tail (a few tokens within ~2 of the
 * best, the rest Gumbel-spread well below), like an LLM's next-token
 * distribution; plus a flat vector (every token within 0.5), the worst case
 * for top-p. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "ds4.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static uint64_t st = 88172645463325252ull;
static double urand(void) {
    st ^= st << 13;
    st ^= st >> 7;
    st ^= st << 17;
    return (double)(st >> 11) / 9007199254740992.0;
}

int main(int argc, char **argv) {
    const unsigned V = argc > 1 ? (unsigned)atoi(argv[1]) : 129280;
    const int iters = argc > 2 ? atoi(argv[2]) : 200;
    float *peaked = malloc(V * sizeof *peaked), *flat = malloc(V * sizeof *flat);
    for (unsigned i = 0; i < V; i++) {
        peaked[i] = (float)(-8.0 - 3.0 * log(-log(urand() + 1e-12) + 1e-12));
        flat[i] = (float)(urand() * 0.5);
    }
    for (int k = 0; k < 8; k++) peaked[(unsigned)(urand() * V)] = (float)(10.0 - k * 0.3);
    const struct {
        const char *name;
        ds4_sampler_params p;
    } cases[] = {
        {"greedy", {.temperature = 0, .top_p = 1}},
        {"temperature 1", {.temperature = 1, .top_p = 1, .seed = 1}},
        {"top_k 40", {.temperature = 1, .top_k = 40, .top_p = 1, .seed = 1}},
        {"top_p 0.95", {.temperature = 1, .top_p = 0.95f, .seed = 1}},
        {"top_k 40 + top_p 0.95 + min_p 0.05", {.temperature = 0.7f, .top_k = 40, .top_p = 0.95f, .min_p = 0.05f, .seed = 1}},
    };
    printf("vocabulary %u, %d calls each (us per call)\n", V, iters);
    for (int f = 0; f < 2; f++) {
        const float *l = f ? flat : peaked;
        for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
            ds4_sampler *s = ds4_sampler_new(&cases[c].p);
            volatile int32_t sink = ds4_sampler_sample(s, l, V);
            const double t0 = now_s();
            for (int i = 0; i < iters; i++) sink += ds4_sampler_sample(s, l, V);
            const double us = (now_s() - t0) / iters * 1e6;
            (void)sink;
            printf("  %-6s %-36s %9.1f\n", f ? "flat" : "peaked", cases[c].name, us);
            ds4_sampler_free(s);
        }
    }
    free(peaked);
    free(flat);
    return 0;
}

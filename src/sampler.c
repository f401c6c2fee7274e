/* sampler.c - next-token sampling: greedy, temperature, top-k, top-p, min-p,
 * with a seeded xorshift64* generator so a seed always gives the same tokens.
 *
 * Order of operations: candidates = all tokens (or the top_k best); weights
 * exp((logit - max) / T); drop candidates whose weight is below min_p times
 * the best one; with top_p < 1 keep the smallest prefix (by logit, ties to
 * the lower id) whose normalised mass reaches top_p; draw proportionally.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ds4.h"

struct ds4_sampler {
    ds4_sampler_params p;
    uint64_t state;
    uint32_t cap;
    uint32_t *idx;
    float *w;
};

ds4_sampler *ds4_sampler_new(const ds4_sampler_params *p) {
    ds4_sampler *s = calloc(1, sizeof *s);
    s->p = *p;
    s->state = p->seed ? p->seed : 0x9E3779B97F4A7C15ull;
    return s;
}

void ds4_sampler_free(ds4_sampler *s) {
    if (!s) return;
    free(s->idx);
    free(s->w);
    free(s);
}

static uint64_t next_u64(ds4_sampler *s) {
    uint64_t x = s->state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    s->state = x;
    return x * 0x2545F4914F6CDD1Dull;
}

static float next_uniform(ds4_sampler *s) { return (float)(next_u64(s) >> 40) / 16777216.0f; }

static int by_logit_desc(const void *a, const void *b, void *ctx) {
    const float *logits = ctx;
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    float lx = logits[x], ly = logits[y];
    if (lx != ly) return lx > ly ? -1 : 1;
    return x < y ? -1 : 1;
}

int32_t ds4_sampler_sample(ds4_sampler *s, const float *logits, uint32_t n_vocab) {
    uint32_t best = 0;
    for (uint32_t i = 1; i < n_vocab; i++)
        if (logits[i] > logits[best]) best = i;
    if (s->p.temperature <= 0 || n_vocab == 1) return (int32_t)best;
    if (s->cap < n_vocab) {
        s->idx = realloc(s->idx, n_vocab * sizeof(uint32_t));
        s->w = realloc(s->w, n_vocab * sizeof(float));
        s->cap = n_vocab;
    }
    uint32_t n = n_vocab;
    for (uint32_t i = 0; i < n; i++) s->idx[i] = i;
    bool sorted = false;
    if ((s->p.top_k > 0 && (uint32_t)s->p.top_k < n_vocab) || s->p.top_p < 1.0f) {
        qsort_r(s->idx, n, sizeof(uint32_t), by_logit_desc, (void *)logits);
        sorted = true;
        if (s->p.top_k > 0 && (uint32_t)s->p.top_k < n) n = (uint32_t)s->p.top_k;
    }
    const float mx = logits[best], invT = 1.0f / s->p.temperature;
    double total = 0;
    uint32_t kept = 0;
    for (uint32_t i = 0; i < n; i++) {
        float w = expf((logits[s->idx[i]] - mx) * invT);
        if (s->p.min_p > 0 && w < s->p.min_p) continue; /* the best token has weight 1 */
        s->idx[kept] = s->idx[i];
        s->w[kept++] = w;
        total += w;
    }
    if (sorted && s->p.top_p < 1.0f) {
        double cum = 0;
        uint32_t k = 0;
        while (k < kept) {
            cum += s->w[k++];
            if (cum >= s->p.top_p * total) break;
        }
        kept = k;
        total = cum;
    }
    double r = next_uniform(s) * total, acc = 0;
    for (uint32_t i = 0; i < kept; i++) {
        acc += s->w[i];
        if (r < acc) return (int32_t)s->idx[i];
    }
    return (int32_t)s->idx[kept ? kept - 1 : 0];
}

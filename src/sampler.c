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

/* Sorting the whole vocabulary for top-k / top-p costs ~10 ms at 129k
 * tokens, more than a CUDA decode step. Only a prefix of that order can be
 * kept, so the tokens with weight >= tau (tau = 1e-4, then smaller) are
 * gathered first: that set is upward closed in weight, hence in logit, so its
 * sorted order is exactly the first |set| positions of the full order. tau
 * drops until the set holds top_k tokens and (top-p) mass >= top_p * total,
 * or everything. */
/* Moves the k first tokens of the logit order (ties: lower id) to
 * idx[0..k), in no particular order: quickselect, O(n) on average. */
static void select_top(uint32_t *idx, uint32_t n, uint32_t k, const float *logits) {
    uint32_t lo = 0, hi = n; /* the k-th position lies in [lo, hi) */
    uint64_t r = 0x9E3779B97F4A7C15ull;
    while (hi - lo > 1) {
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        const uint32_t pv = idx[lo + (uint32_t)((r >> 33) % (hi - lo))];
        /* three-way split of [lo, hi): before pv | pv | after pv (a strict order: no equal keys) */
        uint32_t a = lo, b = hi;
        for (uint32_t i = lo; i < b;) {
            const int c = by_logit_desc(&idx[i], &pv, (void *)logits);
            if (c < 0) {
                const uint32_t t = idx[a];
                idx[a++] = idx[i];
                idx[i++] = t;
            } else if (c > 0) {
                const uint32_t t = idx[--b];
                idx[b] = idx[i];
                idx[i] = t;
            } else {
                i++;
            }
        }
        /* [lo, a): before pv, [a, b): pv itself, [b, hi): after */
        if (k <= a) hi = a;
        else if (k >= b) lo = b;
        else return;
    }
}

int32_t ds4_sampler_sample(ds4_sampler *s, const float *logits, uint32_t n_vocab) {
    uint32_t best = 0;
    float bv = logits[0];
    for (uint32_t i = 1; i < n_vocab; i++)
        if (logits[i] > bv) {
            bv = logits[i];
            best = i;
        }
    if (s->p.temperature <= 0 || n_vocab == 1) return (int32_t)best;
    if (s->cap < n_vocab) {
        s->idx = realloc(s->idx, n_vocab * sizeof(uint32_t));
        s->w = realloc(s->w, n_vocab * sizeof(float));
        s->cap = n_vocab;
    }
    const float mx = logits[best], invT = 1.0f / s->p.temperature;
    const bool use_k = s->p.top_k > 0 && (uint32_t)s->p.top_k < n_vocab, use_p = s->p.top_p < 1.0f;
    /* candidates in id order: min_p drops weights below min_p (the best has 1) */
    uint32_t nc = 0;
    double all = 0;
    for (uint32_t i = 0; i < n_vocab; i++) {
        const float w = expf((logits[i] - mx) * invT);
        if (s->p.min_p > 0 && w < s->p.min_p) continue;
        s->idx[nc] = i;
        s->w[nc++] = w;
        all += w;
    }
    if (!nc) return (int32_t)best; /* min_p > 1 leaves nothing: the best token */
    uint32_t kept = nc;
    double total = all;
    if (use_k || use_p) {
        const uint32_t need_k = use_k ? (uint32_t)s->p.top_k : 0;
        static const float taus[] = {1e-4f, 1e-8f, 1e-16f, 1e-32f, 0.0f};
        uint32_t ns = 0;
        for (size_t ti = 0; ti < sizeof taus / sizeof taus[0]; ti++) {
            double mass = 0;
            ns = 0;
            for (uint32_t c = 0; c < nc; c++)
                if (s->w[c] >= taus[ti]) {
                    ns++;
                    mass += s->w[c];
                }
            const bool enough_k = !use_k || ns >= need_k, enough_p = use_k || !use_p || mass >= s->p.top_p * all;
            if ((enough_k && enough_p) || ns == nc) {
                /* move the set to the front (stable: ids ascending) */
                uint32_t o = 0;
                for (uint32_t c = 0; c < nc; c++)
                    if (s->w[c] >= taus[ti]) s->idx[o++] = s->idx[c];
                break;
            }
        }
        kept = use_k && need_k < ns ? need_k : ns;
        if (kept < ns) select_top(s->idx, ns, kept, logits); /* top-k: only the first k need an order */
        qsort_r(s->idx, kept, sizeof(uint32_t), by_logit_desc, (void *)logits);
        total = 0;
        for (uint32_t k = 0; k < kept; k++) {
            s->w[k] = expf((logits[s->idx[k]] - mx) * invT);
            total += s->w[k];
        }
        if (!use_k) total = all; /* top-p alone: the mass of every candidate */
        if (use_p) {
            double cum = 0;
            uint32_t k = 0;
            while (k < kept) {
                cum += s->w[k++];
                if (cum >= s->p.top_p * total) break;
            }
            kept = k;
            total = cum;
        }
    }
    double r = next_uniform(s) * total, acc = 0;
    for (uint32_t i = 0; i < kept; i++) {
        acc += s->w[i];
        if (r < acc) return (int32_t)s->idx[i];
    }
    return (int32_t)s->idx[kept ? kept - 1 : 0];
}

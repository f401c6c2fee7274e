/* test_sampler.c - next-token sampling: greedy, the seeded generator,
 * top-k / top-p / min-p semantics on hand-made distributions, draw
 * frequencies against the exact probabilities, and the fast candidate
 * selection against a full-sort oracle (the definition in sampler.c's header
 * comment, written out plainly) on thousands of random logit vectors. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ds4.h"

/* ------------------------------------------------------------------------ */
/* oracle: sort everything by logit (ties to the lower id), keep the top_k,
 * drop weights below min_p, keep the top_p prefix, draw with the same
 * xorshift64* stream as the sampler */

typedef struct {
    uint64_t state;
} oracle_rng;

static float oracle_uniform(oracle_rng *g) {
    uint64_t x = g->state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    g->state = x;
    return (float)((x * 0x2545F4914F6CDD1Dull) >> 40) / 16777216.0f;
}

static const float *g_logits;
static int by_logit(const void *a, const void *b) {
    const uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    if (g_logits[x] != g_logits[y]) return g_logits[x] > g_logits[y] ? -1 : 1;
    return x < y ? -1 : 1;
}

static int32_t oracle_sample(const ds4_sampler_params *p, oracle_rng *g, const float *logits, uint32_t n) {
    uint32_t best = 0;
    for (uint32_t i = 1; i < n; i++)
        if (logits[i] > logits[best]) best = i;
    if (p->temperature <= 0 || n == 1) return (int32_t)best;
    uint32_t *idx = malloc(n * sizeof *idx);
    float *w = malloc(n * sizeof *w);
    for (uint32_t i = 0; i < n; i++) idx[i] = i;
    g_logits = logits;
    /* without top-k / top-p the draw walks the tokens in id order */
    const bool sorted = (p->top_k > 0 && (uint32_t)p->top_k < n) || p->top_p < 1.0f;
    if (sorted) qsort(idx, n, sizeof *idx, by_logit);
    uint32_t m = p->top_k > 0 && (uint32_t)p->top_k < n ? (uint32_t)p->top_k : n, kept = 0;
    double total = 0;
    for (uint32_t i = 0; i < m; i++) {
        const float wi = expf((logits[idx[i]] - logits[best]) * (1.0f / p->temperature));
        if (p->min_p > 0 && wi < p->min_p) continue;
        idx[kept] = idx[i];
        w[kept++] = wi;
        total += wi;
    }
    if (p->top_p < 1.0f) {
        double cum = 0;
        uint32_t k = 0;
        while (k < kept) {
            cum += w[k++];
            if (cum >= p->top_p * total) break;
        }
        kept = k;
        total = cum;
    }
    double r = oracle_uniform(g) * total, acc = 0;
    int32_t out = (int32_t)idx[kept ? kept - 1 : 0];
    for (uint32_t i = 0; i < kept; i++) {
        acc += w[i];
        if (r < acc) {
            out = (int32_t)idx[i];
            break;
        }
    }
    free(idx);
    free(w);
    return out;
}

/* ------------------------------------------------------------------------ */

static uint64_t rng_state = 0x1234567u;
static double urand(void) {
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(rng_state >> 11) / 9007199254740992.0;
}

static void test_greedy(void **state) {
    (void)state;
    const float l[6] = {0.5f, 3.0f, -1.0f, 3.0f, 2.9f, 0.0f};
    ds4_sampler *s = ds4_sampler_new(&(ds4_sampler_params){.temperature = 0, .top_p = 1});
    for (int i = 0; i < 10; i++) assert_int_equal(ds4_sampler_sample(s, l, 6), 1); /* first max wins */
    ds4_sampler_free(s);
    /* top_k = 1 and a tiny top_p reduce to the best token (ties: the lower
     * id comes first); min_p = 1 keeps every token of weight 1: both tied */
    const ds4_sampler_params ps[3] = {{.temperature = 1.5f, .top_k = 1, .top_p = 1, .seed = 3},
                                      {.temperature = 1.5f, .top_p = 1e-6f, .seed = 4},
                                      {.temperature = 1.5f, .top_p = 1, .min_p = 1.0f, .seed = 5}};
    for (int k = 0; k < 3; k++) {
        s = ds4_sampler_new(&ps[k]);
        int seen[6] = {0};
        for (int i = 0; i < 200; i++) {
            const int32_t t = ds4_sampler_sample(s, l, 6);
            assert_true(t == 1 || (k == 2 && t == 3));
            seen[t]++;
        }
        if (k == 2) assert_true(seen[1] > 50 && seen[3] > 50);
        ds4_sampler_free(s);
    }
    /* min_p above 1 keeps nothing: the best token, not garbage */
    s = ds4_sampler_new(&(ds4_sampler_params){.temperature = 1, .top_p = 0.9f, .min_p = 2.0f, .seed = 1});
    for (int i = 0; i < 10; i++) assert_int_equal(ds4_sampler_sample(s, l, 6), 1);
    ds4_sampler_free(s);
}

static void test_seeds(void **state) {
    (void)state;
    enum { V = 1000, N = 64 };
    float *l = malloc(V * sizeof *l);
    for (int i = 0; i < V; i++) l[i] = (float)(urand() * 4.0);
    int32_t a[N], b[N], c[N];
    const ds4_sampler_params p = {.temperature = 1, .top_k = 50, .top_p = 0.95f, .seed = 42};
    ds4_sampler *s1 = ds4_sampler_new(&p), *s2 = ds4_sampler_new(&p);
    ds4_sampler_params q = p;
    q.seed = 43;
    ds4_sampler *s3 = ds4_sampler_new(&q);
    for (int i = 0; i < N; i++) {
        a[i] = ds4_sampler_sample(s1, l, V);
        b[i] = ds4_sampler_sample(s2, l, V);
        c[i] = ds4_sampler_sample(s3, l, V);
    }
    assert_memory_equal(a, b, sizeof a);
    assert_memory_not_equal(a, c, sizeof a);
    ds4_sampler_free(s1);
    ds4_sampler_free(s2);
    ds4_sampler_free(s3);
    free(l);
}

/* draws from probabilities 0.5 / 0.3 / 0.15 / 0.05 (logits = log p, T = 1) */
static void test_frequencies(void **state) {
    (void)state;
    const double pr[4] = {0.5, 0.3, 0.15, 0.05};
    float l[4];
    for (int i = 0; i < 4; i++) l[i] = (float)log(pr[i]);
    const struct {
        ds4_sampler_params p;
        double expect[4];
    } cases[] = {
        {{.temperature = 1, .top_p = 1, .seed = 7}, {0.5, 0.3, 0.15, 0.05}},
        {{.temperature = 1, .top_p = 0.75f, .seed = 8}, {0.625, 0.375, 0, 0}},          /* 0.5 + 0.3 passes 0.75 */
        {{.temperature = 1, .top_k = 3, .top_p = 1, .seed = 9}, {0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0}},
        {{.temperature = 1, .top_p = 1, .min_p = 0.5f, .seed = 10}, {0.625, 0.375, 0, 0}}, /* 0.3 / 0.5 >= 0.5 */
        {{.temperature = 1, .top_k = 3, .top_p = 0.6f, .seed = 11}, {0.625, 0.375, 0, 0}}, /* 0.5/0.95 < 0.6 */
    };
    enum { N = 200000 };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        ds4_sampler *s = ds4_sampler_new(&cases[c].p);
        int cnt[4] = {0};
        for (int i = 0; i < N; i++) {
            const int32_t t = ds4_sampler_sample(s, l, 4);
            assert_true(t >= 0 && t < 4);
            cnt[t]++;
        }
        for (int k = 0; k < 4; k++) {
            const double f = (double)cnt[k] / N, e = cases[c].expect[k];
            /* 5 standard deviations of a binomial share, and exact zeros */
            const double tol = 5 * sqrt(e * (1 - e) / N) + 1e-9;
            if (fabs(f - e) > tol) fail_msg("case %zu token %d: frequency %.4f, expected %.4f", c, k, f, e);
        }
        ds4_sampler_free(s);
    }
}

/* the fast candidate selection picks what a full sort picks: same token for
 * the same seed, over random vocabularies, temperatures and filters (peaked,
 * flat and tied logits, including 129,280-token vocabularies) */
static void test_against_full_sort(void **state) {
    (void)state;
    int cases = 0;
    for (int it = 0; it < 600; it++) {
        const uint32_t n = it % 50 == 0 ? 129280 : 1 + (uint32_t)(urand() * 3000);
        float *l = malloc(n * sizeof *l);
        const int shape = it % 4;
        for (uint32_t i = 0; i < n; i++) {
            double v = shape == 0   ? urand() * 30.0                          /* peaked */
                       : shape == 1 ? urand() * 0.5                           /* nearly flat */
                       : shape == 2 ? floor(urand() * 8.0)                    /* many ties */
                                    : -log(-log(urand() + 1e-12) + 1e-12) * 3; /* gumbel-like tail */
            l[i] = (float)v;
        }
        ds4_sampler_params p = {.temperature = (float)(0.2 + urand() * 2.0), .top_p = 1, .seed = 1000 + (uint64_t)it};
        if (urand() < 0.6) p.top_k = 1 + (int)(urand() * (urand() < 0.5 ? 40 : n));
        if (urand() < 0.7) p.top_p = (float)(0.05 + urand() * 0.94);
        if (urand() < 0.4) p.min_p = (float)(urand() * 0.2);
        ds4_sampler *s = ds4_sampler_new(&p);
        oracle_rng g = {p.seed};
        for (int d = 0; d < 8; d++) {
            const int32_t want = oracle_sample(&p, &g, l, n), got = ds4_sampler_sample(s, l, n);
            if (want != got)
                fail_msg("case %d draw %d (n %u, T %.3f, top_k %d, top_p %.3f, min_p %.3f): %d, full sort %d", it, d, n,
                         p.temperature, p.top_k, p.top_p, p.min_p, got, want);
            cases++;
        }
        ds4_sampler_free(s);
        free(l);
    }
    assert_int_equal(cases, 4800);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_greedy),
        cmocka_unit_test(test_seeds),
        cmocka_unit_test(test_frequencies),
        cmocka_unit_test(test_against_full_sort),
    };
    return cmocka_run_group_tests_name("sampler", tests, NULL, NULL);
}

/* moe.c - router, routed experts and shared expert (see moe.h).
 *
 * Routing: probabilities π_e = sqrt(softplus(router · f)). Hash layers take
 * the experts listed for the input token in tid2eid; other layers the top-k
 * of π + bias (ties to the lower expert id). Either way the weights are the
 * chosen π renormalised to sum 1 (when expert_weights_norm) times
 * expert_weights_scale.
 *
 * Execution groups the chunk's tokens by expert, so each selected expert's
 * weights are read once per chunk however many tokens chose it:
 *   h = silu(min(gate·x, c)) * clamp(up·x, -c, c) * weight;  y += down·h
 * with c the layer's swiglu clamp. The shared expert is the same SwiGLU with
 * weight 1 over every token.
 */
#include "moe.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ops.h"

void ds4_moe_route(const ds4_hparams *hp, const ds4_layer *L, uint32_t il, int32_t token, const float *router_logits,
                   int32_t *ids, float *weights) {
    const uint32_t X = hp->n_expert, K = hp->n_expert_used;
    float prob[X];
    for (uint32_t e = 0; e < X; e++) prob[e] = sqrtf(ds4_softplus(router_logits[e]));
    if (ds4_layer_is_hash(hp, il)) {
        for (uint32_t i = 0; i < K; i++) ids[i] = L->tid2eid[(size_t)token * K + i];
    } else {
        bool taken[X];
        memset(taken, 0, sizeof taken);
        for (uint32_t i = 0; i < K; i++) {
            int32_t best = -1;
            float bv = -INFINITY;
            for (uint32_t e = 0; e < X; e++) {
                if (taken[e]) continue;
                float v = prob[e] + (L->expert_bias ? L->expert_bias[e] : 0.0f);
                if (best < 0 || v > bv) {
                    best = (int32_t)e;
                    bv = v;
                }
            }
            taken[best] = true;
            ids[i] = best;
        }
    }
    float sum = 0;
    for (uint32_t i = 0; i < K; i++) sum += (weights[i] = prob[ids[i]]);
    const float norm = hp->expert_weights_norm ? 1.0f / (sum + 1e-20f) : 1.0f;
    for (uint32_t i = 0; i < K; i++) weights[i] *= norm * (float)hp->expert_weights_scale;
}

/* h[t] = silu(min(g, c)) * clamp(u, -c, c) * w[t] over [n][F] rows, in g. */
static void swiglu_clamped(float *g, const float *u, const float *w, uint32_t n, uint32_t F, float c) {
    for (uint32_t t = 0; t < n; t++)
        for (uint32_t i = 0; i < F; i++) {
            float gv = fminf(g[(size_t)t * F + i], c);
            float uv = fminf(fmaxf(u[(size_t)t * F + i], -c), c);
            g[(size_t)t * F + i] = ds4_silu(gv) * uv * (w ? w[t] : 1.0f);
        }
}

void ds4_moe_forward(ds4_pool *pool, const ds4_hparams *hp, const ds4_layer *L, uint32_t il, const int32_t *tokens,
                     const float *f, uint32_t T, float *y) {
    const uint32_t E = hp->n_embd, X = hp->n_expert, K = hp->n_expert_used, F = hp->n_ff_exp;
    const float clamp = hp->swiglu_clamp[il];
    float *logits = malloc((size_t)T * X * sizeof(float));
    ds4_matmul(pool, &L->router, 0, f, (int)T, logits);
    int32_t *ids = malloc((size_t)T * K * sizeof(int32_t));
    float *wts = malloc((size_t)T * K * sizeof(float));
    for (uint32_t t = 0; t < T; t++)
        ds4_moe_route(hp, L, il, tokens[t], logits + (size_t)t * X, ids + (size_t)t * K, wts + (size_t)t * K);

    /* shared expert over all tokens initialises y */
    /* an expert can appear more than once for a token (a hash table may repeat
     * ids), so per-expert buffers hold up to T*K rows */
    const size_t cap = (size_t)T * K;
    float *g = malloc(cap * F * sizeof(float)), *u = malloc(cap * F * sizeof(float));
    ds4_matmul(pool, &L->gate_sh, 0, f, (int)T, g);
    ds4_matmul(pool, &L->up_sh, 0, f, (int)T, u);
    swiglu_clamped(g, u, NULL, T, F, clamp);
    ds4_matmul(pool, &L->down_sh, 0, g, (int)T, y);

    /* routed experts, tokens grouped by expert */
    uint32_t *count = calloc(X, sizeof(uint32_t));
    for (uint32_t i = 0; i < T * K; i++) count[ids[i]]++;
    uint32_t *tok = malloc(cap * sizeof(uint32_t));
    float *tw = malloc(cap * sizeof(float));
    float *xe = malloc(cap * E * sizeof(float)), *ye = malloc(cap * E * sizeof(float));
    for (uint32_t e = 0; e < X; e++) {
        if (!count[e]) continue;
        uint32_t n = 0;
        for (uint32_t t = 0; t < T; t++)
            for (uint32_t k = 0; k < K; k++)
                if (ids[(size_t)t * K + k] == (int32_t)e) {
                    tok[n] = t;
                    tw[n] = wts[(size_t)t * K + k];
                    memcpy(xe + (size_t)n * E, f + (size_t)t * E, E * sizeof(float));
                    n++;
                }
        ds4_matmul(pool, &L->gate_exps, e, xe, (int)n, g);
        ds4_matmul(pool, &L->up_exps, e, xe, (int)n, u);
        swiglu_clamped(g, u, tw, n, F, clamp);
        ds4_matmul(pool, &L->down_exps, e, g, (int)n, ye);
        for (uint32_t i = 0; i < n; i++) {
            float *yt = y + (size_t)tok[i] * E;
            const float *src = ye + (size_t)i * E;
            for (uint32_t d = 0; d < E; d++) yt[d] += src[d];
        }
    }
    free(count);
    free(tok);
    free(tw);
    free(xe);
    free(ye);
    free(g);
    free(u);
    free(ids);
    free(wts);
    free(logits);
}

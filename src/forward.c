/* forward.c - the DeepSeek V4 Flash forward pass on the CPU.
 *
 * One call runs a chunk of T tokens (T = 1 is a decode step) layer by layer:
 * every projection is one matrix product over the T tokens; then the state
 * updates that are sequential by nature (raw window ring, compressor windows)
 * run token by token in position order; then attention runs for every
 * (token, head) in parallel, each query seeing exactly what it would see in
 * token-by-token decoding (the raw rows of its own window, the compressed rows
 * closed before it, the indexer's top-k among them). A token's result does
 * not depend on the chunk it is in.
 *
 * Per layer, with HC state R [T][C][E] (C residual streams):
 *   attention: HC pre -> attn_norm -> q (low rank, q_a_norm, per-head norm)
 *              and kv (kv_norm) -> RoPE -> raw ring (+ FP8/F16 simulation)
 *              -> compressor(s) -> indexer top-k -> attention with sinks
 *              -> inverse RoPE -> grouped output -> HC post
 *   FFN:       HC pre -> ffn_norm -> router -> routed experts + shared expert
 *              (clamped SwiGLU) -> HC post
 * and at the end the HC head, output_norm and the LM head.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "compressor.h"
#include "engine.h"
#include "moe.h"
#include "ops.h"

/* ------------------------------------------------------------------------ */
/* hyper-connections */

typedef struct {
    float *pre;  /* [T][C] */
    float *post; /* [T][C] */
    float *comb; /* [T][C][C]: comb[a][b] weights source stream a into destination b */
} hc_weights;

/* Split the M = (2+C)*C mixing values of one token into pre / post / comb
 * (comb projected by Sinkhorn onto doubly-stochastic matrices). */
void ds4_hc_split(const float *mix, const float *scale, const float *base, uint32_t C, uint32_t iters, float eps,
                  float *pre, float *post, float *comb) {
    for (uint32_t i = 0; i < C; i++) {
        pre[i] = ds4_sigmoid(mix[i] * scale[0] + base[i]) + eps;
        post[i] = 2.0f * ds4_sigmoid(mix[C + i] * scale[1] + base[C + i]);
    }
    for (uint32_t a = 0; a < C; a++) { /* softmax along b, plus eps */
        float *row = comb + a * C;
        float m = -INFINITY;
        for (uint32_t b = 0; b < C; b++) {
            row[b] = mix[2 * C + a * C + b] * scale[2] + base[2 * C + a * C + b];
            m = fmaxf(m, row[b]);
        }
        float s = 0;
        for (uint32_t b = 0; b < C; b++) s += (row[b] = expf(row[b] - m));
        for (uint32_t b = 0; b < C; b++) row[b] = row[b] / s + eps;
    }
    for (uint32_t it = 0; it < iters; it++) {
        if (it > 0)
            for (uint32_t a = 0; a < C; a++) { /* rows */
                float s = eps;
                for (uint32_t b = 0; b < C; b++) s += comb[a * C + b];
                for (uint32_t b = 0; b < C; b++) comb[a * C + b] /= s;
            }
        for (uint32_t b = 0; b < C; b++) { /* columns */
            float s = eps;
            for (uint32_t a = 0; a < C; a++) s += comb[a * C + b];
            for (uint32_t a = 0; a < C; a++) comb[a * C + b] /= s;
        }
    }
}

/* HC pre for T tokens: mixing weights from the normalised flat state, and the
 * collapsed sublayer input x[t] = Σ_h pre[h] R[t][h]. */
static void hc_pre(ds4_model *m, const ds4_weight *fn, const float *scale, const float *base, const float *R, uint32_t T,
                   hc_weights *hw, float *x) {
    const ds4_hparams *hp = m->hp;
    const uint32_t C = hp->n_hc, E = hp->n_embd, M = (2 + C) * C;
    if (T == 0) return;
    float *flat = malloc((size_t)T * C * E * sizeof(float));
    float *mix = malloc((size_t)T * M * sizeof(float));
    for (uint32_t t = 0; t < T; t++)
        ds4_rmsnorm(flat + (size_t)t * C * E, R + (size_t)t * C * E, NULL, (int)(C * E), (float)hp->rms_eps);
    ds4_matmul(m->pool, fn, 0, flat, (int)T, mix);
    for (uint32_t t = 0; t < T; t++) {
        ds4_hc_split(mix + (size_t)t * M, scale, base, C, hp->hc_sinkhorn_iter, (float)hp->hc_eps, hw->pre + t * C,
                 hw->post + t * C, hw->comb + (size_t)t * C * C);
        const float *Rt = R + (size_t)t * C * E;
        float *xt = x + (size_t)t * E;
        for (uint32_t e = 0; e < E; e++) {
            float s = 0;
            for (uint32_t h = 0; h < C; h++) s += hw->pre[t * C + h] * Rt[h * E + e];
            xt[e] = s;
        }
    }
    free(flat);
    free(mix);
}

/* HC post: R'[b] = post[b]·y + Σ_a comb[a][b]·R[a], in place. */
static void hc_post(const ds4_hparams *hp, float *R, const float *y, const hc_weights *hw, uint32_t T) {
    const uint32_t C = hp->n_hc, E = hp->n_embd;
    float *old = malloc((size_t)C * E * sizeof(float));
    for (uint32_t t = 0; t < T; t++) {
        float *Rt = R + (size_t)t * C * E;
        const float *yt = y + (size_t)t * E, *comb = hw->comb + (size_t)t * C * C;
        memcpy(old, Rt, (size_t)C * E * sizeof(float));
        for (uint32_t b = 0; b < C; b++)
            for (uint32_t e = 0; e < E; e++) {
                float s = hw->post[t * C + b] * yt[e];
                for (uint32_t a = 0; a < C; a++) s += comb[a * C + b] * old[a * E + e];
                Rt[b * E + e] = s;
            }
    }
    free(old);
}

/* ------------------------------------------------------------------------ */
/* attention */

typedef struct {
    ds4_session *s;
    uint32_t il, T;
    int64_t p0;
    const float *q;       /* [T][H][D] */
    float *out;           /* [T][H][D] */
    const uint32_t *sel;  /* [T][top_k] selected compressed rows (ratio 4 with indexer active) */
    const uint32_t *n_sel;/* [T] */
    float **scratch;      /* per worker: scores */
} attn_ctx;

static void attention_worker(void *vctx, int64_t begin, int64_t end, int worker) {
    attn_ctx *c = vctx;
    const ds4_hparams *hp = c->s->m->hp;
    const ds4_layer *L = &c->s->m->w->layers[c->il];
    const ds4_layer_state *st = &c->s->ls[c->il];
    const uint32_t H = hp->n_head, D = hp->head_dim, ratio = hp->compress_ratio[c->il];
    const float scale = 1.0f / sqrtf((float)D);
    float *z = c->scratch[worker];
    for (int64_t item = begin; item < end; item++) {
        const uint32_t t = (uint32_t)(item / H), h = (uint32_t)(item % H);
        const int64_t p = c->p0 + t;
        const float *q = c->q + ((size_t)t * H + h) * D;
        /* visible rows: raw window [lo, p], then compressed rows */
        const int64_t lo = p - (int64_t)hp->n_swa + 1 > 0 ? p - (int64_t)hp->n_swa + 1 : 0;
        const uint32_t n_raw = (uint32_t)(p - lo + 1);
        uint32_t n_comp = 0;
        const uint32_t *sel = NULL;
        if (ratio) {
            n_comp = (uint32_t)((p + 1) / ratio);
            if (n_comp > st->n_comp) n_comp = st->n_comp;
            if (c->sel && c->n_sel[t] != UINT32_MAX) {
                sel = c->sel + (size_t)t * hp->indexer_top_k;
                n_comp = c->n_sel[t];
            }
        }
        const uint32_t n = n_raw + n_comp;
        float mx = L->sinks[h];
        for (uint32_t r = 0; r < n; r++) {
            const float *k = r < n_raw ? st->raw + (size_t)((lo + r) % c->s->raw_cap) * D
                                       : st->comp + (size_t)(sel ? sel[r - n_raw] : r - n_raw) * D;
            float d = 0;
            for (uint32_t i = 0; i < D; i++) d += q[i] * k[i];
            z[r] = d * scale;
            mx = fmaxf(mx, z[r]);
        }
        float den = expf(L->sinks[h] - mx);
        float *o = c->out + ((size_t)t * H + h) * D;
        memset(o, 0, D * sizeof(float));
        for (uint32_t r = 0; r < n; r++) {
            const float *v = r < n_raw ? st->raw + (size_t)((lo + r) % c->s->raw_cap) * D
                                       : st->comp + (size_t)(sel ? sel[r - n_raw] : r - n_raw) * D;
            float w = expf(z[r] - mx);
            den += w;
            for (uint32_t i = 0; i < D; i++) o[i] += w * v[i];
        }
        const float inv = 1.0f / den;
        for (uint32_t i = 0; i < D; i++) o[i] *= inv;
    }
}

/* Indexer scores and top-k selection for each token of the chunk. */
typedef struct {
    ds4_session *s;
    uint32_t il;
    int64_t p0;
    const float *qi;  /* [T][I][ID] rotated (and simulated) indexer queries */
    const float *wi;  /* [T][I] head weights, already scaled */
    uint32_t *sel;    /* [T][top_k] */
    uint32_t *n_sel;  /* [T]: UINT32_MAX = attend every visible row */
    float **scratch;  /* per worker: [n_idx] scores */
} index_ctx;

/* Diagnostic trace of the selection (ds4_session_trace_indexer). */
static void trace_selection(const index_ctx *c, uint32_t t, const uint32_t *sel, uint32_t n) {
    const ds4_session *s = c->s;
    const int64_t p = c->p0 + t;
    if (!s->trace_topk || p >= s->trace_positions) return;
    const ds4_hparams *hp = s->m->hp;
    uint32_t slot = 0;
    for (uint32_t l = 0; l < c->il; l++) slot += hp->compress_ratio[l] == 4;
    int32_t *out = s->trace_topk + ((size_t)slot * s->trace_positions + (size_t)p) * hp->indexer_top_k;
    for (uint32_t i = 0; i < hp->indexer_top_k; i++) out[i] = i < n ? (int32_t)(sel ? sel[i] : i) : -1;
}

static void indexer_worker(void *vctx, int64_t begin, int64_t end, int worker) {
    index_ctx *c = vctx;
    const ds4_hparams *hp = c->s->m->hp;
    const ds4_layer_state *st = &c->s->ls[c->il];
    const uint32_t I = hp->n_indexer_head, ID = hp->indexer_head_dim, K = hp->indexer_top_k;
    float *score = c->scratch[worker];
    for (int64_t t = begin; t < end; t++) {
        const int64_t p = c->p0 + t;
        uint32_t n_vis = (uint32_t)((p + 1) / 4);
        if (n_vis > st->n_idx) n_vis = st->n_idx;
        if (n_vis <= K) {
            c->n_sel[t] = UINT32_MAX;
            trace_selection(c, (uint32_t)t, NULL, n_vis);
            continue;
        }
        const float *q = c->qi + (size_t)t * I * ID, *w = c->wi + (size_t)t * I;
        for (uint32_t k = 0; k < n_vis; k++) {
            const float *key = st->idx + (size_t)k * ID;
            float sc = 0;
            for (uint32_t h = 0; h < I; h++) {
                const float *qh = q + (size_t)h * ID;
                float d = 0;
                for (uint32_t i = 0; i < ID; i++) d += qh[i] * key[i];
                if (d > 0) sc += w[h] * d;
            }
            score[k] = sc;
        }
        c->n_sel[t] = ds4_topk_select(score, n_vis, K, c->sel + (size_t)t * K);
        trace_selection(c, (uint32_t)t, c->sel + (size_t)t * K, c->n_sel[t]);
    }
}

/* Pushes T tokens through one compressor and appends the rows it closes.
 * proj_kv, proj_sc: [T][c*dim]; ape: [ratio][c*dim] weight. `indexer` picks
 * the post-processing: Hadamard+FP4 (indexer keys) or FP8 nope dims (KV). */
static void run_compressor(ds4_session *s, uint32_t il, int64_t p0, uint32_t T, const float *proj_kv, float *proj_sc,
                           const ds4_weight *ape, const float *norm_w, uint32_t dim, float *st_kv, float *st_sc,
                           float *rows, uint32_t *n_rows, bool indexer) {
    const ds4_model *m = s->m;
    const ds4_hparams *hp = m->hp;
    const uint32_t ratio = hp->compress_ratio[il], W = (ratio == 4 ? 2 : 1) * dim;
    float *ape_row = malloc(W * sizeof(float)), *pooled = malloc(dim * sizeof(float));
    for (uint32_t t = 0; t < T; t++) {
        const int64_t p = p0 + t;
        ds4_weight_dequant_row(ape, 0, (uint64_t)(p % ratio), ape_row);
        float *sc = proj_sc + (size_t)t * W;
        for (uint32_t j = 0; j < W; j++) sc[j] += ape_row[j];
        if (!ds4_compressor_step(ratio, dim, st_kv, st_sc, proj_kv + (size_t)t * W, sc, p, pooled)) continue;
        float *row = rows + (size_t)(*n_rows) * dim;
        ds4_rmsnorm(row, pooled, norm_w, (int)dim, (float)hp->rms_eps);
        ds4_rope_tail(row, (int)dim, (int)hp->n_rot, m->rope_comp, p + 1 - ratio, false);
        if (!m->exact) {
            if (indexer) {
                ds4_hadamard(row, (int)dim);
                ds4_sim_fp4_e2m1(row, (int)dim);
            } else {
                ds4_sim_fp8_e4m3(row, (int)(dim - hp->n_rot));
                if (m->f16_rounding) ds4_round_f16(row, (int)dim);
            }
        }
        (*n_rows)++;
    }
    free(ape_row);
    free(pooled);
}

static void attention_layer(ds4_session *s, uint32_t il, const int32_t *tokens, float *R, uint32_t T) {
    ds4_model *m = s->m;
    const ds4_hparams *hp = m->hp;
    const ds4_layer *L = &m->w->layers[il];
    ds4_layer_state *st = &s->ls[il];
    const uint32_t C = hp->n_hc, E = hp->n_embd, H = hp->n_head, D = hp->head_dim, Q = hp->q_lora_rank;
    const uint32_t ratio = hp->compress_ratio[il], G = hp->n_out_group, OR = hp->o_lora_rank;
    const int64_t p0 = s->n_tokens;
    const float *rope = ratio ? m->rope_comp : m->rope_main;
    const int nw = ds4_pool_size(m->pool);
    (void)tokens;

    hc_weights hw = {malloc((size_t)T * C * sizeof(float)), malloc((size_t)T * C * sizeof(float)),
                     malloc((size_t)T * C * C * sizeof(float))};
    float *a = malloc((size_t)T * E * sizeof(float));
    hc_pre(m, &L->hc_attn_fn, L->hc_attn_scale, L->hc_attn_base, R, T, &hw, a);
    for (uint32_t t = 0; t < T; t++) ds4_rmsnorm(a + (size_t)t * E, a + (size_t)t * E, L->attn_norm, (int)E, (float)hp->rms_eps);

    /* q: [T][H][D], qn: [T][Q] (also the indexer's input), kv: [T][D] */
    float *qn = malloc((size_t)T * Q * sizeof(float));
    float *q = malloc((size_t)T * H * D * sizeof(float));
    float *kv = malloc((size_t)T * D * sizeof(float));
    ds4_matmul(m->pool, &L->q_a, 0, a, (int)T, qn);
    for (uint32_t t = 0; t < T; t++) ds4_rmsnorm(qn + (size_t)t * Q, qn + (size_t)t * Q, L->q_a_norm, (int)Q, (float)hp->rms_eps);
    ds4_matmul(m->pool, &L->q_b, 0, qn, (int)T, q);
    ds4_matmul(m->pool, &L->kv, 0, a, (int)T, kv);
    for (uint32_t t = 0; t < T; t++) {
        for (uint32_t h = 0; h < H; h++) {
            float *qh = q + ((size_t)t * H + h) * D;
            ds4_rmsnorm(qh, qh, NULL, (int)D, (float)hp->rms_eps);
            ds4_rope_tail(qh, (int)D, (int)hp->n_rot, rope, p0 + t, false);
        }
        float *k = kv + (size_t)t * D;
        ds4_rmsnorm(k, k, L->kv_norm, (int)D, (float)hp->rms_eps);
        ds4_rope_tail(k, (int)D, (int)hp->n_rot, rope, p0 + t, false);
        if (!m->exact) {
            ds4_sim_fp8_e4m3(k, (int)(D - hp->n_rot));
            if (m->f16_rounding) ds4_round_f16(k, (int)D);
        }
        memcpy(st->raw + (size_t)((p0 + t) % s->raw_cap) * D, k, D * sizeof(float));
    }

    uint32_t *sel = NULL, *n_sel = NULL;
    float **scratch = calloc((size_t)nw, sizeof(float *));
    if (ratio) {
        const uint32_t W = (ratio == 4 ? 2 : 1) * D;
        float *pkv = malloc((size_t)T * W * sizeof(float)), *psc = malloc((size_t)T * W * sizeof(float));
        ds4_matmul(m->pool, &L->comp_kv, 0, a, (int)T, pkv);
        ds4_matmul(m->pool, &L->comp_gate, 0, a, (int)T, psc);
        run_compressor(s, il, p0, T, pkv, psc, &L->comp_ape, L->comp_norm, D, st->comp_kv, st->comp_sc, st->comp,
                       &st->n_comp, false);
        free(pkv);
        free(psc);
    }
    if (ratio == 4) {
        const uint32_t I = hp->n_indexer_head, ID = hp->indexer_head_dim, W = 2 * ID;
        float *pkv = malloc((size_t)T * W * sizeof(float)), *psc = malloc((size_t)T * W * sizeof(float));
        ds4_matmul(m->pool, &L->idx_kv, 0, a, (int)T, pkv);
        ds4_matmul(m->pool, &L->idx_gate, 0, a, (int)T, psc);
        run_compressor(s, il, p0, T, pkv, psc, &L->idx_ape, L->idx_norm, ID, st->idx_kv, st->idx_sc, st->idx,
                       &st->n_idx, true);
        free(pkv);
        free(psc);
        /* queries: qi [T][I][ID] from qn; head weights wi [T][I] from a */
        float *qi = malloc((size_t)T * I * ID * sizeof(float)), *wi = malloc((size_t)T * I * sizeof(float));
        ds4_matmul(m->pool, &L->idx_q_b, 0, qn, (int)T, qi);
        ds4_matmul(m->pool, &L->idx_proj, 0, a, (int)T, wi);
        const float wscale = 1.0f / sqrtf((float)ID * (float)I);
        for (uint32_t t = 0; t < T; t++) {
            for (uint32_t h = 0; h < I; h++) {
                float *qh = qi + ((size_t)t * I + h) * ID;
                ds4_rope_tail(qh, (int)ID, (int)hp->n_rot, m->rope_comp, p0 + t, false);
                if (!m->exact) {
                    ds4_hadamard(qh, (int)ID);
                    ds4_sim_fp4_e2m1(qh, (int)ID);
                }
            }
            for (uint32_t h = 0; h < I; h++) wi[(size_t)t * I + h] *= wscale;
        }
        sel = malloc((size_t)T * hp->indexer_top_k * sizeof(uint32_t));
        n_sel = malloc((size_t)T * sizeof(uint32_t));
        for (int w = 0; w < nw; w++) scratch[w] = malloc(((size_t)st->n_idx + 1) * sizeof(float));
        index_ctx ic = {s, il, p0, qi, wi, sel, n_sel, scratch};
        ds4_pool_run(m->pool, T, 1, indexer_worker, &ic);
        for (int w = 0; w < nw; w++) free(scratch[w]);
        free(qi);
        free(wi);
    }

    /* attention for every (token, head) */
    float *o = malloc((size_t)T * H * D * sizeof(float));
    for (int w = 0; w < nw; w++) scratch[w] = malloc(((size_t)hp->n_swa + st->n_comp + 1) * sizeof(float));
    attn_ctx ac = {s, il, T, p0, q, o, sel, n_sel, scratch};
    ds4_pool_run(m->pool, (int64_t)T * H, 1, attention_worker, &ac);
    for (int w = 0; w < nw; w++) free(scratch[w]);
    free(scratch);
    free(sel);
    free(n_sel);
    for (uint32_t t = 0; t < T; t++)
        for (uint32_t h = 0; h < H; h++)
            ds4_rope_tail(o + ((size_t)t * H + h) * D, (int)D, (int)hp->n_rot, rope, p0 + t, true);

    /* grouped output: group g (heads [g*H/G, (g+1)*H/G)) through rows [g*OR, (g+1)*OR) of out_a */
    const uint32_t GW = H * D / G;
    float *og = malloc((size_t)T * GW * sizeof(float)), *low = malloc((size_t)T * G * OR * sizeof(float));
    float *lg = malloc((size_t)T * OR * sizeof(float));
    for (uint32_t g = 0; g < G; g++) {
        for (uint32_t t = 0; t < T; t++) memcpy(og + (size_t)t * GW, o + (size_t)t * H * D + (size_t)g * GW, GW * sizeof(float));
        ds4_matmul_rows(m->pool, &L->out_a, 0, (uint64_t)g * OR, OR, og, (int)T, lg);
        for (uint32_t t = 0; t < T; t++) memcpy(low + ((size_t)t * G + g) * OR, lg + (size_t)t * OR, OR * sizeof(float));
    }
    float *y = malloc((size_t)T * E * sizeof(float));
    ds4_matmul(m->pool, &L->out_b, 0, low, (int)T, y);
    hc_post(hp, R, y, &hw, T);

    free(og);
    free(low);
    free(lg);
    free(y);
    free(o);
    free(q);
    free(qn);
    free(kv);
    free(a);
    free(hw.pre);
    free(hw.post);
    free(hw.comb);
}

static void ffn_layer(ds4_session *s, uint32_t il, const int32_t *tokens, float *R, uint32_t T) {
    ds4_model *m = s->m;
    const ds4_hparams *hp = m->hp;
    const ds4_layer *L = &m->w->layers[il];
    const uint32_t C = hp->n_hc, E = hp->n_embd;
    hc_weights hw = {malloc((size_t)T * C * sizeof(float)), malloc((size_t)T * C * sizeof(float)),
                     malloc((size_t)T * C * C * sizeof(float))};
    float *f = malloc((size_t)T * E * sizeof(float)), *y = malloc((size_t)T * E * sizeof(float));
    hc_pre(m, &L->hc_ffn_fn, L->hc_ffn_scale, L->hc_ffn_base, R, T, &hw, f);
    for (uint32_t t = 0; t < T; t++) ds4_rmsnorm(f + (size_t)t * E, f + (size_t)t * E, L->ffn_norm, (int)E, (float)hp->rms_eps);
    ds4_moe_forward(m->pool, hp, L, il, tokens, f, T, y);
    hc_post(hp, R, y, &hw, T);
    free(f);
    free(y);
    free(hw.pre);
    free(hw.post);
    free(hw.comb);
}

/* HC head + output norm + LM head for the tokens [t0, T). */
static void output_head(ds4_session *s, const float *R, uint32_t t0, uint32_t T, float *logits) {
    ds4_model *m = s->m;
    const ds4_hparams *hp = m->hp;
    const uint32_t C = hp->n_hc, E = hp->n_embd, n = T - t0;
    if (n == 0) return;
    float *flat = malloc((size_t)n * C * E * sizeof(float)), *mix = malloc((size_t)n * C * sizeof(float));
    float *x = malloc((size_t)n * E * sizeof(float));
    for (uint32_t i = 0; i < n; i++)
        ds4_rmsnorm(flat + (size_t)i * C * E, R + (size_t)(t0 + i) * C * E, NULL, (int)(C * E), (float)hp->rms_eps);
    ds4_matmul(m->pool, &m->w->out_hc_fn, 0, flat, (int)n, mix);
    for (uint32_t i = 0; i < n; i++) {
        const float *Rt = R + (size_t)(t0 + i) * C * E;
        float *xt = x + (size_t)i * E;
        memset(xt, 0, E * sizeof(float));
        for (uint32_t h = 0; h < C; h++) {
            float w = ds4_sigmoid(mix[i * C + h] * m->w->out_hc_scale[0] + m->w->out_hc_base[h]) + (float)hp->hc_eps;
            for (uint32_t e = 0; e < E; e++) xt[e] += w * Rt[h * E + e];
        }
        ds4_rmsnorm(xt, xt, m->w->out_norm, (int)E, (float)hp->rms_eps);
    }
    ds4_matmul(m->pool, &m->w->output, 0, x, (int)n, logits);
    free(flat);
    free(mix);
    free(x);
}

void ds4_forward_chunk(ds4_session *s, const int32_t *tokens, uint32_t T, float *all_logits) {
    ds4_model *m = s->m;
    const ds4_hparams *hp = m->hp;
    const uint32_t C = hp->n_hc, E = hp->n_embd;
    float *R = malloc((size_t)T * C * E * sizeof(float));
    for (uint32_t t = 0; t < T; t++) {
        float *Rt = R + (size_t)t * C * E;
        ds4_weight_dequant_row(&m->w->tok_embd, 0, (uint64_t)tokens[t], Rt);
        for (uint32_t h = 1; h < C; h++) memcpy(Rt + (size_t)h * E, Rt, E * sizeof(float));
    }
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        attention_layer(s, il, tokens, R, T);
        ffn_layer(s, il, tokens, R, T);
    }
    if (all_logits) {
        output_head(s, R, 0, T, all_logits);
        memcpy(s->logits, all_logits + (size_t)(T - 1) * hp->n_vocab, hp->n_vocab * sizeof(float));
    } else {
        output_head(s, R, T - 1, T, s->logits);
    }
    s->has_logits = true;
    free(R);
}

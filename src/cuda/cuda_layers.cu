/* cuda_layers.cu - the two halves of a transformer layer as CUDA launches,
 * in forward.c's order: the attention half (hyper-connection pre, the input
 * projections, KV row and compressors on the side stream, queries, indexer,
 * attention, output projections, hyper-connection post) and the FFN half
 * (hyper-connection pre, router and routing, shared expert on the side
 * stream, routed experts, expert sum with the hyper-connection post). The
 * same code serves prefill chunks and the captured decode step; the decode
 * variants (T = 1) pick the launches measured fastest (docs/CUDA.md). */
#include <stdlib.h>
#include <string.h>

#include "cuda_backend.cuh"

/* Decode: a with only the quantized forms its consumers' products read
 * (Q8_0 weights the Q8_0 form, K-quants and IQ2_XXS the Q8_K form, float
 * weights the floats), so the producer skips writing the others; the floats
 * are dropped only when drop_f says nothing else reads them either. */
static dact forms_for(dact a, std::initializer_list<const dweight *> consumers, bool drop_f = false) {
    bool q8 = false, qk = false, f = !drop_f;
    for (const dweight *w : consumers) {
        if (!w || !w->q) continue;
        q8 = q8 || w->type == DS4_TYPE_Q8_0;
        qk = qk || w->type == DS4_TYPE_Q2_K || w->type == DS4_TYPE_Q4_K || w->type == DS4_TYPE_IQ2_XXS;
        f = f || w->type == DS4_TYPE_F32 || w->type == DS4_TYPE_F16 || w->type == DS4_TYPE_BF16;
    }
    if (!q8) a.q8 = NULL, a.d8 = NULL;
    if (!qk) a.qk = NULL, a.dk = NULL, a.bk = NULL;
    if (!f) a.f = NULL;
    return a;
}

/* Decode: job j's last block (per pair) forms `out` from the rows the
 * launch wrote (mv_job.fin), instead of a launch of its own after it;
 * false (j unchanged) where that does not apply */
static bool finish_with(mv_job &j, int mode, uint32_t *count, uint32_t n, const float *x, const float *u,
                        uint32_t pstride, const float *w, float eps, const dact &out, uint32_t c0) {
    mv_job f = j;
    f.fin = mode;
    f.fin_count = count;
    f.fin_n = n;
    f.fin_x = x;
    f.fin_u = u;
    f.fin_pstride = pstride;
    f.fin_w = w;
    f.fin_eps = eps;
    f.fin_out = out;
    f.fin_c0 = c0;
    if (!cu_matvec_fin_ok(f)) return false;
    j = f;
    return true;
}

/* The hyper-connection before a layer half: its mix (formed by the last HC
 * post, else here from R), the pre / post / comb split and out = the
 * collapsed, normed, quantized input. With the Gram partials the decode
 * collapse runs over many blocks and the Sinkhorn split (post, comb: read
 * first by this half's HC post) runs apart: on its own stream from here when
 * *on_hcs comes back true (the caller joins it before its HC post), else
 * left to the caller's side branch. Returns whether the split runs apart
 * (then, without *on_hcs, cu_hc_split with *hcp). half: 0 attention, 1 FFN. */
static bool hc_pre_step(fwd *F, const dweight &fn, const float *scale, const float *base, const float *norm, dact out,
                        uint32_t T, const char *mix_name, const char *name, hc_params *hcp, int half,
                        bool *on_hcs) {
    const ds4_hparams *hp = F->s->m->hp;
    cu_session *cs = F->cs;
    const cudaStream_t sm = F->cm->st;
    const uint32_t C = hp->n_hc, E = hp->n_embd;
    const float eps = (float)hp->rms_eps;
    if (!F->mix_S) {
        F->mix_S = cu_hc_mix(sm, fn, cs->R, T, C * E, eps, cs->hcpart);
        kcheck(F, mix_name);
    }
    *hcp = {scale, base, C, hp->hc_sinkhorn_iter, (float)hp->hc_eps, F->mix_S};
    F->mix_S = 0;
    const bool split_side = F->gram && F->cm->split_side && cu_hc_pre_gram_ok(*hcp, T, E) && !skipped(name, T);
    *on_hcs = split_side && F->cm->split_stream > (half == 0 ? 1 : 0);
    if (*on_hcs) {
        fork_hcs(F);
        cu_hc_split(hcs_of(F), *hcp, cs->hcpart, E, eps, cs->pre, cs->post, cs->comb);
        kcheck(F, half == 0 ? "hc split (attention)" : "hc split (ffn)");
    }
    if (!skipped(name, T))
        cu_hc_pre(sm, *hcp, cs->hcpart, cs->R, T, E, norm, eps, cs->pre, cs->post, cs->comb, out,
                  F->gram ? cs->hcgram : NULL, split_side);
    F->gram = false;
    kcheck(F, name);
    return split_side;
}

/* ds4_session_trace_indexer: the selection of every position, as the CPU
 * records it (diagnostic; synchronises) */
static void trace_indexer(fwd *F, uint32_t il, uint32_t T) {
    const ds4_session *s = F->s;
    const ds4_hparams *hp = s->m->hp;
    const uint32_t K = hp->indexer_top_k;
    std::vector<uint32_t> sel((size_t)T * K), n_sel(T);
    cudaMemcpyAsync(sel.data(), F->cs->sel, sel.size() * 4, cudaMemcpyDeviceToHost, F->cm->st);
    cudaMemcpyAsync(n_sel.data(), F->cs->n_sel, (size_t)T * 4, cudaMemcpyDeviceToHost, F->cm->st);
    cudaStreamSynchronize(F->cm->st);
    uint32_t slot = 0;
    for (uint32_t l = 0; l < il; l++) slot += hp->compress_ratio[l] == 4;
    for (uint32_t t = 0; t < T; t++) {
        const uint64_t p = s->n_tokens + t;
        if (p >= s->trace_positions) continue;
        int32_t *out = s->trace_topk + ((size_t)slot * s->trace_positions + p) * K;
        const bool all = n_sel[t] == 0xffffffffu;
        const uint32_t n = all ? (uint32_t)((p + 1) / 4) : n_sel[t];
        for (uint32_t i = 0; i < K; i++) out[i] = i < n ? (int32_t)(all ? i : sel[(size_t)t * K + i]) : -1;
    }
}

void attention_layer(fwd *F, uint32_t il, uint32_t T) {
    const ds4_model *m = F->s->m;
    const ds4_hparams *hp = m->hp;
    cu_model *cm = F->cm;
    cu_session *cs = F->cs;
    const cu_layer *L = &cm->L[il];
    cu_lstate *st = &cs->ls[il];
    cudaStream_t sm = cm->st;
    const uint32_t C = hp->n_hc, E = hp->n_embd, H = hp->n_head, D = hp->head_dim, Q = hp->q_lora_rank;
    const uint32_t ratio = hp->compress_ratio[il], G = hp->n_out_group, OR = hp->o_lora_rank;
    const uint32_t I = hp->n_indexer_head, ID = hp->indexer_head_dim, W = (ratio == 4 ? 2 : 1) * D;
    const float eps = (float)hp->rms_eps;
    const float *rope = ratio ? cm->rope_comp : cm->rope_main;

    dact a_out = cs->a;
    if (T == 1)
        a_out = forms_for(cs->a, {&L->q_a, &L->kv, ratio ? &L->comp_kv : NULL, ratio ? &L->comp_gate : NULL,
                                  ratio == 4 ? &L->idx_kv : NULL, ratio == 4 ? &L->idx_gate : NULL,
                                  ratio == 4 ? &L->idx_proj : NULL});
    hc_params hcp;
    bool split_hcs;
    const bool split_side = hc_pre_step(F, L->hc_attn_fn, L->hc_attn_scale, L->hc_attn_base, L->attn_norm, a_out, T,
                                        "hc mix (attention)", "hc pre (attention)", &hcp, 0, &split_hcs);

    mv_job jb[8];
    int nj = 0;
    jb[nj++] = job(L->q_a, av_of(cs->a), cs->qa.f, Q);
    /* (in place; only the q_b products read the normed row: its floats are dropped when they take a quantized form) */
    const dact qa_out = T == 1 ? forms_for(cs->qa, {&L->q_b, ratio == 4 ? &L->idx_q_b : NULL}, true) : cs->qa;
    /* decode: the q_a job's last block normalises q_a (DS4_CUDA_FIN without norm: a launch of its own) */
    const bool qa_fin = T == 1 && cm->fin_norm && !qa_out.f &&
                        finish_with(jb[0], MV_FIN_NORM, cs->fin_cnt + FIN_QA, Q, cs->qa.f, NULL, 0, L->q_a_norm, eps,
                                    qa_out, 0);
    jb[nj++] = job(L->kv, av_of(cs->a), cs->kvb, D);
    if (ratio) {
        jb[nj++] = job(L->comp_kv, av_of(cs->a), cs->pkv, W);
        jb[nj++] = job(L->comp_gate, av_of(cs->a), cs->psc, W);
    }
    if (ratio == 4) {
        jb[nj++] = job(L->idx_kv, av_of(cs->a), cs->ikv, 2 * ID);
        jb[nj++] = job(L->idx_gate, av_of(cs->a), cs->isc, 2 * ID);
        jb[nj++] = job(L->idx_proj, av_of(cs->a), cs->wi, I);
    }
    if (!skipped("attention input projections", T)) cu_matvec(sm, jb, nj, T);
    kcheck(F, "attention input projections");
    /* side branch: the KV row and the compressors (they need only a's projections) */
    const cudaStream_t ss = side_of(F);
    fork_side(F, 0);
    const kvrow_params kp = {D, L->kv_norm, eps, hp->n_rot, rope, !m->exact, m->f16_rounding, st->raw, F->s->raw_cap};
    const comp_job ca = {{ratio, D, hp->n_rot, cm->rope_comp, L->comp_norm, false, !m->exact, m->f16_rounding, eps},
                         L->comp_ape, cs->pkv, cs->psc, st->comp_kv, st->comp_sc, cs->pooled, st->comp};
    const comp_job ci = {{4, ID, hp->n_rot, cm->rope_comp, L->idx_norm, true, !m->exact, false, eps},
                         L->idx_ape, cs->ikv, cs->isc, st->idx_kv, st->idx_sc, cs->ipooled, st->idx};
    if (T == 1 && cm->side_fused) { /* one launch for the three (DS4_CUDA_SIDE_FUSED=0: separate) */
        if (!skipped("kv row + compressors", T))
            cu_side_decode(ss, kp, cs->kvb, ratio ? &ca : NULL, ratio == 4 ? &ci : NULL, cs->pos0, F->wide);
        kcheck(F, "kv row + compressors");
    } else {
        cu_kv_store(ss, kp, cs->kvb, T, cs->pos0);
        kcheck(F, "kv row store");
        for (const comp_job *cj : {&ca, &ci}) {
            if (!ratio || (cj == &ci && ratio != 4)) continue;
            cu_compress(ss, *cj, T, cs->pos0);
            kcheck(F, cj == &ca ? "attention compressor" : "indexer compressor");
        }
    }
    if (split_side && !split_hcs) {
        cu_hc_split(ss, hcp, cs->hcpart, E, eps, cs->pre, cs->post, cs->comb);
        kcheck(F, "hc split (attention)");
    }
    /* main branch: the queries */
    if (!qa_fin) {
        dact qo = qa_out;
        if (!skipped("q_a norm", T)) cu_rmsnorm(sm, cs->qa.f, qo, L->q_a_norm, T, Q, eps);
        kcheck(F, "q_a norm");
    }
    /* decode: the attention kernel normalises and rotates the query heads
     * itself (one launch fewer; DS4_CUDA_Q_IN_ATTN=0: here) */
    const bool q_in_attn = T == 1 && cm->q_in_attn;
    const bool both_heads = T == 1 && ratio == 4 && !q_in_attn; /* both sets of heads in one launch */
    /* decode with the indexer: its query product, heads and top-k beside
     * the main branch's q_b (they wait only for the normed q_a, and the
     * attention for both): the product and heads on the split's stream,
     * beside the KV row and compressors on the side stream, and the scores +
     * top-k on the side stream after both (DS4_CUDA_INDEXER_HCS=0: all
     * three on the side stream after the KV row and compressors;
     * DS4_CUDA_INDEXER_SIDE=0: all on the main branch) */
    const bool idx_side = T == 1 && ratio == 4 && q_in_attn && cm->indexer_side && ss != sm;
    const bool idx_hcs = idx_side && split_hcs && cm->indexer_hcs;
    const float wscale = 1.0f / sqrtf((float)ID * (float)I);
    auto indexer_heads = [&](cudaStream_t on) {
        if (!skipped("indexer queries", T))
            cu_head_post(on, cs->qi, T, I, ID, hp->n_rot, cm->rope_comp, cs->pos0, false, eps, false, !m->exact,
                         F->wide);
        kcheck(F, "indexer queries");
    };
    auto indexer_topk = [&](cudaStream_t on, bool cluster) {
        if (!skipped("indexer scores + top-k", T))
            cu_indexer(on, cs->qi, cs->wi, wscale, st->idx, st->comp_cap, T, I, ID, hp->indexer_top_k, cs->pos0,
                       cs->scores, cs->sel, cs->n_sel, !m->exact, cluster);
        kcheck(F, "indexer scores + top-k");
    };
    if (idx_side) {
        const cudaStream_t qs = idx_hcs ? hcs_of(F) : ss;
        if (idx_hcs) fork_hcs(F);
        else fork_side(F, 2);
        const mv_job ji = job(L->idx_q_b, av_of(cs->qa), cs->qi, I * ID);
        if (!skipped("q_b", T)) cu_matvec(qs, &ji, 1, T);
        kcheck(F, "indexer q_b");
        indexer_heads(qs);
        if (idx_hcs) hcs_to_side(F);
        indexer_topk(ss, F->topk_cluster);
    }
    nj = 0;
    jb[nj++] = job(L->q_b, av_of(cs->qa), cs->q, H * D);
    if (ratio == 4 && !idx_side) jb[nj++] = job(L->idx_q_b, av_of(cs->qa), cs->qi, I * ID);
    if (!skipped("q_b", T)) cu_matvec(sm, jb, nj, T);
    kcheck(F, "q_b");
    if (both_heads) {
        const head_job hq = {cs->q, H, D, hp->n_rot, rope, 1, 0, 0};
        const head_job hi = {cs->qi, I, ID, hp->n_rot, cm->rope_comp, 0, 0, !m->exact};
        if (!skipped("q heads norm+rope", T)) cu_head_post2(sm, hq, hi, T, cs->pos0, eps, F->wide);
    } else if (!q_in_attn && !skipped("q heads norm+rope", T)) {
        cu_head_post(sm, cs->q, T, H, D, hp->n_rot, rope, cs->pos0, true, eps, false, false, F->wide);
    }
    kcheck(F, "q heads norm+rope");
    if (ratio == 4 && !both_heads && !idx_side) indexer_heads(sm);
    join_side(F, 0);
    if (ratio == 4 && !idx_side) indexer_topk(sm, T == 1 && F->topk_cluster);
    if (ratio == 4 && F->s->trace_topk) trace_indexer(F, il, T);
    attn_params ap = {H, D, hp->n_swa, F->s->raw_cap, ratio, hp->indexer_top_k, hp->n_rot, L->sinks, st->raw,
                      st->comp, ratio == 4 ? cs->sel : NULL, ratio == 4 ? cs->n_sel : NULL, rope, q_in_attn, eps,
                      T == 1 && split_side && !split_hcs, F->wide};
    const uint32_t splits = T == 1 ? cs->splits1 : cs->splitsT;
    /* prefill chunks on tensor cores (with the BF16 products; FP16 needs the
     * F16-rounded KV rows of a non-exact model), else the exact kernel */
    const bool tc = T >= cu_mma_min_T() && !m->exact && m->f16_rounding &&
                    cu_attention_tc(sm, ap, cs->q, T, cs->pos0, cs->o.f);
    if (!tc && !skipped("attention", T)) {
        const dact o_out = T == 1 ? forms_for(cs->o, {&L->out_a}) : cs->o; /* (out_a reads one form) */
        cu_attention(sm, ap, cs->q, T, cs->pos0, cs->part, cs->part_floats, splits, cs->o.f, &o_out);
    }
    kcheck(F, "attention");
    const uint32_t GW = H * D / G;
    /* out_a group g: rows [g OR, g OR + OR) against o's columns [g GW, g GW + GW) */
    auto out_a_job = [&](uint32_t g) {
        mv_job j = job(L->out_a, av_of(cs->o, g * GW), cs->low.f + (size_t)g * OR, G * OR);
        j.row0 = g * OR;
        j.n_rows = OR;
        return j;
    };
    /* o's quantized forms: the exact attention writes them when D % 256 == 0;
     * after the tensor-core one only if an out_a product reads them */
    bool need_q = D % 256 != 0;
    for (uint32_t g = 0; tc && g < G && !need_q; g++) need_q = !cu_mma_dense_ok(out_a_job(g), T);
    if (need_q && !skipped("attention", T)) {
        cu_quantize(sm, cs->o.f, H * D, T, cs->o);
        kcheck(F, "quantize o");
    }
    /* decode: each out_a group's last block quantizes the group's rows for
     * out_b (DS4_CUDA_FIN with quant) */
    const dact low_q = forms_for(cs->low, {&L->out_b}, true);
    bool low_fin = T == 1 && cm->fin_quant && G <= MV_MAX_JOBS && !low_q.f; /* (one launch; FIN_OUTA + g < FIN_EXP) */
    for (uint32_t g = 0; low_fin && g < G; g++) {
        mv_job j = out_a_job(g);
        low_fin = finish_with(j, MV_FIN_QUANT, cs->fin_cnt + FIN_OUTA + g, OR, j.y, NULL, 0, NULL, 0.0f, low_q, g * OR);
    }
    nj = 0;
    for (uint32_t g = 0; g < G; g++) {
        jb[nj] = out_a_job(g);
        if (low_fin)
            finish_with(jb[nj], MV_FIN_QUANT, cs->fin_cnt + FIN_OUTA + g, OR, jb[nj].y, NULL, 0, NULL, 0.0f, low_q,
                        g * OR);
        nj++;
        if (nj == 8 || g + 1 == G) {
            if (!skipped("out_a", T)) cu_matvec(sm, jb, nj, T);
            nj = 0;
        }
    }
    kcheck(F, "out_a");
    jb[0] = job(L->out_b, av_of(cs->low), cs->y, E);
    if (!low_fin && !cu_mma_dense_ok(jb[0], T) && !skipped("quantize low", T)) { /* the tensor-core product reads the floats */
        cu_quantize(sm, cs->low.f, G * OR, T, cs->low);
        kcheck(F, "quantize low");
    }
    if (!skipped("out_b", T)) cu_matvec(sm, jb, 1, T);
    kcheck(F, "out_b");
    if (split_hcs) join_hcs(F);
    F->mix_S = skipped("hc post (attention)", T)
                   ? cu_hc_post_splits(E)
                   : cu_hc_post(sm, cs->R, cs->y, cs->post, cs->comb, T, C, E, &L->hc_ffn_fn, cs->hcpart, NULL, NULL, 0,
                                cm->hc_gram ? cs->hcgram : NULL, &F->gram);
    kcheck(F, "hc post (attention)");
}

void ffn_layer(fwd *F, uint32_t il, uint32_t T) {
    const ds4_model *m = F->s->m;
    const ds4_hparams *hp = m->hp;
    cu_model *cm = F->cm;
    cu_session *cs = F->cs;
    const cu_layer *L = &cm->L[il];
    cudaStream_t sm = cm->st;
    const uint32_t C = hp->n_hc, E = hp->n_embd, X = hp->n_expert, K = hp->n_expert_used, FF = hp->n_ff_exp;
    const float eps = (float)hp->rms_eps, clamp = hp->swiglu_clamp[il];

    hc_params hcp;
    bool split_hcs;
    const bool split_side = hc_pre_step(F, L->hc_ffn_fn, L->hc_ffn_scale, L->hc_ffn_base, L->ffn_norm, cs->f, T,
                                        "hc mix (ffn)", "hc pre (ffn)", &hcp, 1, &split_hcs);
    mv_job jb[4];
    jb[0] = job(L->router, av_of(cs->f), cs->rl, X);
    jb[0].exact = 1;
    jb[1] = job(L->gate_sh, av_of(cs->f), cs->sg, FF);
    jb[2] = job(L->up_sh, av_of(cs->f), cs->su, FF);
    const cudaStream_t ss = side_of(F);
    mv_job dsh = job(L->down_sh, av_of(cs->sh), cs->ysh, E);
    const route_args ra = {K, cs->tokens, ds4_layer_is_hash(hp, il) ? L->tid2eid : NULL, L->expert_bias,
                           hp->expert_weights_norm, (float)hp->expert_weights_scale, cs->ids, cs->wts};
    bool routed = false; /* the router launch also routed the token */
    if (T == 1 && cm->router_alone && cu_router_decode_ok(L->router, av_of(cs->f))) {
        /* decode: the whole shared expert on the side stream, the router
         * alone on the main one (the routing no longer waits for the shared
         * gate/up; DS4_CUDA_ROUTER_ALONE=0: the launch below) */
        fork_side(F, 1);
        /* the gate/up's last block does the SwiGLU (DS4_CUDA_FIN with shared) */
        const dact sh_out = forms_for(cs->sh, {&L->down_sh}, true);
        bool sh_fin = cm->fin_shared && !sh_out.f;
        for (int k = 1; sh_fin && k <= 2; k++)
            sh_fin = finish_with(jb[k], MV_FIN_SWIGLU, cs->fin_cnt + FIN_SH, FF, cs->sg, cs->su, FF, NULL, clamp,
                                 sh_out, 0);
        if (!sh_fin) jb[1].fin = jb[2].fin = MV_FIN_NONE;
        if (!skipped("shared expert", T)) {
            cu_matvec(ss, jb + 1, 2, T);
            if (!sh_fin) cu_swiglu(ss, cs->sg, cs->su, NULL, T, FF, clamp, cs->sh);
            cu_matvec(ss, &dsh, 1, T);
        }
        kcheck(F, "shared expert");
        /* and the routing by the router's last block (DS4_CUDA_ROUTE_IN_ROUTER=0: its own launch) */
        routed = cm->route_in_router && X <= 1024 && K <= ROUTE_MAX_K;
        if (!skipped("router", T)) cu_router_decode(sm, L->router, av_of(cs->f), cs->rl, routed ? &ra : NULL);
        kcheck(F, "router");
    } else {
        if (!skipped("router + shared gate/up", T)) cu_matvec(sm, jb, 3, T);
        kcheck(F, "router + shared gate/up");
        fork_side(F, 1);
        /* side branch: the shared expert's SwiGLU and down projection */
        if (!skipped("shared swiglu + down", T)) {
            cu_swiglu(ss, cs->sg, cs->su, NULL, T, FF, clamp, cs->sh);
            cu_matvec(ss, &dsh, 1, T);
        }
        kcheck(F, "shared swiglu + down");
    }
    if (!routed && !skipped("route", T)) cu_route(sm, cs->rl, T, X, ra);
    kcheck(F, "route");
    if (T == 1) {
        mv_job g = job(L->gate_exps, av_of(cs->f), cs->g, FF);
        g.mat_ids = cs->ids;
        g.n_pairs = K;
        g.x_pair = 0;
        g.y_pair = 1;
        /* f came from the HC pre with the router launch in between */
        g.x_early = !skipped("router", T) && !skipped("router + shared gate/up", T);
        mv_job u = g;
        u.w = L->up_exps;
        u.y = cs->u;
        jb[0] = g;
        jb[1] = u;
        /* the gate/up's last block of each pair does its SwiGLU (DS4_CUDA_FIN with experts) */
        dact h_out = forms_for(cs->h, {&L->down_exps}, true);
        bool h_fin = cm->fin_experts && K <= 32 && !h_out.f;
        for (int k = 0; h_fin && k < 2; k++)
            h_fin = finish_with(jb[k], MV_FIN_SWIGLU, cs->fin_cnt + FIN_EXP, FF, cs->g, cs->u, FF, cs->wts, clamp,
                                h_out, 0);
        if (!h_fin) jb[0].fin = jb[1].fin = MV_FIN_NONE;
        if (!skipped("experts gate/up", T)) cu_matvec(sm, jb, 2, 1);
        kcheck(F, "experts gate/up");
        if (!h_fin) {
            h_out = forms_for(cs->h, {&L->down_exps});
            if (!skipped("experts swiglu", T)) cu_swiglu(sm, cs->g, cs->u, cs->wts, K, FF, clamp, h_out);
        }
        kcheck(F, "experts swiglu");
        mv_job d = job(L->down_exps, av_of(cs->h), cs->ye, E);
        d.mat_ids = cs->ids;
        d.n_pairs = K;
        d.x_pair = 1;
        d.y_pair = 1;
        /* route ran three launches back, so the down rows could be
         * prefetched under the SwiGLU (DS4_CUDA_DOWN_PREFETCH=1); since the
         * main stream became the FFN half's critical path (the split's own
         * stream) that costs 0.5% (H100: 213.4 -> 214.6 tok/s without it) */
        d.ids_early = cm->down_prefetch;
        if (!skipped("experts down", T)) cu_matvec(sm, &d, 1, 1);
    } else {
        cu_moe_sort(sm, cs->ids, T * K, X, cs->cnt, cs->off, cs->list);
        /* gate, up and SwiGLU in one tensor-core launch when it applies */
        if (cu_mma_moe_swiglu(sm, L->gate_exps, L->up_exps, X, cs->cnt, cs->off, cs->list, av_of(cs->f), K, cs->wts,
                              clamp, cs->h.f, FF, T)) {
            if (!cu_mma_moe_ok(L->down_exps, av_of(cs->h), T)) cu_quantize(sm, cs->h.f, FF, T * K, cs->h);
        } else {
            cu_moe_mm(sm, L->gate_exps, X, cs->cnt, cs->off, cs->list, av_of(cs->f), K, cs->g, FF, T);
            cu_moe_mm(sm, L->up_exps, X, cs->cnt, cs->off, cs->list, av_of(cs->f), K, cs->u, FF, T);
            cu_swiglu(sm, cs->g, cs->u, cs->wts, T * K, FF, clamp, cs->h);
        }
        cu_moe_mm(sm, L->down_exps, X, cs->cnt, cs->off, cs->list, av_of(cs->h), 1, cs->ye, E, T);
    }
    kcheck(F, "experts down");
    if (split_side && !split_hcs) { /* the Sinkhorn split for this layer's hc_post, last on the side branch */
        cu_hc_split(ss, hcp, cs->hcpart, E, eps, cs->pre, cs->post, cs->comb);
        kcheck(F, "hc split (ffn)");
    }
    join_side(F, 1);
    if (split_hcs) join_hcs(F);
    /* the next mix: the next layer's attention, or the output head of a decode step */
    const dweight *next = il + 1 < hp->n_layer ? &cm->L[il + 1].hc_attn_fn : T == 1 ? &cm->out_hc_fn : NULL;
    /* the expert sum (shared + routed rows in the CPU's order) happens inside */
    F->mix_S = skipped("expert sum + hc post (ffn)", T)
                   ? cu_hc_post_splits(E)
                   : cu_hc_post(sm, cs->R, cs->ysh, cs->post, cs->comb, T, C, E, next, cs->hcpart, cs->ye, cs->ids, K,
                                cm->hc_gram && il + 1 < hp->n_layer ? cs->hcgram : NULL, &F->gram);
    kcheck(F, "expert sum + hc post (ffn)");
}

/* cuda_backend.cuh - the CUDA backend's private state: the device model
 * (weights per layer, streams, A/B switches), the session (KV state and
 * scratch on the device, the decode graphs) and the forward pass's context,
 * shared by cuda_backend.cu (model, session, forward plumbing, the bench and
 * profile entry points) and cuda_layers.cu (the two halves of a layer). */
#ifndef DS4_CUDA_BACKEND_CUH
#define DS4_CUDA_BACKEND_CUH

#include <initializer_list>
#include <string>
#include <vector>

#include "cuda_internal.cuh"

typedef struct {
    dweight hc_attn_fn, hc_ffn_fn, q_a, q_b, kv, out_a, out_b, comp_ape, comp_kv, comp_gate;
    dweight idx_q_b, idx_proj, idx_ape, idx_kv, idx_gate, router, gate_exps, up_exps, down_exps, gate_sh, up_sh,
        down_sh;
    const float *hc_attn_scale, *hc_attn_base, *hc_ffn_scale, *hc_ffn_base, *attn_norm, *q_a_norm, *kv_norm, *sinks;
    const float *comp_norm, *idx_norm, *ffn_norm, *expert_bias;
    const int32_t *tid2eid;
} cu_layer;

typedef struct cu_model : cu_alloc {
    std::vector<cu_layer> L;
    dweight tok_embd, out_hc_fn, output;
    const float *out_hc_base, *out_hc_scale, *out_norm;
    float *rope_main, *rope_comp;
    bool sync_each; /* DS4_CUDA_SYNC */
    bool use_graph; /* DS4_CUDA_GRAPH */
    cudaStream_t side;  /* independent branches of a layer (KV row, compressors, shared expert) */
    cudaEvent_t fork_ev[3], join_ev[3];
    cudaStream_t hcs;   /* decode: the Sinkhorn split of a layer half, from its start to its HC post */
    cudaEvent_t hcs_fork_ev, hcs_join_ev;
    int split_stream;   /* which halves' Sinkhorn splits run on hcs (DS4_CUDA_HC_SPLIT_STREAM: 2 both, the default;
                           1 the FFN half's; 0 none: last on the side branch) */
    bool concurrent;    /* DS4_CUDA_STREAMS != 0 */
    bool side_fused;    /* decode: KV row and compressors in one launch (DS4_CUDA_SIDE_FUSED != 0) */
    bool router_alone;  /* decode: the router its own launch, the shared expert on the side (DS4_CUDA_ROUTER_ALONE != 0) */
    bool q_in_attn;     /* decode: the attention kernel does the query heads' norm + RoPE (DS4_CUDA_Q_IN_ATTN != 0) */
    bool route_in_router; /* decode: the router's last block routes the token (DS4_CUDA_ROUTE_IN_ROUTER != 0) */
    bool hc_gram;       /* decode: hc_post forms R's Gram partials, hc_pre collapses over many blocks (DS4_CUDA_HC_GRAM != 0) */
    bool split_side;    /* ... and the Sinkhorn split runs on the side stream (DS4_CUDA_HC_SPLIT_SIDE != 0) */
    bool indexer_side;  /* decode: the indexer's query product, heads and top-k on the side stream beside q_b
                           (DS4_CUDA_INDEXER_SIDE != 0) */
    bool indexer_hcs;   /* ... its query product and heads on hcs beside the KV row and compressors
                           (DS4_CUDA_INDEXER_HCS != 0) */
    bool down_prefetch; /* decode: the routed experts' down launch prefetches its rows (DS4_CUDA_DOWN_PREFETCH=1) */
    /* decode: products whose last block forms the next product's activation (mv_job.fin) instead of a
     * launch between them (DS4_CUDA_FIN: a list of norm, experts, shared, quant; default norm; "none":
     * all launches) */
    bool fin_norm;      /* the input projections: q_a's RMSNorm for q_b */
    bool fin_experts;   /* the routed experts' gate/up: the SwiGLU for their down */
    bool fin_shared;    /* the shared expert's gate/up: the SwiGLU for its down */
    bool fin_quant;     /* out_a: its output's Q8_0 form for out_b */
} cu_model;

static inline cu_model *CM(const ds4_model *m) { return (cu_model *)m->bk; }

typedef struct {
    float *raw, *comp, *comp_kv, *comp_sc, *idx, *idx_kv, *idx_sc;
    uint32_t comp_cap;
} cu_lstate;

/* counters of the finishing decode products (mv_job.fin): one launch on a
 * stream uses a slot range at a time; concurrent launches use different ones */
#define FIN_SLOTS 64
#define FIN_QA 0       /* the input projections (q_a) */
#define FIN_OUTA 1     /* out_a, a slot a group (up to 16) */
#define FIN_EXP 17     /* the routed experts' gate/up, a slot a pair (up to 32) */
#define FIN_SH 49      /* the shared expert's gate/up (side stream) */

typedef struct {
    std::vector<cu_lstate> ls;
    void *state_mem, *scratch_mem;
    size_t state_bytes, scratch_bytes;
    uint32_t T_cap, splits1, splitsT, lchunk;
    /* device scratch */
    int32_t *tokens, *next;
    int64_t *pos0;
    float *R, *mix, *pre, *post, *comb, *kvb, *q, *pkv, *psc, *ikv, *isc, *wi, *qi, *pooled, *ipooled, *scores;
    float *part, *y, *rl, *sg, *su, *g, *u, *ye, *ysh, *wts, *logits, *hcpart, *amax;
    size_t part_floats;
    double *hcgram; /* the Gram partials of R a decode hc_post forms for the next hc_pre */
    uint32_t *fin_cnt; /* [FIN_SLOTS] block counters of the finishing decode products (mv_job.fin) */
    int32_t *ids, *cnt, *off, *list;
    uint32_t *sel, *n_sel;
    dact a, qa, o, low, f, sh, h, hx;
    /* pinned host */
    int32_t *h_tokens;
    int64_t *h_pos0;
    float *h_logits;
    /* decode graph */
    /* the decode step: short contexts, long ones (cluster top-k), past
     * position 105615 (wide RoPE angles, cu_wide_angles) */
    cudaGraphExec_t graph[3];
    bool graph_ready[3];
} cu_session;

static inline cu_session *CS(const ds4_session *s) { return (cu_session *)s->bk; }

typedef struct {
    const char *label;
    cudaEvent_t ev;
} prof_mark;

typedef struct {
    const ds4_session *s;
    cu_model *cm;
    cu_session *cs;
    const char *failed; /* first kernel that failed (sync mode) */
    cudaError_t error;
    std::vector<prof_mark> *marks; /* ds4_cuda_profile_decode: an event after each step */
    uint32_t mix_S; /* cs->hcpart holds the next hyper-connection's mix partials
                       (from the last hc_post), in mix_S slices; 0: not formed */
    bool gram;      /* cs->hcgram holds R's Gram partials (from the last hc_post) */
    bool topk_cluster; /* decode at a long context: the indexer's top-k over a cluster of blocks */
    bool wide;         /* decode past position 105615: RoPE kernels for large angles (cu_wide_angles) */
} fwd;

/* the side stream for a layer's independent branches (the main stream when
 * profiling or synchronising per step), and forking / joining it (i: 0 the
 * attention half, 1 the FFN half) */
cudaStream_t side_of(const fwd *F);
void fork_side(fwd *F, int i);
void join_side(fwd *F, int i);
/* the Sinkhorn split's own stream (hcs; the main stream when profiling or
 * synchronising per step) forked from the main stream, and joined back */
cudaStream_t hcs_of(const fwd *F);
void fork_hcs(fwd *F);
void join_hcs(fwd *F);
void hcs_to_side(fwd *F); /* the side stream waits for the split's stream */
/* decode steps left out for measurements (DS4_CUDA_SKIP, ds4-bench --skip-sweep) */
bool skipped(const char *what, uint32_t T);
/* after a step: per-step sync / profile marks / step times, by name */
void kcheck(fwd *f, const char *what);

/* a mat-vec job: all of w's rows against x, into y (rows y_stride apart) */
static inline mv_job job(const dweight &w, act_view x, float *y, uint32_t y_stride) {
    mv_job j;
    memset(&j, 0, sizeof j);
    j.w = w;
    j.n_pairs = 1;
    j.n_rows = w.n_out;
    j.x = x;
    j.y = y;
    j.y_stride = y_stride;
    return j;
}

/* cuda_layers.cu: layer il's attention half and FFN half for T tokens */
void attention_layer(fwd *F, uint32_t il, uint32_t T);
void ffn_layer(fwd *F, uint32_t il, uint32_t T);

#endif

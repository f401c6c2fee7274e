/* engine.h - internal definitions shared by the engine's files: the loaded
 * model (weights + thread pool + per-layer RoPE tables) and the session state
 * (the KV cache in all its DS4 forms). Not part of the public API (ds4.h).
 *
 * Per-layer state, D = head_dim, ID = indexer head dim, R = compress ratio,
 * c = 2 for the overlapping ratio-4 compressor else 1:
 *   raw     [raw_cap][D]    ring of the last raw KV rows; position p lives in
 *                           row p % raw_cap (raw_cap >= sliding_window + chunk - 1
 *                           so a whole prefill chunk fits beside its window)
 *   comp    [comp_cap][D]   compressed KV rows, one per closed window of R tokens
 *   comp_kv, comp_sc [c*R][c*D]  compressor frontier: projected kv and gate
 *                           scores of the tokens of the open window (rows
 *                           R..2R-1 for ratio 4, whose rows 0..R-1 hold the
 *                           previous window); scores start at -inf
 *   idx     [comp_cap][ID]  indexer keys (ratio-4 layers), with idx_kv/idx_sc
 *                           frontier [c*R][c*ID] like the compressor's
 */
#ifndef DS4_ENGINE_H
#define DS4_ENGINE_H

#include "ds4.h"
#include "model.h"
#include "threadpool.h"

struct ds4_backend;

struct ds4_model {
    ds4_model_weights *w;
    const ds4_hparams *hp;
    ds4_pool *pool;
    bool exact;
    bool f16_rounding;      /* F16 rounding of cache rows (on unless exact) */
    int prefill_chunk;
    bool prefill_chunk_auto; /* the backend's default, which it may size to the device */
    float *rope_main; /* [n_rot/2] inverse frequencies, uncompressed layers */
    float *rope_comp; /* [n_rot/2] compressed layers (compress base + YaRN) */
    const struct ds4_backend *backend; /* where the forward pass runs (backend.h) */
    void *bk;                          /* the backend's model state (device weights) */
    void *owned;                       /* host memory the weights point into (synthetic models), freed with the model */
};

typedef struct {
    float *raw;
    float *comp;
    uint32_t n_comp;
    float *comp_kv, *comp_sc;
    float *idx;
    uint32_t n_idx;
    float *idx_kv, *idx_sc;
} ds4_layer_state;

struct ds4_session {
    ds4_model *m;
    uint32_t n_ctx;
    uint32_t raw_cap;
    uint32_t n_tokens;
    int32_t *tokens;        /* [n_ctx] */
    ds4_layer_state *ls;    /* [n_layer] */
    float *logits;          /* [vocab]: after the last token */
    bool has_logits;
    int32_t *trace_topk;    /* diagnostic, see ds4_session_trace_indexer */
    uint32_t trace_positions;
    void *bk;               /* the backend's session state (device KV, scratch) */
};

/* Makes a model over already-bound weights (takes ownership of w, also on
 * failure): picks the backend and lets it take the weights. ds4_model_load
 * is ds4_model_weights_open + this. */
ds4_model *ds4_model_from_weights(ds4_model_weights *w, const ds4_model_params *params, char *err, size_t errlen);

/* Rows of compressed state a layer can hold for n_ctx tokens. */
static inline uint32_t ds4_comp_cap(uint32_t n_ctx, uint32_t ratio) { return ratio ? n_ctx / ratio + 1 : 0; }

/* Runs tokens[0..T) at positions s->n_tokens.. through the model (T no more
 * than the prefill chunk); writes [T][vocab] logits to all_logits if non-NULL
 * and the last row to s->logits. Does not validate (ds4_session_eval does). */
void ds4_forward_chunk(ds4_session *s, const int32_t *tokens, uint32_t T, float *all_logits);

/* Splits the M = (2+C)*C mixing values of one token into pre / post / comb
 * (comb projected by Sinkhorn onto doubly-stochastic matrices). */
void ds4_hc_split(const float *mix, const float *scale, const float *base, uint32_t C, uint32_t iters, float eps,
                  float *pre, float *post, float *comb);

/* Resets a layer's frontier (kv 0, scores -inf). */
void ds4_layer_state_reset_frontier(const ds4_hparams *hp, uint32_t il, ds4_layer_state *st);

#endif

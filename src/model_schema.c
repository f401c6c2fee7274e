/* model_schema.c - DS4 hyper-parameters <-> GGUF metadata, and the tensor
 * schema they imply (see model_schema.h).
 *
 * Key names and tensor names follow the GGUF files published for antirez/ds4
 * (docs: shared DS4-ARCHITECTURE.md §1.4, §2). The schema table below is the
 * single place that says which tensors a model has; shapes are computed from
 * the hyper-parameters, never from constants.
 */
#include "model_schema.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void set_err(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || !errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* ------------------------------------------------------------------------ */
/* metadata */

#define K(s) DS4_ARCH "." s

typedef struct {
    const char *key;
    size_t offset; /* into ds4_hparams, a uint32_t field */
} u32_key;

#define U32(k, field) {K(k), offsetof(ds4_hparams, field)}
static const u32_key u32_keys[] = {
    U32("block_count", n_layer),
    U32("embedding_length", n_embd),
    U32("vocab_size", n_vocab),
    U32("attention.head_count", n_head),
    U32("attention.head_count_kv", n_head_kv),
    U32("attention.key_length", head_dim),
    U32("attention.value_length", value_dim),
    U32("rope.dimension_count", n_rot),
    U32("attention.q_lora_rank", q_lora_rank),
    U32("attention.output_lora_rank", o_lora_rank),
    U32("attention.output_group_count", n_out_group),
    U32("expert_count", n_expert),
    U32("expert_used_count", n_expert_used),
    U32("expert_feed_forward_length", n_ff_exp),
    U32("expert_shared_count", n_expert_shared),
    U32("hash_layer_count", n_hash_layer),
    U32("attention.sliding_window", n_swa),
    U32("attention.indexer.head_count", n_indexer_head),
    U32("attention.indexer.key_length", indexer_head_dim),
    U32("attention.indexer.top_k", indexer_top_k),
    U32("hyper_connection.count", n_hc),
    U32("hyper_connection.sinkhorn_iterations", hc_sinkhorn_iter),
};

typedef struct {
    const char *key;
    size_t offset; /* a double field */
} f64_key;

#define F64(k, field) {K(k), offsetof(ds4_hparams, field)}
static const f64_key f64_keys[] = {
    F64("rope.freq_base", rope_freq_base),
    F64("attention.compress_rope_freq_base", compress_rope_freq_base),
    F64("rope.scaling.factor", rope_scale_factor),
    F64("rope.scaling.yarn_beta_fast", yarn_beta_fast),
    F64("rope.scaling.yarn_beta_slow", yarn_beta_slow),
    F64("expert_weights_scale", expert_weights_scale),
    F64("attention.layer_norm_rms_epsilon", rms_eps),
    F64("hyper_connection.epsilon", hc_eps),
};

bool ds4_hparams_from_gguf(const gguf_file *f, ds4_hparams *hp, char *err, size_t errlen) {
    memset(hp, 0, sizeof *hp);
    gguf_str arch;
    if (!gguf_get_str(f, "general.architecture", &arch)) {
        set_err(err, errlen, "missing general.architecture (not a model file?)");
        return false;
    }
    if (!gguf_str_eq(arch, DS4_ARCH)) {
        set_err(err, errlen, "architecture is '%.*s', expected '%s' (DeepSeek V4 Flash)", (int)(arch.len > 64 ? 64 : arch.len),
                arch.data, DS4_ARCH);
        return false;
    }
    for (size_t i = 0; i < sizeof u32_keys / sizeof u32_keys[0]; i++) {
        uint32_t *dst = (uint32_t *)((char *)hp + u32_keys[i].offset);
        if (!gguf_get_u32(f, u32_keys[i].key, dst)) {
            const gguf_value *v = gguf_get(f, u32_keys[i].key);
            set_err(err, errlen, v ? "%s has type %s, expected an unsigned 32-bit integer" : "missing metadata key %s",
                    u32_keys[i].key, v ? gguf_vtype_name(v->type) : "");
            return false;
        }
    }
    for (size_t i = 0; i < sizeof f64_keys / sizeof f64_keys[0]; i++) {
        double *dst = (double *)((char *)hp + f64_keys[i].offset);
        if (!gguf_get_f64(f, f64_keys[i].key, dst)) {
            const gguf_value *v = gguf_get(f, f64_keys[i].key);
            set_err(err, errlen, v ? "%s has type %s, expected a number" : "missing metadata key %s", f64_keys[i].key,
                    v ? gguf_vtype_name(v->type) : "");
            return false;
        }
    }
    if (!gguf_get_u64(f, K("rope.scaling.original_context_length"), &hp->rope_orig_ctx)) {
        set_err(err, errlen, "missing or non-integer metadata key %s", K("rope.scaling.original_context_length"));
        return false;
    }
    if (!gguf_get_bool(f, K("expert_weights_norm"), &hp->expert_weights_norm)) {
        set_err(err, errlen, "missing or non-bool metadata key %s", K("expert_weights_norm"));
        return false;
    }
    if (!gguf_get_u64(f, K("context_length"), &hp->context_length)) hp->context_length = 0;
    uint32_t groups = 0;
    if (gguf_get_u32(f, K("expert_group_count"), &groups) && groups > 1) {
        set_err(err, errlen, "%s = %u: grouped expert routing is not part of DeepSeek V4", K("expert_group_count"), groups);
        return false;
    }
    if (hp->n_layer == 0 || hp->n_layer > DS4_MAX_LAYERS) {
        set_err(err, errlen, "%s = %u is out of range [1, %d]", K("block_count"), hp->n_layer, DS4_MAX_LAYERS);
        return false;
    }
    const gguf_value *cr = gguf_get(f, K("attention.compress_ratios"));
    if (!cr || gguf_arr_len(cr) < hp->n_layer) {
        set_err(err, errlen, "%s must be an integer array with one entry per layer (%u)", K("attention.compress_ratios"),
                hp->n_layer);
        return false;
    }
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        int64_t r;
        if (!gguf_arr_i64(cr, il, &r) || r < 0 || r > 1 << 20) {
            set_err(err, errlen, "%s[%u] is not a valid compression ratio", K("attention.compress_ratios"), il);
            return false;
        }
        hp->compress_ratio[il] = (uint32_t)r;
    }
    const gguf_value *sc = gguf_get(f, K("swiglu_clamp_exp"));
    if (!sc || gguf_arr_len(sc) < hp->n_layer) {
        set_err(err, errlen, "%s must be a float array with one entry per layer (%u)", K("swiglu_clamp_exp"), hp->n_layer);
        return false;
    }
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        double c;
        if (!gguf_arr_f64(sc, il, &c)) {
            set_err(err, errlen, "%s[%u] is not a number", K("swiglu_clamp_exp"), il);
            return false;
        }
        hp->swiglu_clamp[il] = (float)c;
    }
    return ds4_hparams_validate(hp, err, errlen);
}

bool ds4_hparams_validate(const ds4_hparams *hp, char *err, size_t errlen) {
#define REQUIRE(cond, ...)                          \
    do {                                            \
        if (!(cond)) {                              \
            set_err(err, errlen, __VA_ARGS__);      \
            return false;                           \
        }                                           \
    } while (0)
    REQUIRE(hp->n_layer >= 1 && hp->n_layer <= DS4_MAX_LAYERS, "block_count %u out of range", hp->n_layer);
    REQUIRE(hp->n_embd > 0 && hp->n_vocab > 0 && hp->n_head > 0, "embedding_length, vocab_size and head_count must be > 0");
    REQUIRE(hp->n_head_kv == 1, "attention.head_count_kv = %u: DeepSeek V4 has one shared KV head", hp->n_head_kv);
    REQUIRE(hp->head_dim > 0 && hp->value_dim == hp->head_dim,
            "attention.value_length (%u) must equal attention.key_length (%u): keys and values share one row",
            hp->value_dim, hp->head_dim);
    REQUIRE(hp->n_rot > 0 && hp->n_rot % 2 == 0 && hp->n_rot <= hp->head_dim,
            "rope.dimension_count %u must be even and <= key_length %u", hp->n_rot, hp->head_dim);
    REQUIRE(hp->q_lora_rank > 0 && hp->o_lora_rank > 0, "q_lora_rank and output_lora_rank must be > 0");
    REQUIRE(hp->n_out_group > 0 && hp->n_head % hp->n_out_group == 0,
            "attention.output_group_count %u must divide head_count %u", hp->n_out_group, hp->n_head);
    REQUIRE(hp->n_expert > 0 && hp->n_expert_used > 0 && hp->n_expert_used <= hp->n_expert,
            "expert_used_count %u must be in [1, expert_count %u]", hp->n_expert_used, hp->n_expert);
    REQUIRE(hp->n_ff_exp > 0, "expert_feed_forward_length must be > 0");
    REQUIRE(hp->n_expert_shared == 1, "expert_shared_count = %u: the schema has exactly one shared expert",
            hp->n_expert_shared);
    REQUIRE(hp->n_hash_layer <= hp->n_layer, "hash_layer_count %u exceeds block_count %u", hp->n_hash_layer, hp->n_layer);
    REQUIRE(hp->n_swa > 0, "attention.sliding_window must be > 0");
    REQUIRE(hp->n_hc > 0 && hp->n_hc <= 64, "hyper_connection.count %u out of range [1, 64]", hp->n_hc);
    REQUIRE(hp->hc_sinkhorn_iter > 0, "hyper_connection.sinkhorn_iterations must be > 0");
    bool any_indexer = false;
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        uint32_t r = hp->compress_ratio[il];
        REQUIRE(r == 0 || r >= 2, "attention.compress_ratios[%u] = %u: must be 0 or >= 2", il, r);
        if (r == 4) any_indexer = true;
        REQUIRE(isfinite(hp->swiglu_clamp[il]) && hp->swiglu_clamp[il] > 0, "swiglu_clamp_exp[%u] must be > 0", il);
    }
    if (any_indexer) {
        REQUIRE(hp->n_indexer_head > 0 && hp->indexer_head_dim > 0 && hp->indexer_top_k > 0,
                "indexer head_count, key_length and top_k must be > 0 when a layer has compress ratio 4");
        REQUIRE(hp->n_rot <= hp->indexer_head_dim, "rope.dimension_count %u exceeds indexer key_length %u", hp->n_rot,
                hp->indexer_head_dim);
    }
    REQUIRE(hp->rope_freq_base > 0 && hp->compress_rope_freq_base > 0, "rope bases must be > 0");
    REQUIRE(hp->rope_scale_factor >= 1, "rope.scaling.factor must be >= 1");
    REQUIRE(hp->rms_eps > 0 && hp->hc_eps >= 0, "epsilons must be positive");
#undef REQUIRE
    return true;
}

void ds4_hparams_to_gguf(const ds4_hparams *hp, gguf_writer *w) {
    gguf_writer_set_str(w, "general.architecture", DS4_ARCH);
    for (size_t i = 0; i < sizeof u32_keys / sizeof u32_keys[0]; i++)
        gguf_writer_set_u32(w, u32_keys[i].key, *(const uint32_t *)((const char *)hp + u32_keys[i].offset));
    gguf_writer_set_arr(w, K("attention.compress_ratios"), GGUF_TYPE_UINT32, hp->compress_ratio, hp->n_layer);
    gguf_writer_set_arr(w, K("swiglu_clamp_exp"), GGUF_TYPE_FLOAT32, hp->swiglu_clamp, hp->n_layer);
    gguf_writer_set_u32(w, K("rope.scaling.original_context_length"), (uint32_t)hp->rope_orig_ctx);
    for (size_t i = 0; i < sizeof f64_keys / sizeof f64_keys[0]; i++)
        gguf_writer_set_f32(w, f64_keys[i].key, (float)*(const double *)((const char *)hp + f64_keys[i].offset));
    gguf_writer_set_bool(w, K("expert_weights_norm"), hp->expert_weights_norm);
    if (hp->context_length) gguf_writer_set_u64(w, K("context_length"), hp->context_length);
}

/* ------------------------------------------------------------------------ */
/* families */

static const char *const family_names[DS4_FAM_COUNT] = {
    "embedding", "output", "attention", "shared", "experts", "down", "hc", "router", "compressor", "indexer", "vector", "tid2eid",
};

const char *ds4_family_name(ds4_family fam) { return (unsigned)fam < DS4_FAM_COUNT ? family_names[fam] : "?"; }

bool ds4_family_allows(ds4_family fam, uint32_t type) {
    bool is_float = type == DS4_TYPE_F32 || type == DS4_TYPE_F16 || type == DS4_TYPE_BF16;
    bool is_quant = type == DS4_TYPE_Q8_0 || type == DS4_TYPE_Q2_K || type == DS4_TYPE_Q4_K || type == DS4_TYPE_IQ2_XXS;
    switch (fam) {
    case DS4_FAM_VECTOR: return type == DS4_TYPE_F32;
    case DS4_FAM_TID2EID: return type == DS4_TYPE_I32;
    case DS4_FAM_EMBED: return is_float || type == DS4_TYPE_Q8_0;
    default: return is_float || is_quant;
    }
}

/* ------------------------------------------------------------------------ */
/* tensor table */

typedef struct {
    ds4_tensor_spec *out;
    size_t cap, n;
} spec_list;

static void add(spec_list *l, const char *name, const char *hf, ds4_hf_layout lay, ds4_family fam, int32_t layer,
                bool optional, uint32_t n_dims, uint64_t ne0, uint64_t ne1, uint64_t ne2) {
    if (l->n < l->cap) {
        ds4_tensor_spec *s = &l->out[l->n];
        memset(s, 0, sizeof *s);
        snprintf(s->name, sizeof s->name, "%s", name);
        snprintf(s->hf_name, sizeof s->hf_name, "%s", hf);
        s->hf_layout = lay;
        s->family = fam;
        s->layer = layer;
        s->optional = optional;
        s->n_dims = n_dims;
        s->ne[0] = ne0;
        s->ne[1] = ne1;
        s->ne[2] = ne2;
    }
    l->n++;
}

size_t ds4_schema_tensors(const ds4_hparams *hp, ds4_tensor_spec *out, size_t cap) {
    spec_list l = {out, cap, 0};
    const uint64_t E = hp->n_embd, HC = hp->n_hc, HCE = (uint64_t)hp->n_hc * hp->n_embd;
    const uint64_t n_mix = (2 + HC) * HC; /* pre (HC) + post (HC) + comb (HC*HC) */
    add(&l, "token_embd.weight", "embed.weight", DS4_HF_PLAIN, DS4_FAM_EMBED, -1, false, 2, E, hp->n_vocab, 1);
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        char n[96], h[112];
        const uint32_t ratio = hp->compress_ratio[il];
        const uint64_t D = hp->head_dim, Q = hp->q_lora_rank, F = hp->n_ff_exp, X = hp->n_expert;
        const uint64_t G = hp->n_out_group, OR = hp->o_lora_rank;
#define L(gg, hf, fam, nd, a, b, c)                                     \
    do {                                                                \
        snprintf(n, sizeof n, "blk.%u.%s", il, gg);                     \
        snprintf(h, sizeof h, "layers.%u.%s", il, hf);                  \
        add(&l, n, h, DS4_HF_PLAIN, fam, (int32_t)il, false, nd, a, b, c); \
    } while (0)
        L("hc_attn_fn.weight", "hc_attn_fn", DS4_FAM_HC, 2, HCE, n_mix, 1);
        L("hc_attn_scale.weight", "hc_attn_scale", DS4_FAM_VECTOR, 1, 3, 1, 1);
        L("hc_attn_base.weight", "hc_attn_base", DS4_FAM_VECTOR, 1, n_mix, 1, 1);
        L("attn_norm.weight", "attn_norm.weight", DS4_FAM_VECTOR, 1, E, 1, 1);
        L("attn_q_a.weight", "attn.wq_a.weight", DS4_FAM_ATTN_PROJ, 2, E, Q, 1);
        L("attn_q_a_norm.weight", "attn.q_norm.weight", DS4_FAM_VECTOR, 1, Q, 1, 1);
        L("attn_q_b.weight", "attn.wq_b.weight", DS4_FAM_ATTN_PROJ, 2, Q, hp->n_head * D, 1);
        L("attn_kv.weight", "attn.wkv.weight", DS4_FAM_ATTN_PROJ, 2, E, D, 1);
        L("attn_kv_a_norm.weight", "attn.kv_norm.weight", DS4_FAM_VECTOR, 1, D, 1, 1);
        L("attn_sinks.weight", "attn.attn_sink", DS4_FAM_VECTOR, 1, hp->n_head, 1, 1);
        L("attn_output_a.weight", "attn.wo_a.weight", DS4_FAM_ATTN_PROJ, 2, hp->n_head * D / G, G * OR, 1);
        L("attn_output_b.weight", "attn.wo_b.weight", DS4_FAM_ATTN_PROJ, 2, G * OR, E, 1);
        if (ratio) {
            const uint64_t Wc = ds4_compress_overlap(ratio) * D;
            L("attn_compressor_ape.weight", "attn.compressor.ape", DS4_FAM_COMPRESSOR, 2, Wc, ratio, 1);
            L("attn_compressor_kv.weight", "attn.compressor.wkv.weight", DS4_FAM_COMPRESSOR, 2, E, Wc, 1);
            L("attn_compressor_gate.weight", "attn.compressor.wgate.weight", DS4_FAM_COMPRESSOR, 2, E, Wc, 1);
            L("attn_compressor_norm.weight", "attn.compressor.norm.weight", DS4_FAM_VECTOR, 1, D, 1, 1);
        }
        if (ratio == 4) {
            const uint64_t ID = hp->indexer_head_dim, Wi = ds4_compress_overlap(ratio) * ID;
            L("indexer.attn_q_b.weight", "attn.indexer.wq_b.weight", DS4_FAM_INDEXER, 2, Q, hp->n_indexer_head * ID, 1);
            L("indexer.proj.weight", "attn.indexer.weights_proj.weight", DS4_FAM_INDEXER, 2, E, hp->n_indexer_head, 1);
            L("indexer_compressor_ape.weight", "attn.indexer.compressor.ape", DS4_FAM_INDEXER, 2, Wi, ratio, 1);
            L("indexer_compressor_kv.weight", "attn.indexer.compressor.wkv.weight", DS4_FAM_INDEXER, 2, E, Wi, 1);
            L("indexer_compressor_gate.weight", "attn.indexer.compressor.wgate.weight", DS4_FAM_INDEXER, 2, E, Wi, 1);
            L("indexer_compressor_norm.weight", "attn.indexer.compressor.norm.weight", DS4_FAM_VECTOR, 1, ID, 1, 1);
        }
        L("hc_ffn_fn.weight", "hc_ffn_fn", DS4_FAM_HC, 2, HCE, n_mix, 1);
        L("hc_ffn_scale.weight", "hc_ffn_scale", DS4_FAM_VECTOR, 1, 3, 1, 1);
        L("hc_ffn_base.weight", "hc_ffn_base", DS4_FAM_VECTOR, 1, n_mix, 1, 1);
        L("ffn_norm.weight", "ffn_norm.weight", DS4_FAM_VECTOR, 1, E, 1, 1);
        L("ffn_gate_inp.weight", "ffn.gate.weight", DS4_FAM_ROUTER, 2, E, X, 1);
        if (ds4_layer_is_hash(hp, il)) {
            snprintf(n, sizeof n, "blk.%u.ffn_gate_tid2eid.weight", il);
            snprintf(h, sizeof h, "layers.%u.ffn.gate.tid2eid", il);
            add(&l, n, h, DS4_HF_TID2EID, DS4_FAM_TID2EID, (int32_t)il, false, 2, hp->n_expert_used, hp->n_vocab, 1);
        } else {
            snprintf(n, sizeof n, "blk.%u.exp_probs_b.bias", il);
            snprintf(h, sizeof h, "layers.%u.ffn.gate.bias", il);
            add(&l, n, h, DS4_HF_PLAIN, DS4_FAM_VECTOR, (int32_t)il, true, 1, X, 1, 1);
        }
        static const struct { const char *gg, *hf; bool down; } exps[3] = {
            {"ffn_gate_exps.weight", "w1", false}, {"ffn_up_exps.weight", "w3", false}, {"ffn_down_exps.weight", "w2", true}};
        for (int k = 0; k < 3; k++) {
            snprintf(n, sizeof n, "blk.%u.%s", il, exps[k].gg);
            snprintf(h, sizeof h, "layers.%u.ffn.experts.%%d.%s.weight", il, exps[k].hf);
            add(&l, n, h, DS4_HF_EXPERT_STACK, exps[k].down ? DS4_FAM_EXPERT_DOWN : DS4_FAM_EXPERT_GATE_UP, (int32_t)il,
                false, 3, exps[k].down ? F : E, exps[k].down ? E : F, X);
        }
        L("ffn_gate_shexp.weight", "ffn.shared_experts.w1.weight", DS4_FAM_SHARED, 2, E, F, 1);
        L("ffn_up_shexp.weight", "ffn.shared_experts.w3.weight", DS4_FAM_SHARED, 2, E, F, 1);
        L("ffn_down_shexp.weight", "ffn.shared_experts.w2.weight", DS4_FAM_SHARED, 2, F, E, 1);
#undef L
    }
    add(&l, "output_hc_base.weight", "hc_head_base", DS4_HF_PLAIN, DS4_FAM_VECTOR, -1, false, 1, HC, 1, 1);
    add(&l, "output_hc_fn.weight", "hc_head_fn", DS4_HF_PLAIN, DS4_FAM_HC, -1, false, 2, HCE, HC, 1);
    add(&l, "output_hc_scale.weight", "hc_head_scale", DS4_HF_PLAIN, DS4_FAM_VECTOR, -1, false, 1, 1, 1, 1);
    add(&l, "output_norm.weight", "norm.weight", DS4_HF_PLAIN, DS4_FAM_VECTOR, -1, false, 1, E, 1, 1);
    add(&l, "output.weight", "head.weight", DS4_HF_PLAIN, DS4_FAM_OUTPUT, -1, false, 2, E, hp->n_vocab, 1);
    return l.n;
}

static void shape_str(char *buf, size_t n, uint32_t nd, const uint64_t *ne) {
    size_t k = (size_t)snprintf(buf, n, "[");
    for (uint32_t d = 0; d < nd && k < n; d++)
        k += (size_t)snprintf(buf + k, n - k, "%s%llu", d ? ", " : "", (unsigned long long)ne[d]);
    if (k < n) snprintf(buf + k, n - k, "]");
}

bool ds4_schema_check(const gguf_file *f, char *err, size_t errlen) {
    ds4_hparams *hp = malloc(sizeof *hp);
    if (!hp) { set_err(err, errlen, "out of memory"); return false; }
    bool ok = false;
    ds4_tensor_spec *specs = NULL;
    if (!ds4_hparams_from_gguf(f, hp, err, errlen)) goto done;
    size_t n = ds4_schema_tensors(hp, NULL, 0);
    specs = calloc(n, sizeof *specs);
    if (!specs) { set_err(err, errlen, "out of memory"); goto done; }
    ds4_schema_tensors(hp, specs, n);
    size_t matched = 0;
    for (size_t i = 0; i < n; i++) {
        const ds4_tensor_spec *s = &specs[i];
        const gguf_tensor *t = gguf_find_tensor(f, s->name);
        if (!t) {
            if (s->optional) continue;
            set_err(err, errlen, "missing tensor %s", s->name);
            goto done;
        }
        matched++;
        /* trailing 1-sized dims are equivalent */
        uint32_t nd = t->n_dims;
        while (nd > 1 && t->ne[nd - 1] == 1) nd--;
        uint32_t want_nd = s->n_dims;
        while (want_nd > 1 && s->ne[want_nd - 1] == 1) want_nd--;
        bool same = nd == want_nd;
        for (uint32_t d = 0; same && d < nd; d++) same = t->ne[d] == s->ne[d];
        if (!same) {
            char got[96], want[96];
            shape_str(got, sizeof got, t->n_dims, t->ne);
            shape_str(want, sizeof want, s->n_dims, s->ne);
            set_err(err, errlen, "tensor %s has shape %s, expected %s", s->name, got, want);
            goto done;
        }
        if (!ds4_family_allows(s->family, t->type)) {
            set_err(err, errlen, "tensor %s has type %s, not allowed for %s tensors", s->name, ds4_dtype_name(t->type),
                    ds4_family_name(s->family));
            goto done;
        }
        if (strstr(s->name, "ffn_up_exps")) {
            char gate[96];
            snprintf(gate, sizeof gate, "blk.%d.ffn_gate_exps.weight", s->layer);
            const gguf_tensor *g = gguf_find_tensor(f, gate);
            if (g && g->type != t->type) {
                set_err(err, errlen, "tensor %s has type %s but %s is %s: gate and up experts must share a type",
                        s->name, ds4_dtype_name(t->type), gate, ds4_dtype_name(g->type));
                goto done;
            }
        }
    }
    if (matched != gguf_n_tensors(f)) {
        for (uint64_t i = 0; i < gguf_n_tensors(f); i++) {
            const char *name = gguf_tensor_at(f, i)->name;
            bool known = false;
            for (size_t j = 0; j < n && !known; j++) known = strcmp(specs[j].name, name) == 0;
            if (!known) {
                set_err(err, errlen, "unexpected tensor %s (not part of the DS4 schema for this configuration)", name);
                goto done;
            }
        }
    }
    ok = true;
done:
    free(specs);
    free(hp);
    return ok;
}

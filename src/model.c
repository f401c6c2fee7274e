/* model.c - binds the tensors of a DS4 GGUF to ds4_model_weights (see model.h).
 *
 * Validation is the schema's (ds4_schema_check): after it passes, every
 * required tensor exists with the expected shape and an allowed type, so the
 * binder below only looks names up.
 */
#include "model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static ds4_weight bind_weight(const gguf_file *f, const char *name) {
    ds4_weight w = {0};
    const gguf_tensor *t = gguf_find_tensor(f, name);
    if (!t) return w;
    w.data = t->data;
    w.type = (ds4_dtype)t->type;
    w.n_in = t->ne[0];
    w.n_out = t->n_dims >= 2 ? t->ne[1] : 1;
    w.n_mat = t->n_dims >= 3 ? t->ne[2] : 1;
    uint64_t rb = 0;
    ds4_dtype_nbytes(t->type, t->ne[0], &rb);
    w.row_bytes = (size_t)rb;
    return w;
}

static const void *bind_data(const gguf_file *f, const char *name) {
    const gguf_tensor *t = gguf_find_tensor(f, name);
    return t ? t->data : NULL;
}

ds4_model_weights *ds4_model_weights_open(const char *path, char *err, size_t errlen) {
    gguf_file *f = gguf_open(path, err, errlen);
    if (!f) return NULL;
    char why[400];
    if (!ds4_schema_check(f, why, sizeof why)) {
        snprintf(err, errlen, "%s: not a usable DS4 model: %s", path, why);
        gguf_close(f);
        return NULL;
    }
    ds4_model_weights *m = calloc(1, sizeof *m);
    m->file = f;
    ds4_hparams_from_gguf(f, &m->hp, NULL, 0);
    const ds4_hparams *hp = &m->hp;
    m->layers = calloc(hp->n_layer, sizeof(ds4_layer));
    m->tok_embd = bind_weight(f, "token_embd.weight");
    m->out_hc_base = bind_data(f, "output_hc_base.weight");
    m->out_hc_fn = bind_weight(f, "output_hc_fn.weight");
    m->out_hc_scale = bind_data(f, "output_hc_scale.weight");
    m->out_norm = bind_data(f, "output_norm.weight");
    m->output = bind_weight(f, "output.weight");
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        ds4_layer *L = &m->layers[il];
        char n[96];
#define W(field, suffix) (snprintf(n, sizeof n, "blk.%u." suffix, il), L->field = bind_weight(f, n))
#define V(field, suffix) (snprintf(n, sizeof n, "blk.%u." suffix, il), L->field = bind_data(f, n))
        W(hc_attn_fn, "hc_attn_fn.weight");
        V(hc_attn_scale, "hc_attn_scale.weight");
        V(hc_attn_base, "hc_attn_base.weight");
        W(hc_ffn_fn, "hc_ffn_fn.weight");
        V(hc_ffn_scale, "hc_ffn_scale.weight");
        V(hc_ffn_base, "hc_ffn_base.weight");
        V(attn_norm, "attn_norm.weight");
        W(q_a, "attn_q_a.weight");
        V(q_a_norm, "attn_q_a_norm.weight");
        W(q_b, "attn_q_b.weight");
        W(kv, "attn_kv.weight");
        V(kv_norm, "attn_kv_a_norm.weight");
        V(sinks, "attn_sinks.weight");
        W(out_a, "attn_output_a.weight");
        W(out_b, "attn_output_b.weight");
        W(comp_ape, "attn_compressor_ape.weight");
        W(comp_kv, "attn_compressor_kv.weight");
        W(comp_gate, "attn_compressor_gate.weight");
        V(comp_norm, "attn_compressor_norm.weight");
        W(idx_q_b, "indexer.attn_q_b.weight");
        W(idx_proj, "indexer.proj.weight");
        W(idx_ape, "indexer_compressor_ape.weight");
        W(idx_kv, "indexer_compressor_kv.weight");
        W(idx_gate, "indexer_compressor_gate.weight");
        V(idx_norm, "indexer_compressor_norm.weight");
        V(ffn_norm, "ffn_norm.weight");
        W(router, "ffn_gate_inp.weight");
        V(expert_bias, "exp_probs_b.bias");
        V(tid2eid, "ffn_gate_tid2eid.weight");
        W(gate_exps, "ffn_gate_exps.weight");
        W(up_exps, "ffn_up_exps.weight");
        W(down_exps, "ffn_down_exps.weight");
        W(gate_sh, "ffn_gate_shexp.weight");
        W(up_sh, "ffn_up_shexp.weight");
        W(down_sh, "ffn_down_shexp.weight");
#undef W
#undef V
    }
    return m;
}

void ds4_model_weights_close(ds4_model_weights *m) {
    if (!m) return;
    free(m->layers);
    gguf_close(m->file);
    free(m);
}

/* model.h - a DS4 model bound to its mmapped GGUF file.
 *
 * ds4_model_open() reads the hyper-parameters from metadata, checks the file
 * against the schema (model_schema.h: every tensor's presence, shape and
 * type), and fills one ds4_layer per block with pointers into the mapping.
 * Nothing is copied: weights stay in the page cache, shared between processes.
 *
 * Shapes below use ggml order [ne0, ne1(, ne2)]: a matrix [in, out] is `out`
 * rows of `in` values. E = n_embd, H = n_head, D = head_dim, Q = q_lora_rank,
 * G = n_out_group, R = o_lora_rank, X = n_expert, F = n_ff_exp, C = n_hc,
 * M = (2 + C) * C mixing values, Wc = compressor width, I = indexer heads,
 * ID = indexer head dim.
 */
#ifndef DS4_MODEL_H
#define DS4_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dtype.h"
#include "gguf.h"
#include "model_schema.h"

/* A weight matrix (or a stack of them) in any supported element type. */
typedef struct {
    const uint8_t *data; /* NULL when the tensor is absent */
    ds4_dtype type;
    uint64_t n_in;       /* ne0: values per row */
    uint64_t n_out;      /* ne1: rows per matrix */
    uint64_t n_mat;      /* ne2: stacked matrices (experts), else 1 */
    size_t row_bytes;
} ds4_weight;

static inline const uint8_t *ds4_weight_row(const ds4_weight *w, uint64_t mat, uint64_t row) {
    return w->data + (mat * w->n_out + row) * w->row_bytes;
}

typedef struct {
    /* hyper-connections, attention site and FFN site */
    ds4_weight hc_attn_fn;      /* [C*E, M] */
    const float *hc_attn_scale; /* [3] pre, post, comb */
    const float *hc_attn_base;  /* [M] */
    ds4_weight hc_ffn_fn;       /* [C*E, M] */
    const float *hc_ffn_scale;  /* [3] */
    const float *hc_ffn_base;   /* [M] */
    /* attention */
    const float *attn_norm;     /* [E] */
    ds4_weight q_a;             /* [E, Q] */
    const float *q_a_norm;      /* [Q] */
    ds4_weight q_b;             /* [Q, H*D] */
    ds4_weight kv;              /* [E, D] */
    const float *kv_norm;       /* [D] */
    const float *sinks;         /* [H] */
    ds4_weight out_a;           /* [H*D/G, G*R]: group g uses rows [g*R, (g+1)*R) */
    ds4_weight out_b;           /* [G*R, E] */
    /* compressor (ratio != 0) */
    ds4_weight comp_ape;        /* [Wc, ratio] */
    ds4_weight comp_kv;         /* [E, Wc] */
    ds4_weight comp_gate;       /* [E, Wc] */
    const float *comp_norm;     /* [D] */
    /* indexer (ratio == 4) */
    ds4_weight idx_q_b;         /* [Q, I*ID] */
    ds4_weight idx_proj;        /* [E, I] */
    ds4_weight idx_ape;         /* [2*ID, ratio] */
    ds4_weight idx_kv;          /* [E, 2*ID] */
    ds4_weight idx_gate;        /* [E, 2*ID] */
    const float *idx_norm;      /* [ID] */
    /* FFN */
    const float *ffn_norm;      /* [E] */
    ds4_weight router;          /* [E, X] */
    const float *expert_bias;   /* [X] or NULL (score layers only) */
    const int32_t *tid2eid;     /* [n_expert_used, vocab] (hash layers only) */
    ds4_weight gate_exps;       /* [E, F, X] */
    ds4_weight up_exps;         /* [E, F, X] */
    ds4_weight down_exps;       /* [F, E, X] */
    ds4_weight gate_sh;         /* [E, F] */
    ds4_weight up_sh;           /* [E, F] */
    ds4_weight down_sh;         /* [F, E] */
} ds4_layer;

typedef struct {
    gguf_file *file;
    ds4_hparams hp;
    ds4_layer *layers;          /* [n_layer] */
    ds4_weight tok_embd;        /* [E, vocab] */
    const float *out_hc_base;   /* [C] */
    ds4_weight out_hc_fn;       /* [C*E, C] */
    const float *out_hc_scale;  /* [1] */
    const float *out_norm;      /* [E] */
    ds4_weight output;          /* [E, vocab] */
} ds4_model_weights;

/* Opens path and binds every tensor; on failure returns NULL with a one-line
 * reason in err (another architecture, truncated file, wrong shape/type...). */
ds4_model_weights *ds4_model_weights_open(const char *path, char *err, size_t errlen);
void ds4_model_weights_close(ds4_model_weights *m);

#endif

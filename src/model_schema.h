/* model_schema.h - the DS4 (DeepSeek V4 Flash) model schema: hyper-parameters
 * read from GGUF metadata, and the list of tensors (names, ggml shapes,
 * allowed element types) those hyper-parameters imply.
 *
 * Nothing here hard-codes a model size: the real Flash model (43 layers, 4096
 * wide, 256 experts) and a 6-layer, 256-wide test model go through the same
 * code. The schema is shared by the converter (what to write), `ds4 info`
 * (does a file match?) and the model binder (what to load).
 */
#ifndef DS4_MODEL_SCHEMA_H
#define DS4_MODEL_SCHEMA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dtype.h"
#include "gguf.h"

#define DS4_MAX_LAYERS 1024
#define DS4_ARCH "deepseek4"

typedef struct {
    uint32_t n_layer;          /* deepseek4.block_count */
    uint32_t n_embd;           /* embedding_length: model width */
    uint32_t n_vocab;          /* vocab_size */
    uint32_t n_head;           /* attention.head_count: query heads */
    uint32_t n_head_kv;        /* attention.head_count_kv: must be 1 (one shared latent KV row) */
    uint32_t head_dim;         /* attention.key_length */
    uint32_t value_dim;        /* attention.value_length: == head_dim (K = V) */
    uint32_t n_rot;            /* rope.dimension_count: rotated tail dims of each head */
    uint32_t q_lora_rank;      /* attention.q_lora_rank */
    uint32_t o_lora_rank;      /* attention.output_lora_rank: per-group low rank */
    uint32_t n_out_group;      /* attention.output_group_count */
    uint32_t n_expert;         /* expert_count: routed experts */
    uint32_t n_expert_used;    /* expert_used_count: experts per token */
    uint32_t n_ff_exp;         /* expert_feed_forward_length: routed and shared hidden width */
    uint32_t n_expert_shared;  /* expert_shared_count: must be 1 */
    uint32_t n_hash_layer;     /* hash_layer_count: layers [0, n) route by token id */
    uint32_t n_swa;            /* attention.sliding_window: raw rows visible, incl. current */
    uint32_t n_indexer_head;   /* attention.indexer.head_count */
    uint32_t indexer_head_dim; /* attention.indexer.key_length */
    uint32_t indexer_top_k;    /* attention.indexer.top_k */
    uint32_t n_hc;             /* hyper_connection.count: residual streams */
    uint32_t hc_sinkhorn_iter; /* hyper_connection.sinkhorn_iterations */
    uint32_t compress_ratio[DS4_MAX_LAYERS]; /* attention.compress_ratios: 0 = raw window only */
    float swiglu_clamp[DS4_MAX_LAYERS];      /* swiglu_clamp_exp */
    double rope_freq_base;          /* rope.freq_base: uncompressed layers */
    double compress_rope_freq_base; /* attention.compress_rope_freq_base */
    double rope_scale_factor;       /* rope.scaling.factor (YaRN, compressed layers) */
    double yarn_beta_fast, yarn_beta_slow;
    uint64_t rope_orig_ctx;         /* rope.scaling.original_context_length */
    double expert_weights_scale;    /* expert_weights_scale */
    bool expert_weights_norm;       /* expert_weights_norm */
    double rms_eps;                 /* attention.layer_norm_rms_epsilon */
    double hc_eps;                  /* hyper_connection.epsilon */
    uint64_t context_length;        /* context_length (informational, 0 if absent) */
} ds4_hparams;

/* Reads and validates every deepseek4.* key. On failure, err names the key
 * and what is wrong with it. */
bool ds4_hparams_from_gguf(const gguf_file *f, ds4_hparams *hp, char *err, size_t errlen);
/* Internal consistency (positive sizes, divisibility, ranges). */
bool ds4_hparams_validate(const ds4_hparams *hp, char *err, size_t errlen);
/* Writes general.architecture and every deepseek4.* key. */
void ds4_hparams_to_gguf(const ds4_hparams *hp, gguf_writer *w);

/* Derived facts. */
static inline bool ds4_layer_is_compressed(const ds4_hparams *hp, uint32_t il) { return hp->compress_ratio[il] != 0; }
static inline bool ds4_layer_has_indexer(const ds4_hparams *hp, uint32_t il) { return hp->compress_ratio[il] == 4; }
static inline bool ds4_layer_is_hash(const ds4_hparams *hp, uint32_t il) { return il < hp->n_hash_layer; }
/* Compressor width multiplier: 2 for the overlapping ratio-4 compressor, else 1. */
static inline uint32_t ds4_compress_overlap(uint32_t ratio) { return ratio == 4 ? 2 : 1; }

/* Tensor families: the unit of quantization policy. */
typedef enum {
    DS4_FAM_EMBED,          /* token_embd */
    DS4_FAM_OUTPUT,         /* output (LM head) */
    DS4_FAM_ATTN_PROJ,      /* attn_q_a, attn_q_b, attn_kv, attn_output_a, attn_output_b */
    DS4_FAM_SHARED,         /* ffn_{gate,up,down}_shexp */
    DS4_FAM_EXPERT_GATE_UP, /* ffn_gate_exps, ffn_up_exps */
    DS4_FAM_EXPERT_DOWN,    /* ffn_down_exps */
    DS4_FAM_HC,             /* hyper-connection fn matrices */
    DS4_FAM_ROUTER,         /* ffn_gate_inp */
    DS4_FAM_COMPRESSOR,     /* attention compressor kv/gate/ape */
    DS4_FAM_INDEXER,        /* indexer q_b, proj, indexer compressor kv/gate/ape */
    DS4_FAM_VECTOR,         /* norms, sinks, HC scale/base, expert bias: always F32 */
    DS4_FAM_TID2EID,        /* hash-routing table: I32 */
    DS4_FAM_COUNT
} ds4_family;

const char *ds4_family_name(ds4_family fam);
/* Element types the runtime accepts for a family. */
bool ds4_family_allows(ds4_family fam, uint32_t type);

/* How a tensor is found in DeepSeek's official checkpoint. */
typedef enum {
    DS4_HF_PLAIN,        /* one tensor; ggml shape is the reversed HF shape */
    DS4_HF_EXPERT_STACK, /* hf_name has '%d' for the expert index; experts stacked on ne[2] */
    DS4_HF_TID2EID,      /* HF I64 [vocab, k] -> I32 [k, vocab] */
} ds4_hf_layout;

typedef struct {
    char name[96];     /* GGUF name */
    char hf_name[112]; /* official checkpoint name (printf pattern for expert stacks) */
    ds4_hf_layout hf_layout;
    uint32_t n_dims;
    uint64_t ne[3];    /* ggml order */
    ds4_family family;
    int32_t layer;     /* -1 for global tensors */
    bool optional;     /* exp_probs_b.bias may be absent */
} ds4_tensor_spec;

/* Enumerates the schema's tensors in canonical file order. Returns the count;
 * writes at most cap specs (call with cap 0 to size). */
size_t ds4_schema_tensors(const ds4_hparams *hp, ds4_tensor_spec *out, size_t cap);

/* Full check of a file: metadata, then every tensor (presence, shape, type,
 * gate/up sharing a type), then unexpected tensors. On mismatch returns false
 * with the first problem in err. */
bool ds4_schema_check(const gguf_file *f, char *err, size_t errlen);

#endif

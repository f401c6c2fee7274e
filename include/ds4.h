/* ds4.h - DwarfStar 4: DeepSeek V4 Flash inference engine, public API.
 *
 * Load a model, make a session (the KV state of one token sequence), feed it
 * tokens, read logits, sample, and snapshot the session to a file. Every
 * function that can fail returns false/NULL and writes a one-line reason into
 * the caller's err buffer.
 *
 *   ds4_model *m = ds4_model_load("model.gguf", &(ds4_model_params){.n_threads = 8}, err, sizeof err);
 *   ds4_session *s = ds4_session_new(m, 4096, err, sizeof err);
 *   ds4_session_eval(s, tokens, n, NULL, err, sizeof err);     // prefill
 *   const float *logits = ds4_session_logits(s);                // next-token logits
 */
#ifndef DS4_H
#define DS4_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ds4_model ds4_model;
typedef struct ds4_session ds4_session;

typedef struct {
    int n_threads;        /* 0: all cores */
    bool exact;           /* turn off the official FP8/FP4/F16 low-precision simulations */
    int prefill_chunk;    /* tokens per batched prefill step (0: the backend's default: 256 CPU; CUDA 8192
                             with >= 32 GiB free after the weights, else 4096) */
    bool no_f16_rounding; /* diagnostic: keep FP8/FP4 simulations, skip F16 rounding of cache rows */
    const char *backend;  /* "cpu", "cuda", or NULL/"auto": $DS4_BACKEND, else CUDA when built in and a GPU is present */
} ds4_model_params;

ds4_model *ds4_model_load(const char *path, const ds4_model_params *params, char *err, size_t errlen);
void ds4_model_free(ds4_model *m);
uint32_t ds4_model_vocab_size(const ds4_model *m);
uint32_t ds4_model_layer_count(const ds4_model *m);
/* "cpu" or "cuda": where this model's forward pass runs. */
const char *ds4_model_backend(const ds4_model *m);
/* One line about the backend's memory (weights, KV state, scratch) for a
 * model and optionally a session. */
void ds4_model_describe(const ds4_model *m, const ds4_session *s, char *buf, size_t buflen);
/* Number of layers with a Lightning indexer (ratio 4) and its top-k. */
bool ds4_model_indexer_shape(const ds4_model *m, uint32_t *n_layers, uint32_t *top_k);

/* The model file's tokenizer (tokenizer.h API; free with
 * ds4_tokenizer_free). NULL with a message when the file has none. */
typedef struct ds4_tokenizer ds4_tokenizer;
ds4_tokenizer *ds4_model_load_tokenizer(const ds4_model *m, char *err, size_t errlen);

/* A session holds up to n_ctx tokens of state. */
ds4_session *ds4_session_new(ds4_model *m, uint32_t n_ctx, char *err, size_t errlen);
void ds4_session_free(ds4_session *s);
uint32_t ds4_session_n_tokens(const ds4_session *s);
uint32_t ds4_session_n_ctx(const ds4_session *s);
const int32_t *ds4_session_tokens(const ds4_session *s);

/* Appends tokens (batched, chunked prefill; n == 1 is one decode step).
 * When all_logits != NULL it receives [n][vocab] logits, one row per token;
 * ds4_session_logits() always holds the logits after the last token.
 * Fails, with the session unchanged, on an out-of-range token id or when the
 * context would overflow. */
bool ds4_session_eval(ds4_session *s, const int32_t *tokens, uint32_t n, float *all_logits, char *err, size_t errlen);
const float *ds4_session_logits(const ds4_session *s);

/* Diagnostic: from now on, record the Lightning indexer's choice for every
 * evaluated position p < n_positions into out, laid out int32
 * [n_ratio4_layers][n_positions][indexer_top_k]: the selected compressed rows
 * in ascending order, padded with -1 (all visible rows when top-k is not
 * active). NULL stops recording. */
void ds4_session_trace_indexer(ds4_session *s, int32_t *out, uint32_t n_positions);

/* Session files (docs/SESSION.md): everything needed to continue exactly. */
bool ds4_session_save(const ds4_session *s, const char *path, char *err, size_t errlen);
bool ds4_session_load(ds4_session *s, const char *path, char *err, size_t errlen);
/* Keeps only the first n_keep tokens (re-evaluates them from the start when
 * the state cannot be cut in place). */
bool ds4_session_truncate(ds4_session *s, uint32_t n_keep, char *err, size_t errlen);

/* Sampling (docs/SAMPLING.md). temperature <= 0 is greedy (first max wins). */
typedef struct {
    float temperature; /* default 1 */
    int top_k;         /* 0 = off */
    float top_p;       /* 1 = off */
    float min_p;       /* 0 = off */
    uint64_t seed;
} ds4_sampler_params;

typedef struct ds4_sampler ds4_sampler;
ds4_sampler *ds4_sampler_new(const ds4_sampler_params *p);
void ds4_sampler_free(ds4_sampler *s);
int32_t ds4_sampler_sample(ds4_sampler *s, const float *logits, uint32_t n_vocab);

#ifdef __cplusplus
}
#endif

#endif

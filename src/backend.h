/* backend.h - where the forward pass runs: the CPU (the reference) or a GPU.
 *
 * The seam sits at the granularity of a chunk of tokens, not of single
 * operations: a backend owns its copy of the weights, its copy of the
 * session's KV state, and runs ds4_forward_chunk's contract (T tokens at
 * positions n_tokens.., logits out) in one call. The CPU backend is
 * forward.c itself, over the mmapped weights and the host state of
 * engine.h. A GPU backend keeps everything on the device so that a decode
 * step is one captured graph with no host round trip inside the layer loop
 * (a per-operation seam would force the host to decide routing, compressor
 * emission and indexer activation between kernels); it mirrors forward.c
 * step by step and every one of its kernels is tested against the CPU
 * function it replaces (tests/cuda/).
 *
 * Session files stay backend-neutral: the session code saves and loads the
 * host state of engine.h, and a GPU backend copies its state to and from it
 * around those calls (state_to_host / state_from_host), so a session saved
 * on one backend resumes on the other.
 */
#ifndef DS4_BACKEND_H
#define DS4_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine.h"

typedef struct ds4_backend {
    const char *name; /* "cpu", "cuda" */
    /* Takes the model's weights (upload, repacking). NULL: nothing to do. */
    bool (*model_init)(ds4_model *m, char *err, size_t errlen);
    void (*model_free)(ds4_model *m);
    /* Sizes the session's device state for s->n_ctx up front; fails with a
     * clear message when the device cannot hold it. */
    bool (*session_init)(ds4_session *s, char *err, size_t errlen);
    void (*session_free)(ds4_session *s);
    /* Empty state (no tokens): frontiers at (0, -inf). */
    void (*session_reset)(ds4_session *s);
    /* ds4_forward_chunk's contract; false with a message on a device error. */
    bool (*forward)(ds4_session *s, const int32_t *tokens, uint32_t T, float *all_logits, char *err, size_t errlen);
    /* Copies the device state into the host state of engine.h (before a
     * save) and back (after a load). n_comp/n_idx are host-side truth. */
    void (*state_to_host)(ds4_session *s);
    void (*state_from_host)(ds4_session *s);
    /* Human-readable memory report (weights, KV, scratch) into buf. */
    void (*describe)(const ds4_model *m, const ds4_session *s, char *buf, size_t buflen);
    /* Tokens per prefill chunk when the caller gives none (0: 256). */
    int default_prefill_chunk;
} ds4_backend;

/* The reference backend (forward.c over host memory). */
extern const ds4_backend ds4_backend_cpu;

/* The CUDA backend, when linked in (make cuda); NULL otherwise. Returns NULL
 * too when no usable device is present, with the reason in err. */
const ds4_backend *ds4_backend_cuda_get(char *err, size_t errlen);

/* Picks a backend by name ("cpu", "cuda", "auto"/NULL: the DS4_BACKEND
 * environment variable, else CUDA when linked in and a device is present,
 * else the CPU). NULL with a message when the named one is unavailable. */
const ds4_backend *ds4_backend_select(const char *name, char *err, size_t errlen);

#endif

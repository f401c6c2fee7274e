/* moe.h - the FFN sublayer's mixture of experts: router (hash or score
 * routed), routed experts and the shared expert, all clamped SwiGLU. */
#ifndef DS4_MOE_H
#define DS4_MOE_H

#include <stdint.h>

#include "model.h"
#include "threadpool.h"

/* Expert choice of one token: ids [n_expert_used] and their weights. */
void ds4_moe_route(const ds4_hparams *hp, const ds4_layer *L, uint32_t il, int32_t token, const float *router_logits,
                   int32_t *ids, float *weights);

/* y[t] = routed(f[t]) + shared(f[t]) for T tokens; f, y: [T][n_embd]. */
void ds4_moe_forward(ds4_pool *pool, const ds4_hparams *hp, const ds4_layer *L, uint32_t il, const int32_t *tokens,
                     const float *f, uint32_t T, float *y);

#endif

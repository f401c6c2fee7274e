/* synthetic.h - models with the exact DeepSeek V4 Flash shapes and quant
 * types but random weights, built in memory with no file: what ds4-bench
 * measures full-size speed with when the real 81 GB file is not at hand.
 *
 * Presets: "flash-q2" (IQ2_XXS gate/up + Q2_K down routed experts, the
 * antirez/ds4 q2 mix) and "flash-q4" (Q4_K routed experts); everything else
 * as both recipes have it (Q8_0 attention, shared expert and LM head, F16
 * embedding, HC, router, compressors and indexer, F32 vectors). n_layers
 * keeps the first n layers of the 43-layer schedule (0 = all 43).
 *
 * On the CPU backend the weights are random bytes in host memory (fails
 * early when they would not fit in RAM); on a GPU backend they are generated
 * directly in device memory. Values are scaled so activations stay O(1);
 * they are not a trained model and their output is noise.
 */
#ifndef DS4_SYNTHETIC_H
#define DS4_SYNTHETIC_H

#include "engine.h"

/* The Flash hyper-parameters with the first n_layers layers (0: all). */
bool ds4_synthetic_hparams(const char *preset, uint32_t n_layers, ds4_hparams *hp, char *err, size_t errlen);

ds4_model *ds4_model_synthetic(const char *preset, uint32_t n_layers, const ds4_model_params *params, char *err,
                               size_t errlen);

#endif

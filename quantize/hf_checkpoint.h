/* hf_checkpoint.h - DeepSeek's official Hugging Face checkpoint directory:
 * config.json -> ds4_hparams, the safetensors shards (through
 * model.safetensors.index.json, or a lone model.safetensors), and decoding of
 * any stored tensor to float32 rows:
 *   F32 / F16 / BF16                       converted directly
 *   F8_E4M3 + "<name>.scale" F8_E8M0       128x128 block scales (dense FP8)
 *   I8 (two FP4 E2M1 per byte) + scale     F8_E8M0 per 32 values (routed experts)
 * Rows are decoded on demand, so a converter holds one slice of one tensor at
 * a time whatever the checkpoint size.
 */
#ifndef DS4_HF_CHECKPOINT_H
#define DS4_HF_CHECKPOINT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "model_schema.h"
#include "safetensors.h"

typedef struct {
    char *dir;
    st_file *shards;
    size_t n_shards;
    char *tokenizer_path; /* NULL if the directory has no tokenizer.json */
} hf_checkpoint;

/* A tensor as the checkpoint stores it, seen as a [rows x cols] matrix of
 * logical values (1-D tensors have rows = 1). */
typedef struct {
    const st_tensor *w;
    const st_tensor *scale; /* NULL unless FP8/FP4 */
    enum { HF_ENC_PLAIN, HF_ENC_FP8_BLOCK, HF_ENC_FP4 } enc;
    uint64_t rows, cols;
} hf_tensor;

bool hf_checkpoint_open(hf_checkpoint *ck, const char *dir, char *err, size_t errlen);
void hf_checkpoint_close(hf_checkpoint *ck);

/* Reads config.json into hparams (validated). */
bool hf_checkpoint_hparams(const hf_checkpoint *ck, ds4_hparams *hp, char *err, size_t errlen);

const st_tensor *hf_checkpoint_find(const hf_checkpoint *ck, const char *name);
/* Locates a tensor and its scale sidecar and checks the logical shape
 * (rows x cols; cols only for 1-D). */
bool hf_tensor_get(const hf_checkpoint *ck, const char *name, uint64_t rows, uint64_t cols, hf_tensor *out,
                   char *err, size_t errlen);
/* Decodes rows [row0, row0 + n_rows) into dst (n_rows x cols floats). */
void hf_tensor_read_rows(const hf_tensor *t, uint64_t row0, uint64_t n_rows, float *dst);

/* Scalar decoders (exposed for tests). */
float hf_e4m3_to_f32(uint8_t x);
float hf_e8m0_to_f32(uint8_t x);
float hf_e2m1_to_f32(uint8_t nibble);

#endif

/* imatrix.h - importance matrices in llama.cpp's legacy `.dat` format.
 *
 * Layout (little-endian): i32 n_entries; per entry: i32 name_len, name bytes,
 * i32 ncall, i32 nval, f32 values[nval] (sums of squared activations; divided
 * by ncall on load); optional trailer i32 chunks, i32 dataset_len, dataset.
 * DS4 stores one entry per routed tensor (blk.N.ffn_{gate,up,down}_exps.weight)
 * with nval = n_expert * n_columns, expert-major.
 */
#ifndef DS4_IMATRIX_H
#define DS4_IMATRIX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    char *name;
    float *values;
    uint32_t n_values;
} imatrix_entry;

typedef struct {
    imatrix_entry *entries;
    uint32_t n_entries;
    int32_t chunks;  /* -1 if the trailer is absent */
    char *dataset;   /* NULL if absent */
} imatrix;

bool imatrix_load(imatrix *im, const char *path, char *err, size_t errlen);
void imatrix_free(imatrix *im);

/* Importance of the n_cols columns of `tensor_name` (expert `expert` of
 * n_expert when the entry is expert-major; expert < 0 for plain tensors).
 * Returns NULL when there is no entry; sets err and returns NULL with
 * *mismatch = true when the entry has the wrong size. */
const float *imatrix_lookup(const imatrix *im, const char *tensor_name, uint64_t n_cols, int expert, uint32_t n_expert,
                            bool *mismatch, char *err, size_t errlen);

#endif

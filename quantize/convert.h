/* convert.h - DeepSeek official checkpoint -> DS4 GGUF conversion.
 *
 * The conversion is planned in full before a byte is written: every tensor
 * of the schema is located in the checkpoint, shape-checked, and given a
 * target type (recipe, then per-family overrides, then block-size fallback).
 * Only then is the output written, tensor by tensor and in row chunks, to a
 * temporary file that is renamed into place at the very end.
 */
#ifndef DS4_CONVERT_H
#define DS4_CONVERT_H

#include <stdbool.h>

#include "dtype.h"
#include "model_schema.h"

typedef enum { RECIPE_F32, RECIPE_F16, RECIPE_Q8, RECIPE_Q2, RECIPE_Q4, RECIPE_COUNT } convert_recipe;

typedef struct {
    const char *hf_dir;
    const char *out_path;
    const char *imatrix_path; /* NULL: Σw² fallback for IQ2_XXS */
    convert_recipe recipe;
    int n_threads;
    bool has_override[DS4_FAM_COUNT];
    ds4_dtype override_type[DS4_FAM_COUNT];
    bool overwrite; /* replace an existing output file */
    bool dry_run;   /* plan and print, write nothing */
} convert_options;

bool convert_recipe_from_name(const char *name, convert_recipe *out);
const char *convert_recipe_name(convert_recipe r);
/* Type the recipe gives a family (before overrides and fallbacks). */
ds4_dtype convert_recipe_type(convert_recipe r, ds4_family fam);
/* The type actually usable for rows of length ne0: `want` if its block size
 * divides ne0, else the nearest coarser-block format that does. */
ds4_dtype convert_fit_type(ds4_dtype want, uint64_t ne0);

/* Runs the conversion; prints progress and errors to stderr. 0 on success. */
int convert_run(const convert_options *opt);

#endif

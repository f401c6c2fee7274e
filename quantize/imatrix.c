/* imatrix.c - legacy llama.cpp importance-matrix reader (see imatrix.h). */
#include "imatrix.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void set_err(char *err, size_t errlen, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static bool read_i32(FILE *fp, int32_t *v) {
    uint8_t b[4];
    if (fread(b, 1, 4, fp) != 4) return false;
    *v = (int32_t)((uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24);
    return true;
}

bool imatrix_load(imatrix *im, const char *path, char *err, size_t errlen) {
    memset(im, 0, sizeof *im);
    im->chunks = -1;
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        set_err(err, errlen, "%s: cannot open imatrix", path);
        return false;
    }
    int32_t n;
    if (!read_i32(fp, &n) || n < 1 || n > 1000000) {
        set_err(err, errlen, "%s: bad imatrix entry count", path);
        fclose(fp);
        return false;
    }
    im->entries = calloc((size_t)n, sizeof *im->entries);
    for (int32_t i = 0; i < n; i++) {
        int32_t len, ncall, nval;
        if (!read_i32(fp, &len) || len <= 0 || len > 4096) {
            set_err(err, errlen, "%s: entry %d: bad name length", path, i);
            goto fail;
        }
        char *name = malloc((size_t)len + 1);
        if (fread(name, 1, (size_t)len, fp) != (size_t)len) {
            free(name);
            set_err(err, errlen, "%s: entry %d: truncated name", path, i);
            goto fail;
        }
        name[len] = 0;
        im->entries[i].name = name;
        im->n_entries = (uint32_t)i + 1;
        if (!read_i32(fp, &ncall) || !read_i32(fp, &nval) || nval < 1 || nval > (1 << 28)) {
            set_err(err, errlen, "%s: entry '%s': bad call/value counts", path, name);
            goto fail;
        }
        float *vals = malloc((size_t)nval * sizeof(float));
        im->entries[i].values = vals;
        im->entries[i].n_values = (uint32_t)nval;
        if (fread(vals, sizeof(float), (size_t)nval, fp) != (size_t)nval) {
            set_err(err, errlen, "%s: entry '%s': truncated values", path, name);
            goto fail;
        }
        for (int32_t j = 0; j < nval; j++) {
            if (ncall > 0) vals[j] /= (float)ncall;
            if (!isfinite(vals[j]) || vals[j] < 0) {
                set_err(err, errlen, "%s: entry '%s': value %d is %g (must be finite and >= 0)", path, name, j, vals[j]);
                goto fail;
            }
        }
    }
    int32_t chunks, dlen;
    if (read_i32(fp, &chunks)) {
        im->chunks = chunks;
        if (read_i32(fp, &dlen) && dlen > 0 && dlen < (1 << 20)) {
            im->dataset = calloc((size_t)dlen + 1, 1);
            if (fread(im->dataset, 1, (size_t)dlen, fp) != (size_t)dlen) {
                free(im->dataset);
                im->dataset = NULL;
            }
        }
    }
    fclose(fp);
    return true;
fail:
    fclose(fp);
    imatrix_free(im);
    return false;
}

void imatrix_free(imatrix *im) {
    for (uint32_t i = 0; i < im->n_entries; i++) {
        free(im->entries[i].name);
        free(im->entries[i].values);
    }
    free(im->entries);
    free(im->dataset);
    memset(im, 0, sizeof *im);
}

const float *imatrix_lookup(const imatrix *im, const char *tensor_name, uint64_t n_cols, int expert, uint32_t n_expert,
                            bool *mismatch, char *err, size_t errlen) {
    *mismatch = false;
    if (!im) return NULL;
    for (uint32_t i = 0; i < im->n_entries; i++) {
        const imatrix_entry *e = &im->entries[i];
        if (strcmp(e->name, tensor_name) != 0) continue;
        if (e->n_values == n_cols) return e->values;
        if (expert >= 0 && (uint64_t)e->n_values == n_cols * n_expert) return e->values + (uint64_t)expert * n_cols;
        *mismatch = true;
        set_err(err, errlen, "imatrix entry '%s' has %u values, expected %llu or %llu (%u experts x %llu columns)",
                tensor_name, e->n_values, (unsigned long long)n_cols, (unsigned long long)(n_cols * n_expert), n_expert,
                (unsigned long long)n_cols);
        return NULL;
    }
    return NULL;
}

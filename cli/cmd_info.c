/* cmd_info.c - `ds4 info FILE.gguf`: what is in a GGUF file and whether it is
 * a DS4 model.
 *
 * Prints the container facts, every metadata key (long arrays abbreviated),
 * the tensor table, bytes per element type, and the DS4 schema verdict with
 * the first mismatch named. Exit status: 0 = valid DS4 model, 1 = unreadable
 * file, 3 = readable GGUF that does not match the DS4 schema.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "dtype.h"
#include "gguf.h"
#include "model_schema.h"

static void print_str(FILE *out, gguf_str s, size_t max) {
    fputc('"', out);
    for (uint64_t i = 0; i < s.len && i < max; i++) {
        unsigned char c = (unsigned char)s.data[i];
        if (c == '"' || c == '\\') fprintf(out, "\\%c", c);
        else if (c < 0x20) fprintf(out, "\\x%02x", c);
        else fputc(c, out);
    }
    if (s.len > max) fputs("...", out);
    fputc('"', out);
}

static void print_value(FILE *out, const gguf_value *v, int depth) {
    int64_t i64;
    double f64;
    switch (v->type) {
    case GGUF_TYPE_STRING: print_str(out, v->str, 120); return;
    case GGUF_TYPE_BOOL: fputs(v->b ? "true" : "false", out); return;
    case GGUF_TYPE_FLOAT32:
    case GGUF_TYPE_FLOAT64: fprintf(out, "%.9g", v->f64); return;
    case GGUF_TYPE_ARRAY: {
        uint64_t n = gguf_arr_len(v), show = n <= 64 ? n : 6;
        fprintf(out, "%s[%llu] [", gguf_vtype_name(v->arr.elem_type), (unsigned long long)n);
        for (uint64_t i = 0; i < show; i++) {
            if (i) fputs(", ", out);
            gguf_str s;
            if (v->arr.items && depth < 2) print_value(out, &v->arr.items[i], depth + 1);
            else if (gguf_arr_str(v, i, &s)) print_str(out, s, 40);
            else if (v->arr.elem_type == GGUF_TYPE_FLOAT32 || v->arr.elem_type == GGUF_TYPE_FLOAT64) {
                gguf_arr_f64(v, i, &f64);
                fprintf(out, "%.7g", f64);
            } else if (gguf_arr_i64(v, i, &i64)) fprintf(out, "%lld", (long long)i64);
            else if (v->arr.elem_type == GGUF_TYPE_BOOL) fputs(v->arr.raw[i] ? "true" : "false", out);
            else fputs("?", out);
        }
        if (show < n) fputs(", ...", out);
        fputc(']', out);
        return;
    }
    default:
        if (gguf_value_as_i64(v, &i64)) fprintf(out, "%lld", (long long)i64);
        else fprintf(out, "%llu", (unsigned long long)v->u64);
    }
}

int ds4_cmd_info(int argc, char **argv) {
    const char *path = NULL;
    bool quiet = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            printf("usage: ds4 info [--schema-only] FILE.gguf\n"
                   "exit status: 0 DS4 model, 1 unreadable, 3 GGUF that is not a DS4 model\n");
            return 0;
        } else if (!strcmp(argv[i], "--schema-only")) quiet = true;
        else if (!path) path = argv[i];
        else {
            fprintf(stderr, "ds4 info: unexpected argument '%s'\n", argv[i]);
            return 2;
        }
    }
    if (!path) {
        fprintf(stderr, "usage: ds4 info [--schema-only] FILE.gguf\n");
        return 2;
    }
    char err[512];
    gguf_file *f = gguf_open(path, err, sizeof err);
    if (!f) {
        fprintf(stderr, "ds4 info: %s\n", err);
        return 1;
    }
    FILE *out = stdout;
    if (!quiet) {
        fprintf(out, "file: %s\n", path);
        fprintf(out, "gguf version %u, %llu bytes, alignment %u, data at offset %llu\n", gguf_version(f),
                (unsigned long long)gguf_file_size(f), gguf_alignment(f), (unsigned long long)gguf_data_offset(f));
        fprintf(out, "\nmetadata (%llu keys):\n", (unsigned long long)gguf_n_kv(f));
        for (uint64_t i = 0; i < gguf_n_kv(f); i++) {
            const gguf_kv *kv = gguf_kv_at(f, i);
            fprintf(out, "  %-52.*s %-7s ", (int)kv->key.len, kv->key.data, gguf_vtype_name(kv->value.type));
            print_value(out, &kv->value, 0);
            fputc('\n', out);
        }
        fprintf(out, "\ntensors (%llu):\n", (unsigned long long)gguf_n_tensors(f));
        fprintf(out, "  %-40s %-8s %-24s %14s %14s\n", "name", "type", "shape", "bytes", "offset");
    }
    uint64_t by_type[DS4_TYPE_COUNT] = {0}, count_type[DS4_TYPE_COUNT] = {0}, total = 0, params = 0;
    for (uint64_t i = 0; i < gguf_n_tensors(f); i++) {
        const gguf_tensor *t = gguf_tensor_at(f, i);
        by_type[t->type] += t->nbytes;
        count_type[t->type]++;
        total += t->nbytes;
        params += t->n_elems;
        if (quiet) continue;
        char shape[64];
        size_t k = (size_t)snprintf(shape, sizeof shape, "[");
        for (uint32_t d = 0; d < t->n_dims && k < sizeof shape; d++)
            k += (size_t)snprintf(shape + k, sizeof shape - k, "%s%llu", d ? ", " : "", (unsigned long long)t->ne[d]);
        if (k < sizeof shape) snprintf(shape + k, sizeof shape - k, "]");
        fprintf(out, "  %-40s %-8s %-24s %14llu %14llu\n", t->name, ds4_dtype_name(t->type), shape,
                (unsigned long long)t->nbytes, (unsigned long long)t->offset);
    }
    if (!quiet) {
        fprintf(out, "\nbytes per type:\n");
        for (int t = 0; t < DS4_TYPE_COUNT; t++)
            if (count_type[t])
                fprintf(out, "  %-8s %5llu tensors %16llu bytes (%6.2f%%, %.3f GiB)\n", ds4_dtype_name((uint32_t)t),
                        (unsigned long long)count_type[t], (unsigned long long)by_type[t],
                        total ? 100.0 * (double)by_type[t] / (double)total : 0.0, by_type[t] / 1073741824.0);
        fprintf(out, "  total    %5llu tensors %16llu bytes, %.3f G parameters, %.3f bits/parameter\n",
                (unsigned long long)gguf_n_tensors(f), (unsigned long long)total, params / 1e9,
                params ? 8.0 * (double)total / (double)params : 0.0);
    }
    int rc;
    if (ds4_schema_check(f, err, sizeof err)) {
        ds4_hparams *hp = malloc(sizeof *hp);
        ds4_hparams_from_gguf(f, hp, NULL, 0);
        fprintf(out, "%sDS4 schema: OK (%u layers, width %u, %u experts, vocab %u)\n", quiet ? "" : "\n", hp->n_layer,
                hp->n_embd, hp->n_expert, hp->n_vocab);
        free(hp);
        rc = 0;
    } else {
        fprintf(out, "%sDS4 schema: MISMATCH: %s\n", quiet ? "" : "\n", err);
        rc = 3;
    }
    gguf_close(f);
    return rc;
}

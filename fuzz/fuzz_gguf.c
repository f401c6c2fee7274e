/* fuzz_gguf.c - libFuzzer harness for the GGUF reader.
 *
 * Build and run (clang):  make fuzz && build/fuzz/fuzz_gguf -max_total_time=600 fuzz/corpus_gguf
 * Every input is parsed from memory; when it parses, every accessor is walked
 * (all metadata values, array items, tensor lookups, tensor bytes) so that an
 * inconsistency the validator missed shows up as an ASan report. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "gguf.h"

static volatile uint64_t sink;

static void walk_value(const gguf_value *v, int depth) {
    int64_t i64;
    double f64;
    gguf_str s;
    if (depth > GGUF_MAX_ARRAY_DEPTH + 1) __builtin_trap();
    if (v->type == GGUF_TYPE_STRING) {
        for (uint64_t k = 0; k < v->str.len; k++) sink += (uint8_t)v->str.data[k];
        return;
    }
    if (v->type != GGUF_TYPE_ARRAY) {
        if (gguf_value_as_i64(v, &i64)) sink += (uint64_t)i64;
        if (gguf_value_as_f64(v, &f64)) sink += (uint64_t)(f64 != 0);
        return;
    }
    uint64_t n = gguf_arr_len(v);
    for (uint64_t k = 0; k < n; k++) {
        if (gguf_arr_i64(v, k, &i64)) sink += (uint64_t)i64;
        if (gguf_arr_f64(v, k, &f64)) sink += (uint64_t)(f64 != 0);
        if (gguf_arr_str(v, k, &s) && s.len) sink += (uint8_t)s.data[s.len - 1];
        if (v->arr.items) walk_value(&v->arr.items[k], depth + 1);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char err[512];
    gguf_file *f = gguf_open_memory(data, size, err, sizeof err);
    if (!f) return 0;
    for (uint64_t i = 0; i < gguf_n_kv(f); i++) {
        const gguf_kv *kv = gguf_kv_at(f, i);
        if (kv->key.len) sink += (uint8_t)kv->key.data[kv->key.len - 1];
        walk_value(&kv->value, 0);
    }
    uint32_t u32;
    uint64_t u64;
    double f64;
    gguf_str s;
    sink += gguf_get_u32(f, "general.alignment", &u32);
    sink += gguf_get_u64(f, "deepseek4.context_length", &u64);
    sink += gguf_get_f64(f, "deepseek4.rope.freq_base", &f64);
    sink += gguf_get_str(f, "general.architecture", &s);
    for (uint64_t i = 0; i < gguf_n_tensors(f); i++) {
        const gguf_tensor *t = gguf_tensor_at(f, i);
        if (gguf_find_tensor(f, t->name) != t) __builtin_trap();
        const uint8_t *p = t->data;
        if (t->nbytes) sink += p[0] + p[t->nbytes - 1];
    }
    gguf_close(f);
    return 0;
}

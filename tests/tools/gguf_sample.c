/* gguf_sample.c - writes small but varied valid GGUF files, used as the seed
 * corpus of the GGUF fuzzer and by script tests that need a non-DS4 GGUF.
 * usage: gguf_sample OUT_DIR */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dtype.h"
#include "gguf.h"

static int write_sample(const char *path, int variant) {
    gguf_writer *w = gguf_writer_new();
    if (variant == 1) gguf_writer_set_u32(w, "general.alignment", 64);
    gguf_writer_set_str(w, "general.architecture", variant == 2 ? "llama" : "deepseek4");
    gguf_writer_set_u32(w, "deepseek4.block_count", 2);
    gguf_writer_set_f32(w, "deepseek4.rope.freq_base", 10000.0f);
    int32_t ratios[4] = {0, 0, 4, 128};
    gguf_writer_set_arr(w, "deepseek4.attention.compress_ratios", GGUF_TYPE_INT32, ratios, 4);
    const char *toks[4] = {"a", "b", "<|x|>", "\xc4\xa0"};
    gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", toks, 4);
    uint32_t inner[2] = {7, 8};
    gguf_value items[1] = {
        {.type = GGUF_TYPE_ARRAY, .arr = {.elem_type = GGUF_TYPE_UINT32, .count = 2, .raw = (const uint8_t *)inner}}};
    gguf_value nested = {.type = GGUF_TYPE_ARRAY, .arr = {.elem_type = GGUF_TYPE_ARRAY, .count = 1, .items = items}};
    gguf_writer_set_value(w, "x.nested", &nested);
    uint64_t ne_a[2] = {32, 2}, ne_b[1] = {256}, ne_c[1] = {8};
    gguf_writer_add_tensor(w, "a.weight", 2, ne_a, DS4_TYPE_Q8_0);
    gguf_writer_add_tensor(w, "b.weight", 1, ne_b, variant == 1 ? DS4_TYPE_Q2_K : DS4_TYPE_F16);
    gguf_writer_add_tensor(w, "c.weight", 1, ne_c, DS4_TYPE_F32);
    FILE *fp = fopen(path, "wb");
    if (!fp) { perror(path); return 1; }
    gguf_writer_begin(w, fp);
    uint8_t buf[1024];
    for (size_t i = 0; i < sizeof buf; i++) buf[i] = (uint8_t)(i * 13);
    uint64_t sizes[3] = {2 * 34, variant == 1 ? 84 : 512, 32};
    for (int i = 0; i < 3; i++) gguf_writer_write_data(w, buf, sizes[i]);
    int ok = gguf_writer_finish(w);
    if (!ok) fprintf(stderr, "%s\n", gguf_writer_error(w));
    fclose(fp);
    gguf_writer_free(w);
    return ok ? 0 : 1;
}

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: gguf_sample OUT_DIR\n"); return 2; }
    char path[4096];
    for (int v = 0; v < 3; v++) {
        snprintf(path, sizeof path, "%s/sample%d.gguf", argv[1], v);
        if (write_sample(path, v)) return 1;
    }
    return 0;
}

/* model_tokenizer.c - the tokenizer stored in a loaded model's GGUF
 * (tokenizer.ggml.*), for programs that go from text to tokens. */
#include <stdio.h>

#include "engine.h"
#include "tokenizer.h"

ds4_tokenizer *ds4_model_load_tokenizer(const ds4_model *m, char *err, size_t errlen) {
    if (!gguf_get(m->w->file, "tokenizer.ggml.tokens")) {
        snprintf(err, errlen, "the model file has no tokenizer (tokenizer.ggml.*): use token-id interfaces "
                              "(ds4 logits / ds4 generate) or convert a checkpoint that has tokenizer.json");
        return NULL;
    }
    return ds4_tokenizer_from_gguf(m->w->file, err, errlen);
}

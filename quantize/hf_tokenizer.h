/* hf_tokenizer.h - copy a Hugging Face tokenizer.json (DeepSeek V4) into GGUF
 * tokenizer.ggml.* metadata, with the keys, token order and token types of
 * the published DS4 GGUFs (llama.cpp's conversion rules):
 *
 *   tokenizer.ggml.model          "gpt2"
 *   tokenizer.ggml.pre            "joyai-llm" (the DeepSeek V3/V4 split rules;
 *                                 any other pre-tokenizer is refused)
 *   tokenizer.ggml.tokens         one string per id 0..max id; byte-level form
 *                                 for BPE tokens, raw text for added tokens,
 *                                 "[PAD<id>]" for ids nothing defines
 *   tokenizer.ggml.token_type     i32 per token: 1 normal, 3 control (added
 *                                 special, or looks like <|..|> / <｜..｜>),
 *                                 4 user-defined (other added), 5 unused
 *   tokenizer.ggml.merges         "left right", rank order
 *   tokenizer.ggml.bos_token_id / eos_token_id / padding_token_id  (u32)
 *   tokenizer.ggml.add_bos_token / add_eos_token                   (bool)
 *   tokenizer.chat_template       only if tokenizer_config.json has one
 *
 * bos/eos/pad and the add_* flags come from tokenizer_config.json next to
 * tokenizer.json when it exists. A dedicated pad token (<｜▁pad▁｜>) is used
 * for padding_token_id when the vocabulary has one, as in the published
 * files (id 2), even where tokenizer_config.json pads with EOS. */
#ifndef DS4_HF_TOKENIZER_H
#define DS4_HF_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gguf.h"

typedef struct {
    uint32_t n_tokens;
    char **tokens; /* NUL-terminated, [n_tokens] */
    uint32_t *token_lens;
    int32_t *types;
    uint32_t n_merges;
    char **merges; /* "left right" */
    uint32_t *merge_lens;
    int32_t bos, eos, pad; /* -1 if unknown */
    int add_bos, add_eos;  /* 0/1, -1 if not stated */
    char *chat_template;   /* NULL if none */
} hf_tokenizer_vocab;

/* Parse tokenizer.json (and tokenizer_config.json beside it, if present). */
bool hf_tokenizer_load(const char *tokenizer_json_path, hf_tokenizer_vocab *v, char *err, size_t errlen);
void hf_tokenizer_vocab_free(hf_tokenizer_vocab *v);
/* Declare the tokenizer.ggml.* keys on w. */
void hf_tokenizer_write(const hf_tokenizer_vocab *v, gguf_writer *w);

/* load + write: the converter's entry point. */
bool hf_tokenizer_to_gguf(const char *tokenizer_json_path, gguf_writer *w, char *err, size_t errlen);

#endif

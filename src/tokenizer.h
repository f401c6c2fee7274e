/* tokenizer.h - DeepSeek V4 byte-level BPE tokenizer (encode, decode,
 * streaming-safe UTF-8 output).
 *
 * The vocabulary comes from GGUF metadata (tokenizer.ggml.tokens, .merges,
 * .token_type, .bos_token_id, .eos_token_id) and gives the same ids as
 * Hugging Face `tokenizers` running DeepSeek V4's tokenizer.json:
 *
 *   1. Added tokens (token_type CONTROL or USER_DEFINED, e.g. <｜User｜>,
 *      <think>, ｜DSML｜) are found in the text first, leftmost-longest, unless
 *      the caller says the text (or a span of it) is untrusted plain text.
 *   2. Each stretch between them is split by the DeepSeek V4 pre-tokenizer
 *      (numbers in groups of up to 3, CJK/kana runs, then the letter / mark /
 *      punctuation / whitespace expression; docs/TOKENIZER.md spells it out).
 *   3. Each piece is mapped to GPT-2 byte-level symbols and merged by BPE
 *      (lowest merge rank first, leftmost on ties).
 *
 * Invalid UTF-8 is accepted: each byte that is not part of a well-formed
 * sequence is classified like U+FFFD (a symbol) and kept as its own byte, so
 * decoding always gives the input bytes back.
 *
 * A tokenizer is immutable after loading and may be shared by threads. */
#ifndef DS4_TOKENIZER_H
#define DS4_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gguf.h"

typedef struct ds4_tokenizer ds4_tokenizer;

/* tokenizer.ggml.token_type values (llama.cpp's convention). */
typedef enum {
    DS4_TOKEN_NORMAL = 1,
    DS4_TOKEN_UNKNOWN = 2,
    DS4_TOKEN_CONTROL = 3,      /* special: BOS, EOS, <｜User｜>, ... */
    DS4_TOKEN_USER_DEFINED = 4, /* added but not special: <think>, ｜DSML｜ */
    DS4_TOKEN_UNUSED = 5,
    DS4_TOKEN_BYTE = 6,
} ds4_token_type;

/* A growable list of token ids. Zero-initialise; free with ds4_tokens_free. */
typedef struct {
    int32_t *ids;
    size_t n, cap;
} ds4_tokens;

bool ds4_tokens_push(ds4_tokens *v, int32_t id);
void ds4_tokens_free(ds4_tokens *v);

/* A byte range [start, end) of the text being tokenized. */
typedef struct {
    size_t start, end;
} ds4_span;

/* Load from GGUF metadata. Fails (NULL + message) on missing or malformed
 * keys, a tokenizer.ggml.model other than "gpt2", or a tokenizer.ggml.pre
 * whose split rules are not the DeepSeek V3/V4 ones. */
ds4_tokenizer *ds4_tokenizer_from_gguf(const gguf_file *f, char *err, size_t errlen);

/* Build from arrays (copied): tokens[i]/token_lens[i] is token i in its
 * stored form (byte-level symbols for normal tokens, raw text for added
 * ones); types may be NULL (all normal); merges[r] is "left right" with rank
 * r. bos/eos may be -1 (then looked up by the DeepSeek strings, if present). */
ds4_tokenizer *ds4_tokenizer_new(const char *const *tokens, const uint32_t *token_lens, const int32_t *types,
                                 uint32_t n_tokens, const char *const *merges, const uint32_t *merge_lens,
                                 uint32_t n_merges, int32_t bos, int32_t eos, char *err, size_t errlen);
void ds4_tokenizer_free(ds4_tokenizer *t);

uint32_t ds4_tokenizer_n_vocab(const ds4_tokenizer *t);
int32_t ds4_tokenizer_bos(const ds4_tokenizer *t); /* -1 if none */
int32_t ds4_tokenizer_eos(const ds4_tokenizer *t); /* -1 if none */

/* Id of the token whose stored string is exactly s[0..len), or -1. For
 * added tokens the stored string is the text itself ("<｜User｜>"). */
int32_t ds4_tokenizer_find(const ds4_tokenizer *t, const char *s, size_t len);
/* Stored string of a token (not NUL-terminated); NULL if id is out of range. */
const char *ds4_token_text(const ds4_tokenizer *t, int32_t id, size_t *len);
ds4_token_type ds4_token_type_of(const ds4_tokenizer *t, int32_t id);
/* True for CONTROL and USER_DEFINED tokens (those matched in text). */
bool ds4_token_is_added(const ds4_tokenizer *t, int32_t id);

/* Tokenize text[0..len) and append the ids to out. With parse_special the
 * added tokens are recognised in the text; without, the whole text is plain
 * (use it for untrusted input). Returns false only on out-of-memory. */
bool ds4_tokenize(const ds4_tokenizer *t, const char *text, size_t len, bool parse_special, ds4_tokens *out);

/* Like ds4_tokenize(parse_special = true), except that no added token is
 * recognised if it overlaps one of the plain spans (sorted, non-overlapping).
 * Pieces still flow across span edges exactly as in the whole-string
 * tokenization, so a rendered prompt with untrusted message contents keeps
 * the reference ids everywhere except where a content spells a special. */
bool ds4_tokenize_spans(const ds4_tokenizer *t, const char *text, size_t len, const ds4_span *plain,
                        size_t n_plain, ds4_tokens *out);

/* The pre-tokenizer alone (no added-token matching, no BPE): calls cb with
 * the byte range of each piece, in order. For tests and debugging. */
void ds4_pretokenize(const char *text, size_t len, void (*cb)(void *ud, size_t start, size_t end), void *ud);

/* The bytes a token stands for (not NUL-terminated; may be part of a UTF-8
 * character). NULL (len 0) for an out-of-range id. */
const char *ds4_token_bytes(const ds4_tokenizer *t, int32_t id, size_t *len);

/* Append the bytes of ids[0..n) to *buf (realloc'd; *len updated, a NUL is
 * kept after the data). Out-of-range ids are skipped. False on OOM. */
bool ds4_detokenize(const ds4_tokenizer *t, const int32_t *ids, size_t n, char **buf, size_t *len, size_t *cap);

/* ---- streaming UTF-8 ----
 * Token bytes may end inside a UTF-8 character. The stream holds back an
 * incomplete sequence until the bytes that complete it arrive, so what it
 * emits is always whole characters. A sequence that turns out to be invalid
 * is emitted as U+FFFD per bad byte when replace_invalid is set (for JSON /
 * terminal output), or as its raw bytes otherwise. */
typedef struct {
    unsigned char pend[4];
    size_t npend;
    bool replace_invalid;
} ds4_utf8_stream;

void ds4_utf8_stream_init(ds4_utf8_stream *s, bool replace_invalid);
/* Feed n bytes; writes at most n + 4 + 3*(n + 4) bytes to out (size it as
 * 4*n + 16). Returns the number of bytes written. */
size_t ds4_utf8_stream_feed(ds4_utf8_stream *s, const char *in, size_t n, char *out);
/* End of stream: emit whatever is held back (as U+FFFD per byte, or raw).
 * out needs 12 bytes. Returns bytes written. */
size_t ds4_utf8_stream_flush(ds4_utf8_stream *s, char *out);

#endif

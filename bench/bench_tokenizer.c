/* bench_tokenizer.c - tokenizer and prompt-rendering speed, one thread.
 *
 *   DS4_TOKENIZER_GGUF    a GGUF with DeepSeek V4's tokenizer
 *                         (default build/tokenizer/ds4-tokenizer.gguf)
 *   DS4_TOKENIZER_CORPUS  the framed test corpus (default build/tokenizer/corpus.bin)
 *
 * Both defaults are written by tests/run_tokenizer.sh. Compare with Hugging
 * Face tokenizers on the same documents and machine:
 *   python3 tools/tokenizer_reference.py bench build/tokenizer/corpus.bin
 * (both skip the documents that are not valid UTF-8, which HF cannot take).
 *
 * Also renders and tokenizes a synthetic ~100k-token agent conversation
 * (tools, reasoning, tool calls and results) to show what re-rendering a
 * long history costs per request. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "chat_template.h"
#include "gguf.h"
#include "tokenizer.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static char *read_all(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
        free(b);
        b = NULL;
    }
    fclose(f);
    if (b) *len = (size_t)n;
    return b;
}

static bool valid_utf8(const unsigned char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        unsigned c = s[i];
        size_t l = c < 0x80 ? 1 : c >= 0xC2 && c < 0xE0 ? 2 : c >= 0xE0 && c < 0xF0 ? 3 : c >= 0xF0 && c < 0xF5 ? 4 : 0;
        if (!l || i + l > n) return false;
        for (size_t k = 1; k < l; k++)
            if ((s[i + k] & 0xC0) != 0x80) return false;
        if ((c == 0xE0 && s[i + 1] < 0xA0) || (c == 0xED && s[i + 1] >= 0xA0) || (c == 0xF0 && s[i + 1] < 0x90) ||
            (c == 0xF4 && s[i + 1] >= 0x90))
            return false;
        i += l;
    }
    return true;
}

static void bench_corpus(const ds4_tokenizer *t, const char *path) {
    size_t n;
    char *c = read_all(path, &n);
    if (!c) {
        printf("corpus %s not found: run tests/run_tokenizer.sh first (skipped)\n", path);
        return;
    }
    const char *doc[8192];
    size_t len[8192], nd = 0, bytes = 0;
    for (size_t pos = 0; pos < n && nd < 8192;) {
        char *nl = memchr(c + pos, '\n', n - pos);
        if (!nl) break;
        size_t l = strtoull(c + pos + 4, NULL, 10);
        if (valid_utf8((const unsigned char *)nl + 1, l)) {
            doc[nd] = nl + 1;
            len[nd++] = l;
            bytes += l;
        }
        pos = (size_t)(nl - c) + 1 + l + 1;
    }
    ds4_tokens out = {0};
    double best = 1e9;
    size_t ntok = 0;
    for (int r = 0; r < 5; r++) {
        double t0 = now();
        ntok = 0;
        for (size_t i = 0; i < nd; i++) {
            out.n = 0;
            ds4_tokenize(t, doc[i], len[i], true, &out);
            ntok += out.n;
        }
        double dt = now() - t0;
        if (dt < best) best = dt;
    }
    printf("ds4 tokenizer: %zu docs, %zu bytes, %zu tokens, best of 5: %.3f s, %.2f MB/s, %.0f tokens/s\n", nd, bytes,
           ntok, best, bytes / best / 1e6, ntok / best);
    /* decode everything back */
    ds4_tokens all = {0};
    for (size_t i = 0; i < nd; i++) ds4_tokenize(t, doc[i], len[i], true, &all);
    char *buf = NULL;
    size_t bl = 0, bc = 0;
    double t0 = now();
    ds4_detokenize(t, all.ids, all.n, &buf, &bl, &bc);
    double dt = now() - t0;
    printf("ds4 detokenize: %zu tokens -> %zu bytes in %.4f s (%.0f Mtokens/s)\n", all.n, bl, dt, all.n / dt / 1e6);
    free(buf);
    ds4_tokens_free(&all);
    ds4_tokens_free(&out);
    free(c);
}

/* A long agent session: tools, and many rounds of user text, assistant
 * reasoning + a tool call, and a tool result. */
static void bench_render(const ds4_tokenizer *t) {
    enum { ROUNDS = 160 };
    static char texts[ROUNDS][4][1400];
    ds4_chat_tool_call calls[ROUNDS];
    ds4_chat_message m[1 + 4 * ROUNDS + 1];
    size_t n = 0;
    m[n++] = (ds4_chat_message){
        .role = "system",
        .content = "You are a coding agent. Work step by step.",
        .tools_json = "[{\"type\":\"function\",\"function\":{\"name\":\"run_command\",\"description\":\"Run a shell "
                      "command\",\"parameters\":{\"type\":\"object\",\"properties\":{\"cmd\":{\"type\":\"string\"},"
                      "\"timeout_s\":{\"type\":\"number\",\"default\":30.5}},\"required\":[\"cmd\"]}}}]"};
    for (int r = 0; r < ROUNDS; r++) {
        snprintf(texts[r][0], sizeof texts[r][0],
                 "Step %d: look at src/module_%d.c and tell me whether the function parse_%d handles "
                 "empty input, very long lines (over 4096 bytes), CRLF line endings and UTF-8 BOMs.",
                 r, r, r);
        snprintf(texts[r][1], sizeof texts[r][1],
                 "The user asks about parse_%d. I should open the file first and read the loop that "
                 "splits lines; then check the buffer size constant and the handling of '\\r'. "
                 "I will run grep to find the definition, then sed to print the body.",
                 r);
        snprintf(texts[r][2], sizeof texts[r][2], "{\"cmd\": \"grep -n 'parse_%d' -A40 src/module_%d.c\", "
                 "\"timeout_s\": 10}", r, r);
        int o = snprintf(texts[r][3], sizeof texts[r][3], "src/module_%d.c:%d: int parse_%d(const char *s, size_t n) {\n", r,
                         100 + r, r);
        for (int k = 0; k < 12 && o < 1300; k++)
            o += snprintf(texts[r][3] + o, sizeof texts[r][3] - (size_t)o,
                          "    for (size_t i = 0; i < n; i++) { if (s[i] == '\\n') line_%d_%d++; }\n", r, k);
        calls[r] = (ds4_chat_tool_call){.id = "call", .name = "run_command", .arguments = texts[r][2]};
        m[n++] = (ds4_chat_message){.role = "user", .content = texts[r][0]};
        m[n++] = (ds4_chat_message){.role = "assistant", .reasoning_content = texts[r][1], .content = "",
                                    .tool_calls = &calls[r], .n_tool_calls = 1};
        m[n++] = (ds4_chat_message){.role = "tool", .tool_call_id = "call", .content = texts[r][3]};
        m[n++] = (ds4_chat_message){.role = "assistant", .reasoning_content = "Done reading.",
                                    .content = "It handles empty input and CRLF; long lines are truncated."};
    }
    m[n++] = (ds4_chat_message){.role = "user", .content = "Summarise all the findings."};
    ds4_chat_options opt = {.think = DS4_THINK_HIGH, .ctx_size = 1048576};
    char err[256];
    double best_r = 1e9, best_t = 1e9;
    size_t ntok = 0, nbytes = 0;
    for (int rep = 0; rep < 5; rep++) {
        ds4_chat_prompt p;
        double t0 = now();
        if (!ds4_chat_render(m, n, &opt, &p, err, sizeof err)) {
            printf("render failed: %s\n", err);
            return;
        }
        double t1 = now();
        ds4_tokens ids = {0};
        ds4_chat_tokenize(t, &p, true, &ids);
        double t2 = now();
        if (t1 - t0 < best_r) best_r = t1 - t0;
        if (t2 - t1 < best_t) best_t = t2 - t1;
        ntok = ids.n;
        nbytes = p.len;
        ds4_tokens_free(&ids);
        ds4_chat_prompt_free(&p);
    }
    printf("chat render: %zu messages -> %zu bytes, %zu tokens: render %.2f ms, tokenize %.2f ms, total %.2f ms\n", n,
           nbytes, ntok, best_r * 1e3, best_t * 1e3, (best_r + best_t) * 1e3);
}

int main(void) {
    const char *gpath = getenv("DS4_TOKENIZER_GGUF");
    const char *cpath = getenv("DS4_TOKENIZER_CORPUS");
    if (!gpath || !*gpath) gpath = "build/tokenizer/ds4-tokenizer.gguf";
    if (!cpath || !*cpath) cpath = "build/tokenizer/corpus.bin";
    char err[512];
    gguf_file *f = gguf_open(gpath, err, sizeof err);
    if (!f) {
        printf("bench_tokenizer: %s (run tests/run_tokenizer.sh first) - skipped\n", err);
        return 0;
    }
    double t0 = now();
    ds4_tokenizer *t = ds4_tokenizer_from_gguf(f, err, sizeof err);
    if (!t) {
        printf("bench_tokenizer: %s\n", err);
        gguf_close(f);
        return 1;
    }
    printf("load: %u tokens in %.1f ms\n", ds4_tokenizer_n_vocab(t), (now() - t0) * 1e3);
    bench_corpus(t, cpath);
    bench_render(t);
    ds4_tokenizer_free(t);
    gguf_close(f);
    return 0;
}

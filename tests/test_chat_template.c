/* test_chat_template.c - the prompt renderer against golden renderings made by
 * DeepSeek's reference encoder (tools/render_reference.py, committed under
 * tests/tokenizer/chat/), byte for byte; plus the JSON re-serializer and the
 * renderer's own rules. With DS4_TOKENIZER_GGUF (set by tests/run_tokenizer.sh)
 * the rendered prompts' ids are compared with Hugging Face's too. */
#include <cjson/cJSON.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "chat_template.h"
#include "gguf.h"
#include "tokenizer.h"

static const char *golden_dir(void) {
    const char *d = getenv("DS4_CHAT_GOLDEN_DIR");
    return d && *d ? d : "tests/tokenizer/chat";
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
    if (b) {
        b[n] = 0;
        if (len) *len = (size_t)n;
    }
    return b;
}

static const char *jstr(const cJSON *o, const char *k) {
    return cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, k));
}

/* A case of conversations.json as renderer input (pointers into the cJSON tree). */
typedef struct {
    ds4_chat_message *msgs;
    ds4_chat_tool_call *calls;
    size_t n;
    ds4_chat_options opt;
    const char *name;
} conv;

static void conv_from_json(const cJSON *c, conv *cv) {
    const cJSON *ms = cJSON_GetObjectItemCaseSensitive(c, "messages");
    size_t n = (size_t)cJSON_GetArraySize(ms), ncalls = 0;
    const cJSON *m;
    cJSON_ArrayForEach(m, ms) ncalls += (size_t)cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(m, "tool_calls"));
    cv->msgs = calloc(n, sizeof *cv->msgs);
    cv->calls = calloc(ncalls + 1, sizeof *cv->calls);
    cv->n = n;
    cv->name = jstr(c, "name");
    const char *think = jstr(c, "think");
    cv->opt.think = !strcmp(think, "max") ? DS4_THINK_MAX : !strcmp(think, "high") ? DS4_THINK_HIGH : DS4_THINK_NONE;
    cv->opt.ctx_size = (uint64_t)cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(c, "ctx"));
    cv->opt.keep_reasoning = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(c, "keep_reasoning"));
    cv->opt.no_bos = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(c, "no_bos"));
    size_t i = 0, k = 0;
    cJSON_ArrayForEach(m, ms) {
        ds4_chat_message *d = &cv->msgs[i++];
        d->role = jstr(m, "role");
        d->content = jstr(m, "content");
        d->reasoning_content = jstr(m, "reasoning_content");
        d->tool_call_id = jstr(m, "tool_call_id");
        d->tools_json = jstr(m, "tools_json");
        d->response_format_json = jstr(m, "response_format_json");
        d->task = jstr(m, "task");
        d->wo_eos = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(m, "wo_eos"));
        const cJSON *tcs = cJSON_GetObjectItemCaseSensitive(m, "tool_calls"), *tc;
        d->tool_calls = &cv->calls[k];
        cJSON_ArrayForEach(tc, tcs) {
            cv->calls[k++] = (ds4_chat_tool_call){jstr(tc, "id"), jstr(tc, "name"), jstr(tc, "arguments")};
            d->n_tool_calls++;
        }
    }
}

static void conv_free(conv *cv) {
    free(cv->msgs);
    free(cv->calls);
}

static int count_added(const ds4_tokenizer *t, const ds4_tokens *ids) {
    int n = 0;
    for (size_t i = 0; i < ids->n; i++) n += ds4_token_is_added(t, ids->ids[i]);
    return n;
}

static void test_golden_renderings(void **state) {
    char path[1024];
    snprintf(path, sizeof path, "%s/conversations.json", golden_dir());
    char *text = read_all(path, NULL);
    if (!text) fail_msg("cannot read %s", path);
    cJSON *root = cJSON_Parse(text);
    assert_non_null(root);
    assert_true(cJSON_GetArraySize(root) >= 30);

    /* ids: only when the run script gives us the real tokenizer */
    ds4_tokenizer *tok = NULL;
    gguf_file *gf = NULL;
    char *ids_text = NULL;
    const char *gpath = getenv("DS4_TOKENIZER_GGUF");
    if (gpath && *gpath) {
        char err[512];
        gf = gguf_open(gpath, err, sizeof err);
        if (!gf) fail_msg("%s", err);
        tok = ds4_tokenizer_from_gguf(gf, err, sizeof err);
        if (!tok) fail_msg("%s", err);
        snprintf(path, sizeof path, "%s/golden/ids.txt", golden_dir());
        ids_text = read_all(path, NULL);
        assert_non_null(ids_text);
    }
    int n_cases = 0, n_ids = 0, bad = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, root) {
        conv cv;
        conv_from_json(c, &cv);
        ds4_chat_prompt p;
        char err[256];
        if (!ds4_chat_render(cv.msgs, cv.n, &cv.opt, &p, err, sizeof err)) fail_msg("%s: %s", cv.name, err);
        snprintf(path, sizeof path, "%s/golden/%s.txt", golden_dir(), cv.name);
        size_t glen;
        char *golden = read_all(path, &glen);
        if (!golden) fail_msg("cannot read %s", path);
        if (glen != p.len || memcmp(golden, p.text, glen) != 0) {
            size_t d = 0;
            while (d < glen && d < p.len && golden[d] == p.text[d]) d++;
            fprintf(stderr, "%s: rendering differs at byte %zu\n  want: %.60s\n  got:  %.60s\n", cv.name, d,
                    golden + d, p.text + d);
            bad++;
        }
        /* spans: sorted, inside the text */
        for (size_t s = 0; s < p.n_spans; s++) {
            assert_true(p.spans[s].start < p.spans[s].end && p.spans[s].end <= p.len);
            if (s) assert_true(p.spans[s - 1].end < p.spans[s].start);
        }
        if (tok) {
            char key[256];
            snprintf(key, sizeof key, "\n%s: ", cv.name);
            char *line = strstr(ids_text, key + 1) == ids_text ? ids_text : strstr(ids_text, key);
            if (!line) fail_msg("%s: no golden ids", cv.name);
            line = strchr(line + 1, ':') + 1;
            ds4_tokens ids = {0};
            assert_true(ds4_chat_tokenize(tok, &p, true, &ids));
            size_t k = 0;
            bool same = true;
            char *q = line;
            while (*q && *q != '\n') {
                char *e;
                long v = strtol(q, &e, 10);
                if (e == q) break;
                if (k >= ids.n || ids.ids[k] != v) same = false;
                k++;
                q = e;
            }
            if (!same || k != ids.n) {
                fprintf(stderr, "%s: ids differ from Hugging Face (%zu vs %zu tokens)\n", cv.name, ids.n, k);
                bad++;
            }
            /* untrusted contents: no more added tokens than the template itself put there */
            ds4_tokens plain = {0};
            assert_true(ds4_chat_tokenize(tok, &p, false, &plain));
            assert_true(count_added(tok, &plain) <= count_added(tok, &ids));
            if (!strcmp(cv.name, "special_strings_in_content")) assert_true(count_added(tok, &plain) + 4 == count_added(tok, &ids));
            ds4_tokens_free(&plain);
            ds4_tokens_free(&ids);
            n_ids++;
        }
        free(golden);
        ds4_chat_prompt_free(&p);
        conv_free(&cv);
        n_cases++;
    }
    printf("chat template: %d golden renderings, %d with ids, %d mismatches\n", n_cases, n_ids, bad);
    ds4_tokenizer_free(tok);
    if (gf) gguf_close(gf);
    free(ids_text);
    cJSON_Delete(root);
    free(text);
    assert_int_equal(bad, 0);
}

static void expect_dumps(const char *in, const char *want) {
    char err[128];
    char *got = ds4_json_python_dumps(in, strlen(in), err, sizeof err);
    if (!got) fail_msg("%s: %s", in, err);
    if (strcmp(got, want) != 0) fail_msg("dumps(%s) = %s, want %s", in, got, want);
    free(got);
}

static void test_python_json(void **state) {
    expect_dumps("{\"a\":1,\"b\":[true,false,null],\"c\":{}}", "{\"a\": 1, \"b\": [true, false, null], \"c\": {}}");
    expect_dumps("[1.0, 1E5, -0, -0.0, 0.1, 1e-5, 1e16, 1e15, 123456789012345678901234567890, 1e400, NaN, -Infinity]",
                 "[1.0, 100000.0, 0, -0.0, 0.1, 1e-05, 1e+16, 1000000000000000.0, 123456789012345678901234567890, "
                 "Infinity, NaN, -Infinity]");
    expect_dumps("[2.5e-7, 1.5e300, 0.30000000000000004, 5e-324, 1.7976931348623157e308]",
                 "[2.5e-07, 1.5e+300, 0.30000000000000004, 5e-324, 1.7976931348623157e+308]");
    expect_dumps("\"\\u00e9\\ud83d\\ude00 \\\"q\\\" \\\\ \\/ \\n\\t\\u0001\\u007f\"",
                 "\"\xc3\xa9\xf0\x9f\x98\x80 \\\"q\\\" \\\\ / \\n\\t\\u0001\x7f\"");
    expect_dumps("\"\\ud800x\"", "\"\\ud800x\""); /* a lone surrogate stays escaped */
    expect_dumps("{\"k\": 1, \"j\": 2, \"k\": 3}", "{\"k\": 3, \"j\": 2}");
    expect_dumps("  [ ]  ", "[]");
    char err[128];
    const char *bad[] = {"", "{", "[1,]", "{\"a\" 1}", "01", "\"a\nb\"", "[1] x", "tru"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *s = ds4_json_python_dumps(bad[i], strlen(bad[i]), err, sizeof err);
        if (s) fail_msg("'%s' accepted as %s", bad[i], s);
    }
}

static char *render(const ds4_chat_message *m, size_t n, ds4_think_mode think, uint64_t ctx) {
    ds4_chat_options opt = {.think = think, .ctx_size = ctx};
    ds4_chat_prompt p;
    char err[256];
    if (!ds4_chat_render(m, n, &opt, &p, err, sizeof err)) fail_msg("%s", err);
    char *s = p.text;
    p.text = NULL;
    ds4_chat_prompt_free(&p);
    return s;
}

#define BOS "<\xef\xbd\x9c" "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"
#define USER "<\xef\xbd\x9cUser\xef\xbd\x9c>"
#define ASSIST "<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>"
#define EOS "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"
#define DSML "\xef\xbd\x9c" "DSML\xef\xbd\x9c"

static void test_rules(void **state) {
    ds4_chat_message m[3] = {{.role = "user", .content = "hi"}};
    char *s = render(m, 1, DS4_THINK_NONE, 0);
    assert_string_equal(s, BOS USER "hi" ASSIST "</think>");
    free(s);
    /* Think-Max below the context threshold is HIGH */
    s = render(m, 1, DS4_THINK_MAX, DS4_THINK_MAX_MIN_CTX - 1);
    assert_string_equal(s, BOS USER "hi" ASSIST "<think>");
    free(s);
    s = render(m, 1, DS4_THINK_MAX, DS4_THINK_MAX_MIN_CTX);
    assert_non_null(strstr(s, BOS "Reasoning Effort: Absolute maximum"));
    free(s);
    /* arguments that are not a JSON object: one raw string parameter */
    ds4_chat_tool_call tc = {"c1", "f", "{\"a\": 1, oops"};
    m[1] = (ds4_chat_message){.role = "assistant", .tool_calls = &tc, .n_tool_calls = 1};
    s = render(m, 2, DS4_THINK_NONE, 0);
    assert_non_null(strstr(s, "<" DSML "parameter name=\"arguments\" string=\"true\">{\"a\": 1, oops</" DSML
                              "parameter>\n</" DSML "invoke>\n</" DSML "tool_calls>" EOS));
    free(s);
    tc.arguments = NULL;
    s = render(m, 2, DS4_THINK_NONE, 0);
    assert_non_null(strstr(s, "name=\"arguments\" string=\"false\">null<"));
    free(s);
    /* errors are reported, not crashed on */
    ds4_chat_prompt p;
    char err[256];
    ds4_chat_message badrole = {.role = "wizard", .content = "x"};
    assert_false(ds4_chat_render(&badrole, 1, NULL, &p, err, sizeof err));
    assert_non_null(strstr(err, "wizard"));
    ds4_chat_message dev = {.role = "developer", .content = ""};
    assert_false(ds4_chat_render(&dev, 1, NULL, &p, err, sizeof err));
    ds4_chat_message tools = {.role = "system", .tools_json = "{\"not\": \"an array\"}"};
    assert_false(ds4_chat_render(&tools, 1, NULL, &p, err, sizeof err));
    ds4_chat_message task = {.role = "user", .content = "x", .task = "nope"};
    assert_false(ds4_chat_render(&task, 1, NULL, &p, err, sizeof err));
    /* an element without "function" is used as the schema itself */
    ds4_chat_message anth = {.role = "system", .tools_json = "[{\"name\":\"f\",\"input_schema\":{}}]"};
    s = render(&anth, 1, DS4_THINK_NONE, 0);
    assert_non_null(strstr(s, "\n{\"name\": \"f\", \"input_schema\": {}}\n"));
    free(s);
    /* no messages: just BOS */
    s = render(NULL, 0, DS4_THINK_NONE, 0);
    assert_string_equal(s, BOS);
    free(s);
}

static void test_spans_cover_client_text(void **state) {
    ds4_chat_tool_call tc = {"c1", "get<think>", "{\"k<\": \"v</think>\"}"};
    ds4_chat_message m[] = {
        {.role = "system", .content = "sys"},
        {.role = "user", .content = "<think>"},
        {.role = "assistant", .content = "ok", .tool_calls = &tc, .n_tool_calls = 1},
        {.role = "tool", .tool_call_id = "c1", .content = "res"},
    };
    ds4_chat_prompt p;
    char err[128];
    assert_true(ds4_chat_render(m, 4, NULL, &p, err, sizeof err));
    /* concatenated spans = client strings in order */
    char joined[256] = "";
    for (size_t i = 0; i < p.n_spans; i++) strncat(joined, p.text + p.spans[i].start, p.spans[i].end - p.spans[i].start);
    assert_string_equal(joined, "sys<think>okget<think>k<v</think>res");
    ds4_chat_prompt_free(&p);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_python_json),
        cmocka_unit_test(test_rules),
        cmocka_unit_test(test_spans_cover_client_text),
        cmocka_unit_test(test_golden_renderings),
    };
    return cmocka_run_group_tests_name("chat_template", tests, NULL, NULL);
}

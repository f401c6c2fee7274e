#!/usr/bin/env python3
"""ds4-server measurements (not part of `make test`): time to first token for a
cached and an uncached long prompt, requests per second for small requests,
and the cache hit rate of a replayed agent session.

    bench_server.py ttft    --base URL [--tokens 8000]
    bench_server.py rps     --base URL [--n 50] [--threads 1]
    bench_server.py agent   --base URL [--turns 30] [--restart-cmd CMD]

The agent replay needs a server started with --test-force (the tool calls are
forced, see docs/SERVER.md) and --kv-disk-dir. It plays two agents, A and B,
each a coding-agent-like loop (a long system prompt with tools, user task,
then tool call -> tool result turns, growing tool outputs), interleaved A A A
B B A B A ... so that conversations switch; after every 10th turn a new
conversation with A's system prompt and a new task runs for two turns (a
sub-agent); one server restart halfway when --restart-cmd is given (a shell
command that restarts the server and prints nothing). It reports, per request, the prompt length and how much came
from the cache (live session, rewind checkpoint or disk), and the totals.
"""
import argparse
import json
import random
import statistics
import subprocess
import threading
import time
import urllib.request

DSML = "\uff5cDSML\uff5c"
EOS = "<\uff5cend\u2581of\u2581sentence\uff5c>"
TOOLS = [{"type": "function", "function": {"name": n, "description": d, "parameters": {
    "type": "object", "properties": {"path": {"type": "string"}, "command": {"type": "string"}}}}}
    for n, d in [("read_file", "Read a file"), ("run", "Run a shell command"), ("write_file", "Write a file")]]


def post(base, path, body, timeout=3600):
    req = urllib.request.Request(base + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def stream_ttft(base, body):
    """Seconds to the first streamed delta, and to the end."""
    body = dict(body, stream=True)
    req = urllib.request.Request(base + "/v1/chat/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    t0 = time.time()
    first = None
    with urllib.request.urlopen(req, timeout=3600) as r:
        for line in r:
            line = line.decode().strip()
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            d = json.loads(line[5:])
            if d["choices"] and (d["choices"][0]["delta"].get("content") or d["choices"][0]["delta"].get("reasoning_content")
                                 or d["choices"][0]["delta"].get("tool_calls")) and first is None:
                first = time.time() - t0
    return first, time.time() - t0


def cmd_ttft(a):
    words = " ".join(f"item{i} is {random.Random(i).choice(['red', 'green', 'blue', 'cold', 'warm'])}" for i in range(5000))
    base_msgs = [{"role": "system", "content": "You index long lists."}]
    # size the text to about a.tokens tokens
    lo, hi = 100, len(words)
    while lo < hi:
        mid = (lo + hi) // 2
        n = post(a.base, "/v1/messages/count_tokens", {"messages": [{"role": "user", "content": words[:mid]}]})["input_tokens"]
        if n < a.tokens:
            lo = mid + 1
        else:
            hi = mid
    text = words[:lo]
    msgs = base_msgs + [{"role": "user", "content": text}]
    body = {"model": "x", "messages": msgs, "max_tokens": 1, "temperature": 0}
    post(a.base, "/v1/chat/completions", {"model": "x", "max_tokens": 1, "messages": [{"role": "user", "content": "reset"}]})
    cold, _ = stream_ttft(a.base, body)
    r = post(a.base, "/v1/chat/completions", body)
    again = r["usage"]
    warm, _ = stream_ttft(a.base, body)
    msgs2 = msgs + [{"role": "assistant", "content": "ok"}, {"role": "user", "content": "And item 7?"}]
    r2 = post(a.base, "/v1/chat/completions", dict(body, messages=msgs))
    t0 = time.time()
    r3 = post(a.base, "/v1/chat/completions", dict(body, messages=msgs2, reasoning_effort="none"))
    follow = time.time() - t0
    print(f"prompt {again['prompt_tokens']} tokens")
    print(f"ttft uncached: {cold:.3f} s")
    print(f"ttft same prompt again (cached {again['prompt_tokens_details']['cached_tokens']}): {warm:.3f} s")
    print(f"follow-up turn (cached {r3['usage']['prompt_tokens_details']['cached_tokens']} of "
          f"{r3['usage']['prompt_tokens']}): {follow:.3f} s total")
    del r2


def cmd_rps(a):
    body = {"model": "x", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}
    post(a.base, "/v1/chat/completions", body)
    lat = []
    lock = threading.Lock()

    def run(k):
        for i in range(k):
            t0 = time.time()
            post(a.base, "/v1/chat/completions", dict(body, messages=[{"role": "user", "content": f"hi {i}"}]))
            with lock:
                lat.append(time.time() - t0)
    per = a.n // a.threads
    th = [threading.Thread(target=run, args=(per,)) for _ in range(a.threads)]
    t0 = time.time()
    for t in th:
        t.start()
    for t in th:
        t.join()
    el = time.time() - t0
    print(f"{len(lat)} requests (1 output token, ~10-token prompt), {a.threads} client threads: "
          f"{len(lat) / el:.1f} requests/s, median latency {statistics.median(lat) * 1000:.1f} ms")


def tool_turn(name, args, reasoning):
    body = "".join(f'<{DSML}parameter name="{k}" string="true">{v}</{DSML}parameter>\n' for k, v in args.items())
    return (f"{reasoning}</think>\n\n<{DSML}tool_calls>\n<{DSML}invoke name=\"{name}\">\n{body}"
            f"</{DSML}invoke>\n</{DSML}tool_calls>")


class Agent:
    def __init__(self, name, seed, sys_name=None):
        self.name = name
        self.r = random.Random(seed)
        sysp = (f"You are coding agent {sys_name or name}. Follow the repository conventions. " * 40 +
                "Use the tools to inspect and change files.")
        self.msgs = [{"role": "system", "content": sysp},
                     {"role": "user", "content": f"Agent {name}: fix the failing test in module {seed}."}]
        self.step = 0

    def request(self):
        self.step += 1
        last = self.step % 7 == 0
        if last:
            force = f"Done for now.</think>I fixed step {self.step}." + EOS
        else:
            tool = self.r.choice(["read_file", "run", "write_file"])
            force = tool_turn(tool, {"path": f"src/file{self.r.randrange(50)}.c"}, f"Next I use {tool}.")
        return {"model": "x", "messages": self.msgs, "tools": TOOLS, "max_tokens": 400,
                "ds4_force": force}, last

    def absorb(self, resp, last):
        m = resp["choices"][0]["message"]
        if last:
            self.msgs += [{"role": "assistant", "content": m.get("content") or ""},
                          {"role": "user", "content": f"Now continue with part {self.step}."}]
            return
        calls = m.get("tool_calls") or []
        self.msgs.append({"role": "assistant", "content": m.get("content"), "tool_calls": calls})
        for c in calls:
            out = "\n".join(f"line {i}: int f{i}(void) {{ return {i}; }}" for i in range(self.r.randrange(5, 60)))
            self.msgs.append({"role": "tool", "tool_call_id": c["id"], "content": out})


def cmd_agent(a):
    agents = [Agent("A", 1), Agent("B", 2)]
    order = []
    r = random.Random(7)
    cur = 0
    for _ in range(a.turns):
        if r.random() < 0.25:
            cur = 1 - cur
        order.append(cur)
    # every 10th turn a fresh conversation of agent A's kind (same system
    # prompt and tools, a new task) runs for two turns, like a sub-agent
    sub = []
    for i in range(len(order)):
        if i % 10 == 9:
            agents.append(Agent(f"A{len(agents)}", 100 + i, sys_name="A"))
            sub.append((i, len(agents) - 1))
    for pos, k in reversed(sub):
        order[pos + 1:pos + 1] = [k, k]
    tot_prompt = tot_cached = 0
    print("turn agent prompt cached")
    for i, k in enumerate(order):
        if a.restart_cmd and i == len(order) // 2:
            subprocess.run(a.restart_cmd, shell=True, check=True)
            print("--- server restarted ---")
        body, last = agents[k].request()
        t0 = time.time()
        resp = post(a.base, "/v1/chat/completions", body)
        el = time.time() - t0
        agents[k].absorb(resp, last)
        u = resp["usage"]
        c = u["prompt_tokens_details"]["cached_tokens"]
        tot_prompt += u["prompt_tokens"]
        tot_cached += c
        print(f"{i:4d} {agents[k].name:>5} {u['prompt_tokens']:6d} {c:6d}  ({el:.2f}s)")
    h = json.loads(urllib.request.urlopen(a.base + "/health").read())
    print(f"prompt tokens {tot_prompt}, from cache {tot_cached} ({100.0 * tot_cached / tot_prompt:.1f}%)")
    print(f"disk cache: {h.get('kv_disk')}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["ttft", "rps", "agent"])
    ap.add_argument("--base", required=True)
    ap.add_argument("--tokens", type=int, default=8000)
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--turns", type=int, default=40)
    ap.add_argument("--restart-cmd")
    a = ap.parse_args()
    {"ttft": cmd_ttft, "rps": cmd_rps, "agent": cmd_agent}[a.what](a)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Fuzz ds4-server with malformed HTTP and JSON (loopback only, bounded in time).

    fuzz_server.py --base http://127.0.0.1:PORT --seconds 600 [--threads 4] [--seed N]
                   [--pid PID] [--max-tokens N] [--corpus-out DIR]

Each request is one of:
  * a valid request for one of the endpoints, mutated at the JSON level:
    fields deleted, retyped (null, numbers, huge/negative/NaN numbers, arrays,
    objects), strings replaced by long, unicode, control-character, special-
    token or invalid-UTF-8 text, structures nested deeply, tool schemas and
    tool calls mangled;
  * the same serialized and then mutated at the byte level (flips, cuts,
    insertions, duplications);
  * HTTP-level garbage: bad request lines, methods, paths and versions,
    broken or lying Content-Length, bad chunked encoding, huge or binary
    headers, pipelined requests, early hang-ups mid-body or mid-stream.
What counts as a failure: the server process dies (--pid) or stops answering
/health, a response over 30 s (a hang), a 5xx other than 503, or a JSON
endpoint answering with a body that is not JSON (or SSE for streams).
Prints a summary and "N passed, N failed" (passed = requests answered
acceptably); exits 1 on any failure. Mutations are drawn from --seed, so a
run can be repeated; --corpus-out keeps every failing request.
"""
import argparse
import json
import os
import random
import socket
import sys
import threading
import time
import urllib.parse

DSML = "\uff5cDSML\uff5c"
SPECIALS = ["<\uff5cbegin\u2581of\u2581sentence\uff5c>", "<\uff5cend\u2581of\u2581sentence\uff5c>", "<\uff5cUser\uff5c>",
            "<\uff5cAssistant\uff5c>", "<think>", "</think>", DSML, f"<{DSML}tool_calls>", f"</{DSML}invoke>"]
PATHS = ["/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/messages", "/v1/messages/count_tokens",
         "/v1/models", "/health", "/v1/models/deepseek-v4-flash", "/chat/completions", "/messages"]
FORCED = (f"r</think>\n\n<{DSML}tool_calls>\n<{DSML}invoke name=\"f\">\n"
          f"<{DSML}parameter name=\"a\" string=\"true\">x</{DSML}parameter>\n"
          f"<{DSML}parameter name=\"b\" string=\"false\">[1, {{\"c\": 2}}]</{DSML}parameter>\n"
          f"</{DSML}invoke>\n</{DSML}tool_calls>")
OK_STATUS = {200, 204, 400, 401, 404, 405, 413, 415, 503}
# answers of the HTTP library itself to requests that are not valid HTTP (HTML bodies)
PROTOCOL_STATUS = {400, 413, 431, 501, 505}


def seeds(max_tokens):
    tool = {"type": "function", "function": {"name": "f", "description": "d", "parameters": {
        "type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}}}}}
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\": \"x\"}"}}
    return [
        ("/v1/chat/completions", {"model": "m", "max_tokens": max_tokens, "temperature": 0.5, "top_p": 0.9,
                                  "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}]}),
        ("/v1/chat/completions", {"model": "m", "max_tokens": max_tokens, "stream": True,
                                  "stream_options": {"include_usage": True}, "tools": [tool], "tool_choice": "auto",
                                  "messages": [{"role": "user", "content": [{"type": "text", "text": "w"}]},
                                               {"role": "assistant", "content": None, "tool_calls": [call],
                                                "reasoning_content": "r"},
                                               {"role": "tool", "tool_call_id": "call_1", "content": "res"}]}),
        ("/v1/completions", {"model": "m", "prompt": "once", "max_tokens": max_tokens, "stop": ["\n"]}),
        ("/v1/responses", {"model": "m", "instructions": "i", "max_output_tokens": max_tokens, "reasoning": {"effort": "low"},
                           "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
                           "input": [{"role": "user", "content": [{"type": "input_text", "text": "q"}]},
                                     {"type": "reasoning", "summary": [{"type": "summary_text", "text": "t"}]},
                                     {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                                     {"type": "function_call_output", "call_id": "c1", "output": "o"}]}),
        ("/v1/responses", {"model": "m", "input": "hello", "stream": True, "max_output_tokens": max_tokens}),
        ("/v1/messages", {"model": "c", "max_tokens": max_tokens, "system": [{"type": "text", "text": "s"}],
                          "thinking": {"type": "enabled", "budget_tokens": 100}, "stop_sequences": ["x"],
                          "tools": [{"name": "f", "input_schema": {"type": "object"}}],
                          "messages": [{"role": "user", "content": "q"},
                                       {"role": "assistant", "content": [
                                           {"type": "thinking", "thinking": "t", "signature": "s"},
                                           {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}}]},
                                       {"role": "user", "content": [
                                           {"type": "tool_result", "tool_use_id": "toolu_1", "content": "r"},
                                           {"type": "text", "text": "more"}]}]}),
        ("/v1/messages", {"model": "c", "max_tokens": max_tokens, "stream": True,
                          "messages": [{"role": "user", "content": "hi"}]}),
        ("/v1/messages/count_tokens", {"model": "c", "messages": [{"role": "user", "content": "hi"}]}),
        # forced DSML output (servers started with --test-force; others answer 400): mutations
        # garble the tool-call syntax that the parser, the argument streamer and the tool memory see
        ("/v1/chat/completions", {"model": "m", "max_tokens": 120, "stream": True, "tools": [tool],
                                  "messages": [{"role": "user", "content": "w"}], "ds4_force": FORCED}),
        ("/v1/messages", {"model": "c", "max_tokens": 120, "stream": True,
                          "tools": [{"name": "f", "input_schema": {"type": "object"}}],
                          "messages": [{"role": "user", "content": "w"}], "ds4_force": FORCED}),
        ("/v1/responses", {"model": "m", "max_output_tokens": 120, "tools": [{"type": "function", "name": "f"}],
                           "input": "w", "ds4_force": FORCED, "stream": True}),
    ]


class Fuzzer:
    def __init__(self, a):
        self.a = a
        u = urllib.parse.urlparse(a.base)
        self.host, self.port = u.hostname, u.port
        if self.host not in ("127.0.0.1", "localhost", "::1"):
            sys.exit("fuzz_server.py: only loopback targets are allowed")
        self.lock = threading.Lock()
        self.stats = {}
        self.failures = []
        self.passed = 0
        self.seeds = seeds(a.max_tokens)
        self.tl = threading.local()

    # ---- mutations ----
    def rand_str(self, r):
        k = r.randrange(9)
        if k == 0:
            return "A" * r.choice([0, 1, 1000, 100000])
        if k == 1:
            return "".join(chr(r.randrange(0x20, 0x2FFFF)) for _ in range(r.randrange(1, 50)))
        if k == 2:
            return r.choice(SPECIALS) * r.randrange(1, 4)
        if k == 3:
            return "".join(chr(r.randrange(0, 32)) for _ in range(r.randrange(1, 20)))
        if k == 4:
            return "\ud800x"  # lone surrogate: json.dumps writes \\ud800
        if k == 5:
            return f"<{DSML}parameter name=\"a\" string=\"false\">{{bad</{DSML}parameter>"
        if k == 6:
            return "</tool_result>" * 3
        return r.choice(["", "user", "assistant", "tool", "system", "function", "developer", "none", "max", "x"])

    def rand_value(self, r, depth=0):
        k = r.randrange(10)
        if k == 0:
            return None
        if k == 1:
            return r.choice([True, False])
        if k == 2:
            return r.choice([0, -1, 1, 2 ** 63, -2 ** 63, 2 ** 64 + 1, 1e308, -1e308, 0.5, 3.7, 1e-320])
        if k == 3:
            return float("nan") if r.random() < 0.5 else float("inf")
        if k == 4 and depth < 3:
            return [self.rand_value(r, depth + 1) for _ in range(r.randrange(4))]
        if k == 5 and depth < 3:
            return {self.rand_str(r)[:20]: self.rand_value(r, depth + 1) for _ in range(r.randrange(4))}
        if k == 6:
            v = []
            for _ in range(r.choice([50, 500, 5000])):
                v = [v]
            return v
        return self.rand_str(r)

    def mutate_json(self, r, v, depth=0):
        if isinstance(v, dict):
            v = dict(v)
            for key in list(v):
                p = r.random()
                if p < 0.08:
                    del v[key]
                elif p < 0.18:
                    v[key] = self.rand_value(r)
                elif p < 0.5:
                    v[key] = self.mutate_json(r, v[key], depth + 1)
            if r.random() < 0.1:
                v[self.rand_str(r)[:30]] = self.rand_value(r)
            return v
        if isinstance(v, list):
            v = [self.mutate_json(r, x, depth + 1) if r.random() < 0.4 else x for x in v]
            if v and r.random() < 0.1:
                v = v * r.randrange(2, 50)
            if r.random() < 0.1:
                v.insert(r.randrange(len(v) + 1), self.rand_value(r))
            return v
        if r.random() < 0.3:
            return self.rand_value(r)
        return v

    def mutate_bytes(self, r, b):
        b = bytearray(b)
        for _ in range(r.randrange(1, 8)):
            if not b:
                break
            k = r.randrange(5)
            i = r.randrange(len(b))
            if k == 0:
                b[i] = r.randrange(256)
            elif k == 1:
                del b[i:i + r.randrange(1, 64)]
            elif k == 2:
                b[i:i] = bytes(r.randrange(256) for _ in range(r.randrange(1, 16)))
            elif k == 3:
                b = b[:i]
            else:
                b[i:i] = b[i:i + r.randrange(1, 200)]
        return bytes(b)

    # ---- one exchange ----
    def exchange(self, raw, expect_json, hangup_after=None, half_close=False):
        """Sends raw bytes, reads the answer. Returns (status or None, body, elapsed)."""
        t0 = time.time()
        s = socket.create_connection((self.host, self.port), timeout=self.a.timeout)
        try:
            if hangup_after is not None:
                s.sendall(raw[:hangup_after])
                return "hangup", b"", time.time() - t0
            s.sendall(raw)
            if half_close or self.tl.r.random() < 0.2:
                s.shutdown(socket.SHUT_WR)
            data = b""
            while True:
                try:
                    chunk = s.recv(65536)
                except socket.timeout:
                    return "timeout", data, time.time() - t0
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                data += chunk
                if len(data) > 50 << 20:
                    break
                if self.tl.r.random() < 0.002:
                    return "hangup", data, time.time() - t0  # leave mid-stream
                if b"\r\n\r\n" in data and not self.keep_reading(data):
                    break
            return self.parse(data, expect_json), data, time.time() - t0
        finally:
            s.close()

    def keep_reading(self, data):
        head, _, body = data.partition(b"\r\n\r\n")
        h = head.lower()
        if b"content-length:" in h:
            n = int(h.split(b"content-length:")[1].split(b"\r\n")[0])
            return len(body) < n
        if b"transfer-encoding: chunked" in h:
            return not body.endswith(b"0\r\n\r\n")
        return True

    def parse(self, data, expect_json):
        if not data:
            return None  # closed without an answer (fine for garbage)
        try:
            line = data.split(b"\r\n", 1)[0].decode("latin-1")
            status = int(line.split()[1])
        except (IndexError, ValueError):
            return "bad-status-line"
        head, _, body = data.partition(b"\r\n\r\n")
        if expect_json and status != 204 and b"text/event-stream" not in head.lower():
            if b"transfer-encoding: chunked" in head.lower():
                body = dechunk(body)
            elif b"content-length:" in head.lower():
                body = body[:int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])]
            try:
                json.loads(body)
            except ValueError:
                return f"non-json-{status}"
        return status

    def build(self, r):
        k = r.random()
        path, req = r.choice(self.seeds)
        if k < 0.55:
            body = self.mutate_json(r, req)
            try:
                data = json.dumps(body, allow_nan=True).encode()
            except (ValueError, RecursionError):
                data = b"{}"
            if len(data) > 3 << 20:
                data = data[:3 << 20]
            return self.http("POST", path, data), True, None
        if k < 0.8:
            data = self.mutate_bytes(r, json.dumps(req).encode())
            return self.http("POST", path, data), True, None
        raw, expect_json, hang = self.http_garbage(r, path, json.dumps(req).encode())
        return raw, expect_json, -1 if hang is None else hang  # garbage: half-close, the server sees the end

    def http(self, method, path, body, headers=None, length=None):
        h = {"Host": "fuzz", "Content-Type": "application/json"}
        h.update(headers or {})
        lines = [f"{method} {path} HTTP/1.1"] + [f"{k}: {v}" for k, v in h.items()]
        lines.append(f"Content-Length: {len(body) if length is None else length}")
        lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape") + body

    def http_garbage(self, r, path, body):
        k = r.randrange(12)
        if k == 0:
            return bytes(r.randrange(256) for _ in range(r.randrange(1, 2000))), False, -1
        if k == 1:
            m = r.choice(["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "FOO", "P\x00ST"])
            p = r.choice(PATHS + ["/" + "a" * 5000, "/%00", "/../../etc/passwd", "*", ""])
            return self.http(m, p, body), m in ("GET", "PUT", "DELETE", "PATCH", "OPTIONS") and p in PATHS, None
        if k == 2:
            return self.http("POST", path, body, length=len(body) + r.randrange(1, 100)), True, len(body)
        if k == 3:
            return self.http("POST", path, body, length=max(0, len(body) - r.randrange(1, 50))), True, None
        if k == 4:
            return self.http("POST", path, body, length=r.choice(["-1", "abc", "99999999999999999999", "1e3"])), False, None
        if k == 5:
            chunked = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in [body[i:i + 7] for i in range(0, len(body), 7)])
            if r.random() < 0.5:
                chunked = self.mutate_bytes(r, chunked)
            head = (f"POST {path} HTTP/1.1\r\nHost: f\r\nContent-Type: application/json\r\n"
                    f"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n").encode()
            return head + chunked + b"0\r\n\r\n", False, None
        if k == 6:
            return self.http("POST", path, body, headers={"X-Big": "h" * r.choice([100, 10000, 100000])}), False, None
        if k == 7:
            return self.http("POST", path, body, headers={"Authorization": "Bearer " + "\xff" * 50,
                                                          "x-api-key": "\x01\x02"}), True, None
        if k == 8:
            one = self.http("POST", path, body).replace(b"Connection: close\r\n", b"")
            return one * r.randrange(2, 5), True, None
        if k == 9:
            return self.http("POST", path, body, headers={"Content-Type": r.choice(
                ["text/plain", "multipart/form-data", "", "application/json; charset=\xff"])}), True, None
        if k == 10:
            return f"POST {path} HTTP/9.9\r\n\r\n".encode(), False, None
        raw = self.http("POST", path, body)
        return raw, True, r.randrange(1, len(raw))  # hang up part way

    # ---- loop ----
    def worker(self, idx, deadline):
        r = random.Random((self.a.seed << 8) + idx)
        self.tl.r = r
        n = 0
        while time.time() < deadline:
            raw, expect_json, hang = self.build(r)
            try:
                st, data, el = self.exchange(raw, expect_json, None if hang == -1 else hang, half_close=hang == -1)
                if st is None and hang == -1:
                    st = "closed"
            except (ConnectionRefusedError, ConnectionResetError, BrokenPipeError, OSError) as e:
                st, data, el = f"conn-error:{type(e).__name__}", b"", 0
            n += 1
            ok_status = OK_STATUS if expect_json else OK_STATUS | PROTOCOL_STATUS
            bad = st == "timeout" or st == "bad-status-line" or (isinstance(st, str) and st.startswith("non-json")) or \
                (isinstance(st, int) and st not in ok_status) or (isinstance(st, str) and "Refused" in st)
            with self.lock:
                self.stats[st] = self.stats.get(st, 0) + 1
                if bad:
                    self.failures.append((st, raw[:300]))
                    if self.a.corpus_out:
                        os.makedirs(self.a.corpus_out, exist_ok=True)
                        with open(os.path.join(self.a.corpus_out, f"fail-{idx}-{n}.bin"), "wb") as f:
                            f.write(raw)
                else:
                    self.passed += 1

    def alive(self):
        if self.a.pid:
            try:
                os.kill(self.a.pid, 0)
            except OSError:
                return False
        # a plain request, without the random hang-ups of exchange(), retried
        # so that one lost connection is not taken for a dead server
        for _ in range(3):
            try:
                with socket.create_connection((self.host, self.port), timeout=self.a.timeout) as s:
                    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    data = b""
                    while True:
                        chunk = s.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                if data.startswith(b"HTTP/1.1 200"):
                    return True
            except OSError:
                pass
            time.sleep(1)
        return False

    def run(self):
        deadline = time.time() + self.a.seconds
        th = [threading.Thread(target=self.worker, args=(i, deadline), daemon=True) for i in range(self.a.threads)]
        self.tl.r = random.Random(self.a.seed)
        for t in th:
            t.start()
        dead = False
        while any(t.is_alive() for t in th):
            time.sleep(min(5, max(0.2, deadline - time.time())))
            if not self.alive():
                dead = True
                break
        for t in th:
            t.join(timeout=self.a.timeout + 5)
        if not dead:
            time.sleep(0.5)
            dead = not self.alive()
        total = sum(self.stats.values())
        print(f"fuzz_server: {total} requests in {self.a.seconds:.0f}s, {self.a.threads} threads, seed {self.a.seed}")
        for k, v in sorted(self.stats.items(), key=lambda kv: -kv[1]):
            print(f"  {k}: {v}")
        shown = {}
        for st, raw in self.failures:
            shown[st] = shown.get(st, 0) + 1
            if shown[st] <= 3:
                print(f"  failure {st}: {raw!r}")
        failed = len(self.failures) + (1 if dead else 0)
        if dead:
            print("  the server died or stopped answering /health")
        print(f"{self.passed} passed, {failed} failed")
        return 1 if failed else 0


def dechunk(b):
    out = b""
    while b:
        line, _, rest = b.partition(b"\r\n")
        try:
            n = int(line.split(b";")[0], 16)
        except ValueError:
            return out
        if n == 0:
            break
        out += rest[:n]
        b = rest[n + 2:]
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--pid", type=int)
    ap.add_argument("--max-tokens", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=30)
    ap.add_argument("--corpus-out")
    sys.exit(Fuzzer(ap.parse_args()).run())


if __name__ == "__main__":
    main()

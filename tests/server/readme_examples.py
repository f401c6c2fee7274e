#!/usr/bin/env python3
"""Runs the README's ds4-server curl examples as written.

    readme_examples.py --model MODEL.gguf [--readme README.md]

The examples are the ```sh blocks between <!-- server-examples:begin --> and
<!-- server-examples:end --> in the README. A server is started on the port
they name (8000); only when that port is taken is another used, and the
blocks are then run with the port replaced (said in the output). Each block
must exit 0 and print JSON without an "error", or an SSE stream ending in
[DONE] / message_stop / response.completed.
"""
import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time


def blocks(readme):
    text = open(readme, encoding="utf-8").read()
    m = re.search(r"<!-- server-examples:begin -->(.*?)<!-- server-examples:end -->", text, re.S)
    if not m:
        sys.exit("readme_examples.py: no server examples in the README")
    return re.findall(r"```sh\n(.*?)```", m.group(1), re.S)


def port_free(p):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
        return True
    except OSError:
        return False
    finally:
        s.close()


def check_output(out):
    out = out.strip()
    if out.startswith("{"):
        j = json.loads(out)
        assert j.get("error") is None and j.get("type") != "error", j
        return "json"
    assert "data:" in out or "event:" in out, out[:300]
    ends = ("data: [DONE]", "event: message_stop", "event: response.completed")
    assert any(e in out for e in ends), out[-300:]
    for line in out.splitlines():
        if line.startswith("data:") and line != "data: [DONE]":
            json.loads(line[5:])
    return "sse"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--readme", default="README.md")
    a = ap.parse_args()
    ex = blocks(a.readme)
    port = 8000
    if not port_free(port):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        print(f"readme_examples.py: port 8000 is taken; running the examples on {port} instead")
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
    srv = subprocess.Popen(["./ds4-server", "-m", a.model, "--port", str(port), "--ctx", "4096", "-t", "2"],
                           stdout=log, stderr=subprocess.STDOUT)
    failed = passed = 0
    try:
        for _ in range(300):
            if "listening on" in open(log.name).read():
                break
            if srv.poll() is not None:
                sys.exit("readme_examples.py: server exited:\n" + open(log.name).read())
            time.sleep(0.1)
        for i, b in enumerate(ex):
            cmd = b if port == 8000 else b.replace("localhost:8000", f"localhost:{port}")
            r = subprocess.run(["bash", "-e", "-c", cmd], capture_output=True, text=True, timeout=300)
            try:
                assert r.returncode == 0, f"exit {r.returncode}: {r.stderr[-300:]}"
                kind = check_output(r.stdout)
                passed += 1
                print(f"ok   README example {i + 1} ({kind}): {b.splitlines()[0][:70]}")
            except (AssertionError, ValueError) as e:
                failed += 1
                print(f"FAIL README example {i + 1}: {b.splitlines()[0][:70]}\n  {e}\n  output: {r.stdout[:500]}")
    finally:
        srv.terminate()
        srv.wait(timeout=30)
        os.unlink(log.name)
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed or not passed else 0)


if __name__ == "__main__":
    main()

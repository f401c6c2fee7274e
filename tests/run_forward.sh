#!/bin/sh
# Forward pass against transformers' deepseek_v4 (fixtures in tests/fixtures,
# made by tools/reference_logits.py; see docs/FIXTURES.md):
#  * three tiny configurations (Flash-like, all ratio 4, all ratio 128), 640
#    tokens each, converted at f32: `--exact` prefill and decode logits within
#    1e-3 of the reference with the same argmax at every position, and the
#    same indexer top-k sets (a near-tie margin below 1e-5 may differ);
#  * the default (simulating) numerics against the reference patched with the
#    same FP8/FP4/Hadamard steps (tolerances justified in docs/FORWARD.md);
#  * session behaviour (chunking independence, save/load, truncate, bad files,
#    bad input) through tests/tools/session_check;
#  * bad input through the CLI: another architecture, a truncated file, token
#    ids out of range, context overflow: one line and a non-zero exit.
# The full-width check lives in tests/run_fullwidth.sh.
set -eu
PY=${PYTHON:-python3}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
tmp=$(mktemp -d /tmp/ds4-forward-test.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
chk() { $PY tests/check_logits.py "$@" || fail "$*"; }

for fx in tiny-flash tiny-csa tiny-hca; do
  F=tests/fixtures/$fx
  cfg=$($PY -c "import json;print(json.load(open('$F/fixture.json'))['config'])")
  seed=$($PY -c "import json;print(json.load(open('$F/fixture.json'))['seed'])")
  $PY tools/make_checkpoint.py --config "$cfg" --seed "$seed" --out "$tmp/$fx" --verify "$F/fixture.json" > /dev/null \
    || fail "$fx: checkpoint regeneration"
  ./ds4-quantize --hf "$tmp/$fx" --out "$tmp/$fx.gguf" --recipe f32 2> /dev/null || fail "$fx: convert"
  n=$(wc -w < "$F/tokens.txt")
  layers=$($PY -c "import json;print(len(json.load(open('$F/meta.json')).get('csa_layers', [])))")
  k=$($PY -c "import json;print(json.load(open('$root/$cfg'))['index_topk'])")
  for mode in prefill decode; do
    flag=""; [ $mode = decode ] && flag="--decode"
    ./ds4 logits -m "$tmp/$fx.gguf" --tokens-file "$F/tokens.txt" --out "$tmp/l.f32" --exact $flag \
      --dump-topk "$tmp/topk.i32" --threads 2 || fail "$fx $mode: ds4 logits"
    chk full --ours "$tmp/l.f32" --ref "$F/logits.$mode.f32" --n "$n" --max-abs 1e-3 --argmax-min 1 --label "$fx exact $mode"
    if [ "$layers" -gt 0 ]; then
      chk topk --ours "$tmp/topk.i32" --ref "$F/topk.$mode.i32" --margins "$F/topk_margin.$mode.f32" \
        --layers "$layers" --n "$n" --k "$k" --min-margin 1e-5 --label "$fx exact $mode"
    fi
  done
  # simulation on: FP8 KV / compressor rows, Hadamard + FP4 indexer (the patched reference)
  ./ds4 logits -m "$tmp/$fx.gguf" --tokens-file "$F/tokens.txt" --out "$tmp/l.f32" --sim-no-f16 --threads 2 \
    --dump-topk "$tmp/topk.i32" || fail "$fx sim"
  chk full --ours "$tmp/l.f32" --ref "$F/logits.sim.prefill.f32" --n "$n" --max-abs 0.03 --max-mean 2e-4 \
    --argmax-min 0.995 --label "$fx sim (no F16 rows)"
  if [ "$layers" -gt 0 ]; then
    chk topk --ours "$tmp/topk.i32" --ref "$F/topk.sim.prefill.i32" --margins "$F/topk_margin.sim.prefill.f32" \
      --layers "$layers" --n "$n" --k "$k" --min-margin 1e-3 --max-differ-frac 0.02 --label "$fx sim"
  fi
  # default numerics (F16 cache rows too): looser, the reference keeps f32 rows
  ./ds4 logits -m "$tmp/$fx.gguf" --tokens-file "$F/tokens.txt" --out "$tmp/l.f32" --threads 2 || fail "$fx default"
  chk full --ours "$tmp/l.f32" --ref "$F/logits.sim.prefill.f32" --n "$n" --max-abs 0.1 --max-mean 2e-3 \
    --argmax-min 0.99 --label "$fx default"
done

# sessions, chunking, sampling (default numerics and --exact agree on these)
./build/tests/tools/session_check "$tmp/tiny-flash.gguf" tests/fixtures/tiny-flash/tokens.txt "$tmp" || fail "session_check"

# generate: greedy equals the argmax chain; seeded sampling is reproducible
g1=$(./ds4 generate -m "$tmp/tiny-flash.gguf" --tokens "1 2 3 4 5" -n 8 --exact)
[ "$(echo $g1 | wc -w)" = 8 ] || fail "generate printed '$g1'"
s1=$(./ds4 generate -m "$tmp/tiny-flash.gguf" --tokens "1 2 3" -n 12 --temp 1 --top-k 50 --seed 7)
s2=$(./ds4 generate -m "$tmp/tiny-flash.gguf" --tokens "1 2 3" -n 12 --temp 1 --top-k 50 --seed 7)
[ "$s1" = "$s2" ] || fail "seeded generation not reproducible"
ids="1 2 3 4 5 $g1"
echo "$ids" > "$tmp/chain.txt"
./ds4 logits -m "$tmp/tiny-flash.gguf" --tokens-file "$tmp/chain.txt" --out "$tmp/chain.f32" --exact
$PY - "$tmp/chain.f32" "$ids" <<'PYEOF' || fail "greedy chain"
import sys, numpy as np
ids = [int(x) for x in sys.argv[2].split()]
l = np.fromfile(sys.argv[1], dtype="<f4").reshape(len(ids), -1)
assert all(int(l[4 + i].argmax()) == ids[5 + i] for i in range(len(ids) - 6)), "greedy tokens are not the argmax"
PYEOF

# bad input: one clear line, non-zero exit
expect_fail() { # expect_fail "fragment" command...
  frag=$1; shift
  if "$@" > "$tmp/out" 2>&1; then fail "should fail: $*"; fi
  [ "$(wc -l < "$tmp/out")" -le 2 ] || { cat "$tmp/out"; fail "more than one line for: $*"; }
  grep -q -- "$frag" "$tmp/out" || { cat "$tmp/out"; fail "message for '$*' lacks '$frag'"; }
}
./build/tests/tools/gguf_sample "$tmp"
expect_fail "architecture is 'llama'" ./ds4 logits -m "$tmp/sample2.gguf" --tokens-file tests/fixtures/tiny-flash/tokens.txt --out "$tmp/x"
head -c 20000000 "$tmp/tiny-flash.gguf" > "$tmp/trunc.gguf"
expect_fail "runs past the end of the file" ./ds4 logits -m "$tmp/trunc.gguf" --tokens-file tests/fixtures/tiny-flash/tokens.txt --out "$tmp/x"
expect_fail "out of range" ./ds4 generate -m "$tmp/tiny-flash.gguf" --tokens "1 2 99999" -n 2
expect_fail "context overflow" ./ds4 generate -m "$tmp/tiny-flash.gguf" --tokens "1 2 3 4" -n 10 --ctx 8
expect_fail "cannot open" ./ds4 logits -m "$tmp/nope.gguf" --tokens-file tests/fixtures/tiny-flash/tokens.txt --out "$tmp/x"
expect_fail "bad token id" ./ds4 generate -m "$tmp/tiny-flash.gguf" --tokens "1 two" -n 2
echo "forward tests passed"

#!/bin/sh
# Converter end-to-end: regenerate the tiny official-layout checkpoints from
# their seeds (hash-verified), convert each with every recipe, and check the
# result with `ds4 info` (schema) and tests/check_convert.py (types, shapes and
# values against the source, read by independent Python code). Then the error
# paths: bad arguments, missing/truncated/corrupt inputs, imatrix handling, and
# that a failed conversion never leaves or damages an output file.
set -eu
PY=${PYTHON:-python3}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
tmp=$(mktemp -d /tmp/ds4-convert-test.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

for fx in tiny-flash tiny-csa tiny-hca; do
  cfg=$($PY -c "import json;print(json.load(open('tests/fixtures/$fx/fixture.json'))['config'])")
  seed=$($PY -c "import json;print(json.load(open('tests/fixtures/$fx/fixture.json'))['seed'])")
  $PY tools/make_checkpoint.py --config "$cfg" --seed "$seed" --out "$tmp/$fx" \
      --verify "tests/fixtures/$fx/fixture.json" > /dev/null || fail "$fx: checkpoint regeneration"
done

# every recipe on the Flash-like fixture, q2 and q8 on the others
for r in f32 f16 q8 q2 q4; do
  ./ds4-quantize --hf "$tmp/tiny-flash" --out "$tmp/flash-$r.gguf" --recipe $r --threads 2 2> "$tmp/log" \
    || { cat "$tmp/log"; fail "convert tiny-flash $r"; }
  ./ds4 info --schema-only "$tmp/flash-$r.gguf" | grep -q "DS4 schema: OK" || fail "schema $r"
  $PY tests/check_convert.py --gguf "$tmp/flash-$r.gguf" --ckpt "$tmp/tiny-flash" --recipe $r || fail "check $r"
done
for fx in tiny-csa tiny-hca; do
  for r in q2 q8; do
    ./ds4-quantize --hf "$tmp/$fx" --out "$tmp/$fx-$r.gguf" --recipe $r --threads 2 2> "$tmp/log" \
      || { cat "$tmp/log"; fail "convert $fx $r"; }
    $PY tests/check_convert.py --gguf "$tmp/$fx-$r.gguf" --ckpt "$tmp/$fx" --recipe $r || fail "check $fx $r"
  done
done
# a tokenizer-less checkpoint says so
./ds4-quantize --hf "$tmp/tiny-flash" --out "$tmp/x.gguf" --recipe f16 2>&1 | grep -q "no tokenizer.json" \
  || fail "missing tokenizer warning"

# per-family overrides
./ds4-quantize --hf "$tmp/tiny-flash" --out "$tmp/ovr.gguf" --recipe q2 --experts Q4_K --attention F16 \
  --output F32 2> /dev/null || fail "overrides"
$PY tests/check_convert.py --gguf "$tmp/ovr.gguf" --ckpt "$tmp/tiny-flash" --recipe q2 \
  --overrides experts=Q4_K,down=Q4_K,attention=F16,output=F32 || fail "check overrides"

# block-size fallback: Q4_K on the dense family hits 128-wide rows (ratio-128 ape)
./ds4-quantize --hf "$tmp/tiny-flash" --out "$tmp/fb.gguf" --recipe q2 --dense Q4_K 2> "$tmp/log" || fail "fallback"
grep -q "attn_compressor_ape.weight: row length 128 is not a multiple of the Q4_K block (256); using Q8_0" "$tmp/log" \
  || { cat "$tmp/log"; fail "fallback not reported"; }
$PY tests/check_convert.py --gguf "$tmp/fb.gguf" --ckpt "$tmp/tiny-flash" --recipe q2 --overrides dense=Q4_K,hc=Q4_K \
  || fail "check fallback"

# importance matrix: legacy .dat with one expert-major entry per routed tensor
$PY - "$tmp/im.dat" "$tmp/tiny-flash" good <<'PYEOF'
import json, struct, sys, numpy as np
out, ck, mode = sys.argv[1], sys.argv[2], sys.argv[3]
cfg = json.load(open(ck + "/config.json"))
E, H, F = cfg["n_routed_experts"], cfg["hidden_size"], cfg["moe_intermediate_size"]
rng = np.random.default_rng(7)
ents = []
for l in range(cfg["num_hidden_layers"]):
    for k, n in (("gate", H), ("up", H), ("down", F)):
        nval = E * n if mode == "good" else E * n + 1
        ents.append((f"blk.{l}.ffn_{k}_exps.weight", rng.random(nval, dtype=np.float32) + 0.1))
with open(out, "wb") as f:
    f.write(struct.pack("<i", len(ents)))
    for name, v in ents:
        f.write(struct.pack("<i", len(name)) + name.encode() + struct.pack("<ii", 4, len(v)))
        f.write((v * 4).astype("<f4").tobytes())
    f.write(struct.pack("<ii", 10, 4) + b"test")
PYEOF
./ds4-quantize --hf "$tmp/tiny-flash" --out "$tmp/im.gguf" --recipe q2 --imatrix "$tmp/im.dat" 2> "$tmp/log" \
  || { cat "$tmp/log"; fail "imatrix conversion"; }
grep -q "imatrix: " "$tmp/log" || fail "imatrix not reported"
$PY tests/check_convert.py --gguf "$tmp/im.gguf" --ckpt "$tmp/tiny-flash" --recipe q2 || fail "check imatrix"
cmp -s "$tmp/im.gguf" "$tmp/flash-q2.gguf" && fail "imatrix had no effect on the q2 file"

# ---- error paths: one clear line, non-zero exit, no output file ----
expect_fail() { # expect_fail "message fragment" args...
  frag=$1; shift
  if ./ds4-quantize "$@" > "$tmp/out" 2>&1; then fail "should fail: $*"; fi
  grep -q -- "$frag" "$tmp/out" || { cat "$tmp/out"; fail "message for '$*' lacks '$frag'"; }
}
expect_fail "required" --hf "$tmp/tiny-flash"
expect_fail "unknown recipe" --hf "$tmp/tiny-flash" --out "$tmp/e.gguf" --recipe q3
expect_fail "unsupported type" --hf "$tmp/tiny-flash" --out "$tmp/e.gguf" --recipe q2 --experts Q5_K
expect_fail "no config.json" --hf "$tmp/nonexistent" --out "$tmp/e.gguf" --recipe q2
expect_fail "not allowed" --hf "$tmp/tiny-flash" --out "$tmp/e.gguf" --recipe q2 --embedding Q2_K
$PY - "$tmp/bad-imat.dat" "$tmp/tiny-flash" bad <<'PYEOF'
import json, struct, sys, numpy as np
out, ck = sys.argv[1], sys.argv[2]
cfg = json.load(open(ck + "/config.json"))
v = np.ones(cfg["n_routed_experts"] * cfg["hidden_size"] + 1, dtype="<f4")
name = b"blk.2.ffn_gate_exps.weight"
open(out, "wb").write(struct.pack("<i", 1) + struct.pack("<i", len(name)) + name + struct.pack("<ii", 1, len(v)) + v.tobytes())
PYEOF
expect_fail "imatrix entry" --hf "$tmp/tiny-flash" --out "$tmp/e.gguf" --recipe q2 --imatrix "$tmp/bad-imat.dat"
head -c 100 "$tmp/bad-imat.dat" > "$tmp/trunc-imat.dat"
expect_fail "truncated" --hf "$tmp/tiny-flash" --out "$tmp/e.gguf" --recipe q2 --imatrix "$tmp/trunc-imat.dat"
[ ! -e "$tmp/e.gguf" ] || fail "failed conversion left an output file"

# truncated shard, missing tensor, bad config: the existing output survives untouched
cp -r "$tmp/tiny-flash" "$tmp/broken"
cp "$tmp/flash-q2.gguf" "$tmp/keep.gguf"
sum_before=$(sha256sum "$tmp/keep.gguf" | cut -d' ' -f1)
shard=$(ls "$tmp/broken"/model-0000[3]-*.safetensors)
head -c 1000000 "$shard" > "$tmp/s" && mv "$tmp/s" "$shard"
expect_fail "truncated file" --hf "$tmp/broken" --out "$tmp/keep.gguf" --recipe q2
cp "$tmp/tiny-flash"/model-0000[3]-*.safetensors "$tmp/broken/"
$PY - "$tmp/broken" <<'PYEOF'
import json, sys
p = sys.argv[1] + "/model.safetensors.index.json"
d = json.load(open(p))
d["weight_map"] = {k: v for k, v in d["weight_map"].items() if k != "layers.1.attn.wkv.weight"}
# the tensor stays in its shard but the converter must still find it through the shards
json.dump(d, open(p, "w"))
PYEOF
./ds4-quantize --hf "$tmp/broken" --out "$tmp/b.gguf" --recipe f16 2>/dev/null || fail "index entry removal only"
$PY - "$tmp/broken" <<'PYEOF'
import json, sys
p = sys.argv[1] + "/config.json"
d = json.load(open(p)); d["num_hidden_layers"] = d["num_hidden_layers"] + 1
d["compress_ratios"] = d["compress_ratios"] + [4]
json.dump(d, open(p, "w"))
PYEOF
expect_fail "checkpoint has no tensor 'layers.6." --hf "$tmp/broken" --out "$tmp/keep.gguf" --recipe q2
$PY - "$tmp/broken" <<'PYEOF'
import json, sys
p = sys.argv[1] + "/config.json"
d = json.load(open(p)); d["num_hidden_layers"] -= 1; d["hidden_size"] = 512
json.dump(d, open(p, "w"))
PYEOF
expect_fail "has shape" --hf "$tmp/broken" --out "$tmp/keep.gguf" --recipe q2
echo '{"hidden_size": ' > "$tmp/broken/config.json"
expect_fail "not valid JSON" --hf "$tmp/broken" --out "$tmp/keep.gguf" --recipe q2
[ "$(sha256sum "$tmp/keep.gguf" | cut -d' ' -f1)" = "$sum_before" ] || fail "existing output was modified"
ls "$tmp"/keep.gguf.tmp.* > /dev/null 2>&1 && fail "temporary file left behind"

# ds4 info on things that are not DS4 models
./build/tests/tools/gguf_sample "$tmp"
if ./ds4 info "$tmp/sample2.gguf" > "$tmp/out"; then fail "info accepted a llama gguf"; fi
grep -q "MISMATCH: architecture is 'llama'" "$tmp/out" || fail "info: architecture message"
head -c 3000 "$tmp/flash-q2.gguf" > "$tmp/trunc.gguf"
if ./ds4 info "$tmp/trunc.gguf" 2> "$tmp/out"; then fail "info accepted a truncated file"; fi
grep -q "truncated" "$tmp/out" || fail "info: truncation message"
echo "converter tests passed"

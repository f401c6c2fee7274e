#!/bin/sh
# The CUDA speed runs of docs/BENCH.md, after `make cuda`, on one GPU:
#   1. prefill walk to 2k and 8k with decode at each frontier (prefill tok/s per interval)
#   2. decode at deep frontiers (4k, 16k, 64k, 128k) with the KV state filled at random
# Synthetic flash-q2 (exact shapes and types, random weights); all 43 layers
# when the card has the memory for them (H200), else LAYERS (default 30) and
# the extrapolated full-model rate. CSVs go to ${OUT_DIR:-.}.
set -eu
OUT_DIR=${OUT_DIR:-.}
MODEL=${MODEL:-flash-q2}
mem=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1)
if [ "${LAYERS:-}" = "" ]; then
  if [ "$mem" -gt 120000 ]; then LAYERS=43; else LAYERS=30; fi
fi
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem --format=csv,noheader
echo "== $MODEL, $LAYERS layers: prefill walk"
./ds4-bench --synthetic "$MODEL" --layers "$LAYERS" --frontiers 2048,8192 --gen 32 ${CHUNK:+--chunk $CHUNK} \
  --csv "$OUT_DIR/bench_prefill_$MODEL.csv"
echo "== $MODEL, $LAYERS layers: decode at deep frontiers (random KV)"
./ds4-bench --synthetic "$MODEL" --layers "$LAYERS" --frontiers 4096,16384,65536,131072 --gen 64 --kv-fill random \
  --ctx 131200 --chunk 64 --profile --csv "$OUT_DIR/bench_decode_$MODEL.csv"

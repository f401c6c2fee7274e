#!/bin/sh
# CPU forward benchmark on a mid-size synthetic model (hidden 1024, 8 layers
# with the Flash schedule, 64 experts top-6, vocab 16384) converted with the q2
# mix; prints CSV rows (prefill/decode tokens/s, peak RSS) at 1 and 2 threads.
#   bench/cpu_forward.sh [PROMPT_TOKENS] [GEN_TOKENS] [THREADS_LIST]
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
PY=${PYTHON:-python3}
dir=${BENCH_DIR:-build/bench-mid}
mkdir -p "$dir"
make -s ds4-quantize build/bench/forward_cpu
if [ ! -f "$dir/mid-q2.gguf" ]; then
  $PY tools/make_checkpoint.py --config tools/configs/bench-mid.json --seed 11 --out "$dir/ckpt" > /dev/null
  ./ds4-quantize --hf "$dir/ckpt" --out "$dir/mid-q2.gguf" --recipe q2 2>&1 | tail -2
fi
build/bench/forward_cpu "$dir/mid-q2.gguf" --prompt "${1:-512}" --gen "${2:-32}" --threads "${3:-1,2}"

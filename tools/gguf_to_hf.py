#!/usr/bin/env python3
"""Write the weights of a DS4 GGUF back out as an official-layout checkpoint in F32.

    gguf_to_hf.py --gguf MODEL.gguf --like CKPT_DIR --out DIR

Every tensor is dequantized with the `gguf` package's numpy code (independent of
our C code) and stored as F32 under its official name; `config.json` is copied
from --like (the checkpoint the GGUF was converted from). The result is the
exact model a quantized GGUF computes with, as something transformers can load
(tools/reference_logits.py), so a quantized engine can be compared with a float
reference of the *same* weights: what remains is the engine's activation
quantization, not the weight quantization.
"""
import argparse
import json
import os
import shutil
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ds4ckpt  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from check_convert import hf_for  # noqa: E402  (the independent GGUF -> official name map)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--like", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    shutil.copy(os.path.join(a.like, "config.json"), os.path.join(a.out, "config.json"))
    src = ds4ckpt.Checkpoint(a.like)
    rd = GGUFReader(a.gguf)
    shards, weight_map = {}, {}
    for t in rd.tensors:
        hf, _fam = hf_for(t.name)
        if hf is None:
            raise SystemExit(f"{t.name}: no official name")
        layer = t.name.split(".")[1] if t.name.startswith("blk.") else "top"
        shard = f"model-{layer}.safetensors"
        if t.tensor_type.name == "I32":
            arr = np.asarray(t.data).astype(np.int64).reshape([int(x) for x in t.shape][::-1])
            shards.setdefault(shard, []).append((hf, "I64", arr.shape, arr))
            weight_map[hf] = shard
            continue
        val = dequantize(t.data, t.tensor_type).astype(np.float32).reshape([int(x) for x in t.shape][::-1])
        if "{}" in hf:
            for e in range(val.shape[0]):
                name = hf.format(e)
                shards.setdefault(shard, []).append((name, "F32", val[e].shape, val[e]))
                weight_map[name] = shard
        else:
            want = src.shape(hf)
            val = val.reshape(want)
            shards.setdefault(shard, []).append((hf, "F32", val.shape, val))
            weight_map[hf] = shard
    for shard, tensors in shards.items():
        ds4ckpt.write_safetensors(os.path.join(a.out, shard), sorted(tensors, key=lambda x: x[0]),
                                  metadata={"format": "pt"})
    with open(os.path.join(a.out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": dict(sorted(weight_map.items()))}, f, indent=1)
    print(f"wrote {len(weight_map)} tensors to {a.out}")


if __name__ == "__main__":
    main()

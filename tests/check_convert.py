#!/usr/bin/env python3
"""Independent check of a GGUF written by ds4-quantize against its source checkpoint.

    check_convert.py --gguf FILE.gguf --ckpt DIR --recipe q2 [--overrides fam=TYPE,...]

Reads the GGUF with the `gguf` PyPI package (not our C reader), dequantizes every
tensor with its numpy dequantizers, reads the official checkpoint with
tools/ds4ckpt.py, and checks for every tensor:
  * the name maps to the right official tensor (mapping written here, independently
    of src/model_schema.c) and the shape is the reversed HF shape (experts stacked);
  * the element type is what the recipe prescribes for the tensor's family, or the
    documented fallback when the row length is not a multiple of the block;
  * the values match the source within the format's error bound (relative RMS error
    per tensor, docs/FORMATS.md); float formats element-wise; tid2eid exactly.
Exits 1 with one line per failure.
"""
import argparse
import os
import re
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))
import ds4ckpt  # noqa: E402

BLOCK = {"F32": 1, "F16": 1, "BF16": 1, "Q8_0": 32, "Q2_K": 256, "Q4_K": 256, "IQ2_XXS": 256, "I32": 1}
# relative RMS error bound per format (error / RMS of the source tensor)
REL_RMS = {"F32": 0.0, "F16": 1e-3, "BF16": 8e-3, "Q8_0": 0.012, "Q4_K": 0.12, "Q2_K": 0.45, "IQ2_XXS": 0.6}

TOP = {
    "token_embd.weight": ("embed.weight", "embedding"),
    "output.weight": ("head.weight", "output"),
    "output_norm.weight": ("norm.weight", "vector"),
    "output_hc_base.weight": ("hc_head_base", "vector"),
    "output_hc_scale.weight": ("hc_head_scale", "vector"),
    "output_hc_fn.weight": ("hc_head_fn", "hc"),
}
LAYER = {
    "hc_attn_fn.weight": ("hc_attn_fn", "hc"),
    "hc_ffn_fn.weight": ("hc_ffn_fn", "hc"),
    "hc_attn_scale.weight": ("hc_attn_scale", "vector"),
    "hc_attn_base.weight": ("hc_attn_base", "vector"),
    "hc_ffn_scale.weight": ("hc_ffn_scale", "vector"),
    "hc_ffn_base.weight": ("hc_ffn_base", "vector"),
    "attn_norm.weight": ("attn_norm.weight", "vector"),
    "ffn_norm.weight": ("ffn_norm.weight", "vector"),
    "attn_q_a.weight": ("attn.wq_a.weight", "attention"),
    "attn_q_b.weight": ("attn.wq_b.weight", "attention"),
    "attn_kv.weight": ("attn.wkv.weight", "attention"),
    "attn_output_a.weight": ("attn.wo_a.weight", "attention"),
    "attn_output_b.weight": ("attn.wo_b.weight", "attention"),
    "attn_q_a_norm.weight": ("attn.q_norm.weight", "vector"),
    "attn_kv_a_norm.weight": ("attn.kv_norm.weight", "vector"),
    "attn_sinks.weight": ("attn.attn_sink", "vector"),
    "attn_compressor_ape.weight": ("attn.compressor.ape", "dense"),
    "attn_compressor_kv.weight": ("attn.compressor.wkv.weight", "dense"),
    "attn_compressor_gate.weight": ("attn.compressor.wgate.weight", "dense"),
    "attn_compressor_norm.weight": ("attn.compressor.norm.weight", "vector"),
    "indexer.attn_q_b.weight": ("attn.indexer.wq_b.weight", "dense"),
    "indexer.proj.weight": ("attn.indexer.weights_proj.weight", "dense"),
    "indexer_compressor_ape.weight": ("attn.indexer.compressor.ape", "dense"),
    "indexer_compressor_kv.weight": ("attn.indexer.compressor.wkv.weight", "dense"),
    "indexer_compressor_gate.weight": ("attn.indexer.compressor.wgate.weight", "dense"),
    "indexer_compressor_norm.weight": ("attn.indexer.compressor.norm.weight", "vector"),
    "ffn_gate_inp.weight": ("ffn.gate.weight", "dense"),
    "exp_probs_b.bias": ("ffn.gate.bias", "vector"),
    "ffn_gate_tid2eid.weight": ("ffn.gate.tid2eid", "tid2eid"),
    "ffn_gate_shexp.weight": ("ffn.shared_experts.w1.weight", "shared"),
    "ffn_up_shexp.weight": ("ffn.shared_experts.w3.weight", "shared"),
    "ffn_down_shexp.weight": ("ffn.shared_experts.w2.weight", "shared"),
    "ffn_gate_exps.weight": ("ffn.experts.{}.w1.weight", "experts"),
    "ffn_up_exps.weight": ("ffn.experts.{}.w3.weight", "experts"),
    "ffn_down_exps.weight": ("ffn.experts.{}.w2.weight", "down"),
}

RECIPES = {
    "f32": lambda fam: "F32",
    "f16": lambda fam: "F16",
    "q8": lambda fam: "Q8_0",
    "q2": lambda fam: {"output": "Q8_0", "attention": "Q8_0", "shared": "Q8_0",
                       "experts": "IQ2_XXS", "down": "Q2_K"}.get(fam, "F16"),
    "q4": lambda fam: {"output": "Q8_0", "attention": "Q8_0", "shared": "Q8_0",
                       "experts": "Q4_K", "down": "Q4_K"}.get(fam, "F16"),
}


def expected_type(recipe, fam, ne0, overrides):
    if fam == "vector":
        return "F32"
    if fam == "tid2eid":
        return "I32"
    t = overrides.get(fam) or RECIPES[recipe](fam)
    if ne0 % BLOCK[t] == 0:
        return t
    if BLOCK[t] > 32 and ne0 % 32 == 0:
        return "Q8_0"
    return "F16"


def hf_for(name):
    if name in TOP:
        return TOP[name]
    m = re.fullmatch(r"blk\.(\d+)\.(.+)", name)
    if not m or m.group(2) not in LAYER:
        return None, None
    hf, fam = LAYER[m.group(2)]
    return f"layers.{m.group(1)}.{hf}", fam


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--recipe", required=True, choices=sorted(RECIPES))
    ap.add_argument("--overrides", default="")
    ap.add_argument("--report", action="store_true", help="print the error of every tensor")
    a = ap.parse_args()
    overrides = dict(kv.split("=") for kv in a.overrides.split(",") if kv)
    ck = ds4ckpt.Checkpoint(a.ckpt)
    rd = GGUFReader(a.gguf)
    fails = []
    worst = {}
    seen_hf = set()
    for t in rd.tensors:
        hf, fam = hf_for(t.name)
        if hf is None:
            fails.append(f"{t.name}: no official counterpart")
            continue
        tname = t.tensor_type.name
        ne = [int(x) for x in t.shape]  # ggml order
        want = expected_type(a.recipe, fam, ne[0], overrides)
        if tname != want:
            fails.append(f"{t.name}: type {tname}, expected {want} for family {fam} (row length {ne[0]})")
        if "{}" in hf:
            srcs = []
            e = 0
            while hf.format(e) in ck.meta:
                srcs.append(ck.dequant(hf.format(e)))
                seen_hf.add(hf.format(e))
                e += 1
            src = np.stack(srcs)
        else:
            src = ck.dequant(hf)
            seen_hf.add(hf)
        if list(src.shape[::-1]) != ne and not (len(ne) == 1 and src.size == ne[0]):
            fails.append(f"{t.name}: ggml shape {ne} is not the reverse of source shape {list(src.shape)}")
            continue
        if tname == "I32":
            got = np.asarray(t.data).reshape(src.shape)
            if not np.array_equal(got.astype(np.int64), src.astype(np.int64)):
                fails.append(f"{t.name}: tid2eid values differ from {hf}")
            continue
        got = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(src.shape)
        src = src.astype(np.float32)
        if tname in ("F32",):
            ok = np.array_equal(got, src)
            err = 0.0 if ok else float(np.abs(got - src).max())
            if not ok:
                fails.append(f"{t.name}: F32 values differ from source (max {err})")
        elif tname in ("F16", "BF16"):
            tol = 2.0 ** (-11 if tname == "F16" else -8)
            bad = np.abs(got - src) > tol * np.abs(src) + 6e-8
            if bad.any():
                fails.append(f"{t.name}: {int(bad.sum())} {tname} values off by more than half an ulp")
            err = float(np.sqrt(np.mean((got - src) ** 2)) / max(np.sqrt(np.mean(src ** 2)), 1e-30))
        else:
            err = float(np.sqrt(np.mean((got - src) ** 2)) / max(np.sqrt(np.mean(src ** 2)), 1e-30))
            if not np.isfinite(err) or err > REL_RMS[tname]:
                fails.append(f"{t.name}: {tname} relative RMS error {err:.4f} exceeds {REL_RMS[tname]}")
        worst[tname] = max(worst.get(tname, 0.0), err)
        if a.report:
            print(f"  {t.name:40s} {tname:8s} rel_rms {err:.5f}")
    logical = set(n for n in ck.logical_tensors())
    missing = sorted(logical - seen_hf)
    if missing:
        fails.append(f"source tensors not converted: {missing[:5]}")
    for f in fails:
        print("FAIL", f)
    summary = ", ".join(f"{k} max rel RMS {v:.4f}" for k, v in sorted(worst.items()))
    print(f"{os.path.basename(a.gguf)}: {len(rd.tensors)} tensors, {summary}")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Build a random DeepSeek-V4-Flash-shaped checkpoint in the official Hugging Face
layout (deepseek-ai/DeepSeek-V4-Flash, revision 60d8d70): config.json,
model.safetensors.index.json and one safetensors shard for the embedding, one per
layer, one for the output head (as the official release shards it).

    tools/make_checkpoint.py --config tools/configs/tiny-flash.json --seed 1 --out DIR
        [--tokens N --tokens-out FILE] [--hashes-out FILE] [--verify FILE]

numpy only. Deterministic across machines and numpy versions: every tensor gets
its own PCG64 stream seeded with SeedSequence([seed, crc32(name)]); only the raw
64-bit outputs are used (u = (raw >> 11) * 2^-53, uniform values), followed by
exactly rounded IEEE operations and bit-level FP8/FP4/BF16 rounding.

Per-tensor dtypes follow the official release header (see docs/FIXTURES.md):
FP8 E4M3 + E8M0 128x128 scales: attn.wq_a, wq_b, wkv, wo_a, wo_b,
indexer.wq_b, shared_experts.w1/w2/w3; FP4 (I8 packed) + E8M0 per-32 scales:
routed experts w1/w2/w3; F32: hc_* tensors, attn_sink, compressor ape, gate.bias;
I64: gate.tid2eid; BF16: everything else (embed, head, norms, gate.weight,
compressor wkv/wgate, indexer weights_proj).
"""

import argparse
import hashlib
import json
import os
import sys
import zlib

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ds4ckpt  # noqa: E402

SQRT3 = float(np.sqrt(np.float64(3.0)))   # sqrt is correctly rounded


class Spec:
    def __init__(self, cfg):
        self.cfg = cfg
        g = cfg.get
        self.V = cfg["vocab_size"]
        self.H = cfg["hidden_size"]
        self.L = cfg["num_hidden_layers"]
        self.nh = cfg["num_attention_heads"]
        self.hd = cfg["head_dim"]
        self.rd = cfg["qk_rope_head_dim"]
        self.ql = cfg["q_lora_rank"]
        self.og = cfg["o_groups"]
        self.ol = cfg["o_lora_rank"]
        self.E = cfg["n_routed_experts"]
        self.K = cfg["num_experts_per_tok"]
        self.I = cfg["moe_intermediate_size"]
        self.ns = g("n_shared_experts", 1)
        self.ih = cfg["index_n_heads"]
        self.ihd = cfg["index_head_dim"]
        self.hc = g("hc_mult", 4)
        self.nhash = g("num_hash_layers", 0)
        if g("num_key_value_heads", 1) != 1:
            raise ValueError("num_key_value_heads must be 1")
        if self.ns != 1:
            raise ValueError("n_shared_experts must be 1")
        cr = list(cfg["compress_ratios"])
        if len(cr) not in (self.L, self.L + 1):
            raise ValueError(f"compress_ratios has {len(cr)} entries; expected {self.L} or {self.L + 1} (MTP)")
        self.ratios = cr[:self.L]
        for r in self.ratios:
            if r not in (0, 4, 128):
                raise ValueError(f"unsupported compress ratio {r}")
        if self.nh % self.og:
            raise ValueError("num_attention_heads must be divisible by o_groups")
        if self.H % 32 or self.I % 32:
            raise ValueError("hidden_size and moe_intermediate_size must be multiples of 32 (FP4 blocks)")
        if self.hd <= self.rd:
            raise ValueError("head_dim must exceed qk_rope_head_dim")
        q = cfg.get("quantization_config", {})
        if q.get("weight_block_size", [128, 128]) != [128, 128]:
            raise ValueError("only 128x128 FP8 blocks are supported")
        if cfg.get("expert_dtype", "fp4") != "fp4":
            raise ValueError("only expert_dtype fp4 is supported")

    def layer_tensors(self, n):
        """(name, kind, shape, init) for layer n; kind in fp8, fp4, bf16, f32, i64."""
        H, hc = self.H, self.hc
        mix = (2 + hc) * hc
        p = f"layers.{n}."
        t = []
        for sub in ("attn", "ffn"):
            t.append((p + f"hc_{sub}_fn", "f32", (mix, hc * H), ("u", 1.0 / np.sqrt(hc * H))))
            t.append((p + f"hc_{sub}_base", "f32", (mix,), ("hcbase", hc)))
            t.append((p + f"hc_{sub}_scale", "f32", (3,), ("range", 0.2, 1.0)))
        t.append((p + "attn_norm.weight", "bf16", (H,), ("norm",)))
        t.append((p + "ffn_norm.weight", "bf16", (H,), ("norm",)))
        a = p + "attn."
        t.append((a + "attn_sink", "f32", (self.nh,), ("range", -1.0, 2.0)))
        t.append((a + "wq_a.weight", "fp8", (self.ql, H), ("u", 1 / np.sqrt(H))))
        t.append((a + "q_norm.weight", "bf16", (self.ql,), ("norm",)))
        t.append((a + "wq_b.weight", "fp8", (self.nh * self.hd, self.ql), ("u", 1 / np.sqrt(self.ql))))
        t.append((a + "wkv.weight", "fp8", (self.hd, H), ("u", 1 / np.sqrt(H))))
        t.append((a + "kv_norm.weight", "bf16", (self.hd,), ("norm",)))
        gin = self.nh * self.hd // self.og
        t.append((a + "wo_a.weight", "fp8", (self.og * self.ol, gin), ("u", 1 / np.sqrt(gin))))
        t.append((a + "wo_b.weight", "fp8", (H, self.og * self.ol), ("u", 1 / np.sqrt(self.og * self.ol))))
        r = self.ratios[n]
        if r:
            coff = 2 if r == 4 else 1
            c = a + "compressor."
            t.append((c + "ape", "f32", (r, coff * self.hd), ("range", -1.0, 1.0)))
            t.append((c + "wkv.weight", "bf16", (coff * self.hd, H), ("u", 1 / np.sqrt(H))))
            t.append((c + "wgate.weight", "bf16", (coff * self.hd, H), ("u", 1 / np.sqrt(H))))
            t.append((c + "norm.weight", "bf16", (self.hd,), ("norm",)))
        if r == 4:
            ix = a + "indexer."
            t.append((ix + "wq_b.weight", "fp8", (self.ih * self.ihd, self.ql), ("u", 1 / np.sqrt(self.ql))))
            t.append((ix + "weights_proj.weight", "bf16", (self.ih, H), ("u", 1 / np.sqrt(H))))
            c = ix + "compressor."
            t.append((c + "ape", "f32", (4, 2 * self.ihd), ("range", -1.0, 1.0)))
            t.append((c + "wkv.weight", "bf16", (2 * self.ihd, H), ("u", 1 / np.sqrt(H))))
            t.append((c + "wgate.weight", "bf16", (2 * self.ihd, H), ("u", 1 / np.sqrt(H))))
            t.append((c + "norm.weight", "bf16", (self.ihd,), ("norm",)))
        f = p + "ffn."
        t.append((f + "gate.weight", "bf16", (self.E, H), ("u", 1 / np.sqrt(H))))
        if n < self.nhash:
            t.append((f + "gate.tid2eid", "i64", (self.V, self.K), ("tid2eid",)))
        else:
            t.append((f + "gate.bias", "f32", (self.E,), ("range", -0.3, 0.3)))
        for e in range(self.E):
            x = f + f"experts.{e}."
            t.append((x + "w1.weight", "fp4", (self.I, H), ("u", 3 / np.sqrt(H))))
            t.append((x + "w2.weight", "fp4", (H, self.I), ("u", 1 / np.sqrt(self.I))))
            t.append((x + "w3.weight", "fp4", (self.I, H), ("u", 3 / np.sqrt(H))))
        s = f + "shared_experts."
        t.append((s + "w1.weight", "fp8", (self.I, H), ("u", 3 / np.sqrt(H))))
        t.append((s + "w2.weight", "fp8", (H, self.I), ("u", 1 / np.sqrt(self.I))))
        t.append((s + "w3.weight", "fp8", (self.I, H), ("u", 3 / np.sqrt(H))))
        return t

    def shards(self):
        """List of (filename, tensor list) in the official sharding."""
        n = self.L + 2
        fn = lambda i: f"model-{i:05d}-of-{n:05d}.safetensors"  # noqa: E731
        out = [(fn(1), [("embed.weight", "bf16", (self.V, self.H), ("u", 1.0))])]
        for layer in range(self.L):
            out.append((fn(layer + 2), self.layer_tensors(layer)))
        H, hc = self.H, self.hc
        out.append((fn(n), [
            ("hc_head_base", "f32", (hc,), ("range", -1.0, 1.0)),
            ("hc_head_fn", "f32", (hc, hc * H), ("u", 1.0 / np.sqrt(hc * H))),
            ("hc_head_scale", "f32", (1,), ("range", 0.2, 1.0)),
            ("head.weight", "bf16", (self.V, H), ("u", 1 / np.sqrt(H))),
            ("norm.weight", "bf16", (H,), ("norm",)),
        ]))
        return out


def tensor_rng(seed, name):
    return np.random.PCG64(np.random.SeedSequence([seed, zlib.crc32(name.encode())]))


def uniform01(bitgen, n):
    """n doubles in [0, 1): (raw >> 11) * 2^-53 (exact)."""
    raw = bitgen.random_raw(n)
    return (raw >> np.uint64(11)).astype(np.float64) * (2.0 ** -53)


def make_values(seed, name, shape, init, spec):
    bg = tensor_rng(seed, name)
    n = int(np.prod(shape))
    kind = init[0]
    if kind == "u":                    # uniform with std init[1]
        a = float(init[1]) * SQRT3
        return ((2.0 * uniform01(bg, n) - 1.0) * a).astype(np.float32).reshape(shape)
    if kind == "range":
        lo, hi = init[1], init[2]
        return (lo + (hi - lo) * uniform01(bg, n)).astype(np.float32).reshape(shape)
    if kind == "norm":                 # 1 +- 0.15
        return (1.0 + 0.15 * (2.0 * uniform01(bg, n) - 1.0)).astype(np.float32).reshape(shape)
    if kind == "hcbase":               # pre/post biases in [-1, 1]; comb = 2*I + [-0.5, 0.5]
        hc = init[1]
        v = 2.0 * uniform01(bg, n) - 1.0
        v[2 * hc:] *= 0.5
        comb = v[2 * hc:].reshape(hc, hc)
        comb += 2.0 * np.eye(hc)
        return v.astype(np.float32).reshape(shape)
    if kind == "tid2eid":              # K distinct experts per token
        V, K = shape
        raw = bg.random_raw(V * spec.E).reshape(V, spec.E)
        order = np.argsort(raw, axis=1, kind="stable")
        return np.ascontiguousarray(order[:, :K].astype(np.int64))
    raise ValueError(kind)


def encode(name, kind, shape, vals):
    """-> list of (name, st_dtype, shape, array)."""
    if kind == "f32":
        return [(name, "F32", shape, vals.astype(np.float32))]
    if kind == "bf16":
        return [(name, "BF16", shape, ds4ckpt.f32_to_bf16(vals))]
    if kind == "i64":
        return [(name, "I64", shape, vals.astype(np.int64))]
    base = name[:-len(".weight")]
    if kind == "fp8":
        codes, scale = ds4ckpt.quant_fp8_block(vals)
        return [(name, "F8_E4M3", shape, codes), (base + ".scale", "F8_E8M0", scale.shape, scale)]
    if kind == "fp4":
        packed, scale = ds4ckpt.quant_fp4(vals)
        return [(name, "I8", packed.shape, packed), (base + ".scale", "F8_E8M0", scale.shape, scale)]
    raise ValueError(kind)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def build(cfg, seed, out):
    spec = Spec(cfg)
    os.makedirs(out, exist_ok=True)
    weight_map = {}
    total = 0
    hashes = {}
    for fname, tensors in spec.shards():
        enc = []
        for name, kind, shape, init in tensors:
            vals = make_values(seed, name, shape, init, spec)
            enc.extend(encode(name, kind, shape, vals))
        enc.sort(key=lambda e: e[0])
        total += ds4ckpt.write_safetensors(os.path.join(out, fname), enc, metadata={"format": "pt"})
        for e in enc:
            weight_map[e[0]] = fname
        hashes[fname] = sha256_file(os.path.join(out, fname))
    with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total},
                   "weight_map": dict(sorted(weight_map.items()))}, f, indent=2)
        f.write("\n")
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    for fn in ("config.json", "model.safetensors.index.json"):
        hashes[fn] = sha256_file(os.path.join(out, fn))
    return hashes


def make_tokens(seed, vocab, n):
    bg = np.random.PCG64(np.random.SeedSequence([seed, zlib.crc32(b"tokens")]))
    return (bg.random_raw(n) % np.uint64(vocab)).astype(np.int64)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="official-style config.json")
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--out", required=True, help="output checkpoint directory")
    ap.add_argument("--tokens", type=int, default=0, help="also draw N random token ids")
    ap.add_argument("--tokens-out", help="where to write the token ids (one per line)")
    ap.add_argument("--hashes-out", help="write sha256 of every file (JSON)")
    ap.add_argument("--verify", help="JSON {file: sha256} to compare against; exit 1 on mismatch")
    args = ap.parse_args()
    with open(args.config) as f:
        cfg = json.load(f)
    hashes = build(cfg, args.seed, args.out)
    for k, v in hashes.items():
        print(f"{v}  {k}")
    if args.hashes_out:
        with open(args.hashes_out, "w") as f:
            json.dump(hashes, f, indent=2)
            f.write("\n")
    if args.tokens:
        toks = make_tokens(args.seed, cfg["vocab_size"], args.tokens)
        path = args.tokens_out or os.path.join(args.out, "tokens.txt")
        with open(path, "w") as f:
            f.write("\n".join(str(int(t)) for t in toks) + "\n")
    if args.verify:
        with open(args.verify) as f:
            want = json.load(f)
        want = want.get("sha256", want)
        bad = [k for k in want if hashes.get(k) != want[k]]
        if bad:
            print("sha256 MISMATCH: " + ", ".join(bad), file=sys.stderr)
            return 1
        print(f"verified {len(want)} files")
    return 0


if __name__ == "__main__":
    sys.exit(main())

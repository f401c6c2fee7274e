#!/usr/bin/env python3
"""Reference logits for an official-layout DeepSeek-V4-Flash checkpoint, computed
with Hugging Face transformers' `deepseek_v4` (DeepseekV4ForCausalLM) in float32.

    tools/reference_logits.py --ckpt DIR --tokens IDS.txt --out DIR
        [--simulate] [--device cpu|cuda] [--top N] [--no-full-logits]
        [--check-loader] [--try-quantized-loader] [--no-decode]

Needs torch + transformers (the GPU device machine); the checkpoint is read with
tools/ds4ckpt.py and FP8/FP4 weights are dequantized exactly (float32) before they
are copied into the transformers model, so the reference uses exactly the values
encoded in the checkpoint.

Outputs (all little-endian, row-major; see docs/FIXTURES.md):
  logits.prefill.f32        float32 [n_tokens, vocab]  one-shot forward, use_cache=False
  logits.decode.f32         float32 [n_tokens, vocab]  one token per forward, with cache
  topk.prefill.i32          int32 [n_csa_layers, n_tokens, index_topk]  indexer picks,
                            sorted ascending, -1 padded (the set is what matters)
  topk.decode.i32           same for the decode run
  topk_margin.prefill.f32   float32 [n_csa_layers, n_tokens]: k-th minus (k+1)-th best
                            visible index score (+inf if all visible rows are kept)
  topk_margin.decode.f32
  *.sim.*                   the same with --simulate (official FP8/FP4/Hadamard steps)
  top<N>.<mode>.i32/.f32    with --top N: top-N token ids / logits per position
  meta.json                 versions, sha256 of modeling_deepseek_v4.py, configs,
                            max |prefill - decode|, loader checks, tie statistics
"""

import argparse
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
import traceback

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ds4ckpt  # noqa: E402

# ---------------------------------------------------------------------------
# official name -> transformers name


def hf_name(name):
    """Map an official checkpoint tensor name to the transformers parameter name.
    Routed expert weights are handled separately (merged into 3-D tensors)."""
    top = {"embed.weight": "model.embed_tokens.weight", "head.weight": "lm_head.weight",
           "norm.weight": "model.norm.weight", "hc_head_fn": "model.hc_head.hc_fn",
           "hc_head_base": "model.hc_head.hc_base", "hc_head_scale": "model.hc_head.hc_scale"}
    if name in top:
        return top[name]
    parts = name.split(".")
    assert parts[0] == "layers", name
    n = parts[1]
    rest = ".".join(parts[2:])
    p = f"model.layers.{n}."
    simple = {
        "attn_norm.weight": "input_layernorm.weight",
        "ffn_norm.weight": "post_attention_layernorm.weight",
        "hc_attn_fn": "attn_hc.fn", "hc_attn_base": "attn_hc.base", "hc_attn_scale": "attn_hc.scale",
        "hc_ffn_fn": "ffn_hc.fn", "hc_ffn_base": "ffn_hc.base", "hc_ffn_scale": "ffn_hc.scale",
        "attn.attn_sink": "self_attn.sinks",
        "attn.wq_a.weight": "self_attn.q_a_proj.weight",
        "attn.q_norm.weight": "self_attn.q_a_norm.weight",
        "attn.wq_b.weight": "self_attn.q_b_proj.weight",
        "attn.wkv.weight": "self_attn.kv_proj.weight",
        "attn.kv_norm.weight": "self_attn.kv_norm.weight",
        "attn.wo_a.weight": "self_attn.o_a_proj.weight",
        "attn.wo_b.weight": "self_attn.o_b_proj.weight",
        "attn.compressor.wkv.weight": "self_attn.compressor.kv_proj.weight",
        "attn.compressor.wgate.weight": "self_attn.compressor.gate_proj.weight",
        "attn.compressor.ape": "self_attn.compressor.position_bias",
        "attn.compressor.norm.weight": "self_attn.compressor.kv_norm.weight",
        "attn.indexer.wq_b.weight": "self_attn.compressor.indexer.q_b_proj.weight",
        "attn.indexer.weights_proj.weight": "self_attn.compressor.indexer.scorer.weights_proj.weight",
        "attn.indexer.compressor.wkv.weight": "self_attn.compressor.indexer.kv_proj.weight",
        "attn.indexer.compressor.wgate.weight": "self_attn.compressor.indexer.gate_proj.weight",
        "attn.indexer.compressor.ape": "self_attn.compressor.indexer.position_bias",
        "attn.indexer.compressor.norm.weight": "self_attn.compressor.indexer.kv_norm.weight",
        "ffn.gate.weight": "mlp.gate.weight",
        "ffn.gate.bias": "mlp.gate.e_score_correction_bias",
        "ffn.gate.tid2eid": "mlp.gate.tid2eid",
        "ffn.shared_experts.w1.weight": "mlp.shared_experts.gate_proj.weight",
        "ffn.shared_experts.w3.weight": "mlp.shared_experts.up_proj.weight",
        "ffn.shared_experts.w2.weight": "mlp.shared_experts.down_proj.weight",
    }
    if rest not in simple:
        raise KeyError(f"no transformers name for {name}")
    return p + simple[rest]


def build_state_dict(ck):
    """Dequantized float32 (int64 for tid2eid) transformers state dict."""
    sd = {}
    experts = {}
    for name in ck.logical_tensors():
        v = ck.dequant(name)
        if ".ffn.experts." in name:
            parts = name.split(".")
            layer, e, w = int(parts[1]), int(parts[4]), parts[5]
            experts.setdefault(layer, {}).setdefault(e, {})[w] = v
            continue
        t = torch.from_numpy(np.array(v))
        if t.dtype == torch.int64:
            sd[hf_name(name)] = t
        else:
            sd[hf_name(name)] = t.float()
    for layer, ex in experts.items():
        E = len(ex)
        gate_up = np.stack([np.concatenate([ex[e]["w1"], ex[e]["w3"]], axis=0) for e in range(E)])
        down = np.stack([ex[e]["w2"] for e in range(E)])
        sd[f"model.layers.{layer}.mlp.experts.gate_up_proj"] = torch.from_numpy(gate_up).float()
        sd[f"model.layers.{layer}.mlp.experts.down_proj"] = torch.from_numpy(down).float()
    return sd


# ---------------------------------------------------------------------------
# official low-precision steps (DS4-ARCHITECTURE section 4.6), torch versions


def _ceil_log2_pow2(a):
    """2^ceil(log2(a)) for float32 a > 0, exact."""
    m, e = torch.frexp(a)
    k = torch.where(m == 0.5, e - 1, e)
    return torch.ldexp(torch.ones_like(a), k)


def round_e4m3(v):
    """Round float32 |v| <= 448 to the nearest E4M3 value, ties to even."""
    a = v.abs()
    bits = a.view(torch.int32)
    rb = ((bits + 0x7FFFF + ((bits >> 20) & 1)) >> 20) << 20
    normal = rb.view(torch.float32)
    sub = torch.round(a * 512.0) / 512.0          # torch.round: half to even
    r = torch.where(a < 2.0 ** -6, sub, normal)
    return torch.copysign(r, v)


def fp8_sim(x, block=64):
    """E4M3 round-trip with a power-of-two scale per `block` values (KV quant)."""
    shp = x.shape
    xb = x.float().reshape(*shp[:-1], shp[-1] // block, block)
    amax = xb.abs().amax(dim=-1, keepdim=True).clamp_min(1e-4)
    scale = _ceil_log2_pow2(amax / 448.0)
    v = (xb / scale).clamp(-448.0, 448.0)
    return (round_e4m3(v) * scale).reshape(shp).to(x.dtype)


FP4_TABLE = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
FP4_MID = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0])


def fp4_sim(x, block=32):
    """E2M1 round-trip with a power-of-two scale per `block` values."""
    shp = x.shape
    xb = x.float().reshape(*shp[:-1], shp[-1] // block, block)
    amax = xb.abs().amax(dim=-1, keepdim=True).clamp_min(7.052966104933725e-38)
    scale = _ceil_log2_pow2(amax / 6.0)
    v = (xb / scale).clamp(-6.0, 6.0)
    a = v.abs()
    mid = FP4_MID.to(a.device)
    idx = torch.bucketize(a, mid, right=False)     # a == mid[i] -> i
    tie = (idx < 7) & (a == mid[idx.clamp(max=6)])
    idx = torch.where(tie & (idx % 2 == 1), idx + 1, idx)
    r = torch.copysign(FP4_TABLE.to(a.device)[idx], v)
    return (r * scale).reshape(shp).to(x.dtype)


def hadamard(x):
    """Unnormalised fast Walsh-Hadamard transform (butterflies (a+b, a-b), strides
    1, 2, 4, ...) over the last dim, then * 1/sqrt(n)."""
    n = x.shape[-1]
    y = x.float()
    h = 1
    while h < n:
        y = y.reshape(*x.shape[:-1], n // (2 * h), 2, h)
        a, b = y[..., 0, :], y[..., 1, :]
        y = torch.stack([a + b, a - b], dim=-2)
        h *= 2
    y = y.reshape(x.shape)
    scale = {128: 0.08838834764831845}.get(n, float(n) ** -0.5)
    return (y * scale).to(x.dtype)


class Simulation:
    """Forward hooks that add the official low-precision steps to transformers:
    * self_attn.kv_norm output: FP8 (64-blocks) round-trip of the first head_dim-rope dims
      (commutes with the RoPE that follows, which only touches the last rope dims);
    * self_attn.compressor.kv_norm output (main compressor, CSA and HCA): same;
    * self_attn.compressor.indexer.scorer inputs: q and compressed keys (both already
      RoPE'd) -> Hadamard(index_head_dim) -> FP4 (32-blocks) round-trip."""

    def __init__(self, model, cfg):
        self.handles = []
        nope = cfg["head_dim"] - cfg["qk_rope_head_dim"]

        def kv_hook(mod, inp, out):
            return torch.cat([fp8_sim(out[..., :nope]), out[..., nope:]], dim=-1)

        def scorer_pre(mod, args, kwargs):
            args = list(args)
            names = ["q", "compressed_kv"]
            for i, nm in enumerate(names):
                if nm in kwargs:
                    kwargs[nm] = fp4_sim(hadamard(kwargs[nm]))
                elif i < len(args):
                    args[i] = fp4_sim(hadamard(args[i]))
            return tuple(args), kwargs

        self.sites = []
        for i, layer in enumerate(model.model.layers):
            at = layer.self_attn
            self.handles.append(at.kv_norm.register_forward_hook(kv_hook))
            self.sites.append(f"model.layers.{i}.self_attn.kv_norm (fp8 nope)")
            comp = getattr(at, "compressor", None)
            if comp is not None:
                self.handles.append(comp.kv_norm.register_forward_hook(kv_hook))
                self.sites.append(f"model.layers.{i}.self_attn.compressor.kv_norm (fp8 nope)")
                idx = getattr(comp, "indexer", None)
                if idx is not None:
                    self.handles.append(idx.scorer.register_forward_pre_hook(scorer_pre, with_kwargs=True))
                    self.sites.append(f"model.layers.{i}.self_attn.compressor.indexer.scorer (hadamard+fp4 q,k)")

    def remove(self):
        for h in self.handles:
            h.remove()


# ---------------------------------------------------------------------------
# indexer capture


class IndexerCapture:
    def __init__(self, model, topk):
        self.topk = topk
        self.layers = []
        self.handles = []
        self.reset()
        for i, layer in enumerate(model.model.layers):
            comp = getattr(layer.self_attn, "compressor", None)
            idx = getattr(comp, "indexer", None) if comp is not None else None
            if idx is None:
                continue
            self.layers.append(i)
            self.handles.append(idx.register_forward_hook(self._mk_out(i)))
            self.handles.append(idx.scorer.register_forward_hook(self._mk_score(i)))

    def reset(self):
        self.picks = {}    # layer -> list of [S, k] arrays
        self.scores = {}   # layer -> list of [S, T] arrays

    def _mk_out(self, i):
        def hook(mod, inp, out):
            t = out[0] if isinstance(out, (tuple, list)) else out
            self.picks.setdefault(i, []).append(t[0].detach().cpu().numpy())
        return hook

    def _mk_score(self, i):
        def hook(mod, inp, out):
            self.scores.setdefault(i, []).append(out[0].detach().float().cpu().numpy())
        return hook

    def collect(self, positions):
        """-> picks int32 [n_layers, n_tok, topk] (sorted, -1 padded), margins f32
        [n_layers, n_tok], and a count of captured picks that disagree with the scores."""
        n = len(positions)
        picks = np.full((len(self.layers), n, self.topk), -1, dtype=np.int32)
        margins = np.full((len(self.layers), n), np.inf, dtype=np.float32)
        disagree = 0
        for li, layer in enumerate(self.layers):
            rows_p = [r for chunk in self.picks.get(layer, []) for r in chunk]
            rows_s = [r for chunk in self.scores.get(layer, []) for r in chunk]
            assert len(rows_p) == n and len(rows_s) == n, (layer, len(rows_p), len(rows_s), n)
            for t in range(n):
                p = np.sort(rows_p[t][rows_p[t] >= 0])
                picks[li, t, :len(p)] = p
                s = rows_s[t]
                vis = (positions[t] + 1) // 4
                sv = s[:vis]
                k = min(self.topk, s.shape[0])
                if vis > k:
                    order = np.sort(sv)[::-1]
                    margins[li, t] = order[k - 1] - order[k]
                    want = set(np.argsort(-sv, kind="stable")[:k].tolist())
                    if margins[li, t] > 0 and want != set(p.tolist()):
                        disagree += 1
                elif set(range(vis)) != set(p.tolist()):
                    disagree += 1
        return picks, margins, disagree

    def remove(self):
        for h in self.handles:
            h.remove()


# ---------------------------------------------------------------------------
# runs


def run_prefill(model, ids, dev):
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids], device=dev), use_cache=False)
    return out.logits[0].float().cpu().numpy()


def run_decode(model, ids, dev):
    logits = []
    past = None
    with torch.no_grad():
        for t, tok in enumerate(ids):
            out = model(input_ids=torch.tensor([[tok]], device=dev), past_key_values=past,
                        use_cache=True, position_ids=torch.tensor([[t]], device=dev))
            past = out.past_key_values
            logits.append(out.logits[0, -1].float().cpu().numpy())
    return np.stack(logits)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def write_f32(path, a):
    np.ascontiguousarray(a, dtype="<f4").tofile(path)


def write_i32(path, a):
    np.ascontiguousarray(a, dtype="<i4").tofile(path)


def write_top(out, tag, logits, n):
    idx = np.argsort(-logits, axis=1, kind="stable")[:, :n].astype(np.int32)
    val = np.take_along_axis(logits, idx, axis=1).astype(np.float32)
    write_i32(os.path.join(out, f"top{n}.{tag}.i32"), idx)
    write_f32(os.path.join(out, f"top{n}.{tag}.f32"), val)


def diff_stats(a, b):
    d = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return {"max_abs": float(d.max()), "mean_abs": float(d.mean()),
            "max_abs_per_position_max": float(d.max(axis=1).max()),
            "argmax_agree": int((a.argmax(1) == b.argmax(1)).sum()), "n": int(a.shape[0]),
            "ref_abs_max": float(np.abs(b).max())}


def make_model(cfg_official, dev):
    from transformers import DeepseekV4Config, DeepseekV4ForCausalLM
    cfg = dict(cfg_official)
    cfg.pop("quantization_config", None)
    config = DeepseekV4Config(**cfg)
    try:
        config._attn_implementation = "eager"
    except Exception as e:  # noqa: BLE001
        print("could not set eager attention:", e)
    torch.manual_seed(0)
    model = DeepseekV4ForCausalLM(config).float().eval()
    try:
        model.set_experts_implementation("eager")
    except Exception as e:  # noqa: BLE001
        print("set_experts_implementation failed:", e)
    return model.to(dev), config


def check_config(config, cfg_official):
    L = cfg_official["num_hidden_layers"]
    want = {0: "sliding_attention", 4: "compressed_sparse_attention", 128: "heavily_compressed_attention"}
    want_types = [want[r] for r in cfg_official["compress_ratios"][:L]]
    problems = []
    if list(config.layer_types) != want_types:
        problems.append(f"layer_types {config.layer_types} != {want_types}")
    nh = cfg_official.get("num_hash_layers", 0)
    want_mlp = ["hash_moe" if i < nh else "moe" for i in range(L)]
    if list(config.mlp_layer_types) != want_mlp:
        problems.append(f"mlp_layer_types {config.mlp_layer_types} != {want_mlp}")
    rp = config.rope_parameters
    comp = rp.get("compress", {}) if isinstance(rp, dict) else {}
    main = rp.get("main", {}) if isinstance(rp, dict) else {}
    rs = cfg_official.get("rope_scaling", {})
    if comp.get("rope_type") != "yarn" or float(comp.get("factor", 0)) != float(rs.get("factor")):
        problems.append(f"compress rope not yarn x{rs.get('factor')}: {comp}")
    if float(comp.get("rope_theta", 0)) != float(cfg_official["compress_rope_theta"]):
        problems.append(f"compress rope_theta {comp.get('rope_theta')}")
    if float(main.get("rope_theta", 0)) != float(cfg_official["rope_theta"]) or main.get("rope_type", "default") != "default":
        problems.append(f"main rope {main}")
    want_prf = cfg_official["qk_rope_head_dim"] / cfg_official["head_dim"]
    for k, v in (("main", main), ("compress", comp)):
        if abs(float(v.get("partial_rotary_factor", 1.0)) - want_prf) > 1e-12:
            problems.append(f"{k} partial_rotary_factor {v.get('partial_rotary_factor')}")
    for k in ("original_max_position_embeddings", "beta_fast", "beta_slow"):
        if k in rs and float(comp.get(k, -1)) != float(rs[k]):
            problems.append(f"compress {k} {comp.get(k)} != {rs[k]}")
    if float(comp.get("attention_factor", 1.0)) != 1.0:
        problems.append(f"attention_factor {comp.get('attention_factor')}")
    return problems


def _compare_to(model, m2, ids, dev, logits_ref, res, tag):
    m2 = m2.float().eval()
    try:
        m2.set_experts_implementation("eager")
    except Exception:  # noqa: BLE001
        pass
    m2 = m2.to(dev)
    sd1 = model.state_dict()
    sd2 = m2.state_dict()
    res[f"{tag}_param_dtypes"] = sorted({str(p.dtype) for p in m2.parameters()})
    res[f"{tag}_state_dict_keys_only_manual"] = sorted(set(sd1) - set(sd2))[:50]
    res[f"{tag}_state_dict_keys_only_loader"] = sorted(set(sd2) - set(sd1))[:50]
    res[f"{tag}_state_dict_mismatch"] = [
        k for k in sd1 if k in sd2 and (sd1[k].shape != sd2[k].shape or
                                        not torch.equal(sd1[k], sd2[k].to(sd1[k].dtype)))][:50]
    lg = run_prefill(m2, ids, dev)
    res[f"{tag}_logits_max_abs_diff"] = float(np.abs(lg - logits_ref).max())


def loader_check(ck, model, ids, dev, logits_ref, f32_copy, quantized):
    """Reload through transformers' own from_pretrained and compare with the manual
    mapping (state dict equality and prefill logits):
    f32_copy:  an F32 copy of the checkpoint in official names, no quantization_config;
    quantized: the official-layout FP8/FP4 directory itself, with
               FineGrainedFP8Config(dequantize=True) (transformers' own FP8/FP4 decoding)."""
    from transformers import AutoModelForCausalLM
    res = {}
    if f32_copy:
        with tempfile.TemporaryDirectory() as tmp:
            tensors = []
            for name in ck.logical_tensors():
                v = ck.dequant(name)
                if v.dtype == np.int64:
                    tensors.append((name, "I64", v.shape, v))
                else:
                    tensors.append((name, "F32", v.shape, v.astype(np.float32)))
            ds4ckpt.write_safetensors(os.path.join(tmp, "model.safetensors"), tensors, metadata={"format": "pt"})
            cfg = dict(ck.config)
            cfg.pop("quantization_config", None)
            cfg["torch_dtype"] = "float32"
            with open(os.path.join(tmp, "config.json"), "w") as f:
                json.dump(cfg, f)
            try:
                m2, info = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32, output_loading_info=True)
                res["f32_copy_loading_info"] = {k: sorted(map(str, v))[:50] for k, v in info.items()}
                _compare_to(model, m2, ids, dev, logits_ref, res, "f32_copy")
                del m2
            except Exception as e:  # noqa: BLE001
                traceback.print_exc()
                res["f32_copy_error"] = f"{type(e).__name__}: {e}"[:2000]
    if quantized:
        try:
            from transformers import FineGrainedFP8Config
            m3, info = AutoModelForCausalLM.from_pretrained(
                ck.dir, dtype=torch.float32, output_loading_info=True,
                quantization_config=FineGrainedFP8Config(dequantize=True))
            res["quantized_dir_dequantize_loading_info"] = {k: sorted(map(str, v))[:50] for k, v in info.items()}
            _compare_to(model, m3, ids, dev, logits_ref, res, "quantized_dir_dequantize")
            del m3
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            res["quantized_dir_dequantize_error"] = f"{type(e).__name__}: {e}"[:2000]
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--tokens", required=True, help="whitespace-separated token ids")
    ap.add_argument("--out", required=True)
    ap.add_argument("--simulate", action="store_true", help="also run with the official FP8/FP4/Hadamard steps")
    ap.add_argument("--sim-decode", action="store_true", help="with --simulate, also decode")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--top", type=int, default=0, help="also write top-N ids/logits per position")
    ap.add_argument("--no-full-logits", action="store_true")
    ap.add_argument("--no-decode", action="store_true")
    ap.add_argument("--check-loader", action="store_true",
                    help="reload an F32 copy (official names) with from_pretrained and compare")
    ap.add_argument("--try-quantized-loader", action="store_true",
                    help="reload the FP8/FP4 directory with FineGrainedFP8Config(dequantize=True) and compare")
    args = ap.parse_args()

    import transformers
    from transformers.models.deepseek_v4 import modeling_deepseek_v4 as mdv4

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_default_dtype(torch.float32)
    dev = torch.device(args.device)
    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()

    ck = ds4ckpt.Checkpoint(args.ckpt)
    cfg = ck.config
    with open(args.tokens) as f:
        ids = [int(x) for x in f.read().split()]
    assert all(0 <= i < cfg["vocab_size"] for i in ids)

    model, config = make_model(cfg, dev)
    problems = check_config(config, cfg)
    if problems:
        print("CONFIG PROBLEMS:", problems)
    sd = build_state_dict(ck)
    msd = model.state_dict()
    only_ck = sorted(set(sd) - set(msd))
    only_model = sorted(set(msd) - set(sd))
    bad_shape = [k for k in sd if k in msd and tuple(sd[k].shape) != tuple(msd[k].shape)]
    if only_ck or only_model or bad_shape:
        print("only in checkpoint:", only_ck[:20])
        print("only in model:", only_model[:20])
        print("shape mismatch:", [(k, tuple(sd[k].shape), tuple(msd[k].shape)) for k in bad_shape[:20]])
        raise SystemExit("name mapping does not match the transformers model")
    sd = {k: v.to(msd[k].dtype) if v.is_floating_point() else v.to(msd[k].dtype) for k, v in sd.items()}
    model.load_state_dict(sd, strict=True)
    assert not torch.equal(model.lm_head.weight, model.model.embed_tokens.weight), "head tied to embed?"
    print(f"model ready ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params) {time.time() - t0:.1f}s")

    cap = IndexerCapture(model, cfg["index_topk"])
    meta = {
        "tool": "tools/reference_logits.py",
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "numpy": np.__version__},
        "modeling_deepseek_v4_sha256": sha256_file(mdv4.__file__),
        "device": str(dev) + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else
                              f" ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"),
        "dtype": "float32",
        "checkpoint": os.path.abspath(args.ckpt),
        "config_official": cfg,
        "config_transformers": {k: v for k, v in config.to_dict().items()
                                if isinstance(v, (int, float, str, bool, list, dict, type(None)))},
        "config_problems": problems,
        "n_tokens": len(ids), "vocab_size": cfg["vocab_size"],
        "csa_layers": cap.layers, "index_topk": cfg["index_topk"],
        "files": {},
    }
    positions = list(range(len(ids)))

    def record(tag, logits, picks, margins, disagree):
        if not args.no_full_logits:
            write_f32(os.path.join(args.out, f"logits.{tag}.f32"), logits)
            meta["files"][f"logits.{tag}.f32"] = [len(ids), cfg["vocab_size"]]
        if args.top:
            write_top(args.out, tag, logits, args.top)
            meta["files"][f"top{args.top}.{tag}.i32"] = [len(ids), args.top]
            meta["files"][f"top{args.top}.{tag}.f32"] = [len(ids), args.top]
        if cap.layers:
            write_i32(os.path.join(args.out, f"topk.{tag}.i32"), picks)
            write_f32(os.path.join(args.out, f"topk_margin.{tag}.f32"), margins)
            meta["files"][f"topk.{tag}.i32"] = list(picks.shape)
            meta["files"][f"topk_margin.{tag}.f32"] = list(margins.shape)
            fin = margins[np.isfinite(margins)]
            meta[f"topk_{tag}"] = {
                "queries_with_active_topk": int(fin.size),
                "near_ties_margin_lt_1e-5": int((fin < 1e-5).sum()),
                "near_ties_margin_lt_1e-3": int((fin < 1e-3).sum()),
                "exact_ties": int((fin == 0).sum()),
                "min_margin": float(fin.min()) if fin.size else None,
                "picks_disagreeing_with_scores": int(disagree),
            }
        meta[f"logits_{tag}_finite"] = bool(np.isfinite(logits).all())
        meta[f"logits_{tag}_abs_max"] = float(np.abs(logits).max())

    # (a) one-shot prefill
    cap.reset()
    t1 = time.time()
    lp = run_prefill(model, ids, dev)
    picks_p, marg_p, dis_p = cap.collect(positions) if cap.layers else (None, None, 0)
    record("prefill", lp, picks_p, marg_p, dis_p)
    meta["time_prefill_s"] = time.time() - t1
    print(f"prefill done {meta['time_prefill_s']:.1f}s")
    try:  # activation scale per layer (rms over the hc streams), to show the random model is sane
        with torch.no_grad():
            hs = model.model(input_ids=torch.tensor([ids], device=dev), use_cache=False,
                             output_hidden_states=True).hidden_states
        meta["hidden_rms_per_layer"] = [float(h.float().pow(2).mean().sqrt()) for h in hs]
        meta["hidden_absmax_per_layer"] = [float(h.float().abs().max()) for h in hs]
    except Exception as e:  # noqa: BLE001
        meta["hidden_rms_per_layer"] = f"unavailable: {e}"

    # (b) token-by-token decode
    if not args.no_decode:
        cap.reset()
        t1 = time.time()
        ld = run_decode(model, ids, dev)
        picks_d, marg_d, dis_d = cap.collect(positions) if cap.layers else (None, None, 0)
        record("decode", ld, picks_d, marg_d, dis_d)
        meta["time_decode_s"] = time.time() - t1
        meta["prefill_vs_decode"] = diff_stats(ld, lp)
        d = np.abs(ld.astype(np.float64) - lp).max(axis=1)
        meta["prefill_vs_decode"]["worst_positions"] = [int(i) for i in np.argsort(-d)[:5]]
        if cap.layers:
            meta["prefill_vs_decode"]["topk_set_differences"] = int((picks_d != picks_p).any(axis=2).sum())
        print(f"decode done {meta['time_decode_s']:.1f}s  max|prefill-decode| = {meta['prefill_vs_decode']['max_abs']:.3g}")

    # (c) simulated official low-precision steps
    if args.simulate:
        x = torch.randn(4096, generator=torch.Generator().manual_seed(1)) * 3
        meta["sim_selfcheck_e4m3_vs_torch_cast"] = bool(torch.equal(
            round_e4m3(x.clamp(-448, 448)), x.clamp(-448, 448).to(torch.float8_e4m3fn).float()))
        sim = Simulation(model, cfg)
        meta["simulate"] = {"sites": sim.sites, "definition": "DS4-ARCHITECTURE 4.6; see docs/FIXTURES.md"}
        cap.reset()
        t1 = time.time()
        ls = run_prefill(model, ids, dev)
        picks_s, marg_s, dis_s = cap.collect(positions) if cap.layers else (None, None, 0)
        record("sim.prefill", ls, picks_s, marg_s, dis_s)
        meta["sim_prefill_vs_prefill"] = diff_stats(ls, lp)
        if cap.layers:
            meta["sim_prefill_vs_prefill"]["topk_set_differences"] = int((picks_s != picks_p).any(axis=2).sum())
        if args.sim_decode and not args.no_decode:
            cap.reset()
            lsd = run_decode(model, ids, dev)
            picks_sd, marg_sd, dis_sd = cap.collect(positions) if cap.layers else (None, None, 0)
            record("sim.decode", lsd, picks_sd, marg_sd, dis_sd)
            meta["sim_prefill_vs_sim_decode"] = diff_stats(lsd, ls)
            if cap.layers:
                meta["sim_prefill_vs_sim_decode"]["topk_set_differences"] = int((picks_sd != picks_s).any(axis=2).sum())
        meta["time_sim_s"] = time.time() - t1
        sim.remove()
        print(f"simulate done: max|sim-exact| = {meta['sim_prefill_vs_prefill']['max_abs']:.3g}")

    cap.remove()
    if args.check_loader or args.try_quantized_loader:
        t1 = time.time()
        try:
            meta["loader_check"] = loader_check(ck, model, ids, dev, lp, args.check_loader, args.try_quantized_loader)
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            meta["loader_check"] = {"error": f"{type(e).__name__}: {e}"[:2000]}
        meta["time_loader_check_s"] = time.time() - t1
        print("loader check:", json.dumps(meta["loader_check"])[:1500])

    meta["time_total_s"] = time.time() - t0
    with open(os.path.join(args.out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1, default=str)
        f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

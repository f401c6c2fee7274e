#!/usr/bin/env python3
"""Compare our logits (and indexer choices) with the transformers reference fixtures.

    check_logits.py full  --ours OUT.f32 --ref REF.f32 --n N --max-abs A [--max-mean M] [--argmax-min F]
    check_logits.py top20 --ours OUT.f32 --ref-ids I.i32 --ref-vals V.f32 --n N --max-abs A [--argmax-min F]
    check_logits.py topk  --ours T.i32 --ref T.i32 --margins M.f32 --layers L --n N --k K [--min-margin E]

full:  every logit of [n, vocab]; max |Δ| <= A, mean |Δ| <= M, and the share of positions
       whose argmax agrees >= F (1.0 = every position).
top20: the reference keeps its 20 best (id, logit) per position; our logits at those ids
       must be within A, and our argmax must be the reference's top-1 for a share >= F.
topk:  indexer selections [layers, n, k] must be equal as sets, except for queries whose
       reference margin (k-th minus (k+1)-th score) is below E (near-ties, where float
       rounding legitimately decides); with --max-differ-frac, that share of sets may
       differ anyway (FP4-simulated scores are discontinuous: see docs/FORWARD.md).
Prints one summary line; exits 1 on failure.
"""
import argparse
import sys

import numpy as np


def load(path, dtype, shape=None):
    a = np.fromfile(path, dtype=dtype)
    return a.reshape(shape) if shape else a


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["full", "top20", "topk"])
    ap.add_argument("--ours", required=True)
    ap.add_argument("--ref")
    ap.add_argument("--ref-ids")
    ap.add_argument("--ref-vals")
    ap.add_argument("--margins")
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--layers", type=int, default=0)
    ap.add_argument("--k", type=int, default=0)
    ap.add_argument("--max-abs", type=float, default=1e-3)
    ap.add_argument("--max-mean", type=float, default=None)
    ap.add_argument("--argmax-min", type=float, default=1.0)
    ap.add_argument("--min-margin", type=float, default=0.0)
    ap.add_argument("--max-differ-frac", type=float, default=0.0,
                    help="topk: share of sets allowed to differ even at clear margins")
    ap.add_argument("--label", default="")
    a = ap.parse_args()
    fails = []
    if a.mode == "full":
        ours = load(a.ours, "<f4")
        ref = load(a.ref, "<f4")
        if ours.size != ref.size or ours.size % a.n:
            print(f"FAIL {a.label}: size {ours.size} vs reference {ref.size}")
            return 1
        ours, ref = ours.reshape(a.n, -1), ref.reshape(a.n, -1)
        if not np.isfinite(ours).all():
            fails.append("non-finite logits")
        d = np.abs(ours.astype(np.float64) - ref)
        agree = float((ours.argmax(1) == ref.argmax(1)).mean())
        msg = f"max|d| {d.max():.3g}, mean|d| {d.mean():.3g}, argmax agree {agree:.4f}"
        if d.max() > a.max_abs:
            worst = int(d.max(1).argmax())
            fails.append(f"max |d| {d.max():.4g} > {a.max_abs} (position {worst})")
        if a.max_mean is not None and d.mean() > a.max_mean:
            fails.append(f"mean |d| {d.mean():.4g} > {a.max_mean}")
        if agree < a.argmax_min:
            fails.append(f"argmax agrees at {agree:.4f} of positions < {a.argmax_min}")
    elif a.mode == "top20":
        ours = load(a.ours, "<f4")
        ours = ours.reshape(a.n, -1)
        ids = load(a.ref_ids, "<i4", (a.n, -1))
        vals = load(a.ref_vals, "<f4", (a.n, -1))
        got = np.take_along_axis(ours, ids, axis=1)
        d = np.abs(got.astype(np.float64) - vals)
        agree = float((ours.argmax(1) == ids[:, 0]).mean())
        overlap = np.mean([len(set(np.argsort(-ours[t])[:20]) & set(ids[t])) / 20 for t in range(a.n)])
        msg = f"top-20 max|d| {d.max():.3g}, mean|d| {d.mean():.3g}, top-1 agree {agree:.4f}, top-20 overlap {overlap:.3f}"
        if not np.isfinite(ours).all():
            fails.append("non-finite logits")
        if d.max() > a.max_abs:
            fails.append(f"top-20 max |d| {d.max():.4g} > {a.max_abs}")
        if a.max_mean is not None and d.mean() > a.max_mean:
            fails.append(f"top-20 mean |d| {d.mean():.4g} > {a.max_mean}")
        if agree < a.argmax_min:
            fails.append(f"top-1 agrees at {agree:.4f} < {a.argmax_min}")
    else:
        shape = (a.layers, a.n, a.k)
        ours = np.sort(load(a.ours, "<i4", shape), axis=2)
        ref = np.sort(load(a.ref, "<i4", shape), axis=2)
        margin = load(a.margins, "<f4", (a.layers, a.n))
        differ = (ours != ref).any(axis=2)
        fragile = margin < a.min_margin
        bad = differ & ~fragile
        msg = (f"indexer sets: {int(differ.sum())} of {a.layers * a.n} differ, "
               f"{int((differ & fragile).sum())} of them near-ties (margin < {a.min_margin})")
        if bad.sum() > a.max_differ_frac * bad.size:
            l, t = np.argwhere(bad)[0]
            fails.append(f"{int(bad.sum())} indexer sets differ at clear margins (first: layer slot {l}, "
                         f"position {t}, margin {margin[l, t]:.3g})")
    for f in fails:
        print(f"FAIL {a.label}: {f}")
    print(f"{a.label}: {msg}")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())

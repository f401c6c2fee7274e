#!/usr/bin/env python3
"""check_dequant_gguf.py - compare ds4's block decoding with the `gguf`
Python package (an independent numpy implementation of ggml's formats).

Reads the directory written by build/tests/tools/quant_dump (see manifest.txt
there) and checks, bit for bit:
  * dequant TYPE SOURCE N: gguf.quants.dequantize(blocks) against our
    reference (.ref.f32) and SIMD (.simd.f32) dequantizations;
  * quant TYPE N: gguf.quants.quantize(src.f32) against our quantizer's bytes
    (the types gguf quantizes itself: Q8_0, BF16, F16).

NaN handling: positions of NaNs must agree; their bit patterns must agree too
(both sides keep the payload of an f16/bf16 NaN when widening), and a payload
difference is reported as a failure of its own so it cannot hide among
value differences.

Exit status 0 when everything matches, 1 otherwise.
Usage: check_dequant_gguf.py [-q] DIR      (-q: print failures and the summary only)
"""
import sys
import warnings
from pathlib import Path

import numpy as np

try:
    from gguf import GGMLQuantizationType as QT
    from gguf.quants import dequantize, quantize
except ImportError as e:  # pragma: no cover - environment problem
    print(f"check_dequant_gguf: the gguf package is required ({e}); see tests/requirements.txt")
    sys.exit(1)


def compare_floats(what, got, want):
    """Bit-exact float32 comparison with NaN-aware reporting. Returns error count."""
    got = np.asarray(got, dtype=np.float32).ravel()
    want = np.asarray(want, dtype=np.float32).ravel()
    if got.shape != want.shape:
        print(f"FAIL {what}: shape {got.shape} vs {want.shape}")
        return 1
    gb, wb = got.view(np.uint32), want.view(np.uint32)
    gnan, wnan = np.isnan(got), np.isnan(want)
    errors = 0
    if not np.array_equal(gnan, wnan):
        idx = np.flatnonzero(gnan != wnan)
        print(f"FAIL {what}: NaN positions differ at {len(idx)} places, first {idx[0]}: "
              f"{got[idx[0]]!r} vs {want[idx[0]]!r}")
        errors += 1
    both = ~gnan & ~wnan
    if not np.array_equal(gb[both], wb[both]):  # bit equality of every non-NaN value
        diff = np.flatnonzero(both & (gb != wb))
        i = diff[0]
        print(f"FAIL {what}: {len(diff)} values differ, first at {i}: {got[i]!r} (0x{gb[i]:08x}) "
              f"vs gguf {want[i]!r} (0x{wb[i]:08x})")
        errors += 1
    nan_payload = np.flatnonzero(gnan & wnan & (gb != wb))
    if len(nan_payload):
        i = nan_payload[0]
        print(f"FAIL {what}: {len(nan_payload)} NaN payloads differ, first at {i}: 0x{gb[i]:08x} vs 0x{wb[i]:08x}")
        errors += 1
    return errors


def main():
    args = sys.argv[1:]
    quiet = "-q" in args
    args = [a for a in args if a != "-q"]
    if len(args) != 1:
        print(__doc__)
        return 2
    d = Path(args[0])
    lines = (d / "manifest.txt").read_text().split("\n")
    failures = checks = 0
    for line in lines:
        if not line.strip():
            continue
        parts = line.split()
        if parts[0] == "dequant":
            _, tname, source, n = parts
            n = int(n)
            qtype = QT[tname]
            raw = np.fromfile(d / f"{tname}.{source}.bin", dtype=np.uint8)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                want = dequantize(raw, qtype).astype(np.float32, copy=False).ravel()
            if want.size != n:
                print(f"FAIL {tname}.{source}: gguf decoded {want.size} values, expected {n}")
                failures += 1
                continue
            for impl in ("ref", "simd"):
                got = np.fromfile(d / f"{tname}.{source}.{impl}.f32", dtype=np.float32)
                e = compare_floats(f"{tname}.{source}.{impl}", got, want)
                checks += 1
                failures += e
                if not e and not quiet:
                    print(f"ok   dequantize {tname:8s} {source:6s} {impl:4s} {n} values"
                          f" ({int(np.isnan(want).sum())} NaN)")
        elif parts[0] == "quant":
            _, tname, n = parts
            src = np.fromfile(d / "src.f32", dtype=np.float32)
            ours = np.fromfile(d / f"{tname}.fromsrc.bin", dtype=np.uint8)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                theirs = np.ascontiguousarray(quantize(src, QT[tname])).view(np.uint8).ravel()
            checks += 1
            if ours.shape != theirs.shape or not np.array_equal(ours, theirs):
                bad = np.flatnonzero(ours != theirs) if ours.shape == theirs.shape else [-1]
                print(f"FAIL quantize {tname}: bytes differ from gguf.quants.quantize "
                      f"({len(bad)} bytes, first at {bad[0]})")
                failures += 1
            elif not quiet:
                print(f"ok   quantize   {tname:8s} {int(n)} values, {ours.size} bytes identical")
        else:
            print(f"FAIL manifest: unknown line {line!r}")
            failures += 1
    try:
        from importlib.metadata import version
        gguf_version = version("gguf")
    except Exception:  # pragma: no cover
        gguf_version = "?"
    print(f"check_dequant_gguf: {checks} bit-exact comparisons against gguf {gguf_version}, {failures} failures")
    return 1 if failures or not checks else 0


if __name__ == "__main__":
    sys.exit(main())

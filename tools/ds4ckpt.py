"""ds4ckpt: write and read DeepSeek-V4-Flash checkpoints in the official
Hugging Face layout (deepseek-ai/DeepSeek-V4-Flash), numpy only.

Formats (see docs/FIXTURES.md and docs DS4-ARCHITECTURE.md section 2.5):

* safetensors: u64 little-endian header length, JSON header (padded with
  spaces to a multiple of 8 bytes), raw little-endian tensor bytes.
  dtypes used: F32, BF16, F8_E4M3, F8_E8M0, I8, I64.
* FP8 dense weight `W [out, in]`: F8_E4M3 codes (e4m3fn: bias 7, 3 mantissa
  bits, subnormals m*2^-9, no inf, 0x7F/0xFF = NaN) plus `name.scale`
  F8_E8M0 [ceil(out/128), ceil(in/128)]; byte e means 2^(e-127);
  W = e4m3(code) * scale[block].
* FP4 routed-expert weight `W [out, in]`: I8 [out, in/2], two E2M1 codes per
  byte, element 2j in the low nibble, 2j+1 in the high nibble; code bit 3 =
  sign, bits 0..2 index {0, .5, 1, 1.5, 2, 3, 4, 6}; `name.scale` F8_E8M0
  [out, in/32]; W = e2m1(code) * scale[row, col/32].

Everything here is deterministic bit-level integer/IEEE arithmetic (no
transcendental functions), so the encoders give identical bytes on every
machine and numpy version.
"""

import json
import os
import struct

import numpy as np

# ---------------------------------------------------------------------------
# dtypes

ST_ITEMSIZE = {"F32": 4, "BF16": 2, "F16": 2, "F8_E4M3": 1, "F8_E8M0": 1,
               "I8": 1, "U8": 1, "I32": 4, "I64": 8, "F64": 8}

FP4_VALUES = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
                       -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0],
                      dtype=np.float32)


def _e4m3_table():
    t = np.zeros(256, dtype=np.float32)
    for c in range(256):
        s = -1.0 if c & 0x80 else 1.0
        e = (c >> 3) & 0xF
        m = c & 7
        if (c & 0x7F) == 0x7F:
            v = np.nan
        elif e == 0:
            v = m * 2.0 ** -9
        else:
            v = (1.0 + m / 8.0) * 2.0 ** (e - 7)
        t[c] = s * v
    return t


E4M3_VALUES = _e4m3_table()


def e8m0_to_f32(b):
    """F8_E8M0 bytes -> float32 powers of two (byte 255 = NaN)."""
    b = np.asarray(b, dtype=np.uint8).astype(np.int32)
    out = np.ldexp(np.float32(1.0), b - 127).astype(np.float32)
    out[b == 255] = np.nan
    return out


def bf16_to_f32(u16):
    return (np.asarray(u16, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(x):
    """float32 -> bf16 bit patterns (uint16), round to nearest even."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    b = x.view(np.uint32).astype(np.uint64)
    b = (b + 0x7FFF + ((b >> 16) & 1)) >> 16
    return b.astype(np.uint16)


def _pow2_ceil_exponent(x):
    """k = ceil(log2(x)) for float32 x > 0, computed exactly from the bits."""
    m, e = np.frexp(x.astype(np.float32))          # x = m * 2^e, m in [0.5, 1)
    return np.where(m == 0.5, e - 1, e).astype(np.int32)


def round_e4m3(v):
    """Round |v| <= 448 (float32) to E4M3 codes (uint8), RNE / ties to even code."""
    v = np.ascontiguousarray(v, dtype=np.float32)
    sign = np.signbit(v)
    a = np.abs(v)
    bits = a.view(np.uint32).astype(np.uint64)
    # normal path: keep 3 mantissa bits, round to nearest even
    rb = ((bits + 0x7FFFF + ((bits >> 20) & 1)) >> 20) << 20
    rb = rb.astype(np.uint32)
    exp32 = (rb >> 23).astype(np.int32) - 127
    code_n = ((exp32 + 7) << 3) | ((rb >> 20) & 7).astype(np.int32)
    # subnormal path (|v| < 2^-6): multiples of 2^-9
    k = np.rint(a * np.float32(512.0)).astype(np.int32)   # rint = ties to even
    code = np.where(a < np.float32(2.0 ** -6), k, code_n)
    if np.any(code > 126) or np.any(code < 0):
        raise ValueError("e4m3 overflow")
    code = code.astype(np.uint8)
    code = np.where(sign & (code != 0), code | 0x80, code).astype(np.uint8)
    return code


FP4_MID = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0], dtype=np.float32)


def round_e2m1(v):
    """Round |v| <= 6 (float32) to E2M1 codes 0..15, nearest, ties to even index."""
    v = np.asarray(v, dtype=np.float32)
    a = np.abs(v)
    idx = np.searchsorted(FP4_MID, a, side="left")       # a == mid[i] -> i
    tie = (idx < 7) & (a == FP4_MID[np.minimum(idx, 6)])
    idx = np.where(tie & (idx % 2 == 1), idx + 1, idx)
    code = idx.astype(np.uint8)
    code = np.where(np.signbit(v) & (code != 0), code | 8, code).astype(np.uint8)
    return code


# ---------------------------------------------------------------------------
# weight encoders / decoders

def quant_fp8_block(w, block=128):
    """w float32 [out, in] -> (e4m3 codes uint8 [out, in], e8m0 scale uint8 [ceil(out/b), ceil(in/b)]).
    scale = 2^ceil(log2(amax/448)) per block (ue8m0)."""
    w = np.ascontiguousarray(w, dtype=np.float32)
    o, i = w.shape
    bo, bi = -(-o // block), -(-i // block)
    pad = np.zeros((bo * block, bi * block), dtype=np.float32)
    pad[:o, :i] = w
    blk = pad.reshape(bo, block, bi, block)
    amax = np.abs(blk).max(axis=(1, 3))
    amax = np.maximum(amax, np.float32(1e-30))
    k = _pow2_ceil_exponent(amax / np.float32(448.0))
    scaled = blk * np.ldexp(np.float32(1.0), -k)[:, None, :, None].astype(np.float32)
    codes = round_e4m3(scaled).reshape(bo * block, bi * block)[:o, :i]
    return np.ascontiguousarray(codes), (k + 127).astype(np.uint8)


def dequant_fp8_block(codes, scale, block=128):
    codes = np.asarray(codes, dtype=np.uint8)
    o, i = codes.shape
    s = e8m0_to_f32(scale)
    s = np.repeat(np.repeat(s, block, axis=0), block, axis=1)[:o, :i]
    return (E4M3_VALUES[codes] * s).astype(np.float32)


def quant_fp4(w, block=32):
    """w float32 [out, in] -> (packed int8 [out, in/2], e8m0 scale uint8 [out, in/32])."""
    w = np.ascontiguousarray(w, dtype=np.float32)
    o, i = w.shape
    assert i % block == 0 and i % 2 == 0
    blk = w.reshape(o, i // block, block)
    amax = np.maximum(np.abs(blk).max(axis=2), np.float32(1e-30))
    k = _pow2_ceil_exponent(amax / np.float32(6.0))
    scaled = blk * np.ldexp(np.float32(1.0), -k)[:, :, None].astype(np.float32)
    codes = round_e2m1(scaled).reshape(o, i)
    packed = (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8)
    return packed.view(np.int8), (k + 127).astype(np.uint8)


def dequant_fp4(packed, scale, block=32):
    p = np.asarray(packed).view(np.uint8)
    o, h = p.shape
    codes = np.empty((o, 2 * h), dtype=np.uint8)
    codes[:, 0::2] = p & 0xF
    codes[:, 1::2] = p >> 4
    s = np.repeat(e8m0_to_f32(scale), block, axis=1)
    return (FP4_VALUES[codes] * s).astype(np.float32)


# ---------------------------------------------------------------------------
# safetensors I/O

def write_safetensors(path, tensors, metadata=None):
    """tensors: list of (name, st_dtype, shape, numpy array) in file order."""
    header = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    off = 0
    blobs = []
    for name, dt, shape, arr in tensors:
        raw = np.ascontiguousarray(arr).tobytes()
        n = ST_ITEMSIZE[dt]
        for d in shape:
            n *= d
        if len(raw) != n:
            raise ValueError(f"{name}: {len(raw)} bytes, expected {n}")
        header[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
        blobs.append(raw)
    hj = json.dumps(header, separators=(",", ":")).encode()
    hj += b" " * ((8 - len(hj) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for b in blobs:
            f.write(b)
    return off


def read_safetensors_header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        h = json.loads(f.read(n))
    h.pop("__metadata__", None)
    return h, 8 + n


_NP = {"F32": np.float32, "BF16": np.uint16, "F16": np.float16, "F8_E4M3": np.uint8,
       "F8_E8M0": np.uint8, "I8": np.int8, "U8": np.uint8, "I32": np.int32,
       "I64": np.int64, "F64": np.float64}


class Checkpoint:
    """Read access to an official-layout checkpoint directory."""

    def __init__(self, d):
        self.dir = d
        with open(os.path.join(d, "config.json")) as f:
            self.config = json.load(f)
        idx = os.path.join(d, "model.safetensors.index.json")
        if os.path.exists(idx):
            with open(idx) as f:
                wm = json.load(f)["weight_map"]
        else:
            wm = {k: "model.safetensors" for k in
                  read_safetensors_header(os.path.join(d, "model.safetensors"))[0]}
        self.weight_map = wm
        self.meta = {}
        for shard in sorted(set(wm.values())):
            h, base = read_safetensors_header(os.path.join(d, shard))
            for k, v in h.items():
                self.meta[k] = (shard, base, v["dtype"], tuple(v["shape"]), v["data_offsets"])
        missing = set(wm) - set(self.meta)
        if missing:
            raise ValueError(f"index lists tensors absent from shards: {sorted(missing)[:5]}")

    def names(self):
        return sorted(self.meta)

    def dtype(self, name):
        return self.meta[name][2]

    def shape(self, name):
        return self.meta[name][3]

    def raw(self, name):
        shard, base, dt, shape, (a, b) = self.meta[name]
        with open(os.path.join(self.dir, shard), "rb") as f:
            f.seek(base + a)
            buf = f.read(b - a)
        return np.frombuffer(buf, dtype=_NP[dt]).reshape(shape)

    def is_scale(self, name):
        return name.endswith(".scale") and name[:-6] + ".weight" in self.meta

    def dequant(self, name):
        """float32 value of a tensor (FP8/FP4 weights are combined with their .scale);
        integer tensors are returned unchanged."""
        dt = self.dtype(name)
        r = self.raw(name)
        if dt == "F8_E4M3":
            return dequant_fp8_block(r, self.raw(name[:-7] + ".scale"))
        if dt == "I8" and name.endswith(".weight"):
            return dequant_fp4(r, self.raw(name[:-7] + ".scale"))
        if dt == "BF16":
            return bf16_to_f32(r)
        if dt == "F8_E8M0":
            return e8m0_to_f32(r)
        if dt in ("F32", "F16", "F64"):
            return r.astype(np.float32)
        return r

    def logical_tensors(self):
        """Names of the model's tensors (scales folded into their weights)."""
        return [n for n in self.names() if not self.is_scale(n)]


# ---------------------------------------------------------------------------
# self-test: python3 tools/ds4ckpt.py

def _brute_nearest(vals, mags):
    """Index of the nearest magnitude, ties to the even index (reference for the encoders)."""
    a = np.abs(vals).astype(np.float64)
    d = np.abs(a[:, None] - mags[None, :].astype(np.float64))
    best = d.min(axis=1, keepdims=True)
    out = np.empty(len(vals), dtype=np.int64)
    for r, row in enumerate(d == best):
        c = np.flatnonzero(row)
        out[r] = c[0] if len(c) == 1 else [i for i in c if i % 2 == 0][0]
    return out


def selftest():
    rng = np.random.Generator(np.random.PCG64(0))
    mags = E4M3_VALUES[:127]
    mids = ((mags[1:].astype(np.float64) + mags[:-1]) / 2).astype(np.float32)
    v = np.concatenate([mags, mids, np.nextafter(mids, np.float32(0)), np.nextafter(mids, np.float32(500)),
                        rng.uniform(0, 448, 5000).astype(np.float32),
                        (2.0 ** rng.uniform(-12, 8.8, 5000)).astype(np.float32)])
    v = v[v <= 448]
    want = _brute_nearest(v, mags)
    assert np.array_equal(round_e4m3(v), want), "e4m3 rounding"
    neg = round_e4m3(-v)
    assert np.array_equal(neg, np.where(want == 0, 0, want | 0x80)), "e4m3 sign"
    m4 = FP4_VALUES[:8]
    v4 = np.concatenate([m4, FP4_MID, rng.uniform(0, 6, 5000).astype(np.float32)])
    assert np.array_equal(round_e2m1(v4), _brute_nearest(v4, m4)), "e2m1 rounding"
    w = (rng.standard_normal((256, 384)) * 0.05).astype(np.float32)
    c, s = quant_fp8_block(w)
    d = dequant_fp8_block(c, s)
    assert s.shape == (2, 3) and np.abs(d - w).max() <= np.abs(w).max() * 2 ** -4
    p, s4 = quant_fp4(w)
    d4 = dequant_fp4(p, s4)
    assert p.shape == (256, 192) and s4.shape == (256, 12)
    assert np.array_equal(dequant_fp4(*quant_fp4(d4)), d4), "fp4 values not idempotent"
    assert np.array_equal(dequant_fp8_block(*quant_fp8_block(d)), d), "fp8 values not idempotent"
    x = rng.standard_normal(1000).astype(np.float32)
    assert np.array_equal(bf16_to_f32(f32_to_bf16(bf16_to_f32(f32_to_bf16(x)))), bf16_to_f32(f32_to_bf16(x)))
    print("ds4ckpt selftest ok")


if __name__ == "__main__":
    selftest()

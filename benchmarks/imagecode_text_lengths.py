"""How many real ImageCoDe descriptions CLIP's 77-token text tower cuts (no model weights needed).

CLIP's tokenizer is a byte-level BPE whose merges file (``bpe_simple_vocab_16e6.txt.gz``) ships inside PyPI
packages: ``open_clip_torch`` (``open_clip/bpe_simple_vocab_16e6.txt.gz``; 3.3.0 is used here) and ``openai-clip``
1.0.1 carry byte-identical copies (sha256 below). The script fetches the open_clip wheel with ``pip download
--no-deps`` into a cache folder (nothing is installed), or takes the file (or a wheel holding it) from ``--bpe``.

From that file it writes ``vocab.json`` and ``merges.txt`` the way CLIP's reference tokenizer
(openai/CLIP ``clip/simple_tokenizer.py``) defines its vocabulary: the 256 byte symbols of the byte-to-unicode
table, the same 256 with ``</w>`` appended, one entry per merge for the first 48,894 merges (lines 1 to 48,894
after the version line; ``merges[1:49152-256-2+1]``), then ``<|startoftext|>`` and ``<|endoftext|>``: 49,408
entries, ids 49406 and 49407 for the two special tokens. A transformers ``CLIPTokenizer`` is loaded from those two
files and checked against token ids published elsewhere before anything is counted:

* openai/CLIP ``notebooks/Interacting_with_CLIP.ipynb``: ``clip.tokenize("Hello World!")`` starts
  ``49406, 3306, 1002, 256, 49407`` (and the notebook prints "Vocab size: 49408", "Context length: 77");
* transformers.js ``tests/models/clip/tokenization.js`` (expected ids of ``Xenova/clip-vit-base-patch16``, the
  Hugging Face conversion of CLIP ViT-B/16's tokenizer) for the test strings of ``tests/models/test_strings.js``.

Then, per split, it counts the descriptions longer than 77 tokens counting the start and end tokens (what
``clip.tokenize(..., truncate=True)`` and the harness's ``HFDualEncoder.count_truncated`` cut) and gives length
percentiles. Texts are stripped first, as the harness does (``texts_of``). Every description is also recounted by
``DefinitionBPE``, the encoding written out here from the reference tokenizer's definition without the tokenizers
library; the JSON says on how many lengths the two differ.

Normalisation: the reference tokenizer runs ``ftfy.fix_text`` and ``html.unescape`` (twice) before lowercasing;
the transformers tokenizer does NFC, whitespace folding and lowercasing only. The script reports how many
descriptions these could differ on (any non-ASCII character or HTML entity) and recounts them with curly quotes
made straight (what ``ftfy.fix_text`` does to them by default) and entities unescaped.

SigLIP's 64-token limit is not counted: its tokenizer is a SentencePiece model (big_vision's ``c4_en``,
``gs://t5-data/vocabs/cc_en.32000/sentencepiece.model``) that open_clip downloads from Google Storage at run time
rather than shipping it, and no PyPI package known here ships it.

    OMP_NUM_THREADS=1 python benchmarks/imagecode_text_lengths.py [--bpe FILE] [--cache DIR] [--data DIR]
Writes benchmarks/results/imagecode_text_lengths.json (its "markdown" key holds the README table).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import html
import json
import platform
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

from _common import DATA, RESULTS

from l2v.fileio import write_json_atomic
from l2v.imagecode.data import load_split
from l2v.imagecode.evaluate import texts_of
from l2v.registry import cache_dir

PACKAGE, VERSION = "open_clip_torch", "3.3.0"
MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
# the same bytes in open_clip_torch 3.3.0 (wheel) and openai-clip 1.0.1 (sdist, clip/bpe_simple_vocab_16e6.txt.gz)
BPE_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
MERGES_USED = 49152 - 256 - 2  # 48,894: the reference keeps lines 1..48894 after the version line
VOCAB_SIZE = 49408
CLIP_LIMIT = 77
SPLITS = ("train", "valid", "test")
PERCENTILES = (50, 90, 95, 99)

# published ids: (text, ids with start and end tokens, where)
NOTEBOOK = "openai/CLIP notebooks/Interacting_with_CLIP.ipynb, clip.tokenize output"
TJS = "transformers.js tests/models/clip/tokenization.js, Xenova/clip-vit-base-patch16"
PUBLISHED = [
    ("Hello World!", [49406, 3306, 1002, 256, 49407], NOTEBOOK),
    ("How are you doing?", [49406, 829, 631, 592, 1960, 286, 49407], TJS),
    ("You should've done this", [49406, 592, 1535, 1200, 1700, 589, 49407], TJS),
    ("0123456789 0 1 2 3 4 5 6 7 8 9 10 100 1000",
     [49406, 271, 272, 273, 274, 275, 276, 277, 278, 279, 280, 271, 272, 273, 274, 275, 276, 277, 278, 279, 280, 272, 271,
      272, 271, 271, 272, 271, 271, 271, 49407], TJS),
    ("The company was founded in 2016.", [49406, 518, 2634, 739, 12240, 530, 273, 271, 272, 277, 269, 49407], TJS),
    ("A\n'll !!to?'d''d of, can't.", [49406, 320, 1342, 748, 531, 13610, 323, 8445, 323, 539, 267, 753, 713, 269, 49407], TJS),
    ("def main():\n\tpass", [49406, 11649, 2623, 7, 4143, 3511, 49407], TJS),
    ("let a = obj.toString();\ntoString();",
     [49406, 1094, 320, 284, 1411, 329, 269, 580, 9696, 7, 19686, 580, 9696, 7, 19686, 49407], TJS),
    ("This\n\nis\na\ntest.", [49406, 589, 533, 320, 1628, 269, 49407], TJS),
    ("UNwant\u00e9d,running", [49406, 569, 18356, 3459, 323, 267, 2761, 49407], TJS),
    ("   leading space", [49406, 3833, 2138, 49407], TJS),
    ("trailing space   ", [49406, 37427, 2138, 49407], TJS),
    ("Hi  Hello", [49406, 1883, 3306, 49407], TJS),
    ("test $1 R2 #3 \u20ac4 \u00a35 \u00a56 \u20a37 \u20b98 \u20b19 test",
     [49406, 1628, 259, 272, 337, 273, 258, 274, 6309, 275, 1950, 276, 20199, 277, 5227, 352, 278, 21777, 279, 5227, 365,
      280, 1628, 49407], TJS),
    ("I bought an apple for $1.00 at the store.",
     [49406, 328, 4142, 550, 3055, 556, 259, 272, 269, 271, 271, 536, 518, 2183, 269, 49407], TJS),
    ("you\u2026  ", [49406, 592, 959, 49407], TJS),
    ("weird \uff5e edge \uff5e case", [49406, 5613, 171, 121, 508, 5461, 171, 121, 508, 2068, 49407], TJS),
    ("\u751f\u6d3b\u7684\u771f\u8c1b\u662f",
     [49406, 33375, 162, 112, 119, 163, 248, 226, 41570, 164, 108, 249, 42891, 363, 49407], TJS),
]
CURLY = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'})


# ---------------------------------------------------------------------- the merges file
def fetch_bpe(cache: Path) -> tuple[bytes, str]:
    """The gzipped merges file from the open_clip_torch wheel, downloaded (not installed) into ``cache``."""
    wheel = cache / f"{PACKAGE}-{VERSION}-py3-none-any.whl"
    if not wheel.exists():
        cache.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
                   f"{PACKAGE}=={VERSION}", "-d", str(cache)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0 or not wheel.exists():
            sys.exit(f"could not download {PACKAGE}=={VERSION} ({' '.join(command)}):\n{done.stderr[-2000:]}\n"
                     "pass the merges file (or a wheel holding it) with --bpe")
    return read_bpe(wheel), f"{PACKAGE}=={VERSION} ({wheel.name}, {MEMBER})"


def read_bpe(path: Path) -> bytes:
    """The gzipped merges file itself, or the member of a wheel/zip that holds it."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("bpe_simple_vocab_16e6.txt.gz")]
            if not names:
                sys.exit(f"{path} holds no bpe_simple_vocab_16e6.txt.gz")
            return archive.read(names[0])
    return path.read_bytes()


# ---------------------------------------------------------------------- the vocabulary
def byte_table() -> dict[int, str]:
    """Each byte's printable stand-in, in the reference table's order: bytes that are printable in Latin-1
    ('!'..'~', '\u00a1'..'\u00ac', '\u00ae'..'\u00ff') stand for themselves and come first; each other byte, in
    increasing order, gets the next code point from 256 on."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    others = [b for b in range(256) if b not in set(printable)]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + k) for k, b in enumerate(others)}}


def byte_symbols() -> list[str]:
    return list(byte_table().values())


def clip_vocabulary(bpe: bytes) -> tuple[dict[str, int], list[str]]:
    lines = gzip.decompress(bpe).decode("utf-8").split("\n")
    merges = lines[1:MERGES_USED + 1]  # line 0 is the version line
    if len(merges) != MERGES_USED or any(len(m.split()) != 2 for m in merges):
        sys.exit(f"the merges file has fewer than {MERGES_USED} well-formed merges after its version line")
    symbols = byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(tokens) != VOCAB_SIZE or len(vocab) != VOCAB_SIZE:
        sys.exit(f"the vocabulary has {len(tokens)} entries ({len(vocab)} distinct), expected {VOCAB_SIZE}")
    return vocab, merges


def write_tokenizer_files(vocab: dict[str, int], merges: list[str], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return folder


def load_tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"),
                              model_max_length=CLIP_LIMIT)
    if len(tokenizer) != VOCAB_SIZE:
        sys.exit(f"the tokenizer has {len(tokenizer)} entries, expected {VOCAB_SIZE}")
    if (tokenizer.bos_token_id, tokenizer.eos_token_id) != (49406, 49407):
        sys.exit(f"start/end ids are {tokenizer.bos_token_id}/{tokenizer.eos_token_id}, expected 49406/49407")
    return tokenizer


def self_check(tokenizer) -> list[dict]:
    results = []
    for text, expected, where in PUBLISHED:
        got = tokenizer(text)["input_ids"]
        results.append({"text": text, "expected": expected, "got": got, "equal": got == expected, "source": where})
    failed = [r for r in results if not r["equal"]]
    if failed:
        lines = "\n".join(f"  {r['text']!r}: expected {r['expected']}, got {r['got']}" for r in failed)
        sys.exit(f"the tokenizer disagrees with published CLIP ids on {len(failed)} of {len(results)} strings:\n{lines}")
    return results


class DefinitionBPE:
    """CLIP's encoding written out from the reference tokenizer's definition, independent of the tokenizers library:
    entities unescaped twice, whitespace folded, lowercased (no ftfy), split by the reference pattern, each piece
    turned into byte symbols with ``</w>`` on the last one, then merged pair by pair, always the pair of lowest merge
    rank, every occurrence left to right, until no ranked pair is left. Used to recount every description."""

    PATTERN = (r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+")

    def __init__(self, vocab: dict[str, int], merges: list[str]):
        import regex

        self.vocab = vocab
        self.ranks = {tuple(m.split()): rank for rank, m in enumerate(merges)}
        self.symbol = byte_table()
        self.split = regex.compile(self.PATTERN, regex.IGNORECASE)
        self.memo: dict[str, list[str]] = {}

    def pieces(self, chunk: str) -> list[str]:
        if chunk in self.memo:
            return self.memo[chunk]
        parts = [self.symbol[b] for b in chunk.encode("utf-8")]
        parts[-1] += "</w>"
        while len(parts) > 1:
            ranked = [(self.ranks[pair], pair) for pair in zip(parts, parts[1:]) if pair in self.ranks]
            if not ranked:
                break
            first, second = min(ranked)[1]
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and parts[i] == first and parts[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        self.memo[chunk] = parts
        return parts

    def ids(self, text: str) -> list[int]:
        text = " ".join(html.unescape(html.unescape(text)).split()).lower()
        body = [self.vocab[p] for chunk in self.split.findall(text) for p in self.pieces(chunk)]
        return [self.vocab["<|startoftext|>"], *body, self.vocab["<|endoftext|>"]]


# ---------------------------------------------------------------------- counting
def lengths_of(tokenizer, texts: list[str]) -> np.ndarray:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # "longer than the specified maximum": what is being counted
    return np.array([len(ids) for ids in tokenizer(texts, truncation=False)["input_ids"]])


def summary(lengths: np.ndarray, limit: int) -> dict:
    over = lengths > limit
    return {
        "descriptions": int(len(lengths)),
        "over_limit": int(over.sum()),
        "share_over_limit_percent": round(100 * float(over.mean()), 2),
        "tokens_cut_mean_when_cut": round(float((lengths[over] - limit).mean()), 1) if over.any() else 0.0,
        "tokens_cut_total": int((lengths[over] - limit).sum()),
        "length_mean": round(float(lengths.mean()), 1),
        **{f"length_p{p}": int(np.percentile(lengths, p, method="inverted_cdf")) for p in PERCENTILES},
        "length_max": int(lengths.max()),
    }


def count_split(tokenizer, definition: DefinitionBPE, data: Path, split: str) -> dict:
    examples = load_split(data, split)
    texts = texts_of(examples)
    lengths = lengths_of(tokenizer, texts)
    recount = np.array([len(definition.ids(t)) for t in texts])
    static = np.array([e.static for e in examples])
    result = {**summary(lengths, CLIP_LIMIT),
              "video": summary(lengths[~static], CLIP_LIMIT), "static": summary(lengths[static], CLIP_LIMIT)}
    # where CLIP's reference normalisation (ftfy, html.unescape) could differ from the transformers tokenizer's
    differ = [i for i, t in enumerate(texts) if any(ord(c) > 127 for c in t) or "&" in t]
    refolded = [html.unescape(html.unescape(texts[i])).translate(CURLY) for i in differ]
    alternative = lengths.copy()
    if differ:
        alternative[differ] = lengths_of(tokenizer, refolded)
    result["definition_check"] = {"lengths_differing_from_the_definition_bpe": int((recount != lengths).sum())}
    result["normalisation_check"] = {
        "descriptions_with_non_ascii_or_ampersand": len(differ),
        "over_limit_with_quotes_straightened_and_entities_unescaped": int((alternative > CLIP_LIMIT).sum()),
        "length_changed": int((alternative != lengths).sum()),
    }
    order = np.argsort(-lengths, kind="stable")[:3]
    result["longest"] = [{"set": examples[i].set_name, "tokens": int(lengths[i]), "words": len(texts[i].split())}
                         for i in order]
    return result


def markdown(result: dict) -> str:
    rows = ["| split | descriptions | over 77 tokens | share | video | static | median | p90 | p95 | p99 | max |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for split in SPLITS:
        s = result["splits"][split]
        rows.append(f"| {split} | {s['descriptions']:,} | {s['over_limit']:,} | {s['share_over_limit_percent']:.2f} % | "
                    f"{s['video']['over_limit']} of {s['video']['descriptions']:,} | "
                    f"{s['static']['over_limit']} of {s['static']['descriptions']:,} | {s['length_p50']} | "
                    f"{s['length_p90']} | {s['length_p95']} | {s['length_p99']} | {s['length_max']} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DATA / "imagecode"))
    parser.add_argument("--bpe", type=Path, help="bpe_simple_vocab_16e6.txt.gz, or a wheel holding it (no download)")
    parser.add_argument("--cache", type=Path, default=cache_dir() / "clip-bpe",
                        help="where the wheel and the tokenizer files go (default $L2V_CACHE/clip-bpe)")
    args = parser.parse_args()
    began = time.perf_counter()
    if args.bpe is not None:
        bpe, origin = read_bpe(args.bpe), str(args.bpe)
    else:
        bpe, origin = fetch_bpe(args.cache)
    digest = hashlib.sha256(bpe).hexdigest()
    if digest != BPE_SHA256:
        print(f"warning: {origin} has sha256 {digest}, not the {BPE_SHA256} of open_clip_torch 3.3.0 / openai-clip 1.0.1",
              file=sys.stderr)
    vocab, merges = clip_vocabulary(bpe)
    folder = write_tokenizer_files(vocab, merges, args.cache / "tokenizer")
    tokenizer = load_tokenizer(folder)
    checks = self_check(tokenizer)
    definition = DefinitionBPE(vocab, merges)
    for text, expected, _ in PUBLISHED:
        if definition.ids(text) != expected:
            sys.exit(f"the definition BPE gives {definition.ids(text)} for {text!r}, published {expected}")
    result = {
        "limit": CLIP_LIMIT,
        "counted": "tokens including <|startoftext|> and <|endoftext|>; a description is cut when it has more than 77",
        "splits": {split: count_split(tokenizer, definition, Path(args.data), split) for split in SPLITS},
        "tokenizer": {"bpe_file": origin, "bpe_sha256": digest, "merges_used": len(merges), "vocab_size": len(vocab),
                      "class": f"transformers.{type(tokenizer).__name__} from vocab.json + merges.txt",
                      "published_ids_checked": len(checks), "published_ids_equal": sum(c["equal"] for c in checks),
                      "checks": checks},
        "siglip": "not counted: SigLIP's SentencePiece vocabulary (big_vision c4_en, "
                  "gs://t5-data/vocabs/cc_en.32000/sentencepiece.model) is not shipped by open_clip_torch, which "
                  "downloads it at run time, nor by any PyPI package known here",
        "meta": {"data": "McGill-NLP/imagecode @ 609f076 (train_data.json, valid_data.json, test_data_unlabeled.json)",
                 "seconds": round(time.perf_counter() - began, 1),
                 "machine": platform.processor() or platform.machine(),
                 "command": "OMP_NUM_THREADS=1 python benchmarks/imagecode_text_lengths.py"},
    }
    result["markdown"] = markdown(result)
    write_json_atomic(result, RESULTS / "imagecode_text_lengths.json")
    print(result["markdown"])


if __name__ == "__main__":
    main()

"""Tokenizers: SmolLM2's (from its GGUF), a byte-level BPE trained on a corpus, or a tokenizer.json;
and how many bytes of text each token stands for (bits per byte)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from ..files import USER_CACHE
from .embedded import smollm2_gguf


def _smollm2_tokenizer_path(cache: str | Path) -> Path:
    return Path(cache) / "smollm2" / "tokenizer" / "tokenizer.json"


def smollm2_tokenizer_file(cache: str | Path = USER_CACHE) -> Path:
    """SmolLM2's tokenizer.json, converted once from its GGUF (fetched on first use)."""
    folder = Path(cache) / "smollm2"
    out = _smollm2_tokenizer_path(cache)
    if not out.exists():
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(folder), gguf_file=smollm2_gguf(cache).name)
        tok.save_pretrained(str(out.parent))
    return out


def load_tokenizer(spec: str, docs: dict[str, list[str]] | None = None, cache: str | Path = USER_CACHE):
    """A ``tokenizers.Tokenizer`` from ``smollm2``, ``bpe:N`` (trained on the train split), or a path."""
    from tokenizers import Tokenizer

    if spec == "smollm2":
        return Tokenizer.from_file(str(smollm2_tokenizer_file(cache)))
    if spec.startswith("bpe:"):
        size = int(spec[4:]) if spec[4:].isdigit() else 0
        if size < 257:
            raise ValueError(f"tokenizer {spec!r}: a byte-level BPE needs N >= 257 (256 bytes + end-of-text)")
        if docs is None:
            raise ValueError("tokenizer 'bpe:N' needs the corpus to train on")
        from tokenizers import decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=size,
            special_tokens=["<|endoftext|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(docs["train"], trainer)
        return tok
    path = Path(spec)
    path = path / "tokenizer.json" if path.is_dir() else path
    if not path.exists():
        raise ValueError(f"tokenizer {spec!r}: expected 'smollm2', 'bpe:N', or a tokenizer.json / folder")
    return Tokenizer.from_file(str(path))


def vocab_hint(spec: str, cache: str | Path = USER_CACHE) -> int | None:
    """The vocabulary size of a tokenizer spec when it is known without reading the corpus:
    ``bpe:N`` (at most N), a tokenizer file, or a SmolLM2 tokenizer already converted; else None."""
    if spec.startswith("bpe:"):
        return int(spec[4:]) if spec[4:].isdigit() else None
    path = _smollm2_tokenizer_path(cache) if spec == "smollm2" else Path(spec)
    path = path / "tokenizer.json" if path.is_dir() else path
    if not path.is_file():
        return None
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path)).get_vocab_size()


def _byte_of_symbol() -> dict[str, int]:
    """The inverse of byte-level BPE's byte -> printable-character table (GPT-2's): printable
    Latin-1 bytes stand for themselves, the other 68 bytes for chr(256 + n) in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {chr(b): b for b in printable}
    others = [b for b in range(256) if b not in set(printable)]
    table.update({chr(256 + n): b for n, b in enumerate(others)})
    return table


SPACE_PIECE = {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}  # SentencePiece's normalizer
BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def token_byte_lengths(tok) -> np.ndarray:
    """(V,) int64: how many UTF-8 bytes of the text each token id stands for.

    Exact for the two tokenizer families whose tokens are strings of the text: a byte-level BPE
    (``bpe:N``, SmolLM2's: each symbol a byte) and a SentencePiece-style BPE with byte fallback
    whose only normalizer writes spaces as "\u2581" (Gemma's: a piece's text with "\u2581" read as a
    space, and "<0xAB>" one byte), so a document's token lengths add up to its UTF-8 length
    (``corpus_stats`` checks it). Special tokens count 0 bytes: the end-of-text that
    ``tokenize_corpus`` appends to each document is not text, though predicting it costs nats. A
    ``ValueError`` for any other tokenizer."""
    spec = json.loads(tok.to_str())
    special = {t.content for t in tok.get_added_tokens_decoder().values() if t.special}
    byte_level = not spec.get("normalizer") and "ByteLevel" in json.dumps(spec.get("pre_tokenizer"))
    pieces = spec.get("normalizer") == SPACE_PIECE and spec["model"].get("byte_fallback")
    if not (byte_level or pieces):
        raise ValueError(
            "bits per byte needs a byte-level BPE, or a SentencePiece-style BPE with byte fallback (each token a"
            " string of the text)"
        )
    symbols = _byte_of_symbol()
    out = np.zeros(tok.get_vocab_size(), dtype=np.int64)
    for piece, i in tok.get_vocab().items():
        if piece in special:
            continue
        if pieces:
            out[i] = 1 if BYTE_PIECE.fullmatch(piece) else len(piece.replace("\u2581", " ").encode())
            continue
        if not all(c in symbols for c in piece):
            raise ValueError(
                f"token {piece!r} (id {i}) is not a byte-level BPE symbol string: bits per byte needs a byte-level"
                " tokenizer"
            )
        out[i] = len(piece)
    return out


def eos_id(tok) -> int:
    for name in ("<|endoftext|>", "</s>", "<eos>"):
        if (i := tok.token_to_id(name)) is not None:
            return i
    return 0

"""Corpora and memory-mapped token caches.

A corpus is a list of documents. Local corpora are split into train / val / test by a hash of
each document's path, so the split is deterministic and never depends on file order; the test
split is never used for tuning. WikiText-103 and C4 keep their published splits.
"""

from __future__ import annotations

import glob
import hashlib
import itertools
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..files import USER_CACHE, write_atomic, write_json
from .devdocs import load_devdocs
from .embedded import pydocs_root
from .tokenizer import eos_id, load_tokenizer, token_byte_lengths

SPLITS = ("train", "val", "test")
TEXT_SUFFIXES = (".txt", ".md", ".rst")
C4_DOCS = {"train": 200_000, "val": 5_000, "test": 5_000}  # streamed prefix of C4 (en)


def _bucket(doc_id: str) -> int:
    return int(hashlib.sha1(doc_id.encode()).hexdigest()[:8], 16)


def split_documents(docs: list[tuple[str, str]]) -> dict[str, list[tuple[str, str]]]:
    """(id, text) documents into 90 / 5 / 5 by a stable hash of each id. A small corpus whose val or
    test would be empty gives its highest-hash documents to them instead, still independent of file order."""
    if len(docs) < 3:
        raise ValueError(f"corpus has {len(docs)} document(s); train / val / test need at least 3")
    ranked = sorted(docs, key=lambda d: _bucket(d[0]))
    names = {
        i: ("train" if _bucket(d[0]) % 100 < 90 else "val" if _bucket(d[0]) % 100 < 95 else "test")
        for i, d in enumerate(ranked)
    }
    for split, i in (("test", len(ranked) - 1), ("val", len(ranked) - 2)):
        if split not in names.values():
            names[i] = split
    out: dict[str, list[tuple[str, str]]] = {s: [] for s in SPLITS}
    for i, doc in enumerate(ranked):
        out[names[i]].append(doc)
    return out


def _local_files(spec: str) -> list[Path]:
    path = Path(spec)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = [p for p in path.rglob("*") if p.is_file() and p.name.endswith(TEXT_SUFFIXES)]
    else:
        files = [Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file()]
    if not files:
        raise ValueError(f"corpus {spec!r} matches no .txt, .md or .rst file")
    return sorted(files)


MAX_REPLACED = 0.001  # a text file may have at most this share of characters that are not valid UTF-8


def read_text(path: Path) -> str | None:
    """The file as UTF-8 text, a rare invalid byte replaced by U+FFFD; None for a file that is not
    text: a NUL byte, or more than ``MAX_REPLACED`` of its characters invalid."""
    raw = path.read_bytes()
    text = raw.decode("utf-8", errors="replace")
    replaced = text.count("\ufffd") - raw.decode("utf-8", errors="ignore").count("\ufffd")
    if b"\x00" in raw or replaced > MAX_REPLACED * max(1, len(text)):
        return None
    return text


def _chunk_file(path: Path, lines_per_doc: int = 200) -> list[tuple[str, str]]:
    """A single file becomes documents of 200 lines, so it can still be split three ways."""
    text = read_text(path)
    if text is None:
        raise ValueError(f"corpus {str(path)!r} is not UTF-8 text (NUL bytes, or over {MAX_REPLACED:.1%} invalid)")
    lines = text.splitlines(keepends=True)
    return [(f"{path.name}:{i}", "".join(lines[i : i + lines_per_doc])) for i in range(0, len(lines), lines_per_doc)]


def _hf_splits(name: str, location: str | None) -> dict[str, list[tuple[str, str]]]:
    """WikiText-103 / C4 through HF datasets; ``location`` is a local folder in the hub's file format."""
    from datasets import load_dataset

    if name == "wikitext-103":
        if location:  # parquet files named like the hub's: {train,validation,test}-*.parquet
            files = {
                s: sorted(glob.glob(f"{location}/**/{s}-*.parquet", recursive=True))
                for s in ("train", "validation", "test")
            }
            ds = load_dataset("parquet", data_files=files)
        else:
            ds = load_dataset("wikitext", "wikitext-103-raw-v1")
        # One split is one long text; articles start at top-level " = Title = " lines.
        return {
            ours: [(f"{ours}:0", "".join(ds[theirs]["text"]))]
            for ours, theirs in zip(SPLITS, ("train", "validation", "test"), strict=True)
        }
    if name == "c4":
        if location:  # json.gz shards named like the hub's: c4-{train,validation}.*.json.gz
            files = {
                s: sorted(glob.glob(f"{location}/**/c4-{s}.*.json*", recursive=True)) for s in ("train", "validation")
            }
            ds = load_dataset("json", data_files=files, streaming=True)
        else:
            ds = load_dataset("allenai/c4", "en", streaming=True)
        train_iter = iter(ds["train"])
        val_docs = [r["text"] for r in itertools.islice(ds["validation"], C4_DOCS["val"] + C4_DOCS["test"])]
        # C4 publishes no test split: the second half of the validation prefix serves as test.
        half = len(val_docs) // 2
        train = [r["text"] for r in itertools.islice(train_iter, C4_DOCS["train"])]
        named = lambda split, texts, start=0: [(f"{split}:{start + i}", t) for i, t in enumerate(texts)]  # noqa: E731
        return {
            "train": named("train", train),
            "val": named("validation", val_docs[:half]),
            "test": named("validation", val_docs[half:], half),
        }
    raise ValueError(f"unknown hub corpus {name!r}")


def load_documents(corpus: str, cache: str | Path = USER_CACHE) -> dict[str, list[tuple[str, str]]]:
    """(id, text) documents per split for ``pydocs``, ``devdocs``, ``wikitext-103[:DIR]``,
    ``c4[:DIR]``, or a file / folder / glob."""
    name, _, location = corpus.partition(":")
    if name in ("wikitext-103", "c4"):
        return _hf_splits(name, location or None)
    if corpus == "devdocs":
        return split_documents(load_devdocs(cache))
    if corpus == "pydocs":
        corpus = str(pydocs_root(cache))
    files = _local_files(corpus)
    if len(files) == 1:
        return split_documents(_chunk_file(files[0]))
    root = Path(corpus) if Path(corpus).is_dir() else None
    texts = {f: read_text(f) for f in files}
    skipped = [str(f) for f, t in texts.items() if t is None]
    if skipped:
        shown = ", ".join(skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        warnings.warn(f"skipped {len(skipped)} file(s) that are not UTF-8 text: {shown}", stacklevel=2)
    docs = [(str(f.relative_to(root) if root else f), t) for f, t in texts.items() if t is not None]
    if not docs:
        raise ValueError(f"corpus {corpus!r}: none of its {len(files)} files is UTF-8 text")
    return split_documents(docs)


def load_corpus(corpus: str, cache: str | Path = USER_CACHE) -> dict[str, list[str]]:
    """The texts of ``load_documents``."""
    return {s: [text for _, text in docs] for s, docs in load_documents(corpus, cache).items()}


# --- token cache --------------------------------------------------------------------------------


def _docs_key(corpus: str, docs: dict[str, list[str]], tokenizer: str) -> str:
    # A tokenizer file is keyed by its bytes, not its path: every compressed model folder holds a
    # copy of the same tokenizer.json and shares one cache, and a file replaced in place is not
    # served stale ids.
    if Path(tokenizer).is_file():
        tokenizer = "sha1:" + hashlib.sha1(Path(tokenizer).read_bytes()).hexdigest()
    h = hashlib.sha1(f"{corpus}|{tokenizer}".encode())
    for s in SPLITS:
        for d in docs[s]:
            h.update(hashlib.sha1(d.encode()).digest())
    return h.hexdigest()[:16]


def _save_npy(path: Path, array: np.ndarray) -> None:
    """``np.save`` through ``write_atomic``; a file handle, because ``np.save`` adds ``.npy`` to a name without it."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    write_atomic(path, write)


def tokenize_corpus(corpus: str, tokenizer: str, cache: str | Path = USER_CACHE, splits: tuple[str, ...] = SPLITS):
    """Token ids of each of ``splits`` as read-only memory maps, plus the tokenizer and its meta.
    Cached by the corpus text and the tokenizer (a tokenizer file by its contents); a split is
    tokenized the first time a command asks for it, and saved atomically, so a killed run resumes
    at the next split. Beside the ids, ``{split}.doc_tokens.npy`` holds each document's token
    count (with its end-of-text). A ``bpe:N`` tokenizer is trained on the train split's text."""
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise ValueError(f"splits must be among {SPLITS}, got {unknown}")
    docs = load_corpus(corpus, cache)
    folder = Path(cache) / "tokens" / _docs_key(corpus, docs, tokenizer)
    tok_path = folder / "tokenizer.json"
    folder.mkdir(parents=True, exist_ok=True)
    if not tok_path.exists():
        write_atomic(tok_path, lambda tmp: load_tokenizer(tokenizer, docs, cache).save(str(tmp)))
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tok_path))
    if not (folder / "meta.json").exists():
        meta = {
            "corpus": corpus,
            "tokenizer": tokenizer,
            "vocab_size": tok.get_vocab_size(),
            "docs": {s: len(docs[s]) for s in SPLITS},
        }
        write_json(folder / "meta.json", meta)
    eos = eos_id(tok)
    dtype = np.uint16 if tok.get_vocab_size() <= 1 << 16 else np.uint32
    for s in splits:
        if (folder / f"{s}.doc_tokens.npy").exists():
            continue
        ids, lengths = [], []
        for enc in tqdm(_batched(docs[s], 256, tok), desc=f"tokenize {s}", total=(len(docs[s]) + 255) // 256):
            for e in enc:
                ids.append(np.asarray(e.ids + [eos], dtype=dtype))
                lengths.append(len(e.ids) + 1)
        _save_npy(folder / f"{s}.npy", np.concatenate(ids) if ids else np.zeros(0, dtype))
        _save_npy(folder / f"{s}.doc_tokens.npy", np.asarray(lengths, dtype=np.int64))  # last: the split is complete
    meta = json.loads((folder / "meta.json").read_text())
    return {s: np.load(folder / f"{s}.npy", mmap_mode="r") for s in splits}, tok, meta


def corpus_stats(corpus: str, tokenizer: str, cache: str | Path = USER_CACHE) -> dict:
    """Documents, UTF-8 bytes, the bytes its tokens stand for (``token_byte_lengths``; equal to
    ``bytes`` for a byte-level tokenizer, None for another) and tokens per split, and documents and
    tokens per source (a devdocs
    package, the first folder of a local corpus's documents, else "all"), tokenizing if needed."""
    documents = load_documents(corpus, cache)
    _, tok, meta = tokenize_corpus(corpus, tokenizer, cache)
    try:
        byte_lengths = token_byte_lengths(tok)
    except ValueError:
        byte_lengths = None
    folder = Path(cache) / "tokens" / _docs_key(corpus, {s: [t for _, t in d] for s, d in documents.items()}, tokenizer)
    out: dict = {
        "corpus": corpus,
        "tokenizer": tokenizer,
        "vocab_size": meta["vocab_size"],
        "splits": {},
        "sources": {},
    }
    for s in SPLITS:
        lengths = np.load(folder / f"{s}.doc_tokens.npy")
        ids = np.load(folder / f"{s}.npy", mmap_mode="r")
        out["splits"][s] = {
            "docs": len(documents[s]),
            "bytes": sum(len(t.encode()) for _, t in documents[s]),
            "token_bytes": int(byte_lengths[np.asarray(ids, dtype=np.int64)].sum())
            if byte_lengths is not None
            else None,
            "tokens": int(lengths.sum()),
        }
        for (doc_id, _), n in zip(documents[s], lengths.tolist(), strict=True):
            src = out["sources"].setdefault(
                doc_id.split("/", 1)[0] if "/" in doc_id else "all", {"docs": 0, "tokens": 0}
            )
            src["docs"] += 1
            src["tokens"] += n
    total = sum(v["tokens"] for v in out["sources"].values())
    for v in out["sources"].values():
        v["token_share"] = round(v["tokens"] / total, 4)
    return out


def _batched(texts, n, tok):
    for i in range(0, len(texts), n):
        yield tok.encode_batch(texts[i : i + n])


def token_counts(tokens, vocab_size: int) -> torch.Tensor:
    """How often each token id occurs in ``tokens``, (V,) int64."""
    return torch.from_numpy(np.bincount(np.asarray(tokens), minlength=vocab_size)[:vocab_size].astype(np.int64))


def get_batch(data: np.ndarray, step: int, seed: int, batch: int, block: int, rank: int = 0, world: int = 1):
    """Random windows of the train split; a pure function of (seed, step)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    starts = torch.randint(0, len(data) - block - 1, (batch,), generator=g)[rank::world].tolist()
    window = np.stack([np.asarray(data[s : s + block + 1], dtype=np.int64) for s in starts])
    window = torch.from_numpy(window)
    return window[:, :-1], window[:, 1:]  # (B, T) inputs, (B, T) targets


def eval_windows(data, block: int, max_tokens: int, batch: int = 16) -> list[torch.Tensor]:
    """Consecutive windows of ``block + 1`` tokens from the start of ``data``, batched (B, block + 1),
    then one shorter window (1, r + 1) for the r targets left: every target up to ``max_tokens`` is
    scored once (the split's first token is never a target), so two tokenizers score the same text.
    Every evaluation reads the same tokens."""
    n, r = divmod(max(1, min(len(data) - 1, max_tokens)), block)

    def window(start: int, targets: int) -> np.ndarray:
        return np.asarray(data[start : start + targets + 1], dtype=np.int64)

    full = [
        torch.from_numpy(np.stack([window(s, block) for s in range(i * block, min(n, i + batch) * block, block)]))
        for i in range(0, n, batch)
    ]
    return full + ([torch.from_numpy(window(n * block, r))[None]] if r else [])

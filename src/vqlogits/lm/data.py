"""Corpora, tokenizers and memory-mapped token caches.

A corpus is a list of documents. Local corpora are split into train / val / test by a hash of
each document's path, so the split is deterministic and never depends on file order; the test
split is never used for tuning. WikiText-103 and C4 keep their published splits.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

SPLITS = ("train", "val", "test")
TEXT_SUFFIXES = (".txt", ".md", ".rst")
PYDOCS_SOURCES = "pydocs/usr/share/doc/python3.11/html/_sources"
C4_DOCS = {"train": 200_000, "val": 5_000, "test": 5_000}  # streamed prefix of C4 (en)


def _bucket(doc_id: str) -> int:
    return int(hashlib.sha1(doc_id.encode()).hexdigest()[:8], 16)


def split_documents(docs: list[tuple[str, str]]) -> dict[str, list[str]]:
    """90 / 5 / 5 by a stable hash of each document id. A small corpus whose val or test would be
    empty gives its highest-hash documents to them instead, still independent of file order."""
    if len(docs) < 3:
        raise ValueError(f"corpus has {len(docs)} document(s); train / val / test need at least 3")
    ranked = sorted(docs, key=lambda d: _bucket(d[0]))
    names = {i: ("train" if _bucket(d[0]) % 100 < 90 else "val" if _bucket(d[0]) % 100 < 95 else "test") for i, d in enumerate(ranked)}
    for split, i in (("test", len(ranked) - 1), ("val", len(ranked) - 2)):
        if split not in names.values():
            names[i] = split
    out: dict[str, list[str]] = {s: [] for s in SPLITS}
    for i, (_, text) in enumerate(ranked):
        out[names[i]].append(text)
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


def _chunk_file(path: Path, lines_per_doc: int = 200) -> list[tuple[str, str]]:
    """A single file becomes documents of 200 lines, so it can still be split three ways."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
    return [(f"{path.name}:{i}", "".join(lines[i : i + lines_per_doc])) for i in range(0, len(lines), lines_per_doc)]


def _hf_splits(name: str, location: str | None) -> dict[str, list[str]]:
    """WikiText-103 / C4 through HF datasets; ``location`` is a local folder in the hub's file format."""
    from datasets import load_dataset

    if name == "wikitext-103":
        if location:  # parquet files named like the hub's: {train,validation,test}-*.parquet
            files = {s: sorted(glob.glob(f"{location}/**/{s}-*.parquet", recursive=True)) for s in ("train", "validation", "test")}
            ds = load_dataset("parquet", data_files=files)
        else:
            ds = load_dataset("wikitext", "wikitext-103-raw-v1")
        # One split is one long text; articles start at top-level " = Title = " lines.
        return {ours: ["".join(ds[theirs]["text"])] for ours, theirs in zip(SPLITS, ("train", "validation", "test"))}
    if name == "c4":
        if location:  # json.gz shards named like the hub's: c4-{train,validation}.*.json.gz
            files = {s: sorted(glob.glob(f"{location}/**/c4-{s}.*.json*", recursive=True)) for s in ("train", "validation")}
            ds = load_dataset("json", data_files=files, streaming=True)
        else:
            ds = load_dataset("allenai/c4", "en", streaming=True)
        train_iter = iter(ds["train"])
        val_docs = [r["text"] for _, r in zip(range(C4_DOCS["val"] + C4_DOCS["test"]), ds["validation"])]
        # C4 publishes no test split: the second half of the validation prefix serves as test.
        half = len(val_docs) // 2
        return {
            "train": [r["text"] for _, r in zip(range(C4_DOCS["train"]), train_iter)],
            "val": val_docs[:half],
            "test": val_docs[half:],
        }
    raise ValueError(f"unknown hub corpus {name!r}")


def load_corpus(corpus: str, cache: str | Path = ".cache") -> dict[str, list[str]]:
    """Documents per split for ``pydocs``, ``wikitext-103[:DIR]``, ``c4[:DIR]``, or a file / folder / glob."""
    name, _, location = corpus.partition(":")
    if name in ("wikitext-103", "c4"):
        return _hf_splits(name, location or None)
    if corpus == "pydocs":
        root = Path(cache) / PYDOCS_SOURCES
        if not root.is_dir():
            raise ValueError(f"corpus 'pydocs' not found under {root}; run `make data` first")
        corpus = str(root)
    files = _local_files(corpus)
    if len(files) == 1:
        return split_documents(_chunk_file(files[0]))
    root = Path(corpus) if Path(corpus).is_dir() else None
    docs = [(str(f.relative_to(root) if root else f), f.read_text(encoding="utf-8", errors="replace")) for f in files]
    return split_documents(docs)


# --- tokenizers ---------------------------------------------------------------------------------


def smollm2_tokenizer_file(cache: str | Path = ".cache") -> Path:
    """SmolLM2's tokenizer.json, converted once from the GGUF that `make data` unpacks."""
    folder = Path(cache) / "smollm2"
    out = folder / "tokenizer" / "tokenizer.json"
    if not out.exists():
        ggufs = sorted(folder.glob("*.gguf"))
        if not ggufs:
            raise ValueError(f"no SmolLM2 GGUF in {folder}; run `make data` first")
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(folder), gguf_file=ggufs[0].name)
        tok.save_pretrained(str(out.parent))
    return out


def load_tokenizer(spec: str, docs: dict[str, list[str]] | None = None, cache: str | Path = ".cache"):
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
            vocab_size=size, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
        )
        tok.train_from_iterator(docs["train"], trainer)
        return tok
    path = Path(spec)
    path = path / "tokenizer.json" if path.is_dir() else path
    if not path.exists():
        raise ValueError(f"tokenizer {spec!r}: expected 'smollm2', 'bpe:N', or a tokenizer.json / folder")
    return Tokenizer.from_file(str(path))


def eos_id(tok) -> int:
    for name in ("<|endoftext|>", "</s>", "<eos>"):
        if (i := tok.token_to_id(name)) is not None:
            return i
    return 0


# --- token cache --------------------------------------------------------------------------------


def _docs_key(corpus: str, docs: dict[str, list[str]], tokenizer: str) -> str:
    h = hashlib.sha1(f"{corpus}|{tokenizer}".encode())
    for s in SPLITS:
        for d in docs[s]:
            h.update(hashlib.sha1(d.encode()).digest())
    return h.hexdigest()[:16]


def _save_atomic(path: Path, array: np.ndarray) -> None:
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, array)
    os.replace(tmp, path)


def tokenize_corpus(corpus: str, tokenizer: str, cache: str | Path = ".cache"):
    """Token ids per split as read-only memory maps, plus the tokenizer. Cached by corpus and tokenizer."""
    docs = load_corpus(corpus, cache)
    key = _docs_key(corpus, docs, tokenizer)
    folder = Path(cache) / "tokens" / key
    tok_path = folder / "tokenizer.json"
    if not (folder / "meta.json").exists():
        folder.mkdir(parents=True, exist_ok=True)
        tok = load_tokenizer(tokenizer, docs, cache)
        tok.save(str(tok_path))
        eos = eos_id(tok)
        dtype = np.uint16 if tok.get_vocab_size() <= 1 << 16 else np.uint32
        for s in SPLITS:
            ids: list[int] = []
            for enc in tqdm(_batched(docs[s], 64, tok), desc=f"tokenize {s}", leave=False, total=(len(docs[s]) + 63) // 64):
                for e in enc:
                    ids.extend(e.ids)
                    ids.append(eos)
            _save_atomic(folder / f"{s}.npy", np.asarray(ids, dtype=dtype))
        meta = {"corpus": corpus, "tokenizer": tokenizer, "vocab_size": tok.get_vocab_size(), "docs": {s: len(docs[s]) for s in SPLITS}}
        (folder / "meta.json").write_text(json.dumps(meta, indent=1))
    from tokenizers import Tokenizer

    meta = json.loads((folder / "meta.json").read_text())
    arrays = {s: np.load(folder / f"{s}.npy", mmap_mode="r") for s in SPLITS}
    return arrays, Tokenizer.from_file(str(tok_path)), meta


def _batched(texts, n, tok):
    for i in range(0, len(texts), n):
        yield tok.encode_batch(texts[i : i + n])


def token_counts(tokens, vocab_size: int) -> torch.Tensor:
    """How often each token id occurs in ``tokens``, (V,) int64."""
    return torch.from_numpy(np.bincount(np.asarray(tokens), minlength=vocab_size)[:vocab_size].astype(np.int64))


def eval_windows(data, block: int, max_tokens: int, batch: int = 16) -> list[torch.Tensor]:
    """Consecutive windows of ``block + 1`` tokens from the start of ``data``, batched (B, block + 1),
    with at most ``max_tokens`` targets in all. Every evaluation reads the same tokens."""
    n = max(1, min((len(data) - 1) // block, max_tokens // block))
    return [
        torch.from_numpy(np.stack([np.asarray(data[s : s + block + 1], dtype=np.int64) for s in range(i * block, min(n, i + batch) * block, block)]))
        for i in range(0, n, batch)
    ]

"""Corpora, tokenizers and memory-mapped token caches.

A corpus is a list of documents. Local corpora are split into train / val / test by a hash of
each document's path, so the split is deterministic and never depends on file order; the test
split is never used for tuning. WikiText-103 and C4 keep their published splits.
"""

from __future__ import annotations

import glob
import hashlib
import itertools
import json
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..files import write_atomic, write_json
from .devdocs import build_devdocs, load_devdocs
from .embedded import pydocs_root, smollm2_gguf

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


def _chunk_file(path: Path, lines_per_doc: int = 200) -> list[tuple[str, str]]:
    """A single file becomes documents of 200 lines, so it can still be split three ways."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
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


def load_documents(corpus: str, cache: str | Path = ".cache") -> dict[str, list[tuple[str, str]]]:
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
    docs = [(str(f.relative_to(root) if root else f), f.read_text(encoding="utf-8", errors="replace")) for f in files]
    return split_documents(docs)


def load_corpus(corpus: str, cache: str | Path = ".cache") -> dict[str, list[str]]:
    """The texts of ``load_documents``."""
    return {s: [text for _, text in docs] for s, docs in load_documents(corpus, cache).items()}


def fetch(names: list[str], cache: str | Path = ".cache") -> dict[str, str]:
    """Fetch the named embedded data (``pydocs``, ``devdocs``, ``smollm2``); returns where each lies."""
    known = {"pydocs": pydocs_root, "devdocs": build_devdocs, "smollm2": smollm2_gguf}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown embedded data {unknown}; choose from {sorted(known)}")
    return {n: str(known[n](cache)) for n in names}


# --- tokenizers ---------------------------------------------------------------------------------


def _smollm2_tokenizer_path(cache: str | Path) -> Path:
    return Path(cache) / "smollm2" / "tokenizer" / "tokenizer.json"


def smollm2_tokenizer_file(cache: str | Path = ".cache") -> Path:
    """SmolLM2's tokenizer.json, converted once from its GGUF (fetched on first use)."""
    folder = Path(cache) / "smollm2"
    out = _smollm2_tokenizer_path(cache)
    if not out.exists():
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(folder), gguf_file=smollm2_gguf(cache).name)
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


def vocab_hint(spec: str, cache: str | Path = ".cache") -> int | None:
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


def token_byte_lengths(tok) -> np.ndarray:
    """(V,) int64: how many UTF-8 bytes of the text each token id stands for.

    For a byte-level BPE (``bpe:N``, SmolLM2's) a token's symbols are bytes, so this is exact and a
    document's token lengths add up to its UTF-8 length (``corpus_stats`` checks it). Special tokens
    count 0 bytes: the end-of-text that ``tokenize_corpus`` appends to each document is not text,
    though predicting it costs nats. A ``ValueError`` for a tokenizer that is not byte-level."""
    spec = json.loads(tok.to_str())
    if spec.get("normalizer") or "ByteLevel" not in json.dumps(spec.get("pre_tokenizer")):
        raise ValueError(
            "bits per byte needs a byte-level BPE tokenizer without a normalizer (each token a string of bytes)"
        )
    symbols = _byte_of_symbol()
    special = {t.content for t in tok.get_added_tokens_decoder().values() if t.special}
    out = np.zeros(tok.get_vocab_size(), dtype=np.int64)
    for piece, i in tok.get_vocab().items():
        if piece in special:
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


def tokenize_corpus(corpus: str, tokenizer: str, cache: str | Path = ".cache"):
    """Token ids per split as read-only memory maps, plus the tokenizer. Cached by the corpus text
    and the tokenizer (a tokenizer file by its contents); each split is saved atomically, so a
    killed run resumes at the next split. Beside the ids, ``{split}.doc_tokens.npy`` holds each
    document's token count (with its end-of-text)."""
    docs = load_corpus(corpus, cache)
    key = _docs_key(corpus, docs, tokenizer)
    folder = Path(cache) / "tokens" / key
    tok_path = folder / "tokenizer.json"
    if not (folder / "meta.json").exists():
        folder.mkdir(parents=True, exist_ok=True)
        if not tok_path.exists():
            write_atomic(tok_path, lambda tmp: load_tokenizer(tokenizer, docs, cache).save(str(tmp)))
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(tok_path))
        eos = eos_id(tok)
        dtype = np.uint16 if tok.get_vocab_size() <= 1 << 16 else np.uint32
        for s in SPLITS:
            if (folder / f"{s}.doc_tokens.npy").exists():
                continue
            ids, lengths = [], []
            batches = tqdm(_batched(docs[s], 256, tok), desc=f"tokenize {s}", total=(len(docs[s]) + 255) // 256)
            for enc in batches:
                for e in enc:
                    ids.append(np.asarray(e.ids + [eos], dtype=dtype))
                    lengths.append(len(e.ids) + 1)
            _save_npy(folder / f"{s}.npy", np.concatenate(ids) if ids else np.zeros(0, dtype))
            _save_npy(folder / f"{s}.doc_tokens.npy", np.asarray(lengths, dtype=np.int64))
        meta = {
            "corpus": corpus,
            "tokenizer": tokenizer,
            "vocab_size": tok.get_vocab_size(),
            "docs": {s: len(docs[s]) for s in SPLITS},
        }
        write_json(folder / "meta.json", meta)
    from tokenizers import Tokenizer

    meta = json.loads((folder / "meta.json").read_text())
    arrays = {s: np.load(folder / f"{s}.npy", mmap_mode="r") for s in SPLITS}
    return arrays, Tokenizer.from_file(str(tok_path)), meta


def corpus_stats(corpus: str, tokenizer: str, cache: str | Path = ".cache") -> dict:
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
    with at most ``max_tokens`` targets in all. Every evaluation reads the same tokens."""
    n = max(1, min((len(data) - 1) // block, max_tokens // block))
    return [
        torch.from_numpy(
            np.stack(
                [
                    np.asarray(data[s : s + block + 1], dtype=np.int64)
                    for s in range(i * block, min(n, i + batch) * block, block)
                ]
            )
        )
        for i in range(0, n, batch)
    ]

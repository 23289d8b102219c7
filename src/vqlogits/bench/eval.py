"""``vqlogits eval`` on a model folder: quality (hf/evaluate.py) plus the speed measured beside it."""

from __future__ import annotations

import json
from pathlib import Path

from ..heads import KINDS
from ..hf.accelerate import hidden_states
from ..hf.evaluate import evaluate_pretrained
from ..hf.folder import dense_head_weight, load_pretrained
from ..lm.data import tokenize_corpus
from .accelerate import measure_index
from .timing import decode_tokens_per_s


def evaluate_folder(
    folder: str | Path,
    corpus: str = "pydocs",
    max_tokens: int = 16384,
    cache: str | Path = ".cache",
    split: str = "test",
) -> dict:
    """A compressed model: ``evaluate_pretrained`` and greedy tokens/s with its head and with the
    dense head (``dense_tok_s``, ``vq_tok_s``). An indexed model, whose logits are the original's:
    top-1 agreement, certification and head speed of each decoding mode (``measure_index``)."""
    folder = Path(folder)
    meta = json.loads((folder / "vqlogits.json").read_text())
    if KINDS[meta.get("head", "vq")].index:
        model = load_pretrained(folder)
        splits, _, _ = tokenize_corpus(corpus, str(folder / "tokenizer.json"), cache)
        head = model.get_output_embeddings()
        h = hidden_states(model, splits[split], min(max_tokens, 2048))
        rows = measure_index(head, head.weight, h, [head.probes], batches=(1,), tv_rows=min(256, h.shape[0]))
        return {"folder": str(folder), "corpus": corpus, "split": split, "tokens": h.shape[0], "modes": rows}
    result = evaluate_pretrained(folder, corpus, max_tokens, cache, split)
    model, dense = load_pretrained(folder), dense_head_weight(folder)
    speeds = decode_tokens_per_s(
        model,
        {"dense": lambda h: (h @ dense.T).argmax(-1), "vq": model.get_output_embeddings().greedy},
        batch=1,
        steps=16,
        repeats=2,
    )
    return {**result, **{f"{name}_tok_s": v for name, v in speeds.items()}}

"""``vqlogits eval`` on a model folder: quality (hf/evaluate.py) plus the speed measured beside it."""

from __future__ import annotations

from pathlib import Path

import torch

from ..files import USER_CACHE
from ..heads import KINDS
from ..hf.accelerate import hidden_states
from ..hf.evaluate import compare_heads, evaluate_pretrained
from ..hf.folder import dense_head_weight, load_pretrained, read_meta
from ..hf.load import load_causal_lm
from ..lm.data import tokenize_corpus
from .accelerate import measure_index
from .timing import decode_tokens_per_s


def evaluate_folder(
    folder: str | Path,
    corpus: str = "pydocs",
    max_tokens: int = 16384,
    cache: str | Path = USER_CACHE,
    split: str = "test",
) -> dict:
    """A compressed model: ``evaluate_pretrained`` and greedy tokens/s with its head and with the
    dense head (``dense_tok_s``, ``vq_tok_s``). An indexed model, whose logits are the original's:
    top-1 agreement, certification and head speed of each decoding mode (``measure_index``)."""
    folder = Path(folder)
    meta = read_meta(folder)
    if KINDS[meta.get("head", "vq")].index:
        model = load_pretrained(folder)
        splits, _, _ = tokenize_corpus(corpus, str(folder / "tokenizer.json"), cache, splits=(split,))
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


def evaluate_cast(
    spec: str = "smollm2",
    dtype: str = "bfloat16",
    corpus: str = "pydocs",
    max_tokens: int = 1_000_000,
    cache: str | Path = USER_CACHE,
) -> dict:
    """The original model with its head cast to ``dtype`` (what one line of user code does), in
    ``evaluate_pretrained``'s terms: a point beside the compressed heads on the bytes axis."""
    model, source = load_causal_lm(spec, cache)
    dense = model.get_output_embeddings().weight.detach().float()
    cast = dense.to(getattr(torch, dtype)).float()
    splits, _, _ = tokenize_corpus(corpus, str(source / "tokenizer.json"), cache, splits=("test",))
    result = {"folder": f"{spec} head cast to {dtype}", "corpus": corpus, "split": "test", "head": f"dense {dtype}"}
    result.update(
        compare_heads(model.base_model, lambda h: h @ cast.T, dense, splits["test"], max_tokens=max_tokens, cache=cache)
    )
    nbytes = dense.numel() * torch.empty(0, dtype=getattr(torch, dtype)).element_size()
    return {
        **result,
        "head_params": dense.numel(),
        "dense_head_params": dense.numel(),
        "head_bytes": nbytes,
        "dense_head_bytes": 4 * dense.numel(),
    }


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(evaluate_cast(*sys.argv[1:3]), indent=1))

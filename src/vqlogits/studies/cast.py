"""The original model with its head cast to another dtype, scored like a compressed head: a point
on the bytes axis of the pretrained study (scripts/pretrained_bytes.sh).

    python -m vqlogits.studies.cast smollm2 bfloat16 [corpus [max_tokens]]
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..data.corpora import tokenize_corpus
from ..files import USER_CACHE
from ..hf.evaluate import compare_heads
from ..hf.load import load_causal_lm


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

    spec, dtype, *rest = sys.argv[1:]  # [corpus [max_tokens]]
    print(json.dumps(evaluate_cast(spec, dtype, *rest[:1], *map(int, rest[1:2])), indent=1))

"""Accelerate a pretrained model's decoding without changing its logits: ``IndexedHead``.

``accelerate`` clusters the output head's rows (balanced k-means in the metric of the model's own
hidden states on some text; nothing is trained), installs an ``IndexedHead`` and saves the model
like ``compress`` does. bench/accelerate.py measures it (docs/PRETRAINED.md, "accelerate or
compress"; ``docs/accelerate.sh``).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..files import USER_CACHE, output_folder
from ..heads import IndexedHead
from ..lm.data import eval_windows, tokenize_corpus
from .folder import save_pretrained
from .load import copy_tokenizer, load_causal_lm, lossless_dtype, use_head


@torch.no_grad()
def hidden_states(model, data, tokens: int, block: int = 256, batch: int = 4) -> torch.Tensor:
    """Final hidden states (n, d) of ``model`` on consecutive windows of ``data`` (token ids)."""
    out = []
    for w in tqdm(eval_windows(data, block, tokens, batch), desc="hidden states", leave=False):
        out.append(model.base_model(input_ids=w[:, :-1]).last_hidden_state.reshape(-1, model.config.hidden_size))
    return torch.cat(out).float()


def default_clusters(vocab_size: int) -> int:
    """K of about 48 rows per cluster, a power of 2: 1,024 for SmolLM2's V = 49,152, the K measured
    in docs/PRETRAINED.md (4,096 for Gemma 3's 262,144, 2,048 for Llama 3's 128,256)."""
    return max(1, min(vocab_size, 2 ** round(math.log2(max(1, vocab_size / 48)))))


def accelerate(
    spec: str,
    clusters: int | None,
    out: str | Path,
    probes: int | None = None,
    spherical: bool = False,
    corpus: str = "pydocs",
    hidden_tokens: int = 16384,
    seed: int = 0,
    cache: str | Path = USER_CACHE,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
) -> Path:
    """Load a causal LM, index its output rows into ``clusters`` balanced clusters (default:
    ``default_clusters(V)``), save to ``out``.

    The clustering metric comes from ``hidden_tokens`` hidden states of the model on ``corpus``'s
    train split (see ``IndexedHead.from_weight``). ``vqlogits.load_pretrained(out)`` reloads it.
    ``out``, ``dtype`` and ``overwrite`` as in ``compress``.
    """
    if clusters is not None and (not isinstance(clusters, int) or isinstance(clusters, bool) or clusters < 1):
        raise ValueError(f"clusters must be an int >= 1, got {clusters!r}")
    if probes is not None and (not isinstance(probes, int) or isinstance(probes, bool) or probes < 1):
        raise ValueError(f"probes must be an int >= 1, got {probes!r}")
    with output_folder(out, "model", overwrite, finished="vqlogits.json") as out:
        model, source = load_causal_lm(spec, cache)
        stored = dtype or lossless_dtype(model)
        weight = model.get_output_embeddings().weight.detach().clone()  # (V, d); a copy, as it may be tied
        clusters = default_clusters(weight.shape[0]) if clusters is None else clusters
        if clusters > weight.shape[0]:
            raise ValueError(f"clusters must be in [1, vocab_size={weight.shape[0]}], got {clusters}")
        hidden = None
        if hidden_tokens and (source / "tokenizer.json").exists():
            splits, _, _ = tokenize_corpus(corpus, str(source / "tokenizer.json"), cache, splits=("train",))
            hidden = hidden_states(model, splits["train"], hidden_tokens)
        head = IndexedHead.from_weight(
            weight, clusters, hidden=hidden, spherical=spherical, seed=seed, probes=probes, progress=True
        )
        use_head(model, head)
        copy_tokenizer(source, out)  # before vqlogits.json: its presence means a complete folder
        extra = {
            "hidden_tokens": hidden_tokens if hidden is not None else 0,
            "corpus": corpus if hidden is not None else None,
            "spherical": spherical,
        }
        save_pretrained(model, out, source=spec, extra=extra, dtype=stored)
    return out

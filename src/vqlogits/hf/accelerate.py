"""Accelerate a pretrained model's decoding without changing its logits: ``IndexedHead``.

``accelerate`` clusters the output head's rows (balanced k-means in the metric of the model's own
hidden states on some text; nothing is trained), installs an ``IndexedHead`` and saves the model
like ``compress`` does. studies/accelerate.py measures it (docs/PRETRAINED.md, "accelerate or
compress"; ``scripts/accelerate.sh``).
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

import torch

from ..data.corpora import tokenize_corpus
from ..files import USER_CACHE, output_folder
from ..heads import IndexedHead
from .config import AccelerateConfig
from .folder import save_pretrained
from .hidden import hidden_states
from .load import copy_tokenizer, load_causal_lm, lossless_dtype, use_head


def default_clusters(vocab_size: int) -> int:
    """K of about 48 rows per cluster, a power of 2: 1,024 for SmolLM2's V = 49,152, the K measured
    in docs/PRETRAINED.md (4,096 for Gemma 3's 262,144, 2,048 for Llama 3's 128,256). On Gemma-3-270M
    (docs/pretrained/gemma/clusters.md) K = 2,048 / 4,096 / 8,192 drafts agree 99.51 / 99.68 /
    99.73% at K / 32 probes (pydocs) for 3.0 / 3.3 / 3.7 ms, and the k-means takes 108 / 196 / 413 s:
    4,096 keeps indexing within 5 minutes at nearly 8,192's agreement."""
    return max(1, min(vocab_size, 2 ** round(math.log2(max(1, vocab_size / 48)))))


def accelerate(cfg: AccelerateConfig | None = None, /, **options) -> Path:
    """Load a causal LM, index its output rows into ``cfg.clusters`` balanced clusters (0:
    ``default_clusters(V)``), save to ``cfg.out``.

    ``cfg`` (or its fields as keywords): the clustering metric comes from ``hidden_tokens`` hidden
    states of the model on ``corpus``'s train split (see ``IndexedHead.from_weight``).
    ``vqlogits.load_pretrained(out)`` reloads it. ``out``, ``dtype`` and ``overwrite`` as in
    ``compress``. The config is saved in vqlogits.json under ``accelerate``.
    """
    cfg = cfg or AccelerateConfig(**{k: str(v) if isinstance(v, Path) else v for k, v in options.items()})
    cfg.check()
    if cfg.clusters and cfg.probes > cfg.clusters:
        raise ValueError(f"probes must be at most clusters={cfg.clusters}, got {cfg.probes}")
    cache = cfg.cache or USER_CACHE
    with output_folder(cfg.out, "model", cfg.overwrite, finished="vqlogits.json") as out:
        model, source = load_causal_lm(cfg.model, cache)
        stored = getattr(torch, cfg.dtype) if cfg.dtype else lossless_dtype(model)
        weight = model.get_output_embeddings().weight.detach().clone()  # (V, d); a copy, as it may be tied
        clusters = cfg.clusters or default_clusters(weight.shape[0])
        if clusters > weight.shape[0]:
            raise ValueError(f"clusters must be in [1, vocab_size={weight.shape[0]}], got {clusters}")
        if cfg.probes > clusters:
            raise ValueError(f"probes must be at most the {clusters} clusters, got {cfg.probes}")
        hidden = None
        if cfg.hidden_tokens and (source / "tokenizer.json").exists():
            splits, _, _ = tokenize_corpus(cfg.corpus, str(source / "tokenizer.json"), cache, splits=("train",))
            hidden = hidden_states(model, splits["train"], cfg.hidden_tokens)
        head = IndexedHead.from_weight(
            weight,
            clusters,
            hidden=hidden,
            spherical=cfg.spherical,
            seed=cfg.seed,
            probes=cfg.probes or None,
            progress=True,
        )
        use_head(model, head)
        copy_tokenizer(source, out)  # before vqlogits.json: its presence means a complete folder
        extra = {
            "hidden_tokens": cfg.hidden_tokens if hidden is not None else 0,
            "corpus": cfg.corpus if hidden is not None else None,
            "spherical": cfg.spherical,
            "accelerate": asdict(cfg),
        }
        save_pretrained(model, out, source=cfg.model, extra=extra, dtype=stored)
    return out

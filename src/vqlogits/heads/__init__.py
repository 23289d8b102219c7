"""Output heads. Each file holds one head type; all share forward / loss / greedy / sample."""

from __future__ import annotations

from torch import nn

from .adaptive import AdaptiveHead
from .dense import DenseHead
from .lowrank import LowRankHead
from .vq import VQLogitsHead

HEADS = ("dense", "vq", "adaptive", "lowrank")


def build_head(
    name: str,
    d_model: int,
    vocab_size: int,
    codebook_size: int = 1024,
    bias: bool = True,
    rank: int = 64,
) -> nn.Module:
    """A head by name, so training and benchmarks can swap them."""
    if name == "dense":
        return DenseHead(d_model, vocab_size)
    if name == "vq":
        return VQLogitsHead(d_model, vocab_size, codebook_size, bias=bias)
    if name == "adaptive":
        return AdaptiveHead(d_model, vocab_size)
    if name == "lowrank":
        return LowRankHead(d_model, vocab_size, rank)
    raise ValueError(f"head must be one of {HEADS}, got {name!r}")


__all__ = ["HEADS", "AdaptiveHead", "DenseHead", "LowRankHead", "VQLogitsHead", "build_head"]

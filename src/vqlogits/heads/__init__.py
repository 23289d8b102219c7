"""Output heads. Each file holds one head type; all share forward / loss / greedy / sample."""

from __future__ import annotations

from torch import nn

from .adaptive import AdaptiveHead
from .dense import DenseHead
from .hybrid import HybridHead, HybridTwoLevelHead
from .lowrank import LowRankHead
from .lowrank_residual import RVQHead, VQLowRankHead
from .twolevel import TwoLevelHead
from .vq import VQLogitsHead

HEADS = ("dense", "vq", "adaptive", "lowrank", "vq-lowrank", "twolevel", "rvq", "hybrid", "hybrid-twolevel")


def build_head(
    name: str,
    d_model: int,
    vocab_size: int,
    codebook_size: int = 1024,
    bias: bool = True,
    rank: int = 64,
    token_dim: int = 8,
    num_codebooks: int = 2,
    n_frequent: int = 256,
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
    if name == "vq-lowrank":
        return VQLowRankHead(d_model, vocab_size, codebook_size, rank, bias=bias)
    if name == "twolevel":
        return TwoLevelHead(d_model, vocab_size, codebook_size, token_dim, bias=bias)
    if name == "rvq":
        return RVQHead(d_model, vocab_size, codebook_size, num_codebooks, bias=bias)
    if name == "hybrid":
        return HybridHead(d_model, vocab_size, n_frequent, codebook_size, bias=bias)
    if name == "hybrid-twolevel":
        return HybridTwoLevelHead(d_model, vocab_size, n_frequent, codebook_size, token_dim, bias=bias)
    raise ValueError(f"head must be one of {HEADS}, got {name!r}")


def size_for_budget(name: str, budget: float, d_model: int, vocab_size: int, bias: bool = True) -> dict:
    """Head sizes whose parameter count is at most ``budget`` x the dense head's (V * d).

    Rule, with P = budget * V * d parameters to spend: the per-token bias (V) comes first, and is
    dropped when it alone would not fit beside one code (or when ``bias=False``). Then
      vq: K = (P - V) / d codes;  hybrid: half the codes exact rows for frequent tokens;
      twolevel: e = P / (4 V) dims per token (at least 1), the rest codes;
      hybrid-twolevel: as twolevel, with half the codes exact rows for frequent tokens;
      vq-lowrank: r = P / (4 (V + d)) (at least 1), the rest codes;  rvq: 2 codebooks share the codes;
      lowrank: r = P / (V + d).
    """
    if not 0 < budget <= 1:
        raise ValueError(f"head_budget must be in (0, 1], got {budget!r}")
    V, d = vocab_size, d_model
    P = int(budget * V * d)
    bias = bias and P >= V + d
    rest = P - (V if bias else 0)

    def codes(params: int) -> int:
        return max(1, min(V, params // d))

    if name == "vq":
        kw = dict(codebook_size=codes(rest), bias=bias)
        n = kw["codebook_size"] * d
    elif name == "hybrid":
        total = max(2, codes(rest))
        kw = dict(n_frequent=total // 2, codebook_size=total - total // 2, bias=bias)
        n = total * d
    elif name in ("twolevel", "hybrid-twolevel"):
        e = max(1, rest // (4 * V))
        total = codes(rest - e * (V + d))
        kw = dict(token_dim=e, codebook_size=total, bias=bias)
        if name == "hybrid-twolevel":
            total = max(2, total)
            kw.update(n_frequent=total // 2, codebook_size=total - total // 2)
        n = total * d + e * (V + d)
    elif name == "vq-lowrank":
        r = max(1, min(d, rest // (4 * (V + d))))
        kw = dict(rank=r, codebook_size=codes(rest - r * (V + d)), bias=bias)
        n = kw["codebook_size"] * d + r * (V + d)
    elif name == "rvq":
        kw = dict(codebook_size=max(1, codes(rest) // 2), num_codebooks=2, bias=bias)
        n = 2 * kw["codebook_size"] * d
    elif name == "lowrank":
        kw = dict(rank=max(1, min(d, P // (V + d))))
        n, bias = kw["rank"] * (V + d), False
    else:
        raise ValueError(f"head {name!r} cannot be sized by a budget; sizeable: vq, hybrid, twolevel, hybrid-twolevel, vq-lowrank, rvq, lowrank")
    n += V if bias else 0
    if n > P:
        raise ValueError(f"head_budget={budget} gives {P:,} parameters, but the smallest {name} head needs {n:,} (V={V}, d={d})")
    return kw


__all__ = [
    "HEADS",
    "AdaptiveHead",
    "DenseHead",
    "HybridHead",
    "HybridTwoLevelHead",
    "LowRankHead",
    "RVQHead",
    "TwoLevelHead",
    "VQLogitsHead",
    "VQLowRankHead",
    "build_head",
    "size_for_budget",
]

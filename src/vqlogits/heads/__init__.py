"""Output heads. Each file holds one head type; all share forward / loss / greedy / sample.

``KINDS`` is the one list of head kinds and what each can do; every other layer asks it.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .adaptive import AdaptiveHead
from .dense import DenseHead
from .hybrid import HybridHead, HybridTwoLevelHead
from .indexed import IndexedHead
from .lowrank import LowRankHead
from .lowrank_residual import RVQHead, VQLowRankHead
from .quantized import QuantizedHead
from .twolevel import TwoLevelHead
from .vq import VQLogitsHead


@dataclass(frozen=True)
class HeadKind:
    """A head kind's name, class and capabilities."""

    name: str
    cls: type
    trainable: bool = True  # built by ``build_head`` and trained from scratch (``HEADS``)
    has_map: bool = False  # a token -> code map that ``lm.learned_map.MapLearner`` can learn
    uses_codes: bool = False  # K codes shared by tokens (K <= V; hybrids add their frequent tokens)
    frequent: bool = False  # its first codes hold the most frequent tokens' exact rows (``set_frequencies``)
    sizable: bool = False  # ``size_for_budget`` sizes it to a fraction of the dense head
    from_rows: bool = False  # ``hf.build.head_from_rows`` builds it from a pretrained head's rows
    index: bool = False  # an index over a pretrained head's own rows: the same logits, faster decoding


_CODES = dict(has_map=True, uses_codes=True, sizable=True)
KINDS = {
    k.name: k
    for k in (
        HeadKind("dense", DenseHead),
        HeadKind("vq", VQLogitsHead, **_CODES, from_rows=True),
        HeadKind("adaptive", AdaptiveHead),
        HeadKind("lowrank", LowRankHead, sizable=True),
        HeadKind("vq-lowrank", VQLowRankHead, **_CODES),
        HeadKind("twolevel", TwoLevelHead, **_CODES, from_rows=True),
        HeadKind("rvq", RVQHead, **_CODES),
        HeadKind("hybrid", HybridHead, **_CODES, frequent=True, from_rows=True),
        HeadKind("hybrid-twolevel", HybridTwoLevelHead, **_CODES, frequent=True, from_rows=True),
        HeadKind("indexed", IndexedHead, trainable=False, index=True),  # a pretrained head's own rows
        HeadKind("quantized", QuantizedHead, trainable=False, from_rows=True),  # its rows in bits, see quant.py
    )
}
HEADS = tuple(name for name, k in KINDS.items() if k.trainable)
WITH_MAP = tuple(name for name, k in KINDS.items() if k.has_map)
SIZABLE = tuple(name for name, k in KINDS.items() if k.sizable)
FROM_ROWS = tuple(name for name, k in KINDS.items() if k.from_rows)


def kind_of(head: nn.Module) -> HeadKind:
    """The kind of a head instance (its exact class: a hybrid is not a vq)."""
    for k in KINDS.values():
        if type(head) is k.cls:
            return k
    raise ValueError(f"{type(head).__name__} is not a vqlogits head; kinds: {tuple(KINDS)}")


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


def head_config(head: nn.Module) -> dict:
    """What ``head_from_config`` needs to rebuild ``head``: its kind's name and sizes (a compressed
    model folder keeps them in vqlogits.json)."""
    kind = kind_of(head)
    if kind.index:
        return {"head": kind.name, "clusters": head.clusters, "probes": head.probes}
    if kind.cls is QuantizedHead:
        return {"head": kind.name, "bits": head.bits, "group_size": head.group_size, "bias": head.bias is not None}
    if not kind.from_rows:
        raise ValueError(f"a {kind.name} head has no saved form; these do: {FROM_ROWS + ('indexed',)}")
    out = {"bias": head.bias is not None}
    if kind.frequent:
        out.update(n_frequent=head.n_frequent, codebook_size=head.tail_codes)
    else:
        out.update(codebook_size=head.codebook_size)
    if isinstance(head, TwoLevelHead):
        out.update(token_dim=head.proj.shape[1])
    return {"head": kind.name, **out}


def head_from_config(config: dict, d_model: int, vocab_size: int) -> nn.Module:
    """A head of ``head_config``'s kind and sizes, with fresh weights (a config without a kind is vq)."""
    name = config.get("head", "vq")
    if name not in KINDS:
        raise ValueError(f"head must be one of {tuple(KINDS)}, got {name!r}")
    if KINDS[name].index:
        return IndexedHead(d_model, vocab_size, config["clusters"], config["probes"])
    if KINDS[name].cls is QuantizedHead:
        return QuantizedHead(d_model, vocab_size, config["bits"], config["group_size"], config["bias"])
    return build_head(
        name,
        d_model,
        vocab_size,
        config["codebook_size"],
        config["bias"],
        token_dim=config.get("token_dim", 8),
        n_frequent=config.get("n_frequent", 0),
    )


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
        raise ValueError(f"head {name!r} cannot be sized by a budget; sizable: {', '.join(SIZABLE)}")
    n += V if bias else 0
    if n > P:
        raise ValueError(
            f"head_budget={budget} gives {P:,} parameters, but the smallest {name} head needs {n:,} (V={V}, d={d})"
        )
    return kw


__all__ = [
    "FROM_ROWS",
    "HEADS",
    "KINDS",
    "SIZABLE",
    "WITH_MAP",
    "AdaptiveHead",
    "HeadKind",
    "IndexedHead",
    "QuantizedHead",
    "DenseHead",
    "HybridHead",
    "HybridTwoLevelHead",
    "LowRankHead",
    "RVQHead",
    "TwoLevelHead",
    "VQLogitsHead",
    "VQLowRankHead",
    "build_head",
    "head_config",
    "head_from_config",
    "kind_of",
    "size_for_budget",
]

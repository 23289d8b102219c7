"""Output heads. Each file holds one head type; all share forward / loss / greedy / sample.

``KINDS`` is the registry: one entry per kind, naming its class and what it can do. Everything a
kind *does* lives in its own file, as methods the registry calls:

* ``build(d_model, vocab_size, sizes)``: a fresh head of these sizes (``sizes.SIZES`` keys);
* ``budget(rest, V, d)``: sizes spending ``rest`` parameters (``sizes.fit_budget`` adds the bias);
* ``rows_sizes(options)`` and ``from_rows(dense, sizes, frequent, seed, progress)``: a head built
  from a pretrained model's (V, d) output rows, for ``vqlogits compress``;
* ``config()`` and ``from_config(config, d, V)``: what a model folder's vqlogits.json stores.

A new head is one file plus one entry in ``KINDS``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .adaptive import AdaptiveHead
from .dense import DenseHead
from .frequent import FrequentHead
from .hybrid import HybridHead, HybridTwoLevelHead
from .indexed import IndexedHead
from .lowrank import LowRankHead
from .lowrank_residual import RVQHead, VQLowRankHead
from .quantized import QuantizedHead
from .sizes import SIZES, fit_budget
from .twolevel import TwoLevelHead
from .vq import VQLogitsHead


@dataclass(frozen=True)
class HeadKind:
    """A head kind's name, class and capabilities."""

    name: str
    cls: type
    trainable: bool = True  # built by ``build_head`` and trained from scratch (``HEADS``)
    has_map: bool = False  # a token -> code map that ``heads.learned_map.MapLearner`` can learn
    uses_codes: bool = False  # K codes shared by tokens (K <= V; hybrids add their frequent tokens)
    frequent: bool = False  # its first codes hold the most frequent tokens' exact rows (``set_frequencies``)
    mapped: bool = False  # training builds its map by TrainConfig's mapping / codebook_init / warm-up options
    index: bool = False  # an index over a pretrained head's own rows: the same logits, faster decoding

    @property
    def sizable(self) -> bool:
        """``size_for_budget`` sizes it to a fraction of the dense head."""
        return hasattr(self.cls, "budget")

    @property
    def from_rows(self) -> bool:
        """``head_from_rows`` builds it from a pretrained head's rows (``vqlogits compress``)."""
        return hasattr(self.cls, "from_rows")

    @property
    def saved(self) -> bool:
        """A model folder can store it (``head_config``)."""
        return hasattr(self.cls, "config")


_CODES = dict(has_map=True, uses_codes=True)
KINDS = {
    k.name: k
    for k in (
        HeadKind("dense", DenseHead),
        HeadKind("vq", VQLogitsHead, **_CODES, mapped=True),
        HeadKind("adaptive", AdaptiveHead),
        HeadKind("lowrank", LowRankHead),
        HeadKind("vq-lowrank", VQLowRankHead, **_CODES),
        HeadKind("twolevel", TwoLevelHead, **_CODES),
        HeadKind("rvq", RVQHead, **_CODES),
        HeadKind("hybrid", HybridHead, **_CODES, frequent=True),
        HeadKind("hybrid-twolevel", HybridTwoLevelHead, **_CODES, frequent=True),
        HeadKind("frequent", FrequentHead, **_CODES, frequent=True),
        HeadKind("indexed", IndexedHead, trainable=False, index=True),  # a pretrained head's own rows
        HeadKind("quantized", QuantizedHead, trainable=False),  # its rows in bits, see quant.py
    )
}
HEADS = tuple(name for name, k in KINDS.items() if k.trainable)
WITH_MAP = tuple(name for name, k in KINDS.items() if k.has_map)
SIZABLE = tuple(name for name, k in KINDS.items() if k.sizable)
FROM_ROWS = tuple(name for name, k in KINDS.items() if k.from_rows)


def _kind(name: str, among: tuple[str, ...], what: str = "head") -> HeadKind:
    if name not in among:
        raise ValueError(f"{what} must be one of {among}, got {name!r}")
    return KINDS[name]


def kind_of(head: nn.Module) -> HeadKind:
    """The kind of a head instance (its exact class: a hybrid is not a vq)."""
    for k in KINDS.values():
        if type(head) is k.cls:
            return k
    raise ValueError(f"{type(head).__name__} is not a vqlogits head; kinds: {tuple(KINDS)}")


def build_head(name: str, d_model: int, vocab_size: int, **sizes) -> nn.Module:
    """A head by name, with fresh weights, so training and benchmarks can swap them. ``sizes``:
    any of ``sizes.SIZES`` (codebook_size, bias, rank, token_dim, num_codebooks, n_frequent); each
    kind reads the ones it has."""
    unknown = set(sizes) - set(SIZES)
    if unknown:
        raise ValueError(f"unknown head sizes {sorted(unknown)}; sizes are {tuple(SIZES)}")
    return _kind(name, HEADS).cls.build(d_model, vocab_size, {**SIZES, **sizes})


def size_for_budget(name: str, budget: float, d_model: int, vocab_size: int, bias: bool = True) -> dict:
    """Head sizes whose parameter count is at most ``budget`` x the dense head's (V * d): the
    per-token bias first (``sizes.fit_budget``), then the kind's own rule (its ``budget``):
      vq: K = (P - V) / d codes;  hybrid: half the codes exact rows for frequent tokens;
      twolevel: e = P / (4 V) dims per token (at least 1), the rest codes;
      hybrid-twolevel: as twolevel, with half the codes exact rows for frequent tokens;
      vq-lowrank: r = P / (4 (V + d)) (at least 1), the rest codes;  rvq: 2 codebooks share the codes;
      lowrank: r = P / (V + d), no bias.
    """
    if not 0 < budget <= 1:
        raise ValueError(f"head_budget must be in (0, 1], got {budget!r}")
    if name not in SIZABLE:
        raise ValueError(f"head {name!r} cannot be sized by a budget; sizable: {', '.join(SIZABLE)}")
    return fit_budget(name, KINDS[name].cls, budget, d_model, vocab_size, bias)


def rows_sizes(name: str, options: dict, d_model: int, vocab_size: int) -> dict:
    """The sizes of a ``name`` head built from pretrained rows, from compress's ``options``
    (``head_budget``, ``bias``, ``init`` and the kind's own: see its ``rows_sizes``)."""
    kind = _kind(name, FROM_ROWS)
    if options.get("head_budget"):
        budget = size_for_budget(name, options["head_budget"], d_model, vocab_size, bias=options.get("bias", True))
        return {**budget, "init": options.get("init", "kmeans")}
    sizes = kind.cls.rows_sizes(options)
    codes = sizes.get("codebook_size", 0) + sizes.get("n_frequent", 0)  # the K codes asked for
    if vocab_size and codes > vocab_size:
        raise ValueError(f"codebook_size must be at most the model's vocabulary, {vocab_size:,} tokens, got {codes}")
    return sizes


def head_from_rows(name: str, dense, sizes: dict, frequent=None, seed: int = 0, progress: bool = True):
    """A ``name`` head of ``sizes`` approximating the (V, d) output matrix ``dense`` (the kind's
    ``from_rows``). ``frequent``: token ids by decreasing train frequency, for the kinds whose first
    codes hold frequent tokens' exact rows. The per-token bias starts at zero."""
    return _kind(name, FROM_ROWS).cls.from_rows(dense, sizes, frequent, seed, progress)


def head_config(head: nn.Module) -> dict:
    """What ``head_from_config`` needs to rebuild ``head``: its kind's name and sizes (a model
    folder keeps them in vqlogits.json)."""
    kind = kind_of(head)
    if not kind.saved:
        saved = tuple(name for name, k in KINDS.items() if k.saved)
        raise ValueError(f"a {kind.name} head has no saved form; these do: {saved}")
    return {"head": kind.name, **head.config()}


def head_from_config(config: dict, d_model: int, vocab_size: int) -> nn.Module:
    """A head of ``head_config``'s kind and sizes, with fresh weights (a config without a kind is vq)."""
    kind = _kind(config.get("head", "vq"), tuple(KINDS))
    if hasattr(kind.cls, "from_config"):
        return kind.cls.from_config(config, d_model, vocab_size)
    sizes = {**SIZES, "n_frequent": 0, **{k: v for k, v in config.items() if k in SIZES}}
    return kind.cls.build(d_model, vocab_size, sizes)


__all__ = [
    "FROM_ROWS",
    "HEADS",
    "KINDS",
    "SIZABLE",
    "SIZES",
    "WITH_MAP",
    "AdaptiveHead",
    "HeadKind",
    "IndexedHead",
    "QuantizedHead",
    "DenseHead",
    "FrequentHead",
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
    "head_from_rows",
    "kind_of",
    "rows_sizes",
    "size_for_budget",
]

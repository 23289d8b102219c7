"""Head sizes: each size's default, written once, and the rule that sizes a head to a fraction of
the dense head's parameters (each kind's own ``budget`` spends what this rule leaves it)."""

from __future__ import annotations

# The sizes a head is built from, and their defaults (training's options are read off these).
SIZES = dict(codebook_size=1024, bias=True, rank=64, token_dim=8, num_codebooks=2, n_frequent=256)


def codes(params: int, d_model: int, vocab_size: int) -> int:
    """How many d-vectors ``params`` parameters buy, in [1, V]."""
    return max(1, min(vocab_size, params // d_model))


def fit_budget(name: str, cls, budget: float, d_model: int, vocab_size: int, bias: bool = True) -> dict:
    """Sizes of a ``cls`` head (``name`` in messages) with at most ``budget`` x V d parameters.

    With P = budget * V * d: the per-token bias (V) comes first, and is dropped when it alone would
    not fit beside one code, when ``bias=False``, or when the kind has no bias (``cls.BUDGET_BIAS``).
    ``cls.budget(rest, V, d)`` spends the rest and returns (sizes, its parameters).
    """
    if not 0 < budget <= 1:
        raise ValueError(f"head_budget must be in (0, 1], got {budget!r}")
    V, d = vocab_size, d_model
    P = int(budget * V * d)
    bias = bias and cls.BUDGET_BIAS and P >= V + d
    sizes, n = cls.budget(P - (V if bias else 0), V, d)
    if cls.BUDGET_BIAS:
        sizes["bias"] = bias
    n += V if bias else 0
    if n > P:
        raise ValueError(
            f"head_budget={budget} gives {P:,} parameters, but the smallest {name} head needs {n:,} (V={V}, d={d})"
        )
    return sizes

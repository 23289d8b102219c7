"""How many clusters an ``IndexedHead`` reads, and when verified decoding pays: every choice of the
probe policy in one place, with the measurement behind it.

* ``approximate(K)``: K / 8, the smallest fraction that reached 99.9% top-1 agreement with the
  dense head on SmolLM2 / pydocs test hidden states at K = 1,024 (docs/PRETRAINED.md, "accelerate
  or compress"; ``scripts/accelerate.sh`` measures it).
* ``exact_first_round(K)``: K / 64. At d = 576 the cluster bounds certify almost nothing, so
  reading more before the certified screen only adds to its cost.
* ``draft(K, batch)``: K / 32 per row of the batch. Drafts need only agree often (verification
  makes the output exact); on SmolLM2 a quarter of K / 8's reads still agrees 97.7%. A batch keeps
  a draft only when every row agrees, so each row's misses must be about B times rarer.
* ``break_even(share)``: emitted tokens per backbone step below which verified decoding costs more
  than dense decoding.
"""

from __future__ import annotations

APPROXIMATE_FRACTION = 1 / 8


def approximate(clusters: int) -> int:
    """Clusters approximate greedy reads by default."""
    return max(1, round(APPROXIMATE_FRACTION * clusters))


def exact_first_round(clusters: int) -> int:
    """Clusters exact greedy reads before it certifies or screens."""
    return max(1, clusters // 64)


def draft(clusters: int, batch: int) -> int:
    """Clusters a verified-decoding draft reads, for a batch of ``batch`` rows (past half of them,
    the batch decodes with the dense head from the start: ``IndexedHead.draft_share``)."""
    return min(clusters, max(1, clusters // 32) * batch)


def break_even(share: float) -> float:
    """Emitted tokens per backbone step below which verified decoding costs more than dense.

    A draft the batch does not keep costs a backbone step that emits nothing. With s the head's
    share of a step's weight reads at batch 1 and a verified head that costs r of the dense head per
    token, verified costs (1 - s) / e + s r of dense at e tokens per step; r = 1/2 (the bf16
    screen's share alone, an under-estimate of what it saves) gives e* = (1 - s) / (1 - s / 2).
    """
    return (1 - share) / (1 - share / 2)

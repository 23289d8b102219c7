"""How many clusters an ``IndexedHead`` reads, and when verified decoding pays: every choice of the
probe policy in one place, with the measurement behind it.

* ``approximate(K)``: K / 8, the smallest fraction that reached 99.9% top-1 agreement with the
  dense head on SmolLM2 / pydocs test hidden states at K = 1,024 (docs/PRETRAINED.md, "accelerate
  or compress"; ``scripts/accelerate.sh`` measures it).
* ``exact_first_round(K)``: K / 64. At d = 576 the cluster bounds certify almost nothing, so
  reading more before the certified screen only adds to its cost.
* ``draft(K, batch)``: K / 32 per row at batch 1, times ceil(sqrt(B)) at batch B. Drafts need
  only agree often (verification makes the output exact); on SmolLM2 a quarter of K / 8's reads
  still agrees 97.7%. On
  Gemma-3-270M (K = 4,096; docs/pretrained/gemma/clusters.md) K / 32 agrees 99.68% (pydocs) and
  99.37% (devdocs) for 3.3 ms a draft, K / 64 99.02% and 98.56% for 2.1 ms, K / 16 99.90% and
  99.73% for 6.7 ms; end to end at batch 1 the sweep in docs/pretrained/gemma/decoding.md. A batch
  keeps a draft only when every row agrees, so a row's misses must be rarer than at batch 1, but
  the batch reads the union of its rows' probes: at batch 4 on Gemma-3-270M, end to end against
  dense fp32 (pydocs / devdocs), K / 32 a row gave 1.67× / 1.35× (devdocs kept 93.5% of drafts),
  K / 16 1.45× / 1.53×, K / 8 (K / 32 times B, the earlier rule) 1.15× / 1.25×.
* ``break_even(share)``: emitted tokens per backbone step below which verified decoding costs more
  than dense decoding.
"""

from __future__ import annotations

import math

APPROXIMATE_FRACTION = 1 / 8


def approximate(clusters: int) -> int:
    """Clusters approximate greedy reads by default."""
    return max(1, round(APPROXIMATE_FRACTION * clusters))


def exact_first_round(clusters: int) -> int:
    """Clusters exact greedy reads before it certifies or screens."""
    return max(1, clusters // 64)


def draft(clusters: int, batch: int) -> int:
    """Clusters each row's draft reads, for a batch of ``batch`` rows: K / 32 times ceil(sqrt(B))
    (the batch reads the union; past ``hf.generate.DRAFT_SHARE_MAX`` of the clusters, it decodes
    with the exact screen alone from the start: ``IndexedHead.draft_share``)."""
    return min(clusters, max(1, clusters // 32) * math.ceil(math.sqrt(batch)))


def break_even(share: float) -> float:
    """Emitted tokens per backbone step below which verified decoding costs more than dense.

    A draft the batch does not keep costs a backbone step that emits nothing. With s the head's
    share of a step's weight reads at batch 1 and a verified head that costs r of the dense head per
    token, verified costs (1 - s) / e + s r of dense at e tokens per step; r = 1/2 (the bf16
    screen's share alone, an under-estimate of what it saves) gives e* = (1 - s) / (1 - s / 2).
    """
    return (1 - share) / (1 - share / 2)

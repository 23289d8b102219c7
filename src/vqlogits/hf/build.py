"""Heads built from a pretrained model's output rows, for ``compress --head NAME``.

* ``vq``: k-means of the rows; the codebook is the centroids. With ``n_frequent`` > 0, the first
  codes are the exact rows of the most frequent tokens (singleton codes), as in ``hybrid``.
* ``hybrid``: the ``n_frequent`` most frequent tokens keep their exact rows as singleton codes;
  k-means of the other rows gives the tail codes.
* ``twolevel``: a balanced k-means of the rows (equal code sizes, because P(code | h) =
  softmax(h C^T) has no per-code size term); the codebook is the centroids, and the token vectors
  E (V, e) and projection Q (d, e) are the best rank-e least-squares fit of the rows' offsets from
  their centroids, R ~ E Q^T (truncated SVD), so e_v . (h Q) ~ h . (w_v - c_{M(v)}).
* ``hybrid-twolevel``: exact singleton codes for the frequent tokens, ``twolevel`` for the rest.
* ``quantized``: the rows themselves, ``bits`` per weight in groups of ``group_size`` (``quant``;
  ``method`` hqq or rtn).

The per-token bias starts at zero. Sizes come from ``heads.size_for_budget``, as in training.
"""

from __future__ import annotations

import torch

from ..cluster import balanced_kmeans, kmeans
from ..heads import FROM_ROWS, KINDS, HybridHead, HybridTwoLevelHead, QuantizedHead, TwoLevelHead, VQLogitsHead


def _low_rank_offsets(
    rows: torch.Tensor, centroids: torch.Tensor, assignment: torch.Tensor, rank: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """E (n, e), Q (d, e) minimising |R - E Q^T|_F with R = rows - centroids[assignment]."""
    offsets = rows - centroids[assignment]
    U, S, Vh = torch.linalg.svd(offsets, full_matrices=False)
    return U[:, :rank] * S[:rank], Vh[:rank].T


@torch.no_grad()
def head_from_rows(
    name: str,
    dense: torch.Tensor,
    sizes: dict,
    frequent: torch.Tensor | None = None,
    seed: int = 0,
    progress: bool = True,
):
    """A ``name`` head of ``sizes`` (``size_for_budget``'s keys) approximating ``dense`` (V, d).
    ``frequent``: token ids by decreasing train frequency (hybrids, and vq with ``n_frequent``).
    ``codebook_size`` counts the codes shared by the other tokens; a vq head has
    ``n_frequent + codebook_size`` codes in all."""
    if name not in FROM_ROWS:
        raise ValueError(f"head must be one of {FROM_ROWS}, got {name!r}")
    if name == "quantized":
        return QuantizedHead.from_weight(dense.float(), sizes["bits"], sizes["group_size"], sizes.get("method", "hqq"))
    dense = dense.float()
    V, d = dense.shape
    K, bias = sizes["codebook_size"], sizes.get("bias", True)
    n_freq = sizes.get("n_frequent", 0) if KINDS[name].frequent or name == "vq" else 0
    if n_freq and (frequent is None or frequent.numel() < n_freq):
        raise ValueError(f"head {name!r} needs the {n_freq} most frequent tokens (a corpus to count them on)")
    tail = torch.ones(V, dtype=torch.bool)
    if n_freq:
        tail[frequent[:n_freq]] = False
    rows = dense[tail]
    assignment = torch.empty(V, dtype=torch.long)
    if n_freq:
        assignment[frequent[:n_freq]] = torch.arange(n_freq)
    if name in ("vq", "hybrid"):
        result = kmeans(rows, K, seed=seed, progress=progress)
        head = VQLogitsHead(d, V, n_freq + K, bias=bias) if name == "vq" else HybridHead(d, V, n_freq, K, bias=bias)
        assignment[tail] = n_freq + result.assignment
        head.codebook.copy_(torch.cat([dense[frequent[:n_freq]], result.centroids]) if n_freq else result.centroids)
        head.set_assignment(assignment)
        return head
    e = sizes["token_dim"]
    codes = balanced_kmeans(rows, K, seed=seed, progress=progress)
    centroids = (
        torch.zeros(K, d).index_add_(0, codes, rows) / torch.bincount(codes, minlength=K).clamp_min(1)[:, None].float()
    )
    E, Q = _low_rank_offsets(rows, centroids, codes, e)
    head = (
        TwoLevelHead(d, V, K, e, bias=bias) if name == "twolevel" else HybridTwoLevelHead(d, V, n_freq, K, e, bias=bias)
    )
    assignment[tail] = n_freq + codes
    head.codebook.copy_(torch.cat([dense[frequent[:n_freq]], centroids]) if n_freq else centroids)
    head.proj.copy_(Q)
    head.token_vectors.zero_()
    head.token_vectors[tail] = E  # a frequent token is alone in its code: its vector does not matter
    head.set_assignment(assignment)
    return head

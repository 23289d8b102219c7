"""Helpers for heads built from a pretrained model's output rows (``from_rows``): which tokens keep
their exact rows, and the low-rank fit of the rows' offsets from their codes."""

from __future__ import annotations

import torch


def frequent_split(vocab_size: int, n_frequent: int, frequent: torch.Tensor | None, what: str):
    """(tail mask (V,), assignment (V,)): the ``n_frequent`` first tokens of ``frequent`` (token ids
    by decreasing frequency) take codes 0 .. n - 1; the tail's codes are left to the caller."""
    if n_frequent and (frequent is None or frequent.numel() < n_frequent):
        raise ValueError(f"{what} needs the {n_frequent} most frequent tokens (a corpus to count them on)")
    tail = torch.ones(vocab_size, dtype=torch.bool)
    assignment = torch.empty(vocab_size, dtype=torch.long)
    if n_frequent:
        tail[frequent[:n_frequent]] = False
        assignment[frequent[:n_frequent]] = torch.arange(n_frequent)
    return tail, assignment


def low_rank_offsets(
    rows: torch.Tensor, centroids: torch.Tensor, assignment: torch.Tensor, rank: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """E (n, e), Q (d, e) minimising |R - E Q^T|_F with R = rows - centroids[assignment] (truncated SVD)."""
    offsets = rows - centroids[assignment]
    U, S, Vh = torch.linalg.svd(offsets, full_matrices=False)
    return U[:, :rank] * S[:rank], Vh[:rank].T

"""Adaptive softmax baseline (Grave et al.), wrapping ``torch.nn.AdaptiveLogSoftmaxWithLoss``."""

from __future__ import annotations

import torch
from torch import nn

from .. import functional as VF
from .._checks import check_dims, check_hidden, check_reduction, check_targets
from .base import FullLogitsMixin


def default_cutoffs(vocab_size: int) -> list[int]:
    """Head cluster of ~V/24 tokens, then clusters of ~V/6 and the rest (Grave et al.'s shape)."""
    cuts = [max(1, vocab_size // 24), max(2, vocab_size // 6)]
    return sorted({c for c in cuts if c < vocab_size})


class AdaptiveHead(FullLogitsMixin, nn.Module):
    """Adaptive softmax over tokens ranked by frequency.

    ``AdaptiveLogSoftmaxWithLoss`` needs frequent tokens to have small ids, so tokens are
    renumbered by ``rank`` (a buffer, set with ``set_frequencies``). ``forward`` returns
    log-probabilities (..., V) in the original token order; they are valid logits.
    """

    def __init__(self, d_model: int, vocab_size: int, cutoffs=None, div_value: float = 4.0, *, validate: bool = True):
        super().__init__()
        check_dims(d_model, vocab_size)
        self.d_model, self.vocab_size, self.validate = d_model, vocab_size, validate
        cutoffs = cutoffs or default_cutoffs(vocab_size)
        while d_model // div_value ** len(cutoffs) < 1:  # the last cluster keeps at least one dimension
            div_value = max(1.0, div_value * 0.8)
        self.asm = nn.AdaptiveLogSoftmaxWithLoss(d_model, vocab_size, cutoffs, div_value)
        self.register_buffer("rank", torch.arange(vocab_size))  # token id -> frequency rank

    UNUSED_PARAMETERS = True  # a batch may reach no token of a tail cluster: DDP must not wait for its gradients

    @classmethod
    def build(cls, d_model: int, vocab_size: int, sizes: dict) -> "AdaptiveHead":
        return cls(d_model, vocab_size)

    def set_frequencies(self, counts: torch.Tensor) -> None:
        if tuple(counts.shape) != (self.vocab_size,):
            raise ValueError(f"counts must have shape ({self.vocab_size},), got {tuple(counts.shape)}")
        order = torch.sort(counts, descending=True, stable=True).indices
        self.rank[order] = torch.arange(self.vocab_size, device=self.rank.device)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        check_hidden(h, self.d_model)
        logp = self.asm.log_prob(h.reshape(-1, self.d_model))  # (N, V) in rank order
        return logp[:, self.rank].reshape(*h.shape[:-1], self.vocab_size)

    def loss(self, h, targets, ignore_index: int = -100, reduction: str = "mean") -> torch.Tensor:
        check_hidden(h, self.d_model)
        check_targets(targets, h, self.vocab_size, ignore_index, self.validate)
        check_reduction(reduction)
        flat = targets.reshape(-1)
        valid = flat != ignore_index
        # Every row goes through the module so shapes stay static; ignored rows are masked after.
        out = self.asm(h.reshape(-1, self.d_model), self.rank[torch.where(valid, flat, 0)]).output
        return VF.reduce_loss(torch.where(valid, -out, torch.zeros_like(out)), valid, reduction, targets.shape)

    def loss_flops(self, targets: torch.Tensor) -> int:
        """Matmul FLOPs of ``loss`` forward + backward: the head cluster for every row, and a tail
        cluster's two projections only for the rows whose target is in it; each x 3."""
        asm, d = self.asm, self.d_model
        ranks = self.rank[targets.reshape(-1).clamp(min=0)]
        flops = 2 * ranks.numel() * d * asm.head_size
        for i, tail in enumerate(asm.tail):
            rows = int(((ranks >= asm.cutoffs[i]) & (ranks < asm.cutoffs[i + 1])).sum())
            hidden, size = tail[0].out_features, tail[1].out_features
            flops += 2 * rows * hidden * (d + size)
        return 3 * flops

    def decode_cost(self) -> dict:
        """Full log-probabilities (head cluster + every tail cluster), as ``forward`` computes them."""
        n = sum(p.numel() for p in self.parameters())
        return {"flops": 2 * n, "bytes": 4 * n}

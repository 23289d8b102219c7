"""Factorised baseline head: ``logits = (h @ down.T) @ up.T``, a V x r by r x d product."""

from __future__ import annotations

import torch
from torch import nn

from .._checks import check_hidden, check_state_shapes
from .dense import DenseHead


class LowRankHead(DenseHead):
    """Rank-r output matrix ``up @ down`` (V x r times r x d). Same interface as ``DenseHead``."""

    def __init__(self, d_model: int, vocab_size: int, rank: int, bias: bool = False, *, validate: bool = True):
        if not isinstance(rank, int) or not 1 <= rank <= d_model:
            raise ValueError(f"rank must be an int in [1, d_model={d_model}], got {rank!r}")
        super().__init__(d_model, vocab_size, bias=bias, validate=validate)
        del self.weight
        self.rank = rank
        self.down = nn.Parameter(torch.randn(rank, d_model) * d_model**-0.5)
        self.up = nn.Parameter(torch.randn(vocab_size, rank) * 0.02)

    BUDGET_BIAS = False

    @classmethod
    def build(cls, d_model: int, vocab_size: int, sizes: dict) -> "LowRankHead":
        return cls(d_model, vocab_size, sizes["rank"])

    @staticmethod
    def budget(rest: int, vocab_size: int, d_model: int) -> tuple[dict, int]:
        """r = rest / (V + d)."""
        r = max(1, min(d_model, rest // (vocab_size + d_model)))
        return {"rank": r}, r * (vocab_size + d_model)

    @property
    def weight(self) -> torch.Tensor:  # (V, d), for code that wants the full matrix
        return self.up @ self.down

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        check_hidden(h, self.d_model)
        out = (h @ self.down.T) @ self.up.T  # (..., r) -> (..., V)
        return out if self.bias is None else out + self.bias

    def loss_flops(self, targets: torch.Tensor) -> int:
        """Matmul FLOPs of ``loss`` forward + backward: ``(h D^T) U^T`` and its gradients."""
        return 6 * targets.numel() * self.rank * (self.d_model + self.vocab_size)

    def decode_cost(self) -> dict:
        V, d, r = self.vocab_size, self.d_model, self.rank
        return {"flops": 2 * r * (d + V), "bytes": 4 * r * (d + V)}

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        check_state_shapes(state_dict, prefix, {"down": self.down.shape, "up": self.up.shape})
        nn.Module._load_from_state_dict(self, state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, vocab_size={self.vocab_size}, rank={self.rank}"

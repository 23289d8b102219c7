"""VQ plus a low-rank per-token residual, and residual (multi-codebook) VQ."""

from __future__ import annotations

import torch
from torch import nn

from .._checks import check_assignment, check_dims, check_hidden
from ..cluster import balanced_assignment
from .base import FullLogitsMixin
from .sizes import codes
from .vq import VQLogitsHead


class VQLowRankHead(FullLogitsMixin, nn.Module):
    """``logit_v = z[M(v)] + b_v + (h @ down.T) . up_v``: VQ-Logits with a rank-r per-token residual.

    The residual lets the context separate tokens that share a code. Its normaliser needs all V
    logits, so the loss is exact over row chunks, O(N * V * r) work, chunk x V memory.
    """

    def __init__(
        self, d_model: int, vocab_size: int, codebook_size: int, rank: int, bias: bool = True, *, validate: bool = True
    ):
        super().__init__()
        if not isinstance(rank, int) or not 1 <= rank <= d_model:
            raise ValueError(f"rank must be an int in [1, d_model={d_model}], got {rank!r}")
        self.vq = VQLogitsHead(d_model, vocab_size, codebook_size, bias, validate=validate)
        self.d_model, self.vocab_size, self.validate, self.rank = d_model, vocab_size, validate, rank
        self.down = nn.Parameter(torch.randn(rank, d_model) * d_model**-0.5)
        self.up = nn.Parameter(torch.zeros(vocab_size, rank))  # starts as the plain VQ head

    BUDGET_BIAS = True

    @classmethod
    def build(cls, d_model: int, vocab_size: int, sizes: dict) -> "VQLowRankHead":
        return cls(d_model, vocab_size, sizes["codebook_size"], sizes["rank"], bias=sizes["bias"])

    @staticmethod
    def budget(rest: int, vocab_size: int, d_model: int) -> tuple[dict, int]:
        """r = rest / (4 (V + d)) (at least 1), the rest codes."""
        V, d = vocab_size, d_model
        r = max(1, min(d, rest // (4 * (V + d))))
        K = codes(rest - r * (V + d), d, V)
        return {"rank": r, "codebook_size": K}, K * d + r * (V + d)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.vq(h) + (h @ self.down.T) @ self.up.T  # (..., V)

    def decode_cost(self) -> dict:
        """The residual term needs every token's r-vector: O(V r) per token."""
        vq, V, d, r = self.vq.decode_cost(), self.vocab_size, self.d_model, self.rank
        return {"flops": vq["flops"] + 2 * r * (d + V) + V, "bytes": vq["bytes"] + 4 * r * (d + V) + 12 * V}

    def loss(self, h, targets, ignore_index: int = -100, reduction: str = "mean"):
        return self.chunked_loss(h, targets, ignore_index, reduction)

    def loss_flops(self, targets: torch.Tensor) -> int:
        """Matmul FLOPs of ``loss`` forward + backward: code logits and the rank-r residual, x 4
        (the chunked loss recomputes its forward in backward)."""
        return (
            8 * targets.numel() * (self.vq.codebook_size * self.d_model + self.rank * (self.d_model + self.vocab_size))
        )


class RVQHead(FullLogitsMixin, nn.Module):
    """Residual VQ: ``logit_v = sum_m (h @ C_m.T)[c_m(v)] + b_v`` with ``num_codebooks`` maps.

    Map 0 deals tokens round-robin by id, map m > 0 a seeded random balanced permutation, so
    two tokens rarely share every code. The loss is exact over row chunks, O(N * V * M).
    """

    def __init__(
        self,
        d_model: int,
        vocab_size: int,
        codebook_size: int,
        num_codebooks: int = 2,
        bias: bool = True,
        *,
        validate: bool = True,
    ):
        super().__init__()
        check_dims(d_model, vocab_size, codebook_size)
        if not isinstance(num_codebooks, int) or num_codebooks < 1:
            raise ValueError(f"num_codebooks must be an int >= 1, got {num_codebooks!r}")
        self.d_model, self.vocab_size, self.validate = d_model, vocab_size, validate
        self.codebooks = nn.Parameter(torch.randn(num_codebooks, codebook_size, d_model) * 0.02)
        g = torch.Generator().manual_seed(0)
        maps = [balanced_assignment(vocab_size, codebook_size)]
        maps += [
            balanced_assignment(vocab_size, codebook_size, torch.randperm(vocab_size, generator=g))
            for _ in range(num_codebooks - 1)
        ]
        self.register_buffer("assignments", torch.stack(maps))  # (M, V)
        self.bias = nn.Parameter(torch.zeros(vocab_size)) if bias else None

    BUDGET_BIAS = True

    @classmethod
    def build(cls, d_model: int, vocab_size: int, sizes: dict) -> "RVQHead":
        return cls(d_model, vocab_size, sizes["codebook_size"], sizes["num_codebooks"], bias=sizes["bias"])

    @staticmethod
    def budget(rest: int, vocab_size: int, d_model: int) -> tuple[dict, int]:
        """2 codebooks share the codes."""
        K = max(1, codes(rest, d_model, vocab_size) // 2)
        return {"codebook_size": K, "num_codebooks": 2}, 2 * K * d_model

    def set_assignment(self, assignment: torch.Tensor, codebook: int) -> None:
        """Replace codebook ``codebook``'s token -> code map (validated like ``VQLogitsHead``'s)."""
        M, K, _ = self.codebooks.shape
        if not isinstance(codebook, int) or not 0 <= codebook < M:
            raise ValueError(f"codebook must be an int in [0, {M}), got {codebook!r}")
        check_assignment(assignment, self.vocab_size, K)
        with torch.no_grad():
            self.assignments[codebook].copy_(assignment)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        check_hidden(h, self.d_model)
        z = torch.einsum("...d,mkd->m...k", h, self.codebooks)  # (M, ..., K)
        out = z[0].index_select(-1, self.assignments[0])  # (..., V)
        for m in range(1, z.shape[0]):  # in place: one (..., V) buffer, not M + 1 (allocation dominates on CPU)
            out.add_(z[m].index_select(-1, self.assignments[m]))
        return out if self.bias is None else out.add_(self.bias)

    def loss(self, h, targets, ignore_index: int = -100, reduction: str = "mean"):
        return self.chunked_loss(h, targets, ignore_index, reduction)

    def loss_flops(self, targets: torch.Tensor) -> int:
        """Matmul FLOPs of ``loss`` forward + backward: M code-logit products, x 4 (the chunked
        loss recomputes its forward in backward)."""
        M, K, d = self.codebooks.shape
        return 8 * targets.numel() * M * K * d

    def decode_cost(self) -> dict:
        """Code logits of every codebook, then one add per codebook and token."""
        M, K, d = self.codebooks.shape
        V = self.vocab_size
        return {"flops": 2 * M * K * d + M * V, "bytes": 4 * M * K * d + 8 * M * V + 4 * V}

"""The full-softmax baseline head, with the same interface as the VQ heads."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import functional as VF
from .._checks import check_dims, check_hidden, check_reduction, check_state_shapes, check_targets
from .base import FullLogitsMixin


class DenseHead(FullLogitsMixin, nn.Module):
    """``logits = h @ weight.T (+ bias)``, weight (V, d): the ordinary LM head."""

    def __init__(
        self, d_model: int, vocab_size: int, bias: bool = False, *, validate: bool = True, device=None, dtype=None
    ):
        super().__init__()
        check_dims(d_model, vocab_size)
        self.d_model, self.vocab_size, self.validate = d_model, vocab_size, validate
        self.weight = nn.Parameter(torch.empty(vocab_size, d_model, device=device, dtype=dtype))
        nn.init.normal_(self.weight, std=0.02)
        if bias:
            self.bias = nn.Parameter(torch.zeros(vocab_size, device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)

    @classmethod
    def build(cls, d_model: int, vocab_size: int, sizes: dict) -> "DenseHead":
        return cls(d_model, vocab_size)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        check_hidden(h, self.d_model)
        return F.linear(h, self.weight, self.bias)

    def loss(self, h, targets, ignore_index: int = -100, reduction: str = "mean") -> torch.Tensor:
        """``F.cross_entropy(self(h).flatten(0, -2), targets.flatten(), ...)``, computed in at least fp32."""
        check_hidden(h, self.d_model)
        check_targets(targets, h, self.vocab_size, ignore_index, self.validate)
        check_reduction(reduction)
        logits = self(h).flatten(0, -2)
        logits = logits.to(VF.compute_dtype(logits.dtype))
        loss = F.cross_entropy(logits, targets.flatten(), ignore_index=ignore_index, reduction=reduction)
        return loss.reshape(targets.shape) if reduction == "none" else loss

    def loss_flops(self, targets: torch.Tensor) -> int:
        """Matmul FLOPs of ``loss(h, targets)`` forward + backward (N = targets.numel() rows):
        ``h W^T`` and its two gradients."""
        return 6 * targets.numel() * self.vocab_size * self.d_model

    def decode_cost(self) -> dict:
        """Greedy decoding of one token: multiply-adds x2 and bytes of weights read (fp32)."""
        V, d = self.vocab_size, self.d_model
        return {"flops": 2 * V * d, "bytes": 4 * V * d + (0 if self.bias is None else 4 * V)}

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        expected = {"weight": self.weight.shape}
        if self.bias is not None:
            expected["bias"] = (self.vocab_size,)
        check_state_shapes(state_dict, prefix, expected)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, vocab_size={self.vocab_size}, bias={self.bias is not None}"

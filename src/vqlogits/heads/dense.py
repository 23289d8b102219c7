"""The full-softmax baseline head, with the same interface as the VQ heads."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import functional as VF
from .._checks import check_dims, check_hidden, check_reduction, check_sampling, check_state_shapes, check_targets


class DenseHead(nn.Module):
    """``logits = h @ weight.T (+ bias)``, weight (V, d): the ordinary LM head."""

    def __init__(self, d_model: int, vocab_size: int, bias: bool = False, *, validate: bool = True, device=None, dtype=None):
        super().__init__()
        check_dims(d_model, vocab_size)
        self.d_model, self.vocab_size, self.validate = d_model, vocab_size, validate
        self.weight = nn.Parameter(torch.empty(vocab_size, d_model, device=device, dtype=dtype))
        nn.init.normal_(self.weight, std=0.02)
        if bias:
            self.bias = nn.Parameter(torch.zeros(vocab_size, device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)

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

    @torch.no_grad()
    def greedy(self, h: torch.Tensor) -> torch.Tensor:
        return self(h).argmax(-1)

    @torch.no_grad()
    def sample(self, h, temperature: float = 1.0, top_k=None, top_p=None, generator=None) -> torch.Tensor:
        check_sampling(temperature, top_k, top_p)
        return VF.sample_logits(self(h), temperature, top_k, top_p, generator)

    @torch.no_grad()
    def sampling_probs(self, h, temperature: float = 1.0, top_k=None, top_p=None) -> torch.Tensor:
        check_sampling(temperature, top_k, top_p)
        return VF.sampling_probs(self(h), temperature, top_k, top_p)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        expected = {"weight": self.weight.shape}
        if self.bias is not None:
            expected["bias"] = (self.vocab_size,)
        check_state_shapes(state_dict, prefix, expected)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, vocab_size={self.vocab_size}, bias={self.bias is not None}"

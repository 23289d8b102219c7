"""Shared decoding for heads whose exact distribution needs the full (N, V) logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .. import functional as VF
from .._checks import check_hidden, check_reduction, check_sampling, check_targets
from ..kernels import first_argmax


class FullLogitsMixin:
    """greedy / sample / sampling_probs / a row-chunked exact loss, all from ``self.forward``.

    The sampling is the reference one (``functional.sample_logits``), so it is exact by
    construction; it costs the full logits of the rows being decoded.
    """

    loss_chunk_rows = 1024

    @torch.no_grad()
    def greedy(self, h: torch.Tensor) -> torch.Tensor:
        return first_argmax(self(h))

    @torch.no_grad()
    def sample(self, h, temperature: float = 1.0, top_k=None, top_p=None, generator=None) -> torch.Tensor:
        check_sampling(temperature, top_k, top_p)
        return VF.sample_logits(self(h), temperature, top_k, top_p, generator)

    @torch.no_grad()
    def sampling_probs(self, h, temperature: float = 1.0, top_k=None, top_p=None) -> torch.Tensor:
        check_sampling(temperature, top_k, top_p)
        return VF.sampling_probs(self(h), temperature, top_k, top_p)

    def chunked_loss(self, h, targets, ignore_index: int = -100, reduction: str = "mean") -> torch.Tensor:
        """``F.cross_entropy(self(h), targets)``, ``loss_chunk_rows`` rows at a time, recomputed in
        backward (activation checkpointing), so memory is chunk x V instead of N x V."""
        check_hidden(h, self.d_model)
        check_targets(targets, h, self.vocab_size, ignore_index, self.validate)
        check_reduction(reduction)
        flat_h, flat_t = h.reshape(-1, self.d_model), targets.reshape(-1)

        def rows(h_c, t_c):
            logits = self(h_c)
            return F.cross_entropy(
                logits.to(VF.compute_dtype(logits.dtype)), t_c, ignore_index=ignore_index, reduction="none"
            )

        parts = []
        for s in range(0, flat_h.shape[0], self.loss_chunk_rows):
            h_c, t_c = flat_h[s : s + self.loss_chunk_rows], flat_t[s : s + self.loss_chunk_rows]
            parts.append(checkpoint(rows, h_c, t_c, use_reentrant=False) if torch.is_grad_enabled() else rows(h_c, t_c))
        loss = torch.cat(parts) if parts else flat_h.new_zeros(0)
        return VF.reduce_loss(loss, flat_t != ignore_index, reduction, targets.shape)

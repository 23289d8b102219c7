"""Draft and verification for an ``IndexedHead``: the one accept / reject rule behind exact
sampling (``IndexedHead.sample(exact=True)``) and verified decoding (``hf.generate``).

Greedy: a draft is kept when it equals the exact argmax. Sampling: speculative sampling
(``functional.speculative_sample``) keeps a draft v drawn from the proposal q with probability
min(1, p(v) / q(v)) and otherwise draws from the residual max(p - q, 0): exactly p for any q.
"""

from __future__ import annotations

import torch

from ..functional import sampling_probs, speculative_sample


def draft_sample(head, h: torch.Tensor, filters: dict, probes: int | None, generator=None):
    """A draft per row of h (N, d) from the approximate logits, and its proposal q (N, V)."""
    q = head.proposal(h, probes=probes, **filters)
    return torch.multinomial(q, 1, generator=generator).squeeze(1), q


def dense_probs(head, h: torch.Tensor, filters: dict) -> torch.Tensor:
    """The dense model's sampling distribution, (N, V): ``sampling_probs(h @ W.T, **filters)``."""
    return sampling_probs(head.dense_logits(h), **filters)


def accept(p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor, generator=None):
    """(tokens (N,), accepted (N,)): each draft kept or replaced so that tokens ~ p exactly."""
    return speculative_sample(p, q, drafts, generator)


def verify_block(head, hiddens, drafts, proposals, filters: dict | None, generator=None):
    """The dense model's tokens for a block of drafts, and how many leading drafts each row keeps.

    hiddens (B, k + 1, d): the states before each draft and after the last; drafts (B, k);
    proposals (B, k, V) for sampling, None for greedy (``filters`` None). Returns (tokens (B, k + 1),
    kept (B,)): tokens[:, :kept] are the kept drafts, tokens[:, kept] the dense model's own next
    token. Every row's dense logits come from one pass (the bf16 screen, or one GEMM)."""
    B, k1, d = hiddens.shape
    k = k1 - 1
    flat = hiddens.reshape(-1, d)
    if filters is None:
        dense = head.exact_argmax(flat)[0].view(B, k1)
        agree = dense[:, :k] == drafts
    else:
        p = dense_probs(head, flat, filters).view(B, k1, -1)
        q = proposals.reshape(B * k, -1)
        tokens, agree = accept(p[:, :k].reshape(B * k, -1), q, drafts.reshape(-1), generator)
        after = torch.multinomial(p[:, k], 1, generator=generator)  # (B, 1): after k kept drafts
        dense, agree = torch.cat([tokens.view(B, k), after], 1), agree.view(B, k)
    kept = torch.where(agree.all(1), k, (~agree).int().argmax(1))  # (B,)
    return dense, kept

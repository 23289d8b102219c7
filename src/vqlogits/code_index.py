"""Exact greedy decoding and sampling for heads whose logits are ``z[M[v]] + b[v]``, in code space.

Tokens are laid out code by code, and inside a code by descending bias (ties by ascending id).
A token's score is monotone in its bias inside a code, so any score threshold keeps a *prefix*
of every code. That gives:

* greedy: argmax over codes of ``z_k + max bias``, then the code's first token. O(N*K).
* sampling: P(code) is the code's softmax mass, P(token | code) ∝ exp(b_v / T) does not depend
  on the context, so a code is drawn first and then a token by inverse CDF over a V-sized table.
* top-k / top-p: the tie-inclusive threshold is found by bisection over the ordered bit patterns
  of the score dtype (at most 33 steps in fp32); each step counts, per code, how many tokens pass
  (a binary search inside the code). O(N*K*log(L)) per step, L the largest code; nothing (N, V).

Scores are computed exactly as the reference does, ``(z + b).to(z.dtype).float() / T``, so the
kept set is bit-for-bit the reference's.
"""

from __future__ import annotations

import math

import torch

from .functional import compute_dtype

_INT_OF = {torch.float32: torch.int32, torch.float64: torch.int64}


def _to_key(x: torch.Tensor) -> torch.Tensor:
    """Map floats to ints of the same width with the same order (-0.0 sorts just below +0.0)."""
    bits = x.view(_INT_OF[x.dtype])
    magnitude = bits & torch.iinfo(bits.dtype).max
    return torch.where(bits < 0, -magnitude - 1, bits)


def _from_key(key: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    bits = torch.where(key < 0, (-(key + 1)) | torch.iinfo(key.dtype).min, key)
    return bits.view(dtype)


def _midpoint(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    return lo // 2 + hi // 2 + (lo % 2 + hi % 2) // 2  # floor((lo+hi)/2) without overflow


class CodeIndex:
    """Tokens sorted by (code, -bias, id), with per-code offsets. Built once per (assignment, bias)."""

    def __init__(self, assignment: torch.Tensor, num_codes: int, bias: torch.Tensor | None):
        assignment = assignment.detach()
        self.vocab_size = assignment.numel()
        if bias is None:
            self.perm = torch.argsort(assignment, stable=True)  # (V,)
            self.sorted_bias = None
        else:
            by_bias = torch.sort(bias.detach(), descending=True, stable=True).indices
            self.perm = by_bias[torch.argsort(assignment[by_bias], stable=True)]
            self.sorted_bias = bias.detach()[self.perm]  # (V,)
        self.counts = torch.bincount(assignment, minlength=num_codes)  # (K,)
        self.first = torch.cumsum(self.counts, 0) - self.counts  # (K,) start of each code
        self.max_count = int(self.counts.max())
        head = self.first.clamp(max=self.vocab_size - 1)
        self.best_token = torch.where(self.counts > 0, self.perm[head], self.vocab_size)  # (K,)
        if bias is not None:
            self.max_bias = self.sorted_bias[head]  # (K,)
            self.min_bias = self.sorted_bias[(self.first + self.counts - 1).clamp(min=0)]  # (K,)
        best = self.max_bias.float() if bias is not None else torch.zeros(num_codes, device=assignment.device)
        self.best_bias = self._empty_to(best, float("-inf"))  # (K,) fp32: a code's best token's bias
        self._cum_weights: dict[float, torch.Tensor] = {}

    # -- scores, exactly as the reference computes them ------------------------------------
    def _score(self, z: torch.Tensor, b: torch.Tensor | None, temperature: float) -> torch.Tensor:
        logit = z if b is None else (z + b).to(z.dtype)
        return logit.to(compute_dtype(z.dtype)) / temperature

    def _empty_to(self, x: torch.Tensor, value: float) -> torch.Tensor:
        return x.masked_fill(self.counts == 0, value)

    def best_scores(self, z: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """Largest score inside each code, (N, K); -inf for empty codes."""
        b = None if self.sorted_bias is None else self.max_bias
        return self._empty_to(self._score(z, b, temperature), float("-inf"))

    # -- greedy -----------------------------------------------------------------------------
    def greedy(self, z: torch.Tensor) -> torch.Tensor:
        """argmax over the full logits, ties to the smallest token id (as ``torch.argmax``). (N, K) -> (N,)."""
        b = None if self.sorted_bias is None else self.max_bias
        best = self._empty_to(z if b is None else (z + b).to(z.dtype), float("-inf"))  # (N, K)
        top = best.max(dim=-1, keepdim=True).values
        hit = (best == top) | best.isnan()  # argmax returns the first NaN, if any
        candidates = torch.where(hit, self.best_token, self.vocab_size)  # (N, K)
        return candidates.min(dim=-1).values

    # -- counting tokens above a threshold ----------------------------------------------------
    def counts_at_least(self, z: torch.Tensor, tau: torch.Tensor, temperature: float) -> torch.Tensor:
        """Per code, how many of its tokens score >= tau (a prefix of the code). (N, K), tau (N,)."""
        tau = tau.unsqueeze(-1)
        if self.sorted_bias is None:
            return torch.where(self._score(z, None, temperature) >= tau, self.counts, 0)
        lo = torch.zeros_like(z, dtype=torch.long)
        hi = self.counts.expand_as(lo).clone()
        for _ in range(math.ceil(math.log2(self.max_count + 1))):
            active = lo < hi
            mid = (lo + hi) // 2
            pos = (self.first + mid).clamp(max=self.vocab_size - 1)
            ok = self._score(z, self.sorted_bias[pos], temperature) >= tau
            lo = torch.where(active & ok, mid + 1, lo)
            hi = torch.where(active & ~ok, mid, hi)
        return lo

    def cum_weights(self, temperature: float) -> torch.Tensor:
        """(V+1,) fp64 running sum of exp((b_v - max_b of its code) / T) in sorted order."""
        if temperature not in self._cum_weights:
            if self.sorted_bias is None:
                w = torch.ones(self.vocab_size, dtype=torch.float64, device=self.perm.device)
            else:
                code_max = torch.repeat_interleave(self.max_bias, self.counts, output_size=self.vocab_size)
                w = torch.exp((self.sorted_bias.double() - code_max.double()) / temperature)
            if len(self._cum_weights) >= 8:
                self._cum_weights.clear()
            self._cum_weights[temperature] = torch.cat([w.new_zeros(1), w.cumsum(0)])
        return self._cum_weights[temperature]

    def code_log_weights(self, z: torch.Tensor, kept: torch.Tensor, temperature: float) -> torch.Tensor:
        """log of the unnormalised probability mass each code keeps, (N, K), fp64, row max 0-shifted."""
        cum = self.cum_weights(temperature)
        prefix = cum[self.first + kept] - cum[self.first]  # (N, K)
        best = self.best_scores(z, temperature).double()
        best = best - best.max(dim=-1, keepdim=True).values
        return torch.where(kept > 0, best + torch.log(prefix), float("-inf"))

    def _threshold(self, z, temperature, mass_at, target) -> torch.Tensor:
        """Per row, the largest tau with mass_at(tau) >= target (mass_at non-increasing)."""
        best = self.best_scores(z, temperature)
        low_bias = None if self.sorted_bias is None else self.min_bias
        worst = self._empty_to(self._score(z, low_bias, temperature), float("inf"))
        lo = _to_key(worst.min(dim=-1).values)  # everything passes: mass_at(lo) >= target
        hi = _to_key(best.max(dim=-1).values) + 1  # nothing passes: mass_at(hi) < target
        # A fixed step count (the key width + 1 halvings always converge) keeps the loop free of
        # data-dependent control flow, so torch.compile traces it without graph breaks.
        for _ in range(torch.iinfo(lo.dtype).bits + 1):
            mid = _midpoint(lo, hi)  # == lo once converged, and lo passes: a fixed point
            ok = mass_at(_from_key(mid, best.dtype)) >= target
            lo = torch.where(ok, mid, lo)
            hi = torch.where(ok, hi, mid)
        return _from_key(lo, best.dtype)

    def kept_counts(self, z, temperature=1.0, top_k=None, top_p=None) -> torch.Tensor:
        """How many tokens of each code survive temperature, top-k and top-p filtering, (N, K)."""
        kept = self.counts.expand(z.shape[0], -1)
        floor = None
        if top_k is not None and top_k < self.vocab_size:
            floor = self._threshold(z, temperature, lambda t: self.counts_at_least(z, t, temperature).sum(-1), top_k)
            kept = self.counts_at_least(z, floor, temperature)
        if top_p is not None and top_p < 1:

            def mass_at(tau):
                tau = tau if floor is None else torch.maximum(tau, floor)
                return self.code_log_weights(z, self.counts_at_least(z, tau, temperature), temperature).exp().sum(-1)

            total = self.code_log_weights(z, kept, temperature).exp().sum(-1)
            kept = self.counts_at_least(z, self._threshold(z, temperature, mass_at, top_p * total), temperature)
        return kept

    # -- sampling -----------------------------------------------------------------------------
    def sample(self, z, temperature=1.0, top_k=None, top_p=None, generator=None) -> torch.Tensor:
        """Draw one token per row from the filtered softmax, (N, K) -> (N,)."""
        kept = self.kept_counts(z, temperature, top_k, top_p)
        log_w = self.code_log_weights(z, kept, temperature)  # (N, K)
        code = torch.multinomial(log_w.exp(), 1, generator=generator).squeeze(-1)  # (N,)
        start, n = self.first[code], kept.gather(-1, code.unsqueeze(-1)).squeeze(-1)
        cum = self.cum_weights(temperature)
        u = torch.rand(code.shape, generator=generator, dtype=torch.float64, device=z.device)
        target = cum[start] + u * (cum[start + n] - cum[start])
        pos = torch.searchsorted(cum, target, right=True) - 1
        pos = torch.minimum(torch.maximum(pos, start), start + n - 1)
        return self.perm[pos]

    def dense_probs(self, z, temperature=1.0, top_k=None, top_p=None) -> torch.Tensor:
        """The distribution ``sample`` draws from, expanded to (N, V). For tests and inspection only."""
        kept = self.kept_counts(z, temperature, top_k, top_p)
        log_w = self.code_log_weights(z, kept, temperature)
        code_p = torch.softmax(log_w, dim=-1)  # (N, K)
        cum = self.cum_weights(temperature)
        w = cum[1:] - cum[:-1]  # (V,) sorted order
        code_of = torch.repeat_interleave(torch.arange(len(self.counts), device=z.device), self.counts)
        rank = torch.arange(self.vocab_size, device=z.device) - self.first[code_of]
        total = (cum[self.first + kept] - cum[self.first]).gather(-1, code_of.expand(z.shape[0], -1))
        inside = rank < kept.gather(-1, code_of.expand(z.shape[0], -1))
        p_sorted = torch.where(inside, code_p[:, code_of] * w / total, 0.0)
        return torch.zeros_like(p_sorted).scatter_(-1, self.perm.expand_as(p_sorted), p_sorted)

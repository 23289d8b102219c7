"""Hybrid heads: exact rows for the most frequent tokens, shared codes (VQ or two-level) for the tail."""

from __future__ import annotations

import torch

from ..cluster import balanced_assignment
from .sizes import codes
from .twolevel import TwoLevelHead
from .vq import VQLogitsHead


def _check_split(n_frequent, codebook_size, vocab_size) -> None:
    if not isinstance(n_frequent, int) or not 0 <= n_frequent < vocab_size or n_frequent + codebook_size > vocab_size:
        raise ValueError(
            "n_frequent must be an int with 0 <= n_frequent and n_frequent + codebook_size <="
            f" vocab_size={vocab_size}, got {n_frequent!r}"
        )


class FrequentCodes:
    """The map of a hybrid head: codes ``0 .. n_frequent - 1`` each hold one frequent token, the
    ``tail_codes`` codes after them share the rest."""

    n_frequent: int
    tail_codes: int
    FREQUENT_ROWS = True

    def set_frequencies(self, counts: torch.Tensor) -> None:
        """Choose the frequent tokens by ``counts`` (V,); the tail is dealt to the tail codes
        interleaved by frequency, so every tail code gets frequent and rare tokens alike."""
        if tuple(counts.shape) != (self.vocab_size,):
            raise ValueError(f"counts must have shape ({self.vocab_size},), got {tuple(counts.shape)}")
        order = torch.sort(counts.cpu(), descending=True, stable=True).indices
        tail = balanced_assignment(self.vocab_size - self.n_frequent, self.tail_codes) + self.n_frequent
        assignment = torch.empty(self.vocab_size, dtype=torch.long)
        assignment[order[: self.n_frequent]] = torch.arange(self.n_frequent)
        assignment[order[self.n_frequent :]] = tail
        self.set_assignment(assignment.to(self.assignment.device))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", n_frequent={self.n_frequent}"

    ROW_OPTIONS = ("codebook_size", "exact_tokens", "head_budget", "part_bits")

    def config(self) -> dict:
        return {"bias": self.bias is not None, "n_frequent": self.n_frequent, "codebook_size": self.tail_codes}

    @classmethod
    def rows_sizes(cls, options: dict) -> dict:
        """compress's options without a budget: ``exact_tokens`` frequent tokens, ``codebook_size`` tail codes."""
        if not isinstance(options["exact_tokens"], int) or options["exact_tokens"] < 1:
            raise ValueError(
                f"a {cls.__name__} without --head-budget needs exact_tokens >= 1 (its frequent tokens),"
                f" got {options['exact_tokens']!r}"
            )
        keys = ("codebook_size", "bias", "token_dim")
        return {**{k: options[k] for k in keys}, "n_frequent": options["exact_tokens"]}

    @staticmethod
    def split(total: int) -> dict:
        """A budget's codes: half exact rows for the frequent tokens, half tail codes."""
        total = max(2, total)
        return {"n_frequent": total // 2, "codebook_size": total - total // 2}


class HybridHead(FrequentCodes, VQLogitsHead):
    """A VQ head whose first ``n_frequent`` codes each hold one frequent token.

    A singleton code's vector is that token's own output row, so the frequent tokens get exact
    dense logits, and the loss, greedy, sampling and top-k / top-p machinery of ``VQLogitsHead``
    stays exact and O(n_frequent + K) unchanged. Call ``set_frequencies(counts)`` to choose the
    frequent tokens (default: the smallest ids, which BPE vocabularies give to frequent merges).
    """

    def __init__(
        self,
        d_model: int,
        vocab_size: int,
        n_frequent: int,
        codebook_size: int,
        bias: bool = True,
        *,
        validate: bool = True,
    ):
        _check_split(n_frequent, codebook_size, vocab_size)
        super().__init__(d_model, vocab_size, n_frequent + codebook_size, bias, validate=validate)
        self.n_frequent, self.tail_codes = n_frequent, codebook_size
        self.set_frequencies(torch.arange(vocab_size, 0, -1))

    @classmethod
    def build(cls, d_model: int, vocab_size: int, sizes: dict) -> "HybridHead":
        return cls(d_model, vocab_size, sizes["n_frequent"], sizes["codebook_size"], bias=sizes["bias"])

    @staticmethod
    def budget(rest: int, vocab_size: int, d_model: int) -> tuple[dict, int]:
        """Half the codes exact rows for frequent tokens, half tail codes."""
        sizes = FrequentCodes.split(codes(rest, d_model, vocab_size))
        return sizes, (sizes["n_frequent"] + sizes["codebook_size"]) * d_model

    @classmethod
    def with_frequent(cls, d_model: int, vocab_size: int, n_frequent: int, codebook_size: int, bias: bool):
        return cls(d_model, vocab_size, n_frequent, codebook_size, bias=bias)


class HybridTwoLevelHead(FrequentCodes, TwoLevelHead):
    """A two-level head whose first ``n_frequent`` codes each hold one frequent token.

    For a singleton code P(v | h) = P(code | h), a dense softmax logit; the tail tokens share the
    remaining codes with context-dependent ranking inside them. Everything else, including the
    exact O(K d + L e) loss and the exact greedy, is ``TwoLevelHead``'s.
    """

    ROW_OPTIONS = ("codebook_size", "exact_tokens", "token_dim", "head_budget", "part_bits")

    def __init__(
        self,
        d_model: int,
        vocab_size: int,
        n_frequent: int,
        codebook_size: int,
        token_dim: int = 8,
        bias: bool = True,
        *,
        validate: bool = True,
    ):
        _check_split(n_frequent, codebook_size, vocab_size)
        super().__init__(d_model, vocab_size, n_frequent + codebook_size, token_dim, bias, validate=validate)
        self.n_frequent, self.tail_codes = n_frequent, codebook_size
        self.set_frequencies(torch.arange(vocab_size, 0, -1))

    @classmethod
    def build(cls, d_model: int, vocab_size: int, sizes: dict) -> "HybridTwoLevelHead":
        s = sizes
        return cls(d_model, vocab_size, s["n_frequent"], s["codebook_size"], s["token_dim"], bias=s["bias"])

    @staticmethod
    def budget(rest: int, vocab_size: int, d_model: int) -> tuple[dict, int]:
        """As ``TwoLevelHead.budget``, with half the codes exact rows for frequent tokens."""
        sizes, _ = TwoLevelHead.budget(rest, vocab_size, d_model)
        e = sizes["token_dim"]
        sizes.update(FrequentCodes.split(sizes["codebook_size"]))
        return sizes, (sizes["n_frequent"] + sizes["codebook_size"]) * d_model + e * (vocab_size + d_model)

    def config(self) -> dict:
        return {**super().config(), "token_dim": self.proj.shape[1]}

    @classmethod
    def with_frequent(cls, d_model, vocab_size, n_frequent, codebook_size, token_dim, bias):
        return cls(d_model, vocab_size, n_frequent, codebook_size, token_dim, bias=bias)

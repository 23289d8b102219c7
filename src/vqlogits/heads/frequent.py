"""Frequent-token rows: the baseline a user tries first. The N most frequent tokens of a text keep
their exact output rows; every other token shares one code, a vector plus its own bias, so no
token gets zero probability and perplexity stays finite. Draft-vocabulary trimming (FR-Spec,
VocabTrim) keeps such rows and drops the rest outright."""

from __future__ import annotations

from .hybrid import HybridHead
from .sizes import codes


class FrequentHead(HybridHead):
    """A ``HybridHead`` with a single tail code: ``n_frequent`` singleton codes holding exact rows,
    then one code shared by all other tokens (their logits differ only by their biases)."""

    ROW_OPTIONS = ("exact_tokens", "head_budget", "part_bits")

    def __init__(self, d_model: int, vocab_size: int, n_frequent: int, bias: bool = True, *, validate: bool = True):
        super().__init__(d_model, vocab_size, n_frequent, 1, bias, validate=validate)

    @classmethod
    def build(cls, d_model: int, vocab_size: int, sizes: dict) -> "FrequentHead":
        return cls(d_model, vocab_size, sizes["n_frequent"], bias=sizes["bias"])

    @staticmethod
    def budget(rest: int, vocab_size: int, d_model: int) -> tuple[dict, int]:
        """As many exact rows as fit beside the one shared code."""
        n = max(1, codes(rest, d_model, vocab_size) - 1)
        return {"n_frequent": n, "codebook_size": 1}, (n + 1) * d_model

    @classmethod
    def rows_sizes(cls, options: dict) -> dict:
        return {**super().rows_sizes(options), "codebook_size": 1}

    @classmethod
    def with_frequent(cls, d_model: int, vocab_size: int, n_frequent: int, codebook_size: int, bias: bool):
        return cls(d_model, vocab_size, n_frequent, bias=bias)

"""Timing helpers: median over repeats after warm-up, and the logit-computation comparison."""

from __future__ import annotations

import statistics
import time

import torch

from ..heads import DenseHead, VQLogitsHead


def median_seconds(fn, repeats: int = 20, warmup: int = 3) -> tuple[float, float]:
    """(median, interquartile range) of ``fn()`` wall time in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return statistics.median(times), q[2] - q[0]


@torch.no_grad()
def logit_speed(d_model: int, vocab_size: int, codebook_size: int, tokens: int, repeats: int = 20, seed: int = 0) -> dict:
    """Seconds for dense ``h @ W.T``, VQ code logits ``h @ C.T`` and VQ full logits, and their ratios."""
    torch.manual_seed(seed)
    h = torch.randn(tokens, d_model)
    dense = DenseHead(d_model, vocab_size)
    vq = VQLogitsHead(d_model, vocab_size, codebook_size)
    dense_s, _ = median_seconds(lambda: dense(h), repeats)
    compact_s, _ = median_seconds(lambda: vq.code_logits(h), repeats)
    full_s, _ = median_seconds(lambda: vq(h), repeats)
    return {
        "tokens": tokens,
        "dense_s": dense_s,
        "vq_compact_s": compact_s,
        "vq_full_s": full_s,
        "speedup_compact": dense_s / compact_s,
        "speedup_full": dense_s / full_s,
    }

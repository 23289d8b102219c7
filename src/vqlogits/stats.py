"""Intervals for the reports: Student's t quantiles, Welch's interval between seeds, and a paired
interval over evaluation windows, and bits per byte. Plain Python, for every layer."""

from __future__ import annotations

import math
import statistics

# Two-sided 95% quantiles of Student's t by degrees of freedom (rounded down: conservative).
_T975 = {
    1: 12.706,
    2: 4.303,
    3: 3.182,
    4: 2.776,
    5: 2.571,
    6: 2.447,
    7: 2.365,
    8: 2.306,
    9: 2.262,
    10: 2.228,
    15: 2.131,
    20: 2.086,
    30: 2.042,
}


def t975(df: float) -> float:
    return _T975[max(k for k in _T975 if k <= max(1, math.floor(df)))]


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def welch_interval(a: list[float], b: list[float]) -> tuple[float, float] | None:
    """95% interval of ``mean(a) - mean(b)`` by Welch's t. A side with one value borrows the other
    side's variance (seeds of runs that differ in one design choice); None when neither side has
    two values or the spread is 0."""
    if len(a) < 2 and len(b) < 2:
        return None
    var_a = statistics.variance(a) if len(a) > 1 else statistics.variance(b)
    var_b = statistics.variance(b) if len(b) > 1 else var_a
    sa, sb = var_a / len(a), var_b / len(b)
    se = math.sqrt(sa + sb)
    if se == 0:
        return None
    if len(a) < 2 or len(b) < 2:
        df = max(len(a), len(b)) - 1
    else:
        df = (sa + sb) ** 2 / (sa * sa / (len(a) - 1) + sb * sb / (len(b) - 1))
    diff, half = statistics.fmean(a) - statistics.fmean(b), t975(df) * se
    return diff - half, diff + half


def gap_ci(head: list[float], dense: list[float]) -> tuple[float, float] | None:
    """95% confidence interval of ``mean ppl ratio - 1`` (in %) between a head's seeds and dense's,
    Welch's t on log perplexity. A head with one seed borrows dense's seed variance (the runs
    differ only in the head); with one dense seed too there is no interval."""
    if len(dense) < 2:
        return None
    ci = welch_interval([math.log(x) for x in head], [math.log(x) for x in dense])
    return None if ci is None else (100 * (math.exp(ci[0]) - 1), 100 * (math.exp(ci[1]) - 1))


def ratio_interval(gaps: list[float]) -> list[float] | None:
    """95% interval of perplexity compressed / original from per-window log-loss gaps (paired t over
    windows; adjacent windows of one document are not independent, so read it as a lower bound on
    the uncertainty). None with fewer than 2 windows."""
    if len(gaps) < 2:
        return None
    mean, half = statistics.fmean(gaps), t975(len(gaps) - 1) * statistics.stdev(gaps) / math.sqrt(len(gaps))
    return [math.exp(mean - half), math.exp(mean + half)]


def paired_ratio(gaps_a: list[float], gaps_b: list[float]) -> list[float] | None:
    """95% interval of perplexity a / b for two heads evaluated against one original on the same
    windows (``window_gaps`` of each): ``ratio_interval`` of the per-window differences, which
    cancel what the windows share."""
    if len(gaps_a) != len(gaps_b):
        raise ValueError(f"gaps_b: {len(gaps_b)} windows, but gaps_a has {len(gaps_a)}; evaluate both on one split")
    return ratio_interval([a - b for a, b in zip(gaps_a, gaps_b, strict=True)])


def bits_per_byte(nats: float, n_bytes: int) -> float | None:
    """Total nats over the UTF-8 bytes of the text they score, in bits; None without bytes (a
    tokenizer whose tokens are not strings of the text)."""
    return nats / n_bytes / math.log(2) if n_bytes else None

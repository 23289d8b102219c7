"""Measurement helpers: median wall time after warm-up, peak memory, and copy bandwidth."""

from __future__ import annotations

import statistics
import time

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn, repeats: int = 20, warmup: int = 3, device=torch.device("cpu")) -> tuple[float, float]:
    """(median, interquartile range) of ``fn()`` wall time in seconds."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return statistics.median(times), q[2] - q[0]


def peak_bytes(fn, device=torch.device("cpu")) -> int:
    """Peak memory that ``fn()`` allocates on top of what was live before.

    GPU: the CUDA caching allocator's peak. CPU: the profiler's allocator events (every
    allocation and free, in order), summed to a running total.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"), key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()  # negative for frees
        peak = max(peak, live)
    return peak


def copy_bandwidth(device=torch.device("cpu"), megabytes: int = 256) -> float:
    """Bytes per second of a large device-to-device copy (read + write both counted)."""
    n = megabytes * (1 << 20) // 4
    src = torch.ones(n, device=device)
    dst = torch.zeros(n, device=device)  # touched, so page faults are not timed
    seconds, _ = median_seconds(lambda: dst.copy_(src), repeats=10, warmup=2, device=device)
    return 2 * n * 4 / seconds

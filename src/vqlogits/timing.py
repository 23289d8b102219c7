"""Measurement helpers, the only timers in vqlogits: median wall time after warm-up, end-to-end decode
speed, peak memory, and copy bandwidth."""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time

import torch


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(
    fn, repeats: int = 20, warmup: int = 3, device: torch.device | str = "cpu", setup=None
) -> tuple[float, float]:
    """(median, interquartile range) of ``fn()`` wall time in seconds; ``setup()``, untimed, before
    each timed call (e.g. a barrier between processes)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        if setup is not None:
            setup()
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return statistics.median(times), q[2] - q[0]


def seconds_in_turns(fns: dict, repeats: int = 21, warmup: int = 1) -> dict:
    """``name: [wall seconds of each repeat]`` of each ``name: fn()``, the functions taking turns
    within every repeat (so drift in the machine's speed hits them alike), after ``warmup`` rounds."""
    times = {name: [] for name in fns}
    for r in range(warmup + repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if r >= warmup:
                times[name].append(time.perf_counter() - t0)
    return times


def median_seconds_in_turns(fns: dict, repeats: int = 21, warmup: int = 1) -> dict:
    """``name: median wall seconds`` of ``seconds_in_turns``."""
    return {name: statistics.median(t) for name, t in seconds_in_turns(fns, repeats, warmup).items()}


@torch.no_grad()
def decode_tokens_per_s(model, heads: dict, batch: int, steps: int = 16, prompt: int = 16, repeats: int = 5) -> dict:
    """End-to-end greedy tokens/s of an HF causal LM with a KV cache, for each ``name:
    pick(hidden (B, d)) -> ids (B,)``, in one run: the heads take turns within every repeat (so
    drift in the machine's speed hits them alike), median over repeats after one warm-up round.
    The prompt is random ids, the same for every head in a round."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    runs = {name: [] for name in heads}
    for r in range(repeats + 1):
        ids = torch.randint(0, model.config.vocab_size, (batch, prompt), generator=torch.Generator().manual_seed(r)).to(
            device
        )
        for name, pick in heads.items():
            cache = DynamicCache()
            hidden = model.base_model(input_ids=ids, cache=cache, use_cache=True).last_hidden_state[:, -1]
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                tok = pick(hidden)
                hidden = model.base_model(input_ids=tok[:, None], cache=cache, use_cache=True).last_hidden_state[:, -1]
            _sync(device)
            if r:
                runs[name].append(batch * steps / (time.perf_counter() - t0))
    return {name: statistics.median(v) for name, v in runs.items()}


@contextlib.contextmanager
def _quiet_stderr():
    """The profiler's C++ side prints a line to stderr at each start and stop: sent to /dev/null."""
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def peak_bytes(fn, device: torch.device | str = "cpu") -> int:
    """Peak memory that ``fn()`` allocates on top of what was live before.

    GPU: the CUDA caching allocator's peak. CPU: the profiler's allocator events (every
    allocation and free, in order), summed to a running total.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"), key=lambda e: e.start_ns()
    )
    live = peak = 0
    for e in events:
        live += e.nbytes()  # negative for frees
        peak = max(peak, live)
    return peak


def copy_bandwidth(device: torch.device | str = "cpu", megabytes: int = 256) -> float:
    """Bytes per second of a large device-to-device copy (read + write both counted)."""
    n = megabytes * (1 << 20) // 4
    src = torch.ones(n, device=device)
    dst = torch.zeros(n, device=device)  # touched, so page faults are not timed
    seconds, _ = median_seconds(lambda: dst.copy_(src), repeats=10, warmup=2, device=device)
    return 2 * n * 4 / seconds

"""``vqlogits bench``: logits, loss (forward + backward, time and peak memory) and decode, dense vs VQ.

Every speed is reported as a ratio to the dense baseline measured in the same run, and every
memory-bound operation as a share of the copy bandwidth measured in the same run.
"""

from __future__ import annotations

import csv
import platform
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..files import write_atomic, write_json
from ..functional import vq_cross_entropy
from ..heads import AdaptiveHead, DenseHead, VQLogitsHead
from ..kernels import triton_usable
from ..timing import copy_bandwidth, median_seconds, peak_bytes
from .config import QUICK, SHAPES, BenchConfig  # noqa: F401 (QUICK: the CLI's --quick)
from .format import seconds as _fmt_s

# ---- logits ------------------------------------------------------------------------------------


@torch.no_grad()
def logit_speed(
    d_model: int,
    vocab_size: int,
    codebook_size: int,
    tokens: int,
    repeats: int = 10,
    warmup: int = 2,
    device="cpu",
    seed: int = 0,
    dense_s: float | None = None,
) -> dict:
    """Seconds for dense ``h @ W.T``, VQ code logits ``h @ C.T`` and VQ full logits, and ratios.

    ``dense_s`` reuses a dense time measured earlier in the same run (it does not depend on K).
    """
    device = torch.device(device)
    torch.manual_seed(seed)
    h = torch.randn(tokens, d_model, device=device)
    vq = VQLogitsHead(d_model, vocab_size, codebook_size).to(device)
    fns = {"vq_compact": lambda: vq.code_logits(h), "vq_full": lambda: vq(h)}
    row = {"tokens": tokens, "K": codebook_size}
    if dense_s is None:
        dense = DenseHead(d_model, vocab_size).to(device)
        fns = {"dense": lambda: dense(h), **fns}
    else:
        row["dense_s"], row["dense_iqr_s"] = dense_s, float("nan")
    for name, fn in fns.items():
        row[f"{name}_s"], row[f"{name}_iqr_s"] = median_seconds(fn, repeats, warmup, device)
    row["speedup_compact"] = row["dense_s"] / row["vq_compact_s"]
    row["speedup_full"] = row["dense_s"] / row["vq_full_s"]
    return row


def _logit_bytes(V, d, K, N, s=4):
    """Minimum bytes each path must move: inputs read once, output written once."""
    return {
        "dense": V * d * s + N * d * s + N * V * s,
        "vq_compact": K * d * s + N * d * s + N * K * s,
        "vq_full": K * d * s + N * d * s + V * (8 + s) + N * V * s,
    }


def bench_logits(cfg: BenchConfig, bandwidth: float, bar) -> list[dict]:
    rows = []
    for shape in cfg.shapes:
        V, d = SHAPES[shape]
        for N in cfg.tokens:
            dense_s = None
            for K in cfg.codebook_sizes:
                bar.set_description(f"logits {shape} K={K} N={N}")
                if 2 * N * V * d / 1e12 > cfg.max_tflop:
                    continue
                row = {
                    "shape": shape,
                    "V": V,
                    "d": d,
                    **logit_speed(d, V, K, N, cfg.repeats, cfg.warmup, cfg.device, dense_s=dense_s),
                }
                dense_s = row["dense_s"]
                for name, nbytes in _logit_bytes(V, d, K, N).items():
                    row[f"{name}_bytes"] = nbytes
                    row[f"{name}_roofline_pct"] = 100 * nbytes / bandwidth / row[f"{name}_s"]
                rows.append(row)
                bar.update(1)
    return rows


# ---- loss ----------------------------------------------------------------------------------------


def _loss_methods(V: int, d: int, K: int, device) -> dict:
    dense = DenseHead(d, V).to(device)
    adaptive = AdaptiveHead(d, V).to(device)
    vq = VQLogitsHead(d, V, K).to(device)

    fused_by = "Triton" if triton_usable(torch.empty(0, device=device)) else "chunked PyTorch"
    methods = {
        "dense F.cross_entropy": lambda h, y: F.cross_entropy(h @ dense.weight.T, y).backward(),
        "dense F.linear_cross_entropy": lambda h, y: F.linear_cross_entropy(h, dense.weight, y).backward(),
        "dense F.linear_cross_entropy, chunked": lambda h, y: F.linear_cross_entropy(
            h, dense.weight, y, options=torch.nn.LinearCrossEntropyOptions()
        ).backward(),  # PyTorch's own chunks (automatic sizes): the (N, V) logits never whole
        "AdaptiveLogSoftmaxWithLoss": lambda h, y: adaptive.loss(h, y).backward(),
        f"VQ compact (K={K})": lambda h, y: vq.loss(h, y).backward(),
        f"VQ fused, {fused_by} (K={K})": lambda h, y: vq_cross_entropy(
            h, y, vq.codebook, vq.assignment, vq.bias, fused=True
        ).backward(),
    }
    if torch.device(device).type == "cuda":  # optional fused baselines, GPU only
        try:
            from cut_cross_entropy import linear_cross_entropy

            methods["Cut Cross-Entropy"] = lambda h, y: linear_cross_entropy(h, dense.weight, y).backward()
        except ImportError:
            pass
        try:
            from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

            methods["Liger fused linear CE"] = lambda h, y: liger_fused_linear_cross_entropy(
                h, dense.weight, y
            ).backward()
        except ImportError:
            pass
    return methods


def bench_loss(cfg: BenchConfig, bar) -> list[dict]:
    rows = []
    device = torch.device(cfg.device)
    for shape in cfg.shapes:
        V, d = SHAPES[shape]
        for K in cfg.loss_codebook_sizes:
            methods = _loss_methods(V, d, K, device)
            for N in cfg.loss_tokens:
                h = torch.randn(N, d, device=device, requires_grad=True)
                y = torch.randint(0, V, (N,), device=device)
                base = None
                for name, fn in methods.items():
                    bar.set_description(f"loss {shape} N={N} {name}")
                    if name.startswith("dense") and 6 * N * V * d / 1e12 > cfg.max_tflop:
                        continue
                    peak = peak_bytes(lambda: fn(h, y), device)  # doubles as the warm-up call
                    seconds, iqr = median_seconds(lambda: fn(h, y), cfg.repeats, max(0, cfg.warmup - 1), device)
                    row = {
                        "shape": shape,
                        "V": V,
                        "d": d,
                        "K": K,
                        "tokens": N,
                        "method": name,
                        "seconds": seconds,
                        "iqr_s": iqr,
                        "peak_bytes": peak,
                    }
                    if name == "dense F.cross_entropy":
                        base = row
                    # Ratios only against a dense baseline measured in this run (it is skipped above --max-tflop).
                    row["speedup_vs_dense"] = base["seconds"] / seconds if base else None
                    row["memory_vs_dense"] = base["peak_bytes"] / max(peak, 1) if base else None
                    rows.append(row)
                    bar.update(1)
    return rows


# ---- report --------------------------------------------------------------------------------------


def markdown(results: dict, sections: dict | None = None) -> str:
    """bench.md: the logits and loss tables, then each of ``sections``' own (``bench.decode``)."""
    env = results["environment"]
    out = [
        f"Device: {env['device']} · torch {env['torch']} · threads {env['threads']} · copy bandwidth"
        f" {env['copy_GBps']:.1f} GB/s\n"
    ]
    out.append("### Logit computation (median; ratio = dense / VQ)\n")
    out.append(
        "| shape | K | tokens | dense h·Wᵀ | VQ code logits | VQ full logits | × code | × full |"
        " full: % of copy roofline |"
    )
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results["logits"]:
        out.append(
            f"| {r['shape']} | {r['K']} | {r['tokens']} | {_fmt_s(r['dense_s'])} | {_fmt_s(r['vq_compact_s'])} |"
            f" {_fmt_s(r['vq_full_s'])} | {r['speedup_compact']:.1f} | {r['speedup_full']:.1f} |"
            f" {r['vq_full_roofline_pct']:.0f}% |"
        )
    out.append("\n### Loss, forward + backward (median; peak = extra memory allocated)\n")
    out.append("| shape | tokens | method | time | × vs dense | peak memory | × less memory |")
    out.append("|---|---:|---|---:|---:|---:|---:|")
    ratio = lambda x: "–" if x is None else f"{x:.1f}"  # noqa: E731
    for r in results["loss"]:
        out.append(
            f"| {r['shape']} | {r['tokens']} | {r['method']} | {_fmt_s(r['seconds'])} |"
            f" {ratio(r['speedup_vs_dense'])} | {r['peak_bytes'] / 2**20:,.1f} MiB | {ratio(r['memory_vs_dense'])} |"
        )
    for name, section in (sections or {}).items():
        if results.get(name):
            out.append(section.markdown(results[name], env))
    if results["notes"]:
        out.append("\n" + "\n".join(f"* {n}" for n in results["notes"]))
    return "\n".join(out) + "\n"


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for shape in sorted({r["shape"] for r in results["logits"]}):
        for K in sorted({r["K"] for r in results["logits"]}):
            rs = [r for r in results["logits"] if r["shape"] == shape and r["K"] == K]
            a1.plot([r["tokens"] for r in rs], [r["speedup_compact"] for r in rs], "o-", label=f"{shape} K={K}")
    a1.set(
        xscale="log",
        yscale="log",
        xlabel="tokens",
        ylabel="dense time / VQ code-logit time",
        title="Logit computation speedup",
    )
    a1.legend(fontsize=7)
    loss = [r for r in results["loss"]]
    labels = [f"{r['method']}\nN={r['tokens']}" for r in loss]
    a2.barh(range(len(loss)), [r["peak_bytes"] / 2**20 for r in loss])
    a2.set_yticks(range(len(loss)), labels, fontsize=6)
    a2.set(xscale="log", xlabel="peak MiB (forward + backward)", title="Loss peak memory")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_bench(cfg: BenchConfig, sections: dict | None = None) -> dict:
    """Measure the logits and the loss, then each of ``sections`` (``name: Section``, e.g.
    ``bench.decode.SECTIONS``); write bench.md / bench_*.csv / bench.json / bench.png under cfg.out."""
    sections = sections or {}
    device = torch.device(cfg.device)
    torch.set_grad_enabled(True)
    bandwidth = copy_bandwidth(device)
    n_logits = len(cfg.shapes) * len(cfg.codebook_sizes) * len(cfg.tokens)
    n_loss = len(cfg.shapes) * len(cfg.loss_codebook_sizes) * len(cfg.loss_tokens) * 6
    n_sections = sum(s.steps(cfg) for s in sections.values())
    with tqdm(total=n_logits + n_loss + n_sections, desc="bench") as bar:
        results = {
            "environment": {
                "device": torch.cuda.get_device_name(device)
                if device.type == "cuda"
                else f"CPU ({platform.processor() or platform.machine()})",
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "copy_GBps": bandwidth / 1e9,
            },
            "config": asdict(cfg),
            "logits": bench_logits(cfg, bandwidth, bar),
            "loss": bench_loss(cfg, bar),
            "notes": [],
        }
        results.update({name: section.run(cfg, bar) for name, section in sections.items()})
    if device.type != "cuda":
        results["notes"].append("Liger and Cut Cross-Entropy are GPU kernels: not measured on CPU.")
    results["notes"].append(f"Dense measurements above {cfg.max_tflop} TFLOP per call are skipped (--max-tflop).")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "bench.json", results)
    for part in ("logits", "loss", *sections):
        if results[part]:
            with open(out / f"bench_{part}.csv", "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(results[part][0]))
                w.writeheader()
                w.writerows(results[part])
    write_atomic(out / "bench.md", lambda tmp: tmp.write_text(markdown(results, sections)))
    _plot(results, out / "bench.png")
    return results

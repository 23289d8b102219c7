"""Markdown tables and PNG plots from run folders (each holding a results.json)."""

from __future__ import annotations

import itertools
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path

from ..files import write_json
from ..lm.model import ModelConfig
from ..stats import gap_ci, mean_std
from .labels import family, label
from .scaling import scaling_report


def load_runs(paths: list[str | Path]) -> list[dict]:
    """results.json of each run folder, searching sub-folders of the given paths."""
    runs = []
    for p in map(Path, paths):
        files = [p / "results.json"] if (p / "results.json").exists() else sorted(p.rglob("results.json"))
        for f in files:
            r = json.loads(f.read_text())
            r["run"] = f.parent.name
            if "decode_flops" not in r:  # runs from before decode costs were recorded
                r["decode_flops"] = ModelConfig(**r["model_config"]).build_head().decode_cost()["flops"]
            runs.append(r)
    if not runs:
        raise ValueError(f"no results.json under {[str(p) for p in paths]}")
    return runs


def summarize(runs: list[dict]) -> list[dict]:
    """One row per configuration and token budget (seeds pooled): mean and std of val / test
    perplexity, and the gap to dense at the same budget with its 95% interval (``gap_ci``)."""
    groups: dict[tuple[str, int, str], list[dict]] = defaultdict(list)
    for r in runs:
        groups[label(r), r["train_tokens"], r["config"].get("schedule", "cosine")].append(r)
    dense = defaultdict(list)
    for r in runs:
        if r["head"] == "dense":
            dense[r["train_tokens"], r["config"].get("schedule", "cosine")].append(r["test_ppl"])
    rows = []
    for (name, tokens, schedule), rs in groups.items():
        val, val_sd = mean_std([r["val_ppl"] for r in rs])
        test, test_sd = mean_std([r["test_ppl"] for r in rs])
        ref = dense.get((tokens, schedule))
        dense_test = statistics.fmean(ref) if ref else None
        ci = gap_ci([r["test_ppl"] for r in rs], ref) if ref and name != "dense" else None
        rows.append(
            {
                "config": name,
                "seeds": len(rs),
                "train_tokens": tokens,
                "schedule": schedule,
                "train_flops": statistics.fmean(r.get("train_flops") or 0 for r in rs) or None,
                "head_params": rs[0]["head_params"],
                "reduction_pct": 100 * (1 - rs[0]["head_params"] / rs[0]["dense_head_params"]),
                "val_ppl": val,
                "val_sd": val_sd,
                "test_ppl": test,
                "test_sd": test_sd,
                # Bits per byte: None for runs from before it was recorded, or a tokenizer that is not byte-level.
                "val_bpb": _mean_or_none([r.get("val_bpb") for r in rs]),
                "test_bpb": _mean_or_none([r.get("test_bpb") for r in rs]),
                "test_vs_dense_pct": None if dense_test is None else 100 * (test / dense_test - 1),
                "test_vs_dense_ci": ci,
                "tokens_per_s": statistics.fmean(r["tokens_per_s"] for r in rs),
                "decode_flops": rs[0].get("decode_flops"),
                "head": rs[0]["head"],
                "family": family(rs[0]),
                "head_budget": rs[0]["config"].get("head_budget"),
            }
        )
    return sorted(rows, key=lambda r: (-r["head_params"], r["config"], r["train_tokens"]))


def _sd(x: float) -> str:
    return f" ± {x:.1f}" if x else ""


def _vs(r: dict) -> str:
    return "" if r["test_vs_dense_pct"] is None else f"{r['test_vs_dense_pct']:+.1f}%"


def _mean_or_none(values: list) -> float | None:
    return None if any(v is None for v in values) else statistics.fmean(values)


def markdown_table(rows: list[dict]) -> str:
    head = "| config | seeds | head params | reduction | val ppl | test ppl | test vs dense | test bits/byte "
    head += "| train tok/s | decode FLOPs/token |\n"
    head += "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    lines = []
    for r in rows:
        flops = f"{r['decode_flops']:,}" if r.get("decode_flops") else ""
        bpb = "–" if r.get("test_bpb") is None else f"{r['test_bpb']:.4f}"
        lines.append(
            f"| {r['config']} | {r['seeds']} | {r['head_params']:,} | {r['reduction_pct']:.1f}% | "
            f"{r['val_ppl']:.1f}{_sd(r['val_sd'])} | {r['test_ppl']:.1f}{_sd(r['test_sd'])} | {_vs(r)} | {bpb} |"
            f" {r['tokens_per_s']:,.0f} | {flops} |"
        )
    return head + "\n".join(lines) + "\n"


def crossing(points: list[tuple[float, float]], target: float) -> str:
    """The smallest budget at which the (budget, ppl) curve reaches ``target``, interpolated
    linearly in log-log between the two measured budgets around it."""
    points = sorted(points)
    if points[0][1] <= target:
        return f"≤ {100 * points[0][0]:g}%"
    for (b0, p0), (b1, p1) in itertools.pairwise(points):
        if p1 <= target:
            t = (math.log(p0) - math.log(target)) / (math.log(p0) - math.log(p1))
            return f"{100 * math.exp(math.log(b0) + t * (math.log(b1) - math.log(b0))):.1f}%"
    return f"> {100 * points[-1][0]:g}%"


def budget_table(rows: list[dict]) -> str:
    """Test perplexity (vs dense) of every head family at every head budget: one row per family,
    and the budget at which each family comes within +5% of dense (``crossing``)."""
    budgets = sorted({r["head_budget"] for r in rows if r.get("head_budget")})
    if not budgets:
        return ""
    dense = next((r["test_ppl"] for r in rows if r["config"] == "dense"), None)
    cells, points = defaultdict(dict), defaultdict(list)
    for r in rows:
        if r.get("head_budget"):
            cells[r["family"]][r["head_budget"]] = f"{r['test_ppl']:.1f}{_sd(r['test_sd'])} ({_vs(r)}, n={r['seeds']})"
            points[r["family"]].append((r["head_budget"], r["test_ppl"]))
    cross = " | dense +5% reached at |" if dense else " |"
    head = (
        "| head | "
        + " | ".join(f"{100 * b:g}% of dense" for b in budgets)
        + cross
        + "\n|---|"
        + "---:|" * (len(budgets) + bool(dense))
        + "\n"
    )
    lines = []
    for fam, c in cells.items():
        end = f" {crossing(points[fam], 1.05 * dense)} |" if dense else ""
        lines.append(f"| {fam} | " + " | ".join(c.get(b, "–") for b in budgets) + " |" + end)
    return head + "\n".join(lines) + "\n"


def _pareto_plot(plt, rows: list[dict], x_key: str, xlabel: str, path: Path, title: str) -> None:
    """Test perplexity against ``x_key``, one line per head family at its budgets (dense: a star, dashed)."""
    series = defaultdict(list)
    for r in rows:
        series[r["family"]].append(r)
    markers = "os^vDP<>Xhp*"
    dense = next((r for r in rows if r["config"] == "dense"), None)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (fam, rs) in enumerate(series.items()):
        rs = sorted((r for r in rs if r.get(x_key)), key=lambda r: r[x_key])
        if rs:
            is_dense = fam == "dense"
            ax.errorbar(
                [r[x_key] for r in rs],
                [r["test_ppl"] for r in rs],
                yerr=[r["test_sd"] for r in rs],
                fmt="*" if is_dense else f"{markers[i % len(markers)]}-",
                ms=12 if is_dense else 5,
                lw=1,
                capsize=2,
                color=plt.cm.tab20(i % 20),
                label=fam,
            )
    if dense:
        ax.axhline(dense["test_ppl"], color="gray", ls="--", lw=0.8)
        ax.axhline(1.05 * dense["test_ppl"], color="gray", ls=":", lw=0.8, label="dense +5%")
    ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel="test perplexity", title=title)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _training_curves(plt, np, runs: list[dict], path: Path) -> None:
    """Train loss, smoothed and averaged over seeds; with budgets, one panel per budget (dense in each)."""
    budgets = sorted({r["config"]["head_budget"] for r in runs if r["config"].get("head_budget")}) or [None]
    cols = min(3, len(budgets))
    lines = (len(budgets) + cols - 1) // cols
    fig, axes = plt.subplots(lines, cols, figsize=(5 * cols, 4 * lines), sharey=True, squeeze=False)
    for ax, budget in zip(axes.flat, budgets, strict=False):  # spare axes are switched off below
        groups = defaultdict(list)
        for r in runs:
            if budget is None or r["config"].get("head_budget") == budget or r["head"] == "dense":
                groups[label(r) if budget is None else family(r)].append(r["history"]["loss"])
        for i, (name, losses) in enumerate(groups.items()):
            n = min(map(len, losses))
            w = max(1, n // 30)
            mean = np.convolve(np.mean([x[:n] for x in losses], axis=0), np.ones(w) / w, mode="valid")
            ax.plot(np.arange(w, n + 1), mean, lw=1, color=plt.cm.tab20(i % 20), label=name)
        ax.set(
            xlabel="step",
            ylabel="train loss",
            title="train loss (smoothed, mean over seeds)" if budget is None else f"head budget {100 * budget:g}%",
        )
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(budgets) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _code_plot(plt, vq: list[dict], path: Path) -> None:
    """Code sizes and the share of train targets per code, for up to 8 configs with codes."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5))
    for r in vq:
        a1.hist(r["code_sizes"], bins=40, histtype="step", label=label(r))
        usage = sorted(r["code_usage"], reverse=True)
        a2.plot(range(1, len(usage) + 1), usage, label=label(r))
    a1.set(xlabel="tokens per code", ylabel="codes", title="Code sizes", yscale="log")
    a2.set(xscale="log", yscale="log", xlabel="code rank", ylabel="share of train targets", title="Code usage")
    a2.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plots(runs: list[dict], rows: list[dict], out: Path) -> list[str]:
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = ["ppl_vs_params.png"]
    _pareto_plot(
        plt, rows, "head_params", "head parameters", out / made[0], "Perplexity vs head size (dense: star, dashed)"
    )
    if any(r.get("decode_flops") for r in rows):
        made.append("ppl_vs_decode_cost.png")
        _pareto_plot(
            plt, rows, "decode_flops", "decode FLOPs per token (head)", out / made[-1], "Perplexity vs decode cost"
        )
    _training_curves(plt, np, runs, out / "training_curves.png")
    made.append("training_curves.png")
    vq = list({label(r): r for r in runs if "code_sizes" in r}.values())  # one run per config
    if 0 < len(vq) <= 8:  # more would not be readable
        _code_plot(plt, vq, out / "codes.png")
        made.append("codes.png")
    plt.close("all")
    return made


def write_report(paths: list[str | Path], out: str | Path, extra: str = "", intro: str = "") -> Path:
    """report.md (table + plots) for the runs under ``paths``; returns its path."""
    runs = load_runs(paths)
    data = sorted({(str(r["config"].get("corpus")), str(r["config"].get("tokenizer"))) for r in runs})
    if len(data) > 1:
        raise ValueError(
            f"the runs differ in corpus or tokenizer ({', '.join(f'{c} / {t}' for c, t in data)}): their perplexities "
            "do not compare, so report each set separately (bits per byte compares tokenizers: vqlogits equal-compute)"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = all_rows = summarize(runs)
    text = "# vqlogits report\n\n" + intro
    schedule = "wsd" if any(r["schedule"] == "wsd" for r in rows) else "cosine"
    chain = [r for r in rows if r["schedule"] == schedule]
    budgets = sorted({r["train_tokens"] for r in chain})
    if len(budgets) > 1:  # several token budgets: quality against tokens and compute, then the largest budget
        text += scaling_report(runs, chain, out) + f"## At the largest budget ({budgets[-1]:,} tokens)\n\n"
        rows = [r for r in chain if r["train_tokens"] == budgets[-1]]
        runs = [
            r for r in runs if r["train_tokens"] == budgets[-1] and r["config"].get("schedule", "cosine") == schedule
        ]
    images = plots(runs, rows, out)
    by_budget = budget_table(rows)
    text += f"Test perplexity by head budget:\n\n{by_budget}\n" if by_budget else ""
    text += markdown_table(rows) + "\n" + extra
    text += "\n".join(f"![{name}]({name})" for name in images) + "\n"
    (out / "report.md").write_text(text)
    write_json(out / "summary.json", all_rows)
    return out / "report.md"

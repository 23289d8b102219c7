"""Quality against training tokens and compute, for runs trained at several token budgets.

Reads the rows of ``report.summarize`` (one per configuration and budget) and writes:
  * the dense baseline's convergence: validation perplexity per budget, the gain of each doubling,
    and the seed spread (max - min over mean) of test perplexity;
  * every head's gap to dense per budget, with its 95% interval (``report.gap_ci``);
  * at equal training compute: the best configuration within each dense budget's FLOPs;
  * WSD cool-downs against separate cosine runs of the same configuration and budget;
and plots: the gap against training tokens, and test perplexity against training FLOPs.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections import defaultdict
from pathlib import Path

from .labels import label


def _fmt_tokens(n: float) -> str:
    return f"{n / 1e6:.1f}M"


def _gap(r: dict) -> str:
    if r.get("test_vs_dense_pct") is None:
        return "–"
    ci = r.get("test_vs_dense_ci")
    return f"{r['test_vs_dense_pct']:+.1f}%" + (f" [{ci[0]:+.1f}, {ci[1]:+.1f}]" if ci else "") + f" n={r['seeds']}"


def dense_convergence(runs: list[dict]) -> tuple[str, dict]:
    """Markdown table of dense's validation / test perplexity per budget over seeds, and the
    numbers the protocol is judged by at the largest budget."""
    by_tokens = defaultdict(list)
    for r in runs:
        if r["head"] == "dense" and r["config"].get("schedule") == "wsd":
            by_tokens[r["train_tokens"]].append(r)
    if not by_tokens:
        return "", {}
    lines = [
        "| train tokens | seeds | val ppl | gain of this doubling | test ppl | seed spread (max − min) / mean |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    prev, verdict = None, {}
    for tokens in sorted(by_tokens):
        rs = by_tokens[tokens]
        val = statistics.fmean(r["val_ppl"] for r in rs)
        tests = [r["test_ppl"] for r in rs]
        spread = (max(tests) - min(tests)) / statistics.fmean(tests)
        gain = None if prev is None else 1 - val / prev
        lines.append(
            f"| {_fmt_tokens(tokens)} | {len(rs)} | {val:.2f} | {'–' if gain is None else f'{100 * gain:.1f}%'} | "
            f"{statistics.fmean(tests):.2f} | {f'{100 * spread:.1f}%' if len(rs) > 1 else '–'} |"
        )
        verdict = {
            "train_tokens": tokens,
            "seeds": len(rs),
            "val_ppl": val,
            "last_doubling_gain": gain,
            "test_seed_spread": spread if len(rs) > 1 else None,
        }
        prev = val
    vals = [statistics.fmean(r["val_ppl"] for r in by_tokens[t]) for t in sorted(by_tokens)]
    verdict["doublings_to_3pct"] = doublings_to(vals, 0.03)
    text = "\n".join(lines) + "\n"
    if (
        verdict["last_doubling_gain"] is not None
        and verdict["last_doubling_gain"] >= 0.03
        and verdict["doublings_to_3pct"]
    ):
        n = verdict["doublings_to_3pct"]
        text += (
            "\nNot converged by the protocol's rule (last doubling < 3%)."
            " If each doubling's gain in log perplexity keeps "
            f"shrinking at the measured rate, {n:.1f} more doublings (about"
            f" {_fmt_tokens(verdict['train_tokens'] * 2**n)} tokens) would get there.\n"
        )
    return text, verdict


def doublings_to(vals: list[float], gain: float) -> float | None:
    """More doublings of the budget until one improves perplexity by less than ``gain``, extrapolating
    each doubling's log-perplexity decrement geometrically (their mean ratio); None if not shrinking."""
    drops = [math.log(a / b) for a, b in itertools.pairwise(vals)]
    if len(drops) < 2 or min(drops) <= 0:
        return None
    ratio = math.exp(statistics.fmean(math.log(b / a) for a, b in itertools.pairwise(drops)))
    target = -math.log(1 - gain)
    if ratio >= 1:
        return None
    return max(0.0, math.log(target / drops[-1]) / math.log(ratio))


def gap_table(rows: list[dict]) -> str:
    """Every configuration's gap to dense at every budget, with its 95% interval."""
    budgets = sorted({r["train_tokens"] for r in rows})
    cells = defaultdict(dict)
    for r in rows:
        cells[r["config"]][r["train_tokens"]] = r
    head = (
        "| config | head params | "
        + " | ".join(_fmt_tokens(t) for t in budgets)
        + " |\n|---|---:|"
        + "---:|" * len(budgets)
        + "\n"
    )
    lines = []
    for name, c in cells.items():
        any_row = next(iter(c.values()))
        shown = [
            (f"{c[t]['test_ppl']:.1f}" if name == "dense" else f"{c[t]['test_ppl']:.1f} ({_gap(c[t])})")
            if t in c
            else "–"
            for t in budgets
        ]
        lines.append(f"| {name} | {any_row['head_params']:,} | " + " | ".join(shown) + " |")
    return head + "\n".join(lines) + "\n"


def equal_compute(rows: list[dict]) -> str:
    """For each dense budget's training FLOPs: the configuration with the lowest test perplexity
    among those trained with at most that much compute."""
    dense = sorted((r for r in rows if r["config"] == "dense" and r.get("train_flops")), key=lambda r: r["train_flops"])
    if not dense:
        return ""
    lines = [
        "| compute (dense at) | FLOPs | dense test ppl | best within it | its tokens | its test ppl |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for d in dense:
        within = [r for r in rows if r.get("train_flops") and r["train_flops"] <= d["train_flops"] * 1.0001]
        best = min(within, key=lambda r: r["test_ppl"])
        lines.append(
            f"| {_fmt_tokens(d['train_tokens'])} tokens | {d['train_flops']:.2e} | {d['test_ppl']:.1f} |"
            f" {best['config']} | {_fmt_tokens(best['train_tokens'])} | {best['test_ppl']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def wsd_vs_cosine(runs: list[dict]) -> str:
    """Each cosine run beside the WSD cool-down of the same configuration, seed and budget."""
    wsd = {(label(r), r["config"]["seed"], r["train_tokens"]): r for r in runs if r["config"].get("schedule") == "wsd"}
    lines = []
    for r in runs:
        if r["config"].get("schedule", "cosine") != "cosine":
            continue
        twin = wsd.get((label(r), r["config"]["seed"], r["train_tokens"]))
        if twin:
            lines.append(
                f"| {label(r)} | {r['config']['seed']} | {_fmt_tokens(r['train_tokens'])} | {r['test_ppl']:.2f} |"
                f" {twin['test_ppl']:.2f} | {100 * (twin['test_ppl'] / r['test_ppl'] - 1):+.2f}% |"
            )
    if not lines:
        return ""
    return (
        "| config | seed | tokens | cosine test ppl | WSD cool-down test ppl |"
        " WSD vs cosine |\n|---|---:|---:|---:|---:|---:|\n" + "\n".join(lines) + "\n"
    )


def plots(rows: list[dict], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = defaultdict(list)
    for r in rows:
        series[r["config"]].append(r)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 5))
    for i, (name, rs) in enumerate(sorted(series.items())):
        rs = sorted(rs, key=lambda r: r["train_tokens"])
        color, marker = plt.cm.tab20(i % 20), "*" if name == "dense" else "os^vDP<>Xhp"[i % 11]
        gaps = [r for r in rs if r.get("test_vs_dense_pct") is not None and name != "dense"]
        if gaps:
            lo = [r["test_vs_dense_pct"] - r["test_vs_dense_ci"][0] if r.get("test_vs_dense_ci") else 0 for r in gaps]
            hi = [r["test_vs_dense_ci"][1] - r["test_vs_dense_pct"] if r.get("test_vs_dense_ci") else 0 for r in gaps]
            a1.errorbar(
                [r["train_tokens"] for r in gaps],
                [r["test_vs_dense_pct"] for r in gaps],
                yerr=[lo, hi],
                fmt=f"{marker}-",
                color=color,
                lw=1,
                ms=5,
                capsize=2,
                label=name,
            )
        with_flops = [r for r in rs if r.get("train_flops")]
        a2.plot(
            [r["train_flops"] for r in with_flops],
            [r["test_ppl"] for r in with_flops],
            f"{marker}-",
            color=color,
            lw=1.5 if name == "dense" else 1,
            ms=10 if name == "dense" else 5,
            label=name,
        )
    a1.axhline(0, color="gray", lw=0.8)
    a1.axhline(5, color="gray", ls=":", lw=0.8, label="+5%")
    a1.set(
        xscale="log",
        xlabel="training tokens",
        ylabel="test perplexity vs dense (%), 95% interval",
        title="Gap to dense against training tokens",
    )
    a2.set(
        xscale="log",
        yscale="log",
        xlabel="training FLOPs (body + head, forward + backward)",
        ylabel="test perplexity",
        title="Perplexity against training compute",
    )
    for ax in (a1, a2):
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "scaling.png", dpi=120)
    plt.close(fig)
    return ["scaling.png"]


def headline(rows: list[dict]) -> str:
    """Bullets for the largest budget of a summary that holds a head beside dense (else the largest):
    dense's test perplexity, then every head's gap."""
    rows = [r for r in rows if r.get("schedule", "cosine") == "wsd"] or rows
    budgets = {r["train_tokens"] for r in rows}
    compared = [t for t in budgets if sum(r["train_tokens"] == t for r in rows) > 1]
    tokens = max(compared or budgets)
    top = sorted((r for r in rows if r["train_tokens"] == tokens), key=lambda r: r["test_ppl"])
    dense = next((r for r in top if r["config"] == "dense"), None)
    lines = [
        f"At {_fmt_tokens(tokens)} training tokens"
        + (f", dense: test perplexity {dense['test_ppl']:.1f} (n={dense['seeds']})" if dense else "")
        + ":"
    ]
    lines += [
        f"- {r['config']} ({r['head_params']:,} head parameters): {r['test_ppl']:.1f}, {_gap(r)}"
        for r in top
        if r["config"] != "dense"
    ]
    return "\n".join(lines) + "\n"


def scaling_report(runs: list[dict], rows: list[dict], out: Path) -> str:
    """The markdown sections above, with the plots written into ``out``."""
    convergence, _ = dense_convergence(runs)
    text = ""
    if convergence:
        text += "## Dense baseline: convergence and seed spread\n\n" + convergence + "\n"
    text += "## Test perplexity (gap to dense, 95% interval, seeds) by training tokens\n\n" + gap_table(rows) + "\n"
    if compute := equal_compute(rows):
        text += "## At equal training compute\n\n" + compute + "\n"
    if check := wsd_vs_cosine(runs):
        text += "## WSD cool-downs against separate cosine runs\n\n" + check + "\n"
    images = plots(rows, out)
    return text + "\n".join(f"![{name}]({name})" for name in images) + "\n\n"

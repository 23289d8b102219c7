"""Table and plot for compressed pretrained models: each stage's eval_*.json in each folder."""

from __future__ import annotations

import json
from pathlib import Path

from ..files import write_json
from ..stats import paired_ratio

# (eval_{key}.json, row name, the calibration stage it follows); "full" is the final model on the whole test split.
STAGES = (
    ("kmeans", "uncalibrated", None),  # as compress built it
    ("stage1", "+ stage 1 (head)", "1"),
    ("stage2", "+ stage 2 (last layers)", "2"),
    ("full", "+ stage 2, whole test split", "2"),
)


# the shares of evaluated targets whose rows are the head's own, and the original's exactly
ROW_SHARES = (("own_row_share", "own rows"), ("exact_row_share", "exact rows"))


def domains(root: str | Path) -> list[str]:
    """The evaluation domains under ``root``, as file-name suffixes: "" (eval_<stage>.json, the
    calibration corpus) first, then e.g. "-devdocs" (eval_<stage>-devdocs.json, another corpus, or
    a reference beside the folders named for its corpus, bf16-devdocs.json)."""
    found = {f.stem.split("-", 1)[1] for f in Path(root).rglob("eval_*-*.json")}
    for f in Path(root).glob("*-*.json"):  # a reference on another corpus, e.g. bf16-devdocs.json
        r = json.loads(f.read_text())
        corpus = r.get("corpus") if isinstance(r, dict) else None  # load_evals skips what is not a result too
        if isinstance(corpus, str) and f.stem.endswith(f"-{corpus}"):
            found.add(corpus)
    return ["", *sorted(f"-{d}" for d in found)]


def load_evals(root: str | Path, domain: str = "") -> list[dict]:
    """One row per model folder and evaluated stage (``eval_<stage><domain>.json``), and the
    references beside the folders (``<name><domain>.json``, e.g. the head cast to bf16)."""
    rows, others = [], [d for d in domains(root) if d and d != domain]
    for meta_path in sorted(Path(root).rglob("vqlogits.json")):
        folder = meta_path.parent
        meta = json.loads(meta_path.read_text())
        for key, name, stage in STAGES:
            f = folder / f"eval_{key}{domain}.json"
            if f.exists():
                r = json.loads(f.read_text())
                calib = [c["stages"][stage] for c in meta.get("calibration", []) if stage in c["stages"]]
                r.update(
                    model=folder.name,
                    series=_series(meta),
                    stage=name,
                    stage_key=key,
                    steps=calib[-1]["steps"] if calib else 0,
                    bits=meta.get("bits"),  # a quantized head's width and group size, else None
                    group_size=meta.get("group_size"),
                    source=meta.get("source"),
                )
                rows.append(r)
    for f in sorted(Path(root).glob("*.json")):  # references beside the models, e.g. the head cast to bf16
        if not f.stem.endswith(domain) or any(f.stem.endswith(d) for d in others):
            continue
        r = json.loads(f.read_text())
        if isinstance(r, dict) and "ppl_compressed" in r:
            rows.append(
                {
                    **r,
                    "model": f.stem.removesuffix(domain) if domain else f.stem,
                    "series": r.get("head", f.stem),
                    "stage": "uncalibrated",
                    "stage_key": "kmeans",
                    "steps": 0,
                    "reference": True,
                }
            )
    if not rows:
        raise ValueError(f"no compressed model with eval_*.json under {root}")
    return rows


def _series(meta: dict) -> str:
    """The head and its map, e.g. "hybrid-twolevel, learned map" (stage 1 ran ``MapLearner``), or a
    quantized head's bits and group size; stored-quantized parts are named."""
    if meta.get("head") == "quantized":
        return f"quantized, {meta['bits']}-bit groups of {meta['group_size']}"
    stage1 = [c["stages"]["1"] for c in meta.get("calibration", []) if "1" in c["stages"]]
    learned = bool(stage1 and stage1[-1].get("reassign_every"))
    parts = {bits for bits, _ in (meta.get("quantized_parts") or {}).values()}
    # frequent-token rows map every other token to one shared code: no k-means, no map to learn
    mapped = "" if meta.get("head") == "frequent" else f", {'learned' if learned else 'k-means'} map"
    return f"{meta.get('head', 'vq')}{mapped}" + "".join(f", {b}-bit parts" for b in parts)


def _final(rows: list[dict]) -> list[dict]:
    """Each model's row after its last evaluated stage."""
    last = {}
    for r in rows:
        last[r["model"]] = r  # rows come stage by stage
    return list(last.values())


def _after(r: dict) -> int:
    """The calibration stage an evaluation row follows (0: uncalibrated)."""
    return next(int(stage or 0) for key, _, stage in STAGES if key == r["stage_key"])


def plotted(rows: list[dict]) -> list[dict]:
    """Each model's row after its last stage, for the models at the furthest calibration stage any
    model reached: a model still calibrating would sit beside finished ones as if it had had the
    same budget (the table labels its stage)."""
    final = _final(rows)
    furthest = max(_after(r) for r in final)
    return [r for r in final if _after(r) == furthest]


def _share(r: dict) -> float:
    """Head size in % of the dense head, to 0.1%: the column a model falls in (heads sized to one
    budget differ by a few parameters)."""
    return round(100 * r["head_params"] / r["dense_head_params"], 1)


def _gap(r: dict) -> str:
    """Test perplexity against the original in %, with its 95% interval when the evaluation has one."""
    text = f"{100 * (r['ppl_compressed'] / r['ppl_original'] - 1):+.1f}%"
    if r.get("ppl_ratio_interval95"):
        lo, hi = r["ppl_ratio_interval95"]
        text += f" [{100 * (lo - 1):+.1f}, {100 * (hi - 1):+.1f}]"
    return text


def final_markdown(rows: list[dict]) -> str:
    """Perplexity against the original after each model's last stage: one row per head and map, one
    column per head size."""
    final = _final(rows)
    sizes = sorted({_share(r) for r in final})
    out = ["| head, map | " + " | ".join(f"{s:g}% of the head" for s in sizes) + " |", "|---|" + "---:|" * len(sizes)]
    for series in sorted({r["series"] for r in final}):
        cells = {_share(r): r for r in final if r["series"] == series}
        out.append(
            f"| {series} | "
            + " | ".join(
                f"{_gap(cells[s])} ({cells[s]['ppl_compressed']:.2f}, {cells[s]['stage'].lstrip('+ ')})"
                if s in cells
                else "–"
                for s in sizes
            )
            + " |"
        )
    return "\n".join(out) + "\n"


def pretrained_markdown(rows: list[dict]) -> str:
    out = [
        "| model | stage | steps | eval tokens | head params | % of dense | head MB as stored | ppl original |"
        " ppl compressed | × original | KL(orig‖comp) | top-1 agreement |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        out.append(
            f"| {r['model']} | {r['stage']} | {r['steps']} | {r.get('eval_tokens', 0):,} | {r['head_params']:,} |"
            f" {_share(r):.1f}% | {_megabytes(r)} | "
            f"{r['ppl_original']:.2f} | {r['ppl_compressed']:.1f} | {r['ppl_compressed'] / r['ppl_original']:.2f} |"
            f" {r['kl_original_to_compressed']:.2f} | {100 * r['top1_agreement']:.1f}% |"
        )
    return "\n".join(out) + "\n"


def _megabytes(r: dict) -> str:
    return f"{r['head_bytes'] / 1e6:.2f}" if "head_bytes" in r else "–"  # evaluations before bytes were measured


def generations_markdown(root: str | Path) -> str:
    """Each model's ``generation.txt`` (what `vqlogits generate` printed); empty if there is none."""
    blocks = [
        f"\n**{f.parent.name}**\n\n~~~text\n{f.read_text().strip()}\n~~~\n"
        for f in sorted(Path(root).rglob("generation.txt"))
    ]
    return "\n## Greedy generations\n" + "".join(blocks) if blocks else ""


def pareto_bytes(rows: list[dict]) -> list[dict]:
    """The rows no other row beats on both head bytes and perplexity, by bytes."""
    key = lambda r: (r["head_bytes"], r["ppl_compressed"] / r["ppl_original"])  # noqa: E731
    front = [
        r
        for r in rows
        if not any(
            key(o)[0] <= key(r)[0] and key(o)[1] < key(r)[1] or key(o)[0] < key(r)[0] and key(o)[1] <= key(r)[1]
            for o in rows
        )
    ]
    return sorted(front, key=key)


def _ratio(r: dict) -> float:
    return r["ppl_compressed"] / r["ppl_original"]


def _bytes_panel(rows: list[dict], key: str) -> list[dict]:
    """The rows with bytes at stage ``key`` ("kmeans": uncalibrated, "stage1"), and the references
    (e.g. the bf16 cast), which have no calibration, in every panel."""
    return [r for r in rows if "head_bytes" in r and (r["stage_key"] == key or r.get("reference"))]


def _versus(r: dict | None, best: dict | None) -> str:
    """``r``'s perplexity over ``best``'s, with the 95% interval paired over their common windows."""
    if r is None or best is None:
        return "–"
    if r is best:
        return "(the best)"
    text = f"×{r['ppl_compressed'] / best['ppl_compressed']:.3f}"
    if len(r.get("window_gaps") or ()) == len(best["window_gaps"]) and r["eval_tokens"] == best["eval_tokens"]:
        lo, hi = paired_ratio(r["window_gaps"], best["window_gaps"])
        text += f" [{lo:.3f}, {hi:.3f}]"
    return text


def bytes_markdown(rows: list[dict]) -> str:
    """One row per model with its bytes, by bytes: perplexity × original [95% interval], KL, top-1
    agreement and bits per byte (the original's above the table) uncalibrated and after stage 1;
    after stage 1 also × the best model after stage 1 (paired over windows; calibration adapts
    every head to the corpus, so the calibrated best, not the original, is the fair yardstick
    there); whether it is on each one's Pareto front."""
    panels = {key: _bytes_panel(rows, key) for key in ("kmeans", "stage1")}
    fronts = {key: {id(r) for r in pareto_bytes(panel)} for key, panel in panels.items()}
    paired = [r for r in panels["stage1"] if r.get("window_gaps")]
    best = min(paired, key=_ratio) if paired else None
    original = next((r["bpb_original"] for r in rows if r.get("bpb_original")), None)
    out = [f"The original: {original:.4f} bits per byte.\n"] if original else []
    out += [
        "| model | head MB as stored | uncalibrated: ppl × original [95%] | KL | top-1 | bits/byte |"
        " after stage 1: ppl × original [95%] | KL | top-1 | bits/byte | × best after stage 1 [95%, paired] |"
        " on the front (uncalibrated / stage 1) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]

    def cells(r: dict | None) -> str:
        if r is None:
            return "– | – | – | –"
        lo, hi = r.get("ppl_ratio_interval95") or (_ratio(r), _ratio(r))
        kl, top1 = r["kl_original_to_compressed"], 100 * r["top1_agreement"]
        shares = [f"{100 * r[k]:.0f}% {name}" for k, name in ROW_SHARES if r.get(k) is not None]
        rows = f" ({', '.join(shares)})" if shares else ""
        bpb = f"{r['bpb_compressed']:.4f}" if r.get("bpb_compressed") else "–"
        return f"×{_ratio(r):.3f} [{lo:.3f}, {hi:.3f}] | {kl:.3f} | {top1:.1f}%{rows} | {bpb}"

    models = {r["model"] for r in panels["kmeans"] + panels["stage1"]}
    found = {key: {r["model"]: r for r in panel} for key, panel in panels.items()}
    for name in sorted(models, key=lambda m: (found["kmeans"].get(m) or found["stage1"][m])["head_bytes"]):
        first, later = found["kmeans"].get(name), found["stage1"].get(name)
        on = [
            "yes" if r is not None and id(r) in fronts[key] else "–"
            for key, r in (("kmeans", first), ("stage1", later))
        ]
        mb = (first or later)["head_bytes"] / 1e6
        later_cells = "(no calibration) | | | " if later is not None and later.get("reference") else cells(later)
        out.append(
            f"| {name} | {mb:.2f} | {cells(first)} | {later_cells} | {_versus(later, best)} | {' / '.join(on)} |"
        )
    return "\n".join(out) + "\n"


def _family(r: dict) -> tuple[str, str]:
    """(line, point label) on the bytes plot: a quantized head's widths on one line per group size,
    a VQ head's sizes on one line per head and parts."""
    if r.get("bits") is not None:
        return f"quantized, groups of {r['group_size']}", f"{r['bits']}-bit"
    return r["series"], "" if r.get("reference") else f"{_share(r):g}%"


def _goal_mb(rows: list[dict]) -> float | None:
    """The bytes goal: 1/14 of the head in bf16 (4 MB for SmolLM2, 24 MB for Gemma-3-270M)."""
    bf16 = next((r["dense_head_bytes_bf16"] for r in rows if r.get("dense_head_bytes_bf16")), None)
    return bf16 / 14 / 1e6 if bf16 else None


def _model_name(rows: list[dict]) -> str:
    sources = {r["source"] for r in rows if r.get("source")}
    return ", ".join(sorted(sources)) if sources else "SmolLM2"


def _ratio_ticks(axis) -> None:
    """A log axis of perplexity ratios labelled at round values (below 1 too), no minor labels."""
    import matplotlib.ticker as ticker

    ratios = [0.5, 0.6, 0.7, 0.8, 0.9, 1, 1.05, 1.1, 1.25, 1.5, 2, 3, 5, 10, 20, 50, 100, 200, 500, 1000]
    axis.set_major_locator(ticker.FixedLocator(ratios))
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"×{v:g}"))
    axis.set_minor_formatter(ticker.NullFormatter())


def _log_ticks(ax) -> None:
    """Readable log axes: bytes at 1-2-5 steps, perplexity ratios at round values, no minor labels."""
    import matplotlib.ticker as ticker

    ax.xaxis.set_major_locator(ticker.FixedLocator([m * 10**e for e in range(-1, 5) for m in (1, 2, 5)]))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    _ratio_ticks(ax.yaxis)


def _bytes_axes(ax, rows: list[dict], key: str, colors: dict, goal: float | None) -> None:
    """One panel: a line per family (``_family``), the panel's Pareto front, the goals."""
    panel = _bytes_panel(rows, key)
    for i, name in enumerate(colors):
        rs = sorted((r for r in panel if _family(r)[0] == name), key=lambda r: r["head_bytes"])
        xs, ys = [r["head_bytes"] / 1e6 for r in rs], [_ratio(r) for r in rs]
        ax.plot(xs, ys, "o-", ms=5, color=colors[name], label=name)
        offset, ha = ((4, 4), "left") if i % 2 == 0 else ((-4, -11), "right")  # neighbours' labels on opposite sides
        for r, x, y in zip(rs, xs, ys, strict=True):
            text = _family(r)[1]
            ax.annotate(text, (x, y), textcoords="offset points", xytext=offset, ha=ha, fontsize=7, color=colors[name])
    front = pareto_bytes(panel)
    xs, ys = [r["head_bytes"] / 1e6 for r in front], [_ratio(r) for r in front]
    ax.plot(xs, ys, "k", lw=5, alpha=0.2, label="Pareto front")
    if goal:
        ax.axvline(goal, color="gray", ls=":", lw=0.8, label=f"{goal:.0f} MB (goal: 1/14 of bf16)")
    ax.axhline(1.05, color="gray", ls="--", lw=0.8, label="+5% (goal)")
    ax.set(xscale="log", yscale="log")
    _log_ticks(ax)


def bytes_plot(domains: list[tuple[str, list[dict]]], path: Path) -> int:
    """Perplexity × original against the head's bytes as stored: a row of panels per domain
    (its corpus, its rows), uncalibrated and after stage 1 side by side, one line per family
    (``_family``), each panel's Pareto front marked. Returns the domains drawn (0: no plot, when
    no row has its bytes)."""
    import matplotlib.pyplot as plt

    domains = [(corpus, rows) for corpus, rows in domains if _bytes_panel(rows, "kmeans")]
    if not domains:
        return 0
    families = sorted({_family(r)[0] for _, rows in domains for r in _bytes_panel(rows, "kmeans")})
    colors = {name: f"C{i % 10}" for i, name in enumerate(families)}
    n = len(domains)
    fig, axes = plt.subplots(n, 2, figsize=(12, 4.8 * n), sharex=True, sharey="row", squeeze=False)
    for (corpus, rows), row in zip(domains, axes, strict=True):
        for ax, key, stage in zip(row, ("kmeans", "stage1"), ("uncalibrated", "after stage 1"), strict=True):
            _bytes_axes(ax, rows, key, colors, _goal_mb(rows))
            ax.set_title(f"{_model_name(rows)} head at equal bytes on {corpus}, {stage}", fontsize=9)
        row[0].set_ylabel(f"{corpus} test perplexity × original")
    for ax in axes[-1]:
        ax.set_xlabel("head MB as stored (codes, map, bias, scales, packed weights)")
    axes[0][1].legend(fontsize=7, loc="upper right")  # the right panel's top is empty: calibration lowers every line
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return n


def _other_domains(root: str | Path) -> list[tuple[str, list[dict]]]:
    """(corpus, rows) of every domain beyond the first (another corpus's test text)."""
    found = []
    for domain in domains(root)[1:]:
        rows = load_evals(root, domain)
        found.append((rows[0].get("corpus", domain.lstrip("-")), rows))
    return found


def with_previous(rows: list[dict], previous: str | Path) -> list[dict]:
    """``rows`` plus the rows of an earlier report's rows.json for every model none of ``rows`` is
    from: a study's model folders do not outlive a machine, the rows they gave do."""
    measured = {r["model"] for r in rows}
    return rows + [r for r in json.loads(Path(previous).read_text()) if r["model"] not in measured]


def pretrained_report(root: str | Path, out: str | Path | None = None, previous: str | Path | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = load_evals(root)
    if previous is not None:
        rows = with_previous(rows, previous)
    out = Path(out or root)
    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    final = plotted(rows)
    sizes = sorted({_share(r) for r in final})
    series = sorted({r["series"] for r in final})
    width = 0.8 / len(series)
    for j, name in enumerate(series):  # sizes side by side, one offset per series, the 95% interval as error bars
        rs = sorted((r for r in final if r["series"] == name), key=_share)
        x = [sizes.index(_share(r)) + (j - (len(series) - 1) / 2) * width for r in rs]
        y = [r["ppl_compressed"] / r["ppl_original"] for r in rs]
        ci = [r.get("ppl_ratio_interval95") or [v, v] for r, v in zip(rs, y, strict=True)]
        pairs = list(zip(y, ci, strict=True))
        ax.errorbar(
            x,
            y,
            yerr=[[v - lo for v, (lo, _) in pairs], [hi - v for v, (_, hi) in pairs]],
            fmt="o-",
            capsize=3,
            label=name,
        )
    stage = _after(final[0])
    ax.axhline(1.0, color="gray", ls="--", label="original (dense head)")
    ax.axhline(1.1, color="gray", ls=":", label="target: +10%")
    ax.set_xticks(range(len(sizes)), [f"{s:g}%" for s in sizes])
    ax.set_yscale("log")
    _ratio_ticks(ax.yaxis)
    name = _model_name(final)
    ax.set(
        xlabel="head parameters, % of the dense head",
        ylabel="test perplexity × original (95% interval)",
        title=f"{name}, after calibration stage {stage}" if stage else f"{name}, uncalibrated",
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "pretrained_ppl_vs_params.png", dpi=120)
    plt.close(fig)
    others = _other_domains(root)
    corpus = rows[0].get("corpus", "the calibration text")
    drawn = bytes_plot([(corpus, rows), *others], out / "pretrained_ppl_vs_bytes.png")
    text = (
        "# Compressed pretrained models\n\n## After the last stage\n\n"
        + final_markdown(rows)
        + "\n![ppl vs params](pretrained_ppl_vs_params.png)\n\n"
        + ("## At equal bytes\n\n" + bytes_markdown(rows) if drawn else "")
        + "".join(f"\n## At equal bytes, on {c}\n\n" + bytes_markdown(rs) for c, rs in others if drawn)
        + ("\n![ppl vs bytes](pretrained_ppl_vs_bytes.png)\n\n" if drawn else "")
        + "## Every stage\n\n"
        + pretrained_markdown(rows)
        + generations_markdown(root)
    )
    (out / "pretrained_report.md").write_text(text)
    # The numbers behind the table, kept beside it: runs/ holds ~1 GB a model and does not outlive a machine.
    write_json(out / "rows.json", rows)
    return out / "pretrained_report.md"

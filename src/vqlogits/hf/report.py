"""Table and plot for compressed pretrained models: each stage's eval_*.json in each folder."""

from __future__ import annotations

import json
from pathlib import Path

STAGES = (("kmeans", "k-means only"), ("stage1", "+ stage 1 (head)"), ("stage2", "+ stage 2 (last layers)"))


def load_evals(root: str | Path) -> list[dict]:
    rows = []
    for meta_path in sorted(Path(root).rglob("vqlogits.json")):
        folder = meta_path.parent
        meta = json.loads(meta_path.read_text())
        for key, name in STAGES:
            f = folder / f"eval_{key}.json"
            if f.exists():
                r = json.loads(f.read_text())
                calib = [c for c in meta.get("calibration", []) if key[-1] in c["stages"]]
                r.update(model=folder.name, stage=name, stage_key=key, steps=calib[-1]["stages"][key[-1]]["steps"] if calib and key != "kmeans" else 0)
                rows.append(r)
    if not rows:
        raise ValueError(f"no compressed model with eval_*.json under {root}")
    return rows


def pretrained_markdown(rows: list[dict]) -> str:
    out = ["| model | stage | steps | head params | % of dense | ppl original | ppl compressed | × original | KL(orig‖comp) | top-1 agreement |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(
            f"| {r['model']} | {r['stage']} | {r['steps']} | {r['head_params']:,} | {100 * r['head_params'] / r['dense_head_params']:.1f}% | "
            f"{r['ppl_original']:.2f} | {r['ppl_compressed']:.1f} | {r['ppl_compressed'] / r['ppl_original']:.1f} | {r['kl_original_to_compressed']:.2f} | {100 * r['top1_agreement']:.1f}% |"
        )
    return "\n".join(out) + "\n"


def pretrained_report(root: str | Path, out: str | Path | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = load_evals(root)
    out = Path(out or root)
    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, name in STAGES:
        rs = sorted((r for r in rows if r["stage_key"] == key), key=lambda r: r["head_params"])
        if rs:
            ax.plot([r["head_params"] for r in rs], [r["ppl_compressed"] for r in rs], "o-", label=name)
    ax.axhline(rows[0]["ppl_original"], color="gray", ls="--", label="original (dense head)")
    ax.set(xscale="log", yscale="log", xlabel="head parameters", ylabel="test perplexity", title="SmolLM2 with a VQ head")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "pretrained_ppl_vs_params.png", dpi=120)
    plt.close(fig)
    text = "# Compressed pretrained models\n\n" + pretrained_markdown(rows) + "\n![ppl vs params](pretrained_ppl_vs_params.png)\n"
    (out / "pretrained_report.md").write_text(text)
    return out / "pretrained_report.md"

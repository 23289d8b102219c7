"""The equal-compute study's report (scripts/equal_compute.sh; docs/RESULTS.md, "At equal compute").

Every design trains at the same training FLOPs per token (the ``tiny`` dense model's) and the same
tokens per step, so a budget of S steps is the same compute for all. Quality is test bits per byte
(``lm.evaluate``: nats over the UTF-8 bytes the tokens stand for), which compares tokenizers.
Decode cost is measured here: greedy tokens/s with a KV cache (batch 1, one thread) times the test
split's bytes per token gives bytes of text per second; decode FLOPs per byte are the model's
``decode_flops()`` over bytes per token.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

import torch

from ..files import load_plain, write_atomic, write_json
from ..lm.model import GPT, ModelConfig
from ..stats import mean_std, welch_interval
from ..timing import median_seconds_in_turns

DENSE, ADAPTIVE, CHEAP = "dense head", "adaptive softmax", "cheap head (ours)"


def kind(run: dict) -> str:
    return DENSE if run["head"] == "dense" else ADAPTIVE if run["head"] == "adaptive" else CHEAP


def load(root: str | Path) -> list[dict]:
    """One record per results.json under ``root``/<design>/..., with what the report reads."""
    root, runs = Path(root), []
    for f in sorted(root.rglob("results.json")):
        r = json.loads(f.read_text())
        test = r["eval"]["test"]
        runs.append(
            {
                "design": f.relative_to(root).parts[0],
                "folder": str(f.parent),
                "seed": r["config"]["seed"],
                "steps": r["config"]["steps"],
                "head": r["head"],
                "kind": kind(r),
                "tokenizer": r["config"]["tokenizer"],
                "vocab_size": r["model_config"]["vocab_size"],
                "shape": {k: r["model_config"][k] for k in ("n_layer", "d_model", "n_head")},
                "test_bpb": r["test_bpb"],
                "val_bpb": r["val_bpb"],
                "train_tokens": r["train_tokens"],
                "train_flops": r["train_flops"],
                "flops_per_token": r["train_flops_per_token"],
                "decode_flops_per_token": r["model_decode_flops"],
                "bytes_per_token": test["bytes"] / test["tokens"],
                "total_params": r["total_params"],
                "embedding_params": r["embedding_params"],
                "head_params": r["head_params"],
                "train_tokens_per_s": r["tokens_per_s"],
            }
        )
    if not runs:
        raise ValueError(f"no results.json under {root}")
    return runs


def summarize(runs: list[dict]) -> list[dict]:
    """One row per design and budget: seeds pooled (mean, sd, the per-seed values)."""
    groups = defaultdict(list)
    for r in runs:
        groups[r["design"], r["steps"]].append(r)
    rows = []
    for _, rs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        bpb, sd = mean_std([r["test_bpb"] for r in rs])
        first = rs[0]
        rows.append(
            {
                **{k: first[k] for k in ("design", "steps", "head", "kind", "tokenizer", "vocab_size", "shape")},
                **{k: first[k] for k in ("total_params", "embedding_params", "head_params", "decode_flops_per_token")},
                "seeds": len(rs),
                "test_bpb": bpb,
                "test_bpb_sd": sd,
                "test_bpb_seeds": [r["test_bpb"] for r in rs],
                "val_bpb": statistics.fmean(r["val_bpb"] for r in rs),
                "train_tokens": first["train_tokens"],
                "train_flops": statistics.fmean(r["train_flops"] for r in rs),
                "flops_per_token": first["flops_per_token"],
                "bytes_per_token": first["bytes_per_token"],
                "decode_flops_per_byte": first["decode_flops_per_token"] / first["bytes_per_token"],
                "train_tokens_per_s": statistics.fmean(r["train_tokens_per_s"] for r in rs),
            }
        )
    return rows


def gap(a: dict, b: dict) -> dict:
    """a's bits per byte against b's, in % of b's, with Welch's 95% interval over seeds (a side with
    one seed borrows the other's variance; none when both have one)."""
    ci = welch_interval(a["test_bpb_seeds"], b["test_bpb_seeds"])
    pct = lambda x: 100 * x / b["test_bpb"]  # noqa: E731
    return {"pct": pct(a["test_bpb"] - b["test_bpb"]), "ci95": None if ci is None else [pct(ci[0]), pct(ci[1])]}


def verdicts(rows: list[dict]) -> list[dict]:
    """Per budget: the best design, the best dense design, the best cheap head, and the gaps; the
    runner-up dense design against the best says whether the best dense pick itself is decided."""
    out = []
    for steps in sorted({r["steps"] for r in rows}):
        at = [r for r in rows if r["steps"] == steps]
        best = min(at, key=lambda r: r["test_bpb"])
        by_kind = {
            k: min((r for r in at if r["kind"] == k), key=lambda r: r["test_bpb"], default=None)
            for k in (DENSE, ADAPTIVE, CHEAP)
        }
        v = {"steps": steps, "train_flops": statistics.fmean(r["train_flops"] for r in at), "best": best["design"]}
        for k, r in by_kind.items():
            v[f"best {k}"] = None if r is None else r["design"]
        dense, cheap = by_kind[DENSE], by_kind[CHEAP]
        if dense is not None:
            for k in (ADAPTIVE, CHEAP):
                if by_kind[k] is not None:
                    v[f"{k} vs best dense"] = gap(by_kind[k], dense)
            dense_order = sorted((r for r in at if r["kind"] == DENSE), key=lambda r: r["test_bpb"])
            if len(dense_order) > 1:
                v["runner-up dense head"] = dense_order[1]["design"]
                v["runner-up dense vs best dense"] = gap(dense_order[1], dense)
        if (
            dense is not None and cheap is not None
        ):  # the moonshot: >= 5% better, CI excluding 0, no more decode FLOPs per byte
            g = v[f"{CHEAP} vs best dense"]
            v["moonshot"] = bool(
                g["pct"] <= -5
                and g["ci95"] is not None
                and g["ci95"][1] < 0
                and cheap["decode_flops_per_byte"] <= dense["decode_flops_per_byte"]
            )
        out.append(v)
    return out


def pareto(rows: list[dict], x: str) -> set[tuple[str, int]]:
    """(design, steps) of the points no other point beats on both ``x`` and bits per byte (lower is better)."""
    front = set()
    for r in rows:
        if not any(
            o[x] <= r[x] and o["test_bpb"] < r["test_bpb"] or o[x] < r[x] and o["test_bpb"] <= r["test_bpb"]
            for o in rows
        ):
            front.add((r["design"], r["steps"]))
    return front


def _decode_model(run_folder: str | Path) -> tuple[GPT, str]:
    """A run's model with its trained weights when model.pt is there, else fresh ones of the same
    shape (decode speed does not depend on the values)."""
    path = Path(run_folder) / "model.pt"
    if path.exists():
        state = load_plain(path)
        model = GPT(ModelConfig(**state["model_config"]))
        model.load_state_dict(state["model"])
        return model.eval(), "trained"
    r = json.loads((Path(run_folder) / "results.json").read_text())
    return GPT(ModelConfig(**r["model_config"])).eval(), "random (model.pt is not on this machine)"


@torch.no_grad()
def decode_speeds(run_folders: dict, prompt: int = 16, new: int = 64, repeats: int = 21) -> dict:
    """Greedy tokens/s at batch 1 with a KV cache (``GPT.generate``) of each ``design: run folder``,
    in one run (``median_seconds_in_turns``: the models take turns within every repeat)."""
    models, calls = {}, {}
    for d, folder in run_folders.items():
        model, weights = _decode_model(folder)
        p = min(prompt, model.cfg.block_size // 4)
        n = min(new, model.cfg.block_size - p)  # within the context the model was trained for
        ids = torch.randint(0, model.cfg.vocab_size, (1, p), generator=torch.Generator().manual_seed(0))
        models[d] = (n, weights)
        calls[d] = lambda model=model, ids=ids, n=n: model.generate(ids, n)
    seconds = median_seconds_in_turns(calls, repeats)
    threads = torch.get_num_threads()
    return {
        d: {"tokens_per_s": n / seconds[d], "weights": w, "threads": threads, "repeats": repeats}
        for d, (n, w) in models.items()
    }


def _table(rows: list[dict], front: set) -> str:
    lines = [
        "| design | tokenizer | shape (L × d) | seeds | test bits/byte | total params | embedding | head |"
        " decode FLOPs/byte | train tok/s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: r["test_bpb"]):
        sd = f" ± {r['test_bpb_sd']:.4f}" if r["seeds"] > 1 else ""
        star = " ★" if (r["design"], r["steps"]) in front else ""
        lines.append(
            f"| {r['design']}{star} | {r['tokenizer']} | {r['shape']['n_layer']} × {r['shape']['d_model']} |"
            f" {r['seeds']} | "
            f"{r['test_bpb']:.4f}{sd} | {r['total_params']:,} | {r['embedding_params']:,} | {r['head_params']:,} | "
            f"{r['decode_flops_per_byte']:,.0f} | {r['train_tokens_per_s']:,.0f} |"
        )
    return "\n".join(lines) + "\n"


def _gap_text(g: dict | None) -> str:
    if g is None:
        return "–"
    ci = g["ci95"]
    return f"{g['pct']:+.2f}%" + (f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else " (no interval: one seed each)")


def plots(rows: list[dict], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    designs = list(dict.fromkeys(r["design"] for r in sorted(rows, key=lambda r: r["design"])))
    largest = max(r["steps"] for r in rows)
    made = []
    for x, xlabel, name, at in (
        ("train_flops", "training FLOPs (body + head, forward + backward)", "bpb_vs_train_flops.png", None),
        ("decode_flops_per_byte", "decode FLOPs per byte of text (model, batch 1)", "bpb_vs_decode_flops.png", largest),
        ("total_params", "total parameters", "bpb_vs_params.png", largest),
    ):
        shown = [r for r in rows if at is None or r["steps"] == at]
        front = pareto(shown, x)
        fig, ax = plt.subplots(figsize=(7.5, 4.8))
        for i, d in enumerate(designs):
            rs = sorted((r for r in shown if r["design"] == d), key=lambda r: r[x])
            if not rs:
                continue
            style = "s--" if rs[0]["kind"] == DENSE else "^-." if rs[0]["kind"] == ADAPTIVE else "o-"
            ax.errorbar(
                [r[x] for r in rs],
                [r["test_bpb"] for r in rs],
                yerr=[r["test_bpb_sd"] for r in rs],
                fmt=style,
                ms=5,
                lw=1,
                capsize=2,
                color=plt.cm.tab10(i % 10),
                label=d,
            )
        pts = sorted((r for r in shown if (r["design"], r["steps"]) in front), key=lambda r: r[x])
        ax.plot(
            [r[x] for r in pts], [r["test_bpb"] for r in pts], color="black", lw=2.5, alpha=0.25, label="Pareto front"
        )
        title = "all budgets" if at is None else f"{largest} steps"
        ax.set(xscale="log", xlabel=xlabel, ylabel="test bits per byte", title=f"Equal compute, devdocs ({title})")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
        made.append(name)
    return made


def report(root: str | Path, out: str | Path, speed: bool = True) -> Path:
    """summary.json, report.md and the plots for the study under ``root``. Without ``speed``, the
    decode speeds of the summary.json already in ``out`` are kept (measured on an idle core; the
    seeds stage keeps both cores busy)."""
    runs = load(root)
    rows = summarize(runs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    largest = max(r["steps"] for r in rows)
    budget_rows = {r["design"]: r for r in rows if r["steps"] == largest}
    speeds, earlier = {}, out / "summary.json"
    if not speed and earlier.exists():
        speeds = {d: s for d, s in json.loads(earlier.read_text())["decode"].items() if d in budget_rows}
    if speed:
        folders = {x["design"]: x["folder"] for x in runs if x["steps"] == largest and x["seed"] == 0}
        speeds = {
            d: {**v, "bytes_per_s": v["tokens_per_s"] * budget_rows[d]["bytes_per_token"]}
            for d, v in decode_speeds(folders).items()
        }
    judged = verdicts(rows)
    dense = [r for r in budget_rows.values() if r["kind"] == DENSE]
    cheap = [r for r in budget_rows.values() if r["kind"] == CHEAP]
    summary = {
        "rows": rows,
        "verdicts": judged,
        "decode": speeds,
        "best_dense": min(dense, key=lambda r: r["test_bpb"])["design"] if dense else None,
        "best_cheap": min(cheap, key=lambda r: r["test_bpb"])["design"] if cheap else None,
    }
    write_json(out / "summary.json", summary)
    text = "# Equal compute: which design gives the best small LM?\n\n"
    for v in judged:
        text += f"## {v['steps']:,} steps ({v['train_flops']:.2e} training FLOPs)\n\n"
        text += f"Best: **{v['best']}**; best dense: {v[f'best {DENSE}']}; best cheap head: {v[f'best {CHEAP}']}. "
        text += f"Cheap head vs best dense: {_gap_text(v.get(f'{CHEAP} vs best dense'))}; "
        text += f"adaptive vs best dense: {_gap_text(v.get(f'{ADAPTIVE} vs best dense'))}"
        if "runner-up dense head" in v:
            text += f"; runner-up dense ({v['runner-up dense head']}): {_gap_text(v['runner-up dense vs best dense'])}"
        text += ".\n\n"
        at = [r for r in rows if r["steps"] == v["steps"]]
        text += _table(at, pareto(rows, "train_flops")) + "\n"
    if speeds:
        threads = next(iter(speeds.values()))["threads"]
        text += f"## Decode speed ({largest} steps; batch 1, greedy, KV cache, {threads} thread)\n\n"
        text += "| design | tokens/s | bytes per token | bytes/s of text | weights |\n|---|---:|---:|---:|---|\n"
        for r in sorted(budget_rows.values(), key=lambda r: -speeds[r["design"]]["bytes_per_s"]):
            s = speeds[r["design"]]
            text += f"| {r['design']} | {s['tokens_per_s']:,.0f} | {r['bytes_per_token']:.3f} | "
            text += f"{s['bytes_per_s']:,.0f} | {s['weights']} |\n"
        text += "\n"
    images = plots(rows, out)
    text += (
        "★: on the Pareto front of bits per byte against training FLOPs.\n\n"
        + "\n".join(f"![{i}]({i})" for i in images)
        + "\n"
    )
    write_atomic(out / "report.md", lambda tmp: tmp.write_text(text))
    return out / "report.md"

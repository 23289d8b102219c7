"""The main job (``make demo``): dense vs VQ-Logits heads on the embedded data, the speed of their
logits measured beside them, and what the budget can and cannot show."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from pathlib import Path

from .bench.suite import logit_speed
from .files import USER_CACHE
from .lm.experiments import load_model
from .lm.train import TrainConfig, train
from .studies.report import load_runs, markdown_table, summarize, write_report
from .studies.scaling import headline

DEMO_K = (256, 1024)
CONVERGED_SUMMARY = Path(__file__).resolve().parents[2] / "docs" / "results" / "converged" / "summary.json"


def regime_note(dense: dict, converged_summary: Path = CONVERGED_SUMMARY) -> str:
    """What the demo's budget can and cannot show: its tokens, steps and seeds, how far dense still
    was from converging (its last validation gain), and the converged results' headline."""
    c, h = dense["config"], dense["history"]
    tokens = dense["train_tokens"]
    gain = 1 - h["val_ppl"][-1] / h["val_ppl"][-2] if len(h["val_ppl"]) > 1 else None
    text = (
        f"## Read this first: the demo's regime\n\nEvery head here trained for {c['steps']} steps, {tokens:,} tokens, "
        "one seed. At that budget the dense head is"
        f" {'undertrained' if gain is None or gain > 0.03 else 'nearly flat'}: its validation perplexity "
        + (
            f"fell by {100 * gain:.0f}% over its last {h['val_step'][-1] - h['val_step'][-2]} steps"
            if gain is not None
            else "was measured once"
        )
        + ", and a small head with a unigram-initialised bias starts closer to a good model than a dense head does. "
        "A head that beats dense here says more about the budget than about the head.\n\n"
        "The benchmark built to converge (devdocs, dense with 3 seeds; whether dense met its convergence criteria "
        "is stated there) is in docs/RESULTS.md"
    )
    if converged_summary.exists():
        text += ". Their headline, from docs/results/converged/summary.json:\n\n" + headline(
            json.loads(converged_summary.read_text())
        )
    else:
        text += " (not yet measured in this checkout).\n"
    return text + "\n"


def demo(cache: str | Path = USER_CACHE, out: str = "runs/demo", steps: int = 300, codebook_sizes=DEMO_K) -> str:
    """The main job: dense vs VQ-Logits on the Python docs with the SmolLM2 tokenizer (random and
    k-means maps, and our learned map); prints the table and states what its budget can show."""
    out = Path(out)
    base = TrainConfig(
        corpus="pydocs",
        tokenizer="smollm2",
        model="tiny",
        steps=steps,
        eval_every=max(1, steps // 4),
        checkpoint_every=max(1, steps // 4),
        cache=str(cache),  # a path, never the USER_CACHE object: the config is saved in every checkpoint
        final_eval_tokens=65536,
    )
    K = max(codebook_sizes)
    runs = [replace(base, head="dense", out=str(out / "dense"))]
    runs += [
        replace(base, head="vq", codebook_size=k, mapping="random", out=str(out / f"vq{k}-random"))
        for k in codebook_sizes
    ]
    runs.append(
        replace(
            base,
            head="vq",
            codebook_size=K,
            mapping="kmeans",
            codebook_init="centroids",
            warmup_dense_steps=steps // 5,
            out=str(out / f"vq{K}-kmeans"),
        )
    )
    runs.append(
        replace(
            base,
            head="vq",
            codebook_size=K,
            mapping="random",
            reassign_every=max(1, steps // 6),
            out=str(out / f"vq{K}-learned"),
        )
    )
    for cfg in runs:
        if not (Path(cfg.out) / "results.json").exists():
            train(cfg)
    dense_model, _ = load_model(out / "dense")
    d, V = dense_model.cfg.d_model, dense_model.cfg.vocab_size
    speed_rows = [
        "| K | tokens | dense h·Wᵀ | VQ code logits | VQ full logits | speedup (code) | speedup (full) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for k, n in itertools.product(codebook_sizes, (1, 4096)):
        s = logit_speed(d, V, k, n, repeats=10 if n > 1 else 50)
        speed_rows.append(
            f"| {k} | {n} | {s['dense_s'] * 1e3:.3f} ms | {s['vq_compact_s'] * 1e3:.3f} ms |"
            f" {s['vq_full_s'] * 1e3:.3f} ms | {s['speedup_compact']:.1f}x | {s['speedup_full']:.1f}x |"
        )
    speed = (
        "\n## Logit computation, measured in this run (d={}, V={:,}, CPU)\n\n".format(d, V)
        + "\n".join(speed_rows)
        + "\n\n"
    )
    note = regime_note(json.loads((out / "dense" / "results.json").read_text()))
    report = write_report([out], out, extra=speed, intro=note)
    table = markdown_table(summarize(load_runs([out])))
    print("\n" + note + "\n" + table + speed + f"report: {report}")
    return str(report)

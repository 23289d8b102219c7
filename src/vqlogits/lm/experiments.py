"""Evaluation of saved runs, grids of runs (sweep), and the main demo job."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import torch

from ..bench.suite import logit_speed
from .data import tokenize_corpus
from .model import GPT, ModelConfig
from .report import load_runs, markdown_table, summarize, write_report
from .train import TrainConfig, perplexity, train


def load_model(run_dir: str | Path) -> tuple[GPT, TrainConfig]:
    """The trained model of a run folder (model.pt, else the last ckpt.pt)."""
    run_dir = Path(run_dir)
    path = run_dir / "model.pt" if (run_dir / "model.pt").exists() else run_dir / "ckpt.pt"
    if not path.exists():
        raise ValueError(f"{run_dir} holds no model.pt or ckpt.pt")
    state = torch.load(path, map_location="cpu", weights_only=False)
    mcfg = ModelConfig(**state["model_config"])
    model = GPT(mcfg)
    model.load_state_dict(state["model"])
    return model.eval(), TrainConfig(**state["config"])


def evaluate(run_dir: str | Path, corpus: str | None = None, max_tokens: int | None = None) -> dict:
    """Validation and test perplexity of a saved run, on its own corpus or another one
    (over ``max_tokens`` targets per split; default: the run's ``final_eval_tokens``)."""
    model, cfg = load_model(run_dir)
    max_tokens = max_tokens or cfg.final_eval_tokens
    splits, _, meta = tokenize_corpus(corpus or cfg.corpus, cfg.tokenizer, cfg.cache)
    if meta["vocab_size"] != model.cfg.vocab_size:
        raise ValueError(f"tokenizer vocabulary {meta['vocab_size']} differs from the model's {model.cfg.vocab_size}")
    return {
        "run": str(run_dir),
        "corpus": corpus or cfg.corpus,
        "val_ppl": perplexity(model, splits["val"], max_tokens, desc="val"),
        "test_ppl": perplexity(model, splits["test"], max_tokens, desc="test"),
    }


def sweep(
    base: TrainConfig,
    heads: list[str],
    codebook_sizes: list[int],
    mappings: list[str],
    seeds: list[int],
    out: str | Path,
    bias: list[bool] = (True,),
    reassign: list[int] = (0,),
    budgets: list[float] = (),
) -> Path:
    """Train every combination (skipping finished runs, resuming broken ones) and write a report.

    With ``budgets``, every head but dense and adaptive is sized to each budget instead
    (``heads.size_for_budget``); budgets too small for a head are skipped with a note.
    """
    out = Path(out)
    frac = f"-f{base.reassign_frac:g}" if base.reassign_frac != TrainConfig.reassign_frac else ""
    configs = []
    for head, seed in itertools.product(heads, seeds):
        if budgets and head not in ("dense", "adaptive"):
            for b, every, with_bias in itertools.product(budgets, reassign if head != "lowrank" else (0,), bias if head != "lowrank" else (True,)):
                name = f"{head}-b{b:g}{'' if with_bias else '-nobias'}{f'-learn{every}{frac}' if every else ''}-s{seed}"
                configs.append(replace(base, head=head, head_budget=b, head_bias=with_bias, reassign_every=every, seed=seed, out=str(out / name)))
            continue
        if head != "vq":
            configs.append(replace(base, head=head, seed=seed, out=str(out / f"{head}-s{seed}")))
            continue
        for K, mapping, b, every in itertools.product(codebook_sizes, mappings, bias, reassign):
            warm = base.warmup_dense_steps or (base.steps // 5 if mapping.startswith("kmeans") else 0)
            name = f"vq{K}-{mapping}{'' if b else '-nobias'}{f'-learn{every}{frac}' if every else ''}-s{seed}"
            configs.append(replace(base, head="vq", codebook_size=K, mapping=mapping, head_bias=b, reassign_every=every, warmup_dense_steps=warm, seed=seed, out=str(out / name)))
    for cfg in configs:
        if (Path(cfg.out) / "results.json").exists():
            continue
        try:
            train(cfg)
        except ValueError as e:
            if not cfg.head_budget or "smallest" not in str(e):
                raise
            print(f"skipped {cfg.head} at head_budget={cfg.head_budget}: {e}")
    return write_report([out], out)


DEMO_K = (256, 1024)


def demo(cache: str = ".cache", out: str = "runs/demo", steps: int = 300, codebook_sizes=DEMO_K) -> str:
    """The main job: dense vs VQ-Logits on the Python docs with the SmolLM2 tokenizer; prints the table."""
    out = Path(out)
    base = TrainConfig(corpus="pydocs", tokenizer="smollm2", model="tiny", steps=steps, eval_every=max(1, steps // 4), checkpoint_every=max(1, steps // 4), cache=cache, final_eval_tokens=65536)
    warm = steps // 5
    runs = [replace(base, head="dense", out=str(out / "dense"))]
    for K in codebook_sizes:
        runs.append(replace(base, head="vq", codebook_size=K, mapping="random", out=str(out / f"vq{K}-random")))
        runs.append(replace(base, head="vq", codebook_size=K, mapping="kmeans", codebook_init="centroids", warmup_dense_steps=warm, out=str(out / f"vq{K}-kmeans")))
    for cfg in runs:
        if not (Path(cfg.out) / "results.json").exists():
            train(cfg)
    dense_model, _ = load_model(out / "dense")
    d, V = dense_model.cfg.d_model, dense_model.cfg.vocab_size
    speed_rows = ["| K | tokens | dense h·Wᵀ | VQ code logits | VQ full logits | speedup (code) | speedup (full) |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for K, n in itertools.product(codebook_sizes, (1, 4096)):
        s = logit_speed(d, V, K, n, repeats=10 if n > 1 else 50)
        speed_rows.append(f"| {K} | {n} | {s['dense_s']*1e3:.3f} ms | {s['vq_compact_s']*1e3:.3f} ms | {s['vq_full_s']*1e3:.3f} ms | {s['speedup_compact']:.1f}x | {s['speedup_full']:.1f}x |")
    speed = "\n## Logit computation, measured in this run (d={}, V={:,}, CPU)\n\n".format(d, V) + "\n".join(speed_rows) + "\n\n"
    report = write_report([out], out, extra=speed)
    table = markdown_table(summarize(load_runs([out])))
    print("\n" + table + speed + f"report: {report}")
    return str(report)

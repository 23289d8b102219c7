"""Evaluation of saved runs, grids of runs (sweep), and the main demo job."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from pathlib import Path

from ..bench.suite import logit_speed
from .checkpoint import RunLocked, load_plain
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
    state = load_plain(path)
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


def _dense_warmup(base: TrainConfig, mapping: str) -> int:
    """A k-means map needs a dense head to cluster: a fifth of the steps unless set."""
    return base.warmup_dense_steps or (base.steps // 5 if mapping.startswith("kmeans") else 0)


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
    wsd_steps: list[int] = (),
) -> Path:
    """Train every combination (skipping finished runs, resuming broken ones) and write a report.

    With ``budgets``, every head but dense and adaptive is sized to each budget instead
    (``heads.size_for_budget``); budgets too small for a head are skipped with a note.
    With ``wsd_steps`` (increasing), every combination is trained at each of these step budgets
    with the WSD schedule, into ``<run>/steps<S>``; each budget starts from the previous one's
    stable-phase snapshot, so the whole chain costs one run to the largest budget plus the decays.
    """
    out = Path(out)
    frac = f"-f{base.reassign_frac:g}" if base.reassign_frac != TrainConfig.reassign_frac else ""
    configs = []
    for head, seed in itertools.product(heads, seeds):
        if budgets and head not in ("dense", "adaptive"):
            maps = mappings if head == "vq" else ("random",)  # only vq takes --mapping
            for b, mapping, every, with_bias in itertools.product(budgets, maps, reassign if head != "lowrank" else (0,), bias if head != "lowrank" else (True,)):
                named_map = "" if mapping == "random" else f"-{mapping}"
                name = f"{head}-b{b:g}{named_map}{'' if with_bias else '-nobias'}{f'-learn{every}{frac}' if every else ''}-s{seed}"
                configs.append(replace(base, head=head, head_budget=b, mapping=mapping, head_bias=with_bias, reassign_every=every, warmup_dense_steps=_dense_warmup(base, mapping), seed=seed, out=str(out / name)))
            continue
        if head != "vq":
            configs.append(replace(base, head=head, seed=seed, out=str(out / f"{head}-s{seed}")))
            continue
        for K, mapping, b, every in itertools.product(codebook_sizes, mappings, bias, reassign):
            name = f"vq{K}-{mapping}{'' if b else '-nobias'}{f'-learn{every}{frac}' if every else ''}-s{seed}"
            configs.append(replace(base, head="vq", codebook_size=K, mapping=mapping, head_bias=b, reassign_every=every, warmup_dense_steps=_dense_warmup(base, mapping), seed=seed, out=str(out / name)))
    if wsd_steps:
        if list(wsd_steps) != sorted(set(wsd_steps)):
            raise ValueError(f"wsd_steps must be increasing, got {list(wsd_steps)}")
        chained = []
        for cfg in configs:
            for i, steps in enumerate(wsd_steps):
                init = str(Path(cfg.out) / f"steps{wsd_steps[i - 1]}") if i else ""
                chained.append(replace(cfg, schedule="wsd", steps=steps, init_from=init, out=str(Path(cfg.out) / f"steps{steps}")))
        configs = chained
    for cfg in configs:  # every option of the grid, before any run starts
        cfg.check()
    blocked = set()  # chains another process is training: their later budgets need its snapshots
    for cfg in configs:
        chain = Path(cfg.out).parent if wsd_steps else None
        if (Path(cfg.out) / "results.json").exists() or (chain is not None and chain in blocked):
            continue
        if cfg.init_from and not (Path(cfg.init_from) / "stable.pt").exists():
            # The snapshot did not survive (only results.json is kept, e.g. in git): the stable phase
            # does not depend on steps, so training it again gives the same run.
            cfg = replace(cfg, init_from="")
        try:
            train(cfg)
        except RunLocked as e:
            print(f"skipped: {e}")
            blocked.add(chain)
        except ValueError as e:
            if not cfg.head_budget or "smallest" not in str(e):
                raise
            print(f"skipped {cfg.head} at head_budget={cfg.head_budget}: {e}")
    return write_report([out], out)


DEMO_K = (256, 1024)
CONVERGED_SUMMARY = Path(__file__).resolve().parents[3] / "docs" / "results" / "converged" / "summary.json"


def regime_note(dense: dict, converged_summary: Path = CONVERGED_SUMMARY) -> str:
    """What the demo's budget can and cannot show: its tokens, steps and seeds, how far dense still
    was from converging (its last validation gain), and the converged results' headline."""
    c, h = dense["config"], dense["history"]
    tokens = dense["train_tokens"]
    gain = 1 - h["val_ppl"][-1] / h["val_ppl"][-2] if len(h["val_ppl"]) > 1 else None
    text = (
        f"## Read this first: the demo's regime\n\nEvery head here trained for {c['steps']} steps, {tokens:,} tokens, "
        f"one seed. At that budget the dense head is {'undertrained' if gain is None or gain > 0.03 else 'nearly flat'}: its validation perplexity "
        + (f"fell by {100 * gain:.0f}% over its last {h['val_step'][-1] - h['val_step'][-2]} steps" if gain is not None else "was measured once")
        + ", and a small head with a unigram-initialised bias starts closer to a good model than a dense head does. "
        "A head that beats dense here says more about the budget than about the head.\n\n"
        "The benchmark built to converge (devdocs, dense with 3 seeds; whether dense met its convergence criteria "
        "is stated there) is in docs/RESULTS.md"
    )
    if converged_summary.exists():
        from .scaling import headline

        text += ". Their headline, from docs/results/converged/summary.json:\n\n" + headline(json.loads(converged_summary.read_text()))
    else:
        text += " (not yet measured in this checkout).\n"
    return text + "\n"


def demo(cache: str = ".cache", out: str = "runs/demo", steps: int = 300, codebook_sizes=DEMO_K) -> str:
    """The main job: dense vs VQ-Logits on the Python docs with the SmolLM2 tokenizer (random and
    k-means maps, and our learned map); prints the table and states what its budget can show."""
    out = Path(out)
    base = TrainConfig(corpus="pydocs", tokenizer="smollm2", model="tiny", steps=steps, eval_every=max(1, steps // 4), checkpoint_every=max(1, steps // 4), cache=cache, final_eval_tokens=65536)
    K = max(codebook_sizes)
    runs = [replace(base, head="dense", out=str(out / "dense"))]
    runs += [replace(base, head="vq", codebook_size=k, mapping="random", out=str(out / f"vq{k}-random")) for k in codebook_sizes]
    runs.append(replace(base, head="vq", codebook_size=K, mapping="kmeans", codebook_init="centroids", warmup_dense_steps=steps // 5, out=str(out / f"vq{K}-kmeans")))
    runs.append(replace(base, head="vq", codebook_size=K, mapping="random", reassign_every=max(1, steps // 6), out=str(out / f"vq{K}-learned")))
    for cfg in runs:
        if not (Path(cfg.out) / "results.json").exists():
            train(cfg)
    dense_model, _ = load_model(out / "dense")
    d, V = dense_model.cfg.d_model, dense_model.cfg.vocab_size
    speed_rows = ["| K | tokens | dense h·Wᵀ | VQ code logits | VQ full logits | speedup (code) | speedup (full) |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for k, n in itertools.product(codebook_sizes, (1, 4096)):
        s = logit_speed(d, V, k, n, repeats=10 if n > 1 else 50)
        speed_rows.append(f"| {k} | {n} | {s['dense_s']*1e3:.3f} ms | {s['vq_compact_s']*1e3:.3f} ms | {s['vq_full_s']*1e3:.3f} ms | {s['speedup_compact']:.1f}x | {s['speedup_full']:.1f}x |")
    speed = "\n## Logit computation, measured in this run (d={}, V={:,}, CPU)\n\n".format(d, V) + "\n".join(speed_rows) + "\n\n"
    note = regime_note(json.loads((out / "dense" / "results.json").read_text()))
    report = write_report([out], out, extra=speed, intro=note)
    table = markdown_table(summarize(load_runs([out])))
    print("\n" + note + "\n" + table + speed + f"report: {report}")
    return str(report)

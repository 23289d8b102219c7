"""Evaluation of saved runs, and grids of runs (sweep)."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

from ..files import USER_CACHE, RunLocked, load_plain
from ..heads import HEADS, KINDS
from .data import tokenize_corpus
from .evaluate import split_scores
from .model import GPT, ModelConfig
from .report import write_report
from .train import TrainConfig, train


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
    """Validation and test perplexity and bits per byte of a saved run, on its own corpus or another
    one (over ``max_tokens`` targets per split; default: the run's ``final_eval_tokens``)."""
    model, cfg = load_model(run_dir)
    max_tokens = max_tokens or cfg.final_eval_tokens
    splits, tok, meta = tokenize_corpus(
        corpus or cfg.corpus, cfg.tokenizer, cfg.cache or USER_CACHE, splits=("val", "test")
    )
    if meta["vocab_size"] != model.cfg.vocab_size:
        raise ValueError(f"tokenizer vocabulary {meta['vocab_size']} differs from the model's {model.cfg.vocab_size}")
    return {"run": str(run_dir), "corpus": corpus or cfg.corpus, **split_scores(model, splits, tok, max_tokens)}


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
    for head in heads:  # before any run starts
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    for head, seed in itertools.product(heads, seeds):
        if budgets and KINDS[head].sizable:
            maps = mappings if head == "vq" else ("random",)  # only vq takes --mapping
            mapped = KINDS[head].has_map  # lowrank: no map to learn, no bias
            for b, mapping, every, with_bias in itertools.product(
                budgets, maps, reassign if mapped else (0,), bias if mapped else (True,)
            ):
                named_map = "" if mapping == "random" else f"-{mapping}"
                learned = f"-learn{every}{frac}" if every else ""
                name = f"{head}-b{b:g}{named_map}{'' if with_bias else '-nobias'}{learned}-s{seed}"
                configs.append(
                    replace(
                        base,
                        head=head,
                        head_budget=b,
                        mapping=mapping,
                        head_bias=with_bias,
                        reassign_every=every,
                        warmup_dense_steps=_dense_warmup(base, mapping),
                        seed=seed,
                        out=str(out / name),
                    )
                )
            continue
        if head != "vq":
            configs.append(replace(base, head=head, seed=seed, out=str(out / f"{head}-s{seed}")))
            continue
        for K, mapping, b, every in itertools.product(codebook_sizes, mappings, bias, reassign):
            name = f"vq{K}-{mapping}{'' if b else '-nobias'}{f'-learn{every}{frac}' if every else ''}-s{seed}"
            configs.append(
                replace(
                    base,
                    head="vq",
                    codebook_size=K,
                    mapping=mapping,
                    head_bias=b,
                    reassign_every=every,
                    warmup_dense_steps=_dense_warmup(base, mapping),
                    seed=seed,
                    out=str(out / name),
                )
            )
    if wsd_steps:
        if list(wsd_steps) != sorted(set(wsd_steps)):
            raise ValueError(f"wsd_steps must be increasing, got {list(wsd_steps)}")
        chained = []
        for cfg in configs:
            for i, steps in enumerate(wsd_steps):
                init = str(Path(cfg.out) / f"steps{wsd_steps[i - 1]}") if i else ""
                chained.append(
                    replace(cfg, schedule="wsd", steps=steps, init_from=init, out=str(Path(cfg.out) / f"steps{steps}"))
                )
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

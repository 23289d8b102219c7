"""Evaluation of saved runs, and grids of runs (sweep)."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

from ..data.corpora import tokenize_corpus
from ..files import USER_CACHE, RunLocked, load_plain
from ..heads import HEADS, KINDS
from .evaluate import split_scores
from .model import GPT, ModelConfig
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


def _budget_grid(base: TrainConfig, head: str, seed: int, out: Path, grid: dict) -> list[TrainConfig]:
    """A sizable head at every budget, map, reassignment and bias of ``grid``."""
    kind = KINDS[head]
    maps = grid["mappings"] if kind.mapped else ("random",)  # only a mapped head takes --mapping
    mapped = kind.has_map  # lowrank: no map to learn, no bias
    reassign, bias = (grid["reassign"], grid["bias"]) if mapped else ((0,), (True,))
    frac = f"-f{base.reassign_frac:g}" if base.reassign_frac != TrainConfig.reassign_frac else ""
    configs = []
    for b, mapping, every, with_bias in itertools.product(grid["budgets"], maps, reassign, bias):
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
    return configs


def _sized_grid(base: TrainConfig, head: str, seed: int, out: Path, grid: dict) -> list[TrainConfig]:
    """A head by its own sizes: a mapped head at every K, map, bias and reassignment; any other once."""
    if not KINDS[head].mapped:
        return [replace(base, head=head, seed=seed, out=str(out / f"{head}-s{seed}"))]
    frac = f"-f{base.reassign_frac:g}" if base.reassign_frac != TrainConfig.reassign_frac else ""
    configs = []
    for K, mapping, b, every in itertools.product(
        grid["codebook_sizes"], grid["mappings"], grid["bias"], grid["reassign"]
    ):
        name = f"{head}{K}-{mapping}{'' if b else '-nobias'}{f'-learn{every}{frac}' if every else ''}-s{seed}"
        configs.append(
            replace(
                base,
                head=head,
                codebook_size=K,
                mapping=mapping,
                head_bias=b,
                reassign_every=every,
                warmup_dense_steps=_dense_warmup(base, mapping),
                seed=seed,
                out=str(out / name),
            )
        )
    return configs


def _chained(configs: list[TrainConfig], wsd_steps: list[int]) -> list[TrainConfig]:
    """Each config at every step budget with the WSD schedule, each budget starting from the previous one's snapshot."""
    if list(wsd_steps) != sorted(set(wsd_steps)):
        raise ValueError(f"wsd_steps must be increasing, got {list(wsd_steps)}")
    chained = []
    for cfg in configs:
        for i, steps in enumerate(wsd_steps):
            init = str(Path(cfg.out) / f"steps{wsd_steps[i - 1]}") if i else ""
            chained.append(
                replace(cfg, schedule="wsd", steps=steps, init_from=init, out=str(Path(cfg.out) / f"steps{steps}"))
            )
    return chained


def _train_all(configs: list[TrainConfig], chains: bool) -> None:
    """Train each config not yet finished; skip a chain another process holds, and a budget too small for its head."""
    blocked = set()  # chains another process is training: their later budgets need its snapshots
    for cfg in configs:
        chain = Path(cfg.out).parent if chains else None
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
    """Train every combination (skipping finished runs, resuming broken ones) into ``out``; returns ``out``
    (``studies.report.write_report`` reports it).

    With ``budgets``, every head but dense and adaptive is sized to each budget instead
    (``heads.size_for_budget``); budgets too small for a head are skipped with a note.
    With ``wsd_steps`` (increasing), every combination is trained at each of these step budgets
    with the WSD schedule, into ``<run>/steps<S>``; each budget starts from the previous one's
    stable-phase snapshot, so the whole chain costs one run to the largest budget plus the decays.
    """
    out = Path(out)
    for head in heads:  # before any run starts
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    grid = dict(codebook_sizes=codebook_sizes, mappings=mappings, bias=bias, reassign=reassign, budgets=budgets)
    configs = []
    for head, seed in itertools.product(heads, seeds):
        by_budget = budgets and KINDS[head].sizable
        configs += (_budget_grid if by_budget else _sized_grid)(base, head, seed, out, grid)
    if wsd_steps:
        configs = _chained(configs, wsd_steps)
    for cfg in configs:  # every option of the grid, before any run starts
        cfg.check()
    _train_all(configs, bool(wsd_steps))
    return out

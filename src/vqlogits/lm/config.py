"""``TrainConfig``: everything a training run depends on, its checks, and the model it describes."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..config import check_choices, option
from ..heads import HEADS, KINDS, SIZES, size_for_budget
from .model import PRESETS, ModelConfig, size_body

MAPPINGS = ("round", "random", "frequency", "kmeans", "kmeans-embed")


@dataclass
class TrainConfig:
    """Everything a training run depends on; saved in every checkpoint, and a resume with a different
    config is refused. The CLI's ``train`` / ``sweep`` options are these fields."""

    corpus: str = option(
        "pydocs",
        "pydocs, devdocs (embedded, fetched on first use), wikitext-103[:DIR], c4[:DIR],"
        " or a file / folder / glob of .txt/.md/.rst",
        "data",
    )
    tokenizer: str = option(
        "smollm2", "smollm2, bpe:N (byte-level BPE trained on the train split), or a tokenizer.json / folder", "data"
    )
    model: str = option(
        "tiny",
        "model preset (layers, heads, width, context, batch): tiny 2/4/128/64/8, small 4/4/256/128/16,"
        " base 8/8/512/256/32",
        "model",
        tuple(PRESETS),
    )
    block_size: int = option(0, "context length in tokens; 0: the preset's", "model")
    n_layer: int = option(0, "layers; 0: the preset's, or solved by --flops-per-token", "model")
    d_model: int = option(0, "width; 0: the preset's, or solved by --flops-per-token", "model")
    n_head: int = option(0, "attention heads; 0: the preset's, or d_model / 32 for another width", "model")
    flops_per_token: float = option(
        0.0,
        "> 0: size the body to this many training FLOPs per token (within 10%%),"
        " solving the width for a given --n-layer or the depth for a given --d-model (model.size_body)",
        "model",
    )
    head: str = option("dense", "output head, see the README's head table", "head", HEADS)
    codebook_size: int = option(
        SIZES["codebook_size"],
        "K, the number of codes (vq, hybrid tail, twolevel, vq-lowrank, rvq per codebook)",
        "head",
    )
    head_bias: bool = option(
        SIZES["bias"], "a per-token bias b_v; with --head-budget: a bias when it fits (false: never)", "head"
    )
    rank: int = option(SIZES["rank"], "rank r of lowrank and of vq-lowrank's residual", "head")
    token_dim: int = option(SIZES["token_dim"], "e, the per-token vector size of twolevel and hybrid-twolevel", "head")
    num_codebooks: int = option(SIZES["num_codebooks"], "codebooks of rvq", "head")
    n_frequent: int = option(
        SIZES["n_frequent"], "tokens with exact rows (singleton codes) in hybrid and hybrid-twolevel", "head"
    )
    head_budget: float = option(
        0.0,
        "> 0: size the head to this fraction of the dense head's parameters (heads.size_for_budget),"
        " replacing the sizes above",
        "head",
    )
    mapping: str = option(
        "random",
        "vq token -> code map: round, random (balanced), frequency (interleaved by train counts),"
        " kmeans (of a dense head after the warm-up), kmeans-embed (of the input embedding)",
        "map",
        MAPPINGS,
    )
    codebook_init: str = option(
        "random",
        "vq codebook start: random, or centroids (each code's mean dense-head row; needs --warmup-dense-steps)",
        "map",
        ("random", "centroids"),
    )
    bias_init: str = option(
        "unigram", "vq bias start: unigram (log train frequency) or zeros", "map", ("unigram", "zeros")
    )
    warmup_dense_steps: int = option(
        0, "vq: train a dense head this many steps, then build the VQ head from it (kmeans maps, centroids)", "map"
    )
    reassign_every: int = option(
        0, "learned map: move tokens between codes every N steps (0: a fixed map); see heads/learned_map.py", "map"
    )
    reassign_frac: float = option(
        0.05, "learned map: at most this fraction of the seen tokens move per reassignment", "map"
    )
    steps: int = option(500, "optimizer steps", "optimisation")
    batch_size: int = option(0, "sequences per step; 0: the preset's", "optimisation")
    lr: float = option(2e-3, "peak learning rate (AdamW, betas 0.9 / 0.95)", "optimisation")
    warmup_steps: int = option(50, "linear learning-rate warm-up steps", "optimisation")
    min_lr_ratio: float = option(0.1, "final learning rate as a fraction of --lr", "optimisation")
    schedule: str = option(
        "cosine",
        "cosine, or wsd: warm-up, constant, then a linear decay over the last --decay-frac of the steps",
        "optimisation",
        ("cosine", "wsd"),
    )
    decay_frac: float = option(0.2, "wsd: the fraction of the steps spent decaying", "optimisation")
    init_from: str = option(
        "",
        "wsd: start from the stable-phase snapshot (stable.pt) of a run folder whose config differs only in steps",
        "optimisation",
    )
    weight_decay: float = option(0.1, "AdamW weight decay of the body's matrices", "optimisation")
    grad_clip: float = option(1.0, "gradient norm clipping", "optimisation")
    seed: int = option(0, "initialisation, batches and maps", "optimisation")
    eval_every: int = option(100, "validate every N steps (0: never during training)", "checkpointing")
    eval_tokens: int = option(16384, "validation tokens per evaluation during training", "checkpointing")
    final_eval_tokens: int = option(
        131072, "tokens for the final test (and validation) perplexity and bits per byte", "checkpointing"
    )
    final_val_tokens: int = option(0, "tokens for the final validation; 0: --final-eval-tokens", "checkpointing")
    checkpoint_every: int = option(
        100,
        "write ckpt.pt (atomically, keeping the previous one) every N steps; rerun the same command to resume",
        "checkpointing",
    )
    out: str = option("runs/run", "the run folder: ckpt.pt, model.pt, results.json", "checkpointing")
    cache: str = option(
        "", "folder for embedded data and token caches; empty: $VQLOGITS_CACHE, else ~/.cache/vqlogits", "data"
    )

    def head_sizes(self, d_model: int, vocab_size: int) -> dict:
        """Head size options, from ``head_budget`` when set (see ``heads.size_for_budget``)."""
        sizes = dict(
            codebook_size=self.codebook_size,
            head_bias=self.head_bias,
            rank=self.rank,
            token_dim=self.token_dim,
            num_codebooks=self.num_codebooks,
            n_frequent=self.n_frequent,
        )
        if self.head_budget and KINDS[self.head].sizable:
            budget = size_for_budget(self.head, self.head_budget, d_model, vocab_size, bias=self.head_bias)
            sizes.update({("head_bias" if k == "bias" else k): v for k, v in budget.items()})
        return sizes

    def check(self) -> None:
        """Every check that needs no data, so a bad option fails before any tokenizing or loading."""
        check_choices(self)
        positive = ("steps", "codebook_size", "rank", "token_dim", "num_codebooks", "eval_tokens", "final_eval_tokens")
        at_least_zero = (
            "block_size",
            "n_layer",
            "d_model",
            "n_head",
            "final_val_tokens",
            "batch_size",
            "n_frequent",
            "warmup_dense_steps",
            "reassign_every",
            "warmup_steps",
            "eval_every",
            "checkpoint_every",
        )
        for name in positive + at_least_zero:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < (name in positive):
                raise ValueError(f"{name} must be an int >= {int(name in positive)}, got {value!r}")
        inf = float("inf")
        for name, lo, hi, open_lo in (
            ("flops_per_token", 0, inf, False),
            ("lr", 0, inf, True),
            ("head_budget", 0, 1, False),
            ("reassign_frac", 0, 1, True),
            ("min_lr_ratio", 0, 1, False),
            ("weight_decay", 0, inf, False),
            ("grad_clip", 0, inf, True),
        ):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and (value > lo if open_lo else value >= lo) and value <= hi):
                raise ValueError(f"{name} must be a number in {'(' if open_lo else '['}{lo}, {hi}], got {value!r}")
        if self.flops_per_token and (self.n_layer > 0) == (self.d_model > 0):
            raise ValueError(
                f"flops_per_token={self.flops_per_token:g} solves one of n_layer and d_model: give exactly one,"
                f" got n_layer={self.n_layer}, d_model={self.d_model}"
            )
        needs_warmup = self.mapping.startswith("kmeans") or self.codebook_init == "centroids"
        if KINDS[self.head].mapped and needs_warmup and self.warmup_dense_steps < 1:
            raise ValueError(
                f"mapping={self.mapping!r} / codebook_init={self.codebook_init!r} build on a trained "
                f"dense head: set warmup_dense_steps >= 1, got {self.warmup_dense_steps}"
            )
        if self.reassign_every and not KINDS[self.head].has_map:
            raise ValueError(
                f"reassign_every={self.reassign_every} needs a head with a token -> code map, got head={self.head!r}"
            )
        if self.warmup_dense_steps >= self.steps and KINDS[self.head].mapped:
            raise ValueError(f"warmup_dense_steps={self.warmup_dense_steps} must be < steps={self.steps}")
        if self.schedule == "wsd" and not (0 < self.decay_frac < 1 and self.warmup_steps <= decay_start(self)):
            raise ValueError(
                f"decay_frac must be in (0, 1) and leave the warm-up ({self.warmup_steps} steps) before the decay,"
                f" got {self.decay_frac!r} with steps={self.steps}"
            )
        if self.init_from and self.schedule != "wsd":
            raise ValueError(
                f"init_from={self.init_from!r} needs schedule='wsd' (only its stable phase is shared between budgets)"
            )


def decay_start(cfg: TrainConfig) -> int:
    """First step of the WSD decay. Before it the learning rate does not depend on ``steps``."""
    return cfg.steps - round(cfg.decay_frac * cfg.steps)


def check_head_fits(cfg: TrainConfig, vocab_size: int, d_model: int = 0) -> None:
    """The head's sizes against the vocabulary: a budget too small for the head, or K > V."""
    d_model = d_model or cfg.d_model or PRESETS[cfg.model][2]
    sizes = cfg.head_sizes(d_model, vocab_size)  # raises for a budget that cannot hold the head
    kind = KINDS[cfg.head]
    codes = sizes["codebook_size"] + (sizes["n_frequent"] if kind.frequent else 0)
    if kind.uses_codes and codes > vocab_size:
        frequent = f" + n_frequent={sizes['n_frequent']}" if kind.frequent else ""
        raise ValueError(
            f"codebook_size={sizes['codebook_size']}{frequent} exceeds the vocabulary size {vocab_size} of tokenizer"
            f" {cfg.tokenizer!r}"
        )


def model_config(cfg: TrainConfig, vocab_size: int, counts: torch.Tensor, targets: torch.Tensor) -> ModelConfig:
    """The model: the preset's shape with the sizes given replacing it, and the head sized for its
    width. With ``flops_per_token``, the one of n_layer / d_model not given is solved by
    ``size_body``, the head's FLOPs counted by its ``loss_flops`` on ``targets`` (a train batch)."""
    block = cfg.block_size or PRESETS[cfg.model][3]

    def build(n_layer: int, d_model: int) -> ModelConfig:
        sizes = cfg.head_sizes(d_model or PRESETS[cfg.model][2], vocab_size)
        return ModelConfig.preset(cfg.model, vocab_size, block, n_layer, cfg.n_head, d_model, head=cfg.head, **sizes)

    def head_flops(d_model: int) -> float:
        head = ModelConfig(
            vocab_size, 1, 1, d_model, block, head=cfg.head, **cfg.head_sizes(d_model, vocab_size)
        ).build_head()
        if hasattr(head, "set_frequencies"):  # adaptive, hybrids: their cost depends on the targets' frequencies
            head.set_frequencies(counts)
        return head.loss_flops(targets) / targets.numel()

    if not cfg.flops_per_token:
        return build(cfg.n_layer, cfg.d_model)
    return build(*size_body(cfg.flops_per_token, head_flops, block, cfg.n_layer, cfg.d_model))


def check_same_config(cfg: TrainConfig, saved: dict, path: Path, ignore: tuple[str, ...] = ()) -> None:
    # A field added after the checkpoint was written counts as its default (same behaviour).
    saved = {**asdict(TrainConfig()), **saved}
    diff = {k: (saved[k], v) for k, v in asdict(cfg).items() if saved[k] != v and k not in ignore}
    if set(diff) == {"steps"}:
        how = (
            f"start a new --out with --init-from {path.parent} and --steps {cfg.steps}: it continues from that run's "
            "stable-phase snapshot (stable.pt) and redoes only the decay"
            if cfg.schedule == "wsd" and saved["steps"] < cfg.steps
            else "use a new --out (a cosine schedule depends on steps, so a run cannot be extended; "
            "a --schedule wsd run can, "
            "with --init-from)"
        )
        raise ValueError(
            f"{path} was written for steps={saved['steps']}, not {cfg.steps}. To train for {cfg.steps} steps, {how}"
        )
    if diff:
        raise ValueError(f"{path} was written with a different config (saved, given): {diff}")

"""One training loop for every head: AdamW, warm-up + cosine, clipping, atomic checkpoints, exact resume, DDP.

Batches are a pure function of (seed, step), so a resumed run sees exactly the data an
uninterrupted run would. Under ``torchrun`` each rank takes rows ``rank::world`` of the same
global batch, so N processes reproduce one process's losses.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from ..cluster import kmeans
from ..heads import HEADS, DenseHead, VQLogitsHead, size_for_budget
from ..heads.vq import balanced_assignment, code_means
from .checkpoint import load_checkpoint, load_plain, run_lock, save_atomic, save_checkpoint, write_json
from .data import eval_windows, token_byte_lengths, token_counts, tokenize_corpus, vocab_hint
from .learned_map import LEARNABLE, MapLearner
from .model import GPT, PRESETS, ModelConfig, size_body

MAPPINGS = ("round", "random", "frequency", "kmeans", "kmeans-embed")


def _opt(default, help: str, group: str, choices=None):
    """A TrainConfig field with its CLI help, option group and allowed values."""
    return field(default=default, metadata={"help": help, "group": group, "choices": choices})


@dataclass
class TrainConfig:
    """Everything a training run depends on; saved in every checkpoint, and a resume with a different
    config is refused. The CLI's ``train`` / ``sweep`` options are these fields."""

    corpus: str = _opt("pydocs", "pydocs, devdocs (embedded, fetched on first use), wikitext-103[:DIR], c4[:DIR], or a file / folder / glob of .txt/.md/.rst", "data")
    tokenizer: str = _opt("smollm2", "smollm2, bpe:N (byte-level BPE trained on the train split), or a tokenizer.json / folder", "data")
    model: str = _opt("tiny", "model preset (layers, heads, width, context, batch): tiny 2/4/128/64/8, small 4/4/256/128/16, base 8/8/512/256/32", "model", tuple(PRESETS))
    block_size: int = _opt(0, "context length in tokens; 0: the preset's", "model")
    n_layer: int = _opt(0, "layers; 0: the preset's, or solved by --flops-per-token", "model")
    d_model: int = _opt(0, "width; 0: the preset's, or solved by --flops-per-token", "model")
    n_head: int = _opt(0, "attention heads; 0: the preset's, or d_model / 32 for another width", "model")
    flops_per_token: float = _opt(0.0, "> 0: size the body to this many training FLOPs per token (within 10%%), solving the width for a given --n-layer or the depth for a given --d-model (model.size_body)", "model")
    head: str = _opt("dense", "output head, see the README's head table", "head", HEADS)
    codebook_size: int = _opt(1024, "K, the number of codes (vq, hybrid tail, twolevel, vq-lowrank, rvq per codebook)", "head")
    head_bias: bool = _opt(True, "a per-token bias b_v; with --head-budget: a bias when it fits (false: never)", "head")
    rank: int = _opt(64, "rank r of lowrank and of vq-lowrank's residual", "head")
    token_dim: int = _opt(8, "e, the per-token vector size of twolevel and hybrid-twolevel", "head")
    num_codebooks: int = _opt(2, "codebooks of rvq", "head")
    n_frequent: int = _opt(256, "tokens with exact rows (singleton codes) in hybrid and hybrid-twolevel", "head")
    head_budget: float = _opt(0.0, "> 0: size the head to this fraction of the dense head's parameters (heads.size_for_budget), replacing the sizes above", "head")
    mapping: str = _opt("random", "vq token -> code map: round, random (balanced), frequency (interleaved by train counts), kmeans (of a dense head after the warm-up), kmeans-embed (of the input embedding)", "map", MAPPINGS)
    codebook_init: str = _opt("random", "vq codebook start: random, or centroids (each code's mean dense-head row; needs --warmup-dense-steps)", "map", ("random", "centroids"))
    bias_init: str = _opt("unigram", "vq bias start: unigram (log train frequency) or zeros", "map", ("unigram", "zeros"))
    warmup_dense_steps: int = _opt(0, "vq: train a dense head this many steps, then build the VQ head from it (kmeans maps, centroids)", "map")
    reassign_every: int = _opt(0, "learned map: move tokens between codes every N steps (0: a fixed map); see lm/learned_map.py", "map")
    reassign_frac: float = _opt(0.05, "learned map: at most this fraction of the seen tokens move per reassignment", "map")
    steps: int = _opt(500, "optimizer steps", "optimisation")
    batch_size: int = _opt(0, "sequences per step; 0: the preset's", "optimisation")
    lr: float = _opt(2e-3, "peak learning rate (AdamW, betas 0.9 / 0.95)", "optimisation")
    warmup_steps: int = _opt(50, "linear learning-rate warm-up steps", "optimisation")
    min_lr_ratio: float = _opt(0.1, "final learning rate as a fraction of --lr", "optimisation")
    schedule: str = _opt("cosine", "cosine, or wsd: warm-up, constant, then a linear decay over the last --decay-frac of the steps", "optimisation", ("cosine", "wsd"))
    decay_frac: float = _opt(0.2, "wsd: the fraction of the steps spent decaying", "optimisation")
    init_from: str = _opt("", "wsd: start from the stable-phase snapshot (stable.pt) of a run folder whose config differs only in steps", "optimisation")
    weight_decay: float = _opt(0.1, "AdamW weight decay of the body's matrices", "optimisation")
    grad_clip: float = _opt(1.0, "gradient norm clipping", "optimisation")
    seed: int = _opt(0, "initialisation, batches and maps", "optimisation")
    eval_every: int = _opt(100, "validate every N steps (0: never during training)", "checkpointing")
    eval_tokens: int = _opt(16384, "validation tokens per evaluation during training", "checkpointing")
    final_eval_tokens: int = _opt(131072, "tokens for the final test (and validation) perplexity and bits per byte", "checkpointing")
    final_val_tokens: int = _opt(0, "tokens for the final validation; 0: --final-eval-tokens", "checkpointing")
    checkpoint_every: int = _opt(100, "write ckpt.pt (atomically, keeping the previous one) every N steps; rerun the same command to resume", "checkpointing")
    out: str = _opt("runs/run", "the run folder: ckpt.pt, model.pt, results.json", "checkpointing")
    cache: str = _opt(".cache", "folder for embedded data and token caches", "data")

    def head_sizes(self, d_model: int, vocab_size: int) -> dict:
        """Head size options, from ``head_budget`` when set (see ``heads.size_for_budget``)."""
        sizes = dict(codebook_size=self.codebook_size, head_bias=self.head_bias, rank=self.rank, token_dim=self.token_dim, num_codebooks=self.num_codebooks, n_frequent=self.n_frequent)
        if self.head_budget and self.head not in ("dense", "adaptive"):
            budget = size_for_budget(self.head, self.head_budget, d_model, vocab_size, bias=self.head_bias)
            sizes.update({("head_bias" if k == "bias" else k): v for k, v in budget.items()})
        return sizes

    def check(self) -> None:
        """Every check that needs no data, so a bad option fails before any tokenizing or loading."""
        for name, f in self.__dataclass_fields__.items():
            allowed = f.metadata.get("choices")
            if allowed and getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        positive = ("steps", "codebook_size", "rank", "token_dim", "num_codebooks", "eval_tokens", "final_eval_tokens")
        at_least_zero = ("block_size", "n_layer", "d_model", "n_head", "final_val_tokens", "batch_size", "n_frequent", "warmup_dense_steps", "reassign_every", "warmup_steps", "eval_every", "checkpoint_every")
        for name in positive + at_least_zero:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < (name in positive):
                raise ValueError(f"{name} must be an int >= {int(name in positive)}, got {value!r}")
        inf = float("inf")
        for name, lo, hi, open_lo in (("flops_per_token", 0, inf, False), ("lr", 0, inf, True), ("head_budget", 0, 1, False), ("reassign_frac", 0, 1, True), ("min_lr_ratio", 0, 1, False), ("weight_decay", 0, inf, False), ("grad_clip", 0, inf, True)):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and (value > lo if open_lo else value >= lo) and value <= hi):
                raise ValueError(f"{name} must be a number in {'(' if open_lo else '['}{lo}, {hi}], got {value!r}")
        if self.flops_per_token and (self.n_layer > 0) == (self.d_model > 0):
            raise ValueError(f"flops_per_token={self.flops_per_token:g} solves one of n_layer and d_model: give exactly one, got n_layer={self.n_layer}, d_model={self.d_model}")
        needs_warmup = self.mapping.startswith("kmeans") or self.codebook_init == "centroids"
        if self.head == "vq" and needs_warmup and self.warmup_dense_steps < 1:
            raise ValueError(
                f"mapping={self.mapping!r} / codebook_init={self.codebook_init!r} build on a trained "
                f"dense head: set warmup_dense_steps >= 1, got {self.warmup_dense_steps}"
            )
        if self.reassign_every and self.head in ("dense", "adaptive", "lowrank"):
            raise ValueError(f"reassign_every={self.reassign_every} needs a head with a token -> code map, got head={self.head!r}")
        if self.warmup_dense_steps >= self.steps and self.head == "vq":
            raise ValueError(f"warmup_dense_steps={self.warmup_dense_steps} must be < steps={self.steps}")
        if self.schedule == "wsd" and not (0 < self.decay_frac < 1 and self.warmup_steps <= decay_start(self)):
            raise ValueError(f"decay_frac must be in (0, 1) and leave the warm-up ({self.warmup_steps} steps) before the decay, got {self.decay_frac!r} with steps={self.steps}")
        if self.init_from and self.schedule != "wsd":
            raise ValueError(f"init_from={self.init_from!r} needs schedule='wsd' (only its stable phase is shared between budgets)")


# ---- pieces -----------------------------------------------------------------------------------


def decay_start(cfg: TrainConfig) -> int:
    """First step of the WSD decay. Before it the learning rate does not depend on ``steps``."""
    return cfg.steps - round(cfg.decay_frac * cfg.steps)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine to ``min_lr_ratio * lr``, or, for WSD, constant until
    ``decay_start`` and linear to ``min_lr_ratio * lr`` over the last ``decay_frac`` of the steps.

    WSD gives every token budget from one run: the run for ``steps=S`` equals the run for any
    longer budget up to step ``decay_start(S)``, so it can start from that run's snapshot
    (``stable.pt``, written at its own decay start) and pay only for its decay."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    floor = cfg.lr * cfg.min_lr_ratio
    if cfg.schedule == "wsd":
        start = decay_start(cfg)
        return cfg.lr if step < start else cfg.lr - (cfg.lr - floor) * (step - start) / (cfg.steps - start)
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def get_batch(data: np.ndarray, step: int, seed: int, batch: int, block: int, rank: int = 0, world: int = 1):
    """Random windows of the train split; a pure function of (seed, step)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    starts = torch.randint(0, len(data) - block - 1, (batch,), generator=g)[rank::world].tolist()
    window = np.stack([np.asarray(data[s : s + block + 1], dtype=np.int64) for s in starts])
    window = torch.from_numpy(window)
    return window[:, :-1], window[:, 1:]  # (B, T) inputs, (B, T) targets


@torch.no_grad()
def evaluate_split(model: GPT, data: np.ndarray, max_tokens: int, byte_lengths: np.ndarray | None = None, batch: int = 16, desc: str = "eval") -> dict:
    """Next-token loss over consecutive windows of ``data`` (up to ``max_tokens`` targets; the
    first token of the split is never a target): its total ``nats``, ``tokens``, ``ppl`` =
    exp(nats / tokens), and with ``byte_lengths`` (``data.token_byte_lengths``) the UTF-8
    ``bytes`` of the target tokens' text and ``bpb`` = nats / bytes / ln 2."""
    device = next(model.parameters()).device
    nats, tokens, n_bytes = 0.0, 0, 0
    for w in tqdm(eval_windows(data, model.cfg.block_size, max_tokens, batch), desc=desc, leave=False):
        targets = w[:, 1:]
        nats += float(model.head.loss(model.hidden(w[:, :-1].to(device)), targets.to(device), reduction="sum"))
        tokens += targets.numel()
        if byte_lengths is not None:
            n_bytes += int(byte_lengths[targets.numpy()].sum())
    out = {"nats": nats, "tokens": tokens, "ppl": math.exp(nats / tokens)}
    if byte_lengths is not None:
        out.update(bytes=n_bytes, bpb=nats / n_bytes / math.log(2) if n_bytes else None)
    return out


def perplexity(model: GPT, data: np.ndarray, max_tokens: int, batch: int = 16, desc: str = "eval") -> float:
    """exp(mean next-token loss) over consecutive windows of ``data`` (``evaluate_split``)."""
    return evaluate_split(model, data, max_tokens, batch=batch, desc=desc)["ppl"]


def split_scores(model: GPT, splits: dict, tok, test_tokens: int, val_tokens: int = 0) -> dict:
    """``val_ppl`` / ``test_ppl``, ``val_bpb`` / ``test_bpb`` (None for a tokenizer that is not
    byte-level) and each split's ``evaluate_split`` under ``eval``."""
    try:
        byte_lengths = token_byte_lengths(tok)
    except ValueError:
        byte_lengths = None
    out = {"eval": {}}
    for s, n in (("val", val_tokens or test_tokens), ("test", test_tokens)):
        r = out["eval"][s] = evaluate_split(model, splits[s], n, byte_lengths, desc=s)
        out[f"{s}_ppl"], out[f"{s}_bpb"] = r["ppl"], r.get("bpb")
    return out


def build_vq_head(cfg: TrainConfig, model: GPT, counts: torch.Tensor) -> VQLogitsHead:
    """The VQ head by the configured map, codebook and bias initialisation."""
    V, d, K = model.cfg.vocab_size, model.cfg.d_model, model.cfg.codebook_size
    dense = model.head.weight.detach().float() if isinstance(model.head, DenseHead) else None
    g = torch.Generator().manual_seed(cfg.seed)
    if cfg.mapping == "round":
        assignment = balanced_assignment(V, K)
    elif cfg.mapping == "random":
        assignment = balanced_assignment(V, K, torch.randperm(V, generator=g))
    elif cfg.mapping == "frequency":
        assignment = balanced_assignment(V, K, torch.sort(counts, descending=True, stable=True).indices)
    else:
        source = dense if cfg.mapping == "kmeans" else model.tok_emb.weight.detach().float()
        assignment = kmeans(source.cpu(), K, seed=cfg.seed, progress=True).assignment
    head = VQLogitsHead(d, V, K, bias=model.cfg.head_bias)
    head.set_assignment(assignment)
    with torch.no_grad():
        if cfg.codebook_init == "centroids":
            head.codebook.copy_(code_means(dense.cpu(), assignment, K))
        if head.bias is not None and cfg.bias_init == "unigram":
            head.bias.copy_(torch.log(counts.float() + 1) - torch.log(counts.float().sum() + V))
    return head.to(next(model.parameters()).device)


def make_optimizer(model: GPT, cfg: TrainConfig) -> torch.optim.AdamW:
    """Group 0: matrices with weight decay; group 1: the rest; group 2: the head (swappable)."""
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if not n.startswith("head."):
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
        {"params": list(model.head.parameters()), "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), fused=False)


def swap_head(model: GPT, opt: torch.optim.Optimizer, head) -> None:
    for p in opt.param_groups[2]["params"]:
        opt.state.pop(p, None)
    model.head = head
    model.cfg.head = "vq"
    opt.param_groups[2]["params"] = list(head.parameters())


def writable_folder(path: str | Path) -> Path:
    """``path`` created if needed; a ``ValueError`` naming it if it cannot be written."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):  # a name of its own: every DDP rank probes the same folder
            pass
    except OSError as e:
        raise ValueError(f"out={str(path)!r}: cannot write there ({e.strerror or e})") from None
    return path


def check_head_fits(cfg: TrainConfig, vocab_size: int, d_model: int = 0) -> None:
    """The head's sizes against the vocabulary: a budget too small for the head, or K > V."""
    d_model = d_model or cfg.d_model or PRESETS[cfg.model][2]
    sizes = cfg.head_sizes(d_model, vocab_size)  # raises for a budget that cannot hold the head
    uses_codes = cfg.head in ("vq", "vq-lowrank", "twolevel", "rvq", "hybrid", "hybrid-twolevel")
    codes = sizes["codebook_size"] + (sizes["n_frequent"] if cfg.head.startswith("hybrid") else 0)
    if uses_codes and codes > vocab_size:
        raise ValueError(f"codebook_size={sizes['codebook_size']}" + (f" + n_frequent={sizes['n_frequent']}" if cfg.head.startswith("hybrid") else "") + f" exceeds the vocabulary size {vocab_size} of tokenizer {cfg.tokenizer!r}")


def model_config(cfg: TrainConfig, vocab_size: int, counts: torch.Tensor, targets: torch.Tensor) -> ModelConfig:
    """The model: the preset's shape with the sizes given replacing it, and the head sized for its
    width. With ``flops_per_token``, the one of n_layer / d_model not given is solved by
    ``size_body``, the head's FLOPs counted by its ``loss_flops`` on ``targets`` (a train batch)."""
    block = cfg.block_size or PRESETS[cfg.model][3]

    def build(n_layer: int, d_model: int) -> ModelConfig:
        sizes = cfg.head_sizes(d_model or PRESETS[cfg.model][2], vocab_size)
        return ModelConfig.preset(cfg.model, vocab_size, block, n_layer, cfg.n_head, d_model, head=cfg.head, **sizes)

    def head_flops(d_model: int) -> float:
        head = ModelConfig(vocab_size, 1, 1, d_model, block, head=cfg.head, **cfg.head_sizes(d_model, vocab_size)).build_head()
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
            else "use a new --out (a cosine schedule depends on steps, so a run cannot be extended; a --schedule wsd run can, "
            "with --init-from)"
        )
        raise ValueError(f"{path} was written for steps={saved['steps']}, not {cfg.steps}. To train for {cfg.steps} steps, {how}")
    if diff:
        raise ValueError(f"{path} was written with a different config (saved, given): {diff}")


def stable_snapshot(cfg: TrainConfig) -> dict:
    """The state to start a WSD run from: ``init_from``'s ``stable.pt``, taken before this run's decay."""
    path = Path(cfg.init_from)
    path = path / "stable.pt" if path.is_dir() else path
    if not path.exists():
        raise ValueError(f"init_from={cfg.init_from!r}: no {path} (a wsd run writes stable.pt when its decay starts)")
    state = load_plain(path)
    check_same_config(cfg, state["config"], path, ignore=("steps", "out", "init_from"))
    if state["step"] > decay_start(cfg):
        raise ValueError(f"init_from={cfg.init_from!r}: its snapshot is at step {state['step']}, after this run's decay starts (step {decay_start(cfg)})")
    return state


# ---- the loop ------------------------------------------------------------------------------------


def _distributed() -> tuple[int, int, torch.device]:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = 0, 1
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def _mean_across(value: float, world: int) -> float:
    if world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t) / world


def train(cfg: TrainConfig, progress: bool = True) -> dict:
    """Train (or resume) the run in ``cfg.out`` and return its results (also written to results.json).
    While it trains, the folder is locked: a second process on it gets ``RunLocked``."""
    cfg.check()
    rank, world, device = _distributed()
    out = writable_folder(cfg.out)
    with run_lock(out) if rank == 0 else nullcontext():
        return _train(cfg, progress, rank, world, device, out)


def _train(cfg: TrainConfig, progress: bool, rank: int, world: int, device: torch.device, out: Path) -> dict:
    ckpt_path = out / "ckpt.pt"
    state = load_checkpoint(ckpt_path)  # the newest readable of ckpt.pt and ckpt.pt.prev
    if state is not None:  # init_from only decides where a run starts
        check_same_config(cfg, state["config"], ckpt_path, ignore=("init_from",))
    elif cfg.init_from:
        state = stable_snapshot(cfg)
    if (V := vocab_hint(cfg.tokenizer, cfg.cache)) is not None:  # head sizes, before the corpus is read
        check_head_fits(cfg, V)
    if rank != 0:
        dist.barrier()  # rank 0 fills the token cache first
    splits, tok, meta = tokenize_corpus(cfg.corpus, cfg.tokenizer, cfg.cache)
    if world > 1 and rank == 0:
        dist.barrier()
    V = meta["vocab_size"]
    counts = token_counts(splits["train"], V)
    batch = cfg.batch_size or PRESETS[cfg.model][4]
    if batch % world:
        raise ValueError(f"batch_size={batch} must be divisible by the number of processes {world}")
    block = cfg.block_size or PRESETS[cfg.model][3]
    target_mcfg = model_config(cfg, V, counts, get_batch(splits["train"], 0, cfg.seed, batch, block)[1])
    check_head_fits(cfg, V, target_mcfg.d_model)

    torch.manual_seed(cfg.seed)
    start_vq = cfg.head == "vq" and cfg.warmup_dense_steps == 0
    first_head = cfg.head if start_vq or cfg.head != "vq" else "dense"
    mcfg = replace(target_mcfg, head=first_head)
    model = GPT(mcfg)
    if hasattr(model.head, "set_frequencies"):  # adaptive, hybrids
        model.head.set_frequencies(counts)
    if start_vq:
        model.head = build_vq_head(cfg, model, counts)
    model.to(device)
    if state is not None and state["model_config"]["head"] == "vq" and not isinstance(model.head, VQLogitsHead):
        model.head = VQLogitsHead(mcfg.d_model, V, mcfg.codebook_size, bias=mcfg.head_bias).to(device)
        model.cfg.head = "vq"
    opt = make_optimizer(model, cfg)
    map_learner = None
    history = {"step": [], "loss": [], "lr": [], "val_step": [], "val_ppl": [], "moved": []}
    step, train_time, wall_time, flops = 0, 0.0, 0.0, 0  # train_time: steps only; wall_time: with evals
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        history, step = state["history"], state["step"]
        train_time, wall_time, flops = state["train_time"], state["wall_time"], state.get("train_flops", 0)

    def ddp_model():
        if world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(model, find_unused_parameters=cfg.head == "adaptive")

    runner = ddp_model()
    if cfg.reassign_every and isinstance(model.head, LEARNABLE):  # vq with a dense warm-up: at the swap
        map_learner = MapLearner(model.head, cfg.reassign_frac, seed=cfg.seed)
        if state is not None and state.get("map_learner"):
            map_learner.load_state_dict(state["map_learner"])
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)

    bar = tqdm(total=cfg.steps, initial=step, desc=f"{cfg.head} {Path(cfg.out).name}", disable=not progress or rank != 0)
    while step < cfg.steps:
        if cfg.head == "vq" and step == cfg.warmup_dense_steps and not isinstance(model.head, VQLogitsHead):
            swap_head(model, opt, build_vq_head(cfg, model, counts))
            runner = ddp_model()
            if cfg.reassign_every:
                map_learner = MapLearner(model.head, cfg.reassign_frac, seed=cfg.seed)
        t0 = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        x, y = (t.to(device) for t in get_batch(splits["train"], step, cfg.seed, batch, mcfg.block_size, rank, world))
        with autocast:
            if map_learner is not None:  # the map's statistics need the hidden states
                loss, h = runner(x, y, return_hidden=True)
            else:
                loss = runner(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        step += 1
        if map_learner is not None:
            map_learner.observe(model.head, h, y)
            if step % cfg.reassign_every == 0:
                history["moved"].append((step, map_learner.reassign(model.head)))
        train_time += time.perf_counter() - t0
        flops += world * model.train_flops(y)  # the global batch, counted from this rank's shard
        loss_value = _mean_across(loss.item(), world)
        history["step"].append(step)
        history["loss"].append(loss_value)
        history["lr"].append(lr_at(step - 1, cfg))
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.3f}", tok_s=f"{step * batch * mcfg.block_size / max(train_time, 1e-9):,.0f}")
        if cfg.eval_every and step % cfg.eval_every == 0:
            model.eval()
            history["val_step"].append(step)
            history["val_ppl"].append(perplexity(model, splits["val"], cfg.eval_tokens, desc="val"))
            model.train()
            bar.set_postfix(loss=f"{loss_value:.3f}", val_ppl=f"{history['val_ppl'][-1]:.1f}")
        wall_time += time.perf_counter() - t0
        stable_now = cfg.schedule == "wsd" and step == decay_start(cfg)
        ckpt_now = cfg.checkpoint_every and (step % cfg.checkpoint_every == 0 or step == cfg.steps)
        # Every rank takes part in summing the map's window statistics; rank 0 writes them.
        learner_state = map_learner.state_dict() if map_learner is not None and (stable_now or ckpt_now) else None
        snapshot = lambda: {  # noqa: E731
            "config": asdict(cfg),
            "model_config": asdict(model.cfg),
            "step": step,
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "history": history,
            "train_time": train_time,
            "wall_time": wall_time,
            "train_flops": flops,
            "map_learner": learner_state,
        }
        if rank == 0 and stable_now:
            save_atomic(snapshot(), out / "stable.pt")  # where longer budgets' runs branch off, see lr_at
        if rank == 0 and ckpt_now:
            save_checkpoint(snapshot(), ckpt_path)
    bar.close()
    results = finish(cfg, model, splits, tok, counts, history, train_time, wall_time, batch, flops)
    if rank == 0:
        save_atomic({"config": asdict(cfg), "model_config": asdict(model.cfg), "model": model.state_dict()}, out / "model.pt")
        write_json(out / "results.json", results)  # its presence marks the run finished: never half-written
    return results


def finish(cfg: TrainConfig, model: GPT, splits, tok, counts, history, train_time: float, wall_time: float, batch: int, flops: int) -> dict:
    model.eval()
    V, d = model.cfg.vocab_size, model.cfg.d_model
    tokens = cfg.steps * batch * model.cfg.block_size
    scores = split_scores(model, splits, tok, cfg.final_eval_tokens, cfg.final_val_tokens)
    result = {
        "head": cfg.head,
        "codebook_size": model.cfg.codebook_size if cfg.head not in ("dense", "adaptive", "lowrank") else None,
        "head_budget": cfg.head_budget or None,
        "head_params": model.head_params(),
        "dense_head_params": V * d,
        "total_params": model.head_params() + model.backbone_params(),
        "embedding_params": model.embedding_params(),
        **scores,
        "train_tokens": tokens,
        "train_flops": flops,
        "train_flops_per_token": flops / tokens,
        "tokens_per_s": tokens / max(train_time, 1e-9),
        # Where tokens_per_s was measured: this process's cores and threads, and the machine's load.
        "host": {"cpus": os.cpu_count(), "affinity": sorted(os.sched_getaffinity(0)), "threads": torch.get_num_threads(), "loadavg": os.getloadavg()},
        "wall_s": wall_time,
        "decode_flops": model.head.decode_cost()["flops"],
        "decode_bytes": model.head.decode_cost()["bytes"],
        "model_decode_flops": model.decode_flops(),
        "config": asdict(cfg),
        "model_config": asdict(model.cfg),
        "history": history,
    }
    if isinstance(model.head, VQLogitsHead):
        K = model.head.codebook_size
        result["code_sizes"] = torch.bincount(model.head.assignment.cpu(), minlength=K).tolist()
        code_mass = torch.zeros(K).index_add_(0, model.head.assignment.cpu(), counts.float())
        result["code_usage"] = (code_mass / code_mass.sum()).tolist()  # share of train targets per code
    return result

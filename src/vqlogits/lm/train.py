"""One training loop for every head: AdamW, warm-up + cosine, clipping, atomic checkpoints, exact resume, DDP.

Batches are a pure function of (seed, step), so a resumed run sees exactly the data an
uninterrupted run would. Under ``torchrun`` each rank takes rows ``rank::world`` of the same
global batch, so N processes reproduce one process's losses.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from ..cluster import kmeans
from ..heads import HEADS, DenseHead, VQLogitsHead, size_for_budget
from ..heads.vq import balanced_assignment, code_means
from .data import eval_windows, token_counts, tokenize_corpus
from .learned_map import LEARNABLE, MapLearner
from .model import GPT, PRESETS, ModelConfig

MAPPINGS = ("round", "random", "frequency", "kmeans", "kmeans-embed")


@dataclass
class TrainConfig:
    corpus: str = "pydocs"
    tokenizer: str = "smollm2"
    model: str = "tiny"
    head: str = "dense"
    codebook_size: int = 1024
    head_bias: bool = True  # with head_budget: a bias when it fits (False: never)
    rank: int = 64  # lowrank, vq-lowrank
    token_dim: int = 8  # twolevel, hybrid-twolevel
    num_codebooks: int = 2  # rvq
    n_frequent: int = 256  # hybrid, hybrid-twolevel
    head_budget: float = 0.0  # > 0: size the head to this fraction of the dense head (overrides the sizes above)
    mapping: str = "random"  # vq token -> code map, see MAPPINGS
    codebook_init: str = "random"  # random | centroids (mean dense-head row per code; needs warm-up)
    bias_init: str = "unigram"  # unigram (log train frequency) | zeros
    warmup_dense_steps: int = 0  # vq: train a dense head this many steps, then build the VQ head from it
    reassign_every: int = 0  # learned map: move tokens between codes every N steps (0: fixed map), see learned_map.py
    reassign_frac: float = 0.05  # at most this fraction of the seen tokens move per reassignment
    steps: int = 500
    batch_size: int = 0  # 0: the model preset's
    lr: float = 2e-3
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    eval_every: int = 100
    eval_tokens: int = 16384  # per validation during training
    final_eval_tokens: int = 131072  # for the final val / test perplexity
    checkpoint_every: int = 100
    out: str = "runs/run"
    cache: str = ".cache"

    def head_sizes(self, d_model: int, vocab_size: int) -> dict:
        """Head size options, from ``head_budget`` when set (see ``heads.size_for_budget``)."""
        sizes = dict(codebook_size=self.codebook_size, head_bias=self.head_bias, rank=self.rank, token_dim=self.token_dim, num_codebooks=self.num_codebooks, n_frequent=self.n_frequent)
        if self.head_budget and self.head not in ("dense", "adaptive"):
            budget = size_for_budget(self.head, self.head_budget, d_model, vocab_size, bias=self.head_bias)
            sizes.update({("head_bias" if k == "bias" else k): v for k, v in budget.items()})
        return sizes

    def check(self) -> None:
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if self.mapping not in MAPPINGS:
            raise ValueError(f"mapping must be one of {MAPPINGS}, got {self.mapping!r}")
        if self.codebook_init not in ("random", "centroids"):
            raise ValueError(f"codebook_init must be 'random' or 'centroids', got {self.codebook_init!r}")
        if self.bias_init not in ("unigram", "zeros"):
            raise ValueError(f"bias_init must be 'unigram' or 'zeros', got {self.bias_init!r}")
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


# ---- pieces -----------------------------------------------------------------------------------


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def get_batch(data: np.ndarray, step: int, seed: int, batch: int, block: int, rank: int = 0, world: int = 1):
    """Random windows of the train split; a pure function of (seed, step)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    starts = torch.randint(0, len(data) - block - 1, (batch,), generator=g)[rank::world].tolist()
    window = np.stack([np.asarray(data[s : s + block + 1], dtype=np.int64) for s in starts])
    window = torch.from_numpy(window)
    return window[:, :-1], window[:, 1:]  # (B, T) inputs, (B, T) targets


@torch.no_grad()
def perplexity(model: GPT, data: np.ndarray, max_tokens: int, batch: int = 16, desc: str = "eval") -> float:
    """exp(mean next-token loss) over consecutive windows of ``data`` (up to ``max_tokens`` targets)."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for w in tqdm(eval_windows(data, model.cfg.block_size, max_tokens, batch), desc=desc, leave=False):
        w = w.to(device)
        total += float(model.head.loss(model.hidden(w[:, :-1]), w[:, 1:], reduction="sum"))
        count += w[:, 1:].numel()
    return math.exp(total / count)


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


def save_atomic(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)  # a crash leaves either the old checkpoint or the new one, never half


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
    """Train (or resume) the run in ``cfg.out`` and return its results (also written to results.json)."""
    cfg.check()
    rank, world, device = _distributed()
    if cfg.reassign_every and world > 1:
        raise ValueError(f"the learned map (reassign_every={cfg.reassign_every}) runs in one process; set it to 0 under torchrun")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if rank != 0:
        dist.barrier()  # rank 0 fills the token cache first
    splits, _, meta = tokenize_corpus(cfg.corpus, cfg.tokenizer, cfg.cache)
    if world > 1 and rank == 0:
        dist.barrier()
    V = meta["vocab_size"]
    counts = token_counts(splits["train"], V)
    batch = cfg.batch_size or PRESETS[cfg.model][4]
    if batch % world:
        raise ValueError(f"batch_size={batch} must be divisible by the number of processes {world}")

    ckpt_path = out / "ckpt.pt"
    state = torch.load(ckpt_path, map_location="cpu", weights_only=False) if ckpt_path.exists() else None
    if state is not None:
        # A field added after the checkpoint was written counts as its default (same behaviour).
        saved = {**asdict(TrainConfig()), **state["config"]}
        diff = {k: (saved[k], v) for k, v in asdict(cfg).items() if saved[k] != v}
        if diff:
            raise ValueError(f"{ckpt_path} was written with a different config (saved, given): {diff}")

    torch.manual_seed(cfg.seed)
    start_vq = cfg.head == "vq" and cfg.warmup_dense_steps == 0
    first_head = cfg.head if start_vq or cfg.head != "vq" else "dense"
    d_model = PRESETS[cfg.model][2]
    sizes = cfg.head_sizes(d_model, V)
    mcfg = ModelConfig.preset(cfg.model, V, head=first_head, **sizes)
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
    step, train_time, wall_time = 0, 0.0, 0.0  # train_time: steps only; wall_time: with evals
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        history, step = state["history"], state["step"]
        train_time, wall_time = state["train_time"], state["wall_time"]

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
                h = model.hidden(x)
                loss = model.head.loss(h, y)
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
        if rank == 0 and cfg.checkpoint_every and (step % cfg.checkpoint_every == 0 or step == cfg.steps):
            save_atomic(
                {
                    "config": asdict(cfg),
                    "model_config": asdict(model.cfg),
                    "step": step,
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "history": history,
                    "train_time": train_time,
                    "wall_time": wall_time,
                    "map_learner": None if map_learner is None else map_learner.state_dict(),
                },
                ckpt_path,
            )
    bar.close()
    results = finish(cfg, model, splits, counts, history, train_time, wall_time, batch)
    if rank == 0:
        save_atomic({"config": asdict(cfg), "model_config": asdict(model.cfg), "model": model.state_dict()}, out / "model.pt")
        (out / "results.json").write_text(json.dumps(results, indent=1))
    return results


def finish(cfg: TrainConfig, model: GPT, splits, counts, history, train_time: float, wall_time: float, batch: int) -> dict:
    model.eval()
    V, d = model.cfg.vocab_size, model.cfg.d_model
    result = {
        "head": cfg.head,
        "codebook_size": model.cfg.codebook_size if cfg.head not in ("dense", "adaptive", "lowrank") else None,
        "head_budget": cfg.head_budget or None,
        "head_params": model.head_params(),
        "dense_head_params": V * d,
        "total_params": model.head_params() + model.backbone_params(),
        "val_ppl": perplexity(model, splits["val"], cfg.final_eval_tokens, desc="val"),
        "test_ppl": perplexity(model, splits["test"], cfg.final_eval_tokens, desc="test"),
        "train_tokens": cfg.steps * batch * model.cfg.block_size,
        "tokens_per_s": cfg.steps * batch * model.cfg.block_size / max(train_time, 1e-9),
        "wall_s": wall_time,
        "decode_flops": model.head.decode_cost()["flops"],
        "decode_bytes": model.head.decode_cost()["bytes"],
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


def config_from_args(**kw) -> TrainConfig:
    names = {f.name for f in fields(TrainConfig)}
    unknown = set(kw) - names
    if unknown:
        raise ValueError(f"unknown training options: {sorted(unknown)}")
    return TrainConfig(**kw)

"""One training loop for every head: AdamW, warm-up + cosine, clipping, atomic checkpoints, exact resume, DDP.

Batches are a pure function of (seed, step), so a resumed run sees exactly the data an
uninterrupted run would. Under ``torchrun`` each rank takes rows ``rank::world`` of the same
global batch, so N processes reproduce one process's losses.
"""

from __future__ import annotations

import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm.auto import tqdm

from ..cluster import balanced_assignment, code_means, kmeans
from ..data.corpora import get_batch, token_counts, tokenize_corpus
from ..data.tokenizer import vocab_hint
from ..files import (
    USER_CACHE,
    load_checkpoint,
    load_plain,
    output_folder,
    run_lock,
    save_atomic,
    save_checkpoint,
    write_atomic,
    write_json,
)
from ..heads import KINDS, DenseHead, VQLogitsHead
from ..heads.learned_map import LEARNABLE, MapLearner
from .config import TrainConfig, check_head_fits, check_same_config, decay_start, model_config
from .evaluate import perplexity, split_scores
from .model import GPT, PRESETS, ModelConfig

# ---- pieces -----------------------------------------------------------------------------------


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
    model.cfg.head = "vq"  # the one mapped kind
    opt.param_groups[2]["params"] = list(head.parameters())


def stable_snapshot(cfg: TrainConfig) -> dict:
    """The state to start a WSD run from: ``init_from``'s ``stable.pt``, taken before this run's decay."""
    path = Path(cfg.init_from)
    path = path / "stable.pt" if path.is_dir() else path
    if not path.exists():
        raise ValueError(f"init_from={cfg.init_from!r}: no {path} (a wsd run writes stable.pt when its decay starts)")
    state = load_plain(path)
    check_same_config(cfg, state["config"], path, ignore=("steps", "out", "init_from", "cache"))
    if state["step"] > decay_start(cfg):
        raise ValueError(
            f"init_from={cfg.init_from!r}: its snapshot is at step {state['step']},"
            f" after this run's decay starts (step {decay_start(cfg)})"
        )
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


def train(cfg: TrainConfig, progress: bool = True, overwrite: bool = False) -> dict:
    """Train (or resume) the run in ``cfg.out`` and return its results (also written to results.json).
    ``cfg.out`` is a new or empty folder or a training run's (resumed); a folder with other files
    is refused unless ``overwrite`` (``files.output_folder``). While it trains, the folder is
    locked: a second process on it gets ``RunLocked``."""
    cfg.check()
    rank, world, device = _distributed()
    with output_folder(cfg.out, "run", overwrite and rank == 0) as out, run_lock(out) if rank == 0 else nullcontext():
        return _train(cfg, progress, rank, world, device, out)


def _resume_state(cfg: TrainConfig, ckpt_path: Path) -> dict | None:
    """The checkpoint to resume (the newest readable of ckpt.pt and ckpt.pt.prev), else the
    ``init_from`` snapshot, else None."""
    state = load_checkpoint(ckpt_path)
    if state is not None:  # init_from only decides where a run starts; the cache only where data lies
        check_same_config(cfg, state["config"], ckpt_path, ignore=("init_from", "cache"))
    elif cfg.init_from:
        state = stable_snapshot(cfg)
    return state


def _read_data(cfg: TrainConfig, rank: int, world: int, out: Path):
    """The corpus's splits, tokenizer and meta; rank 0 fills the token cache first and saves the
    run's tokenizer, so the run's text goes in and out without the cache."""
    if (V := vocab_hint(cfg.tokenizer, cfg.cache or USER_CACHE)) is not None:  # head sizes, before the corpus is read
        check_head_fits(cfg, V)
    if rank != 0:
        dist.barrier()
    splits, tok, meta = tokenize_corpus(cfg.corpus, cfg.tokenizer, cfg.cache or USER_CACHE)
    if rank == 0 and not (out / "tokenizer.json").exists():
        write_atomic(out / "tokenizer.json", lambda tmp: tok.save(str(tmp)))
    if world > 1 and rank == 0:
        dist.barrier()
    return splits, tok, meta


def initial_model(cfg: TrainConfig, mcfg: ModelConfig, counts: torch.Tensor, state: dict | None) -> GPT:
    """The model at step 0, or shaped as the checkpoint ``state`` was saved. A mapped head (vq) with
    ``warmup_dense_steps`` starts dense and is swapped in at that step (``build_vq_head``)."""
    warm_start = KINDS[cfg.head].mapped and cfg.warmup_dense_steps > 0
    model = GPT(replace(mcfg, head="dense") if warm_start else mcfg)
    if hasattr(model.head, "set_frequencies"):  # adaptive, hybrids
        model.head.set_frequencies(counts)
    if KINDS[cfg.head].mapped and not warm_start:
        model.head = build_vq_head(cfg, model, counts)
    if warm_start and state is not None and state["model_config"]["head"] == cfg.head:  # saved after the swap
        model.head = VQLogitsHead(mcfg.d_model, mcfg.vocab_size, mcfg.codebook_size, bias=mcfg.head_bias)
        model.cfg.head = cfg.head
    return model


def train_step(runner, model: GPT, opt, cfg: TrainConfig, x, y, map_learner) -> torch.Tensor:
    """One optimizer step on the batch (x, y); the learned map observes the hidden states. Returns the loss."""
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if x.device.type == "cuda"
        else torch.autocast("cpu", enabled=False)
    )
    with autocast:
        if map_learner is not None:  # the map's statistics need the hidden states
            loss, h = runner(x, y, return_hidden=True)
        else:
            loss = runner(x, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    opt.step()
    if map_learner is not None:
        map_learner.observe(model.head, h, y)
    return loss


def snapshot(cfg: TrainConfig, model: GPT, opt, step: int, run: dict, map_learner) -> dict:
    """What a checkpoint holds: the config, the model, the optimizer, the history and the clocks."""
    return {
        "config": asdict(cfg),
        "model_config": asdict(model.cfg),
        "step": step,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "history": run["history"],
        "train_time": run["train_time"],
        "wall_time": run["wall_time"],
        "train_flops": run["flops"],
        "map_learner": None if map_learner is None else map_learner.state_dict(),
    }


class _Run:
    """The mutable pieces of one training run: model, optimizer, map learner, DDP wrapper."""

    def __init__(self, cfg, model, world, state):
        self.cfg, self.model, self.world = cfg, model, world
        self.opt = make_optimizer(model, cfg)
        self.map_learner = None
        self.clock = {"history": {k: [] for k in HISTORY}, "train_time": 0.0, "wall_time": 0.0, "flops": 0}
        self.step = 0
        if state is not None:
            model.load_state_dict(state["model"])
            self.opt.load_state_dict(state["optimizer"])
            self.step = state["step"]
            self.clock.update(history=state["history"], train_time=state["train_time"], wall_time=state["wall_time"])
            self.clock["flops"] = state.get("train_flops", 0)
        self.runner = self.wrap()
        if cfg.reassign_every and isinstance(model.head, LEARNABLE):  # a mapped head after its warm-up
            self.map_learner = MapLearner(model.head, cfg.reassign_frac, seed=cfg.seed)
            if state is not None and state.get("map_learner"):
                self.map_learner.load_state_dict(state["map_learner"])

    def wrap(self):
        if self.world == 1:
            return self.model
        return DDP(self.model, find_unused_parameters=getattr(self.model.head, "UNUSED_PARAMETERS", False))

    def swap_in_mapped_head(self, counts) -> None:
        """At the end of a dense warm-up: the mapped head built from the dense head."""
        swap_head(self.model, self.opt, build_vq_head(self.cfg, self.model, counts))
        self.runner = self.wrap()
        if self.cfg.reassign_every:
            self.map_learner = MapLearner(self.model.head, self.cfg.reassign_frac, seed=self.cfg.seed)


HISTORY = ("step", "loss", "lr", "val_step", "val_ppl", "moved")


def _train(cfg: TrainConfig, progress: bool, rank: int, world: int, device: torch.device, out: Path) -> dict:
    ckpt_path = out / "ckpt.pt"
    state = _resume_state(cfg, ckpt_path)
    if state is not None and progress and rank == 0 and state["step"]:
        tqdm.write(f"{cfg.out}: resuming at step {state['step']} of {cfg.steps}")
    splits, tok, meta = _read_data(cfg, rank, world, out)
    V = meta["vocab_size"]
    counts = token_counts(splits["train"], V)
    batch = cfg.batch_size or PRESETS[cfg.model][4]
    if batch % world:
        raise ValueError(f"batch_size={batch} must be divisible by the number of processes {world}")
    block = cfg.block_size or PRESETS[cfg.model][3]
    mcfg = model_config(cfg, V, counts, get_batch(splits["train"], 0, cfg.seed, batch, block)[1])
    check_head_fits(cfg, V, mcfg.d_model)
    torch.manual_seed(cfg.seed)
    run = _Run(cfg, initial_model(cfg, mcfg, counts, state).to(device), world, state)
    model, clock, history = run.model, run.clock, run.clock["history"]
    bar = tqdm(total=cfg.steps, initial=run.step, desc=f"{cfg.head} {Path(cfg.out).name}", disable=not progress or rank)
    while run.step < cfg.steps:
        if KINDS[cfg.head].mapped and run.step == cfg.warmup_dense_steps and not isinstance(model.head, VQLogitsHead):
            run.swap_in_mapped_head(counts)
        t0 = time.perf_counter()
        for group in run.opt.param_groups:
            group["lr"] = lr_at(run.step, cfg)
        x, y = (t.to(device) for t in get_batch(splits["train"], run.step, cfg.seed, batch, block, rank, world))
        loss = train_step(run.runner, model, run.opt, cfg, x, y, run.map_learner)
        run.step += 1
        if run.map_learner is not None and run.step % cfg.reassign_every == 0:
            history["moved"].append((run.step, run.map_learner.reassign(model.head)))
        clock["train_time"] += time.perf_counter() - t0
        clock["flops"] += world * model.train_flops(y)  # the global batch, counted from this rank's shard
        _record(run, cfg, _mean_across(loss.item(), world), bar, splits, batch * block)
        clock["wall_time"] += time.perf_counter() - t0
        _save(run, cfg, rank, out, ckpt_path)
    bar.close()
    results = finish(
        cfg, model, splits, tok, counts, history, clock["train_time"], clock["wall_time"], batch, clock["flops"]
    )
    if rank == 0:
        save_atomic(
            {"config": asdict(cfg), "model_config": asdict(model.cfg), "model": model.state_dict()}, out / "model.pt"
        )
        write_json(out / "results.json", results)  # its presence marks the run finished: never half-written
    return results


def _record(run: _Run, cfg: TrainConfig, loss: float, bar, splits, tokens_per_step: int) -> None:
    """The step's loss and learning rate in the history, the progress bar, and a validation every ``eval_every``."""
    history, step = run.clock["history"], run.step
    history["step"].append(step)
    history["loss"].append(loss)
    history["lr"].append(lr_at(step - 1, cfg))
    bar.update(1)
    bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{step * tokens_per_step / max(run.clock['train_time'], 1e-9):,.0f}")
    if cfg.eval_every and step % cfg.eval_every == 0:
        run.model.eval()
        history["val_step"].append(step)
        history["val_ppl"].append(perplexity(run.model, splits["val"], cfg.eval_tokens, desc="val"))
        run.model.train()
        bar.set_postfix(loss=f"{loss:.3f}", val_ppl=f"{history['val_ppl'][-1]:.1f}")


def _save(run: _Run, cfg: TrainConfig, rank: int, out: Path, ckpt_path: Path) -> None:
    """stable.pt at a WSD run's decay start, ckpt.pt every ``checkpoint_every`` steps and at the end."""
    step = run.step
    stable_now = cfg.schedule == "wsd" and step == decay_start(cfg)
    ckpt_now = cfg.checkpoint_every and (step % cfg.checkpoint_every == 0 or step == cfg.steps)
    if not (stable_now or ckpt_now):
        return
    # Every rank takes part in summing the map's window statistics; rank 0 writes them.
    state = snapshot(cfg, run.model, run.opt, step, run.clock, run.map_learner)
    if rank != 0:
        return
    if stable_now:
        save_atomic(state, out / "stable.pt")  # where longer budgets' runs branch off, see lr_at
    if ckpt_now:
        save_checkpoint(state, ckpt_path)


def finish(
    cfg: TrainConfig,
    model: GPT,
    splits,
    tok,
    counts,
    history,
    train_time: float,
    wall_time: float,
    batch: int,
    flops: int,
) -> dict:
    model.eval()
    V, d = model.cfg.vocab_size, model.cfg.d_model
    tokens = cfg.steps * batch * model.cfg.block_size
    scores = split_scores(model, splits, tok, cfg.final_eval_tokens, cfg.final_val_tokens)
    result = {
        "head": cfg.head,
        "codebook_size": model.cfg.codebook_size if KINDS[cfg.head].uses_codes else None,
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
        "host": {
            "cpus": os.cpu_count(),
            "affinity": sorted(os.sched_getaffinity(0)),
            "threads": torch.get_num_threads(),
            "loadavg": os.getloadavg(),
        },
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

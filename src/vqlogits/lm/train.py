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

from ..cluster import kmeans
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
from ..heads.vq import balanced_assignment, code_means
from .config import TrainConfig, check_head_fits, check_same_config, decay_start, model_config
from .data import get_batch, token_counts, tokenize_corpus
from .evaluate import perplexity, split_scores
from .learned_map import LEARNABLE, MapLearner
from .model import GPT, PRESETS
from .tokenizer import vocab_hint

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
    model.cfg.head = "vq"
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


def _train(cfg: TrainConfig, progress: bool, rank: int, world: int, device: torch.device, out: Path) -> dict:
    ckpt_path = out / "ckpt.pt"
    state = load_checkpoint(ckpt_path)  # the newest readable of ckpt.pt and ckpt.pt.prev
    if state is not None:  # init_from only decides where a run starts; the cache only where data lies
        check_same_config(cfg, state["config"], ckpt_path, ignore=("init_from", "cache"))
    elif cfg.init_from:
        state = stable_snapshot(cfg)
    if (V := vocab_hint(cfg.tokenizer, cfg.cache or USER_CACHE)) is not None:  # head sizes, before the corpus is read
        check_head_fits(cfg, V)
    if rank != 0:
        dist.barrier()  # rank 0 fills the token cache first
    splits, tok, meta = tokenize_corpus(cfg.corpus, cfg.tokenizer, cfg.cache or USER_CACHE)
    if rank == 0 and not (out / "tokenizer.json").exists():  # the run's text in and out without the cache
        write_atomic(out / "tokenizer.json", lambda tmp: tok.save(str(tmp)))
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
        return DDP(model, find_unused_parameters=cfg.head == "adaptive")

    runner = ddp_model()
    if cfg.reassign_every and isinstance(model.head, LEARNABLE):  # vq with a dense warm-up: at the swap
        map_learner = MapLearner(model.head, cfg.reassign_frac, seed=cfg.seed)
        if state is not None and state.get("map_learner"):
            map_learner.load_state_dict(state["map_learner"])
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    )

    bar = tqdm(
        total=cfg.steps, initial=step, desc=f"{cfg.head} {Path(cfg.out).name}", disable=not progress or rank != 0
    )
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
        bar.set_postfix(
            loss=f"{loss_value:.3f}", tok_s=f"{step * batch * mcfg.block_size / max(train_time, 1e-9):,.0f}"
        )
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
        snapshot = (
            {
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
            if rank == 0 and (stable_now or ckpt_now)
            else None
        )
        if snapshot is not None and stable_now:
            save_atomic(snapshot, out / "stable.pt")  # where longer budgets' runs branch off, see lr_at
        if snapshot is not None and ckpt_now:
            save_checkpoint(snapshot, ckpt_path)
    bar.close()
    results = finish(cfg, model, splits, tok, counts, history, train_time, wall_time, batch, flops)
    if rank == 0:
        save_atomic(
            {"config": asdict(cfg), "model_config": asdict(model.cfg), "model": model.state_dict()}, out / "model.pt"
        )
        write_json(out / "results.json", results)  # its presence marks the run finished: never half-written
    return results


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

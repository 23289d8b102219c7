"""Recover quality after compression, in two stages, within a wall-clock budget, resumably.

Stage 1 trains only the VQ head (codebook and bias) on cached hidden states of the frozen
backbone: cross-entropy on the text plus ``kl_weight`` x KL(original || compressed), the original
being the dense head. Stage 2 fine-tunes the last ``train_layers`` blocks, the final norm and the
head against the same objective, with a frozen copy of the original model as teacher.

Why the last layers and not LoRA or all weights: the head alone cannot absorb the compression
(the context has to carry which token of a code comes next, so the backbone must adapt), and on
a CPU the top blocks are where a few minutes of updates move the output distribution most per
second; backward stops below them, and the optimizer state stays small. ``train_layers=0``
fine-tunes every weight instead.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..files import (
    USER_CACHE,
    check_folder,
    load_checkpoint,
    previous,
    save_checkpoint,
    write_json,
)
from ..functional import compute_dtype, vq_soft_cross_entropy
from ..heads import VQLogitsHead
from ..lm.data import get_batch, tokenize_corpus
from ..lm.learned_map import LEARNABLE, MapLearner
from .folder import dense_head_weight, keep_teacher, load_pretrained, read_meta, save_pretrained
from .hidden import cached_hidden_states


def distill_loss(
    h: torch.Tensor, head, teacher_logits: torch.Tensor | None, targets: torch.Tensor, kl_weight: float
) -> torch.Tensor:
    """CE(targets) + kl_weight * KL(teacher || student), means over tokens; h (N, d).

    VQ heads (vq, hybrid): the KL without the student's (N, V) logits, through
    ``functional.vq_soft_cross_entropy`` (the teacher's (N, V) probabilities are needed anyway, but
    carry no gradient). Other heads: both terms from one ``head(h)`` (N, V), so a head whose
    forward is dear (a quantized head dequantizes its rows) runs it once a step.
    """
    if not kl_weight:
        return head.loss(h, targets)
    if isinstance(head, VQLogitsHead):
        logp_t = torch.log_softmax(teacher_logits.to(compute_dtype(h.dtype)), dim=-1)  # (N, V), no grad
        cross = vq_soft_cross_entropy(h, logp_t.exp(), head.codebook, head.assignment, head.bias)
        return head.loss(h, targets) + kl_weight * ((logp_t.exp() * logp_t).sum(-1) + cross).mean()
    logp_t = torch.log_softmax(teacher_logits.float(), dim=-1)
    logp_s = torch.log_softmax(head(h).float(), dim=-1)  # (N, V)
    ce = F.nll_loss(logp_s, targets)
    return ce + kl_weight * (logp_t.exp() * (logp_t - logp_s)).sum(-1).mean()


def _blocks(model):
    base = model.base_model
    blocks = getattr(base, "layers", None) or getattr(base, "h", None)
    norm = getattr(base, "norm", None) or getattr(base, "ln_f", None)
    if blocks is None or norm is None:
        raise ValueError(f"cannot find the transformer blocks of {type(base).__name__}")
    return blocks, norm


def _resumable(ckpt: Path, module, opt, learner=None) -> dict:
    """Progress of a stage: restored from ``ckpt`` if it exists; ``snapshot()`` gives what to save."""
    state = {"step": 0, "elapsed": 0.0, "losses": []}
    saved = load_checkpoint(ckpt)
    if saved is not None:
        module.load_state_dict(saved["module"])
        opt.load_state_dict(saved["opt"])
        if learner is not None and saved.get("learner"):
            learner.load_state_dict(saved["learner"])
        state.update(step=saved["step"], elapsed=saved["elapsed"], losses=saved["losses"])
    state["snapshot"] = lambda: {
        "module": module.state_dict(),
        "opt": opt.state_dict(),
        "learner": None if learner is None else learner.state_dict(),
        **{k: state[k] for k in ("step", "elapsed", "losses")},
    }
    return state


def _run_timed(desc: str, seconds: float, max_steps: int, state: dict, step_fn, ckpt: Path, save_every: int) -> None:
    """Call ``step_fn(step)`` until ``seconds`` of this stage are spent or, with ``max_steps`` > 0,
    that many steps are done (resumed time and steps count). The finished stage keeps one
    checkpoint: its ``.prev`` copy goes."""
    bar = tqdm(
        total=round(seconds), initial=min(round(state["elapsed"]), round(seconds)), desc=desc, unit="s", mininterval=1.0
    )
    while state["elapsed"] < seconds and not (max_steps and state["step"] >= max_steps):
        t0 = time.perf_counter()
        loss = step_fn(state["step"])
        state["step"] += 1
        state["elapsed"] += time.perf_counter() - t0
        state["losses"].append(loss)
        bar.n = min(round(state["elapsed"]), round(seconds))
        bar.set_postfix(step=state["step"], loss=f"{loss:.3f}")
        if state["step"] % save_every == 0:
            save_checkpoint(state["snapshot"](), ckpt)
    bar.close()
    save_checkpoint(state["snapshot"](), ckpt)
    previous(ckpt).unlink(missing_ok=True)


def calibrate(
    folder: str | Path,
    corpus: str = "pydocs",
    budget_minutes: float = 10.0,
    stages: str = "12",
    kl_weight: float = 1.0,
    train_layers: int = 4,
    stage1_share: float = 0.3,
    hidden_tokens: int = 32768,
    block: int = 256,
    batch: int = 4,
    lr_head: float = 3e-3,
    lr_model: float = 3e-5,
    seed: int = 0,
    cache: str | Path = USER_CACHE,
    reassign_every: int = 50,
    reassign_frac: float = 0.05,
    max_steps: int = 0,
) -> dict:
    """Run the chosen stages ("1", "2" or "12") and save the calibrated model back into ``folder``.

    Budget: ``budget_minutes`` of wall time over the stages (``stage1_share`` of it to stage 1 when
    both run), including the caching of stage 1's hidden states; ``max_steps`` > 0 also stops each
    stage after that many steps (a budget that does not depend on the machine's load).

    Stage 1 learns the token -> code map too (``lm.learned_map.MapLearner``, every
    ``reassign_every`` steps, at most ``reassign_frac`` of the seen tokens moving; 0: a fixed map)
    for every head with one; the map's rule counts the cross-entropy term, the loss keeps the KL."""
    folder = Path(folder)
    if not stages or set(stages) - {"1", "2"}:
        raise ValueError(f"stages must be '1', '2' or '12', got {stages!r}")
    if not budget_minutes > 0:
        raise ValueError(f"budget_minutes must be > 0, got {budget_minutes!r}")
    if not isinstance(max_steps, int) or isinstance(max_steps, bool) or max_steps < 0:
        raise ValueError(f"max_steps must be an int >= 0, got {max_steps!r}")
    if not isinstance(reassign_every, int) or reassign_every < 0:
        raise ValueError(f"reassign_every must be an int >= 0, got {reassign_every!r}")
    if not isinstance(train_layers, int) or train_layers < 0:
        raise ValueError(f"train_layers must be an int >= 0, got {train_layers!r}")
    check_folder(folder, "model")
    model = load_pretrained(folder)
    head = model.get_output_embeddings()
    dense = dense_head_weight(folder)
    if "2" in stages and train_layers == 0:  # the embedding will train: a tied teacher needs its own copy
        keep_teacher(folder, dense)
    splits, _, _ = tokenize_corpus(corpus, str(folder / "tokenizer.json"), cache, splits=("train",))
    train = splits["train"]
    budget = budget_minutes * 60
    share = {
        "1": budget * (stage1_share if stages == "12" else 1.0),
        "2": budget * ((1 - stage1_share) if stages == "12" else 1.0),
    }
    summary: dict = {"stages": {}}
    torch.manual_seed(seed)

    if "1" in stages:
        ckpt = folder / "calib_stage1.pt"
        t0 = time.perf_counter()
        n_batches = max(1, hidden_tokens // (block * batch))
        batches = [get_batch(train, 10_000_000 + i, seed, batch, block) for i in range(n_batches)]
        hs = cached_hidden_states(model.base_model, [x for x, _ in batches], cache)  # one backbone pass per cache
        H = torch.cat([h.reshape(-1, head.d_model) for h in hs])  # (N, d)
        Y = torch.cat([y.reshape(-1) for _, y in batches])
        caching_s = time.perf_counter() - t0
        opt = torch.optim.Adam(head.parameters(), lr=lr_head)
        learner = MapLearner(head, reassign_frac, seed=seed) if reassign_every and isinstance(head, LEARNABLE) else None
        state = _resumable(ckpt, head, opt, learner)
        state["elapsed"] += caching_s  # the budget covers the caching (or the cache's reading)
        rows = 512
        moved = []

        def step1(step):
            g = torch.Generator().manual_seed(seed * 7919 + step)
            idx = torch.randint(0, H.shape[0], (rows,), generator=g)
            h, y = H[idx], Y[idx]
            with torch.no_grad():
                teacher = h @ dense.T
            loss = distill_loss(h, head, teacher, y, kl_weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if learner is not None:
                learner.observe(head, h, y)
                if (step + 1) % reassign_every == 0:
                    moved.append(learner.reassign(head))
            return loss.item()

        _run_timed("stage 1 (head)", share["1"], max_steps, state, step1, ckpt, save_every=reassign_every or 50)
        summary["stages"]["1"] = {
            "steps": state["step"],
            "seconds": state["elapsed"],
            "final_loss": state["losses"][-1] if state["losses"] else None,
            "reassign_every": reassign_every if learner else 0,
            "moved": moved,
        }

    if "2" in stages:
        ckpt = folder / "calib_stage2.pt"
        teacher_backbone = copy.deepcopy(model.base_model).eval().requires_grad_(False)
        blocks, norm = _blocks(model)
        model.requires_grad_(train_layers == 0)
        trainable = (
            list(model.parameters())
            if train_layers == 0
            else [p for m in (*blocks[-train_layers:], norm) for p in m.parameters()]
        )
        for p in trainable:
            p.requires_grad_(True)
        head.requires_grad_(True)
        groups = [{"params": trainable, "lr": lr_model}, {"params": list(head.parameters()), "lr": lr_head / 3}]
        opt = torch.optim.AdamW(groups, weight_decay=0.0)
        state = _resumable(ckpt, model, opt)
        model.train()

        def step2(step):
            x, y = get_batch(train, step, seed, batch, block)
            h = model.base_model(input_ids=x).last_hidden_state.reshape(-1, head.d_model)  # (B*T, d)
            with torch.no_grad():
                teacher = (
                    teacher_backbone(input_ids=x).last_hidden_state.reshape(-1, head.d_model) @ dense.T
                    if kl_weight
                    else None
                )
            loss = distill_loss(h, head, teacher, y.reshape(-1), kl_weight)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable + list(head.parameters()), 1.0)
            opt.step()
            return loss.item()

        _run_timed("stage 2 (model)", share["2"], max_steps, state, step2, ckpt, save_every=10)
        model.eval()
        summary["stages"]["2"] = {
            "steps": state["step"],
            "seconds": state["elapsed"],
            "train_layers": train_layers,
            "final_loss": state["losses"][-1] if state["losses"] else None,
        }

    save_pretrained(model, folder)
    meta = read_meta(folder)
    meta.setdefault("calibration", []).append(
        {"corpus": corpus, "budget_minutes": budget_minutes, "kl_weight": kl_weight, **summary}
    )
    meta["calibrated_backbone"] = meta.get("calibrated_backbone", False) or "2" in stages
    write_json(folder / "vqlogits.json", meta)  # the folder does not load without it
    return summary

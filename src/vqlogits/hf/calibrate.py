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

import contextlib
import copy
import json
import signal
import threading
import time
import uuid
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data.corpora import get_batch, tokenize_corpus
from ..files import USER_CACHE, check_folder, load_checkpoint, previous, save_checkpoint, write_json
from ..functional import compute_dtype, vq_soft_cross_entropy
from ..heads import KINDS, VQLogitsHead
from ..heads.learned_map import LEARNABLE, MapLearner
from .config import CalibrateConfig
from .folder import check_not_gguf, dense_head_weight, keep_teacher, load_pretrained, read_meta, save_pretrained
from .hidden import cached_hidden_states

STAGE1_ROWS = 512  # hidden states per stage-1 step
RUN_FILE = "calib_run.json"  # an unfinished calibration's id and options: its checkpoints belong to it


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


@contextlib.contextmanager
def _interrupt_between_steps():
    """A Ctrl-C ends the step under way first (a list that gets an entry when it comes): the
    checkpoint then holds a whole step. A second Ctrl-C interrupts at once."""
    got: list = []
    if threading.current_thread() is not threading.main_thread():
        yield got
        return

    def handler(signum, frame):
        if got:
            raise KeyboardInterrupt
        got.append(signum)

    old = signal.signal(signal.SIGINT, handler)
    try:
        yield got
    finally:
        signal.signal(signal.SIGINT, old)


class _Stage:
    """One stage's progress (step, seconds spent, losses), resumable from its checkpoint ``ckpt``
    holding ``module``'s and ``opt``'s state (and ``learner``'s, the map's statistics)."""

    def __init__(self, ckpt: Path, module, opt, learner=None):
        self.ckpt, self.module, self.opt, self.learner = ckpt, module, opt, learner
        self.step, self.elapsed, self.losses = 0, 0.0, []
        saved = load_checkpoint(ckpt)
        if saved is not None:
            module.load_state_dict(saved["module"])
            if saved["opt"] is not None:  # a finished stage keeps the module alone
                opt.load_state_dict(saved["opt"])
            if learner is not None and saved.get("learner"):
                learner.load_state_dict(saved["learner"])
            self.step, self.elapsed, self.losses = saved["step"], saved["elapsed"], saved["losses"]
        self.finished = bool(saved and saved.get("finished"))

    def snapshot(self) -> dict:
        return {
            "module": self.module.state_dict(),
            "opt": self.opt.state_dict(),
            "learner": None if self.learner is None else self.learner.state_dict(),
            "step": self.step,
            "elapsed": self.elapsed,
            "losses": self.losses,
        }

    def run(self, desc: str, seconds: float, max_steps: int, step_fn, save_every: int) -> None:
        """Call ``step_fn(step) -> loss`` until ``seconds`` of this stage are spent or, with
        ``max_steps`` > 0, that many steps are done (resumed time and steps count). A finished
        stage keeps a checkpoint of its module alone, until ``calibrate`` saves the folder."""
        if self.finished:
            return
        # the bar counts steps when a step limit is set, else the budget's seconds; the other is shown beside
        total, unit = (max_steps, "step") if max_steps else (round(seconds), "s")
        done = lambda: self.step if max_steps else min(round(self.elapsed), total)  # noqa: E731
        bar = tqdm(total=total, initial=done(), desc=desc, unit=unit, mininterval=1.0)
        with _interrupt_between_steps() as interrupted:
            while self.elapsed < seconds and not (max_steps and self.step >= max_steps):
                t0 = time.perf_counter()
                loss = step_fn(self.step)
                self.step += 1
                self.elapsed += time.perf_counter() - t0
                self.losses.append(loss)
                bar.n = done()
                shown = {"budget": f"{self.elapsed:.0f} of {seconds:.0f} s"} if max_steps else {"step": self.step}
                bar.set_postfix(**shown, loss=f"{loss:.3f}")
                if interrupted or self.step % save_every == 0:
                    save_checkpoint(self.snapshot(), self.ckpt)
                if interrupted:
                    bar.close()
                    raise KeyboardInterrupt
        bar.close()
        save_checkpoint({**self.snapshot(), "opt": None, "learner": None, "finished": True}, self.ckpt)
        previous(self.ckpt).unlink(missing_ok=True)

    def summary(self) -> dict:
        return {"steps": self.step, "seconds": self.elapsed, "final_loss": self.losses[-1] if self.losses else None}


def head_groups(head, lr: float, row_step: float, h: torch.Tensor) -> tuple[list[dict], dict]:
    """Optimizer groups for ``head``, and its rows' learning rates by parameter name: each parameter
    whose rows make logits as dot products (``head.row_inputs(h)`` for hidden states h (N, d)) at
    ``row_step / mean ||x||_1``, x what its rows are dotted with; the rest at ``lr``.

    Adam moves every coordinate by about its learning rate a step, so a row's logit moves by up to
    lr x ||x||_1: a rate in logit units keeps a step's effect the same across models whose hidden
    states differ in scale (||h||_1 is about 580 on SmolLM2-135M, 1,900 on Gemma-3-270M, where one
    rate for both diverged).
    """
    with torch.no_grad():
        rates = {n: row_step / x.float().abs().sum(-1).mean().item() for n, x in head.row_inputs(h).items()}
    named = list(head.named_parameters())
    groups = [{"params": [p], "lr": rates[n]} for n, p in named if n in rates]
    rest = [p for n, p in named if n not in rates]
    return groups + ([{"params": rest, "lr": lr}] if rest else []), rates


def _stage1_states(cfg: CalibrateConfig, model, train) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states (N, d) of the frozen backbone on ``hidden_tokens`` of train text, and their targets (N,)."""
    n_batches = max(1, cfg.hidden_tokens // (cfg.block * cfg.batch))
    batches = [get_batch(train, 10_000_000 + i, cfg.seed, cfg.batch, cfg.block) for i in range(n_batches)]
    hs = cached_hidden_states(model.base_model, [x for x, _ in batches], cfg.cache or USER_CACHE)
    d = model.get_output_embeddings().d_model
    return torch.cat([h.reshape(-1, d) for h in hs]), torch.cat([y.reshape(-1) for _, y in batches])


def head_stage(cfg: CalibrateConfig, model, dense: torch.Tensor, train, seconds: float, folder: Path) -> dict:
    """Stage 1: the head alone on cached hidden states (the caching counts in ``seconds``), and
    its token -> code map every ``reassign_every`` steps (``heads.learned_map``)."""
    head = model.get_output_embeddings()
    t0 = time.perf_counter()
    H, Y = _stage1_states(cfg, model, train)  # (N, d), (N,)
    caching_s = time.perf_counter() - t0
    groups, row_lr = head_groups(head, cfg.lr_head, cfg.row_step, H)  # row_lr: {name: rate}
    opt = torch.optim.Adam(groups)
    every = cfg.reassign_every
    learner = MapLearner(head, cfg.reassign_frac, seed=cfg.seed) if every and isinstance(head, LEARNABLE) else None
    stage = _Stage(folder / "calib_stage1.pt", head, opt, learner)
    if not stage.finished:
        stage.elapsed += caching_s  # the budget covers the caching (or the cache's reading)
    if stage.elapsed >= seconds and stage.step == 0:
        raise ValueError(
            f"stage 1's budget ({seconds:.0f} s of --budget-minutes {cfg.budget_minutes:g}) went to caching"
            f" {H.shape[0]:,} hidden states ({caching_s:.0f} s), leaving no step; they are cached now, so rerun with"
            " a larger --budget-minutes (or fewer --hidden-tokens)"
        )
    moved = []

    def step(i: int) -> float:
        g = torch.Generator().manual_seed(cfg.seed * 7919 + i)
        idx = torch.randint(0, H.shape[0], (STAGE1_ROWS,), generator=g)
        h, y = H[idx], Y[idx]
        with torch.no_grad():
            teacher = h @ dense.T
        loss = distill_loss(h, head, teacher, y, cfg.kl_weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if learner is not None:
            learner.observe(head, h, y)
            if (i + 1) % every == 0:
                moved.append(learner.reassign(head))
        return loss.item()

    stage.run("stage 1 (head)", seconds, cfg.max_steps, step, save_every=every or 50)
    return {**stage.summary(), "row_lr": row_lr, "reassign_every": every if learner else 0, "moved": moved}


def _trainable(model, train_layers: int) -> list:
    """Stage 2's parameters besides the head's: the last ``train_layers`` blocks and the final norm (0: all)."""
    if train_layers == 0:
        head = {id(p) for p in model.get_output_embeddings().parameters()}
        return [p for p in model.parameters() if id(p) not in head]
    blocks, norm = _blocks(model)
    return [p for m in (*blocks[-train_layers:], norm) for p in m.parameters()]


def model_stage(cfg: CalibrateConfig, model, dense: torch.Tensor, train, seconds: float, folder: Path) -> dict:
    """Stage 2: the last ``train_layers`` blocks, the final norm and the head, a frozen copy of
    the original backbone with the dense head as teacher."""
    head = model.get_output_embeddings()
    teacher_backbone = copy.deepcopy(model.base_model).eval().requires_grad_(False)
    model.requires_grad_(cfg.train_layers == 0)
    trainable = _trainable(model, cfg.train_layers)
    for p in [*trainable, *head.parameters()]:
        p.requires_grad_(True)
    with torch.no_grad():  # the rows' rate from the original backbone's first batch: the same on a resume
        h0 = teacher_backbone(input_ids=get_batch(train, 0, cfg.seed, cfg.batch, cfg.block)[0]).last_hidden_state
    head_params, row_lr = head_groups(head, cfg.lr_head / 3, cfg.row_step / 3, h0)
    opt = torch.optim.AdamW([{"params": trainable, "lr": cfg.lr_model}, *head_params], weight_decay=0.0)
    stage = _Stage(folder / "calib_stage2.pt", model, opt)
    model.train()

    def step(i: int) -> float:
        x, y = get_batch(train, i, cfg.seed, cfg.batch, cfg.block)
        h = model.base_model(input_ids=x).last_hidden_state.reshape(-1, head.d_model)  # (B*T, d)
        teacher = None
        if cfg.kl_weight:
            with torch.no_grad():
                teacher = teacher_backbone(input_ids=x).last_hidden_state.reshape(-1, head.d_model) @ dense.T
        loss = distill_loss(h, head, teacher, y.reshape(-1), cfg.kl_weight)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable + list(head.parameters()), 1.0)
        opt.step()
        return loss.item()

    stage.run("stage 2 (model)", seconds, cfg.max_steps, step, save_every=10)
    model.eval()
    summary = stage.summary()
    return {
        "steps": summary["steps"],
        "seconds": summary["seconds"],
        "train_layers": cfg.train_layers,
        "row_lr": row_lr,
        "final_loss": summary["final_loss"],
    }


def _begin(folder: Path, cfg: CalibrateConfig) -> str:
    """This calibration's id: the interrupted one's when ``RUN_FILE`` holds these options (its
    checkpoints resume it), else a new one. Other options than those of an interrupted run with
    checkpoints are refused."""
    path, options = folder / RUN_FILE, {k: v for k, v in asdict(cfg).items() if k != "cache"}
    if path.exists() and any(folder.glob("calib_stage*.pt")):  # without checkpoints there is nothing to resume
        saved = json.loads(path.read_text(encoding="utf-8"))
        changed = {k: (saved["options"].get(k), v) for k, v in options.items() if saved["options"].get(k) != v}
        if changed:
            diff = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items())
            raise ValueError(
                f"{folder} holds an interrupted calibration with other options ({diff}): rerun it with its own options"
                f" to finish it, or delete {RUN_FILE} and calib_stage*.pt there to start over"
            )
        return saved["id"]
    run = uuid.uuid4().hex
    write_json(path, {"id": run, "options": options})
    return run


def _finish(folder: Path, run: str, record: dict, backbone: bool) -> None:
    """Record the calibration (once: a rerun after a kill here does not add it twice), then remove
    what only a resume needed."""
    meta = read_meta(folder)
    history = meta.setdefault("calibration", [])
    if not history or history[-1].get("run") != run:
        history.append({**record, "run": run})
    meta["calibrated_backbone"] = meta.get("calibrated_backbone", False) or backbone
    write_json(folder / "vqlogits.json", meta)  # the folder does not load without it
    for path in (*folder.glob("calib_stage*.pt*"), folder / RUN_FILE):
        path.unlink(missing_ok=True)


def calibrate(cfg: CalibrateConfig | None = None, /, **options) -> dict:
    """Run the chosen stages ("1", "2" or "12") and save the calibrated model back into ``cfg.folder``.

    ``cfg`` (or its fields as keywords). Budget: ``budget_minutes`` of wall time over the stages
    (``stage1_share`` of it to stage 1 when both run), including the caching of stage 1's hidden
    states (a budget that the caching uses up is refused before any step, the states kept for the
    rerun); ``max_steps`` > 0 also stops each stage after that many steps (a budget that does not
    depend on the machine's load).

    Resumable: each stage checkpoints in the folder (``calib_stage*.pt``) and an interrupted run
    resumes exactly when rerun with the same options (other options are refused). A finished run
    saves the folder, appends its record to vqlogits.json and removes its checkpoints, so a rerun
    calibrates again, on top, and is recorded as such.

    Stage 1 learns the token -> code map too (``heads.learned_map.MapLearner``, every
    ``reassign_every`` steps, at most ``reassign_frac`` of the seen tokens moving; 0: a fixed map)
    for every head with one; the map's rule counts the cross-entropy term, the loss keeps the KL."""
    cfg = cfg or CalibrateConfig(**{k: str(v) if isinstance(v, Path) else v for k, v in options.items()})
    cfg.check()
    check_not_gguf(cfg.folder)
    folder = check_folder(cfg.folder, "model")
    if KINDS[read_meta(folder).get("head", "vq")].index:
        raise ValueError(
            f"{folder} is accelerated: an index over the original rows, whose logits are the original's, so there is"
            " nothing to calibrate; calibrate a folder made by `vqlogits compress`"
        )
    run = _begin(folder, cfg)
    model = load_pretrained(folder)
    dense = dense_head_weight(folder)
    if "2" in cfg.stages and cfg.train_layers == 0:  # the embedding will train: a tied teacher needs its own copy
        keep_teacher(folder, dense)
    splits, _, _ = tokenize_corpus(
        cfg.corpus, str(folder / "tokenizer.json"), cfg.cache or USER_CACHE, splits=("train",)
    )
    budget = cfg.budget_minutes * 60
    both = cfg.stages == "12"
    shares = {
        "1": budget * (cfg.stage1_share if both else 1.0),
        "2": budget * ((1 - cfg.stage1_share) if both else 1.0),
    }
    torch.manual_seed(cfg.seed)
    summary: dict = {"stages": {}}
    for name, stage in (("1", head_stage), ("2", model_stage)):
        if name in cfg.stages:
            summary["stages"][name] = stage(cfg, model, dense, splits["train"], shares[name], folder)
    save_pretrained(model, folder)
    record = {"corpus": cfg.corpus, "budget_minutes": cfg.budget_minutes, "kl_weight": cfg.kl_weight, **summary}
    _finish(folder, run, {**record, "config": asdict(cfg)}, "2" in cfg.stages)
    return summary

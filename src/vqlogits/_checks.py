"""Input validation shared by all heads. Every error is a ValueError naming the argument and value."""

from __future__ import annotations

import math

import torch

REDUCTIONS = ("mean", "sum", "none")


def check_dims(d_model: int, vocab_size: int, codebook_size: int | None = None) -> None:
    for name, value in (("d_model", d_model), ("vocab_size", vocab_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if codebook_size is not None and (not isinstance(codebook_size, int) or not 1 <= codebook_size <= vocab_size):
        raise ValueError(f"codebook_size must be an int in [1, vocab_size={vocab_size}], got {codebook_size!r}")


def check_hidden(h: torch.Tensor, d_model: int) -> None:
    if not isinstance(h, torch.Tensor) or h.dim() < 1 or h.shape[-1] != d_model:
        shape = tuple(h.shape) if isinstance(h, torch.Tensor) else type(h).__name__
        raise ValueError(f"h must have last dimension d_model={d_model}, got shape {shape}")


def check_targets(targets: torch.Tensor, h: torch.Tensor, vocab_size: int, ignore_index: int, validate: bool) -> None:
    if not isinstance(targets, torch.Tensor) or targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise ValueError(f"targets must be an integer tensor, got {getattr(targets, 'dtype', type(targets))}")
    if targets.shape != h.shape[:-1]:
        raise ValueError(f"targets must have shape h.shape[:-1]={tuple(h.shape[:-1])}, got {tuple(targets.shape)}")
    if validate and targets.numel():
        bad = ((targets < 0) | (targets >= vocab_size)) & (targets != ignore_index)
        if bool(bad.any()):  # one host sync; validate=False skips it
            value = int(targets[bad][0])
            raise ValueError(f"targets contains {value}, outside [0, {vocab_size}) and not ignore_index={ignore_index}")


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def check_assignment(assignment: torch.Tensor, vocab_size: int, codebook_size: int) -> None:
    if not isinstance(assignment, torch.Tensor) or assignment.dtype.is_floating_point:
        raise ValueError(f"assignment must be an integer tensor, got {getattr(assignment, 'dtype', assignment)!r}")
    if assignment.shape != (vocab_size,):
        raise ValueError(f"assignment must have shape ({vocab_size},), got {tuple(assignment.shape)}")
    if assignment.numel():
        lo, hi = int(assignment.min()), int(assignment.max())
        if lo < 0 or hi >= codebook_size:
            value = lo if lo < 0 else hi
            raise ValueError(f"assignment contains {value}, outside [0, codebook_size={codebook_size})")


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be an int >= 1 or None, got {top_k!r}")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p!r}")


def check_state_shapes(state_dict: dict, prefix: str, expected: dict[str, tuple]) -> None:
    """Refuse a checkpoint whose V, K or d differs, naming the key and both shapes."""
    for name, shape in expected.items():
        key = prefix + name
        if key in state_dict and tuple(state_dict[key].shape) != tuple(shape):
            raise ValueError(
                f"state_dict[{key!r}] has shape {tuple(state_dict[key].shape)}, but this head expects {tuple(shape)}"
            )

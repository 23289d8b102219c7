"""Next-token loss of a trained model on a split: perplexity and bits per byte."""

from __future__ import annotations

import math

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.corpora import eval_windows
from ..data.tokenizer import token_byte_lengths
from ..stats import bits_per_byte
from .model import GPT


@torch.no_grad()
def evaluate_split(
    model: GPT,
    data: np.ndarray,
    max_tokens: int,
    byte_lengths: np.ndarray | None = None,
    batch: int = 16,
    desc: str = "eval",
) -> dict:
    """Next-token loss over consecutive windows of ``data`` (up to ``max_tokens`` targets; the
    first token of the split is never a target): its total ``nats``, ``tokens``, ``ppl`` =
    exp(nats / tokens), and with ``byte_lengths`` (``tokenizer.token_byte_lengths``) the UTF-8
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
        out.update(bytes=n_bytes, bpb=bits_per_byte(nats, n_bytes))
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

"""Quality of a compressed model against its original: perplexity, KL and top-1 agreement."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data.corpora import eval_windows, tokenize_corpus
from ..data.tokenizer import token_byte_lengths
from ..files import USER_CACHE
from ..kernels import first_argmax
from ..stats import bits_per_byte, ratio_interval
from .folder import dense_head_weight, describe, load_pretrained, read_meta
from .hidden import cached_hidden_states
from .load import load_causal_lm


@torch.no_grad()
def compare_heads(
    backbone,
    vq,
    dense_weight: torch.Tensor,
    data,
    block: int = 256,
    max_tokens: int = 16384,
    original_backbone=None,
    cache: str | Path | None = None,
) -> dict:
    """Perplexity of both heads, KL(original || compressed) and top-1 agreement on held-out tokens,
    and ``window_gaps``: each window's mean log-loss, compressed minus original, in nats per token
    (two heads evaluated on the same windows compare pairwise through them, ``stats.paired_ratio``).

    The original model is ``original_backbone`` (default: the same backbone) with the dense head.
    ``cache``: where hidden states are kept between calls (``hidden.cached_hidden_states``)."""
    windows = list(eval_windows(data, block, max_tokens, batch=1))
    inputs = [w[:, :-1] for w in windows]
    hs = [h[0] for h in cached_hidden_states(backbone, inputs, cache)]  # (T, d) each
    same = original_backbone in (None, backbone)
    hs_o = hs if same else [h[0] for h in cached_hidden_states(original_backbone, inputs, cache)]
    with getattr(vq, "rows_held", contextlib.nullcontext)():  # a quantized head dequantizes once, not per window
        nll_o, nll_c, kl, agree, count, gaps = _compare_windows(vq, dense_weight, windows, hs, hs_o)
    return {
        "ppl_original": math.exp(nll_o / count),
        "ppl_compressed": math.exp(nll_c / count),
        "ppl_ratio_interval95": ratio_interval(gaps),
        "window_gaps": gaps,
        "kl_original_to_compressed": kl / count,
        "top1_agreement": agree / count,
        "eval_tokens": count,
    }


WINDOW_ROWS = 8  # positions reduced at a time: their (rows, V) temporaries stay in cache even at V = 262,144


def window_sums(z_o: torch.Tensor, z_c: torch.Tensor, y: torch.Tensor) -> tuple[float, float, float, int]:
    """(nll original, nll compressed, KL(original || compressed), top-1 agreements), summed over
    the positions of logits z_o, z_c (T, V) with targets y (T,).

    Equals ``lo, lc = log_softmax(z_o), log_softmax(z_c)``; ``-lo[y].sum(), -lc[y].sum(),
    (lo.exp() * (lo - lc)).sum(), (first_argmax(z_o) == first_argmax(z_c)).sum()``, without the
    (T, V) log-probabilities: KL = sum p_o (z_o - z_c) - lse_o + lse_c, WINDOW_ROWS positions at a
    time (about 1.7x faster than the full tensors at V = 262,144), the sums over positions in fp64.
    """
    nll_o = nll_c = kl = 0.0
    agree = 0
    for s in range(0, z_o.shape[0], WINDOW_ROWS):
        o, c, t = z_o[s : s + WINDOW_ROWS], z_c[s : s + WINDOW_ROWS], y[s : s + WINDOW_ROWS, None]
        lse_o, lse_c = torch.logsumexp(o, -1), torch.logsumexp(c, -1)  # (rows,)
        p_o = torch.exp(o - lse_o[:, None])  # (rows, V)
        cross = (p_o.unsqueeze(1) @ (o - c).unsqueeze(2)).reshape(-1)  # (rows,): sum_v p_o (z_o - z_c)
        kl += float((cross - lse_o + lse_c).double().sum())
        nll_o += float((lse_o - o.gather(1, t)[:, 0]).double().sum())
        nll_c += float((lse_c - c.gather(1, t)[:, 0]).double().sum())
        agree += int((first_argmax(o) == first_argmax(c)).sum())
    return nll_o, nll_c, kl, agree


def _compare_windows(vq, dense_weight, windows, hs, hs_o) -> tuple:
    """Sums over the windows (nll original, nll compressed, KL, agreements, tokens) and each
    window's mean log-loss, compressed minus original."""
    nll_o = nll_c = kl = agree = 0.0
    count, gaps = 0, []
    for w, h, h_o in tqdm(zip(windows, hs, hs_o, strict=True), total=len(windows), desc="compare", leave=False):
        y = w[0, 1:]
        z_o, z_c = h_o @ dense_weight.T, vq(h).float()  # (T, V) each
        window_o, window_c, window_kl, window_agree = window_sums(z_o, z_c, y)
        nll_o, nll_c, kl, agree = nll_o + window_o, nll_c + window_c, kl + window_kl, agree + window_agree
        gaps.append((window_c - window_o) / y.numel())
        count += y.numel()
    return nll_o, nll_c, kl, agree, count, gaps


@torch.no_grad()
def row_kinds(head, dense: torch.Tensor, chunk: int = 16384) -> tuple[torch.Tensor, torch.Tensor]:
    """(own (V,), exact (V,)) booleans: the tokens with a row of their own in ``head`` (a singleton
    code, or any per-token row), and those whose row, bias included, is the original's exactly."""
    V = dense.shape[0]
    own, exact = torch.zeros(V, dtype=torch.bool), torch.zeros(V, dtype=torch.bool)
    codebook, assignment = getattr(head, "codebook", None), getattr(head, "assignment", None)
    if isinstance(codebook, torch.Tensor) and isinstance(assignment, torch.Tensor) and assignment.dim() == 1:
        own = torch.bincount(assignment, minlength=codebook.shape[0])[assignment] == 1
        rows = lambda s: codebook[assignment[s : s + chunk]].detach().float()  # noqa: E731
    elif isinstance(getattr(head, "weight", None), torch.Tensor):
        own = torch.ones(V, dtype=torch.bool)
        weight = head.weight.detach().float()
        rows = lambda s: weight[s : s + chunk]  # noqa: E731
    else:
        return own, exact
    for s in range(0, V, chunk):
        exact[s : s + chunk] = (rows(s) == dense[s : s + chunk]).all(-1)
    bias = getattr(head, "bias", None)
    if isinstance(bias, torch.Tensor):
        exact &= bias.detach() == 0
    return own, exact & own


def target_bytes(tok, targets: torch.Tensor) -> int:
    """The UTF-8 bytes of text the target tokens stand for; 0 for a tokenizer whose tokens are not
    strings of the text (no bits per byte then)."""
    try:
        return int(torch.from_numpy(token_byte_lengths(tok))[targets].sum())
    except ValueError:
        return 0


def _text_measures(head, dense, data, max_tokens: int, tok, result: dict) -> dict:
    """The shares of evaluated targets whose rows are the head's own and the original's exactly, and
    bits per byte of both models (None for a tokenizer whose tokens are not strings of the text)."""
    targets = torch.cat([w[0, 1:] for w in eval_windows(data, 256, max_tokens, batch=1)])
    own, exact = row_kinds(head, dense)
    out = {"own_row_share": float(own[targets].float().mean()), "exact_row_share": float(exact[targets].float().mean())}
    n_bytes = target_bytes(tok, targets)
    for name in ("original", "compressed"):
        nats = math.log(result[f"ppl_{name}"]) * result["eval_tokens"]
        out[f"bpb_{name}"] = bits_per_byte(nats, n_bytes)
    out["eval_bytes"] = n_bytes or None
    return out


def evaluate_pretrained(
    folder: str | Path,
    corpus: str = "pydocs",
    max_tokens: int = 16384,
    cache: str | Path = USER_CACHE,
    split: str = "test",
) -> dict:
    """Original vs compressed on ``corpus``'s ``split``: perplexity, KL, top-1 agreement, head size.
    The original is the calibrated backbone with the dense head, or the source model when
    calibration changed the backbone. (``vqlogits eval`` adds decode speed, see hf/speed.py.)"""
    folder = Path(folder)
    model = load_pretrained(folder)
    meta = read_meta(folder)
    splits, tok, _ = tokenize_corpus(corpus, str(folder / "tokenizer.json"), cache, splits=(split,))
    dense = dense_head_weight(folder)
    original = None
    if meta.get("source") and (meta.get("calibrated_backbone")):
        original, _ = load_causal_lm(meta["source"], cache)
    vq = model.get_output_embeddings()
    result = {"folder": str(folder), "corpus": corpus, "split": split, "head": meta.get("head", "vq")}
    result["codebook_size"] = meta.get("codebook_size")  # as the folder records it (compress prints the same)
    result.update(
        compare_heads(
            model.base_model,
            vq,
            dense,
            splits[split],
            max_tokens=max_tokens,
            original_backbone=None if original is None else original.base_model,
            cache=cache,
        )
    )
    result.update(_text_measures(vq, dense, splits[split], max_tokens, tok, result))
    stored = describe(folder)  # bytes as stored: codes, map, bias, scales and packed weights
    result.update(
        head_params=stored["head_params"],
        dense_head_params=dense.numel(),
        head_bytes=stored["head_bytes"],
        dense_head_bytes=dense.numel() * 4,
        dense_head_bytes_bf16=dense.numel() * 2,
    )
    return result


@torch.no_grad()
def evaluate_original(
    spec: str, corpus: str = "pydocs", max_tokens: int = 16384, cache: str | Path = USER_CACHE, split: str = "test"
) -> dict:
    """The original model alone, the baseline of every comparison: perplexity and bits per byte on
    ``corpus``'s ``split`` (the same windows ``evaluate_pretrained`` scores)."""
    model, source = load_causal_lm(spec, cache)
    splits, tok, _ = tokenize_corpus(corpus, str(source / "tokenizer.json"), cache, splits=(split,))
    windows = list(eval_windows(splits[split], 256, max_tokens, batch=1))
    hs = cached_hidden_states(model.base_model, [w[:, :-1] for w in windows], cache)
    W = model.get_output_embeddings().weight.detach().float()
    nll = sum(float(F.cross_entropy(h[0] @ W.T, w[0, 1:], reduction="sum")) for h, w in zip(hs, windows, strict=True))
    count = sum(w.shape[1] - 1 for w in windows)
    targets = torch.cat([w[0, 1:] for w in windows])
    n_bytes = target_bytes(tok, targets)
    return {
        "model": spec,
        "corpus": corpus,
        "split": split,
        "ppl": math.exp(nll / count),
        "bpb": bits_per_byte(nll, n_bytes),
        "eval_tokens": count,
        "eval_bytes": n_bytes or None,
        "head_params": W.numel(),
        "head_bytes_fp32": 4 * W.numel(),
    }

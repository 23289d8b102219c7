"""``vqlogits eval`` on a model folder: quality (hf/evaluate.py) plus the speed measured beside it,
and the measurements of an ``IndexedHead``'s decoding modes (agreement, certification, rows read, speed)."""

from __future__ import annotations

import statistics
from pathlib import Path

import torch

from ..data.corpora import eval_windows, tokenize_corpus
from ..files import USER_CACHE
from ..heads import KINDS, IndexedHead
from ..heads import probes as probes_policy
from ..kernels import dense_greedy
from ..timing import median_seconds, seconds_in_turns
from .evaluate import evaluate_pretrained
from .folder import dense_head_weight, load_pretrained, read_meta
from .generate import generate, greedy_loop
from .hidden import hidden_states

TV_ROWS = 512  # hidden states per TV distance: one softmax over V each


def median(fn, repeats: int = 7) -> float:
    return median_seconds(fn, repeats, warmup=2)[0]


@torch.no_grad()
def measure_index(
    head: IndexedHead,
    weight: torch.Tensor,
    h: torch.Tensor,
    probes: list[int],
    batches=(1, 16),
    tv_rows: int = TV_ROWS,
    repeats: int = 7,
) -> list[dict]:
    """For each probe count: top-1 agreement with ``(h @ W.T).argmax``, total-variation distance of
    the T = 1 sampling distribution to the dense softmax, and the head alone's time against the
    dense head's at each batch size (same run). One row for exact greedy, with its certified
    fraction, the rows it read per token in fp32 or fp64, and those a certified screen read."""
    dense = dense_greedy(weight)
    dense_top = torch.cat([dense(c) for c in h.split(1024)])
    dense_time = {b: median(lambda b=b: dense(h[:b]), repeats) for b in batches}
    rows = []
    for P in [*probes, None]:
        exact = P is None
        picks, certified, fp32_rows, screened_rows = [], 0, 0, 0
        for i in range(h.shape[0]):  # one token at a time, as in batch-1 decoding
            pick, s = head.greedy_stats(h[i : i + 1], exact=exact, probes=P)
            picks.append(pick)
            certified += s["certified"]
            fp32_rows += s["probed_rows"] + s["verified_rows"]
            screened_rows += s["screened_rows"]
        agree = float((torch.cat(picks) == dense_top).float().mean())
        first_round = probes_policy.exact_first_round(head.clusters) if exact else P
        row = {
            "clusters": head.clusters,
            "probes": first_round,
            "mode": "exact" if exact else "approximate",
            "agreement": agree,
            "fp32_rows_per_token": fp32_rows / h.shape[0],
            "screened_rows_per_token": screened_rows / h.shape[0],
        }
        if exact:
            row["certified"] = certified / h.shape[0]
        else:
            row["tv_distance"] = tv_distance(head, weight, h[:tv_rows], P)
        for b in batches:
            t = median(lambda b=b, exact=exact, P=P: head.greedy(h[:b], exact=exact, probes=P), repeats)
            row[f"head_s_b{b}"], row[f"dense_head_s_b{b}"] = t, dense_time[b]
            row[f"head_speedup_b{b}"] = dense_time[b] / t
        rows.append(row)
    return rows


@torch.no_grad()
def tv_distance(head: IndexedHead, weight: torch.Tensor, h: torch.Tensor, probes: int) -> float:
    """Mean total-variation distance between ``head.sampling_probs`` (T = 1) and the dense softmax,
    one row at a time as in batch-1 decoding (a batch reads the union of its rows' probes)."""
    total = 0.0
    for row in h.split(1):
        total += float(
            0.5 * (head.sampling_probs(row, probes=probes) - torch.softmax(row @ weight.T, dim=-1)).abs().sum()
        )
    return total / h.shape[0]


@torch.no_grad()
def decode_speed(model, dense: torch.Tensor, prompts: torch.Tensor, new: int = 32, repeats: int = 5) -> dict:
    """End-to-end greedy decoding of ``prompts`` (B, T) through the path ``vqlogits generate`` runs
    for the model (``hf.generate.generate``: verified for an index, the head's compact greedy
    otherwise) and through its backbone with the dense head ``dense`` (``h @ W.T`` a step), taking
    turns ``repeats`` times after a warm-up round: medians and the range of the per-turn ratio."""
    times = seconds_in_turns(
        {
            "model": lambda: generate(model, prompts, new),
            "dense": lambda: greedy_loop(model, prompts, new, dense_greedy(dense)),
        },
        repeats,
    )
    ratios = sorted(d / m for d, m in zip(times["dense"], times["model"], strict=True))
    tokens = prompts.shape[0] * new
    return {
        "decode_tok_s": tokens / statistics.median(times["model"]),
        "dense_decode_tok_s": tokens / statistics.median(times["dense"]),
        "decode_speedup": statistics.median(ratios),
        "decode_speedup_range": [ratios[0], ratios[-1]],
        "decode_setup": {"batch": prompts.shape[0], "prompt": prompts.shape[1], "new": new, "repeats": repeats},
    }


def evaluate_folder(
    folder: str | Path,
    corpus: str = "pydocs",
    max_tokens: int = 16384,
    cache: str | Path = USER_CACHE,
    split: str = "test",
) -> dict:
    """A compressed model: ``evaluate_pretrained``; an indexed model, whose logits are the
    original's: top-1 agreement, certification and the head alone's speed of each decoding mode
    (``measure_index``). Both: end-to-end decoding through ``vqlogits generate``'s path against
    the dense head (``decode_speed``, batch 1, the split's first 32 tokens as the prompt)."""
    folder = Path(folder)
    meta = read_meta(folder)
    model = load_pretrained(folder)
    splits, _, _ = tokenize_corpus(corpus, str(folder / "tokenizer.json"), cache, splits=(split,))
    prompt = eval_windows(splits[split], 32, 32, batch=1)[0][:, :32]  # (1, 32)
    if KINDS[meta.get("head", "vq")].index:
        head = model.get_output_embeddings()
        h = hidden_states(model, splits[split], min(max_tokens, 2048))
        rows = measure_index(head, head.weight, h, [head.probes], batches=(1,), tv_rows=min(256, h.shape[0]))
        result = {"folder": str(folder), "corpus": corpus, "split": split, "tokens": h.shape[0], "modes": rows}
        return {**result, **decode_speed(model, head.weight, prompt)}
    result = evaluate_pretrained(folder, corpus, max_tokens, cache, split)
    return {**result, **decode_speed(model, dense_head_weight(folder), prompt)}

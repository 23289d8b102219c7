"""Decoding through a vqlogits head with the backbone's KV cache: no (B, V) logits per step.

An indexed head (``vqlogits accelerate``) decodes *verified* by default: the approximate head
drafts a block of k tokens ahead, one step of the backbone each; then the dense head checks the
block in one pass (a bf16 GEMM over the k hidden states with a proven rounding bound for greedy,
``heads.indexed``; the fp32 logits of the block for sampling). The longest agreeing prefix is kept
and the first disagreement is replaced by the dense model's token, so the output is exactly the
dense model's: the same greedy tokens, or samples from the same distribution (speculative
sampling, ``functional.speculative_sample``). Each draft's hidden state depends only on the tokens
before it, so the backbone's states of a kept prefix are the dense model's own.
"""

from __future__ import annotations

from . import _quiet  # noqa: F401  (first: torchao's import lines silenced before transformers imports it)

# isort: split

import torch
from transformers import DynamicCache

from ..functional import sampling_probs
from ..heads import kind_of
from ..heads import probes as policy
from ..heads.speculative import dense_probs, draft_sample, verify_block
from ..kernels import first_argmax
from .load import vqlogits_head

MAX_BLOCK = 32  # drafts per block at most: the verification GEMM's cost per token stops falling around here
WARMUP_BLOCKS = 4  # blocks before the break-even check
# A batch whose drafts would read more than this share of the clusters decodes with the exact screen
# alone: on Gemma-3-270M (docs/PRETRAINED.md) drafts reading 15% of them (batch 4) gave 1.50x dense
# fp32, and 41% (batch 16) 1.10x where the screen alone gave 1.70x.
DRAFT_SHARE_MAX = 0.25


def head_share(model, head) -> float:
    """The head's share of a decoding step's weight reads at batch 1: V d against the backbone's
    parameters other than the input embedding (whose lookup reads one row)."""
    body = sum(p.numel() for p in model.base_model.parameters()) - model.get_input_embeddings().weight.numel()
    return head.vocab_size * head.d_model / (head.vocab_size * head.d_model + body)


def break_even(model, head) -> float:
    """Emitted tokens per backbone step below which verified decoding costs more than dense
    (``heads.probes.break_even`` of ``head_share``)."""
    return policy.break_even(head_share(model, head))


class _Verified:
    """Verified decoding's state for one run: the drafting policy, the block size, and its counts."""

    def __init__(self, model, head, sampling: dict | None, generator, probes: int | None, batch: int, block: int):
        self.head, self.sampling, self.generator = head, sampling, generator
        self.probes = probes or policy.draft(head.clusters, batch)
        self.least, self.block = break_even(model, head), block
        self.stats = {
            "blocks": 0,
            "drafted": 0,
            "accepted": 0,
            "block_tokens": 0,
            "backbone_steps": 0,
            "emitted": 0,
            "fallback_at": None,
        }

    def draft(self, hidden):
        """A draft token per row, (B,), and its proposal (B, V) when sampling."""
        if self.sampling is None:
            return self.head.greedy(hidden, exact=False, probes=self.probes), None
        return draft_sample(self.head, hidden, self.sampling, self.probes, self.generator)

    def account(self, batch: int, k: int, kept, emitted_before: int) -> None:
        """Count a block of ``k`` drafts whose rows kept ``kept`` (B,); adapt the block (doubled after
        a block kept whole, halved after one that kept less than half); fall back to the dense head
        when the blocks emit fewer tokens per backbone step than ``break_even``."""
        m, counts = int(kept.min()), self.stats
        counts["blocks"] += 1
        counts["drafted"] += batch * k
        counts["accepted"] += int(kept.sum())
        counts["block_tokens"] += m + 1
        counts["backbone_steps"] += k + 1  # the drafts' and the emitted token's
        self.block = min(MAX_BLOCK, 2 * self.block) if m == k else max(1, self.block // 2) if 2 * m < k else self.block
        if counts["blocks"] >= WARMUP_BLOCKS and counts["block_tokens"] < self.least * counts["backbone_steps"]:
            counts["fallback_at"] = emitted_before + m + 1


def _step(backbone, ids, cache):
    return backbone(input_ids=ids, cache=cache, use_cache=True).last_hidden_state[:, -1]  # (B, d)


def prefill(backbone, input_ids, cache):
    """The prompt through the backbone, filling ``cache``: the last position's hidden state (B, d)."""
    return _step(backbone, input_ids, cache)


@torch.no_grad()
def greedy_loop(model, ids: torch.Tensor, new: int, pick) -> torch.Tensor:
    """Cached greedy decoding with ``pick(hidden (B, d)) -> ids (B,)`` as the head, one backbone step
    a token (dense decoding, as a baseline): (B, T + new)."""
    cache, out = DynamicCache(), [ids]
    hidden = prefill(model.base_model, ids, cache)
    for i in range(new):
        out.append(pick(hidden)[:, None])
        if i + 1 < new:
            hidden = _step(model.base_model, out[-1], cache)
    return torch.cat(out, 1)


def decode_one_token(head, hidden, verified: _Verified | None, sampling: dict | None, generator):
    """The next token of each row, (B,), one backbone step at a time: the dense model's own (exact)
    when decoding verified, else the head's compact greedy or sample (an index's approximate one)."""
    if verified is not None:
        if sampling is None:
            return head.exact_argmax(hidden)[0]
        return torch.multinomial(dense_probs(head, hidden, sampling), 1, generator=generator).squeeze(1)
    if sampling is not None:
        return head.sample(hidden, generator=generator, **sampling)
    return head.greedy(hidden, exact=False) if kind_of(head).index else head.greedy(hidden)


def speculative_decode(backbone, cache, verified: _Verified, hidden, k: int, emitted_before: int):
    """``k`` drafts, one backbone step each, verified in one pass (``heads.speculative.verify_block``):
    the longest prefix every row keeps, then the dense model's token after it, (B, m + 1). The
    cache is cropped to the emitted text: the states of rejected drafts are not of it."""
    hiddens, drafts, proposals = [hidden], [], []
    for _ in range(k):
        token, q = verified.draft(hiddens[-1])
        drafts.append(token)
        proposals.append(q)
        hiddens.append(_step(backbone, token[:, None], cache))
    drafts = torch.stack(drafts, 1)  # (B, k)
    q = torch.stack(proposals, 1) if verified.sampling is not None else None
    dense, kept = verify_block(verified.head, torch.stack(hiddens, 1), drafts, q, verified.sampling, verified.generator)
    m = int(kept.min())  # the batch keeps the shortest agreeing prefix, then the dense token after it
    cache.crop(-(k - m))
    verified.account(drafts.shape[0], k, kept, emitted_before)
    return dense[:, : m + 1]


def _finish_rows(emitted, done, eos: torch.Tensor | None, fill: int | None):
    """After a row emits one of ``eos`` it holds ``fill`` (default: that first end-of-sequence
    id); returns (emitted, done)."""
    if eos is None:
        return emitted, done
    is_eos = torch.isin(emitted, eos).int()
    after = torch.cumsum(is_eos, 1) - is_eos > 0  # an end-of-sequence earlier in this run
    emitted = torch.where(done[:, None] | after, int(eos[0]) if fill is None else fill, emitted)
    return emitted, done | torch.isin(emitted, eos).any(1)


def _eos_ids(eos_token_id) -> torch.Tensor | None:
    """An int, or a list of ints (Gemma's end-of-text and end-of-turn), as a tensor; None: none."""
    if eos_token_id is None or eos_token_id == []:
        return None
    return torch.tensor([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id))


def decode_banned(head, hidden, sampling: dict | None, banned: torch.Tensor, generator):
    """The dense model's next token with ``banned`` ids excluded (``min_new_tokens``): its fp32
    logits with those set to -inf, then greedy (ties to the smallest id) or sampling, as HF does."""
    logits = (head.dense_logits(hidden) if hasattr(head, "dense_logits") else head(hidden)).float()
    logits[:, banned] = float("-inf")
    if sampling is None:
        return first_argmax(logits)
    return torch.multinomial(sampling_probs(logits, **sampling), 1, generator=generator).squeeze(1)


def _check(head, verify, block) -> bool:
    """Whether the head is an index; refuses ``verify=True`` on another head and a bad ``block``."""
    indexed = kind_of(head).index
    if verify and not indexed:
        raise ValueError(f"verify=True needs an indexed head (vqlogits accelerate), got {kind_of(head).name!r}")
    if not isinstance(block, int) or isinstance(block, bool) or not 1 <= block <= MAX_BLOCK:
        raise ValueError(f"block must be an int in [1, {MAX_BLOCK}], got {block!r}")
    return indexed


@torch.no_grad()
def generate(
    model,
    input_ids: torch.Tensor,
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    top_k=None,
    top_p=None,
    do_sample: bool = False,
    generator=None,
    eos_token_id: int | list[int] | None = None,
    verify: bool | None = None,
    block: int = 8,
    on_tokens=None,
    stats: dict | None = None,
    draft_probes: int | None = None,
    min_new_tokens: int = 0,
    pad_token_id: int | None = None,
) -> torch.Tensor:
    """Decode with the backbone's KV cache and the head's compact greedy / sample: no (B, V) logits.

    VQ heads: the same distribution per step as ``model.generate(..., do_sample, temperature, top_k,
    top_p)``; greedy decoding gives the same tokens. Indexed heads: ``verify`` (the default) gives
    exactly the dense model's tokens (greedy: the argmax of the exact logits, ties to the smallest
    id) or samples from exactly its distribution, drafting ``block`` tokens at a time (adapted by
    ``_Verified.account``, at most ``MAX_BLOCK``); when the blocks emit fewer tokens per backbone
    step than ``break_even`` (after ``WARMUP_BLOCKS`` blocks), or when the batch's drafts would read
    more than ``DRAFT_SHARE_MAX`` of the clusters (``IndexedHead.draft_share``), the rest is decoded
    by the dense head's exact screen. A
    batch keeps, each block, the prefix that every row kept (the shortest), so it stays exact.
    ``verify=False``: the approximate greedy of the probed clusters, or ``IndexedHead.sample``.
    ``draft_probes``: clusters a draft reads (default ``heads.probes.draft``).

    ``eos_token_id``: an id or a list of them; a row that emitted one holds ``pad_token_id``
    (default: that id) after it. ``min_new_tokens``: before that many, the end-of-sequence ids are
    excluded from the dense model's own logits (``decode_banned``, no drafting), as HF does.
    ``on_tokens(ids (B, n))`` is called with each run of verified tokens as they are emitted;
    ``stats`` (a dict) receives the blocks, drafted and kept tokens and where a fallback began.
    (B, T) -> (B, T + new).
    """
    head = vqlogits_head(model, "greedy", "sample")
    indexed = _check(head, verify, block)
    sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p) if do_sample else None
    backbone, cache = model.base_model, DynamicCache()
    hidden = prefill(backbone, input_ids, cache)
    B = input_ids.shape[0]
    verified = None
    if indexed and verify is not False:
        verified = _Verified(model, head, sampling, generator, draft_probes, B, block)
        if head.draft_share(hidden, verified.probes) > DRAFT_SHARE_MAX:  # the exact screen alone is cheaper
            verified.stats["fallback_at"] = 0
    eos = _eos_ids(eos_token_id)
    out, done, new = [input_ids], torch.zeros(B, dtype=torch.bool), 0
    while new < max_new_tokens and not (eos is not None and bool(done.all())):
        k = min(verified.block if verified else block, max_new_tokens - new - 1)
        if new < min_new_tokens and eos is not None:
            emitted = decode_banned(head, hidden, sampling, eos, generator)[:, None]
        elif verified is None or verified.stats["fallback_at"] is not None or k < 1:
            emitted = decode_one_token(head, hidden, verified, sampling, generator)[:, None]
        else:
            emitted = speculative_decode(backbone, cache, verified, hidden, k, new)
        emitted, done = _finish_rows(emitted, done, eos, pad_token_id)
        out.append(emitted)
        new += emitted.shape[1]
        if on_tokens is not None:
            on_tokens(emitted)
        if new < max_new_tokens:
            hidden = _step(backbone, emitted[:, -1:], cache)
    if stats is not None:
        stats.update({**(verified.stats if verified else {}), "emitted": new})
    return torch.cat(out, 1)

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

from pathlib import Path

import torch
from tokenizers import Tokenizer
from transformers import DynamicCache

from ..functional import sampling_probs, speculative_sample
from ..heads import kind_of
from .folder import load_pretrained
from .load import vqlogits_head

MAX_BLOCK = 32  # drafts per block at most: the verification GEMM's cost per token stops falling around here
WARMUP_BLOCKS = 4  # blocks before the break-even check


def break_even(model, head) -> float:
    """Emitted tokens per backbone step below which verified decoding costs more than dense.

    A draft the batch does not keep costs a backbone step that emits nothing. With s the head's
    share of a step's weight reads at batch 1 (V d against the backbone's parameters other than
    the input embedding, whose lookup reads one row) and a verified head that costs r of the dense
    head per token, verified costs (1 - s) / e + s r of dense at e tokens per step; r = 1/2 (the
    bf16 screen's share alone, an under-estimate of what it saves) gives e* = (1 - s) / (1 - s / 2).
    """
    body = sum(p.numel() for p in model.base_model.parameters()) - model.get_input_embeddings().weight.numel()
    share = head.vocab_size * head.d_model / (head.vocab_size * head.d_model + body)
    return (1 - share) / (1 - share / 2)


def draft_probes_for(clusters: int, batch: int) -> int:
    """Clusters a draft reads by default: K / 32 at batch 1 (on SmolLM2 a quarter of K / 8's reads
    still agrees 97.7%), times the batch. A batch keeps a draft only when every row agrees, so each
    row's misses must be about B times rarer; past half the clusters the batch decodes with the
    dense head from the start (``draft_share``)."""
    return min(clusters, max(1, clusters // 32) * batch)


class _Verified:
    """The draft and verification steps of one decoding run, and its counts."""

    def __init__(self, head, do_sample, temperature, top_k, top_p, generator, probes):
        self.head, self.do_sample, self.generator, self.probes = head, do_sample, generator, probes
        self.filters = dict(temperature=temperature, top_k=top_k, top_p=top_p)
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
        """A draft token per row, (B,), and what the verification needs of it."""
        if not self.do_sample:
            return self.head.greedy(hidden, exact=False, probes=self.probes), None
        q = self.head.proposal(hidden, probes=self.probes, **self.filters)  # (B, V)
        return torch.multinomial(q, 1, generator=self.generator).squeeze(1), q

    def verify(self, hiddens, drafts, proposals):
        """hiddens (B, k + 1, d), drafts (B, k) -> the dense model's tokens (B, k + 1) and, per row,
        how many leading drafts it keeps."""
        B, k1, d = hiddens.shape
        k = k1 - 1
        flat = hiddens.reshape(-1, d)
        if not self.do_sample:
            dense = self.head.verify_greedy(flat).view(B, k1)
            agree = dense[:, :k] == drafts
        else:
            p = sampling_probs(self.head.dense_logits(flat), **self.filters).view(B, k1, -1)
            tokens, agree = speculative_sample(
                p[:, :k].reshape(B * k, -1), proposals.reshape(B * k, -1), drafts.reshape(-1), self.generator
            )
            bonus = torch.multinomial(p[:, k], 1, generator=self.generator)  # (B, 1): after k kept drafts
            dense, agree = torch.cat([tokens.view(B, k), bonus], 1), agree.view(B, k)
        kept = torch.where(agree.all(1), k, (~agree).int().argmax(1))  # (B,)
        return dense, kept

    def dense_step(self, hidden):
        """The dense model's own next token, (B,)."""
        if not self.do_sample:
            return self.head.verify_greedy(hidden)
        p = sampling_probs(self.head.dense_logits(hidden), **self.filters)
        return torch.multinomial(p, 1, generator=self.generator).squeeze(1)


def _step(backbone, ids, cache):
    return backbone(input_ids=ids, cache=cache, use_cache=True).last_hidden_state[:, -1]  # (B, d)


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
    eos_token_id: int | None = None,
    verify: bool | None = None,
    block: int = 8,
    on_tokens=None,
    stats: dict | None = None,
    draft_probes: int | None = None,
) -> torch.Tensor:
    """Decode with the backbone's KV cache and the head's compact greedy / sample: no (B, V) logits.

    VQ heads: the same distribution per step as ``model.generate(..., do_sample, temperature, top_k,
    top_p)``; greedy decoding gives the same tokens. Indexed heads: ``verify`` (the default) gives
    exactly the dense model's tokens (greedy: the argmax of the exact logits, ties to the smallest
    id) or samples from exactly its distribution, drafting ``block`` tokens at a time (doubled after
    a block kept whole, halved after one that kept less than half, at most ``MAX_BLOCK``); when
    the blocks emit fewer tokens per backbone step than ``break_even`` (after ``WARMUP_BLOCKS``
    blocks; a batch keeps only the prefix all its rows agree on), or when the batch's drafts would
    read more than half the rows (``IndexedHead.draft_share``), the rest is decoded by the dense head.
    ``verify=False``: the approximate greedy of the probed clusters, or ``IndexedHead.sample``.
    A batch keeps, each block, the prefix that every row kept (the shortest), so it stays exact.
    ``draft_probes``: clusters a draft reads (default ``draft_probes_for``: K / 32 per row of the
    batch; drafts need only agree often, the verification makes the output exact).

    ``on_tokens(ids (B, n))`` is called with each run of verified tokens as they are emitted;
    ``stats`` (a dict) receives the blocks, drafted and kept tokens and where a fallback began.
    (B, T) -> (B, T + new).
    """
    head = vqlogits_head(model, "greedy", "sample")
    indexed = kind_of(head).index
    if verify and not indexed:
        raise ValueError(f"verify=True needs an indexed head (vqlogits accelerate), got {kind_of(head).name!r}")
    if not isinstance(block, int) or isinstance(block, bool) or not 1 <= block <= MAX_BLOCK:
        raise ValueError(f"block must be an int in [1, {MAX_BLOCK}], got {block!r}")
    backbone, cache = model.base_model, DynamicCache()
    hidden = _step(backbone, input_ids, cache)
    B, out, done = input_ids.shape[0], [input_ids], torch.zeros(input_ids.shape[0], dtype=torch.bool)
    verified = None
    if indexed and verify is not False:
        probes = draft_probes or draft_probes_for(head.clusters, B)
        verified = _Verified(head, do_sample, temperature, top_k, top_p, generator, probes)
        least = break_even(model, head)
    counts = verified.stats if verified is not None else {}
    if (
        verified is not None and head.draft_share(hidden, verified.probes) > 0.5
    ):  # a batch whose drafts read most rows: dense is cheaper
        counts["fallback_at"] = 0
    new = 0
    while new < max_new_tokens and not (eos_token_id is not None and bool(done.all())):
        k = min(block, max_new_tokens - new - 1)
        if verified is None or counts["fallback_at"] is not None or k < 1:
            if verified is not None:
                emitted = verified.dense_step(hidden)[:, None]
            elif do_sample:
                emitted = head.sample(hidden, temperature, top_k, top_p, generator)[:, None]
            else:
                emitted = (head.greedy(hidden, exact=False) if indexed else head.greedy(hidden))[:, None]
        else:
            hiddens, drafts, proposals = [hidden], [], []
            for _ in range(k):
                token, q = verified.draft(hiddens[-1])
                drafts.append(token)
                proposals.append(q)
                hiddens.append(_step(backbone, token[:, None], cache))
            drafts = torch.stack(drafts, 1)  # (B, k)
            dense, kept = verified.verify(
                torch.stack(hiddens, 1), drafts, torch.stack(proposals, 1) if do_sample else None
            )
            m = int(kept.min())  # the batch keeps the shortest agreeing prefix, then the dense token after it
            emitted = dense[:, : m + 1]
            cache.crop(-(k - m))  # the states of drafts m .. k - 1 are not of the emitted text
            counts["blocks"] += 1
            counts["drafted"] += B * k
            counts["accepted"] += int(kept.sum())
            counts["block_tokens"] += m + 1
            counts["backbone_steps"] += k + 1  # the drafts' and the emitted token's
            block = min(MAX_BLOCK, 2 * block) if m == k else max(1, block // 2) if 2 * m < k else block
            if counts["blocks"] >= WARMUP_BLOCKS and counts["block_tokens"] < least * counts["backbone_steps"]:
                counts["fallback_at"] = new + m + 1
        if eos_token_id is not None:  # a finished row repeats its end-of-sequence token
            is_eos = (emitted == eos_token_id).int()
            after = torch.cumsum(is_eos, 1) - is_eos > 0  # an end-of-sequence earlier in this run
            emitted = torch.where(done[:, None] | after, eos_token_id, emitted)
            done |= (emitted == eos_token_id).any(1)
        out.append(emitted)
        new += emitted.shape[1]
        counts["emitted"] = new
        if on_tokens is not None:
            on_tokens(emitted)
        if new < max_new_tokens:
            hidden = _step(backbone, emitted[:, -1:], cache)
    if stats is not None:
        stats.update(counts)
    return torch.cat(out, 1)


def generate_text(
    folder: str | Path,
    prompt: str,
    max_new_tokens: int = 48,
    temperature: float = 1.0,
    top_k=None,
    top_p=None,
    do_sample: bool = False,
    seed: int = 0,
    verify: bool | None = None,
) -> str:
    """Prompt in, continuation out, through ``generate`` (the compact path)."""
    folder = Path(folder)
    model = load_pretrained(folder)
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    ids = torch.tensor([tok.encode(prompt).ids])
    eos = model.config.eos_token_id if isinstance(model.config.eos_token_id, int) else None
    g = torch.Generator().manual_seed(seed)
    out = generate(model, ids, max_new_tokens, temperature, top_k, top_p, do_sample, g, eos, verify)
    return tok.decode(out[0].tolist())

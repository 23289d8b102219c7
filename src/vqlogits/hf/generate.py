"""Decoding through a vqlogits head with the backbone's KV cache: no (B, V) logits per step."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer
from transformers import DynamicCache

from ..heads import kind_of
from .folder import load_pretrained
from .load import vqlogits_head


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
    exact: bool = True,
) -> torch.Tensor:
    """Decode with the backbone's KV cache and the head's compact greedy / sample: no (B, V) logits.

    VQ head: same distribution per step as ``model.generate(..., do_sample, temperature, top_k,
    top_p)``; greedy decoding gives the same tokens. Indexed head: greedy is the dense model's
    (``exact=True``) or its probed approximation (``exact=False``); sampling is ``IndexedHead.sample``.
    (B, T) -> (B, T + new).
    """
    head = vqlogits_head(model, "greedy", "sample")
    greedy = (lambda h: head.greedy(h, exact=exact)) if kind_of(head).index else head.greedy
    backbone = model.base_model
    cache = DynamicCache()
    ids = input_ids
    step_input = input_ids
    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    for _ in range(max_new_tokens):
        hidden = backbone(input_ids=step_input, cache=cache, use_cache=True).last_hidden_state[:, -1]  # (B, d)
        nxt = head.sample(hidden, temperature, top_k, top_p, generator) if do_sample else greedy(hidden)
        if eos_token_id is not None:
            nxt = torch.where(done, eos_token_id, nxt)
            done |= nxt == eos_token_id
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        step_input = nxt[:, None]
        if eos_token_id is not None and bool(done.all()):
            break
    return ids


def generate_text(
    folder: str | Path,
    prompt: str,
    max_new_tokens: int = 48,
    temperature: float = 1.0,
    top_k=None,
    top_p=None,
    do_sample: bool = False,
    seed: int = 0,
    exact: bool = True,
) -> str:
    """Prompt in, continuation out, through ``generate`` (the compact path)."""
    folder = Path(folder)
    model = load_pretrained(folder)
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    ids = torch.tensor([tok.encode(prompt).ids])
    eos = model.config.eos_token_id if isinstance(model.config.eos_token_id, int) else None
    g = torch.Generator().manual_seed(seed)
    out = generate(model, ids, max_new_tokens, temperature, top_k, top_p, do_sample, g, eos, exact)
    return tok.decode(out[0].tolist())

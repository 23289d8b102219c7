"""Prompt in, continuation out: ``vqlogits generate`` on a model folder."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer

from .folder import load_pretrained
from .generate import generate


def end_ids(model, tok: Tokenizer) -> list[int]:
    """The ids that end a continuation: the config's end-of-sequence id(s), and an end-of-turn
    token where the vocabulary has one (Gemma's ``<end_of_turn>``)."""
    ids = model.config.eos_token_id
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    for name in ("<end_of_turn>", "<|im_end|>", "<|eot_id|>"):
        if (i := tok.token_to_id(name)) is not None and i not in ids:
            ids.append(i)
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
    verify: bool | None = None,
    stats: dict | None = None,
    dtype: str = "float32",
) -> str:
    """Prompt in, continuation out, through ``generate`` (the compact or verified path), the model
    cast to ``dtype`` (float32 or bfloat16: backbone and head)."""
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {dtype!r}")
    folder = Path(folder)
    model = load_pretrained(folder).to(getattr(torch, dtype))
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    ids = torch.tensor([tok.encode(prompt).ids])
    g = torch.Generator().manual_seed(seed)
    out = generate(
        model,
        ids,
        max_new_tokens,
        temperature,
        top_k,
        top_p,
        do_sample,
        g,
        end_ids(model, tok) or None,
        verify,
        stats=stats,
    )
    return tok.decode(out[0].tolist())

"""Text from a trained run (``vqlogits generate RUN PROMPT``): its own tokenizer and head."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer

from ..data.corpora import tokenize_corpus
from ..files import USER_CACHE
from .experiments import load_model


def run_tokenizer(run_dir: str | Path, cache: str | Path = USER_CACHE) -> Tokenizer:
    """The run's tokenizer: the copy training saved beside it, else the token cache's."""
    path = Path(run_dir) / "tokenizer.json"
    if path.exists():
        return Tokenizer.from_file(str(path))
    _, cfg = load_model(run_dir)
    return tokenize_corpus(cfg.corpus, cfg.tokenizer, cfg.cache or cache, splits=())[1]


def generate_from_run(
    run_dir: str | Path,
    prompt: str,
    max_new_tokens: int = 48,
    do_sample: bool = False,
    seed: int = 0,
    cache: str | Path = USER_CACHE,
    **sampling,
) -> str:
    """Prompt in, continuation out: ``GPT.generate`` with the run's model (greedy, or sampled with
    temperature / top_k / top_p), at most its context length in all."""
    model, _ = load_model(run_dir)
    tok = run_tokenizer(run_dir, cache)
    ids = torch.tensor([tok.encode(prompt).ids])
    if ids.shape[1] == 0:
        raise ValueError(f"prompt {prompt!r} has no tokens")
    room = model.cfg.block_size - ids.shape[1]
    if room < 1:
        raise ValueError(f"the prompt has {ids.shape[1]} tokens; this run's context holds {model.cfg.block_size}")
    out = model.generate(ids, min(max_new_tokens, room), do_sample, torch.Generator().manual_seed(seed), **sampling)
    return tok.decode(out[0].tolist())

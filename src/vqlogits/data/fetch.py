"""``vqlogits fetch``: the embedded data, corpora and models, fetched now rather than on first use."""

from __future__ import annotations

from pathlib import Path

from ..files import USER_CACHE
from .devdocs import build_devdocs
from .embedded import gemma3_gguf, pydocs_root, smollm2_gguf
from .tokenizer import smollm2_tokenizer_file


def _smollm2(cache: str | Path) -> Path:
    """SmolLM2's GGUF, and its tokenizer converted now: training with it then needs no transformers."""
    smollm2_tokenizer_file(cache)
    return smollm2_gguf(cache)


EMBEDDED = {"pydocs": pydocs_root, "devdocs": build_devdocs, "smollm2": _smollm2, "gemma3": gemma3_gguf}


def fetch(names: list[str], cache: str | Path = USER_CACHE) -> dict[str, str]:
    """Fetch the named embedded data (``EMBEDDED``); returns where each lies."""
    unknown = [n for n in names if n not in EMBEDDED]
    if unknown:
        raise ValueError(f"unknown embedded data {unknown}; choose from {sorted(EMBEDDED)}")
    return {n: str(EMBEDDED[n](cache)) for n in names}

"""Hugging Face integration: compress, accelerate, calibrate and decode causal LMs. Outside the core.

One file per job: ``load`` (HF folders, GGUF, SmolLM2), ``folder`` (the vqlogits model folder),
``build`` and ``compress`` (heads from a pretrained head's rows), ``accelerate`` (an index over
them), ``calibrate``, ``training`` (the O(K) loss under HF), ``generate``, ``evaluate``, ``report``.
"""

from . import _quiet  # noqa: F401  (first: torchao's import lines silenced before transformers imports it)
from .compress import compress
from .evaluate import evaluate_pretrained
from .folder import load_pretrained, save_pretrained
from .generate import generate, generate_text
from .load import SUPPORTED, load_causal_lm
from .training import patch

__all__ = [
    "SUPPORTED",
    "compress",
    "evaluate_pretrained",
    "generate",
    "generate_text",
    "load_causal_lm",
    "load_pretrained",
    "patch",
    "save_pretrained",
]

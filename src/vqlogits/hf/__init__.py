"""Hugging Face integration: compress a causal LM's head with VQ-Logits. Outside the core."""

from .pretrained import (
    SUPPORTED,
    compress,
    evaluate_pretrained,
    generate,
    generate_text,
    load_causal_lm,
    load_pretrained,
    save_pretrained,
)
from .training import patch

__all__ = ["SUPPORTED", "compress", "evaluate_pretrained", "generate", "generate_text", "load_causal_lm", "load_pretrained", "patch", "save_pretrained"]

"""vqlogits: vector-quantized logits (VQ-Logits, arXiv 2505.10202) with exact O(K) loss and sampling."""

import sys

from . import functional
from .cluster import KMeansResult, kmeans
from .heads import AdaptiveHead, DenseHead, LowRankHead, VQLogitsHead, build_head

__version__ = "0.1.0"

if "transformers" in sys.modules:  # already paid for: let AutoModelForCausalLM know vqlogits folders now
    from .hf import folder as _folder  # noqa: F401


def __getattr__(name):
    # The HF integration stays out of the core import (no transformers at `import vqlogits`).
    if name == "load_pretrained":
        from .hf.folder import load_pretrained

        return load_pretrained
    raise AttributeError(f"module 'vqlogits' has no attribute {name!r}")


__all__ = [
    "AdaptiveHead",
    "DenseHead",
    "KMeansResult",
    "LowRankHead",
    "VQLogitsHead",
    "build_head",
    "functional",
    "kmeans",
    "load_pretrained",
    "__version__",
]

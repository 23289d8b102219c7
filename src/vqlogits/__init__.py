"""vqlogits: vector-quantized logits (VQ-Logits, arXiv 2505.10202) with exact O(K) loss and sampling."""

from . import functional
from .heads import AdaptiveHead, DenseHead, LowRankHead, VQLogitsHead, build_head
from .cluster import KMeansResult, kmeans

__version__ = "0.1.0"

__all__ = [
    "AdaptiveHead",
    "DenseHead",
    "KMeansResult",
    "LowRankHead",
    "VQLogitsHead",
    "build_head",
    "functional",
    "kmeans",
    "__version__",
]

"""vqlogits: vector-quantized logits (VQ-Logits, arXiv 2505.10202) with exact O(K) loss and sampling."""

from . import functional
from .heads import DenseHead, VQLogitsHead
from .cluster import KMeansResult, kmeans

__version__ = "0.1.0"

__all__ = ["DenseHead", "KMeansResult", "VQLogitsHead", "functional", "kmeans", "__version__"]

"""Output heads. Each file holds one head type; all share forward / loss / greedy / sample."""

from .dense import DenseHead
from .vq import VQLogitsHead

__all__ = ["DenseHead", "VQLogitsHead"]

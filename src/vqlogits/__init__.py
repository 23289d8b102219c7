"""vqlogits: vector-quantized logits (VQ-Logits, arXiv 2505.10202) with exact O(K) loss and sampling."""

import importlib.abc
import importlib.util
import sys

from . import functional
from .cluster import KMeansResult, kmeans
from .heads import AdaptiveHead, DenseHead, LowRankHead, VQLogitsHead, build_head

__version__ = "0.1.0"


class _RegisterWithTransformers(importlib.abc.MetaPathFinder):
    """Registers the ``vqlogits`` model type with transformers as soon as transformers is imported,
    so ``AutoModelForCausalLM.from_pretrained(folder)`` knows vqlogits folders whichever of the two
    packages is imported first, and ``import vqlogits`` alone never imports transformers."""

    def find_spec(self, name, path=None, target=None):
        if name != "transformers":
            return None
        sys.meta_path.remove(self)  # once; the real finders find it
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            run = spec.loader.exec_module

            def exec_module(module):
                run(module)
                _register()

            spec.loader.exec_module = exec_module
        return spec


def _register() -> None:
    from .hf import folder  # noqa: F401  (its import registers the type)


if "transformers" in sys.modules:  # already paid for: register now
    _register()
elif not any(isinstance(f, _RegisterWithTransformers) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterWithTransformers())


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

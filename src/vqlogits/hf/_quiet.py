"""Imported first by the package: transformers imports its torchao quantizer whenever torchao is
installed, and that import prints lines about CUDA extensions a CPU build lacks; here it runs
silenced, once."""

from ..quant import silenced

with silenced():
    try:
        import transformers.quantizers.quantizer_torchao  # noqa: F401
    except ImportError:  # torchao is optional
        pass

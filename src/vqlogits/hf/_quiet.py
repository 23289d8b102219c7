"""Imported first by the package: torchao, which transformers imports whenever it is installed, is
imported here with its lines about missing CUDA extensions silenced."""

from ..quant import preload_torchao

preload_torchao()

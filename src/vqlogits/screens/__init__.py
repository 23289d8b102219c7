"""Certified low-precision screens for the exact argmax: a cheap pass over every row with a proven
rounding bound, then fp64 for the few tokens the bound cannot exclude. ``bf16`` (any fp32 rows),
``int4`` (4-bit rows in PyTorch's int4 kernel layout) and ``int8`` (any quantized rows, requantized
per row for PyTorch's int8 kernel)."""

"""The exact argmax of ``h @ W.T`` for any fp32 rows, screened by PyTorch's int8 weight-only CPU kernel.

``Int8Screen(chunk_rows, exact_rows, V, d).argmax(h)`` equals
``(h.double() @ W.double().T).argmax(-1)`` for the fp32 rows W that ``chunk_rows(start, end)`` and
``exact_rows(ids)`` return (a quantized head's dequantized rows, of any width and group size),
while reading a per-row symmetric int8 copy: ``w~ = s' c``, ``s' = bf16(max|w| / 127)``,
``c = round(w / s')`` in [-127, 127]. One call of ``torch._weight_int8pack_mm`` (PyTorch's int8
weight-only CPU kernel, which Inductor lowers int8 weight-only linears to: bf16 activations, the
int8 codes times ``x~`` summed in fp32, times ``s'`` in fp32, one rounding to bf16), then fp64
for the few tokens its bound cannot exclude.

The bound is ``screen.BF16Screen``'s with ``w~ = s' c`` in place of ``bf16(w)``. ``w~`` is exact
in fp32 (8 significant bits times 8), so are the kernel's products ``x~_i c_i``; the fp32 sum of
d of them is within ``gamma_d |x~| |c|``, and the scaling adds one fp32 rounding:
``|fl(s' A) - x~ . w~| <= gamma_{d+1} |x~| |w~|``, inside the ``gamma_2d |x~| |w~|`` term. The
requantization error ``|w - w~|`` (half a step, ``max|w| / 254``, per entry at most) enters as
``e``, computed exactly, so the screen admits more candidates than the bf16 one but reads a
quarter of the fp32 bytes. Subnormal flushes of inputs and of the unscaled partial sums each cost at most
``d TINY max|w~|`` (``s' <= max|w~|``): the screen passes twice ``max|w~|`` to the flush term.
A test checks the bound at decoding's shapes, and a case shows that half the bound gives a wrong
answer. The kernel gives wrong results (or crashes) for widths that are not a multiple of 16;
``available`` refuses them.
"""

from __future__ import annotations

import torch

from .bf16 import BF16Screen

_ROWS = 8192  # rows requantized at a time
_MIN_SCALE = 2.0**-100  # keeps s' a normal bf16 number for all-zero rows


def available(d: int, device: torch.device | str = "cpu") -> bool:
    """Whether the kernel can screen rows of width ``d`` on ``device``."""
    return d % 16 == 0 and torch.device(device).type == "cpu" and hasattr(torch, "_weight_int8pack_mm")


class Int8Screen(BF16Screen):
    """``chunk_rows(start, end)``: the fp32 rows ``W[start:end]`` (read once, to build the int8
    copy); ``exact_rows(ids)``: the fp32 rows ``W[ids]`` the exact pass reads. The screen keeps
    only the int8 codes (V d bytes) and bf16 scales."""

    NAME = "int8"

    def __init__(self, chunk_rows, exact_rows, vocab_size: int, d: int):
        if not available(d):
            raise ValueError(f"d must be a multiple of 16 for the int8 kernel, got {d!r}")
        self._rows_of = exact_rows
        codes, scales, w_norm, e_norm, low_norm, max_abs = [], [], [], [], [], 0.0
        for start in range(0, vocab_size, _ROWS):
            w = chunk_rows(start, min(start + _ROWS, vocab_size)).double()  # (n, d), fp32 values
            s = (w.abs().amax(-1) / 127).clamp(min=_MIN_SCALE).bfloat16()  # (n,)
            c = torch.round(w / s.double()[:, None]).clamp(-127, 127)
            low = c * s.double()[:, None]  # w~, exact
            codes.append(c.to(torch.int8))
            scales.append(s)
            w_norm.append(w.norm(dim=-1))
            e_norm.append((w - low).norm(dim=-1))
            low_norm.append(low.norm(dim=-1))
            max_abs = max(max_abs, float(low.abs().max()))
        self.codes, self.scales = torch.cat(codes), torch.cat(scales)  # (V, d) int8, (V,) bf16
        self._set_norms(*(torch.cat(t).float() * (1 + 2**-20) for t in (w_norm, e_norm, low_norm)), 2 * max_abs)

    def _screen(self, x_low: torch.Tensor) -> torch.Tensor:
        return torch._weight_int8pack_mm(x_low.contiguous(), self.codes, self.scales)  # (n, V) bf16

    def _rows(self, ids: torch.Tensor) -> torch.Tensor:
        return self._rows_of(ids)

"""The exact argmax of ``h @ W.T`` for a head stored as 4-bit groups, screened by PyTorch's int4 CPU kernel.

``Int4Screen(q, scale, offset, group_size, rows).argmax(h)`` equals
``(h.double() @ W.double().T).argmax(-1)`` for ``W = q * scale + offset`` per group (the rows
``rows(ids)`` returns, fp32) while reading the weights as 4-bit integers: one call of
``torch._weight_int4pack_mm_for_cpu`` (the kernel torchao's int4 CPU layout runs; bf16
activations, fp32 accumulation, a bf16 result), then fp64 for the few tokens its bound cannot
exclude. The kernel wants ``w = (q - 8) s' + z'`` with bf16 ``s'`` and ``z'``, so
``s' = bf16(s)``, ``z' = bf16(m + 8 s)``.

The bound is ``screen.BF16Screen``'s, with ``w~`` the kernel's dequantized weights in place of
``bf16(w)``: ``w^ = (q - 8) s' + z'`` is exact in fp64, the kernel forms it in fp32 (at most two
roundings: ``|w~ - w^| <= 2 u_fp32 (|q - 8| |s'| + |z'|)``, added to ``|w - w~|`` and ``|w~|``),
and the rest of the argument is unchanged. The assumption (fp32 dequantization, fp32
accumulation, one rounding to bf16) is checked by tests, and a case shows that half the bound
gives a wrong answer.
"""

from __future__ import annotations

import torch

from .. import quant
from .bf16 import U_FP32, BF16Screen

GROUP_SIZES = (32, 64, 128, 256)  # what the kernel accepts
_ROWS = 8192  # rows dequantized at a time while the norms are computed


def available(bits: int, group_size: int, d: int, device: torch.device | str = "cpu") -> bool:
    """Whether the kernel can screen a head of ``bits``-bit groups of ``group_size`` over ``d``."""
    return (
        bits == 4
        and group_size in GROUP_SIZES
        and d % group_size == 0
        and torch.device(device).type == "cpu"
        and hasattr(torch, "_weight_int4pack_mm_for_cpu")
    )


class Int4Screen(BF16Screen):
    """Codes ``q`` (V, d) in [0, 15], fp32 ``scale`` and ``offset`` (V, G), and ``rows``: ids ->
    the fp32 rows ``quant.dequantize(q, scale, offset)[ids]`` that the exact pass reads (kept
    as a function, so the screen holds no unpacked copy)."""

    NAME = "int4"

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, group_size: int, rows):
        V, d = q.shape
        if not available(4, group_size, d):
            raise ValueError(f"group_size must be one of {GROUP_SIZES} and divide d={d}, got {group_size!r}")
        self.group_size, self._rows_of = group_size, rows
        pad = -V % 16  # the kernel packs rows in blocks of 16: zero rows, cut from its output
        s_low = scale.double().bfloat16()
        z_low = (offset.double() + 8 * scale.double()).bfloat16()
        self.packed = torch._convert_weight_to_int4pack_for_cpu(
            torch.cat([q.int(), torch.full((pad, d), 8, dtype=torch.int32)]), 1
        )  # (V + pad, d / 2) uint8
        pairs = torch.stack([s_low, z_low], -1)  # (V, G, 2)
        self.scales_zeros = torch.cat([pairs, pairs.new_zeros(pad, *pairs.shape[1:])]).transpose(0, 1).contiguous()
        w_norm, e_norm, low_norm, max_abs = [], [], [], 0.0
        for start in range(0, V, _ROWS):
            part = slice(start, start + _ROWS)
            n = q[part].shape[0]
            centred = (q[part].double() - 8).view(n, -1, group_size)
            s, z = s_low[part].double()[..., None], z_low[part].double()[..., None]
            exact_low = (centred * s + z).view(n, d)  # w^, exact
            kernel_rounding = 2 * U_FP32 * (centred.abs() * s.abs() + z.abs()).view(n, d).norm(dim=-1)
            w = quant.dequantize(q[part], scale[part], offset[part], group_size).double()  # what rows() returns
            w_norm.append(w.norm(dim=-1))
            e_norm.append((w - exact_low).norm(dim=-1) + kernel_rounding)
            low_norm.append(exact_low.norm(dim=-1) + kernel_rounding)
            max_abs = max(max_abs, float(exact_low.abs().max()) * (1 + 4 * U_FP32))
        self._set_norms(*(torch.cat(t).float() * (1 + 2**-20) for t in (w_norm, e_norm, low_norm)), max_abs)

    def _screen(self, x_low: torch.Tensor) -> torch.Tensor:
        out = torch._weight_int4pack_mm_for_cpu(x_low.contiguous(), self.packed, self.group_size, self.scales_zeros)
        return out[:, : self.vocab_size]  # (n, V): the padding rows cut

    def _rows(self, ids: torch.Tensor) -> torch.Tensor:
        return self._rows_of(ids)

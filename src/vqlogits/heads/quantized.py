"""A pretrained head whose rows are stored quantized: ``bits`` per weight in groups (``quant``).

The logits are ``h @ W_hat.T (+ b)`` with ``W_hat`` the dequantized rows; every path (forward,
loss, greedy, sampling) computes with them in fp32, so the head is exact for its own weights:
``packed`` holds the integers bit-packed (uint8), ``scale`` and ``offset`` the fp16 numbers of
each group, in memory and on disk. Greedy decoding on the CPU is the exact fp64 argmax (the bias
added in fp64) through a certified screen: at 4 bits, in groups the int4 kernel takes, that kernel
(``screen_int4``); at any other width or group size, PyTorch's int8 kernel on a per-row int8
copy of the dequantized rows (``screen_int8``). They are 3.8x and 1.7x cheaper than the fp32
GEMV on SmolLM2's head and hold a second copy of the codes while decoding (V d / 2 or V d
bytes). Otherwise (a width not a multiple of 16, another device) it dequantizes the rows in chunks,
slower than an fp32 GEMV (bench/quantized.py measures them). Calibration trains ``scale``,
``offset`` and the bias, the integers stay.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from .. import quant
from .._checks import check_dims, check_hidden, check_state_shapes
from ..screens import int4 as screen_int4
from ..screens import int8 as screen_int8
from .base import FullLogitsMixin

_CHUNK = 8192  # rows dequantized at a time when only the argmax is needed


class QuantizedHead(FullLogitsMixin, nn.Module):
    """``logits = h @ dequantize(packed, scale, offset).T (+ bias)``, rows quantized group-wise.

    Stored (``state_dict``): ``packed`` (V, bytes) uint8, ``scale`` and ``offset`` (V, G) fp16, the
    bias. Trained (calibration): ``gain`` and ``shift`` (V, G), zero at load, with
    scale = scale0 * exp(gain) and offset = offset0 + scale0 * shift: moves relative to a group's
    step, so one learning rate suits every group; they fold back into fp16 when saved."""

    def __init__(
        self,
        d_model: int,
        vocab_size: int,
        bits: int = 4,
        group_size: int = 32,
        bias: bool = False,
        *,
        validate: bool = True,
    ):
        super().__init__()
        check_dims(d_model, vocab_size)
        quant.check(bits, group_size, d_model)
        self.d_model, self.vocab_size, self.validate = d_model, vocab_size, validate
        self.bits, self.group_size = bits, group_size
        groups = d_model // group_size
        self.register_buffer("packed", torch.zeros(vocab_size, -(-d_model * bits // 8), dtype=torch.uint8))
        self.register_buffer("scale0", torch.ones(vocab_size, groups, dtype=torch.float16))
        self.register_buffer("offset0", torch.zeros(vocab_size, groups, dtype=torch.float16))
        self.gain = nn.Parameter(torch.zeros(vocab_size, groups))
        self.shift = nn.Parameter(torch.zeros(vocab_size, groups))
        self.bias = nn.Parameter(torch.zeros(vocab_size)) if bias else None
        self._screen: tuple | None = None  # (the parts' versions, Int4Screen or Int8Screen)
        self._held: tuple | None = None  # (the parts' versions, the dequantized rows) inside rows_held

    def _version(self) -> tuple:
        """Changes whenever a code, scale or offset does (storage and in-place version counters)."""
        parts = (self.packed, self.scale0, self.offset0, self.gain, self.shift)
        return tuple((t.data_ptr(), t._version) for t in parts)

    @classmethod
    def from_weight(
        cls, weight: torch.Tensor, bits: int = 4, group_size: int = 32, method: str = "hqq", bias: bool = False
    ) -> "QuantizedHead":
        """Quantize a (V, d) output matrix (``quant.quantize``)."""
        V, d = weight.shape
        head = cls(d, V, bits, group_size, bias)
        q, scale, offset = quant.quantize(weight, bits, group_size, method)
        with torch.no_grad():
            head.packed.copy_(quant.pack(q, bits))
            head.scale0.copy_(scale)
            head.offset0.copy_(offset)
        return head

    # -- what the registry asks of a kind (heads/__init__.py) --------------------------------
    ROW_OPTIONS = ("bits", "group_size", "method")

    def row_inputs(self, h: torch.Tensor) -> dict:
        """None: gain and shift scale stored rows, so their steps are relative already."""
        return {}

    def config(self) -> dict:
        return {"bits": self.bits, "group_size": self.group_size, "bias": self.bias is not None}

    @classmethod
    def from_config(cls, config: dict, d_model: int, vocab_size: int) -> "QuantizedHead":
        return cls(d_model, vocab_size, config["bits"], config["group_size"], config["bias"])

    @classmethod
    def rows_sizes(cls, options: dict) -> dict:
        if options["method"] not in quant.METHODS:
            raise ValueError(f"method must be one of {quant.METHODS}, got {options['method']!r}")
        return {k: options[k] for k in ("bits", "group_size", "method")}

    @classmethod
    def from_rows(cls, dense: torch.Tensor, sizes: dict, frequent=None, seed: int = 0, progress: bool = True):
        """The rows themselves, ``bits`` per weight in groups of ``group_size`` (``method`` hqq or rtn)."""
        quant.check(sizes["bits"], sizes["group_size"], dense.shape[1])
        return cls.from_weight(dense.float(), sizes["bits"], sizes["group_size"], sizes.get("method", "hqq"))

    def _groups(self, index: slice | torch.Tensor = slice(None)) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, offset) of rows ``index`` in fp32, with the trained moves."""
        s0 = self.scale0[index].float()
        return s0 * torch.exp(self.gain[index]), self.offset0[index].float() + s0 * self.shift[index]

    def rows(self, start: int = 0, stop: int | None = None, *, ids: torch.Tensor | None = None) -> torch.Tensor:
        """The dequantized rows ``start:stop`` (or ``ids``), fp32 (differentiable in gain and shift)."""
        index = slice(start, stop) if ids is None else ids
        q = quant.unpack(self.packed[index], self.bits, self.d_model)
        return quant.dequantize(q, *self._groups(index), self.group_size)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized (V, d) matrix."""
        return self.rows()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        check_hidden(h, self.d_model)
        held = self._held is not None and not torch.is_grad_enabled() and self._held[0] == self._version()
        return F.linear(h.float(), self._held[1] if held else self.rows(), self.bias)

    @contextlib.contextmanager
    def rows_held(self):
        """Within it, forward without autograd multiplies by one dequantized copy of the rows
        instead of dequantizing them at every call (the same numbers): for evaluating a fixed head
        over many batches. The copy, V x d fp32, lives only for the block; a changed scale, offset
        or code is dequantized afresh."""
        with torch.no_grad():
            self._held = (self._version(), self.rows())
        try:
            yield self
        finally:
            self._held = None

    def loss(self, h, targets, ignore_index: int = -100, reduction: str = "mean") -> torch.Tensor:
        """``F.cross_entropy(h @ self.weight.T + b, targets)``, row-chunked (``chunked_loss``)."""
        return self.chunked_loss(h, targets, ignore_index, reduction)

    @torch.no_grad()
    def greedy(self, h: torch.Tensor) -> torch.Tensor:
        """``self(h).argmax(-1)`` (ties to the smallest id). On the CPU: the exact fp64 argmax
        through ``_greedy_screen`` (PyTorch's int4 or int8 kernel, a proven bound); otherwise the
        fp32 argmax, ``_CHUNK`` rows dequantized at a time."""
        return self.greedy_stats(h)[0]

    @torch.no_grad()
    def greedy_stats(self, h: torch.Tensor):
        """(``greedy(h)``, stats): ``rows``, ``screened_rows`` (rows x tokens the kernel read) and
        ``verified_rows`` (tokens read in fp64; 0 without the screen), as ``IndexedHead.greedy_stats``'."""
        check_hidden(h, self.d_model)
        flat = h.reshape(-1, self.d_model).float()
        stats = {"rows": flat.shape[0], "screened_rows": 0, "verified_rows": 0}
        if screen_int8.available(self.d_model, h.device):
            bias = None if self.bias is None else self.bias.detach().float()
            ids, screened = self._greedy_screen().argmax(flat, bias=bias)
            stats.update(screened_rows=screened["screened"], verified_rows=screened["candidates"])
            return ids.reshape(h.shape[:-1]), stats
        best = torch.full((flat.shape[0],), float("-inf"))
        ids = torch.zeros(flat.shape[0], dtype=torch.long)
        for start in range(0, self.vocab_size, _CHUNK):
            logits = flat @ self.rows(start, start + _CHUNK).T
            if self.bias is not None:
                logits += self.bias[start : start + _CHUNK]
            value, where = logits.max(-1)
            better = value > best  # strict: an earlier chunk's equal logit keeps the smaller id
            best, ids = torch.where(better, value, best), torch.where(better, where + start, ids)
        return ids.reshape(h.shape[:-1]), stats

    def _greedy_screen(self) -> screen_int4.Int4Screen | screen_int8.Int8Screen:
        """Built on first use, rebuilt when calibration has moved the scales or offsets: the int4
        kernel's layout of the codes where it applies (V d / 2 bytes plus bf16 scales and zeros),
        else a per-row int8 copy of the rows (V d bytes plus bf16 scales)."""
        version = self._version()
        if self._screen is None or self._screen[0] != version:
            if screen_int4.available(self.bits, self.group_size, self.d_model):
                q = quant.unpack(self.packed, self.bits, self.d_model)
                scale, offset = (t.detach() for t in self._groups())
                screen = screen_int4.Int4Screen(q, scale, offset, self.group_size, self._exact_rows)
            else:
                chunk = lambda start, stop: self.rows(start, stop).detach()  # noqa: E731
                screen = screen_int8.Int8Screen(chunk, self._exact_rows, self.vocab_size, self.d_model)
            self._screen = (version, screen)
        return self._screen[1]

    def _exact_rows(self, ids: torch.Tensor) -> torch.Tensor:
        return self.rows(ids=ids).detach()

    def loss_flops(self, targets: torch.Tensor) -> int:
        return 6 * targets.numel() * self.vocab_size * self.d_model

    def stored_bytes(self) -> int:
        """Packed integers, fp16 scales and offsets, and the bias (fp32)."""
        extra = 0 if self.bias is None else 4 * self.vocab_size
        return quant.stored_bytes(self.vocab_size, self.d_model, self.bits, self.group_size) + extra

    def decode_cost(self) -> dict:
        """One token: 2 V d FLOPs of the logits; the bytes read are the stored ones."""
        return {"flops": 2 * self.vocab_size * self.d_model, "bytes": self.stored_bytes()}

    # ---- what is stored: packed integers, fp16 scales and offsets (the trained moves folded in) ----

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        scale, offset = self._groups()
        destination[prefix + "packed"] = self.packed
        destination[prefix + "scale"], destination[prefix + "offset"] = scale.detach().half(), offset.detach().half()
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
        expected = {"packed": self.packed.shape, "scale": self.scale0.shape, "offset": self.offset0.shape}
        if self.bias is not None:
            expected["bias"] = (self.vocab_size,)
        check_state_shapes(state_dict, prefix, expected)
        with torch.no_grad():
            for name, target in (
                ("packed", self.packed),
                ("scale", self.scale0),
                ("offset", self.offset0),
                ("bias", self.bias),
            ):
                if target is None:
                    continue
                if prefix + name in state_dict:
                    target.copy_(state_dict[prefix + name])
                elif strict:
                    missing.append(prefix + name)
            self.gain.zero_()
            self.shift.zero_()

    def extra_repr(self) -> str:
        sizes = f"bits={self.bits}, group_size={self.group_size}, bias={self.bias is not None}"
        return f"d_model={self.d_model}, vocab_size={self.vocab_size}, {sizes}"

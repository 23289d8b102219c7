"""Group-wise weight-only quantization of a matrix's rows, and its bit packing.

A row is cut into groups of ``group_size`` columns; group j of row v stores integers
``q in [0, 2^bits - 1]`` and two fp16 numbers, a scale s and an offset m (the format of GGUF's
Q4_1), and stands for ``w_hat = q * s + m``. The integers are packed ``bits`` to a byte stream per
row (``pack`` / ``unpack``, exact for 1 to 8 bits).

Rounding: ``rtn``, round to nearest on the group's min-max grid: with s the range over 2^bits - 1
rounded up to fp16 and m the minimum rounded to fp16, every entry is within max(s / 2, |m - min|)
of its weight (the second term only when fp16 moved the minimum by more than half a step), or
``hqq``, torchao's half-quadratic optimisation of s and m for the same grid (lower error at low bit
widths, no such bound; both measured in tests/test_quant.py).
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings

import torch

METHODS = ("hqq", "rtn")


def check(bits: int, group_size: int, d: int) -> None:
    if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= 8:
        raise ValueError(f"bits must be an int in [1, 8], got {bits!r}")
    if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    if d % group_size:
        raise ValueError(f"group_size must be a positive int that divides the row length {d}, got {group_size!r}")


PACK_ROWS = 8192  # rows packed or unpacked at a time: the bit streams are 8-32x the integers' bytes


def pack(q: torch.Tensor, bits: int) -> torch.Tensor:
    """(n, d) integers in [0, 2^bits) -> (n, ceil(d * bits / 8)) uint8, little-endian bit order."""
    if q.shape[0] > PACK_ROWS:
        return torch.cat([pack(q[s : s + PACK_ROWS], bits) for s in range(0, q.shape[0], PACK_ROWS)])
    n, d = q.shape
    if 8 % bits == 0 and d * bits % 8 == 0:  # whole values per byte: shifts, no bit stream
        per = 8 // bits
        shifts = torch.arange(0, 8, bits, dtype=torch.int32, device=q.device)
        return (q.to(torch.int32).view(n, d // per, per) << shifts).sum(-1).to(torch.uint8)
    shifts = torch.arange(bits, device=q.device)
    stream = ((q.to(torch.int32)[..., None] >> shifts) & 1).reshape(n, d * bits).to(torch.uint8)  # (n, d * bits)
    stream = torch.nn.functional.pad(stream, (0, -(d * bits) % 8))
    return (stream.view(n, -1, 8) << torch.arange(8, dtype=torch.uint8, device=q.device)).sum(-1).to(torch.uint8)


def unpack(packed: torch.Tensor, bits: int, d: int) -> torch.Tensor:
    """The inverse of ``pack``: (n, bytes) uint8 -> (n, d) uint8 integers."""
    if packed.shape[0] > PACK_ROWS:
        return torch.cat([unpack(packed[s : s + PACK_ROWS], bits, d) for s in range(0, packed.shape[0], PACK_ROWS)])
    n = packed.shape[0]
    if 8 % bits == 0:  # whole values per byte: shifts, no bit stream
        shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=packed.device)
        return ((packed[..., None] >> shifts) & (2**bits - 1)).reshape(n, -1)[:, :d]
    if d % 8 == 0:  # 8 values fill `bits` whole bytes: read each such word at once (bits < 8 here)
        words = (packed.view(n, d // 8, bits).long() << (8 * torch.arange(bits, device=packed.device))).sum(-1)
        values = (words[..., None] >> (bits * torch.arange(8, device=packed.device))) & (2**bits - 1)  # (n, d/8, 8)
        return values.reshape(n, d).to(torch.uint8)
    stream = (packed[..., None] >> torch.arange(8, dtype=torch.uint8, device=packed.device)) & 1  # (n, bytes, 8)
    stream = stream.reshape(n, -1)[:, : d * bits].reshape(n, d, bits).to(torch.int32)
    return (stream << torch.arange(bits, device=packed.device)).sum(-1).to(torch.uint8)


def dequantize(q: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, group_size: int) -> torch.Tensor:
    """(n, d) integers, (n, G) scales and offsets -> (n, d) float32 ``q * s + m`` per group."""
    n, d = q.shape
    w = q.view(n, d // group_size, group_size).float() * scale.float()[..., None] + offset.float()[..., None]
    return w.view(n, d)


Q8_GROUP = 32  # GGUF's Q8_0: per 32 weights, an fp16 scale d and integers in [-127, 127]


def lossless_q8(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(codes int8 (..., d), scales fp16 (..., d / 32)) with ``codes * scales == t`` exactly in fp32,
    or None when ``t`` is not of that form: a Q8_0 matrix dequantized to fp32 (the GGUF heads of
    SmolLM2 and Gemma-3) is stored back in 8.5 bits a weight, losslessly. llama.cpp's Q8_0 takes
    q = round(x 127 / max|x|) and stores d = fp16(max|x| / 127), so the largest |q| is 127 and
    d = max|w| / 127 exactly; every group is checked, ``PACK_ROWS`` rows at a time."""
    if t.dtype != torch.float32 or t.dim() < 2 or t.shape[-1] % Q8_GROUP:
        return None
    flat = t.reshape(-1, t.shape[-1] // Q8_GROUP, Q8_GROUP)
    codes, scales = torch.empty(flat.shape, dtype=torch.int8), torch.empty(flat.shape[:2], dtype=torch.float16)
    for start in range(0, flat.shape[0], PACK_ROWS):
        w = flat[start : start + PACK_ROWS]
        d = (w.abs().amax(-1) / 127).to(torch.float16)  # exact when w is Q8_0, checked below
        q = torch.round(w / d.float().clamp_min(torch.finfo(torch.float32).tiny)[..., None])
        if not (q.abs() <= 127).all() or not torch.equal(q * d.float()[..., None], w):
            return None
        codes[start : start + PACK_ROWS], scales[start : start + PACK_ROWS] = q.to(torch.int8), d
    return codes.view(t.shape), scales.view(*t.shape[:-1], -1)


def from_q8(codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The inverse of ``lossless_q8``: fp32 ``codes * scales`` per group of 32."""
    w = codes.reshape(-1, codes.shape[-1] // Q8_GROUP, Q8_GROUP).float() * scales.float().reshape(
        -1, scales.shape[-1], 1
    )
    return w.view(codes.shape)


@contextlib.contextmanager
def silenced():
    """Output at the file-descriptor level, and warnings, dropped: torchao's import prints lines
    about CUDA extensions a CPU build lacks, from C++ and from torch's logging."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)


QUANTIZE_ROWS = 65536  # SmolLM2's 49,152 rows in one piece


def _round_up_fp16(x: torch.Tensor) -> torch.Tensor:
    half = x.half()
    return torch.where(half.float() < x, torch.nextafter(half, torch.tensor(float("inf"), dtype=torch.float16)), half)


@torch.no_grad()
def quantize(
    w: torch.Tensor, bits: int, group_size: int, method: str = "hqq"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(n, d) float -> (q (n, d) uint8, scale (n, G) fp16, offset (n, G) fp16). ``QUANTIZE_ROWS`` rows
    at a time: HQQ's solver holds about 75 bytes per weight (19.6 GB for Gemma-3-270M's head at once)."""
    n, d = w.shape
    check(bits, group_size, d)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if n > QUANTIZE_ROWS:
        parts = [quantize(w[s : s + QUANTIZE_ROWS], bits, group_size, method) for s in range(0, n, QUANTIZE_ROWS)]
        return tuple(torch.cat(p) for p in zip(*parts, strict=True))
    top = 2**bits - 1
    groups = w.float().reshape(n, d // group_size, group_size)
    if method == "hqq":
        with silenced():
            from torchao.quantization.quant_primitives import _choose_qparams_and_quantize_affine_hqq as hqq
        # torchao's convention: w = (q - zero) * scale, per group of each row.
        _, scale, zero, _ = hqq(
            w.float(),
            nbits=bits,
            group_size=group_size,
            axis=1,
            compute_dtype=torch.float32,
            device="cpu",
            raw_output=True,
        )
        scale = scale.reshape(n, -1).float()
        scale, offset = scale.half(), (-zero.reshape(n, -1).float() * scale).half()
    else:
        low = groups.amin(-1)
        scale = _round_up_fp16(((groups.amax(-1) - low) / top).clamp_min(torch.finfo(torch.float16).tiny))
        offset = low.half()
    # The integers nearest to each weight on the grid of the fp16 numbers that are stored.
    q = ((groups - offset.float()[..., None]) / scale.float()[..., None]).round().clamp(0, top)
    return q.reshape(n, d).to(torch.uint8), scale, offset


def stored_bytes(n: int, d: int, bits: int, group_size: int) -> int:
    """Bytes of an (n, d) matrix quantized this way: packed integers plus fp16 scales and offsets."""
    return n * (-(-d * bits // 8)) + n * (d // group_size) * 2 * 2

"""The exact argmax of ``h @ W.T`` through a certified bf16 screen.

``BF16Screen(W).argmax(h)`` equals ``(h.double() @ W.double().T).argmax(-1)`` (ties to the smallest
id, as ``argmax``) while reading W in bf16: one bf16 GEMM over the rows of ``h`` (on this CPU a
GEMM over 16 rows costs about one fp32 GEMV), then fp64 only for the tokens that the rounding bound
below cannot exclude (a handful per row).

The bound. For a row x (fp32) and a token row w (fp32), the screen computes
``S = bf16(A)``, ``A = sum_i x~_i w~_i`` accumulated in fp32, with ``x~ = bf16(x)``,
``w~ = bf16(w)``. Write ``r = x - x~`` and ``e = w - w~`` (both exact in fp32). Then

    x . w = x~ . w~ + x~ . e + r . w                                               (exact)
    |x~ . e| <= |x~| |e|,   |r . w| <= |r| |w|                                     (Cauchy-Schwarz)
    |A - x~ . w~| <= gamma_2d |x~| |w~|      (bf16 x bf16 products are exact in fp32; any order of
                                              at most 2d fp32 roundings, Higham's gamma_n = n u / (1 - n u))
    |S - A| <= u_bf16 / (1 - u_bf16) |S|     (round to nearest, u_bf16 = 2^-8)

plus ``tau = (d (max|x~| + max|w~| + 2) + 1) 2^-126`` for the kernel's flushing of subnormal inputs,
products, partial sums and output to zero. It assumes what the CPU's bf16 GEMMs (oneDNN's and
PyTorch's own) do: fp32 accumulation and one rounding to bf16 at the end; a test checks the bound
against fp64 at the shapes decoding uses. So ``|S - x . w| <= delta(x, w)``, the sum of these
terms. Every norm is computed in fp32 and the sum is inflated by 2^-10, far more than the rounding
of the bound's own arithmetic (a few units of 2^-24 each).

The argmax. With ``floor`` the exact (fp64) logit of the token the screen ranks first, the answer
a has ``x . w_a >= floor``, so ``S_a + delta_a >= floor``: every token with ``S_v + delta_v <
floor`` is excluded, and the rest (the candidates) are compared in fp64. Halving the bound breaks
this (a test shows it), so none of it is slack.

A bias b per row (a quantized head's, a VQ head's best bias per code) ranks ``P = fl(S + b)``
against ``x . w + b``: P is within 2^-24 |P| of S + b, so each delta gains 2^-22 |P| (that
rounding and the comparison's), the floor adds b in fp64, and the first pass bounds |S| and |P|
by one pass over |S| and the largest finite |b|.
"""

from __future__ import annotations

import torch

from ..kernels import first_argmax

U_BF16 = 2.0**-8
U_FP32 = 2.0**-24
TINY = 2.0**-126  # the smallest normal fp32 / bf16: the bf16 kernels flush anything smaller to zero
INFLATE = 1 + 2.0**-10
BLOCK = 4096  # columns a block: the scores' per-block maxima steer the threshold pass to a few blocks


def gamma(n: int, u: float = U_FP32) -> float:
    """Higham's gamma_n: |fl(sum of n terms) - exact| <= gamma_{n-1} sum |terms|, any order."""
    return n * u / (1 - n * u)


def argmax_smallest_id(values: torch.Tensor, ids: torch.Tensor, pad: int) -> torch.Tensor:
    """Per row, the smallest id among the maximal values: ``argmax`` semantics for permuted columns."""
    best, where = values.max(dim=-1)
    out = ids.expand_as(values).gather(1, where[:, None]).squeeze(1)
    tied = torch.nonzero((values == best[:, None]).sum(-1) > 1).squeeze(1)  # rare: resolve those rows by id
    if tied.numel():
        rows = values[tied]
        out[tied] = (
            torch.where(rows == best[tied, None], ids.expand(tied.numel(), -1) if ids.dim() == 1 else ids[tied], pad)
            .min(dim=-1)
            .values
        )
    return out


def _block_index(blocks: torch.Tensor, V: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Column ids (k, BLOCK) of the given blocks (k,), clamped into [0, V), and which are real."""
    ids = blocks[:, None] * BLOCK + torch.arange(BLOCK)
    return ids.clamp(max=V - 1), ids < V


def block_maxima(screen: torch.Tensor) -> torch.Tensor:
    """(n, V) -> (n, ceil(V / BLOCK)): each block of BLOCK columns' maximum, one pass, no copy."""
    n, V = screen.shape
    full = V // BLOCK
    parts = [screen.as_strided((n, full, BLOCK), (screen.stride(0), BLOCK, 1)).amax(-1)] if full else []
    if V % BLOCK:
        parts.append(screen[:, full * BLOCK :].amax(-1, keepdim=True))
    return torch.cat(parts, 1)


def first_top(screen: torch.Tensor, maxima: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's maximum and its first index, as ``screen.max(-1)``, reading one block a row."""
    top_s = maxima.max(-1).values
    block = first_argmax((maxima == top_s[:, None]).to(torch.uint8))  # the first block holding it
    ids, real = _block_index(block, screen.shape[1])
    scores = screen.gather(1, ids).masked_fill(~real, float("-inf"))
    return top_s, ids.gather(1, first_argmax(scores)[:, None]).squeeze(1)


def at_least(screen: torch.Tensor, maxima: torch.Tensor, below: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) of every score >= ``below`` of its row, reading only the blocks whose maximum
    reaches it."""
    rows, blocks = torch.nonzero(maxima >= below[:, None], as_tuple=True)
    ids, real = _block_index(blocks, screen.shape[1])
    k, j = torch.nonzero((screen[rows[:, None], ids] >= below[rows, None]) & real, as_tuple=True)
    return rows[k], ids[k, j]


class BF16Screen:
    """A (V, d) fp32 matrix W, with its bf16 copy and the per-row norms the bound needs. A bf16 W
    is its own copy (``e = 0``): the screen then certifies the argmax of the bf16 rows' exact logits.

    W itself is kept by reference (it is read in fp64 for the candidates only). Subclasses screen
    with another bf16-output kernel (``screens.int4.Int4Screen``): they set the norms of their own
    low-precision copy through ``_set_norms`` and override ``_screen`` and ``_rows``."""

    NAME = "bf16"

    def __init__(self, weight: torch.Tensor):
        if weight.dim() != 2 or weight.dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(
                f"weight must be a 2-D fp32 or bf16 tensor (V, d), got {tuple(weight.shape)} {weight.dtype}"
            )
        self.weight = weight
        self.low = weight if weight.dtype == torch.bfloat16 else weight.bfloat16()  # (V, d); bf16 rows: w~ = w
        low32 = self.low.float()
        max_abs = float(low32.abs().max()) if weight.numel() else 0.0
        w32 = low32 if weight.dtype == torch.bfloat16 else weight
        self._set_norms(w32.norm(dim=-1), (w32 - low32).norm(dim=-1), low32.norm(dim=-1), max_abs)

    def _set_norms(self, w_norm: torch.Tensor, e_norm: torch.Tensor, low_norm: torch.Tensor, max_abs: float) -> None:
        """Per token (V,): |w|, |w - w~| and |w~| for the copy w~ the screen multiplies; max|w~|."""
        self.w_norm, self.e_norm, self.low_norm, self.max_abs = w_norm, e_norm, low_norm, max_abs
        self.maxes_e_w_low = tuple(float(t.max()) if t.numel() else 0.0 for t in (e_norm, w_norm, low_norm))

    def _screen(self, x_low: torch.Tensor) -> torch.Tensor:
        """(n, d) bf16 -> (n, V) bf16: ``bf16(x~ @ w~.T)``, accumulated in fp32."""
        return x_low @ self.low.T

    def _rows(self, ids: torch.Tensor) -> torch.Tensor:
        """The rows ``W[ids]`` in fp32."""
        return self.weight[ids].float()

    @property
    def vocab_size(self) -> int:
        return self.w_norm.shape[0]

    def _terms(self, x: torch.Tensor):
        """Per row: |x~|, |r|, max|x~|, and the bf16 copy x~, for x (n, d) fp32."""
        low = x.bfloat16()
        low32 = low.float()
        return low, low32.norm(dim=-1, keepdim=True), (x - low32).norm(dim=-1, keepdim=True), low32.abs().amax(-1)

    @torch.no_grad()
    def argmax(
        self,
        x: torch.Tensor,
        bound_scale: float = 1.0,
        bias: torch.Tensor | None = None,
        ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict]:
        """Exact ``(x.double() @ W.double().T + bias.double()).argmax(-1)``, x (n, d) fp32 -> (n,)
        ids, and stats: ``screened`` (rows x tokens read in bf16) and ``candidates`` (tokens read in
        fp64). ``bias`` (V,) fp32 (default none; -inf rules a row out) is added to the screen's scores
        in fp32, its rounding in the bound. ``ids`` (V,) distinct ints: what each row stands for,
        returned in place of the row and ordering exact ties (default: the row itself).
        ``bound_scale`` scales the proven bound (1); tests set 0.5 to show the bound is needed."""
        n, d = x.shape
        if n == 0:
            return torch.zeros(0, dtype=torch.long), {"screened": 0, "candidates": 0, "screen": self.NAME}
        x = x.float()
        low, x_norm, r_norm, x_max = self._terms(x)
        screen = self._screen(low)  # (n, V) bf16: the screen's only pass over W
        scores = screen if bias is None else screen.float() + bias  # (n, V), what is ranked
        maxima = block_maxima(scores)  # (n, blocks): the only full pass over the scores
        top_s, top = first_top(scores, maxima)  # the first maximal index, as argmax
        floor = self._floor(x, x_norm, top, bias)  # (n,) fp64, at most the logit of the answer
        tau = (d * (self.max_abs + x_max + 2) + 1) * TINY  # (n,)
        g, u_out, scale = gamma(2 * d), U_BF16 / (1 - U_BF16), bound_scale * INFLATE
        floor32 = floor.float()
        slack = tau + 2.0**-22 * floor32.abs()  # the flushes, and the fp32 rounding of the comparison

        def delta(rows, e_norm, w_norm, low_norm, s, p):  # s: the screen's score, p: with the bias
            bound = x_norm[rows, 0] * e_norm + r_norm[rows, 0] * w_norm + g * x_norm[rows, 0] * low_norm
            biased = 0 if bias is None else 2.0**-22 * p.abs()  # the fp32 sum s + bias, and its comparison
            return scale * (bound + u_out * s.abs() + slack[rows] + biased)

        every = torch.arange(n)
        below = floor32 - self._loose(
            delta(every, *self.maxes_e_w_low, *torch.zeros(2, n)), scale, u_out, top_s, floor32, screen, bias
        )
        below = (below - below.abs() * 2.0**-7 - TINY).to(scores.dtype)  # rounded downward if compared in bf16
        rows, cols = at_least(scores, maxima, below)
        s, p = screen[rows, cols].float(), scores[rows, cols].float()
        keep = p + delta(rows, self.e_norm[cols], self.w_norm[cols], self.low_norm[cols], s, p) >= floor32[rows]
        rows, cols = torch.cat([rows[keep], every]), torch.cat([cols[keep], top])  # the pick whose logit is floor
        union, where = torch.unique(cols, return_inverse=True)
        exact = torch.full((n, union.numel()), float("-inf"), dtype=torch.float64)
        values = x.double() @ self._rows(union).double().T  # (n, U): the candidates in fp64
        if bias is not None:
            values += bias[union].double()
        exact[rows, where] = values[rows, where]
        named = union if ids is None else ids[union]
        pad = self.vocab_size if ids is None else torch.iinfo(ids.dtype).max
        return argmax_smallest_id(exact, named, pad), {
            "screened": n * self.vocab_size,
            "candidates": int(keep.sum()) + n,
            "screen": self.NAME,
        }

    def _floor(self, x, x_norm, top, bias) -> torch.Tensor:
        """(n,) fp64: the exact logits of the screen's picks ``top``, lowered by more than their own
        rounding (gamma_d^64 |x| |w| < 2^-40 |x| |w|; then the bias's fp64 sum, one rounding)."""
        floor = (x.double() * self._rows(top).double()).sum(-1)
        floor = floor - 2.0**-40 * x_norm.squeeze(1).double() * self.w_norm[top].double()
        if bias is not None:
            floor = floor + bias[top].double()
            floor = floor - 2.0**-52 * floor.abs()
        return floor

    @staticmethod
    def _loose(d0, scale, u_out, top_s, floor32, screen, bias) -> torch.Tensor:
        """(n,) a margin L with every token's delta below it, for a first pass with the largest row
        norms (``d0``). Without a bias no pass over |S|: with c the output term's factor,
        L = max(D0 + c |S_top|, (D0 + c |floor|) / (1 - c)) excludes safely every token with
        S < floor - L (S >= 0 has |S| <= S_top; S < 0 has S + D0 + c |S| = (1 - c) S + D0 < floor).
        With one, |S| and |S + b| are bounded by one pass over |S| and the largest finite |b|."""
        c = scale * u_out
        if bias is None:
            return torch.maximum(d0 + c * top_s.float().abs(), (d0 + c * floor32.abs()) / (1 - c))
        s_max = screen.abs().amax(-1).float()  # (n,)
        finite = bias[bias.isfinite()]
        b_max = float(finite.abs().max()) if finite.numel() else 0.0
        return d0 + c * s_max + scale * 2.0**-22 * (s_max + b_max) * (1 + 2.0**-20)

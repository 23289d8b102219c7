"""The int8-kernel screen of a quantized head of any width against an fp64 ground truth: near-ties
and ties through ``QuantizedHead.greedy`` (for the int4 screen too), the bound at decoding's
shapes, and a case that the halved bound gets wrong."""

import pytest
import torch

from test_screen import assert_needs_the_whole_bound, assert_within_bound, truth
from vqlogits.heads import QuantizedHead
from vqlogits.screens import int4 as screen_int4
from vqlogits.screens.int8 import Int8Screen, available

pytestmark = pytest.mark.skipif(not available(64), reason="no int8 CPU kernel in this PyTorch")


def _screen_of(W):
    return Int8Screen(lambda a, b: W[a:b], lambda ids: W[ids], W.shape[0], W.shape[1])


@pytest.mark.parametrize("bits, group_size", [(8, 32), (3, 32), (2, 16), (4, 48), (4, 32)])
def test_greedy_equals_the_fp64_argmax_on_near_ties_and_ties(bits, group_size):
    g = torch.Generator().manual_seed(bits)
    base = torch.randn(100, 96, generator=g) * 0.2
    W = base.repeat_interleave(10, 0) + 1e-4 * torch.randn(1000, 96, generator=g)  # groups of near-equal rows
    head = QuantizedHead.from_weight(W[:995], bits=bits, group_size=group_size, method="rtn")  # 995: int4 pads to 16
    head.scale0[3] *= 1.5  # row 3 on top for h along it, and row 7 its exact copy: the smaller id must win
    head.offset0[3] *= 1.5
    head.packed[7], head.scale0[7], head.offset0[7] = head.packed[3], head.scale0[3], head.offset0[3]
    h = torch.cat([base[:20] * 4, torch.randn(20, 96, generator=g) * 30, head.weight[3:4].detach().expand(3, -1) * 5])
    ids = head.greedy(h)
    assert isinstance(head._screen[1], Int8Screen) != screen_int4.available(bits, group_size, 96)
    assert torch.equal(ids, truth(h, head.weight.detach())) and int(ids[-1]) == 3
    stats = head._screen[1].argmax(h)[1]
    assert stats["candidates"] < h.shape[0] * 50  # it excludes almost every token
    returned = head.greedy_stats(h)[1]
    assert returned == {"rows": 43, "screened_rows": 43 * 995, "verified_rows": stats["candidates"]}
    assert returned["verified_rows"] > 43  # the near-equal rows reach the fp64 pass
    with torch.no_grad():  # a calibration step moves scales and offsets: the screen follows
        head.gain.add_(0.05 * torch.randn(head.gain.shape, generator=g))
        head.shift.add_(0.2 * torch.randn(head.shift.shape, generator=g))
    assert torch.equal(head.greedy(h), truth(h, head.weight.detach()))
    assert torch.equal(head.greedy(h[:5].view(5, 1, 96)).view(5), truth(h[:5], head.weight.detach()))


@pytest.mark.parametrize("bits", [4, 3])
def test_a_head_with_a_bias_decodes_through_its_screen(bits):
    g = torch.Generator().manual_seed(5)
    head = QuantizedHead.from_weight(torch.randn(600, 64, generator=g) * 0.2, bits, 32, method="rtn", bias=True)
    with torch.no_grad():
        head.bias.copy_(torch.randn(600, generator=g) * 2)
    h = torch.randn(25, 64, generator=g) * 3
    ids, stats = head.greedy_stats(h)
    W, b = head.weight.detach(), head.bias.detach()
    assert torch.equal(ids, truth(h, W, b)) and stats["screened_rows"] == 25 * 600
    assert (ids != truth(h, W)).sum() > 3  # the bias decides


def test_the_bound_holds_at_decoding_shapes():
    # The kernel's assumptions (exact products, fp32 sums, fp32 scaling, one rounding) at SmolLM2's width.
    g = torch.Generator().manual_seed(2)
    head = QuantizedHead.from_weight(torch.randn(8192, 576, generator=g) * 0.05, 8, 32, method="rtn")
    screen = head._greedy_screen()
    assert isinstance(screen, Int8Screen) and screen.codes.dtype == torch.int8
    h = torch.randn(17, 576, generator=g) * 3
    S = torch.cat([screen._screen(h[:1].bfloat16()), screen._screen(h[1:].bfloat16())])  # 1 and 16 rows
    assert_within_bound(screen, h, S, h.double() @ head.weight.detach().double().T)
    ids, stats = screen.argmax(h)
    assert torch.equal(ids, truth(h, head.weight.detach())) and stats["candidates"] < 17 * 100


def test_the_adversarial_case_needs_the_whole_bound():
    """x = 2^-3 over 160 entries; rows of codes times s' = 2^-7, which the int8 copy holds exactly.
    Token a (id 1) sums to 16 + 63 2^-10, token b (id 0) to 16 + 62 2^-10: both just below
    16.0625, half a bf16 step above 16, so the kernel rounds both to 16 (almost u |S| for a) and
    ranks b first; only the whole bound keeps a."""
    c = torch.zeros(2, 160)
    c[:, :129] = 127  # 16,383, and the row maximum: s' = 127 2^-7 / 127
    c[0, 129], c[1, 129] = 63, 64  # b: 16,446, a: 16,447
    W = c * 2.0**-7
    screen = _screen_of(W)
    assert float(screen.e_norm.max()) == 0.0  # the requantization is exact here
    x = torch.full((1, 160), 2.0**-3)
    assert_needs_the_whole_bound(screen, x, W)


def test_where_the_kernel_applies():
    assert available(576) and available(48) and not available(40) and not available(576, "meta")
    with pytest.raises(ValueError, match="d must be a multiple of 16 .* got 40"):
        _screen_of(torch.randn(5, 40))
    head = QuantizedHead.from_weight(torch.randn(30, 40), bits=3, group_size=8, method="rtn")  # chunked fp32
    h = torch.randn(6, 40)
    ids, stats = head.greedy_stats(h)
    assert torch.equal(ids, (h @ head.weight.T).argmax(-1)) and head._screen is None
    assert stats == {"rows": 6, "screened_rows": 0, "verified_rows": 0}
    zero = _screen_of(torch.zeros(3, 16))  # all-zero rows: a tie at 0, the smallest id
    assert int(zero.argmax(torch.randn(1, 16))[0]) == 0


def test_hidden_states_sliced_from_a_sequence():
    head = QuantizedHead.from_weight(torch.randn(64, 32), bits=8, group_size=32, method="rtn")
    h = torch.randn(3, 5, 32)[:, -1]  # (3, 32), strided, as decoding slices the last position
    assert not h.is_contiguous()
    assert torch.equal(head.greedy(h), truth(h, head.weight.detach()))

"""The int4-kernel screen of a 4-bit head against an fp64 ground truth: the kernel's assumptions,
the bound at decoding's shapes, and a case that the halved bound gets wrong (near-ties and ties
through ``QuantizedHead.greedy``, for both screens: test_screen_int8.py)."""

import pytest
import torch

from test_screen import assert_needs_the_whole_bound, assert_within_bound, truth
from vqlogits import quant
from vqlogits.heads import QuantizedHead
from vqlogits.screens.int4 import Int4Screen, available

pytestmark = pytest.mark.skipif(not available(4, 32, 64), reason="no int4 CPU kernel in this PyTorch")


def _screen_of(q, s, m, group_size=32):
    W = quant.dequantize(q, s, m, group_size)
    return Int4Screen(q, s, m, group_size, lambda ids: W[ids]), W


def test_the_kernel_dequantizes_in_fp32():
    # w = (q - 8) 2^-10 + 0.5: entries 0.5 + 2^-10 and 0.5, apart by less than bf16's step at 0.5 (2^-8)
    q = torch.full((16, 32), 8)
    q[0, 0] = 9
    s, m = torch.full((16, 1), 2.0**-10), torch.full((16, 1), 0.5 - 8 * 2.0**-10)
    screen, _ = _screen_of(q, s, m)
    x = torch.zeros(1, 32)
    x[0, 0], x[0, 1] = 1.0, -1.0
    assert float(screen._screen(x.bfloat16())[0, 0]) == 2.0**-10  # a bf16 dequantization would give 0


def test_the_bound_holds_at_decoding_shapes():
    # The kernel's assumptions (fp32 dequantization and accumulation, one rounding) at SmolLM2's head shape.
    g = torch.Generator().manual_seed(2)
    head = QuantizedHead.from_weight(torch.randn(49152, 576, generator=g) * 0.05, 4, 32, method="rtn")
    screen = head._greedy_screen()
    h = torch.randn(17, 576, generator=g) * 3
    S = torch.cat([screen._screen(h[:1].bfloat16()), screen._screen(h[1:].bfloat16())])  # 1 and 16 rows
    assert_within_bound(screen, h, S, h.double() @ head.weight.detach().double().T)


def test_the_adversarial_case_needs_the_whole_bound():
    """x = 1; w = 0.5 + (q - 8) 2^-10, exact in the kernel. Token a (id 1) sums to 16 + 63 2^-10,
    token b (id 0) to 16 + 62 2^-10: both just below 16.0625, half a bf16 step above 16, so the
    kernel rounds both to 16 (almost u |S| for a) and ranks b first; only the whole bound keeps a."""
    q = torch.full((2, 32), 8)
    q[0, :8], q[0, 8] = 15, 14  # b: 8 x 7 + 6 = 62
    q[1, :9] = 15  # a: 9 x 7 = 63
    s, m = torch.full((2, 1), 2.0**-10), torch.full((2, 1), 0.5 - 8 * 2.0**-10)
    screen, W = _screen_of(q, s, m)
    x = torch.ones(1, 32)
    assert_needs_the_whole_bound(screen, x, W)


def test_where_the_kernel_applies():
    assert available(4, 32, 576) and available(4, 64, 576)
    assert not available(4, 48, 576) and not available(4, 128, 576)  # 48: no such kernel; 128 does not divide 576
    assert not available(3, 32, 576) and not available(4, 32, 576, "meta")
    q, s = torch.zeros(16, 48, dtype=torch.long), torch.ones(16, 3)
    with pytest.raises(ValueError, match="group_size must be one of .* got 16"):
        Int4Screen(q, s, s, 16, lambda ids: None)
    head = QuantizedHead.from_weight(torch.randn(40, 48), bits=4, group_size=16)  # no int4 kernel: the int8 one
    h = torch.randn(6, 48)
    assert torch.equal(head.greedy(h), truth(h, head.weight.detach()))
    assert type(head._screen[1]).__name__ == "Int8Screen"


def test_hidden_states_sliced_from_a_sequence():
    head = QuantizedHead.from_weight(torch.randn(64, 32), bits=4, group_size=32)
    h = torch.randn(3, 5, 32)[:, -1]  # (3, 32), strided, as decoding slices the last position
    assert not h.is_contiguous()
    assert torch.equal(head.greedy(h), truth(h, head.weight.detach()))

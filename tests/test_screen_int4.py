"""The int4-kernel screen of a 4-bit head against an fp64 ground truth: near-ties and ties through
``QuantizedHead.greedy``, the kernel's assumptions, the bound at decoding's shapes, and a case that
the halved bound gets wrong."""

import pytest
import torch

from test_screen import truth
from vqlogits import quant
from vqlogits.heads import QuantizedHead
from vqlogits.screen import U_BF16
from vqlogits.screen_int4 import Int4Screen, available

pytestmark = pytest.mark.skipif(not available(4, 32, 64), reason="no int4 CPU kernel in this PyTorch")


def _screen_of(q, s, m, group_size=32):
    W = quant.dequantize(q, s, m, group_size)
    return Int4Screen(q, s, m, group_size, lambda ids: W[ids]), W


def test_greedy_equals_the_fp64_argmax_on_near_ties_and_ties():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(100, 64, generator=g) * 0.2
    W = base.repeat_interleave(10, 0) + 1e-4 * torch.randn(1000, 64, generator=g)  # groups of near-equal rows
    head = QuantizedHead.from_weight(W[:995], bits=4, group_size=32)  # 995: the kernel's 16-row padding is cut
    head.scale0[3] *= 1.5  # row 3 on top for h along it, and row 7 its exact copy: the smaller id must win
    head.offset0[3] *= 1.5
    head.packed[7], head.scale0[7], head.offset0[7] = head.packed[3], head.scale0[3], head.offset0[3]
    h = torch.cat([base[:20] * 4, torch.randn(20, 64, generator=g) * 30, head.weight[3:4].detach().expand(3, -1) * 5])
    ids = head.greedy(h)
    assert torch.equal(ids, truth(h, head.weight.detach())) and int(ids[-1]) == 3
    assert head._screen[1].argmax(h)[1]["candidates"] < h.shape[0] * 50  # it excludes almost every token
    with torch.no_grad():  # a calibration step moves scales and offsets: the screen follows
        head.gain.add_(0.05 * torch.randn(head.gain.shape, generator=g))
        head.shift.add_(0.2 * torch.randn(head.shift.shape, generator=g))
    assert torch.equal(head.greedy(h), truth(h, head.weight.detach()))
    assert torch.equal(head.greedy(h[:5].view(5, 1, 64)).view(5), truth(h[:5], head.weight.detach()))


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
    S = torch.cat([screen._screen(h[:1].bfloat16()), screen._screen(h[1:].bfloat16())]).double()  # 1 and 16 rows
    err = (S - h.double() @ head.weight.detach().double().T).abs()
    _, x_norm, r_norm, _ = screen._terms(h)
    bound = x_norm * screen.e_norm + r_norm * screen.w_norm + U_BF16 / (1 - U_BF16) * S.abs().float()
    assert bool((err <= bound.double()).all())
    assert float((err / bound.double()).max()) > 0.01  # and it is not vacuous


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
    assert int(truth(x, W)) == 1
    S = screen._screen(x.bfloat16())
    assert float(S[0, 0]) == float(S[0, 1]) == 16.0
    assert int(screen.argmax(x)[0]) == 1
    assert int(screen.argmax(x, bound_scale=0.5)[0]) == 0  # half the bound drops a: wrong


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

"""The certified bf16 screen against an fp64 ground truth: near-ties, exact ties, large and tiny
values, the bound itself at decoding's shapes, and a case that the halved bound gets wrong."""

import pytest
import torch

from vqlogits.screens.bf16 import U_BF16, BF16Screen


def truth(h, W, bias=None, ids=None):
    """The fp64 argmax of ``h W^T + bias``, ties to the smallest of ``ids`` (default: the row)."""
    logits = h.double() @ W.double().T + (0 if bias is None else bias.double())
    best = logits.max(-1, keepdim=True).values
    named = torch.arange(W.shape[0]) if ids is None else ids
    return torch.where(logits == best, named, int(named.max()) + 1).min(-1).values


def assert_within_bound(screen, h, S, logits):
    """The screen's scores S (n, V) at h (n, d) lie within its proven bound of the fp64 logits, and
    the bound is not vacuous (the kernel's assumptions, checked at the shapes decoding uses)."""
    _, x_norm, r_norm, _ = screen._terms(h)
    # The accumulation term (gamma_2d |x~| |w~|) left out: the check is stricter than the proof.
    bound = (x_norm * screen.e_norm + r_norm * screen.w_norm + U_BF16 / (1 - U_BF16) * S.abs().float()).double()
    err = (S.double() - logits).abs()
    assert bool((err <= bound).all())
    assert float((err / bound).max()) > 0.01


def assert_needs_the_whole_bound(screen, x, W):
    """x (1, d) where token a (id 1) wins in fp64 but the screen scores a and b (id 0) both 16, so
    b ranks first: the bound keeps a, half of it drops a and answers b. The same with an equal
    bias on both rows (added exactly in fp32), which moves the scores but not the ranking."""
    assert int(truth(x, W)) == 1
    S = screen._screen(x.bfloat16())
    assert float(S[0, 0]) == float(S[0, 1]) == 16.0
    bias = torch.full((2,), 0.5)
    for b in (None, bias):
        assert int(screen.argmax(x, bias=b)[0]) == 1
        assert int(screen.argmax(x, bound_scale=0.5, bias=b)[0]) == 0


def near_ties(V=3000, d=64, seed=0):
    """Rows in tight groups: within a group logits differ by ~1e-7 relative, far below bf16's 4e-3."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(V // 10, d, generator=g)
    W = base.repeat_interleave(10, 0) + 1e-7 * torch.randn(V // 10 * 10, d, generator=g)
    W[3] = W[7] = 1.01 * base[0]  # an exact tie at the top for h = base[0]: the smaller id must win
    h = torch.cat([base[:20] * 4, torch.randn(20, d, generator=g) * 30, base[:1].expand(4, -1)])
    return h, W


def test_equals_the_fp64_argmax_on_near_ties_and_ties():
    h, W = near_ties()
    ids, stats = BF16Screen(W).argmax(h)
    assert torch.equal(ids, truth(h, W))
    assert int(ids[-1]) == 3  # W[3] == W[7]
    assert stats["candidates"] < h.shape[0] * 50  # the screen excludes almost everything


def test_a_bias_per_row_and_names_for_ties():
    """With a bias (-inf rules rows out) and rows named by ``ids``: the fp64 argmax of h W^T + b,
    exact ties to the smallest name. The bias reorders the near-equal rows, so it is not idle."""
    h, W = near_ties()
    g = torch.Generator().manual_seed(3)
    bias = torch.randn(W.shape[0], generator=g) * 1e-3
    bias[3] = bias[7] = 0.01  # rows 3 and 7 stay an exact tie on top for h along W[3]
    bias[:3] = float("-inf")  # rows 0-2 (W[3]'s near-equal group) ruled out
    ids = torch.randperm(W.shape[0], generator=g)
    got, stats = BF16Screen(W).argmax(h, bias=bias, ids=ids)
    assert torch.equal(got, truth(h, W, bias, ids))
    assert int(got[-1]) == min(int(ids[3]), int(ids[7]))
    assert (got != ids[truth(h, W)]).sum() > 10  # the bias changed most answers
    assert stats["candidates"] < h.shape[0] * 50


@pytest.mark.parametrize("scale", [1e-30, 1e-3, 1.0, 1e4])
def test_any_scale(scale):
    g = torch.Generator().manual_seed(1)
    W, h = torch.randn(500, 48, generator=g) * scale, torch.randn(9, 48, generator=g)
    assert torch.equal(BF16Screen(W).argmax(h)[0], truth(h, W))


@pytest.mark.parametrize("n", [1, 16])
def test_the_bound_holds_at_decoding_shapes(n):
    # The kernel assumptions (fp32 accumulation, one rounding to bf16) at SmolLM2's head shape.
    g = torch.Generator().manual_seed(2)
    W, h = torch.randn(49152, 576, generator=g) * 0.05, torch.randn(n, 576, generator=g) * 3
    screen = BF16Screen(W)
    assert_within_bound(screen, h, h.bfloat16() @ screen.low.T, h.double() @ W.double().T)


def _adversarial():
    """Every term of the bound realised at once. x = 1 (exact). Token a's 16 entries sit just below
    half a bf16 ulp above a grid that sums to 16.0546875, so bf16 rounds each entry down by almost
    u (|x~| |e| is tight: e is parallel to x) and then rounds the sum 16.0546875 down to 16 (the
    output term, almost u |S|). Token b (the smaller id) has the same bf16 copy and an exact logit
    just below a's: the screen ties them, ranks b first, and only the full bound keeps a."""
    grid = torch.tensor([1 + 2.0**-7] * 7 + [1.0] * 9)
    w_a = grid + 2.0**-8 * (1 - 2.0**-10)
    w_b = grid + 2.0**-8 * (1 - 2.0**-9)
    return torch.ones(1, 16), torch.stack([w_b, w_a])


def test_the_adversarial_case_needs_the_whole_bound():
    x, W = _adversarial()
    assert_needs_the_whole_bound(BF16Screen(W), x, W)


def test_empty_and_bad_input():
    screen = BF16Screen(torch.randn(10, 4))
    assert screen.argmax(torch.zeros(0, 4))[0].numel() == 0
    with pytest.raises(ValueError, match="fp32 or bf16"):
        BF16Screen(torch.randn(10, 4).double())


def test_bf16_rows_are_their_own_copy():
    """A bf16 W (a bf16 model's head): no copy, no requantization error (e = 0), and the argmax of
    the bf16 rows' exact logits, near-ties included."""
    h, W = near_ties()
    h, W = h.bfloat16().float(), W.bfloat16()
    screen = BF16Screen(W)
    assert screen.low is W and float(screen.e_norm.abs().max()) == 0.0
    assert torch.equal(screen.argmax(h)[0], truth(h, W))
    # Only the output rounding is left: a's 16 entries sum to 16.0546875 and b's (the smaller id)
    # to 16.046875, exactly; both screen to 16, b ranks first, and only the whole bound keeps a.
    row = lambda k: torch.tensor([1 + 2.0**-7] * k + [1.0] * (16 - k))  # noqa: E731
    x, W = torch.ones(1, 16), torch.stack([row(6), row(7)]).bfloat16()
    assert_needs_the_whole_bound(BF16Screen(W), x, W)


@pytest.mark.parametrize("V", [100, 4096, 2 * 4096 + 123])
def test_the_block_passes_equal_full_passes(V):
    """Block maxima, the first maximal index and the threshold pass, against plain PyTorch over all
    columns: one block, whole blocks, and a short tail; ties across blocks go to the first."""
    from vqlogits.screens.bf16 import at_least, block_maxima, first_top

    g = torch.Generator().manual_seed(V)
    S = torch.randn(5, V, generator=g).bfloat16()
    S[1, [7, V - 1]] = 9.0  # a tie: the first index wins
    S[2, V - 1] = 9.0  # the maximum in the last (tail) block
    maxima = block_maxima(S)
    assert maxima.shape == (5, -(-V // 4096)) and torch.equal(maxima.max(-1).values, S.max(-1).values)
    top_s, top = first_top(S, maxima)
    assert torch.equal(top, S.max(-1).indices) and torch.equal(top_s, S.max(-1).values) and int(top[1]) == 7
    below = (S.float().max(-1).values - 1.5).bfloat16()
    rows, cols = at_least(S, maxima, below)
    want_rows, want_cols = torch.nonzero(S >= below[:, None], as_tuple=True)
    got = sorted(zip(rows.tolist(), cols.tolist(), strict=True))
    assert got == sorted(zip(want_rows.tolist(), want_cols.tolist(), strict=True)) and len(got) > 5


def test_exact_across_blocks_and_a_tail():
    """The screen's argmax over 2 blocks and a tail, with an exact tie across blocks and near-ties."""
    g = torch.Generator().manual_seed(4)
    W = torch.randn(2 * 4096 + 300, 32, generator=g)
    W[8000] = W[100] * 1.5  # an exact tie at the top for h along it, in two blocks: 100 wins
    W[8191] = W[100] * 1.5
    W[8300] = W[100] * 1.5 * (1 + 1e-7)  # a near-tie in the tail, above them in fp64
    h = torch.cat([W[[100]] * 2, torch.randn(15, 32, generator=g) * 5])
    assert torch.equal(BF16Screen(W).argmax(h)[0], truth(h, W))
    W[8300] = W[100] * 1.5
    assert int(BF16Screen(W).argmax(h[:1])[0]) == int(truth(h[:1], W)) == 8000

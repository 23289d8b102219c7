"""The VQ head equals its naive form: forward + F.cross_entropy, for values and gradients."""

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F

from conftest import make_vq
from vqlogits import DenseHead, VQLogitsHead


def naive_logits(head, h):
    return (h @ head.codebook.T)[..., head.assignment] + (0 if head.bias is None else head.bias)


def test_forward_is_the_scatter_of_code_logits():
    head = make_vq()
    h = torch.randn(4, 5, 33, dtype=torch.float64)
    z = head.code_logits(h)
    assert z.shape == (4, 5, 7)
    torch.testing.assert_close(head(h), naive_logits(head, h), rtol=0, atol=0)
    torch.testing.assert_close(head(h), z[..., head.assignment] + head.bias, rtol=0, atol=0)


ASSIGNMENTS = {
    "random": None,
    "empty_codes": torch.arange(1000) % 3,  # codes 3..6 hold no token
    "one_code_holds_all": torch.full((1000,), 4),
}


@pytest.mark.parametrize(
    "reduction,bias,ignore,layout",
    list(itertools.product(["mean", "sum", "none"], [True, False], [False, True], ASSIGNMENTS)),
)
def test_loss_and_gradients_match_naive(reduction, bias, ignore, layout):
    head = make_vq(bias=bias, assignment=ASSIGNMENTS[layout])
    h = (3 * torch.randn(6, 9, 33, dtype=torch.float64)).requires_grad_()
    y = torch.randint(0, 1000, (6, 9))
    if ignore:
        y[0, :4] = -100
        y[3, 2] = -100
    fast = head.loss(h, y, reduction=reduction)
    params = [h, head.codebook] + ([head.bias] if bias else [])
    grads_fast = torch.autograd.grad(fast.sum(), params)
    ref = F.cross_entropy(naive_logits(head, h).flatten(0, 1), y.flatten(), reduction=reduction)
    ref = ref.reshape(y.shape) if reduction == "none" else ref
    grads_ref = torch.autograd.grad(ref.sum(), params)
    torch.testing.assert_close(fast, ref, rtol=1e-12, atol=1e-12)
    for gf, gr in zip(grads_fast, grads_ref, strict=True):
        torch.testing.assert_close(gf, gr, rtol=1e-10, atol=1e-12)


def test_custom_ignore_index_and_all_ignored():
    head = make_vq()
    h = torch.randn(5, 33, dtype=torch.float64)
    y = torch.tensor([1, 7, 7, 999, 0])
    torch.testing.assert_close(head.loss(h, y, ignore_index=7), F.cross_entropy(head(h), y, ignore_index=7))
    all_ignored = torch.full((5,), -100)
    assert torch.isnan(head.loss(h, all_ignored)) and torch.isnan(F.cross_entropy(head(h), all_ignored))
    assert head.loss(h, all_ignored, reduction="sum").item() == 0.0


def test_nan_propagates_like_cross_entropy():
    head = make_vq()
    h = torch.randn(4, 33, dtype=torch.float64)
    h[1, 0] = float("nan")
    y = torch.tensor([3, 4, 5, 6])
    ref = F.cross_entropy(head(h), y, reduction="none")
    got = head.loss(h, y, reduction="none")
    assert torch.equal(torch.isnan(got), torch.isnan(ref))
    assert torch.isnan(head.loss(h, y))
    y[1] = -100  # an ignored NaN row does not poison the mean, in either path
    torch.testing.assert_close(head.loss(h, y), F.cross_entropy(head(h), y))
    assert not torch.isnan(head.loss(h, y))


def test_identity_codebook_equals_dense_head():
    V, d = 50, 16
    dense = DenseHead(d, V).double()
    vq = VQLogitsHead(d, V, V, bias=False).double()
    with torch.no_grad():
        vq.codebook.copy_(dense.weight)
    vq.set_assignment(torch.arange(V))
    h = torch.randn(3, 8, d, dtype=torch.float64)
    y = torch.randint(0, V, (3, 8))
    torch.testing.assert_close(vq(h), dense(h), rtol=0, atol=0)
    torch.testing.assert_close(vq.loss(h, y), dense.loss(h, y), rtol=1e-13, atol=1e-13)
    assert torch.equal(vq.greedy(h), dense.greedy(h))


def _errors(head, h, y, dtype):
    """|fast - truth| and |naive - truth| for the loss and every gradient, truth in fp64."""
    head_lo = head.to(dtype)
    h_lo = h.to(dtype).requires_grad_()
    out = {}
    truth_head = copy.deepcopy(head_lo).double()  # the low-precision weights, exactly, in fp64
    h64 = h_lo.detach().double().requires_grad_()
    truth = truth_head.loss(h64, y)
    truth_grads = torch.autograd.grad(truth, [h64, truth_head.codebook, truth_head.bias])
    for name, fn in {
        "fast": lambda: head_lo.loss(h_lo, y),
        "naive": lambda: F.cross_entropy(naive_logits(head_lo, h_lo).flatten(0, -2), y.flatten()),
    }.items():
        loss = fn()
        grads = torch.autograd.grad(loss, [h_lo, head_lo.codebook, head_lo.bias])
        errs = [abs(loss.item() - truth.item())]
        errs += [float((g.double() - t).norm() / t.norm()) for g, t in zip(grads, truth_grads, strict=True)]
        out[name] = errs
    return out


@pytest.mark.parametrize("dtype,slack", [(torch.float32, 1e-6), (torch.bfloat16, 1e-3)])
def test_low_precision_no_worse_than_naive(dtype, slack):
    """Error budget per dtype: the fast path's error vs an fp64 truth is within naive's (+ slack)."""
    head = make_vq(V=2000, K=64, d=64, dtype=torch.float64, seed=3, scale=0.3)
    h = torch.randn(256, 64, dtype=torch.float64)
    y = torch.randint(0, 2000, (256,))
    errs = _errors(head, h, y, dtype)
    for fast, naive in zip(errs["fast"], errs["naive"], strict=True):
        assert fast <= naive + slack, errs


def test_greedy_equals_argmax_of_forward():
    for bias in (True, False):
        head = make_vq(bias=bias, dtype=torch.float32, assignment=ASSIGNMENTS["empty_codes"])
        h = torch.randn(7, 11, 33)
        assert torch.equal(head.greedy(h), head(h).argmax(-1))
    # ties between codes and inside codes resolve to the smallest id, as torch.argmax does
    head = make_vq(V=12, K=3, d=2, bias=False, dtype=torch.float32, assignment=torch.tensor([2, 1, 0] * 4))
    with torch.no_grad():
        head.codebook.zero_()
    h = torch.randn(3, 2)
    assert head.greedy(h).tolist() == head(h).argmax(-1).tolist() == [0, 0, 0]


def test_from_weight_inits():
    V, d, K = 300, 12, 10
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(K, d, generator=g) * 5
    weight = centers[torch.arange(V) % K] + 0.01 * torch.randn(V, d, generator=g)
    head = VQLogitsHead.from_weight(weight, K, init="kmeans", seed=1)
    # k-means recovers the 10 tight clusters exactly, and centroids are their means
    true = torch.arange(V) % K
    assert all(len(set(head.assignment[true == c].tolist())) == 1 for c in range(K))
    assert len(set(head.assignment.tolist())) == K
    torch.testing.assert_close(head.codebook[head.assignment], weight, atol=0.05, rtol=0)
    rand = VQLogitsHead.from_weight(weight, K, init="random", seed=1)
    assert torch.bincount(rand.assignment, minlength=K).tolist() == [30] * K
    counts = torch.arange(V, 0, -1)  # token 0 is the most frequent
    freq = VQLogitsHead.from_weight(weight, K, init="frequency", counts=counts)
    assert sorted(freq.assignment[:K].tolist()) == list(range(K))  # one top-K token per code
    torch.testing.assert_close(freq.codebook[0], weight[freq.assignment == 0].mean(0))


def test_state_dict_round_trip(tmp_path):
    head = make_vq(dtype=torch.float32)
    torch.save(head.state_dict(), tmp_path / "head.pt")
    other = VQLogitsHead(33, 1000, 7)
    other.load_state_dict(torch.load(tmp_path / "head.pt"))
    h = torch.randn(5, 33)
    assert torch.equal(other(h), head(h))
    assert torch.equal(other.assignment, head.assignment)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(head.sample(h, top_p=0.9, generator=g1), other.sample(h, top_p=0.9, generator=g2))


def test_code_index_follows_parameter_updates():
    head = make_vq(dtype=torch.float32)
    h = torch.randn(6, 33)
    assert torch.equal(head.greedy(h), head(h).argmax(-1))
    with torch.no_grad():
        head.bias.add_(torch.randn(1000) * 5)  # in-place, as an optimizer step does
    assert torch.equal(head.greedy(h), head(h).argmax(-1))
    head.set_assignment(torch.randint(0, 7, (1000,)))
    assert torch.equal(head.greedy(h), head(h).argmax(-1))


def test_loss_allocates_nothing_vocab_sized():
    """Peak extra memory of the compact loss scales with N*K, not N*V (tracked with a dispatch hook)."""
    from conftest import Largest

    N, V, K, d = 512, 20000, 16, 8
    head = make_vq(V=V, K=K, d=d, dtype=torch.float32)
    h = torch.randn(N, d, requires_grad=True)
    y = torch.randint(0, V, (N,))
    with Largest() as probe:
        loss = head.loss(h, y)
        loss.backward()
        head.greedy(h)
        head.sample(h, top_k=50, top_p=0.9)
    assert probe.largest < N * V / 10, probe.largest  # the largest tensor is V-sized, not N*V
    with Largest() as control:  # the naive path does allocate (N, V), so the probe can fail
        F.cross_entropy(head(h), y)
    assert control.largest >= N * V

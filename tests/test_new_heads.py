"""Beyond-the-paper heads: exact loss, gradients, greedy and sampling against their naive forms."""

import pytest
import torch
import torch.nn.functional as F

from vqlogits.heads import HEADS, build_head, size_for_budget
from vqlogits.heads.twolevel import TwoLevelHead

V, D = 300, 12
KW = dict(codebook_size=13, rank=3, token_dim=4, num_codebooks=2, n_frequent=20)
NEW = ["vq-lowrank", "twolevel", "rvq", "hybrid", "hybrid-twolevel"]


def make(name, bias=True, seed=0):
    torch.manual_seed(seed)
    head = build_head(name, D, V, bias=bias, **KW).double()
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0, 0.7)  # away from the zero initialisations, so every term matters
    if hasattr(head, "set_frequencies"):
        head.set_frequencies(torch.randint(0, 1000, (V,)))
    return head


def naive_loss(head, h, y, reduction):
    logits = head(h).flatten(0, -2)
    return F.cross_entropy(logits, y.flatten(), reduction=reduction).reshape(y.shape if reduction == "none" else ())


@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_loss_and_gradients_match_naive(name, bias, reduction):
    head = make(name, bias)
    h = torch.randn(4, 7, D, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, V, (4, 7))
    y[0, :3] = -100
    fast = head.loss(h, y, reduction=reduction)
    params = [h] + [p for p in head.parameters()]
    g_fast = torch.autograd.grad(fast.sum(), params, allow_unused=True)
    ref = (
        naive_loss(head, h, y, reduction)
        if reduction == "none"
        else F.cross_entropy(head(h).flatten(0, 1), y.flatten())
    )
    g_ref = torch.autograd.grad(ref.sum(), params, allow_unused=True)
    torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-10)
    for a, b in zip(g_fast, g_ref, strict=True):
        if a is None or b is None:
            assert (a is None or a.abs().max() == 0) and (b is None or b.abs().max() == 0)
        else:
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("name", NEW)
def test_greedy_and_sampling_probs(name):
    head = make(name)
    h = 2 * torch.randn(9, D, dtype=torch.float64)
    assert torch.equal(head.greedy(h), head(h).argmax(-1))
    for kw in (dict(), dict(temperature=0.7, top_k=10), dict(top_p=0.8)):
        probs = head.sampling_probs(h, **kw)
        torch.testing.assert_close(probs.sum(-1), torch.ones(9, dtype=torch.float64))


def test_twolevel_forward_is_normalised_and_factorises():
    head = make("twolevel")
    h = torch.randn(5, D, dtype=torch.float64)
    logp = head(h)
    torch.testing.assert_close(torch.logsumexp(logp, -1), torch.zeros(5, dtype=torch.float64), rtol=0, atol=1e-12)
    # P(code) from the tokens equals softmax of the code logits
    code_p = torch.zeros(5, 13, dtype=torch.float64).index_add_(1, head.assignment, logp.exp())
    torch.testing.assert_close(code_p, torch.softmax(h @ head.codebook.T, -1))


def test_twolevel_greedy_with_empty_codes_and_many_codes():
    head = TwoLevelHead(D, V, 40, token_dim=3).double()
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0, 1.0)
    head.set_assignment(torch.arange(V) % 25)  # codes 25..39 empty
    h = 3 * torch.randn(64, D, dtype=torch.float64)
    assert torch.equal(head.greedy(h), head(h).argmax(-1))
    assert torch.isfinite(head.loss(h, torch.randint(0, V, (64,))))


@pytest.mark.parametrize("name", ["twolevel", "hybrid", "hybrid-twolevel"])
def test_sampled_frequencies_match(name):
    head = make(name)
    head.float()
    h = torch.randn(2, D)
    n = 20000
    g = torch.Generator().manual_seed(0)
    draws = head.sample(h.expand(n, -1, -1), generator=g)  # (n, 2)
    probs = head.sampling_probs(h).double()
    freq = torch.zeros(2, V, dtype=torch.float64).scatter_add_(1, draws.T, torch.ones(2, n, dtype=torch.float64)) / n
    assert (freq[probs == 0] == 0).all()
    assert ((freq - probs).abs() <= 5 * (probs * (1 - probs) / n).sqrt() + 1 / n).all()


@pytest.mark.parametrize("name", ["vq", "hybrid", "twolevel", "hybrid-twolevel", "vq-lowrank", "rvq", "lowrank"])
@pytest.mark.parametrize("budget", [0.005, 0.02, 0.1])
def test_head_budget_is_respected(name, budget):
    V_, d_ = 16384, 128
    try:
        kw = size_for_budget(name, budget, d_, V_)
    except ValueError as e:  # only when even the smallest head of that kind is over budget
        assert (
            budget == 0.005
            and name in ("twolevel", "hybrid-twolevel", "vq-lowrank", "lowrank")
            and "smallest" in str(e)
        )
        return
    n = sum(p.numel() for p in build_head(name, d_, V_, **kw).parameters())
    assert 0.5 * budget * V_ * d_ <= n <= budget * V_ * d_, (kw, n)


def test_head_budget_without_bias_spends_it_on_codes():
    with_bias, without = (
        size_for_budget("hybrid", 0.02, 128, 16384),
        size_for_budget("hybrid", 0.02, 128, 16384, bias=False),
    )
    assert with_bias["bias"] and not without["bias"]
    assert (
        without["n_frequent"] + without["codebook_size"]
        == 327
        > with_bias["n_frequent"] + with_bias["codebook_size"]
        == 199
    )


def test_every_head_name_builds():
    for name in HEADS:
        head = build_head(name, D, V, **KW)
        assert head(torch.randn(2, D)).shape == (2, V)
    with pytest.raises(ValueError, match="head must be one of"):
        build_head("nope", D, V)
    with pytest.raises(ValueError, match="head_budget must be in"):
        size_for_budget("vq", 0, D, V)


def test_decode_cost_ranks_heads_sensibly():
    costs = {
        name: build_head(name, 128, 16384, codebook_size=256, rank=8, token_dim=4, n_frequent=64).decode_cost()
        for name in HEADS
    }
    assert all(c["flops"] > 0 and c["bytes"] > 0 for c in costs.values())
    assert costs["vq"]["bytes"] < costs["dense"]["bytes"] / 30  # K d + tables vs V d
    assert costs["twolevel"]["flops"] < costs["dense"]["flops"] / 10
    assert costs["vq-lowrank"]["flops"] > costs["vq"]["flops"]  # the residual costs O(V r)


def test_a_narrow_adaptive_head_keeps_a_dimension_per_cluster():
    head = build_head("adaptive", 12, 300)  # 12 // 4**2 = 0: the default division would leave the tail none
    assert all(proj[0].out_features >= 1 for proj in head.asm.tail)
    assert build_head("adaptive", 128, 300).asm.div_value == 4.0  # wide enough: unchanged

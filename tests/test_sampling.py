"""Compact sampling draws exactly softmax(forward(h) / T) after tie-inclusive top-k / top-p."""

import pytest
import torch

from conftest import make_vq
from vqlogits import DenseHead
from vqlogits import functional as VF

SETTINGS = [
    dict(temperature=1.0),
    dict(temperature=0.5),
    dict(temperature=2.0, top_k=5),
    dict(top_k=1),
    dict(top_k=40),
    dict(top_p=0.5),
    dict(top_p=0.95, temperature=0.8),
    dict(top_k=30, top_p=0.7),
    dict(top_p=1e-6),
]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kw", SETTINGS, ids=str)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_compact_distribution_equals_reference(kw, bias, dtype):
    head = make_vq(bias=bias, dtype=dtype, scale=0.5)
    h = 3 * torch.randn(64, 33, dtype=dtype)
    exact = VF.sampling_probs(head(h), **kw)
    got = head.sampling_probs(h, **kw)
    # the kept set is identical, ties included (below 1e-30 the fp32 reference underflows)
    assert torch.equal(got > 1e-30, exact > 1e-30)
    atol = 1e-12 if dtype == torch.float64 else 2e-6
    torch.testing.assert_close(got.to(exact.dtype), exact, rtol=1e-5, atol=atol)


def test_ties_inside_codes_are_kept_together():
    """Without a bias all tokens of a code tie; top-k keeps the whole tied code."""
    head = make_vq(V=60, K=6, bias=False, assignment=torch.arange(60) % 6)
    h = torch.randn(5, 33, dtype=torch.float64)
    probs = head.sampling_probs(h, top_k=3)
    assert ((probs > 0).sum(-1) == 10).all()  # the top code's 10 tied tokens


def _frequencies(sample_fn, n_rows, n_draws, vocab):
    tokens = sample_fn(n_draws)  # (n_draws, n_rows)
    counts = torch.zeros(n_rows, vocab, dtype=torch.float64)
    counts.scatter_add_(1, tokens.T, torch.ones_like(tokens.T, dtype=torch.float64))
    return counts / n_draws


def _assert_within_ci(freq, probs, n_draws, z=5.0):
    """Every token's empirical frequency lies in a z-sigma binomial interval; impossible tokens never appear."""
    sigma = (probs * (1 - probs) / n_draws).sqrt()
    assert (freq[probs == 0] == 0).all()
    bad = (freq - probs).abs() > z * sigma + 1.0 / n_draws
    assert not bad.any(), (freq[bad], probs[bad])


@pytest.mark.parametrize(
    "kw", [dict(), dict(temperature=0.7, top_k=8), dict(top_p=0.6), dict(top_k=20, top_p=0.9)], ids=str
)
@pytest.mark.parametrize("bias", [True, False])
def test_sampled_frequencies_match_exact_probabilities(kw, bias):
    V, n_draws = 80, 20000
    head = make_vq(V=V, K=9, d=6, bias=bias, dtype=torch.float32, seed=1)
    h = 1.5 * torch.randn(3, 6)
    g = torch.Generator().manual_seed(0)
    draw = lambda n: head.sample(h.expand(n, -1, -1), generator=g, **kw)  # noqa: E731
    freq = _frequencies(draw, 3, n_draws, V)
    _assert_within_ci(freq, head.sampling_probs(h, **kw).double(), n_draws)


def test_dense_head_sampling_matches_its_probabilities():
    V, n_draws = 50, 20000
    head = DenseHead(8, V)
    h = 10 * torch.randn(2, 8)
    g = torch.Generator().manual_seed(0)
    freq = _frequencies(lambda n: head.sample(h.expand(n, -1, -1), top_p=0.8, generator=g), 2, n_draws, V)
    _assert_within_ci(freq, head.sampling_probs(h, top_p=0.8).double(), n_draws)


def test_ci_check_detects_a_wrong_distribution():
    """Control: the frequency check rejects samples from a slightly different temperature."""
    V, n_draws = 80, 20000
    head = make_vq(V=V, K=9, d=6, dtype=torch.float32, seed=1)
    h = 1.5 * torch.randn(3, 6)
    g = torch.Generator().manual_seed(0)
    freq = _frequencies(lambda n: head.sample(h.expand(n, -1, -1), temperature=1.15, generator=g), 3, n_draws, V)
    with pytest.raises(AssertionError):
        _assert_within_ci(freq, head.sampling_probs(h).double(), n_draws)


def test_generator_makes_sampling_reproducible():
    head = make_vq(dtype=torch.float32)
    h = torch.randn(10, 33)
    draws = [head.sample(h, top_k=50, generator=torch.Generator().manual_seed(3)) for _ in range(2)]
    assert torch.equal(*draws)
    assert draws[0].shape == (10,) and draws[0].dtype == torch.long

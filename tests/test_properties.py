"""Property-based checks (hypothesis): loss and sampling equal their naive forms on random layouts."""

import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import make_vq
from vqlogits import functional as VF

layouts = st.fixed_dictionaries(
    {
        "V": st.integers(1, 200),
        "K_frac": st.floats(0.0, 1.0),
        "d": st.integers(1, 16),
        "bias": st.booleans(),
        "seed": st.integers(0, 2**16),
        "n": st.integers(1, 20),
    }
)


def _build(p):
    K = max(1, min(p["V"], round(p["K_frac"] * p["V"])))
    head = make_vq(V=p["V"], K=K, d=p["d"], bias=p["bias"], seed=p["seed"], scale=2.0)
    g = torch.Generator().manual_seed(p["seed"])
    h = torch.randn(p["n"], p["d"], generator=g, dtype=torch.float64)
    return head, h, g


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layouts, st.sampled_from(["mean", "sum", "none"]))
def test_loss_equals_naive(p, reduction):
    head, h, g = _build(p)
    y = torch.randint(0, p["V"], (p["n"],), generator=g)
    y[torch.rand(p["n"], generator=g) < 0.2] = -100
    ref = F.cross_entropy(head(h), y, reduction=reduction)
    torch.testing.assert_close(head.loss(h, y, reduction=reduction), ref, rtol=1e-10, atol=1e-10, equal_nan=True)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    layouts,
    st.floats(0.2, 3.0),
    st.one_of(st.none(), st.integers(1, 250)),
    st.one_of(st.none(), st.floats(0.01, 1.0)),
)
def test_sampling_distribution_equals_naive(p, temperature, top_k, top_p):
    head, h, _ = _build(p)
    exact = VF.sampling_probs(head(h), temperature, top_k, top_p)
    got = head.sampling_probs(h, temperature, top_k, top_p)
    torch.testing.assert_close(got, exact, rtol=1e-8, atol=1e-10)
    assert torch.equal(head.greedy(h), head(h).argmax(-1))

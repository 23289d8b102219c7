"""torch.compile friendliness: the compact loss, greedy and sampling trace without graph breaks."""

import pytest
import torch
import torch._dynamo as dynamo

from conftest import make_vq


@pytest.mark.parametrize(
    "name",
    ["loss", "greedy", "sample", "sample_top_k_top_p"],
)
def test_no_graph_breaks(name):
    head = make_vq(V=500, K=32, d=16, dtype=torch.float32)
    head.validate = False  # the range check syncs on purpose; it is the one documented break
    head.code_index()  # built eagerly, reused while compiling
    h = torch.randn(8, 16, requires_grad=name == "loss")
    y = torch.randint(0, 500, (8,))
    fn = {
        "loss": lambda h: head.loss(h, y),
        "greedy": head.greedy,
        "sample": lambda h: head.sample(h, temperature=0.7),
        "sample_top_k_top_p": lambda h: head.sample(h, 0.8, top_k=5, top_p=0.9),
    }[name]
    dynamo.reset()
    explained = dynamo.explain(fn)(h)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


def test_validation_is_the_documented_break():
    head = make_vq(V=500, K=32, d=16, dtype=torch.float32)
    dynamo.reset()
    explained = dynamo.explain(head.loss)(torch.randn(4, 16), torch.randint(0, 500, (4,)))
    assert explained.graph_break_count >= 1

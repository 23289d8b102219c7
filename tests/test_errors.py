"""Every bad input raises a ValueError that names the argument and the offending value."""

import pytest
import torch

from conftest import make_vq
from vqlogits import DenseHead, VQLogitsHead, kmeans


@pytest.fixture
def head():
    return make_vq(dtype=torch.float32)


@pytest.mark.parametrize("cls", [VQLogitsHead, DenseHead])
def test_hidden_size_mismatch(cls):
    head = cls(33, 1000, 7) if cls is VQLogitsHead else cls(33, 1000)
    h = torch.randn(2, 32)
    for call in (head, lambda h: head.loss(h, torch.zeros(2, dtype=torch.long)), head.greedy, head.sample):
        with pytest.raises(ValueError, match=r"d_model=33.*\(2, 32\)"):
            call(h)


def test_targets_out_of_range(head):
    h = torch.randn(3, 33)
    with pytest.raises(ValueError, match=r"targets contains 1000, outside \[0, 1000\)"):
        head.loss(h, torch.tensor([0, 1000, 5]))
    with pytest.raises(ValueError, match=r"targets contains -3"):
        head.loss(h, torch.tensor([0, -3, 5]))
    with pytest.raises(ValueError, match=r"targets must have shape"):
        head.loss(h, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"targets must be an integer tensor"):
        head.loss(h, torch.zeros(3))
    head.loss(h, torch.tensor([0, -100, 5]))  # ignore_index is fine
    head.validate = False  # skips the range check (and its GPU sync)
    head.loss(h, torch.tensor([0, 1, 5]))


def test_bad_assignment(head):
    with pytest.raises(ValueError, match=r"assignment must have shape \(1000,\), got \(999,\)"):
        head.set_assignment(torch.zeros(999, dtype=torch.long))
    with pytest.raises(ValueError, match=r"assignment contains 7, outside \[0, codebook_size=7\)"):
        head.set_assignment(torch.full((1000,), 7))
    with pytest.raises(ValueError, match=r"assignment contains -1"):
        head.set_assignment(torch.full((1000,), -1))


@pytest.mark.parametrize("k", [0, -1, 1001])
def test_codebook_size_out_of_range(k):
    with pytest.raises(ValueError, match=rf"codebook_size must be an int in \[1, vocab_size=1000\], got {k}"):
        VQLogitsHead(33, 1000, k)
    with pytest.raises(ValueError, match="codebook_size"):
        VQLogitsHead.from_weight(torch.randn(1000, 4), k)


def test_bad_sampling_arguments(head):
    h = torch.randn(2, 33)
    for kw, pattern in [
        (dict(temperature=0.0), "temperature.*0.0"),
        (dict(temperature=-1.0), "temperature.*-1.0"),
        (dict(top_k=0), "top_k.*0"),
        (dict(top_p=0.0), r"top_p must be in \(0, 1\].*0.0"),
        (dict(top_p=1.5), "top_p.*1.5"),
    ]:
        with pytest.raises(ValueError, match=pattern):
            head.sample(h, **kw)


def test_bad_reduction_and_init(head):
    with pytest.raises(ValueError, match="reduction.*'avg'"):
        head.loss(torch.randn(2, 33), torch.zeros(2, dtype=torch.long), reduction="avg")
    with pytest.raises(ValueError, match="init.*'pca'"):
        VQLogitsHead.from_weight(torch.randn(100, 4), 4, init="pca")
    with pytest.raises(ValueError, match="counts must be a \\(100,\\) tensor"):
        VQLogitsHead.from_weight(torch.randn(100, 4), 4, init="frequency")


@pytest.mark.parametrize("other", [(33, 999, 7), (33, 1000, 8), (32, 1000, 7)], ids=["V", "K", "d"])
def test_loading_mismatched_state_dict(head, other):
    with pytest.raises(ValueError, match=r"state_dict\['(codebook|bias|assignment)'\] has shape"):
        VQLogitsHead(*other).load_state_dict(head.state_dict())


def test_loading_out_of_range_assignment(head):
    state = head.state_dict()
    state["assignment"] = torch.full((1000,), 9)
    with pytest.raises(ValueError, match="assignment contains 9"):
        VQLogitsHead(33, 1000, 7).load_state_dict(state)


def test_dense_mismatched_state_dict():
    with pytest.raises(ValueError, match=r"state_dict\['weight'\] has shape \(10, 4\)"):
        DenseHead(4, 11).load_state_dict(DenseHead(4, 10).state_dict())


def test_kmeans_bad_k():
    with pytest.raises(ValueError, match=r"k must be an int in \[1, n=10\], got 11"):
        kmeans(torch.randn(10, 2), 11)

"""Compress with any head and budget, then calibrate with the learned map."""

import json

import pytest
import torch

from test_hf import _tiny
from test_train import write_corpus
from vqlogits import load_pretrained
from vqlogits.data.corpora import load_corpus
from vqlogits.data.tokenizer import load_tokenizer
from vqlogits.heads import HybridHead, HybridTwoLevelHead, TwoLevelHead, VQLogitsHead, head_from_rows, size_for_budget
from vqlogits.hf.calibrate import calibrate, distill_loss
from vqlogits.hf.compress import compress


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("heads")
    corpus = write_corpus(root / "text", n_docs=40)
    source = root / "llama"
    source.mkdir()
    tok = load_tokenizer("bpe:300", load_corpus(str(corpus)))
    tok.save(str(source / "tokenizer.json"))
    _tiny("llama", tok.get_vocab_size()).save_pretrained(source)
    return source, corpus, root / "cache"


@pytest.mark.parametrize(
    "name,kind",
    [("vq", VQLogitsHead), ("hybrid", HybridHead), ("twolevel", TwoLevelHead), ("hybrid-twolevel", HybridTwoLevelHead)],
)
def test_compress_any_head_at_a_budget_round_trips(setup, tmp_path, name, kind):
    source, corpus, cache = setup
    out = compress(
        model=str(source),
        codebook_size=8,
        out=tmp_path / name,
        head=name,
        head_budget=0.5,
        corpus=str(corpus),
        cache=cache,
    )
    model = load_pretrained(out)
    head = model.get_output_embeddings()
    assert type(head) is kind
    V, d = head.vocab_size, head.d_model
    expected = {("head_bias" if k == "bias" else k): v for k, v in size_for_budget(name, 0.5, d, V).items()}
    assert sum(p.numel() for p in head.parameters()) <= 0.5 * V * d and head.codebook_size == expected[
        "codebook_size"
    ] + expected.get("n_frequent", 0)
    meta = json.loads((out / "vqlogits.json").read_text())
    assert meta["head"] == name
    ids = torch.randint(0, V, (2, 7))
    again = load_pretrained(out)
    assert torch.equal(again(ids).logits, model(ids).logits)


def test_heads_from_rows_approximate_the_dense_head():
    torch.manual_seed(0)
    dense = torch.randn(40, 8).repeat(10, 1) + 0.01 * torch.randn(400, 8)  # 40 directions, 10 tokens each
    h = torch.randn(64, 8)
    target = torch.softmax(h @ dense.T, -1)
    for name in ("vq", "twolevel"):
        sizes = {"codebook_size": 40, "bias": False, "token_dim": 2}
        head = head_from_rows(name, dense, sizes, progress=False)
        probs = torch.exp(torch.log_softmax(head(h).detach().float(), -1))
        assert float(0.5 * (probs - target).abs().sum(-1).mean()) < 0.1, name  # close to the dense distribution


def test_generic_distillation_loss_equals_its_naive_form():
    torch.manual_seed(0)
    head = TwoLevelHead(8, 50, 5, 3)
    with torch.no_grad():
        head.token_vectors.normal_()
    h, y, teacher = torch.randn(6, 8), torch.randint(0, 50, (6,)), torch.randn(6, 50)
    logp_s, logp_t = torch.log_softmax(head(h), -1), torch.log_softmax(teacher, -1)
    naive = -logp_s.gather(1, y[:, None]).mean() + 0.5 * (logp_t.exp() * (logp_t - logp_s)).sum(-1).mean()
    torch.testing.assert_close(distill_loss(h, head, teacher, y, 0.5), naive)


@pytest.mark.parametrize("name", ["vq", "hybrid-twolevel"])
def test_stage1_learns_the_map(setup, tmp_path, name):
    source, corpus, cache = setup
    out = compress(
        model=str(source),
        codebook_size=8,
        out=tmp_path / name,
        head=name,
        head_budget=0.3,
        corpus=str(corpus),
        cache=cache,
    )
    before = load_pretrained(out).get_output_embeddings().assignment.clone()
    kw = dict(
        budget_minutes=60,
        max_steps=20,
        stages="1",
        hidden_tokens=2048,
        block=32,
        cache=cache,
        reassign_every=5,
        reassign_frac=0.2,
    )
    summary = calibrate(folder=out, corpus=str(corpus), **kw)
    stage = summary["stages"]["1"]
    assert stage["reassign_every"] == 5 and len(stage["moved"]) >= 1 and any(m > 0 for m in stage["moved"])
    after = load_pretrained(out).get_output_embeddings()
    assert not torch.equal(after.assignment, before)
    if name == "hybrid-twolevel":
        frequent = after.assignment < after.n_frequent
        assert torch.equal(frequent, before < after.n_frequent)  # frequent tokens keep their own codes

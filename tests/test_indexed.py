"""IndexedHead: exact certified greedy against the dense argmax (ties, near-ties, large |h|), the
sampling distribution against its documented form, save / load, generation, errors."""

import math

import pytest
import torch

from vqlogits.cluster import balanced_kmeans
from vqlogits.heads.indexed import IndexedHead


def _clustered(V=600, d=24, groups=20, spread=0.05, seed=0):
    """Rows in tight groups: cluster bounds can certify."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(groups, d, generator=g) * 2
    return centres[torch.arange(V) % groups] + spread * torch.randn(V, d, generator=g)


@pytest.fixture(scope="module")
def heads():
    torch.manual_seed(0)
    W = torch.randn(700, 24)  # V not divisible by K: padded clusters
    W[5] = W[600]  # exact duplicates: logits tie exactly, argmax must give the smaller id
    W[650] = W[3]
    W[100] = W[40] * (1 + 1e-6)  # near-ties
    hidden = torch.randn(400, 24) @ torch.randn(24, 24)
    return W, IndexedHead.from_weight(W, 32, hidden=hidden), IndexedHead.from_weight(W, 32, spherical=True)


def _cases(W, d=24, seed=1):
    g = torch.Generator().manual_seed(seed)
    yield torch.randn(16, d, generator=g)
    yield torch.randn(5, d, generator=g) * 1000  # large |h|
    yield W[[5, 600, 3, 650, 40, 100]] * 3  # h along the tied and near-tied rows
    yield torch.zeros(2, d)  # every logit ties: token 0
    yield torch.randn(1, d, generator=g).double().float()


def test_balanced_kmeans_sizes():
    x = torch.randn(1000, 8)
    a = balanced_kmeans(x, 7)
    assert int(torch.bincount(a, minlength=7).max()) <= math.ceil(1000 / 7) and a.shape == (1000,)


def test_exact_greedy_equals_dense_argmax(heads):
    W, plain, spherical = heads
    for head in (plain, spherical):
        for h in _cases(W):
            ref = (h @ W.T).argmax(-1)
            assert torch.equal(head.greedy(h), ref)
            assert torch.equal(head.greedy(h, probes=1), ref)
            assert torch.equal(head.greedy(h.reshape(1, *h.shape)), ref[None])  # any batch shape
    assert plain.greedy(W[[5]] * 3).item() == 5 and plain.greedy(W[[650]] * 3).item() == 3  # ties: smallest id


def test_both_certificates_are_exercised():
    W = _clustered()
    head = IndexedHead.from_weight(W, 20, probes=2)
    h = W[[7, 300, 33]] * 4
    ids, stats = head.greedy_stats(h)
    assert torch.equal(ids, (h @ W.T).argmax(-1))
    assert stats["certified"] >= 1  # the cluster bounds alone
    loose = IndexedHead.from_weight(torch.randn(600, 24), 20, probes=1)
    h = torch.randn(8, 24)
    ids, stats = loose.greedy_stats(h)
    assert torch.equal(ids, (h @ loose.weight.T).argmax(-1))
    assert stats["screened_rows"] > 0 and stats["certified"] < 8  # the fp16 screen


def test_approximate_greedy(heads):
    W, head, _ = heads
    h = torch.randn(200, 24)
    ref = (h @ W.T).argmax(-1)
    full = head.greedy(h, exact=False, probes=head.clusters)
    assert torch.equal(full, ref)
    agree = [
        float((head.greedy(h[i : i + 1], exact=False, probes=p) == ref[i]).float()) for p in (1, 8) for i in range(50)
    ]
    assert sum(agree[:50]) <= sum(agree[50:])  # more probes, no fewer agreements
    logits = head(h[:4], probes=3)
    assert torch.equal(logits.argmax(-1), head.greedy(h[:4], exact=False, probes=3))


def test_forward_is_exact_on_probed_tokens(heads):
    W, head, _ = heads
    h = torch.randn(3, 24)
    _, _, union, ids, _ = head._probe(h, 4)
    real = ids < head.vocab_size
    torch.testing.assert_close(head(h, probes=4)[:, ids[real]], (h @ W.T)[:, ids[real]])
    torch.testing.assert_close(head.dense_logits(h), h @ W.T)
    assert torch.equal(head.weight, W)


def _documented_probs(head, W, h, T, probes):
    """P(v) = m_k / sum m * softmax_k(logit / T), written out from the docstring."""
    z, norm, union, _, _ = head._probe(h, probes)
    logits = h @ W.T / T  # (N, V)
    cluster = head._cluster_of
    K = head.clusters
    out = torch.zeros_like(logits)
    for n in range(h.shape[0]):
        log_m = torch.empty(K)
        for k in range(K):
            members = cluster == k
            if k in union.tolist():
                log_m[k] = torch.logsumexp(logits[n, members], 0)
            else:
                log_m[k] = math.log(int(members.sum())) + z[n, k] / T + 0.5 * (norm[n, 0] * head.spread[k] / T) ** 2
        p_cluster = torch.softmax(log_m, 0)
        for k in range(K):
            members = cluster == k
            out[n, members] = p_cluster[k] * torch.softmax(logits[n, members], 0)
    return out


@pytest.mark.parametrize("T", [1.0, 0.7])
def test_sampling_distribution_has_its_documented_form(heads, T):
    W, head, _ = heads
    h = torch.randn(3, 24)
    probs = head.sampling_probs(h, temperature=T, probes=3)
    torch.testing.assert_close(probs, _documented_probs(head, W, h, T, 3), rtol=1e-4, atol=1e-6)
    assert bool((probs > 0).all())  # every token keeps a non-zero probability
    filtered = head.sampling_probs(h, top_k=5, probes=3)
    assert torch.equal((filtered > 0).sum(-1), torch.full((3,), 5))


def test_sampled_frequencies_match_sampling_probs(heads):
    W, head, _ = heads
    h = torch.randn(1, 24) * 0.3
    probs = head.sampling_probs(h, probes=2)[0]
    n = 20000
    g = torch.Generator().manual_seed(0)
    draws = head.sample(h.expand(n, -1), probes=2, generator=g)
    counts = torch.bincount(draws, minlength=head.vocab_size).double()
    top = torch.argsort(probs, descending=True)[:20]
    expected = n * probs[top].double()
    sd = torch.sqrt(expected * (1 - probs[top].double()))
    assert bool(((counts[top] - expected).abs() <= 5 * sd + 1).all())
    wrong = probs[top].roll(1).double()  # control: the same check rejects the top probabilities shifted by one rank
    assert not bool(((counts[top] - n * wrong).abs() <= 5 * sd + 1).all())


def test_state_round_trip_and_errors(heads):
    W, head, _ = heads
    again = IndexedHead(24, 700, 32, head.probes)
    again.load_state_dict(head.state_dict())
    h = torch.randn(4, 24)
    assert torch.equal(again.greedy(h, exact=False), head.greedy(h, exact=False)) and torch.equal(again.weight, W)
    with pytest.raises(ValueError, match=r"state_dict\['rows'\] has shape"):
        IndexedHead(24, 700, 16).load_state_dict(head.state_dict())
    with pytest.raises(ValueError, match="clusters must be an int in \\[1, vocab_size=700\\], got 701"):
        IndexedHead(24, 700, 701)
    with pytest.raises(ValueError, match="probes must be an int >= 1, got 0"):
        head.greedy(h, exact=False, probes=0)
    with pytest.raises(ValueError, match="h must have last dimension d_model=24"):
        head.greedy(torch.randn(2, 23))


def test_accelerate_round_trip_and_generation(tmp_path):
    from test_hf import _tiny
    from test_train import write_corpus
    from vqlogits import load_pretrained
    from vqlogits.cli import main
    from vqlogits.data.corpora import load_corpus
    from vqlogits.data.tokenizer import load_tokenizer
    from vqlogits.hf.accelerate import accelerate
    from vqlogits.hf.generate import generate

    corpus = write_corpus(tmp_path / "text", n_docs=40)
    source = tmp_path / "llama"
    tok = load_tokenizer("bpe:300", load_corpus(str(corpus)))
    source.mkdir()
    tok.save(str(source / "tokenizer.json"))
    original = _tiny("llama", tok.get_vocab_size())
    original.save_pretrained(source)
    out = accelerate(
        model=str(source),
        clusters=16,
        out=tmp_path / "fast",
        probes=4,
        corpus=str(corpus),
        hidden_tokens=1024,
        cache=tmp_path / "cache",
    )
    model = load_pretrained(out)
    head = model.get_output_embeddings()
    assert isinstance(head, IndexedHead) and head.probes == 4
    ids = torch.randint(1, tok.get_vocab_size(), (2, 6))
    torch.testing.assert_close(head.dense_logits(model.base_model(ids).last_hidden_state), original(ids).logits)
    ours = generate(model, ids, max_new_tokens=8)  # exact greedy: the original model's tokens
    theirs = original.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(ours, theirs)
    hf = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)  # through forward: approximate greedy
    assert hf.shape == (2, 10)
    assert main(["generate", str(out), "w1 w2", "--max-new-tokens", "4", "--approximate"]) == 0
    with pytest.raises(ValueError, match="saved head has vocab_size"):
        load_pretrained(out, model=_tiny("llama", 123))


@pytest.mark.parametrize("kw", [dict(), dict(temperature=0.7, top_k=40), dict(temperature=1.3, top_p=0.8)])
def test_exact_sampling_is_the_dense_distribution(heads, kw):
    from conftest import chi_square_p
    from vqlogits.functional import sampling_probs

    W, head, _ = heads
    h = torch.randn(1, 24, generator=torch.Generator().manual_seed(3)) * 0.4
    p = sampling_probs(h @ W.T, **kw)[0]
    q = head.proposal(h, probes=2, **kw)[0]
    assert float((p - q).abs().sum()) / 2 > 0.05  # the draft is far enough off for the test to mean something
    n, g = 30000, torch.Generator().manual_seed(0)
    draws = head.sample(h.expand(n, -1), probes=2, generator=g, exact=True, **kw)
    counts = torch.bincount(draws, minlength=head.vocab_size)
    assert chi_square_p(counts, p) > 1e-3
    assert bool((counts[p == 0] == 0).all())  # nothing outside top-k / top-p
    drafts = torch.multinomial(q.expand(n, -1), 1, generator=g).squeeze(1)  # control: the drafts alone fail
    assert chi_square_p(torch.bincount(drafts, minlength=head.vocab_size), p) < 1e-6


def test_a_bf16_index_is_exact_for_its_bf16_rows(heads):
    """Cast to bf16 (a bf16 model), the head's logits are those of its bf16 rows: exact greedy is
    their fp64 argmax (ties to the smallest id), exact sampling their distribution (fp32 logits)."""
    from conftest import chi_square_p
    from vqlogits.functional import sampling_probs

    W, head, _ = heads
    low = IndexedHead.from_weight(W, 32, hidden=torch.randn(400, 24)).to(torch.bfloat16)
    assert low.rows.dtype == torch.bfloat16
    Wb = W.bfloat16().double()
    for h in _cases(W):
        h = h.bfloat16()
        logits = h.double() @ Wb.T
        ref = torch.where(logits == logits.max(-1, keepdim=True).values, torch.arange(700), 700).min(-1).values
        assert torch.equal(low.greedy(h), ref)
        assert low.greedy(h, exact=False).shape == ref.shape
    h = (torch.randn(1, 24, generator=torch.Generator().manual_seed(3)) * 0.4).bfloat16()
    p = sampling_probs(h.double() @ Wb.T, temperature=0.7)[0]
    draws = low.sample(h.expand(30000, -1), probes=2, temperature=0.7, generator=torch.Generator(), exact=True)
    assert chi_square_p(torch.bincount(draws, minlength=700), p) > 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_few_rows_screen_with_the_int8_kernel_many_with_bf16(dtype):
    """Up to INT8_MAX_ROWS rows the exact paths use the int8 kernel's screen, beyond it the bf16
    GEMM's; both give the fp64 argmax of the head's rows (ties to the smallest id)."""
    from vqlogits.heads.indexed import INT8_MAX_ROWS

    W = _clustered(V=900, d=32, groups=30, spread=0.3).to(dtype)
    W[500] *= 3
    W[11] = W[500]  # an exact tie at the top for h along it: 11 wins
    head = IndexedHead.from_weight(W.float(), 30, probes=1).to(dtype)
    g = torch.Generator().manual_seed(5)
    for n, screen in ((1, "int8"), (INT8_MAX_ROWS, "int8"), (INT8_MAX_ROWS + 1, "bf16"), (16, "bf16")):
        h = torch.cat([W[[500]].float() * 2, torch.randn(n - 1, 32, generator=g) * 3]).to(dtype)
        logits = h.double() @ W.double().T
        want = torch.where(logits == logits.max(-1, keepdim=True).values, torch.arange(900), 900).min(-1).values
        ids, stats = head.exact_argmax(h)
        assert torch.equal(ids, want) and stats["screen"] == screen and int(ids[0]) == 11
        assert torch.equal(head.greedy(h), want)


def test_a_bf16_index_drafts_rank_near_ties_in_fp32():
    """A bf16 model's probe GEMM rounds its logits to bf16: 20.0625 and 20.0 both become 20. The
    approximate greedy re-ranks its best probed tokens in fp32, so it still picks 20.0625's token."""
    W = torch.randn(700, 24, generator=torch.Generator().manual_seed(2)) * 0.1
    W[10], W[600] = 0.0, 0.0
    W[10, 0] = W[600, 0] = 20.0
    W[600, 1] = 0.0625
    head = IndexedHead.from_weight(W, 32).to(torch.bfloat16)
    h = torch.zeros(1, 24)
    h[0, :2] = 1.0
    h = h.bfloat16()
    rounded = h @ W[[10, 600]].bfloat16().T
    assert float(rounded[0, 0]) == float(rounded[0, 1]) == 20.0  # tied by the rounding
    assert int(head.greedy(h, exact=False, probes=32)) == 600 == int(head.greedy(h))

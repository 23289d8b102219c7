"""Verified decoding through an indexed head: the dense model's greedy tokens exactly (batch 1 and
more, any block size, end-of-sequence, a fallback when the blocks emit too little per step), and samples from the
dense model's distribution (chi-square against the exact joint law of two tokens)."""

import pytest
import torch
import transformers as T

from conftest import chi_square_p
from vqlogits.functional import sampling_probs
from vqlogits.heads import IndexedHead
from vqlogits.heads.probes import draft as draft_probes_for
from vqlogits.hf.generate import break_even, generate
from vqlogits.hf.load import use_head


def _pair(V=300, d=32, clusters=16, probes=8, seed=0, scale=1.0):
    """(the original tiny Llama, a copy whose head is an index over the original's rows)."""
    torch.manual_seed(seed)
    config = T.LlamaConfig(
        vocab_size=V,
        hidden_size=d,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
        eos_token_id=None,  # no token ends a row unless a test says so
    )
    original = T.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        original.lm_head.weight.mul_(scale)
    fast = T.LlamaForCausalLM(config).eval()
    fast.load_state_dict(original.state_dict())
    W = original.lm_head.weight.detach().clone()
    use_head(fast, IndexedHead.from_weight(W, clusters, probes=probes))
    return original, fast


@pytest.mark.parametrize("batch,block", [(1, 8), (1, 1), (3, 3), (4, 32)])
def test_verified_greedy_is_the_original_models(batch, block):
    original, fast = _pair(clusters=32, scale=20)  # a peaked head: the drafts mostly agree
    ids = torch.randint(1, 300, (batch, 5), generator=torch.Generator().manual_seed(batch))
    stats = {}
    ours = generate(fast, ids, max_new_tokens=24, block=block, stats=stats, draft_probes=4)
    theirs = original.generate(ids, max_new_tokens=24, do_sample=False, pad_token_id=0)
    assert torch.equal(ours, theirs)
    if batch == 1:
        assert stats["blocks"] > 0 and stats["accepted"] > 0
    else:  # the rows' probes cover more than DRAFT_SHARE_MAX of the clusters: the exact screen alone is cheaper
        assert stats["fallback_at"] == 0


def test_blocks_grow_while_every_draft_is_kept(monkeypatch):
    original, fast = _pair()
    head = fast.get_output_embeddings()
    monkeypatch.setattr(
        head, "greedy", lambda h, exact=False, probes=None: head.exact_argmax(h)[0]
    )  # a perfect drafter
    ids = torch.randint(1, 300, (1, 5), generator=torch.Generator().manual_seed(5))
    stats = {}
    ours = generate(fast, ids, max_new_tokens=60, block=2, stats=stats)
    assert torch.equal(ours, original.generate(ids, max_new_tokens=60, do_sample=False, pad_token_id=0))
    assert stats["accepted"] == stats["drafted"] and stats["blocks"] == 5  # 3 + 5 + 9 + 17 + 26 tokens


def test_verified_greedy_stops_rows_at_the_end_of_sequence_and_streams():
    original, fast = _pair(scale=20)
    ids = torch.randint(1, 300, (3, 4), generator=torch.Generator().manual_seed(7))
    theirs = original.generate(ids, max_new_tokens=16, do_sample=False, pad_token_id=0)
    eos = int(theirs[0, 9])  # a token the first row emits mid-way
    streamed = []
    ours = generate(fast, ids, max_new_tokens=16, eos_token_id=eos, on_tokens=streamed.append)
    expected = original.generate(ids, max_new_tokens=16, do_sample=False, eos_token_id=eos, pad_token_id=eos)
    assert torch.equal(ours[:, : expected.shape[1]], expected)
    assert bool((ours[0, 9:] == eos).all())
    assert torch.equal(torch.cat([ids, *streamed], 1), ours)  # the streamed runs are the output


def test_low_acceptance_falls_back_and_stays_exact():
    original, fast = _pair(clusters=32, probes=1, scale=0.2)  # a flat head: the drafts rarely agree
    ids = torch.randint(1, 300, (2, 5), generator=torch.Generator().manual_seed(3))
    stats = {}
    ours = generate(fast, ids, max_new_tokens=40, block=4, stats=stats)
    assert torch.equal(ours, original.generate(ids, max_new_tokens=40, do_sample=False, pad_token_id=0))
    assert stats["fallback_at"] is not None
    assert stats["block_tokens"] < break_even(fast, fast.get_output_embeddings()) * stats["backbone_steps"]


def test_draft_probes_grow_with_the_batch_and_a_wide_batch_decodes_dense():
    # K / 32 a row times ceil(sqrt(B)), the rule measured on Gemma-3-270M (heads/probes.py)
    assert [draft_probes_for(1024, b) for b in (1, 2, 4, 5, 16, 64)] == [32, 64, 64, 96, 128, 256]
    assert draft_probes_for(16, 1) == 1 and draft_probes_for(64, 10**6) == 64
    original, fast = _pair(clusters=64, scale=20)
    for batch in (1, 16):  # 2 probes a draft, or 8 for each of 16 rows: more than half the clusters
        ids = torch.randint(1, 300, (batch, 5), generator=torch.Generator().manual_seed(11))
        stats = {}
        ours = generate(fast, ids, max_new_tokens=12, stats=stats)
        assert torch.equal(ours, original.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=0))
        assert (stats["fallback_at"] == 0) == (batch == 16) and (stats["blocks"] > 0) == (batch == 1)


def test_break_even_counts_the_backbone_s_weights_but_not_its_embedding():
    _, fast = _pair()
    # per layer: q, o 32 x 32; k, v 32 x 16 (2 of 4 heads); gate, up, down 32 x 64; 2 norms; + the final norm
    body = 2 * (2 * 32 * 32 + 2 * 32 * 16 + 3 * 32 * 64 + 2 * 32) + 32
    share = 300 * 32 / (300 * 32 + body)
    assert break_even(fast, fast.get_output_embeddings()) == pytest.approx((1 - share) / (1 - share / 2), rel=1e-12)


def test_verify_needs_an_indexed_head_and_approximate_is_opt_in():
    original, fast = _pair(scale=20)
    ids = torch.randint(1, 300, (1, 5))
    approximate = generate(fast, ids, max_new_tokens=8, verify=False)
    assert approximate.shape == (1, 13)
    with pytest.raises(ValueError, match="verify=True needs an indexed head"):
        from vqlogits.heads import VQLogitsHead

        use_head(original, VQLogitsHead(32, 300, 8))
        generate(original, ids, verify=True)
    with pytest.raises(ValueError, match="block must be an int"):
        generate(fast, ids, block=0)


def _joint_law(original, prompt, new, **kw):
    """The exact law of the last two of ``new`` sampled tokens (V x V), by enumeration."""
    V = original.config.vocab_size

    def next_probs(ctx):
        return sampling_probs(original(ctx).logits[:, -1], **kw)[0]

    with torch.no_grad():
        paths = [(prompt, 1.0)]
        for _ in range(new - 2):  # tokens before the last two: summed over
            paths = [
                (torch.cat([c, torch.tensor([[a]])], 1), w * float(p))
                for c, w in paths
                for a, p in enumerate(next_probs(c))
                if p > 0
            ]
        law = torch.zeros(V, V, dtype=torch.float64)
        for ctx, w in paths:
            first = next_probs(ctx)
            for a in torch.nonzero(first).squeeze(1).tolist():
                law[a] += w * float(first[a]) * next_probs(torch.cat([ctx, torch.tensor([[a]])], 1)).double()
    return law.reshape(-1)


@pytest.mark.parametrize("new,kw", [(2, dict()), (3, dict(temperature=0.8, top_k=6)), (2, dict(top_p=0.7))])
def test_verified_sampling_draws_the_dense_joint_distribution(new, kw):
    original, fast = _pair(V=40, d=16, clusters=8, probes=2, scale=40)
    prompt = torch.randint(1, 40, (1, 4), generator=torch.Generator().manual_seed(1))
    n, g = 12000, torch.Generator().manual_seed(0)
    stats = {}
    rows = prompt.expand(n, -1)  # n independent samples; one probe a draft, so that drafts run at this batch
    out = generate(fast, rows, max_new_tokens=new, do_sample=True, generator=g, stats=stats, draft_probes=1, **kw)
    counts = torch.bincount(out[:, -2] * 40 + out[:, -1], minlength=1600)
    law = _joint_law(original, prompt, new, **kw)
    assert chi_square_p(counts, law) > 1e-3
    assert 0 < stats["accepted"] < stats["drafted"]  # drafts were kept and rejected
    # Control: the same counts against a law 3% off in total variation are rejected.
    first, second = law.topk(2).indices
    off = law.clone()
    off[first] -= 0.03
    off[second] += 0.03
    assert chi_square_p(counts, off) < 1e-6

"""Quantized heads and parts: exact packing, the rounding bound, HQQ against RTN, the head against
its dequantized dense equivalent (logits, loss, gradients, greedy, sampling), storage as stored."""

import json

import pytest
import safetensors
import torch
import torch.nn.functional as F

from conftest import chi_square_p
from vqlogits import quant
from vqlogits.functional import sampling_probs
from vqlogits.heads import QuantizedHead


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6, 7, 8])
def test_packing_is_exact(bits):
    g = torch.Generator().manual_seed(bits)
    for d in (8, 13, 96):
        q = torch.randint(0, 2**bits, (5, d), generator=g, dtype=torch.uint8)
        packed = quant.pack(q, bits)
        assert packed.dtype == torch.uint8 and packed.shape == (5, -(-d * bits // 8))  # really that many bytes
        assert torch.equal(quant.unpack(packed, bits, d), q)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_rtn_error_is_within_its_bound(bits):
    w = torch.randn(300, 64, generator=torch.Generator().manual_seed(bits)) * 0.05 + 0.01
    q, scale, offset = quant.quantize(w, bits, 32, "rtn")
    assert int(q.max()) <= 2**bits - 1 and scale.dtype == offset.dtype == torch.float16
    err = (quant.dequantize(q, scale, offset, 32) - w).abs().view(300, 2, 32)
    low = w.view(300, 2, 32).amin(-1)
    # plus fp32's rounding of q * scale + offset and of the difference: 2 ulp of the group's largest value
    ulps = 2 * torch.finfo(torch.float32).eps * w.abs().view(300, 2, 32).amax(-1)
    bound = (torch.maximum(scale.float() / 2, (offset.float() - low).abs()) + ulps)[..., None]
    assert bool((err <= bound).all())
    assert float((err / bound).max()) > 0.9  # and it is nearly reached: the bound is the right size


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_hqq_beats_round_to_nearest(bits):
    w = torch.randn(512, 96, generator=torch.Generator().manual_seed(0)) * 0.05
    errors = {m: float((quant.dequantize(*quant.quantize(w, bits, 32, m), 32) - w).norm()) for m in quant.METHODS}
    assert errors["hqq"] < errors["rtn"]


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="bits must be an int in \\[1, 8\\], got 9"):
        quant.check(9, 32, 64)
    with pytest.raises(ValueError, match="group_size must be a positive int that divides the row length 64, got 48"):
        quant.quantize(torch.randn(4, 64), 4, 48)


@pytest.fixture(scope="module")
def head():
    torch.manual_seed(0)
    W = torch.randn(700, 48) * 0.3
    W[5] = W[600]  # duplicate rows: tied logits, the smaller id wins
    h = QuantizedHead.from_weight(W, bits=4, group_size=16, bias=True)
    with torch.no_grad():
        h.bias.copy_(torch.randn(700) * 0.1)
        h.gain.copy_(torch.randn_like(h.gain) * 0.01)  # a calibrated head: moved scales and offsets
        h.shift.copy_(torch.randn_like(h.shift) * 0.1)
    return h


def test_logits_loss_and_gradients_equal_the_dequantized_dense_head(head):
    h = torch.randn(3, 7, 48, dtype=torch.float32, requires_grad=True)
    y = torch.randint(0, 700, (3, 7))
    W = head.weight.detach()
    torch.testing.assert_close(head(h), h @ W.T + head.bias)
    ref_h = h.detach().clone().requires_grad_(True)
    loss = head.loss(h, y)
    ref = F.cross_entropy((ref_h.double() @ W.double().T + head.bias.double()).flatten(0, 1), y.flatten())
    torch.testing.assert_close(loss.double(), ref, rtol=1e-6, atol=1e-6)
    loss.backward()
    ref.backward()
    torch.testing.assert_close(h.grad, ref_h.grad, rtol=1e-4, atol=1e-6)


def test_greedy_and_sampling(head):
    h = torch.cat([torch.randn(20, 48), head.weight[5:6].detach() * 10])
    assert torch.equal(head.greedy(h), (h @ head.weight.T + head.bias).argmax(-1))
    probs = sampling_probs(head(h[:1]).detach(), temperature=0.8, top_k=30)[0]
    draws = head.sample(h[:1].expand(20000, -1), temperature=0.8, top_k=30, generator=torch.Generator().manual_seed(0))
    assert chi_square_p(torch.bincount(draws, minlength=700), probs) > 1e-3


def test_storage_is_packed_and_fp16(head, tmp_path):
    state = head.state_dict()
    assert set(state) == {"packed", "scale", "offset", "bias"}  # the moves are folded into scale and offset
    assert state["packed"].dtype == torch.uint8 and state["packed"].shape == (700, 48 * 4 // 8)
    assert state["scale"].dtype == state["offset"].dtype == torch.float16
    again = QuantizedHead(48, 700, bits=4, group_size=16, bias=True)
    again.load_state_dict(state)
    assert float(again.gain.detach().abs().max()) == 0 and torch.equal(again.packed, head.packed)
    torch.testing.assert_close(again.weight, head.weight, rtol=2e-3, atol=2e-3)  # fp16 scales and offsets
    assert head.stored_bytes() == 700 * 24 + 700 * 3 * 2 * 2 + 700 * 4


def test_compress_quantized_and_hybrid_parts_end_to_end(tmp_path, capsys):
    from test_hf import _tiny
    from test_train import write_corpus
    from vqlogits import load_pretrained
    from vqlogits.cli import main
    from vqlogits.data.corpora import load_corpus
    from vqlogits.data.tokenizer import load_tokenizer
    from vqlogits.hf.calibrate import calibrate
    from vqlogits.hf.compress import compress
    from vqlogits.hf.folder import describe

    corpus = write_corpus(tmp_path / "text", n_docs=30)
    source = tmp_path / "llama"
    source.mkdir()
    tok = load_tokenizer("bpe:300", load_corpus(str(corpus)))
    tok.save(str(source / "tokenizer.json"))
    original = _tiny("llama", tok.get_vocab_size())
    original.save_pretrained(source)
    cache = tmp_path / "cache"
    out = compress(model=str(source), out=tmp_path / "q4", head="quantized", bits=4, group_size=16, cache=cache)
    with safetensors.safe_open(out / "model.safetensors", "pt") as f:
        assert f.get_tensor("lm_head.packed").dtype == torch.uint8
    summary = describe(out)
    assert summary["head_bytes"] == quant.stored_bytes(300, 32, 4, 16) and summary["head_params"] == 300 * 32
    model = load_pretrained(out)
    ids = torch.randint(1, 300, (2, 6))
    W = original.get_output_embeddings().weight.detach()
    with torch.no_grad():
        hidden = model.base_model(ids).last_hidden_state
        assert float((model.get_output_embeddings()(hidden) - hidden @ W.T).abs().max()) < 0.05  # 4-bit rows of W
    assert main(["generate", str(out), "w1 w2", "--max-new-tokens", "3"]) == 0
    before = model.get_output_embeddings().state_dict()["scale"].clone()
    summary = calibrate(
        folder=out,
        corpus=str(corpus),
        budget_minutes=60,
        max_steps=5,
        stages="1",
        hidden_tokens=1024,
        block=32,
        cache=cache,
    )
    assert summary["stages"]["1"]["steps"] == 5
    assert not torch.equal(load_pretrained(out).get_output_embeddings().state_dict()["scale"], before)  # it trained
    parts = compress(
        model=str(source),
        codebook_size=8,
        out=tmp_path / "ht4",
        head="hybrid-twolevel",
        head_budget=0.5,
        part_bits=4,
        corpus=str(corpus),
        cache=cache,
    )
    plain = compress(
        model=str(source),
        codebook_size=8,
        out=tmp_path / "ht",
        head="hybrid-twolevel",
        head_budget=0.5,
        corpus=str(corpus),
        cache=cache,
    )
    meta = json.loads((parts / "vqlogits.json").read_text())
    assert set(meta["quantized_parts"]) == {"codebook", "token_vectors"}
    with safetensors.safe_open(parts / "model.safetensors", "pt") as f:
        assert "lm_head.codebook.packed" in f.keys() and "lm_head.codebook" not in f.keys()
    assert describe(parts)["head_bytes"] < 0.5 * describe(plain)["head_bytes"]
    assert describe(parts)["head_params"] == describe(plain)["head_params"]
    a, b = (load_pretrained(d).get_output_embeddings().codebook.detach() for d in (parts, plain))
    assert float((a - b).abs().max()) <= float(b.abs().max()) / 7  # 4 bits of each row
    capsys.readouterr()


def test_quantizing_in_row_chunks_changes_nothing_per_row(monkeypatch):
    from vqlogits import quant

    w = torch.randn(100, 64, generator=torch.Generator().manual_seed(0))
    for method in ("rtn", "hqq"):
        whole = quant.quantize(w, 4, 32, method)
        monkeypatch.setattr(quant, "QUANTIZE_ROWS", 30)
        chunked = quant.quantize(w, 4, 32, method)
        monkeypatch.undo()
        for a, b in zip(whole, chunked, strict=True):
            assert a.shape == b.shape
        assert torch.equal(whole[0], chunked[0]) or method == "hqq"  # rtn is row-local: identical
        err = lambda q, s, o: (quant.dequantize(q, s, o, 32) - w).abs().mean()  # noqa: E731
        assert err(*chunked) <= 1.05 * err(*whole)  # hqq's solver stops on the chunk's error: as good


def test_q8_0_matrices_round_trip_in_8_bits_and_nothing_else_is_taken_for_one():
    from vqlogits.quant import from_q8, lossless_q8

    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 64, generator=g)
    groups = x.view(300, 2, 32)
    amax = groups.abs().amax(-1, keepdim=True).clamp_min(1e-30)
    w = (torch.round(groups * 127 / amax) * (amax / 127).half().float()).view(300, 64)  # as llama.cpp writes it
    w[5] = 0.0  # an all-zero row (a padding token)
    codes, scales = lossless_q8(w)
    assert codes.dtype == torch.int8 and scales.dtype == torch.float16 and torch.equal(from_q8(codes, scales), w)
    assert lossless_q8(x) is None and lossless_q8(w[:, :48]) is None  # not Q8_0; a width not in groups of 32
    off = w.clone()
    off[299, 63] = torch.nextafter(off[299, 63], torch.tensor(float("inf")))  # one weight one ulp off
    assert lossless_q8(off) is None


def test_rows_held_dequantizes_once_and_gives_the_same_logits(monkeypatch):
    head = QuantizedHead.from_weight(torch.randn(300, 64), 3, 32, method="rtn", bias=True).eval()
    with torch.no_grad():
        head.bias.normal_()
    h = torch.randn(4, 64)
    with torch.no_grad():
        expected = head(h)
    calls = []
    rows = QuantizedHead.rows
    monkeypatch.setattr(QuantizedHead, "rows", lambda self, *a, **k: calls.append(1) or rows(self, *a, **k))
    with head.rows_held(), torch.no_grad():
        assert all(torch.equal(head(h), expected) for _ in range(3))
        assert len(calls) == 1
        head.gain.add_(0.1)  # a moved scale is dequantized afresh
        moved = head(h)
        assert len(calls) == 2 and not torch.allclose(moved, expected)
    with head.rows_held():  # with autograd on, gradients still reach the scales
        head(h).sum().backward()
    assert head.gain.grad is not None and bool(head.gain.grad.abs().sum() > 0)
    assert head._held is None  # nothing kept after the block

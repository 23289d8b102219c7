"""A VQ-family head whose codebook is held as 4-bit groups greedy-decodes through the int4 screen:
the fp64 argmax of its full logits (biases, ties across codes, empty codes), back to fp32 once the
codebook moves, refused for codes that are not the codebook's, and so loaded from a folder saved
with ``part_bits`` 4."""

import pytest
import torch

from test_screen import truth
from vqlogits import quant
from vqlogits.heads import FrequentHead, VQLogitsHead
from vqlogits.screens.int4 import available

pytestmark = pytest.mark.skipif(not available(4, 32, 64), reason="no int4 CPU kernel in this PyTorch")


def _int4_codes(K, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (K, d), generator=g)
    scale = (torch.rand(K, d // 32, generator=g) * 0.02 + 0.005).half()
    offset = (-8 * scale.float() + 0.01 * torch.randn(K, d // 32, generator=g)).half()
    return q, scale, offset


def _held_head(V=500, K=40, d=64):
    """Codes 1 and 2 equal, with the same best bias (1.0) on tokens ``t1`` < ``t2``: an exact tie
    across codes for h along code 1; code 5 holds no token."""
    g = torch.Generator().manual_seed(1)
    q, scale, offset = _int4_codes(K, d)
    q[2], scale[2], offset[2] = q[1], scale[1], offset[1]
    head = VQLogitsHead(d, V, K)
    assignment = head.assignment.clone()
    assignment[assignment == 5] = 6
    head.set_assignment(assignment)
    t1, t2 = int(torch.nonzero(assignment == 1)[-1]), int(torch.nonzero(assignment == 2)[0])
    with torch.no_grad():
        head.codebook.copy_(quant.dequantize(q, scale, offset, 32))
        head.bias.copy_(torch.randn(V, generator=g) * 0.05)
        head.bias[[t1, t2]] = 1.0
    head.hold_int4_codebook(q, scale, offset, 32)
    h = torch.cat([torch.randn(30, d, generator=g) * 3, head.codebook[1:2].detach().expand(2, -1) * 40])
    return head, h, (q, scale, offset), min(t1, t2)


def _full(head):
    return head.codebook.detach()[head.assignment], head.bias.detach()


def test_greedy_from_4_bit_codes_is_the_fp64_argmax():
    head, h, _, tied = _held_head()
    assert head._int4_screen() is not None
    ids = head.greedy(h)
    assert torch.equal(ids, truth(h, *_full(head)))
    assert int(ids[-1]) == tied  # the tie across codes goes to the smaller token id
    assert not (head.assignment[ids] == 5).any()
    assert torch.equal(head.greedy(h.view(2, 16, -1)).flatten(), ids)


def test_a_moved_codebook_decodes_from_fp32_again():
    head, h, _, _ = _held_head()
    with torch.no_grad():
        head.codebook[0] += 0.5  # a calibration step: the held codes are no longer the codebook
    assert head._int4_screen() is None
    assert torch.equal(head.greedy(h), head(h).argmax(-1))


def test_codes_that_are_not_the_codebook_are_refused():
    head, _, (q, scale, offset), _ = _held_head()
    with pytest.raises(ValueError, match="do not dequantize to the codebook"):
        head.hold_int4_codebook((q + 1) % 16, scale, offset, 32)
    with pytest.raises(ValueError, match=r"group_size must be one of \(32, 64, 128, 256\) .* got 16"):
        head.hold_int4_codebook(q, scale, offset, 16)


def test_a_folder_with_4_bit_parts_decodes_from_them(tmp_path):
    from test_hf import _tiny
    from test_train import write_corpus
    from vqlogits import load_pretrained
    from vqlogits.data.corpora import load_corpus
    from vqlogits.data.tokenizer import load_tokenizer
    from vqlogits.hf.compress import compress

    corpus = write_corpus(tmp_path / "text", n_docs=30)
    source = tmp_path / "llama"
    source.mkdir()
    tok = load_tokenizer("bpe:300", load_corpus(str(corpus)))
    tok.save(str(source / "tokenizer.json"))
    _tiny("llama", tok.get_vocab_size()).save_pretrained(source)  # d = 32: one group of 32 a row
    out = compress(
        model=str(source),
        out=tmp_path / "f4",
        head="frequent",
        head_budget=0.5,
        part_bits=4,
        corpus=str(corpus),
        cache=tmp_path / "cache",
    )
    model = load_pretrained(out)
    head = model.get_output_embeddings()
    assert isinstance(head, FrequentHead) and head._int4_screen() is not None
    with torch.no_grad():
        head.bias.copy_(torch.randn(head.vocab_size, generator=torch.Generator().manual_seed(0)) * 0.1)
        h = model.base_model(torch.randint(1, 300, (3, 8))).last_hidden_state
    assert torch.equal(head.greedy(h), truth(h.flatten(0, 1), *_full(head)).view(3, 8))
    assert int(model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=4, do_sample=False).shape[1]) == 7

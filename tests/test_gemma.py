"""Gemma-3 text models end to end, on a tiny random configuration: a sliding window shorter than
the text decoded (so verified decoding crops a sliding cache after rejected drafts), scaled input
embeddings, tied head; refused architectures and softcapped logits named before anything loads."""

import pytest
import torch

from test_train import write_corpus
from vqlogits.data.corpora import load_corpus
from vqlogits.data.tokenizer import load_tokenizer

WINDOW = 4


def tiny_gemma(vocab: int, **kw):
    import transformers as T

    torch.manual_seed(0)
    cfg = T.Gemma3TextConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        sliding_window=WINDOW,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        max_position_embeddings=256,
        eos_token_id=1,
        pad_token_id=0,
        bos_token_id=2,
        **kw,
    )
    return T.Gemma3ForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gemma")
    corpus = write_corpus(tmp / "text", n_docs=40)
    tok = load_tokenizer("bpe:300", load_corpus(str(corpus)))
    folder = tmp / "gemma"
    folder.mkdir()
    tok.save(str(folder / "tokenizer.json"))
    model = tiny_gemma(tok.get_vocab_size())
    with torch.no_grad():  # spread the tied rows so that clusters and drafts are not all alike
        model.get_input_embeddings().weight.mul_(8)
    model.save_pretrained(folder)
    return folder, corpus, tmp / "cache"


@torch.no_grad()
def fp64_greedy(model, ids: torch.Tensor, new: int) -> torch.Tensor:
    """The reference: every prefix recomputed without a cache, the head's logits in fp64."""
    W = model.get_output_embeddings().weight.double()
    out = ids
    for _ in range(new):
        h = model.base_model(input_ids=out).last_hidden_state[:, -1].double()
        logits = h @ W.T
        out = torch.cat([out, logits.argmax(-1, keepdim=True)], 1)
    return out


def test_verified_decoding_of_a_gemma3_model_is_its_no_cache_fp64_greedy(source):
    from vqlogits import load_pretrained
    from vqlogits.hf.accelerate import accelerate
    from vqlogits.hf.generate import generate
    from vqlogits.hf.load import load_causal_lm

    folder, corpus, cache = source
    out = accelerate(
        model=str(folder),
        clusters=16,
        probes=2,
        out=folder.parent / "fast",
        corpus=str(corpus),
        hidden_tokens=1024,
        cache=cache,
    )
    fast, (original, _) = load_pretrained(out), load_causal_lm(str(folder), cache)
    ids = torch.randint(3, 300, (3, 5), generator=torch.Generator().manual_seed(1))
    want = fp64_greedy(original, ids, 6 * WINDOW)
    stats = {}
    got = generate(fast, ids[:1], max_new_tokens=6 * WINDOW, stats=stats, block=4, draft_probes=8)
    assert torch.equal(got, want[:1])
    # drafted blocks, some of them cut short: the sliding cache was cropped past its window
    assert stats["blocks"] >= 2 and 0 < stats["accepted"] < stats["drafted"], stats
    assert torch.equal(generate(fast, ids, max_new_tokens=6 * WINDOW), want)  # a batch


def test_compressed_gemma3_heads_round_trip_with_their_tokenizer(source, tmp_path):
    from vqlogits import load_pretrained
    from vqlogits.hf.compress import compress

    folder, corpus, cache = source
    for head, kw in (("frequent", dict(exact_tokens=40)), ("quantized", dict(bits=4, group_size=16))):
        out = compress(model=str(folder), out=tmp_path / head, head=head, corpus=str(corpus), cache=cache, **kw)
        assert (out / "tokenizer.json").exists()
        model = load_pretrained(out)
        ids = torch.randint(3, 300, (2, 7), generator=torch.Generator().manual_seed(2))
        logits = model(ids).logits
        again = load_pretrained(out)(ids).logits
        torch.testing.assert_close(logits, again, rtol=0, atol=0)


def test_softcapped_logits_and_unknown_architectures_are_refused_by_name(source, tmp_path):
    from vqlogits.hf.load import check_supported, gguf_architecture

    with pytest.raises(ValueError, match="final_logit_softcapping=30.0"):
        check_supported(tiny_gemma(300, final_logit_softcapping=30.0))
    import gguf

    path = tmp_path / "bert.gguf"
    writer = gguf.GGUFWriter(str(path), "bert")
    writer.add_block_count(1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError, match="GGUF architecture 'bert' is not supported"):
        gguf_architecture(path)
    with pytest.raises(ValueError, match="not a readable GGUF"):
        (tmp_path / "junk.gguf").write_bytes(b"not a gguf")
        gguf_architecture(tmp_path / "junk.gguf")

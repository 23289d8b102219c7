"""Gemma-3 text models end to end, on a tiny random configuration: a sliding window shorter than
the text decoded (so verified decoding crops a sliding cache after rejected drafts), scaled input
embeddings, tied head; refused architectures and softcapped logits named before anything loads."""

import contextlib

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


@pytest.fixture(scope="module")
def accelerated(source):
    from vqlogits.hf.accelerate import accelerate

    folder, corpus, cache = source
    return accelerate(
        model=str(folder), clusters=16, out=folder.parent / "fast2", corpus=str(corpus), hidden_tokens=1024, cache=cache
    )


def test_model_generate_is_exact_and_honours_hf_arguments(source, accelerated):
    from vqlogits import load_pretrained
    from vqlogits.hf.load import load_causal_lm

    fast, (original, _) = load_pretrained(accelerated), load_causal_lm(str(source[0]), source[2])
    ids = torch.randint(3, 300, (2, 6), generator=torch.Generator().manual_seed(4))
    assert torch.equal(fast.generate(ids, max_new_tokens=12), fp64_greedy(original, ids, 12))
    # left padding: each row as the original decodes it alone; eos ids and pad as HF applies them
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    kw = dict(attention_mask=mask, max_new_tokens=10, eos_token_id=[1, 7], pad_token_id=0, min_new_tokens=3)
    ours, theirs = fast.generate(ids, **kw), original.generate(ids, do_sample=False, **kw)
    assert torch.equal(ours, theirs)
    seen = []
    streamer = type("S", (), {"put": lambda self, x: seen.append(x), "end": lambda self: seen.append(None)})()
    out = fast.generate(ids[:1], max_new_tokens=5, streamer=streamer)
    assert torch.equal(torch.cat(seen[:-1], 1), out) and seen[-1] is None
    for bad, name in (
        (dict(num_beams=2), "num_beams=2"),
        (dict(repetition_penalty=1.3), "repetition_penalty"),
        (dict(foo=1), "foo"),
        (dict(attention_mask=torch.tensor([[1, 1, 1, 1, 1, 0]] * 2)), "right"),
    ):
        with pytest.raises(ValueError, match=name):
            fast.generate(ids, max_new_tokens=2, **bad)
    approx = fast.generate(ids, max_new_tokens=4, approximate=True)
    assert approx.shape == (2, 10)


def test_sampling_through_model_generate_is_the_original_distribution(source, accelerated):
    from conftest import chi_square_p
    from vqlogits import load_pretrained
    from vqlogits.functional import sampling_probs
    from vqlogits.hf.load import load_causal_lm

    fast, (original, _) = load_pretrained(accelerated), load_causal_lm(str(source[0]), source[2])
    ids = torch.randint(3, 300, (1, 6), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        p = sampling_probs(original(ids).logits[0, -1].double(), temperature=0.8, top_k=50, top_p=0.95)
    g = torch.Generator().manual_seed(0)
    draws = torch.cat(
        [
            fast.generate(ids, max_new_tokens=1, do_sample=True, temperature=0.8, top_p=0.95, generator=g)[:, -1]
            for _ in range(3000)
        ]
    )
    assert chi_square_p(torch.bincount(draws, minlength=p.numel()), p) > 1e-3


def test_a_pipeline_decodes_through_the_exact_path(source, accelerated):
    from transformers import PreTrainedTokenizerFast, pipeline

    from vqlogits import load_pretrained

    tok = PreTrainedTokenizerFast(tokenizer_file=str(accelerated / "tokenizer.json"), eos_token="w1", pad_token="w1")
    model = load_pretrained(accelerated)
    text = pipeline("text-generation", model=model, tokenizer=tok)("w3 w4 w5", max_new_tokens=6, do_sample=False)
    ids = torch.tensor([tok("w3 w4 w5").input_ids])
    assert text[0]["generated_text"] == tok.decode(model.generate(ids, max_new_tokens=6)[0])


def test_the_original_alone_and_a_gguf_where_a_folder_belongs(source, tmp_path, capsys):
    import json

    from vqlogits.cli import main

    folder, corpus, cache = source
    args = ["--corpus", str(corpus), "--max-tokens", "512", "--cache", str(cache)]
    assert main(["eval", "--model", str(folder), *args]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["ppl"] > 1 and r["eval_tokens"] == 512 and r["bpb"] > 0
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    for argv in (["eval", str(gguf)], ["generate", str(gguf), "hi"], ["calibrate", str(gguf)]):
        assert main(argv) == 2
        assert "is a GGUF file, not a vqlogits model folder" in capsys.readouterr().err


def test_generate_prints_what_verified_decoding_did(accelerated, capsys):
    from vqlogits.cli import main

    assert main(["generate", str(accelerated), "w3 w4 w5", "--max-new-tokens", "12"]) == 0
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "tokens/s" in err and ("verified:" in err or "12 tokens" in err)
    assert main(["generate", str(accelerated), "w3 w4 w5", "--max-new-tokens", "4", "--quiet"]) == 0
    assert "tokens/s" not in capsys.readouterr().err
    assert main(["calibrate", str(accelerated)]) == 2
    assert "nothing to calibrate" in capsys.readouterr().err


def test_transformers_knows_vqlogits_folders_whichever_is_imported_first(accelerated):
    import subprocess
    import sys

    load = "from transformers import AutoModelForCausalLM; m = AutoModelForCausalLM.from_pretrained({!r})"
    check = "; print(type(m.get_output_embeddings()).__name__)"
    for first in ("import vqlogits; import transformers", "import transformers; import vqlogits"):
        code = f"{first}; {load.format(str(accelerated))}{check}"
        got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        assert got.returncode == 0 and got.stdout.strip().endswith("IndexedHead"), (first, got.stderr[-1000:])


def test_out_of_range_options_and_bad_files_are_named(source, tmp_path, capsys):
    from vqlogits.cli import main

    folder, corpus, cache = source
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    cases = [
        (["eval", str(folder), "--max-tokens", "0"], "argument --max-tokens: must be > 0, got 0"),
        (
            ["accelerate", "--model", str(folder), "--clusters", "16", "--probes", "17", "--out", str(tmp_path / "a")],
            "probes must be at most clusters=16, got 17",
        ),
        (
            [
                "compress",
                "--model",
                str(folder),
                "--head",
                "quantized",
                "--group-size",
                "0",
                "--out",
                str(tmp_path / "c"),
            ],
            "group_size must be a positive int, got 0",
        ),
        (["calibrate", str(folder), "--kl-weight", "-1"], "kl_weight must be a number >= 0, got -1.0"),
        (["compress", "--model", str(bad), "--out", str(tmp_path / "d")], "config.json is not a readable JSON file"),
        (["fetch", "pydocs", "--cache", str(bad / "config.json")], "is a file; it must be a folder"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) if "argument" in message else contextlib.nullcontext():
            assert main(argv) == 2
        assert message in capsys.readouterr().err, argv
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists() and not (tmp_path / "d").exists()

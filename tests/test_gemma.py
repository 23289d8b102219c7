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
        clusters=32,
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
    got = generate(fast, ids[:1], max_new_tokens=6 * WINDOW, stats=stats, block=4, draft_probes=4)
    assert torch.equal(got, want[:1])
    # drafted blocks, some of them cut short: the sliding cache was cropped past its window
    assert stats["blocks"] >= 2 and 0 < stats["accepted"] < stats["drafted"], stats
    assert torch.equal(generate(fast, ids, max_new_tokens=6 * WINDOW), want)  # a batch


@torch.no_grad()
def cached_fp64_head_greedy(model, ids: torch.Tensor, new: int) -> torch.Tensor:
    """The reference in the model's own dtype: its backbone with the KV cache, one token per step
    (as dense decoding runs it), the head's rows' logits in fp64, ties to the smallest id."""
    from transformers import DynamicCache

    W, cache, out, step = model.get_output_embeddings().weight.double(), DynamicCache(), ids, ids
    for _ in range(new):
        h = model.base_model(input_ids=step, cache=cache, use_cache=True).last_hidden_state[:, -1]
        step = (h.double() @ W.T).argmax(-1, keepdim=True)
        out = torch.cat([out, step], 1)
    return out


def test_a_bf16_model_decodes_verified_as_its_own_exact_greedy(source, accelerated, capsys):
    from vqlogits import load_pretrained
    from vqlogits.hf.generate import generate
    from vqlogits.hf.load import load_causal_lm

    fast = load_pretrained(accelerated).to(torch.bfloat16)
    original = load_causal_lm(str(source[0]), source[2])[0].to(torch.bfloat16)
    ids = torch.randint(3, 300, (3, 5), generator=torch.Generator().manual_seed(1))
    want = cached_fp64_head_greedy(original, ids, 6 * WINDOW)
    stats = {}
    assert torch.equal(
        generate(fast, ids[:1], max_new_tokens=6 * WINDOW, stats=stats, block=4, draft_probes=4), want[:1]
    )
    assert stats["blocks"] >= 2 and 0 < stats["accepted"] < stats["drafted"], stats
    assert torch.equal(generate(fast, ids, max_new_tokens=6 * WINDOW), want)
    assert torch.equal(fast.generate(ids, max_new_tokens=6 * WINDOW), want)
    assert fast.get_output_embeddings().rows.dtype == torch.bfloat16
    # The CLI's --dtype bfloat16: the same tokens, through the folder's tokenizer.
    from tokenizers import Tokenizer

    from vqlogits.cli import main

    tok = Tokenizer.from_file(str(accelerated / "tokenizer.json"))
    prompt = tok.encode("w3 w4 w5").ids
    expected = tok.decode(cached_fp64_head_greedy(original, torch.tensor([prompt]), 8)[0].tolist())
    assert main(["generate", str(accelerated), "w3 w4 w5", "--max-new-tokens", "8", "--dtype", "bfloat16"]) == 0
    assert capsys.readouterr().out.strip() == expected.strip()


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
        model=str(folder), clusters=32, out=folder.parent / "fast2", corpus=str(corpus), hidden_tokens=1024, cache=cache
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
    assert main(["eval", "--model", str(folder), *args, "--json"]) == 0
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


def test_q8_0_rows_are_stored_in_8_bits_losslessly(source, tmp_path):
    """A head whose rows are Q8_0 (as the GGUFs ship it) is written as int8 codes and fp16 scales,
    the embedding and the index's rows both, and reloads bit for bit; anything else stays fp32."""
    import safetensors

    from vqlogits import load_pretrained
    from vqlogits.hf.accelerate import accelerate
    from vqlogits.hf.compress import compress
    from vqlogits.hf.folder import dense_head_weight, describe
    from vqlogits.hf.load import load_causal_lm

    folder, corpus, cache = source
    model, _ = load_causal_lm(str(folder), cache)
    with torch.no_grad():  # Q8_0 as llama.cpp writes it: q = round(x / (max|x| / 127)), d = fp16(max|x| / 127)
        E = model.get_input_embeddings().weight
        groups = E.view(E.shape[0], -1, 32)
        d = (groups.abs().amax(-1, keepdim=True) / 127).clamp_min(1e-30)  # the padding row is zero
        E.copy_((torch.round(groups / d) * d.half().float()).view_as(E))
    q8 = tmp_path / "q8"
    model.save_pretrained(q8)
    (q8 / "tokenizer.json").write_bytes((folder / "tokenizer.json").read_bytes())
    out = accelerate(
        model=str(q8), clusters=16, out=tmp_path / "fast", corpus=str(corpus), hidden_tokens=512, cache=cache
    )
    with safetensors.safe_open(out / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert {"model.embed_tokens.weight.q8", "lm_head.rows.q8", "lm_head.rows.q8_scale"} <= keys
    assert "lm_head.rows" not in keys and "lm_head.centroids" in keys  # means are not 8-bit: fp32
    fast = load_pretrained(out)
    assert torch.equal(fast.get_output_embeddings().weight, E)
    assert torch.equal(fast.get_input_embeddings().weight, E)
    info = describe(out)
    index = fast.get_output_embeddings()  # the rows (padded to K L), the centroids, radius and spread
    assert info["head_params"] == index.rows.numel() + index.centroids.numel() + 2 * 16
    n = index.rows.numel()  # 8.5 bits a weight (codes, an fp16 scale per 32), not 32
    assert info["head_bytes"] == n + n // 32 * 2 + 4 * (index.centroids.numel() + 32) + 8 * index.token_ids.numel()
    # A compressed head's teacher is the tied embedding, read back from its 8-bit form.
    small = compress(model=str(q8), out=tmp_path / "q4", head="quantized", bits=4, corpus=str(corpus), cache=cache)
    assert torch.equal(dense_head_weight(small), E)


def test_the_bf16_reference_is_the_fp64_argmax():
    """The Gemma study's bf16 reference (certified fp32, fp64 for the close tokens), against the
    fp64 argmax itself: exact ties (the smaller id) and near-ties far below fp32's rounding."""
    from vqlogits.studies.gemma_decoding import exact_reference

    g = torch.Generator().manual_seed(0)
    W = torch.randn(3000, 64, generator=g).bfloat16()
    W[7] = W[3]  # an exact tie
    h = torch.cat([W[[3, 100]].float() * 3, torch.randn(6, 64, generator=g) * 10]).bfloat16()
    logits = h.double() @ W.double().T
    want = torch.where(logits == logits.max(-1, keepdim=True).values, torch.arange(3000), 3000).min(-1).values
    assert torch.equal(exact_reference(W)(h), want) and int(want[0]) == 3


def test_the_gemma_decoding_study_on_a_tiny_gemma(source, accelerated, tmp_path):
    """Every mode of studies/gemma_decoding.py, its identity checks in both dtypes, and its report."""
    from vqlogits import load_pretrained
    from vqlogits.heads import QuantizedHead
    from vqlogits.hf.load import load_causal_lm
    from vqlogits.studies import gemma_decoding as G

    fast, fast16 = load_pretrained(accelerated), load_pretrained(accelerated).to(torch.bfloat16)
    original = load_causal_lm(str(source[0]), source[2])[0]
    W = fast.get_output_embeddings().weight.detach()
    modes = G.runners(fast, fast16, {b: QuantizedHead.from_weight(W, b, 16, method="rtn") for b in (8, 4)})
    prompts = torch.randint(3, 300, (16, 5), generator=torch.Generator().manual_seed(6))
    row = G.compare(modes, prompts[:2], new=8, repeats=1)
    assert row["verified agreement"] == 1.0 and all(row[f"{m} tok/s"] > 0 for m in G.FP32_MODES + G.BF16_MODES)
    references = G._references(original, fast16, 8, [1])
    for dtype, model in (("fp32", fast), ("bf16", fast16)):
        same = G.identity(model, references[dtype], prompts, 8, [1], hf=dtype == "fp32")
        assert same["identical_batch1"] == 16 and same["identical_batch16"] == 16, (dtype, same)
        if dtype == "fp32":  # and through Hugging Face's call
            assert same["model.generate identical_batch1"] == same["model.generate identical_batch16"] == 16
    results = {
        "environment": {"threads": 1, "torch": "x", "identity bf16 pydocs": same},
        "rows": [{"domain": "toy", **row}],
    }
    results["sweep"] = [{"domain": "toy", **r} for r in G.probe_sweep(fast, prompts[:1], 8, 1, fractions=(8, 4))]
    G.save(results, tmp_path)
    text = (tmp_path / "decoding.md").read_text()
    assert (
        (tmp_path / "decoding.png").exists()
        and "| toy | 2 |" in text
        and "| bf16 pydocs | hf.generate.generate | 16 | 16 / 16 | 16 / 16 |" in text
    )


def test_the_bench_gemma_section_runs_every_mode(source, accelerated, tmp_path, monkeypatch, capsys):
    """``vqlogits bench --gemma FOLDER``'s section, with the tiny model standing in for Gemma-3."""
    from vqlogits import load_pretrained
    from vqlogits.bench import decode
    from vqlogits.bench.config import BenchConfig
    from vqlogits.heads import QuantizedHead
    from vqlogits.studies import gemma_decoding as G

    def tiny_load(folder, cache):
        fast, fast16 = load_pretrained(folder), load_pretrained(folder).to(torch.bfloat16)
        W = fast.get_output_embeddings().weight.detach()
        quantized = {b: QuantizedHead.from_weight(W, b, 16, method="rtn") for b in (8, 4)}
        return {"source": folder, "modes": G.runners(fast, fast16, quantized)}

    monkeypatch.setattr(G, "load", tiny_load)
    monkeypatch.setattr(G, "prompts_of", lambda corpus, src, cache: torch.randint(3, 300, (16, 5)))
    cfg = BenchConfig(gemma_folder=str(accelerated), gemma_batches=(1, 2), decode_steps=4, repeats=3, device="cpu")
    rows = decode.bench_gemma(cfg, type("Bar", (), {"set_description": print, "update": print})())
    assert [(r["domain"], r["batch"]) for r in rows] == [("pydocs", 1), ("pydocs", 2), ("devdocs", 1), ("devdocs", 2)]
    assert all(r["verified agreement"] == 1.0 and r["verified bf16 tok/s"] > 0 for r in rows)
    text = decode.gemma_markdown(rows, {"threads": 1, "torch": "x"})
    assert "Real Gemma-3-270M" in text and "| devdocs | 2 |" in text
    with pytest.raises(ValueError, match="device='cuda'"):
        decode.bench_gemma(BenchConfig(gemma_folder="x", device="cuda"), None)
    from vqlogits.cli import main

    assert main(["bench", "--quick", "--gemma", str(accelerated), "--out", str(tmp_path / "b")]) == 2
    assert "--gemma is part of the decode measurements" in capsys.readouterr().err


def test_eval_of_an_accelerated_folder_times_generates_path_end_to_end(source, accelerated, capsys):
    """``vqlogits eval`` on an index: the head alone per mode (neutral keys), and end-to-end decoding
    through the path ``vqlogits generate`` runs (verified) in turns with the dense head, with a range."""
    import json

    from vqlogits.cli import main

    _, corpus, cache = source
    args = ["--corpus", str(corpus), "--max-tokens", "256", "--cache", str(cache)]
    assert main(["eval", str(accelerated), *args]) == 0
    summary = capsys.readouterr().out
    assert "exact greedy" in summary and "certified" in summary and "decoding end to end" in summary
    assert main(["eval", str(accelerated), *args, "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    exact = next(m for m in r["modes"] if m["mode"] == "exact")
    assert {"screened_rows_per_token", "head_speedup_b1", "certified"} <= set(exact) and exact["agreement"] == 1.0
    lo, hi = r["decode_speedup_range"]
    assert 0 < lo <= r["decode_speedup"] <= hi and r["decode_tok_s"] > 0 and r["decode_setup"]["repeats"] == 5

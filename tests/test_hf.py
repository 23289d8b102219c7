"""Pretrained integration on tiny random HF models built here: compress, save/load, generate, calibrate, eval."""

import copy
import json
import math
from pathlib import Path

import pytest
import torch

from test_train import write_corpus
from vqlogits import VQLogitsHead, load_pretrained
from vqlogits.cli import main
from vqlogits.data.corpora import load_corpus
from vqlogits.data.tokenizer import load_tokenizer
from vqlogits.hf.calibrate import calibrate
from vqlogits.hf.compress import compress
from vqlogits.hf.folder import dense_head_weight, save_pretrained
from vqlogits.hf.generate import generate
from vqlogits.hf.speed import evaluate_folder as evaluate_pretrained


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("hfcorpus") / "text", n_docs=40)


def _tiny(arch: str, vocab: int):
    import transformers as T

    torch.manual_seed(0)
    if arch == "llama":
        cfg = T.LlamaConfig(
            vocab_size=vocab,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=True,
            eos_token_id=0,
        )
        return T.LlamaForCausalLM(cfg)
    if arch == "gpt2":
        return T.GPT2LMHeadModel(
            T.GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=512, eos_token_id=0)
        )
    return T.OPTForCausalLM(
        T.OPTConfig(
            vocab_size=vocab,
            hidden_size=32,
            ffn_dim=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            word_embed_proj_dim=32,
        )
    )


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def source(request, corpus, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    tok = load_tokenizer("bpe:300", load_corpus(str(corpus)))
    tok.save(str(folder / "tokenizer.json"))
    model = _tiny(request.param, tok.get_vocab_size())
    model.save_pretrained(folder)
    return folder


def test_compress_save_load_round_trip_is_exact(source, tmp_path):
    out = compress(model=str(source), codebook_size=16, out=tmp_path / "vq", seed=1)
    model = load_pretrained(out)
    head = model.get_output_embeddings()
    assert isinstance(head, VQLogitsHead) and head.codebook_size == 16
    assert not model.config.tie_word_embeddings
    original = type(model).from_pretrained(source)
    # the input embedding stays as it was
    assert torch.equal(model.get_input_embeddings().weight, original.get_input_embeddings().weight)
    ids = torch.randint(0, head.vocab_size, (2, 12))
    logits = model(ids).logits
    save_pretrained(model, tmp_path / "again")
    for name in ("tokenizer.json", "dense_head.safetensors"):
        if (out / name).exists():  # a tied source's teacher is the input embedding, not a file
            (tmp_path / "again" / name).write_bytes((out / name).read_bytes())
    assert torch.equal(load_pretrained(tmp_path / "again")(ids).logits, logits)
    meta = json.loads((out / "vqlogits.json").read_text())
    assert meta["codebook_size"] == 16 and meta["source"] == str(source)


def test_save_killed_mid_write_leaves_the_folder_loadable(source, tmp_path, monkeypatch):
    import safetensors.torch

    out = compress(model=str(source), codebook_size=16, out=tmp_path / "vq")
    model = load_pretrained(out)
    ids = torch.randint(0, 300, (1, 8))
    before = model(ids).logits
    with torch.no_grad():
        model.get_output_embeddings().codebook.add_(1.0)

    def dies_half_way(tensors, path, *a, **k):
        Path(path).write_bytes(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        save_pretrained(model, out)
    assert torch.equal(load_pretrained(out)(ids).logits, before)


def test_compact_generation_equals_hf_generate(source, tmp_path):
    model = load_pretrained(compress(model=str(source), codebook_size=16, out=tmp_path / "vq"))
    ids = torch.randint(1, 300, (3, 5))
    ours = generate(model, ids, max_new_tokens=10, eos_token_id=0)
    theirs = model.generate(ids, max_new_tokens=10, do_sample=False, eos_token_id=0, pad_token_id=0)
    assert torch.equal(ours, theirs)
    sampled = generate(
        model, ids, 10, temperature=0.8, top_k=20, top_p=0.9, do_sample=True, generator=torch.Generator().manual_seed(0)
    )
    assert sampled.shape == (3, 15) and torch.equal(sampled[:, :5], ids)
    hf_sampled = model.generate(ids, max_new_tokens=4, do_sample=True, top_k=20, top_p=0.9, pad_token_id=0)
    assert hf_sampled.shape[1] <= 9  # model.generate() works with the VQ head too


def test_decode_never_builds_vocab_sized_logits(source, tmp_path, monkeypatch):
    model = load_pretrained(compress(model=str(source), codebook_size=16, out=tmp_path / "vq"))
    head = model.get_output_embeddings()
    monkeypatch.setattr(head, "forward", lambda h: pytest.fail("full logits were built"))
    generate(model, torch.randint(1, 300, (2, 4)), 5, do_sample=True, top_k=10)


def test_errors(source, tmp_path):
    out = compress(model=str(source), codebook_size=16, out=tmp_path / "vq")
    import transformers as T

    wrong = _tiny(json.loads((source / "config.json").read_text())["model_type"], 280)
    with pytest.raises(ValueError, match="vocab_size=.*the model has vocab_size=280"):
        load_pretrained(out, model=wrong)
    with pytest.raises(ValueError, match="not a vqlogits folder"):
        load_pretrained(source)
    opt_dir = tmp_path / "opt"
    _tiny("opt", 300).save_pretrained(opt_dir)
    with pytest.raises(ValueError, match="architecture 'opt' .*not supported"):
        compress(model=str(opt_dir), codebook_size=16, out=tmp_path / "x")
    assert isinstance(T.__version__, str)


def test_calibrate_and_evaluate(source, corpus, tmp_path):
    out = compress(model=str(source), codebook_size=8, out=tmp_path / "vq")
    cache = tmp_path / "cache"
    before = evaluate_pretrained(out, str(corpus), max_tokens=1024, cache=cache)
    summary = calibrate(
        folder=out,
        corpus=str(corpus),
        budget_minutes=60,
        max_steps=40,
        stages="12",
        train_layers=1,
        hidden_tokens=4096,
        block=64,
        cache=cache,
    )
    assert summary["stages"]["1"]["steps"] > 5 and summary["stages"]["2"]["steps"] > 0
    assert not list(out.glob("calib_*"))  # a finished calibration leaves no checkpoint behind
    after = evaluate_pretrained(out, str(corpus), max_tokens=1024, cache=cache)
    for r in (before, after):
        assert 0 <= r["top1_agreement"] <= 1 and r["kl_original_to_compressed"] >= 0
        assert r["head_params"] < r["dense_head_params"] and r["decode_tok_s"] > 0 and r["dense_decode_tok_s"] > 0
        lo, hi = r["decode_speedup_range"]  # end to end through generate's path, in turns with dense
        assert lo <= r["decode_speedup"] <= hi and r["decode_setup"] == {
            "batch": 1,
            "prompt": 32,
            "new": 32,
            "repeats": 5,
        }
        lo, hi = r["ppl_ratio_interval95"]  # equal windows: the ratio is exp(mean window gap), inside its interval
        assert lo < r["ppl_compressed"] / r["ppl_original"] < hi
    assert after["ppl_original"] == pytest.approx(before["ppl_original"], rel=1e-6)  # the teacher is the original model
    # the random tiny model is a poor teacher; what must improve is the compressed model's held-out fit
    assert after["ppl_compressed"] < 0.9 * before["ppl_compressed"]
    # a rerun of a finished calibration calibrates again, on top, and is recorded as such
    again = calibrate(
        folder=out,
        corpus=str(corpus),
        budget_minutes=60,
        max_steps=40,
        stages="12",
        train_layers=1,
        hidden_tokens=4096,
        block=64,
        cache=cache,
    )
    assert (
        again["stages"]["1"]["steps"] == 40 and len(json.loads((out / "vqlogits.json").read_text())["calibration"]) == 2
    )


def test_calibrations_of_one_backbone_share_its_hidden_states(source, corpus, tmp_path):
    """Stage 1's hidden states live in the cache under the backbone's digest, not in each folder:
    a second head of the same model reads them, and calibrates exactly as from a fresh cache."""
    import safetensors.torch

    kw = dict(budget_minutes=60, max_steps=3, stages="1", hidden_tokens=1024, block=32)
    shared, fresh = tmp_path / "shared", tmp_path / "fresh"
    for name, k, cache in (("a", 8, shared), ("b", 16, shared), ("c", 16, fresh)):
        calibrate(
            folder=compress(model=str(source), codebook_size=k, out=tmp_path / name),
            corpus=str(corpus),
            cache=cache,
            **kw,
        )
        assert not list((tmp_path / name).glob("calib_hidden*"))
    assert len(list((shared / "hidden").glob("*.pt"))) == 1  # b read a's
    b, c = (safetensors.torch.load_file(tmp_path / n / "model.safetensors") for n in "bc")
    assert b.keys() == c.keys() and all(torch.equal(b[key], c[key]) for key in b)


def test_cli_compress_and_generate(source, tmp_path, capsys):
    assert main(["compress", "--model", str(source), "--codebook-size", "16", "--out", str(tmp_path / "c")]) == 0
    capsys.readouterr()
    assert main(["generate", str(tmp_path / "c"), "w1 w2 the", "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out.startswith("w1 w2 the")


def test_compact_distillation_loss_equals_full_logit_form():
    import torch.nn.functional as F

    from vqlogits.hf.calibrate import distill_loss

    torch.manual_seed(0)
    head = VQLogitsHead(16, 200, 9).double()
    with torch.no_grad():
        head.codebook.normal_()
        head.bias.normal_()
    head.set_assignment(torch.randint(0, 9, (200,)))
    h = torch.randn(25, 16, dtype=torch.float64, requires_grad=True)
    teacher = 2 * torch.randn(25, 200, dtype=torch.float64)
    y = torch.randint(0, 200, (25,))
    params = [h, head.codebook, head.bias]
    fast = distill_loss(h, head, teacher, y, kl_weight=0.7)
    logp_s = torch.log_softmax(head(h), -1)
    ref = F.nll_loss(logp_s, y) + 0.7 * F.kl_div(
        logp_s, torch.log_softmax(teacher, -1), log_target=True, reduction="batchmean"
    )
    torch.testing.assert_close(fast, ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(torch.autograd.grad(fast, params), torch.autograd.grad(ref, params), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_exact_tokens_keep_their_rows(source, corpus, tmp_path):
    out = compress(
        model=str(source),
        codebook_size=16,
        out=tmp_path / "vq",
        exact_tokens=6,
        corpus=str(corpus),
        cache=tmp_path / "cache",
    )
    head = load_pretrained(out).get_output_embeddings()
    dense = dense_head_weight(out)
    singles = [int(torch.nonzero(head.assignment == k)[0]) for k in range(6)]
    assert all(int((head.assignment == k).sum()) == 1 for k in range(6))
    torch.testing.assert_close(head.codebook[:6], dense[singles])  # exact logits for those tokens
    h = torch.randn(3, head.d_model)
    torch.testing.assert_close(head(h)[:, singles], (h @ dense.T)[:, singles])
    with pytest.raises(ValueError, match=r"exact_tokens must be an int in \[0, codebook_size=16\), got 16"):
        compress(
            model=str(source),
            codebook_size=16,
            out=tmp_path / "x",
            exact_tokens=16,
            corpus=str(corpus),
            cache=tmp_path / "cache",
        )


def test_calibration_history_survives_later_stages(source, corpus, tmp_path, json_never_in_place):
    out = compress(model=str(source), codebook_size=8, out=tmp_path / "vq")
    for stage in ("1", "2"):
        calibrate(
            folder=out,
            corpus=str(corpus),
            budget_minutes=60,
            max_steps=5,
            stages=stage,
            train_layers=0,  # stage 2 trains every weight, the head's in its own groups
            hidden_tokens=1024,
            block=64,
            cache=tmp_path / "cache",
        )
    meta = json.loads((out / "vqlogits.json").read_text())
    assert [list(c["stages"]) for c in meta["calibration"]] == [["1"], ["2"]]
    rates = [c["stages"][s]["row_lr"] for c, s in zip(meta["calibration"], "12", strict=True)]
    assert all(list(r) == ["codebook"] and r["codebook"] > 0 for r in rates)
    assert meta["calibration"][0]["config"]["row_step"] == 0.6
    assert meta["calibrated_backbone"] and meta["source"] == str(source)


@pytest.mark.parametrize("kind", ["vq", "frequent", "twolevel", "quantized"])
def test_a_rows_step_moves_its_logits_alike_at_any_hidden_scale(kind):
    """Adam's first step moves each coordinate by its rate, so a row's logit moves by up to
    rate x ||x||_1, x what the row is dotted with: rows learn at row_step / mean ||x||_1, 40x lower
    for hidden states 40x larger (a two-level head's token vectors meet h @ proj, which scales too),
    and where logits are linear in the rows (vq, frequent) one step's largest logit move is the
    same at both scales. Parameters that are not rows keep lr_head."""
    from vqlogits.heads import KINDS
    from vqlogits.hf.calibrate import head_groups

    torch.manual_seed(0)
    dense, h, w = torch.randn(64, 16) * 0.1, torch.randn(32, 16), torch.randn(32, 64)
    sizes = {"bits": 4, "group_size": 8} if kind == "quantized" else {"codebook_size": 8, "n_frequent": 4}
    if kind == "frequent":
        sizes["codebook_size"] = 1
    sizes.update(bias=True, token_dim=4)
    start = KINDS[kind].cls.from_rows(dense, sizes, frequent=torch.arange(64), progress=False)
    moves, rates = [], []
    for scale in (1.0, 40.0):
        head = copy.deepcopy(start)
        groups, r = head_groups(head, 3e-3, 0.6, h * scale)
        rates.append(r)
        assert {id(p) for g in groups if g["lr"] != 3e-3 for p in g["params"]} == {id(getattr(head, n)) for n in r}
        before = head(h * scale).detach()
        opt = torch.optim.Adam(groups)
        (head(h * scale) * w).sum().backward()  # linear in the logits: its gradient's signs do not depend on scale
        opt.step()
        moves.append((head(h * scale).detach() - before).abs().max().item())
    if kind == "quantized":
        assert rates == [{}, {}]
        return
    assert rates[0]["codebook"] == pytest.approx(0.6 / h.abs().sum(-1).mean().item())
    assert rates[0].keys() == rates[1].keys() and all(rates[1][n] == pytest.approx(rates[0][n] / 40) for n in rates[0])
    if kind != "twolevel":  # its log-softmax output is not linear in the rows
        assert moves[1] == pytest.approx(moves[0], rel=0.01) and moves[0] > 0.05


def test_ratio_interval_is_a_paired_t_interval_over_windows():
    from vqlogits.stats import ratio_interval

    assert ratio_interval([0.3]) is None
    assert ratio_interval([0.1, 0.1, 0.1]) == pytest.approx([math.exp(0.1)] * 2)
    # mean 0.1, standard error 0.1, t(1 df) = 12.706
    assert ratio_interval([0.0, 0.2]) == pytest.approx([math.exp(0.1 - 1.2706), math.exp(0.1 + 1.2706)])


def test_evaluation_runs_each_backbone_once_per_split(tmp_path):
    """Cached hidden states give exactly the uncached comparison, and a changed backbone misses."""
    from vqlogits.hf.evaluate import compare_heads

    model = _tiny("llama", 300).eval()
    data = torch.randint(0, 300, (700,), generator=torch.Generator().manual_seed(0)).numpy()
    dense = model.get_output_embeddings().weight.detach()
    other = dense + 0.1 * torch.randn(dense.shape, generator=torch.Generator().manual_seed(1))
    head = lambda h: h @ other.T  # noqa: E731
    calls = []
    model.base_model.register_forward_hook(lambda *_: calls.append(1))
    plain = compare_heads(model.base_model, head, dense, data, block=64, max_tokens=300)
    n = len(calls)
    assert n > 1 and not plain["ppl_original"] == plain["ppl_compressed"]
    first = compare_heads(model.base_model, head, dense, data, block=64, max_tokens=300, cache=tmp_path)
    again = compare_heads(model.base_model, head, dense, data, block=64, max_tokens=300, cache=tmp_path)
    assert plain == first == again and len(calls) == 2 * n  # the third call read the cache
    compare_heads(model.base_model, head, dense, data, block=64, max_tokens=200, cache=tmp_path)
    assert len(calls) > 2 * n  # other windows: computed
    calls.clear()
    with torch.no_grad():
        model.base_model.norm.weight.mul_(1.5)
    moved = compare_heads(model.base_model, head, dense, data, block=64, max_tokens=300, cache=tmp_path)
    assert calls and moved["ppl_original"] != plain["ppl_original"]


@pytest.mark.parametrize("rows", [1, 8, 21])  # fewer, as many and more positions than one chunk
def test_window_sums_equal_the_fp64_log_softmax_form(rows):
    """nll, KL and top-1 agreement of one window against the log-softmax form in fp64, at logits of
    the scale of a real model's (tens of nats) and with tied maxima, which count the first index."""
    from vqlogits.hf.evaluate import window_sums

    g = torch.Generator().manual_seed(rows)
    z_o = 15 * torch.randn(rows, 3000, generator=g)
    z_c = z_o + torch.randn(rows, 3000, generator=g)
    j = int(z_o[0, :-1].argmax())
    z_c[0, j : j + 2] = z_c[0].max() + 1  # a tie for the top at j and j + 1: the first index counts
    y = torch.randint(0, 3000, (rows,), generator=g)
    lo, lc = torch.log_softmax(z_o.double(), -1), torch.log_softmax(z_c.double(), -1)
    ref = (-lo.gather(1, y[:, None]).sum(), -lc.gather(1, y[:, None]).sum(), (lo.exp() * (lo - lc)).sum())
    nll_o, nll_c, kl, agree = window_sums(z_o, z_c, y)
    for got, want in zip((nll_o, nll_c, kl), ref, strict=True):
        assert got == pytest.approx(float(want), rel=1e-6, abs=1e-5)
    assert agree == int((z_o.double().argmax(-1) == z_c.double().argmax(-1)).sum()) and agree >= 1


def test_window_sums_stay_exact_at_a_262k_vocabulary():
    """At Gemma-3's V the sums stay within 2e-6 nats a position of fp64 (fp32 log_softmax's sums
    were off by 1e-5 here), so a ratio of two evaluations does not drift with V."""
    from vqlogits.hf.evaluate import window_sums

    g = torch.Generator().manual_seed(0)
    z_o = 20 + 3 * torch.randn(8, 262_144, generator=g)
    z_c = z_o + torch.randn(8, 262_144, generator=g)
    y = torch.randint(0, 262_144, (8,), generator=g)
    lo, lc = torch.log_softmax(z_o.double(), -1), torch.log_softmax(z_c.double(), -1)
    ref = (-lo.gather(1, y[:, None]).sum(), -lc.gather(1, y[:, None]).sum(), (lo.exp() * (lo - lc)).sum())
    for got, want in zip(window_sums(z_o, z_c, y)[:3], ref, strict=True):
        assert abs(got - float(want)) < 8 * 2e-6


def test_two_heads_compare_pairwise_over_windows():
    """``window_gaps`` of two heads on one split give the interval of their perplexity ratio."""
    from vqlogits.hf.evaluate import compare_heads
    from vqlogits.stats import paired_ratio, ratio_interval

    model = _tiny("llama", 300).eval()
    data = torch.randint(0, 300, (700,), generator=torch.Generator().manual_seed(0)).numpy()
    dense = model.get_output_embeddings().weight.detach()
    noise = [0.05 * torch.randn(dense.shape, generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
    a, b = (compare_heads(model.base_model, lambda h, e=e: h @ (dense + e).T, dense, data, 64, 300) for e in noise)
    assert len(a["window_gaps"]) == len(b["window_gaps"]) > 2
    assert ratio_interval(a["window_gaps"]) == a["ppl_ratio_interval95"]
    lo, hi = paired_ratio(a["window_gaps"], b["window_gaps"])  # equal windows: the ratio is exp(mean difference)
    assert lo < a["ppl_compressed"] / b["ppl_compressed"] < hi and lo != hi
    same = compare_heads(model.base_model, lambda h: h @ dense.T, dense, data, 64, 300)  # the original itself
    assert same["window_gaps"] == [0.0] * len(same["window_gaps"])
    assert paired_ratio(a["window_gaps"], same["window_gaps"]) == a["ppl_ratio_interval95"]
    with pytest.raises(ValueError, match="gaps_b"):
        paired_ratio(a["window_gaps"], b["window_gaps"][:-1])


def test_quantized_decode_bench_rows(source, corpus, tmp_path):
    from vqlogits.bench.quantized import bench_quantized, markdown

    rows = bench_quantized(str(source), bits=(4, 2), corpus=str(corpus), batches=(1, 2), tokens=64, steps=2, repeats=2)
    assert [r["batch"] for r in rows] == [1, 2]
    for r in rows:
        assert r["fp32_agreement"] == 1.0 and all(r[f"{n}_head_s"] > 0 and r[f"{n}_tok_s"] > 0 for n in ("q4", "q2"))
        assert 0 <= r["q2_agreement"] <= r["q4_agreement"] + 0.2
        assert r["q4_fp64_per_row"] >= 1 and r["q2_fp64_per_row"] >= 1  # each row's pick, at least
    assert rows[0]["q2_fp64_per_row"] == rows[1]["q2_fp64_per_row"]  # over the same positions
    table = markdown(rows)
    assert "head q4 ms/token" in table and "q2 fp64 rows/token" in table and table.count("\n") == 4


def test_quantized_decode_bench_from_the_cli(source, corpus, tmp_path, capsys):
    out = tmp_path / "bench"
    assert (
        main(["bench", "--quantized", str(source), "--corpus", str(corpus), "--repeats", "1", "--out", str(out)]) == 0
    )
    rows = json.loads((out / "quantized.json").read_text())
    assert [r["batch"] for r in rows] == [1, 16] and all(r["q4_fp64_per_row"] >= 1 for r in rows)
    assert (out / "quantized.md").read_text() == capsys.readouterr().out.rstrip("\n") + "\n"
    assert main(["bench", "--quantized", "--quick"]) == 2
    assert "does not take --quick" in capsys.readouterr().err


def test_distillation_loss_of_a_quantized_head_runs_its_forward_once(monkeypatch):
    import torch.nn.functional as F

    from vqlogits.heads import QuantizedHead
    from vqlogits.hf.calibrate import distill_loss

    torch.manual_seed(0)
    head = QuantizedHead.from_weight(torch.randn(300, 32) * 0.3, bits=4, group_size=16)
    with torch.no_grad():
        head.gain.normal_(0, 0.05)
        head.shift.normal_(0, 0.1)
    h, teacher, y = torch.randn(40, 32), 2 * torch.randn(40, 300), torch.randint(0, 300, (40,))
    params = [head.gain, head.shift]
    calls = []
    monkeypatch.setattr(
        QuantizedHead, "rows", lambda self, *a, _rows=QuantizedHead.rows, **k: calls.append(1) or _rows(self, *a, **k)
    )
    fast = distill_loss(h, head, teacher, y, kl_weight=0.7)
    grads = torch.autograd.grad(fast, params)
    assert len(calls) == 1
    logp_s = torch.log_softmax(h.double() @ head.rows().double().T, -1)
    ref = F.nll_loss(logp_s, y) + 0.7 * F.kl_div(
        logp_s, torch.log_softmax(teacher.double(), -1), log_target=True, reduction="batchmean"
    )
    torch.testing.assert_close(fast.double(), ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads, torch.autograd.grad(ref, params), strict=True):
        torch.testing.assert_close(a.double(), b.double(), rtol=1e-4, atol=1e-6)


def test_head_speed_rebuilds_each_study_head_at_its_sizes(source, corpus, tmp_path):
    import shutil

    from test_screen import truth
    from vqlogits.screens.int4 import available
    from vqlogits.studies.head_speed import head_speeds, markdown, study_heads

    keep = tmp_path / "keep"
    folders = {
        "q4": compress(model=str(source), head="quantized", bits=4, group_size=16, out=tmp_path / "q4"),
        "hybrid": compress(
            model=str(source), head="hybrid", head_budget=0.2, part_bits=4, corpus=str(corpus), out=tmp_path / "hy"
        ),
    }
    for name, folder in folders.items():
        (keep / name).mkdir(parents=True)
        shutil.copy(folder / "vqlogits.json", keep / name / "vqlogits.json")
    dense = dense_head_weight(folders["q4"])
    rebuilt = study_heads(keep, dense)
    for name, folder in folders.items():
        saved = load_pretrained(folder).get_output_embeddings().state_dict()
        assert {k: v.shape for k, v in rebuilt[name].state_dict().items()} == {k: v.shape for k, v in saved.items()}
    # the quantized head is the original's rows rounded to nearest: its greedy is its own exact argmax
    h = torch.randn(5, dense.shape[1])
    q4 = rebuilt["q4"]
    assert torch.equal(q4.greedy(h), (h.double() @ q4.weight.double().T).argmax(-1))
    # the hybrid's 4-bit codebook decodes from random 4-bit codes, as the loaded folder does from its own
    hybrid = rebuilt["hybrid"]
    held = load_pretrained(folders["hybrid"]).get_output_embeddings()._int4_screen() is not None
    assert (hybrid._int4_screen() is not None) == held == available(4, 32, dense.shape[1])
    full = hybrid.codebook.detach()[hybrid.assignment], hybrid.bias.detach()
    assert torch.equal(hybrid.greedy(h), truth(h, *full))
    (keep / "q4" / "eval_kmeans.json").write_text(json.dumps({"head_bytes": 1234}))
    result = head_speeds(keep, str(source), repeats=3, corpus=str(corpus))
    assert [r["model"] for r in result["rows"]] == ["dense fp32", "dense bf16", "hybrid", "q4"]
    assert all(r["q1_ms"] <= r["head_ms"] <= r["q3_ms"] for r in result["rows"])
    assert [r["head_bytes"] for r in result["rows"]] == [4 * dense.numel(), 2 * dense.numel(), None, 1234]
    assert "| q4 | 0.00 |" in markdown(result) and "| hybrid | – |" in markdown(result)
    with pytest.raises(ValueError, match="vqlogits.json is a .* head, the model's is"):
        study_heads(keep, dense[:-1])

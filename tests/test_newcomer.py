"""A newcomer's second hour: output folders that never lose work, Hugging Face round trips that
hold, one user cache, storage as stored, corpora that are text, and every bad input a one-line
error that names the file or option (driven through the CLI: no traceback)."""

import json
import os
import stat
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import safetensors
import torch

from test_hf import _tiny
from test_train import write_corpus
from vqlogits import load_pretrained
from vqlogits.cli import main
from vqlogits.data.corpora import load_corpus
from vqlogits.data.tokenizer import load_tokenizer
from vqlogits.files import USER_CACHE
from vqlogits.hf.compress import compress
from vqlogits.lm.train import TrainConfig, train


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("text") / "text", n_docs=30)


@pytest.fixture(scope="module")
def source(corpus, tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama")
    tok = load_tokenizer("bpe:300", load_corpus(str(corpus)))
    tok.save(str(folder / "tokenizer.json"))
    _tiny("llama", tok.get_vocab_size()).save_pretrained(folder)
    return folder


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def run_config(corpus, tmp_path, **kw):
    base = dict(
        corpus=str(corpus),
        tokenizer="bpe:300",
        steps=4,
        eval_every=0,
        final_eval_tokens=1024,
        checkpoint_every=2,
        cache=str(tmp_path / "cache"),
        warmup_steps=1,
    )
    return TrainConfig(**{**base, **kw})


# ---- output folders ---------------------------------------------------------------------------


def test_compress_refuses_a_finished_model_and_a_training_run(source, corpus, tmp_path, capsys):
    out = compress(model=str(source), codebook_size=8, out=tmp_path / "m")
    before = (out / "model.safetensors").read_bytes()
    code, _, err = cli(capsys, "compress", "--model", source, "--codebook-size", 16, "--out", out)
    assert code == 2 and "already holds a finished vqlogits model (vqlogits.json)" in err and "--overwrite" in err
    assert (out / "model.safetensors").read_bytes() == before  # nothing replaced
    code, _, err = cli(capsys, "compress", "--model", source, "--codebook-size", 16, "--out", out, "--overwrite")
    assert code == 0 and json.loads((out / "vqlogits.json").read_text())["codebook_size"] == 16
    run = tmp_path / "run"
    train(run_config(corpus, tmp_path, out=str(run)), progress=False)
    code, _, err = cli(capsys, "compress", "--model", source, "--out", run)
    assert code == 2 and "not a vqlogits model's" in err and "results.json" in err
    assert (run / "results.json").exists()


def test_train_refuses_an_unrelated_folder_and_a_refused_run_leaves_nothing(corpus, tmp_path, capsys):
    mine = tmp_path / "myproject"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"holds files that are not a training run's \(notes.txt\)"):
        train(run_config(corpus, tmp_path, out=str(mine)), progress=False)
    train(run_config(corpus, tmp_path, out=str(mine)), progress=False, overwrite=True)
    assert (mine / "results.json").exists() and not (mine / "notes.txt").exists()
    fresh = tmp_path / "fresh"
    with pytest.raises(ValueError, match="codebook_size=5000"):  # refused after the folder was made: nothing stays
        train(run_config(corpus, tmp_path, out=str(fresh), head="vq", codebook_size=5000), progress=False)
    assert not fresh.exists()


def test_a_killed_compress_is_redone_and_calibrate_refuses_foreign_files(source, tmp_path, capsys):
    out = tmp_path / "m"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"half")  # what a kill mid-compress leaves: no vqlogits.json
    assert compress(model=str(source), codebook_size=8, out=out) == out
    (out / "stray.bin").write_bytes(b"x")
    code, _, err = cli(capsys, "calibrate", out, "--max-steps", 1)
    assert code == 2 and "stray.bin" in err


# ---- Hugging Face conventions -------------------------------------------------------------------


def test_automodel_and_save_pretrained_round_trip(source, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    out = compress(model=str(source), codebook_size=8, out=tmp_path / "m")
    ours = load_pretrained(out)
    theirs = AutoModelForCausalLM.from_pretrained(out)  # registered by importing vqlogits.hf
    ids = torch.randint(1, 300, (2, 7))
    with torch.no_grad():
        ref = ours.get_output_embeddings()(ours.base_model(ids).last_hidden_state)
        torch.testing.assert_close(
            theirs.get_output_embeddings()(theirs.base_model(ids).last_hidden_state), ref, rtol=0, atol=0
        )
        theirs.save_pretrained(tmp_path / "again")  # the model's own method
        again = load_pretrained(tmp_path / "again")
        torch.testing.assert_close(
            again.get_output_embeddings()(again.base_model(ids).last_hidden_state), ref, rtol=0, atol=0
        )
    with pytest.raises(ValueError, match="vqlogits.load_pretrained"):
        AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(out))  # never a random head


def test_without_vqlogits_transformers_refuses_the_folder(source, tmp_path):
    out = compress(model=str(source), codebook_size=8, out=tmp_path / "m")
    code = f"from transformers import AutoModelForCausalLM; AutoModelForCausalLM.from_pretrained({str(out)!r})"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode != 0 and "vqlogits" in run.stderr  # an error naming the unknown model type, no random head


# ---- storage --------------------------------------------------------------------------------------


def test_dtype_tied_teacher_file_modes_and_the_summary(source, tmp_path, capsys):
    code, out, _ = cli(
        capsys, "compress", "--model", source, "--codebook-size", 8, "--out", tmp_path / "a", "--dtype", "float16"
    )
    folder = tmp_path / "a"
    from vqlogits.hf.folder import describe

    info = describe(folder)  # the human summary: sizes, labelled shares, where the teacher is
    assert code == 0 and out.startswith(f"{folder}: vq head (codebook size 8); V = 300, d = 32, weights in float16")
    assert f"head parameters: {8 * 32 + 300:,}, {(8 * 32 + 300) / (300 * 32):.1%} of the dense head's 9,600" in out
    assert f"head bytes as stored: {info['head_bytes'] / 1e6:,.1f} MB, {info['head_byte_share']:.1%} of" in out
    assert "teacher (the original head, for calibrate and eval): model.safetensors: model.embed_tokens.weight" in out
    code, out, _ = cli(
        capsys,
        "compress",
        "--model",
        source,
        "--codebook-size",
        8,
        "--out",
        folder,
        "--overwrite",
        "--dtype",
        "float16",
        "--json",
    )
    summary = json.loads(out)
    assert code == 0 and summary["head"] == "vq" and summary["codebook_size"] == 8 and summary["dtype"] == "float16"
    assert summary["head_params"] == 8 * 32 + 300 and summary["head_param_share"] == (8 * 32 + 300) / 9600
    assert summary["head_bytes"] < summary["dense_head_bytes"] and summary["teacher"].endswith(
        "(the tied input embedding)"
    )
    assert not (folder / "dense_head.safetensors").exists()  # the tied teacher is not written twice
    with safetensors.safe_open(folder / "model.safetensors", "pt") as f:
        assert f.get_tensor("lm_head.codebook").dtype == torch.float16
    mode = stat.S_IMODE(os.stat(folder / "model.safetensors").st_mode)
    assert mode == 0o666 & ~_umask()
    from vqlogits.hf.folder import dense_head_weight

    torch.testing.assert_close(
        dense_head_weight(folder), load_pretrained(folder).get_input_embeddings().weight.detach()
    )


def test_the_default_dtype_is_the_smallest_that_holds_the_source(source, tmp_path):
    import transformers as T

    model = T.AutoModelForCausalLM.from_pretrained(source)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.bfloat16().float())  # weights that bf16 holds exactly
    model.save_pretrained(tmp_path / "bf16-exact")
    (tmp_path / "bf16-exact" / "tokenizer.json").write_bytes((source / "tokenizer.json").read_bytes())
    assert (
        json.loads(
            (
                compress(model=str(tmp_path / "bf16-exact"), codebook_size=8, out=tmp_path / "b") / "vqlogits.json"
            ).read_text()
        )["dtype"]
        == "bfloat16"
    )
    assert (
        json.loads((compress(model=str(source), codebook_size=8, out=tmp_path / "c") / "vqlogits.json").read_text())[
            "dtype"
        ]
        == "float32"
    )


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# ---- corpora and the cache --------------------------------------------------------------------------


def test_files_that_are_not_text_are_skipped_or_refused(tmp_path):
    folder = write_corpus(tmp_path / "text", n_docs=5)
    (folder / "noise.txt").write_bytes(os.urandom(4000))
    with pytest.warns(UserWarning, match=r"skipped 1 file\(s\) that are not UTF-8 text: .*noise.txt"):
        docs = load_corpus(str(folder))
    assert sum(len(v) for v in docs.values()) == 5
    with pytest.raises(ValueError, match="noise.txt.* is not UTF-8 text"):
        load_corpus(str(folder / "noise.txt"))


def test_one_user_cache_and_only_the_splits_read(corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("VQLOGITS_CACHE", str(tmp_path / "mine"))
    assert Path(USER_CACHE) == tmp_path / "mine"
    from vqlogits.data.corpora import tokenize_corpus

    arrays, _, _ = tokenize_corpus(str(corpus), "bpe:300", splits=("val", "test"))
    assert set(arrays) == {"val", "test"}
    (folder,) = (tmp_path / "mine" / "tokens").iterdir()
    assert (folder / "test.npy").exists() and not (folder / "train.npy").exists()


# ---- generate, errors, report, analyze ------------------------------------------------------------------


def test_generate_from_a_trained_run(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    train(run_config(corpus, tmp_path, out=str(run), head="vq", codebook_size=16), progress=False)
    code, out, _ = cli(capsys, "generate", run, "w1 w2", "--max-new-tokens", 5)
    assert code == 0 and out.startswith("w1 w2")
    code, out, err = cli(
        capsys, "generate", run, "w1 w2", "--max-new-tokens", 5, "--sample", "--top-k", 3, "--approximate"
    )
    assert code == 0 and "--approximate is ignored" in err


def test_bad_input_is_a_one_line_error(source, tmp_path, capsys):
    folder = compress(model=str(source), codebook_size=8, out=tmp_path / "m")
    meta = (folder / "vqlogits.json").read_text()
    cases = [
        (lambda: None, ["generate", folder, ""], "prompt is empty"),
        (
            lambda: (folder / "vqlogits.json").write_text("[]"),
            ["generate", folder, "w1"],
            "vqlogits.json does not describe",
        ),
        (
            lambda: (folder / "vqlogits.json").write_text("{garbage"),
            ["generate", folder, "w1"],
            "vqlogits.json is not a readable JSON",
        ),
        (
            lambda: (folder / "vqlogits.json").write_bytes(os.urandom(64)),
            ["generate", folder, "w1"],
            "vqlogits.json is not a readable JSON",
        ),
        (
            lambda: (folder / "vqlogits.json").write_text(json.dumps({**json.loads(meta), "head": "banana"})),
            ["eval", folder],
            "vqlogits.json: head must be one of",
        ),
    ]
    for damage, argv, message in cases:
        damage()
        code, _, err = cli(capsys, *argv)
        assert code == 2 and message in err, (argv, err)
        (folder / "vqlogits.json").write_text(meta)
    whole = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(whole[: len(whole) // 2])
    code, _, err = cli(capsys, "generate", folder, "w1")
    assert code == 2 and "model.safetensors cannot be read" in err
    (folder / "model.safetensors").write_bytes(whole)
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.pt").write_bytes(os.urandom(3000))
    code, _, err = cli(capsys, "generate", run, "w1")
    assert code == 2 and "model.pt is damaged" in err and "weights_only" not in err
    with pytest.raises(SystemExit):  # checked while parsing, before any model is loaded
        main(["generate", str(folder), "w1", "--top-p", "1.5"])
    assert "--top-p: must be in (0, 1], got 1.5" in capsys.readouterr().err
    code, _, err = cli(capsys, "generate", folder, "w1", "--max-new-tokens", 2, "--top-k", 5)
    assert code == 0 and "--top-k is ignored: it only changes sampling" in err
    code, _, err = cli(capsys, "generate", folder, "w1", "--max-new-tokens", 2, "--approximate")
    assert code == 0 and "--approximate is ignored: the model is not accelerated" in err


def test_report_refuses_runs_on_different_corpora(corpus, tmp_path, capsys):
    other = write_corpus(tmp_path / "other", n_docs=30, seed=1)
    train(run_config(corpus, tmp_path, out=str(tmp_path / "runs" / "a")), progress=False)
    train(run_config(other, tmp_path, out=str(tmp_path / "runs" / "b")), progress=False)
    code, _, err = cli(capsys, "report", tmp_path / "runs")
    assert code == 2 and "differ in corpus or tokenizer" in err and "report each set separately" in err


def test_analyze_prints_a_summary_with_units(corpus, tmp_path, capsys):
    cfg = run_config(corpus, tmp_path)
    train(replace(cfg, out=str(tmp_path / "dense")), progress=False)
    train(replace(cfg, head="vq", codebook_size=16, out=str(tmp_path / "vq")), progress=False)
    code, out, err = cli(
        capsys, "analyze", tmp_path / "dense", tmp_path / "vq", "--max-tokens", 512, "--cache", tmp_path / "cache"
    )
    assert code == 0 and "nats per token" in out and "within code" in out and "analyze" in err  # tqdm's progress
    code, out, _ = cli(
        capsys,
        "analyze",
        tmp_path / "dense",
        tmp_path / "vq",
        "--max-tokens",
        512,
        "--json",
        "--cache",
        tmp_path / "cache",
    )
    assert json.loads(out)["tokens"] > 0


def test_the_profiler_prints_nothing(capfd):
    from vqlogits.timing import peak_bytes

    assert peak_bytes(lambda: torch.ones(100, 100) + 1) > 0
    assert "profiler" not in capfd.readouterr().err


# ---- calibrate keeps its promises ---------------------------------------------------------------


def test_calibrate_resumes_exactly_refuses_other_options_and_leaves_nothing(
    source, corpus, tmp_path, capsys, monkeypatch
):
    """Ctrl-C mid-stage (the step under way finishes, then the checkpoint): the rerun resumes at that
    step and ends with exactly the uninterrupted run's head; other options are refused while it
    is unfinished; the finished run leaves no checkpoint, and a rerun is a new, recorded calibration;
    a budget the caching uses up is refused before any step."""
    import signal

    from vqlogits.hf import calibrate as C

    cache = tmp_path / "cache"
    args = ["--corpus", corpus, "--max-steps", 12, "--hidden-tokens", 1024, "--block", 32, "--reassign-every", 5]
    args += ["--cache", cache]  # the map moves at steps 5 and 10: the resumed run needs the learner's state too
    whole = compress(model=str(source), codebook_size=8, out=tmp_path / "whole")
    code, _, err = cli(capsys, "calibrate", whole, *args, "--stages", "1")
    assert code == 0 and "12/12" in err  # with a step limit, the bar counts steps
    cut = compress(model=str(source), codebook_size=8, out=tmp_path / "cut")
    source_vq = compress(model=str(source), codebook_size=8, out=tmp_path / "uncalibrated")
    real, calls = C.distill_loss, []

    def ctrl_c_at_step_7(*a, **k):
        calls.append(1)
        if len(calls) == 7:
            signal.raise_signal(signal.SIGINT)
        return real(*a, **k)

    monkeypatch.setattr(C, "distill_loss", ctrl_c_at_step_7)
    code, _, err = cli(capsys, "calibrate", cut, *args, "--stages", "1")
    assert code == 130 and "interrupted; rerun the same command to resume" in err
    assert torch.load(cut / "calib_stage1.pt", weights_only=True)["step"] == 7  # the whole step 7, no more
    code, _, err = cli(capsys, "calibrate", cut, *args, "--stages", "1", "--kl-weight", 0.5)
    assert code == 2 and "interrupted calibration with other options (kl_weight 1.0 -> 0.5)" in err
    monkeypatch.setattr(C, "distill_loss", real)
    code, out, _ = cli(capsys, "calibrate", cut, *args, "--stages", "1")
    assert code == 0 and "stage 1: 12 steps" in out and "rows learned at codebook " in out
    a, b = load_pretrained(whole).get_output_embeddings(), load_pretrained(cut).get_output_embeddings()
    assert torch.equal(a.codebook, b.codebook) and torch.equal(a.bias, b.bias)  # exactly the uninterrupted run
    assert torch.equal(a.assignment, b.assignment) and not torch.equal(
        a.assignment, load_pretrained(source_vq).get_output_embeddings().assignment
    )
    assert sorted(p.name for p in cut.iterdir() if p.name.startswith("calib")) == []
    code, out, _ = cli(capsys, "calibrate", cut, *args, "--stages", "1", "--max-steps", 3, "--json")
    history = json.loads((cut / "vqlogits.json").read_text())["calibration"]
    assert json.loads(out)["stages"]["1"]["steps"] == 3 and [r["stages"]["1"]["steps"] for r in history] == [12, 3]
    code, _, err = cli(capsys, "calibrate", cut, *args[:-2], "--cache", tmp_path / "fresh", "--budget-minutes", 1e-4)
    assert code == 2 and "went to caching 1,024 hidden states" in err and "rerun with a larger --budget-minutes" in err


# ---- no silent defaults, one-line interrupts -----------------------------------------------------


def test_ignored_options_interrupts_locks_and_the_cache_variable(source, corpus, tmp_path, capsys, monkeypatch):
    """An option the head does not take is named; Ctrl-C is one line, with the rerun hint only where
    a rerun resumes (and a rerun says where it resumes); a finished run keeps no lock; the
    Makefile passes $VQLOGITS_CACHE on."""
    from vqlogits.hf import compress as compress_mod
    from vqlogits.hf import evaluate as evaluate_mod
    from vqlogits.lm import train as train_mod

    code, _, err = cli(capsys, "compress", "--model", source, "--out", tmp_path / "big")
    assert code == 2 and "codebook_size must be at most the model's vocabulary, 300 tokens, got 1024" in err
    assert not (tmp_path / "big").exists()
    vq = ["compress", "--model", source, "--head", "vq", "--codebook-size", 8]
    code, _, err = cli(capsys, *vq, "--bits", 4, "--out", tmp_path / "vq")
    assert code == 0 and "--bits is ignored: a vq head takes" in err, err
    ev = ["eval", tmp_path / "vq", "--corpus", corpus, "--max-tokens", 512, "--cache", tmp_path / "cache"]
    code, out, _ = cli(capsys, *ev)
    lines = out.strip().splitlines()
    assert code == 0 and len(lines) == 7 and "perplexity: original" in lines[1] and "over 2 windows" in lines[1]
    assert "bits per byte" in lines[2] and "row of their own" in lines[4] and "as stored" in lines[5]
    assert "decoding end to end" in lines[6]
    code, out, _ = cli(capsys, *ev, "--json")
    assert code == 0 and len(json.loads(out)["window_gaps"]) == 2  # the numbers are for machines

    def ctrl_c(*a, **k):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(compress_mod, "load_causal_lm", ctrl_c)
        code, _, err = cli(capsys, "compress", "--model", source, "--out", tmp_path / "cut")
    last = err.strip().splitlines()[-1]
    assert code == 130 and last == "vqlogits compress: interrupted; rerun the same command to resume"
    with monkeypatch.context() as m:
        m.setattr(evaluate_mod, "load_pretrained", ctrl_c)
        code, _, err = cli(capsys, "eval", tmp_path / "vq", "--corpus", corpus)
    assert code == 130 and err.strip().splitlines()[-1] == "vqlogits eval: interrupted; nothing was finished"

    run = tmp_path / "run"
    args = ["train", "--corpus", corpus, "--tokenizer", "bpe:300", "--steps", 4, "--eval-every", 0]
    args += ["--final-eval-tokens", 1024, "--checkpoint-every", 2, "--warmup-steps", 1, "--cache", tmp_path / "cache"]
    real = train_mod.get_batch
    with monkeypatch.context() as m:
        m.setattr(train_mod, "get_batch", lambda data, at, *a, **k: ctrl_c() if at == 3 else real(data, at, *a, **k))
        code, _, err = cli(capsys, *args, "--out", run)
    assert code == 130 and "interrupted; rerun the same command to resume" in err
    code, out, err = cli(capsys, *args, "--out", run)
    assert code == 0 and "resuming at step 2 of 4" in out + err
    assert (run / "results.json").exists() and not (run / "lock").exists()

    root = Path(__file__).resolve().parents[1]

    def make(env: dict) -> str:
        return subprocess.run(["make", "-n", "data"], cwd=root, env=env, capture_output=True, text=True).stdout

    env = {k: v for k, v in os.environ.items() if k != "VQLOGITS_CACHE"}
    assert f"--cache {tmp_path / 'mine'}" in make({**env, "VQLOGITS_CACHE": str(tmp_path / "mine")})
    assert f"--cache {Path.home() / '.cache' / 'vqlogits'}" in make(env)

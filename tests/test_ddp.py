"""DDP through torchrun: 2 CPU processes (gloo) reproduce one process's losses at the same global batch."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from ddp_worker import configs
from test_train import write_corpus
from vqlogits.lm.train import train

HANG_GUARD_S = 3600  # stops a hung subprocess; not a measurement (a loaded machine is slow, not wrong)

WORKER = str(Path(__file__).with_name("ddp_worker.py"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
    corpus = write_corpus(tmp_path / "text")
    common = [
        "train",
        "--corpus",
        str(corpus),
        "--tokenizer",
        "bpe:300",
        "--steps",
        "8",
        "--batch-size",
        "8",
        "--eval-every",
        "0",
        "--checkpoint-every",
        "4",
        "--final-eval-tokens",
        "1024",
        "--warmup-steps",
        "2",
        "--cache",
        str(tmp_path / "cache"),
        "--head",
        "vq",
        "--codebook-size",
        "16",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run(
        [sys.executable, "-m", "vqlogits.cli", *common, "--out", str(tmp_path / "one")],
        env=env,
        capture_output=True,
        text=True,
    )
    assert single.returncode == 0, _why(single)
    ddp = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            f"--master_port={_free_port()}",
            "-m",
            "vqlogits.cli",
            *common,
            "--out",
            str(tmp_path / "two"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    assert ddp.returncode == 0, _why(ddp)
    one = json.loads((tmp_path / "one" / "results.json").read_text())["history"]["loss"]
    two = json.loads((tmp_path / "two" / "results.json").read_text())["history"]["loss"]
    assert len(one) == len(two) == 8
    for a, b in zip(one, two, strict=True):
        assert abs(a - b) <= 1e-4 * abs(a), (one, two)
    assert one != [one[0]] * 8  # it trained: the losses move


def _why(proc: subprocess.CompletedProcess) -> str:
    """The ranks' own error lines first: torchrun's summary at the end of stderr hides them."""
    errors = [line for line in proc.stderr.splitlines() if "Error" in line or "error:" in line]
    return "\n".join(errors[:20]) + "\n...\n" + proc.stderr[-1500:]


def _torchrun(args, env=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VQLOGITS_DEBUG": "1", **(env or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S)


def _maps(run: Path) -> dict:
    state = torch.load(run / "model.pt", weights_only=True)["model"]
    return {k: v for k, v in state.items() if "assignment" in k}


def test_learned_map_under_two_processes_matches_one(tmp_path):
    """Every head with a map, the vq warm-up swap included: same losses, identical maps (checked at
    every reassignment on every rank with VQLOGITS_DEBUG=1)."""
    corpus = write_corpus(tmp_path / "text")
    cache = str(tmp_path / "cache")
    for cfg in configs(str(corpus), cache, str(tmp_path / "one")):
        train(cfg, progress=False)
    ddp = _torchrun([WORKER, str(corpus), cache, str(tmp_path / "two"), "all"])
    assert ddp.returncode == 0, _why(ddp)
    for cfg in configs(str(corpus), cache, str(tmp_path / "one")):
        name = Path(cfg.out).name
        one, two = (json.loads((tmp_path / side / name / "results.json").read_text()) for side in ("one", "two"))
        assert len(one["history"]["moved"]) == (3 if name == "vq-warm" else 4) and any(
            m > 0 for _, m in one["history"]["moved"]
        ), name  # the map moved
        for a, b in zip(one["history"]["loss"], two["history"]["loss"], strict=True):
            assert abs(a - b) <= 1e-4 * abs(a), (name, one["history"]["loss"], two["history"]["loss"])
        maps_one, maps_two = _maps(tmp_path / "one" / name), _maps(tmp_path / "two" / name)
        assert maps_one.keys() == maps_two.keys() and maps_one
        for k in maps_one:
            assert torch.equal(maps_one[k], maps_two[k]), (name, k)


def test_killed_two_process_run_with_the_learned_map_resumes_exactly(tmp_path):
    corpus = write_corpus(tmp_path / "text")
    cache = str(tmp_path / "cache")
    full = _torchrun([WORKER, str(corpus), cache, str(tmp_path / "full"), "first"])
    assert full.returncode == 0, _why(full)
    crashed = _torchrun([WORKER, str(corpus), cache, str(tmp_path / "cut"), "crash"])
    assert crashed.returncode != 0 and (tmp_path / "cut" / "vq" / "ckpt.pt").exists()
    assert not (tmp_path / "cut" / "vq" / "results.json").exists()
    resumed = _torchrun([WORKER, str(corpus), cache, str(tmp_path / "cut"), "first"])
    assert resumed.returncode == 0, _why(resumed)
    a, b = (json.loads((tmp_path / side / "vq" / "results.json").read_text()) for side in ("full", "cut"))
    assert a["history"]["loss"] == b["history"]["loss"] and a["history"]["moved"] == b["history"]["moved"]
    assert a["test_ppl"] == b["test_ppl"]
    for k, v in _maps(tmp_path / "full" / "vq").items():
        assert torch.equal(v, _maps(tmp_path / "cut" / "vq")[k])

"""DDP through torchrun: 2 CPU processes (gloo) reproduce one process's losses at the same global batch."""

import json
import os
import socket
import subprocess
import sys

from test_train import write_corpus


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
    corpus = write_corpus(tmp_path / "text")
    common = ["train", "--corpus", str(corpus), "--tokenizer", "bpe:300", "--steps", "8", "--batch-size", "8",
              "--eval-every", "0", "--checkpoint-every", "4", "--final-eval-tokens", "1024", "--warmup-steps", "2",
              "--cache", str(tmp_path / "cache"), "--head", "vq", "--codebook-size", "16"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, "-m", "vqlogits.cli", *common, "--out", str(tmp_path / "one")], env=env, capture_output=True, text=True)
    assert single.returncode == 0, single.stderr[-2000:]
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
         "-m", "vqlogits.cli", *common, "--out", str(tmp_path / "two")],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "results.json").read_text())["history"]["loss"]
    two = json.loads((tmp_path / "two" / "results.json").read_text())["history"]["loss"]
    assert len(one) == len(two) == 8
    for a, b in zip(one, two):
        assert abs(a - b) <= 1e-4 * abs(a), (one, two)
    assert one != [one[0]] * 8  # it trained: the losses move

"""Bits per byte, free model shapes and bodies sized to a training-FLOPs target."""

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from test_train import write_corpus
from vqlogits.data.tokenizer import load_tokenizer, token_byte_lengths
from vqlogits.lm.evaluate import evaluate_split
from vqlogits.lm.experiments import sweep
from vqlogits.lm.model import GPT, ModelConfig, body_train_flops, size_body
from vqlogits.lm.train import TrainConfig, train

TEXTS = ["naïve café — 東京 ok", "plain ascii text, with punctuation!", "tabs\tand\nnewlines \u00a0 nbsp"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus") / "text")


@pytest.fixture
def base(corpus, tmp_path):
    return TrainConfig(
        corpus=str(corpus),
        tokenizer="bpe:300",
        steps=6,
        eval_every=0,
        final_eval_tokens=2048,
        checkpoint_every=3,
        cache=str(tmp_path / "cache"),
        out=str(tmp_path / "run"),
        warmup_steps=2,
    )


@pytest.mark.parametrize("size", [300, 600])
def test_token_bytes_add_up_to_the_utf8_length(size):
    tok = load_tokenizer(f"bpe:{size}", {"train": TEXTS * 20})
    lengths = token_byte_lengths(tok)
    for text in TEXTS + ["unseen: Ωmega ☃ and \x00 a control byte"]:
        ids = tok.encode(text).ids
        assert int(lengths[ids].sum()) == len(text.encode("utf-8"))
    assert lengths[tok.token_to_id("<|endoftext|>")] == 0  # the separator is not text


def test_two_tokenizers_count_the_same_bytes():
    small, large = (load_tokenizer(f"bpe:{n}", {"train": TEXTS * 20}) for n in (280, 700))
    assert small.get_vocab_size() < large.get_vocab_size()
    for text in TEXTS:
        a, b = small.encode(text).ids, large.encode(text).ids
        assert len(a) > len(b)  # different tokens ...
        assert token_byte_lengths(small)[a].sum() == token_byte_lengths(large)[b].sum()  # ... the same bytes


def test_a_tokenizer_that_is_not_byte_level_is_refused():
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"hello": 0, "wörld": 1, "[UNK]": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(ValueError, match="byte-level"):
        token_byte_lengths(tok)


class ConstantHead(torch.nn.Module):
    """Uniform over V tokens: every target costs ln V nats."""

    def __init__(self, V):
        super().__init__()
        self.V = V
        self.w = torch.nn.Parameter(torch.zeros(1))

    def loss(self, h, y, reduction="sum"):
        return torch.full((), y.numel() * math.log(self.V))


def test_bits_per_byte_by_hand():
    # 2 windows of 4 targets and one of 1 over ids 0..9; token i stands for i bytes; uniform over V = 16.
    model = GPT(ModelConfig(16, 1, 1, 8, 4))
    model.head = ConstantHead(16)
    data = np.arange(10, dtype=np.int64)  # targets: ids 1..9 (the first token never is one)
    r = evaluate_split(model, data, 100, byte_lengths=np.arange(16))
    assert r["tokens"] == 9 and r["bytes"] == sum(range(1, 10)) == 45
    assert r["nats"] == pytest.approx(9 * math.log(16))
    assert r["bpb"] == pytest.approx(9 * 4 / 45)  # 4 bits per token, 45 bytes
    assert r["ppl"] == pytest.approx(16)


def test_train_reports_bits_per_byte_shape_and_costs(base, json_never_in_place):
    r = train(replace(base, n_layer=3, d_model=64), progress=False)
    saved = json.loads((Path(base.out) / "results.json").read_text())
    assert (
        saved["model_config"]["n_layer"] == 3
        and saved["model_config"]["d_model"] == 64
        and saved["model_config"]["n_head"] == 2
    )
    for s in ("val", "test"):
        e = saved["eval"][s]
        assert saved[f"{s}_bpb"] == pytest.approx(e["nats"] / e["bytes"] / math.log(2))
        assert saved[f"{s}_ppl"] == pytest.approx(math.exp(e["nats"] / e["tokens"]))
    V = r["model_config"]["vocab_size"]
    assert r["embedding_params"] == V * 64 + 64 * r["model_config"]["block_size"]
    assert r["total_params"] > r["embedding_params"] + r["head_params"]
    T = r["model_config"]["block_size"]
    assert r["model_decode_flops"] == 24 * 3 * 64 * 64 + 2 * 3 * T * 64 + 2 * V * 64
    assert r["train_flops_per_token"] == pytest.approx(body_train_flops(3, 64, T) + 6 * V * 64)


def test_size_body_hits_the_target_and_refuses_the_impossible():
    head = lambda d: 6 * 1000 * d  # noqa: E731 (a dense head over 1000 tokens)
    target = body_train_flops(2, 128, 64) + head(128)
    assert size_body(target, head, 64, n_layer=2) == (2, 128)
    L, d = size_body(target, head, 64, d_model=96)
    assert d == 96 and abs(body_train_flops(L, 96, 64) + head(96) - target) <= 0.1 * target
    with pytest.raises(ValueError, match="exactly one of n_layer and d_model"):
        size_body(target, head, 64)
    with pytest.raises(ValueError, match="within 10%"):
        size_body(target / 100, head, 64, d_model=512)  # one layer at d = 512 is already far over


@pytest.mark.parametrize("head,extra", [("dense", {}), ("hybrid-twolevel", dict(head_budget=0.2)), ("adaptive", {})])
def test_flops_per_token_sizes_the_body(base, head, extra):
    tiny = train(replace(base, out=base.out + "-tiny"), progress=False)
    target = tiny["train_flops_per_token"]
    r = train(replace(base, head=head, flops_per_token=target, d_model=32, **extra), progress=False)
    assert r["model_config"]["d_model"] == 32 and r["model_config"]["n_layer"] > 2
    assert abs(r["train_flops_per_token"] / target - 1) <= 0.1  # measured over the run, not predicted


def test_flops_per_token_needs_one_free_size(base):
    with pytest.raises(ValueError, match="give exactly one"):
        train(replace(base, flops_per_token=1e6), progress=False)
    with pytest.raises(ValueError, match="give exactly one"):
        train(replace(base, flops_per_token=1e6, n_layer=2, d_model=64), progress=False)


def test_sweep_retrains_a_lost_snapshot(base, tmp_path):
    out = tmp_path / "chain"
    sweep(replace(base, steps=4), ["dense"], [], ["random"], [0], out, wsd_steps=[4, 8])
    first = json.loads((out / "dense-s0" / "steps8" / "results.json").read_text())
    # Keep only the results of the first budget, as a clone of the repository does.
    for p in (out / "dense-s0").rglob("*"):
        if p.is_file() and not (p.name == "results.json" and p.parent.name == "steps4"):
            p.unlink()
    sweep(replace(base, steps=4), ["dense"], [], ["random"], [0], out, wsd_steps=[4, 8])
    again = json.loads((out / "dense-s0" / "steps8" / "results.json").read_text())
    assert again["test_ppl"] == first["test_ppl"] and again["history"]["loss"] == first["history"]["loss"]


@pytest.mark.parametrize("head,extra", [("dense", {}), ("vq", dict(codebook_size=8))])
def test_cached_generation_equals_recomputing_every_prefix(head, extra):
    torch.manual_seed(0)
    model = GPT(ModelConfig(50, 2, 2, 16, 32, head=head, **extra)).eval()
    ids = torch.randint(0, 50, (3, 5))
    ours = model.generate(ids, 20)
    seq = ids
    with torch.no_grad():
        for _ in range(20):
            seq = torch.cat([seq, model.head.greedy(model.hidden(seq)[:, -1])[:, None]], 1)
    assert torch.equal(ours, seq)
    with pytest.raises(ValueError, match="exceeds block_size=32"):
        model.generate(ids, 40)


def test_equal_compute_report(base, tmp_path):
    from vqlogits.studies.equal_compute import CHEAP, DENSE, report

    root = tmp_path / "study"
    target = train(replace(base, out=str(tmp_path / "probe")), progress=False)["train_flops_per_token"]
    for design, cfg in (
        ("dense-tiny", replace(base)),
        ("vq-grown", replace(base, head="vq", head_budget=0.3, d_model=32, flops_per_token=target)),
    ):
        for seed in (0, 1):
            sweep(
                cfg,
                [cfg.head],
                [],
                ["random"],
                [seed],
                root / design,
                budgets=[0.3] if cfg.head == "vq" else [],
                wsd_steps=[4, 8],
            )
    md = report(root, tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert {r["design"] for r in summary["rows"]} == {"dense-tiny", "vq-grown"} and {
        r["steps"] for r in summary["rows"]
    } == {4, 8}
    assert all(r["seeds"] == 2 and len(r["test_bpb_seeds"]) == 2 for r in summary["rows"])
    v = summary["verdicts"][-1]
    assert v["steps"] == 8 and v[f"best {DENSE}"] == "dense-tiny" and v[f"best {CHEAP}"] == "vq-grown"
    lo, hi = v[f"{CHEAP} vs best dense"]["ci95"]
    assert lo <= v[f"{CHEAP} vs best dense"]["pct"] <= hi
    assert summary["best_dense"] == "dense-tiny" and summary["decode"]["vq-grown"]["weights"] == "trained"
    assert summary["decode"]["dense-tiny"]["bytes_per_s"] > 0
    for name in ("bpb_vs_train_flops.png", "bpb_vs_decode_flops.png", "bpb_vs_params.png"):
        assert (tmp_path / "out" / name).exists()
    assert "## 8 steps" in md.read_text()
    measured = summary["decode"]
    report(root, tmp_path / "out", speed=False)  # keeps the speeds measured before, on an idle core
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["decode"] == measured
    report(root, tmp_path / "elsewhere", speed=False)  # nothing measured there before: no speeds
    assert json.loads((tmp_path / "elsewhere" / "summary.json").read_text())["decode"] == {}


def test_verdicts_give_each_gap_and_the_runner_up_dense_design():
    from vqlogits.studies.equal_compute import ADAPTIVE, CHEAP, DENSE, verdicts

    def row(design, kind, seeds):
        return dict(
            design=design, steps=4, train_flops=1.0, kind=kind, test_bpb=sum(seeds) / len(seeds),
            test_bpb_seeds=seeds, decode_flops_per_byte=1.0,
        )  # fmt: skip

    rows = [
        row("small-vocab", DENSE, [1.60, 1.61, 1.59]),
        row("tiny", DENSE, [1.61, 1.62]),
        row("wide", DENSE, [1.70]),
        row("hybrid", CHEAP, [1.70, 1.72]),
        row("adaptive", ADAPTIVE, [1.64]),
    ]
    (v,) = verdicts(rows)
    assert v["best"] == v[f"best {DENSE}"] == "small-vocab" and v["runner-up dense head"] == "tiny"
    runner_up = v["runner-up dense vs best dense"]
    assert runner_up["pct"] == pytest.approx(100 * 0.015 / 1.60)
    assert runner_up["ci95"][0] < 0 < runner_up["ci95"][1]  # 2 and 3 seeds this close: not decided
    assert v[f"{CHEAP} vs best dense"]["pct"] == pytest.approx(100 * 0.11 / 1.60) and not v["moonshot"]
    assert v[f"{ADAPTIVE} vs best dense"]["ci95"] is not None  # one seed borrows the other side's variance
    (alone,) = verdicts(rows[:1])
    assert "runner-up dense head" not in alone and f"{CHEAP} vs best dense" not in alone


def test_pareto_front():
    from vqlogits.studies.equal_compute import pareto

    rows = [
        dict(design=d, steps=1, x=x, test_bpb=b)
        for d, x, b in (("a", 1, 3.0), ("b", 2, 2.0), ("c", 3, 2.5), ("d", 3, 1.0))
    ]
    assert pareto(rows, "x") == {("a", 1), ("b", 1), ("d", 1)}

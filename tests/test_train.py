"""Training harness: any folder of text, results.json, exact resume, heads, maps, sweep, report, CLI."""

import json
import math
import random
from dataclasses import replace

import pytest
import torch

from conftest import train_until_crash
from vqlogits.cli import main
from vqlogits.data.corpora import load_corpus, tokenize_corpus
from vqlogits.lm import train as train_mod
from vqlogits.lm.experiments import evaluate, load_model, sweep
from vqlogits.lm.train import TrainConfig, train
from vqlogits.studies.report import write_report

RESULT_KEYS = {
    "head",
    "codebook_size",
    "head_params",
    "dense_head_params",
    "total_params",
    "val_ppl",
    "test_ppl",
    "train_tokens",
    "tokens_per_s",
    "wall_s",
}


def write_corpus(folder, n_docs=30, words=400, seed=0):
    """Documents from a small Markov chain over words, so there is something to learn."""
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(60)] + ["the", "a", "of", "and", "def", "return", "(", ")", ":"]
    nxt = {w: rng.sample(vocab, 4) for w in vocab}
    folder.mkdir(parents=True, exist_ok=True)
    for d in range(n_docs):
        w, out = rng.choice(vocab), []
        for _ in range(words):
            out.append(w)
            w = rng.choice(nxt[w])
        (folder / f"doc{d:03d}.txt").write_text(" ".join(out))
    return folder


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus") / "text")


@pytest.fixture
def base(corpus, tmp_path):
    return TrainConfig(
        corpus=str(corpus),
        tokenizer="bpe:300",
        steps=12,
        eval_every=6,
        eval_tokens=2048,
        final_eval_tokens=2048,
        checkpoint_every=4,
        cache=str(tmp_path / "cache"),
        out=str(tmp_path / "run"),
        warmup_steps=2,
    )


def test_split_is_deterministic_and_complete(corpus):
    a, b = load_corpus(str(corpus)), load_corpus(str(corpus))
    assert a == b
    assert all(a[s] for s in ("train", "val", "test"))
    assert sum(len(v) for v in a.values()) == 30


def test_train_on_a_folder_writes_results(base, json_never_in_place):
    results = train(base, progress=False)
    saved = json.loads((train_mod.Path(base.out) / "results.json").read_text())
    assert RESULT_KEYS <= set(saved)
    assert saved["head"] == "dense" and saved["head_params"] == saved["dense_head_params"]
    assert results["val_ppl"] < 300  # below the uniform 300-token baseline: it learned something
    assert len(saved["history"]["loss"]) == 12 and saved["history"]["val_step"] == [6, 12]


@pytest.mark.parametrize(
    "head,extra",
    [
        ("dense", {}),
        ("vq", dict(codebook_size=16, mapping="kmeans", warmup_dense_steps=5, reassign_every=3)),
        ("rvq", dict(codebook_size=16, reassign_every=3)),
    ],
)
def test_killed_run_resumes_exactly(base, monkeypatch, head, extra):
    cfg = replace(base, head=head, **extra)
    full = train(replace(cfg, out=cfg.out + "-full"), progress=False)

    train_until_crash(cfg, 10)  # between checkpoints (8 and 12): steps 9-10 are redone after resume
    resumed = train(cfg, progress=False)
    assert resumed["history"]["loss"] == full["history"]["loss"]
    assert resumed["val_ppl"] == full["val_ppl"] and resumed["test_ppl"] == full["test_ppl"]


def test_resume_with_a_different_config_is_refused(base):
    train(replace(base, steps=4), progress=False)
    with pytest.raises(ValueError, match=r"different config.*'lr': \(0.002, 0.01\)"):
        train(replace(base, steps=4, lr=0.01), progress=False)


@pytest.mark.parametrize(
    "kw",
    [
        dict(head="vq", codebook_size=8, mapping="random"),
        dict(head="vq", codebook_size=8, mapping="frequency", head_bias=False, bias_init="zeros"),
        dict(head="vq", codebook_size=8, mapping="kmeans-embed", warmup_dense_steps=4, codebook_init="centroids"),
        dict(head="adaptive"),
        dict(head="lowrank", rank=8),
    ],
    ids=str,
)
def test_every_head_and_map_trains(base, kw):
    r = train(replace(base, steps=8, **kw), progress=False)
    assert r["head"] == kw["head"]
    assert r["head_params"] < r["dense_head_params"]
    assert torch.isfinite(torch.tensor(r["test_ppl"]))
    if kw["head"] == "vq":
        assert sum(r["code_sizes"]) == r["dense_head_params"] // 128


@pytest.mark.parametrize("head", ["vq", "hybrid", "twolevel", "hybrid-twolevel", "vq-lowrank", "rvq"])
def test_learned_map_moves_tokens(base, head):
    r = train(
        replace(base, head=head, codebook_size=8, n_frequent=4, rank=4, steps=12, reassign_every=4, reassign_frac=0.2),
        progress=False,
    )
    moved = [m for _, m in r["history"]["moved"]]
    assert len(moved) == 3 and max(moved) > 0


def test_bad_options_raise(base):
    with pytest.raises(ValueError, match="warmup_dense_steps >= 1"):
        train(replace(base, head="vq", mapping="kmeans"), progress=False)
    with pytest.raises(ValueError, match="reassign_every=5 needs a head with a token -> code map, got head='lowrank'"):
        train(replace(base, head="lowrank", reassign_every=5), progress=False)
    with pytest.raises(ValueError, match="mapping must be one of"):
        train(replace(base, head="vq", mapping="nope"), progress=False)
    with pytest.raises(ValueError, match="corpus .* matches no"):
        train(replace(base, corpus=base.cache + "/nothing-here"), progress=False)


def test_sweep_report_and_cli(base, tmp_path, capsys, json_never_in_place):
    report = sweep(replace(base, steps=6), ["dense", "vq"], [8, 32], ["random"], [0, 1], tmp_path / "sweep")
    report = write_report([report], report)
    text = report.read_text()
    assert "| dense | 2 |" in text and "| vq K=8 map=random | 2 |" in text and "| vq K=32 map=random | 2 |" in text
    for png in ("ppl_vs_params.png", "training_curves.png", "codes.png"):
        assert (tmp_path / "sweep" / png).stat().st_size > 1000
    assert main(["report", str(tmp_path / "sweep"), "--out", str(tmp_path / "rep")]) == 0
    assert "vq K=32" in capsys.readouterr().out
    r = evaluate(tmp_path / "sweep" / "vq32-random-s0")
    assert r["val_ppl"] == json.loads((tmp_path / "sweep" / "vq32-random-s0" / "results.json").read_text())["val_ppl"]
    assert main(["eval", str(tmp_path / "sweep" / "dense-s0")]) == 0
    assert "test_bpb: " in capsys.readouterr().out  # a summary for people, --json for machines
    # Every target token of a split is scored, the partial last window's too: the whole test split.
    assert main(["eval", str(tmp_path / "sweep" / "dense-s0"), "--max-tokens", "1000000", "--json"]) == 0
    scored = json.loads(capsys.readouterr().out)["eval"]["test"]["tokens"]
    test = tokenize_corpus(base.corpus, base.tokenizer, base.cache, splits=("test",))[0]["test"]
    block = load_model(tmp_path / "sweep" / "dense-s0")[0].cfg.block_size
    assert scored == len(test) - 1 and scored % block != 0  # a window cut short at the end
    assert (
        main(
            [
                "train",
                "--corpus",
                base.corpus,
                "--tokenizer",
                "bpe:300",
                "--head",
                "vq",
                "--mapping",
                "kmeans",
                "--cache",
                base.cache,
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert "warmup_dense_steps" in capsys.readouterr().err


@pytest.mark.parametrize("head", ["twolevel", "hybrid", "hybrid-twolevel", "vq-lowrank", "rvq"])
def test_new_heads_train_with_a_head_budget(base, head):
    r = train(replace(base, steps=4, head=head, head_budget=0.25), progress=False)
    assert r["head_params"] <= 0.25 * r["dense_head_params"] and r["head_budget"] == 0.25
    assert r["decode_flops"] > 0 and r["test_ppl"] > 1


def test_crossing_interpolates_in_log_log():
    from vqlogits.studies.report import crossing

    assert crossing([(0.01, 400.0), (0.04, 100.0)], 200.0) == "2.0%"  # halfway in log-log
    assert crossing([(0.04, 100.0), (0.01, 400.0)], 500.0) == "≤ 1%"
    assert crossing([(0.01, 400.0), (0.04, 300.0)], 200.0) == "> 4%"


def test_budget_sweep_skips_hopeless_budgets(base, tmp_path):
    report = sweep(
        replace(base, steps=3),
        ["dense", "vq", "twolevel"],
        [],
        ["random"],
        [0],
        tmp_path / "b",
        reassign=[0, 2],
        budgets=[0.02, 0.3],
    )
    report = write_report([report], report)
    text = report.read_text()
    # 2% of 300 x 128 fits a 3-code VQ head with its bias, but not one dim per token for twolevel
    assert "vq @2%" in text and "twolevel @30%" in text and "twolevel @2%" not in text and "vq @2% learned/2" in text
    rows = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| ")}
    assert rows["| twolevel learned"].startswith("| twolevel learned | – | ")  # no 2% cell
    assert rows["| twolevel learned"].split(" | ")[-1] in ("> 30% |", "≤ 30% |")  # where +5% of dense is reached
    assert rows["| vq"].count(", n=1)") == 2  # a cell per budget
    report = sweep(
        replace(base, steps=3, reassign_frac=0.2),
        ["vq"],
        [],
        ["random"],
        [0],
        tmp_path / "b",
        reassign=[2],
        budgets=[0.3],
    )
    report = write_report([report], report)
    assert (
        "vq @30% learned/2 frac=0.2 |" in report.read_text()
        and (tmp_path / "b" / "vq-b0.3-learn2-f0.2-s0" / "results.json").exists()
    )
    assert (tmp_path / "b" / "ppl_vs_decode_cost.png").exists()


def test_within_code_analysis(base, tmp_path):
    from vqlogits.lm.experiments import load_model
    from vqlogits.studies.analysis import within_code_analysis

    dense = train(replace(base, steps=6, out=str(tmp_path / "d")), progress=False)
    train(replace(base, steps=6, head="vq", codebook_size=8, out=str(tmp_path / "v")), progress=False)
    r = within_code_analysis(tmp_path / "d", tmp_path / "v", max_tokens=base.final_eval_tokens)
    assert abs(r["vq_code"] + r["vq_within"] - r["vq_total"]) < 1e-9
    assert abs(r["dense_total"] - math.log(dense["test_ppl"])) < 1e-3  # same tokens as the final test eval
    # VQ's within-code term is context-free: it equals what the bias alone gives
    vq, _ = load_model(tmp_path / "v")
    head = vq.head
    from vqlogits.data.corpora import tokenize_corpus

    test = torch.from_numpy(tokenize_corpus(base.corpus, base.tokenizer, base.cache)[0]["test"].astype("int64"))
    y = test[1 : r["tokens"] + 1]  # the targets of consecutive windows from the start
    code_lse = torch.full((8,), float("-inf"), dtype=torch.float64)
    for k in range(8):
        code_lse[k] = torch.logsumexp(head.bias.detach().double()[head.assignment == k], 0)
    within = -(head.bias.detach().double()[y] - code_lse[head.assignment[y]]).mean()
    assert abs(float(within) - r["vq_within"]) < 1e-6

"""WSD budgets chained from one run are exactly separate runs; the analytic FLOP count equals FlopCounterMode's."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from test_train import corpus, write_corpus  # noqa: F401  (the module-scoped corpus fixture)
from vqlogits.heads import HEADS
from vqlogits.lm.experiments import sweep
from vqlogits.lm.model import GPT, ModelConfig
from vqlogits.lm.train import TrainConfig, decay_start, lr_at, train


@pytest.fixture
def base(corpus, tmp_path):  # noqa: F811
    return TrainConfig(
        corpus=str(corpus),
        tokenizer="bpe:300",
        eval_every=4,
        eval_tokens=1024,
        final_eval_tokens=1024,
        checkpoint_every=5,
        cache=str(tmp_path / "cache"),
        out=str(tmp_path / "run"),
        warmup_steps=2,
        schedule="wsd",
    )


def test_wsd_schedule_shape():
    cfg = TrainConfig(steps=100, warmup_steps=10, schedule="wsd", decay_frac=0.2, lr=1.0, min_lr_ratio=0.1)
    lrs = [lr_at(s, cfg) for s in range(100)]
    assert decay_start(cfg) == 80
    assert lrs[9] == 1.0 and all(lr == 1.0 for lr in lrs[10:80])  # stable: does not depend on steps
    assert lrs[80] == 1.0 and lrs[81] < 1.0 and lrs[-1] == pytest.approx(0.1 + 0.9 / 20)
    longer = replace(cfg, steps=200)
    assert [lr_at(s, longer) for s in range(80)] == lrs[:80]


@pytest.mark.parametrize("head,extra", [("dense", {}), ("vq", dict(codebook_size=8, reassign_every=3))])
def test_budget_from_a_snapshot_equals_a_separate_run(base, head, extra):
    cfg = replace(base, head=head, **extra)
    short = train(replace(cfg, steps=10, out=cfg.out + "-10"), progress=False)
    assert (Path(cfg.out + "-10") / "stable.pt").exists()  # written at step 8, where its decay starts
    chained = train(replace(cfg, steps=20, init_from=cfg.out + "-10", out=cfg.out + "-20"), progress=False)
    alone = train(replace(cfg, steps=20, out=cfg.out + "-20-alone"), progress=False)
    assert chained["history"]["loss"] == alone["history"]["loss"]
    assert chained["test_ppl"] == alone["test_ppl"] and chained["train_flops"] == alone["train_flops"]
    assert 2 * short["train_flops"] == alone["train_flops"]  # the same cost every step
    assert alone["train_tokens"] == 2 * short["train_tokens"]


def test_init_from_is_checked(base):
    train(replace(base, steps=10, out=base.out + "-10"), progress=False)
    with pytest.raises(ValueError, match="different config.*'lr'"):
        train(replace(base, steps=20, lr=0.01, init_from=base.out + "-10"), progress=False)
    with pytest.raises(ValueError, match="after this run's decay starts"):
        train(replace(base, steps=9, init_from=base.out + "-10"), progress=False)
    with pytest.raises(ValueError, match="no .*stable.pt"):
        train(replace(base, steps=20, init_from=str(Path(base.out) / "nowhere")), progress=False)
    with pytest.raises(ValueError, match="needs schedule='wsd'"):
        train(replace(base, steps=20, schedule="cosine", init_from=base.out + "-10"), progress=False)
    with pytest.raises(ValueError, match="decay_frac"):
        train(replace(base, steps=20, decay_frac=1.0), progress=False)


def test_sweep_chains_wsd_budgets(base, tmp_path):
    out = tmp_path / "chain"
    sweep(
        replace(base, steps=0),
        heads=["dense"],
        codebook_sizes=[],
        mappings=["random"],
        seeds=[0],
        out=out,
        wsd_steps=[6, 12],
    )
    runs = {p.parent.name: json.loads(p.read_text()) for p in out.rglob("results.json")}
    assert set(runs) == {"steps6", "steps12"}
    assert runs["steps12"]["config"]["init_from"].endswith("steps6")
    assert runs["steps12"]["train_tokens"] == 2 * runs["steps6"]["train_tokens"]
    with pytest.raises(ValueError, match="increasing"):
        sweep(base, heads=["dense"], codebook_sizes=[], mappings=["random"], seeds=[0], out=out, wsd_steps=[12, 6])


@pytest.mark.parametrize("head", HEADS)
def test_train_flops_equal_flop_counter(head):
    """Body + head, forward + backward, against FlopCounterMode on one step (math attention backend,
    whose products the formula counts)."""
    V = 500
    torch.manual_seed(0)
    model = GPT(ModelConfig(V, 2, 4, 32, 16, head=head, codebook_size=20, rank=4, token_dim=3, n_frequent=10))
    if hasattr(model.head, "set_frequencies"):
        model.head.set_frequencies(torch.randint(1, 1000, (V,)))
    x, y = torch.randint(0, V, (3, 16)), torch.randint(0, V, (3, 16))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(x, y).backward()
    assert model.train_flops(y) == counter.get_total_flops() > 0


def _result(head, tokens, ppl, seed=0, schedule="wsd", budget=None, mapping="random", learn=0):
    return {
        "head": head,
        "codebook_size": None,
        "head_budget": budget,
        "head_params": 100 if budget else 1000,
        "dense_head_params": 1000,
        "total_params": 2000,
        "val_ppl": ppl * 0.98,
        "test_ppl": ppl,
        "train_tokens": tokens,
        "train_flops": tokens * (6 if head == "dense" else 2),
        "tokens_per_s": 1.0,
        "wall_s": 1.0,
        "decode_flops": 10,
        "history": {"loss": [1.0, 0.9], "step": [1, 2], "val_step": [1, 2], "val_ppl": [ppl, ppl]},
        "config": {
            "seed": seed,
            "schedule": schedule,
            "head_budget": budget,
            "head_bias": True,
            "mapping": mapping,
            "reassign_every": learn,
        },
        "model_config": {"vocab_size": 10, "head": head},
    }


def test_gap_interval_and_scaling_report(tmp_path):
    from vqlogits.stats import gap_ci
    from vqlogits.studies.report import write_report
    from vqlogits.studies.scaling import dense_convergence, headline

    lo, hi = gap_ci([110.0, 112.0, 111.0], [100.0, 101.0, 99.0])
    assert 8 < lo < 9 and 13.5 < hi < 14  # 11% ± t(3 df) x 0.78%, in log space: excludes 0
    lo1, hi1 = gap_ci([111.0], [100.0, 101.0, 99.0])
    assert lo1 < lo and hi1 > hi  # one head seed borrows dense's variance, with fewer degrees of freedom
    assert gap_ci([111.0], [100.0]) is None

    runs = []
    for tokens, base_ppl in ((1_000_000, 200.0), (2_000_000, 150.0), (4_000_000, 147.0)):
        runs += [_result("dense", tokens, base_ppl * (1 + 0.01 * s), seed=s) for s in range(3)]
        runs += [
            _result("vq", tokens, base_ppl * 1.3, budget=0.02),
            _result("vq", tokens, base_ppl * 1.05, budget=0.02, learn=100),
        ]
    runs.append(_result("dense", 2_000_000, 151.0, schedule="cosine"))
    for i, r in enumerate(runs):
        (tmp_path / "runs" / f"r{i}").mkdir(parents=True)
        (tmp_path / "runs" / f"r{i}" / "results.json").write_text(json.dumps(r))
    _, verdict = dense_convergence(runs)
    assert verdict["train_tokens"] == 4_000_000 and verdict["last_doubling_gain"] == pytest.approx(1 - 147 / 150)
    assert verdict["test_seed_spread"] == pytest.approx(0.02 / 1.01)
    text = write_report([tmp_path / "runs"], tmp_path / "rep").read_text()
    assert "## Dense baseline: convergence and seed spread" in text and "| 4.0M | 3 | 145.50 | 2.0% |" in text
    assert (
        "157.5 (+4.0% [-1.0, +9.2] n=1)" in text and "195.0 (+28.7% [+22.5, +35.2] n=1)" in text
    )  # one seed: dense's variance
    assert "| dense | 0 | 2.0M | 151.00 | 150.00 | -0.66% |" in text  # the cosine run beside its WSD twin
    assert "| 1.0M tokens | 6.00e+06 | 202.0 | vq @2% learned/100 | 2.0M | 157.5 |" in text  # equal compute
    assert "| 4.0M tokens | 2.40e+07 | 148.5 | dense | 4.0M | 148.5 |" in text
    assert (tmp_path / "rep" / "scaling.png").stat().st_size > 1000
    rows = json.loads((tmp_path / "rep" / "summary.json").read_text())
    assert {r["train_tokens"] for r in rows} == {1_000_000, 2_000_000, 4_000_000} and all(
        r["train_flops"] for r in rows
    )
    assert "vq @2% learned/100 (100 head parameters): 154.3, +4.0% [" in headline(rows)


def test_demo_report_states_its_regime(tmp_path):
    from vqlogits.demo import regime_note

    dense = _result("dense", 300 * 8 * 64, 338.5)
    dense["config"].update(steps=300)
    dense["history"].update(val_step=[225, 300], val_ppl=[420.0, 338.5])
    text = regime_note(dense, tmp_path / "missing.json")
    assert (
        "300 steps, 153,600 tokens, one seed" in text
        and "undertrained" in text
        and "fell by 19% over its last 75 steps" in text
    )
    assert "docs/RESULTS.md (not yet measured in this checkout)" in text and "(devdocs, dense with 3 seeds;" in text
    rows = [
        {
            "config": "dense",
            "schedule": "wsd",
            "train_tokens": 4_000_000,
            "test_ppl": 30.0,
            "seeds": 3,
            "head_params": 10,
        },
        {
            "config": "vq @2% learned/100",
            "schedule": "wsd",
            "train_tokens": 4_000_000,
            "test_ppl": 33.0,
            "seeds": 1,
            "head_params": 1,
            "test_vs_dense_pct": 10.0,
            "test_vs_dense_ci": [8.0, 12.0],
        },
    ]
    (tmp_path / "summary.json").write_text(json.dumps(rows))
    text = regime_note(dense, tmp_path / "summary.json")
    assert (
        "At 4.0M training tokens, dense: test perplexity 30.0 (n=3):" in text
        and "vq @2% learned/100 (1 head parameters): 33.0, +10.0% [+8.0, +12.0] n=1" in text
    )


def test_doublings_to_converge_extrapolates_geometric_decrements():
    import math

    from vqlogits.studies.scaling import doublings_to

    vals = [100.0, 100 * math.exp(-0.4), 100 * math.exp(-0.6)]  # decrements 0.4, 0.2: halving
    assert doublings_to(vals, 0.03) == pytest.approx(math.log(-math.log(0.97) / 0.2) / math.log(0.5))
    assert doublings_to([100.0, 90.0], 0.03) is None  # one decrement gives no rate
    assert doublings_to([100.0, 90.0, 85.0, 84.9], 0.03) == 0.0  # already below 3%

"""The benchmark suite runs end to end and writes its files; the memory probe sees (N, V)."""

import json

import torch
import torch.nn.functional as F

from vqlogits import VQLogitsHead
from vqlogits.bench import decode, suite
from vqlogits.timing import peak_bytes


def test_bench_runs_and_writes_files(tmp_path, monkeypatch, json_never_in_place):
    monkeypatch.setitem(suite.SHAPES, "toy", (3000, 32))
    cfg = suite.BenchConfig(
        shapes=("toy",),
        codebook_sizes=(16, 64),
        tokens=(1, 128),
        loss_tokens=(256,),
        loss_codebook_sizes=(16,),
        decode_batches=(1, 2),
        decode_steps=2,
        decode_layers=1,
        repeats=2,
        warmup=1,
        out=str(tmp_path),
        indexed_models=(),
        verified=False,  # its own test below, on a tiny model
    )
    results = suite.run_bench(cfg, decode.SECTIONS)
    assert len(results["logits"]) == 4 and len(results["loss"]) == 6 and len(results["decode"]) == 2
    assert all(r["speedup_compact"] > 0 and r["vq_full_roofline_pct"] > 0 for r in results["logits"])
    loss = {r["method"]: r for r in results["loss"]}
    assert {"dense F.cross_entropy", "dense F.linear_cross_entropy", "VQ compact (K=16)"} <= set(loss)
    # PyTorch's own chunked loss never holds the (N, V) logits whole: less peak memory than plain
    chunked = loss["dense F.linear_cross_entropy, chunked"]["peak_bytes"]
    assert chunked < loss["dense F.linear_cross_entropy"]["peak_bytes"]
    for name in ("bench.md", "bench.json", "bench.png", "bench_logits.csv", "bench_loss.csv", "bench_decode.csv"):
        assert (tmp_path / name).stat().st_size > 100
    assert json.loads((tmp_path / "bench.json").read_text())["environment"]["copy_GBps"] > 0


def test_peak_memory_probe_sees_vocab_sized_logits():
    N, V, d = 512, 8000, 16
    h = torch.randn(N, d, requires_grad=True)
    W = torch.randn(V, d, requires_grad=True)
    y = torch.randint(0, V, (N,))
    dense = peak_bytes(lambda: F.cross_entropy(h @ W.T, y).backward())
    assert dense >= N * V * 4  # at least the logits themselves
    head = VQLogitsHead(d, V, 32)
    assert peak_bytes(lambda: head.loss(h, y).backward()) < dense / 10


def test_indexed_decode_rows(tmp_path, monkeypatch):
    """The bench's IndexedHead section, on a tiny stand-in for the published shapes."""
    import transformers as T

    from vqlogits.studies import accelerate

    def tiny(shape):
        config = T.LlamaConfig(
            vocab_size=4096, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4
        )
        return T.LlamaForCausalLM(config).eval()

    monkeypatch.setattr(accelerate, "random_model", tiny)
    monkeypatch.setitem(accelerate.SPEED_SHAPES, "toy", 64)
    cfg = suite.BenchConfig(
        indexed_models=("toy",), decode_batches=(1, 2), decode_steps=2, repeats=3, warmup=1, out=str(tmp_path)
    )
    rows = decode.bench_indexed_decode(cfg, type("Bar", (), {"set_description": lambda self, s: None})())
    assert [(r["probes"], r["batch"]) for r in rows] == [(8, 1), (8, 2), (2, 1), (2, 2)]
    assert all(r["head_speedup"] > 0 and r["speedup"] > 0 for r in rows)
    text = decode.indexed_markdown(rows, {})
    assert "| toy | 64 | 8 | 1 |" in text


def test_verified_decoding_bench_on_a_tiny_model(tmp_path):
    """The four decoding modes on a tiny Llama with a synthetic clustered head, as scripts/verified.sh
    runs them at the published shapes."""
    import transformers as T

    from vqlogits.studies import verified

    torch.manual_seed(0)
    config = T.LlamaConfig(
        vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4
    )
    model = T.LlamaForCausalLM(config).eval()
    ids = torch.randint(1, 512, (4, 12), generator=torch.Generator().manual_seed(0))
    states = model.base_model(input_ids=ids).last_hidden_state.reshape(-1, 32)
    tuned = verified.tune_spread(states, 512, 16, 2, 0.999, 0.05)
    assert 0.9 <= tuned["agreement"] <= 1  # a spread that gets close to the target exists
    W, assignment = verified.synthetic_weight(512, 32, 16, tuned["spread"], 0.05)
    row = verified.compare(model, W, verified.synthetic_index(W, assignment, 16, 2), ids[:1], new=12, repeats=1)
    assert row["identical"] and row["verified agreement"] == 1.0
    assert all(row[f"{m} tok/s"] > 0 for m in ("dense fp32", "dense bf16", "approximate", "verified"))
    assert 0 <= row["acceptance"] <= 1 and 0 < row["verified head share"] < 1
    verified.save(
        {
            "environment": {"threads": 1, "torch": "x"},
            "rows": [{"model": "tiny", **row}],
            "sweep": [{"model": "tiny", "spread": tuned["spread"], **row}],
        },
        tmp_path,
    )
    text = (tmp_path / "verified.md").read_text()
    assert (tmp_path / "verified.png").exists() and "| tiny | 1 |" in text
    assert f"| tiny | {tuned['spread']:.2f} |" in text  # the sweep's table


def test_median_seconds_in_turns_calls_every_function_in_each_round():
    from vqlogits.timing import median_seconds_in_turns

    calls = []
    out = median_seconds_in_turns({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=2)
    assert calls == ["a", "b"] * 5 and set(out) == {"a", "b"} and all(v >= 0 for v in out.values())

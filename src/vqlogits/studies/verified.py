"""Verified decoding against what a user can already do, end to end, in one run (docs/PRETRAINED.md,
"verified decoding"; ``scripts/verified.sh``).

Four ways to decode greedily with one backbone and KV cache, taking turns within every repeat:

* ``dense fp32``: ``(h @ W.T).argmax`` (the original model);
* ``dense bf16``: the head cast to bf16, ``(h.bf16() @ W.bf16().T).argmax`` (one line; not exact);
* ``approximate``: ``IndexedHead.greedy(exact=False)``, the probed clusters only (not exact);
* ``verified``: ``hf.generate(verify=True)``, drafts checked in blocks (exact).

Reported per model and batch: tokens/s, each mode's agreement with dense fp32, the verified run's
acceptance rate and mean tokens per block, and head seconds per token with the head's share of the
step. SmolLM2 runs with its real weights. The Gemma-3-270M and Llama-3.2-1B shapes have random
backbones, so their head is built: ``synthetic_head`` places the rows in K tight balanced clusters,
with the spread chosen so that approximate greedy agrees with dense greedy as often as it does on
SmolLM2 at the same probe fraction (K / 8), measured on the backbone's own hidden states.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from ..data.corpora import eval_windows, tokenize_corpus
from ..files import USER_CACHE, write_json
from ..heads import IndexedHead
from ..hf.generate import generate, greedy_loop
from ..hf.hidden import hidden_states
from ..hf.load import load_causal_lm, use_head
from ..kernels import dense_greedy, first_argmax
from .accelerate import random_model

SHAPES = {"gemma-3-270m": 4096, "llama-3.2-1b": 2048}  # clusters: about 64 rows each


class _Clock:
    """Seconds spent inside a callable (the head's part of a step)."""

    def __init__(self, fn):
        self.fn, self.seconds = fn, 0.0

    def __call__(self, *a, **k):
        t0 = time.perf_counter()
        out = self.fn(*a, **k)
        self.seconds += time.perf_counter() - t0
        return out


def synthetic_weight(V: int, d: int, clusters: int, spread: float, scale: float, seed: int = 0):
    """(W, assignment): K tight balanced clusters of rows, row v = c_{a(v)} + spread * e_v with
    centroids c and offsets e of entries N(0, scale^2), a balanced random assignment a."""
    g = torch.Generator().manual_seed(seed)
    centroids = torch.randn(clusters, d, generator=g) * scale
    assignment = torch.randperm(V, generator=g) % clusters
    return centroids[assignment] + spread * scale * torch.randn(V, d, generator=g), assignment


def synthetic_index(W: torch.Tensor, assignment: torch.Tensor, clusters: int, probes: int) -> IndexedHead:
    """An index over W with its known clusters (no k-means)."""
    head = IndexedHead(W.shape[1], W.shape[0], clusters, probes)
    head.set_clusters(W, assignment)
    return head


@torch.no_grad()
def agreement(W: torch.Tensor, head: IndexedHead, hidden: torch.Tensor) -> float:
    """Top-1 agreement of approximate greedy with dense greedy over the rows of ``hidden``."""
    return float((head.greedy(hidden, exact=False) == first_argmax(hidden @ W.T)).float().mean())


@torch.no_grad()
def tune_spread(hidden: torch.Tensor, V: int, clusters: int, probes: int, target: float, scale: float) -> dict:
    """The synthetic spread whose approximate greedy agrees with dense greedy on ``hidden`` (the
    backbone's own states) closest to ``target``: 12 steps of bisection in log spread."""
    lo, hi, best = 0.01, 4.0, None
    for _ in range(12):
        mid = (lo * hi) ** 0.5
        W, assignment = synthetic_weight(V, hidden.shape[1], clusters, mid, scale)
        got = agreement(W, synthetic_index(W, assignment, clusters, probes), hidden)
        del W, assignment  # before the next draw: at Llama-3.2-1B's shape each is a GB
        if best is None or abs(got - target) < abs(best["agreement"] - target):
            best = {"spread": mid, "agreement": got, "states": hidden.shape[0]}
        lo, hi = (mid, hi) if got > target else (lo, mid)
    return best


@torch.no_grad()
def compare(model, W: torch.Tensor, head: IndexedHead, prompts: torch.Tensor, new: int, repeats: int = 3) -> dict:
    """Tokens/s and agreement of the four modes on ``prompts`` (B, T), interleaved within each repeat
    (median), plus the verified run's acceptance and every mode's head seconds per token."""
    W_bf16 = W.bfloat16()
    clocks = {
        "dense fp32": _Clock(dense_greedy(W)),
        "dense bf16": _Clock(dense_greedy(W_bf16)),
        "approximate": _Clock(lambda h: head.greedy(h, exact=False)),
    }
    use_head(model, head)
    verified_greedy, verified_check = _Clock(head.greedy), _Clock(head.exact_argmax)
    head.greedy, head.exact_argmax = verified_greedy, verified_check  # the instance's, timed
    speeds, tokens, stats = {name: [] for name in [*clocks, "verified"]}, {}, {}
    try:
        for r in range(repeats + 1):
            for name in speeds:
                for c in (*clocks.values(), verified_greedy, verified_check):
                    c.seconds = 0.0
                t0 = time.perf_counter()
                if name == "verified":
                    stats = {}
                    tokens[name] = generate(model, prompts, new, stats=stats)
                    head_s = verified_greedy.seconds + verified_check.seconds
                else:
                    tokens[name] = greedy_loop(model, prompts, new, clocks[name])
                    head_s = clocks[name].seconds
                elapsed = time.perf_counter() - t0
                if r:  # the first round warms up
                    speeds[name].append((prompts.shape[0] * new / elapsed, head_s / elapsed, head_s))
    finally:
        del head.greedy, head.exact_argmax
    B = prompts.shape[0]
    row = {"batch": B, "new_tokens": new, "clusters": head.clusters, "probes": head.probes}
    for name, runs in speeds.items():
        row[f"{name} tok/s"] = statistics.median(s for s, _, _ in runs)
        row[f"{name} head share"] = statistics.median(f for _, f, _ in runs)
        row[f"{name} head ms/token"] = 1e3 * statistics.median(t for _, _, t in runs) / (B * new)
        row[f"{name} agreement"] = float((tokens[name][:, -new:] == tokens["dense fp32"][:, -new:]).float().mean())
    row["identical"] = bool(torch.equal(tokens["verified"], tokens["dense fp32"]))
    row["acceptance"] = stats["accepted"] / max(1, stats["drafted"])
    row["tokens per block"] = stats["block_tokens"] / max(1, stats["blocks"])
    row["tokens per backbone step"] = stats["block_tokens"] / max(1, stats["backbone_steps"])
    row["fallback_at"] = stats["fallback_at"]
    row["speed-up"] = row["verified tok/s"] / row["dense fp32 tok/s"]
    return row


def _drafting(r: dict) -> str:
    """Acceptance, tokens per block and per backbone step, and where dense took over ("–" without drafts)."""
    fell = "–" if r["fallback_at"] is None else f"token {r['fallback_at']}"
    if r["fallback_at"] == 0:
        return f"– | – | – | {fell}"
    return (
        f"{100 * r['acceptance']:.2f}% | {r['tokens per block']:.1f} | "
        f"{r.get('tokens per backbone step', float('nan')):.2f} | {fell}"
    )


def markdown(results: dict) -> str:
    env = results["environment"]
    lines = [f"Greedy decoding, {env['threads']} thread(s), torch {env['torch']}; tokens/s (× dense fp32).\n"]
    modes = ("dense fp32", "dense bf16", "approximate", "verified")
    lines.append(
        "| model | batch | K / probes | "
        + " | ".join(modes)
        + " | identical | acceptance | tokens / block | tokens / backbone step | fell back at "
        + "| head ms/token: dense → verified | head share: dense → verified |"
    )
    lines.append("|---|---:|---|" + "---:|" * len(modes) + "---|---:|---:|---:|---:|---:|---:|")
    for r in results["rows"]:
        base = r["dense fp32 tok/s"]
        cells = [
            f"{r[f'{m} tok/s']:.1f}" + ("" if m == "dense fp32" else f" ({r[f'{m} tok/s'] / base:.2f}×)") for m in modes
        ]
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['clusters']} / {r['probes']} | " + " | ".join(cells) + f" | "
            f"{'yes' if r['identical'] else 'NO'} | {_drafting(r)} | "
            f"{r['dense fp32 head ms/token']:.2f} → {r['verified head ms/token']:.2f} | "
            f"{100 * r['dense fp32 head share']:.0f}% → {100 * r['verified head share']:.0f}% |"
        )
    if results.get("sweep"):
        lines.append("\nSpeed against acceptance (other spreads of the synthetic head; one repeat each):\n")
        columns = ["model", "spread", "acceptance", "tokens / block", "tokens / backbone step", "fell back at"]
        lines.append("| " + " | ".join(columns + ["approximate", "verified"]) + " |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|")
        for r in results["sweep"]:
            base = r["dense fp32 tok/s"]
            lines.append(
                f"| {r['model']} | {r['spread']:.2f} | {_drafting(r)} | {r['approximate tok/s'] / base:.2f}× | "
                f"{r['verified tok/s'] / base:.2f}× |"
            )
    lines.append("\nAgreement with dense fp32 tokens (a first disagreement changes the rest of the text):\n")
    lines.append("| model | batch | dense bf16 | approximate | verified |\n|---|---:|---:|---:|---:|")
    for r in results["rows"]:
        lines.append(
            f"| {r['model']} | {r['batch']} | {100 * r['dense bf16 agreement']:.1f}% | "
            f"{100 * r['approximate agreement']:.1f}% | {100 * r['verified agreement']:.1f}% |"
        )
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    """End-to-end speed-up of verified over dense fp32 against the acceptance rate, per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for model in dict.fromkeys(r["model"] for r in results["sweep"]):
        rs = sorted((r for r in results["sweep"] if r["model"] == model), key=lambda r: r["acceptance"])
        ax.plot([100 * r["acceptance"] for r in rs], [r["speed-up"] for r in rs], "o-", label=model)
    for r in results["rows"]:
        if r["batch"] == 1:  # the plot is of batch 1; a wider batch may draft nothing
            ax.plot([100 * r["acceptance"]], [r["speed-up"]], "k*", ms=9)
    ax.axhline(1, color="gray", lw=0.8)
    ax.axhline(2, color="gray", ls=":", lw=0.8, label="2×")
    ax.set(
        xlabel="drafts kept (%)",
        ylabel="verified tokens/s ÷ dense fp32",
        title="Verified greedy, batch 1 (stars: the table's rows)",
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def save(results: dict, out: str | Path) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "verified.json", results)
    (out / "verified.md").write_text(markdown(results))
    if results.get("sweep"):
        plot(results, out / "verified.png")


@torch.no_grad()
def identity(model, original, prompts: torch.Tensor, new: int) -> dict:
    """Verified greedy against the original model's own ``generate(do_sample=False)``: one prompt
    at a time (batch 1: verification on), then all in one batch. The attention mask is given: a
    prompt may hold the end-of-text id, which transformers would otherwise take for padding."""

    eos = original.generation_config.eos_token_id
    eos = eos[0] if isinstance(eos, list) else eos

    def theirs(ids):  # rows that end pad with the end-of-sequence token, as ours repeat it
        out = original.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, do_sample=False, pad_token_id=eos
        )
        return torch.nn.functional.pad(out, (0, ids.shape[1] + new - out.shape[1]), value=eos)

    def ours(ids):  # likewise: a batch whose rows all ended stops early
        out = generate(model, ids, new, eos_token_id=eos)
        return torch.nn.functional.pad(out, (0, ids.shape[1] + new - out.shape[1]), value=eos)

    one = [torch.equal(ours(p[None]), theirs(p[None])) for p in prompts]
    batched = torch.equal(ours(prompts), theirs(prompts))
    return {"prompts": prompts.shape[0], "new_tokens": new, "identical_batch1": sum(one), "identical_batched": batched}


def measure_all(
    out: str | Path = "docs/pretrained", cache: str | Path = USER_CACHE, new: int = 48, repeats: int = 2
) -> dict:
    """SmolLM2 (real weights; K = 1024 with K / 8 probes, the index ``vqlogits accelerate`` builds)
    at batch 1 and 16, with the identity check over 64 test prompts; then the published shapes with
    synthetic heads and, at the Gemma-3-270M shape, speed against acceptance over other spreads."""
    torch.manual_seed(0)
    env = {"threads": torch.get_num_threads(), "torch": torch.__version__}
    model, source = load_causal_lm("smollm2", cache)
    original, _ = load_causal_lm("smollm2", cache)
    W = model.get_output_embeddings().weight.detach().clone().float()
    splits, _, _ = tokenize_corpus("pydocs", str(source / "tokenizer.json"), cache, splits=("train", "test"))
    head = IndexedHead.from_weight(W, 1024, hidden=hidden_states(model, splits["train"], 16384), progress=True)
    test = hidden_states(model, splits["test"], 4096)
    target = agreement(W, head, test)
    env.update(smollm2_agreement=target, smollm2_states=test.shape[0])
    prompts = torch.cat(eval_windows(splits["test"], 32, 64 * 32, batch=64))[:, :32]  # (64, 32) test windows
    rows = [
        {"model": "SmolLM2-135M (real weights)", **compare(model, W, head, prompts[:b], new, repeats)} for b in (1, 16)
    ]
    env["identity"] = identity(model, original, prompts, new)
    del model, original
    sweep = []
    results = {"environment": env, "rows": rows, "sweep": sweep}
    save(results, out)  # after each model: a later shape may need more memory than the machine has
    for shape, K in SHAPES.items():
        big = random_model(shape)
        V, d = big.config.vocab_size, big.config.hidden_size
        ids = torch.randint(0, V, (16, 64), generator=torch.Generator().manual_seed(1))
        states = big.base_model(input_ids=ids).last_hidden_state.reshape(-1, d)
        scale = float(big.get_output_embeddings().weight.detach().std())
        tuned = env[f"{shape} synthetic head"] = tune_spread(states, V, K, K // 8, target, scale)
        batches, shape_new = ((1, 16), new) if shape == "gemma-3-270m" else ((1,), 16)
        for factor in (1.0, 2.0, 4.0, 8.0, 16.0, 32.0) if shape == "gemma-3-270m" else (1.0,):
            W, assignment = synthetic_weight(V, d, K, factor * tuned["spread"], scale)
            head = synthetic_index(W, assignment, K, K // 8)
            for b in batches if factor == 1.0 else (1,):
                row = {"model": f"{shape} shape (synthetic head)", "spread": factor * tuned["spread"]}
                row.update(compare(big, W, head, ids[:b, :32], shape_new, repeats if factor == 1.0 else 1))
                (rows if factor == 1.0 else sweep).append(row)
                if factor == 1.0 and b == 1:
                    sweep.append(row)
            del W, assignment, head
        del big
        save(results, out)
    return results


if __name__ == "__main__":
    import sys

    measure_all(*sys.argv[1:3])

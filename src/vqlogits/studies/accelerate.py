"""The measurements of ``IndexedHead`` behind docs/PRETRAINED.md ("accelerate or compress";
``scripts/accelerate.sh``): top-1 agreement, certification, rows read, TV distance and speed."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from ..data.corpora import tokenize_corpus
from ..files import USER_CACHE, write_atomic, write_json
from ..heads import IndexedHead
from ..hf.hidden import hidden_states
from ..hf.load import load_causal_lm
from ..hf.speed import TV_ROWS, measure_index, tv_distance
from ..hf.speed import median as _median
from ..kernels import dense_greedy
from ..timing import decode_tokens_per_s


def random_model(shape: str):
    """A causal LM with random weights at a published shape, for speed only."""
    import transformers as T

    torch.manual_seed(0)
    if shape == "gemma-3-270m":  # Gemma 3 270M: V = 262,144, d = 640, 18 layers
        config = T.Gemma3TextConfig(
            vocab_size=262144,
            hidden_size=640,
            intermediate_size=2048,
            num_hidden_layers=18,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=256,
            max_position_embeddings=4096,
            sliding_window=512,
        )
        return T.Gemma3ForCausalLM(config).eval()
    if shape == "llama-3.2-1b":  # Llama 3.2 1B: V = 128,256, d = 2,048, 16 layers
        config = T.LlamaConfig(
            vocab_size=128256,
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=16,
            num_attention_heads=32,
            num_key_value_heads=8,
            max_position_embeddings=4096,
            tie_word_embeddings=True,
        )
        return T.LlamaForCausalLM(config).eval()
    raise ValueError(f"shape must be 'gemma-3-270m' or 'llama-3.2-1b', got {shape!r}")


def random_index(weight: torch.Tensor, clusters: int, probes: int, seed: int = 0) -> IndexedHead:
    """An index with random balanced clusters: right for timing, meaningless for agreement."""
    V, d = weight.shape
    head = IndexedHead(d, V, clusters, probes)
    g = torch.Generator().manual_seed(seed)
    head.set_clusters(weight, torch.randperm(V, generator=g) % clusters)
    return head


# ---- the measurements behind docs/PRETRAINED.md ("accelerate or compress") --------------------------

PROBE_FRACTIONS = (1 / 32, 1 / 16, 3 / 32, 1 / 8, 3 / 16, 1 / 4)
SPEED_SHAPES = {"gemma-3-270m": 4096, "llama-3.2-1b": 2048}  # clusters: about 64 rows each


def _index_rows(weight, fit, h, clusters, parts, earlier) -> tuple[list[dict], dict]:
    """Each K's index (plain and, at 1,024, spherical) measured by ``measure_index``; the plain heads by K."""
    index_rows, heads = ([] if "index" in parts else earlier["index"]), {}
    for K, spherical in [(k, False) for k in clusters] + [(1024, True)]:
        if not {"index", "tv"} & set(parts) and not (K == 1024 and not spherical):
            continue
        t0 = time.perf_counter()
        head = IndexedHead.from_weight(weight, K, hidden=fit, spherical=spherical, progress=True)
        build_s = time.perf_counter() - t0
        probes = sorted({max(1, round(f * K)) for f in PROBE_FRACTIONS})
        for r in measure_index(head, weight, h, probes) if "index" in parts else []:
            index_rows.append({**r, "spherical": spherical, "build_s": build_s})
        for r in index_rows if "tv" in parts else []:
            if (r["clusters"], r["spherical"], r["mode"]) == (K, spherical, "approximate"):
                r["tv_distance"] = tv_distance(head, weight, h[:TV_ROWS], r["probes"])
        if not spherical:
            heads[K] = head
    return index_rows, heads


def _smollm2_decode_rows(model, weight, head, decode_steps: int) -> list[dict]:
    rows = []
    for batch in (1, 16):
        picks = {
            "dense": dense_greedy(weight),
            "indexed approximate": lambda x: head.greedy(x, exact=False),
            "indexed exact": head.greedy,
        }
        speeds = decode_tokens_per_s(model, picks, batch, decode_steps)
        rows.append(
            {
                "model": "SmolLM2-135M (real weights)",
                "clusters": 1024,
                "probes": head.probes,
                "batch": batch,
                **{f"{k} tok/s": v for k, v in speeds.items()},
            }
        )
    return rows


def _shape_decode_rows(shape: str, K: int, decode_steps: int) -> list[dict]:
    """Head time and greedy tokens/s at a published shape, random weights and clusters."""
    big, rows = random_model(shape), []
    w = big.get_output_embeddings().weight.detach()
    for probes in (K // 8, K // 32):  # SmolLM2's 99.9% fraction, and a quarter of it
        head = random_index(w, K, probes)
        picks = {"dense": dense_greedy(w), "indexed approximate": lambda x: head.greedy(x, exact=False)}
        for batch in (1, 16):
            x = torch.randn(batch, w.shape[1])
            dense_s, head_s = _median(lambda: picks["dense"](x)), _median(lambda: picks["indexed approximate"](x))
            speeds = decode_tokens_per_s(big, picks, batch, decode_steps)
            rows.append(
                {
                    "model": f"{shape} shape (random weights, random clusters)",
                    "clusters": K,
                    "probes": probes,
                    "batch": batch,
                    "head speed-up": dense_s / head_s,
                    **{f"{k} tok/s": v for k, v in speeds.items()},
                }
            )
    return rows


def measure_all(
    out: str | Path = "docs/pretrained",
    clusters=(512, 1024, 2048),
    corpus: str = "pydocs",
    metric_tokens: int = 16384,
    eval_tokens: int = 4096,
    decode_steps: int = 8,
    cache: str | Path = USER_CACHE,
    parts=("index", "decode"),
) -> dict:
    """Agreement, certification, rows read, TV distance and speed for SmolLM2 on ``corpus``'s test
    split, and decode speed at larger published shapes; writes accelerate.json / .md / .png.
    ``parts``: redo only some of them ("index", "decode", or "tv": only the index rows' TV distances),
    keeping the others from an earlier accelerate.json."""
    torch.manual_seed(0)
    model, source = load_causal_lm("smollm2", cache)
    weight = model.get_output_embeddings().weight.detach().clone().float()
    splits, _, _ = tokenize_corpus(corpus, str(source / "tokenizer.json"), cache, splits=("train", "test"))
    fit = hidden_states(model, splits["train"], metric_tokens)
    h = hidden_states(model, splits["test"], eval_tokens)
    env = {
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "metric_tokens": fit.shape[0],
        "eval_tokens": h.shape[0],
        "corpus": corpus,
    }
    path = Path(out) / "accelerate.json"
    earlier = json.loads(path.read_text()) if path.exists() else {}
    index_rows, heads = _index_rows(weight, fit, h, clusters, parts, earlier)
    decode_rows = (
        earlier["decode"] if "decode" not in parts else _smollm2_decode_rows(model, weight, heads[1024], decode_steps)
    )
    for shape, K in SPEED_SHAPES.items() if "decode" in parts else ():
        decode_rows += _shape_decode_rows(shape, K, decode_steps)
    results = {"environment": env, "index": index_rows, "decode": decode_rows}
    Path(out).mkdir(parents=True, exist_ok=True)
    write_json(path, results)
    write_atomic(Path(out) / "accelerate.md", lambda tmp: tmp.write_text(markdown(results)))
    plot(results, Path(out) / "accelerate.png")
    return results


def markdown(results: dict) -> str:
    env = results["environment"]
    lines = [
        f"SmolLM2-135M-Instruct, {env['eval_tokens']:,} hidden states of the {env['corpus']} test split (metric from"
        f" {env['metric_tokens']:,} of the train split); {env['threads']} threads.\n"
    ]
    lines.append(
        "| K | spherical | mode | probes | top-1 agreement | certified | fp32 rows / token | screened rows / token |"
        " TV to dense | head × dense, batch 1 | batch 16 |"
    )
    lines.append("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results["index"]:
        certified = "" if r.get("certified") is None else f"{100 * r['certified']:.1f}%"
        tv = "" if r.get("tv_distance") is None else f"{r['tv_distance']:.4f}"
        lines.append(
            f"| {r['clusters']} | {'yes' if r['spherical'] else 'no'} | {r['mode']} | {r['probes']} |"
            f" {100 * r['agreement']:.2f}% | {certified} | "
            f"{r['fp32_rows_per_token']:,.0f} | {r['screened_rows_per_token']:,.0f} | {tv} |"
            f" {r['head_speedup_b1']:.2f} | {r['head_speedup_b16']:.2f} |"
        )
    lines.append("\nGreedy decode with a KV cache, tokens/s (one run per row):\n")
    lines.append("| model | K | probes | batch | dense | indexed approximate | × | indexed exact | × | head × dense |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results["decode"]:
        d, a, e = r["dense tok/s"], r["indexed approximate tok/s"], r.get("indexed exact tok/s")
        exact = "| |" if e is None else f"| {e:.1f} | {e / d:.2f} |"
        head = f"{r['head speed-up']:.1f}" if "head speed-up" in r else ""
        lines.append(
            f"| {r['model']} | {r['clusters']} | {r['probes']} | {r['batch']} | {d:.1f} | {a:.1f} |"
            f" {a / d:.2f} {exact} {head} |"
        )
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key in sorted({(r["clusters"], r["spherical"]) for r in results["index"]}):
        rs = sorted(
            (r for r in results["index"] if (r["clusters"], r["spherical"]) == key and r["mode"] == "approximate"),
            key=lambda r: r["probes"],
        )
        ax.plot(
            [r["head_speedup_b1"] for r in rs],
            [100 * (1 - r["agreement"]) for r in rs],
            "o-",
            label=f"K={key[0]}{' spherical' if key[1] else ''}",
        )
        exact = [r for r in results["index"] if (r["clusters"], r["spherical"]) == key and r["mode"] == "exact"]
        for r in exact:
            ax.plot([r["head_speedup_b1"]], [1e-3], "k*", ms=9)
    ax.axhline(0.1, color="gray", ls=":", lw=0.8, label="99.9% agreement")
    ax.axvline(10, color="gray", ls="--", lw=0.8, label="10x")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="head speed-up over dense, batch 1",
        ylabel="top-1 disagreement with dense (%)",
        title="SmolLM2: agreement against speed (stars: exact mode, 0%)",
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    import sys

    measure_all(
        *(sys.argv[1:2] or ["docs/pretrained"]),
        parts=tuple(sys.argv[2].split(",")) if len(sys.argv) > 2 else ("index", "decode"),
    )

"""The measurements of ``IndexedHead`` behind docs/PRETRAINED.md ("accelerate or compress";
``docs/accelerate.sh``): top-1 agreement, certification, rows read, TV distance and speed."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from ..files import USER_CACHE, write_json
from ..heads import IndexedHead
from ..hf.accelerate import hidden_states
from ..hf.load import load_causal_lm
from ..lm.data import tokenize_corpus
from .timing import decode_tokens_per_s, median_seconds

TV_ROWS = 512  # hidden states per TV distance: one softmax over V each


def _median(fn, repeats: int = 7) -> float:
    return median_seconds(fn, repeats, warmup=2)[0]


@torch.no_grad()
def measure_index(
    head: IndexedHead,
    weight: torch.Tensor,
    h: torch.Tensor,
    probes: list[int],
    batches=(1, 16),
    tv_rows: int = TV_ROWS,
    repeats: int = 7,
) -> list[dict]:
    """For each probe count: top-1 agreement with ``(h @ W.T).argmax``, total-variation distance of
    the T = 1 sampling distribution to the dense softmax, and head time against the dense head at
    each batch size (same run). One row for exact greedy, with its certified fraction and the
    fp32 / fp16 rows it read per token."""
    dense_top = torch.cat([(c @ weight.T).argmax(-1) for c in h.split(1024)])
    dense_time = {b: _median(lambda b=b: (h[:b] @ weight.T).argmax(-1), repeats) for b in batches}
    rows = []
    for P in [*probes, None]:
        exact = P is None
        picks, certified, fp32_rows, fp16_rows = [], 0, 0, 0
        for i in range(h.shape[0]):  # one token at a time, as in batch-1 decoding
            picks.append(head.greedy(h[i : i + 1], exact=exact, probes=P))
            s = head.last_stats
            certified += s["certified"]
            fp32_rows += s["probed_rows"] + s["verified_rows"]
            fp16_rows += s["screened_rows"]
        agree = float((torch.cat(picks) == dense_top).float().mean())
        first_round = max(1, head.clusters // 64) if exact else P  # greedy's default first round when exact
        row = {
            "clusters": head.clusters,
            "probes": first_round,
            "mode": "exact" if exact else "approximate",
            "agreement": agree,
            "fp32_rows_per_token": fp32_rows / h.shape[0],
            "fp16_rows_per_token": fp16_rows / h.shape[0],
        }
        if exact:
            row["certified"] = certified / h.shape[0]
        else:
            row["tv_distance"] = tv_distance(head, weight, h[:tv_rows], P)
        for b in batches:
            t = _median(lambda b=b: head.greedy(h[:b], exact=exact, probes=P), repeats)
            row[f"head_s_b{b}"], row[f"dense_head_s_b{b}"], row[f"speedup_b{b}"] = t, dense_time[b], dense_time[b] / t
        rows.append(row)
    return rows


@torch.no_grad()
def tv_distance(head: IndexedHead, weight: torch.Tensor, h: torch.Tensor, probes: int) -> float:
    """Mean total-variation distance between ``head.sampling_probs`` (T = 1) and the dense softmax,
    one row at a time as in batch-1 decoding (a batch reads the union of its rows' probes)."""
    total = 0.0
    for row in h.split(1):
        total += float(
            0.5 * (head.sampling_probs(row, probes=probes) - torch.softmax(row @ weight.T, dim=-1)).abs().sum()
        )
    return total / h.shape[0]


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
    earlier = (
        json.loads((Path(out) / "accelerate.json").read_text()) if (Path(out) / "accelerate.json").exists() else {}
    )
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
    decode_rows = [] if "decode" in parts else earlier["decode"]
    default = heads[1024]
    for batch in (1, 16) if "decode" in parts else ():
        speeds = decode_tokens_per_s(
            model,
            {
                "dense": lambda x: (x @ weight.T).argmax(-1),
                "indexed approximate": lambda x: default.greedy(x, exact=False),
                "indexed exact": default.greedy,
            },
            batch,
            decode_steps,
        )
        decode_rows.append(
            {
                "model": "SmolLM2-135M (real weights)",
                "clusters": 1024,
                "probes": default.probes,
                "batch": batch,
                **{f"{k} tok/s": v for k, v in speeds.items()},
            }
        )
    for shape, K in SPEED_SHAPES.items() if "decode" in parts else ():
        big = random_model(shape)
        w = big.get_output_embeddings().weight.detach()
        for probes in (K // 8, K // 32):  # SmolLM2's 99.9% fraction, and a quarter of it
            head = random_index(w, K, probes)
            for batch in (1, 16):
                x = torch.randn(batch, w.shape[1])
                dense_s = _median(lambda: (x @ w.T).argmax(-1))
                head_s = _median(lambda: head.greedy(x, exact=False))
                speeds = decode_tokens_per_s(
                    big,
                    {
                        "dense": lambda x: (x @ w.T).argmax(-1),
                        "indexed approximate": lambda x: head.greedy(x, exact=False),
                    },
                    batch,
                    decode_steps,
                )
                decode_rows.append(
                    {
                        "model": f"{shape} shape (random weights, random clusters)",
                        "clusters": K,
                        "probes": probes,
                        "batch": batch,
                        "head speed-up": dense_s / head_s,
                        **{f"{k} tok/s": v for k, v in speeds.items()},
                    }
                )
        del big
    results = {"environment": env, "index": index_rows, "decode": decode_rows}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "accelerate.json", results)
    (out / "accelerate.md").write_text(markdown(results))
    plot(results, out / "accelerate.png")
    return results


def markdown(results: dict) -> str:
    env = results["environment"]
    lines = [
        f"SmolLM2-135M-Instruct, {env['eval_tokens']:,} hidden states of the {env['corpus']} test split (metric from"
        f" {env['metric_tokens']:,} of the train split); {env['threads']} threads.\n"
    ]
    lines.append(
        "| K | spherical | mode | probes | top-1 agreement | certified | fp32 rows / token | fp16 rows / token |"
        " TV to dense | head × dense, batch 1 | batch 16 |"
    )
    lines.append("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results["index"]:
        certified = "" if r.get("certified") is None else f"{100 * r['certified']:.1f}%"
        tv = "" if r.get("tv_distance") is None else f"{r['tv_distance']:.4f}"
        lines.append(
            f"| {r['clusters']} | {'yes' if r['spherical'] else 'no'} | {r['mode']} | {r['probes']} |"
            f" {100 * r['agreement']:.2f}% | {certified} | "
            f"{r['fp32_rows_per_token']:,.0f} | {r['fp16_rows_per_token']:,.0f} | {tv} | {r['speedup_b1']:.2f} |"
            f" {r['speedup_b16']:.2f} |"
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
            [r["speedup_b1"] for r in rs],
            [100 * (1 - r["agreement"]) for r in rs],
            "o-",
            label=f"K={key[0]}{' spherical' if key[1] else ''}",
        )
        exact = [r for r in results["index"] if (r["clusters"], r["spherical"]) == key and r["mode"] == "exact"]
        for r in exact:
            ax.plot([r["speedup_b1"]], [1e-3], "k*", ms=9)
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

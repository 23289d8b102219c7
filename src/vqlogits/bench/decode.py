"""``vqlogits bench``'s decode part: greedy tokens/s with a KV cache and head time, dense against
the compact heads (SmolLM2's shape), against ``IndexedHead`` at larger published shapes, and, given
an accelerated Gemma-3-270M folder (``--gemma``), every decoding mode on the real model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..files import USER_CACHE
from ..heads import DenseHead, IndexedHead, VQLogitsHead
from ..kernels import dense_greedy
from ..studies import accelerate, gemma_decoding, verified
from ..timing import decode_tokens_per_s, median_seconds
from .config import BenchConfig
from .format import seconds as _fmt_s


def smollm2_shaped(num_layers: int = 30):
    """A SmolLM2-135M-shaped Llama with random weights (timing only)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=num_layers,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def bench_decode(cfg: BenchConfig, bar) -> list[dict]:
    device = torch.device(cfg.device)
    model = smollm2_shaped(cfg.decode_layers).to(device)
    dense = DenseHead(576, 49152).to(device)
    with torch.no_grad():
        dense.weight.copy_(model.lm_head.weight)
    rows = []
    for K in cfg.loss_codebook_sizes:
        vq = VQLogitsHead(576, 49152, K).to(device)
        indexed = IndexedHead(576, 49152, K).to(device)  # random balanced clusters: right for timing only
        indexed.set_clusters(
            model.lm_head.weight.detach().cpu(), torch.randperm(49152, generator=torch.Generator().manual_seed(0)) % K
        )
        indexed.to(device)
        picks = {"dense": dense.greedy, "vq": vq.greedy, "indexed": lambda h: indexed.greedy(h, exact=False)}
        for batch in cfg.decode_batches:
            bar.set_description(f"decode batch={batch}")
            row = {
                "model": "SmolLM2-135M shape, random weights",
                "K": K,
                "batch": batch,
                "indexed_probes": indexed.probes,
            }
            speeds = decode_tokens_per_s(model, picks, batch, cfg.decode_steps, repeats=max(1, cfg.repeats // 3))
            h = torch.randn(batch, 576, device=device)
            for name, pick in picks.items():
                row[f"{name}_tok_s"] = speeds[name]
                row[f"{name}_head_s"], _ = median_seconds(lambda: pick(h), cfg.repeats, cfg.warmup, device)
            row["speedup"] = row["vq_tok_s"] / row["dense_tok_s"]
            row["head_speedup"] = row["dense_head_s"] / row["vq_head_s"]
            row["indexed_speedup"] = row["indexed_tok_s"] / row["dense_tok_s"]
            row["indexed_head_speedup"] = row["dense_head_s"] / row["indexed_head_s"]
            rows.append(row)
            bar.update(1)
    return rows


def bench_indexed_decode(cfg: BenchConfig, bar) -> list[dict]:
    """IndexedHead (approximate, K / 8 and K / 32 probes of about 64-row clusters) against the dense
    head at larger published shapes: head time and greedy tokens/s, random weights and clusters."""
    rows, device = [], torch.device(cfg.device)
    for shape in cfg.indexed_models:
        model = accelerate.random_model(shape).to(device)
        w = model.get_output_embeddings().weight.detach()
        K = accelerate.SPEED_SHAPES[shape]
        for probes in (K // 8, K // 32):
            head = accelerate.random_index(w.cpu(), K, probes).to(device)
            for batch in cfg.decode_batches:
                bar.set_description(f"indexed {shape} batch={batch}")
                x = torch.randn(batch, w.shape[1], device=device)
                dense = dense_greedy(w)
                dense_s, _ = median_seconds(lambda: dense(x), cfg.repeats, cfg.warmup, device)
                head_s, _ = median_seconds(lambda: head.greedy(x, exact=False), cfg.repeats, cfg.warmup, device)
                speeds = decode_tokens_per_s(
                    model,
                    {"dense": dense, "indexed": lambda h: head.greedy(h, exact=False)},
                    batch,
                    cfg.decode_steps,
                    repeats=max(1, cfg.repeats // 3),
                )
                rows.append(
                    {
                        "model": shape,
                        "K": K,
                        "probes": probes,
                        "batch": batch,
                        "dense_head_s": dense_s,
                        "indexed_head_s": head_s,
                        "dense_tok_s": speeds["dense"],
                        "indexed_tok_s": speeds["indexed"],
                        "head_speedup": dense_s / head_s,
                        "speedup": speeds["indexed"] / speeds["dense"],
                    }
                )
        del model
    return rows


def bench_verified(cfg: BenchConfig, bar) -> list[dict]:
    """Dense fp32, the head cast to bf16, approximate and verified greedy decoding of a SmolLM2-shaped
    model (random backbone) with a synthetic clustered head whose drafts agree with dense greedy as
    often as SmolLM2's real head does (``verified.tune_spread``), batch 1; ``bench.verified``."""
    model = smollm2_shaped(cfg.decode_layers).to(cfg.device)
    V, d, K = 49152, 576, 1024
    ids = torch.randint(0, V, (8, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        states = model.base_model(input_ids=ids).last_hidden_state.reshape(-1, d)
    scale = float(model.get_output_embeddings().weight.detach().std())
    bar.set_description("verified: tuning the synthetic head")
    tuned = verified.tune_spread(states, V, K, K // 8, cfg.verified_agreement, scale)
    W, assignment = verified.synthetic_weight(V, d, K, tuned["spread"], scale)
    bar.set_description("verified decode")
    row = verified.compare(
        model,
        W,
        verified.synthetic_index(W, assignment, K, K // 8),
        ids[:1, :16],
        cfg.decode_steps,
        max(1, cfg.repeats // 3),
    )
    bar.update(1)
    return [{"model": "SmolLM2-135M shape (synthetic head)", "draft_agreement": tuned["agreement"], **row}]


def decode_markdown(rows: list[dict], env: dict) -> str:
    out = []
    out.append("\n### Greedy decode with a KV cache, SmolLM2-135M shape (random weights)\n")
    out.append(
        "IndexedHead: approximate greedy over K / 8 probed clusters (random clusters: timing only;"
        " agreement is measured on real weights in docs/PRETRAINED.md).\n"
    )
    out.append(
        "| K | batch | dense tok/s | VQ tok/s | × end to end | indexed tok/s | × end to end | head: dense |"
        " head: VQ | × head | head: indexed | × head |"
    )
    out.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        indexed = f"{r['indexed_tok_s']:,.1f} | {r['indexed_speedup']:.2f}" if "indexed_tok_s" in r else "– | –"
        indexed_head = (
            f"{_fmt_s(r['indexed_head_s'])} | {r['indexed_head_speedup']:.1f}" if "indexed_head_s" in r else "– | –"
        )
        out.append(
            f"| {r['K']} | {r['batch']} | {r['dense_tok_s']:,.1f} | {r['vq_tok_s']:,.1f} | {r['speedup']:.2f} |"
            f" {indexed} | {_fmt_s(r['dense_head_s'])} | {_fmt_s(r['vq_head_s'])} | {r['head_speedup']:.1f} |"
            f" {indexed_head} |"
        )
    return "\n".join(out)


def indexed_markdown(rows: list[dict], env: dict) -> str:
    out = []
    out.append("\n### IndexedHead, approximate greedy, at published shapes (random weights and clusters: speed only)\n")
    out.append(
        "| model | K | probes | batch | head: dense | head: indexed | × head | dense tok/s | indexed tok/s |"
        " × end to end |"
    )
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        out.append(
            f"| {r['model']} | {r['K']} | {r['probes']} | {r['batch']} | {_fmt_s(r['dense_head_s'])} |"
            f" {_fmt_s(r['indexed_head_s'])} | {r['head_speedup']:.1f} | {r['dense_tok_s']:.1f} |"
            f" {r['indexed_tok_s']:.1f} | {r['speedup']:.2f} |"
        )
    return "\n".join(out)


def verified_markdown(rows: list[dict], env: dict) -> str:
    out = []
    out.append("\n### Verified decoding, SmolLM2-135M shape, synthetic head (real weights: docs/PRETRAINED.md)\n")
    out.append(verified.markdown({"environment": env, "rows": rows}).split("\n", 1)[1])
    return "\n".join(out)


def bench_gemma(cfg: BenchConfig, bar) -> list[dict]:
    """Real Gemma-3-270M from an accelerated folder (``vqlogits bench --gemma FOLDER``): every mode
    of ``studies.gemma_decoding`` (dense, head cast, q8 / q4, approximate, verified, in fp32 and
    bf16), taking turns, at ``cfg.gemma_batches`` on pydocs and devdocs test prompts, on the CPU."""
    if not cfg.gemma_folder:
        return []
    if torch.device(cfg.device).type != "cpu":
        raise ValueError(f"--gemma measures decoding on the CPU (the screens' kernels), got device={cfg.device!r}")
    cache = cfg.cache or USER_CACHE
    run = gemma_decoding.load(cfg.gemma_folder, cache)
    rows = []
    for corpus in ("pydocs", "devdocs"):
        prompts = gemma_decoding.prompts_of(corpus, run["source"], cache)
        for b in cfg.gemma_batches:
            bar.set_description(f"gemma {corpus} batch={b}")
            row = gemma_decoding.compare(run["modes"], prompts[:b], cfg.decode_steps, max(1, cfg.repeats // 3))
            rows.append({"domain": corpus, **row})
            bar.update(1)
    return rows


def gemma_markdown(rows: list[dict], env: dict) -> str:
    table = gemma_decoding.markdown({"environment": env, "rows": rows, "sweep": []}).split("\n", 1)[1]
    return (
        "\n### Real Gemma-3-270M, every greedy decoding mode (tokens/s × dense of the same dtype; head ms/token)\n"
        + table
    )


@dataclass(frozen=True)
class Section:
    """A part of ``vqlogits bench`` beyond logits and loss: how it measures, renders and counts its rows."""

    run: Callable[[BenchConfig, object], list[dict]]
    markdown: Callable[[list[dict], dict], str]
    steps: Callable[[BenchConfig], int]


SECTIONS = {
    "decode": Section(
        bench_decode, decode_markdown, lambda cfg: len(cfg.decode_batches) * len(cfg.loss_codebook_sizes)
    ),
    "indexed": Section(bench_indexed_decode, indexed_markdown, lambda cfg: 0),
    "verified": Section(
        lambda cfg, bar: bench_verified(cfg, bar) if cfg.verified else [],
        verified_markdown,
        lambda cfg: int(cfg.verified),
    ),
    "gemma": Section(bench_gemma, gemma_markdown, lambda cfg: 2 * len(cfg.gemma_batches) * bool(cfg.gemma_folder)),
}

"""``vqlogits bench``'s decode part: greedy tokens/s with a KV cache and head time, dense against
the compact heads (SmolLM2's shape) and against ``IndexedHead`` at larger published shapes."""

from __future__ import annotations

import torch

from ..heads import DenseHead, IndexedHead, VQLogitsHead
from . import accelerate, verified
from .config import BenchConfig
from .timing import decode_tokens_per_s, median_seconds


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
                dense_s, _ = median_seconds(lambda: (x @ w.T).argmax(-1), cfg.repeats, cfg.warmup, device)
                head_s, _ = median_seconds(lambda: head.greedy(x, exact=False), cfg.repeats, cfg.warmup, device)
                speeds = decode_tokens_per_s(
                    model,
                    {"dense": lambda h: (h @ w.T).argmax(-1), "indexed": lambda h: head.greedy(h, exact=False)},
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

"""Greedy decoding with quantized heads on a pretrained model's own weights: head time per token and
end-to-end tokens/s against the fp32 head and the head cast to bf16, all in one run.

A 4-bit head in groups the int4 kernel takes decodes through ``screens.int4.Int4Screen``, other
widths through ``screens.int8.Int8Screen``: both the exact fp64 argmax of the head's own rows."""

from __future__ import annotations

from pathlib import Path

import torch

from ..data.corpora import tokenize_corpus
from ..files import USER_CACHE, write_atomic, write_json
from ..heads import QuantizedHead
from ..hf.hidden import hidden_states
from ..hf.load import load_causal_lm
from ..kernels import dense_greedy
from ..timing import decode_tokens_per_s, median_seconds


@torch.no_grad()
def bench_quantized(
    spec: str = "smollm2",
    bits: tuple = (4, 8, 3, 2),
    group_size: int = 32,
    corpus: str = "pydocs",
    batches: tuple = (1, 16),
    tokens: int = 256,
    steps: int = 16,
    repeats: int = 9,
    cache: str | Path = USER_CACHE,
) -> list[dict]:
    """One row per batch size: ``{name}_head_s`` (median over ``repeats`` on real hidden states of
    ``corpus``'s test split), ``{name}_tok_s`` (greedy with a KV cache), each head's top-1
    agreement with the fp32 head over ``tokens`` test positions, and for the quantized heads
    ``{name}_fp64_per_row``: the tokens per row its screen could not exclude, read in fp64 (0 where
    it decodes without a screen). Names: ``fp32``, ``bf16``
    (``h.bfloat16() @ W16.T``, what casting the head does), ``q{B}``. Rounding: RTN (speed does not
    depend on it; quality is scripts/pretrained_bytes.sh's)."""
    model, source = load_causal_lm(spec, cache)
    weight = model.get_output_embeddings().weight.detach().float()  # (V, d)
    w16 = weight.bfloat16()
    splits, _, _ = tokenize_corpus(corpus, str(source / "tokenizer.json"), cache, splits=("test",))
    h = hidden_states(model, splits["test"], tokens)  # (tokens, d)
    heads = {f"q{b}": QuantizedHead.from_weight(weight, b, group_size, method="rtn").eval() for b in bits}
    picks = {
        "fp32": dense_greedy(weight),
        "bf16": dense_greedy(w16),
        **{name: head.greedy for name, head in heads.items()},
    }
    top = picks["fp32"](h)
    agreement = {
        name: float((torch.cat([pick(r[None]) for r in h]) == top).float().mean()) for name, pick in picks.items()
    }
    fp64_per_row = {}
    for name, head in heads.items():
        _, stats = head.greedy_stats(h)  # a row's candidates do not depend on the rows beside it
        fp64_per_row[name] = stats["verified_rows"] / len(h)
    rows = []
    for batch in batches:
        row = {"model": spec, "group_size": group_size, "batch": batch, "tokens": tokens}
        x = h[:batch]
        for name, pick in picks.items():
            row[f"{name}_head_s"], _ = median_seconds(lambda pick=pick: pick(x), repeats, warmup=2)
            row[f"{name}_agreement"] = agreement[name]
        row.update({f"{name}_fp64_per_row": v for name, v in fp64_per_row.items()})
        row.update({f"{k}_tok_s": v for k, v in decode_tokens_per_s(model, picks, batch, steps, repeats=3).items()})
        rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    names = [k[: -len("_head_s")] for k in rows[0] if k.endswith("_head_s")]
    screened = [k[: -len("_fp64_per_row")] for k in rows[0] if k.endswith("_fp64_per_row")]
    out = [
        "| batch | "
        + " | ".join(f"head {n} ms/token" for n in names)
        + " | "
        + " | ".join(f"{n} tok/s" for n in names)
        + " | "
        + " | ".join(f"{n} top-1 = fp32" for n in names)
        + "".join(f" | {n} fp64 rows/token" for n in screened)
        + " |",
        "|---:|" + "---:|" * (3 * len(names) + len(screened)),
    ]
    for r in rows:
        per_token = [f"{1e3 * r[f'{n}_head_s'] / r['batch']:.2f}" for n in names]
        speeds = [f"{r[f'{n}_tok_s']:.1f}" for n in names]
        agree = [f"{100 * r[f'{n}_agreement']:.2f}%" for n in names]
        fp64 = [f"{r[f'{n}_fp64_per_row']:.1f}" for n in screened]
        out.append(f"| {r['batch']} | " + " | ".join(per_token + speeds + agree + fp64) + " |")
    return "\n".join(out) + "\n"


def write_report(rows: list[dict], out: str | Path) -> Path:
    """``quantized.json`` (the rows) and ``quantized.md`` (``markdown``) under ``out``; the .md's path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "quantized.json", rows)
    write_atomic(out / "quantized.md", lambda tmp: tmp.write_text(markdown(rows)))
    return out / "quantized.md"

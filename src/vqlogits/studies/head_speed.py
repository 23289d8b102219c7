"""Decode cost of every head of an equal-bytes study, in one run: greedy head time per token at
batch 1 against the original head in fp32 and cast to bf16, the heads taking turns.

    python -m vqlogits.studies.head_speed KEEP [OUT] [--model gemma3] [--repeats 41]

``KEEP`` holds one folder per study model with its ``vqlogits.json`` (the head's kind and sizes;
scripts/pretrained_bytes_gemma.sh keeps them in git). Each head is rebuilt at those sizes: a
quantized head from the original's own rows rounded to nearest (its certified screen's work depends
on the rows; the study's rounding method moves them by less than a step), every other kind with
random weights, as its greedy reads the same number of values whatever they are; a codebook kept as
4-bit groups decodes from random 4-bit codes, as a loaded folder decodes from its own. Hidden
states are the model's own on the pydocs test split, one a repeat.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from .. import quant
from ..data.corpora import tokenize_corpus
from ..files import USER_CACHE, write_atomic, write_json
from ..heads import QuantizedHead, head_from_config
from ..hf.hidden import hidden_states
from ..hf.load import load_causal_lm
from ..kernels import dense_greedy
from ..screens import int4 as screen_int4
from ..timing import seconds_in_turns


def study_heads(keep: str | Path, dense: torch.Tensor, seed: int = 0) -> dict:
    """``name: head`` for every ``KEEP/<name>/vqlogits.json``, built at its sizes (see the module)."""
    V, d = dense.shape
    heads, gen = {}, torch.Generator().manual_seed(seed)
    for meta_path in sorted(Path(keep).glob("*/vqlogits.json")):
        meta = json.loads(meta_path.read_text())
        if (meta["vocab_size"], meta["d_model"]) != (V, d):
            raise ValueError(
                f"{meta_path} is a {meta['vocab_size']} x {meta['d_model']} head, the model's is {V} x {d}"
            )
        if meta["head"] == "quantized":
            head = QuantizedHead.from_weight(dense, meta["bits"], meta["group_size"], method="rtn")
        else:
            head = head_from_config(meta, d, V)
            with torch.no_grad():
                for p in head.parameters():
                    p.copy_(torch.randn(p.shape, generator=gen) * float(dense.std()))
            _random_int4_codebook(head, meta, float(dense.std()), gen)
        heads[meta_path.parent.name] = head.eval()
    if not heads:
        raise ValueError(f"no */vqlogits.json under {keep}")
    return heads


def _random_int4_codebook(head, meta: dict, std: float, gen: torch.Generator) -> None:
    """A codebook saved as 4-bit groups the int4 kernel takes is loaded to decode from its codes
    (``hf.folder.load_pretrained``): give the head random codes of the rows' spread, held the same way."""
    bits, group_size = (meta.get("quantized_parts") or {}).get("codebook", (0, 0))
    if bits != 4 or not hasattr(head, "hold_int4_codebook") or not screen_int4.available(4, group_size, head.d_model):
        return
    K, d = head.codebook.shape
    q = torch.randint(0, 16, (K, d), generator=gen)
    scale = torch.full((K, d // group_size), std / 4.6).half()  # 16 uniform levels: a std of 4.6 steps
    offset = (-7.5 * scale.float()).half()
    with torch.no_grad():
        head.codebook.copy_(quant.dequantize(q, scale, offset, group_size))
    head.hold_int4_codebook(q, scale, offset, group_size)


def stored_bytes(keep: str | Path) -> dict:
    """``name: head bytes as stored``, from each model's first evaluation in ``keep``."""
    found = {}
    for f in sorted(Path(keep).glob("*/eval_*.json")):
        found.setdefault(f.parent.name, json.loads(f.read_text())["head_bytes"])
    return found


@torch.no_grad()
def head_speeds(
    keep: str | Path, spec: str = "gemma3", repeats: int = 41, corpus: str = "pydocs", cache: str | Path = USER_CACHE
) -> dict:
    """Median and quartiles of greedy head ms per token at batch 1, every head in turns within each
    repeat (``timing.seconds_in_turns``), each repeat on the next of the model's hidden states on
    ``corpus``'s test split."""
    model, source = load_causal_lm(spec, cache)
    dense = model.get_output_embeddings().weight.detach().float()  # (V, d)
    w16 = dense.bfloat16()
    splits, _, _ = tokenize_corpus(corpus, str(source / "tokenizer.json"), cache, splits=("test",))
    tokens = 256 * (repeats // 256 + 1)  # whole windows, one state for the warm-up and one a repeat
    h = hidden_states(model, splits["test"], tokens)[: repeats + 1]  # (repeats + 1, d)
    picks = {
        "dense fp32": dense_greedy(dense),
        "dense bf16": dense_greedy(w16),
        **{name: head.greedy for name, head in study_heads(keep, dense).items()},
    }

    def in_turn(pick):  # every head reads the same state in a round, the next one in the next round
        rows = iter(h)
        return lambda: pick(next(rows)[None])

    times = seconds_in_turns({name: in_turn(pick) for name, pick in picks.items()}, repeats)
    stored = {"dense fp32": 4 * dense.numel(), "dense bf16": 2 * dense.numel(), **stored_bytes(keep)}
    rows = []
    for name, t in times.items():
        q = statistics.quantiles(t, n=4)
        ms = {"head_ms": 1e3 * statistics.median(t), "q1_ms": 1e3 * q[0], "q3_ms": 1e3 * q[2]}
        rows.append({"model": name, "head_bytes": stored.get(name), **ms})
    base = rows[0]["head_ms"]
    for r in rows:
        r["speedup_vs_fp32"] = base / r["head_ms"]
    return {"model": spec, "batch": 1, "repeats": repeats, "threads": torch.get_num_threads(), "rows": rows}


def markdown(result: dict) -> str:
    out = [
        f"Greedy head time per token, batch 1, {result['threads']} thread(s), median of {result['repeats']} "
        "repeats with the heads in turns (quartiles in brackets).",
        "",
        "| head | MB as stored | ms/token | quartiles | × fp32 speed |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        mb = "–" if r["head_bytes"] is None else f"{r['head_bytes'] / 1e6:.2f}"
        quartiles = f"[{r['q1_ms']:.2f}, {r['q3_ms']:.2f}]"
        out.append(f"| {r['model']} | {mb} | {r['head_ms']:.2f} | {quartiles} | {r['speedup_vs_fp32']:.2f} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m vqlogits.studies.head_speed", description=__doc__.split("\n")[0])
    p.add_argument("keep")
    p.add_argument("out", nargs="?")
    p.add_argument("--model", default="gemma3")
    p.add_argument("--repeats", type=int, default=41)
    a = p.parse_args(argv)
    if a.repeats < 3:
        p.error(f"--repeats must be at least 3, got {a.repeats}")
    result = head_speeds(a.keep, a.model, a.repeats)
    out = Path(a.out) if a.out else Path(a.keep).parent
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "head_speed.json", result)
    write_atomic(out / "head_speed.md", lambda tmp: tmp.write_text(markdown(result)))
    print(markdown(result))


if __name__ == "__main__":
    main()

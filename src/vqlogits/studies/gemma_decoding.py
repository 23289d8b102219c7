"""Every way to decode real Gemma-3-270M greedily, end to end, in one run (docs/PRETRAINED.md,
"Gemma-3-270M"; ``GEMMA=1 scripts/verified.sh``).

One KV-cached backbone step per token; the modes take turns within every repeat (median of
``repeats`` after a warm-up round):

* fp32 model: ``dense fp32`` ``(h @ W.T).argmax`` (the original); ``head bf16`` (the head cast,
  ``(h.bf16() @ W.bf16().T).argmax``); ``q8 head`` / ``q4 head`` (RTN, groups of 32, the exact
  argmax of their own rows through the int8 / int4 screens); ``approximate`` (the index's probed
  clusters); ``verified`` (``hf.generate``: exactly dense fp32's tokens).
* bf16 model (backbone and head cast, ``model.to(torch.bfloat16)``): ``dense bf16`` (the argmax of
  its bf16 logits, what the cast model gives) and ``verified bf16`` (exactly the bf16 model's
  tokens with its head's logits computed exactly, ties to the smallest id).

Identity, on ``identity_prompts`` prompts of each domain at batch 1 and in batches of 16: fp32
verified against the original's own ``generate(do_sample=False)``; bf16 verified against
``exact_reference``, a cached loop of the bf16 model whose head's argmax is certified independently
of the library's screens. And a sweep of the drafts' probes at batch 1.
"""

from __future__ import annotations

import resource
import statistics
import time
from pathlib import Path

import torch

from ..data.corpora import eval_windows, tokenize_corpus
from ..files import USER_CACHE, write_json
from ..heads import IndexedHead, QuantizedHead
from ..hf.folder import load_pretrained
from ..hf.generate import generate, greedy_loop
from ..hf.hidden import hidden_states
from ..hf.load import load_causal_lm
from ..kernels import dense_greedy, first_argmax
from ..screens.bf16 import gamma
from ..timing import median_seconds
from .verified import _Clock

FP32_MODES = ("dense fp32", "head bf16", "q8 head", "q4 head", "approximate", "verified")
BF16_MODES = ("dense bf16", "verified bf16")


def exact_reference(W16: torch.Tensor):
    """``pick(h) -> ids``: the argmax of the exact logits of bf16 rows ``W16`` (V, d) at bf16 states
    h (B, d), ties to the smallest id. Certified without the library's screens: bf16 x bf16
    products are exact in fp32, so the fp32 GEMM's error is at most gamma_d |h| |w_v| (+ a flush
    term per product); every token within that of the best lower bound is read in fp64."""
    W32, d = W16.float(), W16.shape[1]
    norms = W32.norm(dim=-1) * (1 + 2.0**-10)

    def pick(h):
        x = h.float()
        fl = x @ W32.T  # (B, V)
        err = gamma(d) * x.norm(dim=-1, keepdim=True) * norms + d * 2.0**-126
        low = (fl - err).max(-1, keepdim=True).values
        out = []
        for b in range(x.shape[0]):
            cand = torch.nonzero(fl[b] + err[b] >= low[b]).squeeze(1)
            exact = x[b].double() @ W32[cand].double().T
            out.append(cand[exact == exact.max()].min())
        return torch.stack(out)

    return pick


def _timed_generate(model, head, **kw):
    """A runner: verified decoding through ``model``, its head's time counted."""
    greedy, check = _Clock(head.greedy), _Clock(head.exact_argmax)

    def run(prompts, new):
        stats, head.greedy, head.exact_argmax = {}, greedy, check  # the instance's, timed
        greedy.seconds = check.seconds = 0.0
        try:
            tokens = generate(model, prompts, new, stats=stats, **kw)
        finally:
            del head.greedy, head.exact_argmax
        return tokens, greedy.seconds + check.seconds, stats

    return run


def _timed_loop(model, pick):
    clock = _Clock(pick)

    def run(prompts, new):
        clock.seconds = 0.0
        return greedy_loop(model, prompts, new, clock), clock.seconds, None

    return run


def runners(model, model16, quantized: dict) -> dict:
    """name -> run(prompts, new) -> (tokens, head seconds, verified stats or None)."""
    head, head16 = model.get_output_embeddings(), model16.get_output_embeddings()
    W, W16 = head.weight.detach().clone(), head16.weight.detach().clone()
    Wc = W.bfloat16()
    return {
        "dense fp32": _timed_loop(model, dense_greedy(W)),
        "head bf16": _timed_loop(model, dense_greedy(Wc)),
        **{f"q{b} head": _timed_loop(model, q.greedy) for b, q in quantized.items()},
        "approximate": _timed_loop(model, lambda h: head.greedy(h, exact=False)),
        "verified": _timed_generate(model, head),
        "dense bf16": _timed_loop(model16, dense_greedy(W16)),
        "verified bf16": _timed_generate(model16, head16),
    }


def _in_turns(modes: dict, prompts: torch.Tensor, new: int, repeats: int):
    """Each mode run ``repeats`` times after a warm-up round, the modes taking turns: per mode, its
    (tokens/s, head share, head seconds) of every repeat, its last tokens and its last verified stats."""
    runs, tokens, stats = {name: [] for name in modes}, {}, {}
    for r in range(repeats + 1):
        for name, run in modes.items():
            t0 = time.perf_counter()
            tokens[name], head_s, got = run(prompts, new)
            elapsed = time.perf_counter() - t0
            stats[name] = got or stats.get(name)
            if r:
                runs[name].append((prompts.shape[0] * new / elapsed, head_s / elapsed, head_s))
    return runs, tokens, stats


def _drafting(s: dict) -> dict:
    """A verified run's share of drafts kept and tokens emitted per backbone step."""
    return {
        "acceptance": s["accepted"] / max(1, s["drafted"]),
        "tokens per backbone step": s["block_tokens"] / max(1, s["backbone_steps"]),
    }


@torch.no_grad()
def compare(modes: dict, prompts: torch.Tensor, new: int, repeats: int) -> dict:
    """tokens/s, head ms/token and share per mode (median over ``repeats`` turns after a warm-up),
    agreement with dense fp32 (fp32 modes) or dense bf16 (bf16 modes), and the drafting counts."""
    runs, tokens, stats = _in_turns(modes, prompts, new, repeats)
    B = prompts.shape[0]
    row = {"batch": B, "new_tokens": new}
    for name, rs in runs.items():
        base = "dense bf16" if name in BF16_MODES else "dense fp32"
        row[f"{name} tok/s"] = statistics.median(s for s, _, _ in rs)
        row[f"{name} head share"] = statistics.median(f for _, f, _ in rs)
        row[f"{name} head ms/token"] = 1e3 * statistics.median(t for _, _, t in rs) / (B * new)
        row[f"{name} agreement"] = float((tokens[name][:, -new:] == tokens[base][:, -new:]).float().mean())
    for name in ("verified", "verified bf16"):
        row.update({f"{name} {k}": v for k, v in _drafting(stats[name]).items()})
        row[f"{name} fallback_at"] = stats[name]["fallback_at"]
    return row


@torch.no_grad()
def probe_sweep(model, prompts: torch.Tensor, new: int, repeats: int, fractions=(128, 64, 32, 16)) -> list[dict]:
    """Verified decoding at batch 1 with drafts reading K / f clusters, against dense fp32 in turns."""
    head = model.get_output_embeddings()
    W = head.weight.detach().clone()
    modes = {"dense fp32": _timed_loop(model, dense_greedy(W))}
    modes.update({f"K/{f}": _timed_generate(model, head, draft_probes=head.clusters // f) for f in fractions})
    runs, _, stats = _in_turns(modes, prompts, new, repeats)
    speed = {name: statistics.median(s for s, _, _ in rs) for name, rs in runs.items()}
    return [
        {"probes": f"K/{f}", "speed-up": speed[f"K/{f}"] / speed["dense fp32"], **_drafting(stats[f"K/{f}"])}
        for f in fractions
    ]


@torch.no_grad()
def identity(fast, reference, prompts: torch.Tensor, new: int, eos: list[int], hf: bool = False) -> dict:
    """Verified greedy (``fast``, through ``hf.generate.generate``, and with ``hf`` also through
    ``fast.generate()``, Hugging Face's call) against ``reference(ids) -> (B, T + new)``, one prompt
    at a time and in batches of 16; after one of ``eos`` a row holds ``eos[0]``, in all."""
    kw = dict(eos_token_id=eos, pad_token_id=eos[0])
    paths = {"identical": lambda ids: generate(fast, ids, new, **kw)}
    if hf:
        paths["model.generate identical"] = lambda ids: fast.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, do_sample=False, **kw
        )

    def padded(out, ids):
        return torch.nn.functional.pad(out, (0, ids.shape[1] + new - out.shape[1]), value=eos[0])

    def count(batch: int) -> dict:
        hits = dict.fromkeys(paths, 0)
        for i in range(0, prompts.shape[0], batch):
            ids = prompts[i : i + batch]
            want = padded(reference(ids), ids)
            for name, path in paths.items():
                hits[name] += batch * torch.equal(padded(path(ids), ids), want)
        return {f"{name}_batch{batch}": n for name, n in hits.items()}

    return {"prompts": prompts.shape[0], "new_tokens": new, **count(1), **count(16)}


def _references(original, model16, new: int, eos: list[int]) -> dict:
    """The reference decoders of ``identity``: the original's own generate; the certified bf16 loop."""
    pick = exact_reference(model16.get_output_embeddings().weight.detach())

    def fp32(ids):
        mask = torch.ones_like(ids)  # a prompt may hold the end-of-text id, which HF takes for padding
        kw = dict(eos_token_id=eos, pad_token_id=eos[0], do_sample=False)
        return original.generate(ids, attention_mask=mask, max_new_tokens=new, **kw)

    def bf16(ids):
        out = greedy_loop(model16, ids, new, pick)
        ended = torch.cumsum(torch.isin(out[:, ids.shape[1] :], torch.tensor(eos)), 1) > 0
        later = torch.cat([torch.zeros_like(ended[:, :1]), ended[:, :-1]], 1)  # after the first end
        out[:, ids.shape[1] :][later] = eos[0]
        return out

    return {"fp32": fp32, "bf16": bf16}


def load(folder: str | Path, cache: str | Path = USER_CACHE) -> dict:
    """The accelerated ``folder`` in fp32 and cast to bf16, the original, the q8 / q4 heads of its
    rows, the modes (``runners``), the tokenizer's folder and the end-of-sequence ids."""
    model, (original, source) = load_pretrained(folder), load_causal_lm("gemma3", cache)
    model16 = load_pretrained(folder).to(torch.bfloat16)
    W = model.get_output_embeddings().weight.detach().clone()
    quantized = {b: QuantizedHead.from_weight(W, b, 32, method="rtn").eval() for b in (8, 4)}
    eos = original.generation_config.eos_token_id
    return {
        "model": model,
        "model16": model16,
        "original": original,
        "source": source,
        "modes": runners(model, model16, quantized),
        "eos": list(eos) if isinstance(eos, list) else [eos],
    }


def prompts_of(corpus: str, source: Path, cache: str | Path) -> torch.Tensor:
    """64 prompts of 32 tokens from ``corpus``'s test split, (64, 32)."""
    splits, _, _ = tokenize_corpus(corpus, str(source / "tokenizer.json"), cache, splits=("test",))
    return torch.cat(eval_windows(splits["test"], 32, 64 * 32, batch=64))[:, :32]


def measure(
    folder: str | Path,
    out: str | Path = "docs/pretrained/gemma",
    cache: str | Path = USER_CACHE,
    new: int = 48,
    repeats: int = 2,
    identity_prompts: int = 64,
) -> dict:
    """The folder ``vqlogits accelerate --model gemma3`` wrote, at batch 1, 4 and 16 on 32-token
    prompts of the pydocs and devdocs test splits; the identity checks (none with
    ``identity_prompts`` 0); the probe sweep."""
    torch.manual_seed(0)
    run = load(folder, cache)
    references = _references(run["original"], run["model16"], new, run["eos"])
    env = {"threads": torch.get_num_threads(), "torch": torch.__version__, "folder": str(folder)}
    results = {"environment": env, "rows": [], "sweep": []}
    for corpus in ("pydocs", "devdocs"):
        prompts = prompts_of(corpus, run["source"], cache)
        for b in (1, 4, 16):
            results["rows"].append({"domain": corpus, **compare(run["modes"], prompts[:b], new, repeats)})
            save(results, out)
        results["sweep"] += [{"domain": corpus, **r} for r in probe_sweep(run["model"], prompts[:1], new, repeats)]
        for dtype, fast in (("fp32", run["model"]), ("bf16", run["model16"])) if identity_prompts else ():
            got = identity(fast, references[dtype], prompts[:identity_prompts], new, run["eos"], hf=dtype == "fp32")
            env[f"identity {dtype} {corpus}"] = got
            save(results, out)
    env["peak RSS GB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    save(results, out)
    return results


@torch.no_grad()
def cluster_sweep(
    out: str | Path = "docs/pretrained/gemma",
    cache: str | Path = USER_CACHE,
    clusters=(2048, 4096, 8192),
    metric_tokens: int = 16384,
    test_tokens: int = 4096,
) -> list[dict]:
    """K and the drafts' probes for Gemma-3-270M's head: each K's index (``accelerate``'s k-means in
    the metric of ``metric_tokens`` pydocs train states), then, per probe count, its approximate
    greedy's agreement with the dense argmax on ``test_tokens`` held-out states of the pydocs and
    devdocs test splits, one row at a time (a batch-1 draft), and a draft's head time (median of 20)."""
    Path(out).mkdir(parents=True, exist_ok=True)
    model, source = load_causal_lm("gemma3", cache)
    W = model.get_output_embeddings().weight.detach().float()
    states = {}
    for corpus, split, n in (
        ("pydocs", "train", metric_tokens),
        ("pydocs", "test", test_tokens),
        ("devdocs", "test", test_tokens),
    ):
        data = tokenize_corpus(corpus, str(source / "tokenizer.json"), cache, splits=(split,))[0][split]
        states[corpus, split] = hidden_states(model, data, n)
    rows = []
    for K in clusters:
        t0 = time.perf_counter()
        head = IndexedHead.from_weight(W, K, hidden=states["pydocs", "train"], progress=True)
        build_s = time.perf_counter() - t0
        for f in (64, 32, 16):
            row = {"clusters": K, "probes": f"K/{f}", "index build s": build_s}
            for corpus in ("pydocs", "devdocs"):
                h = states[corpus, "test"]
                truth = torch.cat([first_argmax(c @ W.T) for c in h.split(512)])
                drafts = torch.cat([head.greedy(r[None], exact=False, probes=K // f) for r in h])
                row[f"{corpus} agreement"] = float((drafts == truth).float().mean())
            one = states["pydocs", "test"][:1]
            draft = lambda head=head, P=K // f: head.greedy(one, exact=False, probes=P)  # noqa: E731
            row["draft ms"] = 1e3 * median_seconds(draft, 20, 3)[0]
            rows.append(row)
            write_json(Path(out) / "clusters.json", rows)
        del head
    (Path(out) / "clusters.md").write_text(clusters_markdown(rows))
    return rows


def clusters_markdown(rows: list[dict]) -> str:
    lines = ["| K | draft probes | pydocs agreement | devdocs agreement | draft ms (1 row) | index build s |"]
    lines.append("|---:|---|---:|---:|---:|---:|")
    for r in rows:
        lines.append(
            f"| {r['clusters']:,} | {r['probes']} | {100 * r['pydocs agreement']:.2f}% |"
            f" {100 * r['devdocs agreement']:.2f}% | {r['draft ms']:.2f} | {r['index build s']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def markdown(results: dict) -> str:
    env = results["environment"]
    modes = FP32_MODES + BF16_MODES
    lines = [
        f"Greedy decoding of Gemma-3-270M, {env['threads']} thread(s), torch {env['torch']}: tokens/s "
        "(× dense fp32; bf16 modes × dense bf16), then head ms/token (the head's share of the time).\n",
        "| domain | batch | " + " | ".join(modes) + " |",
        "|---|---:|" + "---:|" * len(modes),
    ]
    for r in results["rows"]:
        cells = []
        for m in modes:
            base = r["dense bf16 tok/s"] if m in BF16_MODES else r["dense fp32 tok/s"]
            ratio = "" if m in ("dense fp32", "dense bf16") else f" ({r[f'{m} tok/s'] / base:.2f}×)"
            share = f"{100 * r[f'{m} head share']:.0f}%"
            cells.append(f"{r[f'{m} tok/s']:.1f}{ratio}; {r[f'{m} head ms/token']:.1f} ms ({share})")
        lines.append(f"| {r['domain']} | {r['batch']} | " + " | ".join(cells) + " |")
    lines += [
        "\nAgreement with dense (fp32 modes: dense fp32; bf16 modes: dense bf16), and drafting:\n",
        "| domain | batch | "
        + " | ".join(m for m in modes if m not in ("dense fp32", "dense bf16"))
        + " | acceptance fp32 / bf16 | tokens per backbone step fp32 / bf16 | fell back at |",
        "|---|---:|" + "---:|" * (len(modes) - 2) + "---:|---:|---|",
    ]
    for r in results["rows"]:
        agree = [f"{100 * r[f'{m} agreement']:.1f}%" for m in modes if m not in ("dense fp32", "dense bf16")]
        acc = f"{100 * r['verified acceptance']:.1f}% / {100 * r['verified bf16 acceptance']:.1f}%"
        steps = f"{r['verified tokens per backbone step']:.2f} / {r['verified bf16 tokens per backbone step']:.2f}"
        fell = f"{r['verified fallback_at']} / {r['verified bf16 fallback_at']}"
        lines.append(f"| {r['domain']} | {r['batch']} | " + " | ".join(agree) + f" | {acc} | {steps} | {fell} |")
    if results["sweep"]:
        lines += ["\nDraft probes at batch 1 (verified fp32 against dense fp32, in turns):\n"]
        lines += ["| domain | probes | speed-up | acceptance | tokens per backbone step |", "|---|---|---:|---:|---:|"]
        for r in results["sweep"]:
            lines.append(
                f"| {r['domain']} | {r['probes']} | {r['speed-up']:.2f}× | {100 * r['acceptance']:.1f}% | "
                f"{r['tokens per backbone step']:.2f} |"
            )
    ident = {k.removeprefix("identity "): v for k, v in env.items() if k.startswith("identity ")}
    if ident:
        lines += ["\nIdentity (verified tokens equal to the reference's, token for token):\n"]
        lines += ["| dtype, domain | path | prompts | batch 1 | batches of 16 |", "|---|---|---:|---:|---:|"]
        for k, v in ident.items():
            n = v["prompts"]
            for path, label in (
                ("identical", "hf.generate.generate"),
                ("model.generate identical", "model.generate()"),
            ):
                if f"{path}_batch1" in v:
                    cells = f"{v[f'{path}_batch1']} / {n} | {v[f'{path}_batch16']} / {n}"
                    lines.append(f"| {k} | {label} | {n} | {cells} |")
    if "peak RSS GB" in env:
        lines.append(
            f"\nPeak resident memory of the whole run (every mode's model and head loaded): "
            f"{env['peak RSS GB']:.1f} GB."
        )
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    """Speed-up over the same dtype's dense decoding, per mode, batch and domain."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = [m for m in FP32_MODES + BF16_MODES if m not in ("dense fp32", "dense bf16")]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    rows = results["rows"]
    width = 0.8 / len(modes)
    for i, m in enumerate(modes):
        ratios = [r[f"{m} tok/s"] / r["dense bf16 tok/s" if m in BF16_MODES else "dense fp32 tok/s"] for r in rows]
        ax.bar([j + i * width for j in range(len(rows))], ratios, width, label=m)
    ax.axhline(1, color="gray", lw=0.8)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(rows))], [f"{r['domain']}\nB={r['batch']}" for r in rows])
    ax.set(ylabel="tokens/s ÷ dense of the same dtype", title="Gemma-3-270M greedy decoding, one thread")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def save(results: dict, out: str | Path) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "decoding.json", results)
    (out / "decoding.md").write_text(markdown(results))
    if results["rows"]:
        plot(results, out / "decoding.png")


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["clusters"]:  # python -m vqlogits.studies.gemma_decoding clusters [OUT]
        cluster_sweep(*sys.argv[2:3])
    elif sys.argv[1:2] == ["speed"]:  # the same without the identity checks: speed FOLDER [OUT]
        measure(*sys.argv[2:4], identity_prompts=0)
    else:
        measure(*sys.argv[1:3])  # python -m vqlogits.studies.gemma_decoding FOLDER [OUT]

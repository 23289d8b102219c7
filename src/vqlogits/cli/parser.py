"""The ``vqlogits`` command's options: one sub-parser per subcommand (shared option groups in ``options``)."""

from __future__ import annotations

import argparse

from .options import (
    add_train_options,
    cache_option,
    dtype_option,
    folder_options,
    positive,
    probability,
    subparser,
)


def build_parser() -> argparse.ArgumentParser:
    from ..heads import FROM_ROWS

    parser = argparse.ArgumentParser(prog="vqlogits", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = subparser(
        sub,
        "train",
        "train an LM with a given head; rerun with the same --out to resume",
        "vqlogits train --corpus pydocs --tokenizer bpe:16384 --head vq --head-budget 0.02 --reassign-every 100"
        " --steps 2000 --out runs/vq2",
    )
    add_train_options(p)
    folder_options(p, "this run's own checkpoints, which it resumes")

    p = subparser(
        sub,
        "eval",
        "perplexity of a trained run, or original vs compressed for a compressed model",
        "vqlogits eval runs/vq2 --corpus devdocs",
    )
    p.add_argument("run_dir", help="a run folder (model.pt) or a compressed model folder (vqlogits.json)")
    p.add_argument(
        "--corpus",
        default=None,
        help="evaluate on another corpus with the same tokenizer (default: the run's; pydocs for compressed models)",
    )
    p.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        help="targets per split (default: the run's final_eval_tokens; 16384 for compressed models)",
    )
    cache_option(p)

    p = subparser(
        sub,
        "compress",
        "replace the head of an HF causal LM by a smaller head built from its rows",
        "vqlogits compress --model smollm2 --head hybrid-twolevel --head-budget 0.085 --out runs/smol-ht",
    )
    p.add_argument(
        "--model",
        default="smollm2",
        help="smollm2 (fetched on first use), an HF model folder, or a .gguf file (default: smollm2)",
    )
    p.add_argument(
        "--head",
        default="vq",
        choices=FROM_ROWS,
        help="head to build from the rows, see hf/build.py (default: vq)",
    )
    p.add_argument(
        "--head-budget",
        type=float,
        default=0.0,
        help="> 0: size the head to this fraction of the dense head's parameters, as training does "
        "(default: 0, use --codebook-size)",
    )
    p.add_argument(
        "--codebook-size",
        type=int,
        default=1024,
        help="K, the number of codes (the tail codes of the hybrids) without --head-budget (default: 1024)",
    )
    p.add_argument(
        "--token-dim", type=int, default=8, help="e of the two-level heads without --head-budget (default: 8)"
    )
    p.add_argument("--out", required=True, help="folder for the compressed model (required)")
    p.add_argument(
        "--init",
        default="kmeans",
        choices=["kmeans", "random", "frequency"],
        help="how codes are built from the head's rows (default: kmeans)",
    )
    p.add_argument(
        "--exact-tokens",
        type=int,
        default=0,
        help="frequent tokens of --corpus with exact rows: codes spent on them (vq) or the hybrids' frequent tokens "
        "without --head-budget (default: 0)",
    )
    p.add_argument(
        "--corpus", default="pydocs", help="corpus for token frequencies with --exact-tokens (default: pydocs)"
    )
    p.add_argument("--seed", type=int, default=0, help="k-means seed (default: 0)")
    p.add_argument("--bits", type=int, default=4, help="--head quantized: bits per weight, 1 to 8 (default: 4)")
    p.add_argument(
        "--group-size", type=int, default=32, help="--head quantized: weights per scale and offset (default: 32)"
    )
    p.add_argument("--method", default="hqq", choices=["hqq", "rtn"], help="--head quantized: rounding (default: hqq)")
    p.add_argument(
        "--part-bits",
        type=int,
        default=0,
        help="hybrid heads: store the codebook and token vectors at 8 or 4 bits (default: 0, fp)",
    )
    dtype_option(p)
    folder_options(p, "an interrupted compress")
    cache_option(p)

    p = subparser(
        sub,
        "accelerate",
        "index a pretrained model's output rows for fast decoding with its own logits (no training)",
        "vqlogits accelerate --model smollm2 --clusters 1024 --out runs/smol-indexed",
    )
    p.add_argument(
        "--model",
        default="smollm2",
        help="smollm2 (fetched on first use), an HF model folder, or a .gguf file (default: smollm2)",
    )
    p.add_argument(
        "--clusters",
        type=int,
        default=None,
        help="K, balanced clusters of ceil(V / K) rows (default: a power of 2 near V / 48; 1,024 for SmolLM2)",
    )
    p.add_argument("--out", required=True, help="folder for the accelerated model (required)")
    p.add_argument(
        "--probes",
        type=int,
        default=None,
        help="clusters read by approximate greedy (default: K / 8, see heads/indexed.py)",
    )
    p.add_argument("--spherical", action="store_true", help="cluster the rows' directions instead of the rows")
    p.add_argument(
        "--corpus", default="pydocs", help="text whose hidden states set the clustering metric (default: pydocs)"
    )
    p.add_argument(
        "--hidden-tokens",
        type=int,
        default=16384,
        help="hidden states for the metric; 0: plain k-means (default: 16384)",
    )
    p.add_argument("--seed", type=int, default=0, help="k-means seed (default: 0)")
    dtype_option(p)
    folder_options(p, "an interrupted accelerate")
    cache_option(p)

    p = subparser(
        sub,
        "calibrate",
        "recover quality: stage 1 head on cached states, stage 2 last layers",
        "vqlogits calibrate runs/smol-vq4096 --corpus pydocs --budget-minutes 10",
    )
    p.add_argument("folder", help="a compressed model folder")
    p.add_argument("--corpus", default="pydocs", help="training text (default: pydocs)")
    p.add_argument(
        "--budget-minutes",
        type=float,
        default=10.0,
        help="wall-clock budget over both stages, hidden-state caching included; resumable (default: 10)",
    )
    p.add_argument(
        "--max-steps",
        type=int,
        default=0,
        help="also stop each stage after this many steps: a budget that does not depend on the machine's load "
        "(default: 0, none)",
    )
    p.add_argument(
        "--stages",
        default="12",
        choices=["1", "2", "12"],
        help="1: head only, 2: last layers + head, 12: both (default: 12)",
    )
    p.add_argument(
        "--kl-weight",
        type=float,
        default=1.0,
        help="weight of KL(original || compressed) beside cross-entropy (default: 1)",
    )
    p.add_argument("--train-layers", type=int, default=4, help="blocks trained in stage 2; 0: all weights (default: 4)")
    p.add_argument(
        "--reassign-every",
        type=int,
        default=50,
        help="stage 1 learns the token -> code map every N steps; 0: a fixed map (default: 50)",
    )
    p.add_argument(
        "--reassign-frac",
        type=float,
        default=0.05,
        help="at most this fraction of the seen tokens move per reassignment (default: 0.05)",
    )
    cache_option(p)

    p = subparser(
        sub,
        "generate",
        "decode from a model folder (compressed or accelerated) or a trained run, through its compact head",
        'vqlogits generate runs/smol-vq4096 "The os module" --sample --top-p 0.9',
    )
    p.add_argument("folder", help="a model folder (vqlogits.json) or a training run (model.pt)")
    p.add_argument("prompt", help="text to continue")
    p.add_argument("--max-new-tokens", type=positive(int), default=48, help="tokens to generate (default: 48)")
    p.add_argument("--temperature", type=positive(float), default=None, help="sampling temperature (default: 1)")
    p.add_argument(
        "--top-k", type=positive(int), default=None, help="keep the k most likely tokens, ties included (default: off)"
    )
    p.add_argument(
        "--top-p", type=probability, default=None, help="nucleus sampling threshold in (0, 1] (default: off)"
    )
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--verify",
        action="store_true",
        help="accelerated models: draft with the index, verify in blocks; the original model's exact tokens or "
        "distribution (the default for them)",
    )
    mode.add_argument(
        "--approximate",
        action="store_true",
        help="accelerated models: the probed clusters only, no verification (faster, not exact)",
    )
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    cache_option(p)

    p = subparser(
        sub,
        "sweep",
        "a grid over heads, K, maps, budgets and seeds, then a report",
        "vqlogits sweep --heads dense,vq --head-budgets 0.02,0.05 --reassign 0,100 --seeds 0,1 --steps 1500 --out"
        " runs/budget",
    )
    add_train_options(p)
    grid = p.add_argument_group("grid (comma lists; every combination is trained, finished runs are skipped)")
    grid.add_argument("--heads", default="dense,vq", help="heads (default: dense,vq)")
    grid.add_argument(
        "--codebook-sizes", default="256,1024", help="vq K values, without --head-budgets (default: 256,1024)"
    )
    grid.add_argument("--mappings", default="random", help="vq maps (default: random)")
    grid.add_argument("--seeds", default="0", help="seeds (default: 0)")
    grid.add_argument("--bias", default="true", help="per-token bias on / off: true,false (default: true)")
    grid.add_argument("--reassign", default="0", help="reassign_every values; 0: a fixed map (default: 0)")
    grid.add_argument(
        "--head-budgets", default="", help="fractions of the dense head, replacing --codebook-sizes (default: none)"
    )
    grid.add_argument(
        "--wsd-steps",
        default="",
        help="increasing step budgets: each run is trained at all of them with the WSD schedule, as one chain "
        "(default: none)",
    )

    p = subparser(
        sub,
        "corpus",
        "build a corpus (fetching embedded data on first use), tokenize it, print its statistics as JSON",
        "vqlogits corpus devdocs --tokenizer bpe:16384",
    )
    p.add_argument("name", help="pydocs, devdocs, wikitext-103[:DIR], c4[:DIR], or a file / folder / glob")
    p.add_argument(
        "--tokenizer", default="bpe:16384", help="smollm2, bpe:N, or a tokenizer.json / folder (default: bpe:16384)"
    )
    cache_option(p)

    p = subparser(
        sub,
        "fetch",
        "fetch embedded data now (it is otherwise fetched on first use); `make data` runs this",
        "vqlogits fetch pydocs smollm2",
    )
    p.add_argument("names", nargs="+", choices=["pydocs", "devdocs", "smollm2"], help="what to fetch")
    cache_option(p)

    p = subparser(
        sub,
        "analyze",
        "split a VQ run's loss gap to dense into code and within-code terms",
        "vqlogits analyze runs/dense runs/vq1024",
    )
    p.add_argument("dense_run", help="a dense run folder")
    p.add_argument("vq_run", help="a vq run folder on the same corpus and tokenizer")
    p.add_argument("--max-tokens", type=int, default=65536, help="test targets to analyse (default: 65536)")
    p.add_argument("--json", action="store_true", help="print the numbers as JSON instead of a summary")
    cache_option(p)

    p = subparser(
        sub,
        "report",
        "markdown table and PNG plots from run folders",
        "vqlogits report runs/converged --out docs/results/converged",
    )
    p.add_argument("runs", nargs="+", help="run folders, searched recursively for results.json")
    p.add_argument(
        "--out", default=None, help="folder for report.md, summary.json and plots (default: the first run folder)"
    )
    p.add_argument(
        "--previous",
        default=None,
        help="rows.json of an earlier pretrained report: its rows for models not under the run folder are kept",
    )

    p = subparser(
        sub,
        "equal-compute",
        "the equal-compute study's report: bits per byte by design and budget, verdicts, decode speed, plots",
        "vqlogits equal-compute docs/results/equal_compute/runs --out docs/results/equal_compute",
    )
    p.add_argument("runs", help="the study's runs: one folder per design (docs/equal_compute.sh)")
    p.add_argument("--out", default="docs/results/equal_compute", help="folder for summary.json, report.md and plots")
    p.add_argument(
        "--no-speed",
        action="store_true",
        help="keep the decode speeds of the summary.json in --out instead of measuring",
    )

    p = subparser(sub, "demo", "the main job: dense vs VQ-Logits on the embedded data", "vqlogits demo --out runs/demo")
    cache_option(p)
    p.add_argument("--out", default="runs/demo", help="folder for the runs and report.md (default: runs/demo)")
    p.add_argument("--steps", type=int, default=300, help="training steps per head (default: 300)")

    p = subparser(
        sub, "bench", "dense vs VQ: logits, loss (time, peak memory), decode", "vqlogits bench --quick --out runs/bench"
    )
    p.add_argument("--quick", action="store_true", help="SmolLM2 shapes only, few repeats (< 2 min on 2 CPU cores)")
    p.add_argument("--out", default="runs/bench", help="folder for bench.md / csv / json / png (default: runs/bench)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument(
        "--max-tflop",
        type=float,
        default=None,
        help="skip dense measurements above this many TFLOP per call (default: 3)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed repeats per measurement (default: 10; --quick: 2; --quantized: 9)",
    )
    p.add_argument(
        "--quantized",
        metavar="MODEL",
        nargs="?",
        const="smollm2",
        default=None,
        help="instead: MODEL's own head quantized to 4, 8, 3 and 2 bits against fp32 and bf16 at decode, on the CPU "
        "(quantized.md / json in --out; MODEL: smollm2 if omitted, or an HF folder)",
    )
    p.add_argument("--corpus", default="pydocs", help="--quantized: hidden states from this corpus (default: pydocs)")
    cache_option(p)
    return parser

"""The ``vqlogits`` command's options: one function per subcommand. Options that a config dataclass
describes are read off its fields (``options.add_config_options``)."""

from __future__ import annotations

import argparse

from .options import TRAIN_GROUPS, add_config_options, cache_option, positive, probability, subparser


def _train(sub) -> None:
    from ..lm.config import TrainConfig

    p = subparser(
        sub,
        "train",
        "train an LM with a given head; rerun with the same --out to resume",
        "vqlogits train --corpus pydocs --tokenizer bpe:16384 --head vq --head-budget 0.02 --reassign-every 100"
        " --steps 2000 --out runs/vq2",
    )
    add_config_options(p, TrainConfig, TRAIN_GROUPS)
    _overwrite(p, "this run's own checkpoints, which it resumes")


def _overwrite(p, what: str) -> None:
    p.add_argument(
        "--overwrite", action="store_true", help=f"replace what --out holds (default: refuse anything but {what})"
    )


def _eval(sub) -> None:
    p = subparser(
        sub,
        "eval",
        "perplexity of a trained run, or original vs compressed for a compressed model",
        "vqlogits eval runs/vq2 --corpus devdocs",
    )
    p.add_argument("run_dir", nargs="?", default=None, help="a run folder (model.pt) or a model folder (vqlogits.json)")
    p.add_argument(
        "--model",
        default=None,
        help="instead: the original model alone (smollm2, gemma3, an HF folder or a .gguf file), the baseline",
    )
    p.add_argument(
        "--corpus",
        default=None,
        help="evaluate on another corpus with the same tokenizer (default: the run's; pydocs for compressed models)",
    )
    p.add_argument(
        "--max-tokens",
        type=positive(int),
        default=None,
        help="targets per split (default: the run's final_eval_tokens; 16384 for compressed models)",
    )
    cache_option(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of a short summary")


def _compress(sub) -> None:
    from ..hf.config import CompressConfig

    p = subparser(
        sub,
        "compress",
        "replace the head of an HF causal LM by a smaller head built from its rows",
        "vqlogits compress --model smollm2 --head hybrid-twolevel --head-budget 0.085 --out runs/smol-ht",
    )
    add_config_options(p, CompressConfig)
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of a short summary")


def _accelerate(sub) -> None:
    from ..hf.config import AccelerateConfig

    p = subparser(
        sub,
        "accelerate",
        "index a pretrained model's output rows for fast decoding with its own logits (no training)",
        "vqlogits accelerate --model smollm2 --clusters 1024 --out runs/smol-indexed",
    )
    add_config_options(p, AccelerateConfig)
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of a short summary")


def _calibrate(sub) -> None:
    from ..hf.config import CalibrateConfig

    p = subparser(
        sub,
        "calibrate",
        "recover quality: stage 1 head on cached states, stage 2 last layers",
        "vqlogits calibrate runs/smol-vq4096 --corpus pydocs --budget-minutes 10",
    )
    add_config_options(p, CalibrateConfig)
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of a short summary")


def _generate(sub) -> None:
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
    p.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="model folders: decode in this dtype (bfloat16 casts backbone and head; verified decoding then gives "
        "the bf16 model's exact tokens) (default: float32)",
    )
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    p.add_argument("--quiet", action="store_true", help="no summary line (tokens/s, drafts kept) on stderr")
    cache_option(p)


def _sweep(sub) -> None:
    from ..lm.config import TrainConfig

    p = subparser(
        sub,
        "sweep",
        "a grid over heads, K, maps, budgets and seeds, then a report",
        "vqlogits sweep --heads dense,vq --head-budgets 0.02,0.05 --reassign 0,100 --seeds 0,1 --steps 1500 --out"
        " runs/budget",
    )
    add_config_options(p, TrainConfig, TRAIN_GROUPS)
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


def _corpus(sub) -> None:
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


def _fetch(sub) -> None:
    from ..data.fetch import EMBEDDED

    p = subparser(
        sub,
        "fetch",
        "fetch embedded data now (it is otherwise fetched on first use); `make data` runs this",
        "vqlogits fetch pydocs smollm2",
    )
    p.add_argument("names", nargs="+", choices=list(EMBEDDED), help="what to fetch")
    cache_option(p)


def _analyze(sub) -> None:
    p = subparser(
        sub,
        "analyze",
        "split a VQ run's loss gap to dense into code and within-code terms",
        "vqlogits analyze runs/dense runs/vq1024",
    )
    p.add_argument("dense_run", help="a dense run folder")
    p.add_argument("vq_run", help="a vq run folder on the same corpus and tokenizer")
    p.add_argument("--max-tokens", type=positive(int), default=65536, help="test targets to analyse (default: 65536)")
    p.add_argument("--json", action="store_true", help="print the numbers as JSON instead of a summary")
    cache_option(p)


def _report(sub) -> None:
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


def _equal_compute(sub) -> None:
    p = subparser(
        sub,
        "equal-compute",
        "the equal-compute study's report: bits per byte by design and budget, verdicts, decode speed, plots",
        "vqlogits equal-compute docs/results/equal_compute/runs --out docs/results/equal_compute",
    )
    p.add_argument("runs", help="the study's runs: one folder per design (scripts/equal_compute.sh)")
    p.add_argument("--out", default="docs/results/equal_compute", help="folder for summary.json, report.md and plots")
    p.add_argument(
        "--no-speed",
        action="store_true",
        help="keep the decode speeds of the summary.json in --out instead of measuring",
    )


def _demo(sub) -> None:
    p = subparser(sub, "demo", "the main job: dense vs VQ-Logits on the embedded data", "vqlogits demo --out runs/demo")
    cache_option(p)
    p.add_argument("--out", default="runs/demo", help="folder for the runs and report.md (default: runs/demo)")
    p.add_argument("--steps", type=int, default=300, help="training steps per head (default: 300)")


def _bench(sub) -> None:
    p = subparser(
        sub, "bench", "dense vs VQ: logits, loss (time, peak memory), decode", "vqlogits bench --quick --out runs/bench"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="SmolLM2 shapes, logits and loss only, few repeats (< 2 min on 2 CPU cores; no transformers)",
    )
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
    p.add_argument(
        "--gemma",
        metavar="FOLDER",
        default=None,
        help="the decode part also measures real Gemma-3-270M from FOLDER (vqlogits accelerate --model gemma3): "
        "dense, head cast, q8 / q4, approximate and verified decoding in fp32 and bf16, batch 1, 4 and 16, on the CPU",
    )
    cache_option(p)


SUBCOMMANDS = (
    _train,
    _eval,
    _compress,
    _accelerate,
    _calibrate,
    _generate,
    _sweep,
    _corpus,
    _fetch,
    _analyze,
    _report,
    _equal_compute,
    _demo,
    _bench,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vqlogits", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return parser

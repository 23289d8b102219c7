"""The ``vqlogits`` command. Each subcommand is a thin wrapper over an importable function."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields


def _add_train_options(p: argparse.ArgumentParser) -> None:
    from .lm.train import TrainConfig

    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            p.add_argument(flag, type=lambda s: s.lower() in ("1", "true", "yes", "on"), default=None, metavar="BOOL")
        else:
            kind = {"int": int, "float": float}.get(str(f.type), str)
            p.add_argument(flag, type=kind, default=None)


def _train_config(args):
    from .lm.train import TrainConfig

    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name, None) is not None}
    return TrainConfig(**given)


def _print(result: dict) -> None:
    bulky = ("history", "config", "model_config", "code_sizes", "code_usage")
    print(json.dumps({k: v for k, v in result.items() if k not in bulky}, indent=1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vqlogits", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train an LM with a given head; rerun with the same --out to resume")
    _add_train_options(p)

    p = sub.add_parser("eval", help="perplexity of a trained run, or original vs compressed for a compressed model")
    p.add_argument("run_dir")
    p.add_argument("--corpus", default=None, help="evaluate on another corpus (same tokenizer); compressed models: default pydocs")
    p.add_argument("--max-tokens", type=int, default=None, help="default: the run's final_eval_tokens (16384 for compressed models)")
    p.add_argument("--cache", default=".cache")

    p = sub.add_parser("compress", help="replace the head of an HF causal LM by a k-means VQ head")
    p.add_argument("--model", default="smollm2", help="smollm2, an HF model folder, or a .gguf file")
    p.add_argument("--codebook-size", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--init", default="kmeans", choices=["kmeans", "random", "frequency"])
    p.add_argument("--exact-tokens", type=int, default=0, help="codes spent on exact rows of the most frequent tokens of --corpus")
    p.add_argument("--corpus", default="pydocs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", default=".cache")

    p = sub.add_parser("calibrate", help="recover quality: stage 1 head on cached states, stage 2 last layers")
    p.add_argument("folder")
    p.add_argument("--corpus", default="pydocs")
    p.add_argument("--budget-minutes", type=float, default=10.0)
    p.add_argument("--stages", default="12")
    p.add_argument("--kl-weight", type=float, default=1.0)
    p.add_argument("--train-layers", type=int, default=4, help="0: all weights")
    p.add_argument("--cache", default=".cache")

    p = sub.add_parser("generate", help="decode from a compressed model through the compact head")
    p.add_argument("folder")
    p.add_argument("prompt")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--sample", action="store_true", help="sample instead of greedy")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("sweep", help="a grid over heads, K, maps and seeds, then a report")
    _add_train_options(p)
    p.add_argument("--heads", default="dense,vq")
    p.add_argument("--codebook-sizes", default="256,1024")
    p.add_argument("--mappings", default="random")
    p.add_argument("--seeds", default="0")
    p.add_argument("--bias", default="true", help="comma list of true/false")
    p.add_argument("--reassign", default="0", help="comma list of reassign_every values")
    p.add_argument("--head-budgets", default="", help="comma list of fractions of the dense head (replaces --codebook-sizes)")

    p = sub.add_parser("analyze", help="split a VQ run's loss gap to dense into code and within-code terms")
    p.add_argument("dense_run")
    p.add_argument("vq_run")
    p.add_argument("--max-tokens", type=int, default=65536)

    p = sub.add_parser("report", help="markdown table and PNG plots from run folders")
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", default=None, help="folder for report.md (default: the first run folder)")

    p = sub.add_parser("demo", help="the main job: dense vs VQ-Logits on the embedded data")
    p.add_argument("--cache", default=".cache")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--steps", type=int, default=300)

    p = sub.add_parser("bench", help="dense vs VQ: logits, loss (time, peak memory), decode")
    p.add_argument("--quick", action="store_true", help="SmolLM2 shapes only, few repeats (< 2 min on 2 CPU cores)")
    p.add_argument("--out", default="runs/bench")
    p.add_argument("--device", default=None)
    p.add_argument("--max-tflop", type=float, default=None)
    p.add_argument("--repeats", type=int, default=None)

    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            from .lm.train import train

            _print(train(_train_config(args)))
        elif args.command == "eval":
            from pathlib import Path

            if (Path(args.run_dir) / "vqlogits.json").exists():
                from .hf.pretrained import evaluate_pretrained

                _print(evaluate_pretrained(args.run_dir, args.corpus or "pydocs", args.max_tokens or 16384, args.cache))
            else:
                from .lm.experiments import evaluate

                _print(evaluate(args.run_dir, args.corpus, args.max_tokens))
        elif args.command == "compress":
            from .hf.pretrained import compress

            print(compress(args.model, args.codebook_size, args.out, args.init, args.seed, args.cache, exact_tokens=args.exact_tokens, corpus=args.corpus))
        elif args.command == "calibrate":
            from .hf.calibrate import calibrate

            _print(calibrate(args.folder, args.corpus, args.budget_minutes, args.stages, args.kl_weight, args.train_layers, cache=args.cache))
        elif args.command == "generate":
            from .hf.pretrained import generate_text

            print(generate_text(args.folder, args.prompt, args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.sample, args.seed))
        elif args.command == "sweep":
            from .lm.experiments import sweep

            ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
            report = sweep(
                _train_config(args),
                heads=args.heads.split(","),
                codebook_sizes=ints(args.codebook_sizes),
                mappings=args.mappings.split(","),
                seeds=ints(args.seeds),
                out=args.out or "runs/sweep",
                bias=[b.lower() == "true" for b in args.bias.split(",")],
                reassign=ints(args.reassign),
                budgets=[float(b) for b in args.head_budgets.split(",") if b],
            )
            print(report.read_text())
        elif args.command == "analyze":
            from .lm.analysis import within_code_analysis

            _print(within_code_analysis(args.dense_run, args.vq_run, args.max_tokens))
        elif args.command == "report":
            from pathlib import Path

            if any(next(Path(r).rglob("vqlogits.json"), None) for r in args.runs):
                from .hf.report import pretrained_report

                print(pretrained_report(args.runs[0], args.out).read_text())
            else:
                from .lm.report import write_report

                print(write_report(args.runs, args.out or args.runs[0]).read_text())
        elif args.command == "bench":
            from .bench.suite import QUICK, BenchConfig, markdown, run_bench

            kw = dict(QUICK) if args.quick else {}
            kw.update({k: v for k, v in (("out", args.out), ("device", args.device), ("max_tflop", args.max_tflop), ("repeats", args.repeats)) if v is not None})
            print(markdown(run_bench(BenchConfig(**kw))))
        elif args.command == "demo":
            from .lm.experiments import demo

            demo(args.cache, args.out, args.steps)
    except ValueError as e:
        print(f"vqlogits {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

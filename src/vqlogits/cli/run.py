"""``vqlogits SUBCOMMAND``: each subcommand calls one importable function; a ``ValueError`` becomes a
one-line error and exit status 2."""

from __future__ import annotations

import json
import sys
from dataclasses import fields
from pathlib import Path

from .parser import _bool, build_parser


def _train_config(args):
    from ..lm.config import TrainConfig

    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name, None) is not None}
    return TrainConfig(**given)


def _print(result: dict) -> None:
    bulky = ("history", "config", "model_config", "code_sizes", "code_usage")
    print(json.dumps({k: v for k, v in result.items() if k not in bulky}, indent=1))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            from ..lm.train import train

            _print(train(_train_config(args)))
        elif args.command == "eval":
            if (Path(args.run_dir) / "vqlogits.json").exists():
                from ..bench.eval import evaluate_folder

                _print(evaluate_folder(args.run_dir, args.corpus or "pydocs", args.max_tokens or 16384, args.cache))
            else:
                from ..lm.experiments import evaluate

                _print(evaluate(args.run_dir, args.corpus, args.max_tokens))
        elif args.command == "compress":
            from ..hf.compress import compress

            print(
                compress(
                    args.model,
                    args.codebook_size,
                    args.out,
                    args.init,
                    args.seed,
                    args.cache,
                    exact_tokens=args.exact_tokens,
                    corpus=args.corpus,
                    head=args.head,
                    head_budget=args.head_budget,
                    token_dim=args.token_dim,
                )
            )
        elif args.command == "calibrate":
            from ..hf.calibrate import calibrate

            _print(
                calibrate(
                    args.folder,
                    args.corpus,
                    args.budget_minutes,
                    args.stages,
                    args.kl_weight,
                    args.train_layers,
                    cache=args.cache,
                    reassign_every=args.reassign_every,
                    reassign_frac=args.reassign_frac,
                    max_steps=args.max_steps,
                )
            )
        elif args.command == "generate":
            from ..hf.generate import generate_text

            print(
                generate_text(
                    args.folder,
                    args.prompt,
                    args.max_new_tokens,
                    args.temperature,
                    args.top_k,
                    args.top_p,
                    args.sample,
                    args.seed,
                    verify=False if args.approximate else (True if args.verify else None),
                )
            )
        elif args.command == "accelerate":
            from ..hf.accelerate import accelerate

            print(
                accelerate(
                    args.model,
                    args.clusters,
                    args.out,
                    args.probes,
                    args.spherical,
                    args.corpus,
                    args.hidden_tokens,
                    args.seed,
                    args.cache,
                )
            )
        elif args.command == "sweep":
            from ..lm.experiments import sweep

            ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
            report = sweep(
                _train_config(args),
                heads=args.heads.split(","),
                codebook_sizes=ints(args.codebook_sizes),
                mappings=args.mappings.split(","),
                seeds=ints(args.seeds),
                out=args.out or "runs/sweep",
                bias=[_bool(b) for b in args.bias.split(",")],
                reassign=ints(args.reassign),
                budgets=[float(b) for b in args.head_budgets.split(",") if b],
                wsd_steps=ints(args.wsd_steps),
            )
            print(report.read_text())
        elif args.command == "corpus":
            from ..lm.data import corpus_stats

            print(json.dumps(corpus_stats(args.name, args.tokenizer, args.cache), indent=1))
        elif args.command == "fetch":
            from ..lm.data import fetch

            print(json.dumps(fetch(args.names, args.cache), indent=1))
        elif args.command == "analyze":
            from ..lm.analysis import within_code_analysis

            _print(within_code_analysis(args.dense_run, args.vq_run, args.max_tokens))
        elif args.command == "report":
            if any(next(Path(r).rglob("vqlogits.json"), None) for r in args.runs):
                from ..hf.report import pretrained_report

                print(pretrained_report(args.runs[0], args.out).read_text())
            else:
                from ..lm.report import write_report

                print(write_report(args.runs, args.out or args.runs[0]).read_text())
        elif args.command == "bench":
            from ..bench.suite import QUICK, BenchConfig, markdown, run_bench

            kw = dict(QUICK) if args.quick else {}
            kw.update(
                {
                    k: v
                    for k, v in (
                        ("out", args.out),
                        ("device", args.device),
                        ("max_tflop", args.max_tflop),
                        ("repeats", args.repeats),
                    )
                    if v is not None
                }
            )
            print(markdown(run_bench(BenchConfig(**kw))))
        elif args.command == "demo":
            from ..demo import demo

            demo(args.cache, args.out, args.steps)
    except ValueError as e:
        print(f"vqlogits {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0

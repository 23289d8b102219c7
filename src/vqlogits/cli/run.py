"""``vqlogits SUBCOMMAND``: each subcommand calls one importable function. Options are checked
before anything is loaded; an option the command would ignore is named in a warning; a
``ValueError`` becomes a one-line error and exit status 2, never a traceback."""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

from ..files import USER_CACHE
from .options import boolean, config_from, given_options
from .parser import build_parser
from .summaries import calibration_summary, eval_summary, folder_summary


def _train_config(args):
    from ..lm.config import TrainConfig

    return config_from(args, TrainConfig)


def _print(result: dict) -> None:
    bulky = ("history", "config", "model_config", "code_sizes", "code_usage")
    print(json.dumps({k: v for k, v in result.items() if k not in bulky}, indent=1))


def _summary(args, result: dict, human) -> None:
    """``human(result)``, or with ``--json`` the result itself."""
    if args.json:
        _print(result)
    else:
        print(human(result))


def _ignored(args, names: dict, why: str) -> None:
    for flag, given in names.items():
        if given:
            warnings.warn(f"{flag} is ignored: {why}", stacklevel=2)


def _model_folder(path: str) -> bool:
    return (Path(path) / "vqlogits.json").exists()


def _train(args):
    from ..lm.train import train

    _print(train(_train_config(args), overwrite=args.overwrite))


def _eval(args):
    if (args.model is None) == (args.run_dir is None):
        raise ValueError("eval takes a run or model folder, or --model SPEC for the original model alone (one of them)")
    if args.model is not None:
        from ..hf.evaluate import evaluate_original

        result = evaluate_original(args.model, args.corpus or "pydocs", args.max_tokens or 16384, args.cache)
        return _summary(args, result, eval_summary)
    if args.run_dir.endswith(".gguf"):
        from ..hf.folder import check_not_gguf

        check_not_gguf(args.run_dir)
    if _model_folder(args.run_dir):
        from ..hf.speed import evaluate_folder

        result = evaluate_folder(args.run_dir, args.corpus or "pydocs", args.max_tokens or 16384, args.cache)
    else:
        from ..lm.experiments import evaluate

        result = evaluate(args.run_dir, args.corpus, args.max_tokens)
    _summary(args, result, eval_summary)


def _compress(args):
    from ..hf.compress import compress
    from ..hf.config import CompressConfig
    from ..hf.folder import describe

    # the options as given, so that one given at its default value is still named if the head ignores it
    _summary(args, describe(compress(**given_options(args, CompressConfig))), folder_summary)


def _accelerate(args):
    from ..hf.accelerate import accelerate
    from ..hf.config import AccelerateConfig
    from ..hf.folder import describe

    _summary(args, describe(accelerate(config_from(args, AccelerateConfig))), folder_summary)


def _calibrate(args):
    from ..hf.calibrate import calibrate
    from ..hf.config import CalibrateConfig

    cfg = config_from(args, CalibrateConfig)
    _summary(args, calibrate(cfg), lambda summary: calibration_summary(cfg.folder, summary))


def _generate(args):
    if not args.prompt.strip():
        raise ValueError("prompt is empty: give the text to continue")
    sampling = {
        k: v
        for k, v in (("temperature", args.temperature), ("top_k", args.top_k), ("top_p", args.top_p))
        if v is not None
    }
    if not args.sample:
        _ignored(args, {f"--{k.replace('_', '-')}": True for k in sampling}, "it only changes sampling (add --sample)")
        sampling = {}
    if _model_folder(args.folder):
        from ..heads import KINDS
        from ..hf.folder import read_meta
        from ..hf.text import generate_text

        if not KINDS[read_meta(args.folder).get("head", "vq")].index:
            _ignored(args, {"--verify": args.verify, "--approximate": args.approximate}, "the model is not accelerated")
        verify = False if args.approximate else (True if args.verify else None)
        stats, t0 = {}, time.perf_counter()
        text = generate_text(
            args.folder,
            args.prompt,
            args.max_new_tokens,
            do_sample=args.sample,
            seed=args.seed,
            verify=verify,
            stats=stats,
            dtype=args.dtype,
            **sampling,
        )
        print(text)
        if not args.quiet:
            print(_decode_summary(stats, time.perf_counter() - t0), file=sys.stderr)
    elif (Path(args.folder) / "model.pt").exists() or (Path(args.folder) / "ckpt.pt").exists():
        from ..lm.generate import generate_from_run

        _ignored(args, {"--verify": args.verify, "--approximate": args.approximate}, "a trained run is not accelerated")
        _ignored(args, {"--dtype": args.dtype != "float32"}, "a trained run decodes in float32")
        print(
            generate_from_run(
                args.folder, args.prompt, args.max_new_tokens, args.sample, args.seed, args.cache, **sampling
            )
        )
    else:
        from ..hf.folder import check_not_gguf

        check_not_gguf(args.folder)
        raise ValueError(f"{args.folder} is neither a model folder (vqlogits.json) nor a training run (model.pt)")


def _decode_summary(stats: dict, seconds: float) -> str:
    """One line: tokens/s end to end (loading the folder included), and for verified decoding the
    drafts kept and the tokens emitted per backbone step."""
    line = f"{stats.get('emitted', 0)} tokens in {seconds:.1f} s ({stats.get('emitted', 0) / seconds:.1f} tokens/s"
    line += ", loading included)"
    if stats.get("blocks"):
        kept = stats["accepted"] / max(1, stats["drafted"])
        line += f"; verified: {100 * kept:.0f}% of drafts kept, {stats['block_tokens'] / stats['backbone_steps']:.2f}"
        line += " tokens per backbone step"
        if stats.get("fallback_at") is not None:
            line += f", dense from token {stats['fallback_at']}"
    return line


def _sweep(args):
    from ..lm.experiments import sweep

    def ints(s):
        return [int(x) for x in s.split(",") if x]

    from ..studies.report import write_report

    out = sweep(
        _train_config(args),
        heads=args.heads.split(","),
        codebook_sizes=ints(args.codebook_sizes),
        mappings=args.mappings.split(","),
        seeds=ints(args.seeds),
        out=args.out or "runs/sweep",
        bias=[boolean(b) for b in args.bias.split(",")],
        reassign=ints(args.reassign),
        budgets=[float(b) for b in args.head_budgets.split(",") if b],
        wsd_steps=ints(args.wsd_steps),
    )
    print(write_report([out], out).read_text())


def _corpus(args):
    from ..data.corpora import corpus_stats

    print(json.dumps(corpus_stats(args.name, args.tokenizer, args.cache), indent=1))


def _fetch(args):
    from ..data.fetch import fetch

    print(json.dumps(fetch(args.names, args.cache), indent=1))


def _analyze(args):
    from ..studies.analysis import summary_text, within_code_analysis

    result = within_code_analysis(args.dense_run, args.vq_run, args.max_tokens, cache=args.cache)
    if args.json:
        _print(result)
    else:
        print(summary_text(result))


def _report(args):
    if any(next(Path(r).rglob("vqlogits.json"), None) for r in args.runs):
        from ..studies.pretrained_report import pretrained_report

        print(pretrained_report(args.runs[0], args.out, args.previous).read_text())
    else:
        if args.previous is not None:
            raise ValueError(f"--previous: only a pretrained report keeps earlier rows, got {args.previous}")
        from ..studies.report import write_report

        print(write_report(args.runs, args.out or args.runs[0]).read_text())


def _bench(args):
    if args.quantized is not None:
        return _bench_quantized(args)
    from ..bench.suite import QUICK, BenchConfig, markdown, run_bench

    kw = dict(QUICK) if args.quick else {}
    given = {"out": args.out, "device": args.device, "max_tflop": args.max_tflop, "repeats": args.repeats}
    given.update(gemma_folder=args.gemma, cache=str(args.cache) if args.gemma else None)
    kw.update({k: v for k, v in given.items() if v is not None})
    if args.quick and args.gemma:
        raise ValueError(
            f"--gemma is part of the decode measurements, which --quick leaves out; got --gemma {args.gemma}"
        )
    sections = {}
    if not args.quick:  # decoding runs causal LMs through transformers: --quick stays without it
        from ..bench.decode import SECTIONS as sections
    print(markdown(run_bench(BenchConfig(**kw), sections)))


def _bench_quantized(args):
    from ..bench.quantized import bench_quantized, write_report

    for option, value in (("--quick", args.quick), ("--device", args.device), ("--max-tflop", args.max_tflop)):
        if value:
            raise ValueError(f"--quantized measures CPU kernels on one model and does not take {option}, got {value!r}")
    repeats = {} if args.repeats is None else {"repeats": args.repeats}
    rows = bench_quantized(args.quantized, corpus=args.corpus, cache=args.cache, **repeats)
    print(write_report(rows, args.out).read_text())


def _equal_compute(args):
    from ..studies.equal_compute import report

    print(report(args.runs, args.out, speed=not args.no_speed).read_text())


def _demo(args):
    from ..demo import demo

    demo(args.cache, args.out, args.steps)


CONFIGURED = ("train", "sweep", "compress", "accelerate", "calibrate")  # options read off a config dataclass
COMMANDS = {
    "train": _train,
    "eval": _eval,
    "compress": _compress,
    "accelerate": _accelerate,
    "calibrate": _calibrate,
    "generate": _generate,
    "sweep": _sweep,
    "corpus": _corpus,
    "fetch": _fetch,
    "analyze": _analyze,
    "report": _report,
    "bench": _bench,
    "equal-compute": _equal_compute,
    "demo": _demo,
}


def _warning(message, category, filename, lineno, file=None, line=None):
    print(f"vqlogits: warning: {message}", file=sys.stderr)


RESUMABLE = ("train", "sweep", "compress", "accelerate", "calibrate", "fetch", "corpus", "demo")


def _check_cache(args) -> None:
    cache = getattr(args, "cache", None)
    if cache and Path(cache).exists() and not Path(cache).is_dir():
        raise ValueError(f"--cache {cache} is a file; it must be a folder (or a path that does not exist yet)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command not in CONFIGURED and getattr(args, "cache", "") is None:
        args.cache = USER_CACHE  # the configs keep their own default
    shown = warnings.showwarning
    warnings.showwarning = _warning  # one line per warning, no source line
    try:
        _check_cache(args)
        COMMANDS[args.command](args)
    except ValueError as e:
        print(f"vqlogits {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        resumes = " rerun the same command to resume" if args.command in RESUMABLE else ""
        print(f"vqlogits {args.command}: interrupted;{resumes or ' nothing was finished'}", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = shown
    return 0

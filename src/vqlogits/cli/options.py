"""Option types and the option groups several subcommands share; the training options are read off
``TrainConfig``."""

from __future__ import annotations

import argparse
from dataclasses import MISSING, fields

GROUPS = {
    "data": "data",
    "model": "model",
    "head": "head (sizes; --head-budget replaces them)",
    "map": "token -> code map",
    "optimisation": "optimisation",
    "checkpointing": "evaluation and checkpointing",
}


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples' line breaks."""


def subparser(sub, name: str, help: str, example: str) -> argparse.ArgumentParser:
    return sub.add_parser(
        name,
        help=help,
        description=help[0].upper() + help[1:] + ".",
        epilog="example:\n  " + example,
        formatter_class=_Formatter,
    )


def probability(s: str) -> float:
    value = float(s)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {s}")
    return value


def positive(kind):
    def check(s: str):
        value = kind(s)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {s}")
        return value

    check.__name__ = kind.__name__
    return check


def _dtype(s: str):
    import torch

    if s not in ("float32", "float16", "bfloat16"):
        raise argparse.ArgumentTypeError(f"must be float32, float16 or bfloat16, got {s}")
    return getattr(torch, s)


def folder_options(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--overwrite", action="store_true", help=f"replace what --out holds (default: refuse anything but {what})"
    )


def dtype_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dtype",
        type=_dtype,
        default=None,
        help="float32, float16 or bfloat16 for the weights written (default: the smallest that holds the source's "
        "weights exactly)",
    )


def cache_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cache",
        default=None,
        help="folder for embedded data and token caches (default: $VQLOGITS_CACHE, else ~/.cache/vqlogits)",
    )


def boolean(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {s!r}")


def add_train_options(p: argparse.ArgumentParser) -> None:
    """One option per ``TrainConfig`` field, grouped, with its help, default and allowed values.
    Defaults stay None in the namespace, so only the options given override the config."""
    from ..lm.config import TrainConfig

    groups = {key: p.add_argument_group(title) for key, title in GROUPS.items()}
    for f in fields(TrainConfig):
        meta = f.metadata
        default = f.default if f.default is not MISSING else None
        shown = (
            f"{default!r}"
            if isinstance(default, str)
            else str(default).lower()
            if isinstance(default, bool)
            else default
        )
        help_text = f"{meta['help']} (default: {shown})"
        flag = "--" + f.name.replace("_", "-")
        group = groups[meta["group"]]
        if f.type in ("bool", bool):
            group.add_argument(flag, type=boolean, default=None, metavar="BOOL", help=help_text)
        else:
            kind = {"int": int, "float": float}.get(str(f.type), str)
            group.add_argument(flag, type=kind, default=None, choices=meta.get("choices"), help=help_text)

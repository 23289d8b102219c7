"""Option types, the option groups several subcommands share, and the options read off a config
dataclass's fields (``vqlogits.config.option``): help, default and allowed values written once."""

from __future__ import annotations

import argparse
from dataclasses import fields

from ..config import default_of

TRAIN_GROUPS = {
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


def _shown(default) -> str:
    if isinstance(default, str):
        return repr(default)
    return str(default).lower() if isinstance(default, bool) else str(default)


def add_config_options(p: argparse.ArgumentParser, config_cls, groups: dict | None = None) -> None:
    """One option per field of ``config_cls``, with its help, default and allowed values (grouped by
    ``groups``, the fields' group keys to titles). Defaults stay None in the namespace, so only the
    options given override the config (``config_from``)."""
    titled = {key: p.add_argument_group(title) for key, title in (groups or {}).items()}
    for f in fields(config_cls):
        meta, default = f.metadata, default_of(f)
        target = titled.get(meta.get("group"), p)
        if meta.get("positional"):
            target.add_argument(f.name, help=meta["help"])
            continue
        flag = "--" + f.name.replace("_", "-")
        if meta.get("flag"):
            target.add_argument(flag, action="store_true", default=None, help=meta["help"])
            continue
        text = meta["help"] + ("" if meta.get("required") else f" (default: {_shown(default)})")
        kind = {"int": int, "float": float, "bool": boolean}.get(str(f.type), str)
        extra = {"metavar": "BOOL"} if kind is boolean else {"choices": meta.get("choices")}
        target.add_argument(flag, type=kind, default=None, required=meta.get("required", False), help=text, **extra)


def given_options(args: argparse.Namespace, config_cls) -> dict:
    """The fields of ``config_cls`` the command line gave, with their values."""
    return {f.name: getattr(args, f.name) for f in fields(config_cls) if getattr(args, f.name, None) is not None}


def config_from(args: argparse.Namespace, config_cls):
    """``config_cls`` with the fields the command line gave."""
    return config_cls(**given_options(args, config_cls))

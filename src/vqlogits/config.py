"""Config dataclasses' fields: each option's default, help and allowed values, written once. The
CLI's options are read off these fields (``cli/options.add_config_options``), and every command
saves its config beside what it writes."""

from __future__ import annotations

from dataclasses import MISSING, field, fields


def option(
    default,
    help: str,
    group: str = "",
    choices=None,
    *,
    positional: bool = False,
    flag: bool = False,
    required: bool = False,
):
    """A config field. ``group``: its CLI option group; ``positional``: a positional CLI argument;
    ``flag``: a bool given as ``--name`` alone (default False); ``required``: the CLI demands it."""
    meta = {
        "help": help,
        "group": group,
        "choices": choices,
        "positional": positional,
        "flag": flag,
        "required": required,
    }
    return field(default=default, metadata=meta)


def check_choices(cfg) -> None:
    """Every field with allowed values holds one of them."""
    for f in fields(cfg):
        allowed = f.metadata.get("choices")
        if allowed and getattr(cfg, f.name) not in allowed:
            raise ValueError(f"{f.name} must be one of {tuple(allowed)}, got {getattr(cfg, f.name)!r}")


def check_ints(cfg, names: tuple[str, ...], least: int) -> None:
    """Each named field is an int >= ``least``."""
    for name in names:
        value = getattr(cfg, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ValueError(f"{name} must be an int >= {least}, got {value!r}")


def default_of(f):
    return None if f.default is MISSING else f.default

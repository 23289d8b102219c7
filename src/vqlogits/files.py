"""Safe files, for every layer: atomic writes, output folders, run locks, and checkpoints that are
read without running code and kept two deep.

Every ``.pt`` file vqlogits writes (training checkpoints, ``model.pt``, calibration checkpoints and
cached hidden states) holds only plain data: dicts, lists, tuples, numbers, strings, None and
tensors. It is read with ``torch.load(..., weights_only=True)``, whose unpickler builds nothing
else, so a crafted file fails with an error instead of running code. No file is read with the
full unpickler.

A resumable checkpoint keeps its previous version beside it (``<name>.prev``). If the newest is
damaged (a truncated copy, a full disk), resuming says so, moves it aside, and continues from the
previous one; batches are a pure function of the step, so the result is still exactly that of an
uninterrupted run.
"""

from __future__ import annotations

import fcntl
import fnmatch
import json
import os
import pickle
import shutil
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch


class _UserCache(os.PathLike):
    """The default folder for embedded data and token caches, resolved each time it is used:
    ``$VQLOGITS_CACHE``, else ``$XDG_CACHE_HOME/vqlogits``, else ``~/.cache/vqlogits``. One per user,
    whatever the working folder."""

    def __fspath__(self) -> str:
        if os.environ.get("VQLOGITS_CACHE"):
            return os.environ["VQLOGITS_CACHE"]
        return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "vqlogits")

    __str__ = __fspath__

    def __repr__(self) -> str:
        return f"USER_CACHE ({self.__fspath__()})"


USER_CACHE = _UserCache()


class UnsafeFileError(ValueError):
    """A file that would need arbitrary code to load."""


class RunLocked(ValueError):
    """Another process is training in this folder."""


@contextmanager
def run_lock(folder: str | Path):
    """Hold ``<folder>/lock`` (an OS file lock, released if the process dies) while training, so two
    processes never write the same checkpoints."""
    handle = open(Path(folder) / "lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        raise RunLocked(f"{folder} is being trained by another process (pid {holder})") from None
    finished = False
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
        finished = True
    finally:
        if finished:  # a finished run leaves no lock behind (removed while still held: no one else writes it)
            Path(folder, "lock").unlink(missing_ok=True)
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def writable_folder(path: str | Path) -> Path:
    """``path`` created if needed; a ``ValueError`` naming it if it cannot be written."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):  # a name of its own: every DDP rank probes the same folder
            pass
    except OSError as e:
        raise ValueError(f"out={str(path)!r}: cannot write there ({e.strerror or e})") from None
    return path


# What each kind of output folder holds; a folder with anything else is someone else's.
FOLDER_KINDS = {
    "run": ("a training run", ("ckpt.pt*", "stable.pt*", "model.pt*", "results.json*", "tokenizer.json*", "lock")),
    "model": (
        "a vqlogits model",
        (
            "config.json*",
            "model.safetensors*",
            "dense_head.safetensors*",
            "vqlogits.json*",
            "tokenizer*",
            "special_tokens_map.json*",
            "generation_config.json*",
            "calib_*",
            "eval_*.json*",  # scripts/pretrained_heads.sh keeps each model's evaluations and generation beside it
            "generation.txt*",
            "lock",
        ),
    ),
}
_SCRATCH = ("lock", "*.tmp")  # what a command that stopped before writing anything leaves


def _foreign(path: Path, kind: str) -> list[str]:
    patterns = FOLDER_KINDS[kind][1]
    return sorted(p.name for p in path.iterdir() if not any(fnmatch.fnmatch(p.name, pat) for pat in patterns))


def check_folder(path: str | Path, kind: str) -> Path:
    """``path``, an existing folder holding only ``kind``'s files; else a ``ValueError`` that says why."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"{str(path)!r} is not a folder")
    if foreign := _foreign(path, kind):
        raise ValueError(f"{str(path)!r} holds files that are not {FOLDER_KINDS[kind][0]}'s: {', '.join(foreign[:5])}")
    return path


@contextmanager
def output_folder(path: str | Path, kind: str, overwrite: bool = False, finished: str | None = None):
    """The folder a command writes ``kind`` ("run" or "model") into, for the command's duration.

    A new or empty folder, or one holding only that kind's files (its unfinished work, resumed), is
    used as it is. Anything else is refused with a ``ValueError`` that says what is there, and so is
    a folder holding the file ``finished`` (a complete result the command would replace), unless
    ``overwrite``: then the folder is emptied first. If the command fails before it has written
    anything but a lock, a folder it created is removed again."""
    path = Path(path)
    created = not path.exists()
    if path.exists() and not path.is_dir():
        raise ValueError(f"out={str(path)!r} is a file, not a folder")
    if not created and any(path.iterdir()) and not overwrite:
        what = FOLDER_KINDS[kind][0]
        foreign = _foreign(path, kind)
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise ValueError(
                f"out={str(path)!r} holds files that are not {what}'s ({shown}); choose another folder,"
                " or pass --overwrite to replace its contents"
            )
        if finished and (path / finished).exists():
            raise ValueError(
                f"out={str(path)!r} already holds a finished {what.removeprefix('a ')} ({finished});"
                " choose another folder,"
                " or pass --overwrite to replace it"
            )
    if overwrite and not created:
        shutil.rmtree(path)
    writable_folder(path)
    try:
        yield path
    except BaseException:
        if created and path.exists() and all(any(fnmatch.fnmatch(p.name, s) for s in _SCRATCH) for p in path.iterdir()):
            shutil.rmtree(path, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() gives a new file; some writers (safetensors) make theirs 0600


def scratch(path: Path) -> Path:
    """``path``'s temporary name in this process: two processes filling one cache entry at once
    never write the same temporary file."""
    return path.with_name(f"{path.name}.{os.getpid()}.tmp")


@contextmanager
def cache_lock(path: str | Path):
    """Hold ``<path>.lock`` (an OS file lock, waiting for it) while filling a cache entry too large
    to build twice: a second process waits, then finds the entry made."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_atomic(path: str | Path, write) -> None:
    """``write(tmp)`` then rename over ``path``: a crash leaves the old file or the new one, never half.
    The file gets the ordinary mode of a new file (0666 less the umask)."""
    path = Path(path)
    tmp = scratch(path)
    write(tmp)
    os.chmod(tmp, _FILE_MODE)
    os.replace(tmp, path)


def write_json(path: str | Path, obj) -> None:
    """``json.dumps(obj, indent=1)`` to ``path`` through ``write_atomic``."""
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=1)))


def save_atomic(obj, path: str | Path) -> None:
    """``torch.save`` through a temporary file (``write_atomic``)."""
    write_atomic(path, lambda tmp: torch.save(obj, tmp))


def load_plain(path: str | Path) -> dict:
    """A file written by vqlogits, loaded without running code. A file holding anything but plain
    data raises ``UnsafeFileError``; a damaged one raises ``ValueError``; both name the file."""
    path = Path(path)
    try:
        with warnings.catch_warnings():  # random bytes read as a pickle warn of an odd protocol first
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        globals_ = [line.strip() for line in str(e).splitlines() if "global" in line.lower()]
        if not globals_:  # no object in it, just bytes the unpickler cannot read: random or cut
            raise ValueError(f"{path} is damaged or is not a file vqlogits wrote; it cannot be read") from None
        blocked = globals_[0]
        raise UnsafeFileError(
            f"{path} holds objects other than plain data and tensors; vqlogits does not load it, because unpickling "
            f"them could run code (files written by vqlogits never need that). {blocked}"
        ) from None
    except Exception as e:  # the unpickler fails on damaged bytes in many ways: EOF, IndexError, KeyError...
        raise ValueError(
            f"{path} is damaged or truncated and cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
        ) from None


def previous(path: Path) -> Path:
    return path.with_name(path.name + ".prev")


def save_checkpoint(obj, path: str | Path) -> None:
    """Write ``path`` atomically and keep the version it replaces as ``<path>.prev``."""
    path = Path(path)
    tmp = scratch(path)
    torch.save(obj, tmp)
    if path.exists():
        os.replace(path, previous(path))
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict | None:
    """The newest readable of ``path`` and ``<path>.prev``; None if neither exists.

    A damaged newest file is moved aside to ``<path>.damaged-<time>`` (never overwritten) with a
    warning, and the previous one is used. If none can be read: ``ValueError`` naming the files and
    how to start over. An unsafe file is refused outright (``UnsafeFileError``)."""
    path = Path(path)
    candidates = [p for p in (path, previous(path)) if p.exists()]
    if not candidates:
        return None
    errors = []
    for p in candidates:
        try:
            state = load_plain(p)
        except UnsafeFileError:
            raise
        except ValueError as e:
            errors.append(str(e))
            continue
        if p != path:
            reason = f"{path} is missing (a crash while saving)"
            if path.exists():
                aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
                os.replace(path, aside)
                reason = f"{errors[0]}; moved aside to {aside}"
            warnings.warn(f"resuming from the previous checkpoint {p}: {reason}", stacklevel=2)
        return state
    raise ValueError(
        "no readable checkpoint: "
        + "; ".join(errors)
        + f". To start over, delete {path}* (or use a new output folder)."
    )

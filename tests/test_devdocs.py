"""The devdocs corpus on small files the tests write in each format: HTML with navigation, POD, man
pages, reST, duplicates, near-empty pages; the per-package cap; resumable extraction; statistics."""

import gzip
import json
import shutil

import pytest

from vqlogits.cli import main
from vqlogits.data import devdocs, embedded
from vqlogits.data.corpora import corpus_stats, load_documents
from vqlogits.data.devdocs import PACKAGES, clean, extract_text, html_text

PROSE = " ".join(f"word{i} of the manual explains option {i % 7}." for i in range(40))

PAGE = f"""<!DOCTYPE html><html><head><title>T</title><style>body {{color: red}}</style>
<script>var searchIndex = 1;</script></head><body>
<nav class="sidebar"><a href="a.html">Sidebar link</a></nav>
<div class="navheader"><a href="prev.html">Prev</a> <a href="next.html">Next</a></div>
<div role="search"><form><input name="q"/></form>Quick search</div>
<div class="body"><h1>Title<a class="headerlink" href="#t">¶</a></h1><p>First   paragraph
with <code>inline</code> code.</p><p>{PROSE}</p>
<pre>def f(x):
    return x  # indented</pre><ul><li>item one</li><li>item two</li></ul></div>
<footer>Copyright footer</footer></body></html>"""

POD = """=head1 NAME

perlthing - a thing in Perl

=head1 DESCRIPTION

This is B<bold> and C<code> in a paragraph.

    my $verbatim = 1;

=cut
"""

ROFF = """.TH THING 3perl "2023-01-01" "perl v5.36.0" "Perl Programmers Reference Guide"
.SH NAME
Thing \\- does things
.SH DESCRIPTION
A module that does \\fBthings\\fR with care.
"""


def test_html_drops_navigation_and_keeps_structure():
    text = html_text(PAGE.encode())
    for gone in ("Sidebar link", "Prev", "Next", "Quick search", "searchIndex", "color: red", "Copyright footer", "¶"):
        assert gone not in text
    assert "Title\n" in text and "First paragraph with inline code." in text
    assert "def f(x):\n    return x  # indented" in text  # <pre> verbatim
    assert "item one\n" in text and "\nitem two" in text
    assert html_text(b"   ") == ""


def test_pod_and_man_pages_through_their_formatters(tmp_path):
    if not (shutil.which("pod2text") and shutil.which("groff")):
        pytest.skip("pod2text / groff not installed")
    (tmp_path / "perlthing.pod").write_text(POD)
    text = extract_text(tmp_path / "perlthing.pod")
    assert "perlthing - a thing in Perl" in text and "=head1" not in text and "my $verbatim = 1;" in text
    with gzip.open(tmp_path / "Thing.3perl.gz", "wt") as f:
        f.write(ROFF)
    text = extract_text(tmp_path / "Thing.3perl.gz")
    assert "A module that does things with care." in text and ".SH" not in text
    assert "Perl Programmers Reference Guide" not in text  # the page header line is dropped


def test_clean_drops_near_empty_and_duplicates_and_caps_shares():
    def doc(pkg, i, words=60):
        return {"id": f"{pkg}/f{i}", "package": pkg, "text": " ".join(f"{pkg}{i}w{j}" for j in range(words))}

    docs = (
        [doc("big", i) for i in range(40)] + [doc("small", i) for i in range(10)] + [doc("other", i) for i in range(10)]
    )
    docs += [{"id": "small/copy", "package": "small", "text": docs[40]["text"]}, doc("other", 99, words=5)]
    kept, dropped = clean(docs, min_words=50, max_share=0.4)
    assert dropped["near_empty"] == 1 and dropped["duplicate"] == 1
    share = sum(d["package"] == "big" for d in kept) / len(kept)
    assert share <= 0.4 and dropped["over_share"] == 40 - sum(d["package"] == "big" for d in kept) > 0
    assert sum(d["package"] == "small" for d in kept) == 10  # under the cap: untouched
    assert clean(list(reversed(docs)), min_words=50, max_share=0.4)[0] == kept  # order-independent
    with pytest.raises(ValueError, match="max_share=0.3 cannot hold for 3 package"):
        clean(docs, max_share=0.3)


@pytest.fixture
def fake_packages(tmp_path, monkeypatch):
    """Two 'unpacked packages' laid out as PACKAGES expects, and fetch_debian pointed at them."""
    root = tmp_path / "unpacked"
    py = root / "python3.11-doc" / "usr/share/doc/python3.11/html/_sources/library"
    py.mkdir(parents=True)
    for i in range(12):
        (py / f"mod{i}.rst.txt").write_text(f"Module {i}\n========\n\n{PROSE} {i}\n")
    (py / "dup.rst.txt").write_text(f"Module 0\n========\n\n{PROSE} 0\n")
    (py.parent / "index.html").write_text(PAGE)  # not selected: Python's HTML is rendered from the sources
    pg = root / "postgresql-doc-15" / "usr/share/doc/postgresql-doc-15/html"
    pg.mkdir(parents=True)
    for i in range(12):
        (pg / f"sql-{i}.html").write_text(PAGE.replace("First", f"Statement {i}, first"))
    (pg / "empty.html").write_text("<html><body><nav>Prev Next</nav><p>Tiny.</p></body></html>")
    monkeypatch.setattr(embedded, "fetch_debian", lambda package, dest, debs: root / package)
    monkeypatch.setattr(devdocs, "PACKAGES", {p: PACKAGES[p] for p in ("python3.11-doc", "postgresql-doc-15")})
    monkeypatch.setattr(devdocs, "SHARD_FILES", 5)
    monkeypatch.setattr(devdocs, "MAX_SHARE", 0.6)  # two packages cannot both stay under 40%
    return root


def test_build_is_cached_and_resumes_after_a_kill(fake_packages, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    real = devdocs.extract_text
    calls = []

    def dying(path):
        calls.append(path)
        if len(calls) == 17:
            raise KeyboardInterrupt
        return real(path)

    monkeypatch.setattr(devdocs, "extract_text", dying)
    with pytest.raises(KeyboardInterrupt):
        devdocs.build_devdocs(cache, progress=False)
    done_before = len(list((cache / "devdocs" / "text").glob("*.jsonl")))
    assert done_before == 3  # finished shards of 5 files were kept
    calls.clear()
    monkeypatch.setattr(devdocs, "extract_text", real)
    monkeypatch.setattr(devdocs, "extract_text", lambda p: calls.append(p) or real(p))
    path = devdocs.build_devdocs(cache, progress=False)
    assert len(calls) == 13  # 26 files in shards of 5; the first package's 3 shards were kept
    docs = [json.loads(line) for line in path.read_text().splitlines()]
    ids = {d["id"] for d in docs}
    assert len(docs) == 24 and not any(i.endswith(("empty.html", "index.html")) for i in ids)
    assert sum(i.endswith(("/dup.rst.txt", "/mod0.rst.txt")) for i in ids) == 1
    assert all("Prev" not in d["text"] for d in docs)
    assert json.loads(path.with_suffix(".stats.json").read_text())["dropped"]["duplicate"] == 1
    calls.clear()
    assert devdocs.build_devdocs(cache, progress=False) == path and not calls  # cached


def test_corpus_command_prints_splits_and_sources(fake_packages, tmp_path, capsys):
    cache = tmp_path / "cache"
    splits = load_documents("devdocs", cache)
    assert sum(len(v) for v in splits.values()) == 24 and all(splits.values())
    assert main(["corpus", "devdocs", "--tokenizer", "bpe:300", "--cache", str(cache)]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert set(stats["splits"]) == {"train", "val", "test"}
    assert sum(s["docs"] for s in stats["splits"].values()) == 24
    assert all(s["tokens"] > s["docs"] and s["bytes"] > 0 for s in stats["splits"].values())
    assert {k: v["docs"] for k, v in stats["sources"].items()} == {"python3.11-doc": 12, "postgresql-doc-15": 12}
    assert sum(v["tokens"] for v in stats["sources"].values()) == sum(s["tokens"] for s in stats["splits"].values())
    assert stats == corpus_stats("devdocs", "bpe:300", cache)  # cached: the same numbers

"""The docs a user reads: the README opens with the two commands and stays short, every relative
link (file and heading) resolves, and no prose line is over 120 characters."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", _outside_code(page.read_text()), re.M)}


def _outside_code(text: str) -> str:
    return re.sub(r"^(```|~~~).*?^\1", "", text, flags=re.M | re.S)


def broken_links(page: Path) -> list[str]:
    out = []
    for target in LINK.findall(_outside_code(page.read_text())):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            out.append(f"{page.name}: {target}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            out.append(f"{page.name}: {target} (no such heading)")
    return out


def long_prose(text: str, limit: int = 120) -> list[str]:
    """Lines over ``limit`` characters outside code blocks and tables."""
    return [line[:60] for line in _outside_code(text).splitlines() if len(line) > limit and not line.startswith("|")]


def test_the_readme_opens_with_the_two_commands_and_stays_short():
    text = (ROOT / "README.md").read_text()
    first = re.search(r"```bash\n(.*?)```", text, re.S).group(1).splitlines()
    assert [line.split("#")[0].strip() for line in first] == ["make demo", "make test"]
    assert text.index("```bash") < text.index("\n## ")  # before any section
    assert "## What should I use" in text.split("```python")[0]  # on the first screen, before any code
    assert len(text.splitlines()) <= 160


def test_every_relative_link_resolves():
    assert sum(len(LINK.findall(p.read_text())) for p in PAGES) > 20
    assert [b for p in PAGES for b in broken_links(p)] == []


def test_no_prose_line_is_over_120_characters():
    assert {p.name: long_prose(p.read_text()) for p in PAGES if long_prose(p.read_text())} == {}


def test_the_checks_can_fail(tmp_path):
    page = tmp_path / "a.md"
    page.write_text("# Top: a heading?\n\n[ok](a.md#top-a-heading) [gone](b.md) [bad](a.md#nope)\n")
    assert broken_links(page) == ["a.md: b.md", "a.md: a.md#nope (no such heading)"]
    assert long_prose("x" * 121 + "\n| " + "y" * 200 + "\n```\n" + "z" * 200 + "\n```\n") == ["x" * 60]
    assert slug("At equal compute: does a cheap head buy a better small LM?") == (
        "at-equal-compute-does-a-cheap-head-buy-a-better-small-lm"
    )

"""The README is a short manual whose commands are the real ones, and every relative link in it and in docs/ resolves.

Offline and fast: reads Markdown files, `.ci/run` and one `skipenv train --help`.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]

FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$", re.M)


def github_anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation other than '-' and '_' dropped, spaces -> '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file (repeated headings get GitHub's -1, -2, ... suffixes)."""
    seen: dict[str, int] = {}
    out = set()
    for _, text in HEADING.findall(FENCE.sub("", path.read_text(encoding="utf-8"))):
        a = github_anchor(text)
        n = seen.get(a, 0)
        seen[a] = n + 1
        out.add(a if n == 0 else f"{a}-{n}")
    return out


def relative_links(path: Path) -> list[str]:
    """Link targets outside code blocks and code spans, except URLs with a scheme (https:, mailto:, ...)."""
    text = INLINE_CODE.sub("", FENCE.sub("", path.read_text(encoding="utf-8")))
    return [t for t in LINK.findall(text) if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]


def broken_links(path: Path) -> list[str]:
    """The relative links of `path` whose file does not exist or whose #anchor is no heading of that file."""
    bad = []
    for target in relative_links(path):
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            bad.append(f"{target} (no such file: {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest})")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{target} (no heading #{anchor} in {dest.name})")
    return bad


def test_the_link_checker_finds_a_broken_file_and_a_broken_anchor(tmp_path):
    (tmp_path / "b.md").write_text("# Real heading\n\n## `code` in it: yes\n", encoding="utf-8")
    page = tmp_path / "a.md"
    page.write_text("[ok](b.md#real-heading) [ok2](b.md#code-in-it-yes) [gone](c.md) [bad](b.md#nope) [two\nlines](d.md)\n"
                    "`[in code](missing.md)` [web](https://example.org/x.md)\n"
                    "```\n[in a block](missing.md)\n```\n", encoding="utf-8")
    assert [b.split(" ")[0] for b in broken_links(page)] == ["c.md", "b.md#nope", "d.md"]


def test_readme_is_a_manual_of_at_most_250_lines():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= 250, f"README.md has {n} lines; move detail into docs/ (issue 19: at most 250)"


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_relative_link_resolves(page):
    assert broken_links(page) == [], f"{page.relative_to(ROOT)} links to what does not exist"


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in relative_links(README)}
    assert [p.name for p in DOCS if p.resolve() not in linked] == []


def test_readme_holds_ci_test_command_verbatim():
    """`.ci/run` runs the README's test command: the line after its '# The README's test command:' comment."""
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    i = next(i for i, line in enumerate(ci) if line.strip().startswith("# The README's test command"))
    command = ci[i + 1].strip()
    assert command == "python -m pytest -q"
    assert command in [line.strip() for line in README.read_text(encoding="utf-8").splitlines()]


def test_readme_main_job_command_names_real_options():
    text = README.read_text(encoding="utf-8")
    lines = [line.strip() for line in text.splitlines()]
    assert "skipenv train --out runs/ppo-xsum" in lines
    assert 'pip install torch==2.13.0 && pip install -e ".[test]"' in lines
    out = subprocess.run([sys.executable, "-m", "skipenv", "train", "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "--out" in out.stdout and "runs/ppo-xsum" in out.stdout

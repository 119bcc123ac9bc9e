"""The documentation ships with the repository and stays usable: the method and design
notes cited in docstrings exist (docs/), README.md stays short and points at the pages,
links resolve, no page names a machine path, and every Python snippet sits where
tests/test_examples.py runs it (README.md and docs/guide.md)."""

import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CITED = [
    "docs/paper/METHOD.md",
    "docs/paper/recipes.tsv",
    "docs/paper/results.tsv",
    "docs/DESIGN.md",
    "docs/PITFALLS.md",
]
PAGES = [
    "docs/guide.md",
    "docs/experiments.md",
    "docs/datasets.md",
    "docs/scaling.md",
    "docs/results.md",
    "docs/performance.md",
]
# the pages whose ```python blocks tests/test_examples.py runs
RUN_SNIPPETS = {"README.md", "docs/guide.md"}
MARKDOWN = [
    "README.md",
    *sorted(f"docs/{n}" for n in os.listdir(os.path.join(ROOT, "docs")) if n.endswith(".md")),
]


def read(path: str) -> str:
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return f.read()


@pytest.mark.parametrize("path", CITED + PAGES)
def test_cited_notes_are_in_the_repository(path):
    assert os.path.getsize(os.path.join(ROOT, path)) > 0


def test_readme_is_short_and_links_every_page():
    text = read("README.md")
    assert len(text.splitlines()) <= 150, "README.md is for a first look: move detail to docs/"
    for command in ("make train", "make test"):
        assert command in text, f"README.md must show `{command}`"
    for page in PAGES + ["docs/DESIGN.md"]:
        assert f"({page})" in text, f"README.md does not link {page}"


@pytest.mark.parametrize("path", MARKDOWN)
def test_no_machine_paths(path):
    found = re.findall(r"(?<![\w.~$])/(?:root|home)/\S*", read(path))
    assert not found, f"{path} names machine paths {found}: use repository-relative paths"


@pytest.mark.parametrize("path", MARKDOWN)
def test_relative_links_resolve(path):
    base = os.path.dirname(os.path.join(ROOT, path))
    for target in re.findall(r"\]\(([^)\s]+)\)", read(path)):
        if re.match(r"[a-z]+://|#|mailto:", target):
            continue
        target = target.split("#")[0]
        assert os.path.exists(os.path.join(base, target)), f"{path}: broken link {target}"


@pytest.mark.parametrize("path", MARKDOWN)
def test_python_snippets_only_where_they_run(path):
    if path in RUN_SNIPPETS:
        return
    assert "```python" not in read(path), (
        f"{path} has a ```python block that no test runs: move it to docs/guide.md "
        "or mark it as another language"
    )


def test_readme_results_are_the_measured_ones():
    """README's results table repeats docs/results.md's measured rows, unchanged."""
    rows = re.findall(r"^\| (mlp_\w+) \| (.+) \|$", read("README.md"), flags=re.M)
    assert len(rows) == 4
    full = read("docs/results.md")
    for row, cells in rows:
        measured, published, diff, best, params, wall = (c.strip() for c in cells.split("|"))
        cells = [row, "200/200", measured, published, diff, best, params, wall, "done"]
        line = "| " + " | ".join(cells) + " |"
        assert line in full, f"README's {row} differs from docs/results.md"

"""The method and design notes cited in docstrings ship with the repository (docs/), and
stay the same as the project's shared copies where those exist (a developer checkout)."""

import filecmp
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
VENDORED = {
    "docs/paper/METHOD.md": "paper/METHOD.md",
    "docs/paper/recipes.tsv": "paper/recipes.tsv",
    "docs/paper/results.tsv": "paper/results.tsv",
    "docs/DESIGN.md": "DESIGN.md",
    "docs/PITFALLS.md": "PITFALLS.md",
}


@pytest.mark.parametrize("path", sorted(VENDORED))
def test_cited_notes_are_in_the_repository(path):
    assert os.path.getsize(os.path.join(ROOT, path)) > 0


@pytest.mark.parametrize("path", sorted(VENDORED))
def test_vendored_notes_match_the_shared_copies(path):
    shared = os.path.join(SHARED, VENDORED[path])
    if not os.path.exists(shared):
        pytest.skip(f"no shared copy at {shared} (a clean clone)")
    assert filecmp.cmp(os.path.join(ROOT, path), shared, shallow=False), (
        f"{shared} changed: copy it to {path}"
    )

"""The documentation's code and the example scripts run (so they cannot rot).

The API section of README.md is split into its ```python blocks, which run in
order as one script; each script in examples/ runs with `--smoke` (random data, a tiny
model, a few steps). They run as subprocesses, as a user would run them, with XLA's
backend optimisation off: these check behaviour, not speed, and it cuts compile time
several-fold on CPU.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
API_HEADING = "## Local losses in your own models"
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


def api_section(markdown: str) -> str:
    """README's API section: from its heading to the next second-level heading."""
    start = markdown.index(API_HEADING)
    end = markdown.find("\n## ", start + len(API_HEADING))
    return markdown[start : end if end != -1 else None]


def python_blocks(markdown: str) -> list[str]:
    """The ```python fenced blocks of a markdown text, in order."""
    return re.findall(r"^```python\n(.*?)^```", markdown, flags=re.S | re.M)


def run_python(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
    env.setdefault("JAX_PLATFORMS", "cpu")
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_python_blocks_extracts_fenced_code():
    text = "intro\n```python\na = 1\n```\n```bash\nls\n```\n```python\nb = a + 1\n```\n"
    assert python_blocks(text) == ["a = 1\n", "b = a + 1\n"]


def test_docs_code_runs(tmp_path):
    blocks = python_blocks(api_section(README.read_text()))
    assert len(blocks) >= 6, "README API section lost its runnable examples"
    script = tmp_path / "api_md.py"
    script.write_text("\n".join(f"# --- block {i}\n{b}" for i, b in enumerate(blocks)))
    proc = run_python([str(script)])
    assert proc.returncode == 0, f"README API section code failed:\n{proc.stdout}\n{proc.stderr}"
    out = proc.stdout
    # what the text promises the reader will see
    assert "['block_0 (res_1)', 'block_1 (res_2)', 'output']" in out
    assert "the local loss of block_1 (res_2) sends gradient into block_0 (res_1)" in out
    assert "labels must lie in [0, 10)" in out


# what each example must print: its per-block metrics and its test metrics
EXPECTED_OUTPUT = {
    "custom_resnet": ["block_1 (res_1): trains", "local error block_0=", "test: error="],
    "nnx_bridge": ["local losses", "test error"],
}


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.stem)
def test_example_smoke(script):
    proc = run_python([str(script), "--smoke"])
    assert proc.returncode == 0, f"{script.name} --smoke failed:\n{proc.stdout}\n{proc.stderr}"
    for text in EXPECTED_OUTPUT.get(script.stem, ["test"]):
        assert text in proc.stdout, f"{script.name}: no {text!r} in\n{proc.stdout}"


def test_examples_exist():
    assert set(EXPECTED_OUTPUT) <= {p.stem for p in EXAMPLES}

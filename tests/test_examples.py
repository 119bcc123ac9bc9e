"""The documentation's code and the example scripts run (so they cannot rot).

README.md's and docs/guide.md's ```python blocks are extracted and each file's blocks run
in order as one script; each script in examples/ runs with `--smoke` (random data, a tiny
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
GUIDE = ROOT / "docs" / "guide.md"
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


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


def run_blocks(blocks: list[str], tmp_path: Path, name: str) -> subprocess.CompletedProcess:
    """Runs markdown code blocks in order as one script."""
    script = tmp_path / f"{name}.py"
    script.write_text("\n".join(f"# --- block {i}\n{b}" for i, b in enumerate(blocks)))
    return run_python([str(script)])


def test_readme_code_runs(tmp_path):
    blocks = python_blocks(README.read_text())
    assert blocks, "README.md lost its runnable API example"
    code = "\n".join(blocks)
    for name in ("LocalNetwork", "LocalBlock", "create_train_state", "make_train_step"):
        assert f"lj.{name}(" in code, f"README's API example no longer shows {name}"
    proc = run_blocks(blocks, tmp_path, "readme_md")
    assert proc.returncode == 0, f"README.md code failed:\n{proc.stdout}\n{proc.stderr}"
    assert "'local_loss/block_1'" in proc.stdout


def test_guide_code_runs(tmp_path):
    blocks = python_blocks(GUIDE.read_text())
    assert len(blocks) >= 6, "docs/guide.md lost its runnable examples"
    assert any("make_multi_step" in b for b in blocks), "the multi-step snippet must run"
    proc = run_blocks(blocks, tmp_path, "guide_md")
    assert proc.returncode == 0, f"docs/guide.md code failed:\n{proc.stdout}\n{proc.stderr}"
    out = proc.stdout
    # what the text promises the reader will see
    assert "['block_0 (res_1)', 'block_1 (res_2)', 'output']" in out
    assert "the local loss of block_1 (res_2) sends gradient into block_0 (res_1)" in out
    assert "labels must lie in [0, 10)" in out
    assert "2 steps per dispatch: at step 7" in out  # 3 single steps, then 2 x 2 in a scan
    assert "max |logit difference|: 0.0" in out


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

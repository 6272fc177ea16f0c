"""The documented plugin example (docs/usage.md), copied into a folder outside the repo, reaches the leaderboard."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "docs" / "usage.md"


def readme_plugin() -> str:
    text = README.read_text()
    section = text[text.index("## Adding your own method without editing this repo") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_plugin_runs_and_reaches_the_leaderboard(tmp_path):
    (tmp_path / "my_flow.py").write_text(readme_plugin())
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(tmp_path))
    args = ["run", "--plugin", "my_flow", "--method", "my-flow", "--dataset", "moons", "--smoke", "--device", "cpu"]
    args += ["--set", "train.lr=3e-3", "--out", "res", "--runs-dir", "runs"]
    r = subprocess.run(
        [sys.executable, "-m", "bench.cli", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    board = (tmp_path / "res" / "LEADERBOARD.md").read_text()
    assert "my-flow" in board
    assert "network_passes" in next((tmp_path / "res" / "runs" / "moons").glob("*.json")).read_text()

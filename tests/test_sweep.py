"""bench sweep: a grid of normal runs; the records equal running the same runs by hand."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

GRID = """
methods: [flow]
datasets: [moons]
seeds: [0, 1]
overrides:
  - {train.steps: 30}
sets: ["eval.nfe=[1]", "eval.solvers=[euler]", "eval.timing=false", "eval.n_gen=300", "eval.n_ref=300"]
smoke: true
device: cpu
"""


def _bench(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "bench.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def _metrics(results: Path) -> dict:
    out = {}
    for p in sorted(results.glob("runs/**/*.json")):
        rec = json.loads(p.read_text())
        for row in rec["rows"]:
            out[(rec["method"], rec["dataset"], rec["seed"], row["label"], row["nfe"])] = {
                k: m["values"] for k, m in row["metrics"].items()
            }
    return out


def test_sweep_equals_runs_by_hand(tmp_path):
    (tmp_path / "grid.yaml").write_text(GRID)
    r = _bench(tmp_path, "sweep", "grid.yaml", "--workers", "2", "--out", "swept", "--runs-dir", "runs")
    assert r.returncode == 0, r.stderr
    assert "2 jobs" in r.stderr and (tmp_path / "swept" / "LEADERBOARD.md").is_file()
    sets = [a for kv in ["eval.nfe=[1]", "eval.solvers=[euler]", "eval.timing=false"] for a in ("--set", kv)]
    sets += ["--set", "eval.n_gen=300", "--set", "eval.n_ref=300", "--set", "train.steps=30"]
    for seed in ("0", "1"):
        args = ["run", "--method", "flow", "--dataset", "moons", "--seed", seed, "--device", "cpu", "--smoke"]
        h = _bench(tmp_path, *args, *sets, "--out", "byhand", "--runs-dir", "runs")
        assert h.returncode == 0, h.stderr
    swept, by_hand = _metrics(tmp_path / "swept"), _metrics(tmp_path / "byhand")
    assert len(swept) == 2 and swept == by_hand


@pytest.mark.parametrize(
    ("grid", "msg"),
    [
        ("methods: [nosuch]\ndatasets: [moons]\n", "unknown method"),
        ("methods: [flow]\ndatasets: [moons]\nsets: ['train.nosuch=1']\n", "unknown config key"),
        ("methods: [flow]\ndatasets: [moons]\nbogus: 1\n", "unknown config key 'sweep.bogus'"),
        ("methods: []\ndatasets: [moons]\n", "must not be empty"),
    ],
)
def test_bad_grid_is_one_line_and_runs_nothing(tmp_path, bench_cli, grid, msg):
    (tmp_path / "g.yaml").write_text(grid)
    code, _, err = bench_cli("sweep", str(tmp_path / "g.yaml"), "--out", str(tmp_path / "res"))
    assert code == 2 and msg in err and "Traceback" not in err
    assert not (tmp_path / "res").exists()


def test_dry_run_lists_the_jobs(tmp_path, bench_cli):
    (tmp_path / "g.yaml").write_text("methods: [flow, chargen]\ndatasets: [moons]\nseeds: [0, 1, 2]\n")
    code, out, err = bench_cli("sweep", str(tmp_path / "g.yaml"), "--dry-run")
    assert code == 0 and "6 jobs" in err and out.count("bench run") == 6

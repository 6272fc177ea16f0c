"""Run records: one JSON file per run, written atomically, holding everything a number depends on."""

from __future__ import annotations

import datetime as _dt
import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.checkpoint import atomic_write_json
from bench.errors import BenchError

SCHEMA = "onestep-bench-record/1"
_PACKAGES = ("torch", "torchvision", "numpy", "scipy", "POT", "torchdiffeq", "torch-fidelity", "clean-fid")


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for p in _PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = "not installed"
    try:
        out["onestep-bench"] = metadata.version("onestep-bench")
    except metadata.PackageNotFoundError:
        out["onestep-bench"] = "source tree"
    return out


def git_commit() -> str:
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if sha.returncode != 0:
        return "unknown"
    return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def now_utc() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def record_path(results_dir: Path, dataset: str, run_id: str) -> Path:
    return Path(results_dir) / "runs" / dataset / f"{run_id}.json"


def write_record(results_dir: Path, record: dict[str, Any]) -> Path:
    """Write ``record`` atomically; refuses to overwrite another run's record."""
    path = record_path(results_dir, record["dataset"], record["run_id"])
    if path.exists():
        old = json.loads(path.read_text())
        if old.get("run_id") != record["run_id"]:
            raise BenchError(f"{path} holds another run's record; not overwriting")
    atomic_write_json(path, {"schema": SCHEMA, **record})
    return path


def load_records(results_dir: Path) -> list[dict[str, Any]]:
    """All records under ``results_dir/runs``, sorted by path (deterministic). Broken files are reported."""
    root = Path(results_dir) / "runs"
    out = []
    for p in sorted(root.glob("**/*.json")):
        try:
            rec = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise BenchError(f"unreadable run record {p}: {e}") from None
        if rec.get("schema") != SCHEMA:
            continue
        out.append(rec)
    return out

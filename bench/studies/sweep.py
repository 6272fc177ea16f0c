"""``bench sweep GRID.yaml``: methods x data sets x seeds x override sets, each job a plain ``bench run``
writing a plain record, run one after another, by N local workers, or submitted to SLURM through submitit.

    methods: [flow, chargen]
    datasets: [moons, checkerboard]
    seeds: [0, 1, 2]
    overrides:                     # optional: one job per entry (mapping of dotted keys, or a list of k=v)
      - {}
      - {method.euler_steps: 20}
    sets: ["eval.nfe=[1,8]"]       # optional: applied to every job
    smoke: false
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.core.config import from_dict, load_yaml
from bench.errors import BenchError
from bench.eval.timing import cores_available


@dataclass
class Grid:
    methods: list[str]
    datasets: list[str]
    seeds: list[int] = field(default_factory=lambda: [0])
    overrides: list[Any] = field(default_factory=lambda: [{}])  # mappings {key: value} or lists of "k=v"
    sets: list[str] = field(default_factory=list)
    smoke: bool = False
    device: str = "auto"

    def validate(self) -> None:
        if not self.methods or not self.datasets or not self.seeds or not self.overrides:
            raise BenchError("sweep grid: methods, datasets, seeds and overrides must not be empty")


def _yaml_value(v: Any) -> str:
    return yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()


def override_sets(ov: Any) -> list[str]:
    if isinstance(ov, dict):
        return [
            f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
            for k, v in ov.items()
        ]
    if isinstance(ov, list) and all(isinstance(s, str) and "=" in s for s in ov):
        return list(ov)
    raise BenchError(f"sweep grid: an override must be a mapping or a list of 'key=value' strings (got {ov!r})")


def load_grid(path: str | Path) -> Grid:
    return from_dict(Grid, load_yaml(path), prefix="sweep.")


def jobs(grid: Grid, out: Path, runs_dir: Path, plugins: list[str] = ()) -> list[list[str]]:
    """The ``bench`` argument lists of every job, in a fixed order (method, data set, override, seed)."""
    out_jobs = []
    for m, d, ov, s in itertools.product(grid.methods, grid.datasets, grid.overrides, grid.seeds):
        argv = ["run", "--method", m, "--dataset", d, "--seed", str(s), "--device", grid.device]
        argv += ["--out", str(out), "--runs-dir", str(runs_dir)]
        argv += [a for p in plugins for a in ("--plugin", p)]
        argv += ["--smoke"] if grid.smoke else []
        argv += [a for kv in [*grid.sets, *override_sets(ov)] for a in ("--set", kv)]
        out_jobs.append(argv)
    return out_jobs


def run_job(argv: list[str], threads: int | None = None) -> tuple[int, str]:
    """One job as a fresh ``bench`` process (exit code, last lines of its output)."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    p = subprocess.run([sys.executable, "-m", "bench.cli", *argv], capture_output=True, text=True, env=env)
    tail = "\n".join((p.stdout + p.stderr).strip().splitlines()[-3:])
    return p.returncode, tail


def run_local(all_jobs: list[list[str]], workers: int = 1, report: Callable[[int, list[str], int, str], None] = None):
    """Run the jobs on this machine, ``workers`` at a time, each with cores // workers threads."""
    threads = max(1, min(cores_available(), int(os.environ.get("OMP_NUM_THREADS", "0")) or 10**6) // workers)
    results: list[tuple[int, str]] = [(0, "")] * len(all_jobs)

    def one(i: int) -> None:
        results[i] = run_job(all_jobs[i], threads)
        if report is not None:
            report(i, all_jobs[i], *results[i])

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one, range(len(all_jobs))))
    return results


def submit_slurm(all_jobs: list[list[str]], folder: Path, **slurm: Any) -> list[Any]:
    """Submit every job to SLURM with submitit (``pip install onestep-bench[slurm]``); returns the jobs."""
    try:
        import submitit
    except ImportError:
        raise BenchError("--executor slurm needs submitit: pip install 'onestep-bench[slurm]'") from None
    ex = submitit.AutoExecutor(folder=str(folder))
    ex.update_parameters(**{k: v for k, v in slurm.items() if v is not None})
    with ex.batch():
        handles = [ex.submit(run_job, argv) for argv in all_jobs]
    return handles


def run_benchmark_local(
    planned: list[Any], out: Path, runs_dir: Path, workers: int, device: str = "auto", report=None
) -> list[tuple[str, int, str]]:
    """Run a benchmark plan (``bench.run.benchmark.plan``) here: a job whose record exists is reused, one with a
    checkpoint resumes, one whose teacher failed is not started; a job starts once its teacher has finished.
    Returns (run id, exit code, last output lines) per job: code 0 also for reused runs."""
    import threading

    from bench.core.records import record_path
    from bench.run.benchmark import argv, stale_keys, train_argv

    threads = max(1, min(cores_available(), int(os.environ.get("OMP_NUM_THREADS", "0")) or 10**6) // workers)
    done = {p.run_id: threading.Event() for p in planned}
    codes: dict[str, int] = {}
    results: list[tuple[str, int, str]] = [("", 0, "")] * len(planned)
    # teachers whose students still have to run: their checkpoints must exist, not only their records
    needed = {q.after for q in planned if q.after and not record_path(out, q.dataset, q.run_id).is_file()}

    def one(i: int) -> None:
        p = planned[i]
        try:
            if p.after:
                done[p.after].wait()
            ckpt, rec = Path(runs_dir) / p.run_id / "ckpt.pt", record_path(out, p.dataset, p.run_id)
            if rec.is_file() and p.run_id in needed and not ckpt.is_file():
                # same config and seed: the teacher its record describes, re-trained (not re-evaluated; thread
                # counts may change the last bits of the weights)
                code, tail = run_job(train_argv(p, runs_dir, device), threads)
                tail = f"record reused; checkpoint re-trained for its students: {tail}"
            elif rec.is_file():
                code, tail = 0, "reused (record exists)"
                stale = stale_keys(p, json.loads(rec.read_text()))
                if stale:  # made with other defaults: never reused as this commit's row
                    code = 1
                    tail = (
                        f"stale record {rec}: its config differs from today's in "
                        f"{', '.join(stale[:5])}{' ...' if len(stale) > 5 else ''}; move it (and runs/{p.run_id}) "
                        "to results/archive/ and sweep again"
                    )
            elif p.after and codes.get(p.after, 1) != 0:
                code, tail = 1, f"not run: its teacher {p.after} failed"
            else:
                code, tail = run_job(argv(p, out, runs_dir, ckpt.is_file(), device), threads)
            codes[p.run_id] = code
            results[i] = (p.run_id, code, tail)
            if report is not None:
                report(i, p, code, tail)
        finally:
            done[p.run_id].set()

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one, range(len(planned))))
    return results

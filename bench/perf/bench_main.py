"""Wall-clock of the main job, ``bench run --method chargen`` with every default, as a user runs it.

    python -m bench.perf.bench_main [--out results] [--runs-dir runs] [--json results/bench/main_job.json]

Writes the job's own record (a normal run) and a JSON with the total wall-clock, the per-stage and evaluation
times, the chargen/teacher W2 ratio, the threads and the load average before and after (quote the time only
when the load stayed below the core count)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.core.checkpoint import atomic_write_json
from bench.eval.timing import cores_available, load_average


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="results")
    ap.add_argument("--runs-dir", default="runs")
    ap.add_argument("--json", default="results/bench/main_job.json")
    a = ap.parse_args()
    before = {p: p.stat().st_mtime for p in Path(a.out).glob("runs/checkerboard/*.json")}
    load0 = load_average()
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "bench.cli", "run", "--method", "chargen", "--out", a.out, "--runs-dir", a.runs_dir]
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"main job failed:\n{p.stderr[-2000:]}")
    new = [q for q in Path(a.out).glob("runs/checkerboard/chargen-*.json") if q not in before]
    rec = json.loads(max(new, key=lambda q: q.stat().st_mtime).read_text())
    w2 = {(r["label"].endswith("(teacher)"), r["nfe"]): r["metrics"]["w2"]["mean"] for r in rec["rows"]}
    train_s = sum(rec["train"]["wall_clock_s"].values())
    res = {
        "command": "bench run --method chargen",
        "wall_clock_s": wall,
        "train_wall_clock_s": rec["train"]["wall_clock_s"],
        "evaluation_and_rest_s": wall - train_s,
        "chargen_w2_nfe1": w2[(False, 1)],
        "teacher_w2_nfe128": w2[(True, 128)],
        "ratio": w2[(False, 1)] / w2[(True, 128)],
        "run_id": rec["run_id"],
        "threads": os.environ.get("OMP_NUM_THREADS", "default"),
        "cores": cores_available(),
        "load_avg_1min": [load0, load_average()],
        "device": rec["device"],
    }
    atomic_write_json(Path(a.json), res)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()

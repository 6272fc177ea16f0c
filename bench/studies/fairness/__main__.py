"""``python -m bench.studies.fairness``: run minimal re-implementations at the benchmark's step budgets and compare them
with the suite's benchmark records of the same data set and seed (``results/fairness.{json,md}``).

    python -m bench.studies.fairness --methods meanflow,ct --datasets checkerboard --seeds 0   # adds to fairness.json
    python -m bench.studies.fairness --render-only                                              # tables from the JSON
    python -m bench.studies.fairness --methods ect --datasets checkerboard --net suite   # the architecture probe

``--net suite`` runs the same minimal versions with the suite's point network (``TimeMLP``) in place of their plain
MLP on concatenated inputs (``fairness-net.json``): what is left of a gap between the suite and its minimal version
once both use one network is the method's code; the rest is the network.

Each entry of ``fairness.json`` is one minimal run (method, data set, seed, steps, W2 values per NFE, wall-clock,
load average, git commit); the table pairs it with the suite's benchmark job (``results/benchmark.yaml``) of the
same data set and seed, when its record exists. Run with ``OMP_NUM_THREADS=1`` beside other jobs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from bench.studies.fairness import (
    minimal_cd,
    minimal_ect,
    minimal_flow,
    minimal_gan,
    minimal_ict,
    minimal_imeanflow,
    minimal_meanflow,
    minimal_reflow,
    minimal_sct,
    minimal_shortcut,
    minimal_tvm,
)

# job name in results/benchmark.yaml -> (minimal run at that job's step budget, what the budget is)
MINIMAL: dict[str, tuple[Any, str]] = {
    "flow": (lambda d, s: minimal_flow.run(d, s, 4000), "4,000 steps"),
    "meanflow": (lambda d, s: minimal_meanflow.run(d, s, 7000), "7,000 steps"),
    "ct": (lambda d, s: minimal_ict.run(d, s, 7000), "7,000 steps"),
    "shortcut": (lambda d, s: minimal_shortcut.run(d, s, 7000), "7,000 steps"),
    "tvm": (lambda d, s: minimal_tvm.run(d, s, 7000), "7,000 steps"),
    "imeanflow": (lambda d, s: minimal_imeanflow.run(d, s, 7000), "7,000 steps"),
    "sct": (lambda d, s: minimal_sct.run(d, s, 7000), "7,000 steps"),
    "cd": (lambda d, s: minimal_cd.run(d, s, 4000, 6000), "teacher 4,000 + fit 6,000 steps"),
    "ect": (lambda d, s: minimal_ect.run(d, s, 4000, 6000), "teacher 4,000 + fit 6,000 steps"),
    "reflow": (lambda d, s: minimal_reflow.run(d, s, 4000, 3000, 3000), "teacher 4,000 + reflow 3,000 + distill 3,000"),
    "gan-ns": (lambda d, s: minimal_gan.run(d, s, 10000, "ns"), "10,000 G steps"),
    "wgan-gp": (lambda d, s: minimal_gan.run(d, s, 5000, "wgan-gp"), "5,000 G steps"),
    "sngan": (lambda d, s: minimal_gan.run(d, s, 10000, "hinge-sn"), "10,000 G steps"),
}


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _suite_values(results: Path, job: str, dataset: str, seed: int, nfe: str) -> list[float] | None:
    """The W2 values of the benchmark job's record at this NFE (its own rows, not a teacher's)."""
    from bench.core.records import record_path
    from bench.run.benchmark import plan

    p = next((p for p in plan(results / "benchmark.yaml") if (p.job, p.dataset, p.seed) == (job, dataset, seed)), None)
    if p is None or not nfe.isdigit() or not record_path(results, dataset, p.run_id).is_file():
        return None
    rec = json.loads(record_path(results, dataset, p.run_id).read_text())
    rows = [r for r in rec["rows"] if not r["label"].endswith("(teacher)") and r["nfe_requested"] == int(nfe)]
    rows.sort(key=lambda r: (r["solver"] == "euler") != (job == "flow"))  # flow: Euler; others: their sampler
    return rows[0]["metrics"]["w2"]["values"] if rows and "w2" in rows[0]["metrics"] else None


NOT_NET_PROBED = ("imeanflow", "gan-ns", "wgan-gp", "sngan")  # their nets are not (x, times) -> a vector of x's size


def _fmt(v: list[float]) -> str:
    return f"{statistics.fmean(v):.3f} ± {statistics.pstdev(v):.3f}" if v else "-"


def render_net_probe(results: Path, entries: list[dict]) -> list[str]:
    """The architecture probe's table: each minimal run with the plain MLP beside the same run on the suite's
    TimeMLP (same job, data set, seed) and the suite's record."""
    path = results / "fairness-net.json"
    probes = json.loads(path.read_text()) if path.is_file() else []
    if not probes:
        return []
    plain = {(e["job"], e["dataset"], e["seed"]): e for e in entries}
    lines = [
        "",
        "## The network's share of each gap (`--net suite`, `fairness-net.json`)",
        "",
        "The same minimal versions with the suite's point network (`TimeMLP`: 3 x 256, raw times through learned",
        "embeddings added to every hidden layer) in place of their plain MLP on concatenated inputs (4 x 256).",
        "suite / minimal on TimeMLP near 1: the method's code matches its minimal version and the gap is the",
        "network (shared by every method of the suite, so a change there is a change for all of them).",
        "",
        "| job | data set | NFE | seeds | minimal, plain MLP | minimal, TimeMLP | suite | suite / minimal on TimeMLP |",
        "|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for e in probes:
        for nfe in e["w2"]:
            groups.setdefault((e["job"], e["dataset"], nfe), []).append(e)
    for (job, dataset, nfe), es in sorted(groups.items()):
        net = [v for e in es for v in e["w2"][nfe]]
        mlp = [v for e in es for v in plain.get((job, dataset, e["seed"]), {}).get("w2", {}).get(nfe, [])]
        suite = [v for e in es for v in (_suite_values(results, job, dataset, e["seed"], nfe) or [])]
        ratio = f"{statistics.fmean(suite) / statistics.fmean(net):.2f}" if suite and net else "-"
        seeds = ",".join(str(e["seed"]) for e in sorted(es, key=lambda e: e["seed"]))
        lines.append(f"| {job} | {dataset} | {nfe} | {seeds} | {_fmt(mlp)} | {_fmt(net)} | {_fmt(suite)} | {ratio} |")
    return lines


def render(results: Path) -> str:
    path = results / "fairness.json"
    entries = json.loads(path.read_text()) if path.is_file() else []
    lines = [
        "# Fairness: the suite's benchmark recipes vs minimal re-implementations",
        "",
        "Rendered by `python -m bench.studies.fairness --render-only` from `fairness.json`; do not edit by hand.",
        "Minimal versions: `bench/studies/fairness/minimal_*.py` (one file per method, no code shared with",
        "`methods/`; they share only the data samplers and the exact-W2 scorer). Same data, seed and step budget as",
        "the benchmark job;",
        "W2 exact (POT emd2), 5,000 generated vs 5,000 fresh reference points, 3 repeats; mean ± std over seeds x",
        "repeats. ratio = suite / minimal (<= 1: the suite's recipe is at least as good).",
        "",
        "| job | data set | budget | NFE | minimal W2 | suite W2 | ratio | seeds (minimal / suite) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for e in entries:
        for nfe in e["w2"]:
            groups.setdefault((e["job"], e["dataset"], nfe), []).append(e)
    for (job, dataset, nfe), es in sorted(groups.items()):
        mine = [v for e in es for v in e["w2"][nfe]]
        suite_by_seed = {e["seed"]: _suite_values(results, job, dataset, e["seed"], nfe) for e in es}
        suite = [v for vs in suite_by_seed.values() if vs for v in vs]
        n_suite = sum(1 for vs in suite_by_seed.values() if vs)

        ratio = f"{statistics.fmean(suite) / statistics.fmean(mine):.2f}" if suite and mine else "-"
        lines.append(
            f"| {job} | {dataset} | {es[0]['budget']} | {nfe} | {_fmt(mine)} | {_fmt(suite)} | {ratio} | "
            f"{len(es)} / {n_suite} |"
        )
    if not entries:
        lines.append("| (no minimal runs yet: `python -m bench.studies.fairness --methods meanflow`) | | | | | | | |")
    return "\n".join(lines + render_net_probe(results, entries)) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.studies.fairness", description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", default=",".join(MINIMAL), help=f"comma-separated jobs of: {', '.join(MINIMAL)}")
    ap.add_argument("--datasets", default="checkerboard,8gaussians,moons")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--results", type=Path, default=Path("results"))
    ap.add_argument("--render-only", action="store_true")
    ap.add_argument("--net", choices=("mlp", "suite"), default="mlp", help="suite: the architecture probe")
    a = ap.parse_args(argv)
    from bench.studies.fairness import harness
    from bench.studies.fairness.harness import DATA

    jobs, datasets = a.methods.split(","), a.datasets.split(",")
    bad = [j for j in jobs if j not in MINIMAL] + [d for d in datasets if d not in DATA]
    try:
        seeds = [int(s) for s in a.seeds.split(",")]
    except ValueError:
        bad.append(a.seeds)
    if bad:
        print(f"error: unknown job, data set or seed {bad[0]!r} (jobs: {', '.join(MINIMAL)})", file=sys.stderr)
        return 2
    if a.net == "suite" and not a.render_only and set(jobs) & set(NOT_NET_PROBED):
        no = ", ".join(sorted(set(jobs) & set(NOT_NET_PROBED)))
        print(f"error: --net suite does not apply to {no} (their networks are not (x, times) -> x)", file=sys.stderr)
        return 2
    harness.NET = a.net
    try:
        _run(a, jobs, datasets, seeds)
    finally:
        harness.NET = "mlp"
    (a.results / "fairness.md").write_text(render(a.results))
    return 0


def _run(a: argparse.Namespace, jobs: list[str], datasets: list[str], seeds: list[int]) -> None:
    path = a.results / ("fairness.json" if a.net == "mlp" else "fairness-net.json")
    if not a.render_only:
        for job in jobs:
            for d in datasets:
                for s in seeds:
                    t0 = time.perf_counter()
                    w2 = MINIMAL[job][0](d, s)
                    entry = {
                        "job": job,
                        "dataset": d,
                        "seed": s,
                        "budget": MINIMAL[job][1],
                        "w2": w2,
                        "wall_clock_s": round(time.perf_counter() - t0, 1),
                        "load_avg_1min": os.getloadavg()[0],
                        "threads": torch.get_num_threads(),
                        "net": a.net,
                        "git_commit": _commit(),
                        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    }
                    entries = json.loads(path.read_text()) if path.is_file() else []
                    entries = [e for e in entries if (e["job"], e["dataset"], e["seed"]) != (job, d, s)] + [entry]
                    path.write_text(json.dumps(entries, indent=1) + "\n")
                    print(
                        f"{job} {d} seed {s}: " + ", ".join(f"NFE {k} {statistics.fmean(v):.3f}" for k, v in w2.items())
                    )


if __name__ == "__main__":
    raise SystemExit(main())

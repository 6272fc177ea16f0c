"""Start-up latency of the CLI: ``bench list`` and bad-input errors against a bare ``import torch`` (the
floor every command pays), and which heavy modules each of them imports (none should).

    python -m bench.perf.bench_cli [--out results/bench/cli_latency.json] [--repeats 5]

Each command runs in a fresh interpreter, exactly as the ``bench`` console script does; the commands are
interleaved (one round = every command once, after one unmeasured warm-up round) so that a change in the
machine's load hits them alike; medians over the rounds, and the ratio of each median to ``import torch``'s.
The 1-min load average is recorded before and after: on a shared machine only the ratios mean much.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

# imported only where used (metrics, data loaders, figures), never by `bench list` or a bad-input error
HEAVY_MODULES = ("torch_fidelity", "cleanfid", "sklearn", "torchvision", "ot", "torchdiffeq", "matplotlib", "scipy")
TARGET_RATIO = 1.5  # `bench list` and every bad-input error within 1.5x the time of `import torch`

_ENTRY = "from bench.cli import main; main()"  # what the `bench` console script runs
COMMANDS: dict[str, list[str]] = {
    "import torch": ["-c", "import torch"],
    "bench list": ["-c", _ENTRY, "list"],
    "bench run --method nosuch": ["-c", _ENTRY, "run", "--method", "nosuch"],
    "bench run --set train.lr=nan": ["-c", _ENTRY, "run", "--method", "flow", "--set", "train.lr=nan"],
    "bench run --out <a file>": ["-c", _ENTRY, "run", "--out", __file__],
}

_PROBE = """
import json, sys
commands, heavy = json.loads(sys.argv[1]), set(json.loads(sys.argv[2]))
from bench.cli import main
out = []
for args in commands:
    sys.argv = ["bench", *args]
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code
    out.append([code, sorted({m.split(".")[0] for m in sys.modules} & heavy)])
print(json.dumps(out))
"""


def heavy_imports(commands: list[list[str]], cwd: str | Path | None = None) -> list[tuple[int, list[str]]]:
    """Run ``bench ARGS`` for each ARGS in turn in one fresh interpreter; after each, (its exit code, the heavy
    top-level packages in ``sys.modules`` so far)."""
    cmd = [sys.executable, "-c", _PROBE, json.dumps(commands), json.dumps(HEAVY_MODULES)]
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    if r.returncode != 0 or not r.stdout.strip():
        raise RuntimeError(f"probe of {commands} failed ({r.returncode}): {r.stderr[-2000:]}")
    return [(code, heavy) for code, heavy in json.loads(r.stdout.strip().splitlines()[-1])]


def _time(args: list[str], cwd: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, *args], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0, r.returncode


def measure(repeats: int, cwd: str) -> dict:
    """Interleaved wall-clock seconds of every command (one warm-up round first), medians and ratios."""
    for args in COMMANDS.values():  # warm-up: file cache, .pyc
        _time(args, cwd)
    times: dict[str, list[float]] = {k: [] for k in COMMANDS}
    codes: dict[str, int] = {}
    for _ in range(repeats):
        for name, args in COMMANDS.items():
            dt, codes[name] = _time(args, cwd)
            times[name].append(round(dt, 4))
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["import torch"]
    return {
        "seconds": times,
        "median_s": {k: round(v, 4) for k, v in med.items()},
        "ratio_to_import_torch": {k: round(v / base, 3) for k, v in med.items() if k != "import torch"},
        "exit_codes": codes,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("results/bench/cli_latency.json"))
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:  # the commands write nothing, but run them where nothing is
        load_before = os.getloadavg()[0]
        t = measure(args.repeats, tmp)
        load_after = os.getloadavg()[0]
        named = {name: c[2:] for name, c in COMMANDS.items() if c[1] == _ENTRY}
        heavy = {name: heavy_imports([args], tmp)[0][1] for name, args in named.items()}
    ratios = t["ratio_to_import_torch"]
    res = {
        "what": "CLI start-up: fresh interpreter per command, interleaved rounds, median wall-clock seconds",
        "repeats": args.repeats,
        **t,
        "target_ratio": TARGET_RATIO,
        "within_target": all(r <= TARGET_RATIO for r in ratios.values()),
        "heavy_modules_imported": heavy,
        "load_avg_1min": {"before": round(load_before, 2), "after": round(load_after, 2)},
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    from bench.core.checkpoint import atomic_write_json

    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, res)
    print(json.dumps({k: res[k] for k in ("median_s", "ratio_to_import_torch", "load_avg_1min")}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Peak host memory of chargen's stages (trajectories + fit) on CIFAR-shaped data against the number of cached
trajectories: ``python -m bench.perf.bench_memory`` -> ``results/bench/memory_cifar.json``.

Random images are written in CIFAR-10's own on-disk format (python pickle batches, 50,000 + 10,000) and read
by the suite's cifar10 loader (md5 check off). A `flow` teacher with the `micro` U-Net is trained once (a few
steps: the network's quality is irrelevant here, only the shapes and the storage path are), then each case
is a fresh ``bench train --method chargen`` process reusing it; its peak RSS is the kernel's ``ru_maxrss``
for that process (``os.wait4``), so the teacher's training is not in it.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_fake_cifar(root: Path, n_train: int = 50_000, n_test: int = 10_000, seed: int = 0) -> None:
    """Random uint8 images in the CIFAR-10 python format (5 training batches, a test batch, batches.meta)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sizes = [(f"data_batch_{i}", n_train // 5) for i in range(1, 6)] + [("test_batch", n_test)]
    for name, n in sizes:
        entry = {
            "batch_label": name,
            "labels": rng.integers(0, 10, n).tolist(),
            "filenames": [f"{i}.png" for i in range(n)],
        }
        entry["data"] = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
    meta = {"num_cases_per_batch": n_train // 5, "label_names": [f"c{i}" for i in range(10)], "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))


def _bench(argv: list[str], env: dict) -> tuple[int, float, float]:
    """Run ``bench ARGV`` in a fresh process: (exit code, peak RSS in MiB, wall seconds)."""
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "bench.cli", *argv], env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    return p.returncode, usage.ru_maxrss / 1024, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-traj", type=int, nargs="+", default=[2000, 20000])
    ap.add_argument("--modes", nargs="+", default=["disk", "memory"])
    ap.add_argument("--euler-steps", type=int, default=4)
    ap.add_argument("--fit-steps", type=int, default=30)
    ap.add_argument("--chunk", type=int, default=1000, help="trajectories per chunk (<= the smallest n_traj)")
    ap.add_argument("--fit-batch", type=int, default=128)
    ap.add_argument("--out", default="results/bench/memory_cifar.json")
    args = ap.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    cases = []
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        tmp = Path(tmp)
        write_fake_cifar(tmp / "data")
        common = ["--dataset", "cifar10", "--device", "cpu", "--runs-dir", str(tmp / "runs"), "--threads", "1"]
        common += ["--set", f"data.root={tmp / 'data'}", "--set", "data.verify=false"]
        teacher = ["train", "--method", "flow", *common, "--run-id", "teacher", "--set", "method.net.unet=micro"]
        teacher += ["--set", "train.steps=5", "--set", "train.batch_size=16", "--set", "train.ckpt_every=0"]
        code, rss, wall = _bench(teacher, env)
        if code != 0:
            raise SystemExit(f"teacher run failed (exit {code})")
        for mode in args.modes:
            for n in args.n_traj:
                run_id = f"chargen-{mode}-{n}"
                argv = ["train", "--method", "chargen", *common, "--run-id", run_id]
                for kv in (
                    f"method.teacher.run={tmp / 'runs' / 'teacher'}",
                    f"method.euler_steps={args.euler_steps}",
                    f"method.n_traj={n}",
                    f"method.cache={mode}",
                    f"method.fit_steps={args.fit_steps}",
                    f"method.fit_batch={args.fit_batch}",
                    "method.lambda_sg=1",
                    f"method.chunk={args.chunk}",
                    "train.ckpt_every=0",
                ):
                    argv += ["--set", kv]
                code, rss, wall = _bench(argv, env)
                traj = tmp / "runs" / run_id / f"trajectories-K{args.euler_steps}-m{n}.npy"
                row = {
                    "cache": mode,
                    "n_traj": n,
                    "exit_code": code,
                    "peak_rss_mib": round(rss, 1),
                    "wall_s": round(wall, 1),
                    "trajectory_bytes": n * (args.euler_steps + 1) * 3072 * 4,
                    "file_bytes": traj.stat().st_size if traj.exists() else 0,
                }
                print(json.dumps(row), flush=True)
                cases.append(row)
    by = {(c["cache"], c["n_traj"]): c["peak_rss_mib"] for c in cases}
    lo, hi = min(args.n_traj), max(args.n_traj)
    ratios = {m: round(by[(m, hi)] / by[(m, lo)], 3) for m in args.modes if (m, lo) in by and (m, hi) in by}
    import torch

    out = {
        "what": "peak RSS (ru_maxrss) of one `bench train --method chargen` process: trajectories + fit, "
        "reused teacher",
        "data": "random uint8 images in the CIFAR-10 python format (50,000 train), read by the cifar10 loader",
        "net": "U-Net preset micro (two time inputs), float32",
        "euler_steps": args.euler_steps,
        "fit_steps": args.fit_steps,
        "chunk": args.chunk,
        "fit_batch": args.fit_batch,
        "lambda_sg": 1,
        "threads": 1,
        "cases": cases,
        f"rss_ratio_{hi}_over_{lo}": ratios,
        "device": "cpu",
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "load_avg": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": "python -m bench.perf.bench_memory " + " ".join(sys.argv[1:]),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(ratios))


if __name__ == "__main__":
    main()

"""Engine overhead benchmark (issue: the engine owns the networks).

1. Per-step training time of ``flow`` on checkerboard through ``bench.run.engine.train`` against a bare PyTorch
   loop doing the same work (same network, batch, Adam, clipping, EMA), interleaved A/B in one process.
2. The same tiny flow and chargen runs with 1 and 2 processes (torchrun, gloo on CPU): per-step wall-clock.

    python -m bench.perf.bench_engine [--steps 300] [--repeats 3] [--out results/bench/engine_overhead.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.core.checkpoint import atomic_write_json
from bench.eval.timing import cores_available, load_average
from bench.methods.base import Batch, ema_update


def _build(steps: int):
    from bench.run.runner import build, resolve_config

    cfg = resolve_config("flow", "checkerboard", sets=[f"train.steps={steps}", "train.ckpt_every=0"])
    ds, m = build(cfg, Path(tempfile.mkdtemp()), torch.device("cpu"))
    return cfg, ds, m


def bare_loop(steps: int) -> float:
    """Seconds per step of a hand-written loop over the same network and work as the engine's."""
    cfg, ds, m = _build(steps)
    tc = cfg.train
    opt = torch.optim.Adam(m.net.parameters(), lr=tc.lr)
    gen = torch.Generator().manual_seed(1)
    params = list(m.net.parameters())
    t0 = time.perf_counter()
    for step in range(steps):
        x1 = ds.train_batch(tc.batch_size, gen)
        b = Batch(x1, len(x1), 0, len(x1), step, torch.device("cpu"), step)
        loss, _ = m.loss(b, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
        opt.step()
        ema_update([(m.ema, m.net)], min(tc.ema_decay, (1 + step) / (10 + step)))
    return (time.perf_counter() - t0) / steps


def engine_loop(steps: int) -> float:
    from bench.core.config import run_config_dict
    from bench.run import engine

    cfg, ds, m = _build(steps)
    wd = Path(tempfile.mkdtemp())
    t0 = time.perf_counter()
    engine.train(m, ds, cfg, run_config_dict(cfg), wd, torch.device("cpu"))
    return (time.perf_counter() - t0) / steps


def multi_process(method: str, nproc: int, steps: int) -> dict:
    """Wall-clock per training step of a tiny run with ``nproc`` processes (each OMP_NUM_THREADS = cores // nproc)."""
    with tempfile.TemporaryDirectory() as d:
        sets = [f"train.steps={steps}", "train.batch_size=512", "train.ckpt_every=0"]
        if method == "chargen":
            sets += [f"method.fit_steps={steps}", "method.n_traj=2048", "method.euler_steps=20"]
        args = ["train", "--method", method, "--dataset", "checkerboard", "--device", "cpu", "--runs-dir", d]
        args += ["--run-id", "r", *[a for s in sets for a in ("--set", s)]]
        head = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m"]
        cmd = [*(head if nproc > 1 else [sys.executable, "-m"]), "bench.cli", *args]
        env = dict(os.environ, OMP_NUM_THREADS=str(max(1, cores_available() // nproc)))
        subprocess.run(cmd, check=True, capture_output=True, env=env)
        st = torch.load(Path(d) / "r" / "ckpt.pt", weights_only=True)["train_state"]
        trained = {k: v for k, v in st["wall_s"].items() if k != "trajectories"}
        return {"per_step_s": {k: v / steps for k, v in trained.items()}, "wall_s": st["wall_s"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="results/bench/engine_overhead.json")
    a = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", cores_available())))
    load0 = load_average()
    bare, eng = [], []
    engine_loop(20), bare_loop(20)  # warm-up (allocator, lazy imports)
    for _ in range(a.repeats):  # interleaved A/B
        bare.append(bare_loop(a.steps))
        eng.append(engine_loop(a.steps))
    ratio = statistics.median(e / b for e, b in zip(eng, bare, strict=True))
    procs = {}
    for method in ("flow", "chargen"):
        one, two = multi_process(method, 1, a.steps // 3), multi_process(method, 2, a.steps // 3)
        procs[method] = {"1 process": one, "2 processes": two}
    res = {
        "what": "per-step training time: bench.run.engine.train vs a bare PyTorch loop (flow, checkerboard, batch 512)",
        "steps": a.steps,
        "repeats": a.repeats,
        "bare_per_step_s": bare,
        "engine_per_step_s": eng,
        "engine_over_bare_median_ratio": ratio,
        "multi_process": procs,
        "threads": torch.get_num_threads(),
        "cores": cores_available(),
        "load_avg_1min": [load0, load_average()],
        "torch": torch.__version__,
        "device": "cpu",
    }
    atomic_write_json(Path(a.out), res)
    print(json.dumps({k: v for k, v in res.items() if k != "multi_process"}, indent=1))
    for m, d in procs.items():
        print(m, {k: v["per_step_s"] for k, v in d.items()})


if __name__ == "__main__":
    main()

"""The README's CIFAR-10 chargen recipe in floating-point operations, and the GPU hours they imply:
``python -m bench.perf.bench_flops`` -> ``results/bench/cifar_recipe_flops.json``.

Forward FLOPs per sample of the `cifar10` U-Net (one and two time inputs) are counted by
``torch.utils.flop_counter`` on the CPU (a multiply-add = 2 FLOPs); a training pass over a sample costs
3 forwards (backward = 2, the suite's pass unit). The hours are an ESTIMATE, not a measurement: FLOPs divided
by an assumed sustained throughput. The default, 100 TFLOP/s in bf16, is ~10% of an H100/H200's dense
bf16 peak, the utilisation EDM's published CIFAR-10 training time implies for this U-Net on V100s
(200 Mimg, ~2 days on 8 GPUs); fp32 without TF32 runs on the ~60 TFLOP/s non-tensor units instead.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

# the README's recipe (every value that differs from the defaults is listed there)
RECIPE = {
    "teacher_steps": 100_000,
    "batch": 128,
    "n_traj": 50_000,
    "euler_steps": 20,
    "fit_steps": 10_000,
    "fit_batch": 128,
    "sg_fraction": 0.25,  # semigroup penalty on a quarter of the batch: 2 extra no-grad forwards each
    "n_gen": 50_000,
    "chargen_nfe": [1, 2],  # one step + 2-step composition
    "teacher_nfe": [1, 2, 5, 10, 20],
}


def forward_gflop(n_times: int) -> float:
    from bench.methods.unet import PRESETS, UNet

    net = UNet(3, PRESETS["cifar10"], n_times=n_times, side=32).eval()
    x, t = torch.randn(2, 3, 32, 32), torch.rand(2)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        net(*([t] * n_times), x)
    return fc.get_total_flops() / 2 / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tflops", type=float, default=100.0, help="assumed sustained TFLOP/s (bf16)")
    ap.add_argument("--out", default="results/bench/cifar_recipe_flops.json")
    a = ap.parse_args()
    r, f1, f2 = RECIPE, forward_gflop(1), forward_gflop(2)
    stages = {
        "teacher": r["teacher_steps"] * r["batch"] * 3 * f1,
        "trajectories": r["n_traj"] * r["euler_steps"] * f1,
        "fit": r["fit_steps"] * r["fit_batch"] * (3 + 2 * r["sg_fraction"]) * f2,
        "evaluation (samples only)": r["n_gen"] * (sum(r["chargen_nfe"]) * f2 + sum(r["teacher_nfe"]) * f1),
    }
    total = sum(stages.values())  # GFLOP
    out = {
        "what": "FLOP count of the README's CIFAR-10 chargen recipe and the GPU hours it implies (an estimate)",
        "net": "U-Net preset cifar10",
        "forward_gflop_per_sample": {"one_time": round(f1, 3), "two_times": round(f2, 3)},
        "recipe": r,
        "pflop_by_stage": {k: round(v / 1e6, 1) for k, v in stages.items()},
        "pflop_total": round(total / 1e6, 1),
        "assumed_tflops": a.tflops,
        "gpu_hours_estimate": round(total / 1e3 / a.tflops / 3600, 2),
        "not_measured": "no GPU in the session that wrote this; replace with `bench doctor --gpu` throughput",
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "command": "python -m bench.perf.bench_flops",
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

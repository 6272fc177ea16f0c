"""U-Net presets at 28x28 on this machine: parameters, training steps/s of one flow-matching step (forward,
backward, Adam) at batch 128 and the per-sample time of one forward at batch 256, with and without channels_last,
at 1 and at all cores' threads; interleaved repeats, the median kept, the load average beside it.

    python -m bench.perf.bench_unet [--presets micro,tiny,compact,small] [--repeats 3]
        [--out results/bench/unet_presets_28px.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from bench.core.checkpoint import atomic_write_json
from bench.eval.timing import cores_available, load_average
from bench.methods.nets import count_params
from bench.methods.unet import PRESETS, UNet

SIDE, TRAIN_BATCH, FWD_BATCH = 28, 128, 256


def _net(preset: str, channels_last: bool) -> UNet:
    torch.manual_seed(0)
    net = UNet(1, PRESETS[preset], 1, side=SIDE)
    return net.to(memory_format=torch.channels_last) if channels_last else net


def _x(n: int, channels_last: bool) -> torch.Tensor:
    x = torch.randn(n, 1, SIDE, SIDE)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def train_step_s(preset: str, channels_last: bool, steps: int) -> float:
    net = _net(preset, channels_last)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    x1, x0, t = _x(TRAIN_BATCH, channels_last), _x(TRAIN_BATCH, channels_last), torch.rand(TRAIN_BATCH)
    xt = (1 - t)[:, None, None, None] * x0 + t[:, None, None, None] * x1
    for i in range(steps + 2):  # 2 warm-up steps
        if i == 2:
            t0 = time.perf_counter()
        loss = (net(t, xt) - (x1 - x0)).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - t0) / steps


@torch.no_grad()
def forward_per_sample_s(preset: str, channels_last: bool, calls: int) -> float:
    net = _net(preset, channels_last).eval()
    x, t = _x(FWD_BATCH, channels_last), torch.rand(FWD_BATCH)
    net(t, x)
    t0 = time.perf_counter()
    for _ in range(calls):
        net(t, x)
    return (time.perf_counter() - t0) / (calls * FWD_BATCH)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", default="micro,tiny,compact,small")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--out", default="results/bench/unet_presets_28px.json")
    a = ap.parse_args()
    presets = a.presets.split(",")
    load0, rows = load_average(), []
    for threads in sorted({1, cores_available()}):
        torch.set_num_threads(threads)
        for cl in (False, True):
            runs: dict[str, list[float]] = {p: [] for p in presets}
            fwd: dict[str, list[float]] = {p: [] for p in presets}
            for _ in range(a.repeats):  # interleaved over presets
                for p in presets:
                    runs[p].append(train_step_s(p, cl, a.steps))
                    fwd[p].append(forward_per_sample_s(p, cl, 3))
            for p in presets:
                step = statistics.median(runs[p])
                rows.append({"preset": p, "threads": threads, "channels_last": cl, "train_step_s": step,
                             "train_steps_per_s": 1 / step, "forward_per_sample_ms": 1e3 * statistics.median(fwd[p]),
                             "params": count_params(UNet(1, PRESETS[p], 1, side=SIDE))})  # fmt: skip
    res = {
        "what": f"U-Net presets at 1x{SIDE}x{SIDE}: flow-matching training step at batch {TRAIN_BATCH} (forward, "
        f"backward, Adam), forward per sample at batch {FWD_BATCH}; median of {a.repeats} interleaved repeats",
        "rows": rows,
        "cores": cores_available(),
        "load_avg_1min": [load0, load_average()],
        "torch": torch.__version__,
        "device": "cpu",
    }
    atomic_write_json(Path(a.out), res)
    for r in rows:
        print(json.dumps(r))


if __name__ == "__main__":
    main()

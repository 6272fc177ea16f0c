"""Wall-clock per sample (PROTOCOL.md): sampler + network on pre-drawn noise, warm-up discarded,
CUDA synchronised, median of repeats with spread."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def time_call(fn: Callable[[Tensor], object], x: Tensor, repeats: int = 7, warmup: int = 2) -> dict:
    """Median and spread (min, max) in seconds of ``fn(x)`` over ``repeats`` timed calls."""
    for _ in range(warmup):
        fn(x)
    _sync(x.device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(x)
        _sync(x.device)
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "repeats": repeats}


def default_timing_batch(device: torch.device, requested: int = 0) -> int:
    return requested if requested > 0 else (1024 if device.type == "cuda" else 256)


def time_sampler(fn: Callable[[Tensor], object], noise: Tensor, repeats: int) -> dict:
    """Latency at batch 1 and per-sample time at the batch of ``noise``."""
    big = time_call(fn, noise, repeats)
    one = time_call(fn, noise[:1], repeats)
    b = noise.shape[0]
    return {
        "per_sample_s": big["median_s"] / b,
        "per_sample_spread_s": [big["min_s"] / b, big["max_s"] / b],
        "latency_s": one["median_s"],
        "latency_spread_s": [one["min_s"], one["max_s"]],
        "batch": b,
        "repeats": repeats,
        "warmup": 2,
    }

"""Wall-clock per sample (PROTOCOL.md): sampler + network on pre-drawn noise, measured with
``torch.utils.benchmark.Timer.blocked_autorange`` (CUDA synchronised by it) after explicit warm-up calls;
median with the spread of the timed blocks, and the conditions (threads, load) recorded with it."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import torch
from torch import Tensor

# torch.utils.benchmark imports cpp_extension, which warns about CUDA_HOME on CPU-only machines: not ours to show
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
from torch.utils import benchmark  # noqa: E402

WARMUP = 2  # untimed calls before each measurement (compilation, allocator and cache warm-up)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def cores_available() -> int:
    """Cores this process may run on (affinity), not the machine's total."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def load_average() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


@torch.no_grad()
def time_call(fn: Callable[[Tensor], object], x: Tensor, min_blocks: int = 7, min_run_s: float = 0.2) -> dict:
    """Median and spread (min, max, IQR) in seconds of one ``fn(x)`` over at least ``min_blocks`` timed blocks
    of ``blocked_autorange``; ``WARMUP`` untimed calls first."""
    for _ in range(WARMUP):
        fn(x)
    timer = benchmark.Timer(stmt="fn(x)", globals={"fn": fn, "x": x}, num_threads=torch.get_num_threads())
    m = timer.blocked_autorange(min_run_time=min_run_s)
    while len(m.times) < min_blocks:
        m = benchmark.Measurement.merge([m, timer.blocked_autorange(min_run_time=min_run_s)])[0]
    return {
        "median_s": m.median,
        "iqr_s": m.iqr,
        "min_s": min(m.times),
        "max_s": max(m.times),
        "blocks": len(m.times),
        "calls_per_block": m.number_per_run,
    }


def default_timing_batch(device: torch.device, requested: int = 0) -> int:
    return requested if requested > 0 else (1024 if device.type == "cuda" else 256)


def time_sampler(fn: Callable[[Tensor], object], noise: Tensor, min_blocks: int, min_run_s: float = 0.2) -> dict:
    """Latency at batch 1 and per-sample time at the batch of ``noise``."""
    big = time_call(fn, noise, min_blocks, min_run_s)
    one = time_call(fn, noise[:1], min_blocks, min_run_s)
    b = noise.shape[0]
    return {
        "per_sample_s": big["median_s"] / b,
        "per_sample_spread_s": [big["min_s"] / b, big["max_s"] / b],
        "latency_s": one["median_s"],
        "latency_spread_s": [one["min_s"], one["max_s"]],
        "batch": b,
        "blocks": big["blocks"],
        "calls_per_block": big["calls_per_block"],
        "warmup": WARMUP,
        "timer": "torch.utils.benchmark.Timer.blocked_autorange",
    }

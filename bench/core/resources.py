"""Resource caps checked before anything is allocated: a config whose networks cannot fit in memory is refused
with one line (its parameter count and the GiB it needs), instead of a traceback after minutes of allocation."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from math import prod
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bench.errors import BenchError

# fp32 bytes held per trained parameter: the weight, its gradient and Adam's two moments (EMA copies are
# parameters of the method too, so they are counted as parameters)
BYTES_PER_PARAM = 4 * 4

# Generation on the host (no gradients): input elements per network call. One thread, the micro U-Net at 28x28
# (bench/perf/bench_unet.py's network): about 490 samples/s at batch 16-256, 240 at 1,024, 210 at 4,096; the
# compact preset 150 against 70 at 1,024. Beyond a few hundred images the activations leave the caches.
CPU_FORWARD_ELEMENTS = 1 << 18


def forward_batch(device: torch.device, sample_shape: Sequence[int]) -> int:
    """Samples per no-grad network call when generating (eval samples, trajectories, couplings): everything at
    once on an accelerator (0); on the host the batch whose inputs hold ``CPU_FORWARD_ELEMENTS`` elements
    (28x28: 334, 3x32x32: 85; 2-D points: 131,072, so never split in practice)."""
    return 0 if device.type != "cpu" else max(1, CPU_FORWARD_ELEMENTS // max(1, prod(sample_shape)))


def split_calls(fn: Callable[[Tensor], Tensor], x: Tensor, batch: int) -> Tensor:
    """``fn`` over ``x`` in row blocks of ``batch`` (0 = one call), concatenated: the same rows as one call for
    any per-sample map (fixed-step solvers), up to floating-point summation order."""
    if batch <= 0 or len(x) <= batch:
        return fn(x)
    return torch.cat([fn(part) for part in x.split(batch)])


def memory_available(device: torch.device) -> int | None:
    """Bytes free for this process on ``device`` (host: MemAvailable of /proc/meminfo), None if unknown."""
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError):
            return None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def meta_param_count(build: Any) -> int | None:
    """Parameters of ``build()`` constructed on the meta device (no memory); None if it cannot be built there
    (the real build then reports its own error)."""
    try:
        # a constructor that loads saved weights (a teacher's) warns that copying into meta tensors is a no-op
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            m = build()
    except BenchError:
        raise
    except Exception:  # noqa: BLE001 - a constructor that needs real tensors: no estimate, no refusal
        return None
    if not isinstance(m, torch.nn.Module):
        return None
    return sum(p.numel() for p in m.parameters())


def check_fits(what: str, build: Any, device: torch.device, available: int | None = None) -> None:
    """Refuse (BenchError) when ``build()``'s parameters need more than the memory available on ``device``."""
    n = meta_param_count(build)
    if n is None:
        return
    need = n * BYTES_PER_PARAM
    free = memory_available(device) if available is None else available
    if free is not None and need > free:
        raise BenchError(
            f"{what} has {n:,} parameters: about {need / 2**30:.1f} GiB to train (weights, gradients, Adam moments; "
            f"fp32), more than the {free / 2**30:.1f} GiB available on {device}; make the network smaller"
        )

"""Resource caps checked before anything is allocated: a config whose networks cannot fit in memory is refused
with one line (its parameter count and the GiB it needs), instead of a traceback after minutes of allocation."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch

from bench.errors import BenchError

# fp32 bytes held per trained parameter: the weight, its gradient and Adam's two moments (EMA copies are
# parameters of the method too, so they are counted as parameters)
BYTES_PER_PARAM = 4 * 4


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

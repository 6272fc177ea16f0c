"""torch.distributed for the engine: one process per device, launched by ``torchrun`` (or ``bench run
--nproc N``, which launches torchrun). Everything here is a no-op for a single process."""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Callable

import torch
import torch.distributed as tdist
from torch import Tensor, nn

from bench.errors import BenchError

# A rank that dies (or never arrives) makes every collective of the others fail after this many seconds.
DEFAULT_TIMEOUT_S = float(os.environ.get("BENCH_DIST_TIMEOUT_S", "120"))


class Shard:
    """The process group as a one-shot stage or a sampler sees it (1 process: rank 0 of 1)."""

    rank: int = 0
    world: int = 1

    def range(self, n: int) -> range:
        """This process's contiguous share of ``range(n)``."""
        per = -(-n // self.world)
        return range(min(n, self.rank * per), min(n, (self.rank + 1) * per))

    def gather(self, x: Tensor, n: int) -> Tensor:
        """Concatenate every process's share (rows in rank order) into the full ``n`` rows, on every process."""
        return x

    def barrier(self) -> None:
        return None

    def sum(self, x: Tensor) -> Tensor:
        return x


class Dist(Shard):
    """The process group of this run (``torchrun`` sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT)."""

    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0) -> None:
        self.rank, self.world, self.local_rank = rank, world, local_rank

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def gather(self, x: Tensor, n: int) -> Tensor:
        """Every rank's share of ``range(n)`` (see :meth:`Shard.range`), concatenated in rank order."""
        if not self.active:
            return x
        per = -(-n // self.world)
        dev = self._comm_device(x)
        buf = torch.zeros(per, *x.shape[1:], dtype=x.dtype, device=dev)
        buf[: len(x)] = x.to(dev)
        parts = [torch.empty_like(buf) for _ in range(self.world)]
        self._call(tdist.all_gather, parts, buf)
        out = torch.cat([p[: len(range(n)[r * per : (r + 1) * per])] for r, p in enumerate(parts)])
        return out.to(x.device)

    def barrier(self) -> None:
        if self.active:
            self._call(tdist.barrier)

    def sum(self, x: Tensor) -> Tensor:
        if not self.active:
            return x
        y = x.clone().to(self._comm_device(x))
        self._call(tdist.all_reduce, y)
        return y.to(x.device)

    def max(self, x: Tensor) -> Tensor:
        if not self.active:
            return x
        y = x.clone().to(self._comm_device(x))
        self._call(tdist.all_reduce, y, op=tdist.ReduceOp.MAX)
        return y.to(x.device)

    def broadcast_object(self, obj):
        """Rank 0's ``obj`` on every rank (e.g. the run id, so all ranks write to one folder)."""
        if not self.active:
            return obj
        box = [obj]
        self._call(tdist.broadcast_object_list, box, src=0)
        return box[0]

    def wrap(self, module: nn.Module, device: torch.device) -> nn.Module:
        """DistributedDataParallel around a trained network (identity for one process)."""
        if not self.active:
            return module
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        return DDP(module, device_ids=ids, broadcast_buffers=True)

    def _comm_device(self, x: Tensor) -> torch.device:
        return x.device if tdist.get_backend() == "nccl" else torch.device("cpu")

    def _call(self, fn: Callable, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (RuntimeError, tdist.DistBackendError) as e:
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise BenchError(
                f"rank {self.rank}/{self.world}: a collective failed ({first}); another rank probably died — "
                "see its output above"
            ) from None


_DIST: Dist | None = None


def init_from_env(device_name: str = "auto") -> Dist:
    """Join the process group torchrun describes (once); a single process without torchrun is rank 0 of 1."""
    global _DIST
    if _DIST is not None:
        return _DIST
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        _DIST = Dist()
        return _DIST
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_name != "cpu"
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local)
    try:
        tdist.init_process_group(backend, timeout=_dt.timedelta(seconds=DEFAULT_TIMEOUT_S))
    except Exception as e:  # noqa: BLE001 - rendezvous failures become one line
        raise BenchError(f"could not join the process group ({backend}, rank {rank}/{world}): {e}") from None
    _DIST = Dist(rank, world, local)
    return _DIST


def current() -> Dist:
    return _DIST if _DIST is not None else Dist()


def shutdown(sync: bool = True) -> None:
    """Leave the process group. ``sync``: first wait for every rank (a clean exit), so no rank tears down its
    gloo connections while a peer's are still in use (that race aborted a rank with std::terminate, about one
    exit in 15); after an error a peer may be gone, so no waiting then."""
    global _DIST
    if _DIST is not None and _DIST.active and tdist.is_initialized():
        try:
            if sync:
                tdist.barrier()
        finally:
            tdist.destroy_process_group()
    _DIST = None

"""A cache of teacher trajectories on a time grid (chargen's discrete characteristics): made in seeded chunks by any
number of processes, held in memory or in a row file on disk (read two states per pair, never whole
trajectories), resumed after a kill, or taken from another finished run (``trajectories_from``) whose teacher, grid
and solver are checked to be this run's. The bookkeeping only: what a trajectory is comes from the owner's
``make(z) -> (n, K + 1, *shape)``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench.methods.teacher import find_run_checkpoint
from torch import Tensor

from bench.core.distributed import Shard
from bench.core.noise import seeded_noise
from bench.core.rowfile import RowFile
from bench.errors import BenchError

TRAJ_SEED = 7_000_000  # trajectory i starts from the noise of seed TRAJ_SEED + i (any number of processes)
MEMORY_CACHE_MAX = 2 << 30  # cache=auto: trajectories up to 2 GiB stay in memory, larger sets go to disk
CHUNK_BYTES = 256 << 20  # trajectories generated per chunk are capped at this many bytes (CIFAR, K=100: 207)


class TrajectoryCache:
    """``n`` trajectories of ``K + 1`` states of ``shape``, trajectory i from seed TRAJ_SEED + i, so a resume or any
    number of processes (each making its share of the seeds) produce the same set. ``mode``: memory | disk |
    none (fresh trajectories per batch: the owner makes them) | auto (memory up to MEMORY_CACHE_MAX bytes)."""

    def __init__(self, n: int, K: int, shape: tuple[int, ...], mode: str, chunk: int, folder: Path,
                 make: Callable[[Tensor], Tensor], source: dict | None = None) -> None:  # fmt: skip
        self.n, self.K, self.shape, self.chunk, self.make_fn = n, K, tuple(shape), chunk, make
        self.path = folder / f"trajectories-K{K}-m{n}.npy"
        self.source = source  # a finished run's set (resolve_source), its first rows reused
        self.mode = mode if mode != "auto" else ("memory" if n * self.bytes_per() <= MEMORY_CACHE_MAX else "disk")
        self.store: Tensor | RowFile | None = None

    def bytes_per(self) -> int:
        """Bytes of one trajectory (K + 1 states, float32)."""
        return (self.K + 1) * int(np.prod(self.shape)) * 4

    def copied(self) -> int:
        """Rows taken from the source run (all of them when it holds fewer than n)."""
        return 0 if self.source is None else min(self.source["n_traj"], self.n)

    def needs_making(self) -> bool:
        return self.mode != "none" and self.copied() < self.n

    @torch.no_grad()
    def make(self, shard: Shard | None = None) -> dict[str, Any]:
        """Generate (and cache) the set in chunks; on disk each chunk is written at its file offset as it is made,
        so host memory holds one chunk (<= CHUNK_BYTES), never the set. Rows below the source's size are copied
        from it instead: they are the rows this loop would make. Returns the stage's record entry."""
        shard, copied = shard or Shard(), self.copied()
        src = RowFile.open(self.source["path"]) if copied else None
        full = (self.n, self.K + 1, *self.shape)
        mine = shard.range(self.n)
        per_chunk = max(1, min(self.chunk, CHUNK_BYTES // self.bytes_per()))
        if self.mode == "disk":
            if shard.rank == 0:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                RowFile.create(self.path, full).close()
            shard.barrier()
            store, offset = RowFile.open(self.path, writable=True), 0
        else:
            store, offset = torch.empty(len(mine), *full[1:]), mine.start
        start = mine.start
        while start < mine.stop:
            stop = min(copied, mine.stop) if start < copied else mine.stop  # a chunk is all copied or all made
            n = min(per_chunk, stop - start)
            if start < copied:
                tr = torch.from_numpy(src.read_rows(start, n))
            else:
                tr = self.make_fn(seeded_noise(self.shape, range(TRAJ_SEED + start, TRAJ_SEED + start + n))).cpu()
            if self.mode == "disk":
                store.write_rows(start, tr.numpy())
            else:
                store[start - offset : start - offset + n] = tr
            start += n
        if src is not None:
            src.close()
        if self.mode == "disk":
            store.close()
            shard.barrier()
            self.store = RowFile.open(self.path)
        else:
            self.store = shard.gather(store, self.n)
        return {"n_traj": self.n, "copied": copied, "K": self.K, "cache": self.mode, "chunk": per_chunk,
                "bytes": int(np.prod(full)) * 4}  # fmt: skip

    def ensure(self) -> None:
        """Before the fit (also on resume): open the cached set, or the source's, or make it again (it is seeded:
        regenerating gives exactly the set the run was fitting to)."""
        if self.mode == "none" or self.store is not None:
            return
        if self.source is not None and self.copied() == self.n:
            self.store = RowFile.open(self.source["path"])  # rows are drawn below n: only those are read
            return
        if self.mode == "disk" and self.path.exists():
            f, bad = open_rows(self.path, (self.n, self.K + 1, *self.shape))
            if f is not None:
                self.store = f
                return
            warnings.warn(f"{self.path}: unusable trajectory cache ({bad}); regenerating it", stacklevel=2)
        self.make()

    def all(self) -> Tensor:
        """Every cached trajectory (n, K + 1, *shape) as one tensor (tests, small sets)."""
        s = self.store
        return torch.from_numpy(s.read_rows(0, self.n)) if isinstance(s, RowFile) else s

    def pair_states(self, rows: Tensor, k: Tensor, l: Tensor) -> tuple[Tensor, Tensor]:
        """States k and l of trajectories ``rows`` (from disk: two positional reads per pair), on k's device."""
        dev = k.device
        if isinstance(self.store, RowFile):
            kl = torch.cat([k, l]).cpu().numpy()
            states = torch.from_numpy(self.store.read_items(np.concatenate([rows.numpy()] * 2), kl)).to(dev)
            return states[: len(k)], states[len(k) :]
        return self.store[rows, k.cpu()].to(dev), self.store[rows, l.cpu()].to(dev)

    def prior_cost(self, prior: dict) -> dict:
        """``prior`` (the reused teacher's cost) plus the reused rows' share of the source run's trajectories stage
        (rows this run generates on top of them are its own trajectories stage)."""
        src, used = self.source, self.copied()
        if src is None:
            return prior
        frac = used / src["n_traj"]
        walls = {**prior.get("wall_clock_s", {}), "trajectories": src["wall_s"] * frac}
        passes = None if src["passes"] is None else round(src["passes"] * frac)
        known = None if passes is None or prior.get("network_passes") is None else prior["network_passes"] + passes
        if used < self.n:
            rows = f"all {used} trajectories of run {src['run']} (the other {self.n - used} made here)"
        else:
            rows = f"the first {used} of {src['n_traj']} trajectories of run {src['run']}"
        return {"what": f"{prior['what']}; {rows}", "wall_clock_s": walls, "network_passes": known}

    def record_extra(self) -> dict:
        if self.source is None:
            return {}
        return {"trajectories_from": {"run": self.source["run"], "rows": self.copied(), "of": self.source["n_traj"]}}


def open_rows(path: Path, want: tuple[int, ...]) -> tuple[RowFile | None, str]:
    """(the trajectory file, "") when it opens with shape ``want`` in float32, else (None, why not)."""
    try:
        f = RowFile.open(path)
    except (OSError, ValueError, EOFError) as e:
        return None, str(e).splitlines()[0][:120] if str(e) else type(e).__name__
    if f.shape == want and f.dtype == np.float32:
        return f, ""
    f.close()
    return None, f"shape {f.shape}, not {want}"


def resolve_source(ref: str, workdir, method: str, grid: Tensor, solver: str, teacher_state: dict,
                   K: int, shape: tuple[int, ...]) -> dict:  # fmt: skip
    """Check that a finished ``method`` run's disk trajectories are the ones this run would generate (same teacher
    weights, grid and solver) and return their file, count and cost. A smaller set than this run's is extended:
    its rows are copied and only the rest are generated."""
    from bench.core.checkpoint import load_checkpoint

    ck_path = find_run_checkpoint(ref, workdir, "trajectories")
    ck = load_checkpoint(ck_path)
    mc, ts = ck["config"]["method"], ck["train_state"]
    info = ts.get("stage_info", {}).get("trajectories")
    if mc.get("name") != method or info is None or info.get("cache") != "disk":
        raise BenchError(f"{ck_path.parent}: no finished disk trajectory cache (a {method} run with cache=disk)")
    state, name = ck["method_state"], ck_path.parent.name
    if not torch.equal(state["grid"].to(grid), grid) or mc["solver"] != solver:
        raise BenchError(f"trajectories of {name}: grid or solver differ from this run's")
    if any(
        f"teacher.{k}" not in state or not torch.equal(state[f"teacher.{k}"].to(v), v) for k, v in teacher_state.items()
    ):
        raise BenchError(f"trajectories of {name} were made by another teacher than method.teacher.run")
    n_src = int(info["n_traj"])
    path = ck_path.parent / f"trajectories-K{K}-m{n_src}.npy"
    f, bad = open_rows(path, (n_src, K + 1, *shape))
    if f is None:
        raise BenchError(f"trajectories of {name}: {path} unusable ({bad})")
    f.close()
    passes = (ts.get("passes") or {}).get("trajectories")
    return {"run": name, "path": path, "n_traj": n_src, "wall_s": ts["wall_s"]["trajectories"], "passes": passes}

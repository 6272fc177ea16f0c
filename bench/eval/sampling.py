"""Batched generation from per-sample seeded noise (bench.core.noise): sample i depends only on its seed, never on the
batch size or the number of processes."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import Tensor

from bench.core.netswap import PRECISIONS, resolve_net, swapped
from bench.core.noise import seeded_noise
from bench.core.resources import forward_batch


class Samples:
    """Generated samples of one eval point and repeat, produced lazily in batches.

    ``batches()`` regenerates batch by batch (constant memory, for feature extractors); ``tensor()``
    materialises and caches all samples (for metrics on points). ``nfe`` is the mean NFE used.
    """

    def __init__(self, method, point, n: int, first_seed: int, batch: int, device: torch.device, ev=None) -> None:
        self.method, self.point, self.n, self.first_seed, self.batch, self.device, self.ev = (
            method,
            point,
            n,
            first_seed,
            batch,
            device,
            ev,
        )
        self._tensor: Tensor | None = None
        self._nfe: list[tuple[float, int]] = []

    def __len__(self) -> int:
        return self.n

    def _draw(self, seeds: range) -> tuple[Tensor, float]:
        """The samples of ``seeds`` and their mean NFE, in network calls of at most ``forward_batch`` samples
        (on the host large image batches are slower per sample; an adaptive solver's steps depend on its call's
        batch, so its samples do too)."""
        step = forward_batch(self.device, self.method.noise_shape) or len(seeds)
        parts = [self._call(seeds[i : i + step]) for i in range(0, len(seeds), step)]
        if len(parts) == 1:
            return parts[0]
        return torch.cat([x for x, _ in parts]), sum(nfe * len(x) for x, nfe in parts) / len(seeds)

    def _call(self, seeds: range) -> tuple[Tensor, float]:
        z = seeded_noise(self.method.noise_shape, seeds).to(self.device)
        if self.ev is None:
            return self.method.sample(z, self.point)
        if self.ev.channels_last and z.ndim == 4:
            z = z.contiguous(memory_format=torch.channels_last)
        with sampling_mode(self.method, self.ev, self.device):
            return self.method.sample(z, self.point)

    @torch.no_grad()
    def batches(self):
        """Yield CPU float32 batches in seed order. Under torch.distributed each process draws its share of
        every batch's seeds and the shares are gathered, so the samples are the same for any number of processes."""
        from bench.core.distributed import current

        if self._tensor is not None:
            yield from self._tensor.split(self.batch)
            return
        self._nfe = []
        dist = current()
        for start in range(0, self.n, self.batch):
            seeds = range(self.first_seed + start, self.first_seed + min(self.n, start + self.batch))
            mine = seeds[dist.range(len(seeds)).start : dist.range(len(seeds)).stop]
            x, nfe = self._draw(mine)
            self._nfe.append((nfe, len(seeds)))
            yield dist.gather(x.float().contiguous(), len(seeds)).cpu()

    def tensor(self) -> Tensor:
        if self._tensor is None:
            self._tensor = torch.cat(list(self.batches()))
        return self._tensor

    @property
    def nfe(self) -> float:
        if not self._nfe:
            for _ in self.batches():
                pass
        return sum(k * m for k, m in self._nfe) / sum(m for _, m in self._nfe)


def generate(method, point, n: int, first_seed: int, batch: int, device: torch.device) -> tuple[Tensor, float]:
    """``n`` samples (CPU float32) from ``method`` at eval point ``point``; returns (samples, mean NFE)."""
    s = Samples(method, point, n, first_seed, batch, device)
    x = s.tensor()
    return x, s.nfe


class TensorSamples(Samples):
    """Already-materialised samples (e.g. real data for the reference floor) behind the same interface."""

    def __init__(self, x: Tensor, batch: int = 2500) -> None:
        self._tensor, self.batch, self.n, self._nfe = x, batch, len(x), [(0.0, len(x))]


@contextlib.contextmanager
def sampling_mode(method: Any, ev: Any, device: torch.device):
    """Sampling as ``eval`` configures it: autocast dtype, torch.compile of the sampling networks."""
    wrapped = {}
    if ev.compile:  # compiled once per method and kept (a new wrapper per batch would recompile)
        cache = method.__dict__.setdefault("_bench_compiled", {})
        for n in method.sampling_nets():
            if n not in cache:
                cache[n] = torch.compile(getattr(*resolve_net(method, n)))
            wrapped[n] = cache[n]
    amp = torch.autocast(device.type, dtype=PRECISIONS[ev.precision], enabled=ev.precision != "fp32")
    with swapped(method, wrapped), amp:
        yield

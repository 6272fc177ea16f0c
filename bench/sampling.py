"""Per-sample seeded noise and batched generation: sample i depends only on its seed, never on the
batch size or the number of processes."""

from __future__ import annotations

import torch
from torch import Tensor


def seeded_noise(shape: tuple[int, ...], seeds: range | list[int]) -> Tensor:
    """Standard normal noise, one ``torch.Generator`` per sample: row i is N(0, I) drawn with seeds[i]."""
    g = torch.Generator()
    out = torch.empty(len(seeds), *shape)
    for i, s in enumerate(seeds):
        g.manual_seed(int(s))
        out[i] = torch.randn(shape, generator=g)
    return out


@torch.no_grad()
def generate(method, point, n: int, first_seed: int, batch: int, device: torch.device) -> tuple[Tensor, float]:
    """``n`` samples (CPU float32) from ``method`` at eval point ``point``; returns (samples, mean NFE)."""
    chunks, nfes = [], []
    for start in range(0, n, batch):
        seeds = range(first_seed + start, first_seed + min(n, start + batch))
        z = seeded_noise(method.spec.shape, seeds).to(device)
        x, nfe = method.sample(z, point)
        chunks.append(x.float().cpu())
        nfes.append((nfe, len(seeds)))
    mean_nfe = sum(k * m for k, m in nfes) / n
    return torch.cat(chunks), mean_nfe

"""The suite's noise convention: one generator per sample, so sample i is the same wherever it is drawn (any
batch size, any process, training caches and evaluation alike)."""

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

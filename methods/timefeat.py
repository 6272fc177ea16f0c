"""Time inputs of the networks: per-row times and their Fourier (or raw) features, shared by the MLP (nets.py)
and the U-Net (unet.py)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class FourierTime(nn.Module):
    """Fixed features of a time in [0, 1], followed by a learned 2-layer embedding: sin/cos at ``n_freq``
    frequencies log-spaced from 1 to ``max_freq`` (rad per unit time), or with ``max_freq = 0`` the time itself
    (one raw feature: a smooth embedding, what d/dt through the network in JVP-based losses needs)."""

    def __init__(self, out: int, n_freq: int = 32, max_freq: float = 1000.0) -> None:
        super().__init__()
        self.raw = max_freq <= 0
        freqs = torch.exp(torch.linspace(0, math.log(max(max_freq, 1.0)), n_freq))
        self.register_buffer("freqs", freqs, persistent=False)
        self.net = nn.Sequential(nn.Linear(1 if self.raw else 2 * n_freq, out), nn.SiLU(), nn.Linear(out, out))

    def forward(self, t: Tensor) -> Tensor:
        if self.raw:
            return self.net(t[:, None])
        a = t[:, None] * self.freqs[None]
        return self.net(torch.cat([torch.sin(a), torch.cos(a)], 1))

    def zero_(self) -> FourierTime:
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)
        return self


def as_batch(t: Tensor | float, x: Tensor) -> Tensor:
    """A time (float, 0-d or (B,) tensor) as one value per row of ``x``."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    return t.expand(x.shape[0]) if t.ndim == 0 else t.reshape(x.shape[0])

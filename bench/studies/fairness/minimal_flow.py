"""Flow matching (Lipman et al. 2023; rectified flow, Liu et al. 2022), minimal: v(x, t) regressed on x1 - x0 at
x_t = (1 - t) x0 + t x1, t uniform; Adam lr 1e-3, an EMA (0.999) for sampling. The teacher of the minimal
distillation methods; ``euler`` integrates it (also with a shared per-step time for any batch)."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from bench.studies.fairness.harness import BATCH, LR, MLP, Data, ema_, score


def train(
    name: str, seed: int, steps: int, pairs: tuple[Tensor, Tensor] | None = None, init: nn.Module | None = None
) -> nn.Module:
    """A flow on the data (or, given ``pairs`` = (z, x), on that fixed coupling: a reflow, started from ``init``);
    returns its EMA."""
    torch.manual_seed(seed)
    data = Data(name, seed)
    v = MLP(3, 2) if init is None else copy.deepcopy(init).requires_grad_(True)
    ema, opt = copy.deepcopy(v), torch.optim.Adam(v.parameters(), LR)
    for k in range(steps):
        if pairs is None:
            x1 = data()
            x0 = torch.randn_like(x1)
        else:
            i = torch.randint(0, len(pairs[0]), (BATCH,))
            x0, x1 = pairs[0][i], pairs[1][i]
        t = torch.rand(BATCH)
        loss = (v((1 - t[:, None]) * x0 + t[:, None] * x1, t) - (x1 - x0)).pow(2).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema_(ema, v, min(0.999, (1 + k) / (10 + k)))
    return ema


@torch.no_grad()
def euler(v: nn.Module, z: Tensor, n: int) -> Tensor:
    x = z
    for j in range(n):
        x = x + v(x, torch.full((len(x),), j / n)) / n
    return x


def run(name: str, seed: int, steps: int) -> dict[str, list[float]]:
    v = train(name, seed, steps)
    return {str(n): score(name, lambda g, n=n: euler(v, torch.randn(5000, 2, generator=g), n), seed) for n in (1, 128)}

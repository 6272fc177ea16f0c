"""Shortcut models (Frans, Hafner, Levine, Abbeel 2024, arXiv 2410.12557), minimal: s(x_t, t, d) with x_t =
(1 - t) x0 + t x1; 3/4 of each batch flow matching at d = 0 (target x1 - x0), 1/4 self-consistency
s(x_t, t, 2d) = sg[(s(x_t, t, d) + s(x_t + d s(x_t, t, d), t + d, d)) / 2] with 2d = 2^-k, k uniform in 0..6
(M = 128) and t on the 2d grid, the smallest d queried at d = 0; targets from an EMA (0.999) of s; Adam 1e-3.
Sampling: k uniform steps x <- x + s(x, j/k, 1/k) / k."""

from __future__ import annotations

import copy

import torch

from bench.studies.fairness.harness import BATCH, LR, MLP, Data, ema_, score


def run(name: str, seed: int, steps: int) -> dict[str, list[float]]:
    torch.manual_seed(seed)
    data, s = Data(name, seed), MLP(4, 2)
    ema, opt = copy.deepcopy(s), torch.optim.Adam(s.parameters(), LR)
    m = BATCH // 4
    for it in range(steps):
        x1 = data()
        x0 = torch.randn_like(x1)
        k = torch.randint(0, 7, (m,))
        two_d = 2.0 ** (-k.float())
        t = torch.cat([torch.floor(torch.rand(m) / two_d) * two_d, torch.rand(BATCH - m)])
        d_in = torch.cat([two_d, torch.zeros(BATCH - m)])
        xt = (1 - t[:, None]) * x0 + t[:, None] * x1
        with torch.no_grad():
            d = two_d / 2
            dq = torch.where(k == 6, torch.zeros_like(d), d)
            u1 = ema(xt[:m], t[:m], dq)
            u2 = ema(xt[:m] + d[:, None] * u1, t[:m] + d, dq)
            target = torch.cat([(u1 + u2) / 2, (x1 - x0)[m:]])
        loss = (s(xt, t, d_in) - target).pow(2).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema_(ema, s, min(0.999, (1 + it) / (10 + it)))

    def sample(k: int):
        def g(gen: torch.Generator) -> torch.Tensor:
            x = torch.randn(5000, 2, generator=gen)
            for j in range(k):
                x = x + ema(x, torch.full((5000,), j / k), torch.full((5000,), 1 / k)) / k
            return x

        return g

    return {str(k): score(name, sample(k), seed) for k in (1, 2, 4)}

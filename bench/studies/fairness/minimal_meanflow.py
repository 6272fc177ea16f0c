"""MeanFlow (Geng et al. 2025, arXiv 2505.13447), minimal: average velocity u(t, r, x) (noise t = 0, data t = 1,
x_r = x_t + (r - t) u), loss || u - sg(v + (r - t) d/dt u) ||^2 with d/dt u from one JVP along (1, 0, v),
adaptive weight 1 / (||.||^2 + 1e-3)^0.5; (t, r) uniform and sorted, 75% of the pairs with r = t; constant
lr 1e-3, no EMA. Sampling: x = z + u(0, 1, z), and two half steps for NFE 2."""

from __future__ import annotations

import torch
from torch.func import jvp

from bench.studies.fairness.harness import BATCH, LR, MLP, Data, average_velocity_sampler, score


def run(name: str, seed: int, steps: int) -> dict[str, list[float]]:
    torch.manual_seed(seed)
    data, u = Data(name, seed), MLP(4, 2)
    opt = torch.optim.Adam(u.parameters(), LR)
    for _ in range(steps):
        x1 = data()
        x0 = torch.randn_like(x1)
        a, b = torch.rand(BATCH), torch.rand(BATCH)
        t, r = torch.minimum(a, b), torch.maximum(a, b)
        r = torch.where(torch.rand(BATCH) < 0.75, t, r)
        xt, v = (1 - t[:, None]) * x0 + t[:, None] * x1, x1 - x0
        out, dudt = jvp(lambda x, t_, r_: u(x, t_, r_), (xt, t, r), (v, torch.ones_like(t), torch.zeros_like(r)))
        target = (v + (r - t)[:, None] * dudt).detach()
        sq = (out - target).pow(2).sum(1)
        loss = (sq / (sq.detach() + 1e-3).sqrt()).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    return {
        "1": score(name, average_velocity_sampler(u, 1), seed),
        "2": score(name, average_velocity_sampler(u, 2), seed),
    }

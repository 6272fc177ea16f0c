"""Consistency distillation (Song, Dhariwal, Chen, Sutskever 2023, arXiv 2303.01469, Algorithm 2), minimal, on a
flow teacher (minimal_flow): f(x, t) = x + (1 - t) F(x, t) (boundary f(x, 1) = x at the data), N = 18 Karras
levels (sigma 0.002 .. 80, rho 7) placed at t = 1 / (1 + sigma) on the path x_t = (1 - t) z + t x; loss
|| f(x_{t_n}, t_n) - sg f_target(x^_{t_{n+1}}, t_{n+1}) ||^2 with x^ one Heun step of the teacher, n uniform, the
target an EMA (mu 0.95) of f; F starts as the teacher; Adam 1e-3, samples from an EMA (0.999).
Sampling: f(z, t_0); NFE 2 re-noises to t = 0.42 (CM's mid time) and maps again."""

from __future__ import annotations

import copy

import torch

from bench.studies.fairness import minimal_flow as fm
from bench.studies.fairness.harness import BATCH, LR, Data, ema_, score


def run(name: str, seed: int, teacher_steps: int, fit_steps: int, n: int = 18) -> dict[str, list[float]]:
    v = fm.train(name, seed, teacher_steps)
    i = torch.arange(n, dtype=torch.float64)
    sig = (80 ** (1 / 7) + i / (n - 1) * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7  # decreasing
    grid = (1 / (1 + sig)).float()  # increasing times, noise -> data
    data, net = Data(name, seed), copy.deepcopy(v).requires_grad_(True)
    target, ema, opt = copy.deepcopy(net), copy.deepcopy(net), torch.optim.Adam(net.parameters(), LR)

    def f(m, x, t):
        return x + (1 - t)[:, None] * m(x, t)

    for k in range(fit_steps):
        x1 = data()
        j = torch.randint(0, n - 1, (BATCH,))
        t, s = grid[j], grid[j + 1]
        xt = (1 - t[:, None]) * torch.randn_like(x1) + t[:, None] * x1
        with torch.no_grad():
            d1 = v(xt, t)
            xe = xt + (s - t)[:, None] * d1
            xs = xt + 0.5 * (s - t)[:, None] * (d1 + v(xe, s))
            y = f(target, xs, s)
        loss = (f(net, xt, t) - y).pow(2).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema_(target, net, 0.95)
        ema_(ema, net, min(0.999, (1 + k) / (10 + k)))

    def sample(k: int):
        def g(gen: torch.Generator) -> torch.Tensor:
            z = torch.randn(k, 5000, 2, generator=gen)
            x = f(ema, z[0], torch.full((5000,), float(grid[0])))
            if k == 2:
                x = f(ema, 0.58 * z[1] + 0.42 * x, torch.full((5000,), 0.42))
            return x

        return g

    return {"1": score(name, sample(1), seed), "2": score(name, sample(2), seed)}

"""Easy Consistency Tuning (Geng et al. 2024, arXiv 2406.14548), minimal: f(x, t) = x + (1 - t) F(x, t) started
from a flow teacher (minimal_flow); sigma_t ~ lognormal(-1.1, 2), sigma_r = max(0, sigma_t (1 - n / 2^(a+1)))
with n = 1 + 8 sigmoid(-sigma_t) and a the curriculum stage (8 stages over the budget); t = 1 / (1 + sigma);
loss w || f(x_t, t) - sg f(x_r, r) ||_huber, w = 1 / (sigma_t - sigma_r), same (noise, data) for both times,
pseudo-Huber c = 0.00054 sqrt(2); Adam 1e-3, samples from an EMA (0.999). NFE 2 re-noises to t = 0.42."""

from __future__ import annotations

import copy
import math

import torch

from bench.studies.fairness import minimal_flow as fm
from bench.studies.fairness.harness import BATCH, LR, Data, ema_, score


def run(name: str, seed: int, teacher_steps: int, fit_steps: int, stages: int = 8) -> dict[str, list[float]]:
    net = copy.deepcopy(fm.train(name, seed, teacher_steps)).requires_grad_(True)
    data, ema, opt = Data(name, seed), copy.deepcopy(net), torch.optim.Adam(net.parameters(), LR)
    c = 0.00054 * math.sqrt(2)

    def f(m, x, t):
        return x + (1 - t)[:, None] * m(x, t)

    for k in range(fit_steps):
        x1 = data()
        st = torch.exp(-1.1 + 2.0 * torch.randn(BATCH, dtype=torch.float64))
        a = min(stages - 1, k * stages // fit_steps)
        sr = (st * (1 - (1 + 8 * torch.sigmoid(-st)) / 2 ** (a + 1))).clamp_min(0)
        t, r = (1 / (1 + st)).float(), (1 / (1 + sr)).float()
        x0 = torch.randn_like(x1)
        with torch.no_grad():
            y = f(net, (1 - r[:, None]) * x0 + r[:, None] * x1, r)
        d = f(net, (1 - t[:, None]) * x0 + t[:, None] * x1, t) - y
        loss = ((torch.sqrt(d.pow(2).sum(1) + c * c) - c) / (st - sr).float()).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema_(ema, net, 0.999)

    def sample(k):
        def g(gen):
            z = torch.randn(5000, 2, generator=gen)
            x = f(ema, z, torch.zeros(5000))
            if k == 2:
                x = f(ema, 0.58 * torch.randn(5000, 2, generator=gen) + 0.42 * x, torch.full((5000,), 0.42))
            return x

        return g

    return {"1": score(name, sample(1), seed), "2": score(name, sample(2), seed)}

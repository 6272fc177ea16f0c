"""sCT (Lu & Song 2024, arXiv 2410.11081, Algorithm 1), minimal, in the paper's own TrigFlow form with sigma_d the
data's std: x_tau = cos(tau) x + sin(tau) sigma_d z, f(x, tau) = cos(tau) x - sin(tau) sigma_d F(x / sigma_d, tau),
tau = arctan(e^n / sigma_d), n ~ N(-1.0, 1.4^2); tangent g = -cos^2 (sigma_d F^- - dx/dtau) - r cos sin (x_tau +
sigma_d dF^-/dtau), dF^-/dtau from one JVP of the stop-gradient net, r from 0 to 1 over the first 1,000 steps,
g / (||g|| + 0.1); loss e^w / D ||F - F^- - g||^2 - w with w(tau) a small learned MLP; Adam 1e-3, samples from an
EMA (0.999). Sampling: f(sigma_d z, pi/2); NFE 2 re-noises at tau = 1.1."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torch.func import jvp

from bench.studies.fairness import harness
from bench.studies.fairness.harness import BATCH, LR, MLP, Data, ema_, score


def run(name: str, seed: int, steps: int, warmup: int = 1000) -> dict[str, list[float]]:
    torch.manual_seed(seed)
    data, net = Data(name, seed), MLP(3, 2)
    sd = data(10_000).std().item()
    w = nn.Sequential(nn.Linear(1, 64), nn.SiLU(), nn.Linear(64, 1))
    nn.init.zeros_(w[2].weight)
    nn.init.zeros_(w[2].bias)
    ema, opt = copy.deepcopy(net), torch.optim.Adam([*net.parameters(), *w.parameters()], LR)
    for k in range(steps):
        x = data()
        z = torch.randn_like(x) * sd
        tau = torch.atan(torch.exp(torch.randn(BATCH) * 1.4 - 1.0) / sd)
        c, s = torch.cos(tau)[:, None], torch.sin(tau)[:, None]
        xt, dxdt = c * x + s * z, c * z - s * x
        with torch.no_grad():
            f_m, df = jvp(lambda y, a: net(y / sd, a), (xt, tau), (dxdt, torch.ones_like(tau)))
            g = -c * c * (sd * f_m - dxdt) - min(1.0, k / warmup) * c * s * (xt + sd * df)
            g = g / (g.norm(dim=1, keepdim=True) + 0.1)
        wt = w(tau[:, None]).squeeze(1)
        loss = (wt.exp() / 2 * ((net(xt / sd, tau) - f_m - g) ** 2).sum(1) - wt).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema_(ema, net, 0.999)

    def sampler(nfe: int):
        def draw(gen: torch.Generator) -> torch.Tensor:
            n = harness.N_EVAL
            zs = torch.randn(nfe, n, 2, generator=gen) * sd
            x = -sd * ema(zs[0] / sd, torch.full((n,), math.pi / 2))  # f at tau = pi/2: cos 0, sin 1
            if nfe == 2:
                a = torch.full((n,), 1.1)
                xa = math.cos(1.1) * x + math.sin(1.1) * zs[1]
                x = math.cos(1.1) * xa - math.sin(1.1) * sd * ema(xa / sd, a)
            return x

        return draw

    return {"1": score(name, sampler(1), seed), "2": score(name, sampler(2), seed)}

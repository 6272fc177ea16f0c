"""GANs on points, minimal: G (16-d Gaussian latent -> 4 x 256 ReLU -> 2), D (2 -> 4 x 256 LeakyReLU(0.2) -> 1),
each paper's loss and optimiser: ``ns`` non-saturating (Goodfellow et al. 2014; Adam 2e-4, betas (0.5, 0.999),
1 D step), ``wgan-gp`` (Gulrajani et al. 2017; Adam 1e-4, betas (0.5, 0.9), 5 critic steps, lambda 0.1 as in the
authors' toy-data script; 10 is their image value),
``hinge-sn`` hinge loss with spectral normalisation of D (Miyato et al. 2018; Adam 2e-4, betas (0.5, 0.999),
1 D step); the generator sampled from an EMA (0.999) of its weights. ``steps`` counts generator steps."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from bench.studies.fairness.harness import MLP, Data, ema_, score

RECIPES = {"ns": (2e-4, (0.5, 0.999), 1), "wgan-gp": (1e-4, (0.5, 0.9), 5), "hinge-sn": (2e-4, (0.5, 0.999), 1)}
GP_WEIGHT = 0.1


def run(name: str, seed: int, steps: int, kind: str = "ns", batch: int = 512) -> dict[str, list[float]]:
    torch.manual_seed(seed)
    lr, betas, n_d = RECIPES[kind]
    data, g, d = Data(name, seed), MLP(16, 2, act=nn.ReLU), MLP(2, 1, act=lambda: nn.LeakyReLU(0.2))
    if kind == "hinge-sn":
        for m in d.modules():
            if isinstance(m, nn.Linear):
                nn.utils.parametrizations.spectral_norm(m)
    ema = copy.deepcopy(g)
    og, od = torch.optim.Adam(g.parameters(), lr, betas=betas), torch.optim.Adam(d.parameters(), lr, betas=betas)
    for k in range(steps):
        for _ in range(n_d):
            x = data(batch)
            with torch.no_grad():
                fake = g(torch.randn(batch, 16))
            dr, df = d(x), d(fake)
            if kind == "ns":
                loss = F.softplus(-dr).mean() + F.softplus(df).mean()
            elif kind == "hinge-sn":
                loss = F.relu(1 - dr).mean() + F.relu(1 + df).mean()
            else:
                a = torch.rand(batch, 1)
                xh = (a * x + (1 - a) * fake).requires_grad_(True)
                (gr,) = torch.autograd.grad(d(xh).sum(), xh, create_graph=True)
                loss = df.mean() - dr.mean() + GP_WEIGHT * (gr.norm(dim=1) - 1).pow(2).mean()
            od.zero_grad()
            loss.backward()
            od.step()
        df = d(g(torch.randn(batch, 16)))
        loss = F.softplus(-df).mean() if kind == "ns" else -df.mean()
        og.zero_grad()
        loss.backward()
        og.step()
        ema_(ema, g, min(0.999, (1 + k) / (10 + k)))
    return {"1": score(name, lambda gen: ema(torch.randn(5000, 16, generator=gen)), seed)}

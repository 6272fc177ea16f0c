"""2-rectified flow + distillation (Liu, Gong, Liu 2022, arXiv 2209.03003), minimal: a flow (minimal_flow), its
coupling (z, X_1(z)) from ``pair_steps`` Euler steps for ``n_pairs`` noises, a second flow fitted on the
straight paths of the coupling (started from the first, as the paper's code does), then its coupling distilled
into one step, x = z + u(z) trained on || z + u(z) - X_1(z) ||^2 (started from the reflowed flow at t = 0)."""

from __future__ import annotations

import copy

import torch

from bench.studies.fairness import minimal_flow as fm
from bench.studies.fairness.harness import BATCH, LR, ema_, score


def run(
    name: str,
    seed: int,
    teacher_steps: int,
    reflow_steps: int,
    distill_steps: int,
    n_pairs: int = 20_000,
    pair_steps: int = 100,
) -> dict[str, list[float]]:
    v1 = fm.train(name, seed, teacher_steps)
    gen = torch.Generator().manual_seed(seed + 7)
    z = torch.randn(n_pairs, 2, generator=gen)
    v2 = fm.train(name, seed, reflow_steps, pairs=(z, fm.euler(v1, z, pair_steps)), init=v1)
    z = torch.randn(n_pairs, 2, generator=gen)
    x = fm.euler(v2, z, pair_steps)
    g = copy.deepcopy(v2).requires_grad_(True)  # u(z) = v2(z, 0) at the start: one Euler step of the reflow
    ema, opt = copy.deepcopy(g), torch.optim.Adam(g.parameters(), LR)
    for k in range(distill_steps):
        i = torch.randint(0, n_pairs, (BATCH,))
        loss = (z[i] + g(z[i], torch.zeros(BATCH)) - x[i]).pow(2).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema_(ema, g, min(0.999, (1 + k) / (10 + k)))

    def one_step(gen: torch.Generator) -> torch.Tensor:
        z = torch.randn(5000, 2, generator=gen)
        return z + ema(z, torch.zeros(5000))

    return {
        "1": score(name, one_step, seed),
        "reflow-euler-2": score(name, lambda g_: fm.euler(v2, torch.randn(5000, 2, generator=g_), 2), seed),
    }

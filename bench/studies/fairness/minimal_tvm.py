"""Terminal velocity matching (Zhou et al. 2025, arXiv 2511.19797), minimal: F(x, a, b) the average velocity
from time a to b (noise a = 0, data b = 1), X(a, b, x) = x + (b - a) F; loss
|| d/db X(a, b, x_a) - sg F^-(X, b, b) ||^2 (zero at a = b) + || F(x_c, c, c) - (x1 - x0) ||^2, both means over
the coordinates, d/db X through one differentiated JVP; F^- an EMA (0.99) of F; times as the official sampler
(reversed): 1 - b ~ logit-normal(-0.4, 1) left room for the gap b - a ~ sigmoid N(-0.8, 1) by rejection, c
independent; Adam 1e-3, sampling from an EMA (0.999). NFE k: k uniform steps."""

from __future__ import annotations

import copy

import torch
from torch.func import jvp

from bench.studies.fairness.harness import BATCH, LR, MLP, Data, average_velocity_sampler, ema_, score


def _times(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    gap = torch.sigmoid(torch.randn(n) - 0.8)
    end = torch.sigmoid(torch.randn(n) - 0.4)  # in the paper's time (noise at 1)
    while bool((bad := end + gap > 1).any()):  # truncate the end time to [0, 1 - gap] by redrawing
        end[bad] = torch.sigmoid(torch.randn(int(bad.sum())) - 0.4)
    return 1 - (end + gap), 1 - end


def run(name: str, seed: int, steps: int) -> dict[str, list[float]]:
    torch.manual_seed(seed)
    data, f = Data(name, seed), MLP(4, 2)
    target, ema, opt = copy.deepcopy(f), copy.deepcopy(f), torch.optim.Adam(f.parameters(), LR)
    for _ in range(steps):
        x1 = data()
        x0, x0c = torch.randn_like(x1), torch.randn_like(x1)
        a, b = _times(BATCH)
        c = 1 - torch.sigmoid(torch.randn(BATCH) - 0.4)
        xa = (1 - a[:, None]) * x0 + a[:, None] * x1
        out, dout = jvp(f, (xa, a, b), (torch.zeros_like(xa), torch.zeros_like(a), torch.ones_like(b)))
        x_end, dx_db = xa + (b - a)[:, None] * out, out + (b - a)[:, None] * dout
        with torch.no_grad():
            v_end = target(x_end, b, b)
        xc = (1 - c[:, None]) * x0c + c[:, None] * x1
        loss = ((dx_db - v_end) ** 2).mean(1).mul((b > a).float()).mean() + ((f(xc, c, c) - (x1 - x0c)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema_(target, f, 0.99)
        ema_(ema, f, 0.999)

    return {
        "1": score(name, average_velocity_sampler(ema, 1), seed),
        "2": score(name, average_velocity_sampler(ema, 2), seed),
    }

"""Improved MeanFlow (Geng et al. 2025, arXiv 2512.02012), minimal: one MLP with two heads on (x, t, r) (noise
t = 0, data t = 1, t <= r): u, the average velocity over [t, r], and v, the instantaneous velocity at t (the
official auxiliary head). V = u - (r - t) sg(d/dt u), d/dt u from one JVP along (v-head at (x_t, t, t), 1, 0);
loss w(||V - (x1 - x0)||^2) + w(||v - (x1 - x0)||^2) with w(e) = e / sg(e + 0.01); 1 - t, 1 - r from two
logit-normal(-0.4, 1) draws, half the batch with r = t; Adam 1e-3, samples from an EMA (0.999).
NFE k: k uniform steps of the u head."""

from __future__ import annotations

import copy

import torch
from torch.func import jvp

from bench.studies.fairness.harness import BATCH, LR, MLP, Data, average_velocity_sampler, ema_, score


def run(name: str, seed: int, steps: int) -> dict[str, list[float]]:
    torch.manual_seed(seed)
    data, net = Data(name, seed), MLP(4, 4)
    ema, opt = copy.deepcopy(net), torch.optim.Adam(net.parameters(), LR)
    for _ in range(steps):
        x1 = data()
        x0 = torch.randn_like(x1)
        a, b = (torch.sigmoid(torch.randn(BATCH) - 0.4) for _ in range(2))  # the paper's time: noise at 1
        tp, rp = torch.maximum(a, b), torch.minimum(a, b)
        rp[: BATCH // 2] = tp[: BATCH // 2]
        t, r = 1 - tp, 1 - rp
        xt, v = (1 - t[:, None]) * x0 + t[:, None] * x1, x1 - x0
        with torch.no_grad():
            v_head = net(xt, t, t)[:, 2:]
            _, dudt = jvp(lambda x, a_, b_: net(x, a_, b_)[:, :2], (xt, t, r), (v_head, torch.ones_like(t), 0 * r))
        out = net(xt, t, r)
        big_v = out[:, :2] - (r - t)[:, None] * dudt
        lu, lv = ((big_v - v) ** 2).sum(1), ((out[:, 2:] - v) ** 2).sum(1)
        loss = (lu / (lu.detach() + 0.01) + lv / (lv.detach() + 0.01)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema_(ema, net, 0.999)

    u = lambda x, a_, b_: ema(x, a_, b_)[:, :2]  # noqa: E731
    return {
        "1": score(name, average_velocity_sampler(u, 1), seed),
        "2": score(name, average_velocity_sampler(u, 2), seed),
    }

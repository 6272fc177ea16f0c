"""Shortcut models (Frans, Hafner, Levine, Abbeel; "One Step Diffusion via Shortcut Models", arXiv 2410.12557),
trained from scratch in one stage, no teacher.

The shortcut s(x_t, t, d) is the step-size-conditioned velocity, x_{t+d} ~ x_t + d s(x_t, t, d); here it is the
average velocity u(t, t + d, x_t) of chargen's two-time network g(t, s, x) = x + (s - t) u(t, s, x), so this row
differs from chargen's by its objective alone. Same time convention as the paper (noise at t = 0, data at 1,
x_t = (1 - t) x0 + t x1). Loss (the paper's combined objective), per sample:
  flow matching (d = 0)    || s(x_t, t, 0) - (x1 - x0) ||^2
  self-consistency         || s(x_t, t, 2d) - sg[(s(x_t, t, d) + s(x'_{t+d}, t + d, d)) / 2] ||^2,
                           x'_{t+d} = x_t + d s(x_t, t, d),
with 2d = 2^-k (k uniform in 0 .. log2 M - 1, so d in {1/M, ..., 1/2}) and t uniform on the 2d-grid {0, 2d, ..,
1 - 2d} (paper Sec. 3 / official code: discrete step levels, t on the grid of the step). At the finest level
(d = 1/M) the two sub-steps are queried at d = 0, the flow-matching level (the official code conditions its
flow-matching rows on the finest level, so s(., ., 1/M) is the learned instantaneous velocity). A fraction
``sc_fraction`` of every batch (its first rows) gets self-consistency targets, the rest flow-matching targets;
the loss is the mean over all rows. Sampling: k uniform steps x <- x + (1/k) s(x, j/k, 1/k) (NFE k).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from bench.methods.base import Batch
from bench.methods.interpolants import bc
from bench.methods.meanflow import FlowMapMethod, UFn, bare, check_nfe
from bench.methods.nets import NetConfig
from torch import Tensor

from bench.errors import BenchError
from bench.registry import register_method


@torch.no_grad()
def shortcut_target(u_fn: UFn, t: Tensor, d: Tensor, x: Tensor, dq: Tensor | None = None) -> Tensor:
    """sg[(s(x_t, t, d) + s(x', t + d, d)) / 2], x' = x_t + d s(x_t, t, d), with s(x, t, d) = u_fn(t, t + d, x):
    the velocity of two chained d-steps, the target of s(x_t, t, 2d). ``dq`` = the step size the two sub-steps are
    queried with (default d; 0 at the finest level, which the official code conditions like flow matching)."""
    dq = d if dq is None else dq
    u1 = u_fn(t, t + dq, x)
    x2 = x + bc(d, x) * u1
    u2 = u_fn(t + d, t + d + dq, x2)
    return (u1 + u2) / 2


@dataclass
class ShortcutConfig:
    net: NetConfig = field(default_factory=NetConfig)  # s(x, t, d) = u(t, t + d, x): chargen's two-time net
    # M: the finest step is 1/M; 2d in {1, 1/2, ..., 2/M}. Paper / official code: denoise_timesteps = 128
    m_steps: int = 128
    # share of each batch with self-consistency targets. Paper: 1/4 of the batch (3/4 flow matching); the
    # official JAX code's default bootstrap_every = 8 is 1/8
    sc_fraction: float = 0.25
    # network computing the self-consistency targets: "ema" = the EMA weights (official code: bootstrap_ema = 1),
    # "online" = the weights being trained (both under stop-gradient)
    sc_target: Literal["ema", "online"] = "ema"
    nfe: list[int] = field(default_factory=lambda: [1, 2, 4])  # rows: uniform steps of size 1/k (paper: 1 .. 128)

    def validate(self) -> None:
        if self.m_steps < 2 or self.m_steps & (self.m_steps - 1):
            raise BenchError(f"method.m_steps must be a power of two >= 2 (got {self.m_steps})")
        if not 0.0 <= self.sc_fraction <= 1.0:
            raise BenchError(f"method.sc_fraction must lie in [0, 1] (got {self.sc_fraction})")
        check_nfe(self.nfe)


@register_method("shortcut")
class Shortcut(FlowMapMethod):
    """Shortcut model (arXiv 2410.12557): flow matching at d = 0 + self-consistency of 2d vs two d steps."""

    Config = ShortcutConfig
    smoke = {"net": {"hidden": 128, "depth": 2}}  # a smaller net for --smoke's 150 steps

    def label(self) -> str:
        c, d, tags = self.cfg, ShortcutConfig(), []
        if c.sc_fraction != d.sc_fraction:
            tags.append(f"sc={c.sc_fraction:g}")
        if c.sc_target != d.sc_target:
            tags.append(f"{c.sc_target}-targets")
        if c.m_steps != d.m_steps:
            tags.append(f"M={c.m_steps}")
        return f"shortcut[{','.join(tags)}]" if tags else "shortcut"

    def n_sc(self, global_size: int) -> int:
        """Rows of the global batch (its first ones) that get self-consistency targets."""
        return round(self.cfg.sc_fraction * global_size)

    def self_consistency_times(self, b: Batch) -> tuple[Tensor, Tensor, Tensor]:
        """(t, 2d, k) per row: level k uniform in 0 .. log2 M - 1, 2d = 2^-k, t uniform on {0, 2d, ..., 1 - 2d}."""
        k = b.randint(0, int(math.log2(self.cfg.m_steps)))
        two_d = torch.pow(2.0, -k.float())
        return torch.floor(b.rand() / two_d) * two_d, two_d, k

    def loss(self, b: Batch, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        x1 = b.x
        x0 = b.randn_like(x1)  # the same two draws, in the same order, as flow.py's loss
        t = b.rand().to(x1.dtype)
        t_sc, two_d, k = (z.to(x1.dtype) for z in self.self_consistency_times(b))
        # this process's rows among the first n_sc of the global batch: a prefix of its slice (no host sync)
        m = max(0, min(self.n_sc(b.global_size), b.hi) - b.lo)
        t_all = torch.cat([t_sc[:m], t[m:]])
        s_all = torch.cat([t_sc[:m] + two_d[:m], t[m:]])  # flow-matching rows: d = 0, s = t
        xt = bc(1 - t_all, x1) * x0 + bc(t_all, x1) * x1
        v = x1 - x0
        pred = self.g(t_all, s_all, xt, velocity=True)
        target = v
        if m > 0:
            d = two_d[:m] / 2
            finest = k[:m] == math.log2(self.cfg.m_steps) - 1  # d = 1/M: queried at d = 0, the flow level
            dq = torch.where(finest, torch.zeros_like(d), d)
            # no grad flows into targets: the bare online net, so ranks without such rows skip no DDP collective
            net = self.g_ema if self.cfg.sc_target == "ema" else bare(self.g)
            sc = shortcut_target(lambda a, c, x: net(a, c, x, velocity=True), t_sc[:m], d, xt[:m], dq)
            target = torch.cat([sc, v[m:]])
        err = (pred - target).pow(2).flatten(1).sum(1)
        parts = {"loss_fm": err[m:].sum() / max(b.n - m, 1), "loss_sc": err[:m].sum() / max(m, 1)}
        return err.mean(), {k_: v_.detach() for k_, v_ in parts.items()}

    def record_extra(self) -> dict[str, Any]:
        return {
            "network": "chargen's g(t, s, x) = x + (s - t) u(t, s, x), shortcut s(x, t, d) = u(t, t + d, x)",
            "sc_rows_per_step": self.n_sc(self.train_cfg.batch_size),
            "pass_count": (
                "per step: 3 per row (forward+backward of the shortcut on the whole batch) + 2 per self-consistency "
                "row (two no-grad target forwards); all counted by the engine"
            ),
        }

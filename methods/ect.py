"""Easy Consistency Tuning (ECT; Geng, Pokle, Luo, Lin, Kolter; arXiv 2406.14548): consistency training in
continuous time, started from a pretrained diffusion/flow model's weights (here: the suite's flow teacher, whose
velocity net initialises chargen's two-time network, so f(x, t) = x + (1 - t) v(t, x) at step 0), with a
curriculum that moves the pair's second time r toward t.

In the paper's EDM units (sigma, data at sigma = 0), for sigma_t ~ lognormal(P_mean, P_std):
    sigma_r = max(0, sigma_t (1 - n(sigma_t) / q^(a + 1))),  n(sigma) = 1 + k sigmoid(-b sigma),  a = floor(step / d)
    L = E[ w(t, r) d( f(x_t, t), sg f(x_r, r) ) ],  w = 1 / (sigma_t - sigma_r),  d = pseudo-Huber,
with x_t and x_r built from the SAME (noise, data) pair (consistency training: no ODE step, the teacher's weights
are used once, as the start) and sg f the online network under stop-gradient. Early (a = 0) most r are clamped to
sigma = 0, whose target is the data point itself (denoising, the diffusion objective); as a grows, r -> t and the
loss becomes the consistency condition. In this repo's time (noise t = 0, data t = 1, x_t = (1 - t) x0 + t x1,
so x_t / t = x1 + sigma x0) sigma maps to t = 1 / (1 + sigma) and sigma_r = 0 to t = 1, where f(x, 1) = x exactly.
Sampling as CM (1 step, then re-noise to the mid times); the teacher's passes are on the row (prior cost).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from bench.methods.base import Batch
from bench.methods.consistency import Consistency, ConsistencyConfig
from bench.methods.interpolants import bc
from torch import Tensor

from bench.errors import BenchError
from bench.registry import register_method


@dataclass
class ECTConfig(ConsistencyConfig):
    # the teacher is trained here (train.steps) or reused (method.teacher.run) as for CD, but ECT never takes an
    # ODE step with it: its weights are the starting point (ECT tunes a pretrained diffusion model)
    mode: Literal["cd", "ct"] = "cd"
    init: Literal["auto", "teacher", "scratch"] = "teacher"
    target: Literal["auto", "ema", "online"] = "online"  # sg f_theta itself (ECT, as iCT)
    distance: Literal["auto", "l2", "pseudo_huber", "lpips"] = "pseudo_huber"  # ECT: pseudo-Huber (c: huber_c)
    p_mean: float = -1.1  # lognormal of sigma_t (ECT = EDM's training distribution)
    p_std: float = 2.0
    q: float = 2.0  # ECT: dt shrinks by q at every stage
    k: float = 8.0  # n(sigma) = 1 + k sigmoid(-b sigma) (ECT's mapping function, CIFAR-10 values k = 8, b = 1)
    b: float = 1.0
    stages: int = 8  # curriculum stages over fit_steps (d = fit_steps / stages): this suite's budget choice

    def validate(self) -> None:
        super().validate()
        if self.mode != "cd" or self.init == "scratch":
            raise BenchError("method ect tunes its teacher's weights: keep method.mode=cd and method.init=teacher")
        if self.q <= 1 or self.k < 0 or self.b < 0 or self.stages < 1 or self.p_std <= 0:
            raise BenchError("method ect: need q > 1, k >= 0, b >= 0, stages >= 1, p_std > 0")


@register_method("ect")
class ECT(Consistency):
    """Easy Consistency Tuning (arXiv 2406.14548): continuous-time CT from the flow teacher's weights."""

    Config = ECTConfig

    def stage_of(self, step: int) -> int:
        return min(self.cfg.stages - 1, step * self.cfg.stages // max(self.cfg.fit_steps, 1))

    def sigma_pair(self, b: Batch, step: int) -> tuple[Tensor, Tensor]:
        """(sigma_t, sigma_r), float64: ECT's lognormal sigma_t and its curriculum's sigma_r <= sigma_t."""
        c = self.cfg
        sig_t = torch.exp(c.p_mean + c.p_std * b.randn().to(torch.float64))
        n = 1 + c.k * torch.sigmoid(-c.b * sig_t)
        sig_r = (sig_t * (1 - n / c.q ** (self.stage_of(step) + 1))).clamp_min(0.0)
        return sig_t, sig_r

    def consistency_loss(self, b: Batch, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        x1 = b.x
        sig_t, sig_r = self.sigma_pair(b, step)
        t, r = ((1 / (1 + s)).to(x1.device, x1.dtype) for s in (sig_t, sig_r))
        x0 = b.randn_like(x1)
        xt, xr = (bc(1 - a, x1) * x0 + bc(a, x1) * x1 for a in (t, r))
        with torch.no_grad():
            target = self.f(self.g, r, xr)
        w = (1 / (sig_t - sig_r)).to(x1.device, x1.dtype)
        d = self.distance(self.f(self.g, t, xt) - target)
        return (w * d).mean(), {"r_is_data": (sig_r == 0).double().mean().to(d.device)}

    def label(self) -> str:
        return "ect"

    def record_extra(self) -> dict:
        c = self.cfg
        return {
            **self.teacher_extra(),
            "init": "teacher",
            "curriculum": {"q": c.q, "k": c.k, "b": c.b, "stages": c.stages, "final_dt_factor": c.q**-c.stages},
            "sigma_t": f"lognormal({c.p_mean}, {c.p_std})",
            "huber_c": self.huber_c if c.distance == "pseudo_huber" else None,
            "mid_times": c.mid_times[: max(c.sample_steps) - 1],
            "weighting": "1 / (sigma_t - sigma_r)",
            "time_map": "t = 1 / (1 + sigma)",
        }
